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
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::str::FromStr;

use conduit_proto::{PublicKey, Secret};

use super::model::{
    AlertsConfig, ApiConfig, Config, HealthConfig, LoggingConfig, MIN_SOCKET_BUFFER, OptimizeFor,
    PerformanceConfig, Protocol, RouterConfig, TransportKind,
};
use super::{Origin, Origins, Problem};
use crate::balance::MAX_MEMBERS;
use crate::keys;
use crate::policy::{AllowList, Rule};

mod pool;

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

/// A router host: a name or an IP address, without a port.
pub(crate) fn router_host(host: &str) -> Result<(), String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    // `https://router.example.com` has a colon too, but no port to move.
    if let Some(authority) = url_authority(host) {
        let only = match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => authority.split(':').next().unwrap_or(""),
        };
        let such_as = match is_host_name(only) || only.parse::<IpAddr>().is_ok() {
            true => format!(" ({only})"),
            false => String::new(),
        };
        return Err(format!(
            "{host:?} is a URL; give the host name or address only{such_as}, and the port in \
             router.port"
        ));
    }
    if host.contains(':') {
        return Err(format!(
            "{host:?} includes a port; give the host only and put the port in router.port"
        ));
    }
    if is_host_name(host) {
        Ok(())
    } else {
        Err(format!(
            "{host:?} is not a host name or IP address; use something like 10.2.0.1 or \
 router.internal"
        ))
    }
}

/// The host and port of `s` (`router.example.com:443` of
/// `https://user@router.example.com:443/x`) when it is a URL.
fn url_authority(s: &str) -> Option<&str> {
    let (scheme, rest) = s.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && (scheme.chars()).all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    scheme_ok.then(|| authority.rsplit_once('@').map_or(authority, |(_, a)| a))
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

/// What is wrong with a list of sources that holds an empty member.
pub fn empty_member(list: &str) -> String {
    format!("{list:?} has an empty member (a comma too many); remove it")
}

/// A fallback router: `HOST:PORT` (`[v6]:PORT`).
fn router_addr(addr: &str) -> Result<(), String> {
    host_port(addr).map_err(|why| {
        format!("{addr:?}: {why}; use HOST:PORT such as 10.2.0.3:9999 or router-b.internal:9999")
    })
}

/// Why `s` is not `HOST:PORT`, if it is not: a host name, an IPv4 address or an
/// IPv6 one in brackets, then a port of 1-65535. Nothing is resolved (the router
/// may know names this machine does not).
pub fn host_port(s: &str) -> Result<(), String> {
    if s.trim().is_empty() {
        return Err("it is empty".into());
    }
    if let Some(authority) = url_authority(s) {
        return Err(format!(
            "it is a URL; give the host and the port only ({authority})"
        ));
    }
    if s.trim().parse::<u16>().is_ok() {
        return Err("it is a port alone, without a host".into());
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err("it has no port".into());
    };
    match port.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => {}
        Ok(p) => return Err(format!("port {p} is out of range (1-65535)")),
        Err(_) => return Err(format!("{port:?} is not a port (1-65535)")),
    }
    let host_ok = match host.strip_prefix('[') {
        Some(v6) => v6
            .strip_suffix(']')
            .is_some_and(|v6| v6.parse::<Ipv6Addr>().is_ok()),
        None => host.parse::<std::net::Ipv4Addr>().is_ok() || is_host_name(host),
    };
    if host_ok {
        Ok(())
    } else if host.contains(':') && !host.starts_with('[') {
        Err(format!(
            "an IPv6 address goes in brackets, as [{host}]:{port}"
        ))
    } else {
        Err(format!("{host:?} is not a host name or IP address"))
    }
}

