//! Pinned public keys: a key given inline or as a `.pub` file, the keys one router
//! may present (`|`-separated), and those of several routers (comma-separated).

use std::path::Path;

use conduit_proto::PublicKey;

use super::{Unread, read_trusted};
use crate::Error;

/// A public key given inline (`ed25519:…`) or as the path of a `.pub` file.
pub fn load_public(spec: &str, what: &str) -> Result<PublicKey, Error> {
    let spec = spec.trim();
    if spec.starts_with("ed25519:") {
        // The line `conduit init` prints, its name too, is taken as it is.
        return PublicKey::parse_named(spec).map_err(|e| Error::Config(format!("{what}: {e}")));
    }
    Ok(file_keys(spec, what)?[0])
}

/// Every key line of the `.pub` file at `spec`, read once through
/// [`read_trusted`] (a regular file no one else may write, of bounded size), in
/// order, at least one; a line that is not a sound key fails the whole file.
fn file_keys(spec: &str, what: &str) -> Result<Vec<PublicKey>, Error> {
    let path = Path::new(spec);
    let text = read_trusted(path, "the public key file").map_err(|e| {
        let source = match e {
            Unread::Untrusted(e) => return e,
            Unread::Io(source) => source,
        };
        if source.kind() == std::io::ErrorKind::NotFound
            && let Err(why) = PublicKey::parse_named(spec)
            && super::kind::is_ssh_public(spec)
        {
            // `--router-key "ssh-ed25519 AAAA… user@host"`: no path, an ssh key.
            Error::Config(format!("{what}: {why}"))
        } else if source.kind() == std::io::ErrorKind::NotFound {
            Error::Config(format!(
                "{what}: {spec:?} is neither a public key (ed25519:…) nor an existing .pub file"
            ))
        } else if source.kind() == std::io::ErrorKind::InvalidData {
            Error::Config(format!(
                "{what}: {} is not a public key file (it is not text): give the .pub file \
                 `conduit init` wrote, or the key itself (ed25519:…)",
                path.display()
            ))
        } else {
            Error::File {
                what: "cannot read public key",
                path: path.to_owned(),
                source,
            }
        }
    })?;
    if let Some(tag) = super::kind::begin_tag(&text).filter(|t| t.contains("PRIVATE KEY")) {
        let beside = path.with_extension("pub");
        let give = if beside != path && beside.is_file() {
            format!("give the .pub file beside it, {}", beside.display())
        } else {
            "give its .pub file (`conduit init` wrote it beside the private key), or the key \
             itself (ed25519:…; `conduit keys show --name NAME` prints it where the private \
             key is)"
                .to_owned()
        };
        return Err(Error::Config(format!(
            "{what}: {} is a private key (-----BEGIN {tag}-----), not a public key; {give}. \
             A private key stays on its own host: a router's .key is never copied to its \
             clients",
            path.display()
        )));
    }
    let mut keys = Vec::new();
    for line in text.lines() {
        match PublicKey::parse_line(line) {
            None => {}
            Some(Ok((key, _))) => keys.push(key),
            Some(Err(e)) => {
                return Err(Error::Config(format!("{what} in {}: {e}", path.display())));
            }
        }
    }
    if keys.is_empty() {
        return Err(Error::Config(format!(
            "{what}: {} holds no key; give the .pub file `conduit init` wrote (a line \
             ed25519:…), or the key itself",
            path.display()
        )));
    }
    Ok(keys)
}

/// The keys one router may present: `ed25519:…` or the path of a `.pub` file, or
/// several such separated by `|`; every key line of a file counts (a router whose
/// key is being replaced is pinned to the old and the new).
pub fn load_pinned(spec: &str, what: &str) -> Result<Vec<PublicKey>, Error> {
    let mut keys = Vec::new();
    for one in spec.split('|') {
        let one = one.trim();
        if one.is_empty() {
            return Err(Error::Config(format!(
                "{what}: {spec:?} has an empty key; separate a router's keys with single `|`"
            )));
        }
        if one.starts_with("ed25519:") {
            // One key, or a .pub file's lines pasted (`"$(cat router.pub)"`).
            let pasted =
                PublicKey::parse_lines(one).map_err(|e| Error::Config(format!("{what}: {e}")))?;
            keys.extend(pasted);
            continue;
        }
        // Every key line of the file, read once.
        keys.extend(file_keys(one, what)?);
    }
    // Each key once, in the order given.
    let mut seen = std::collections::HashSet::new();
    keys.retain(|k| seen.insert(*k));
    Ok(keys)
}

/// Whether `spec` (as [`load_pinned`] takes it) names a `.pub` file, which a tunnel
/// reads again before each connection to its router.
pub fn pins_name_a_file(spec: &str) -> bool {
    spec.split('|')
        .map(str::trim)
        .any(|one| !one.is_empty() && !one.starts_with("ed25519:"))
}

/// `spec` (as [`load_pinned`] takes it) with each file path made absolute, so it
/// reads the same files from any working directory.
pub fn absolute_pins(spec: &str) -> Result<String, Error> {
    spec.split('|')
        .map(|one| {
            let one = one.trim();
            if one.is_empty() || one.starts_with("ed25519:") {
                return Ok(one.to_owned());
            }
            std::path::absolute(one)
                .map(|p| p.display().to_string())
                .map_err(|source| Error::File {
                    what: "cannot make the path absolute",
                    path: one.into(),
                    source,
                })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(|v| v.join("|"))
}

/// The pinned keys of several routers, separated by commas, each as
/// [`load_pinned`] takes it.
pub fn load_router_pins(spec: &str, what: &str) -> Result<Vec<Vec<PublicKey>>, Error> {
    spec.split(',')
        .enumerate()
        .map(|(i, one)| {
            if one.trim().is_empty() {
                Err(Error::Config(format!(
                    "{what}: key {} of {spec:?} is empty; separate keys with single commas",
                    i + 1
                )))
            } else {
                load_pinned(one, what)
            }
        })
        .collect()
}
