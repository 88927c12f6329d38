//! Key files: generate them (private key mode 0600), load them (refusing a private
//! key others can read, as ssh does), and read public keys and the authorized-clients
//! file.
//!
//! Formats: the private key is PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`, what
//! `openssl genpkey -algorithm ed25519` writes); the `.pub` file is one line,
//! `ed25519:<base64> NAME`; `authorized_clients` holds such lines, with `#` comments
//! and blank lines allowed.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::SystemTime;

use conduit_proto::{KeyPair, PublicKey};

use crate::Error;
use crate::home::Home;

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
        new_owner_only(&tmp, pem.as_bytes(), "cannot write private key")?;
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
    let line = format!("{} {name}\n", pair.public());
    let err = |source| Error::File {
        what: "cannot write public key",
        path: pub_path.clone(),
        source,
    };
    std::fs::write(&pub_path, line).map_err(err)?;
    // Whatever the umask: others may read it, only its owner write it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pub_path, std::fs::Permissions::from_mode(0o644)).map_err(err)?;
    }
    Ok(pair)
}

/// Refuses a file of trusted keys (authorized clients, a pinned router key) that
/// others may write: anyone on the host could then admit a key, or pin their own
/// router (as ssh refuses such an `authorized_keys`).
fn trusted_file(path: &Path, what: &str) -> Result<(), Error> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o002 != 0 {
                return Err(Error::Config(format!(
                    "{what} {} is writable by every user of this host (mode {mode:04o}), who \
                     could put their own key in it; run `chmod o-w {}`",
                    path.display(),
                    path.display()
                )));
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (path, what);
    Ok(())
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

/// Writes a private key file, readable by its owner only, replacing any previous one.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    owner_only(
        path,
        &path.with_extension("key.tmp"),
        bytes,
        "cannot write private key",
    )
}

/// Writes `bytes` to `path` through `tmp`, a fresh file with mode 0600 from the start,
/// renamed over `path`: readers see the old file or the new one, never a part.
fn owner_only(path: &Path, tmp: &Path, bytes: &[u8], what: &'static str) -> Result<(), Error> {
    let _ = std::fs::remove_file(tmp);
    new_owner_only(tmp, bytes, what)?;
    std::fs::rename(tmp, path).map_err(|source| Error::File {
        what,
        path: path.to_owned(),
        source,
    })
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
    load_public(&path.to_string_lossy(), "public key").map_err(|e| match e {
        // The private key is the truth: a spoiled .pub can be written again from it.
        Error::Config(why) if home.private_key(name).is_file() => Error::Config(format!(
            "{why}; delete {} and run this again: it is written anew from {}",
            path.display(),
            home.private_key(name).display()
        )),
        other => other,
    })
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
    std::fs::write(&pub_path, format!("{} {name}\n", pair.public())).map_err(err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pub_path, std::fs::Permissions::from_mode(0o644)).map_err(err)?;
    }
    Ok(Some(pub_path))
}

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
                "private key {} is readable by group or others (mode {mode:04o}); \
                 run `chmod 600 {}` and start again",
                path.display(),
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

