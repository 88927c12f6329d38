//! Alerts: when a source goes down or comes back, or a client link is lost or back,
//! the router tells the operator through a generic JSON webhook and/or a Slack incoming
//! webhook; when a tunnel's router link is lost, back or refused, the tunnel does
//! ([`tunnel`]).
//!
//! ```text
//!  monitor ── Alert ──▶ FlapGuard ──▶ Alerter::send ──▶ per-sink queue ──▶ task: POST, retry
//!                                      (never waits)    (one per subject)   with back-off, log
//! ```
//!
//! Each sink has its own task and bounded queue, so a receiver that is down or slow
//! delays only its own later alerts (in order), never the monitor, another sink, or
//! any traffic. While alerts wait, a newer one about a subject replaces the one
//! waiting about it, and a full queue drops its oldest (`queue.rs`): a receiver
//! that catches up is told each subject's latest state. Failures are logged with the
//! URL cut to scheme and host: webhook URLs carry their token.

mod deliver;
mod flap;
mod queue;
pub mod tunnel;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime};

use conduit_proto::Secret;
use serde_json::json;
use tracing::{info, warn};

pub use flap::{FlapGuard, FlapSettings};
use queue::{Displaced, Queue};

use crate::config::Protocol;
use crate::http::{HttpClient, redact};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A source stopped accepting connections.
    SourceDown,
    /// It accepts them again.
    SourceUp,
    /// A client link ended without a goodbye.
    ClientLost,
    /// A lost client link is back.
    ClientBack,
    /// A tunnel has had no router link for a while.
    RouterLost,
    /// Its router link is up again.
    RouterBack,
    /// The tunnel stopped while a router link it had reported lost was still down:
    /// nothing watches that link any more, and no `RouterBack` will follow.
    TunnelStopped,
    /// A subject changes state too often; its alerts are paused.
    Flapping,
}

impl Event {
    /// The `event` field of the webhook payload.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::SourceDown => "source_down",
            Event::SourceUp => "source_up",
            Event::ClientLost => "client_lost",
            Event::ClientBack => "client_back",
            Event::RouterLost => "router_lost",
            Event::RouterBack => "router_back",
            Event::TunnelStopped => "tunnel_stopped",
            Event::Flapping => "flapping",
        }
    }

    /// The state it leaves the subject in.
    pub fn state_word(self) -> &'static str {
        match self {
            Event::SourceDown => "down",
            Event::SourceUp => "up",
            Event::ClientLost | Event::RouterLost => "lost",
            Event::ClientBack | Event::RouterBack => "connected",
            Event::TunnelStopped => "stopped",
            Event::Flapping => "flapping",
        }
    }

    fn severity(self) -> &'static str {
        match self {
            Event::SourceDown | Event::ClientLost | Event::RouterLost => "critical",
            Event::Flapping => "warning",
            Event::SourceUp | Event::ClientBack | Event::RouterBack | Event::TunnelStopped => {
                "resolved"
            }
        }
    }

    fn emoji(self) -> &'static str {
        match self {
            Event::SourceDown | Event::ClientLost | Event::RouterLost => ":red_circle:",
            Event::Flapping => ":warning:",
            Event::SourceUp | Event::ClientBack | Event::RouterBack => ":large_green_circle:",
            Event::TunnelStopped => ":white_circle:",
        }
    }
}

/// What it happened to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// A source, as clients name it.
    Source {
        /// `host:port`.
        target: String,
        /// TCP or UDP (each probed on its own).
        protocol: Protocol,
    },
    /// A client's tunnel link.
    Client {
        /// The client's id (see the API).
        id: String,
        /// Its name.
        name: String,
        /// The tunnel.
        tunnel: String,
    },
    /// A tunnel's link to its routers (as the tunnel reports it).
    Router {
        /// The routers it may use, `host:port` each, in order.
        routers: Vec<String>,
    },
}

/// One alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    /// What happened.
    pub event: Event,
    /// To what.
    pub subject: Subject,
    /// One sentence for people.
    pub message: String,
    /// When.
    pub at: SystemTime,
}

