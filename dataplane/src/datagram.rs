//! UDP flows over channels: what the client and router ends share.
//!
//! A UDP tunnel carries *flows*: the datagrams between one user address (IP and port)
//! and the source. A flow rides one data channel of its own, opened with
//! `OpenDatagrams`; each datagram travels whole as one `Datagram` frame, so datagram
//! boundaries survive however TLS cuts the stream into records. Several datagrams
//! that are ready at once are sealed together and sent in one write.
//!
//! The client ends a flow when it has been quiet for the tunnel's idle timeout (or the
//! tunnel stops) by sending `Eof`; the router answers with its own `Eof` after the
//! datagrams it already read, and the channel goes back to the client's pool. UDP
//! keeps its own promises and no more: a datagram the source never answers is not an
//! error, and a user that sends faster than the flow's queue drains loses datagrams
//! (counted), as a full socket buffer would.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Poll;
use std::time::{Duration, Instant};

use conduit_proto::frame::{FrameType, HEADER_LEN, Header, MAX_DATAGRAM};
use conduit_proto::{Event, FrameDecoder, Message, ProtoError, Refusal, TlsSession};
use futures::StreamExt;
use futures::channel::{mpsc, oneshot};
use tracing::debug;

use crate::channel::{Held, lend_back, read_tls, seal};
use crate::net::{Destination, Socket, Udp};
use crate::pool;
use crate::relay::{CHUNK, Side, Stop};
use crate::stats::{DropTally, Meter};

mod sources;

pub(crate) use sources::Sources;

/// The most plaintext sealed at once from a batch of datagrams: about four records.
/// A single datagram may exceed it (up to [`MAX_DATAGRAM`]); it is never split.
pub(crate) const BATCH: usize = CHUNK;

/// Room to receive any datagram whole.
pub(crate) const RECV_ROOM: usize = MAX_DATAGRAM as usize;

/// Datagrams framed into one plaintext buffer, waiting to be sealed.
pub(crate) struct Framed {
    buf: Vec<u8>,
    len: usize,
    /// Payload bytes (the datagrams, without frame headers).
    pub(crate) payload: usize,
}

impl Framed {
    pub(crate) fn new() -> Self {
        Self {
            buf: pool::take(),
            len: 0,
            payload: 0,
        }
    }

    /// Appends one datagram as a `Datagram` frame. A datagram longer than UDP allows
    /// cannot come from a socket; it would be cut to the frame limit.
    pub(crate) fn push(&mut self, datagram: &[u8]) {
        let datagram = &datagram[..datagram.len().min(RECV_ROOM)];
        self.push_after(&[], datagram);
    }

    /// Appends one datagram behind `prefix` (a PROXY protocol header) in one
    /// `Datagram` frame; `payload` counts the datagram's bytes only. False, and
    /// nothing appended, when the two do not fit in one datagram.
    pub(crate) fn push_after(&mut self, prefix: &[u8], datagram: &[u8]) -> bool {
        if !fits(prefix, datagram) {
            return false;
        }
        let body = prefix.len() + datagram.len();
        let start = self.len + HEADER_LEN;
        let end = start + body;
        if end > self.buf.len() {
            self.buf.resize(end, 0);
        }
        self.buf[self.len..start].copy_from_slice(&Header::datagram(body));
        self.buf[start..start + prefix.len()].copy_from_slice(prefix);
        self.buf[start + prefix.len()..end].copy_from_slice(datagram);
        self.len = end;
        self.payload += datagram.len();
        true
    }

