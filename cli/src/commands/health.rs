//! `conduit health`: are the tunnels here linked to their routers, or (with
//! `--router`) is a router's every source up and every client link present? Exits 1
//! when something is down, so scripts and probes can use it.

use anyhow::Result;
use conduit_controlplane::Home;
use serde_json::{Value, json};

use conduit_controlplane::registry::Registry;

use super::tunnels::{NO_ANSWER, died_detail, restart_in, survey, waiting};
use super::{api_client, runtime, say};
use crate::args::{HealthArgs, OutputFormat};

/// Something is down: exit 1 with this summary.
#[derive(Debug)]
pub(crate) struct Unhealthy(pub(crate) String);

impl std::fmt::Display for Unhealthy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unhealthy {}

pub(crate) fn run(home: &Home, a: &HealthArgs) -> Result<()> {
    let rt = runtime(1)?;
    if a.api.router.is_some() {
        return rt.block_on(router(a));
    }
    rt.block_on(local(home, a))
}

async fn local(home: &Home, a: &HealthArgs) -> Result<()> {
    let mut seen = survey(home, false).await?;
    let mut held = waiting(home, &seen);
    let mut dead = Registry::new(home).died();
    let mut rows = Vec::new();
    let mut down = Vec::new();
    // With --tunnel, only those; each one not running is unhealthy.
    let named =
        |s: &super::tunnels::Seen, t: &String| s.entry.name == *t || s.entry.tunnel_id == *t;
    if !a.tunnels.is_empty() {
        seen.retain(|s| a.tunnels.iter().any(|t| named(s, t)));
        held.retain(|w| a.tunnels.contains(&w.name));
        dead.retain(|d| a.tunnels.contains(&d.name) || a.tunnels.contains(&d.tunnel_id));
    }
    let missing: Vec<&String> = (a.tunnels.iter())
        .filter(|t| !seen.iter().any(|s| named(s, t)) && !held.iter().any(|w| w.name == **t))
        .filter(|t| !dead.iter().any(|d| d.name == **t || d.tunnel_id == **t))
        .collect();
    if seen.is_empty() && !home.root().exists() {
        // A probe pointed at a mistyped home would pass for ever.
        down.push(format!(
            "CONDUIT_HOME {} does not exist (no tunnel has run with it): point \
             CONDUIT_HOME at the tunnels' home",
            home.root().display()
        ));
    }
    for s in &seen {
        let label = super::status::refusal_label(&s.entry.config);
        let (state, detail, refused) = match &s.status {
            Ok(st) => {
                let l = st.link.clone().unwrap_or_default();
                (l.state, l.detail, st.source_refused.clone())
            }
            Err(e) => ("unreachable".to_owned(), e.clone(), String::new()),
        };
        // Ordered to stop (`kill`, `down`): it drains its open connections and
        // turns new users away, whatever its link.
        let stopping = matches!(&s.status, Ok(st) if st.tunnel.as_ref()
            .is_some_and(|t| t.status == "stopping"));
        // Routers that refused the tunnel while another serves it: an operator's
        // to fix (a key not authorized there, or not the key pinned for it).
        let refusing: Vec<String> = match &s.status {
            Ok(st) => (st.routers.iter())
                .filter(|r| !r.refused.is_empty())
                .map(|r| {
                    format!(
                        "router {} refused this tunnel: {}",
                        r.addr,
                        super::refusal(&r.refused)
                    )
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        // Connected, the detail names the router in use (one of several when the
        // tunnel has fallbacks).
        let (router, detail) = match state.as_str() {
            // Balancing: serving while any router is; those away are named.
            "connected" if s.entry.config.balance => {
                let (up, down) = super::status::balanced(&s.entry.config.router, &detail);
                let detail = match down.as_slice() {
                    [] => String::new(),
                    down => format!("{} not connected", down.join(", ")),
                };
                // The routers whose links are up; those away are in the detail.
                (up.join(","), detail)
            }
            "connected" if !detail.is_empty() => (detail, String::new()),
            _ => (s.entry.config.router.clone(), detail),
        };
        if stopping {
            down.push(format!("{} (stopping)", s.entry.name));
        } else if state != "connected" {
            down.push(format!("{} ({state})", s.entry.name));
        } else if !refused.is_empty() {
            // Linked, but its streams are turned away: users get nothing.
            down.push(format!("{} ({label})", s.entry.name));
        } else if !refusing.is_empty() {
            down.push(format!("{} (a router refused it)", s.entry.name));
        }
        let mut detail = match (detail.is_empty(), refused.is_empty()) {
            (_, true) => detail,
            (true, false) => format!("{label}: {refused}"),
            (false, false) => format!("{detail}; {label}: {refused}"),
        };
        // Failing over: a router not in use that fails would not take over from the
        // one in use: said, though the tunnel serves (as a balancing tunnel's
        // routers away are).
        let failing: Vec<String> = match &s.status {
            Ok(st) if !s.entry.config.balance => (st.routers.iter())
                .filter(|r| r.link == "retrying" && r.refused.is_empty())
                .map(|r| format!("router {} not in use, failing: {}", r.addr, r.error))
                .collect(),
            _ => Vec::new(),
        };
        if state == "connected" {
            for r in refusing.into_iter().chain(failing) {
                detail = if detail.is_empty() {
                    r
                } else {
                    format!("{detail}; {r}")
                };
            }
        }
        if stopping {
            let now = "stopping: it drains its open connections and turns new users away";
            detail = if detail.is_empty() {
                now.to_owned()
            } else {
                format!("{now}; {detail}")
            };
        }
        rows.push(json!({"name": s.entry.name, "id": s.entry.tunnel_id,
                         "router": router, "link": state, "detail": detail}));
    }
    // Supervised tunnels between two runs: down until their supervisor starts them.
    for w in &held {
        down.push(format!("{} (restarting)", w.name));
        rows.push(json!({"name": w.name, "id": "", "router": w.config.router,
                         "link": "restarting",
                         "detail": format!("its last run failed ({}); it starts again {}",
                                           w.last_run, restart_in(w))}));
    }
    // Tunnels whose processes died: down until started again (or forgotten).
    for d in &dead {
        down.push(format!("{} (died)", d.name));
        rows.push(
            json!({"name": d.name, "id": d.tunnel_id, "router": d.config.router,
                         "link": "died", "detail": died_detail(d)}),
        );
    }
    for t in missing {
        down.push(format!("{t} (not running)"));
        rows.push(json!({"name": t, "id": "", "router": "", "link": "not running", "detail": ""}));
    }
    if a.format == OutputFormat::Json {
        say(serde_json::to_string_pretty(&json!({
            "status": if down.is_empty() { "ok" } else { "degraded" },
            "tunnels": rows,
        }))?);
    } else if rows.is_empty() {
        say("no tunnels running");
    } else {
        for r in &rows {
            let detail = r["detail"].as_str().filter(|d| !d.is_empty());
            if r["link"] == "restarting" || r["link"] == "died" {
                say(format_args!(
                    "{}: not running: {}",
                    r["name"].as_str().unwrap_or("?"),
                    detail.unwrap_or_default()
                ));
                continue;
            }
            if r["link"] == "not running" {
                say(format_args!(
                    "{}: not running",
                    r["name"].as_str().unwrap_or("?")
                ));
                continue;
            }
            // The tunnel itself did not answer: nothing is known of its link.
            if r["link"] == "unreachable" {
                say(format_args!(
                    "{}: {}",
                    r["name"].as_str().unwrap_or("?"),
                    detail.unwrap_or(NO_ANSWER)
                ));
                continue;
            }
            // Several: a balancing tunnel's routers, all in use.
            let routers: Vec<&str> = r["router"].as_str().unwrap_or("?").split(',').collect();
            say(format_args!(
                "{}: {} {} link {}{}",
                r["name"].as_str().unwrap_or("?"),
                if routers.len() > 1 {
                    "routers"
                } else {
                    "router"
                },
                routers.join(", "),
                r["link"].as_str().unwrap_or("?"),
                detail.map(|d| format!(" ({d})")).unwrap_or_default()
            ));
        }
    }
    verdict(&down)
}

async fn router(a: &HealthArgs) -> Result<()> {
    let d = api_client::data(&a.api, "/api/v1/health").await?;
    let sources = d["sources"].as_array().cloned().unwrap_or_default();
    let mut down: Vec<String> = sources
        .iter()
        .filter(|s| s["state"] == "down")
        .map(|s| format!("source {}", source_of(s)))
        .collect();
    let lost = d["checks"]["client_links"]["lost"].as_u64().unwrap_or(0);
    let lost_links = d["lost_links"].as_array().cloned().unwrap_or_default();
    down.extend(
        lost_links
            .iter()
            .map(|l| format!("client {} lost", link_of(l))),
    );
    if lost_links.is_empty() && lost > 0 {
        // A router from before `lost_links`: only the count.
        down.push(format!("{lost} client link(s) lost"));
    }
    if a.format == OutputFormat::Json {
        say(serde_json::to_string_pretty(&d)?);
    } else {
        let c = &d["checks"];
        say(format_args!(
            "router: {} (up {}s); sources {} up, {} down, {} unknown; client links {} connected, {} lost",
            d["status"].as_str().unwrap_or("?"),
            d["uptime_secs"],
            c["sources"]["up"],
            c["sources"]["down"],
            c["sources"]["unknown"],
            c["client_links"]["connected"],
            lost
        ));
        for s in &sources {
            say(format_args!(
                "  source {}: {}{}",
                source_of(s),
                s["state"].as_str().unwrap_or("?"),
                error_of(s)
            ));
        }
        for l in &lost_links {
            say(format_args!(
                "  client {}: lost since {}{}",
                link_of(l),
                l["since"].as_str().unwrap_or("?"),
                l["reason"]
                    .as_str()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ));
        }
    }
    verdict(&down)
}

/// A source as `HOST:PORT`, a UDP one as `HOST:PORT/udp` (as `list` shows a bind).
fn source_of(s: &Value) -> String {
    let target = s["target"].as_str().unwrap_or("?");
    match s["protocol"].as_str() {
        Some("udp") => format!("{target}/udp"),
        _ => target.to_owned(),
    }
}

/// A lost link as `NAME (ID) tunnel TUNNEL`; a client without a name by its id only.
fn link_of(l: &Value) -> String {
    let id = l["client_id"].as_str().unwrap_or("?");
    let who = match l["client"].as_str().filter(|n| !n.is_empty()) {
        Some(name) => format!("{name:?} ({id})"),
        None => id.to_owned(),
    };
    format!("{who} tunnel {:?}", l["tunnel"].as_str().unwrap_or("?"))
}

fn error_of(s: &Value) -> String {
    s["last_error"]
        .as_str()
        .map(|e| format!(" ({e})"))
        .unwrap_or_default()
}

fn verdict(down: &[String]) -> Result<()> {
    if down.is_empty() {
        Ok(())
    } else {
        Err(Unhealthy(format!("unhealthy: {}", down.join(", "))).into())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::source_of;

    #[test]
    fn a_udp_source_is_told_from_the_tcp_one_on_its_port() {
        let tcp = json!({"target": "10.2.0.2:53", "protocol": "tcp"});
        let udp = json!({"target": "10.2.0.2:53", "protocol": "udp"});
        // A router from before `protocol` was served: the address alone.
        let old = json!({"target": "10.2.0.2:53"});
        assert_eq!(source_of(&tcp), "10.2.0.2:53");
        assert_eq!(source_of(&udp), "10.2.0.2:53/udp");
        assert_eq!(source_of(&old), "10.2.0.2:53");
    }
}
