//! Logs go to stderr, or to a file (optionally rotated hourly or daily): text for
//! people, JSON for collectors. stdout carries only the lines a user (or a script)
//! waits for.
//!
//! Flags (and their `CONDUIT_LOG_*` variables) win over a router file's `[logging]`,
//! which wins over the defaults (info, text, stderr).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use conduit_controlplane::config::{self, LoggingConfig};
use tracing_appender::rolling::{RollingFileAppender, RollingWriter, Rotation};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

use crate::args::{LogArgs, LogFormat, LogRotation};

/// How to log, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogSettings {
    level: String,
    json: bool,
    file: Option<PathBuf>,
    /// How `file` was given, for messages: `--log-file` (or its `CONDUIT_LOG_FILE`),
    /// or the configuration's `logging.file`.
    file_named: &'static str,
    rotation: LogRotation,
    keep: usize,
}

impl LogArgs {
    /// The flags over `file` (a configuration's `[logging]`) over the defaults.
    pub(crate) fn settings(&self, file: Option<&LoggingConfig>) -> LogSettings {
        let d = LoggingConfig::default();
        let f = file.unwrap_or(&d);
        LogSettings {
            level: self
                .log_level
                .clone()
                .unwrap_or_else(|| f.level.as_str().to_owned()),
            json: match self.log_format {
                Some(fmt) => fmt == LogFormat::Json,
                None => f.format == config::LogFormat::Json,
            },
            file: self.log_file.clone().or_else(|| f.file.clone()),
            file_named: match self.log_file {
                Some(_) => "--log-file",
                None => "logging.file",
            },
            rotation: self.log_rotation.unwrap_or(match f.rotation {
                config::LogRotation::Never => LogRotation::Never,
                config::LogRotation::Hourly => LogRotation::Hourly,
                config::LogRotation::Daily => LogRotation::Daily,
            }),
            keep: self.log_keep.unwrap_or(f.keep),
        }
    }
}

/// The TLS, HTTP and gRPC libraries, whose chatter is kept down unless a filter
/// names them: at `trace` they would log every record, and connection pools' keys;
/// at `debug` the control client's each request (tower's buffer).
const QUIET: [&str; 6] = ["rustls", "hyper", "hyper_util", "h2", "tower", "tonic"];

/// The tracing filter `--log-level` stands for: a level (`warning` is `warn`), or a
/// filter as written; either way with the libraries of [`QUIET`] kept at `warn`
/// unless the filter names them, and a filter that sets no level for everything
/// else keeps the rest's warnings and errors (`foo=debug` alone, a typo perhaps,
/// would log nothing else at all). A single word that is no level is refused:
/// tracing would take it for a target and log nothing else.
fn directives(level: &str) -> Result<String, String> {
    let level_of = |word: &str| match word.trim().to_ascii_lowercase().as_str() {
        "warning" => Some("warn".to_owned()),
        l @ ("off" | "error" | "warn" | "info" | "debug" | "trace") => Some(l.to_owned()),
        _ => None,
    };
    let mut parts: Vec<String> = Vec::new();
    if level.contains(['=', ',']) {
        let given: Vec<&str> = level
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        if !given.iter().any(|p| level_of(p).is_some()) {
            parts.push("warn".to_owned());
        }
        parts.extend(
            given
                .iter()
                .map(|p| level_of(p).unwrap_or_else(|| (*p).to_owned())),
        );
    } else {
        parts.push(level_of(level).ok_or_else(|| {
            format!(
                "unknown log level {level} (--log-level, CONDUIT_LOG_LEVEL): use error, warn, \
                 info, debug or trace, or a filter like conduit=debug"
            )
        })?);
    }
    for lib in QUIET {
        let named = parts.iter().any(|p| {
            let target = p.split(['=', '[']).next().unwrap_or_default();
            target == lib || target.starts_with(&format!("{lib}::"))
        });
        if !named {
            parts.push(format!("{lib}=warn"));
        }
    }
    Ok(parts.join(","))
}

/// Where the process's log goes, once it is started: what [`fatal`] needs.
#[derive(Debug, Clone, Copy)]
struct Sink {
    json: bool,
    /// The log is written to stderr (no `--log-file`, or a file that stderr is
    /// too, as with a background tunnel started with `--log-file`).
    stderr: bool,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// The log file, when the log goes to one: shared by tracing and by the lines
/// [`copy_line`] writes into it.
static FILE: OnceLock<LogFile> = OnceLock::new();

#[derive(Clone)]
struct LogFile(Arc<RollingFileAppender>);

impl<'a> MakeWriter<'a> for LogFile {
    type Writer = RollingWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        self.0.make_writer()
    }
}

