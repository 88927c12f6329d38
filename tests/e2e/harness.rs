//! Running the real `conduit` binary: a temporary CONDUIT_HOME, child processes
//! whose output is collected as it arrives, waits on conditions with deadlines, and
//! stops through the child's handle.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

/// How long any single wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// How long a command run to completion may take before it is killed and the test
/// fails: generous, for a loaded machine, yet a command that never exits does not
/// hold up the suite.
pub const RUN_DEADLINE: Duration = Duration::from_secs(120);

pub fn conduit_bin() -> &'static str {
    env!("CARGO_BIN_EXE_conduit")
}

/// The io engines to run the suite under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Uring,
    Epoll,
}

impl Engine {
    pub fn flag(self) -> &'static str {
        match self {
            Engine::Uring => "uring",
            Engine::Epoll => "epoll",
        }
    }

    /// Whether this machine can run the engine (io_uring may be blocked).
    pub fn available(self) -> bool {
        match self {
            Engine::Epoll => true,
            Engine::Uring => {
                let out = output_of(Command::new(conduit_bin()).arg("version"));
                String::from_utf8_lossy(&out.stdout).contains("io_uring")
            }
        }
    }
}

/// Generates `uring` and `epoll` tests from one body taking an [`Engine`].
#[macro_export]
macro_rules! both_engines {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[test]
            fn uring() {
                let engine = $crate::harness::Engine::Uring;
                if !engine.available() {
                    eprintln!("io_uring is not usable here; skipping");
                    return;
                }
                ($body)(engine)
            }
            #[test]
            fn epoll() {
                ($body)($crate::harness::Engine::Epoll)
            }
        }
    };
}

/// A `conduit` command with none of this process's CONDUIT_ variables or RUST_LOG.
pub fn clean_conduit() -> Command {
    let mut c = Command::new(conduit_bin());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CONDUIT_") {
            c.env_remove(&k);
        }
    }
    c.env_remove("RUST_LOG");
    c
}

