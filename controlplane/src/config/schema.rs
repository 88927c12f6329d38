//! The keys each kind of file may hold: their types and ranges, which are required,
//! which are secret, and the environment variables that set them.
//!
//! The typed tree in `model.rs` is what the rest of Conduit reads; this table is what
//! lets the layers check every key on its own (so one bad value does not hide the
//! next), map `CONDUIT_<SECTION>_<KEY>` to keys, and list valid keys in messages. A
//! test keeps the two in step.

use std::str::FromStr;

use conduit_proto::tls::{Suite, Suites};
use toml::Value;

use super::Role;

/// What a key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A non-empty string.
    Str,
    /// A file path; relative paths in a file resolve against the file's directory.
    Path,
    /// A public key (`ed25519:…`) or the path of a `.pub` file (resolved like `Path`).
    KeyOrPath,
    /// An integer in `min..=max`.
    Int { min: i64, max: i64 },
    /// `true` or `false`.
    Bool,
    /// One of these words.
    Choice(&'static [&'static str]),
    /// A list of non-empty strings (comma-separated in the environment).
    List,
    /// A list of public keys or `.pub` paths (each resolved like `KeyOrPath`).
    KeyList,
    /// A list of TLS 1.3 cipher suites by IANA name (comma-separated in the
    /// environment), in order of preference.
    Suites,
}

/// One key of a section.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Key {
    pub(crate) name: &'static str,
    pub(crate) kind: Kind,
    /// The line to add when it is missing; empty when the key is optional.
    pub(crate) required: &'static str,
    /// Printed as `***`.
    pub(crate) secret: bool,
    /// Older variables that set it too (the flags' `CONDUIT_TOKEN`, …); the
    /// `CONDUIT_<SECTION>_<KEY>` name wins when both are set.
    pub(crate) aliases: &'static [&'static str],
}

const fn key(name: &'static str, kind: Kind) -> Key {
    Key {
        name,
        kind,
        required: "",
        secret: false,
        aliases: &[],
    }
}

impl Key {
    const fn required(self, example: &'static str) -> Self {
        Key {
            required: example,
            ..self
        }
    }
    const fn secret(self) -> Self {
        Key {
            secret: true,
            ..self
        }
    }
    const fn alias(self, aliases: &'static [&'static str]) -> Self {
        Key { aliases, ..self }
    }
}

/// A `[section]` table.
#[derive(Debug)]
pub(crate) struct Section {
    pub(crate) name: &'static str,
    pub(crate) keys: &'static [Key],
}

impl Section {
    pub(crate) fn key(&self, name: &str) -> Option<&'static Key> {
        self.keys.iter().find(|k| k.name == name)
    }

    /// `CONDUIT_<SECTION>_<KEY>`.
    pub(crate) fn env_name(&self, key: &Key) -> String {
        format!("CONDUIT_{}_{}", self.name, key.name).to_ascii_uppercase()
    }
}

/// All the keys of one kind of file.
#[derive(Debug)]
pub(crate) struct Schema {
    pub(crate) sections: &'static [Section],
    /// The keys of each `[[tunnels]]` table, for files that have tunnels.
    pub(crate) tunnels: Option<&'static [Key]>,
}

impl Schema {
    pub(crate) fn of(role: Role) -> &'static Schema {
        match role {
            Role::Client => &CLIENT,
            Role::Router => &ROUTER,
        }
    }

    pub(crate) fn section(&self, name: &str) -> Option<&'static Section> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// `router, security, …, tunnels`.
    pub(crate) fn section_names(&self) -> String {
        let mut names: Vec<&str> = self.sections.iter().map(|s| s.name).collect();
        if self.tunnels.is_some() {
            names.push("tunnels");
        }
        names.join(", ")
    }
}

pub(crate) const PORT: Kind = Kind::Int { min: 1, max: 65535 };
const SECS: Kind = Kind::Int { min: 1, max: 3600 };
const COUNT: Kind = Kind::Int {
    min: 0,
    max: i64::MAX,
};
const BUFFER: Kind = Kind::Int {
    min: 0,
    max: super::model::MAX_SOCKET_BUFFER as i64,
};

