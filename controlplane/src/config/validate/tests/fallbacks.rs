//! A client's other routers: `router.fallbacks`, each listed once, `balance`, and
//! `fallback_keys`.

use conduit_proto::KeyPair;

use super::{check, none};
use crate::config::tests::Fixture;

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
    // An item that is no string does not hide the ones after it.
    let text = f.client_text("").replacen(
        "[[tunnels]]",
        "fallbacks = [1, \"r:http\", \"\"]\n[[tunnels]]",
        1,
    );
    assert_eq!(
        check(&f, &text),
        [
            "error: router.fallbacks[0]: expected a string, found an integer ($F:5)",
            "error: router.fallbacks[1]: \"r:http\": \"http\" is not a port (1-65535); use \
             HOST:PORT such as 10.2.0.3:9999 or router-b.internal:9999 ($F:5)",
            "error: router.fallbacks[2]: is empty; remove it from the list ($F:5)",
        ]
    );
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
    // Failing back and standby checks are failover's: a balancing tunnel has neither.
    let text = f.client_text("").replacen(
        "[[tunnels]]",
        "balance = true\nfallbacks = [\"10.2.0.3:9999\"]\nfailback_secs = 10\n\
         standby_check_secs = 5\n[[tunnels]]",
        1,
    );
    assert_eq!(
        check(&f, &text),
        [
            "warning: router.failback_secs: a balancing tunnel (router.balance = true) uses \
             every router at once and has none to move back to: remove it, or set balance = \
             false to fail over instead ($F:7)",
            "warning: router.standby_check_secs: a balancing tunnel (router.balance = true) \
             keeps no router on standby: remove it, or set balance = false to fail over \
             instead ($F:8)",
        ]
    );
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
