//! `conduit kill`: stop tunnels (gracefully unless --force) or close one connection.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use conduit_controlplane::Home;
use conduit_controlplane::control::{self, pb};
use conduit_controlplane::registry::{Died, Entry, Registry, Waiting, process_alive};
use futures::future::join_all;

use super::tunnels::{chosen, warn_unreadable};
use super::{runtime, say};
use crate::args::KillArgs;
use crate::exit::Usage;

/// How long a tunnel's control socket has to answer `Shutdown` (as it has for the
/// other commands' questions); then `--force` signals the process instead.
const ASK_WITHIN: Duration = super::tunnels::ANSWER_WITHIN;

pub(crate) fn run(home: &Home, a: &KillArgs) -> Result<()> {
    let registry = Registry::new(home);
    if let Some(id) = a.connection {
        return runtime(1)?.block_on(kill_connection(&registry, id, a.tunnel.as_deref()));
    }
    registry.readable().map_err(anyhow::Error::msg)?;
    // Tunnels whose entries cannot be read are out of reach: said, and a kill meant
    // for them fails rather than pass for done.
    let unread = warn_unreadable(&registry);
    let missed: Vec<String> = (unread.iter())
        .filter(|u| {
            let id = u.path.file_stem().and_then(|s| s.to_str());
            let named = |t: &String| u.name.as_ref() == Some(t) || id == Some(t.as_str());
            a.all || a.tunnel.as_ref().is_some_and(named)
        })
        .map(|u| format!("{:?} (pid {})", u.name.as_deref().unwrap_or("?"), u.pid))
        .collect();
    let missed = (!missed.is_empty()).then(|| {
        anyhow!(
            "not stopped: {}, whose registry entr{} this conduit cannot read (see the warning \
             above for how to stop {})",
            missed.join(", "),
            if missed.len() == 1 { "y" } else { "ies" },
            if missed.len() == 1 { "it" } else { "them" },
        )
    });
    // Supervised tunnels waiting to start again after a failure: no process to stop,
    // but a restart to call off.
    let held: Vec<Waiting> = (registry.waiting().into_iter())
        .filter(|w| a.all || a.tunnel.as_deref() == Some(w.name.as_str()))
        .collect();
    // Tunnels whose processes died (see `Registry::died`): forgotten.
    let dead: Vec<Died> = (registry.died().into_iter())
        .filter(|d| a.all || (a.tunnel.as_deref()).is_some_and(|t| t == d.name || t == d.tunnel_id))
        .collect();
    let targets = match chosen(&registry, a.all, a.tunnel.as_deref()) {
        Err(_) if !a.all && (missed.is_some() || !held.is_empty() || !dead.is_empty()) => {
            Vec::new()
        }
        chosen => chosen?,
    };
    let called_off = call_off_restarts(&registry, &held);
    forget_dead(&registry, &dead);
    if targets.is_empty() {
        return match (missed, called_off) {
            (Some(e), _) | (None, Err(e)) => Err(e),
            (None, Ok(())) => {
                if held.is_empty() && dead.is_empty() {
                    say("no tunnels running");
                }
                Ok(())
            }
        };
    }
    runtime(1)?.block_on(stop_each(
        &registry,
        &targets,
        a.force,
        a.drain_timeout,
        Stopper::Kill,
    ))?;
    called_off?;
    missed.map_or(Ok(()), Err)
}

/// Forgets each tunnel of `dead`, whose process died, and says so.
pub(crate) fn forget_dead(registry: &Registry, dead: &[Died]) {
    for d in dead {
        registry.forget_died(&d.name);
        say(format_args!(
            "forgot tunnel {:?} ({}), whose process (pid {}) had ended without being stopped \
             (killed, or crashed; found {})",
            d.name, d.tunnel_id, d.pid, d.found_at
        ));
    }
}

/// Stops each supervised tunnel of `held` that waits to start again after a
/// failure: its word is taken, and its supervisor then does not start it again.
/// The error names each that its supervisor was starting meanwhile.
pub(crate) fn call_off_restarts(registry: &Registry, held: &[Waiting]) -> Result<()> {
    let mut started = Vec::new();
    for w in held {
        if registry.take_waiting(&w.name) {
            say(format_args!(
                "stopped tunnel {:?}, which was waiting to start again after a failure: \
                 its supervisor (`conduit up --foreground`, pid {}) does not start it again",
                w.name, w.supervisor.pid
            ));
        } else {
            started.push(w.name.as_str());
        }
    }
    match started.as_slice() {
        [] => Ok(()),
        names => Err(anyhow!(
            "not stopped: {}, which {} being started again as this command came: run it \
             once more to stop {}",
            names.join(", "),
            if names.len() == 1 { "was" } else { "were" },
            if names.len() == 1 { "it" } else { "them" },
        )),
    }
}