    /// Appends a control message (the flow's closing `Eof`).
    pub(crate) fn push_message(&mut self, msg: &Message) {
        let frame = msg.to_frame();
        let end = self.len + frame.len();
        if end > self.buf.len() {
            self.buf.resize(end, 0);
        }
        self.buf[self.len..end].copy_from_slice(&frame);
        self.len = end;
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True once another datagram should wait for the next batch.
    pub(crate) fn is_full(&self) -> bool {
        self.len >= BATCH
    }

    /// Moves what was framed out of its pooled buffer into one of its own size,
    /// giving the pooled one back: for a batch about to wait for its turn under a
    /// bandwidth limit, so that each waiting flow holds what it carries, not a
    /// pooled buffer (thousands of flows each waiting with a datagram of a few bytes
    /// would otherwise hold hundreds of megabytes).
    fn shrink(&mut self) {
        if self.buf.len() > self.len {
            let own = self.buf[..self.len].to_vec();
            pool::give(std::mem::replace(&mut self.buf, own));
        }
    }

    /// Waits out what the batch owes a bandwidth limit before it goes (see
    /// [`paid`]), shrunk to what it carries meanwhile.
    pub(crate) async fn wait_turn(&mut self, wait: Duration) {
        if !wait.is_zero() {
            self.shrink();
            // Boxed: only limited tunnels pay for the sleep's state, not every task.
            Box::pin(monoio::time::sleep(wait)).await;
        }
    }

    /// Sends what was framed on the channel (sealed, over TLS); returns the payload
    /// count.
    pub(crate) async fn send(self, to: Carrier<'_>) -> Result<usize, Stop> {
        let Framed { buf, len, payload } = self;
        let sent = match to {
            Carrier::Tls(chan, tls) => seal_and_send(chan, tls, &buf[..len]).await,
            Carrier::Plain(chan) => chan.send_all(&buf[..len]).await.map_err(Stop::Channel),
        };
        pool::give(buf);
        sent.map(|()| payload)
    }
}

/// Whether `datagram` behind `prefix` (a PROXY protocol header) fits one
/// `Datagram` frame.
pub(crate) fn fits(prefix: &[u8], datagram: &[u8]) -> bool {
    prefix.len() + datagram.len() <= RECV_ROOM
}

/// Pays for one datagram of `n` bytes under `meter`'s bandwidth limit before it
/// joins a batch (see [`Meter::charge_datagram`]): true if it goes, with `wait`
/// raised to how long its batch must wait for it; false if it would wait too long
/// and is dropped (counted in `dropped`).
pub(crate) fn paid(meter: &Meter<'_>, n: usize, wait: &mut Duration, dropped: &AtomicU64) -> bool {
    match meter.charge_datagram(n) {
        Some(w) => {
            *wait = (*wait).max(w);
            true
        }
        None => {
            dropped.fetch_add(1, Relaxed);
            false
        }
    }
}

/// Encrypts `plain` and sends it.
async fn seal_and_send(chan: &Socket, tls: &RefCell<TlsSession>, plain: &[u8]) -> Result<(), Stop> {
    let mut out = pool::take();
    let sent = match seal(tls, plain, &mut out) {
        Ok(n) => chan.send_all(&out[..n]).await.map_err(Stop::Channel),
        Err(e) => Err(e.into()),
    };
    pool::give(out);
    sent
}

/// The channel a flow's frames go out on: sealed by its TLS session, or as they are
/// (the plain transport).
#[derive(Clone, Copy)]
pub(crate) enum Carrier<'a> {
    Tls(&'a Socket, &'a RefCell<TlsSession>),
    Plain(&'a Socket),
}

/// Where the datagrams a flow receives from its channel go.
#[derive(Clone, Copy)]
pub(crate) struct Deliver<'a> {
    /// The socket that sends them.
    pub(crate) sock: &'a Udp,
    /// The user's address (client side), or `None` for a socket connected to its
    /// source (router side).
    pub(crate) to: Option<SocketAddr>,
    /// The local address the user sent to, to answer from (client side, on a
    /// socket bound to every address).
    pub(crate) from: Option<Destination>,
    /// The router flow's sources, to move to the next when one refuses.
    pub(crate) sources: Option<&'a Sources>,
    /// Counts the datagrams dropped as too big for their receiver.
    pub(crate) dropped: &'a AtomicU64,
}

/// What one batch of decrypted frames held.
#[derive(Default)]
struct Batch {
    opened: bool,
    eof: bool,
    failed: Option<Refusal>,
    reset: Option<Refusal>,
    bad: Option<ProtoError>,
    /// The latest `SourceRefused`, and whether a datagram came after it.
    refused: Option<Refusal>,
    answered_after: bool,
    /// The datagrams, back to back; `lens` says where each ends.
    bytes: Vec<u8>,
    lens: Vec<usize>,
}

impl Batch {
    /// True once nothing after this point belongs to the flow: its end, or an error.
    fn is_final(&self) -> bool {
        self.eof || self.bad.is_some() || self.failed.is_some() || self.reset.is_some()
    }

