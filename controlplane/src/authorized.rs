//! `authorized_clients` while the router runs: admitting a new client or revoking one
//! must not need a restart, which would cut every other client's streams.
//!
//! The router reads the file again when it changes (checked every
//! [`POLL_INTERVAL`]) and at once on SIGHUP. A file that no longer parses changes
//! nothing: the keys loaded before stay in force and the error says which line to
//! fix, so a typo never locks every client out. A key that disappears is revoked
//! everywhere it is in use: its streams are closed, its control sessions are told
//! goodbye, and any channel it still holds is refused the next `Open` (see
//! `AdmittedPolicy`); new handshakes with it fail in the TLS verifier.
//!
//! A key listed with `expires=TIME` (a key being rotated out: the new one is added
//! beside it, the old one kept for a grace period) is revoked the same way when that
//! time passes, within one [`POLL_INTERVAL`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use conduit_dataplane::{DataPlane, SourcePolicy, SourceProtocol};
use conduit_proto::tls::AuthorizedClients;
use conduit_proto::{PublicKey, Refusal, RefusalCode};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::balance::Balancer;
use crate::keys;
use crate::policy::{AllowList, Caller};
use crate::signals::{Signals, Which};

/// How often the file's size, modification time and inode are compared.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// What streams and control sessions of a revoked key are told.
pub const REVOKED: &str = "the client's key was removed from the router's authorized_clients";

/// Why `key` is not admitted: its `expires=` time passed (the fix is on its line), or
/// it is not listed at all.
pub(crate) fn not_admitted(authorized: &AuthorizedClients, key: &PublicKey) -> String {
    match authorized.expiry(key) {
        Some(at) if at <= SystemTime::now() => format!(
            "client key {key} expired at {} (expires= on its line in the router's \
             authorized_clients): extend or remove that expires=, or rotate the client to a \
             new key (conduit keys rotate)",
            humantime::format_rfc3339_seconds(at)
        ),
        _ => format!(
            "client key {key} is not authorized; add it to the router's authorized_clients file"
        ),
    }
}

/// A warning for each client name that allow rules (`NAME=HOST:PORT`) are for but no
/// key in `names` (read from `path`) bears: those rules apply to no one. A key's name
/// is the whole rest of its line, up to a `#` comment, so a rule for `laptop` does not
/// name `ed25519:… Bob Smith laptop`; a key whose name holds the rule's among other
/// words (or in another case) is named, with the line that gives it the rule's name.
pub fn unnamed_rules(
    policy: &AllowList,
    names: &[(PublicKey, String)],
    path: &Path,
) -> Vec<String> {
    let mut out = Vec::new();
    for (name, rules) in policy.name_rules() {
        if names.iter().any(|(_, n)| n == name) {
            continue;
        }
        let (rules, they) = match rules.as_slice() {
            [one] => (format!("allow rule `{one}` names"), "it applies"),
            many => (
                format!("allow rules `{}` name", many.join("`, `")),
                "they apply",
            ),
        };
        let mut close: Vec<String> = names
            .iter()
            .filter(|(_, n)| n.split_whitespace().any(|w| w.eq_ignore_ascii_case(name)))
            .map(|(k, n)| {
                let rest: Vec<&str> = n
                    .split_whitespace()
                    .filter(|w| !w.eq_ignore_ascii_case(name))
                    .collect();
                let comment = match rest.is_empty() {
                    true => String::new(),
                    false => format!("  # {}", rest.join(" ")),
                };
                format!("key {k} is named {n:?} there: write its line `{k} {name}{comment}`")
            })
            .collect();
        close.sort();
        let close: String = close.iter().map(|c| format!("; {c}")).collect();
        out.push(format!(
            "{rules} client {name:?}, but no key in {} has that name: {they} to no one until a \
             key's line names it `ed25519:… {name}` (a key's name is the whole rest of its \
             line; anything else goes after a `#`){close}",
            path.display()
        ));
    }
    out
}

