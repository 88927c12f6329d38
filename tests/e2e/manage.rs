//! Daemonless operation: background tunnels, the registry, list/status/kill.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::harness::{DEADLINE, Engine, Home, addr_in, assert_code, dead_port};
use crate::sources;

/// Stops every tunnel of a home when the test ends, whatever happened.
pub(crate) struct Cleanup<'a>(pub(crate) &'a Home);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = self.0.run(&["kill", "--all", "--force"]);
    }
}

pub(crate) fn start_args(home: &Home, router: &str, source: &str, name: &str) -> Vec<String> {
    vec![
        "start".into(),
        "--router".into(),
        router.into(),
        "--router-key".into(),
        home.key("router.pub").to_string_lossy().into_owned(),
        "--source".into(),
        source.into(),
        "--bind".into(),
        "127.0.0.1:0".into(),
        "--name".into(),
        name.into(),
        "--io-engine".into(),
        "epoll".into(),
    ]
}

pub(crate) fn run_args(home: &Home, args: &[String]) -> (std::process::ExitStatus, String, String) {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    home.run(&a)
}

pub(crate) fn list_json(home: &Home) -> Vec<serde_json::Value> {
    let out = home.ok(&["list", "--format", "json", "--connections"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("list json: {e}\n{out}"))
}

/// Polls `list` until `pred` holds (deadline-bounded).
pub(crate) fn wait_list(
    home: &Home,
    what: &str,
    pred: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let l = list_json(home);
        if pred(&l) {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "list never showed {what}: {l:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether process `pid` exists and is not a zombie (its state, after the command
/// name in parentheses, is not `Z`).
pub(crate) fn pid_alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
    })
}

#[test]
fn start_list_counts_a_held_connection_kill_and_list_is_empty() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo();
    let (_router, raddr) = home.router(Engine::Epoll, &[source.to_string()]);

    let (status, out, err) = run_args(
        &home,
        &start_args(&home, &raddr.to_string(), &source.to_string(), "web"),
    );
    assert_code(status, 0, &err);
    let first = out.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("started tunnel \"web\" (id web-"),
        "{out}"
    );
    let addr = addr_in(first.split(" listening on ").nth(1).unwrap());

    // The user's connection is held open while we look.
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    c.write_all(b"hello").unwrap();
    let mut buf = [0u8; 5];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");

    let l = wait_list(&home, "one running tunnel with a connection", |l| {
        l.len() == 1 && l[0]["status"] == "running" && l[0]["active_connections"] == 1
    });
    let t = &l[0];
    assert_eq!(t["name"], "web");
    assert_eq!(t["router"], raddr.to_string());
    assert_eq!(t["source"], source.to_string());
    assert_eq!(t["bind"], addr.to_string());
    assert_eq!(t["bytes_in"], 5);
    assert_eq!(t["bytes_out"], 5);
    let pid = t["pid"].as_u64().unwrap();
    assert!(pid_alive(pid));
    assert_eq!(t["connections"].as_array().map(Vec::len), Some(1));
    // Without --connections, no list of them (an empty one would read as none open).
    let plain: serde_json::Value =
        serde_json::from_str(&home.ok(&["list", "--format", "json"])).unwrap();
    assert_eq!(plain[0]["active_connections"], 1);
    assert!(plain[0].get("connections").is_none(), "{plain}");

    // The table shows the same, with the connection under it.
    let table = home.ok(&["list", "--connections"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("ID"), "{table}");
    assert!(
        lines[1].contains(" web ")
            && lines[1].contains(" running ")
            && lines[1].contains(&addr.to_string()),
        "{table}"
    );
    assert!(lines[2].trim_start().starts_with("connection "), "{table}");
    assert!(lines[2].contains("in 5 B  out 5 B"), "{table}");

    let status_out = home.ok(&["status"]);
    assert!(
        status_out.contains(&format!("router {raddr} connected since")),
        "{status_out}"
    );
    assert!(status_out.contains("; 1 open connection, "), "{status_out}");

    // Graceful kill: the held connection is drained, then the process is gone.
    drop(c);
    let out = home.ok(&["kill", "--tunnel", "web"]);
    assert!(out.starts_with("stopped tunnel \"web\""), "{out}");
    assert!(!pid_alive(pid), "the tunnel process is still there");
    assert_eq!(home.ok(&["list"]), "no tunnels running\n");
    assert!(list_json(&home).is_empty());
    assert_eq!(
        std::fs::read_dir(home.path().join("tunnels"))
            .unwrap()
            .count(),
        0
    );
}

