//! `[performance]`: the spec's `PerformanceConfig`, shared by clients and routers,
//! with the I/O engine and the relay's bias it chooses, and what `auto_tune` derives.

use std::time::Duration;

use serde::{Deserialize, Serialize};

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
    /// A stream (a user's TCP connection) that moves no byte either way for this
    /// many seconds is closed, on a tunnel and on a router alike; 0 for never.
    pub stream_idle_timeout_secs: u64,
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

/// The default `stream_idle_timeout_secs`: none. Each end sees only its own
/// sockets (a tunnel not a source still taking an upload its router holds for it, a
/// router not a user still taking a download its tunnel holds), so a timeout shorter
/// than such a drain would cut it: an operator sets one knowing their traffic.
pub const STREAM_IDLE_TIMEOUT_SECS: u64 = 0;

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
            stream_idle_timeout_secs: STREAM_IDLE_TIMEOUT_SECS,
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

    /// `stream_idle_timeout_secs` (`None`: 0, never).
    pub fn stream_idle(&self) -> Option<conduit_dataplane::StreamIdle> {
        conduit_dataplane::StreamIdle::from_secs(self.stream_idle_timeout_secs)
    }

    /// `udp_idle_timeout_secs`.
    pub fn udp_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.udp_idle_timeout_secs)
    }
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
