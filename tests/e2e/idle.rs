//! The stream idle timeout: a user's connection that moves no byte either way for
//! `--stream-idle-timeout` seconds (a router's `stream_idle_timeout_secs`) is closed
//! at both ends and counted as `idle_timeout`, whether it went quiet after some
//! traffic or never sent a byte; a tunnel with the timeout off keeps it open, and a
//! slow reader still taking what was sent is not idle. The per-stream lines are at
//! debug; each look sums up its closes at info.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use crate::both_engines;
use crate::harness::{DEADLINE, Engine, Home};
use crate::plain::PLAIN;
use crate::sources;
use crate::users::assert_echo;

/// What a tunnel and a router log of a stream they close as idle after `secs`.
fn idle_reason(secs: u64) -> String {
    format!("idle: no byte moved either way for {secs}s (the stream idle timeout)")
}

/// A connection to `addr` that has echoed `msg` back, or (empty `msg`) sent nothing.
fn connected(addr: SocketAddr, msg: &[u8]) -> TcpStream {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    if !msg.is_empty() {
        c.write_all(msg).unwrap();
        let mut back = vec![0u8; msg.len()];
        c.read_exact(&mut back).unwrap();
        assert_eq!(back, msg);
    }
    c
}

/// Waits, up to [`DEADLINE`], for the far end to close `c` (a reset or an end of
/// stream) without one more byte arriving.
#[track_caller]
fn wait_closed(mut c: TcpStream) {
    let started = Instant::now();
    let mut buf = [0u8; 64];
    match c.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Ok(n) => panic!("{n} unexpected bytes: {:?}", &buf[..n]),
        Err(e) => panic!(
            "not closed after {:?}: {e}",
            started.elapsed().as_secs_f64()
        ),
    }
}

/// The `kind="idle_timeout"` count in `metrics` (Prometheus text).
fn idle_count(metrics: &str) -> String {
    crate::harness::error_count(metrics, "idle_timeout")
}

both_engines!(
    a_tunnel_closes_streams_that_stay_quiet_past_its_idle_timeout,
    |engine: Engine| {
        let home = Home::with_keys();
        let source = sources::echo();
        let (router, raddr) = home.router(engine, &[source.to_string()]);
        let (tunnel, taddr) = home.tunnel_with(
            engine,
            raddr,
            &source.to_string(),
            &["--stream-idle-timeout", "1", "--log-level", "debug"],
        );
        // One went quiet after an exchange, one never sent a byte.
        let talked = connected(taddr, b"then quiet");
        let silent = connected(taddr, b"");
        wait_closed(talked);
        wait_closed(silent);
        tunnel.wait_stderr_count(
            &format!("DEBUG user connection closed: {}", idle_reason(1)),
            2,
        );
        let metrics = home.ok(&["stats", "--format", "prometheus"]);
        assert_eq!(idle_count(&metrics), "2", "{metrics}");
        // Summed up at info, look by look (the two may be on different cores).
        let summed: usize = (tunnel.stderr().lines())
            .filter(|l| {
                l.contains(" INFO closing ") && l.contains(" idle for 1s (the stream idle timeout)")
            })
            .map(|l| {
                let n = l.split(" INFO closing ").nth(1).unwrap();
                n.split(' ').next().unwrap().parse::<usize>().unwrap()
            })
            .sum();
        assert_eq!(summed, 2, "{}", tunnel.stderr());
        // The router let the client's reset close its side: nothing of its own.
        assert_eq!(router.stderr_count("stream closed: idle"), 0);
        // The tunnel serves on.
        assert_echo(taddr, b"still serving");
    }
);

/// A router closes its own quiet streams (`stream_idle_timeout_secs`), on either
/// transport; the tunnel's timeout is off. Over TLS it tells the tunnel why, which
/// counts the stream as idle too (the plain transport's channel is just reset).
#[test]
fn a_router_closes_streams_that_stay_quiet_past_its_idle_timeout() {
    let engine = Engine::Epoll;
    for transport in [&[][..], PLAIN] {
        let home = Home::with_keys();
        let source = sources::echo();
        let debug = ["--log-level", "debug"];
        let mut extra = vec!["--set", "performance.stream_idle_timeout_secs=1"];
        extra.extend_from_slice(transport);
        extra.extend_from_slice(&debug);
        let (router, raddr) = home.router_with(engine, &[source.to_string()], &extra);
        let mut extra = vec!["--stream-idle-timeout", "0"];
        extra.extend_from_slice(transport);
        extra.extend_from_slice(&debug);
        let (tunnel, taddr) = home.tunnel_with(engine, raddr, &source.to_string(), &extra);
        wait_closed(connected(taddr, b"then quiet"));
        router.wait_stderr(&format!("DEBUG stream closed: {}", idle_reason(1)));
        if transport.is_empty() {
            tunnel.wait_stderr(&format!(
                "DEBUG user connection closed: aborted by the other end: closed by the router: {}",
                idle_reason(1)
            ));
            let metrics = home.ok(&["stats", "--format", "prometheus"]);
            assert_eq!(idle_count(&metrics), "1", "{metrics}");
        }
        // The tunnel's own timeout is off: what it logs is the router's doing.
        assert_eq!(tunnel.stderr_count("user connection closed: idle"), 0);
        assert_echo(taddr, b"still serving");
    }
}

