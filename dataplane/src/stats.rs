//! Per-core counters, and (in `conns`) the per-core table of open connections.
//!
//! Each core writes only its own counters (relaxed atomics, one writer); the control
//! plane reads them without locks. The connection table belongs to its core and is
//! read by the control plane only through a message (`ToWorker::Snapshot`).
//!
//! Nothing here is touched per relayed chunk except the byte counters: error kinds and
//! the duration histogram are written once per connection, when it ends.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

mod conns;

pub use conns::ConnSnapshot;
pub(crate) use conns::{
    Closing, ConnCounters, ConnEntry, ConnTable, KillReceiver, Meter, Rides, Writing,
};

/// Why a user connection ended in an error. The set is fixed, so a metric labelled
/// with it stays bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The router's allow-list refused the source (router side).
    PolicyRefused,
    /// The router could not connect the source.
    SourceUnreachable,
    /// The router refused to open the stream (client side, whatever the router's
    /// reason: its allow-list, its connection limit, a source it cannot reach; the
    /// log line and `status` name it, the router's own metrics count it by kind).
    OpenFailed,
    /// No channel to the router (link down, or none in time) (client side).
    RouterUnreachable,
    /// The plain socket failed mid-stream: the user's (client) or the source's (router).
    Plain,
    /// The channel to the other Conduit end failed (I/O, TLS, protocol, closed).
    Channel,
    /// The other Conduit end aborted the stream.
    PeerReset,
    /// An operator closed it, or what it rode on was lost.
    Killed,
    /// `--max-connections` was reached.
    LimitReached,
    /// The process had no file descriptor for a channel to the router (client side).
    OutOfDescriptors,
    /// The user's address is not in the tunnel's `--allow-from` (client side).
    UserNotAllowed,
    /// Nothing moved either way for the stream idle timeout.
    IdleTimeout,
}

impl ErrorKind {
    /// Every kind, in a fixed order.
    pub const ALL: [ErrorKind; 12] = [
        ErrorKind::PolicyRefused,
        ErrorKind::SourceUnreachable,
        ErrorKind::OpenFailed,
        ErrorKind::RouterUnreachable,
        ErrorKind::Plain,
        ErrorKind::Channel,
        ErrorKind::PeerReset,
        ErrorKind::Killed,
        ErrorKind::LimitReached,
        ErrorKind::OutOfDescriptors,
        ErrorKind::UserNotAllowed,
        ErrorKind::IdleTimeout,
    ];

    /// The label value metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::PolicyRefused => "policy_refused",
            ErrorKind::SourceUnreachable => "source_unreachable",
            ErrorKind::OpenFailed => "open_failed",
            ErrorKind::RouterUnreachable => "router_unreachable",
            ErrorKind::Plain => "plain_socket",
            ErrorKind::Channel => "channel",
            ErrorKind::PeerReset => "peer_reset",
            ErrorKind::Killed => "killed",
            ErrorKind::LimitReached => "limit_reached",
            ErrorKind::OutOfDescriptors => "out_of_descriptors",
            ErrorKind::UserNotAllowed => "user_not_allowed",
            ErrorKind::IdleTimeout => "idle_timeout",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A histogram as plain counters: one writer, lock-free readers. Bucket `i` counts
/// observations `<= BOUNDS[i]` that were above the previous bound (not cumulative);
/// the last slot counts those above every bound.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    /// Sum of observations, in microseconds.
    sum_micros: AtomicU64,
}

impl Histogram {
    /// An empty histogram over `bounds` (seconds, ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Relaxed);
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Relaxed);
    }

    /// A copy of the counts.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.bounds,
            counts: self.counts.iter().map(|c| c.load(Relaxed)).collect(),
            sum_micros: self.sum_micros.load(Relaxed),
        }
    }
}

/// Read-only counts of a [`Histogram`], or the sum of several over the same bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Upper bounds in seconds.
    pub bounds: &'static [f64],
    /// Per-bucket (not cumulative) counts; one more than `bounds` (the +Inf bucket).
    pub counts: Vec<u64>,
    /// Sum of observations, in microseconds.
    pub sum_micros: u64,
}