/// A public key given inline (`ed25519:…`) or as the path of a `.pub` file.
pub fn load_public(spec: &str, what: &str) -> Result<PublicKey, Error> {
    let spec = spec.trim();
    if spec.starts_with("ed25519:") {
        // The line `conduit init` prints, its name too, is taken as it is.
        return PublicKey::parse_named(spec).map_err(|e| Error::Config(format!("{what}: {e}")));
    }
    let path = Path::new(spec);
    trusted_file(path, "the public key file")?;
    let text = std::fs::read_to_string(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
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
    for line in text.lines() {
        match PublicKey::parse_line(line) {
            None => continue,
            Some(Ok((key, _))) => return Ok(key),
            Some(Err(e)) => {
                return Err(Error::Config(format!("{what} in {}: {e}", path.display())));
            }
        }
    }
    Err(Error::Config(format!(
        "{what}: {} holds no key",
        path.display()
    )))
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
        // Checks the file as for one key (it exists, its first key is sound), then
        // takes every key line.
        load_public(one, what)?;
        let text = std::fs::read_to_string(one).map_err(|source| Error::File {
            what: "cannot read public key",
            path: one.into(),
            source,
        })?;
        for line in text.lines() {
            match PublicKey::parse_line(line) {
                None => {}
                Some(Ok((key, _))) => keys.push(key),
                Some(Err(e)) => return Err(Error::Config(format!("{what} in {one}: {e}"))),
            }
        }
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

/// Reads `known_routers`: the keys each router named (`RouterKeys`), by router as
/// the tunnels name it. A missing file is empty; a line that does not parse is
/// skipped (the router names its keys again at the next connection). A file that
/// cannot be read, or that every user may write, is an error (see
/// [`read_known_routers`]).
pub fn load_known_routers(path: &Path) -> Result<HashMap<String, KnownRouter>, String> {
    read_known_routers(path).map(|text| parse_known_routers(&text))
}

/// The text of `known_routers` (empty when there is none; bytes that are not UTF-8
/// spoil only their line). An error when it cannot be read, or when every user of
/// the host may write it: anyone could then make tunnels trust their own key for a
/// router, so nothing in it is trusted until `chmod o-w`.
pub fn read_known_routers(path: &Path) -> Result<String, String> {
    match std::fs::read(path) {
        Ok(bytes) => {
            trusted_file(path, "known_routers").map_err(|e| e.to_string())?;
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
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
    let mut all = load_known_routers(path).map_err(Error::Config)?;
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
    f.lock().map_err(err)?;
    Ok(f)
}

/// An authorized-clients file: each key's comment, and the expiry time of keys
/// being rotated out (`expires=2026-12-01T00:00:00Z ed25519:… name`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthorizedFile {
    /// Key → comment.
    pub names: HashMap<PublicKey, String>,
    /// Key → the time it stops being admitted.
    pub expires: HashMap<PublicKey, SystemTime>,
}

/// Reads an authorized-clients file: key → comment (expiry times aside).
pub fn load_authorized(path: &Path) -> Result<HashMap<PublicKey, String>, Error> {
    load_authorized_file(path).map(|f| f.names)
}

/// Reads an authorized-clients file with its expiry times.
pub fn load_authorized_file(path: &Path) -> Result<AuthorizedFile, Error> {
    trusted_file(path, "the authorized clients file")?;
    let text = std::fs::read_to_string(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::Config(format!(
                "no authorized clients file at {}: create it with one client public key per line \
                 (what `conduit init` printed on each client), or pass --authorized-keys PATH",
                path.display()
            ))
        } else if source.kind() == std::io::ErrorKind::InvalidData {
            Error::Config(format!(
                "{} is not an authorized clients file (it is not text): it holds one client \
                 public key per line (what `conduit init` printed on each client)",
                path.display()
            ))
        } else {
            Error::File {
                what: "cannot read authorized clients file",
                path: path.to_owned(),
                source,
            }
        }
    })?;
    parse_authorized_file(&text)
        .map_err(|(line, e)| Error::Config(format!("{} line {line}: {e}", path.display())))
}

/// Parses authorized-clients text; errors carry the 1-based line number.
pub fn parse_authorized(text: &str) -> Result<HashMap<PublicKey, String>, (usize, String)> {
    parse_authorized_file(text).map(|f| f.names)
}

/// Parses authorized-clients text with its expiry times. A line is a key as a
/// `.pub` file holds it, optionally preceded by `expires=TIME`, where TIME is UTC
/// as `2026-12-01T18:00:00Z` or a date (`2026-12-01`, midnight UTC).
pub fn parse_authorized_file(text: &str) -> Result<AuthorizedFile, (usize, String)> {
    let mut file = AuthorizedFile::default();
    // The line each key is on: a key listed twice is an error, since its lines may
    // say different things (`expires=` on one only: is it leaving or not?).
    let mut seen: HashMap<PublicKey, usize> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        let (expires, rest) = match trimmed.strip_prefix("expires=") {
            Some(after) => {
                let (when, rest) = after.split_once(char::is_whitespace).unwrap_or((after, ""));
                (Some(parse_expiry(when).map_err(|e| (i + 1, e))?), rest)
            }
            None => (None, trimmed),
        };
        match PublicKey::parse_line(rest) {
            None if expires.is_some() => {
                return Err((i + 1, "expires= must be followed by a key".to_owned()));
            }
            None => {}
            Some(Ok((k, comment))) => {
                if let Some(first) = seen.insert(k, i + 1) {
                    return Err((
                        i + 1,
                        format!(
                            "key {k} is listed on line {first} already; keep one line per key \
                             (with expires= on it, if it is to leave)"
                        ),
                    ));
                }
                file.names.insert(k, comment);
                match expires {
                    Some(t) => file.expires.insert(k, t),
                    None => file.expires.remove(&k),
                };
            }
            Some(Err(e)) => return Err((i + 1, e.to_string())),
        }
    }
    Ok(file)
}

