//! What crosses the seam between the control plane and the workers.
//!
//! Control → data: [`ToWorker`] on one lock-free queue per core (flume; its async
//! receive wakes the monoio runtime through monoio's `sync` feature). The main value
//! is a [`ChannelHandoff`]: a TCP connection whose TLS handshake and `Hello`/`Welcome`
//! exchange the control plane finished, with everything already read.
//! Data → control: [`FromWorker`] on one shared queue, and the per-core counters.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use conduit_proto::{PublicKey, TlsSession};

use crate::stats::ConnSnapshot;
use crate::usage::Usage;

/// An established channel, ready for a worker.
#[derive(Debug)]
pub struct ChannelHandoff {
    /// The TCP connection (client → router).
    pub stream: std::net::TcpStream,
    /// Its TLS session, with any received bytes not yet processed; `None` on the plain
    /// transport. Boxed: hand-offs queue up in bursts of new connections, and a
    /// queue's buffer keeps the size its longest burst gave it.
    pub tls: Option<Box<TlsSession>>,
    /// Plaintext the control plane decrypted but did not consume.
    pub leftover: Vec<u8>,
    /// The authenticated key of the other end (`None` on the plain transport, which
    /// authenticates nobody).
    pub peer_key: Option<PublicKey>,
    /// The other end's address.
    pub peer_addr: SocketAddr,
    /// The tunnel it serves (its name, from `Hello`).
    pub tunnel: String,
    /// The link generation it was made in (client side; see [`LinkState`]).
    pub epoch: u64,
    /// The protocol version the two ends agreed on in `Hello`/`Welcome`.
    pub version: u16,
    /// When the handshake finished.
    pub made: Instant,
}

/// A message to one worker.
#[derive(Debug)]
pub enum ToWorker {
    /// A fresh channel for this core's pool (client side).
    ClientChannel(ChannelHandoff),
    /// A channel to serve (router side).
    RouterChannel(ChannelHandoff),
    /// Drop every idle pooled channel (the router link changed).
    Flush,
    /// A channel asked for could not be made (the process is out of file
    /// descriptors) and will not come: let the users waiting for one go at once, with
    /// this reason, instead of holding their sockets while they wait in vain, and ask
    /// again after a pause.
    NoChannels(String),
    /// Reply with this core's open connections.
    Snapshot(futures::channel::oneshot::Sender<Vec<ConnSnapshot>>),
    /// Reply with this core's per-client and per-source tallies (router side).
    Usage(futures::channel::oneshot::Sender<Usage>),
    /// Stop one connection now (the operator asked).
    Kill(u64),
    /// The router link of this generation was lost without its channels noticing
    /// (no heartbeat answer): stop the user connections riding on it (client side).
    LinkLost {
        /// The generation lost.
        epoch: u64,
        /// Why, for the users' log lines.
        reason: String,
    },
    /// A client's tunnel stopped answering heartbeats, or its key was revoked: stop
    /// the streams of its channels (router side).
    ClientLost {
        /// The client's key (`None` on the plain transport).
        key: Option<PublicKey>,
        /// Its tunnel's name; `None`: every tunnel of that key.
        tunnel: Option<String>,
        /// Why, for the log lines.
        reason: String,
    },
    /// Stop accepting; close open connections at `deadline` (or now), then exit.
    Stop {
        /// When to cut the connections still open.
        deadline: Instant,
    },
}

/// A message from a worker to the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromWorker {
    /// Core `core` wants `count` more handshaken channels (client side).
    WantChannels {
        /// The asking core.
        core: usize,
        /// How many.
        count: usize,
    },
}

/// The state of a client's link to its router, written by the control plane and
/// read by the workers, so a user connection fails fast while the router is away.
#[derive(Debug, Default)]
pub struct LinkState {
    up: AtomicBool,
    epoch: AtomicU64,
}

impl LinkState {
    /// Marks the link up and starts a new generation; returns it.
    pub fn connected(&self) -> u64 {
        let e = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        self.up.store(true, Ordering::Release);
        e
    }

    /// Marks the link down.
    pub fn lost(&self) {
        self.up.store(false, Ordering::Release);
    }

    /// Whether the control channel is up.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// The current generation; channels from older ones are stale.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }
}
