//! TLS cipher suites chosen by the operator: the router's order decides, and a
//! tunnel that offers none of the suites the router accepts is refused, told which
//! setting to change.

use crate::harness::{Engine, Home, assert_code};
use crate::sources;
use crate::users::assert_echo;

#[test]
fn the_routers_cipher_suites_decide_and_a_tunnel_offering_none_of_them_stops() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let source = sources::echo().to_string();
    let accepted = "TLS_AES_256_GCM_SHA384,TLS_CHACHA20_POLY1305_SHA256";
    let (router, raddr) = home.router_with(
        engine,
        std::slice::from_ref(&source),
        &["--cipher-suites", accepted],
    );

    // Offering every suite, AES-128-GCM first: the router's first choice is used.
    let (tunnel, taddr) = home.tunnel(engine, raddr, &source);
    tunnel.wait_stderr("connected to router");
    assert!(
        tunnel.stderr().contains("cipher=TLS_AES_256_GCM_SHA384"),
        "{}",
        tunnel.stderr()
    );
    router.wait_stderr("cipher=TLS_AES_256_GCM_SHA384");
    assert_echo(taddr, b"over AES-256-GCM");
    let status = home.ok(&["status"]);
    assert!(
        status.contains(&format!("router {raddr} connected since "))
            && status.contains(" over TLS_AES_256_GCM_SHA384;"),
        "{status}"
    );

    // Offering ChaCha20-Poly1305 alone, which the router accepts too.
    let (chacha, caddr) = home.tunnel_with(
        engine,
        raddr,
        &source,
        &[
            "--name",
            "chacha",
            "--cipher-suites",
            "tls_chacha20_poly1305_sha256",
        ],
    );
    chacha.wait_stderr("cipher=TLS_CHACHA20_POLY1305_SHA256");
    assert_echo(caddr, b"over ChaCha20-Poly1305");
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&home.ok(&["status", "--format", "json"])).unwrap();
    let mut suites: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap(),
                r["link"]["cipher_suite"].as_str().unwrap(),
            )
        })
        .collect();
    suites.sort();
    assert_eq!(
        suites,
        [
            ("chacha", "TLS_CHACHA20_POLY1305_SHA256"),
            ("tunnel", "TLS_AES_256_GCM_SHA384")
        ]
    );

    // Offering AES-128-GCM alone: refused at the handshake, for good.
    let mut refused = home.tunnel_proc(
        engine,
        raddr,
        &source,
        &[
            "--name",
            "aes128",
            "--cipher-suites",
            "TLS_AES_128_GCM_SHA256",
        ],
    );
    let status = refused.wait_exit();
    let err = refused.stderr();
    assert_code(status, 77, &err);
    assert!(
        err.contains(&format!(
            "conduit: error: router {raddr} refused the TLS handshake: it accepts none of the \
             cipher suites this tunnel offers (TLS_AES_128_GCM_SHA256); offer one it accepts \
             (--cipher-suites, or [security] cipher_suites in the file), or leave the setting \
             out to offer all (a server that is not a Conduit router may refuse it the same \
             way: check --router)"
        )),
        "{err}"
    );
    router.wait_stderr(&format!(
        "TLS handshake refused: the client offers none of the cipher suites this router \
         accepts ({accepted})"
    ));
    // The others carry on.
    assert_echo(taddr, b"still there");
}

#[test]
fn an_unknown_cipher_suite_is_a_usage_error_naming_the_three() {
    let home = Home::with_keys();
    let (status, _, err) = home.run(&[
        "router",
        "--bind",
        "127.0.0.1:0",
        "--cipher-suites",
        "TLS_AES_256_GCM_SHA384,TLS_RSA_WITH_RC4_128_SHA",
    ]);
    assert_code(status, 64, &err);
    assert!(
        err.contains(
            "unknown cipher suite \"TLS_RSA_WITH_RC4_128_SHA\": Conduit speaks TLS 1.3 only, \
             with TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384 and \
             TLS_CHACHA20_POLY1305_SHA256"
        ),
        "{err}"
    );
}