impl HistogramSnapshot {
    /// An empty snapshot over `bounds`.
    pub fn empty(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum_micros: 0,
        }
    }

    /// Adds another snapshot over the same bounds.
    pub fn add(&mut self, other: &HistogramSnapshot) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum_micros += other.sum_micros;
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// `(upper bound, cumulative count)` per bucket, ending with `(+Inf, count)`.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut acc = 0;
        self.counts
            .iter()
            .enumerate()
            .map(|(i, c)| {
                acc += c;
                (self.bounds.get(i).copied().unwrap_or(f64::INFINITY), acc)
            })
            .collect()
    }
}

/// Bucket bounds for how long a user connection lasted, in seconds.
pub const CONNECTION_SECONDS: &[f64] = &[
    0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0,
];

/// Counters of one core. Aligned to its own cache lines so cores never share one.
#[derive(Debug)]
#[repr(align(128))]
pub struct CoreStats {
    /// User connections open now.
    pub active: AtomicU64,
    /// The most open at once since [`crate::DataPlane::release_after_burst`] last
    /// looked (raised as each one opens).
    pub peak_active: AtomicU64,
    /// User connections opened since start.
    pub opened: AtomicU64,
    /// Payload bytes from users toward sources.
    pub bytes_up: AtomicU64,
    /// Payload bytes from sources toward users.
    pub bytes_down: AtomicU64,
    /// Handshaken channels waiting in this core's pool (client side).
    pub idle_channels: AtomicU64,
    /// Datagrams a UDP tunnel dropped: the user sent faster than the flow's channel
    /// drained, no flow could be opened (limit reached, router unreachable), or one
    /// was too big for its receiver: for a datagram of its address family (an IPv6
    /// sender's to an IPv4 receiver), or behind its PROXY header. On a router, only
    /// the last.
    pub datagrams_dropped: AtomicU64,
    /// Datagrams the kernel dropped because a UDP socket's receive buffer was full:
    /// this core's socket on a client's bind address, or its sockets toward sources
    /// on a router. Read from the kernel about once a second while such a socket is
    /// in use, and once more when the core stops reading it.
    pub udp_receive_drops: AtomicU64,
    /// A UDP tunnel's: the router's reports that a source refused a flow's
    /// datagrams (nothing listens on its port), at most one a second for each flow.
    pub udp_source_refusals: AtomicU64,
    /// Streams whose TLS records the kernel sealed and opened (kTLS), since start.
    pub kernel_tls: AtomicU64,
    /// User connections that ended in an error, by [`ErrorKind`].
    errors: [AtomicU64; ErrorKind::ALL.len()],
    /// How long established connections lasted.
    pub durations: Histogram,
}

impl CoreStats {
    /// Counts a user connection (or flow) open, and the most open at once.
    pub(crate) fn open_one(&self) {
        let now = self.active.fetch_add(1, Relaxed) + 1;
        self.peak_active.fetch_max(now, Relaxed);
    }
}

impl Default for CoreStats {
    fn default() -> Self {
        Self {
            active: AtomicU64::new(0),
            peak_active: AtomicU64::new(0),
            opened: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            idle_channels: AtomicU64::new(0),
            datagrams_dropped: AtomicU64::new(0),
            udp_receive_drops: AtomicU64::new(0),
            udp_source_refusals: AtomicU64::new(0),
            kernel_tls: AtomicU64::new(0),
            errors: Default::default(),
            durations: Histogram::new(CONNECTION_SECONDS),
        }
    }
}

impl CoreStats {
    /// Counts one connection that ended in error `kind`.
    pub(crate) fn fail(&self, kind: ErrorKind) {
        self.errors[kind.index()].fetch_add(1, Relaxed);
    }
}

/// The sum of every core's counters.
#[derive(Debug, Clone, PartialEq)]
pub struct Totals {
    /// See [`CoreStats::active`].
    pub active: u64,
    /// See [`CoreStats::opened`].
    pub opened: u64,
    /// User connections that ended in an error: the sum of `errors` but for
    /// `idle_timeout` (a connection closed for its silence did not fail).
    pub failed: u64,
    /// See [`CoreStats::bytes_up`].
    pub bytes_up: u64,
    /// See [`CoreStats::bytes_down`].
    pub bytes_down: u64,
    /// See [`CoreStats::idle_channels`].
    pub idle_channels: u64,
    /// See [`CoreStats::datagrams_dropped`].
    pub datagrams_dropped: u64,
    /// See [`CoreStats::udp_receive_drops`]; `None` where the system does not count
    /// them (only Linux does).
    pub udp_receive_drops: Option<u64>,
    /// See [`CoreStats::udp_source_refusals`].
    pub udp_source_refusals: u64,
    /// See [`CoreStats::kernel_tls`].
    pub kernel_tls: u64,
    /// Errors by kind, in [`ErrorKind::ALL`] order.
    pub errors: Vec<(ErrorKind, u64)>,
    /// Connection durations.
    pub durations: HistogramSnapshot,
}

