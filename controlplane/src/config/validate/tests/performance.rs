//! `[performance]`: limits that must agree, socket buffers, `optimize_for`,
//! heartbeats; and the log file's directory.

use super::{check, none, router};
use crate::config::tests::Fixture;

#[test]
fn limits_must_agree_and_log_directories_exist() {
    let f = Fixture::new();
    let text = f.client_text(
        "[performance]\ndefault_bandwidth_limit = 1000\nburst_bandwidth_limit = 10\n\
         [logging]\nfile = \"no/such/dir/conduit.log\"\n",
    );
    // A client's file has no log file to check: its tunnels log where `up` puts them.
    assert_eq!(
        check(&f, &text),
        [
            "warning: performance.burst_bandwidth_limit: 10 bytes is less than one TLS record \
             (16384): a limited tunnel then relays in pieces that small, at more CPU per byte; \
             give 16384 or more (0: one second's worth) ($F:11)",
            "warning: logging.file: only a router's file sends its log to a file: each tunnel \
             `up` starts logs to $CONDUIT_HOME/logs/NAME.log (`conduit logs NAME`), and under \
             `up --foreground` to its stderr; remove logging.file (and rotation, keep) here \
             ($F:13)",
        ]
    );
    // No burst given: one second's worth, here less than a record.
    let text = f.client_text("[performance]\ndefault_bandwidth_limit = 1000\n");
    assert_eq!(
        check(&f, &text),
        [
            "warning: performance.default_bandwidth_limit: 1000 bytes a second, with no burst \
             given, lets the tunnel send 1000 bytes at once (one second's worth), less than \
             one TLS record (16384): it then relays in pieces that small, at more CPU per \
             byte; give a burst of 16384 or more ($F:10)",
        ]
    );
    let text = f.client_text(
        "[performance]\ndefault_bandwidth_limit = 1000\nburst_bandwidth_limit = 16384\n",
    );
    assert_eq!(check(&f, &text), Vec::<String>::new());
    let text = "[logging]\nfile = \"no/such/dir/router.log\"\n";
    assert_eq!(
        router(&f, text, &[])
            .into_iter()
            .filter(|l| l.contains("logging.file"))
            .collect::<Vec<_>>(),
        [
            "error: logging.file: directory $DIR/no/such/dir does not exist; create it or \
          choose another file ($F:2)"
        ]
    );
}

#[test]
fn socket_buffers_and_optimize_for_are_checked() {
    let f = Fixture::new();
    let text = f.client_text(
        "[performance]\nauto_tune = true\nread_buffer_size = 65536\nwrite_buffer_size = 0\n\
         optimize_for = \"throughput\"\n",
    );
    assert_eq!(check(&f, &text), none());
    let text = f.client_text(
        "[performance]\nread_buffer_size = 1000\nwrite_buffer_size = 16777217\n\
         optimize_for = \"latency\"\ntcp_nodelay = false\n",
    );
    assert_eq!(
        check(&f, &text),
        [
            "error: performance.read_buffer_size: 1000 bytes is too small a socket buffer to \
             move data; use 0 for the kernel's auto-tuning (the best choice for most links) or \
             at least 4096 ($F:10)",
            "error: performance.write_buffer_size: 16777217 is out of range; use 0-16777216 \
             ($F:11)",
            "warning: performance.tcp_nodelay: false with optimize_for = \"latency\": Nagle's \
             algorithm holds small writes back for up to one round trip; set tcp_nodelay = true \
             ($F:13)",
        ]
    );
    // The bandwidth limit works on tunnels (per tunnel) and routers (per client).
    let text = f.client_text("[performance]\ndefault_bandwidth_limit = 1000000\n");
    assert_eq!(check(&f, &text), none());
    // The handshake cap works on routers, so only a tunnel is warned.
    let text = f.client_text("[performance]\nmax_pending_handshakes = 64\n");
    assert_eq!(
        check(&f, &text),
        [
            "warning: performance.max_pending_handshakes: only a router runs handshakes for \
             others; a tunnel ignores it: remove it here ($F:10)"
        ]
    );
}

#[test]
fn heartbeats_are_a_tunnel_setting() {
    let f = Fixture::new();
    let text = f.client_text("[performance]\nheartbeat_interval_secs = 2\n");
    assert_eq!(check(&f, &text), none());
    std::fs::write(f.home.authorized_clients(), format!("{}\n", f.router_key)).unwrap();
    assert_eq!(
        router(
            &f,
            "[router]\nallow = [\"10.2.0.2:80\"]\n[performance]\nheartbeat_interval_secs = 2\n",
            &[]
        ),
        [
            "warning: performance.heartbeat_interval_secs: a router answers heartbeats and does \
             not send them; health.client_timeout_secs sets how long it waits for a silent \
             client: remove it here ($F:4)"
        ]
    );
}

