//! The router side of a worker: serve data channels. Each waits for `Open`, checks
//! the router's policy, connects the source, answers `Opened` or `OpenFailed`, relays,
//! and waits for the next `Open` when the stream ended cleanly.

use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use conduit_proto::{Message, PublicKey, Refusal, RefusalCode};
use futures::channel::oneshot;
use monoio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::channel::{Channel, ChannelError};
use crate::handoff::ChannelHandoff;
use crate::limit::{Permit, Throttle, held_note, open_connections};
use crate::net::Socket;
use crate::offload;
use crate::plain::{
    Ending, PlainChannel, Wire, frames_in, frames_out, pump, read_frame, send_frame,
};
use crate::relay::{Relay, Side, Stop};
use crate::stats::{Closing, ConnCounters, ConnEntry, ErrorKind, KillReceiver, Meter, Rides};
use crate::usage::NO_KEY;
use crate::worker::Core;
use crate::{LOOKUP_WAIT, canonical_target};
use crate::{RouterSpec, SourceProtocol};

mod udp;

pub(crate) struct RouterCore {
    core: Rc<Core>,
    spec: Arc<RouterSpec>,
    /// Keeps refusals at the connection limit, or to a source that is down, from
    /// flooding the log.
    refusals: Throttle,
}

impl RouterCore {
    pub(crate) fn new(core: Rc<Core>, spec: Arc<RouterSpec>) -> Self {
        Self {
            core,
            spec,
            refusals: Throttle::reporting(Duration::from_secs(1), "opens refused", true),
        }
    }

    pub(crate) fn serve(self: &Rc<Self>, h: ChannelHandoff) {
        let peer = h.peer_addr;
        if h.tls.is_none() {
            match PlainChannel::adopt(h) {
                Ok(ch) => {
                    ch.sock.size_buffers(&self.spec.sockets);
                    monoio::spawn(self.clone().plain_stream(ch, peer));
                }
                Err(e) => warn!(%peer, "cannot adopt a channel: {e}"),
            }
            return;
        }
        match Channel::adopt(h) {
            Ok(ch) => {
                ch.sock.size_buffers(&self.spec.sockets);
                // Boxed: the task's future then holds a pointer, not two copies.
                monoio::spawn(self.clone().channel_loop(Box::new(ch), peer));
            }
            Err(e) => warn!(%peer, "cannot adopt a channel: {e}"),
        }
    }

    /// The buckets a stream of `client` draws from, when the router limits clients.
    fn bandwidth_of(
        &self,
        client: Option<&PublicKey>,
    ) -> Option<std::sync::Arc<crate::ratelimit::Bandwidth>> {
        let per = self.spec.bandwidth.as_ref()?;
        Some(per.of(client.unwrap_or(&NO_KEY)))
    }

    /// Checks the allow-list and the connection limit and connects the source for one
    /// `Open`; on failure the refusal to send back (already logged and counted). The
    /// permit holds the stream's place under `--max-connections` until dropped.
    async fn open_source(
        &self,
        id: u64,
        peer: SocketAddr,
        client: Option<&PublicKey>,
        target: &str,
    ) -> Result<(Socket, Permit), Refusal> {
        self.lookups(client, target).await;
        let (addrs, permit) = self.admit(id, peer, client, target, SourceProtocol::Tcp)?;
        for member in crate::source_members(target) {
            self.core.usage.source_used(member);
        }
        if let Err(refusal) = self.spec.policy.gate(target) {
            if let Some(held) = self.refusals.admit() {
                let who = describe(client);
                warn!(conn = id, %peer, client = %who, %target, "open refused: {}{}", refusal.message, held_note(held));
            }
            self.failed_open(client, ErrorKind::SourceUnreachable);
            return Err(refusal);
        }
        match connect(&addrs, self.spec.connect_timeout, &self.spec.sockets).await {
            Ok((s, addr)) => {
                self.spec.policy.connected(target, addr);
                Ok((s, permit))
            }
            Err(e) => {
                self.spec.policy.not_connected(target, &e);
                let message = format!("the router could not connect to source {target}: {e}");
                Err(self.refused(id, peer, client, ErrorKind::SourceUnreachable, message))
            }
        }
    }

