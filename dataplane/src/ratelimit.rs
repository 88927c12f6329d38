//! Per-tunnel bandwidth limits: a token bucket, one per tunnel on each core.
//!
//! The two settings of `[performance]` map onto the bucket like this:
//!
//! - `default_bandwidth_limit` (bytes per second) is the **rate** at which the bucket
//!   refills; 0 means unlimited, and then no bucket is needed at all.
//! - `burst_bandwidth_limit` (bytes) is the bucket's **size**: what a tunnel may send at
//!   once after being idle. 0 means one second's worth (the rate). A sender's timer
//!   wakes it a millisecond or so after the time it asked for, later on a busy
//!   machine, and a bucket that overflows meanwhile loses what it could not hold: a
//!   16 KiB burst at 50 MB/s gave 12 MB/s. So a burst under [`MIN_BURST_TIME`] at
//!   the rate acts as that much, and the bucket holds at least twice that, leaving a
//!   sender who waits for a burst that small at least that long to wake late in.
//!
//! Over any interval of `t` seconds a bucket lets through at most `burst + rate · t`
//! bytes, and a sender that always wants more gets exactly the rate in the long run.
//! In particular, after an idle spell a tunnel sends at most the burst before it
//! waits for the bucket to refill, however large its reads and writes are: stream
//! relays ask the bucket before each read or send and move only what it grants
//! ([`TokenBucket::grant`]), cutting a large chunk into granted pieces; a datagram,
//! which cannot be cut, is paid for before it goes ([`TokenBucket::charge_within`]),
//! taking the bucket into debt that every sender of the tunnel then waits out. A
//! datagram that would wait longer than [`DATAGRAM_MOST_WAIT`] for its turn is
//! dropped instead, as a router's full queue drops one: UDP senders do not slow down
//! when their datagrams are held, so holding every one would only grow the queue
//! (memory, and delays of minutes) without bound.
//!
//! # One bucket per direction, shared by the cores
//!
//! A tunnel with a limit has two buckets, one per direction ([`Bandwidth`]), that
//! every core's relays draw from, each under a mutex. A per-core split of the limit
//! ([`Limit::share`]) would need no lock, but a tunnel whose traffic lands on one core
//! (one big download, or an uneven `SO_REUSEPORT` spread) would get only that core's
//! share: a user who sets 10 MB/s and sees 5 would rightly call it a bug. The lock is
//! taken once per granted piece (up to 64 KiB) and only on tunnels with a limit, whose
//! rate is by definition below what the relay could do; tunnels without one take no
//! lock and pay one branch.
//!
//! The tunnel's connections take turns at its buckets: while some wait, the bucket
//! grants only to the first in line, and one that asks meanwhile gets in line
//! behind them ([`TokenBucket::grant_in_turn`]), so connections sharing a limit get
//! about equal parts of it.
//!
//! # Using it in a relay
//!
//! The clock is passed in, so tests drive it with a virtual one:
//!
//! ```
//! use std::time::{Duration, Instant};
//! use conduit_dataplane::ratelimit::{Grant, Limit, TokenBucket};
//!
//! let t0 = Instant::now();
//! let mut bucket = TokenBucket::new(Limit::from_config(1000, 0), t0);
//! assert_eq!(bucket.grant(t0, 600), Grant::Now(600));
//! // 400 left, but 600 wanted: wait for 200 more (0.2 s at 1000 bytes/s).
//! assert_eq!(bucket.grant(t0, 600), Grant::Wait(Duration::from_millis(200)));
//! assert_eq!(bucket.grant(t0 + Duration::from_millis(200), 600), Grant::Now(600));
//! ```
//!
//! A relay reads or sends at most what [`Grant::Now`] allows (returning what it could
//! not use with [`TokenBucket::refund`]) and on [`Grant::Wait`] sleeps that long, then
//! asks again. A limited relay holds the bytes it already read (one pooled buffer, or
//! a pipe) while it waits for a grant to send them; unlimited ones never ask.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Tokens are counted in billionths of a byte, so that a refill of `rate` bytes per
/// second over any whole number of nanoseconds is exact: no rounding, no drift.
const SCALE: i128 = 1_000_000_000;

/// The least burst, in time at the rate (see the module docs).
pub const MIN_BURST_TIME: Duration = Duration::from_millis(5);

/// `n` bytes in tokens.
fn scaled(n: usize) -> i128 {
    i128::try_from(n).unwrap_or(i128::MAX).saturating_mul(SCALE)
}

/// A bandwidth limit: `rate` bytes per second, bursts of up to `burst` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Bytes per second; never 0 (no limit is `None`, not a zero rate).
    pub rate: u64,
    /// The bucket's size in bytes; never 0.
    pub burst: u64,
}

impl Limit {
    /// The limit `[performance]` asks for: `None` (unlimited) when
    /// `default_bandwidth_limit` is 0; a burst of 0 means one second at the rate.
    pub fn from_config(default_bandwidth_limit: u64, burst_bandwidth_limit: u64) -> Option<Self> {
        if default_bandwidth_limit == 0 {
            return None;
        }
        let burst = if burst_bandwidth_limit == 0 {
            default_bandwidth_limit
        } else {
            burst_bandwidth_limit
        };
        Some(Self {
            rate: default_bandwidth_limit,
            burst,
        })
    }