/// A temporary CONDUIT_HOME with router and client keys, the client authorized.
pub struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    /// An empty home.
    pub fn empty() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// Keys `router` and `client`, and the client listed in authorized_clients.
    pub fn with_keys() -> Self {
        let h = Self::empty();
        h.ok(&["init", "--name", "router"]);
        let client = h.ok(&["init", "--name", "client"]);
        std::fs::write(h.path().join("authorized_clients"), client)
            .expect("write authorized_clients");
        h
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// What `conduit keys show --name NAME` prints first: the key.
    pub fn public_key(&self, name: &str) -> String {
        self.ok(&["keys", "show", "--name", name])
            .split_whitespace()
            .next()
            .expect("a key")
            .to_owned()
    }

    pub fn key(&self, file: &str) -> PathBuf {
        self.path().join("keys").join(file)
    }

    /// A `conduit` command with this home and a clean environment.
    pub fn cmd(&self) -> Command {
        let mut c = clean_conduit();
        c.env("CONDUIT_HOME", self.path());
        c
    }

    /// Runs a command to completion (within [`RUN_DEADLINE`]); returns (exit
    /// status, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> (ExitStatus, String, String) {
        let out = output_of(self.cmd().args(args));
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let (status, out, err) = self.run(args);
        assert!(status.success(), "conduit {args:?} failed: {status}\n{err}");
        out
    }

    /// Starts a long-running command.
    pub fn spawn(&self, args: &[&str]) -> Proc {
        Proc::spawn(self.cmd().args(args))
    }

    /// A router on a free port allowing `allow`, and its address.
    pub fn router(&self, engine: Engine, allow: &[String]) -> (Proc, SocketAddr) {
        self.router_at(engine, "127.0.0.1:0", allow, &[])
    }

    /// A router on a free port with extra arguments, and its address.
    pub fn router_with(
        &self,
        engine: Engine,
        allow: &[String],
        extra: &[&str],
    ) -> (Proc, SocketAddr) {
        self.router_at(engine, "127.0.0.1:0", allow, extra)
    }

    /// A router on `bind` allowing `allow`, with `extra` arguments; and its address
    /// once it listens.
    pub fn router_at(
        &self,
        engine: Engine,
        bind: &str,
        allow: &[String],
        extra: &[&str],
    ) -> (Proc, SocketAddr) {
        let p = self.router_proc(engine, bind, allow, extra);
        let line = p.wait_stdout("router listening on");
        (p, addr_in(&line))
    }

    /// Starts a router without waiting for anything.
    pub fn router_proc(
        &self,
        engine: Engine,
        bind: &str,
        allow: &[String],
        extra: &[&str],
    ) -> Proc {
        let mut args = vec![
            "router".to_owned(),
            "--bind".into(),
            bind.into(),
            "--io-engine".into(),
            engine.flag().into(),
            "--workers".into(),
            "2".into(),
        ];
        for a in allow {
            args.push("--allow".into());
            args.push(a.clone());
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.spawn(&args)
    }

    /// A foreground tunnel with `extra` arguments, connected; and its address.
    pub fn tunnel_with(
        &self,
        engine: Engine,
        router: SocketAddr,
        source: &str,
        extra: &[&str],
    ) -> (Proc, SocketAddr) {
        let p = self.tunnel_proc(engine, router, source, extra);
        let line = p.wait_stdout("listening on");
        let addr = addr_in(&line);
        p.wait_stdout("connected to router");
        (p, addr)
    }

    /// A foreground tunnel to `source` through `router`, connected; and its address.
    pub fn tunnel(&self, engine: Engine, router: SocketAddr, source: &str) -> (Proc, SocketAddr) {
        self.tunnel_with(engine, router, source, &[])
    }

    /// Starts a foreground tunnel without waiting for anything.
    pub fn tunnel_proc(
        &self,
        engine: Engine,
        router: SocketAddr,
        source: &str,
        extra: &[&str],
    ) -> Proc {
        self.tunnel_via(engine, &router.to_string(), source, extra)
    }

    /// Starts a foreground tunnel to `router` (`--router` as given: one address or
    /// several) without waiting for anything.
    pub fn tunnel_via(&self, engine: Engine, router: &str, source: &str, extra: &[&str]) -> Proc {
        let router_key = self.key("router.pub");
        let router_key = router_key.to_str().expect("utf-8 path");
        self.tunnel_keyed(engine, router, router_key, source, extra)
    }

    /// [`Self::tunnel_via`] with `--router-key` as given.
    pub fn tunnel_keyed(
        &self,
        engine: Engine,
        router: &str,
        router_key: &str,
        source: &str,
        extra: &[&str],
    ) -> Proc {
        self.tunnel_keyed_at(engine, router, router_key, source, "127.0.0.1:0", extra)
    }

    /// [`Self::tunnel_via`] listening on `bind`.
    pub fn tunnel_at(
        &self,
        engine: Engine,
        router: &str,
        source: &str,
        bind: &str,
        extra: &[&str],
    ) -> Proc {
        let router_key = self.key("router.pub");
        let router_key = router_key.to_str().expect("utf-8 path");
        self.tunnel_keyed_at(engine, router, router_key, source, bind, extra)
    }

    /// [`Self::tunnel_keyed`] listening on `bind`.
    pub fn tunnel_keyed_at(
        &self,
        engine: Engine,
        router: &str,
        router_key: &str,
        source: &str,
        bind: &str,
        extra: &[&str],
    ) -> Proc {
        let mut args = vec!["start", "--foreground", "--router", router];
        // The plain transport takes no router key.
        if !extra.windows(2).any(|w| w == ["--transport", "plain"]) {
            args.extend(["--router-key", router_key]);
        }
        args.extend([
            "--source",
            source,
            "--bind",
            bind,
            "--io-engine",
            engine.flag(),
            "--workers",
            "2",
        ]);
        args.extend_from_slice(extra);
        self.spawn(&args)
    }
}

