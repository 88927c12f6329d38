//! A UDP tunnel's client side: each core owns one `SO_REUSEPORT` UDP socket on the
//! bind address; every user address sending to it is a flow, with a queue of its
//! datagrams and a task that carries them over a channel of its own (see
//! [`crate::datagram`]).

use std::cell::Cell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use conduit_proto::Message;
use futures::StreamExt;
use futures::channel::{mpsc, oneshot};
use futures::future::{Either, select, try_join};
use tracing::{debug, info, warn};

use super::{ClientCore, Link, channel_failed, stopped};
use crate::channel::Channel;
use crate::datagram::{Carrier, Deliver, Framed, Heard, Inbound, RECV_ROOM, down, fits, paid};
use crate::limit::{Permit, Throttle, held_note, open_connections};
use crate::net::{Destination, Udp};
use crate::plain::{Wire, send_best_effort, send_frame};
use crate::relay::{Side, Stop};
use crate::stats::{
    Closing, ConnCounters, DROPS_READ_EVERY, DropTally, ErrorKind, KillReceiver, Meter, Rides,
};

/// Bytes of datagrams one flow may have queued for its channel; beyond this, new ones
/// are dropped (as a full socket buffer drops them) and counted.
const FLOW_QUEUE_BYTES: usize = 256 * 1024;

/// Bytes all the flows of one core may have queued: UDP senders cannot be trusted to
/// be few (addresses are easily forged), so memory is bounded here, not per sender.
const CORE_QUEUE_BYTES: usize = 32 * 1024 * 1024;

/// What a queued datagram costs besides its payload, counted against the budgets with
/// it: its `Vec`, the queue's node, the allocator's headers. Without it, empty
/// datagrams would queue for free, without bound.
const DATAGRAM_OVERHEAD: usize = 96;

/// A flow's key: its user's address and, on a socket bound to every address, the
/// local address the user sends to. One user socket sending to two of the host's
/// addresses is two flows, each answered from its own address.
type FlowKey = (SocketAddr, Option<IpAddr>);

/// This core's flows, by [`FlowKey`].
pub(super) struct Flows {
    by_ends: HashMap<FlowKey, Flow>,
    /// Bytes queued in all of them.
    queued: Rc<Cell<usize>>,
    /// Keeps flows that cannot start (router away, limit reached) from flooding the
    /// log: each datagram of a sender without a flow tries to start one.
    failures: Throttle,
    /// Keeps the router's word that a source refuses (each flow's, once a second)
    /// from flooding the log.
    refusals: Throttle,
    /// Senders turned away lately, so each counts once as a connection refused.
    turned: TurnedAway,
}

/// How long after its latest datagram a sender turned away for one reason is still
/// the same refused user: its next datagram, also turned away for that reason, is
/// only a datagram dropped, not another connection refused.
const TURNED_AWAY_SPELL: Duration = Duration::from_secs(10);

/// Most senders a core remembers as turned away; past it, those of spells over are
/// forgotten, and if that leaves none out, all are (some then count twice).
const TURNED_AWAY_KEPT: usize = 4096;

/// The senders (by [`FlowKey`]) a core turned away lately, each with the reason and
/// when its latest datagram came: a sender that keeps sending while the router is
/// away, or the tunnel full, is one connection refused, not one per datagram.
#[derive(Default)]
struct TurnedAway(HashMap<FlowKey, (ErrorKind, Instant)>);

impl TurnedAway {
    /// Notes that `key`'s datagram is turned away for `kind` at `now`; true if that
    /// begins a spell (a connection refused to count), false if it goes on with one.
    fn begins(&mut self, key: FlowKey, kind: ErrorKind, now: Instant) -> bool {
        let spell_over = |(_, at): &(ErrorKind, Instant)| {
            now.saturating_duration_since(*at) >= TURNED_AWAY_SPELL
        };
        if let Some(seen) = self.0.get_mut(&key) {
            let begins = seen.0 != kind || spell_over(seen);
            *seen = (kind, now);
            return begins;
        }
        if self.0.len() >= TURNED_AWAY_KEPT {
            self.0.retain(|_, seen| !spell_over(seen));
            if self.0.len() >= TURNED_AWAY_KEPT {
                self.0.clear();
            }
        }
        self.0.insert(key, (kind, now));
        true
    }

