//! Caps the log lines a flood of failures writes (connection set-ups to the router,
//! requests to its API refused for their token): each costs its sender no more than
//! a connection, so a flood of them must not flood the log. A few a second are
//! logged; the others are counted, and the next line logged says how many were held
//! back, or, if none comes within the second, a line of their own at its end. The
//! metrics count every one.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::info;

/// Lets `per_sec` failures a second into the log.
#[derive(Debug)]
pub(crate) struct LogBudget {
    per_sec: u32,
    /// What the held-back ones are, in the note ("failed connection setups").
    what: &'static str,
    spent: Arc<Mutex<Spent>>,
}

#[derive(Debug, Default)]
struct Spent {
    /// When the current second began, how many were logged in it, and how many
    /// were held back since the last one logged.
    second: Option<Instant>,
    logged: u32,
    held: u64,
    /// A task will say the held-back count at the end of the second.
    flush_due: bool,
}

impl LogBudget {
    pub(crate) fn new(per_sec: u32, what: &'static str) -> Self {
        Self {
            per_sec,
            what,
            spent: Arc::default(),
        }
    }

    /// `Some(note)` when this failure is to be logged, with `note` to append (it
    /// says how many were held back, if any); `None` to stay quiet.
    pub(crate) fn admit(&self) -> Option<String> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<String> {
        let mut s = lock(&self.spent);
        if s.second
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            s.second = Some(now);
            s.logged = 0;
        }
        if s.logged >= self.per_sec {
            s.held += 1;
            if !s.flush_due {
                let end = s.second.map_or(now, |t| t + Duration::from_secs(1));
                s.flush_due = self.flush_at(end.saturating_duration_since(now));
            }
            return None;
        }
        s.logged += 1;
        Some(match std::mem::take(&mut s.held) {
            0 => String::new(),
            n => format!(" ({n} more {} were not logged)", self.what),
        })
    }

    /// Says, `after` from now, how many were held back and not said since by a
    /// line logged; false when there is no runtime to wait in (they wait for the
    /// next line logged).
    fn flush_at(&self, after: Duration) -> bool {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let (spent, what) = (self.spent.clone(), self.what);
        runtime.spawn(async move {
            tokio::time::sleep(after).await;
            if let Some(line) = held_line(&mut lock(&spent), what) {
                info!("{line}");
            }
        });
        true
    }
}

/// The line that says the held-back count, if any were held back; they are said.
fn held_line(s: &mut Spent, what: &str) -> Option<String> {
    s.flush_due = false;
    match std::mem::take(&mut s.held) {
        0 => None,
        n => Some(format!(
            "{n} more {what} in the last second were not logged"
        )),
    }
}

fn lock(m: &Mutex<Spent>) -> std::sync::MutexGuard<'_, Spent> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_a_second_are_logged_and_the_next_one_says_how_many_were_not() {
        let budget = LogBudget::new(2, "refused API requests");
        let t0 = Instant::now();
        assert_eq!(budget.admit_at(t0).as_deref(), Some(""));
        assert_eq!(budget.admit_at(t0).as_deref(), Some(""));
        assert_eq!(budget.admit_at(t0), None);
        assert_eq!(budget.admit_at(t0 + Duration::from_millis(999)), None);
        let next = t0 + Duration::from_secs(1);
        assert_eq!(
            budget.admit_at(next).as_deref(),
            Some(" (2 more refused API requests were not logged)")
        );
        assert_eq!(budget.admit_at(next).as_deref(), Some(""));
    }

    /// With no line logged after them, the held-back ones are said at the end of
    /// their second, once: the next line logged has nothing left to say.
    #[tokio::test(start_paused = true)]
    async fn held_back_ones_are_said_at_the_end_of_their_second() {
        let budget = LogBudget::new(1, "refused API requests");
        assert_eq!(budget.admit().as_deref(), Some(""));
        assert_eq!(budget.admit(), None);
        assert_eq!(budget.admit(), None);
        assert!(lock(&budget.spent).flush_due);
        assert_eq!(lock(&budget.spent).held, 2);
        // Past the second's end (the paused clock moves only for tokio).
        tokio::time::sleep(Duration::from_millis(1001)).await;
        tokio::task::yield_now().await;
        let s = lock(&budget.spent);
        assert_eq!((s.held, s.flush_due), (0, false), "said by the task");
        drop(s);
        let mut s = Spent {
            held: 3,
            flush_due: true,
            ..Spent::default()
        };
        assert_eq!(
            held_line(&mut s, "refused API requests").as_deref(),
            Some("3 more refused API requests in the last second were not logged")
        );
        assert_eq!(held_line(&mut s, "refused API requests"), None);
    }
}