    /// Core `core`'s part of this limit when the tunnel runs on `cores` workers: an
    /// equal split, remainders to the lowest cores, at least 1 byte/s and 1 byte.
    pub fn share(self, core: usize, cores: usize) -> Self {
        let n = cores.max(1) as u64;
        let i = (core as u64) % n;
        let part = |v: u64| (v / n + u64::from(i < v % n)).max(1);
        Self {
            rate: part(self.rate),
            burst: part(self.burst),
        }
    }
}

/// What a sender may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// Send this many bytes now (at most what was asked for, and at least the
    /// smaller of that and the burst).
    Now(usize),
    /// Nothing yet: ask again after this long.
    Wait(Duration),
}

/// A token bucket. Not thread-safe by itself: shared buckets sit under a mutex (see
/// the module docs).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    limit: Option<Limit>,
    /// Available tokens, in units of 1/[`SCALE`] byte; below zero while bytes charged
    /// ahead of the rate ([`Self::charge_within`]) are not paid for yet.
    tokens: i128,
    /// The most it holds, in the same units: the burst, or twice [`MIN_BURST_TIME`]
    /// at the rate if that is more.
    capacity: i128,
    /// The least it grants a sender who wants more: the burst, or
    /// [`MIN_BURST_TIME`] at the rate if that is more.
    least: i128,
    /// When `tokens` was last brought up to date.
    last: Instant,
    /// The senders waiting for the bucket ([`TokenBucket::grant_in_turn`]), by
    /// ticket, the first in line first.
    line: std::collections::VecDeque<u64>,
    /// The ticket the next sender to get in line takes.
    next_ticket: u64,
}

impl TokenBucket {
    /// A full bucket for `limit`; `None` lets everything through.
    pub fn new(limit: Option<Limit>, now: Instant) -> Self {
        let (capacity, least) = limit.map_or((0, 0), |l| {
            let burst = i128::from(l.burst.max(1)) * SCALE;
            // Tokens come in at `rate` per nanosecond (see `refill`).
            let floor = i128::from(l.rate).saturating_mul(MIN_BURST_TIME.as_nanos() as i128);
            (burst.max(floor.saturating_mul(2)), burst.max(floor))
        });
        Self {
            limit,
            tokens: capacity,
            capacity,
            least,
            last: now,
            line: std::collections::VecDeque::new(),
            next_ticket: 0,
        }
    }

    /// The limit this bucket enforces (`None`: unlimited).
    pub fn limit(&self) -> Option<Limit> {
        self.limit
    }

    /// Asks to send `want` bytes at `now`.
    ///
    /// Grants everything when unlimited. Otherwise it never hands out less than
    /// `min(want, burst)` at a time, so a slow limit means fewer, larger sends rather
    /// than a trickle of tiny ones; until that much has accumulated it says how long
    /// to wait, rounded up to the nanosecond, so asking again exactly then succeeds.
    pub fn grant(&mut self, now: Instant, want: usize) -> Grant {
        let Some(limit) = self.limit else {
            return Grant::Now(want);
        };
        if want == 0 {
            return Grant::Now(0);
        }
        self.grant_from(now, want, limit.rate, self.least)
    }

    /// [`Self::grant`] with `least` (in tokens) as the least handed out to a
    /// sender who wants more.
    fn grant_from(&mut self, now: Instant, want: usize, rate: u64, least: i128) -> Grant {
        self.refill(now, rate);
        let want_scaled = scaled(want);
        let need = want_scaled.min(least);
        if self.tokens >= need {
            let n = (self.tokens / SCALE).min(want as i128);
            self.tokens -= n * SCALE;
            // 0 <= n <= want, which came in as a usize.
            return Grant::Now(usize::try_from(n).unwrap_or(want));
        }
        let deficit = need - self.tokens;
        Grant::Wait(refill_time(deficit, rate))
    }

    /// [`Self::grant`], in turn: while senders wait for the bucket, it grants only to
    /// the first in line, and a sender that asks meanwhile gets in line behind them,
    /// so that senders sharing a limit get about equal parts of it (granting to
    /// whoever asked first after a refill gave four downloads under one limit 2.8 to
    /// 7.5 s for the same size). `turn` is the sender's place in line: `None` while
    /// it is not in line; set when it must wait, and cleared when it is granted. A
    /// sender that stops waiting leaves the line with [`Self::leave`]. It hands out
    /// at least `min(want, burst / 2)` at a time (not `burst`, as [`Self::grant`]):
    /// the bucket holds no more than the burst, and the first in line, woken a
    /// little late, would find it full and the rate lost meanwhile.
    pub fn grant_in_turn(&mut self, now: Instant, want: usize, turn: &mut Option<u64>) -> Grant {
        let Some(limit) = self.limit else {
            return Grant::Now(want);
        };
        let ahead = match *turn {
            Some(t) => self.line.iter().position(|&x| x == t).unwrap_or(0),
            None => self.line.len(),
        };
        // Half of `grant`'s least (see above).
        let least = (self.least / 2).max(1);
        if ahead == 0 {
            let grant = self.grant_from(now, want, limit.rate, least);
            match grant {
                Grant::Now(_) => {
                    if let Some(t) = turn.take() {
                        self.leave(t);
                    }
                }
                Grant::Wait(_) if turn.is_none() => *turn = Some(self.get_in_line()),
                Grant::Wait(_) => {}
            }
            return grant;
        }
        if turn.is_none() {
            *turn = Some(self.get_in_line());
        }
        // Its turn comes once those ahead have had theirs, about as much each.
        self.refill(now, limit.rate);
        let need = scaled(want).min(least);
        let ahead = i128::try_from(ahead).unwrap_or(i128::MAX);
        let deficit = need.saturating_mul(ahead.saturating_add(1)) - self.tokens;
        // Never less than a millisecond: the first in line may wake a little late,
        // and those behind it are not to spin meanwhile.
        Grant::Wait(refill_time(deficit.max(1), limit.rate).max(Duration::from_millis(1)))
    }

