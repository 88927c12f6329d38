//! The router: accept client connections, run TLS handshakes and the `Hello`
//! exchange, keep control channels, and hand data channels to the workers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use conduit_dataplane::{
    AcceptBackoff, ConnLimit, DataPlane, EngineKind, ErrorKind, Options, RouterSpec,
};
use conduit_proto::tls::{AuthorizedClients, Suites};
use conduit_proto::{ChannelKind, KeyPair, Message, PublicKey, RefusalCode, Secret, TlsSession};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tracing::{debug, info, warn};

use crate::alerts::AlertSettings;
use crate::api::{self, ApiSettings, ApiState};
use crate::authorized::{AdmittedPolicy, not_admitted};
use crate::balance::Balancer;
use crate::log_budget::LogBudget;
use crate::metrics::{Counters, RouterFacts, SetupError};
use crate::monitor::{HealthSettings, Monitor};
use crate::policy::AllowList;
use crate::router_key::RouterIdentity;
use crate::stop::StopSignals;
use crate::wire::{Wire, WireError};
use crate::{Error, Transport};

mod admit;
mod pending;
mod session;

use admit::{admit, is_tls_record, not_tls, source_allowed};
use session::control_session;

/// Everything a router needs to run.
pub struct RouterSettings {
    /// Where clients connect.
    pub bind: SocketAddr,
    /// The router's own key.
    pub identity: KeyPair,
    /// The client keys it admits.
    pub authorized: Arc<AuthorizedClients>,
    /// The file they came from, read again when it changes or on SIGHUP (`None`:
    /// the set stays as given).
    pub authorized_path: Option<PathBuf>,
    /// Which sources clients may open.
    pub policy: AllowList,
    /// A token clients must present, if set.
    pub token: Option<Secret>,
    /// TLS (the default) or, when the operator opts in, plain.
    pub transport: Transport,
    /// The TLS cipher suites handshakes accept, the router's order first.
    pub suites: Suites,
    /// Limit on TLS handshake plus `Hello`.
    pub handshake_timeout: Duration,
    /// Handshakes in progress at most (`performance.max_pending_handshakes`).
    pub max_pending_handshakes: usize,
    /// Limit on connecting a source.
    pub connect_timeout: Duration,
    /// How long an unused data channel stays open.
    pub idle_timeout: Duration,
    /// `performance.stream_idle_timeout_secs`: a stream that moves nothing either
    /// way for this long is closed (`None`: never).
    pub stream_idle: Option<conduit_dataplane::StreamIdle>,
    /// Open streams at most, over all clients; 0 means no limit.
    pub max_connections: usize,
    /// Options for sources' sockets.
    pub sockets: conduit_dataplane::SocketOptions,
    /// Each client's bandwidth limit (each direction, over all its streams).
    pub bandwidth: Option<conduit_dataplane::ratelimit::Limit>,
    /// Workers and engine.
    pub dataplane: Options,
    /// The REST API, if it is on.
    pub api: Option<ApiSettings>,
    /// Source probes and client-link timeout.
    pub health: HealthSettings,
    /// Where alerts go.
    pub alerts: AlertSettings,
    /// When a client rotates its key, how long the old one is still admitted.
    pub key_grace: Duration,
    /// The key this router will present once its operator switches to it
    /// (`--next-key`): named to tunnels (protocol 6) beside the one in use, so that
    /// they accept it by themselves.
    pub next_key: Option<PublicKey>,
    /// The router rotates its own key (`[router] key_rotation_days`, SIGUSR1);
    /// `None` when it does not (a next key given by hand, a key not from a file): a
    /// SIGUSR1 is then logged and ignored. Never on the plain transport.
    pub key_rotation: Option<crate::router_key::KeyRotation>,
}

