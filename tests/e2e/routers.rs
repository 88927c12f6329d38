//! One tunnel, several routers (`--router A,B`, sharing one key or each with its
//! own): the link uses one at a time and moves to the next when it cannot reach the
//! one it uses; or, with `--router-balance`, uses all of them at once.

use std::io::{Read, Write};
use std::net::TcpListener;

use crate::faults::Frozen;
use crate::harness::{Engine, Home, addr_in, assert_code, dead_port};
use crate::http::wait_for;
use crate::ops::{TOKEN, open_on, router_api};
use crate::sources;
use crate::users::{assert_echo, connect, exchange, open_user, wait_for_echo};

#[test]
fn the_link_moves_to_the_next_router_when_one_goes_away() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let source = sources::echo();
    let (mut first, a) = home.router(engine, &[source.to_string()]);
    let (_second, b) = home.router(engine, &[source.to_string()]);
    let tunnel = home.tunnel_via(engine, &format!("{a},{b}"), &source.to_string(), &[]);
    let taddr = addr_in(&tunnel.wait_stdout("listening on"));
    tunnel.wait_stdout(&format!("connected to router {a}"));
    assert_echo(taddr, b"through the first");
    // The spare is checked (a handshake, then goodbye) before the tunnel needs it.
    tunnel.wait_stderr(&format!(
        "router {b} answers: it stands by while router {a} serves this tunnel"
    ));
    let status = home.ok(&["status"]);
    assert!(
        status.contains(&format!(
            "\n  router {b} stands by: it has answered checks since "
        )),
        "{status}"
    );

    // A router that says goodbye (it is shutting down) is left at once for the
    // one standing by, not tried again first.
    first.stop();
    tunnel.wait_stderr(&format!("; trying router {b} at once"));
    tunnel.wait_stdout(&format!("connected to router {b}"));
    wait_for_echo(taddr, b"through the second");
    assert_echo(taddr, b"and again");
    let status = home.ok(&["status"]);
    assert!(
        status.contains(&format!("router {b} connected since")),
        "{status}"
    );
}

/// A router killed outright (no goodbye) is tried again first; that failing, the
/// link goes to the router standing by, not to the next in line that never answers
/// (whose handshake timeout would keep every user out meanwhile).
#[test]
fn a_failed_router_is_left_for_the_one_standing_by_not_the_next_in_line() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let source = sources::echo();
    let (first, a) = home.router(engine, &[source.to_string()]);
    // Accepts connections and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let s = silent.local_addr().unwrap();
    let (_third, b) = home.router(engine, &[source.to_string()]);
    let tunnel = home.tunnel_via(engine, &format!("{a},{s},{b}"), &source.to_string(), &[]);
    let taddr = addr_in(&tunnel.wait_stdout("listening on"));
    tunnel.wait_stdout(&format!("connected to router {a}"));
    tunnel.wait_stderr(&format!(
        "router {b} answers: it stands by while router {a} serves this tunnel"
    ));
    assert_echo(taddr, b"through the first");

    first.signal("KILL");
    tunnel.wait_stderr(&format!("cannot reach router {a}: "));
    tunnel.wait_stdout(&format!("connected to router {b}"));
    let err = tunnel.stderr();
    assert!(err.contains(&format!("; trying router {b} ")), "{err}");
    assert!(!err.contains(&format!("trying router {s}")), "{err}");
    wait_for_echo(taddr, b"through the one standing by");
}

#[test]
fn a_spare_router_that_is_down_shows_before_the_tunnel_needs_it() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let source = sources::echo();
    let (_router, a) = home.router(engine, &[source.to_string()]);
    let spare = format!("127.0.0.1:{}", dead_port());
    let tunnel = home.tunnel_via(engine, &format!("{a},{spare}"), &source.to_string(), &[]);
    let taddr = addr_in(&tunnel.wait_stdout("listening on"));
    tunnel.wait_stdout(&format!("connected to router {a}"));
    let failing = format!(
        "router {spare} is not in use: its latest attempt failed: cannot reach router \
         {spare}: Connection refused (os error 111)"
    );
    let status = wait_for("the spare's failed check in status", || {
        let status = home.ok(&["status"]);
        status.contains(&failing).then_some(status)
    });
    assert!(
        status.contains(&format!("router {a} connected since")),
        "{status}"
    );
    // Healthy (exit 0), the spare named as failing.
    assert_eq!(
        home.ok(&["health"]),
        format!(
            "tunnel: router {a} link connected (router {spare} not in use, failing: cannot \
             reach router {spare}: Connection refused (os error 111))\n"
        )
    );
    assert_echo(taddr, b"served all along");
}

/// A router on standby whose port still answers but that would refuse the tunnel
/// (here its clients file lost the tunnel's key) is found out by the full check
/// (`--standby-check`), not when the tunnel needs it.
#[test]
fn a_standby_router_that_would_refuse_the_tunnel_is_found_out_before_it_is_needed() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let source = sources::echo();
    let allow = [source.to_string()];
    let clients = home.path().join("clients-b");
    std::fs::copy(home.path().join("authorized_clients"), &clients).unwrap();
    let (_first, a) = home.router(engine, &allow);
    let (second, b) = home.router_with(
        engine,
        &allow,
        &["--authorized-keys", clients.to_str().unwrap()],
    );
    let tunnel = home.tunnel_via(
        engine,
        &format!("{a},{b}"),
        &source.to_string(),
        &["--standby-check", "1"],
    );
    let taddr = addr_in(&tunnel.wait_stdout("listening on"));
    tunnel.wait_stdout(&format!("connected to router {a}"));
    tunnel.wait_stderr(&format!(
        "router {b} answers: it stands by while router {a} serves this tunnel"
    ));
    // Checked in full again and again while it stands by.
    second.wait_stderr_count("client said goodbye: a standby check", 3);

    // A file left without a key is installed on SIGHUP only (written in place, a
    // file is empty for a moment).
    std::fs::write(&clients, "# nobody\n").unwrap();
    second.signal("HUP");
    second.wait_stderr("0 in all, 0 added, 1 removed");
    tunnel.wait_stderr(&format!(
        "router {b}, standing by, fails its check: router {b}: the router refused this \
         client: client key {} is not authorized",
        home.public_key("client")
    ));
    let status = wait_for("the refusal in status", || {
        let status = home.ok(&["status"]);
        (!status.contains("stands by")).then_some(status)
    });
    assert!(
        status.contains(&format!("router {a} connected since")),
        "{status}"
    );
    assert!(
        status.contains(&format!(
            "\n  router {b} refused this tunnel: the router refused this client: client key \
             {} is not authorized; add it to the router's authorized_clients file\n",
            home.public_key("client")
        )),
        "{status}"
    );
    assert_echo(taddr, b"served by the first all along");
    tunnel.wait_stderr(&format!(
        "router {b}, standing by, refuses this tunnel: router {b}: the router refused this \
         client: client key {} is not authorized",
        home.public_key("client")
    ));
    tunnel.wait_stderr("; it is checked again every 1s");

    // Its key back, it is found standing by again at the next check, as often as
    // --standby-check asks (it used to wait 5 minutes).
    std::fs::copy(home.path().join("authorized_clients"), &clients).unwrap();
    second.signal("HUP");
    second.wait_stderr("1 in all, 1 added, 0 removed");
    tunnel.wait_stderr(&format!(
        "router {b} answers again: it stands by while router {a} serves this tunnel"
    ));
}