/// A tunnel killed outright (SIGKILL, as the OOM killer does) leaves `list` (which
/// shows running tunnels), but `health` and `status` report it died.
#[test]
fn a_tunnel_killed_with_sigkill_disappears_from_list() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo();
    let (_router, raddr) = home.router(Engine::Epoll, &[source.to_string()]);
    let (status, _, err) = run_args(
        &home,
        &start_args(&home, &raddr.to_string(), &source.to_string(), "doomed"),
    );
    assert_code(status, 0, &err);
    let l = wait_list(&home, "the tunnel", |l| l.len() == 1);
    let pid = l[0]["pid"].as_u64().unwrap();
    std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    wait_list(&home, "no tunnel", |l| l.is_empty());
    assert_eq!(home.ok(&["list"]), "no tunnels running\n");
    assert_eq!(
        std::fs::read_dir(home.path().join("tunnels"))
            .unwrap()
            .count(),
        0
    );

    // It died: `health` fails naming it (a probe must not pass for want of a
    // tunnel), `status` says so, until it runs again or `kill` forgets it.
    let id = l[0]["id"].as_str().unwrap();
    let (status, out, err) = home.run(&["health"]);
    assert_code(status, 1, &err);
    let found = out
        .strip_prefix(&format!(
            "doomed: not running: its process (pid {pid}) ended without being stopped \
             (killed, or crashed; found "
        ))
        .and_then(|rest| {
            rest.strip_suffix("): start it again, or `conduit kill --tunnel doomed` to forget it\n")
        })
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(err, "conduit: error: unhealthy: doomed (died)\n");
    assert_eq!(
        home.ok(&["status"]),
        format!(
            "doomed ({id}): died — its process (pid {pid}) ended without being stopped \
             (killed, or crashed; found {found}): start it again, or `conduit kill --tunnel \
             doomed` to forget it\n"
        )
    );
    // Started again, it is well.
    let (status, _, err) = run_args(
        &home,
        &start_args(&home, &raddr.to_string(), &source.to_string(), "doomed"),
    );
    assert_code(status, 0, &err);
    assert!(home.ok(&["health"]).starts_with("doomed: router "));
    let l = list_json(&home);
    let pid = l[0]["pid"].as_u64().unwrap();
    std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    wait_list(&home, "no tunnel", |l| l.is_empty());
    let (status, _, err) = home.run(&["health", "--tunnel", "doomed"]);
    assert_code(status, 1, &err);
    // Forgotten: nothing is down any more.
    let (status, out, err) = home.run(&["kill", "--tunnel", "doomed"]);
    assert_code(status, 0, &err);
    assert!(
        out.starts_with(&format!(
            "forgot tunnel \"doomed\" ({}), whose process (pid {pid}) had ended without \
             being stopped (killed, or crashed; found ",
            l[0]["id"].as_str().unwrap()
        )),
        "{out}"
    );
    assert_eq!(home.ok(&["health"]), "no tunnels running\n");
    assert_eq!(home.ok(&["status"]), "no tunnels running\n");
}

