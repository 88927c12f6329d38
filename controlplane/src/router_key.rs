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
//! `known_routers`). For one that was away the whole time, the router keeps its old
//! key (`KEY.old`, mode 0600) for `key_retire_secs` after the switch and presents it
//! to a tunnel that asks for it (each tunnel names the key it expects in its
//! handshake, [`conduit_proto::tls::router_server_name`]); the control channel then
//! names the new key, which the tunnel trusts from then on. Past that, such a tunnel
//! refuses the router until its operator pins the new key.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

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
    /// The key in use, and the old one still presented to tunnels that ask for it.
    present: Arc<KeyPair>,
    retiring: Option<Arc<KeyPair>>,
}

impl Presented {
    /// The old key still presented to tunnels that ask for it, if any.
    pub(crate) fn retiring(&self) -> Option<PublicKey> {
        self.retiring.as_ref().map(|k| k.public())
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
        let presented = Self::build(&authorized, &suites, present, None, keys)?;
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
        retiring: Option<Arc<KeyPair>>,
        keys: Vec<PublicKey>,
    ) -> Result<Presented, String> {
        let held: Vec<&KeyPair> = std::iter::once(&*present)
            .chain(retiring.as_deref())
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
    /// tunnels that ask for it when `keep_old`.
    fn switch(&self, pair: Arc<KeyPair>, keep_old: bool) -> Result<(), String> {
        let p = self.presented();
        let retiring = keep_old.then(|| p.present.clone());
        let keys = vec![pair.public()];
        let next = Self::build(&self.authorized, &self.suites, pair, retiring, keys)?;
        self.presented.send_replace(Arc::new(next));
        Ok(())
    }

    /// Presents `old` to tunnels that ask for it (`None`: to none any more).
    fn retiring(&self, old: Option<Arc<KeyPair>>) -> Result<(), String> {
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

/// The old key, kept after a rotation while it is still presented: `KEY.old`.
fn old_path(r: &KeyRotation) -> PathBuf {
    keys::beside(&r.path, ".old")
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
    // The old key a previous run of the router rotated away from, while it lasts.
    let mut retiring_until = take_up_old(&identity, &r);
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
        if retiring_until.is_some_and(|until| SystemTime::now() >= until) {
            match retire_old(&identity, &r) {
                Ok(()) => retiring_until = None,
                Err(e) => error!("router key rotation: {e}; trying again in {step:?}"),
            }
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
                    Ok(until) => {
                        retiring_until = until;
                        next = None;
                    }
                    Err(e) => error!("router key rotation: {e}; trying again in {step:?}"),
                }
            }
        }
    }
}

/// Moves the router to `pair`: keeps the key in use as `KEY.old` (unless nothing is
/// kept), moves the staged key over the key file and presents it. Tells until when
/// the old key is presented to tunnels that ask for it.
fn switch(
    identity: &RouterIdentity,
    r: &KeyRotation,
    pair: &Arc<KeyPair>,
) -> Result<Option<SystemTime>, String> {
    let old = identity.presented().present.clone();
    let keep = !r.retire.is_zero();
    if keep {
        keys::keep_old_pair(&r.path, &old).map_err(|e| e.to_string())?;
    }
    commit(r, pair)?;
    identity.switch(pair.clone(), keep)?;
    if keep {
        info!(key = %pair.public(), old = %old.public(), "router key rotated: presenting the new key from now on; tunnels that heard of it accept it, and for {:?} the old key is still presented to tunnels that ask for it (then named the new one)", r.retire);
        Ok(Some(SystemTime::now() + r.retire))
    } else {
        let _ = std::fs::remove_file(old_path(r));
        info!(key = %pair.public(), old = %old.public(), "router key rotated: presenting the new key from now on; tunnels that heard of it accept it, others need it pinned (key_retire_secs = 0: the old key is forgotten)");
        Ok(None)
    }
}

/// At start: presents the old key kept by a previous run (`KEY.old`) to tunnels that
/// ask for it, for what is left of `key_retire_secs` since the switch (counted from
/// the file's time); removes it when that is over. Tells until when.
fn take_up_old(identity: &RouterIdentity, r: &KeyRotation) -> Option<SystemTime> {
    let path = old_path(r);
    let since = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
    let until = since + r.retire;
    let pair = match keys::load_private(&path, "router") {
        Ok(pair) => pair,
        Err(e) => {
            warn!("ignoring {}: {e}", path.display());
            return None;
        }
    };
    let old = pair.public();
    if r.retire.is_zero() || SystemTime::now() >= until || old == identity.presented().keys[0] {
        match std::fs::remove_file(&path) {
            Ok(()) => {
                info!(%old, "removed the router's old key {}: its time (key_retire_secs) is over", path.display())
            }
            Err(e) => warn!(%old, "cannot remove the router's old key {}: {e}", path.display()),
        }
        return None;
    }
    match identity.retiring(Some(Arc::new(pair))) {
        Ok(()) => {
            info!(%old, "still presenting the old router key to tunnels that ask for it until {}", humantime::format_rfc3339_seconds(until));
            Some(until)
        }
        Err(e) => {
            warn!(%old, "cannot present the old router key {}: {e}", path.display());
            None
        }
    }
}

/// Stops presenting the old key and removes its file.
fn retire_old(identity: &RouterIdentity, r: &KeyRotation) -> Result<(), String> {
    let Some(old) = identity.presented().retiring() else {
        return Ok(());
    };
    identity.retiring(None)?;
    let path = old_path(r);
    if let Err(e) = std::fs::remove_file(&path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        warn!(%old, "cannot remove the router's old key {}: {e}; remove it by hand", path.display());
    }
    info!(%old, "router key retired: tunnels that still pin only {old} now refuse this router until they pin its key");
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
    let name = std::fs::read_to_string(r.path.with_extension("pub"))
        .ok()
        .and_then(|l| PublicKey::parse_line(&l).and_then(Result::ok))
        .map_or_else(|| "router".to_owned(), |(_, name)| name);
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
    fn the_identity_names_the_next_key_then_presents_it() {
        let authorized = Arc::new(AuthorizedClients::new(Default::default()));
        let (old, next) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
        let (old_pub, next_pub) = (old.public(), next.public());
        let id = RouterIdentity::new(old, None, authorized, Suites::all()).unwrap();
        assert_eq!(id.presented().keys, [old_pub]);
        id.announce(next_pub);
        assert_eq!(id.presented().keys, [old_pub, next_pub]);
        assert_eq!(id.presented().retiring(), None);
        id.switch(Arc::new(next), true).unwrap();
        assert_eq!(id.presented().keys, [next_pub]);
        assert_eq!(id.presented().retiring(), Some(old_pub));
        id.retiring(None).unwrap();
        assert_eq!(id.presented().keys, [next_pub]);
        assert_eq!(id.presented().retiring(), None);
    }
}
