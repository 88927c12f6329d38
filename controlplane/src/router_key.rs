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
//! `known_routers`); one that was away the whole time refuses the router until its
//! operator pins the new key.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use conduit_proto::tls::{AuthorizedClients, ServerConfig, server_config};
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
}

/// What the router presents and names, swapped whole when the key changes.
pub(crate) struct Presented {
    /// The TLS configuration every new handshake uses.
    pub(crate) tls: Arc<ServerConfig>,
    /// What `RouterKeys` names: the key in use, then the next one if there is one.
    pub(crate) keys: Vec<PublicKey>,
}

/// The router's key and TLS configuration, as handshakes and control sessions read
/// them; control sessions [`subscribe`](Self::subscribe) to name a change at once.
pub(crate) struct RouterIdentity {
    presented: watch::Sender<Arc<Presented>>,
    authorized: Arc<AuthorizedClients>,
}

impl RouterIdentity {
    pub(crate) fn new(
        identity: &KeyPair,
        next: Option<PublicKey>,
        authorized: Arc<AuthorizedClients>,
    ) -> Result<Self, String> {
        let tls = server_config(identity, authorized.clone()).map_err(|e| e.to_string())?;
        let keys = std::iter::once(identity.public())
            .chain(next.filter(|k| *k != identity.public()))
            .collect();
        Ok(Self {
            presented: watch::Sender::new(Arc::new(Presented { tls, keys })),
            authorized,
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
        }));
    }

    /// Presents `pair` from now on.
    fn switch(&self, pair: &KeyPair) -> Result<(), String> {
        let tls = server_config(pair, self.authorized.clone()).map_err(|e| e.to_string())?;
        self.presented.send_replace(Arc::new(Presented {
            tls,
            keys: vec![pair.public()],
        }));
        Ok(())
    }
}

/// The staged next key, if a rotation is under way: the key file's `.next`.
fn staged_path(r: &KeyRotation) -> PathBuf {
    let mut name = r.path.file_name().unwrap_or_default().to_owned();
    name.push(".next");
    r.path.with_file_name(name)
}

/// Whether a key of age `age` is due for rotation every `every`: the next key is
/// made `announce` before the key turns `every` old, so that the switch falls on its
/// birthday.
fn due(age: Duration, every: Duration, announce: Duration) -> bool {
    age + announce >= every
}

/// Rotates the router's key as `r` says until the task is dropped.
pub(crate) async fn run(identity: Arc<RouterIdentity>, r: KeyRotation) {
    let mut usr1 = Signals::listen(Which::User1, "the router key rotates on schedule only");
    let staged = staged_path(&r);
    // A rotation a previous run of the router began.
    let mut next: Option<(KeyPair, SystemTime)> = match std::fs::metadata(&staged) {
        Ok(meta) => match keys::load_private(&staged, "router") {
            Ok(pair) => {
                let since = meta.modified().unwrap_or_else(|_| SystemTime::now());
                info!(next = %pair.public(), "router key rotation under way: naming the next key to tunnels again");
                identity.announce(pair.public());
                Some((pair, since))
            }
            Err(e) => {
                warn!("ignoring {}: {e}", staged.display());
                None
            }
        },
        Err(_) => None,
    };
    let step = (r.announce / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
    loop {
        let asked = tokio::select! {
            () = tokio::time::sleep(step) => false,
            () = usr1.next() => true,
        };
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
                        next = Some((pair, SystemTime::now()));
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
                match commit(&r, pair).and_then(|()| identity.switch(pair)) {
                    Ok(()) => {
                        info!(key = %pair.public(), "router key rotated: presenting the new key from now on (tunnels that heard of it accept it; others need it pinned)");
                        next = None;
                    }
                    Err(e) => error!("router key rotation: {e}; trying again in {step:?}"),
                }
            }
        }
    }
}

/// Answers each SIGUSR1 of a router that does not rotate its key with why not (the
/// signal's default action would end the router).
pub(crate) async fn refuse(why: &'static str) {
    let mut usr1 = Signals::listen(Which::User1, "a SIGUSR1 ends the router");
    loop {
        usr1.next().await;
        warn!("SIGUSR1: this router does not rotate its key: {why}");
    }
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
        let id = RouterIdentity::new(&old, None, authorized).unwrap();
        assert_eq!(id.presented().keys, [old.public()]);
        id.announce(next.public());
        assert_eq!(id.presented().keys, [old.public(), next.public()]);
        id.switch(&next).unwrap();
        assert_eq!(id.presented().keys, [next.public()]);
    }
}
