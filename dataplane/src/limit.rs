//! The cap on open connections (`--max-connections`), and a throttle for the log
//! line a refusal writes.
//!
//! The cap is per tunnel (client) or per router, not per core, so it is the one
//! counter every core of a process updates: a single atomic, taken with a
//! compare-and-swap when a connection opens and given back when it closes. A per-core
//! share of the limit would need no sharing, but it would refuse a connection on a
//! busy core while another core has room, and a limit of 1 could not be split at all.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// At most `max` connections open at once; 0 means no limit.
#[derive(Debug, Default)]
pub struct ConnLimit {
    max: usize,
    open: AtomicUsize,
}

impl ConnLimit {
    /// A limit of `max` open connections (0: unlimited).
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: AtomicUsize::new(0),
        })
    }

    /// The limit; 0 means none.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections holding a permit now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// A permit for one more connection, or `None` when the limit is reached.
    pub(crate) fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        if self.max == 0 {
            return Some(Permit(None));
        }
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit(Some(self.clone())))
    }
}

/// One open connection's place under the limit; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct Permit(Option<Arc<ConnLimit>>);

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(l) = &self.0 {
            l.open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Lets a repeated warning through at most once per interval and counts the ones
/// held back, so a flood of refusals cannot flood the log. One per core.
///
/// The count rides on the next line let through; a throttle made with
/// [`Throttle::reporting`] (on a data-plane worker: it needs its runtime) also logs
/// it when the interval ends, so a burst followed by quiet is counted too.
#[derive(Debug)]
pub(crate) struct Throttle {
    every: Duration,
    last: Cell<Option<Instant>>,
    /// Shared with a report on its way (atomic only so that a throttle can be
    /// `Send`, as the control plane's accept loops need: one thread uses it).
    held: Arc<AtomicU64>,
    report: Option<Report>,
}

/// What a reporting throttle says of the occurrences it held back.
#[derive(Debug)]
struct Report {
    /// What was held back, counted: "users refused at the tunnel's limit".
    what: &'static str,
    /// Logged at warn (else info).
    warn: bool,
    /// A report is on its way.
    due: Arc<AtomicBool>,
}

impl Throttle {
    pub(crate) fn new(every: Duration) -> Self {
        Self {
            every,
            last: Cell::new(None),
            held: Arc::default(),
            report: None,
        }
    }

    /// A throttle that logs, as the interval after a line let through ends, how
    /// many `what` it held back meanwhile (at warn if `warn`, else info). Only on a
    /// data-plane worker: the report is a task of its runtime.
    pub(crate) fn reporting(every: Duration, what: &'static str, warn: bool) -> Self {
        Self {
            report: Some(Report {
                what,
                warn,
                due: Arc::default(),
            }),
            ..Self::new(every)
        }
    }

    /// `Some(n)` when this occurrence should be logged (`n` occurrences were held
    /// back since the last one logged); `None` to stay quiet.
    pub(crate) fn admit(&self) -> Option<u64> {
        let now = Instant::now();
        match self.last.get() {
            Some(t) if now.duration_since(t) < self.every => {
                self.held.fetch_add(1, Ordering::Relaxed);
                if let Some(r) = &self.report {
                    r.schedule(self.held.clone(), t + self.every - now);
                }
                None
            }
            _ => {
                self.last.set(Some(now));
                Some(self.held.swap(0, Ordering::Relaxed))
            }
        }
    }

    /// The occurrences held back since the last one logged, now to be said by the
    /// caller (they count as said).
    pub(crate) fn take_held(&self) -> u64 {
        self.held.swap(0, Ordering::Relaxed)
    }
}

impl Report {
    /// Logs the held count in `after`, unless a report is already on its way (or a
    /// line let through meanwhile took the count).
    fn schedule(&self, held: Arc<AtomicU64>, after: Duration) {
        if self.due.swap(true, Ordering::Relaxed) {
            return;
        }
        let (due, what, warn) = (self.due.clone(), self.what, self.warn);
        monoio::spawn(async move {
            monoio::time::sleep(after).await;
            due.store(false, Ordering::Relaxed);
            let n = held.swap(0, Ordering::Relaxed);
            match (n, warn) {
                (0, _) => {}
                (n, true) => tracing::warn!("{what} in the second after the last report: {n} more"),
                (n, false) => {
                    tracing::info!("{what} in the second after the last report: {n} more")
                }
            }
        });
    }
}

/// "1 open connection", "2 open connections".
pub(crate) fn open_connections(n: usize) -> String {
    if n == 1 {
        "1 open connection".into()
    } else {
        format!("{n} open connections")
    }
}

/// " (N more refused since the last report)", or nothing.
pub(crate) fn held_note(held: u64) -> String {
    if held == 0 {
        String::new()
    } else {
        format!(" ({held} more refused since the last report)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_stop_at_the_limit_and_come_back_on_drop() {
        let l = ConnLimit::new(2);
        let a = l.try_acquire().unwrap();
        let b = l.try_acquire().unwrap();
        assert!(l.try_acquire().is_none());
        assert_eq!(l.open(), 2);
        drop(a);
        assert_eq!(l.open(), 1);
        let _c = l.try_acquire().unwrap();
        assert!(l.try_acquire().is_none());
        drop(b);
        assert_eq!(l.open(), 1);
    }

    #[test]
    fn zero_means_unlimited() {
        let l = ConnLimit::new(0);
        let permits: Vec<_> = (0..1000).map(|_| l.try_acquire().unwrap()).collect();
        assert_eq!(permits.len(), 1000);
        assert_eq!(l.open(), 0);
    }

    #[test]
    fn the_throttle_counts_what_it_holds_back() {
        let t = Throttle::new(Duration::from_secs(3600));
        assert_eq!(t.admit(), Some(0));
        assert_eq!(t.admit(), None);
        assert_eq!(t.admit(), None);
        t.last.set(Some(Instant::now() - Duration::from_secs(7200)));
        assert_eq!(t.admit(), Some(2));
        assert_eq!(held_note(0), "");
        assert_eq!(open_connections(1), "1 open connection");
        assert_eq!(open_connections(3), "3 open connections");
        assert_eq!(held_note(2), " (2 more refused since the last report)");
    }

    /// A reporting throttle takes the count it held back when its interval ends: the
    /// next line let through starts from none.
    #[test]
    fn a_reporting_throttle_reports_what_it_held_back_when_the_interval_ends() {
        let rt = crate::engine::block_on(crate::EngineKind::Epoll, async {
            let t = Throttle::reporting(Duration::from_millis(50), "tests", true);
            assert_eq!(t.admit(), Some(0));
            assert_eq!(t.admit(), None);
            assert_eq!(t.admit(), None);
            assert_eq!(t.held.load(Ordering::Relaxed), 2);
            let deadline = Instant::now() + Duration::from_secs(10);
            while t.held.load(Ordering::Relaxed) > 0 {
                assert!(Instant::now() < deadline, "the report never came");
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(!t.report.as_ref().unwrap().due.load(Ordering::Relaxed));
            assert_eq!(t.admit(), Some(0));
        });
        rt.unwrap();
    }
}
