//! Source health: the router probes each source in use, and a source changes state
//! only after `fall` failures (or `rise` successes) in a row, so one lost SYN does not
//! page anyone. A TCP source is probed with a connect. A UDP source is sent an empty
//! datagram from a connected socket: an ICMP error in answer (port or host
//! unreachable, which the kernel reports on that socket) is a failure, a reply or
//! silence for the probe's timeout a success, as load balancers' UDP monitors do: a
//! service that crashed, or a host the router's network knows to be gone, is told
//! apart; a host that drops everything silently is not. A UDP source given a probe
//! of its own (`[health] udp_probes`: a DNS query, or bytes the service answers) must
//! answer it within the timeout: silence fails it too, so a host that drops
//! everything, or a service that hangs, is found out.
//!
//! Which sources: those a client opened within `recent` (the data plane remembers when
//! each was last opened), up or down, plus the ones the operator lists. With the defaults (probe
//! every 5 s, 2 s timeout, 2 failures) a source that goes down is reported within
//! about 12 s, and within 20 s at worst (a probe that hangs for its whole timeout).

use std::time::{Duration, Instant, SystemTime};

use crate::config::Protocol;
use crate::policy::AllowList;

/// How sources are probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSettings {
    /// Time between probe rounds.
    pub interval: Duration,
    /// Limit on one probe (name resolution plus TCP connect).
    pub timeout: Duration,
    /// Failures in a row that make a source down.
    pub fall: u32,
    /// Successes in a row that make a down source up again.
    pub rise: u32,
    /// A source opened within this long is probed.
    pub recent: Duration,
    /// Sources probed whether or not a client uses them.
    pub sources: Vec<String>,
    /// UDP sources (as tunnels name them) probed with a datagram they must answer.
    pub udp_probes: Vec<(String, UdpProbe)>,
    /// A client link whose control channel is silent this long is lost.
    pub client_timeout: Duration,
    /// A client link lost or disconnected this long is forgotten.
    pub lost_link_expiry: Duration,
}

impl HealthSettings {
    /// How UDP source `source` is probed.
    pub fn udp_probe(&self, source: &str) -> UdpProbe {
        self.udp_probes
            .iter()
            .find(|(s, _)| s == source)
            .map_or(UdpProbe::Empty, |(_, p)| p.clone())
    }
}

/// What a UDP source is sent to probe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UdpProbe {
    /// An empty datagram: only an ICMP error fails it.
    Empty,
    /// A DNS query (`. IN NS`): any DNS response answering it passes, whatever its
    /// code (a server that refuses the query is up).
    Dns,
    /// These bytes: any datagram in answer passes.
    Bytes(Vec<u8>),
}

/// The id of the DNS probe's query, which its response repeats.
const DNS_PROBE_ID: [u8; 2] = *b"cd";

impl UdpProbe {
    /// Parses `dns` or `hex:BYTES` (one or more, in hex).
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "dns" {
            return Ok(UdpProbe::Dns);
        }
        let Some(hex) = s.strip_prefix("hex:") else {
            return Err(format!(
                "unknown probe {s:?}: use dns (a DNS query) or hex:BYTES (bytes the source \
                 answers, such as hex:0d0a)"
            ));
        };
        match hex::decode(hex) {
            Ok(b) if !b.is_empty() => Ok(UdpProbe::Bytes(b)),
            Ok(_) => Err("hex: names no bytes; give at least one, such as hex:0d0a".into()),
            Err(e) => Err(format!(
                "{hex:?} is not hex ({e}); write the bytes as hex:0d0a"
            )),
        }
    }

    /// Its name in the API: `empty`, `dns` or `bytes`.
    pub fn name(&self) -> &'static str {
        match self {
            UdpProbe::Empty => "empty",
            UdpProbe::Dns => "dns",
            UdpProbe::Bytes(_) => "bytes",
        }
    }

    /// The datagram sent.
    fn datagram(&self) -> Vec<u8> {
        match self {
            UdpProbe::Empty => Vec::new(),
            // Header: id, flags (recursion desired), one question; the question: the
            // root name, type NS, class IN.
            UdpProbe::Dns => [
                &DNS_PROBE_ID[..],
                &[1, 0, 0, 1, 0, 0, 0, 0, 0, 0],
                &[0, 0, 2, 0, 1],
            ]
            .concat(),
            UdpProbe::Bytes(b) => b.clone(),
        }
    }

    /// Why `answer` does not pass, if it does not.
    fn refuses(&self, answer: &[u8]) -> Option<String> {
        match self {
            UdpProbe::Dns
                if answer.len() < 12 || answer[..2] != DNS_PROBE_ID || answer[2] & 0x80 == 0 =>
            {
                Some(format!(
                    "answered the DNS probe with {} bytes that are no DNS response to it",
                    answer.len()
                ))
            }
            _ => None,
        }
    }
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            fall: 2,
            rise: 2,
            recent: Duration::from_secs(600),
            sources: Vec::new(),
            udp_probes: Vec::new(),
            client_timeout: Duration::from_secs(20),
            lost_link_expiry: Duration::from_secs(86_400),
        }
    }
}

