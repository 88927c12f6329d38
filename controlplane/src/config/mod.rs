//! Configuration: one typed tree, resolved from four layers in one place, checked as a
//! whole.
//!
//! ```text
//!  defaults ◀── file (conduit.toml) ◀── environment (CONDUIT_<SECTION>_<KEY>) ◀── CLI (--set …)
//!      │              │ file.rs            │ env.rs                                 │
//!      └──────────────┴──── layers.rs: schema-checked, every leaf tagged with its Origin
//!                                  │
//!                                  ▼
//!          model.rs: Config / RouterConfig (serde, deny_unknown_fields)
//!                                  │
//!               validate.rs: every problem, with its key path and a fix
//!                    │                         │
//!        plan.rs: TunnelPlan per tunnel    show.rs: effective values + origins,
//!        (what `conduit up` runs)          secrets printed as ***
//! ```
//!
//! Two kinds of file share the mechanism: a client's `conduit.toml` (`[router]` to reach,
//! `[security]`, `[performance]`, `[logging]`, `[[tunnels]]`; [`Role::Client`]) and a
//! router's (`[router]` to serve, `[performance]`, `[logging]`; [`Role::Router`]).
//!
//! The environment and `--set` reach the top-level sections only; `[[tunnels]]` is a list
//! and comes from the file alone. An empty variable counts as unset. A few variables the
//! command-line flags already read set keys too (`CONDUIT_TOKEN` → `security.token` /
//! `router.token`, `CONDUIT_ROUTER_KEY` → `router.public_key`, `CONDUIT_WORKERS`,
//! `CONDUIT_IO_ENGINE`); the `CONDUIT_<SECTION>_<KEY>` name wins when both are set.
//! Relative paths written in a file resolve against the file's directory; those from the
//! environment or the command line are made absolute against the working directory, so
//! the configuration names the same files wherever it is used next (a service, a
//! later `up` comparing settings).
//!
//! What this module does **not** do: start anything, or read the process environment
//! behind the caller's back ([`Env::from_process`] is called by the binary, tests pass
//! an [`Env`] of their own).

mod env;
mod file;
/// Opens a file to read without waiting on a named pipe nobody writes to.
pub(crate) use file::open as open_to_read;
mod layers;
mod model;
mod ops;
mod plan;
mod schema;
mod show;
mod validate;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

pub use env::Env;
pub use file::{missing, text as file_text};
pub use layers::{Override, env_value_from_working_dir};
pub use model::{
    AlertsConfig, ApiConfig, Config, HealthConfig, IoEngine, LATENCY_POOL, LogFormat, LogLevel,
    LogRotation, LoggingConfig, MAX_SOCKET_BUFFER, MIN_SOCKET_BUFFER, OptimizeFor,
    PerformanceConfig, Protocol, ProxyProtocolVersion, RESERVED_FDS, RouterConfig, RouterPeer,
    RouterServer, STREAM_IDLE_TIMEOUT_SECS, Security, TransportKind, TunnelConfig,
};
pub use plan::{Plan, TunnelPlan, plan_tunnels};
pub use schema::{parse_bool, parse_path, token_problem};
pub use show::Format;
pub(crate) use validate::peer_tunnel_name;
pub use validate::{
    a_directory_for_a_file, empty_member, host_port, next_key_is_the_current_one,
    not_a_listen_addr, small_burst, too_many_members, tunnel_name, webhook_url,
};

/// One `--allow-from` / `allow_from` entry: an address (one host) or a CIDR block,
/// IPv6 with or without brackets.
pub fn allow_from_net(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim().trim_start_matches('[').trim_end_matches(']');
    if let Ok(net) = s.parse::<ipnet::IpNet>()
        && net.trunc() != net
    {
        // `192.0.2.7/8` typed for one host would let in the whole block.
        return Err(format!(
            "{net} has bits set past its /{}: write {} for the whole block, or {} for that \
             host alone",
            net.prefix_len(),
            net.trunc(),
            net.addr()
        ));
    }
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map(ipv4_of_mapped)
        .map_err(|_| {
            "not an address or a CIDR block; write 10.0.0.0/8, 192.0.2.7 or 2001:db8::/32".into()
        })
}

