//! Real clients through the tunnel, unchanged: curl against an HTTP server,
//! redis-cli against Redis, and dig against dnsmasq through a UDP tunnel. The tools come from the OS; `.ci/run` installs them and
//! sets CONDUIT_E2E_REQUIRE_TOOLS=1 so a missing tool fails there instead of skipping.

use std::process::{Command, Stdio};

use crate::harness::{Engine, Home, Proc, dead_port, dead_udp_port};
use crate::http::wait_for;

fn have(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            std::env::var_os("CONDUIT_E2E_REQUIRE_TOOLS").is_none(),
            "{tool} is required here but not installed"
        );
        eprintln!("{tool} not installed; skipping");
    }
    found
}

#[test]
fn curl_fetches_a_page_through_the_tunnel() {
    if !have("curl") || !have("python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let body = crate::sources::pattern(7, 200_000);
    std::fs::write(dir.path().join("blob.bin"), &body).unwrap();
    let port = dead_port();
    let _server = Proc::spawn(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .current_dir(dir.path()),
    );
    // Up once it serves the file itself.
    wait_for("the HTTP server to serve the file", || {
        let out = Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
            ])
            .arg(format!("http://127.0.0.1:{port}/blob.bin"))
            .output()
            .ok()?;
        (out.stdout == b"200").then_some(())
    });

    let home = Home::with_keys();
    let source = format!("127.0.0.1:{port}");
    let (_router, raddr) = home.router(Engine::Epoll, std::slice::from_ref(&source));
    let (_tunnel, taddr) = home.tunnel(Engine::Epoll, raddr, &source);
    for _ in 0..3 {
        let out = Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "20"])
            .arg(format!("http://{taddr}/blob.bin"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout == body, "curl got {} bytes", out.stdout.len());
    }
}

#[test]
fn redis_cli_talks_to_redis_through_the_tunnel() {
    if !have("redis-server") || !have("redis-cli") {
        return;
    }
    let port = dead_port();
    let _server = Proc::spawn(Command::new("redis-server").args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]));
    // Up once it answers a PING itself.
    wait_for("redis to answer PING", || {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "PING"])
            .output()
            .ok()?;
        (out.stdout == b"PONG\n").then_some(())
    });

    let home = Home::with_keys();
    let source = format!("127.0.0.1:{port}");
    let (_router, raddr) = home.router(Engine::Epoll, std::slice::from_ref(&source));
    let (_tunnel, taddr) = home.tunnel(Engine::Epoll, raddr, &source);
    let cli = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &taddr.port().to_string()])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(cli(&["PING"]), "PONG\n");
    assert_eq!(cli(&["SET", "conduit", "through the tunnel"]), "OK\n");
    assert_eq!(cli(&["GET", "conduit"]), "through the tunnel\n");
}

/// dnsmasq on a free port of 127.0.0.1, once it serves: `a.conduit.test` is
/// 10.9.8.7, and `big.conduit.test` a TXT record of five 200-byte strings (an
/// answer of about a kilobyte, more than the 512 bytes of classic DNS, carried in
/// one datagram with EDNS).
fn dnsmasq() -> (Proc, u16) {
    let port = dead_udp_port();
    let big = vec!["x".repeat(200); 5].join(",");
    let server = Proc::spawn(Command::new("dnsmasq").args([
        "--keep-in-foreground",
        &format!("--port={port}"),
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        "--no-resolv",
        "--no-hosts",
        "--conf-file=/dev/null",
        "--pid-file=",
        "--address=/a.conduit.test/10.9.8.7",
        &format!("--txt-record=big.conduit.test,{big}"),
        "--log-facility=-",
    ]));
    // Up once it answers a query itself.
    wait_for("dnsmasq to answer", || {
        dig_from(dead_udp_port(), port, 1, &["+short", "a.conduit.test", "A"])
            .filter(|a| a == "10.9.8.7\n")
    });
    (server, port)
}

/// `dig` at the tunnel on `port` from UDP port `from` of 127.0.0.1 (a flow of its
/// own, the same on each call), one try of `wait` seconds: its output, or `None`
/// when it got no answer.
fn dig_from(from: u16, port: u16, wait: u32, args: &[&str]) -> Option<String> {
    let out = Command::new("dig")
        .args(["-b", &format!("127.0.0.1#{from}")])
        .args(["@127.0.0.1", "-p", &port.to_string()])
        .args(["+notcp", "+tries=1", &format!("+time={wait}")])
        .args(args)
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A DNS server on 127.0.0.1 that answers every query with no records (its own
/// question, flagged as a response) until `falls_silent` is set, then drops
/// everything, as a host that is gone without an ICMP error.
fn quiet_resolver() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    let silent = std::sync::Arc::new(AtomicBool::new(false));
    let s = silent.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            if n >= 12 && !s.load(Ordering::SeqCst) {
                buf[2] |= 0x80;
                let _ = sock.send_to(&buf[..n], from);
            }
        }
    });
    (addr, silent)
}

