//! `conduit`: the command line. Parses arguments into typed settings, runs the
//! command, maps errors to exit codes. The logic lives in the library crates.
#![forbid(unsafe_code)]

mod args;
mod commands;
mod env_hint;
mod exit;
mod key_hint;
mod logging;
mod output;

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match args::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version requests are not errors, unless they cannot be written.
            let code = if e.use_stderr() { exit::USAGE } else { 0 };
            return match e.print() {
                Ok(()) => {
                    let note = env_hint::for_error(&e).or_else(|| key_hint::for_error(&e));
                    if let Some(note) = note {
                        let _ = writeln!(std::io::stderr(), "{note}");
                    }
                    ExitCode::from(code)
                }
                Err(_) if e.use_stderr() => ExitCode::from(code),
                Err(w) => {
                    // A reader that went away (`conduit --help | head -1`) needs no message.
                    if w.kind() != std::io::ErrorKind::BrokenPipe {
                        let _ = writeln!(
                            std::io::stderr(),
                            "conduit: error: cannot write to stdout: {w}"
                        );
                    }
                    ExitCode::from(exit::IOERR)
                }
            };
        }
    };
    // Files Conduit creates (logs, registry entries, the traffic history, service
    // files) are never writable by the group nor readable by others, whatever the
    // shell's umask (a stricter one is kept); keys and other files of trusted keys
    // get their own modes besides.
    #[cfg(unix)]
    {
        use nix::sys::stat::{Mode, umask};
        let shell = umask(Mode::from_bits_truncate(0o027));
        umask(shell | Mode::from_bits_truncate(0o027));
    }
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A reader that went away (`conduit list | head -1`) needs no message.
            let reader_gone = e
                .downcast_ref::<output::StdoutError>()
                .is_some_and(output::StdoutError::reader_gone);
            let code = exit::code_for(&e);
            // Every error message is complete on its own; the source chain would
            // repeat it. Nothing is left to tell if stderr cannot take it either.
            if !reader_gone && logging::fatal(&e.to_string(), code) {
                let _ = writeln!(std::io::stderr(), "conduit: error: {e}");
            }
            ExitCode::from(code)
        }
    }
}