/// What the router knows about a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceState {
    /// Not probed enough yet.
    Unknown,
    /// Accepting connections.
    Up,
    /// Refusing or not answering.
    Down,
}

impl SourceState {
    /// The word the API and alerts use.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceState::Unknown => "unknown",
            SourceState::Up => "up",
            SourceState::Down => "down",
        }
    }
}

/// One source's health, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceView {
    /// The source, as clients name it.
    pub target: String,
    /// How it is reached (and probed).
    pub protocol: Protocol,
    /// Its state.
    pub state: SourceState,
    /// Since when (or since it was first seen).
    pub since: SystemTime,
    /// When it was last probed.
    pub last_probe: Option<SystemTime>,
    /// How long the last successful probe took (`None` for a UDP source that
    /// answered with silence).
    pub last_latency: Option<Duration>,
    /// Why the last probe failed, if it did.
    pub last_error: Option<String>,
    /// Failures in a row.
    pub failures: u32,
    /// Successes in a row.
    pub successes: u32,
}

/// A change worth an alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceChange {
    /// It went down (from up, or down from the first probes).
    Down(SourceView),
    /// It came back.
    Up(SourceView),
}

/// One source's probe history.
#[derive(Debug, Clone)]
pub struct SourceHealth {
    view: SourceView,
}

impl SourceHealth {
    /// A source first seen `now`.
    pub fn new(target: &str, protocol: Protocol, now: SystemTime) -> Self {
        Self {
            view: SourceView {
                target: target.to_owned(),
                protocol,
                state: SourceState::Unknown,
                since: now,
                last_probe: None,
                last_latency: None,
                last_error: None,
                failures: 0,
                successes: 0,
            },
        }
    }

    /// A source known to have been down since `since` (it was left unprobed while
    /// down): it takes `rise` answered probes, or a stream, to be up again.
    pub fn down_since(target: &str, protocol: Protocol, since: SystemTime) -> Self {
        let mut h = Self::new(target, protocol, since);
        h.view.state = SourceState::Down;
        h
    }

    /// What the API shows.
    pub fn view(&self) -> &SourceView {
        &self.view
    }

    /// A stream connected to the source: it is up (at once, however many probes a
    /// down source otherwise needs); returns the change, if any.
    pub fn answered(&mut self, now: SystemTime) -> Option<SourceChange> {
        let v = &mut self.view;
        v.failures = 0;
        v.last_error = None;
        if v.state != SourceState::Down {
            return None;
        }
        v.state = SourceState::Up;
        v.since = now;
        Some(SourceChange::Up(v.clone()))
    }

    /// Records a probe's result; returns the change it caused, if any.
    pub fn record(
        &mut self,
        result: Result<Option<Duration>, String>,
        s: &HealthSettings,
        now: SystemTime,
    ) -> Option<SourceChange> {
        let v = &mut self.view;
        v.last_probe = Some(now);
        let next = match result {
            Ok(latency) => {
                v.successes = v.successes.saturating_add(1);
                v.failures = 0;
                v.last_latency = latency;
                v.last_error = None;
                let needed = if v.state == SourceState::Down {
                    s.rise
                } else {
                    1
                };
                (v.successes >= needed.max(1)).then_some(SourceState::Up)
            }
            Err(e) => {
                v.failures = v.failures.saturating_add(1);
                v.successes = 0;
                v.last_error = Some(e);
                (v.failures >= s.fall.max(1)).then_some(SourceState::Down)
            }
        }?;
        if next == v.state {
            return None;
        }
        let was = v.state;
        v.state = next;
        v.since = now;
        match (was, next) {
            (_, SourceState::Down) => Some(SourceChange::Down(v.clone())),
            (SourceState::Down, SourceState::Up) => Some(SourceChange::Up(v.clone())),
            _ => None,
        }
    }
}

