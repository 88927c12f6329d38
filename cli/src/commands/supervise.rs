//! `conduit up --foreground -f FILE`: each tunnel of the file as a child of this
//! process, which an init system (the units `--service-file` writes) keeps running.
//!
//! Each child has a task of its own that owns it: a child that exits on its own with
//! a failure (an exit code other than 0, or a signal such as SIGKILL) is logged at
//! once, with the reason from its last words on stderr, and started again alone
//! after a back-off (1 s, doubling to 30 s; back to 1 s once a run has lasted a
//! minute). A child that exits with 0 was stopped on purpose (`conduit kill`,
//! `down`) and stays stopped, as does one `conduit kill --force` killed (it says so in
//! `run/NAME.killed` first). SIGTERM, SIGINT or SIGHUP stops every child (they drain)
//! and every pending restart, a second one cuts their drains short; the exit code is
//! then that of the tunnels whose last run failed, as `up` reports them.
//!
//! Children name this process in their registry entries (`--supervisor PID`), so a
//! plain `up` of the same file leaves them to it (see `up::reconcile_and_launch`).
//! This process claims each tunnel's name before anything starts (a name already
//! taken stops it there, with nothing started) and lends the claim to each run of
//! the child: while it waits to start a failed tunnel again, no `start` or plain `up`
//! can take the name (they are told who holds it), and it says so in
//! `run/NAME.waiting` (see `Registry::write_waiting`), which `list`, `status` and
//! `health` show; a `kill` or `down` that removes it meanwhile stops the tunnel
//! there. A tunnel stopped on purpose gives its name back.
//!
//! Every run of every child has the settings this process started with: it reads
//! the file once and hands that text to each run on its stdin (`--file-on-stdin`),
//! so a file edited (or broken, or without the tunnel) since is not half applied by
//! the runs that restart. The environment and the `--set` values are this
//! process's own, the same at each run. What is not done here: a child's settings
//! are never changed, while it runs or when it restarts; a changed file takes a
//! restart of this process.

use std::ffi::OsString;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use conduit_controlplane::Home;
use conduit_controlplane::config::{Override, Plan};
use conduit_controlplane::process::{INHERITED_CLAIM, NameClaim, claim_name};
use conduit_controlplane::registry::{EntryConfig, Registry, Supervisor, Waiting};
use conduit_controlplane::spawn::LastWords;
use conduit_proto::Secret;
use futures::future::join_all;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::up::{child_args, secret_vars};
use crate::exit::{self, Failed};

/// The first wait before a failed tunnel is started again.
const FIRST_WAIT: Duration = Duration::from_secs(1);
/// The longest wait between two starts of a tunnel that keeps failing.
const LONGEST_WAIT: Duration = Duration::from_secs(30);
/// A run this long counts as a success: the next failure waits [`FIRST_WAIT`] again.
const STEADY: Duration = Duration::from_secs(60);
/// How often a tunnel waiting to start again is checked for a `kill` or `down`
/// that stopped it meanwhile (they remove its `run/NAME.waiting`).
const CANCEL_CHECK: Duration = Duration::from_millis(200);

