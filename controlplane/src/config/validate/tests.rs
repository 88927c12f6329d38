//! Every validation error path, with the exact line `conduit config validate` prints.
//! `$DIR` stands for the test's temporary directory, `$F` for the file.

use crate::config::tests::Fixture;
use crate::config::{Report, load_router};
use conduit_proto::KeyPair;

/// The problems for `text`, with the file's path shown as `$F`.
fn check(f: &Fixture, text: &str) -> Vec<String> {
    f.client(text)
        .into_iter()
        .map(|l| l.replace("$DIR/conduit.toml", "$F"))
        .collect()
}

fn router(f: &Fixture, text: &str, env: &[(&str, &str)]) -> Vec<String> {
    let lines = match load_router(&f.sources(text, env, &[])) {
        Ok(l) => f.lines(&l.report),
        Err(r) => f.lines(&r),
    };
    lines
        .into_iter()
        .map(|l| l.replace("$DIR/conduit.toml", "$F"))
        .collect()
}

fn none() -> Vec<String> {
    Vec::new()
}

#[test]
fn invalid_toml_reports_line_and_column() {
    let f = Fixture::new();
    assert_eq!(
        check(&f, "[router]\nhost = 10.2.0.1\n"),
        ["error: $F:2:12: invalid TOML: invalid float, expected nothing; fix the syntax there"]
    );
    // Every syntax error, not just the first.
    assert_eq!(
        check(&f, "[router]\nhost = \"10.2.0.1\nport = = 1\n"),
        [
            "error: $F:2:17: invalid TOML: invalid basic string, expected `\"`; fix the syntax \
             there",
            "error: $F:3:8: invalid TOML: extra `=`, expected nothing; fix the syntax there",
            "error: $F:3:10: invalid TOML: unexpected key or value, expected newline, `#`; fix \
             the syntax there",
        ]
    );
}

#[test]
fn unknown_keys_and_sections_are_named_with_the_valid_ones() {
    let f = Fixture::new();
    let text = format!(
        "host = \"10.2.0.1\"\n[router]\nhots = \"x\"\npublic_key = \"{}\"\nbind = \"0.0.0.0:1\"\n\
         [tunnel]\nname = \"a\"\n[[tunnels]]\nname = \"web\"\nsource = \"s:1\"\nbind = \"127.0.0.1:1\"\n\
         colour = \"red\"\n",
        f.router_key
    );
    assert_eq!(
        check(&f, &text),
        [
            "error: host: unknown key at the top level; put it under [router] ($F:1)",
            "error: router.hots: unknown key in [router]; did you mean host? valid keys: host, \
             port, public_key, transport, fallbacks, fallback_keys, failback_secs, \
             standby_check_secs, balance ($F:3)",
            "error: router.bind: unknown key in [router]; valid keys: host, port, public_key, \
             transport, fallbacks, fallback_keys, failback_secs, standby_check_secs, balance; \
             `bind` belongs in a router's file (check those with --router) ($F:5)",
            "error: tunnel: unknown section; did you mean tunnels? valid sections: router, \
             security, performance, logging, alerts, tunnels ($F:6)",
            "error: tunnels[0].colour: unknown key in [[tunnels]]; valid keys: name, source, \
             bind, protocol, proxy_protocol, allow_from ($F:12)",
            "error: router.host: missing; add host = \"10.2.0.1\" under [router], or set \
             CONDUIT_ROUTER_HOST",
        ]
    );
}

#[test]
fn wrong_types_say_what_was_expected() {
    let f = Fixture::new();
    let text = f.client_text(
        "[performance]\nworkers = \"4\"\ntcp_nodelay = \"true\"\nread_buffer_size = 1.5\n\
         io_engine = \"iouring\"\noptimize_for = \"speed\"\n[logging]\nlevel = \"loud\"\n",
    );
    assert_eq!(
        check(&f, &text),
        [
            "error: performance.workers: expected an integer (0-1024), found a string; write it \
             without quotes: workers = 4 ($F:10)",
            "error: performance.tcp_nodelay: expected true or false, found a string; write it \
             without quotes: tcp_nodelay = true ($F:11)",
            "error: performance.read_buffer_size: expected an integer (0-16777216), found a \
             float ($F:12)",
            "error: performance.io_engine: unknown value \"iouring\"; use auto, uring or epoll ($F:13)",
            "error: performance.optimize_for: unknown value \"speed\"; use throughput, latency \
             or balanced ($F:14)",
            "error: logging.level: unknown value \"loud\"; use error, warn, info, debug or trace ($F:16)",
        ]
    );
}