    fn on_event(&mut self, ev: Event<'_>, side: Side, later: &mut VecDeque<Held>) {
        if self.bad.is_some() || self.failed.is_some() || self.reset.is_some() {
            return;
        }
        if self.eof {
            // The next flow's or stream's frames (the client reused the channel).
            later.push_back(Held::from_event(ev));
            return;
        }
        let unexpected = |got| ProtoError::Unexpected {
            got,
            expected: "Datagram, Eof or Reset",
        };
        match ev {
            Event::Datagram(d) if self.opened => {
                self.bytes.extend_from_slice(d);
                self.lens.push(d.len());
                self.answered_after = true;
            }
            Event::Message(Message::SourceRefused(r)) if side == Side::Client && self.opened => {
                self.refused = Some(r);
                self.answered_after = false;
            }
            Event::Message(Message::Opened) if side == Side::Client && !self.opened => {
                self.opened = true
            }
            Event::Message(Message::OpenFailed(r)) if side == Side::Client && !self.opened => {
                self.failed = Some(r)
            }
            Event::Message(Message::Eof) if self.opened => self.eof = true,
            Event::Message(Message::Reset(r)) => self.reset = Some(r),
            Event::Datagram(_) => self.bad = Some(unexpected("Datagram before Opened")),
            Event::Data(_) => self.bad = Some(unexpected("Data")),
            Event::Message(m) => self.bad = Some(unexpected(m.name())),
        }
    }
}

/// The channel a flow's frames come in on, with what was read of it already.
pub(crate) enum Inbound<'a> {
    Tls {
        sock: &'a Socket,
        tls: &'a RefCell<TlsSession>,
        decoder: &'a mut FrameDecoder,
        backlog: &'a mut VecDeque<Held>,
    },
    /// `have`: what was read with `OpenDatagrams` or `Opened`.
    Plain { sock: &'a Socket, have: Vec<u8> },
}

/// The channel → socket direction of a flow, on either end: sends each datagram on,
/// and returns at the peer's `Eof` with what a plain channel read past it (see
/// [`down_plain`]). `last` is set whenever a datagram passes (the client's idle
/// clock). `ahead`, on the client: the meter of the datagrams toward the source, told
/// when the router opens the flow (see [`crate::stats::Unanswered`]); `heard`, on
/// the client: told what the router says of the source, and of each answer.
///
/// Under a bandwidth limit, a datagram that must wait for its turn waits in a queue
/// of the flow's while the channel goes on being read, so that those that would wait
/// too long are dropped as they arrive, not after piling up unread in the channel's
/// socket buffers (seconds of them, under a sender far above the limit).
pub(crate) async fn down(
    side: Side,
    from: Inbound<'_>,
    deliver: Deliver<'_>,
    meter: Meter<'_>,
    ahead: Option<Meter<'_>>,
    heard: Option<&dyn Fn(Heard<'_>)>,
    last: &Cell<Instant>,
) -> Result<Vec<u8>, Stop> {
    let mut out = Outlet {
        deliver,
        meter,
        paced: None,
        queued: Cell::new(0),
        heard,
    };
    if meter.limit.is_none() {
        // Nothing waits without a limit: no queue to drive.
        return read_channel(side, from, &out, ahead, last).await;
    }
    let (tx, rx) = mpsc::unbounded();
    out.paced = Some(tx);
    // Boxed: only limited flows carry the queue's state.
    Box::pin(async {
        let read = async {
            let read = read_channel(side, from, &out, ahead, last).await;
            // The queue ends with what was read: the paced sends finish it.
            if let Some(tx) = &out.paced {
                tx.close_channel();
            }
            read
        };
        let (next, ()) = futures::future::try_join(read, paced_sends(rx, &out)).await?;
        Ok(next)
    })
    .await
}

/// Reads the channel until the peer's `Eof` (see [`down`]), sending each datagram
/// through `out`.
async fn read_channel(
    side: Side,
    from: Inbound<'_>,
    out: &Outlet<'_>,
    ahead: Option<Meter<'_>>,
    last: &Cell<Instant>,
) -> Result<Vec<u8>, Stop> {
    match from {
        Inbound::Tls {
            sock,
            tls,
            decoder,
            backlog,
        } => down_tls(side, sock, tls, decoder, backlog, out, ahead, last)
            .await
            .map(|()| Vec::new()),
        Inbound::Plain { sock, have } => down_plain(side, sock, have, out, ahead, last).await,
    }
}

/// Where a flow's datagrams from its channel go: `deliver`, paid for under
/// `meter`'s limit, straight away or, under a limit, when they must wait for their
/// turn (or others wait before them), through `paced` (`queued` of them on their
/// way). `heard` (a client's) learns what the router says of the source.
struct Outlet<'a> {
    deliver: Deliver<'a>,
    meter: Meter<'a>,
    paced: Option<mpsc::UnboundedSender<(Instant, Vec<u8>)>>,
    queued: Cell<usize>,
    heard: Option<&'a dyn Fn(Heard<'_>)>,
}