/// With the timeout off, a quiet stream stays open as long as it is quiet: here
/// while a stream of the same tunnel and router with a timeout is closed twice over.
#[test]
fn a_tunnel_with_the_idle_timeout_off_keeps_quiet_streams_open() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let source = sources::echo();
    let (_router, raddr) = home.router(engine, &[source.to_string()]);
    let src = source.to_string();
    let (_kept, kept_addr) = home.tunnel_with(engine, raddr, &src, &["--stream-idle-timeout", "0"]);
    let (timed, timed_addr) = home.tunnel_with(
        engine,
        raddr,
        &src,
        &[
            "--stream-idle-timeout",
            "1",
            "--name",
            "timed",
            "--log-level",
            "debug",
        ],
    );
    let mut kept = connected(kept_addr, b"before");
    for round in 1..=2 {
        wait_closed(connected(timed_addr, b"quiet"));
        timed.wait_stderr_count("user connection closed: idle", round);
    }
    kept.write_all(b"after").unwrap();
    let mut back = [0u8; 5];
    kept.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"after");
}

/// A reader that takes a large answer slowly is not idle, though the relay handed the
/// kernel what it had long before the reader is done: what leaves the kernel's send
/// queues counts. On either transport (the plain one splices).
#[test]
fn a_slow_reader_still_taking_its_answer_is_not_idle() {
    let engine = Engine::Epoll;
    const LEN: usize = 3 << 20;
    for transport in [&[][..], PLAIN] {
        let home = Home::with_keys();
        let source = sources::answer_then_hold(LEN);
        let (_router, raddr) = home.router_with(engine, &[source.to_string()], transport);
        let mut extra = vec!["--stream-idle-timeout", "2"];
        extra.extend_from_slice(transport);
        let (tunnel, taddr) = home.tunnel_with(engine, raddr, &source.to_string(), &extra);
        let mut c = connected(taddr, b"");
        c.write_all(b"go").unwrap();
        // About 800 kB/s: some four seconds for the answer, twice the timeout.
        let mut got = Vec::with_capacity(LEN);
        let mut buf = [0u8; 8192];
        while got.len() < LEN {
            match c.read(&mut buf) {
                Ok(0) => panic!("closed after {} of {LEN} bytes", got.len()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => panic!(
                    "{e} after {} of {LEN} bytes: {}",
                    got.len(),
                    tunnel.stderr()
                ),
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(got == sources::pattern(3, LEN), "the answer differs");
        // Then quiet for good: closed as idle.
        wait_closed(c);
        let metrics = home.ok(&["stats", "--format", "prometheus"]);
        assert_eq!(idle_count(&metrics), "1", "{metrics}");
    }
}

/// `status` and `list` say how long a quiet stream stays: the timeout in force, or
/// nothing (0 in JSON) when it is off.
#[test]
fn status_and_list_show_the_stream_idle_timeout() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let source = sources::echo();
    let (_router, raddr) = home.router(engine, &[source.to_string()]);
    let (_timed, timed) = home.tunnel_with(
        engine,
        raddr,
        &source.to_string(),
        &["--name", "timed", "--stream-idle-timeout", "300"],
    );
    let (_open, open) = home.tunnel_with(engine, raddr, &source.to_string(), &["--name", "open"]);
    let status = home.ok(&["status"]);
    assert!(
        status.contains(&format!("{timed} → {source} (streams idle 300s closed)\n")),
        "{status}"
    );
    assert!(status.contains(&format!("{open} → {source}\n")), "{status}");
    let list: serde_json::Value =
        serde_json::from_str(&home.ok(&["list", "--format", "json"])).unwrap();
    let secs = |name: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {list:#}"))["stream_idle_timeout_secs"]
            .clone()
    };
    assert_eq!(secs("timed"), 300, "{list:#}");
    assert_eq!(secs("open"), 0, "{list:#}");
}