#[test]
fn a_tunnel_whose_first_router_is_away_starts_on_the_next() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let source = sources::echo();
    // A port nothing listens on: bound, then closed again.
    let away = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (_router, b) = home.router(engine, &[source.to_string()]);
    let tunnel = home.tunnel_via(engine, &format!("{away},{b}"), &source.to_string(), &[]);
    let taddr = addr_in(&tunnel.wait_stdout("listening on"));
    tunnel.wait_stdout(&format!("connected to router {b}"));
    tunnel.wait_stderr(&format!("cannot reach router {away}"));
    tunnel.wait_stderr(&format!("trying router {b}"));
    assert_echo(taddr, b"through the second");
}

#[test]
fn the_link_moves_back_to_the_first_router_when_it_returns() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let source = sources::echo();
    let allow = [source.to_string()];
    let (mut first, a) = home.router(engine, &allow);
    let (mut second, b) = home.router(engine, &allow);
    let tunnel = home.tunnel_via(
        engine,
        &format!("{a},{b}"),
        &source.to_string(),
        &["--router-failback", "1"],
    );
    let taddr = addr_in(&tunnel.wait_stdout("listening on"));
    tunnel.wait_stdout(&format!("connected to router {a}"));
    first.stop();
    tunnel.wait_stdout(&format!("connected to router {b}"));
    wait_for_echo(taddr, b"through the second");

    // A user mid-stream on the second router when the first comes back.
    let mut user = open_user(taddr);
    exchange(&mut user, b"before the move");
    let (_first, _) = home.router_at(engine, &a.to_string(), &allow, &[]);
    tunnel.wait_stderr(&format!("router {a} answers again: moving back to it"));
    tunnel.wait_stdout_count(&format!("connected to router {a}"), 2);
    // Its stream finishes where it started; new users go to the first router.
    exchange(&mut user, b"after the move");
    assert_echo(taddr, b"through the first again");
    // The link to the second router ends once no stream is left there.
    assert_eq!(second.stderr_count("client said goodbye"), 0);
    drop(user);
    second.wait_stderr(&format!(
        "client said goodbye: the tunnel moves back to router {a}"
    ));

    // The second router can go now: nothing depends on it.
    let lost = tunnel.stderr_count("lost the router link");
    second.stop();
    assert_echo(taddr, b"still through the first");
    assert_eq!(
        tunnel.stderr_count("lost the router link"),
        lost,
        "{}",
        tunnel.stderr()
    );
    let status = home.ok(&["status"]);
    assert!(
        status.contains(&format!("router {a} connected since")),
        "{status}"
    );
}

/// Streams left on the router a link moved away from (back to the first) are still
/// watched: when that router stops answering (frozen: it resets nothing), its
/// heartbeats tell, and those users are closed with the reason rather than left
/// hanging for good.
#[test]
fn streams_left_on_a_router_the_link_moved_back_from_are_closed_when_it_stops_answering() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let source = sources::echo();
    let allow = [source.to_string()];
    let (mut first, a) = home.router(engine, &allow);
    let (second, b) = home.router(engine, &allow);
    let tunnel = home.tunnel_via(
        engine,
        &format!("{a},{b}"),
        &source.to_string(),
        &["--router-failback", "1", "--heartbeat-interval", "1"],
    );
    let taddr = addr_in(&tunnel.wait_stdout("listening on"));
    tunnel.wait_stdout(&format!("connected to router {a}"));
    first.stop();
    tunnel.wait_stdout(&format!("connected to router {b}"));
    let mut user = open_user(taddr);
    exchange(&mut user, b"on the second");
    let (_first, _) = home.router_at(engine, &a.to_string(), &allow, &[]);
    tunnel.wait_stderr(&format!("router {a} answers again: moving back to it"));
    tunnel.wait_stdout_count(&format!("connected to router {a}"), 2);
    exchange(&mut user, b"still on the second");
    let status = crate::http::wait_for("status to name the stream left", || {
        let st = home.ok(&["status"]);
        st.contains("1 stream left there when the link moved finishes over it")
            .then_some(st)
    });
    assert!(
        status.contains(&format!(
            "router {b} stands by: it has answered checks since "
        )),
        "{status}"
    );

    let frozen = Frozen::new(&second);
    tunnel.wait_stderr(&format!(
        "lost router {b}, where streams were left when the tunnel moved back to router {a}: \
         no heartbeat answer for 3s; closing them"
    ));
    let mut rest = Vec::new();
    let read = user.read_to_end(&mut rest);
    assert!(read.is_ok() || read.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset));
    assert!(rest.is_empty(), "{rest:?}");
    assert_echo(taddr, b"through the first");
    drop(frozen);
}

