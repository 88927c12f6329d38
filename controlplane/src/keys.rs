//! Key files: generate them (private key mode 0600), load them (refusing a private
//! key others can read, as ssh does), and read public keys and the authorized-clients
//! file.
//!
//! Formats: the private key is PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`, what
//! `openssl genpkey -algorithm ed25519` writes); the `.pub` file is one line,
//! `ed25519:<base64> NAME`; `authorized_clients` holds such lines, with `#` comments
//! and blank lines allowed.

use std::io::Write;
use std::path::{Path, PathBuf};

use conduit_proto::{KeyPair, PublicKey};

use crate::Error;
use crate::home::Home;

mod authorized;
mod kind;
mod known_routers;
mod pins;
mod private;
mod rotation;

pub use authorized::{
    AuthorizedFile, load_authorized, load_authorized_file, parse_authorized, parse_authorized_file,
    replace_file, rotate_authorized,
};
pub(crate) use known_routers::lock_beside_telling;
pub use known_routers::{
    KnownRouter, KnownUnread, load_known_routers, parse_known_routers, read_known_routers,
    save_known_router,
};
pub use pins::{absolute_pins, load_pinned, load_public, load_router_pins, pins_name_a_file};
pub use private::load_private;
pub use rotation::{beside, commit_pair, keep_old_pair, public_name, stage_pair};

const PEM_TAG: &str = "PRIVATE KEY";

/// Creates `keys/NAME.key` and `keys/NAME.pub`; refuses to overwrite unless `force`.
pub fn generate(home: &Home, name: &str, force: bool) -> Result<KeyPair, Error> {
    validate_name(name)?;
    let dir = home.keys();
    Home::ensure_private_dir(&dir)?;
    let key_path = home.private_key(name);
    let pub_path = home.public_key(name);
    let exists = |at: &Path| {
        Error::Config(format!(
            "a key named {name:?} already exists at {}; use --force to replace it \
             (every router or client that trusts the old key must then be updated)",
            at.display()
        ))
    };
    if !force && let Some(at) = [&key_path, &pub_path].into_iter().find(|p| p.exists()) {
        return Err(exists(at));
    }
    let pair =
        KeyPair::generate().map_err(|e| Error::Config(format!("cannot generate a key: {e}")))?;
    let pem = pem::encode(&pem::Pem::new(PEM_TAG, pair.pkcs8_der().to_vec()));
    if force {
        write_private(&key_path, pem.as_bytes())?;
    } else {
        // Two `init`s at once both passed the check above: only one may create the
        // key (a link fails where a rename would replace), and only it writes the .pub.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.key.{}.{n}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        // A failure is the key's to name: the temporary file is of no interest.
        new_owner_only(&tmp, pem.as_bytes(), "cannot write private key").map_err(|e| match e {
            Error::File { what, source, .. } => Error::File {
                what,
                path: key_path.clone(),
                source,
            },
            other => other,
        })?;
        let linked = std::fs::hard_link(&tmp, &key_path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(exists(&key_path));
            }
            Err(source) => {
                return Err(Error::File {
                    what: "cannot write private key",
                    path: key_path,
                    source,
                });
            }
        }
    }
    rotation::write_pubs(&key_path, &pair.public(), name)?;
    Ok(pair)
}

/// Writes a `.pub` file: mode 0644 whatever the umask (others may read it, only its
/// owner write it: it is a file of trusted keys), through a new file beside it
/// renamed over it, so that a link planted at `path` is replaced, never followed to
/// overwrite the file it points to.
pub(crate) fn write_public(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".{}.tmp", std::process::id()));
    #[cfg(unix)]
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::Permissions::from_mode(0o644)
    };
    #[cfg(not(unix))]
    let mode = std::fs::metadata(path)?.permissions();
    renamed_into_place(&path.with_file_name(name), path, bytes, mode)
}

