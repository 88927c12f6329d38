//! A channel on a worker: the TCP connection to the other Conduit end, its TLS session
//! and its frame decoder, plus the small operations the client and router flows need
//! around the relay (send one message, wait for the next one).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::{Duration, Instant};

use conduit_proto::frame::HEADER_LEN;
use conduit_proto::session::MAX_RECORD_PLAINTEXT;
use conduit_proto::{Event, FrameDecoder, Message, ProtoError, PublicKey, TlsError, TlsSession};

use crate::handoff::ChannelHandoff;
use crate::net::Socket;
use crate::pool;

/// Why a channel could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ChannelError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("protocol error: {0}")]
    Proto(#[from] ProtoError),
    #[error("the other end closed the channel")]
    Closed,
    #[error("a plain-transport channel was handed to the TLS path")]
    NotTls,
}

/// A frame decoded but not consumed yet. What follows a stream's `Eof` in the same
/// read belongs to the next stream (the client may reuse the channel as soon as it has
/// seen the router's `Eof`), so it is kept here, in order.
#[derive(Debug)]
pub(crate) enum Held {
    Msg(Message),
    Data(Vec<u8>),
    Datagram(Vec<u8>),
}

impl Held {
    pub(crate) fn from_event(ev: Event<'_>) -> Self {
        match ev {
            Event::Message(m) => Held::Msg(m),
            Event::Data(d) => Held::Data(d.to_vec()),
            Event::Datagram(d) => Held::Datagram(d.to_vec()),
        }
    }
}

/// A channel owned by one core.
pub(crate) struct Channel {
    pub(crate) sock: Socket,
    pub(crate) tls: RefCell<TlsSession>,
    pub(crate) decoder: FrameDecoder,
    /// Decoded frames not consumed yet, oldest first.
    pub(crate) backlog: VecDeque<Held>,
    pub(crate) peer_key: Option<PublicKey>,
    /// The tunnel the channel serves.
    pub(crate) tunnel: std::rc::Rc<str>,
    pub(crate) epoch: crate::LinkEpoch,
    /// Counts it among its router's channels (client side).
    pub(crate) slot: Option<crate::ChannelSlot>,
    /// The protocol version agreed for it.
    pub(crate) version: u16,
    /// When the channel last became idle (handshake or end of its last stream).
    pub(crate) idle_since: Instant,
}

impl Channel {
    pub(crate) fn adopt(h: ChannelHandoff) -> Result<Self, ChannelError> {
        let tls = h.tls.ok_or(ChannelError::NotTls)?;
        let sock = Socket::from_std(h.stream)?;
        sock.set_nodelay();
        let mut decoder = FrameDecoder::new();
        let mut backlog = VecDeque::new();
        decoder.feed(&h.leftover, |ev| backlog.push_back(Held::from_event(ev)))?;
        let tls = RefCell::new(*tls);
        // The handshake's receive buffer, if empty: an idle channel holds none.
        lend_back(&tls);
        Ok(Self {
            sock,
            tls,
            decoder,
            backlog,
            peer_key: h.peer_key,
            tunnel: h.tunnel.into(),
            epoch: h.epoch,
            slot: h.slot,
            version: h.version,
            idle_since: h.made,
        })
    }

    /// True when nothing is half-received: the channel can carry another stream
    /// (client side; the router never sends anything a client did not ask for).
    pub(crate) fn is_clean(&self) -> bool {
        let tls = self.tls.borrow();
        self.decoder.at_boundary()
            && self.backlog.is_empty()
            && tls.buffered() == 0
            && !tls.peer_closed()
    }

