//! Checks that need more than one key's type: addresses, keys on disk, names and binds
//! that must be unique, limits that must agree. Every problem is returned, each with
//! its key path, where its value came from, and the fix.
//!
//! Choices made where the issue was silent:
//! * `protocol = "udp"` is an error: a file that validates is one `conduit up` can run.
//! * A `bind` port of 0 (the system picks) is a warning: tests use it, people rarely mean it.
//! * `io_engine = "uring"` on a machine without usable io_uring is a warning: the file
//!   may be checked on another machine than the one it runs on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;

use conduit_proto::Secret;

use super::model::{
    AlertsConfig, ApiConfig, Config, HealthConfig, LoggingConfig, MIN_SOCKET_BUFFER, OptimizeFor,
    PerformanceConfig, Protocol, RouterConfig, TransportKind,
};
use super::{Origin, Origins, Problem};
use crate::balance::MAX_MEMBERS;
use crate::keys;
use crate::policy::{AllowList, Rule};

mod pool;
mod values;

pub use values::*;

/// The problems found so far, each tagged with where its value came from.
struct Out<'a> {
    origins: &'a Origins,
    list: Vec<Problem>,
}

impl Out<'_> {
    fn error(&mut self, path: &str, msg: impl Into<String>) {
        self.push(Problem::error(path, msg), path);
    }

    fn warn(&mut self, path: &str, msg: impl Into<String>) {
        self.push(Problem::warning(path, msg), path);
    }

    /// `origin_of`: the key whose origin to show (a list's, for one of its items),
    /// unless the problem's own path has one (an item on a line of its own).
    fn push(&mut self, p: Problem, origin_of: &str) {
        let origin = match self.origins.get(&p.path) {
            Origin::Default => self.origins.get(origin_of),
            own => own,
        };
        let p = p.at(origin);
        self.list.push(p);
    }
}

/// Checks a client's configuration.
pub(crate) fn client(c: &Config, o: &Origins) -> Vec<Problem> {
    let mut out = Out {
        origins: o,
        list: Vec::new(),
    };
    if let Some(Err(e)) = c.router.host.as_deref().map(router_host) {
        out.error("router.host", e);
    }
    let first = c
        .router
        .host
        .as_deref()
        .map(|h| format!("{}:{}", h.trim(), c.router.port));
    for (i, f) in c.router.fallbacks.iter().enumerate() {
        if let Err(e) = router_addr(f) {
            out.push(
                Problem::error(format!("router.fallbacks[{i}]"), e),
                "router.fallbacks",
            );
        }
        // The same router twice: failover would retry it, balancing link it twice.
        let again = if first.as_deref() == Some(f.trim()) {
            Some("router.host and router.port".to_owned())
        } else {
            (c.router.fallbacks[..i].iter())
                .position(|g| g.trim() == f.trim())
                .map(|j| format!("router.fallbacks[{j}]"))
        };
        if let Some(other) = again {
            out.push(
                Problem::error(
                    format!("router.fallbacks[{i}]"),
                    format!("{f:?} is the router of {other} already; list each router once"),
                ),
                "router.fallbacks",
            );
        }
    }
    if let Some(Err(e)) = c.router.public_key.as_deref().map(public_key) {
        out.error("router.public_key", e);
    }
    fallback_keys(&c.router, &mut out);
    // The plain transport checks no keys: a key file is checked only if there is one.
    let plain = c.router.transport == TransportKind::Plain;
    // A router key there would read as the router being authenticated, which it is not.
    for (given, key) in [
        (c.router.public_key.is_some(), "router.public_key"),
        (!c.router.fallback_keys.is_empty(), "router.fallback_keys"),
    ] {
        if plain && given {
            out.error(
                key,
                "applies to TLS only: transport = \"plain\" checks no router key (only \
                 security.token), so the router would not be authenticated; remove it, or \
                 remove transport = \"plain\" to pin the router"
                    .to_owned(),
            );
        }
    }
    let key = (c.security.private_key_path.as_deref()).filter(|p| !plain || p.exists());
    if let Some(Err(e)) = key.map(|p| private_key(p, "client", "security.private_key_path")) {
        out.error("security.private_key_path", e);
    }
    token_file(c.security.token.is_some(), "security.token", &mut out);
    token_ends(c.security.token.as_ref(), "security.token", &mut out);
    performance(&c.performance, false, &mut out);
    if c.logging.file.is_some() {
        out.warn(
            "logging.file",
            "only a router's file sends its log to a file: each tunnel `up` starts logs to \
             $CONDUIT_HOME/logs/NAME.log (`conduit logs NAME`), and under `up --foreground` \
             to its stderr; remove logging.file (and rotation, keep) here"
                .to_owned(),
        );
    }
    alerts(&c.alerts, &mut out);
    tunnels(c, &mut out);
    out.list
}

