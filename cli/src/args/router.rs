//! `conduit router`: the router's flags.

use std::path::PathBuf;

use clap::Args;
use conduit_controlplane::config::Override;
use conduit_proto::Secret;
use conduit_proto::tls::Suites;

use super::service::ServiceArgs;
use super::values::{TransportArg, parse_bool, parse_secret, parse_suites};

/// `conduit router`. Every setting also has a key in the router's configuration file
/// (`--config`) and a `CONDUIT_<SECTION>_<KEY>` variable; flags win over both.
#[derive(Debug, Args)]
pub(crate) struct RouterArgs {
    /// The router's configuration file (see deploy/router.example.toml).
    #[arg(short = 'f', long = "config", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Address to listen on for clients [default: 0.0.0.0:9999].
    #[arg(long, value_name = "ADDR")]
    pub(crate) bind: Option<String>,
    /// The router's private key (default: $CONDUIT_HOME/keys/router.key; the plain
    /// transport, which presents no key, does without one that is not there).
    #[arg(long, value_name = "PATH")]
    pub(crate) key: Option<PathBuf>,
    /// The key this router will present next (`conduit init --name router-next`): its
    /// public half is named to tunnels, which accept it from then on; restart the
    /// router with it as --key later, without touching the tunnels.
    #[arg(long, value_name = "PATH")]
    pub(crate) next_key: Option<PathBuf>,
    /// Client public keys to admit, one per line (default: $CONDUIT_HOME/authorized_clients).
    #[arg(long, value_name = "PATH")]
    pub(crate) authorized_keys: Option<PathBuf>,
    /// Allow clients to open this source: HOST:PORT, CIDR:PORT, *:PORT, ranges
    /// like 8000-8100; KEY=HOST:PORT for one client key, NAME=HOST:PORT for the
    /// keys named NAME in authorized_clients. Repeatable. Nothing is
    /// allowed without one. Replaces the rules of `allow` in --config (lists are
    /// not merged).
    #[arg(long = "allow", value_name = "RULE")]
    pub(crate) allow: Vec<String>,
    /// Require clients to present this token too (also CONDUIT_TOKEN).
    #[arg(long, value_parser = parse_secret)]
    pub(crate) token: Option<Secret>,
    /// tls (default), or plain for links that are already encrypted (e.g. inside
    /// WireGuard): no encryption, client keys not checked (no authorized_clients
    /// needed: --token is the only check), payload spliced. Clients must use the
    /// same transport.
    /// [default: tls; `[router] transport` in --config]
    #[arg(long, value_enum)]
    pub(crate) transport: Option<TransportArg>,
    /// TLS 1.3 cipher suites to accept, by IANA name, comma-separated, in the order
    /// the router prefers them: TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384,
    /// TLS_CHACHA20_POLY1305_SHA256 (default: all three, in that order).
    #[arg(long, value_name = "SUITES", value_parser = parse_suites)]
    pub(crate) cipher_suites: Option<Suites>,
    /// Seconds to let open streams finish after SIGTERM/SIGINT, 0 to 3600;
    /// `[performance] drain_timeout_secs` in --config [default: 30].
    #[arg(long, value_name = "SECS")]
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
    #[arg(long, value_name = "N")]
    pub(crate) workers: Option<usize>,
    /// I/O engine: auto (io_uring where usable), uring, or epoll.
    #[arg(long, value_name = "ENGINE", value_parser = ["auto", "uring", "epoll"])]
    pub(crate) io_engine: Option<String>,
    /// Pin each worker thread to its own core (true/false; off by default, see
    /// docs/architecture.md).
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set, value_parser = parse_bool)]
    pub(crate) pin_cores: Option<bool>,
    /// Relay streams through kernel TLS where this host's and the client's kernels
    /// offer it (true/false; on by default).
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set, value_parser = parse_bool)]
    pub(crate) kernel_tls: Option<bool>,
    /// Serve the REST API and /metrics (on 127.0.0.1:9990 unless --api-bind says).
    #[arg(long)]
    pub(crate) api: bool,
    /// Serve the REST API on this address (turns it on).
    #[arg(long, value_name = "ADDR")]
    pub(crate) api_bind: Option<String>,
    /// The API's bearer token (also CONDUIT_API_TOKEN, or api.token in the file).
    #[arg(long, value_name = "TOKEN", value_parser = parse_secret)]
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
