//! A tunnel's own alerts: its router link lost, back, or refused for good.
//!
//! The router reports clients it loses; nobody reports a router that is gone, so each
//! tunnel process watches its link ([`LinkStatus`]) and alerts through the same sinks,
//! flapping guard and payloads as the router (`origin` names the tunnel and its host).
//!
//! A link that is down counts as lost only after `lost_after` (a router restart that
//! takes a few seconds is not worth waking anyone); the alert then goes out once, and
//! `router_back` once when the link is up again. A refusal for good is sent at once,
//! and the tunnel, which stops, waits a little for it to be delivered. A tunnel
//! refused at its very start sends nothing: `start` and `up` already say why.

use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::info;

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
    /// Refused for good: nothing more to say.
    Refused,
}

/// The link's alert logic, over instants the caller gives (tested with a virtual
/// clock).
#[derive(Debug)]
pub(crate) struct LinkWatch {
    tunnel: String,
    lost_after: Duration,
    phase: Phase,
}

impl LinkWatch {
    pub(crate) fn new(tunnel: &str, lost_after: Duration) -> Self {
        Self {
            tunnel: tunnel.to_owned(),
            lost_after,
            phase: Phase::Starting,
        }
    }

    /// The link's status changed.
    pub(crate) fn on_status(&mut self, s: &LinkStatus, now: Instant) -> Option<(Event, String)> {
        let tunnel = &self.tunnel;
        match (s, &mut self.phase) {
            (_, Phase::Refused) | (LinkStatus::Connecting, _) => None,
            (LinkStatus::Connected { router, .. }, phase) => {
                let was = std::mem::replace(phase, Phase::Up);
                match was {
                    Phase::Down {
                        since,
                        alerted: true,
                        ..
                    } => Some((
                        Event::RouterBack,
                        format!(
                            "tunnel {tunnel:?} is connected to router {router} again, after \
                             {} without a router link",
                            rounded(now.saturating_duration_since(since))
                        ),
                    )),
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
            (LinkStatus::Refused { reason }, phase) => {
                let was_up = matches!(phase, Phase::Up | Phase::Down { ever_up: true, .. });
                *phase = Phase::Refused;
                was_up.then(|| {
                    (
                        Event::RouterRefused,
                        format!("tunnel {tunnel:?} was refused and stopped: {reason}"),
                    )
                })
            }
        }
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
    pub(crate) fn on_deadline(&mut self, now: Instant) -> Option<(Event, String)> {
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
        let what = if *ever_up {
            format!("tunnel {tunnel:?} has had no router link for {down}")
        } else {
            format!("tunnel {tunnel:?} has not reached its router in {down} since it started")
        };
        Some((
            Event::RouterLost,
            format!("{what}: {why}; its users are turned away until the link is back"),
        ))
    }
}

fn rounded(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_secs(d.as_secs().max(1)))
}

/// The running watcher.
pub(crate) struct Watcher {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Watcher {
    /// Starts watching `status` (nothing when no sink is configured).
    pub(crate) fn start(
        settings: &TunnelAlerts,
        tunnel: &str,
        routers: Vec<String>,
        status: watch::Receiver<LinkStatus>,
    ) -> Result<Option<Self>, String> {
        if !settings.is_on() {
            return Ok(None);
        }
        let alerter = Alerter::start(&settings.sinks)?;
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(
            alerter,
            FlapGuard::new(settings.sinks.flap),
            LinkWatch::new(tunnel, settings.lost_after),
            Subject::Router { routers },
            status,
            stopped,
        ));
        Ok(Some(Self { stop, task }))
    }

    /// Takes in the link's last status, then waits up to `within` for the alerts
    /// queued to be delivered.
    pub(crate) async fn finish(self, within: Duration) {
        let _ = self.stop.send(());
        let mut task = self.task;
        if tokio::time::timeout(within, &mut task).await.is_err() {
            task.abort();
            info!("stopped before every alert was delivered");
        }
    }
}

async fn run(
    alerter: Alerter,
    mut flap: FlapGuard,
    mut watch: LinkWatch,
    subject: Subject,
    mut status: watch::Receiver<LinkStatus>,
    mut stop: oneshot::Receiver<()>,
) {
    let emit = |flap: &mut FlapGuard, ev: Option<(Event, String)>| {
        let Some((event, message)) = ev else { return };
        let alert = Alert {
            event,
            subject: subject.clone(),
            message,
            at: SystemTime::now(),
        };
        if let Some(a) = flap.on_change(alert, Instant::now()) {
            alerter.send(&a);
        }
    };
    // The status it starts with counts too.
    let first = status.borrow_and_update().clone();
    emit(&mut flap, watch.on_status(&first, Instant::now()));
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        let deadline = watch.deadline();
        tokio::select! {
            changed = status.changed() => {
                if changed.is_err() {
                    break;
                }
                let s = status.borrow_and_update().clone();
                emit(&mut flap, watch.on_status(&s, Instant::now()));
            }
            () = sleep_until(deadline) => emit(&mut flap, watch.on_deadline(Instant::now())),
            _ = tick.tick() => {
                for a in flap.tick(Instant::now()) {
                    alerter.send(&a);
                }
            }
            _ = &mut stop => {
                let s = status.borrow_and_update().clone();
                emit(&mut flap, watch.on_status(&s, Instant::now()));
                break;
            }
        }
    }
    alerter.close().await;
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
        assert_eq!(w.on_deadline(t0 + secs(5)), None);
        // The reason given is the latest attempt's.
        assert_eq!(w.on_status(&retrying("timed out"), t0 + secs(6)), None);
        assert_eq!(w.deadline(), Some(t0 + secs(11)));
        assert_eq!(
            w.on_deadline(t0 + secs(11)),
            Some((
                Event::RouterLost,
                "tunnel \"web\" has had no router link for 10s: timed out; its users are \
                 turned away until the link is back"
                    .into()
            ))
        );
        assert_eq!(w.deadline(), None);
        assert_eq!(w.on_deadline(t0 + secs(20)), None);
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
            w.on_deadline(t0 + secs(3)),
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

    #[test]
    fn a_refusal_is_sent_at_once_unless_the_tunnel_never_came_up() {
        let t0 = Instant::now();
        let refused = LinkStatus::Refused {
            reason: "the router does not know this client's key".into(),
        };
        let mut fresh = LinkWatch::new("web", secs(10));
        assert_eq!(fresh.on_status(&refused, t0), None);
        let mut fresh = LinkWatch::new("web", secs(10));
        fresh.on_status(&retrying("connection refused"), t0);
        assert_eq!(fresh.on_status(&refused, t0), None);

        let mut w = LinkWatch::new("web", secs(10));
        w.on_status(&connected("r:1"), t0);
        w.on_status(&retrying("connection refused"), t0 + secs(1));
        assert_eq!(
            w.on_status(&refused, t0 + secs(2)),
            Some((
                Event::RouterRefused,
                "tunnel \"web\" was refused and stopped: the router does not know this \
                 client's key"
                    .into()
            ))
        );
        assert_eq!(w.deadline(), None);
        assert_eq!(w.on_status(&connected("r:1"), t0 + secs(3)), None);
    }
}