/// Runs `cmd` to completion, its output collected, as [`Command::output`] does;
/// after [`RUN_DEADLINE`] the command is killed and the test fails with what it
/// wrote so far.
#[track_caller]
pub fn output_of(cmd: &mut Command) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    let (done, ended) = mpsc::channel();
    let stdout = collect(child.stdout.take().expect("piped"), done.clone());
    let stderr = collect(child.stderr.take().expect("piped"), done);
    let take = |b: &Arc<Mutex<Vec<u8>>>| {
        std::mem::take(&mut *b.lock().unwrap_or_else(PoisonError::into_inner))
    };
    let deadline = Instant::now() + RUN_DEADLINE;
    // Both outputs at their end, then the exit, which follows at once.
    let mut open = 2;
    let status = loop {
        let now = Instant::now();
        if open > 0 {
            match ended.recv_timeout(deadline.saturating_duration_since(now)) {
                Ok(()) => {
                    open -= 1;
                    continue;
                }
                // Both readers gone.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    open = 0;
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        } else if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        } else if now < deadline {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "{cmd:?} did not finish within {RUN_DEADLINE:?}; killed it.\nstdout so far:\n{}\nstderr so far:\n{}",
            String::from_utf8_lossy(&take(&stdout)),
            String::from_utf8_lossy(&take(&stderr))
        );
    };
    std::process::Output {
        status,
        stdout: take(&stdout),
        stderr: take(&stderr),
    }
}

/// Reads `pipe` to its end on a thread of its own into the buffer returned; says
/// so on `done` then.
fn collect(mut pipe: impl Read + Send + 'static, done: mpsc::Sender<()>) -> Arc<Mutex<Vec<u8>>> {
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            g.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(&buf[..n]);
        }
        let _ = done.send(());
    });
    got
}

/// Whether `tool` is installed (it answers `tool version_arg`). Without it a test
/// skips, unless CONDUIT_E2E_REQUIRE_TOOLS is set (as `tests/run.sh` does): then it
/// fails.
pub fn have(tool: &str, version_arg: &str) -> bool {
    let found = Command::new(tool)
        .arg(version_arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CONDUIT_E2E_REQUIRE_TOOLS").is_none(),
            "{tool} is required here but not installed"
        );
        eprintln!("{tool} not installed; skipping");
    }
    found
}