/// Runs every tunnel of `plan` as a child of this process until a signal, restarting
/// each one that fails; then stops them. `text` is the file's, as `plan` was made
/// from it: what each run of each child is handed.
pub(super) fn supervise(home: &Home, plan: &Plan, set: &[Override], text: String) -> Result<()> {
    // The tunnels get them in their environment; this process keeps its command line.
    super::warn_of_secrets_set(set, "-f FILE");
    let exe = std::env::current_exe()?;
    let me = std::process::id().to_string();
    let secrets = secret_vars(set);
    let text: Arc<str> = text.into();
    let children: Vec<Child> = (plan.tunnels.iter())
        .map(|t| {
            let claim = claim_name(home, &t.name)?;
            claim.set_supervisor()?;
            let mut args = child_args(plan, set, t, false);
            args.extend([
                "--supervisor".into(),
                me.clone().into(),
                "--file-on-stdin".into(),
            ]);
            Ok(Child {
                registry: Registry::new(home),
                name: t.name.clone(),
                config: EntryConfig {
                    router: t.router.clone(),
                    source: t.source.clone(),
                    bind: t.bind.to_string(),
                    protocol: t.protocol.as_str().into(),
                    file: Some(plan.file.clone()),
                    digest: t.digest(),
                    settings: t.setting_digests(),
                    balance: t.balance,
                    proxy_protocol: t.proxy_protocol.map(|v| v.as_str().into()),
                    allow_from: t.allow_from.iter().map(ToString::to_string).collect(),
                    metrics: None,
                    stream_idle_timeout_secs: t.stream_idle_timeout_secs(),
                    udp_idle_timeout_secs: t.udp_idle_timeout_secs(),
                },
                exe: exe.clone().into_os_string(),
                args,
                secrets: secrets.clone(),
                text: text.clone(),
                claim,
            })
        })
        .collect::<Result<_, conduit_controlplane::Error>>()?;
    // One thread, this one, which lives as long as the process: the kernel stops a
    // child with its parent *thread* (`PR_SET_PDEATHSIG`), so no child may be
    // started from a worker thread that could end before the process.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        // Installed before any child starts: a signal meanwhile still stops them.
        // SIGHUP too: a terminal closed stops them as Ctrl-C does (they drain).
        let mut signals = conduit_controlplane::stop::StopSignals::listen(true);
        let (stop, stopping) = watch::channel(Stage::Running);
        // Each child's future owns it; all run on this one thread.
        let tasks: Vec<_> = (children.into_iter())
            .map(|c| {
                let stopping = stopping.clone();
                async move {
                    let name = c.name.clone();
                    (name, c.keep_running(stopping).await)
                }
            })
            .collect();
        let all = join_all(tasks);
        tokio::pin!(all);
        let results = tokio::select! {
            r = &mut all => r,
            why = signals.next() => {
                info!("stopping every tunnel ({why})");
                stop.send_replace(Stage::Stopping);
                tokio::select! {
                    r = &mut all => r,
                    why = signals.next() => {
                        // As a tunnel takes a second signal: its drain is cut short.
                        info!("stopping every tunnel now ({why} again): open connections close");
                        stop.send_replace(Stage::Cutting);
                        all.await
                    }
                }
            }
        };
        let failed: Vec<(String, u8)> = (results.into_iter())
            .filter_map(|(name, code)| code.map(|c| (name, c)))
            .collect();
        if failed.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = failed.iter().map(|(n, _)| n.as_str()).collect();
        Err(Failed {
            message: format!("tunnels that failed: {}", names.join(", ")),
            code: exit::shared_code(failed.iter().map(|(_, c)| *c)),
        }
        .into())
    })
}

/// Where the supervisor is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Keeping the tunnels running.
    Running,
    /// A signal came: each tunnel is asked once to stop (it drains).
    Stopping,
    /// A second signal came: each tunnel is asked again, which cuts its drain short.
    Cutting,
}

/// One tunnel's child process, as it is started each time.
struct Child {
    /// Where `conduit kill --force` says it killed a run on purpose.
    registry: Registry,
    name: String,
    /// What it runs, as `list` shows it while it waits to start again.
    config: EntryConfig,
    exe: OsString,
    args: Vec<OsString>,
    secrets: Vec<(String, Secret)>,
    /// The file's text as this process read it at its start, written to each run's
    /// stdin.
    text: Arc<str>,
    /// The claim on its name, held from start to end and lent to each run.
    claim: NameClaim,
}

/// How a run of a child ended.
struct Ended {
    /// The run's process, if it started.
    pid: Option<u32>,
    status: std::io::Result<ExitStatus>,
    /// Its last words on stderr (`conduit: error: …`, or a JSON `fatal` event).
    reason: Option<String>,
}

