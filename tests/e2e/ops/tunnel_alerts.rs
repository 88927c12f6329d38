//! A tunnel's own alerts: its router link lost and back, to both webhook formats; a
//! background tunnel whose router never answers; alert URLs kept off command lines.

use serde_json::json;

use crate::harness::{Engine, Home, addr_in, assert_code, dead_port};
use crate::http::{Receiver, wait_for};
use crate::manage::{Cleanup, run_args, start_args};
use crate::sources;
use crate::users::{assert_echo, wait_for_echo};

use super::alerts::alert_events;
use super::echo_through;
use super::metrics::{scrape, value};

/// The webhook's path, with a token in its query as real ones often have.
const HOOK: &str = "/hook?token=SECRET-IN-URL";

#[test]
fn a_router_that_goes_away_is_reported_lost_once_then_back_once() {
    let home = Home::with_keys();
    let rx = Receiver::start();
    let source = sources::echo();
    let bind = format!("127.0.0.1:{}", dead_port());
    let allow = [source.to_string()];
    let (mut router, raddr) = home.router_at(Engine::Epoll, &bind, &allow, &[]);
    let (tunnel, taddr) = home.tunnel_with(
        Engine::Epoll,
        raddr,
        &source.to_string(),
        &[
            "--name",
            "web",
            "--alert-webhook",
            &rx.url(HOOK),
            "--alert-slack",
            &rx.url("/slack"),
            "--alert-after",
            "1",
        ],
    );
    echo_through(taddr, 100, 1);

    router.signal("KILL");
    router.wait_exit();
    let got = rx.wait("a router_lost alert on both sinks", |r| {
        r.iter().any(|x| x.path == HOOK) && r.iter().any(|x| x.path == "/slack")
    });
    let hook = got.iter().find(|x| x.path == HOOK).unwrap();
    let b = &hook.body;
    assert_eq!(b["event"], "router_lost");
    assert_eq!(b["state"], "lost");
    assert_eq!(b["severity"], "critical");
    assert_eq!(b["tunnel"], "web");
    assert!(b["host"].as_str().is_some_and(|h| !h.is_empty()), "{b}");
    assert_eq!(b.get("router"), None, "{b}");
    assert_eq!(
        b["subject"],
        json!({"kind": "router", "routers": [raddr.to_string()]})
    );
    let msg = b["message"].as_str().unwrap();
    assert!(
        msg.starts_with("tunnel \"web\" has had no router link for ")
            && msg.ends_with("; its users are turned away until the link is back"),
        "{msg}"
    );
    let host = b["host"].as_str().unwrap().to_owned();

    (router, _) = home.router_at(Engine::Epoll, &bind, &allow, &[]);
    tunnel.wait_stdout_count("connected to router", 2);
    rx.wait("a router_back alert on both sinks", |r| r.len() >= 4);
    echo_through(taddr, 100, 2);
    assert_eq!(alert_events(&rx, HOOK), ["router_lost", "router_back"]);
    let slack = alert_events(&rx, "/slack");
    assert_eq!(slack.len(), 2, "{slack:?}");
    assert_eq!(
        slack[0],
        format!(":red_circle: *conduit tunnel web on {host}*: {msg}")
    );
    let back = format!(
        ":large_green_circle: *conduit tunnel web on {host}*: tunnel \"web\" is connected to \
         router {raddr} again, after "
    );
    assert!(
        slack[1].starts_with(&back) && slack[1].ends_with(" without a router link"),
        "{}",
        slack[1]
    );
    tunnel.wait_stderr("alert sent");
    let err = tunnel.stderr();
    assert!(
        !err.contains("SECRET-IN-URL"),
        "a webhook's token was logged:\n{err}"
    );
    drop(router);
}

