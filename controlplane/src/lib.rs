//! Conduit's control plane, on Tokio.
//!
//! ```text
//!  client tunnel                                   router
//!  ─────────────                                   ──────
//!  control_loop ══ control channel (Ping/Pong) ══▶ control_session
//!  make_channels ─ TLS + Hello/Welcome ──────────▶ handle ─▶ worker (ChannelHandoff)
//!        │ ChannelHandoff
//!        ▼
//!  workers' pools (conduit-dataplane)
//! ```
//!
//! It runs TLS handshakes, authenticates and authorizes, keeps each client's control
//! channel with heartbeats and reconnects with back-off, answers the workers'
//! requests for channels, and owns keys, the allow-list and the home directory. It
//! also writes the service files that let an init system run a tunnel ([`service`]).
//!
//! What it does **not** do: move payload bytes (the data plane does), or parse
//! command lines (the `conduit` binary does).
#![forbid(unsafe_code)]

pub mod alerts;
pub mod api;
pub mod authorized;
pub mod backoff;
pub mod balance;
pub mod client;
pub mod config;
pub mod control;
pub mod dns;
pub mod error;
pub mod history;
pub mod home;
pub mod http;
pub mod keys;
pub mod limits;
mod log_budget;
pub mod metrics;
pub mod monitor;
pub mod policy;
pub mod process;
pub mod reconcile;
pub mod registry;
pub mod router;
pub mod router_key;
pub mod serve;
pub mod service;
mod signals;
pub mod spawn;
pub mod stop;
pub mod timestamp;
pub mod tune;
mod wire;

use std::time::Duration;

pub use client::{ClientTunnel, LinkStatus, TunnelSettings};
pub use error::Error;
pub use home::Home;
pub use policy::{AllowList, RulesGiven};
pub use router::{Router, RouterSettings};

/// How a client and its router talk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// TLS 1.3, mutually authenticated with pinned Ed25519 keys.
    #[default]
    Tls,
    /// No encryption and no authentication (a token, if the router sets one): only
    /// for links that are already protected, such as WireGuard. Payload is spliced.
    Plain,
}

/// How often a client pings its router by default (`heartbeat_interval_secs`); the
/// client drops a control channel after three silent intervals, the router after
/// `health.client_timeout_secs`.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
