//! IPv6 end to end: a router, a tunnel and sources on `[::1]`, held to an IPv6 CIDR
//! rule of the router's allow-list, for TCP and UDP.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread;

use crate::both_engines;
use crate::harness::{DEADLINE, Engine, Home, Proc, addr_in, assert_code};
use crate::sources::{self, pattern};
use crate::udp::{UdpEcho, User};

/// Whether this host has an IPv6 loopback; without one the test says so and skips
/// (containers often run with IPv6 off).
pub(crate) fn ipv6_loopback() -> bool {
    match TcpListener::bind("[::1]:0") {
        Ok(_) => true,
        Err(e) => {
            eprintln!("no IPv6 loopback on this host ({e}); skipping");
            false
        }
    }
}

/// A foreground tunnel on `[::1]` through the router at `raddr` to `source`
/// (`extra`: more `start` arguments), not yet waited on.
fn tunnel6(home: &Home, engine: Engine, raddr: SocketAddr, source: &str, extra: &[&str]) -> Proc {
    home.tunnel_at(engine, &raddr.to_string(), source, "[::1]:0", extra)
}

both_engines!(
    a_tunnel_carries_tcp_over_ipv6_end_to_end,
    |engine: Engine| {
        if !ipv6_loopback() {
            return;
        }
        let home = Home::with_keys();
        let source = sources::echo_on(TcpListener::bind("[::1]:0").unwrap());
        // A CIDR rule for the loopback, this port only.
        let rule = format!("[::1/128]:{}", source.port());
        let (_router, raddr) = home.router_at(engine, "[::1]:0", &[rule], &[]);
        assert!(raddr.is_ipv6(), "{raddr}");

        let tunnel = tunnel6(&home, engine, raddr, &source.to_string(), &[]);
        let taddr = addr_in(&tunnel.wait_stdout("listening on"));
        assert!(taddr.is_ipv6(), "{taddr}");
        tunnel.wait_stdout("connected to router");

        let payload = pattern(6, 1 << 20);
        let conn = TcpStream::connect(taddr).unwrap();
        conn.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut w = conn.try_clone().unwrap();
        let sent = payload.clone();
        let writer = thread::spawn(move || {
            w.write_all(&sent).unwrap();
            w.shutdown(Shutdown::Write).unwrap();
        });
        let mut back = Vec::new();
        (&conn).read_to_end(&mut back).unwrap();
        writer.join().unwrap();
        assert!(
            back == payload,
            "the echo differs ({} bytes back)",
            back.len()
        );

        // Another port of the same host is outside the rule: refused at the link.
        let other = format!("[::1]:{}", crate::harness::dead_port());
        let mut refused = tunnel6(&home, engine, raddr, &other, &["--name", "other"]);
        let status = refused.wait_exit();
        let err = refused.stderr();
        assert_code(status, 77, &err);
        assert!(
        err.contains(&format!(
            "source {other} is not allowed by the router's policy; to allow it, add `--allow {other}` to the router"
        )),
        "{err}"
    );
    }
);

both_engines!(
    a_udp_tunnel_carries_datagrams_over_ipv6,
    |engine: Engine| {
        if !ipv6_loopback() {
            return;
        }
        let home = Home::with_keys();
        let source = UdpEcho::start_on("[::1]:0");
        let rule = format!("[::1/128]:{}", source.addr.port());
        let (_router, raddr) = home.router_at(engine, "[::1]:0", &[rule], &[]);
        let tunnel = tunnel6(
            &home,
            engine,
            raddr,
            &source.addr.to_string(),
            &["--protocol", "udp"],
        );
        let taddr = addr_in(&tunnel.wait_stdout("listening on"));
        assert!(taddr.is_ipv6(), "{taddr}");
        tunnel.wait_stdout("connected to router");

        let users: Vec<User> = (0..2).map(|_| User::new(taddr)).collect();
        for (u, user) in users.iter().enumerate() {
            for len in [0, 1, 1200, 16_000] {
                user.echo(&pattern(u as u64 * 10 + len as u64, len));
            }
        }
        assert_eq!(source.senders(), 2);
    }
);
