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
use crate::harness::{DEADLINE, Engine, Home, Proc, assert_code};
use crate::http::wait_for;
use crate::plain::{PLAIN, read_events, welcomed_peer};
use crate::sources::pattern;

/// The largest payload a UDP datagram over IPv4 can carry.
const MAX_UDP: usize = 65_507;

/// A UDP source on a thread: answers each datagram with `echo:` and the datagram, to
/// the address it came from, and remembers which addresses it heard from.
struct UdpEcho {
    addr: SocketAddr,
    senders: Arc<Mutex<HashMap<SocketAddr, usize>>>,
    received: Arc<AtomicUsize>,
}

impl UdpEcho {
    fn start() -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
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
    fn senders(&self) -> usize {
        self.senders.lock().unwrap().len()
    }

    /// The datagrams heard that were not empty (the router's probes aside).
    fn payloads(&self) -> usize {
        self.senders.lock().unwrap().values().sum()
    }
}

/// A user: one socket, sending a datagram and waiting for its answer.
struct User {
    sock: UdpSocket,
    tunnel: SocketAddr,
}

impl User {
    fn new(tunnel: SocketAddr) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
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
    fn echo(&self, d: &[u8]) {
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
        let home = Home::with_keys();
        let source = UdpEcho::start();
        let (router, raddr) = home.router_with(engine, &[source.addr.to_string()], transport);
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
    assert!(user.sock.recv_from(&mut buf).is_err());
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
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    assert!(err.contains("already listens there"), "{err}");
}

/// Stops every background tunnel of a home, even when the test fails.
struct KillAll<'a>(&'a Home);

impl Drop for KillAll<'_> {
    fn drop(&mut self) {
        let _ = self.0.run(&["kill", "--all", "--force"]);
    }
}