/// What a client's flow hears of its source.
pub(crate) enum Heard<'a> {
    /// The router says the source refuses the flow's datagrams.
    Refused(&'a Refusal),
    /// A datagram came back from the source.
    Answered,
}

/// Sends the datagrams `down` queued to wait for their turn, each once its time
/// comes, in the order they came; ends when the queue is closed and empty.
async fn paced_sends(
    mut rx: mpsc::UnboundedReceiver<(Instant, Vec<u8>)>,
    out: &Outlet<'_>,
) -> Result<(), Stop> {
    while let Some((at, d)) = rx.next().await {
        let now = Instant::now();
        if at > now {
            // Boxed: only limited tunnels pay for the sleep's state, not every task.
            Box::pin(monoio::time::sleep(at - now)).await;
        }
        let sent = deliver_one(&d, out.deliver).await;
        out.queued.set(out.queued.get() - 1);
        if sent? {
            out.meter.add(d.len());
        }
    }
    Ok(())
}

/// [`down`] over TLS: decrypts; frames after the peer's `Eof` wait in `backlog`.
#[allow(clippy::too_many_arguments)]
async fn down_tls(
    side: Side,
    chan: &Socket,
    tls: &RefCell<TlsSession>,
    decoder: &mut FrameDecoder,
    backlog: &mut VecDeque<Held>,
    out: &Outlet<'_>,
    ahead: Option<Meter<'_>>,
    last: &Cell<Instant>,
) -> Result<(), Stop> {
    let mut opened = side == Side::Router;
    let mut replay = std::mem::take(backlog);
    loop {
        if replay.is_empty() {
            match read_tls(chan, tls, false).await {
                Ok(0) => return Err(Stop::ChannelClosed),
                Ok(_) => {}
                Err(e) => return Err(Stop::Channel(e)),
            }
        }
        let mut b = Batch {
            opened,
            ..Batch::default()
        };
        let mut closed = false;
        if !replay.is_empty() {
            for held in replay.drain(..) {
                match held {
                    Held::Msg(m) => b.on_event(Event::Message(m), side, backlog),
                    Held::Data(d) => b.on_event(Event::Data(&d), side, backlog),
                    Held::Datagram(d) => b.on_event(Event::Datagram(&d), side, backlog),
                }
            }
        } else {
            let res = tls.borrow_mut().decrypt(|bytes| {
                if b.bad.is_some() {
                    return;
                }
                if let Err(e) = decoder.feed(bytes, |ev| b.on_event(ev, side, backlog)) {
                    b.bad = Some(e);
                }
            });
            lend_back(tls);
            closed = res?;
        }
        if b.opened
            && !opened
            && let Some(up) = &ahead
        {
            up.opened();
        }
        opened = b.opened;
        if settle(b, out, last).await? {
            return Ok(());
        }
        if closed {
            return Err(Stop::ChannelClosed);
        }
    }
}

/// Sends one datagram to its receiver: true if the socket took it, false if UDP
/// dropped it (a source that refuses, which moves the flow to its next source; one
/// too big for its receiver, counted).
async fn deliver_one(d: &[u8], deliver: Deliver<'_>) -> Result<bool, Stop> {
    // The epoll engine wakes no reader for a source's ICMP error (it drops
    // `EPOLLERR`), so a router flow takes it here: left pending, it would fail this
    // send and lose the datagram, as it would the first one after the source is back.
    if let Some(s) = deliver.sources
        && monoio::utils::is_legacy()
        && let Some(e) = deliver.sock.take_error()
    {
        if e.kind() != io::ErrorKind::ConnectionRefused {
            return Err(Stop::Plain(e));
        }
        s.refused(deliver.sock);
    }
    match deliver.sock.send(d, deliver.to, deliver.from).await {
        Ok(()) => Ok(true),
        // The source's port is closed (an ICMP error from an earlier datagram):
        // UDP drops this one too, and the flow goes on, to the next source if
        // there is one.
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            if let Some(s) = deliver.sources {
                s.refused(deliver.sock);
            }
            Ok(false)
        }
        // Bigger than a datagram of the receiver's address family can be (one
        // from an IPv6 user to an IPv4 source, or one a PROXY header made too
        // big): UDP drops it, and the flow goes on.
        Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
            deliver.dropped.fetch_add(1, Relaxed);
            debug!(
                len = d.len(),
                "dropped a datagram too big for its receiver: {e}"
            );
            Ok(false)
        }
        Err(e) => Err(Stop::Plain(e)),
    }
}

