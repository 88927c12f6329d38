//! UDP tunnels (`--protocol udp`): datagrams cross whole and unchanged in both
//! directions, each sender is a flow of its own, quiet flows end and new ones start,
//! the router's allow-list holds for UDP too, and UDP rides the plain transport as
//! it rides TLS.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use conduit_proto::Message;
use conduit_proto::frame::Header;

use crate::both_engines;
use crate::harness::{DEADLINE, Engine, Home, Proc, addr_in, assert_code};
use crate::http::wait_for;
use crate::plain::{PLAIN, read_events, welcomed_peer};
use crate::sources::pattern;

mod limits;
mod recovery;

/// The largest payload a UDP datagram over IPv4 can carry.
const MAX_UDP: usize = 65_507;

/// A UDP source on a thread: answers each datagram with `echo:` and the datagram, to
/// the address it came from, and remembers which addresses it heard from.
pub(crate) struct UdpEcho {
    pub(crate) addr: SocketAddr,
    senders: Arc<Mutex<HashMap<SocketAddr, usize>>>,
    received: Arc<AtomicUsize>,
}

impl UdpEcho {
    fn start() -> Self {
        Self::start_on("127.0.0.1:0")
    }

    /// The echo source on `bind`.
    pub(crate) fn start_on(bind: &str) -> Self {
        let sock = UdpSocket::bind(bind).unwrap();
        let addr = sock.local_addr().unwrap();
        let senders = Arc::new(Mutex::new(HashMap::new()));
        let received = Arc::new(AtomicUsize::new(0));
        let (s, r) = (senders.clone(), received.clone());
        thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                // An empty datagram alone is the router's health probe (each from
                // a socket of its own): not a flow.
                if n > 0 {
                    *s.lock().unwrap().entry(from).or_insert(0) += 1;
                }
                r.fetch_add(1, Ordering::SeqCst);
                let mut reply = b"echo:".to_vec();
                reply.extend_from_slice(&buf[..n]);
                // A datagram that would exceed UDP's limit is answered with its
                // length only.
                if reply.len() > MAX_UDP {
                    reply = format!("len:{n}").into_bytes();
                }
                let _ = sock.send_to(&reply, from);
            }
        });
        Self {
            addr,
            senders,
            received,
        }
    }

    /// The distinct sender addresses seen with a datagram that is not empty
    /// (router-side flow sockets).
    pub(crate) fn senders(&self) -> usize {
        self.senders.lock().unwrap().len()
    }

    /// The datagrams heard that were not empty (the router's probes aside).
    fn payloads(&self) -> usize {
        self.senders.lock().unwrap().values().sum()
    }
}

/// A user: one socket, sending a datagram and waiting for its answer.
pub(crate) struct User {
    sock: UdpSocket,
    tunnel: SocketAddr,
}

impl User {
    /// A socket of the tunnel's address family.
    pub(crate) fn new(tunnel: SocketAddr) -> Self {
        let local = if tunnel.is_ipv6() {
            "[::1]:0"
        } else {
            "127.0.0.1:0"
        };
        let sock = UdpSocket::bind(local).unwrap();
        // Bounded waits: a lost answer fails the test, never hangs it.
        sock.set_read_timeout(Some(DEADLINE)).unwrap();
        Self { sock, tunnel }
    }

    /// Sends `d` and returns the answer.
    fn ask(&self, d: &[u8]) -> Vec<u8> {
        self.sock.send_to(d, self.tunnel).unwrap();
        let mut buf = vec![0u8; 65_536];
        let (n, from) = self
            .sock
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("no answer to a {}-byte datagram: {e}", d.len()));
        assert_eq!(
            from, self.tunnel,
            "the answer came from the tunnel's address"
        );
        buf.truncate(n);
        buf
    }

    /// Sends `d` and checks the echo, byte for byte.
    pub(crate) fn echo(&self, d: &[u8]) {
        let got = self.ask(d);
        let mut want = b"echo:".to_vec();
        want.extend_from_slice(d);
        assert!(
            got == want,
            "a {}-byte datagram came back as {} bytes that differ",
            d.len(),
            got.len()
        );
    }
}

