//! The client tunnel: keep a control channel to the router (heartbeats, reconnect
//! with back-off), and make the handshaken data channels the workers ask for.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use conduit_dataplane::{
    ClientSpec, ConnLimit, DataPlane, EngineKind, FromWorker, LinkState, Options,
};
use conduit_proto::tls::{ClientConfig, client_config};
use conduit_proto::version::{self, VersionRange};
use conduit_proto::{
    ChannelKind, Hello, KeyPair, Message, PublicKey, Refusal, RefusalCode, Secret, TlsSession,
};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::error::from_tls;
use crate::metrics::{Counters, SetupError};
use crate::wire::{self, Wire, WireError};
use crate::{Error, Transport};

/// Everything a client tunnel needs.
pub struct TunnelSettings {
    /// The tunnel's name.
    pub name: String,
    /// The router, `host:port`.
    pub router: String,
    /// The router's pinned key.
    pub router_key: PublicKey,
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
    /// A UDP tunnel: the router must speak protocol [`version::DATAGRAMS`].
    datagrams: bool,
    name: String,
    /// The routers to try, in order (`--router A,B`): the link uses one at a time
    /// and moves to the next when it cannot reach that one.
    routers: Vec<String>,
    /// The index (modulo `routers.len()`) of the one in use.
    at: std::sync::atomic::AtomicUsize,
    our_key: PublicKey,
    tls: Arc<ClientConfig>,
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
}

impl ClientTunnel {
    /// Binds the tunnel's listeners and starts its workers; nothing is sent to the
    /// router until [`Self::run`].
    pub fn start(s: TunnelSettings) -> Result<Self, Error> {
        let tls = client_config(&s.identity, s.router_key)
            .map_err(|e| Error::Config(format!("cannot use the client key: {e}")))?;
        let link = Arc::new(LinkState::default());
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
        let (status, _) = watch::channel(LinkStatus::Connecting);
        Ok(Self {
            requests,
            local_addr,
            shared: Arc::new(Shared {
                transport: s.transport,
                datagrams: s.udp.is_some(),
                name: s.name,
                routers: conduit_dataplane::source_members(&s.router)
                    .map(str::to_owned)
                    .collect(),
                at: std::sync::atomic::AtomicUsize::new(0),
                our_key: s.identity.public(),
                tls,
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

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.shared.dp.worker_count()
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
        let mut control = tokio::spawn(control_loop(self.shared.clone(), stop_rx));
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
        self.shared.link.lost();
        if result.is_ok() {
            info!(tunnel = %self.shared.name, "stopping: no new connections; draining open ones for up to {drain:?}");
        }
        let dp = self.shared.dp.clone();
        let _ = tokio::task::spawn_blocking(move || dp.stop(drain)).await;
        result
    }
}

impl Shared {
    /// The router in use.
    fn router(&self) -> &str {
        let at = self.at.load(std::sync::atomic::Ordering::Relaxed);
        &self.routers[at % self.routers.len()]
    }

    /// Moves on to the next router; returns it.
    fn next_router(&self) -> &str {
        self.at.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.router()
    }
}

/// Opens a channel of `kind` and completes `Hello`/`Welcome`.
async fn open(shared: &Shared, kind: ChannelKind) -> Result<Wire, Error> {
    let res = open_inner(shared, kind).await;
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

async fn open_inner(shared: &Shared, kind: ChannelKind) -> Result<Wire, Error> {
    let router = shared.router();
    let tcp = wire::connect(router, shared.connect_timeout)
        .await
        .map_err(|e| Error::network(format!("cannot reach router {router}"), e))?;
    let started = std::time::Instant::now();
    let setup = async {
        let mut w = match shared.transport {
            Transport::Tls => Wire::handshake(tcp, TlsSession::client(shared.tls.clone())?).await?,
            Transport::Plain => Wire::plain(tcp)?,
        };
        w.send(&Message::Hello(Hello {
            versions: VersionRange::ours(),
            channel: kind,
            tunnel: shared.name.clone(),
            token: shared.token.clone(),
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
            Ok(w)
        }
        Some(Message::Refused(r)) => Err(match r.code {
            RefusalCode::Unauthorized | RefusalCode::UnsupportedVersion => {
                Error::Authentication(format!("the router refused this client: {}", r.message))
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
        WireError::Tls(t) => from_tls(t, &shared.our_key),
        WireError::Io(io) => Error::network(format!("connection to router {router} failed"), io),
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
async fn control_loop(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) -> Option<Error> {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
    let mut attempt = 0u32;
    // Routers tried since the last back-off: each is tried once before waiting.
    let mut tried = 0usize;
    loop {
        match open(&shared, ChannelKind::Control).await {
            Ok(mut ctl) => {
                attempt = 0;
                tried = 0;
                backoff.reset();
                let epoch = shared.link.connected();
                shared.dp.flush_pools();
                let router = shared.router().to_owned();
                shared.status.send_replace(LinkStatus::Connected {
                    since: SystemTime::now(),
                    router: router.clone(),
                });
                info!(tunnel = %shared.name, %router, "connected to router");
                let end = heartbeat(&mut ctl, &mut stop, shared.heartbeat).await;
                let why = &end.why;
                shared.link.lost();
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
            Err(e) if !e.is_retryable() => {
                shared.link.lost();
                shared.status.send_replace(LinkStatus::Refused {
                    reason: e.to_string(),
                });
                return Some(e);
            }
            Err(e) if shared.routers.len() > 1 && tried + 1 < shared.routers.len() => {
                // Another router may answer: try it now, and wait only once every
                // one has failed.
                attempt += 1;
                tried += 1;
                let next = shared.next_router();
                warn!(tunnel = %shared.name, "{e}; trying router {next}");
            }
            Err(e) => {
                attempt += 1;
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
                warn!(tunnel = %shared.name, "{e}; retrying in {:.1}s", wait.as_secs_f64());
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
}

impl From<String> for LinkEnd {
    fn from(why: String) -> Self {
        Self { why, silent: false }
    }
}

/// Pings the router until the link fails or `stop` is set (then says goodbye);
/// returns why it ended.
async fn heartbeat(
    ctl: &mut Wire,
    stop: &mut watch::Receiver<bool>,
    interval: Duration,
) -> LinkEnd {
    let mut nonce = 0u64;
    loop {
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
                r = tokio::time::timeout_at(deadline, ctl.recv()) => r,
                _ = stop.wait_for(|s| *s) => break,
            };
            match next {
                Err(_) => {
                    return LinkEnd {
                        why: format!("no heartbeat answer for {:?}", interval * 3),
                        silent: true,
                    };
                }
                Ok(Ok(Some(Message::Pong { nonce: n }))) if n == nonce => break,
                Ok(Ok(Some(Message::Pong { .. }))) => continue,
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
            let got = tokio::select! {
                r = tokio::time::timeout_at(next, ctl.recv()) => r,
                _ = stop.wait_for(|s| *s) => break,
            };
            match got {
                Err(_) => break,
                Ok(Ok(Some(Message::Pong { .. }))) => continue,
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
        let epoch = shared.link.epoch();
        match open(&shared, ChannelKind::Data).await {
            Ok(w) => match w.into_handoff(epoch, shared.name.clone()) {
                Ok(h) => {
                    if !shared.dp.send_client_channel(core, h) {
                        debug!(core, "worker gone; channel dropped");
                    }
                    return;
                }
                Err(e) => debug!(core, "data channel unusable: {e}"),
            },
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
            Err(e) => debug!(core, "cannot open a data channel: {e}"),
        }
        tokio::time::sleep(backoff.next_wait()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
