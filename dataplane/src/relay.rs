//! The relay: one user connection (or source connection) spliced onto one channel.
//!
//! Two directions run joined in one task:
//! * **up**: plain socket → `Data` frames → TLS records → channel. Reads are sized so
//!   one read becomes four full TLS records and one write.
//! * **down**: channel → TLS records → frames → plain socket.
//!
//! Each direction waits for readiness, takes a pooled buffer, moves the bytes, and
//! gives the buffer back, so a quiet connection holds no buffer. End of stream is an
//! `Eof` frame (TCP half-close is carried exactly); when both directions ended with
//! `Eof` the channel is clean and can carry the next stream. Any error aborts both
//! directions at once (`try_join` drops the other, and dropping a readiness wait loses
//! nothing).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::task::{Context, Poll};

use conduit_proto::frame::{HEADER_LEN, Header};
use conduit_proto::session::{MAX_RECORD_PLAINTEXT, RECORD_OVERHEAD};
use conduit_proto::{Event, FrameDecoder, Message, ProtoError, Refusal, TlsError, TlsSession};
use futures::future::try_join;
use pin_project_lite::pin_project;

use crate::channel::{Channel, Held, TLS_READ, lend_back, read_tls, seal};
use crate::net::{SendError, Socket};
use crate::pool;
use crate::stats::{Closing, ErrorKind, KillReceiver, Meter, Writing};

/// Plaintext read per chunk: with its frame header, exactly four full TLS records.
pub(crate) const CHUNK: usize = 4 * MAX_RECORD_PLAINTEXT - HEADER_LEN;

/// Which end of the tunnel this relay runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The client: the router's first message must be `Opened` or `OpenFailed`.
    Client,
    /// The router: the source is already connected.
    Router,
}

/// Why a relay ended before both directions finished cleanly.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Stop {
    #[error("{0}")]
    Plain(io::Error),
    #[error("channel failed: {0}")]
    Channel(io::Error),
    #[error("the other end closed the channel mid-stream")]
    ChannelClosed,
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("protocol error: {0}")]
    Proto(#[from] ProtoError),
    #[error("{}", .0.message)]
    OpenFailed(Refusal),
    #[error("aborted by the other end: {}", .0.message)]
    PeerReset(Refusal),
    /// Stopped from outside the relay (operator, drain deadline, lost link); the
    /// reason says which.
    #[error("{0}")]
    Killed(Closing),
}

impl Stop {
    /// The error kind metrics count this under.
    pub(crate) fn kind(&self) -> ErrorKind {
        match self {
            Stop::Plain(_) => ErrorKind::Plain,
            Stop::OpenFailed(_) => ErrorKind::OpenFailed,
            Stop::PeerReset(r) if r.code == conduit_proto::RefusalCode::IdleTimeout => {
                ErrorKind::IdleTimeout
            }
            Stop::PeerReset(_) => ErrorKind::PeerReset,
            Stop::Killed(closing) => closing.kind,
            Stop::Channel(_) | Stop::ChannelClosed | Stop::Tls(_) | Stop::Proto(_) => {
                ErrorKind::Channel
            }
        }
    }
}

/// How a relay ended.
pub(crate) struct Outcome {
    /// `None` when both directions ended with `Eof`.
    pub(crate) stop: Option<Stop>,
}

/// Everything a relay needs.
pub(crate) struct Relay<'a> {
    pub(crate) side: Side,
    pub(crate) plain: &'a Socket,
    /// The channel, borrowed whole. Frames in its backlog (decoded before the relay
    /// started) are replayed first; frames that arrive after this stream's `Eof`
    /// (the next stream's) are left there.
    pub(crate) ch: &'a mut Channel,
    /// Counts payload moved from the plain socket into the channel.
    pub(crate) to_chan: Meter<'a>,
    /// Counts payload moved from the channel to the plain socket.
    pub(crate) to_plain: Meter<'a>,
    /// Plaintext read from the plain socket at once (clamped to [`CHUNK`]).
    pub(crate) chunk: usize,
    /// The connection's count of directions waiting to write
    /// ([`crate::stats::ConnCounters::writing`]).
    pub(crate) writing: &'a std::cell::Cell<u8>,
}

