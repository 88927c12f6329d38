//! Logs (JSON, a rotated file, each connection's open and close at debug) and the
//! `stats`, `health` and `logs` commands.

use std::net::SocketAddr;

use serde_json::Value;

use super::{TOKEN, echo_through, router_api};
use crate::harness::{Engine, Home, addr_in, assert_code, output_of};
use crate::http::wait_for;
use crate::manage::{Cleanup, wait_list};
use crate::sources;
use crate::users::open_user;

#[test]
fn connections_are_logged_at_debug_with_their_id_and_logs_can_go_to_a_rotated_file() {
    let home = Home::with_keys();
    let source = sources::echo();
    let log = home.path().join("router.log");
    let log_s = log.to_string_lossy().into_owned();
    let (_router, raddr) = home.router_with(
        Engine::Epoll,
        &[source.to_string()],
        &[
            "--log-level",
            "debug",
            "--log-format",
            "json",
            "--log-file",
            &log_s,
            "--log-rotation",
            "daily",
        ],
    );
    let tunnel = home.tunnel_proc(
        Engine::Epoll,
        raddr,
        &source.to_string(),
        &["--log-level", "debug", "--log-format", "json"],
    );
    let taddr = addr_in(&tunnel.wait_stdout("listening on"));
    tunnel.wait_stdout("connected to router");
    echo_through(taddr, 1000, 4);
    tunnel.wait_stderr("user connection closed");
    // The router's log is a daily file: router.log.YYYY-MM-DD.
    let (opened, closed) = wait_for("the router's stream open and close lines", || {
        let file = std::fs::read_dir(home.path())
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with("router.log."))?;
        let text = std::fs::read_to_string(file.path()).ok()?;
        let lines: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let find = |m: &str| lines.iter().find(|l| l["fields"]["message"] == m).cloned();
        Some((find("stream opened")?, find("stream closed")?))
    });
    assert_eq!(opened["level"], "DEBUG");
    assert_eq!(opened["fields"]["target"], source.to_string());
    assert_eq!(opened["fields"]["conn"], closed["fields"]["conn"]);
    assert_eq!(closed["fields"]["to_source"], 1000);
    // Both name the client and its tunnel: a log searched by either finds the pair.
    let client = home.public_key("client");
    for line in [&opened, &closed] {
        assert_eq!(line["fields"]["client"], client.as_str(), "{line}");
        assert!(line["fields"]["tunnel"].is_string(), "{line}");
    }
    assert_eq!(opened["fields"]["tunnel"], closed["fields"]["tunnel"]);
    // The tunnel side logs its user connection's open and close with one id too.
    let lines: Vec<Value> = tunnel
        .stderr()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let with = |m: &str| {
        lines
            .iter()
            .find(|l| l["fields"]["message"] == m)
            .unwrap()
            .clone()
    };
    let (o, c) = (
        with("user connection opened"),
        with("user connection closed"),
    );
    assert_eq!(o["level"], "DEBUG");
    assert_eq!(o["fields"]["conn"], c["fields"]["conn"]);
    assert_eq!(c["fields"]["up"], 1000);
}

/// `conduit start` of a background tunnel "web" (epoll) from a free port to `source`,
/// with `extra` flags; returns what it printed.
fn start_web(home: &Home, router: SocketAddr, source: SocketAddr, extra: &[&str]) -> String {
    let key = home.key("router.pub").to_string_lossy().into_owned();
    let (router, source) = (router.to_string(), source.to_string());
    let mut args = vec![
        "start",
        "--router",
        &router,
        "--router-key",
        &key,
        "--source",
        &source,
        "--bind",
        "127.0.0.1:0",
        "--name",
        "web",
        "--io-engine",
        "epoll",
    ];
    args.extend_from_slice(extra);
    home.ok(&args)
}

