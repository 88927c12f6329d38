//! Conduit's data plane: thread-per-core workers that move user bytes.
//!
//! ```text
//!              control plane (Tokio)                         data plane (monoio)
//!  handshakes ─ ChannelHandoff ─▶ per-core queue ─▶ core 0: listener, pool, relays
//!                                                 ─▶ core 1: listener, pool, relays
//!  counters  ◀──────────── atomics (one writer per core) ───────────┘
//!  requests  ◀──────────── FromWorker (e.g. "core 1 wants 2 channels")
//! ```
//!
//! Each worker is a thread (pinned to a core with `core_affinity` when asked) running
//! a single-threaded monoio runtime on the chosen [`engine`]. On a client it owns a
//! `SO_REUSEPORT` listener on the tunnel's bind address, so the kernel spreads users
//! across cores, and a pool of handshaken channels; on a router it serves the
//! channels the control plane hands it. Nothing mutable is shared between cores.
//!
//! What this crate does **not** do: TLS handshakes, key handling, deciding which
//! sources a client may open (it asks a [`SourcePolicy`]), or anything with Tokio.
#![deny(unsafe_code)] // `sys` alone allows it: the raw socket calls the runtimes lack.

pub mod engine;
pub mod handoff;
pub mod ktls;
pub mod memory;
pub mod proxy_header;
pub mod ratelimit;
pub mod stats;
pub mod usage;

mod channel;
mod client;
mod datagram;
mod limit;
mod listener;
mod net;
mod offload;
mod plain;
mod pool;
mod relay;
mod router;
mod sys;
mod worker;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use conduit_proto::{PublicKey, Refusal};
use tracing::warn;

pub use engine::{Engine, EngineKind};
pub use handoff::{
    ChannelHandoff, ChannelSlot, FromWorker, LinkEpoch, LinkState, Riding, ToWorker,
};
pub use limit::ConnLimit;
pub use listener::AcceptBackoff;
pub use proxy_header::ProxyProtocol;
pub use stats::{ConnSnapshot, CoreStats, ErrorKind, Histogram, HistogramSnapshot, Totals};
pub use sys::{release_free_memory, stop_with_parent};
pub use usage::{ClientTotals, Usage};
pub use worker::{Drained, core_of};

/// What went wrong in the data plane: it could not start, or could not take over a
/// connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataplaneError {
    /// io_uring was required but this kernel (or a seccomp policy) does not allow it.
    /// Local fault; a retry cannot help.
    #[error(
        "io_uring is not usable on this machine (old kernel, io_uring_disabled, or blocked by seccomp); \
         use --io-engine epoll or --io-engine auto"
    )]
    UringUnavailable,
    /// The bind address cannot be listened on. Local fault; retry after freeing it.
    #[error("cannot listen on {addr}{}: {source}{}", if *.udp { "/udp" } else { "" }, bind_hint(.source))]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Whether it is a UDP socket (a UDP and a TCP tunnel may share a port).
        udp: bool,
        /// What the kernel said.
        source: std::io::Error,
    },
    /// A worker thread or its runtime could not start (limits, memory).
    #[error("cannot start data-plane worker {index}: {source}")]
    Worker {
        /// Which worker.
        index: usize,
        /// What failed.
        source: std::io::Error,
    },
    /// The kernel would not take a connection's TLS record keys (kernel TLS offload,
    /// [`ktls::install`]). Local: this kernel lacks the cipher or kTLS, or the socket
    /// was not prepared. That connection cannot go on, since its keys have left
    /// rustls: close it. Retrying cannot help; keep TLS in userspace instead.
    #[error("kernel TLS offload: cannot install the {direction} keys: {source}")]
    Ktls {
        /// "transmit" or "receive".
        direction: &'static str,
        /// What the kernel (or the key check before it) said.
        source: std::io::Error,
    },
}

fn bind_hint(e: &std::io::Error) -> std::borrow::Cow<'static, str> {
    if e.raw_os_error() == Some(libc::EMFILE) || e.raw_os_error() == Some(libc::ENFILE) {
        return format!(
            "; the process is out of file descriptors: {}",
            client::RAISE_NOFILE
        )
        .into();
    }
    let hint = match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            "; another program (or another tunnel) already listens there: pick another --bind \
             or stop the other one (`conduit list` shows tunnels)"
        }
        std::io::ErrorKind::PermissionDenied => {
            "; ports below 1024 need root or CAP_NET_BIND_SERVICE: use a higher port or grant the capability"
        }
        std::io::ErrorKind::AddrNotAvailable => {
            "; that address is not on any interface of this machine: use one that is, or 0.0.0.0"
        }
        _ => "",
    };
    hint.into()
}

