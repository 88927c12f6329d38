//! Flapping suppression: a subject (a source, a client link) that changes state more
//! than `max_changes` times within `window` stops producing alerts. One "flapping"
//! alert says so; once the subject has kept one state for `quiet`, one alert gives the
//! state it settled in, and alerts flow again.
//!
//! Pure logic over caller-supplied instants, so it is tested with a virtual clock.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::{Alert, Event};

/// Suppression settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlapSettings {
    /// Changes counted over this long.
    pub window: Duration,
    /// More changes than this within `window` is flapping.
    pub max_changes: usize,
    /// A flapping subject that keeps one state this long is stable again.
    pub quiet: Duration,
}

impl Default for FlapSettings {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(600),
            max_changes: 4,
            quiet: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Default)]
struct Subject {
    changes: VecDeque<Instant>,
    /// While flapping: the newest alert held back.
    held: Option<Alert>,
    flapping: bool,
}

/// Per-subject change history.
#[derive(Debug, Default)]
pub struct FlapGuard {
    settings: FlapSettings,
    subjects: HashMap<String, Subject>,
}

impl FlapGuard {
    /// A guard with `settings`.
    pub fn new(settings: FlapSettings) -> Self {
        Self {
            settings,
            subjects: HashMap::new(),
        }
    }

    /// A state change happened; returns what to send (nothing while flapping).
    pub fn on_change(&mut self, alert: Alert, now: Instant) -> Option<Alert> {
        let s = self.settings;
        let subj = self.subjects.entry(alert.subject_key()).or_default();
        subj.changes.push_back(now);
        while subj
            .changes
            .front()
            .is_some_and(|t| now.duration_since(*t) > s.window)
        {
            subj.changes.pop_front();
        }
        if subj.flapping {
            subj.held = Some(alert);
            return None;
        }
        if subj.changes.len() > s.max_changes {
            subj.flapping = true;
            let changes = subj.changes.len();
            let flap = alert.derive(
                Event::Flapping,
                format!(
                    "{} changed state {changes} times within {}; alerts about it are paused \
                     until it keeps one state for {}",
                    alert.subject_text(),
                    humantime::format_duration(s.window),
                    humantime::format_duration(s.quiet)
                ),
            );
            subj.held = Some(alert);
            return Some(flap);
        }
        Some(alert)
    }

    /// Call now and then: returns the "settled" alerts of subjects that stopped flapping.
    pub fn tick(&mut self, now: Instant) -> Vec<Alert> {
        let quiet = self.settings.quiet;
        let mut out = Vec::new();
        for subj in self.subjects.values_mut() {
            let calm = subj
                .changes
                .back()
                .is_none_or(|t| now.duration_since(*t) >= quiet);
            if subj.flapping && calm {
                subj.flapping = false;
                subj.changes.clear();
                if let Some(a) = subj.held.take() {
                    let text = format!("{} (it stopped flapping)", a.message);
                    out.push(a.derive(a.event, text));
                }
            }
        }
        // Forget subjects with nothing recent.
        let window = self.settings.window;
        self.subjects.retain(|_, s| {
            s.flapping
                || s.changes
                    .back()
                    .is_some_and(|t| now.duration_since(*t) <= window)
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::alerts::Subject as AlertSubject;

    fn alert(event: Event) -> Alert {
        Alert {
            event,
            subject: AlertSubject::Source {
                target: "db:5432".into(),
                protocol: crate::config::Protocol::Tcp,
            },
            message: format!("source db:5432 is {}", event.state_word()),
            at: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn a_few_changes_pass_through() {
        let mut g = FlapGuard::new(FlapSettings::default());
        let t0 = Instant::now();
        let a = g.on_change(alert(Event::SourceDown), t0).unwrap();
        assert_eq!(a.event, Event::SourceDown);
        let b = g.on_change(alert(Event::SourceUp), t0 + Duration::from_secs(20));
        assert_eq!(b.unwrap().event, Event::SourceUp);
    }

    #[test]
    fn flapping_is_announced_once_then_settles_with_the_last_state() {
        let s = FlapSettings {
            window: Duration::from_secs(600),
            max_changes: 4,
            quiet: Duration::from_secs(300),
        };
        let mut g = FlapGuard::new(s);
        let t0 = Instant::now();
        let mut sent = Vec::new();
        for i in 0..9u64 {
            let e = if i % 2 == 0 {
                Event::SourceDown
            } else {
                Event::SourceUp
            };
            if let Some(a) = g.on_change(alert(e), t0 + Duration::from_secs(i * 10)) {
                sent.push(a.event);
            }
        }
        assert_eq!(
            sent,
            vec![
                Event::SourceDown,
                Event::SourceUp,
                Event::SourceDown,
                Event::SourceUp,
                Event::Flapping
            ]
        );
        // Not quiet yet.
        assert!(g.tick(t0 + Duration::from_secs(200)).is_empty());
        // Quiet for 300 s after the last change (at 80 s): the held state (down) is sent.
        let settled = g.tick(t0 + Duration::from_secs(380));
        assert_eq!(settled.len(), 1);
        assert_eq!(settled[0].event, Event::SourceDown);
        assert!(settled[0].message.ends_with("(it stopped flapping)"));
        // And alerts flow again.
        let next = g.on_change(alert(Event::SourceUp), t0 + Duration::from_secs(400));
        assert_eq!(next.unwrap().event, Event::SourceUp);
    }
}
