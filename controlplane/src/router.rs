//! The router: accept client connections, run TLS handshakes and the `Hello`
//! exchange, keep control channels, and hand data channels to the workers.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use conduit_dataplane::{DataPlane, EngineKind, Options, RouterSpec};
use conduit_proto::tls::{AuthorizedClients, ServerConfig, server_config};
use conduit_proto::version::VersionRange;
use conduit_proto::{
    ChannelKind, Hello, KeyPair, Message, PublicKey, Refusal, RefusalCode, Secret, TlsSession,
};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use crate::policy::AllowList;
use crate::wire::{Wire, WireError};
use crate::{Error, HEARTBEAT_INTERVAL, Transport};

/// Everything a router needs to run.
pub struct RouterSettings {
    /// Where clients connect.
    pub bind: SocketAddr,
    /// The router's own key.
    pub identity: KeyPair,
    /// The client keys it admits.
    pub authorized: Arc<AuthorizedClients>,
    /// Which sources clients may open.
    pub policy: AllowList,
    /// A token clients must present, if set.
    pub token: Option<Secret>,
    /// TLS (the default) or, when the operator opts in, plain.
    pub transport: Transport,
    /// Limit on TLS handshake plus `Hello`.
    pub handshake_timeout: Duration,
    /// Limit on connecting a source.
    pub connect_timeout: Duration,
    /// How long an unused data channel stays open.
    pub idle_timeout: Duration,
    /// Workers and engine.
    pub dataplane: Options,
}

struct State {
    transport: Transport,
    tls: Arc<ServerConfig>,
    authorized: Arc<AuthorizedClients>,
    token: Option<Secret>,
    handshake_timeout: Duration,
    dp: Arc<DataPlane>,
}

/// A bound router, ready to run.
pub struct Router {
    listener: TcpListener,
    state: Arc<State>,
    local_addr: SocketAddr,
}

impl Router {
    /// Binds the listener and starts the workers.
    pub async fn bind(s: RouterSettings) -> Result<Self, Error> {
        let tls = server_config(&s.identity, s.authorized.clone())
            .map_err(|e| Error::Config(format!("cannot use the router key: {e}")))?;
        let listener = TcpListener::bind(s.bind).await.map_err(|e| {
            let hint = match e.kind() {
                std::io::ErrorKind::AddrInUse => {
                    "; something already listens there: pick another --bind"
                }
                std::io::ErrorKind::PermissionDenied => "; ports below 1024 need privileges",
                _ => "",
            };
            Error::Config(format!("cannot listen on {}: {e}{hint}", s.bind))
        })?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| Error::network("cannot read the listening address", e))?;
        let dp = DataPlane::start_router(
            &s.dataplane,
            RouterSpec {
                policy: Arc::new(s.policy),
                connect_timeout: s.connect_timeout,
                idle_timeout: s.idle_timeout,
            },
        )?;
        Ok(Self {
            listener,
            local_addr,
            state: Arc::new(State {
                transport: s.transport,
                tls,
                authorized: s.authorized,
                token: s.token,
                handshake_timeout: s.handshake_timeout,
                dp: Arc::new(dp),
            }),
        })
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
        tokio::pin!(shutdown);
        let mut accept_errors = 0u32;
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        accept_errors = 0;
                        tokio::spawn(handle(self.state.clone(), tcp, peer));
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        accept_errors = accept_errors.saturating_add(1);
                        let wait = Duration::from_millis(10u64 << accept_errors.min(7));
                        warn!("accept failed: {e}; retrying in {wait:?}");
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
        info!("router stopping: no new connections; draining open streams for up to {drain:?}");
        drop(self.listener);
        let dp = self.state.dp.clone();
        let _ = tokio::task::spawn_blocking(move || dp.stop(drain)).await;
        Ok(())
    }
}

async fn handle(state: Arc<State>, tcp: TcpStream, peer: SocketAddr) {
    let setup = tokio::time::timeout(state.handshake_timeout, async {
        let mut wire = match state.transport {
            Transport::Tls => Wire::handshake(tcp, TlsSession::server(state.tls.clone())?).await?,
            Transport::Plain => Wire::plain(tcp)?,
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
    let (mut wire, hello) = match setup {
        Err(_) => {
            info!(%peer, "connection dropped: no TLS handshake and Hello within {:?}", state.handshake_timeout);
            return;
        }
        Ok(Err(WireError::Tls(e))) => {
            match e.unknown_client_key() {
                Some(u) => {
                    warn!(%peer, "refused unknown client key {}: add it to authorized_clients to admit it", u.got)
                }
                None => info!(%peer, "TLS handshake failed: {e}"),
            }
            return;
        }
        Ok(Err(e)) => {
            info!(%peer, "connection dropped during setup: {e}");
            return;
        }
        Ok(Ok(x)) => x,
    };
    let key = wire.peer_key();
    if state.transport == Transport::Tls && key.is_none() {
        return;
    }
    let who = key.map_or_else(|| "(plain transport)".to_owned(), |k| k.to_string());
    let version = match admit(&state, key.as_ref(), &hello) {
        Ok(v) => v,
        Err(refusal) => {
            warn!(%peer, client = %who, tunnel = %hello.tunnel, "refused: {}", refusal.message);
            let _ = wire.send(&Message::Refused(refusal)).await;
            return;
        }
    };
    if let Err(e) = wire.send(&Message::Welcome { version }).await {
        debug!(%peer, "client left before Welcome: {e}");
        return;
    }
    match hello.channel {
        ChannelKind::Control => control_session(&state, wire, key, who, hello.tunnel).await,
        ChannelKind::Data => match wire.into_handoff(0) {
            Ok(h) => {
                if !state.dp.send_router_channel(h) {
                    warn!(%peer, "no data-plane worker is running; channel dropped");
                }
            }
            Err(e) => warn!(%peer, client = %who, "data channel refused: {e}"),
        },
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
            format!(
                "client key {key} is not authorized; add it to the router's authorized_clients file"
            ),
        ));
    }
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

async fn control_session(
    state: &State,
    mut wire: Wire,
    key: Option<PublicKey>,
    who: String,
    tunnel: String,
) {
    let peer = wire.peer_addr();
    let comment = key
        .and_then(|k| state.authorized.lookup(&k))
        .unwrap_or_default();
    let key = who;
    info!(%peer, client = %key, name = %comment, %tunnel, "client connected");
    let silence = HEARTBEAT_INTERVAL * 4;
    let reason = loop {
        match tokio::time::timeout(silence, wire.recv()).await {
            Err(_) => break format!("no heartbeat for {silence:?}"),
            Ok(Ok(Some(Message::Ping { nonce }))) => {
                if let Err(e) = wire.send(&Message::Pong { nonce }).await {
                    break e.to_string();
                }
            }
            Ok(Ok(Some(Message::Goodbye(r)))) => {
                break format!("client said goodbye: {}", r.message);
            }
            Ok(Ok(Some(other))) => {
                break format!(
                    "protocol error: unexpected {} on the control channel",
                    other.name()
                );
            }
            Ok(Ok(None)) => break "connection closed".into(),
            Ok(Err(e)) => break e.to_string(),
        }
    };
    info!(%peer, client = %key, %tunnel, "client disconnected: {reason}");
}