/// Checks a router's configuration.
pub(crate) fn router(c: &RouterConfig, o: &Origins) -> Vec<Problem> {
    let mut out = Out {
        origins: o,
        list: Vec::new(),
    };
    let r = &c.router;
    match bind_addr(&r.bind) {
        Ok(a) if a.port() == 0 => out.warn("router.bind", port_zero()),
        Ok(_) => {}
        Err(e) => out.error("router.bind", e),
    }
    // The plain transport presents no key and checks no client keys: a key file or
    // an authorized clients file that is not there is nothing to refuse.
    let plain = r.transport == TransportKind::Plain;
    let key =
        (r.private_key_path.as_deref()).filter(|p| !plain || std::fs::symlink_metadata(p).is_ok());
    let now = match key.map(|p| private_key(p, "router", "router.private_key_path")) {
        Some(Err(e)) => {
            out.error("router.private_key_path", e);
            None
        }
        Some(Ok(now)) => Some(now),
        None => None,
    };
    let next = r.next_private_key_path.as_deref();
    match next.map(|p| {
        (
            p,
            private_key(p, "router-next", "router.next_private_key_path"),
        )
    }) {
        Some((_, Err(e))) => out.error("router.next_private_key_path", e),
        Some((p, Ok(next))) if Some(&next) == now.as_ref() => out.error(
            "router.next_private_key_path",
            next_key_is_the_current_one(p, &next),
        ),
        _ => {}
    }
    if r.next_private_key_path.is_some() && r.key_rotation_days > 0 {
        out.error(
            "router.key_rotation_days",
            "the router cannot switch to a next key by hand (next_private_key_path) and \
             rotate its key by itself: remove one of the two"
                .to_owned(),
        );
    }
    if r.key_rotation_days > 0 && r.key_announce_secs >= r.key_rotation_days * 86_400 {
        out.error(
            "router.key_announce_secs",
            format!(
                "{} s is as long as the rotation period ({} day{}): make it shorter than \
                 key_rotation_days",
                r.key_announce_secs,
                r.key_rotation_days,
                if r.key_rotation_days == 1 { "" } else { "s" }
            ),
        );
    }
    if let Some(p) = r.authorized_keys.as_ref().filter(|_| !plain) {
        match authorized(p) {
            Ok(a) if a.listed == 0 => out.warn(
                "router.authorized_keys",
                format!(
                    "{} lists no client keys: every client will be refused; add one client \
 public key per line",
                    p.display()
                ),
            ),
            Ok(a) if a.admitted == 0 => out.warn(
                "router.authorized_keys",
                format!(
                    "every key in {} has expired (expires= in the past): every client will be \
                     refused; remove expires= from the lines to keep, or add keys",
                    p.display()
                ),
            ),
            Ok(_) => {}
            Err(e) => out.error("router.authorized_keys", e),
        }
    }
    for (i, rule) in r.allow.iter().enumerate() {
        match Rule::from_str(rule) {
            Err(e) => out.push(
                Problem::error(format!("router.allow[{i}]"), e),
                "router.allow",
            ),
            Ok(rule) => {
                if let Some(w) = rule.opens_everything() {
                    out.push(
                        Problem::warning(format!("router.allow[{i}]"), w),
                        "router.allow",
                    );
                }
            }
        }
    }
    if r.allow.is_empty() {
        out.warn(
            "router.allow",
            "no rule: clients can connect but may open no source; add rules such as \
 --allow 10.2.0.2:8080 on the command line, or allow = [\"10.2.0.2:8080\"] in the router's file",
        );
    }
    token_file(r.token.is_some(), "router.token", &mut out);
    token_ends(r.token.as_ref(), "router.token", &mut out);
    api(&c.api, &mut out);
    if let (true, Ok(router), Ok(api)) = (c.api.enabled, bind_addr(&r.bind), bind_addr(&c.api.bind))
        && router.port() != 0
        && overlaps(router, api)
    {
        out.error(
            "api.bind",
            format!(
                "{api} takes the router's own port (router.bind {router}): give the API a port \
                 of its own, such as the default {}",
                ApiConfig::default().bind
            ),
        );
    }
    health(&c.health, &mut out);
    if let Ok(allow) = AllowList::parse(&r.allow)
        && !allow.is_empty()
    {
        probed_but_not_allowed(&c.health, &allow, &mut out);
    }
    alerts(&c.alerts, &mut out);
    performance(&c.performance, true, &mut out);
    logging(&c.logging, &mut out);
    out.list
}

