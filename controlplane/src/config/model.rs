//! The typed tree: what a client's `conduit.toml` and a router's file hold, with the
//! defaults of everything not set.
//!
//! Values that must be given (`router.host`, a tunnel's `bind`…) are `Option` here so a
//! file missing several of them still loads and `validate` can name them all; the
//! [`TunnelPlan`](super::TunnelPlan)s built from a valid tree have no options left.

use std::path::PathBuf;
use std::time::Duration;

use conduit_proto::Secret;
use serde::{Deserialize, Serialize};

use crate::home::Home;

/// A client's `conduit.toml`: the router to reach, this client's key, tuning, logging,
/// and the tunnels to run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[router]`: the router to connect to.
    #[serde(default)]
    pub router: RouterPeer,
    /// `[security]`: this client's identity.
    #[serde(default)]
    pub security: Security,
    /// `[performance]`.
    #[serde(default)]
    pub performance: PerformanceConfig,
    /// `[logging]`.
    #[serde(default)]
    pub logging: LoggingConfig,
    /// `[[tunnels]]`.
    #[serde(default)]
    pub tunnels: Vec<TunnelConfig>,
}

/// A client's `[router]`: where the router is and which key it must present.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterPeer {
    /// Host name or IP address (required).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Port (default 9999).
    pub port: u16,
    /// The pinned key: `ed25519:…` or the path of the router's `.pub` file (required).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// `tls` (default) or `plain`, which the router must also run.
    pub transport: TransportKind,
    /// More routers, `HOST:PORT` each, tried in turn when the tunnels cannot reach
    /// the one they use; they present `public_key` unless `fallback_keys` is set.
    pub fallbacks: Vec<String>,
    /// The pinned key of each fallback, in the order of `fallbacks` (`ed25519:…` or
    /// the path of a `.pub` file); empty: every fallback presents `public_key`.
    pub fallback_keys: Vec<String>,
    /// While a tunnel uses a fallback, how often it tries the routers before it and
    /// moves back to the first that answers (seconds; 0: stays; default 30).
    pub failback_secs: u64,
    /// Use `host` and every fallback at once, spreading connections over those
    /// that are up, instead of one at a time (default false).
    pub balance: bool,
}

impl Default for RouterPeer {
    fn default() -> Self {
        Self {
            host: None,
            port: 9999,
            public_key: None,
            transport: TransportKind::Tls,
            fallbacks: Vec::new(),
            fallback_keys: Vec::new(),
            failback_secs: 30,
            balance: false,
        }
    }
}

/// How a client and its router talk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// TLS 1.3, mutual, pinned Ed25519 keys.
    #[default]
    Tls,
    /// In clear, for links that are already encrypted (opt-in on both ends).
    Plain,
}

impl From<TransportKind> for crate::Transport {
    fn from(t: TransportKind) -> Self {
        match t {
            TransportKind::Tls => Self::Tls,
            TransportKind::Plain => Self::Plain,
        }
    }
}

/// A client's `[security]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Security {
    /// This client's private key (default `$CONDUIT_HOME/keys/client.key`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_key_path: Option<PathBuf>,
    /// A token for routers that require one.
    #[serde(with = "secret", skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// Rotate the key through the router once its file is this many days old (0:
    /// never; default 30).
    pub key_rotation_days: u64,
    /// The TLS cipher suites to offer, by IANA name, in order of preference (default:
    /// all three, AES-128-GCM first).
    pub cipher_suites: Vec<String>,
}

impl Default for Security {
    fn default() -> Self {
        Self {
            private_key_path: None,
            token: None,
            key_rotation_days: 30,
            cipher_suites: all_suites(),
        }
    }
}

/// One `[[tunnels]]` table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelConfig {
    /// The tunnel's name, unique in the file (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The service, `HOST:PORT` as the router sees it (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Where users connect, `ADDR:PORT` on this machine (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    /// `tcp` (default) or `udp`.
    #[serde(default)]
    pub protocol: Protocol,
}

/// A router's file: where it listens, whom it admits, what they may open, and how it
/// is operated (API, health checks, alerts).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// `[router]`.
    #[serde(default)]
    pub router: RouterServer,
    /// `[api]`: the REST API and `/metrics`.
    #[serde(default)]
    pub api: ApiConfig,
    /// `[health]`: source probes and client-link timeout.
    #[serde(default)]
    pub health: HealthConfig,
    /// `[alerts]`: webhooks.
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// `[performance]`.
    #[serde(default)]
    pub performance: PerformanceConfig,
    /// `[logging]`.
    #[serde(default)]
    pub logging: LoggingConfig,
}

