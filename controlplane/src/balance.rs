//! Load balancing and failover across the sources one tunnel names
//! (`--source 10.2.0.5:8080,10.2.0.6:8080`).
//!
//! Every member must pass the allow-list. Each stream starts at the next member in
//! turn (round robin over the router's streams), members the health checks report
//! down go to the end, and the data plane connects to the resulting addresses in
//! order: the first that accepts serves the stream. So a member that dies fails over
//! at once (its connection is refused) and, once its probes fail, is no longer even
//! tried first; when it comes back up it takes its turn again.
//!
//! When the probes report every member of a source down, the breaker turns its
//! streams away at once (a host that is down would otherwise hold each user until
//! its connect times out), except one stream a second that tries it; a trial that
//! connects marks the source up without waiting for the next probes. A stream whose
//! connect found nothing answering (timed out, no route) trips the breaker the same
//! way before the probes notice, until a stream connects or the host refuses one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use conduit_dataplane::{SourceProtocol, source_members};
use conduit_proto::{Refusal, RefusalCode};

use crate::config::Protocol;
use crate::dns::Resolver;
use crate::monitor::{Monitor, SourceState, SourceView};
use crate::policy::{AllowList, Caller};

/// Members one source may name at most (`HOST:PORT,HOST:PORT,…`).
pub const MAX_MEMBERS: usize = 64;

/// Whether a member of `target` is named by host name rather than address.
pub(crate) fn names_a_host(target: &str) -> bool {
    source_members(target).any(|m| m.parse::<SocketAddr>().is_err())
}

/// The allow-list, applied to every member of a target, with members ordered for
/// balancing and failover.
pub struct Balancer {
    allow: AllowList,
    /// Where names are looked up off the data plane (`None`: in place, blocking;
    /// for tests).
    resolver: Option<Arc<Resolver>>,
    next: AtomicUsize,
    /// Weak: the monitor's task holds the data plane, which holds this policy.
    health: Arc<OnceLock<Weak<Monitor>>>,
    breaker: Breaker,
}

impl Balancer {
    /// Balances over what `allow` admits; health comes from the monitor once
    /// `health` is set (until then no member counts as down).
    pub fn new(allow: AllowList, health: Arc<OnceLock<Weak<Monitor>>>) -> Self {
        Self {
            allow,
            resolver: None,
            next: AtomicUsize::new(0),
            health,
            breaker: Breaker::default(),
        }
    }

    /// Looks names up through `resolver`, which the data plane waits on without
    /// blocking (see `lookups`).
    pub fn with_resolver(mut self, resolver: Arc<Resolver>) -> Self {
        self.resolver = Some(resolver);
        self
    }

    /// Starts the lookups `resolve_for` will need for `target` (its members, at
    /// most [`MAX_MEMBERS`]); a wait for them, or `None` when none is needed.
    pub(crate) fn lookups(
        &self,
        client: Option<Caller<'_>>,
        target: &str,
    ) -> Option<flume::Receiver<()>> {
        let resolver = self.resolver.as_ref()?;
        if !names_a_host(target) {
            return None;
        }
        resolver.prefetch(
            source_members(target)
                .take(MAX_MEMBERS)
                .filter_map(|m| self.allow.lookup_needed(client, m)),
        )
    }

    /// What `allow` admits of one member, its name (if any) read from the
    /// resolver's answers.
    fn member(&self, client: Option<Caller<'_>>, m: &str) -> Result<Vec<SocketAddr>, Refusal> {
        match &self.resolver {
            Some(r) => self
                .allow
                .check(client, m, |host, port| r.cached(host, port)),
            None => self.allow.resolve_for(client, m),
        }
    }

    fn monitor(&self) -> Option<Arc<Monitor>> {
        self.health.get().and_then(Weak::upgrade)
    }

    /// The members the health checks of `protocol` report down now.
    fn down(&self, protocol: SourceProtocol) -> Vec<String> {
        let Some(monitor) = self.monitor() else {
            return Vec::new();
        };
        down_members(&monitor.view().sources, protocol)
    }
}

/// The sources of `protocol` that `sources` show down: a UDP probe says nothing about
/// the same address's TCP service, nor a TCP probe about its UDP one.
fn down_members(sources: &[SourceView], protocol: SourceProtocol) -> Vec<String> {
    let protocol = match protocol {
        SourceProtocol::Tcp => Protocol::Tcp,
        SourceProtocol::Udp => Protocol::Udp,
    };
    sources
        .iter()
        .filter(|s| s.protocol == protocol && s.state == SourceState::Down)
        .map(|s| s.target.clone())
        .collect()
}

