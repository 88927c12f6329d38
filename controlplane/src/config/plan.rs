//! What `conduit up -f FILE` runs: one plain [`TunnelPlan`] per `[[tunnels]]` table,
//! built only from a configuration without errors, so nothing is left to check or
//! default.

use std::collections::BTreeMap;
use std::net::{Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use conduit_proto::tls::Suites;
use conduit_proto::{KeyPair, PublicKey, Secret};

use super::model::{
    LogFormat, LoggingConfig, PerformanceConfig, Protocol, ProxyProtocolVersion, RouterPeer,
    TransportKind,
};
use super::validate::{bind_addr, public_key};
use super::{Problem, Report, Sources, load_client};
use crate::alerts::tunnel::TunnelAlerts;
use crate::client::TunnelSettings;

/// One tunnel process's settings.
#[derive(Debug, Clone)]
pub struct TunnelPlan {
    /// The tunnel's name, unique in its file.
    pub name: String,
    /// The router, `host:port` (`[v6]:port` for an IPv6 address).
    pub router: String,
    /// The routers' pinned keys: one for all of them, or one per router in the order
    /// of [`router`](Self::router) (`[router] public_key`, then `fallback_keys`).
    pub router_keys: Vec<Vec<PublicKey>>,
    /// Where `router_keys` came from, as written (paths resolved): the tunnel reads
    /// the `.pub` files among them again (see
    /// [`TunnelSettings::router_key_specs`]).
    pub router_key_specs: Vec<String>,
    /// This client's private key file (loaded by the tunnel process).
    pub private_key_path: PathBuf,
    /// The source, `HOST:PORT` as the router resolves it.
    pub source: String,
    /// Where users connect.
    pub bind: SocketAddr,
    /// What it carries.
    pub protocol: Protocol,
    /// The PROXY protocol header its streams start with (TCP only).
    pub proxy_protocol: Option<ProxyProtocolVersion>,
    /// The addresses users may connect from (empty: any).
    pub allow_from: Vec<ipnet::IpNet>,
    /// TLS or plain (from `[router] transport`).
    pub transport: super::model::TransportKind,
    /// A token for routers that require one.
    pub token: Option<Secret>,
    /// `[security] key_rotation_days` (0: never).
    pub key_rotation_days: u64,
    /// `[security] cipher_suites`.
    pub suites: Suites,
    /// `[router] failback_secs` (0: stay on a fallback).
    pub failback_secs: u64,
    /// `[router] standby_check_secs` (0: a standby's port only).
    pub standby_check_secs: u64,
    /// `[router] balance`: every router at once.
    pub balance: bool,
    /// Workers, engine, pool, timeouts and the rest.
    pub performance: PerformanceConfig,
    /// `[alerts]`: where the tunnel reports its router link.
    pub alerts: TunnelAlerts,
    /// `[logging]` of the file, with `up`'s own `--log-format` over its format (see
    /// [`Plan::with_log_flags`]): the format the tunnel runs with.
    pub logging: LoggingConfig,
    /// `up`'s own `--log-level` (a level, or a tracing filter such as
    /// `conduit=debug`), over `logging.level`; see [`TunnelPlan::log_level`].
    pub log_level_flag: Option<String>,
}

/// `p` as [`TunnelPlan::digest`] takes it: the settings a tunnel had when digests
/// began, so tunnels started before a later one keep their digests (`up` leaves them
/// running); the later ones enter the digest only when set.
/// The settings of one protocol's tunnels only, which a tunnel of the other
/// protocol leaves out of its digests.
const ONE_PROTOCOLS: [&str; 4] = [
    "performance.udp_idle_timeout_secs",
    "performance.udp_max_new_flows",
    "performance.stream_idle_timeout_secs",
    "performance.kernel_tls",
];

pub(super) fn performance_text(p: &PerformanceConfig) -> String {
    let later = format!(" stream_idle_timeout_secs: {},", p.stream_idle_timeout_secs);
    format!("{p:?}").replacen(&later, "", 1)
}

impl TunnelPlan {
    /// The level (or tracing filter) the tunnel process runs with: `up`'s flag,
    /// else the file's `[logging] level`.
    pub fn log_level(&self) -> &str {
        self.log_level_flag
            .as_deref()
            .unwrap_or(self.logging.level.as_str())
    }

    /// Seconds a stream may move nothing before it is closed
    /// (`stream_idle_timeout_secs`); 0: no timeout, and always for a UDP tunnel,
    /// whose flows have `udp_idle_timeout_secs`.
    pub fn stream_idle_timeout_secs(&self) -> u64 {
        match self.protocol {
            Protocol::Udp => 0,
            Protocol::Tcp => self.performance.stream_idle_timeout_secs,
        }
    }

    /// Seconds a UDP flow may carry no datagram before it ends
    /// (`udp_idle_timeout_secs`); 0 for a TCP tunnel.
    pub fn udp_idle_timeout_secs(&self) -> u64 {
        match self.protocol {
            Protocol::Udp => self.performance.udp_idle_timeout_secs,
            Protocol::Tcp => 0,
        }
    }

    /// A digest of everything that shapes this tunnel, so `up` can tell a running
    /// tunnel whose settings changed (restart it) from one that did not (leave it).
    /// The token enters only through the hash.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        let performance = self.digested_performance();
        let text = format!(
            "{}|{}|{}|{}|{}|{}|{:?}|{:?}|{}|{}|{}",
            self.name,
            self.router,
            // The pins as written, not the keys read from their files: a tunnel
            // takes up a changed `.pub` file by itself, without a restart.
            self.router_key_specs.join(","),
            self.private_key_path.display(),
            self.source,
            self.bind,
            self.protocol,
            self.transport,
            performance_text(&performance),
            self.key_rotation_days,
            self.failback_secs,
        );
        h.update(text.as_bytes());
        // Only when set: tunnels from before the setting keep their digests.
        if self.standby_check_secs != RouterPeer::default().standby_check_secs {
            h.update(format!("|standby_check|{}", self.standby_check_secs).as_bytes());
        }
        if self.balance {
            h.update(b"|balance");
        }
        if performance.stream_idle_timeout_secs != crate::config::STREAM_IDLE_TIMEOUT_SECS {
            let secs = performance.stream_idle_timeout_secs;
            h.update(format!("|stream_idle|{secs}").as_bytes());
        }
        if !self.suites.is_default() {
            h.update(format!("|suites|{}", self.suites).as_bytes());
        }
        // As the process runs: `up`'s own flags count as the file's `[logging]` does.
        let (level, format) = (self.log_level(), self.logging.format.as_str());
        let default = LoggingConfig::default();
        if (level, format) != (default.level.as_str(), default.format.as_str()) {
            h.update(format!("|logging|{level}|{format}").as_bytes());
        }
        if let Some(v) = self.proxy_protocol {
            h.update(format!("|proxy_protocol|{v}").as_bytes());
        }
        if !self.allow_from.is_empty() {
            h.update(format!("|allow_from|{:?}", self.allow_from).as_bytes());
        }
        if let Some(t) = &self.token {
            h.update(b"|token|");
            h.update(t.expose().as_bytes());
        }
        if self.alerts.is_on() {
            let a = &self.alerts;
            let urls = [&a.sinks.webhook, &a.sinks.slack].map(|u| u.as_ref().map(Secret::expose));
            h.update(
                format!(
                    "|alerts|{urls:?}|{}|{:?}|{:?}|{:?}|{:?}|{:?}",
                    a.sinks.retries,
                    a.sinks.timeout,
                    a.sinks.backoff,
                    a.sinks.flap,
                    a.sinks.origin,
                    a.lost_after
                )
                .as_bytes(),
            );
        }
        h.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// `[performance]` as the digests take it: what a tunnel ignores is left out (at
    /// its default): a router's setting in the shared section, and those for the
    /// other protocol's tunnels (`start` refuses them there). Changing it restarts
    /// nothing.
    fn digested_performance(&self) -> PerformanceConfig {
        let defaults = PerformanceConfig::default();
        let mut performance = PerformanceConfig {
            max_pending_handshakes: defaults.max_pending_handshakes,
            ..self.performance.clone()
        };
        match self.protocol {
            Protocol::Tcp => {
                performance.udp_idle_timeout_secs = defaults.udp_idle_timeout_secs;
                performance.udp_max_new_flows = defaults.udp_max_new_flows;
            }
            Protocol::Udp => {
                performance.stream_idle_timeout_secs = defaults.stream_idle_timeout_secs;
                // Flows stay in userspace TLS.
                performance.kernel_tls = defaults.kernel_tls;
            }
        }
        performance
    }

    /// Each setting that [`Self::digest`] takes, by the name a file gives it, with a
    /// short digest of its value: what `up` compares to name the settings that
    /// changed (see [`Self::changed_from`]). Secrets (the token, alert URLs) are left
    /// out: a digest of a secret alone would let anyone who reads the registry check
    /// guesses of it.
    pub fn setting_digests(&self) -> BTreeMap<String, String> {
        use sha2::{Digest, Sha256};
        let short = |text: &[u8]| -> String {
            Sha256::digest(text)[..4]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        let mut routers = self.router.split(',').map(str::trim);
        let (host, port) = routers
            .next()
            .and_then(|r| r.rsplit_once(':'))
            .unwrap_or_default();
        let mut parts: Vec<(String, String)> = vec![
            ("router.host".into(), host.to_owned()),
            ("router.port".into(), port.to_owned()),
            (
                "router.fallbacks".into(),
                routers.collect::<Vec<_>>().join(","),
            ),
            (
                "router.public_key".into(),
                self.router_key_specs.first().cloned().unwrap_or_default(),
            ),
            (
                "router.fallback_keys".into(),
                self.router_key_specs.get(1..).unwrap_or_default().join(","),
            ),
            (
                "security.private_key_path".into(),
                self.private_key_path.display().to_string(),
            ),
            ("source".into(), self.source.clone()),
            ("bind".into(), self.bind.to_string()),
            ("protocol".into(), format!("{:?}", self.protocol)),
            ("router.transport".into(), format!("{:?}", self.transport)),
            (
                "security.key_rotation_days".into(),
                self.key_rotation_days.to_string(),
            ),
            ("security.cipher_suites".into(), self.suites.to_string()),
            (
                "router.failback_secs".into(),
                self.failback_secs.to_string(),
            ),
            (
                "router.standby_check_secs".into(),
                self.standby_check_secs.to_string(),
            ),
            ("router.balance".into(), self.balance.to_string()),
            ("logging.level".into(), self.log_level().to_owned()),
            (
                "logging.format".into(),
                self.logging.format.as_str().to_owned(),
            ),
            (
                "proxy_protocol".into(),
                format!("{:?}", self.proxy_protocol),
            ),
            ("allow_from".into(), format!("{:?}", self.allow_from)),
        ];
        // Whether alerts go out (a webhook or Slack URL is set), and, as the digest
        // takes them, their settings while they do.
        parts.push(("alerts".into(), self.alerts.is_on().to_string()));
        if self.alerts.is_on() {
            let a = &self.alerts;
            parts.extend([
                ("alerts.retries".into(), a.sinks.retries.to_string()),
                (
                    "alerts.timeout_secs".into(),
                    format!("{:?}", a.sinks.timeout),
                ),
                (
                    "alerts.flap_window_secs".into(),
                    format!("{:?}", a.sinks.flap.window),
                ),
                (
                    "alerts.flap_changes".into(),
                    a.sinks.flap.max_changes.to_string(),
                ),
                ("alerts.name".into(), format!("{:?}", a.sinks.origin)),
                (
                    "alerts.lost_after_secs".into(),
                    format!("{:?}", a.lost_after),
                ),
            ]);
        }
        if let Ok(serde_json::Value::Object(fields)) =
            serde_json::to_value(self.digested_performance())
        {
            parts.extend(
                (fields.into_iter()).map(|(k, v)| (format!("performance.{k}"), v.to_string())),
            );
        }
        (parts.into_iter())
            .map(|(name, value)| {
                let digest = short(value.as_bytes());
                (name, digest)
            })
            .collect()
    }

    /// The settings whose digests differ from `before` (a running tunnel's
    /// [`Self::setting_digests`]), by name; `None` when `before` is empty (a tunnel
    /// started by a version that kept none). Empty when only a secret changed.
    ///
    /// When the protocol changed, the settings of one protocol's tunnels only are
    /// not named: they come into use or go out of it, not changed by the operator;
    /// nor, when alerts were turned on or off (`alerts`), each of their settings.
    pub fn changed_from(&self, before: &BTreeMap<String, String>) -> Option<Vec<String>> {
        if before.is_empty() {
            return None;
        }
        let now = self.setting_digests();
        let differs = |k: &str| now.get(k) != before.get(k);
        let switched = differs("protocol");
        // Alerts turned on or off: that is named, not each of their settings.
        let toggled = differs("alerts");
        let mut changed: Vec<String> = (now.keys().chain(before.keys()))
            .filter(|k| differs(k))
            .filter(|k| !(switched && ONE_PROTOCOLS.contains(&k.as_str())))
            .filter(|k| !(toggled && k.starts_with("alerts.")))
            .cloned()
            .collect();
        changed.sort();
        changed.dedup();
        Some(changed)
    }

    /// The client tunnel's settings, given the key loaded from
    /// [`private_key_path`](Self::private_key_path) and where learned router keys
    /// are kept.
    pub fn settings(&self, identity: KeyPair, known_routers: Option<PathBuf>) -> TunnelSettings {
        let p = &self.performance;
        TunnelSettings {
            name: self.name.clone(),
            router: self.router.clone(),
            router_keys: self.router_keys.clone(),
            router_key_specs: self.router_key_specs.clone(),
            known_routers,
            identity,
            source: self.source.clone(),
            bind: self.bind,
            token: self.token.clone(),
            transport: self.transport.into(),
            suites: self.suites.clone(),
            pool_size: p.effective_pool_size(),
            connect_timeout: p.connect_timeout(),
            handshake_timeout: p.handshake_timeout(),
            max_connections: usize::try_from(p.max_connections).unwrap_or(usize::MAX),
            bandwidth: conduit_dataplane::ratelimit::Limit::from_config(
                p.default_bandwidth_limit,
                p.burst_bandwidth_limit,
            ),
            sockets: p.socket_options(),
            dataplane: p.dataplane_options(),
            heartbeat: p.heartbeat(),
            idle_timeout: p.idle_timeout(),
            stream_idle: p.stream_idle(),
            key_path: Some(self.private_key_path.clone()),
            key_rotation: crate::client::days(self.key_rotation_days),
            failback: crate::client::secs(self.failback_secs),
            standby_check: crate::client::secs(self.standby_check_secs),
            balance: self.balance,
            udp: (self.protocol == Protocol::Udp).then(|| conduit_dataplane::UdpSpec {
                idle_timeout: p.udp_idle_timeout(),
                max_new_flows: p.udp_max_new_flows,
            }),
            proxy_protocol: self.proxy_protocol.map(Into::into),
            allow_from: self.allow_from.clone(),
            alerts: Some(self.alerts.clone()),
        }
    }
}

/// Everything `conduit up` needs from a file.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The file it came from.
    pub file: PathBuf,
    /// One per `[[tunnels]]` table, in file order.
    pub tunnels: Vec<TunnelPlan>,
    /// `[logging]`.
    pub logging: LoggingConfig,
    /// Warnings worth printing before starting.
    pub warnings: Vec<Problem>,
    /// The `CONDUIT_<SECTION>_<KEY>` variables the configuration took values from,
    /// each once: what a service running this file needs in its environment too.
    pub env_vars: Vec<String>,
}

impl Plan {
    /// The plan as `up` runs it when its own `--log-level` and `--log-format` (or
    /// `CONDUIT_LOG_LEVEL`, `CONDUIT_LOG_FORMAT`) are given: each tunnel process is
    /// started with them over the file's `[logging]`, so its digest holds them too,
    /// and a later `up` without them restarts it on the file's.
    pub fn with_log_flags(mut self, level: Option<&str>, format: Option<LogFormat>) -> Self {
        for t in &mut self.tunnels {
            if let Some(level) = level {
                t.log_level_flag = Some(level.to_owned());
            }
            if let Some(format) = format {
                t.logging.format = format;
            }
        }
        self
    }
}

/// Resolves file, environment and command-line overrides into one plan per tunnel.
///
/// `Err` holds every problem (warnings too) when there is at least one error.
pub fn plan_tunnels(sources: &Sources) -> Result<Plan, Report> {
    let loaded = load_client(sources)?;
    if loaded.report.has_errors() {
        return Err(loaded.report);
    }
    let c = &loaded.config;
    let internal = |what: &str| {
        let mut r = loaded.report.clone();
        r.push(Problem::error(
            what,
            "missing after validation (a Conduit bug; please report it)",
        ));
        r
    };
    let host = c
        .router
        .host
        .as_deref()
        .ok_or_else(|| internal("router.host"))?;
    let (router_keys, router_key_specs) = match c.router.public_key.as_deref() {
        Some(spec) => {
            let mut keys = vec![public_key(spec).map_err(|_| internal("router.public_key"))?];
            for (i, k) in c.router.fallback_keys.iter().enumerate() {
                keys.push(
                    public_key(k).map_err(|_| internal(&format!("router.fallback_keys[{i}]")))?,
                );
            }
            let specs = std::iter::once(spec.to_owned())
                .chain(c.router.fallback_keys.iter().cloned())
                .collect();
            (keys, specs)
        }
        // The plain transport, which checks no router keys.
        None if c.router.transport == TransportKind::Plain => (vec![Vec::new()], Vec::new()),
        None => return Err(internal("router.public_key")),
    };
    let private_key_path = c
        .security
        .private_key_path
        .clone()
        .ok_or_else(|| internal("security.private_key_path"))?;
    let mut router = match host.parse::<Ipv6Addr>() {
        Ok(v6) => format!("[{v6}]:{}", c.router.port),
        Err(_) => format!("{host}:{}", c.router.port),
    };
    // The tunnel tries them in this order (see `--router A,B`).
    for f in &c.router.fallbacks {
        router.push(',');
        router.push_str(f);
    }
    let suites =
        super::suites(&c.security.cipher_suites).map_err(|_| internal("security.cipher_suites"))?;
    let mut tunnels = Vec::with_capacity(c.tunnels.len());
    for (i, t) in c.tunnels.iter().enumerate() {
        let path = |k: &str| format!("tunnels[{i}].{k}");
        let (Some(name), Some(source), Some(bind)) = (&t.name, &t.source, &t.bind) else {
            return Err(internal(&format!("tunnels[{i}]")));
        };
        let bind = bind_addr(bind).map_err(|_| internal(&path("bind")))?;
        let allow_from = t
            .allow_from
            .iter()
            .map(|n| super::allow_from_net(n).map_err(|_| internal(&path("allow_from"))))
            .collect::<Result<Vec<_>, _>>()?;
        tunnels.push(TunnelPlan {
            name: name.clone(),
            router: router.clone(),
            router_keys: router_keys.clone(),
            router_key_specs: router_key_specs.clone(),
            private_key_path: private_key_path.clone(),
            source: source.clone(),
            bind,
            protocol: t.protocol,
            proxy_protocol: t.proxy_protocol,
            allow_from,
            transport: c.router.transport,
            token: c.security.token.clone(),
            key_rotation_days: c.security.key_rotation_days,
            suites: suites.clone(),
            failback_secs: c.router.failback_secs,
            standby_check_secs: c.router.standby_check_secs,
            balance: c.router.balance,
            performance: c.performance.clone(),
            alerts: c.alerts.tunnel_settings(name),
            logging: c.logging.clone(),
            log_level_flag: None,
        });
    }
    let env_vars = loaded.origins.env_vars();
    Ok(Plan {
        file: loaded.file,
        tunnels,
        logging: c.logging.clone(),
        warnings: loaded.report.problems,
        env_vars,
    })
}
