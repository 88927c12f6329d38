//! The router's monitor: one task that owns the client links and the source health
//! table, probes sources, turns state changes into alerts, and publishes a read-only
//! [`View`] for the API and the metrics.
//!
//! ```text
//!  control_session ── LinkEvent (unbounded: a few per client per minute) ──┐
//!  data plane ◀── usage() every probe round: sources opened recently       │
//!                                                                          ▼
//!                          monitor task: Links, SourceHealth, FlapGuard ──▶ Alerter (never waits)
//!                                   │ watch<Arc<View>>
//!                                   ▼
//!                            API handlers, /metrics
//! ```
//!
//! The monitor never touches payload bytes; a probe is one TCP connect (or, for a UDP
//! source, one empty datagram) per source per interval, from the Tokio side.

mod health;
mod links;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime};

use conduit_dataplane::{DataPlane, Usage};
use conduit_proto::PublicKey;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{info, warn};

pub use health::{
    HealthSettings, ProbeError, SourceChange, SourceHealth, SourceState, SourceView, UdpProbe,
    probe, probe_admitted,
};
pub use links::{LinkChange, LinkState, LinkView, Links, Started};

use crate::alerts::{Alert, AlertSettings, Alerter, Event, FlapGuard, Subject};
use crate::config::Protocol;
use crate::policy::AllowList;

/// What the API and metrics read: every link and every probed source.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Client links, by key then tunnel.
    pub links: Vec<LinkView>,
    /// Sources, by name (then TCP before UDP).
    pub sources: Vec<SourceView>,
}

/// A change to a client's control session.
#[derive(Debug)]
enum LinkEvent {
    Up(Started),
    Beat {
        session: u64,
    },
    /// Not a link: a stream connected to a source the probes had reported down.
    Answered {
        target: String,
    },
    Down {
        session: u64,
        clean: bool,
        reason: String,
    },
    /// The key was removed from authorized_clients: its links go.
    Revoked {
        key: PublicKey,
    },
}

/// The handle the router's tasks share.
pub struct Monitor {
    events: mpsc::UnboundedSender<LinkEvent>,
    view: watch::Receiver<Arc<View>>,
    alerter: Arc<Alerter>,
    next_session: AtomicU64,
    settings: HealthSettings,
}

impl Monitor {
    /// Starts the monitor task; it stops when the last handle is dropped.
    /// `allow`: the router's allow rules, which the sources learned from streams
    /// are probed within (those listed in `health.sources` are the operator's).
    pub fn start(
        health: HealthSettings,
        alerts: &AlertSettings,
        dp: Arc<DataPlane>,
        allow: Option<AllowList>,
    ) -> Result<Arc<Self>, String> {
        let alerter = Arc::new(Alerter::start(alerts)?);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (view_tx, view_rx) = watch::channel(Arc::new(View::default()));
        let task = Task {
            settings: health.clone(),
            dp,
            alerter: alerter.clone(),
            flap: FlapGuard::new(alerts.flap),
            links: Links::default(),
            sources: HashMap::new(),
            in_flight: HashSet::new(),
            left_down: HashMap::new(),
            allow: allow.map(Arc::new),
            view: view_tx,
            said_local: None,
            beats_unpublished: false,
        };
        tokio::spawn(task.run(events_rx));
        Ok(Arc::new(Self {
            events: events_tx,
            view: view_rx,
            alerter,
            next_session: AtomicU64::new(1),
            settings: health,
        }))
    }

    /// The health settings in force.
    pub fn settings(&self) -> &HealthSettings {
        &self.settings
    }

    /// The latest view.
    pub fn view(&self) -> Arc<View> {
        self.view.borrow().clone()
    }

    /// Alert delivery counts.
    pub fn alerter(&self) -> &Alerter {
        &self.alerter
    }

    /// A stream connected to `target` while the probes reported it down: it is up.
    pub fn answered(&self, target: &str) {
        let _ = self.events.send(LinkEvent::Answered {
            target: target.to_owned(),
        });
    }

