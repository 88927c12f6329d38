//! Which environment variable gave a value clap refused: its message names only the
//! flag (`invalid value 'xml' for '--log-format <FORMAT>'`), which the user may never
//! have typed.

use clap::CommandFactory;
use clap::error::{ContextKind, ContextValue, ErrorKind};

use crate::args::Cli;

/// `note: …` naming the variable the refused value came from, when it came from one.
pub(crate) fn for_error(e: &clap::Error) -> Option<String> {
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return None;
    }
    let text = |kind| match e.get(kind)? {
        ContextValue::String(s) => Some(s.clone()),
        _ => None,
    };
    let arg = text(ContextKind::InvalidArg)?;
    let value = text(ContextKind::InvalidValue)?;
    let long = arg
        .split_whitespace()
        .next()?
        .strip_prefix("--")?
        .to_owned();
    let given = |a: String| a == format!("--{long}") || a.starts_with(&format!("--{long}="));
    if std::env::args().any(given) {
        return None;
    }
    let var = env_of(&Cli::command(), &long)?;
    (std::env::var_os(&var)? == value.as_str()).then(|| {
        format!("note: the value comes from the environment variable {var}; fix or unset it")
    })
}

/// The variable `--long` reads, in `cmd` or any of its subcommands.
fn env_of(cmd: &clap::Command, long: &str) -> Option<String> {
    cmd.get_arguments()
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_env())
        .map(|v| v.to_string_lossy().into_owned())
        .or_else(|| cmd.get_subcommands().find_map(|s| env_of(s, long)))
}