    /// Encrypts and sends one control message. Boxed, message and all: a message
    /// goes out at a stream's start or end, and a send (or the message) kept inline
    /// would add its size to every long-lived relay task that might send one.
    pub(crate) fn send(
        &self,
        msg: Message,
    ) -> Pin<Box<dyn Future<Output = Result<(), ChannelError>> + '_>> {
        Box::pin(async move { send_message(&self.sock, &self.tls, &msg).await })
    }

    /// Encrypts and sends frames already encoded (a message with the stream's first
    /// payload, say), in one write.
    pub(crate) fn send_frames(
        &self,
        frames: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<(), ChannelError>> + '_>> {
        Box::pin(async move { send_sealed(&self.sock, &self.tls, &frames).await })
    }

    /// Sends a parting message if it goes out within a second: a peer that stopped
    /// reading (frozen, or behind a dead link) must not hold up closing the rest.
    ///
    /// A message that cannot go out whole (a write of the stream was cut off before
    /// it, or the peer does not make room within the second) is not sent, or not
    /// finished: the channel is closed with RST instead, which the peer learns of
    /// even while it does not read, rather than a FIN queued behind what it has not
    /// read (or a record cut in two).
    pub(crate) async fn send_best_effort(&self, msg: Message) {
        if self.sock.cut_off() {
            self.sock.abort();
            return;
        }
        let sent = Box::pin(monoio::time::timeout(
            Duration::from_secs(1),
            self.send(msg),
        ))
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            self.sock.abort();
        }
    }

    /// Waits for the next control message; what follows it stays in the backlog for
    /// the relay. `Ok(None)` when the other end closed the channel between streams.
    pub(crate) async fn next_message(&mut self) -> Result<Option<Message>, ChannelError> {
        loop {
            match self.backlog.pop_front() {
                Some(Held::Msg(m)) => return Ok(Some(m)),
                Some(Held::Data(_) | Held::Datagram(_)) => {
                    return Err(ProtoError::Unexpected {
                        got: "payload",
                        expected: "a control message",
                    }
                    .into());
                }
                None => {}
            }
            // Complete records may already be buffered: decrypt before waiting.
            let closed = self.decrypt_buffered()?;
            if !self.backlog.is_empty() {
                continue;
            }
            if closed {
                return self.ended();
            }
            if read_tls(&self.sock, &self.tls, false).await? == 0 {
                return self.ended();
            }
        }
    }

    fn ended(&self) -> Result<Option<Message>, ChannelError> {
        if self.decoder.at_boundary() {
            Ok(None)
        } else {
            Err(ChannelError::Closed)
        }
    }

    /// Decrypts every complete buffered record into the backlog; true once the peer
    /// sent close_notify.
    pub(crate) fn decrypt_buffered(&mut self) -> Result<bool, ChannelError> {
        let decoder = &mut self.decoder;
        let backlog = &mut self.backlog;
        let mut bad = None;
        let closed = self.tls.borrow_mut().decrypt(|plain| {
            if bad.is_none()
                && let Err(e) = decoder.feed(plain, |ev| backlog.push_back(Held::from_event(ev)))
            {
                bad = Some(e);
            }
        })?;
        lend_back(&self.tls);
        match bad {
            Some(e) => Err(e.into()),
            None => Ok(closed),
        }
    }
}

/// Bytes one [`read_tls`] asks the socket for: a full record and some.
pub(crate) const TLS_READ: usize = MAX_RECORD_PLAINTEXT + 64;

/// Reads whatever TLS bytes are available into the session's buffer, waiting for
/// some if none are. Returns the count; 0 is EOF.
///
/// `wait_first`: wait for readiness before the first read. Right after a read that
/// did not fill [`TLS_READ`] the socket is almost always empty, and a read that
/// finds nothing costs a system call for nothing (one per request and reply of
/// request/response traffic); after a full read, more is probably waiting.
pub(crate) async fn read_tls(
    sock: &Socket,
    tls: &RefCell<TlsSession>,
    wait_first: bool,
) -> io::Result<usize> {
    if wait_first {
        sock.readable().await?;
    }
    loop {
        {
            let mut t = tls.borrow_mut();
            if t.buffered() == 0
                && let Some(spare) = t.give_buffer(pool::take())
            {
                pool::give(spare);
            }
            match sock.try_recv(t.spare(TLS_READ)) {
                Ok(n) => {
                    t.received(n);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if let Some(b) = t.take_buffer() {
                pool::give(b);
            }
        }
        sock.readable().await?;
    }
}

/// Gives the session's receive buffer back to the pool if it holds nothing.
pub(crate) fn lend_back(tls: &RefCell<TlsSession>) {
    if let Some(b) = tls.borrow_mut().take_buffer() {
        pool::give(b);
    }
}

/// Encrypts and sends one framed message.
pub(crate) async fn send_message(
    sock: &Socket,
    tls: &RefCell<TlsSession>,
    msg: &Message,
) -> Result<(), ChannelError> {
    let frame = msg.to_frame();
    debug_assert!(frame.len() >= HEADER_LEN);
    send_sealed(sock, tls, &frame).await
}

/// Encrypts and sends encoded frames.
async fn send_sealed(
    sock: &Socket,
    tls: &RefCell<TlsSession>,
    frames: &[u8],
) -> Result<(), ChannelError> {
    let mut out = pool::take();
    let n = seal(tls, frames, &mut out)?;
    let res = sock.send_all(&out[..n]).await;
    pool::give(out);
    Ok(res?)
}

/// Encrypts `plain` into `out`, growing `out` if the session needs more room.
pub(crate) fn seal(
    tls: &RefCell<TlsSession>,
    plain: &[u8],
    out: &mut Vec<u8>,
) -> Result<usize, TlsError> {
    let mut t = tls.borrow_mut();
    loop {
        match t.encrypt(plain, out) {
            Err(TlsError::BufferTooSmall { required }) if required > out.len() => {
                out.resize(required, 0)
            }
            other => return other,
        }
    }
}