/// A port free for both TCP and UDP on loopback right now.
fn port_free_for_both() -> u16 {
    loop {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
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
    let port = port_free_for_both();
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
    home.ok(&["up", "-f", f]);
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

#[test]
fn udp_flows_come_back_after_the_router_restarts() {
    flows_come_back_after_the_router_restarts(&[]);
}

#[test]
fn udp_flows_over_the_plain_transport_come_back_after_the_router_restarts() {
    flows_come_back_after_the_router_restarts(PLAIN);
}

/// A router killed under a flow and started again on its address; `transport`:
/// the arguments that choose it, on both ends.
fn flows_come_back_after_the_router_restarts(transport: &[&str]) {
    let home = Home::with_keys();
    let source = UdpEcho::start();
    let bind = format!("127.0.0.1:{}", crate::harness::dead_port());
    let allow = [source.addr.to_string()];
    let (mut router, raddr) = home.router_at(Engine::Epoll, &bind, &allow, transport);
    let mut args = vec!["--protocol", "udp", "--heartbeat-interval", "1"];
    args.extend_from_slice(transport);
    let (tunnel, taddr) = home.tunnel_with(Engine::Epoll, raddr, &source.addr.to_string(), &args);
    let user = User::new(taddr);
    user.echo(b"before");
    router.signal("KILL");
    router.wait_exit();
    // The flow riding the dead link is closed, and the tunnel says why.
    tunnel.wait_stderr("udp flow closed");
    tunnel.wait_stderr("lost the router link");
    // Datagrams sent while the router is away start flows that fail at once (the
    // log says so, rate-limited), and nothing piles up.
    user.sock.send_to(b"lost", taddr).unwrap();
    tunnel.wait_stderr("the router is unreachable (the tunnel is reconnecting)");
    let (_router, _) = home.router_at(Engine::Epoll, &bind, &allow, transport);
    tunnel.wait_stdout_count("connected to router", 2);
    // The same user is served again on a new flow.
    wait_for_answer(&user, b"after");
}

#[test]
fn udp_flows_of_a_balancing_tunnel_spread_over_its_routers() {
    let home = Home::with_keys();
    let source = UdpEcho::start();
    let allow = [source.addr.to_string()];
    let (_first, a, api_a) = crate::ops::router_api(&home, &allow, &[]);
    let (_second, b, api_b) = crate::ops::router_api(&home, &allow, &[]);
    let tunnel = home.tunnel_via(
        Engine::Epoll,
        &format!("{a},{b}"),
        &source.addr.to_string(),
        &["--protocol", "udp", "--router-balance"],
    );
    let taddr = crate::harness::addr_in(&tunnel.wait_stdout("listening on"));
    tunnel.wait_stdout(&format!("connected to routers {a}, {b}"));
    // Forty senders, a flow each: each flow rides a channel of its own, made to
    // the router with fewer.
    let users: Vec<User> = (0..40).map(|_| User::new(taddr)).collect();
    for (i, u) in users.iter().enumerate() {
        u.echo(format!("sender {i}").as_bytes());
    }
    let [on_a, on_b] = crate::ops::open_on([&api_a, &api_b], 40);
    assert!(
        on_a >= 10 && on_b >= 10,
        "{on_a} flows on {a}, {on_b} on {b}"
    );
    assert_eq!(source.senders(), 40);
}

#[test]
fn a_new_sender_over_the_flow_limit_is_dropped_and_counted() {
    let UdpTunnel {
        home,
        source,
        router: _router,
        tunnel,
        taddr,
    } = UdpTunnel::start(Engine::Epoll, &["--max-connections", "1", "--name", "dns"]);
    let first = User::new(taddr);
    first.echo(b"one flow");
    let second = User::new(taddr);
    second.sock.send_to(b"over the limit", taddr).unwrap();
    tunnel.wait_stderr("dropped a datagram from a new sender: the tunnel's limit of 1");
    tunnel.wait_stderr("raise --max-connections (now 1)");
    let metrics = home.ok(&["stats", "--format", "prometheus"]);
    assert!(
        metrics
            .lines()
            .any(|l| l == "conduit_udp_datagrams_dropped_total{tunnel=\"dns\"} 1"),
        "{metrics}"
    );
    // The first sender's flow is unaffected.
    first.echo(b"still served");
    assert_eq!(source.senders(), 1);
}

/// `--read-buffer-size` / `--write-buffer-size` size the tunnel's UDP sockets too
/// (a burst larger than the receive buffer is dropped by the kernel): Linux shows
/// twice the size asked for (its bookkeeping), here below any host's cap.
#[test]
fn the_buffer_sizes_apply_to_udp_sockets() {
    if !crate::harness::have("ss", "-V") {
        return;
    }
    let t = UdpTunnel::start(
        Engine::Epoll,
        &[
            "--read-buffer-size",
            "65536",
            "--write-buffer-size",
            "32768",
        ],
    );
    User::new(t.taddr).echo(b"sized");
    let out = std::process::Command::new("ss")
        .args(["-uamnH", &format!("sport = :{}", t.taddr.port())])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.contains("rb131072") && out.contains("tb65536"), "{out}");
}

/// The value of the tunnel `dns`'s `metric`, from `conduit stats`.
fn dns_metric(home: &Home, metric: &str) -> u64 {
    let metrics = home.ok(&["stats", "--format", "prometheus"]);
    let prefix = format!("{metric}{{tunnel=\"dns\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {metric}:\n{metrics}"))
        .parse()
        .unwrap()
}

/// Waits until every thread of `p` is stopped (SIGSTOP reaches each in its time).
fn wait_all_threads_stopped(p: &Proc) {
    let tasks = format!("/proc/{}/task", p.pid());
    wait_for("every thread of the tunnel to stop", || {
        std::fs::read_dir(&tasks)
            .unwrap()
            .all(|t| {
                std::fs::read_to_string(t.unwrap().path().join("stat")).is_ok_and(|s| {
                    s.rsplit_once(')')
                        .is_some_and(|(_, r)| r.trim_start().starts_with('T'))
                })
            })
            .then_some(())
    });
}