#[test]
fn a_balancing_tunnel_spreads_users_over_its_routers_and_serves_on_while_one_is_away() {
    let home = Home::with_keys();
    let source = sources::echo();
    let allow = [source.to_string()];
    let (mut first, a, api_a) = router_api(&home, &allow, &[]);
    let (_second, b, api_b) = router_api(&home, &allow, &[]);
    let tunnel = home.tunnel_via(
        Engine::Epoll,
        &format!("{a},{b}"),
        &source.to_string(),
        &["--router-balance"],
    );
    let taddr = addr_in(&tunnel.wait_stdout("listening on"));
    tunnel.wait_stdout(&format!("connected to routers {a}, {b}"));

    // Users held open at once, each on a channel of its own: each channel goes to
    // the router with fewer, so the routers carry about half each (beyond the few
    // channels made while only one link was up).
    let users: Vec<_> = (0..40)
        .map(|i| {
            let mut u = open_user(taddr);
            exchange(&mut u, format!("user {i}").as_bytes());
            u
        })
        .collect();
    let [on_a, on_b] = open_on([&api_a, &api_b], 40);
    assert!(
        on_a >= 10 && on_b >= 10,
        "{on_a} users on {a}, {on_b} on {b}"
    );
    drop(users);
    open_on([&api_a, &api_b], 0);

    // One router away: the other serves everyone, and status names both.
    first.stop();
    tunnel.wait_stderr(&format!("lost the link to router {a}"));
    for i in 0..8 {
        assert_echo(taddr, format!("while {a} is away, {i}").as_bytes());
    }
    let status = home.ok(&["status"]);
    assert!(
        status.contains(&format!("routers {b} connected since"))
            && status.contains(&format!("; {a} not connected (retrying)")),
        "{status}"
    );
    let health = home.ok(&["health"]);
    assert!(
        health.contains(&format!(
            "tunnel: router {b} link connected ({a} not connected)"
        )),
        "{health}"
    );

    // Back: both routers in use again.
    let (_first, _) = home.router_at(Engine::Epoll, &a.to_string(), &allow, &[]);
    tunnel.wait_stdout_count(&format!("connected to routers {a}, {b}"), 2);
    assert_echo(taddr, b"both again");
    let status = home.ok(&["status"]);
    assert!(
        status.contains(&format!("routers {a}, {b} all connected since"))
            && !status.contains("not connected"),
        "{status}"
    );
    // Each router's link has its own time, and the set is connected since the
    // later of them: the one that came back, not the tunnel's first link.
    let json: serde_json::Value =
        serde_json::from_str(&home.ok(&["status", "--format", "json"])).unwrap();
    let since = |addr: &str| {
        let routers = json[0]["routers"].as_array().unwrap();
        let r = routers.iter().find(|r| r["addr"] == addr).unwrap();
        r["connected_since"].as_str().unwrap().to_owned()
    };
    let (back, stayed) = (since(&a.to_string()), since(&b.to_string()));
    assert!(back >= stayed, "{back} < {stayed}");
    assert!(
        status.contains(&format!("routers {a}, {b} all connected since {back}")),
        "{status}"
    );
}

/// A user who makes one connection at a time (each closed before the next) finds
/// the routers tied, none carrying a stream: ties go in turn, so the routers share
/// such users too (they all went to the router of the channel just given back).
#[test]
fn a_balancing_tunnel_takes_tied_routers_in_turn() {
    let home = Home::with_keys();
    let source = sources::echo();
    let allow = [source.to_string()];
    let (_first, a, api_a) = router_api(&home, &allow, &[]);
    let (_second, b, api_b) = router_api(&home, &allow, &[]);
    let tunnel = home.tunnel_via(
        Engine::Epoll,
        &format!("{a},{b}"),
        &source.to_string(),
        &["--router-balance"],
    );
    let taddr = addr_in(&tunnel.wait_stdout("listening on"));
    tunnel.wait_stdout(&format!("connected to routers {a}, {b}"));
    for i in 0..20 {
        assert_echo(taddr, format!("one at a time, {i}").as_bytes());
        open_on([&api_a, &api_b], 0);
    }
    let total = |api: &str| {
        crate::ops::get(api, "/api/v1/stats/connections")["data"]["total"]
            .as_u64()
            .expect("a count of connections")
    };
    let (on_a, on_b) = (total(&api_a), total(&api_b));
    assert_eq!(on_a + on_b, 20);
    // In turn on each core, each core starting with the first router.
    assert!(on_a >= 8 && on_b >= 8, "{on_a} users on {a}, {on_b} on {b}");
}

#[test]
fn a_router_that_joins_a_balancing_tunnel_late_takes_the_next_users() {
    let home = Home::with_keys();
    let source = sources::echo();
    let allow = [source.to_string()];
    let (_first, a, api_a) = router_api(&home, &allow, &[]);
    // The second router's address, nothing listening on it yet.
    let b = format!("127.0.0.1:{}", dead_port());
    // Two channels ready on each of the two cores.
    let tunnel = home.tunnel_via(
        Engine::Epoll,
        &format!("{a},{b}"),
        &source.to_string(),
        &["--router-balance", "--pool-size", "2"],
    );
    let taddr = addr_in(&tunnel.wait_stdout("listening on"));
    tunnel.wait_stdout(&format!("connected to router {a}"));
    let mut users: Vec<_> = (0..12)
        .map(|i| {
            let mut u = open_user(taddr);
            exchange(&mut u, format!("early {i}").as_bytes());
            u
        })
        .collect();

    // The second router comes up: it carries none of the twelve, so the next users'
    // channels go to it (taken in turn they would split about evenly).
    let extra = ["--api-bind", "127.0.0.1:0", "--api-token", TOKEN];
    let (second, _) = home.router_at(Engine::Epoll, &b, &allow, &extra);
    let api_b = format!(
        "http://{}",
        addr_in(&second.wait_stdout("api listening on"))
    );
    tunnel.wait_stdout(&format!("connected to routers {a}, {b}"));
    users.extend((0..12).map(|i| {
        let mut u = open_user(taddr);
        exchange(&mut u, format!("late {i}").as_bytes());
        u
    }));
    let [on_a, on_b] = open_on([&api_a, &api_b], 24);
    assert!(
        on_b >= 10,
        "{on_b} of the 12 late users on {b}, which joined late; {on_a} on {a}"
    );
    // `status` counts them as the routers do.
    let status = home.ok(&["status"]);
    assert!(
        status.contains(&format!("; streams by router: {a} {on_a}, {b} {on_b};")),
        "{status}"
    );
    for (i, u) in users.iter_mut().enumerate() {
        exchange(u, format!("still there {i}").as_bytes());
    }
}