impl<'a> Relay<'a> {
    /// Runs until both directions end, one fails, or `kill` fires.
    ///
    /// A plain function returning a hand-written future rather than an `async fn`:
    /// an `async fn` keeps its arguments (this whole struct) and its pinned locals in
    /// slots of their own for as long as it runs, and a relay runs for as long as its
    /// connection lives, which is what memory per held connection is made of.
    pub(crate) fn run(
        self,
        kill: KillReceiver,
    ) -> RelayRun<'a, impl Future<Output = Result<((), ()), Stop>> + 'a> {
        let Relay {
            side,
            plain,
            ch,
            to_chan,
            to_plain,
            chunk,
            writing,
        } = self;
        let Channel {
            sock: chan,
            tls,
            decoder,
            backlog,
            ..
        } = ch;
        // On the client, what goes up before the router's `Opened` counts once it
        // comes (see `Unanswered`): the down direction is the one that sees it.
        let ahead = (side == Side::Client).then_some(to_chan);
        RelayRun {
            both: try_join(
                up(plain, chan, tls, to_chan, chunk.clamp(1, CHUNK), writing),
                down(
                    side, plain, chan, tls, decoder, backlog, to_plain, ahead, writing,
                ),
            ),
            kill,
            tls,
        }
    }
}

pin_project! {
    /// Both directions of a relay, and the order that stops them.
    pub(crate) struct RelayRun<'a, B> {
        #[pin]
        both: B,
        kill: KillReceiver,
        tls: &'a RefCell<TlsSession>,
    }
}

impl<B: Future<Output = Result<((), ()), Stop>>> Future for RelayRun<'_, B> {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let this = self.project();
        let stop = match this.both.poll(cx) {
            Poll::Ready(Ok(_)) => None,
            Poll::Ready(Err(stop)) => Some(stop),
            Poll::Pending => match Pin::new(this.kill).poll(cx) {
                Poll::Ready(why) => {
                    Some(Stop::Killed(why.unwrap_or_else(|_| {
                        Closing::killed("closed by the data plane")
                    })))
                }
                Poll::Pending => return Poll::Pending,
            },
        };
        lend_back(this.tls);
        Poll::Ready(Outcome { stop })
    }
}

/// Plain socket to channel. A function returning an `async move` block rather than an
/// `async fn`: an `async fn` copies its arguments into locals and keeps both in the
/// task, and this future lives as long as the connection.
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn up<'a>(
    plain: &'a Socket,
    chan: &'a Socket,
    tls: &'a RefCell<TlsSession>,
    meter: Meter<'a>,
    chunk: usize,
    writing: &'a std::cell::Cell<u8>,
) -> impl Future<Output = Result<(), Stop>> + 'a {
    async move {
        // After a full read more is probably waiting: try again before waiting.
        let mut maybe_more = false;
        // Plaintext read at once: `chunk`, trimmed once bytes flow so that each
        // write fills whole TCP segments (see `fit_to_segments`).
        let mut size = chunk;
        loop {
            if !maybe_more {
                plain.readable().await.map_err(Stop::Plain)?;
            }
            // Under a bandwidth limit, no more is read than may be sent now.
            let allowed = meter.allowance(size).await;
            let mut buf = pool::take();
            let n = match plain.try_recv(&mut buf[HEADER_LEN..HEADER_LEN + allowed]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    pool::give(buf);
                    meter.unused(allowed);
                    maybe_more = false;
                    continue;
                }
                Err(e) => {
                    pool::give(buf);
                    return Err(Stop::Plain(e));
                }
            };
            meter.unused(allowed - n);
            maybe_more = n == allowed;
            let (out, len) = seal_chunk(tls, buf, n)?;
            let sent = {
                let _writing = Writing::new(writing);
                chan.send_all_watching(&out[..len], plain).await
            };
            pool::give(out);
            sent.map_err(|e| match e {
                SendError::Own(e) => Stop::Channel(e),
                SendError::Other(e) => Stop::Plain(e),
            })?;
            if n == 0 {
                return Ok(());
            }
            if maybe_more {
                // Bulk: the segment size moves as the connection's window grows.
                size = fit_to_segments(chunk, chan.mss());
            }
            meter.add(n);
        }
    }
}