#[test]
fn a_tunnel_that_cannot_come_up_says_why_and_leaves_nothing_behind() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let (_router, raddr) = home.router(Engine::Epoll, &["127.0.0.1:1".into()]);
    // The bind address is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut args = start_args(&home, &raddr.to_string(), "127.0.0.1:1", "clash");
    let bind_at = args.iter().position(|a| a == "--bind").unwrap() + 1;
    args[bind_at] = taken.local_addr().unwrap().to_string();
    let (status, out, err) = run_args(&home, &args);
    assert_code(status, 69, &err);
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains(&format!("cannot listen on {}", taken.local_addr().unwrap())),
        "{err}"
    );
    assert!(list_json(&home).is_empty());
    assert!(!home.path().join("logs/clash.log").exists());

    // The router refuses this client's key.
    home.ok(&["init", "--name", "stranger"]);
    let mut args = start_args(&home, &raddr.to_string(), "127.0.0.1:1", "shunned");
    args.extend([
        "--key".into(),
        home.key("stranger.key").to_string_lossy().into_owned(),
    ]);
    let (status, _, err) = run_args(&home, &args);
    assert_code(status, 77, &err);
    assert!(
        err.contains("the router refused this client's key"),
        "{err}"
    );
    assert!(list_json(&home).is_empty());

    // The router does not allow the source.
    let source = "127.0.0.1:2";
    let (status, out, err) = run_args(
        &home,
        &start_args(&home, &raddr.to_string(), source, "astray"),
    );
    assert_code(status, 77, &err);
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains(&format!(
            "the router refused this tunnel: source {source} is not allowed by the router's \
             policy; to allow it, add `--allow {source}` to the router"
        )),
        "{err}"
    );
    assert!(list_json(&home).is_empty());
}

/// A tunnel stopped while `start` still waits for it to come up: `start` says so and
/// fails, rather than passing the tunnel's last log line off as its error with exit 0.
#[test]
fn a_tunnel_stopped_before_it_came_up_fails_its_start_with_that_reason() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    // A port that accepts connections and never answers: the handshake waits.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut args = start_args(
        &home,
        &silent.local_addr().unwrap().to_string(),
        "127.0.0.1:1",
        "halted",
    );
    args.extend(["--handshake-timeout".into(), "120".into()]);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut start = home.spawn(&a);
    wait_list(&home, "the tunnel coming up", |l| {
        l.iter().any(|t| t["name"] == "halted")
    });
    home.ok(&["kill", "--tunnel", "halted"]);
    let status = start.wait_exit();
    let err = start.stderr();
    assert_code(status, 1, &err);
    assert_eq!(
        err,
        format!(
            "conduit: error: the tunnel was stopped before it came up (by `conduit kill` or a \
             signal); its log: {}\n",
            home.path().join("logs/halted.log").display()
        )
    );
    assert!(home.path().join("logs/halted.log").exists());
}

#[test]
fn an_unreachable_router_is_retried_in_the_background_and_start_says_so() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let router = format!("127.0.0.1:{}", dead_port());
    let (status, out, err) = run_args(&home, &start_args(&home, &router, "127.0.0.1:1", "patient"));
    assert_code(status, 0, &err);
    assert!(
        out.contains(&format!("cannot reach router {router}")),
        "{out}"
    );
    assert!(out.contains("retrying in the background"), "{out}");
    wait_list(&home, "a retrying tunnel", |l| {
        l.len() == 1 && l[0]["status"] == "retrying"
    });
    let st = home.ok(&["status"]);
    assert!(
        st.contains(&format!("router {router} unreachable"))
            && (st.contains("s, or as soon as its port accepts (tried every second)")
                || st.contains("failed, next within a second")
                || st.contains("failed, next under way")),
        "{st}"
    );
    // Nothing listens there: its port is knocked on meanwhile, as `status` says.
    let json: serde_json::Value =
        serde_json::from_str(&home.ok(&["status", "--format", "json"])).unwrap();
    assert_eq!(json[0]["link"]["knocking"], true, "{json}");
    // The router comes up, and refuses it: `start` has long returned, so the tunnel
    // does not stop (nobody would hear of it) but keeps trying, as one that was up.
    let others = home.path().join("others");
    std::fs::write(&others, home.ok(&["init", "--name", "other"])).unwrap();
    let (_router, _) = home.router_at(
        Engine::Epoll,
        &router,
        &["127.0.0.1:1".into()],
        &["--authorized-keys", others.to_str().unwrap()],
    );
    let log = home.path().join("logs/patient.log");
    let deadline = Instant::now() + DEADLINE;
    // Refused twice: it tried again.
    while std::fs::read_to_string(&log)
        .unwrap_or_default()
        .matches("the router refused this client's key")
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "never refused twice");
        std::thread::sleep(Duration::from_millis(100));
    }
    let l = list_json(&home);
    assert!(l.len() == 1 && l[0]["status"] == "retrying", "{l:#?}");
    let out = home.ok(&["kill", "--all"]);
    assert!(out.contains("stopped tunnel \"patient\""), "{out}");
    assert!(list_json(&home).is_empty());
}

