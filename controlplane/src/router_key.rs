//! The router's own key, rotated by the router (`[router] key_rotation_days`): once
//! the key file is old enough the router makes its next key (`KEY.next`, mode 0600)
//! and names it to every tunnel on its control channels (`RouterKeys`, protocol 6)
//! for `key_announce_secs`; then it moves the next key over its key file, writes the
//! `.pub`, and presents the new key to every handshake from then on, without a
//! restart. SIGUSR1 starts a rotation at once. A router restarted while it announces
//! picks the staged key up again and announces it for what is left of the period
//! (counted from the staged file's time).
//!
//! Tunnels that connected during the announcement trust the new key (they keep it in
//! `known_routers`). For one that was away the whole time, the router keeps each key
//! it rotated away from (`KEY.old-SECS`, mode 0600, SECS the Unix time of the switch)
//! for `key_retire_secs` after its switch and presents it to a tunnel that asks for
//! it (each tunnel names the key it expects in its handshake,
//! [`conduit_proto::tls::router_server_name`]); the control channel then names the
//! new key, which the tunnel trusts from then on. Rotations closer together than
//! `key_retire_secs` leave several keys kept, so that a tunnel away for any part of
//! that time still connects. Past that, such a tunnel refuses the router until its
//! operator pins the new key. A key left by hand as `KEY.old` (after a switch with
//! `--next-key`, then `--key`) is kept the same way, from the file's time.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use conduit_proto::tls::{AuthorizedClients, ServerConfig, Suites, server_config};
use conduit_proto::{KeyPair, PublicKey};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::keys;
use crate::signals::{Signals, Which};

/// When and how the router rotates its key.
#[derive(Debug, Clone)]
pub struct KeyRotation {
    /// The router's key file.
    pub path: PathBuf,
    /// A key this old is rotated (`None`: only on SIGUSR1).
    pub every: Option<Duration>,
    /// How long the next key is named to tunnels before the router presents it.
    pub announce: Duration,
    /// How long after the switch the old key is still presented to tunnels that ask
    /// for it (zero: it is forgotten at the switch).
    pub retire: Duration,
}

/// What the router presents and names, swapped whole when the key changes.
pub(crate) struct Presented {
    /// The TLS configuration every new handshake uses.
    pub(crate) tls: Arc<ServerConfig>,
    /// What `RouterKeys` names: the key in use, then the next one if there is one.
    pub(crate) keys: Vec<PublicKey>,
    /// The key in use, and the old ones still presented to tunnels that ask for
    /// them (newest first).
    present: Arc<KeyPair>,
    retiring: Vec<Arc<KeyPair>>,
}

impl Presented {
    /// The old keys still presented to tunnels that ask for them, newest first.
    pub(crate) fn retiring(&self) -> Vec<PublicKey> {
        self.retiring.iter().map(|k| k.public()).collect()
    }
}

/// The router's key and TLS configuration, as handshakes and control sessions read
/// them; control sessions [`subscribe`](Self::subscribe) to name a change at once.
/// Changed by the rotation task alone.
pub(crate) struct RouterIdentity {
    presented: watch::Sender<Arc<Presented>>,
    authorized: Arc<AuthorizedClients>,
    /// The cipher suites handshakes accept (`--cipher-suites`).
    suites: Suites,
}

impl RouterIdentity {
    pub(crate) fn new(
        identity: KeyPair,
        next: Option<PublicKey>,
        authorized: Arc<AuthorizedClients>,
        suites: Suites,
    ) -> Result<Self, String> {
        let present = Arc::new(identity);
        let keys = std::iter::once(present.public())
            .chain(next.filter(|k| *k != present.public()))
            .collect();
        let presented = Self::build(&authorized, &suites, present, Vec::new(), keys)?;
        Ok(Self {
            presented: watch::Sender::new(Arc::new(presented)),
            authorized,
            suites,
        })
    }

    fn build(
        authorized: &Arc<AuthorizedClients>,
        suites: &Suites,
        present: Arc<KeyPair>,
        retiring: Vec<Arc<KeyPair>>,
        keys: Vec<PublicKey>,
    ) -> Result<Presented, String> {
        let held: Vec<&KeyPair> = std::iter::once(&*present)
            .chain(retiring.iter().map(|k| &**k))
            .collect();
        let tls = server_config(&held, authorized.clone(), suites).map_err(|e| e.to_string())?;
        Ok(Presented {
            tls,
            keys,
            present,
            retiring,
        })
    }

    pub(crate) fn presented(&self) -> Arc<Presented> {
        self.presented.borrow().clone()
    }

