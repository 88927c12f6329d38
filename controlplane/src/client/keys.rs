//! The keys of a tunnel: the one it presents (and takes up from its key file), the
//! router keys it trusts (pinned, re-read from `.pub` files, and learned from what a
//! router named of itself), and the TLS configurations made from them.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use conduit_proto::tls::{ClientConfig, Suites, client_config};
use conduit_proto::{KeyPair, PublicKey};
use tracing::{debug, info, warn};

use super::{Shared, count};
use crate::Error;
use crate::keys::{KnownRouter, KnownUnread};

impl Shared {
    /// The TLS configuration for the router at `index`.
    pub(super) fn tls(&self, index: usize) -> Arc<ClientConfig> {
        self.tls.read().unwrap_or_else(|p| p.into_inner())[index].clone()
    }

    pub(super) fn identity(&self) -> Arc<KeyPair> {
        self.identity
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(super) fn our_key(&self) -> PublicKey {
        self.identity().public()
    }

    /// This tunnel's key as a line of authorized_clients: the key, then the name its
    /// `.pub` file gives it (what `conduit keys show --name NAME` prints for
    /// `NAME.key`), else the key file's name.
    pub(super) fn our_line(&self) -> String {
        let key = self.our_key();
        let Some(path) = &self.key_path else {
            return key.to_string();
        };
        let named = std::fs::read_to_string(path.with_extension("pub"))
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| PublicKey::parse_line(l)?.ok())
                    .filter(|(k, name)| *k == key && !name.is_empty())
                    .map(|(_, name)| name)
            })
            .or_else(|| Some(path.file_stem()?.to_string_lossy().into_owned()));
        match named {
            Some(name) => format!("{key} {name}"),
            None => key.to_string(),
        }
    }

    pub(super) fn router_keys(&self) -> Vec<Vec<PublicKey>> {
        self.router_keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(super) fn learned(&self) -> Vec<Vec<PublicKey>> {
        keys_of(&self.learned_entries())
    }

    pub(super) fn learned_entries(&self) -> Vec<Option<KnownRouter>> {
        self.learned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The keys each router may present: those pinned and those it named.
    pub(super) fn trusted(&self) -> Vec<Vec<PublicKey>> {
        trusted(&self.router_keys(), &self.learned())
    }

    /// Router `at` named its keys (`RouterKeys`) on a link where it presented `via`:
    /// trusts them for it from now on, in place of what it named before, and keeps
    /// them in `known_routers` with the pinned key they were learned under (`via`
    /// itself, or the pin under which `via` was learned).
    pub(super) fn learn(&self, at: usize, keys: &[PublicKey], via: Option<PublicKey>) {
        let router = &self.routers[at];
        let pinned = self.router_keys()[at].clone();
        let known = {
            let mut learned = self.learned.lock().unwrap_or_else(|p| p.into_inner());
            let pin = match (via, &learned[at]) {
                (Some(v), _) if pinned.contains(&v) => v,
                (Some(v), Some(k)) if k.keys.contains(&v) => k.pin,
                _ => {
                    warn!(tunnel = %self.name, %router, "router {router} named keys on a link whose key is neither pinned nor learned: ignored (a Conduit bug; please report it)");
                    return;
                }
            };
            let known = KnownRouter {
                keys: keys.to_vec(),
                pin,
            };
            if learned[at].as_ref() == Some(&known) {
                return;
            }
            learned[at] = Some(known.clone());
            known
        };
        match client_config(&self.identity(), &trusted_one(&pinned, keys), &self.suites) {
            Ok(c) => self.tls.write().unwrap_or_else(|p| p.into_inner())[at] = c,
            Err(e) => {
                warn!(tunnel = %self.name, %router, "cannot use the keys the router named: {e}");
                return;
            }
        }
        let named = match keys {
            [now] => format!("its key {now}"),
            [now, next @ ..] => format!(
                "its key {now} and, next, {}",
                conduit_proto::tls::one_of(next)
            ),
            [] => return,
        };
        let kept = match &self.known_routers {
            Some(path) => match crate::keys::save_known_router(path, router, &known) {
                Ok(text) => {
                    *self.known_text.lock().unwrap_or_else(|p| p.into_inner()) = text;
                    format!(" (kept in {})", path.display())
                }
                Err(e) => format!(" (for this run only: {e})"),
            },
            None => String::new(),
        };
        if keys.iter().all(|k| pinned.contains(k)) {
            // Nothing new to trust: the keys it names are the ones pinned.
            debug!(tunnel = %self.name, %router, "router {router} names {named}, as pinned{kept}");
        } else {
            info!(tunnel = %self.name, %router, "router {router} names {named}: trusted for it from now on{kept}");
        }
    }

    pub(super) fn use_key(&self, pair: Arc<KeyPair>) -> Result<(), String> {
        let tls = configs(&pair, &self.trusted(), &self.suites).map_err(|e| e.to_string())?;
        *self.tls.write().unwrap_or_else(|p| p.into_inner()) = tls;
        *self.identity.write().unwrap_or_else(|p| p.into_inner()) = pair;
        Ok(())
    }

    /// Reads the pinned-key files and `known_routers` again and takes up what
    /// changed in them; tells whether anything did. A pinned file that cannot be
    /// read (or holds no key) leaves the keys as they were, with a warning.
    pub(super) fn reread_pins(&self) -> bool {
        let old_pinned = self.router_keys();
        let old_entries = self.learned_entries();
        let old_learned = keys_of(&old_entries);
        let pinned = self.reread_pin_files(&old_pinned);
        let entries: Vec<Option<KnownRouter>> = self
            .reread_known_routers(&old_entries)
            .iter()
            .enumerate()
            .map(|(i, k)| still_pinned(&self.name, &self.routers[i], k.as_ref(), &pinned[i]))
            .collect();
        let learned = keys_of(&entries);
        let mut changed = false;
        let mut tls = self.tls.write().unwrap_or_else(|p| p.into_inner());
        let mut kept_pinned = self.router_keys.write().unwrap_or_else(|p| p.into_inner());
        let mut kept_learned = self.learned.lock().unwrap_or_else(|p| p.into_inner());
        for i in 0..self.routers.len() {
            let old = trusted_one(&old_pinned[i], &old_learned[i]);
            let new = trusted_one(&pinned[i], &learned[i]);
            if new == old {
                kept_pinned[i].clone_from(&pinned[i]);
                kept_learned[i].clone_from(&entries[i]);
                continue;
            }
            match client_config(&self.identity(), &new, &self.suites) {
                Ok(c) => tls[i] = c,
                Err(e) => {
                    warn!(tunnel = %self.name, router = %self.routers[i], "cannot use the keys now trusted for router {}: {e}; keeping those trusted before", self.routers[i]);
                    continue;
                }
            }
            kept_pinned[i].clone_from(&pinned[i]);
            kept_learned[i].clone_from(&entries[i]);
            changed = true;
        }
        changed
    }

    /// The key to ask router `index` for (a router that rotated its key presents
    /// the old one to a tunnel that asks for it, for a while): the key it last named
    /// as its own, or else the first pinned.
    pub(super) fn hint(&self, index: usize) -> Option<PublicKey> {
        let named = self.learned.lock().unwrap_or_else(|p| p.into_inner())[index]
            .as_ref()
            .and_then(|k| k.keys.first().copied());
        named.or_else(|| self.router_keys()[index].first().copied())
    }

    /// The keys router `index` may present now.
    pub(super) fn trusted_for(&self, index: usize) -> Vec<PublicKey> {
        trusted_one(&self.router_keys()[index], &self.learned()[index])
    }

    /// Each router's pinned keys as their files say now (as `old` where a spec names
    /// no file, or its file cannot be read).
    pub(super) fn reread_pin_files(&self, old: &[Vec<PublicKey>]) -> Vec<Vec<PublicKey>> {
        let mut pinned = old.to_vec();
        let mut errors = self.pin_errors.lock().unwrap_or_else(|p| p.into_inner());
        for (j, spec) in self.pins.iter().enumerate() {
            let Some(spec) = spec else { continue };
            let routers: Vec<usize> = match self.pins.len() {
                1 => (0..self.routers.len()).collect(),
                _ => vec![j],
            };
            let whose = match routers.as_slice() {
                [one] => format!("router {}", self.routers[*one]),
                _ => "the routers".to_owned(),
            };
            let keys = match crate::keys::load_pinned(spec, "pinned router keys") {
                Ok(keys) => {
                    errors[j] = None;
                    keys
                }
                Err(e) => {
                    // A file that could not be read says nothing of its keys.
                    let then = match &e {
                        Error::File { source, .. } => format!(
                            "{}; the keys read before stay pinned meanwhile (it is read again \
                             before each connection)",
                            crate::keys::unread_fix(source)
                        ),
                        _ => "keeping the keys read before until the file is fixed".to_owned(),
                    };
                    let e = e.to_string();
                    if errors[j].as_ref() != Some(&e) {
                        warn!(tunnel = %self.name, "cannot read the keys pinned for {whose} again: {e}; {then}");
                        errors[j] = Some(e);
                    }
                    continue;
                }
            };
            if keys == old[routers[0]] {
                continue;
            }
            info!(tunnel = %self.name, "the keys pinned for {whose} changed ({spec}): now {}", conduit_proto::tls::one_of(&keys));
            for i in routers {
                pinned[i].clone_from(&keys);
            }
        }
        pinned
    }

    /// The keys each router named as `known_routers` says now (see [`Look::known_after`]).
    pub(super) fn reread_known_routers(
        &self,
        old: &[Option<KnownRouter>],
    ) -> Vec<Option<KnownRouter>> {
        let Some(path) = &self.known_routers else {
            return old.to_vec();
        };
        let read = crate::keys::read_known_routers(path);
        let mut seen = self.known_text.lock().unwrap_or_else(|p| p.into_inner());
        let look = Look {
            tunnel: &self.name,
            path,
            routers: &self.routers,
        };
        look.known_after(read, old, &mut seen)
    }

    /// The key the key file holds now, when it is not the one in use: another
    /// tunnel with the same key file rotated it.
    pub(super) fn newer_key_in_file(&self) -> Option<KeyPair> {
        let path = self.key_path.as_ref()?;
        let pair = crate::keys::load_private(path, "client").ok()?;
        (pair.public() != self.our_key()).then_some(pair)
    }

    /// How old the key file is, when that is past `key_rotation`.
    pub(super) fn key_too_old(&self) -> Option<Duration> {
        let limit = self.key_rotation?;
        let modified = std::fs::metadata(self.key_path.as_ref()?)
            .ok()?
            .modified()
            .ok()?;
        let age = modified.elapsed().ok()?;
        (age >= limit).then_some(age)
    }

    /// Before each connection of the link: takes up the key file's key if another
    /// tunnel sharing the file rotated it, so this one is not locked out when the
    /// router retires the old key; the key in use is kept, for a router that does
    /// not know the new one (see [`Self::fall_back`]). True when it did.
    pub(super) fn pick_up_key_file(&self) -> bool {
        let Some(pair) = self.newer_key_in_file() else {
            return false;
        };
        let key = pair.public();
        if *self.declined.lock().unwrap_or_else(|p| p.into_inner()) == Some(key) {
            return false;
        }
        let was = self.identity();
        match self.use_key(Arc::new(pair)) {
            Ok(()) => {
                self.previous
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(was);
                if self.routers.len() > 1 {
                    warn!(tunnel = %self.name, %key, "the key file holds a new key (rotated by another tunnel); using it, but of this tunnel's {} routers those that do not know it will refuse it: rotate this tunnel too (`conduit keys rotate --tunnel {}`), which has each of them authorize it", self.routers.len(), self.name);
                } else {
                    info!(tunnel = %self.name, %key, "the key file holds a new key (rotated by another tunnel); using it");
                }
                true
            }
            Err(e) => {
                warn!(tunnel = %self.name, "the key file holds a new key that cannot be used: {e}");
                false
            }
        }
    }

    /// The key file's key, when a router refused it (see [`Self::fall_back`]) and
    /// this tunnel rotates its key by itself (`key_rotation`): it is to be taken up
    /// through a rotation, which has the routers authorize it.
    pub(super) fn declined_in_file(&self) -> Option<PublicKey> {
        self.key_rotation?;
        let declined = (*self.declined.lock().unwrap_or_else(|p| p.into_inner()))?;
        let in_file = self.newer_key_in_file()?.public();
        (in_file == declined).then_some(declined)
    }

    /// A router admitted this tunnel since it started, or it retried in the
    /// background (see `Shared::been_up`).
    pub(super) fn been_up(&self) -> bool {
        self.been_up.load(Ordering::Acquire)
    }

    /// The tunnel goes on retrying in the background: from now on refusals are
    /// waited out too (see `Shared::been_up`).
    pub(super) fn retries_in_background(&self) {
        self.been_up.store(true, Ordering::Release);
    }

    /// The router in use admitted this tunnel: a key taken up from the key file is
    /// known to work, the one before it is no longer kept; from now on refusals are
    /// waited out (see `Shared::been_up`).
    pub(super) fn admitted(&self) {
        self.been_up.store(true, Ordering::Release);
        self.previous
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    /// Router `index` refused this tunnel (`e`) with a key taken up from the key
    /// file: goes back to the key used before, which the router may still admit
    /// (another tunnel rotated the file's key through a router of its own), and
    /// leaves the file's key alone until a rotation of this tunnel asks its routers
    /// to authorize it. True when it did: the link is to be made again at once.
    pub(super) fn fall_back(&self, index: usize, e: &Error) -> bool {
        if !matches!(e, Error::Authentication(_)) {
            return false;
        }
        let Some(previous) = self
            .previous
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return false;
        };
        let refused = self.our_key();
        let back = previous.public();
        if let Err(why) = self.use_key(previous) {
            warn!(tunnel = %self.name, "cannot go back to the previous key {back}: {why}");
            return false;
        }
        *self.declined.lock().unwrap_or_else(|p| p.into_inner()) = Some(refused);
        let router = &self.routers[index];
        let then = if self.key_rotation.is_some() {
            format!(
                ", and asking its routers to authorize the file's key (as `conduit keys rotate \
                 --tunnel {}` does)",
                self.name
            )
        } else {
            format!(
                "; to move it to the file's key, rotate it too (`conduit keys rotate --tunnel \
                 {}`: its routers authorize that key)",
                self.name
            )
        };
        let file = self
            .key_path
            .as_deref()
            .map_or_else(String::new, |p| format!(" {}", p.display()));
        warn!(tunnel = %self.name, %router, "router {router} does not admit the key the key file{file} holds now, {refused} (another tunnel sharing the file rotated it through a router of its own): {e}; going back to the previous key {back}, which this tunnel used until now{then}. To keep tunnels apart, give each a key file of its own (--key)");
        true
    }
}

/// A tunnel's look at its `known_routers` file.
pub(super) struct Look<'a> {
    pub(super) tunnel: &'a str,
    pub(super) path: &'a Path,
    pub(super) routers: &'a [String],
}