#[test]
fn a_balancing_tunnel_closes_only_the_users_of_a_router_that_froze() {
    let home = Home::with_keys();
    let source = sources::echo();
    let allow = [source.to_string()];
    let (first, a, api_a) = router_api(&home, &allow, &[]);
    let (_second, b, api_b) = router_api(&home, &allow, &[]);
    // Heartbeats every second: a silent router is found out after 3 s.
    let tunnel = home.tunnel_via(
        Engine::Epoll,
        &format!("{a},{b}"),
        &source.to_string(),
        &["--router-balance", "--heartbeat-interval", "1"],
    );
    let taddr = addr_in(&tunnel.wait_stdout("listening on"));
    tunnel.wait_stdout(&format!("connected to routers {a}, {b}"));
    let mut users: Vec<_> = (0..12).map(|_| open_user(taddr)).collect();
    let on_a = open_on([&api_a, &api_b], 12)[0] as usize;
    assert!(on_a > 0 && on_a < 12, "{on_a} of 12 users on {a}");

    // The first router stops answering and resets nothing: its heartbeats tell,
    // and only the users riding its channels are closed.
    let frozen = Frozen::new(&first);
    tunnel.wait_stderr(&format!(
        "lost the link to router {a}: no heartbeat answer for 3s"
    ));
    tunnel.wait_stderr_count(
        &format!("user connection closed: the link to router {a} was lost"),
        on_a,
    );
    let mut alive = 0;
    for u in &mut users {
        let _ = u.write_all(b"still?");
        let mut back = [0u8; 6];
        if u.read_exact(&mut back).is_ok() {
            assert_eq!(&back, b"still?");
            alive += 1;
        }
    }
    assert_eq!(alive, 12 - on_a);
    assert_echo(taddr, b"through the second");
    assert!(
        !tunnel.stderr().contains(&format!("router {b} was lost")),
        "{}",
        tunnel.stderr()
    );
    drop(frozen);
    tunnel.wait_stdout_count(&format!("connected to routers {a}, {b}"), 2);
}

#[test]
fn a_balancing_tunnel_rotates_its_key_on_one_link_and_makes_the_others_again() {
    let home = Home::with_keys();
    let source = sources::echo();
    let allow = [source.to_string()];
    let (first, a) = home.router(Engine::Epoll, &allow);
    let (second, b) = home.router(Engine::Epoll, &allow);
    let tunnel = home.tunnel_via(
        Engine::Epoll,
        &format!("{a},{b}"),
        &source.to_string(),
        &["--router-balance"],
    );
    let taddr = addr_in(&tunnel.wait_stdout("listening on"));
    tunnel.wait_stdout(&format!("connected to routers {a}, {b}"));
    let old = home.public_key("client");

    let out = home.ok(&["keys", "rotate", "--all"]);
    let new = home.public_key("client");
    assert_ne!(new, old);
    assert!(
        out.starts_with(&format!("tunnel \"tunnel\": key rotated to {new};")),
        "{out}"
    );
    // Both routers see the tunnel again, with the new key, and carry its users.
    first.wait_stderr(&format!("client={new}"));
    second.wait_stderr(&format!("client={new}"));
    for i in 0..8 {
        assert_echo(taddr, format!("with the new key, {i}").as_bytes());
    }
}

/// A home whose keys include a second router key, `router-b`; an echo source, and
/// the allow-list for it.
fn with_router_b() -> (Home, std::net::SocketAddr, [String; 1]) {
    let home = Home::with_keys();
    home.ok(&["init", "--name", "router-b"]);
    let source = sources::echo();
    let allow = [source.to_string()];
    (home, source, allow)
}

/// The path of `router-b`'s private key, for a router's `--key`.
fn b_key(home: &Home) -> String {
    home.key("router-b.key")
        .to_str()
        .expect("utf-8 path")
        .to_owned()
}

#[test]
fn routers_with_keys_of_their_own_are_each_pinned_to_theirs() {
    let engine = Engine::Epoll;
    let (home, source, allow) = with_router_b();
    let (mut first, a) = home.router(engine, &allow);
    let (_second, b) = home.router_with(engine, &allow, &["--key", &b_key(&home)]);
    // One a path, one inline: each router has its own.
    let keys = format!(
        "{},{}",
        home.key("router.pub").display(),
        home.public_key("router-b")
    );
    let tunnel = home.tunnel_keyed(engine, &format!("{a},{b}"), &keys, &source.to_string(), &[]);
    let taddr = addr_in(&tunnel.wait_stdout("listening on"));
    tunnel.wait_stdout(&format!("connected to router {a}"));
    assert_echo(taddr, b"through the first");

    // The key rotates through both routers. They share one authorized_clients
    // here: the second finds the rotation made by the first and agrees.
    let out = home.ok(&["keys", "rotate", "--all"]);
    let new = home.public_key("client");
    assert!(
        out.starts_with(&format!("tunnel \"tunnel\": key rotated to {new};")),
        "{out}"
    );
    tunnel.wait_stdout_count(&format!("connected to router {a}"), 2);
    assert_echo(taddr, b"through the first, with the new key");

    first.stop();
    tunnel.wait_stdout(&format!("connected to router {b}"));
    wait_for_echo(taddr, b"through the second, pinned to its own key");

    // With the first router away, a rotation would be half made: it is refused,
    // and the link goes on as it was.
    let (status, _, err) = home.run(&["keys", "rotate", "--all"]);
    assert_code(status, 1, &err);
    assert!(
        err.contains(&format!(
            "every router of this tunnel must authorize the new key, and router {a}: cannot \
             reach router {a}"
        )),
        "{err}"
    );
    assert!(
        err.contains("the key is rotated once every router answers"),
        "{err}"
    );
    assert_eq!(home.public_key("client"), new);
    assert_eq!(tunnel.stdout_count(&format!("connected to router {b}")), 1);
    assert_echo(taddr, b"still through the second");
}

