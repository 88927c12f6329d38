//! The command line, as clap types.

use std::path::PathBuf;

use clap::builder::RangedU64ValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};
use conduit_controlplane::config::Override;
use conduit_dataplane::Engine;
use conduit_proto::Secret;
use conduit_proto::tls::Suites;

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
    #[arg(long, global = true, env = "CONDUIT_LOG_LEVEL")]
    pub(crate) log_level: Option<String>,
    /// Log format: text for terminals, json for log collectors [default: text].
    #[arg(long, global = true, env = "CONDUIT_LOG_FORMAT", value_enum)]
    pub(crate) log_format: Option<LogFormat>,
    /// Write logs to this file instead of stderr.
    #[arg(long, global = true, env = "CONDUIT_LOG_FILE", value_name = "PATH")]
    pub(crate) log_file: Option<PathBuf>,
    /// Rotate the log file: a new FILE.YYYY-MM-DD (daily) or FILE.YYYY-MM-DD-HH (hourly)
    /// [default: never].
    #[arg(long, global = true, value_enum, requires = "log_file")]
    pub(crate) log_rotation: Option<LogRotation>,
    /// Rotated log files (FILE.YYYY-MM-DD[-HH]) to keep besides the one being written,
    /// 0 for all, at most 10000 (as `[logging] keep` in a file) [default: 7]; no other
    /// file is touched.
    #[arg(long, global = true, requires = "log_file", value_parser = RangedU64ValueParser::<usize>::new().range(0..=10_000))]
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

/// `conduit tune`.
#[derive(Debug, Args)]
#[command(
    after_help = "Exit status: 0 when no setting falls short, 1 when one does \
                        (UNKNOWN settings, whose value could not be read, do not count)."
)]
pub(crate) struct TuneArgs {
    /// Report each setting that matters for a 10 Gbps gateway (open-file limits,
    /// socket buffers and backlogs, ports, kTLS, io_uring, cores) as OK, SHORT or
    /// UNKNOWN, with the recommended value and the command that fixes it. Changes
    /// nothing; exits 1 when a setting falls short.
    #[arg(long, required = true)]
    pub(crate) check: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ShowFormat::Text)]
    pub(crate) format: ShowFormat,
}

#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// The configuration file.
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE",
        default_value = "conduit.toml"
    )]
    pub(crate) file: PathBuf,
    /// Override one value over the file and the environment: SECTION.KEY=VALUE.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE", value_parser = Override::parse_set)]
    pub(crate) set: Vec<Override>,
    /// Stay in this terminal, supervising the tunnels (for init systems); Ctrl-C or
    /// SIGTERM stops them all.
    #[arg(long)]
    pub(crate) foreground: bool,
    /// Internal: run only this tunnel of the file, in this process.
    #[arg(long, hide = true, requires = "foreground")]
    pub(crate) tunnel: Option<String>,
    /// Internal: this process was launched in the background by `conduit up`.
    #[arg(long, hide = true, requires = "tunnel")]
    pub(crate) detached: bool,
    #[command(flatten)]
    pub(crate) service: ServiceArgs,
}

#[derive(Debug, Args)]
pub(crate) struct DownArgs {
    /// The configuration file whose tunnels to stop.
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE",
        default_value = "conduit.toml"
    )]
    pub(crate) file: PathBuf,
    /// Stop now instead of letting open connections finish; a tunnel whose control
    /// socket does not answer (a stopped or hung process) is killed with SIGKILL.
    #[arg(long)]
    pub(crate) force: bool,
    /// Seconds open connections get to finish (default: each tunnel's own setting);
    /// 0 closes them at once, 3600 at most. The tunnels drain side by side.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u32).range(0..=3600))]
    pub(crate) drain_timeout: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum TransportArg {
    Tls,
    Plain,
}

impl From<TransportArg> for conduit_controlplane::Transport {
    fn from(t: TransportArg) -> Self {
        match t {
            TransportArg::Tls => Self::Tls,
            TransportArg::Plain => Self::Plain,
        }
    }
}

/// `--protocol`, as a tunnel's `protocol` in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ProtocolArg {
    Tcp,
    Udp,
}

/// `--proxy-protocol`, as a tunnel's `proxy_protocol` in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ProxyProtocolArg {
    V1,
    V2,
}

impl From<ProxyProtocolArg> for conduit_dataplane::ProxyProtocol {
    fn from(p: ProxyProtocolArg) -> Self {
        match p {
            ProxyProtocolArg::V1 => Self::V1,
            ProxyProtocolArg::V2 => Self::V2,
        }
    }
}