/// Sends a batch's datagrams on, each once paid for under a bandwidth limit (one
/// that would wait too long is dropped; one that must wait, or comes after others
/// waiting, is queued for [`paced_sends`]), then says how the batch ended the flow:
/// an error, `true` at the peer's `Eof`, `false` when more is to come.
async fn settle(b: Batch, out: &Outlet<'_>, last: &Cell<Instant>) -> Result<bool, Stop> {
    let Outlet { deliver, meter, .. } = out;
    if !b.lens.is_empty()
        && let Some(s) = deliver.sources
    {
        s.check_health(deliver.sock);
    }
    if let Some(heard) = out.heard {
        if let Some(r) = &b.refused {
            heard(Heard::Refused(r));
        }
        if b.answered_after {
            heard(Heard::Answered);
        }
    }
    let now = Instant::now();
    let mut at = 0;
    // Bytes counted as moved: those of the datagrams the socket took, not of those
    // UDP dropped here.
    let mut sent = 0;
    for len in &b.lens {
        let d = &b.bytes[at..at + len];
        at += len;
        let Some(wait) = meter.charge_datagram(*len) else {
            deliver.dropped.fetch_add(1, Relaxed);
            continue;
        };
        match &out.paced {
            Some(paced) if !wait.is_zero() || out.queued.get() > 0 => {
                // The queue's receiver lives as long as this flow's reading.
                let _ = paced.unbounded_send((now + wait, d.to_vec()));
                out.queued.set(out.queued.get() + 1);
            }
            // Without a limit, nothing waits.
            _ => {
                if deliver_one(d, *deliver).await? {
                    sent += len;
                }
            }
        }
    }
    if !b.lens.is_empty() {
        last.set(Instant::now());
        meter.add(sent);
    }
    if let Some(e) = b.bad {
        return Err(e.into());
    }
    if let Some(r) = b.failed {
        return Err(Stop::OpenFailed(r));
    }
    if let Some(r) = b.reset {
        return Err(Stop::PeerReset(r));
    }
    Ok(b.eof)
}

/// [`down`] on the plain transport, where frames arrive as they were sent. `have`
/// is what was read of the flow already (with `Open`, `OpenDatagrams` or `Opened`).
/// Returns what followed the peer's `Eof`: the next stream's first frames, from a
/// client that pipelines them (none, in this build: a client waits for the
/// router's `Eof`).
async fn down_plain(
    side: Side,
    chan: &Socket,
    mut have: Vec<u8>,
    out: &Outlet<'_>,
    ahead: Option<Meter<'_>>,
    last: &Cell<Instant>,
) -> Result<Vec<u8>, Stop> {
    let mut opened = side == Side::Router;
    // Stays empty: reading stops at `Eof`, before any next stream's frames.
    let mut later = VecDeque::new();
    loop {
        let mut b = Batch {
            opened,
            ..Batch::default()
        };
        let mut at = 0;
        while !b.is_final() {
            let (typ, body) = match next_frame(&have[at..]) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    b.bad = Some(e);
                    break;
                }
            };
            let frame = &have[at + HEADER_LEN..at + HEADER_LEN + body];
            at += HEADER_LEN + body;
            match typ {
                FrameType::Datagram => b.on_event(Event::Datagram(frame), side, &mut later),
                _ => match Message::decode(typ, frame) {
                    Ok(m) => b.on_event(Event::Message(m), side, &mut later),
                    Err(e) => b.bad = Some(e),
                },
            }
        }
        have.drain(..at);
        if have.is_empty() {
            // Between datagrams an idle flow holds no buffer (one could have grown to
            // a 64 KiB datagram and a read).
            have = Vec::new();
        }
        if b.opened
            && !opened
            && let Some(up) = &ahead
        {
            up.opened();
        }
        opened = b.opened;
        if settle(b, out, last).await? {
            return Ok(have);
        }
        // A buffer only while bytes are there to read: a flow waits holding none.
        let read = loop {
            let mut buf = pool::take();
            match chan.try_recv(&mut buf) {
                Ok(n) => {
                    have.extend_from_slice(&buf[..n]);
                    pool::give(buf);
                    break Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    pool::give(buf);
                    if let Err(e) = chan.readable().await {
                        break Err(e);
                    }
                }
                Err(e) => {
                    pool::give(buf);
                    break Err(e);
                }
            }
        };
        match read {
            Ok(0) => return Err(Stop::ChannelClosed),
            Ok(_) => {}
            Err(e) => return Err(Stop::Channel(e)),
        }
    }
}