#[test]
fn stats_health_and_logs_commands() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo();
    let (_router, raddr, api) = router_api(&home, &[source.to_string()], &[]);
    let raddr_s = raddr.to_string();
    let out = start_web(&home, raddr, source, &[]);
    let taddr = addr_in(
        out.lines()
            .next()
            .unwrap()
            .split(" listening on ")
            .nth(1)
            .unwrap(),
    );
    echo_through(taddr, 2000, 5);

    // Through the router's API.
    let host = api.trim_start_matches("http://");
    let (status, _, err) = home.run(&["stats", "--router", host]);
    assert_code(status, 77, &err);
    assert!(
        err.contains("pass --api-token or set CONDUIT_API_TOKEN"),
        "{err}"
    );
    // A token with its file's newline: the fault named, not the router blamed.
    let out = crate::harness::output_of(
        home.cmd()
            .args(["health", "--router", host])
            .env("CONDUIT_API_TOKEN", format!("{TOKEN}\n")),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_code(out.status, 64, &err);
    assert_eq!(
        err,
        "conduit: error: --api-token (or CONDUIT_API_TOKEN): the API token begins or ends \
         with whitespace (a newline kept from the file it was read from?), which no HTTP \
         client sends: remove it (write the file with printf '%s', or strip it with tr -d \
         '\\n')\n"
    );
    let out = wait_for("the router's stats to count the stream", || {
        let out = crate::harness::output_of(
            home.cmd()
                .args(["stats", "--router", host])
                .env("CONDUIT_API_TOKEN", TOKEN),
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains("in 2.0 kB  out 2.0 kB").then_some(text)
    });
    assert!(
        out.contains("\nclient  2.0 kB  2.0 kB  0     1      0"),
        "{out}"
    );
    let out = home.ok(&["health", "--router", &api, "--api-token", TOKEN]);
    assert!(out.starts_with("router: ok (up "), "{out}");
    // The tunnels' port instead of the API's: named as the likely mistake.
    let (status, _, err) = home.run(&["stats", "--router", &format!("http://{raddr_s}")]);
    // Something answered, but not the API: 76, as for any answer that is not its API's.
    assert_code(status, 76, &err);
    assert!(
        err.starts_with(&format!(
            "conduit: error: http://{raddr_s} answered something that is not HTTP ("
        )),
        "{err}"
    );
    assert!(
        err.ends_with(
            "): is this the address of the router's API (--api-bind), not the one tunnels \
             connect to?\n"
        ),
        "{err}"
    );
    // Nothing listening: 69, with what to check.
    let nothing = format!("127.0.0.1:{}", crate::harness::dead_port());
    let (status, _, err) = home.run(&["health", "--router", &nothing]);
    assert_code(status, 69, &err);
    assert!(
        err.starts_with(&format!(
            "conduit: error: cannot reach the router's API at http://{nothing}: "
        )) && err.ends_with(
            "Connection refused (os error 111); check that the router runs with its API on \
             at that address (--api-bind, or api.bind in its file) and that this host may \
             reach it\n"
        ),
        "{err}"
    );
    // Not a URL of the API at all: a usage error, before anything is sent.
    let (status, _, err) = home.run(&["stats", "--router", "ftp://127.0.0.1:21"]);
    assert_code(status, 64, &err);
    assert_eq!(
        err,
        "conduit: error: --router \"ftp://127.0.0.1:21\": ftp:// is not a scheme the API \
         speaks; give the router's API as host:port, http://host:port or https://host:port\n"
    );

    // A token without a router: the user meant a router's figures, not these.
    for command in ["stats", "health"] {
        let (status, out, err) = home.run(&[command, "--api-token", TOKEN]);
        assert_code(status, 64, &err);
        assert_eq!(out, "");
        assert_eq!(
            err,
            format!(
                "conduit: error: --api-token is for a router's API, and no --router names \
                 one: add --router HOST:PORT to ask the router, or leave --api-token out for \
                 this machine's tunnels (`conduit {command}` alone)\n"
            )
        );
    }
    // Local tunnels (a token in the environment waits for a --router).
    let out = home.ok(&["stats"]);
    let with_env = output_of(home.cmd().env("CONDUIT_API_TOKEN", TOKEN).arg("stats"));
    assert_code(
        with_env.status,
        0,
        &String::from_utf8_lossy(&with_env.stderr),
    );
    assert_eq!(String::from_utf8_lossy(&with_env.stdout), out);
    assert!(
        out.contains("\nweb     2.0 kB  2.0 kB  0     1      0"),
        "{out}"
    );
    let out = home.ok(&["health"]);
    assert_eq!(out, format!("web: router {raddr_s} link connected\n"));
    // A probe's check: the tunnels named, each unhealthy unless running and linked.
    assert_eq!(home.ok(&["health", "--tunnel", "web"]), out);
    let (status, both, err) = home.run(&["health", "--tunnel", "api", "--tunnel", "web"]);
    assert_code(status, 1, &err);
    assert_eq!(both, format!("{out}api: not running\n"));
    assert_eq!(err, "conduit: error: unhealthy: api (not running)\n");

    // The background tunnel's log.
    let out = home.ok(&["logs", "web"]);
    assert!(out.contains("connected to router"), "{out}");
    assert_eq!(home.ok(&["logs", "web", "-n", "1"]).lines().count(), 1);
    // The follower prints the last line once it has read the log: only then is
    // what comes next sure to be followed (with `-n 0` a kill could land before the
    // follower had read the file, and the line would be missed).
    let follow = home.spawn(&["logs", "web", "-f", "-n", "1"]);
    follow.wait_stdout_count("", 1);
    // Something new in the log: the tunnel stopping.
    let _ = home.ok(&["kill", "--tunnel", "web"]);
    follow.wait_stdout("stopping");
    // Followed once it stopped: said, not a silent wait.
    let after = home.spawn(&["logs", "web", "-f", "-n", "1"]);
    after.wait_stderr(
        "conduit: tunnel \"web\" is not running: following its log for when it starts again \
         (Ctrl-C to stop)",
    );
    let (status, _, err) = home.run(&["logs", "nope"]);
    assert_code(status, 64, &err);
    assert!(err.contains("no log for tunnel \"nope\""), "{err}");
}

/// A tunnel ordered to stop drains its open connections and turns new users away:
/// `health` fails it, saying so, though its link was up (it used to pass it).
#[test]
fn health_fails_a_tunnel_that_is_stopping() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo();
    let (_router, raddr) = home.router(Engine::Epoll, &[source.to_string()]);
    let out = start_web(&home, raddr, source, &[]);
    let taddr = addr_in(
        out.lines()
            .next()
            .unwrap()
            .split(" listening on ")
            .nth(1)
            .unwrap(),
    );
    // A stream held open keeps the tunnel draining.
    let _held = open_user(taddr);
    assert_eq!(
        home.ok(&["health", "--tunnel", "web"]),
        format!("web: router {raddr} link connected\n")
    );

    let mut graceful = home.spawn(&["kill", "--tunnel", "web", "--drain-timeout", "600"]);
    wait_list(&home, "the tunnel stopping", |l| {
        l.len() == 1 && l[0]["status"] == "stopping"
    });
    let (status, out, err) = home.run(&["health", "--tunnel", "web"]);
    assert_code(status, 1, &err);
    assert_eq!(
        out,
        format!(
            "web: router {raddr} link connected (stopping: it drains its open connections \
             and turns new users away)\n"
        )
    );
    assert_eq!(err, "conduit: error: unhealthy: web (stopping)\n");
    let (status, out, err) = home.run(&["health", "--tunnel", "web", "--format", "json"]);
    assert_code(status, 1, &err);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["status"], "degraded", "{out}");
    assert_eq!(
        v["tunnels"][0]["detail"],
        "stopping: it drains its open connections and turns new users away",
        "{out}"
    );

    let (status, _, err) = home.run(&["kill", "--tunnel", "web", "--force"]);
    assert_code(status, 0, &err);
    let status = graceful.wait_exit();
    assert_code(status, 0, &graceful.stderr());
}