/// Writes `line` (a supervised tunnel's, already formatted) where this process logs:
/// its log file, else stderr. The line goes out in one write, its newline with it: lines of several tunnels (and
/// what they print on a stdout shared with this stderr) never run together.
pub(crate) fn copy_line(line: &str) {
    use std::io::Write;
    let mut whole = String::with_capacity(line.len() + 1);
    whole.push_str(line);
    whole.push('\n');
    let _ = match FILE.get() {
        Some(file) => file.make_writer().write_all(whole.as_bytes()),
        None => std::io::stderr().lock().write_all(whole.as_bytes()),
    };
}

pub(crate) fn init(s: &LogSettings) -> Result<(), String> {
    let directives = directives(&s.level)?;
    let filter = EnvFilter::try_new(&directives)
        .map_err(|e| format!("invalid --log-level {:?}: {e}", s.level))?;
    let (writer, ansi, to_stderr) = match &s.file {
        None => (
            BoxMakeWriter::new(std::io::stderr),
            std::io::stderr().is_terminal(),
            true,
        ),
        Some(path) => {
            let file = LogFile(Arc::new(file_writer(path, s)?));
            let _ = FILE.set(file.clone());
            // Rotated, the log is written to PATH.DATE, never stderr's PATH.
            let same = s.rotation == LogRotation::Never && is_stderr(path);
            (BoxMakeWriter::new(file), false, same)
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi)
        .with_target(false)
        // A line that cannot be written (stderr's reader gone, such as a killed
        // supervisor; a full disk) is lost: by default the subscriber reports it with
        // `eprintln!`, which panics when stderr is what failed, and the task that
        // logged (a tunnel's router link, its stop) died with it.
        .log_internal_errors(false);
    let res = if s.json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    res.map_err(|e| format!("cannot start logging: {e}"))?;
    let _ = SINK.set(Sink {
        json: s.json,
        stderr: to_stderr,
    });
    Ok(())
}

/// Records the error a process ends with in its log, where a reader of the log
/// needs it: always in a JSON log (a collector sees why the process stopped, as an
/// event with `fatal: true` and the `exit_code`), and in a text log written to a
/// file of its own. Returns whether stderr still needs the plain
/// `conduit: error: …` line: every time but when a JSON log is stderr itself, where
/// that line would be the one a collector cannot parse.
pub(crate) fn fatal(message: &str, exit_code: u8) -> bool {
    let Some(sink) = SINK.get() else {
        return true;
    };
    // A log filtered down to nothing (`--log-level off`) would swallow the event.
    if !tracing::enabled!(tracing::Level::ERROR) {
        return true;
    }
    if sink.json || !sink.stderr {
        tracing::error!(exit_code, fatal = true, "{message}");
    }
    !(sink.json && sink.stderr)
}

/// Whether stderr is the file at `path` (a background tunnel's stderr is its log).
#[cfg(unix)]
fn is_stderr(path: &Path) -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    match (std::fs::File::from(fd).metadata(), std::fs::metadata(path)) {
        (Ok(err), Ok(log)) => err.dev() == log.dev() && err.ino() == log.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn is_stderr(_: &Path) -> bool {
    false
}

fn file_writer(path: &std::path::Path, s: &LogSettings) -> Result<RollingFileAppender, String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{} {}: not a file name", s.file_named, path.display()))?;
    if let Some(e) = config::a_directory_for_a_file(path, "conduit.log") {
        return Err(format!("{} {e}", s.file_named));
    }
    // Made here, so a missing directory is made or refused with a clear error before the
    // appender looks for old files in it (it would print an unprefixed line instead).
    std::fs::create_dir_all(&dir).map_err(
        |e| match conduit_controlplane::home::file_in_the_way(&dir) {
            Some(file) => format!(
                "cannot create the log directory {}: {} is a file, not a directory; move it \
                 out of the way, or choose another {}",
                dir.display(),
                file.display(),
                s.file_named
            ),
            None => format!(
                "cannot create the log directory {}: {e}; create it with write access for \
                 this user, or choose another {}",
                dir.display(),
                s.file_named
            ),
        },
    )?;
    let rotation = match s.rotation {
        LogRotation::Never => Rotation::NEVER,
        LogRotation::Hourly => Rotation::HOURLY,
        LogRotation::Daily => Rotation::DAILY,
    };
    if s.keep > 0 && s.rotation != LogRotation::Never {
        // Not tracing-appender's own pruning: it deletes every file whose name starts
        // with the log's (`--log-file /etc/conduit/conduit` would take conduit.toml).
        keep_pruned(dir.clone(), name.to_owned(), s.keep);
    }
    RollingFileAppender::builder()
        .rotation(rotation)
        .filename_prefix(name)
        .build(&dir)
        .map_err(|e| {
            format!(
                "cannot write the log file {}: {e}; check that {} exists and is writable",
                path.display(),
                dir.display()
            )
        })
}

/// Deletes all but the newest `keep` rotated files of the log `name` in `dir` (and
/// the one being written), now and every minute, on a thread of its own.
fn keep_pruned(dir: PathBuf, name: String, keep: usize) {
    let spawned = std::thread::Builder::new()
        .name("conduit-log-prune".into())
        .spawn(move || {
            loop {
                prune(&dir, &name, keep);
                std::thread::sleep(std::time::Duration::from_secs(60));
            }
        });
    if let Err(e) = spawned {
        eprintln!("conduit: cannot start pruning old log files ({e}); they are kept");
    }
}

/// One pass of [`keep_pruned`]: only `NAME.YYYY-MM-DD` and `NAME.YYYY-MM-DD-HH`, the
/// names rotation gives, are candidates; their dates sort as their names do.
fn prune(dir: &std::path::Path, name: &str, keep: usize) {
    let mut rotated = rotated(dir, name);
    rotated.sort();
    let extra = rotated.len().saturating_sub(keep.saturating_add(1));
    for (_, path) in rotated.into_iter().take(extra) {
        let _ = std::fs::remove_file(path);
    }
}

/// The newest rotated file of the log `path` (`PATH.YYYY-MM-DD[-HH]`, the one being
/// written when rotation is on), if there is one.
pub(crate) fn newest_rotated(path: &std::path::Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    // The one written last: names of daily and hourly files (after a switch from one
    // to the other) do not sort by time.
    rotated(dir, name)
        .into_iter()
        .max_by_key(|(date, p)| {
            let written = std::fs::metadata(p).and_then(|m| m.modified()).ok();
            (written, date.clone())
        })
        .map(|(_, p)| p)
}

/// The rotated files of the log `name` in `dir`, each with its date.
fn rotated(dir: &std::path::Path, name: &str) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| {
            let file = e.file_name().into_string().ok()?;
            let date = file.strip_prefix(name)?.strip_prefix('.')?;
            rotation_date(date).then(|| (date.to_owned(), e.path()))
        })
        .collect()
}

