//! System calls the runtimes do not offer: non-blocking `recv`/`send` (and, for UDP,
//! `recvfrom`/`sendto`, and `recvmsg`/`sendmsg` with the datagram's local address)
//! on a socket the runtime owns, a peek to tell whether an idle
//! socket is still alive, abortive close, pipes and `splice` for plain legs, and
//! (Linux) the socket options and kernel structures of kernel TLS and the kernel's
//! count of packets a socket dropped; and a child process that stops with its parent.
//! This is the crate's only unsafe code; each call passes a file descriptor that a
//! live `TcpStream` or `UdpSocket` owns for the whole call, and slices whose length
//! is the length given to the kernel.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::RawFd;

#[cfg(target_os = "linux")]
const SEND_FLAGS: libc::c_int = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
#[cfg(not(target_os = "linux"))]
const SEND_FLAGS: libc::c_int = libc::MSG_DONTWAIT;

/// `send` flag: more follows at once, so hold this back to share a segment with it.
#[cfg(target_os = "linux")]
pub(crate) const MORE: libc::c_int = libc::MSG_MORE;
#[cfg(not(target_os = "linux"))]
pub(crate) const MORE: libc::c_int = 0;

/// Reads what is available without waiting; `WouldBlock` when nothing is.
pub(crate) fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is a valid, writable slice of `buf.len()` bytes for the whole
        // call, and `fd` belongs to a socket the caller keeps open.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Writes what fits without waiting; `WouldBlock` when nothing does.
pub(crate) fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    send_flags(fd, buf, 0)
}

/// [`send`] with more flags (`MORE`).
pub(crate) fn send_flags(fd: RawFd, buf: &[u8], flags: libc::c_int) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is a valid slice of `buf.len()` bytes for the whole call, and
        // `fd` belongs to a socket the caller keeps open.
        let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), SEND_FLAGS | flags) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Receives one datagram without waiting, and who sent it; `WouldBlock` when none is
/// queued. A datagram longer than `buf` is cut (the caller passes 64 KiB, the most
/// UDP carries).
pub(crate) fn recv_from(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, std::net::SocketAddr)> {
    loop {
        // SAFETY: `buf` is writable for `buf.len()` bytes; `storage` and `len` are the
        // address buffer `try_init` owns for the call; `fd` is a socket the caller
        // keeps open.
        let res = unsafe {
            socket2::SockAddr::try_init(|storage, len| {
                let n = libc::recvfrom(
                    fd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    storage.cast(),
                    len,
                );
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            })
        };
        match res {
            Ok((n, addr)) => {
                let addr = addr.as_socket().ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a datagram from a non-IP sender",
                    )
                })?;
                return Ok((n, addr));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The local address a datagram was sent to, as the kernel reports it with the
/// datagram (`IP_PKTINFO`, `IPV6_PKTINFO`): what an answer must come from, on a
/// socket bound to every address of a host that has several.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) struct Destination {
    /// For IPv4, the local address routing gives the datagram (its destination,
    /// unless that was a broadcast); for IPv6, its destination (an IPv4 one mapped,
    /// on a dual-stack socket).
    pub(crate) addr: std::net::IpAddr,
    /// The interface it came in on (IPv6: an answer from a link-local address must
    /// leave there).
    pub(crate) ifindex: u32,
}

/// Asks the kernel to report each datagram's [`Destination`] on UDP socket `fd`
/// (`v6`: an IPv6 socket, whose report covers the IPv4 datagrams of a dual-stack
/// one too). Linux only; elsewhere nothing is reported.
#[cfg(target_os = "linux")]
pub(crate) fn report_destinations(fd: RawFd, v6: bool) -> io::Result<()> {
    let on: libc::c_int = 1;
    let (level, name) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
    } else {
        (libc::IPPROTO_IP, libc::IP_PKTINFO)
    };
    // SAFETY: `on` is a live c_int and the length given is its size; `fd` is a socket
    // the caller keeps open.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn report_destinations(_fd: RawFd, _v6: bool) -> io::Result<()> {
    Ok(())
}

