//! Logs go to stderr: text for people, JSON for collectors. stdout carries only the
//! lines a user (or a script) waits for.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::args::{LogArgs, LogFormat};

pub(crate) fn init(args: &LogArgs) -> Result<(), String> {
    let directives = match args.log_level.as_str() {
        // Plain levels keep the TLS library's chatter down.
        l @ ("error" | "warn" | "info" | "debug" | "trace") => format!("{l},rustls=warn"),
        other => other.to_owned(),
    };
    let filter = EnvFilter::try_new(&directives)
        .map_err(|e| format!("invalid --log-level {:?}: {e}", args.log_level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let res = match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    res.map_err(|e| format!("cannot start logging: {e}"))
}
