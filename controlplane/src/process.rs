//! A tunnel as a registered process: its registry entry, its control API, and the
//! tunnel itself, torn down together.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::control::{self, ControlState, TunnelFacts};
use crate::registry::{self, Entry, EntryConfig, Registry};
use crate::stop::StopSignals;
use crate::{ClientTunnel, Error, Home};

/// How a tunnel process is registered.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Where the registry lives.
    pub home: Home,
    /// The tunnel's name.
    pub name: String,
    /// The router, as given.
    pub router: String,
    /// The source, as given.
    pub source: String,
    /// The configuration file (for `up`).
    pub file: Option<PathBuf>,
    /// Digest of the settings (for `up`).
    pub digest: String,
    /// Digest of each setting, by name (for `up`).
    pub settings: std::collections::BTreeMap<String, String>,
    /// The log file, for background tunnels.
    pub log_file: Option<PathBuf>,
    /// Drain deadline for signals and for shutdown requests that name none.
    pub drain: Duration,
    /// Where to serve the tunnel's Prometheus metrics over HTTP, if anywhere.
    pub metrics_bind: Option<std::net::SocketAddr>,
    /// The `up --foreground` whose child this tunnel is, if any.
    pub supervisor: Option<registry::Supervisor>,
}

/// The variable through which a launching parent tells its child that the claim on
/// the tunnel's name comes with a descriptor the child inherited (see [`NameClaim`]).
pub const INHERITED_CLAIM: &str = "CONDUIT_NAME_CLAIM";

/// An exclusive claim on a tunnel name: a lock (`flock`) on `run/NAME.lock`, taken
/// before anything of the tunnel exists and held as long as the file stays open — by
/// the tunnel process, or by a launching parent and then by the child it hands the
/// descriptor to. The kernel drops the lock when its last holder exits, however it
/// exits, so a crashed tunnel leaves no stale claim (only its file, which the next
/// claim takes over).
///
/// The holder that ends the claim removes the file, while it still holds the lock,
/// so a stopped tunnel or a failed start leaves nothing in `run/`. Removing it opens a
/// race the claim closes: a second claimant may have opened the file just before it
/// was removed, and would then lock a file no longer at the path while a third
/// creates and locks a new one. So a lock counts only once the path is seen to still
/// name the locked file (same device and inode); otherwise the claimant opens the
/// path again.
#[derive(Debug)]
pub struct NameClaim {
    held: Held,
    path: PathBuf,
}

/// How a [`NameClaim`] holds its lock.
#[derive(Debug)]
enum Held {
    /// Locked through this descriptor.
    Own(std::fs::File),
    /// Locked through a descriptor the launching parent handed this process (open
    /// until it exits); this is the same file opened again, to know it by.
    Inherited(std::fs::File),
    /// Handed on to a child, which ends the claim: its file is the child's to remove.
    HandedOn,
    /// Locked through a descriptor a supervisor (`up --foreground`) lent this
    /// process: the supervisor keeps the claim when this process ends, to start the
    /// tunnel again, and removes the file itself.
    Lent,
}

/// Whom a claimant's parent left the claim with, if it passed one on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Parent {
    /// No claim came from the parent: this process claims the name itself.
    None,
    /// Handed on for good ([`NameClaim::handed_on`]): the claim ends with this process.
    HandedOn,
    /// Lent by a supervisor that keeps it.
    Supervisor,
}

/// How many times a claimant opens the lock file again after finding that the file
/// it locked was removed (or replaced) meanwhile. Each retry means another claimant
/// ended its claim in between: a handful is already far beyond what happens.
const CLAIM_TRIES: usize = 8;

/// How often a running tunnel checks that its registry entry is still there.
const ENTRY_CHECK: Duration = Duration::from_secs(5);

/// Claims `name` for a tunnel of this home, or says which tunnel holds it.
pub fn claim_name(home: &Home, name: &str) -> Result<NameClaim, Error> {
    let inherited = std::env::var_os(INHERITED_CLAIM).is_some_and(|n| n == name);
    let parent = if inherited {
        Parent::HandedOn
    } else {
        Parent::None
    };
    claim(home, name, parent)
}