/// An IPv4-mapped block (`::ffff:10.0.0.0/104`) as the IPv4 one it stands for
/// (`10.0.0.0/8`): users are checked by their IPv4 address, as a dual-stack socket's
/// `::ffff:a.b.c.d` is.
fn ipv4_of_mapped(net: ipnet::IpNet) -> ipnet::IpNet {
    match net {
        ipnet::IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, ipnet::IpNet::V4),
            None => net,
        },
        _ => net,
    }
}

use crate::home::Home;

/// What a service file needs to know of one setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// Its `CONDUIT_<SECTION>_<KEY>` variable.
    pub env: String,
    /// A token or a URL that carries one: kept out of files other people read.
    pub secret: bool,
    /// A file's path.
    pub path: bool,
}

/// The setting `section.key` of `role`'s file, if there is one.
pub fn setting(role: Role, key_path: &str) -> Option<Setting> {
    let (section, key) = key_path.split_once('.')?;
    let section = schema::Schema::of(role).section(section)?;
    let key = section.key(key)?;
    Some(Setting {
        env: section.env_name(key),
        secret: key.secret,
        path: matches!(key.kind, schema::Kind::Path),
    })
}

/// Which kind of file is being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A client's `conduit.toml`: the router to reach and the tunnels to run.
    Client,
    /// A router's file: where to listen, whom to admit, what they may open.
    Router,
}

impl Role {
    /// The other kind of file.
    pub fn other(self) -> Role {
        match self {
            Role::Client => Role::Router,
            Role::Router => Role::Client,
        }
    }
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Nobody set it.
    Default,
    /// The configuration file; `line` is 1-based.
    File {
        /// The file, as it was named.
        path: PathBuf,
        /// The line of the key, when known.
        line: Option<usize>,
    },
    /// An environment variable.
    Env(String),
    /// A command-line flag.
    Cli(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File {
                path,
                line: Some(l),
            } => write!(f, "{}:{l}", path.display()),
            Origin::File { path, line: None } => write!(f, "{}", path.display()),
            Origin::Env(var) => write!(f, "env {var}"),
            Origin::Cli(flag) => write!(f, "cli {flag}"),
        }
    }
}

/// Origins of the values that were set, by key path (`router.port`, `tunnels[1].bind`);
/// a path not listed has its default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origins(BTreeMap<String, Origin>);

impl Origins {
    /// Where the value at `path` came from.
    pub fn get(&self, path: &str) -> &Origin {
        self.0.get(path).unwrap_or(&Origin::Default)
    }

    /// Every value that was set, with its origin, by key path.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Origin)> {
        self.0.iter().map(|(k, o)| (k.as_str(), o))
    }

    /// The `CONDUIT_<SECTION>_<KEY>` variables values came from, each once, in key
    /// order: what a service running the same configuration needs in its environment.
    pub fn env_vars(&self) -> Vec<String> {
        let mut vars: Vec<String> = Vec::new();
        for origin in self.0.values() {
            if let Origin::Env(var) = origin
                && !vars.contains(var)
            {
                vars.push(var.clone());
            }
        }
        vars
    }

    pub(crate) fn set(&mut self, path: String, origin: Origin) {
        self.0.insert(path, origin);
    }

    /// Forgets the origins of the items of the list at `path` (`path[0]`, …): a
    /// later layer replaced the list whole.
    pub(crate) fn forget_items(&mut self, path: &str) {
        let items = format!("{path}[");
        self.0.retain(|k, _| !k.starts_with(&items));
    }
}

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The configuration cannot be used as it is.
    Error,
    /// It can be used, but probably does not do what was meant.
    Warning,
}

/// One thing wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Error or warning.
    pub severity: Severity,
    /// The key path (`tunnels[1].bind`), or `""` for the file as a whole.
    pub path: String,
    /// What is wrong and how to fix it.
    pub message: String,
    /// Where the offending value came from, when that helps find it.
    pub origin: Option<Origin>,
}

impl Problem {
    pub(crate) fn error(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            path: path.into(),
            message: message.into(),
            origin: None,
        }
    }

    pub(crate) fn warning(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(path, message)
        }
    }

    pub(crate) fn at(mut self, origin: &Origin) -> Self {
        if *origin != Origin::Default {
            self.origin = Some(origin.clone());
        }
        self
    }
}

/// The most of a problem's message shown: one quoting a value of 100 kB (a
/// mistake, most likely) is cut in its middle.
const MESSAGE_SHOWN: usize = 1000;

