//! `conduit start`, `up` and `down`: a tunnel's flags, and its data plane's.

use std::path::PathBuf;

use clap::builder::RangedU64ValueParser;
use clap::{Args, ValueEnum};
use conduit_controlplane::config::{Override, STREAM_IDLE_TIMEOUT_SECS};
use conduit_dataplane::Engine;
use conduit_proto::Secret;
use conduit_proto::tls::Suites;

use super::service::ServiceArgs;
use super::values::{TransportArg, parse_bool, parse_secret, parse_suites};

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
    /// Internal: this process is a child of the `up --foreground` with this pid,
    /// which restarts it when it fails.
    #[arg(
        long,
        hide = true,
        value_name = "PID",
        requires = "tunnel",
        conflicts_with = "detached"
    )]
    pub(crate) supervisor: Option<u32>,
    /// Internal: the file's text comes on standard input (the text the supervisor
    /// started with), not from FILE, which still names it.
    #[arg(long, hide = true, requires = "supervisor")]
    pub(crate) file_on_stdin: bool,
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

#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Data plane")]
pub(crate) struct EngineArgs {
    /// Data-plane worker threads, 0-1024 (default, 0: one per usable core).
    #[arg(long, value_name = "N", env = "CONDUIT_WORKERS", default_value_t = 0, value_parser = parse_workers)]
    pub(crate) workers: usize,
    /// I/O engine: auto (io_uring where usable), uring, or epoll.
    #[arg(long, value_name = "ENGINE", env = "CONDUIT_IO_ENGINE", default_value = "auto", value_parser = parse_engine)]
    pub(crate) io_engine: Engine,
    /// Pin each worker thread to its own core. Worth it on a dedicated gateway; off
    /// by default because relays sharing a machine (a client and a router, a
    /// container host) can end up pinned to the same core (docs/architecture.md).
    #[arg(long, value_name = "BOOL", env = "CONDUIT_PIN_CORES", default_value_t = false, action = clap::ArgAction::Set, value_parser = parse_bool)]
    pub(crate) pin_cores: bool,
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
    /// each router's, separated by commas, in the order of --router. Required on the
    /// TLS transport; the plain transport checks no keys (nor --key).
    #[arg(long, value_name = "KEY", env = "CONDUIT_ROUTER_KEY")]
    pub(crate) router_key: Option<String>,
    /// The service to reach, HOST:PORT as the router sees it.
    #[arg(long)]
    pub(crate) source: String,
    /// Where users connect, ADDR:PORT on this machine.
    #[arg(long, value_name = "ADDR")]
    pub(crate) bind: String,
    /// This client's private key (default: $CONDUIT_HOME/keys/client.key; the plain
    /// transport, which checks no keys, does without one that is not there).
    #[arg(long, value_name = "PATH")]
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
    /// TCP tunnels: seconds a user's connection may move no byte either way, with
    /// nothing on its way to a reader here, before it is closed (both ends reset,
    /// counted as `idle_timeout`); 0 (the default) for never. Longer than any upload
    /// a slow source still takes after its user is done: the tunnel cannot see that
    /// drain. `[performance] stream_idle_timeout_secs` in a file.
    #[arg(long, value_name = "SECS", default_value_t = STREAM_IDLE_TIMEOUT_SECS, value_parser = clap::value_parser!(u64).range(0..=604800))]
    pub(crate) stream_idle_timeout: u64,
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
    #[arg(long, value_name = "GOAL", value_enum, default_value_t = OptimizeArg::Balanced)]
    pub(crate) optimize_for: OptimizeArg,
    /// The kernel's receive buffer (SO_RCVBUF) of each relayed socket, in bytes (0:
    /// the kernel's auto-tuning); `[performance] read_buffer_size` in a file.
    #[arg(long, value_name = "BYTES", default_value_t = 0, value_parser = socket_buffer)]
    pub(crate) read_buffer_size: usize,
    /// Relay streams through kernel TLS where this host's and the router's kernels
    /// offer it (true/false); `[performance] kernel_tls` in a file.
    #[arg(long, value_name = "BOOL", env = "CONDUIT_KERNEL_TLS", default_value_t = true, action = clap::ArgAction::Set, value_parser = parse_bool)]
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
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=86_400), conflicts_with = "router_balance")]
    pub(crate) router_failback: u64,
    /// With several routers (`--router A,B`): how often a router on standby (one
    /// not in use) is checked with a full handshake, besides a look at its port
    /// about every 10 s, so that one that would refuse the tunnel shows in `status`,
    /// `health` and the alerts before the tunnel needs it; 0 looks at its port
    /// only. `[router] standby_check_secs` in a file.
    #[arg(long, value_name = "SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(0..=86_400), conflicts_with = "router_balance")]
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