/// A `msghdr` for one buffer (`iov`) and a control-message area (`control`, whole:
/// a sender sets the length it fills), with no address. It points at both: the
/// caller keeps them alive while the kernel uses it.
#[cfg(target_os = "linux")]
fn one_buffer_msg(iov: &mut libc::iovec, control: &mut [u64]) -> libc::msghdr {
    // SAFETY: an all-zero msghdr is valid (no name, no buffers).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(control) as _;
    msg
}

/// Room for one `IP_PKTINFO` or `IPV6_PKTINFO` control message (with its header),
/// in 8-byte words so that it is aligned as control messages must be.
#[cfg(target_os = "linux")]
const PKTINFO_WORDS: usize = 8;

/// [`recv_from`] on a socket that reports destinations ([`report_destinations`]):
/// also the datagram's [`Destination`], when the kernel gave one.
#[cfg(target_os = "linux")]
pub(crate) fn recv_from_to(
    fd: RawFd,
    buf: &mut [u8],
) -> io::Result<(usize, std::net::SocketAddr, Option<Destination>)> {
    let mut control = [0u64; PKTINFO_WORDS];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut msg = one_buffer_msg(&mut iov, &mut control);
    // SAFETY: `msg` points at the address buffer `try_init` owns for the call (its
    // length read from and written back to `len`), at `buf` and at `control`, all
    // live and writable for the lengths given; `fd` is a socket the caller keeps
    // open.
    let (n, from) = unsafe {
        socket2::SockAddr::try_init(|storage, len| {
            msg.msg_name = storage.cast();
            msg.msg_namelen = *len;
            loop {
                let n = libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT);
                if n >= 0 {
                    *len = msg.msg_namelen;
                    return Ok(n as usize);
                }
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        })?
    };
    let from = from.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "a datagram from a non-IP sender",
        )
    })?;
    let mut to = None;
    // SAFETY: the kernel filled `msg_controllen` bytes of `control`; the CMSG macros
    // walk only within them, and each message's data is read unaligned, whole, only
    // when its level and type say which structure it holds.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let data = libc::CMSG_DATA(cmsg);
            match ((*cmsg).cmsg_level, (*cmsg).cmsg_type) {
                (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                    let info = std::ptr::read_unaligned(data.cast::<libc::in_pktinfo>());
                    to = Some(Destination {
                        addr: std::net::Ipv4Addr::from(u32::from_be(info.ipi_spec_dst.s_addr))
                            .into(),
                        ifindex: 0,
                    });
                }
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                    let info = std::ptr::read_unaligned(data.cast::<libc::in6_pktinfo>());
                    let addr = std::net::Ipv6Addr::from(info.ipi6_addr.s6_addr);
                    // An answer cannot come from a multicast address: the kernel
                    // picks one then.
                    if !addr.is_multicast()
                        && !addr.to_ipv4_mapped().is_some_and(|a| a.is_multicast())
                    {
                        to = Some(Destination {
                            addr: addr.into(),
                            ifindex: info.ipi6_ifindex,
                        });
                    }
                }
                _ => {}
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n, from, to))
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn recv_from_to(
    fd: RawFd,
    buf: &mut [u8],
) -> io::Result<(usize, std::net::SocketAddr, Option<Destination>)> {
    recv_from(fd, buf).map(|(n, from)| (n, from, None))
}

