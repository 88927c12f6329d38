//! System calls the runtimes do not offer: non-blocking `recv`/`send` (and, for UDP,
//! `recvfrom`/`sendto`, and `recvmsg`/`sendmsg` with the datagram's local address)
//! on a socket the runtime owns, a peek to tell whether an idle
//! socket is still alive, abortive close, pipes and `splice` for plain legs, and
//! (Linux) the socket options and kernel structures of kernel TLS and the kernel's
//! count of packets a socket dropped; a child process that stops with its parent; and
//! the allocator's free pages handed back.
//! This is the crate's only unsafe code; each call passes a file descriptor that a
//! live `TcpStream` or `UdpSocket` owns for the whole call, and slices whose length
//! is the length given to the kernel.
#![allow(unsafe_code)]

#[cfg(target_os = "linux")]
use std::io;
#[cfg(target_os = "linux")]
use std::os::fd::RawFd;

mod datagram;
#[cfg(target_os = "linux")]
mod ktls_abi;
mod process;
mod sockopt;
mod splice;
mod stream;

pub(crate) use datagram::{
    Destination, connect, recv_from, recv_from_to, report_destinations, send_to, send_to_from,
};
#[cfg(target_os = "linux")]
pub(crate) use ktls_abi::*;
pub use process::{release_free_memory, stop_with_parent};
pub(crate) use sockopt::{
    RECEIVE_DROPS_KNOWN, linger_zero, pending_error, receive_drops, set_buffers, set_keepalive,
    set_nonblocking, tcp_mss, unacknowledged,
};
pub(crate) use splice::Pipe;
#[cfg(target_os = "linux")]
pub(crate) use splice::{PIPE_SIZE, pipe, splice};
pub(crate) use stream::{MORE, Peek, peek, recv, send, send_flags, shutdown};

#[cfg(target_os = "linux")]
const SEND_FLAGS: libc::c_int = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
#[cfg(not(target_os = "linux"))]
const SEND_FLAGS: libc::c_int = libc::MSG_DONTWAIT;

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

/// A borrowed handle on a descriptor that `owner` keeps open: for the APIs that
/// take `BorrowedFd` (the kTLS calls), given a socket the runtime owns.
pub(crate) fn borrow_fd<T: std::os::fd::AsRawFd>(owner: &T) -> std::os::fd::BorrowedFd<'_> {
    // SAFETY: `owner` holds the descriptor open for at least the lifetime of the
    // borrow, which is tied to `owner`'s.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(owner.as_raw_fd()) }
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

#[cfg(all(test, target_os = "linux"))]
mod tests;
