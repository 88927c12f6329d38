//! The router's traffic history: every `api.history_interval_secs` (60 by default)
//! a sample of what moved since the last one (bytes each way, streams opened and
//! failed, streams open at the end), the latest `api.history_samples` (1440: a day
//! of minutes) kept in memory for `/api/v1/stats/history` and `conduit stats
//! --history`. With `api.history_file` each sample is also appended to a JSON Lines
//! file, which a router started again reads back: the history outlives restarts.
//! The file is rewritten with the samples kept once it holds twice as many.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use conduit_dataplane::{DataPlane, Totals};
use serde::{Deserialize, Serialize};
use tracing::warn;

/// How the history is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistorySettings {
    /// Time between samples.
    pub interval: Duration,
    /// Samples kept.
    pub keep: usize,
    /// Where samples are appended, if anywhere.
    pub file: Option<PathBuf>,
}

/// The longest interval a sample may span: samples are taken at most a day apart
/// (`api.history_interval_secs`), so a line of the history file that says more was
/// not written by a router, and its times cannot be trusted.
pub const MAX_SAMPLE_SECS: f64 = 366.0 * 86_400.0;

/// What moved through the router in one interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sample {
    /// When the interval ended.
    #[serde(with = "rfc3339")]
    pub at: SystemTime,
    /// Its length in seconds.
    pub secs: f64,
    /// Bytes relayed: `in` from clients to sources, `out` back.
    pub bytes: InOut,
    /// Streams (and UDP flows).
    pub connections: Streams,
}

/// Bytes each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InOut {
    /// From clients to sources.
    #[serde(rename = "in")]
    pub into: u64,
    /// From sources to clients.
    pub out: u64,
}

/// Streams in one interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Streams {
    /// Opened during it.
    pub opened: u64,
    /// Refused or failed during it.
    pub failed: u64,
    /// Open at its end.
    pub active: u64,
}

/// The router's running totals a sample is taken from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Tally {
    bytes_up: u64,
    bytes_down: u64,
    opened: u64,
    failed: u64,
    active: u64,
}

impl From<&Totals> for Tally {
    fn from(t: &Totals) -> Self {
        Self {
            bytes_up: t.bytes_up,
            bytes_down: t.bytes_down,
            opened: t.opened,
            failed: t.failed,
            active: t.active,
        }
    }
}

impl Sample {
    /// What moved between `before` and `now`, `secs` apart, ending `at`.
    fn between(before: &Tally, now: &Tally, secs: f64, at: SystemTime) -> Self {
        Self {
            at,
            secs: (secs * 1000.0).round() / 1000.0,
            bytes: InOut {
                into: now.bytes_up.saturating_sub(before.bytes_up),
                out: now.bytes_down.saturating_sub(before.bytes_down),
            },
            connections: Streams {
                opened: now.opened.saturating_sub(before.opened),
                failed: now.failed.saturating_sub(before.failed),
                active: now.active,
            },
        }
    }

    /// Whether the sample could have been taken: its interval is a length of time,
    /// at most [`MAX_SAMPLE_SECS`], that began after 1970.
    fn check(&self) -> Result<(), String> {
        if !(self.secs.is_finite() && self.secs >= 0.0) {
            return Err(format!(
                "secs is {}, not a length of time in seconds",
                self.secs
            ));
        }
        if self.secs > 0.0 && self.secs < 0.001 {
            // Written in milliseconds: a shorter one was never taken, and its rates
            // would overflow to infinity.
            return Err(format!(
                "secs is {:e}, less than the millisecond samples are written in",
                self.secs
            ));
        }
        if self.secs > MAX_SAMPLE_SECS {
            return Err(format!(
                "secs is {}, more than the {MAX_SAMPLE_SECS} seconds (a year) a sample can span",
                self.secs
            ));
        }
        if self.start().is_none() {
            return Err(format!(
                "secs is {}, so the interval would have begun before 1970",
                self.secs
            ));
        }
        Ok(())
    }

    /// When the interval began: `at` less `secs`; `None` when that is before 1970
    /// (or `secs` is not a length of time), which no sample taken can be.
    pub fn start(&self) -> Option<SystemTime> {
        let secs = Duration::try_from_secs_f64(self.secs).ok()?;
        self.at.checked_sub(secs).filter(|t| *t >= UNIX_EPOCH)
    }

    /// Bits a second each way over the interval.
    pub fn rates(&self) -> (f64, f64) {
        let per = |b: u64| {
            if self.secs > 0.0 {
                b as f64 * 8.0 / self.secs
            } else {
                0.0
            }
        };
        (per(self.bytes.into), per(self.bytes.out))
    }
}