/// `--optimize-for`, as `[performance] optimize_for`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum OptimizeArg {
    Balanced,
    Throughput,
    Latency,
}

impl From<OptimizeArg> for conduit_controlplane::config::OptimizeFor {
    fn from(o: OptimizeArg) -> Self {
        match o {
            OptimizeArg::Balanced => Self::Balanced,
            OptimizeArg::Throughput => Self::Throughput,
            OptimizeArg::Latency => Self::Latency,
        }
    }
}

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
    #[arg(long, env = "CONDUIT_API_TOKEN", hide_env_values = true, value_parser = parse_secret)]
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
    /// `api.history_interval_secs` on the router), oldest first, and a summary.
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

/// `--read-buffer-size` / `--write-buffer-size`: 0, or a size the kernel can use.
fn socket_buffer(s: &str) -> Result<usize, String> {
    use conduit_controlplane::config::{MAX_SOCKET_BUFFER, MIN_SOCKET_BUFFER};
    let n: usize = s
        .parse()
        .map_err(|_| format!("expected a number of bytes, found {s:?}"))?;
    if n == 0 || (MIN_SOCKET_BUFFER..=MAX_SOCKET_BUFFER).contains(&n) {
        Ok(n)
    } else {
        Err(format!(
            "{n} is outside {MIN_SOCKET_BUFFER}-{MAX_SOCKET_BUFFER}; use 0 for the kernel's \
             auto-tuning"
        ))
    }
}

fn parse_suites(s: &str) -> Result<Suites, String> {
    Suites::parse_list(s)
}

pub(crate) fn parse_secret(s: &str) -> Result<Secret, String> {
    if s.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(Secret::new(s.to_owned()))
    }
}

#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    /// Key name: files keys/NAME.key and keys/NAME.pub.
    #[arg(long, default_value = "client")]
    pub(crate) name: String,
    /// Replace an existing key of that name.
    #[arg(long)]
    pub(crate) force: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Print a public key (the line to give the other side).
    Show {
        /// Key name.
        #[arg(long, default_value = "client")]
        name: String,
    },
    /// Rotate a running tunnel's key: the tunnel makes a new key, its router
    /// authorizes it (admitting the old one for its grace period, a day by default),
    /// the tunnel's key file is replaced and it reconnects with the new key.
    Rotate(RotateArgs),
}

/// Which tunnels rotate their keys.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["tunnel", "all"])))]
pub(crate) struct RotateArgs {
    /// The tunnel, by name or id.
    #[arg(long)]
    pub(crate) tunnel: Option<String>,
    /// Every running tunnel (tunnels sharing a key file rotate it once).
    #[arg(long)]
    pub(crate) all: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Write a starting configuration file: every key, documented, with example
    /// values to replace (`-f -` prints it). Never overwrites without --force.
    Init {
        /// Where [default: conduit.toml, or router.toml with --router]; `-` prints it.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: Option<PathBuf>,
        /// A router's file instead of a client's.
        #[arg(long)]
        router: bool,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Report every problem in a configuration file, each with its key path; exits 64
    /// if there is an error.
    Validate(ConfigArgs),
    /// Print the configuration in effect (file, then `CONDUIT_<SECTION>_<KEY>`
    /// variables, then --set), each value with where it came from; secrets print as ***.
    Show {
        #[command(flatten)]
        args: ConfigArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ShowFormat::Text)]
        format: ShowFormat,
    },
}

