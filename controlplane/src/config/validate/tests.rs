//! Every validation error path, with the exact line `conduit config validate` prints.
//! `$DIR` stands for the test's temporary directory, `$F` for the file.

use crate::config::tests::Fixture;
use crate::config::{Report, load_router};

mod fallbacks;
mod performance;
mod router_file;
mod security;
mod tunnels;

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
         colour = \"red\"\npool_size = 3\n",
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
             `bind` belongs in a router's file (for `conduit router --config`; `config validate` \
             checks one with --router) ($F:5)",
            "error: tunnel: unknown section; did you mean tunnels? valid sections: router, \
             security, performance, logging, alerts, tunnels ($F:6)",
            "error: tunnels[0].colour: unknown key in [[tunnels]]; valid keys: name, source, \
             bind, protocol, proxy_protocol, allow_from ($F:12)",
            "error: tunnels[0].pool_size: unknown key in [[tunnels]]; valid keys: name, \
             source, bind, protocol, proxy_protocol, allow_from; `pool_size` is a key of \
             [performance] (it applies to every tunnel of the file) ($F:13)",
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

/// The plain transport checks no keys: it needs neither the router's key nor a
/// client key file; one that is named and there is still checked.
#[test]
fn the_plain_transport_needs_no_keys() {
    let f = Fixture::new();
    let tunnel =
        "[[tunnels]]\nname = \"web\"\nsource = \"10.2.0.2:8080\"\nbind = \"0.0.0.0:8080\"\n";
    let plain = format!(
        "[router]\nhost = \"10.2.0.1\"\ntransport = \"plain\"\n[security]\n\
         private_key_path = \"{}\"\n{tunnel}",
        f.path("none.key").display()
    );
    assert_eq!(check(&f, &plain), none());
    let tls = plain.replace("transport = \"plain\"\n", "");
    assert_eq!(
        check(&f, &tls),
        [
            "error: security.private_key_path: no private key at $DIR/none.key: create one \
             with `conduit init --name client` (it writes $CONDUIT_HOME/keys/client.key) or \
             set security.private_key_path to an existing key ($F:4)",
            "error: router.public_key: missing; add public_key = \"ed25519:…\" (what the \
             router's `conduit init` printed, or the path of its .pub file) under [router], or \
             set CONDUIT_ROUTER_PUBLIC_KEY",
        ]
    );
    let open = f.path("open.key");
    std::fs::copy(f.home.private_key("client"), &open).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
        let named = plain.replace("none.key", "open.key");
        let problems = check(&f, &named);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("error: security.private_key_path: "),
            "{problems:?}"
        );
    }
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
