//! The client side of a worker: accept users on this core's listener, give each a
//! handshaken channel from this core's pool, open the source, relay.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use conduit_proto::{Message, Refusal, RefusalCode};
use futures::channel::oneshot;
use futures::future::{Either, select};
use monoio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::channel::{Channel, ChannelError};
use crate::handoff::{ChannelHandoff, FromWorker};
use crate::limit::{Throttle, held_note, open_connections};
use crate::net::Socket;
use crate::plain::PlainChannel;
use crate::relay::Stop;
use crate::stats::ErrorKind;
use crate::sys::Peek;
use crate::worker::{Core, Listen};
use crate::{AcceptBackoff, ClientSpec};

mod stream;
mod udp;

/// Idle channels of one core, and the users waiting for one (each is sent a channel,
/// or the reason none will come).
#[derive(Default)]
struct Pool {
    idle: VecDeque<Link>,
    waiters: VecDeque<oneshot::Sender<Result<Link, NoLink>>>,
    /// Channels asked of the control plane and not yet delivered.
    requested: usize,
    /// Set while no channel can be made (the process is out of file descriptors):
    /// until when nothing is asked of the control plane, and the reason users are
    /// told meanwhile.
    starved: Option<(Instant, Rc<str>)>,
    /// Rounds of failed channel attempts in a row, for the pause between rounds.
    starved_rounds: u32,
}

impl Pool {
    /// How many channels to ask for: enough for `pool_size` idle plus one per user
    /// waiting, less those idle or asked for already. Users who gave up waiting
    /// (their wait timed out, or they left) are forgotten first: counted, they would
    /// have the control plane make channels for nobody, more with each one.
    fn channels_to_ask(&mut self, pool_size: usize) -> usize {
        self.waiters.retain(|w| !w.is_canceled());
        (pool_size + self.waiters.len()).saturating_sub(self.idle.len() + self.requested)
    }

    /// Keeps `ch` idle if the pool holds fewer than `keep`; else in place of an idle
    /// channel of the router with the most of them here, where that is at least two
    /// more than `ch`'s router has (routers that share users share the pool, or a
    /// user who makes one connection at a time would find only one router's channels
    /// left, as each channel given back finds the pool full). `front` puts it first
    /// (one just given back: its socket is the warmest). Returns the channel to
    /// close, if any.
    fn admit(&mut self, ch: Link, keep: usize, front: bool) -> Option<Link> {
        let evicted = if self.idle.len() < keep {
            None
        } else {
            let routers: Vec<usize> = self.idle.iter().map(|c| c.epoch().router).collect();
            match crowded(&routers, ch.epoch().router) {
                Some(at) => self.idle.remove(at),
                None => return Some(ch),
            }
        };
        if front {
            self.idle.push_front(ch);
        } else {
            self.idle.push_back(ch);
        }
        evicted
    }

    /// Gives `ch` to the longest-waiting user still waiting; returns it if none is.
    fn hand_to_waiter(&mut self, mut ch: Link) -> Option<Link> {
        while let Some(waiter) = self.waiters.pop_front() {
            match waiter.send(Ok(ch)) {
                Ok(()) => return None,
                Err(Ok(back)) => ch = back,
                Err(Err(_)) => return None, // never: what was sent is `Ok`
            }
        }
        Some(ch)
    }
}

pub(crate) struct ClientCore {
    core: Rc<Core>,
    spec: Arc<ClientSpec>,
    pool: RefCell<Pool>,
    requests: flume::Sender<FromWorker>,
    stop_accept: RefCell<Option<oneshot::Sender<()>>>,
    /// Keeps refusals at the connection limit from flooding the log.
    refusals: Throttle,
    /// The same for users turned away for want of a channel (the router is away, or
    /// no descriptor is left for one): many at once, said once in a while.
    unserved: Throttle,
    /// The same for users whose address `--allow-from` does not name.
    strangers: Throttle,
    /// The source, shared by this core's connection entries.
    target: Rc<str>,
    /// A UDP tunnel's flows on this core, by user address.
    flows: RefCell<udp::Flows>,
    /// The router-link generation in which the router answered `OpenKernel` with
    /// `Opened` (it keeps TLS in userspace): not offered again on that link, so a
    /// router without kTLS costs one round trip once, not on every connection.
    kernel_declined: Cell<Option<crate::LinkEpoch>>,
    /// The router of the channel this core last handed a user, where several are in
    /// use at once: ties go to the routers after it, in turn.
    last_router: Cell<usize>,
}

