//! What the router's control plane wants to know per client and per source, kept by
//! each core and collected through a message (`ToWorker::Usage`).
//!
//! Per client: connections and bytes of streams that ended, plus (at collection time)
//! those still open, read from the connection table. Nothing is written per relayed
//! chunk; a stream touches its client's tally when it opens and when it ends.
//! Per source: when a client last opened it, so the health checker probes only the
//! sources in use. Both maps are bounded: clients by the authorized keys, sources by
//! [`MAX_SOURCES`] (targets that passed the allow-list).

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use conduit_proto::PublicKey;

use crate::stats::ConnTable;

/// The key streams on the plain transport are tallied under: that transport
/// authenticates nobody, so its clients have no key of their own.
pub const NO_KEY: PublicKey = PublicKey::from_bytes([0; 32]);

/// Sources remembered per core at most; beyond that the least recently used is dropped.
pub const MAX_SOURCES: usize = 1024;

/// Connections and bytes of one client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientTotals {
    /// Streams opened (including refused and failed ones).
    pub opened: u64,
    /// Streams open now.
    pub active: u64,
    /// Streams that ended in an error.
    pub failed: u64,
    /// Payload bytes toward the source.
    pub bytes_up: u64,
    /// Payload bytes toward the user.
    pub bytes_down: u64,
}

impl ClientTotals {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &ClientTotals) {
        self.opened += other.opened;
        self.active += other.active;
        self.failed += other.failed;
        self.bytes_up += other.bytes_up;
        self.bytes_down += other.bytes_down;
    }
}

/// What one core (or, summed, the whole data plane) reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Per client key.
    pub clients: HashMap<PublicKey, ClientTotals>,
    /// Per TCP source (as the client named it): how long ago it was last opened.
    pub sources: HashMap<String, Duration>,
    /// Per UDP source: how long ago a flow to it last began.
    pub udp_sources: HashMap<String, Duration>,
}

impl Usage {
    /// Merges another core's report.
    pub fn merge(&mut self, other: Usage) {
        for (k, t) in other.clients {
            self.clients.entry(k).or_default().add(&t);
        }
        for (mine, theirs) in [
            (&mut self.sources, other.sources),
            (&mut self.udp_sources, other.udp_sources),
        ] {
            for (s, ago) in theirs {
                let e = mine.entry(s).or_insert(ago);
                *e = (*e).min(ago);
            }
        }
    }
}

/// One core's tallies.
#[derive(Default)]
pub(crate) struct UsageBook {
    /// Ended streams per client (open ones live in the connection table).
    clients: RefCell<HashMap<PublicKey, ClientTotals>>,
    sources: RefCell<HashMap<String, Instant>>,
    udp_sources: RefCell<HashMap<String, Instant>>,
}

impl UsageBook {
    /// A client opened a stream.
    pub(crate) fn opened(&self, client: &PublicKey) {
        self.clients.borrow_mut().entry(*client).or_default().opened += 1;
    }

    /// A client's stream ended (after moving `up`/`down` bytes).
    pub(crate) fn ended(&self, client: &PublicKey, up: u64, down: u64, failed: bool) {
        let mut m = self.clients.borrow_mut();
        let t = m.entry(*client).or_default();
        t.bytes_up += up;
        t.bytes_down += down;
        t.failed += u64::from(failed);
    }

    /// A client opened TCP source `target` (it passed the allow-list).
    pub(crate) fn source_used(&self, target: &str) {
        Self::used(&self.sources, target);
    }

    /// A client began a flow to UDP source `target` (it passed the allow-list).
    pub(crate) fn udp_source_used(&self, target: &str) {
        Self::used(&self.udp_sources, target);
    }