impl Balancer {
    /// What `allow` admits of `target` for `client`, its members ordered for this
    /// stream or flow: round robin, members the health checks of `protocol` report
    /// down last.
    pub(crate) fn resolve_for(
        &self,
        client: Option<Caller<'_>>,
        target: &str,
        protocol: SourceProtocol,
    ) -> Result<Vec<SocketAddr>, Refusal> {
        let members: Vec<&str> = source_members(target).collect();
        match members.as_slice() {
            [] => Err(Refusal::new(
                RefusalCode::Protocol,
                format!("source {target:?} names no HOST:PORT"),
            )),
            [one] => self.member(client, one),
            many if many.len() > MAX_MEMBERS => Err(Refusal::new(
                RefusalCode::Protocol,
                format!(
                    "source names {} members; a source may name at most {MAX_MEMBERS}",
                    many.len()
                ),
            )),
            _ => {
                let down = self.down(protocol);
                let mut resolved = Vec::with_capacity(members.len());
                for m in &members {
                    let is_down = down.iter().any(|d| d == m);
                    resolved.push((is_down, self.member(client, m)?));
                }
                let start = self.next.fetch_add(1, Relaxed);
                Ok(order(resolved, start))
            }
        }
    }

    /// The addresses of `target`'s members the health checks of `protocol` report
    /// down, when it names several; a member named by host name counts with the
    /// addresses its last lookup gave (none if it has not been looked up).
    pub(crate) fn down_addrs(&self, target: &str, protocol: SourceProtocol) -> Vec<SocketAddr> {
        if source_members(target).nth(1).is_none() {
            return Vec::new();
        }
        let down = self.down(protocol);
        source_members(target)
            .filter(|m| down.iter().any(|d| d == m))
            .flat_map(|m| match m.parse::<SocketAddr>() {
                Ok(a) => vec![a],
                Err(_) => m
                    .rsplit_once(':')
                    .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
                    .and_then(|(host, port)| {
                        let host = host.trim_start_matches('[').trim_end_matches(']');
                        self.resolver.as_ref()?.cached(host, port).ok()
                    })
                    .unwrap_or_default(),
            })
            .collect()
    }

    /// Whether a TCP stream to `target` may try to connect now (see
    /// `SourcePolicy::gate`): yes, unless the health checks report every member
    /// down or the last stream that tried it found nothing answering; then one
    /// stream a second, which tries it.
    pub(crate) fn gate(&self, target: &str) -> Result<(), Refusal> {
        let why = match self.down_why(target) {
            Some(e) => format!("{target} is down ({e}, say the router's health checks)"),
            None => match self.breaker.unanswered(target) {
                Some(e) => format!("{target} is not answering ({e}, when a stream last tried it)"),
                None => return Ok(()),
            },
        };
        if self.breaker.trial(target, Instant::now()) {
            return Ok(());
        }
        Err(Refusal::new(
            RefusalCode::SourceUnreachable,
            format!(
                "source {why}; the router turns its streams away at once until it answers \
                 again"
            ),
        ))
    }

    /// Why the health checks report every member of `target` down (TCP: streams
    /// are TCP, and UDP probes say nothing about them); `None` if any is not. A
    /// member down whose latest probe passed (not yet enough in a row to be up) is
    /// still down: the first stream that connects to it marks it up.
    fn down_why(&self, target: &str) -> Option<String> {
        let monitor = self.monitor()?;
        let view = monitor.view();
        let tcp = |s: &&crate::monitor::SourceView| s.protocol == Protocol::Tcp;
        if !view
            .sources
            .iter()
            .filter(tcp)
            .any(|s| s.state == SourceState::Down)
        {
            return None;
        }
        let (mut why, mut members) = (None, 0);
        for member in source_members(target) {
            let s = view
                .sources
                .iter()
                .filter(tcp)
                .find(|s| s.target == member && s.state == SourceState::Down)?;
            why = why.or(s.last_error.clone());
            members += 1;
        }
        (members > 0).then(|| {
            why.unwrap_or_else(|| "its latest probe passed, not yet enough in a row".into())
        })
    }