    /// A control session started, over `cipher` (a TLS cipher suite, or `plain`);
    /// returns its id for [`Self::beat`] and [`Self::link_down`].
    pub fn link_up(
        &self,
        key: PublicKey,
        name: &str,
        tunnel: &str,
        peer: Option<SocketAddr>,
        cipher: &'static str,
    ) -> u64 {
        let session = self.next_session.fetch_add(1, Relaxed);
        let _ = self.events.send(LinkEvent::Up(Started {
            session,
            key,
            name: name.to_owned(),
            tunnel: tunnel.to_owned(),
            peer,
            cipher,
        }));
        session
    }

    /// A heartbeat arrived on `session`.
    pub fn beat(&self, session: u64) {
        let _ = self.events.send(LinkEvent::Beat { session });
    }

    /// `key` was removed from authorized_clients (or expired): its links are forgotten,
    /// lost ones included, so they no longer make the router degraded.
    pub fn revoked(&self, key: PublicKey) {
        let _ = self.events.send(LinkEvent::Revoked { key });
    }

    /// `session` ended; `clean` when the client said goodbye.
    pub fn link_down(&self, session: u64, clean: bool, reason: &str) {
        let _ = self.events.send(LinkEvent::Down {
            session,
            clean,
            reason: reason.to_owned(),
        });
    }
}

