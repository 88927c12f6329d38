//! `conduit up -f FILE`: one background tunnel process per `[[tunnels]]` table.
//!
//! Idempotent: running tunnels with unchanged settings are left alone, changed ones
//! are restarted, ones removed from the file are stopped. Stops run side by side, and
//! each tunnel starts once its old process (and any tunnel being stopped on its port
//! and protocol) is gone, not after the slowest drain. Each tunnel process is
//! `conduit up -f FILE --tunnel NAME --foreground`, so it reads exactly its own plan.
//! `up --foreground` supervises one such child per tunnel in this terminal (see
//! `supervise`), handing each the file's text as it read it (`--file-on-stdin`); a
//! plain `up` leaves the tunnels such a supervisor runs to it.

use std::ffi::OsString;

use anyhow::{Result, anyhow};
use conduit_controlplane::config::{
    self, Env, Override, Plan, Protocol, Role, Sources, TransportKind, TunnelPlan, plan_tunnels,
};
use conduit_controlplane::process::{Registration, claim_name, claim_supervised_name};
use conduit_controlplane::reconcile::reconcile;
use conduit_controlplane::registry::{Entry, EntryConfig, Registry, Supervisor};
use conduit_controlplane::{Home, TunnelSettings, keys};
use conduit_proto::Secret;
use futures::FutureExt;
use futures::future::join_all;

use super::config::{fail, print_problems, unreadable};
use super::kill::{Stopper, stop};
use super::service::{self, Tunnel, log_flags};
use super::start::{foreground, launch_detached, report_started};
use super::{runtime, say};
use crate::args::{LogArgs, LogFormat, ServiceKind, UpArgs};
use crate::exit::{self, Failed, Usage};

pub(crate) fn run(home: &Home, a: UpArgs, log: &LogArgs) -> Result<()> {
    super::service::check_files_as_service_user(&a.service);
    let file = file_path(&a.file)?;
    // Each tunnel process reads the file again: a pipe (`-f /dev/stdin`, `<(…)`)
    // would be empty for them.
    if let Ok(m) = std::fs::metadata(&file)
        && !a.file_on_stdin
        && !m.is_file()
        && !m.is_dir()
    {
        return Err(Usage(format!(
            "{} is not a regular file: each tunnel `up` starts reads the file again, so \
             give one on disk (a pipe or /dev/stdin can be read only once)",
            a.file.display()
        ))
        .into());
    }
    let name = a.file.display().to_string();
    let supervisor = a.foreground && a.tunnel.is_none() && a.service.service_file.is_none();
    // A supervisor reads the file once: each start of each of its tunnels runs on
    // the text it started with (handed on stdin), so an edit, even half done or
    // invalid, reaches none of them before the supervisor is restarted.
    let contents = if a.file_on_stdin {
        Some(text_from_stdin()?)
    } else if supervisor {
        match config::file_text(&file, Role::Client, "-f") {
            Ok(text) => Some(text),
            Err(report) => return unreadable(&name, Role::Client, &report),
        }
    } else {
        None
    };
    let sources = Sources {
        file: file.clone(),
        file_flag: "-f",
        contents,
        env: Env::from_process(),
        overrides: a.set.clone(),
        home: home.clone(),
    };
    let plan = match plan_tunnels(&sources) {
        // `up`'s own flags over the file's `[logging]`: what each tunnel runs with.
        Ok(p) => p.with_log_flags(
            log.log_level.as_deref(),
            log.log_format.map(|f| match f {
                LogFormat::Json => conduit_controlplane::config::LogFormat::Json,
                LogFormat::Text => conduit_controlplane::config::LogFormat::Text,
            }),
        ),
        Err(report)
            if report.has_errors() && report.problems.iter().all(|p| p.origin.is_none()) =>
        {
            return unreadable(&name, Role::Client, &report);
        }
        Err(report) => {
            print_problems(&report);
            return fail(&name, Role::Client, &report);
        }
    };
    if let Some(kind) = a.service.service_file {
        return service_file(home, &a, log, &plan, kind);
    }
    if let Some(tunnel) = &a.tunnel {
        return one(home, &plan, tunnel, a.detached, a.supervisor);
    }
    for w in &plan.warnings {
        eprintln!("{w}");
    }
    if let Some(file) = log.log_file.as_ref().filter(|_| !a.foreground) {
        eprintln!(
            "warning: --log-file {} (or CONDUIT_LOG_FILE) takes only this command's own \
             messages: each tunnel `up` starts in the background logs to \
             $CONDUIT_HOME/logs/NAME.log (`conduit logs NAME`); under `up --foreground` every \
             tunnel's log goes to it",
            file.display()
        );
    }
    if plan.tunnels.is_empty() {
        say(format_args!(
            "{name} has no [[tunnels]]; nothing to bring up"
        ));
        return Ok(());
    }
    if let Some(text) = sources.contents.filter(|_| supervisor) {
        return super::supervise::supervise(home, &plan, &a.set, text);
    }
    reconcile_and_launch(home, &plan, &a.set)
}