/// `logs` reads a background tunnel's rotated log (`FILE.YYYY-MM-DD`), not the
/// undated `--log-file` path, which holds only what is written outside the log.
#[test]
fn logs_reads_and_follows_a_rotated_log_file() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo();
    let (_router, raddr) = home.router(Engine::Epoll, &[source.to_string()]);
    let log = home.path().join("var").join("web.log");
    let log_s = log.to_string_lossy();
    let rotated = ["--log-file", &log_s, "--log-rotation", "daily"];
    let out = start_web(&home, raddr, source, &rotated);
    let rotated: Vec<_> = std::fs::read_dir(log.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("web.log."))
        .map(|e| e.path())
        .collect();
    assert_eq!(rotated.len(), 1, "{rotated:?}");
    // `start` names the file the tunnel writes, not the undated path.
    assert!(
        out.lines().any(|l| l
            == format!(
                "log: {} (a new file each period: `conduit logs web` shows the newest)",
                rotated[0].display()
            )),
        "{out}"
    );
    let out = home.ok(&["logs", "web"]);
    assert!(out.contains("connected to router"), "{out}");
    let follow = home.spawn(&["logs", "web", "-f", "-n", "1"]);
    follow.wait_stdout_count("", 1);
    let _ = home.ok(&["kill", "--tunnel", "web"]);
    follow.wait_stdout("stopping");
    // Stopped, the tunnel is gone from the registry; `logs` still finds its file.
    let out = home.ok(&["logs", "web"]);
    assert!(
        out.contains("connected to router") && out.contains("stopping"),
        "{out}"
    );
    // Started again without --log-file, it logs to logs/web.log, which `logs` reads.
    let out = start_web(&home, raddr, source, &[]);
    let default = home.path().join("logs").join("web.log");
    assert!(
        out.contains(&format!("log: {}", default.display())),
        "{out}"
    );
    let _ = home.ok(&["kill", "--tunnel", "web"]);
    let out = home.ok(&["logs", "web"]);
    assert_eq!(out, std::fs::read_to_string(&default).unwrap());
}

