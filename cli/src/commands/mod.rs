//! One module per command.

mod api_client;
mod config;
mod down;
mod health;
mod init;
mod keys;
mod kill;
mod list;
mod logs;
mod router;
mod service;
mod start;
mod stats;
mod status;
mod supervise;
mod tune;
mod tunnels;
mod up;
mod version;

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use conduit_controlplane::Home;
use conduit_controlplane::config::Env;
use conduit_dataplane::Options;

use crate::args::{Cli, Command, ConfigCommand, EngineArgs, KeysCommand, LogArgs};
use crate::exit::Usage;
use crate::logging;
use crate::output::{self, say};

pub(crate) use health::Unhealthy;

pub(crate) fn run(cli: Cli) -> Result<()> {
    let Cli { log, command } = cli;
    let done = match command {
        // The router's file may hold [logging]: it starts logging once that is read.
        Command::Router(a) => router::run(&home()?, a, &log),
        other => {
            start_logging(&log, None)?;
            run_other(other, &log)
        }
    };
    // The command's work is done; what it printed must have arrived.
    match (done, output::check()) {
        (done, Ok(())) => done,
        (Ok(()), Err(lost)) => Err(lost.into()),
        // `conduit health | grep -q …`: the reader has what it wanted; the command's
        // own failure (unhealthy, short) is the answer.
        (Err(e), Err(lost)) if lost.reader_gone() => Err(e),
        (Err(e), Err(_)) if e.downcast_ref::<output::StdoutError>().is_some() => Err(e),
        // The report was lost (a full disk): that comes first, exit 74, after what
        // the command itself found.
        (Err(e), Err(lost)) => {
            let _ = writeln!(std::io::stderr(), "conduit: error: {e}");
            Err(lost.into())
        }
    }
}

fn run_other(command: Command, log: &LogArgs) -> Result<()> {
    match command {
        Command::Init(a) => init::run(&home()?, &a),
        Command::Keys(KeysCommand::Show { name }) => keys::show(&home()?, &name),
        Command::Keys(KeysCommand::Rotate(a)) => keys::rotate(&home()?, &a),
        Command::Config(ConfigCommand::Init {
            file,
            router,
            force,
        }) => config::init(file, router, force),
        Command::Config(ConfigCommand::Validate { args, format }) => {
            config::validate(home()?, args, format)
        }
        Command::Config(ConfigCommand::Show { args, format }) => {
            config::show(home()?, args, format, log)
        }
        Command::Router(_) => unreachable!("`run` dispatches the router before logging starts"),
        Command::Start(a) => {
            // The variables `start`'s own flags read (see `args/tunnel.rs`).
            let read = [
                "CONDUIT_ROUTER",
                "CONDUIT_ROUTER_KEY",
                "CONDUIT_TOKEN",
                "CONDUIT_WORKERS",
                "CONDUIT_IO_ENGINE",
                "CONDUIT_PIN_CORES",
                "CONDUIT_KERNEL_TLS",
                "CONDUIT_LOG_FILE",
                "CONDUIT_ALERTS_WEBHOOK",
                "CONDUIT_ALERTS_SLACK",
                // Not start's, but stats' and health's (--api-token): set for them.
                "CONDUIT_API_TOKEN",
            ];
            for w in Env::from_process().unread_without_a_file(&read) {
                eprintln!("warning: {w}");
            }
            start::run(&home()?, a, log)
        }
        Command::Up(a) => up::run(&home()?, a, log),
        Command::Down(a) => down::run(&home()?, &a),
        Command::List(a) => list::run(&home_to_read()?, &a),
        Command::Status(a) => status::run(&home_to_read()?, &a),
        Command::Kill(a) => kill::run(&home_to_read()?, &a),
        // A router's stats need no home: one that is not there is no mistake then.
        Command::Stats(a) if a.api.router.is_some() => stats::run(&home()?, &a),
        Command::Stats(a) => {
            api_client::token_needs_router(&a.api, "stats")?;
            stats::run(&home_to_read()?, &a)
        }
        Command::Health(a) => {
            api_client::token_needs_router(&a.api, "health")?;
            health::run(&home()?, &a)
        }
        Command::Logs(a) => logs::run(&home()?, &a),
        Command::Tune(a) => tune::run(&a),
        Command::Version => version::run(),
        Command::Completions { shell } => {
            // Into memory first: clap_complete panics when its writer fails.
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "conduit", &mut script);
            output::try_write(&script)?;
            Ok(())
        }
    }
}