    fn get_in_line(&mut self) -> u64 {
        let t = self.next_ticket;
        self.next_ticket = self.next_ticket.wrapping_add(1);
        self.line.push_back(t);
        t
    }

    /// Takes the sender holding ticket `turn` out of the line (it stopped waiting).
    pub fn leave(&mut self, turn: u64) {
        self.line.retain(|&x| x != turn);
    }

    /// Takes `n` bytes out of the bucket at `now`, into debt if it holds fewer, if
    /// that debt is paid off within `most`, and says how long that takes (zero:
    /// nothing owed). For what cannot be cut to a grant (a datagram): its sender
    /// waits that long before it sends. `None`, and nothing taken, when the wait
    /// would be longer: the datagram is dropped. A datagram bigger than `burst +
    /// rate · most`, which could never pass so, is taken whenever the bucket owes no
    /// more than `most`'s worth (no such datagram's debt is still outstanding), and
    /// waits its own debt out: it goes, no sooner than the rate allows, rather than
    /// never, even while other senders keep the bucket from filling.
    ///
    /// The debt stays in the bucket whoever ends up waiting for it: [`Self::grant`]
    /// grants nothing until it is paid, so a flow that closes before its wait is over
    /// leaves it to the tunnel's next bytes.
    pub fn charge_within(&mut self, now: Instant, n: usize, most: Duration) -> Option<Duration> {
        let Some(limit) = self.limit else {
            return Some(Duration::ZERO);
        };
        self.refill(now, limit.rate);
        let left = self.tokens.saturating_sub(scaled(n));
        let wait = if left < 0 {
            refill_time(-left, limit.rate)
        } else {
            Duration::ZERO
        };
        if wait > most {
            let allowed = i128::try_from(most.as_nanos())
                .unwrap_or(i128::MAX)
                .saturating_mul(i128::from(limit.rate));
            let oversized = scaled(n) > self.capacity.saturating_add(allowed);
            if !oversized || self.tokens < allowed.saturating_neg() {
                return None;
            }
        }
        self.tokens = left;
        Some(wait)
    }

    /// Puts back bytes that were granted but not sent (the socket took fewer). The
    /// bucket never holds more than its burst.
    pub fn refund(&mut self, n: usize) {
        if self.limit.is_some() {
            self.tokens = self.tokens.saturating_add(scaled(n)).min(self.capacity);
        }
    }

    fn refill(&mut self, now: Instant, rate: u64) {
        // A clock that went backwards (or an older `now`) adds nothing.
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        if elapsed == 0 {
            return;
        }
        self.last = now;
        let add = i128::try_from(elapsed.saturating_mul(u128::from(rate))).unwrap_or(i128::MAX);
        self.tokens = self.tokens.saturating_add(add).min(self.capacity);
    }
}

/// A tunnel's bandwidth limit as the relays use it: a bucket for each direction,
/// shared by every core (see the module docs).
#[derive(Debug)]
pub struct Bandwidth {
    /// Bytes from users to the source.
    pub(crate) up: Mutex<TokenBucket>,
    /// Bytes from the source to users.
    pub(crate) down: Mutex<TokenBucket>,
}

impl Bandwidth {
    /// Buckets for `limit` in each direction; `None` when there is no limit.
    pub fn new(limit: Option<Limit>) -> Option<Self> {
        let limit = limit?;
        let now = Instant::now();
        Some(Self {
            up: Mutex::new(TokenBucket::new(Some(limit), now)),
            down: Mutex::new(TokenBucket::new(Some(limit), now)),
        })
    }
}

/// A cap on how many UDP flows a tunnel starts per second, shared by its cores.
///
/// Each new sender address costs a channel to the router (a TLS handshake), and
/// UDP sender addresses cost an attacker nothing to forge: without a cap, a flood
/// of datagrams from made-up addresses turns into a flood of handshakes. A full
/// second's worth may start at once after a quiet spell.
#[derive(Debug)]
pub struct FlowRate {
    per_sec: u64,
    bucket: Mutex<TokenBucket>,
}

impl FlowRate {
    /// At most `per_sec` new flows a second; `None` when 0 (no cap).
    pub fn new(per_sec: u64) -> Option<Self> {
        let limit = Limit::from_config(per_sec, per_sec)?;
        Some(Self {
            per_sec,
            bucket: Mutex::new(TokenBucket::new(Some(limit), Instant::now())),
        })
    }