/// The first whole frame in `buf`: its type and body length, or `None` while it is
/// incomplete. The header's limits are checked first, so at most one frame's worth
/// ([`MAX_DATAGRAM`]) is ever waited for; a `Data` frame (a TCP stream's) is
/// refused from its header alone.
fn next_frame(buf: &[u8]) -> Result<Option<(FrameType, usize)>, ProtoError> {
    let Some(h) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let header = Header::parse(h)?;
    if header.typ == FrameType::Data {
        return Err(ProtoError::Unexpected {
            got: "Data",
            expected: "Datagram, Eof or Reset",
        });
    }
    let body = header.body_len as usize;
    Ok((buf.len() >= HEADER_LEN + body).then_some((header.typ, body)))
}

/// The source → channel direction on a router: reads the datagrams the source sends
/// back, seals them in batches, and ends with `Eof` once `done` fires (the client
/// ended the flow). The wait for `done` sits only where nothing is half-sent. After a
/// batch (at most once per [`crate::stats::DROPS_READ_EVERY`]), and at the end, adds what the kernel
/// dropped on the source's socket (its receive buffer full while the channel was
/// slow) to `drops`.
///
/// Under a bandwidth limit, a datagram that would wait too long for its turn is
/// dropped and counted in `dropped`.
pub(crate) async fn from_source(
    source: &Udp,
    sources: &Sources,
    chan: Carrier<'_>,
    meter: Meter<'_>,
    (drops, dropped): (&AtomicU64, &AtomicU64),
    mut done: oneshot::Receiver<()>,
) -> Result<(), Stop> {
    let tally = DropTally::default();
    let result = async {
        loop {
            {
                // Woken by an answer, the flow's end, or a refusal the client is to
                // hear of (found by the other direction's send).
                let ready = source.readable();
                futures::pin_mut!(ready);
                let woke = futures::future::poll_fn(|cx| {
                    if let Poll::Ready(r) = ready.as_mut().poll(cx) {
                        return Poll::Ready(Some(r));
                    }
                    if Pin::new(&mut done).poll(cx).is_ready() {
                        return Poll::Ready(None);
                    }
                    sources.poll_refusal(cx).map(|()| Some(Ok(())))
                });
                match woke.await {
                    Some(r) => r.map_err(Stop::Plain)?,
                    None => break,
                }
            }
            let mut wait = Duration::ZERO;
            let mut pay = |n| paid(&meter, n, &mut wait, dropped);
            let batch = read_batch(source, sources, &mut pay);
            tally.now_and_then(|| source.receive_drops(), drops);
            let mut framed = batch?;
            if let Some(refusal) = sources.take_refusal() {
                framed.push_message(&Message::SourceRefused(refusal));
            }
            if framed.is_empty() {
                continue;
            }
            framed.wait_turn(wait).await;
            let payload = framed.send(chan).await?;
            meter.add(payload);
        }
        let mut eof = Framed::new();
        eof.push_message(&Message::Eof);
        eof.send(chan).await.map(drop)
    }
    .await;
    tally.update(source.receive_drops(), drops);
    result
}

/// What the source sent back, as much as one batch holds, without waiting: each
/// datagram that `pay` takes (see [`paid`]).
fn read_batch(
    source: &Udp,
    sources: &Sources,
    pay: &mut impl FnMut(usize) -> bool,
) -> Result<Framed, Stop> {
    let mut scratch = pool::take();
    let mut framed = Framed::new();
    while !framed.is_full() {
        let got = source.try_recv(&mut scratch[..RECV_ROOM]);
        if got.is_ok() {
            sources.answered();
        }
        match got {
            Ok(n) if pay(n) => framed.push(&scratch[..n]),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            // ICMP port unreachable for an earlier datagram: the source does not
            // listen. Nothing to relay (the user's own timeout decides); the flow
            // moves to the next source if there is one.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                sources.refused(source);
                break;
            }
            Err(e) => {
                pool::give(scratch);
                return Err(Stop::Plain(e));
            }
        }
    }
    pool::give(scratch);
    Ok(framed)
}

#[cfg(test)]
mod tests {
    use conduit_proto::RefusalCode;

    use super::*;

    /// What a decoder makes of a framed batch: datagrams and messages, in order.
    fn decode(bytes: &[u8]) -> Vec<Held> {
        let mut d = FrameDecoder::new();
        let mut out = Vec::new();
        d.feed(bytes, |ev| out.push(Held::from_event(ev))).unwrap();
        assert!(d.at_boundary());
        out
    }