impl Look<'_> {
    /// The keys each router named, as `read` (the file read just now) says: as `old`
    /// unless the file changed since `seen` (what it held when this tunnel last read
    /// or wrote it: an operator deleted a line, or another tunnel learned a
    /// router's keys). A file that could not be read (out of file descriptors, an
    /// I/O error, no permission) leaves `old` as it is, with a warning that names
    /// the fix: only a file read that no longer lists a router's keys withdraws
    /// them, and it is read again at the next look. One that others may write is
    /// not trusted at all.
    pub(super) fn known_after(
        &self,
        read: Result<String, KnownUnread>,
        old: &[Option<KnownRouter>],
        seen: &mut String,
    ) -> Vec<Option<KnownRouter>> {
        let tunnel = self.tunnel;
        // Kept as what was seen (a file's text never starts with NUL), so that a
        // warning comes once, not at every look.
        let text = match &read {
            Ok(text) => text.clone(),
            Err(e) => format!("\0{e}"),
        };
        if *seen == text {
            return old.to_vec();
        }
        *seen = text;
        let text = match read {
            Ok(text) => text,
            Err(KnownUnread::Failed(e)) => {
                warn!(
                    tunnel,
                    "{e}; the router keys it held are still trusted, and it is read again before the next connection"
                );
                return old.to_vec();
            }
            Err(KnownUnread::Untrusted(e)) => {
                warn!(tunnel, "{e}; the router keys it keeps are not trusted");
                String::new()
            }
        };
        let known = crate::keys::parse_known_routers(&text);
        let path = self.path.display();
        self.routers
            .iter()
            .zip(old)
            .map(|(r, old)| {
                let now = known.get(r).cloned();
                if now != *old {
                    match &now {
                        None => info!(tunnel, router = %r, "the keys router {r} named are no longer in {path}: no longer trusted unless pinned"),
                        Some(k) => info!(tunnel, router = %r, "the keys router {r} named, in {path}, are now {}", conduit_proto::tls::one_of(&k.keys)),
                    }
                }
                now
            })
            .collect()
    }
}