#[test]
fn health_names_each_lost_link_and_forgets_it_when_its_key_is_revoked() {
    let home = Home::with_keys();
    let client = home.ok(&["keys", "show", "--name", "client"]);
    let other = home.ok(&["init", "--name", "other"]);
    let file = home.path().join("authorized_clients");
    std::fs::write(&file, format!("{client}{other}")).unwrap();
    let source = sources::echo();
    let (router, raddr, api) = router_api(&home, &[source.to_string()], &[]);
    let (mut tunnel, _) = home.tunnel_with(
        Engine::Epoll,
        raddr,
        &source.to_string(),
        &["--name", "web"],
    );
    // The API's URL as its documents write it, /api/v1 included.
    let api_v1 = format!("{api}/api/v1");
    let health = |url: &str| home.run(&["health", "--router", url, "--api-token", TOKEN]);
    let (status, out, err) = health(&api_v1);
    assert_code(status, 0, &err);
    assert!(out.starts_with("router: ok (up "), "{out}");
    let (status, _, err) = health("");
    assert_code(status, 64, &err);
    assert_eq!(
        err,
        "conduit: error: --router is empty: give the router's API as host:port or \
         http://host:port\n"
    );

    tunnel.signal("KILL");
    tunnel.wait_exit();
    let (out, err) = wait_for("the link to be lost", || {
        let (status, out, err) = health(&api);
        (status.code() == Some(1)).then_some((out, err))
    });
    let id = super::client_id(&home, "client");
    assert!(
        err.contains(&format!(
            "unhealthy: client \"client\" ({id}) tunnel \"web\" lost"
        )),
        "{err}"
    );
    assert!(
        out.contains(&format!(
            "\n  client \"client\" ({id}) tunnel \"web\": lost since "
        )),
        "{out}"
    );
    let h = super::get(&api, "/api/v1/health");
    let doc = crate::openapi::Doc::load();
    let schema = doc.response_schema("/api/v1/health", 200, "application/json");
    assert_eq!(doc.check(&schema, &h), Vec::<String>::new());
    let lost = &h["data"]["lost_links"];
    assert_eq!(lost.as_array().map(Vec::len), Some(1), "{lost}");
    assert_eq!(lost[0]["client_id"], id.as_str());
    assert_eq!(lost[0]["client"], "client");
    assert_eq!(lost[0]["tunnel"], "web");

    // Its key revoked, the lost link goes, and the router is healthy again.
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, &other).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    router.wait_stderr("(the file changed): 1 in all, 0 added, 1 removed");
    let out = wait_for("the lost link to be forgotten", || {
        let (status, out, _) = health(&api);
        status.success().then_some(out)
    });
    assert!(out.contains("client links 0 connected, 0 lost"), "{out}");
    let h = super::get(&api, "/api/v1/health");
    assert_eq!(h["data"]["lost_links"], serde_json::json!([]));
    let text = crate::http::curl("GET", &format!("{api}/metrics"), Some(TOKEN), &[]).body;
    assert!(!text.contains("conduit_client_link_up{"), "{text}");

    // An answer that is an API error, not a verdict on health: 76, not 1.
    let (status, _, err) = health(&format!("{api}/nowhere"));
    assert_code(status, 76, &err);
    assert!(
        err.contains("answered 404 Not Found: no such endpoint; the API lives under /api/v1"),
        "{err}"
    );
}

