//! A router flow's sources: which one the flow's socket is connected to, moving to
//! the next when one refuses or is reported down, and what the client is told of
//! refusals.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use conduit_proto::{Refusal, RefusalCode};
use tracing::{info, warn};

use crate::limit::Throttle;
use crate::net::Udp;
use crate::{SourcePolicy, SourceProtocol};

/// A router flow's sources, in the order the balancer gave them; the flow's socket
/// is connected to one. When that one refuses a datagram (ICMP "port unreachable":
/// nothing listens there), the socket is connected to the next, so the sender's
/// next datagram goes to a source that may answer. The refused datagram is lost, as
/// UDP would lose it; the sender's retry is what gets through.
///
/// The same when the router's health checks report the source in use down (a host
/// that drops everything, found out by a probe it must answer): checked at most
/// every [`HEALTH_EVERY`] while the user sends, the flow moves to the next source
/// not reported down.
///
/// When every source has refused in a row (the one source, or each of several)
/// without one answering meanwhile, the client is told (`SourceRefused`, protocol
/// 8), at most once every [`TELL_EVERY`], so that its tunnel's `status` and `health`
/// show it as they show a refused stream.
pub(crate) struct Sources {
    addrs: Vec<SocketAddr>,
    at: Cell<usize>,
    /// The flow's id, for the log.
    conn: u64,
    /// Where the health checks' verdicts come from, and the target they judge.
    health: Option<(Arc<dyn SourcePolicy>, String)>,
    checked: Cell<Instant>,
    /// Refusals since a source last answered.
    refusals: Cell<usize>,
    /// Whether the client speaks `SourceRefused`.
    tell: Cell<bool>,
    /// A refusal the client has not heard of yet.
    untold: Cell<bool>,
    /// When the client was last told.
    told: Cell<Option<Instant>>,
    /// The task that tells the client ([`from_source`](super::from_source)), waiting.
    teller: RefCell<Option<Waker>>,
}

/// How often at most a flow's client is told that its sources refuse.
const TELL_EVERY: Duration = Duration::from_secs(1);

/// How often a flow with several sources asks whether the one in use is down.
const HEALTH_EVERY: Duration = Duration::from_secs(1);

thread_local! {
    /// The moves of this core's flows between sources, as logged.
    static MOVES: Throttle =
        Throttle::reporting(Duration::from_secs(1), "moves of UDP flows between sources", false);
}

impl Sources {
    /// `addrs[0]` is the one the socket is connected to; `health`: the policy to ask
    /// about `target`'s members (a target of several).
    pub(crate) fn new(
        addrs: Vec<SocketAddr>,
        conn: u64,
        health: Option<(Arc<dyn SourcePolicy>, String)>,
    ) -> Self {
        Self {
            addrs,
            at: Cell::new(0),
            conn,
            health,
            checked: Cell::new(Instant::now()),
            refusals: Cell::new(0),
            tell: Cell::new(false),
            untold: Cell::new(false),
            told: Cell::new(None),
            teller: RefCell::new(None),
        }
    }

    /// Tells the client of refusals from now on: it speaks protocol 8.
    pub(crate) fn tell_client(&self) {
        self.tell.set(true);
    }

    /// A source answered: the refusals so far are over.
    pub(super) fn answered(&self) {
        self.refusals.set(0);
        self.untold.set(false);
    }

    /// Ready when the client is due to hear of a refusal (see [`Self::take_refusal`]).
    pub(super) fn poll_refusal(&self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.tell.get() {
            return Poll::Pending;
        }
        if self.refusal_due() {
            return Poll::Ready(());
        }
        *self.teller.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }

    fn refusal_due(&self) -> bool {
        self.untold.get() && self.told.get().is_none_or(|t| t.elapsed() >= TELL_EVERY)
    }

    /// The refusal the client is due to hear of, if one is.
    pub(super) fn take_refusal(&self) -> Option<Refusal> {
        if !self.tell.get() || !self.refusal_due() {
            return None;
        }
        self.untold.set(false);
        self.told.set(Some(Instant::now()));
        let message = match self.addrs.as_slice() {
            [one] => format!("source {one} refused a datagram (nothing listens on that UDP port)"),
            all => {
                // In one order, whichever the flow's balancer gave.
                let mut all = all.to_vec();
                all.sort();
                let all: Vec<String> = all.iter().map(ToString::to_string).collect();
                format!(
                    "each of the sources ({}) refused a datagram (nothing listens on those \
                     UDP ports)",
                    all.join(", ")
                )
            }
        };
        Some(Refusal::new(RefusalCode::SourceUnreachable, message))
    }

    /// Moves `sock` off the source in use if the health checks report it down and
    /// another is not; asks at most every [`HEALTH_EVERY`].
    pub(crate) fn check_health(&self, sock: &Udp) {
        let Some((policy, target)) = &self.health else {
            return;
        };
        if self.addrs.len() < 2 || self.checked.get().elapsed() < HEALTH_EVERY {
            return;
        }
        self.checked.set(Instant::now());
        let down = policy.down_addrs(target, SourceProtocol::Udp);
        let from = self.addrs[self.at.get()];
        if !down.contains(&from) {
            return;
        }
        let n = self.addrs.len();
        let Some(next) = (1..n)
            .map(|i| (self.at.get() + i) % n)
            .find(|&i| !down.contains(&self.addrs[i]))
        else {
            return;
        };
        self.move_to(sock, next, "is down (the router's health checks)");
    }