/// Starts logging as the flags and (for a router) its file's `[logging]` say.
fn start_logging(
    log: &LogArgs,
    file: Option<&conduit_controlplane::config::LoggingConfig>,
) -> Result<()> {
    logging::init(&log.settings(file)).map_err(|e| Usage(e).into())
}

fn home() -> Result<Home> {
    Ok(Home::from_env()?)
}

/// The home of a command that reads what runs there: one that does not exist is
/// most likely mistyped, which is said (on stderr: the output stays as it is).
fn home_to_read() -> Result<Home> {
    let home = home()?;
    let exists = home.root().try_exists().map_err(|e| {
        Usage(format!(
            "cannot look at CONDUIT_HOME {}: {e}; point CONDUIT_HOME at the tunnels' home \
             directory",
            home.root().display()
        ))
    })?;
    if !exists {
        eprintln!(
            "note: CONDUIT_HOME {} does not exist: no tunnel has run with it (is it the \
             home meant?)",
            home.root().display()
        );
    }
    Ok(home)
}

/// A Tokio runtime for the control plane: small, since the data plane has the cores.
fn runtime(threads: usize) -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("conduit-control")
        .enable_all()
        .build()?)
}

/// Parses a local listening address (`127.0.0.1:8080`, `[::]:80`, `localhost:8080`).
fn listen_addr(flag: &str, s: &str) -> Result<SocketAddr> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    // As in a file: a name could stand for several addresses, or another one tomorrow.
    let why = conduit_controlplane::config::not_a_listen_addr(s);
    Err(Usage(format!(
        "invalid {flag} {s:?}: {why}; expected ADDRESS:PORT such as 127.0.0.1:8080 or 0.0.0.0:80"
    ))
    .into())
}

/// Checks a remote `HOST:PORT` without resolving it (the router may see other names).
fn remote_addr(flag: &str, s: &str) -> Result<String> {
    match conduit_controlplane::config::host_port(s) {
        Ok(()) => Ok(s.to_owned()),
        Err(why) => Err(Usage(format!(
            "invalid {flag} {s:?}: {why}; expected HOST:PORT such as 10.2.0.2:8080 or \
             db.internal:5432"
        ))
        .into()),
    }
}

/// `--source`: one `HOST:PORT`, or several separated by commas (the router balances
/// across them and fails over); returned with the members comma-joined.
fn source_list(flag: &str, s: &str) -> Result<String> {
    let members: Vec<&str> = conduit_dataplane::source_members(s).collect();
    if members.is_empty() {
        return remote_addr(flag, s);
    }
    for (i, m) in members.iter().enumerate() {
        remote_addr(flag, m)?;
        if members[..i].contains(m) {
            return Err(Usage(format!("{flag} names {m} twice: list each once")).into());
        }
    }
    if members.len() < s.split(',').count() {
        let why = conduit_controlplane::config::empty_member(s);
        return Err(Usage(format!("{flag} {why}")).into());
    }
    if flag == "--source" && members.len() > conduit_controlplane::balance::MAX_MEMBERS {
        let why = conduit_controlplane::config::too_many_members(members.len());
        return Err(Usage(format!("{flag} {why}")).into());
    }
    Ok(members.join(","))
}

fn dataplane_options(e: &EngineArgs) -> Options {
    Options {
        workers: e.workers,
        engine: e.io_engine,
        pin: e.pin_cores,
    }
}

/// Said (on stderr) by an `up` or `down` that finds another one changing the
/// tunnels of `home`, before it waits for that one to finish.
fn say_waiting_for_lock(home: &Home, holder: Option<u32>) {
    let who = holder.map_or_else(String::new, |pid| format!(" (pid {pid})"));
    eprintln!(
        "another `conduit up` or `conduit down`{who} is changing the tunnels of {}; waiting \
         for it to finish (it may be draining a tunnel; Ctrl-C stops waiting)",
        home.root().display()
    );
}