#[test]
fn a_background_tunnel_whose_router_never_answers_reports_it_without_showing_the_url() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let rx = Receiver::start();
    let router = format!("127.0.0.1:{}", dead_port());
    let mut args = start_args(&home, &router, "127.0.0.1:9", "edge");
    let url = rx.url(HOOK);
    args.extend([
        "--alert-webhook".into(),
        url,
        "--alert-after".into(),
        "1".into(),
    ]);
    let (status, out, err) = run_args(&home, &args);
    assert_code(status, 0, &err);
    assert!(out.contains("retrying"), "{out}");
    let got = rx.wait("a router_lost alert", |r| !r.is_empty());
    let b = &got[0].body;
    assert_eq!(b["event"], "router_lost");
    assert_eq!(b["tunnel"], "edge");
    let msg = b["message"].as_str().unwrap();
    assert!(
        msg.starts_with("tunnel \"edge\" has not reached its router in ")
            && msg.contains(" since it started: "),
        "{msg}"
    );
    // The URL reached the tunnel process through its environment, not its command
    // line, which every local user can read.
    let list = crate::manage::list_json(&home);
    let pid = list[0]["pid"].as_u64().unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(cmdline.contains("--alert-after 1"), "{cmdline}");
    assert!(!cmdline.contains("SECRET-IN-URL"), "{cmdline}");
    // ... and `start` reads that variable: it says nothing of it being ignored.
    // Nor is the URL shown anywhere else: not in the log, which names the alert
    // sent, nor by `start`, `list` or `status`.
    let log_file = home.path().join("logs/edge.log");
    let log = wait_for("the tunnel to log the alert sent", || {
        std::fs::read_to_string(&log_file)
            .ok()
            .filter(|l| l.contains("alert sent"))
    });
    assert!(!log.contains("is ignored"), "{log}");
    let shown = [
        ("the log", log),
        ("start's output", format!("{out}{err}")),
        (
            "list",
            home.ok(&["list", "--format", "json", "--connections"]),
        ),
        ("status", home.ok(&["status"])),
        ("status as JSON", home.ok(&["status", "--format", "json"])),
    ];
    for (what, text) in shown {
        assert!(
            text.contains("edge"),
            "{what} does not name the tunnel: {text}"
        );
        assert!(
            !text.contains("SECRET-IN-URL"),
            "the webhook's token is in {what}:\n{text}"
        );
    }

    // Stopped while its link is lost: the alert is ended, as no router_back will be.
    assert_eq!(
        home.ok(&["kill", "--tunnel", "edge"]),
        format!(
            "stopped tunnel \"edge\" ({})\n",
            list[0]["id"].as_str().unwrap()
        )
    );
    let got = rx.wait("a tunnel_stopped alert", |r| r.len() >= 2);
    let b = &got[1].body;
    assert_eq!(
        (&b["event"], &b["state"], &b["severity"]),
        (
            &json!("tunnel_stopped"),
            &json!("stopped"),
            &json!("resolved")
        )
    );
    assert_eq!(b["subject"], json!({"kind": "router", "routers": [router]}));
    let msg = b["message"].as_str().unwrap();
    assert!(
        msg.starts_with("tunnel \"edge\" stopped while its router link was lost (for ")
            && msg
                .ends_with("): nothing watches that link any more, so no router_back will follow"),
        "{msg}"
    );
    assert_eq!(alert_events(&rx, HOOK), ["router_lost", "tunnel_stopped"]);
}

#[test]
fn a_bad_alert_url_is_refused_before_anything_starts() {
    let home = Home::with_keys();
    let mut args = start_args(&home, "127.0.0.1:9", "127.0.0.1:9", "bad");
    args.extend([
        "--alert-slack".into(),
        "hooks.slack.com/services/T0/B0/SECRET".into(),
    ]);
    let (status, out, err) = run_args(&home, &args);
    assert_code(status, 64, &err);
    assert_eq!(out, "");
    assert_eq!(
        err,
        "conduit: error: --alert-slack: not an http:// or https:// URL with a host (and a port \
         1-65535, if any); give the full webhook URL\n"
    );
}

