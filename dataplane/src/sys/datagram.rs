//! UDP: `recvfrom`/`sendto`, and `recvmsg`/`sendmsg` with the local address a
//! datagram was sent to (`IP_PKTINFO`, `IPV6_PKTINFO`); `connect` to set a peer.

use std::io;
use std::os::fd::RawFd;

use super::SEND_FLAGS;
#[cfg(target_os = "linux")]
use super::one_buffer_msg;

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
