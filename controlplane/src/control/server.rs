//! The gRPC server a tunnel process runs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use conduit_dataplane::AcceptBackoff;
use conduit_dataplane::DataPlane;
use futures::Stream;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::pb;
use super::pb::tunnel_control_server::{TunnelControl, TunnelControlServer};
use crate::client::{KeyRotator, LinkStatus};
use crate::metrics::{self, Counters};
use crate::{Error, Home};

/// What never changes about a tunnel process.
#[derive(Debug, Clone)]
pub struct TunnelFacts {
    /// Registry id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Router `host:port`.
    pub router: String,
    /// Source `host:port`.
    pub source: String,
    /// Bound address.
    pub bind: String,
    /// Unix seconds.
    pub created_at: i64,
    /// io engine in use.
    pub engine: String,
    /// Worker count.
    pub workers: u32,
    /// Kernel TLS: `on`, `off`, `absent` or `n/a` (see `Tunnel::kernel_tls`).
    pub kernel_tls: &'static str,
}

/// How long a rotation asked over the control API waits for the routers' answer
/// before it answers itself: less than the control client's request timeout.
const ROTATION_ANSWER_WITHIN: Duration = Duration::from_secs(8);

/// What the control API reads and drives.
#[derive(Clone)]
pub struct ControlState {
    /// Static facts.
    pub facts: Arc<TunnelFacts>,
    /// The router link.
    pub link: watch::Receiver<LinkStatus>,
    /// Counters and connections.
    pub dp: Arc<DataPlane>,
    /// Set when a shutdown is ordered: its drain.
    pub shutdown: Arc<watch::Sender<Option<Ordered>>>,
    /// Drain deadline when a request names none.
    pub default_drain: Duration,
    /// Handshakes and set-up errors of the channels to the router.
    pub counters: Arc<Counters>,
    /// Asks the tunnel to rotate its key.
    pub rotator: KeyRotator,
    /// The routers, in order, and the links to them.
    pub routers: (Vec<String>, Arc<conduit_dataplane::LinkState>),
    /// Each router's link state, in the same order.
    pub router_links: watch::Receiver<Vec<LinkStatus>>,
}

impl ControlState {
    /// The tunnel's metrics in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        let up = matches!(*self.link.borrow(), LinkStatus::Connected { .. });
        metrics::render_tunnel(
            &self.facts.name,
            &self.dp.totals(),
            up,
            &self.counters,
            &self.router_loads(),
        )
    }

    /// Each router's link, streams and channels.
    fn router_loads(&self) -> Vec<pb::RouterLoad> {
        let (addrs, links) = &self.routers;
        let states = self.router_links.borrow().clone();
        addrs
            .iter()
            .enumerate()
            .map(|(i, addr)| pb::RouterLoad {
                link: states.get(i).map_or("connecting", |s| s.word()).to_owned(),
                error: match states.get(i) {
                    Some(LinkStatus::Retrying { error, .. }) => error.clone(),
                    _ => String::new(),
                },
                standby_since: match states.get(i) {
                    Some(LinkStatus::Standby { since, .. }) => unix(*since),
                    _ => 0,
                },
                connected_since: match states.get(i) {
                    Some(LinkStatus::Connected { since, .. }) => unix(*since),
                    _ => 0,
                },
                addr: addr.clone(),
                up: links.is_up_at(i),
                streams: links.streams(i) as u64,
                channels: links.channels(i) as u64,
                // The error names the router already; the field belongs to it.
                refused: links
                    .router_refusal(i)
                    .map(|why| match why.strip_prefix(&format!("router {addr}: ")) {
                        Some(rest) => rest.to_owned(),
                        None => why,
                    })
                    .unwrap_or_default(),
            })
            .collect()
    }

    /// The registry status word for the current state.
    pub fn status_word(&self) -> &'static str {
        if self.shutdown.borrow().is_some() {
            return "stopping";
        }
        status_word(&self.link.borrow())
    }
}

