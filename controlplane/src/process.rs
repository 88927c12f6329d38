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

/// Refuses a name that a live tunnel already uses.
pub fn ensure_name_free(home: &Home, name: &str) -> Result<(), Error> {
    match Registry::new(home)
        .entries()
        .into_iter()
        .find(|e| e.name == name)
    {
        Some(e) => Err(Error::Config(format!(
            "a tunnel named {name:?} is already running (id {}, pid {}): stop it with \
             `conduit kill --tunnel {name}` or choose another --name",
            e.tunnel_id, e.pid
        ))),
        None => Ok(()),
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
