//! The client tunnel: keep a control channel to the router (heartbeats, reconnect
//! with back-off), and make the handshaken data channels the workers ask for.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use conduit_dataplane::{
    ChannelSlot, ClientSpec, ConnLimit, DataPlane, EngineKind, FromWorker, LinkState, Options,
};
use conduit_proto::tls::{ClientConfig, Suites};
use conduit_proto::{KeyPair, PublicKey, Secret};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use crate::alerts::tunnel::{TunnelAlerts, Watcher};
use crate::keys::KnownRouter;
use crate::metrics::Counters;
use crate::{Error, Transport};

mod keys;
mod lanes;
mod link;
mod open;
mod rotation;
mod standby;

use keys::{configs, keys_of, pin_files, still_pinned, trusted};
use link::control_loop;
use open::make_channels;

/// Everything a client tunnel needs.
pub struct TunnelSettings {
    /// The tunnel's name.
    pub name: String,
    /// The router, `host:port`; or several separated by commas, tried in turn.
    pub router: String,
    /// The routers' pinned keys: the keys that all of them may present, or the
    /// keys of each router in the order of [`router`](Self::router) (see
    /// [`router_keys`]). A router may present any of its keys.
    pub router_keys: Vec<Vec<PublicKey>>,
    /// Where [`router_keys`](Self::router_keys) came from, in the same shape: each
    /// as [`crate::keys::load_pinned`] takes it. The `.pub` files they name are read
    /// again before each connection to a router and at each heartbeat, so a key
    /// added to a file is accepted and a key taken out of it refused without a
    /// restart. Empty: the keys stay as given.
    pub router_key_specs: Vec<String>,
    /// `known_routers`: the keys routers named (protocol 6), read at start and
    /// written when a router names new ones; they are trusted for that router beside
    /// the pinned ones (`None`: learned keys are kept in memory only).
    pub known_routers: Option<PathBuf>,
    /// This client's key.
    pub identity: KeyPair,
    /// The source, as the router resolves it.
    pub source: String,
    /// Where users connect.
    pub bind: SocketAddr,
    /// A token for routers that require one.
    pub token: Option<Secret>,
    /// TLS (the default) or, when the operator opts in, plain.
    pub transport: Transport,
    /// The TLS cipher suites offered, in order of preference.
    pub suites: Suites,
    /// Idle handshaken channels each worker keeps.
    pub pool_size: usize,
    /// Limit on reaching the router.
    pub connect_timeout: Duration,
    /// Limit on TLS handshake plus `Hello`/`Welcome`.
    pub handshake_timeout: Duration,
    /// Open user connections at most; 0 means no limit.
    pub max_connections: usize,
    /// Bytes per second each direction may move (`None`: unlimited).
    pub bandwidth: Option<conduit_dataplane::ratelimit::Limit>,
    /// Options for users' sockets.
    pub sockets: conduit_dataplane::SocketOptions,
    /// Workers and engine.
    pub dataplane: Options,
    /// How often the control channel pings the router; three intervals without an
    /// answer and the link counts as lost.
    pub heartbeat: Duration,
    /// `performance.idle_timeout_secs`: pooled channels unused for 4/5 of this are
    /// replaced, before a router with the same setting closes them.
    pub idle_timeout: Duration,
    /// `performance.stream_idle_timeout_secs` (`--stream-idle-timeout`): a user's
    /// stream that moves nothing either way for this long is closed (`None`: never).
    pub stream_idle: Option<conduit_dataplane::StreamIdle>,
    /// `Some` for a UDP tunnel (users send datagrams to `bind`).
    pub udp: Option<conduit_dataplane::UdpSpec>,
    /// The PROXY protocol header each TCP stream starts with toward the source
    /// (`--proxy-protocol`, a tunnel's `proxy_protocol`).
    pub proxy_protocol: Option<conduit_dataplane::ProxyProtocol>,
    /// The addresses users may connect from (`--allow-from`; empty: any).
    pub allow_from: Vec<ipnet::IpNet>,
    /// Where `identity` was read from: a rotated key is written there (`None`: the
    /// key cannot be rotated).
    pub key_path: Option<PathBuf>,
    /// Rotate the key through the router once its file is this old (`None`: never).
    pub key_rotation: Option<Duration>,
    /// With several routers: while the link uses one later in the list, how often
    /// to try the earlier ones and move back to the first that answers (`None`:
    /// stay on the one in use).
    pub failback: Option<Duration>,
    /// With several routers: how often a router on standby is checked with a full
    /// handshake, besides the look at its port about every 10 s (`None`: its port
    /// only).
    pub standby_check: Option<Duration>,
    /// With several routers: use all of them at once, each new data channel
    /// opened to the next router whose link is up, instead of one at a time.
    pub balance: bool,
    /// Where to report the router link lost, back or refused (`None`: nowhere).
    pub alerts: Option<TunnelAlerts>,
}