/// A DNS name: its last label is not all digits (RFC 3696), so what looks like an
/// IPv4 address but is none (`256.1.1.1`, `10.1.2`) is not taken for a name to look up
/// for ever.
fn is_host_name(h: &str) -> bool {
    let last = h.trim_end_matches('.').rsplit('.').next().unwrap_or("");
    !h.is_empty()
        && !last.chars().all(|c| c.is_ascii_digit())
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// A source: `HOST:PORT` as the router sees it; not resolved here.
pub(crate) fn source_addr(s: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "{s:?} is not HOST:PORT; use the address the router reaches the service at, such \
 as 10.2.0.2:8080 or db.internal:5432"
        )
    };
    match host_port(s) {
        Ok(()) => Ok(()),
        // A port that is a number, out of range.
        Err(why) if why.starts_with("port ") => {
            let port = s.rsplit_once(':').map_or("", |(_, p)| p);
            Err(format!("port {port} in {s:?} is out of range; use 1-65535"))
        }
        Err(_) => Err(bad()),
    }
}

/// What is wrong with a source of more members than the router balances across.
pub fn too_many_members(n: usize) -> String {
    format!(
        "names {n} members; a source may name at most {MAX_MEMBERS}: split it across tunnels, \
         or put a load balancer in front of the rest"
    )
}

/// Why `s`, which is no socket address, cannot be listened on. Port 0 is no mistake
/// for a listener (the system picks one): with it, the host is what is wrong.
pub fn not_a_listen_addr(s: &str) -> String {
    let checked = match s.rsplit_once(':') {
        Some((host, "0")) => format!("{host}:1"),
        _ => s.to_owned(),
    };
    match host_port(&checked) {
        Err(why) => why,
        Ok(()) => "a host name, where an IP address must be".to_owned(),
    }
}

/// A listening address: an IP address and a port on this machine.
pub(crate) fn bind_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| {
        let why = not_a_listen_addr(s);
        format!(
            "{s:?} is not ADDR:PORT ({why}); use a local IP address and a port such as \
             0.0.0.0:8080, 127.0.0.1:8080 or [::]:8080"
        )
    })
}

/// True when listening on `a` and on `b` would collide.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() {
        return false;
    }
    // An IPv4-mapped address (`[::ffff:127.0.0.1]`, `[::ffff:0.0.0.0]`) is listened
    // on as the IPv4 address it maps.
    let (x, y) = (a.ip().to_canonical(), b.ip().to_canonical());
    // `[::]` is dual-stack on most systems, so it also covers every IPv4 address.
    let dual = |ip: IpAddr| ip.is_unspecified() && ip.is_ipv6();
    x == y
        || dual(x)
        || dual(y)
        || (x.is_unspecified() && x.is_ipv4() == y.is_ipv4())
        || (y.is_unspecified() && x.is_ipv4() == y.is_ipv4())
}

/// Checks a tunnel's name: it names files (`logs/NAME.log`, `run/NAME.lock`), so it
/// must be a plain, non-empty file name, and it is typed after options
/// (`conduit kill --tunnel NAME`), so it must not look like one.
pub fn tunnel_name(name: &str) -> Result<(), String> {
    if name.starts_with('-') {
        return Err(format!(
            "{name:?} is not a valid name: commands would take it for an option; use 1-64 \
             letters, digits, '-', '_' or '.' (not starting with '.' or '-')"
        ));
    }
    peer_tunnel_name(name)
}

/// The rule a router holds a client's tunnel name to: [`tunnel_name`]'s, except that
/// a leading '-' (allowed by versions before 0.1.0's name check) is let through.
pub(crate) fn peer_tunnel_name(name: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid name; use 1-64 letters, digits, '-', '_' or '.' (not \
             starting with '.' or '-')"
        ))
    }
}

/// A router's pinned keys: a key given inline or as the path of a `.pub` file (all
/// its keys), or several such separated by `|`.
pub(crate) fn public_key(spec: &str) -> Result<Vec<PublicKey>, String> {
    let mut keys = Vec::new();
    for one in spec.split('|') {
        if one.trim().is_empty() {
            return Err(format!(
                "{spec:?} has an empty key; separate a router's keys with single `|`"
            ));
        }
        keys.extend(pinned(one)?);
    }
    Ok(keys)
}

