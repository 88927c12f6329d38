//! `conduit down -f FILE`: stop exactly the tunnels that file brought up.

use anyhow::Result;
use conduit_controlplane::Home;
use conduit_controlplane::reconcile::{is_from_file, started_from};
use conduit_controlplane::registry::Registry;

use super::kill::{Stopper, call_off_restarts, forget_dead, stop_each};
use super::{runtime, say};
use crate::args::DownArgs;
use crate::exit::Usage;

pub(crate) fn run(home: &Home, a: &DownArgs) -> Result<()> {
    let file = std::path::absolute(&a.file)?;
    let registry = Registry::new(home);
    registry.readable().map_err(anyhow::Error::msg)?;
    // No CONDUIT_HOME, no tunnels: nothing to make for the lock.
    let _one_at_a_time = match home.root().exists() {
        true => Some(registry.lock_changes(|pid| super::say_waiting_for_lock(home, pid))?),
        false => None,
    };
    let targets = started_from(&file, &registry.entries());
    // The file's supervised tunnels waiting to start again after a failure.
    let held: Vec<_> = (registry.waiting().into_iter())
        .filter(|w| is_from_file(w.config.file.as_deref(), &file))
        .collect();
    let called_off = call_off_restarts(&registry, &held);
    let dead: Vec<_> = (registry.died().into_iter())
        .filter(|d| is_from_file(d.config.file.as_deref(), &file))
        .collect();
    forget_dead(&registry, &dead);
    if (!held.is_empty() || !dead.is_empty()) && targets.is_empty() {
        return called_off;
    }
    // Tunnels from a file removed since `up` are still stopped; with none running,
    // a missing file is a mistyped name, refused as `up` refuses it.
    if targets.is_empty() && matches!(file.try_exists(), Ok(false)) {
        return Err(Usage(format!(
            "no configuration file at {} and no tunnels started from it are running: \
             check the path (`down` stops the tunnels an `up` of that same file started)",
            a.file.display()
        ))
        .into());
    }
    if targets.is_empty() {
        say(format_args!(
            "no tunnels from {} are running",
            a.file.display()
        ));
        return Ok(());
    }
    for e in &targets {
        if let Some(s) = e.live_supervisor() {
            eprintln!(
                "tunnel {:?} is run by `conduit up --foreground` (pid {}), which does not \
                 restart a tunnel stopped on purpose: it stays down until that supervisor is \
                 restarted",
                e.name, s.pid
            );
        }
    }
    runtime(1)?.block_on(stop_each(
        &registry,
        &targets,
        a.force,
        a.drain_timeout,
        Stopper::Down,
    ))?;
    called_off
}