    /// A TCP stream to `target` failed to connect with `error` (see
    /// `SourcePolicy::not_connected`). When nothing answered (the connect timed
    /// out, or no route leads there), its streams are turned away but for one a
    /// second until one connects; any other failure is quick to get and shows
    /// the host answers, so it ends that.
    pub(crate) fn not_connected(&self, target: &str, error: &std::io::Error) {
        use std::io::ErrorKind::{HostUnreachable, NetworkUnreachable, TimedOut};
        let unanswered = matches!(
            error.kind(),
            TimedOut | HostUnreachable | NetworkUnreachable
        );
        self.breaker.not_connected(
            target,
            unanswered.then(|| error.to_string()),
            Instant::now(),
        );
    }

    /// A TCP stream to `target` connected to `addr` (see `SourcePolicy::connected`).
    pub(crate) fn connected(&self, target: &str, addr: SocketAddr) {
        if !self.breaker.connected(target) {
            return;
        }
        let members: Vec<&str> = source_members(target).collect();
        let member = match members.as_slice() {
            [one] => Some(*one),
            many => many
                .iter()
                .find(|m| m.parse::<SocketAddr>().ok() == Some(addr))
                .copied(),
        };
        if let (Some(member), Some(monitor)) = (member, self.monitor()) {
            monitor.answered(member);
        }
    }
}

/// While a source is down, one stream a second tries it.
const TRIAL_EVERY: Duration = Duration::from_secs(1);

/// Sources in trial beyond which those not tried for a minute are forgotten.
const TRIALS_KEPT: usize = 256;

/// The most sources the breaker watches: beyond, the one it heard of longest ago
/// is forgotten (the data plane's `MAX_SOURCES`, the sources it reports in use).
const WATCHED_MAX: usize = conduit_dataplane::usage::MAX_SOURCES;

/// The sources the breaker watches: each down, or not answering, and let one
/// trial stream a second through.
#[derive(Default)]
struct Breaker {
    sources: Mutex<HashMap<String, Watched>>,
    /// Whether `sources` holds anything: read on every stream.
    any: AtomicBool,
}

/// What the breaker knows of one source.
#[derive(Default)]
struct Watched {
    /// When a stream was last let through to try it.
    trial: Option<Instant>,
    /// When a stream last found nothing answering there, and the reason.
    unanswered: Option<(Instant, String)>,
}

impl Watched {
    /// When the breaker last heard of the source.
    fn last(&self) -> Option<Instant> {
        self.trial.max(self.unanswered.as_ref().map(|(at, _)| *at))
    }
}

impl Breaker {
    fn sources(&self) -> std::sync::MutexGuard<'_, HashMap<String, Watched>> {
        self.sources.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes room, when many sources are watched, by forgetting those the breaker
    /// has not heard of for a minute, and at [`WATCHED_MAX`] the one heard of
    /// longest ago.
    fn watch<'a>(
        sources: &'a mut HashMap<String, Watched>,
        target: &str,
        now: Instant,
    ) -> &'a mut Watched {
        if sources.len() >= TRIALS_KEPT && !sources.contains_key(target) {
            sources.retain(|_, w| {
                w.last()
                    .is_some_and(|at| now.saturating_duration_since(at) < Duration::from_secs(60))
            });
            if sources.len() >= WATCHED_MAX
                && let Some(oldest) = sources
                    .iter()
                    .min_by_key(|(_, w)| w.last())
                    .map(|(k, _)| k.clone())
            {
                sources.remove(&oldest);
            }
        }
        sources.entry(target.to_owned()).or_default()
    }

    /// Whether a stream to the down source `target` may try it `now`.
    fn trial(&self, target: &str, now: Instant) -> bool {
        let mut sources = self.sources();
        if let Some(last) = sources.get(target).and_then(|w| w.trial)
            && now.saturating_duration_since(last) < TRIAL_EVERY
        {
            return false;
        }
        Self::watch(&mut sources, target, now).trial = Some(now);
        self.any.store(true, Relaxed);
        true
    }

    /// A stream to `target` failed to connect `now`: `why` nothing answered, or
    /// `None` when something did (a refusal).
    fn not_connected(&self, target: &str, why: Option<String>, now: Instant) {
        if why.is_none() && !self.any.load(Relaxed) {
            return;
        }
        let mut sources = self.sources();
        match why {
            Some(why) => {
                // That stream counts as the source's latest trial.
                let watched = Self::watch(&mut sources, target, now);
                watched.unanswered = Some((now, why));
                watched.trial = Some(now);
                self.any.store(true, Relaxed);
            }
            None => {
                if let Some(watched) = sources.get_mut(target) {
                    watched.unanswered = None;
                }
            }
        }
    }

    /// Why the last stream that tried `target` found nothing answering, unless a
    /// stream connected since.
    fn unanswered(&self, target: &str) -> Option<String> {
        if !self.any.load(Relaxed) {
            return None;
        }
        let sources = self.sources();
        sources
            .get(target)?
            .unanswered
            .as_ref()
            .map(|(_, why)| why.clone())
    }

    /// A stream to `target` connected: whether that ends a trial (or its not
    /// answering).
    fn connected(&self, target: &str) -> bool {
        if !self.any.load(Relaxed) {
            return false;
        }
        let mut sources = self.sources();
        let ended = sources.remove(target).is_some();
        if sources.is_empty() {
            self.any.store(false, Relaxed);
        }
        ended
    }
}