/// [`claim_name`] for a child of `up --foreground`: the claim its supervisor lent it
/// stays with the supervisor when this process ends (so that no other `start` or
/// `up` takes the name while the supervisor waits to start the tunnel again).
pub fn claim_supervised_name(home: &Home, name: &str) -> Result<NameClaim, Error> {
    let inherited = std::env::var_os(INHERITED_CLAIM).is_some_and(|n| n == name);
    let parent = if inherited {
        Parent::Supervisor
    } else {
        Parent::None
    };
    claim(home, name, parent)
}

/// [`claim_name`], told whether (and how) this process runs under its parent's
/// claim on `name`.
fn claim(home: &Home, name: &str, parent: Parent) -> Result<NameClaim, Error> {
    let run = home.run();
    Home::ensure_private_dir(&run)?;
    let path = run.join(format!("{name}.lock"));
    for _ in 0..CLAIM_TRIES {
        let file = open_lock(&path)?;
        match lock(&file, &path)? {
            Locked::Yes => {
                // The file is this claim's from here, maybe made by it just now: a
                // refusal below drops the claim, which removes the file, so that a
                // start refused leaves nothing in `run/`.
                let claim = NameClaim {
                    held: Held::Own(file),
                    path,
                };
                let entries = Registry::new(home).entries();
                // A tunnel of a version without name locks is known by its entry alone.
                if let Some(e) = entries.iter().find(|e| e.name == name) {
                    return Err(taken(name, Some(e.pid), Some(&e.tunnel_id)));
                }
                // Commands take a name or an id: one may not be the other's.
                if let Some(e) = entries.iter().find(|e| e.tunnel_id == name) {
                    return Err(Error::Config(format!(
                        "{name:?} is the id of the running tunnel {:?} (pid {}): a tunnel \
                         named so could not be told from it by `conduit kill --tunnel`, \
                         `logs` and the others; choose another name (--name, or name in \
                         the file)",
                        e.name, e.pid
                    )));
                }
                claim.set_holder(std::process::id())?;
                return Ok(claim);
            }
            Locked::Moved => continue,
            Locked::Busy if parent != Parent::None => {
                let held = match parent {
                    Parent::Supervisor => Held::Lent,
                    _ => Held::Inherited(file),
                };
                return Ok(NameClaim { held, path });
            }
            Locked::Busy => {
                let holder = std::fs::read_to_string(&path).ok();
                let holder = holder.as_deref().map(Holder::parse);
                let pid = holder.and_then(|h| h.pid);
                if let Some(h) = holder.filter(|h| h.supervisor) {
                    if let Some(pid) = h.live_supervisor() {
                        return Err(supervised(name, pid));
                    }
                    // Its supervisor is gone (killed outright) and its tunnel holds
                    // the name on: that tunnel is the one to stop.
                    let running = Registry::new(home).find(name);
                    return Err(match running {
                        Some(e) => taken(name, Some(e.pid), Some(&e.tunnel_id)),
                        None => taken(name, None, None),
                    });
                }
                let id = Registry::new(home)
                    .find(name)
                    .filter(|e| Some(e.pid) == pid)
                    .map(|e| e.tunnel_id);
                return Err(taken(name, pid, id.as_deref()));
            }
        }
    }
    Err(Error::File {
        what: "cannot lock the tunnel's name lock",
        path,
        source: std::io::Error::other(format!(
            "it was removed or replaced each of {CLAIM_TRIES} times it was locked; try again"
        )),
    })
}

fn open_lock(path: &std::path::Path) -> Result<std::fs::File, Error> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|source| Error::File {
            what: "cannot open the tunnel's name lock",
            path: path.to_owned(),
            source,
        })
}

