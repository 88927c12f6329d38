//! A tunnel's own alerts: its router link lost, or back.
//!
//! The router reports clients it loses; nobody reports a router that is gone, so each
//! tunnel process watches its link ([`LinkStatus`]) and alerts through the same sinks,
//! flapping guard and payloads as the router (`origin` names the tunnel and its host).
//!
//! A link that is down counts as lost only after `lost_after` (a router restart that
//! takes a few seconds is not worth waking anyone); the alert then goes out once, and
//! `router_back` once when the link is up again. A router that refuses a tunnel it
//! admitted before counts as lost the same way (the message says why): the tunnel
//! keeps trying. A tunnel refused at its very start sends nothing and stops: `start`
//! and `up` already say why.
//!
//! With several routers, each is watched on its own (`Links`): one that goes away
//! is reported lost (its subject names that router alone) even while another serves
//! the tunnel, and the message says which routers serve it meanwhile, or that none
//! does. Balancing, the tunnel keeps a link to each, so each is seen to come back;
//! failing over, a router left behind is checked again until it answers, and
//! counts as back then, standing by (or in use again, with `failback_secs`); one
//! standing by whose port stops accepting connections is lost again. A spare the
//! tunnel has not used is checked too: down, it is reported lost like the others,
//! and when it answers, back on standby.

use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::warn;

use super::{Alert, AlertSettings, Alerter, Event, FlapGuard, Subject};
use crate::client::LinkStatus;

/// A tunnel's alert settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelAlerts {
    /// Sinks, retries, flapping and origin.
    pub sinks: AlertSettings,
    /// How long the router link may be down before `router_lost` is sent.
    pub lost_after: Duration,
}

impl TunnelAlerts {
    /// Whether any sink is configured (otherwise nothing is watched).
    pub fn is_on(&self) -> bool {
        self.sinks.webhook.is_some() || self.sinks.slack.is_some()
    }
}

/// Where the link stands, as far as alerts go.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Not connected yet, and no attempt failed.
    Starting,
    /// Connected.
    Up,
    /// Down since `since` (the first failed attempt); `alerted` once `router_lost`
    /// went out. `ever_up`: it was up before (or it never came up since the start).
    Down {
        since: Instant,
        why: String,
        alerted: bool,
        ever_up: bool,
    },
}

/// The link's alert logic, over instants the caller gives (tested with a virtual
/// clock).
#[derive(Debug)]
pub(crate) struct LinkWatch {
    tunnel: String,
    /// The router watched, when the tunnel has several (messages then name it).
    router: Option<String>,
    lost_after: Duration,
    phase: Phase,
}

impl LinkWatch {
    /// Watches a tunnel's one router link.
    pub(crate) fn new(tunnel: &str, lost_after: Duration) -> Self {
        Self {
            tunnel: tunnel.to_owned(),
            router: None,
            lost_after,
            phase: Phase::Starting,
        }
    }

    /// Watches the link to `router`, one of several.
    fn one_of(tunnel: &str, router: &str, lost_after: Duration) -> Self {
        Self {
            router: Some(router.to_owned()),
            ..Self::new(tunnel, lost_after)
        }
    }