#[test]
fn up_reports_each_tunnels_router_link_from_the_files_alerts_section() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let rx = Receiver::start();
    let file = home.path().join("conduit.toml");
    std::fs::write(
        &file,
        format!(
            "[router]\nhost = \"127.0.0.1\"\nport = {}\npublic_key = \"{}\"\n\n\
             [security]\nprivate_key_path = \"{}\"\n\n\
             [performance]\nworkers = 1\nio_engine = \"epoll\"\n\n\
             [alerts]\nwebhook = \"{}\"\nlost_after_secs = 1\nname = \"edge-7\"\n\n\
             [[tunnels]]\nname = \"a\"\nsource = \"127.0.0.1:9\"\nbind = \"127.0.0.1:0\"\n\n\
             [[tunnels]]\nname = \"b\"\nsource = \"127.0.0.1:9\"\nbind = \"127.0.0.1:0\"\n",
            dead_port(),
            home.key("router.pub").display(),
            home.key("client.key").display(),
            rx.url(HOOK),
        ),
    )
    .unwrap();
    let (status, out, err) = home.run(&["up", "-f", file.to_str().unwrap()]);
    assert_code(status, 0, &err);
    assert!(out.contains("retrying"), "{out}");
    let got = rx.wait("a router_lost alert from each tunnel", |r| r.len() >= 2);
    let mut from: Vec<(String, String, String)> = got
        .iter()
        .map(|x| {
            let s = |k: &str| x.body[k].as_str().unwrap_or_default().to_owned();
            (s("tunnel"), s("host"), s("event"))
        })
        .collect();
    from.sort();
    let want = |t: &str| (t.to_owned(), "edge-7".to_owned(), "router_lost".to_owned());
    assert_eq!(from, [want("a"), want("b")]);
}