/// The pinned keys of each of `routers` routers, from `keys` as given: keys that
/// every router may present, or each router's in their order.
pub fn router_keys(routers: usize, keys: &[Vec<PublicKey>]) -> Result<Vec<Vec<PublicKey>>, Error> {
    match keys {
        [one] => Ok(vec![one.clone(); routers]),
        _ if keys.len() == routers => Ok(keys.to_vec()),
        _ => Err(Error::Config(format!(
            "{} for {}: give the key that every router presents, or each router's key, in \
             the order the routers are listed (to pin one router to several keys, separate \
             them with `|`)",
            count(keys.len(), "router key"),
            count(routers, "router")
        ))),
    }
}

/// `1 router`, `2 routers`.
/// The channels each of `workers` keeps ready, `pool_size` asked: no more than
/// [`crate::limits::pool_within`] allows of this process's soft open-file limit, so that
/// the pool leaves descriptors for users, files and the control socket (a pool that
/// took them all would leave the tunnel unable to answer `conduit status` or
/// `conduit down`). Says so when it keeps fewer.
fn pool_within_limit(tunnel: &str, pool_size: usize, workers: usize) -> usize {
    let Ok((soft, _)) = crate::limits::nofile() else {
        return pool_size;
    };
    let kept = crate::limits::pool_within(pool_size, workers, soft);
    if kept < pool_size {
        warn!(
            tunnel,
            "{workers} workers × pool_size {pool_size} = {} pooled channels would take more \
             than half of this process's open-file limit of {soft}: each worker keeps {kept} \
             ready instead; raise the open-file limit to {} or more (ulimit -n, or LimitNOFILE= in \
             a systemd unit) to keep them all, or lower [performance] pool_size or workers",
            workers * pool_size,
            workers * pool_size * 2
        );
    }
    kept
}

fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// `n` days, or `None` for 0 (never).
pub fn days(n: u64) -> Option<Duration> {
    (n > 0).then(|| Duration::from_secs(n.saturating_mul(86_400)))
}

/// `n` seconds, or `None` for 0 (never).
pub fn secs(n: u64) -> Option<Duration> {
    (n > 0).then(|| Duration::from_secs(n))
}

/// A rotation done: the tunnel's new key, and until when the router still admits
/// the old one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    /// The new key (now in the tunnel's key file).
    pub key: PublicKey,
    /// When the router stops admitting the old key (`None`: not known).
    pub old_expires: Option<SystemTime>,
    /// With several routers: those that did not authorize the new key, and why
    /// (`router ADDR: …`). They refuse the tunnel until their operator adds it.
    pub not_authorized: Vec<String>,
}

/// Asks a running tunnel to rotate its key.
#[derive(Debug, Clone)]
pub struct KeyRotator(mpsc::Sender<oneshot::Sender<Result<Rotated, String>>>);

