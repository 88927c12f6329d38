//! The key files of a rotation: the next key staged beside the current one, an old
//! key kept while it is still presented, and the switch.
//!
//! A key file that is a symbolic link stays one: the new key replaces the file the
//! link leads to (a new file in that file's directory, renamed over it), so that
//! whatever else reads that file has the new key, not the old one, which routers
//! stop admitting once it expires.

use std::path::{Path, PathBuf};

use conduit_proto::{KeyPair, PublicKey};

use super::{
    PEM_TAG, new_owner_only, owner_only, through_link, write_private, write_public, write_target,
};
use crate::Error;

/// Writes `pair` beside the key at `key_path`, as `KEY.next` (mode 0600), where
/// [`commit_pair`] finds it: a rotation stages the next key before it asks the
/// router, so that a key file it cannot write is found out while nothing changed
/// (for a key file that is a link, the directory of the file it leads to too).
pub fn stage_pair(key_path: &Path, pair: &KeyPair) -> Result<PathBuf, Error> {
    let staged = write_beside(key_path, ".next", pair)?;
    let target = write_target(key_path)?;
    if target != key_path {
        if let Err(e) = through_link(key_path, &target) {
            let _ = std::fs::remove_file(&staged);
            return Err(e);
        }
        // The new key replaces the link's file through a new file beside it: one is
        // made (and removed) now.
        let probe = beside(&target, &format!(".{}.new", std::process::id()));
        let made = new_owner_only(&probe, b"", "cannot write beside private key");
        let _ = std::fs::remove_file(&probe);
        if let Err(e) = made {
            let _ = std::fs::remove_file(&staged);
            return Err(match e {
                Error::File { what, source, .. } => Error::File {
                    what,
                    path: target,
                    source,
                },
                other => other,
            });
        }
    }
    Ok(staged)
}

/// Writes `pair` beside the key at `key_path` as `KEY.old-SECS` (mode 0600; SECS: the
/// Unix time of the switch), where a router keeps a key it rotated away from while
/// it still presents it.
pub fn keep_old_pair(key_path: &Path, pair: &KeyPair, switched: u64) -> Result<PathBuf, Error> {
    write_beside(key_path, &format!(".old-{switched}"), pair)
}

/// `key_path` with `suffix` added to its file name.
pub fn beside(key_path: &Path, suffix: &str) -> PathBuf {
    let mut name = key_path.file_name().unwrap_or_default().to_owned();
    name.push(suffix);
    key_path.with_file_name(name)
}

/// A key file of its own beside the key at `key_path` (replacing a link there, not
/// following it: the file is this rotation's).
fn write_beside(key_path: &Path, suffix: &str, pair: &KeyPair) -> Result<PathBuf, Error> {
    let path = beside(key_path, suffix);
    owner_only(
        &path,
        &beside(&path, ".tmp"),
        pem_of(pair).as_bytes(),
        "cannot write private key",
    )?;
    Ok(path)
}

/// The key file's text for `pair`.
pub(crate) fn pem_of(pair: &KeyPair) -> String {
    pem::encode(&pem::Pem::new(PEM_TAG, pair.pkcs8_der().to_vec()))
}

/// Moves a key staged by [`stage_pair`] over the key at `key_path`, and writes its
/// `.pub` beside it (named `name`). A key file that is a link is written through.
pub fn commit_pair(
    key_path: &Path,
    staged: &Path,
    public: &PublicKey,
    name: &str,
) -> Result<(), Error> {
    if write_target(key_path)? == key_path {
        std::fs::rename(staged, key_path).map_err(|source| Error::File {
            what: "cannot move the new private key in place",
            path: key_path.to_owned(),
            source,
        })?;
    } else {
        // Moving it to the link's file would cross directories (and maybe file
        // systems): it is written there anew.
        let pair = super::load_private(staged, "client")?;
        write_private(key_path, pem_of(&pair).as_bytes())?;
        let _ = std::fs::remove_file(staged);
    }
    write_pubs(key_path, public, name)
}

/// Writes the `.pub` beside the key at `key_path` (replacing a link there, as
/// [`write_public`] does, unless it leads to the file written next); and when the key
/// file is a link, the `.pub` beside the file it leads to, if there is one: each
/// `.pub` is the public key of the key beside it.
pub(crate) fn write_pubs(key_path: &Path, public: &PublicKey, name: &str) -> Result<(), Error> {
    let write = |path: &Path, name: &str| {
        let line = format!("{public} {name}\n");
        write_public(path, line.as_bytes()).map_err(|source| Error::File {
            what: "cannot write public key",
            path: path.to_owned(),
            source,
        })
    };
    let here = key_path.with_extension("pub");
    let target = write_target(key_path)?;
    let there = target.with_extension("pub");
    if target != key_path && std::fs::symlink_metadata(&there).is_ok() {
        let own = public_name(&there);
        write(&there, own.as_deref().unwrap_or(name))?;
        let same = |p: &Path| std::fs::canonicalize(p).ok();
        if same(&here).is_some() && same(&here) == same(&there) {
            return Ok(());
        }
    }
    write(&here, name)
}

