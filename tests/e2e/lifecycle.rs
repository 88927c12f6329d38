//! A process's life from start to stop: how long `start` waits for a tunnel's first
//! attempts.

use std::net::{SocketAddr, TcpListener};

use crate::harness::{Engine, Home, assert_code};
use crate::manage::{Cleanup, list_json, run_args, start_args};
use crate::sources;

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