#[test]
fn out_of_range_values_give_the_range() {
    let f = Fixture::new();
    let text = format!(
        "[router]\nhost = \"h\"\nport = 70000\npublic_key = \"{}\"\n[performance]\npool_size = 65\n\
         [[tunnels]]\nname = \"a\"\nsource = \"s:1\"\nbind = \"127.0.0.1:1\"\n",
        f.router_key
    );
    assert_eq!(
        check(&f, &text),
        [
            "error: router.port: 70000 is out of range; use 1-65535 ($F:3)",
            "error: performance.pool_size: 65 is out of range; use 0-64 ($F:6)",
        ]
    );
}

#[test]
fn missing_required_values_say_what_to_add() {
    let f = Fixture::new();
    assert_eq!(
        check(&f, "[[tunnels]]\nname = \"a\"\n"),
        [
            "error: tunnels[0].source: missing; add source = \"10.2.0.2:8080\" to this \
             [[tunnels]] table ($F:1)",
            "error: tunnels[0].bind: missing; add bind = \"0.0.0.0:8080\" to this [[tunnels]] \
             table ($F:1)",
            "error: router.host: missing; add host = \"10.2.0.1\" under [router], or set \
             CONDUIT_ROUTER_HOST",
            "error: router.public_key: missing; add public_key = \"ed25519:…\" (what the \
             router's `conduit init` printed, or the path of its .pub file) under [router], or \
             set CONDUIT_ROUTER_PUBLIC_KEY",
        ]
    );
    let text = format!(
        "[router]\nhost = \"h\"\npublic_key = \"{}\"\n",
        f.router_key
    );
    assert_eq!(
        check(&f, &text),
        [
            "error: tunnels: no tunnels; add a [[tunnels]] table with name, source and bind (see \
          deploy/conduit.example.toml)"
        ]
    );
    assert_eq!(
        check(&f, &format!("tunnels = 3\n{text}")),
        [
            "error: tunnels: expected [[tunnels]] tables, found an integer; write each tunnel as \
          a [[tunnels]] table ($F:1)"
        ]
    );
}

#[test]
fn bad_addresses_are_refused_with_examples() {
    let f = Fixture::new();
    let text = format!(
        "[router]\nhost = \"10.2.0.1:9999\"\npublic_key = \"{}\"\n\
         [[tunnels]]\nname = \"a\"\nsource = \"db.internal\"\nbind = \"0.0.0.0\"\n\
         [[tunnels]]\nname = \"b\"\nsource = \"10.2.0.2:0\"\nbind = \"localhost:80\"\n\
         [[tunnels]]\nname = \"c\"\nsource = \"bad host:80\"\nbind = \"127.0.0.1:0\"\n",
        f.router_key
    );
    assert_eq!(
        check(&f, &text),
        [
            "error: router.host: \"10.2.0.1:9999\" includes a port; give the host only and put \
             the port in router.port ($F:2)",
            "error: tunnels[0].source: \"db.internal\" is not HOST:PORT; use the address the \
             router reaches the service at, such as 10.2.0.2:8080 or db.internal:5432 ($F:6)",
            "error: tunnels[0].bind: \"0.0.0.0\" is not ADDR:PORT (it has no port); use a local \
             IP address and a port such as 0.0.0.0:8080, 127.0.0.1:8080 or [::]:8080 ($F:7)",
            "error: tunnels[1].source: port 0 in \"10.2.0.2:0\" is out of range; use 1-65535 ($F:10)",
            "error: tunnels[1].bind: \"localhost:80\" is not ADDR:PORT (a host name, where an IP \
             address must be); use a local IP address and a port such as 0.0.0.0:8080, \
             127.0.0.1:8080 or [::]:8080 ($F:11)",
            "error: tunnels[2].source: \"bad host:80\" is not HOST:PORT; use the address the \
             router reaches the service at, such as 10.2.0.2:8080 or db.internal:5432 ($F:14)",
            "warning: tunnels[2].bind: port 0 lets the system pick a different free port at \
             each start, so users cannot know where to connect; pick a fixed port ($F:15)",
        ]
    );
}