fn api(a: &ApiConfig, out: &mut Out<'_>) {
    token_file(a.token.is_some(), "api.token", out);
    file_dir(a.history_file.as_deref(), "api.history_file", out);
    if let Some(e) = (a.history_file.as_deref())
        .and_then(|f| a_directory_for_a_file(f, crate::history::EXAMPLE_NAME))
    {
        out.error("api.history_file", e);
    }
    let addr = match bind_addr(&a.bind) {
        Ok(addr) => addr,
        Err(e) => {
            out.error("api.bind", e);
            return;
        }
    };
    if !a.enabled {
        // An address given for an API left off: most likely it was meant to be on.
        if !matches!(out.origins.get("api.bind"), Origin::Default)
            && matches!(out.origins.get("api.enabled"), Origin::Default)
        {
            out.warn(
                "api.bind",
                "the API is off, so this address is not used: turn it on with enabled = true \
                 under [api] (CONDUIT_API_ENABLED=true, or --api / --api-bind on the command \
                 line)"
                    .to_owned(),
            );
        }
        return;
    }
    if !a.auth && !addr.ip().is_loopback() {
        let token = match a.token {
            Some(_) => "drop auth = false (--api-no-auth) so that the token set is required",
            None => {
                "set a token (--api-token, CONDUIT_API_TOKEN) and drop auth = false \
                 (--api-no-auth)"
            }
        };
        out.error(
            "api.auth",
            format!(
                "the API may run without a token only on a loopback address, and api.bind is \
                 {addr}; bind it to 127.0.0.1 (or ::1), or {token}"
            ),
        );
    } else if let Some(why) = a
        .token
        .as_ref()
        .and_then(|t| crate::api::token_problem(t.expose()))
    {
        out.error("api.token", why);
    } else if a.auth && a.token.is_none() {
        out.error(
 "api.token",
 "the API is on and needs a token: pass --api-token TOKEN, set CONDUIT_API_TOKEN, or add token under [api]; to run it without one on a loopback address, pass --api-no-auth (api.auth = false)",
        );
    }
}