#[test]
fn stats_router_lists_every_client_not_only_the_first_page() {
    let home = Home::with_keys();
    let client = home.ok(&["keys", "show", "--name", "client"]);
    let b64 = client
        .split_whitespace()
        .next()
        .unwrap()
        .strip_prefix("ed25519:")
        .unwrap()
        .to_owned();
    // 600 more keys (the real one's with its first four characters changed), named to
    // sort before "client", which the API lists on its second page of 500.
    let mut file = String::new();
    for i in 0..600 {
        let head = format!("{i:04}");
        if b64.starts_with(&head) {
            continue;
        }
        file.push_str(&format!("ed25519:{head}{} a{head}\n", &b64[4..]));
    }
    let listed = file.lines().count() + 1;
    file.push_str(&client);
    std::fs::write(home.path().join("authorized_clients"), file).unwrap();
    let source = sources::echo();
    let (_router, raddr, api) = router_api(&home, &[source.to_string()], &[]);
    let (_tunnel, taddr) = home.tunnel(Engine::Epoll, raddr, &source.to_string());
    echo_through(taddr, 2000, 6);

    let out = wait_for("the router's stats to count the stream", || {
        let out = home.ok(&["stats", "--router", &api, "--api-token", TOKEN]);
        out.contains("in 2.0 kB  out 2.0 kB").then_some(out)
    });
    // The summary, the header, and every client once.
    assert_eq!(out.lines().count(), 2 + listed, "{out}");
    let ours: Vec<&str> = out.lines().filter(|l| l.starts_with("client ")).collect();
    assert_eq!(ours.len(), 1, "{out}");
    assert!(ours[0].starts_with("client  2.0 kB  2.0 kB  "), "{out}");
    let json: Value = serde_json::from_str(&home.ok(&[
        "stats",
        "--router",
        &api,
        "--api-token",
        TOKEN,
        "--format",
        "json",
    ]))
    .unwrap();
    let items = json["items"].as_array().unwrap();
    assert_eq!(items.len(), listed);
    assert_eq!(items[listed - 1]["name"], "client");
    assert_eq!(items[listed - 1]["bytes"]["in"], 2000);
    assert!(json.get("pagination").is_none(), "{json}");
}