const PERFORMANCE: Section = Section {
    name: "performance",
    keys: &[
        key("workers", Kind::Int { min: 0, max: 1024 }).alias(&["CONDUIT_WORKERS"]),
        key("io_engine", Kind::Choice(&["auto", "uring", "epoll"])).alias(&["CONDUIT_IO_ENGINE"]),
        key("pin_cores", Kind::Bool).alias(&["CONDUIT_PIN_CORES"]),
        key("pool_size", Kind::Int { min: 0, max: 64 }),
        key("auto_tune", Kind::Bool),
        key(
            "optimize_for",
            Kind::Choice(&["throughput", "latency", "balanced"]),
        ),
        key("tcp_nodelay", Kind::Bool),
        key("kernel_tls", Kind::Bool).alias(&["CONDUIT_KERNEL_TLS"]),
        key("tcp_keepalive_secs", Kind::Int { min: 0, max: 86400 }),
        key("read_buffer_size", BUFFER),
        key("write_buffer_size", BUFFER),
        key("default_bandwidth_limit", COUNT),
        key("burst_bandwidth_limit", COUNT),
        key("max_connections", COUNT),
        key("connect_timeout_secs", SECS),
        key("handshake_timeout_secs", SECS),
        key("max_pending_handshakes", Kind::Int { min: 1, max: 65536 }),
        key("idle_timeout_secs", Kind::Int { min: 1, max: 86400 }),
        key(
            "stream_idle_timeout_secs",
            Kind::Int {
                min: 0,
                max: 604800,
            },
        ),
        key("drain_timeout_secs", Kind::Int { min: 0, max: 3600 }),
        key("heartbeat_interval_secs", Kind::Int { min: 1, max: 300 }),
        key("udp_idle_timeout_secs", Kind::Int { min: 1, max: 86400 }),
        key("udp_max_new_flows", COUNT),
    ],
};

const LOGGING: Section = Section {
    name: "logging",
    keys: &[
        key(
            "level",
            Kind::Choice(&["error", "warn", "info", "debug", "trace"]),
        ),
        key("format", Kind::Choice(&["text", "json"])),
        key("file", Kind::Path),
        key("rotation", Kind::Choice(&["never", "hourly", "daily"])),
        key("keep", Kind::Int { min: 0, max: 10000 }),
    ],
};

// `[alerts]`: the router's, and a client's with one more key.
const ALERT_WEBHOOK: Key = key("webhook", Kind::Str).secret();
const ALERT_SLACK: Key = key("slack", Kind::Str).secret();
const ALERT_RETRIES: Key = key("retries", Kind::Int { min: 0, max: 20 });
const ALERT_TIMEOUT: Key = key("timeout_secs", SECS);
const ALERT_FLAP_WINDOW: Key = key("flap_window_secs", Kind::Int { min: 1, max: 86400 });
const ALERT_FLAP_CHANGES: Key = key("flap_changes", Kind::Int { min: 1, max: 1000 });
const ALERT_NAME: Key = key("name", Kind::Str);