/// A registry that cannot be read is an error, never "no tunnels running" (which a
/// health probe would take for fine).
#[test]
fn a_registry_that_cannot_be_read_is_an_error_not_an_empty_list() {
    let home = Home::with_keys();
    std::fs::write(home.path().join("tunnels"), "").unwrap();
    let want = format!(
        "conduit: error: cannot read the tunnel registry {}: Not a directory (os error 20); \
         run conduit as the user who started the tunnels, with their CONDUIT_HOME (it must be \
         a directory they own)\n",
        home.path().join("tunnels").display()
    );
    for args in [
        &["list"][..],
        &["status"],
        &["stats"],
        &["health"],
        &["kill", "--all"],
    ] {
        let (status, out, err) = home.run(args);
        assert_code(status, 1, &err);
        assert_eq!(
            (out.as_str(), err.as_str()),
            ("", want.as_str()),
            "{args:?}"
        );
    }
}

#[test]
fn names_are_unique_and_unknown_names_are_errors() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo();
    let (_router, raddr) = home.router(Engine::Epoll, &[source.to_string()]);
    let args = start_args(&home, &raddr.to_string(), &source.to_string(), "solo");
    let (status, _, err) = run_args(&home, &args);
    assert_code(status, 0, &err);
    let (status, _, err) = run_args(&home, &args);
    assert_code(status, 64, &err);
    assert!(
        err.contains("a tunnel named \"solo\" is already running"),
        "{err}"
    );

    let (status, _, err) = home.run(&["kill", "--tunnel", "ghost"]);
    assert_code(status, 64, &err);
    assert!(
        err.contains("no tunnel named or with id \"ghost\" is running"),
        "{err}"
    );
    // Nothing named: a usage error that names the choices.
    let (status, out, err) = home.run(&["kill"]);
    assert_code(status, 64, &err);
    assert_eq!(out, "");
    assert_eq!(
        err,
        "error: the following required arguments were not provided:\n  \
         <--tunnel <TUNNEL>|--all|--connection <CONNECTION>>\n\nUsage: conduit kill \
         <--tunnel <TUNNEL>|--all|--connection <CONNECTION>>\n\nFor more information, try \
         '--help'.\n"
    );
}

#[test]
fn kill_connection_closes_just_that_connection() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo();
    let (_router, raddr) = home.router(Engine::Epoll, &[source.to_string()]);
    let (status, out, err) = run_args(
        &home,
        &start_args(&home, &raddr.to_string(), &source.to_string(), "two"),
    );
    assert_code(status, 0, &err);
    let addr = addr_in(
        out.lines()
            .next()
            .unwrap()
            .split(" listening on ")
            .nth(1)
            .unwrap(),
    );
    let open = |msg: &[u8]| {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(DEADLINE)).unwrap();
        c.write_all(msg).unwrap();
        let mut b = vec![0u8; msg.len()];
        c.read_exact(&mut b).unwrap();
        c
    };
    let mut a = open(b"first");
    let mut b = open(b"second");
    let v = wait_list(&home, "two connections", |l| {
        l.len() == 1 && l[0]["connections"].as_array().is_some_and(|c| c.len() == 2)
    });
    let conns = v[0]["connections"].as_array().unwrap();
    let victim = conns.iter().find(|c| c["bytes_in"] == 5).unwrap()["id"]
        .as_u64()
        .unwrap();
    let out = home.ok(&["kill", "--connection", &victim.to_string()]);
    assert_eq!(out, format!("closed connection {victim} of tunnel two\n"));
    assert_eq!(
        crate::users::expect_end(&mut a),
        crate::users::End::Reset,
        "the killed connection"
    );
    let mut buf = [0u8; 1];
    b.write_all(b"!").unwrap();
    b.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"!");
    let (status, _, err) = home.run(&["kill", "--connection", "999999"]);
    assert_code(status, 64, &err);
    assert!(
        err.contains("no running tunnel has connection 999999"),
        "{err}"
    );
}