    /// Waits (at most [`LOOKUP_WAIT`]) for the name lookups `target` needs, which
    /// run off this worker: its other streams go on meanwhile.
    pub(crate) async fn lookups(&self, client: Option<&PublicKey>, target: &str) {
        if let Some(done) = self.spec.policy.lookups(client, target) {
            let all = async { while done.recv_async().await.is_ok() {} };
            let _ = monoio::time::timeout(LOOKUP_WAIT, all).await;
        }
    }

    /// Counts an opening stream, then checks the allow-list and the connection limit:
    /// the addresses to try and the stream's permit, or the refusal to send back
    /// (logged and counted).
    fn admit(
        &self,
        id: u64,
        peer: SocketAddr,
        client: Option<&PublicKey>,
        target: &str,
        protocol: SourceProtocol,
    ) -> Result<(Vec<SocketAddr>, Permit), Refusal> {
        let core = &self.core;
        core.stats.opened.fetch_add(1, Relaxed);
        core.usage.opened(&client.copied().unwrap_or(NO_KEY));
        let addrs = match self.spec.policy.resolve(client, target, protocol) {
            Ok(a) => a,
            Err(refusal) => {
                let who = describe(client);
                warn!(conn = id, %peer, client = %who, %target, "open refused: {}", refusal.message);
                self.failed_open(client, ErrorKind::PolicyRefused);
                return Err(refusal);
            }
        };
        let Some(permit) = self.spec.limit.try_acquire() else {
            let max = self.spec.limit.max();
            let message = format!(
                "the router's limit of {} is reached; \
                 raise --max-connections (now {max}) on the router to allow more",
                open_connections(max)
            );
            if let Some(held) = self.refusals.admit() {
                let who = describe(client);
                warn!(conn = id, %peer, client = %who, %target, "open refused: {message}{}", held_note(held));
            }
            self.failed_open(client, ErrorKind::LimitReached);
            return Err(Refusal::new(RefusalCode::LimitReached, message));
        };
        Ok((addrs, permit))
    }

    /// Counts an admitted stream that could not start, and logs why.
    fn refused(
        &self,
        id: u64,
        peer: SocketAddr,
        client: Option<&PublicKey>,
        kind: ErrorKind,
        message: String,
    ) -> Refusal {
        warn!(conn = id, %peer, client = %describe(client), "{message}");
        self.failed_open(client, kind);
        Refusal::new(RefusalCode::SourceUnreachable, message)
    }

    fn failed_open(&self, client: Option<&PublicKey>, kind: ErrorKind) {
        self.core.stats.fail(kind);
        self.core
            .usage
            .ended(&client.copied().unwrap_or(NO_KEY), 0, 0, true);
    }

    /// Answers the client's request for stream or flow `id` (`what` names it in the
    /// log): `OpenFailed` with the refusal, or `Opened`. What was opened, if the
    /// stream goes on; `None` when it was refused or the channel failed first (that
    /// logged and counted here, a refusal already where it was made).
    async fn answer_open<T>(
        &self,
        ch: &Channel,
        id: u64,
        what: &str,
        opened: Result<T, Refusal>,
    ) -> Option<T> {
        let opened = match opened {
            Ok(o) => o,
            Err(refusal) => {
                let _ = ch.send(Message::OpenFailed(refusal)).await;
                return None;
            }
        };
        match ch.send(Message::Opened).await {
            Ok(()) => Some(opened),
            Err(e) => {
                debug!(conn = id, "channel failed before the {what} started: {e}");
                self.failed_open(ch.peer_key.as_ref(), ErrorKind::Channel);
                None
            }
        }
    }

    /// Registers an open stream in this core's table; returns its counters and the
    /// receiver of a kill order.
    fn track(
        &self,
        id: u64,
        peer: SocketAddr,
        client: Option<PublicKey>,
        tunnel: &Rc<str>,
        target: &Rc<str>,
        datagrams: bool,
    ) -> (Rc<ConnCounters>, KillReceiver) {
        let core = &self.core;
        core.stats.open_one();
        let counters = Rc::new(ConnCounters::default());
        let (kill_tx, kill_rx) = oneshot::channel();
        let mut entry = ConnEntry::new(
            Some(peer),
            target.clone(),
            counters.clone(),
            kill_tx,
            datagrams,
        );
        entry.rides = Rides::Client(client.unwrap_or(NO_KEY), tunnel.clone());
        core.conns.insert(id, entry);
        // Which client and tunnel: a stream's id is this router's own, not the
        // tunnel's (`conn=` differs between their logs).
        debug!(conn = id, %peer, %target, client = %describe(client.as_ref()), %tunnel, "stream opened");
        (counters, kill_rx)
    }