/// An echo source, a router that allows it and a UDP tunnel to it (`extra`: more
/// `start` arguments), each stopped when dropped.
struct UdpTunnel {
    home: Home,
    source: UdpEcho,
    router: Proc,
    tunnel: Proc,
    taddr: SocketAddr,
}

impl UdpTunnel {
    fn start(engine: Engine, extra: &[&str]) -> Self {
        Self::start_on(engine, &[], extra)
    }

    /// The same on the transport that `transport` chooses (its arguments, given to
    /// both ends).
    fn start_on(engine: Engine, transport: &[&str], extra: &[&str]) -> Self {
        Self::start_with(engine, transport, &[], extra)
    }

    /// The same with `router_extra`: more `router` arguments.
    fn start_with(
        engine: Engine,
        transport: &[&str],
        router_extra: &[&str],
        extra: &[&str],
    ) -> Self {
        let home = Home::with_keys();
        let source = UdpEcho::start();
        let mut router_args = transport.to_vec();
        router_args.extend_from_slice(router_extra);
        let (router, raddr) = home.router_with(engine, &[source.addr.to_string()], &router_args);
        let mut args = vec!["--protocol", "udp"];
        args.extend_from_slice(transport);
        args.extend_from_slice(extra);
        let (tunnel, taddr) = home.tunnel_with(engine, raddr, &source.addr.to_string(), &args);
        Self {
            home,
            source,
            router,
            tunnel,
            taddr,
        }
    }
}

/// Sends `msg` until the tunnel answers with its echo (a flow may fail while the
/// router is away, and a datagram may be lost meanwhile).
fn wait_for_answer(user: &User, msg: &[u8]) {
    user.sock
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut want = b"echo:".to_vec();
    want.extend_from_slice(msg);
    wait_for("the udp tunnel to answer", || {
        user.sock.send_to(msg, user.tunnel).unwrap();
        let mut buf = [0u8; 64];
        let (n, _) = user.sock.recv_from(&mut buf).ok()?;
        (buf[..n] == want[..]).then_some(())
    });
}

/// Waits until the (only) tunnel has no flow open; `what` names the wait.
fn wait_quiet(home: &Home, what: &str) {
    crate::procfs::wait_until(&format!("every flow to end ({what})"), || {
        let l = list_json(home);
        (
            l[0]["active_connections"] == 0,
            l[0]["active_connections"].clone(),
        )
    });
}

