//! The client tunnel: keep a control channel to the router (heartbeats, reconnect
//! with back-off), and make the handshaken data channels the workers ask for.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use conduit_dataplane::{
    ChannelSlot, ClientSpec, ConnLimit, DataPlane, EngineKind, FromWorker, LinkState, Options,
};
use conduit_proto::tls::{ClientConfig, Suites, client_config};
use conduit_proto::version::{self, VersionRange};
use conduit_proto::{
    ChannelKind, Hello, KeyPair, Message, ProtoError, PublicKey, Refusal, RefusalCode, Secret,
    TlsSession,
};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use crate::backoff::Backoff;
use crate::error::from_tls;
use crate::keys::KnownRouter;
use crate::metrics::{Counters, SetupError};
use crate::wire::{self, Wire, WireError};
use crate::{Error, Transport};

mod lanes;

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
    /// `Some` for a UDP tunnel (users send datagrams to `bind`).
    pub udp: Option<conduit_dataplane::UdpSpec>,
    /// Where `identity` was read from: a rotated key is written there (`None`: the
    /// key cannot be rotated).
    pub key_path: Option<PathBuf>,
    /// Rotate the key through the router once its file is this old (`None`: never).
    pub key_rotation: Option<Duration>,
    /// With several routers: while the link uses one later in the list, how often
    /// to try the earlier ones and move back to the first that answers (`None`:
    /// stay on the one in use).
    pub failback: Option<Duration>,
    /// With several routers: use all of them at once, each new data channel
    /// opened to the next router whose link is up, instead of one at a time.
    pub balance: bool,
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
    },
    /// The router refused this client; nothing will be retried.
    Refused {
        /// Why.
        reason: String,
    },
}

