//! System calls the runtimes do not offer: non-blocking `recv`/`send` on a socket the
//! runtime owns, a peek to tell whether an idle socket is still alive, and abortive
//! close. This is the crate's only unsafe code; each call passes a file descriptor
//! that a live `TcpStream` owns for the whole call, and slices whose length is the
//! length given to the kernel.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::RawFd;

#[cfg(target_os = "linux")]
const SEND_FLAGS: libc::c_int = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
#[cfg(not(target_os = "linux"))]
const SEND_FLAGS: libc::c_int = libc::MSG_DONTWAIT;

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
    loop {
        // SAFETY: `buf` is a valid slice of `buf.len()` bytes for the whole call, and
        // `fd` belongs to a socket the caller keeps open.
        let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), SEND_FLAGS) };
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

/// Makes the next close send RST instead of FIN, so the peer sees an abort.
pub(crate) fn linger_zero(fd: RawFd) {
    let l = libc::linger {
        l_onoff: 1,
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
    Ok(Pipe { read, write })
}

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