/// The client id the API and alerts use: the first 8 bytes of the key, in hex.
pub fn client_id(key: &PublicKey) -> String {
    key.as_bytes()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

struct Task {
    settings: HealthSettings,
    dp: Arc<DataPlane>,
    alerter: Arc<Alerter>,
    flap: FlapGuard,
    links: Links,
    sources: HashMap<Source, SourceHealth>,
    in_flight: HashSet<Source>,
    /// Sources no longer probed (unused for `health.recent_secs`) while down, and
    /// since when: one used again starts down, not unknown, so that its next
    /// failed probe raises no second `source_down` (its receiver holds the first),
    /// nor counts as a change of state towards flapping.
    left_down: HashMap<Source, SystemTime>,
    /// The router's allow rules: a source learned from a stream is probed only at
    /// the addresses they admit.
    allow: Option<Arc<AllowList>>,
    view: watch::Sender<Arc<View>>,
    /// When a probe the router could not make was last logged.
    said_local: Option<Instant>,
    /// Heartbeats arrived since the view was last published: they are published
    /// once a second at most, not one view (a copy of every link's) per beat.
    beats_unpublished: bool,
}

/// How many sources left while down are remembered (see `Task::left_down`).
const LEFT_DOWN_KEPT: usize = 1024;

/// How often heartbeats that changed nothing else reach the view at most.
const BEATS_PUBLISHED_EVERY: Duration = Duration::from_secs(1);

/// How often "cannot probe: the router is short of files" is logged at most.
const LOCAL_REPEAT: Duration = Duration::from_secs(60);

/// A source as the monitor tracks it: the same `host:port` may be used over TCP and
/// over UDP (DNS), and each is probed on its own.
type Source = (String, Protocol);

type ProbeResult = (Source, Result<Option<Duration>, ProbeError>);

impl Task {
    async fn run(mut self, mut events: mpsc::UnboundedReceiver<LinkEvent>) {
        let mut probe_tick = tokio::time::interval(self.settings.interval);
        probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut flap_tick = tokio::time::interval(Duration::from_secs(5));
        let mut beat_tick = tokio::time::interval(BEATS_PUBLISHED_EVERY);
        beat_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut probes: JoinSet<ProbeResult> = JoinSet::new();
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => self.on_link(ev),
                    None => return,
                },
                _ = probe_tick.tick() => self.start_round(&mut probes).await,
                Some(done) = probes.join_next() => {
                    if let Ok((source, result)) = done {
                        self.on_probe(source, result);
                    }
                }
                _ = beat_tick.tick(), if self.beats_unpublished => self.publish(),
                _ = flap_tick.tick() => {
                    for a in self.flap.tick(Instant::now()) {
                        self.alerter.send(&a);
                    }
                    self.expire_links();
                }
            }
        }
    }

    fn on_link(&mut self, ev: LinkEvent) {
        let now = SystemTime::now();
        let change = match ev {
            LinkEvent::Up(started) => self.links.up(started, now),
            LinkEvent::Beat { session } => {
                self.links.beat(session, now);
                self.beats_unpublished = true;
                return;
            }
            LinkEvent::Answered { target } => {
                self.on_answered(target, now);
                None
            }
            LinkEvent::Down {
                session,
                clean,
                reason,
            } => self.links.down(session, clean, &reason, now),
            LinkEvent::Revoked { key } => {
                let n = self.links.forget(&key);
                if n > 0 {
                    info!(client = %key, "forgot {n} link(s) of a revoked client key");
                }
                None
            }
        };
        if let Some(c) = change {
            let (event, v) = match c {
                LinkChange::Lost(v) => (Event::ClientLost, v),
                LinkChange::Back(v) => (Event::ClientBack, v),
            };
            let subject = Subject::Client {
                id: client_id(&v.key),
                name: v.name.clone(),
                tunnel: v.tunnel.clone(),
            };
            let mut alert = Alert {
                event,
                subject,
                message: String::new(),
                at: now,
            };
            alert.message = match event {
                Event::ClientLost => format!(
                    "{} lost: {}",
                    alert.subject_text(),
                    v.reason.as_deref().unwrap_or("no reason")
                ),
                _ => format!("{} is connected again", alert.subject_text()),
            };
            self.raise(alert);
        }
        self.publish();
    }

    /// Forgets the links that have not been connected for `lost_link_expiry`.
    fn expire_links(&mut self) {
        let gone = self
            .links
            .expire(SystemTime::now(), self.settings.lost_link_expiry);
        for v in &gone {
            info!(
                client = %v.key,
                "forgot the {} link of {} (tunnel {}): not connected for {}s \
                 (health.lost_link_expiry_secs)",
                v.state.as_str(),
                v.name,
                v.tunnel,
                self.settings.lost_link_expiry.as_secs()
            );
        }
        if !gone.is_empty() {
            self.publish();
        }
    }

    /// Starts a probe of every source [`watched`] that is not being probed already,
    /// and forgets the others.
    async fn start_round(&mut self, probes: &mut JoinSet<ProbeResult>) {
        // A router stopping has workers that no longer answer: what they had in use
        // is unknown, not unused, so the sources stay as they are.
        let Some(usage) = self.dp.usage_of_all().await else {
            return;
        };
        let wanted = watched(usage, &self.settings);
        let gone = forget(&mut self.sources, &wanted);
        for v in gone.iter().filter(|v| v.state == SourceState::Down) {
            if self.left_down.len() >= LEFT_DOWN_KEPT {
                // The longest gone: its receiver has long had its `source_down`.
                let oldest = (self.left_down.iter())
                    .min_by_key(|(_, since)| **since)
                    .map(|(s, _)| s.clone());
                if let Some(oldest) = oldest {
                    self.left_down.remove(&oldest);
                }
            }
            self.left_down
                .insert((v.target.clone(), v.protocol), v.since);
            let subject = Subject::Source {
                target: v.target.clone(),
                protocol: v.protocol,
            };
            // No alert: the source did not come back, and a `source_up` would say
            // it did. The receiver keeps its `source_down`, the log says why.
            info!(
                "stopped probing {}, down since {}: no stream has opened it for {}s \
                 (health.recent_secs), so no source_up alert will follow; list it in \
                 health.sources to keep it watched",
                subject.text(),
                humantime::format_rfc3339_seconds(v.since),
                self.settings.recent.as_secs()
            );
        }
        let now = SystemTime::now();
        let mut added = false;
        for source in wanted {
            self.sources.entry(source.clone()).or_insert_with(|| {
                added = true;
                match self.left_down.remove(&source) {
                    Some(since) => SourceHealth::down_since(&source.0, source.1, since),
                    None => SourceHealth::new(&source.0, source.1, now),
                }
            });
            if self.in_flight.insert(source.clone()) {
                let timeout = self.settings.timeout;
                let how = self.settings.udp_probe(&source.0);
                // Listed by the operator: probed wherever it leads.
                let listed = self.settings.sources.contains(&source.0);
                let allow = self.allow.clone().filter(|_| !listed);
                probes.spawn(async move {
                    let r =
                        probe_admitted(&source.0, source.1, timeout, &how, allow.as_deref()).await;
                    (source, r)
                });
            }
        }
        if added || !gone.is_empty() {
            self.publish();
        }
    }

    fn on_probe(&mut self, source: Source, result: Result<Option<Duration>, ProbeError>) {
        self.in_flight.remove(&source);
        let result = match result {
            Ok(r) => Ok(r),
            Err(ProbeError::Source(e)) => Err(e),
            Err(ProbeError::Local(e)) => {
                // Not the source's fault: it keeps its state rather than raise a false alert.
                if self.said_local.is_none_or(|t| t.elapsed() >= LOCAL_REPEAT) {
                    self.said_local = Some(Instant::now());
                    warn!(
                        "cannot probe {} {}: {e}; the router itself is short of file \
                         descriptors or memory, not the source: raise its open-files limit \
                         (LimitNOFILE, see tuning/limits.conf) or find what holds them",
                        source.1.as_str(),
                        source.0
                    );
                }
                return;
            }
        };
        let Some(h) = self.sources.get_mut(&source) else {
            return;
        };
        let (target, protocol) = source;
        let now = SystemTime::now();
        if let Some(change) = h.record(result, &self.settings, now) {
            let (event, v) = match change {
                SourceChange::Down(v) => (Event::SourceDown, v),
                SourceChange::Up(v) => (Event::SourceUp, v),
            };
            let subject = Subject::Source { target, protocol };
            let message = match event {
                Event::SourceDown => format!(
                    "{} is down: {} ({} failed probes in a row)",
                    subject.text(),
                    v.last_error.as_deref().unwrap_or("no answer"),
                    v.failures
                ),
                _ => format!(
                    "{} is up again ({} successful probes in a row)",
                    subject.text(),
                    v.successes
                ),
            };
            self.raise(Alert {
                event,
                subject,
                message,
                at: now,
            });
        }
        self.publish();
    }

    /// A TCP stream connected to `target`.
    fn on_answered(&mut self, target: String, now: SystemTime) {
        let source = (target, Protocol::Tcp);
        let Some(h) = self.sources.get_mut(&source) else {
            return;
        };
        if h.answered(now).is_some() {
            let (target, protocol) = source;
            let subject = Subject::Source { target, protocol };
            let message = format!("{} is up again (a stream connected to it)", subject.text());
            self.raise(Alert {
                event: Event::SourceUp,
                subject,
                message,
                at: now,
            });
        }
    }

    fn raise(&mut self, alert: Alert) {
        match alert.event {
            Event::SourceDown | Event::ClientLost => warn!("{}", alert.message),
            _ => info!("{}", alert.message),
        }
        match self.flap.on_change(alert, Instant::now()) {
            Some(a) => self.alerter.send(&a),
            None => {
                self.alerter.suppressed.fetch_add(1, Relaxed);
            }
        }
    }

    fn publish(&mut self) {
        self.beats_unpublished = false;
        let mut sources: Vec<SourceView> =
            self.sources.values().map(|h| h.view().clone()).collect();
        sources.sort_by(|a, b| {
            (&a.target, a.protocol.as_str()).cmp(&(&b.target, b.protocol.as_str()))
        });
        self.view.send_replace(Arc::new(View {
            links: self.links.views(),
            sources,
        }));
    }
}