    /// Changes, for a control session to name to its tunnel as they happen.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<Presented>> {
        self.presented.subscribe()
    }

    /// Names `next` beside the key in use.
    fn announce(&self, next: PublicKey) {
        let p = self.presented();
        self.presented.send_replace(Arc::new(Presented {
            tls: p.tls.clone(),
            keys: vec![p.keys[0], next],
            present: p.present.clone(),
            retiring: p.retiring.clone(),
        }));
    }

    /// Presents `pair` from now on; the key it replaces goes on being presented to
    /// tunnels that ask for it when `keep_old`, before the old keys still kept.
    fn switch(&self, pair: Arc<KeyPair>, keep_old: bool) -> Result<(), String> {
        let p = self.presented();
        let retiring = keep_old
            .then(|| p.present.clone())
            .into_iter()
            .chain(p.retiring.iter().cloned())
            .collect();
        let keys = vec![pair.public()];
        let next = Self::build(&self.authorized, &self.suites, pair, retiring, keys)?;
        self.presented.send_replace(Arc::new(next));
        Ok(())
    }

    /// Presents `old` (newest first) to tunnels that ask for them, and no other old
    /// key.
    fn retiring(&self, old: Vec<Arc<KeyPair>>) -> Result<(), String> {
        let p = self.presented();
        let next = Self::build(
            &self.authorized,
            &self.suites,
            p.present.clone(),
            old,
            p.keys.clone(),
        )?;
        self.presented.send_replace(Arc::new(next));
        Ok(())
    }
}

/// The staged next key, if a rotation is under way: the key file's `.next`.
fn staged_path(r: &KeyRotation) -> PathBuf {
    keys::beside(&r.path, ".next")
}

/// An old key kept after a rotation while it is still presented.
struct Kept {
    pair: Arc<KeyPair>,
    /// When it stops being presented.
    until: SystemTime,
    /// Its file: `KEY.old-SECS`, or `KEY.old` left by hand.
    path: PathBuf,
}

/// The time in a kept key's file name, for a switch at `when`: its Unix second, or
/// the next free one (two switches within a second keep two files).
fn old_suffix(r: &KeyRotation, when: SystemTime) -> u64 {
    let mut secs = when.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    while keys::beside(&r.path, &format!(".old-{secs}")).exists() {
        secs += 1;
    }
    secs
}

