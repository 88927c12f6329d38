//! The process's open-file limit.
//!
//! Every relayed connection holds at least two sockets (four more fds while a plain
//! leg splices through pipes), so 10 000 connections need 20 000–60 000 descriptors,
//! while shells and init systems often start processes with a soft `RLIMIT_NOFILE` of
//! 1024. The soft limit may be raised up to the hard one without privileges, so a
//! tunnel or router process does that once at start; raising the hard limit is the
//! operator's part (`conduit tune --check` says how).
//!
//! And the memory a burst of connections leaves: handed back once it is over
//! ([`hand_back_memory`]).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use conduit_dataplane::DataPlane;
use conduit_dataplane::memory::BurstWatch;

/// How often [`hand_back_memory`] looks at the open connections.
const BURST_SAMPLE: Duration = Duration::from_secs(5);

/// Runs until aborted: every few seconds, hands the memory of a burst of
/// connections that is over back to the system (see
/// [`DataPlane::release_after_burst`]), and says so at debug.
pub async fn hand_back_memory(dp: Arc<DataPlane>) {
    let mut watch = BurstWatch::default();
    let mut tick = tokio::time::interval(BURST_SAMPLE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let look = dp.clone();
        let Ok((released, w)) = tokio::task::spawn_blocking(move || {
            let released = look.release_after_burst(&mut watch);
            (released, watch)
        })
        .await
        else {
            return;
        };
        watch = w;
        if released {
            tracing::debug!(
                "a burst of connections is over: its free memory went back to the system"
            );
        }
    }
}

/// `RLIMIT_NOFILE` as (soft, hard); `u64::MAX` stands for "unlimited".
pub fn nofile() -> io::Result<(u64, u64)> {
    imp::get()
}

/// Raises the soft open-file limit to the hard limit. Returns the soft limit
/// (before, after); both are equal when there was nothing to raise.
pub fn raise_nofile() -> io::Result<(u64, u64)> {
    let (soft, hard) = imp::get()?;
    if soft >= hard {
        return Ok((soft, soft));
    }
    imp::set(hard, hard)?;
    let (after, _) = imp::get()?;
    Ok((soft, after))
}

/// The most pooled data channels a tunnel keeps ready, of a soft open-file limit of
/// `soft`: half. The other half is for what the process cannot do without: the
/// users' connections and the channels they take, the control socket that `conduit
/// status` and `conduit down` reach, the router link, log and key files. A pool
/// that took them all would leave the tunnel unable to accept a user or an order.
pub fn pool_share(soft: u64) -> u64 {
    soft / 2
}

/// The channels each of `workers` keeps ready (`pool_size` asked), so that together
/// they hold at most [`pool_share`] of the soft open-file limit `soft`; `pool_size`
/// itself when that fits.
pub fn pool_within(pool_size: usize, workers: usize, soft: u64) -> usize {
    let per_worker = pool_share(soft) / workers.max(1) as u64;
    pool_size.min(usize::try_from(per_worker).unwrap_or(usize::MAX))
}

/// The idle channels each of `workers` keeps at most, `pool_size` asked: channels
/// that served users stay for the next ones up to four times the pool (at least 4),
/// within the same share of the open-file limit as [`pool_within`].
pub fn idle_within(pool_size: usize, workers: usize, soft: u64) -> usize {
    let per_worker = pool_share(soft) / workers.max(1) as u64;
    (pool_size.max(1) * 4).min(usize::try_from(per_worker).unwrap_or(usize::MAX))
}

#[cfg(unix)]
mod imp {
    use std::io;

    use nix::sys::resource::{Resource, getrlimit, setrlimit};

    pub(super) fn get() -> io::Result<(u64, u64)> {
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
        Ok((soft, hard))
    }

    pub(super) fn set(soft: u64, hard: u64) -> io::Result<()> {
        Ok(setrlimit(Resource::RLIMIT_NOFILE, soft, hard)?)
    }
}

#[cfg(not(unix))]
mod imp {
    use std::io;

    fn unsupported() -> io::Error {
        io::Error::new(
            io::ErrorKind::Unsupported,
            "this platform has no RLIMIT_NOFILE",
        )
    }

    pub(super) fn get() -> io::Result<(u64, u64)> {
        Err(unsupported())
    }

    pub(super) fn set(_soft: u64, _hard: u64) -> io::Result<()> {
        Err(unsupported())
    }
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_keeps_to_half_the_open_file_limit() {
        // The audit's case: 2 workers × 64 under `ulimit -n 120`.
        assert_eq!(pool_within(64, 2, 120), 30);
        assert_eq!(pool_within(2, 2, 120), 2);
        assert_eq!(pool_within(64, 2, 256), 64);
        // More workers than half the limit: none keeps a channel ready.
        assert_eq!(pool_within(2, 100, 120), 0);
        assert_eq!(pool_within(64, 0, 120), 60);
        assert_eq!(pool_within(64, 1024, u64::MAX), 64);
        // Channels kept after use: four times the pool, within the same share.
        assert_eq!(idle_within(2, 2, 1024), 8);
        assert_eq!(idle_within(0, 2, 1024), 4);
        assert_eq!(idle_within(64, 2, 120), 30);
        assert_eq!(idle_within(16, 2, 100), 25);
        assert_eq!(idle_within(2, 100, 120), 0);
    }

    /// Changes this test process's limit; nextest runs each test in its own process.
    #[test]
    fn the_soft_limit_goes_up_to_the_hard_one() {
        let (soft, hard) = nofile().unwrap();
        // Start from a low soft limit, as a login shell would give.
        let low = soft.min(hard).min(256);
        imp::set(low, hard).unwrap();
        assert_eq!(nofile().unwrap(), (low, hard));

        assert_eq!(raise_nofile().unwrap(), (low, hard));
        assert_eq!(nofile().unwrap(), (hard, hard));

        // Nothing left to raise.
        assert_eq!(raise_nofile().unwrap(), (hard, hard));

        // The process can use what it was given: open past the old soft limit.
        if hard > low + 8 && hard < 1 << 20 {
            let files: Vec<_> = (0..=low)
                .map(|_| std::fs::File::open("/dev/null"))
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(files.len() as u64, low + 1);
        }
    }
}
