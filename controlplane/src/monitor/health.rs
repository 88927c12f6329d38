//! Source health: the router probes each source in use, and a source changes state
//! only after `fall` failures (or `rise` successes) in a row, so one lost SYN does not
//! page anyone. A TCP source is probed with a connect. A UDP source is sent an empty
//! datagram from a connected socket: an ICMP error in answer (port or host
//! unreachable, which the kernel reports on that socket) is a failure, a reply or
//! silence for the probe's timeout a success, as load balancers' UDP monitors do: a
//! service that crashed, or a host the router's network knows to be gone, is told
//! apart; a host that drops everything silently is not.
//!
//! Which sources: those a client opened within `recent` (the data plane remembers when
//! each was last opened), plus the ones the operator lists. With the defaults (probe
//! every 5 s, 2 s timeout, 2 failures) a source that goes down is reported within
//! about 12 s, and within 20 s at worst (a probe that hangs for its whole timeout).

use std::time::{Duration, Instant, SystemTime};

use crate::config::Protocol;

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
    /// A client link whose control channel is silent this long is lost.
    pub client_timeout: Duration,
    /// A client link lost or disconnected this long is forgotten.
    pub lost_link_expiry: Duration,
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

/// Probes `target` (`host:port`) as a source of `protocol`: how long it took to
/// answer (`None`: a UDP source that stayed silent), or why it failed.
pub async fn probe(
    target: &str,
    protocol: Protocol,
    timeout: Duration,
) -> Result<Option<Duration>, ProbeError> {
    match protocol {
        Protocol::Tcp => probe_tcp(target, timeout).await.map(Some),
        Protocol::Udp => probe_udp(target, timeout).await,
    }
}

/// Resolves `target` and connects to each address until one accepts, all within
/// `timeout`. The connection is closed at once.
async fn probe_tcp(target: &str, timeout: Duration) -> Result<Duration, ProbeError> {
    let start = Instant::now();
    match crate::wire::connect(target, timeout).await {
        Ok(_) => Ok(start.elapsed()),
        Err(e) => Err(ProbeError::from_io(&e)),
    }
}

/// Resolves `target` and sends each address an empty datagram, waiting up to
/// `timeout` for an answer: an ICMP error fails that address (the next is tried);
/// a datagram, or silence, passes.
async fn probe_udp(target: &str, timeout: Duration) -> Result<Option<Duration>, ProbeError> {
    probe_udp_addrs(target, timeout)
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
) -> Result<Option<Duration>, (String, bool)> {
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    let addrs: Vec<std::net::SocketAddr> =
        match tokio::time::timeout_at(deadline, tokio::net::lookup_host(target)).await {
            Ok(Ok(a)) => a.collect(),
            Ok(Err(e)) => return Err((format!("cannot resolve {target}: {e}"), false)),
            Err(_) => return Err((format!("resolving {target} took over {timeout:?}"), false)),
        };
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
            Ok(()) => sock.send(&[]).await,
            Err(e) => Err(e),
        };
        let answer: std::io::Result<()> = match sent {
            Err(e) => Err(e),
            Ok(_) => {
                let mut buf = [0u8; 1];
                match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
                    Ok(Ok(_)) => return Ok(Some(start.elapsed())),
                    Ok(Err(e)) => Err(e),
                    // Nothing refused it: as up as UDP can tell.
                    Err(_) => return Ok(None),
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
            probe(&addr, Protocol::Tcp, timeout)
                .await
                .unwrap()
                .is_some()
        );
        drop(l);
        match probe(&addr, Protocol::Tcp, timeout).await {
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
            probe(&a, Protocol::Udp, Duration::from_millis(wait)).await
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
}
