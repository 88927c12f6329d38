//! A socket as the relay uses it: wait for readiness through the runtime's engine
//! (io_uring `PollAdd` or epoll/kqueue), then read or write without blocking.
//!
//! Why readiness rather than io_uring's completion-based reads: one TLS session is
//! driven by both directions of a connection, and rustls' unbuffered API requires
//! every call to see the one buffer of received-but-unprocessed bytes. A read in
//! flight would own that buffer. Waiting for readiness lets the buffer stay with the
//! session, lets an idle connection hold no buffer at all, and makes cancelling a
//! wait (to kill a connection) lose nothing.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};

use monoio::net::TcpStream;

use crate::sys;
pub(crate) use crate::sys::Destination;

/// A TCP socket owned by one core.
pub(crate) struct Socket {
    stream: TcpStream,
    fd: RawFd,
    /// A write was cut off (its future dropped while it waited for room), whether or
    /// not part of it went out: on a channel, records sealed and not sent leave the
    /// TLS session ahead of what the peer can decrypt, and a record cut in two is no
    /// record. Nothing more may be sent, and the close sends RST.
    partial: std::cell::Cell<bool>,
}

impl Drop for Socket {
    fn drop(&mut self) {
        if self.partial.get() {
            // The peer must not take a cut-off record for the end of the stream.
            self.abort();
        }
    }
}

/// Why [`Socket::send_all_watching`] failed.
#[derive(Debug)]
pub(crate) enum SendError {
    /// The socket written to failed.
    Own(io::Error),
    /// The socket watched meanwhile failed (its peer reset it).
    Other(io::Error),
}

/// How often a write that waits for room looks at the socket it watches.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

thread_local! {
    /// This core's writes that wait for room, each with the socket it watches
    /// meanwhile. One task looks them over every [`WATCH_EVERY`]: a timer per wait
    /// would cost a bulk relay, which waits for room thousands of times a second.
    static WATCHES: std::cell::RefCell<Watches> = std::cell::RefCell::default();
}

#[derive(Default)]
struct Watches {
    next: u64,
    open: std::collections::HashMap<u64, Watch>,
    /// The task that looks them over runs on this core.
    swept: bool,
}

struct Watch {
    fd: RawFd,
    waker: Option<std::task::Waker>,
    failed: Option<io::Error>,
}

/// Resolves with the error found on the watched socket; forgets it when dropped.
struct Watched {
    id: u64,
}

impl Watched {
    fn new(fd: RawFd) -> Self {
        WATCHES.with_borrow_mut(|w| {
            if !w.swept {
                w.swept = true;
                monoio::spawn(sweep());
            }
            w.next += 1;
            let id = w.next;
            let watch = Watch {
                fd,
                waker: None,
                failed: None,
            };
            w.open.insert(id, watch);
            Self { id }
        })
    }
}

impl std::future::Future for Watched {
    type Output = io::Error;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Error> {
        WATCHES.with_borrow_mut(|w| match w.open.get_mut(&self.id) {
            Some(watch) => match watch.failed.take() {
                Some(e) => std::task::Poll::Ready(e),
                None => {
                    if !watch
                        .waker
                        .as_ref()
                        .is_some_and(|k| k.will_wake(cx.waker()))
                    {
                        watch.waker = Some(cx.waker().clone());
                    }
                    std::task::Poll::Pending
                }
            },
            None => std::task::Poll::Pending,
        })
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let _ = WATCHES.try_with(|w| w.borrow_mut().open.remove(&self.id));
    }
}

/// Looks at every watched socket of this core once a second, while any write waits;
/// wakes the writes whose socket failed.
async fn sweep() {
    loop {
        monoio::time::sleep(WATCH_EVERY).await;
        let wake: Option<Vec<std::task::Waker>> = WATCHES.with_borrow_mut(|w| {
            if w.open.is_empty() {
                // Nothing waits: no tick on an idle core (the next wait starts one).
                w.swept = false;
                return None;
            }
            let mut wake = Vec::new();
            for watch in w.open.values_mut() {
                if watch.failed.is_none()
                    && let Some(e) = sys::pending_error(watch.fd)
                {
                    watch.failed = Some(e);
                    wake.extend(watch.waker.take());
                }
            }
            Some(wake)
        });
        // Woken outside the borrow: a write woken here forgets its watch.
        let Some(wake) = wake else { return };
        wake.into_iter().for_each(std::task::Waker::wake);
    }
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd
    }
}

impl Socket {
    /// Wraps a runtime socket and makes it non-blocking: the relay never uses the
    /// runtime's read/write operations on it, only readiness waits, so this is safe
    /// under both engines (io_uring's own ops would want a blocking socket).
    pub(crate) fn new(stream: TcpStream) -> io::Result<Self> {
        let fd = stream.as_raw_fd();
        sys::set_nonblocking(fd)?;
        Ok(Self {
            stream,
            fd,
            partial: std::cell::Cell::new(false),
        })
    }