    fn used(sources: &RefCell<HashMap<String, Instant>>, target: &str) {
        let now = Instant::now();
        let mut m = sources.borrow_mut();
        if let Some(t) = m.get_mut(target) {
            *t = now;
            return;
        }
        if m.len() >= MAX_SOURCES
            && let Some(oldest) = m.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone())
        {
            m.remove(&oldest);
        }
        m.insert(target.to_owned(), now);
    }

    /// This core's report: ended streams plus the open ones in `conns`.
    pub(crate) fn report(&self, conns: &ConnTable) -> Usage {
        let mut clients = self.clients.borrow().clone();
        conns.for_each_open(|client, up, down| {
            if let Some(k) = client {
                let t = clients.entry(*k).or_default();
                t.active += 1;
                t.bytes_up += up;
                t.bytes_down += down;
            }
        });
        let now = Instant::now();
        let ago = |m: &RefCell<HashMap<String, Instant>>| {
            m.borrow()
                .iter()
                .map(|(s, t)| (s.clone(), now.duration_since(*t)))
                .collect()
        };
        let (mut sources, mut udp_sources): (HashMap<_, _>, HashMap<_, _>) =
            (ago(&self.sources), ago(&self.udp_sources));
        // A source a stream or flow still uses is in use now, however long ago it
        // was opened: the health checks go on watching it. Only sources recorded as
        // opened (they passed the allow-list) count: a stream refused names a
        // target the router must never probe.
        conns.for_each_target(|target, datagrams| {
            let m = if datagrams {
                &mut udp_sources
            } else {
                &mut sources
            };
            for member in crate::source_members(target) {
                if let Some(ago) = m.get_mut(member) {
                    *ago = Duration::ZERO;
                }
            }
        });
        Usage {
            clients,
            sources,
            udp_sources,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ended_streams_and_merges_add_up() {
        let k = PublicKey::from_bytes([7; 32]);
        let book = UsageBook::default();
        book.opened(&k);
        book.opened(&k);
        book.ended(&k, 10, 20, false);
        book.ended(&k, 1, 2, true);
        book.source_used("10.0.0.1:80");
        let r = book.report(&ConnTable::default());
        assert_eq!(
            r.clients[&k],
            ClientTotals {
                opened: 2,
                active: 0,
                failed: 1,
                bytes_up: 11,
                bytes_down: 22
            }
        );
        assert!(r.sources["10.0.0.1:80"] < Duration::from_secs(5));
        let mut all = Usage::default();
        all.merge(r.clone());
        all.merge(r);
        assert_eq!(all.clients[&k].bytes_down, 44);
        assert_eq!(all.sources.len(), 1);
    }

    /// A source opened long ago that a stream still uses is reported in use now: it
    /// stays health-checked. Each member of a source of several counts on its own;
    /// a target never opened (refused) is not reported at all.
    #[test]
    fn a_source_with_an_open_stream_is_in_use_now() {
        use crate::stats::ConnEntry;
        let book = UsageBook::default();
        book.source_used("10.0.0.9:80");
        book.source_used("10.0.0.8:80");
        book.udp_source_used("10.0.0.9:53");
        std::thread::sleep(Duration::from_millis(5));
        let conns = ConnTable::default();
        for (id, target, datagrams) in [
            (1, "10.0.0.9:80,10.0.0.7:80", false),
            (2, "10.0.0.9:53", true),
            (3, "192.168.1.1:22", false),
        ] {
            let (kill, _) = futures::channel::oneshot::channel();
            conns.insert(
                id,
                ConnEntry::new(None, target.into(), Default::default(), kill, datagrams),
            );
        }
        let r = book.report(&conns);
        assert_eq!(r.sources.len(), 2, "{:?}", r.sources);
        assert_eq!(r.sources["10.0.0.9:80"], Duration::ZERO);
        assert!(r.sources["10.0.0.8:80"] > Duration::ZERO);
        assert_eq!(
            r.udp_sources,
            HashMap::from([("10.0.0.9:53".to_owned(), Duration::ZERO)])
        );
    }

    #[test]
    fn sources_are_bounded() {
        let book = UsageBook::default();
        for i in 0..MAX_SOURCES + 10 {
            book.source_used(&format!("h{i}:1"));
        }
        let r = book.report(&ConnTable::default());
        assert_eq!(r.sources.len(), MAX_SOURCES);
    }
}
