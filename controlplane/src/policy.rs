//! The router's allow-list: which sources clients may open, so a router is never an
//! open proxy into its network.
//!
//! A rule is `HOST:PORTS`, optionally for one client: `KEY=HOST:PORTS` for a key, or
//! `NAME=HOST:PORTS` for the keys whose `authorized_clients` line bears that name
//! (a rotated key keeps its name, so such a rule follows the client through
//! rotations).
//! * HOST: an IP (`10.2.0.2`, `[::1]`), a CIDR (`10.2.0.0/24`), a host name
//!   (`db.internal`, matched by name) or `*` (any address). An IPv4-mapped IP or
//!   CIDR (`[::ffff:10.2.0.2]`) is the IPv4 one it maps, as a target is.
//! * PORTS: a port (`8080`, not 0: no source listens there), a range (`8000-8100`)
//!   or `*`.
//!
//! A target given as a name is allowed if a name rule matches it, or if every
//! address it resolves to is allowed by an address rule. With no rules, nothing is
//! allowed.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::str::FromStr;

use conduit_proto::{PublicKey, Refusal, RefusalCode};
use ipnet::IpNet;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Any,
    Net(IpNet),
    Name(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ports {
    Any,
    Range(u16, u16),
}

impl Ports {
    fn contains(self, p: u16) -> bool {
        match self {
            Ports::Any => true,
            Ports::Range(a, b) => (a..=b).contains(&p),
        }
    }
}

/// Whom a rule is for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Who {
    Key(PublicKey),
    /// The name in `authorized_clients`.
    Name(String),
}

/// Who opens a source: an authenticated client's key, and the name its line in
/// `authorized_clients` gives it.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// The key it authenticated with.
    pub key: &'a PublicKey,
    /// Its name, if its line has one.
    pub name: Option<&'a str>,
}

impl<'a> Caller<'a> {
    /// A caller known by its key alone.
    pub fn key(key: &'a PublicKey) -> Self {
        Self { key, name: None }
    }
}

/// Whether `name` can be a client's name in a rule: what `conduit init --name` and
/// hosts' names hold.
fn is_client_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
}

/// One allow rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    client: Option<Who>,
    host: Host,
    ports: Ports,
    text: String,
}

impl FromStr for Rule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let t = text.trim();
        // The key's base64 may end in '=', and HOST:PORT never holds one: split at the last.
        let (client, pattern) = match t.rsplit_once('=') {
            Some((k, p)) if k.starts_with("ed25519:") => (
                Some(Who::Key(
                    PublicKey::parse(k).map_err(|e| format!("allow rule {t:?}: {e}"))?,
                )),
                p,
            ),
            Some((name, p)) if is_client_name(name) => (Some(Who::Name(name.to_owned())), p),
            Some((name, _)) => {
                return Err(format!(
                    "invalid allow rule {t:?}: {name:?} is neither a client key (ed25519:…) \
                     nor a client name (letters, digits, '.', '_', '-', '@': the name on the \
                     key's line in authorized_clients)"
                ));
            }
            None => (None, t),
        };
        let bad = |why: &str| {
            format!(
                "invalid allow rule {t:?}: {why}; expected HOST:PORT such as 10.2.0.2:8080, \
                 10.2.0.0/24:5432, db.internal:5432, [::1]:80, *:8000-8100 (optionally \
                 KEY=HOST:PORT or NAME=HOST:PORT)"
            )
        };
        let (host, ports) = pattern.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        let ports = match ports {
            "*" => Ports::Any,
            p => match p.split_once('-') {
                Some((a, b)) => {
                    let a: u16 = a.parse().map_err(|_| bad("bad port range"))?;
                    let b: u16 = b.parse().map_err(|_| bad("bad port range"))?;
                    if a > b {
                        return Err(bad("port range runs backwards"));
                    }
                    Ports::Range(a, b)
                }
                None => match p.parse::<u16>() {
                    // A mistake, and one that allows nothing: no source listens on 0.
                    Ok(0) => {
                        return Err(bad(
                            "port 0 is no source's port; give the port the source listens \
                             on, or * for every port",
                        ));
                    }
                    Ok(p) => Ports::Range(p, p),
                    Err(_) => return Err(bad("bad port")),
                },
            },
        };
        // `[::]/0`, the prefix outside the brackets, is `[::/0]`.
        let unbracketed = match host.strip_prefix('[').and_then(|h| h.split_once("]/")) {
            Some((addr, len)) => format!("{addr}/{len}"),
            None => host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
        };
        // `fe80::1:8080` is a whole IPv6 address: the port is told apart by brackets.
        let bracketed = host.starts_with('[') && (host.ends_with(']') || host.contains("]/"));
        if host.contains(':') && !bracketed {
            return Err(bad(
                "an IPv6 address goes in brackets, such as [::1]:80 or [fd00::/64]:5432",
            ));
        }
        let host = unbracketed.as_str();
        let host = if host == "*" {
            Host::Any
        } else if let Ok(net) = host.parse::<IpNet>() {
            // `10.2.0.5/8` typed for one host would admit the whole block.
            if net.trunc() != net {
                return Err(bad(&format!(
                    "{net} has bits set past its /{}: write {} for the whole block, or {} \
                     for that host alone",
                    net.prefix_len(),
                    net.trunc(),
                    net.addr()
                )));
            }
            Host::Net(canonical_net(net))
        } else if let Ok(ip) = host.parse::<IpAddr>() {
            Host::Net(IpNet::from(canonical(ip)))
        } else if !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            Host::Name(host.to_ascii_lowercase())
        } else {
            return Err(bad(&bad_host(host)));
        };
        Ok(Rule {
            client,
            host,
            ports,
            text: t.to_owned(),
        })
    }
}