impl ClientCore {
    pub(crate) fn start(
        core: Rc<Core>,
        spec: Arc<ClientSpec>,
        listener: Listen,
        requests: flume::Sender<FromWorker>,
    ) -> std::io::Result<Rc<Self>> {
        let (tx, rx) = oneshot::channel();
        let target: Rc<str> = spec.target.as_str().into();
        let me = Rc::new(Self {
            core,
            spec,
            pool: RefCell::new(Pool::default()),
            requests,
            stop_accept: RefCell::new(Some(tx)),
            refusals: Throttle::reporting(
                Duration::from_secs(1),
                "user connections refused at the tunnel's limit",
                true,
            ),
            unserved: Throttle::reporting(
                Duration::from_secs(1),
                "user connections closed unserved",
                true,
            ),
            strangers: Throttle::reporting(
                Duration::from_secs(1),
                "users turned away by --allow-from",
                true,
            ),
            target,
            flows: RefCell::default(),
            kernel_declined: Cell::new(None),
            last_router: Cell::new(usize::MAX),
        });
        match listener {
            Listen::Tcp(listener) => {
                listener.set_nonblocking(monoio::utils::is_legacy())?;
                let listener = TcpListener::from_std(listener)?;
                monoio::spawn(me.clone().accept_loop(listener, rx));
            }
            Listen::Udp(sock) => {
                let sock = Rc::new(crate::net::Udp::serving(sock)?);
                monoio::spawn(me.clone().udp_loop(sock, rx));
            }
        }
        me.refill();
        monoio::spawn(me.clone().keep_pool());
        Ok(me)
    }

    /// Looks over the idle channels every [`POOL_CHECK`]: one the router closed (it
    /// closes channels unused for its `idle_timeout_secs`), or too old to trust, is
    /// closed here too and replaced. Without this a quiet tunnel would hold its ends
    /// of closed channels in `CLOSE_WAIT` until users came and found them dead.
    async fn keep_pool(self: Rc<Self>) {
        loop {
            monoio::time::sleep(POOL_CHECK).await;
            if self.core.stopping.get() {
                return;
            }
            let dropped = {
                let mut pool = self.pool.borrow_mut();
                let before = pool.idle.len();
                pool.idle.retain(|ch| self.usable(ch));
                before - pool.idle.len()
            };
            if dropped > 0 {
                debug!(
                    core = self.core.index,
                    count = dropped,
                    "closed idle channels the router closed or that grew too old"
                );
                self.publish();
                self.refill();
            }
        }
    }