    /// Takes a tracked stream out of the table: its duration, its client's tally and,
    /// if it failed, the error's kind.
    fn untrack(&self, id: u64, client: Option<PublicKey>, failed: Option<ErrorKind>) {
        let core = &self.core;
        core.stats.active.fetch_sub(1, Relaxed);
        if let Some((started, up, down)) = core.conns.remove(id) {
            core.stats.durations.observe(started.elapsed());
            // A stream closed for its silence did not fail (see `Totals::failed`).
            let failed = failed.is_some_and(|k| k != ErrorKind::IdleTimeout);
            core.usage
                .ended(&client.unwrap_or(NO_KEY), up, down, failed);
        }
        if let Some(kind) = failed {
            core.stats.fail(kind);
        }
    }

    /// A plain channel: `Open`, the source, `Opened`, then splice; again for the next
    /// stream while the channel frames its streams (protocol 5) and each ends cleanly.
    /// Such a channel may carry a UDP flow (`OpenDatagrams`) as well.
    async fn plain_stream(self: Rc<Self>, ch: PlainChannel, peer: SocketAddr) {
        let wire = ch.wire();
        let PlainChannel {
            sock,
            peer_key,
            tunnel,
            mut leftover,
            version,
            ..
        } = ch;
        loop {
            let first = Box::pin(monoio::time::timeout(
                self.spec.idle_timeout,
                read_frame(&sock, std::mem::take(&mut leftover)),
            ))
            .await;
            let (target, rest, asked) = match first {
                Ok(Ok((Message::Open { target }, rest))) => (
                    Rc::<str>::from(canonical_target(target)),
                    rest,
                    Asked::Stream,
                ),
                Ok(Ok((Message::OpenDatagrams { target }, rest))) if wire == Wire::Framed => (
                    Rc::<str>::from(canonical_target(target)),
                    rest,
                    Asked::Datagrams,
                ),
                Ok(Ok((Message::Goodbye(_), _))) | Ok(Err(ChannelError::Closed)) => return,
                Ok(Ok((Message::OpenDatagrams { .. }, _))) => {
                    let refusal = Refusal::new(
                        RefusalCode::PolicyDenied,
                        "UDP over the plain transport needs protocol 5 on both ends; \
                         upgrade the client, or use the TLS transport",
                    );
                    let _ = send_frame(&sock, &Message::OpenFailed(refusal)).await;
                    return;
                }
                Err(_) => {
                    debug!(%peer, "idle plain channel timed out");
                    return;
                }
                // As on a TLS channel: a stream ended here whose user went away
                // before the client had written it all (a reset channel says the
                // same where the stream had gone raw).
                Ok(Ok((Message::Reset(r), _))) => {
                    debug!(%peer, "the client reset a stream already ended here: {}", r.message);
                    return;
                }
                Ok(Err(ChannelError::Io(e))) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    debug!(%peer, "the client reset a plain channel whose stream had ended here");
                    return;
                }
                Ok(Ok((other, _))) => {
                    warn!(%peer, "protocol error: {} on an idle plain channel; closing it", other.name());
                    return;
                }
                Ok(Err(e)) => {
                    warn!(%peer, "plain channel error: {e}; closing it");
                    return;
                }
            };
            let core = &self.core;
            let id = core.next_conn_id();
            if core.stopping.get() {
                let refusal =
                    Refusal::new(RefusalCode::ShuttingDown, "the router is shutting down");
                let _ = send_frame(&sock, &Message::OpenFailed(refusal)).await;
                return;
            }
            let of = StreamOf {
                id,
                peer,
                client: peer_key,
                tunnel: &tunnel,
                target: &target,
            };
            if matches!(asked, Asked::Datagrams) {
                match Box::pin(self.plain_datagram_flow(&sock, &of, rest, version)).await {
                    Some(next) if !core.stopping.get() => leftover = next,
                    _ => return,
                }
                continue;
            }
            let opened = self.open_source(id, peer, peer_key.as_ref(), &target).await;
            let (source, _permit) = match opened {
                Ok(s) => s,
                Err(refusal) => {
                    let _ = send_frame(&sock, &Message::OpenFailed(refusal)).await;
                    return;
                }
            };
            if send_frame(&sock, &Message::Opened).await.is_err() {
                return;
            }
            let reusable = self.splice_both(&of, &sock, &source, wire, &rest).await;
            match reusable {
                Some(next) if !core.stopping.get() => leftover = next,
                _ => return,
            }
        }
    }

    /// Why a stream the client offered to kernel TLS stays in userspace, if it does;
    /// `None` readies the channel's socket for the hand-over.
    fn kernel_refusal(&self, ch: &Channel) -> Option<&'static str> {
        if !self.spec.sockets.kernel_tls {
            Some("kernel_tls is off on this router")
        } else if !ch.is_clean() {
            // Nothing may wait in userspace when the keys move (see offload.rs).
            Some("the channel holds bytes not yet relayed")
        } else if !offload::attach(&ch.sock) {
            Some("this host's kernel has no kTLS (modprobe tls)")
        } else {
            None
        }
    }

    /// One stream the client offered to kernel TLS, on a channel ready for it: the
    /// source, `OpenedKernel`, the keys to the kernel, then splice both ways.
    async fn kernel_stream(&self, ch: Box<Channel>, peer: SocketAddr, target: String) {
        let target = Rc::<str>::from(target);
        let id = self.core.next_conn_id();
        let opened = Box::pin(self.open_source(id, peer, ch.peer_key.as_ref(), &target)).await;
        let (source, _permit) = match opened {
            Ok(o) => o,
            Err(refusal) => {
                let _ = ch.send(Message::OpenFailed(refusal)).await;
                return;
            }
        };
        if let Err(e) = ch.send(Message::OpenedKernel).await {
            debug!(conn = id, "channel failed before the stream started: {e}");
            self.failed_open(ch.peer_key.as_ref(), ErrorKind::Channel);
            return;
        }
        let Channel {
            sock,
            tls,
            peer_key,
            tunnel,
            ..
        } = *ch;
        if let Err(e) = offload::hand_over(&sock, tls.into_inner()) {
            warn!(conn = id, %peer, client = %describe(peer_key.as_ref()), "stream closed: {e}");
            self.failed_open(peer_key.as_ref(), ErrorKind::Channel);
            source.abort();
            sock.abort();
            return;
        }
        self.core.stats.kernel_tls.fetch_add(1, Relaxed);
        debug!(conn = id, "stream relayed through kernel TLS");
        let of = StreamOf {
            id,
            peer,
            client: peer_key,
            tunnel: &tunnel,
            target: &target,
        };
        self.splice_both(&of, &sock, &source, Wire::KernelTls, &[])
            .await;
    }

    /// Splices one stream both ways between a channel that carries raw payload
    /// (`wire` says how) and its source, from tracking it to its end. `pre` is what
    /// of the stream arrived with `Open`. When the channel can carry another stream
    /// (it ended cleanly, framed both ways), what was read of it already.
    async fn splice_both(
        &self,
        of: &StreamOf<'_>,
        sock: &Socket,
        source: &Socket,
        wire: Wire,
        pre: &[u8],
    ) -> Option<Vec<u8>> {
        let StreamOf {
            id,
            peer,
            client: peer_key,
            tunnel,
            target,
        } = *of;
        let core = &self.core;
        if wire == Wire::Plain {
            // Raw both ways, ended by FIN alone.
            sock.reset_on_close();
        }
        let (counters, kill) = self.track(id, peer, peer_key, tunnel, target, false);
        let bandwidth = self.bandwidth_of(peer_key.as_ref());
        let to_source = Meter {
            conn: &counters.up,
            core: &core.stats.bytes_up,
            limit: bandwidth.as_ref().map(|b| &b.up),
            unanswered: None,
        };
        let to_client = Meter {
            conn: &counters.down,
            core: &core.stats.bytes_down,
            limit: bandwidth.as_ref().map(|b| &b.down),
            unanswered: None,
        };
        let up = async {
            if wire == Wire::Framed {
                return Ok(match frames_in(sock, source, pre, to_source).await? {
                    (Ending::Eof, next) => Some(next),
                    (Ending::Fin, _) => None,
                });
            }
            to_source.send_all(source, pre).await.map_err(Stop::Plain)?;
            pump(sock, source, true, wire, to_source)
                .await
                .map(|()| None)
        };
        let down = async {
            if wire == Wire::Framed {
                Ok(frames_out(source, sock, to_client).await? == Ending::Eof)
            } else {
                pump(source, sock, false, wire, to_client)
                    .await
                    .map(|()| false)
            }
        };
        let both = futures::future::try_join(up, down);
        futures::pin_mut!(both);
        let mut reusable = None;
        let watch = counters.watch([source.raw_fd(), sock.raw_fd()]);
        let stop = match futures::future::select(both, kill).await {
            futures::future::Either::Left((Ok((next, down)), _)) => {
                reusable = next.filter(|_| down);
                if reusable.is_none() {
                    sock.close_orderly();
                }
                source.close_orderly();
                None
            }
            futures::future::Either::Left((Err(stop), _)) => Some(stop),
            futures::future::Either::Right((why, _)) => {
                Some(Stop::Killed(why.unwrap_or_else(|_| {
                    Closing::killed("the router is stopping")
                })))
            }
        };
        drop(watch);
        self.untrack(id, peer_key, stop.as_ref().map(Stop::kind));
        if let Some(stop) = stop {
            let how = match wire {
                Wire::Plain | Wire::Framed => "plain stream",
                Wire::KernelTls => "kernel TLS stream",
            };
            let why = match &stop {
                // Closed on purpose (idle, the operator, a stop): said as the
                // userspace relay says it, not warned about.
                Stop::Killed(closing) => {
                    closed(id, peer, target, closing);
                    None
                }
                Stop::Plain(e) => Some(format!("the source connection failed: {e}")),
                // The tunnel's doing (a user's connection that failed or went idle):
                // its log says why; noted, not warned about.
                Stop::Channel(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    info!(
                        conn = id, %peer, %target,
                        "{how} ended: the channel from the tunnel was reset: {e} (a tunnel resets \
                         it when its user's connection fails, goes idle or it aborts the stream; \
                         if it still runs, its log says why)"
                    );
                    None
                }
                other => Some(other.to_string()),
            };
            if let Some(why) = why {
                warn!(conn = id, %peer, %target, "{how} failed: {why}");
            }
            source.abort();
            sock.abort();
        }
        debug!(
            conn = id,
            client = %describe(peer_key.as_ref()),
            %tunnel,
            to_source = counters.up.get(),
            from_source = counters.down.get(),
            "stream closed"
        );
        reusable
    }

    async fn channel_loop(self: Rc<Self>, mut ch: Box<Channel>, peer: SocketAddr) {
        loop {
            // Boxed: a timer is large and cache-line aligned, and inline it would size
            // and align the whole task, which lives as long as its channel.
            let idle = Box::pin(monoio::time::timeout(
                self.spec.idle_timeout,
                ch.next_message(),
            ))
            .await;
            let target = match idle {
                Err(_) => {
                    debug!(%peer, "idle channel timed out");
                    let _ = ch
                        .send(Message::Goodbye(Refusal::new(
                            RefusalCode::ShuttingDown,
                            "idle channel closed by the router",
                        )))
                        .await;
                    return;
                }
                Ok(Ok(Some(Message::Open { target }))) => (target, Asked::Stream),
                Ok(Ok(Some(Message::OpenDatagrams { target }))) => (target, Asked::Datagrams),
                Ok(Ok(Some(Message::OpenKernel { target }))) => (target, Asked::KernelStream),
                Ok(Ok(Some(Message::Goodbye(_)))) | Ok(Ok(None)) => return,
                // A race, not a fault: the stream ended cleanly here, and its user
                // went away before the client had written it all.
                Ok(Ok(Some(Message::Reset(r)))) => {
                    debug!(%peer, "the client reset a stream already ended here: {}", r.message);
                    continue;
                }
                Ok(Ok(Some(other))) => {
                    warn!(%peer, client = %unauthenticated_or(ch.peer_key.as_ref()), "protocol error: {} on an idle channel; closing it", other.name());
                    return;
                }
                Ok(Err(ChannelError::Closed)) => return,
                Ok(Err(e)) => {
                    warn!(%peer, client = %unauthenticated_or(ch.peer_key.as_ref()), "channel error: {e}; closing it");
                    return;
                }
            };
            let (target, asked) = target;
            let target = canonical_target(target);
            if self.core.stopping.get() {
                let _ = ch
                    .send(Message::OpenFailed(Refusal::new(
                        RefusalCode::ShuttingDown,
                        "the router is shutting down",
                    )))
                    .await;
                return;
            }
            let reusable = match asked {
                Asked::Datagrams => Box::pin(self.datagram_flow(&mut ch, peer, target)).await,
                Asked::KernelStream => match self.kernel_refusal(&ch) {
                    None => return Box::pin(self.kernel_stream(ch, peer, target)).await,
                    // Answered with `Opened`: the client goes on in userspace.
                    Some(why) => {
                        debug!(%peer, "kernel TLS asked for, TLS stays in userspace: {why}");
                        self.stream(&mut ch, peer, target).await
                    }
                },
                Asked::Stream => self.stream(&mut ch, peer, target).await,
            };
            if !reusable {
                return;
            }
        }
    }

    /// Serves one stream; true when the channel can carry another. An `async move`
    /// block, not an `async fn`, which would keep its arguments twice in the task for
    /// as long as the stream lives.
    #[allow(clippy::manual_async_fn)] // on purpose: see above
    fn stream<'a>(
        &'a self,
        ch: &'a mut Channel,
        peer: SocketAddr,
        target: String,
    ) -> impl Future<Output = bool> + 'a {
        async move {
            let target = Rc::<str>::from(target);
            let core = &self.core;
            let id = core.next_conn_id();
            // Boxed: connecting is brief, the relay that follows may last for days.
            let opened = Box::pin(self.open_source(id, peer, ch.peer_key.as_ref(), &target)).await;
            let Some((source, permit)) = self.answer_open(ch, id, "stream", opened).await else {
                return false;
            };
            let (counters, kill_rx) = self.track(id, peer, ch.peer_key, &ch.tunnel, &target, false);
            let bandwidth = self.bandwidth_of(ch.peer_key.as_ref());
            let watch = counters.watch([source.raw_fd(), ch.sock.raw_fd()]);
            // Counters keep the user's point of view: "up" is toward the source.
            let outcome = Relay {
                side: Side::Router,
                plain: &source,
                ch: &mut *ch,
                to_chan: Meter {
                    conn: &counters.down,
                    core: &core.stats.bytes_down,
                    limit: bandwidth.as_ref().map(|b| &b.down),
                    unanswered: None,
                },
                to_plain: Meter {
                    conn: &counters.up,
                    core: &core.stats.bytes_up,
                    limit: bandwidth.as_ref().map(|b| &b.up),
                    unanswered: None,
                },
                chunk: self.spec.sockets.read_chunk,
                writing: &counters.writing,
            }
            .run(kill_rx)
            .await;
            drop(watch);
            self.untrack(id, ch.peer_key, outcome.stop.as_ref().map(Stop::kind));
            drop(permit);
            if outcome.stop.is_some() {
                source.abort();
            } else {
                source.close_orderly();
            }
            let reusable = self
                .ended(ch, id, peer, &target, outcome.stop, "source connection")
                .await;
            debug!(
                conn = id,
                client = %describe(ch.peer_key.as_ref()),
                tunnel = %ch.tunnel,
                to_source = counters.up.get(),
                from_source = counters.down.get(),
                "stream closed"
            );
            reusable
        }
    }
}