static CLIENT: Schema = Schema {
    sections: &[
        Section {
            name: "router",
            keys: &[
                key("host", Kind::Str).required("host = \"10.2.0.1\""),
                key("port", PORT),
                key("public_key", Kind::KeyOrPath)
                    .required("public_key = \"ed25519:…\" (what the router's `conduit init` printed, or the path of its .pub file)")
                    .alias(&["CONDUIT_ROUTER_KEY"]),
                key("transport", Kind::Choice(&["tls", "plain"])),
                key("fallbacks", Kind::List),
                key("fallback_keys", Kind::KeyList),
                key("failback_secs", Kind::Int { min: 0, max: 86_400 }),
                key("standby_check_secs", Kind::Int { min: 0, max: 86_400 }),
                key("balance", Kind::Bool),
            ],
        },
        Section {
            name: "security",
            keys: &[
                key("private_key_path", Kind::Path),
                key("token", Kind::Str).secret().alias(&["CONDUIT_TOKEN"]),
                key("key_rotation_days", Kind::Int { min: 0, max: 3650 }),
                key("cipher_suites", Kind::Suites),
            ],
        },
        PERFORMANCE,
        LOGGING,
        Section {
            name: "alerts",
            keys: &[
                ALERT_WEBHOOK,
                ALERT_SLACK,
                ALERT_RETRIES,
                ALERT_TIMEOUT,
                ALERT_FLAP_WINDOW,
                ALERT_FLAP_CHANGES,
                ALERT_NAME,
                key("lost_after_secs", Kind::Int { min: 0, max: 86_400 }),
            ],
        },
    ],
    tunnels: Some(&[
        key("name", Kind::Str).required("name = \"web\""),
        key("source", Kind::Str).required("source = \"10.2.0.2:8080\""),
        key("bind", Kind::Str).required("bind = \"0.0.0.0:8080\""),
        key("protocol", Kind::Choice(&["tcp", "udp"])),
        key("proxy_protocol", Kind::Choice(&["v1", "v2"])),
        key("allow_from", Kind::List),
    ]),
};

static ROUTER: Schema = Schema {
    sections: &[
        Section {
            name: "router",
            keys: &[
                key("bind", Kind::Str),
                key("private_key_path", Kind::Path),
                key("next_private_key_path", Kind::Path),
                key("authorized_keys", Kind::Path),
                key("allow", Kind::List),
                key("token", Kind::Str).secret().alias(&["CONDUIT_TOKEN"]),
                key(
                    "key_grace_secs",
                    Kind::Int {
                        min: 1,
                        max: 90 * 86_400,
                    },
                ),
                key("key_rotation_days", Kind::Int { min: 0, max: 3650 }),
                key(
                    "key_announce_secs",
                    Kind::Int {
                        min: 1,
                        max: 90 * 86_400,
                    },
                ),
                key(
                    "key_retire_secs",
                    Kind::Int {
                        min: 0,
                        max: 365 * 86_400,
                    },
                ),
                key("cipher_suites", Kind::Suites),
                key("transport", Kind::Choice(&["tls", "plain"])),
            ],
        },
        Section {
            name: "api",
            keys: &[
                key("enabled", Kind::Bool),
                key("bind", Kind::Str),
                key("token", Kind::Str).secret(),
                key("auth", Kind::Bool),
                key(
                    "history_interval_secs",
                    Kind::Int {
                        min: 1,
                        max: 86_400,
                    },
                ),
                key(
                    "history_samples",
                    Kind::Int {
                        min: 1,
                        max: 100_000,
                    },
                ),
                key("history_file", Kind::Path),
            ],
        },
        Section {
            name: "health",
            keys: &[
                key("interval_secs", SECS),
                key("timeout_secs", SECS),
                key("failures", Kind::Int { min: 1, max: 100 }),
                key("successes", Kind::Int { min: 1, max: 100 }),
                key(
                    "recent_secs",
                    Kind::Int {
                        min: 1,
                        max: 86400 * 30,
                    },
                ),
                key("sources", Kind::List),
                key("udp_probes", Kind::List),
                key("client_timeout_secs", SECS),
                key(
                    "lost_link_expiry_secs",
                    Kind::Int {
                        min: 1,
                        max: 86400 * 30,
                    },
                ),
            ],
        },
        Section {
            name: "alerts",
            keys: &[
                ALERT_WEBHOOK,
                ALERT_SLACK,
                ALERT_RETRIES,
                ALERT_TIMEOUT,
                ALERT_FLAP_WINDOW,
                ALERT_FLAP_CHANGES,
                ALERT_NAME,
            ],
        },
        PERFORMANCE,
        LOGGING,
    ],
    tunnels: None,
};

