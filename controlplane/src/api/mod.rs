//! The router's REST API (`/api/v1`, axum): what the router is, how it and its sources
//! are doing, its clients and their traffic, and its Prometheus metrics.
//!
//! ```text
//!  request ─▶ envelope (request id, JSON envelope on every answer)
//!               └▶ require_token (Bearer, unless turned off on loopback)
//!                    └▶ handlers: system.rs (info, health, metrics, openapi)
//!                                 clients.rs (clients, clients/{id})
//!                                 stats.rs   (stats/traffic, stats/connections,
//!                                             stats/history)
//! ```
//!
//! It listens on its own address (`api.bind`, loopback by default), apart from the
//! tunnel port. The OpenAPI document `docs/api/openapi.json` describes every route; a
//! test keeps the two in step. What it does **not** do: change anything. It is read-only.

mod auth;
mod clients;
mod envelope;
mod pages;
mod stats;
mod system;

pub use auth::token_problem;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use conduit_dataplane::DataPlane;
use conduit_proto::tls::AuthorizedClients;
use conduit_proto::{PublicKey, Secret};
use tokio::net::TcpListener;

use crate::Error;
use crate::metrics::{Counters, RouterFacts};
use crate::monitor::Monitor;

/// The OpenAPI document, as served at `/api/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("../../../docs/api/openapi.json");

/// Every route (all `GET`), in axum's `{param}` syntax, which is also OpenAPI's. A test
/// compares the document's paths with this list.
pub const ROUTES: &[&str] = &[
    "/api/v1/info",
    "/api/v1/health",
    "/api/v1/metrics",
    "/api/v1/clients",
    "/api/v1/clients/{id}",
    "/api/v1/stats/traffic",
    "/api/v1/stats/connections",
    "/api/v1/stats/history",
    "/api/v1/openapi.json",
    "/metrics",
];

/// How the API is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiSettings {
    /// Where it listens.
    pub bind: SocketAddr,
    /// The bearer token; `None` only when authentication was turned off (loopback).
    pub token: Option<Secret>,
    /// How the traffic history is kept.
    pub history: crate::history::HistorySettings,
}

/// The router's keys, as `/info` shows them.
pub struct RouterKeys {
    /// The key it presents, then the one it names as next if any.
    pub presented: Vec<PublicKey>,
    /// The old keys it still presents to tunnels that ask for them after rotations,
    /// newest first.
    pub retiring: Vec<PublicKey>,
}

/// What the handlers read.
pub struct ApiState {
    /// Version, engine, workers, start time.
    pub facts: RouterFacts,
    /// Where clients connect.
    pub listen: SocketAddr,
    /// The router's keys as they are now.
    pub keys: Arc<dyn Fn() -> RouterKeys + Send + Sync>,
    /// Where the API listens.
    pub api_listen: SocketAddr,
    /// Whether a token is required.
    pub auth: bool,
    /// Counters and connections.
    pub dp: Arc<DataPlane>,
    /// Links and sources.
    pub monitor: Arc<Monitor>,
    /// Handshakes and set-up errors.
    pub counters: Arc<Counters>,
    /// The admitted client keys.
    pub authorized: Arc<AuthorizedClients>,
    /// Traffic samples over time.
    pub history: Arc<crate::history::History>,
}

/// Binds the API's listener.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Listen {
            what: "listen for the API",
            addr,
            source,
            fix: "choose another --api-bind (api.bind)",
        })
}

/// The routes, with their middleware.
pub fn router(state: Arc<ApiState>, token: Option<Secret>) -> Router {
    let gate = Arc::new(auth::Gate::new(token, state.counters.clone()));
    let v1 = Router::new()
        .route("/api/v1/info", get(system::info))
        .route("/api/v1/health", get(system::health))
        .route("/api/v1/metrics", get(system::metrics))
        .route("/api/v1/clients", get(clients::list))
        .route("/api/v1/clients/{id}", get(clients::one))
        .route("/api/v1/stats/traffic", get(stats::traffic))
        .route("/api/v1/stats/connections", get(stats::connections))
        .route("/api/v1/stats/history", get(stats::history))
        .route("/api/v1/openapi.json", get(system::openapi))
        .route("/metrics", get(system::metrics))
        .fallback(system::not_found)
        .with_state(state);
    v1.layer(axum::middleware::from_fn_with_state(
        gate,
        auth::require_token,
    ))
    .layer(axum::middleware::from_fn(envelope::envelope))
}

/// Serves until `shutdown` completes, with the bounds of [`crate::serve`] (connections
/// at once, header and connection time limits).
pub fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    crate::serve::serve(listener, app, "the API", shutdown)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The document lists exactly the routes served, and every `$ref` in it resolves.
    #[test]
    fn the_openapi_document_names_every_route() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let mut documented: Vec<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        documented.sort_unstable();
        let mut served = ROUTES.to_vec();
        served.sort_unstable();
        assert_eq!(documented, served);

        fn refs<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
            match v {
                serde_json::Value::Object(o) => {
                    if let Some(r) = o.get("$ref").and_then(|r| r.as_str()) {
                        out.push(r);
                    }
                    o.values().for_each(|x| refs(x, out));
                }
                serde_json::Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(all.len() > 20);
        for r in all {
            let mut v = &doc;
            for part in r.trim_start_matches("#/").split('/') {
                v = &v[part];
            }
            assert!(!v.is_null(), "dangling {r}");
        }
    }
}