impl KeyRotator {
    /// Rotates the tunnel's key through its router link: a new key pair is made (or,
    /// when another tunnel sharing the key file rotated it, the file's key is taken),
    /// the router authorizes it (keeping the old one for its grace period), the key
    /// file is replaced and the tunnel reconnects with the new key. Fails, saying
    /// why, while the link is down or when the router refuses.
    pub async fn rotate(&self) -> Result<Rotated, String> {
        let (tx, rx) = oneshot::channel();
        self.0
            .send(tx)
            .await
            .map_err(|_| "the tunnel is stopping".to_owned())?;
        rx.await
            .map_err(|_| "the tunnel's router link ended before the rotation".to_owned())?
    }
}

/// The state of the link to the router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkStatus {
    /// First attempt in progress.
    Connecting,
    /// The control channel is up.
    Connected {
        /// Since when.
        since: SystemTime,
        /// To which router (`host:port`; one of several when the tunnel has
        /// fallbacks).
        router: String,
        /// The TLS cipher suite of its control channel (`plain` on the plain
        /// transport); when balancing, each suite in use, joined with `, `.
        cipher: String,
    },
    /// The last attempt failed; the next one is scheduled.
    Retrying {
        /// Failed attempts in a row.
        attempt: u32,
        /// When the next attempt starts.
        next_at: SystemTime,
        /// Why the last one failed.
        error: String,
        /// Nothing listened at a router's port: it is tried about every second
        /// meanwhile, and the next attempt comes as soon as it accepts.
        knocking: bool,
    },
    /// One router of several, answering but not in use: the tunnel fails over and
    /// another router serves it (a spare, or a router it left, checked until it
    /// answers).
    /// Only a router's own link state says this, never the tunnel's.
    Standby {
        /// Since when it is known to answer.
        since: SystemTime,
        /// The router that serves the tunnel meanwhile (`host:port`).
        serving: String,
    },
    /// Every router refused this client before any admitted it; it stops.
    Refused {
        /// Why.
        reason: String,
    },
}

impl LinkStatus {
    /// The state's one word, as `status` and the API name it: `connecting`,
    /// `connected`, `standby`, `retrying` or `refused`.
    pub fn word(&self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Connected { .. } => "connected",
            Self::Standby { .. } => "standby",
            Self::Retrying { .. } => "retrying",
            Self::Refused { .. } => "refused",
        }
    }
}