/// A shutdown ordered: the drain it was given, and when that drain ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ordered {
    /// How long open connections were given, as ordered.
    pub drain: Duration,
    /// When the drain ends.
    pub until: Instant,
}

impl Ordered {
    /// What is left of the drain at `now`, in whole seconds rounded up.
    pub fn secs_left(&self, now: Instant) -> u32 {
        let left = self.until.saturating_duration_since(now);
        let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        u32::try_from(secs).unwrap_or(u32::MAX)
    }
}

/// Orders a shutdown with `drain` from now, or shortens the one ordered already;
/// a later order never lengthens a drain. Whether the deadline changed.
pub(crate) fn order_shutdown(shutdown: &watch::Sender<Option<Ordered>>, drain: Duration) -> bool {
    // Held to what the data plane waits at most.
    let until = conduit_dataplane::drain_deadline(Instant::now(), drain);
    shutdown.send_if_modified(|ordered| match ordered {
        Some(o) if o.until <= until => false,
        _ => {
            *ordered = Some(Ordered { drain, until });
            true
        }
    })
}

/// The registry status word for a link state.
pub(crate) fn status_word(l: &LinkStatus) -> &'static str {
    match l {
        LinkStatus::Connecting => "starting",
        LinkStatus::Connected { .. } => "running",
        LinkStatus::Standby { .. } => "standby",
        LinkStatus::Retrying { .. } => "retrying",
        LinkStatus::Refused { .. } => "refused",
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn link_state(l: &LinkStatus) -> pb::LinkState {
    match l {
        LinkStatus::Connecting => pb::LinkState {
            state: l.word().into(),
            ..Default::default()
        },
        LinkStatus::Connected {
            since,
            router,
            cipher,
        } => pb::LinkState {
            state: l.word().into(),
            detail: router.clone(),
            cipher_suite: cipher.clone(),
            since: unix(*since),
            ..Default::default()
        },
        LinkStatus::Standby { since, serving } => pb::LinkState {
            state: l.word().into(),
            detail: format!("router {serving} serves the tunnel"),
            since: unix(*since),
            ..Default::default()
        },
        LinkStatus::Retrying {
            attempt,
            next_at,
            error,
            knocking,
        } => pb::LinkState {
            state: l.word().into(),
            detail: error.clone(),
            next_attempt_at: unix(*next_at),
            attempt: *attempt,
            knocking: *knocking,
            ..Default::default()
        },
        LinkStatus::Refused { reason } => pb::LinkState {
            state: l.word().into(),
            detail: reason.clone(),
            ..Default::default()
        },
    }
}

#[tonic::async_trait]
impl TunnelControl for ControlState {
    async fn get_status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let t = self.dp.totals();
        let f = &self.facts;
        Ok(Response::new(pb::StatusResponse {
            tunnel: Some(pb::TunnelInfo {
                id: f.id.clone(),
                name: f.name.clone(),
                router_addr: f.router.clone(),
                source_addr: f.source.clone(),
                bind_addr: f.bind.clone(),
                status: self.status_word().into(),
                created_at: f.created_at,
                active_connections: t.active.min(i32::MAX as u64) as i32,
                pid: std::process::id(),
                io_engine: f.engine.clone(),
                workers: f.workers,
            }),
            link: Some(link_state(&self.link.borrow())),
            bytes_in: t.bytes_up,
            bytes_out: t.bytes_down,
            connections_total: t.opened,
            connections_failed: t.failed,
            idle_channels: t.idle_channels,
            kernel_tls: f.kernel_tls.into(),
            kernel_tls_streams: t.kernel_tls,
            routers: self.router_loads(),
            source_refused: self.routers.1.refused().unwrap_or_default(),
        }))
    }

    async fn list_connections(
        &self,
        _: Request<pb::ListConnectionsRequest>,
    ) -> Result<Response<pb::ListConnectionsResponse>, Status> {
        let connections = self
            .dp
            .connections()
            .await
            .into_iter()
            .map(|c| pb::Connection {
                id: c.id,
                peer: c.peer.map(|p| p.to_string()).unwrap_or_default(),
                target: c.target,
                age_secs: c.age_secs,
                bytes_in: c.bytes_up,
                bytes_out: c.bytes_down,
            })
            .collect();
        Ok(Response::new(pb::ListConnectionsResponse { connections }))
    }

    async fn shutdown(
        &self,
        req: Request<pb::ShutdownRequest>,
    ) -> Result<Response<pb::ShutdownResponse>, Status> {
        let r = req.into_inner();
        let drain = match (r.force, r.drain_secs) {
            (true, _) => Duration::ZERO,
            (false, Some(secs)) => Duration::from_secs(secs.into()),
            (false, None) => self.default_drain,
        };
        let open = self.dp.totals().active.min(i32::MAX as u64) as i32;
        let draining = self.shutdown.borrow().is_some();
        info!(
            force = r.force,
            open,
            "asked to stop (conduit kill, down or up){}",
            if draining { " while stopping" } else { "" }
        );
        if order_shutdown(&self.shutdown, drain) && draining {
            // The tunnel is draining already (the API answers until the process
            // exits): this request shortens the drain under way.
            self.dp.cut_drain(drain);
        }
        // The drain under way, if an earlier order's ends first.
        let left = (*self.shutdown.borrow()).map_or(0, |o| o.secs_left(Instant::now()));
        Ok(Response::new(pb::ShutdownResponse {
            open_connections: open,
            drain_secs: Some(left),
        }))
    }

    async fn get_metrics(
        &self,
        _: Request<pb::MetricsRequest>,
    ) -> Result<Response<pb::MetricsResponse>, Status> {
        let t = self.dp.totals();
        let up = matches!(*self.link.borrow(), LinkStatus::Connected { .. });
        let counters: HashMap<String, u64> = [
            ("connections_total", t.opened),
            ("connections_failed", t.failed),
            ("active_connections", t.active),
            ("bytes_in", t.bytes_up),
            ("bytes_out", t.bytes_down),
            ("idle_channels", t.idle_channels),
            ("router_link_up", u64::from(up)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let prometheus = self.metrics_text();
        Ok(Response::new(pb::MetricsResponse {
            counters,
            prometheus,
        }))
    }

    async fn kill_connection(
        &self,
        req: Request<pb::KillConnectionRequest>,
    ) -> Result<Response<pb::KillConnectionResponse>, Status> {
        let id = req.into_inner().id;
        let found = self.dp.connections().await.iter().any(|c| c.id == id) && self.dp.kill(id);
        Ok(Response::new(pb::KillConnectionResponse { found }))
    }

    async fn rotate_key(
        &self,
        _: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<pb::RotateKeyResponse>, Status> {
        // The router authorizes the new key over the link: without one, say so now
        // rather than when the caller's deadline passes.
        let link = self.link.borrow().clone();
        if !matches!(link, LinkStatus::Connected { .. }) {
            let why = match link {
                LinkStatus::Retrying { error, .. } => format!(" (the last attempt: {error})"),
                LinkStatus::Refused { reason } => format!(" (refused: {reason})"),
                _ => String::new(),
            };
            return Err(Status::failed_precondition(format!(
                "the tunnel is not connected to its router{why}: rotate once `conduit status` \
                 shows it connected"
            )));
        }
        // Answered before the caller's deadline (10 s): a router that does not answer
        // is named, not the tunnel. The rotation goes on (it is not safe to abandon
        // halfway: the router may take the new key up when it comes back).
        let done = match tokio::time::timeout(ROTATION_ANSWER_WITHIN, self.rotator.rotate()).await {
            Ok(done) => done.map_err(Status::failed_precondition)?,
            Err(_) => {
                let whom = match link {
                    LinkStatus::Connected { router, .. } if !router.contains(',') => {
                        format!("router {router}")
                    }
                    _ => "the tunnel's routers".to_owned(),
                };
                return Err(Status::deadline_exceeded(format!(
                    "{whom} did not answer the rotation within {}s (stopped or overloaded?); \
                     the tunnel goes on waiting for the answer and logs how the rotation \
                     ends: see `conduit logs {}`",
                    ROTATION_ANSWER_WITHIN.as_secs(),
                    self.facts.name
                )));
            }
        };
        Ok(Response::new(pb::RotateKeyResponse {
            key: done.key.to_string(),
            old_expires: done.old_expires.map_or(-1, unix),
            not_authorized: done.not_authorized,
        }))
    }
}

/// Serves `GET /metrics` (the Prometheus text format) on `listener` until `stop`
/// completes, with the bounds of [`crate::serve`]. Read-only and without a token: the
/// operator chooses where it listens.
pub fn serve_metrics(
    listener: tokio::net::TcpListener,
    state: ControlState,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    use axum::http::header::CONTENT_TYPE;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let state = state.clone();
            async move {
                (
                    [(CONTENT_TYPE, metrics::CONTENT_TYPE)],
                    state.metrics_text(),
                )
            }
        }),
    );
    crate::serve::serve(listener, app, "the metrics endpoint", stop)
}