/// The samples kept, oldest first.
pub struct History {
    settings: HistorySettings,
    samples: Mutex<VecDeque<Sample>>,
    /// Lines in the file now (samples kept there, and any it had to skip).
    lines: Mutex<usize>,
}

impl History {
    /// A history with the samples `settings.file` holds (the latest `keep`), and
    /// what was wrong with the file, if anything: a line that is not a sample is
    /// skipped; a file that cannot be read or written is an error.
    pub fn open(settings: HistorySettings) -> Result<(Arc<Self>, Option<String>), String> {
        let mut samples = VecDeque::new();
        let mut lines = 0;
        let mut skipped = None;
        let mut more_skipped = 0usize;
        if let Some(path) = &settings.file {
            if let Some(e) = crate::config::a_directory_for_a_file(path, EXAMPLE_NAME) {
                return Err(format!("api.history_file {e}"));
            }
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(cannot(path, "read", &e)),
            };
            for (i, line) in text.lines().enumerate() {
                lines += 1;
                let sample = serde_json::from_str::<Sample>(line)
                    .map_err(|e| e.to_string())
                    .and_then(|s| s.check().map(|()| s));
                match sample {
                    Ok(s) => samples.push_back(s),
                    Err(e) if skipped.is_none() => {
                        skipped = Some(format!(
                            "traffic history file {} line {} is not a sample ({e}); skipped",
                            path.display(),
                            i + 1
                        ));
                    }
                    Err(_) => more_skipped += 1,
                }
            }
            if let Some(first) = &mut skipped
                && more_skipped > 0
            {
                first.push_str(&format!(
                    ", with {more_skipped} more line(s) that are not samples either"
                ));
            }
            // Newest last, whatever order the lines were in (a file edited or put
            // together by hand): the API lists them newest first.
            samples.make_contiguous().sort_by_key(|s| s.at);
            while samples.len() > settings.keep {
                samples.pop_front();
            }
            // Fail now, not at the first sample, when it cannot be written.
            append(path, "").map_err(|e| cannot(path, "write", &e))?;
        }
        let me = Arc::new(Self {
            settings,
            samples: Mutex::new(samples),
            lines: Mutex::new(lines),
        });
        Ok((me, skipped))
    }

    /// Time between samples.
    pub fn interval(&self) -> Duration {
        self.settings.interval
    }

    /// The samples that ended within `window` before `now` (all, without one),
    /// newest first.
    pub fn newest_first(&self, window: Option<Duration>, now: SystemTime) -> Vec<Sample> {
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        samples
            .iter()
            .rev()
            .take_while(|s| {
                window.is_none_or(|w| now.duration_since(s.at).unwrap_or_default() <= w)
            })
            .cloned()
            .collect()
    }

    /// Keeps `sample`, and appends it to the file; rewrites the file with the
    /// samples kept once it holds twice as many lines.
    fn record(&self, sample: Sample) -> Result<(), String> {
        let text = line(&sample);
        let kept = {
            let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
            samples.push_back(sample);
            while samples.len() > self.settings.keep {
                samples.pop_front();
            }
            samples.len()
        };
        let Some(path) = &self.settings.file else {
            return Ok(());
        };
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if *lines + 1 > self.settings.keep.saturating_mul(2) {
            // Only now are the kept samples written out: not copied every interval.
            let all: String = {
                let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
                samples.iter().map(line).collect()
            };
            rewrite(path, &all).map_err(|e| cannot(path, "rewrite", &e))?;
            *lines = kept;
        } else {
            append(path, &text).map_err(|e| cannot(path, "write", &e))?;
            *lines += 1;
        }
        Ok(())
    }
}

/// Takes a sample of `dp`'s totals every interval, for as long as the runtime runs.
pub async fn run(history: Arc<History>, dp: Arc<DataPlane>) {
    let every = history.interval();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut before = Tally::from(&dp.totals());
    let mut then = std::time::Instant::now();
    // Said once until writing works again, not every interval.
    let mut failing = false;
    loop {
        tick.tick().await;
        let now = Tally::from(&dp.totals());
        let secs = then.elapsed().as_secs_f64();
        then = std::time::Instant::now();
        let sample = Sample::between(&before, &now, secs, SystemTime::now());
        before = now;
        let history = history.clone();
        let res = tokio::task::spawn_blocking(move || history.record(sample))
            .await
            .unwrap_or_else(|e| Err(format!("the history task failed: {e}")));
        match res {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                failing = true;
                warn!("{e}; the samples stay in memory");
            }
            Err(_) => {}
        }
    }
}

fn line(s: &Sample) -> String {
    let mut l = serde_json::to_string(s).unwrap_or_default();
    l.push('\n');
    l
}

fn append(path: &Path, text: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(text.as_bytes())
}