struct Shared {
    transport: Transport,
    /// The TLS cipher suites offered (`--cipher-suites`).
    suites: Suites,
    /// `[performance] kernel_tls`.
    kernel_tls: bool,
    /// A UDP tunnel: the router must speak protocol [`version::DATAGRAMS`].
    datagrams: bool,
    /// A UDP tunnel's flow idle timeout.
    udp_idle: Option<Duration>,
    /// `--proxy-protocol`, `--allow-from` and `--stream-idle-timeout` (as the
    /// data plane applies it), for the registry.
    proxy_protocol: Option<conduit_dataplane::ProxyProtocol>,
    allow_from: Vec<ipnet::IpNet>,
    stream_idle: Option<conduit_dataplane::StreamIdle>,
    name: String,
    /// The source, named in the control channel's `Hello` for the router to check.
    source: String,
    /// The routers to try, in order (`--router A,B`): the link uses one at a time
    /// and moves to the next when it cannot reach that one; or, when `balance`,
    /// all of them at once.
    routers: Vec<String>,
    /// Keep a link to every router and spread the data channels over them.
    balance: bool,
    /// Where each core's next data channel's round over the routers starts
    /// (`balance`): each core's pool holds channels of every router in turn.
    next_pick: Box<[AtomicUsize]>,
    /// Each router's link, for the tunnel's alerts: when `balance`, every link
    /// (`status` shows them together); otherwise the one in use is connected, one
    /// that failed is retrying until it answers again (then on standby, see
    /// `standby.rs`) or the tunnel uses it again, one left for an earlier router
    /// that answered again is on standby, and a spare is connecting until its first
    /// check (then on standby, or retrying). And why
    /// each refused this tunnel since its link was last up (`balance`).
    links: watch::Sender<Vec<LinkStatus>>,
    refused: std::sync::Mutex<Vec<Option<String>>>,
    /// A router admitted this tunnel since it started, or it went on to retry in the
    /// background (an unreachable router: `start` returned then, saying so). Until
    /// then, a refusal by every router stops the tunnel (`start` reports it, exit
    /// 77); after, it is waited out like an unreachable router: whoever runs the
    /// router may fix it (a key file restored, an allow rule put back), nobody waits
    /// on the tunnel to hear of its end, and a man in the middle must not be able to
    /// stop tunnels for good by refusing them once.
    been_up: AtomicBool,
    /// The keys each of `routers` may present (read again from `pins`).
    router_keys: RwLock<Vec<Vec<PublicKey>>>,
    /// The pinned-key specs that name files (paths absolute), one for every router
    /// or one per router, and the last failure to read each (logged once).
    pins: Vec<Option<String>>,
    pin_errors: std::sync::Mutex<Vec<Option<String>>>,
    /// The keys each router named itself (`RouterKeys`) under a key still pinned,
    /// trusted beside the pinned ones, and the file they are kept in.
    learned: std::sync::Mutex<Vec<Option<KnownRouter>>>,
    known_routers: Option<PathBuf>,
    /// What `known_routers` held when this tunnel last read or wrote it.
    known_text: std::sync::Mutex<String>,
    /// The index of the one in use.
    at: std::sync::atomic::AtomicUsize,
    /// How often to try moving back to an earlier router (see
    /// [`TunnelSettings::failback`]).
    failback: Option<Duration>,
    /// How often a router on standby gets a full handshake (see
    /// [`TunnelSettings::standby_check`]).
    standby_check: Option<Duration>,
    /// The key this tunnel authenticates with, and its TLS configuration for each
    /// of `routers`: replaced when the key is rotated (the configurations also
    /// when a router's pinned keys change).
    identity: RwLock<Arc<KeyPair>>,
    tls: RwLock<Vec<Arc<ClientConfig>>>,
    /// The key in use before one taken up from the key file (another tunnel sharing
    /// the file rotated it, perhaps through a router of its own), kept until a
    /// router admits the new one: a router that refuses the new key is reached with
    /// this one again.
    previous: std::sync::Mutex<Option<Arc<KeyPair>>>,
    /// A key the key file holds that a router refused: not taken up from the file
    /// again (a rotation of this tunnel asks its routers to authorize it).
    declined: std::sync::Mutex<Option<PublicKey>>,
    key_path: Option<PathBuf>,
    key_rotation: Option<Duration>,
    /// The protocol version of each router's control channel (0 while there is
    /// none).
    versions: Box<[AtomicU16]>,
    token: Option<Secret>,
    connect_timeout: Duration,
    handshake_timeout: Duration,
    heartbeat: Duration,
    link: Arc<LinkState>,
    status: watch::Sender<LinkStatus>,
    dp: Arc<DataPlane>,
    counters: Arc<Counters>,
}

/// A started client tunnel.
pub struct ClientTunnel {
    shared: Arc<Shared>,
    requests: flume::Receiver<FromWorker>,
    local_addr: SocketAddr,
    rotations: (Rotations, RotationsRx),
    alerts: Option<TunnelAlerts>,
}

type Rotations = mpsc::Sender<oneshot::Sender<Result<Rotated, String>>>;
type RotationsRx = mpsc::Receiver<oneshot::Sender<Result<Rotated, String>>>;
/// The rotation requests, taken by whichever router link is up; held while a
/// rotation runs, so that two links never rotate at once.
type SharedRotations = Arc<tokio::sync::Mutex<RotationsRx>>;
type RotationTurn = tokio::sync::OwnedMutexGuard<RotationsRx>;