    /// The link's status changed.
    pub(crate) fn on_status(&mut self, s: &LinkStatus, now: Instant) -> Option<(Event, String)> {
        let tunnel = &self.tunnel;
        match (s, &mut self.phase) {
            // Only a tunnel that no router has admitted yet is refused: it stops,
            // and `start` or `up` reports why. One admitted before waits a refusal
            // out, retrying: a lost link like any other.
            (LinkStatus::Connecting | LinkStatus::Refused { .. }, _) => None,
            (LinkStatus::Connected { router, .. }, phase) => {
                let was = std::mem::replace(phase, Phase::Up);
                match was {
                    Phase::Down {
                        since,
                        alerted: true,
                        ..
                    } => {
                        let without = match self.router {
                            None => "a router link",
                            Some(_) => "it",
                        };
                        Some((
                            Event::RouterBack,
                            format!(
                                "tunnel {tunnel:?} is connected to router {router} again, \
                                 after {} without {without}",
                                rounded(now.saturating_duration_since(since))
                            ),
                        ))
                    }
                    _ => None,
                }
            }
            (LinkStatus::Standby { serving, .. }, phase) => {
                let router = self.router.as_deref().unwrap_or_default();
                match std::mem::replace(phase, Phase::Up) {
                    Phase::Down {
                        since,
                        alerted: true,
                        ever_up,
                        ..
                    } => {
                        let down = rounded(now.saturating_duration_since(since));
                        let reaches = if ever_up {
                            format!("{router} again, after {down} without it")
                        } else {
                            format!("{router}, {down} after it first failed")
                        };
                        Some((
                            Event::RouterBack,
                            format!(
                                "tunnel {tunnel:?} reaches router {reaches}; it stands by \
                                 while router {serving} serves the tunnel's users"
                            ),
                        ))
                    }
                    _ => None,
                }
            }
            (LinkStatus::Retrying { error, .. }, Phase::Down { why, .. }) => {
                error.clone_into(why);
                None
            }
            (LinkStatus::Retrying { error, .. }, phase) => {
                let ever_up = *phase == Phase::Up;
                *phase = Phase::Down {
                    since: now,
                    why: error.clone(),
                    alerted: false,
                    ever_up,
                };
                None
            }
        }
    }

    /// The tunnel stops: a `router_lost` sent for this link is ended by a
    /// `tunnel_stopped` (nothing watches the link any more).
    fn on_stop(&self, now: Instant) -> Option<(Event, String)> {
        let Phase::Down {
            since,
            alerted: true,
            ..
        } = &self.phase
        else {
            return None;
        };
        let link = match &self.router {
            None => "router link".to_owned(),
            Some(router) => format!("link to router {router}"),
        };
        Some((
            Event::TunnelStopped,
            format!(
                "tunnel {:?} stopped while its {link} was lost (for {}): nothing watches that \
                 link any more, so no router_back will follow",
                self.tunnel,
                rounded(now.saturating_duration_since(*since))
            ),
        ))
    }

    /// When [`Self::on_deadline`] has something to send.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Down {
                since,
                alerted: false,
                ..
            } => Some(*since + self.lost_after),
            _ => None,
        }
    }

    /// Time passed: the `router_lost` alert once the link has been down long enough.
    /// `serving`: the tunnel's other routers connected now (when it has several).
    pub(crate) fn on_deadline(
        &mut self,
        now: Instant,
        serving: &[&str],
    ) -> Option<(Event, String)> {
        let due = self.deadline().is_some_and(|d| now >= d);
        let Phase::Down {
            since,
            why,
            alerted,
            ever_up,
        } = &mut self.phase
        else {
            return None;
        };
        if !due {
            return None;
        }
        *alerted = true;
        let down = rounded(now.saturating_duration_since(*since));
        let tunnel = &self.tunnel;
        let Some(router) = &self.router else {
            let what = if *ever_up {
                format!("tunnel {tunnel:?} has had no router link for {down}")
            } else {
                format!("tunnel {tunnel:?} has not reached its router in {down} since it started")
            };
            return Some((
                Event::RouterLost,
                format!("{what}: {why}; its users are turned away until the link is back"),
            ));
        };
        let what = if *ever_up {
            format!("tunnel {tunnel:?} has had no link to router {router} for {down}")
        } else {
            format!("tunnel {tunnel:?} has not reached router {router} in {down} since it started")
        };
        let meanwhile = match serving {
            [] => "no other router serves it: its users are turned away until a link is back"
                .to_owned(),
            [one] => format!("router {one} serves its users meanwhile"),
            more => format!("routers {} serve its users meanwhile", more.join(", ")),
        };
        Some((Event::RouterLost, format!("{what}: {why}; {meanwhile}")))
    }
}

/// A tunnel's router links, each watched on its own, and the tunnel's refusal for
/// good.
#[derive(Debug)]
pub(crate) struct Links {
    routers: Vec<String>,
    watches: Vec<LinkWatch>,
    /// Each router's latest link state.
    now: Vec<LinkStatus>,
}

/// An alert to send: what, about which routers, and the message.
type Said = (Event, Vec<String>, String);

