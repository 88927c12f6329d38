//! What bounds a UDP tunnel: the flow limit, the new-flow rate and the socket
//! buffer sizes; what they drop is counted.

use super::*;

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

/// Under `--bandwidth-limit`, a datagram is paid for before it goes, and one that
/// would wait longer than a quarter of a second for its turn is dropped and counted
/// rather than held (see [`assert_late_datagrams_dropped`]). Before, every datagram
/// was held until paid for, however long that took (here 5 s; with thousands of
/// senders, minutes and hundreds of megabytes).
#[test]
fn datagrams_past_the_bandwidth_limit_wait_briefly_or_are_dropped() {
    let rate = LATE_RATE.to_string();
    let t = UdpTunnel::start(
        Engine::Epoll,
        &[
            "--bandwidth-limit",
            &rate,
            "--burst-limit",
            &rate,
            "--name",
            "dns",
        ],
    );
    assert_late_datagrams_dropped(t.taddr, || {
        dns_metric(&t.home, "conduit_udp_datagrams_dropped_total") as usize
    });
}

/// The same under a router's limit for each client key (`[performance]
/// default_bandwidth_limit`), counted by the router.
#[test]
fn datagrams_past_a_routers_bandwidth_limit_wait_briefly_or_are_dropped() {
    let rate = format!("performance.default_bandwidth_limit={LATE_RATE}");
    let burst = format!("performance.burst_bandwidth_limit={LATE_RATE}");
    let token = crate::ops::TOKEN;
    let t = UdpTunnel::start_with(
        Engine::Epoll,
        &[],
        &[
            "--api-bind",
            "127.0.0.1:0",
            "--api-token",
            token,
            "--set",
            &rate,
            "--set",
            &burst,
        ],
        &["--name", "dns"],
    );
    let api = addr_in(&t.router.wait_stdout("api listening on"));
    let url = format!("http://{api}/api/v1/metrics");
    assert_late_datagrams_dropped(t.taddr, || {
        let text = crate::http::curl("GET", &url, Some(token), &[]).body;
        text.lines()
            .find_map(|l| l.strip_prefix("conduit_udp_datagrams_dropped_total "))
            .unwrap_or_else(|| panic!("no dropped datagrams in {text}"))
            .parse()
            .unwrap()
    });
    assert_eq!(
        dns_metric(&t.home, "conduit_udp_datagrams_dropped_total"),
        0,
        "the tunnel has no limit of its own"
    );
}

/// The bandwidth limit of [`assert_late_datagrams_dropped`], bytes/s and burst.
const LATE_RATE: usize = 10_000;

/// Sixty new senders of one 1000-byte datagram each send through the tunnel at
/// `taddr`, limited to [`LATE_RATE`] bytes/s with a burst of as much, all at once.
/// The burst's ten (at least) are answered, and every other datagram is either
/// answered or counted as dropped (`dropped`: the count); the answers past the
/// burst came no sooner than the rate allows (a lower bound only: a loaded machine
/// makes them slower, never faster).
fn assert_late_datagrams_dropped(taddr: SocketAddr, dropped: impl Fn() -> usize) {
    const RATE: usize = LATE_RATE;
    const SIZE: usize = 1_000;
    const SENDERS: usize = 60;
    let users: Vec<(User, Vec<u8>)> = (0..SENDERS)
        .map(|i| {
            let u = User::new(taddr);
            u.sock.set_nonblocking(true).unwrap();
            (u, pattern(i as u64, SIZE))
        })
        .collect();
    let started = std::time::Instant::now();
    for (u, d) in &users {
        u.sock.send_to(d, taddr).unwrap();
    }
    let deadline = started + DEADLINE;
    let mut answered = [false; SENDERS];
    let mut last_answer = started;
    let mut buf = vec![0u8; 2 * SIZE];
    let dropped = loop {
        for (i, (u, d)) in users.iter().enumerate() {
            match u.sock.recv_from(&mut buf) {
                Ok((n, _)) => {
                    assert!(!answered[i], "sender {i}: answered twice");
                    assert!(
                        buf[..n] == [b"echo:", &d[..]].concat(),
                        "sender {i}: the answer differs"
                    );
                    answered[i] = true;
                    last_answer = std::time::Instant::now();
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("sender {i}: {e}"),
            }
        }
        let got = answered.iter().filter(|a| **a).count();
        let dropped = dropped();
        if got + dropped >= SENDERS {
            break dropped;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{got} answered and {dropped} dropped of {SENDERS}, after {DEADLINE:?}"
        );
        thread::sleep(Duration::from_millis(5));
    };
    let got = answered.iter().filter(|a| **a).count();
    assert_eq!(got + dropped, SENDERS, "{got} answered, {dropped} dropped");
    assert!(
        got >= RATE / SIZE,
        "only {got} answered: the burst holds ten"
    );
    assert!(
        dropped > 0,
        "all {SENDERS} answered: none dropped for waiting too long"
    );
    let elapsed = last_answer - started;
    let least = 0.9 * (got * SIZE).saturating_sub(RATE) as f64 / RATE as f64;
    assert!(
        elapsed.as_secs_f64() >= least,
        "{got} datagrams of {SIZE} bytes at {RATE} bytes/s were answered in {elapsed:?}"
    );
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
            // Returns once every thread is stopped.
            let _frozen = crate::faults::Frozen::new(&tunnel);
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
        // And said in the log, with the setting to raise.
        tunnel.wait_stderr(
            "UDP datagram(s) that found a receive buffer full: raise \
             performance.read_buffer_size (a tunnel's --read-buffer-size), up to \
             net.core.rmem_max",
        );
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
    // Each sender turned away counts as a connection opened and failed, as a
    // refused TCP user does: six senders, six connections, failed no more.
    let sample = |line: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line))
            .unwrap_or_else(|| panic!("no {line}:\n{metrics}"))
            .parse()
            .unwrap()
    };
    assert_eq!(
        sample("conduit_connections_total{tunnel=\"dns\"} "),
        6,
        "{metrics}"
    );
    assert_eq!(
        sample("conduit_errors_total{tunnel=\"dns\",kind=\"limit_reached\"} "),
        dropped,
        "{metrics}"
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
