//! `conduit list`: the running tunnels, one per line (or JSON).

use anyhow::Result;
use conduit_controlplane::Home;
use serde_json::{Value, json};

use conduit_controlplane::registry::Waiting;

use super::tunnels::{Seen, bytes, survey, time, waiting};
use super::{runtime, say};
use crate::args::{ListArgs, OutputFormat};

pub(crate) fn run(home: &Home, a: &ListArgs) -> Result<()> {
    let seen = runtime(1)?.block_on(survey(home, a.connections))?;
    let held = waiting(home, &seen);
    match a.format {
        OutputFormat::Json => say(serde_json::to_string_pretty(
            &(seen.iter())
                .map(|s| to_json(s, a.connections))
                .chain(held.iter().map(|w| waiting_json(w, a.connections)))
                .collect::<Vec<_>>(),
        )?),
        OutputFormat::Table => table(&seen, &held, a.connections),
    }
    Ok(())
}

/// A supervised tunnel waiting to start again: no process, id or traffic.
fn waiting_json(w: &Waiting, with_connections: bool) -> serde_json::Value {
    let mut v = json!({
        "id": null,
        "name": w.name,
        "pid": null,
        "router": w.config.router,
        "source": w.config.source,
        "bind": w.config.bind,
        "protocol": w.config.protocol,
        "status": "restarting",
        "active_connections": 0,
        "supervisor_pid": w.supervisor.pid,
        "failures": w.failures,
        "error": w.last_run,
        "restart_at": time(w.restart_at),
    });
    if with_connections {
        v["connections"] = json!([]);
    }
    v
}

/// One tunnel; its open connections only when asked for (`--connections`): an
/// empty list would read as none open.
fn to_json(s: &Seen, with_connections: bool) -> serde_json::Value {
    let e = &s.entry;
    let mut v = json!({
        "id": e.tunnel_id,
        "name": e.name,
        "pid": e.pid,
        "router": e.config.router,
        "source": e.config.source,
        "bind": e.config.bind,
        "protocol": e.config.protocol,
        "proxy_protocol": e.config.proxy_protocol,
        "allow_from": e.config.allow_from,
        "stream_idle_timeout_secs": e.config.stream_idle_timeout_secs,
        "udp_idle_timeout_secs": e.config.udp_idle_timeout_secs,
        "metrics": e.config.metrics.as_ref().map(|m| format!("http://{m}/metrics")),
        "created_at": e.created_at,
    });
    match &s.status {
        Ok(st) => {
            let t = st.tunnel.clone().unwrap_or_default();
            v["status"] = json!(t.status);
            v["active_connections"] = json!(t.active_connections);
            v["bytes_in"] = json!(st.bytes_in);
            v["bytes_out"] = json!(st.bytes_out);
            v["io_engine"] = json!(t.io_engine);
        }
        Err(why) => {
            v["status"] = json!("unreachable");
            v["error"] = json!(why);
        }
    }
    if !with_connections {
        return v;
    }
    // Not known when the tunnel did not answer: null, not an empty list.
    v["connections"] = match &s.status {
        Ok(_) => s
            .connections
            .iter()
            .map(|c| {
                json!({"id": c.id, "peer": c.peer, "age_secs": c.age_secs,
                       "bytes_in": c.bytes_in, "bytes_out": c.bytes_out})
            })
            .collect(),
        Err(_) => Value::Null,
    };
    v
}

fn table(seen: &[Seen], held: &[Waiting], with_connections: bool) {
    if seen.is_empty() && held.is_empty() {
        say("no tunnels running");
        return;
    }
    let mut rows = vec![
        [
            "ID", "NAME", "PID", "ROUTER", "SOURCE", "BIND", "STATUS", "CONNS", "IN", "OUT",
            "CREATED",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for s in seen {
        let e = &s.entry;
        let (status, conns, bin, bout, created) = match &s.status {
            Ok(st) => {
                let t = st.tunnel.clone().unwrap_or_default();
                (
                    t.status,
                    t.active_connections.to_string(),
                    bytes(st.bytes_in),
                    bytes(st.bytes_out),
                    time(t.created_at),
                )
            }
            Err(_) => (
                "unreachable".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                e.created_at.clone(),
            ),
        };
        rows.push(vec![
            e.tunnel_id.clone(),
            e.name.clone(),
            e.pid.to_string(),
            e.config.router.clone(),
            e.config.source.clone(),
            e.config.shown_bind(),
            status,
            conns,
            bin,
            bout,
            created,
        ]);
    }
    for w in held {
        rows.push(vec![
            "-".into(),
            w.name.clone(),
            "-".into(),
            w.config.router.clone(),
            w.config.source.clone(),
            w.config.shown_bind(),
            "restarting".into(),
            "0".into(),
            "-".into(),
            "-".into(),
            "-".into(),
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for (i, r) in rows.iter().enumerate() {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        say(line.join("  ").trim_end());
        if with_connections && i > seen.len() {
            say("    (no open connections: it waits to start again)");
        } else if with_connections && i > 0 {
            let s = &seen[i - 1];
            if s.status.is_err() {
                say("    (connections unknown: the tunnel did not answer)");
            } else if s.connections.is_empty() {
                say("    (no open connections)");
            }
            for c in &s.connections {
                say(format_args!(
                    "    connection {}  peer {}  age {}s  in {}  out {}",
                    c.id,
                    c.peer,
                    c.age_secs,
                    bytes(c.bytes_in),
                    bytes(c.bytes_out)
                ));
            }
        }
    }
}
