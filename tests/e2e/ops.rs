//! Operating a router: the REST API through a real HTTP client (curl), its metrics
//! through a Prometheus text parser (and `promtool` when installed), source-health
//! alerts to local webhook receivers, logs, and the `stats`/`health`/`logs` commands.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{DEADLINE, Engine, Home, Proc, addr_in, assert_code};
use crate::http::{Receiver, Switchable, black_hole, curl, wait_for};
use crate::openapi::Doc;
use crate::sources;

const TOKEN: &str = "t0ken-for-tests";

/// A router with its API on (port 0, the test token) and `extra` flags.
fn router_api(home: &Home, allow: &[String], extra: &[&str]) -> (Proc, SocketAddr, String) {
    let mut args = vec!["--api-bind", "127.0.0.1:0", "--api-token", TOKEN];
    args.extend_from_slice(extra);
    let (p, addr) = home.router_with(Engine::Epoll, allow, &args);
    let api = addr_in(&p.wait_stdout("api listening on"));
    (p, addr, format!("http://{api}"))
}

fn get(api: &str, path: &str) -> Value {
    let a = curl("GET", &format!("{api}{path}"), Some(TOKEN), &[]);
    assert_eq!(a.status, 200, "{path}: {}", a.body);
    let v = a.json();
    assert_eq!(v["success"], true, "{v}");
    v
}

/// Sends `len` bytes through an echo tunnel and reads them back; returns them.
fn echo_through(addr: SocketAddr, len: usize, seed: u64) {
    let data = sources::pattern(seed, len);
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    let w = {
        let mut c = c.try_clone().unwrap();
        let data = data.clone();
        std::thread::spawn(move || {
            c.write_all(&data).unwrap();
            c.shutdown(std::net::Shutdown::Write).unwrap();
        })
    };
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    w.join().unwrap();
    assert_eq!(back.len(), len);
    assert!(back == data, "echoed bytes differ");
}

/// The client id the API gives the key in `home`'s `keys/NAME.pub`.
fn client_id(home: &Home, name: &str) -> String {
    let text = std::fs::read_to_string(home.key(&format!("{name}.pub"))).unwrap();
    let b64 = text
        .split_whitespace()
        .next()
        .unwrap()
        .trim_start_matches("ed25519:");
    let raw = base64_decode(b64);
    hex::encode(&raw[..8])
}

