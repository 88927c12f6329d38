//! `conduit kill`: stop tunnels (gracefully unless --force) or close one connection.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use conduit_controlplane::Home;
use conduit_controlplane::control::{self, pb};
use conduit_controlplane::registry::{Entry, Registry, process_alive};

use super::tunnels::chosen;
use super::{runtime, say};
use crate::args::KillArgs;

pub(crate) fn run(home: &Home, a: &KillArgs) -> Result<()> {
    let registry = Registry::new(home);
    if let Some(id) = a.connection {
        return runtime(1)?.block_on(kill_connection(&registry, id));
    }
    let targets = chosen(&registry, a.all, a.tunnel.as_deref())?;
    if targets.is_empty() {
        say("no tunnels running");
        return Ok(());
    }
    runtime(1)?.block_on(async {
        let mut failures = Vec::new();
        for e in &targets {
            match stop(e, a.force, a.drain_timeout).await {
                Ok(()) => say(format_args!(
                    "stopped tunnel {:?} ({})",
                    e.name, e.tunnel_id
                )),
                Err(why) => failures.push(format!("{} ({}): {why}", e.name, e.tunnel_id)),
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(anyhow!("could not stop {}", failures.join("; ")))
        }
    })
}

/// Asks one tunnel to stop and waits until its process is gone.
pub(crate) async fn stop(e: &Entry, force: bool, drain: Option<u32>) -> Result<(), String> {
    let mut c = control::connect(&e.control_socket)
        .await
        .map_err(|err| err.to_string())?;
    let drain = if force { None } else { drain };
    c.shutdown(pb::ShutdownRequest {
        force,
        drain_secs: drain,
    })
    .await
    .map_err(|s| s.message().to_owned())?;
    // The tunnel drains for at most its own deadline; allow for that plus margin.
    let limit = if force {
        Duration::from_secs(10)
    } else {
        Duration::from_secs(u64::from(drain.unwrap_or(0).max(30)) + 10)
    };
    let deadline = Instant::now() + limit;
    while process_alive(e.pid) {
        if Instant::now() > deadline {
            return Err(format!(
                "pid {} still running after {limit:?}; use --force",
                e.pid
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn kill_connection(registry: &Registry, id: u64) -> Result<()> {
    let mut hits = Vec::new();
    for e in registry.entries() {
        if let Ok(mut c) = control::connect(&e.control_socket).await
            && let Ok(r) = c.kill_connection(pb::KillConnectionRequest { id }).await
            && r.into_inner().found
        {
            hits.push(e.name.clone());
        }
    }
    match hits.as_slice() {
        [] => Err(anyhow!(
            "no running tunnel has connection {id} (`conduit list --connections` shows them)"
        )),
        names => {
            say(format_args!(
                "closed connection {id} of tunnel {}",
                names.join(", ")
            ));
            Ok(())
        }
    }
}