fn health(h: &HealthConfig, out: &mut Out<'_>) {
    for (i, src) in h.sources.iter().enumerate() {
        if let Err(e) = source_addr(src) {
            out.push(
                Problem::error(format!("health.sources[{i}]"), e),
                "health.sources",
            );
        }
    }
    for (i, entry) in h.udp_probes.iter().enumerate() {
        if let Err(e) = super::ops::udp_probe_entry(entry) {
            out.push(
                Problem::error(format!("health.udp_probes[{i}]"), e),
                "health.udp_probes",
            );
        }
    }
    if h.timeout_secs >= h.interval_secs {
        out.warn(
 "health.timeout_secs",
 format!(
 "{}s is not shorter than interval_secs ({}s): a source that hangs is probed less often than configured; use a shorter timeout",
 h.timeout_secs, h.interval_secs
 ),
        );
    }
    let heartbeat = PerformanceConfig::default().heartbeat_interval_secs;
    if h.client_timeout_secs < heartbeat * 2 {
        out.warn(
            "health.client_timeout_secs",
            format!(
                "tunnels send a heartbeat every {heartbeat} s by default \
                 (performance.heartbeat_interval_secs): waiting {} s for one drops their links, \
                 and their users' connections, again and again; make it at least {} s, or \
                 shorten the tunnels' heartbeat interval to at most half of it",
                h.client_timeout_secs,
                heartbeat * 2
            ),
        );
    }
    let worst = h.interval_secs * h.failures + h.timeout_secs;
    if worst > 30 {
        out.warn(
 "health.interval_secs",
 format!(
 "a source that goes down is reported only after up to {worst}s (interval_secs × failures + timeout_secs); the defaults report within 30s"
 ),
        );
    }
}

/// A source the router probes that no allow rule admits is a warning: it is watched
/// and alerted on, but no client may open it, which is rarely what was meant.
fn probed_but_not_allowed(h: &HealthConfig, allow: &AllowList, out: &mut Out<'_>) {
    let tcp = h
        .sources
        .iter()
        .enumerate()
        .map(|(i, s)| ("health.sources", i, s.clone()));
    let udp = h.udp_probes.iter().enumerate().filter_map(|(i, e)| {
        let (source, _) = super::ops::udp_probe_entry(e).ok()?;
        Some(("health.udp_probes", i, source))
    });
    for (list, i, source) in tcp.chain(udp) {
        if source_addr(&source).is_ok() && !allow.could_allow(&source) {
            out.push(
                Problem::warning(
                    format!("{list}[{i}]"),
                    format!(
                        "no allow rule admits {source}: the router watches it, but no client \
                         may open it; add --allow {source} to the router, or remove it from \
                         {list}"
                    ),
                ),
                list,
            );
        }
    }
}

fn alerts(a: &AlertsConfig, out: &mut Out<'_>) {
    for (path, url) in [("alerts.webhook", &a.webhook), ("alerts.slack", &a.slack)] {
        let Some(url) = url else { continue };
        token_file(true, path, out);
        if let Err(e) = webhook_url(url.expose()) {
            out.error(path, e);
        }
    }
}

/// An `http://` or `https://` URL with a host.
pub fn webhook_url(u: &str) -> Result<(), String> {
    let ok = u
        .parse::<hyper::Uri>()
        .ok()
        .filter(|uri| matches!(uri.scheme_str(), Some("http" | "https")))
        .and_then(|uri| {
            // A port the URI type takes as text, past what a port can be: refused.
            let port_ok = uri.authority().is_none_or(|a| {
                let host_port = a.as_str().rsplit('@').next().unwrap_or_default();
                match host_port.rsplit_once(':') {
                    // `[::1]`: the colons are the address's.
                    _ if host_port.ends_with(']') => true,
                    Some((_, port)) => port.parse::<u16>().is_ok_and(|n| n > 0),
                    None => true,
                }
            });
            uri.host().map(|h| !h.is_empty() && port_ok)
        })
        .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        // The URL itself is not repeated: it may hold a token.
        Err(
            "not an http:// or https:// URL with a host (and a port 1-65535, if any); give the \
             full webhook URL"
                .into(),
        )
    }
}

