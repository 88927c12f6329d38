//! Alerts to local webhook receivers: a source stopped and started, a receiver that
//! hangs, a client link that breaks.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};

use serde_json::json;

use super::{TOKEN, client_id, echo_through, get, metrics, router_api};
use crate::harness::{DEADLINE, Engine, Home, Proc, addr_in, assert_code};
use crate::http::{Holding, Receiver, Switchable, curl, wait_for};
use crate::sources;

/// The events (Slack: the texts) `r` received on `path`, in order.
pub(super) fn alert_events(r: &Receiver, path: &str) -> Vec<String> {
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
    // Default probe settings: the down alert must come within the wait's deadline.
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
    rx.wait("a down alert on both sinks", |r| {
        r.iter().any(|x| x.path == "/hook") && r.iter().any(|x| x.path == "/slack")
    });
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
    assert_eq!(
        b["subject"],
        json!({"kind": "source", "target": target, "protocol": "tcp"})
    );
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

/// A source down that no stream has tried for `recent_secs` is let go as an unused
/// up one is: it leaves the health, the API and the metrics, with no alert (it did
/// not come back). One the operator listed in `health.sources` stays watched. (A
/// source found down used to be probed until it answered: one mistyped `--source`
/// kept the router degraded, and its series in the metrics, for good.)
#[test]
fn a_source_down_that_nobody_uses_is_let_go_unless_listed() {
    let home = Home::with_keys();
    let rx = Receiver::start();
    // Two ports that refuse: one a tunnel names, one the operator lists.
    let mut used_source = Switchable::start();
    used_source.down();
    let mut listed = Switchable::start();
    listed.down();
    let (used, listed) = (used_source.addr.to_string(), listed.addr.to_string());
    let (router, raddr, api) = router_api(
        &home,
        &[used.clone(), listed.clone()],
        &[
            "--alert-webhook",
            &rx.url("/hook"),
            "--set",
            "health.interval_secs=1",
            "--set",
            "health.recent_secs=3",
            "--set",
            &format!("health.sources={listed}"),
        ],
    );
    let (mut tunnel, taddr) = home.tunnel(Engine::Epoll, raddr, &used);
    // One user, turned away: the router tried the source.
    let mut user = TcpStream::connect(taddr).unwrap();
    user.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut rest = Vec::new();
    let _ = user.read_to_end(&mut rest);
    rx.wait("a down alert for each source", |r| r.len() >= 2);
    // Stopped on purpose (a goodbye): its link is no alert.
    assert_code(tunnel.stop(), 0, &tunnel.stderr());

    let health = wait_for("the unused source to be let go", || {
        let h = get(&api, "/api/v1/health")["data"].clone();
        (h["sources"].as_array().map(Vec::len) == Some(1)).then_some(h)
    });
    assert_eq!(health["sources"][0]["target"], listed.as_str());
    assert_eq!(health["sources"][0]["state"], "down");
    assert_eq!(health["status"], "degraded");
    router.wait_stderr(&format!("stopped probing source {used}, down since "));
    let text = curl("GET", &format!("{api}/metrics"), Some(TOKEN), &[]).body;
    let m = metrics::scrape(&text);
    let up = |source: &str| metrics::value(&m, "conduit_source_up", &[("source", source)]);
    assert_eq!(up(&used), None, "{text}");
    assert_eq!(up(&listed), Some(0.0), "{text}");
    // Probed on, the listed source is still down; the other says nothing more.
    wait_for("more probes of the listed source", || {
        let h = get(&api, "/api/v1/health")["data"].clone();
        (h["sources"][0]["consecutive_failures"].as_u64() >= Some(6)).then_some(())
    });
    let mut got: Vec<(String, String)> = rx
        .received()
        .iter()
        .map(|x| {
            (
                x.body["event"].as_str().unwrap_or_default().to_owned(),
                x.body["subject"]["target"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    got.sort();
    let mut want = vec![
        ("source_down".to_owned(), used.clone()),
        ("source_down".to_owned(), listed.clone()),
    ];
    want.sort();
    assert_eq!(got, want);

    // Used again while still down: watched again as down, with no second
    // `source_down` (its receiver holds the first) ...
    let (_tunnel, taddr) = home.tunnel(Engine::Epoll, raddr, &used);
    let mut user = TcpStream::connect(taddr).unwrap();
    user.set_read_timeout(Some(DEADLINE)).unwrap();
    let _ = user.read_to_end(&mut rest);
    wait_for("the used source to be probed again", || {
        let h = get(&api, "/api/v1/health")["data"].clone();
        let used = (h["sources"].as_array()?.iter()).find(|x| x["target"] == used.as_str())?;
        (used["state"] == "down" && used["consecutive_failures"].as_u64() >= Some(3)).then_some(())
    });
    assert_eq!(rx.received().len(), 2, "{:?}", rx.received());
    // ... and its return is told (once a stream reaches it: by then it may be let
    // go again, unused for `recent_secs`, and is known down all the same).
    used_source.up();
    crate::users::wait_for_echo(taddr, b"back");
    rx.wait("the used source's up alert", |r| r.len() >= 3);
    let last = &rx.received()[2].body;
    assert_eq!(
        (&last["event"], &last["subject"]["target"]),
        (&serde_json::json!("source_up"), &serde_json::json!(used))
    );
}

/// An alert whose receiver does not answer is pending while traffic goes on: every
/// round trip completes while the receiver still holds the alert's request and the
/// router still waits on it. Once the receiver fails it, the alert is tried once
/// more and its failure logged, without the URL's secret.
#[test]
fn a_receiver_that_hangs_does_not_slow_the_tunnel_and_its_failure_is_logged() {
    let home = Home::with_keys();
    let hook = Holding::start();
    let mut flaky = Switchable::start();
    let steady = sources::echo();
    let (router, raddr, api) = router_api(
        &home,
        &[flaky.addr.to_string(), steady.to_string()],
        &[
            "--alert-webhook",
            &format!("http://{}/hook?token=SECRET-IN-URL", hook.addr),
            "--set",
            "health.interval_secs=1",
            // Far beyond the test: the router waits on the held request until the
            // receiver lets it go.
            "--set",
            "alerts.timeout_secs=600",
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
    // The down alert is now stuck on the receiver; traffic goes on meanwhile.
    hook.wait_held(1);
    for i in 0..20 {
        echo_through(steady_addr, 20_000, i);
    }
    assert_eq!(
        hook.held_open(),
        1,
        "the router stopped waiting on the alert before the round trips were done"
    );
    assert_eq!(router.stderr_count("alert not delivered"), 0);
    let received = hook.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].path, "/hook?token=SECRET-IN-URL");
    assert_eq!(received[0].body["event"], "source_down");
    let msg = received[0].body["message"].as_str().unwrap().to_owned();

    hook.release();
    router.wait_stderr("alert not delivered after 2 attempts");
    assert_eq!(hook.received().len(), 2);
    let err = router.stderr();
    assert!(
        err.contains(&format!(
            "alert not delivered after 2 attempts: the receiver answered 503 Service \
             Unavailable; alert was: {msg}"
        )),
        "{err}"
    );
    assert!(err.contains(&format!("http://{}/…", hook.addr)), "{err}");
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

/// Alerts that wait on a stuck receiver keep only each subject's latest state: a
/// source that goes down and back while the receiver holds another alert is
/// reported once, up, and the `down` it replaced is counted as superseded (it used
/// to wait in line, and a full queue dropped the newest alerts instead).
#[test]
fn a_receiver_that_catches_up_is_told_each_subjects_latest_state() {
    let home = Home::with_keys();
    let hook = Holding::start();
    let mut a = Switchable::start();
    let mut b = Switchable::start();
    let (ta, tb) = (a.addr.to_string(), b.addr.to_string());
    let (router, _, api) = router_probing(&home, &hook, &[&ta, &tb]);
    wait_source(&api, &ta, "up");
    wait_source(&api, &tb, "up");
    // a's alert is held by the receiver; b's go down and up behind it.
    a.down();
    hook.wait_held(1);
    b.down();
    wait_source(&api, &tb, "down");
    b.up();
    wait_source(&api, &tb, "up");
    router.wait_stderr(&format!(
        "alert replaced before it went out by a newer one about the same subject (the \
         webhook receiver is slow or down): source {tb} is down"
    ));
    hook.release();
    router.wait_stderr_count("alert not delivered after 1 attempts", 2);
    let got: Vec<(String, String)> = hook
        .received()
        .iter()
        .map(|x| {
            (
                x.body["event"].as_str().unwrap_or_default().to_owned(),
                x.body["subject"]["target"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("source_down".to_owned(), ta.clone()),
            ("source_up".to_owned(), tb.clone()),
        ]
    );
    let text = curl("GET", &format!("{api}/metrics"), Some(TOKEN), &[]).body;
    let m = metrics::scrape(&text);
    let count = |result: &str| {
        metrics::value(
            &m,
            "conduit_alerts_total",
            &[("sink", "webhook"), ("result", result)],
        )
    };
    assert_eq!(
        [
            count("sent"),
            count("failed"),
            count("superseded"),
            count("dropped")
        ],
        [Some(0.0), Some(2.0), Some(1.0), Some(0.0)],
        "{text}"
    );
}

/// A router that probes `sources` every second and sends alerts to `hook`, which
/// it waits on for as long as the hook holds them, and does not retry.
fn router_probing(home: &Home, hook: &Holding, sources: &[&str]) -> (Proc, SocketAddr, String) {
    router_api(
        home,
        &[],
        &[
            "--alert-webhook",
            &format!("http://{}/hook", hook.addr),
            "--set",
            &format!("health.sources={}", sources.join(",")),
            "--set",
            "health.interval_secs=1",
            "--set",
            "alerts.timeout_secs=600",
            "--set",
            "alerts.retries=0",
        ],
    )
}

/// Waits until the router's API shows source `target` in state `want`.
fn wait_source(api: &str, target: &str, want: &str) {
    wait_for(&format!("{target} to be {want}"), || {
        let h = get(api, "/api/v1/health")["data"].clone();
        let sources = h["sources"].as_array().cloned().unwrap_or_default();
        sources
            .iter()
            .any(|s| s["target"] == target && s["state"] == want)
            .then_some(())
    })
}

/// A router that stops gives the alerts still queued a moment, then says how many
/// its receiver did not take: the one it holds and the one behind it (it used to
/// end without a word about them).
#[test]
fn a_stopping_router_says_how_many_alerts_were_not_delivered() {
    let home = Home::with_keys();
    let hook = Holding::start();
    let mut a = Switchable::start();
    let mut b = Switchable::start();
    let (ta, tb) = (a.addr.to_string(), b.addr.to_string());
    let (mut router, _, api) = router_probing(&home, &hook, &[&ta, &tb]);
    wait_source(&api, &ta, "up");
    wait_source(&api, &tb, "up");
    a.down();
    hook.wait_held(1);
    b.down();
    wait_source(&api, &tb, "down");
    assert_code(router.stop(), 0, &router.stderr());
    let err = router.stderr();
    assert!(
        err.contains(
            "stopped before every alert was delivered: 2 not sent after waiting 2s for them \
             (their receiver is slow or down; each was logged when raised)"
        ),
        "{err}"
    );
    let last = err.lines().last().unwrap_or_default();
    assert!(last.contains("router stopped (SIGTERM)"), "{err}");
    assert_eq!(hook.received().len(), 1);
}