fn base64_decode(s: &str) -> Vec<u8> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| *c != b'=') {
        acc = (acc << 6) | A.iter().position(|x| *x == c).unwrap() as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[test]
fn every_endpoint_answers_in_the_documented_envelope() {
    let home = Home::with_keys();
    // Two more authorized clients, for pagination.
    for n in ["extra1", "extra2"] {
        let line = home.ok(&["init", "--name", n]);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(home.path().join("authorized_clients"))
            .unwrap();
        writeln!(f, "{} {n}", line.split_whitespace().next().unwrap()).unwrap();
    }
    let source = sources::echo();
    let (_router, raddr, api) = router_api(&home, &[source.to_string()], &[]);
    let (_tunnel, taddr) = home.tunnel(Engine::Epoll, raddr, &source.to_string());
    echo_through(taddr, 10_000, 1);
    // One connection held open, so /stats/connections lists it.
    let mut held = TcpStream::connect(taddr).unwrap();
    held.set_read_timeout(Some(DEADLINE)).unwrap();
    held.write_all(b"ping").unwrap();
    let mut b = [0u8; 4];
    held.read_exact(&mut b).unwrap();

    let id = client_id(&home, "client");
    let doc = Doc::load();
    for path in doc.paths() {
        let url_path = path.replace("{id}", &id);
        let a = curl(
            "GET",
            &format!("{api}{url_path}"),
            Some(TOKEN),
            &["Accept: application/json"],
        );
        assert_eq!(a.status, 200, "GET {url_path}: {}", a.body);
        let v = a.json();
        let errors = doc.check(&doc.response_schema(&path, 200, "application/json"), &v);
        assert!(
            errors.is_empty(),
            "GET {url_path} does not match the document: {errors:#?}\n{v:#}"
        );
        if path != "/api/v1/openapi.json" {
            assert_eq!(
                a.header("x-request-id").as_deref(),
                v["request_id"].as_str()
            );
        }
    }

    // The held connection and the traffic of the first one (the router counts a chunk
    // just after relaying it: wait for the last one).
    let conns = wait_for("the held connection's bytes", || {
        let d = get(&api, "/api/v1/stats/connections")["data"].clone();
        (d["items"][0]["bytes"] == json!({"in": 4, "out": 4})).then_some(d)
    });
    assert_eq!(conns["active"], 1);
    assert_eq!(conns["items"][0]["client_id"], id);
    assert_eq!(conns["items"][0]["client"], "client");
    assert_eq!(conns["items"][0]["target"], source.to_string());
    let c = wait_for("the client's bytes", || {
        let c = get(&api, &format!("/api/v1/clients/{id}"))["data"].clone();
        (c["bytes"]["out"] == 10_004).then_some(c)
    });
    assert_eq!(c["name"], "client");
    assert_eq!(c["state"], "connected");
    assert_eq!(c["tunnels"][0]["state"], "connected");
    assert_eq!(c["bytes"], json!({"in": 10_004, "out": 10_004}));
    assert_eq!(c["connections"]["active"], 1);

    // Pagination: three clients, two a page, by name.
    let p2 = get(&api, "/api/v1/clients?page=2&per_page=2")["data"].clone();
    assert_eq!(
        p2["pagination"],
        json!({"page": 2, "per_page": 2, "total": 3, "total_pages": 2})
    );
    assert_eq!(p2["items"].as_array().unwrap().len(), 1);
    assert_eq!(p2["items"][0]["name"], "extra2");
    let t = get(&api, "/api/v1/stats/traffic?per_page=1")["data"].clone();
    assert_eq!(t["pagination"]["total_pages"], 3);
    assert_eq!(t["bytes"], json!({"in": 10_004, "out": 10_004}));

    // Errors: each in the envelope, matching the document.
    let err_schema = json!({"$ref": "#/components/schemas/ErrorEnvelope"});
    let check_error = |a: &crate::http::Answer, status: u16, code: &str| {
        assert_eq!(a.status, status, "{}", a.body);
        let v = a.json();
        assert_eq!(doc.check(&err_schema, &v), Vec::<String>::new(), "{v}");
        assert_eq!(v["error"]["code"], code);
        v
    };
    let none = curl("GET", &format!("{api}/api/v1/info"), None, &[]);
    let v = check_error(&none, 401, "unauthorized");
    assert_eq!(
        v["error"]["message"],
        "this API requires a token: send `Authorization: Bearer TOKEN` with the router's API token"
    );
    assert_eq!(
        none.header("www-authenticate").as_deref(),
        Some("Bearer realm=\"conduit\"")
    );
    let wrong = curl("GET", &format!("{api}/api/v1/clients"), Some("nope"), &[]);
    check_error(&wrong, 401, "unauthorized");
    let missing = curl(
        "GET",
        &format!("{api}/api/v1/clients/0000000000000000"),
        Some(TOKEN),
        &[],
    );
    let v = check_error(&missing, 404, "not_found");
    assert_eq!(
        v["error"]["message"],
        "no client with id \"0000000000000000\"; GET /api/v1/clients lists the ids"
    );
    let bad = curl(
        "GET",
        &format!("{api}/api/v1/clients?per_page=501"),
        Some(TOKEN),
        &[],
    );
    let v = check_error(&bad, 400, "invalid_parameter");
    assert_eq!(
        v["error"]["message"],
        "per_page must be a whole number from 1 to 500, not \"501\""
    );
    let post = curl("POST", &format!("{api}/api/v1/info"), Some(TOKEN), &[]);
    check_error(&post, 405, "method_not_allowed");
    let nowhere = curl("GET", &format!("{api}/api/v2/info"), Some(TOKEN), &[]);
    check_error(&nowhere, 404, "not_found");
}

fn scrape(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("the metrics parse")
}

/// The value of `metric` whose labels include `labels`.
fn value(s: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .filter(|x| x.metric == metric)
        .find(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            other => panic!("{metric} is not a single value: {other:?}"),
        })
}

