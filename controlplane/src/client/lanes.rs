//! Balancing across routers (`--router-balance`, `[router] balance = true`): the
//! tunnel keeps a link to every router it names at once, each made, watched by
//! heartbeats and made again on its own, and each new data channel goes to the
//! router, of those whose link is up, with the fewest channels (see
//! [`conduit_dataplane::LinkState::reserve_least_loaded`]); each user takes the idle channel of the
//! router with the fewest streams. A router that goes away takes only its own
//! channels (and, when it went silent, the connections on them) with it, and
//! rejoins once its link is back.
//!
//! Keys work as with one router at a time: any link that is up takes a rotation
//! (which reaches every router before any is asked), and the other links are made
//! again with the new key once it is in use.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use conduit_proto::ChannelKind;
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::link::{OUT_OF_DESCRIPTORS_RETRY, Probe, Waited, back_off, heartbeat, retrying};
use super::open::open_over;
use super::{LinkStatus, RotationsRx, Shared, SharedRotations};
use crate::Error;
use crate::backoff::Backoff;

/// Keeps a link to every router until `stop` is set (then `None`), or returns the
/// error once every router refused this tunnel before any admitted it.
pub(super) async fn run(
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    rotations: RotationsRx,
) -> Option<Error> {
    let rotations: SharedRotations = Arc::new(tokio::sync::Mutex::new(rotations));
    let mut lanes = tokio::task::JoinSet::new();
    for index in 0..shared.routers.len() {
        lanes.spawn(lane(shared.clone(), index, stop.clone(), rotations.clone()));
    }
    while let Some(ended) = lanes.join_next().await {
        match ended {
            Ok(None) => {}
            // Dropping the set stops the other links.
            Ok(Some(e)) => return Some(e),
            Err(e) => return Some(Error::Protocol(format!("a router link failed: {e}"))),
        }
    }
    None
}

/// Keeps the link to router `index` up: returns `None` once `stop` is set, or the
/// error when it refused this tunnel and so did every other router.
async fn lane(
    shared: Arc<Shared>,
    index: usize,
    mut stop: watch::Receiver<bool>,
    rotations: SharedRotations,
) -> Option<Error> {
    let router = shared.routers[index].clone();
    let mut backoff = Backoff::new(
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(30),
    );
    let mut attempt = 0u32;
    // A connection the router's port accepted during the back-off, for the attempt.
    let mut knocked = None;
    loop {
        if *stop.borrow() {
            return None;
        }
        // Refusals of the old keys say nothing about the new ones.
        if shared.pick_up_key_file() | shared.reread_pins() {
            shared.refused_by(None, None);
        }
        match open_over(&shared, ChannelKind::Control, index, knocked.take()).await {
            Ok((mut ctl, version)) => {
                shared.admitted();
                attempt = 0;
                backoff.reset();
                shared.versions[index].store(version, Ordering::Relaxed);
                shared.refused_by(Some(index), None);
                let epoch = shared.link.connected(index);
                // The pools are made again over every router up now, this one too.
                shared.dp.renew_pools();
                shared.lane(
                    index,
                    LinkStatus::Connected {
                        since: SystemTime::now(),
                        router: router.clone(),
                        cipher: ctl.cipher().to_owned(),
                    },
                );
                info!(tunnel = %shared.name, %router, cipher = %ctl.cipher(), "connected to router (one of {} in use at once)", shared.routers.len());
                let end = heartbeat(
                    &shared,
                    index,
                    &mut ctl,
                    &mut stop,
                    &rotations,
                    &mut Probe(None),
                )
                .await;
                let why = &end.why;
                if end.again {
                    info!(tunnel = %shared.name, %router, "{why}");
                    continue;
                }
                shared.link.lost(index);
                shared.dp.flush_pools();
                if *stop.borrow() {
                    return None;
                }
                let lost = format!("the link to router {router} was lost: {why}");
                if end.silent {
                    shared.dp.link_lost(epoch, &lost);
                } else if !end.goodbye {
                    // As for one router at a time (see `link::control_loop`).
                    shared.dp.link_gone(epoch, &lost);
                }
                // Down from now (its alerts count from here), and made again at once.
                shared.lane(index, retrying(why));
                warn!(tunnel = %shared.name, %router, "lost the link to router {router}: {why}; reconnecting");
            }
            Err(e) => {
                shared.link.lost(index);
                if shared.fall_back(index, &e) {
                    continue;
                }
                let refusal = !e.is_retryable();
                if refusal {
                    shared.link.router_refused(index, e.to_string());
                }
                if refusal
                    && let Some(all) = shared.refused_by(Some(index), Some(e.to_string()))
                    && !shared.been_up()
                {
                    let e =
                        Error::Authentication(format!("every router refused this tunnel:{all}"));
                    shared.status.send_replace(LinkStatus::Refused {
                        reason: e.to_string(),
                    });
                    return Some(e);
                }
                attempt += 1;
                let mut wait = backoff.next_wait();
                if e.out_of_descriptors() {
                    wait = wait.min(OUT_OF_DESCRIPTORS_RETRY);
                }
                shared.lane(
                    index,
                    LinkStatus::Retrying {
                        attempt,
                        next_at: SystemTime::now() + wait,
                        error: e.to_string(),
                        knocking: e.found_no_listener(),
                    },
                );
                let wait_s = wait.as_secs_f64();
                if refusal {
                    // Not "retrying": `start` waits on, for the other routers' answers
                    // (a tunnel every router refuses stops, and `start` says why).
                    error!(tunnel = %shared.name, %router, "{e}; trying it again in {wait_s:.1}s");
                } else {
                    warn!(tunnel = %shared.name, %router, "{e}; retrying in {wait_s:.1}s");
                    // `start` returns on that line: the tunnel runs in the background now.
                    shared.retries_in_background();
                }
                let knock: &[usize] = if e.found_no_listener() { &[index] } else { &[] };
                match back_off(&shared, knock, wait, &mut stop).await {
                    Waited::Stopped => return None,
                    Waited::Over => {}
                    Waited::Answered { tcp, .. } => knocked = Some(tcp),
                }
            }
        }
    }
}

