//! `/info`, `/health`, `/metrics`, the OpenAPI document, and the answer for unknown paths.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::ApiState;
use super::envelope::{ApiError, Data};
use crate::config::Protocol;
use crate::metrics::{self, CONTENT_TYPE, RouterInputs};
use crate::monitor::{LinkState, SourceState, client_id};

pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn uptime(s: &ApiState) -> u64 {
    SystemTime::now()
        .duration_since(s.facts.started)
        .map_or(0, |d| d.as_secs())
}

pub(crate) async fn info(State(s): State<Arc<ApiState>>) -> Data {
    let keys = (s.keys)();
    Data(json!({
        "name": "conduit",
        "version": s.facts.version,
        "role": "router",
        "listen": s.listen.to_string(),
        "public_key": keys.presented.first().map(ToString::to_string),
        "next_public_key": keys.presented.get(1).map(ToString::to_string),
        "retiring_public_key": keys.retiring.first().map(ToString::to_string),
        "retiring_public_keys": keys.retiring.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "io_engine": s.facts.engine,
        "workers": s.facts.workers,
        "pid": std::process::id(),
        "started_at": rfc3339(s.facts.started),
        "uptime_secs": uptime(&s),
        "authorized_clients": s.authorized.len(),
        "api": {"listen": s.api_listen.to_string(), "auth": s.auth},
    }))
}

pub(crate) async fn health(State(s): State<Arc<ApiState>>) -> Data {
    let view = s.monitor.view();
    let count = |st: SourceState| view.sources.iter().filter(|v| v.state == st).count();
    let (up, down, unknown) = (
        count(SourceState::Up),
        count(SourceState::Down),
        count(SourceState::Unknown),
    );
    let links = |st: LinkState| view.links.iter().filter(|l| l.state == st).count();
    let (connected, lost) = (links(LinkState::Connected), links(LinkState::Lost));
    let status = if down > 0 || lost > 0 {
        "degraded"
    } else {
        "ok"
    };
    let settings = s.monitor.settings();
    let sources: Vec<_> = view
        .sources
        .iter()
        .map(|v| {
            json!({
                "target": v.target,
                "protocol": v.protocol.as_str(),
                "probe": match v.protocol {
                    Protocol::Tcp => "connect",
                    Protocol::Udp => settings.udp_probe(&v.target).name(),
                },
                "state": v.state.as_str(),
                "since": rfc3339(v.since),
                "last_probe": v.last_probe.map(rfc3339),
                "latency_ms": v.last_latency.map(|d| d.as_secs_f64() * 1000.0),
                "last_error": v.last_error,
                "consecutive_failures": v.failures,
                "consecutive_successes": v.successes,
            })
        })
        .collect();
    let lost_links: Vec<_> = view
        .links
        .iter()
        .filter(|l| l.state == LinkState::Lost)
        .map(|l| {
            json!({
                "client_id": client_id(&l.key),
                "client": l.name,
                "tunnel": l.tunnel,
                "since": rfc3339(l.since),
                "reason": l.reason,
            })
        })
        .collect();
    Data(json!({
        "status": status,
        "uptime_secs": uptime(&s),
        "checks": {
            "dataplane": {"status": "ok", "workers": s.dp.worker_count()},
            "sources": {"up": up, "down": down, "unknown": unknown},
            "client_links": {"connected": connected, "lost": lost},
        },
        "probe": {
            "interval_secs": settings.interval.as_secs(),
            "timeout_secs": settings.timeout.as_secs(),
            "fall": settings.fall,
            "rise": settings.rise,
        },
        "sources": sources,
        "lost_links": lost_links,
    }))
}

/// The router's metrics in the Prometheus text format, or, when the client prefers
/// JSON, the same text inside the envelope.
pub(crate) async fn metrics(State(s): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    let text = render(&s).await;
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if prefers_json(accept) {
        return Data(json!({"format": "prometheus-text-0.0.4", "text": text})).into_response();
    }
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}

/// Whether an `Accept` header prefers `application/json`, named as such, to the
/// metrics text (`text/plain`, `text/*` or `*/*`), by their weights (`q`, 1 when
/// not given); a tie goes to the text, which Prometheus and most clients expect.
fn prefers_json(accept: &str) -> bool {
    let mut json = 0.0f32;
    let mut text = 0.0f32;
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        // Media types are case-insensitive (RFC 9110).
        let kind = parts.next().unwrap_or("").to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .map_or(Some(1.0), |(_, v)| v.trim().parse::<f32>().ok())
            .filter(|q| (0.0..=1.0).contains(q))
            .unwrap_or(0.0);
        match kind.as_str() {
            "application/json" => json = json.max(q),
            "text/plain" | "text/*" | "*/*" => text = text.max(q),
            _ => {}
        }
    }
    json > 0.0 && json > text
}

/// Renders the router's metrics from the data plane, the monitor and the counters.
pub(crate) async fn render(s: &ApiState) -> String {
    let usage = s.dp.usage().await;
    let totals = s.dp.totals();
    let clients = s.authorized.entries();
    let view = s.monitor.view();
    metrics::render_router(&RouterInputs {
        facts: &s.facts,
        totals: &totals,
        usage: &usage,
        clients: &clients,
        former: &|k| s.authorized.name_of(k),
        view: &view,
        counters: &s.counters,
        alerter: s.monitor.alerter(),
    })
}

pub(crate) async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], super::OPENAPI).into_response()
}

pub(crate) async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; the API lives under /api/v1 (see /api/v1/openapi.json)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_served_only_to_a_client_that_prefers_it() {
        for accept in [
            "application/json",
            "Application/JSON",
            "application/json, */*;q=0.1",
            "text/plain;q=0, application/json",
            "text/plain; q=0.5, application/json; q=0.9",
        ] {
            assert!(prefers_json(accept), "{accept}");
        }
        for accept in [
            "",
            "*/*",
            "text/plain",
            "application/json, text/plain",
            "application/json;q=0.5, text/*",
            "application/json;q=0",
            "application/json;q=nonsense",
            "application/*",
            // What Prometheus sends.
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
             version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        ] {
            assert!(!prefers_json(accept), "{accept}");
        }
    }
}
