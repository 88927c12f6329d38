//! Pipes and `splice`: how a plain leg moves bytes between sockets inside the kernel.

use std::io;
use std::os::fd::RawFd;

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
