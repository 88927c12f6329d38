//! Launching a tunnel as a background process (`conduit start` without
//! `--foreground`) and waiting until it is up.
//!
//! The parent claims the tunnel's name ([`NameClaim`]) before anything else, then
//! starts `conduit start --foreground --detached …` in its own process group, handing
//! it the claim, with stderr going to `$CONDUIT_HOME/logs/NAME.log` (or `--log-file`)
//! and stdout to a pipe on which the child announces "listening", then "connected" or
//! "retrying". The parent returns as soon as one of those arrives; if the child exits
//! first, the parent reports the child's error and exit code, and nothing is left
//! behind (the name's lock file included: the child removes it as it ends, or the
//! parent does if the child could not; once the child is up the parent hands the
//! claim on, [`NameClaim::handed_on`], and leaves the file to it).
//!
//! How long the parent waits: [`Launch::timeout`] for the child to listen, then as
//! long as the child says its first attempts at its routers may take
//! ([`first_round_line`]: each router's connect and handshake timeouts, one router
//! after another), and a margin. A fixed wait used to stop tunnels that were still
//! making their first attempts (four routers that do not answer, or a long
//! `--handshake-timeout`), when a later router would have served or the tunnel would
//! have gone on retrying in the background. Only a child that says nothing by then
//! (hung) is stopped.
//!
//! Interrupted (SIGINT, SIGTERM, or SIGHUP as its terminal closes) while it waits,
//! it stops the child and exits 128 + the signal's number (130, 143, 129). The
//! previous run's log is kept as `NAME.log.1`; a log is never truncated.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use conduit_proto::Secret;

use crate::process::{INHERITED_CLAIM, NameClaim};
use crate::registry::Registry;
use crate::{Error, Home};

/// What to launch.
#[derive(Debug)]
pub struct Launch {
    /// The `conduit` binary.
    pub exe: PathBuf,
    /// Arguments after the binary (`start --foreground --detached …`).
    pub args: Vec<OsString>,
    /// CONDUIT_HOME of the child.
    pub home: Home,
    /// The tunnel's name (names the log file).
    pub name: String,
    /// Where its log goes if not `logs/NAME.log` (`--log-file`, absolute).
    pub log_file: Option<PathBuf>,
    /// How long to wait for the tunnel to listen; its first attempts at its routers
    /// are then waited for as long as it says they may take (see the module's
    /// overview).
    pub timeout: Duration,
    /// Secrets for the child (a token, alert URLs): passed in its environment
    /// (`CONDUIT_TOKEN`…, readable by its owner only), never on its command line,
    /// which every local user can read in `ps` for as long as the tunnel runs.
    pub secrets: Vec<(String, Secret)>,
    /// The claim on the name, handed to the child, which holds it while it runs.
    pub claim: NameClaim,
}

/// How the launched tunnel stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Connected to its router.
    Connected,
    /// Listening, and retrying an unreachable router in the background.
    Retrying(String),
}

/// A tunnel that came up.
#[derive(Debug, Clone)]
pub struct Launched {
    /// Its process.
    pub pid: u32,
    /// Its registry id.
    pub id: String,
    /// Where users connect.
    pub addr: String,
    /// Connected or retrying.
    pub standing: Standing,
    /// Its log file.
    pub log_file: PathBuf,
}

