//! Per-core listeners: one `SO_REUSEPORT` socket per worker on the same address, so
//! the kernel spreads new connections across cores with no hand-off between them.

use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::time::Duration;

use tracing::warn;

use crate::limit::{Throttle, held_note};

use socket2::{Domain, Protocol, Socket, Type};

fn socket_for(addr: SocketAddr, reuse_port: bool) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    #[cfg(unix)]
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        s.set_only_v6(false).ok();
    }
    s.set_tcp_nodelay(true)?;
    Ok(s)
}

/// Binds `count` listeners sharing `addr`.
///
/// `SO_REUSEPORT` would also let a second process of the same user share the
/// address silently, so the address is first bound once without it: if anything
/// listens there already, that bind fails and so does this function.
pub(crate) fn bind(addr: SocketAddr, count: usize, backlog: i32) -> io::Result<Vec<TcpListener>> {
    let mut addr = addr;
    if addr.port() != 0 {
        let probe = socket_for(addr, false)?;
        probe.bind(&addr.into())?;
        drop(probe);
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let s = socket_for(addr, true)?;
        s.bind(&addr.into())?;
        s.listen(backlog)?;
        let l: TcpListener = s.into();
        // Port 0: the first bind picks the port, the others join it.
        addr = l.local_addr()?;
        out.push(l);
    }
    Ok(out)
}

/// Binds `count` UDP sockets sharing `addr`, for a UDP tunnel. The kernel hashes each
/// sender's address to one of them, so a user's datagrams all reach the same core.
/// As with TCP, the address is first bound once without `SO_REUSEPORT`, so an address
/// already taken is an error rather than a silent share.
pub(crate) fn bind_udp(
    addr: SocketAddr,
    count: usize,
    sockets: &crate::SocketOptions,
) -> io::Result<Vec<UdpSocket>> {
    let udp = |reuse_port: bool| -> io::Result<Socket> {
        // No SO_REUSEADDR: on UDP it would let any socket with it share the port.
        let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        #[cfg(unix)]
        if reuse_port {
            s.set_reuse_port(true)?;
        }
        if addr.is_ipv6() {
            s.set_only_v6(false).ok();
        }
        size_udp_buffers(&socket2::SockRef::from(&s), sockets);
        Ok(s)
    };
    let mut addr = addr;
    if addr.port() != 0 {
        udp(false)?.bind(&addr.into())?;
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let s = udp(true)?;
        s.bind(&addr.into())?;
        let u: UdpSocket = s.into();
        addr = u.local_addr()?;
        out.push(u);
    }
    Ok(out)
}

/// Sets a UDP socket's kernel buffers where the operator chose them
/// (`read_buffer_size`, `write_buffer_size`): a burst of datagrams larger than the
/// receive buffer is dropped by the kernel. Best effort: the kernel caps them at
/// `net.core.rmem_max` / `wmem_max`.
pub(crate) fn size_udp_buffers(s: &socket2::SockRef<'_>, sockets: &crate::SocketOptions) {
    if let Some(n) = sockets.recv_buffer {
        let _ = s.set_recv_buffer_size(n);
    }
    if let Some(n) = sockets.send_buffer {
        let _ = s.set_send_buffer_size(n);
    }
}

/// The pause after a failed accept (EMFILE and friends): 20 ms, doubling to 1.28 s
/// while accepts keep failing; an accept that succeeds starts it over, since a
/// listener that still takes connections in between is making progress, not
/// spinning (and a backlog of waiting users drains fastest that way). The failures
/// are logged at most once a second, with a count of those held back; a count left
/// when accepts resume is said then.
#[derive(Debug)]
pub struct AcceptBackoff {
    failures: u32,
    log: Throttle,
    /// The listener, for the log ("the control socket"); none for the users'.
    what: Option<&'static str>,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        Self {
            failures: 0,
            log: Throttle::new(Duration::from_secs(1)),
            what: None,
        }
    }
}