/// Writes `bytes` to the new file `tmp` with `perms`, syncs it and renames it over
/// `path` (which, if a link, is replaced itself); `tmp` is removed on failure.
pub(crate) fn renamed_into_place(
    tmp: &Path,
    path: &Path,
    bytes: &[u8],
    perms: std::fs::Permissions,
) -> std::io::Result<()> {
    use std::io::Write as _;
    let _ = std::fs::remove_file(tmp);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(tmp)?;
        f.set_permissions(perms)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        keep_owner(path, tmp);
        std::fs::rename(tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    written
}

/// The most of a file of trusted keys read: a million keys and more.
const MAX_TRUSTED_FILE: u64 = 128 << 20;

/// Why a file of trusted keys was not read.
#[derive(Debug)]
pub(crate) enum Unread {
    /// It could not be opened or read (`NotFound`, `InvalidData` for bytes that are
    /// not text, `FileTooLarge` past [`MAX_TRUSTED_FILE`], …).
    Io(std::io::Error),
    /// Someone else could write it (see [`trusted_meta`]).
    Untrusted(Error),
}

/// What to do about a file of trusted keys that could not be read for `e`. Such a
/// failure says nothing of the keys in the file: a process that read it before keeps
/// what it read, and reads it again later.
pub(crate) fn unread_fix(e: &std::io::Error) -> &'static str {
    #[cfg(unix)]
    if matches!(
        e.raw_os_error(),
        Some(nix::libc::EMFILE | nix::libc::ENFILE)
    ) {
        return "the process is out of file descriptors: raise its open-file limit (ulimit \
                -n, or LimitNOFILE= in a systemd unit)";
    }
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => {
            "let the user this process runs as read it (and enter its directories)"
        }
        std::io::ErrorKind::InvalidInput | std::io::ErrorKind::IsADirectory => {
            "put the file back in its place as a regular file"
        }
        _ => "check the file and the disk it is on",
    }
}

/// Reads a file of trusted keys as text (see [`read_trusted_bytes`]); bytes that are
/// not UTF-8 are `InvalidData`.
pub(crate) fn read_trusted(path: &Path, what: &str) -> Result<String, Unread> {
    let bytes = read_trusted_bytes(path, what)?;
    String::from_utf8(bytes).map_err(|_| Unread::Io(std::io::ErrorKind::InvalidData.into()))
}

/// Reads a file of trusted keys: opened once (without waiting on a named pipe),
/// checked through the open file (a regular file, see [`trusted_meta`]) and read
/// from that same file, so one swapped in between the check and the read is never
/// read.
pub(crate) fn read_trusted_bytes(path: &Path, what: &str) -> Result<Vec<u8>, Unread> {
    use std::io::Read;
    let file = crate::config::open_to_read(path).map_err(Unread::Io)?;
    let meta = file.metadata().map_err(Unread::Io)?;
    // A pipe or a device would hold the reader as long as it pleases.
    if !meta.is_file() {
        return Err(Unread::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    trusted_meta(path, &meta, what).map_err(Unread::Untrusted)?;
    let mut bytes = Vec::new();
    file.take(MAX_TRUSTED_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(Unread::Io)?;
    if bytes.len() as u64 > MAX_TRUSTED_FILE {
        return Err(Unread::Io(std::io::ErrorKind::FileTooLarge.into()));
    }
    Ok(bytes)
}

/// The user files of trusted keys are checked for when not this process's: the one
/// a service file is written for (`--service-user`), which reads them when it runs.
static CHECKED_FOR: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// From now on, checks files of trusted keys for the user `uid` (who may own them),
/// not for the user this process runs as: for a service file root writes for the
/// account the service runs as.
pub fn check_files_for(uid: u32) {
    let _ = CHECKED_FOR.set(uid);
}

/// Refuses a file of trusted keys (authorized clients, a pinned router key, the
/// known routers) that someone else could write, as ssh's StrictModes refuses such
/// an `authorized_keys`: a file its group or every user may write, or one owned by
/// another user than this one or root. Any of them could put their own key in it.
/// `meta` is the file's, as opened.
fn trusted_meta(path: &Path, meta: &std::fs::Metadata, what: &str) -> Result<(), Error> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let mode = meta.permissions().mode() & 0o777;
        let who = match (mode & 0o002 != 0, mode & 0o020 != 0) {
            (true, true) => Some(("every user of this host", "go-w")),
            (true, false) => Some(("every user of this host", "o-w")),
            (false, true) => Some(("its group", "g-w")),
            _ => None,
        };
        if let Some((who, fix)) = who {
            return Err(Error::Config(format!(
                "{what} {} is writable by {who} (mode {mode:04o}), who could put their own \
                 key in it; run `chmod {fix} {}`",
                path.display(),
                path.display()
            )));
        }
        let me = nix::unistd::geteuid().as_raw();
        owned_by_reader(path, meta.uid(), what, me, CHECKED_FOR.get().copied())?;
    }
    #[cfg(not(unix))]
    let _ = (path, meta, what);
    Ok(())
}

/// Refuses a file of trusted keys owned by `owner` unless that is root or the user who
/// reads it: `me`, or `service` when a service file is being written for that user.
fn owned_by_reader(
    path: &Path,
    owner: u32,
    what: &str,
    me: u32,
    service: Option<u32>,
) -> Result<(), Error> {
    let (reader, runs) = match service {
        Some(uid) => (uid, "the service runs as"),
        None => (me, "this process runs as"),
    };
    if owner == reader || owner == 0 {
        return Ok(());
    }
    let fix = match reader {
        0 => "root".to_owned(),
        _ => format!("uid {reader} or root"),
    };
    Err(Error::Config(format!(
        "{what} {} belongs to another user (uid {owner}), who could put their own key in \
         it; {runs} uid {reader}: give it a file owned by {fix} (`chown`)",
        path.display(),
    )))
}

fn validate_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "invalid key name {name:?}: use 1-64 letters, digits, '-', '_' or '.' (not starting with '.' or '-')"
        )))
    }
}

