//! `conduit status`: each tunnel and its router link.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use conduit_controlplane::Home;
use conduit_controlplane::control::pb;
use conduit_controlplane::timestamp;
use serde_json::json;

use super::config::plural;
use conduit_controlplane::registry::Registry;

use super::tunnels::{Seen, died_detail, restart_in, survey, time, unreadable, waiting};
use super::{runtime, say};
use crate::args::{OutputFormat, StatusArgs};

pub(crate) fn run(home: &Home, a: &StatusArgs) -> Result<()> {
    let seen = runtime(1)?.block_on(survey(home, false))?;
    let held = waiting(home, &seen);
    let dead = Registry::new(home).died();
    if a.format == OutputFormat::Json {
        let dead: Vec<_> = (dead.iter())
            .map(|d| {
                json!({"id": d.tunnel_id, "name": d.name, "pid": d.pid, "router": d.config.router,
                       "status": "died", "found_at": d.found_at, "error": died_detail(d)})
            })
            .collect();
        let held = held.iter().map(|w| {
            json!({"id": null, "name": w.name, "pid": null, "router": w.config.router,
                   "status": "restarting", "supervisor_pid": w.supervisor.pid,
                   "failures": w.failures, "error": w.last_run,
                   "restart_at": time(w.restart_at)})
        });
        let v: Vec<_> = seen
            .iter()
            .map(|s| {
                let mut v = json!({"id": s.entry.tunnel_id, "name": s.entry.name, "pid": s.entry.pid,
                                   "router": s.entry.config.router,
                                   "metrics": s.entry.config.metrics.as_ref().map(|m| format!("http://{m}/metrics"))});
                match &s.status {
                    Ok(st) => {
                        let l = st.link.clone().unwrap_or_default();
                        let t = st.tunnel.clone().unwrap_or_default();
                        v["status"] = json!(t.status);
                        v["link"] = json!({"state": l.state, "detail": l.detail, "since": rfc3339(l.since),
                                           "next_attempt_at": rfc3339(l.next_attempt_at), "attempt": l.attempt,
                                           "knocking": l.knocking,
                                           "cipher_suite": (!l.cipher_suite.is_empty()).then_some(&l.cipher_suite)});
                        v["active_connections"] = json!(t.active_connections);
                        v["idle_channels"] = json!(st.idle_channels);
                        v["io_engine"] = json!(t.io_engine);
                        v["kernel_tls"] = json!({"state": st.kernel_tls,
                                                 "streams": st.kernel_tls_streams});
                        v["routers"] = st.routers.iter().map(|r| json!({"addr": r.addr, "up": r.up,
                            "streams": r.streams, "channels": r.channels,
                            "refused": (!r.refused.is_empty()).then_some(&r.refused),
                            "link": (!r.link.is_empty()).then_some(&r.link),
                            "error": (!r.error.is_empty()).then_some(&r.error),
                            "standby_since": rfc3339(r.standby_since),
                            "connected_since": rfc3339(r.connected_since)})).collect();
                        v["source_refused"] = json!((!st.source_refused.is_empty())
                            .then_some(&st.source_refused));
                    }
                    Err(e) => {
                        v["status"] = json!("unreachable");
                        v["error"] = json!(e);
                    }
                }
                v
            })
            .chain(held)
            .chain(dead)
            .collect();
        say(serde_json::to_string_pretty(&v)?);
        return unanswered(&seen);
    }
    if seen.is_empty() && held.is_empty() && dead.is_empty() {
        say("no tunnels running");
        return Ok(());
    }
    for d in &dead {
        say(format_args!(
            "{} ({}): died — {}",
            d.name,
            d.tunnel_id,
            died_detail(d)
        ));
    }
    for w in &held {
        say(format_args!(
            "{} (supervised by pid {}): restarting — its last run failed ({}); it starts \
             again {} (failure {} in a row)",
            w.name,
            w.supervisor.pid,
            w.last_run,
            restart_in(w),
            w.failures
        ));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    for s in &seen {
        let e = &s.entry;
        let head = format!("{} ({}, pid {})", e.name, e.tunnel_id, e.pid);
        let Ok(st) = &s.status else {
            say(format_args!(
                "{head}: unreachable: {}",
                s.status.as_ref().err().map_or("", String::as_str)
            ));
            continue;
        };
        let t = st.tunnel.clone().unwrap_or_default();
        let l = st.link.clone().unwrap_or_default();
        let link = match l.state.as_str() {
            // Balancing, `detail` names the routers whose links are up.
            "connected" if e.config.balance => {
                let (up, down) = balanced(&e.config.router, &l.detail);
                // Since the last of them linked up (a router that came back since
                // the tunnel's first link counts from its return).
                let since = (st.routers.iter())
                    .filter(|r| r.link == "connected")
                    .map(|r| r.connected_since)
                    .max()
                    .filter(|s| *s > 0)
                    .unwrap_or(l.since);
                format!(
                    "routers {} {}connected since {}{}{}{}",
                    up.join(", "),
                    // Since the latest: each router's own time is in the JSON.
                    if up.len() > 1 { "all " } else { "" },
                    time(since),
                    over(&l.cipher_suite),
                    match down.as_slice() {
                        [] => String::new(),
                        down => format!("; {} not connected (retrying)", down.join(", ")),
                    },
                    spread(&st.routers)
                )
            }
            // `detail` names the router in use, one of several when the tunnel has
            // fallbacks (older tunnels leave it empty).
            "connected" => format!(
                "router {} connected since {}{}",
                if l.detail.is_empty() {
                    &e.config.router
                } else {
                    &l.detail
                },
                time(l.since),
                over(&l.cipher_suite)
            ),
            "retrying" => format!(
                "router {} {} ({}); attempt {} failed, next {}",
                e.config.router,
                // It answered, and said no: not a router out of reach. Of several,
                // some may have refused and others be away: the detail says which.
                if l.detail.starts_with("the router refused") {
                    "refuses the link"
                } else if st
                    .routers
                    .iter()
                    .any(|r| !r.refused.is_empty() || r.link == "standby")
                {
                    // One refused, or one stands by (answering checks) while the
                    // tunnel moves to it: not every router is out of reach.
                    "not linked"
                } else {
                    "unreachable"
                },
                l.detail,
                l.attempt,
                // Whole seconds on the wire: the first waits are shorter. Past its
                // time, the attempt is under way (it may take its timeouts).
                match (l.next_attempt_at - now, l.knocking) {
                    (..=-1, _) => "under way".to_owned(),
                    (0, _) => "within a second".to_owned(),
                    (secs, false) => format!("in {secs}s"),
                    (secs, true) =>
                        format!("in {secs}s, or as soon as its port accepts (tried every second)"),
                }
            ),
            "refused" => format!(
                "router {} refused this tunnel: {}",
                e.config.router,
                super::refusal(&l.detail)
            ),
            _ => format!("router {} connecting", e.config.router),
        };
        say(format_args!(
            "{head}: {} — {link}; {}, {}, {} on {}{}; {} → {}{}",
            t.status,
            plural(t.active_connections, "open connection"),
            plural(st.idle_channels, "idle channel"),
            t.io_engine,
            plural(t.workers, "worker"),
            kernel_tls(&st.kernel_tls, st.kernel_tls_streams),
            e.config.shown_bind(),
            e.config.source,
            admission(&e.config)
        ));
        if !st.source_refused.is_empty() {
            say(format_args!(
                "  {}: {}",
                refusal_label(&e.config),
                st.source_refused
            ));
        }
        if let Some(m) = &e.config.metrics {
            say(format_args!("  metrics: http://{m}/metrics"));
        }
        if !e.config.balance && st.routers.len() > 1 {
            for line in idle_routers(&st.routers) {
                say(format_args!("  {line}"));
            }
        }
        for r in st.routers.iter().filter(|r| !r.refused.is_empty()) {
            say(format_args!(
                "  router {} refused this tunnel: {}",
                r.addr,
                super::refusal(&r.refused)
            ));
        }
    }
    unanswered(&seen)
}

/// Tunnels that did not answer fail the command (exit 1), as with `stats`: their
/// state is not known.
fn unanswered(seen: &[Seen]) -> Result<()> {
    let unread: Vec<(String, String, String)> = (seen.iter())
        .filter_map(|s| {
            let why = s.status.as_ref().err()?;
            Some((s.entry.name.clone(), s.entry.tunnel_id.clone(), why.clone()))
        })
        .collect();
    unreadable("status", &unread)
}

/// Seconds since the epoch as an RFC 3339 time, as `list` writes `created_at`; null
/// for 0 (not connected, or no attempt scheduled) and past year 9999.
fn rfc3339(secs: i64) -> Option<String> {
    let secs = u64::try_from(secs).ok().filter(|s| *s > 0)?;
    timestamp::unix_rfc3339(secs)
}

/// What a failing-over tunnel's routers not in use are doing: one line each for
/// those on standby, failing (unless they refused the tunnel, said apart) or not
/// tried yet; nothing from a tunnel too old to say.
/// What a tunnel's latest refusal is called: a TCP tunnel's is a stream's; a UDP
/// tunnel's may be a flow's, or the source's refusing its datagrams.
pub(crate) fn refusal_label(c: &conduit_controlplane::registry::EntryConfig) -> &'static str {
    match c.protocol.as_str() {
        "udp" => "latest refusal",
        _ => "latest stream refused",
    }
}