// Datagrams the kernel drops because the tunnel's socket is full are counted: a
// frozen tunnel reads nothing while a burst overflows its receive buffer (the
// smallest `--read-buffer-size`), and once it runs again the metric shows them.
both_engines!(
    datagrams_the_kernel_drops_on_a_full_socket_are_counted,
    |engine: Engine| {
        let UdpTunnel {
            home,
            source: _source,
            router: _router,
            tunnel,
            taddr,
        } = UdpTunnel::start(engine, &["--read-buffer-size", "4096", "--name", "dns"]);
        let user = User::new(taddr);
        user.echo(b"before");
        assert_eq!(
            dns_metric(&home, "conduit_udp_receive_buffer_drops_total"),
            0
        );
        {
            let _frozen = crate::faults::Frozen::new(&tunnel);
            wait_all_threads_stopped(&tunnel);
            // 200 KB into a buffer of 8 KiB (Linux doubles what is asked) that nobody
            // reads: most are dropped.
            for _ in 0..200 {
                user.sock.send_to(&[7u8; 1000], taddr).unwrap();
            }
        }
        let dropped = wait_for("the tunnel to count the kernel's drops", || {
            let n = dns_metric(&home, "conduit_udp_receive_buffer_drops_total");
            (n > 0).then_some(n)
        });
        assert!(dropped < 200, "{dropped} of 200 dropped: none fit?");
        // Conduit itself dropped none: its flow's queue had room for what was read.
        assert_eq!(dns_metric(&home, "conduit_udp_datagrams_dropped_total"), 0);
        wait_for_answer(&user, b"after");
    }
);

#[test]
fn new_senders_over_the_flow_rate_are_dropped_and_counted() {
    let UdpTunnel {
        home,
        source,
        router: _router,
        tunnel,
        taddr,
    } = UdpTunnel::start(
        Engine::Epoll,
        &["--udp-max-new-flows", "1", "--name", "dns"],
    );
    // A full second's worth may start at once: the first sender gets its flow.
    let first = User::new(taddr);
    first.echo(b"first flow");
    // Five new senders within microseconds, at one new flow a second: one at most
    // starts (a second may have passed since the first), the others are dropped.
    let burst: Vec<User> = (0..5).map(|_| User::new(taddr)).collect();
    for u in &burst {
        u.sock.send_to(b"burst", taddr).unwrap();
    }
    tunnel.wait_stderr(
        "dropped a datagram from a new sender: the tunnel starts at most 1 new flows a \
         second; raise --udp-max-new-flows (now 1) to allow more",
    );
    let metrics = home.ok(&["stats", "--format", "prometheus"]);
    let dropped: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("conduit_udp_datagrams_dropped_total{tunnel=\"dns\"} "))
        .unwrap_or_else(|| panic!("no drop counter:\n{metrics}"))
        .parse()
        .unwrap();
    assert!(
        dropped == 4 || dropped == 5,
        "{dropped} of 5 dropped:\n{metrics}"
    );
    // The flow that started is unaffected, and a dropped sender gets in once the
    // cap allows another flow.
    first.echo(b"still served");
    wait_for_answer(&burst[4], b"later");
    assert!(
        source.senders() <= 3,
        "{} flows reached the source",
        source.senders()
    );
}

#[test]
fn a_udp_flow_moves_to_the_next_source_when_one_refuses() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let live = UdpEcho::start();
    // A UDP port nothing listens on: bound, then closed again.
    let dead = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (router, raddr) = home.router(engine, &[dead.to_string(), live.addr.to_string()]);
    let target = format!("{dead}, {}", live.addr);
    let (_tunnel, taddr) = home.tunnel_with(engine, raddr, &target, &["--protocol", "udp"]);
    // Flows start on the sources in turn; those that start on the dead one lose
    // their first datagram and move on, so every sender is answered.
    let users: Vec<User> = (0..4).map(|_| User::new(taddr)).collect();
    for (i, u) in users.iter().enumerate() {
        wait_for_answer(u, format!("user {i}").as_bytes());
    }
    router.wait_stderr(&format!(
        "source {dead} refused a datagram (nothing listens on that UDP port); the flow moves \
         to source {}",
        live.addr
    ));
    // Each flow reached the live source from one socket, moved or not.
    assert_eq!(live.senders(), 4);
    users[0].echo(b"and stays there");
}

