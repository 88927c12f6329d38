//! The typed tree: what a client's `conduit.toml` and a router's file hold, with the
//! defaults of everything not set.
//!
//! Values that must be given (`router.host`, a tunnel's `bind`…) are `Option` here so a
//! file missing several of them still loads and `validate` can name them all; the
//! [`TunnelPlan`](super::TunnelPlan)s built from a valid tree have no options left.

use std::path::PathBuf;

use conduit_proto::Secret;
use serde::{Deserialize, Serialize};

use crate::home::Home;

mod performance;

pub use performance::{
    IoEngine, LATENCY_POOL, MAX_SOCKET_BUFFER, MIN_SOCKET_BUFFER, OptimizeFor, PerformanceConfig,
    RESERVED_FDS, STREAM_IDLE_TIMEOUT_SECS,
};

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
    /// `[alerts]`: where the tunnels report their router link lost, back or refused.
    #[serde(default)]
    pub alerts: AlertsConfig,
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
    /// How often a router on standby (a fallback not in use) is checked with a full
    /// handshake, besides a look at its port about every 10 s, so that one that
    /// would refuse the tunnel shows before the tunnel needs it (seconds; 0: the
    /// port only; default 300).
    pub standby_check_secs: u64,
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
            standby_check_secs: 300,
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
    /// The PROXY protocol header each stream starts with toward the source, so it
    /// sees the user's address (TCP tunnels; none unless set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<ProxyProtocolVersion>,
    /// The addresses and CIDR blocks users may connect from; empty: anyone who can
    /// reach `bind`.
    #[serde(default)]
    pub allow_from: Vec<String>,
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
    /// `tls` (default), or `plain` inside a link that is already encrypted
    /// (`--transport`); its tunnels must use the same.
    pub transport: TransportKind,
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
            transport: TransportKind::Tls,
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
    /// A source opened within this many seconds is probed; one unused longer is
    /// forgotten, up or down.
    pub recent_secs: u64,
    /// Sources probed even when no client uses them.
    pub sources: Vec<String>,
    /// UDP sources probed with a datagram they must answer: `SOURCE=dns` or
    /// `SOURCE=hex:BYTES`.
    pub udp_probes: Vec<String>,
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
            udp_probes: Vec::new(),
            client_timeout_secs: 20,
            lost_link_expiry_secs: 86_400,
        }
    }
}

/// A router's `[alerts]`, or a client's (which alone has `lost_after_secs`).
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
    /// How alerts name this router, or a client's host (default: the host name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A client's: seconds its router link may be down before `router_lost` is sent
    /// (a client's file fills in 10 when it is not set; a router has none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost_after_secs: Option<u64>,
}

/// A client's `alerts.lost_after_secs` unless set.
pub(crate) const LOST_AFTER_SECS: u64 = 10;

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
            lost_after_secs: None,
        }
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
words!(ProxyProtocolVersion { V1 = "v1", V2 = "v2" });
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

/// A tunnel's `proxy_protocol`: which PROXY protocol header its streams start with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocolVersion {
    /// The text header (`PROXY TCP4 …`).
    V1,
    /// The binary header.
    V2,
}

impl From<ProxyProtocolVersion> for conduit_dataplane::ProxyProtocol {
    fn from(v: ProxyProtocolVersion) -> Self {
        match v {
            ProxyProtocolVersion::V1 => Self::V1,
            ProxyProtocolVersion::V2 => Self::V2,
        }
    }
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
        self.alerts.lost_after_secs.get_or_insert(LOST_AFTER_SECS);
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
mod tests;