impl ClientTunnel {
    /// Binds the tunnel's listeners and starts its workers; nothing is sent to the
    /// router until [`Self::run`].
    pub fn start(s: TunnelSettings) -> Result<Self, Error> {
        let routers: Vec<String> = conduit_dataplane::source_members(&s.router)
            .map(str::to_owned)
            .collect();
        if routers.is_empty() {
            return Err(Error::Config("no router given: name it HOST:PORT".into()));
        }
        let router_keys = router_keys(routers.len(), &s.router_keys)?;
        if s.balance && routers.len() == 1 {
            warn!(tunnel = %s.name, "balancing over one router does nothing: name the others too (--router A,B, or [router] fallbacks)");
        }
        // The plain transport checks no router keys: known_routers is not for it.
        let known_routers = s.known_routers.filter(|_| s.transport != Transport::Plain);
        let known_text = match known_routers
            .as_deref()
            .map(crate::keys::read_known_routers)
        {
            Some(Ok(text)) => text,
            Some(Err(e)) => {
                let until = match e {
                    crate::keys::KnownUnread::Failed(_) => {
                        " until it can be read (it is read again before each connection)"
                    }
                    crate::keys::KnownUnread::Untrusted(_) => "",
                };
                warn!(tunnel = %s.name, "{e}; the router keys it keeps are not trusted{until}");
                // As `Look::known_after` keeps it, so that it does not warn again.
                format!("\0{e}")
            }
            None => String::new(),
        };
        let known = crate::keys::parse_known_routers(&known_text);
        let learned: Vec<Option<KnownRouter>> = routers
            .iter()
            .zip(&router_keys)
            .map(|(r, pinned)| still_pinned(&s.name, r, known.get(r), pinned))
            .collect();
        let tls = configs(
            &s.identity,
            &trusted(&router_keys, &keys_of(&learned)),
            &s.suites,
        )
        .map_err(|e| Error::Config(format!("cannot use the client key: {e}")))?;
        let pins = pin_files(&s.router_key_specs, routers.len())?;
        let key_rotation = s.key_rotation;
        let workers = s.dataplane.worker_count();
        let link = Arc::new(LinkState::for_cores(routers.len(), workers));
        let pool_size = pool_within_limit(&s.name, s.pool_size, workers);
        let keep_idle = crate::limits::nofile().map_or(s.pool_size.max(1) * 4, |(soft, _)| {
            crate::limits::idle_within(s.pool_size, workers, soft)
        });
        let mut dp = DataPlane::start_client(
            &s.dataplane,
            ClientSpec {
                tunnel: s.name.clone(),
                bind: s.bind,
                target: s.source.clone(),
                pool_size,
                keep_idle,
                wait_for_channel: s.connect_timeout + s.handshake_timeout,
                max_idle: s.idle_timeout * 4 / 5,
                link: link.clone(),
                limit: ConnLimit::new(s.max_connections),
                bandwidth: conduit_dataplane::ratelimit::Bandwidth::new(s.bandwidth).map(Arc::new),
                // A UDP tunnel's flows have their own idle timeout.
                stream_idle: s.stream_idle.filter(|_| s.udp.is_none()),
                sockets: s.sockets,
                udp: s.udp,
                new_flows: s
                    .udp
                    .and_then(|u| conduit_dataplane::ratelimit::FlowRate::new(u.max_new_flows))
                    .map(Arc::new),
                proxy_protocol: s.proxy_protocol,
                allow_from: s.allow_from.clone(),
            },
        )?;
        let requests = dp
            .take_requests()
            .ok_or_else(|| Error::Config("the data plane has no request queue".into()))?;
        let local_addr = dp.local_addr().unwrap_or(s.bind);
        let workers = dp.worker_count();
        let (status, _) = watch::channel(LinkStatus::Connecting);
        Ok(Self {
            requests,
            local_addr,
            rotations: mpsc::channel(4),
            alerts: s.alerts.filter(TunnelAlerts::is_on),
            shared: Arc::new(Shared {
                transport: s.transport,
                suites: s.suites.clone(),
                kernel_tls: s.sockets.kernel_tls,
                datagrams: s.udp.is_some(),
                udp_idle: s.udp.map(|u| u.idle_timeout),
                proxy_protocol: s.proxy_protocol,
                allow_from: s.allow_from.clone(),
                stream_idle: s.stream_idle.filter(|_| s.udp.is_none()),
                source: s.source.clone(),
                name: s.name,
                balance: s.balance && routers.len() > 1,
                versions: (0..routers.len()).map(|_| AtomicU16::new(0)).collect(),
                next_pick: (0..workers.max(1)).map(|_| AtomicUsize::new(0)).collect(),
                links: watch::Sender::new(vec![LinkStatus::Connecting; routers.len()]),
                refused: std::sync::Mutex::new(vec![None; routers.len()]),
                been_up: AtomicBool::new(false),
                routers,
                router_keys: RwLock::new(router_keys),
                pin_errors: std::sync::Mutex::new(vec![None; pins.len()]),
                pins,
                learned: std::sync::Mutex::new(learned),
                known_routers,
                known_text: std::sync::Mutex::new(known_text),
                at: std::sync::atomic::AtomicUsize::new(0),
                failback: s.failback,
                standby_check: s.standby_check,
                identity: RwLock::new(Arc::new(s.identity)),
                tls: RwLock::new(tls),
                previous: std::sync::Mutex::new(None),
                declined: std::sync::Mutex::new(None),
                key_path: s.key_path,
                key_rotation,
                token: s.token,
                connect_timeout: s.connect_timeout,
                handshake_timeout: s.handshake_timeout,
                heartbeat: s.heartbeat.max(Duration::from_millis(100)),
                link,
                status,
                dp: Arc::new(dp),
                counters: Arc::new(Counters::default()),
            }),
        })
    }