    async fn accept_loop(self: Rc<Self>, listener: TcpListener, mut stop: oneshot::Receiver<()>) {
        let mut backoff = AcceptBackoff::default();
        loop {
            let accepted = {
                let accept = listener.accept();
                futures::pin_mut!(accept);
                match select(accept, &mut stop).await {
                    Either::Left((r, _)) => r,
                    Either::Right(_) => return,
                }
            };
            match accepted {
                Ok((stream, peer)) => {
                    backoff.succeeded();
                    if !self.spec.admits(peer.ip()) {
                        self.refuse_stranger(stream, peer);
                        continue;
                    }
                    if let Some(why) = self.refuse_now() {
                        // Closed here, not in a task of its own: the accepts that
                        // follow need this descriptor back now.
                        self.refuse_starved(stream, peer, &why);
                        continue;
                    }
                    match self.spec.limit.try_acquire() {
                        Some(permit) => {
                            if let Some(task) = self.clone().serve_user(stream, peer, permit) {
                                monoio::spawn(task);
                            }
                        }
                        None => self.refuse(stream, peer),
                    }
                }
                Err(e) => {
                    if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                        self.listener_starved();
                    }
                    // EMFILE and friends: back off instead of spinning on the error.
                    let wait = backoff.failed(&e);
                    monoio::time::sleep(wait).await;
                }
            }
        }
    }

    /// A user whose address `--allow-from` does not name: reset at once, before it
    /// costs a channel or a place under `--max-connections`.
    fn refuse_stranger(&self, stream: TcpStream, peer: SocketAddr) {
        if let Ok(user) = Socket::new(stream) {
            user.abort();
        }
        // Counted among the connections, as failed (as a router counts what it
        // refuses): failed is never more than total.
        self.core.stats.opened.fetch_add(1, Relaxed);
        self.core.stats.fail(ErrorKind::UserNotAllowed);
        self.stranger_said(peer, "refused a user connection");
    }

    /// Logs (at most once a second) that a user of `--allow-from` was turned away;
    /// `what`: what was done to it.
    pub(crate) fn stranger_said(&self, peer: SocketAddr, what: &str) {
        if let Some(held) = self.strangers.admit() {
            warn!(
                core = self.core.index,
                %peer,
                tunnel = %self.spec.tunnel,
                "{what} from {}: the address is not in the tunnel's --allow-from ({}); \
                 add it there (allow_from in a file) to let it in{}",
                peer.ip(),
                self.spec.allow_from_list(),
                held_note(held)
            );
        }
    }

    /// The tunnel is at `--max-connections`: close the user's connection at once.
    fn refuse(&self, stream: TcpStream, peer: SocketAddr) {
        // Reset at once (linger 0): the user learns now, and no socket lingers.
        if let Ok(user) = Socket::new(stream) {
            user.abort();
        }
        self.core.stats.opened.fetch_add(1, Relaxed);
        self.core.stats.fail(ErrorKind::LimitReached);
        if let Some(held) = self.refusals.admit() {
            let max = self.spec.limit.max();
            warn!(
                core = self.core.index,
                %peer,
                tunnel = %self.spec.tunnel,
                "refused a user connection: the tunnel's limit of {} is reached; \
                 raise --max-connections (now {max}) to allow more{}",
                open_connections(max),
                held_note(held)
            );
        }
    }

    /// No channel can be made (the process is out of descriptors): close the user's
    /// connection at once, saying why in the log.
    fn refuse_starved(&self, stream: TcpStream, peer: SocketAddr, why: &str) {
        if let Ok(user) = Socket::new(stream) {
            user.abort();
        }
        self.core.stats.fail(ErrorKind::OutOfDescriptors);
        if let Some(held) = self.unserved.admit() {
            warn!(
                core = self.core.index,
                %peer,
                tunnel = %self.spec.tunnel,
                "refused a user connection: {why}{}",
                held_note(held)
            );
        }
    }

    pub(crate) fn stop_accepting(&self) {
        if let Some(tx) = self.stop_accept.borrow_mut().take() {
            let _ = tx.send(());
        }
    }

    /// A handshaken channel arrived from the control plane.
    pub(crate) fn channel_arrived(&self, h: ChannelHandoff) {
        let mut pool = self.pool.borrow_mut();
        pool.requested = pool.requested.saturating_sub(1);
        pool.starved_rounds = 0;
        if pool.starved.take().is_some() {
            debug!(core = self.core.index, "channels can be made again");
        }
        let ch = match Link::adopt(h, &self.spec.sockets) {
            Ok(ch) => ch,
            Err(e) => {
                warn!(core = self.core.index, "cannot adopt a channel: {e}");
                drop(pool);
                self.refill();
                return;
            }
        };
        let ch = match pool.hand_to_waiter(ch) {
            Some(ch) => ch,
            None => {
                drop(pool);
                self.publish();
                return;
            }
        };
        if self.core.stopping.get() {
            return;
        }
        // Asked for a user who has gone, or to mix the pool: more idle channels than
        // the pool keeps would only hold descriptors the listener needs.
        let closed = pool.admit(ch, self.keep_idle(), false);
        drop(pool);
        drop(closed);
        self.publish();
    }

    /// Most idle channels a core keeps.
    fn keep_idle(&self) -> usize {
        self.spec.keep_idle.max(self.spec.pool_size)
    }

    /// The control plane could not make a channel asked for, for want of file
    /// descriptors. Each failed attempt ends its request, so no stray attempts are
    /// left to pile up idle channels that would starve the listener in turn.
    pub(crate) fn channel_failed(self: &Rc<Self>, reason: String) {
        {
            let mut pool = self.pool.borrow_mut();
            pool.requested = pool.requested.saturating_sub(1);
        }
        self.starve(reason);
    }

    /// An accept failed for want of file descriptors. Idle channels may be what
    /// holds them (each stream that ends cleanly leaves its channel idle): all but
    /// one are closed, so users can get in again and the one left serves the first,
    /// and the pool is not topped up again until the pause ends.
    fn listener_starved(self: &Rc<Self>) {
        let closed = {
            let mut pool = self.pool.borrow_mut();
            let keep = pool.idle.len().min(1);
            pool.idle.split_off(keep)
        };
        if !closed.is_empty() {
            debug!(
                core = self.core.index,
                count = closed.len(),
                "closed idle channels to free descriptors for the listener"
            );
            drop(closed);
            self.publish();
        }
        self.starve(format!(
            "the tunnel is out of file descriptors: {}",
            RAISE_NOFILE
        ));
    }

    /// No descriptor is left for channels: the users waiting for one are told why
    /// at once (their sockets are the descriptors the next attempt needs), and so is
    /// every user that finds no idle channel until the pool is topped up again,
    /// after a pause that doubles from 50 ms to 1.6 s while such spells follow one
    /// another (a channel that gets through starts it over).
    fn starve(self: &Rc<Self>, reason: String) {
        let mut pool = self.pool.borrow_mut();
        let first = pool.starved.is_none();
        if first {
            let pause = Duration::from_millis(50 << pool.starved_rounds.min(5));
            pool.starved_rounds = pool.starved_rounds.saturating_add(1);
            warn!(
                core = self.core.index,
                tunnel = %self.spec.tunnel,
                "{reason}; users that find no idle channel are refused with this reason, \
                 and channels are tried again in {pause:?}"
            );
            pool.starved = Some((Instant::now() + pause, reason.into()));
        }
        drop(pool);
        let reason = self.starved_reason().unwrap_or_default();
        self.fail_waiters(ErrorKind::OutOfDescriptors, &reason);
        if first {
            monoio::spawn(self.clone().end_starvation());
        }
    }

    /// Why a user that finds no idle channel is refused at once: none can be made
    /// for now.
    fn refuse_now(&self) -> Option<String> {
        if !self.pool.borrow().idle.is_empty() {
            return None;
        }
        self.starved_reason()
    }

    /// Why users are refused at once, while channels cannot be made.
    fn starved_reason(&self) -> Option<String> {
        let pool = self.pool.borrow();
        pool.starved.as_ref().map(|(_, why)| why.to_string())
    }

    /// Waits out a starvation pause (unless a channel ends it sooner), then asks
    /// for channels again.
    async fn end_starvation(self: Rc<Self>) {
        let until = match &self.pool.borrow().starved {
            Some((until, _)) => *until,
            None => return,
        };
        monoio::time::sleep(until.saturating_duration_since(Instant::now())).await;
        {
            let mut pool = self.pool.borrow_mut();
            // Ended already by a channel that got through (and maybe begun anew).
            if !matches!(&pool.starved, Some((u, _)) if *u == until) {
                return;
            }
            pool.starved = None;
        }
        if !self.core.stopping.get() {
            self.refill();
        }
    }

    /// Drops the idle channels of links that are gone or were made again (with
    /// `all`, every idle channel), and refills. While every link is down, users
    /// waiting for a channel are let go too: none will come until one is back;
    /// unless the tunnel moves to another router at once, whose channels they wait
    /// for.
    pub(crate) fn flush_pool(&self, all: bool) {
        let dropped = {
            let mut pool = self.pool.borrow_mut();
            let (keep, drop): (VecDeque<Link>, VecDeque<Link>) = std::mem::take(&mut pool.idle)
                .into_iter()
                .partition(|ch| !all && self.spec.link.is_current(ch.epoch()));
            pool.idle = keep;
            drop
        };
        if !dropped.is_empty() {
            debug!(
                core = self.core.index,
                count = dropped.len(),
                "dropped stale idle channels"
            );
        }
        drop(dropped);
        if self.core.stopping.get() {
            self.fail_waiters(ErrorKind::RouterUnreachable, "the tunnel is stopping");
        } else if !self.spec.link.can_wait() {
            self.fail_waiters(ErrorKind::RouterUnreachable, &self.spec.link.why_down());
        }
        self.publish();
        if !self.core.stopping.get() {
            self.refill();
        }
    }

    /// Tells every user waiting for a channel that none is coming, and why.
    pub(crate) fn fail_waiters(&self, kind: ErrorKind, reason: &str) {
        let waiters = std::mem::take(&mut self.pool.borrow_mut().waiters);
        for w in waiters {
            let _ = w.send(Err((kind, reason.to_owned())));
        }
    }

    fn publish(&self) {
        let idle = self.pool.borrow().idle.len() as u64;
        self.core.stats.idle_channels.store(idle, Relaxed);
    }

    /// Asks the control plane for channels until idle + requested covers the pool
    /// size plus the users waiting.
    fn refill(&self) {
        let mut pool = self.pool.borrow_mut();
        if pool.starved.is_some() {
            return; // asked again when the pause ends
        }
        let count = pool.channels_to_ask(self.spec.pool_size);
        if count > 0 {
            pool.requested += count;
            let _ = self.requests.send(FromWorker::WantChannels {
                core: self.core.index,
                count,
            });
        }
    }

    fn usable(&self, ch: &Link) -> bool {
        let (sock, epoch, idle_since) = match ch {
            Link::Tls(c) => (&c.sock, c.epoch, c.idle_since),
            Link::Plain(c) => (&c.sock, c.epoch, c.idle_since),
        };
        self.spec.link.is_current(epoch)
            && idle_since.elapsed() < self.spec.max_idle
            && sock.peek() == Peek::Quiet
    }

    /// The idle channel to try next: the first; or, where several routers are in
    /// use at once, the first of the router with the fewest streams riding it now
    /// (a router that holds its streams longer, slower or busier, gets fewer), passing
    /// over one that just refused a stream (its limit reached) while another has one;
    /// of routers tied, the next in turn after the one this core chose last (else a
    /// user who makes one connection at a time would always get the router of the
    /// channel it just gave back).
    fn take_idle(&self) -> Option<Link> {
        let mut pool = self.pool.borrow_mut();
        let links = &self.spec.link;
        let n = links.routers();
        let at = if n > 1 && pool.idle.len() > 1 {
            let now = Instant::now();
            // The router whose turn it is (the first when none was chosen yet).
            let next = match self.last_router.get() {
                usize::MAX => 0,
                last => (last + 1) % n,
            };
            let rank = |ch: &Link| {
                let router = ch.epoch().router;
                // 0 for the router whose turn it is, n-1 for the one chosen last.
                let turn = (router % n + n - next) % n;
                (links.shunned(router, now), links.streams(router), turn)
            };
            pool.idle
                .iter()
                .enumerate()
                .min_by_key(|(_, ch)| rank(ch))
                .map_or(0, |(i, _)| i)
        } else {
            0
        };
        let ch = pool.idle.remove(at)?;
        self.last_router.set(ch.epoch().router);
        Some(ch)
    }

    /// A live channel for a new user connection.
    async fn channel(&self) -> Result<Link, NoLink> {
        loop {
            let next = self.take_idle();
            match next {
                Some(ch) if self.usable(&ch) => {
                    self.publish();
                    self.refill();
                    return Ok(ch);
                }
                Some(_) => continue,
                None => break,
            }
        }
        self.publish();
        if !self.spec.link.can_wait() {
            self.refill();
            return Err((ErrorKind::RouterUnreachable, self.spec.link.why_down()));
        }
        if let Some(why) = self.starved_reason() {
            return Err((ErrorKind::OutOfDescriptors, why));
        }
        let (tx, rx) = oneshot::channel();
        self.pool.borrow_mut().waiters.push_back(tx);
        self.refill();
        match monoio::time::timeout(self.spec.wait_for_channel, rx).await {
            Ok(Ok(given)) => given,
            Ok(Err(_)) => Err((
                ErrorKind::RouterUnreachable,
                "the tunnel is stopping".into(),
            )),
            Err(_) => Err((
                ErrorKind::RouterUnreachable,
                format!(
                    "no channel to the router within {:?}",
                    self.spec.wait_for_channel
                ),
            )),
        }
    }

    /// Puts a channel that finished a stream cleanly back in the pool.
    fn reuse(&self, ch: Link) {
        let mut pool = self.pool.borrow_mut();
        let Some(mut ch) = pool.hand_to_waiter(ch) else {
            return;
        };
        match &mut ch {
            Link::Tls(c) => c.idle_since = Instant::now(),
            Link::Plain(c) => c.idle_since = Instant::now(),
        }
        // Plenty idle already: this one (or one of a crowded router) closes.
        let closed = pool.admit(ch, self.keep_idle(), true);
        drop(pool);
        drop(closed);
        self.publish();
    }
}