    /// Adopts a socket handed over from the control plane.
    pub(crate) fn from_std(stream: std::net::TcpStream) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        Self::new(TcpStream::from_std(stream)?)
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd
    }

    /// The local address (for a user's socket: the tunnel's address it reached).
    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.stream.local_addr()
    }

    pub(crate) fn set_nodelay(&self) {
        let _ = self.stream.set_nodelay(true);
    }

    /// Applies the operator's options to a user's or a source's socket. Best effort:
    /// a socket that refuses an option still relays.
    pub(crate) fn tune(&self, t: &crate::SocketOptions) {
        let _ = self.stream.set_nodelay(t.nodelay);
        if let Some(idle) = t.keepalive {
            let _ = sys::set_keepalive(self.fd, idle);
        }
        self.size_buffers(t);
    }

    /// Sets the kernel's buffer sizes where the operator chose them (best effort:
    /// the kernel caps them at `net.core.rmem_max` / `wmem_max`).
    pub(crate) fn size_buffers(&self, t: &crate::SocketOptions) {
        if t.recv_buffer.is_some() || t.send_buffer.is_some() {
            let _ = sys::set_buffers(self.fd, t.recv_buffer, t.send_buffer);
        }
    }

    /// The segment size the socket sends with now (see [`sys::tcp_mss`]); `None` if
    /// the kernel will not say.
    pub(crate) fn mss(&self) -> Option<usize> {
        sys::tcp_mss(self.fd).ok().filter(|&m| m > 0)
    }

    /// Waits until a read would not block (data, EOF or an error is pending).
    pub(crate) async fn readable(&self) -> io::Result<()> {
        // `relaxed = false`: on the epoll driver this confirms with poll(2), because
        // our reads bypass the runtime and it cannot track readiness itself.
        self.stream.readable(false).await
    }

    pub(crate) async fn writable(&self) -> io::Result<()> {
        self.stream.writable(false).await
    }

    /// Reads without waiting.
    pub(crate) fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        sys::recv(self.fd, buf)
    }

    /// Writes all of `buf`, waiting for room as needed.
    ///
    /// Most writes fit in the socket's buffer at once; only when one does not is the
    /// wait for room set up, boxed. Every relay task holds this future while it
    /// writes, and a readiness wait kept inline would add its size to the task, that
    /// is, to the memory of every connection for as long as it lives.
    pub(crate) async fn send_all(&self, buf: &[u8]) -> io::Result<()> {
        self.send_all_flags(buf, 0).await
    }

    /// [`Self::send_all`] for bytes that more will follow at once (a frame header
    /// before its spliced body): the kernel holds them back to share a segment.
    pub(crate) async fn send_all_more(&self, buf: &[u8]) -> io::Result<()> {
        self.send_all_flags(buf, sys::MORE).await
    }

    async fn send_all_flags(&self, buf: &[u8], flags: libc::c_int) -> io::Result<()> {
        let sent = self.send_now(buf, flags)?;
        if sent < buf.len() {
            self.partial.set(true);
            Box::pin(self.send_waiting(&buf[sent..], flags)).await?;
            self.partial.set(false);
        }
        Ok(())
    }

    /// [`Self::send_all`] that, while it waits for room, looks at `other` every
    /// second: a relay blocked on a peer that stopped reading still learns that the
    /// peer on its other side reset its connection (a user that gave up, a channel
    /// the other end of the tunnel aborted), and ends instead of holding both
    /// connections until the slow peer reads.
    pub(crate) async fn send_all_watching(
        &self,
        buf: &[u8],
        other: &Socket,
    ) -> Result<(), SendError> {
        let sent = self.send_now(buf, 0).map_err(SendError::Own)?;
        if sent < buf.len() {
            self.partial.set(true);
            Box::pin(self.send_watching(&buf[sent..], other)).await?;
            self.partial.set(false);
        }
        Ok(())
    }

    async fn send_watching(&self, mut buf: &[u8], other: &Socket) -> Result<(), SendError> {
        while !buf.is_empty() {
            self.writable_watching(other).await?;
            buf = &buf[self.send_now(buf, 0).map_err(SendError::Own)?..];
        }
        Ok(())
    }

    /// Waits for room, looking at `other` every second (see
    /// [`Self::send_all_watching`]).
    pub(crate) async fn writable_watching(&self, other: &Socket) -> Result<(), SendError> {
        let watch = Watched::new(other.fd);
        monoio::select! {
            room = self.writable() => room.map_err(SendError::Own),
            failed = watch => Err(SendError::Other(failed)),
        }
    }

    /// Whether a write was cut off part way (see [`Socket::partial`]'s field).
    pub(crate) fn cut_off(&self) -> bool {
        self.partial.get()
    }

    /// Marks a write made outside [`Self::send_all`] (a splice) as under way, or done.
    pub(crate) fn set_cut_off(&self, under_way: bool) {
        self.partial.set(under_way);
    }

    /// Writes as much of `buf` as the socket takes without waiting; how much.
    fn send_now(&self, buf: &[u8], flags: libc::c_int) -> io::Result<usize> {
        let mut sent = 0;
        while sent < buf.len() {
            match sys::send_flags(self.fd, &buf[sent..], flags) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(sent)
    }

    /// The rest of a write the socket had no room for: wait for room, write what fits,
    /// again until all is written.
    async fn send_waiting(&self, mut buf: &[u8], flags: libc::c_int) -> io::Result<()> {
        while !buf.is_empty() {
            self.writable().await?;
            buf = &buf[self.send_now(buf, flags)?..];
        }
        Ok(())
    }

    pub(crate) fn shutdown(&self, how: Shutdown) {
        sys::shutdown(self.fd, how);
    }

    /// Arranges for the close to send RST: the peer sees an abort, not an end.
    pub(crate) fn abort(&self) {
        self.reset_on_close();
    }

    /// Guards a stream in flight (a user's or a source's connection, a plain
    /// channel's raw direction): until [`Self::close_orderly`], any close sends RST,
    /// the kernel's too when the process is killed, so a relay that dies mid-stream is
    /// never taken for the stream's end.
    pub(crate) fn reset_on_close(&self) {
        sys::linger_zero(self.fd, true);
    }

    /// The stream ended cleanly: the close that follows sends what is still queued,
    /// then FIN, as usual.
    pub(crate) fn close_orderly(&self) {
        sys::linger_zero(self.fd, false);
    }

    pub(crate) fn peek(&self) -> sys::Peek {
        sys::peek(self.fd)
    }
}

