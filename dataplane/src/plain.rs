//! The plain transport: for links that are already encrypted (inside WireGuard, say),
//! and only when the operator opts in on both ends with `--transport plain`.
//!
//! The same `Hello`/`Welcome` and `Open`/`Opened` frames as over TLS, in clear; after
//! `Open` (client) and `Opened` (router) each direction's payload travels as `Data`
//! frames, and `Eof` ends a direction (TCP half-close); once both have ended the
//! channel is idle again and carries the next stream, as a TLS channel does. Small
//! chunks (up to 16 KiB, request/response traffic) are copied through a pooled
//! buffer, one `recv` and one `send` a hop; larger ones are spliced (`splice(2)`),
//! header written by us, so their payload never enters user space. A direction that
//! turns out to be bulk (a whole pipe's worth ready at once) sends `Unframed` and
//! goes on raw, ended by FIN: frame boundaries would cost a bulk transfer about a
//! tenth more CPU per byte, a new channel costs it nothing worth counting, and the
//! channel then closes after the stream. Against a peer older than protocol 5 a
//! plain channel carries one stream of raw bytes, ended by TCP's FIN, and closes.
//! While a raw direction is in flight the channel's socket resets on close
//! (`SO_LINGER` 0) until the stream has ended cleanly: the kernel closes a killed
//! relay's sockets with a FIN, which must not pass for the end of a stream cut short.
//! A UDP flow rides a plain channel as it rides a TLS one (`OpenDatagrams`, then
//! `Datagram` frames and `Eof` each way: see [`crate::datagram`]), framed channels
//! only.
//!
//! Splicing waits for readiness and then splices without blocking: io_uring's own
//! splice op parks a kernel worker thread per waiting connection. Pipes come from a
//! per-core pool and are held only while bytes are in flight, so an idle connection
//! holds two sockets and nothing else.

use std::cell::RefCell;
use std::io;
use std::net::Shutdown;
use std::time::Instant;

use conduit_proto::frame::{FrameType, HEADER_LEN, Header};
use conduit_proto::stream::{Piece, StreamReader};
use conduit_proto::version::PLAIN_FRAMES;
use conduit_proto::{Message, ProtoError, PublicKey};

use crate::channel::ChannelError;
use crate::handoff::ChannelHandoff;
use crate::net::{SendError, Socket};
use crate::pool;
use crate::relay::Stop;
use crate::stats::Meter;
use crate::sys::{self, Pipe};

/// Bytes moved per splice call.
const SPLICE_CHUNK: usize = sys::PIPE_SIZE;
// A chunk spliced whole is one `Data` frame.
const _: () = assert!(SPLICE_CHUNK <= conduit_proto::frame::MAX_DATA_BODY as usize);
/// Pipes kept for reuse per core.
const MAX_PIPES: usize = 64;