/// Warns of each secret (a token, a webhook URL) a long-running process was given
/// with `--set`: its command line is every local user's to read for as long as it
/// runs. `file_flag` names the flag of the file the key may go in instead.
fn warn_of_secrets_set(set: &[conduit_controlplane::config::Override], file_flag: &str) {
    for o in set.iter().filter(|o| o.is_secret()) {
        let (section, key) = o.key.split_once('.').unwrap_or(("", &o.key));
        tracing::warn!(
            "--set {}=… puts a secret on the command line, where every user of this host \
             can read it (`ps`); give it in {} or [{section}] {key} in {file_flag} instead",
            o.key,
            o.env_name()
        );
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// `[performance] auto_tune` for a tunnel or router process about to start: the
/// settings it derives from this host, each decision logged at info.
fn auto_tune(
    p: &conduit_controlplane::config::PerformanceConfig,
    plain: bool,
) -> conduit_controlplane::config::PerformanceConfig {
    let open_files = conduit_controlplane::limits::nofile()
        .ok()
        .map(|(_, hard)| hard);
    // A plain-transport connection also holds a pipe (two descriptors) per direction
    // while bytes move.
    let per_connection = if plain { 6 } else { 2 };
    let (tuned, said) = p.auto_tuned(open_files, per_connection);
    for line in said {
        tracing::info!("auto_tune: {line}");
    }
    tuned
}

/// What a tunnel or router process does once at start, before it opens anything:
/// lifts its soft open-file limit to the hard one (10 000 connections need 20 000+
/// descriptors, and shells often start processes at 1024), and learns whether the
/// kernel offers kTLS, saying so in one debug line either way.
fn prepare_process() {
    use conduit_controlplane::limits::raise_nofile;
    match raise_nofile() {
        Ok((before, after)) if after > before => {
            tracing::debug!("open-file limit raised from {before} to {after}");
        }
        Ok((n, _)) => tracing::debug!("open-file limit {n} (already the hard limit)"),
        Err(e) => tracing::warn!(
            "cannot raise the open-file limit: {e}; connections beyond it will be refused \
             (see `conduit tune --check`)"
        ),
    }
    // Its one debug line says whether kTLS is there; streams go by the answer.
    conduit_dataplane::ktls::detect();
}

/// A router's refusal as a tunnel recorded it, for a line that already says who
/// refused: without the same words again in front.
pub(crate) fn refusal(text: &str) -> &str {
    text.strip_prefix("the router refused this tunnel: ")
        .unwrap_or(text)
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
            "invalid --bind \"nonsense\": it has no port; expected ADDRESS:PORT such as \
             127.0.0.1:8080 or 0.0.0.0:80"
        );
        // Port 0 is fine for a listener: a name is what is wrong.
        for bind in ["localhost:0", ":0"] {
            let e = listen_addr("--metrics-bind", bind).unwrap_err().to_string();
            let why = if bind == ":0" {
                "\"\" is not a host name or IP address"
            } else {
                "a host name, where an IP address must be"
            };
            assert_eq!(
                e,
                format!(
                    "invalid --metrics-bind {bind:?}: {why}; expected ADDRESS:PORT such as \
                     127.0.0.1:8080 or 0.0.0.0:80"
                )
            );
        }
        let e = listen_addr("--bind", "127.0.0.1:99999")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "invalid --bind \"127.0.0.1:99999\": port 99999 is out of range (1-65535); expected \
             ADDRESS:PORT such as 127.0.0.1:8080 or 0.0.0.0:80"
        );
        assert_eq!(
            remote_addr("--source", "db.internal:5432").unwrap(),
            "db.internal:5432"
        );
        assert_eq!(
            source_list("--source", "10.0.0.1:80, 10.0.0.2:80").unwrap(),
            "10.0.0.1:80,10.0.0.2:80"
        );
        assert_eq!(
            source_list("--source", "10.0.0.1:80,nope")
                .unwrap_err()
                .to_string(),
            "invalid --source \"nope\": it has no port; expected HOST:PORT such as 10.2.0.2:8080 \
             or db.internal:5432"
        );
        // A list of no members is taken for one address, and refused as one.
        assert_eq!(
            source_list("--source", ",").unwrap_err().to_string(),
            "invalid --source \",\": it has no port; expected HOST:PORT such as 10.2.0.2:8080 \
             or db.internal:5432"
        );
        for (bad, why) in [
            ("", "it is empty"),
            ("db.internal", "it has no port"),
            ("8080", "it is a port alone, without a host"),
            (":80", "\"\" is not a host name or IP address"),
            ("h:0", "port 0 is out of range (1-65535)"),
            ("h:70000", "port 70000 is out of range (1-65535)"),
            ("h:", "\"\" is not a port (1-65535)"),
            ("[::1:1", "\"[::1\" is not a host name or IP address"),
            ("::1:1", "an IPv6 address goes in brackets, as [::1]:1"),
            (
                "bad host:1",
                "\"bad host\" is not a host name or IP address",
            ),
        ] {
            let e = remote_addr("--source", bad).unwrap_err().to_string();
            assert_eq!(
                e,
                format!(
                    "invalid --source {bad:?}: {why}; expected HOST:PORT such as 10.2.0.2:8080 \
                     or db.internal:5432"
                )
            );
        }
        for good in ["[::1]:1", "10.0.0.1:65535", "db-1.internal:5432"] {
            assert_eq!(remote_addr("--source", good).unwrap(), good);
        }
    }
}
