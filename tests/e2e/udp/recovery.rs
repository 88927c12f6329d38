//! UDP flows across a router restart, over several routers and sources, and after
//! churn: they come back, spread, move on, and leave nothing behind; a source that
//! refuses them shows in the tunnel's status.

use super::*;

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
    tunnel.wait_stderr(
        "dropped a datagram from a sender without a flow: the router is unreachable (the \
         tunnel is reconnecting)",
    );
    // Dropped and counted as such, and as a connection opened and failed (as a TCP
    // user turned away is): failed is never more than total.
    let metrics = home.ok(&["stats", "--format", "prometheus"]);
    let count = |metric: &str| {
        (metrics.lines())
            .find(|l| l.starts_with(&format!("{metric}{{")))
            .and_then(|l| l.rsplit_once(' '))
            .map(|(_, v)| v.to_owned())
    };
    assert_eq!(
        count("conduit_udp_datagrams_dropped_total").as_deref(),
        Some("1"),
        "{metrics}"
    );
    assert_eq!(
        count("conduit_connections_total").as_deref(),
        Some("2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("conduit_errors_total{tunnel=\"tunnel\",kind=\"router_unreachable\"} 1\n"),
        "{metrics}"
    );
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

    // New flows now start on the live source: none has to move off the dead one,
    // which would cost it its first datagram (refused), so each first one is answered.
    for i in 0..4 {
        User::new(taddr).echo(format!("user {i}").as_bytes());
    }
    drop(router);
}

/// A flow whose every source is down moves at each datagram its user sends; the
/// moves are logged at most once a second on each core, with a count of those held
/// back, so a user (or anyone forging one) cannot flood the router's log.
#[test]
fn moves_of_a_flow_whose_sources_are_all_down_do_not_flood_the_log() {
    let home = Home::with_keys();
    let dead: Vec<String> = (0..2)
        .map(|_| {
            UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .to_string()
        })
        .collect();
    let (router, raddr) = home.router(Engine::Epoll, &dead);
    let (_tunnel, taddr) = home.tunnel_with(
        Engine::Epoll,
        raddr,
        &dead.join(","),
        &["--protocol", "udp"],
    );
    let user = User::new(taddr);
    let started = std::time::Instant::now();
    // On the next line, or as the second ends.
    let held_back = [
        "more moves between sources since the last report",
        "moves of UDP flows between sources in the second after the last report: ",
    ];
    wait_for("a report of moves held back", || {
        for _ in 0..50 {
            user.sock.send_to(b"anyone?", taddr).unwrap();
        }
        // Paces the sender: the router's core must keep up for moves to happen.
        std::thread::sleep(Duration::from_millis(2));
        (held_back.iter().any(|h| router.stderr_count(h) > 0)).then_some(())
    });
    let lines = router.stderr_count("; the flow moves to source");
    // One a second on each of at most two cores, and the first on each.
    let bound = 2 * (started.elapsed().as_secs() as usize + 2);
    assert!(
        lines <= bound,
        "{lines} lines of moves in {:?}:\n{}",
        started.elapsed(),
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

both_engines!(
    a_udp_tunnel_shows_a_source_that_refuses_its_datagrams_until_it_answers,
    |engine: Engine| source_refusals_show_in_the_tunnels_status(engine, &[])
);

both_engines!(
    a_udp_tunnel_over_the_plain_transport_shows_a_source_that_refuses_its_datagrams,
    |engine: Engine| source_refusals_show_in_the_tunnels_status(engine, PLAIN)
);

/// A UDP source nothing listens on: the router tells the flow's client (protocol 8),
/// so the tunnel's `status` and `health` name it, and its log says it, until the
/// source answers a flow opened since, or the one refused. `transport`: the
/// arguments that choose it, on both ends.
fn source_refusals_show_in_the_tunnels_status(engine: Engine, transport: &[&str]) {
    let home = Home::with_keys();
    let dead = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (_router, raddr) = home.router_with(engine, &[dead.to_string()], transport);
    let mut args = vec!["--protocol", "udp", "--name", "dns"];
    args.extend_from_slice(transport);
    let (tunnel, taddr) = home.tunnel_with(engine, raddr, &dead.to_string(), &args);
    let user = User::new(taddr);
    let why = format!("source {dead} refused a datagram (nothing listens on that UDP port)");
    assert_eq!(refusal_reports(&home), 0);
    // Each datagram the user sends draws the source's refusal (ICMP port
    // unreachable) at the router.
    let (code, out, err) = crate::procfs::wait_until("health to name the refusal", || {
        user.sock.send_to(b"anyone?", taddr).unwrap();
        let (code, out, err) = home.run(&["health"]);
        (out.contains("latest refusal"), (code, out, err))
    });
    assert_code(code, 1, &err);
    assert_eq!(
        out,
        format!("dns: router {raddr} link connected (latest refusal: {why})\n")
    );
    assert_eq!(err, "conduit: error: unhealthy: dns (latest refusal)\n");
    let status = home.ok(&["status"]);
    assert!(
        status.contains(&format!("\n  latest refusal: {why}\n")),
        "{status}"
    );
    tunnel.wait_stderr(&format!("udp flow: {why}"));
    // Each report is counted (one a second at most for the flow: how many came
    // depends on how long the loop above ran).
    assert!(refusal_reports(&home) >= 1);

    // The source comes up on that port. A new user's flow is answered, which says
    // the source serves again, while the refused flow is still open.
    let _source = UdpEcho::start_on(&dead.to_string());
    User::new(taddr).echo(b"a new user");
    assert_eq!(
        home.ok(&["health"]),
        format!("dns: router {raddr} link connected\n")
    );
    // The refused flow's next datagram gets through, the first one too (the error
    // the last refusal left on the router's socket does not cost it).
    user.echo(b"up now");
    assert!(!home.ok(&["status"]).contains("refus"));
}

/// The tunnel "dns"'s count of its router's reports that the source refuses.
fn refusal_reports(home: &Home) -> u64 {
    let metrics = home.ok(&["stats", "--format", "prometheus"]);
    (metrics.lines())
        .find_map(|l| l.strip_prefix("conduit_udp_source_refusals_total{tunnel=\"dns\"} "))
        .unwrap_or_else(|| panic!("no refusal count:\n{metrics}"))
        .parse()
        .unwrap()
}