    /// Where users connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// What users send: `tcp` or `udp`.
    pub fn protocol(&self) -> &'static str {
        if self.shared.datagrams { "udp" } else { "tcp" }
    }

    /// The engine the workers run.
    pub fn engine(&self) -> EngineKind {
        self.shared.dp.engine()
    }

    /// Kernel TLS for this tunnel's TCP streams: `on`, `off` (turned off in its
    /// settings), `absent` (this host has no kTLS) or `n/a` (plain transport, UDP).
    /// `on` means each new stream asks; a router without kTLS still declines.
    pub fn kernel_tls(&self) -> &'static str {
        if self.shared.datagrams || self.shared.transport == Transport::Plain {
            "n/a"
        } else if !self.shared.kernel_tls {
            "off"
        } else if conduit_dataplane::ktls::support()
            == conduit_dataplane::ktls::Support::Unavailable
        {
            "absent"
        } else {
            "on"
        }
    }

    /// Whether it uses all of its routers at once.
    pub fn balance(&self) -> bool {
        self.shared.balance
    }

    /// The PROXY protocol header its streams start with (`--proxy-protocol`).
    pub fn proxy_protocol(&self) -> Option<conduit_dataplane::ProxyProtocol> {
        self.shared.proxy_protocol
    }

    /// The addresses users may connect from (`--allow-from`; empty: any).
    pub fn allow_from(&self) -> &[ipnet::IpNet] {
        &self.shared.allow_from
    }

    /// How long a stream may move nothing before it is closed
    /// (`--stream-idle-timeout`; `None`: no timeout, and always for UDP tunnels).
    pub fn stream_idle(&self) -> Option<conduit_dataplane::StreamIdle> {
        self.shared.stream_idle
    }

    /// A UDP tunnel's: how long a flow may carry no datagram before it ends.
    pub fn udp_idle_timeout(&self) -> Option<Duration> {
        self.shared.udp_idle
    }

    /// Its routers, in order, and the workers' view of the links to them (up or
    /// not, and the streams and channels on each).
    pub fn links(&self) -> (Vec<String>, Arc<LinkState>) {
        (self.shared.routers.clone(), self.shared.link.clone())
    }

    /// Each router's link, in the order of [`Self::links`].
    pub fn router_links(&self) -> watch::Receiver<Vec<LinkStatus>> {
        self.shared.links.subscribe()
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.shared.dp.worker_count()
    }

    /// A handle that asks this tunnel to rotate its key.
    pub fn key_rotator(&self) -> KeyRotator {
        KeyRotator(self.rotations.0.clone())
    }

    /// Watches the router link.
    pub fn status(&self) -> watch::Receiver<LinkStatus> {
        self.shared.status.subscribe()
    }

    /// The data plane, for counters and connection lists.
    pub fn dataplane(&self) -> Arc<DataPlane> {
        self.shared.dp.clone()
    }

    /// How long this tunnel's first attempts at its routers may take at most: each
    /// router's connect timeout (which holds its name's lookup too) and handshake
    /// timeout, one router after another (balancing tries them side by side, which
    /// takes no longer). By then it has connected, gone on to retry in the
    /// background, or stopped because every router refused it: `start` waits that
    /// long for it.
    pub fn first_round(&self) -> Duration {
        let one = self.shared.connect_timeout + self.shared.handshake_timeout;
        one.saturating_mul(u32::try_from(self.shared.routers.len()).unwrap_or(u32::MAX))
    }

    /// Handshake durations and set-up errors of the channels to the router.
    pub fn counters(&self) -> Arc<Counters> {
        self.shared.counters.clone()
    }

    /// Runs until `shutdown` completes with a drain deadline (open connections get
    /// that long to finish; the drain is then as the data plane reports it) or every
    /// router refuses this client before any admitted it (an error).
    pub async fn run(
        self,
        shutdown: impl Future<Output = Duration>,
    ) -> Result<conduit_dataplane::Drained, Error> {
        let watcher = match &self.alerts {
            Some(a) => Watcher::start(
                a,
                &self.shared.name,
                self.shared.routers.clone(),
                self.shared.links.subscribe(),
            )
            .unwrap_or_else(|e| {
                error!(tunnel = %self.shared.name, "alerts are off: {e}");
                None
            }),
            None => None,
        };
        let maker = tokio::spawn(make_channels(self.shared.clone(), self.requests));
        let memory = tokio::spawn(crate::limits::hand_back_memory(self.shared.dp.clone()));
        let (stop_tx, stop_rx) = watch::channel(false);
        let (_, rotations) = self.rotations;
        let mut control = if self.shared.balance {
            tokio::spawn(lanes::run(self.shared.clone(), stop_rx, rotations))
        } else {
            tokio::spawn(control_loop(self.shared.clone(), stop_rx, rotations))
        };
        let (result, drain) = tokio::select! {
            drain = shutdown => {
                // Stop accepting at once (the drain starts now): a user let in while
                // the goodbye goes out would find the link down below and be told
                // the tunnel is reconnecting.
                self.shared.dp.cut_drain(drain);
                // Say goodbye on the control channel, so the router knows this tunnel
                // stopped on purpose (and does not report its link as lost).
                let _ = stop_tx.send(true);
                let _ = tokio::time::timeout(Duration::from_secs(2), &mut control).await;
                control.abort();
                (Ok(()), drain)
            }
            fatal = &mut control => match fatal {
                Ok(Some(e)) => (Err(e), Duration::ZERO),
                Ok(None) => (Ok(()), Duration::ZERO),
                Err(e) => (Err(Error::Protocol(format!("the control task failed: {e}"))), Duration::ZERO),
            },
        };
        maker.abort();
        memory.abort();
        self.shared.link.lost_all();
        if result.is_ok() {
            info!(tunnel = %self.shared.name, "stopping: no new connections; draining open ones for up to {drain:?}");
        }
        let dp = self.shared.dp.clone();
        let drained = tokio::task::spawn_blocking(move || dp.stop(drain))
            .await
            .unwrap_or_default();
        if let Some(w) = watcher {
            w.finish(Duration::from_secs(2)).await;
        }
        result.map(|()| drained)
    }
}