impl Totals {
    pub(crate) fn sum<'a>(cores: impl IntoIterator<Item = &'a CoreStats>) -> Self {
        let mut t = Totals {
            active: 0,
            opened: 0,
            failed: 0,
            bytes_up: 0,
            bytes_down: 0,
            idle_channels: 0,
            datagrams_dropped: 0,
            udp_receive_drops: crate::sys::RECEIVE_DROPS_KNOWN.then_some(0),
            udp_source_refusals: 0,
            kernel_tls: 0,
            errors: ErrorKind::ALL.iter().map(|k| (*k, 0)).collect(),
            durations: HistogramSnapshot::empty(CONNECTION_SECONDS),
        };
        for c in cores {
            t.active += c.active.load(Relaxed);
            t.opened += c.opened.load(Relaxed);
            t.bytes_up += c.bytes_up.load(Relaxed);
            t.bytes_down += c.bytes_down.load(Relaxed);
            t.idle_channels += c.idle_channels.load(Relaxed);
            t.datagrams_dropped += c.datagrams_dropped.load(Relaxed);
            if let Some(n) = &mut t.udp_receive_drops {
                *n += c.udp_receive_drops.load(Relaxed);
            }
            t.udp_source_refusals += c.udp_source_refusals.load(Relaxed);
            t.kernel_tls += c.kernel_tls.load(Relaxed);
            for (slot, n) in t.errors.iter_mut().zip(&c.errors) {
                slot.1 += n.load(Relaxed);
            }
            t.durations.add(&c.durations.snapshot());
        }
        t.failed = (t.errors.iter())
            .filter(|(kind, _)| *kind != ErrorKind::IdleTimeout)
            .map(|(_, n)| n)
            .sum();
        t
    }
}

/// How often a busy UDP socket's kernel drop count is read: each reading is a system
/// call, too many for every datagram (a tenth of a UDP transaction's relay CPU when
/// read at each wake-up).
pub(crate) const DROPS_READ_EVERY: Duration = Duration::from_secs(1);

/// Carries one UDP socket's kernel drop count into its core's counter. The kernel
/// counts per socket, in 32 bits that wrap; the core's counter sums what each of its
/// sockets dropped between two readings.
#[derive(Debug, Default)]
pub(crate) struct DropTally {
    seen: Cell<u32>,
    /// No reading by [`DropTally::now_and_then`] before this.
    next: Cell<Option<Instant>>,
}

impl DropTally {
    /// [`DropTally::update`] with the count `read` gives, at most once per
    /// [`DROPS_READ_EVERY`]; the last reading (when the socket closes) is the caller's.
    pub(crate) fn now_and_then(&self, read: impl FnOnce() -> Option<u32>, core: &AtomicU64) {
        let now = Instant::now();
        if self.next.get().is_some_and(|next| now < next) {
            return;
        }
        self.next.set(Some(now + DROPS_READ_EVERY));
        self.update(read(), core);
    }

    /// Adds to `core` what the socket dropped since the last reading, given its
    /// count `now` (`None`: the system does not say, and nothing is added).
    pub(crate) fn update(&self, now: Option<u32>, core: &AtomicU64) {
        if let Some(now) = now {
            let new = now.wrapping_sub(self.seen.replace(now));
            if new > 0 {
                core.fetch_add(u64::from(new), Relaxed);
                say_dropped(new);
            }
        }
    }
}

thread_local! {
    /// When this core last said that datagrams were dropped, and how many it found
    /// dropped since without saying so.
    static DROPS_SAID: Cell<Option<Instant>> = const { Cell::new(None) };
    static DROPS_HELD: Cell<u64> = const { Cell::new(0) };
}

/// How often each core says at most that the kernel dropped datagrams.
const DROPS_SAID_EVERY: Duration = Duration::from_secs(60);

