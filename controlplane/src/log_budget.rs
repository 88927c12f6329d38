//! Caps the log lines a flood of failures writes (connection set-ups to the router,
//! requests to its API refused for their token): each costs its sender no more than
//! a connection, so a flood of them must not flood the log. A few a second are
//! logged; the others are counted, and the next line logged says how many were held
//! back. The metrics count every one.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lets `per_sec` failures a second into the log.
#[derive(Debug)]
pub(crate) struct LogBudget {
    per_sec: u32,
    /// What the held-back ones are, in the note ("failed connection setups").
    what: &'static str,
    spent: Mutex<Spent>,
}

#[derive(Debug, Default)]
struct Spent {
    /// When the current second began, how many were logged in it, and how many
    /// were held back since the last one logged.
    second: Option<Instant>,
    logged: u32,
    held: u64,
}

impl LogBudget {
    pub(crate) fn new(per_sec: u32, what: &'static str) -> Self {
        Self {
            per_sec,
            what,
            spent: Mutex::default(),
        }
    }

    /// `Some(note)` when this failure is to be logged, with `note` to append (it
    /// says how many were held back, if any); `None` to stay quiet.
    pub(crate) fn admit(&self) -> Option<String> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<String> {
        let mut s = self.spent.lock().unwrap_or_else(|p| p.into_inner());
        if s.second
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            s.second = Some(now);
            s.logged = 0;
        }
        if s.logged >= self.per_sec {
            s.held += 1;
            return None;
        }
        s.logged += 1;
        Some(match std::mem::take(&mut s.held) {
            0 => String::new(),
            n => format!(" ({n} more {} were not logged)", self.what),
        })
    }
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
}