crate::both_engines!(metrics_count_the_bytes_sent, |engine: Engine| {
    let home = Home::with_keys();
    let source = sources::echo();
    let (_router, raddr) = home.router_with(
        engine,
        &[source.to_string()],
        &["--api-bind", "127.0.0.1:0", "--api-no-auth"],
    );
    let api = format!(
        "http://{}",
        addr_in(&_router.wait_stdout("api listening on"))
    );
    let (_tunnel, taddr) = home.tunnel(engine, raddr, &source.to_string());
    const N: usize = 3 << 20;
    echo_through(taddr, N, 7);
    echo_through(taddr, 1000, 8);
    let sent = (N + 1000) as f64;
    let id = client_id(&home, "client");
    let labels = |dir| [("client_id", id.as_str()), ("direction", dir)];
    // The second stream's close is recorded just after its last byte: wait for it.
    let s = wait_for("the metrics to count both streams", || {
        let text = curl("GET", &format!("{api}/metrics"), None, &[]).body;
        let s = scrape(&text);
        (value(&s, "conduit_bytes_transferred_total", &labels("out")) == Some(sent)
            && value(&s, "conduit_connection_duration_seconds_count", &[]) == Some(2.0))
        .then_some(s)
    });
    assert_eq!(
        value(&s, "conduit_bytes_transferred_total", &labels("in")),
        Some(sent)
    );
    let client = [("client_id", id.as_str()), ("client", "client")];
    assert_eq!(value(&s, "conduit_connections_total", &client), Some(2.0));
    assert_eq!(value(&s, "conduit_active_connections", &client), Some(0.0));
    assert_eq!(
        value(
            &s,
            "conduit_client_link_up",
            &[("client_id", id.as_str()), ("tunnel", "tunnel")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &s,
            "conduit_errors_total",
            &[("kind", "source_unreachable")]
        ),
        Some(0.0)
    );
    assert!(value(&s, "conduit_handshake_duration_seconds_count", &[]).unwrap() >= 2.0);

    // The source becomes "up" after the first probe (every 5 s by default).
    let s = wait_for("the source to be probed", || {
        let s = scrape(&curl("GET", &format!("{api}/api/v1/metrics"), None, &[]).body);
        value(&s, "conduit_source_up", &[("source", &source.to_string())]).map(|_| s)
    });
    assert_eq!(
        value(&s, "conduit_source_up", &[("source", &source.to_string())]),
        Some(1.0)
    );
});

#[test]
fn tunnel_metrics_and_stats_count_the_bytes_sent() {
    let home = Home::with_keys();
    let source = sources::echo();
    let (_router, raddr) = home.router(Engine::Epoll, &[source.to_string()]);
    let (_tunnel, taddr) = home.tunnel(Engine::Epoll, raddr, &source.to_string());
    echo_through(taddr, 100_000, 3);
    // A foreground tunnel registers too: `conduit stats` reaches it over its control socket.
    let s = wait_for("the tunnel's metrics to count the stream", || {
        let out = home.ok(&["stats", "--format", "prometheus"]);
        let s = scrape(&out);
        (value(
            &s,
            "conduit_connection_duration_seconds_count",
            &[("tunnel", "tunnel")],
        ) == Some(1.0))
        .then_some(s)
    });
    let l = |dir| [("tunnel", "tunnel"), ("direction", dir)];
    assert_eq!(
        value(&s, "conduit_bytes_transferred_total", &l("in")),
        Some(100_000.0)
    );
    assert_eq!(
        value(&s, "conduit_bytes_transferred_total", &l("out")),
        Some(100_000.0)
    );
    assert_eq!(
        value(&s, "conduit_connections_total", &[("tunnel", "tunnel")]),
        Some(1.0)
    );
    assert_eq!(
        value(&s, "conduit_router_link_up", &[("tunnel", "tunnel")]),
        Some(1.0)
    );
    let stats: Value = serde_json::from_str(&home.ok(&["stats", "--format", "json"])).unwrap();
    assert_eq!(stats[0]["bytes"], json!({"in": 100_000, "out": 100_000}));
    assert_eq!(stats[0]["connections"]["total"], 1);
}

fn promtool() -> bool {
    let found = Command::new("promtool").arg("--version").output().is_ok();
    if !found {
        assert!(
            std::env::var_os("CONDUIT_E2E_REQUIRE_TOOLS").is_none(),
            "promtool is required here but not installed (Debian package prometheus)"
        );
        eprintln!("promtool not installed (Debian package prometheus); skipping this check");
    }
    found
}

fn promtool_check(text: &str) {
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- metrics ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_accepts_router_and_tunnel_metrics() {
    if !promtool() {
        return;
    }
    let home = Home::with_keys();
    let source = sources::echo();
    let (_router, raddr, api) = router_api(
        &home,
        &[source.to_string()],
        &["--alert-webhook", "http://127.0.0.1:9/x"],
    );
    let (_tunnel, taddr) = home.tunnel(Engine::Epoll, raddr, &source.to_string());
    echo_through(taddr, 5000, 2);
    wait_for("the source to be probed", || {
        let h = get(&api, "/api/v1/health");
        (h["data"]["checks"]["sources"]["up"] == 1).then_some(())
    });
    let text = curl("GET", &format!("{api}/metrics"), Some(TOKEN), &[]);
    assert_eq!(
        text.header("content-type").as_deref(),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    promtool_check(&text.body);
    promtool_check(&home.ok(&["stats", "--format", "prometheus"]));
}

fn alert_events(r: &Receiver, path: &str) -> Vec<String> {
    r.received()
        .iter()
        .filter(|x| x.path == path)
        .map(|x| match path {
            "/slack" => x.body["text"].as_str().unwrap_or_default().to_owned(),
            _ => x.body["event"].as_str().unwrap_or_default().to_owned(),
        })
        .collect()
}

#[test]
fn a_source_that_stops_and_starts_raises_one_down_and_one_up_alert_per_format() {
    let home = Home::with_keys();
    let rx = Receiver::start();
    let mut source = Switchable::start();
    let target = source.addr.to_string();
    // Default probe settings: the down alert must come within 30 s.
    let (router, raddr, api) = router_api(
        &home,
        std::slice::from_ref(&target),
        &[
            "--alert-webhook",
            &rx.url("/hook"),
            "--alert-slack",
            &rx.url("/slack"),
            "--set",
            "alerts.name=gw-test",
        ],
    );
    let (_tunnel, taddr) = home.tunnel(Engine::Epoll, raddr, &target);
    echo_through(taddr, 100, 1); // the source is now "in use"
    wait_for("the source to be up", || {
        (get(&api, "/api/v1/health")["data"]["checks"]["sources"]["up"] == 1).then_some(())
    });

    source.down();
    let stopped = Instant::now();
    rx.wait("a down alert on both sinks", |r| {
        r.iter().any(|x| x.path == "/hook") && r.iter().any(|x| x.path == "/slack")
    });
    assert!(
        stopped.elapsed() < Duration::from_secs(30),
        "the down alert took {:?}",
        stopped.elapsed()
    );
    let hook = rx
        .received()
        .into_iter()
        .find(|x| x.path == "/hook")
        .unwrap();
    let b = &hook.body;
    assert_eq!(b["event"], "source_down");
    assert_eq!(b["state"], "down");
    assert_eq!(b["severity"], "critical");
    assert_eq!(b["router"], "gw-test");
    assert_eq!(b["subject"], json!({"kind": "source", "target": target}));
    let msg = b["message"].as_str().unwrap();
    assert!(
        msg.starts_with(&format!("source {target} is down: "))
            && msg.ends_with("(2 failed probes in a row)"),
        "{msg}"
    );
    let health = get(&api, "/api/v1/health")["data"].clone();
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["sources"][0]["state"], "down");

    source.up();
    rx.wait("an up alert on both sinks", |r| r.len() >= 4);
    // Several more probes, then count: still exactly one of each.
    wait_for("more successful probes", || {
        let h = get(&api, "/api/v1/health");
        (h["data"]["sources"][0]["consecutive_successes"].as_u64() >= Some(4)).then_some(())
    });
    assert_eq!(alert_events(&rx, "/hook"), vec!["source_down", "source_up"]);
    let slack = alert_events(&rx, "/slack");
    assert_eq!(
        slack,
        vec![
            format!(":red_circle: *conduit router gw-test*: {msg}"),
            format!(
                ":large_green_circle: *conduit router gw-test*: source {target} is up again (2 successful probes in a row)"
            ),
        ]
    );
    router.wait_stderr("alert sent");
    assert!(
        !router.stderr().contains("/hook"),
        "a webhook URL was logged"
    );
}

#[test]
fn a_receiver_that_hangs_does_not_slow_the_tunnel_and_its_failure_is_logged() {
    let home = Home::with_keys();
    let hole = black_hole();
    let mut flaky = Switchable::start();
    let steady = sources::echo();
    let (router, raddr, api) = router_api(
        &home,
        &[flaky.addr.to_string(), steady.to_string()],
        &[
            "--alert-webhook",
            &format!("http://{hole}/hook?token=SECRET-IN-URL"),
            "--set",
            "health.interval_secs=1",
            "--set",
            "alerts.timeout_secs=2",
            "--set",
            "alerts.retries=1",
        ],
    );
    let (_t1, flaky_addr) = home.tunnel(Engine::Epoll, raddr, &flaky.addr.to_string());
    echo_through(flaky_addr, 10, 1);
    let steady_proc = home.tunnel_proc(
        Engine::Epoll,
        raddr,
        &steady.to_string(),
        &["--name", "steady"],
    );
    let steady_addr = addr_in(&steady_proc.wait_stdout("listening on"));
    steady_proc.wait_stdout("connected to router");
    flaky.down();
    wait_for("the source to be down", || {
        (get(&api, "/api/v1/health")["data"]["checks"]["sources"]["down"] == 1).then_some(())
    });
    // The alert is now stuck on the receiver; traffic and the API go on at full speed.
    for i in 0..20 {
        let t = Instant::now();
        echo_through(steady_addr, 20_000, i);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "a round trip took {:?} while an alert was pending",
            t.elapsed()
        );
    }
    router.wait_stderr("alert not delivered after 2 attempts");
    let err = router.stderr();
    assert!(err.contains(&format!("http://{hole}/…")), "{err}");
    assert!(
        !err.contains("SECRET-IN-URL"),
        "the webhook's token was logged:\n{err}"
    );
}

#[test]
fn a_client_link_that_breaks_is_reported_lost_then_back() {
    let home = Home::with_keys();
    let rx = Receiver::start();
    let source = sources::echo();
    let (_router, raddr, api) = router_api(
        &home,
        &[source.to_string()],
        &["--alert-webhook", &rx.url("/hook")],
    );
    let mut t = home.tunnel_proc(
        Engine::Epoll,
        raddr,
        &source.to_string(),
        &["--name", "web"],
    );
    t.wait_stdout("connected to router");
    t.signal("KILL"); // no goodbye
    t.wait_exit();
    let got = rx.wait("a client_lost alert", |r| !r.is_empty());
    let id = client_id(&home, "client");
    assert_eq!(got[0].body["event"], "client_lost");
    assert_eq!(
        got[0].body["subject"],
        json!({"kind": "client", "id": id, "name": "client", "tunnel": "web"})
    );
    let c = get(&api, &format!("/api/v1/clients/{id}"))["data"].clone();
    assert_eq!(c["state"], "lost");
    assert_eq!(c["tunnels"][0]["state"], "lost");
    let h = get(&api, "/api/v1/health")["data"].clone();
    assert_eq!(h["status"], "degraded");

    let t2 = home.tunnel_proc(
        Engine::Epoll,
        raddr,
        &source.to_string(),
        &["--name", "web"],
    );
    t2.wait_stdout("connected to router");
    let got = rx.wait("a client_back alert", |r| r.len() >= 2);
    assert_eq!(got[1].body["event"], "client_back");
    // A tunnel that stops on purpose says goodbye: disconnected, no alert.
    let mut t2 = t2;
    t2.stop();
    wait_for("the link to be disconnected", || {
        let c = get(&api, &format!("/api/v1/clients/{id}"))["data"].clone();
        (c["state"] == "disconnected").then_some(())
    });
    assert_eq!(rx.received().len(), 2);
}

#[test]
fn the_api_is_off_by_default_and_refuses_to_run_open_on_a_public_address() {
    let home = Home::with_keys();
    let (mut p, _) = home.router(Engine::Epoll, &[]);
    p.stop();
    let lines = p.stdout();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("router listening on "), "{lines:?}");
    let (status, _, err) = home.run(&[
        "router",
        "--bind",
        "127.0.0.1:0",
        "--api-bind",
        "0.0.0.0:0",
        "--api-no-auth",
    ]);
    assert_code(status, 64, &err);
    assert!(err.contains("api.auth: the API may run without a token only on a loopback address, and api.bind is 0.0.0.0:0"), "{err}");
    let (status, _, err) = home.run(&["router", "--bind", "127.0.0.1:0", "--api"]);
    assert_code(status, 64, &err);
    assert!(
        err.contains("api.token: the API is on and needs a token"),
        "{err}"
    );
}

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