/// The sources to probe: each one a stream or flow opened within `recent` (or still
/// uses), whatever its state, plus those the operator lists (`sources`, and UDP ones
/// given a probe of their own), which are watched whether or not a client uses them.
///
/// A source found down that no stream has tried for `recent` is let go as an up one
/// is: otherwise a mistyped `--source`, or each of the many a client may name under
/// a wide allow rule, would stay probed, in the metrics, and keep the router
/// degraded for good. Streams the breaker turns away count as tries, so a source
/// down that users still want stays watched until it is back.
fn watched(usage: Usage, s: &HealthSettings) -> HashSet<Source> {
    let recent = s.recent;
    let in_use = |m: HashMap<String, Duration>, protocol: Protocol| {
        m.into_iter()
            .filter(move |(_, ago)| *ago <= recent)
            .map(move |(s, _)| (s, protocol))
    };
    let mut wanted: HashSet<Source> = in_use(usage.sources, Protocol::Tcp)
        .chain(in_use(usage.udp_sources, Protocol::Udp))
        .collect();
    wanted.extend(s.sources.iter().map(|t| (t.clone(), Protocol::Tcp)));
    wanted.extend(s.udp_probes.iter().map(|(t, _)| (t.clone(), Protocol::Udp)));
    wanted
}

/// Forgets the sources not `wanted`; returns what the API showed of each.
fn forget(
    sources: &mut HashMap<Source, SourceHealth>,
    wanted: &HashSet<Source>,
) -> Vec<SourceView> {
    let mut gone = Vec::new();
    sources.retain(|s, h| {
        let keep = wanted.contains(s);
        if !keep {
            gone.push(h.view().clone());
        }
        keep
    });
    gone
}