/// A router's `[router]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterServer {
    /// Where clients connect (default `0.0.0.0:9999`).
    pub bind: String,
    /// The router's private key (default `$CONDUIT_HOME/keys/router.key`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_key_path: Option<PathBuf>,
    /// Client keys to admit (default `$CONDUIT_HOME/authorized_clients`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorized_keys: Option<PathBuf>,
    /// Sources clients may open (see [`crate::policy`]); nothing without a rule.
    pub allow: Vec<String>,
    /// A token clients must present, if set.
    #[serde(with = "secret", skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// When a client rotates its key, how long the old one is still admitted, in
    /// seconds (default 86400: a day).
    pub key_grace_secs: u64,
    /// The key this router will present next (`--next-key`): named to tunnels beside
    /// the one in use, so that they accept it when the router switches to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_private_key_path: Option<PathBuf>,
    /// The router rotates its own key once it is this many days old (0: never; by
    /// hand with `next_private_key_path`, or SIGUSR1).
    pub key_rotation_days: u64,
    /// How long a rotation names the next key to tunnels before the router presents
    /// it, in seconds (default 86400: a day).
    pub key_announce_secs: u64,
    /// After a rotation, how long the router still presents its old key to tunnels
    /// that ask for it (those away during the announcement), in seconds (default
    /// 2592000: 30 days; 0: forget it at the switch).
    pub key_retire_secs: u64,
    /// The TLS cipher suites handshakes accept, by IANA name, in the order the router
    /// prefers them (default: all three, AES-128-GCM first).
    pub cipher_suites: Vec<String>,
}

impl Default for RouterServer {
    fn default() -> Self {
        Self {
            bind: "0.0.0.0:9999".into(),
            next_private_key_path: None,
            key_rotation_days: 0,
            key_announce_secs: 86_400,
            key_retire_secs: 30 * 86_400,
            private_key_path: None,
            authorized_keys: None,
            allow: Vec::new(),
            token: None,
            key_grace_secs: 86_400,
            cipher_suites: all_suites(),
        }
    }
}

/// A router's `[api]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Serve the API (`--api`, or implied by `--api-bind`).
    pub enabled: bool,
    /// Where it listens (default `127.0.0.1:9990`, loopback).
    pub bind: String,
    /// The bearer token every request must carry.
    #[serde(with = "secret", skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// Require the token; `false` is accepted only for a loopback `bind`.
    pub auth: bool,
    /// Seconds between samples of the traffic history (`/stats/history`).
    pub history_interval_secs: u64,
    /// Samples of the traffic history kept (1440 of a minute each: a day).
    pub history_samples: u64,
    /// A JSON Lines file the traffic history is kept in across restarts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_file: Option<PathBuf>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            bind: "127.0.0.1:9990".into(),
            token: None,
            auth: true,
            history_interval_secs: 60,
            history_samples: 1440,
            history_file: None,
        }
    }
}

/// A router's `[health]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Seconds between probes of each source in use.
    pub interval_secs: u64,
    /// Seconds one probe (resolve + TCP connect) may take.
    pub timeout_secs: u64,
    /// Failed probes in a row that make a source down.
    pub failures: u64,
    /// Successful probes in a row that make a down source up.
    pub successes: u64,
    /// A source opened within this many seconds is probed.
    pub recent_secs: u64,
    /// Sources probed even when no client uses them.
    pub sources: Vec<String>,
    /// Seconds of silence (no heartbeat) after which a client link is lost.
    pub client_timeout_secs: u64,
    /// Seconds after which a lost (or disconnected) client link is forgotten.
    pub lost_link_expiry_secs: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            interval_secs: 5,
            timeout_secs: 2,
            failures: 2,
            successes: 2,
            recent_secs: 600,
            sources: Vec::new(),
            client_timeout_secs: 20,
            lost_link_expiry_secs: 86_400,
        }
    }
}