#[test]
fn a_source_list_is_checked_member_by_member() {
    let f = Fixture::new();
    let ok = f.client_text(
        "[[tunnels]]\nname = \"pair\"\nsource = \"10.2.0.5:80, web-2.internal:80\"\n\
         bind = \"127.0.0.1:1\"\n",
    );
    assert_eq!(check(&f, &ok), none());
    let bad = f.client_text(
        "[[tunnels]]\nname = \"pair\"\nsource = \"10.2.0.5:80,web-2.internal\"\n\
         bind = \"127.0.0.1:1\"\n",
    );
    assert_eq!(
        check(&f, &bad),
        [
            "error: tunnels[1].source: \"web-2.internal\" is not HOST:PORT; use the address \
             the router reaches the service at, such as 10.2.0.2:8080 or db.internal:5432 ($F:11)"
        ]
    );
    // What the router would refuse: a member twice, more members than it balances.
    let many: Vec<String> = (0..65).map(|i| format!("10.2.0.5:{}", 8000 + i)).collect();
    let bad = f.client_text(&format!(
        "[[tunnels]]\nname = \"pair\"\nsource = \"10.2.0.5:80,10.2.0.5:80\"\n\
         bind = \"127.0.0.1:1\"\n[[tunnels]]\nname = \"many\"\nsource = \"{}\"\n\
         bind = \"127.0.0.1:2\"\n",
        many.join(",")
    ));
    assert_eq!(
        check(&f, &bad),
        [
            "error: tunnels[1].source: names 10.2.0.5:80 twice: list each once ($F:11)",
            "error: tunnels[2].source: names 65 members; a source may name at most 64: split \
             it across tunnels, or put a load balancer in front of the rest ($F:15)"
        ]
    );
}

#[test]
fn names_must_be_unique_and_usable() {
    let f = Fixture::new();
    let text = f.client_text(
        "[[tunnels]]\nname = \"web\"\nsource = \"s:1\"\nbind = \"127.0.0.1:1\"\n\
         [[tunnels]]\nname = \"my tunnel\"\nsource = \"s:1\"\nbind = \"127.0.0.1:2\"\n",
    );
    assert_eq!(
        check(&f, &text),
        [
            "error: tunnels[1].name: \"web\" is already the name of tunnels[0]; give each \
             tunnel its own name ($F:10)",
            "error: tunnels[2].name: \"my tunnel\" is not a valid name; use 1-64 letters, \
             digits, '-', '_' or '.' (not starting with '.' or '-') ($F:14)",
        ]
    );
}

#[test]
fn two_tunnels_cannot_bind_the_same_address() {
    let f = Fixture::new();
    let t = |name: &str, bind: &str, proto: &str| {
        format!(
            "[[tunnels]]\nname = \"{name}\"\nsource = \"s:1\"\nbind = \"{bind}\"\nprotocol = \"{proto}\"\n"
        )
    };
    // The base file's tunnel binds 0.0.0.0:8080.
    let extra = [
        t("same", "0.0.0.0:8080", "tcp"),
        t("inside-any", "127.0.0.1:8080", "tcp"),
        t("v6-any", "[::]:9000", "tcp"),
        t("under-v6-any", "10.0.0.1:9000", "tcp"),
        t("other-port", "127.0.0.1:8081", "tcp"),
        t("other-ip", "127.0.0.2:8081", "tcp"),
    ]
    .concat();
    assert_eq!(
        check(&f, &f.client_text(&extra)),
        [
            "error: tunnels[1].bind: 0.0.0.0:8080 is also the bind of tunnels[0]; two tunnels \
             cannot listen on one address: give one of them another port ($F:12)",
            "error: tunnels[2].bind: 127.0.0.1:8080 conflicts with tunnels[0].bind \
             0.0.0.0:8080 (0.0.0.0 listens on every local address); give one of them another \
             port ($F:17)",
            "error: tunnels[4].bind: 10.0.0.1:9000 conflicts with tunnels[3].bind [::]:9000 \
             (:: listens on every local address); give one of them another port ($F:27)",
        ]
    );
}

#[test]
fn udp_tunnels_validate_and_do_not_clash_with_tcp() {
    let f = Fixture::new();
    let text = f.client_text(
        "[[tunnels]]\nname = \"dns\"\nsource = \"10.2.0.53:53\"\nbind = \"0.0.0.0:8080\"\n\
         protocol = \"udp\"\n[[tunnels]]\nname = \"x\"\nsource = \"s:1\"\nbind = \"127.0.0.1:1\"\n\
         protocol = \"sctp\"\n[performance]\nudp_idle_timeout_secs = 30\nudp_max_new_flows = 100\n",
    );
    assert_eq!(
        check(&f, &text),
        ["error: tunnels[2].protocol: unknown value \"sctp\"; use tcp or udp ($F:18)"]
    );
}