/// Where a full pool whose idle channels belong to `idle` (their routers, in pool
/// order) should make room for a channel of router `arriving`: the last idle channel
/// of the router with the most of them (of routers tied, the lowest-numbered), if it has
/// at least two more than `arriving`; `None` when the arriving one should go
/// instead.
fn crowded(idle: &[usize], arriving: usize) -> Option<usize> {
    let count = |router: usize| idle.iter().filter(|&&r| r == router).count();
    let most = idle
        .iter()
        .copied()
        .max_by_key(|&r| (count(r), std::cmp::Reverse(r)))?;
    if count(most) < count(arriving) + 2 {
        return None;
    }
    idle.iter().rposition(|&r| r == most)
}

/// What the user's stream is closed with when the router did not open its source:
/// its own limit is not the source's fault.
fn open_failed(r: &conduit_proto::Refusal) -> String {
    match r.code {
        conduit_proto::RefusalCode::LimitReached => {
            format!("the router refused the stream: {}", r.message)
        }
        _ => format!("the router could not open the source: {}", r.message),
    }
}

/// Whether a failure of `kind` turns users away by the crowd (no channel to the
/// router can be had, or the router refuses every stream: its limit reached, the
/// source down), so that its log lines are throttled.
fn unserved(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::RouterUnreachable | ErrorKind::OutOfDescriptors | ErrorKind::OpenFailed
    )
}