fn list_json(home: &Home) -> Vec<serde_json::Value> {
    let out = home.ok(&["list", "--format", "json", "--connections"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("list json: {e}\n{out}"))
}

/// Every size from empty to UDP's largest, with distinct contents.
const SIZES: [usize; 8] = [0, 1, 5, 1200, 1472, 16_379, 40_000, MAX_UDP - 5];

both_engines!(
    datagrams_cross_whole_and_each_sender_is_a_flow,
    |engine: Engine| {
        let UdpTunnel {
            home,
            source,
            router: _router,
            tunnel: _tunnel,
            taddr,
        } = UdpTunnel::start(engine, &["--name", "dns"]);
        let users: Vec<User> = (0..3).map(|_| User::new(taddr)).collect();
        let mut sent = 0;
        for (u, user) in users.iter().enumerate() {
            for (i, len) in SIZES.iter().enumerate() {
                user.echo(&pattern((u * 100 + i) as u64, *len));
                sent += len;
            }
        }
        // Three senders, three flows, three router sockets the source heard from.
        assert_eq!(source.senders(), 3);
        assert_eq!(source.received.load(Ordering::SeqCst), 3 * SIZES.len());
        let l = list_json(&home);
        assert_eq!(l.len(), 1, "{l:#?}");
        assert_eq!(l[0]["name"], "dns");
        assert_eq!(l[0]["active_connections"], 3, "{l:#?}");
        // Payload counted exactly: what users sent, and that plus "echo:" back.
        assert_eq!(l[0]["bytes_in"], sent as u64);
        assert_eq!(l[0]["bytes_out"], (sent + 5 * 3 * SIZES.len()) as u64);
        let mut peers: Vec<String> = l[0]["connections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["peer"].as_str().unwrap().to_owned())
            .collect();
        peers.sort();
        let mut want: Vec<String> = users
            .iter()
            .map(|u| u.sock.local_addr().unwrap().to_string())
            .collect();
        want.sort();
        assert_eq!(peers, want);
    }
);

/// With `--proxy-protocol v2` every datagram reaches the source behind v2's UDP
/// form naming its user; one that fits UDP alone but not behind the header is
/// dropped and counted, and its flow goes on.
#[test]
fn a_proxy_header_rides_in_front_of_each_datagram() {
    let UdpTunnel {
        home,
        source,
        router,
        tunnel: _tunnel,
        taddr,
    } = UdpTunnel::start_with(
        Engine::Epoll,
        &[],
        &["--api-bind", "127.0.0.1:0", "--api-no-auth"],
        &["--proxy-protocol", "v2", "--name", "dns"],
    );
    let api = addr_in(&router.wait_stdout("api listening on"));
    let user = User::new(taddr);
    let me = user.sock.local_addr().unwrap();
    // Version 2, PROXY, UDP over IPv4; 12 bytes: the user's address and the tunnel's.
    let mut header = b"\r\n\r\n\0\r\nQUIT\n\x21\x12\0\x0c\x7f\0\0\x01\x7f\0\0\x01".to_vec();
    header.extend_from_slice(&me.port().to_be_bytes());
    header.extend_from_slice(&taddr.port().to_be_bytes());
    for d in [&b"first"[..], b"", &pattern(1, 1200)] {
        let mut want = b"echo:".to_vec();
        want.extend_from_slice(&header);
        want.extend_from_slice(d);
        assert!(user.ask(d) == want, "a {}-byte datagram", d.len());
    }
    // UDP's largest over IPv4 is too big behind the 28-byte header: dropped (at
    // the router, whose datagram to the source cannot be that big), not the flow.
    let flow = list_json(&home)[0]["connections"][0]["id"].clone();
    user.sock.send_to(&pattern(2, MAX_UDP), taddr).unwrap();
    let mut want = b"echo:".to_vec();
    want.extend_from_slice(&header);
    want.extend_from_slice(b"after");
    assert!(user.ask(b"after") == want);
    assert_eq!(source.received.load(Ordering::SeqCst), 4);
    assert_eq!(source.senders(), 1, "one flow all along");
    let l = list_json(&home);
    assert_eq!(l[0]["connections"][0]["id"], flow, "{l:#?}");
    // The tunnel counts its user's bytes, not the headers.
    assert_eq!(l[0]["bytes_in"], (5 + 1200 + MAX_UDP + 5) as u64, "{l:#?}");
    // The router counts the drop; the tunnel, which sent it on whole, does not.
    let metrics = crate::http::curl("GET", &format!("http://{api}/metrics"), None, &[]).body;
    assert!(
        metrics
            .lines()
            .any(|l| l == "conduit_udp_datagrams_dropped_total 1"),
        "{metrics}"
    );
    // Nor does it count the dropped datagram's bytes as moved toward the source: the
    // four that reached it, each behind its 28-byte header.
    let toward_source = (5 + 1200 + 5 + 4 * 28) as u64;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("conduit_bytes_transferred_total{")
                && l.ends_with(&format!("direction=\"in\"}} {toward_source}"))),
        "{metrics}"
    );
    let metrics = home.ok(&["stats", "--format", "prometheus"]);
    assert!(
        metrics
            .lines()
            .any(|l| l == "conduit_udp_datagrams_dropped_total{tunnel=\"dns\"} 0"),
        "{metrics}"
    );
}