/// What [`lock`] found.
#[derive(Debug, PartialEq, Eq)]
enum Locked {
    /// Locked, and the path names the locked file: the claim is this process's.
    Yes,
    /// Another descriptor holds the lock.
    Busy,
    /// Locked, but the file is no longer at the path (its holder removed it as it
    /// ended its claim, after this one opened it): the lock is worth nothing, and
    /// is dropped with `file`.
    Moved,
}

/// Tries to lock `file`, opened from `path`, and checks that `path` still names it.
fn lock(file: &std::fs::File, path: &std::path::Path) -> Result<Locked, Error> {
    match file.try_lock() {
        Ok(()) if names(path, file) => Ok(Locked::Yes),
        Ok(()) => {
            // Unlocked now rather than when `file` closes: whoever holds the same
            // stale file open may go on to the path at once.
            let _ = file.unlock();
            Ok(Locked::Moved)
        }
        Err(std::fs::TryLockError::WouldBlock) => Ok(Locked::Busy),
        Err(std::fs::TryLockError::Error(source)) => Err(Error::File {
            what: "cannot lock the tunnel's name lock",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Whether `path` names the file open as `file` (same device and inode).
#[cfg(unix)]
fn names(path: &std::path::Path, file: &std::fs::File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(path), file.metadata()) {
        (Ok(at), Ok(open)) => at.dev() == open.dev() && at.ino() == open.ino(),
        _ => false,
    }
}

/// Whether `path` names the file open as `file`: without inodes to compare, whether
/// it names a file at all.
#[cfg(not(unix))]
fn names(path: &std::path::Path, _file: &std::fs::File) -> bool {
    path.is_file()
}

/// What a lock file says of its holder: `PID`, or `PID supervisor TICKS` for an
/// `up --foreground` that keeps the claim for its child (TICKS: when it started,
/// to tell it from a later process given the same pid).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Holder {
    pid: Option<u32>,
    supervisor: bool,
    started: Option<u64>,
}

impl Holder {
    fn parse(text: &str) -> Self {
        let mut words = text.split_whitespace();
        Holder {
            pid: words.next().and_then(|w| w.parse().ok()),
            supervisor: words.next() == Some(SUPERVISOR_MARK),
            started: words.next().and_then(|w| w.parse().ok()),
        }
    }

    /// The supervisor's pid while that very process runs.
    fn live_supervisor(&self) -> Option<u32> {
        let pid = self.pid?;
        let alive = match (self.started, registry::start_ticks(pid)) {
            (Some(want), Some(now)) => want == now,
            (None, _) | (_, None) => registry::process_alive(pid),
        };
        alive.then_some(pid)
    }
}

/// The live process that holds `name`'s lock in the `run/` directory `run`: its
/// tunnel, or the `up --foreground` that supervises it. For an entry too damaged
/// to say which process it belongs to.
pub(crate) fn name_holder(run: &std::path::Path, name: &str) -> Option<u32> {
    let path = run.join(format!("{name}.lock"));
    let file = crate::config::open_to_read(&path).ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(file, 256), &mut text).ok()?;
    let holder = Holder::parse(&text);
    if holder.supervisor {
        return holder.live_supervisor();
    }
    holder.pid.filter(|pid| registry::process_alive(*pid))
}

/// The word after the pid in the lock file of a name a supervisor holds.
const SUPERVISOR_MARK: &str = "supervisor";

/// The refusal of a name that an `up --foreground` holds for its tunnel.
fn supervised(name: &str, pid: u32) -> Error {
    Error::Config(format!(
        "tunnel {name:?} is run by `conduit up --foreground` (pid {pid}), which restarts it \
         when it fails and holds its name meanwhile: leave it to that supervisor, stop the \
         supervisor (or the service that runs it) first, or choose another name (--name, \
         or name in the file)"
    ))
}

fn taken(name: &str, pid: Option<u32>, id: Option<&str>) -> Error {
    let Some(id) = id else {
        // Claimed, not registered yet: a `start` or `up` launching it right now (or a
        // tunnel whose registry entry was deleted by hand).
        let (by, stray) = match pid {
            Some(p) => (
                format!(" (by pid {p})"),
                format!(
                    "; if `conduit list` never shows it, pid {p} holds the name without a \
                     registry entry: stop it with `kill {p}`"
                ),
            ),
            None => (String::new(), String::new()),
        };
        return Error::Config(format!(
            "a tunnel named {name:?} is being started right now{by}: see it with \
             `conduit list` once that is done, or choose another name (--name, or name in \
             the file){stray}"
        ));
    };
    let pid = pid.map(|p| format!(", pid {p}")).unwrap_or_default();
    Error::Config(format!(
        "a tunnel named {name:?} is already running (id {id}{pid}): stop it with \
         `conduit kill --tunnel {name}` or choose another name (--name, or name in the file)"
    ))
}

impl NameClaim {
    /// Records `pid` as the claim's holder in the lock file, for the message a
    /// second claimant gets.
    pub fn set_holder(&self, pid: u32) -> Result<(), Error> {
        self.write_holder(&format!("{pid}\n"))
    }

    /// Records this process as a supervisor that holds the claim for its child, for
    /// the message a second claimant gets.
    pub fn set_supervisor(&self) -> Result<(), Error> {
        let me = std::process::id();
        let started = registry::start_ticks(me).map_or(String::new(), |t| format!(" {t}"));
        self.write_holder(&format!("{me} {SUPERVISOR_MARK}{started}\n"))
    }

    fn write_holder(&self, text: &str) -> Result<(), Error> {
        let Held::Own(file) = &self.held else {
            return Ok(());
        };
        let mut file = file;
        use std::io::{Seek, Write};
        let io = |source| Error::File {
            what: "cannot write the tunnel's name lock",
            path: self.path.clone(),
            source,
        };
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)
    }

    /// Lets processes started from now on inherit the locked descriptor, so that a
    /// child holds the claim after this process exits. The child learns of it from
    /// [`INHERITED_CLAIM`].
    pub fn make_inheritable(&self) -> Result<(), Error> {
        #[cfg(unix)]
        if let Held::Own(file) = &self.held {
            use nix::fcntl::{FcntlArg, FdFlag, fcntl};
            fcntl(file, FcntlArg::F_SETFD(FdFlag::empty())).map_err(|e| Error::File {
                what: "cannot hand on the tunnel's name lock",
                path: self.path.clone(),
                source: e.into(),
            })?;
        }
        Ok(())
    }

    /// Runs `spawn` (which starts a child) with the claim's descriptor inheritable,
    /// and makes it private again after: only that child inherits it, not one
    /// started later for another name. The caller starts no other process meanwhile.
    pub fn lend_while<T>(&self, spawn: impl FnOnce() -> T) -> Result<T, Error> {
        self.make_inheritable()?;
        let spawned = spawn();
        #[cfg(unix)]
        if let Held::Own(file) = &self.held {
            use nix::fcntl::{FcntlArg, FdFlag, fcntl};
            fcntl(file, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(|e| Error::File {
                what: "cannot keep the tunnel's name lock from later children",
                path: self.path.clone(),
                source: e.into(),
            })?;
        }
        Ok(spawned)
    }

    /// The child this claim was made inheritable for is up and holds it: this
    /// process lets go of its descriptor, and leaves the file for the child to
    /// remove when it ends.
    pub fn handed_on(mut self) {
        self.held = Held::HandedOn;
    }
}

impl Drop for NameClaim {
    /// Ends the claim: removes the lock file while the lock is still held (the
    /// descriptor closes after this, or for an inherited claim when the process
    /// exits), so no other claimant can hold the file being removed; one that opened
    /// it before finds it gone once it locks it, and opens the path again.
    fn drop(&mut self) {
        let (Held::Own(file) | Held::Inherited(file)) = &self.held else {
            // Handed on, or lent: the file is another process's to remove.
            return;
        };
        // Only the file this claim holds: never one a later claim made.
        if names(&self.path, file) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A started tunnel with its registry entry and control API.
pub struct RegisteredTunnel {
    tunnel: ClientTunnel,
    entry: Entry,
    registry: Registry,
    state: ControlState,
    drain: Duration,
    metrics: Option<tokio::net::TcpListener>,
}

impl RegisteredTunnel {
    /// Registers `tunnel` (already bound) and starts its control API.
    pub async fn register(tunnel: ClientTunnel, r: Registration) -> Result<Self, Error> {
        let registry = Registry::new(&r.home);
        let id = registry::new_id(&r.home, &r.name);
        let bind = tunnel.local_addr().to_string();
        let entry = Entry {
            tunnel_id: id.clone(),
            name: r.name.clone(),
            pid: std::process::id(),
            started: registry::start_ticks(std::process::id()),
            control_socket: r.home.run().join(format!("{id}.sock")),
            log_file: r.log_file.clone(),
            config: EntryConfig {
                router: r.router.clone(),
                source: r.source.clone(),
                bind: bind.clone(),
                protocol: tunnel.protocol().into(),
                file: r.file.clone(),
                digest: r.digest.clone(),
                settings: r.settings.clone(),
                balance: tunnel.balance(),
                proxy_protocol: tunnel.proxy_protocol().map(|v| v.to_string()),
                allow_from: tunnel
                    .allow_from()
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                metrics: None,
                stream_idle_timeout_secs: tunnel.stream_idle().map_or(0, |t| t.timeout().as_secs()),
                udp_idle_timeout_secs: tunnel.udp_idle_timeout().map_or(0, |t| t.as_secs()),
            },
            status: "starting".into(),
            created_at: registry::now_rfc3339(),
            supervisor: r.supervisor,
        };
        let facts = Arc::new(TunnelFacts {
            id,
            name: r.name,
            router: r.router,
            source: r.source,
            bind,
            created_at: entry.created_unix(),
            engine: tunnel.engine().to_string(),
            workers: tunnel.workers() as u32,
            kernel_tls: tunnel.kernel_tls(),
        });
        let (shutdown, _) = watch::channel(None);
        let state = ControlState {
            facts,
            link: tunnel.status(),
            dp: tunnel.dataplane(),
            shutdown: Arc::new(shutdown),
            default_drain: r.drain,
            counters: tunnel.counters(),
            rotator: tunnel.key_rotator(),
            routers: tunnel.links(),
            router_links: tunnel.router_links(),
        };
        let metrics = match r.metrics_bind {
            Some(addr) => {
                let bound = tokio::net::TcpListener::bind(addr).await;
                Some(bound.map_err(|source| Error::Listen {
                    what: "serve metrics",
                    addr,
                    source,
                    fix: "choose another --metrics-bind",
                })?)
            }
            None => None,
        };
        let mut entry = entry;
        entry.config.metrics = (metrics.as_ref())
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.to_string());
        Ok(Self {
            tunnel,
            entry,
            registry,
            state,
            drain: r.drain,
            metrics,
        })
    }

    /// Where the metrics are served, if they are.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The registry id.
    pub fn id(&self) -> &str {
        &self.entry.tunnel_id
    }

    /// Runs until a stop signal (`stops`), a `Shutdown` request, or a fatal refusal;
    /// a stop signal while it drains closes the open connections at once. The entry
    /// and the control socket are removed at the end, and the log's last line says
    /// why the tunnel stopped and how its drain went.
    pub async fn run(self, mut stops: StopSignals) -> Result<(), Error> {
        let Self {
            tunnel,
            mut entry,
            registry,
            state,
            drain,
            metrics,
        } = self;
        registry.write(&entry)?;
        // A tunnel of this name that died before is running again.
        registry.forget_died(&entry.name);
        let mut stopped = state.shutdown.subscribe();
        // The control API and the metrics stay served until the tunnel has stopped,
        // not just until a shutdown is ordered: while it drains, `list` and `status`
        // still see it, and a second `Shutdown` (kill --force) can cut the drain short.
        let (exited, _) = watch::channel(false);
        let until_exit = || {
            let mut s = exited.subscribe();
            async move {
                let _ = s.wait_for(|done| *done).await;
            }
        };
        let api_stop = until_exit();
        let api = match control::serve(entry.control_socket.clone(), state.clone(), api_stop).await
        {
            Ok(api) => api,
            Err(e) => {
                registry.remove(&entry);
                return Err(e);
            }
        };

        let metrics_task = metrics.map(|l| control::serve_metrics(l, state.clone(), until_exit()));

        // Keep the registry's status word in step with the router link, and with a
        // stop ordered (`up` leaves no tunnel that is stopping for "up to date"); and
        // the entry there at all: one deleted or damaged (by hand, a cleaner, a full
        // disk) would leave the tunnel out of every command's sight.
        let updater = {
            let registry = registry.clone();
            let mut link = state.link.clone();
            let mut ordered = state.shutdown.subscribe();
            let state = state.clone();
            let mut e = entry.clone();
            let mut look = tokio::time::interval(ENTRY_CHECK);
            look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tokio::spawn(async move {
                loop {
                    let word = state.status_word();
                    let lost = !registry.holds(&e);
                    if e.status != word || lost {
                        e.status = word.to_owned();
                        // Said once written: out of file descriptors, neither the
                        // read nor the write goes through, and the entry is fine.
                        match registry.write(&e) {
                            Ok(()) if lost => {
                                warn!(id = %e.tunnel_id, "this tunnel's registry entry was gone or damaged: written again");
                            }
                            Ok(()) => {}
                            Err(err) => warn!("cannot update the registry: {err}"),
                        }
                    }
                    let changed = tokio::select! {
                        r = link.changed() => r,
                        r = ordered.changed() => r,
                        _ = look.tick() => Ok(()),
                    };
                    if changed.is_err() {
                        return;
                    }
                }
            })
        };

        // One task owns the stop signals: the first orders the stop, with the
        // default drain; each later one (or one after a `Shutdown` request) closes
        // the connections still draining now. The first is kept for the last line.
        let (signalled, mut first_signal) = tokio::sync::oneshot::channel::<&'static str>();
        let signals = {
            let state = state.clone();
            tokio::spawn(async move {
                let mut signalled = Some(signalled);
                loop {
                    let signal = stops.next().await;
                    if state.shutdown.borrow().is_some() {
                        control::order_shutdown(&state.shutdown, Duration::ZERO);
                        crate::stop::cut_drain(&state.dp, signal);
                        continue;
                    }
                    if let Some(tx) = signalled.take() {
                        let _ = tx.send(signal);
                    }
                    control::order_shutdown(&state.shutdown, drain);
                    info!("asked to stop ({signal})");
                }
            })
        };
        let shutdown = state.shutdown.clone();
        let result = tunnel
            .run(async move {
                let _ = stopped.wait_for(Option::is_some).await;
                // The shortest drain ordered (a later order never lengthens it).
                shutdown.borrow().map_or(drain, |o| o.drain)
            })
            .await;
        signals.abort();
        updater.abort();
        exited.send_replace(true);
        let _ = api.await;
        if let Some(t) = metrics_task {
            let _ = t.await;
        }
        entry.status = "stopping".into();
        registry.remove(&entry);
        let drained = result?;
        // No signal came first: a `Shutdown` request did.
        let why = (first_signal.try_recv())
            .unwrap_or("asked to on its control socket: conduit kill, down or up");
        let drain = state.shutdown.borrow().map_or(drain, |o| o.drain);
        let what = format!("tunnel {:?}", entry.name);
        info!("{}", crate::stop::stopped_line(&what, why, drain, drained));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn home() -> (tempfile::TempDir, Home) {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().join("home"));
        (dir, home)
    }

    #[test]
    fn a_claim_excludes_a_second_and_its_end_removes_the_file() {
        let (_dir, home) = home();
        let path = home.run().join("t.lock");
        let a = claim(&home, "t", Parent::None).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        let Err(Error::Config(why)) = claim(&home, "t", Parent::None) else {
            panic!("a second claim of a held name succeeded");
        };
        assert!(
            why.starts_with("a tunnel named \"t\" is being started right now (by pid "),
            "{why}"
        );
        drop(a);
        assert!(!path.exists(), "the ended claim left {}", path.display());
        let again = claim(&home, "t", Parent::None).unwrap();
        assert!(path.exists());
        drop(again);
        assert!(!path.exists());
    }

    /// A name refused because a running tunnel has it as its id (or as the name
    /// in an entry without a lock) leaves no lock file: it used to stay in `run/`.
    #[test]
    fn a_name_refused_for_a_running_tunnels_id_leaves_no_lock_file() {
        let (_dir, home) = home();
        let me = std::process::id();
        let entry = Entry {
            tunnel_id: "web-0c83".into(),
            name: "web".into(),
            pid: me,
            started: registry::start_ticks(me),
            control_socket: home.run().join("web-0c83.sock"),
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
            created_at: registry::now_rfc3339(),
            supervisor: None,
        };
        Registry::new(&home).write(&entry).unwrap();
        for name in ["web-0c83", "web"] {
            let Err(Error::Config(why)) = claim(&home, name, Parent::None) else {
                panic!("{name} was claimed beside the running tunnel");
            };
            let lock = home.run().join(format!("{name}.lock"));
            assert!(
                !lock.exists(),
                "refused ({why}), and left {}",
                lock.display()
            );
        }
    }

    #[test]
    fn a_claimant_that_opened_the_file_before_its_holder_removed_it_does_not_win() {
        let (_dir, home) = home();
        let path = home.run().join("t.lock");
        let a = claim(&home, "t", Parent::None).unwrap();
        // B opens the file, then A ends its claim (removing the file) before B locks.
        let b = open_lock(&path).unwrap();
        assert_eq!(lock(&b, &path).unwrap(), Locked::Busy);
        drop(a);
        // C claims the name meanwhile: a new file at the path.
        let c = claim(&home, "t", Parent::None).unwrap();
        // B's lock on the removed file is worth nothing: it must not count as the
        // claim, or B and C would both hold the name.
        assert_eq!(lock(&b, &path).unwrap(), Locked::Moved);
        // Opening the path again, B finds C's claim.
        let b2 = open_lock(&path).unwrap();
        assert_eq!(lock(&b2, &path).unwrap(), Locked::Busy);
        assert!(matches!(
            claim(&home, "t", Parent::None),
            Err(Error::Config(_))
        ));
        // B's stale open does not keep C from ending its claim cleanly.
        drop(c);
        assert!(!path.exists());
        drop((b, b2));
        // Nor is anything left that keeps the name from being claimed again.
        let d = claim(&home, "t", Parent::None).unwrap();
        assert!(path.exists());
        drop(d);
    }

    #[test]
    fn a_lock_on_a_removed_file_is_let_go_at_once() {
        let (_dir, home) = home();
        let path = home.run().join("t.lock");
        let a = claim(&home, "t", Parent::None).unwrap();
        let (b, b_again) = (open_lock(&path).unwrap(), open_lock(&path).unwrap());
        drop(a);
        assert_eq!(lock(&b, &path).unwrap(), Locked::Moved);
        // Another descriptor of the same stale file can lock it: B did not keep it.
        assert_eq!(lock(&b_again, &path).unwrap(), Locked::Moved);
        assert!(
            !path.exists(),
            "a stale lock must not create the file again"
        );
    }

    #[test]
    fn a_file_left_by_a_crashed_holder_is_taken_over() {
        let (_dir, home) = home();
        let path = home.run().join("t.lock");
        Home::ensure_private_dir(&home.run()).unwrap();
        // What a SIGKILLed tunnel leaves: the file, unlocked, its pid inside.
        std::fs::write(&path, "999999\n").unwrap();
        let c = claim(&home, "t", Parent::None).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        drop(c);
        assert!(!path.exists());
    }

    #[test]
    fn a_claim_handed_on_leaves_the_file_to_the_child_which_removes_it() {
        let (_dir, home) = home();
        let path = home.run().join("t.lock");
        let parent = claim(&home, "t", Parent::None).unwrap();
        parent.make_inheritable().unwrap();
        // The child, under its parent's claim (here the parent's descriptor is
        // still open in this one process, as the inherited one is in a child).
        let child = claim(&home, "t", Parent::HandedOn).unwrap();
        assert!(matches!(child.held, Held::Inherited(_)));
        parent.handed_on();
        assert!(path.exists(), "the parent removed the file its child holds");
        drop(child);
        assert!(!path.exists(), "the child left its file as it ended");
    }

    #[test]
    fn an_inherited_claim_never_removes_a_file_it_does_not_hold() {
        let (_dir, home) = home();
        let path = home.run().join("t.lock");
        let parent = claim(&home, "t", Parent::None).unwrap();
        let child = claim(&home, "t", Parent::HandedOn).unwrap();
        // The file is gone (by hand) and another claim made a new one.
        std::fs::remove_file(&path).unwrap();
        drop(parent);
        let other = claim(&home, "t", Parent::None).unwrap();
        drop(child);
        assert!(path.exists(), "the child removed another claim's file");
        drop(other);
        assert!(!path.exists());
    }

    #[test]
    fn a_name_lent_by_a_supervisor_stays_held_after_its_child_ends() {
        let (_dir, home) = home();
        let path = home.run().join("t.lock");
        let supervisor = claim(&home, "t", Parent::None).unwrap();
        supervisor.set_supervisor().unwrap();
        let child = claim(&home, "t", Parent::Supervisor).unwrap();
        assert!(matches!(child.held, Held::Lent));
        drop(child);
        assert!(path.exists(), "the child removed its supervisor's file");
        // While the supervisor waits to start it again, the name is refused with
        // the supervisor named.
        let Err(Error::Config(why)) = claim(&home, "t", Parent::None) else {
            panic!("a name its supervisor holds was claimed");
        };
        assert_eq!(
            why,
            format!(
                "tunnel \"t\" is run by `conduit up --foreground` (pid {}), which restarts \
                 it when it fails and holds its name meanwhile: leave it to that supervisor, \
                 stop the supervisor (or the service that runs it) first, or choose another \
                 name (--name, or name in the file)",
                std::process::id()
            )
        );
        // A supervisor gone (killed outright) while its child holds the name on is
        // not named: another process may have its pid now.
        std::fs::write(&path, "999999 supervisor 1\n").unwrap();
        let Err(Error::Config(why)) = claim(&home, "t", Parent::None) else {
            panic!("a name still held was claimed");
        };
        assert!(
            why.starts_with("a tunnel named \"t\" is being started right now: "),
            "{why}"
        );
        drop(supervisor);
        assert!(!path.exists());
        drop(claim(&home, "t", Parent::None).unwrap());
    }

    #[test]
    fn a_holder_is_read_with_or_without_the_supervisor_mark() {
        let read = |t| Holder::parse(t);
        let holder = |pid, supervisor, started| Holder {
            pid,
            supervisor,
            started,
        };
        assert_eq!(read("42\n"), holder(Some(42), false, None));
        assert_eq!(read("42 supervisor\n"), holder(Some(42), true, None));
        assert_eq!(
            read("42 supervisor 9001\n"),
            holder(Some(42), true, Some(9001))
        );
        assert_eq!(read(""), holder(None, false, None));
        // This very process, by its start time; not once the time differs (the pid
        // of a supervisor that died, given to another process since).
        let me = std::process::id();
        let ticks = registry::start_ticks(me);
        assert_eq!(holder(Some(me), true, ticks).live_supervisor(), Some(me));
        if let Some(t) = ticks {
            assert_eq!(holder(Some(me), true, Some(t + 1)).live_supervisor(), None);
        }
    }
}