fn tunnels(c: &Config, out: &mut Out<'_>) {
    let mut names: HashMap<&str, usize> = HashMap::new();
    // The binds so far by protocol and port (only those can clash), each list in file
    // order: a file of thousands of tunnels is checked in linear time.
    let mut binds: HashMap<(Protocol, u16), Vec<(usize, SocketAddr)>> = HashMap::new();
    for (i, t) in c.tunnels.iter().enumerate() {
        let path = |k: &str| format!("tunnels[{i}].{k}");
        if let Some(name) = &t.name {
            if let Err(e) = tunnel_name(name) {
                out.error(&path("name"), e);
            } else if let Some(first) = names.get(name.as_str()) {
                out.error(
                    &path("name"),
                    format!(
                        "{name:?} is already the name of tunnels[{first}]; give each tunnel its \
 own name"
                    ),
                );
            } else {
                names.insert(name, i);
            }
        }
        if let Some(source) = t.source.as_deref() {
            // One HOST:PORT, or several separated by commas (balanced by the router).
            let members: Vec<&str> = conduit_dataplane::source_members(source).collect();
            if members.is_empty()
                && let Err(e) = source_addr(source)
            {
                out.error(&path("source"), e);
            }
            for (j, m) in members.iter().enumerate() {
                if let Err(e) = source_addr(m) {
                    out.error(&path("source"), e);
                } else if members[..j].contains(m) {
                    out.error(&path("source"), format!("names {m} twice: list each once"));
                }
            }
            if members.len() > MAX_MEMBERS {
                out.error(&path("source"), too_many_members(members.len()));
            }
            if !members.is_empty() && members.len() < source.split(',').count() {
                out.error(&path("source"), empty_member(source));
            }
        }
        if t.proxy_protocol == Some(super::model::ProxyProtocolVersion::V1)
            && t.protocol == Protocol::Udp
        {
            out.error(
                &path("proxy_protocol"),
                "proxy_protocol = \"v1\" has no form for UDP: a UDP tunnel sends v2's before \
                 each datagram; set proxy_protocol = \"v2\"",
            );
        }
        for (j, item) in t.allow_from.iter().enumerate() {
            if let Err(e) = super::allow_from_net(item) {
                out.push(
                    Problem::error(
                        format!("tunnels[{i}].allow_from[{j}]"),
                        format!("{item:?} is {e}"),
                    ),
                    &path("allow_from"),
                );
            }
        }
        let Some(bind) = &t.bind else { continue };
        let addr = match bind_addr(bind) {
            Ok(a) => a,
            Err(e) => {
                out.error(&path("bind"), e);
                continue;
            }
        };
        if addr.port() == 0 {
            out.warn(&path("bind"), port_zero());
            continue;
        }
        let same_port = binds.entry((t.protocol, addr.port())).or_default();
        let clash = same_port.iter().find(|(_, b)| overlaps(*b, addr));
        match clash {
            Some((j, other)) if *other == addr => out.error(
                &path("bind"),
                format!(
                    "{addr} is also the bind of tunnels[{j}]; two tunnels cannot listen on one \
 address: give one of them another port"
                ),
            ),
            Some((j, other)) if other.ip().to_canonical() == addr.ip().to_canonical() => {
                let v4 = addr.ip().to_canonical();
                out.error(
                    &path("bind"),
                    format!(
                        "{addr} is tunnels[{j}].bind {other} written another way (::ffff:{v4} \
 is the IPv4 address {v4}); two tunnels cannot listen on one address: give one of them another \
 port"
                    ),
                );
            }
            Some((j, other)) => {
                let any = if other.ip().to_canonical().is_unspecified() {
                    other
                } else {
                    &addr
                };
                out.error(
                    &path("bind"),
                    format!(
                        "{addr} conflicts with tunnels[{j}].bind {other} ({} listens on every \
 local address); give one of them another port",
                        any.ip()
                    ),
                );
            }
            None => same_port.push((i, addr)),
        }
    }
}