/// Rotates `old` out of authorized-clients `text` at `now`: its line gains
/// `expires=` at `expires`, and a line for `next` with `name` follows it. Lines of
/// keys whose expiry time has passed are dropped (each rotation leaves one); every
/// other line is kept as written. Fails when `old` is not in the text, already has
/// an expiry time (an operator is phasing it out, or it was rotated already: a
/// rotation must not outlive either), or `next` is already there.
pub fn rotate_authorized(
    text: &str,
    old: &PublicKey,
    next: &PublicKey,
    name: &str,
    now: SystemTime,
    expires: SystemTime,
) -> Result<String, String> {
    let file = parse_authorized_file(text).map_err(|(line, e)| format!("line {line}: {e}"))?;
    if file.names.contains_key(next) {
        return Err(format!("key {next} is already authorized"));
    }
    if let Some(t) = file.expires.get(old) {
        return Err(format!(
            "key {old} is already set to expire at {} in authorized_clients; it is not rotated \
             again (a tunnel that rotated it uses the new key once it reconnects)",
            humantime::format_rfc3339_seconds(*t)
        ));
    }
    let when = humantime::format_rfc3339_seconds(expires);
    let mut out = String::with_capacity(text.len() + 160);
    let mut found = false;
    for line in text.lines() {
        let trimmed = line.trim();
        let rest = match trimmed.strip_prefix("expires=") {
            Some(after) => after.split_once(char::is_whitespace).map_or("", |(_, r)| r),
            None => trimmed,
        };
        match PublicKey::parse_line(rest) {
            Some(Ok((k, _))) if file.expires.get(&k).is_some_and(|t| *t <= now) => {}
            Some(Ok((k, _))) if k == *old => {
                found = true;
                out.push_str(&format!("expires={when} {}\n", rest.trim()));
                let name = if name.is_empty() {
                    String::new()
                } else {
                    format!(" {name}")
                };
                out.push_str(&format!("{next}{name}\n"));
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    if !found {
        return Err(format!(
            "key {old} is not in the authorized-clients file (was it removed meanwhile?)"
        ));
    }
    Ok(out)
}

/// Replaces `path` with `bytes` atomically (a temporary file beside it, renamed
/// over it), keeping its permissions. A symbolic link is followed: the file it leads
/// to is replaced (routers sharing it through links see the change), not the link.
pub fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let path = &std::fs::canonicalize(path)?;
    let perms = std::fs::metadata(path)?.permissions();
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.set_permissions(perms)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

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
    let tmp = key_path.with_extension("pub.tmp");
    std::fs::write(&tmp, line)
        .and_then(|()| std::fs::rename(&tmp, &pub_path))
        .map_err(|source| Error::File {
            what: "cannot write public key",
            path: pub_path,
            source,
        })
}

fn parse_expiry(s: &str) -> Result<SystemTime, String> {
    let full = if s.len() == 10 {
        format!("{s}T00:00:00Z")
    } else {
        s.to_owned()
    };
    humantime::parse_rfc3339(&full).map_err(|_| {
        format!("expires={s} is not a UTC time; write it as 2026-12-01T18:00:00Z or 2026-12-01")
    })
}

#[cfg(test)]
mod tests;
