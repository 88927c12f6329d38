//! `conduit config init`, `conduit config validate` and `conduit config show`.
//!
//! Problems go to stderr, one a line (`error: tunnels[1].bind: …`, `warning: …`), errors
//! first; when there is an error a summary follows and the exit code is 64. A file that
//! cannot be loaded at all with one reason (missing, one syntax error) gets just that
//! reason: `conduit: error: no configuration file at …`. What the user asked for (the
//! "valid" line, the shown configuration) goes to stdout.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use conduit_controlplane::Home;
use conduit_controlplane::config::{
    self, Env, Format, Loaded, Origin, Problem, Report, Role, Severity, Sources,
};

use super::say;
use crate::args::{ConfigArgs, LogArgs, LogFormat, ShowFormat};
use crate::exit::Usage;
use crate::output;

/// The documented example files, which a test keeps naming every key.
const CLIENT_EXAMPLE: &str = include_str!("../../../deploy/conduit.example.toml");
const ROUTER_EXAMPLE: &str = include_str!("../../../deploy/router.example.toml");

/// Writes the example file for a client (or a router) to `file`, mode 0600 (it may
/// come to hold a token), never over an existing file unless `force`.
pub(crate) fn init(file: Option<PathBuf>, router: bool, force: bool) -> Result<()> {
    let (text, default) = match router {
        false => (CLIENT_EXAMPLE, "conduit.toml"),
        true => (ROUTER_EXAMPLE, "router.toml"),
    };
    let path = file.unwrap_or_else(|| default.into());
    if path.as_os_str() == "-" {
        output::try_write(text.as_bytes())?;
        return Ok(());
    }
    if let Some(why) = conduit_controlplane::config::a_directory_for_a_file(&path, default) {
        return Err(Usage(format!("-f {why}")).into());
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let shown = path.display();
    let mut f = opts.open(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => Usage(format!(
            "{shown} already exists; use --force to replace it, or give another file with -f"
        )),
        _ => Usage(format!(
            "cannot write {shown}: {e}; give -f a file in a directory this user may write to"
        )),
    })?;
    // A file replaced with --force keeps its inode, and so its mode: set it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Usage(format!("cannot make {shown} private (mode 0600): {e}")))?;
    }
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| Usage(format!("cannot write {shown}: {e}")))?;
    let next = match router {
        false => format!(
            "set [router] host and public_key (what `conduit init --name router` printed on \
             the router) and your [[tunnels]], then check it: conduit config validate -f \
             {shown}; run it: conduit up -f {shown}"
        ),
        true => format!(
            "set [router] bind and allow (the sources clients may open), then check it: \
             conduit config validate --router -f {shown}; run it: conduit router --config \
             {shown}"
        ),
    };
    say(format_args!("wrote {shown} (mode 0600): {next}"));
    Ok(())
}

pub(crate) fn validate(home: Home, a: ConfigArgs, format: ShowFormat) -> Result<()> {
    let (role, sources) = sources(home, a);
    let name = sources.file.display().to_string();
    let summary = match role {
        Role::Client => config::load_client(&sources).map(|l| {
            let n = l.config.tunnels.len();
            let what = format!("{n} tunnel{}", if n == 1 { "" } else { "s" });
            (l.report, what)
        }),
        Role::Router => config::load_router(&sources).map(|l| {
            let what = format!("a router listening on {}", l.config.router.bind);
            (l.report, what)
        }),
    };
    if format == ShowFormat::Json {
        let (report, what) = match &summary {
            Ok((report, what)) => (report, Some(what.as_str())),
            Err(report) => (report, None),
        };
        let doc = validation_json(&name, role, report, what);
        output::try_write(format!("{doc:#}\n").as_bytes())?;
        return match (what, report.problems.as_slice()) {
            (None, [only]) => Err(Usage(only.to_string()).into()),
            (None, _) => fail(&name, role, report),
            (Some(_), _) if report.has_errors() => fail(&name, role, report),
            (Some(_), _) => Ok(()),
        };
    }
    let (report, what) = match summary {
        Ok(x) => x,
        Err(report) => return unreadable(&name, role, &report),
    };
    print_problems(&report);
    if report.has_errors() {
        return fail(&name, role, &report);
    }
    say(format_args!("{name} is valid: {what}"));
    Ok(())
}

/// `config validate --format json`: whether `name` is valid (`what` it holds, when
/// it could be loaded at all), and every problem found.
fn validation_json(
    name: &str,
    role: Role,
    report: &Report,
    what: Option<&str>,
) -> serde_json::Value {
    let problems: Vec<serde_json::Value> = (report.problems.iter())
        .map(|p| {
            serde_json::json!({
                "severity": match p.severity {
                    Severity::Error => "error",
                    Severity::Warning => "warning",
                },
                "path": p.path,
                "message": p.shown_message(),
                "origin": p.origin.as_ref().map(ToString::to_string),
            })
        })
        .collect();
    serde_json::json!({
        "file": name,
        "role": match role {
            Role::Client => "client",
            Role::Router => "router",
        },
        "valid": what.is_some() && !report.has_errors(),
        "summary": what,
        "errors": report.errors().count(),
        "warnings": report.warnings().count(),
        "problems": problems,
    })
}