/// A tunnel whose heartbeats are as far apart as a default router's client timeout
/// would have its link dropped, and a router waiting less than two default
/// heartbeats would drop every default tunnel's.
#[test]
fn heartbeats_must_come_well_within_the_routers_client_timeout() {
    let f = Fixture::new();
    let text = f.client_text("[performance]\nheartbeat_interval_secs = 19\n");
    assert_eq!(check(&f, &text), none());
    let text = f.client_text("[performance]\nheartbeat_interval_secs = 25\n");
    assert_eq!(
        check(&f, &text),
        [
            "warning: performance.heartbeat_interval_secs: a router drops a link it hears \
             nothing on for its health.client_timeout_secs (20 s by default), and with it the \
             link's connections: with heartbeats every 25 s, set client_timeout_secs to at \
             least 50 s on every router this tunnel uses, or keep this at most 10 s ($F:10)"
        ]
    );
    std::fs::write(f.home.authorized_clients(), format!("{}\n", f.router_key)).unwrap();
    let router_text = |timeout: u64| {
        format!("[router]\nallow = [\"10.2.0.2:80\"]\n[health]\nclient_timeout_secs = {timeout}\n")
    };
    assert_eq!(router(&f, &router_text(10), &[]), none());
    assert_eq!(
        router(&f, &router_text(6), &[]),
        [
            "warning: health.client_timeout_secs: tunnels send a heartbeat every 5 s by default \
             (performance.heartbeat_interval_secs): waiting 6 s for one drops their links, and \
             their users' connections, again and again; make it at least 10 s, or shorten the \
             tunnels' heartbeat interval to at most half of it ($F:4)"
        ]
    );
}

/// Channels are pooled by tunnels: a router's `pool_size` does nothing.
#[test]
fn a_routers_pool_size_is_a_warning() {
    let f = Fixture::new();
    std::fs::write(f.home.authorized_clients(), format!("{}\n", f.router_key)).unwrap();
    assert_eq!(
        router(
            &f,
            "[router]\nallow = [\"10.2.0.2:80\"]\n[performance]\npool_size = 9\n",
            &[]
        ),
        [
            "warning: performance.pool_size: channels are opened ahead of time by the tunnels, \
             not by the router: set it in the tunnels' file and remove it here ($F:4)"
        ]
    );
}

/// A key's two variables set to different values: the long name wins, and a
/// warning names both.
#[test]
fn two_variables_for_one_key_that_disagree_are_a_warning() {
    let f = Fixture::new();
    std::fs::write(f.home.authorized_clients(), "").unwrap();
    let lines = |env: &[(&str, &str)]| -> Vec<String> {
        router(&f, "", env)
            .into_iter()
            .filter(|l| l.contains("performance.workers"))
            .collect()
    };
    assert_eq!(
        lines(&[
            ("CONDUIT_PERFORMANCE_WORKERS", "3"),
            ("CONDUIT_WORKERS", "5")
        ]),
        [
            "warning: performance.workers: CONDUIT_PERFORMANCE_WORKERS and CONDUIT_WORKERS are \
          both set, to different values: CONDUIT_PERFORMANCE_WORKERS wins; unset one of them"
        ]
    );
    let agree = [
        ("CONDUIT_PERFORMANCE_WORKERS", "3"),
        ("CONDUIT_WORKERS", "3"),
    ];
    assert_eq!(lines(&agree), Vec::<String>::new());
}

/// Pooled channels that would take more than half the open-file limit are said,
/// with both values and the fix (a tunnel cuts its pool down to fit at start).
#[test]
fn a_pool_past_half_the_open_file_limit_is_a_warning() {
    use crate::config::validate::pool::over_limit;
    assert_eq!(
        over_limit(2, false, 64, 120).as_deref(),
        Some(
            "workers 2 × pool_size 64 = 128 pooled channels would take more than half of the \
             open-file limit of 120 a tunnel started here runs with (ulimit -Hn; it raises its \
             soft limit to that): each worker would keep 30 ready instead; raise the limit to \
             256 or more (ulimit -n, or LimitNOFILE= in a systemd unit), or lower pool_size or \
             workers"
        )
    );
    assert_eq!(
        over_limit(4, true, 2, 8).as_deref(),
        Some(
            "workers 0 (4 here: one per core) × pool_size 2 = 8 pooled channels would take \
             more than half of the open-file limit of 8 a tunnel started here runs with \
             (ulimit -Hn; it raises its soft limit to that): each worker would keep 1 ready \
             instead; raise the limit to 16 or more (ulimit -n, or LimitNOFILE= in a systemd \
             unit), or lower pool_size or workers"
        )
    );
    // Half of the limit exactly fits.
    assert_eq!(over_limit(2, false, 64, 256), None);
    assert_eq!(over_limit(1024, false, 64, 1 << 20), None);
    assert_eq!(over_limit(1024, false, 0, 120), None);
}