/// A UDP socket owned by one core: a tunnel's bound socket on a client (many users
/// send to it), or one flow's socket connected to its source on a router.
pub(crate) struct Udp {
    sock: monoio::net::udp::UdpSocket,
    fd: RawFd,
    /// The kernel reports each datagram's destination ([`Udp::serving`]).
    destinations: bool,
}

impl Udp {
    /// Takes over a bound (and, on a router, connected) socket.
    pub(crate) fn from_std(s: std::net::UdpSocket) -> io::Result<Self> {
        s.set_nonblocking(true)?;
        let sock = monoio::net::udp::UdpSocket::from_std(s)?;
        let fd = sock.as_raw_fd();
        sys::set_nonblocking(fd)?;
        Ok(Self {
            sock,
            fd,
            destinations: false,
        })
    }

    /// Takes over a tunnel's bound socket. One bound to every address (`0.0.0.0`,
    /// `::`) learns each datagram's destination, so that answers leave from the
    /// address their user sent to: on a host with several, the kernel would pick
    /// the one its routing prefers, whose answers users' sockets drop.
    pub(crate) fn serving(s: std::net::UdpSocket) -> io::Result<Self> {
        let local = s.local_addr()?;
        let mut me = Self::from_std(s)?;
        if local.ip().is_unspecified() {
            sys::report_destinations(me.fd, local.is_ipv6())?;
            me.destinations = true;
        }
        Ok(me)
    }

    /// Waits until a datagram (or an error, such as ICMP's "port unreachable") is
    /// queued.
    pub(crate) async fn readable(&self) -> io::Result<()> {
        self.sock.readable(false).await
    }

    /// The address the socket is bound to.
    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    /// The next queued datagram, its sender and (on a socket bound to every
    /// address) the local address it was sent to, without waiting.
    pub(crate) fn try_recv_from(
        &self,
        buf: &mut [u8],
    ) -> io::Result<(usize, SocketAddr, Option<Destination>)> {
        if self.destinations {
            return sys::recv_from_to(self.fd, buf);
        }
        sys::recv_from(self.fd, buf).map(|(n, from)| (n, from, None))
    }

    /// Datagrams the kernel dropped on their way into this socket since it was made
    /// (see [`sys::receive_drops`]); `None` where the system does not say.
    pub(crate) fn receive_drops(&self) -> Option<u32> {
        sys::receive_drops(self.fd)
    }

    /// The next queued datagram of a connected socket, without waiting.
    pub(crate) fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        sys::recv(self.fd, buf)
    }

    /// The error pending on the socket (the ICMP error an earlier datagram drew),
    /// taken: reading it clears it.
    pub(crate) fn take_error(&self) -> Option<io::Error> {
        sys::pending_error(self.fd)
    }

    /// Connects the socket to `to` instead of its peer so far: from now on only
    /// `to`'s datagrams reach it and unaddressed sends go there.
    pub(crate) fn reconnect(&self, to: SocketAddr) -> io::Result<()> {
        sys::connect(self.fd, to)
    }

    /// Sends one datagram (to `to`, or to the connected peer when `None`; from
    /// local address `from` when given), waiting for room in the socket's buffer
    /// rather than dropping it.
    pub(crate) async fn send(
        &self,
        buf: &[u8],
        to: Option<SocketAddr>,
        from: Option<Destination>,
    ) -> io::Result<()> {
        loop {
            let sent = match (to, from) {
                (Some(addr), Some(from)) => sys::send_to_from(self.fd, buf, addr, from),
                (Some(addr), None) => sys::send_to(self.fd, buf, addr),
                (None, _) => sys::send(self.fd, buf),
            };
            match sent {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.sock.writable(false).await?
                }
                Err(e) => return Err(e),
            }
        }
    }
}