/// The TLS configuration of `pair` for each of `router_keys`.
pub(super) fn configs(
    pair: &KeyPair,
    router_keys: &[Vec<PublicKey>],
    suites: &Suites,
) -> Result<Vec<Arc<ClientConfig>>, rustls::Error> {
    router_keys
        .iter()
        .map(|k| client_config(pair, k, suites))
        .collect()
}

/// Per router, the pinned keys and then those it named that are not pinned.
pub(super) fn trusted(
    pinned: &[Vec<PublicKey>],
    learned: &[Vec<PublicKey>],
) -> Vec<Vec<PublicKey>> {
    pinned
        .iter()
        .enumerate()
        .map(|(i, p)| trusted_one(p, learned.get(i).map_or(&[][..], Vec::as_slice)))
        .collect()
}

/// The keys of each router's learned entry (none where there is none).
pub(super) fn keys_of(learned: &[Option<KnownRouter>]) -> Vec<Vec<PublicKey>> {
    learned
        .iter()
        .map(|k| k.as_ref().map_or_else(Vec::new, |k| k.keys.clone()))
        .collect()
}

/// What `known_routers` says `router` named (`known`), if it was learned under a key
/// the tunnel still pins (`pinned`); otherwise nothing, and a warning: a router
/// pinned to another key since must not be trusted with what it named before.
pub(super) fn still_pinned(
    tunnel: &str,
    router: &str,
    known: Option<&KnownRouter>,
    pinned: &[PublicKey],
) -> Option<KnownRouter> {
    let k = known?;
    if pinned.contains(&k.pin) {
        return Some(k.clone());
    }
    if k.keys.iter().all(|named| pinned.contains(named)) {
        // Pinned now anyway (the operator pinned the key the router moved to):
        // nothing is lost by not trusting the line.
        return None;
    }
    warn!(
        tunnel,
        router,
        "known_routers holds keys router {router} named ({}) while it was pinned to {}; \
         it is pinned to {} now, so they are not trusted (pin the key again, or delete \
         the line)",
        conduit_proto::tls::one_of(&k.keys),
        k.pin,
        conduit_proto::tls::one_of(pinned)
    );
    None
}

