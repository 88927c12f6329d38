//! What crosses the seam between the control plane and the workers.
//!
//! Control → data: [`ToWorker`] on one lock-free queue per core (flume; its async
//! receive wakes the monoio runtime through monoio's `sync` feature). The main value
//! is a [`ChannelHandoff`]: a TCP connection whose TLS handshake and `Hello`/`Welcome`
//! exchange the control plane finished, with everything already read.
//! Data → control: [`FromWorker`] on one shared queue, and the per-core counters.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use conduit_proto::{PublicKey, TlsSession};

use crate::stats::ConnSnapshot;
use crate::usage::Usage;

/// An established channel, ready for a worker.
#[derive(Debug)]
pub struct ChannelHandoff {
    /// The TCP connection (client → router).
    pub stream: std::net::TcpStream,
    /// Its TLS session, with any received bytes not yet processed; `None` on the plain
    /// transport. Boxed: hand-offs queue up in bursts of new connections, and a
    /// queue's buffer keeps the size its longest burst gave it.
    pub tls: Option<Box<TlsSession>>,
    /// Plaintext the control plane decrypted but did not consume.
    pub leftover: Vec<u8>,
    /// The authenticated key of the other end (`None` on the plain transport, which
    /// authenticates nobody).
    pub peer_key: Option<PublicKey>,
    /// The other end's address.
    pub peer_addr: SocketAddr,
    /// The tunnel it serves (its name, from `Hello`).
    pub tunnel: String,
    /// The router and link generation it was made in (client side; see
    /// [`LinkState`]).
    pub epoch: LinkEpoch,
    /// Counts the channel among its router's while it lives (client side).
    pub slot: Option<ChannelSlot>,
    /// The protocol version the two ends agreed on in `Hello`/`Welcome`.
    pub version: u16,
    /// When the handshake finished.
    pub made: Instant,
}

/// A message to one worker.
#[derive(Debug)]
pub enum ToWorker {
    /// A fresh channel for this core's pool (client side).
    ClientChannel(ChannelHandoff),
    /// A channel to serve (router side).
    RouterChannel(ChannelHandoff),
    /// Drop the idle pooled channels of router links that are gone or were made
    /// again (a router link changed).
    Flush,
    /// Drop every idle pooled channel and make the pool again: a tunnel that
    /// balances over its routers has one more of them to spread channels over.
    Renew,
    /// A channel asked for could not be made (the process is out of file
    /// descriptors) and will not come: let the users waiting for one go at once, with
    /// this reason, instead of holding their sockets while they wait in vain, and ask
    /// again after a pause.
    NoChannels(String),
    /// Reply with this core's open connections.
    Snapshot(futures::channel::oneshot::Sender<Vec<ConnSnapshot>>),
    /// Reply with this core's per-client and per-source tallies (router side).
    Usage(futures::channel::oneshot::Sender<Usage>),
    /// Stop one connection now (the operator asked).
    Kill(u64),
    /// The router link of this generation was lost without its channels noticing
    /// (no heartbeat answer): stop the user connections riding on it (client side).
    /// With `stalled_only` (the router closed the link: its channels end by
    /// themselves, but a relay waiting on a user that does not read never looks),
    /// only those that move no byte for [`STALLED_GRACE`](crate::STALLED_GRACE).
    LinkLost {
        /// The router and generation lost.
        epoch: LinkEpoch,
        /// Why, for the users' log lines.
        reason: String,
        /// Only those that move nothing for a while.
        stalled_only: bool,
    },
    /// A client's tunnel stopped answering heartbeats, or its key was revoked: stop
    /// the streams of its channels (router side). With `stalled_only`, as for
    /// `LinkLost`: the client closed its control channel without a goodbye.
    ClientLost {
        /// The client's key (`None` on the plain transport).
        key: Option<PublicKey>,
        /// Its tunnel's name; `None`: every tunnel of that key.
        tunnel: Option<String>,
        /// Why, for the log lines.
        reason: String,
        /// Only those that move nothing for a while.
        stalled_only: bool,
    },
    /// Stop accepting; close open connections at `deadline` (or now), then exit.
    Stop {
        /// When to cut the connections still open.
        deadline: Instant,
    },
}

