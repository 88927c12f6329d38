//! Everything that must be refused, and said clearly: wrong keys, forbidden or dead
//! sources, a router that is not there, an address already taken.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

use serde_json::{Value, json};

use crate::both_engines;
use crate::harness::{DEADLINE, Engine, Home, assert_code, dead_port};
use crate::http::wait_for;
use crate::ops::{get, router_api};
use crate::sources;

mod key_files;

/// What a user sends first in these tests.
const GET: &[u8] = b"GET / HTTP/1.0\r\n\r\n";

/// Connects through the tunnel, sends `first`, and expects the connection to be
/// closed on us without any byte arriving.
fn expect_closed_without_data(addr: std::net::SocketAddr, first: &[u8]) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    let _ = c.write_all(first);
    let started = Instant::now();
    let mut buf = [0u8; 64];
    match c.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("expected the connection closed, got {n} bytes"),
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
            ),
            "expected a reset, got {e}"
        ),
    }
    assert!(
        started.elapsed() < DEADLINE,
        "closed only after the read timeout"
    );
}

both_engines!(
    a_wrong_router_key_is_refused_naming_both_keys,
    |engine: Engine| {
        let home = Home::with_keys();
        let (_router, raddr) = home.router(engine, &["127.0.0.1:1".into()]);
        home.ok(&["init", "--name", "impostor"]);
        let expected = home.public_key("impostor");
        let actual = home.public_key("router");
        let mut client = home.spawn(&[
            "start",
            "--foreground",
            "--router",
            &raddr.to_string(),
            "--router-key",
            &expected,
            "--source",
            "127.0.0.1:1",
            "--bind",
            "127.0.0.1:0",
            "--io-engine",
            engine.flag(),
        ]);
        let status = client.wait_exit();
        let err = client.stderr();
        assert_code(status, 77, &err);
        assert!(
            err.contains(&format!(
                "router key mismatch: expected {expected}, got {actual}"
            )),
            "{err}"
        );
        assert!(err.contains("update `--router-key`"), "{err}");
    }
);

both_engines!(
    an_unknown_client_key_is_refused_and_logged_by_the_router,
    |engine: Engine| {
        let home = Home::with_keys();
        let stranger = home.public_key("client");
        // The router admits someone else.
        home.ok(&["init", "--name", "friend"]);
        std::fs::write(
            home.path().join("authorized_clients"),
            format!("# only friends\n{}\n", home.public_key("friend")),
        )
        .unwrap();
        let (router, raddr) = home.router(engine, &["127.0.0.1:1".into()]);
        let mut client = home.tunnel_proc(engine, raddr, "127.0.0.1:1", &[]);
        let status = client.wait_exit();
        let err = client.stderr();
        assert_code(status, 77, &err);
        assert!(
            err.contains(&format!(
                "the router refused this client's key {stranger}; add this line to the \
                 router's authorized_clients file: {stranger} client (the name after the key \
                 is what the router's logs and NAME= allow rules call this client: choose your \
                 own; if the key is there already, its expires= time has passed: extend or \
                 remove that expires=)\n"
            )),
            "{err}"
        );
        router.wait_stderr(&format!("refused unknown client key {stranger}"));
    }
);

/// A tunnel started with a key of another name (`--key keys/other.key`) is told the
/// line of that key to add, not pointed at `conduit keys show`, which shows client.pub.
#[test]
fn an_unknown_key_of_another_name_is_refused_with_its_own_line() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    home.ok(&["init", "--name", "other"]);
    let other = home.public_key("other");
    let (_router, raddr) = home.router(engine, &["127.0.0.1:1".into()]);
    let key = home.key("other.key");
    let mut client = home.tunnel_proc(
        engine,
        raddr,
        "127.0.0.1:1",
        &["--key", key.to_str().unwrap()],
    );
    let status = client.wait_exit();
    let err = client.stderr();
    assert_code(status, 77, &err);
    assert!(
        err.contains(&format!(
            "the router refused this client's key {other}; add this line to the router's \
             authorized_clients file: {other} other (the name after the key is what the \
             router's logs and NAME= allow rules call this client: choose your own; if the key \
             is there already, its expires= time has passed: extend or remove that \
             expires=)\n"
        )),
        "{err}"
    );
}