/// Runs one tunnel of the plan in this process (a child of `up`, or of the
/// `up --foreground` whose pid is `supervisor`).
fn one(
    home: &Home,
    plan: &Plan,
    name: &str,
    detached: bool,
    supervisor: Option<u32>,
) -> Result<()> {
    let t = plan
        .tunnels
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| anyhow!("{} has no tunnel named {name:?}", plan.file.display()))?;
    // Held while the tunnel runs (or inherited from the launching `up`, or lent by
    // the supervisor, which keeps it when this process ends).
    let _claim = match supervisor {
        Some(_) => claim_supervised_name(home, name)?,
        None => claim_name(home, name)?,
    };
    let plain = t.transport == TransportKind::Plain;
    let (identity, key_path) = keys::client_identity(&t.private_key_path, plain)?;
    let registration = Registration {
        home: home.clone(),
        name: t.name.clone(),
        router: t.router.clone(),
        source: t.source.clone(),
        file: Some(plan.file.clone()),
        digest: t.digest(),
        settings: t.setting_digests(),
        log_file: detached.then(|| home.logs().join(format!("{name}.log"))),
        drain: t.performance.drain_timeout(),
        metrics_bind: None,
        supervisor: supervisor.map(Supervisor::of),
    };
    let t = TunnelPlan {
        performance: super::auto_tune(&t.performance, t.transport == TransportKind::Plain),
        ..t.clone()
    };
    let settings = TunnelSettings {
        key_path,
        ..t.settings(identity, Some(home.known_routers()))
    };
    foreground(settings, registration, detached)
}

/// The arguments that run tunnel `t` of `plan` as its own process.
///
/// `up`'s own `--log-level` and `--log-format` (or `CONDUIT_LOG_LEVEL` and
/// `CONDUIT_LOG_FORMAT`) win over the file's `[logging]`, as everywhere else: the
/// plan holds them (`Plan::with_log_flags`), and so does its digest.
pub(super) fn child_args(
    plan: &Plan,
    set: &[Override],
    t: &TunnelPlan,
    detached: bool,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "--log-level".into(),
        t.log_level().into(),
        "--log-format".into(),
        t.logging.format.as_str().into(),
        "up".into(),
        "-f".into(),
        plan.file.clone().into_os_string(),
    ];
    // Secrets go in the child's environment instead (see `secret_vars`).
    for o in set.iter().filter(|o| !o.is_secret()) {
        args.push("--set".into());
        args.push(format!("{}={}", o.key, o.value).into());
    }
    args.extend([
        "--tunnel".into(),
        t.name.clone().into(),
        "--foreground".into(),
    ]);
    if detached {
        args.push("--detached".into());
    }
    args
}

/// How `up` says it restarted `t`, running as `e`: with the settings that changed,
/// by name, where `e` kept them (a secret's change, the token or an alert URL, is
/// not named).
fn restarted(t: &TunnelPlan, e: &Entry) -> String {
    match t.changed_from(&e.config.settings) {
        Some(names) if !names.is_empty() => format!("restarted ({} changed)", names.join(", ")),
        _ => "restarted (settings changed)".to_owned(),
    }
}