#[derive(Debug, Args)]
pub(crate) struct ConfigArgs {
    /// The configuration file [default: conduit.toml, or router.toml with --router].
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub(crate) file: Option<PathBuf>,
    /// The file configures a router (`[router] bind`, `allow`…), not a client.
    #[arg(long)]
    pub(crate) router: bool,
    /// Override one value, over the file and the environment: SECTION.KEY=VALUE, such
    /// as performance.workers=2. Repeatable; `[[tunnels]]` cannot be set this way.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE", value_parser = Override::parse_set)]
    pub(crate) set: Vec<Override>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ShowFormat {
    Text,
    Json,
}

#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Data plane")]
pub(crate) struct EngineArgs {
    /// Data-plane worker threads, 0-1024 (default, 0: one per usable core).
    #[arg(long, env = "CONDUIT_WORKERS", default_value_t = 0, value_parser = parse_workers)]
    pub(crate) workers: usize,
    /// I/O engine: auto (io_uring where usable), uring, or epoll.
    #[arg(long, env = "CONDUIT_IO_ENGINE", default_value = "auto", value_parser = parse_engine)]
    pub(crate) io_engine: Engine,
    /// Pin each worker thread to its own core. Worth it on a dedicated gateway; off
    /// by default because relays sharing a machine (a client and a router, a
    /// container host) can end up pinned to the same core (docs/architecture.md).
    #[arg(long, env = "CONDUIT_PIN_CORES", default_value_t = false, action = clap::ArgAction::Set, value_parser = parse_bool)]
    pub(crate) pin_cores: bool,
}

/// true/false as a configuration file's environment variables take it (`yes`, `on`,
/// `1` and their opposites too).
fn parse_bool(s: &str) -> Result<bool, String> {
    conduit_controlplane::config::parse_bool(s)
}

fn parse_engine(s: &str) -> Result<Engine, String> {
    s.parse()
}

/// The most data-plane workers, as the router's `performance.workers` allows.
const MAX_WORKERS: usize = 1024;

/// `--workers`: 0 (one per usable core) to [`MAX_WORKERS`].
fn parse_workers(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n <= MAX_WORKERS => Ok(n),
        Ok(n) => Err(format!("{n} is out of range; use 0-{MAX_WORKERS}")),
        Err(_) => Err(format!("expected an integer (0-{MAX_WORKERS})")),
    }
}

/// `conduit router`. Every setting also has a key in the router's configuration file
/// (`--config`) and a `CONDUIT_<SECTION>_<KEY>` variable; flags win over both.
#[derive(Debug, Args)]
pub(crate) struct RouterArgs {
    /// The router's configuration file (see deploy/router.example.toml).
    #[arg(short = 'f', long = "config", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Address to listen on for clients [default: 0.0.0.0:9999].
    #[arg(long)]
    pub(crate) bind: Option<String>,
    /// The router's private key (default: $CONDUIT_HOME/keys/router.key).
    #[arg(long)]
    pub(crate) key: Option<PathBuf>,
    /// The key this router will present next (`conduit init --name router-next`): its
    /// public half is named to tunnels, which accept it from then on; restart the
    /// router with it as --key later, without touching the tunnels.
    #[arg(long, value_name = "PATH")]
    pub(crate) next_key: Option<PathBuf>,
    /// Client public keys to admit, one per line (default: $CONDUIT_HOME/authorized_clients).
    #[arg(long)]
    pub(crate) authorized_keys: Option<PathBuf>,
    /// Allow clients to open this source: HOST:PORT, CIDR:PORT, *:PORT, ranges
    /// like 8000-8100; KEY=HOST:PORT for one client key, NAME=HOST:PORT for the
    /// keys named NAME in authorized_clients. Repeatable. Nothing is
    /// allowed without one.
    #[arg(long = "allow", value_name = "RULE")]
    pub(crate) allow: Vec<String>,
    /// Require clients to present this token too (also CONDUIT_TOKEN).
    #[arg(long, value_parser = parse_secret)]
    pub(crate) token: Option<Secret>,
    /// tls (default), or plain for links that are already encrypted (e.g. inside
    /// WireGuard): no encryption, no key authentication, payload spliced. Clients must
    /// use the same transport.
    #[arg(long, value_enum, default_value_t = TransportArg::Tls)]
    pub(crate) transport: TransportArg,
    /// TLS 1.3 cipher suites to accept, by IANA name, comma-separated, in the order
    /// the router prefers them: TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384,
    /// TLS_CHACHA20_POLY1305_SHA256 (default: all three, in that order).
    #[arg(long, value_name = "SUITES", value_parser = parse_suites)]
    pub(crate) cipher_suites: Option<Suites>,
    /// Seconds to let open streams finish after SIGTERM/SIGINT [default: 30].
    #[arg(long)]
    pub(crate) drain_timeout: Option<u64>,
    /// Seconds a connecting client gets for its TLS handshake and Hello; a peer that
    /// is silent or slow is cut off then [default: 10].
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub(crate) handshake_timeout: Option<u64>,
    /// Open streams at most, over all clients (0: no limit); the next Open is refused
    /// with a logged reason [default: 0].
    #[arg(long, value_name = "N")]
    pub(crate) max_connections: Option<u64>,
    /// Data-plane worker threads (default: one per usable core).
    #[arg(long)]
    pub(crate) workers: Option<usize>,
    /// I/O engine: auto (io_uring where usable), uring, or epoll.
    #[arg(long, value_parser = ["auto", "uring", "epoll"])]
    pub(crate) io_engine: Option<String>,
    /// Pin each worker thread to its own core (true/false; off by default, see
    /// docs/architecture.md).
    #[arg(long, action = clap::ArgAction::Set, value_parser = parse_bool)]
    pub(crate) pin_cores: Option<bool>,
    /// Relay streams through kernel TLS where this host's and the client's kernels
    /// offer it (true/false; on by default).
    #[arg(long, action = clap::ArgAction::Set, value_parser = parse_bool)]
    pub(crate) kernel_tls: Option<bool>,
    /// Serve the REST API and /metrics (on 127.0.0.1:9990 unless --api-bind says).
    #[arg(long)]
    pub(crate) api: bool,
    /// Serve the REST API on this address (turns it on).
    #[arg(long, value_name = "ADDR")]
    pub(crate) api_bind: Option<String>,
    /// The API's bearer token (also CONDUIT_API_TOKEN, or api.token in the file).
    #[arg(long, value_parser = parse_secret)]
    pub(crate) api_token: Option<Secret>,
    /// Serve the API without a token; allowed only on a loopback --api-bind.
    #[arg(long)]
    pub(crate) api_no_auth: bool,
    /// POST a JSON alert to this URL when a source goes down or up, or a client link is
    /// lost or back.
    #[arg(long, value_name = "URL", value_parser = parse_secret)]
    pub(crate) alert_webhook: Option<Secret>,
    /// Send the same alerts to this Slack incoming-webhook URL.
    #[arg(long, value_name = "URL", value_parser = parse_secret)]
    pub(crate) alert_slack: Option<Secret>,
    /// Set any key of the router's configuration: SECTION.KEY=VALUE, such as
    /// health.interval_secs=2. Repeatable.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE", value_parser = Override::parse_set)]
    pub(crate) set: Vec<Override>,
    #[command(flatten)]
    pub(crate) service: ServiceArgs,
}