/// Starts the tunnel process and waits until it listens and has either connected
/// or started retrying.
pub fn launch(l: Launch) -> Result<Launched, Error> {
    let (log_file, previous) = match &l.log_file {
        // The user's file is only ever appended to; its own rotation is the user's.
        Some(file) => {
            point_to_log(&l.home, &l.name, Some(file));
            (file.clone(), Previous::default())
        }
        None => {
            let logs = l.home.logs();
            Home::ensure_private_dir(&logs)?;
            point_to_log(&l.home, &l.name, None);
            let file = logs.join(format!("{}.log", l.name));
            // The claim on the name means no tunnel writes this log now: the previous
            // run's log is kept, as NAME.log.1, for its last words.
            let previous = keep_previous(&file)?;
            (file, previous)
        }
    };
    // Until the child runs, a failure puts the earlier logs back as they were.
    let spawned = (|| -> Result<std::process::Child, Error> {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&log_file)
            .map_err(|e| {
                let fix = if l.log_file.is_some() {
                    "give --log-file a file in an existing directory this user may write to"
                } else {
                    "remove or fix what is at that path (a tunnel's default log is a file of \
                     its own there), or give --log-file another file"
                };
                Error::Config(format!(
                    "cannot open the log file {}: {e}; {fix}",
                    log_file.display()
                ))
            })?;
        l.claim.make_inheritable()?;
        let mut cmd = Command::new(&l.exe);
        cmd.args(&l.args)
            .env("CONDUIT_HOME", l.home.root())
            .env(INHERITED_CLAIM, &l.name)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        if l.log_file.is_none() {
            // Its log is its stderr, logs/NAME.log: not a file named for the launcher.
            cmd.env_remove("CONDUIT_LOG_FILE");
        }
        for (var, value) in &l.secrets {
            cmd.env(var, value.expose());
        }
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            // Its own process group: Ctrl-C in this terminal does not reach it.
            cmd.process_group(0);
        }
        cmd.spawn().map_err(|source| Error::File {
            what: "cannot start the tunnel process",
            path: l.exe.clone(),
            source,
        })
    })();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            if l.log_file.is_none() {
                let _ = std::fs::remove_file(&log_file);
            }
            previous.restore(&log_file);
            return Err(e);
        }
    };
    let pid = child.id();
    // Only what a second claimant is told: a failure here changes nothing else.
    let _ = l.claim.set_holder(pid);
    let (tx, rx) = mpsc::channel();
    // Dropped when this function returns, which ends the catching.
    let _catching = catch_interrupts(tx.clone());
    if let Some(out) = child.stdout.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(Event::Line(line)).is_err() {
                    return;
                }
            }
            let _ = tx.send(Event::Closed);
        });
    }

    let started = Instant::now();
    let mut deadline = started + l.timeout;
    let mut addr = None;
    let mut id = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Event::Interrupted(signal)) => {
                // The child has its own process group: Ctrl-C reached only this one.
                let _ = child.kill();
                let _ = child.wait();
                // Reading the registry sweeps the entry of the process just ended,
                // which was stopped, not found dead.
                let registry = Registry::new(&l.home);
                let _swept = registry.entries();
                registry.forget_died(&l.name);
                previous.settle();
                // Its log stays: why it had not come up yet may be in it.
                return Err(Error::Launch {
                    code: 128 + signal.number(),
                    message: format!(
                        "{}; the tunnel was stopped (its log: {})",
                        signal.what(),
                        log_file.display()
                    ),
                });
            }
            Ok(Event::Line(line)) => {
                if let Some((a, i)) = parse_listening(&line) {
                    addr = Some(a);
                    id = i;
                } else if let Some(first_round) = parse_first_round(&line) {
                    // Listening: its first attempts are waited for, however long
                    // its routers' timeouts make them.
                    deadline = Instant::now() + first_round + FIRST_ROUND_MARGIN;
                } else if addr.is_some() && line.contains("connected to router") {
                    l.claim.handed_on();
                    previous.settle();
                    return Ok(launched(pid, id, addr, Standing::Connected, log_file));
                } else if addr.is_some() && line.contains("retrying") {
                    l.claim.handed_on();
                    previous.settle();
                    return Ok(launched(pid, id, addr, Standing::Retrying(line), log_file));
                }
            }
            Ok(Event::Closed) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                // The child closed stdout: it is exiting. Report why.
                let status = child.wait().ok();
                let code = status.and_then(|s| s.code()).unwrap_or(1);
                if code == 0 {
                    // It stopped as asked (`conduit kill`, SIGTERM) before it came up:
                    // no failure of its own, but not up either. Its log stays.
                    previous.settle();
                    return Err(Error::Launch {
                        code: 1,
                        message: format!(
                            "the tunnel was stopped before it came up (by `conduit kill` or a \
                             signal); its log: {}",
                            log_file.display()
                        ),
                    });
                }
                let message = last_error(&log_file);
                // Nothing of a tunnel that never came up stays behind: the previous
                // run's log is NAME.log again.
                if l.log_file.is_none() {
                    let _ = std::fs::remove_file(&log_file);
                }
                previous.restore(&log_file);
                return Err(Error::Launch { code, message });
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                // Reading the registry sweeps the entry of the process just ended,
                // which was stopped, not found dead.
                let registry = Registry::new(&l.home);
                let _swept = registry.entries();
                registry.forget_died(&l.name);
                previous.settle();
                let waited = started.elapsed().as_secs();
                let message = if addr.is_some() {
                    format!(
                        "the tunnel neither came up nor began retrying within {waited}s, \
                         though its routers' timeouts should have ended its first attempts \
                         by then (it may be hung), so it was stopped; its log: {}",
                        log_file.display()
                    )
                } else {
                    format!(
                        "the tunnel did not start listening within {waited}s, so it was \
                         stopped; its log: {}",
                        log_file.display()
                    )
                };
                return Err(Error::Launch { code: 69, message });
            }
        }
    }
}