fn idle_routers(routers: &[pb::RouterLoad]) -> Vec<String> {
    routers
        .iter()
        .filter(|r| r.refused.is_empty())
        .filter_map(|r| match r.link.as_str() {
            "standby" => Some(format!(
                "router {} stands by: it has answered checks since {}{}",
                r.addr,
                time(r.standby_since),
                match r.streams {
                    0 => String::new(),
                    n => format!(
                        "; {} left there when the link moved finish{} over it",
                        plural(n, "stream"),
                        if n == 1 { "es" } else { "" }
                    ),
                }
            )),
            "retrying" => Some(format!(
                "router {} is not in use: its latest attempt failed: {}",
                r.addr, r.error
            )),
            "connecting" => Some(format!("router {} is not in use: not tried yet", r.addr)),
            _ => None,
        })
        .collect()
}

/// How a balancing tunnel's streams are spread: `; streams by router: A 12, B 11`
/// (nothing from a tunnel too old to say).
fn spread(routers: &[pb::RouterLoad]) -> String {
    if routers.is_empty() {
        return String::new();
    }
    let each: Vec<String> = routers
        .iter()
        .map(|r| format!("{} {}", r.addr, r.streams))
        .collect();
    format!("; streams by router: {}", each.join(", "))
}

/// The routers of a balancing tunnel (`routers`, as `--router` names them) whose
/// links are up (`connected`, as its link state's detail names them), and those
/// whose links are not.
pub(crate) fn balanced(routers: &str, connected: &str) -> (Vec<String>, Vec<String>) {
    let up: Vec<&str> = connected.split(", ").collect();
    routers
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
        .partition(|r| up.contains(&r.as_str()))
}