struct State {
    transport: Transport,
    /// The cipher suites handshakes accept, for messages.
    suites: Suites,
    /// The key presented and named, and the TLS configuration of handshakes.
    identity: Arc<RouterIdentity>,
    authorized: Arc<AuthorizedClients>,
    token: Option<Secret>,
    handshake_timeout: Duration,
    /// One permit per handshake in progress: silent or slow peers cannot make the
    /// router hold more than this many TLS sessions at once.
    handshakes: Arc<Semaphore>,
    max_pending_handshakes: usize,
    /// The handshakes holding those permits, to close one going nowhere when all
    /// are taken.
    pending: Arc<pending::Pending>,
    client_timeout: Duration,
    dp: Arc<DataPlane>,
    monitor: Arc<Monitor>,
    counters: Arc<Counters>,
    /// Live control sessions per (client key, tunnel name): the address each comes
    /// from. Sessions are tasks on a multi-threaded runtime that come and go
    /// independently; a lock held for one map update is simpler than a task owning
    /// the map and answering messages.
    sessions: Mutex<Sessions>,
    /// Bumped when keys are revoked: control sessions check their key again.
    revoked: watch::Sender<u64>,
    /// Set when the router stops: control sessions say goodbye, so tunnels turn
    /// new users away (or fail over) at once instead of waiting out the drain.
    stopping: watch::Sender<bool>,
    /// Where the authorized keys live (`None`: given in memory; no rotation then).
    authorized_path: Option<PathBuf>,
    /// The allow-list as configured, to tell keys named in per-key rules.
    policy: AllowList,
    /// Where sources' names are looked up (shared with the data plane's policy).
    resolver: Arc<crate::dns::Resolver>,
    key_grace: Duration,
    /// One rotation at a time edits the authorized-clients file; the keys rotations
    /// made within [`session::MIN_KEY_AGE`], and when.
    rotating: tokio::sync::Mutex<HashMap<PublicKey, Instant>>,
    /// How many failed setups may still be logged this second.
    setup_log: LogBudget,
}

/// The most failed setups (refused keys, timeouts, garbage) logged in a second:
/// each costs its peer no more than a connection, so a flood of them must not
/// flood the log. The metrics count every one.
const SETUP_LOGS_PER_SEC: u32 = 20;

/// A bound router, ready to run.
pub struct Router {
    listener: TcpListener,
    state: Arc<State>,
    local_addr: SocketAddr,
    api: Option<(TcpListener, axum::Router)>,
    api_addr: Option<SocketAddr>,
    authorized_path: Option<PathBuf>,
    /// How the router rotates its key, or why it does not.
    key_rotation: Result<crate::router_key::KeyRotation, &'static str>,
    /// SIGUSR1, listened for from the start (see [`crate::router_key::run`]).
    usr1: crate::signals::Signals,
}

/// Accept queue of the router's port: handshakes beyond those in progress wait
/// here, as users do in each tunnel worker's own queue of the same length (the
/// kernel caps it at `net.core.somaxconn`).
const LISTEN_BACKLOG: u32 = 4096;

