//! A process's life from start to stop: how long `start` waits for a tunnel's first
//! attempts, the signals that stop a tunnel or a router (SIGHUP for a tunnel in a
//! terminal; a second stop signal cutting a drain short), and the line each logs as
//! it ends.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::harness::{DEADLINE, Engine, Home, addr_in, assert_code};
use crate::manage::{Cleanup, list_json, run_args, start_args, wait_list};
use crate::sources;
use crate::users::{End, assert_echo, expect_end};

/// A "router" that accepts connections and never answers: a tunnel's handshake
/// with it runs into its `--handshake-timeout`.
fn silent_router() -> SocketAddr {
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in silent.incoming().map_while(Result::ok) {
            held.push(c);
        }
    });
    addr
}

/// A user connection that has echoed `msg`, held open.
fn hold(addr: SocketAddr, msg: &[u8]) -> TcpStream {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    c.write_all(msg).unwrap();
    let mut b = vec![0u8; msg.len()];
    c.read_exact(&mut b).unwrap();
    assert_eq!(b, msg);
    c
}

/// The last line of `text`.
fn last_line(text: &str) -> &str {
    text.lines().last().unwrap_or_default()
}

/// Whether `dir` under the home holds a file whose name ends with `suffix`.
fn left_in(home: &Home, dir: &str, suffix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(home.path().join(dir)) else {
        return Vec::new();
    };
    entries
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(suffix))
        .collect()
}

/// Three routers that never answer before one that does: the tunnel's first round
/// takes 3 × `--handshake-timeout` (33 s) before it reaches the fourth. `start`
/// waits for it, as the tunnel says its first attempts may take, and reports the
/// tunnel connected; it used to give up after a fixed 30 s and stop a tunnel that
/// was about to connect (exit 69).
#[test]
fn start_waits_out_the_first_attempts_of_routers_slow_to_answer() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo();
    let (_router, raddr) = home.router(Engine::Epoll, &[source.to_string()]);
    let silent: Vec<String> = (0..3).map(|_| silent_router().to_string()).collect();
    let routers = format!("{},{raddr}", silent.join(","));
    let mut args = start_args(&home, &routers, &source.to_string(), "slow");
    args.extend(["--handshake-timeout".into(), "11".into()]);
    let (status, out, err) = run_args(&home, &args);
    assert_code(status, 0, &err);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with("started tunnel \"slow\" (id slow-"),
        "{out}"
    );
    assert!(lines[1].starts_with("log: "), "{out}");
    let l = list_json(&home);
    assert_eq!(l[0]["status"], "running", "{l:#?}");
    let st = home.ok(&["status"]);
    assert!(st.contains(&format!("router {raddr}")), "{st}");
}

/// SIGHUP (the terminal closed) stops a tunnel in the terminal as SIGTERM does: it
/// drains, says goodbye to its router (which does not report it lost), removes its
/// files, exits 0, and its log's last line says so. It used to end at once (exit
/// 129), its users reset, its files left behind.
#[test]
fn sighup_stops_a_foreground_tunnel_gracefully() {
    let home = Home::with_keys();
    let source = sources::echo();
    let (router, raddr) = home.router(Engine::Epoll, &[source.to_string()]);
    let (mut tunnel, addr) = home.tunnel_with(
        Engine::Epoll,
        raddr,
        &source.to_string(),
        &["--name", "hup"],
    );
    let held = hold(addr, b"hello");
    wait_list(&home, "the held connection", |l| {
        l.len() == 1 && l[0]["active_connections"] == 1
    });
    tunnel.signal("HUP");
    tunnel.wait_stderr("draining open connections");
    // The user finishes: the drain is over.
    drop(held);
    let status = tunnel.wait_exit();
    let err = tunnel.stderr();
    assert_code(status, 0, &err);
    assert!(err.contains("asked to stop (SIGHUP)"), "{err}");
    assert!(
        last_line(&err).ends_with(
            "tunnel \"hup\" stopped (SIGHUP): the open connection finished within the drain"
        ),
        "{err}"
    );
    router.wait_stderr("client disconnected: client said goodbye: the tunnel is stopping");
    assert_eq!(left_in(&home, "run", ".sock"), Vec::<String>::new());
    assert_eq!(left_in(&home, "run", ".lock"), Vec::<String>::new());
    assert_eq!(left_in(&home, "tunnels", ".json"), Vec::<String>::new());
}

