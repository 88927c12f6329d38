//! The process registry: one JSON file per running tunnel process in
//! `$CONDUIT_HOME/tunnels/`, written atomically (temp file + rename), removed by the
//! process when it exits, and swept by any reader when the process is gone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::Error;
use crate::home::Home;

/// What a tunnel process was started with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryConfig {
    /// The router, `host:port`.
    pub router: String,
    /// The source, as the router resolves it.
    pub source: String,
    /// Where users connect (the address actually bound).
    pub bind: String,
    /// `tcp` or `udp` (entries written before UDP tunnels existed are TCP).
    #[serde(default = "tcp", skip_serializing_if = "is_tcp")]
    pub protocol: String,
    /// The configuration file it came from (`conduit up`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// A digest of its settings, so `up` can tell a changed tunnel from a running one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
    /// A short digest of each of its settings, by name, so `up` can say which ones
    /// changed (empty: not started by `up`, or by a version that kept none).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: BTreeMap<String, String>,
    /// It uses all of its routers at once (`--router-balance`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub balance: bool,
    /// The PROXY protocol header its streams start with (`v1`, `v2`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<String>,
    /// The addresses and CIDR blocks users may connect from (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_from: Vec<String>,
    /// Where its Prometheus metrics are served (`--metrics-bind`, as bound: a port 0
    /// given is the port the system chose), if they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    /// Seconds a stream may move nothing before it is closed
    /// (`--stream-idle-timeout`); 0: no timeout (and entries written before it).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub stream_idle_timeout_secs: u64,
    /// A UDP tunnel's: seconds a flow may carry no datagram before it ends
    /// (`--udp-idle-timeout`); 0 for a TCP tunnel (and entries written before it).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub udp_idle_timeout_secs: u64,
}

impl EntryConfig {
    /// Where users connect, as `list` and `status` show it: `ADDR`, or `ADDR/udp`.
    pub fn shown_bind(&self) -> String {
        shown_bind(&self.bind, &self.protocol)
    }
}

/// `ADDR` for a TCP tunnel, `ADDR/udp` for a UDP one.
pub fn shown_bind(bind: impl std::fmt::Display, protocol: &str) -> String {
    if is_tcp(protocol) {
        bind.to_string()
    } else {
        format!("{bind}/{protocol}")
    }
}

fn tcp() -> String {
    "tcp".into()
}

fn is_tcp(p: &str) -> bool {
    p == "tcp"
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One registered tunnel process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Unique id: the name plus a random suffix.
    pub tunnel_id: String,
    /// The tunnel's name.
    pub name: String,
    /// The process.
    pub pid: u32,
    /// When the process started, in clock ticks after boot (`/proc/PID/stat`), so
    /// that a pid reused by another program is never taken for the tunnel (absent
    /// from entries of older versions, and where there is no /proc).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<u64>,
    /// The Unix socket of its gRPC control API.
    pub control_socket: PathBuf,
    /// Its log file (background tunnels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_file: Option<PathBuf>,
    /// What it runs.
    pub config: EntryConfig,
    /// starting | running | retrying | refused | stopping
    pub status: String,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// The `conduit up --foreground` that runs this tunnel as its child and restarts
    /// it when it fails, if one does (absent from entries of older versions, which
    /// did not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervisor: Option<Supervisor>,
}

/// The `conduit up --foreground` process that supervises a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Supervisor {
    /// Its process.
    pub pid: u32,
    /// When it started, in clock ticks after boot, as [`Entry::started`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<u64>,
}

impl Supervisor {
    /// Process `pid` as a supervisor, with its start time when it can be read.
    pub fn of(pid: u32) -> Self {
        Self {
            pid,
            started: start_ticks(pid),
        }
    }

    /// Whether the supervisor still runs: its pid lives and, when its start time is
    /// known, is still that process (not a pid reused since).
    pub fn alive(&self) -> bool {
        process_alive(self.pid)
            && match self.started {
                Some(want) => start_ticks(self.pid).is_none_or(|now| now == want),
                None => true,
            }
    }
}

impl Entry {
    /// Whether `pid` still is the process that registered this entry: `None` when
    /// that cannot be told (an entry without a start time, no /proc).
    pub fn is_its_process(&self) -> Option<bool> {
        let want = self.started?;
        if !process_alive(self.pid) {
            return Some(false);
        }
        start_ticks(self.pid).map(|now| now == want)
    }