    /// The cap, in flows per second.
    pub fn per_sec(&self) -> u64 {
        self.per_sec
    }

    /// Whether one more flow may start at `now` (and if so, it is counted).
    pub fn admit(&self, now: Instant) -> bool {
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        matches!(b.grant(now, 1), Grant::Now(1))
    }
}

/// A router's per-client limits: each client key gets its own [`Bandwidth`], shared
/// by all its streams on every core, created when its first stream opens and freed
/// with its last.
#[derive(Debug)]
pub struct PerClient {
    limit: Limit,
    buckets: Mutex<std::collections::HashMap<conduit_proto::PublicKey, std::sync::Weak<Bandwidth>>>,
}

impl PerClient {
    /// `limit` for each client; `None` when there is no limit.
    pub fn new(limit: Option<Limit>) -> Option<Self> {
        Some(Self {
            limit: limit?,
            buckets: Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// The buckets of `key`, shared with its other open streams. Called once per
    /// stream, off the data path.
    pub fn of(&self, key: &conduit_proto::PublicKey) -> std::sync::Arc<Bandwidth> {
        let mut m = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = m.get(key).and_then(std::sync::Weak::upgrade) {
            return b;
        }
        // Clients with no open stream left hold nothing: drop their entries.
        m.retain(|_, w| w.strong_count() > 0);
        let now = Instant::now();
        let b = std::sync::Arc::new(Bandwidth {
            up: Mutex::new(TokenBucket::new(Some(self.limit), now)),
            down: Mutex::new(TokenBucket::new(Some(self.limit), now)),
        });
        m.insert(*key, std::sync::Arc::downgrade(&b));
        b
    }

    /// Clients with an open stream (for tests).
    #[cfg(test)]
    fn live(&self) -> usize {
        let m = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        m.values().filter(|w| w.strong_count() > 0).count()
    }
}

/// Waits until `bucket` grants some of `want` bytes and takes them: how many may be
/// read or sent now (at least `min(want, burst)`, see [`TokenBucket::grant`]; `0` only
/// when `want` is). What goes unused goes back with [`TokenBucket::refund`]. Nothing
/// leaves ahead of the bucket this way, so a stream never puts its tunnel into debt
/// and waits out the debt datagrams left before its next bytes.
pub(crate) async fn take(bucket: &Mutex<TokenBucket>, want: usize) -> usize {
    let mut waiting = InLine { bucket, turn: None };
    loop {
        let grant = bucket
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .grant_in_turn(Instant::now(), want, &mut waiting.turn);
        match grant {
            Grant::Now(n) => return n,
            Grant::Wait(d) => monoio::time::sleep(d).await,
        }
    }
}

/// A sender's place in its bucket's line while [`take`] waits: given up if the
/// wait is dropped (its stream closed), so the line never waits for a sender gone.
struct InLine<'a> {
    bucket: &'a Mutex<TokenBucket>,
    turn: Option<u64>,
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.turn {
            self.bucket
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .leave(t);
        }
    }
}

/// Gives back `n` bytes granted by [`take`] but not sent.
pub(crate) fn give_back(bucket: &Mutex<TokenBucket>, n: usize) {
    if n > 0 {
        bucket.lock().unwrap_or_else(|p| p.into_inner()).refund(n);
    }
}

/// The longest a datagram waits for its turn under a bandwidth limit; one that would
/// wait longer is dropped (see the module docs). A quarter of a second: longer than
/// a burst of a steady sender at the rate needs, short enough that what does arrive
/// is still worth having (a voice packet, a game's state, a DNS answer before its
/// retry), and it caps what all the tunnel's waiting datagrams hold at a quarter of
/// a second's worth of the rate (and one datagram too big to pass otherwise: see
/// [`TokenBucket::charge_within`]).
pub const DATAGRAM_MOST_WAIT: Duration = Duration::from_millis(250);

/// Pays for a datagram of `n` bytes about to be sent whole (it cannot be cut to a
/// grant): how long it must wait before it goes, so that it leaves no earlier than
/// the rate allows (every other sender of the tunnel waits out the debt too); `None`
/// when that would be longer than [`DATAGRAM_MOST_WAIT`]: it is to be dropped,
/// and nothing is charged.
pub(crate) fn charge_datagram(bucket: &Mutex<TokenBucket>, n: usize) -> Option<Duration> {
    bucket
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .charge_within(Instant::now(), n, DATAGRAM_MOST_WAIT)
}

/// How long `rate` bytes a second take to refill `deficit` tokens (positive), rounded
/// up to the nanosecond.
fn refill_time(deficit: i128, rate: u64) -> Duration {
    let deficit = u128::try_from(deficit).unwrap_or(0);
    nanos(deficit.div_ceil(u128::from(rate)))
}

/// A duration of `ns` nanoseconds, saturating at `Duration::MAX`'s whole seconds.
fn nanos(ns: u128) -> Duration {
    let secs = u64::try_from(ns / 1_000_000_000).unwrap_or(u64::MAX);
    // The remainder is below 10^9, so it fits.
    let sub = (ns % 1_000_000_000) as u32;
    Duration::new(secs, sub)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn bucket(rate: u64, burst: u64) -> (TokenBucket, Instant) {
        let t0 = Instant::now();
        (TokenBucket::new(Some(Limit { rate, burst }), t0), t0)
    }

    #[test]
    fn zero_rate_means_unlimited() {
        assert_eq!(Limit::from_config(0, 5000), None);
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Limit::from_config(0, 0), t0);
        for _ in 0..3 {
            assert_eq!(b.grant(t0, 1 << 40), Grant::Now(1 << 40));
        }
        assert_eq!(b.grant(t0, usize::MAX), Grant::Now(usize::MAX));
        b.refund(100);
        assert_eq!(b.limit(), None);
    }