fn performance(p: &PerformanceConfig, router: bool, out: &mut Out<'_>) {
    for (key, n) in [
        ("read_buffer_size", p.read_buffer_size),
        ("write_buffer_size", p.write_buffer_size),
    ] {
        if n > 0 && n < MIN_SOCKET_BUFFER {
            out.error(
                &format!("performance.{key}"),
                format!(
                    "{n} bytes is too small a socket buffer to move data; use 0 for the \
                     kernel's auto-tuning (the best choice for most links) or at least \
                     {MIN_SOCKET_BUFFER}"
                ),
            );
        }
    }
    if p.optimize_for == OptimizeFor::Latency && !p.tcp_nodelay {
        out.warn(
            "performance.tcp_nodelay",
            "false with optimize_for = \"latency\": Nagle's algorithm holds small writes \
             back for up to one round trip; set tcp_nodelay = true",
        );
    }
    if router && p.udp_idle_timeout_secs != PerformanceConfig::default().udp_idle_timeout_secs {
        out.warn(
            "performance.udp_idle_timeout_secs",
            "UDP flows are ended by the tunnel that carries them, not by the router: set it in \
             the tunnels' file and remove it here",
        );
    }
    if router && p.udp_max_new_flows != PerformanceConfig::default().udp_max_new_flows {
        out.warn(
            "performance.udp_max_new_flows",
            "new UDP flows are capped by the tunnel that starts them, not by the router: set \
             it in the tunnels' file and remove it here",
        );
    }
    if router && p.heartbeat_interval_secs != PerformanceConfig::default().heartbeat_interval_secs {
        out.warn(
            "performance.heartbeat_interval_secs",
            "a router answers heartbeats and does not send them; health.client_timeout_secs \
             sets how long it waits for a silent client: remove it here",
        );
    }
    if let Some(w) = (!router).then(|| pool::check(p)).flatten() {
        out.warn("performance.pool_size", w);
    }
    if router && p.pool_size != PerformanceConfig::default().pool_size {
        out.warn(
            "performance.pool_size",
            "channels are opened ahead of time by the tunnels, not by the router: set it in \
             the tunnels' file and remove it here",
        );
    }
    let client_timeout = HealthConfig::default().client_timeout_secs;
    // Said only where a router left at its default would drop the link for sure:
    // the routers' own settings are not known here.
    if !router && p.heartbeat_interval_secs >= client_timeout {
        out.warn(
            "performance.heartbeat_interval_secs",
            format!(
                "a router drops a link it hears nothing on for its health.client_timeout_secs \
                 ({client_timeout} s by default), and with it the link's connections: with \
                 heartbeats every {} s, set client_timeout_secs to at least {} s on every router \
                 this tunnel uses, or keep this at most {} s",
                p.heartbeat_interval_secs,
                p.heartbeat_interval_secs * 2,
                client_timeout / 2
            ),
        );
    }
    if !router && p.max_pending_handshakes != PerformanceConfig::default().max_pending_handshakes {
        out.warn(
            "performance.max_pending_handshakes",
            "only a router runs handshakes for others; a tunnel ignores it: remove it here",
        );
    }
    if let Some(w) = small_burst(p.burst_bandwidth_limit, p.default_bandwidth_limit) {
        let key = match p.burst_bandwidth_limit {
            0 => "performance.default_bandwidth_limit",
            _ => "performance.burst_bandwidth_limit",
        };
        out.warn(key, w);
    }
    if p.io_engine == super::IoEngine::Uring && !conduit_dataplane::engine::uring_usable() {
        out.warn(
            "performance.io_engine",
            "io_uring is not usable on this machine (old kernel, or blocked by seccomp): \
 tunnels would fail to start here; use \"auto\" or \"epoll\"",
        );
    }
}