both_engines!(
    an_unreachable_source_closes_the_user_promptly_with_the_reason_on_both_sides,
    |engine: Engine| {
        let home = Home::with_keys();
        let source = format!("127.0.0.1:{}", dead_port());
        let (router, raddr) = home.router(engine, std::slice::from_ref(&source));
        let (tunnel, taddr) = home.tunnel(engine, raddr, &source);
        expect_closed_without_data(taddr, GET);
        router.wait_stderr(&format!("the router could not connect to source {source}"));
        tunnel.wait_stderr(&format!(
            "the router could not open the source: the router could not connect to source {source}"
        ));
        // The tunnel keeps serving: a second attempt gets the same clear refusal.
        expect_closed_without_data(taddr, GET);
    }
);

/// The router checks the tunnel's source when the tunnel links up: a tunnel it would
/// never serve stops at once, with the router's reason and its fix.
#[test]
fn a_tunnel_whose_source_the_router_does_not_allow_is_refused_at_its_link() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let source = sources::echo();
    let (router, raddr, api) = crate::ops::router_api(&home, &["127.0.0.1:1-2".into()], &[]);
    let mut tunnel = home.tunnel_proc(engine, raddr, &source.to_string(), &[]);
    let status = tunnel.wait_exit();
    let err = tunnel.stderr();
    assert_code(status, 77, &err);
    let why = format!(
        "source {source} is not allowed by the router's policy; to allow it, add `--allow {source}` to the router"
    );
    assert!(
        err.contains(&format!("the router refused this tunnel: {why}")),
        "{err}"
    );
    router.wait_stderr(&format!("refused: {why}"));
    // Counted as the policy's refusal, not as a key the router does not know.
    let errors = crate::ops::get(&api, "/api/v1/stats/connections")["data"]["errors"].clone();
    assert_eq!(errors["policy_refused"], 1, "{errors}");
    assert_eq!(errors["unauthorized"], 0, "{errors}");
    // Every member of a balanced source must be allowed.
    let allowed = sources::echo();
    let (router, raddr) = home.router(engine, &[allowed.to_string()]);
    let both = format!("{allowed},{source}");
    let mut tunnel = home.tunnel_proc(engine, raddr, &both, &[]);
    let status = tunnel.wait_exit();
    let err = tunnel.stderr();
    assert_code(status, 77, &err);
    assert!(
        err.contains(&format!("the router refused this tunnel: {why}")),
        "{err}"
    );
    router.wait_stderr(&why);
}

/// Sources given by name at the link: one a name rule allows is admitted without a
/// lookup; one that resolves outside the rules is refused; one that does not resolve
/// is let through (it may resolve later), and its streams are refused with the reason.
#[test]
fn sources_by_name_are_checked_at_the_link_as_the_streams_would_be() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let (router, raddr) = home.router(
        engine,
        &[
            "db.internal:5432".into(),
            "*:7".into(),
            "10.9.9.9:6379".into(),
        ],
    );
    let (_by_name, _) = home.tunnel_with(engine, raddr, "db.internal:5432", &["--name", "db"]);
    let mut outside = home.tunnel_proc(engine, raddr, "localhost:6379", &["--name", "cache"]);
    let status = outside.wait_exit();
    let err = outside.stderr();
    assert_code(status, 77, &err);
    assert!(
        err.contains(
            "the router refused this tunnel: source localhost:6379 is not allowed by the \
             router's policy (it resolves to an address outside the allowed ranges)"
        ),
        "{err}"
    );
    let (unresolved, uaddr) = home.tunnel_with(
        engine,
        raddr,
        "no-such-host.invalid:7",
        &["--name", "later"],
    );
    expect_closed_without_data(uaddr, GET);
    unresolved.wait_stderr("the router cannot resolve source no-such-host.invalid:7");
    router.wait_stderr("the router cannot resolve source no-such-host.invalid:7");
}