/// How often each core looks over its idle channels.
const POOL_CHECK: Duration = Duration::from_secs(1);

/// How to fix a process out of file descriptors.
pub(crate) const RAISE_NOFILE: &str =
    "raise its open-file limit (ulimit -n, or LimitNOFILE= in a systemd unit)";

/// Why a user gets no channel: the kind its failure is counted as, and the reason.
type NoLink = (ErrorKind, String);

/// A pooled channel of either transport.
pub(crate) enum Link {
    /// Boxed, both: pools move links around, and a task that held one inline would
    /// keep its slot for as long as the relay after it runs.
    Tls(Box<Channel>),
    Plain(Box<PlainChannel>),
}

impl Link {
    /// The router-link generation the channel was made in.
    fn epoch(&self) -> crate::LinkEpoch {
        match self {
            Link::Tls(c) => c.epoch,
            Link::Plain(c) => c.epoch,
        }
    }

    fn adopt(h: ChannelHandoff, sockets: &crate::SocketOptions) -> Result<Self, ChannelError> {
        let link = if h.tls.is_some() {
            Channel::adopt(h).map(|c| Link::Tls(Box::new(c)))?
        } else {
            Link::Plain(Box::new(PlainChannel::adopt(h)?))
        };
        match &link {
            Link::Tls(c) => c.sock.size_buffers(sockets),
            Link::Plain(c) => c.sock.size_buffers(sockets),
        }
        Ok(link)
    }
}