#[test]
fn router_keys_are_checked_inline_and_as_files() {
    let f = Fixture::new();
    let text = |key: &str| {
        format!(
            "[router]\nhost = \"h\"\npublic_key = \"{key}\"\n[[tunnels]]\nname = \"a\"\n\
             source = \"s:1\"\nbind = \"127.0.0.1:1\"\n"
        )
    };
    assert_eq!(
        check(&f, &text("ed25519:AAAA")),
        [
            "error: router.public_key: invalid public key \"ed25519:AAAA\": an Ed25519 public key \
          is 32 bytes; paste the key the router's `conduit init` printed ($F:3)"
        ]
    );
    assert_eq!(
        check(&f, &text("keys/router.pub")),
        [
            "error: router.public_key: no file at $DIR/keys/router.pub: give the router's public \
          key (ed25519:…, as the router's `conduit init` printed) or the path of its .pub \
          file ($F:3)"
        ]
    );
    std::fs::write(f.path("bad.pub"), "ssh-ed25519 AAAA\n").unwrap();
    assert_eq!(
        check(&f, &text("bad.pub")),
        [
            "error: router.public_key: public key in $DIR/bad.pub: invalid public key \
          \"ssh-ed25519\": expected the form ed25519:<base64>, as `conduit init` prints ($F:3)"
        ]
    );
    let pub_file = f.home.public_key("router").display().to_string();
    assert_eq!(check(&f, &text(&pub_file)), none());
    // The line `conduit init` printed, the key's name too.
    let line = std::fs::read_to_string(&pub_file).unwrap();
    assert!(line.trim().ends_with(" router"), "{line}");
    assert_eq!(check(&f, &text(line.trim())), none());
}

#[test]
fn the_private_key_must_exist_and_be_private() {
    let f = Fixture::new();
    let text = f.client_text("[security]\nprivate_key_path = \"nope.key\"\n");
    assert_eq!(
        check(&f, &text),
        [
            "error: security.private_key_path: no private key at $DIR/nope.key: create one with \
          `conduit init --name client` (it writes $CONDUIT_HOME/keys/client.key) or set \
          security.private_key_path to an existing key ($F:10)"
        ]
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let key = f.home.private_key("client");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let k = key
            .display()
            .to_string()
            .replace(&f.dir.path().display().to_string(), "$DIR");
        assert_eq!(
            check(&f, &f.client_text("")),
            [format!(
                "error: security.private_key_path: private key {k} is readable by group or \
                 others (mode 0644); run `chmod 600 {k}` and start again"
            )]
        );
    }
}

#[test]
fn limits_must_agree_and_log_directories_exist() {
    let f = Fixture::new();
    let text = f.client_text(
        "[performance]\ndefault_bandwidth_limit = 1000\nburst_bandwidth_limit = 10\n\
         [logging]\nfile = \"no/such/dir/conduit.log\"\n",
    );
    assert_eq!(
        check(&f, &text),
        [
            "error: logging.file: directory $DIR/no/such/dir does not exist; create it or \
             choose another file ($F:13)",
            "warning: performance.burst_bandwidth_limit: 10 bytes is less than one TLS record \
             (16384): a limited tunnel then relays in pieces that small, at more CPU per byte; \
             give 16384 or more (0: one second's worth) ($F:11)",
        ]
    );
}

#[cfg(unix)]
#[test]
fn a_token_in_a_readable_file_is_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::new();
    let sources = f.sources(&f.client_text("[security]\ntoken = \"t\"\n"), &[], &[]);
    std::fs::set_permissions(&sources.file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let report = crate::config::load_client(&sources).unwrap().report;
    let lines: Vec<String> = f
        .lines(&report)
        .into_iter()
        .map(|l| l.replace("$DIR/conduit.toml", "$F"))
        .collect();
    assert_eq!(
        lines,
        [
            "warning: security.token: $F holds a secret and is readable by group or others (mode \
          0644); run `chmod 600 $F` or pass the token in CONDUIT_SECURITY_TOKEN ($F:10)"
        ]
    );
}

#[test]
fn errors_come_first_then_warnings_each_in_file_order() {
    let f = Fixture::new();
    let text = format!(
        "[router]\nhost = \"h\"\npublic_key = \"{}\"\n[[tunnels]]\nname = \"a\"\nsource = \"s:1\"\n\
         bind = \"127.0.0.1:0\"\n[[tunnels]]\nname = \"a\"\nsource = \"s\"\nbind = \"127.0.0.1:5\"\n",
        f.router_key
    );
    let r = crate::config::load_client(&f.sources(&text, &[("CONDUIT_LOGGING_COLOUR", "1")], &[]))
        .unwrap()
        .report;
    let kinds: Vec<(String, bool)> = r
        .problems
        .iter()
        .map(|p| (p.path.clone(), p.severity == crate::config::Severity::Error))
        .collect();
    assert_eq!(
        kinds,
        [
            ("tunnels[1].name".to_owned(), true),
            ("tunnels[1].source".to_owned(), true),
            ("tunnels[0].bind".to_owned(), false),
            ("".to_owned(), false),
        ]
    );
    assert!(Report::has_errors(&r));
}