#[test]
fn a_key_rotates_through_every_router_each_with_its_own_clients_file() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let source = sources::echo();
    let allow = [source.to_string()];
    let authorized = std::fs::read_to_string(home.path().join("authorized_clients")).unwrap();
    let files = ["clients-a", "clients-b"].map(|f| {
        let path = home.path().join(f);
        std::fs::write(&path, &authorized).unwrap();
        path
    });
    let own = |i: usize| ["--authorized-keys", files[i].to_str().unwrap()];
    let (mut first, a) = home.router_with(engine, &allow, &own(0));
    let (second, b) = home.router_with(engine, &allow, &own(1));
    let tunnel = home.tunnel_via(engine, &format!("{a},{b}"), &source.to_string(), &[]);
    let taddr = addr_in(&tunnel.wait_stdout("listening on"));
    tunnel.wait_stdout(&format!("connected to router {a}"));
    let old = home.public_key("client");

    home.ok(&["keys", "rotate", "--tunnel", "tunnel"]);
    let new = home.public_key("client");
    assert_ne!(new, old);
    // Each router's own file: the old key dated, the new one under its name.
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines.len() == 2
                && lines[0].starts_with("expires=")
                && lines[0].ends_with(&format!(" {old} client"))
                && lines[1] == format!("{new} client"),
            "{}: {text}",
            file.display()
        );
    }
    second.wait_stderr("client key rotated: the new key is authorized");
    // The second router said goodbye to the rotation's channel: no lost client.
    second.wait_stderr("client said goodbye: key rotated");
    tunnel.wait_stdout_count(&format!("connected to router {a}"), 2);
    assert_echo(taddr, b"the new key, through the first");

    // The second router admits the new key when the link moves to it.
    first.stop();
    tunnel.wait_stdout(&format!("connected to router {b}"));
    wait_for_echo(taddr, b"the new key, through the second");
    assert!(
        !tunnel.stderr().contains("not authorized"),
        "{}",
        tunnel.stderr()
    );
}

#[test]
fn a_router_that_refuses_the_rotation_is_named_and_the_others_take_the_key() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let source = sources::echo();
    let old = home.public_key("client");
    let authorized = std::fs::read_to_string(home.path().join("authorized_clients")).unwrap();
    let file_b = home.path().join("clients-b");
    std::fs::write(&file_b, &authorized).unwrap();
    let (_first, a) = home.router(engine, &[source.to_string()]);
    // The second router's rule is for the old key alone: it refuses to rotate it.
    let (_second, b) = home.router_with(
        engine,
        &[format!("{old}={source}")],
        &["--authorized-keys", file_b.to_str().unwrap()],
    );
    let tunnel = home.tunnel_via(engine, &format!("{a},{b}"), &source.to_string(), &[]);
    let taddr = addr_in(&tunnel.wait_stdout("listening on"));
    tunnel.wait_stdout(&format!("connected to router {a}"));

    let (status, out, err) = home.run(&["keys", "rotate", "--all"]);
    let new = home.public_key("client");
    assert_ne!(new, old);
    assert_code(status, 1, &err);
    assert!(
        out.starts_with(&format!("tunnel \"tunnel\": key rotated to {new};")),
        "{out}"
    );
    let why = format!(
        "the new key {new} is not authorized by router {b}: the router refused the rotation: \
         the router's allow-list has rules for key {old} alone"
    );
    assert!(
        err.contains(&format!(
            "the key of tunnel \"tunnel\" was rotated, but {why}"
        )),
        "{err}"
    );
    tunnel.wait_stderr(&why);
    assert_eq!(std::fs::read_to_string(&file_b).unwrap(), authorized);
    // The first router took it: the tunnel goes on there with the new key.
    tunnel.wait_stdout_count(&format!("connected to router {a}"), 2);
    assert_echo(taddr, b"the new key, through the first");
    // The second is no spare any more: `status` and `health` say so now, not once
    // the tunnel needs it.
    let st = home.ok(&["status"]);
    assert!(
        st.contains(&format!(
            "\n  router {b} refused this tunnel: the new key {new} is not authorized by this \
             router (the router refused the rotation: "
        )),
        "{st}"
    );
    let (status, _, err) = home.run(&["health"]);
    assert_code(status, 1, &err);
}

#[test]
fn a_router_that_refuses_is_skipped_while_another_may_serve() {
    let engine = Engine::Epoll;
    let (home, source, allow) = with_router_b();
    let (_second, b) = home.router_with(engine, &allow, &["--key", &b_key(&home)]);
    // The first is away; the second presents router-b's key where the tunnel pins
    // router.pub for both: refused, named, and skipped, and the tunnel waits for
    // the first rather than giving up.
    let a = format!("127.0.0.1:{}", dead_port());
    let tunnel = home.tunnel_via(engine, &format!("{a},{b}"), &source.to_string(), &[]);
    let taddr = addr_in(&tunnel.wait_stdout("listening on"));
    tunnel.wait_stderr(&format!(
        "router {b}: router key mismatch: expected {}, got {}",
        home.public_key("router"),
        home.public_key("router-b")
    ));
    // Logged as an error, then retried with back-off like an unreachable router.
    tunnel.wait_stderr("something is intercepting the connection; retrying in ");
    assert!(
        tunnel
            .stderr()
            .contains(&format!("ERROR router {b}: router key mismatch")),
        "{}",
        tunnel.stderr()
    );
    let status = home.ok(&["status"]);
    assert!(status.contains("retrying"), "{status}");
    // The other way round, the refusal comes first and the round ends on the router
    // away: the tunnel's word that it retries names the refusal too.
    let other = home.tunnel_via(
        engine,
        &format!("{b},{a}"),
        &source.to_string(),
        &["--name", "other"],
    );
    let line = other.wait_stdout("retrying in the background");
    assert!(line.contains(&format!("router {a}")), "{line}");
    assert!(
        line.contains(&format!(
            "; and refused: router {b}: router key mismatch: expected {}, got {}",
            home.public_key("router"),
            home.public_key("router-b")
        )),
        "{line}"
    );
    // Not "unreachable": one of them answered, and was refused.
    let status = home.ok(&["status"]);
    assert!(
        status.contains(&format!("retrying — router {b},{a} not linked (")),
        "{status}"
    );

    let (_first, _) = home.router_at(engine, &a, &allow, &[]);
    tunnel.wait_stdout(&format!("connected to router {a}"));
    wait_for_echo(taddr, b"through the first, the second refused");
}