/// Why a probe failed: the source's fault, or the router's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeError {
    /// The source refused, did not answer, or its name did not resolve: counts
    /// towards its `fall`.
    Source(String),
    /// The router could not make the probe (out of file descriptors or socket
    /// buffers): it says nothing about the source, which keeps its state.
    Local(String),
}

impl ProbeError {
    /// `e` from opening or connecting a probe's socket, told apart by whose fault.
    pub fn from_io(e: &std::io::Error) -> Self {
        if is_local(e) {
            ProbeError::Local(e.to_string())
        } else {
            ProbeError::Source(e.to_string())
        }
    }
}

/// Whether `e` is the router running out of something, not a source failing.
fn is_local(e: &std::io::Error) -> bool {
    #[cfg(unix)]
    {
        use nix::errno::Errno;
        let local = [Errno::EMFILE, Errno::ENFILE, Errno::ENOBUFS, Errno::ENOMEM];
        e.raw_os_error()
            .is_some_and(|n| local.iter().any(|l| *l as i32 == n))
    }
    #[cfg(not(unix))]
    {
        let _ = e;
        false
    }
}

/// Probes `target` (`host:port`) as a source of `protocol` (a UDP one with `udp`):
/// how long it took to answer (`None`: a UDP source that stayed silent where that
/// passes), or why it failed.
pub async fn probe(
    target: &str,
    protocol: Protocol,
    timeout: Duration,
    udp: &UdpProbe,
) -> Result<Option<Duration>, ProbeError> {
    probe_admitted(target, protocol, timeout, udp, None).await
}

/// [`probe`], reaching only the addresses `allow` admits (when given): a source
/// learned from a client's stream is a name that may resolve elsewhere by the
/// time it is probed, and the router connects nowhere its rules refuse.
pub async fn probe_admitted(
    target: &str,
    protocol: Protocol,
    timeout: Duration,
    udp: &UdpProbe,
    allow: Option<&AllowList>,
) -> Result<Option<Duration>, ProbeError> {
    match protocol {
        Protocol::Tcp => probe_tcp(target, timeout, allow).await.map(Some),
        Protocol::Udp => probe_udp(target, timeout, udp, allow).await,
    }
}

/// The addresses `target` resolved to that `allow` admits (all of them with no
/// list); an error when it admits none.
fn admitted(
    target: &str,
    addrs: Vec<std::net::SocketAddr>,
    allow: Option<&AllowList>,
) -> Result<Vec<std::net::SocketAddr>, String> {
    let Some(allow) = allow.filter(|a| !a.names_host(target)) else {
        // No rules to keep to, or one names the host: all it resolves to is allowed.
        return Ok(addrs);
    };
    let (ok, refused): (Vec<_>, Vec<_>) =
        (addrs.into_iter()).partition(|a| allow.could_allow(&canonical_addr(*a).to_string()));
    if ok.is_empty() && !refused.is_empty() {
        let each: Vec<String> = refused.iter().map(ToString::to_string).collect();
        return Err(format!(
            "{target} resolves to {} now, which no allow rule admits: not probed (the \
             router connects only where its rules allow)",
            each.join(", ")
        ));
    }
    Ok(ok)
}

/// An IPv4-mapped address as its IPv4 one, as the rules read it.
fn canonical_addr(a: std::net::SocketAddr) -> std::net::SocketAddr {
    match a {
        std::net::SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => (v4, v6.port()).into(),
            None => a,
        },
        v4 => v4,
    }
}

