//! Metrics: values parsed with a Prometheus text-format parser match the traffic sent;
//! `promtool check metrics` accepts the router's and the tunnels' expositions.

use std::io::Write;
use std::process::Command;

use serde_json::{Value, json};

use super::{TOKEN, client_id, echo_through, get, router_api};
use crate::harness::{Engine, Home, addr_in, assert_code};
use crate::http::{curl, wait_for};
use crate::sources;

pub(super) fn scrape(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("the metrics parse")
}

/// The value of `metric` whose labels include `labels`.
pub(super) fn value(
    s: &prometheus_parse::Scrape,
    metric: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
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
    // Nothing relayed over UDP: no socket toward a source dropped anything.
    assert_eq!(
        value(&s, "conduit_udp_receive_buffer_drops_total", &[]),
        Some(0.0)
    );

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
    let router = [("tunnel", "tunnel"), ("router", &*raddr.to_string())];
    assert_eq!(value(&s, "conduit_router_up", &router), Some(1.0));
    assert_eq!(value(&s, "conduit_router_streams", &router), Some(0.0));
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

#[test]
fn a_tunnel_serves_its_metrics_over_http_with_metrics_bind() {
    let home = Home::with_keys();
    let source = sources::echo();
    let (_router, raddr) = home.router(Engine::Epoll, &[source.to_string()]);
    let t = home.tunnel_proc(
        Engine::Epoll,
        raddr,
        &source.to_string(),
        &["--name", "web", "--metrics-bind", "127.0.0.1:0"],
    );
    let taddr = addr_in(&t.wait_stdout("listening on"));
    let line = t.wait_stdout("serves metrics at");
    let url = line.split_whitespace().last().unwrap().to_owned();
    assert!(
        url.starts_with("http://127.0.0.1:") && url.ends_with("/metrics"),
        "{line}"
    );
    t.wait_stdout("connected to router");
    // Where the port 0 given landed, for status and list too.
    let status = home.ok(&["status"]);
    assert!(
        status.contains(&format!("\n  metrics: {url}\n")),
        "{status}"
    );
    let list: serde_json::Value =
        serde_json::from_str(&home.ok(&["list", "--format", "json"])).unwrap();
    assert_eq!(list[0]["metrics"], url.as_str(), "{list}");
    echo_through(taddr, 4321, 9);
    let s = wait_for("the tunnel's metrics to count the stream", || {
        let s = scrape(&curl("GET", &url, None, &[]).body);
        (value(
            &s,
            "conduit_connection_duration_seconds_count",
            &[("tunnel", "web")],
        ) == Some(1.0))
        .then_some(s)
    });
    let l = |dir| [("tunnel", "web"), ("direction", dir)];
    assert_eq!(
        value(&s, "conduit_bytes_transferred_total", &l("in")),
        Some(4321.0)
    );
    assert_eq!(
        value(&s, "conduit_bytes_transferred_total", &l("out")),
        Some(4321.0)
    );
    assert_eq!(
        value(&s, "conduit_router_link_up", &[("tunnel", "web")]),
        Some(1.0)
    );
    if promtool() {
        promtool_check(&curl("GET", &url, None, &[]).body);
    }
}

/// A background tunnel's metrics address, port 0 given, is in what `start` prints.
#[test]
fn start_says_where_a_background_tunnel_serves_its_metrics() {
    let home = Home::with_keys();
    let _cleanup = crate::manage::Cleanup(&home);
    let source = sources::echo();
    let (_router, raddr) = home.router(Engine::Epoll, &[source.to_string()]);
    let mut args = crate::manage::start_args(&home, &raddr.to_string(), &source.to_string(), "web");
    args.extend(["--metrics-bind".into(), "127.0.0.1:0".into()]);
    let (status, out, err) = crate::manage::run_args(&home, &args);
    assert_code(status, 0, &err);
    let line = out
        .lines()
        .find(|l| l.starts_with("metrics: "))
        .unwrap_or_else(|| panic!("no metrics line in {out}"));
    let url = line.trim_start_matches("metrics: ");
    assert!(
        url.starts_with("http://127.0.0.1:") && url.ends_with("/metrics") && !url.contains(":0/"),
        "{out}"
    );
    let text = curl("GET", url, None, &[]).body;
    assert!(
        text.contains("conduit_active_connections{tunnel=\"web\"} 0"),
        "{text}"
    );
}