// A source named by host name is looked up off the workers and served; the
// second stream uses the looked-up answer.
both_engines!(a_source_named_by_host_name_is_served, |engine: Engine| {
    let home = Home::with_keys();
    let echo = sources::echo();
    let named = format!("localhost:{}", echo.port());
    // Hosts files differ on whether localhost is ::1 too; the echo listens on the
    // IPv4 one, and a refused ::1 fails over to it.
    let allow = [
        format!("127.0.0.1:{}", echo.port()),
        format!("[::1]:{}", echo.port()),
    ];
    let (_router, raddr) = home.router(engine, &allow);
    let (_tunnel, taddr) = home.tunnel(engine, raddr, &named);
    crate::users::assert_echo(taddr, b"first, looked up");
    crate::users::assert_echo(taddr, b"second, from the cache");
});

#[test]
fn a_router_that_is_not_there_is_retried_and_users_fail_fast() {
    let home = Home::with_keys();
    let router = format!("127.0.0.1:{}", dead_port()).parse().unwrap();
    let tunnel = home.tunnel_proc(Engine::Epoll, router, "127.0.0.1:1", &[]);
    let line = tunnel.wait_stdout("listening on");
    tunnel.wait_stderr(&format!("cannot reach router {router}"));
    tunnel.wait_stderr("retrying in");
    expect_closed_without_data(crate::harness::addr_in(&line), GET);
    tunnel.wait_stderr("the router is unreachable (the tunnel is reconnecting)");
}

#[test]
fn a_bind_address_in_use_is_refused_with_the_fix() {
    let home = Home::with_keys();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (status, err) = start_to_nowhere(&home, &addr, &[]);
    assert_code(status, 69, &err);
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    assert!(err.contains("pick another --bind"), "{err}");
}

/// Every address a process listens on, taken by another, is "unavailable" (69) like
/// `start --bind`, with the flag to change in the message.
#[test]
fn router_api_and_metrics_addresses_in_use_exit_69_with_the_fix() {
    let home = Home::with_keys();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();

    let (status, _, err) = home.run(&["router", "--bind", &addr]);
    assert_code(status, 69, &err);
    assert!(
        err.contains(&format!(
            "cannot listen on {addr}: Address already in use (os error 98); \
             something already listens there: pick another --bind"
        )),
        "{err}"
    );

    let (status, _, err) = home.run(&[
        "router",
        "--bind",
        "127.0.0.1:0",
        "--api-bind",
        &addr,
        "--api-no-auth",
    ]);
    assert_code(status, 69, &err);
    assert!(
        err.contains(&format!(
            "cannot listen for the API on {addr}: Address already in use (os error 98); \
             choose another --api-bind (api.bind)"
        )),
        "{err}"
    );

    let (status, err) = start_to_nowhere(&home, "127.0.0.1:0", &["--metrics-bind", &addr]);
    assert_code(status, 69, &err);
    assert!(
        err.contains(&format!(
            "cannot serve metrics on {addr}: Address already in use (os error 98); \
             choose another --metrics-bind"
        )),
        "{err}"
    );
}