/// A stream as the connection table and the logs name it.
struct StreamOf<'a> {
    id: u64,
    peer: SocketAddr,
    client: Option<PublicKey>,
    tunnel: &'a Rc<str>,
    target: &'a Rc<str>,
}

/// What a client asked of an idle channel.
enum Asked {
    Stream,
    Datagrams,
    /// A stream relayed through kernel TLS if this router can (protocol 4).
    KernelStream,
}

/// How a channel's client reads in the router's logs (a TLS channel always has a
/// key; written out only when a line is logged).
fn unauthenticated_or(client: Option<&PublicKey>) -> String {
    client.map_or_else(|| "(unauthenticated)".to_owned(), ToString::to_string)
}

/// How a client key reads in the router's logs.
fn describe(client: Option<&PublicKey>) -> String {
    client.map_or_else(|| "(plain transport)".to_owned(), ToString::to_string)
}

impl RouterCore {
    /// After a stream or flow: logs why it stopped and tells the client, if it did
    /// not end cleanly; true when the channel can carry another (`what` names the
    /// source's socket in messages).
    async fn ended(
        &self,
        ch: &Channel,
        id: u64,
        peer: SocketAddr,
        target: &str,
        stop: Option<Stop>,
        what: &str,
    ) -> bool {
        let Some(stop) = stop else {
            // What is already buffered belongs to the client's next stream.
            return !ch.tls.borrow().peer_closed();
        };
        if let Some(notice) = stopped(id, peer, target, &stop, what) {
            ch.send_best_effort(notice).await;
        }
        false
    }
}

