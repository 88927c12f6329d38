//! Rotating the tunnel's key through its routers: a new key pair, `RotateKey` to
//! every router, and the key file replaced once the router in use authorized it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use conduit_proto::version;
use conduit_proto::{ChannelKind, KeyPair, Message, PublicKey, Refusal, RefusalCode};
use tracing::{error, warn};

use super::open::open_at;
use super::{Rotated, Shared, configs};
use crate::Transport;
use crate::wire::Wire;

/// Why a rotation did not happen.
pub(super) enum Rotation {
    /// Refused (by the router, or here); the link goes on.
    Refused(String),
    /// The link failed meanwhile.
    Link(String),
    /// The router stopped answering meanwhile (frozen, or behind a link that drops
    /// everything): as a link found silent, it is not tried again first.
    Silent(String),
}

/// Rotates the key over the control channel `ctl`: a new key pair (or the key file's,
/// when another tunnel sharing the file rotated it), `RotateKey` to every router,
/// and once the router in use answers `KeyRotated`, the key file and the TLS
/// configuration are replaced. The new key is written only after the router
/// authorized it, so a refusal or a failure leaves everything as it was.
pub(super) async fn rotate(
    shared: &Shared,
    ctl: &mut Wire,
    index: usize,
) -> Result<Rotated, Rotation> {
    let Some(path) = &shared.key_path else {
        return Err(Rotation::Refused(
            "this tunnel's key was not read from a file".into(),
        ));
    };
    if shared.transport == Transport::Plain {
        return Err(Rotation::Refused(
            "the plain transport has no keys to rotate".into(),
        ));
    }
    let version = shared.versions[index].load(Ordering::Relaxed);
    if version < version::ROTATION {
        return Err(Rotation::Refused(format!(
            "router {} speaks protocol {version}, and key rotation needs protocol {} or \
             later: upgrade conduit on the router",
            shared.routers[index],
            version::ROTATION
        )));
    }
    // Every other router is reached before any is asked: one that is away postpones
    // the rotation rather than leave it half made.
    let mut others = open_others(shared, index).await?;
    // Another tunnel with the same key file rotated it: the routers are asked to
    // authorize that key rather than a new one (those the other tunnel's rotation
    // reached, through a clients file they share, know it already and agree).
    let (pair, fresh) = match shared.newer_key_in_file() {
        Some(pair) => (pair, false),
        None => {
            let pair = KeyPair::generate()
                .map_err(|e| Rotation::Refused(format!("cannot generate a key: {e}")))?;
            (pair, true)
        }
    };
    // Checked before the router is asked, so that a key it authorizes is usable and
    // can be saved.
    configs(&pair, &shared.trusted(), &shared.suites)
        .map_err(|e| Rotation::Refused(format!("cannot use the new key: {e}")))?;
    let staged = if fresh {
        Some(
            crate::keys::stage_pair(path, &pair)
                .map_err(|e| Rotation::Refused(format!("cannot save a new key: {e}")))?,
        )
    } else {
        None
    };
    let next = pair.public();
    // The router in use first: if it refuses, nothing has changed anywhere.
    let asked = ask_router(shared, ctl, next).await;
    let mut expires = match asked {
        Ok(t) => t,
        Err(e) => {
            if let Some(staged) = &staged {
                let _ = std::fs::remove_file(staged);
            }
            for (_, wire) in &mut others {
                goodbye(wire, "the key rotation was called off").await;
            }
            return Err(e);
        }
    };
    // Then the others, at once. One that fails now keeps admitting the old key
    // only: the new key is used all the same (the router in use retires the old
    // one), and its operator is told to add it.
    let answers = futures::future::join_all(others.iter_mut().map(|(index, wire)| {
        let index = *index;
        async move {
            let asked = ask_router(shared, wire, next).await;
            goodbye(wire, "key rotated").await;
            (index, asked)
        }
    }))
    .await;
    let mut not_authorized = Vec::new();
    // Routers that refused the new key: they will refuse the tunnel once it uses it.
    let mut refused = Vec::new();
    for (index, asked) in answers {
        match asked {
            Ok(t) => expires = expires.min(t),
            Err(Rotation::Refused(why) | Rotation::Link(why) | Rotation::Silent(why)) => {
                refused.push((index, why.clone()));
                not_authorized.push(format!("router {}: {why}", shared.routers[index]));
            }
        }
    }
    if let Some(staged) = &staged {
        let name = crate::keys::public_name(&path.with_extension("pub")).unwrap_or_default();
        crate::keys::commit_pair(path, staged, &next, &name).map_err(|e| {
            // The router admits both keys now; the old one keeps working until it
            // expires.
            Rotation::Refused(format!(
                "the router authorized {next}, but the new key could not be put in place \
                 ({e}); the tunnel keeps its old key, which the router admits until it expires"
            ))
        })?;
    }
    shared.use_key(Arc::new(pair)).map_err(Rotation::Refused)?;
    shared.admitted();
    *shared.declined.lock().unwrap_or_else(|p| p.into_inner()) = None;
    for why in &not_authorized {
        error!(tunnel = %shared.name, "the new key {next} is not authorized by {why}; add it to that router's authorized_clients, or it refuses this tunnel");
    }
    // `status` and `health` say so now, not once the tunnel needs that router.
    for (index, why) in refused {
        shared.link.router_refused(
            index,
            format!("the new key {next} is not authorized by this router ({why}): add it to its authorized_clients"),
        );
    }
    let old_expires = old_key_expiry(expires, SystemTime::now());
    if old_expires.is_none() {
        warn!(tunnel = %shared.name, "the router said it admits the old key until {expires} (Unix seconds), more than {} years from now: that time is not believed and the old key's expiry is taken as unknown; the router's authorized_clients (its expires= lines) says when it ends", MAX_GRACE_YEARS);
    }
    Ok(Rotated {
        key: next,
        old_expires,
        not_authorized,
    })
}