#[test]
fn missing_keys_and_bad_addresses_are_usage_errors() {
    let home = Home::empty();
    let (status, _, err) = home.run(&["router", "--bind", "127.0.0.1:0"]);
    assert_code(status, 64, &err);
    assert!(err.contains("conduit init --name router"), "{err}");

    let (status, _, err) = home.run(&[
        "start",
        "--foreground",
        "--router",
        "nowhere",
        "--router-key",
        "x",
        "--source",
        "a:1",
        "--bind",
        "127.0.0.1:0",
    ]);
    assert_code(status, 64, &err);
    assert!(
        err.contains("invalid --router \"nowhere\": it has no port; expected HOST:PORT"),
        "{err}"
    );

    // A host name to listen on, refused as a file refuses it.
    let (status, _, err) = home.run(&[
        "start",
        "--foreground",
        "--router",
        "127.0.0.1:9",
        "--router-key",
        "x",
        "--source",
        "a:1",
        "--bind",
        "localhost:8080",
    ]);
    assert_code(status, 64, &err);
    assert_eq!(
        err,
        "conduit: error: invalid --bind \"localhost:8080\": a host name, where an IP address \
         must be; expected ADDRESS:PORT such as 127.0.0.1:8080 or 0.0.0.0:80\n"
    );

    // The same router twice: failover would retry it, balancing link it twice.
    let (status, _, err) = home.run(&[
        "start",
        "--foreground",
        "--router",
        "127.0.0.1:9,127.0.0.1:9",
        "--router-key",
        "x",
        "--source",
        "a:1",
        "--bind",
        "127.0.0.1:0",
    ]);
    assert_code(status, 64, &err);
    assert_eq!(
        err,
        "conduit: error: --router names 127.0.0.1:9 twice: list each once\n"
    );

    // A comma too many: named, not passed over.
    let (status, _, err) = home.run(&[
        "start",
        "--foreground",
        "--router",
        "127.0.0.1:9",
        "--router-key",
        "x",
        "--source",
        "a:1,",
        "--bind",
        "127.0.0.1:0",
    ]);
    assert_code(status, 64, &err);
    assert_eq!(
        err,
        "conduit: error: --source \"a:1,\" has an empty member (a comma too many); remove it\n"
    );

    // More sources than the router balances across: refused here, not retried there.
    let many: Vec<String> = (0..65).map(|i| format!("127.0.0.1:{}", 8000 + i)).collect();
    let many = many.join(",");
    let (status, _, err) = home.run(&[
        "start",
        "--router",
        "127.0.0.1:9",
        "--router-key",
        "x",
        "--source",
        &many,
        "--bind",
        "127.0.0.1:0",
    ]);
    assert_code(status, 64, &err);
    assert_eq!(
        err,
        "conduit: error: --source names 65 members; a source may name at most 64: split it \
         across tunnels, or put a load balancer in front of the rest\n"
    );
}