/// Serves the control API on `socket` until `stop` completes; the socket file is
/// removed afterwards.
pub async fn serve(
    socket: PathBuf,
    state: ControlState,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<tokio::task::JoinHandle<()>, Error> {
    let listener = bind_private(&socket)?;
    let incoming = incoming(listener);
    let path = socket.clone();
    Ok(tokio::spawn(async move {
        let res = tonic::transport::Server::builder()
            .add_service(TunnelControlServer::new(state))
            .serve_with_incoming_shutdown(incoming, stop)
            .await;
        if let Err(e) = res {
            warn!("control API stopped: {e}");
        }
        let _ = std::fs::remove_file(&path);
    }))
}

/// The callers of the control socket. Out of file descriptors, `accept` fails at
/// once for as long as a caller waits in the backlog, and tonic would try again at
/// once (it logs the error at trace level and goes on), spinning a core: here a
/// failed accept is waited out (see [`AcceptBackoff`]). And one descriptor is held
/// in reserve, let go to accept a caller when no other is left, so that `conduit
/// status` and `conduit down` still reach a tunnel whose users hold every one; it
/// is taken again once a descriptor is free.
fn incoming(listener: UnixListener) -> impl Stream<Item = std::io::Result<UnixStream>> {
    let state = (
        listener,
        AcceptBackoff::named("the control socket"),
        reserve(),
    );
    futures::stream::unfold(state, |(listener, mut backoff, mut spare)| async move {
        loop {
            if spare.is_none() {
                spare = reserve();
            }
            let mut accepted = listener.accept().await;
            if accepted.as_ref().is_err_and(out_of_descriptors) && spare.take().is_some() {
                // Into the descriptor let go, unless another thread takes it first.
                accepted = listener.accept().await;
            }
            match accepted {
                Ok((stream, _)) => {
                    backoff.succeeded();
                    return Some((Ok(stream), (listener, backoff, spare)));
                }
                Err(e) => tokio::time::sleep(backoff.failed(&e)).await,
            }
        }
    })
}

/// A descriptor held in reserve for the control socket (see [`incoming`]), if one
/// can be had.
fn reserve() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

fn out_of_descriptors(e: &std::io::Error) -> bool {
    use nix::libc::{EMFILE, ENFILE};
    matches!(e.raw_os_error(), Some(EMFILE | ENFILE))
}

fn bind_private(socket: &Path) -> Result<UnixListener, Error> {
    // Unix socket paths are short (108 bytes on Linux, 104 on macOS).
    const MAX_SOCKET_PATH: usize = 104;
    let len = socket.as_os_str().len();
    if len >= MAX_SOCKET_PATH {
        return Err(Error::Config(format!(
            "the control socket's path {} is {len} bytes, and a Unix socket's may be at most \
             {}: use a shorter CONDUIT_HOME or a shorter tunnel name",
            socket.display(),
            MAX_SOCKET_PATH - 1
        )));
    }
    if let Some(dir) = socket.parent() {
        Home::ensure_private_dir(dir)?;
    }
    let _ = std::fs::remove_file(socket);
    let err = |source| Error::File {
        what: "cannot create control socket",
        path: socket.to_owned(),
        source,
    };
    let listener = UnixListener::bind(socket).map_err(err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    }
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// User and system CPU time of this process.
    fn cpu_time() -> Duration {
        use nix::sys::resource::{UsageWho, getrusage};
        let u = getrusage(UsageWho::RUSAGE_SELF).unwrap();
        let d = |t: nix::sys::time::TimeVal| {
            Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000)
        };
        d(u.user_time()) + d(u.system_time())
    }

    /// With every descriptor taken, the control socket still accepts a caller, in
    /// the one it holds in reserve; a second caller, with that one in use, waits
    /// for a descriptor without the accept loop spinning, and is accepted once one
    /// is free. Lowers this test process's open-file limit; nextest runs each test
    /// in its own process.
    #[tokio::test]
    async fn the_control_socket_accepts_a_caller_with_no_descriptor_left() {
        use futures::StreamExt;
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let callers = incoming(UnixListener::bind(&path).unwrap());
        futures::pin_mut!(callers);
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
        setrlimit(Resource::RLIMIT_NOFILE, open + 8, hard).unwrap();
        let mut held = Vec::new();
        let emfile = loop {
            match std::fs::File::open("/dev/null") {
                Ok(f) => held.push(f),
                Err(e) => break e,
            }
        };
        assert!(out_of_descriptors(&emfile), "{emfile}");
        // The caller's end takes the last descriptor: none is left to accept it in
        // but the one in reserve.
        held.pop();
        let _caller = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let wait = Duration::from_secs(10);
        let first = tokio::time::timeout(wait, callers.next()).await;
        let Ok(Some(Ok(first))) = first else {
            panic!("the caller was not accepted: {first:?}");
        };

        held.pop();
        let _second = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let before = cpu_time();
        let waiting = tokio::time::timeout(Duration::from_secs(1), callers.next()).await;
        let spent = cpu_time() - before;
        assert!(waiting.is_err(), "accepted with no descriptor: {waiting:?}");
        // Without a pause between failed accepts, the loop takes the whole second.
        assert!(
            spent < Duration::from_millis(200),
            "the accept loop spins: {spent:?} of CPU in 1 s"
        );
        // The first caller's descriptor, once free, takes the second in.
        drop(first);
        let second = tokio::time::timeout(wait, callers.next()).await;
        setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
        assert!(
            matches!(second, Ok(Some(Ok(_)))),
            "the second caller was not accepted: {second:?}"
        );
    }

    #[test]
    fn a_later_shutdown_order_shortens_a_drain_and_never_lengthens_it() {
        let (tx, rx) = watch::channel(None);
        let drain = |rx: &watch::Receiver<Option<Ordered>>| rx.borrow().map(|o| o.drain);
        assert!(order_shutdown(&tx, Duration::from_secs(20)));
        assert_eq!(drain(&rx), Some(Duration::from_secs(20)));
        let first = rx.borrow().unwrap();
        assert_eq!(first.secs_left(first.until - Duration::from_secs(20)), 20);
        assert_eq!(
            first.secs_left(first.until - Duration::from_millis(8_500)),
            9
        );
        assert_eq!(first.secs_left(first.until + Duration::from_secs(1)), 0);
        assert!(!order_shutdown(&tx, Duration::from_secs(30)));
        assert!(!order_shutdown(&tx, Duration::from_secs(20)));
        assert_eq!(drain(&rx), Some(Duration::from_secs(20)));
        assert!(order_shutdown(&tx, Duration::ZERO));
        assert_eq!(drain(&rx), Some(Duration::ZERO));
        assert!(!order_shutdown(&tx, Duration::MAX));
    }
}