/// Why `host` of a rule is neither an address, a CIDR block nor a host name.
fn bad_host(host: &str) -> String {
    if let Some((addr, len)) = host.split_once('/')
        && let Ok(ip) = addr.parse::<IpAddr>()
        && let Ok(len) = len.parse::<u32>()
    {
        let bits = if ip.is_ipv4() { 32 } else { 128 };
        if len > bits {
            return format!(
                "bad host: /{len} is longer than the {bits} bits of {addr}; a prefix is at \
                 most /{bits}"
            );
        }
    }
    "bad host: not an IP address, a CIDR block (10.0.0.0/8, [fd00::]/64) or a host name".to_owned()
}

impl Rule {
    /// Rules for one key or name apply only to that key or the keys of that name; a
    /// client nobody authenticated (plain transport) gets only the rules for
    /// everyone.
    /// Whether this rule, for whomever it is, admits `target` as written (an
    /// address, or a name it names).
    fn covers(&self, target: &str) -> bool {
        if let Ok(addr) = target.parse::<SocketAddr>() {
            return self.allows_addr(addr);
        }
        let Some((host, port)) = target.rsplit_once(':') else {
            return false;
        };
        port.parse::<u16>()
            .is_ok_and(|port| self.allows_name(host, port))
    }

    fn applies_to(&self, client: Option<Caller<'_>>) -> bool {
        match &self.client {
            None => true,
            Some(Who::Key(k)) => client.is_some_and(|c| c.key == k),
            Some(Who::Name(n)) => client.and_then(|c| c.name) == Some(n.as_str()),
        }
    }

    fn allows_addr(&self, addr: SocketAddr) -> bool {
        self.ports.contains(addr.port())
            && match &self.host {
                Host::Any => true,
                Host::Net(n) => n.contains(&canonical(addr.ip())),
                Host::Name(_) => false,
            }
    }

    fn allows_name(&self, name: &str, port: u16) -> bool {
        self.ports.contains(port)
            && matches!(&self.host, Host::Name(n) if n.eq_ignore_ascii_case(name))
    }

