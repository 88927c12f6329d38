//! A tunnel process's metrics, every series labelled with the tunnel's name.

use conduit_dataplane::Totals;

use crate::control::pb::RouterLoad;

use super::{Counters, Exposition, Kind, RECEIVE_BUFFER_DROPS_HELP};

/// Renders a tunnel's metrics: its data plane's `totals`, whether its router link is
/// `link_up`, its control plane's `counters`, and each of its `routers`.
pub fn render(
    tunnel: &str,
    totals: &Totals,
    link_up: bool,
    counters: &Counters,
    routers: &[RouterLoad],
) -> String {
    let l = [("tunnel", tunnel)];
    let mut e = Exposition::default();
    e.family(
        "conduit_connections_total",
        Kind::Counter,
        "User connections accepted.",
    )
    .sample("conduit_connections_total", &l, totals.opened);
    e.family(
        "conduit_active_connections",
        Kind::Gauge,
        "User connections open now.",
    )
    .sample("conduit_active_connections", &l, totals.active);
    e.family(
        "conduit_bytes_transferred_total",
        Kind::Counter,
        "Payload bytes; direction in: from users toward the source, out: back to users.",
    )
    .sample(
        "conduit_bytes_transferred_total",
        &[("tunnel", tunnel), ("direction", "in")],
        totals.bytes_up,
    )
    .sample(
        "conduit_bytes_transferred_total",
        &[("tunnel", tunnel), ("direction", "out")],
        totals.bytes_down,
    );
    e.family(
        "conduit_errors_total",
        Kind::Counter,
        "User connections that ended in an error, and failed channel set-ups, by kind.",
    );
    for (kind, n) in &totals.errors {
        e.sample(
            "conduit_errors_total",
            &[("tunnel", tunnel), ("kind", kind.as_str())],
            *n,
        );
    }
    for (kind, n) in counters.errors() {
        e.sample(
            "conduit_errors_total",
            &[("tunnel", tunnel), ("kind", kind)],
            n,
        );
    }
    e.family(
        "conduit_connection_duration_seconds",
        Kind::Histogram,
        "How long user connections lasted.",
    );
    e.histogram("conduit_connection_duration_seconds", &l, &totals.durations);
    e.family(
        "conduit_handshake_duration_seconds",
        Kind::Histogram,
        "TLS handshake plus Hello/Welcome of channels to the router.",
    );
    e.histogram(
        "conduit_handshake_duration_seconds",
        &l,
        &counters.handshakes.snapshot(),
    );
    e.family(
        "conduit_idle_channels",
        Kind::Gauge,
        "Handshaken data channels waiting in the pools.",
    )
    .sample("conduit_idle_channels", &l, totals.idle_channels);
    e.family(
        "conduit_udp_datagrams_dropped_total",
        Kind::Counter,
        "Datagrams a UDP tunnel dropped (a flow's queue was full, no flow could open, one was too big for its receiver or behind its PROXY header, or one would wait too long for its turn under a bandwidth limit).",
    )
    .sample(
        "conduit_udp_datagrams_dropped_total",
        &l,
        totals.datagrams_dropped,
    );
    if let Some(drops) = totals.udp_receive_drops {
        e.family(
            "conduit_udp_receive_buffer_drops_total",
            Kind::Counter,
            RECEIVE_BUFFER_DROPS_HELP,
        )
        .sample("conduit_udp_receive_buffer_drops_total", &l, drops);
    }
    e.family(
        "conduit_udp_source_refusals_total",
        Kind::Counter,
        "The router's reports that a UDP source refused a flow's datagrams (nothing listens on its port; protocol 8), at most one a second for each flow.",
    )
    .sample(
        "conduit_udp_source_refusals_total",
        &l,
        totals.udp_source_refusals,
    );
    e.family(
        "conduit_kernel_tls_streams_total",
        Kind::Counter,
        "Streams whose TLS records the kernel sealed and opened (kTLS on both ends).",
    )
    .sample("conduit_kernel_tls_streams_total", &l, totals.kernel_tls);
    e.family(
        "conduit_router_link_up",
        Kind::Gauge,
        "1 when the control channel to the router is up.",
    )
    .sample("conduit_router_link_up", &l, u64::from(link_up));
    let each = |e: &mut Exposition, name: &str, help: &str, v: fn(&RouterLoad) -> u64| {
        e.family(name, Kind::Gauge, help);
        for r in routers {
            e.sample(name, &[("tunnel", tunnel), ("router", &r.addr)], v(r));
        }
    };
    each(
        &mut e,
        "conduit_router_up",
        "1 when the link to this router is up (every router the tunnel names).",
        |r| u64::from(r.up),
    );
    each(
        &mut e,
        "conduit_router_standby",
        "1 when this router is not in use but answered a check since the tunnel left it \
         (failing over: it can take over).",
        |r| u64::from(r.link == "standby"),
    );
    each(
        &mut e,
        "conduit_router_streams",
        "User connections and UDP flows riding this router's channels now.",
        |r| r.streams,
    );
    each(
        &mut e,
        "conduit_router_channels",
        "Data channels to this router now: being made, idle or carrying a stream.",
        |r| r.channels,
    );
    e.finish()
}

#[cfg(test)]
mod tests {
    use conduit_dataplane::stats::CONNECTION_SECONDS;
    use conduit_dataplane::{ErrorKind, HistogramSnapshot};

    use super::*;

    fn totals(udp_receive_drops: Option<u64>) -> Totals {
        Totals {
            active: 0,
            opened: 0,
            failed: 0,
            bytes_up: 0,
            bytes_down: 0,
            idle_channels: 0,
            datagrams_dropped: 4,
            udp_receive_drops,
            udp_source_refusals: 0,
            kernel_tls: 0,
            errors: ErrorKind::ALL.iter().map(|k| (*k, 0)).collect(),
            durations: HistogramSnapshot::empty(CONNECTION_SECONDS),
        }
    }

    #[test]
    fn kernel_receive_buffer_drops_are_a_counter_beside_the_tunnels_own() {
        let text = render("dns", &totals(Some(17)), true, &Counters::default(), &[]);
        let lines: Vec<&str> = text.lines().collect();
        let at = lines
            .iter()
            .position(|l| *l == "# TYPE conduit_udp_receive_buffer_drops_total counter")
            .expect("the family is declared");
        assert_eq!(
            lines[at - 1],
            format!("# HELP conduit_udp_receive_buffer_drops_total {RECEIVE_BUFFER_DROPS_HELP}")
        );
        assert_eq!(
            lines[at + 1],
            "conduit_udp_receive_buffer_drops_total{tunnel=\"dns\"} 17"
        );
        assert!(lines.contains(&"conduit_udp_datagrams_dropped_total{tunnel=\"dns\"} 4"));
    }

    #[test]
    fn a_system_that_does_not_count_them_shows_no_receive_buffer_drops() {
        let text = render("dns", &totals(None), true, &Counters::default(), &[]);
        assert!(!text.contains("conduit_udp_receive_buffer_drops_total"));
        assert!(text.contains("conduit_udp_datagrams_dropped_total{tunnel=\"dns\"} 4"));
    }
}