/// The command stopping a tunnel, for what it says while the tunnel drains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stopper {
    /// `conduit kill`.
    Kill,
    /// `conduit down -f FILE`.
    Down,
    /// `conduit up -f FILE`, which starts the tunnel again on its new settings once
    /// it has stopped.
    Up,
    /// `conduit up -f FILE`, which starts again a tunnel a `kill` was stopping.
    Revive,
    /// `conduit up -f FILE`, for a tunnel no longer in the file.
    Removed,
}

impl Stopper {
    /// The command that kills tunnel `e` outright when it does not answer: the
    /// stopping command again with `--force` (`down` of the tunnel's file), else
    /// `kill --force` of that tunnel.
    fn kill_hard_hint(self, e: &Entry) -> String {
        let kill = format!("`conduit kill --tunnel {} --force`", e.tunnel_id);
        match (self, &e.config.file) {
            (Self::Down, Some(file)) => format!(
                "`conduit down -f {} --force` (or {kill} for this one)",
                file.display()
            ),
            _ => kill,
        }
    }

    /// Said at once (on stderr) when tunnel `e` has `open` connections to drain for
    /// up to `secs` seconds: what is waited for, and how to end the wait now.
    /// `conduit kill` takes no lock, so it can cut short a `down`'s or an `up`'s
    /// drain (a `down --force` would wait for this `down` to finish first).
    pub(crate) fn draining(self, e: &Entry, open: u32, secs: u32) -> String {
        let what = format!(
            "tunnel {:?} ({}) is draining {open} open connection{} for up to {secs}s",
            e.name,
            e.tunnel_id,
            if open == 1 { "" } else { "s" }
        );
        let force = format!("`conduit kill --tunnel {} --force`", e.tunnel_id);
        match self {
            Self::Kill => format!("{what}; {force} stops it now"),
            Self::Down => format!("{what}; {force} stops it now (`down --force` does not drain)"),
            Self::Up => format!(
                "{what}: `up` starts it again on its new settings once it has stopped; {force} \
                 stops it now"
            ),
            Self::Revive => {
                format!("{what}: `up` starts it again once it has stopped; {force} stops it now")
            }
            Self::Removed => {
                format!("{what}: it is no longer in the file; {force} stops it now")
            }
        }
    }
}