/// A user whose socket is connected to the address it sends to takes answers from
/// that address only. A tunnel bound to every address answers from the one each
/// user sent to, which on a host with several (here the loopback's 127.0.0.2 and
/// 127.0.0.3) is not the one the kernel would pick; on `::` too, for IPv4 users of
/// the dual-stack socket and IPv6 ones.
fn answers_from_the_address_sent_to(engine: Engine, bind: &str, to: &[&str]) {
    let home = Home::with_keys();
    let source = UdpEcho::start();
    let (_router, raddr) = home.router(engine, &[source.addr.to_string()]);
    let tunnel = home.tunnel_at(
        engine,
        &raddr.to_string(),
        &source.addr.to_string(),
        bind,
        &["--protocol", "udp", "--proxy-protocol", "v2"],
    );
    let port = addr_in(&tunnel.wait_stdout("listening on")).port();
    tunnel.wait_stdout("connected to router");
    for ip in to {
        let dst = SocketAddr::new(ip.parse().unwrap(), port);
        let user = UdpSocket::bind(SocketAddr::new(dst.ip(), 0)).unwrap();
        user.connect(dst).unwrap();
        user.set_read_timeout(Some(DEADLINE)).unwrap();
        user.send(b"which address?").unwrap();
        let mut buf = [0u8; 256];
        let n = user
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no answer from {dst}: {e}"));
        let got = &buf[..n];
        assert!(got.starts_with(b"echo:") && got.ends_with(b"which address?"));
        // The PROXY header names the address the user sent to, not `bind`'s.
        let me = user.local_addr().unwrap();
        let header = &got[5..n - 14];
        let (src, dst_in_header) = match (me.ip().to_canonical(), dst.ip().to_canonical()) {
            (std::net::IpAddr::V4(m), std::net::IpAddr::V4(d)) => {
                assert_eq!(header[12..16], [0x21, 0x12, 0, 12], "{dst}");
                (header[16..20] == m.octets(), header[20..24] == d.octets())
            }
            (std::net::IpAddr::V6(m), std::net::IpAddr::V6(d)) => {
                assert_eq!(header[12..16], [0x21, 0x22, 0, 36], "{dst}");
                (header[16..32] == m.octets(), header[32..48] == d.octets())
            }
            other => panic!("mixed families {other:?}"),
        };
        assert!(src && dst_in_header, "{dst}: header {header:02x?}");
    }
}

both_engines!(
    a_tunnel_bound_to_every_address_answers_from_the_one_each_user_sent_to,
    |engine: Engine| {
        answers_from_the_address_sent_to(engine, "0.0.0.0:0", &["127.0.0.2", "127.0.0.3"]);
        if crate::ipv6::ipv6_loopback() {
            answers_from_the_address_sent_to(engine, "[::]:0", &["127.0.0.3", "::1"]);
        }
    }
);

/// One user socket sending to two of the host's addresses is two flows: each
/// answered from the address it was sent to, each named in its PROXY headers.
#[test]
fn one_user_sending_to_two_addresses_is_two_flows() {
    let home = Home::with_keys();
    let source = UdpEcho::start();
    let (_router, raddr) = home.router(Engine::Epoll, &[source.addr.to_string()]);
    let tunnel = home.tunnel_at(
        Engine::Epoll,
        &raddr.to_string(),
        &source.addr.to_string(),
        "0.0.0.0:0",
        &["--protocol", "udp", "--proxy-protocol", "v2"],
    );
    let port = addr_in(&tunnel.wait_stdout("listening on")).port();
    tunnel.wait_stdout("connected to router");
    let user = UdpSocket::bind("127.0.0.1:0").unwrap();
    user.set_read_timeout(Some(DEADLINE)).unwrap();
    let me = user.local_addr().unwrap();
    for round in 0..2 {
        for last in [2u8, 3] {
            let dst = SocketAddr::from(([127, 0, 0, last], port));
            let msg = format!("round {round} to {dst}");
            user.send_to(msg.as_bytes(), dst).unwrap();
            let mut buf = [0u8; 256];
            let (n, from) = user
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("no answer from {dst}: {e}"));
            assert_eq!(from, dst, "the answer to {msg:?}");
            let mut want = b"echo:\r\n\r\n\0\r\nQUIT\n\x21\x12\0\x0c\x7f\0\0\x01\x7f\0\0".to_vec();
            want.push(last);
            want.extend_from_slice(&me.port().to_be_bytes());
            want.extend_from_slice(&port.to_be_bytes());
            want.extend_from_slice(msg.as_bytes());
            assert!(buf[..n] == want[..], "{msg:?}: got {:02x?}", &buf[..n]);
        }
    }
    assert_eq!(source.senders(), 2, "two flows, two router sockets");
    assert_eq!(source.received.load(Ordering::SeqCst), 4);
    let l = list_json(&home);
    assert_eq!(l[0]["active_connections"], 2, "{l:#?}");
}