struct Shared {
    transport: Transport,
    /// The TLS cipher suites offered (`--cipher-suites`).
    suites: Suites,
    /// `[performance] kernel_tls`.
    kernel_tls: bool,
    /// A UDP tunnel: the router must speak protocol [`version::DATAGRAMS`].
    datagrams: bool,
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
    /// Each router's link, when `balance` (`status` shows them together), and why
    /// each refused this tunnel for good since its link was last up.
    lanes: std::sync::Mutex<Vec<LinkStatus>>,
    refused: std::sync::Mutex<Vec<Option<String>>>,
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
        let known_text = s
            .known_routers
            .as_deref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default();
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
        let link = Arc::new(LinkState::new(routers.len()));
        let mut dp = DataPlane::start_client(
            &s.dataplane,
            ClientSpec {
                tunnel: s.name.clone(),
                bind: s.bind,
                target: s.source.clone(),
                pool_size: s.pool_size,
                wait_for_channel: s.connect_timeout + s.handshake_timeout,
                max_idle: s.idle_timeout * 4 / 5,
                link: link.clone(),
                limit: ConnLimit::new(s.max_connections),
                bandwidth: conduit_dataplane::ratelimit::Bandwidth::new(s.bandwidth).map(Arc::new),
                sockets: s.sockets,
                udp: s.udp,
                new_flows: s
                    .udp
                    .and_then(|u| conduit_dataplane::ratelimit::FlowRate::new(u.max_new_flows))
                    .map(Arc::new),
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
            shared: Arc::new(Shared {
                transport: s.transport,
                suites: s.suites.clone(),
                kernel_tls: s.sockets.kernel_tls,
                datagrams: s.udp.is_some(),
                source: s.source.clone(),
                name: s.name,
                balance: s.balance && routers.len() > 1,
                versions: (0..routers.len()).map(|_| AtomicU16::new(0)).collect(),
                next_pick: (0..workers.max(1)).map(|_| AtomicUsize::new(0)).collect(),
                lanes: std::sync::Mutex::new(vec![LinkStatus::Connecting; routers.len()]),
                refused: std::sync::Mutex::new(vec![None; routers.len()]),
                routers,
                router_keys: RwLock::new(router_keys),
                pin_errors: std::sync::Mutex::new(vec![None; pins.len()]),
                pins,
                learned: std::sync::Mutex::new(learned),
                known_routers: s.known_routers,
                known_text: std::sync::Mutex::new(known_text),
                at: std::sync::atomic::AtomicUsize::new(0),
                failback: s.failback,
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

    /// Its routers, in order, and the workers' view of the links to them (up or
    /// not, and the streams and channels on each).
    pub fn links(&self) -> (Vec<String>, Arc<LinkState>) {
        (self.shared.routers.clone(), self.shared.link.clone())
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

    /// Handshake durations and set-up errors of the channels to the router.
    pub fn counters(&self) -> Arc<Counters> {
        self.shared.counters.clone()
    }

    /// Runs until `shutdown` completes with a drain deadline (open connections get
    /// that long to finish) or the router refuses this client for good (an error).
    pub async fn run(self, shutdown: impl Future<Output = Duration>) -> Result<(), Error> {
        let maker = tokio::spawn(make_channels(self.shared.clone(), self.requests));
        let (stop_tx, stop_rx) = watch::channel(false);
        let (_, rotations) = self.rotations;
        let mut control = if self.shared.balance {
            tokio::spawn(lanes::run(self.shared.clone(), stop_rx, rotations))
        } else {
            tokio::spawn(control_loop(self.shared.clone(), stop_rx, rotations))
        };
        let (result, drain) = tokio::select! {
            drain = shutdown => {
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
        self.shared.link.lost_all();
        if result.is_ok() {
            info!(tunnel = %self.shared.name, "stopping: no new connections; draining open ones for up to {drain:?}");
        }
        let dp = self.shared.dp.clone();
        let _ = tokio::task::spawn_blocking(move || dp.stop(drain)).await;
        result
    }
}

impl Shared {
    /// The TLS configuration for the router at `index`.
    fn tls(&self, index: usize) -> Arc<ClientConfig> {
        self.tls.read().unwrap_or_else(|p| p.into_inner())[index].clone()
    }

    fn identity(&self) -> Arc<KeyPair> {
        self.identity
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn our_key(&self) -> PublicKey {
        self.identity().public()
    }

    /// This tunnel's key as a line of authorized_clients: the key, then the name its
    /// `.pub` file gives it (what `conduit keys show --name NAME` prints for
    /// `NAME.key`), else the key file's name.
    fn our_line(&self) -> String {
        let key = self.our_key();
        let Some(path) = &self.key_path else {
            return key.to_string();
        };
        let named = std::fs::read_to_string(path.with_extension("pub"))
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| PublicKey::parse_line(l)?.ok())
                    .filter(|(k, name)| *k == key && !name.is_empty())
                    .map(|(_, name)| name)
            })
            .or_else(|| Some(path.file_stem()?.to_string_lossy().into_owned()));
        match named {
            Some(name) => format!("{key} {name}"),
            None => key.to_string(),
        }
    }

    fn router_keys(&self) -> Vec<Vec<PublicKey>> {
        self.router_keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn learned(&self) -> Vec<Vec<PublicKey>> {
        keys_of(&self.learned_entries())
    }

    fn learned_entries(&self) -> Vec<Option<KnownRouter>> {
        self.learned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The keys each router may present: those pinned and those it named.
    fn trusted(&self) -> Vec<Vec<PublicKey>> {
        trusted(&self.router_keys(), &self.learned())
    }

    /// Router `at` named its keys (`RouterKeys`) on a link where it presented `via`:
    /// trusts them for it from now on, in place of what it named before, and keeps
    /// them in `known_routers` with the pinned key they were learned under (`via`
    /// itself, or the pin under which `via` was learned).
    fn learn(&self, at: usize, keys: &[PublicKey], via: Option<PublicKey>) {
        let router = &self.routers[at];
        let pinned = self.router_keys()[at].clone();
        let known = {
            let mut learned = self.learned.lock().unwrap_or_else(|p| p.into_inner());
            let pin = match (via, &learned[at]) {
                (Some(v), _) if pinned.contains(&v) => v,
                (Some(v), Some(k)) if k.keys.contains(&v) => k.pin,
                _ => {
                    warn!(tunnel = %self.name, %router, "router {router} named keys on a link whose key is neither pinned nor learned: ignored (a Conduit bug; please report it)");
                    return;
                }
            };
            let known = KnownRouter {
                keys: keys.to_vec(),
                pin,
            };
            if learned[at].as_ref() == Some(&known) {
                return;
            }
            learned[at] = Some(known.clone());
            known
        };
        match client_config(&self.identity(), &trusted_one(&pinned, keys), &self.suites) {
            Ok(c) => self.tls.write().unwrap_or_else(|p| p.into_inner())[at] = c,
            Err(e) => {
                warn!(tunnel = %self.name, %router, "cannot use the keys the router named: {e}");
                return;
            }
        }
        let named = match keys {
            [now] => format!("its key {now}"),
            [now, next @ ..] => format!(
                "its key {now} and, next, {}",
                conduit_proto::tls::one_of(next)
            ),
            [] => return,
        };
        let kept = match &self.known_routers {
            Some(path) => match crate::keys::save_known_router(path, router, &known) {
                Ok(text) => {
                    *self.known_text.lock().unwrap_or_else(|p| p.into_inner()) = text;
                    format!(" (kept in {})", path.display())
                }
                Err(e) => format!(" (for this run only: {e})"),
            },
            None => String::new(),
        };
        if keys.iter().all(|k| pinned.contains(k)) {
            // Nothing new to trust: the keys it names are the ones pinned.
            debug!(tunnel = %self.name, %router, "router {router} names {named}, as pinned{kept}");
        } else {
            info!(tunnel = %self.name, %router, "router {router} names {named}: trusted for it from now on{kept}");
        }
    }

    fn use_key(&self, pair: Arc<KeyPair>) -> Result<(), String> {
        let tls = configs(&pair, &self.trusted(), &self.suites).map_err(|e| e.to_string())?;
        *self.tls.write().unwrap_or_else(|p| p.into_inner()) = tls;
        *self.identity.write().unwrap_or_else(|p| p.into_inner()) = pair;
        Ok(())
    }

    /// Reads the pinned-key files and `known_routers` again and takes up what
    /// changed in them; tells whether anything did. A pinned file that cannot be
    /// read (or holds no key) leaves the keys as they were, with a warning.
    fn reread_pins(&self) -> bool {
        let old_pinned = self.router_keys();
        let old_entries = self.learned_entries();
        let old_learned = keys_of(&old_entries);
        let pinned = self.reread_pin_files(&old_pinned);
        let entries: Vec<Option<KnownRouter>> = self
            .reread_known_routers(&old_entries)
            .iter()
            .enumerate()
            .map(|(i, k)| still_pinned(&self.name, &self.routers[i], k.as_ref(), &pinned[i]))
            .collect();
        let learned = keys_of(&entries);
        let mut changed = false;
        let mut tls = self.tls.write().unwrap_or_else(|p| p.into_inner());
        let mut kept_pinned = self.router_keys.write().unwrap_or_else(|p| p.into_inner());
        let mut kept_learned = self.learned.lock().unwrap_or_else(|p| p.into_inner());
        for i in 0..self.routers.len() {
            let old = trusted_one(&old_pinned[i], &old_learned[i]);
            let new = trusted_one(&pinned[i], &learned[i]);
            if new == old {
                kept_pinned[i].clone_from(&pinned[i]);
                kept_learned[i].clone_from(&entries[i]);
                continue;
            }
            match client_config(&self.identity(), &new, &self.suites) {
                Ok(c) => tls[i] = c,
                Err(e) => {
                    warn!(tunnel = %self.name, router = %self.routers[i], "cannot use the keys now trusted for router {}: {e}; keeping those trusted before", self.routers[i]);
                    continue;
                }
            }
            kept_pinned[i].clone_from(&pinned[i]);
            kept_learned[i].clone_from(&entries[i]);
            changed = true;
        }
        changed
    }

    /// The key to ask router `index` for (a router that rotated its key presents
    /// the old one to a tunnel that asks for it, for a while): the key it last named
    /// as its own, or else the first pinned.
    fn hint(&self, index: usize) -> Option<PublicKey> {
        let named = self.learned.lock().unwrap_or_else(|p| p.into_inner())[index]
            .as_ref()
            .and_then(|k| k.keys.first().copied());
        named.or_else(|| self.router_keys()[index].first().copied())
    }

    /// The keys router `index` may present now.
    fn trusted_for(&self, index: usize) -> Vec<PublicKey> {
        trusted_one(&self.router_keys()[index], &self.learned()[index])
    }

    /// Each router's pinned keys as their files say now (as `old` where a spec names
    /// no file, or its file cannot be read).
    fn reread_pin_files(&self, old: &[Vec<PublicKey>]) -> Vec<Vec<PublicKey>> {
        let mut pinned = old.to_vec();
        let mut errors = self.pin_errors.lock().unwrap_or_else(|p| p.into_inner());
        for (j, spec) in self.pins.iter().enumerate() {
            let Some(spec) = spec else { continue };
            let routers: Vec<usize> = match self.pins.len() {
                1 => (0..self.routers.len()).collect(),
                _ => vec![j],
            };
            let whose = match routers.as_slice() {
                [one] => format!("router {}", self.routers[*one]),
                _ => "the routers".to_owned(),
            };
            let keys = match crate::keys::load_pinned(spec, "pinned router keys") {
                Ok(keys) => {
                    errors[j] = None;
                    keys
                }
                Err(e) => {
                    let e = e.to_string();
                    if errors[j].as_ref() != Some(&e) {
                        warn!(tunnel = %self.name, "cannot read the keys pinned for {whose} again: {e}; keeping the keys read before until the file is fixed");
                        errors[j] = Some(e);
                    }
                    continue;
                }
            };
            if keys == old[routers[0]] {
                continue;
            }
            info!(tunnel = %self.name, "the keys pinned for {whose} changed ({spec}): now {}", conduit_proto::tls::one_of(&keys));
            for i in routers {
                pinned[i].clone_from(&keys);
            }
        }
        pinned
    }

    /// The keys each router named as `known_routers` says now: as `old` unless the
    /// file changed since this tunnel last read or wrote it (an operator deleted a
    /// line, or another tunnel learned a router's keys).
    fn reread_known_routers(&self, old: &[Option<KnownRouter>]) -> Vec<Option<KnownRouter>> {
        let Some(path) = &self.known_routers else {
            return old.to_vec();
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        {
            let mut seen = self.known_text.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == text {
                return old.to_vec();
            }
            seen.clone_from(&text);
        }
        let known = crate::keys::parse_known_routers(&text);
        self.routers
            .iter()
            .zip(old)
            .map(|(r, old)| {
                let now = known.get(r).cloned();
                if now != *old {
                    match &now {
                        None => info!(tunnel = %self.name, router = %r, "the keys router {r} named are no longer in {}: no longer trusted unless pinned", path.display()),
                        Some(k) => info!(tunnel = %self.name, router = %r, "the keys router {r} named, in {}, are now {}", path.display(), conduit_proto::tls::one_of(&k.keys)),
                    }
                }
                now
            })
            .collect()
    }

    /// The key the key file holds now, when it is not the one in use: another
    /// tunnel with the same key file rotated it.
    fn newer_key_in_file(&self) -> Option<KeyPair> {
        let path = self.key_path.as_ref()?;
        let pair = crate::keys::load_private(path, "client").ok()?;
        (pair.public() != self.our_key()).then_some(pair)
    }

    /// How old the key file is, when that is past `key_rotation`.
    fn key_too_old(&self) -> Option<Duration> {
        let limit = self.key_rotation?;
        let modified = std::fs::metadata(self.key_path.as_ref()?)
            .ok()?
            .modified()
            .ok()?;
        let age = modified.elapsed().ok()?;
        (age >= limit).then_some(age)
    }

    /// Before each connection of the link: takes up the key file's key if another
    /// tunnel sharing the file rotated it, so this one is not locked out when the
    /// router retires the old key; the key in use is kept, for a router that does
    /// not know the new one (see [`Self::fall_back`]). True when it did.
    fn pick_up_key_file(&self) -> bool {
        let Some(pair) = self.newer_key_in_file() else {
            return false;
        };
        let key = pair.public();
        if *self.declined.lock().unwrap_or_else(|p| p.into_inner()) == Some(key) {
            return false;
        }
        let was = self.identity();
        match self.use_key(Arc::new(pair)) {
            Ok(()) => {
                self.previous
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(was);
                if self.routers.len() > 1 {
                    warn!(tunnel = %self.name, %key, "the key file holds a new key (rotated by another tunnel); using it, but of this tunnel's {} routers those that do not know it will refuse it: rotate this tunnel too (`conduit keys rotate --tunnel {}`), which has each of them authorize it", self.routers.len(), self.name);
                } else {
                    info!(tunnel = %self.name, %key, "the key file holds a new key (rotated by another tunnel); using it");
                }
                true
            }
            Err(e) => {
                warn!(tunnel = %self.name, "the key file holds a new key that cannot be used: {e}");
                false
            }
        }
    }

    /// The key file's key, when a router refused it (see [`Self::fall_back`]) and
    /// this tunnel rotates its key by itself (`key_rotation`): it is to be taken up
    /// through a rotation, which has the routers authorize it.
    fn declined_in_file(&self) -> Option<PublicKey> {
        self.key_rotation?;
        let declined = (*self.declined.lock().unwrap_or_else(|p| p.into_inner()))?;
        let in_file = self.newer_key_in_file()?.public();
        (in_file == declined).then_some(declined)
    }

    /// The router in use admitted this tunnel: a key taken up from the key file is
    /// known to work, the one before it is no longer kept.
    fn admitted(&self) {
        self.previous
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    /// Router `index` refused this tunnel (`e`) with a key taken up from the key
    /// file: goes back to the key used before, which the router may still admit
    /// (another tunnel rotated the file's key through a router of its own), and
    /// leaves the file's key alone until a rotation of this tunnel asks its routers
    /// to authorize it. True when it did: the link is to be made again at once.
    fn fall_back(&self, index: usize, e: &Error) -> bool {
        if !matches!(e, Error::Authentication(_)) {
            return false;
        }
        let Some(previous) = self
            .previous
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return false;
        };
        let refused = self.our_key();
        let back = previous.public();
        if let Err(why) = self.use_key(previous) {
            warn!(tunnel = %self.name, "cannot go back to the previous key {back}: {why}");
            return false;
        }
        *self.declined.lock().unwrap_or_else(|p| p.into_inner()) = Some(refused);
        let router = &self.routers[index];
        let then = if self.key_rotation.is_some() {
            format!(
                ", and asking its routers to authorize the file's key (as `conduit keys rotate \
                 --tunnel {}` does)",
                self.name
            )
        } else {
            format!(
                "; to move it to the file's key, rotate it too (`conduit keys rotate --tunnel \
                 {}`: its routers authorize that key)",
                self.name
            )
        };
        let file = self
            .key_path
            .as_deref()
            .map_or_else(String::new, |p| format!(" {}", p.display()));
        warn!(tunnel = %self.name, %router, "router {router} does not admit the key the key file{file} holds now, {refused} (another tunnel sharing the file rotated it through a router of its own): {e}; going back to the previous key {back}, which this tunnel used until now{then}. To keep tunnels apart, give each a key file of its own (--key)");
        true
    }

    /// The router in use.
    fn router(&self) -> &str {
        &self.routers[self.at()]
    }

    /// The index of the router in use.
    fn at(&self) -> usize {
        self.at.load(Ordering::Relaxed) % self.routers.len()
    }

    /// A slot for core `core`'s next data channel, on the router in use; or,
    /// balancing, on the router whose link is up with the fewest channels (ties in
    /// turn). `None` while that link (every link) is down.
    fn pick(&self, core: usize) -> Option<ChannelSlot> {
        if !self.balance {
            let at = self.at();
            return self.link.is_up_at(at).then(|| self.link.reserve(at));
        }
        let start = self.next_pick[core % self.next_pick.len()].fetch_add(1, Ordering::Relaxed);
        self.link.reserve_least_loaded(start)
    }

    /// Moves on to the next router (after the last, the first); returns it.
    fn next_router(&self) -> &str {
        self.at
            .store((self.at() + 1) % self.routers.len(), Ordering::Relaxed);
        self.router()
    }
}

/// Opens a channel of `kind` to the router at `index` in the list, counting a
/// failure: the channel, past `Welcome`, and the protocol version the router chose.
async fn open(shared: &Shared, kind: ChannelKind, index: usize) -> Result<(Wire, u16), Error> {
    let res = open_at(shared, kind, index).await;
    if let Err(e) = &res {
        let kind = match e {
            Error::Network { source, .. } if source.kind() == std::io::ErrorKind::TimedOut => {
                SetupError::Timeout
            }
            Error::Network { .. } => SetupError::Unreachable,
            Error::Authentication(_) => SetupError::Unauthorized,
            Error::Tls(_) => SetupError::Tls,
            _ => SetupError::Protocol,
        };
        shared.counters.fail(kind);
    }
    res
}

/// Opens a channel of `kind` to the router at `index` in the list and completes
/// `Hello`/`Welcome`; returns it and the protocol version the router chose.
async fn open_at(shared: &Shared, kind: ChannelKind, index: usize) -> Result<(Wire, u16), Error> {
    let router = &shared.routers[index];
    open_at_inner(shared, kind, index)
        .await
        .map_err(|e| match e {
            // With several routers, a refusal names the one that refused.
            Error::Authentication(m)
                if shared.routers.len() > 1 && !m.starts_with(&format!("router {router} ")) =>
            {
                Error::Authentication(format!("router {router}: {m}"))
            }
            e => e,
        })
}

async fn open_at_inner(
    shared: &Shared,
    kind: ChannelKind,
    index: usize,
) -> Result<(Wire, u16), Error> {
    let router = &shared.routers[index];
    let tcp = wire::connect(router, shared.connect_timeout)
        .await
        .map_err(|e| Error::network(format!("cannot reach router {router}"), e))?;
    let started = std::time::Instant::now();
    let setup = async {
        let mut w = match shared.transport {
            Transport::Tls => {
                let hint = shared.hint(index);
                Wire::handshake(tcp, TlsSession::client(shared.tls(index), hint.as_ref())?).await?
            }
            Transport::Plain => Wire::plain(tcp)?,
        };
        w.send(&Message::Hello(Hello {
            versions: VersionRange::ours(),
            channel: kind,
            tunnel: shared.name.clone(),
            token: shared.token.clone(),
            source: (kind == ChannelKind::Control).then(|| shared.source.clone()),
        }))
        .await?;
        let reply = w.recv().await?;
        Ok::<_, WireError>((w, reply))
    };
    let (w, reply) = match tokio::time::timeout(shared.handshake_timeout, setup).await {
        Err(_) => {
            return Err(Error::network(
                format!("router {router} did not complete the handshake"),
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {:?}", shared.handshake_timeout),
                ),
            ));
        }
        Ok(Err(e)) => return Err(wire_error(shared, router, e)),
        Ok(Ok(x)) => x,
    };
    match reply {
        Some(Message::Welcome { version }) => {
            can_carry(shared.datagrams, version, router)?;
            shared.counters.handshakes.observe(started.elapsed());
            Ok((w, version))
        }
        Some(Message::Refused(r)) => Err(match r.code {
            RefusalCode::Unauthorized | RefusalCode::UnsupportedVersion => {
                Error::Authentication(format!("the router refused this client: {}", r.message))
            }
            // The router checked the source against its policy (protocol 7): no
            // stream of this tunnel would be served.
            RefusalCode::PolicyDenied => {
                Error::Authentication(format!("the router refused this tunnel: {}", r.message))
            }
            _ => Error::Protocol(format!("the router refused the channel: {}", r.message)),
        }),
        Some(other) => Err(Error::Protocol(format!(
            "the router answered Hello with {}",
            other.name()
        ))),
        None => Err(Error::Protocol(
            "the router closed the connection during setup".into(),
        )),
    }
}

/// Whether a router that negotiated protocol `version` can serve this tunnel: a UDP
/// tunnel needs [`version::DATAGRAMS`]. Not retried: the router must be upgraded.
fn can_carry(datagrams: bool, version: u16, router: &str) -> Result<(), Error> {
    if datagrams && version < version::DATAGRAMS {
        return Err(Error::Authentication(format!(
            "router {router} speaks protocol {version}, and UDP tunnels need protocol {} or \
             later: upgrade conduit on the router",
            version::DATAGRAMS
        )));
    }
    Ok(())
}

fn wire_error(shared: &Shared, router: &str, e: WireError) -> Error {
    match e {
        // Retried all the same: the router may be replaced by one that does.
        WireError::Tls(t) if t.peer_not_tls() => Error::Protocol(format!(
            "router {router} does not speak Conduit's TLS transport (is it a plain-transport \
             router, or not a Conduit router at all?): check --router and --transport ({t})"
        )),
        // Not retried: the router's operator or this tunnel's must change a setting.
        WireError::Tls(t) if t.peer_refused_handshake() => Error::Authentication(format!(
            "router {router} refused the TLS handshake: it accepts none of the cipher suites \
             this tunnel offers ({}); offer one it accepts (--cipher-suites, or [security] \
             cipher_suites in the file), or leave the setting out to offer all",
            shared.suites
        )),
        WireError::Tls(t) => from_tls(t, &shared.our_key(), &shared.our_line()),
        WireError::Io(io) => Error::network(format!("connection to router {router} failed"), io),
        // The first frame the router sent, read as the plain transport's, is not one:
        // a TLS record (an alert: 0x15 0x03…, read as a frame's length) says a TLS router.
        WireError::Proto(p @ ProtoError::FrameTooLarge { len, .. })
            if shared.transport == Transport::Plain
                && (0x14..=0x17).contains(&(len >> 24))
                && (len >> 16) & 0xff == 0x03 =>
        {
            Error::Protocol(format!(
                "router {router} answers in TLS, and this tunnel uses --transport plain: start \
                 the tunnel without --transport plain, or run the router with --transport plain \
                 ({p})"
            ))
        }
        WireError::Proto(
            p @ (ProtoError::FrameTooLarge { .. } | ProtoError::UnknownFrameType(_)),
        ) if shared.transport == Transport::Plain => Error::Protocol(format!(
            "router {router} does not speak Conduit's plain transport (is it a TLS router, \
                 or not a Conduit router at all?): start the tunnel without --transport plain \
                 if the router runs without it, and check --router ({p})"
        )),
        WireError::Proto(p) => Error::Protocol(format!("router {router}: {p}")),
        WireError::Closed => Error::Protocol(format!(
            "router {router} closed the connection during setup"
        )),
    }
}

/// The longest wait before trying the router link again when it failed for want of
/// file descriptors.
const OUT_OF_DESCRIPTORS_RETRY: Duration = Duration::from_secs(1);

/// Keeps the control channel up; returns a fatal error, or `None` once `stop` is set
/// (after saying goodbye to the router).
async fn control_loop(
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    rotations: RotationsRx,
) -> Option<Error> {
    let rotations: SharedRotations = Arc::new(tokio::sync::Mutex::new(rotations));
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
    let mut attempt = 0u32;
    // Routers tried since the last back-off: each is tried once before waiting.
    let mut tried = 0usize;
    // The control channel of an earlier router that answered again, to move to.
    let mut back: Option<Preferred> = None;
    // Why each router refused this tunnel for good, since the link was last up.
    let mut refused: Vec<Option<String>> = vec![None; shared.routers.len()];
    loop {
        // Both before any connection: refusals of the old keys say nothing about
        // the new ones.
        if shared.pick_up_key_file() | shared.reread_pins() {
            refused.fill(None);
        }
        let opened = match back.take() {
            Some(p) => {
                shared.at.store(p.index, Ordering::Relaxed);
                shared.versions[p.index].store(p.version, Ordering::Relaxed);
                Ok(p.wire)
            }
            None => open(&shared, ChannelKind::Control, shared.at())
                .await
                .map(|(w, version)| {
                    shared.versions[shared.at()].store(version, Ordering::Relaxed);
                    w
                }),
        };
        match opened {
            Ok(mut ctl) => {
                shared.admitted();
                attempt = 0;
                tried = 0;
                refused.fill(None);
                backoff.reset();
                let epoch = shared.link.switched_to(shared.at());
                shared.dp.flush_pools();
                let router = shared.router().to_owned();
                shared.status.send_replace(LinkStatus::Connected {
                    since: SystemTime::now(),
                    router: router.clone(),
                    cipher: ctl.cipher().to_owned(),
                });
                info!(tunnel = %shared.name, %router, cipher = %ctl.cipher(), "connected to router");
                let mut probe = Probe::start(&shared);
                let at = shared.at();
                let end = heartbeat(&shared, at, &mut ctl, &mut stop, &rotations, &mut probe).await;
                probe.stop();
                let why = &end.why;
                if end.again {
                    // The link is fine: make it again at once (with the new key, or
                    // to the earlier router). Users keep their streams (a clean
                    // goodbye leaves them to finish), and the pool is refilled with
                    // channels of the new link on connect.
                    info!(tunnel = %shared.name, %router, "{why}");
                    back = end.back;
                    continue;
                }
                shared.link.lost_all();
                if *stop.borrow() {
                    return None;
                }
                // Idle channels of the lost link are dead or soon will be: close them
                // now rather than hold them half-closed until the link is back.
                shared.dp.flush_pools();
                if end.silent {
                    // A router that stopped answering (frozen, or behind a link that
                    // drops everything) sends no reset either: the data channels would
                    // wait forever. Their users are told now.
                    shared
                        .dp
                        .link_lost(epoch, &format!("the router link was lost: {why}"));
                }
                warn!(tunnel = %shared.name, %router, "lost the router link: {why}; reconnecting");
            }
            Err(e) => {
                // Down, if it was up until a link made again at once (a rotation,
                // a withdrawn key) failed: users are turned away, not left waiting.
                shared.link.lost_all();
                if shared.fall_back(shared.at(), &e) {
                    continue;
                }
                let refusal = !e.is_retryable();
                if refusal {
                    // Refused for good by this router. With several, the others may
                    // still serve: this one is tried again in later rounds (its
                    // operator may fix it), and the tunnel stops only once every
                    // router refused.
                    refused[shared.at()] = Some(e.to_string());
                    shared.link.router_refused(shared.at(), e.to_string());
                    if refused.iter().all(Option::is_some) {
                        let e = match refused.len() {
                            1 => e,
                            _ => Error::Authentication(format!(
                                "every router refused this tunnel:{}",
                                refused
                                    .iter()
                                    .flatten()
                                    .map(|why| format!("\n  {why}"))
                                    .collect::<String>()
                            )),
                        };
                        shared.status.send_replace(LinkStatus::Refused {
                            reason: e.to_string(),
                        });
                        return Some(e);
                    }
                }
                // A refusal is the operator's to fix: an error, not a warning.
                let say = |line: String| {
                    if refusal {
                        error!(tunnel = %shared.name, "{line}");
                    } else {
                        warn!(tunnel = %shared.name, "{line}");
                    }
                };
                attempt += 1;
                if tried + 1 < shared.routers.len() {
                    // Another router may answer: try it now, and wait only once
                    // every one has failed.
                    tried += 1;
                    let next = shared.next_router();
                    say(format!("{e}; trying router {next}"));
                    continue;
                }
                tried = 0;
                if shared.routers.len() > 1 {
                    // The round starts again with the next in line (the first
                    // router after the last).
                    shared.next_router();
                }
                let mut wait = backoff.next_wait();
                if e.out_of_descriptors() {
                    // Nothing is wrong with the router: descriptors come back as
                    // connections close, and a link is wanted as soon as they do.
                    wait = wait.min(OUT_OF_DESCRIPTORS_RETRY);
                }
                shared.status.send_replace(LinkStatus::Retrying {
                    attempt,
                    next_at: SystemTime::now() + wait,
                    error: e.to_string(),
                });
                say(format!("{e}; retrying in {:.1}s", wait.as_secs_f64()));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.wait_for(|s| *s) => return None,
                }
            }
        }
    }
}

/// How a control channel ended.
struct LinkEnd {
    why: String,
    /// The router stopped answering, rather than closing or failing the connection.
    silent: bool,
    /// The link was fine and is to be made again at once: the key was rotated, or
    /// an earlier router answered again.
    again: bool,
    /// The earlier router's control channel, ready to use.
    back: Option<Preferred>,
}

impl From<String> for LinkEnd {
    fn from(why: String) -> Self {
        Self {
            why,
            silent: false,
            again: false,
            back: None,
        }
    }
}

/// A router earlier in the list than the one in use, answering again.
struct Preferred {
    /// Its index in the list.
    index: usize,
    /// Its control channel, past `Hello`/`Welcome`.
    wire: Wire,
    /// The protocol version it chose.
    version: u16,
}

/// While the link uses a router other than the first, tries the earlier ones every
/// [`Shared::failback`] and hands over the control channel of the first to answer.
struct Probe(Option<(tokio::task::JoinHandle<()>, oneshot::Receiver<Preferred>)>);

impl Probe {
    fn start(shared: &Arc<Shared>) -> Self {
        let (Some(every), current) = (shared.failback, shared.at()) else {
            return Self(None);
        };
        if shared.balance {
            return Self(None); // every router is in use
        }
        if current == 0 {
            return Self(None);
        }
        let (tx, rx) = oneshot::channel();
        let shared = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                for index in 0..current {
                    let router = &shared.routers[index];
                    match open_at(&shared, ChannelKind::Control, index).await {
                        Ok((wire, version)) => {
                            let _ = tx.send(Preferred {
                                index,
                                wire,
                                version,
                            });
                            return;
                        }
                        Err(e) => {
                            debug!(tunnel = %shared.name, %router, "not moving back yet: {e}")
                        }
                    }
                }
            }
        });
        Self(Some((task, rx)))
    }

    /// Resolves when an earlier router answered; never without a probe.
    async fn answered(&mut self) -> Preferred {
        match &mut self.0 {
            Some((_, rx)) => match rx.await {
                Ok(p) => p,
                Err(_) => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }

    fn stop(self) {
        if let Some((task, _)) = self.0 {
            task.abort();
        }
    }
}

/// Pings router `index` over its control channel `ctl` until the link fails or
/// `stop` is set (then says goodbye), taking the key rotations asked for meanwhile;
/// returns why it ended.
async fn heartbeat(
    shared: &Shared,
    index: usize,
    ctl: &mut Wire,
    stop: &mut watch::Receiver<bool>,
    rotations: &SharedRotations,
    probe: &mut Probe,
) -> LinkEnd {
    let interval = shared.heartbeat;
    let router = &shared.routers[index];
    // What the link was made with: a key withdrawn from `trusted`, or a new key of
    // this tunnel's own, makes it again.
    let mut trusted = shared.trusted_for(index);
    let key = shared.our_key();
    let mut nonce = 0u64;
    let mut next_check = tokio::time::Instant::now();
    loop {
        if tokio::time::Instant::now() >= next_check
            && let Ok(_turn) = rotations.clone().try_lock_owned()
        {
            next_check = tokio::time::Instant::now() + ROTATION_CHECK;
            if let Some(age) = shared.key_too_old() {
                let days = age.as_secs() / 86_400;
                let unit = if days == 1 { "day" } else { "days" };
                info!(tunnel = %shared.name, "the key is {days} {unit} old: rotating it");
                match rotate(shared, ctl, index).await {
                    Ok(done) => return rotated(ctl, done).await,
                    Err(Rotation::Refused(why)) => {
                        warn!(tunnel = %shared.name, "the key is due for rotation but was not rotated: {why}; trying again in {ROTATION_CHECK:?}");
                    }
                    Err(Rotation::Link(why)) => return why.into(),
                }
            } else if let Some(next) = shared.declined_in_file() {
                // A router refused the key file's key (see `Shared::fall_back`): it is
                // taken up through a rotation, which has the routers authorize it.
                info!(tunnel = %shared.name, "asking this tunnel's routers to authorize the key file's key {next}");
                match rotate(shared, ctl, index).await {
                    Ok(done) => return rotated(ctl, done).await,
                    Err(Rotation::Refused(why)) => {
                        warn!(tunnel = %shared.name, "the key file's key {next} was not authorized: {why}; this tunnel keeps its key {key}: add {next} to its routers' authorized_clients, or give each tunnel a key file of its own (--key); trying again in {ROTATION_CHECK:?}");
                    }
                    Err(Rotation::Link(why)) => return why.into(),
                }
            }
        }
        shared.reread_pins();
        let now_trusted = shared.trusted_for(index);
        let gone: Vec<PublicKey> = trusted
            .iter()
            .filter(|k| !now_trusted.contains(k))
            .copied()
            .collect();
        trusted = now_trusted;
        if !gone.is_empty() {
            // The router was admitted with a key that may have been withdrawn:
            // connect again, which checks it against the keys pinned now. Streams
            // in flight go on.
            goodbye(ctl, "the tunnel checks the router's key again").await;
            return LinkEnd {
                why: format!(
                    "{} is no longer trusted for router {router}: connecting again to check the key it presents",
                    conduit_proto::tls::one_of(&gone)
                ),
                silent: false,
                again: true,
                back: None,
            };
        }
        if shared.our_key() != key {
            // Rotated on another router's link, or taken from the key file: this
            // link is made again with the new key. Streams in flight go on.
            goodbye(ctl, "the tunnel's key changed").await;
            return LinkEnd {
                why: format!(
                    "the tunnel's key is now {}: connecting again with it",
                    shared.our_key()
                ),
                silent: false,
                again: true,
                back: None,
            };
        }
        if *stop.borrow() {
            let bye = Message::Goodbye(Refusal::new(
                RefusalCode::ShuttingDown,
                "the tunnel is stopping",
            ));
            let _ = ctl.send(&bye).await;
            return "stopping".to_owned().into();
        }
        nonce += 1;
        if let Err(e) = ctl.send(&Message::Ping { nonce }).await {
            return e.to_string().into();
        }
        let deadline = tokio::time::Instant::now() + interval * 3;
        loop {
            let next = tokio::select! {
                r = tokio::time::timeout_at(deadline, ctl.recv()) => Ok(r),
                _ = stop.wait_for(|s| *s) => break,
                p = probe.answered() => Err(p),
            };
            let next = match next {
                Ok(next) => next,
                Err(p) => return move_back(shared, ctl, p).await,
            };
            match next {
                Err(_) => {
                    return LinkEnd {
                        why: format!("no heartbeat answer for {:?}", interval * 3),
                        silent: true,
                        again: false,
                        back: None,
                    };
                }
                Ok(Ok(Some(Message::Pong { nonce: n }))) if n == nonce => break,
                Ok(Ok(Some(Message::Pong { .. }))) => continue,
                Ok(Ok(Some(Message::RouterKeys { keys }))) => {
                    shared.learn(index, &keys, ctl.peer_key());
                    // What the router itself says of its keys needs no new check.
                    trusted = shared.trusted_for(index);
                    continue;
                }
                Ok(Ok(Some(Message::Goodbye(r)))) => {
                    return format!("router said goodbye: {}", r.message).into();
                }
                Ok(Ok(Some(other))) => {
                    return format!("unexpected {} from the router", other.name()).into();
                }
                Ok(Ok(None)) => return "the router closed the connection".to_owned().into(),
                Ok(Err(e)) => return e.to_string().into(),
            }
        }
        // Until the next ping, keep reading: a router that goes away is noticed at
        // once, not at the next ping.
        let next = tokio::time::Instant::now() + interval;
        loop {
            let woke = tokio::select! {
                r = tokio::time::timeout_at(next, ctl.recv()) => Woke::Got(r),
                _ = stop.wait_for(|s| *s) => break,
                (reply, turn) = asked_to_rotate(rotations) => Woke::Rotate(reply, turn),
                p = probe.answered() => Woke::Back(Box::new(p)),
            };
            let got = match woke {
                Woke::Got(got) => got,
                Woke::Back(p) => return move_back(shared, ctl, *p).await,
                Woke::Rotate(reply, _turn) => match rotate(shared, ctl, index).await {
                    Ok(done) => {
                        let _ = reply.send(Ok(done.clone()));
                        return rotated(ctl, done).await;
                    }
                    Err(Rotation::Refused(why)) => {
                        let _ = reply.send(Err(why));
                        continue;
                    }
                    Err(Rotation::Link(why)) => {
                        let _ = reply.send(Err(format!("the router link failed: {why}")));
                        return why.into();
                    }
                },
            };
            match got {
                Err(_) => break,
                Ok(Ok(Some(Message::Pong { .. }))) => continue,
                Ok(Ok(Some(Message::RouterKeys { keys }))) => {
                    shared.learn(index, &keys, ctl.peer_key());
                    // What the router itself says of its keys needs no new check.
                    trusted = shared.trusted_for(index);
                    continue;
                }
                Ok(Ok(Some(Message::Goodbye(r)))) => {
                    return format!("router said goodbye: {}", r.message).into();
                }
                Ok(Ok(Some(other))) => {
                    return format!("unexpected {} from the router", other.name()).into();
                }
                Ok(Ok(None)) => return "the router closed the connection".to_owned().into(),
                Ok(Err(e)) => return e.to_string().into(),
            }
        }
    }
}

/// The next request to rotate the key, with the turn to rotate it.
async fn asked_to_rotate(
    rotations: &SharedRotations,
) -> (oneshot::Sender<Result<Rotated, String>>, RotationTurn) {
    let mut turn = rotations.clone().lock_owned().await;
    match turn.recv().await {
        Some(reply) => (reply, turn),
        None => std::future::pending().await,
    }
}

/// What woke the control channel between two pings.
enum Woke<T> {
    /// A message, an error, or the time for the next ping.
    Got(T),
    /// `conduit keys rotate` asked for a rotation.
    Rotate(oneshot::Sender<Result<Rotated, String>>, RotationTurn),
    /// An earlier router answers again.
    Back(Box<Preferred>),
}

/// How often a tunnel with `key_rotation` checks its key file's age.
const ROTATION_CHECK: Duration = Duration::from_secs(3600);

/// Ends a control channel after a rotation: says goodbye, so that the link is made
/// again with the new key.
async fn rotated(ctl: &mut Wire, done: Rotated) -> LinkEnd {
    let until = done.old_expires.map_or_else(
        || "its grace period ends".to_owned(),
        |t| humantime::format_rfc3339_seconds(t).to_string(),
    );
    let why = format!(
        "key rotated: now {}; the old key is admitted until {until}; reconnecting with \
         the new key",
        done.key
    );
    let bye = Refusal::new(RefusalCode::ShuttingDown, "key rotated");
    let _ = ctl.send(&Message::Goodbye(bye)).await;
    LinkEnd {
        why,
        silent: false,
        again: true,
        back: None,
    }
}

/// Ends the control channel to the router in use with a goodbye (its streams go on
/// until they end) so that the link moves to the earlier router `p`.
async fn move_back(shared: &Shared, ctl: &mut Wire, p: Preferred) -> LinkEnd {
    let to = &shared.routers[p.index];
    let bye = Refusal::new(
        RefusalCode::ShuttingDown,
        format!("the tunnel moves back to router {to}"),
    );
    let _ = ctl.send(&Message::Goodbye(bye)).await;
    LinkEnd {
        why: format!("router {to} answers again: moving back to it"),
        silent: false,
        again: true,
        back: Some(p),
    }
}

/// Why a rotation did not happen.
enum Rotation {
    /// Refused (by the router, or here); the link goes on.
    Refused(String),
    /// The link failed meanwhile.
    Link(String),
}

/// Rotates the key over the control channel `ctl`: a new key pair (or the key file's,
/// when another tunnel sharing the file rotated it), `RotateKey` to every router,
/// and once the router in use answers `KeyRotated`, the key file and the TLS
/// configuration are replaced. The new key is written only after the router
/// authorized it, so a refusal or a failure leaves everything as it was.
async fn rotate(shared: &Shared, ctl: &mut Wire, index: usize) -> Result<Rotated, Rotation> {
    let Some(path) = &shared.key_path else {
        return Err(Rotation::Refused(
            "this tunnel's key was not read from a file".into(),
        ));
    };
    if shared.transport == Transport::Plain {
        return Err(Rotation::Refused(
            "the plain transport has no keys to rotate".into(),
        ));
    }
    let version = shared.versions[index].load(Ordering::Relaxed);
    if version < version::ROTATION {
        return Err(Rotation::Refused(format!(
            "router {} speaks protocol {version}, and key rotation needs protocol {} or \
             later: upgrade conduit on the router",
            shared.routers[index],
            version::ROTATION
        )));
    }
    // Every other router is reached before any is asked: one that is away postpones
    // the rotation rather than leave it half made.
    let mut others = open_others(shared, index).await?;
    // Another tunnel with the same key file rotated it: the routers are asked to
    // authorize that key rather than a new one (those the other tunnel's rotation
    // reached, through a clients file they share, know it already and agree).
    let (pair, fresh) = match shared.newer_key_in_file() {
        Some(pair) => (pair, false),
        None => {
            let pair = KeyPair::generate()
                .map_err(|e| Rotation::Refused(format!("cannot generate a key: {e}")))?;
            (pair, true)
        }
    };
    // Checked before the router is asked, so that a key it authorizes is usable and
    // can be saved.
    configs(&pair, &shared.trusted(), &shared.suites)
        .map_err(|e| Rotation::Refused(format!("cannot use the new key: {e}")))?;
    let staged = if fresh {
        Some(
            crate::keys::stage_pair(path, &pair)
                .map_err(|e| Rotation::Refused(format!("cannot save a new key: {e}")))?,
        )
    } else {
        None
    };
    let next = pair.public();
    // The router in use first: if it refuses, nothing has changed anywhere.
    let asked = ask_router(shared, ctl, next).await;
    let mut expires = match asked {
        Ok(t) => t,
        Err(e) => {
            if let Some(staged) = &staged {
                let _ = std::fs::remove_file(staged);
            }
            for (_, wire) in &mut others {
                goodbye(wire, "the key rotation was called off").await;
            }
            return Err(e);
        }
    };
    // Then the others, at once. One that fails now keeps admitting the old key
    // only: the new key is used all the same (the router in use retires the old
    // one), and its operator is told to add it.
    let answers = futures::future::join_all(others.iter_mut().map(|(index, wire)| {
        let index = *index;
        async move {
            let asked = ask_router(shared, wire, next).await;
            goodbye(wire, "key rotated").await;
            (index, asked)
        }
    }))
    .await;
    let mut not_authorized = Vec::new();
    for (index, asked) in answers {
        match asked {
            Ok(t) => expires = expires.min(t),
            Err(Rotation::Refused(why) | Rotation::Link(why)) => {
                not_authorized.push(format!("router {}: {why}", shared.routers[index]));
            }
        }
    }
    if let Some(staged) = &staged {
        let name = std::fs::read_to_string(path.with_extension("pub"))
            .ok()
            .and_then(|l| PublicKey::parse_line(&l).and_then(Result::ok))
            .map(|(_, name)| name)
            .unwrap_or_default();
        crate::keys::commit_pair(path, staged, &next, &name).map_err(|e| {
            // The router admits both keys now; the old one keeps working until it
            // expires.
            Rotation::Refused(format!(
                "the router authorized {next}, but the new key could not be put in place \
                 ({e}); the tunnel keeps its old key, which the router admits until it expires"
            ))
        })?;
    }
    shared.use_key(Arc::new(pair)).map_err(Rotation::Refused)?;
    shared.admitted();
    *shared.declined.lock().unwrap_or_else(|p| p.into_inner()) = None;
    for why in &not_authorized {
        error!(tunnel = %shared.name, "the new key {next} is not authorized by {why}; add it to that router's authorized_clients, or it refuses this tunnel");
    }
    Ok(Rotated {
        key: next,
        old_expires: Some(UNIX_EPOCH + Duration::from_secs(expires)),
        not_authorized,
    })
}

/// Control channels to every router but the one at `at`, whose link rotates the
/// key: all of them, or why not.
async fn open_others(shared: &Shared, at: usize) -> Result<Vec<(usize, Wire)>, Rotation> {
    let opened = futures::future::join_all((0..shared.routers.len()).filter(|i| *i != at).map(
        |index| async move {
            // Bounded, so that the link in use misses no more than a heartbeat.
            let opened = tokio::time::timeout(
                shared.heartbeat,
                open_at(shared, ChannelKind::Control, index),
            )
            .await;
            (index, opened)
        },
    ))
    .await;
    let mut others = Vec::with_capacity(opened.len());
    let mut away = Vec::new();
    for (index, opened) in opened {
        let router = &shared.routers[index];
        match opened {
            Ok(Ok((wire, version))) if version >= version::ROTATION => others.push((index, wire)),
            Ok(Ok((_, version))) => away.push(format!(
                "router {router} speaks protocol {version}, and key rotation needs protocol {} \
                 or later: upgrade conduit on it",
                version::ROTATION
            )),
            Ok(Err(e)) => away.push(format!("router {router}: {e}")),
            Err(_) => away.push(format!(
                "router {router} did not answer within {:?}",
                shared.heartbeat
            )),
        }
    }
    if away.is_empty() {
        return Ok(others);
    }
    for (_, wire) in &mut others {
        goodbye(wire, "the key rotation was called off").await;
    }
    Err(Rotation::Refused(format!(
        "every router of this tunnel must authorize the new key, and {}; the key is rotated \
         once every router answers",
        away.join("; ")
    )))
}

/// Ends a control channel of a rotation with a goodbye.
async fn goodbye(wire: &mut Wire, why: &str) {
    let bye = Refusal::new(RefusalCode::ShuttingDown, why);
    let _ = wire.send(&Message::Goodbye(bye)).await;
}

/// Sends `RotateKey` for `next` and waits for the router's answer: when the old key
/// expires (Unix seconds), or why not.
async fn ask_router(shared: &Shared, ctl: &mut Wire, next: PublicKey) -> Result<u64, Rotation> {
    ctl.send(&Message::RotateKey { next })
        .await
        .map_err(|e| Rotation::Link(e.to_string()))?;
    let deadline = tokio::time::Instant::now() + shared.heartbeat * 3;
    let expires = loop {
        match tokio::time::timeout_at(deadline, ctl.recv()).await {
            Err(_) => {
                return Err(Rotation::Link(format!(
                    "no answer to the rotation for {:?}",
                    shared.heartbeat * 3
                )));
            }
            // A channel opened for the rotation may name the router's keys first;
            // they are taken up when the link moves there.
            Ok(Ok(Some(Message::Pong { .. } | Message::RouterKeys { .. }))) => continue,
            Ok(Ok(Some(Message::KeyRotated { expires }))) => break expires,
            Ok(Ok(Some(Message::Refused(r)))) => {
                return Err(Rotation::Refused(format!(
                    "the router refused the rotation: {}",
                    r.message
                )));
            }
            Ok(Ok(Some(other))) => {
                return Err(Rotation::Link(format!(
                    "unexpected {} from the router",
                    other.name()
                )));
            }
            Ok(Ok(None)) => return Err(Rotation::Link("the router closed the connection".into())),
            Ok(Err(e)) => return Err(Rotation::Link(e.to_string())),
        }
    };
    Ok(expires)
}

/// The TLS configuration of `pair` for each of `router_keys`.
fn configs(
    pair: &KeyPair,
    router_keys: &[Vec<PublicKey>],
    suites: &Suites,
) -> Result<Vec<Arc<ClientConfig>>, rustls::Error> {
    router_keys
        .iter()
        .map(|k| client_config(pair, k, suites))
        .collect()
}

/// Per router, the pinned keys and then those it named that are not pinned.
fn trusted(pinned: &[Vec<PublicKey>], learned: &[Vec<PublicKey>]) -> Vec<Vec<PublicKey>> {
    pinned
        .iter()
        .enumerate()
        .map(|(i, p)| trusted_one(p, learned.get(i).map_or(&[][..], Vec::as_slice)))
        .collect()
}

/// The keys of each router's learned entry (none where there is none).
fn keys_of(learned: &[Option<KnownRouter>]) -> Vec<Vec<PublicKey>> {
    learned
        .iter()
        .map(|k| k.as_ref().map_or_else(Vec::new, |k| k.keys.clone()))
        .collect()
}

/// What `known_routers` says `router` named (`known`), if it was learned under a key
/// the tunnel still pins (`pinned`); otherwise nothing, and a warning: a router
/// pinned to another key since must not be trusted with what it named before.
fn still_pinned(
    tunnel: &str,
    router: &str,
    known: Option<&KnownRouter>,
    pinned: &[PublicKey],
) -> Option<KnownRouter> {
    let k = known?;
    if pinned.contains(&k.pin) {
        return Some(k.clone());
    }
    if k.keys.iter().all(|named| pinned.contains(named)) {
        // Pinned now anyway (the operator pinned the key the router moved to):
        // nothing is lost by not trusting the line.
        return None;
    }
    warn!(
        tunnel,
        router,
        "known_routers holds keys router {router} named ({}) while it was pinned to {}; \
         it is pinned to {} now, so they are not trusted (pin the key again, or delete \
         the line)",
        conduit_proto::tls::one_of(&k.keys),
        k.pin,
        conduit_proto::tls::one_of(pinned)
    );
    None
}

fn trusted_one(pinned: &[PublicKey], learned: &[PublicKey]) -> Vec<PublicKey> {
    let mut all = pinned.to_vec();
    all.extend(learned.iter().filter(|k| !pinned.contains(k)));
    all
}

/// What [`Shared::reread_pins`] found.
/// The specs among `specs` that name files, paths made absolute (`None` for those
/// that give keys inline); `specs` is empty, or one for all of the `routers`, or one
/// for each.
fn pin_files(specs: &[String], routers: usize) -> Result<Vec<Option<String>>, Error> {
    if specs.len() > 1 && specs.len() != routers {
        return Err(Error::Config(format!(
            "{} pinned-key specs for {}: a Conduit bug; please report it",
            specs.len(),
            count(routers, "router")
        )));
    }
    specs
        .iter()
        .map(|spec| {
            crate::keys::pins_name_a_file(spec)
                .then(|| crate::keys::absolute_pins(spec))
                .transpose()
        })
        .collect()
}

/// Answers the workers' requests for channels.
async fn make_channels(shared: Arc<Shared>, requests: flume::Receiver<FromWorker>) {
    while let Ok(FromWorker::WantChannels { core, count }) = requests.recv_async().await {
        for _ in 0..count {
            tokio::spawn(make_one(shared.clone(), core));
        }
    }
}

/// Makes one data channel for `core`, retrying while the router is away; out of file
/// descriptors, gives the request back to the worker instead.
async fn make_one(shared: Arc<Shared>, core: usize) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
    let mut status = shared.status.subscribe();
    loop {
        // Wait for the control channel: it tells a dead router from a bad key.
        while !shared.link.is_up() {
            if matches!(*status.borrow_and_update(), LinkStatus::Refused { .. }) {
                return;
            }
            if status.changed().await.is_err() {
                return;
            }
        }
        let Some(slot) = shared.pick(core) else {
            // The link moves to another router right now.
            tokio::task::yield_now().await;
            continue;
        };
        let index = slot.router();
        let epoch = shared.link.current(index);
        match open(&shared, ChannelKind::Data, index).await {
            Ok((w, version)) => {
                match w.into_handoff(epoch, Some(slot), shared.name.clone(), version) {
                    Ok(h) => {
                        if !shared.dp.send_client_channel(core, h) {
                            debug!(core, "worker gone; channel dropped");
                        }
                        return;
                    }
                    Err(e) => debug!(core, "data channel unusable: {e}"),
                }
            }
            Err(e) if e.out_of_descriptors() => {
                // The worker logs it, tells its users, and asks again when it sees fit.
                let reason = format!(
                    "cannot open a channel to the router: {e}; the tunnel is out of file \
                     descriptors: raise its open-file limit (ulimit -n, or LimitNOFILE= in a \
                     systemd unit)"
                );
                shared.dp.no_channels(core, reason);
                return;
            }
            Err(e) => {
                // Not counted against its router while waiting to try again.
                drop(slot);
                debug!(core, "cannot open a data channel: {e}");
            }
        }
        tokio::time::sleep(backoff.next_wait()).await;
    }
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

    #[test]
    fn a_udp_tunnel_refuses_a_router_without_datagrams_for_good() {
        let err = can_carry(true, 1, "10.2.0.1:9999").unwrap_err();
        assert_eq!(
            err.to_string(),
            "router 10.2.0.1:9999 speaks protocol 1, and UDP tunnels need protocol 2 or later: \
             upgrade conduit on the router"
        );
        assert!(!err.is_retryable());
        assert!(can_carry(true, version::DATAGRAMS, "r:1").is_ok());
        assert!(
            can_carry(false, 1, "r:1").is_ok(),
            "TCP tunnels speak protocol 1"
        );
    }
}
