//! A router's own file: its sections, the traffic history file, settings that
//! belong to tunnels, key rotation, health probes and watched sources.

use super::{none, router};
use crate::config::tests::Fixture;
use crate::keys;

/// A rule for every address and port is valid, and warned of: the router would be an
/// open proxy into its network.
#[test]
fn a_rule_for_every_address_and_port_is_warned_of() {
    let f = Fixture::new();
    let text = "[router]\ntransport = \"plain\"\n\
                allow = [\"10.2.0.2:80\", \"*:*\", \"[::]/0:*\"]\n";
    assert_eq!(
        router(&f, text, &[]),
        [
            (
                "1",
                "*:*",
                "every address",
                "its own loopback services and API, cloud metadata (169.254.169.254)"
            ),
            (
                "2",
                "[::]/0:*",
                "every IPv6 address",
                "its own services on [::1], cloud metadata over IPv6 ([fd00:ec2::254] on AWS)"
            )
        ]
        .map(|(i, rule, every, own)| format!(
            "warning: router.allow[{i}]: allow rule `{rule}` lets every client reach \
                 {every} on every port the router can reach: {own}, the whole network around \
                 it; allow only the sources clients need, by address and port \
                 (10.2.0.2:8080), network and port (10.2.0.0/24:5432) or name \
                 (db.internal:5432) ($F:3)"
        ))
    );
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
             key_rotation_days, key_announce_secs, key_retire_secs, cipher_suites, transport; `host` belongs in a client's file (for \
             `conduit up -f`; `config validate` checks one without --router) ($F:5)",
            "error: tunnels: a router's file has no tunnels; [[tunnels]] belong in a client's \
             conduit.toml (for `conduit up -f`; `config validate` checks one without --router) \
             ($F:6)",
        ]
    );
    // On the plain transport neither a key nor a clients file is needed (a file that
    // is there is still checked).
    let plain = "[router]\ntransport = \"plain\"\nauthorized_keys = \"clients\"\n\
                 private_key_path = \"none.key\"\nallow = [\"127.0.0.1:80\"]\n";
    assert_eq!(router(&f, plain, &[]), Vec::<String>::new());
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

/// One bad item does not hide the others: each is named under its own path, and a
/// list of bad rules is not taken for no rule at all.
#[test]
fn every_bad_allow_rule_is_named_and_bad_rules_are_not_no_rules() {
    let f = Fixture::new();
    std::fs::write(f.home.authorized_clients(), format!("{}\n", f.router_key)).unwrap();
    let expect_rule = "expected HOST:PORT such as 10.2.0.2:8080, 10.2.0.0/24:5432, \
                       db.internal:5432, [::1]:80, *:8000-8100 (optionally KEY=HOST:PORT or \
                       NAME=HOST:PORT)";
    let text = "[router]\nbind = \"127.0.0.1:21150\"\n\
                allow = [\"127.0.0.1:0\", \"::1:80\", \"127.0.0.1:80-70\", \"\"]\n";
    assert_eq!(
        router(&f, text, &[]),
        [
            format!(
                "error: router.allow[0]: invalid allow rule \"127.0.0.1:0\": port 0 is no \
                 source's port; give the port the source listens on, or * for every port; \
                 {expect_rule} ($F:3)"
            ),
            format!(
                "error: router.allow[1]: invalid allow rule \"::1:80\": an IPv6 address goes in \
                 brackets, such as [::1]:80 or [fd00::/64]:5432; {expect_rule} ($F:3)"
            ),
            format!(
                "error: router.allow[2]: invalid allow rule \"127.0.0.1:80-70\": port range runs \
                 backwards; {expect_rule} ($F:3)"
            ),
            "error: router.allow[3]: is empty; remove it from the list ($F:3)".to_owned(),
        ]
    );
    // Items on lines of their own are named with their lines; the good ones stand.
    let text = "[router]\nbind = \"127.0.0.1:21150\"\nallow = [\n  5,\n  \"10.2.0.2:80\",\n  \
                \"10.2.0.2\",\n]\n";
    assert_eq!(
        router(&f, text, &[]),
        [
            "error: router.allow[0]: expected a string, found an integer ($F:4)".to_owned(),
            format!(
                "error: router.allow[2]: invalid allow rule \"10.2.0.2\": no port; {expect_rule} ($F:6)"
            ),
        ]
    );
    // A value that is no list at all is one error, and no "no rule" warning besides.
    let text = "[router]\nbind = \"127.0.0.1:21150\"\nallow = \"10.2.0.2:80\"\n";
    assert_eq!(
        router(&f, text, &[]),
        [
            "error: router.allow: expected a list of strings, found a string; write it as a list: \
             allow = [\"10.2.0.2:80\"] ($F:3)"
        ]
    );
    // The environment replaces the file's list whole: its items are checked, and
    // named with the variable, while the file's bad item is still named.
    let text = "[router]\nbind = \"127.0.0.1:21150\"\nallow = [\"\"]\n[health]\n\
                sources = [1, \"10.2.0.2:80\"]\n";
    assert_eq!(
        router(
            &f,
            text,
            &[
                ("CONDUIT_ROUTER_ALLOW", "10.2.0.2:80"),
                ("CONDUIT_HEALTH_SOURCES", "10.2.0.2:80,x")
            ]
        ),
        [
            "error: router.allow[0]: is empty; remove it from the list ($F:3)",
            "error: health.sources[0]: expected a string, found an integer ($F:5)",
            "error: health.sources[1]: \"x\" is not HOST:PORT; use the address the router \
             reaches the service at, such as 10.2.0.2:8080 or db.internal:5432 (env \
             CONDUIT_HEALTH_SOURCES)",
            "warning: router.allow: CONDUIT_ROUTER_ALLOW replaces the 1 value of the file \
             ($F:3) rather than adding to it: a list is taken whole from where it is given \
             last; give every value with CONDUIT_ROUTER_ALLOW, or add yours to the file",
            "warning: health.sources: CONDUIT_HEALTH_SOURCES replaces the 2 values of the \
             file ($F:5) rather than adding to them: a list is taken whole from where it is \
             given last; give every value with CONDUIT_HEALTH_SOURCES, or add yours to the \
             file",
        ]
    );
}