/// Says that the kernel dropped `new` datagrams for want of room (once a minute at
/// most per core, each line counting every drop the core found since its last; the
/// metric counts every one): lost datagrams are no error any socket call returns,
/// and the operator has a setting to change.
fn say_dropped(new: u32) {
    let now = Instant::now();
    let held = DROPS_HELD.get() + u64::from(new);
    if DROPS_SAID
        .get()
        .is_some_and(|at| now.duration_since(at) < DROPS_SAID_EVERY)
    {
        DROPS_HELD.set(held);
        return;
    }
    DROPS_SAID.set(Some(now));
    DROPS_HELD.set(0);
    tracing::warn!(
        "the kernel dropped {held} UDP datagram(s) that found a receive buffer full: raise \
         performance.read_buffer_size (a tunnel's --read-buffer-size), up to \
         net.core.rmem_max (`conduit tune --check`); said at most once a minute by each \
         core (counting what it found since), conduit_udp_receive_buffer_drops_total \
         counts every one"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_with_inf_last() {
        static B: &[f64] = &[0.1, 1.0];
        let h = Histogram::new(B);
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_millis(100));
        h.observe(Duration::from_millis(700));
        h.observe(Duration::from_secs(3));
        let s = h.snapshot();
        assert_eq!(s.counts, vec![2, 1, 1]);
        assert_eq!(s.count(), 4);
        assert_eq!(s.sum_micros, 3_850_000);
        assert_eq!(s.cumulative(), vec![(0.1, 2), (1.0, 3), (f64::INFINITY, 4)]);
        let mut sum = HistogramSnapshot::empty(B);
        sum.add(&s);
        sum.add(&s);
        assert_eq!(sum.counts, vec![4, 2, 2]);
    }

    #[test]
    fn a_drop_tally_adds_only_what_is_new_across_the_wrap() {
        let core = AtomicU64::new(5);
        let tally = DropTally::default();
        tally.update(Some(3), &core);
        tally.update(Some(3), &core);
        assert_eq!(core.load(Relaxed), 8);
        tally.update(None, &core);
        assert_eq!(core.load(Relaxed), 8, "an unknown count adds nothing");
        tally.update(Some(u32::MAX), &core);
        tally.update(Some(1), &core);
        assert_eq!(core.load(Relaxed), 8 + (u64::from(u32::MAX) - 3) + 2);
        // A second socket on the same core counts from its own zero.
        DropTally::default().update(Some(4), &core);
        assert_eq!(core.load(Relaxed), 8 + (u64::from(u32::MAX) - 3) + 2 + 4);
    }

    #[test]
    fn a_drop_tally_reads_now_and_then_at_most_once_a_period() {
        let core = AtomicU64::new(0);
        let tally = DropTally::default();
        let reads = Cell::new(0);
        let read = |n| {
            reads.set(reads.get() + 1);
            Some(n)
        };
        tally.now_and_then(|| read(3), &core);
        tally.now_and_then(|| read(5), &core);
        assert_eq!((reads.get(), core.load(Relaxed)), (1, 3));
        // The last reading, when the socket closes, is always made.
        tally.update(read(6), &core);
        assert_eq!((reads.get(), core.load(Relaxed)), (2, 6));
    }

    #[test]
    fn totals_sum_udp_receive_drops_where_the_system_counts_them() {
        let a = CoreStats::default();
        let b = CoreStats::default();
        a.udp_receive_drops.store(2, Relaxed);
        b.udp_receive_drops.store(5, Relaxed);
        let t = Totals::sum([&a, &b]);
        let expected = cfg!(target_os = "linux").then_some(7);
        assert_eq!(t.udp_receive_drops, expected);
    }

    #[test]
    fn totals_sum_errors_by_kind() {
        let a = CoreStats::default();
        let b = CoreStats::default();
        a.fail(ErrorKind::SourceUnreachable);
        b.fail(ErrorKind::SourceUnreachable);
        b.fail(ErrorKind::Killed);
        let t = Totals::sum([&a, &b]);
        assert_eq!(t.failed, 3);
        let get = |k| t.errors.iter().find(|(x, _)| *x == k).unwrap().1;
        assert_eq!(get(ErrorKind::SourceUnreachable), 2);
        assert_eq!(get(ErrorKind::Killed), 1);
        assert_eq!(get(ErrorKind::Channel), 0);
    }
}
