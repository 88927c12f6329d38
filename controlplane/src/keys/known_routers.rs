//! The `known_routers` file: the keys each router named (`RouterKeys`), read,
//! parsed and rewritten under a lock beside it.

use std::collections::HashMap;
use std::path::Path;

use conduit_proto::PublicKey;

use super::{Unread, owner_only, read_trusted_bytes, unread_fix};
use crate::Error;

/// What a router named of its keys (`RouterKeys`), as `known_routers` keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownRouter {
    /// The keys it named, the one in use first.
    pub keys: Vec<PublicKey>,
    /// The pinned key they were learned under (`pin=`): the router proved it held
    /// this key, or a key learned under it, when it named them. A tunnel trusts them
    /// only while it still pins this key, so that pinning a router to another key
    /// (after a compromise, say) is not undone by what it named before.
    pub pin: PublicKey,
}

/// Why `known_routers` was not taken as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KnownUnread {
    /// It could not be read (no file descriptor left, an I/O error, no permission
    /// to read it, not a regular file). That says nothing of the keys in it: what a
    /// tunnel read from it before stays trusted, and it is read again later. The
    /// message names the problem and the fix.
    Failed(String),
    /// Its group or every user may write it, or another user owns it: anyone of
    /// them could make tunnels trust their own key for a router, so nothing in it is
    /// trusted until its mode or owner is fixed (the message says how).
    Untrusted(String),
}

impl std::fmt::Display for KnownUnread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Failed(why) | Self::Untrusted(why) => f.write_str(why),
        }
    }
}

/// Reads `known_routers`: the keys each router named (`RouterKeys`), by router as
/// the tunnels name it. A missing file is empty; a line that does not parse is
/// skipped (the router names its keys again at the next connection). A file that
/// cannot be read, or that others may write, is an error (see
/// [`read_known_routers`]).
pub fn load_known_routers(path: &Path) -> Result<HashMap<String, KnownRouter>, KnownUnread> {
    read_known_routers(path).map(|text| parse_known_routers(&text))
}

/// The text of `known_routers` (empty when there is none; bytes that are not UTF-8
/// spoil only their line). An error when it cannot be read, or when others may
/// write it (see [`KnownUnread`]).
pub fn read_known_routers(path: &Path) -> Result<String, KnownUnread> {
    match read_trusted_bytes(path, "known_routers") {
        Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Err(Unread::Untrusted(e)) => Err(KnownUnread::Untrusted(e.to_string())),
        Err(Unread::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(Unread::Io(e)) => Err(KnownUnread::Failed(format!(
            "cannot read {}: {e}; {}",
            path.display(),
            unread_fix(&e)
        ))),
    }
}

/// The text of a `known_routers` file, as [`load_known_routers`] reads it: lines of
/// `ROUTER KEY… pin=KEY`.
pub fn parse_known_routers(text: &str) -> HashMap<String, KnownRouter> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut words: Vec<&str> = l.split_whitespace().collect();
            let pin = PublicKey::parse(words.pop()?.strip_prefix("pin=")?).ok()?;
            let router = (*words.first()?).to_owned();
            let keys = words[1..]
                .iter()
                .map(|w| PublicKey::parse(w))
                .collect::<Result<Vec<_>, _>>()
                .ok()?;
            (!keys.is_empty()).then_some((router, KnownRouter { keys, pin }))
        })
        .collect()
}

/// Records in `known_routers` that `router` named `known.keys`, in place of what it
/// named before; the file is replaced atomically (mode 0600: it decides whom tunnels
/// trust). Returns the text written.
pub fn save_known_router(path: &Path, router: &str, known: &KnownRouter) -> Result<String, Error> {
    // Tunnels of one CONDUIT_HOME write it concurrently: each holds the lock from
    // reading to renaming, so none drops a line another just wrote.
    let _held = lock_beside(path)?;
    // Not rewritten over what cannot be read or trusted: its other lines would go.
    let mut all = load_known_routers(path).map_err(|e| Error::Config(e.to_string()))?;
    all.insert(router.to_owned(), known.clone());
    let mut routers: Vec<_> = all.into_iter().collect();
    routers.sort_by(|a, b| a.0.cmp(&b.0));
    let mut text = String::from(
        "# Keys routers named to the tunnels of this CONDUIT_HOME (written by them):\n\
         # ROUTER KEY... pin=KEY, the key in use first. Tunnels accept these keys for\n\
         # that router besides the ones they pin, as long as they still pin the key\n\
         # after pin= (the one they were learned under). Delete a line to stop\n\
         # trusting them.\n",
    );
    for (r, known) in routers {
        let keys: Vec<String> = known.keys.iter().map(ToString::to_string).collect();
        text.push_str(&format!("{r} {} pin={}\n", keys.join(" "), known.pin));
    }
    // Tunnels write it concurrently: a temp file of each process's own.
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".tmp.{}", std::process::id()));
    owner_only(
        path,
        &path.with_file_name(name),
        text.as_bytes(),
        "cannot write",
    )?;
    Ok(text)
}

/// Takes an exclusive lock on `PATH.lock` (created owner-only), held until the file
/// returned is dropped. The lock is on a file beside `path` because `path` itself is
/// replaced by rename, which a lock on it would not survive.
pub(crate) fn lock_beside(path: &Path) -> Result<std::fs::File, Error> {
    lock_beside_telling(path, || {})
}

/// [`lock_beside`], calling `waiting` first when another process holds the lock
/// (and so this one is about to wait for it).
pub(crate) fn lock_beside_telling(
    path: &Path,
    waiting: impl FnOnce(),
) -> Result<std::fs::File, Error> {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".lock");
    let lock = path.with_file_name(name);
    let err = |source| Error::File {
        what: "cannot lock",
        path: lock.clone(),
        source,
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let f = opts.open(&lock).map_err(err)?;
    match f.try_lock() {
        Ok(()) => return Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => waiting(),
        Err(std::fs::TryLockError::Error(e)) => return Err(err(e)),
    }
    f.lock().map_err(err)?;
    Ok(f)
}
