//! `/stats/traffic` (bytes and streams, in total and per client) and
//! `/stats/connections` (stream counts, errors by kind, durations, and the streams
//! open now), and `/stats/history` (traffic samples over time).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use conduit_proto::PublicKey;
use serde_json::{Map, Value, json};

use super::ApiState;
use super::clients::{ClientRow, rows};
use super::envelope::{ApiError, Data};
use super::pages::Page;
use crate::history::Sample;
use crate::monitor::client_id;
use crate::timestamp;

pub(crate) async fn traffic(
    State(s): State<Arc<ApiState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Data, ApiError> {
    let page = Page::parse(&q)?;
    let t = s.dp.totals();
    let all: Vec<Value> = rows(&s)
        .await
        .iter()
        .map(|r: &ClientRow| {
            let mut v = json!({"id": r.id, "name": r.name});
            if let (Value::Object(o), Value::Object(t)) = (&mut v, r.traffic_json()) {
                o.extend(t);
            }
            v
        })
        .collect();
    let (items, pagination) = page.slice(&all);
    Ok(Data(json!({
        "bytes": {"in": t.bytes_up, "out": t.bytes_down},
        "connections": {"active": t.active, "total": t.opened, "failed": t.failed},
        "items": items,
        "pagination": pagination,
    })))
}

pub(crate) async fn connections(
    State(s): State<Arc<ApiState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Data, ApiError> {
    let page = Page::parse(&q)?;
    let t = s.dp.totals();
    let names: HashMap<PublicKey, String> = s.authorized.entries().into_iter().collect();
    let mut errors = Map::new();
    for (kind, n) in &t.errors {
        errors.insert(kind.as_str().to_owned(), json!(n));
    }
    for (kind, n) in s.counters.errors() {
        errors.insert(kind.to_owned(), json!(n));
    }
    let open: Vec<Value> =
        s.dp.connections()
            .await
            .into_iter()
            .map(|c| {
                let (id, name) = match &c.client {
                    Some(k) => (
                        Some(client_id(k)),
                        (names.get(k).cloned())
                            .or_else(|| s.authorized.name_of(k))
                            .unwrap_or_default(),
                    ),
                    None => (None, String::new()),
                };
                json!({
                    "id": c.id,
                    "client_id": id,
                    "client": name,
                    "peer": c.peer.map(|p| p.to_string()),
                    "target": c.target,
                    "age_secs": c.age_secs,
                    "bytes": {"in": c.bytes_up, "out": c.bytes_down},
                })
            })
            .collect();
    let (items, pagination) = page.slice(&open);
    Ok(Data(json!({
        "active": t.active,
        "total": t.opened,
        "failed": t.failed,
        "errors": errors,
        "duration_seconds": {
            "count": t.durations.count(),
            "sum": t.durations.sum_micros as f64 / 1_000_000.0,
        },
        "items": items,
        "pagination": pagination,
    })))
}

/// `/stats/history`: the traffic samples, newest first (within `window_secs`, if
/// given), and their summary.
pub(crate) async fn history(
    State(s): State<Arc<ApiState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Data, ApiError> {
    let page = Page::parse(&q)?;
    let window = match q.get("window_secs") {
        None => None,
        Some(v) => match v.parse::<u64>() {
            Ok(n) if n >= 1 => Some(std::time::Duration::from_secs(n)),
            // More seconds than a u64 holds: longer than any history, so all of it.
            Err(e) if *e.kind() == std::num::IntErrorKind::PosOverflow => {
                Some(std::time::Duration::from_secs(u64::MAX))
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "window_secs must be a whole number of seconds, at least 1, not {v:?}"
                )));
            }
        },
    };
    let samples = s.history.newest_first(window, std::time::SystemTime::now());
    let rows: Vec<Value> = samples.iter().map(sample_json).collect();
    let (items, pagination) = page.slice(&rows);
    Ok(Data(json!({
        "interval_secs": s.history.interval().as_secs(),
        "window_secs": window.map(|w| w.as_secs()),
        "summary": summary(&samples),
        "items": items,
        "pagination": pagination,
    })))
}

