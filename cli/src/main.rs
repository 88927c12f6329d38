//! `conduit`: the command line. Parses arguments into typed settings, runs the
//! command, maps errors to exit codes. The logic lives in the library crates.
#![forbid(unsafe_code)]

mod args;
mod commands;
mod exit;
mod logging;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match args::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version requests are not errors.
            let code = if e.use_stderr() { exit::USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    if let Err(e) = logging::init(&cli.log) {
        eprintln!("conduit: {e}");
        return ExitCode::from(exit::USAGE);
    }
    match commands::run(cli.command, &cli.log) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Every error message is complete on its own; the source chain would repeat it.
            eprintln!("conduit: error: {e}");
            ExitCode::from(exit::code_for(&e))
        }
    }
}