both_engines!(
    many_flows_at_once_each_get_their_own_answers,
    |engine: Engine| {
        let UdpTunnel {
            home: _home,
            source,
            router: _router,
            tunnel: _tunnel,
            taddr,
        } = UdpTunnel::start(engine, &[]);
        let threads: Vec<_> = (0..40u64)
            .map(|t| {
                thread::spawn(move || {
                    let user = User::new(taddr);
                    for i in 0..25u64 {
                        user.echo(&pattern(
                            t * 1000 + i,
                            1 + ((t * 37 + i * 101) % 3000) as usize,
                        ));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("a user thread failed");
        }
        assert_eq!(source.senders(), 40);
        assert_eq!(source.received.load(Ordering::SeqCst), 40 * 25);
    }
);

#[test]
fn a_quiet_flow_ends_and_the_next_datagram_opens_another() {
    let UdpTunnel {
        home,
        source,
        router: _router,
        tunnel,
        taddr,
    } = UdpTunnel::start(
        Engine::Epoll,
        &["--udp-idle-timeout", "1", "--log-level", "debug"],
    );
    let user = User::new(taddr);
    user.echo(b"first");
    wait_quiet(&home, "the quiet flow");
    tunnel.wait_stderr("udp flow closed");
    // The same user again: a new flow.
    user.echo(b"second");
    // The answer can come back before the test has read the tunnel's log line.
    tunnel.wait_stderr_count("udp flow opened", 2);
    assert_eq!(tunnel.stderr_count("udp flow opened"), 2);
    assert_eq!(source.received.load(Ordering::SeqCst), 2);
    let l = list_json(&home);
    assert_eq!(l[0]["active_connections"], 1, "{l:#?}");
    assert_eq!(l[0]["bytes_in"], 11);
}

#[test]
fn a_udp_source_outside_the_allow_list_is_refused_at_the_link() {
    let home = Home::with_keys();
    let source = UdpEcho::start();
    let allowed = UdpEcho::start();
    let (router, raddr) = home.router(Engine::Epoll, &[allowed.addr.to_string()]);
    let mut tunnel = home.tunnel_proc(
        Engine::Epoll,
        raddr,
        &source.addr.to_string(),
        &["--protocol", "udp"],
    );
    let status = tunnel.wait_exit();
    let err = tunnel.stderr();
    assert_code(status, 77, &err);
    let why = format!(
        "source {} is not allowed by the router's policy; to allow it, add `--allow {}` to the router",
        source.addr, source.addr
    );
    assert!(
        err.contains(&format!("the router refused this tunnel: {why}")),
        "{err}"
    );
    router.wait_stderr(&why);
    assert_eq!(source.received.load(Ordering::SeqCst), 0);
}

#[test]
fn a_flow_the_router_refuses_is_not_counted() {
    let home = Home::with_keys();
    let source = UdpEcho::start();
    let (router, raddr) = home.router_with(
        Engine::Epoll,
        &[source.addr.to_string()],
        &["--max-connections", "1"],
    );
    let (tunnel, taddr) = home.tunnel_with(
        Engine::Epoll,
        raddr,
        &source.addr.to_string(),
        &["--protocol", "udp"],
    );
    // The one flow the router takes, held open.
    let held = User::new(taddr);
    held.echo(b"first");
    let user = User::new(taddr);
    user.sock.send_to(b"let me in", taddr).unwrap();
    tunnel.wait_stderr(
        "udp flow closed: the router refused the stream: the router's limit of 1 open \
         connection is reached",
    );
    router.wait_stderr("limit of 1 open connection");
    // The datagram went with the flow's open, before the refusal: it reached no
    // source, and the tunnel does not count it.
    let stats = wait_for("the tunnel to count the refused flow", || {
        let out = home.ok(&["stats", "--format", "json"]);
        let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        (rows[0]["connections"]["failed"] == 1).then(|| rows[0].clone())
    });
    assert_eq!(
        stats["bytes"],
        serde_json::json!({"in": 5, "out": 10}),
        "only the held flow's datagrams: {stats:#}"
    );
    assert_eq!(
        source.payloads(),
        1,
        "only the held flow's datagram arrived"
    );
    // Nothing came back to the refused user.
    user.sock
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 64];
    let e = user
        .sock
        .recv_from(&mut buf)
        .expect_err("a datagram came back to the refused user");
    assert!(
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{e}"
    );
}

#[test]
fn stopping_a_udp_tunnel_ends_its_flows_at_once() {
    // A drain far longer than the test's deadline: flows must not wait for it.
    let UdpTunnel {
        home: _home,
        source: _source,
        router: _router,
        mut tunnel,
        taddr,
    } = UdpTunnel::start(Engine::Epoll, &["--drain-timeout", "600"]);
    let user = User::new(taddr);
    user.echo(b"hello");
    let status = tunnel.stop();
    assert!(status.success(), "{status}\n{}", tunnel.stderr());
    assert!(
        !tunnel.stderr().contains("drain deadline"),
        "{}",
        tunnel.stderr()
    );
}

/// `conduit kill` of a background UDP tunnel with a flow open says the flow ends
/// now, not that it drains for the drain timeout, and the tunnel is gone at once.
#[test]
fn kill_says_a_udp_tunnels_flows_end_now() {
    let home = Home::with_keys();
    let _cleanup = crate::manage::Cleanup(&home);
    let source = UdpEcho::start();
    let (_router, raddr) = home.router(Engine::Epoll, &[source.addr.to_string()]);
    let mut args =
        crate::manage::start_args(&home, &raddr.to_string(), &source.addr.to_string(), "dns");
    args.extend(["--protocol".into(), "udp".into()]);
    let (status, _, err) = crate::manage::run_args(&home, &args);
    assert_code(status, 0, &err);
    let l = crate::manage::list_json(&home);
    let (id, bind) = (
        l[0]["id"].as_str().unwrap().to_owned(),
        l[0]["bind"].as_str().unwrap(),
    );
    let taddr: SocketAddr = bind.trim_end_matches("/udp").parse().unwrap();
    let user = User::new(taddr);
    user.echo(b"hello");
    crate::manage::wait_list(&home, "the open flow", |l| l[0]["active_connections"] == 1);
    let (status, out, err) = home.run(&["kill", "--tunnel", "dns", "--drain-timeout", "600"]);
    assert_code(status, 0, &err);
    assert_eq!(
        err,
        format!("tunnel \"dns\" ({id}) ends its 1 open flow now (UDP flows do not drain)\n")
    );
    assert!(out.starts_with("stopped tunnel \"dns\""), "{out}");
    assert!(crate::manage::list_json(&home).is_empty());
}

/// A router that stops ends its UDP flows at once (nothing is in flight in a
/// flow), rather than waiting out its drain for them.
#[test]
fn stopping_a_router_ends_its_udp_flows_at_once() {
    let home = Home::with_keys();
    let source = UdpEcho::start();
    let allow = [source.addr.to_string()];
    // A drain far longer than the test's deadline: flows must not wait for it.
    let (mut router, raddr) = home.router_with(Engine::Epoll, &allow, &["--drain-timeout", "600"]);
    let (_tunnel, taddr) = home.tunnel_with(
        Engine::Epoll,
        raddr,
        &source.addr.to_string(),
        &["--protocol", "udp"],
    );
    let user = User::new(taddr);
    user.echo(b"hello");
    let status = router.stop();
    assert_code(status, 0, &router.stderr());
    assert!(
        !router.stderr().contains("drain deadline"),
        "{}",
        router.stderr()
    );
}

both_engines!(
    udp_rides_the_plain_transport_flow_after_flow,
    |engine: Engine| {
        let UdpTunnel {
            home,
            source,
            router,
            tunnel,
            taddr,
        } = UdpTunnel::start_on(engine, PLAIN, &["--udp-idle-timeout", "1"]);
        let users: Vec<User> = (0..3).map(|_| User::new(taddr)).collect();
        let mut sent = 0;
        // Two rounds: the flows of the first end quiet, their channels go back to
        // the pool, and the second round's flows start on channels that carried one.
        for round in 0..2 {
            for (u, user) in users.iter().enumerate() {
                for (i, len) in SIZES.iter().enumerate() {
                    user.echo(&pattern((round * 1000 + u * 100 + i) as u64, *len));
                    sent += len;
                }
            }
            wait_quiet(&home, &format!("round {round}"));
        }
        assert_eq!(source.received.load(Ordering::SeqCst), 2 * 3 * SIZES.len());
        let l = list_json(&home);
        assert_eq!(l[0]["bytes_in"], sent as u64);
        assert_eq!(l[0]["bytes_out"], (sent + 5 * 2 * 3 * SIZES.len()) as u64);
        // Every flow ended cleanly (`Eof` both ways): no warning about one on
        // either end.
        assert!(
            !tunnel.stderr().contains("udp flow closed:"),
            "{}",
            tunnel.stderr()
        );
        let warnings: Vec<String> = router
            .stderr()
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("conn="))
            .map(str::to_owned)
            .collect();
        assert_eq!(warnings, Vec::<String>::new());
    }
);

/// A peer on the plain transport (anyone with the token) that puts a TCP stream's
/// `Data` frame into a UDP flow is cut off at that frame's header; the router goes on
/// serving.
#[test]
fn a_plain_peer_that_sends_data_into_a_udp_flow_is_cut_off() {
    let home = Home::with_keys();
    let source = UdpEcho::start();
    let (router, raddr) = home.router_with(Engine::Epoll, &[source.addr.to_string()], PLAIN);
    let (mut peer, mut d) = welcomed_peer(raddr);
    // A well-formed flow: `OpenDatagrams` and a datagram, answered.
    let mut frames = Message::OpenDatagrams {
        target: source.addr.to_string(),
    }
    .to_frame();
    frames.extend_from_slice(&Header::datagram(4));
    frames.extend_from_slice(b"ping");
    peer.write_all(&frames).unwrap();
    assert_eq!(
        read_events(&mut peer, &mut d, 2),
        ["Opened", "Datagram echo:ping"]
    );
    // The header of a 1 MiB `Data` frame, and nothing of its body.
    peer.write_all(&Header::data(1 << 20)).unwrap();
    let mut rest = Vec::new();
    match peer.read_to_end(&mut rest) {
        Ok(_) => assert!(
            rest.is_empty(),
            "the router sent {rest:?} instead of closing"
        ),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    router.wait_stderr("protocol error: unexpected Data (expected Datagram, Eof or Reset");
    // Others are served.
    let mut args = vec!["--protocol", "udp"];
    args.extend_from_slice(PLAIN);
    let (_tunnel, taddr) = home.tunnel_with(Engine::Epoll, raddr, &source.addr.to_string(), &args);
    User::new(taddr).echo(b"still serving");
}

#[test]
fn a_udp_bind_already_taken_is_refused() {
    let home = Home::with_keys();
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (status, _, err) = home.run(&[
        "start",
        "--foreground",
        "--router",
        "127.0.0.1:9",
        "--router-key",
        home.key("router.pub").to_str().unwrap(),
        "--source",
        "127.0.0.1:53",
        "--bind",
        &addr,
        "--protocol",
        "udp",
    ]);
    assert_code(status, 69, &err);
    // Named as UDP: a TCP tunnel may hold the same port, and `list` would show it.
    assert!(
        err.contains(&format!("cannot listen on {addr}/udp: ")),
        "{err}"
    );
    assert!(err.contains("already listens there"), "{err}");
}

/// Stops every background tunnel of a home, even when the test fails.
struct KillAll<'a>(&'a Home);

impl Drop for KillAll<'_> {
    fn drop(&mut self) {
        let _ = self.0.run(&["kill", "--all", "--force"]);
    }
}

#[test]
fn up_runs_a_tcp_and_a_udp_tunnel_on_one_port() {
    let home = Home::with_keys();
    let udp_source = UdpEcho::start();
    let tcp_source = crate::sources::echo();
    let (_router, raddr) = home.router(
        Engine::Epoll,
        &[udp_source.addr.to_string(), tcp_source.to_string()],
    );
    let port = crate::harness::dead_udp_port();
    let file = home.path().join("conduit.toml");
    std::fs::write(
        &file,
        format!(
            "[router]\nhost = \"127.0.0.1\"\nport = {}\npublic_key = \"{}\"\n\n\
             [security]\nprivate_key_path = \"{}\"\n\n\
             [performance]\nworkers = 1\nio_engine = \"epoll\"\nudp_idle_timeout_secs = 30\nudp_max_new_flows = 1000\n\n\
             [[tunnels]]\nname = \"web\"\nsource = \"{tcp_source}\"\nbind = \"127.0.0.1:{port}\"\n\n\
             [[tunnels]]\nname = \"dns\"\nsource = \"{}\"\nbind = \"127.0.0.1:{port}\"\n\
             protocol = \"udp\"\n",
            raddr.port(),
            home.key("router.pub").display(),
            home.key("client.key").display(),
            udp_source.addr,
        ),
    )
    .unwrap();
    let f = file.to_str().unwrap();
    home.ok(&["config", "validate", "-f", f]);
    let _cleanup = KillAll(&home);
    let up = home.ok(&["up", "-f", f]);
    // Two tunnels on one port: what each says it listens on tells them apart.
    assert!(
        up.contains("started tunnel \"dns\" (id ")
            && up.contains(&format!("listening on 127.0.0.1:{port}/udp\n")),
        "{up}"
    );
    assert!(
        up.contains(&format!("listening on 127.0.0.1:{port}\n")),
        "{up}"
    );
    let again = home.ok(&["up", "-f", f]);
    assert!(
        again.contains(&format!("listening on 127.0.0.1:{port}/udp\n")),
        "{again}"
    );
    let status = home.ok(&["status"]);
    assert!(
        status.contains(&format!("127.0.0.1:{port}/udp → {}", udp_source.addr)),
        "{status}"
    );
    assert!(
        status.contains(&format!("127.0.0.1:{port} → {tcp_source}")),
        "{status}"
    );
    let l = list_json(&home);
    let dns = l
        .iter()
        .find(|t| t["name"] == "dns")
        .expect("dns is listed");
    assert_eq!(dns["protocol"], "udp");
    assert_eq!(dns["bind"], format!("127.0.0.1:{port}"));
    let web = l
        .iter()
        .find(|t| t["name"] == "web")
        .expect("web is listed");
    assert_eq!(web["protocol"], "tcp");
    assert!(
        home.ok(&["list"])
            .contains(&format!("127.0.0.1:{port}/udp")),
        "the table marks the UDP tunnel"
    );

    let user = User::new(format!("127.0.0.1:{port}").parse().unwrap());
    wait_for_answer(&user, b"ping");
    crate::ops::echo_through(format!("127.0.0.1:{port}").parse().unwrap(), 4096, 7);

    home.ok(&["down", "-f", f]);
    assert_eq!(home.ok(&["list"]), "no tunnels running\n");
}

/// `status` and `list` show how long a UDP tunnel's flows may stay quiet; a TCP
/// tunnel's entry has no such setting.
#[test]
fn status_and_list_show_the_udp_idle_timeout() {
    let t = UdpTunnel::start(Engine::Epoll, &["--name", "dns", "--udp-idle-timeout", "5"]);
    let status = t.home.ok(&["status"]);
    assert!(
        status.contains(&format!(
            "{}/udp → {} (flows idle 5s ended)\n",
            t.taddr, t.source.addr
        )),
        "{status}"
    );
    let list: serde_json::Value =
        serde_json::from_str(&t.home.ok(&["list", "--format", "json"])).unwrap();
    assert_eq!(list[0]["udp_idle_timeout_secs"], 5, "{list:#}");
    assert_eq!(list[0]["stream_idle_timeout_secs"], 0, "{list:#}");
}
