//! One sink's delivery task: alerts in order (as [`super::queue`] keeps them), each POSTed with retries and exponential
//! back-off; a final failure is logged and counted, and the next alert goes on.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use conduit_proto::Secret;
use hyper::Method;
use tracing::{debug, info, warn};

use super::queue::Queue;
use super::{Origin, SinkKind, SinkStats, shown};
use crate::http::HttpClient;

pub(super) struct Target {
    pub(super) kind: SinkKind,
    pub(super) url: Secret,
    pub(super) origin: Origin,
    pub(super) retries: u32,
    pub(super) timeout: Duration,
    pub(super) backoff: Duration,
}

pub(super) async fn run(t: Target, client: HttpClient, queue: Arc<Queue>, stats: Arc<SinkStats>) {
    while let Some(alert) = queue.next().await {
        let body = match t.kind {
            SinkKind::Webhook => alert.webhook_json(&t.origin),
            SinkKind::Slack => alert.slack_json(&t.origin),
        };
        let body = body.to_string().into_bytes();
        match post(&t, &client, body).await {
            Ok(attempts) => {
                stats.sent.fetch_add(1, Relaxed);
                info!(
                    sink = t.kind.as_str(),
                    url = %shown(&t.url),
                    attempts,
                    "alert sent: {}",
                    alert.message
                );
            }
            Err(e) => {
                stats.failed.fetch_add(1, Relaxed);
                warn!(
                    sink = t.kind.as_str(),
                    url = %shown(&t.url),
                    "alert not delivered after {} attempts: {e}; alert was: {}",
                    t.retries + 1,
                    alert.message
                );
            }
        }
        queue.done();
    }
}

/// POSTs until a 2xx answer; returns how many attempts it took.
async fn post(t: &Target, client: &HttpClient, body: Vec<u8>) -> Result<u32, String> {
    let mut wait = t.backoff;
    let mut attempt = 0;
    loop {
        attempt += 1;
        // The status is the receiver's answer: its body is not read.
        let res = client
            .status_of(
                Method::POST,
                t.url.expose(),
                &[("user-agent", concat!("conduit/", env!("CARGO_PKG_VERSION")))],
                Some((body.clone(), "application/json")),
                t.timeout,
            )
            .await;
        let err = match res {
            Ok(status) if status.is_success() => return Ok(attempt),
            Ok(status) => format!("the receiver answered {status}"),
            Err(e) => e,
        };
        if attempt > t.retries {
            return Err(err);
        }
        debug!(
            sink = t.kind.as_str(),
            attempt, "alert attempt failed: {err}; retrying in {wait:?}"
        );
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(30));
    }
}
