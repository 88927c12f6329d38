//! Alerts to local webhook receivers: a source stopped and started, a receiver that
//! hangs, a client link that breaks.

use serde_json::json;

use super::{client_id, echo_through, get, router_api};
use crate::harness::{Engine, Home, addr_in};
use crate::http::{Holding, Receiver, Switchable, wait_for};
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

/// A source that goes down and then goes unused for longer than `recent_secs` is
/// still watched: health stays degraded, and its outage ends with one `up` alert
/// (it used to be forgotten, read healthy, and be reported down again when next used).
#[test]
fn a_source_down_is_watched_until_it_is_back_even_when_unused() {
    let home = Home::with_keys();
    let rx = Receiver::start();
    let mut source = Switchable::start();
    let target = source.addr.to_string();
    let (_router, raddr, api) = router_api(
        &home,
        std::slice::from_ref(&target),
        &[
            "--alert-webhook",
            &rx.url("/hook"),
            "--set",
            "health.interval_secs=1",
            "--set",
            "health.recent_secs=8",
        ],
    );
    let (_tunnel, taddr) = home.tunnel(Engine::Epoll, raddr, &target);
    echo_through(taddr, 100, 1);
    wait_for("the source to be up", || {
        (get(&api, "/api/v1/health")["data"]["checks"]["sources"]["up"] == 1).then_some(())
    });
    source.down();
    rx.wait("a down alert", |r| !r.is_empty());
    // Well past recent_secs without a stream: probed all along, still down.
    let health = wait_for("probes long after the source was last used", || {
        let h = get(&api, "/api/v1/health")["data"].clone();
        (h["sources"][0]["consecutive_failures"].as_u64() >= Some(12)).then_some(h)
    });
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["sources"][0]["state"], "down");
    source.up();
    rx.wait("an up alert", |r| r.len() >= 2);
    assert_eq!(alert_events(&rx, "/hook"), vec!["source_down", "source_up"]);
    // Up and unused: forgotten after recent_secs, as any source no stream uses.
    wait_for("the unused source to be forgotten", || {
        let h = get(&api, "/api/v1/health")["data"].clone();
        (h["sources"] == json!([]) && h["status"] == "ok").then_some(())
    });
    assert_eq!(alert_events(&rx, "/hook"), vec!["source_down", "source_up"]);
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
