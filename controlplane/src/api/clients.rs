//! `/clients` and `/clients/{id}`: every authorized client key with its name, its
//! tunnels' link states, and its traffic through this router.
//!
//! A client's id is the first 8 bytes of its key in hex (16 characters): stable,
//! URL-safe, and short enough to type; upper-case hex is read too. A key removed from authorized_clients still
//! shows while it has traffic on record.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, State};
use conduit_dataplane::ClientTotals;
use conduit_proto::PublicKey;
use serde_json::{Value, json};

use super::ApiState;
use super::envelope::{ApiError, Data};
use super::pages::Page;
use super::system::rfc3339;
use crate::monitor::{LinkState, LinkView, client_id};

/// One client as the API shows it.
pub(crate) struct ClientRow {
    pub(crate) id: String,
    pub(crate) key: PublicKey,
    pub(crate) name: String,
    pub(crate) authorized: bool,
    pub(crate) links: Vec<LinkView>,
    pub(crate) totals: ClientTotals,
}

impl ClientRow {
    fn state(&self) -> &'static str {
        let has = |s| self.links.iter().any(|l| l.state == s);
        if has(LinkState::Connected) {
            "connected"
        } else if has(LinkState::Lost) {
            "lost"
        } else if has(LinkState::Disconnected) {
            "disconnected"
        } else if !self.authorized {
            // Removed (or expired) with traffic on record: its links are forgotten.
            "revoked"
        } else if self.totals.opened > 0 {
            // Its links were forgotten (`health.lost_link_expiry_secs`), its traffic
            // is on record: it did connect.
            "disconnected"
        } else {
            "never_connected"
        }
    }

    pub(crate) fn traffic_json(&self) -> Value {
        json!({
            "bytes": {"in": self.totals.bytes_up, "out": self.totals.bytes_down},
            "connections": {
                "active": self.totals.active,
                "total": self.totals.opened,
                "failed": self.totals.failed,
            },
        })
    }

    fn json(&self) -> Value {
        let tunnels: Vec<Value> = self
            .links
            .iter()
            .map(|l| {
                json!({
                    "name": l.tunnel,
                    "state": l.state.as_str(),
                    "since": rfc3339(l.since),
                    "peer": l.peer.map(|p| p.to_string()),
                    "peers": l.peers.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "cipher_suite": l.cipher,
                    "last_heartbeat": l.last_heartbeat.map(rfc3339),
                    "reason": l.reason,
                })
            })
            .collect();
        let mut v = json!({
            "id": self.id,
            "name": self.name,
            "public_key": self.key.to_string(),
            "authorized": self.authorized,
            "state": self.state(),
            "tunnels": tunnels,
        });
        if let (Value::Object(o), Value::Object(t)) = (&mut v, self.traffic_json()) {
            o.extend(t);
        }
        v
    }
}

/// Every client, by name then id.
pub(crate) async fn rows(s: &ApiState) -> Vec<ClientRow> {
    let usage = s.dp.usage().await;
    let view = s.monitor.view();
    let mut by_key: BTreeMap<PublicKey, ClientRow> = BTreeMap::new();
    let row = |key: PublicKey, name: String, authorized: bool| ClientRow {
        id: client_id(&key),
        key,
        name,
        authorized,
        links: Vec::new(),
        totals: ClientTotals::default(),
    };
    for (key, name) in s.authorized.entries() {
        by_key.insert(key, row(key, name, true));
    }
    let mut links: HashMap<PublicKey, Vec<LinkView>> = HashMap::new();
    for l in &view.links {
        links.entry(l.key).or_default().push(l.clone());
    }
    // A key no longer admitted keeps the name its line gave it.
    let name = |key: &PublicKey| s.authorized.name_of(key).unwrap_or_default();
    for (key, t) in &usage.clients {
        by_key
            .entry(*key)
            .or_insert_with(|| row(*key, name(key), false))
            .totals = *t;
    }
    for (key, ls) in links {
        let r = by_key
            .entry(key)
            .or_insert_with(|| row(key, ls[0].name.clone(), false));
        r.links = ls;
    }
    let mut v: Vec<ClientRow> = by_key.into_values().collect();
    v.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    v
}

pub(crate) async fn list(
    State(s): State<Arc<ApiState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Data, ApiError> {
    let page = Page::parse(&q)?;
    let all: Vec<Value> = rows(&s).await.iter().map(ClientRow::json).collect();
    let (items, pagination) = page.slice(&all);
    Ok(Data(json!({"items": items, "pagination": pagination})))
}

pub(crate) async fn one(
    State(s): State<Arc<ApiState>>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Data, ApiError> {
    // An id that is not even text (`%FF`) is no client's either: 404, as documented.
    let Ok(Path(id)) = id else {
        return Err(ApiError::not_found(
            "no client with that id (it is not text); GET /api/v1/clients lists the ids".to_owned(),
        ));
    };
    // Hex either way: ids are written in lower case but read in any.
    let wanted = id.to_ascii_lowercase();
    rows(&s)
        .await
        .iter()
        .find(|r| r.id == wanted)
        .map(|r| Data(r.json()))
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no client with id {id:?}; GET /api/v1/clients lists the ids"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key no longer admitted, its links forgotten, reads as revoked, not as one
    /// that never connected.
    #[test]
    fn a_removed_key_with_traffic_reads_as_revoked() {
        let key = conduit_proto::KeyPair::generate().unwrap().public();
        let row = |authorized| ClientRow {
            id: client_id(&key),
            key,
            name: "laptop".into(),
            authorized,
            links: Vec::new(),
            totals: ClientTotals::default(),
        };
        assert_eq!(row(false).state(), "revoked");
        assert_eq!(row(true).state(), "never_connected");
    }

    /// A key whose links were forgotten after `lost_link_expiry_secs` but whose
    /// traffic is on record connected once: it reads as disconnected.
    #[test]
    fn a_client_whose_links_were_forgotten_reads_as_disconnected() {
        let key = conduit_proto::KeyPair::generate().unwrap().public();
        let row = ClientRow {
            id: client_id(&key),
            key,
            name: "laptop".into(),
            authorized: true,
            links: Vec::new(),
            totals: ClientTotals {
                opened: 1,
                ..ClientTotals::default()
            },
        };
        assert_eq!(row.state(), "disconnected");
    }
}