/// Logs a stream closed on purpose: an idle one at debug (each look sums them up at
/// info), one the operator or a stop closed at info.
fn closed(id: u64, peer: SocketAddr, target: &str, closing: &Closing) {
    if closing.kind == ErrorKind::IdleTimeout {
        debug!(conn = id, %peer, %target, "stream closed: {closing}");
    } else {
        info!(conn = id, %peer, %target, "stream closed: {closing}");
    }
}

/// Logs why a stream or flow stopped (`what` names the source's socket); the
/// `Reset` to tell the client, where it cannot know.
fn stopped(id: u64, peer: SocketAddr, target: &str, stop: &Stop, what: &str) -> Option<Message> {
    let why = match stop {
        Stop::Plain(e) => {
            warn!(conn = id, %target, "{what} failed: {e}");
            format!("the {what} failed: {e}")
        }
        Stop::Killed(closing) => {
            closed(id, peer, target, closing);
            return Some(Message::Reset(
                closing.reset(format!("closed by the router: {closing}")),
            ));
        }
        Stop::PeerReset(r) => {
            debug!(conn = id, "client aborted the stream: {}", r.message);
            return None;
        }
        // The client's channel going away mid-stream: most often the client
        // closing it after its user's connection failed (its `Reset` may not have
        // been read yet), which the client's log tells; noted, not warned about.
        Stop::Channel(_) | Stop::ChannelClosed => {
            info!(conn = id, %peer, "stream failed: {stop}");
            return None;
        }
        other => {
            warn!(conn = id, %peer, "stream failed: {other}");
            return None;
        }
    };
    Some(Message::Reset(Refusal::new(RefusalCode::Aborted, why)))
}