/// How far ahead a router's `KeyRotated` may put the old key's expiry and be
/// believed: a router's grace is at most 90 days (`key_grace_secs`), and an operator's
/// `expires=` in authorized_clients is not decades away.
const MAX_GRACE_YEARS: u64 = 10;

/// When the old key expires, from a router's `KeyRotated` (Unix seconds): `None` (not
/// known) for a time more than [`MAX_GRACE_YEARS`] after `now`, which a router sends
/// only through a bug or a forgery, and which would not fit a `SystemTime` or an
/// RFC 3339 date.
fn old_key_expiry(expires: u64, now: SystemTime) -> Option<SystemTime> {
    let at = UNIX_EPOCH.checked_add(Duration::from_secs(expires))?;
    let latest = now.checked_add(Duration::from_secs(MAX_GRACE_YEARS * 366 * 86_400))?;
    (at <= latest).then_some(at)
}

/// Control channels to every router but the one at `at`, whose link rotates the
/// key: all of them, or why not.
pub(super) async fn open_others(
    shared: &Shared,
    at: usize,
) -> Result<Vec<(usize, Wire)>, Rotation> {
    let opened = futures::future::join_all((0..shared.routers.len()).filter(|i| *i != at).map(
        |index| async move {
            // Bounded, so that the link in use misses no more than a heartbeat.
            let opened = tokio::time::timeout(
                shared.heartbeat,
                open_at(shared, ChannelKind::Control, index),
            )
            .await;
            (index, opened)
        },
    ))
    .await;
    let mut others = Vec::with_capacity(opened.len());
    let mut away = Vec::new();
    for (index, opened) in opened {
        let router = &shared.routers[index];
        match opened {
            Ok(Ok((wire, version))) if version >= version::ROTATION => others.push((index, wire)),
            Ok(Ok((_, version))) => away.push(format!(
                "router {router} speaks protocol {version}, and key rotation needs protocol {} \
                 or later: upgrade conduit on it",
                version::ROTATION
            )),
            Ok(Err(e)) => away.push(format!("router {router}: {e}")),
            Err(_) => away.push(format!(
                "router {router} did not answer within {:?}",
                shared.heartbeat
            )),
        }
    }
    if away.is_empty() {
        return Ok(others);
    }
    for (_, wire) in &mut others {
        goodbye(wire, "the key rotation was called off").await;
    }
    Err(Rotation::Refused(format!(
        "every router of this tunnel must authorize the new key, and {}; the key is rotated \
         once every router answers",
        away.join("; ")
    )))
}

/// Ends a control channel of a rotation with a goodbye.
pub(super) async fn goodbye(wire: &mut Wire, why: &str) {
    let bye = Refusal::new(RefusalCode::ShuttingDown, why);
    let _ = wire.send(&Message::Goodbye(bye)).await;
}

/// Sends `RotateKey` for `next` and waits for the router's answer: when the old key
/// expires (Unix seconds), or why not.
pub(super) async fn ask_router(
    shared: &Shared,
    ctl: &mut Wire,
    next: PublicKey,
) -> Result<u64, Rotation> {
    ctl.send(&Message::RotateKey { next })
        .await
        .map_err(|e| Rotation::Link(e.to_string()))?;
    let deadline = tokio::time::Instant::now() + shared.heartbeat * 3;
    let expires = loop {
        match tokio::time::timeout_at(deadline, ctl.recv()).await {
            Err(_) => {
                return Err(Rotation::Silent(format!(
                    "no answer to the rotation for {:?}",
                    shared.heartbeat * 3
                )));
            }
            // A channel opened for the rotation may name the router's keys first;
            // they are taken up when the link moves there.
            Ok(Ok(Some(Message::Pong { .. } | Message::RouterKeys { .. }))) => continue,
            Ok(Ok(Some(Message::KeyRotated { expires }))) => break expires,
            Ok(Ok(Some(Message::Refused(r)))) => {
                return Err(Rotation::Refused(format!(
                    "the router refused the rotation: {}",
                    r.message
                )));
            }
            Ok(Ok(Some(other))) => {
                return Err(Rotation::Link(format!(
                    "unexpected {} from the router",
                    other.name()
                )));
            }
            Ok(Ok(None)) => return Err(Rotation::Link("the router closed the connection".into())),
            Ok(Err(e)) => return Err(Rotation::Link(e.to_string())),
        }
    };
    Ok(expires)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timestamp::LAST_UNIX_SECOND;

    /// 2026-01-01T00:00:00Z.
    const NOW: u64 = 1_767_225_600;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW)
    }

    #[test]
    fn an_expiry_within_the_grace_a_router_can_have_is_taken() {
        let in_90_days = NOW + 90 * 86_400;
        assert_eq!(
            old_key_expiry(in_90_days, now()),
            Some(UNIX_EPOCH + Duration::from_secs(in_90_days))
        );
        // A time already past (an expires= the operator set) is taken as it is.
        assert_eq!(
            old_key_expiry(NOW - 60, now()),
            Some(UNIX_EPOCH + Duration::from_secs(NOW - 60))
        );
    }

    #[test]
    fn an_absurd_expiry_from_a_router_is_unknown_and_does_not_panic() {
        assert_eq!(old_key_expiry(u64::MAX, now()), None);
        // Year 10000, which RFC 3339 cannot write.
        assert_eq!(old_key_expiry(LAST_UNIX_SECOND + 1, now()), None);
        // Just past ten years from now.
        let eleven_years = NOW + 11 * 365 * 86_400;
        assert_eq!(old_key_expiry(eleven_years, now()), None);
    }
}