/// The plaintext to read at once, at most `chunk`, so that its sealed records (with
/// the frame header) come to a whole number of TCP segments of `mss` bytes.
///
/// Linux cuts a write into socket buffers of at most one GSO packet, a whole number
/// of segments (on loopback one segment of 65,483 bytes; on Ethernet 45 of 1,448).
/// Four full records are 65,624 bytes: written as they are, every write would leave
/// a scrap of a few hundred bytes that goes out as a packet of its own, with all the
/// per-packet work of a full one on both ends. On loopback, trimming the write to
/// fit cut the relays' CPU per byte by a fifth. Nothing to trim when one segment
/// holds the whole write (`chunk` tuned for latency on loopback) or the size is
/// unknown.
fn fit_to_segments(chunk: usize, mss: Option<usize>) -> usize {
    let sealed = sealed_len(chunk);
    let Some(mss) = mss.filter(|&m| m > 0 && m < sealed) else {
        return chunk;
    };
    let target = sealed / mss * mss;
    let records = target.div_ceil(MAX_RECORD_PLAINTEXT + RECORD_OVERHEAD);
    target
        .saturating_sub(records * RECORD_OVERHEAD + HEADER_LEN)
        .clamp(1, chunk)
}

/// What `plain` bytes of payload seal to: one `Data` frame cut into full TLS records.
fn sealed_len(plain: usize) -> usize {
    let framed = plain + HEADER_LEN;
    framed + framed.div_ceil(MAX_RECORD_PLAINTEXT) * RECORD_OVERHEAD
}

/// Seals the `n` bytes read into `buf` after its header room as one `Data` frame
/// (`Eof` when `n` is 0): a pooled buffer holding the records, and their length.
/// Both buffers go back to the pool on failure. Not inlined into [`up`], whose task
/// would otherwise keep slots for its locals across the send that follows.
fn seal_chunk(
    tls: &RefCell<TlsSession>,
    mut buf: Vec<u8>,
    n: usize,
) -> Result<(Vec<u8>, usize), Stop> {
    let mut out = pool::take();
    let sealed = if n == 0 {
        seal(tls, &Message::Eof.to_frame(), &mut out)
    } else {
        buf[..HEADER_LEN].copy_from_slice(&Header::data(n));
        seal(tls, &buf[..HEADER_LEN + n], &mut out)
    };
    pool::give(buf);
    match sealed {
        Ok(len) => Ok((out, len)),
        Err(e) => {
            pool::give(out);
            Err(e.into())
        }
    }
}

/// What one batch of decrypted frames asked for.
#[derive(Default)]
struct Batch {
    opened: bool,
    eof: bool,
    failed: Option<Refusal>,
    reset: Option<Refusal>,
    bad: Option<ProtoError>,
}