/// A router's `[alerts]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    /// A generic JSON webhook URL (it may carry a token: a secret).
    #[serde(with = "secret", skip_serializing_if = "Option::is_none")]
    pub webhook: Option<Secret>,
    /// A Slack incoming-webhook URL (a secret).
    #[serde(with = "secret", skip_serializing_if = "Option::is_none")]
    pub slack: Option<Secret>,
    /// Retries after a failed delivery.
    pub retries: u64,
    /// Seconds one delivery attempt may take.
    pub timeout_secs: u64,
    /// Seconds over which state changes are counted for flapping.
    pub flap_window_secs: u64,
    /// More changes than this within the window is flapping: alerts pause.
    pub flap_changes: u64,
    /// How alerts name this router (default: the host name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            webhook: None,
            slack: None,
            retries: 3,
            timeout_secs: 5,
            flap_window_secs: 600,
            flap_changes: 4,
            name: None,
        }
    }
}

/// `[performance]`, the spec's `PerformanceConfig`; shared by clients and routers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PerformanceConfig {
    /// Data-plane workers; 0 means one per usable core.
    pub workers: usize,
    /// The I/O engine.
    pub io_engine: IoEngine,
    /// Pin each worker thread to its own core (for dedicated gateways).
    pub pin_cores: bool,
    /// Handshaken idle data channels each client worker keeps ready.
    pub pool_size: usize,
    /// Derive the settings left at their defaults from this host (see
    /// [`PerformanceConfig::auto_tuned`]).
    pub auto_tune: bool,
    /// What the relay favours (see [`OptimizeFor`]).
    pub optimize_for: OptimizeFor,
    /// Disable Nagle's algorithm on every socket.
    pub tcp_nodelay: bool,
    /// Relay TCP streams through kernel TLS (kTLS) where the kernels of both ends
    /// offer it: the kernel seals and opens the records and the payload is spliced.
    /// Elsewhere, and for UDP, TLS stays in userspace.
    pub kernel_tls: bool,
    /// TCP keep-alive idle time in seconds; 0 turns keep-alive off.
    pub tcp_keepalive_secs: u64,
    /// The kernel's receive buffer (`SO_RCVBUF`) of every relayed socket, in bytes;
    /// 0 leaves Linux's auto-tuning on. Conduit's own buffers are pooled per core.
    pub read_buffer_size: usize,
    /// The kernel's send buffer (`SO_SNDBUF`) of every relayed socket, in bytes; 0
    /// leaves Linux's auto-tuning on.
    pub write_buffer_size: usize,
    /// Bytes per second per tunnel, split evenly across its workers; 0 means
    /// unlimited. The rate of the token bucket in `conduit_dataplane::ratelimit`.
    pub default_bandwidth_limit: u64,
    /// Bytes a tunnel may send at once after an idle spell (the token bucket's size):
    /// at most `burst + rate · t` bytes leave in any `t` seconds. 0 means one second's
    /// worth, the same number as the limit.
    pub burst_bandwidth_limit: u64,
    /// Open user connections at most; 0 means unlimited.
    pub max_connections: u64,
    /// Limit on reaching the router (client) or a source (router), in seconds.
    pub connect_timeout_secs: u64,
    /// Limit on a TLS handshake plus `Hello`, in seconds.
    pub handshake_timeout_secs: u64,
    /// Router: handshakes in progress at most; further connections wait in the
    /// listen backlog until one finishes or times out.
    pub max_pending_handshakes: usize,
    /// How long an unused data channel stays open, in seconds: a router closes it
    /// then, and a tunnel replaces it after 4/5 of this (before a router with the
    /// same setting closes it).
    pub idle_timeout_secs: u64,
    /// How long open connections may finish after SIGTERM, in seconds.
    pub drain_timeout_secs: u64,
    /// Tunnel: seconds between heartbeats to the router; three without an answer
    /// and the link counts as lost.
    pub heartbeat_interval_secs: u64,
    /// UDP tunnels: seconds a flow (one user address) may pass no datagram either
    /// way before it ends and its channel returns to the pool.
    pub udp_idle_timeout_secs: u64,
    /// UDP tunnels: at most this many new flows (new sender addresses) a second;
    /// 0 for no cap.
    pub udp_max_new_flows: u64,
}

/// The fewest ready channels per worker with `optimize_for = "latency"`: a burst of
/// new connections finds a handshaken channel instead of waiting for a handshake.
pub const LATENCY_POOL: usize = 4;

/// The smallest `read_buffer_size` / `write_buffer_size` other than 0 (auto-tuning).
pub const MIN_SOCKET_BUFFER: usize = 4096;
/// The largest `read_buffer_size` / `write_buffer_size`.
pub const MAX_SOCKET_BUFFER: usize = 16 * 1024 * 1024;