/// When the key in file `name` (beside the key file `key_name`) was switched away
/// from, if it is a kept key's file: `KEY.old-SECS` says; `KEY.old` (left by hand)
/// has the file's time.
fn switched_at(key_name: &str, name: &str, path: &std::path::Path) -> Option<SystemTime> {
    let rest = name.strip_prefix(key_name)?.strip_prefix(".old")?;
    if rest.is_empty() {
        return std::fs::metadata(path).and_then(|m| m.modified()).ok();
    }
    let secs: u64 = rest.strip_prefix('-')?.parse().ok()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// Whether a key of age `age` is due for rotation every `every`: the next key is
/// made `announce` before the key turns `every` old, so that the switch falls on its
/// birthday.
fn due(age: Duration, every: Duration, announce: Duration) -> bool {
    age + announce >= every
}

/// How often the rotation task looks at the clock: a quarter of the shortest period
/// it keeps, within 100 ms and a minute.
fn step(r: &KeyRotation) -> Duration {
    let shortest = if r.retire.is_zero() {
        r.announce
    } else {
        r.announce.min(r.retire)
    };
    (shortest / 4).clamp(Duration::from_millis(100), Duration::from_secs(60))
}

/// Rotates the router's key as `r` says until the task is dropped.
/// SIGUSR1 is listened for from the router's start (`usr1`, see [`listen`]), so that
/// one sent as soon as the router says it listens is not the default action's.
pub(crate) async fn run(identity: Arc<RouterIdentity>, r: KeyRotation, mut usr1: Signals) {
    // The old keys previous runs of the router rotated away from, while they last.
    let mut kept = take_up_old(&identity, &r);
    let staged = staged_path(&r);
    // A rotation a previous run of the router began.
    let mut next: Option<(Arc<KeyPair>, SystemTime)> = match std::fs::metadata(&staged) {
        Ok(meta) => match keys::load_private(&staged, "router") {
            Ok(pair) => {
                let since = meta.modified().unwrap_or_else(|_| SystemTime::now());
                info!(next = %pair.public(), "router key rotation under way: naming the next key to tunnels again");
                identity.announce(pair.public());
                Some((Arc::new(pair), since))
            }
            Err(e) => {
                warn!("ignoring {}: {e}", staged.display());
                None
            }
        },
        Err(_) => None,
    };
    let step = step(&r);
    loop {
        let asked = tokio::select! {
            () = tokio::time::sleep(step) => false,
            () = usr1.next() => true,
        };
        if kept.iter().any(|k| SystemTime::now() >= k.until)
            && let Err(e) = retire_old(&identity, &mut kept)
        {
            error!("router key rotation: {e}; trying again in {step:?}");
        }
        match &next {
            None => {
                let age = std::fs::metadata(&r.path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .unwrap_or_default();
                let scheduled = r.every.is_some_and(|every| due(age, every, r.announce));
                if !(asked || scheduled) {
                    continue;
                }
                match stage(&r) {
                    Ok(pair) => {
                        info!(next = %pair.public(), "router key rotation: naming the next key to tunnels for {:?}, then presenting it", r.announce);
                        identity.announce(pair.public());
                        next = Some((Arc::new(pair), SystemTime::now()));
                    }
                    Err(e) => error!("router key rotation: {e}; trying again in {step:?}"),
                }
            }
            Some((pair, since)) => {
                if asked {
                    info!(next = %pair.public(), "router key rotation already under way");
                }
                if since.elapsed().unwrap_or_default() < r.announce {
                    continue;
                }
                match switch(&identity, &r, pair) {
                    Ok(old) => {
                        kept.splice(0..0, old);
                        next = None;
                    }
                    Err(e) => error!("router key rotation: {e}; trying again in {step:?}"),
                }
            }
        }
    }
}

/// Moves the router to `pair`: keeps the key in use as `KEY.old-SECS` (unless
/// nothing is kept), moves the staged key over the key file and presents it. Returns
/// the key kept, if one is.
fn switch(
    identity: &RouterIdentity,
    r: &KeyRotation,
    pair: &Arc<KeyPair>,
) -> Result<Option<Kept>, String> {
    let old = identity.presented().present.clone();
    let keep = !r.retire.is_zero();
    let now = SystemTime::now();
    let path = if keep {
        Some(keys::keep_old_pair(&r.path, &old, old_suffix(r, now)).map_err(|e| e.to_string())?)
    } else {
        None
    };
    commit(r, pair)?;
    identity.switch(pair.clone(), keep)?;
    match path {
        Some(path) => {
            let before = identity.presented().retiring.len() - 1;
            let also = if before == 0 {
                String::new()
            } else {
                let s = if before == 1 { "" } else { "s" };
                format!(
                    " ({before} older key{s} kept too, each for {:?} after its own switch)",
                    r.retire
                )
            };
            info!(key = %pair.public(), old = %old.public(), "router key rotated: presenting the new key from now on; tunnels that heard of it accept it, and for {:?} the old key is still presented to tunnels that ask for it (then named the new one){also}", r.retire);
            Ok(Some(Kept {
                pair: old,
                until: now + r.retire,
                path,
            }))
        }
        None => {
            info!(key = %pair.public(), old = %old.public(), "router key rotated: presenting the new key from now on; tunnels that heard of it accept it, others need it pinned (key_retire_secs = 0: the old key is forgotten)");
            Ok(None)
        }
    }
}

/// At start: presents the old keys kept by previous runs (`KEY.old-SECS`, or
/// `KEY.old` left by hand) to tunnels that ask for them, each for what is left of
/// `key_retire_secs` since its switch; removes those whose time is over. Returns
/// the ones kept, newest first.
fn take_up_old(identity: &RouterIdentity, r: &KeyRotation) -> Vec<Kept> {
    let (Some(dir), Some(key_name)) =
        (r.path.parent(), r.path.file_name().and_then(|n| n.to_str()))
    else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() {
        std::path::Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let present = identity.presented().keys[0];
    let now = SystemTime::now();
    let mut kept = Vec::new();
    for f in entries.flatten() {
        let path = f.path();
        let Some(since) = f
            .file_name()
            .to_str()
            .and_then(|name| switched_at(key_name, name, &path))
        else {
            continue;
        };
        let until = since + r.retire;
        let pair = match keys::load_private(&path, "router") {
            Ok(pair) => pair,
            Err(e) => {
                warn!("ignoring {}: {e}", path.display());
                continue;
            }
        };
        let old = pair.public();
        if r.retire.is_zero() || now >= until || old == present {
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    info!(%old, "removed the router's old key {}: its time (key_retire_secs) is over", path.display())
                }
                Err(e) => warn!(%old, "cannot remove the router's old key {}: {e}", path.display()),
            }
            continue;
        }
        kept.push(Kept {
            pair: Arc::new(pair),
            until,
            path,
        });
    }
    kept.sort_by_key(|k| std::cmp::Reverse(k.until));
    match identity.retiring(kept.iter().map(|k| k.pair.clone()).collect()) {
        Ok(()) => {
            for k in &kept {
                info!(old = %k.pair.public(), "still presenting the old router key to tunnels that ask for it until {}", humantime::format_rfc3339_seconds(k.until));
            }
            kept
        }
        Err(e) => {
            warn!("cannot present the router's old keys: {e}");
            Vec::new()
        }
    }
}

/// Stops presenting the kept keys whose time is over, and removes their files.
fn retire_old(identity: &RouterIdentity, kept: &mut Vec<Kept>) -> Result<(), String> {
    let now = SystemTime::now();
    let (over, left): (Vec<Kept>, Vec<Kept>) = std::mem::take(kept)
        .into_iter()
        .partition(|k| now >= k.until);
    if let Err(e) = identity.retiring(left.iter().map(|k| k.pair.clone()).collect()) {
        kept.extend(over);
        kept.extend(left);
        kept.sort_by_key(|k| std::cmp::Reverse(k.until));
        return Err(e);
    }
    *kept = left;
    for k in over {
        let old = k.pair.public();
        if let Err(e) = std::fs::remove_file(&k.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(%old, "cannot remove the router's old key {}: {e}; remove it by hand", k.path.display());
        }
        info!(%old, "router key retired: tunnels that still pin only {old} now refuse this router until they pin its key");
    }
    Ok(())
}

/// Answers each SIGUSR1 of a router that does not rotate its key with why not (the
/// signal's default action would end the router).
pub(crate) async fn refuse(why: &'static str, mut usr1: Signals) {
    loop {
        usr1.next().await;
        warn!("SIGUSR1: this router does not rotate its key: {why}");
    }
}

/// Starts listening for SIGUSR1 (before the router says it listens), for [`run`]
/// or [`refuse`].
pub(crate) fn listen(rotates: bool) -> Signals {
    let otherwise = if rotates {
        "the router key rotates on schedule only"
    } else {
        "a SIGUSR1 ends the router"
    };
    Signals::listen(Which::User1, otherwise)
}

/// Makes the next key and writes it beside the key file.
fn stage(r: &KeyRotation) -> Result<KeyPair, String> {
    let pair = KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
    keys::stage_pair(&r.path, &pair).map_err(|e| e.to_string())?;
    Ok(pair)
}

/// Moves the staged key over the key file, with its `.pub`.
fn commit(r: &KeyRotation, pair: &KeyPair) -> Result<(), String> {
    let name = keys::public_name(&r.path.with_extension("pub")).unwrap_or_else(|| "router".into());
    keys::commit_pair(&r.path, &staged_path(r), &pair.public(), &name).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_key_is_made_an_announcement_ahead_of_the_birthday() {
        let day = Duration::from_secs(86_400);
        assert!(!due(day * 28, day * 30, day));
        assert!(due(day * 29, day * 30, day));
        assert!(due(day * 40, day * 30, day));
    }

    #[test]
    fn kept_keys_are_found_by_name_and_dated_by_their_switch() {
        let dir = tempfile::tempdir().unwrap();
        let path = |n: &str| {
            let p = dir.path().join(n);
            std::fs::write(&p, b"").unwrap();
            p
        };
        let at = |n: &str| switched_at("router.key", n, &path(n));
        assert_eq!(
            at("router.key.old-1765000000"),
            UNIX_EPOCH.checked_add(Duration::from_secs(1_765_000_000))
        );
        // A file left by hand is dated by its modification time.
        let by_hand = path("router.key.old");
        let modified = UNIX_EPOCH + Duration::from_secs(1_700_000_123);
        std::fs::File::options()
            .write(true)
            .open(&by_hand)
            .unwrap()
            .set_modified(modified)
            .unwrap();
        assert_eq!(
            switched_at("router.key", "router.key.old", &by_hand),
            Some(modified)
        );
        for other in [
            "router.key.older",
            "router.key.old-",
            "router.key.old-x",
            "router.key.next",
            "other.key.old-1",
            "router.key",
        ] {
            assert_eq!(at(other), None, "{other}");
        }
    }

    #[test]
    fn the_identity_names_the_next_key_then_presents_it() {
        let authorized = Arc::new(AuthorizedClients::new(Default::default()));
        let (old, next) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
        let (old_pub, next_pub) = (old.public(), next.public());
        let id = RouterIdentity::new(old, None, authorized, Suites::all()).unwrap();
        assert_eq!(id.presented().keys, [old_pub]);
        id.announce(next_pub);
        assert_eq!(id.presented().keys, [old_pub, next_pub]);
        assert_eq!(id.presented().retiring(), []);
        id.switch(Arc::new(next), true).unwrap();
        assert_eq!(id.presented().keys, [next_pub]);
        assert_eq!(id.presented().retiring(), [old_pub]);
        // A second switch keeps both old keys, newest first.
        let third = KeyPair::generate().unwrap();
        let third_pub = third.public();
        id.switch(Arc::new(third), true).unwrap();
        assert_eq!(id.presented().keys, [third_pub]);
        assert_eq!(id.presented().retiring(), [next_pub, old_pub]);
        id.retiring(Vec::new()).unwrap();
        assert_eq!(id.presented().keys, [third_pub]);
        assert_eq!(id.presented().retiring(), []);
    }
}
