//! `--allow-from`: a tunnel lets in users from the addresses it names and no
//! others. Loopback has room for both: users from 127.0.0.2 are let in, users from
//! 127.0.0.1 are turned away (TCP: reset at accept; UDP: their datagrams dropped),
//! with the reason logged and counted.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

use crate::both_engines;
use crate::harness::{DEADLINE, Engine, Home, assert_code};
use crate::sources;
use crate::udp::UdpEcho;
use crate::users::expect_refused_user;

/// A TCP connection to `to` from the local address `from` (port chosen by the OS).
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    let from: SocketAddr = format!("{from}:0").parse().unwrap();
    s.bind(&from.into()).unwrap();
    s.connect(&to.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s
}

/// The count of `user_not_allowed` errors in the tunnel's metrics.
fn not_allowed(home: &Home) -> String {
    let metrics = home.ok(&["stats", "--format", "prometheus"]);
    crate::harness::error_count(&metrics, "user_not_allowed")
}

const WHY: &str = "from 127.0.0.1: the address is not in the tunnel's --allow-from \
                   (127.0.0.2/32, 10.0.0.0/8); add it there (allow_from in a file) to let it in";

both_engines!(
    a_tunnel_lets_in_only_the_users_it_allows,
    |engine: Engine| {
        let home = Home::with_keys();
        let source = sources::echo();
        let (_router, raddr) = home.router(engine, &[source.to_string()]);
        let (tunnel, taddr) = home.tunnel_with(
            engine,
            raddr,
            &source.to_string(),
            &["--allow-from", "127.0.0.2", "--allow-from", "10.0.0.0/8"],
        );
        // 127.0.0.1 is not named: reset without a byte.
        expect_refused_user(taddr);
        tunnel.wait_stderr(&format!("refused a user connection {WHY}"));
        assert_eq!(not_allowed(&home), "1");
        // `status` and `list` name who may come in.
        let status = home.ok(&["status"]);
        assert!(
            status.contains(&format!(
                "{taddr} → {source} (users from 127.0.0.2/32, 10.0.0.0/8 only)\n"
            )),
            "{status}"
        );
        let list: serde_json::Value =
            serde_json::from_str(&home.ok(&["list", "--format", "json"])).unwrap();
        assert_eq!(
            list[0]["allow_from"],
            serde_json::json!(["127.0.0.2/32", "10.0.0.0/8"]),
            "{list:#}"
        );

        // 127.0.0.2 is.
        let mut c = connect_from("127.0.0.2", taddr);
        c.write_all(b"let in").unwrap();
        let mut back = [0u8; 6];
        c.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"let in");
        assert_eq!(not_allowed(&home), "1");
    }
);

#[test]
fn a_udp_tunnel_drops_the_datagrams_of_users_it_does_not_allow() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let source = UdpEcho::start_on("127.0.0.1:0");
    let (_router, raddr) = home.router(engine, &[source.addr.to_string()]);
    let (tunnel, taddr) = home.tunnel_with(
        engine,
        raddr,
        &source.addr.to_string(),
        &[
            "--protocol",
            "udp",
            "--allow-from",
            "127.0.0.2/32,10.0.0.0/8",
        ],
    );
    let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
    stranger.send_to(b"let me in", taddr).unwrap();
    tunnel.wait_stderr(&format!("dropped a datagram {WHY}"));
    assert_eq!(not_allowed(&home), "1");

    let user = UdpSocket::bind("127.0.0.2:0").unwrap();
    user.set_read_timeout(Some(DEADLINE)).unwrap();
    user.send_to(b"hello", taddr).unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = user.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"echo:hello"[..], taddr));
    // Only the allowed user's flow reached the source.
    assert_eq!(source.senders(), 1);
}

#[test]
fn a_bad_allow_from_is_refused_with_the_fix() {
    let home = Home::with_keys();
    let (status, _, err) = home.run(&[
        "start",
        "--router",
        "127.0.0.1:9",
        "--router-key",
        &home.public_key("router"),
        "--source",
        "127.0.0.1:80",
        "--bind",
        "127.0.0.1:0",
        "--allow-from",
        "10.0.0.0/33",
    ]);
    assert_code(status, 64, &err);
    assert_eq!(
        err.lines().next(),
        Some(
            "error: invalid value '10.0.0.0/33' for '--allow-from <ADDR|CIDR>': not an \
             address or a CIDR block; write 10.0.0.0/8, 192.0.2.7 or 2001:db8::/32"
        ),
        "{err}"
    );
}