#[test]
fn router_files_are_checked_too() {
    let f = Fixture::new();
    let text = "[router]\nbind = \"0.0.0.0\"\nauthorized_keys = \"clients\"\n\
                allow = [\"10.2.0.2:8080\", \"10.2.0.2\"]\nhost = \"x\"\n[[tunnels]]\n";
    assert_eq!(
        router(&f, text, &[]),
        [
            "error: router.bind: \"0.0.0.0\" is not ADDR:PORT (it has no port); use a local IP \
             address and a port such as 0.0.0.0:8080, 127.0.0.1:8080 or [::]:8080 ($F:2)",
            "error: router.authorized_keys: no authorized clients file at $DIR/clients: create \
             it with one client public key per line (what `conduit init` printed on each \
             client), or set router.authorized_keys ($F:3)",
            "error: router.allow[1]: invalid allow rule \"10.2.0.2\": no port; expected \
             HOST:PORT such as 10.2.0.2:8080, 10.2.0.0/24:5432, db.internal:5432, [::1]:80, \
             *:8000-8100 (optionally KEY=HOST:PORT or NAME=HOST:PORT) ($F:4)",
            "error: router.host: unknown key in [router]; valid keys: bind, private_key_path, \
             next_private_key_path, authorized_keys, allow, token, key_grace_secs, \
             key_rotation_days, key_announce_secs, key_retire_secs, cipher_suites; `host` belongs in a client's file (check \
             those without --router) ($F:5)",
            "error: tunnels: a router's file has no tunnels; [[tunnels]] belong in a client's \
             conduit.toml (check those without --router) ($F:6)",
        ]
    );
    std::fs::write(f.home.authorized_clients(), "not a key\n").unwrap();
    assert_eq!(
        router(
            &f,
            "",
            &[
                ("CONDUIT_ROUTER_PRIVATE_KEY_PATH", "/nonexistent/r.key"),
                (
                    "CONDUIT_ROUTER_NEXT_PRIVATE_KEY_PATH",
                    "/nonexistent/next.key"
                )
            ]
        ),
        [
            "error: router.private_key_path: no private key at /nonexistent/r.key: create one \
             with `conduit init --name router` (it writes $CONDUIT_HOME/keys/router.key) or set \
             router.private_key_path to an existing key (env CONDUIT_ROUTER_PRIVATE_KEY_PATH)",
            "error: router.next_private_key_path: no private key at /nonexistent/next.key: \
             create one with `conduit init --name router-next` (it writes \
             $CONDUIT_HOME/keys/router-next.key) or set router.next_private_key_path to an \
             existing key (env CONDUIT_ROUTER_NEXT_PRIVATE_KEY_PATH)",
            "error: router.authorized_keys: $DIR/home/authorized_clients line 1: invalid public \
             key \"not\": expected the form ed25519:<base64>, as `conduit init` prints",
            "warning: router.allow: no rule: clients can connect but may open no source; add \
             rules such as --allow 10.2.0.2:8080 on the command line, or allow = \
             [\"10.2.0.2:8080\"] in the router's file",
        ]
    );
}