#[test]
fn stats_health_and_logs_commands() {
    let home = Home::with_keys();
    let source = sources::echo();
    let (_router, raddr, api) = router_api(&home, &[source.to_string()], &[]);
    let raddr_s = raddr.to_string();
    let key = home.key("router.pub").to_string_lossy().into_owned();
    let src = source.to_string();
    let out = home.ok(&[
        "start",
        "--router",
        &raddr_s,
        "--router-key",
        &key,
        "--source",
        &src,
        "--bind",
        "127.0.0.1:0",
        "--name",
        "web",
        "--io-engine",
        "epoll",
    ]);
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
    let out = wait_for("the router's stats to count the stream", || {
        let out = home
            .cmd()
            .args(["stats", "--router", host])
            .env("CONDUIT_API_TOKEN", TOKEN)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains("in 2.0 kB  out 2.0 kB").then_some(text)
    });
    assert!(
        out.contains("\nclient  2.0 kB  2.0 kB  0     1      0"),
        "{out}"
    );
    let out = home.ok(&["health", "--router", &api, "--api-token", TOKEN]);
    assert!(out.starts_with("router: ok (up "), "{out}");

    // Local tunnels.
    let out = home.ok(&["stats"]);
    assert!(
        out.contains("\nweb     2.0 kB  2.0 kB  0     1      0"),
        "{out}"
    );
    let out = home.ok(&["health"]);
    assert_eq!(out, format!("web: router {raddr_s} link connected\n"));

    // The background tunnel's log.
    let out = home.ok(&["logs", "web"]);
    assert!(out.contains("connected to router"), "{out}");
    assert_eq!(home.ok(&["logs", "web", "-n", "1"]).lines().count(), 1);
    let follow = home.spawn(&["logs", "web", "-f", "-n", "0"]);
    // Something new in the log: a connection to a source the router refuses.
    let _ = home.ok(&["kill", "--tunnel", "web"]);
    follow.wait_stdout("stopping");
    let (status, _, err) = home.run(&["logs", "nope"]);
    assert_code(status, 64, &err);
    assert!(err.contains("no log for tunnel \"nope\""), "{err}");
}