    /// The rule as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// A warning for a rule that lets its clients reach every address, on every
    /// port (`*:*`, `0.0.0.0/0:*`, `[::/0]:*`) or on some (`*:80`): the router's own
    /// loopback services and API, a cloud's metadata service (on port 80), the whole
    /// network around it. Allowed, as a lab may want it, but never without a word.
    pub fn opens_everything(&self) -> Option<String> {
        // What the router's own host offers on each family: a rule for every IPv6
        // address reaches none of its IPv4 loopback services (its API's default
        // address is 127.0.0.1) nor the IPv4 metadata address.
        let (every, v6) = match &self.host {
            Host::Any => ("every address", false),
            Host::Net(IpNet::V4(n)) if n.prefix_len() == 0 => ("every IPv4 address", false),
            Host::Net(IpNet::V6(n)) if n.prefix_len() == 0 => ("every IPv6 address", true),
            _ => return None,
        };
        let who = match &self.client {
            None => "every client".to_owned(),
            Some(Who::Key(k)) => format!("client {k}"),
            Some(Who::Name(n)) => format!("client {n:?}"),
        };
        // Port 0 is no source's: `1-65535` is every port too.
        let (first, last) = match self.ports {
            Ports::Any | Ports::Range(0 | 1, u16::MAX) => {
                let own = match v6 {
                    false => {
                        "its own loopback services and API, cloud metadata \
                              (169.254.169.254)"
                    }
                    true => {
                        "its own services on [::1], cloud metadata over IPv6 \
                             ([fd00:ec2::254] on AWS)"
                    }
                };
                return Some(format!(
                    "allow rule `{}` lets {who} reach {every} on every port the router can \
                     reach: {own}, the whole network around it; allow only the sources \
                     clients need, by address and port (10.2.0.2:8080), network and port \
                     (10.2.0.0/24:5432) or name (db.internal:5432)",
                    self.text
                ));
            }
            Ports::Range(a, b) => (a, b),
        };
        let ports = if first == last {
            format!("port {first}")
        } else {
            format!("ports {first}-{last}")
        };
        let metadata = match (self.ports.contains(80), v6) {
            (false, _) => "",
            (true, false) => ", cloud metadata (169.254.169.254:80)",
            (true, true) => ", cloud metadata over IPv6 ([fd00:ec2::254]:80 on AWS)",
        };
        let own = match v6 {
            false => "its own loopback services",
            true => "its own services on [::1]",
        };
        Some(format!(
            "allow rule `{}` lets {who} reach {ports} of {every} the router can reach: \
             {own}{metadata}, the whole network around it; allow only the \
             sources clients need, by address and port (10.2.0.2:{first}), network and port \
             (10.2.0.0/24:{first}) or name (db.internal:{first})",
            self.text
        ))
    }
}

/// IPv4-mapped IPv6 addresses are checked as the IPv4 address they are.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// An IPv4-mapped network (`::ffff:10.0.0.0/104`) is the IPv4 network it maps
/// (`10.0.0.0/8`), as a mapped target is checked as the IPv4 address it is. A
/// shorter prefix (`::/0`) reaches past the mapped range and stays IPv6.
fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => v6
            .network()
            .to_ipv4_mapped()
            .and_then(|v4| ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).ok())
            .map_or(net, IpNet::V4),
        _ => net,
    }
}

/// `target` as a rule would allow it: an IPv4-mapped address in its IPv4 form
/// (`[::ffff:10.0.0.1]:80` is `10.0.0.1:80`); anything else as it is.
fn rule_form(target: &str) -> String {
    match target.parse::<SocketAddr>() {
        Ok(addr) => SocketAddr::new(canonical(addr.ip()), addr.port()).to_string(),
        Err(_) => target.to_owned(),
    }
}

/// Where a router's allow rules were given, so that a refusal names the place to
/// add the missing one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RulesGiven {
    /// `--allow` on the command line (or nowhere yet).
    #[default]
    Flags,
    /// `allow` under `[router]` in the router's file.
    File,
    /// An environment variable (`CONDUIT_ROUTER_ALLOW`).
    Env(String),
}

/// An ordered set of allow rules.
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    rules: Vec<Rule>,
    given: RulesGiven,
}