impl Problem {
    /// The message as shown: whole, or cut in its middle past 1,000 bytes (a value of
    /// 100 kB quoted whole would bury the rest).
    pub fn shown_message(&self) -> std::borrow::Cow<'_, str> {
        let m = &self.message;
        if m.len() <= MESSAGE_SHOWN {
            return m.into();
        }
        let half = MESSAGE_SHOWN / 2;
        let head = (0..=half)
            .rev()
            .find(|&i| m.is_char_boundary(i))
            .unwrap_or(0);
        let tail = (m.len() - half..=m.len())
            .find(|&i| m.is_char_boundary(i))
            .unwrap_or(m.len());
        format!(
            "{}… ({} bytes left out) …{}",
            &m[..head],
            tail - head,
            &m[tail..]
        )
        .into()
    }
}

/// `router.port: 70000 is out of range; use 1-65535 (conduit.toml:3)`.
impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.shown_message())?;
        match &self.origin {
            Some(o) => write!(f, " ({o})"),
            None => Ok(()),
        }
    }
}

/// Every problem found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The problems.
    pub problems: Vec<Problem>,
    /// How many of the file's unknown keys and sections belong in the other kind of
    /// file (a router's checked as a client's, or the reverse).
    pub other_kind: usize,
}

impl Report {
    /// True when at least one problem is an error.
    pub fn has_errors(&self) -> bool {
        self.problems.iter().any(|p| p.severity == Severity::Error)
    }

    /// The errors.
    pub fn errors(&self) -> impl Iterator<Item = &Problem> {
        self.problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
    }

    /// The warnings.
    pub fn warnings(&self) -> impl Iterator<Item = &Problem> {
        self.problems
            .iter()
            .filter(|p| p.severity == Severity::Warning)
    }

    pub(crate) fn push(&mut self, p: Problem) {
        self.problems.push(p);
    }

    pub(crate) fn extend(&mut self, ps: impl IntoIterator<Item = Problem>) {
        self.problems.extend(ps);
    }

    /// Adds what `validate` found, but nothing more on a key or a list item the
    /// layers found bad already, when what `validate` saw is that bad value (kept as
    /// text only to hold its place in a list) or the default that stands in for it:
    /// anything said of it would be said twice, or of a value nobody gave (a "no
    /// rule" warning for a list whose items were all wrong).
    fn extend_checked(&mut self, ps: impl IntoIterator<Item = Problem>) {
        let mut bad: HashMap<String, Vec<Option<Origin>>> = HashMap::new();
        for p in self.errors().filter(|p| !p.path.is_empty()) {
            bad.entry(p.path.clone())
                .or_default()
                .push(p.origin.clone());
        }
        let seen = |p: &Problem| {
            bad.get(&p.path)
                .is_some_and(|origins| p.origin.is_none() || origins.contains(&p.origin))
        };
        let ps: Vec<Problem> = ps.into_iter().filter(|p| !seen(p)).collect();
        self.problems.extend(ps);
    }

    /// Keeps the first [`ITEMS_NAMED`] problems with the items of each list (in the
    /// order sorted) and counts the rest in one problem of the list's: a list of a
    /// million wrong items (a generated file gone wrong) is not a million lines.
    fn name_few_items(&mut self) {
        let mut named: HashMap<String, usize> = HashMap::new();
        let mut more: Vec<(String, usize, Severity)> = Vec::new();
        self.problems.retain(|p| {
            let Some(list) = list_of_item(&p.path) else {
                return true;
            };
            let n = named.entry(list.to_owned()).or_default();
            *n += 1;
            if *n <= ITEMS_NAMED {
                return true;
            }
            match more.iter_mut().find(|(l, ..)| l == list) {
                Some((_, count, severity)) => {
                    *count += 1;
                    *severity = (*severity).min(p.severity);
                }
                None => more.push((list.to_owned(), 1, p.severity)),
            }
            false
        });
        for (list, count, severity) in more {
            self.problems.push(Problem {
                severity,
                message: format!(
                    "{count} more problems with its items past the {ITEMS_NAMED} named; fix \
                     those, then check again"
                ),
                path: list,
                origin: None,
            });
        }
    }