/// Resolves `target` and connects to each address (that `allow` admits) until one
/// accepts, all within `timeout`. The connection is closed at once.
async fn probe_tcp(
    target: &str,
    timeout: Duration,
    allow: Option<&AllowList>,
) -> Result<Duration, ProbeError> {
    let start = Instant::now();
    if allow.is_none() {
        return match crate::wire::connect(target, timeout).await {
            Ok(_) => Ok(start.elapsed()),
            Err(e) => Err(ProbeError::from_io(&e)),
        };
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let addrs: Vec<std::net::SocketAddr> =
        match tokio::time::timeout_at(deadline, tokio::net::lookup_host(target)).await {
            Ok(Ok(a)) => a.collect(),
            Ok(Err(e)) => return Err(ProbeError::Source(format!("cannot resolve {target}: {e}"))),
            Err(_) => {
                return Err(ProbeError::Source(format!(
                    "resolving {target} took over {timeout:?}"
                )));
            }
        };
    let addrs = admitted(target, addrs, allow).map_err(ProbeError::Source)?;
    let mut last = ProbeError::Source(format!("{target} resolves to no address"));
    for addr in addrs {
        match tokio::time::timeout_at(deadline, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => return Ok(start.elapsed()),
            Ok(Err(e)) => last = ProbeError::from_io(&e),
            Err(_) => {
                let e = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    crate::wire::NoAnswer(timeout),
                );
                return Err(ProbeError::from_io(&e));
            }
        }
    }
    Err(last)
}

/// Resolves `target` and sends each address `how`'s datagram, waiting up to
/// `timeout` for an answer: an ICMP error fails that address (the next is tried);
/// an answer passes, and so does silence after an empty datagram.
async fn probe_udp(
    target: &str,
    timeout: Duration,
    how: &UdpProbe,
    allow: Option<&AllowList>,
) -> Result<Option<Duration>, ProbeError> {
    probe_udp_addrs(target, timeout, how, allow)
        .await
        .map_err(|(e, local)| {
            if local {
                ProbeError::Local(e)
            } else {
                ProbeError::Source(e)
            }
        })
}

