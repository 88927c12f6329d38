//! The plain transport: for links that are already encrypted (inside WireGuard, say),
//! and only when the operator opts in on both ends with `--transport plain`.
//!
//! The same `Hello`/`Welcome` and `Open`/`Opened` frames as over TLS, in clear; after
//! `Open` (client) and `Opened` (router) the channel carries raw bytes, relayed with
//! `splice(2)`: the payload never enters user space. TCP half-close maps onto the
//! channel's own half-close, so a plain channel carries one stream and then closes.
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
use conduit_proto::{Message, ProtoError, PublicKey};

use crate::channel::ChannelError;
use crate::handoff::ChannelHandoff;
use crate::net::Socket;
use crate::relay::Stop;
use crate::stats::Meter;
use crate::sys::{self, Pipe};

/// Bytes moved per splice call.
const SPLICE_CHUNK: usize = sys::PIPE_SIZE;
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
    pub(crate) epoch: u64,
    pub(crate) idle_since: Instant,
    /// Bytes received before the worker took over.
    pub(crate) leftover: Vec<u8>,
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
            idle_since: h.made,
            leftover: h.leftover,
        })
    }
}

/// Sends one frame.
pub(crate) async fn send_frame(sock: &Socket, msg: &Message) -> io::Result<()> {
    sock.send_all(&msg.to_frame()).await
}

/// Reads exactly one control frame; returns it with the raw bytes that followed it.
pub(crate) async fn read_frame(
    sock: &Socket,
    mut have: Vec<u8>,
) -> Result<(Message, Vec<u8>), ChannelError> {
    // On the heap: this future is part of every user connection's task.
    let mut chunk = vec![0u8; 4096];
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
        match sock.try_recv(&mut chunk) {
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
            Ok(n) => have.extend_from_slice(&chunk[..n]),
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
    /// Raw bytes (the plain transport): TCP's FIN ends the stream.
    Plain,
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
        match sys::splice(p.read.as_fd_raw(), dst.raw_fd(), in_pipe) {
            Ok(0) => return Err(side(!src_is_channel, io::ErrorKind::WriteZero.into())),
            Ok(n) => {
                in_pipe -= n;
                meter.sent(n).await;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                dst.writable().await.map_err(|e| side(!src_is_channel, e))?
            }
            // A pipe still holding bytes is dropped, not pooled.
            Err(e) => return Err(side(!src_is_channel, e)),
        }
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