    #[test]
    fn zero_burst_means_one_second_at_the_rate() {
        assert_eq!(
            Limit::from_config(1000, 0),
            Some(Limit {
                rate: 1000,
                burst: 1000
            })
        );
        assert_eq!(
            Limit::from_config(1000, 4000),
            Some(Limit {
                rate: 1000,
                burst: 4000
            })
        );
    }

    #[test]
    fn a_full_bucket_gives_the_burst_then_refills_at_the_rate() {
        let (mut b, t0) = bucket(1000, 5000);
        assert_eq!(b.grant(t0, 8000), Grant::Now(5000));
        // Empty: 5000 (the burst, less than the 8000 wanted) takes 5 s at 1000/s.
        assert_eq!(b.grant(t0, 8000), Grant::Wait(Duration::from_secs(5)));
        assert_eq!(b.grant(t0 + 2000 * MS, 8000), Grant::Wait(3000 * MS));
        assert_eq!(b.grant(t0 + 5000 * MS, 8000), Grant::Now(5000));
        // A small request after a short pause gets exactly what accumulated.
        assert_eq!(b.grant(t0 + 5250 * MS, 250), Grant::Now(250));
        assert_eq!(b.grant(t0 + 5250 * MS, 1), Grant::Wait(MS));
    }

    #[test]
    fn never_grants_less_than_the_smaller_of_want_and_burst() {
        let (mut b, t0) = bucket(1000, 1000);
        assert_eq!(b.grant(t0, 300), Grant::Now(300));
        // 700 left but 1000 wanted: wait for the missing 300 rather than send 700.
        assert_eq!(b.grant(t0, 1000), Grant::Wait(300 * MS));
        assert_eq!(b.grant(t0 + 300 * MS, 1000), Grant::Now(1000));
        // More than the burst wanted: the burst is the most that can ever come at once.
        assert_eq!(b.grant(t0 + 5300 * MS, 1_000_000), Grant::Now(1000));
    }

    #[test]
    fn waits_round_up_to_the_nanosecond_and_are_exact() {
        let (mut b, t0) = bucket(3, 3);
        assert_eq!(b.grant(t0, 3), Grant::Now(3));
        // One byte at 3 bytes/s: 333 333 333.3 ns, rounded up.
        assert_eq!(
            b.grant(t0, 1),
            Grant::Wait(Duration::from_nanos(333_333_334))
        );
        let early = t0 + Duration::from_nanos(333_333_333);
        assert_eq!(b.grant(early, 1), Grant::Wait(Duration::from_nanos(1)));
        assert_eq!(b.grant(early + Duration::from_nanos(1), 1), Grant::Now(1));
        // The third of a nanosecond-byte left over is kept, not lost: after exactly
        // two more thirds of a second, two bytes are there.
        let later = early + Duration::from_nanos(1) + Duration::from_nanos(666_666_666);
        assert_eq!(b.grant(later, 2), Grant::Now(2));
    }

    #[test]
    fn a_greedy_sender_gets_the_rate_over_the_long_run() {
        // 1 MB/s, 16 KiB bursts, a relay that always wants 16 KiB and sleeps exactly
        // as told, for 10 virtual seconds.
        let (mut b, t0) = bucket(1_000_000, 16_384);
        let end = t0 + Duration::from_secs(10);
        let (mut now, mut sent, mut sends) = (t0, 0u64, 0u32);
        while now <= end {
            match b.grant(now, 16_384) {
                Grant::Now(n) => {
                    sent += n as u64;
                    sends += 1;
                }
                Grant::Wait(d) => now += d,
            }
        }
        // The first send at t0, then one every 16.384 ms: 610 more fit in 10 s
        // (610 × 16.384 ms = 9.994 s; 611 would end at 10.011 s).
        assert_eq!(sends, 611);
        assert_eq!(sent, 611 * 16_384);
        assert!(sent <= 16_384 + 10 * 1_000_000);
        assert!(sent >= 10 * 1_000_000);
    }