/// `YYYY-MM-DD` or `YYYY-MM-DD-HH`.
fn rotation_date(s: &str) -> bool {
    matches!(s.len(), 10 | 13)
        && s.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 | 10 => b == b'-',
            _ => b.is_ascii_digit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_rotated_file_is_the_one_written_last() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("t.log");
        let at = |name: &str, secs: u64| {
            let f = std::fs::File::create(dir.path().join(name)).unwrap();
            f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
                .unwrap();
        };
        // Hourly until 13:00, then daily: the daily file's name sorts first.
        at("t.log.2026-12-06-12", 1_000);
        at("t.log.2026-12-06-13", 2_000);
        at("t.log.2026-12-06", 3_000);
        at("t.log.notadate", 4_000);
        assert_eq!(
            newest_rotated(&log),
            Some(dir.path().join("t.log.2026-12-06"))
        );
    }

    fn args() -> LogArgs {
        LogArgs {
            log_level: None,
            log_format: None,
            log_file: None,
            log_rotation: None,
            log_keep: None,
        }
    }

    #[test]
    fn levels_are_levels_and_other_single_words_are_refused() {
        let quiet = ",rustls=warn,hyper=warn,hyper_util=warn,h2=warn,tower=warn,tonic=warn";
        assert_eq!(directives("warning").unwrap(), format!("warn{quiet}"));
        assert_eq!(directives("Debug").unwrap(), format!("debug{quiet}"));
        assert_eq!(directives("info").unwrap(), format!("info{quiet}"));
        assert_eq!(
            directives("verbose").unwrap_err(),
            "unknown log level verbose (--log-level, CONDUIT_LOG_LEVEL): use error, warn, info, \
             debug or trace, or a filter like conduit=debug"
        );
        // A filter: the libraries stay quiet unless it names them, and the rest
        // keeps its warnings when it sets no level for everything.
        assert_eq!(
            directives("conduit=debug").unwrap(),
            format!("warn,conduit=debug{quiet}")
        );
        assert_eq!(
            directives("trace,conduit=trace").unwrap(),
            format!("trace,conduit=trace{quiet}")
        );
        assert_eq!(
            directives("info,rustls=debug").unwrap(),
            "info,rustls=debug,hyper=warn,hyper_util=warn,h2=warn,tower=warn,tonic=warn"
        );
        assert_eq!(
            directives("Warning, hyper_util::client=trace").unwrap(),
            "warn,hyper_util::client=trace,rustls=warn,hyper=warn,h2=warn,tower=warn,\
             tonic=warn"
        );
    }

    #[test]
    fn flags_win_over_the_file_which_wins_over_defaults() {
        let d = args().settings(None);
        assert_eq!(d.level, "info");
        assert!(!d.json);
        assert_eq!(d.file, None);
        let file = LoggingConfig {
            level: config::LogLevel::Debug,
            format: config::LogFormat::Json,
            file: Some("/var/log/conduit.log".into()),
            rotation: config::LogRotation::Daily,
            keep: 3,
        };
        let f = args().settings(Some(&file));
        assert_eq!(
            (f.level.as_str(), f.json, f.rotation, f.keep),
            ("debug", true, LogRotation::Daily, 3)
        );
        let mut a = args();
        a.log_level = Some("warn".into());
        a.log_format = Some(LogFormat::Text);
        let f = a.settings(Some(&file));
        assert_eq!((f.level.as_str(), f.json), ("warn", false));
        assert_eq!(f.file, Some(PathBuf::from("/var/log/conduit.log")));
        assert_eq!(f.file_named, "logging.file");
        a.log_file = Some("/var/log/flag.log".into());
        let f = a.settings(Some(&file));
        assert_eq!(
            (f.file, f.file_named),
            (Some(PathBuf::from("/var/log/flag.log")), "--log-file")
        );
    }

    /// A directory named as the log file is refused under the name it was given:
    /// the flag, or the file's setting (the user may have passed no flag at all).
    #[test]
    fn a_log_file_that_is_a_directory_is_named_as_it_was_given() {
        let dir = tempfile::tempdir().unwrap();
        let shown = dir.path().display();
        let file = LoggingConfig {
            file: Some(dir.path().to_owned()),
            ..LoggingConfig::default()
        };
        let s = args().settings(Some(&file));
        assert_eq!(
            file_writer(dir.path(), &s).err(),
            Some(format!(
                "logging.file {shown} is a directory: give a file in it, such as \
                 {shown}/conduit.log"
            ))
        );
        let mut a = args();
        a.log_file = Some(dir.path().to_owned());
        let s = a.settings(None);
        assert_eq!(
            file_writer(dir.path(), &s).err(),
            Some(format!(
                "--log-file {shown} is a directory: give a file in it, such as \
                 {shown}/conduit.log"
            ))
        );
    }

    /// `--log-keep 2` keeps two rotated files besides the one being written, and a
    /// missing directory is made.
    #[test]
    fn keep_counts_rotated_files_and_the_directory_is_made() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join("not").join("yet");
        let path = dir.join("router.log");
        let mut s = args().settings(None);
        s.rotation = LogRotation::Daily;
        s.keep = 2;
        drop(file_writer(&path, &s).unwrap());
        assert!(dir.is_dir());
        let days = ["2020-01-01", "2020-01-02", "2020-01-03", "2020-01-04-13"];
        for day in days {
            std::fs::write(dir.join(format!("router.log.{day}")), day).unwrap();
        }
        // Files that only share the name's start are never the log's.
        let others = [
            "router.log.bak",
            "router.log.toml",
            "routers.conf",
            "router.log",
        ];
        for other in others {
            std::fs::write(dir.join(other), other).unwrap();
        }
        prune(&dir, "router.log", 2);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        // The appender's own file, of today: the newest, so kept.
        let today: Vec<String> = left
            .extract_if(.., |f| {
                f.strip_prefix("router.log.")
                    .is_some_and(|d| rotation_date(d) && !days.contains(&d))
            })
            .collect();
        assert_eq!(today.len(), 1, "{today:?}");
        assert_eq!(
            left,
            [
                "router.log",
                "router.log.2020-01-03",
                "router.log.2020-01-04-13",
                "router.log.bak",
                "router.log.toml",
                "routers.conf"
            ]
        );
    }
}