/// Channel to plain socket (an `async move` block for the reason [`up`] gives).
/// `ahead`, on the client: the meter of the up direction, told when the router's
/// `Opened` arrives.
#[allow(clippy::too_many_arguments, clippy::manual_async_fn)]
fn down<'a>(
    side: Side,
    plain: &'a Socket,
    chan: &'a Socket,
    tls: &'a RefCell<TlsSession>,
    decoder: &'a mut FrameDecoder,
    backlog: &'a mut VecDeque<Held>,
    meter: Meter<'a>,
    ahead: Option<Meter<'a>>,
    writing: &'a std::cell::Cell<u8>,
) -> impl Future<Output = Result<(), Stop>> + 'a {
    async move {
        let mut opened = side == Side::Router;
        let mut replay = std::mem::take(backlog);
        // After a short read the socket is probably empty: wait before reading again.
        let mut short = false;
        loop {
            if replay.is_empty() {
                // Wait for bytes before taking a buffer: an idle connection holds none.
                match read_tls(chan, tls, short).await {
                    Ok(0) => return Err(Stop::ChannelClosed),
                    Ok(n) => short = n < TLS_READ,
                    Err(e) => return Err(Stop::Channel(e)),
                }
            }
            let mut out = pool::take();
            let was_opened = opened;
            let (len, then) = match take_batch(
                side,
                &mut opened,
                &mut replay,
                tls,
                decoder,
                backlog,
                &mut out,
            ) {
                Ok(batch) => batch,
                Err(e) => {
                    pool::give(out);
                    return Err(e);
                }
            };
            if opened
                && !was_opened
                && let Some(up) = &ahead
            {
                up.opened();
            }
            if len > 0 {
                // Under a bandwidth limit, in the pieces the bucket grants.
                let sent = {
                    let _writing = Writing::new(writing);
                    meter.send_all_watching(plain, &out[..len], chan).await
                };
                if let Err(e) = sent {
                    pool::give(out);
                    return Err(match e {
                        SendError::Own(e) => Stop::Plain(e),
                        SendError::Other(e) => Stop::Channel(e),
                    });
                }
            }
            pool::give(out);
            match then {
                Then::More => {}
                Then::Eof => {
                    plain.shutdown(Shutdown::Write);
                    return Ok(());
                }
                Then::Stop(stop) => return Err(*stop),
            }
        }
    }
}

/// What [`down`] does once a batch's bytes are on the plain socket.
enum Then {
    /// Read the channel again.
    More,
    /// The stream ended cleanly: half-close the plain socket.
    Eof,
    /// The relay ends (boxed: this is held across the write, in every relay task).
    Stop(Box<Stop>),
}

/// Decodes one batch: the frames held over from before the relay (`replay`, emptied
/// and freed) if any, else every record the session has buffered. Payload goes to
/// `out`; returns its length and what follows. Frames after this stream's `Eof`
/// go to `backlog`. A plain function, not part of [`down`]: its locals would
/// otherwise keep slots in every relay task across the writes that follow.
#[allow(clippy::too_many_arguments)]
fn take_batch(
    side: Side,
    opened: &mut bool,
    replay: &mut VecDeque<Held>,
    tls: &RefCell<TlsSession>,
    decoder: &mut FrameDecoder,
    backlog: &mut VecDeque<Held>,
    out: &mut Vec<u8>,
) -> Result<(usize, Then), Stop> {
    let mut len = 0;
    let mut b = Batch {
        opened: *opened,
        ..Batch::default()
    };
    let mut closed = false;
    if !replay.is_empty() {
        for held in std::mem::take(replay) {
            match held {
                Held::Msg(m) => on_event(Event::Message(m), side, &mut b, out, &mut len, backlog),
                Held::Data(d) => on_event(Event::Data(&d), side, &mut b, out, &mut len, backlog),
                Held::Datagram(d) => {
                    on_event(Event::Datagram(&d), side, &mut b, out, &mut len, backlog)
                }
            }
        }
    } else {
        let res = tls.borrow_mut().decrypt(|bytes| {
            if b.bad.is_some() {
                return;
            }
            let fed = decoder.feed(bytes, |ev| {
                on_event(ev, side, &mut b, out, &mut len, backlog)
            });
            if let Err(e) = fed {
                b.bad = Some(e);
            }
        });
        lend_back(tls);
        closed = res?;
    }
    *opened = b.opened;
    let then = if let Some(e) = b.bad {
        Then::Stop(Box::new(e.into()))
    } else if let Some(r) = b.failed {
        Then::Stop(Box::new(Stop::OpenFailed(r)))
    } else if let Some(r) = b.reset {
        Then::Stop(Box::new(Stop::PeerReset(r)))
    } else if b.eof {
        Then::Eof
    } else if closed {
        Then::Stop(Box::new(Stop::ChannelClosed))
    } else {
        Then::More
    };
    Ok((len, then))
}