/// Variables Conduit reads that are not keys of either file. `CONDUIT_LOG_LEVEL` and
/// `CONDUIT_LOG_FORMAT` belong to the global `--log-level`/`--log-format` flags, which
/// also accept tracing filters, so they are not aliases of `logging.level`/`format`.
/// `CONDUIT_LOG_FILE` is the global `--log-file`'s; `CONDUIT_CIPHER_SUITES`
/// `conduit start --cipher-suites`'s.
pub(crate) const OTHER_VARS: &[&str] = &[
    "CONDUIT_HOME",
    "CONDUIT_ROUTER",
    "CONDUIT_LOG_LEVEL",
    "CONDUIT_LOG_FORMAT",
    "CONDUIT_LOG_FILE",
    "CONDUIT_CIPHER_SUITES",
];

/// Variables read by something other than a command's settings, never warned of
/// (and never offered as a "did you mean"): the name a child inherits its claim
/// under, the commit the build records, and the test suites' own switches.
pub(crate) const QUIET_VARS: &[&str] = &[
    "CONDUIT_NAME_CLAIM",
    "CONDUIT_GIT_COMMIT",
    "CONDUIT_BLESS",
    "CONDUIT_E2E_REQUIRE_TOOLS",
    "CONDUIT_SOAK_SECS",
];

/// Every `CONDUIT_*` variable Conduit knows.
pub(crate) fn known_vars() -> Vec<String> {
    let mut v: Vec<String> = OTHER_VARS.iter().map(|s| (*s).to_owned()).collect();
    for schema in [&CLIENT, &ROUTER] {
        for s in schema.sections {
            for k in s.keys {
                v.push(s.env_name(k));
                v.extend(k.aliases.iter().map(|a| (*a).to_owned()));
            }
        }
    }
    v.sort();
    v.dedup();
    v
}

impl Kind {
    /// What a value of this kind looks like, for messages.
    fn describe(self) -> String {
        match self {
            Kind::Str | Kind::Path | Kind::KeyOrPath => "a string".into(),
            Kind::Int { min, max } => format!("an integer ({})", range(min, max)),
            Kind::Bool => "true or false".into(),
            Kind::Choice(words) => format!("one of {}", words.join(", ")),
            Kind::List | Kind::KeyList => "a list of strings".into(),
            Kind::Suites => "a list of cipher suite names".into(),
        }
    }

    /// Checks a value read from the file.
    pub(crate) fn check(self, name: &str, v: &Value) -> Result<(), String> {
        let wrong = || {
            let mut m = format!("expected {}, found {}", self.describe(), type_of(v));
            if let Value::String(s) = v {
                let unquoted = (matches!(self, Kind::Int { .. })
                    && s.trim().parse::<i64>().is_ok())
                    || (self == Kind::Bool && matches!(s.as_str(), "true" | "false"));
                if unquoted {
                    m.push_str(&format!("; write it without quotes: {name} = {}", s.trim()));
                }
                // One string where a list goes: the list of it.
                if matches!(self, Kind::List | Kind::KeyList) {
                    m.push_str(&format!("; write it as a list: {name} = [{v}]"));
                }
            }
            // A list where one string goes: `source` names several in one string.
            if let Value::Array(items) = v
                && matches!(self, Kind::Str)
                && name == "source"
                && !items.is_empty()
                && items.iter().all(Value::is_str)
            {
                let joined: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
                m.push_str(&format!(
                    "; several sources go in one string, comma-separated: {name} = \"{}\"",
                    joined.join(",")
                ));
            }
            m
        };
        match (self, v) {
            (Kind::Path, Value::String(s)) => non_empty(s)
                .and_then(|()| no_control(s))
                .and_then(|()| no_tilde(s)),
            (Kind::Str | Kind::KeyOrPath, Value::String(s)) => {
                non_empty(s).and_then(|()| no_control(s))
            }
            (Kind::Int { min, max }, Value::Integer(n)) => in_range(*n, min, max),
            (Kind::Bool, Value::Boolean(_)) => Ok(()),
            (Kind::Choice(words), Value::String(s)) => choice(words, s),
            (Kind::Suites, Value::Array(items)) if items.is_empty() => Err(format!(
                "no cipher suite named; leave {name} out to allow every suite, or name one or \
                 more of {}",
                Suites::all()
            )),
            // Their items are checked one by one: `bad_items`.
            (Kind::Suites | Kind::List | Kind::KeyList, Value::Array(_)) => Ok(()),
            _ => Err(wrong()),
        }
    }

