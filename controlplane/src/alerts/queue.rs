//! One sink's queue: bounded, never waits, and holds one alert per subject, so that
//! a receiver that is slow or down still ends up told each subject's latest state.
//!
//! - An alert about a subject that already has one waiting replaces it: the receiver
//!   is told where the subject is now, not each step it took while the queue was
//!   stuck (a `source_down` then `source_up` goes out as the `source_up`). The newer
//!   alert joins the back, so the queue stays in the order things happened.
//! - Full, the queue drops its oldest alert to make room: old news is what a
//!   receiver can best do without, and the latest state of a subject is never the
//!   one lost to an older one.
//!
//! The caller counts and logs what was displaced ([`Displaced`]).

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

use super::Alert;

/// What queuing an alert displaced.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Displaced {
    /// Nothing: there was room.
    Nothing,
    /// The alert waiting about the same subject, now out of date.
    Superseded(Alert),
    /// The oldest alert waiting, the queue being full.
    Dropped(Alert),
    /// The alert itself: the queue is closed.
    Closed(Alert),
}

#[derive(Debug, Default)]
struct Pending {
    alerts: VecDeque<Alert>,
    /// An alert taken by the delivery task is being sent.
    delivering: bool,
    closed: bool,
}

impl Pending {
    fn push(&mut self, alert: Alert, cap: usize) -> Displaced {
        if self.closed {
            return Displaced::Closed(alert);
        }
        let key = alert.subject_key();
        let displaced = match self.alerts.iter().position(|a| a.subject_key() == key) {
            Some(i) => self
                .alerts
                .remove(i)
                .map_or(Displaced::Nothing, Displaced::Superseded),
            None if self.alerts.len() >= cap.max(1) => self
                .alerts
                .pop_front()
                .map_or(Displaced::Nothing, Displaced::Dropped),
            None => Displaced::Nothing,
        };
        self.alerts.push_back(alert);
        displaced
    }

    fn left(&self) -> usize {
        self.alerts.len() + usize::from(self.delivering)
    }
}

/// The queue between [`super::Alerter::send`] and a sink's delivery task.
pub(super) struct Queue {
    cap: usize,
    /// A lock rather than a channel: queuing edits what waits (an alert replaced,
    /// the oldest dropped), which a channel's sender cannot do, and must not wait.
    /// It is held for a few operations on the deque, never across an await.
    pending: Mutex<Pending>,
    /// Wakes the delivery task: an alert queued, or the queue closed.
    queued: Notify,
    /// Wakes [`Queue::idle`]: nothing left to deliver.
    emptied: Notify,
}

impl Queue {
    /// A queue of `cap` alerts at most.
    pub(super) fn new(cap: usize) -> Self {
        Self {
            cap,
            pending: Mutex::new(Pending::default()),
            queued: Notify::new(),
            emptied: Notify::new(),
        }
    }

    /// A poisoned lock still holds a valid queue.
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `alert`; never waits.
    pub(super) fn push(&self, alert: Alert) -> Displaced {
        let d = self.lock().push(alert, self.cap);
        if !matches!(d, Displaced::Closed(_)) {
            self.queued.notify_one();
        }
        d
    }

    /// The next alert to deliver, oldest first; `None` once the queue is closed and
    /// empty. The caller says [`Self::done`] when it is delivered or given up.
    pub(super) async fn next(&self) -> Option<Alert> {
        loop {
            {
                let mut p = self.lock();
                if let Some(a) = p.alerts.pop_front() {
                    p.delivering = true;
                    return Some(a);
                }
                if p.closed {
                    return None;
                }
            }
            // A push or close since the check left a permit: nothing is missed.
            self.queued.notified().await;
        }
    }

    /// The alert [`Self::next`] gave is delivered, or given up.
    pub(super) fn done(&self) {
        let idle = {
            let mut p = self.lock();
            p.delivering = false;
            p.alerts.is_empty()
        };
        if idle {
            self.emptied.notify_waiters();
        }
    }