impl Links {
    pub(crate) fn new(tunnel: &str, routers: Vec<String>, lost_after: Duration) -> Self {
        let watches = match routers.as_slice() {
            [_] => vec![LinkWatch::new(tunnel, lost_after)],
            _ => routers
                .iter()
                .map(|r| LinkWatch::one_of(tunnel, r, lost_after))
                .collect(),
        };
        Self {
            now: vec![LinkStatus::Connecting; routers.len()],
            routers,
            watches,
        }
    }

    /// Which alerts name router `index`: itself alone, or every router when the
    /// tunnel has one.
    fn about(&self, index: usize) -> Vec<String> {
        match self.routers.len() {
            1 => self.routers.clone(),
            _ => vec![self.routers[index].clone()],
        }
    }

    /// Each router's link state (as [`crate::client`] publishes them).
    pub(crate) fn on_links(&mut self, links: &[LinkStatus], now: Instant) -> Vec<Said> {
        let mut said = Vec::new();
        for (i, (watch, s)) in self.watches.iter_mut().zip(links).enumerate() {
            self.now[i] = s.clone();
            if let Some((event, message)) = watch.on_status(s, now) {
                said.push((event, i, message));
            }
        }
        said.into_iter()
            .map(|(e, i, m)| (e, self.about(i), m))
            .collect()
    }

    /// When [`Self::on_deadline`] has something to send.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.watches.iter().filter_map(LinkWatch::deadline).min()
    }

    /// The tunnel stops: `tunnel_stopped` for each router reported lost.
    pub(crate) fn on_stop(&self, now: Instant) -> Vec<Said> {
        (self.watches.iter().enumerate())
            .filter_map(|(i, w)| w.on_stop(now).map(|(e, m)| (e, self.about(i), m)))
            .collect()
    }

    /// Time passed: `router_lost` for each router down long enough.
    pub(crate) fn on_deadline(&mut self, now: Instant) -> Vec<Said> {
        let up: Vec<&str> = self
            .routers
            .iter()
            .zip(&self.now)
            .filter(|(_, s)| matches!(s, LinkStatus::Connected { .. }))
            .map(|(r, _)| r.as_str())
            .collect();
        let mut said = Vec::new();
        for (i, watch) in self.watches.iter_mut().enumerate() {
            let others: Vec<&str> = up
                .iter()
                .copied()
                .filter(|r| *r != self.routers[i])
                .collect();
            if let Some((event, message)) = watch.on_deadline(now, &others) {
                said.push((event, i, message));
            }
        }
        said.into_iter()
            .map(|(e, i, m)| (e, self.about(i), m))
            .collect()
    }
}

fn rounded(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_secs(d.as_secs().max(1)))
}

/// The running watcher.
pub(crate) struct Watcher {
    stop: oneshot::Sender<()>,
    /// Hands the alerter back once it has taken in the link's last status.
    task: JoinHandle<Alerter>,
}

impl Watcher {
    /// Starts watching each router's link (`links`); nothing when no sink is
    /// configured.
    pub(crate) fn start(
        settings: &TunnelAlerts,
        tunnel: &str,
        routers: Vec<String>,
        links: watch::Receiver<Vec<LinkStatus>>,
    ) -> Result<Option<Self>, String> {
        if !settings.is_on() {
            return Ok(None);
        }
        let alerter = Alerter::start(&settings.sinks)?;
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(
            alerter,
            FlapGuard::new(settings.sinks.flap),
            Links::new(tunnel, routers, settings.lost_after),
            links,
            stopped,
        ));
        Ok(Some(Self { stop, task }))
    }

    /// Takes in the link's last status, then waits up to `within` for the alerts
    /// queued to be delivered, and logs how many were not.
    pub(crate) async fn finish(self, within: Duration) {
        let _ = self.stop.send(());
        // The task ends at once when told to: nothing in it waits but its select.
        let Ok(alerter) = self.task.await else {
            return;
        };
        let left = alerter.close(within).await;
        if left > 0 {
            warn!(
                "stopped before every alert was delivered: {left} not sent after waiting \
                 {within:?} for them (their receiver is slow or down)"
            );
        }
    }
}