/// The `--set` values that are secrets (a token, webhook URLs), as the variables a
/// child reads them from: its environment is its owner's only, where its command line
/// is every local user's to read in `ps` for as long as it runs. A variable outranks
/// the file as `--set` does.
pub(super) fn secret_vars(set: &[Override]) -> Vec<(String, Secret)> {
    set.iter()
        .filter(|o| o.is_secret())
        .map(|o| (o.canonical_env_name(), Secret::new(o.value.clone())))
        .collect()
}

fn reconcile_and_launch(home: &Home, plan: &Plan, set: &[Override]) -> Result<()> {
    let registry = Registry::new(home);
    registry.readable().map_err(anyhow::Error::msg)?;
    let _one_at_a_time = registry.lock_changes(|pid| super::say_waiting_for_lock(home, pid))?;
    let entries = registry.entries();
    let actions = reconcile(plan, &entries);
    let file = plan.file.display();
    let mut failures = Vec::new();
    for (t, e) in &actions.conflict {
        let (whose, stop) = match &e.config.file {
            Some(other) => (
                format!("started from {}", other.display()),
                format!("`conduit down -f {}`", other.display()),
            ),
            None => (
                "started by `conduit start`".to_owned(),
                format!("`conduit kill --tunnel {}`", t.name),
            ),
        };
        failures.push((
            format!(
                "tunnel {:?}: the name is taken by a tunnel {whose}, not from {file} (id {}, pid \
                 {}); stop it with {stop} or rename one of them",
                t.name, e.tunnel_id, e.pid
            ),
            exit::USAGE,
        ));
    }
    for e in &actions.supervised {
        let pid = e.supervisor.map_or(0, |s| s.pid);
        let what = match plan.tunnels.iter().any(|t| t.name == e.name) {
            true => "its settings changed",
            false => "it is no longer in the file",
        };
        failures.push((
            format!(
                "tunnel {:?}: {what}, but `conduit up --foreground -f {file}` (pid {pid}) runs \
                 it and restarts it when it fails, so this `up` leaves it alone; restart that \
                 supervisor (or the service that runs it) to apply the file",
                e.name
            ),
            exit::USAGE,
        ));
    }
    let rt = runtime(2)?;
    // Unchanged is not enough to be up: each is asked whether it answers (a stopped
    // or hung process keeps its entry and its port, and serves nobody).
    let answers = rt.block_on(join_all(
        (actions.keep.iter()).map(|(_, e)| super::tunnels::look(&registry, e.clone(), false)),
    ));
    for ((t, e), seen) in actions.keep.iter().zip(answers) {
        match seen.map(|s| s.status) {
            Some(Ok(_)) => say(format_args!(
                "tunnel {:?} is up to date (id {}, pid {}) listening on {}",
                t.name,
                e.tunnel_id,
                e.pid,
                e.config.shown_bind()
            )),
            Some(Err(why)) => failures.push((
                format!(
                    "tunnel {:?} (id {}, pid {}) has these settings but does not respond: \
                     {why}; `conduit kill --tunnel {} --force` stops it (SIGKILL if it \
                     still does not answer), then `conduit up -f {file}` starts it again",
                    t.name, e.tunnel_id, e.pid, t.name
                ),
                exit::FAILURE,
            )),
            None => failures.push((
                format!(
                    "tunnel {:?} (id {}, pid {}) stopped while `up` asked it: run `conduit up \
                     -f {file}` again to start it",
                    t.name, e.tunnel_id, e.pid
                ),
                exit::FAILURE,
            )),
        }
    }
    // Each stop once, all at once (each drains while the others do); a tunnel starts
    // as soon as what it waits for has stopped: its own old process when restarted,
    // and any tunnel being stopped that holds its port. The others do not wait for
    // the slowest drain.
    // Restarted: for settings changed, or because a `kill` is stopping it (it drains
    // first, as that kill asked).
    let again: Vec<(&TunnelPlan, &Entry, String, Stopper)> = (actions.restart.iter())
        .map(|(t, e)| (*t, e, restarted(t, e), Stopper::Up))
        .chain((actions.revive.iter()).map(|(t, e)| {
            // Stopping on its old settings (an `up` interrupted as it drained): what
            // changed is named as for a restart.
            let what = match t.changed_from(&e.config.settings) {
                Some(names) if !names.is_empty() => restarted(t, e),
                _ => "started again (it was stopping)".to_owned(),
            };
            (*t, e, what, Stopper::Revive)
        }))
        .collect();
    let stopping: Vec<(&Entry, Stopper)> = (actions.remove.iter())
        .map(|e| (e, Stopper::Removed))
        .chain(again.iter().map(|(_, e, _, by)| (*e, *by)))
        .collect();
    let mut to_start: Vec<(&TunnelPlan, Option<usize>)> =
        actions.start.iter().map(|t| (*t, None)).collect();
    let removed = actions.remove.len();
    to_start.extend((again.iter().enumerate()).map(|(i, (t, ..))| (*t, Some(removed + i))));
    let launching = std::sync::Arc::new(std::sync::Mutex::new(()));
    // Set to 128 + the signal's number once a launch was interrupted (Ctrl-C): the
    // tunnels not launched yet are not, as the user asked `up` to stop.
    let interrupted = std::sync::Arc::new(std::sync::atomic::AtomicI32::new(0));
    let (stopped, launched) = rt.block_on(async {
        // A signal (Ctrl-C) while old processes drain ends the waits: `up` does not
        // start what waited on them, and says so.
        let signalled = caught(interrupted.clone()).boxed_local().shared();
        let stops: Vec<_> = (stopping.iter())
            .map(|&(e, by)| {
                let stopped = stop(&registry, e, false, None, by).map(|r| r.map(drop));
                let signalled = signalled.clone();
                async move {
                    tokio::select! {
                        r = stopped => r,
                        () = signalled => Err(INTERRUPTED.to_owned()),
                    }
                }
                .boxed_local()
                .shared()
            })
            .collect();
        let starts = to_start.iter().map(|&(t, own)| {
            let stops = &stops;
            let stopping = &stopping;
            let launching = &launching;
            let interrupted = &interrupted;
            async move {
                if let Some(i) = own {
                    stops[i].clone().await.map_err(|why| match why.as_str() {
                        INTERRUPTED => StopFailed(format!(
                            "is not restarted: {INTERRUPTED} (it stops once drained, and \
                             nothing starts it again: run `conduit up -f {}` to start it)",
                            plan.file.display()
                        )),
                        _ => StopFailed(format!("could not stop it to restart: {why}")),
                    })?;
                }
                for ((e, _), s) in stopping.iter().zip(stops) {
                    if holds_port(&e.config, t.bind.port(), t.protocol) {
                        // Not stopped: the launch says the port is taken.
                        let _ = s.clone().await;
                    }
                }
                let args = child_args(plan, set, t, true);
                let secrets = secret_vars(set);
                let (home, name) = (home.clone(), t.name.clone());
                let launching = launching.clone();
                let plan_file = plan.file.clone();
                let interrupted = interrupted.clone();
                tokio::task::spawn_blocking(move || {
                    use std::sync::atomic::Ordering;
                    // One launch at a time: a claim is handed on by letting every
                    // child spawned meanwhile inherit it, so another tunnel started
                    // alongside would hold this one's name for as long as it runs.
                    let _one = launching.lock().unwrap_or_else(|e| e.into_inner());
                    let code = interrupted.load(Ordering::Relaxed);
                    if code != 0 {
                        return Err(conduit_controlplane::Error::Launch {
                            code,
                            message: format!(
                                "not started: `up` was interrupted (run `conduit up -f {}` to \
                                 start it)",
                                plan_file.display()
                            ),
                        }
                        .into());
                    }
                    let claim = claim_name(&home, &name)?;
                    let launched = launch_detached(&home, &name, args, secrets, claim, None);
                    if let Err(e) = &launched
                        && let Some(conduit_controlplane::Error::Launch { code, .. }) =
                            e.downcast_ref::<conduit_controlplane::Error>()
                        && *code > 128
                    {
                        interrupted.store(*code, Ordering::Relaxed);
                    }
                    launched
                })
                .await?
            }
        });
        futures::join!(join_all(stops[..removed].iter().cloned()), join_all(starts))
    });
    for (e, res) in actions.remove.iter().zip(stopped) {
        match res {
            Ok(()) => say(format_args!(
                "stopped tunnel {:?} (no longer in {file})",
                e.name
            )),
            Err(why) if why == INTERRUPTED => failures.push((
                format!(
                    "tunnel {:?} (no longer in {file}): `up` was interrupted while it drained \
                     (it stops once drained)",
                    e.name
                ),
                exit::FAILURE,
            )),
            Err(why) => failures.push((
                format!("tunnel {:?}: could not stop it: {why}", e.name),
                exit::FAILURE,
            )),
        }
    }
    for ((t, own), res) in to_start.iter().zip(launched) {
        let verb = match own {
            Some(i) => again[i - removed].2.as_str(),
            None => "started",
        };
        match res {
            Ok(l) => report_started(home, verb, &t.name, &l),
            // Its old process is gone: say so, it is not running on the old settings.
            Err(e) if own.is_some() && e.downcast_ref::<StopFailed>().is_none() => failures.push((
                format!(
                    "tunnel {:?} is down: it was stopped to restart ({}), and could not start \
                     again: {e}",
                    t.name,
                    verb.strip_prefix("restarted (")
                        .and_then(|v| v.strip_suffix(')'))
                        .unwrap_or(verb)
                ),
                exit::code_for(&e),
            )),
            Err(e) if e.to_string().starts_with("is not restarted") => {
                failures.push((format!("tunnel {:?} {e}", t.name), exit::FAILURE));
            }
            Err(e) => failures.push((format!("tunnel {:?}: {e}", t.name), exit::code_for(&e))),
        }
    }
    if failures.is_empty() {
        return Ok(());
    }
    // Interrupted: 128 + the signal's number, whatever else failed.
    let code = match interrupted.load(std::sync::atomic::Ordering::Relaxed) {
        0 => exit::shared_code(failures.iter().map(|(_, c)| *c)),
        signalled => u8::try_from(signalled).unwrap_or(exit::FAILURE),
    };
    let message = failures.into_iter().map(|(m, _)| m).collect::<Vec<_>>();
    Err(Failed {
        message: message.join("\n"),
        code,
    }
    .into())
}

