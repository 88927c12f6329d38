//! `/stats/traffic` (bytes and streams, in total and per client) and
//! `/stats/connections` (stream counts, errors by kind, durations, and the streams
//! open now).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use conduit_proto::PublicKey;
use serde_json::{Map, Value, json};

use super::ApiState;
use super::clients::{ClientRow, rows};
use super::envelope::{ApiError, Data};
use super::pages::Page;
use crate::monitor::client_id;

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
                        names.get(k).cloned().unwrap_or_default(),
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
