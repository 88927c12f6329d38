//! Per-core counters and the per-core table of open connections.
//!
//! Each core writes only its own counters (relaxed atomics, one writer); the control
//! plane reads them without locks. The connection table belongs to its core and is
//! read by the control plane only through a message (`ToWorker::Snapshot`).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use conduit_proto::PublicKey;

/// Counters of one core. Aligned to its own cache lines so cores never share one.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct CoreStats {
    /// User connections open now.
    pub active: AtomicU64,
    /// User connections opened since start.
    pub opened: AtomicU64,
    /// User connections that ended in an error (source down, reset, refused…).
    pub failed: AtomicU64,
    /// Payload bytes from users toward sources.
    pub bytes_up: AtomicU64,
    /// Payload bytes from sources toward users.
    pub bytes_down: AtomicU64,
    /// Handshaken channels waiting in this core's pool (client side).
    pub idle_channels: AtomicU64,
}

/// The sum of every core's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// See [`CoreStats::active`].
    pub active: u64,
    /// See [`CoreStats::opened`].
    pub opened: u64,
    /// See [`CoreStats::failed`].
    pub failed: u64,
    /// See [`CoreStats::bytes_up`].
    pub bytes_up: u64,
    /// See [`CoreStats::bytes_down`].
    pub bytes_down: u64,
    /// See [`CoreStats::idle_channels`].
    pub idle_channels: u64,
}

impl Totals {
    pub(crate) fn sum<'a>(cores: impl IntoIterator<Item = &'a CoreStats>) -> Self {
        let mut t = Totals::default();
        for c in cores {
            t.active += c.active.load(Relaxed);
            t.opened += c.opened.load(Relaxed);
            t.failed += c.failed.load(Relaxed);
            t.bytes_up += c.bytes_up.load(Relaxed);
            t.bytes_down += c.bytes_down.load(Relaxed);
            t.idle_channels += c.idle_channels.load(Relaxed);
        }
        t
    }
}

/// One open connection, as `conduit list --connections` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnSnapshot {
    /// Connection id (unique in this process).
    pub id: u64,
    /// The user's address (client side) or the client's address (router side).
    pub peer: Option<SocketAddr>,
    /// The source it goes to.
    pub target: String,
    /// Seconds since it opened.
    pub age_secs: u64,
    /// Payload bytes toward the source.
    pub bytes_up: u64,
    /// Payload bytes toward the user.
    pub bytes_down: u64,
}

/// Byte counters of one connection, shared between its relay and the table.
#[derive(Debug, Default)]
pub(crate) struct ConnCounters {
    pub(crate) up: Cell<u64>,
    pub(crate) down: Cell<u64>,
}

/// Where a relay direction counts its bytes: the connection's counter and the core's.
#[derive(Clone, Copy)]
pub(crate) struct Meter<'a> {
    pub(crate) conn: &'a Cell<u64>,
    pub(crate) core: &'a AtomicU64,
}

impl Meter<'_> {
    pub(crate) fn add(&self, n: usize) {
        self.conn.set(self.conn.get() + n as u64);
        self.core.fetch_add(n as u64, Relaxed);
    }
}

pub(crate) struct ConnEntry {
    pub(crate) peer: Option<SocketAddr>,
    pub(crate) target: String,
    pub(crate) started: Instant,
    pub(crate) counters: Rc<ConnCounters>,
    /// Stops the connection; carries the reason it is given.
    pub(crate) kill: Option<futures::channel::oneshot::Sender<String>>,
    /// What the connection rides on, to stop it when that is lost.
    pub(crate) rides: Rides,
}

/// What a connection depends on beyond its own sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rides {
    /// Nothing yet (a user still waiting for a channel).
    Nothing,
    /// Client side: a channel of this generation of the router link.
    Link(u64),
    /// Router side: a channel of this client key's tunnel.
    Client(PublicKey, String),
}

/// The open connections of one core.
#[derive(Default)]
pub(crate) struct ConnTable {
    entries: RefCell<HashMap<u64, ConnEntry>>,
}

impl ConnTable {
    pub(crate) fn insert(&self, id: u64, entry: ConnEntry) {
        self.entries.borrow_mut().insert(id, entry);
    }

    pub(crate) fn remove(&self, id: u64) {
        self.entries.borrow_mut().remove(&id);
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.borrow().len()
    }

    /// Records what connection `id` now rides on.
    pub(crate) fn set_rides(&self, id: u64, rides: Rides) {
        if let Some(e) = self.entries.borrow_mut().get_mut(&id) {
            e.rides = rides;
        }
    }

    /// Asks connection `id` to stop; false if it is not on this core.
    pub(crate) fn kill(&self, id: u64, reason: &str) -> bool {
        match self.entries.borrow_mut().get_mut(&id) {
            Some(e) => {
                if let Some(k) = e.kill.take() {
                    let _ = k.send(reason.to_owned());
                }
                true
            }
            None => false,
        }
    }

    /// Asks every connection riding on something `lost` says is gone to stop;
    /// returns how many were asked.
    pub(crate) fn kill_riding(&self, lost: impl Fn(&Rides) -> bool, reason: &str) -> usize {
        let mut n = 0;
        for e in self.entries.borrow_mut().values_mut() {
            if lost(&e.rides) {
                if let Some(k) = e.kill.take() {
                    let _ = k.send(reason.to_owned());
                    n += 1;
                }
            }
        }
        n
    }

    /// Asks every connection to stop.
    pub(crate) fn kill_all(&self, reason: &str) {
        self.kill_riding(|_| true, reason);
    }

    pub(crate) fn snapshot(&self) -> Vec<ConnSnapshot> {
        let now = Instant::now();
        self.entries
            .borrow()
            .iter()
            .map(|(id, e)| ConnSnapshot {
                id: *id,
                peer: e.peer,
                target: e.target.clone(),
                age_secs: now.duration_since(e.started).as_secs(),
                bytes_up: e.counters.up.get(),
                bytes_down: e.counters.down.get(),
            })
            .collect()
    }
}