/// What a secret file's `mode` lets others do, in words ("readable by group or
/// others"), for a mode that lets them do anything.
pub fn exposure(mode: u32) -> &'static str {
    if mode & 0o044 != 0 {
        "readable by group or others"
    } else if mode & 0o022 != 0 {
        "writable by group or others"
    } else {
        "open to group or others"
    }
}

/// Writes a private key file, readable by its owner only, replacing any previous one.
/// A symbolic link at `path` stays: the file it leads to is replaced (through a new
/// file in that file's directory), so that whatever else reads that file has the new
/// key too. That file is replaced only if it may be a Conduit key: a link to
/// anything else (an ssh key, a web server's key) is refused, not followed.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let target = write_target(path)?;
    if target != path {
        through_link(path, &target)?;
    }
    owner_only(
        &target,
        &rotation::beside(&target, ".tmp"),
        bytes,
        "cannot write private key",
    )
}

/// Refuses to write a private key through the link at `path` to `target` unless
/// `target` is not there yet or may be a Conduit key.
fn through_link(path: &Path, target: &Path) -> Result<(), Error> {
    if std::fs::symlink_metadata(target).is_err() || private::may_be_conduit_key(target) {
        return Ok(());
    }
    Err(Error::Config(format!(
        "private key {} is a link to {}, which holds no Conduit key and is not \
         overwritten: point the link at a Conduit key file, or remove the link to have the \
         key written in its place",
        path.display(),
        target.display()
    )))
}

/// Where writing the file at `path` lands: `path`, or when it is a symbolic link, the
/// file it leads to, through every link (that file need not exist yet).
fn write_target(path: &Path) -> Result<PathBuf, Error> {
    let err = |source| Error::File {
        what: "cannot follow the link of private key",
        path: path.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {}
        _ => return Ok(path.to_owned()),
    }
    match std::fs::canonicalize(path) {
        Ok(target) => Ok(target),
        // A link to a file not there: that file, in its directory as resolved.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let to = path
                .parent()
                .unwrap_or(Path::new(""))
                .join(std::fs::read_link(path).map_err(err)?);
            match (to.parent(), to.file_name()) {
                (Some(dir), Some(name)) => {
                    let dir = if dir.as_os_str().is_empty() {
                        Path::new(".")
                    } else {
                        dir
                    };
                    Ok(std::fs::canonicalize(dir).map_err(err)?.join(name))
                }
                _ => Err(err(e)),
            }
        }
        Err(e) => Err(err(e)),
    }
}