/// The file's text as a supervisor hands it to its tunnel (`--file-on-stdin`).
fn text_from_stdin() -> Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::io::stdin()
        .lock()
        .read_to_string(&mut text)
        .map_err(|e| {
            anyhow!(
                "cannot read the configuration on standard input: {e} (`--file-on-stdin` is for \
             `up --foreground` to give the tunnels it starts)"
            )
        })?;
    Ok(text)
}

/// `file` made absolute, with its directory's `.`, `..` and links resolved: one
/// file named two ways (`rel/c.toml`, `../w/rel/c.toml`) makes one plan, whose
/// paths, and so digests, are the same. The file's own name is kept as given: a
/// link (a Kubernetes ConfigMap's file) stays the file the tunnels were started from.
fn file_path(file: &std::path::Path) -> Result<std::path::PathBuf> {
    let abs = std::path::absolute(file)?;
    Ok(match (abs.parent(), abs.file_name()) {
        (Some(dir), Some(name)) => std::fs::canonicalize(dir).map_or(abs.clone(), |d| d.join(name)),
        _ => abs,
    })
}

/// Why a wait for an old process to stop ended early.
const INTERRUPTED: &str = "`up` was interrupted while its old process drained";

/// Waits for SIGINT, SIGTERM or SIGHUP, and stores 128 + its number in
/// `interrupted` (which launches not begun yet heed).
async fn caught(interrupted: std::sync::Arc<std::sync::atomic::AtomicI32>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            return std::future::pending().await;
        };
        // 128 + SIGINT, SIGTERM, SIGHUP.
        let code = tokio::select! {
            _ = int.recv() => 130,
            _ = term.recv() => 143,
            _ = hup.recv() => 129,
        };
        interrupted.store(code, std::sync::atomic::Ordering::Relaxed);
    }
    #[cfg(not(unix))]
    {
        let _ = interrupted;
        std::future::pending().await
    }
}

