//! The router's metrics. Per-client series carry `client_id` (unique) and `client`
//! (the authorized_clients comment); links add `tunnel`; sources `source`. All are
//! bounded by the authorized keys, their tunnels and the sources in use.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::SystemTime;

use conduit_dataplane::{ClientTotals, Totals, Usage};
use conduit_proto::PublicKey;

use super::{Counters, Exposition, Kind, RECEIVE_BUFFER_DROPS_HELP};
use crate::alerts::Alerter;
use crate::monitor::{LinkState, SourceState, View, client_id};

/// What never changes about a running router.
#[derive(Debug, Clone)]
pub struct RouterFacts {
    /// Conduit's version.
    pub version: String,
    /// The io engine.
    pub engine: String,
    /// Data-plane workers.
    pub workers: usize,
    /// When it started.
    pub started: SystemTime,
}

/// Everything a scrape reads, gathered by the caller.
pub struct Inputs<'a> {
    /// Static facts.
    pub facts: &'a RouterFacts,
    /// The data plane's counters.
    pub totals: &'a Totals,
    /// Per-client tallies.
    pub usage: &'a Usage,
    /// Authorized keys and their names.
    pub clients: &'a [(PublicKey, String)],
    /// The names of keys no longer admitted (removed, expired), for their traffic.
    pub former: &'a dyn Fn(&PublicKey) -> Option<String>,
    /// Links and sources.
    pub view: &'a View,
    /// Handshakes and set-up errors.
    pub counters: &'a Counters,
    /// Alert deliveries.
    pub alerter: &'a Alerter,
}