/// The link's cipher suite, ` over SUITE`; nothing from a tunnel that predates it.
fn over(cipher: &str) -> String {
    if cipher.is_empty() {
        String::new()
    } else {
        format!(" over {cipher}")
    }
}

/// What the source hears, who may come in and how long a quiet stream (or UDP flow)
/// stays, after the status line's `bind → source`: ` (PROXY v2 header; users from
/// 10.0.0.0/8 only; streams idle 300s closed)`; nothing when none is set.
fn admission(c: &conduit_controlplane::registry::EntryConfig) -> String {
    let mut said = Vec::new();
    if let Some(v) = &c.proxy_protocol {
        said.push(format!("PROXY {v} header"));
    }
    if !c.allow_from.is_empty() {
        said.push(format!("users from {} only", c.allow_from.join(", ")));
    }
    if c.stream_idle_timeout_secs > 0 {
        said.push(format!(
            "streams idle {}s closed",
            c.stream_idle_timeout_secs
        ));
    }
    if c.udp_idle_timeout_secs > 0 {
        said.push(format!("flows idle {}s ended", c.udp_idle_timeout_secs));
    }
    if said.is_empty() {
        String::new()
    } else {
        format!(" ({})", said.join("; "))
    }
}

/// The status line's words on kernel TLS; nothing where it does not apply (plain
/// transport, UDP) or the tunnel predates it.
fn kernel_tls(state: &str, streams: u64) -> String {
    match state {
        "on" if streams == 1 => ", kernel TLS on (1 stream so far)".into(),
        "on" => format!(", kernel TLS on ({streams} streams so far)"),
        "off" => ", kernel TLS off".into(),
        "absent" => ", no kernel TLS on this host".into(),
        _ => String::new(),
    }
}
