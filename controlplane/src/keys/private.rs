//! Reading a private key file: what it is when it is not a Conduit key, and whether
//! others can read it.

use std::io::Read;
use std::path::Path;

use conduit_proto::{KeyPair, PublicKey};

use super::{PEM_TAG, exposure, kind};
use crate::Error;

/// The most of a private key file read: a Conduit key file is about 120 bytes, and
/// the files given for one by mistake (a `.pub`, another kind of key) a few
/// kilobytes.
const MAX_PRIVATE_KEY: u64 = 64 << 10;

/// Loads a private key, refusing one that group or others can read.
pub fn load_private(path: &Path, hint_name: &str) -> Result<KeyPair, Error> {
    let (meta, bytes) = read_private(path, hint_name)?;
    // A public key given for the private one (a .pub file, or any file whose first
    // key line is `ed25519:…`): it says nothing secret, so its mode does not matter.
    if let Ok(text) = std::str::from_utf8(&bytes)
        && let Some(Some(Ok(_))) = text
            .lines()
            .map(PublicKey::parse_line)
            .find(Option::is_some)
    {
        let beside = path.with_extension("key");
        let fix = if beside != path && beside.is_file() {
            format!("give the .key file beside it, {}", beside.display())
        } else {
            format!(
                "give the private key file instead ({hint_name}.key, which `conduit init \
                 --name {hint_name}` writes beside {hint_name}.pub)"
            )
        };
        return Err(Error::Config(format!(
            "{} is a public key, not a private key; {fix}",
            path.display()
        )));
    }
    let flag = flag_for(hint_name);
    let bad = |why: &str| {
        Error::Config(format!(
            "{} is not a Conduit private key: {why}; make one with `conduit init --name \
             {hint_name}` (a PKCS#8 Ed25519 key in PEM) or pass another {flag} PATH",
            path.display()
        ))
    };
    // Nothing secret either (an ssh public key, a certificate): named before its mode.
    if let Some(why) = std::str::from_utf8(&bytes).ok().and_then(kind::public_only) {
        return Err(bad(&why));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(Error::Config(format!(
                "private key {} is {} (mode {mode:04o}); run `chmod 600 {}` and start \
                 again",
                path.display(),
                exposure(mode),
                path.display()
            )));
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    let mut text = String::from_utf8(bytes)
        .map_err(|_| bad("it is not text (a key file is PEM: -----BEGIN PRIVATE KEY-----)"))?;
    // A byte-order mark, as some Windows editors write, is no part of the PEM.
    if text.starts_with('\u{feff}') {
        text.drain(..'\u{feff}'.len_utf8());
    }
    let Some(tag) = kind::begin_tag(&text) else {
        return Err(bad(kind::not_pem(&text)));
    };
    if tag != PEM_TAG {
        return Err(bad(&kind::of_tag(tag)));
    }
    let damaged = || {
        Error::Config(format!(
            "private key {} is damaged: it begins -----BEGIN PRIVATE KEY----- but what \
             follows is cut short or altered; put back a sound copy of the file, or make a \
             new key with `conduit init --name {hint_name} --force` and authorize its public \
             key where the old one was",
            path.display()
        ))
    };
    let block = pem::parse(text.trim()).map_err(|_| damaged())?;
    // Two keys pasted into one file: which one was meant is not for Conduit to guess.
    if let Ok(blocks) = pem::parse_many(text.trim())
        && blocks.len() > 1
    {
        return Err(Error::Config(format!(
            "private key {} holds {} PEM blocks, where a key file holds one key: keep the \
             key this host is known by and move the other to a file of its own",
            path.display(),
            blocks.len()
        )));
    }
    if block.tag() != PEM_TAG {
        return Err(bad(&kind::of_tag(block.tag())));
    }
    KeyPair::from_pkcs8_der(block.contents()).map_err(|_| match kind::of_pkcs8(block.contents()) {
        Some(other) => bad(&other),
        None => damaged(),
    })
}

/// Whether the file at `path` may be a Conduit key, sound or damaged: a regular file
/// whose PEM block is `PRIVATE KEY` and names no other kind of key. A key written
/// through a link replaces only such a file.
pub(super) fn may_be_conduit_key(path: &Path) -> bool {
    let Ok((_, bytes)) = read_private(path, "client") else {
        return false;
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return false;
    };
    if kind::begin_tag(text) != Some(PEM_TAG) {
        return false;
    }
    match pem::parse(text.trim()) {
        Ok(block) => block.tag() == PEM_TAG && kind::of_pkcs8(block.contents()).is_none(),
        Err(_) => true,
    }
}

/// The option that names a private key of the role `hint_name`, for a fix that says
/// to pass another.
fn flag_for(hint_name: &str) -> &'static str {
    match hint_name {
        "router-next" => "--next-key",
        _ => "--key",
    }
}