impl Subject {
    /// How messages name it: `source HOST:PORT` (`UDP source HOST:PORT`), `client
    /// "NAME" (tunnel "T")` (the default key name is `client`: quoted, it reads as a name).
    pub fn text(&self) -> String {
        match self {
            Subject::Source {
                target,
                protocol: Protocol::Tcp,
            } => format!("source {target}"),
            Subject::Source {
                target,
                protocol: Protocol::Udp,
            } => format!("UDP source {target}"),
            // The plain transport's clients share the all-zero key: no name to give.
            Subject::Client { name, tunnel, id } if name.is_empty() && id == PLAIN_CLIENT_ID => {
                format!("the plain-transport client of tunnel {tunnel:?}")
            }
            Subject::Client { name, tunnel, id } => {
                let who = if name.is_empty() { id } else { name };
                format!("client {who:?} (tunnel {tunnel:?})")
            }
            Subject::Router { routers } => match routers.as_slice() {
                [one] => format!("router {one}"),
                _ => format!("routers {}", routers.join(", ")),
            },
        }
    }
}

/// The client id (see `monitor::client_id`) of the all-zero key that the plain
/// transport's clients share.
const PLAIN_CLIENT_ID: &str = "0000000000000000";

impl Alert {
    /// The key flapping is tracked by.
    pub fn subject_key(&self) -> String {
        match &self.subject {
            Subject::Source { .. } | Subject::Router { .. } => self.subject.text(),
            Subject::Client { id, tunnel, .. } => format!("client {id} {tunnel}"),
        }
    }

    /// How the message names the subject.
    pub fn subject_text(&self) -> String {
        self.subject.text()
    }

    /// The same subject with another event and message.
    pub fn derive(&self, event: Event, message: String) -> Alert {
        Alert {
            event,
            subject: self.subject.clone(),
            message,
            at: self.at,
        }
    }

    /// The generic webhook's JSON body.
    pub fn webhook_json(&self, origin: &Origin) -> serde_json::Value {
        let subject = match &self.subject {
            Subject::Source { target, protocol } => {
                json!({"kind": "source", "target": target, "protocol": protocol.as_str()})
            }
            Subject::Client { id, name, tunnel } => {
                json!({"kind": "client", "id": id, "name": name, "tunnel": tunnel})
            }
            Subject::Router { routers } => json!({"kind": "router", "routers": routers}),
        };
        let mut body = json!({
            "event": self.event.as_str(),
            "state": self.event.state_word(),
            "severity": self.event.severity(),
            "subject": subject,
            "message": self.message,
            "timestamp": humantime::format_rfc3339_seconds(self.at).to_string(),
        });
        match origin {
            Origin::Router(name) => body["router"] = json!(name),
            Origin::Tunnel { name, host } => {
                body["tunnel"] = json!(name);
                body["host"] = json!(host);
            }
        }
        body
    }

    /// The Slack incoming-webhook body.
    pub fn slack_json(&self, origin: &Origin) -> serde_json::Value {
        let from = match origin {
            Origin::Router(name) => format!("conduit router {name}"),
            Origin::Tunnel { name, host } => format!("conduit tunnel {name} on {host}"),
        };
        json!({"text": format!("{} *{from}*: {}", self.event.emoji(), self.message)})
    }
}

/// Who sends the alerts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A router, by its name (`alerts.name`, default the host name).
    Router(String),
    /// A tunnel process.
    Tunnel {
        /// The tunnel's name.
        name: String,
        /// Its host (`alerts.name`, default the host name).
        host: String,
    },
}

/// Where alerts go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertSettings {
    /// A generic JSON webhook.
    pub webhook: Option<Secret>,
    /// A Slack incoming webhook.
    pub slack: Option<Secret>,
    /// Retries after a failed attempt.
    pub retries: u32,
    /// Limit on one attempt.
    pub timeout: Duration,
    /// Wait before the first retry; doubled each time.
    pub backoff: Duration,
    /// Flapping suppression.
    pub flap: FlapSettings,
    /// Who sends them.
    pub origin: Origin,
}

impl Default for AlertSettings {
    fn default() -> Self {
        Self {
            webhook: None,
            slack: None,
            retries: 3,
            timeout: Duration::from_secs(5),
            backoff: Duration::from_millis(500),
            flap: FlapSettings::default(),
            origin: Origin::Router(String::new()),
        }
    }
}

/// The two payload formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkKind {
    /// Generic JSON.
    Webhook,
    /// Slack incoming webhook.
    Slack,
}

impl SinkKind {
    /// The label metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            SinkKind::Webhook => "webhook",
            SinkKind::Slack => "slack",
        }
    }
}