/// A tunnel to restart that would not stop: it runs on, on its old settings.
#[derive(Debug)]
struct StopFailed(String);

impl std::fmt::Display for StopFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StopFailed {}

/// Whether the tunnel registered with `c` holds `port` for `protocol`: a TCP
/// listener and a UDP socket share a port number without conflict, and port 0 (the
/// system picks a free one) conflicts with nothing.
fn holds_port(c: &EntryConfig, port: u16, protocol: Protocol) -> bool {
    let bound = c.bind.rsplit_once(':').and_then(|(_, p)| p.parse().ok());
    let same = match protocol {
        Protocol::Tcp => c.protocol == "tcp",
        Protocol::Udp => c.protocol == "udp",
    };
    port != 0 && bound == Some(port) && same
}

/// `--service-file`: a service that runs `conduit up --foreground -f FILE` (the file's
/// absolute path, checked above like any `up`) with the same `--set` overrides
/// (paths made absolute), except secrets, which stay out of the service file.
fn service_file(
    home: &Home,
    a: &UpArgs,
    log: &LogArgs,
    plan: &Plan,
    kind: ServiceKind,
) -> Result<()> {
    for w in &plan.warnings {
        eprintln!("{w}");
    }
    let mut args = vec![
        "up".to_owned(),
        "--foreground".to_owned(),
        "-f".to_owned(),
        plan.file.to_string_lossy().into_owned(),
    ];
    // Secrets (a token, webhook URLs) stay out of the file: the service reads them
    // from its environment file.
    let mut env_vars = Vec::new();
    for o in &a.set {
        if o.is_secret() {
            env_vars.push(o.env_name());
        } else {
            // The service runs from another directory (`/`).
            let value = o.value_from_working_dir(Role::Client).map_err(Usage)?;
            args.extend(["--set".to_owned(), format!("{}={value}", o.key)]);
        }
    }
    // Settings the shell's CONDUIT_* variables gave: the service has no such shell.
    for var in &plan.env_vars {
        if !env_vars.contains(var) {
            env_vars.push(var.clone());
        }
    }
    args.extend(log_flags(log));
    let name = plan
        .file
        .file_stem()
        .map_or_else(|| "conduit".into(), |s| s.to_string_lossy().into_owned());
    service::emit(
        home,
        &a.service,
        kind,
        Tunnel {
            name: &name,
            description: format!("Conduit tunnels of {}", plan.file.display()),
            args,
            privileged_port: plan
                .tunnels
                .iter()
                .any(|t| (1..1024).contains(&t.bind.port())),
            env_vars,
            // Keys rotate beside their files.
            writes: plan
                .tunnels
                .iter()
                .map(|t| t.private_key_path.clone())
                .chain(log.log_file.clone().or_else(|| plan.logging.file.clone()))
                .collect(),
            // The routers' pinned keys given as `.pub` files.
            reads: (plan.tunnels.iter())
                .flat_map(|t| &t.router_key_specs)
                .filter(|spec| !spec.starts_with("ed25519:"))
                .map(std::path::PathBuf::from)
                .collect(),
            // The tunnels drain side by side: the longest drain is the stop's.
            drain: (plan.tunnels.iter())
                .map(|t| t.performance.drain_timeout())
                .max()
                .unwrap_or_default(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_is_held_by_the_same_protocol_only() {
        let c = |bind: &str, protocol: &str| EntryConfig {
            router: "10.2.0.1:9999".into(),
            source: "10.2.0.2:53".into(),
            bind: bind.into(),
            protocol: protocol.into(),
            file: None,
            digest: String::new(),
            settings: Default::default(),
            balance: false,
            proxy_protocol: None,
            allow_from: Vec::new(),
            metrics: None,
            stream_idle_timeout_secs: 0,
            udp_idle_timeout_secs: 0,
        };
        assert!(holds_port(&c("127.0.0.1:5353", "tcp"), 5353, Protocol::Tcp));
        assert!(holds_port(&c("[::1]:5353", "udp"), 5353, Protocol::Udp));
        assert!(!holds_port(
            &c("127.0.0.1:5353", "udp"),
            5353,
            Protocol::Tcp
        ));
        assert!(!holds_port(
            &c("127.0.0.1:5353", "tcp"),
            5353,
            Protocol::Udp
        ));
        assert!(!holds_port(
            &c("127.0.0.1:5354", "tcp"),
            5353,
            Protocol::Tcp
        ));
        assert!(!holds_port(&c("127.0.0.1:0", "tcp"), 0, Protocol::Tcp));
    }
}