/// Stops every tunnel of `targets` at once (they drain side by side) and says which
/// stopped; the error names each one that did not.
pub(crate) async fn stop_each(
    registry: &Registry,
    targets: &[Entry],
    force: bool,
    drain: Option<u32>,
    by: Stopper,
) -> Result<()> {
    let results = join_all(targets.iter().map(|e| stop(registry, e, force, drain, by))).await;
    let mut failures = Vec::new();
    for (e, res) in targets.iter().zip(results) {
        match res {
            Ok(how) => say(format_args!(
                "stopped tunnel {:?} ({}){how}",
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
}

/// Asks one tunnel to stop and waits until its process is gone. With `force`, a
/// tunnel that does not answer or does not stop is killed with SIGKILL (when its pid
/// still is that tunnel's process). `Ok` says how it stopped, if not as asked.
pub(crate) async fn stop(
    registry: &Registry,
    e: &Entry,
    force: bool,
    drain: Option<u32>,
    by: Stopper,
) -> Result<String, String> {
    let drain = if force { None } else { drain };
    let asked = tokio::time::timeout(ASK_WITHIN, ask(e, force, drain))
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {ASK_WITHIN:?}")));
    match asked {
        Ok((open, draining)) => {
            let secs = draining.or(drain).unwrap_or(DEFAULT_DRAIN_SECS);
            if e.config.protocol == "udp" && !force && open > 0 {
                // A datagram has nothing in flight to wait for: its flows end now.
                eprintln!(
                    "tunnel {:?} ({}) ends its {open} open flow{} now (UDP flows do not \
                     drain)",
                    e.name,
                    e.tunnel_id,
                    if open == 1 { "" } else { "s" }
                );
            } else if !force && open > 0 && secs > 0 {
                eprintln!("{}", by.draining(e, open, secs));
            }
            let limit = exit_wait(force, draining, drain);
            match gone_within(e.pid, limit).await {
                Ok(()) => Ok(String::new()),
                Err(why) if force => kill_hard(registry, e, &why).await,
                Err(why) => Err(format!(
                    "{why}; `conduit kill --tunnel {} --force` stops it now",
                    e.tunnel_id
                )),
            }
        }
        // It exited between the registry read and the request.
        Err(_) if !process_alive(e.pid) => {
            registry.remove(e);
            Ok(String::new())
        }
        Err(why) if force => kill_hard(registry, e, &why).await,
        // Its control socket is gone (deleted by hand, or by a cleaner of the
        // directory) while the tunnel runs: SIGTERM asks the same graceful stop.
        Err(why) if !e.control_socket.exists() && e.is_its_process() == Some(true) => {
            eprintln!(
                "tunnel {:?} ({}): its control socket {} is gone, and its process (pid {}) \
                 runs: stopping it with SIGTERM (it drains, for up to its own drain timeout)",
                e.name,
                e.tunnel_id,
                e.control_socket.display(),
                e.pid
            );
            signal(e.pid, Sig::Term)
                .map_err(|err| format!("{why}; SIGTERM to pid {} failed: {err}", e.pid))?;
            match gone_within(e.pid, exit_wait(false, None, None)).await {
                Ok(()) => {
                    registry.remove(e);
                    Ok(": stopped by SIGTERM (its control socket was gone)".to_owned())
                }
                Err(err) => Err(format!(
                    "sent SIGTERM, as its control socket is gone, but {err}; `conduit kill \
                     --tunnel {} --force` kills it (SIGKILL)",
                    e.tunnel_id
                )),
            }
        }
        Err(why) => Err(format!(
            "{why}; the process may be stopped or hung: {} kills it (SIGKILL)",
            by.kill_hard_hint(e)
        )),
    }
}

/// How long to wait for a tunnel that accepted `Shutdown` to exit: the drain it
/// answered (`draining`; its own default when none was asked), else the one asked
/// (`drain`; an older tunnel does not say), else the default 30 s, plus a margin.
/// With `force`, it exits without draining.
fn exit_wait(force: bool, draining: Option<u32>, drain: Option<u32>) -> Duration {
    const MARGIN_SECS: u64 = 10;
    if force {
        return Duration::from_secs(MARGIN_SECS);
    }
    let secs = draining.or(drain).unwrap_or(DEFAULT_DRAIN_SECS);
    Duration::from_secs(u64::from(secs) + MARGIN_SECS)
}

/// A tunnel's drain when it does not say (an older one) and none was asked.
const DEFAULT_DRAIN_SECS: u32 = 30;

/// Sends `Shutdown` to the tunnel's control API; returns the connections it had open
/// and how long it said it drains.
async fn ask(e: &Entry, force: bool, drain: Option<u32>) -> Result<(u32, Option<u32>), String> {
    let mut c = control::connect(&e.control_socket)
        .await
        .map_err(|err| err.to_string())?;
    c.shutdown(pb::ShutdownRequest {
        force,
        drain_secs: drain,
    })
    .await
    .map(|r| {
        let r = r.into_inner();
        (u32::try_from(r.open_connections).unwrap_or(0), r.drain_secs)
    })
    .map_err(|s| {
        format!(
            "its control socket {} does not answer: {}",
            e.control_socket.display(),
            s.message()
        )
    })
}

/// Waits until `pid` has exited, for at most `limit`.
async fn gone_within(pid: u32, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while process_alive(pid) {
        if Instant::now() > deadline {
            return Err(format!("pid {pid} still running after {limit:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// `--force` for a tunnel that could not be stopped through its control API
/// (`why`): SIGKILL to its process, once it is sure the pid still is that process.
async fn kill_hard(registry: &Registry, e: &Entry, why: &str) -> Result<String, String> {
    match e.is_its_process() {
        Some(true) => {}
        Some(false) => {
            registry.remove(e);
            registry.forget_died(&e.name);
            return Ok(format!(
                ": its process had exited (pid {} is not it any more); removed its registry entry",
                e.pid
            ));
        }
        None => {
            return Err(format!(
                "{why}; cannot tell whether pid {} still is this tunnel (its registry entry \
                 predates start times), so it was not signalled: check it with `ps -p {}` \
                 and stop it with `kill -KILL {}`",
                e.pid, e.pid, e.pid
            ));
        }
    }
    if e.live_supervisor().is_some() {
        // Its supervisor is not to take this for a failure and restart it.
        registry.mark_killed(e);
    }
    sigkill(e.pid).map_err(|err| format!("{why}; SIGKILL to pid {} failed: {err}", e.pid))?;
    gone_within(e.pid, Duration::from_secs(10))
        .await
        .map_err(|err| format!("{why}; sent SIGKILL, but {err}"))?;
    registry.remove(e);
    // Killed on purpose, should another command have swept it first.
    registry.forget_died(&e.name);
    Ok(format!(
        ": {why}; killed pid {} (SIGKILL) and removed its registry entry",
        e.pid
    ))
}

/// The signals `kill` sends a tunnel's process.
#[derive(Debug, Clone, Copy)]
enum Sig {
    /// Stop gracefully (drain).
    Term,
    /// Stop now.
    Kill,
}

fn sigkill(pid: u32) -> Result<(), String> {
    signal(pid, Sig::Kill)
}

#[cfg(unix)]
fn signal(pid: u32, sig: Sig) -> Result<(), String> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let raw = i32::try_from(pid).map_err(|_| format!("pid {pid} is out of range"))?;
    let sig = match sig {
        Sig::Term => Signal::SIGTERM,
        Sig::Kill => Signal::SIGKILL,
    };
    kill(Pid::from_raw(raw), sig).map_err(|e| e.to_string())
}

#[cfg(not(unix))]
fn signal(_: u32, _: Sig) -> Result<(), String> {
    Err("signals need a Unix host".into())
}

/// Closes connection `id` of the one tunnel that has it (`tunnel`, if named).
/// Connection ids are per tunnel process: when several have `id`, none is closed.
async fn kill_connection(registry: &Registry, id: u64, tunnel: Option<&str>) -> Result<()> {
    let candidates = match tunnel {
        Some(t) => chosen(registry, false, Some(t))?,
        None => registry.entries(),
    };
    let has = join_all(candidates.iter().map(|e| has_connection(e, id))).await;
    let mut silent = Vec::new();
    let mut holders: Vec<&Entry> = Vec::new();
    for (e, has) in candidates.iter().zip(has) {
        match has {
            Ok(true) => holders.push(e),
            Ok(false) => {}
            Err(why) => silent.push(format!("tunnel {:?} did not answer: {why}", e.name)),
        }
    }
    match holders.as_slice() {
        // A tunnel that did not answer may have it: not "no such connection".
        [] if !silent.is_empty() => Err(anyhow!(
            "connection {id} was not found, but {}; `conduit kill --tunnel NAME --force` \
             stops a hung tunnel",
            silent.join(", and ")
        )),
        [] => Err(Usage(match tunnel {
            Some(t) => format!(
                "tunnel {t:?} has no connection {id} (`conduit list --connections` shows them)"
            ),
            None => format!(
                "no running tunnel has connection {id} (`conduit list --connections` shows them)"
            ),
        })
        .into()),
        [e] => {
            let mut c = control::connect(&e.control_socket).await?;
            let found = c
                .kill_connection(pb::KillConnectionRequest { id })
                .await
                .map_err(|s| anyhow!("tunnel {:?} did not close it: {}", e.name, s.message()))?
                .into_inner()
                .found;
            if !found {
                return Err(anyhow!(
                    "connection {id} of tunnel {:?} ended before it could be closed",
                    e.name
                ));
            }
            say(format_args!("closed connection {id} of tunnel {}", e.name));
            Ok(())
        }
        many => {
            let names: Vec<String> = many
                .iter()
                .map(|e| format!("{} ({})", e.name, e.tunnel_id))
                .collect();
            Err(Usage(format!(
                "connection ids are per tunnel, and {} tunnels have connection {id}: {}; \
                 name one with `--tunnel NAME|ID`",
                many.len(),
                names.join(", ")
            ))
            .into())
        }
    }
}

/// Whether the tunnel has connection `id` open; why not, when its control socket
/// does not answer.
async fn has_connection(e: &Entry, id: u64) -> Result<bool, String> {
    let mut c = control::connect(&e.control_socket)
        .await
        .map_err(|e| e.to_string())?;
    c.list_connections(pb::ListConnectionsRequest {})
        .await
        .map(|r| r.into_inner().connections.iter().any(|c| c.id == id))
        .map_err(|s| super::tunnels::control_failed(s.message()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tunnel configured to drain longer than the default (its answer) is waited
    /// for that long, not cut off at the default.
    #[test]
    fn the_wait_follows_the_drain_the_tunnel_answered() {
        let secs = |s| Duration::from_secs(s);
        assert_eq!(exit_wait(false, Some(120), None), secs(130));
        assert_eq!(exit_wait(false, Some(0), Some(5)), secs(10));
        assert_eq!(exit_wait(false, None, Some(5)), secs(15));
        assert_eq!(exit_wait(false, None, None), secs(40));
        assert_eq!(exit_wait(true, Some(120), Some(5)), secs(10));
    }
}
