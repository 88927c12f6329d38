//! The router: accept client connections, run TLS handshakes and the `Hello`
//! exchange, keep control channels, and hand data channels to the workers.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use conduit_dataplane::{AcceptBackoff, ConnLimit, DataPlane, EngineKind, Options, RouterSpec};
use conduit_proto::tls::{AuthorizedClients, Suites};
use conduit_proto::version::VersionRange;
use conduit_proto::{
    ChannelKind, Hello, KeyPair, Message, PublicKey, Refusal, RefusalCode, Secret, TlsSession,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tracing::{debug, info, warn};

use crate::alerts::AlertSettings;
use crate::api::{self, ApiSettings, ApiState};
use crate::authorized::{AdmittedPolicy, REVOKED, not_admitted};
use crate::balance::Balancer;
use crate::keys;
use crate::metrics::{Counters, RouterFacts, SetupError};
use crate::monitor::{HealthSettings, Monitor};
use crate::policy::{AllowList, Caller};
use crate::router_key::RouterIdentity;
use crate::wire::{Wire, WireError};
use crate::{Error, Transport};

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
    client_timeout: Duration,
    dp: Arc<DataPlane>,
    monitor: Arc<Monitor>,
    counters: Arc<Counters>,
    /// Live control sessions per (client key, tunnel name). Sessions are tasks on a
    /// multi-threaded runtime that come and go independently; a lock held for one
    /// map update is simpler than a task owning the map and answering messages.
    sessions: Mutex<HashMap<(Option<PublicKey>, String), usize>>,
    /// Bumped when keys are revoked: control sessions check their key again.
    revoked: watch::Sender<u64>,
    /// Where the authorized keys live (`None`: given in memory; no rotation then).
    authorized_path: Option<PathBuf>,
    /// The allow-list as configured, to tell keys named in per-key rules.
    policy: AllowList,
    key_grace: Duration,
    /// One rotation at a time edits the authorized-clients file.
    rotating: tokio::sync::Mutex<()>,
}

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
        let listener = TcpListener::bind(s.bind).await.map_err(|e| {
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
        let dp = Arc::new(DataPlane::start_router(
            &s.dataplane,
            RouterSpec {
                policy: Arc::new(AdmittedPolicy {
                    authorized: s.authorized.clone(),
                    allow: Balancer::new(s.policy.clone(), health.clone()),
                }),
                connect_timeout: s.connect_timeout,
                idle_timeout: s.idle_timeout,
                limit: ConnLimit::new(s.max_connections),
                sockets: s.sockets,
                bandwidth: conduit_dataplane::ratelimit::PerClient::new(s.bandwidth).map(Arc::new),
            },
        )?);
        let monitor = Monitor::start(s.health.clone(), &s.alerts, dp.clone())
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
                        Arc::new(move || {
                            let p = identity.presented();
                            api::RouterKeys {
                                presented: p.keys.clone(),
                                retiring: p.retiring(),
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
                client_timeout: s.health.client_timeout,
                dp,
                monitor,
                counters,
                sessions: Mutex::new(HashMap::new()),
                revoked: watch::Sender::new(0),
                authorized_path: s.authorized_path.clone(),
                policy: s.policy,
                key_grace: s.key_grace,
                rotating: tokio::sync::Mutex::new(()),
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

    /// Serves until `shutdown` completes, then lets open streams finish for up to
    /// `drain`.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()>,
        drain: Duration,
    ) -> Result<(), Error> {
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
        tokio::pin!(shutdown);
        let mut backoff = AcceptBackoff::default();
        // When the slots last ran out and we said so (at most once a minute).
        let mut said_full: Option<Instant> = None;
        loop {
            // A handshake slot first: while all are taken, new connections wait in
            // the kernel's listen backlog and cost nothing here.
            let permit = match self.state.handshakes.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    if said_full.is_none_or(|t| t.elapsed() >= FULL_REPEAT) {
                        said_full = Some(Instant::now());
                        warn!(
                            "{} handshakes in progress (performance.max_pending_handshakes): new \
                             connections wait in the listen backlog until one finishes or times \
                             out; if these are real clients, raise the limit",
                            self.state.max_pending_handshakes
                        );
                    }
                    tokio::select! {
                        _ = &mut shutdown => break,
                        p = self.state.handshakes.clone().acquire_owned() => match p {
                            Ok(p) => p,
                            Err(_) => break,
                        },
                    }
                }
            };
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        backoff.succeeded();
                        tokio::spawn(handle(self.state.clone(), tcp, peer, permit));
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        let wait = backoff.failed(&e);
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
        if let Some(w) = watcher {
            w.abort();
        }
        if let Some(r) = rotator {
            r.abort();
        }
        info!("router stopping: no new connections; draining open streams for up to {drain:?}");
        drop(self.listener);
        let dp = self.state.dp.clone();
        let _ = tokio::task::spawn_blocking(move || dp.stop(drain)).await;
        let _ = api_stop.send(());
        if let Some(t) = api_task {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
        Ok(())
    }
}

/// How often a router whose handshake slots keep running out says so again.
const FULL_REPEAT: Duration = Duration::from_secs(60);

async fn handle(
    state: Arc<State>,
    tcp: TcpStream,
    peer: SocketAddr,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let started = Instant::now();
    // The first bytes, kept to say what a peer that is not a Conduit client was.
    let mut first = [0u8; 8];
    let mut seen = 0;
    let setup = tokio::time::timeout(state.handshake_timeout, async {
        let mut wire = match state.transport {
            Transport::Tls => {
                seen = tcp.peek(&mut first).await?;
                Wire::handshake(
                    tcp,
                    TlsSession::server(state.identity.presented().tls.clone())?,
                )
                .await?
            }
            Transport::Plain => {
                seen = tcp.peek(&mut first).await?;
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
    })
    .await;
    drop(permit);
    let (mut wire, hello) = match setup {
        Err(_) => {
            state.counters.fail(SetupError::Timeout);
            info!(%peer, "connection dropped: no TLS handshake and Hello within {:?}", state.handshake_timeout);
            return;
        }
        Ok(Err(WireError::Tls(e))) => {
            match (e.unknown_client_key(), not_tls(&first[..seen])) {
                (Some(u), _) => {
                    state.counters.fail(SetupError::Unauthorized);
                    match state.authorized.expiry(&u.got) {
                        Some(_) => {
                            warn!(%peer, "refused: {}", not_admitted(&state.authorized, &u.got))
                        }
                        None => {
                            warn!(%peer, "refused unknown client key {}: add it to authorized_clients to admit it", u.got)
                        }
                    }
                }
                (None, Some(what)) => {
                    state.counters.fail(SetupError::Tls);
                    info!(%peer, "connection refused: {what}")
                }
                // Closed before a byte: a port check (a load balancer's, a
                // Kubernetes probe's), not a failed client.
                (None, None) if seen == 0 => {
                    debug!(%peer, "connection closed before it sent anything (a port check?)")
                }
                (None, None) if e.no_cipher_suite_in_common() => {
                    state.counters.fail(SetupError::Tls);
                    warn!(%peer, "TLS handshake refused: the client offers none of the cipher suites this router accepts ({}); the tunnel must offer one of them (its --cipher-suites, or [security] cipher_suites), or the router accept more (--cipher-suites)", state.suites);
                }
                (None, None) => {
                    state.counters.fail(SetupError::Tls);
                    info!(%peer, "TLS handshake failed: {e}")
                }
            }
            return;
        }
        Ok(Err(e)) => {
            state.counters.fail(SetupError::Protocol);
            match (state.transport, is_tls_record(&first[..seen])) {
                (Transport::Plain, true) => {
                    info!(%peer, "connection refused: a TLS client connected to this plain-transport router: start the tunnel with --transport plain or run the router without it ({e})")
                }
                _ => info!(%peer, "connection dropped during setup: {e}"),
            }
            return;
        }
        Ok(Ok(x)) => x,
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
            state.counters.fail(SetupError::Unauthorized);
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
                        warn!(%peer, "no data-plane worker is running; channel dropped");
                    }
                }
                Err(e) => warn!(%peer, client = %who, "data channel refused: {e}"),
            }
        }
    }
}

/// Whether `first` starts as a TLS handshake record does (`0x16 0x03`): a TLS
/// client's ClientHello.
fn is_tls_record(first: &[u8]) -> bool {
    first.starts_with(&[0x16, 0x03])
}

/// Whether `first` starts as a plain-transport client's first frame does: a `Hello`
/// frame, whose length (4 bytes, big-endian) is far below 16 MiB.
fn is_plain_hello(first: &[u8]) -> bool {
    first.len() >= conduit_proto::frame::HEADER_LEN
        && first[0] == 0
        && first[4] == conduit_proto::frame::FrameType::Hello as u8
}

/// What a peer whose first bytes are not a TLS handshake record was, for the log;
/// `None` when they are one (TLS itself then says what was wrong).
fn not_tls(first: &[u8]) -> Option<String> {
    const TLS_HANDSHAKE: u8 = 0x16;
    const HTTP: [&[u8]; 9] = [
        b"GET ", b"POST", b"HEAD", b"PUT ", b"DELE", b"OPTI", b"PATC", b"CONN", b"PRI ",
    ];
    match first.first() {
        None | Some(&TLS_HANDSHAKE) => None,
        Some(_) if is_plain_hello(first) => Some(
            "a client of the plain transport connected to this TLS router: start the tunnel \
             without --transport plain, or run the router with --transport plain"
                .into(),
        ),
        Some(_) if HTTP.iter().any(|m| first.starts_with(m)) => Some(
            "a plain-text HTTP request, not TLS: this port is a Conduit router, only Conduit \
             clients can use it; point HTTP clients at a tunnel's --bind address"
                .into(),
        ),
        Some(_) => Some(format!(
            "not a TLS connection (first bytes {}): this port is a Conduit router, only Conduit \
             clients can use it",
            first.iter().map(|b| format!("{b:02x}")).collect::<String>()
        )),
    }
}

/// Decides whether a client that finished its handshake may use the router.
fn admit(state: &State, key: Option<&PublicKey>, hello: &Hello) -> Result<u16, Refusal> {
    // Checked again here (not only in the TLS verifier) because a resumed TLS session
    // skips certificate verification, and the authorized set may have changed. The
    // plain transport has no key to check: the operator chose to trust the network.
    if let Some(key) = key
        && state.authorized.lookup(key).is_none()
    {
        return Err(Refusal::new(
            RefusalCode::Unauthorized,
            not_admitted(&state.authorized, key),
        ));
    }
    // The name goes into logs, metrics labels and the API: a name that could forge
    // a log line, or a label value nobody chose, is refused.
    crate::config::tunnel_name(&hello.tunnel).map_err(|e| {
        Refusal::new(
            RefusalCode::Protocol,
            format!("the tunnel's name {e}: rename it (conduit start --name, or name in the file)"),
        )
    })?;
    let version = VersionRange::ours()
        .negotiate(hello.versions)
        .map_err(|m| Refusal::new(RefusalCode::UnsupportedVersion, m))?;
    if let Some(required) = &state.token {
        let ok = hello.token.as_ref().is_some_and(|t| t.matches(required));
        if !ok {
            return Err(Refusal::new(
                RefusalCode::Unauthorized,
                if hello.token.is_some() {
                    "the token is wrong: use the token the router's operator configured (--token or CONDUIT_TOKEN)"
                } else {
                    "this router requires a token: pass --token (or set CONDUIT_TOKEN)"
                },
            ));
        }
    }
    Ok(version)
}

/// The longest a tunnel's `Hello` waits for its source's name to be looked up.
const SOURCE_LOOKUP: Duration = Duration::from_secs(2);

/// Whether the policy lets `key`'s tunnel open `source` (every member of it): a
/// tunnel whose streams would all be refused is refused at its link, so that it fails
/// at `start` rather than at its first user. A name is looked up off the runtime and
/// for at most [`SOURCE_LOOKUP`]; one that does not resolve (yet) is let through, and
/// each stream is checked as it opens all the same.
async fn source_allowed(
    state: &State,
    key: Option<PublicKey>,
    source: &str,
) -> Result<(), Refusal> {
    let allow = state.policy.clone();
    // Rules may name the client as its line in authorized_clients does.
    let name = key
        .and_then(|k| state.authorized.lookup(&k))
        .filter(|n| !n.is_empty());
    let target = source.to_owned();
    let check = tokio::task::spawn_blocking(move || {
        let caller = key.as_ref().map(|key| Caller {
            key,
            name: name.as_deref(),
        });
        conduit_dataplane::source_members(&target)
            .try_for_each(|member| allow.resolve_for(caller, member).map(drop))
    });
    match tokio::time::timeout(SOURCE_LOOKUP, check).await {
        Ok(Ok(Err(refusal))) if refusal.code == RefusalCode::PolicyDenied => Err(refusal),
        Ok(Ok(Err(other))) => {
            debug!(
                "source {source:?} not checked at the link: {}",
                other.message
            );
            Ok(())
        }
        _ => Ok(()),
    }
}

async fn control_session(
    state: &State,
    mut wire: Wire,
    key: Option<PublicKey>,
    who: String,
    tunnel: String,
    version: u16,
) {
    let peer = wire.peer_addr();
    // The router's keys, for the tunnel to trust from now on, and again whenever
    // they change (the plain transport authenticates nobody: nothing to name there).
    let names_keys =
        version >= conduit_proto::version::ROUTER_KEYS && state.transport == Transport::Tls;
    let mut presented = state.identity.subscribe();
    let keys = presented.borrow_and_update().keys.clone();
    if names_keys && let Err(e) = wire.send(&Message::RouterKeys { keys }).await {
        debug!(%peer, "client left before RouterKeys: {e}");
        return;
    }
    let comment = key
        .and_then(|k| state.authorized.lookup(&k))
        .unwrap_or_default();
    info!(%peer, client = %who, name = %comment, %tunnel, cipher = %wire.cipher(), "client connected");
    // The plain transport has no keys: its clients share the all-zero one.
    let link_key = key.unwrap_or(conduit_dataplane::usage::NO_KEY);
    let session = state
        .monitor
        .link_up(link_key, &comment, &tunnel, Some(peer));
    let live = (key, tunnel.clone());
    *lock(&state.sessions).entry(live.clone()).or_default() += 1;
    let silence = state.client_timeout;
    let mut silent = false;
    let mut revocations = state.revoked.subscribe();
    let (clean, reason) = loop {
        let got = tokio::select! {
            got = tokio::time::timeout(silence, wire.recv()) => got,
            _ = revocations.changed() => {
                if let Some(k) = key.filter(|k| state.authorized.lookup(k).is_none()) {
                    // Expired (its line is still there) or removed.
                    let why = match state.authorized.expiry(&k) {
                        Some(_) => not_admitted(&state.authorized, &k),
                        None => REVOKED.to_owned(),
                    };
                    let bye = Refusal::new(RefusalCode::Unauthorized, why.clone());
                    let _ = wire.send(&Message::Goodbye(bye)).await;
                    break (false, why);
                }
                continue;
            }
            Ok(()) = presented.changed(), if names_keys => {
                let keys = presented.borrow_and_update().keys.clone();
                if let Err(e) = wire.send(&Message::RouterKeys { keys }).await {
                    break (false, e.to_string());
                }
                continue;
            }
        };
        match got {
            Err(_) => {
                silent = true;
                break (false, format!("no heartbeat for {silence:?}"));
            }
            Ok(Ok(Some(Message::Ping { nonce }))) => {
                state.monitor.beat(session);
                if let Err(e) = wire.send(&Message::Pong { nonce }).await {
                    break (false, e.to_string());
                }
            }
            Ok(Ok(Some(Message::Goodbye(r)))) => {
                break (true, format!("client said goodbye: {}", r.message));
            }
            Ok(Ok(Some(Message::RotateKey { next }))) => {
                let reply = match rotate(state, key, next, &comment).await {
                    Ok(expires) => {
                        let at = humantime::format_rfc3339_seconds(expires);
                        info!(%peer, client = %who, %tunnel, next = %next, "client key rotated: the new key is authorized, the old one until {at}");
                        Message::KeyRotated {
                            expires: expires
                                .duration_since(UNIX_EPOCH)
                                .map_or(0, |d| d.as_secs()),
                        }
                    }
                    Err(why) => {
                        warn!(%peer, client = %who, %tunnel, "key rotation refused: {why}");
                        Message::Refused(Refusal::new(RefusalCode::Unauthorized, why))
                    }
                };
                if let Err(e) = wire.send(&reply).await {
                    break (false, e.to_string());
                }
            }
            Ok(Ok(Some(other))) => {
                break (
                    false,
                    format!(
                        "protocol error: unexpected {} on the control channel",
                        other.name()
                    ),
                );
            }
            Ok(Ok(None)) => break (false, "connection closed without a goodbye".into()),
            Ok(Err(e)) => break (false, e.to_string()),
        }
    };
    state.monitor.link_down(session, clean, &reason);
    info!(%peer, client = %who, %tunnel, "client disconnected: {reason}");
    let others = {
        let mut sessions = lock(&state.sessions);
        let left = sessions.get_mut(&live).map_or(0, |n| {
            *n -= 1;
            *n
        });
        if left == 0 {
            sessions.remove(&live);
        }
        left
    };
    // A client that stopped answering (frozen, or behind a link that drops
    // everything) sends no reset either: its streams would hold their sources open
    // forever. Close them, unless the same tunnel is connected again meanwhile.
    if silent && others == 0 {
        state.dp.client_lost(
            key,
            &tunnel,
            &format!("the client stopped answering (no heartbeat for {silence:?})"),
        );
    }
}

/// Authorizes `next` in place of `key` in the authorized-clients file: `next` gets a
/// line of its own with the old one's name, and the old line gains
/// `expires=NOW+grace`. The file is replaced atomically and installed at once (the
/// client reconnects with `next` right after); returns when the old key expires.
async fn rotate(
    state: &State,
    key: Option<PublicKey>,
    next: PublicKey,
    name: &str,
) -> Result<SystemTime, String> {
    let Some(key) = key else {
        return Err("the plain transport has no keys to rotate".into());
    };
    let Some(path) = &state.authorized_path else {
        return Err("this router's client keys do not come from a file".into());
    };
    if state.policy.names_client(&key) {
        return Err(format!(
            "the router's allow-list has rules for key {key} alone; rotate it by hand: add the \
             new key to authorized_clients and to those rules, then restart the tunnel with it \
             (or write the rules for the client's name, NAME=HOST:PORT, which rotation keeps)"
        ));
    }
    let _one_at_a_time = state.rotating.lock().await;
    let now = SystemTime::now();
    let expires = now + state.key_grace;
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if let Ok(file) = keys::parse_authorized_file(&text)
        && file.names.contains_key(&next)
        && let Some(&old_expires) = file.expires.get(&key)
    {
        // This very rotation was made already: by another router sharing the file
        // (a tunnel with several routers asks each), or before an answer was lost.
        // The file says so; it is installed as it is.
        state
            .authorized
            .replace_with_expiry(file.names, file.expires);
        return Ok(old_expires);
    }
    let rotated = keys::rotate_authorized(&text, &key, &next, name, now, expires)?;
    let new = keys::parse_authorized_file(&rotated)
        .map_err(|(line, e)| format!("the rotated file does not parse at line {line}: {e}"))?;
    keys::replace_file(path, rotated.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    state.authorized.replace_with_expiry(new.names, new.expires);
    Ok(expires)
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
}