#[test]
fn the_traffic_history_file_needs_its_directory() {
    let f = Fixture::new();
    let text = "[api]\nhistory_file = \"no/such/dir/history.jsonl\"\nhistory_samples = 0\n";
    assert_eq!(
        router(&f, text, &[])[..2],
        [
            "error: api.history_file: directory $DIR/no/such/dir does not exist; create it or \
             choose another file ($F:2)",
            "error: api.history_samples: 0 is out of range; use 1-100000 ($F:3)",
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

#[test]
fn the_proxy_header_of_udp_tunnels_is_v2() {
    let f = Fixture::new();
    let text = f.client_text(
        "[[tunnels]]\nname = \"dns\"\nsource = \"10.2.0.53:53\"\nbind = \"0.0.0.0:5353\"\n\
         protocol = \"udp\"\nproxy_protocol = \"v1\"\n[[tunnels]]\nname = \"smtp\"\n\
         source = \"10.2.0.25:25\"\nbind = \"0.0.0.0:25\"\nproxy_protocol = \"v1\"\n\
         [[tunnels]]\nname = \"x\"\nsource = \"s:1\"\nbind = \"127.0.0.1:1\"\nproxy_protocol = \"v3\"\n\
         [[tunnels]]\nname = \"dns2\"\nsource = \"10.2.0.54:53\"\nbind = \"0.0.0.0:5354\"\n\
         protocol = \"udp\"\nproxy_protocol = \"v2\"\n",
    );
    assert_eq!(
        check(&f, &text),
        [
            "error: tunnels[1].proxy_protocol: proxy_protocol = \"v1\" has no form for UDP: a UDP \
             tunnel sends v2's before each datagram; set proxy_protocol = \"v2\" ($F:14)",
            "error: tunnels[3].proxy_protocol: unknown value \"v3\"; use v1 or v2 ($F:24)",
        ]
    );
}

#[test]
fn allow_from_takes_addresses_and_cidr_blocks() {
    let f = Fixture::new();
    let text = f.client_text(
        "[[tunnels]]\nname = \"db\"\nsource = \"10.2.0.5:5432\"\nbind = \"0.0.0.0:5432\"\n\
         allow_from = [\"10.0.0.0/8\", \"192.0.2.7\", \"[2001:db8::1]\", \"10.0.0.0/33\", \"office\"]\n",
    );
    assert_eq!(
        check(&f, &text),
        [
            "error: tunnels[1].allow_from: item 3: \"10.0.0.0/33\" is not an address or a CIDR \
             block; write 10.0.0.0/8, 192.0.2.7 or 2001:db8::/32 ($F:13)",
            "error: tunnels[1].allow_from: item 4: \"office\" is not an address or a CIDR block; \
             write 10.0.0.0/8, 192.0.2.7 or 2001:db8::/32 ($F:13)",
        ]
    );
}

#[test]
fn udp_tunnels_ride_the_plain_transport_too() {
    let f = Fixture::new();
    let text = f.client_text(
        "[[tunnels]]\nname = \"dns\"\nsource = \"10.2.0.53:53\"\nbind = \"0.0.0.0:5353\"\n\
         protocol = \"udp\"\n",
    );
    let text = text.replacen("[router]\n", "[router]\ntransport = \"plain\"\n", 1);
    assert_eq!(check(&f, &text), Vec::<String>::new());
}

#[test]
fn udp_flow_settings_belong_to_tunnels() {
    let f = Fixture::new();
    std::fs::write(f.home.authorized_clients(), format!("{}\n", f.router_key)).unwrap();
    assert_eq!(
        router(
            &f,
            "[router]\nallow = [\"10.2.0.2:80\"]\n[performance]\nudp_idle_timeout_secs = 5\n\
             udp_max_new_flows = 10\n",
            &[]
        ),
        [
            "warning: performance.udp_idle_timeout_secs: UDP flows are ended by the tunnel that \
             carries them, not by the router: set it in the tunnels' file and remove it here \
             ($F:4)",
            "warning: performance.udp_max_new_flows: new UDP flows are capped by the tunnel that \
             starts them, not by the router: set it in the tunnels' file and remove it here \
             ($F:5)",
        ]
    );
}

#[test]
fn fallback_routers_are_checked_one_by_one() {
    let f = Fixture::new();
    let text = f.client_text("").replacen(
        "[[tunnels]]",
        "fallbacks = [\"10.2.0.3:9999\", \"router-c.internal\", \"[fd00::4]:0\", \"bad host:1\", \
         \"fd00::5:9999\", \"[fd00::6:9999\", \"r:http\"]\n[[tunnels]]",
        1,
    );
    assert_eq!(
        check(&f, &text),
        [
            "error: router.fallbacks[1]: \"router-c.internal\": it has no port; use HOST:PORT \
             such as 10.2.0.3:9999 or router-b.internal:9999 ($F:5)",
            "error: router.fallbacks[2]: \"[fd00::4]:0\": port 0 is out of range (1-65535); use \
             HOST:PORT such as 10.2.0.3:9999 or router-b.internal:9999 ($F:5)",
            "error: router.fallbacks[3]: \"bad host:1\": \"bad host\" is not a host name or IP \
             address; use HOST:PORT such as 10.2.0.3:9999 or router-b.internal:9999 ($F:5)",
            "error: router.fallbacks[4]: \"fd00::5:9999\": an IPv6 address goes in brackets, as \
             [fd00::5]:9999; use HOST:PORT such as 10.2.0.3:9999 or router-b.internal:9999 ($F:5)",
            "error: router.fallbacks[5]: \"[fd00::6:9999\": \"[fd00::6\" is not a host name or IP \
             address; use HOST:PORT such as 10.2.0.3:9999 or router-b.internal:9999 ($F:5)",
            "error: router.fallbacks[6]: \"r:http\": \"http\" is not a port (1-65535); use \
             HOST:PORT such as 10.2.0.3:9999 or router-b.internal:9999 ($F:5)",
        ]
    );
    let text = f.client_text("").replacen(
        "[[tunnels]]",
        "fallbacks = [\"10.2.0.3:9999\", \"[fd00::4]:9999\"]\n[[tunnels]]",
        1,
    );
    assert_eq!(check(&f, &text), none());
}

#[test]
fn a_router_listed_twice_is_an_error() {
    let f = Fixture::new();
    let text = f.client_text("").replacen(
        "[[tunnels]]",
        "fallbacks = [\"10.2.0.1:9999\", \"10.2.0.3:9999\", \"10.2.0.3:9999\"]\n[[tunnels]]",
        1,
    );
    assert_eq!(
        check(&f, &text),
        [
            "error: router.fallbacks[0]: \"10.2.0.1:9999\" is the router of router.host and \
             router.port already; list each router once ($F:5)",
            "error: router.fallbacks[2]: \"10.2.0.3:9999\" is the router of router.fallbacks[1] \
             already; list each router once ($F:5)",
        ]
    );
}

#[test]
fn balancing_over_one_router_is_a_warning() {
    let f = Fixture::new();
    let text = f
        .client_text("")
        .replacen("[[tunnels]]", "balance = true\n[[tunnels]]", 1);
    assert_eq!(
        check(&f, &text),
        [
            "warning: router.balance: true with no router.fallbacks: one router has nothing to \
             balance with; list the other routers in router.fallbacks ($F:5)"
        ]
    );
    let text = f.client_text("").replacen(
        "[[tunnels]]",
        "balance = true\nfallbacks = [\"10.2.0.3:9999\"]\n[[tunnels]]",
        1,
    );
    assert_eq!(check(&f, &text), none());
}

#[test]
fn fallback_keys_are_one_per_fallback_and_each_a_key() {
    let f = Fixture::new();
    let with = |lines: &str| {
        f.client_text("")
            .replacen("[[tunnels]]", &format!("{lines}\n[[tunnels]]"), 1)
    };
    let other = KeyPair::generate().unwrap().public();
    let text = with(&format!(
        "fallbacks = [\"10.2.0.3:9999\", \"10.2.0.4:9999\"]\nfallback_keys = [\"{other}\"]"
    ));
    assert_eq!(
        check(&f, &text),
        [
            "error: router.fallback_keys: 1 key for 2 fallbacks; give one key per fallback, in \
             the order of router.fallbacks, or none when every fallback presents \
             router.public_key (to pin one router to several keys, separate them with `|` in \
             one string) ($F:6)",
        ]
    );
    let text = with(&format!(
        "fallbacks = [\"10.2.0.3:9999\", \"10.2.0.4:9999\"]\nfallback_keys = [\"{other}\", \
         \"ed25519:nope\"]"
    ));
    let lines = check(&f, &text);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("error: router.fallback_keys[1]: ")
            && lines[0].contains("paste the key the router's `conduit init` printed"),
        "{lines:?}"
    );
    let text = with(&format!(
        "fallbacks = [\"10.2.0.3:9999\", \"10.2.0.4:9999\"]\nfallback_keys = [\"{other}\", \
         \"{other}||{other}\"]"
    ));
    assert_eq!(
        check(&f, &text),
        [format!(
            "error: router.fallback_keys[1]: \"{other}||{other}\" has an empty key; separate a \
             router's keys with single `|` ($F:6)"
        )]
    );
    let text = with(&format!(
        "fallbacks = [\"10.2.0.3:9999\", \"10.2.0.4:9999\"]\nfallback_keys = [\"{other}\", \
         \"{}|{other}\"]",
        f.router_key
    ));
    assert_eq!(check(&f, &text), none());
}

#[test]
fn router_key_rotation_is_by_hand_or_by_the_router_and_announces_within_its_period() {
    let f = Fixture::new();
    let next = f.home.private_key("router");
    let both = format!("[router]\nnext_private_key_path = {next:?}\nkey_rotation_days = 30\n",);
    let lines = router(&f, &both, &[]);
    assert!(
        lines.contains(
            &"error: router.key_rotation_days: the router cannot switch to a next key by hand \
              (next_private_key_path) and rotate its key by itself: remove one of the two ($F:3)"
                .to_owned()
        ),
        "{lines:?}"
    );
    let lines = router(
        &f,
        "[router]\nkey_rotation_days = 1\nkey_announce_secs = 86400\n",
        &[],
    );
    assert!(
        lines.contains(
            &"error: router.key_announce_secs: 86400 s is as long as the rotation period (1 \
              day): make it shorter than key_rotation_days ($F:3)"
                .to_owned()
        ),
        "{lines:?}"
    );
    let lines = router(&f, "[router]\nkey_rotation_days = 30\n", &[]);
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("key_rotation") || l.contains("key_announce")),
        "{lines:?}"
    );
}