impl Shared {
    /// The router in use.
    fn router(&self) -> &str {
        &self.routers[self.at()]
    }

    /// The index of the router in use.
    fn at(&self) -> usize {
        self.at.load(Ordering::Relaxed) % self.routers.len()
    }

    /// A slot for core `core`'s next data channel, on the router in use; or,
    /// balancing, on the router whose link is up with the fewest channels of that
    /// core, then of all (ties in turn). `None` while that link (every link) is down.
    fn pick(&self, core: usize) -> Option<ChannelSlot> {
        if !self.balance {
            let at = self.at();
            return self.link.is_up_at(at).then(|| self.link.reserve(at));
        }
        let start = self.next_pick[core % self.next_pick.len()].fetch_add(1, Ordering::Relaxed);
        self.link.reserve_least_loaded(core, start)
    }

    /// Sets router `index`'s link state, one router at a time (see
    /// [`Shared::links`]).
    fn router_link(&self, index: usize, state: LinkStatus) {
        self.links.send_if_modified(|links| {
            let changed = links[index] != state;
            links[index] = state;
            changed
        });
    }

    /// Moves on to the next router (after the last, the first); returns it.
    fn next_router(&self) -> &str {
        self.at
            .store((self.at() + 1) % self.routers.len(), Ordering::Relaxed);
        self.router()
    }