/// Renders the router's metrics.
pub fn render(i: &Inputs<'_>) -> String {
    let mut e = Exposition::default();
    let f = i.facts;
    e.family(
        "conduit_info",
        Kind::Gauge,
        "Always 1; the labels say what runs.",
    )
    .sample(
        "conduit_info",
        &[
            ("version", &f.version),
            ("role", "router"),
            ("io_engine", &f.engine),
        ],
        1u64,
    );
    let started = f
        .started
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    e.family(
        "conduit_start_time_seconds",
        Kind::Gauge,
        "When the router started, in Unix seconds.",
    )
    .sample("conduit_start_time_seconds", &[], started.floor());
    e.family("conduit_workers", Kind::Gauge, "Data-plane workers.")
        .sample("conduit_workers", &[], f.workers as u64);

    // Every authorized client, plus any with traffic whose key was removed since.
    let mut per_client: BTreeMap<PublicKey, (String, ClientTotals)> = i
        .clients
        .iter()
        .map(|(k, name)| (*k, (name.clone(), ClientTotals::default())))
        .collect();
    for (k, t) in &i.usage.clients {
        per_client
            .entry(*k)
            .or_insert_with(|| ((i.former)(k).unwrap_or_default(), ClientTotals::default()))
            .1 = *t;
    }
    let ids: BTreeMap<PublicKey, String> = per_client.keys().map(|k| (*k, client_id(k))).collect();
    let family = |e: &mut Exposition, name: &str, kind, help, get: fn(&ClientTotals) -> u64| {
        e.family(name, kind, help);
        for (k, (client, t)) in &per_client {
            e.sample(name, &[("client_id", &ids[k]), ("client", client)], get(t));
        }
    };
    family(
        &mut e,
        "conduit_connections_total",
        Kind::Counter,
        "Streams clients opened through the router (including refused and failed ones).",
        |t| t.opened,
    );
    family(
        &mut e,
        "conduit_active_connections",
        Kind::Gauge,
        "Streams open now.",
        |t| t.active,
    );
    e.family(
        "conduit_bytes_transferred_total",
        Kind::Counter,
        "Payload bytes; direction in: from users toward sources, out: back to users.",
    );
    for (k, (client, t)) in &per_client {
        for (dir, n) in [("in", t.bytes_up), ("out", t.bytes_down)] {
            e.sample(
                "conduit_bytes_transferred_total",
                &[
                    ("client_id", &ids[k]),
                    ("client", client),
                    ("direction", dir),
                ],
                n,
            );
        }
    }
    e.family(
        "conduit_errors_total",
        Kind::Counter,
        "Streams that ended in an error, and failed client handshakes, by kind.",
    );
    for (kind, n) in &i.totals.errors {
        e.sample("conduit_errors_total", &[("kind", kind.as_str())], *n);
    }
    for (kind, n) in i.counters.errors() {
        e.sample("conduit_errors_total", &[("kind", kind)], n);
    }
    e.family(
        "conduit_api_requests_refused_total",
        Kind::Counter,
        "Requests to the REST API refused for a missing or wrong token.",
    );
    e.sample(
        "conduit_api_requests_refused_total",
        &[],
        i.counters.api_refused(),
    );
    e.family(
        "conduit_connection_duration_seconds",
        Kind::Histogram,
        "How long streams to sources lasted.",
    );
    e.histogram(
        "conduit_connection_duration_seconds",
        &[],
        &i.totals.durations,
    );
    e.family(
        "conduit_handshake_duration_seconds",
        Kind::Histogram,
        "TLS handshake plus Hello/Welcome of client channels.",
    );
    e.histogram(
        "conduit_handshake_duration_seconds",
        &[],
        &i.counters.handshakes.snapshot(),
    );
    e.family(
        "conduit_kernel_tls_streams_total",
        Kind::Counter,
        "Streams whose TLS records the kernel sealed and opened (kTLS on both ends).",
    )
    .sample("conduit_kernel_tls_streams_total", &[], i.totals.kernel_tls);
    e.family(
        "conduit_udp_datagrams_dropped_total",
        Kind::Counter,
        "Datagrams UDP flows dropped: too big for their source's address family or behind a PROXY header, or one that would wait too long for its turn under a bandwidth limit.",
    )
    .sample(
        "conduit_udp_datagrams_dropped_total",
        &[],
        i.totals.datagrams_dropped,
    );
    if let Some(drops) = i.totals.udp_receive_drops {
        e.family(
            "conduit_udp_receive_buffer_drops_total",
            Kind::Counter,
            RECEIVE_BUFFER_DROPS_HELP,
        )
        .sample("conduit_udp_receive_buffer_drops_total", &[], drops);
    }
    e.family(
        "conduit_client_link_up",
        Kind::Gauge,
        "1 while a client's tunnel keeps its control channel (heartbeats), 0 once lost or gone.",
    );
    for l in &i.view.links {
        let id = client_id(&l.key);
        e.sample(
            "conduit_client_link_up",
            &[
                ("client_id", &id),
                ("client", &l.name),
                ("tunnel", &l.tunnel),
            ],
            u64::from(l.state == LinkState::Connected),
        );
    }
    e.family(
        "conduit_source_up",
        Kind::Gauge,
        "1 when the source answers its probes (TCP: accepts connections; UDP: no ICMP error), 0 when they fail (sources in use).",
    );
    for s in &i.view.sources {
        if s.state != SourceState::Unknown {
            e.sample(
                "conduit_source_up",
                &[("source", &s.target), ("protocol", s.protocol.as_str())],
                u64::from(s.state == SourceState::Up),
            );
        }
    }
    e.family(
        "conduit_alerts_total",
        Kind::Counter,
        "Alerts by sink and result (sent; failed after retries; superseded by a newer one \
         about the same subject before it went out; dropped, the oldest of a full queue or \
         one raised while stopping).",
    );
    for (kind, st) in i.alerter.stats() {
        for (result, n) in [
            ("sent", &st.sent),
            ("failed", &st.failed),
            ("superseded", &st.superseded),
            ("dropped", &st.dropped),
        ] {
            e.sample(
                "conduit_alerts_total",
                &[("sink", kind.as_str()), ("result", result)],
                n.load(Relaxed),
            );
        }
    }
    e.family(
        "conduit_alerts_suppressed_total",
        Kind::Counter,
        "Alerts held back because their subject was flapping.",
    )
    .sample(
        "conduit_alerts_suppressed_total",
        &[],
        i.alerter.suppressed.load(Relaxed),
    );
    e.finish()
}
