//! The key files of a rotation: the next key staged beside the current one, an old
//! key kept while it is still presented, and the switch.

use std::path::Path;

use conduit_proto::{KeyPair, PublicKey};

use super::{PEM_TAG, write_private};
use crate::Error;

/// Writes `pair` beside the key at `key_path`, as `KEY.next` (mode 0600), where
/// [`commit_pair`] finds it: a rotation stages the next key before it asks the
/// router, so that a key file it cannot write is found out while nothing changed.
pub fn stage_pair(key_path: &Path, pair: &KeyPair) -> Result<std::path::PathBuf, Error> {
    write_beside(key_path, ".next", pair)
}

/// Writes `pair` beside the key at `key_path` as `KEY.old-SECS` (mode 0600; SECS: the
/// Unix time of the switch), where a router keeps a key it rotated away from while
/// it still presents it.
pub fn keep_old_pair(
    key_path: &Path,
    pair: &KeyPair,
    switched: u64,
) -> Result<std::path::PathBuf, Error> {
    write_beside(key_path, &format!(".old-{switched}"), pair)
}

/// `key_path` with `suffix` added to its file name.
pub fn beside(key_path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = key_path.file_name().unwrap_or_default().to_owned();
    name.push(suffix);
    key_path.with_file_name(name)
}

fn write_beside(
    key_path: &Path,
    suffix: &str,
    pair: &KeyPair,
) -> Result<std::path::PathBuf, Error> {
    let path = beside(key_path, suffix);
    let pem = pem::encode(&pem::Pem::new(PEM_TAG, pair.pkcs8_der().to_vec()));
    write_private(&path, pem.as_bytes())?;
    Ok(path)
}

/// Moves a key staged by [`stage_pair`] over the key at `key_path`, and writes its
/// `.pub` beside it (named `name`).
pub fn commit_pair(
    key_path: &Path,
    staged: &Path,
    public: &PublicKey,
    name: &str,
) -> Result<(), Error> {
    std::fs::rename(staged, key_path).map_err(|source| Error::File {
        what: "cannot move the new private key in place",
        path: key_path.to_owned(),
        source,
    })?;
    let pub_path = key_path.with_extension("pub");
    let line = format!("{public} {name}\n");
    super::write_public(&pub_path, line.as_bytes()).map_err(|source| Error::File {
        what: "cannot write public key",
        path: pub_path,
        source,
    })
}