async fn run(
    alerter: Alerter,
    mut flap: FlapGuard,
    mut watch: Links,
    mut links: watch::Receiver<Vec<LinkStatus>>,
    mut stop: oneshot::Receiver<()>,
) -> Alerter {
    let emit = |flap: &mut FlapGuard, said: Vec<Said>| {
        for (event, routers, message) in said {
            let alert = Alert {
                event,
                subject: Subject::Router { routers },
                message,
                at: SystemTime::now(),
            };
            if let Some(a) = flap.on_change(alert, Instant::now()) {
                alerter.send(&a);
            }
        }
    };
    let take_in = |watch: &mut Links, links: &mut watch::Receiver<Vec<LinkStatus>>| {
        let each = links.borrow_and_update().clone();
        watch.on_links(&each, Instant::now())
    };
    // The states it starts with count too.
    emit(&mut flap, take_in(&mut watch, &mut links));
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        let deadline = watch.deadline();
        tokio::select! {
            changed = links.changed() => {
                if changed.is_err() {
                    break;
                }
                emit(&mut flap, take_in(&mut watch, &mut links));
            }
            () = sleep_until(deadline) => emit(&mut flap, watch.on_deadline(Instant::now())),
            _ = tick.tick() => {
                for a in flap.tick(Instant::now()) {
                    alerter.send(&a);
                }
            }
            _ = &mut stop => {
                emit(&mut flap, take_in(&mut watch, &mut links));
                // The last word on each link still lost, past the flapping guard:
                // nothing would ever send what it held back.
                for (event, routers, message) in watch.on_stop(Instant::now()) {
                    alerter.send(&Alert {
                        event,
                        subject: Subject::Router { routers },
                        message,
                        at: SystemTime::now(),
                    });
                }
                break;
            }
        }
    }
    alerter
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retrying(error: &str) -> LinkStatus {
        LinkStatus::Retrying {
            attempt: 1,
            next_at: SystemTime::UNIX_EPOCH,
            error: error.into(),
            knocking: false,
        }
    }

    fn connected(router: &str) -> LinkStatus {
        LinkStatus::Connected {
            since: SystemTime::UNIX_EPOCH,
            router: router.into(),
            cipher: "TLS_AES_128_GCM_SHA256".into(),
        }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_link_down_past_the_grace_is_lost_once_then_back_once() {
        let t0 = Instant::now();
        let mut w = LinkWatch::new("web", secs(10));
        assert_eq!(w.on_status(&connected("r:1"), t0), None);
        assert_eq!(w.deadline(), None);
        assert_eq!(
            w.on_status(&retrying("connection refused"), t0 + secs(1)),
            None
        );
        assert_eq!(w.deadline(), Some(t0 + secs(11)));
        assert_eq!(w.on_deadline(t0 + secs(5), &[]), None);
        // The reason given is the latest attempt's.
        assert_eq!(w.on_status(&retrying("timed out"), t0 + secs(6)), None);
        assert_eq!(w.deadline(), Some(t0 + secs(11)));
        assert_eq!(
            w.on_deadline(t0 + secs(11), &[]),
            Some((
                Event::RouterLost,
                "tunnel \"web\" has had no router link for 10s: timed out; its users are \
                 turned away until the link is back"
                    .into()
            ))
        );
        assert_eq!(w.deadline(), None);
        assert_eq!(w.on_deadline(t0 + secs(20), &[]), None);
        assert_eq!(w.on_status(&retrying("timed out"), t0 + secs(30)), None);
        assert_eq!(
            w.on_status(&connected("r:2"), t0 + secs(61)),
            Some((
                Event::RouterBack,
                "tunnel \"web\" is connected to router r:2 again, after 1m without a router \
                 link"
                    .into()
            ))
        );
        assert_eq!(w.on_status(&connected("r:2"), t0 + secs(62)), None);
    }

    #[test]
    fn a_short_outage_says_nothing() {
        let t0 = Instant::now();
        let mut w = LinkWatch::new("web", secs(10));
        w.on_status(&connected("r:1"), t0);
        w.on_status(&retrying("connection refused"), t0 + secs(1));
        assert_eq!(w.on_status(&connected("r:1"), t0 + secs(4)), None);
        assert_eq!(w.deadline(), None);
    }

    #[test]
    fn a_router_unreachable_from_the_start_is_reported() {
        let t0 = Instant::now();
        let mut w = LinkWatch::new("web", secs(3));
        assert_eq!(w.on_status(&LinkStatus::Connecting, t0), None);
        w.on_status(&retrying("connection refused"), t0);
        assert_eq!(
            w.on_deadline(t0 + secs(3), &[]),
            Some((
                Event::RouterLost,
                "tunnel \"web\" has not reached its router in 3s since it started: \
                 connection refused; its users are turned away until the link is back"
                    .into()
            ))
        );
        assert_eq!(
            w.on_status(&connected("r:1"), t0 + secs(4)).map(|e| e.0),
            Some(Event::RouterBack)
        );
    }

    fn routers(list: &[&str]) -> Vec<String> {
        list.iter().map(|r| (*r).to_owned()).collect()
    }

    #[test]
    fn each_of_several_routers_is_lost_and_back_on_its_own() {
        let t0 = Instant::now();
        let mut w = Links::new("web", routers(&["a:1", "b:1"]), secs(10));
        assert_eq!(
            w.on_links(&[connected("a:1"), connected("b:1")], t0),
            vec![]
        );
        // b goes away while a serves.
        assert_eq!(
            w.on_links(&[connected("a:1"), retrying("timed out")], t0 + secs(1)),
            vec![]
        );
        assert_eq!(w.deadline(), Some(t0 + secs(11)));
        assert_eq!(w.on_deadline(t0 + secs(10)), vec![]);
        assert_eq!(
            w.on_deadline(t0 + secs(11)),
            vec![(
                Event::RouterLost,
                routers(&["b:1"]),
                "tunnel \"web\" has had no link to router b:1 for 10s: timed out; router a:1 \
                 serves its users meanwhile"
                    .into()
            )]
        );
        // Then a goes too: nobody is left.
        w.on_links(
            &[retrying("connection refused"), retrying("timed out")],
            t0 + secs(12),
        );
        assert_eq!(
            w.on_deadline(t0 + secs(22)),
            vec![(
                Event::RouterLost,
                routers(&["a:1"]),
                "tunnel \"web\" has had no link to router a:1 for 10s: connection refused; no \
                 other router serves it: its users are turned away until a link is back"
                    .into()
            )]
        );
        assert_eq!(w.deadline(), None);
        assert_eq!(
            w.on_links(
                &[retrying("connection refused"), connected("b:1")],
                t0 + secs(30)
            ),
            vec![(
                Event::RouterBack,
                routers(&["b:1"]),
                "tunnel \"web\" is connected to router b:1 again, after 29s without it".into()
            )]
        );
    }

    #[test]
    fn failing_over_the_router_left_is_lost_and_the_unused_one_says_nothing() {
        let t0 = Instant::now();
        let mut w = Links::new("web", routers(&["a:1", "b:1", "c:1"]), secs(10));
        let idle = LinkStatus::Connecting;
        w.on_links(&[connected("a:1"), idle.clone(), idle.clone()], t0);
        w.on_links(
            &[retrying("reset"), idle.clone(), idle.clone()],
            t0 + secs(1),
        );
        w.on_links(
            &[retrying("reset"), connected("b:1"), idle.clone()],
            t0 + secs(1),
        );
        assert_eq!(
            w.on_deadline(t0 + secs(11)),
            vec![(
                Event::RouterLost,
                routers(&["a:1"]),
                "tunnel \"web\" has had no link to router a:1 for 10s: reset; router b:1 serves \
                 its users meanwhile"
                    .into()
            )]
        );
        // c, never used, never alerts; a is back when used again (failback), and b,
        // left for it, is not lost.
        assert_eq!(
            w.on_links(
                &[connected("a:1"), standby("a:1"), idle.clone()],
                t0 + secs(40)
            ),
            vec![(
                Event::RouterBack,
                routers(&["a:1"]),
                "tunnel \"web\" is connected to router a:1 again, after 39s without it".into()
            )]
        );
        assert_eq!(w.deadline(), None);
    }

    fn standby(serving: &str) -> LinkStatus {
        LinkStatus::Standby {
            since: SystemTime::UNIX_EPOCH,
            serving: serving.into(),
        }
    }

    #[test]
    fn a_spare_that_is_down_is_lost_and_back_on_standby_when_it_answers() {
        let t0 = Instant::now();
        let mut w = Links::new("web", routers(&["a:1", "b:1"]), secs(10));
        w.on_links(&[connected("a:1"), LinkStatus::Connecting], t0);
        // The spare's first check fails: it was never up.
        w.on_links(&[connected("a:1"), retrying("refused")], t0 + secs(1));
        let lost = w.on_deadline(t0 + secs(11));
        assert_eq!(lost.len(), 1, "{lost:?}");
        assert_eq!(
            lost[0].2,
            "tunnel \"web\" has not reached router b:1 in 10s since it started: refused; \
             router a:1 serves its users meanwhile"
        );
        assert_eq!(
            w.on_links(&[connected("a:1"), standby("a:1")], t0 + secs(21)),
            vec![(
                Event::RouterBack,
                routers(&["b:1"]),
                "tunnel \"web\" reaches router b:1, 20s after it first failed; it stands by \
                 while router a:1 serves the tunnel's users"
                    .into()
            )]
        );
        // A spare that answers its first check is no news.
        let mut w = Links::new("web", routers(&["a:1", "b:1"]), secs(10));
        w.on_links(&[connected("a:1"), LinkStatus::Connecting], t0);
        assert_eq!(
            w.on_links(&[connected("a:1"), standby("a:1")], t0 + secs(1)),
            vec![]
        );
        assert_eq!(w.deadline(), None);
    }

    #[test]
    fn a_router_left_behind_that_answers_again_is_back_on_standby() {
        let t0 = Instant::now();
        let mut w = Links::new("web", routers(&["a:1", "b:1"]), secs(10));
        w.on_links(&[connected("a:1"), LinkStatus::Connecting], t0);
        w.on_links(&[retrying("reset"), connected("b:1")], t0 + secs(1));
        assert_eq!(w.on_deadline(t0 + secs(11)).len(), 1);
        assert_eq!(
            w.on_links(&[standby("b:1"), connected("b:1")], t0 + secs(31)),
            vec![(
                Event::RouterBack,
                routers(&["a:1"]),
                "tunnel \"web\" reaches router a:1 again, after 30s without it; it stands by \
                 while router b:1 serves the tunnel's users"
                    .into()
            )]
        );
        assert_eq!(w.deadline(), None);
        // Down again later: lost again, then back in use (once b fails) without a
        // second alert for the standby it went through.
        w.on_links(&[retrying("refused"), connected("b:1")], t0 + secs(40));
        assert_eq!(w.deadline(), Some(t0 + secs(50)));
        assert_eq!(w.on_deadline(t0 + secs(50)).len(), 1);
        let back = w.on_links(&[connected("a:1"), retrying("reset")], t0 + secs(60));
        assert_eq!(back.len(), 1);
        assert!(
            back[0].2.contains("is connected to router a:1 again"),
            "{back:?}"
        );
    }

    #[test]
    fn a_router_on_standby_before_the_grace_is_over_says_nothing() {
        let t0 = Instant::now();
        let mut w = Links::new("web", routers(&["a:1", "b:1"]), secs(10));
        w.on_links(&[connected("a:1"), LinkStatus::Connecting], t0);
        w.on_links(&[retrying("reset"), connected("b:1")], t0 + secs(1));
        assert_eq!(
            w.on_links(&[standby("b:1"), connected("b:1")], t0 + secs(5)),
            vec![]
        );
        assert_eq!(w.deadline(), None);
        assert_eq!(w.on_deadline(t0 + secs(20)), vec![]);
    }

    #[test]
    fn one_router_keeps_the_tunnel_wide_wording() {
        let t0 = Instant::now();
        let mut w = Links::new("web", routers(&["a:1"]), secs(3));
        w.on_links(&[connected("a:1")], t0);
        w.on_links(&[retrying("reset")], t0 + secs(1));
        assert_eq!(
            w.on_deadline(t0 + secs(4)),
            vec![(
                Event::RouterLost,
                routers(&["a:1"]),
                "tunnel \"web\" has had no router link for 3s: reset; its users are turned \
                 away until the link is back"
                    .into()
            )]
        );
    }
}