/// How long a stream riding on a link whose far end closed it without a goodbye
/// (its tunnel or router killed) may move nothing before it is closed: its relay
/// may be waiting on a user or source that does not read, and so never see the
/// channel end. Not at once: what the channel still holds may be the stream's whole
/// end, which a reader back in time gets.
pub const STALLED_GRACE: Duration = Duration::from_secs(30);

/// The sources a tunnel names: `HOST:PORT`, or several separated by commas, which
/// the router balances across and fails over between.
pub fn source_members(target: &str) -> impl Iterator<Item = &str> {
    target.split(',').map(str::trim).filter(|m| !m.is_empty())
}

/// `target` as the router keeps it (in its logs, connection table, breaker and
/// health checks): its members trimmed and joined by bare commas, each address in
/// its usual form (`[::1]:80`, not `[0:0::1]:080`) and each name in lower case with
/// a plain port, so that spacing, case or the spelling of a port cannot make one
/// source look like many (a numeric name such as `127.1` still counts apart from
/// `127.0.0.1`: it is a name to the router, resolved when opened).
pub fn canonical_target(target: String) -> String {
    let member = |m: &str| -> String {
        if let Ok(addr) = m.parse::<SocketAddr>() {
            return addr.to_string();
        }
        match m.rsplit_once(':') {
            Some((host, port)) => match port.parse::<u16>() {
                Ok(port) => format!("{}:{port}", host.to_ascii_lowercase()),
                Err(_) => m.to_owned(),
            },
            None => m.to_owned(),
        }
    };
    let canonical = source_members(&target)
        .map(member)
        .collect::<Vec<_>>()
        .join(",");
    if canonical == target {
        target
    } else {
        canonical
    }
}

/// How a source is reached: by a TCP stream or by a UDP flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceProtocol {
    /// A user's TCP stream.
    Tcp,
    /// A user's UDP flow.
    Udp,
}

/// The longest a worker waits for a source's name to be looked up (see
/// [`SourcePolicy::lookups`]); the policy's own limit is shorter.
pub const LOOKUP_WAIT: Duration = Duration::from_secs(6);

/// The router's rule for which sources a client may open.
pub trait SourcePolicy: Send + Sync + 'static {
    /// Resolves `target` for `client` (`None` on the plain transport, which
    /// authenticates nobody), reached over `protocol`, and checks it against policy:
    /// the addresses to try, or a refusal that says what to change.
    fn resolve(
        &self,
        client: Option<&PublicKey>,
        target: &str,
        protocol: SourceProtocol,
    ) -> Result<Vec<SocketAddr>, Refusal>;

    /// Starts the name lookups [`Self::resolve`] needs for `target` so that it
    /// need not block: a receiver that disconnects once they ended, which a worker
    /// awaits (for at most [`LOOKUP_WAIT`]) before calling `resolve`. `None`: nothing
    /// to look up (addresses, or names answered lately), or `resolve` looks names up
    /// itself.
    fn lookups(&self, _client: Option<&PublicKey>, _target: &str) -> Option<flume::Receiver<()>> {
        None
    }

    /// Whether a TCP stream to `target` (already resolved and allowed) may try to
    /// connect now: a refusal when the router knows the source is down and turns
    /// streams away at once rather than let each wait for its connect to fail.
    fn gate(&self, _target: &str) -> Result<(), Refusal> {
        Ok(())
    }

    /// The addresses of `target`'s members that the health checks of `protocol`
    /// report down, when `target` names several members (a flow on one of them
    /// moves to another); from what is known at once, never waiting on a lookup.
    fn down_addrs(&self, _target: &str, _protocol: SourceProtocol) -> Vec<SocketAddr> {
        Vec::new()
    }

    /// A TCP stream to `target` connected to `addr`.
    fn connected(&self, _target: &str, _addr: SocketAddr) {}

    /// A TCP stream could not connect to `target`, failing with `error`. One that
    /// found nothing answering (timed out, no route) may have the source turned
    /// away at once for a while (see [`Self::gate`]) rather than hold each stream
    /// until its connect fails the same way.
    fn not_connected(&self, _target: &str, _error: &std::io::Error) {}
}