#[test]
fn the_router_probes_udp_sources_and_reports_one_nothing_listens_on_down() {
    let home = Home::with_keys();
    let rx = crate::http::Receiver::start();
    let live = UdpEcho::start();
    let dead = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (router, raddr, api) = crate::ops::router_api(
        &home,
        &[dead.to_string(), live.addr.to_string()],
        &[
            "--set",
            "health.interval_secs=1",
            "--alert-webhook",
            &rx.url("/hook"),
        ],
    );
    let target = format!("{dead},{}", live.addr);
    let (_tunnel, taddr) = home.tunnel_with(Engine::Epoll, raddr, &target, &["--protocol", "udp"]);
    // A flow makes both members sources in use.
    wait_for_answer(&User::new(taddr), b"in use");

    let sources = wait_for("the probes to tell the UDP sources apart", || {
        let h = crate::ops::get(&api, "/api/v1/health");
        let s = h["data"]["sources"].as_array()?.clone();
        let state = |t: String| {
            s.iter()
                .find(|x| x["target"] == t)
                .map(|x| x["state"].clone())
        };
        (state(dead.to_string())? == "down" && state(live.addr.to_string())? == "up").then_some(s)
    });
    let of = |t: String| sources.iter().find(|x| x["target"] == t).unwrap();
    let why = format!(
        "{dead} answered port unreachable: nothing listens on UDP port {}",
        dead.port()
    );
    assert_eq!(of(dead.to_string())["protocol"], "udp");
    assert_eq!(of(dead.to_string())["last_error"], why.as_str());
    assert_eq!(of(live.addr.to_string())["protocol"], "udp");
    // The echo answered the probe.
    assert!(of(live.addr.to_string())["latency_ms"].is_number());

    let hooks = rx.wait("the down alert", |r| !r.is_empty());
    let b = &hooks[0].body;
    assert_eq!(b["event"], "source_down");
    assert_eq!(
        b["subject"],
        serde_json::json!({"kind": "source", "target": dead.to_string(), "protocol": "udp"})
    );
    assert_eq!(
        b["message"],
        format!("UDP source {dead} is down: {why} (2 failed probes in a row)")
    );

    // New flows now start on the live source: none has to move off the dead one.
    let moved = router.stderr_count(&format!("source {dead} refused a datagram"));
    let users: Vec<User> = (0..4).map(|_| User::new(taddr)).collect();
    for (i, u) in users.iter().enumerate() {
        wait_for_answer(u, format!("user {i}").as_bytes());
    }
    assert_eq!(
        router.stderr_count(&format!("source {dead} refused a datagram")),
        moved,
        "{}",
        router.stderr()
    );
}

/// `count` senders, `threads` at a time, each a fresh socket (a new flow) that sends
/// one datagram and checks its echo.
fn udp_churn(taddr: SocketAddr, count: usize, threads: usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let next = next.clone();
            thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return;
                    }
                    User::new(taddr).echo(&pattern(i as u64, 1 + i % 1400));
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("a flow failed");
    }
}

both_engines!(udp_flows_leave_nothing_behind, |engine: Engine| {
    flows_leave_nothing_behind(engine, &[]);
});

#[test]
fn udp_flows_over_the_plain_transport_leave_nothing_behind() {
    flows_leave_nothing_behind(Engine::Epoll, PLAIN);
}

/// 600 flows after a warm-up of 600: the tunnel's and the router's open files and
/// memory back where they were; `transport`: the arguments that choose it.
fn flows_leave_nothing_behind(engine: Engine, transport: &[&str]) {
    use crate::procfs::Footprint;
    let UdpTunnel {
        home,
        source,
        router,
        tunnel,
        taddr,
    } = UdpTunnel::start_on(engine, transport, &["--udp-idle-timeout", "1"]);
    let quiet = |what: &str| wait_quiet(&home, what);
    // A warm-up of the same shape, so the pools are at their working size.
    udp_churn(taddr, 600, 8);
    quiet("warm-up");
    let start = (Footprint::of(tunnel.pid()), Footprint::of(router.pid()));
    udp_churn(taddr, 600, 8);
    quiet("run");
    // Each flow had a socket on the router and a channel each side: all given back.
    crate::limits::back_to("tunnel", &tunnel, start.0);
    crate::limits::back_to("router", &router, start.1);
    User::new(taddr).echo(b"still serving");
    // Every datagram sent here has a payload; the router's health probe (empty,
    // every 5 s) lands too when the test runs longer than that.
    assert_eq!(source.payloads(), 1201);
}
