//! `conduit list`, `status`, `kill`, `stats`, `health` and `logs`: the commands that
//! look at (or stop) running tunnels, and a router's API.

use clap::{Args, ValueEnum};
use conduit_proto::Secret;

use super::values::parse_secret;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum OutputFormat {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub(crate) format: OutputFormat,
    /// Also list each tunnel's open connections.
    #[arg(long)]
    pub(crate) connections: bool,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub(crate) format: OutputFormat,
}

#[derive(Debug, Args)]
#[command(group(
    clap::ArgGroup::new("what")
        .required(true)
        .multiple(true)
        .args(["tunnel", "all", "connection"])
))]
pub(crate) struct KillArgs {
    /// The tunnel to stop, by name or id; with --connection, the tunnel whose
    /// connection to close.
    #[arg(long, conflicts_with = "all")]
    pub(crate) tunnel: Option<String>,
    /// Stop every tunnel (all at once: they drain side by side).
    #[arg(long)]
    pub(crate) all: bool,
    /// Close this connection (an id from `conduit list --connections`). Ids are per
    /// tunnel: when several tunnels have it, name one with --tunnel.
    #[arg(long, conflicts_with = "all")]
    pub(crate) connection: Option<u64>,
    /// Stop now instead of letting open connections finish; also cuts short a drain
    /// under way. A tunnel whose control socket does not answer (a stopped or hung
    /// process) is killed with SIGKILL.
    #[arg(long)]
    pub(crate) force: bool,
    /// Seconds open connections get to finish (default: the tunnel's own setting);
    /// 0 closes them at once, 3600 at most.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u32).range(0..=3600))]
    pub(crate) drain_timeout: Option<u32>,
}

/// How to reach a router's REST API.
#[derive(Debug, Args, Clone)]
pub(crate) struct ApiClientArgs {
    /// The router's API: http://HOST:PORT (or HOST:PORT).
    #[arg(long, value_name = "URL")]
    pub(crate) router: Option<String>,
    /// The API's bearer token.
    #[arg(long, value_name = "TOKEN", env = "CONDUIT_API_TOKEN", hide_env_values = true, value_parser = parse_secret)]
    pub(crate) api_token: Option<Secret>,
}

#[derive(Debug, Args)]
pub(crate) struct StatsArgs {
    #[command(flatten)]
    pub(crate) api: ApiClientArgs,
    /// Output format; prometheus prints the metrics text (of every local tunnel, or of
    /// the router).
    #[arg(long, value_enum, default_value_t = StatsFormat::Table)]
    pub(crate) format: StatsFormat,
    /// The router's traffic over time instead: one line per sample (taken every
    /// `api.history_interval_secs` on the router), oldest first, and a summary
    /// (`--format json`: the API's pages merged, newest first).
    #[arg(long, requires = "router")]
    pub(crate) history: bool,
    /// With --history: only the samples of this last stretch of time (e.g. 15m,
    /// 2h, 1d); without, every sample the router keeps.
    #[arg(long, value_name = "DURATION", requires = "history", value_parser = parse_window)]
    pub(crate) window: Option<std::time::Duration>,
}

/// A `--window`: a duration of at least a second (the API counts whole seconds).
fn parse_window(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < std::time::Duration::from_secs(1) {
        return Err("a window is at least 1s; leave --window out for every sample".into());
    }
    Ok(d)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum StatsFormat {
    Table,
    Json,
    Prometheus,
}

#[derive(Debug, Args)]
pub(crate) struct HealthArgs {
    #[command(flatten)]
    pub(crate) api: ApiClientArgs,
    /// Only this tunnel (by name or id; repeatable), which is unhealthy when it is not
    /// running: the check for a probe (a container's, a service manager's).
    #[arg(long = "tunnel", value_name = "NAME|ID", conflicts_with = "router")]
    pub(crate) tunnels: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub(crate) format: OutputFormat,
}

#[derive(Debug, Args)]
pub(crate) struct LogsArgs {
    /// The tunnel, by name or id.
    pub(crate) name: String,
    /// Keep printing what is appended (until Ctrl-C).
    #[arg(short = 'f', long)]
    pub(crate) follow: bool,
    /// Print only the last N lines first.
    #[arg(short = 'n', long, value_name = "N")]
    pub(crate) lines: Option<usize>,
}