    /// Connects `sock` to source `next`, the one in use having done `why`. Logged
    /// at most once a second on each core, with a count of the moves held back: a
    /// flow whose every source is down moves at each datagram its user sends.
    fn move_to(&self, sock: &Udp, next: usize, why: &str) {
        let (from, to) = (self.addrs[self.at.get()], self.addrs[next]);
        let moved = sock.reconnect(to);
        if moved.is_ok() {
            self.at.set(next);
        }
        let Some(held) = MOVES.with(Throttle::admit) else {
            return;
        };
        let note = match held {
            0 => String::new(),
            n => format!(" ({n} more moves between sources since the last report)"),
        };
        match moved {
            Ok(()) => info!(
                conn = self.conn,
                "source {from} {why}; the flow moves to source {to}{note}"
            ),
            Err(e) => warn!(
                conn = self.conn,
                "source {from} {why}, and the flow cannot move to source {to}: {e}{note}"
            ),
        }
    }

    /// The source in use refused a datagram: move `sock` to the next, if there is
    /// another.
    pub(crate) fn refused(&self, sock: &Udp) {
        let refusals = self.refusals.get() + 1;
        self.refusals.set(refusals);
        if refusals >= self.addrs.len() {
            self.untold.set(true);
            // Woken only when the client is due to hear: a sender flooding a dead
            // source would otherwise wake the teller at each datagram for nothing.
            if self.refusal_due()
                && let Some(teller) = self.teller.borrow_mut().take()
            {
                teller.wake();
            }
        }
        if self.addrs.len() < 2 {
            return;
        }
        let next = (self.at.get() + 1) % self.addrs.len();
        self.move_to(
            sock,
            next,
            "refused a datagram (nothing listens on that UDP port)",
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use super::*;

    /// Wakes by setting a flag.
    struct Flag(std::sync::atomic::AtomicBool);

    impl std::task::Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Relaxed);
        }
    }

    #[test]
    fn a_client_is_told_once_every_source_refused_and_at_most_once_a_second() {
        let a: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:7".parse().unwrap();
        crate::engine::block_on(crate::engine::EngineKind::Epoll, async move {
            let std_sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            std_sock.connect(a).unwrap();
            let sock = Udp::from_std(std_sock).unwrap();
            let flag = Arc::new(Flag(false.into()));
            let waker = Waker::from(flag.clone());
            let mut cx = Context::from_waker(&waker);

            let one = Sources::new(vec![a], 1, None);
            one.refused(&sock);
            assert!(one.poll_refusal(&mut cx).is_pending());
            assert_eq!(one.take_refusal(), None, "a client before protocol 8");
            one.tell_client();
            assert!(one.poll_refusal(&mut cx).is_ready());
            let told = one.take_refusal().expect("the refusal is due");
            assert_eq!(told.code, RefusalCode::SourceUnreachable);
            assert_eq!(
                told.message,
                format!("source {a} refused a datagram (nothing listens on that UDP port)")
            );
            // The next refusal waits out the second, and wakes nobody meanwhile.
            assert!(one.poll_refusal(&mut cx).is_pending());
            one.refused(&sock);
            assert!(!flag.0.load(Relaxed), "not due yet");
            assert_eq!(one.take_refusal(), None, "within the second");
            // Once the second is over, the next refusal wakes the task waiting.
            one.told.set(Instant::now().checked_sub(TELL_EVERY));
            assert!(
                one.poll_refusal(&mut cx).is_ready(),
                "the one owed is due now"
            );
            one.untold.set(false);
            assert!(one.poll_refusal(&mut cx).is_pending());
            one.refused(&sock);
            assert!(flag.0.load(Relaxed), "a refusal due wakes the teller");
            assert!(one.take_refusal().is_some());
            // An answer ends the spell: nothing is owed once the second is over.
            one.answered();
            one.told.set(Instant::now().checked_sub(TELL_EVERY));
            assert_eq!(one.take_refusal(), None);
            one.refused(&sock);
            assert!(one.take_refusal().is_some());

            // Two sources: told once both refused in a row, not when one did.
            let two = Sources::new(vec![a, b], 2, None);
            two.tell_client();
            two.refused(&sock);
            assert_eq!(two.take_refusal(), None, "the flow moved to the other");
            two.answered();
            two.refused(&sock);
            assert_eq!(two.take_refusal(), None, "an answer came between");
            two.refused(&sock);
            assert_eq!(
                two.take_refusal().map(|r| r.message),
                Some(format!(
                    "each of the sources ({b}, {a}) refused a datagram (nothing listens on \
                     those UDP ports)"
                ))
            );
        })
        .unwrap();
    }
}
