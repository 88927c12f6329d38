//! Checks on the routers a failing-over tunnel left behind: while another router
//! serves it, each router whose link failed is tried again with back-off, and once
//! one answers it is on standby. Its loss is then followed by its return in the
//! alerts, though the tunnel stays where it is (a failback probe, when asked for,
//! moves it back to an earlier router instead).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use conduit_proto::ChannelKind;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info};

use super::link::retrying;
use super::open::open_at;
use super::rotation::goodbye;
use super::{LinkStatus, Shared};
use crate::backoff::Backoff;

/// The first check on a router left behind comes this long after the link moved
/// (with the back-off's jitter); later ones wait longer, up to [`LONGEST_WAIT`].
const FIRST_WAIT: Duration = Duration::from_secs(1);

/// The longest wait between two checks on one router, as between the tunnel's own
/// attempts.
const LONGEST_WAIT: Duration = Duration::from_secs(30);

/// The running checks, stopped when the link they were started for ends.
pub(super) struct Standby(Option<JoinHandle<()>>);

impl Standby {
    /// Starts checking, while the link uses router `at`, each other router whose
    /// link failed, but for those a failback probe tries (the routers before `at`
    /// under `--router-failback`). Nothing for a balancing tunnel, which uses every
    /// router.
    pub(super) fn start(shared: &Arc<Shared>, at: usize) -> Self {
        if shared.balance {
            return Self(None);
        }
        let probed = if shared.failback.is_some() { at } else { 0 };
        let down: Vec<usize> = {
            let links = shared.links.borrow();
            (probed..links.len())
                .filter(|&i| i != at && matches!(links[i], LinkStatus::Retrying { .. }))
                .collect()
        };
        if down.is_empty() {
            return Self(None);
        }
        Self(Some(tokio::spawn(check(shared.clone(), at, down))))
    }

    pub(super) fn stop(self) {
        if let Some(task) = self.0 {
            task.abort();
        }
    }
}

/// Tries each of `down` with its own back-off until it answers `Hello` with
/// `Welcome`, then says goodbye on that channel and marks the router on standby.
async fn check(shared: Arc<Shared>, at: usize, down: Vec<usize>) {
    let now = Instant::now();
    let mut due: Vec<(usize, Backoff, Instant)> = down
        .into_iter()
        .map(|i| {
            let mut backoff = Backoff::new(FIRST_WAIT, LONGEST_WAIT);
            let first = backoff.next_wait();
            (i, backoff, now + first)
        })
        .collect();
    let serving = &shared.routers[at];
    while let Some(next) = (0..due.len()).min_by_key(|&k| due[k].2) {
        tokio::time::sleep_until(due[next].2).await;
        let index = due[next].0;
        let router = &shared.routers[index];
        match open_at(&shared, ChannelKind::Control, index).await {
            Ok((mut wire, _)) => {
                goodbye(
                    &mut wire,
                    "a standby check: this tunnel is served elsewhere",
                )
                .await;
                shared.link.router_accepted(index);
                let standby = LinkStatus::Standby {
                    since: SystemTime::now(),
                    serving: serving.clone(),
                };
                shared.router_link(index, standby);
                info!(tunnel = %shared.name, %router, "router {router} answers again: it stands by while router {serving} serves this tunnel");
                due.swap_remove(next);
            }
            Err(e) => {
                if !e.is_retryable() {
                    shared.link.router_refused(index, e.to_string());
                }
                shared.router_link(index, retrying(&e.to_string()));
                let wait = due[next].1.next_wait();
                due[next].2 = Instant::now() + wait;
                debug!(tunnel = %shared.name, %router, "router {router} still fails: {e}; checking again in {:.1}s", wait.as_secs_f64());
            }
        }
    }
}