#[test]
fn a_tunnel_that_every_router_refuses_stops_naming_each() {
    let engine = Engine::Epoll;
    let (home, source, allow) = with_router_b();
    let b_key = b_key(&home);
    let extra = ["--key", b_key.as_str()];
    let (_first, a) = home.router_with(engine, &allow, &extra);
    let (_second, b) = home.router_with(engine, &allow, &extra);
    // Using one router at a time, or all at once.
    for mode in [&[][..], &["--router-balance"][..]] {
        let mut tunnel = home.tunnel_via(engine, &format!("{a},{b}"), &source.to_string(), mode);
        let status = tunnel.wait_exit();
        let err = tunnel.stderr();
        assert_code(status, 77, &err);
        let (pinned, got) = (home.public_key("router"), home.public_key("router-b"));
        assert!(
            err.contains(&format!(
                "every router refused this tunnel:\n  router {a}: router key mismatch: expected \
                 {pinned}, got {got}"
            )) && err.contains(&format!(
                "\n  router {b}: router key mismatch: expected {pinned}, got {got}"
            )),
            "{mode:?}: {err}"
        );
    }
    // In the background: `start` tells every router's reason too.
    let router_key = home.key("router.pub");
    let (status, out, err) = home.run(&[
        "start",
        "--name",
        "refused",
        "--router",
        &format!("{a},{b}"),
        "--router-key",
        router_key.to_str().unwrap(),
        "--source",
        &source.to_string(),
        "--bind",
        "127.0.0.1:0",
    ]);
    assert_code(status, 77, &err);
    assert_eq!(out, "");
    let (pinned, got) = (home.public_key("router"), home.public_key("router-b"));
    let reason = |r| format!("router {r}: router key mismatch: expected {pinned}, got {got}");
    assert!(
        err.starts_with(&format!(
            "conduit: error: every router refused this tunnel:\n  {}",
            reason(a)
        )) && err.contains(&format!("\n  {}", reason(b))),
        "{err}"
    );
}

#[test]
fn router_keys_must_be_one_for_all_or_one_per_router() {
    let home = Home::with_keys();
    let key = home.public_key("router");
    let start = |router_key: &str| {
        home.run(&[
            "start",
            "--foreground",
            "--router",
            "127.0.0.1:1,127.0.0.1:2",
            "--router-key",
            router_key,
            "--source",
            "127.0.0.1:3",
            "--bind",
            "127.0.0.1:0",
        ])
    };
    let (status, _, err) = start(&format!("{key},{key},{key}"));
    assert_code(status, 64, &err);
    assert!(
        err.contains(
            "--router-key: 3 router keys for 2 routers: give the key that every router \
             presents, or each router's key, in the order the routers are listed (to pin one \
             router to several keys, separate them with `|`)"
        ),
        "{err}"
    );
    let (status, _, err) = start(&format!("{key},,{key}"));
    assert_code(status, 64, &err);
    assert!(
        err.contains("--router-key: key 2 of ")
            && err.contains("is empty; separate keys with single commas"),
        "{err}"
    );
}

/// Failing back and checking standby routers are failover's: given to a balancing
/// tunnel, which has neither, they are refused.
#[test]
fn failover_flags_are_refused_with_balancing() {
    let home = Home::with_keys();
    let key = home.public_key("router");
    for flag in ["--router-failback", "--standby-check"] {
        let (status, _, err) = home.run(&[
            "start",
            "--foreground",
            "--router",
            "127.0.0.1:1,127.0.0.1:2",
            "--router-key",
            &key,
            "--source",
            "127.0.0.1:3",
            "--bind",
            "127.0.0.1:0",
            "--router-balance",
            flag,
            "10",
        ]);
        assert_code(status, 64, &err);
        assert!(
            err.contains(&format!(
                "error: the argument '--router-balance' cannot be used with '{flag} <SECS>'"
            )),
            "{err}"
        );
    }
}

#[test]
fn a_router_that_refuses_while_another_serves_shows_in_status_and_fails_health() {
    let engine = Engine::Epoll;
    let (home, source, allow) = with_router_b();
    // The first presents router-b's key where the tunnel pins router.pub.
    let (_first, a) = home.router_with(engine, &allow, &["--key", &b_key(&home)]);
    let (_second, b) = home.router_with(engine, &allow, &[]);
    let tunnel = home.tunnel_via(engine, &format!("{a},{b}"), &source.to_string(), &[]);
    let taddr = addr_in(&tunnel.wait_stdout("listening on"));
    tunnel.wait_stdout(&format!("connected to router {b}"));
    wait_for_echo(taddr, b"through the second, the first refused");
    let why = format!(
        "router key mismatch: expected {}, got {}",
        home.public_key("router"),
        home.public_key("router-b")
    );
    let status = home.ok(&["status"]);
    assert!(
        status.contains(&format!("\n  router {a} refused this tunnel: {why}")),
        "{status}"
    );
    let (code, out, err) = home.run(&["health"]);
    assert_code(code, 1, &err);
    assert!(
        out.contains(&format!("router {a} refused this tunnel: {why}")),
        "{out}"
    );
    assert!(err.contains("(a router refused it)"), "{err}");
}

/// An earlier router that comes back refusing the tunnel (here: presenting another
/// key) is found out by the failback probe: logged as an error, named by `status`,
/// failing `health`, while the tunnel stays on the router it uses.
#[test]
fn an_earlier_router_back_but_refusing_is_named_while_the_tunnel_stays() {
    let engine = Engine::Epoll;
    let (home, source, allow) = with_router_b();
    let (mut first, a) = home.router_with(engine, &allow, &[]);
    let (_second, b) = home.router_with(engine, &allow, &[]);
    let tunnel = home.tunnel_via(
        engine,
        &format!("{a},{b}"),
        &source.to_string(),
        &["--router-failback", "1"],
    );
    let taddr = addr_in(&tunnel.wait_stdout("listening on"));
    tunnel.wait_stdout(&format!("connected to router {a}"));
    first.stop();
    tunnel.wait_stdout(&format!("connected to router {b}"));
    let (_back, _) = home.router_at(engine, &a.to_string(), &allow, &["--key", &b_key(&home)]);
    let why = format!(
        "router key mismatch: expected {}, got {}",
        home.public_key("router"),
        home.public_key("router-b")
    );
    tunnel.wait_stderr(&format!(
        "router {a} refused this tunnel, which stays on the router it uses: router {a}: {why}"
    ));
    wait_for_echo(taddr, b"still through the second");
    let status = home.ok(&["status"]);
    assert!(
        status.contains(&format!("\n  router {a} refused this tunnel: {why}")),
        "{status}"
    );
    let (code, out, err) = home.run(&["health"]);
    assert_code(code, 1, &err);
    assert!(
        out.contains(&format!("router {a} refused this tunnel: {why}")),
        "{out}"
    );
    // Said once, not at every probe.
    assert_eq!(
        tunnel.stderr_count(&format!("router {a} refused this tunnel, which stays")),
        1
    );
}