/// Whether this host offers kernel TLS, as `conduit version` reports it.
fn host_has_kernel_tls(home: &Home) -> bool {
    home.ok(&["version"])
        .lines()
        .any(|l| l == "kernel TLS: yes")
}

#[test]
fn status_says_whether_streams_go_through_kernel_tls() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo();
    let (_router, raddr) = home.router(Engine::Epoll, &[source.to_string()]);
    let (raddr, source) = (raddr.to_string(), source.to_string());

    let (status, _, err) = run_args(&home, &start_args(&home, &raddr, &source, "on"));
    assert_code(status, 0, &err);
    let mut off = start_args(&home, &raddr, &source, "off");
    off.extend(["--kernel-tls".into(), "false".into()]);
    let (status, _, err) = run_args(&home, &off);
    assert_code(status, 0, &err);

    // One stream through the tunnel that may use kernel TLS.
    let l = list_json(&home);
    let on = l.iter().find(|t| t["name"] == "on").expect("tunnel on");
    let addr = addr_in(on["bind"].as_str().unwrap());
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    c.write_all(b"ping").unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"ping");

    let (state, streams, words) = if host_has_kernel_tls(&home) {
        ("on", 1, ", kernel TLS on (1 stream so far);")
    } else {
        ("absent", 0, ", no kernel TLS on this host;")
    };
    let json = home.ok(&["status", "--format", "json"]);
    let v: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    let of = |name: &str| {
        v.iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("no tunnel {name}: {json}"))["kernel_tls"]
            .clone()
    };
    assert_eq!(
        of("on"),
        serde_json::json!({"state": state, "streams": streams})
    );
    assert_eq!(of("off"), serde_json::json!({"state": "off", "streams": 0}));
    // Times as RFC 3339, as `list` writes them; none scheduled while connected.
    let link = &v.iter().find(|t| t["name"] == "on").unwrap()["link"];
    assert_eq!(link["state"], "connected", "{json}");
    let since = link["since"].as_str().unwrap_or_else(|| panic!("{json}"));
    assert!(since.len() == 20 && since.ends_with('Z'), "{json}");
    assert_eq!(link["next_attempt_at"], serde_json::Value::Null, "{json}");

    let text = home.ok(&["status"]);
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{name} (")))
            .unwrap_or_else(|| panic!("no line for {name}: {text}"))
            .to_owned()
    };
    assert!(line("on").contains(words), "{text}");
    assert!(line("off").contains(", kernel TLS off;"), "{text}");
}