/// The first `IP:PORT` in a line.
pub fn addr_in(line: &str) -> SocketAddr {
    // A UDP tunnel's address shows as `ADDR/udp`.
    line.split(|c: char| c.is_whitespace() || matches!(c, '(' | ')' | '/'))
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

/// A port nothing listens on (bound, then released), which a test may bind again
/// later. It lies below the range the kernel picks outgoing connections' ports from
/// (`ip_local_port_range`), so that no connection made elsewhere in the suite takes
/// it meanwhile (port 0 would hand out one of those).
pub fn dead_port() -> u16 {
    port_below_ephemeral(|p| TcpListener::bind(("127.0.0.1", p)).is_ok())
}

/// [`dead_port`] free for UDP as well: for a server a test starts on both (a DNS
/// server), or on UDP alone.
pub fn dead_udp_port() -> u16 {
    port_below_ephemeral(|p| {
        TcpListener::bind(("127.0.0.1", p)).is_ok() && UdpSocket::bind(("127.0.0.1", p)).is_ok()
    })
}

fn port_below_ephemeral(free: impl Fn(u16) -> bool) -> u16 {
    use rand::Rng;
    let first_ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let below = 10_000..first_ephemeral.max(10_001);
    std::iter::repeat_with(|| rand::rng().random_range(below.clone()))
        .take(1_000)
        .find(|&p| free(p))
        .expect("a free port below the ephemeral range")
}

#[derive(Default)]
struct Output {
    stdout: Vec<String>,
    stderr: String,
    stdout_closed: bool,
    stderr_closed: bool,
}

/// A child process whose output is collected as it arrives.
pub struct Proc {
    child: Child,
    out: Arc<(Mutex<Output>, Condvar)>,
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn conduit");
        let out = Arc::new((Mutex::new(Output::default()), Condvar::new()));
        let stdout = child.stdout.take().expect("stdout");
        let o = out.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                o.0.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .stdout
                    .push(line);
                o.1.notify_all();
            }
            o.0.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .stdout_closed = true;
            o.1.notify_all();
        });
        let mut stderr = child.stderr.take().expect("stderr");
        let o = out.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                o.0.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .stderr
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
                o.1.notify_all();
            }
            o.0.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .stderr_closed = true;
            o.1.notify_all();
        });
        Self { child, out }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until a stdout line contains `needle`; returns the line.
    pub fn wait_stdout(&self, needle: &str) -> String {
        let (lock, cv) = &*self.out;
        let deadline = Instant::now() + DEADLINE;
        let mut o = lock.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(l) = o.stdout.iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            let now = Instant::now();
            if now >= deadline || o.stdout_closed {
                panic!(
                    "no stdout line with {needle:?}{}\nstdout: {:?}\nstderr:\n{}",
                    if o.stdout_closed {
                        " (process ended)"
                    } else {
                        " within the deadline"
                    },
                    o.stdout,
                    o.stderr
                );
            }
            o = cv
                .wait_timeout(o, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Stdout lines containing `needle` so far.
    pub fn stdout_count(&self, needle: &str) -> usize {
        let o = self.out.0.lock().unwrap_or_else(PoisonError::into_inner);
        o.stdout.iter().filter(|l| l.contains(needle)).count()
    }

    /// Waits until `n` stdout lines contain `needle`.
    pub fn wait_stdout_count(&self, needle: &str, n: usize) {
        let (lock, cv) = &*self.out;
        let deadline = Instant::now() + DEADLINE;
        let mut o = lock.lock().unwrap_or_else(PoisonError::into_inner);
        while o.stdout.iter().filter(|l| l.contains(needle)).count() < n {
            let now = Instant::now();
            if now >= deadline || o.stdout_closed {
                panic!(
                    "fewer than {n} stdout lines with {needle:?}\nstdout: {:?}\nstderr:\n{}",
                    o.stdout, o.stderr
                );
            }
            o = cv
                .wait_timeout(o, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Occurrences of `needle` in stderr so far.
    pub fn stderr_count(&self, needle: &str) -> usize {
        self.out
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stderr
            .matches(needle)
            .count()
    }

    /// Waits until stderr contains `needle` `n` times.
    pub fn wait_stderr_count(&self, needle: &str, n: usize) {
        let (lock, cv) = &*self.out;
        let deadline = Instant::now() + DEADLINE;
        let mut o = lock.lock().unwrap_or_else(PoisonError::into_inner);
        while o.stderr.matches(needle).count() < n {
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "stderr never contained {needle:?} {n} times; stderr:\n{}",
                    o.stderr
                );
            }
            o = cv
                .wait_timeout(o, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// All stdout lines so far.
    pub fn stdout(&self) -> Vec<String> {
        self.out
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stdout
            .clone()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until stderr contains `needle`.
    pub fn wait_stderr(&self, needle: &str) {
        self.wait_stderr_within(needle, DEADLINE);
    }

    /// Waits until stderr contains `needle`, for at most `limit` (for what is due
    /// only after a delay of Conduit's own, longer than [`DEADLINE`] allows).
    pub fn wait_stderr_within(&self, needle: &str, limit: Duration) {
        let (lock, cv) = &*self.out;
        let deadline = Instant::now() + limit;
        let mut o = lock.lock().unwrap_or_else(PoisonError::into_inner);
        while !o.stderr.contains(needle) {
            let now = Instant::now();
            if now >= deadline {
                panic!("stderr never contained {needle:?}; stderr:\n{}", o.stderr);
            }
            o = cv
                .wait_timeout(o, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    pub fn stderr(&self) -> String {
        self.out
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stderr
            .clone()
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                self.drain_output();
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (briefly) until both output readers have seen end of file: what the
    /// process wrote last is in `stdout()` and `stderr()` once it has exited.
    fn drain_output(&self) {
        let (lock, cv) = &*self.out;
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut o = lock.lock().unwrap_or_else(PoisonError::into_inner);
        while !(o.stdout_closed && o.stderr_closed) && Instant::now() < deadline {
            o = cv
                .wait_timeout(o, Duration::from_millis(50))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Sends a signal by name (TERM, INT, KILL).
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Asserts a process exited with `code`.
#[track_caller]
pub fn assert_code(status: ExitStatus, code: i32, stderr: &str) {
    assert_eq!(
        status.code(),
        Some(code),
        "exit status {status}; stderr:\n{stderr}"
    );
}

/// The value of the `conduit_errors_total` series of `kind` in `metrics`
/// (Prometheus text, one tunnel's); panics if there is none.
#[track_caller]
pub fn error_count(metrics: &str, kind: &str) -> String {
    let label = format!("kind=\"{kind}\"");
    metrics
        .lines()
        .find(|l| l.starts_with("conduit_errors_total{") && l.contains(&label))
        .unwrap_or_else(|| panic!("no {kind} series in {metrics}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .to_owned()
}
