//! Whether a tunnel's channel pool fits the open-file limit it will run with: the
//! pool keeps to half of it (see [`crate::limits::pool_within`]), so a pool that
//! does not fit is cut down at start; `config validate` says so beforehand.

use crate::config::model::PerformanceConfig;

/// The open-file limit a tunnel started from this process runs with: the hard
/// limit, which it raises its soft limit to at start (see
/// [`crate::limits::raise_nofile`]); the soft one where the hard one is unlimited
/// (no process may raise its soft limit to that). `None` when it cannot be read.
fn limit_at_start() -> Option<u64> {
    let (soft, hard) = crate::limits::nofile().ok()?;
    Some(if hard == u64::MAX {
        soft
    } else {
        soft.max(hard)
    })
}

/// The warning for `p` (at `performance.pool_size`) when its pooled channels would
/// take more than half the open-file limit a tunnel started here runs with.
pub(super) fn check(p: &PerformanceConfig) -> Option<String> {
    let workers = p.dataplane_options().worker_count();
    over_limit(
        workers,
        p.workers == 0,
        p.effective_pool_size(),
        limit_at_start()?,
    )
}

/// The warning when `workers` (`per_core`: set to 0, one per core here) keeping
/// `pool_size` channels each would take more than half of `limit`.
pub(super) fn over_limit(
    workers: usize,
    per_core: bool,
    pool_size: usize,
    limit: u64,
) -> Option<String> {
    let kept = crate::limits::pool_within(pool_size, workers, limit);
    if kept >= pool_size {
        return None;
    }
    let channels = workers.saturating_mul(pool_size);
    let workers = if per_core {
        format!("0 ({workers} here: one per core)")
    } else {
        workers.to_string()
    };
    Some(format!(
        "workers {workers} × pool_size {pool_size} = {channels} pooled channels would take \
         more than half of the open-file limit of {limit} a tunnel started here runs with \
         (ulimit -Hn; it raises its soft limit to that): each worker would keep {kept} ready \
         instead; raise the limit to {} or more (ulimit -n, or LimitNOFILE= in a systemd \
         unit), or lower pool_size or workers",
        channels.saturating_mul(2)
    ))
}