/// A client tunnel's data-plane settings.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    /// The tunnel's name (for logs).
    pub tunnel: String,
    /// Where users connect.
    pub bind: SocketAddr,
    /// The source, as the router resolves it.
    pub target: String,
    /// Handshaken channels each core keeps ready.
    pub pool_size: usize,
    /// The most idle channels each core keeps (at least `pool_size`): channels that
    /// served users beyond the pool stay, up to this, to serve the next ones without a
    /// handshake, until they grow too old (`max_idle`).
    pub keep_idle: usize,
    /// How long a user waits for a channel when the pool is empty.
    pub wait_for_channel: Duration,
    /// Idle channels older than this are not used (the router closes them later).
    pub max_idle: Duration,
    /// The control plane's view of the router link.
    pub link: Arc<LinkState>,
    /// The tunnel's cap on open user connections (`--max-connections`).
    pub limit: Arc<ConnLimit>,
    /// The tunnel's bandwidth limit, each direction (`None`: unlimited).
    pub bandwidth: Option<Arc<ratelimit::Bandwidth>>,
    /// A user's stream that moves no byte either way for this long is closed
    /// (`None`: never; see [`StreamIdle`]).
    pub stream_idle: Option<StreamIdle>,
    /// Options for users' sockets.
    pub sockets: SocketOptions,
    /// `Some` for a UDP tunnel: users send datagrams to `bind`, each sender's flow
    /// rides a channel of its own, and this says when a quiet flow ends.
    pub udp: Option<UdpSpec>,
    /// A UDP tunnel's cap on new flows a second (`None`: no cap).
    pub new_flows: Option<Arc<ratelimit::FlowRate>>,
    /// The PROXY protocol header each TCP stream starts with (each UDP datagram,
    /// v2 only), toward the source (`None`: none; see [`proxy_header`]).
    pub proxy_protocol: Option<ProxyProtocol>,
    /// The addresses users may connect (or send datagrams) from (`--allow-from`);
    /// empty: any. Others are reset at accept (their datagrams dropped), counted
    /// as `user_not_allowed`.
    pub allow_from: Vec<ipnet::IpNet>,
}

impl ClientSpec {
    /// Whether a user at `ip` may use the tunnel (see [`Self::allow_from`]). An
    /// IPv4 user that a dual-stack socket shows as `::ffff:a.b.c.d` is checked as
    /// `a.b.c.d`.
    pub fn admits(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.allow_from.is_empty() || self.allow_from.iter().any(|n| n.contains(&ip))
    }

    /// `allow_from` for people: `10.0.0.0/8, 192.0.2.7/32`.
    pub(crate) fn allow_from_list(&self) -> String {
        let nets: Vec<String> = self.allow_from.iter().map(ToString::to_string).collect();
        nets.join(", ")
    }
}

/// The stream idle timeout: a stream (TCP, not a UDP flow) that moves no byte
/// either way for this long is closed, both ends reset, and counted as
/// `idle_timeout`; one whose reader takes nothing of what waits for it moves
/// nothing too. Each core looks at its streams every [`StreamIdle::every`], so a stream goes
/// within one look after the timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamIdle(Duration);

impl StreamIdle {
    /// `secs` seconds; `None` for 0 (no timeout).
    pub fn from_secs(secs: u64) -> Option<Self> {
        (secs > 0).then(|| Self(Duration::from_secs(secs)))
    }

    /// The timeout.
    pub fn timeout(self) -> Duration {
        self.0
    }

    /// How often each core looks: a sixtieth of the timeout, between 1 s and a
    /// minute (a stream goes at most that long after its timeout).
    pub fn every(self) -> Duration {
        (self.0 / 60).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }

    /// Looks in a row that find a stream quiet before it is closed: enough for at
    /// least the timeout to pass.
    pub(crate) fn looks(self) -> u32 {
        let every = self.every().as_millis().max(1);
        u32::try_from(self.0.as_millis().div_ceil(every)).unwrap_or(u32::MAX)
    }
}

/// How a UDP tunnel treats its flows (one per user address and port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpSpec {
    /// A flow with no datagram either way for this long ends, and its channel goes
    /// back to the pool; the sender's next datagram starts a new flow.
    pub idle_timeout: Duration,
    /// At most this many new flows a second (0: no cap); datagrams from new senders
    /// beyond it are dropped and counted.
    pub max_new_flows: u64,
}