    #[test]
    fn a_batch_frames_each_datagram_whole_and_counts_payload() {
        let big = vec![7u8; RECV_ROOM];
        let mut f = Framed::new();
        f.push(b"");
        f.push(b"dns query");
        assert!(!f.is_full());
        f.push(&big);
        assert!(f.is_full(), "a batch past BATCH bytes takes no more");
        f.push_message(&Message::Eof);
        assert_eq!(f.payload, 9 + RECV_ROOM);
        let got = decode(&f.buf[..f.len]);
        assert_eq!(got.len(), 4);
        assert!(matches!(&got[0], Held::Datagram(d) if d.is_empty()));
        assert!(matches!(&got[1], Held::Datagram(d) if d == b"dns query"));
        assert!(matches!(&got[2], Held::Datagram(d) if *d == big));
        assert!(matches!(&got[3], Held::Msg(Message::Eof)));
    }

    /// A batch that waits for its turn holds what it carries, not a pooled buffer,
    /// and still frames the same bytes; the pooled buffer goes back to the pool.
    #[test]
    fn a_waiting_batch_gives_its_pooled_buffer_back() {
        let mut f = Framed::new();
        f.push(b"a few bytes");
        let framed = f.buf[..f.len].to_vec();
        let kept = pool::kept();
        f.shrink();
        assert_eq!(f.buf.capacity(), f.len, "only what it carries");
        assert_eq!(pool::kept(), kept + 1);
        assert_eq!(f.buf, framed);
        assert_eq!(f.payload, 11);
        // Shrunk once, it has nothing more to give back.
        f.shrink();
        assert_eq!(pool::kept(), kept + 1);
    }

    #[test]
    fn a_prefix_rides_in_its_datagrams_frame_and_is_not_counted_as_payload() {
        let mut f = Framed::new();
        assert!(f.push_after(b"HDR", b"query"));
        // A datagram that fits alone but not behind its prefix is left out whole.
        assert!(!f.push_after(b"HDR", &vec![1u8; RECV_ROOM - 2]));
        assert!(f.push_after(b"HDR", &vec![2u8; RECV_ROOM - 3]));
        assert_eq!(f.payload, 5 + RECV_ROOM - 3);
        let got = decode(&f.buf[..f.len]);
        assert_eq!(got.len(), 2);
        assert!(matches!(&got[0], Held::Datagram(d) if d == b"HDRquery"));
        assert!(
            matches!(&got[1], Held::Datagram(d) if d.len() == RECV_ROOM && d[..3] == *b"HDR" && d[3..].iter().all(|&b| b == 2))
        );
    }