pub(crate) fn show(home: Home, a: ConfigArgs, format: ShowFormat, log: &LogArgs) -> Result<()> {
    let (role, sources) = sources(home, a);
    let name = sources.file.display().to_string();
    let format = match format {
        ShowFormat::Text => Format::Text,
        ShowFormat::Json => Format::Json,
    };
    let shown =
        match role {
            Role::Client => config::load_client(&sources)
                .map(|l| (config::show_client(&l, format), report_of(l))),
            Role::Router => config::load_router(&sources)
                .map(|l| (config::show_router(&l, format), report_of(l))),
        };
    let (text, report) = match shown {
        Ok(x) => x,
        Err(report) => return unreadable(&name, role, &report),
    };
    print_problems(&report);
    // With errors the configuration shown would not be the one that runs (a bad value
    // is left out): only the problems are printed.
    if report.has_errors() {
        return fail(&name, role, &report);
    }
    for note in log_notes(log) {
        eprintln!("{note}");
    }
    output::write(text);
    Ok(())
}

/// What the global `--log-level`/`--log-format` (or `CONDUIT_LOG_LEVEL`/`_FORMAT`)
/// change in what is shown: they win over `[logging]` for the router and for every
/// tunnel `up` starts, but are not keys of the file (a level may be a tracing filter).
fn log_notes(log: &LogArgs) -> Vec<String> {
    let given = |flag: &str| {
        std::env::args_os().any(|a| {
            let a = a.to_string_lossy();
            a == flag || a.starts_with(&format!("{flag}="))
        })
    };
    let mut notes = Vec::new();
    let mut note = |key: &str, flag: &str, var: &str, value: &str| {
        let from = match given(flag) {
            true => format!("{flag} {value}"),
            false => format!("{var}={value}"),
        };
        notes.push(format!(
            "note: {from} wins over the {key} shown, for the router and for the tunnels `up` \
             starts"
        ));
    };
    if let Some(level) = &log.log_level {
        note("logging.level", "--log-level", "CONDUIT_LOG_LEVEL", level);
    }
    if let Some(format) = log.log_format {
        let value = match format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        };
        note(
            "logging.format",
            "--log-format",
            "CONDUIT_LOG_FORMAT",
            value,
        );
    }
    notes
}

fn sources(home: Home, a: ConfigArgs) -> (Role, Sources) {
    let role = if a.router { Role::Router } else { Role::Client };
    let default = match role {
        Role::Client => "conduit.toml",
        Role::Router => "router.toml",
    };
    let sources = Sources {
        file: a.file.unwrap_or_else(|| default.into()),
        file_flag: "-f",
        contents: None,
        env: Env::from_process(),
        overrides: a.set,
        home,
    };
    (role, sources)
}

fn report_of<T>(l: Loaded<T>) -> Report {
    l.report
}

pub(crate) fn print_problems(report: &Report) {
    for p in &report.problems {
        eprintln!("{}", line(p));
    }
}

fn line(p: &Problem) -> String {
    let kind = match p.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    };
    format!("{kind}: {p}")
}

/// Nothing could be loaded: a single problem (no file, not UTF-8, one syntax error) is
/// the error itself; several are listed, then summed up.
pub(crate) fn unreadable(name: &str, role: Role, report: &Report) -> Result<()> {
    if let [only] = report.problems.as_slice() {
        return Err(Usage(only.to_string()).into());
    }
    print_problems(report);
    fail(name, role, report)
}

/// The exit-64 error that follows the printed problems.
pub(crate) fn fail(name: &str, role: Role, report: &Report) -> Result<()> {
    let again = match role {
        Role::Client => format!("conduit config validate -f {name}"),
        Role::Router => format!("conduit config validate --router -f {name}"),
    };
    let (errors, warnings) = (report.errors().count(), report.warnings().count());
    if report.other_kind > 0 {
        let (kind, other) = match role {
            Role::Client => (
                "a router's",
                format!("conduit config validate --router -f {name}"),
            ),
            Role::Router => ("a client's", format!("conduit config validate -f {name}")),
        };
        return Err(Usage(format!(
            "{name} has {}, {} of them keys or sections of {kind} file: if that is what it \
             is, check it with `{other}`; otherwise fix them and run `{again}` again",
            plural(errors, "error"),
            report.other_kind,
        ))
        .into());
    }
    // Errors of values the environment or the command line gave are not the file's:
    // `validate -f FILE` alone would find it valid.
    let outside: Vec<String> = (report.errors())
        .filter_map(|p| match &p.origin {
            Some(Origin::Env(var)) => Some(var.clone()),
            Some(Origin::Cli(flag)) => Some(flag.clone()),
            _ => None,
        })
        .collect();
    if outside.len() == errors {
        return Err(Usage(format!(
            "{} in the settings given with {name} ({}); fix {} and run this command again",
            plural(errors, "error"),
            outside.join(", "),
            if errors == 1 { "it" } else { "them" }
        ))
        .into());
    }
    Err(Usage(format!(
        "{name} has {}{}; fix {} and run `{again}` again",
        plural(errors, "error"),
        if warnings > 0 {
            format!(" and {}", plural(warnings, "warning"))
        } else {
            String::new()
        },
        if errors == 1 { "it" } else { "them" }
    ))
    .into())
}

/// "1 error", "2 errors": `n` and `word`, plural unless `n` is 1.
pub(crate) fn plural<N: std::fmt::Display + PartialEq + From<u8>>(n: N, word: &str) -> String {
    let s = if n == N::from(1) { "" } else { "s" };
    format!("{n} {word}{s}")
}