/// Options for the sockets Conduit relays for others (users' on a client, sources' on
/// a router). Channels between client and router always run without Nagle's delay
/// (they carry whole TLS records) and are watched by heartbeats, not keep-alive; the
/// kernel buffer sizes apply to them too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketOptions {
    /// `TCP_NODELAY` (`[performance] tcp_nodelay`).
    pub nodelay: bool,
    /// TCP keep-alive after this long idle (`tcp_keepalive_secs`; `None`: off).
    pub keepalive: Option<Duration>,
    /// `SO_RCVBUF` in bytes (`read_buffer_size`; `None`: the kernel's auto-tuning).
    pub recv_buffer: Option<usize>,
    /// `SO_SNDBUF` in bytes (`write_buffer_size`; `None`: the kernel's auto-tuning).
    pub send_buffer: Option<usize>,
    /// Plaintext the TLS relay reads from the socket at once, at most
    /// [`MAX_READ_CHUNK`] (`optimize_for`): four full TLS records by default, one
    /// record when tuned for latency, so the first record of a long reply leaves
    /// before the rest is read and sealed.
    pub read_chunk: usize,
    /// Relay TCP streams through kernel TLS where both ends' kernels offer it
    /// (`[performance] kernel_tls`; see `ktls.rs`).
    pub kernel_tls: bool,
}

/// The most plaintext the TLS relay reads at once: with its 5-byte frame header,
/// exactly four full TLS records, sealed and sent in one write.
pub const MAX_READ_CHUNK: usize = relay::CHUNK;

/// One full TLS record of plaintext, less the frame header: the read size that sends
/// bytes on soonest.
pub const MIN_READ_CHUNK: usize =
    conduit_proto::session::MAX_RECORD_PLAINTEXT - conduit_proto::frame::HEADER_LEN;

impl Default for SocketOptions {
    fn default() -> Self {
        Self {
            nodelay: true,
            keepalive: Some(Duration::from_secs(60)),
            recv_buffer: None,
            send_buffer: None,
            read_chunk: MAX_READ_CHUNK,
            kernel_tls: true,
        }
    }
}

/// A router's data-plane settings.
#[derive(Clone)]
pub struct RouterSpec {
    /// Which sources each client may open.
    pub policy: Arc<dyn SourcePolicy>,
    /// How long to try connecting a source.
    pub connect_timeout: Duration,
    /// How long a data channel may sit idle before the router closes it.
    pub idle_timeout: Duration,
    /// A stream that moves no byte either way for this long is closed (`None`:
    /// never; see [`StreamIdle`]).
    pub stream_idle: Option<StreamIdle>,
    /// The router's cap on open streams (`--max-connections`).
    pub limit: Arc<ConnLimit>,
    /// Options for sources' sockets.
    pub sockets: SocketOptions,
    /// Each client's bandwidth limit, each direction, over all its streams (`None`:
    /// unlimited).
    pub bandwidth: Option<Arc<ratelimit::PerClient>>,
}

/// How many workers, on which engine.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Worker threads; 0 means one per usable core.
    pub workers: usize,
    /// The engine to run.
    pub engine: Engine,
    /// Pin each worker to a core (opt-in; see docs/architecture.md).
    pub pin: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            workers: 0,
            engine: Engine::Auto,
            pin: false,
        }
    }
}

impl Options {
    /// The worker threads these options start: `workers`, or for 0 one per core this
    /// process may use.
    pub fn worker_count(&self) -> usize {
        if self.workers == 0 {
            default_workers()
        } else {
            self.workers
        }
    }
}

/// The number of workers `workers = 0` means: the cores this process may use.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

struct WorkerHandle {
    tx: flume::Sender<ToWorker>,
    stats: Arc<CoreStats>,
    thread: std::sync::Mutex<Option<JoinHandle<Drained>>>,
}

/// The running workers.
pub struct DataPlane {
    engine: EngineKind,
    workers: Vec<WorkerHandle>,
    local_addr: Option<SocketAddr>,
    requests: Option<flume::Receiver<FromWorker>>,
}