    /// What is wrong with each item of a list read from the file (one that `check`
    /// passed), by index: every bad item at once, not one per run of `validate`.
    /// Empty for a kind that is not a list.
    pub(crate) fn bad_items(self, items: &[Value]) -> Vec<(usize, String)> {
        let lists = matches!(self, Kind::List | Kind::KeyList | Kind::Suites);
        let one = |item: &Value| match item {
            Value::String(s) if self == Kind::Suites => {
                Suite::from_str(s).err().map(|e| e.to_string())
            }
            Value::String(s) if s.trim().is_empty() => {
                Some("is empty; remove it from the list".to_owned())
            }
            Value::String(s) => no_control(s).err(),
            other => Some(format!("expected a string, found {}", type_of(other))),
        };
        match lists {
            true => (items.iter().enumerate())
                .filter_map(|(i, item)| Some((i, one(item)?)))
                .collect(),
            false => Vec::new(),
        }
    }

    /// Parses a value given as text (an environment variable or a `--set`).
    pub(crate) fn parse_text(self, s: &str) -> Result<Value, String> {
        match self {
            Kind::Str | Kind::Path | Kind::KeyOrPath => {
                if s.trim().is_empty() {
                    return Err("is empty; give a value, or leave it unset".into());
                }
                no_control(s)?;
                if self == Kind::Path {
                    no_tilde(s)?;
                }
                Ok(Value::String(s.to_owned()))
            }
            Kind::Int { min, max } => {
                let n: i64 = s.trim().parse().map_err(|e: std::num::ParseIntError| {
                    use std::num::IntErrorKind::{NegOverflow, PosOverflow};
                    match e.kind() {
                        PosOverflow | NegOverflow => {
                            format!("{} is out of range; use {}", s.trim(), range(min, max))
                        }
                        _ => format!("expected {}, found {s:?}", self.describe()),
                    }
                })?;
                in_range(n, min, max)?;
                Ok(Value::Integer(n))
            }
            Kind::Bool => parse_bool(s).map(Value::Boolean),
            Kind::Choice(words) => {
                let w = s.trim().to_ascii_lowercase();
                choice(words, &w)?;
                Ok(Value::String(w))
            }
            Kind::Suites => Ok(Value::Array(
                Suites::parse_list(s)?
                    .list()
                    .into_iter()
                    .map(|suite| Value::String(suite.name().to_owned()))
                    .collect(),
            )),
            // A list written as in the file (`["a", "b"]`) is read as one; an IPv6
            // address in brackets (`[::1]:80`) is not one.
            Kind::List | Kind::KeyList if toml_list(s) => {
                match toml::from_str::<toml::Table>(&format!("v = {s}")) {
                    Ok(mut t) => Ok(t.remove("v").unwrap_or(Value::Array(Vec::new()))),
                    Err(_) => Err(format!(
                        "is not a list: write it as in the file, [\"a\", \"b\"], or as \
                         comma-separated values, a,b (found {s:?})"
                    )),
                }
            }
            Kind::List | Kind::KeyList => Ok(Value::Array(
                s.split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(|p| Value::String(p.to_owned()))
                    .collect(),
            )),
        }
    }
}

/// Whether `s` is written as a TOML list of strings: `[` then a quote (or `]`).
fn toml_list(s: &str) -> bool {
    (s.trim_start().strip_prefix('['))
        .is_some_and(|rest| rest.trim_start().starts_with(['"', '\'', ']']))
}

fn range(min: i64, max: i64) -> String {
    if max == i64::MAX {
        format!("{min} or more")
    } else {
        format!("{min}-{max}")
    }
}

fn in_range(n: i64, min: i64, max: i64) -> Result<(), String> {
    if (min..=max).contains(&n) {
        Ok(())
    } else {
        Err(format!("{n} is out of range; use {}", range(min, max)))
    }
}