pub(super) fn trusted_one(pinned: &[PublicKey], learned: &[PublicKey]) -> Vec<PublicKey> {
    let mut all = pinned.to_vec();
    all.extend(learned.iter().filter(|k| !pinned.contains(k)));
    all
}

/// What [`Shared::reread_pins`] found.
/// The specs among `specs` that name files, paths made absolute (`None` for those
/// that give keys inline); `specs` is empty, or one for all of the `routers`, or one
/// for each.
pub(super) fn pin_files(specs: &[String], routers: usize) -> Result<Vec<Option<String>>, Error> {
    if specs.len() > 1 && specs.len() != routers {
        return Err(Error::Config(format!(
            "{} pinned-key specs for {}: a Conduit bug; please report it",
            specs.len(),
            count(routers, "router")
        )));
    }
    specs
        .iter()
        .map(|spec| {
            crate::keys::pins_name_a_file(spec)
                .then(|| crate::keys::absolute_pins(spec))
                .transpose()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `known_routers` that cannot be read (here a directory in its place; as well
    /// out of file descriptors, an I/O error) withdraws nothing; read again, a line
    /// it no longer holds does.
    #[test]
    fn known_routers_that_cannot_be_read_keep_the_keys_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_routers");
        let routers = ["r:1".to_owned(), "r:2".to_owned()];
        let look = Look {
            tunnel: "t",
            path: &path,
            routers: &routers,
        };
        let [a, b] = [(); 2].map(|()| KeyPair::generate().unwrap().public());
        let known = |k: PublicKey| KnownRouter {
            keys: vec![k],
            pin: k,
        };
        crate::keys::save_known_router(&path, "r:1", &known(a)).unwrap();
        let text = crate::keys::save_known_router(&path, "r:2", &known(b)).unwrap();
        let mut seen = String::new();
        let read = || crate::keys::read_known_routers(&path);
        let trusted = look.known_after(read(), &[None, None], &mut seen);
        assert_eq!(trusted, [Some(known(a)), Some(known(b))]);
        assert_eq!(seen, text);

        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        let failed = read().unwrap_err();
        assert_eq!(
            failed,
            KnownUnread::Failed(format!(
                "cannot read {}: not a regular file; put the file back in its place as a \
                 regular file",
                path.display()
            ))
        );
        assert_eq!(look.known_after(read(), &trusted, &mut seen), trusted);
        assert_eq!(seen, format!("\0{failed}"));
        // Still unreadable at the next look: still kept.
        assert_eq!(look.known_after(read(), &trusted, &mut seen), trusted);

        // Read again without r:1's line: only that is withdrawn.
        std::fs::remove_dir(&path).unwrap();
        crate::keys::save_known_router(&path, "r:2", &known(b)).unwrap();
        let trusted = look.known_after(read(), &trusted, &mut seen);
        assert_eq!(trusted, [None, Some(known(b))]);

        // One that every user may write is trusted for nothing.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
            assert_eq!(look.known_after(read(), &trusted, &mut seen), [None, None]);
        }
    }
}