    /// Errors first, then warnings; each in file order (the items of a list on one
    /// line in their order), then the ones with no line (environment, command line,
    /// missing keys) in the order found.
    fn sort(&mut self) {
        self.problems.sort_by_key(|p| {
            let line = match &p.origin {
                Some(Origin::File { line: Some(l), .. }) => *l,
                _ => usize::MAX,
            };
            let item = list_of_item(&p.path).and_then(|list| {
                let i = p.path.get(list.len() + 1..p.path.len() - 1)?;
                i.parse::<usize>().ok()
            });
            (p.severity, line, item)
        });
    }
}

/// The most problems with the items of one list shown one by one.
const ITEMS_NAMED: usize = 100;

/// `router.allow` for `router.allow[3]`; `None` for a path that is no list's item.
fn list_of_item(path: &str) -> Option<&str> {
    let (list, i) = path.strip_suffix(']')?.rsplit_once('[')?;
    i.bytes().all(|b| b.is_ascii_digit()).then_some(list)
}

/// What to read: the file, the environment, command-line overrides, and the home
/// directory that default key paths live in.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The configuration file, as the user named it; an empty path reads no file (a
    /// router run from its flags and the environment alone).
    pub file: PathBuf,
    /// The flag that names another file (`-f`, `--config`), for the message when
    /// `file` does not exist.
    pub file_flag: &'static str,
    /// The text of `file` when the caller holds it already ([`file_text`]): it is
    /// used as is and `file` is not read again, though it still names the file
    /// (for messages, and for its relative paths). An `up --foreground` hands each
    /// tunnel it starts the text it started with, whatever the file says by then.
    pub contents: Option<String>,
    /// The `CONDUIT_*` variables.
    pub env: Env,
    /// Command-line overrides, applied last.
    pub overrides: Vec<Override>,
    /// `CONDUIT_HOME`, for default key paths.
    pub home: Home,
}

/// A configuration as resolved, with where each value came from and what is wrong with it.
#[derive(Debug, Clone)]
pub struct Loaded<T> {
    /// The effective configuration (file paths resolved, defaults filled in).
    pub config: T,
    /// Where each value came from.
    pub origins: Origins,
    /// The file it was read from.
    pub file: PathBuf,
    /// Every problem found; check [`Report::has_errors`] before using `config`.
    pub report: Report,
}

/// Reads and checks a client's `conduit.toml`.
///
/// `Err` means no configuration could be built at all (the file is missing or is not
/// TOML); otherwise every problem is in [`Loaded::report`].
pub fn load_client(sources: &Sources) -> Result<Loaded<Config>, Report> {
    let (mut config, origins, mut report): (Config, _, _) = layers::resolve(Role::Client, sources)?;
    config.fill_defaults(&sources.home);
    report.extend_checked(validate::client(&config, &origins));
    Ok(finish(config, origins, &sources.file, report))
}

/// Reads and checks a router's configuration file.
///
/// `Err` means no configuration could be built at all (the file is missing or is not
/// TOML); otherwise every problem is in [`Loaded::report`].
pub fn load_router(sources: &Sources) -> Result<Loaded<RouterConfig>, Report> {
    let (mut config, origins, mut report): (RouterConfig, _, _) =
        layers::resolve(Role::Router, sources)?;
    config.fill_defaults(&sources.home);
    report.extend_checked(validate::router(&config, &origins));
    Ok(finish(config, origins, &sources.file, report))
}

/// The cipher suites a `cipher_suites` key names (every suite when it names none);
/// the schema checked each name before.
pub fn suites(names: &[String]) -> Result<conduit_proto::tls::Suites, String> {
    names
        .iter()
        .map(|n| n.parse())
        .collect::<Result<Vec<_>, _>>()
        .map(conduit_proto::tls::Suites::new)
}

fn finish<T>(config: T, origins: Origins, file: &Path, mut report: Report) -> Loaded<T> {
    report.sort();
    report.name_few_items();
    Loaded {
        config,
        origins,
        file: file.to_owned(),
        report,
    }
}

/// Renders an effective configuration with each value's origin; secrets print as `***`.
pub fn show_client(loaded: &Loaded<Config>, format: Format) -> String {
    show::render(Role::Client, loaded, format)
}

/// Renders an effective router configuration with each value's origin; secrets print
/// as `***`.
pub fn show_router(loaded: &Loaded<RouterConfig>, format: Format) -> String {
    show::render(Role::Router, loaded, format)
}

#[cfg(test)]
mod tests;