/// `logs/NAME.log-file`: the path of the file a tunnel started with `--log-file`
/// logs to. Its registry entry names the file too, but goes when the tunnel stops:
/// this stays, so that `conduit logs NAME` finds the log of a tunnel that stopped.
fn log_pointer(home: &Home, name: &str) -> PathBuf {
    home.logs().join(format!("{name}.log-file"))
}

/// Records where tunnel `name` logs: `Some(file)` of its own, `None` for
/// `logs/NAME.log` (the record of an earlier run's file goes). A record that cannot
/// be written costs only `conduit logs NAME` after the tunnel stopped: not worth
/// failing the start for. A foreground tunnel with `--log-file` records it too.
pub fn point_to_log(home: &Home, name: &str, file: Option<&Path>) {
    let pointer = log_pointer(home, name);
    let Some(file) = file else {
        let _ = std::fs::remove_file(&pointer);
        return;
    };
    let Some(text) = file.to_str() else {
        return;
    };
    if Home::ensure_private_dir(&home.logs()).is_err() {
        return;
    }
    let tmp = pointer.with_extension("log-file.tmp");
    if std::fs::write(&tmp, format!("{text}\n")).is_err()
        || std::fs::rename(&tmp, &pointer).is_err()
    {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// Where tunnel `name`, running or stopped, was last started to log with
/// `--log-file`; `None` if it logs to `logs/NAME.log`.
pub fn own_log_file(home: &Home, name: &str) -> Option<PathBuf> {
    let text = std::fs::read_to_string(log_pointer(home, name)).ok()?;
    let path = text.trim_end_matches('\n');
    (!path.is_empty()).then(|| PathBuf::from(path))
}

/// The logs of earlier runs, moved aside for a start: `NAME.log` as `NAME.log.1`,
/// and the `NAME.log.1` before it as `NAME.log.1.old` until the start is settled.
#[derive(Debug, Default)]
struct Previous {
    /// Where `NAME.log` went, if there was one.
    kept: Option<PathBuf>,
    /// Where the older `NAME.log.1` went, if there was one.
    older: Option<PathBuf>,
}

impl Previous {
    /// The new run's log stays: the oldest one goes, as a rotation drops it.
    fn settle(self) {
        if let Some(older) = self.older {
            let _ = std::fs::remove_file(older);
        }
    }

    /// The start failed and its log goes: every earlier log is back as it was.
    fn restore(self, log: &Path) {
        if let Some(kept) = &self.kept {
            let _ = std::fs::rename(kept, log);
            if let Some(older) = self.older {
                let _ = std::fs::rename(older, kept);
            }
        }
    }
}

/// `log` with `suffix` added to its name.
fn with_suffix(log: &Path, suffix: &str) -> PathBuf {
    let mut p = log.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// Moves `log` to `log.1`, and an older `log.1` aside, if there is a `log`.
fn keep_previous(log: &Path) -> Result<Previous, Error> {
    let kept = with_suffix(log, ".1");
    let older = with_suffix(log, ".1.old");
    let err = |source| Error::File {
        what: "cannot keep the previous log (check the permissions of the logs directory)",
        path: log.to_owned(),
        source,
    };
    if !log.exists() {
        return Ok(Previous::default());
    }
    let older = match std::fs::rename(&kept, &older) {
        Ok(()) => Some(older),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => return Err(err(source)),
    };
    match std::fs::rename(log, &kept) {
        Ok(()) => Ok(Previous {
            kept: Some(kept),
            older,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Gone meanwhile: the older one goes back.
            if let Some(older) = older {
                let _ = std::fs::rename(older, &kept);
            }
            Ok(Previous::default())
        }
        Err(source) => Err(err(source)),
    }
}

/// How long beyond the time its first attempts may take (see [`first_round_line`])
/// the parent waits for a tunnel to say how they went: for the moments between the
/// attempts, and a loaded machine.
const FIRST_ROUND_MARGIN: Duration = Duration::from_secs(10);

/// The line a background tunnel prints once it listens, for its launching parent:
/// how long its first attempts at its routers may take, `within`; by then it has
/// connected, gone on to retry in the background, or stopped (every router refused
/// it).
pub fn first_round_line(name: &str, within: Duration) -> String {
    format!(
        "tunnel {name:?} makes its first attempts at its routers within {}s",
        within.as_secs_f64().ceil()
    )
}

/// The time in a [`first_round_line`].
fn parse_first_round(line: &str) -> Option<Duration> {
    let rest = line
        .split_once(" makes its first attempts at its routers within ")?
        .1;
    let secs: u64 = rest.strip_suffix('s')?.parse().ok()?;
    Some(Duration::from_secs(secs))
}

/// What the waiting parent hears.
enum Event {
    /// A line the child printed.
    Line(String),
    /// The child closed its stdout: it is exiting.
    Closed,
    /// A signal that stops this process reached it.
    Interrupted(Interrupt),
}

/// A signal that stops `start` while it waits (and the tunnel it launched with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interrupt {
    /// SIGINT: Ctrl-C.
    Int,
    /// SIGTERM.
    Term,
    /// SIGHUP: the terminal closed.
    Hup,
}

impl Interrupt {
    /// The signal's number (the same on every Unix), for the exit code 128 + it
    /// that a shell expects of a process the signal ended.
    fn number(self) -> i32 {
        match self {
            Interrupt::Hup => 1,
            Interrupt::Int => 2,
            Interrupt::Term => 15,
        }
    }

    /// What happened, as the error says it.
    fn what(self) -> &'static str {
        match self {
            Interrupt::Int => "interrupted",
            Interrupt::Term => "terminated (SIGTERM)",
            Interrupt::Hup => "hung up (SIGHUP: its terminal closed)",
        }
    }
}

/// Turns SIGINT, SIGTERM and SIGHUP into [`Event::Interrupted`] on `tx` instead of
/// ending this process, until the returned sender is dropped. `None` if the handlers
/// cannot be installed: the signals then end this process as before.
fn catch_interrupts(tx: mpsc::Sender<Event>) -> Option<tokio::sync::oneshot::Sender<()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .ok()?;
        // Installed here, before the wait begins, not when the thread gets to run.
        let (mut int, mut term, mut hup) = {
            let _in = rt.enter();
            (
                signal(SignalKind::interrupt()).ok()?,
                signal(SignalKind::terminate()).ok()?,
                signal(SignalKind::hangup()).ok()?,
            )
        };
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let caught = rt.block_on(async {
                tokio::select! {
                    _ = int.recv() => Some(Interrupt::Int),
                    _ = term.recv() => Some(Interrupt::Term),
                    _ = hup.recv() => Some(Interrupt::Hup),
                    _ = &mut stopped => None,
                }
            });
            if let Some(signal) = caught {
                let _ = tx.send(Event::Interrupted(signal));
            }
        });
        Some(stop)
    }
    #[cfg(not(unix))]
    {
        let _ = tx;
        None
    }
}