    /// The index of the router after `index` (in turn, after the last the first)
    /// that stands by, answering its checks; the next in line when none does.
    fn next_up_after(&self, index: usize) -> usize {
        next_up_after(&self.links.borrow(), index)
    }
}

/// The index of the first of `links` after `index` (in turn) on standby, else the
/// one right after `index`.
fn next_up_after(links: &[LinkStatus], index: usize) -> usize {
    let n = links.len();
    (1..n)
        .map(|k| (index + k) % n)
        .find(|&i| matches!(links[i], LinkStatus::Standby { .. }))
        .unwrap_or((index + 1) % n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_files_are_one_spec_for_all_routers_or_one_per_router() {
        let k = KeyPair::generate().unwrap().public().to_string();
        assert!(pin_files(&[], 2).unwrap().is_empty());
        assert_eq!(
            pin_files(&["/r.pub".into()], 2).unwrap(),
            [Some("/r.pub".to_owned())]
        );
        assert_eq!(
            pin_files(&[k.clone(), format!("{k}|/b.pub")], 2).unwrap(),
            [None, Some(format!("{k}|/b.pub"))]
        );
        let err = pin_files(&[k.clone(), k], 3).unwrap_err().to_string();
        assert!(err.contains("2 pinned-key specs for 3 routers"), "{err}");
    }

    #[test]
    fn the_next_router_up_is_the_first_on_standby_after_the_one_lost() {
        let standby = LinkStatus::Standby {
            since: SystemTime::UNIX_EPOCH,
            serving: "a:1".into(),
        };
        let failing = LinkStatus::Retrying {
            attempt: 1,
            next_at: SystemTime::UNIX_EPOCH,
            error: "cannot reach router".into(),
            knocking: false,
        };
        let lost = failing.clone();
        // Past a failing router to the one standing by.
        let links = [lost.clone(), failing.clone(), standby.clone()];
        assert_eq!(next_up_after(&links, 0), 2);
        // In turn: after the last, the first.
        let links = [standby.clone(), failing.clone(), lost.clone()];
        assert_eq!(next_up_after(&links, 2), 0);
        let links = [standby.clone(), lost.clone(), standby.clone()];
        assert_eq!(next_up_after(&links, 1), 2);
        // None stands by (failing, or not checked yet): the next in line.
        let links = [lost.clone(), LinkStatus::Connecting, failing];
        assert_eq!(next_up_after(&links, 0), 1);
        let links = [standby, lost];
        assert_eq!(next_up_after(&links, 1), 0);
    }

    #[test]
    fn router_keys_are_one_for_all_or_one_per_router() {
        let a = KeyPair::generate().unwrap().public();
        let b = KeyPair::generate().unwrap().public();
        assert_eq!(
            router_keys(3, &[vec![a, b]]).unwrap(),
            [vec![a, b], vec![a, b], vec![a, b]]
        );
        assert_eq!(
            router_keys(2, &[vec![a], vec![b]]).unwrap(),
            [vec![a], vec![b]]
        );
        assert_eq!(
            router_keys(3, &[vec![a], vec![b]]).unwrap_err().to_string(),
            "2 router keys for 3 routers: give the key that every router presents, or each \
             router's key, in the order the routers are listed (to pin one router to several \
             keys, separate them with `|`)"
        );
    }
}