#[test]
fn a_tunnel_name_is_a_plain_file_name() {
    for good in ["web", "a", "db-2.prod_1", &"x".repeat(64)] {
        assert_eq!(super::tunnel_name(good), Ok(()), "{good}");
    }
    for bad in [
        "",
        "has space",
        "a/b",
        "../../trav",
        ".hidden",
        &"x".repeat(65),
    ] {
        assert_eq!(
            super::tunnel_name(bad),
            Err(format!(
                "{bad:?} is not a valid name; use 1-64 letters, digits, '-', '_' or '.' (not \
                 starting with '.' or '-')"
            )),
            "{bad}"
        );
    }
    // `conduit kill --tunnel -x` would take it for an option.
    assert_eq!(
        super::tunnel_name("-x"),
        Err(
            "\"-x\" is not a valid name: commands would take it for an option; use 1-64 \
             letters, digits, '-', '_' or '.' (not starting with '.' or '-')"
                .to_owned()
        )
    );
    assert_eq!(super::peer_tunnel_name("-x"), Ok(()));
}

#[test]
fn udp_probes_are_checked_one_by_one() {
    let f = Fixture::new();
    std::fs::write(f.home.authorized_clients(), format!("{}\n", f.router_key)).unwrap();
    let text = "[router]\nallow = [\"10.2.0.53:53\", \"10.2.0.9:9000\"]\n[health]\nudp_probes = \
                [\"10.2.0.53:53=dns\", \"10.2.0.9:9000=hex:0d0a\", \"10.2.0.53:53\", \
                \"10.2.0.53=dns\", \"10.2.0.53:53=ping\"]\n";
    assert_eq!(
        router(&f, text, &[]),
        [
            "error: health.udp_probes[2]: \"10.2.0.53:53\" is not SOURCE=PROBE; write it as \
             10.2.0.53:53=dns or 10.2.0.9:9000=hex:0d0a ($F:4)",
            "error: health.udp_probes[3]: \"10.2.0.53\" is not HOST:PORT; use the address the \
             router reaches the service at, such as 10.2.0.2:8080 or db.internal:5432 ($F:4)",
            "error: health.udp_probes[4]: unknown probe \"ping\": use dns (a DNS query) or \
             hex:BYTES (bytes the source answers, such as hex:0d0a) ($F:4)",
        ]
    );
    // From the environment too, comma-separated.
    let text = "[router]\nallow = [\"10.2.0.53:53\"]\n";
    assert_eq!(
        router(
            &f,
            text,
            &[(
                "CONDUIT_HEALTH_UDP_PROBES",
                "10.2.0.53:53=dns, 10.2.0.54:53=hex:zz"
            )]
        ),
        [
            "error: health.udp_probes[1]: \"zz\" is not hex (Invalid character 'z' at position \
             0); write the bytes as hex:0d0a (env CONDUIT_HEALTH_UDP_PROBES)"
        ]
    );
}