/// The private key file at `path` as opened, and at most [`MAX_PRIVATE_KEY`] of its
/// bytes. Only a regular file is read, and that is checked before it is opened and
/// again through the open file (opened without waiting on a named pipe): a pipe
/// would hold the reader as long as it pleases, and a device (`/dev/zero`) fill its
/// memory.
fn read_private(path: &Path, hint_name: &str) -> Result<(std::fs::Metadata, Vec<u8>), Error> {
    let err = |source| Error::File {
        what: "cannot read private key",
        path: path.to_owned(),
        source,
    };
    let before = std::fs::metadata(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            // `init` writes CONDUIT_HOME/keys/NAME.key: a key expected elsewhere is
            // not there after it.
            let flag = flag_for(hint_name);
            let expected = format!("{hint_name}.key");
            let init_writes_it = path.file_name().is_some_and(|n| *n == *expected)
                && path
                    .parent()
                    .and_then(Path::file_name)
                    .is_some_and(|d| d == "keys");
            let moved = if init_writes_it {
                String::new()
            } else {
                format!(
                    " (it writes keys/{expected} in CONDUIT_HOME: move that file to {}, or \
                     point {flag} at it)",
                    path.display()
                )
            };
            Error::Config(format!(
                "no private key at {}: create one with `conduit init --name {hint_name}`{moved} \
                 or pass {flag} PATH",
                path.display(),
            ))
        } else {
            err(source)
        }
    })?;
    kind_of_file(path, &before, hint_name)?;
    let file = crate::config::open_to_read(path).map_err(err)?;
    let meta = file.metadata().map_err(err)?;
    kind_of_file(path, &meta, hint_name)?;
    let mut bytes = Vec::new();
    file.take(MAX_PRIVATE_KEY + 1)
        .read_to_end(&mut bytes)
        .map_err(err)?;
    if bytes.len() as u64 > MAX_PRIVATE_KEY {
        return Err(Error::Config(format!(
            "{} is larger than {} KiB, which no key file is (a Conduit private key file is \
             about 120 bytes); give the private key file, e.g. \
             $CONDUIT_HOME/keys/{hint_name}.key (`conduit init --name {hint_name}` makes one)",
            path.display(),
            MAX_PRIVATE_KEY >> 10
        )));
    }
    Ok((meta, bytes))
}

/// Refuses a private key path that is a directory, or not a regular file.
fn kind_of_file(path: &Path, meta: &std::fs::Metadata, hint_name: &str) -> Result<(), Error> {
    if meta.is_dir() {
        let inside = [
            path.join(format!("{hint_name}.key")),
            path.join("keys").join(format!("{hint_name}.key")),
        ];
        let fix = match inside.iter().find(|p| p.is_file()) {
            Some(key) => format!("give the private key file in it, {}", key.display()),
            None => format!(
                "give the private key file, e.g. $CONDUIT_HOME/keys/{hint_name}.key (`conduit \
                 init --name {hint_name}` makes one)"
            ),
        };
        return Err(Error::Config(format!(
            "private key {} is a directory; {fix}",
            path.display()
        )));
    }
    if !meta.is_file() {
        return Err(Error::Config(format!(
            "private key {} is not a regular file (a device, a named pipe or a socket); give \
             the private key file, e.g. $CONDUIT_HOME/keys/{hint_name}.key (`conduit init \
             --name {hint_name}` makes one)",
            path.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