/// A second stop signal while a tunnel drains closes its open connections now, as
/// most servers do, and both are logged; the tunnel used to wait out its whole drain.
#[test]
fn a_second_stop_signal_cuts_a_tunnels_drain_short() {
    let home = Home::with_keys();
    let source = sources::echo();
    let (_router, raddr) = home.router(Engine::Epoll, &[source.to_string()]);
    let extra = ["--name", "cut", "--drain-timeout", "600"];
    let (mut tunnel, addr) = home.tunnel_with(Engine::Epoll, raddr, &source.to_string(), &extra);
    let mut held = hold(addr, b"hello");
    wait_list(&home, "the held connection", |l| {
        l.len() == 1 && l[0]["active_connections"] == 1
    });
    tunnel.signal("TERM");
    tunnel.wait_stderr("draining open connections");
    tunnel.signal("INT");
    let status = tunnel.wait_exit();
    let err = tunnel.stderr();
    assert_code(status, 0, &err);
    assert_eq!(expect_end(&mut held), End::Reset);
    assert!(
        err.contains("SIGINT while stopping: closing 1 open connection now"),
        "{err}"
    );
    assert!(
        last_line(&err).ends_with(
            "tunnel \"cut\" stopped (SIGTERM): the drain was cut short (a second stop signal, \
             `kill --force`, or a drain timeout of 0): closed 1 of 1 open connection"
        ),
        "{err}"
    );
}

/// The same for a router: its streams are closed at the second signal, not at the
/// end of its drain; and its log's last line says which signal stopped it and how
/// the drain went.
#[test]
fn a_second_stop_signal_cuts_a_routers_drain_short() {
    let home = Home::with_keys();
    let source = sources::echo();
    let (mut router, raddr) = home.router_with(
        Engine::Epoll,
        &[source.to_string()],
        &["--drain-timeout", "600"],
    );
    let (_tunnel, addr) = home.tunnel(Engine::Epoll, raddr, &source.to_string());
    let mut held = hold(addr, b"hello");
    router.signal("TERM");
    router.wait_stderr("draining open connections");
    router.signal("INT");
    let status = router.wait_exit();
    let err = router.stderr();
    assert_code(status, 0, &err);
    assert_eq!(expect_end(&mut held), End::Reset);
    assert!(
        err.contains("router stopping (SIGTERM): no new connections"),
        "{err}"
    );
    assert!(
        err.contains("SIGINT while stopping: closing 1 open connection now"),
        "{err}"
    );
    assert!(
        last_line(&err).ends_with(
            "router stopped (SIGTERM): the drain was cut short (a second stop signal, `kill \
             --force`, or a drain timeout of 0): closed 1 of 1 open connection"
        ),
        "{err}"
    );
}

/// A tunnel whose stderr lost its reader (the supervisor it logged through was
/// killed) serves on, and stops gracefully on SIGTERM. A log line it could not
/// write used to panic the task that wrote it: its router link died at its first
/// line, and a supervised tunnel never acted on the SIGTERM its killed supervisor
/// left it.
#[test]
fn a_tunnel_whose_stderr_reader_is_gone_serves_and_stops_gracefully() {
    let home = Home::with_keys();
    let source = sources::echo();
    let (_router, raddr) = home.router(Engine::Epoll, &[source.to_string()]);
    let (raddr, source) = (raddr.to_string(), source.to_string());
    let mut args = start_args(&home, &raddr, &source, "deaf");
    args.insert(1, "--foreground".into());
    let mut child = home
        .cmd()
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Nobody reads its stderr from the start: every log line meets a broken pipe.
    drop(child.stderr.take());
    let (tx, lines) = mpsc::channel();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let next = |what: &str| {
        let line = lines.recv_timeout(DEADLINE);
        line.unwrap_or_else(|e| panic!("no {what} line on stdout: {e}"))
    };
    let listening = next("listening");
    assert!(listening.contains(" listening on "), "{listening}");
    let addr = addr_in(listening.split(" listening on ").nth(1).unwrap());
    let connected = next("connected");
    assert!(connected.contains("connected to router"), "{connected}");
    assert_echo(addr, b"still serving");
    wait_list(&home, "the tunnel running", |l| {
        l.len() == 1 && l[0]["status"] == "running"
    });
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the tunnel did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(list_json(&home).is_empty());
}
