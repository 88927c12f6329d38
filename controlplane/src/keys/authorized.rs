//! The authorized-clients file: read and parsed with its `expires=` times, rotated
//! as text, and replaced atomically.

use std::collections::HashMap;
use std::path::Path;
use std::time::SystemTime;

use conduit_proto::PublicKey;

use super::{Unread, read_trusted};
use crate::Error;

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
    let text = read_trusted(path, "the authorized clients file").map_err(|e| {
        let source = match e {
            Unread::Untrusted(e) => return e,
            Unread::Io(source) => source,
        };
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
    // Every bad line, not only the first: an operator fixes them in one go.
    let mut bad: Vec<(usize, String)> = Vec::new();
    // A byte-order mark, as some Windows editors write, is no part of the first line.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        let (expires, rest) = match trimmed.strip_prefix("expires=") {
            Some(after) => {
                let (when, rest) = after.split_once(char::is_whitespace).unwrap_or((after, ""));
                match parse_expiry(when) {
                    Ok(t) => (Some(t), rest),
                    Err(e) => {
                        bad.push((i + 1, e));
                        continue;
                    }
                }
            }
            None => (None, trimmed),
        };
        match PublicKey::parse_line(rest) {
            None if expires.is_some() => {
                bad.push((i + 1, "expires= must be followed by a key".to_owned()));
            }
            None => {}
            Some(Ok((k, comment))) => {
                if let Some(first) = seen.insert(k, i + 1) {
                    bad.push((
                        i + 1,
                        format!(
                            "key {k} is listed on line {first} already; keep one line per key \
                             (with expires= on it, if it is to leave)"
                        ),
                    ));
                    continue;
                }
                file.names.insert(k, comment);
                match expires {
                    Some(t) => file.expires.insert(k, t),
                    None => file.expires.remove(&k),
                };
            }
            Some(Err(e)) => bad.push((i + 1, e.to_string())),
        }
    }
    // The first bad line's number, and what each bad line holds.
    let mut lines = bad.into_iter();
    let Some((first, why)) = lines.next() else {
        return Ok(file);
    };
    let rest: String = lines.map(|(n, e)| format!("; line {n}: {e}")).collect();
    Err((first, format!("{why}{rest}")))
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
             again (a tunnel that rotated it uses the new key once it reconnects; to rotate a \
             key whose expires= was set by hand, remove that expires= from its line first)",
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
    super::renamed_into_place(&path.with_file_name(name), path, bytes, perms)
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