    #[test]
    fn a_plain_flow_takes_whole_frames_and_refuses_others_from_the_header() {
        let mut f = Framed::new();
        f.push(b"dns query");
        f.push_message(&Message::Eof);
        let bytes = &f.buf[..f.len];
        let eof_body = Message::Eof.to_frame().len() - HEADER_LEN;
        // Nothing until a frame is whole.
        assert_eq!(next_frame(&bytes[..3]).unwrap(), None);
        assert_eq!(next_frame(&bytes[..HEADER_LEN + 8]).unwrap(), None);
        assert_eq!(next_frame(bytes).unwrap(), Some((FrameType::Datagram, 9)));
        assert_eq!(
            next_frame(&bytes[HEADER_LEN + 9..]).unwrap(),
            Some((FrameType::Eof, eof_body))
        );
        // A TCP stream's `Data` frame: refused before its body is waited for.
        assert!(matches!(
            next_frame(&Header::data(1000)),
            Err(ProtoError::Unexpected { got: "Data", .. })
        ));
        // A datagram longer than UDP allows: refused from its header.
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(&(MAX_DATAGRAM + 2).to_be_bytes());
        h[4] = FrameType::Datagram as u8;
        assert!(matches!(
            next_frame(&h),
            Err(ProtoError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn the_router_side_refuses_payload_of_the_wrong_kind() {
        let mut later = VecDeque::new();
        let mut b = Batch {
            opened: true,
            ..Batch::default()
        };
        b.on_event(Event::Datagram(b"ok"), Side::Router, &mut later);
        assert_eq!(
            (b.bytes.as_slice(), b.lens.as_slice()),
            (&b"ok"[..], &[2][..])
        );
        b.on_event(Event::Data(b"tcp bytes"), Side::Router, &mut later);
        assert!(matches!(
            b.bad,
            Some(ProtoError::Unexpected { got: "Data", .. })
        ));
    }

    #[test]
    fn frames_after_eof_wait_for_the_next_stream() {
        let mut later = VecDeque::new();
        let mut b = Batch {
            opened: true,
            ..Batch::default()
        };
        b.on_event(Event::Message(Message::Eof), Side::Router, &mut later);
        b.on_event(
            Event::Message(Message::Open {
                target: "10.0.0.1:80".into(),
            }),
            Side::Router,
            &mut later,
        );
        b.on_event(Event::Data(b"GET /"), Side::Router, &mut later);
        assert!(b.eof && b.bad.is_none());
        assert_eq!(later.len(), 2, "the next stream's Open and bytes are kept");
    }

    #[test]
    fn a_client_needs_opened_before_datagrams() {
        let mut later = VecDeque::new();
        let mut b = Batch::default();
        b.on_event(Event::Datagram(b"early"), Side::Client, &mut later);
        assert!(matches!(
            b.bad,
            Some(ProtoError::Unexpected {
                got: "Datagram before Opened",
                ..
            })
        ));
        let mut b = Batch::default();
        b.on_event(Event::Message(Message::Opened), Side::Client, &mut later);
        b.on_event(Event::Datagram(b"answer"), Side::Client, &mut later);
        assert!(b.opened && b.bad.is_none());
        assert_eq!(b.lens, [6]);
    }

    #[test]
    fn a_client_hears_the_latest_source_refusal_and_whether_an_answer_followed() {
        let mut later = VecDeque::new();
        let refusal = |m: &str| Refusal::new(RefusalCode::SourceUnreachable, m);
        let mut b = Batch {
            opened: true,
            ..Batch::default()
        };
        b.on_event(Event::Datagram(b"1"), Side::Client, &mut later);
        b.on_event(
            Event::Message(Message::SourceRefused(refusal("first"))),
            Side::Client,
            &mut later,
        );
        b.on_event(
            Event::Message(Message::SourceRefused(refusal("second"))),
            Side::Client,
            &mut later,
        );
        assert_eq!(b.refused, Some(refusal("second")));
        assert!(!b.answered_after, "the answer came before the refusals");
        b.on_event(Event::Datagram(b"2"), Side::Client, &mut later);
        assert!(b.answered_after && !b.is_final() && b.bad.is_none());
        assert_eq!(b.lens, [1, 1], "the flow goes on");

        // Only a router sends it, and only on an opened flow.
        let mut b = Batch::default();
        let m = Message::SourceRefused(refusal("early"));
        b.on_event(Event::Message(m.clone()), Side::Client, &mut later);
        assert!(matches!(
            b.bad,
            Some(ProtoError::Unexpected {
                got: "SourceRefused",
                ..
            })
        ));
        let mut b = Batch {
            opened: true,
            ..Batch::default()
        };
        b.on_event(Event::Message(m), Side::Router, &mut later);
        assert!(b.bad.is_some() && b.refused.is_none());
    }

    /// On the epoll engine a source's ICMP error wakes no reader: the router's flow
    /// takes it before its next send, which then goes (and the refusal is noted),
    /// rather than fail with it and lose that datagram.
    #[test]
    fn a_refusal_left_pending_costs_the_next_datagram_nothing() {
        let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let at = dead.local_addr().unwrap();
        drop(dead);
        crate::engine::block_on(crate::engine::EngineKind::Epoll, async move {
            let std_sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            std_sock.connect(at).unwrap();
            let sock = Udp::from_std(std_sock).unwrap();
            let sources = Sources::new(vec![at], 1, None);
            sources.tell_client();
            let dropped = AtomicU64::new(0);
            let deliver = Deliver {
                sock: &sock,
                to: None,
                from: None,
                sources: Some(&sources),
                dropped: &dropped,
            };
            assert!(deliver_one(b"nobody there", deliver).await.unwrap());
            // Once a probe sent after it is refused, the refusal of the flow's
            // datagram has come back too, and waits on the flow's socket.
            let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            probe.connect(at).unwrap();
            probe
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            probe.send(b"probe").unwrap();
            let refused = probe.recv(&mut [0u8; 8]).unwrap_err();
            assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);

            let source = std::net::UdpSocket::bind(at).expect("the source's port is free");
            source
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            assert!(deliver_one(b"back", deliver).await.unwrap(), "sent");
            let mut got = [0u8; 8];
            let n = source.recv(&mut got).expect("the datagram arrived");
            assert_eq!(&got[..n], b"back");
            assert!(
                sources.take_refusal().is_some(),
                "the refusal taken is noted"
            );
        })
        .unwrap();
    }
}