/// How long one connect attempt has the source to itself before the next address
/// is tried alongside it (RFC 8305's "connection attempt delay").
const CONNECT_STAGGER: std::time::Duration = std::time::Duration::from_millis(250);

/// Connects to the first of `addrs` that accepts: each address gets `timeout`, the
/// next one starts when the one before fails or has not answered within
/// [`CONNECT_STAGGER`] (so a host that is down costs a stream a quarter of a second,
/// not the whole timeout, when another can serve it), and the first to connect wins
/// (the attempts still running are dropped). The error is the last failure's.
async fn connect(
    addrs: &[SocketAddr],
    timeout: std::time::Duration,
    sockets: &crate::SocketOptions,
) -> std::io::Result<(Socket, SocketAddr)> {
    use futures::StreamExt;
    use futures::stream::FuturesUnordered;

    let attempt = |addr: SocketAddr| async move {
        match monoio::time::timeout(timeout, TcpStream::connect_addr(addr)).await {
            Ok(Ok(s)) => Ok((s, addr)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connection timed out after {timeout:?}"),
            )),
        }
    };
    let ready = |(s, addr): (TcpStream, SocketAddr)| {
        let s = Socket::new(s)?;
        s.tune(sockets);
        // Until the stream ends cleanly: if this process dies, the source sees a
        // reset, not the end of a stream that was cut short.
        s.reset_on_close();
        Ok((s, addr))
    };
    if let [one] = addrs {
        return attempt(*one).await.and_then(ready);
    }
    let mut last =
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to connect to");
    let mut next = addrs.iter();
    let mut running = FuturesUnordered::new();
    loop {
        if let Some(addr) = next.next() {
            running.push(attempt(*addr));
        }
        if running.is_empty() {
            return Err(last);
        }
        let done = if next.len() > 0 {
            monoio::select! {
                d = running.next() => d,
                _ = monoio::time::sleep(CONNECT_STAGGER) => continue,
            }
        } else {
            running.next().await
        };
        match done {
            Some(Ok(connected)) => return ready(connected),
            Some(Err(e)) => last = e,
            None => return Err(last),
        }
    }
}