/// A failure to use the channel to the router, as a user connection's reason.
fn channel_failed(e: impl std::fmt::Display) -> (ErrorKind, String) {
    (
        ErrorKind::Channel,
        format!("the channel to the router failed: {e}"),
    )
}

/// Why a stream or flow stopped, as its user's reason (`user` names the user's side);
/// and the `Reset` to tell the router, where it cannot know.
fn stopped(stop: &Stop, user: &str) -> (String, Option<Refusal>) {
    match stop {
        Stop::OpenFailed(r) => (open_failed(r), None),
        Stop::Plain(e) => (
            format!("{user} failed: {e}"),
            Some(Refusal::new(RefusalCode::Aborted, format!("{user} failed"))),
        ),
        Stop::Killed(closing) => (
            closing.why.clone(),
            Some(closing.reset(format!("closed by the client: {closing}"))),
        ),
        other => (other.to_string(), None),
    }
}

/// Best effort: tell the router this stream is aborted (`reset` says why), so it
/// resets the source.
async fn tell_peer(ch: &Channel, reset: Refusal) {
    ch.send_best_effort(Message::Reset(reset)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_who_gave_up_waiting_ask_for_no_channels() {
        let mut pool = Pool::default();
        assert_eq!(pool.channels_to_ask(2), 2);
        pool.requested = 2;
        assert_eq!(pool.channels_to_ask(2), 0);
        let (waiting, _kept) = oneshot::channel();
        let (gave_up, gone) = oneshot::channel();
        pool.waiters.extend([waiting, gave_up]);
        assert_eq!(pool.channels_to_ask(2), 2);
        drop(gone);
        pool.requested = 3;
        assert_eq!(pool.channels_to_ask(2), 0);
        assert_eq!(pool.waiters.len(), 1);
    }

    #[test]
    fn a_full_pool_makes_room_for_a_router_it_holds_too_few_of() {
        // Only router 1's channels: one makes room for router 0's, the last.
        assert_eq!(crowded(&[1, 1], 0), Some(1));
        assert_eq!(crowded(&[1, 1, 0, 1], 0), Some(3));
        // Mixed already, or the arriving router is the crowded one: it closes.
        assert_eq!(crowded(&[1, 0, 1], 0), None);
        assert_eq!(crowded(&[0, 1], 0), None);
        assert_eq!(crowded(&[0, 1], 1), None);
        assert_eq!(crowded(&[1, 1], 1), None);
        assert_eq!(crowded(&[0, 0, 1], 0), None);
        // One router only: never.
        assert_eq!(crowded(&[0, 0, 0], 0), None);
        // Three routers: the most crowded gives way, the first of a tie.
        assert_eq!(crowded(&[2, 1, 1, 2], 0), Some(2));
        assert_eq!(crowded(&[2, 2, 1, 1, 1], 0), Some(4));
        assert_eq!(crowded(&[2, 2, 1, 1, 0], 0), None);
        assert_eq!(crowded(&[], 0), None);
    }
}