fn sample_json(s: &Sample) -> Value {
    let (rate_in, rate_out) = s.rates();
    json!({
        "at": timestamp::rfc3339(s.at),
        "secs": s.secs,
        "bytes": {"in": s.bytes.into, "out": s.bytes.out},
        "rate_bps": {"in": rate_in.round(), "out": rate_out.round()},
        "connections": {
            "opened": s.connections.opened,
            "failed": s.connections.failed,
            "active": s.connections.active,
        },
    })
}

/// Totals, mean and peak rates, and the most streams open at a sample's end, over
/// `samples`.
fn summary(samples: &[Sample]) -> Value {
    // A fold from 0.0: a float `sum` of nothing is -0.0, which JSON shows as such.
    let secs = samples.iter().fold(0.0, |t, s| t + s.secs);
    // Saturating: the samples may come from a history file with any counts.
    let sum = |f: fn(&Sample) -> u64| samples.iter().map(f).fold(0, u64::saturating_add);
    let (bytes_in, bytes_out) = (sum(|s| s.bytes.into), sum(|s| s.bytes.out));
    let mean = |b: u64| {
        if secs > 0.0 {
            (b as f64 * 8.0 / secs).round()
        } else {
            0.0
        }
    };
    let peak = |f: fn((f64, f64)) -> f64| {
        samples
            .iter()
            .map(|s| f(s.rates()))
            .fold(0.0, f64::max)
            .round()
    };
    let at = |s: Option<&Sample>, back: bool| {
        s.and_then(|s| if back { s.start() } else { Some(s.at) })
            .and_then(timestamp::rfc3339)
    };
    json!({
        "samples": samples.len(),
        "from": at(samples.last(), true),
        "to": at(samples.first(), false),
        "secs": (secs * 1000.0).round() / 1000.0,
        "bytes": {"in": bytes_in, "out": bytes_out},
        "rate_bps": {
            "in": {"mean": mean(bytes_in), "peak": peak(|r| r.0)},
            "out": {"mean": mean(bytes_out), "peak": peak(|r| r.1)},
        },
        "connections": {
            "opened": sum(|s| s.connections.opened),
            "failed": sum(|s| s.connections.failed),
            "peak_active": samples.iter().map(|s| s.connections.active).max().unwrap_or(0),
        },
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::history::{InOut, Streams};

    fn sample(secs: f64, bytes: u64) -> Sample {
        Sample {
            // 2027-01-15T08:00:00Z.
            at: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            secs,
            bytes: InOut {
                into: bytes,
                out: bytes,
            },
            connections: Streams {
                opened: u64::MAX,
                failed: 1,
                active: 2,
            },
        }
    }

    #[test]
    fn a_summary_of_counts_past_u64_saturates() {
        let s = summary(&[sample(60.0, u64::MAX), sample(60.0, 1)]);
        assert_eq!(s["bytes"], json!({"in": u64::MAX, "out": u64::MAX}));
        assert_eq!(s["connections"]["opened"], json!(u64::MAX));
        assert_eq!(s["connections"]["failed"], json!(2));
        assert_eq!(s["from"], json!("2027-01-15T07:59:00Z"));
        assert_eq!(s["to"], json!("2027-01-15T08:00:00Z"));
    }

    /// A sample whose interval would begin before 1970 (the history file's check
    /// keeps such lines out; this is the summary not panicking all the same).
    #[test]
    fn a_summary_of_an_impossible_interval_has_no_start() {
        for secs in [1.9e19, 2.0e9] {
            let s = summary(&[sample(secs, 8)]);
            assert_eq!(s["from"], Value::Null, "{secs}");
            assert_eq!(s["to"], json!("2027-01-15T08:00:00Z"));
        }
    }
}