/// Descriptors `auto_tune` leaves to the process itself (listeners, the control
/// endpoint, logs, channels being handshaken) when it sizes `max_connections`.
pub const RESERVED_FDS: u64 = 256;

impl Default for PerformanceConfig {
    fn default() -> Self {
        Self {
            workers: 0,
            io_engine: IoEngine::Auto,
            pin_cores: false,
            pool_size: 2,
            auto_tune: false,
            optimize_for: OptimizeFor::Balanced,
            tcp_nodelay: true,
            kernel_tls: true,
            tcp_keepalive_secs: 60,
            read_buffer_size: 0,
            write_buffer_size: 0,
            default_bandwidth_limit: 0,
            burst_bandwidth_limit: 0,
            max_connections: 0,
            connect_timeout_secs: 10,
            handshake_timeout_secs: 10,
            max_pending_handshakes: 1024,
            idle_timeout_secs: 300,
            drain_timeout_secs: 30,
            heartbeat_interval_secs: crate::HEARTBEAT_INTERVAL.as_secs(),
            udp_idle_timeout_secs: 60,
            udp_max_new_flows: 0,
        }
    }
}

impl PerformanceConfig {
    /// The data plane's options.
    pub fn dataplane_options(&self) -> conduit_dataplane::Options {
        conduit_dataplane::Options {
            workers: self.workers,
            engine: self.io_engine.into(),
            pin: self.pin_cores,
        }
    }

    /// `tcp_nodelay`, `tcp_keepalive_secs`, the buffer sizes and the relay's read
    /// size for `optimize_for`, for the sockets the data plane relays.
    pub fn socket_options(&self) -> conduit_dataplane::SocketOptions {
        conduit_dataplane::SocketOptions {
            nodelay: self.tcp_nodelay,
            keepalive: (self.tcp_keepalive_secs > 0)
                .then(|| Duration::from_secs(self.tcp_keepalive_secs)),
            recv_buffer: (self.read_buffer_size > 0).then_some(self.read_buffer_size),
            send_buffer: (self.write_buffer_size > 0).then_some(self.write_buffer_size),
            read_chunk: match self.optimize_for {
                OptimizeFor::Latency => conduit_dataplane::MIN_READ_CHUNK,
                OptimizeFor::Throughput | OptimizeFor::Balanced => {
                    conduit_dataplane::MAX_READ_CHUNK
                }
            },
            kernel_tls: self.kernel_tls,
        }
    }

    /// Handshaken channels each client worker keeps ready: `pool_size`, at least
    /// [`LATENCY_POOL`] when optimizing for latency.
    pub fn effective_pool_size(&self) -> usize {
        match self.optimize_for {
            OptimizeFor::Latency => self.pool_size.max(LATENCY_POOL),
            OptimizeFor::Throughput | OptimizeFor::Balanced => self.pool_size,
        }
    }

    /// With `auto_tune`, a copy with the settings derived from this host, and one line
    /// for the log per decision; without it, an unchanged copy and no lines. Only
    /// settings left at their defaults are derived: what the operator set stays.
    ///
    /// Today one setting is derived: `max_connections` (when 0) from the process's
    /// hard open-file limit `open_files`, less [`RESERVED_FDS`] for the process
    /// itself, at `fds_per_connection` descriptors each, so the connection after the
    /// last that fits is refused with a logged reason instead of failing on EMFILE.
    pub fn auto_tuned(
        &self,
        open_files: Option<u64>,
        fds_per_connection: u64,
    ) -> (Self, Vec<String>) {
        let mut out = self.clone();
        let mut said = Vec::new();
        if !self.auto_tune {
            return (out, said);
        }
        if self.max_connections == 0 {
            match open_files {
                Some(limit) if limit != u64::MAX => {
                    let n = (limit.saturating_sub(RESERVED_FDS) / fds_per_connection.max(1)).max(1);
                    out.max_connections = n;
                    said.push(format!(
                        "max_connections = {n}: the open-file limit {limit}, less {RESERVED_FDS} \
                         for the process, at {fds_per_connection} per connection"
                    ));
                }
                Some(_) => said.push(
                    "max_connections stays unlimited: the open-file limit is unlimited".into(),
                ),
                None => said.push(
                    "max_connections stays unlimited: the open-file limit is unreadable".into(),
                ),
            }
        }
        (out, said)
    }

    /// `connect_timeout_secs`.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }

    /// `handshake_timeout_secs`.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs)
    }

    /// `idle_timeout_secs`.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    /// `drain_timeout_secs`.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_secs)
    }

    /// `heartbeat_interval_secs`.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_interval_secs)
    }

    /// `udp_idle_timeout_secs`.
    pub fn udp_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.udp_idle_timeout_secs)
    }
}

/// `[logging]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingConfig {
    /// The level.
    pub level: LogLevel,
    /// Text for people, JSON for collectors.
    pub format: LogFormat,
    /// A file to log to instead of stderr.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// When the file is rotated.
    pub rotation: LogRotation,
    /// Rotated files kept (0: all).
    pub keep: usize,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            level: LogLevel::default(),
            format: LogFormat::default(),
            file: None,
            rotation: LogRotation::default(),
            keep: 7,
        }
    }
}

/// `as_str` and `Display` with the words the file uses (the serde names).
macro_rules! words {
    ($name:ident { $($variant:ident = $word:literal),+ $(,)? }) => {
        impl $name {
            /// The word the file uses.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $word,)+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

words!(IoEngine { Auto = "auto", Uring = "uring", Epoll = "epoll" });
words!(OptimizeFor { Throughput = "throughput", Latency = "latency", Balanced = "balanced" });
words!(Protocol { Tcp = "tcp", Udp = "udp" });
words!(LogLevel { Error = "error", Warn = "warn", Info = "info", Debug = "debug", Trace = "trace" });
words!(LogFormat { Text = "text", Json = "json" });
words!(LogRotation { Never = "never", Hourly = "hourly", Daily = "daily" });

/// When a log file is rotated (a new file named `FILE.YYYY-MM-DD[-HH]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogRotation {
    /// One file.
    #[default]
    Never,
    /// A new file every hour.
    Hourly,
    /// A new file every day.
    Daily,
}

/// The I/O engine a data plane runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IoEngine {
    /// io_uring where usable, else epoll/kqueue.
    #[default]
    Auto,
    /// io_uring, or fail.
    Uring,
    /// epoll (Linux) / kqueue (macOS).
    Epoll,
}

impl From<IoEngine> for conduit_dataplane::Engine {
    fn from(e: IoEngine) -> Self {
        match e {
            IoEngine::Auto => Self::Auto,
            IoEngine::Uring => Self::Uring,
            IoEngine::Epoll => Self::Epoll,
        }
    }
}

/// What the relay favours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizeFor {
    /// Bulk transfer: the TLS relay reads four records at once and seals them into
    /// one write. Today the same as `Balanced`, whose settings measured fastest
    /// without costing request/response latency (benches/results/).
    Throughput,
    /// Interactive traffic: the TLS relay reads one record at a time, so the first
    /// bytes of a long reply leave before the rest is read and sealed, and each
    /// client worker keeps at least [`LATENCY_POOL`] channels ready.
    Latency,
    /// The default: four-record reads, `pool_size` ready channels.
    #[default]
    Balanced,
}

/// What a tunnel carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP streams.
    #[default]
    Tcp,
    /// UDP datagrams, one flow per user address.
    Udp,
}

/// A log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// And warnings.
    Warn,
    /// And what happens (default).
    #[default]
    Info,
    /// And details.
    Debug,
    /// Everything.
    Trace,
}

/// A log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For people.
    #[default]
    Text,
    /// For collectors.
    Json,
}

impl Config {
    /// Fills what defaults to a place in `CONDUIT_HOME`.
    pub(crate) fn fill_defaults(&mut self, home: &Home) {
        self.security
            .private_key_path
            .get_or_insert_with(|| home.private_key("client"));
    }
}

impl RouterConfig {
    /// Fills what defaults to a place in `CONDUIT_HOME`.
    pub(crate) fn fill_defaults(&mut self, home: &Home) {
        let r = &mut self.router;
        r.private_key_path
            .get_or_insert_with(|| home.private_key("router"));
        r.authorized_keys
            .get_or_insert_with(|| home.authorized_clients());
    }
}

/// Every cipher suite, in the default order, by name: what `cipher_suites` holds
/// unless set.
fn all_suites() -> Vec<String> {
    conduit_proto::tls::Suite::ALL
        .iter()
        .map(|s| s.name().to_owned())
        .collect()
}

/// Serde for secrets: read as a string, written as `***`, so no rendering of the tree
/// can leak one.
mod secret {
    use conduit_proto::Secret;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &Option<Secret>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(_) => s.serialize_str("***"),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
        Ok(Option::<String>::deserialize(d)?.map(Secret::new))
    }
}