#[derive(Debug, Args)]
pub(crate) struct StartArgs {
    /// Run in this terminal instead of as a background tunnel process.
    #[arg(long)]
    pub(crate) foreground: bool,
    /// Internal: this process was launched in the background by `conduit start`.
    #[arg(long, hide = true, requires = "foreground")]
    pub(crate) detached: bool,
    /// The router, HOST:PORT; or several separated by commas, tried in turn: the
    /// tunnel moves to the next when it cannot reach the one it uses.
    #[arg(long, env = "CONDUIT_ROUTER")]
    pub(crate) router: String,
    /// The router's public key (ed25519:…) or the path of its .pub file (every key
    /// in the file is accepted, and the file is read again at each heartbeat and
    /// before each connection: no restart when it changes); KEY|KEY accepts either,
    /// while the router's key is being replaced. With several routers: keys that all of them present, or
    /// each router's, separated by commas, in the order of --router.
    #[arg(long, env = "CONDUIT_ROUTER_KEY")]
    pub(crate) router_key: String,
    /// The service to reach, HOST:PORT as the router sees it.
    #[arg(long)]
    pub(crate) source: String,
    /// Where users connect, ADDR:PORT on this machine.
    #[arg(long)]
    pub(crate) bind: String,
    /// This client's private key (default: $CONDUIT_HOME/keys/client.key).
    #[arg(long)]
    pub(crate) key: Option<PathBuf>,
    /// The tunnel's name: 1-64 letters, digits, '-', '_' or '.', not starting with '.' or
    /// '-' (default: tunnel-PORT, or tunnel when PORT is 0).
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// A token, for routers that require one.
    #[arg(long, env = "CONDUIT_TOKEN", hide_env_values = true, value_parser = parse_secret)]
    pub(crate) token: Option<Secret>,
    /// tls (default), or plain when the router runs `--transport plain` (links that
    /// are already encrypted only).
    #[arg(long, value_enum, default_value_t = TransportArg::Tls)]
    pub(crate) transport: TransportArg,
    /// TLS 1.3 cipher suites to offer, by IANA name, comma-separated, in order of
    /// preference (the router's order wins): TLS_AES_128_GCM_SHA256,
    /// TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256 (default: all three).
    #[arg(
        long,
        env = "CONDUIT_CIPHER_SUITES",
        value_name = "SUITES",
        value_parser = parse_suites
    )]
    pub(crate) cipher_suites: Option<Suites>,
    /// tcp (default), or udp: users send datagrams to --bind and each sender's flow
    /// rides a channel of its own to the router (TLS, or plain with --transport
    /// plain).
    #[arg(long, value_enum, default_value_t = ProtocolArg::Tcp)]
    pub(crate) protocol: ProtocolArg,
    /// Start each stream toward the source with a PROXY protocol header carrying the
    /// user's address (v1: text, v2: binary), for sources that read one (nginx
    /// `listen … proxy_protocol`, HAProxy `accept-proxy`); a UDP tunnel puts v2's
    /// before each datagram (Unbound's `proxy-protocol-port`, dnsdist). A tunnel's
    /// `proxy_protocol` in a file.
    #[arg(long, value_enum, value_name = "VERSION")]
    pub(crate) proxy_protocol: Option<ProxyProtocolArg>,
    /// Let users in from these addresses only: an address or a CIDR block (repeat,
    /// or separate with commas). Others are reset at accept and their datagrams
    /// dropped, each logged and counted (`user_not_allowed`). Default: anyone who
    /// can reach --bind. A tunnel's `allow_from` in a file.
    #[arg(long, value_name = "ADDR|CIDR", value_delimiter = ',', value_parser = conduit_controlplane::config::allow_from_net)]
    pub(crate) allow_from: Vec<ipnet::IpNet>,
    /// UDP tunnels: seconds a flow may pass no datagram either way before it ends;
    /// `[performance] udp_idle_timeout_secs` in a file.
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub(crate) udp_idle_timeout: u64,
    /// UDP tunnels: at most this many new flows (each a sender address, and the
    /// local address it sends to) a second, 0 for no cap; `[performance]
    /// udp_max_new_flows` in a file.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub(crate) udp_max_new_flows: u64,
    /// Handshaken channels each worker keeps ready, 0 to 64; `[performance]
    /// pool_size` in a file.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = RangedU64ValueParser::<usize>::new().range(0..=64))]
    pub(crate) pool_size: usize,
    /// What the relay favours: latency reads one TLS record at a time and keeps at
    /// least 4 channels ready per worker; balanced and throughput read four records
    /// at once. `[performance] optimize_for` in a file.
    #[arg(long, value_enum, default_value_t = OptimizeArg::Balanced)]
    pub(crate) optimize_for: OptimizeArg,
    /// The kernel's receive buffer (SO_RCVBUF) of each relayed socket, in bytes (0:
    /// the kernel's auto-tuning); `[performance] read_buffer_size` in a file.
    #[arg(long, value_name = "BYTES", default_value_t = 0, value_parser = socket_buffer)]
    pub(crate) read_buffer_size: usize,
    /// Relay streams through kernel TLS where this host's and the router's kernels
    /// offer it (true/false); `[performance] kernel_tls` in a file.
    #[arg(long, env = "CONDUIT_KERNEL_TLS", default_value_t = true, action = clap::ArgAction::Set, value_parser = parse_bool)]
    pub(crate) kernel_tls: bool,
    /// The kernel's send buffer (SO_SNDBUF) of each relayed socket, in bytes (0: the
    /// kernel's auto-tuning); `[performance] write_buffer_size` in a file.
    #[arg(long, value_name = "BYTES", default_value_t = 0, value_parser = socket_buffer)]
    pub(crate) write_buffer_size: usize,
    /// Seconds to let open connections finish after SIGTERM/SIGINT, 0 to 3600;
    /// `[performance] drain_timeout_secs` in a file.
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub(crate) drain_timeout: u64,
    /// Seconds between heartbeats to the router; three without an answer and the
    /// link counts as lost (its users' connections are closed and it reconnects).
    #[arg(long, value_name = "SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub(crate) heartbeat_interval: u64,
    /// Rotate the key through the router once its file is this many days old (the
    /// router admits the old key for its grace period); 0 never rotates.
    /// `[security] key_rotation_days` in a file.
    #[arg(long, value_name = "DAYS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=3650))]
    pub(crate) key_rotation_days: u64,
    /// With several routers (`--router A,B`): while the tunnel uses a later one,
    /// how often it tries the ones before it and moves back to the first that
    /// answers (its users' open streams finish where they are); 0 stays.
    /// `[router] failback_secs` in a file.
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub(crate) router_failback: u64,
    /// With several routers (`--router A,B`): how often a router on standby (one
    /// not in use) is checked with a full handshake, besides a look at its port
    /// about every 10 s, so that one that would refuse the tunnel shows in `status`,
    /// `health` and the alerts before the tunnel needs it; 0 looks at its port
    /// only. `[router] standby_check_secs` in a file.
    #[arg(long, value_name = "SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub(crate) standby_check: u64,
    /// With several routers (`--router A,B`): use them all at once, each new
    /// connection through the router (of those whose link is up) carrying the
    /// fewest, instead of one at a time. `[router] balance = true` in a file.
    #[arg(long)]
    pub(crate) router_balance: bool,
    /// Serve this tunnel's Prometheus metrics over HTTP at ADDR/metrics (no token:
    /// bind it to loopback or a monitoring network).
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics_bind: Option<String>,
    /// POST a JSON alert to this URL when the router link is lost (down for
    /// --alert-after: a router that refuses the tunnel counts), or back (also CONDUIT_ALERTS_WEBHOOK;
    /// `[alerts] webhook` in a file).
    #[arg(long, value_name = "URL", env = "CONDUIT_ALERTS_WEBHOOK", hide_env_values = true, value_parser = parse_secret)]
    pub(crate) alert_webhook: Option<Secret>,
    /// Send the same alerts to this Slack incoming-webhook URL (also
    /// CONDUIT_ALERTS_SLACK; `[alerts] slack` in a file).
    #[arg(long, value_name = "URL", env = "CONDUIT_ALERTS_SLACK", hide_env_values = true, value_parser = parse_secret)]
    pub(crate) alert_slack: Option<Secret>,
    /// Seconds the router link may be down before the alert that it is lost
    /// (`[alerts] lost_after_secs` in a file).
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub(crate) alert_after: u64,
    /// Seconds a connection to the router may go unanswered before the attempt
    /// fails (`[performance] connect_timeout_secs` in a file).
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub(crate) connect_timeout: u64,
    /// Seconds the router gets to complete the TLS handshake and Hello/Welcome.
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub(crate) handshake_timeout: u64,
    /// Open user connections at most (0: no limit); the next one is closed at once
    /// with a logged reason.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub(crate) max_connections: usize,
    /// Bytes per second the tunnel may move each way, over all its connections (0:
    /// no limit); `[performance] default_bandwidth_limit` in a file.
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    pub(crate) bandwidth_limit: u64,
    /// Bytes it may send at once after an idle spell (0: one second's worth);
    /// `[performance] burst_bandwidth_limit` in a file.
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = 0,
        requires = "bandwidth_limit"
    )]
    pub(crate) burst_limit: u64,
    #[command(flatten)]
    pub(crate) engine: EngineArgs,
    #[command(flatten)]
    pub(crate) service: ServiceArgs,
}