fn non_empty(s: &str) -> Result<(), String> {
    if s.trim().is_empty() {
        Err("is empty; give a value or remove the line".into())
    } else {
        Ok(())
    }
}

/// A path given on the command line or in the environment, checked as a file's
/// paths are: not empty, and no `~` that nothing would expand.
pub fn parse_path(s: &str) -> Result<std::path::PathBuf, String> {
    if s.trim().is_empty() {
        return Err("is empty; give a path".into());
    }
    no_tilde(s)?;
    Ok(s.into())
}

/// A path is taken as written: no shell reads a file or a variable to expand `~`.
/// Control characters (a line break, an escape, NUL) belong in no setting: in a
/// name they would forge log lines and alerts, in a path no file has them. The value
/// is not repeated (it may be a secret); whitespace at its ends is left to the
/// checks that name it (a token's newline kept from its file).
fn no_control(s: &str) -> Result<(), String> {
    match s.trim().chars().find(|c| c.is_control()) {
        Some(c) => Err(format!(
            "holds the control character {c:?}; write the value without it"
        )),
        None => Ok(()),
    }
}

/// What is wrong with a router's token, as given on a command line or in the
/// environment (a file's goes through the same checks): a control character, or
/// whitespace at an end, most likely a newline kept from the file it was read from,
/// which the other side's token lacks and which shows nowhere in the refusal that
/// would follow. The value is not repeated.
pub fn token_problem(s: &str) -> Option<String> {
    no_control(s).and_then(|()| token_ends(s)).err()
}

/// See [`token_problem`].
pub(super) fn token_ends(s: &str) -> Result<(), String> {
    if s.trim() == s {
        return Ok(());
    }
    Err(
        "begins or ends with whitespace (a newline kept from the file it was read from?), \
         which would be part of the token: remove it (write the file with printf '%s', or \
         strip it with tr -d '\\n')"
            .to_owned(),
    )
}

fn no_tilde(s: &str) -> Result<(), String> {
    if s == "~" || s.starts_with("~/") {
        Err(format!(
            "{s:?} starts with ~, which is not expanded here (no shell reads this value): \
             write the home directory in full, such as /home/USER{}",
            &s[1..]
        ))
    } else {
        Ok(())
    }
}

fn choice(words: &[&str], s: &str) -> Result<(), String> {
    if words.contains(&s) {
        Ok(())
    } else {
        Err(format!("unknown value {s:?}; use {}", or_list(words)))
    }
}

/// `a, b or c`.
pub(crate) fn or_list(words: &[&str]) -> String {
    match words.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => words.join(""),
    }
}

pub(crate) fn type_of(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date",
        Value::Array(_) => "a list",
        Value::Table(_) => "a table",
    }
}

/// The closest of `candidates` to `word`, if it is close enough to be a typo.
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (distance(word, c), c))
        .filter(|(d, c)| *d <= 2 && *d < c.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// The one candidate that holds `word` or that `word` holds, as whole `_`-separated
/// parts (`tcp_keepalive` for `tcp_keepalive_secs`, `connection_pool_size` for
/// `pool_size`; not `transport` for `port`), for a hint where [`closest`] finds
/// none; `None` when there are several or none.
pub(crate) fn containing<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let mut found = candidates.into_iter().filter(|c| {
        c.len() >= 4 && word.len() >= 4 && (holds_parts(c, word) || holds_parts(word, c))
    });
    let one = found.next()?;
    found.next().is_none().then_some(one)
}

/// Whether `part` is in `whole` between `_`s (or its ends).
fn holds_parts(whole: &str, part: &str) -> bool {
    whole.match_indices(part).any(|(at, _)| {
        let before = whole[..at].chars().next_back();
        let after = whole[at + part.len()..].chars().next();
        before.is_none_or(|c| c == '_') && after.is_none_or(|c| c == '_')
    })
}