/// A message from a worker to the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromWorker {
    /// Core `core` wants `count` more handshaken channels (client side).
    WantChannels {
        /// The asking core.
        core: usize,
        /// How many.
        count: usize,
    },
}

/// A client's links to its routers (one per router it names), written by the
/// control plane and read by the workers, so a user connection fails fast while
/// every router is away and never rides a channel of a link that is gone.
#[derive(Debug)]
pub struct LinkState {
    routers: Box<[RouterLink]>,
    /// Why the router refused to open the source for the latest stream it refused
    /// (its allow-list, an unreachable source), until a stream ends well again;
    /// `refusing` says whether there is one without taking the lock.
    refused: std::sync::Mutex<Option<(String, Instant)>>,
    refusing: AtomicBool,
    /// What the routers' `refused_stream_at` count from.
    born: Instant,
    /// Set while a tunnel that lost its router moves to another at once (see
    /// [`LinkState::set_moving`]).
    moving: AtomicBool,
}

/// The link to one router.
#[derive(Debug, Default)]
struct RouterLink {
    up: AtomicBool,
    generation: AtomicU64,
    /// Its data channels: being made, idle or carrying a stream.
    channels: AtomicUsize,
    /// The same, by the core they are (being) made for (see
    /// [`LinkState::for_cores`]).
    by_core: Box<[AtomicUsize]>,
    /// The user connections and flows riding its channels.
    streams: AtomicUsize,
    /// Why it refused this tunnel at the latest attempt (a key it does not know, a
    /// key this tunnel does not pin, a token), until a link to it is up again.
    refusal: std::sync::Mutex<Option<String>>,
    /// When it last refused to open a stream's source (its connection limit, a
    /// source it cannot reach), in milliseconds from [`LinkState::born`] plus one;
    /// 0: never.
    refused_stream_at: AtomicU64,
}

/// One data channel counted among its router's (see [`LinkState::reserve`]) until
/// it is dropped: made, failed, or closed.
#[derive(Debug)]
pub struct ChannelSlot {
    links: Arc<LinkState>,
    router: usize,
    /// The core it is counted for, if any.
    core: Option<usize>,
}

impl ChannelSlot {
    /// The router the channel is (to be) made to.
    pub fn router(&self) -> usize {
        self.router
    }
}

