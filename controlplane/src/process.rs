//! A tunnel as a registered process: its registry entry, its control API, and the
//! tunnel itself, torn down together.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::warn;

use crate::control::{self, ControlState, TunnelFacts};
use crate::registry::{self, Entry, EntryConfig, Registry};
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
    /// The log file, for background tunnels.
    pub log_file: Option<PathBuf>,
    /// Drain deadline for signals and for shutdown requests that name none.
    pub drain: Duration,
    /// Where to serve the tunnel's Prometheus metrics over HTTP, if anywhere.
    pub metrics_bind: Option<std::net::SocketAddr>,
}

/// The variable through which a launching parent tells its child that the claim on
/// the tunnel's name comes with a descriptor the child inherited (see [`NameClaim`]).
pub const INHERITED_CLAIM: &str = "CONDUIT_NAME_CLAIM";

/// An exclusive claim on a tunnel name: a lock (`flock`) on `run/NAME.lock`, taken
/// before anything of the tunnel exists and held as long as the file stays open — by
/// the tunnel process, or by a launching parent and then by the child it hands the
/// descriptor to. The kernel drops the lock when its last holder exits, however it
/// exits, so a crashed tunnel leaves no stale claim; the file itself stays (removing
/// it would let a second claimant lock a file the first one no longer sees).
#[derive(Debug)]
pub struct NameClaim {
    /// The locked file; `None` when this process runs under its parent's claim.
    file: Option<std::fs::File>,
    path: PathBuf,
}

/// Claims `name` for a tunnel of this home, or says which tunnel holds it.
pub fn claim_name(home: &Home, name: &str) -> Result<NameClaim, Error> {
    let run = home.run();
    Home::ensure_private_dir(&run)?;
    let path = run.join(format!("{name}.lock"));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|source| Error::File {
            what: "cannot open the tunnel's name lock",
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => {
            // A tunnel of a version without name locks is known by its entry alone.
            if let Some(e) = Registry::new(home)
                .entries()
                .into_iter()
                .find(|e| e.name == name)
            {
                return Err(taken(name, Some(e.pid), Some(&e.tunnel_id)));
            }
            let claim = NameClaim {
                file: Some(file),
                path,
            };
            claim.set_holder(std::process::id())?;
            Ok(claim)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            if std::env::var_os(INHERITED_CLAIM).is_some_and(|n| n == name) {
                return Ok(NameClaim { file: None, path });
            }
            let pid = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok());
            let id = Registry::new(home)
                .find(name)
                .filter(|e| Some(e.pid) == pid)
                .map(|e| e.tunnel_id);
            Err(taken(name, pid, id.as_deref()))
        }
        Err(std::fs::TryLockError::Error(source)) => Err(Error::File {
            what: "cannot lock the tunnel's name lock",
            path,
            source,
        }),
    }
}

fn taken(name: &str, pid: Option<u32>, id: Option<&str>) -> Error {
    let Some(id) = id else {
        // Claimed, not registered yet: a `start` or `up` launching it right now.
        let by = pid.map(|p| format!(" (by pid {p})")).unwrap_or_default();
        return Error::Config(format!(
            "a tunnel named {name:?} is being started right now{by}: see it with \
             `conduit list` once that is done, or choose another name (--name, or name in \
             the file)"
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
        let Some(mut file) = self.file.as_ref() else {
            return Ok(());
        };
        use std::io::{Seek, Write};
        let io = |source| Error::File {
            what: "cannot write the tunnel's name lock",
            path: self.path.clone(),
            source,
        };
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        file.write_all(format!("{pid}\n").as_bytes()).map_err(io)
    }

    /// Lets processes started from now on inherit the locked descriptor, so that a
    /// child holds the claim after this process exits. The child learns of it from
    /// [`INHERITED_CLAIM`].
    pub fn make_inheritable(&self) -> Result<(), Error> {
        #[cfg(unix)]
        if let Some(file) = &self.file {
            use nix::fcntl::{FcntlArg, FdFlag, fcntl};
            fcntl(file, FcntlArg::F_SETFD(FdFlag::empty())).map_err(|e| Error::File {
                what: "cannot hand on the tunnel's name lock",
                path: self.path.clone(),
                source: e.into(),
            })?;
        }
        Ok(())
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
        let id = registry::new_id(&r.name);
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
                balance: tunnel.balance(),
                proxy_protocol: tunnel.proxy_protocol().map(|v| v.to_string()),
                allow_from: tunnel
                    .allow_from()
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
            },
            status: "starting".into(),
            created_at: registry::now_rfc3339(),
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

    /// Runs until a signal (`signals` completes), a `Shutdown` request, or a fatal
    /// refusal; the entry and the control socket are removed at the end.
    pub async fn run(
        self,
        signals: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let Self {
            tunnel,
            mut entry,
            registry,
            state,
            drain,
            metrics,
        } = self;
        registry.write(&entry)?;
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

        // Keep the registry's status word in step with the router link.
        let updater = {
            let registry = registry.clone();
            let mut link = state.link.clone();
            let state = state.clone();
            let mut e = entry.clone();
            tokio::spawn(async move {
                loop {
                    let word = state.status_word();
                    if e.status != word {
                        e.status = word.to_owned();
                        if let Err(err) = registry.write(&e) {
                            warn!("cannot update the registry: {err}");
                        }
                    }
                    if link.changed().await.is_err() {
                        return;
                    }
                }
            })
        };

        let shutdown = state.shutdown.clone();
        let ordered = async move {
            tokio::select! {
                _ = signals => drain,
                ordered = stopped.wait_for(Option::is_some) => match ordered {
                    Ok(d) => (*d).unwrap_or(drain),
                    Err(_) => drain,
                },
            }
        };
        let result = tunnel
            .run(async move {
                let d = ordered.await;
                control::order_shutdown(&shutdown, d);
                // A request may have shortened it meanwhile (never lengthened).
                shutdown.borrow().map_or(d, |now| now.min(d))
            })
            .await;
        updater.abort();
        exited.send_replace(true);
        let _ = api.await;
        if let Some(t) = metrics_task {
            let _ = t.await;
        }
        entry.status = "stopping".into();
        registry.remove(&entry);
        result
    }
}