impl DataPlane {
    /// Starts a client's workers, each listening on `spec.bind` (a TCP listener, or
    /// a UDP socket for a UDP tunnel).
    pub fn start_client(opts: &Options, spec: ClientSpec) -> Result<Self, DataplaneError> {
        let engine = engine::resolve(opts.engine)?;
        let n = opts.worker_count();
        let bind_error = |source| DataplaneError::Bind {
            addr: spec.bind,
            udp: spec.udp.is_some(),
            source,
        };
        let mut listeners: Vec<worker::Listen> = if spec.udp.is_some() {
            listener::bind_udp(spec.bind, n, &spec.sockets)
                .map_err(bind_error)?
                .into_iter()
                .map(worker::Listen::Udp)
                .collect()
        } else {
            listener::bind(spec.bind, n, 4096)
                .map_err(bind_error)?
                .into_iter()
                .map(worker::Listen::Tcp)
                .collect()
        };
        let local_addr = listeners.first().and_then(worker::Listen::local_addr);
        let (req_tx, req_rx) = flume::unbounded();
        let spec = Arc::new(spec);
        let mut dp = Self::spawn(opts, engine, n, |_| worker::Role::Client {
            spec: spec.clone(),
            listener: listeners.remove(0),
            requests: req_tx.clone(),
        })?;
        dp.local_addr = local_addr;
        dp.requests = Some(req_rx);
        Ok(dp)
    }

    /// Starts a router's workers.
    pub fn start_router(opts: &Options, spec: RouterSpec) -> Result<Self, DataplaneError> {
        let engine = engine::resolve(opts.engine)?;
        let n = opts.worker_count();
        let spec = Arc::new(spec);
        Self::spawn(opts, engine, n, |_| worker::Role::Router {
            spec: spec.clone(),
        })
    }