    /// Takes no more alerts; those queued are still delivered.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.queued.notify_one();
    }

    /// Alerts not delivered yet: queued, or being sent.
    pub(super) fn left(&self) -> usize {
        self.lock().left()
    }

    /// Waits until nothing is queued or being sent.
    pub(super) async fn idle(&self) {
        loop {
            let emptied = self.emptied.notified();
            tokio::pin!(emptied);
            // Registered before the check: a `done` in between still wakes it.
            emptied.as_mut().enable();
            if self.left() == 0 {
                return;
            }
            emptied.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::alerts::{Event, Subject};
    use crate::config::Protocol;

    fn alert(event: Event, target: &str) -> Alert {
        Alert {
            event,
            subject: Subject::Source {
                target: target.into(),
                protocol: Protocol::Tcp,
            },
            message: format!("source {target} is {}", event.state_word()),
            at: SystemTime::UNIX_EPOCH,
        }
    }

    fn waiting(q: &Queue) -> Vec<String> {
        q.lock().alerts.iter().map(|a| a.message.clone()).collect()
    }

    /// A receiver stuck behind a backlog is told each subject's latest state: a
    /// newer alert replaces the one waiting about its subject (and joins the back),
    /// and a full queue drops its oldest alert, never the newest.
    #[test]
    fn the_latest_alert_per_subject_stays_and_the_oldest_goes_when_full() {
        let q = Queue::new(3);
        for t in ["a:1", "b:1", "c:1"] {
            assert_eq!(q.push(alert(Event::SourceDown, t)), Displaced::Nothing);
        }
        // a comes back: its down is out of date.
        assert_eq!(
            q.push(alert(Event::SourceUp, "a:1")),
            Displaced::Superseded(alert(Event::SourceDown, "a:1"))
        );
        assert_eq!(
            waiting(&q),
            [
                "source b:1 is down",
                "source c:1 is down",
                "source a:1 is up"
            ]
        );
        // Full: d takes the place of the oldest, b's down.
        assert_eq!(
            q.push(alert(Event::SourceDown, "d:1")),
            Displaced::Dropped(alert(Event::SourceDown, "b:1"))
        );
        assert_eq!(
            waiting(&q),
            [
                "source c:1 is down",
                "source a:1 is up",
                "source d:1 is down"
            ]
        );
        // Another subject of the same name but another protocol is another subject.
        let mut udp = alert(Event::SourceDown, "d:1");
        udp.subject = Subject::Source {
            target: "d:1".into(),
            protocol: Protocol::Udp,
        };
        udp.message = "UDP source d:1 is down".into();
        assert_eq!(
            q.push(udp),
            Displaced::Dropped(alert(Event::SourceDown, "c:1"))
        );
        assert_eq!(q.left(), 3);
    }

    #[tokio::test]
    async fn a_closed_queue_is_delivered_to_its_end_and_takes_nothing_more() {
        let q = Queue::new(8);
        q.push(alert(Event::SourceDown, "a:1"));
        q.push(alert(Event::SourceDown, "b:1"));
        let first = q.next().await.map(|a| a.message);
        assert_eq!(first.as_deref(), Some("source a:1 is down"));
        // One queued, one being sent.
        assert_eq!(q.left(), 2);
        q.close();
        assert_eq!(
            q.push(alert(Event::SourceUp, "a:1")),
            Displaced::Closed(alert(Event::SourceUp, "a:1"))
        );
        q.done();
        let second = q.next().await.map(|a| a.message);
        assert_eq!(second.as_deref(), Some("source b:1 is down"));
        assert_eq!(q.left(), 1);
        // A zero timeout polls `idle` once: it must be pending, then ready.
        let idle = tokio::time::timeout(Duration::ZERO, q.idle()).await;
        assert!(idle.is_err(), "idle while an alert was being sent");
        q.done();
        tokio::time::timeout(Duration::ZERO, q.idle())
            .await
            .expect("idle once the last alert is done");
        assert_eq!(q.next().await, None);
        assert_eq!(q.left(), 0);
    }
}