    /// The live `up --foreground` that supervises this tunnel, if one does.
    pub fn live_supervisor(&self) -> Option<Supervisor> {
        self.supervisor.filter(Supervisor::alive)
    }

    /// The creation time as Unix seconds (0 if unparsable).
    pub fn created_unix(&self) -> i64 {
        humantime::parse_rfc3339(&self.created_at)
            .ok()
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs() as i64)
    }
}

/// Now, as the registry writes times.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// The registry directory of a home.
#[derive(Debug, Clone)]
pub struct Registry {
    dir: PathBuf,
    /// The home's `run/`, where each running tunnel holds its name's lock.
    run: PathBuf,
}

impl Registry {
    /// The registry in `home`.
    pub fn new(home: &Home) -> Self {
        Self {
            dir: home.tunnels(),
            run: home.run(),
        }
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes (or replaces) an entry atomically.
    pub fn write(&self, e: &Entry) -> Result<(), Error> {
        Home::ensure_private_dir(&self.dir)?;
        write_atomically(&self.path(&e.tunnel_id), e, "cannot write registry entry")
    }

    /// Whether the registry holds entry `e` as written (its file there and readable,
    /// naming the same process).
    pub fn holds(&self, e: &Entry) -> bool {
        read_entry(&self.path(&e.tunnel_id))
            .is_some_and(|on_disk| on_disk.tunnel_id == e.tunnel_id && on_disk.pid == e.pid)
    }

    /// Removes the entry of a tunnel whose process turned out to be gone, as a sweep
    /// does: one that was still there (its process did not remove it on its way
    /// out) is noted as died (see [`Self::died`]).
    pub fn sweep_dead(&self, e: &Entry) {
        if is_id(&e.tunnel_id) && std::fs::remove_file(self.path(&e.tunnel_id)).is_ok() {
            self.note_died(e);
        }
        self.remove_socket(&e.control_socket);
    }

    /// Removes an entry (and its control socket); missing files are fine.
    pub fn remove(&self, e: &Entry) {
        if is_id(&e.tunnel_id) {
            let _ = std::fs::remove_file(self.path(&e.tunnel_id));
        }
        self.remove_socket(&e.control_socket);
    }

    /// Removes the control socket an entry names, if it is a socket in this home's
    /// `run/`: an entry is a file that a damaged disk or a careless edit can change,
    /// and sweeping it must never delete whatever else it names.
    fn remove_socket(&self, socket: &Path) {
        use std::os::unix::fs::FileTypeExt;
        let in_run = socket
            .parent()
            .and_then(|d| d.canonicalize().ok())
            .is_some_and(|d| self.run.canonicalize().is_ok_and(|run| run == d));
        let is_socket = std::fs::symlink_metadata(socket).is_ok_and(|m| m.file_type().is_socket());
        if in_run && is_socket {
            let _ = std::fs::remove_file(socket);
        }
    }

    /// Leaves word, before `conduit kill --force` sends SIGKILL to tunnel `e` (whose
    /// supervisor would take the death for a failure and restart it), that its
    /// process `e.pid` was killed on purpose (`run/NAME.killed`).
    pub fn mark_killed(&self, e: &Entry) {
        let _ = std::fs::write(self.killed_mark(&e.name), format!("{}\n", e.pid));
    }

    /// Whether tunnel `name`'s process `pid` was killed on purpose (see
    /// [`Self::mark_killed`]); the word is taken either way.
    pub fn take_killed_mark(&self, name: &str, pid: u32) -> bool {
        let path = self.killed_mark(name);
        let said = std::fs::read_to_string(&path).ok();
        let _ = std::fs::remove_file(&path);
        said.is_some_and(|s| s.trim() == pid.to_string())
    }

    fn killed_mark(&self, name: &str) -> PathBuf {
        self.run.join(format!("{name}.killed"))
    }

    /// Holds `up` and `down` of this home one at a time (until the file returned is
    /// dropped): a `down` while an `up` launches would stop some of the file's
    /// tunnels and miss those launched after it looked, and two `up`s at once would
    /// each find the other's tunnels "being started" and fail.
    /// `waiting` is called first when another `up` or `down` holds the lock, before
    /// this one waits for it (to say so), with that process's pid when it is known
    /// (each holder writes its own into the lock file).
    pub fn lock_changes(
        &self,
        waiting: impl FnOnce(Option<u32>),
    ) -> Result<std::fs::File, crate::Error> {
        use std::io::Write;
        if let Some(home) = self.dir.parent() {
            crate::Home::ensure_private_dir(home)?;
        }
        let mut name = self.dir.file_name().unwrap_or_default().to_owned();
        name.push(".lock");
        let path = self.dir.with_file_name(name);
        let holder = || {
            let text = std::fs::read_to_string(&path).ok()?;
            text.trim().parse::<u32>().ok()
        };
        let file = crate::keys::lock_beside_telling(&self.dir, || waiting(holder()))?;
        // For the next one to wait: who holds it. Only a message depends on it.
        let _ = file.set_len(0);
        let _ = (&file).write_all(format!("{}\n", std::process::id()).as_bytes());
        Ok(file)
    }

    /// Whether the registry can be read: an error naming the problem and the fix
    /// when its directory exists but cannot be listed (another user's, or a file in
    /// its place), where [`Self::entries`] would only find no tunnels.
    pub fn readable(&self) -> Result<(), String> {
        match std::fs::read_dir(&self.dir) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!(
                "cannot read the tunnel registry {}: {e}; run conduit as the user who \
                 started the tunnels, with their CONDUIT_HOME (it must be a directory they \
                 own)",
                self.dir.display()
            )),
        }
    }

    /// Every entry whose process is alive, oldest first; entries of dead processes,
    /// of pids now reused by another program (after a crash or a reboot), and
    /// unreadable files are removed on the way, except an unreadable entry that
    /// still names a live process (see [`Registry::unreadable`]).
    pub fn entries(&self) -> Vec<Entry> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for f in dir.flatten() {
            let path = f.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            match read_entry(&path) {
                Some(e) if e.is_its_process().unwrap_or_else(|| process_alive(e.pid)) => {
                    out.push(e);
                }
                Some(e) => {
                    debug!(id = %e.tunnel_id, pid = e.pid, "sweeping the entry of a dead tunnel process");
                    // The file found, whatever id it claims.
                    if is_file(&path) && std::fs::remove_file(&path).is_ok() {
                        self.note_died(&e);
                    }
                    self.remove_socket(&e.control_socket);
                }
                None => {
                    // Half-written files never exist (rename is atomic): this one is
                    // corrupt, or a newer Conduit's. Kept while the process it names
                    // lives (its owner needs it), or, when it is too damaged to name
                    // one, while its tunnel's name is held; removed otherwise.
                    let alive = match read_head(&path) {
                        Some(h) => h.alive(),
                        None => self.holder_of(&path).is_some(),
                    };
                    if !alive && is_file(&path) {
                        let _ = std::fs::remove_file(&path);
                    }
                }
            }
        }
        out.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then(a.tunnel_id.cmp(&b.tunnel_id))
        });
        out
    }

    /// Entries this version cannot read (written by a newer Conduit, or damaged)
    /// whose process still lives: left in place, and for commands to mention.
    pub fn unreadable(&self) -> Vec<Unreadable> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<Unreadable> = dir
            .flatten()
            .map(|f| f.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .filter_map(|path| {
                let bytes = read_small(&path)?;
                let why = serde_json::from_slice::<Entry>(&bytes).err()?;
                let Ok(head) = serde_json::from_slice::<Head>(&bytes) else {
                    let (name, pid) = self.holder_of(&path)?;
                    return Some(Unreadable {
                        path,
                        name: Some(name),
                        pid,
                        why: why.to_string(),
                        verified: false,
                        damaged: true,
                    });
                };
                head.alive().then(|| Unreadable {
                    path,
                    name: head.name,
                    pid: head.pid,
                    why: why.to_string(),
                    // Its start time was compared with the process's (both known).
                    verified: head.started.is_some() && start_ticks(head.pid).is_some(),
                    damaged: false,
                })
            })
            .collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }

    /// The live entry whose name or id is `key`.
    pub fn find(&self, key: &str) -> Option<Entry> {
        let all = self.entries();
        all.iter()
            .find(|e| e.tunnel_id == key)
            .or_else(|| all.iter().find(|e| e.name == key))
            .cloned()
    }

    /// The tunnel name of the entry file at `path` (`NAME-ID.json`, the id being the
    /// name and four hex digits) and the live process that holds that name, if one
    /// does: the owner of an entry too damaged to name its process.
    fn holder_of(&self, path: &Path) -> Option<(String, u32)> {
        let stem = path.file_stem()?.to_str()?;
        let (name, _) = stem.rsplit_once('-')?;
        let pid = crate::process::name_holder(&self.run, name)?;
        Some((name.to_owned(), pid))
    }
}