/// Delivery counts of one sink.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Delivered (a 2xx answer).
    pub sent: AtomicU64,
    /// Given up after every retry.
    pub failed: AtomicU64,
    /// Replaced, before it went out, by a newer alert about the same subject.
    pub superseded: AtomicU64,
    /// Dropped: the oldest of a full queue, or raised once alerts were closed.
    pub dropped: AtomicU64,
}

struct Sink {
    kind: SinkKind,
    queue: Arc<Queue>,
    stats: Arc<SinkStats>,
}

/// The sending side of the alert sinks.
pub struct Alerter {
    sinks: Vec<Sink>,
    /// Alerts held back as flapping.
    pub suppressed: AtomicU64,
}

/// Alerts queued per sink at most.
const QUEUE: usize = 256;

impl Alerter {
    /// Starts one delivery task per configured sink (none: alerts are only logged).
    pub fn start(s: &AlertSettings) -> Result<Self, String> {
        let mut sinks = Vec::new();
        let configured = [(SinkKind::Webhook, &s.webhook), (SinkKind::Slack, &s.slack)];
        if configured.iter().any(|(_, u)| u.is_some()) {
            let client = HttpClient::new(s.timeout)?;
            for (kind, url) in configured {
                let Some(url) = url.clone() else { continue };
                let queue = Arc::new(Queue::new(QUEUE));
                let stats = Arc::new(SinkStats::default());
                tokio::spawn(deliver::run(
                    deliver::Target {
                        kind,
                        url,
                        origin: s.origin.clone(),
                        retries: s.retries,
                        timeout: s.timeout,
                        backoff: s.backoff,
                    },
                    client.clone(),
                    queue.clone(),
                    stats.clone(),
                ));
                sinks.push(Sink { kind, queue, stats });
            }
        }
        Ok(Self {
            sinks,
            suppressed: AtomicU64::new(0),
        })
    }

    /// Queues `alert` for every sink; never waits. An alert waiting about the same
    /// subject is replaced; a full queue drops its oldest.
    pub fn send(&self, alert: &Alert) {
        for sink in &self.sinks {
            let kind = sink.kind.as_str();
            match sink.queue.push(alert.clone()) {
                Displaced::Nothing => {}
                Displaced::Superseded(old) => {
                    sink.stats.superseded.fetch_add(1, Relaxed);
                    info!(
                        sink = kind,
                        "alert replaced before it went out by a newer one about the same \
                         subject (the {kind} receiver is slow or down): {}",
                        old.message
                    );
                }
                Displaced::Dropped(old) => {
                    sink.stats.dropped.fetch_add(1, Relaxed);
                    warn!(
                        sink = kind,
                        "alert dropped: the {kind} queue is full (its receiver is down or \
                         slow), and the oldest alert made room for the newest: {}",
                        old.message
                    );
                }
                Displaced::Closed(a) => {
                    sink.stats.dropped.fetch_add(1, Relaxed);
                    info!(sink = kind, "alert not sent: stopping: {}", a.message);
                }
            }
        }
    }

    /// Each configured sink's counts.
    pub fn stats(&self) -> Vec<(SinkKind, &SinkStats)> {
        self.sinks.iter().map(|s| (s.kind, &*s.stats)).collect()
    }

    /// Whether any sink is configured.
    pub fn is_active(&self) -> bool {
        !self.sinks.is_empty()
    }

    /// Takes no more alerts, and gives those queued up to `within` to be delivered
    /// or given up; returns how many were not (queued, or still being sent), each
    /// sink's counted.
    pub async fn close(&self, within: Duration) -> usize {
        for s in &self.sinks {
            s.queue.close();
        }
        let idle = async {
            for s in &self.sinks {
                s.queue.idle().await;
            }
        };
        let _ = tokio::time::timeout(within, idle).await;
        self.sinks.iter().map(|s| s.queue.left()).sum()
    }
}

impl Drop for Alerter {
    /// The sinks' tasks deliver what is queued, then end.
    fn drop(&mut self) {
        for s in &self.sinks {
            s.queue.close();
        }
    }
}