/// An API whose every page says more follow, each with an item: `stats --router`
/// stops after a bounded number of pages and says the answer is not one it can use
/// (exit 76), instead of reading forever.
#[test]
fn stats_router_stops_reading_pages_that_never_end() {
    use std::io::{Read, Write};
    let home = Home::with_keys();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = served.clone();
    std::thread::spawn(move || {
        let body = r#"{"success":true,"data":{"items":[{"id":"c"}],"pagination":{"page":1,"total_pages":200000}},"error":null,"timestamp":"2026-12-06T00:00:00Z","request_id":"r"}"#;
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { return };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && c.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _ = write!(
                c,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let (status, _, err) = home.run(&["stats", "--router", &addr.to_string()]);
    assert_code(status, 76, &err);
    assert_eq!(
        err,
        format!(
            "conduit: error: http://{addr} lists more than 1000 pages of 500 under \
             /api/v1/stats/traffic (200000 pages): is it a Conduit router's API?\n"
        )
    );
    assert_eq!(served.load(std::sync::atomic::Ordering::Relaxed), 1000);
}

/// The error a process stops on is its log's last event: a JSON log on stderr gets
/// it as JSON (no plain line a collector cannot parse), a log file gets it besides
/// the plain line on stderr, and `start` reads a background tunnel's JSON log for
/// the reason it tells.
#[test]
fn a_process_that_cannot_start_says_why_in_its_log_format() {
    let home = Home::with_keys();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let why = format!(
        "cannot listen on {addr}: Address already in use (os error 98); something already \
         listens there: pick another --bind"
    );
    let json_lines = |text: &str| -> Vec<Value> {
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
            .collect()
    };
    let assert_fatal = |event: &Value, message: &str, code: u64| {
        assert_eq!(event["level"], "ERROR", "{event}");
        assert_eq!(event["fields"]["message"], message, "{event}");
        assert_eq!(event["fields"]["exit_code"], code, "{event}");
        assert_eq!(event["fields"]["fatal"], true, "{event}");
    };

    // JSON on stderr: every line is JSON, the last one the reason.
    let (status, _, err) = home.run(&["router", "--bind", &addr, "--log-format", "json"]);
    assert_code(status, 69, &err);
    assert_fatal(json_lines(&err).last().unwrap(), &why, 69);

    // A configuration error, before the router knows its settings, too.
    let (status, _, err) = home.run(&[
        "router",
        "--bind",
        &addr,
        "--log-format",
        "json",
        "--authorized-keys",
        "/nonexistent/authorized_clients",
    ]);
    assert_code(status, 64, &err);
    let events = json_lines(&err);
    let message = events[0]["fields"]["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "router.authorized_keys: no authorized clients file at \
             /nonexistent/authorized_clients: create it"
        ),
        "{message}"
    );
    assert_fatal(&events[0], message, 64);

    // A text log file: the reason there and on stderr.
    let log = home.path().join("router.log");
    let (status, _, err) = home.run(&[
        "router",
        "--bind",
        &addr,
        "--log-file",
        log.to_str().unwrap(),
    ]);
    assert_code(status, 69, &err);
    assert_eq!(err, format!("conduit: error: {why}\n"));
    let text = std::fs::read_to_string(&log).unwrap();
    let last = text.lines().last().unwrap();
    assert!(
        last.ends_with(&format!(" ERROR {why} exit_code=69 fatal=true")),
        "{last}"
    );

    // A background tunnel logging JSON: `start` tells the tunnel's own reason.
    let router_key = home.key("router.pub");
    let (status, out, err) = home.run(&[
        "start",
        "--name",
        "web",
        "--log-format",
        "json",
        "--router",
        "127.0.0.1:9",
        "--router-key",
        router_key.to_str().unwrap(),
        "--source",
        "127.0.0.1:1",
        "--bind",
        &addr,
    ]);
    assert_code(status, 69, &err);
    assert_eq!(out, "");
    let events = json_lines(&err);
    assert_eq!(events.len(), 1, "{err}");
    assert_fatal(
        &events[0],
        &format!(
            "cannot listen on {addr}: Address already in use (os error 98); another program \
             (or another tunnel) already listens there: pick another --bind or stop the other \
             one (`conduit list` shows tunnels)"
        ),
        69,
    );
}

/// A foreground tunnel's `--log-file` is found by `conduit logs` after it stopped,
/// as a background tunnel's is.
#[test]
fn logs_finds_a_stopped_foreground_tunnels_log_file() {
    let home = Home::with_keys();
    let source = sources::echo();
    let (_router, raddr) = home.router(Engine::Epoll, &[source.to_string()]);
    let log = home.path().join("fg.log");
    let log_s = log.to_string_lossy();
    let (mut tunnel, _) = home.tunnel_with(
        Engine::Epoll,
        raddr,
        &source.to_string(),
        &["--name", "fg", "--log-file", &log_s],
    );
    assert_code(tunnel.stop(), 0, &tunnel.stderr());
    let out = home.ok(&["logs", "fg"]);
    assert_eq!(out, std::fs::read_to_string(&log).unwrap());
    assert!(out.contains("connected to router"), "{out}");
}

/// `stats --router` reads no home (none here is no mistake to note), and a URL it
/// refuses for holding a user and password is repeated without them.
#[test]
fn a_router_url_with_a_password_is_refused_without_repeating_it() {
    let home = Home::empty();
    let missing = home.path().join("none");
    for command in ["stats", "health"] {
        let out = crate::harness::output_of(
            home.cmd()
                .args([command, "--router", "http://ops:S3cret@127.0.0.1:9/"])
                .env("CONDUIT_HOME", &missing),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_code(out.status, 64, &err);
        assert_eq!(
            err,
            "conduit: error: --router \"http://…@127.0.0.1:9/\": a user or password in the URL \
             is not taken: give the API's token with --api-token (or CONDUIT_API_TOKEN); give \
             the router's API as host:port, http://host:port or https://host:port\n",
            "{command}"
        );
    }
}
