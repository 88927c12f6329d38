//! Non-blocking `recv` and `send` on a socket the runtime owns, a peek at an idle one,
//! and `shutdown`.

use std::io;
use std::os::fd::RawFd;

use super::SEND_FLAGS;

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