/// A resolver that stops answering is found out by a DNS probe
/// (`health.udp_probes`), where an empty datagram's silence would pass: with two
/// sources, one that falls silent (as a host that drops everything), a flow on it
/// (a user that keeps its port and retries) moves to the one that answers, and
/// every new flow starts there.
#[test]
fn a_dns_probe_finds_a_silent_resolver_down_and_its_flows_move_to_the_live_one() {
    use std::sync::atomic::Ordering;
    if !have("dnsmasq") || !have("dig") {
        return;
    }
    let (_server, port) = dnsmasq();
    let live = format!("127.0.0.1:{port}");
    let (quiet, falls_silent) = quiet_resolver();
    let quiet = quiet.to_string();
    let home = Home::with_keys();
    let probes = format!("health.udp_probes={quiet}=dns,{live}=dns");
    let (router, raddr) = home.router_with(
        Engine::Epoll,
        &[quiet.clone(), live.clone()],
        &[
            "--api-bind",
            "127.0.0.1:0",
            "--api-no-auth",
            "--set",
            "health.interval_secs=1",
            "--set",
            "health.timeout_secs=1",
            "--set",
            &probes,
        ],
    );
    let api = format!(
        "http://{}",
        crate::harness::addr_in(&router.wait_stdout("api listening on"))
    );
    let sources = || crate::http::curl("GET", &format!("{api}/api/v1/health"), None, &[]).json();
    let state = |h: &serde_json::Value, source: &str| {
        h["data"]["sources"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["target"] == source))
            .cloned()
    };
    // Sources with a probe of their own are watched before any flow uses them.
    crate::http::wait_for("both sources probed up", || {
        let h = sources();
        [&quiet, &live]
            .iter()
            .all(|s| state(&h, s).is_some_and(|v| v["state"] == "up" && v["probe"] == "dns"))
            .then_some(())
    });
    let (_tunnel, taddr) = home.tunnel_with(
        Engine::Epoll,
        raddr,
        &format!("{quiet},{live}"),
        &["--protocol", "udp"],
    );
    // Flows start on the sources in turn: the quiet one answers with no records.
    let ask = |from: u16, wait: u32| {
        dig_from(from, taddr.port(), wait, &["+short", "a.conduit.test", "A"])
    };
    // A port of its own for each new flow, from below the range other sockets of
    // the suite take theirs from.
    let free = dead_udp_port;
    let (mut on_live, mut on_quiet) = (false, None);
    for _ in 0..10 {
        let from = free();
        match ask(from, 5).as_deref() {
            Some("10.9.8.7\n") => on_live = true,
            Some("") => on_quiet = on_quiet.or(Some(from)),
            other => panic!("dig from port {from}: {other:?}"),
        }
        if on_live && on_quiet.is_some() {
            break;
        }
    }
    let on_quiet = on_quiet.expect("a flow on the quiet source");
    assert!(on_live, "no flow on the live source");

    falls_silent.store(true, Ordering::SeqCst);
    let down = crate::http::wait_for("the probes to find the quiet source down", || {
        state(&sources(), &quiet).filter(|v| v["state"] == "down")
    });
    assert_eq!(
        down["last_error"],
        format!("{quiet} did not answer the probe within 1s"),
        "{down}"
    );
    // The flow on the silent source moves at its user's next datagram.
    assert_eq!(ask(on_quiet, 5).as_deref(), Some("10.9.8.7\n"));
    router.wait_stderr(&format!(
        "source {quiet} is down (the router's health checks); the flow moves to source {live}"
    ));
    // Each dig is a new flow from a new port: every one is answered at the first try.
    for _ in 0..4 {
        assert_eq!(ask(free(), 5).as_deref(), Some("10.9.8.7\n"));
    }
}

#[test]
fn dig_resolves_through_a_udp_tunnel_to_dnsmasq() {
    if !have("dnsmasq") || !have("dig") {
        return;
    }
    let (_server, port) = dnsmasq();
    let home = Home::with_keys();
    let source = format!("127.0.0.1:{port}");
    let (_router, raddr) = home.router(Engine::Epoll, std::slice::from_ref(&source));
    let (_tunnel, taddr) = home.tunnel_with(Engine::Epoll, raddr, &source, &["--protocol", "udp"]);
    let dig = |args: &[&str]| {
        let out = Command::new("dig")
            .args(["@127.0.0.1", "-p", &taddr.port().to_string()])
            .args(["+notcp", "+tries=1", "+time=10"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "dig {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(dig(&["+short", "a.conduit.test", "A"]), "10.9.8.7\n");
    let txt = dig(&["+short", "big.conduit.test", "TXT"]);
    let quoted = format!("\"{}\"", "x".repeat(200));
    assert_eq!(txt, format!("{}\n", vec![quoted; 5].join(" ")));
    // A name dnsmasq does not know: an answer (NXDOMAIN or REFUSED), not a timeout.
    let miss = dig(&["nothing.conduit.test", "A"]);
    assert!(miss.contains("status: "), "{miss}");
}
