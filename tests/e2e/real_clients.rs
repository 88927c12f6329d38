//! Real clients through the tunnel, unchanged: curl against an HTTP server,
//! redis-cli against Redis, and dig against dnsmasq through a UDP tunnel. The tools come from the OS; `.ci/run` installs them and
//! sets CONDUIT_E2E_REQUIRE_TOOLS=1 so a missing tool fails there instead of skipping.

use std::net::TcpListener;
use std::process::{Command, Stdio};

use crate::harness::{DEADLINE, Engine, Home, Proc};

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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts connections on `port`.
fn wait_listening(port: u16) {
    let deadline = std::time::Instant::now() + DEADLINE;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing listens on {port}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn curl_fetches_a_page_through_the_tunnel() {
    if !have("curl") || !have("python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let body = crate::sources::pattern(7, 200_000);
    std::fs::write(dir.path().join("blob.bin"), &body).unwrap();
    let port = free_port();
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
    wait_listening(port);

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
    let port = free_port();
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
    wait_listening(port);

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

#[test]
fn dig_resolves_through_a_udp_tunnel_to_dnsmasq() {
    if !have("dnsmasq") || !have("dig") {
        return;
    }
    let port = free_port();
    // A TXT record of five 200-byte strings: an answer of about a kilobyte, more than
    // the 512 bytes of classic DNS, carried in one datagram (EDNS).
    let big = vec!["x".repeat(200); 5].join(",");
    let _server = Proc::spawn(Command::new("dnsmasq").args([
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
    // dnsmasq serves TCP on the same port: listening there means it is up.
    wait_listening(port);

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
