//! Reading a private key file: what it is when it is not a Conduit key, and whether
//! others can read it.

use std::path::Path;

use conduit_proto::{KeyPair, PublicKey};

use super::{PEM_TAG, exposure};
use crate::Error;

/// Loads a private key, refusing one that group or others can read.
pub fn load_private(path: &Path, hint_name: &str) -> Result<KeyPair, Error> {
    let meta = std::fs::metadata(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::Config(format!(
                "no private key at {}: create one with `conduit init --name {hint_name}` or pass --key PATH",
                path.display()
            ))
        } else {
            Error::File {
                what: "cannot read private key",
                path: path.to_owned(),
                source,
            }
        }
    })?;
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
    // A public key given for the private one (a .pub file, or any file whose first
    // key line is `ed25519:…`): it says nothing secret, so its mode does not matter.
    if let Ok(text) = std::fs::read_to_string(path)
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
    let bytes = std::fs::read(path).map_err(|source| Error::File {
        what: "cannot read private key",
        path: path.to_owned(),
        source,
    })?;
    let bad = |why: &str| {
        Error::Config(format!(
            "{} is not a Conduit private key: {why}; make one with `conduit init --name \
             {hint_name}` (a PKCS#8 Ed25519 key in PEM) or pass another --key PATH",
            path.display()
        ))
    };
    let text = String::from_utf8(bytes)
        .map_err(|_| bad("it is not text (a key file is PEM: -----BEGIN PRIVATE KEY-----)"))?;
    let block = pem::parse(text.trim())
        .map_err(|_| bad("it is not a PEM private key (-----BEGIN PRIVATE KEY-----)"))?;
    if block.tag() != PEM_TAG {
        return Err(bad(&format!(
            "its PEM block is {:?}, not \"PRIVATE KEY\"",
            block.tag()
        )));
    }
    KeyPair::from_pkcs8_der(block.contents()).map_err(|e| {
        bad(&format!(
            "its PEM block holds no Ed25519 key in PKCS#8 form ({e})"
        ))
    })
}