#[test]
fn completion_scripts_load_in_their_shell() {
    let home = Home::empty();
    let script = home.ok(&["completions", "bash"]);
    // bash loads it and completes `conduit` with it.
    let out = std::process::Command::new("bash")
        .args([
            "-c",
            "source /dev/stdin && complete -p conduit && COMP_WORDS=(conduit sta) && \
             COMP_CWORD=1 && _conduit conduit sta conduit && printf '%s\\n' \"${COMPREPLY[@]}\"",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(script.as_bytes())?;
            child.wait_with_output()
        })
        .expect("bash runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines: Vec<&str> = text.lines().collect();
    lines[1..].sort_unstable();
    assert!(
        lines[0].starts_with("complete ")
            && lines[0].contains(" -F _conduit ")
            && lines[0].ends_with(" conduit"),
        "{text}"
    );
    assert_eq!(&lines[1..], ["start", "stats", "status"]);

    assert!(
        home.ok(&["completions", "zsh"])
            .starts_with("#compdef conduit")
    );
    let (status, _, err) = home.run(&["completions", "tcsh"]);
    assert_code(status, 64, &err);
    assert!(err.contains("invalid value 'tcsh'"), "{err}");
}

/// A tunnel whose source the router cannot open is linked but serves no one:
/// `status` gives the router's reason and `health` fails, until a stream is served
/// again (here, once the source is up).
#[test]
fn status_and_health_name_a_source_the_router_refuses() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let wanted: std::net::SocketAddr = format!("127.0.0.1:{}", dead_port()).parse().unwrap();
    let (_router, raddr) = home.router(engine, &[wanted.to_string()]);
    let (_tunnel, taddr) = home.tunnel_with(engine, raddr, &wanted.to_string(), &["--name", "web"]);
    crate::users::expect_refused_user(taddr);
    let why = format!(
        "the router could not open the source: the router could not connect to source {wanted}"
    );
    let (code, out, err) = crate::procfs::wait_until("health to name the refusal", || {
        let (code, out, err) = home.run(&["health"]);
        (out.contains("latest stream refused"), (code, out, err))
    });
    assert_code(code, 1, &err);
    assert!(
        out.starts_with(&format!(
            "web: router {raddr} link connected (latest stream refused: {why}"
        )),
        "{out}"
    );
    assert_eq!(
        err,
        "conduit: error: unhealthy: web (latest stream refused)\n"
    );
    let status = home.ok(&["status"]);
    assert!(
        status.contains(&format!("\n  latest stream refused: {why}")),
        "{status}"
    );
    // The source is up now: the next stream is served, and all is well again.
    sources::echo_on(std::net::TcpListener::bind(wanted).expect("the source's port is free"));
    crate::users::wait_for_echo(taddr, b"up now");
    assert_eq!(
        home.ok(&["health"]),
        format!("web: router {raddr} link connected\n")
    );
    assert!(!home.ok(&["status"]).contains("refused"));
}

/// A registry entry this version cannot read (as a newer Conduit might write it) is
/// left alone while its process lives, and `list` says whose it is and what to do;
/// once the process is gone it is swept like any other.
#[test]
fn an_entry_this_version_cannot_read_is_kept_while_its_process_lives() {
    let home = Home::with_keys();
    let source = sources::echo().to_string();
    let (_router, raddr) = home.router(Engine::Epoll, std::slice::from_ref(&source));
    let (mut tunnel, _) = home.tunnel(Engine::Epoll, raddr, &source);
    tunnel.wait_stdout("connected to router");
    let files: Vec<_> = std::fs::read_dir(home.path().join("tunnels"))
        .unwrap()
        .map(|f| f.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let file = &files[0];
    // Once the tunnel has recorded itself running, it leaves the file alone.
    let mut v = crate::http::wait_for("the entry to say running", || {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(file).ok()?).ok()?;
        (v["status"] == "running").then_some(v)
    });
    v["status"] = serde_json::json!({"state": "running"});
    std::fs::write(file, serde_json::to_vec(&v).unwrap()).unwrap();

    let (status, out, err) = home.run(&["list"]);
    assert_code(status, 0, &err);
    assert_eq!(out, "no tunnels running\n");
    let want = format!(
        "warning: {}: tunnel \"tunnel\" (pid {}) is registered in a form this conduit {} \
         cannot read (invalid type: map, expected a string at line 1 column ",
        file.display(),
        tunnel.pid(),
        env!("CARGO_PKG_VERSION")
    );
    assert!(err.starts_with(&want), "{err}");
    assert!(
        err.trim_end().ends_with(&format!(
            "a newer conduit started it? Manage it with that one, or stop it with `kill {}`",
            tunnel.pid()
        )),
        "{err}"
    );
    assert!(file.exists());
    // With no start time to check the pid against, `kill PID` is not offered as is.
    v.as_object_mut().unwrap().remove("started");
    std::fs::write(file, serde_json::to_vec(&v).unwrap()).unwrap();
    let (status, _, err) = home.run(&["list"]);
    assert_code(status, 0, &err);
    assert!(
        err.trim_end().ends_with(&format!(
            "Manage it with that one, or stop it once you have checked that pid {0} is that \
             tunnel (`ps -p {0}`; the entry records no start time to tell)",
            tunnel.pid()
        )),
        "{err}"
    );

    // Gone without a word (SIGKILL): the entry goes at the next look.
    tunnel.signal("KILL");
    tunnel.wait_exit();
    let (status, out, err) = home.run(&["list"]);
    assert_code(status, 0, &err);
    assert_eq!((out.as_str(), err.as_str()), ("no tunnels running\n", ""));
    assert!(!file.exists());
}

