//! Single values: hosts, addresses and ports, tunnel names, keys and the files
//! that hold them. Each check says what is wrong and how to fix it.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::Path;

use conduit_proto::PublicKey;

use crate::balance::MAX_MEMBERS;
use crate::keys;

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
pub(crate) fn url_authority(s: &str) -> Option<&str> {
    let (scheme, rest) = s.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && (scheme.chars()).all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    scheme_ok.then(|| authority.rsplit_once('@').map_or(authority, |(_, a)| a))
}

/// What is wrong with a list of sources that holds an empty member.
pub fn empty_member(list: &str) -> String {
    format!("{list:?} has an empty member (a comma too many); remove it")
}

/// A fallback router: `HOST:PORT` (`[v6]:PORT`).
pub(crate) fn router_addr(addr: &str) -> Result<(), String> {
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
pub(crate) fn is_host_name(h: &str) -> bool {
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
pub(crate) fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
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

pub(crate) fn pinned(spec: &str) -> Result<Vec<PublicKey>, String> {
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
pub(crate) fn absent(p: &Path) -> bool {
    matches!(p.try_exists(), Ok(false))
}

/// The router key at `p` (checked as `key`), or what is wrong with it.
pub(crate) fn private_key(p: &Path, name: &str, key: &str) -> Result<PublicKey, String> {
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
pub(crate) struct Authorized {
    pub(crate) listed: usize,
    pub(crate) admitted: usize,
}

pub(crate) fn authorized(p: &Path) -> Result<Authorized, String> {
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