impl Shared {
    /// Sets router `index`'s link state and publishes the tunnel's (see
    /// [`together`]).
    fn lane(&self, index: usize, state: LinkStatus) {
        self.links.send_modify(|lanes| {
            lanes[index] = state;
            let now = together(lanes);
            // Told only when it changed: one router retrying while another serves
            // changes nothing for the tunnel.
            self.status.send_if_modified(|was| {
                let changed = *was != now;
                *was = now;
                changed
            });
        });
    }

    /// Records that router `index` refused this tunnel (`why`), or no
    /// longer does (`None`); with no index, forgets every refusal. Returns every
    /// router's reason once all of them refused.
    fn refused_by(&self, index: Option<usize>, why: Option<String>) -> Option<String> {
        let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        match index {
            Some(i) => refused[i] = why,
            None => refused.fill(None),
        }
        refused.iter().all(Option::is_some).then(|| {
            refused
                .iter()
                .flatten()
                .map(|w| format!("\n  {w}"))
                .collect()
        })
    }
}

/// The tunnel's link state from each router's: connected while any link is up
/// (to the routers whose links are), connecting while any link makes its first
/// attempt, else retrying (at the soonest attempt, with every router's error).
fn together(lanes: &[LinkStatus]) -> LinkStatus {
    let connected: Vec<(&SystemTime, &str, &str)> = lanes
        .iter()
        .filter_map(|l| match l {
            LinkStatus::Connected {
                since,
                router,
                cipher,
            } => Some((since, router.as_str(), cipher.as_str())),
            _ => None,
        })
        .collect();
    if let Some(since) = connected.iter().map(|(s, _, _)| **s).min() {
        let mut ciphers: Vec<&str> = Vec::new();
        for (_, _, c) in &connected {
            if !ciphers.contains(c) {
                ciphers.push(c);
            }
        }
        return LinkStatus::Connected {
            since,
            router: connected
                .iter()
                .map(|(_, r, _)| *r)
                .collect::<Vec<_>>()
                .join(", "),
            cipher: ciphers.join(", "),
        };
    }
    if lanes.contains(&LinkStatus::Connecting) {
        return LinkStatus::Connecting;
    }
    let retrying = lanes.iter().filter_map(|l| match l {
        LinkStatus::Retrying {
            attempt,
            next_at,
            error,
            knocking,
        } => Some((attempt, next_at, error, *knocking)),
        _ => None,
    });
    if let Some((attempt, next_at, ..)) = retrying.clone().min_by_key(|(_, at, ..)| **at) {
        return LinkStatus::Retrying {
            attempt: *attempt,
            next_at: *next_at,
            knocking: retrying.clone().any(|(.., k)| k),
            error: retrying
                .map(|(_, _, e, _)| e.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        };
    }
    LinkStatus::Connecting
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_tunnel_is_connected_while_any_router_is() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let up = |since, router: &str| LinkStatus::Connected {
            since,
            router: router.into(),
            cipher: "TLS_AES_128_GCM_SHA256".into(),
        };
        let retrying = |attempt, next_at, error: &str| LinkStatus::Retrying {
            attempt,
            next_at,
            error: error.into(),
            knocking: false,
        };
        assert_eq!(
            together(&[
                up(t0 + Duration::from_secs(5), "a:1"),
                retrying(2, t0, "b down"),
                up(t0, "c:1"),
            ]),
            up(t0, "a:1, c:1")
        );
        assert_eq!(
            together(&[
                retrying(3, t0 + Duration::from_secs(9), "router a:1 down"),
                retrying(1, t0 + Duration::from_secs(2), "router b:1 down"),
            ]),
            retrying(
                1,
                t0 + Duration::from_secs(2),
                "router a:1 down; router b:1 down"
            )
        );
        // A first attempt not over yet: too soon to say retrying.
        assert_eq!(
            together(&[LinkStatus::Connecting, retrying(1, t0, "router b:1 down")]),
            LinkStatus::Connecting
        );
    }
}