/// An entry damaged past naming its process (cut short by hand, a full disk) is
/// kept while its tunnel holds its name, and `list` names the process to stop; a
/// named pipe planted among the entries holds no command up.
#[cfg(unix)]
#[test]
fn a_damaged_entry_is_kept_while_its_tunnel_holds_its_name() {
    let home = Home::with_keys();
    let source = sources::echo().to_string();
    let (_router, raddr) = home.router(Engine::Epoll, std::slice::from_ref(&source));
    let (mut tunnel, _) = home.tunnel(Engine::Epoll, raddr, &source);
    tunnel.wait_stdout("connected to router");
    let dir = home.path().join("tunnels");
    let file = crate::http::wait_for("the entry to say running", || {
        let file = std::fs::read_dir(&dir)
            .ok()?
            .map(|f| f.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "json"))?;
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).ok()?).ok()?;
        (v["status"] == "running").then_some(file)
    });
    let fifo = dir.join("planted.json");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    // Frozen, the tunnel cannot write its entry again (as it does within seconds).
    let pid = u64::from(tunnel.pid());
    crate::stopping::signal(pid, "STOP");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..40]).unwrap();

    for _ in 0..2 {
        let (status, out, err) = home.run(&["list"]);
        assert_code(status, 0, &err);
        assert_eq!(out, "no tunnels running\n");
        let want = format!(
            "warning: {}: the entry of tunnel \"tunnel\" is damaged (",
            file.display()
        );
        assert!(err.starts_with(&want), "{err}");
        assert!(
            err.trim_end().ends_with(&format!(
                "and pid {0} holds its name: that tunnel runs on, unseen by list, status and \
                 health, and out of conduit kill's reach. Stop it with `kill {0}` once you \
                 have checked that it is that tunnel (`ps -p {0}`; it drains, then removes the \
                 entry) and start it again",
                tunnel.pid()
            )),
            "{err}"
        );
        assert!(file.exists());
    }
    // A kill meant for it fails, by name, by id or with --all, rather than pass.
    let id = file.file_stem().unwrap().to_str().unwrap().to_owned();
    for args in [
        &["kill", "--all"][..],
        &["kill", "--tunnel", "tunnel"],
        &["kill", "--tunnel", &id],
    ] {
        let (status, out, err) = home.run(args);
        assert_code(status, 1, &err);
        assert_eq!(out, "", "{args:?}");
        assert!(
            err.trim_end().ends_with(&format!(
                "conduit: error: not stopped: \"tunnel\" (pid {}), whose registry entry this \
                 conduit cannot read (see the warning above for how to stop it)",
                tunnel.pid()
            )),
            "{args:?}: {err}"
        );
    }
    assert!(tunnel.running());
    // Thawed, it writes its entry again; deleted, too.
    crate::stopping::signal(pid, "CONT");
    let running = |l: &[serde_json::Value]| l.len() == 1 && l[0]["status"] == "running";
    wait_list(&home, "the entry to be written again", running);
    tunnel.wait_stderr("this tunnel's registry entry was gone or damaged: written again");
    std::fs::remove_file(&file).unwrap();
    wait_list(&home, "the deleted entry to be written again", running);
    assert_eq!(
        tunnel.stderr_count("this tunnel's registry entry was gone or damaged: written again"),
        2
    );
    let status = tunnel.stop();
    assert_code(status, 0, &tunnel.stderr());
    let (status, out, err) = home.run(&["list"]);
    assert_code(status, 0, &err);
    assert_eq!((out.as_str(), err.as_str()), ("no tunnels running\n", ""));
    assert!(!file.exists());
    assert!(fifo.exists());
}