/// [`send_to`] from local address `from` (a datagram's [`Destination`], on the
/// socket it came in on): the answer leaves from the address the user sent to,
/// which the kernel would not otherwise pick on a host with several.
#[cfg(target_os = "linux")]
pub(crate) fn send_to_from(
    fd: RawFd,
    buf: &[u8],
    to: std::net::SocketAddr,
    from: Destination,
) -> io::Result<usize> {
    let addr = socket2::SockAddr::from(to);
    let mut control = [0u64; PKTINFO_WORDS];
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr().cast_mut().cast(),
        iov_len: buf.len(),
    };
    let mut msg = one_buffer_msg(&mut iov, &mut control);
    msg.msg_name = addr.as_ptr().cast_mut().cast();
    msg.msg_namelen = addr.len();
    let (level, kind, len) = match from.addr {
        std::net::IpAddr::V4(_) => (
            libc::IPPROTO_IP,
            libc::IP_PKTINFO,
            std::mem::size_of::<libc::in_pktinfo>(),
        ),
        std::net::IpAddr::V6(_) => (
            libc::IPPROTO_IPV6,
            libc::IPV6_PKTINFO,
            std::mem::size_of::<libc::in6_pktinfo>(),
        ),
    };
    // SAFETY: CMSG_SPACE only computes a size.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(len as u32) } as _;
    // SAFETY: `control` is 8-byte aligned and larger than CMSG_SPACE of either
    // structure, so the header and its data lie inside it; the data is written
    // unaligned, whole.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = level;
        (*cmsg).cmsg_type = kind;
        (*cmsg).cmsg_len = libc::CMSG_LEN(len as u32) as _;
        let data = libc::CMSG_DATA(cmsg);
        match from.addr {
            std::net::IpAddr::V4(a) => std::ptr::write_unaligned(
                data.cast::<libc::in_pktinfo>(),
                libc::in_pktinfo {
                    // The interface is left to routing, as for any answer.
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from(a).to_be(),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                },
            ),
            std::net::IpAddr::V6(a) => std::ptr::write_unaligned(
                data.cast::<libc::in6_pktinfo>(),
                libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: a.octets(),
                    },
                    ipi6_ifindex: from.ifindex,
                },
            ),
        }
    }
    loop {
        // SAFETY: every pointer in `msg` refers to `addr`, `buf` or `control`, all
        // live for the call and only read by the kernel; `fd` is a socket the
        // caller keeps open.
        let n = unsafe { libc::sendmsg(fd, &msg, SEND_FLAGS) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn send_to_from(
    fd: RawFd,
    buf: &[u8],
    to: std::net::SocketAddr,
    _from: Destination,
) -> io::Result<usize> {
    send_to(fd, buf, to)
}

/// Connects socket `fd` to `to` (for a UDP socket: sets its peer; it does not wait).
pub(crate) fn connect(fd: RawFd, to: std::net::SocketAddr) -> io::Result<()> {
    // SAFETY: the caller keeps `fd` open for the whole call.
    let sock = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    socket2::SockRef::from(&sock).connect(&to.into())
}

/// Sends one datagram to `to` without waiting; `WouldBlock` when the socket's buffer
/// is full.
pub(crate) fn send_to(fd: RawFd, buf: &[u8], to: std::net::SocketAddr) -> io::Result<usize> {
    let addr = socket2::SockAddr::from(to);
    loop {
        // SAFETY: `buf` is readable for `buf.len()` bytes and `addr` for `addr.len()`
        // for the whole call; `fd` is a socket the caller keeps open.
        let n = unsafe {
            libc::sendto(
                fd,
                buf.as_ptr().cast(),
                buf.len(),
                SEND_FLAGS,
                addr.as_ptr().cast(),
                addr.len(),
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// What an idle socket has to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Peek {
    /// Nothing to read: still open as far as we can tell.
    Quiet,
    /// The peer sent something (on an idle channel: it is going away).
    Data,
    /// The peer closed or reset the connection.
    Closed,
}

/// Looks at an idle socket without consuming anything.
pub(crate) fn peek(fd: RawFd) -> Peek {
    let mut byte = [0u8; 1];
    // SAFETY: one writable byte, a socket the caller keeps open.
    let n = unsafe {
        libc::recv(
            fd,
            byte.as_mut_ptr().cast(),
            1,
            libc::MSG_DONTWAIT | libc::MSG_PEEK,
        )
    };
    match n {
        0 => Peek::Closed,
        n if n > 0 => Peek::Data,
        _ => match io::Error::last_os_error().kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Peek::Quiet,
            _ => Peek::Closed,
        },
    }
}

/// `shutdown(2)`; errors (already closed, not connected) do not matter to callers.
pub(crate) fn shutdown(fd: RawFd, how: std::net::Shutdown) {
    let how = match how {
        std::net::Shutdown::Read => libc::SHUT_RD,
        std::net::Shutdown::Write => libc::SHUT_WR,
        std::net::Shutdown::Both => libc::SHUT_RDWR,
    };
    // SAFETY: plain syscall on a socket the caller keeps open.
    unsafe {
        libc::shutdown(fd, how);
    }
}

/// With `reset`, makes every later close of the socket (the kernel's when the process
/// dies included) send RST instead of FIN, so the peer sees an abort; without, closes
/// are orderly again (the default).
pub(crate) fn linger_zero(fd: RawFd, reset: bool) {
    let l = libc::linger {
        l_onoff: reset.into(),
        l_linger: 0,
    };
    // SAFETY: `l` outlives the call and the length passed is its size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Turns TCP keep-alive on: probes after `idle` without traffic, then every 10 s, and
/// the connection is dropped after 6 unanswered ones.
pub(crate) fn set_keepalive(fd: RawFd, idle: std::time::Duration) -> io::Result<()> {
    // SAFETY: `fd` belongs to a socket the caller keeps open for the whole call, and
    // the borrow does not outlive it.
    let sock = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let ka = socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval(std::time::Duration::from_secs(10));
    #[cfg(any(target_os = "linux", target_os = "freebsd", target_os = "macos"))]
    let ka = ka.with_retries(6);
    socket2::SockRef::from(&sock).set_tcp_keepalive(&ka)
}

/// The TCP maximum segment size the socket sends with now (`TCP_MAXSEG`). It moves
/// while a connection runs: Linux bounds it by half the largest window the peer has
/// offered, so on loopback it climbs from about 32 KiB to 65,483 bytes.
pub(crate) fn tcp_mss(fd: RawFd) -> io::Result<usize> {
    // SAFETY: `fd` belongs to a socket the caller keeps open for the whole call, and
    // the borrow does not outlive it.
    let sock = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    Ok(socket2::SockRef::from(&sock).tcp_mss()? as usize)
}

/// Sets `SO_RCVBUF` and `SO_SNDBUF` (each only when given). Setting one turns the
/// kernel's auto-tuning off for that direction of this socket.
pub(crate) fn set_buffers(fd: RawFd, recv: Option<usize>, send: Option<usize>) -> io::Result<()> {
    // SAFETY: `fd` belongs to a socket the caller keeps open for the whole call, and
    // the borrow does not outlive it.
    let sock = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let sock = socket2::SockRef::from(&sock);
    if let Some(n) = recv {
        sock.set_recv_buffer_size(n)?;
    }
    if let Some(n) = send {
        sock.set_send_buffer_size(n)?;
    }
    Ok(())
}

/// Whether [`receive_drops`] reads anything on this system (Linux's `SO_MEMINFO`).
pub(crate) const RECEIVE_DROPS_KNOWN: bool = cfg!(target_os = "linux");

/// `SK_MEMINFO_VARS`: the length of the array `SO_MEMINFO` fills (not in `libc`).
#[cfg(target_os = "linux")]
const SK_MEMINFO_VARS: usize = 9;

/// How many packets the kernel dropped on their way into the socket since it was
/// made: for UDP, datagrams that found its receive buffer full (and the few that
/// failed their checksum). `SK_MEMINFO_DROPS` of `getsockopt(SOL_SOCKET,
/// SO_MEMINFO)`; the kernel keeps it in 32 bits, so it wraps. `None` where the
/// system does not say: not Linux, or a kernel that does not fill the field.
pub(crate) fn receive_drops(fd: RawFd) -> Option<u32> {
    #[cfg(target_os = "linux")]
    {
        let mut info = [0u32; SK_MEMINFO_VARS];
        let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
        // SAFETY: `info` is writable for `len` bytes and `len` is a valid socklen_t
        // for the whole call; the kernel writes at most `len` bytes and stores how
        // many in `len`. `fd` belongs to a socket the caller keeps open.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_MEMINFO,
                info.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let drops = libc::SK_MEMINFO_DROPS as usize;
        let filled = (len as usize) / std::mem::size_of::<u32>();
        (rc == 0 && filled > drops).then(|| info[drops])
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = fd;
        None
    }
}

/// A pipe, both ends non-blocking, for splicing between sockets.
pub(crate) struct Pipe {
    pub(crate) read: std::os::fd::OwnedFd,
    pub(crate) write: std::os::fd::OwnedFd,
}

/// Creates a non-blocking, close-on-exec pipe.
#[cfg(target_os = "linux")]
pub(crate) fn pipe() -> io::Result<Pipe> {
    use std::os::fd::FromRawFd;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a writable array of two ints, as pipe2 requires.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    let (read, write) = unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    };
    // A larger pipe moves more per splice call; where the host refuses (its
    // pipe-max-size or the user's pipe page budget), the default size still works.
    // SAFETY: fcntl on a descriptor owned just above.
    unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&write),
            libc::F_SETPIPE_SZ,
            PIPE_SIZE as libc::c_int,
        );
    }
    Ok(Pipe { read, write })
}

/// Bytes a relay pipe asks the kernel to hold (the default is 64 KiB).
#[cfg(target_os = "linux")]
pub(crate) const PIPE_SIZE: usize = 256 * 1024;

/// Moves up to `len` bytes from `from` to `to` inside the kernel without blocking;
/// one side must be a pipe. `Ok(0)` from a socket is EOF.
#[cfg(target_os = "linux")]
pub(crate) fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    loop {
        // SAFETY: plain syscall on descriptors the caller keeps open; null offsets
        // mean "current position", as sockets and pipes require.
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// A borrowed handle on a descriptor that `owner` keeps open: for the APIs that
/// take `BorrowedFd` (the kTLS calls), given a socket the runtime owns.
pub(crate) fn borrow_fd<T: std::os::fd::AsRawFd>(owner: &T) -> std::os::fd::BorrowedFd<'_> {
    // SAFETY: `owner` holds the descriptor open for at least the lifetime of the
    // borrow, which is tied to `owner`'s.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(owner.as_raw_fd()) }
}

/// Sets `O_NONBLOCK`. Relay sockets are only ever waited on for readiness and then
/// read, written or spliced directly, so they are non-blocking under every engine
/// (`SPLICE_F_NONBLOCK` covers only the pipe side of a splice).
pub(crate) fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller keeps open; F_GETFL takes no argument.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    if flags & libc::O_NONBLOCK != 0 {
        return Ok(());
    }
    // SAFETY: as above; F_SETFL takes an int of flags.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `setsockopt(fd, level, name, bytes, bytes.len())`.
#[cfg(target_os = "linux")]
fn setsockopt_bytes(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    bytes: &[u8],
) -> io::Result<()> {
    let len = libc::socklen_t::try_from(bytes.len())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `bytes` is a valid slice of `len` bytes for the whole call; the kernel
    // only reads it. `fd` belongs to a socket the caller keeps open.
    let rc = unsafe { libc::setsockopt(fd, level, name, bytes.as_ptr().cast(), len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(target_os = "linux")]
pub(crate) use ktls_abi::*;

/// The kernel-TLS ABI: `include/uapi/linux/tls.h` and `TCP_ULP` from
/// `include/uapi/linux/tcp.h`. Defined here rather than taken from `libc` so that the
/// layout the kernel reads sits next to the unsafe code that hands it over; the unit
/// tests in `ktls` check every size and offset against the kernel header's numbers
/// and against `libc`'s definitions.
#[cfg(target_os = "linux")]
mod ktls_abi {
    use std::io;
    use std::mem::size_of;
    use std::os::fd::RawFd;

    use zeroize::Zeroize;

    /// `TCP_ULP`: attach an upper-layer protocol ("tls") to a TCP socket.
    pub(crate) const TCP_ULP: libc::c_int = 31;
    /// `SOL_TLS`: the socket level of the kTLS options.
    pub(crate) const SOL_TLS: libc::c_int = 282;
    /// `TLS_TX`: install the keys the kernel encrypts with.
    pub(crate) const TLS_TX: libc::c_int = 1;
    /// `TLS_RX`: install the keys the kernel decrypts with.
    pub(crate) const TLS_RX: libc::c_int = 2;
    /// `TLS_1_3_VERSION`: `TLS_VERSION_NUMBER(TLS_1_3)` = major 3 << 8 | minor 4.
    pub(crate) const TLS_1_3_VERSION: u16 = 0x0304;
    /// `TLS_CIPHER_AES_GCM_128`.
    pub(crate) const TLS_CIPHER_AES_GCM_128: u16 = 51;
    /// `TLS_CIPHER_AES_GCM_256`.
    pub(crate) const TLS_CIPHER_AES_GCM_256: u16 = 52;
    /// `TLS_CIPHER_CHACHA20_POLY1305`.
    pub(crate) const TLS_CIPHER_CHACHA20_POLY1305: u16 = 54;
    /// `TLS_CIPHER_*_REC_SEQ_SIZE`: the same for every cipher.
    pub(crate) const REC_SEQ_SIZE: usize = 8;

    /// `struct tls_crypto_info`: the header of every crypto-info struct. Both fields
    /// are in host byte order.
    #[repr(C)]
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct TlsCryptoInfo {
        pub(crate) version: u16,
        pub(crate) cipher_type: u16,
    }

    /// The kernel's `struct tls12_crypto_info_<cipher>` family (used for TLS 1.3 as
    /// well): the header, then `iv[IV]`, `key[KEY]`, `salt[SALT]`, `rec_seq[8]`, all
    /// byte arrays, so there is no padding (checked in [`Self::as_bytes`]). The key
    /// material is wiped when the value is dropped.
    #[repr(C)]
    pub(crate) struct Tls12CryptoInfo<const IV: usize, const KEY: usize, const SALT: usize> {
        pub(crate) info: TlsCryptoInfo,
        pub(crate) iv: [u8; IV],
        pub(crate) key: [u8; KEY],
        pub(crate) salt: [u8; SALT],
        pub(crate) rec_seq: [u8; REC_SEQ_SIZE],
    }

    /// `struct tls12_crypto_info_aes_gcm_128`.
    pub(crate) type Tls12CryptoInfoAesGcm128 = Tls12CryptoInfo<8, 16, 4>;
    /// `struct tls12_crypto_info_aes_gcm_256`.
    pub(crate) type Tls12CryptoInfoAesGcm256 = Tls12CryptoInfo<8, 32, 4>;
    /// `struct tls12_crypto_info_chacha20_poly1305` (its `salt` has zero length).
    pub(crate) type Tls12CryptoInfoChacha20Poly1305 = Tls12CryptoInfo<12, 32, 0>;

    impl<const IV: usize, const KEY: usize, const SALT: usize> Tls12CryptoInfo<IV, KEY, SALT> {
        /// A zeroed struct with its header filled in.
        pub(crate) fn new(cipher_type: u16) -> Self {
            Self {
                info: TlsCryptoInfo {
                    version: TLS_1_3_VERSION,
                    cipher_type,
                },
                iv: [0; IV],
                key: [0; KEY],
                salt: [0; SALT],
                rec_seq: [0; REC_SEQ_SIZE],
            }
        }

        /// The bytes the kernel reads.
        pub(crate) fn as_bytes(&self) -> &[u8] {
            const {
                assert!(
                    size_of::<Self>()
                        == size_of::<TlsCryptoInfo>() + IV + KEY + SALT + REC_SEQ_SIZE
                );
            }
            // SAFETY: `Self` is `repr(C)` and made only of `u16`s and `u8` arrays whose
            // sizes add up to `size_of::<Self>()` (asserted at compile time above), so
            // it has no padding and every one of its bytes is initialised. The slice
            // borrows `self`, so it cannot outlive the struct.
            unsafe {
                std::slice::from_raw_parts((self as *const Self).cast::<u8>(), size_of::<Self>())
            }
        }
    }

    impl<const IV: usize, const KEY: usize, const SALT: usize> Drop for Tls12CryptoInfo<IV, KEY, SALT> {
        fn drop(&mut self) {
            self.iv.zeroize();
            self.key.zeroize();
            self.salt.zeroize();
        }
    }

    /// One direction's keys, in the struct its cipher needs.
    pub(crate) enum CryptoInfo {
        Aes128Gcm(Tls12CryptoInfoAesGcm128),
        Aes256Gcm(Tls12CryptoInfoAesGcm256),
        Chacha20Poly1305(Tls12CryptoInfoChacha20Poly1305),
    }

    impl CryptoInfo {
        pub(crate) fn as_bytes(&self) -> &[u8] {
            match self {
                Self::Aes128Gcm(c) => c.as_bytes(),
                Self::Aes256Gcm(c) => c.as_bytes(),
                Self::Chacha20Poly1305(c) => c.as_bytes(),
            }
        }
    }

    /// Attaches the upper-layer protocol `name` to a connected TCP socket. The name is
    /// passed NUL-terminated, as the kernel's documentation does (`sizeof("tls")`).
    pub(crate) fn set_tcp_ulp(fd: RawFd, name: &str) -> io::Result<()> {
        let mut bytes = Vec::with_capacity(name.len() + 1);
        bytes.extend_from_slice(name.as_bytes());
        bytes.push(0);
        super::setsockopt_bytes(fd, libc::IPPROTO_TCP, TCP_ULP, &bytes)
    }

    /// Installs one direction's record keys (`TLS_TX` or `TLS_RX`) on a socket whose
    /// "tls" ULP is attached.
    pub(crate) fn set_tls_crypto(
        fd: RawFd,
        direction: libc::c_int,
        info: &CryptoInfo,
    ) -> io::Result<()> {
        super::setsockopt_bytes(fd, SOL_TLS, direction, info.as_bytes())
    }

    /// `TLS_SET_RECORD_TYPE` / `TLS_GET_RECORD_TYPE`: the control message that gives
    /// a record's content type on a kTLS socket.
    const TLS_SET_RECORD_TYPE: libc::c_int = 1;
    const TLS_GET_RECORD_TYPE: libc::c_int = 2;

    /// Room for one control message carrying one byte.
    const CMSG_ROOM: usize = 64;

    /// Sends `payload` as one record of content type `typ` (21: alert) through the
    /// kernel's TLS, without blocking.
    pub(crate) fn send_record(fd: RawFd, typ: u8, payload: &[u8]) -> io::Result<usize> {
        let mut control = [0u64; CMSG_ROOM / 8];
        let mut iov = libc::iovec {
            iov_base: payload.as_ptr().cast_mut().cast(),
            iov_len: payload.len(),
        };
        let mut msg = super::one_buffer_msg(&mut iov, &mut control);
        // SAFETY: CMSG_SPACE only computes a size.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(1) } as _;
        // SAFETY: msg_control points at `control`, which is larger than
        // CMSG_SPACE(1) and 8-byte aligned, so the first header and its one data
        // byte lie inside it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = SOL_TLS;
            (*cmsg).cmsg_type = TLS_SET_RECORD_TYPE;
            (*cmsg).cmsg_len = libc::CMSG_LEN(1) as _;
            *libc::CMSG_DATA(cmsg) = typ;
        }
        loop {
            // SAFETY: every pointer in `msg` refers to live locals or to `payload`,
            // which the kernel only reads.
            let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    /// Reads the next record from a kTLS socket without blocking, with its content
    /// type (23 for application data): how a non-data record (an alert, say), which
    /// `splice` refuses with `EINVAL`, is read.
    pub(crate) fn recv_record(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, u8)> {
        let mut control = [0u64; CMSG_ROOM / 8];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut msg = super::one_buffer_msg(&mut iov, &mut control);
        let n = loop {
            // SAFETY: `msg` points at `buf` and `control`, both live and writable
            // for the lengths given.
            let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
            if n >= 0 {
                break n as usize;
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        };
        // Application data comes without a control message.
        let mut typ = 23;
        // SAFETY: the kernel filled `msg_controllen` bytes of `control`; the CMSG
        // macros walk only within them.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == SOL_TLS && (*cmsg).cmsg_type == TLS_GET_RECORD_TYPE {
                    typ = *libc::CMSG_DATA(cmsg);
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        Ok((n, typ))
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn relay_pipes_are_enlarged_where_the_host_allows() {
        let p = pipe().unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&p.write);
        // SAFETY: fcntl on a descriptor `p` owns.
        let size = unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) };
        let max: usize = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if max >= PIPE_SIZE {
            assert_eq!(size as usize, PIPE_SIZE);
        } else {
            assert!(size > 0, "F_GETPIPE_SZ failed");
        }
    }

    #[test]
    fn socket_buffers_are_set_only_when_chosen() {
        use std::os::fd::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sock = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let r = socket2::SockRef::from(&sock);
        let (recv0, send0) = (r.recv_buffer_size().unwrap(), r.send_buffer_size().unwrap());

        set_buffers(sock.as_raw_fd(), None, None).unwrap();
        assert_eq!(r.recv_buffer_size().unwrap(), recv0);
        assert_eq!(r.send_buffer_size().unwrap(), send0);

        // Linux doubles the value for its bookkeeping and reports the doubled size.
        set_buffers(sock.as_raw_fd(), Some(16 * 1024), None).unwrap();
        assert_eq!(r.recv_buffer_size().unwrap(), 32 * 1024);
        assert_eq!(r.send_buffer_size().unwrap(), send0);
        set_buffers(sock.as_raw_fd(), None, Some(8 * 1024)).unwrap();
        assert_eq!(r.send_buffer_size().unwrap(), 16 * 1024);
    }

    #[test]
    fn a_full_receive_buffer_drops_datagrams_and_the_kernel_counts_them() {
        use std::os::fd::AsRawFd;
        let fresh = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(receive_drops(fresh.as_raw_fd()), Some(0));

        let full = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // The kernel raises this to its floor (a few KiB): room for a handful of
        // datagrams, each charged with its buffer's true size.
        socket2::SockRef::from(&full)
            .set_recv_buffer_size(1024)
            .unwrap();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // Loopback delivers each datagram before `send_to` returns: nothing is read,
        // so all but the first few are dropped.
        for _ in 0..200 {
            sender
                .send_to(&[7u8; 1000], full.local_addr().unwrap())
                .unwrap();
        }
        let drops = receive_drops(full.as_raw_fd()).unwrap();
        assert!(drops > 0, "no drops counted after 200 datagrams unread");
        assert!(drops < 200, "{drops} dropped, yet some fit in the buffer");
        assert_eq!(receive_drops(fresh.as_raw_fd()), Some(0));
    }
}

/// Has the child `cmd` starts receive SIGTERM when the thread that starts it (the
/// caller's) exits, even by SIGKILL, and fail to start if that thread's process is
/// already gone. Linux only (`PR_SET_PDEATHSIG`); elsewhere it does nothing.
pub fn stop_with_parent(cmd: &mut std::process::Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure runs in the child between fork and exec and makes only
        // async-signal-safe system calls (prctl, getppid), allocating nothing.
        let parent = unsafe { libc::getpid() };
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent died before the line above: do not start at all.
                if libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}
