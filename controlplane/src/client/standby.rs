//! Checks on the routers a failing-over tunnel is not using: while another router
//! serves it, each router whose link failed is tried again with back-off, and once
//! one completes a handshake it is on standby. Its loss is then followed by its
//! return in the alerts, though the tunnel stays where it is (a failback probe,
//! when asked for, moves it back to an earlier router instead). A spare the tunnel
//! has not tried yet is checked the same way about a second after the link comes
//! up, so that one that is down shows in `status`, `health` and the alerts before
//! the tunnel needs it, and one that answers stands by. A router on standby
//! is watched on: its port is tried about every [`WATCH_EVERY`] (a connection closed
//! before a byte, which a router logs at debug only), and every
//! [`Shared::standby_check`] (`--standby-check`) it gets a full handshake instead, so
//! that one whose port still answers but that would refuse the tunnel (its key or
//! policy changed, a wrong router behind the address) is found out too. One that
//! fails either is failing again, checked as before and, past the alerts' grace,
//! reported lost.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use conduit_proto::ChannelKind;
use rand::Rng;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::link::retrying;
use super::open::open_at;
use super::rotation::goodbye;
use super::{LinkStatus, Shared};
use crate::backoff::Backoff;
use crate::{Error, wire};

/// The first check on a router left behind comes this long after the link moved
/// (with the back-off's jitter); later ones wait longer, up to [`LONGEST_WAIT`].
const FIRST_WAIT: Duration = Duration::from_secs(1);

/// The longest wait between two checks on one router, as between the tunnel's own
/// attempts.
const LONGEST_WAIT: Duration = Duration::from_secs(30);

/// The wait before checking again a router that refused this tunnel: its operator
/// must act first, and each refusal is a warning in its log; but once they have,
/// `status` and `health` should stop naming the refusal within about a minute
/// (they go on failing until then).
const REFUSED_WAIT: Duration = Duration::from_secs(60);

/// About how often (with jitter) the port of a router on standby is tried.
pub(super) const WATCH_EVERY: Duration = Duration::from_secs(10);

/// The running checks, stopped when the link they were started for ends.
pub(super) struct Standby(Option<JoinHandle<()>>);

impl Standby {
    /// Starts checking, while the link uses router `at`, each other router not
    /// tried yet, whose link failed or that stands by, but for those a failback
    /// probe tries (the routers before `at` under `--router-failback`). Nothing for
    /// a balancing tunnel, which uses every router.
    pub(super) fn start(shared: &Arc<Shared>, at: usize) -> Self {
        if shared.balance {
            return Self(None);
        }
        let probed = if shared.failback.is_some() { at } else { 0 };
        let watched: Vec<(usize, bool)> = {
            let links = shared.links.borrow();
            (probed..links.len())
                .filter(|&i| i != at)
                .filter_map(|i| match links[i] {
                    LinkStatus::Connecting | LinkStatus::Retrying { .. } => Some((i, false)),
                    LinkStatus::Standby { .. } => Some((i, true)),
                    _ => None,
                })
                .collect()
        };
        if watched.is_empty() {
            return Self(None);
        }
        Self(Some(tokio::spawn(check(shared.clone(), at, watched))))
    }

    pub(super) fn stop(self) {
        if let Some(task) = self.0 {
            task.abort();
        }
    }
}

/// What is next for one router.
enum Next {
    /// A handshake, and on failure the next wait of this back-off.
    Check(Backoff),
    /// A connection to its port (it stands by), or a handshake if its last one was
    /// at least [`Shared::standby_check`] ago: when that was.
    Watch { checked: Instant },
}