impl AcceptBackoff {
    /// A back-off whose log lines name the listener (`what`: "the control socket").
    pub fn named(what: &'static str) -> Self {
        Self {
            what: Some(what),
            ..Self::default()
        }
    }

    /// An accept succeeded. The first after failures says how many of them were
    /// not logged, if any.
    pub fn succeeded(&mut self) {
        if std::mem::take(&mut self.failures) == 0 {
            return;
        }
        let held = self.log.take_held();
        if held > 0 {
            let on = self.what.map_or_else(String::new, |w| format!(" on {w}"));
            warn!("accept failed{on} {held} more times, not logged, before accepts resumed");
        }
    }

    /// An accept failed with `e`: logs it (unless one was logged within the second)
    /// and returns how long to wait before the next.
    pub fn failed(&mut self, e: &io::Error) -> Duration {
        let wait = self.next_wait();
        if let Some(held) = self.log.admit() {
            let on = self.what.map_or_else(String::new, |w| format!(" on {w}"));
            warn!(
                "accept failed{on}: {e}; retrying in {wait:?}{}",
                held_note(held)
            );
        }
        wait
    }

    fn next_wait(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        Duration::from_millis(10 << self.failures.min(7))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_listeners_share_one_port() {
        let ls = bind("127.0.0.1:0".parse().unwrap(), 3, 128).unwrap();
        let port = ls[0].local_addr().unwrap().port();
        assert_ne!(port, 0);
        for l in &ls {
            assert_eq!(l.local_addr().unwrap().port(), port);
        }
    }

    #[test]
    fn udp_sockets_share_one_port_and_refuse_a_taken_one() {
        let us = bind_udp("127.0.0.1:0".parse().unwrap(), 3, &Default::default()).unwrap();
        let addr = us[0].local_addr().unwrap();
        assert!(us.iter().all(|u| u.local_addr().unwrap() == addr));
        let err = bind_udp(addr, 2, &Default::default()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn a_tcp_listener_does_not_take_the_udp_port() {
        // Other tests bind ports meanwhile: retry until one is free for both.
        for _ in 0..50 {
            let tcp = bind("127.0.0.1:0".parse().unwrap(), 1, 16).unwrap();
            match bind_udp(tcp[0].local_addr().unwrap(), 2, &Default::default()) {
                Ok(u) => {
                    assert_eq!(u[0].local_addr().unwrap(), tcp[0].local_addr().unwrap());
                    return;
                }
                Err(e) => assert_eq!(e.kind(), io::ErrorKind::AddrInUse),
            }
        }
        panic!("no port was free for UDP next to a TCP listener in 50 tries");
    }

    #[test]
    fn accept_back_off_grows_and_a_success_starts_it_over() {
        let mut b = AcceptBackoff::default();
        let waits: Vec<_> = (0..9).map(|_| b.next_wait().as_millis()).collect();
        assert_eq!(waits, [20, 40, 80, 160, 320, 640, 1280, 1280, 1280]);
        b.succeeded();
        assert_eq!(b.next_wait(), Duration::from_millis(20));
    }

    #[test]
    fn failures_not_logged_are_said_when_accepts_resume() {
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        let mut b = AcceptBackoff::default();
        // The first is logged, the next ones within the second are held back.
        for _ in 0..3 {
            b.failed(&emfile);
        }
        assert_eq!(b.log.take_held(), 2);
        b.failed(&emfile);
        b.succeeded();
        assert_eq!(b.log.take_held(), 0, "said as accepts resumed");
    }

    #[test]
    fn an_address_in_use_is_refused() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = bind(addr, 2, 128).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        // Also when the holder is another reuse-port group (another tunnel).
        drop(taken);
        let first = bind("127.0.0.1:0".parse().unwrap(), 2, 128).unwrap();
        let err = bind(first[0].local_addr().unwrap(), 2, 128).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }
}