impl Drop for ChannelSlot {
    fn drop(&mut self) {
        let link = self.links.link(self.router);
        link.channels.fetch_sub(1, Ordering::AcqRel);
        if let Some(core) = self.core {
            link.by_core[core].fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// One user connection or flow counted among its router's streams while it rides
/// one of its channels (see [`LinkState::ride`]).
#[derive(Debug)]
pub struct Riding<'a> {
    link: &'a RouterLink,
}

impl Drop for Riding<'_> {
    fn drop(&mut self) {
        self.link.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Which link a channel was made in: the router (its index in the tunnel's list)
/// and the generation of the link to it; channels of other generations are stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkEpoch {
    /// The router's index.
    pub router: usize,
    /// Its link's generation, counted from 1.
    pub generation: u64,
}

/// How long a refused stream marks the tunnel's source as refused when no stream is
/// served after it, as a load balancer's passive health check holds a failed
/// server out for a while: a tunnel whose users stay away (a Kubernetes pod taken
/// out of its Service by the very readiness probe that saw the refusal) would
/// otherwise never be seen healthy again. Once it has passed, the next stream tries
/// the source again, and a refusal marks it again.
pub const REFUSAL_HOLD: Duration = Duration::from_secs(30);

/// How long a tunnel that balances over its routers passes over one that refused to
/// open a stream (its connection limit reached, a source it cannot reach) while
/// another has room: long enough that a full router is not handed every other
/// user, short enough that one with room again is soon used again.
pub const STREAM_REFUSAL_SHUN: Duration = Duration::from_secs(2);

impl LinkState {
    /// The links of a tunnel with `routers` routers, all down.
    pub fn new(routers: usize) -> Self {
        Self::for_cores(routers, 1)
    }

    /// The links of a tunnel with `routers` routers whose channels `cores` workers
    /// share, all down.
    pub fn for_cores(routers: usize, cores: usize) -> Self {
        let link = || RouterLink {
            by_core: (0..cores.max(1)).map(|_| AtomicUsize::new(0)).collect(),
            ..RouterLink::default()
        };
        Self {
            routers: (0..routers.max(1)).map(|_| link()).collect(),
            refused: std::sync::Mutex::new(None),
            refusing: AtomicBool::new(false),
            born: Instant::now(),
            moving: AtomicBool::new(false),
        }
    }

    /// `router` (when known) refused to open the source for a stream, saying `why`.
    pub fn open_refused(&self, router: Option<usize>, why: &str) {
        let now = Instant::now();
        if let Some(router) = router {
            let at = u64::try_from(now.duration_since(self.born).as_millis()).unwrap_or(u64::MAX);
            (self.link(router).refused_stream_at).store(at.saturating_add(1), Ordering::Release);
        }
        let mut r = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        *r = Some((why.to_owned(), now));
        self.refusing.store(true, Ordering::Release);
    }

    /// Whether `router` refused to open a stream within the last
    /// [`STREAM_REFUSAL_SHUN`] (as of `now`).
    pub fn shunned(&self, router: usize, now: Instant) -> bool {
        match self.link(router).refused_stream_at.load(Ordering::Acquire) {
            0 => false,
            at => {
                let since = now.saturating_duration_since(self.born).as_millis();
                since.saturating_sub(u128::from(at - 1)) < STREAM_REFUSAL_SHUN.as_millis()
            }
        }
    }

    /// A stream that opened at `opened` ended well: if it opened after the latest
    /// refusal, the router opens streams again. (One that opened before says nothing
    /// about what the router does now.)
    pub fn stream_served(&self, opened: Instant) {
        if self.refusing.load(Ordering::Acquire) {
            let mut r = self.refused.lock().unwrap_or_else(|p| p.into_inner());
            if r.as_ref().is_some_and(|(_, at)| *at <= opened) {
                *r = None;
                self.refusing.store(false, Ordering::Release);
            }
        }
    }

    /// Why the router refused the latest stream it refused, unless one opened since
    /// was served or [`REFUSAL_HOLD`] has passed since.
    pub fn refused(&self) -> Option<String> {
        self.refused_at(Instant::now())
    }

    /// [`Self::refused`] as of `now`.
    pub fn refused_at(&self, now: Instant) -> Option<String> {
        self.refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|(_, at)| now.saturating_duration_since(*at) < REFUSAL_HOLD)
            .map(|(why, _)| why.clone())
    }

    fn link(&self, router: usize) -> &RouterLink {
        &self.routers[router % self.routers.len()]
    }

    /// `router` refused this tunnel, saying `why`; whether that is news (it had not
    /// refused, or said something else).
    pub fn router_refused(&self, router: usize, why: String) -> bool {
        let mut refusal = (self.link(router).refusal.lock()).unwrap_or_else(|p| p.into_inner());
        let new = refusal.as_deref() != Some(why.as_str());
        *refusal = Some(why);
        new
    }

    /// `router` accepted this tunnel (a check, not a link in use): a refusal of
    /// its is forgotten.
    pub fn router_accepted(&self, router: usize) {
        *self
            .link(router)
            .refusal
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Why `router` refused this tunnel, unless a link to it was up since (or a
    /// check found it accepting the tunnel again).
    pub fn router_refusal(&self, router: usize) -> Option<String> {
        (self.link(router).refusal.lock())
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Marks the link to `router` up and starts a new generation of it; returns it.
    pub fn connected(&self, router: usize) -> LinkEpoch {
        self.router_accepted(router);
        let link = self.link(router);
        let generation = link.generation.fetch_add(1, Ordering::AcqRel) + 1;
        link.up.store(true, Ordering::Release);
        LinkEpoch { router, generation }
    }

    /// Like [`Self::connected`], and marks every other link down: a tunnel that
    /// uses one router at a time moved to `router`.
    pub fn switched_to(&self, router: usize) -> LinkEpoch {
        let epoch = self.connected(router);
        for (i, other) in self.routers.iter().enumerate() {
            if i != router % self.routers.len() {
                other.up.store(false, Ordering::Release);
            }
        }
        self.set_moving(false);
        epoch
    }

    /// Whether the tunnel, its link lost, moves to another router at once: set
    /// (before the link is marked down) when a router that stopped answering hands
    /// over to the next, cleared when a link is up again or that attempt failed.
    /// Meanwhile users wait for a channel of the new link, each up to its own
    /// limit, rather than being turned away as while the tunnel backs off.
    pub fn set_moving(&self, moving: bool) {
        self.moving.store(moving, Ordering::Release);
    }

    /// Clears [`Self::set_moving`]; true if it was set.
    pub fn stop_moving(&self) -> bool {
        self.moving.swap(false, Ordering::AcqRel)
    }

    /// Why no channel can be had while every link is down, as users are told: the
    /// router's refusal (as the tunnel logged it) when every router refused this tunnel (a key it no longer
    /// admits: no reconnecting mends that), else that the tunnel is reconnecting.
    pub fn why_down(&self) -> String {
        let refusals: Vec<String> = (0..self.routers.len())
            .map_while(|i| self.router_refusal(i))
            .collect();
        match refusals.len() {
            n if n < self.routers.len() => {
                "the router is unreachable (the tunnel is reconnecting)".to_owned()
            }
            1 => refusals[0].clone(),
            _ => format!("every router refuses this tunnel: {}", refusals.join("; ")),
        }
    }

    /// Whether a user may wait for a channel: a link is up, or the tunnel moves to
    /// another router at once (see [`Self::set_moving`]).
    pub fn can_wait(&self) -> bool {
        self.is_up() || self.moving.load(Ordering::Acquire)
    }

    /// Marks the link to `router` down.
    pub fn lost(&self, router: usize) {
        self.link(router).up.store(false, Ordering::Release);
    }

    /// Marks every link down.
    pub fn lost_all(&self) {
        for link in &self.routers {
            link.up.store(false, Ordering::Release);
        }
    }

    /// Whether any router's control channel is up.
    pub fn is_up(&self) -> bool {
        self.routers.iter().any(|l| l.up.load(Ordering::Acquire))
    }

    /// Whether the link to `router` is up.
    pub fn is_up_at(&self, router: usize) -> bool {
        self.link(router).up.load(Ordering::Acquire)
    }

    /// The current link to `router` (its generation, up or not).
    pub fn current(&self, router: usize) -> LinkEpoch {
        LinkEpoch {
            router,
            generation: self.link(router).generation.load(Ordering::Acquire),
        }
    }

    /// How many routers the tunnel names.
    pub fn routers(&self) -> usize {
        self.routers.len()
    }

    /// Counts a data channel to `router` from now until the slot is dropped.
    pub fn reserve(self: &Arc<Self>, router: usize) -> ChannelSlot {
        let router = router % self.routers.len();
        self.link(router).channels.fetch_add(1, Ordering::AcqRel);
        ChannelSlot {
            links: self.clone(),
            router,
            core: None,
        }
    }

    /// A slot for core `core`'s next data channel, in a tunnel that balances over
    /// its routers: on the router, of those whose link is up, with the fewest
    /// channels (being made, idle or busy) on that core, then on all cores, so that
    /// one that joins late or holds its streams longer gets the next ones, and each
    /// core's pool holds channels of every router (a core's users find only the
    /// routers its pool holds); ties go to the first from `start` on. `None` while
    /// every link is down.
    pub fn reserve_least_loaded(
        self: &Arc<Self>,
        core: usize,
        start: usize,
    ) -> Option<ChannelSlot> {
        let n = self.routers.len();
        let now = Instant::now();
        let router = (0..n)
            .map(|k| (start + k) % n)
            .filter(|&i| self.is_up_at(i))
            .min_by_key(|&i| {
                let link = &self.routers[i];
                let on_core = link.by_core[core % link.by_core.len()].load(Ordering::Acquire);
                let channels = link.channels.load(Ordering::Acquire);
                (self.shunned(i, now), on_core, channels)
            })?;
        let mut slot = self.reserve(router);
        let link = self.link(router);
        let core = core % link.by_core.len();
        link.by_core[core].fetch_add(1, Ordering::AcqRel);
        slot.core = Some(core);
        Some(slot)
    }

    /// The data channels to `router` counted now (see [`Self::reserve`]).
    pub fn channels(&self, router: usize) -> usize {
        self.link(router).channels.load(Ordering::Acquire)
    }

    /// The streams riding `router`'s channels now (see [`Self::ride`]).
    pub fn streams(&self, router: usize) -> usize {
        self.link(router).streams.load(Ordering::Acquire)
    }

    /// Counts a stream riding a channel of `router` until the guard is dropped.
    pub fn ride(&self, router: usize) -> Riding<'_> {
        let link = self.link(router);
        link.streams.fetch_add(1, Ordering::AcqRel);
        Riding { link }
    }

    /// Whether a channel made in `epoch` may still carry streams: its link is up
    /// and has not been made again since.
    pub fn is_current(&self, epoch: LinkEpoch) -> bool {
        let link = self.link(epoch.router);
        link.up.load(Ordering::Acquire)
            && link.generation.load(Ordering::Acquire) == epoch.generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_router_that_refused_a_stream_gets_new_channels_only_when_no_other_is_up() {
        let links = Arc::new(LinkState::new(2));
        links.connected(0);
        links.connected(1);
        let _held = links.reserve(1);
        // Router 0 has fewer channels: it is next.
        assert_eq!(
            links.reserve_least_loaded(0, 0).map(|s| s.router()),
            Some(0)
        );
        links.open_refused(
            Some(0),
            "the router's limit of 2 open connections is reached",
        );
        let now = Instant::now();
        assert!(links.shunned(0, now) && !links.shunned(1, now));
        assert_eq!(
            links.reserve_least_loaded(0, 0).map(|s| s.router()),
            Some(1)
        );
        // Alone, it is still used.
        links.lost(1);
        assert_eq!(
            links.reserve_least_loaded(0, 0).map(|s| s.router()),
            Some(0)
        );
        // Not for long.
        assert!(!links.shunned(0, now + STREAM_REFUSAL_SHUN));
    }

    #[test]
    fn a_refusal_is_cleared_only_by_a_stream_that_opened_after_it() {
        let links = LinkState::new(1);
        let before = Instant::now();
        links.open_refused(None, "the router's limit of 2 open connections is reached");
        // A stream held since before the refusal ends well: nothing learned.
        links.stream_served(before);
        assert_eq!(
            links.refused().as_deref(),
            Some("the router's limit of 2 open connections is reached")
        );
        links.stream_served(Instant::now());
        assert_eq!(links.refused(), None);

        // Nothing served after a refusal: it holds for REFUSAL_HOLD, then no more.
        links.open_refused(None, "the source refused the connection");
        let now = Instant::now();
        assert_eq!(
            links
                .refused_at(now + REFUSAL_HOLD - Duration::from_millis(1))
                .as_deref(),
            Some("the source refused the connection")
        );
        assert_eq!(links.refused_at(now + REFUSAL_HOLD), None);
    }

    #[test]
    fn each_router_link_has_generations_of_its_own() {
        let links = LinkState::new(2);
        assert!(!links.is_up());
        let a1 = links.connected(0);
        let b1 = links.connected(1);
        assert_eq!((a1.generation, b1.generation), (1, 1));
        assert!(links.is_current(a1) && links.is_current(b1));
        links.lost(1);
        assert!(links.is_up() && links.is_current(a1) && !links.is_current(b1));
        let a2 = links.connected(0);
        assert!(!links.is_current(a1) && links.is_current(a2));
        // One router at a time: moving to the second drops the first.
        let b2 = links.switched_to(1);
        assert!(links.is_current(b2) && !links.is_current(a2) && !links.is_up_at(0));
        links.lost_all();
        assert!(!links.is_up() && !links.is_current(b2));
        assert_eq!(links.current(1), b2);
    }

    #[test]
    fn users_are_told_the_refusal_only_when_every_router_refuses() {
        let links = LinkState::new(2);
        let unreachable = "the router is unreachable (the tunnel is reconnecting)";
        assert_eq!(links.why_down(), unreachable);
        links.router_refused(1, "key K is not authorized".into());
        assert_eq!(links.why_down(), unreachable, "router 0 may still serve");
        links.router_refused(0, "key K is revoked".into());
        assert_eq!(
            links.why_down(),
            "every router refuses this tunnel: key K is revoked; key K is not authorized"
        );
        let one = LinkState::new(1);
        one.router_refused(0, "key K is not authorized".into());
        assert_eq!(one.why_down(), "key K is not authorized");
        one.connected(0);
        assert_eq!(one.why_down(), unreachable, "a link up forgets the refusal");
    }

    #[test]
    fn users_may_wait_while_the_tunnel_moves_to_another_router_at_once() {
        let links = LinkState::new(2);
        assert!(!links.can_wait(), "no link yet");
        links.switched_to(0);
        assert!(links.can_wait());
        links.set_moving(true);
        links.lost_all();
        assert!(!links.is_up() && links.can_wait(), "moving to router 1");
        links.switched_to(1);
        links.lost_all();
        assert!(!links.can_wait(), "moved: a later loss turns users away");
        links.set_moving(true);
        assert!(links.stop_moving() && !links.stop_moving());
        assert!(!links.can_wait(), "the attempt to move failed");
    }

    #[test]
    fn balancing_picks_the_router_with_the_fewest_channels() {
        let links = Arc::new(LinkState::new(3));
        assert!(
            links.reserve_least_loaded(0, 0).is_none(),
            "every link is down"
        );
        links.connected(0);
        links.connected(1);
        // Router 2 is down: never picked, however few channels it has.
        let a = links.reserve_least_loaded(0, 0).unwrap();
        assert_eq!(a.router(), 0);
        let b = links.reserve_least_loaded(0, 0).unwrap();
        assert_eq!(b.router(), 1);
        // A tie goes to the first from `start` on.
        assert_eq!(links.reserve_least_loaded(0, 1).unwrap().router(), 1);
        let a2 = links.reserve_least_loaded(0, 0).unwrap();
        assert_eq!(
            (a2.router(), links.channels(0), links.channels(1)),
            (0, 2, 1)
        );
        assert_eq!(links.reserve_least_loaded(0, 0).unwrap().router(), 1);
        // A closed channel leaves its router's count.
        drop(a);
        drop(a2);
        assert_eq!((links.channels(0), links.channels(1)), (0, 1));
        assert_eq!(links.reserve_least_loaded(0, 1).unwrap().router(), 0);
        links.connected(2);
        let c = links.reserve_least_loaded(0, 0).unwrap();
        assert_eq!(c.router(), 0);
        assert_eq!(links.reserve_least_loaded(0, 1).unwrap().router(), 2);
        drop(b);
    }

    #[test]
    fn balancing_spreads_each_cores_channels_over_the_routers() {
        let links = Arc::new(LinkState::for_cores(2, 2));
        links.connected(0);
        // Core 0's two channels were made while only router 0 was up.
        let early = [
            links.reserve_least_loaded(0, 0),
            links.reserve_least_loaded(0, 1),
        ];
        links.connected(1);
        // Router 1 has fewer channels in all; core 0 holds none of it: it takes the next.
        let joined = links.reserve_least_loaded(0, 0).unwrap();
        assert_eq!(joined.router(), 1);
        // Core 1 holds none of either: the one with fewer in all, router 1.
        let c1 = links.reserve_least_loaded(1, 0).unwrap();
        assert_eq!(c1.router(), 1);
        // Then router 0, which core 1 holds none of, though it has more in all.
        let c1b = links.reserve_least_loaded(1, 0).unwrap();
        assert_eq!(
            (c1b.router(), links.channels(0), links.channels(1)),
            (0, 3, 2)
        );
        // Core 0 holds one of router 1 and two of router 0.
        assert_eq!(links.reserve_least_loaded(0, 0).unwrap().router(), 1);
        // A closed channel leaves its core's count too.
        drop(early);
        assert_eq!(links.reserve_least_loaded(0, 1).unwrap().router(), 0);
        drop((joined, c1, c1b));
        assert_eq!((links.channels(0), links.channels(1)), (0, 0));
    }

    #[test]
    fn a_stream_counts_while_it_rides() {
        let links = LinkState::new(2);
        let r = links.ride(1);
        let r2 = links.ride(1);
        assert_eq!((links.streams(0), links.streams(1)), (0, 2));
        drop(r);
        assert_eq!(links.streams(1), 1);
        drop(r2);
        assert_eq!(links.streams(1), 0);
    }
}
