//! The handshakes in progress, each with a way to close it: when every slot
//! (`performance.max_pending_handshakes`) is taken, the next connection gets the slot
//! of one that is going nowhere. Waiting for a slot instead let a peer with no key
//! shut tunnels out: a few thousand connections that send nothing, each opened again
//! as the handshake timeout closes it, kept every slot taken, and the tunnels'
//! connections waited in the listen backlog behind them.
//!
//! Going nowhere: the oldest that has sent nothing at all (a client's first bytes,
//! its TLS ClientHello, leave at once); failing that, the oldest in progress for
//! [`STALLED`] or more (one that trickles bytes). A slot is not taken from a
//! handshake that is younger and under way: a crowd of real tunnels reconnecting at
//! once waits for slots, as before.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// How long a handshake that has sent something may take before its slot may go to
/// a new connection: a TLS 1.3 handshake and `Hello` take two round trips.
pub(super) const STALLED: Duration = Duration::from_secs(2);

/// The handshakes in progress.
#[derive(Debug, Default)]
pub(super) struct Pending {
    next: AtomicU64,
    by_age: Mutex<BTreeMap<u64, Entry>>,
}

#[derive(Debug)]
struct Entry {
    peer: SocketAddr,
    started: Instant,
    spoke: Arc<AtomicBool>,
    close: oneshot::Sender<()>,
}

/// One handshake's place among those in progress, left when dropped.
#[derive(Debug)]
pub(super) struct Ticket {
    id: u64,
    pending: Arc<Pending>,
    spoke: Arc<AtomicBool>,
    /// Resolves when the handshake's slot went to a new connection.
    pub(super) closed: oneshot::Receiver<()>,
}

impl Ticket {
    /// What marks the handshake as one whose peer has sent its first bytes.
    pub(super) fn said(&self) -> Said {
        Said(self.spoke.clone())
    }
}

/// Marks a handshake as one whose peer has spoken (see [`Ticket::said`]).
#[derive(Debug)]
pub(super) struct Said(Arc<AtomicBool>);

impl Said {
    /// The peer has sent its first bytes.
    pub(super) fn spoke(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.pending.lock().remove(&self.id);
    }
}

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Entry>> {
        self.by_age.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A handshake from `peer` begins.
    pub(super) fn enter(self: &Arc<Self>, peer: SocketAddr) -> Ticket {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let spoke = Arc::new(AtomicBool::new(false));
        let (close, closed) = oneshot::channel();
        self.lock().insert(
            id,
            Entry {
                peer,
                started: Instant::now(),
                spoke: spoke.clone(),
                close,
            },
        );
        Ticket {
            id,
            pending: self.clone(),
            spoke,
            closed,
        }
    }

    /// Closes the handshake going nowhere, if one is (see the module's overview);
    /// returns its peer, how long it had been in progress, and whether it had sent
    /// anything.
    pub(super) fn close_one(&self, now: Instant) -> Option<(SocketAddr, Duration, bool)> {
        let mut by_age = self.lock();
        let id = victim(
            by_age
                .iter()
                .map(|(&id, e)| (id, e.started, e.spoke.load(Ordering::Relaxed))),
            now,
        )?;
        let e = by_age.remove(&id)?;
        let _ = e.close.send(());
        Some((
            e.peer,
            now.saturating_duration_since(e.started),
            e.spoke.load(Ordering::Relaxed),
        ))
    }
}

/// Of the handshakes (id, started, spoke) oldest first, the one to close: the
/// oldest that has not spoken, else the oldest in progress for [`STALLED`].
fn victim(entries: impl Iterator<Item = (u64, Instant, bool)>, now: Instant) -> Option<u64> {
    let mut stalled = None;
    for (id, started, spoke) in entries {
        if !spoke {
            return Some(id);
        }
        if stalled.is_none() && now.saturating_duration_since(started) >= STALLED {
            stalled = Some(id);
        }
    }
    stalled
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slot_goes_from_a_silent_handshake_then_from_a_stalled_one() {
        let t0 = Instant::now();
        let now = t0 + STALLED * 2;
        let young = now - Duration::from_millis(100);
        // The oldest silent one, however young, before an older one that spoke.
        assert_eq!(
            victim(
                [(1, t0, true), (2, young, false), (3, young, false)].into_iter(),
                now
            ),
            Some(2)
        );
        // None silent: the oldest stalled one.
        assert_eq!(
            victim([(1, t0, true), (2, t0, true)].into_iter(), now),
            Some(1)
        );
        // Under way and young: none.
        assert_eq!(victim([(1, young, true)].into_iter(), now), None);
        assert_eq!(victim(std::iter::empty(), now), None);
    }

    #[tokio::test]
    async fn a_closed_handshake_is_told_and_a_finished_one_leaves() {
        let pending = Arc::new(Pending::default());
        let peer: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let talking = pending.enter(peer);
        talking.said().spoke();
        let mut silent = pending.enter("192.0.2.2:5000".parse().unwrap());
        let (who, _, spoke) = pending.close_one(Instant::now()).unwrap();
        assert_eq!((who.to_string().as_str(), spoke), ("192.0.2.2:5000", false));
        (&mut silent.closed).await.unwrap();
        // The one that spoke is under way: kept.
        assert!(pending.close_one(Instant::now()).is_none());
        drop((talking, silent));
        assert!(pending.lock().is_empty());
    }
}
