//! Operating a router: the REST API through a real HTTP client (curl) checked against
//! the OpenAPI document; in submodules its metrics through a Prometheus text parser
//! (and `promtool` when installed), source-health and client-link alerts to local
//! webhook receivers, logs, and the `stats`/`health`/`logs` commands.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use serde_json::{Value, json};

use crate::harness::{DEADLINE, Engine, Home, Proc, addr_in, assert_code};
use crate::http::{curl, wait_for};
use crate::openapi::Doc;
use crate::sources;

mod alerts;
mod bounds;
mod commands;
mod metrics;
mod tunnel_alerts;

pub const TOKEN: &str = "t0ken-for-tests";

/// A router with its API on (port 0, the test token) and `extra` flags.
pub fn router_api(home: &Home, allow: &[String], extra: &[&str]) -> (Proc, SocketAddr, String) {
    let mut args = vec!["--api-bind", "127.0.0.1:0", "--api-token", TOKEN];
    args.extend_from_slice(extra);
    let (p, addr) = home.router_with(Engine::Epoll, allow, &args);
    let api = addr_in(&p.wait_stdout("api listening on"));
    (p, addr, format!("http://{api}"))
}

pub fn get(api: &str, path: &str) -> Value {
    let a = curl("GET", &format!("{api}{path}"), Some(TOKEN), &[]);
    assert_eq!(a.status, 200, "{path}: {}", a.body);
    let v = a.json();
    assert_eq!(v["success"], true, "{v}");
    v
}

/// How many streams (or UDP flows) each router, by its API's URL, counts open
/// once together they count `total`; panics after the deadline.
pub fn open_on(apis: [&str; 2], total: u64) -> [u64; 2] {
    let active = |api: &str| {
        get(api, "/api/v1/stats/connections")["data"]["active"]
            .as_u64()
            .expect("a count of open connections")
    };
    wait_for(
        &format!("{total} open connections over the routers"),
        || {
            let counts = apis.map(active);
            (counts.iter().sum::<u64>() == total).then_some(counts)
        },
    )
}