/// Writes `bytes` to `path` through `tmp`, a fresh file with mode 0600 from the start,
/// renamed over `path`: readers see the old file or the new one, never a part.
fn owner_only(path: &Path, tmp: &Path, bytes: &[u8], what: &'static str) -> Result<(), Error> {
    let _ = std::fs::remove_file(tmp);
    new_owner_only(tmp, bytes, what)?;
    keep_owner(path, tmp);
    std::fs::rename(tmp, path).map_err(|source| Error::File {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Gives `new`, which is to replace the file at `path`, that file's owner and group:
/// a key root rotates for the account a service runs as stays that account's. As
/// far as this process may: only root gives a file away, and a failure leaves `new`
/// this process's, as writing it made it.
fn keep_owner(path: &Path, new: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(old), Ok(now)) = (std::fs::metadata(path), std::fs::metadata(new))
            && (old.uid(), old.gid()) != (now.uid(), now.gid())
        {
            let _ = std::os::unix::fs::chown(new, Some(old.uid()), Some(old.gid()));
        }
    }
    #[cfg(not(unix))]
    let _ = (path, new);
}

/// Creates `path`, which must not exist, with mode 0600 from the start, and writes
/// `bytes` to disk.
fn new_owner_only(path: &Path, bytes: &[u8], what: &'static str) -> Result<(), Error> {
    let err = |source| Error::File {
        what,
        path: path.to_owned(),
        source,
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)
}

/// The public key `keys/NAME.pub` of `home` (`conduit keys show --name NAME`); `name`
/// is checked as `conduit init` checks it.
pub fn load_named_public(home: &Home, name: &str) -> Result<PublicKey, Error> {
    validate_name(name)?;
    let path = home.public_key(name);
    if matches!(path.try_exists(), Ok(false)) {
        return Err(Error::Config(format!(
            "no key named {name:?} ({} does not exist): create it with `conduit init --name \
             {name}`",
            path.display()
        )));
    }
    let key_path = home.private_key(name);
    let public = load_public(&path.to_string_lossy(), "public key").map_err(|e| match e {
        // The private key is the truth: a spoiled .pub can be written again from it.
        Error::Config(why) if key_path.is_file() => Error::Config(format!(
            "{why}; delete {} and run this again: it is written anew from {}",
            path.display(),
            key_path.display()
        )),
        other => other,
    })?;
    // A .pub copied over from another key would be pasted into a router's
    // authorized_clients, which would then refuse this key.
    if let Ok(Some(pair)) = load_private_if_present(&key_path, name)
        && pair.public() != public
    {
        return Err(Error::Config(format!(
            "{} holds {public}, which is not the public key of {} ({}): delete {0} and run \
             this again: it is written anew from the private key",
            path.display(),
            key_path.display(),
            pair.public()
        )));
    }
    Ok(public)
}

/// Writes `keys/NAME.pub` of `home` again from `keys/NAME.key` when the private key
/// is there and the public one is not (deleted by hand): the public key is derived
/// from the private one, and the file gets mode 0644. Returns the file written, if
/// any.
pub fn restore_named_public(home: &Home, name: &str) -> Result<Option<std::path::PathBuf>, Error> {
    validate_name(name)?;
    let (key_path, pub_path) = (home.private_key(name), home.public_key(name));
    if !matches!(pub_path.try_exists(), Ok(false)) || !key_path.is_file() {
        return Ok(None);
    }
    let pair = load_private(&key_path, name)?;
    let err = |source| Error::File {
        what: "cannot write public key",
        path: pub_path.clone(),
        source,
    };
    write_public(&pub_path, format!("{} {name}\n", pair.public()).as_bytes()).map_err(err)?;
    Ok(Some(pub_path))
}

/// For the plain transport, which checks no keys: the key at `path` when there is
/// a file there (loaded and checked as [`load_private`] does), `None` when there
/// is none.
pub fn load_private_if_present(path: &Path, hint_name: &str) -> Result<Option<KeyPair>, Error> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        _ => load_private(path, hint_name).map(Some),
    }
}

/// The key a client tunnel runs with, and the file it comes from: the key at
/// `path`; on the plain transport, which checks no keys, a key made for this run
/// (never written, never sent) when there is no file at `path`.
pub fn client_identity(path: &Path, plain: bool) -> Result<(KeyPair, Option<PathBuf>), Error> {
    let loaded = if plain {
        load_private_if_present(path, "client")?
    } else {
        Some(load_private(path, "client")?)
    };
    match loaded {
        Some(pair) => Ok((pair, Some(path.to_owned()))),
        None => KeyPair::generate()
            .map(|pair| (pair, None))
            .map_err(|e| Error::Config(format!("cannot make a key: {e}"))),
    }
}

#[cfg(test)]
mod tests;
