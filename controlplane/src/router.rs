//! The router: accept client connections, run TLS handshakes and the `Hello`
//! exchange, keep control channels, and hand data channels to the workers.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conduit_dataplane::{ConnLimit, DataPlane, EngineKind, Options, RouterSpec};
use conduit_proto::tls::{AuthorizedClients, ServerConfig, server_config};
use conduit_proto::version::VersionRange;
use conduit_proto::{
    ChannelKind, Hello, KeyPair, Message, PublicKey, Refusal, RefusalCode, Secret, TlsSession,
};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use crate::policy::AllowList;
use crate::wire::{Wire, WireError};
use crate::{Error, HEARTBEAT_INTERVAL};

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
    /// Limit on TLS handshake plus `Hello`.
    pub handshake_timeout: Duration,
    /// Limit on connecting a source.
    pub connect_timeout: Duration,
    /// How long an unused data channel stays open.
    pub idle_timeout: Duration,
    /// Open streams at most, over all clients; 0 means no limit.
    pub max_connections: usize,
    /// Workers and engine.
    pub dataplane: Options,
}

struct State {
    tls: Arc<ServerConfig>,
    authorized: Arc<AuthorizedClients>,
    token: Option<Secret>,
    handshake_timeout: Duration,
    dp: Arc<DataPlane>,
    /// Live control sessions per (client key, tunnel name). Sessions are tasks on a
    /// multi-threaded runtime that come and go independently; a lock held for one
    /// map update is simpler than a task owning the map and answering messages.
    sessions: Mutex<HashMap<(PublicKey, String), usize>>,
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
                limit: ConnLimit::new(s.max_connections),
            },
        )?;
        Ok(Self {
            listener,
            local_addr,
            state: Arc::new(State {
                tls,
                authorized: s.authorized,
                token: s.token,
                handshake_timeout: s.handshake_timeout,
                dp: Arc::new(dp),
                sessions: Mutex::new(HashMap::new()),
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
    // The first bytes, kept to say what a peer that is not a Conduit client was.
    let mut first = [0u8; 8];
    let mut seen = 0;
    let setup = tokio::time::timeout(state.handshake_timeout, async {
        seen = tcp.peek(&mut first).await?;
        let session = TlsSession::server(state.tls.clone())?;
        let mut wire = Wire::handshake(tcp, session).await?;
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
            match (e.unknown_client_key(), not_tls(&first[..seen])) {
                (Some(u), _) => {
                    warn!(%peer, "refused unknown client key {}: add it to authorized_clients to admit it", u.got)
                }
                (None, Some(what)) => info!(%peer, "connection refused: {what}"),
                (None, None) => info!(%peer, "TLS handshake failed: {e}"),
            }
            return;
        }
        Ok(Err(e)) => {
            info!(%peer, "connection dropped during setup: {e}");
            return;
        }
        Ok(Ok(x)) => x,
    };
    let Some(key) = wire.peer_key() else {
        return;
    };
    let version = match admit(&state, &key, &hello) {
        Ok(v) => v,
        Err(refusal) => {
            warn!(%peer, client = %key, tunnel = %hello.tunnel, "refused: {}", refusal.message);
            let _ = wire.send(&Message::Refused(refusal)).await;
            return;
        }
    };
    if let Err(e) = wire.send(&Message::Welcome { version }).await {
        debug!(%peer, "client left before Welcome: {e}");
        return;
    }
    match hello.channel {
        ChannelKind::Control => control_session(&state, wire, key, hello.tunnel).await,
        ChannelKind::Data => match wire.into_handoff(0, hello.tunnel) {
            Ok(h) => {
                if !state.dp.send_router_channel(h) {
                    warn!(%peer, "no data-plane worker is running; channel dropped");
                }
            }
            Err(e) => warn!(%peer, client = %key, "data channel refused: {e}"),
        },
    }
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
fn admit(state: &State, key: &PublicKey, hello: &Hello) -> Result<u16, Refusal> {
    // Checked again here (not only in the TLS verifier) because a resumed TLS session
    // skips certificate verification, and the authorized set may have changed.
    if state.authorized.lookup(key).is_none() {
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

async fn control_session(state: &State, mut wire: Wire, key: PublicKey, tunnel: String) {
    let peer = wire.peer_addr();
    let comment = state.authorized.lookup(&key).unwrap_or_default();
    info!(%peer, client = %key, name = %comment, %tunnel, "client connected");
    let session = (key, tunnel.clone());
    *lock(&state.sessions).entry(session.clone()).or_default() += 1;
    let silence = HEARTBEAT_INTERVAL * 4;
    let mut silent = false;
    let reason = loop {
        match tokio::time::timeout(silence, wire.recv()).await {
            Err(_) => {
                silent = true;
                break format!("no heartbeat for {silence:?}");
            }
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
    let others = {
        let mut sessions = lock(&state.sessions);
        let left = sessions.get_mut(&session).map_or(0, |n| {
            *n -= 1;
            *n
        });
        if left == 0 {
            sessions.remove(&session);
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
            not_tls(&[0xde, 0xad, 0xbe, 0xef]).unwrap(),
            "not a TLS connection (first bytes deadbeef): this port is a Conduit router, \
             only Conduit clients can use it"
        );
    }
}