/// A supervised tunnel between two runs: its last run failed, and the `conduit up
/// --foreground` that runs it starts it again at [`restart_at`](Self::restart_at).
/// It has no process meanwhile, so its supervisor says so in `run/NAME.waiting`,
/// which `list`, `status` and `health` show; `kill` and `down` remove it, and the
/// supervisor, finding it gone, does not start the tunnel again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    /// The tunnel's name.
    pub name: String,
    /// What it runs (`bind` as configured: a port 0 is chosen at each start).
    pub config: EntryConfig,
    /// The `conduit up --foreground` waiting to start it.
    pub supervisor: Supervisor,
    /// Its runs that failed in a row.
    pub failures: u32,
    /// How its last run ended.
    pub last_run: String,
    /// When it is started again, Unix seconds.
    pub restart_at: i64,
}

impl Registry {
    fn waiting_path(&self, name: &str) -> PathBuf {
        self.run.join(format!("{name}.waiting"))
    }

    /// Says (atomically) that tunnel `w.name` waits to be started again.
    pub fn write_waiting(&self, w: &Waiting) -> Result<(), Error> {
        Home::ensure_private_dir(&self.run)?;
        write_atomically(
            &self.waiting_path(&w.name),
            w,
            "cannot say that a tunnel waits to start again",
        )
    }