/// Binds the router's port with [`LISTEN_BACKLOG`] (tokio's own bind asks for 128).
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv6() {
        tokio::net::TcpSocket::new_v6()?
    } else {
        tokio::net::TcpSocket::new_v4()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

impl Router {
    /// Binds the listener and starts the workers.
    pub async fn bind(s: RouterSettings) -> Result<Self, Error> {
        let identity = Arc::new(
            RouterIdentity::new(
                s.identity,
                s.next_key,
                s.authorized.clone(),
                s.suites.clone(),
            )
            .map_err(|e| Error::Config(format!("cannot use the router key: {e}")))?,
        );
        let listener = listen(s.bind).map_err(|e| {
            let fix = match e.kind() {
                std::io::ErrorKind::AddrInUse => {
                    "something already listens there: pick another --bind"
                }
                std::io::ErrorKind::PermissionDenied => {
                    "ports below 1024 need privileges: pick a higher --bind port"
                }
                _ => "pick another --bind",
            };
            Error::Listen {
                what: "listen",
                addr: s.bind,
                source: e,
                fix,
            }
        })?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| Error::network("cannot read the listening address", e))?;
        let api_listener = match &s.api {
            Some(a) => Some(api::bind(a.bind).await?),
            None => None,
        };
        let health = Arc::new(std::sync::OnceLock::new());
        let resolver = crate::dns::Resolver::new(tokio::runtime::Handle::current());
        let dp = Arc::new(DataPlane::start_router(
            &s.dataplane,
            RouterSpec {
                policy: Arc::new(AdmittedPolicy {
                    authorized: s.authorized.clone(),
                    allow: Balancer::new(s.policy.clone(), health.clone())
                        .with_resolver(resolver.clone()),
                }),
                connect_timeout: s.connect_timeout,
                idle_timeout: s.idle_timeout,
                stream_idle: s.stream_idle,
                limit: ConnLimit::new(s.max_connections),
                sockets: s.sockets,
                bandwidth: conduit_dataplane::ratelimit::PerClient::new(s.bandwidth).map(Arc::new),
            },
        )?);
        let monitor = Monitor::start(
            s.health.clone(),
            &s.alerts,
            dp.clone(),
            Some(s.policy.clone()),
        )
        .map_err(|e| Error::Config(format!("cannot set up alerts: {e}")))?;
        let _ = health.set(Arc::downgrade(&monitor));
        let counters = Arc::new(Counters::default());
        let mut api_addr = None;
        let api = match (api_listener, s.api) {
            (Some(l), Some(settings)) => {
                let addr = l
                    .local_addr()
                    .map_err(|e| Error::network("cannot read the API's address", e))?;
                api_addr = Some(addr);
                let (history, skipped) = crate::history::History::open(settings.history.clone())
                    .map_err(Error::Config)?;
                if let Some(why) = skipped {
                    warn!("{why}");
                }
                tokio::spawn(crate::history::run(history.clone(), dp.clone()));
                let state = Arc::new(ApiState {
                    facts: RouterFacts {
                        version: env!("CARGO_PKG_VERSION").to_owned(),
                        engine: dp.engine().to_string(),
                        workers: dp.worker_count(),
                        started: SystemTime::now(),
                    },
                    listen: local_addr,
                    keys: {
                        let identity = identity.clone();
                        // The plain transport presents no key.
                        let plain = s.transport == Transport::Plain;
                        Arc::new(move || {
                            let p = identity.presented();
                            api::RouterKeys {
                                presented: if plain { Vec::new() } else { p.keys.clone() },
                                retiring: if plain { Vec::new() } else { p.retiring() },
                            }
                        })
                    },
                    api_listen: addr,
                    auth: settings.token.is_some(),
                    dp: dp.clone(),
                    monitor: monitor.clone(),
                    counters: counters.clone(),
                    authorized: s.authorized.clone(),
                    history,
                });
                Some((l, api::router(state, settings.token)))
            }
            _ => None,
        };
        let key_rotation = match (s.transport, s.key_rotation, s.next_key) {
            (Transport::Plain, _, _) => Err("the plain transport has no router key to rotate"),
            (_, Some(r), _) => Ok(r),
            (_, None, Some(_)) => Err(
                "the next key was given by hand (--next-key): restart the router with it \
                 as --key",
            ),
            (_, None, None) => Err("this router's key does not come from a file"),
        };
        Ok(Self {
            usr1: crate::router_key::listen(key_rotation.is_ok()),
            key_rotation,
            listener,
            local_addr,
            api,
            api_addr,
            state: Arc::new(State {
                identity,
                transport: s.transport,
                suites: s.suites,
                authorized: s.authorized,
                token: s.token,
                handshake_timeout: s.handshake_timeout,
                handshakes: Arc::new(Semaphore::new(s.max_pending_handshakes.max(1))),
                max_pending_handshakes: s.max_pending_handshakes.max(1),
                pending: Arc::default(),
                client_timeout: s.health.client_timeout,
                dp,
                monitor,
                counters,
                sessions: Mutex::new(HashMap::new()),
                revoked: watch::Sender::new(0),
                stopping: watch::Sender::new(false),
                authorized_path: s.authorized_path.clone(),
                policy: s.policy,
                resolver,
                key_grace: s.key_grace,
                rotating: tokio::sync::Mutex::new(HashMap::new()),
                setup_log: LogBudget::new(SETUP_LOGS_PER_SEC, "failed connection setups"),
            }),
            authorized_path: s.authorized_path,
        })
    }

    /// Where the REST API listens, if it is on.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api_addr
    }

    /// Where clients connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The engine the workers run.
    pub fn engine(&self) -> EngineKind {
        self.state.dp.engine()
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.state.dp.worker_count()
    }

    /// Serves until a stop signal (`stops`), then lets open streams finish for up to
    /// `drain`; a later stop signal closes them at once. The log's last line says
    /// which signal stopped the router and how its drain went.
    pub async fn run(self, mut stops: StopSignals, drain: Duration) -> Result<(), Error> {
        let (api_stop, api_stopped) = tokio::sync::oneshot::channel::<()>();
        let api_task = self.api.map(|(listener, app)| {
            api::serve(listener, app, async move {
                let _ = api_stopped.await;
            })
        });
        let watcher = self.authorized_path.clone().map(|path| {
            tokio::spawn(crate::authorized::watch(
                path,
                self.state.authorized.clone(),
                self.state.dp.clone(),
                self.state.monitor.clone(),
                self.state.revoked.clone(),
                self.state.policy.clone(),
            ))
        });
        // Always listening for SIGUSR1, whose default action would end the router.
        let rotator = Some(match self.key_rotation.clone() {
            Ok(r) => tokio::spawn(crate::router_key::run(
                self.state.identity.clone(),
                r,
                self.usr1,
            )),
            Err(why) => tokio::spawn(crate::router_key::refuse(why, self.usr1)),
        });
        let memory = tokio::spawn(crate::limits::hand_back_memory(self.state.dp.clone()));
        let mut backoff = AcceptBackoff::default();
        // When the slots last ran out and we said so (at most once a minute), with
        // no handshake to close, and with one closed to make room.
        let mut said_full: [Option<Instant>; 2] = [None, None];
        let why = loop {
            // A handshake slot first: while all are taken by handshakes under way,
            // new connections wait in the kernel's listen backlog and cost nothing.
            let permit = match self.state.handshakes.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    // The slot of one going nowhere, if one is; else wait for one, or
                    // for the first that may be going nowhere.
                    let (closed, due) = match self.state.pending.close_one(Instant::now()) {
                        Ok(_) => (true, None),
                        Err(due) => (false, due),
                    };
                    let said = &mut said_full[usize::from(closed)];
                    if said.is_none_or(|t| t.elapsed() >= FULL_REPEAT) {
                        *said = Some(Instant::now());
                        let max = self.state.max_pending_handshakes;
                        if closed {
                            warn!(
                                "{max} handshakes in progress (performance.max_pending_handshakes): \
                                 those that sent nothing for {:?}, or took {:?} or more, give \
                                 their slot to new connections; if they are real clients, raise \
                                 the limit",
                                pending::SILENT,
                                pending::STALLED
                            );
                        } else {
                            warn!(
                                "{max} handshakes in progress (performance.max_pending_handshakes): \
                                 new connections wait in the listen backlog until one finishes or \
                                 times out; if these are real clients, raise the limit"
                            );
                        }
                    }
                    let due = due.map(tokio::time::Instant::from_std);
                    tokio::select! {
                        signal = stops.next() => break signal,
                        p = self.state.handshakes.clone().acquire_owned() => match p {
                            Ok(p) => p,
                            Err(_) => break "the handshake slots closed",
                        },
                        () = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => continue,
                    }
                }
            };
            tokio::select! {
                signal = stops.next() => break signal,
                accepted = self.listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        backoff.succeeded();
                        let ticket = self.state.pending.enter(peer);
                        tokio::spawn(handle(self.state.clone(), tcp, peer, (permit, ticket)));
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        let wait = backoff.failed(&e);
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        };
        if let Some(w) = watcher {
            w.abort();
        }
        if let Some(r) = rotator {
            r.abort();
        }
        memory.abort();
        info!(
            "router stopping ({why}): no new connections; draining open streams for up to {drain:?}"
        );
        drop(self.listener);
        // The API's port goes with the router's: a successor can take both at once
        // (requests under way are answered), and a health check sees it gone.
        let _ = api_stop.send(());
        self.state.stopping.send_replace(true);
        let dp = self.state.dp.clone();
        let stopping = tokio::task::spawn_blocking(move || dp.stop(drain));
        tokio::pin!(stopping);
        // A later stop signal does not wait out the drain: the streams still open
        // are closed now.
        let drained = loop {
            tokio::select! {
                d = &mut stopping => break d.unwrap_or_default(),
                signal = stops.next() => crate::stop::cut_drain(&self.state.dp, signal),
            }
        };
        // Each control session says its goodbye before the process ends: with no
        // stream to drain, the process would otherwise be gone before a busy runtime
        // ran them, and their tunnels would find the link closed, not the router
        // stopping (they try it again rather than move on at once).
        let deadline = tokio::time::Instant::now() + GOODBYES_WITHIN;
        while !lock(&self.state.sessions).is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(t) = api_task {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
        // Alerts still queued get a moment to go, as a tunnel's do.
        let left = self.state.monitor.alerter().close(ALERTS_AT_STOP).await;
        if left > 0 {
            warn!(
                "stopped before every alert was delivered: {left} not sent after waiting \
                 {ALERTS_AT_STOP:?} for them (their receiver is slow or down; each was logged \
                 when raised)"
            );
        }
        info!(
            "{}",
            crate::stop::stopped_line("router", why, drain, drained)
        );
        Ok(())
    }
}