    /// `key` has a flow now: its next refusal is a new one.
    fn forget(&mut self, key: &FlowKey) {
        self.0.remove(key);
    }
}

impl Default for Flows {
    fn default() -> Self {
        Self {
            by_ends: HashMap::new(),
            queued: Rc::default(),
            failures: Throttle::reporting(
                Duration::from_secs(1),
                "datagrams dropped or UDP flows failed",
                true,
            ),
            refusals: Throttle::reporting(
                Duration::from_secs(1),
                "reports of a UDP source refusing datagrams",
                true,
            ),
            turned: TurnedAway::default(),
        }
    }
}

/// The dispatcher's handle on a flow: dropping it ends the flow (gracefully: what is
/// queued is sent, then `Eof`).
struct Flow {
    id: u64,
    tx: mpsc::UnboundedSender<Vec<u8>>,
    queue: Queued,
}

/// What a flow has queued, and what its core has.
#[derive(Clone)]
struct Queued {
    flow: Rc<Cell<usize>>,
    core: Rc<Cell<usize>>,
}

/// Each method takes a datagram's payload length; the budgets count its
/// [`DATAGRAM_OVERHEAD`] too.
impl Queued {
    fn has_room(&self, len: usize) -> bool {
        let cost = len + DATAGRAM_OVERHEAD;
        self.flow.get() + cost <= FLOW_QUEUE_BYTES && self.core.get() + cost <= CORE_QUEUE_BYTES
    }

    fn add(&self, len: usize) {
        let cost = len + DATAGRAM_OVERHEAD;
        self.flow.set(self.flow.get() + cost);
        self.core.set(self.core.get() + cost);
    }

    fn took(&self, len: usize) {
        let cost = len + DATAGRAM_OVERHEAD;
        self.flow.set(self.flow.get().saturating_sub(cost));
        self.core.set(self.core.get().saturating_sub(cost));
    }
}

/// A flow's two ends on this side: its user, and the tunnel's socket and address
/// the user sends to (`local`: known on a socket bound to every address).
struct Ends {
    peer: SocketAddr,
    local: Option<Destination>,
    sock: Rc<Udp>,
}

/// What a flow sends up: its user's datagrams, each behind `proxy` (a PROXY
/// protocol header, or nothing).
struct Upstream<'a> {
    rx: Inbox,
    proxy: &'a [u8],
    /// The router the flow rides, for what it says of the source.
    router: usize,
    /// When the flow opened: its first answer says the source serves since.
    opened: Instant,
}

/// A flow's end of its queue. Whatever is left in it when the flow ends stops
/// counting against the budgets.
struct Inbox {
    rx: mpsc::UnboundedReceiver<Vec<u8>>,
    queue: Queued,
}

impl Inbox {
    /// The next datagram, waiting for one; `None` once the dispatcher let go.
    async fn next(&mut self) -> Option<Vec<u8>> {
        let d = self.rx.next().await?;
        self.queue.took(d.len());
        Some(d)
    }

    /// The next datagram if one is queued.
    fn try_next(&mut self) -> Option<Vec<u8>> {
        let d = self.rx.try_recv().ok()?;
        self.queue.took(d.len());
        Some(d)
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.rx.close();
        while self.try_next().is_some() {}
    }
}