/// A list of a great many bad items (a generated file gone wrong) names the first
/// hundred and counts the rest.
#[test]
fn a_list_of_very_many_bad_items_names_the_first_hundred() {
    let f = Fixture::new();
    std::fs::write(f.home.authorized_clients(), format!("{}\n", f.router_key)).unwrap();
    let items = vec!["\"\""; 250].join(", ");
    let text = format!("[router]\nbind = \"127.0.0.1:21150\"\nallow = [{items}]\n");
    let lines = router(&f, &text, &[]);
    assert_eq!(lines.len(), 101);
    assert_eq!(
        lines[0],
        "error: router.allow[0]: is empty; remove it from the list ($F:3)"
    );
    assert_eq!(
        lines[99],
        "error: router.allow[99]: is empty; remove it from the list ($F:3)"
    );
    assert_eq!(
        lines[100],
        "error: router.allow: 150 more problems with its items past the 100 named; fix those, \
         then check again"
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

/// What the router refuses at start, `validate` refuses too, in the same words: a
/// directory for the log or the history file, a next key that is the current one.
#[test]
fn what_the_router_refuses_at_start_is_an_error_here() {
    let f = Fixture::new();
    std::fs::write(f.home.authorized_clients(), format!("{}\n", f.router_key)).unwrap();
    let key = f.home.private_key("router");
    let text = format!(
        "[router]\nallow = [\"10.2.0.2:80\"]\nnext_private_key_path = {key:?}\n\
         [api]\nhistory_file = \"$DIR\"\n[logging]\nfile = \"$DIR\"\n"
    )
    .replace("$DIR", &f.dir.path().display().to_string());
    let public = keys::load_private(&key, "router").unwrap().public();
    assert_eq!(
        router(&f, &text, &[]),
        [
            format!(
                "error: router.next_private_key_path: $DIR/home/keys/router.key holds the key \
                 the router presents now ({public}): give it a new key (`conduit init --name \
                 router-next`), or leave it unset once the router has switched to it ($F:3)"
            ),
            "error: api.history_file: $DIR is a directory: give a file in it, such as \
             $DIR/history.jsonl ($F:5)"
                .to_owned(),
            "error: logging.file: $DIR is a directory: give a file in it, such as \
             $DIR/conduit.log ($F:7)"
                .to_owned(),
        ]
    );
    // From the command line too, named there.
    let dir = f.dir.path().display().to_string();
    let sources = f.sources(
        "[router]\nallow = [\"10.2.0.2:80\"]\n",
        &[("CONDUIT_LOGGING_FILE", dir.as_str())],
        &[],
    );
    let report = crate::config::load_router(&sources).unwrap().report;
    assert_eq!(
        f.lines(&report),
        [
            "error: logging.file: $DIR is a directory: give a file in it, such as \
          $DIR/conduit.log (env CONDUIT_LOGGING_FILE)"
        ]
    );
    // A next key of its own is fine.
    keys::generate(&f.home, "router-next", false).unwrap();
    let text = format!(
        "[router]\nallow = [\"10.2.0.2:80\"]\nnext_private_key_path = {:?}\n",
        f.home.private_key("router-next")
    );
    assert_eq!(router(&f, &text, &[]), none());
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

#[test]
fn an_api_address_for_an_api_left_off_is_a_warning() {
    let f = Fixture::new();
    std::fs::write(f.home.authorized_clients(), "").unwrap();
    let warning = "warning: api.bind: the API is off, so this address is not used: turn it on \
                   with enabled = true under [api] (CONDUIT_API_ENABLED=true, or --api / \
                   --api-bind on the command line)";
    let api = |lines: Vec<String>| -> Vec<String> {
        lines.into_iter().filter(|l| l.contains("api.")).collect()
    };
    assert_eq!(
        api(router(&f, "[api]\nbind = \"127.0.0.1:9991\"\n", &[])),
        [format!("{warning} ($F:2)")]
    );
    assert_eq!(
        api(router(&f, "", &[("CONDUIT_API_BIND", "127.0.0.1:9991")])),
        [format!("{warning} (env CONDUIT_API_BIND)")]
    );
    // Off on purpose, or left at its default address: nothing to say.
    let off = "[api]\nenabled = false\nbind = \"127.0.0.1:9991\"\n";
    assert!(api(router(&f, off, &[])).is_empty());
    assert!(api(router(&f, "", &[])).is_empty());
}

/// The API on the router's own port could never listen.
#[test]
fn the_api_needs_a_port_of_its_own() {
    let f = Fixture::new();
    std::fs::write(f.home.authorized_clients(), format!("{}\n", f.router_key)).unwrap();
    let text = |router: &str, api: &str| {
        format!(
            "[router]\nbind = \"{router}\"\nallow = [\"10.2.0.2:80\"]\n[api]\nenabled = true\n\
             token = \"t\"\nbind = \"{api}\"\n"
        )
    };
    let clash = |router: &str, api: &str| {
        format!(
            "error: api.bind: {api} takes the router's own port (router.bind {router}): give \
             the API a port of its own, such as the default 127.0.0.1:9990 ($F:7)"
        )
    };
    for (r, a) in [
        ("127.0.0.1:9999", "127.0.0.1:9999"),
        ("0.0.0.0:9999", "127.0.0.1:9999"),
        ("[::]:9999", "127.0.0.1:9999"),
        ("127.0.0.1:9999", "0.0.0.0:9999"),
    ] {
        let problems: Vec<String> = router(&f, &text(r, a), &[])
            .into_iter()
            .filter(|l| l.contains("api.bind"))
            .collect();
        assert_eq!(problems, [clash(r, a)], "{r} {a}");
    }
    for (r, a) in [
        ("127.0.0.1:9999", "127.0.0.1:9990"),
        ("127.0.0.2:9999", "127.0.0.1:9999"),
        ("0.0.0.0:9999", "[::1]:9999"),
    ] {
        let problems: Vec<String> = router(&f, &text(r, a), &[])
            .into_iter()
            .filter(|l| l.contains("api.bind"))
            .collect();
        assert_eq!(problems, none(), "{r} {a}");
    }
}

/// A list the file gives and the environment or the command line gives again is
/// replaced whole, not added to: said, since `--allow X` on a router whose file
/// allows A and B allows X alone.
#[test]
fn a_list_of_the_file_given_again_elsewhere_is_replaced_and_said() {
    let f = Fixture::new();
    let text = "[router]\ntransport = \"plain\"\nallow = [\"10.2.0.2:80\", \"10.2.0.3:80\"]\n";
    assert_eq!(
        router(&f, text, &[("CONDUIT_ROUTER_ALLOW", "10.9.9.9:1")]),
        [
            "warning: router.allow: CONDUIT_ROUTER_ALLOW replaces the 2 values of the file \
             ($F:3) rather than adding to them: a list is taken whole from where it is given \
             last; give every value with CONDUIT_ROUTER_ALLOW, or add yours to the file"
        ]
    );
    let loaded =
        crate::config::load_router(&f.sources(text, &[], &["router.allow=10.9.9.9:1"])).unwrap();
    assert_eq!(loaded.config.router.allow, ["10.9.9.9:1"]);
    assert_eq!(
        f.lines(&loaded.report),
        [
            "warning: router.allow: --set router.allow replaces the 2 values of the file \
             ($DIR/conduit.toml:3) rather than adding to them: a list is taken whole from \
             where it is given last; give every value with --set router.allow, or add yours \
             to the file"
        ]
    );
    // Not given again: nothing to say.
    assert_eq!(router(&f, text, &[]), none());
}