/// Checks each of `watched` (`true`: on standby) until the task is stopped: a
/// failing router with its own back-off until it answers `Hello` with `Welcome`
/// (then the channel says goodbye and the router stands by), a router on standby by
/// its port about every [`WATCH_EVERY`].
async fn check(shared: Arc<Shared>, at: usize, watched: Vec<(usize, bool)>) {
    let now = Instant::now();
    let mut due: Vec<(usize, Next, Instant)> = watched
        .into_iter()
        .map(|(i, standing_by)| match standing_by {
            true => (i, Next::Watch { checked: now }, look_at(&shared, now)),
            false => {
                let mut backoff = Backoff::new(FIRST_WAIT, LONGEST_WAIT);
                let first = backoff.next_wait();
                (i, Next::Check(backoff), now + first)
            }
        })
        .collect();
    let serving = &shared.routers[at];
    while let Some(next) = (0..due.len()).min_by_key(|&k| due[k].2) {
        tokio::time::sleep_until(due[next].2).await;
        let (index, ref mut what, ref mut when) = due[next];
        let router = &shared.routers[index];
        match what {
            Next::Watch { checked }
                if shared
                    .standby_check
                    .is_some_and(|every| checked.elapsed() >= every) =>
            {
                match handshake(&shared, index).await {
                    Ok(()) => {
                        debug!(tunnel = %shared.name, %router, "router {router}, standing by, still answers");
                        *checked = Instant::now();
                        *when = look_at(&shared, *checked);
                    }
                    Err(e) => {
                        warn!(tunnel = %shared.name, %router, "router {router}, standing by, fails its check: {e}; checking it again");
                        let mut backoff = Backoff::new(FIRST_WAIT, LONGEST_WAIT);
                        *when = Instant::now() + failed(&shared, index, &e, &mut backoff);
                        *what = Next::Check(backoff);
                    }
                }
            }
            Next::Watch { checked } => {
                let within = shared.connect_timeout.min(WATCH_EVERY);
                match wire::connect(router, within).await {
                    // Closed before a byte: the router takes it for a port check.
                    Ok(_port) => *when = look_at(&shared, *checked),
                    Err(e) => {
                        let e = Error::network(format!("cannot reach router {router}"), e);
                        shared.router_link(index, retrying(&e.to_string()));
                        warn!(tunnel = %shared.name, %router, "router {router}, standing by, no longer accepts connections: {e}; checking it again");
                        let mut backoff = Backoff::new(FIRST_WAIT, LONGEST_WAIT);
                        *when = Instant::now() + backoff.next_wait();
                        *what = Next::Check(backoff);
                    }
                }
            }
            Next::Check(backoff) => match handshake(&shared, index).await {
                Ok(()) => {
                    let standby = LinkStatus::Standby {
                        since: SystemTime::now(),
                        serving: serving.clone(),
                    };
                    let spare = shared.links.borrow()[index] == LinkStatus::Connecting;
                    shared.router_link(index, standby);
                    let answers = if spare { "answers" } else { "answers again" };
                    info!(tunnel = %shared.name, %router, "router {router} {answers}: it stands by while router {serving} serves this tunnel");
                    let checked = Instant::now();
                    *what = Next::Watch { checked };
                    *when = look_at(&shared, checked);
                }
                Err(e) => {
                    let wait = failed(&shared, index, &e, backoff);
                    *when = Instant::now() + wait;
                    debug!(tunnel = %shared.name, %router, "router {router} still fails: {e}; checking again in {:.1}s", wait.as_secs_f64());
                }
            },
        }
    }
}

/// A full check of router `index`: a control channel's handshake, which says
/// goodbye at once.
async fn handshake(shared: &Shared, index: usize) -> Result<(), Error> {
    let (mut wire, _) = open_at(shared, ChannelKind::Control, index).await?;
    goodbye(
        &mut wire,
        "a standby check: this tunnel is served elsewhere",
    )
    .await;
    shared.link.router_accepted(index);
    Ok(())
}

/// Records that router `index` failed a check with `e`: the wait before the next
/// (the back-off's, and at least [`REFUSED_WAIT`] after a refusal).
fn failed(shared: &Shared, index: usize, e: &Error, backoff: &mut Backoff) -> Duration {
    let mut wait = backoff.next_wait();
    if !e.is_retryable() {
        // Checked again as often as `--standby-check` asks, if that is sooner.
        let every = shared
            .standby_check
            .map_or(REFUSED_WAIT, |c| c.min(REFUSED_WAIT));
        wait = wait.max(every);
        if shared.link.router_refused(index, e.to_string()) {
            let router = &shared.routers[index];
            error!(tunnel = %shared.name, %router, "router {router}, standing by, refuses this tunnel: {e}; it is checked again every {}s", every.as_secs());
        }
    }
    shared.router_link(index, retrying(&e.to_string()));
    wait
}

/// When to look next at a router on standby last checked in full at `checked`: its
/// port in about [`WATCH_EVERY`], or its full check if that is due sooner.
fn look_at(shared: &Shared, checked: Instant) -> Instant {
    let port = Instant::now() + watch_wait();
    match shared.standby_check {
        Some(every) => port.min(checked + every),
        None => port,
    }
}

/// [`WATCH_EVERY`], give or take half.
fn watch_wait() -> Duration {
    WATCH_EVERY.mul_f64(rand::rng().random_range(0.5..1.5))
}