    #[test]
    fn a_burst_shorter_than_a_timer_tick_still_gets_the_rate() {
        // 50 MB/s with a 16 KiB burst (0.33 ms at the rate), and a relay whose timer
        // wakes it 1 ms after the time it asked for, as a busy machine's does.
        let (mut b, t0) = bucket(50_000_000, 16_384);
        let end = t0 + Duration::from_secs(1);
        let (mut now, mut sent, mut sends) = (t0, 0u64, 0u32);
        while now < end {
            match b.grant(now, 65_536) {
                Grant::Now(n) => {
                    sent += n as u64;
                    sends += 1;
                }
                Grant::Wait(d) => now += d + MS,
            }
        }
        // The bucket holds 10 ms at the rate (500 000 bytes), which a 1 ms late
        // wake-up does not overflow: every byte of the rate goes, in grants of up to
        // 64 KiB (the 16 KiB burst alone gave a third of the rate here).
        assert!(sent >= 50_000_000, "{sent} bytes in {sends} sends");
        assert!(sent <= 50_000_000 + 500_000 + 65_536, "{sent}");

        // A tiny burst waits for 5 ms at the rate, with 5 ms more room to wake late
        // in: 1 MB/s, a burst of 1 byte, 2 ms late each time.
        let (mut b, t0) = bucket(1_000_000, 1);
        let end = t0 + Duration::from_secs(1);
        let (mut now, mut sent, mut sends) = (t0, 0u64, 0u32);
        while now < end {
            match b.grant(now, 65_536) {
                Grant::Now(n) => {
                    assert!(n >= 5000, "{n}");
                    sent += n as u64;
                    sends += 1;
                }
                Grant::Wait(d) => now += d + 2 * MS,
            }
        }
        assert!(sent >= 1_000_000, "{sent} bytes in {sends} sends");
        assert!(sent <= 1_000_000 + 10_000 + 65_536, "{sent}");

        // The floor never lowers a larger burst, and is small at a slow rate (5 bytes
        // at 1000 bytes/s).
        let (slow, _) = bucket(1000, 3);
        assert_eq!((slow.least, slow.capacity), (5 * SCALE, 10 * SCALE));
        let (big, _) = bucket(50_000_000, 1_000_000);
        assert_eq!(
            (big.least, big.capacity),
            (1_000_000 * SCALE, 1_000_000 * SCALE)
        );
    }

    #[test]
    fn a_sender_that_asks_before_each_send_sends_the_burst_then_the_rate() {
        // The relays' way: ask for a whole read (64 KiB) and send only what is
        // granted. After idle, 50 000 bytes at 10 000 bytes/s with a 10 000-byte
        // burst: 10 000 at once, then 10 000 a second, so 40 000 wait 4 s.
        let (mut b, t0) = bucket(10_000, 10_000);
        let (mut now, mut left, mut sends) = (t0, 50_000usize, Vec::new());
        while left > 0 {
            match b.grant(now, left.min(65_536)) {
                Grant::Now(n) => {
                    sends.push((now - t0, n));
                    left -= n;
                }
                Grant::Wait(d) => now += d,
            }
        }
        let expected: Vec<_> = (0..5).map(|s| (Duration::from_secs(s), 10_000)).collect();
        assert_eq!(sends, expected);
    }

    /// Any wait is short enough.
    const FOREVER: Duration = Duration::MAX;

    #[test]
    fn a_datagrams_debt_holds_back_the_next_grant() {
        let (mut b, t0) = bucket(1000, 1000);
        // A 3000-byte batch of datagrams, paid for before it goes: 2000 owed, 2 s.
        assert_eq!(
            b.charge_within(t0, 3000, FOREVER),
            Some(Duration::from_secs(2))
        );
        // A stream asking meanwhile waits out the debt, then for its grant.
        assert_eq!(b.grant(t0, 5000), Grant::Wait(Duration::from_secs(3)));
        let t3 = t0 + Duration::from_secs(3);
        assert_eq!(b.grant(t3, 5000), Grant::Now(1000));
        // A grant read short gives back what was not sent, up to the burst.
        b.refund(600);
        assert_eq!(b.grant(t3, 600), Grant::Now(600));
    }