/// How long a stopping router waits for its control sessions' goodbyes.
const GOODBYES_WITHIN: Duration = Duration::from_secs(2);

/// Live control sessions: per (client key, tunnel name), the address of each.
type Sessions = HashMap<(Option<PublicKey>, String), Vec<std::net::IpAddr>>;

/// What a plain router answers an HTTP request with: the body of a 400.
const NOT_THE_API: &str = "this port is a Conduit router's, for Conduit tunnels only; its API is on its --api-bind address\n";

/// Answers an HTTP client with [`NOT_THE_API`] in a 400, then reads what it sent
/// until it closes (a bit at most, for a second at most): closing on unread bytes
/// would reset the connection, and the answer with it.
async fn answer_http(mut tcp: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{NOT_THE_API}",
        NOT_THE_API.len()
    );
    if tcp.write_all(answer.as_bytes()).await.is_err() || tcp.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut buf = [0u8; 4096];
        let mut left: usize = 64 * 1024;
        while left > 0 {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

/// A TLS record holding a fatal `protocol_version` alert (RFC 8446, 6.2).
const PROTOCOL_VERSION_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46];

/// How often a router whose handshake slots keep running out says so again.
const FULL_REPEAT: Duration = Duration::from_secs(60);

/// How long a stopping router gives the alerts still queued (a tunnel gives its own
/// as long).
const ALERTS_AT_STOP: Duration = Duration::from_secs(2);