/// The name on the key line of the `.pub` file at `path` (read as a file of trusted
/// keys: never a pipe or a device), if it has one.
pub fn public_name(path: &Path) -> Option<String> {
    let text = super::read_trusted(path, "the public key file").ok()?;
    text.lines()
        .find_map(PublicKey::parse_line)
        .and_then(Result::ok)
        .map(|(_, name)| name)
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::home::Home;
    use crate::keys::{generate, load_private};

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap()
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// A home whose `keys/client.key` is a link to `shared/tunnel.key`, with a `.pub`
    /// beside each; and the key.
    fn linked_key(dir: &Path) -> (Home, PathBuf, KeyPair) {
        let home = Home::at(dir.join("home"));
        let pair = generate(&home, "client", false).unwrap();
        let shared = dir.join("shared");
        std::fs::create_dir(&shared).unwrap();
        let target = shared.join("tunnel.key");
        std::fs::rename(home.private_key("client"), &target).unwrap();
        std::fs::write(
            shared.join("tunnel.pub"),
            format!("{} tunnel\n", pair.public()),
        )
        .unwrap();
        std::os::unix::fs::symlink(&target, home.private_key("client")).unwrap();
        (home, target, pair)
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// A key file that is a link to a key kept elsewhere stays a link: the file it
    /// leads to gets the new key (mode 0600), and the `.pub` beside each the new
    /// public key; `init --force` writes through it alike. Replacing the link left
    /// the file it led to with the old key, which expires.
    #[test]
    fn a_key_file_that_is_a_link_is_rotated_where_it_leads() {
        let dir = tempfile::tempdir().unwrap();
        let (home, target, _) = linked_key(dir.path());
        let link = home.private_key("client");

        let next = KeyPair::generate().unwrap();
        let staged = stage_pair(&link, &next).unwrap();
        assert_eq!(staged, beside(&link, ".next"));
        commit_pair(&link, &staged, &next.public(), "client").unwrap();

        let is_link = |p: &Path| std::fs::symlink_metadata(p).unwrap().is_symlink();
        assert!(is_link(&link), "the link was replaced");
        assert_eq!(
            load_private(&target, "client").unwrap().public(),
            next.public()
        );
        assert_eq!(mode(&target), 0o600);
        assert_eq!(
            read(&home.public_key("client")),
            format!("{} client\n", next.public())
        );
        let shared = target.parent().unwrap();
        assert_eq!(
            read(&shared.join("tunnel.pub")),
            format!("{} tunnel\n", next.public())
        );
        // Nothing left behind: no staged key, no temporary file.
        assert!(!staged.exists());
        assert_eq!(names_in(shared), ["tunnel.key", "tunnel.pub"]);

        let forced = generate(&home, "client", true).unwrap();
        assert!(is_link(&link), "the link was replaced");
        assert_eq!(
            load_private(&target, "client").unwrap().public(),
            forced.public()
        );
        assert_eq!(
            read(&shared.join("tunnel.pub")),
            format!("{} tunnel\n", forced.public())
        );
        assert_eq!(names_in(shared), ["tunnel.key", "tunnel.pub"]);
    }

    /// A `.pub` that is a link to the `.pub` beside the key's file stays one.
    #[test]
    fn a_public_key_link_beside_a_key_link_is_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let (home, target, _) = linked_key(dir.path());
        let (link, pub_link) = (home.private_key("client"), home.public_key("client"));
        std::fs::remove_file(&pub_link).unwrap();
        std::os::unix::fs::symlink(target.with_extension("pub"), &pub_link).unwrap();

        let next = KeyPair::generate().unwrap();
        let staged = stage_pair(&link, &next).unwrap();
        commit_pair(&link, &staged, &next.public(), "client").unwrap();
        assert!(std::fs::symlink_metadata(&pub_link).unwrap().is_symlink());
        assert_eq!(read(&pub_link), format!("{} tunnel\n", next.public()));
    }

    /// A key link to a file that holds another kind of key (an ssh key) is not
    /// followed to overwrite it.
    #[test]
    fn a_link_to_another_kind_of_key_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().join("home"));
        Home::ensure_private_dir(&home.keys()).unwrap();
        let ssh = dir.path().join("id_ed25519");
        let text = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n\
                    -----END OPENSSH PRIVATE KEY-----\n";
        std::fs::write(&ssh, text).unwrap();
        let link = home.private_key("client");
        std::os::unix::fs::symlink(&ssh, &link).unwrap();
        assert_eq!(
            generate(&home, "client", true).unwrap_err().to_string(),
            format!(
                "private key {} is a link to {}, which holds no Conduit key and is not \
                 overwritten: point the link at a Conduit key file, or remove the link to \
                 have the key written in its place",
                link.display(),
                std::fs::canonicalize(&ssh).unwrap().display()
            )
        );
        assert_eq!(read(&ssh), text);
    }
}