fn logging(l: &LoggingConfig, out: &mut Out<'_>) {
    file_dir(l.file.as_deref(), "logging.file", out);
    if let Some(e) = (l.file.as_deref()).and_then(|f| a_directory_for_a_file(f, "conduit.log")) {
        out.error("logging.file", e);
    }
}

/// An error when the directory of a file Conduit writes (at `key`) does not exist.
fn file_dir(file: Option<&Path>, key: &str, out: &mut Out<'_>) {
    let dir = file.and_then(Path::parent);
    if let Some(dir) = dir.filter(|d| !d.as_os_str().is_empty() && !d.is_dir()) {
        out.error(
            key,
            format!(
                "directory {} does not exist; create it or choose another file",
                dir.display()
            ),
        );
    }
}

/// Warns when a token sits in a file others can read.
/// A token with whitespace at an end: a newline kept from the file it was read from,
/// most likely, which the other side's token lacks.
fn token_ends(token: Option<&Secret>, path: &str, out: &mut Out<'_>) {
    if let Some(Err(why)) = token.map(|t| super::schema::token_ends(t.expose())) {
        out.error(path, why);
    }
}

fn token_file(has_token: bool, path: &str, out: &mut Out<'_>) {
    let Origin::File { path: file, .. } = out.origins.get(path) else {
        return;
    };
    if !has_token {
        return;
    }
    let file = file.clone();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let Ok(meta) = std::fs::metadata(&file) else {
            return;
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            let env = format!("CONDUIT_{}", path.replace('.', "_").to_ascii_uppercase());
            // An alert's URL is its secret (a Slack webhook's path is its key).
            let what = if path.starts_with("alerts.") {
                "URL"
            } else {
                "token"
            };
            out.warn(
                path,
                format!(
                    "{} holds a secret and is {} (mode {mode:04o}); \
 run `chmod 600 {}` or pass the {what} in {env}",
                    file.display(),
                    keys::exposure(mode),
                    file.display()
                ),
            );
        }
    }
    #[cfg(not(unix))]
    let _ = (file, out);
}

fn port_zero() -> String {
    "port 0 lets the system pick a different free port at each start, so users cannot know \
     where to connect; pick a fixed port"
        .into()
}

/// `[router] fallback_keys`: none, or one key for each fallback, each a key or a
/// `.pub` file.
fn fallback_keys(r: &super::model::RouterPeer, out: &mut Out<'_>) {
    let (keys, fallbacks) = (r.fallback_keys.len(), r.fallbacks.len());
    if keys != 0 && keys != fallbacks {
        out.error(
            "router.fallback_keys",
            format!(
                "{keys} key{} for {fallbacks} fallback{}; give one key per fallback, in the \
                 order of router.fallbacks, or none when every fallback presents \
                 router.public_key (to pin one router to several keys, separate them with `|` \
                 in one string)",
                if keys == 1 { "" } else { "s" },
                if fallbacks == 1 { "" } else { "s" }
            ),
        );
    }
    for (i, k) in r.fallback_keys.iter().enumerate() {
        if let Err(e) = public_key(k) {
            out.push(
                Problem::error(format!("router.fallback_keys[{i}]"), e),
                "router.fallback_keys",
            );
        }
    }
    let defaults = super::model::RouterPeer::default();
    if r.balance && r.failback_secs != defaults.failback_secs {
        out.warn(
            "router.failback_secs",
            "a balancing tunnel (router.balance = true) uses every router at once and has \
             none to move back to: remove it, or set balance = false to fail over instead",
        );
    }
    if r.balance && r.standby_check_secs != defaults.standby_check_secs {
        out.warn(
            "router.standby_check_secs",
            "a balancing tunnel (router.balance = true) keeps no router on standby: remove \
             it, or set balance = false to fail over instead",
        );
    }
    if r.balance && fallbacks == 0 {
        out.warn(
            "router.balance",
            "true with no router.fallbacks: one router has nothing to balance with; list \
             the other routers in router.fallbacks",
        );
    }
}

#[cfg(test)]
mod tests;