/// [`probe_udp`], its failure with whether it was the router's own.
async fn probe_udp_addrs(
    target: &str,
    timeout: Duration,
    how: &UdpProbe,
    allow: Option<&AllowList>,
) -> Result<Option<Duration>, (String, bool)> {
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    let addrs: Vec<std::net::SocketAddr> =
        match tokio::time::timeout_at(deadline, tokio::net::lookup_host(target)).await {
            Ok(Ok(a)) => a.collect(),
            Ok(Err(e)) => return Err((format!("cannot resolve {target}: {e}"), false)),
            Err(_) => return Err((format!("resolving {target} took over {timeout:?}"), false)),
        };
    let addrs = admitted(target, addrs, allow).map_err(|e| (e, false))?;
    let mut last = format!("{target} resolves to no address");
    for addr in addrs {
        let unspecified: std::net::SocketAddr = if addr.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let sock = match tokio::net::UdpSocket::bind(unspecified).await {
            Ok(s) => s,
            Err(e) => return Err((format!("cannot open a UDP socket: {e}"), is_local(&e))),
        };
        let sent = match sock.connect(addr).await {
            Ok(()) => sock.send(&how.datagram()).await,
            Err(e) => Err(e),
        };
        let answer: std::io::Result<()> = match sent {
            Err(e) => Err(e),
            Ok(_) => {
                let mut buf = [0u8; 512];
                match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
                    Ok(Ok(n)) => match how.refuses(&buf[..n]) {
                        None => return Ok(Some(start.elapsed())),
                        Some(why) => {
                            last = format!("{addr} {why}");
                            continue;
                        }
                    },
                    Ok(Err(e)) => Err(e),
                    // Nothing refused it: as up as UDP can tell.
                    Err(_) if *how == UdpProbe::Empty => return Ok(None),
                    Err(_) => {
                        last = format!("{addr} did not answer the probe within {timeout:?}");
                        continue;
                    }
                }
            }
        };
        if let Err(e) = answer {
            last = match e.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    format!(
                        "{addr} answered port unreachable: nothing listens on UDP port {}",
                        addr.port()
                    )
                }
                _ => format!("{addr}: {e}"),
            };
        }
    }
    Err((last, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source learned from a stream is probed only at the addresses the router's
    /// rules admit: a name that resolves elsewhere since (DNS rebinding) is not
    /// followed there.
    #[test]
    fn probes_reach_only_admitted_addresses() {
        let allow = AllowList::parse(&["127.0.0.7:80", "[::1]:80", "db.internal:80"]).unwrap();
        let a = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
        let both = vec![a("127.0.0.1:80"), a("127.0.0.7:80")];
        assert_eq!(
            admitted("db:80", both.clone(), Some(&allow)),
            Ok(vec![a("127.0.0.7:80")])
        );
        assert_eq!(
            admitted("db:80", both.clone(), None).map(|v| v.len()),
            Ok(2)
        );
        // A rule naming the host admits whatever it resolves to, as for a stream.
        assert_eq!(
            admitted("db.internal:80", both, Some(&allow)).map(|v| v.len()),
            Ok(2)
        );
        // Mapped IPv4 addresses are read as the rules read them.
        assert_eq!(
            admitted("db:80", vec![a("[::ffff:127.0.0.7]:80")], Some(&allow)).map(|v| v.len()),
            Ok(1)
        );
        assert_eq!(
            admitted(
                "db:80",
                vec![a("127.0.0.1:80"), a("10.0.0.1:80")],
                Some(&allow)
            ),
            Err(
                "db:80 resolves to 127.0.0.1:80, 10.0.0.1:80 now, which no allow rule admits: \
                 not probed (the router connects only where its rules allow)"
                    .to_owned()
            )
        );
    }

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
    }

    const OK: Result<Option<Duration>, String> = Ok(Some(Duration::from_millis(1)));

    fn fail() -> Result<Option<Duration>, String> {
        Err("connection refused".into())
    }

    #[test]
    fn down_after_fall_failures_up_after_rise_successes() {
        let s = HealthSettings::default();
        let mut h = SourceHealth::new("db:5432", Protocol::Tcp, t(0));
        // The first success makes an unknown source up, without an alert.
        assert_eq!(h.record(OK, &s, t(1)), None);
        assert_eq!(h.view().state, SourceState::Up);
        assert_eq!(h.record(fail(), &s, t(2)), None);
        assert_eq!(h.view().state, SourceState::Up);
        match h.record(fail(), &s, t(3)) {
            Some(SourceChange::Down(v)) => {
                assert_eq!(v.state, SourceState::Down);
                assert_eq!(v.since, t(3));
                assert_eq!(v.last_error.as_deref(), Some("connection refused"));
            }
            other => panic!("{other:?}"),
        }
        // Still down: no second alert.
        assert_eq!(h.record(fail(), &s, t(4)), None);
        assert_eq!(h.record(OK, &s, t(5)), None);
        assert_eq!(h.view().state, SourceState::Down);
        assert!(matches!(h.record(OK, &s, t(6)), Some(SourceChange::Up(_))));
        assert_eq!(h.record(OK, &s, t(7)), None);
    }

    #[test]
    fn a_source_down_from_the_start_is_reported() {
        let s = HealthSettings::default();
        let mut h = SourceHealth::new("db:5432", Protocol::Tcp, t(0));
        assert_eq!(h.record(fail(), &s, t(1)), None);
        assert!(matches!(
            h.record(fail(), &s, t(2)),
            Some(SourceChange::Down(_))
        ));
    }

    #[tokio::test]
    async fn probes_connect_or_say_why_not() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let timeout = Duration::from_secs(2);
        assert!(
            probe(&addr, Protocol::Tcp, timeout, &UdpProbe::Empty)
                .await
                .unwrap()
                .is_some()
        );
        drop(l);
        match probe(&addr, Protocol::Tcp, timeout, &UdpProbe::Empty).await {
            Err(ProbeError::Source(e)) => assert!(e.contains("refused"), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    /// Out of file descriptors is the router's problem, not the source's.
    #[test]
    fn running_out_of_files_is_a_local_failure() {
        let emfile = std::io::Error::from_raw_os_error(nix::errno::Errno::EMFILE as i32);
        assert_eq!(
            ProbeError::from_io(&emfile),
            ProbeError::Local(emfile.to_string())
        );
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            ProbeError::from_io(&refused),
            ProbeError::Source(refused.to_string())
        );
    }

    #[tokio::test]
    async fn udp_probes_fail_on_port_unreachable_and_pass_on_a_reply_or_silence() {
        let udp = |a: String, wait: u64| async move {
            probe(
                &a,
                Protocol::Udp,
                Duration::from_millis(wait),
                &UdpProbe::Empty,
            )
            .await
        };
        // A source that answers (an echo of the empty datagram).
        let echo = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = echo.local_addr().unwrap().to_string();
        let answering = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            let (n, from) = echo.recv_from(&mut buf).await.unwrap();
            echo.send_to(&buf[..n], from).await.unwrap();
            echo
        });
        assert!(udp(addr.clone(), 5_000).await.unwrap().is_some());
        // The same socket, now silent: up as far as UDP can tell, no latency.
        let silent = answering.await.unwrap();
        assert_eq!(udp(addr.clone(), 200).await, Ok(None));
        // Nothing listens: the kernel's port unreachable fails it (silence would
        // have passed).
        drop(silent);
        let e = udp(addr.clone(), 30_000).await.unwrap_err();
        assert_eq!(
            e,
            ProbeError::Source(format!(
                "{addr} answered port unreachable: nothing listens on UDP port {}",
                addr.rsplit_once(':').unwrap().1
            ))
        );
    }

    #[tokio::test]
    async fn a_udp_source_with_a_probe_of_its_own_must_answer_it() {
        let udp = |a: String, how: UdpProbe, wait: u64| async move {
            probe(&a, Protocol::Udp, Duration::from_millis(wait), &how).await
        };
        // A DNS server (as far as the probe goes): answers the query with its id
        // and the response bit; and a service that answers with garbage.
        let dns = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = dns.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            let (n, from) = dns.recv_from(&mut buf).await.unwrap();
            let query = buf[..n].to_vec();
            assert_eq!(query, UdpProbe::Dns.datagram());
            let mut reply = query.clone();
            reply[2] |= 0x80;
            dns.send_to(&reply, from).await.unwrap();
            let (_, from) = dns.recv_from(&mut buf).await.unwrap();
            dns.send_to(b"nonsense", from).await.unwrap();
            let (n, from) = dns.recv_from(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"\r\n");
            dns.send_to(b"+PONG", from).await.unwrap();
            dns
        });
        assert!(
            udp(addr.clone(), UdpProbe::Dns, 5_000)
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(
            udp(addr.clone(), UdpProbe::Dns, 5_000).await,
            Err(ProbeError::Source(format!(
                "{addr} answered the DNS probe with 8 bytes that are no DNS response to it"
            )))
        );
        let bytes = UdpProbe::parse("hex:0d0a").unwrap();
        assert!(
            udp(addr.clone(), bytes.clone(), 5_000)
                .await
                .unwrap()
                .is_some()
        );
        // Silent now: a failure, where an empty datagram's silence passes.
        let _silent = server.await.unwrap();
        assert_eq!(
            udp(addr.clone(), bytes, 200).await,
            Err(ProbeError::Source(format!(
                "{addr} did not answer the probe within 200ms"
            )))
        );
        assert_eq!(udp(addr, UdpProbe::Empty, 200).await, Ok(None));
    }

    #[test]
    fn udp_probes_parse_with_the_fix_in_the_error() {
        assert_eq!(UdpProbe::parse("dns"), Ok(UdpProbe::Dns));
        assert_eq!(
            UdpProbe::parse("hex:00ff"),
            Ok(UdpProbe::Bytes(vec![0, 255]))
        );
        assert_eq!(
            UdpProbe::parse("ping").unwrap_err(),
            "unknown probe \"ping\": use dns (a DNS query) or hex:BYTES (bytes the source \
             answers, such as hex:0d0a)"
        );
        assert_eq!(
            UdpProbe::parse("hex:").unwrap_err(),
            "hex: names no bytes; give at least one, such as hex:0d0a"
        );
        assert!(
            UdpProbe::parse("hex:0g")
                .unwrap_err()
                .starts_with("\"0g\" is not hex (")
        );
        let s = HealthSettings {
            udp_probes: vec![("10.2.0.53:53".into(), UdpProbe::Dns)],
            ..HealthSettings::default()
        };
        assert_eq!(s.udp_probe("10.2.0.53:53"), UdpProbe::Dns);
        assert_eq!(s.udp_probe("10.2.0.54:53"), UdpProbe::Empty);
    }
}