/// A CONDUIT_HOME that does not exist is most likely mistyped: `list` says so on
/// stderr (its output stays as it is), and `health`, which a probe may run, fails
/// rather than pass for ever.
#[test]
fn a_home_that_does_not_exist_is_named_and_fails_health() {
    let home = Home::empty();
    let missing = home.path().join("mistyped");
    let run = |args: &[&str]| {
        crate::harness::output_of(home.cmd().args(args).env("CONDUIT_HOME", &missing))
    };
    let list = run(&["list"]);
    let err = String::from_utf8_lossy(&list.stderr);
    assert_code(list.status, 0, &err);
    assert_eq!(
        String::from_utf8_lossy(&list.stdout),
        "no tunnels running\n"
    );
    assert_eq!(
        err,
        format!(
            "note: CONDUIT_HOME {} does not exist: no tunnel has run with it (is it the home \
             meant?)\n",
            missing.display()
        )
    );
    let health = run(&["health"]);
    let err = String::from_utf8_lossy(&health.stderr);
    assert_code(health.status, 1, &err);
    assert!(
        err.contains(&format!(
            "conduit: error: unhealthy: CONDUIT_HOME {} does not exist (no tunnel has run with \
             it): point CONDUIT_HOME at the tunnels' home\n",
            missing.display()
        )),
        "{err}"
    );
    assert!(!missing.exists(), "reading commands create nothing");
}

/// A CONDUIT_HOME that cannot be looked at (a loop of links) is named with the
/// system's reason, not taken for one that does not exist.
#[test]
fn a_home_that_cannot_be_looked_at_is_named() {
    let home = Home::empty();
    let looping = home.path().join("loop1");
    std::os::unix::fs::symlink(home.path().join("loop2"), &looping).unwrap();
    std::os::unix::fs::symlink(&looping, home.path().join("loop2")).unwrap();
    let run = |args: &[&str]| {
        crate::harness::output_of(home.cmd().args(args).env("CONDUIT_HOME", &looping))
    };
    let want = format!(
        "cannot look at CONDUIT_HOME {}: Too many levels of symbolic links (os error 40); \
         point CONDUIT_HOME at the tunnels' home directory",
        looping.display()
    );
    let list = run(&["list"]);
    let err = String::from_utf8_lossy(&list.stderr);
    assert_code(list.status, 64, &err);
    assert_eq!(err, format!("conduit: error: {want}\n"));
    assert!(list.stdout.is_empty());
    let health = run(&["health"]);
    let err = String::from_utf8_lossy(&health.stderr);
    assert_code(health.status, 1, &err);
    assert!(
        err.contains(&format!(
            "conduit: error: cannot read the tunnel registry {}: Too many levels of symbolic \
             links (os error 40); ",
            looping.join("tunnels").display()
        )),
        "{err}"
    );
}

/// A tunnel whose control socket was deleted (by hand, or by a cleaner of its
/// directory) is still stopped gracefully by `kill`: with SIGTERM, once its pid is
/// checked to be that tunnel's, rather than only offered SIGKILL.
#[test]
fn kill_stops_a_tunnel_whose_control_socket_is_gone_with_sigterm() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo();
    let (_router, raddr) = home.router(Engine::Epoll, &[source.to_string()]);
    let (status, _, err) = run_args(
        &home,
        &start_args(&home, &raddr.to_string(), &source.to_string(), "nosock"),
    );
    assert_code(status, 0, &err);
    let l = wait_list(&home, "the tunnel running", |l| {
        l.len() == 1 && l[0]["status"] == "running"
    });
    let (id, pid) = (
        l[0]["id"].as_str().unwrap().to_owned(),
        l[0]["pid"].as_u64().unwrap(),
    );
    let socket = home.path().join("run").join(format!("{id}.sock"));
    std::fs::remove_file(&socket).expect("the control socket");

    let (status, out, err) = home.run(&["kill", "--tunnel", "nosock"]);
    assert_code(status, 0, &err);
    assert_eq!(
        out,
        format!(
            "stopped tunnel \"nosock\" ({id}): stopped by SIGTERM (its control socket was gone)\n"
        )
    );
    assert!(
        err.contains(&format!(
            "tunnel \"nosock\" ({id}): its control socket {} is gone, and its process (pid \
             {pid}) runs: stopping it with SIGTERM",
            socket.display()
        )),
        "{err}"
    );
    assert!(!pid_alive(pid));
    assert_eq!(home.ok(&["list"]), "no tunnels running\n");
}