fn on_event(
    ev: Event<'_>,
    side: Side,
    b: &mut Batch,
    out: &mut Vec<u8>,
    len: &mut usize,
    later: &mut VecDeque<Held>,
) {
    if b.bad.is_some() || b.failed.is_some() || b.reset.is_some() {
        return;
    }
    if b.eof {
        // The next stream's frames (the client reused the channel): keep them.
        later.push_back(Held::from_event(ev));
        return;
    }
    let unexpected = |got| ProtoError::Unexpected {
        got,
        expected: "payload, Eof or Reset",
    };
    match ev {
        Event::Data(d) if b.opened => {
            if *len + d.len() > out.len() {
                out.resize(*len + d.len(), 0);
            }
            out[*len..*len + d.len()].copy_from_slice(d);
            *len += d.len();
        }
        Event::Message(Message::Opened) if side == Side::Client && !b.opened => b.opened = true,
        Event::Message(Message::OpenFailed(r)) if side == Side::Client && !b.opened => {
            b.failed = Some(r)
        }
        Event::Message(Message::Eof) if b.opened => b.eof = true,
        Event::Message(Message::Reset(r)) => b.reset = Some(r),
        Event::Data(_) => b.bad = Some(unexpected("Data before Opened")),
        Event::Datagram(_) => b.bad = Some(unexpected("Datagram on a TCP stream")),
        Event::Message(m) => b.bad = Some(unexpected(m.name())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use sealed_len as sealed;

    #[test]
    fn a_full_chunk_is_trimmed_to_whole_segments() {
        assert_eq!(sealed(CHUNK), 65_624);
        // Loopback once the window has grown: one segment.
        assert_eq!(fit_to_segments(CHUNK, Some(65_483)), 65_390);
        assert_eq!(sealed(65_390), 65_483);
        // Ethernet: 45 segments of 1,448 bytes.
        assert_eq!(fit_to_segments(CHUNK, Some(1_448)), 65_067);
        assert_eq!(sealed(65_067), 45 * 1_448);
        // Loopback early on, while the peer's window bounds the segment: two, then one.
        assert_eq!(sealed(fit_to_segments(CHUNK, Some(32_741))), 2 * 32_741);
        let three_records = fit_to_segments(CHUNK, Some(47_616));
        assert_eq!(sealed(three_records), 47_616);
        assert_eq!(
            (three_records + HEADER_LEN).div_ceil(MAX_RECORD_PLAINTEXT),
            3
        );
    }

    #[test]
    fn the_sealed_write_never_passes_the_segments_it_was_fitted_to() {
        for mss in (88..70_000).step_by(7) {
            for chunk in [CHUNK, crate::MIN_READ_CHUNK, 4_000] {
                let fit = fit_to_segments(chunk, Some(mss));
                assert!((1..=chunk).contains(&fit), "mss {mss} chunk {chunk}: {fit}");
                if mss < sealed(chunk) {
                    let whole = sealed(chunk) / mss * mss;
                    // Full to within one record's overhead, never over.
                    assert!(sealed(fit) <= whole, "mss {mss} chunk {chunk}");
                    assert!(
                        sealed(fit) + RECORD_OVERHEAD >= whole,
                        "mss {mss} chunk {chunk}"
                    );
                }
            }
        }
    }

    #[test]
    fn nothing_is_trimmed_when_one_segment_holds_the_write_or_the_size_is_unknown() {
        assert_eq!(fit_to_segments(CHUNK, None), CHUNK);
        assert_eq!(fit_to_segments(CHUNK, Some(0)), CHUNK);
        assert_eq!(fit_to_segments(CHUNK, Some(sealed(CHUNK))), CHUNK);
        assert_eq!(
            fit_to_segments(crate::MIN_READ_CHUNK, Some(65_483)),
            crate::MIN_READ_CHUNK
        );
    }
}