#[cfg(test)]
mod tests {
    use super::*;

    fn down(target: &str, protocol: Protocol) -> (Source, SourceHealth) {
        let s = HealthSettings::default();
        let now = SystemTime::now();
        let mut h = SourceHealth::new(target, protocol, now);
        for _ in 0..s.fall {
            h.record(Err("connection refused".into()), &s, now);
        }
        assert_eq!(h.view().state, SourceState::Down);
        ((target.to_owned(), protocol), h)
    }

    fn up(target: &str) -> (Source, SourceHealth) {
        let s = HealthSettings::default();
        let mut h = SourceHealth::new(target, Protocol::Tcp, SystemTime::now());
        h.record(Ok(Some(Duration::from_millis(1))), &s, SystemTime::now());
        assert_eq!(h.view().state, SourceState::Up);
        ((target.to_owned(), Protocol::Tcp), h)
    }

    /// A source down that nobody has tried for `recent` is let go like an up one
    /// (it used to be probed, shown and counted as down until it answered); one the
    /// operator listed, or one still tried, stays.
    #[test]
    fn a_source_nobody_uses_is_forgotten_down_or_up_unless_listed() {
        let settings = HealthSettings {
            recent: Duration::from_secs(3),
            sources: vec!["10.0.0.5:80".into()],
            udp_probes: vec![("10.0.0.6:53".into(), UdpProbe::Dns)],
            ..HealthSettings::default()
        };
        let mut sources: HashMap<Source, SourceHealth> = HashMap::from([
            down("127.0.0.1:21601", Protocol::Tcp),
            down("127.0.0.1:21602", Protocol::Tcp),
            down("127.0.0.1:21603", Protocol::Udp),
            up("10.0.0.1:80"),
            up("10.0.0.2:80"),
            down("10.0.0.5:80", Protocol::Tcp),
            down("10.0.0.6:53", Protocol::Udp),
        ]);
        let secs = Duration::from_secs;
        let usage = Usage {
            sources: HashMap::from([
                ("127.0.0.1:21601".to_owned(), secs(4)),
                // Tried (and turned away) a moment ago: still wanted.
                ("127.0.0.1:21602".to_owned(), secs(1)),
                ("10.0.0.1:80".to_owned(), secs(3)),
                ("10.0.0.2:80".to_owned(), secs(600)),
                ("10.0.0.5:80".to_owned(), secs(600)),
            ]),
            udp_sources: HashMap::from([("127.0.0.1:21603".to_owned(), secs(4))]),
            ..Usage::default()
        };
        let wanted = watched(usage, &settings);
        let mut gone: Vec<(String, Protocol, SourceState)> = forget(&mut sources, &wanted)
            .into_iter()
            .map(|v| (v.target, v.protocol, v.state))
            .collect();
        gone.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            gone,
            vec![
                ("10.0.0.2:80".to_owned(), Protocol::Tcp, SourceState::Up),
                (
                    "127.0.0.1:21601".to_owned(),
                    Protocol::Tcp,
                    SourceState::Down
                ),
                (
                    "127.0.0.1:21603".to_owned(),
                    Protocol::Udp,
                    SourceState::Down
                ),
            ]
        );
        let mut kept: Vec<Source> = sources.into_keys().collect();
        kept.sort_by(|a, b| a.0.cmp(&b.0));
        let tcp = |t: &str| (t.to_owned(), Protocol::Tcp);
        assert_eq!(
            kept,
            vec![
                tcp("10.0.0.1:80"),
                tcp("10.0.0.5:80"),
                ("10.0.0.6:53".to_owned(), Protocol::Udp),
                tcp("127.0.0.1:21602"),
            ]
        );
        let mut wanted: Vec<Source> = wanted.into_iter().collect();
        wanted.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(wanted, kept);
    }
}