    /// Whether tunnel `name` still waits to be started again: false once a `kill`
    /// or `down` removed its word.
    pub fn still_waiting(&self, name: &str) -> bool {
        is_file(&self.waiting_path(name))
    }

    /// Takes back the word that tunnel `name` waits (its supervisor, about to start
    /// it or giving up): true when it was still there, false when a `kill` or `down`
    /// took it first (the tunnel is then not to be started again).
    pub fn take_waiting(&self, name: &str) -> bool {
        std::fs::remove_file(self.waiting_path(name)).is_ok()
    }

    /// Every supervised tunnel waiting to be started again, by name; words whose
    /// supervisor is gone, and unreadable ones, are removed on the way.
    pub fn waiting(&self) -> Vec<Waiting> {
        let Ok(dir) = std::fs::read_dir(&self.run) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for f in dir.flatten() {
            let path = f.path();
            if path.extension().is_none_or(|x| x != "waiting") {
                continue;
            }
            let read: Option<Waiting> =
                read_small(&path).and_then(|b| serde_json::from_slice(&b).ok());
            match read {
                Some(w) if w.supervisor.alive() && path == self.waiting_path(&w.name) => {
                    out.push(w);
                }
                _ if is_file(&path) => {
                    let _ = std::fs::remove_file(&path);
                }
                _ => {}
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

/// A tunnel whose process ended without stopping (killed outright, crashed, or the
/// host rebooted): its entry was still in the registry, which a process stopping
/// removes. Kept in `run/NAME.died` for `status` and `health` to report, until a
/// tunnel of that name runs again or `kill` (or `down`) forgets it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Died {
    /// The tunnel's name.
    pub name: String,
    /// The id it had.
    pub tunnel_id: String,
    /// The process that ended.
    pub pid: u32,
    /// What it ran.
    pub config: EntryConfig,
    /// When it was found gone, RFC 3339.
    pub found_at: String,
}

impl Registry {
    fn died_path(&self, name: &str) -> PathBuf {
        self.run.join(format!("{name}.died"))
    }

    /// Notes that tunnel `e` died (see [`Died`]), unless `conduit kill --force`
    /// killed it on purpose.
    fn note_died(&self, e: &Entry) {
        let killed = std::fs::read_to_string(self.killed_mark(&e.name))
            .is_ok_and(|s| s.trim() == e.pid.to_string());
        if killed || !is_id(&e.name) {
            return;
        }
        let died = Died {
            name: e.name.clone(),
            tunnel_id: e.tunnel_id.clone(),
            pid: e.pid,
            config: e.config.clone(),
            found_at: now_rfc3339(),
        };
        let _ = write_atomically(&self.died_path(&e.name), &died, "cannot note a death");
    }

    /// The tunnels that died (see [`Died`]), by name, but for those of a name that
    /// runs again, or waits to be started again by its supervisor.
    pub fn died(&self) -> Vec<Died> {
        let Ok(dir) = std::fs::read_dir(&self.run) else {
            return Vec::new();
        };
        let running: Vec<String> = self.entries().into_iter().map(|e| e.name).collect();
        let waiting: Vec<String> = self.waiting().into_iter().map(|w| w.name).collect();
        let mut out = Vec::new();
        for f in dir.flatten() {
            let path = f.path();
            if path.extension().is_none_or(|x| x != "died") {
                continue;
            }
            let read: Option<Died> =
                read_small(&path).and_then(|b| serde_json::from_slice(&b).ok());
            match read {
                Some(d)
                    if path == self.died_path(&d.name)
                        && !running.contains(&d.name)
                        && !waiting.contains(&d.name) =>
                {
                    out.push(d);
                }
                // Of a name running again, or waiting to: kept, but not shown.
                Some(d) if path == self.died_path(&d.name) => {}
                _ if is_file(&path) => {
                    let _ = std::fs::remove_file(&path);
                }
                _ => {}
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Forgets that tunnel `name` died: a tunnel of that name runs again, or it was
    /// stopped for good (`kill`, `down`).
    pub fn forget_died(&self, name: &str) {
        if is_id(name) {
            let _ = std::fs::remove_file(self.died_path(name));
        }
    }
}

/// Writes `value` as JSON to `path` atomically: to a file beside it (named after it
/// and this process, hidden), then renamed over it, so no reader sees half of it.
fn write_atomically(path: &Path, value: &impl Serialize, what: &'static str) -> Result<(), Error> {
    let json = serde_json::to_vec_pretty(value)
        .map_err(|err| Error::Config(format!("{what}: cannot encode it: {err}")))?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let io = |source| Error::File {
        what,
        path: path.to_owned(),
        source,
    };
    std::fs::write(&tmp, json).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// The most of an entry read: entries are a few hundred bytes.
const MAX_ENTRY: u64 = 1 << 20;

/// The bytes of the entry file at `path`, if it is a regular file (a named pipe or
/// a device planted there would hold the reader) of sane size.
fn read_small(path: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    let file = crate::config::open_to_read(path).ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut bytes = Vec::new();
    file.take(MAX_ENTRY + 1).read_to_end(&mut bytes).ok()?;
    (bytes.len() as u64 <= MAX_ENTRY).then_some(bytes)
}

/// Whether `id` can be a tunnel id (`NAME-XXXX`, a name being letters, digits, `-`,
/// `_` and `.`): one read from a damaged entry must not lead out of the registry.
fn is_id(id: &str) -> bool {
    !id.is_empty()
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Whether `path` is a regular file (not followed through a link).
fn is_file(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file())
}

fn read_entry(path: &Path) -> Option<Entry> {
    serde_json::from_slice(&read_small(path)?).ok()
}

/// An entry this version cannot read whose process lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// Its file.
    pub path: PathBuf,
    /// The tunnel's name, if that much could be read.
    pub name: Option<String>,
    /// Its process.
    pub pid: u32,
    /// Why the entry could not be read.
    pub why: String,
    /// Whether the process is known to be the one that wrote the entry (its start
    /// time matches the entry's); otherwise the pid may have been reused since.
    pub verified: bool,
    /// The entry is too damaged to name its process: `pid` is the process that
    /// holds the tunnel's name (the tunnel, or its `up --foreground`).
    pub damaged: bool,
}

/// What any version's entry holds, enough to tell whether its process lives.
#[derive(Deserialize)]
struct Head {
    #[serde(default)]
    name: Option<String>,
    pid: u32,
    #[serde(default)]
    started: Option<u64>,
}

impl Head {
    fn alive(&self) -> bool {
        match (self.started, start_ticks(self.pid)) {
            (Some(want), Some(now)) => want == now && process_alive(self.pid),
            _ => process_alive(self.pid),
        }
    }
}

fn read_head(path: &Path) -> Option<Head> {
    serde_json::from_slice(&read_small(path)?).ok()
}

/// Whether a process with this pid exists (a process of another user counts).
pub fn process_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        use nix::errno::Errno;
        use nix::sys::signal::kill;
        use nix::unistd::Pid;
        let Ok(raw) = i32::try_from(pid) else {
            return false;
        };
        if raw <= 0 {
            return false;
        }
        match kill(Pid::from_raw(raw), None) {
            Ok(()) | Err(Errno::EPERM) => !is_zombie(pid),
            Err(_) => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// A zombie has exited; it only waits for its parent to collect it.
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// When process `pid` started, in clock ticks after boot (field 22 of
/// `/proc/PID/stat`); `None` without /proc or such a process.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from its end.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A fresh tunnel id: the name and four random hex digits, never the name of a
/// tunnel that runs or is being started (its name's lock in `run/`) nor another's
/// id: `kill --tunnel X` and the others take a name or an id, and must find one
/// tunnel.
pub fn new_id(home: &Home, name: &str) -> String {
    let entries = Registry::new(home).entries();
    loop {
        let id = format!("{name}-{:04x}", rand::random::<u16>());
        let taken = entries.iter().any(|e| e.name == id || e.tunnel_id == id)
            || home.run().join(format!("{id}.lock")).exists();
        if !taken {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(home: &Home, id: &str, pid: u32) -> Entry {
        Entry {
            tunnel_id: id.into(),
            name: "web".into(),
            pid,
            started: start_ticks(pid),
            control_socket: home.run().join(format!("{id}.sock")),
            log_file: None,
            config: EntryConfig {
                router: "10.2.0.1:9999".into(),
                source: "10.2.0.2:8080".into(),
                bind: "127.0.0.1:8080".into(),
                protocol: "tcp".into(),
                file: None,
                digest: String::new(),
                settings: Default::default(),
                balance: false,
                proxy_protocol: None,
                allow_from: Vec::new(),
                metrics: None,
                stream_idle_timeout_secs: 0,
                udp_idle_timeout_secs: 0,
            },
            status: "running".into(),
            created_at: now_rfc3339(),
            supervisor: None,
        }
    }

    #[test]
    fn entries_round_trip_and_dead_ones_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().to_owned());
        let reg = Registry::new(&home);
        let alive = entry(&home, "web-0001", std::process::id());
        reg.write(&alive).unwrap();
        // A pid that cannot exist (beyond pid_max).
        let dead = entry(&home, "web-0002", 4_000_000_000);
        reg.write(&dead).unwrap();
        std::fs::write(home.tunnels().join("junk.json"), b"{not json").unwrap();

        assert_eq!(reg.entries(), vec![alive.clone()]);
        assert!(!home.tunnels().join("web-0002.json").exists());
        assert!(!home.tunnels().join("junk.json").exists());
        assert_eq!(reg.find("web"), Some(alive.clone()));
        assert_eq!(reg.find("web-0001"), Some(alive.clone()));
        assert_eq!(reg.find("nope"), None);
        reg.remove(&alive);
        assert!(reg.entries().is_empty());
    }

    /// A supervisor's word that a tunnel waits to start again: read back while the
    /// supervisor lives, swept when it is gone, taken once.
    #[test]
    fn waiting_tunnels_are_read_swept_and_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().to_owned());
        let reg = Registry::new(&home);
        let w = |name: &str, pid: u32| Waiting {
            name: name.into(),
            config: entry(&home, "x-0001", pid).config,
            supervisor: Supervisor::of(pid),
            failures: 2,
            last_run: "exited with code 69".into(),
            restart_at: 1_800_000_000,
        };
        let live = w("web", std::process::id());
        reg.write_waiting(&live).unwrap();
        reg.write_waiting(&w("gone", 4_000_000_000)).unwrap();
        // A word filed under another name than its own is not believed.
        let mut misfiled = w("db", std::process::id());
        reg.write_waiting(&misfiled).unwrap();
        misfiled.name = "api".into();
        let text = serde_json::to_vec(&misfiled).unwrap();
        std::fs::write(home.run().join("db.waiting"), text).unwrap();

        assert_eq!(reg.waiting(), vec![live.clone()]);
        assert!(!home.run().join("gone.waiting").exists());
        assert!(!home.run().join("db.waiting").exists());
        assert!(reg.still_waiting("web"));
        assert!(reg.take_waiting("web"));
        assert!(!reg.still_waiting("web"));
        assert!(!reg.take_waiting("web"));
        assert!(reg.waiting().is_empty());
    }

    /// An entry a sweep finds of a dead process is noted as died, unless `kill
    /// --force` said it killed that process; a tunnel of that name running again
    /// hides it, and it is forgotten on demand.
    #[test]
    fn a_swept_entry_is_noted_as_died_until_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().to_owned());
        let reg = Registry::new(&home);
        Home::ensure_private_dir(&home.run()).unwrap();
        let dead = entry(&home, "web-0001", 4_000_000_000);
        reg.write(&dead).unwrap();
        let mut killed = entry(&home, "db-0002", 4_000_000_001);
        killed.name = "db".into();
        reg.write(&killed).unwrap();
        reg.mark_killed(&killed);

        assert!(reg.entries().is_empty());
        let died = reg.died();
        assert_eq!(died.len(), 1, "{died:?}");
        assert_eq!(
            (
                died[0].name.as_str(),
                died[0].tunnel_id.as_str(),
                died[0].pid
            ),
            ("web", "web-0001", 4_000_000_000)
        );
        // Running again under that name: not shown.
        let again = entry(&home, "web-0003", std::process::id());
        reg.write(&again).unwrap();
        assert!(reg.died().is_empty());
        reg.remove(&again);
        assert_eq!(reg.died().len(), 1);
        reg.forget_died("web");
        assert!(reg.died().is_empty());
        // A sweep that finds the file gone (removed by its process) notes nothing.
        reg.sweep_dead(&dead);
        assert!(reg.died().is_empty());
    }

    /// Sweeping a dead entry removes its file and its control socket in `run/`, and
    /// nothing else, whatever a damaged entry names.
    #[test]
    fn a_sweep_deletes_only_the_entry_and_its_socket() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().to_owned());
        let reg = Registry::new(&home);
        Home::ensure_private_dir(&home.run()).unwrap();

        let stale = entry(&home, "web-0003", 4_000_000_000);
        let _socket = std::os::unix::net::UnixListener::bind(&stale.control_socket).unwrap();
        reg.write(&stale).unwrap();

        let victim = dir.path().join("victim.sock");
        std::fs::write(&victim, b"keep me").unwrap();
        let in_run = home.run().join("web-0004.sock");
        std::fs::write(&in_run, b"not a socket").unwrap();
        let mut damaged = entry(&home, "web-0004", 4_000_000_000);
        damaged.control_socket = victim.clone();
        reg.write(&damaged).unwrap();
        let mut plain_file = entry(&home, "web-0005", 4_000_000_000);
        plain_file.control_socket = in_run.clone();
        reg.write(&plain_file).unwrap();
        // An id that leads out of the registry, in a file of its own name.
        let mut escaping = entry(&home, "../keep", 4_000_000_000);
        escaping.control_socket = victim.clone();
        std::fs::write(dir.path().join("keep.json"), b"{}").unwrap();
        std::fs::write(
            home.tunnels().join("web-0006.json"),
            serde_json::to_vec(&escaping).unwrap(),
        )
        .unwrap();

        assert!(reg.entries().is_empty());
        assert!(!stale.control_socket.exists());
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
        assert_eq!(std::fs::read(&in_run).unwrap(), b"not a socket");
        assert!(dir.path().join("keep.json").exists());
        assert_eq!(std::fs::read_dir(home.tunnels()).unwrap().count(), 0);

        reg.remove(&escaping);
        assert!(dir.path().join("keep.json").exists());
    }

    /// An entry a newer Conduit might write (here: a status this version does not
    /// know the form of) is kept while its process lives, and reported; once the
    /// process is gone it is swept like any other.
    #[test]
    fn an_unreadable_entry_of_a_live_process_is_kept_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().to_owned());
        let reg = Registry::new(&home);
        let newer = |id: &str, pid: u32| {
            let mut v = serde_json::to_value(entry(&home, id, pid)).unwrap();
            v["status"] = serde_json::json!({"state": "running"});
            let path = home.tunnels().join(format!("{id}.json"));
            std::fs::create_dir_all(home.tunnels()).unwrap();
            std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
            path
        };
        let live = newer("web-0005", std::process::id());
        let gone = newer("web-0006", 4_000_000_000);
        assert!(reg.entries().is_empty());
        assert!(live.exists());
        assert!(!gone.exists());
        let u = reg.unreadable();
        assert_eq!(u.len(), 1, "{u:?}");
        assert_eq!(u[0].path, live);
        assert_eq!(u[0].name.as_deref(), Some("web"));
        assert_eq!(u[0].pid, std::process::id());
        assert!(
            u[0].why.starts_with("invalid type: map, expected a string"),
            "{}",
            u[0].why
        );
        // The same pid, started at another time: not its process, so swept.
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&live).unwrap()).unwrap();
        v["started"] = serde_json::json!(v["started"].as_u64().unwrap() + 1);
        std::fs::write(&live, serde_json::to_vec(&v).unwrap()).unwrap();
        assert!(reg.unreadable().is_empty());
        assert!(reg.entries().is_empty());
        assert!(!live.exists());
    }

    #[test]
    fn an_entry_knows_its_own_process_and_not_a_reused_pid() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().to_owned());
        let mut e = entry(&home, "web-0003", std::process::id());
        assert!(e.started.is_some());
        assert_eq!(e.is_its_process(), Some(true));
        // The same pid, started at another time: another program.
        e.started = e.started.map(|t| t + 1);
        assert_eq!(e.is_its_process(), Some(false));
        e.started = None;
        assert_eq!(e.is_its_process(), None);
    }

    #[test]
    fn the_entry_of_a_pid_reused_by_another_program_is_swept() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().to_owned());
        let reg = Registry::new(&home);
        let mut e = entry(&home, "web-0004", std::process::id());
        let Some(t) = e.started else {
            return; // no /proc here: nothing to tell them apart by
        };
        e.started = Some(t + 1);
        reg.write(&e).unwrap();
        assert!(reg.entries().is_empty());
        assert!(!home.tunnels().join("web-0004.json").exists());
    }

    /// An entry written before supervisors were recorded reads as unsupervised; one
    /// that names a supervisor names it while that process lives, and not once its
    /// pid is dead or another program's.
    #[test]
    fn a_supervisor_is_recorded_and_old_entries_have_none() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().to_owned());
        let reg = Registry::new(&home);
        let mut e = entry(&home, "web-0007", std::process::id());
        let mut old = serde_json::to_value(&e).unwrap();
        assert!(old.get("supervisor").is_none(), "{old}");
        old.as_object_mut().unwrap().remove("started");
        std::fs::create_dir_all(home.tunnels()).unwrap();
        std::fs::write(
            home.tunnels().join("web-0007.json"),
            serde_json::to_vec(&old).unwrap(),
        )
        .unwrap();
        let read = reg.entries();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].supervisor, None);
        assert_eq!(read[0].live_supervisor(), None);

        let me = Supervisor::of(std::process::id());
        e.supervisor = Some(me);
        reg.write(&e).unwrap();
        assert_eq!(reg.entries()[0].live_supervisor(), Some(me));
        e.supervisor = Some(Supervisor {
            pid: 4_000_000_000,
            started: None,
        });
        assert_eq!(e.live_supervisor(), None);
        if let Some(t) = me.started {
            e.supervisor = Some(Supervisor {
                pid: me.pid,
                started: Some(t + 1),
            });
            assert_eq!(e.live_supervisor(), None);
        }
    }

    #[test]
    fn the_json_has_the_spec_fields() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().to_owned());
        let e = entry(&home, "web-00ff", 42);
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        for field in [
            "tunnel_id",
            "name",
            "pid",
            "control_socket",
            "config",
            "status",
            "created_at",
        ] {
            assert!(v.get(field).is_some(), "missing {field}");
        }
        assert_eq!(v["config"]["router"], "10.2.0.1:9999");
        assert!(e.created_unix() > 1_700_000_000);
    }
}