/// The init systems `--service-file` writes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ServiceKind {
    /// A systemd unit (Linux).
    Systemd,
    /// An OpenRC script run by supervise-daemon (Alpine, Gentoo).
    Openrc,
    /// A launchd job for /Library/LaunchDaemons (macOS).
    Launchd,
    /// An rc.d script run by daemon(8) (FreeBSD).
    #[value(name = "rc.d")]
    RcD,
}

/// Flags that turn a command into "write a service file that runs this command".
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Service file")]
pub(crate) struct ServiceArgs {
    /// Instead of running, print a service file for this init system; the service
    /// runs the same command in the foreground.
    #[arg(long, value_enum, value_name = "KIND")]
    pub(crate) service_file: Option<ServiceKind>,
    /// Write the service file here instead of printing it.
    #[arg(short = 'o', long, value_name = "PATH", requires = "service_file")]
    pub(crate) output: Option<PathBuf>,
    /// The service's name (default: conduit-TUNNEL).
    #[arg(long, value_name = "NAME", requires = "service_file")]
    pub(crate) service_name: Option<String>,
    /// The account the service runs as (default: the current user).
    #[arg(long, value_name = "USER", requires = "service_file")]
    pub(crate) service_user: Option<String>,
    /// The file of secrets (CONDUIT_TOKEN=...) the service reads at start (default:
    /// /etc/conduit/NAME.env; /usr/local/etc/conduit/NAME.env for launchd and rc.d).
    #[arg(long, value_name = "PATH", requires = "service_file")]
    pub(crate) service_env_file: Option<PathBuf>,
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