#[test]
fn a_tunnel_whose_routers_are_all_away_takes_the_first_that_comes_back_at_once() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let source = sources::echo();
    let a_port = dead_port();
    let b_port = std::iter::repeat_with(dead_port)
        .find(|p| *p != a_port)
        .unwrap();
    let (a, b) = (format!("127.0.0.1:{a_port}"), format!("127.0.0.1:{b_port}"));
    let tunnel = home.tunnel_via(engine, &format!("{a},{b}"), &source.to_string(), &[]);
    let taddr = addr_in(&tunnel.wait_stdout("listening on"));
    crate::procfs::wait_until("a back-off of 6 s or more", || {
        let longest = crate::faults::longest_wait(&tunnel);
        (longest >= 6.0, longest)
    });
    // The second router comes back: the tunnel, knocking on both, moves to it at
    // once.
    let (_second, _) = home.router_at(engine, &b, &[source.to_string()], &[]);
    tunnel.wait_stderr(&format!(
        "router {b} accepts connections again: attempting now rather than in "
    ));
    tunnel.wait_stdout(&format!("connected to router {b}"));
    wait_for_echo(taddr, b"through the second");
}

/// A router that stops answering (frozen: it resets nothing) is found out by the
/// heartbeats, and the router standing by takes over at once: the frozen one is
/// not tried again first (it used to be, holding users for its whole handshake
/// timeout; here one far past the test's deadline).
#[test]
fn a_router_that_stops_answering_hands_over_to_the_one_standing_by_at_once() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let source = sources::echo();
    let (first, a) = home.router(engine, &[source.to_string()]);
    let (_second, b) = home.router(engine, &[source.to_string()]);
    let tunnel = home.tunnel_via(
        engine,
        &format!("{a},{b}"),
        &source.to_string(),
        &["--heartbeat-interval", "1", "--handshake-timeout", "3600"],
    );
    let taddr = addr_in(&tunnel.wait_stdout("listening on"));
    tunnel.wait_stdout(&format!("connected to router {a}"));
    tunnel.wait_stderr(&format!(
        "router {b} answers: it stands by while router {a} serves this tunnel"
    ));
    assert_echo(taddr, b"through the first");

    let frozen = Frozen::new(&first);
    tunnel.wait_stderr(&format!(
        "lost the router link: no heartbeat answer for 3s; trying router {b} at once"
    ));
    tunnel.wait_stdout(&format!("connected to router {b}"));
    wait_for_echo(taddr, b"through the second");
    let status = home.ok(&["status"]);
    assert!(
        status.contains(&format!("router {b} connected since")),
        "{status}"
    );
    assert_eq!(
        home.ok(&["health"]),
        format!(
            "tunnel: router {b} link connected (router {a} not in use, failing: no heartbeat \
             answer for 3s)\n"
        )
    );
    drop(frozen);
}

/// A router that stops answering in the middle of a key rotation is left at once
/// for the one standing by, as one its heartbeats found out is (it used to be
/// tried again first, holding the tunnel for its whole handshake timeout: here one
/// far past the test's deadline); the rotation fails and the key stays as it was.
#[test]
fn a_router_silent_during_a_rotation_hands_over_to_the_one_standing_by() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let source = sources::echo();
    let (first, a) = home.router(engine, &[source.to_string()]);
    let (_second, b) = home.router(engine, &[source.to_string()]);
    let tunnel = home.tunnel_via(
        engine,
        &format!("{a},{b}"),
        &source.to_string(),
        &["--heartbeat-interval", "1", "--handshake-timeout", "3600"],
    );
    let taddr = addr_in(&tunnel.wait_stdout("listening on"));
    tunnel.wait_stdout(&format!("connected to router {a}"));
    tunnel.wait_stderr(&format!(
        "router {b} answers: it stands by while router {a} serves this tunnel"
    ));
    assert_echo(taddr, b"through the first");
    let old = std::fs::read_to_string(home.key("client.pub")).unwrap();
    let id = crate::manage::list_json(&home)[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let frozen = Frozen::new(&first);
    let (status, out, err) = home.run(&["keys", "rotate", "--all"]);
    assert_code(status, 1, &err);
    assert_eq!(out, "");
    assert_eq!(
        err,
        format!(
            "conduit: error: could not rotate the key of tunnel ({id}): router {a} stopped \
             answering (no answer to the rotation for 3s); the key is unchanged: rotate again \
             once `conduit status` shows the tunnel connected\n"
        )
    );
    tunnel.wait_stdout(&format!("connected to router {b}"));
    wait_for_echo(taddr, b"through the second");
    assert_eq!(
        std::fs::read_to_string(home.key("client.pub")).unwrap(),
        old
    );
    drop(frozen);
}