    fn spawn(
        opts: &Options,
        engine: EngineKind,
        n: usize,
        mut role: impl FnMut(usize) -> worker::Role,
    ) -> Result<Self, DataplaneError> {
        let cores = if opts.pin {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<(usize, std::io::Result<()>)>();
        let mut workers = Vec::with_capacity(n);
        for index in 0..n {
            let (tx, rx) = flume::unbounded();
            let stats = Arc::new(CoreStats::default());
            let core_id = (!cores.is_empty()).then(|| cores[index % cores.len()]);
            let role = role(index);
            let ready = ready_tx.clone();
            let worker_stats = stats.clone();
            let thread = std::thread::Builder::new()
                .name(format!("conduit-core-{index}"))
                .spawn(move || {
                    if let Some(id) = core_id {
                        core_affinity::set_for_current(id);
                    }
                    let core = Rc::new(worker::Core::new(index, n, worker_stats));
                    let started = ready.clone();
                    let res = engine::block_on(engine, async move {
                        let _ = started.send((index, Ok(())));
                        worker::run(core, role, rx).await
                    });
                    res.unwrap_or_else(|e| {
                        let _ = ready.send((index, Err(e)));
                        Drained::default()
                    })
                })
                .map_err(|source| DataplaneError::Worker { index, source })?;
            workers.push(WorkerHandle {
                tx,
                stats,
                thread: std::sync::Mutex::new(Some(thread)),
            });
        }
        drop(ready_tx);
        let dp = Self {
            engine,
            workers,
            local_addr: None,
            requests: None,
        };
        for _ in 0..n {
            match ready_rx.recv() {
                Ok((_, Ok(()))) => {}
                Ok((index, Err(source))) => return Err(DataplaneError::Worker { index, source }),
                Err(_) => {
                    return Err(DataplaneError::Worker {
                        index: 0,
                        source: std::io::Error::other("a worker exited during start-up"),
                    });
                }
            }
        }
        Ok(dp)
    }

    /// The engine the workers run.
    pub fn engine(&self) -> EngineKind {
        self.engine
    }

    /// The number of workers.
    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// Where users connect (client side).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The workers' requests to the control plane (taken once).
    pub fn take_requests(&mut self) -> Option<flume::Receiver<FromWorker>> {
        self.requests.take()
    }

    /// Hands a fresh channel to core `core`'s pool; false if that worker is gone.
    pub fn send_client_channel(&self, core: usize, h: ChannelHandoff) -> bool {
        self.workers
            .get(core)
            .is_some_and(|w| w.tx.send(ToWorker::ClientChannel(h)).is_ok())
    }

    /// Hands a router channel to the core with the fewest open connections; false if
    /// no worker is running.
    pub fn send_router_channel(&self, h: ChannelHandoff) -> bool {
        self.workers
            .iter()
            .min_by_key(|w| w.stats.active.load(Relaxed) + w.tx.len() as u64)
            .is_some_and(|w| w.tx.send(ToWorker::RouterChannel(h)).is_ok())
    }

    /// Tells core `core` that a channel it asked for cannot be made now, and why:
    /// the request is over, and the users waiting for one are let go with that
    /// reason.
    pub fn no_channels(&self, core: usize, reason: String) {
        if let Some(w) = self.workers.get(core) {
            let _ = w.tx.send(ToWorker::NoChannels(reason));
        }
    }

    /// Tells every core that the router link of `epoch` is lost without its
    /// channels noticing: the user connections riding on it (or on earlier
    /// generations of the link to that router) are closed with `reason` (client side).
    pub fn link_lost(&self, epoch: LinkEpoch, reason: &str) {
        self.send_link_lost(epoch, reason, false);
    }

    /// Tells every core that the router closed the link of `epoch` (or it failed)
    /// without a goodbye: the router is most likely gone, and the user connections
    /// riding on it that move nothing for [`STALLED_GRACE`] are closed with
    /// `reason` (the others end as their channels do; client side).
    pub fn link_gone(&self, epoch: LinkEpoch, reason: &str) {
        self.send_link_lost(epoch, reason, true);
    }

    fn send_link_lost(&self, epoch: LinkEpoch, reason: &str, stalled_only: bool) {
        for w in &self.workers {
            let _ = w.tx.send(ToWorker::LinkLost {
                epoch,
                reason: reason.to_owned(),
                stalled_only,
            });
        }
    }

    /// Tells every core that `key`'s tunnel `tunnel` stopped answering: the streams
    /// of its channels are closed with `reason` (router side).
    pub fn client_lost(&self, key: Option<PublicKey>, tunnel: &str, reason: &str) {
        self.send_client_lost(key, tunnel, reason, false);
    }

    /// Tells every core that `key`'s tunnel `tunnel` closed its control channel
    /// without a goodbye: its streams that move nothing for [`STALLED_GRACE`] are
    /// closed with `reason` (router side; see [`Self::link_gone`]).
    pub fn client_gone(&self, key: Option<PublicKey>, tunnel: &str, reason: &str) {
        self.send_client_lost(key, tunnel, reason, true);
    }

    fn send_client_lost(
        &self,
        key: Option<PublicKey>,
        tunnel: &str,
        reason: &str,
        stalled_only: bool,
    ) {
        for w in &self.workers {
            let _ = w.tx.send(ToWorker::ClientLost {
                key,
                tunnel: Some(tunnel.to_owned()),
                reason: reason.to_owned(),
                stalled_only,
            });
        }
    }

    /// Tells every core that `key` is no longer authorized: the streams of all its
    /// tunnels are closed with `reason` (router side).
    pub fn revoke(&self, key: PublicKey, reason: &str) {
        for w in &self.workers {
            let _ = w.tx.send(ToWorker::ClientLost {
                key: Some(key),
                tunnel: None,
                reason: reason.to_owned(),
                stalled_only: false,
            });
        }
    }

    /// Tells every core to drop its idle channels of links that are gone or were
    /// made again (a router link changed).
    pub fn flush_pools(&self) {
        for w in &self.workers {
            let _ = w.tx.send(ToWorker::Flush);
        }
    }

    /// Tells every core to drop all of its idle channels and make its pool again
    /// (a tunnel balancing over its routers has a new one to spread them over).
    pub fn renew_pools(&self) {
        for w in &self.workers {
            let _ = w.tx.send(ToWorker::Renew);
        }
    }

    /// Counts a failure of `kind` that the control plane met (a tunnel refused at
    /// set-up for a source the router's policy does not allow) with those the
    /// workers count.
    pub fn count_error(&self, kind: ErrorKind) {
        if let Some(w) = self.workers.first() {
            w.stats.fail(kind);
        }
    }

    /// Hands the memory of a burst of connections back to the system once `watch`
    /// sees it over (see [`memory::BurstWatch`]); true if it did. Call it every few
    /// seconds, off the workers (it takes a few milliseconds after a large burst).
    pub fn release_after_burst(&self, watch: &mut memory::BurstWatch) -> bool {
        // A burst between two looks is seen by its peak.
        let peak = self
            .workers
            .iter()
            .map(|w| {
                let now = w.stats.active.load(Relaxed);
                w.stats.peak_active.swap(now, Relaxed)
            })
            .sum();
        if !watch.ended(peak, self.totals().active) {
            return false;
        }
        release_free_memory();
        true
    }

    /// Every core's counters, summed.
    pub fn totals(&self) -> Totals {
        Totals::sum(self.workers.iter().map(|w| &*w.stats))
    }

    /// The open connections of every core.
    pub async fn connections(&self) -> Vec<ConnSnapshot> {
        let mut replies = Vec::new();
        for w in &self.workers {
            let (tx, rx) = futures::channel::oneshot::channel();
            if w.tx.send(ToWorker::Snapshot(tx)).is_ok() {
                replies.push(rx);
            }
        }
        let mut all = Vec::new();
        for r in replies {
            if let Ok(v) = r.await {
                all.extend(v);
            }
        }
        all.sort_by_key(|c| c.id);
        all
    }

    /// Every core's per-client and per-source tallies, merged (router side).
    pub async fn usage(&self) -> Usage {
        self.usage_answered().await.0
    }

    /// [`usage`](Self::usage), or `None` unless every worker answered: a worker
    /// that has stopped knows nothing of what was in use, which a caller that would
    /// take missing entries for unused must not be shown.
    pub async fn usage_of_all(&self) -> Option<Usage> {
        let (all, answered) = self.usage_answered().await;
        (answered == self.workers.len()).then_some(all)
    }

    /// What the workers that answered said, and how many answered.
    async fn usage_answered(&self) -> (Usage, usize) {
        let mut replies = Vec::new();
        for w in &self.workers {
            let (tx, rx) = futures::channel::oneshot::channel();
            if w.tx.send(ToWorker::Usage(tx)).is_ok() {
                replies.push(rx);
            }
        }
        let mut all = Usage::default();
        let mut answered = 0;
        for r in replies {
            if let Ok(u) = r.await {
                all.merge(u);
                answered += 1;
            }
        }
        (all, answered)
    }

    /// Asks the core that owns connection `id` to close it.
    pub fn kill(&self, id: u64) -> bool {
        match self.workers.get(core_of(id, self.workers.len())) {
            Some(w) => w.tx.send(ToWorker::Kill(id)).is_ok(),
            None => false,
        }
    }

    /// Cuts a drain under way (or about to start) short: open connections get at
    /// most `drain` from now. Each worker keeps the earlier of its deadlines; one that
    /// was not stopping yet stops now. Does not wait.
    pub fn cut_drain(&self, drain: Duration) {
        let deadline = drain_deadline(Instant::now(), drain);
        for w in &self.workers {
            let _ = w.tx.send(ToWorker::Stop { deadline });
        }
    }

    /// Stops accepting, lets open connections finish for up to `drain` (or less, if
    /// [`cut_drain`](Self::cut_drain) says so), closes the rest and joins the workers;
    /// returns how the drain went. Blocks the calling thread; later calls do nothing
    /// (and return an empty [`Drained`]).
    pub fn stop(&self, drain: Duration) -> Drained {
        self.cut_drain(drain);
        let mut all = Vec::with_capacity(self.workers.len());
        for (i, w) in self.workers.iter().enumerate() {
            // The lock only guards taking the handle once; it is never contended.
            let handle = match w.thread.lock() {
                Ok(mut g) => g.take(),
                Err(poisoned) => poisoned.into_inner().take(),
            };
            match handle.map(JoinHandle::join) {
                Some(Ok(d)) => all.push(d),
                Some(Err(_)) => warn!(worker = i, "a data-plane worker panicked"),
                None => {}
            }
        }
        Drained::sum(all)
    }
}

/// The longest a drain waits: a deadline further ahead is as good as none, and
/// `Instant` cannot hold every `Duration` (`Instant::now() + Duration::MAX` panics).
/// Flags and files allow an hour; this bounds what other callers may ask.
const MAX_DRAIN: Duration = Duration::from_secs(365 * 86_400);

/// When a drain of `drain` from `now` ends: `drain` is held to a year (`MAX_DRAIN`).
pub fn drain_deadline(now: Instant, drain: Duration) -> Instant {
    now.checked_add(drain.min(MAX_DRAIN)).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bind_out_of_descriptors_says_how_to_raise_the_limit() {
        let e = DataplaneError::Bind {
            addr: "127.0.0.1:0".parse().unwrap(),
            udp: false,
            source: std::io::Error::from_raw_os_error(libc::EMFILE),
        };
        assert_eq!(
            e.to_string(),
            "cannot listen on 127.0.0.1:0: Too many open files (os error 24); the process is \
             out of file descriptors: raise its open-file limit (ulimit -n, or LimitNOFILE= in \
             a systemd unit)"
        );
    }

    #[test]
    fn a_target_is_kept_trimmed_with_no_empty_members() {
        let c = |t: &str| canonical_target(t.to_owned());
        assert_eq!(c("10.0.0.5:80"), "10.0.0.5:80");
        assert_eq!(c(" 10.0.0.5:80"), "10.0.0.5:80");
        assert_eq!(c("10.0.0.5:80,"), "10.0.0.5:80");
        assert_eq!(c("a:1 , ,b:2\t"), "a:1,b:2");
        assert_eq!(c("a:1,b:2"), "a:1,b:2");
        assert_eq!(c(" , "), "");
        // One source, however it is spelled.
        assert_eq!(c("10.0.0.5:080"), "10.0.0.5:80");
        assert_eq!(c("10.0.0.5:+80"), "10.0.0.5:80");
        assert_eq!(c("[0:0::1]:0053"), "[::1]:53");
        assert_eq!(
            c("DB.Example:+5432,db.example:05432"),
            "db.example:5432,db.example:5432"
        );
        // What is not HOST:PORT is left to the policy to refuse.
        assert_eq!(c("db.example:http"), "db.example:http");
    }

    #[test]
    fn a_stream_idle_timeout_is_looked_for_often_enough_to_be_close() {
        assert_eq!(StreamIdle::from_secs(0), None, "0: no timeout");
        // (timeout s, every ms, looks): looks × every is at least the timeout, and
        // less than one look more.
        let cases = [
            (1, 1000, 1),
            (2, 1000, 2),
            (90, 1500, 60),
            (3600, 60_000, 60),
            (3601, 60_000, 61),
            (86400, 60_000, 1440),
        ];
        for (secs, every, looks) in cases {
            let i = StreamIdle::from_secs(secs).expect("not 0");
            assert_eq!(i.timeout(), Duration::from_secs(secs));
            assert_eq!(i.every(), Duration::from_millis(every), "{secs}");
            assert_eq!(i.looks(), looks, "{secs}");
        }
    }

    #[test]
    fn a_drain_ends_its_length_from_now() {
        let now = Instant::now();
        assert_eq!(
            drain_deadline(now, Duration::from_secs(30)),
            now + Duration::from_secs(30)
        );
        assert_eq!(drain_deadline(now, Duration::ZERO), now);
    }

    struct RefuseAll;

    impl SourcePolicy for RefuseAll {
        fn resolve(
            &self,
            _client: Option<&PublicKey>,
            _target: &str,
            _protocol: SourceProtocol,
        ) -> Result<Vec<SocketAddr>, Refusal> {
            Err(Refusal::new(
                conduit_proto::RefusalCode::PolicyDenied,
                "no source is allowed",
            ))
        }
    }

    /// Once the workers have stopped, what they had in use is unknown: `usage`
    /// says nothing was, `usage_of_all` says it cannot tell.
    #[test]
    fn usage_of_all_needs_every_worker() {
        let opts = Options {
            workers: 2,
            engine: Engine::Epoll,
            pin: false,
        };
        let dp = DataPlane::start_router(
            &opts,
            RouterSpec {
                policy: Arc::new(RefuseAll),
                connect_timeout: Duration::from_secs(1),
                idle_timeout: Duration::from_secs(60),
                stream_idle: None,
                limit: ConnLimit::new(0),
                sockets: SocketOptions::default(),
                bandwidth: None,
            },
        )
        .unwrap();
        use futures::executor::block_on;
        assert!(block_on(dp.usage_of_all()).is_some());
        dp.stop(Duration::ZERO);
        assert!(block_on(dp.usage_of_all()).is_none());
        assert!(block_on(dp.usage()).clients.is_empty());
    }

    /// `--drain-timeout 18446744073709551615` (or a Shutdown asking as much) once
    /// panicked at `Instant::now() + drain`.
    #[test]
    fn a_drain_longer_than_instant_can_hold_waits_a_year() {
        let now = Instant::now();
        assert_eq!(drain_deadline(now, Duration::MAX), now + MAX_DRAIN);
        assert_eq!(
            drain_deadline(now, Duration::from_secs(u64::MAX)),
            now + MAX_DRAIN
        );
    }
}