    #[test]
    fn bytes_sent_ahead_are_owed_by_whoever_sends_next() {
        let (mut b, t0) = bucket(1000, 1000);
        // A 5000-byte chunk went out at once: 4000 owed, 4 s at 1000 bytes/s.
        assert_eq!(
            b.charge_within(t0, 5000, FOREVER),
            Some(Duration::from_secs(4))
        );
        // Its sender went away without waiting; the next bytes wait for the debt too.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(
            b.charge_within(t1, 1000, FOREVER),
            Some(Duration::from_secs(4))
        );
        assert_eq!(b.grant(t1, 100), Grant::Wait(Duration::from_millis(4100)));
        // Paid off: what is sent within the bucket owes nothing.
        let t2 = t1 + Duration::from_secs(5);
        assert_eq!(b.charge_within(t2, 1000, FOREVER), Some(Duration::ZERO));
        assert_eq!(
            b.charge_within(t2, 1, FOREVER),
            Some(Duration::from_millis(1))
        );
        // Unlimited: nothing is ever owed.
        let unlimited = &mut TokenBucket::new(None, t0);
        assert_eq!(
            unlimited.charge_within(t0, usize::MAX, Duration::ZERO),
            Some(Duration::ZERO)
        );
    }

    /// A datagram that would wait longer than it may is dropped, charging nothing;
    /// one that fits the wait still goes, and a full bucket takes even a datagram
    /// bigger than it could ever wait for.
    #[test]
    fn a_datagram_that_would_wait_too_long_is_refused() {
        let (mut b, t0) = bucket(1000, 1000);
        let most = Duration::from_millis(250);
        assert_eq!(b.charge_within(t0, 1000, most), Some(Duration::ZERO));
        // Empty: 200 bytes wait 0.2 s, within the bound; the next 100 would wait
        // 0.3 s, so they are refused and owe nothing.
        assert_eq!(
            b.charge_within(t0, 200, most),
            Some(Duration::from_millis(200))
        );
        assert_eq!(b.charge_within(t0, 100, most), None);
        assert_eq!(
            b.charge_within(t0, 50, most),
            Some(Duration::from_millis(250)),
            "the refused bytes took nothing"
        );
        // Paid off and full again: 5000 bytes, far past what any wait within the
        // bound could pay, still go.
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(
            b.charge_within(t1, 5000, most),
            Some(Duration::from_secs(4))
        );
        // ... and everyone after waits out their debt, or is refused meanwhile.
        assert_eq!(b.charge_within(t1 + Duration::from_secs(3), 1, most), None);
        let t2 = t1 + Duration::from_millis(3800);
        assert_eq!(
            b.charge_within(t2, 50, most),
            Some(Duration::from_millis(250))
        );
        // Owing within the bound (others keep it from ever filling): an oversized
        // datagram still goes, and the next one waits until its debt is paid.
        assert_eq!(
            b.charge_within(t2, 5000, most),
            Some(Duration::from_millis(5250))
        );
        assert_eq!(b.charge_within(t2, 5000, most), None);
        let t3 = t2 + Duration::from_secs(5);
        assert_eq!(
            b.charge_within(t3, 5000, most),
            Some(Duration::from_millis(5250))
        );
    }

    #[test]
    fn refunds_go_back_up_to_the_burst() {
        let (mut b, t0) = bucket(1000, 1000);
        assert_eq!(b.grant(t0, 1000), Grant::Now(1000));
        b.refund(400);
        assert_eq!(b.grant(t0, 400), Grant::Now(400));
        b.refund(5000);
        assert_eq!(b.grant(t0, 5000), Grant::Now(1000));
    }

    #[test]
    fn idle_time_fills_the_bucket_only_up_to_the_burst() {
        let (mut b, t0) = bucket(1000, 2000);
        assert_eq!(b.grant(t0, 2000), Grant::Now(2000));
        let hour = t0 + Duration::from_secs(3600);
        assert_eq!(b.grant(hour, 10_000), Grant::Now(2000));
        assert_eq!(b.grant(hour, 10_000), Grant::Wait(Duration::from_secs(2)));
    }

    #[test]
    fn a_clock_going_backwards_adds_nothing() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(10);
        let mut b = TokenBucket::new(
            Some(Limit {
                rate: 100,
                burst: 100,
            }),
            later,
        );
        assert_eq!(b.grant(later, 100), Grant::Now(100));
        assert_eq!(b.grant(t0, 100), Grant::Wait(Duration::from_secs(1)));
        assert_eq!(b.grant(later, 100), Grant::Wait(Duration::from_secs(1)));
    }

    #[test]
    fn huge_values_do_not_overflow() {
        let (mut b, t0) = bucket(u64::MAX, u64::MAX);
        assert_eq!(b.grant(t0, usize::MAX), Grant::Now(usize::MAX));
        let far = t0 + Duration::from_secs(100 * 365 * 24 * 3600);
        assert_eq!(b.grant(far, usize::MAX), Grant::Now(usize::MAX));
        b.refund(usize::MAX);
        b.refund(usize::MAX);

        // The slowest rate with the largest burst: the longest wait there can be.
        let (mut b, t0) = bucket(1, u64::MAX);
        assert_eq!(b.grant(t0, usize::MAX), Grant::Now(usize::MAX));
        assert_eq!(
            b.grant(t0, usize::MAX),
            Grant::Wait(Duration::from_secs(usize::MAX as u64))
        );
        assert_eq!(b.grant(far, 1), Grant::Now(1));
    }

    #[test]
    fn shares_add_up_to_the_whole() {
        let l = Limit {
            rate: 10,
            burst: 25,
        };
        let shares: Vec<_> = (0..3).map(|c| l.share(c, 3)).collect();
        assert_eq!(
            shares,
            [
                Limit { rate: 4, burst: 9 },
                Limit { rate: 3, burst: 8 },
                Limit { rate: 3, burst: 8 },
            ]
        );
        let big = Limit {
            rate: 1_250_000_000,
            burst: 2_500_000_000,
        };
        let total: u64 = (0..8).map(|c| big.share(c, 8).rate).sum();
        assert_eq!(total, 1_250_000_000);
        assert_eq!(big.share(0, 1), big);
        // Zero cores is treated as one.
        assert_eq!(big.share(0, 0), big);
    }

    #[test]
    fn a_share_is_never_zero() {
        let l = Limit { rate: 2, burst: 2 };
        let shares: Vec<_> = (0..4).map(|c| l.share(c, 4)).collect();
        assert_eq!(shares, [Limit { rate: 1, burst: 1 }; 4]);
    }

    #[test]
    fn asking_for_nothing_gets_nothing_at_once() {
        let (mut b, t0) = bucket(1, 1);
        assert_eq!(b.grant(t0, 1), Grant::Now(1));
        assert_eq!(b.grant(t0, 0), Grant::Now(0));
    }

    #[test]
    fn each_client_gets_its_own_buckets_shared_by_its_streams() {
        use conduit_proto::KeyPair;
        assert!(PerClient::new(None).is_none());
        let per = PerClient::new(Limit::from_config(1000, 0)).unwrap();
        let (a, b) = (
            KeyPair::generate().unwrap().public(),
            KeyPair::generate().unwrap().public(),
        );
        let a1 = per.of(&a);
        let a2 = per.of(&a);
        let b1 = per.of(&b);
        assert!(std::sync::Arc::ptr_eq(&a1, &a2));
        assert!(!std::sync::Arc::ptr_eq(&a1, &b1));
        assert_eq!(per.live(), 2);
        // What one stream of a client spends, its other streams cannot.
        let t = Instant::now();
        assert_eq!(a1.up.lock().unwrap().grant(t, 1000), Grant::Now(1000));
        assert!(matches!(a2.up.lock().unwrap().grant(t, 1), Grant::Wait(_)));
        assert_eq!(b1.up.lock().unwrap().grant(t, 1000), Grant::Now(1000));
        drop((a1, a2));
        assert_eq!(per.live(), 1);
        // A client back after its streams all ended starts with a full bucket.
        let a3 = per.of(&a);
        assert_eq!(
            a3.up.lock().unwrap().grant(Instant::now(), 1000),
            Grant::Now(1000)
        );
    }

    #[test]
    fn new_flows_are_capped_per_second_with_a_second_of_burst() {
        assert!(FlowRate::new(0).is_none(), "0 is no cap");
        let cap = FlowRate::new(3).unwrap();
        let t0 = Instant::now() + Duration::from_secs(1);
        let admitted = |t| (0..5).filter(|_| cap.admit(t)).count();
        assert_eq!(admitted(t0), 3, "a full second's worth at once");
        assert_eq!(admitted(t0 + Duration::from_millis(333)), 0);
        assert_eq!(admitted(t0 + Duration::from_millis(334)), 1);
        assert_eq!(
            admitted(t0 + Duration::from_secs(10)),
            3,
            "never more than the burst"
        );
    }

    /// Senders that keep asking get the bucket in turn: one granted while others
    /// wait gets in line behind them, even if it asks first once the bucket refills.
    #[test]
    fn waiting_senders_are_granted_in_turn() {
        let (mut b, t0) = bucket(1000, 100);
        let (mut a, mut c) = (None, None);
        assert_eq!(b.grant_in_turn(t0, 100, &mut a), Grant::Now(100));
        // Empty: c gets in line, to wait for half the burst (see `grant_in_turn`).
        assert_eq!(
            b.grant_in_turn(t0, 100, &mut c),
            Grant::Wait(Duration::from_millis(50))
        );
        assert!(c.is_some());
        // a asks again: behind c, and told to wait for c's part and its own.
        assert_eq!(
            b.grant_in_turn(t0, 100, &mut a),
            Grant::Wait(Duration::from_millis(100))
        );
        let t1 = t0 + 50 * MS;
        // Refilled, a asks first, and still waits its turn.
        assert!(matches!(b.grant_in_turn(t1, 100, &mut a), Grant::Wait(_)));
        assert_eq!(b.grant_in_turn(t1, 100, &mut c), Grant::Now(50));
        assert_eq!(c, None, "out of line once granted");
        // Now a is first; c, asking at once again, is behind it.
        assert!(matches!(b.grant_in_turn(t1, 100, &mut c), Grant::Wait(_)));
        let t2 = t1 + 50 * MS;
        assert!(matches!(b.grant_in_turn(t2, 100, &mut c), Grant::Wait(_)));
        assert_eq!(b.grant_in_turn(t2, 100, &mut a), Grant::Now(50));
        assert_eq!(b.grant_in_turn(t2 + 50 * MS, 100, &mut c), Grant::Now(50));
        // Late, the first in line takes what came meanwhile, up to what it wants.
        assert_eq!(b.grant_in_turn(t2 + 200 * MS, 100, &mut a), Grant::Now(100));
    }

    /// A sender that stops waiting leaves the line: the next is served as if it
    /// had never been there.
    #[test]
    fn a_sender_that_leaves_the_line_holds_no_one_up() {
        let (mut b, t0) = bucket(1000, 100);
        let (mut a, mut gone, mut c) = (None, None, None);
        assert_eq!(b.grant_in_turn(t0, 100, &mut a), Grant::Now(100));
        assert!(matches!(
            b.grant_in_turn(t0, 100, &mut gone),
            Grant::Wait(_)
        ));
        assert!(matches!(b.grant_in_turn(t0, 100, &mut c), Grant::Wait(_)));
        b.leave(gone.unwrap());
        assert_eq!(b.grant_in_turn(t0 + 50 * MS, 100, &mut c), Grant::Now(50));
        // Unlimited buckets keep no line.
        let mut free = TokenBucket::new(None, t0);
        let mut t = None;
        assert_eq!(free.grant_in_turn(t0, 1 << 30, &mut t), Grant::Now(1 << 30));
        assert_eq!(t, None);
    }
}