#[test]
fn the_api_token_comes_from_the_config_file_or_the_environment() {
    let home = Home::with_keys();
    let file = home.path().join("router.toml");
    std::fs::write(
        &file,
        "[router]\nbind = \"127.0.0.1:0\"\n\n[api]\nenabled = true\nbind = \"127.0.0.1:0\"\ntoken = \"from-the-file\"\n\n[health]\ninterval_secs = 1\n",
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let f = file.to_string_lossy().into_owned();
    let p = home.spawn(&["router", "--config", &f, "--io-engine", "epoll"]);
    let api = format!("http://{}", addr_in(&p.wait_stdout("api listening on")));
    let a = curl(
        "GET",
        &format!("{api}/api/v1/health"),
        Some("from-the-file"),
        &[],
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["data"]["probe"]["interval_secs"], 1);
    assert_eq!(
        curl("GET", &format!("{api}/api/v1/health"), Some(TOKEN), &[]).status,
        401
    );
    drop(p);

    let p = Proc::spawn(
        home.cmd()
            .args([
                "router",
                "--bind",
                "127.0.0.1:0",
                "--api-bind",
                "127.0.0.1:0",
                "--io-engine",
                "epoll",
            ])
            .env("CONDUIT_API_TOKEN", "from-the-env"),
    );
    let api = format!("http://{}", addr_in(&p.wait_stdout("api listening on")));
    let a = curl(
        "GET",
        &format!("{api}/api/v1/info"),
        Some("from-the-env"),
        &[],
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["data"]["api"]["auth"], true);
}