/// The allow-list (with balancing), refusing `Open`s from keys that are no longer
/// authorized: a channel handshaken before its key was revoked must not open
/// another source.
pub(crate) struct AdmittedPolicy {
    pub(crate) authorized: Arc<AuthorizedClients>,
    pub(crate) allow: Balancer,
}

impl SourcePolicy for AdmittedPolicy {
    fn resolve(
        &self,
        client: Option<&PublicKey>,
        target: &str,
        protocol: SourceProtocol,
    ) -> Result<Vec<std::net::SocketAddr>, Refusal> {
        let Some(key) = client else {
            return self.allow.resolve_for(None, target, protocol);
        };
        let Some(name) = self.authorized.lookup(key) else {
            let why = match self.authorized.expiry(key) {
                Some(at) if at <= SystemTime::now() => not_admitted(&self.authorized, key),
                _ => format!("client key {key} is no longer authorized: {REVOKED}"),
            };
            return Err(Refusal::new(RefusalCode::Unauthorized, why));
        };
        // Rules may name the client as its line in authorized_clients does.
        let caller = Caller {
            key,
            name: Some(name.as_str()).filter(|n| !n.is_empty()),
        };
        self.allow.resolve_for(Some(caller), target, protocol)
    }

    fn lookups(&self, client: Option<&PublicKey>, target: &str) -> Option<flume::Receiver<()>> {
        // Sources named by address, the common case, cost nothing here.
        if !crate::balance::names_a_host(target) {
            return None;
        }
        let caller = match client {
            None => None,
            // A key no longer admitted is refused by `resolve`, before any lookup.
            Some(key) => {
                let name = self.authorized.lookup(key)?;
                Some((key, name))
            }
        };
        let caller = caller.as_ref().map(|(key, name)| Caller {
            key,
            name: Some(name.as_str()).filter(|n| !n.is_empty()),
        });
        self.allow.lookups(caller, target)
    }

    fn gate(&self, target: &str) -> Result<(), Refusal> {
        self.allow.gate(target)
    }

    fn down_addrs(&self, target: &str, protocol: SourceProtocol) -> Vec<std::net::SocketAddr> {
        self.allow.down_addrs(target, protocol)
    }

    fn connected(&self, target: &str, addr: std::net::SocketAddr) {
        self.allow.connected(target, addr);
    }

    fn not_connected(&self, target: &str, error: &std::io::Error) {
        self.allow.not_connected(target, error);
    }
}

/// The file as last seen: any difference means "read it again".
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
    /// Its mode: a file refused for its mode is read again once `chmod` fixes it.
    mode: u32,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let (inode, mode) = (
        std::os::unix::fs::MetadataExt::ino(&m),
        std::os::unix::fs::MetadataExt::mode(&m),
    );
    #[cfg(not(unix))]
    let (inode, mode) = (0, 0);
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode,
        mode,
    })
}

/// Watches `path` until the task is dropped. `revoked` is bumped after keys were
/// removed, so control sessions check their own key again; the monitor forgets their
/// links.
pub(crate) async fn watch(
    path: PathBuf,
    authorized: Arc<AuthorizedClients>,
    dp: Arc<DataPlane>,
    monitor: Arc<crate::monitor::Monitor>,
    revoked: watch::Sender<u64>,
    policy: AllowList,
) {
    let mut hangups = Signals::listen(
        Which::Hangup,
        "authorized_clients is still reloaded when it changes",
    );
    let mut last = stamp(&path);
    // Set while the file cannot be read (out of file descriptors, an I/O error): it
    // is read again at every look until it can be, a change it holds not missed.
    let mut unread: Option<String> = None;
    let mut checked = SystemTime::now();
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let asked = tokio::select! {
            _ = tick.tick() => false,
            () = hangups.next() => true,
        };
        let mut gone = Vec::new();
        let now = stamp(&path);
        if asked || now != last || unread.is_some() {
            last = now;
            for (key, name) in reload(&path, &authorized, &policy, asked, &mut unread) {
                warn!(client = %key, %name, "client key removed from authorized_clients: closing its streams and control sessions");
                gone.push(key);
            }
        }
        let (before, until) = (checked, SystemTime::now());
        checked = until;
        for (key, name) in authorized.expired_between(before, until) {
            warn!(client = %key, %name, "client key expired (expires= in authorized_clients): closing its streams and control sessions");
            gone.push(key);
        }
        for key in &gone {
            // The links first: the sessions' ends that follow then find nothing to mark lost.
            monitor.revoked(*key);
            dp.revoke(*key, REVOKED);
        }
        if !gone.is_empty() {
            revoked.send_modify(|generation| *generation += 1);
        }
    }
}