/// Key names and key files that are not what they must be: each refusal names the
/// problem and the command that fixes it.
#[test]
fn unknown_key_names_and_garbage_key_files_say_how_to_make_a_key() {
    let home = Home::with_keys();
    let (status, out, err) = home.run(&["keys", "show", "--name", "nope"]);
    assert_code(status, 64, &err);
    assert_eq!(out, "");
    assert_eq!(
        err,
        format!(
            "conduit: error: no key named \"nope\" ({} does not exist): create it with \
             `conduit init --name nope`\n",
            home.key("nope.pub").display()
        )
    );
    let (status, out, err) = home.run(&["keys", "show", "--name", "../keys/client"]);
    assert_code(status, 64, &err);
    assert_eq!(out, "");
    assert_eq!(
        err,
        "conduit: error: invalid key name \"../keys/client\": use 1-64 letters, digits, '-', \
         '_' or '.' (not starting with '.' or '-')\n"
    );

    let garbage = home.path().join("garbage.key");
    std::fs::write(&garbage, "this is not a key\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&garbage, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let (status, err) =
        start_to_nowhere(&home, "127.0.0.1:0", &["--key", garbage.to_str().unwrap()]);
    assert_code(status, 64, &err);
    assert_eq!(
        err,
        format!(
            "conduit: error: {} is not a Conduit private key: it is not a PEM private key \
             (-----BEGIN PRIVATE KEY-----); make one with `conduit init --name client` (a \
             PKCS#8 Ed25519 key in PEM) or pass another --key PATH\n",
            garbage.display()
        )
    );

    // Bytes that are not text, as key, pinned key and authorized clients.
    std::fs::write(&garbage, [0xff, 0xfe, 0x00, 0x80, 0x16, 0x03]).unwrap();
    let (status, err) =
        start_to_nowhere(&home, "127.0.0.1:0", &["--key", garbage.to_str().unwrap()]);
    assert_code(status, 64, &err);
    assert_eq!(
        err,
        format!(
            "conduit: error: {} is not a Conduit private key: it is not text (a key file is \
             PEM: -----BEGIN PRIVATE KEY-----); make one with `conduit init --name client` (a \
             PKCS#8 Ed25519 key in PEM) or pass another --key PATH\n",
            garbage.display()
        )
    );
    let (status, _, err) = home.run(&[
        "start",
        "--foreground",
        "--router",
        "127.0.0.1:9",
        "--router-key",
        garbage.to_str().unwrap(),
        "--source",
        "127.0.0.1:9",
        "--bind",
        "127.0.0.1:0",
    ]);
    assert_code(status, 64, &err);
    assert_eq!(
        err,
        format!(
            "conduit: error: --router-key: {} is not a public key file (it is not text): give \
             the .pub file `conduit init` wrote, or the key itself (ed25519:…)\n",
            garbage.display()
        )
    );

    // A spoiled .pub beside its private key: written anew once deleted.
    std::fs::write(home.key("client.pub"), "-----BEGIN junk\n").unwrap();
    let (status, _, err) = home.run(&["keys", "show"]);
    assert_code(status, 64, &err);
    assert_eq!(
        err,
        format!(
            "conduit: error: public key in {pubkey}: invalid public key \"-----BEGIN\": \
             expected the form ed25519:<base64>, as `conduit init` prints; delete {pubkey} and \
             run this again: it is written anew from {key}\n",
            pubkey = home.key("client.pub").display(),
            key = home.key("client.key").display()
        )
    );
}

#[test]
fn init_refuses_to_overwrite_and_keys_show_repeats_the_key() {
    let home = Home::empty();
    let first = home.ok(&["init"]);
    assert!(
        first.starts_with("ed25519:") && first.trim_end().ends_with(" client"),
        "{first}"
    );
    let (status, _, err) = home.run(&["init"]);
    assert_code(status, 64, &err);
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(home.ok(&["keys", "show"]), first);
    let (status, again, err) = home.run(&["init", "--force"]);
    assert_code(status, 0, &err);
    assert_ne!(again, first);
    assert!(
        err.contains(
            "conduit: note: the old key client is gone; a router or tunnel running with it \
             goes on with it until restarted, and routers admit the old public key only: add \
             the new line to each router's authorized_clients"
        ),
        "{err}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(home.key("client.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

/// `conduit start --foreground` to a router that is not there (127.0.0.1:9), for
/// a source that is not there, binding `bind`, with `extra` flags; its exit status
/// and stderr. What it refuses, it refuses before reaching for the router.
fn start_to_nowhere(home: &Home, bind: &str, extra: &[&str]) -> (std::process::ExitStatus, String) {
    let key = home.key("router.pub");
    let mut args = vec![
        "start",
        "--foreground",
        "--router",
        "127.0.0.1:9",
        "--router-key",
        key.to_str().unwrap(),
        "--source",
        "127.0.0.1:1",
        "--bind",
        bind,
    ];
    args.extend_from_slice(extra);
    let (status, _, err) = home.run(&args);
    (status, err)
}

/// A directory, or the public key, given as the router's private key is named as
/// such, before its mode (a directory's 0755 is no reason to chmod it).
#[test]
fn a_router_given_a_directory_or_a_public_key_for_its_key_says_which_file_to_give() {
    let home = Home::with_keys();
    let dir = tempfile::tempdir().unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let router = |key: &std::path::Path| {
        home.run(&[
            "router",
            "--bind",
            "127.0.0.1:0",
            "--key",
            key.to_str().unwrap(),
        ])
    };
    let (status, _, err) = router(dir.path());
    assert_code(status, 64, &err);
    assert_eq!(
        err,
        format!(
            "conduit: error: router.private_key_path: private key {} is a directory; give the \
             private key file, e.g. $CONDUIT_HOME/keys/router.key (`conduit init --name router` \
             makes one) (cli --key)\n",
            dir.path().display()
        )
    );
    let (status, _, err) = router(&home.key("router.pub"));
    assert_code(status, 64, &err);
    assert_eq!(
        err,
        format!(
            "conduit: error: router.private_key_path: {} is a public key, not a private key; \
             give the .key file beside it, {} (cli --key)\n",
            home.key("router.pub").display(),
            home.key("router.key").display()
        )
    );
}

/// `--log-level warning` logs warnings (it is `warn`), and a single word that is no
/// level is refused with the levels, instead of silently logging nothing.
#[test]
fn a_log_level_that_is_no_level_is_refused_and_warning_is_warn() {
    let home = Home::with_keys();
    let (status, _, err) = home.run(&["router", "--bind", "127.0.0.1:0", "--log-level", "verbose"]);
    assert_code(status, 64, &err);
    assert_eq!(
        err,
        "conduit: error: unknown log level verbose (--log-level, CONDUIT_LOG_LEVEL): use error, \
         warn, info, debug or trace, or a filter like conduit=debug\n"
    );
    // A router without --allow warns at start: with `warning`, the warning is logged.
    let mut router = home.spawn(&["router", "--bind", "127.0.0.1:0", "--log-level", "warning"]);
    router.wait_stdout("router listening on");
    router.wait_stderr("WARN router.allow: no rule: clients can connect but may open no source");
    assert_eq!(router.stderr_count(" INFO "), 0, "{}", router.stderr());
    assert_code(router.stop(), 0, &router.stderr());
}

/// `start --workers` is checked as the router's is (0-1024), before anything listens,
/// instead of failing later with "Too many open files".
#[test]
fn start_refuses_a_worker_count_out_of_range() {
    let home = Home::with_keys();
    let (status, _, err) = home.run(&[
        "start",
        "--foreground",
        "--router",
        "127.0.0.1:1",
        "--source",
        "127.0.0.1:2",
        "--bind",
        "127.0.0.1:0",
        "--workers",
        "100000",
    ]);
    assert_code(status, 64, &err);
    assert_eq!(
        err.lines().next(),
        Some(
            "error: invalid value '100000' for '--workers <N>': 100000 is out of range; \
             use 0-1024"
        ),
        "{err}"
    );
    // The help says what UDP rides: a channel over either transport.
    let help = home.ok(&["start", "--help"]);
    assert!(
        help.contains("channel of its own to the router (TLS, or plain with --transport"),
        "{help}"
    );
}

/// `keys show --name r` with r.pub deleted derives the key from r.key and writes
/// r.pub again, instead of suggesting `init --name r` (which refuses: r.key exists).
/// And `init` says what a router's key is for, not where client keys go.
#[test]
fn keys_show_writes_a_deleted_public_key_again_from_the_private_key() {
    let home = Home::empty();
    let (status, line, err) = home.run(&["init", "--name", "router"]);
    assert_code(status, 0, &err);
    assert!(
        err.ends_with(
            "public key (tunnels pin it: give this line to each tunnel as --router-key (quoted), or \
             [router] public_key in its file):\n"
        ),
        "{err}"
    );
    let (_, _, err) = home.run(&["init", "--name", "r"]);
    assert!(
        err.ends_with(
            "public key (a client's: add this line to the router's authorized_clients to admit \
             it; a router's: tunnels pin it with --router-key):\n"
        ),
        "{err}"
    );
    let r_line = std::fs::read_to_string(home.key("r.pub")).unwrap();
    std::fs::remove_file(home.key("r.pub")).unwrap();
    let (status, out, err) = home.run(&["keys", "show", "--name", "r"]);
    assert_code(status, 0, &err);
    assert_eq!(out, r_line);
    assert_eq!(
        err,
        format!(
            "{} was missing: written again from {}\n",
            home.key("r.pub").display(),
            home.key("r.key").display()
        )
    );
    assert_eq!(std::fs::read_to_string(home.key("r.pub")).unwrap(), r_line);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(home.key("r.pub"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
    }
    assert_eq!(home.ok(&["keys", "show", "--name", "router"]), line);
}

/// The client sends a user's first bytes right behind the `Open`, without waiting
/// for the router's answer. When the router refuses the open (here: its limit of
/// one stream is reached), those bytes reached no source, and neither end counts
/// them: the tunnel's and the router's byte counters hold exactly what the one
/// accepted connection moved.
fn bytes_of_refused_opens_are_not_counted(engine: Engine, transport: &[&str]) {
    let home = Home::with_keys();
    let source = sources::echo();
    let mut router_args = vec!["--max-connections", "1"];
    router_args.extend_from_slice(transport);
    let (_router, raddr, api) = router_api(&home, &[source.to_string()], &router_args);
    // Kernel TLS waits for the router's answer before relaying: userspace TLS is
    // the path that sends bytes ahead of it.
    let mut tunnel_args = transport.to_vec();
    if transport.is_empty() {
        tunnel_args.extend(["--kernel-tls", "false"]);
    }
    let (_tunnel, taddr) = home.tunnel_with(engine, raddr, &source.to_string(), &tunnel_args);

    // The one stream the router accepts, held open: 5 bytes each way.
    let mut held = TcpStream::connect(taddr).unwrap();
    held.set_read_timeout(Some(DEADLINE)).unwrap();
    held.write_all(b"hello").unwrap();
    let mut back = [0u8; 5];
    held.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hello");

    // Three users the router refuses, each with 1,000 bytes sent before the answer.
    const REFUSED: u64 = 3;
    for _ in 0..REFUSED {
        expect_closed_without_data(taddr, &[b'x'; 1000]);
    }

    let tunnel = wait_for("the tunnel to count the refused connections", || {
        let out = home.ok(&["stats", "--format", "json"]);
        let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
        (rows[0]["connections"]["failed"] == REFUSED).then(|| rows[0].clone())
    });
    assert_eq!(tunnel["bytes"], json!({"in": 5, "out": 5}), "{tunnel:#}");
    let conns = crate::manage::list_json(&home)[0]["connections"].clone();
    assert_eq!(
        conns.as_array().map(|c| c.len()),
        Some(1),
        "only the held connection is open: {conns:#}"
    );
    assert_eq!(conns[0]["bytes_in"], 5, "{conns:#}");
    assert_eq!(conns[0]["bytes_out"], 5, "{conns:#}");

    // The router counts a chunk just after relaying it: wait for the echo's.
    let router = wait_for("the router to count the refused streams", || {
        let t = get(&api, "/api/v1/stats/traffic")["data"].clone();
        (t["connections"]["failed"] == REFUSED && t["bytes"]["out"] == 5).then_some(t)
    });
    assert_eq!(router["bytes"], json!({"in": 5, "out": 5}), "{router:#}");
    assert_eq!(router["connections"]["active"], 1, "{router:#}");

    // The held connection was never disturbed.
    held.write_all(b"again").unwrap();
    held.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"again");
}

both_engines!(bytes_of_refused_opens_are_not_counted_over_tls, |engine| {
    bytes_of_refused_opens_are_not_counted(engine, &[])
});

both_engines!(
    bytes_of_refused_opens_are_not_counted_over_the_plain_transport,
    |engine| bytes_of_refused_opens_are_not_counted(engine, crate::plain::PLAIN)
);

/// `--alert-after` with no alert URL would change nothing: refused, as a UDP setting
/// on a TCP tunnel is.
#[test]
fn alert_after_without_an_alert_url_is_a_usage_error() {
    let home = Home::with_keys();
    let (status, err) = start_to_nowhere(&home, "127.0.0.1:0", &["--alert-after", "5"]);
    assert_code(status, 64, &err);
    assert_eq!(
        err,
        "conduit: error: --alert-after applies to the alerts a tunnel sends: add \
         --alert-webhook URL or --alert-slack URL, or leave it out\n"
    );
}

/// A UDP setting on a TCP tunnel is refused: `--protocol udp` was most likely
/// forgotten, and the tunnel would otherwise run without what was asked.
#[test]
fn a_udp_setting_on_a_tcp_tunnel_is_a_usage_error() {
    let home = Home::with_keys();
    for (flag, value) in [("--udp-idle-timeout", "5"), ("--udp-max-new-flows", "10")] {
        let (status, err) = start_to_nowhere(&home, "127.0.0.1:0", &[flag, value]);
        assert_code(status, 64, &err);
        assert_eq!(
            err,
            format!(
                "conduit: error: {flag} applies to UDP tunnels only: add --protocol udp, or \
                 leave it out\n"
            )
        );
    }
}

/// The line `conduit init` prints for tunnels to pin, given unquoted: its comment
/// becomes an argument of its own, and the refusal says so.
#[test]
fn an_unquoted_key_line_is_refused_with_how_to_quote_it() {
    let home = Home::with_keys();
    let line = std::fs::read_to_string(home.key("router.pub")).unwrap();
    let (key, comment) = line.trim().split_once(' ').unwrap();
    let (status, _, err) = home.run(&[
        "start",
        "--foreground",
        "--router",
        "127.0.0.1:9",
        "--router-key",
        key,
        comment,
        "--source",
        "127.0.0.1:1",
        "--bind",
        "127.0.0.1:0",
    ]);
    assert_code(status, 64, &err);
    assert!(
        err.starts_with(&format!("error: unexpected argument '{comment}' found\n")),
        "{err}"
    );
    assert!(
        err.ends_with(&format!(
            "\nnote: `{comment}` looks like the comment of the router key's line: quote the \
             whole line (--router-key \"{key} {comment}\"), give the key alone, or give the path \
             of the router's .pub file\n"
        )),
        "{err}"
    );
}

/// The stream idle timeout on a UDP tunnel is refused: its flows end by
/// `--udp-idle-timeout`.
#[test]
fn a_stream_idle_timeout_on_a_udp_tunnel_is_a_usage_error() {
    let home = Home::with_keys();
    let udp = ["--protocol", "udp", "--stream-idle-timeout", "5"];
    let (status, err) = start_to_nowhere(&home, "127.0.0.1:0", &udp);
    assert_code(status, 64, &err);
    assert_eq!(
        err,
        "conduit: error: --stream-idle-timeout applies to TCP tunnels only (a UDP flow ends \
         after --udp-idle-timeout): leave it out\n"
    );
}

/// A rule in an IPv4-mapped IPv6 form allows what it maps, as a target in that form
/// is checked as the IPv4 address it is; a refusal offers the rule in IPv4 form.
#[test]
fn an_ipv4_mapped_rule_allows_its_source_and_refusals_offer_the_ipv4_rule() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let source = sources::echo();
    let mapped = format!("[::ffff:127.0.0.1]:{}", source.port());
    let (_router, raddr) = home.router(engine, std::slice::from_ref(&mapped));
    let (_tunnel, taddr) = home.tunnel(engine, raddr, &mapped);
    crate::users::assert_echo(taddr, b"through a mapped rule");
    let (_plain, plain) = home.tunnel_with(engine, raddr, &source.to_string(), &["--name", "v4"]);
    crate::users::assert_echo(plain, b"the same source in IPv4 form");

    let other = format!("[::ffff:127.0.0.1]:{}", dead_port());
    let mut refused = home.tunnel_proc(engine, raddr, &other, &["--name", "other"]);
    let status = refused.wait_exit();
    let err = refused.stderr();
    assert_code(status, 77, &err);
    let port = other.rsplit_once(':').unwrap().1;
    assert!(
        err.contains(&format!(
            "the router refused this tunnel: source {other} is not allowed by the router's \
             policy; to allow it, add `--allow 127.0.0.1:{port}` to the router"
        )),
        "{err}"
    );
}

/// A rule for every address and port makes the router an open proxy into its
/// network: it runs, and says so at start, once (as `config validate` does).
#[test]
fn a_rule_for_every_address_and_port_is_warned_of_at_start() {
    let home = Home::with_keys();
    let (router, _) = home.router(Engine::Epoll, &["127.0.0.1:80".into(), "*:*".into()]);
    router.wait_stderr(
        "WARN router.allow[1]: allow rule `*:*` lets every client reach every address on every port the router can \
         reach: its own loopback services and API, cloud metadata (169.254.169.254), the whole \
         network around it; allow only the sources clients need, by address and port \
         (10.2.0.2:8080), network and port (10.2.0.0/24:5432) or name (db.internal:5432)",
    );
    assert_eq!(
        router.stderr_count("allow rule `"),
        1,
        "{}",
        router.stderr()
    );
}