impl AllowList {
    /// Parses every rule, reporting every bad one.
    pub fn parse<S: AsRef<str>>(rules: &[S]) -> Result<Self, Vec<String>> {
        let mut ok = Vec::new();
        let mut errors = Vec::new();
        for r in rules {
            match r.as_ref().parse::<Rule>() {
                Ok(rule) => ok.push(rule),
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(Self {
                rules: ok,
                given: RulesGiven::Flags,
            })
        } else {
            Err(errors)
        }
    }

    /// The same rules, given where `given` says: refusals tell to add a rule there
    /// (a rule added with `--allow` to a router whose rules are in its file would
    /// replace them all).
    pub fn given_in(mut self, given: RulesGiven) -> Self {
        self.given = given;
        self
    }

    /// How to add `rule` where this router's rules are given.
    fn add(&self, rule: &str) -> String {
        match &self.given {
            RulesGiven::Flags => format!("add `--allow {rule}` to the router"),
            RulesGiven::File => {
                format!("add \"{rule}\" to `allow` under [router] in the router's file")
            }
            RulesGiven::Env(var) => format!("add {rule} to the router's {var} (comma-separated)"),
        }
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True when nothing is allowed.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// True when a rule applies to `key` alone (`KEY=HOST:PORT`).
    pub fn names_client(&self, key: &PublicKey) -> bool {
        self.rules
            .iter()
            .any(|r| matches!(&r.client, Some(Who::Key(k)) if k == key))
    }

    /// The client names rules are for (`NAME=HOST:PORT`), each once and in order, with
    /// the rules (as written) for it.
    pub fn name_rules(&self) -> Vec<(&str, Vec<&str>)> {
        let mut names: Vec<(&str, Vec<&str>)> = Vec::new();
        for r in &self.rules {
            let Some(Who::Name(n)) = &r.client else {
                continue;
            };
            match names.binary_search_by(|(m, _)| (*m).cmp(n.as_str())) {
                Ok(i) => names[i].1.push(r.as_str()),
                Err(i) => names.insert(i, (n.as_str(), vec![r.as_str()])),
            }
        }
        names
    }

    /// Whether a rule names `target`'s host (`NAME:PORT`) for its port: every address
    /// it resolves to is then admitted, as when a stream opens it.
    pub fn names_host(&self, target: &str) -> bool {
        let Some((host, port)) = target.rsplit_once(':') else {
            return false;
        };
        port.parse::<u16>()
            .is_ok_and(|port| self.rules.iter().any(|r| r.allows_name(host, port)))
    }

    /// Whether some client could be allowed to open `target` (`HOST:PORT`) under some
    /// rule, without resolving names: a name counts when a rule names it, or when an
    /// address rule covers its port (what it resolves to is checked when it is opened).
    pub fn could_allow(&self, target: &str) -> bool {
        if let Ok(addr) = target.parse::<SocketAddr>() {
            return self.rules.iter().any(|r| r.allows_addr(addr));
        }
        let Some((host, port)) = target.rsplit_once(':') else {
            return false;
        };
        let Ok(port) = port.parse::<u16>() else {
            return false;
        };
        self.rules.iter().any(|r| {
            r.allows_name(host, port)
                || (!matches!(r.host, Host::Name(_)) && r.ports.contains(port))
        })
    }

    fn denied(&self, client: Option<Caller<'_>>, target: &str, why: &str) -> Refusal {
        // A rule for other clients covers it: the fix is a rule for this one too,
        // not one that opens it to every client.
        let theirs = self
            .rules
            .iter()
            .any(|r| r.client.is_some() && !r.applies_to(client) && r.covers(target));
        // The rule to add, in the form rules are matched in.
        let rule = rule_form(target);
        let message = match client {
            Some(c) if theirs => {
                // By name where a rule could name it (one word), else by key.
                let nameable = |n: &&str| format!("{n}=127.0.0.1:1").parse::<Rule>().is_ok();
                let who = match c.name.filter(nameable) {
                    Some(name) => name.to_owned(),
                    None => c.key.to_string(),
                };
                format!(
                    "source {target} is allowed to other clients only by the router's \
                     policy{why}; to allow it to this client too, {}",
                    self.add(&format!("{who}={rule}"))
                )
            }
            _ if self.rules.is_empty() && self.given == RulesGiven::Flags => format!(
                "source {target} is not allowed by the router's policy{why}; this router \
                 allows no sources yet: start it with `--allow {rule}`"
            ),
            _ => format!(
                "source {target} is not allowed by the router's policy{why}; to allow it, {}",
                self.add(&rule)
            ),
        };
        Refusal::new(RefusalCode::PolicyDenied, message)
    }

    /// The name `check` would look up for `target` and `client`: `None` for an
    /// address, a malformed target, or a name no rule could admit.
    pub fn lookup_needed<'t>(
        &self,
        client: Option<Caller<'_>>,
        target: &'t str,
    ) -> Option<(&'t str, u16)> {
        if target.parse::<SocketAddr>().is_ok() {
            return None;
        }
        let (host, port) = target.rsplit_once(':')?;
        let port = port.parse::<u16>().ok()?;
        self.rules
            .iter()
            .filter(|r| r.applies_to(client))
            .any(|r| r.allows_name(host, port) || r.ports.contains(port))
            .then_some((host, port))
    }

    /// Checks `target` (`host:port`) for `client` and returns the addresses to try.
    pub fn check(
        &self,
        client: Option<Caller<'_>>,
        target: &str,
        resolve: impl FnOnce(&str, u16) -> std::io::Result<Vec<SocketAddr>>,
    ) -> Result<Vec<SocketAddr>, Refusal> {
        let rules: Vec<&Rule> = self.rules.iter().filter(|r| r.applies_to(client)).collect();
        if let Ok(addr) = target.parse::<SocketAddr>() {
            // `[::ffff:0.0.0.0]` is 0.0.0.0 too.
            if canonical(addr.ip()).is_unspecified() {
                // Connecting to it reaches this host: never a source by that name.
                return Err(Refusal::new(
                    RefusalCode::PolicyDenied,
                    format!(
                        "source {target} is not a host's address ({} means any address): \
                         give the source's own address, e.g. --source {}",
                        addr.ip(),
                        SocketAddr::new(
                            if addr.is_ipv4() {
                                std::net::Ipv4Addr::LOCALHOST.into()
                            } else {
                                std::net::Ipv6Addr::LOCALHOST.into()
                            },
                            addr.port()
                        )
                    ),
                ));
            }
            return if rules.iter().any(|r| r.allows_addr(addr)) {
                Ok(vec![addr])
            } else {
                Err(self.denied(client, target, ""))
            };
        }
        let Some((host, port)) = target.rsplit_once(':') else {
            return Err(Refusal::new(
                RefusalCode::Protocol,
                format!("source {target:?} is not HOST:PORT"),
            ));
        };
        let Ok(port) = port.parse::<u16>() else {
            return Err(Refusal::new(
                RefusalCode::Protocol,
                format!("source {target:?} has an invalid port"),
            ));
        };
        let by_name = rules.iter().any(|r| r.allows_name(host, port));
        if !by_name && !rules.iter().any(|r| r.ports.contains(port)) {
            return Err(self.denied(client, target, ""));
        }
        let addrs = resolve(host, port).map_err(|e| {
            Refusal::new(
                RefusalCode::SourceUnreachable,
                format!("the router cannot resolve source {target}: {e}"),
            )
        })?;
        if addrs.is_empty() {
            return Err(Refusal::new(
                RefusalCode::SourceUnreachable,
                format!("the router cannot resolve source {target}: no addresses"),
            ));
        }
        // A name for "any address" (`0`, or one a resolver maps there) reaches this
        // host as the literal does: never a source, whatever rule names it.
        if let Some(any) = addrs.iter().find(|a| canonical(a.ip()).is_unspecified()) {
            return Err(Refusal::new(
                RefusalCode::PolicyDenied,
                format!(
                    "source {target} resolves to {}, which means any address: give the \
                     source's own address or name",
                    any.ip()
                ),
            ));
        }
        if by_name
            || addrs
                .iter()
                .all(|a| rules.iter().any(|r| r.allows_addr(*a)))
        {
            Ok(addrs)
        } else {
            Err(self.denied(
                client,
                target,
                " (it resolves to an address outside the allowed ranges)",
            ))
        }
    }
}

impl AllowList {
    /// [`Self::check`] with the system's resolver. Name lookups block the worker
    /// for their duration; literal addresses, the common case, never look anything
    /// up.
    pub fn resolve_for(
        &self,
        client: Option<Caller<'_>>,
        target: &str,
    ) -> Result<Vec<SocketAddr>, Refusal> {
        self.check(client, target, |host, port| {
            Ok((host, port).to_socket_addrs()?.collect())
        })
    }
}

#[cfg(test)]
mod tests;