/// Reads the file again and installs it; returns the keys it no longer holds. A
/// file that cannot be read changes nothing: that says nothing of the keys in it.
/// `unread` is then set to the error (logged when it is new), for the file to be
/// read again at the next look; and cleared once it is read.
fn reload(
    path: &Path,
    authorized: &AuthorizedClients,
    policy: &AllowList,
    asked: bool,
    unread: &mut Option<String>,
) -> Vec<(PublicKey, String)> {
    let why = match (asked, unread.is_some()) {
        (true, _) => "SIGHUP",
        (false, true) => "read again after it could not be",
        (false, false) => "the file changed",
    };
    let loaded = keys::load_authorized_file(path);
    let was_unread = unread.take();
    let new = match loaded {
        Ok(new) => new,
        Err(crate::Error::File { source, .. }) => {
            let e = format!("cannot read {}: {source}", path.display());
            // Said once, not at every look; again when an operator's SIGHUP asks.
            if asked || was_unread.as_ref() != Some(&e) {
                error!(
                    "authorized_clients not reloaded ({why}): {e}; {}; the {} key(s) loaded \
                     before stay in force, and it is read again every {}s until it can be",
                    keys::unread_fix(&source),
                    authorized.len(),
                    POLL_INTERVAL.as_secs()
                );
            }
            *unread = Some(e);
            return Vec::new();
        }
        Err(e) => {
            error!(
                "authorized_clients not reloaded ({why}): {e}; the {} key(s) loaded before \
                 stay in force until the file is fixed",
                authorized.len()
            );
            return Vec::new();
        }
    };
    if !asked && new.names.is_empty() && !authorized.is_empty() {
        // `> authorized_clients`, a download, an editor saving in place: the file is
        // empty for a moment before its lines arrive, and installing that would
        // revoke every client. Its next change is read as usual.
        warn!(
            "authorized_clients lists no key now ({why}): not reloaded, as a file caught \
             while it is written would revoke every client; the {} key(s) loaded before stay \
             in force. To revoke every client, send SIGHUP (kill -HUP {})",
            authorized.len(),
            std::process::id()
        );
        return Vec::new();
    }
    // A key new to the file whose expiry time is already past admits nobody: most
    // likely a mistyped date (keys a rotation retired were in the file before).
    let now = SystemTime::now();
    for (k, at) in new
        .expires
        .iter()
        .filter(|(k, at)| **at <= now && authorized.expiry(k).is_none())
        .filter(|(k, _)| authorized.lookup(k).is_none())
    {
        warn!(
            "client key {k} was added to authorized_clients with an expiry time already past \
             (expires={}): it admits nobody; correct the date (UTC, such as 2027-01-31) or \
             remove expires=",
            humantime::format_rfc3339_seconds(*at)
        );
    }
    let old = authorized.entries();
    let total = new.names.len();
    let expiring = new.expires.len();
    authorized.replace_with_expiry(new.names, new.expires);
    // Removed: admitted before and not now (gone from the file, or listed with an
    // expiry time already past).
    let removed: Vec<(PublicKey, String)> = old
        .iter()
        .filter(|(k, _)| authorized.lookup(k).is_none())
        .cloned()
        .collect();
    let before: std::collections::HashSet<PublicKey> = old.iter().map(|(k, _)| *k).collect();
    let added = authorized
        .entries()
        .iter()
        .filter(|(k, _)| !before.contains(k))
        .count();
    if expiring > 0 {
        info!("{expiring} key(s) in authorized_clients carry an expiry time (expires=)");
    }
    info!(
        "authorized_clients reloaded from {} ({why}): {total} in all, {added} added, {} removed",
        path.display(),
        removed.len()
    );
    // A name changed or a line deleted can leave rules by name applying to no one.
    for unnamed in unnamed_rules(policy, &authorized.entries(), path) {
        warn!("{unnamed}");
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use conduit_proto::KeyPair;

    fn line(k: &PublicKey, name: &str) -> String {
        format!("{k} {name}\n")
    }

    #[test]
    fn a_reload_installs_the_file_and_names_the_keys_it_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authorized_clients");
        let (a, b, c) = (
            KeyPair::generate().unwrap().public(),
            KeyPair::generate().unwrap().public(),
            KeyPair::generate().unwrap().public(),
        );
        std::fs::write(&path, line(&a, "alpha") + &line(&b, "beta")).unwrap();
        let set = AuthorizedClients::new(keys::load_authorized(&path).unwrap());
        // A key whose expiry time is already past counts as removed.
        std::fs::write(
            &path,
            format!("expires=2000-01-01 {}", line(&a, "alpha")) + &line(&b, "beta"),
        )
        .unwrap();
        assert_eq!(
            reload(&path, &set, &AllowList::default(), false, &mut None),
            vec![(a, "alpha".to_owned())]
        );
        std::fs::write(&path, line(&a, "alpha") + &line(&b, "beta")).unwrap();
        assert_eq!(
            reload(&path, &set, &AllowList::default(), false, &mut None),
            vec![]
        );
        assert_eq!(set.lookup(&a).as_deref(), Some("alpha"));

        std::fs::write(&path, line(&b, "beta") + &line(&c, "gamma")).unwrap();
        assert_eq!(
            reload(&path, &set, &AllowList::default(), false, &mut None),
            vec![(a, "alpha".to_owned())]
        );
        assert_eq!(set.lookup(&a), None);
        assert_eq!(set.lookup(&c).as_deref(), Some("gamma"));

        // A file that does not parse changes nothing.
        std::fs::write(&path, "ed25519:not-a-key\n").unwrap();
        assert_eq!(
            reload(&path, &set, &AllowList::default(), true, &mut None),
            vec![]
        );
        assert_eq!(set.len(), 2);
        assert_eq!(set.lookup(&b).as_deref(), Some("beta"));
        // Nor does a file that went away.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            reload(&path, &set, &AllowList::default(), false, &mut None),
            vec![]
        );
        assert_eq!(set.len(), 2);
    }

    /// A file that cannot be read (here a directory in its place; as well out of file
    /// descriptors, an I/O error) says nothing of its keys: they stay admitted, and
    /// the file is read again at the next look, where a key it no longer lists is
    /// revoked.
    #[test]
    fn a_file_that_cannot_be_read_keeps_its_keys_and_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authorized_clients");
        let (a, b) = (
            KeyPair::generate().unwrap().public(),
            KeyPair::generate().unwrap().public(),
        );
        std::fs::write(&path, line(&a, "alpha") + &line(&b, "beta")).unwrap();
        let set = AuthorizedClients::new(keys::load_authorized(&path).unwrap());
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        let mut unread = None;
        assert_eq!(
            reload(&path, &set, &AllowList::default(), false, &mut unread),
            vec![]
        );
        assert_eq!(
            unread.as_deref(),
            Some(format!("cannot read {}: not a regular file", path.display()).as_str())
        );
        assert_eq!(set.lookup(&a).as_deref(), Some("alpha"));
        assert_eq!(set.lookup(&b).as_deref(), Some("beta"));
        // SIGHUP does not make it revoke anyone either.
        assert_eq!(
            reload(&path, &set, &AllowList::default(), true, &mut unread),
            vec![]
        );
        assert_eq!(set.len(), 2);
        assert!(unread.is_some());
        // Read again: a key it no longer lists is revoked, and it is read as usual.
        std::fs::remove_dir(&path).unwrap();
        std::fs::write(&path, line(&b, "beta")).unwrap();
        assert_eq!(
            reload(&path, &set, &AllowList::default(), false, &mut unread),
            vec![(a, "alpha".to_owned())]
        );
        assert_eq!(unread, None);
        assert_eq!(set.lookup(&b).as_deref(), Some("beta"));
    }

    /// A rule by name that no key's name matches is named, with the key whose name
    /// holds it among other words and the line that would give it that name.
    #[test]
    fn rules_for_a_name_no_key_bears_are_named() {
        let (a, b) = (
            KeyPair::generate().unwrap().public(),
            KeyPair::generate().unwrap().public(),
        );
        let policy = AllowList::parse(&[
            "laptop=127.0.0.1:20010",
            "laptop=db.internal:5432",
            "ghost=127.0.0.1:1",
            "beta=127.0.0.1:2",
            "127.0.0.1:3",
        ])
        .unwrap();
        let names = [(a, "Bob Smith laptop".to_owned()), (b, "beta".to_owned())];
        let path = Path::new("/etc/conduit/authorized_clients");
        assert_eq!(
            unnamed_rules(&policy, &names, path),
            [
                "allow rule `ghost=127.0.0.1:1` names client \"ghost\", but no key in \
                 /etc/conduit/authorized_clients has that name: it applies to no one until a \
                 key's line names it `ed25519:… ghost` (a key's name is the whole rest of its \
                 line; anything else goes after a `#`)"
                    .to_owned(),
                format!(
                    "allow rules `laptop=127.0.0.1:20010`, `laptop=db.internal:5432` name \
                     client \"laptop\", but no key in /etc/conduit/authorized_clients has that \
                     name: they apply to no one until a key's line names it `ed25519:… laptop` \
                     (a key's name is the whole rest of its line; anything else goes after a \
                     `#`); key {a} is named \"Bob Smith laptop\" there: write its line `{a} \
                     laptop  # Bob Smith`"
                ),
            ]
        );
        // Named as a rule names it: nothing to say.
        let names = [(a, "laptop".to_owned()), (b, "ghost".to_owned())];
        let named = AllowList::parse(&["laptop=127.0.0.1:1", "ghost=127.0.0.1:1"]).unwrap();
        assert_eq!(unnamed_rules(&named, &names, path), Vec::<String>::new());
        // A name in another case is pointed at too.
        let names = [(a, "Laptop".to_owned())];
        let one = AllowList::parse(&["laptop=127.0.0.1:1"]).unwrap();
        assert_eq!(
            unnamed_rules(&one, &names, path),
            [format!(
                "allow rule `laptop=127.0.0.1:1` names client \"laptop\", but no key in \
                 /etc/conduit/authorized_clients has that name: it applies to no one until a \
                 key's line names it `ed25519:… laptop` (a key's name is the whole rest of its \
                 line; anything else goes after a `#`); key {a} is named \"Laptop\" there: \
                 write its line `{a} laptop`"
            )]
        );
    }

    #[test]
    fn revoked_keys_may_open_nothing() {
        let (a, b) = (
            KeyPair::generate().unwrap().public(),
            KeyPair::generate().unwrap().public(),
        );
        let authorized = Arc::new(AuthorizedClients::new(
            [(a, "alpha".to_owned())].into_iter().collect(),
        ));
        let policy = AdmittedPolicy {
            authorized,
            allow: Balancer::new(
                crate::policy::AllowList::parse(&["127.0.0.1:80"]).unwrap(),
                Arc::new(std::sync::OnceLock::new()),
            ),
        };
        assert_eq!(
            policy
                .resolve(Some(&a), "127.0.0.1:80", SourceProtocol::Tcp)
                .unwrap(),
            vec!["127.0.0.1:80".parse().unwrap()]
        );
        let refused = policy
            .resolve(Some(&b), "127.0.0.1:80", SourceProtocol::Tcp)
            .unwrap_err();
        assert_eq!(refused.code, RefusalCode::Unauthorized);
        assert_eq!(
            refused.message,
            format!("client key {b} is no longer authorized: {REVOKED}")
        );
        // The plain transport authenticates nobody: the allow-list alone decides.
        assert!(
            policy
                .resolve(None, "127.0.0.1:80", SourceProtocol::Tcp)
                .is_ok()
        );
    }
}