/// Levenshtein distance, for "did you mean" hints.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A true/false setting as the environment and the command line give it: `true`,
/// `1`, `yes`, `on` or their opposites, in any case.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("expected true or false, found {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_named_as_part_of_another_gets_that_one_as_a_hint() {
        let keys = PERFORMANCE.keys.iter().map(|k| k.name);
        assert_eq!(
            containing("connection_pool_size", keys.clone()),
            Some("pool_size")
        );
        assert_eq!(
            containing("tcp_keepalive", keys.clone()),
            Some("tcp_keepalive_secs")
        );
        // Several hold it: no guess.
        assert_eq!(containing("timeout", keys.clone()), None);
        assert_eq!(containing("zzzz", keys), None);
        // Only whole parts: `port` is no part of `transport`.
        assert_eq!(containing("port", ["transport", "bind"]), None);
        assert_eq!(containing("port", ["api_port"]), Some("api_port"));
    }

    #[test]
    fn env_names_follow_section_and_key() {
        let s = CLIENT.section("router").unwrap();
        assert_eq!(
            s.env_name(s.key("public_key").unwrap()),
            "CONDUIT_ROUTER_PUBLIC_KEY"
        );
        let known = known_vars();
        for v in [
            "CONDUIT_ROUTER_HOST",
            "CONDUIT_ROUTER_BIND",
            "CONDUIT_PERFORMANCE_WORKERS",
            "CONDUIT_TOKEN",
            "CONDUIT_LOG_LEVEL",
            "CONDUIT_HOME",
        ] {
            assert!(known.contains(&v.to_owned()), "{v}");
        }
    }

    /// The README sends users to the example files for every key: each key of each
    /// section (and of `[[tunnels]]`) is there, set or in a comment, in its section.
    #[test]
    fn the_example_files_document_every_key() {
        let files = [
            (
                &CLIENT,
                include_str!("../../../deploy/conduit.example.toml"),
            ),
            (&ROUTER, include_str!("../../../deploy/router.example.toml")),
        ];
        for (schema, text) in files {
            let mut missing = Vec::new();
            let tables = schema
                .sections
                .iter()
                .map(|s| (format!("[{}]", s.name), s.keys))
                .chain(schema.tunnels.map(|k| ("[[tunnels]]".to_owned(), k)));
            for (header, keys) in tables {
                let at = text.find(&format!("\n{header}\n"));
                // The section's text: from its header to the next one.
                let body = at.map(|at| {
                    let rest = &text[at + header.len() + 1..];
                    let end = rest.find("\n[").unwrap_or(rest.len());
                    &rest[..end]
                });
                for k in keys {
                    let documented = body.is_some_and(|b| {
                        b.lines().any(|l| {
                            let l = l.trim_start_matches(['#', ' ']);
                            l.strip_prefix(k.name)
                                .is_some_and(|r| r.trim_start().starts_with('='))
                        })
                    });
                    if !documented {
                        missing.push(format!("{header} {}", k.name));
                    }
                }
            }
            assert!(missing.is_empty(), "not in the example: {missing:?}");
        }
    }

    #[test]
    fn values_are_checked_by_kind_with_the_fix_in_the_message() {
        let n = |i| Value::Integer(i);
        assert_eq!(
            PORT.check("port", &n(0)),
            Err("0 is out of range; use 1-65535".into())
        );
        assert_eq!(
            PORT.check("port", &Value::String("9999".into())),
            Err("expected an integer (1-65535), found a string; write it without quotes: port = 9999".into())
        );
        assert_eq!(
            Kind::Choice(&["tcp", "udp"]).check("protocol", &Value::String("sctp".into())),
            Err("unknown value \"sctp\"; use tcp or udp".into())
        );
        let s = |t: &str| Value::String(t.into());
        let list = vec![s("a"), s(""), n(2), s(" ")];
        assert_eq!(
            Kind::List.check("allow", &Value::Array(list.clone())),
            Ok(())
        );
        assert_eq!(
            Kind::List.bad_items(&list),
            [
                (1, "is empty; remove it from the list".to_owned()),
                (2, "expected a string, found an integer".to_owned()),
                (3, "is empty; remove it from the list".to_owned()),
            ]
        );
        assert_eq!(
            Kind::Suites.bad_items(&[s("TLS_AES_128_GCM_SHA256"), n(1), s("RC4")]),
            [
                (1, "expected a string, found an integer".to_owned()),
                (
                    2,
                    "unknown cipher suite \"RC4\": Conduit speaks TLS 1.3 only, with \
                     TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384 and \
                     TLS_CHACHA20_POLY1305_SHA256"
                        .to_owned()
                ),
            ]
        );
        assert_eq!(Kind::Str.bad_items(&list), []);
        assert_eq!(
            Kind::Str.check("host", &Value::String(" ".into())),
            Err("is empty; give a value or remove the line".into())
        );
    }

    #[test]
    fn control_characters_are_refused_in_every_string() {
        let said = |c: &str| {
            Err(format!(
                "holds the control character {c}; write the value without it"
            ))
        };
        assert_eq!(
            Kind::Str.check("name", &Value::String("a\nb\u{1b}[31m".into())),
            said("'\\n'")
        );
        assert_eq!(
            Kind::Path.check("file", &Value::String("a\0b".into())),
            said("'\\0'")
        );
        assert_eq!(
            Kind::KeyOrPath.parse_text("a\u{7f}b").map(drop),
            said("'\\u{7f}'")
        );
        assert_eq!(
            Kind::List.bad_items(&[Value::String("ok".into()), Value::String("x\ty".into())]),
            [(1, said("'\\t'").unwrap_err())]
        );
        // At the ends, left to the checks that say more (a token's kept newline).
        assert_eq!(
            Kind::Str.check("token", &Value::String("t0ken\n".into())),
            Ok(())
        );
        assert_eq!(
            Kind::Str.check("name", &Value::String("ü café".into())),
            Ok(())
        );
    }

    #[test]
    fn text_values_parse_by_kind() {
        assert_eq!(PORT.parse_text("9999"), Ok(Value::Integer(9999)));
        assert_eq!(
            Kind::Str.parse_text(""),
            Err("is empty; give a value, or leave it unset".into())
        );
        assert_eq!(
            PORT.parse_text("x"),
            Err("expected an integer (1-65535), found \"x\"".into())
        );
        // Too large for any integer is out of range too, not "not an integer".
        assert_eq!(
            PORT.parse_text(" 99999999999999999999"),
            Err("99999999999999999999 is out of range; use 1-65535".into())
        );
        assert_eq!(
            PORT.parse_text("-99999999999999999999"),
            Err("-99999999999999999999 is out of range; use 1-65535".into())
        );
        assert_eq!(Kind::Bool.parse_text("Yes"), Ok(Value::Boolean(true)));
        assert_eq!(
            Kind::Choice(&["auto", "epoll"]).parse_text("EPOLL"),
            Ok(Value::String("epoll".into()))
        );
        assert_eq!(
            Kind::List.parse_text("a:1, b:2,"),
            Ok(Value::Array(vec![
                Value::String("a:1".into()),
                Value::String("b:2".into())
            ]))
        );
        // An IPv6 address in brackets is no list.
        assert_eq!(
            Kind::List.parse_text("[::1]:80, [::ffff:127.0.0.1]:81"),
            Ok(Value::Array(vec![
                Value::String("[::1]:80".into()),
                Value::String("[::ffff:127.0.0.1]:81".into())
            ]))
        );
        // As in the file, too.
        assert_eq!(
            Kind::List.parse_text(r#" ["a:1", "b:2"]"#),
            Kind::List.parse_text("a:1,b:2")
        );
        assert_eq!(
            Kind::List.parse_text(r#"["a:1", "b:2""#),
            Err(r#"is not a list: write it as in the file, ["a", "b"], or as comma-separated values, a,b (found "[\"a:1\", \"b:2\"")"#.into())
        );
    }

    #[test]
    fn typos_find_their_key() {
        assert_eq!(
            closest("hots", ["host", "port", "public_key"]),
            Some("host")
        );
        assert_eq!(closest("zzzzzz", ["host", "port"]), None);
        assert_eq!(closest("ab", ["cd"]), None);
    }
}