thread_local! {
    static PIPES: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

fn take_pipe() -> io::Result<Pipe> {
    match PIPES.with(|p| p.borrow_mut().pop()) {
        Some(p) => Ok(p),
        None => sys::pipe(),
    }
}

fn give_pipe(p: Pipe) {
    PIPES.with(|pipes| {
        let mut pipes = pipes.borrow_mut();
        if pipes.len() < MAX_PIPES {
            pipes.push(p);
        }
    });
}

/// A plain channel owned by one core.
pub(crate) struct PlainChannel {
    pub(crate) sock: Socket,
    pub(crate) peer_key: Option<PublicKey>,
    /// The tunnel the channel serves.
    pub(crate) tunnel: std::rc::Rc<str>,
    pub(crate) epoch: crate::LinkEpoch,
    /// Counts it among its router's channels (client side) until it is dropped.
    _slot: Option<crate::ChannelSlot>,
    pub(crate) idle_since: Instant,
    /// Bytes received before the worker took over.
    pub(crate) leftover: Vec<u8>,
    /// The protocol version agreed in `Hello`/`Welcome`.
    pub(crate) version: u16,
}

impl PlainChannel {
    pub(crate) fn adopt(h: ChannelHandoff) -> io::Result<Self> {
        let sock = Socket::from_std(h.stream)?;
        sock.set_nodelay();
        Ok(Self {
            sock,
            peer_key: h.peer_key,
            tunnel: h.tunnel.into(),
            epoch: h.epoch,
            _slot: h.slot,
            idle_since: h.made,
            leftover: h.leftover,
            version: h.version,
        })
    }

    /// How the channel carries a stream's payload.
    pub(crate) fn wire(&self) -> Wire {
        if self.version >= PLAIN_FRAMES {
            Wire::Framed
        } else {
            Wire::Plain
        }
    }
}

/// Sends one frame.
pub(crate) async fn send_frame(sock: &Socket, msg: &Message) -> io::Result<()> {
    sock.send_all(&msg.to_frame()).await
}

/// Sends a parting message if it goes out within a second: a peer that stopped
/// reading must not hold up closing the rest.
///
/// One that cannot go out whole (a write of the stream was cut off before it, or the
/// peer makes no room within the second) is not sent, or not finished: the channel
/// is closed with RST instead (see [`crate::channel::Channel::send_best_effort`]).
pub(crate) async fn send_best_effort(sock: &Socket, msg: &Message) {
    if sock.cut_off() {
        sock.abort();
        return;
    }
    let sent = Box::pin(monoio::time::timeout(
        std::time::Duration::from_secs(1),
        send_frame(sock, msg),
    ))
    .await;
    if !matches!(sent, Ok(Ok(()))) {
        sock.abort();
    }
}

/// Reads exactly one control frame; returns it with the raw bytes that followed it.
pub(crate) async fn read_frame(
    sock: &Socket,
    mut have: Vec<u8>,
) -> Result<(Message, Vec<u8>), ChannelError> {
    loop {
        if have.len() >= HEADER_LEN {
            let mut h = [0u8; HEADER_LEN];
            h.copy_from_slice(&have[..HEADER_LEN]);
            let header = Header::parse(&h)?;
            if matches!(header.typ, FrameType::Data | FrameType::Datagram) {
                return Err(ProtoError::Unexpected {
                    got: "payload",
                    expected: "a control message",
                }
                .into());
            }
            let total = HEADER_LEN + header.body_len as usize;
            if have.len() >= total {
                let msg = Message::decode(header.typ, &have[HEADER_LEN..total])?;
                let rest = have.split_off(total);
                return Ok((msg, rest));
            }
        }
        // A pooled buffer for the read alone: an idle channel waits holding none. At
        // most 4 KiB: what follows the frame is the stream's, for its relay.
        let mut buf = pool::take();
        let read = sock.try_recv(&mut buf[..4096]);
        if let Ok(n) = read {
            have.extend_from_slice(&buf[..n]);
        }
        pool::give(buf);
        match read {
            Ok(0) => {
                return Err(if have.is_empty() {
                    ChannelError::Closed
                } else {
                    ProtoError::Unexpected {
                        got: "end of stream",
                        expected: "the rest of a frame",
                    }
                    .into()
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => sock.readable().await?,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Which end of a splice failed.
fn side(channel: bool, e: io::Error) -> Stop {
    if channel {
        Stop::Channel(e)
    } else {
        Stop::Plain(e)
    }
}

/// How the channel end of a [`pump`] carries the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wire {
    /// Raw bytes (the plain transport before protocol 5): TCP's FIN ends the stream.
    Plain,
    /// `Data` frames whose bodies are spliced, `Eof` ending each direction (the plain
    /// transport from protocol 5 on): the channel outlives the stream, unless a
    /// direction went on `Unframed`. See [`frames_out`] and [`frames_in`]; [`pump`]
    /// does not take this one.
    Framed,
    /// Kernel TLS: the kernel seals and opens the records; a close_notify alert ends
    /// the stream, and a FIN without one is a truncation.
    KernelTls,
}

/// Moves bytes from `src` to `dst` until `src` ends, then half-closes `dst`.
/// `src_is_channel` tells which end is the channel (for errors, and for `wire`).
pub(crate) async fn pump(
    src: &Socket,
    dst: &Socket,
    src_is_channel: bool,
    wire: Wire,
    meter: Meter<'_>,
) -> Result<(), Stop> {
    let tls_in = src_is_channel && wire == Wire::KernelTls;
    let tls_out = !src_is_channel && wire == Wire::KernelTls;
    let mut pipe: Option<Pipe> = None;
    let mut in_pipe = 0usize;
    let mut maybe_more = false;
    loop {
        if in_pipe == 0 {
            if !maybe_more {
                // Idle: the pipe goes back to the pool while we wait.
                if let Some(p) = pipe.take() {
                    give_pipe(p);
                }
                src.readable().await.map_err(|e| side(src_is_channel, e))?;
            }
            let p = match pipe.take() {
                Some(p) => p,
                None => take_pipe().map_err(Stop::Plain)?,
            };
            match sys::splice(src.raw_fd(), p.write.as_fd_raw(), SPLICE_CHUNK) {
                Ok(0) => {
                    give_pipe(p);
                    if tls_in {
                        return Err(Stop::Channel(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the channel closed without TLS close_notify (stream truncated)",
                        )));
                    }
                    if tls_out {
                        close_notify(dst).await?;
                    }
                    dst.shutdown(Shutdown::Write);
                    return Ok(());
                }
                Ok(n) => {
                    in_pipe = n;
                    maybe_more = n == SPLICE_CHUNK;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => maybe_more = false,
                // splice refuses a record that is not application data.
                Err(e) if tls_in && e.raw_os_error() == Some(libc::EINVAL) => {
                    give_pipe(p);
                    end_of_records(src)?;
                    dst.shutdown(Shutdown::Write);
                    return Ok(());
                }
                Err(e) => return Err(side(src_is_channel, e)),
            }
            pipe = Some(p);
            continue;
        }
        let Some(p) = pipe.as_ref() else {
            return Ok(());
        };
        // Under a bandwidth limit, no more leaves than the bucket grants.
        let allowed = meter.allowance(in_pipe).await;
        match sys::splice(p.read.as_fd_raw(), dst.raw_fd(), allowed) {
            Ok(0) => return Err(side(!src_is_channel, io::ErrorKind::WriteZero.into())),
            Ok(n) => {
                meter.unused(allowed - n);
                in_pipe -= n;
                meter.add(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                meter.unused(allowed);
                (dst.writable_watching(src).await).map_err(|e| sides(e, !src_is_channel))?
            }
            // A pipe still holding bytes is dropped, not pooled.
            Err(e) => return Err(side(!src_is_channel, e)),
        }
    }
}

/// How one direction of a framed stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// With `Eof`: as far as this direction goes, the channel can carry the next stream.
    Eof,
    /// With FIN, after `Unframed`: the channel closes after the stream.
    Fin,
}

/// Chunks up to this size go through a pooled buffer, with one `recv` and one `send`
/// (header and payload together); splicing them would take three calls a chunk.
const SMALL: usize = 16 * 1024;
const _: () = assert!(HEADER_LEN + SMALL <= crate::pool::BUF_SIZE);

/// Moves a stream's bytes from `src` into the channel `chan` as `Data` frames until
/// `src` ends, then sends `Eof`; or, once a whole pipe's worth is ready at once,
/// `Unframed` and the rest raw, ended by FIN.
///
/// Small chunks are copied: read into a pooled buffer behind room for the header,
/// sent with it in one call. After a chunk that filled the buffer the next ones are
/// spliced: each into a pipe first, so its length is known before its header goes
/// out; the header is sent with `MSG_MORE`, and the splice from the pipe that follows
/// joins it in the same TCP segment. A spliced chunk that comes out small switches
/// back to copying.
pub(crate) async fn frames_out(
    src: &Socket,
    chan: &Socket,
    meter: Meter<'_>,
) -> Result<Ending, Stop> {
    let mut maybe_more = false;
    let mut copy = true;
    loop {
        if !maybe_more {
            src.readable().await.map_err(Stop::Plain)?;
        }
        if copy {
            // Under a bandwidth limit, no more is read than may be sent now.
            let allowed = meter.allowance(SMALL).await;
            let mut buf = pool::take();
            let n = match src.try_recv(&mut buf[HEADER_LEN..HEADER_LEN + allowed]) {
                Ok(n) => n,
                Err(e) => {
                    pool::give(buf);
                    meter.unused(allowed);
                    if e.kind() == io::ErrorKind::WouldBlock {
                        maybe_more = false;
                        continue;
                    }
                    return Err(Stop::Plain(e));
                }
            };
            meter.unused(allowed - n);
            if n == 0 {
                pool::give(buf);
                return send_eof(chan).await;
            }
            let mut header = [0u8; HEADER_LEN];
            Header::write(FrameType::Data, n, &mut header);
            buf[..HEADER_LEN].copy_from_slice(&header);
            (chan.send_all_watching(&buf[..HEADER_LEN + n], src).await)
                .map_err(|e| sides(e, true))?;
            pool::give(buf);
            meter.add(n);
            maybe_more = n == allowed;
            copy = n < SMALL;
            continue;
        }
        let p = take_pipe().map_err(Stop::Plain)?;
        let n = match sys::splice(src.raw_fd(), p.write.as_fd_raw(), SPLICE_CHUNK) {
            Ok(n) => n,
            Err(e) => {
                give_pipe(p);
                if e.kind() == io::ErrorKind::WouldBlock {
                    maybe_more = false;
                    continue;
                }
                return Err(Stop::Plain(e));
            }
        };
        if n == 0 {
            give_pipe(p);
            return send_eof(chan).await;
        }
        maybe_more = n == SPLICE_CHUNK;
        copy = n <= SMALL;
        let bulk = n == SPLICE_CHUNK;
        let mut header = [0u8; HEADER_LEN];
        if bulk {
            // From here FIN ends the stream: a FIN that a crash sent must not.
            chan.reset_on_close();
            Header::write(FrameType::Unframed, 0, &mut header);
        } else {
            Header::write(FrameType::Data, n, &mut header);
        }
        chan.send_all_more(&header).await.map_err(Stop::Channel)?;
        // On an error the pipe, which may still hold bytes, is dropped, not pooled.
        (drain(&p, n, chan, src, &meter).await).map_err(|e| sides(e, true))?;
        give_pipe(p);
        if bulk {
            pump(src, chan, false, Wire::Plain, meter).await?;
            return Ok(Ending::Fin);
        }
    }
}

/// Ends a framed direction: `Eof`.
async fn send_eof(chan: &Socket) -> Result<Ending, Stop> {
    let mut eof = [0u8; HEADER_LEN];
    Header::write(FrameType::Eof, 0, &mut eof);
    chan.send_all(&eof).await.map_err(Stop::Channel)?;
    Ok(Ending::Eof)
}

/// Moves a stream's `Data` frames from the channel `chan` into `dst` until `Eof`
/// (or after `Unframed`, raw bytes until FIN), then half-closes `dst`. `pre` is what
/// of the stream was read from the channel along with `Open` or `Opened`.
///
/// At each frame boundary up to [`SMALL`] bytes more than a header are read into a
/// pooled buffer: a small frame arrives whole in one call and leaves with one `send`.
/// The rest of a larger body is spliced. That read can take bytes past `Eof` (the
/// next stream's `Open`, which a client sends as soon as it has seen this stream
/// end): they are returned with the ending, for whoever reads the next `Open`.
pub(crate) async fn frames_in(
    chan: &Socket,
    dst: &Socket,
    pre: &[u8],
    meter: Meter<'_>,
) -> Result<(Ending, Vec<u8>), Stop> {
    let mut frames = StreamReader::default();
    match deliver(&mut frames, pre, dst, chan, &meter).await? {
        Delivered::More => {}
        Delivered::Eof([]) => {
            dst.shutdown(Shutdown::Write);
            return Ok((Ending::Eof, Vec::new()));
        }
        // Read with `Open` or `Opened`, before the other end could have seen this
        // stream end: nothing of a next stream can be there.
        Delivered::Eof(_) => {
            return Err(ProtoError::Unexpected {
                got: "bytes after Eof",
                expected: "the end of the stream",
            }
            .into());
        }
        Delivered::Unframed(raw) => return unframed(chan, dst, raw, meter).await,
    }
    let mut maybe_more = true;
    loop {
        if !maybe_more {
            chan.readable().await.map_err(Stop::Channel)?;
        }
        if frames.body_left() == 0 {
            let mut buf = pool::take();
            let k = match chan.try_recv(&mut buf[..HEADER_LEN + SMALL]) {
                Ok(0) => return Err(Stop::ChannelClosed),
                Ok(k) => k,
                Err(e) => {
                    pool::give(buf);
                    if e.kind() == io::ErrorKind::WouldBlock {
                        maybe_more = false;
                        continue;
                    }
                    return Err(Stop::Channel(e));
                }
            };
            maybe_more = k == HEADER_LEN + SMALL;
            let ending = match deliver(&mut frames, &buf[..k], dst, chan, &meter).await? {
                Delivered::More => None,
                Delivered::Eof(next) => {
                    dst.shutdown(Shutdown::Write);
                    Some(Ok((Ending::Eof, next.to_vec())))
                }
                Delivered::Unframed(raw) => Some(unframed(chan, dst, raw, meter).await),
            };
            pool::give(buf);
            match ending {
                Some(ending) => return ending,
                None => continue,
            }
        }
        let want = frames.body_left().min(SPLICE_CHUNK);
        let p = take_pipe().map_err(Stop::Plain)?;
        match sys::splice(chan.raw_fd(), p.write.as_fd_raw(), want) {
            Ok(0) => {
                give_pipe(p);
                return Err(Stop::ChannelClosed);
            }
            Ok(n) => {
                frames.skip_body(n);
                maybe_more = n == want;
                (drain(&p, n, dst, chan, &meter).await).map_err(|e| sides(e, false))?;
                give_pipe(p);
            }
            Err(e) => {
                give_pipe(p);
                if e.kind() != io::ErrorKind::WouldBlock {
                    return Err(Stop::Channel(e));
                }
                maybe_more = false;
            }
        }
    }
}

/// Where [`deliver`] stopped.
enum Delivered<'a> {
    /// At the end of the bytes, inside the stream.
    More,
    /// At `Eof`, with what followed it.
    Eof(&'a [u8]),
    /// At `Unframed`, with the raw bytes that followed it.
    Unframed(&'a [u8]),
}

/// Sends the payload framed in `bytes` to `dst`, up to `Eof` or `Unframed`.
async fn deliver<'a>(
    frames: &mut StreamReader,
    mut bytes: &'a [u8],
    dst: &Socket,
    chan: &Socket,
    meter: &Meter<'_>,
) -> Result<Delivered<'a>, Stop> {
    while let Some(piece) = frames.take(&mut bytes)? {
        match piece {
            Piece::Payload(payload) => {
                (meter.send_all_watching(dst, payload, chan).await).map_err(|e| sides(e, false))?
            }
            Piece::Eof => return Ok(Delivered::Eof(bytes)),
            Piece::Unframed => return Ok(Delivered::Unframed(bytes)),
        }
    }
    Ok(Delivered::More)
}

/// After `Unframed`: `raw`, then everything up to the channel's FIN, to `dst`.
async fn unframed(
    chan: &Socket,
    dst: &Socket,
    raw: &[u8],
    meter: Meter<'_>,
) -> Result<(Ending, Vec<u8>), Stop> {
    (meter.send_all_watching(dst, raw, chan).await).map_err(|e| sides(e, false))?;
    pump(chan, dst, true, Wire::Plain, meter).await?;
    Ok((Ending::Fin, Vec::new()))
}

/// Splices all `n` bytes held in `p` into `dst`, waiting for room as needed (and,
/// under a bandwidth limit, for the bucket to grant each piece), watching `other`
/// meanwhile (see [`Socket::send_all_watching`]).
async fn drain(
    p: &Pipe,
    mut n: usize,
    dst: &Socket,
    other: &Socket,
    meter: &Meter<'_>,
) -> Result<(), SendError> {
    // Until the last byte is out, a stop here cuts a frame's body short.
    dst.set_cut_off(n > 0);
    while n > 0 {
        let allowed = meter.allowance(n).await;
        match sys::splice(p.read.as_fd_raw(), dst.raw_fd(), allowed) {
            Ok(0) => return Err(SendError::Own(io::ErrorKind::WriteZero.into())),
            Ok(k) => {
                meter.unused(allowed - k);
                n -= k;
                meter.add(k);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                meter.unused(allowed);
                dst.writable_watching(other).await?;
            }
            Err(e) => return Err(SendError::Own(e)),
        }
    }
    dst.set_cut_off(false);
    Ok(())
}

/// A failed write, or a failure of the socket watched meanwhile, as the stop of the
/// side it happened on (`own_is_channel`: the socket written to is the channel).
fn sides(e: SendError, own_is_channel: bool) -> Stop {
    match e {
        SendError::Own(e) => side(own_is_channel, e),
        SendError::Other(e) => side(!own_is_channel, e),
    }
}

/// TLS content type of an alert record.
const ALERT: u8 = 21;
/// A warning-level close_notify alert: "no more data from this side".
const CLOSE_NOTIFY: [u8; 2] = [1, 0];

/// Ends our side of a kernel-TLS stream with close_notify, waiting for room.
async fn close_notify(chan: &Socket) -> Result<(), Stop> {
    loop {
        match sys::send_record(chan.raw_fd(), ALERT, &CLOSE_NOTIFY) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                chan.writable().await.map_err(Stop::Channel)?
            }
            Err(e) => return Err(Stop::Channel(e)),
        }
    }
}

/// Reads the non-data record that stopped a kernel-TLS splice: a close_notify ends
/// the stream cleanly; any other record is an error naming it.
fn end_of_records(chan: &Socket) -> Result<(), Stop> {
    let mut buf = [0u8; 64];
    let (n, typ) = sys::recv_record(chan.raw_fd(), &mut buf).map_err(Stop::Channel)?;
    match (typ, &buf[..n]) {
        (ALERT, [_, 0]) => Ok(()),
        (ALERT, [level, what]) => Err(Stop::Channel(io::Error::other(format!(
            "the other end sent TLS alert {what} (level {level})"
        )))),
        (typ, _) => Err(Stop::Channel(io::Error::other(format!(
            "unexpected TLS record of content type {typ} on a kernel TLS stream"
        )))),
    }
}

trait AsFdRaw {
    fn as_fd_raw(&self) -> std::os::fd::RawFd;
}

impl AsFdRaw for std::os::fd::OwnedFd {
    fn as_fd_raw(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::io::Read;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicU64;
    use std::time::Duration;

    use super::*;
    use crate::engine::{EngineKind, block_on};
    use crate::ratelimit::{Grant, Limit, TokenBucket};

    /// A burst of 1000 bytes at 1 byte/s: after the burst, the next grant (1000
    /// bytes, the smaller of what is wanted and the burst) is 1000 s away, so
    /// whatever else a relay sends during a test came from ignoring the bucket.
    const BURST: usize = 1000;
    const SENT: usize = 5 * BURST;

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    /// A connected pair: the end the relay uses, as a runtime socket, and the other.
    fn pair() -> (Socket, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let far = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (near, _) = l.accept().unwrap();
        (Socket::from_std(near).unwrap(), far)
    }

    /// The ways a relay direction moves bytes.
    enum Way {
        /// Spliced through a pipe ([`pump`]).
        Spliced,
        /// Framed, copied ([`frames_out`]).
        Framed,
        /// Held whole, then sent ([`Meter::send_all`]: a batch of TLS records, a
        /// frame's payload).
        Held,
    }

    async fn relay(way: Way, src: &Socket, dst: &Socket, meter: Meter<'_>) {
        match way {
            Way::Spliced => drop(pump(src, dst, false, Wire::Plain, meter).await),
            Way::Framed => drop(frames_out(src, dst, meter).await),
            Way::Held => {
                let mut all = vec![0u8; SENT];
                let mut have = 0;
                while have < SENT {
                    src.readable().await.unwrap();
                    if let Ok(n) = src.try_recv(&mut all[have..]) {
                        have += n;
                    }
                }
                drop(meter.send_all(dst, &all).await);
            }
        }
    }

    /// Relays `SENT` bytes one `way` under a full bucket until the meter counted the
    /// burst, then checks that exactly the burst reached the far end, behind the
    /// `header` bytes the relay adds.
    fn sends_only_the_burst(way: Way, header: usize) {
        block_on(EngineKind::Epoll, async move {
            let bucket = Mutex::new(TokenBucket::new(
                Some(Limit {
                    rate: 1,
                    burst: BURST as u64,
                }),
                std::time::Instant::now(),
            ));
            let (conn, core) = (Cell::new(0), AtomicU64::new(0));
            let meter = Meter {
                conn: &conn,
                core: &core,
                limit: Some(&bucket),
                unanswered: None,
            };
            let (src, mut src_far) = pair();
            let (dst, mut dst_far) = pair();
            std::io::Write::write_all(&mut src_far, &pattern(SENT)).unwrap();
            let counted = async {
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                while conn.get() < BURST as u64 {
                    assert!(std::time::Instant::now() < deadline, "the burst never left");
                    monoio::time::sleep(Duration::from_millis(1)).await;
                }
            };
            let relay = relay(way, &src, &dst, meter);
            futures::pin_mut!(relay, counted);
            let _ = futures::future::select(relay, counted).await;
            assert_eq!(conn.get(), BURST as u64);
            let now = std::time::Instant::now();
            assert!(matches!(
                bucket.lock().unwrap().grant(now, 1),
                Grant::Wait(_)
            ));
            let mut got = vec![0u8; header + BURST];
            dst_far.read_exact(&mut got).unwrap();
            assert_eq!(&got[header..], &pattern(SENT)[..BURST]);
            dst_far.set_nonblocking(true).unwrap();
            let more = dst_far.read(&mut [0u8; 1]);
            assert_eq!(
                more.map_err(|e| e.kind()),
                Err(io::ErrorKind::WouldBlock),
                "more than the burst left at once"
            );
        })
        .unwrap();
    }

    #[test]
    fn a_spliced_direction_sends_at_most_the_burst_after_idle() {
        sends_only_the_burst(Way::Spliced, 0);
    }

    #[test]
    fn a_framed_direction_sends_at_most_the_burst_after_idle() {
        // One `Data` frame of the burst: its header, then the payload.
        sends_only_the_burst(Way::Framed, HEADER_LEN);
    }

    #[test]
    fn bytes_already_read_leave_in_granted_pieces() {
        sends_only_the_burst(Way::Held, 0);
    }
}
