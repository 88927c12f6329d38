//! One module per command.

mod config;
mod down;
mod init;
mod keys;
mod kill;
mod list;
mod router;
mod service;
mod start;
mod status;
mod tune;
mod tunnels;
mod up;
mod version;

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::Result;
use conduit_controlplane::Home;
use conduit_dataplane::Options;

use crate::args::{Command, ConfigCommand, EngineArgs, KeysCommand, LogArgs};
use crate::exit::Usage;

pub(crate) fn run(command: Command, log: &LogArgs) -> Result<()> {
    match command {
        Command::Init(a) => init::run(&home()?, &a),
        Command::Keys(KeysCommand::Show { name }) => keys::show(&home()?, &name),
        Command::Config(ConfigCommand::Validate(a)) => config::validate(home()?, a),
        Command::Config(ConfigCommand::Show { args, format }) => {
            config::show(home()?, args, format)
        }
        Command::Router(a) => router::run(&home()?, a),
        Command::Start(a) => start::run(&home()?, a, log),
        Command::Up(a) => up::run(&home()?, a, log),
        Command::Down(a) => down::run(&home()?, &a),
        Command::List(a) => list::run(&home()?, &a),
        Command::Status(a) => status::run(&home()?, &a),
        Command::Kill(a) => kill::run(&home()?, &a),
        Command::Tune(a) => tune::run(&a),
        Command::Version => version::run(),
    }
}

fn home() -> Result<Home> {
    Ok(Home::from_env()?)
}

/// A Tokio runtime for the control plane: small, since the data plane has the cores.
fn runtime(threads: usize) -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("conduit-control")
        .enable_all()
        .build()?)
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Parses a local listening address (`127.0.0.1:8080`, `[::]:80`, `localhost:8080`).
fn listen_addr(flag: &str, s: &str) -> Result<SocketAddr> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    if let Some(a) = s.to_socket_addrs().ok().and_then(|mut a| a.next()) {
        return Ok(a);
    }
    Err(Usage(format!(
        "invalid {flag} {s:?}: expected ADDRESS:PORT such as 127.0.0.1:8080 or 0.0.0.0:80"
    ))
    .into())
}

/// Checks a remote `HOST:PORT` without resolving it (the router may see other names).
fn remote_addr(flag: &str, s: &str) -> Result<String> {
    let ok = match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0),
        None => false,
    };
    if ok {
        Ok(s.to_owned())
    } else {
        Err(Usage(format!(
            "invalid {flag} {s:?}: expected HOST:PORT such as 10.2.0.2:8080 or db.internal:5432"
        ))
        .into())
    }
}

fn dataplane_options(e: &EngineArgs) -> Options {
    Options {
        workers: e.workers,
        engine: e.io_engine,
        pin: e.pin_cores,
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Prints a line on stdout right away (scripts and tests wait for these lines).
fn say(line: impl std::fmt::Display) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked_with_the_fix_in_the_message() {
        assert_eq!(
            listen_addr("--bind", "127.0.0.1:0").unwrap(),
            "127.0.0.1:0".parse::<SocketAddr>().unwrap()
        );
        let e = listen_addr("--bind", "nonsense").unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid --bind \"nonsense\": expected ADDRESS:PORT such as 127.0.0.1:8080 or 0.0.0.0:80"
        );
        assert_eq!(
            remote_addr("--source", "db.internal:5432").unwrap(),
            "db.internal:5432"
        );
        for bad in ["db.internal", ":80", "h:0", "h:70000"] {
            assert!(remote_addr("--source", bad).is_err(), "{bad}");
        }
    }
}