async fn handle(
    state: Arc<State>,
    tcp: TcpStream,
    peer: SocketAddr,
    (permit, mut ticket): (tokio::sync::OwnedSemaphorePermit, pending::Ticket),
) {
    let started = Instant::now();
    // The first bytes, kept to say what a peer that is not a Conduit client was.
    let mut first = [0u8; 8];
    let mut seen = 0;
    let said = ticket.said();
    let setup = async {
        let mut wire = match state.transport {
            Transport::Tls => {
                seen = tcp.peek(&mut first).await?;
                said.spoke();
                Wire::handshake(
                    tcp,
                    TlsSession::server(state.identity.presented().tls.clone())?,
                )
                .await?
            }
            Transport::Plain => {
                seen = tcp.peek(&mut first).await?;
                said.spoke();
                if is_tls_record(&first[..seen]) {
                    // A TLS client: a fatal protocol_version alert tells it this is no
                    // router of its transport (a bare close would look like a router
                    // going away, worth trying again).
                    let mut tcp = tcp;
                    let _ = tokio::io::AsyncWriteExt::write_all(&mut tcp, &PROTOCOL_VERSION_ALERT)
                        .await;
                    return Err(WireError::Closed);
                }
                if admit::is_http(&first[..seen]) {
                    // An HTTP client (`curl`, `conduit health --router` pointed here):
                    // an answer it can show, rather than a bare close.
                    answer_http(tcp).await;
                    return Err(WireError::Closed);
                }
                Wire::plain(tcp)?
            }
        };
        let hello = match wire.recv().await? {
            Some(Message::Hello(h)) => h,
            Some(other) => {
                return Err(WireError::Proto(conduit_proto::ProtoError::Unexpected {
                    got: other.name(),
                    expected: "Hello",
                }));
            }
            None => return Err(WireError::Closed),
        };
        Ok((wire, hello))
    };
    let setup = tokio::time::timeout(state.handshake_timeout, async {
        tokio::select! {
            done = setup => Ok(done),
            _ = &mut ticket.closed => Err(()),
        }
    })
    .await;
    drop(permit);
    drop(ticket);
    let (mut wire, hello) = match setup {
        Ok(Err(())) => {
            state.counters.fail(SetupError::Timeout);
            if let Some(more) = state.setup_log.admit() {
                info!(%peer, "connection dropped: every handshake slot was taken, and this one, {} after {:?}, gave its slot to a new connection{more}", if seen == 0 { "silent" } else { "unfinished" }, started.elapsed());
            }
            return;
        }
        Err(_) => {
            state.counters.fail(SetupError::Timeout);
            if let Some(more) = state.setup_log.admit() {
                info!(%peer, "connection dropped: no TLS handshake and Hello within {:?}{more}", state.handshake_timeout);
            }
            return;
        }
        Ok(Ok(Err(WireError::Tls(e)))) => {
            let unknown = e.unknown_client_key();
            let what = not_tls(&first[..seen]);
            // Closed before a byte: a port check (a load balancer's, a Kubernetes
            // probe's), not a failed client.
            if unknown.is_none() && what.is_none() && seen == 0 {
                debug!(%peer, "connection closed before it sent anything (a port check?)");
                return;
            }
            state.counters.fail(if unknown.is_some() {
                SetupError::Unauthorized
            } else {
                SetupError::Tls
            });
            let Some(more) = state.setup_log.admit() else {
                return;
            };
            // The key as the peer presented it: refused before it proved to hold it.
            match (unknown, what) {
                (Some(u), _) => match state.authorized.expiry(&u.got) {
                    Some(_) => {
                        warn!(%peer, "refused: {} (the key a client presented){more}", not_admitted(&state.authorized, &u.got))
                    }
                    None => {
                        warn!(%peer, "refused unknown client key {}: add it to authorized_clients to admit it{more}", u.got)
                    }
                },
                (None, Some(what)) => info!(%peer, "connection refused: {what}{more}"),
                (None, None) if e.no_cipher_suite_in_common() => {
                    warn!(%peer, "TLS handshake refused: the client offers none of the cipher suites this router accepts ({}); the tunnel must offer one of them (its --cipher-suites, or [security] cipher_suites), or the router accept more (--cipher-suites){more}", state.suites);
                }
                (None, None) => info!(%peer, "TLS handshake failed: {e}{more}"),
            }
            return;
        }
        Ok(Ok(Err(e))) => {
            state.counters.fail(SetupError::Protocol);
            let Some(more) = state.setup_log.admit() else {
                return;
            };
            match (state.transport, is_tls_record(&first[..seen])) {
                (Transport::Plain, true) => {
                    info!(%peer, "connection refused: a TLS client connected to this plain-transport router: start the tunnel with --transport plain or run the router without it ({e}){more}")
                }
                (Transport::Plain, false) if admit::is_http(&first[..seen]) => {
                    info!(%peer, "connection refused: a plain-text HTTP request: this port is a Conduit router, only Conduit clients can use it; point HTTP clients at a tunnel's --bind address (the router's own API is on its --api-bind){more}")
                }
                _ => info!(%peer, "connection dropped during setup: {e}{more}"),
            }
            return;
        }
        Ok(Ok(Ok(x))) => x,
    };
    let key = wire.peer_key();
    if state.transport == Transport::Tls && key.is_none() {
        return;
    }
    let who = key.map_or_else(|| "(plain transport)".to_owned(), |k| k.to_string());
    let admitted = match admit(&state, key.as_ref(), &hello) {
        Ok(v) => match (&hello.channel, &hello.source) {
            (ChannelKind::Control, Some(source)) => {
                source_allowed(&state, key, source).await.map(|()| v)
            }
            _ => Ok(v),
        },
        Err(refusal) => Err(refusal),
    };
    let version = match admitted {
        Ok(v) => v,
        Err(refusal) => {
            if refusal.code == RefusalCode::PolicyDenied {
                // Not the client's key: the source it asked for, as a stream's would be.
                state.dp.count_error(ErrorKind::PolicyRefused);
            } else {
                state.counters.fail(SetupError::Unauthorized);
            }
            warn!(%peer, client = %who, tunnel = ?hello.tunnel, "refused: {}", refusal.message);
            let _ = wire.send(&Message::Refused(refusal)).await;
            return;
        }
    };
    if let Err(e) = wire.send(&Message::Welcome { version }).await {
        state.counters.fail(SetupError::Protocol);
        debug!(%peer, "client left before Welcome: {e}");
        return;
    }
    state.counters.handshakes.observe(started.elapsed());
    match hello.channel {
        ChannelKind::Control => {
            control_session(&state, wire, key, who, hello.tunnel, version).await;
        }
        ChannelKind::Data => {
            match wire.into_handoff(Default::default(), None, hello.tunnel, version) {
                Ok(h) => {
                    if !state.dp.send_router_channel(h) {
                        // Stopping, the workers are gone: nothing went wrong.
                        if *state.stopping.borrow() {
                            debug!(%peer, "the router is stopping; data channel dropped");
                        } else {
                            warn!(%peer, "no data-plane worker is running; channel dropped");
                        }
                    }
                }
                Err(e) => warn!(%peer, client = %who, "data channel refused: {e}"),
            }
        }
    }
}

