//! The relay pipe's size, socket buffers and the kernel's count of dropped datagrams,
//! on real descriptors.

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