/// Replaces the file's content at once: written beside it, then renamed over it.
fn rewrite(path: &Path, text: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// A name for a history file, for the example given when a directory is named.
pub(crate) const EXAMPLE_NAME: &str = "history.jsonl";

fn cannot(path: &Path, what: &str, e: &std::io::Error) -> String {
    format!(
        "cannot {what} the traffic history file {}: {e}; fix its directory or permissions, \
         or leave api.history_file unset to keep the history in memory only",
        path.display()
    )
}

/// RFC 3339 timestamps (UTC, whole seconds) for `SystemTime`.
mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_seconds(*t))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(up: u64, down: u64, opened: u64, failed: u64, active: u64) -> Tally {
        Tally {
            bytes_up: up,
            bytes_down: down,
            opened,
            failed,
            active,
        }
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn settings(keep: usize, file: Option<PathBuf>) -> HistorySettings {
        HistorySettings {
            interval: Duration::from_secs(60),
            keep,
            file,
        }
    }

    #[test]
    fn a_sample_is_what_moved_since_the_last() {
        let s = Sample::between(
            &totals(1000, 50, 3, 1, 2),
            &totals(7000, 1050, 10, 1, 4),
            2.0004,
            at(0),
        );
        assert_eq!(s.secs, 2.0);
        assert_eq!(
            s.bytes,
            InOut {
                into: 6000,
                out: 1000
            }
        );
        assert_eq!(
            s.connections,
            Streams {
                opened: 7,
                failed: 0,
                active: 4
            }
        );
        assert_eq!(s.rates(), (24_000.0, 4_000.0));
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"at":"2027-01-15T08:00:00Z","secs":2.0,"bytes":{"in":6000,"out":1000},"connections":{"opened":7,"failed":0,"active":4}}"#
        );
    }

    /// A directory named as the history file is refused in the words `config
    /// validate` uses.
    #[test]
    fn a_history_file_that_is_a_directory_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let shown = dir.path().display();
        assert_eq!(
            History::open(settings(3, Some(dir.path().to_owned()))).err(),
            Some(format!(
                "api.history_file {shown} is a directory: give a file in it, such as \
                 {shown}/history.jsonl"
            ))
        );
    }

    #[test]
    fn the_newest_samples_are_kept_and_read_within_a_window() {
        let (h, _) = History::open(settings(3, None)).unwrap();
        for i in 0..5 {
            h.record(Sample::between(
                &totals(0, 0, 0, 0, 0),
                &totals(i, 0, 0, 0, 0),
                60.0,
                at(i * 60),
            ))
            .unwrap();
        }
        let all: Vec<u64> = h
            .newest_first(None, at(240))
            .iter()
            .map(|s| s.bytes.into)
            .collect();
        assert_eq!(all, [4, 3, 2]);
        let recent = h.newest_first(Some(Duration::from_secs(60)), at(240));
        assert_eq!(
            recent.iter().map(|s| s.bytes.into).collect::<Vec<_>>(),
            [4, 3]
        );
    }

    #[test]
    fn the_file_keeps_the_history_across_restarts_and_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        let (h, skipped) = History::open(settings(2, Some(path.clone()))).unwrap();
        assert_eq!(skipped, None);
        let sample =
            |i: u64| Sample::between(&totals(0, 0, 0, 0, 0), &totals(i, 0, 0, 0, 0), 60.0, at(i));
        for i in 1..=4 {
            h.record(sample(i)).unwrap();
        }
        // Four lines: at twice `keep`, not beyond.
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 4);
        h.record(sample(5)).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2);
        drop(h);

        // Started again: the samples come back, a bad line is skipped and named, and
        // so is an impossible one.
        append(&path, "not json\n").unwrap();
        let mut impossible = serde_json::to_value(sample(6)).unwrap();
        impossible["secs"] = serde_json::json!(-5);
        append(&path, &format!("{impossible}\n")).unwrap();
        let (h, skipped) = History::open(settings(2, Some(path.clone()))).unwrap();
        let back: Vec<u64> = h
            .newest_first(None, at(10))
            .iter()
            .map(|s| s.bytes.into)
            .collect();
        assert_eq!(back, [5, 4]);
        let skipped = skipped.unwrap();
        assert!(
            skipped.starts_with(&format!(
                "traffic history file {} line 3 is not a sample (",
                path.display()
            )),
            "{skipped}"
        );
        drop(h);

        // The impossible line alone: skipped with its reason.
        let text = std::fs::read_to_string(&path).unwrap();
        let kept: Vec<&str> = text.lines().filter(|l| *l != "not json").collect();
        std::fs::write(&path, kept.join("\n") + "\n").unwrap();
        let (h, skipped) = History::open(settings(2, Some(path.clone()))).unwrap();
        assert_eq!(
            skipped.as_deref(),
            Some(
                format!(
                    "traffic history file {} line 3 is not a sample (secs is -5, not a length \
                     of time in seconds); skipped",
                    path.display()
                )
                .as_str()
            )
        );
        let back: Vec<u64> = h
            .newest_first(None, at(10))
            .iter()
            .map(|s| s.bytes.into)
            .collect();
        assert_eq!(back, [5, 4]);
    }

    /// Lines no router writes: an interval longer than a year, or one that would
    /// have begun before 1970. Skipped with their reason, not kept to panic later.
    #[test]
    fn a_sample_spanning_more_than_a_year_or_from_before_1970_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        let good = r#"{"at":"2027-01-15T08:00:00Z","secs":60.0,"bytes":{"in":1,"out":2},"connections":{"opened":0,"failed":0,"active":0}}"#;
        let huge = r#"{"at":"2027-01-15T08:01:00Z","secs":1.9e19,"bytes":{"in":3,"out":4},"connections":{"opened":0,"failed":0,"active":0}}"#;
        let early = r#"{"at":"1970-01-01T00:01:00Z","secs":120.0,"bytes":{"in":5,"out":6},"connections":{"opened":0,"failed":0,"active":0}}"#;
        for (bad, why) in [
            (
                huge,
                "secs is 19000000000000000000, more than the 31622400 seconds (a year) a \
                 sample can span",
            ),
            (
                early,
                "secs is 120, so the interval would have begun before 1970",
            ),
        ] {
            std::fs::write(&path, format!("{good}\n{bad}\n")).unwrap();
            let (h, skipped) = History::open(settings(10, Some(path.clone()))).unwrap();
            assert_eq!(
                skipped,
                Some(format!(
                    "traffic history file {} line 2 is not a sample ({why}); skipped",
                    path.display()
                ))
            );
            let kept = h.newest_first(None, at(0));
            assert_eq!(kept.iter().map(|s| s.bytes.into).collect::<Vec<_>>(), [1]);
        }
    }

    /// A file put together by hand: lines out of order are listed newest first, a
    /// sample shorter than a millisecond (whose rates would be infinite) is skipped,
    /// and every line skipped is counted in the one warning.
    #[test]
    fn samples_out_of_order_are_sorted_and_every_line_skipped_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        let line = |at: &str, secs: &str, into: u64| {
            format!(
                r#"{{"at":"{at}","secs":{secs},"bytes":{{"in":{into},"out":0}},"connections":{{"opened":0,"failed":0,"active":0}}}}"#
            )
        };
        let text = [
            line("2027-01-15T08:02:00Z", "60.0", 2),
            line("2027-01-15T08:03:00Z", "1e-300", 18_446_744_073_709_551_615),
            line("2027-01-15T08:01:00Z", "60.0", 1),
            "not json".to_owned(),
            line("2027-01-15T08:04:00Z", "0.0", 4),
            line("2027-01-15T08:03:00Z", "-5", 3),
        ]
        .join("\n");
        std::fs::write(&path, text + "\n").unwrap();
        let (h, skipped) = History::open(settings(10, Some(path.clone()))).unwrap();
        assert_eq!(
            skipped,
            Some(format!(
                "traffic history file {} line 2 is not a sample (secs is 1e-300, less than the \
                 millisecond samples are written in); skipped, with 2 more line(s) that are not \
                 samples either",
                path.display()
            ))
        );
        let kept = h.newest_first(None, at(2_000_000_000));
        assert_eq!(
            kept.iter().map(|s| s.bytes.into).collect::<Vec<_>>(),
            [4, 2, 1]
        );
        assert!(kept.iter().all(|s| s.rates().0.is_finite()));
    }

    #[test]
    fn a_sample_starts_its_secs_before_its_end() {
        let s = Sample::between(&totals(0, 0, 0, 0, 0), &totals(0, 0, 0, 0, 0), 60.0, at(60));
        assert_eq!(s.start(), Some(at(0)));
        let huge = Sample {
            secs: 1.9e19,
            ..s.clone()
        };
        assert_eq!(huge.start(), None);
        let negative = Sample { secs: -1.0, ..s };
        assert_eq!(negative.start(), None);
    }

    #[test]
    fn a_file_that_cannot_be_written_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("history.jsonl");
        let err = History::open(settings(2, Some(path.clone())))
            .err()
            .unwrap();
        assert!(
            err.starts_with(&format!(
                "cannot write the traffic history file {}: ",
                path.display()
            )) && err.ends_with(
                "; fix its directory or permissions, or leave api.history_file unset to keep \
                     the history in memory only"
            ),
            "{err}"
        );
    }
}