impl Child {
    /// Starts the child, and again each time it fails, until `stopping` leaves
    /// [`Stage::Running`] or it exits with 0. Returns the exit code of its last run if that failed.
    /// The name's claim ends with it.
    async fn keep_running(self, mut stopping: watch::Receiver<Stage>) -> Option<u8> {
        let mut wait = FIRST_WAIT;
        let mut failures = 0u32;
        loop {
            let started = Instant::now();
            let ended = match self.start() {
                Ok(child) => self.run(child, &mut stopping).await,
                Err(e) => Ended {
                    pid: None,
                    status: Err(e),
                    reason: None,
                },
            };
            let failed = match &ended.status {
                Ok(s) if s.success() => {
                    if *stopping.borrow() == Stage::Running {
                        info!(
                            tunnel = %self.name,
                            "tunnel {:?} exited with code 0 (stopped on purpose: `conduit \
                             kill` or `down`); not restarting it",
                            self.name
                        );
                    }
                    return None;
                }
                Ok(_)
                    if ended
                        .pid
                        .is_some_and(|pid| self.registry.take_killed_mark(&self.name, pid)) =>
                {
                    self.registry.forget_died(&self.name);
                    info!(
                        tunnel = %self.name,
                        "tunnel {:?} was killed by `conduit kill --force` (or `down --force`), \
                         on purpose; not restarting it",
                        self.name
                    );
                    return None;
                }
                Ok(s) => exit_code(s),
                Err(_) => exit::FAILURE,
            };
            let how = describe(&ended);
            error!(tunnel = %self.name, exit_code = failed, "tunnel {:?} {how}", self.name);
            if *stopping.borrow() != Stage::Running {
                return Some(failed);
            }
            if started.elapsed() >= STEADY {
                wait = FIRST_WAIT;
                failures = 0;
            }
            failures += 1;
            info!(
                tunnel = %self.name,
                "restarting tunnel {:?} in {}s (failure {failures} in a row)",
                self.name,
                wait.as_secs()
            );
            // Said where `list`, `status`, `kill` and `down` look: the tunnel has no
            // process meanwhile.
            let waiting = Waiting {
                name: self.name.clone(),
                config: self.config.clone(),
                supervisor: Supervisor::of(std::process::id()),
                failures,
                last_run: how,
                restart_at: unix_now().saturating_add(wait.as_secs() as i64),
            };
            let said = match self.registry.write_waiting(&waiting) {
                Ok(()) => true,
                Err(e) => {
                    warn!(tunnel = %self.name, "{e}: `conduit list` does not show the tunnel while it waits");
                    false
                }
            };
            let cancelled = tokio::select! {
                () = tokio::time::sleep(wait) => said && !self.registry.take_waiting(&self.name),
                () = self.cancelled(), if said => true,
                _ = stopping.wait_for(|s| *s != Stage::Running) => {
                    self.registry.take_waiting(&self.name);
                    return Some(failed);
                }
            };
            if cancelled {
                info!(
                    tunnel = %self.name,
                    "tunnel {:?} was stopped by `conduit kill` or `down` while it waited to \
                     start again; not restarting it",
                    self.name
                );
                return None;
            }
            wait = (wait * 2).min(LONGEST_WAIT);
        }
    }

    /// Returns once a `kill` or `down` has removed this tunnel's word that it waits
    /// to start again.
    async fn cancelled(&self) {
        while self.registry.still_waiting(&self.name) {
            tokio::time::sleep(CANCEL_CHECK).await;
        }
    }

    fn start(&self) -> std::io::Result<tokio::process::Child> {
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.args(&self.args)
            .env(INHERITED_CLAIM, &self.name)
            // Its log is its stderr, which this process copies into its own log.
            .env_remove("CONDUIT_LOG_FILE")
            .envs(self.secrets.iter().map(|(var, v)| (var, v.expose())))
            .stdin(Stdio::piped())
            // Its stdout too passes through this process: in a process group of its
            // own (below) it is not the terminal's foreground, and a terminal set
            // to stop background writers (`stty tostop`) would stop it.
            .stdout(Stdio::piped())
            // Its stderr passes through this process, which reads its last words.
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // Should the supervisor die, even by SIGKILL, its tunnels stop (SIGTERM:
        // they drain, then exit) rather than run on unsupervised, holding their
        // names and ports against the next `up` (Linux; elsewhere they run on).
        conduit_dataplane::stop_with_parent(cmd.as_std_mut());
        // A process group of its own: a signal to the supervisor's group (Ctrl-C, a
        // closed terminal) reaches the supervisor only, which asks each tunnel once
        // to stop; a second signal would make the tunnel cut its drain short.
        #[cfg(unix)]
        cmd.process_group(0);
        // Every child starts from this one thread, so only this one inherits the
        // claim's descriptor.
        let mut child = self
            .claim
            .lend_while(|| cmd.spawn())
            .map_err(std::io::Error::other)??;
        // Written while the child reads it, then closed. A child that ends before
        // reading it all says why on its stderr, so the error here is not kept.
        if let Some(mut stdin) = child.stdin.take() {
            let text = self.text.clone();
            tokio::spawn(async move {
                let _ = stdin.write_all(text.as_bytes()).await;
            });
        }
        Ok(child)
    }