/// The subjects and messages of the webhook's alerts so far, in order.
fn subjects_and_messages(rx: &Receiver) -> Vec<(String, serde_json::Value, String)> {
    rx.received()
        .iter()
        .filter(|x| x.path == "/hook")
        .map(|x| {
            (
                x.body["event"].as_str().unwrap_or_default().to_owned(),
                x.body["subject"].clone(),
                x.body["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Two routers, a tunnel "web" over both (`mode`: its balancing or failover flags)
/// alerting to a local receiver after a second, and the first router killed.
struct FirstRouterKilled {
    home: Home,
    rx: Receiver,
    allow: [String; 1],
    a: std::net::SocketAddr,
    b: std::net::SocketAddr,
    _second: crate::harness::Proc,
    tunnel: crate::harness::Proc,
    taddr: std::net::SocketAddr,
}

impl FirstRouterKilled {
    fn start(mode: &[&str], connected: impl Fn(&str, &str) -> String) -> Self {
        let home = Home::with_keys();
        let rx = Receiver::start();
        let allow = [sources::echo().to_string()];
        let (mut first, a) = home.router(Engine::Epoll, &allow);
        let (second, b) = home.router(Engine::Epoll, &allow);
        let hook = rx.url("/hook");
        let mut extra = vec![
            "--name",
            "web",
            "--alert-webhook",
            &hook,
            "--alert-after",
            "1",
        ];
        extra.extend(mode);
        let tunnel = home.tunnel_via(Engine::Epoll, &format!("{a},{b}"), &allow[0], &extra);
        let taddr = addr_in(&tunnel.wait_stdout("listening on"));
        tunnel.wait_stdout(&connected(&a.to_string(), &b.to_string()));
        first.signal("KILL");
        first.wait_exit();
        Self {
            home,
            rx,
            allow,
            a,
            b,
            _second: second,
            tunnel,
            taddr,
        }
    }

    /// Starts the first router again on its port.
    fn first_again(&self) -> crate::harness::Proc {
        let a = self.a.to_string();
        self.home.router_at(Engine::Epoll, &a, &self.allow, &[]).0
    }

    /// Checks the webhook got exactly `router_lost` then `router_back`, each about
    /// the first router alone, the loss saying the second serves meanwhile, the
    /// return that the tunnel uses the first again.
    fn assert_lost_then_back(&self) {
        let a = self.a;
        self.assert_lost_then(
            &format!("tunnel \"web\" is connected to router {a} again, after "),
            " without it",
        );
    }

    /// [`Self::assert_lost_then_back`], the return's message starting and ending as
    /// given.
    fn assert_lost_then(&self, back_starts: &str, back_ends: &str) {
        let (a, b) = (self.a, self.b);
        let got = subjects_and_messages(&self.rx);
        let only_a = json!({"kind": "router", "routers": [a.to_string()]});
        // Nothing about the second router, which stayed up.
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!((got[0].0.as_str(), &got[0].1), ("router_lost", &only_a));
        assert!(
            got[0].2.starts_with(&format!(
                "tunnel \"web\" has had no link to router {a} for "
            )) && got[0]
                .2
                .ends_with(&format!("; router {b} serves its users meanwhile")),
            "{}",
            got[0].2
        );
        assert_eq!((got[1].0.as_str(), &got[1].1), ("router_back", &only_a));
        assert!(
            got[1].2.starts_with(back_starts) && got[1].2.ends_with(back_ends),
            "{}",
            got[1].2
        );
    }
}

#[test]
fn a_balancing_tunnel_reports_the_one_router_it_lost_while_the_other_serves() {
    let t = FirstRouterKilled::start(&["--router-balance"], |a, b| {
        format!("connected to routers {a}, {b}")
    });
    t.rx.wait("a router_lost alert", |r| !r.is_empty());
    // The other router serves on meanwhile.
    assert_echo(t.taddr, b"through the second");
    let _first = t.first_again();
    t.rx.wait("a router_back alert", |r| r.len() >= 2);
    let (a, b) = (t.a, t.b);
    t.tunnel
        .wait_stdout_count(&format!("connected to routers {a}, {b}"), 2);
    t.assert_lost_then_back();
}

#[test]
fn a_tunnel_that_fails_over_reports_the_router_it_left_and_its_return() {
    let t = FirstRouterKilled::start(&["--router-failback", "1"], |a, _| {
        format!("connected to router {a}")
    });
    let (a, b) = (t.a, t.b);
    t.tunnel.wait_stdout(&format!("connected to router {b}"));
    wait_for_echo(t.taddr, b"through the second");
    t.rx.wait("a router_lost alert", |r| !r.is_empty());
    let _first = t.first_again();
    t.tunnel
        .wait_stdout_count(&format!("connected to router {a}"), 2);
    t.rx.wait("a router_back alert", |r| r.len() >= 2);
    assert_echo(t.taddr, b"through the first again");
    t.assert_lost_then_back();
}

#[test]
fn a_tunnel_that_fails_over_for_good_reports_the_router_it_left_back_on_standby() {
    let t = FirstRouterKilled::start(&["--router-failback", "0"], |a, _| {
        format!("connected to router {a}")
    });
    let (a, b) = (t.a, t.b);
    t.tunnel.wait_stdout(&format!("connected to router {b}"));
    wait_for_echo(t.taddr, b"through the second");
    t.rx.wait("a router_lost alert", |r| !r.is_empty());
    // `status` names the router in use, and why the other is not: at once, the
    // link's own failure (a reconnection that raced the kill may have been accepted
    // and then reset), then each check's, the port refusing.
    let refused =
        format!("\n  router {a} is not in use: its latest attempt failed: cannot reach router {a}");
    let status = wait_for("status naming the first router's refusal", || {
        let status = t.home.ok(&["status"]);
        status.contains(&refused).then_some(status)
    });
    assert!(
        status.contains(&format!("router {b} connected since")),
        "{status}"
    );
    // Healthy, the second router serving, and the first named as failing.
    let health = t.home.ok(&["health"]);
    assert_eq!(
        health,
        format!(
            "web: router {b} link connected (router {a} not in use, failing: cannot reach \
             router {a}: Connection refused (os error 111))\n"
        )
    );
    let mut first = t.first_again();
    t.tunnel.wait_stderr(&format!(
        "router {a} answers again: it stands by while router {b} serves this tunnel"
    ));
    t.rx.wait("a router_back alert", |r| r.len() >= 2);
    let status = t.home.ok(&["status"]);
    assert!(
        status.contains(&format!("router {b} connected since"))
            && status.contains(&format!(
                "\n  router {a} stands by: it has answered checks since "
            )),
        "{status}"
    );
    assert_eq!(
        t.home.ok(&["health"]),
        format!("web: router {b} link connected\n")
    );
    let s = scrape(&t.home.ok(&["stats", "--format", "prometheus"]));
    for (router, up, standby) in [(a, 0.0, 1.0), (b, 1.0, 0.0)] {
        let labels = [("tunnel", "web"), ("router", &*router.to_string())];
        assert_eq!(
            value(&s, "conduit_router_up", &labels),
            Some(up),
            "{router}"
        );
        assert_eq!(
            value(&s, "conduit_router_standby", &labels),
            Some(standby),
            "{router}"
        );
    }
    // The tunnel stays on the second router: it never connects to the first again.
    assert_echo(t.taddr, b"still through the second");
    assert_eq!(
        t.tunnel.stdout_count(&format!("connected to router {a}")),
        1
    );
    t.assert_lost_then(
        &format!("tunnel \"web\" reaches router {a} again, after "),
        &format!(" without it; it stands by while router {b} serves the tunnel's users"),
    );

    // Standing by, it is watched on: gone again, it is lost again.
    first.signal("KILL");
    first.wait_exit();
    t.tunnel.wait_stderr(&format!(
        "router {a}, standing by, no longer accepts connections: cannot reach router {a}"
    ));
    t.rx.wait("a second router_lost alert", |r| r.len() >= 3);
    let got = subjects_and_messages(&t.rx);
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[2].0, "router_lost");
    assert!(
        got[2].2.starts_with(&format!(
            "tunnel \"web\" has had no link to router {a} for "
        )) && got[2]
            .2
            .ends_with(&format!("; router {b} serves its users meanwhile")),
        "{}",
        got[2].2
    );
    assert_echo(t.taddr, b"and the second serves on");
}

#[test]
fn a_spare_router_that_is_down_is_reported_and_so_is_its_arrival() {
    let home = Home::with_keys();
    let rx = Receiver::start();
    let allow = [sources::echo().to_string()];
    let (_router, a) = home.router(Engine::Epoll, &allow);
    let spare = format!("127.0.0.1:{}", dead_port());
    let hook = rx.url("/hook");
    let extra = [
        "--name",
        "web",
        "--alert-webhook",
        &hook,
        "--alert-after",
        "1",
    ];
    let tunnel = home.tunnel_via(Engine::Epoll, &format!("{a},{spare}"), &allow[0], &extra);
    let taddr = addr_in(&tunnel.wait_stdout("listening on"));
    tunnel.wait_stdout(&format!("connected to router {a}"));
    rx.wait("a router_lost alert", |r| !r.is_empty());
    let _spare = home.router_at(Engine::Epoll, &spare, &allow, &[]).0;
    tunnel.wait_stderr(&format!(
        "router {spare} answers again: it stands by while router {a} serves this tunnel"
    ));
    rx.wait("a router_back alert", |r| r.len() >= 2);
    let got = subjects_and_messages(&rx);
    let only_spare = json!({"kind": "router", "routers": [spare]});
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!((got[0].0.as_str(), &got[0].1), ("router_lost", &only_spare));
    let lost = &got[0].2;
    assert!(
        lost.starts_with(&format!(
            "tunnel \"web\" has not reached router {spare} in "
        )) && lost.ends_with(&format!(
            " since it started: cannot reach router {spare}: Connection refused (os error \
             111); router {a} serves its users meanwhile"
        )),
        "{lost}"
    );
    assert_eq!((got[1].0.as_str(), &got[1].1), ("router_back", &only_spare));
    let back = &got[1].2;
    assert!(
        back.starts_with(&format!("tunnel \"web\" reaches router {spare}, "))
            && back.ends_with(&format!(
                " after it first failed; it stands by while router {a} serves the tunnel's \
                 users"
            )),
        "{back}"
    );
    // The tunnel never left the router it uses.
    assert_echo(taddr, b"still through the first");
    assert_eq!(
        tunnel.stdout_count(&format!("connected to router {spare}")),
        0
    );
}