/// The session table's lock: a poisoned lock still holds valid counts.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_that_are_not_tls_are_named() {
        assert_eq!(not_tls(&[]), None);
        assert_eq!(not_tls(&[0x16, 0x03, 0x01]), None);
        let http = not_tls(b"GET / HT").unwrap();
        assert!(
            http.starts_with("a plain-text HTTP request, not TLS"),
            "{http}"
        );
        assert_eq!(
            not_tls(&[0, 0, 0, 0x2a, 0x01, 0x00, 0x01]).unwrap(),
            "a client of the plain transport connected to this TLS router: start the tunnel \
             without --transport plain, or run the router with --transport plain"
        );
        assert!(is_tls_record(&[0x16, 0x03, 0x01, 0x02, 0x00]));
        assert!(!is_tls_record(&[0, 0, 0, 0x2a, 0x01]));
        assert_eq!(
            not_tls(&[0xde, 0xad, 0xbe, 0xef]).unwrap(),
            "not a TLS connection (first bytes deadbeef): this port is a Conduit router, \
             only Conduit clients can use it"
        );
    }

    #[tokio::test]
    async fn the_port_queues_hundreds_of_connections_before_they_are_accepted() {
        // tokio's own bind queues 128: the 130th connection would wait for a
        // SYN retry that meets a queue still full, and never complete.
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let held = tokio::task::spawn_blocking(move || {
            (0..600)
                .map(|_| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(20)))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .unwrap()
        .expect("every connection completes while none is accepted");
        assert_eq!(held.len(), 600);
        drop(listener);
    }
}
