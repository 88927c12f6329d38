//! The handshakes in progress, each with a way to close it: when every slot
//! (`performance.max_pending_handshakes`) is taken, the next connection gets the slot
//! of one that is going nowhere. Waiting for a slot instead let a peer with no key
//! shut tunnels out: a few thousand connections that send nothing, each opened again
//! as the handshake timeout closes it, kept every slot taken, and the tunnels'
//! connections waited in the listen backlog behind them.
//!
//! Going nowhere: the oldest that has sent nothing at all for [`SILENT`] (a client's
//! first bytes, its TLS ClientHello, come with the last packet of its TCP
//! handshake); failing that, the oldest in progress for [`STALLED`] or more (one
//! that trickles bytes). A slot is not taken from a younger handshake: a crowd of
//! real tunnels reconnecting at once waits for slots, as before, and peers that
//! open a connection again as soon as theirs is closed cannot make the router
//! close and accept tens of thousands a second (each holds its slot for
//! [`SILENT`] at least).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// How long a handshake that has sent something may take before its slot may go to
/// a new connection: a TLS 1.3 handshake and `Hello` take two round trips.
pub(super) const STALLED: Duration = Duration::from_secs(2);

/// How long a handshake whose peer has sent nothing keeps its slot: room for a busy
/// router to look at what came with the connection.
pub(super) const SILENT: Duration = Duration::from_millis(500);

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

    /// Closes the handshake going nowhere, if one is (see the module's overview),
    /// and returns its peer, how long it had been in progress, and whether it had
    /// sent anything; else when the first may be going nowhere (`None`: no
    /// handshake is in progress).
    pub(super) fn close_one(
        &self,
        now: Instant,
    ) -> Result<(SocketAddr, Duration, bool), Option<Instant>> {
        let mut by_age = self.lock();
        let id = victim(
            by_age
                .iter()
                .map(|(&id, e)| (id, e.started, e.spoke.load(Ordering::Relaxed))),
            now,
        )?;
        let e = by_age.remove(&id).ok_or(None)?;
        let _ = e.close.send(());
        Ok((
            e.peer,
            now.saturating_duration_since(e.started),
            e.spoke.load(Ordering::Relaxed),
        ))
    }
}

/// Of the handshakes (id, started, spoke) oldest first, the one to close: the
/// oldest silent for [`SILENT`], else the oldest in progress for [`STALLED`]; or,
/// if none is, when the first will be (`None`: there are none).
fn victim(
    entries: impl Iterator<Item = (u64, Instant, bool)>,
    now: Instant,
) -> Result<u64, Option<Instant>> {
    let mut stalled = None;
    let mut first_due: Option<Instant> = None;
    for (id, started, spoke) in entries {
        let due = started + if spoke { STALLED } else { SILENT };
        if due <= now {
            if !spoke {
                return Ok(id);
            }
            stalled = stalled.or(Some(id));
        }
        first_due = Some(first_due.map_or(due, |d| d.min(due)));
    }
    stalled.ok_or(first_due)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slot_goes_from_a_silent_handshake_then_from_a_stalled_one() {
        let t0 = Instant::now();
        let now = t0 + STALLED * 2;
        let quiet = now - SILENT;
        let young = now - SILENT / 5;
        // The oldest silent long enough, before an older one that spoke.
        let four = [
            (1, t0, true),
            (2, young, false),
            (3, quiet, false),
            (4, quiet, false),
        ];
        assert_eq!(victim(four.into_iter(), now), Ok(3));
        // None silent long enough: the oldest stalled one.
        let three = [(1, young, false), (2, t0, true), (3, t0, true)];
        assert_eq!(victim(three.into_iter(), now), Ok(2));
        // Young, silent or under way: none yet, and when the first will be.
        let two = [(1, young, true), (2, young, false)];
        assert_eq!(victim(two.into_iter(), now), Err(Some(young + SILENT)));
        assert_eq!(victim(std::iter::empty(), now), Err(None));
    }

    #[tokio::test]
    async fn a_closed_handshake_is_told_and_a_finished_one_leaves() {
        let pending = Arc::new(Pending::default());
        let peer: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let talking = pending.enter(peer);
        talking.said().spoke();
        let mut silent = pending.enter("192.0.2.2:5000".parse().unwrap());
        let now = Instant::now();
        assert!(pending.close_one(now).is_err(), "silent for no time yet");
        let (who, _, spoke) = pending.close_one(now + SILENT).unwrap();
        assert_eq!((who.to_string().as_str(), spoke), ("192.0.2.2:5000", false));
        (&mut silent.closed).await.unwrap();
        // The one that spoke is under way: kept.
        assert!(pending.close_one(now + SILENT).is_err());
        drop((talking, silent));
        assert!(pending.lock().is_empty());
    }
}