impl ClientCore {
    /// Receives every datagram sent to this core's socket and hands it to its flow,
    /// starting one for a new sender. Ends when the tunnel stops, which ends every
    /// flow.
    ///
    /// Every [`DROPS_READ_EVERY`], and at the end, the kernel's count of datagrams the
    /// socket dropped for want of buffer room is read into the core's counter (a
    /// system call: not one per datagram).
    pub(super) async fn udp_loop(self: Rc<Self>, sock: Rc<Udp>, mut stop: oneshot::Receiver<()>) {
        // One receive buffer per core, big enough for any datagram.
        let mut buf = vec![0u8; RECV_ROOM];
        let drops = DropTally::default();
        let read_drops = || drops.update(sock.receive_drops(), &self.core.stats.udp_receive_drops);
        let tick = monoio::time::sleep(DROPS_READ_EVERY);
        futures::pin_mut!(tick);
        loop {
            let ready = {
                let ready = sock.readable();
                futures::pin_mut!(ready);
                match select(select(ready, tick.as_mut()), &mut stop).await {
                    Either::Left((Either::Left((r, _)), _)) => r,
                    Either::Left((Either::Right(((), _)), _)) => {
                        read_drops();
                        tick.as_mut()
                            .reset(monoio::time::Instant::now() + DROPS_READ_EVERY);
                        continue;
                    }
                    Either::Right(_) => break,
                }
            };
            if let Err(e) = ready {
                warn!(core = self.core.index, "udp socket failed: {e}; retrying");
                monoio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            loop {
                match sock.try_recv_from(&mut buf) {
                    Ok((n, peer, to)) => self.dispatch(&sock, peer, to, &buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        // Nothing on an unconnected socket is fatal; wait a little so
                        // an error that repeats cannot spin the core.
                        debug!(core = self.core.index, "udp receive failed: {e}");
                        monoio::time::sleep(Duration::from_millis(10)).await;
                        break;
                    }
                }
            }
        }
        read_drops();
        let flows = std::mem::take(&mut self.flows.borrow_mut().by_ends);
        if !flows.is_empty() {
            debug!(
                core = self.core.index,
                count = flows.len(),
                "ending udp flows: the tunnel is stopping"
            );
        }
    }

    /// Queues one datagram on its flow, starting the flow if there is none. `to`: the
    /// local address it was sent to (on a socket bound to every address), part of the
    /// flow's key and the address its answers leave from.
    fn dispatch(
        self: &Rc<Self>,
        sock: &Rc<Udp>,
        peer: SocketAddr,
        to: Option<Destination>,
        datagram: &[u8],
    ) {
        let key = (peer, to.map(|d| d.addr));
        let mut flows = self.flows.borrow_mut();
        if let Some(flow) = flows.by_ends.get(&key) {
            if !flow.queue.has_room(datagram.len()) {
                self.core.stats.datagrams_dropped.fetch_add(1, Relaxed);
                return;
            }
            if flow.tx.unbounded_send(datagram.to_vec()).is_ok() {
                flow.queue.add(datagram.len());
                return;
            }
            // The flow ended (idle, or its channel failed): start a new one.
            flows.by_ends.remove(&key);
        }
        if self.core.stopping.get() {
            return;
        }
        if !self.spec.admits(peer.ip()) {
            self.turned_away(&mut flows, key, ErrorKind::UserNotAllowed);
            drop(flows);
            self.stranger_said(peer, "dropped a datagram");
            return;
        }
        if let Some(cap) = &self.spec.new_flows
            && !cap.admit(Instant::now())
        {
            self.turned_away(&mut flows, key, ErrorKind::LimitReached);
            if let Some(held) = flows.failures.admit() {
                let rate = cap.per_sec();
                warn!(
                    core = self.core.index,
                    %peer,
                    tunnel = %self.spec.tunnel,
                    "dropped a datagram from a new sender: the tunnel starts at most {rate} \
                     new flows a second; raise --udp-max-new-flows (now {rate}) to allow more{}",
                    held_note(held)
                );
            }
            return;
        }
        if !self.spec.link.is_up() {
            // No flow to start (it would fail at once, counted as a connection
            // opened and lost): the datagram is dropped, as it would be in flight.
            self.turned_away(&mut flows, key, ErrorKind::RouterUnreachable);
            if let Some(held) = flows.failures.admit() {
                warn!(
                    core = self.core.index,
                    %peer,
                    tunnel = %self.spec.tunnel,
                    "dropped a datagram from a sender without a flow: {}{}",
                    self.spec.link.why_down(),
                    held_note(held)
                );
            }
            return;
        }
        let Some(permit) = self.spec.limit.try_acquire() else {
            self.turned_away(&mut flows, key, ErrorKind::LimitReached);
            if let Some(held) = flows.failures.admit() {
                let max = self.spec.limit.max();
                warn!(
                    core = self.core.index,
                    %peer,
                    tunnel = %self.spec.tunnel,
                    "dropped a datagram from a new sender: the tunnel's limit of {} is reached; \
                     raise --max-connections (now {max}) to allow more{}",
                    open_connections(max),
                    held_note(held)
                );
            }
            return;
        };
        let queue = Queued {
            flow: Rc::default(),
            core: flows.queued.clone(),
        };
        if !queue.has_room(datagram.len()) {
            self.core.stats.datagrams_dropped.fetch_add(1, Relaxed);
            return;
        }
        let (tx, rx) = mpsc::unbounded();
        // A fresh queue takes it: its receiver is alive.
        let _ = tx.unbounded_send(datagram.to_vec());
        queue.add(datagram.len());
        let id = self.core.next_conn_id();
        let inbox = Inbox {
            rx,
            queue: queue.clone(),
        };
        flows.turned.forget(&key);
        flows.by_ends.insert(key, Flow { id, tx, queue });
        drop(flows);
        let ends = Ends {
            peer,
            local: to,
            sock: sock.clone(),
        };
        monoio::spawn(self.clone().serve_flow(id, ends, inbox, permit));
    }

    /// A datagram of `key` that would have started a flow is dropped instead, for
    /// `kind`; the first of a spell of such (see [`TurnedAway`]) also counts as a
    /// connection opened and failed, as a refused TCP user does, so that failed is
    /// never more than total.
    fn turned_away(&self, flows: &mut Flows, key: FlowKey, kind: ErrorKind) {
        let stats = &self.core.stats;
        stats.datagrams_dropped.fetch_add(1, Relaxed);
        if flows.turned.begins(key, kind, Instant::now()) {
            stats.opened.fetch_add(1, Relaxed);
            stats.fail(kind);
        }
    }

    /// One flow, from its first datagram until it ends.
    async fn serve_flow(self: Rc<Self>, id: u64, ends: Ends, rx: Inbox, permit: Permit) {
        let peer = ends.peer;
        let core = &self.core;
        let (counters, kill_rx, started) = self.open_entry(id, peer, true);
        debug!(conn = id, %peer, tunnel = %self.spec.tunnel, "udp flow opened");
        let run = Box::pin(self.run_flow(id, &ends, rx, &counters, kill_rx, started)).await;
        // A flow that ends is not served for that: its first answer was (see
        // `relay_flow`); one never answered says nothing of the source.
        if let Err((ErrorKind::OpenFailed, reason)) = &run {
            let router = self.core.conns.router_of(id);
            self.spec.link.open_refused(router, reason);
        }
        if let Err((kind, reason)) = run {
            core.stats.fail(kind);
            let held = if super::unserved(kind) {
                // Every datagram of a sender without a flow tries again: say it once
                // in a while.
                self.flows.borrow().failures.admit()
            } else {
                Some(0)
            };
            // A flow closed on purpose (the tunnel stopping, an operator's kill) is
            // noted; a failure is warned about.
            match held {
                Some(_) if kind == ErrorKind::Killed => {
                    info!(conn = id, %peer, tunnel = %self.spec.tunnel, "udp flow closed: {reason}");
                }
                Some(held) => {
                    warn!(conn = id, %peer, tunnel = %self.spec.tunnel, "udp flow closed: {reason}{}", held_note(held));
                }
                None => {}
            }
        }
        self.close_entry(id, started);
        drop(permit);
        let key = (peer, ends.local.map(|d| d.addr));
        let mut flows = self.flows.borrow_mut();
        if flows.by_ends.get(&key).is_some_and(|f| f.id == id) {
            flows.by_ends.remove(&key);
        }
        debug!(
            conn = id,
            up = counters.up.get(),
            down = counters.down.get(),
            secs = started.elapsed().as_secs_f64(),
            "udp flow closed"
        );
    }

    /// A flow on a channel of its own: `OpenDatagrams`, then datagrams both ways until
    /// the flow is quiet for the idle timeout (or the tunnel stops).
    async fn run_flow(
        &self,
        id: u64,
        ends: &Ends,
        rx: Inbox,
        counters: &ConnCounters,
        kill: KillReceiver,
        opened: Instant,
    ) -> Result<(), (ErrorKind, String)> {
        let Ends { peer, local, sock } = ends;
        let (peer, sock) = (*peer, &**sock);
        let proxy = match self.spec.proxy_protocol {
            Some(v) => Some(
                sock.local_addr()
                    .map(|bound| match local {
                        Some(to) => SocketAddr::new(to.addr, bound.port()),
                        None => bound,
                    })
                    .and_then(|local| v.datagram_header(peer, local))
                    .map_err(|e| {
                        let why = format!("cannot write its PROXY protocol header: {e}");
                        (ErrorKind::Plain, why)
                    })?,
            ),
            None => None,
        };
        let link = self.channel().await?;
        let user = Upstream {
            rx,
            proxy: proxy.as_deref().unwrap_or_default(),
            router: link.epoch().router,
            opened,
        };
        self.core.conns.set_rides(id, Rides::Link(link.epoch()));
        let _riding = self.spec.link.ride(link.epoch().router);
        let open = Message::OpenDatagrams {
            target: self.spec.target.clone(),
        };
        let back = Deliver {
            sources: None,
            sock,
            to: Some(peer),
            from: *local,
            dropped: &self.core.stats.datagrams_dropped,
        };
        match link {
            Link::Tls(mut ch) => {
                ch.send(open).await.map_err(channel_failed)?;
                let stop = {
                    let Channel {
                        sock: chan,
                        tls,
                        decoder,
                        backlog,
                        ..
                    } = &mut *ch;
                    let (chan, tls) = (&*chan, &*tls);
                    let from = Inbound::Tls {
                        sock: chan,
                        tls,
                        decoder,
                        backlog,
                    };
                    let to = Carrier::Tls(chan, tls);
                    self.relay_flow(user, counters, kill, back, from, to)
                        .await
                        .err()
                };
                self.finish(ch, stop, "the user's socket").await
            }
            Link::Plain(mut ch) => {
                if ch.wire() != Wire::Framed {
                    let why = format!(
                        "the router speaks protocol {} on the plain transport, and UDP over \
                         it needs 5: upgrade the router, or use the TLS transport",
                        ch.version
                    );
                    return Err((ErrorKind::Channel, why));
                }
                let have = std::mem::take(&mut ch.leftover);
                send_frame(&ch.sock, &open).await.map_err(channel_failed)?;
                let chan = &ch.sock;
                let from = Inbound::Plain { sock: chan, have };
                let to = Carrier::Plain(chan);
                match self.relay_flow(user, counters, kill, back, from, to).await {
                    // The router sends nothing after its `Eof` unasked.
                    Ok(next) => {
                        if next.is_empty() && !self.core.stopping.get() {
                            self.reuse(Link::Plain(ch));
                        }
                        Ok(())
                    }
                    Err(stop) => {
                        let (reason, notice) = stopped(&stop, "the user's socket");
                        if let Some(reset) = notice {
                            send_best_effort(chan, &Message::Reset(reset)).await;
                        }
                        Err((stop.kind(), reason))
                    }
                }
            }
        }
    }

    /// Carries a flow's datagrams both ways until it ends: the user's, queued in
    /// `user`, out on `to`; the router's, from `from`, to the user (`back`). Ok with
    /// what a plain channel read past the router's `Eof`.
    async fn relay_flow(
        &self,
        user: Upstream<'_>,
        counters: &ConnCounters,
        kill: KillReceiver,
        back: Deliver<'_>,
        from: Inbound<'_>,
        to: Carrier<'_>,
    ) -> Result<Vec<u8>, Stop> {
        let idle = self
            .spec
            .udp
            .map_or(Duration::from_secs(60), |u| u.idle_timeout);
        let last = Cell::new(Instant::now());
        let stats = &self.core.stats;
        let bandwidth = self.spec.bandwidth.as_ref();
        // The datagrams sent before the router opens the flow count once it does.
        let to_router = Meter {
            conn: &counters.up,
            core: &stats.bytes_up,
            limit: bandwidth.map(|b| &b.up),
            unanswered: Some(&counters.unanswered),
        };
        let Upstream {
            mut rx,
            proxy,
            router,
            opened,
        } = user;
        // The router says the source refuses: the tunnel's status shows it until an
        // answer comes, to this flow or a later one. The first answer of a flow says
        // the source serves since the flow opened.
        let refused_at = Cell::new(None);
        let answered = Cell::new(false);
        let heard = |news: Heard<'_>| match news {
            Heard::Refused(r) => {
                stats.udp_source_refusals.fetch_add(1, Relaxed);
                self.spec.link.open_refused(Some(router), &r.message);
                refused_at.set(Some(Instant::now()));
                if let Some(held) = self.flows.borrow().refusals.admit() {
                    let note = match held {
                        0 => String::new(),
                        n => format!(" ({n} more such reports since the last)"),
                    };
                    warn!(tunnel = %self.spec.tunnel, "udp flow: {}{note}", r.message);
                }
            }
            Heard::Answered => {
                if !answered.replace(true) {
                    self.spec.link.stream_served(opened);
                }
                if let Some(at) = refused_at.take() {
                    self.spec.link.stream_served(at);
                }
            }
        };
        let dropped = &stats.datagrams_dropped;
        // Each datagram into the batch, behind the PROXY header if there is one, once
        // paid for under a bandwidth limit (`wait`: how long the batch must wait for
        // its turn); one that does not fit behind the header, or would wait too
        // long, is dropped and counted.
        let push = |framed: &mut Framed, wait: &mut Duration, d: &[u8]| {
            if !fits(proxy, d) {
                dropped.fetch_add(1, Relaxed);
            } else if paid(&to_router, d.len(), wait, dropped) {
                framed.push_after(proxy, d);
            }
        };
        let up = async {
            loop {
                let wait = idle.saturating_sub(last.get().elapsed());
                let first = match monoio::time::timeout(wait, rx.next()).await {
                    Ok(Some(d)) => d,
                    Ok(None) => break, // the tunnel is stopping
                    Err(_) if last.get().elapsed() >= idle => break,
                    Err(_) => continue, // a reply came meanwhile: wait again
                };
                last.set(Instant::now());
                let mut framed = Framed::new();
                let mut wait = Duration::ZERO;
                push(&mut framed, &mut wait, &first);
                while !framed.is_full() {
                    match rx.try_next() {
                        Some(d) => push(&mut framed, &mut wait, &d),
                        None => break,
                    }
                }
                if framed.is_empty() {
                    continue; // every one dropped
                }
                framed.wait_turn(wait).await;
                let payload = framed.send(to).await?;
                to_router.add(payload);
            }
            // The end of the flow. A datagram that slipped in as the idle timer fired
            // still goes; the router answers with its Eof.
            rx.rx.close();
            let mut last_batch = Framed::new();
            let mut wait = Duration::ZERO;
            while let Some(d) = rx.try_next() {
                push(&mut last_batch, &mut wait, &d);
            }
            last_batch.wait_turn(wait).await;
            let payload = last_batch.payload;
            last_batch.push_message(&Message::Eof);
            last_batch.send(to).await?;
            to_router.add(payload);
            Ok::<(), Stop>(())
        };
        let down = down(
            Side::Client,
            from,
            back,
            Meter {
                conn: &counters.down,
                core: &stats.bytes_down,
                limit: bandwidth.map(|b| &b.down),
                unanswered: None,
            },
            Some(to_router),
            Some(&heard),
            &last,
        );
        let both = try_join(up, down);
        futures::pin_mut!(both);
        match select(both, kill).await {
            Either::Left((Ok(((), next)), _)) => Ok(next),
            Either::Left((Err(stop), _)) => Err(stop),
            Either::Right((why, _)) => {
                Err(Stop::Killed(why.unwrap_or_else(|_| {
                    Closing::killed("closed by the data plane")
                })))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sender_turned_away_counts_once_a_spell() {
        let mut turned = TurnedAway::default();
        let t0 = Instant::now();
        let a: FlowKey = ("10.0.0.1:5000".parse().unwrap(), None);
        let b: FlowKey = ("10.0.0.2:5000".parse().unwrap(), None);
        let away = ErrorKind::RouterUnreachable;
        assert!(turned.begins(a, away, t0));
        // Its next datagrams, each within the spell of the one before, go on with it.
        let second = Duration::from_secs(1);
        for k in 1..30 {
            assert!(!turned.begins(a, away, t0 + second * k));
        }
        assert!(turned.begins(b, away, t0 + second), "another sender");
        // Another reason is another refusal.
        let later = t0 + second * 30;
        assert!(turned.begins(a, ErrorKind::LimitReached, later));
        // A pause of the spell's length ends it.
        assert!(turned.begins(a, ErrorKind::LimitReached, later + TURNED_AWAY_SPELL));
        // A flow started: its next refusal counts.
        turned.forget(&a);
        assert!(turned.begins(a, ErrorKind::LimitReached, later + TURNED_AWAY_SPELL));
    }

    #[test]
    fn senders_turned_away_are_remembered_within_bounds() {
        let mut turned = TurnedAway::default();
        let t0 = Instant::now();
        let key = |i: usize| -> FlowKey {
            (
                SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 5000)),
                None,
            )
        };
        let away = ErrorKind::RouterUnreachable;
        for i in 0..TURNED_AWAY_KEPT {
            assert!(turned.begins(key(i), away, t0));
        }
        // Full, every spell still on: all forgotten to make room.
        let now = t0 + Duration::from_secs(1);
        assert!(turned.begins(key(TURNED_AWAY_KEPT), away, now));
        assert_eq!(turned.0.len(), 1);
        // Full again, with spells over: only those are forgotten.
        for i in 0..TURNED_AWAY_KEPT - 1 {
            assert!(turned.begins(key(i), away, now + TURNED_AWAY_SPELL * u32::from(i < 10)));
        }
        let last = now + TURNED_AWAY_SPELL * 3 / 2;
        assert!(turned.begins(key(TURNED_AWAY_KEPT + 1), away, last));
        assert_eq!(
            turned.0.len(),
            11,
            "the ten of spells still on, and the new one"
        );
        assert!(
            !turned.begins(key(3), away, last),
            "its spell (at {:?}) is on",
            TURNED_AWAY_SPELL
        );
    }

    #[test]
    fn a_flow_and_its_core_have_byte_budgets() {
        let core = Rc::new(Cell::new(0));
        let a = Queued {
            flow: Rc::default(),
            core: core.clone(),
        };
        let b = Queued {
            flow: Rc::default(),
            core: core.clone(),
        };
        let most = FLOW_QUEUE_BYTES - DATAGRAM_OVERHEAD;
        // One flow: up to its own budget, not a byte more.
        assert!(a.has_room(most) && !a.has_room(most + 1));
        a.add(most - 10 - DATAGRAM_OVERHEAD);
        assert!(a.has_room(10) && !a.has_room(11));
        assert!(b.has_room(most), "another flow has its own");
        a.took(most - 10 - DATAGRAM_OVERHEAD);
        assert_eq!((a.flow.get(), core.get()), (0, 0));
        // The core: all flows together.
        core.set(CORE_QUEUE_BYTES - 100 - DATAGRAM_OVERHEAD);
        assert!(b.has_room(100) && !b.has_room(101));
    }

    /// Empty datagrams are not free: a flood of them fills the flow's budget as its
    /// queue's memory does.
    #[test]
    fn empty_datagrams_count_against_the_budgets() {
        let a = Queued {
            flow: Rc::default(),
            core: Rc::default(),
        };
        let mut queued = 0;
        while a.has_room(0) {
            a.add(0);
            queued += 1;
        }
        assert_eq!(queued, FLOW_QUEUE_BYTES / DATAGRAM_OVERHEAD);
    }

    #[test]
    fn what_a_flow_leaves_queued_stops_counting_when_it_ends() {
        let core = Rc::new(Cell::new(0));
        let queue = Queued {
            flow: Rc::default(),
            core: core.clone(),
        };
        let (tx, rx) = mpsc::unbounded();
        for d in [vec![1u8; 100], vec![2u8; 50]] {
            queue.add(d.len());
            tx.unbounded_send(d).unwrap();
        }
        let mut inbox = Inbox {
            rx,
            queue: queue.clone(),
        };
        assert_eq!(inbox.try_next().map(|d| d.len()), Some(100));
        assert_eq!(core.get(), 50 + DATAGRAM_OVERHEAD);
        drop(inbox);
        assert_eq!((queue.flow.get(), core.get()), (0, 0));
        assert!(
            tx.unbounded_send(vec![3]).is_err(),
            "the dispatcher sees the flow ended"
        );
    }
}
