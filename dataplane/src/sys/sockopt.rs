//! Socket options and descriptor flags: abortive close (`SO_LINGER`), keep-alive,
//! the segment size, buffer sizes, the kernel's count of dropped packets
//! (`SO_MEMINFO`) and `O_NONBLOCK`.

use std::io;
use std::os::fd::RawFd;

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

/// The error pending on a socket (`SO_ERROR`, which reading clears), if any: a
/// connection its peer reset has `ECONNRESET` (or `EPIPE`) there.
pub(crate) fn pending_error(fd: RawFd) -> Option<io::Error> {
    // SAFETY: `fd` belongs to a socket the caller keeps open for the whole call, and
    // the borrow does not outlive it.
    let sock = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    match socket2::SockRef::from(&sock).take_error() {
        Ok(e) => e,
        Err(e) => Some(e),
    }
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

/// Bytes in `fd`'s send queue that its peer has not acknowledged yet (sent or
/// not): `ioctl(SIOCOUTQ)`. A change says the reader is taking what waits for it.
/// `None` where the system does not say (not Linux) or `fd` is no TCP socket.
pub(crate) fn unacknowledged(fd: RawFd) -> Option<u32> {
    #[cfg(target_os = "linux")]
    {
        let mut queued: libc::c_int = 0;
        // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int into `queued`, which is live
        // and writable for the call. Any descriptor is safe to ask: one closed or
        // reused since the caller noted it only gives a wrong or failed answer.
        let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued) };
        (rc == 0).then(|| u32::try_from(queued).unwrap_or(0))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = fd;
        None
    }
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
