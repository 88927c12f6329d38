//! Stopping tunnels: a drain cut short, hung tunnels, several at once, and closing a
//! connection of one tunnel among several.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{DEADLINE, Engine, Home, addr_in, assert_code};
use crate::manage::{list_json, pid_alive, wait_list};
use crate::sources;
use crate::users::{End, expect_end};

/// Stops every tunnel of a home when the test ends, whatever happened; a tunnel the
/// test froze (SIGSTOP) is let go on first.
struct Cleanup<'a> {
    home: &'a Home,
    frozen: Vec<u64>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for pid in &self.frozen {
            signal(*pid, "CONT");
        }
        let _ = self.home.run(&["kill", "--all", "--force"]);
    }
}

pub(crate) fn signal(pid: u64, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// Starts a background tunnel `name` to an echo source through `router`; its id and
/// the address users connect to.
fn start(
    home: &Home,
    router: SocketAddr,
    source: SocketAddr,
    name: &str,
    extra: &[&str],
) -> SocketAddr {
    let key = home.key("router.pub");
    let (router, source) = (router.to_string(), source.to_string());
    let mut args = vec![
        "start",
        "--router",
        &router,
        "--router-key",
        key.to_str().unwrap(),
        "--source",
        &source,
        "--bind",
        "127.0.0.1:0",
        "--name",
        name,
        "--io-engine",
        "epoll",
    ];
    args.extend_from_slice(extra);
    let (status, out, err) = home.run(&args);
    assert_code(status, 0, &err);
    addr_in(
        out.lines()
            .next()
            .unwrap()
            .split(" listening on ")
            .nth(1)
            .unwrap(),
    )
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

fn echoes(c: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1];
    c.write_all(b"!").is_ok() && c.read_exact(&mut buf).is_ok() && &buf == b"!"
}

fn registry_files(home: &Home) -> usize {
    std::fs::read_dir(home.path().join("tunnels"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A graceful kill can be escalated: the draining tunnel still answers `list` and
/// `status` ("stopping") and a `kill --force` stops it at once; meanwhile the first
/// `kill` sees it gone and succeeds too.
#[test]
fn a_draining_tunnel_answers_and_kill_force_cuts_the_drain_short() {
    let home = Home::with_keys();
    let _cleanup = Cleanup {
        home: &home,
        frozen: Vec::new(),
    };
    let source = sources::echo();
    let (_router, raddr) = home.router(Engine::Epoll, &[source.to_string()]);
    let addr = start(&home, raddr, source, "web", &[]);
    let mut held = hold(addr, b"hello");
    let id = wait_list(&home, "the held connection", |l| {
        l.len() == 1 && l[0]["active_connections"] == 1
    })[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let mut graceful = home.spawn(&["kill", "--tunnel", "web", "--drain-timeout", "600"]);
    let l = wait_list(&home, "the tunnel stopping", |l| {
        l.len() == 1 && l[0]["status"] == "stopping"
    });
    assert_eq!(l[0]["active_connections"], 1);
    assert_eq!(l[0]["connections"].as_array().map(Vec::len), Some(1));
    let st = home.ok(&["status"]);
    assert!(
        st.contains(&format!("web ({id}, pid ")) && st.contains(": stopping — "),
        "{st}"
    );

    // Said at once: which tunnel drains how much, for how long, and what stops it now.
    let draining = format!(
        "tunnel \"web\" ({id}) is draining 1 open connection for up to 600s; `conduit kill \
         --tunnel {id} --force` stops it now\n"
    );
    graceful.wait_stderr(&draining);
    // A second kill asking a longer drain is told what is left of the one under
    // way, which a later order never lengthens.
    let mut longer = home.spawn(&["kill", "--tunnel", "web", "--drain-timeout", "3000"]);
    longer.wait_stderr("is draining 1 open connection for up to ");
    let said = longer.stderr();
    assert!(
        ["600s;", "599s;", "598s;"]
            .iter()
            .any(|s| said.contains(&format!("for up to {s}"))),
        "{said}"
    );

    let (status, out, err) = home.run(&["kill", "--tunnel", "web", "--force"]);
    assert_code(status, 0, &err);
    assert_eq!(out, format!("stopped tunnel \"web\" ({id})\n"));
    // Nothing drains: nothing to say.
    assert_eq!(err, "");
    // Cut short, a stream is reset: a FIN would pass it off as complete.
    assert_eq!(
        expect_end(&mut held),
        End::Reset,
        "the held connection at the forced stop"
    );
    let status = graceful.wait_exit();
    assert_code(status, 0, &graceful.stderr());
    assert_eq!(
        graceful.stdout(),
        [format!("stopped tunnel \"web\" ({id})")]
    );
    assert_eq!(graceful.stderr(), draining);
    assert_code(longer.wait_exit(), 0, &longer.stderr());
    assert!(list_json(&home).is_empty());
    assert_eq!(registry_files(&home), 0);
    // Its log says what ended the stream: the forced stop, not a deadline.
    let log = home.ok(&["logs", "web"]);
    assert!(
        log.contains(
            "user connection closed: a later stop (kill --force, or a shorter \
             --drain-timeout) cut the drain short"
        ),
        "{log}"
    );
    // And its last line, why the tunnel stopped and how its drain ended (the log
    // used to end at "draining open connections").
    assert!(
        log.lines().last().unwrap_or_default().ends_with(
            "tunnel \"web\" stopped (asked to on its control socket: conduit kill, down or \
             up): the drain was cut short (a second stop signal, `kill --force`, or a drain \
             timeout of 0): closed 1 of 1 open connection"
        ),
        "{log}"
    );
}

/// `--drain-timeout 0` closes open connections at once, whatever the tunnel's own
/// drain deadline (it used to mean "the tunnel's own setting").
#[test]
fn drain_timeout_zero_closes_connections_at_once() {
    let home = Home::with_keys();
    let _cleanup = Cleanup {
        home: &home,
        frozen: Vec::new(),
    };
    let source = sources::echo();
    let (_router, raddr) = home.router(Engine::Epoll, &[source.to_string()]);
    let addr = start(&home, raddr, source, "web", &["--drain-timeout", "600"]);
    let mut held = hold(addr, b"hello");
    wait_list(&home, "the held connection", |l| {
        l.len() == 1 && l[0]["active_connections"] == 1
    });
    let (status, out, err) = home.run(&["kill", "--tunnel", "web", "--drain-timeout", "0"]);
    assert_code(status, 0, &err);
    assert!(out.starts_with("stopped tunnel \"web\" (web-"), "{out}");
    assert_eq!(expect_end(&mut held), End::Reset);
    assert!(list_json(&home).is_empty());
}

/// A hung tunnel (SIGSTOP): `kill` names `--force`; `kill --force` kills the process
/// with SIGKILL, removes its registry entry and says so.
#[test]
fn kill_force_kills_a_tunnel_whose_control_socket_does_not_answer() {
    let home = Home::with_keys();
    let mut cleanup = Cleanup {
        home: &home,
        frozen: Vec::new(),
    };
    let source = sources::echo();
    let (_router, raddr) = home.router(Engine::Epoll, &[source.to_string()]);
    start(&home, raddr, source, "frozen", &[]);
    let (pid, id) = freeze(&home, &mut cleanup, "frozen");

    let (status, _, err) = home.run(&["kill", "--tunnel", "frozen"]);
    assert_code(status, 1, &err);
    assert!(
        err.contains(&format!(
            "no answer within 5s; the process may be stopped or hung: `conduit kill --tunnel \
             {id} --force` kills it (SIGKILL)"
        )),
        "{err}"
    );
    assert!(pid_alive(pid));
    // Its connections are not said to be none: they are not known.
    let table = home.ok(&["list", "--connections"]);
    assert!(
        table.ends_with("\n    (connections unknown: the tunnel did not answer)\n"),
        "{table}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&home.ok(&["list", "--connections", "--format", "json"])).unwrap();
    assert_eq!(json[0]["status"], "unreachable", "{json}");
    assert_eq!(json[0]["connections"], serde_json::Value::Null, "{json}");
    // Nor is one of its connections said not to exist: the tunnel did not answer.
    let (status, _, err) = home.run(&["kill", "--connection", "3", "--tunnel", "frozen"]);
    assert_code(status, 1, &err);
    assert!(
        err == "conduit: error: connection 3 was not found, but tunnel \"frozen\" did not \
                answer: its control socket did not answer in time (the process may be stopped \
                or overloaded); `conduit kill --tunnel NAME --force` stops a hung tunnel\n",
        "{err}"
    );

    let (status, out, err) = home.run(&["kill", "--tunnel", "frozen", "--force"]);
    assert_code(status, 0, &err);
    assert_eq!(
        out,
        format!(
            "stopped tunnel \"frozen\" ({id}): no answer within 5s; killed pid {pid} (SIGKILL) \
             and removed its registry entry\n"
        )
    );
    assert!(!pid_alive(pid));
    assert_eq!(registry_files(&home), 0);
    assert_eq!(home.ok(&["list"]), "no tunnels running\n");
}

/// `kill --all` asks every tunnel at once: both drain side by side (a second tunnel
/// used to keep accepting until the first had drained), and `kill --all --force`
/// stops both.
#[test]
fn kill_all_drains_the_tunnels_side_by_side() {
    let home = Home::with_keys();
    let _cleanup = Cleanup {
        home: &home,
        frozen: Vec::new(),
    };
    let source = sources::echo();
    let (_router, raddr) = home.router(Engine::Epoll, &[source.to_string()]);
    let a = start(&home, raddr, source, "one", &[]);
    let b = start(&home, raddr, source, "two", &[]);
    let mut ca = hold(a, b"a");
    let mut cb = hold(b, b"b");
    wait_list(&home, "both connections", |l| {
        l.len() == 2 && l.iter().all(|t| t["active_connections"] == 1)
    });
    let mut graceful = home.spawn(&["kill", "--all", "--drain-timeout", "600"]);
    wait_list(&home, "both tunnels stopping", |l| {
        l.len() == 2 && l.iter().all(|t| t["status"] == "stopping")
    });
    assert!(
        echoes(&mut ca) && echoes(&mut cb),
        "a draining connection was cut"
    );
    let out = home.ok(&["kill", "--all", "--force"]);
    assert_eq!(out.lines().count(), 2, "{out}");
    let status = graceful.wait_exit();
    assert_code(status, 0, &graceful.stderr());
    let mut said = graceful.stdout();
    said.sort();
    assert!(
        said.len() == 2
            && said[0].starts_with("stopped tunnel \"one\" (one-")
            && said[1].starts_with("stopped tunnel \"two\" (two-"),
        "{said:?}"
    );
    assert_eq!(expect_end(&mut ca), End::Reset);
    assert_eq!(expect_end(&mut cb), End::Reset);
    assert!(list_json(&home).is_empty());
}

/// Connection ids are per tunnel: with two tunnels holding connection 1, `kill
/// --connection 1` closes nothing and names `--tunnel`; with it, only that
/// tunnel's connection closes.
#[test]
fn kill_connection_needs_the_tunnel_when_several_have_the_id() {
    let home = Home::with_keys();
    let _cleanup = Cleanup {
        home: &home,
        frozen: Vec::new(),
    };
    let source = sources::echo();
    let (_router, raddr) = home.router(Engine::Epoll, &[source.to_string()]);
    // One worker each: the first connection of each tunnel is connection 1.
    let a = start(&home, raddr, source, "one", &["--workers", "1"]);
    let b = start(&home, raddr, source, "two", &["--workers", "1"]);
    let mut ca = hold(a, b"a");
    let mut cb = hold(b, b"b");
    let l = wait_list(&home, "both connections", |l| {
        l.len() == 2
            && l.iter()
                .all(|t| t["connections"].as_array().is_some_and(|c| c.len() == 1))
    });
    for t in &l {
        assert_eq!(t["connections"][0]["id"], 1, "{l:#?}");
    }
    let (one, two) = (l[0]["id"].as_str().unwrap(), l[1]["id"].as_str().unwrap());

    let (status, out, err) = home.run(&["kill", "--connection", "1"]);
    assert_code(status, 64, &err);
    assert_eq!(out, "");
    assert_eq!(
        err,
        format!(
            "conduit: error: connection ids are per tunnel, and 2 tunnels have connection 1: one ({one}), \
             two ({two}); name one with `--tunnel NAME|ID`\n"
        )
    );
    assert!(
        echoes(&mut ca) && echoes(&mut cb),
        "a connection was closed"
    );

    let out = home.ok(&["kill", "--connection", "1", "--tunnel", "two"]);
    assert_eq!(out, "closed connection 1 of tunnel two\n");
    assert_eq!(expect_end(&mut cb), End::Reset, "the killed connection");
    assert!(
        echoes(&mut ca),
        "the other tunnel's connection 1 was closed"
    );

    let (status, _, err) = home.run(&["kill", "--connection", "1", "--tunnel", two]);
    assert_code(status, 64, &err);
    assert!(err.contains("tunnel \"two-"), "{err}");
    assert!(err.contains("\" has no connection 1"), "{err}");
}

/// Freezes (SIGSTOP) the process of the tunnel `list` shows as `name`; its pid and id.
fn freeze(home: &Home, cleanup: &mut Cleanup<'_>, name: &str) -> (u64, String) {
    let l = wait_list(home, "the tunnel running", |l| {
        l.iter()
            .any(|t| t["name"] == name && t["status"] == "running")
    });
    let t = l.iter().find(|t| t["name"] == name).unwrap();
    let pid = t["pid"].as_u64().unwrap();
    cleanup.frozen.push(pid);
    signal(pid, "STOP");
    let deadline = Instant::now() + DEADLINE;
    while !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('T'))
    }) {
        assert!(Instant::now() < deadline, "pid {pid} never stopped");
        std::thread::sleep(Duration::from_millis(20));
    }
    (pid, t["id"].as_str().unwrap().to_owned())
}

const NO_ANSWER: &str = "control socket does not answer (the process may be stopped or overloaded)";

/// A tunnel that does not answer is named as such by `status`, `health` and `stats`
/// (not blamed on its router link), and `status` and `stats` fail naming it while
/// still showing the tunnels that answered.
#[test]
fn a_frozen_tunnel_is_named_as_not_answering() {
    let home = Home::with_keys();
    let mut cleanup = Cleanup {
        home: &home,
        frozen: Vec::new(),
    };
    let source = sources::echo();
    let (_router, raddr) = home.router(Engine::Epoll, &[source.to_string()]);
    start(&home, raddr, source, "fine", &[]);
    start(&home, raddr, source, "frozen", &[]);
    wait_list(&home, "both running", |l| {
        l.len() == 2 && l.iter().all(|t| t["status"] == "running")
    });
    let (pid, id) = freeze(&home, &mut cleanup, "frozen");

    // `status` shows each, and fails (exit 1) as `stats` does: one state is unknown.
    let (status, st, err) = home.run(&["status"]);
    assert_code(status, 1, &err);
    assert!(
        st.contains(&format!(
            "frozen ({id}, pid {pid}): unreachable: {NO_ANSWER}"
        )),
        "{st}"
    );
    assert!(st.contains(": running — router "), "{st}");
    let stuck = format!(
        "conduit: error: could not read the status of frozen ({id}): {NO_ANSWER}; should it \
         stay stuck, `conduit kill --tunnel {id} --force` stops it\n"
    );
    assert_eq!(err, stuck);
    let (status, json, err) = home.run(&["status", "--format", "json"]);
    assert_code(status, 1, &err);
    assert_eq!(err, stuck);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json.as_array().map(Vec::len), Some(2), "{json}");

    let (status, out, err) = home.run(&["health"]);
    assert_code(status, 1, &err);
    assert!(
        out.lines().any(|l| l == format!("frozen: {NO_ANSWER}")),
        "{out}"
    );
    assert!(!out.contains("frozen: router"), "{out}");
    assert!(
        out.contains(&format!("fine: router {raddr} link connected")),
        "{out}"
    );

    let (status, out, err) = home.run(&["stats"]);
    assert_code(status, 1, &err);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("TUNNEL"), "{out}");
    assert!(lines[1].starts_with("fine "), "{out}");
    assert_eq!(
        err,
        format!(
            "conduit: error: could not read the stats of frozen ({id}): {NO_ANSWER}; should it \
             stay stuck, `conduit kill --tunnel {id} --force` stops it\n"
        )
    );

    let (status, out, err) = home.run(&["stats", "--format", "prometheus"]);
    assert_code(status, 1, &err);
    assert!(
        out.contains("tunnel=\"fine\"") && !out.contains("frozen"),
        "{out}"
    );
    assert!(
        err.starts_with(&format!(
            "conduit: error: could not read the stats of frozen ({id}): {NO_ANSWER}"
        )),
        "{err}"
    );
}
