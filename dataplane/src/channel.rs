//! A channel on a worker: the TCP connection to the other Conduit end, its TLS session
//! and its frame decoder, plus the small operations the client and router flows need
//! around the relay (send one message, wait for the next one).

use std::cell::RefCell;
use std::io;
use std::time::Instant;

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
}

/// A channel owned by one core.
pub(crate) struct Channel {
    pub(crate) sock: Socket,
    pub(crate) tls: RefCell<TlsSession>,
    pub(crate) decoder: FrameDecoder,
    pub(crate) peer_key: PublicKey,
    pub(crate) epoch: u64,
    /// When the channel last became idle (handshake or end of its last stream).
    pub(crate) idle_since: Instant,
    /// Plaintext received before the worker took over, fed to the decoder first.
    pub(crate) leftover: Vec<u8>,
}

impl Channel {
    pub(crate) fn adopt(h: ChannelHandoff) -> io::Result<Self> {
        let sock = Socket::from_std(h.stream)?;
        sock.set_nodelay();
        Ok(Self {
            sock,
            tls: RefCell::new(h.tls),
            decoder: FrameDecoder::new(),
            peer_key: h.peer_key,
            epoch: h.epoch,
            idle_since: h.made,
            leftover: h.leftover,
        })
    }

    /// True when nothing is half-received: the channel can carry another stream.
    pub(crate) fn is_clean(&self) -> bool {
        let tls = self.tls.borrow();
        self.decoder.at_boundary()
            && self.leftover.is_empty()
            && tls.buffered() == 0
            && !tls.peer_closed()
    }

    /// Encrypts and sends one message.
    pub(crate) async fn send(&self, msg: &Message) -> Result<(), ChannelError> {
        send_message(&self.sock, &self.tls, msg).await
    }

    /// Waits for the next control message, collecting any payload that follows it in
    /// the same read into `after` (and whether an `Eof` followed). `Ok(None)` when the
    /// other end closed the channel cleanly between streams.
    pub(crate) async fn next_message(
        &mut self,
        after: &mut Vec<u8>,
        eof_after: &mut bool,
    ) -> Result<Option<Message>, ChannelError> {
        let mut first: Option<Message> = None;
        let mut bad: Option<ProtoError> = None;
        if !self.leftover.is_empty() {
            let leftover = std::mem::take(&mut self.leftover);
            feed(
                &mut self.decoder,
                &leftover,
                &mut first,
                after,
                eof_after,
                &mut bad,
            );
        }
        loop {
            if let Some(e) = bad.take() {
                return Err(e.into());
            }
            if first.is_some() {
                return Ok(first);
            }
            if read_tls(&self.sock, &self.tls).await? == 0 {
                return if self.decoder.at_boundary() {
                    Ok(None)
                } else {
                    Err(ChannelError::Closed)
                };
            }
            let decoder = &mut self.decoder;
            let closed = self
                .tls
                .borrow_mut()
                .decrypt(|plain| feed(decoder, plain, &mut first, after, eof_after, &mut bad))?;
            lend_back(&self.tls);
            if closed && first.is_none() && bad.is_none() {
                return if self.decoder.at_boundary() {
                    Ok(None)
                } else {
                    Err(ChannelError::Closed)
                };
            }
        }
    }
}

/// Feeds plaintext to the decoder: the first message goes to `first`; payload after it
/// to `after`; an `Eof` after it sets `eof_after`; anything else is an error.
fn feed(
    decoder: &mut FrameDecoder,
    plain: &[u8],
    first: &mut Option<Message>,
    after: &mut Vec<u8>,
    eof_after: &mut bool,
    bad: &mut Option<ProtoError>,
) {
    if bad.is_some() {
        return;
    }
    let res = decoder.feed(plain, |ev| match ev {
        _ if bad.is_some() => {}
        Event::Message(m) if first.is_none() => *first = Some(m),
        Event::Data(d) if first.is_some() && !*eof_after => after.extend_from_slice(d),
        Event::Message(Message::Eof) if first.is_some() && !*eof_after => *eof_after = true,
        Event::Data(_) => {
            *bad = Some(ProtoError::Unexpected {
                got: "Data",
                expected: "a control message",
            })
        }
        Event::Message(m) => {
            *bad = Some(ProtoError::Unexpected {
                got: m.name(),
                expected: "payload or Eof",
            })
        }
    });
    if let Err(e) = res {
        *bad = Some(e);
    }
}

/// Reads whatever TLS bytes are available into the session's buffer, waiting for
/// some if none are. Returns the count; 0 is EOF.
pub(crate) async fn read_tls(sock: &Socket, tls: &RefCell<TlsSession>) -> io::Result<usize> {
    loop {
        {
            let mut t = tls.borrow_mut();
            if t.buffered() == 0 {
                if let Some(spare) = t.give_buffer(pool::take()) {
                    pool::give(spare);
                }
            }
            match sock.try_recv(t.spare(MAX_RECORD_PLAINTEXT + 64)) {
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
    let mut out = pool::take();
    let n = seal(tls, &frame, &mut out)?;
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