/// A URL as it may appear in logs and `Debug` output.
pub(crate) fn shown(url: &Secret) -> String {
    redact(url.expose())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to_hook(addr: std::net::SocketAddr) -> AlertSettings {
        AlertSettings {
            webhook: Some(Secret::new(format!("http://{addr}/hook"))),
            retries: 0,
            timeout: Duration::from_secs(600),
            ..AlertSettings::default()
        }
    }

    fn down(target: &str) -> Alert {
        Alert {
            event: Event::SourceDown,
            subject: Subject::Source {
                target: target.into(),
                protocol: Protocol::Tcp,
            },
            message: format!("source {target} is down"),
            at: SystemTime::UNIX_EPOCH,
        }
    }

    /// Stopping, what a receiver did not take is counted, not lost silently: the
    /// alert it holds unanswered and those queued behind it. Alerts raised after
    /// are not queued, and counted as dropped.
    #[tokio::test]
    async fn closing_counts_the_alerts_a_receiver_did_not_take() {
        // Connections complete in its backlog; nothing ever answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let alerter = Alerter::start(&to_hook(silent.local_addr().unwrap())).unwrap();
        for t in ["a:1", "b:1", "c:1"] {
            alerter.send(&down(t));
        }
        assert_eq!(alerter.close(Duration::from_millis(100)).await, 3);
        alerter.send(&down("d:1"));
        let stats = alerter.stats();
        let counts = |s: &SinkStats| {
            [&s.sent, &s.failed, &s.superseded, &s.dropped].map(|n| n.load(Relaxed))
        };
        assert_eq!(counts(stats[0].1), [0, 0, 0, 1]);
    }

    /// A receiver that answers is given the time to take every alert queued.
    #[tokio::test]
    async fn closing_waits_for_the_alerts_a_receiver_takes() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Answers each request (its head, then the body it announces) with a 204.
        let receiver = tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                let complete = |got: &[u8]| {
                    let text = String::from_utf8_lossy(got).to_ascii_lowercase();
                    let (head, body) = text.split_once("\r\n\r\n")?;
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))?
                        .trim()
                        .parse()
                        .ok()?;
                    (body.len() >= len).then_some(())
                };
                while complete(&got).is_none() {
                    let n = s.read(&mut buf).await.unwrap();
                    assert!(n > 0, "the request ended early");
                    got.extend_from_slice(&buf[..n]);
                }
                s.write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
                    .await
                    .unwrap();
            }
        });
        let alerter = Alerter::start(&to_hook(addr)).unwrap();
        for t in ["a:1", "b:1", "c:1"] {
            alerter.send(&down(t));
        }
        // The bound is a deadline for a broken close, not a measure.
        assert_eq!(alerter.close(Duration::from_secs(60)).await, 0);
        assert_eq!(alerter.stats()[0].1.sent.load(Relaxed), 3);
        receiver.abort();
    }

    #[test]
    fn payloads_have_the_documented_fields() {
        let a = Alert {
            event: Event::ClientLost,
            subject: Subject::Client {
                id: "0a0b".into(),
                name: "laptop".into(),
                tunnel: "web".into(),
            },
            message: r#"client "laptop" (tunnel "web") lost: no heartbeat for 20s"#.into(),
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        };
        let gw1 = Origin::Router("gw1".into());
        assert_eq!(
            a.webhook_json(&gw1),
            json!({
                "event": "client_lost",
                "state": "lost",
                "severity": "critical",
                "subject": {"kind": "client", "id": "0a0b", "name": "laptop", "tunnel": "web"},
                "message": r#"client "laptop" (tunnel "web") lost: no heartbeat for 20s"#,
                "router": "gw1",
                "timestamp": "2023-11-14T22:13:20Z",
            })
        );
        assert_eq!(
            a.slack_json(&gw1),
            json!({"text": r#":red_circle: *conduit router gw1*: client "laptop" (tunnel "web") lost: no heartbeat for 20s"#})
        );
        assert_eq!(a.subject_text(), r#"client "laptop" (tunnel "web")"#);
    }

    #[test]
    fn a_client_is_named_by_its_name_else_its_id_and_a_plain_one_as_such() {
        let text = |id: &str, name: &str| {
            Subject::Client {
                id: id.into(),
                name: name.into(),
                tunnel: "pe".into(),
            }
            .text()
        };
        assert_eq!(
            text("0a0b0c0d0e0f0102", ""),
            r#"client "0a0b0c0d0e0f0102" (tunnel "pe")"#
        );
        assert_eq!(
            text("0a0b0c0d0e0f0102", "laptop"),
            r#"client "laptop" (tunnel "pe")"#
        );
        assert_eq!(
            text(PLAIN_CLIENT_ID, ""),
            r#"the plain-transport client of tunnel "pe""#
        );
        assert_eq!(
            PLAIN_CLIENT_ID,
            crate::monitor::client_id(&conduit_dataplane::usage::NO_KEY)
        );
    }
}