#[cfg(test)]
mod tests {
    use toml::{Table, Value};

    use super::*;
    use crate::config::Role;
    use crate::config::schema::{Kind, Schema};

    fn sample(kind: Kind) -> Value {
        match kind {
            Kind::Str | Kind::Path | Kind::KeyOrPath => Value::String("x".into()),
            Kind::Int { min, .. } => Value::Integer(min),
            Kind::Bool => Value::Boolean(true),
            Kind::Choice(words) => Value::String(words[0].into()),
            Kind::List | Kind::KeyList => Value::Array(vec![Value::String("x".into())]),
            Kind::Suites => Value::Array(vec![Value::String("TLS_AES_256_GCM_SHA384".into())]),
        }
    }

    fn full(role: Role) -> Table {
        let schema = Schema::of(role);
        let mut doc = Table::new();
        for s in schema.sections {
            let t: Table = s
                .keys
                .iter()
                .map(|k| (k.name.to_owned(), sample(k.kind)))
                .collect();
            doc.insert(s.name.into(), Value::Table(t));
        }
        if let Some(keys) = schema.tunnels {
            let t: Table = keys
                .iter()
                .map(|k| (k.name.to_owned(), sample(k.kind)))
                .collect();
            doc.insert("tunnels".into(), Value::Array(vec![Value::Table(t)]));
        }
        doc
    }

    fn round_trip(role: Role, doc: Table) -> Table {
        let v = Value::Table(doc);
        let back = match role {
            Role::Client => Value::try_from(v.try_into::<Config>().unwrap()),
            Role::Router => Value::try_from(v.try_into::<RouterConfig>().unwrap()),
        };
        match back.unwrap() {
            Value::Table(t) => t,
            other => panic!("{other:?}"),
        }
    }

    /// The schema and the typed tree name the same keys: every schema key deserializes
    /// (deny_unknown_fields would refuse one the tree lacks), and a tree with every
    /// field set serializes to exactly the schema's keys (a field the schema lacks
    /// would show up).
    #[test]
    fn schema_and_typed_tree_agree() {
        for role in [Role::Client, Role::Router] {
            let doc = full(role);
            let back = round_trip(role, doc.clone());
            let keys = |t: &Table| -> Vec<String> {
                let mut v = Vec::new();
                for (s, inner) in t {
                    match inner {
                        Value::Table(i) => v.extend(i.keys().map(|k| format!("{s}.{k}"))),
                        Value::Array(a) => {
                            for item in a {
                                v.extend(
                                    item.as_table()
                                        .unwrap()
                                        .keys()
                                        .map(|k| format!("{s}[].{k}")),
                                );
                            }
                        }
                        _ => v.push(s.clone()),
                    }
                }
                v.sort();
                v
            };
            assert_eq!(keys(&back), keys(&doc), "{role:?}");
        }
    }

    /// Every word a `Choice` accepts is a variant of the typed enum.
    #[test]
    fn every_choice_word_deserializes() {
        let schema = Schema::of(Role::Client);
        for s in schema.sections {
            for k in s.keys {
                if let Kind::Choice(words) = k.kind {
                    for w in words {
                        let doc: Table =
                            toml::from_str(&format!("[{}]\n{} = {w:?}", s.name, k.name)).unwrap();
                        let back = round_trip(Role::Client, doc);
                        assert_eq!(back[s.name][k.name].as_str(), Some(*w));
                    }
                }
            }
        }
    }

    #[test]
    fn secrets_serialize_masked() {
        let mut c = Config::default();
        c.security.token = Some(Secret::new("hunter2".into()));
        let text = toml::to_string(&c).unwrap();
        assert!(text.contains("token = \"***\""), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn defaults_fill_from_home() {
        let home = Home::at("/h".into());
        let mut c = Config::default();
        c.fill_defaults(&home);
        assert_eq!(
            c.security.private_key_path,
            Some(PathBuf::from("/h/keys/client.key"))
        );
        let mut r = RouterConfig::default();
        r.fill_defaults(&home);
        assert_eq!(
            r.router.private_key_path,
            Some(PathBuf::from("/h/keys/router.key"))
        );
        assert_eq!(
            r.router.authorized_keys,
            Some(PathBuf::from("/h/authorized_clients"))
        );
        assert_eq!(r.router.bind, "0.0.0.0:9999");
        assert_eq!(PerformanceConfig::default().dataplane_options().workers, 0);
    }
}