    /// Waits for `child` to exit, asking it to stop (it drains) once `stopping` leaves
    /// [`Stage::Running`], and again (which cuts its drain short) at
    /// [`Stage::Cutting`].
    async fn run(
        &self,
        mut child: tokio::process::Child,
        stopping: &mut watch::Receiver<Stage>,
    ) -> Ended {
        let pid = child.id();
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    crate::output::announce(&line);
                }
            });
        }
        let stderr = child.stderr.take();
        let words = tokio::spawn(async move {
            let mut words = LastWords::default();
            let Some(stderr) = stderr else {
                return words;
            };
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                crate::logging::copy_line(&line);
                words.push(&line);
            }
            words
        });
        let ended = tokio::select! {
            s = child.wait() => Some(s),
            stop = stopping.wait_for(|s| *s != Stage::Running) => {
                // A guard on the channel: not held while the child drains.
                drop(stop);
                None
            }
        };
        let status = match ended {
            Some(s) => s,
            None => {
                if let Some(pid) = child.id() {
                    terminate(pid);
                }
                let cut = tokio::select! {
                    s = child.wait() => Some(s),
                    cut = stopping.wait_for(|s| *s == Stage::Cutting) => {
                        drop(cut);
                        None
                    }
                };
                match cut {
                    Some(s) => s,
                    None => {
                        // The second SIGTERM: the tunnel closes what still drains.
                        if let Some(pid) = child.id() {
                            terminate(pid);
                        }
                        child.wait().await
                    }
                }
            }
        };
        let reason = words.await.ok().and_then(LastWords::message);
        Ended {
            pid,
            status,
            reason,
        }
    }
}

/// Now, in Unix seconds.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The code a failed run counts with: its exit code, or 1 for a signal.
fn exit_code(s: &ExitStatus) -> u8 {
    s.code()
        .and_then(|c| u8::try_from(c).ok())
        .filter(|c| *c != 0)
        .unwrap_or(exit::FAILURE)
}

/// How a run failed: `exited with code 69: cannot listen on …`, `was killed by
/// signal 9 (SIGKILL)`, or why it could not start.
fn describe(e: &Ended) -> String {
    let how = match &e.status {
        Err(err) => return format!("could not be started: {err}"),
        Ok(s) => match (s.code(), signal_of(s)) {
            (Some(code), _) => format!("exited with code {code}"),
            (None, Some(sig)) => format!("was killed by signal {sig}"),
            (None, None) => format!("ended: {s}"),
        },
    };
    match &e.reason {
        Some(why) => format!("{how}: {why}"),
        None => format!("{how} without saying why"),
    }
}

/// `9 (SIGKILL)` for a process a signal ended.
#[cfg(unix)]
fn signal_of(s: &ExitStatus) -> Option<String> {
    use std::os::unix::process::ExitStatusExt;
    let n = s.signal()?;
    Some(match nix::sys::signal::Signal::try_from(n) {
        Ok(sig) => format!("{n} ({sig})"),
        Err(_) => n.to_string(),
    })
}

#[cfg(not(unix))]
fn signal_of(_: &ExitStatus) -> Option<String> {
    None
}

/// Asks a child to stop gracefully (it drains, then exits).
fn terminate(pid: u32) {
    #[cfg(unix)]
    if let Ok(raw) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(raw),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_failure_says_its_code_or_signal_and_its_reason() {
        use std::os::unix::process::ExitStatusExt;
        let ended = |raw: i32, reason: Option<&str>| Ended {
            pid: None,
            status: Ok(ExitStatus::from_raw(raw)),
            reason: reason.map(str::to_owned),
        };
        let bind = ended(
            69 << 8,
            Some("cannot listen on 127.0.0.1:80: Address already in use"),
        );
        assert_eq!(
            describe(&bind),
            "exited with code 69: cannot listen on 127.0.0.1:80: Address already in use"
        );
        assert_eq!(exit_code(&ExitStatus::from_raw(69 << 8)), 69);
        assert_eq!(
            describe(&ended(9, None)),
            "was killed by signal 9 (SIGKILL) without saying why"
        );
        assert_eq!(exit_code(&ExitStatus::from_raw(9)), exit::FAILURE);
    }
}
