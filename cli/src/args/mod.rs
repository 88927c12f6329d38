//! The command line, as clap types.

use std::path::PathBuf;

use clap::builder::RangedU64ValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};

mod router;
mod running;
mod service;
mod setup;
mod tunnel;
mod values;

pub(crate) use router::RouterArgs;
pub(crate) use running::{
    ApiClientArgs, HealthArgs, KillArgs, ListArgs, LogsArgs, OutputFormat, StatsArgs, StatsFormat,
    StatusArgs,
};
pub(crate) use service::{ServiceArgs, ServiceKind};
pub(crate) use setup::{
    ConfigArgs, ConfigCommand, InitArgs, KeysCommand, RotateArgs, ShowFormat, TuneArgs,
};
pub(crate) use tunnel::{DownArgs, EngineArgs, OptimizeArg, ProtocolArg, StartArgs, UpArgs};
pub(crate) use values::TransportArg;

/// Conduit: expose a service from a private network through a mutually
/// authenticated TLS 1.3 tunnel.
#[derive(Debug, Parser)]
#[command(name = "conduit", version, about, long_about = None, propagate_version = true)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) log: LogArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Logging")]
pub(crate) struct LogArgs {
    /// Log level: error, warn, info, debug, trace (or a tracing filter with `=`, such as
    /// conduit=debug,rustls=warn) [default: info].
    #[arg(long, value_name = "LEVEL", global = true, env = "CONDUIT_LOG_LEVEL")]
    pub(crate) log_level: Option<String>,
    /// Log format: text for terminals, json for log collectors [default: text].
    #[arg(
        value_name = "FORMAT",
        long,
        global = true,
        env = "CONDUIT_LOG_FORMAT",
        value_enum
    )]
    pub(crate) log_format: Option<LogFormat>,
    /// Write logs to this file instead of stderr.
    #[arg(long, global = true, env = "CONDUIT_LOG_FILE", value_name = "PATH", value_parser = conduit_controlplane::config::parse_path)]
    pub(crate) log_file: Option<PathBuf>,
    /// Rotate the log file: a new FILE.YYYY-MM-DD (daily) or FILE.YYYY-MM-DD-HH (hourly)
    /// [default: never]. A background tunnel's stderr (what it says before its log
    /// starts, such as why it could not) still goes to FILE itself.
    #[arg(
        value_name = "PERIOD",
        long,
        global = true,
        value_enum,
        requires = "log_file"
    )]
    pub(crate) log_rotation: Option<LogRotation>,
    /// Rotated log files (FILE.YYYY-MM-DD[-HH]) to keep besides the one being written,
    /// 0 for all, at most 10000 (as `[logging] keep` in a file) [default: 7]; no other
    /// file is deleted.
    #[arg(long, value_name = "N", global = true, requires = "log_file", value_parser = RangedU64ValueParser::<usize>::new().range(0..=10_000))]
    pub(crate) log_keep: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogRotation {
    Never,
    Hourly,
    Daily,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create a key pair in $CONDUIT_HOME/keys and print its public key.
    Init(InitArgs),
    /// Show a public key, or rotate a running tunnel's key.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Write a starting configuration file, check one, or print the configuration in
    /// effect.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run a router: accept tunnels from authorized clients and connect them to
    /// sources in this network.
    ///
    /// Every setting also has a key in the router's configuration file (--config) and
    /// a variable `CONDUIT_<SECTION>_<KEY>` (CONDUIT_ROUTER_BIND,
    /// CONDUIT_PERFORMANCE_IO_ENGINE…; CONDUIT_IO_ENGINE, CONDUIT_WORKERS,
    /// CONDUIT_PIN_CORES and CONDUIT_KERNEL_TLS too); flags win over both, and
    /// `conduit config show --router -f FILE` shows where each value comes from.
    Router(RouterArgs),
    /// Start a tunnel: listen on --bind and carry each connection to --source through
    /// the router.
    Start(StartArgs),
    /// Bring up every tunnel of a configuration file, one background process each;
    /// running tunnels are left alone, changed ones restarted.
    Up(UpArgs),
    /// Stop exactly the tunnels a configuration file brought up.
    Down(DownArgs),
    /// List running tunnels (and, with --connections, their open connections).
    List(ListArgs),
    /// Show the state of every tunnel and of its router link.
    Status(StatusArgs),
    /// Stop tunnels, or close one connection.
    Kill(KillArgs),
    /// Traffic of the tunnels on this machine, or (with --router) of a router, read
    /// through its REST API; exits 1 when a tunnel's figures could not be read.
    Stats(StatsArgs),
    /// Health of the tunnels on this machine, or (with --router) of a router and its
    /// sources and clients; exits 1 when something is down (69 when the router's API
    /// cannot be reached, 77 when it refuses the token, 76 when it answers another
    /// error).
    Health(HealthArgs),
    /// Print a background tunnel's log ($CONDUIT_HOME/logs/NAME.log).
    Logs(LogsArgs),
    /// Check this host's settings against what a 10 Gbps gateway needs.
    Tune(TuneArgs),
    /// Show version, build and io-engine information.
    Version,
    /// Print a completion script for SHELL: `conduit completions bash >
    /// /etc/bash_completion.d/conduit`, `conduit completions zsh > ~/.zfunc/_conduit`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_of_the_arguments_hides_the_token() {
        for args in [
            &["conduit", "router", "--token", "hunter2-secret"][..],
            &[
                "conduit",
                "start",
                "--router",
                "r:1",
                "--router-key",
                "k",
                "--source",
                "s:1",
                "--bind",
                "127.0.0.1:0",
                "--token",
                "hunter2-secret",
                "--alert-webhook",
                "https://hooks.example/x?t=hunter2-secret",
            ][..],
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            let shown = format!("{cli:?}");
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("token: Some(***)"), "{shown}");
        }
    }

    /// Flags whose file key has a range take the same range: `--drain-timeout
    /// 18446744073709551615` once panicked the tunnel at its first drain.
    #[test]
    fn numeric_flags_keep_to_the_ranges_of_their_file_keys() {
        let start = [
            "conduit",
            "start",
            "--router",
            "r:1",
            "--router-key",
            "k",
            "--source",
            "s:1",
            "--bind",
            "127.0.0.1:0",
        ];
        let cases: [(&[&str], &[&str], &str); 5] = [
            (&start, &["--pool-size", "65"], "65 is not in 0..=64"),
            (
                &start,
                &["--drain-timeout", "18446744073709551615"],
                "18446744073709551615 is not in 0..=3600",
            ),
            (
                &["conduit", "down"],
                &["--drain-timeout", "3601"],
                "3601 is not in 0..=3600",
            ),
            (
                &["conduit", "kill", "--all"],
                &["--drain-timeout", "3601"],
                "3601 is not in 0..=3600",
            ),
            (
                &start,
                &["--log-file", "/tmp/t.log", "--log-keep", "10001"],
                "10001 is not in 0..=10000",
            ),
        ];
        for (command, flags, why) in cases {
            let args = [command, flags].concat();
            let err = Cli::try_parse_from(&args).unwrap_err();
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{args:?}"
            );
            assert!(err.to_string().contains(why), "{args:?}: {err}");
        }
        // The ends of the ranges are taken.
        let args = [
            &start[..],
            &["--pool-size", "64", "--drain-timeout", "3600"],
        ]
        .concat();
        let Command::Start(a) = Cli::try_parse_from(&args).unwrap().command else {
            panic!("not a start");
        };
        assert_eq!((a.pool_size, a.drain_timeout), (64, 3600));
    }

    #[test]
    fn a_history_window_is_at_least_a_second() {
        let stats = |w: &str| {
            Cli::try_parse_from([
                "conduit",
                "stats",
                "--router",
                "r:1",
                "--history",
                "--window",
                w,
            ])
        };
        for bad in ["0", "0s", "500ms"] {
            let err = stats(bad).unwrap_err();
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{bad}");
            assert!(
                err.to_string()
                    .contains("a window is at least 1s; leave --window out for every sample"),
                "{err}"
            );
        }
        assert!(stats("1s").is_ok());
    }
}