fn pinned(spec: &str) -> Result<Vec<PublicKey>, String> {
    let spec = spec.trim();
    let keys = if spec.starts_with("ed25519:") {
        PublicKey::parse_lines(spec)
            .map_err(|e| format!("{e}; paste the key the router's `conduit init` printed"))?
    } else {
        if absent(Path::new(spec)) {
            return Err(format!(
                "no file at {spec}: give the router's public key (ed25519:…, as the router's \
                 `conduit init` printed) or the path of its .pub file"
            ));
        }
        keys::load_pinned(spec, "public key").map_err(|e| e.to_string())?
    };
    // What the example files hold in its place, inline or in a .pub file.
    if keys.iter().any(|k| k.as_bytes() == &[0; 32]) {
        return Err(
            "is still the placeholder `conduit config init` wrote (all zeros), not a key: \
             paste the router's public key (what `conduit init --name router` printed on \
             the router; `conduit keys show --name router` there prints it again)"
                .into(),
        );
    }
    Ok(keys)
}

/// What is wrong with a router's next key (`path`, holding `key`) that is the key
/// it presents now: the same words for `config validate` and for the router.
pub fn next_key_is_the_current_one(path: &Path, key: &PublicKey) -> String {
    format!(
        "{} holds the key the router presents now ({key}): give it a new key (`conduit init \
         --name router-next`), or leave it unset once the router has switched to it",
        path.display()
    )
}

/// What is wrong with `path`, a file Conduit writes, when it is a directory: the
/// same words for `config validate` and for the process that would write it.
/// `example` names a file that could go in it (`conduit.log`).
pub fn a_directory_for_a_file(path: &Path, example: &str) -> Option<String> {
    path.is_dir().then(|| {
        format!(
            "{} is a directory: give a file in it, such as {}",
            path.display(),
            path.join(example).display()
        )
    })
}

/// Whether nothing is at `p` (or a link that leads nowhere): a path that cannot be
/// looked at (a loop of links, a directory this user may not search) is not absent,
/// and its loader names the real problem.
fn absent(p: &Path) -> bool {
    matches!(p.try_exists(), Ok(false))
}

/// The router key at `p` (checked as `key`), or what is wrong with it.
fn private_key(p: &Path, name: &str, key: &str) -> Result<PublicKey, String> {
    if absent(p) {
        return Err(format!(
            "no private key at {}: create one with `conduit init --name {name}` (it writes \
 $CONDUIT_HOME/keys/{name}.key) or set {key} to an existing key",
            p.display()
        ));
    }
    keys::load_private(p, name)
        .map(|pair| pair.public())
        .map_err(|e| e.to_string())
}

/// The keys of the authorized-clients file at `p`, as many as its lines hold, that
/// are admitted now (not past their `expires=`).
struct Authorized {
    listed: usize,
    admitted: usize,
}

fn authorized(p: &Path) -> Result<Authorized, String> {
    if absent(p) {
        return Err(format!(
            "no authorized clients file at {}: create it with one client public key per line \
 (what `conduit init` printed on each client), or set router.authorized_keys",
            p.display()
        ));
    }
    let file = keys::load_authorized_file(p).map_err(|e| e.to_string())?;
    let now = std::time::SystemTime::now();
    Ok(Authorized {
        listed: file.names.len(),
        admitted: (file.names.keys())
            .filter(|k| file.expires.get(k).is_none_or(|t| *t > now))
            .count(),
    })
}

/// Why the bandwidth burst is a poor choice, if it is: a bucket smaller than the rate
/// is a smoother pace, but one smaller than a TLS record makes every send a small
/// one. `burst` 0 is one second's worth of `rate`; `rate` 0 is no limit. The
/// message is said of the burst when one is given, else of the rate.
pub fn small_burst(burst: u64, rate: u64) -> Option<String> {
    const RECORD: u64 = 16_384;
    if rate == 0 {
        return None;
    }
    if burst > 0 {
        return (burst < RECORD).then(|| {
            format!(
                "{burst} bytes is less than one TLS record ({RECORD}): a limited tunnel then \
                 relays in pieces that small, at more CPU per byte; give {RECORD} or more (0: \
                 one second's worth)"
            )
        });
    }
    (rate < RECORD).then(|| {
        format!(
            "{rate} bytes a second, with no burst given, lets the tunnel send {rate} bytes at \
             once (one second's worth), less than one TLS record ({RECORD}): it then relays \
             in pieces that small, at more CPU per byte; give a burst of {RECORD} or more"
        )
    })
}

#[cfg(test)]
mod tests;