fn launched(
    pid: u32,
    id: String,
    addr: Option<String>,
    standing: Standing,
    log_file: PathBuf,
) -> Launched {
    Launched {
        pid,
        id,
        addr: addr.unwrap_or_default(),
        standing,
        log_file,
    }
}

/// `tunnel "NAME" listening on ADDR (id ID, …)` → (ADDR, ID).
fn parse_listening(line: &str) -> Option<(String, String)> {
    let rest = line.split_once(" listening on ")?.1;
    let addr = rest.split_whitespace().next()?.to_owned();
    let id = rest
        .split_once("(id ")
        .and_then(|(_, r)| r.split([',', ')']).next())
        .unwrap_or_default()
        .to_owned();
    Some((addr, id))
}

/// The child's error line from its log (`conduit: error: …`, or with
/// `--log-format json` the event marked `fatal`), or a pointer to the log.
fn last_error(log: &std::path::Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut words = LastWords::default();
    for line in text.lines() {
        words.push(line);
    }
    words
        .message()
        .or_else(|| {
            text.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "the tunnel process exited without saying why".into())
}

/// A `conduit` process's last words, read line by line from its stderr or log: the
/// error it ended with (`conduit: error: …`, or with `--log-format json` the event
/// marked `fatal`). A message of several lines (`every router refused this tunnel:`
/// and each router's reason) goes on to the end: it is the process's last output.
#[derive(Debug, Default)]
pub struct LastWords {
    said: Option<String>,
}

impl LastWords {
    /// Takes the next line the process wrote.
    pub fn push(&mut self, line: &str) {
        if let Some(first) = fatal_message(line) {
            self.said = Some(first);
        } else if let Some(said) = &mut self.said
            && !line.starts_with('{')
        {
            said.push('\n');
            said.push_str(line);
        }
    }

    /// The error the process ended with, if it said one.
    pub fn message(self) -> Option<String> {
        self.said
    }
}

/// The message of a process's last words, as a log line holds them.
fn fatal_message(line: &str) -> Option<String> {
    if line.starts_with('{') {
        let event: serde_json::Value = serde_json::from_str(line).ok()?;
        let fields = event.get("fields")?;
        if fields.get("fatal")? != &serde_json::Value::Bool(true) {
            return None;
        }
        return fields.get("message")?.as_str().map(str::to_owned);
    }
    line.split_once("conduit: error: ")
        .map(|(_, m)| m.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_words_are_read_from_text_and_json_logs() {
        assert_eq!(
            fatal_message("conduit: error: cannot listen on 127.0.0.1:80: denied").as_deref(),
            Some("cannot listen on 127.0.0.1:80: denied")
        );
        let json = r#"{"timestamp":"2026-12-06T16:40:00Z","level":"ERROR","fields":{"message":"cannot listen on 127.0.0.1:80: denied","exit_code":69,"fatal":true}}"#;
        assert_eq!(
            fatal_message(json).as_deref(),
            Some("cannot listen on 127.0.0.1:80: denied")
        );
        // Other errors, and lines that only look like JSON, are not last words.
        let other = r#"{"level":"ERROR","fields":{"message":"source refused"}}"#;
        assert_eq!(fatal_message(other), None);
        assert_eq!(fatal_message("{not json"), None);
        assert_eq!(fatal_message("WARN retrying in 1s"), None);
    }

    #[test]
    fn a_reason_of_several_lines_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("t.log");
        std::fs::write(
            &log,
            "WARN router a refused\nconduit: error: every router refused this tunnel:\n  \
             router a: key mismatch\n  router b: key mismatch\n",
        )
        .unwrap();
        assert_eq!(
            last_error(&log),
            "every router refused this tunnel:\n  router a: key mismatch\n  router b: key \
             mismatch"
        );
    }

    #[test]
    fn the_first_rounds_time_is_read_back_from_its_line() {
        let line = first_round_line("web", Duration::from_millis(80_200));
        assert_eq!(
            line,
            "tunnel \"web\" makes its first attempts at its routers within 81s"
        );
        assert_eq!(parse_first_round(&line), Some(Duration::from_secs(81)));
        assert_eq!(
            parse_first_round("tunnel \"web\" connected to router a:1"),
            None
        );
    }

    #[test]
    fn an_interrupted_start_exits_as_the_signal_would_have_ended_it() {
        let codes = [Interrupt::Int, Interrupt::Term, Interrupt::Hup].map(|i| 128 + i.number());
        assert_eq!(codes, [130, 143, 129]);
    }

    #[test]
    fn parses_the_listening_line() {
        assert_eq!(
            parse_listening(
                "tunnel \"web\" listening on 127.0.0.1:8080 (id web-1a2b, 2 workers, io_uring)"
            ),
            Some(("127.0.0.1:8080".into(), "web-1a2b".into()))
        );
        assert_eq!(parse_listening("something else"), None);
    }
}