#[test]
fn a_watched_source_no_rule_admits_is_a_warning() {
    let f = Fixture::new();
    std::fs::write(f.home.authorized_clients(), format!("{}\n", f.router_key)).unwrap();
    let text = "[router]\nallow = [\"10.2.0.0/24:5432\", \"db.internal:6379\", \
                \"alice=10.3.0.53:53\"]\n[health]\nsources = [\"10.2.0.7:5432\", \
                \"10.2.1.7:5432\", \"db.internal:6379\", \"pg.internal:5432\", \
                \"cache.internal:11211\"]\nudp_probes = [\"10.3.0.53:53=dns\", \
                \"10.3.0.54:53=dns\"]\n";
    assert_eq!(
        router(&f, text, &[]),
        [
            "warning: health.sources[1]: no allow rule admits 10.2.1.7:5432: the router watches \
             it, but no client may open it; add --allow 10.2.1.7:5432 to the router, or remove \
             it from health.sources ($F:4)",
            "warning: health.sources[4]: no allow rule admits cache.internal:11211: the router \
             watches it, but no client may open it; add --allow cache.internal:11211 to the \
             router, or remove it from health.sources ($F:4)",
            "warning: health.udp_probes[1]: no allow rule admits 10.3.0.54:53: the router \
             watches it, but no client may open it; add --allow 10.3.0.54:53 to the router, or \
             remove it from health.udp_probes ($F:5)",
        ]
    );
}