/// Sends `len` bytes through an echo tunnel and reads them back; returns them.
pub fn echo_through(addr: SocketAddr, len: usize, seed: u64) {
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
pub fn client_id(home: &Home, name: &str) -> String {
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
    // Media types are case-insensitive: JSON asked in capitals is JSON.
    let a = curl(
        "GET",
        &format!("{api}/api/v1/metrics"),
        Some(TOKEN),
        &["Accept: APPLICATION/JSON"],
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["data"]["format"], "prometheus-text-0.0.4");
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
    // Both ends offer every suite by default, AES-128-GCM first.
    assert_eq!(c["tunnels"][0]["cipher_suite"], "TLS_AES_128_GCM_SHA256");
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
    // An id that is not text is no client's either.
    let garbled = curl(
        "GET",
        &format!("{api}/api/v1/clients/%FF"),
        Some(TOKEN),
        &[],
    );
    let v = check_error(&garbled, 404, "not_found");
    assert_eq!(
        v["error"]["message"],
        "no client with that id (it is not text); GET /api/v1/clients lists the ids"
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
    let v = check_error(&post, 405, "method_not_allowed");
    assert_eq!(
        v["error"]["message"],
        "method not allowed: only GET and HEAD are served here (the API is read-only)"
    );
    assert!(
        post.headers
            .to_ascii_lowercase()
            .contains("\nallow: get,head\r\n"),
        "{}",
        post.headers
    );
    // The id's hex in upper case names the same client.
    let upper = get(
        &api,
        &format!("/api/v1/clients/{}", id.to_ascii_uppercase()),
    );
    assert_eq!(upper["data"]["id"], id.as_str());
    let nowhere = curl("GET", &format!("{api}/api/v2/info"), Some(TOKEN), &[]);
    check_error(&nowhere, 404, "not_found");
}

#[test]
fn the_api_is_off_by_default_and_refuses_to_run_open_on_a_public_address() {
    let home = Home::with_keys();
    let (mut p, _) = home.router(Engine::Epoll, &[]);
    assert_code(p.stop(), 0, &p.stderr());
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
    assert!(
        err.contains(
            "api.auth: the API may run without a token only on a loopback address, and \
             api.bind is 0.0.0.0:0; bind it to 127.0.0.1 (or ::1), or set a token (--api-token, \
             CONDUIT_API_TOKEN) and drop auth = false (--api-no-auth) (cli --api-no-auth)\n"
        ),
        "{err}"
    );
    let (status, _, err) = home.run(&[
        "router",
        "--bind",
        "127.0.0.1:0",
        "--api-bind",
        "0.0.0.0:0",
        "--api-no-auth",
        "--api-token",
        "t0ken",
    ]);
    assert_code(status, 64, &err);
    assert!(
        err.contains(
            "api.bind is 0.0.0.0:0; bind it to 127.0.0.1 (or ::1), or drop auth = false \
             (--api-no-auth) so that the token set is required (cli --api-no-auth)\n"
        ),
        "{err}"
    );
    assert!(!err.contains("t0ken"), "{err}");
    let (status, _, err) = home.run(&["router", "--bind", "127.0.0.1:0", "--api"]);
    assert_code(status, 64, &err);
    assert!(
        err.contains("api.token: the API is on and needs a token"),
        "{err}"
    );
    // A token no HTTP client can send as it is (a newline kept from its file) is
    // refused, without being shown.
    let (status, _, err) = home.run(&[
        "router",
        "--bind",
        "127.0.0.1:0",
        "--api",
        "--api-token",
        "t0ken\n",
    ]);
    assert_code(status, 64, &err);
    assert!(
        err.contains(
            "api.token: the API token begins or ends with whitespace (a newline kept from \
             the file it was read from?), which no HTTP client sends: remove it"
        ),
        "{err}"
    );
    assert!(!err.contains("t0ken"), "{err}");
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

#[test]
fn the_router_keeps_a_traffic_history_across_restarts() {
    let home = Home::with_keys();
    let source = sources::echo();
    let file = home.path().join("history.jsonl");
    let in_file = format!("api.history_file={}", file.display());
    let extra = ["--set", "api.history_interval_secs=1", "--set", &in_file];
    let (mut router, raddr, api) = router_api(&home, &[source.to_string()], &extra);
    let (tunnel, taddr) = home.tunnel(Engine::Epoll, raddr, &source.to_string());
    echo_through(taddr, 100_000, 7);

    // Once a sample is taken after the last bytes were counted, the samples add up to
    // the traffic, exactly.
    let doc = Doc::load();
    let h = wait_for("the history to hold the echoed bytes", || {
        let v = get(&api, "/api/v1/stats/history");
        (v["data"]["summary"]["bytes"] == json!({"in": 100_000, "out": 100_000})).then_some(v)
    });
    let schema = doc.response_schema("/api/v1/stats/history", 200, "application/json");
    assert_eq!(doc.check(&schema, &h), Vec::<String>::new(), "{h:#}");
    let d = &h["data"];
    assert_eq!(d["interval_secs"], 1);
    assert_eq!(d["summary"]["connections"]["opened"], 1);
    assert_eq!(d["summary"]["connections"]["failed"], 0);
    let items = d["items"].as_array().unwrap();
    let sum: u64 = items
        .iter()
        .map(|s| s["bytes"]["in"].as_u64().unwrap())
        .sum();
    assert_eq!(sum, 100_000, "{d:#}");
    // Newest first.
    assert!(
        items
            .windows(2)
            .all(|w| w[0]["at"].as_str() >= w[1]["at"].as_str())
    );
    let bad = curl(
        "GET",
        &format!("{api}/api/v1/stats/history?window_secs=soon"),
        Some(TOKEN),
        &[],
    );
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(
        bad.json()["error"]["message"],
        "window_secs must be a whole number of seconds, at least 1, not \"soon\""
    );
    // A window longer than any number of seconds holds: all of the history.
    let all = curl(
        "GET",
        &format!("{api}/api/v1/stats/history?window_secs=99999999999999999999"),
        Some(TOKEN),
        &[],
    );
    assert_eq!(all.status, 200, "{}", all.body);
    assert_eq!(all.json()["data"]["window_secs"], u64::MAX);

    // The command line shows the samples and the summary.
    let out = home.ok(&["stats", "--router", &api, "--api-token", TOKEN, "--history"]);
    assert!(out.starts_with("AT "), "{out}");
    assert!(
        out.contains("in 100.0 kB (mean ")
            && out.contains("out 100.0 kB (mean ")
            && out.contains("; streams: 1 opened, 0 failed, up to "),
        "{out}"
    );
    let (status, _, err) = home.run(&["stats", "--history"]);
    assert_code(status, 64, &err);
    assert!(err.contains("--router <URL>"), "{err}");
    let (status, _, err) = home.run(&[
        "stats",
        "--router",
        &api,
        "--history",
        "--format",
        "prometheus",
    ]);
    assert_code(status, 64, &err);
    assert!(
        err.contains("--history prints a table or JSON, not Prometheus text"),
        "{err}"
    );

    // Started again on the same file, the router has the history it kept.
    drop(tunnel);
    assert_code(router.stop(), 0, &router.stderr());
    let (_router, _, api) = router_api(&home, &[source.to_string()], &extra);
    let d = get(&api, "/api/v1/stats/history")["data"].clone();
    assert_eq!(
        d["summary"]["bytes"],
        json!({"in": 100_000, "out": 100_000})
    );
}

/// A router that has taken no sample yet: a window is no help, and `stats` says
/// "yet" with or without one.
#[test]
fn history_before_the_first_sample_says_none_yet() {
    let home = Home::with_keys();
    let source = sources::echo();
    let extra = ["--set", "api.history_interval_secs=3600"];
    let (_router, _, api) = router_api(&home, &[source.to_string()], &extra);
    for window in [&[][..], &["--window", "2h"][..]] {
        let mut args = vec!["stats", "--router", &api, "--api-token", TOKEN, "--history"];
        args.extend_from_slice(window);
        assert_eq!(
            home.ok(&args),
            "no samples yet: the router takes one every 3600s (api.history_interval_secs)\n",
            "{window:?}"
        );
    }
}

/// A token on the router's command line is readable by every user of the host
/// (`ps`): the router says so, and where to put it instead, without printing it.
#[test]
fn a_token_given_as_a_flag_is_warned_about_and_never_logged() {
    let home = Home::with_keys();
    let hook = "http://127.0.0.1:9/hooks/SECRETPATH";
    let set = "alerts.webhook=http://127.0.0.1:9/hooks/SETPATH";
    let (p, _, _) = router_api(&home, &[], &["--alert-slack", hook, "--set", set]);
    p.wait_stderr("--api-token puts a secret on the command line");
    p.wait_stderr("--alert-slack puts a secret on the command line");
    // `--set` is the command line too.
    p.wait_stderr(
        "--set alerts.webhook=… puts a secret on the command line, where every user of this \
         host can read it (`ps`); give it in CONDUIT_ALERTS_WEBHOOK or [alerts] webhook in \
         --config instead",
    );
    let err = p.stderr();
    assert!(!err.contains("SETPATH"), "{err}");
    assert!(
        err.contains("give it in CONDUIT_API_TOKEN or [api] token in --config instead"),
        "{err}"
    );
    assert!(
        err.contains("give it in CONDUIT_ALERTS_SLACK or [alerts] slack in --config instead"),
        "{err}"
    );
    assert!(!err.contains(TOKEN), "{err}");
    assert!(!err.contains("SECRETPATH"), "{err}");
}

/// A request without the token, or with a wrong one, is refused, logged with its
/// peer, counted, and its connection closed: requests that kept it alive would
/// hold one of the API's connection slots for good.
#[test]
fn refused_api_requests_are_logged_counted_and_their_connections_closed() {
    let home = Home::with_keys();
    let (p, _, api) = router_api(&home, &[], &[]);
    let addr = api.trim_start_matches("http://");
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    // Two requests on one connection: the first is answered, and the connection
    // closed, so the second never is.
    let req = format!("GET /api/v1/info HTTP/1.1\r\nhost: {addr}\r\n\r\n");
    c.write_all(format!("{req}{req}").as_bytes()).unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer)
        .expect("the connection closed");
    assert_eq!(answer.matches("HTTP/1.1 401").count(), 1, "{answer}");
    assert!(answer.contains("connection: close\r\n"), "{answer}");

    let wrong = curl("GET", &format!("{api}/metrics"), Some("n0pe"), &[]);
    assert_eq!(wrong.status, 401);
    p.wait_stderr(&format!(
        "refused an API request from {} for /api/v1/info: no token; if it is yours, give it \
         the router's API token",
        c.local_addr().unwrap()
    ));
    p.wait_stderr("for /metrics: a wrong token; if it is yours");
    let text = curl("GET", &format!("{api}/metrics"), Some(TOKEN), &[]).body;
    let s = metrics::scrape(&text);
    assert_eq!(
        metrics::value(&s, "conduit_api_requests_refused_total", &[]),
        Some(2.0)
    );
    assert!(!p.stderr().contains("n0pe"), "{}", p.stderr());
}

/// A router that stops frees its API's port with its own at once, while its streams
/// drain: a successor can take both.
#[test]
fn a_stopping_router_frees_its_api_port_while_it_drains() {
    let home = Home::with_keys();
    let source = sources::echo();
    let (mut router, raddr, api) = router_api(&home, &[source.to_string()], &[]);
    let (_tunnel, taddr) = home.tunnel_with(Engine::Epoll, raddr, &source.to_string(), &[]);
    let mut held = TcpStream::connect(taddr).unwrap();
    held.set_read_timeout(Some(DEADLINE)).unwrap();
    held.write_all(b"held").unwrap();
    let mut buf = [0u8; 4];
    held.read_exact(&mut buf).unwrap();
    router.signal("TERM");
    router.wait_stderr("draining open streams");
    let api_addr = api.trim_start_matches("http://").to_owned();
    let taken = wait_for("the API's port to be free", || {
        std::net::TcpListener::bind(&api_addr).ok()
    });
    let data = std::net::TcpListener::bind(raddr).unwrap();
    // Still draining: the held stream is served.
    assert!(router.running(), "{}", router.stderr());
    held.write_all(b"more").unwrap();
    held.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"more");
    drop((taken, data, held));
    assert_code(router.wait_exit(), 0, &router.stderr());
}