/// The addresses to try: members rotated to begin at `start` (modulo their number),
/// those marked down moved after the rest, each keeping its own addresses in order.
fn order(members: Vec<(bool, Vec<SocketAddr>)>, start: usize) -> Vec<SocketAddr> {
    let n = members.len().max(1);
    let mut rotated: Vec<(bool, Vec<SocketAddr>)> = members;
    rotated.rotate_left(start % n);
    // A stable sort: up (false) before down (true), the rotation kept within each.
    rotated.sort_by_key(|(down, _)| *down);
    rotated.into_iter().flat_map(|(_, a)| a).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_targets_with_a_host_name_need_a_lookup() {
        assert!(!names_a_host("10.0.0.1:80, [::1]:443"));
        assert!(names_a_host("10.0.0.1:80,db.internal:5432"));
        assert!(names_a_host("localhost:80"));
    }

    const TCP: SourceProtocol = SourceProtocol::Tcp;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_probe_speaks_only_for_its_own_protocol() {
        let view = |target: &str, protocol, state| SourceView {
            target: target.into(),
            protocol,
            state,
            since: std::time::SystemTime::UNIX_EPOCH,
            last_probe: None,
            last_latency: None,
            last_error: None,
            failures: 0,
            successes: 0,
        };
        let sources = [
            view("10.0.0.1:53", Protocol::Udp, SourceState::Down),
            view("10.0.0.1:53", Protocol::Tcp, SourceState::Up),
            view("10.0.0.2:53", Protocol::Tcp, SourceState::Down),
            view("10.0.0.3:53", Protocol::Udp, SourceState::Up),
        ];
        assert_eq!(down_members(&sources, TCP), ["10.0.0.2:53"]);
        assert_eq!(down_members(&sources, SourceProtocol::Udp), ["10.0.0.1:53"]);
    }

    #[test]
    fn members_take_turns_and_those_down_go_last() {
        let m = |down: [bool; 3]| {
            vec![
                (down[0], vec![a("10.0.0.1:80")]),
                (down[1], vec![a("10.0.0.2:80"), a("10.0.0.22:80")]),
                (down[2], vec![a("10.0.0.3:80")]),
            ]
        };
        let firsts: Vec<SocketAddr> = (0..6).map(|i| order(m([false; 3]), i)[0]).collect();
        assert_eq!(
            firsts,
            [
                a("10.0.0.1:80"),
                a("10.0.0.2:80"),
                a("10.0.0.3:80"),
                a("10.0.0.1:80"),
                a("10.0.0.2:80"),
                a("10.0.0.3:80"),
            ]
        );
        assert_eq!(
            order(m([false; 3]), 1),
            [
                a("10.0.0.2:80"),
                a("10.0.0.22:80"),
                a("10.0.0.3:80"),
                a("10.0.0.1:80")
            ]
        );
        assert_eq!(
            order(m([false, true, false]), 1),
            [
                a("10.0.0.3:80"),
                a("10.0.0.1:80"),
                a("10.0.0.2:80"),
                a("10.0.0.22:80")
            ]
        );
        // All down: still all tried, in turn.
        assert_eq!(order(m([true; 3]), 2)[0], a("10.0.0.3:80"));
    }

    #[test]
    fn a_source_that_is_down_is_tried_once_a_second() {
        let b = Breaker::default();
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        assert!(b.trial("10.0.0.1:80", t0));
        assert!(!b.trial("10.0.0.1:80", ms(10)));
        assert!(!b.trial("10.0.0.1:80", ms(999)));
        // Another source has trials of its own.
        assert!(b.trial("10.0.0.2:80", ms(10)));
        assert!(b.trial("10.0.0.1:80", ms(1000)));
        // A stream that connects ends its source's trial, once.
        assert!(b.connected("10.0.0.1:80"));
        assert!(!b.connected("10.0.0.1:80"));
        assert!(!b.connected("10.0.0.3:80"));
        assert!(b.connected("10.0.0.2:80"));
        assert!(!b.any.load(Relaxed));
    }

    #[test]
    fn a_source_a_stream_found_not_answering_is_turned_away_until_one_connects() {
        let b = Balancer::new(
            AllowList::parse(&["10.0.0.0/24:80"]).unwrap(),
            Arc::new(OnceLock::new()),
        );
        let src = "10.0.0.1:80";
        assert!(b.gate(src).is_ok());
        let timed_out = std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connection timed out after 10s",
        );
        b.not_connected(src, &timed_out);
        // Turned away, but for one stream a second, which tries it.
        let refused = b.gate(src).unwrap_err();
        assert_eq!(refused.code, RefusalCode::SourceUnreachable);
        assert_eq!(
            refused.message,
            "source 10.0.0.1:80 is not answering (connection timed out after 10s, when a \
             stream last tried it); the router turns its streams away at once until it \
             answers again"
        );
        assert!(
            b.gate("10.0.0.2:80").is_ok(),
            "other sources are not held back"
        );
        let later = Instant::now() + TRIAL_EVERY;
        assert!(b.breaker.trial(src, later));
        assert!(!b.breaker.trial(src, later));
        // A stream that connects ends it.
        b.connected(src, a(src));
        assert!(b.gate(src).is_ok() && b.gate(src).is_ok());
        assert!(!b.breaker.any.load(Relaxed));
        // So does a refusal: the host answers, and refusals are quick.
        b.not_connected(src, &timed_out);
        assert!(b.gate(src).is_err());
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        b.not_connected(src, &refused);
        assert!(b.gate(src).is_ok());
    }

    #[test]
    fn the_breaker_forgets_old_trials_when_it_holds_many() {
        let b = Breaker::default();
        let t0 = Instant::now();
        for i in 0..TRIALS_KEPT {
            assert!(b.trial(&format!("10.0.{}.{}:80", i / 256, i % 256), t0));
        }
        assert!(b.trial("10.9.9.9:80", t0 + Duration::from_secs(61)));
        assert_eq!(b.sources().len(), 1);
    }

    #[test]
    fn the_breaker_holds_at_most_watched_max_sources_however_recent() {
        let b = Breaker::default();
        let t0 = Instant::now();
        let name = |i: usize| format!("10.1.{}.{}:80", i / 256, i % 256);
        for i in 0..WATCHED_MAX + 5 {
            let at = t0 + Duration::from_millis(i as u64);
            assert!(b.trial(&name(i), at));
        }
        let sources = b.sources();
        assert_eq!(sources.len(), WATCHED_MAX);
        // The five heard of longest ago made room.
        assert!((0..5).all(|i| !sources.contains_key(&name(i))));
        assert!(sources.contains_key(&name(WATCHED_MAX + 4)));
    }

    #[test]
    fn every_member_must_be_allowed() {
        let b = Balancer::new(
            AllowList::parse(&["127.0.0.1:8000-8001"]).unwrap(),
            Arc::new(OnceLock::new()),
        );
        let first = b
            .resolve_for(None, "127.0.0.1:8000, 127.0.0.1:8001", TCP)
            .unwrap();
        let second = b
            .resolve_for(None, "127.0.0.1:8000,127.0.0.1:8001", TCP)
            .unwrap();
        assert_eq!(first, [a("127.0.0.1:8000"), a("127.0.0.1:8001")]);
        assert_eq!(second, [a("127.0.0.1:8001"), a("127.0.0.1:8000")]);
        assert_eq!(
            b.resolve_for(None, "127.0.0.1:8001", TCP).unwrap(),
            [a("127.0.0.1:8001")]
        );
        let refused = b
            .resolve_for(None, "127.0.0.1:8000,127.0.0.1:9000", TCP)
            .unwrap_err();
        assert_eq!(refused.code, RefusalCode::PolicyDenied);
        assert!(
            refused
                .message
                .starts_with("source 127.0.0.1:9000 is not allowed"),
            "{}",
            refused.message
        );
        assert_eq!(
            b.resolve_for(None, " , ", TCP).unwrap_err().code,
            RefusalCode::Protocol
        );
    }
}