/// A user who comes while the router in use has stopped answering waits for a
/// channel (none is idle: `--pool-size 0`, and the attempt to make one hangs on the
/// frozen router); when the heartbeats find that router out, the user is carried
/// by the router standing by, every byte, rather than let go with the link.
#[test]
fn a_user_waiting_when_its_router_stops_answering_is_carried_by_the_one_standing_by() {
    let engine = Engine::Uring;
    let home = Home::with_keys();
    let source = sources::echo();
    let (first, a) = home.router(engine, &[source.to_string()]);
    let (_second, b) = home.router(engine, &[source.to_string()]);
    let tunnel = home.tunnel_via(
        engine,
        &format!("{a},{b}"),
        &source.to_string(),
        &[
            "--heartbeat-interval",
            "1",
            "--handshake-timeout",
            "3600",
            "--pool-size",
            "0",
        ],
    );
    let taddr = addr_in(&tunnel.wait_stdout("listening on"));
    tunnel.wait_stdout(&format!("connected to router {a}"));
    tunnel.wait_stderr(&format!(
        "router {b} answers: it stands by while router {a} serves this tunnel"
    ));

    let frozen = Frozen::new(&first);
    let mut user = connect(taddr);
    let msg = b"held over to the second router";
    user.write_all(msg).unwrap();
    tunnel.wait_stderr(&format!(
        "lost the router link: no heartbeat answer for 3s; trying router {b} at once"
    ));
    tunnel.wait_stdout(&format!("connected to router {b}"));
    let mut back = vec![0; msg.len()];
    user.read_exact(&mut back)
        .expect("the echo through the second router");
    assert_eq!(back, msg);
    exchange(&mut user, b"and on");
    assert!(
        !tunnel.stderr().contains("user connection closed"),
        "{}",
        tunnel.stderr()
    );
    drop(frozen);
}

/// While no router serves the tunnel (its only router froze, and the attempt to
/// reach it again hangs), `status` says it is retrying and `health` fails it: they
/// used to say "connected" until the attempt failed.
#[test]
fn a_tunnel_whose_router_stopped_answering_is_not_connected_in_status_or_health() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let source = sources::echo();
    let (router, a) = home.router(engine, &[source.to_string()]);
    let tunnel = home.tunnel_via(
        engine,
        &a.to_string(),
        &source.to_string(),
        &[
            "--name",
            "fo",
            "--heartbeat-interval",
            "1",
            "--handshake-timeout",
            "3600",
        ],
    );
    let taddr = addr_in(&tunnel.wait_stdout("listening on"));
    tunnel.wait_stdout(&format!("connected to router {a}"));
    assert_eq!(
        home.ok(&["health", "--tunnel", "fo"]),
        format!("fo: router {a} link connected\n")
    );

    let frozen = Frozen::new(&router);
    tunnel.wait_stderr("lost the router link: no heartbeat answer for 3s; reconnecting");
    let why = format!("lost the link to router {a}: no heartbeat answer for 3s");
    let status = home.ok(&["status"]);
    // The next attempt is due within a second, or (asked later) hangs on the router.
    let retrying = format!(": retrying — router {a} unreachable ({why}); attempt 1 failed, next ");
    assert!(
        status.contains(&format!("{retrying}within a second; "))
            || status.contains(&format!("{retrying}under way; ")),
        "{status}"
    );
    let (code, out, err) = home.run(&["health", "--tunnel", "fo", "--format", "json"]);
    assert_code(code, 1, &err);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["status"], "degraded", "{out}");
    assert_eq!(v["tunnels"][0]["link"], "retrying", "{out}");
    assert_eq!(v["tunnels"][0]["detail"], why.as_str(), "{out}");
    assert_eq!(err, "conduit: error: unhealthy: fo (retrying)\n");

    // Thawed, the router completes the attempt under way, and all is well again.
    drop(frozen);
    tunnel.wait_stdout_count(&format!("connected to router {a}"), 2);
    wait_for_echo(taddr, b"thawed");
    assert_eq!(
        home.ok(&["health", "--tunnel", "fo"]),
        format!("fo: router {a} link connected\n")
    );
}

/// A router that stops answering while the other is down: the tunnel tries the
/// other at once, then the silent one again, and says all along that no router
/// serves it (each router that fails named in turn), not "connected".
#[test]
fn a_tunnel_whose_routers_are_silent_or_down_is_not_connected_in_status_or_health() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let source = sources::echo();
    let (router, a) = home.router(engine, &[source.to_string()]);
    let spare = format!("127.0.0.1:{}", dead_port());
    let tunnel = home.tunnel_via(
        engine,
        &format!("{a},{spare}"),
        &source.to_string(),
        &["--heartbeat-interval", "1", "--handshake-timeout", "3600"],
    );
    tunnel.wait_stdout(&format!("connected to router {a}"));
    let refused = format!("cannot reach router {spare}: Connection refused (os error 111)");
    wait_for("the spare's failed check in status", || {
        let status = home.ok(&["status"]);
        status.contains(&refused).then_some(status)
    });

    let frozen = Frozen::new(&router);
    tunnel.wait_stderr(&format!(
        "lost the router link: no heartbeat answer for 3s; trying router {spare} at once"
    ));
    tunnel.wait_stderr(&format!("{refused}; trying router {a}"));
    let status = home.ok(&["status"]);
    assert!(
        status.contains(&format!(
            ": retrying — router {a},{spare} unreachable ({refused}); attempt 1 failed, next \
             within a second; "
        )),
        "{status}"
    );
    let (code, out, err) = home.run(&["health"]);
    assert_code(code, 1, &err);
    assert_eq!(
        out,
        format!("tunnel: routers {a}, {spare} link retrying ({refused})\n")
    );
    drop(frozen);
}

/// A router whose allow-list leaves the source out refuses the tunnel at its link:
/// `status` and `health` name it once, not with the same words twice.
#[test]
fn a_refusal_is_named_once_in_status_and_health() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let source = sources::echo();
    let elsewhere = format!("127.0.0.1:{}", crate::harness::dead_port());
    let (_first, a) = home.router_with(engine, std::slice::from_ref(&elsewhere), &[]);
    let (_second, b) = home.router_with(engine, &[source.to_string()], &[]);
    let tunnel = home.tunnel_via(engine, &format!("{a},{b}"), &source.to_string(), &[]);
    let taddr = addr_in(&tunnel.wait_stdout("listening on"));
    wait_for_echo(taddr, b"through the second, the first refused");
    let named = format!("router {a} refused this tunnel: source {source}");
    let status = home.ok(&["status"]);
    assert!(status.contains(&named), "{status}");
    let (code, out, err) = home.run(&["health"]);
    assert_code(code, 1, &err);
    assert!(out.contains(&named), "{out}");
    for text in [&status, &out] {
        assert!(!text.contains("the router refused this tunnel"), "{text}");
    }
}
