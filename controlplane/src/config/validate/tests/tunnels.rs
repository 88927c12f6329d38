//! `[[tunnels]]` tables: addresses, source lists, names, binds that clash, UDP
//! tunnels, the PROXY header and `allow_from`.

use super::{check, none};
use crate::config::tests::Fixture;

#[test]
fn bad_addresses_are_refused_with_examples() {
    let f = Fixture::new();
    let text = format!(
        "[router]\nhost = \"10.2.0.1:9999\"\npublic_key = \"{}\"\n\
         [[tunnels]]\nname = \"a\"\nsource = \"db.internal\"\nbind = \"0.0.0.0\"\n\
         [[tunnels]]\nname = \"b\"\nsource = \"10.2.0.2:0\"\nbind = \"localhost:0\"\n\
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
            "error: tunnels[1].bind: \"localhost:0\" is not ADDR:PORT (a host name, where an IP \
             address must be); use a local IP address and a port such as 0.0.0.0:8080, \
             127.0.0.1:8080 or [::]:8080 ($F:11)",
            "error: tunnels[2].source: \"bad host:80\" is not HOST:PORT; use the address the \
             router reaches the service at, such as 10.2.0.2:8080 or db.internal:5432 ($F:14)",
            "warning: tunnels[2].bind: port 0 lets the system pick a different free port at \
             each start, so users cannot know where to connect; pick a fixed port ($F:15)",
        ]
    );
}

/// What looks like an IPv4 address but is none is not taken for a host name, which
/// the tunnel would try to resolve for ever.
#[test]
fn numbers_that_are_no_ipv4_address_are_no_host_name() {
    let f = Fixture::new();
    let text = format!(
        "[router]\nhost = \"256.1.1.1\"\npublic_key = \"{}\"\n\
         [[tunnels]]\nname = \"a\"\nsource = \"10.2.0:80\"\nbind = \"127.0.0.1:8080\"\n\
         [[tunnels]]\nname = \"b\"\nsource = \"db1.internal:80\"\nbind = \"127.0.0.1:8081\"\n\
         [[tunnels]]\nname = \"c\"\nsource = \"1.2.3.4:80\"\nbind = \"127.0.0.1:8082\"\n",
        f.router_key
    );
    assert_eq!(
        check(&f, &text),
        [
            "error: router.host: \"256.1.1.1\" is not a host name or IP address; use something \
             like 10.2.0.1 or router.internal ($F:2)",
            "error: tunnels[0].source: \"10.2.0:80\" is not HOST:PORT; use the address the \
             router reaches the service at, such as 10.2.0.2:8080 or db.internal:5432 ($F:6)",
        ]
    );
}

/// A router host written as a URL is told to be one (its colon is no port), in
/// the file as through the environment; so is a fallback router.
#[test]
fn a_router_given_as_a_url_is_told_to_be_one() {
    let f = Fixture::new();
    let text = f
        .client_text("")
        .replace(
            "host = \"10.2.0.1\"",
            "host = \"https://router.example.com\"",
        )
        .replacen(
            "[[tunnels]]",
            "fallbacks = [\"tls://10.2.0.3:9999/\"]\n[[tunnels]]",
            1,
        );
    assert_eq!(
        check(&f, &text),
        [
            "error: router.host: \"https://router.example.com\" is a URL; give the host name or \
             address only (router.example.com), and the port in router.port ($F:2)",
            "error: router.fallbacks[0]: \"tls://10.2.0.3:9999/\": it is a URL; give the host \
             and the port only (10.2.0.3:9999); use HOST:PORT such as 10.2.0.3:9999 or \
             router-b.internal:9999 ($F:5)",
        ]
    );
    let env = |host: &str| {
        let sources = f.sources(&f.client_text(""), &[("CONDUIT_ROUTER_HOST", host)], &[]);
        f.lines(&crate::config::load_client(&sources).unwrap().report)
    };
    assert_eq!(
        env("tls://10.2.0.1"),
        [
            "error: router.host: \"tls://10.2.0.1\" is a URL; give the host name or address only \
          (10.2.0.1), and the port in router.port (env CONDUIT_ROUTER_HOST)"
        ]
    );
    assert_eq!(
        env("https://user@[fd00::1]:443/x"),
        [
            "error: router.host: \"https://user@[fd00::1]:443/x\" is a URL; give the host name or \
          address only (fd00::1), and the port in router.port (env CONDUIT_ROUTER_HOST)"
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
    // A comma too many is named, not passed over.
    let bad = f.client_text(
        "[[tunnels]]\nname = \"pair\"\nsource = \"10.2.0.5:80, ,10.2.0.6:80\"\n\
         bind = \"127.0.0.1:1\"\n[[tunnels]]\nname = \"one\"\nsource = \"10.2.0.5:80,\"\n\
         bind = \"127.0.0.1:2\"\n",
    );
    assert_eq!(
        check(&f, &bad),
        [
            "error: tunnels[1].source: \"10.2.0.5:80, ,10.2.0.6:80\" has an empty member (a \
             comma too many); remove it ($F:11)",
            "error: tunnels[2].source: \"10.2.0.5:80,\" has an empty member (a comma too many); \
             remove it ($F:15)"
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

/// An IPv4-mapped IPv6 address is listened on as the IPv4 address it maps: two binds
/// that meet through one clash as if written alike.
#[test]
fn binds_that_meet_through_an_ipv4_mapped_address_clash() {
    let f = Fixture::new();
    let t = |name: &str, bind: &str| {
        format!("[[tunnels]]\nname = \"{name}\"\nsource = \"s:1\"\nbind = \"{bind}\"\n")
    };
    // The base file's tunnel binds 0.0.0.0:8080.
    let extra = [
        t("mapped-any", "[::ffff:0.0.0.0]:8080"),
        t("mapped", "[::ffff:127.0.0.1]:21201"),
        t("plain", "127.0.0.1:21201"),
        t("mapped-any-2", "[::ffff:0.0.0.0]:9000"),
        t("under-mapped-any", "10.0.0.1:9000"),
        t("mapped-under-any", "[::ffff:10.0.0.1]:8080"),
        t("v6-loopback", "[::1]:21201"),
        t("mapped-other", "[::ffff:127.0.0.2]:21201"),
    ]
    .concat();
    assert_eq!(
        check(&f, &f.client_text(&extra)),
        [
            "error: tunnels[1].bind: [::ffff:0.0.0.0]:8080 is tunnels[0].bind 0.0.0.0:8080 \
             written another way (::ffff:0.0.0.0 is the IPv4 address 0.0.0.0); two tunnels \
             cannot listen on one address: give one of them another port ($F:12)",
            "error: tunnels[3].bind: 127.0.0.1:21201 is tunnels[2].bind \
             [::ffff:127.0.0.1]:21201 written another way (::ffff:127.0.0.1 is the IPv4 \
             address 127.0.0.1); two tunnels cannot listen on one address: give one of them \
             another port ($F:20)",
            "error: tunnels[5].bind: 10.0.0.1:9000 conflicts with tunnels[4].bind \
             [::ffff:0.0.0.0]:9000 (::ffff:0.0.0.0 listens on every local address); give one \
             of them another port ($F:28)",
            "error: tunnels[6].bind: [::ffff:10.0.0.1]:8080 conflicts with tunnels[0].bind \
             0.0.0.0:8080 (0.0.0.0 listens on every local address); give one of them another \
             port ($F:32)",
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
            "error: tunnels[1].allow_from[3]: \"10.0.0.0/33\" is not an address or a CIDR \
             block; write 10.0.0.0/8, 192.0.2.7 or 2001:db8::/32 ($F:13)",
            "error: tunnels[1].allow_from[4]: \"office\" is not an address or a CIDR block; \
             write 10.0.0.0/8, 192.0.2.7 or 2001:db8::/32 ($F:13)",
        ]
    );
    // Items that are no strings, or empty, are named with the others, each on its line.
    let text = f.client_text(
        "[[tunnels]]\nname = \"db\"\nsource = \"10.2.0.5:5432\"\nbind = \"0.0.0.0:5432\"\n\
         allow_from = [\n  2,\n  \"\",\n  \"office\",\n  \"10.0.0.0/8\",\n]\n",
    );
    assert_eq!(
        check(&f, &text),
        [
            "error: tunnels[1].allow_from[0]: expected a string, found an integer ($F:14)",
            "error: tunnels[1].allow_from[1]: is empty; remove it from the list ($F:15)",
            "error: tunnels[1].allow_from[2]: \"office\" is not an address or a CIDR block; \
             write 10.0.0.0/8, 192.0.2.7 or 2001:db8::/32 ($F:16)",
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
    let key_line = format!("public_key = \"{}\"\n", f.router_key);
    assert!(text.contains(&key_line), "{text}");
    assert_eq!(
        check(&f, &text),
        [
            "error: router.public_key: applies to TLS only: transport = \"plain\" checks no \
             router key (only security.token), so the router would not be authenticated; \
             remove it, or remove transport = \"plain\" to pin the router ($F:4)"
        ]
    );
    assert_eq!(
        check(&f, &text.replace(&key_line, "")),
        Vec::<String>::new()
    );
}

/// A string where a list goes, and a list of sources where one string goes, are
/// refused with the form that works.
#[test]
fn a_value_of_the_wrong_shape_is_refused_with_the_right_one() {
    let f = Fixture::new();
    let text = format!(
        "[router]\nhost = \"10.2.0.1\"\npublic_key = \"{}\"\n\
         [[tunnels]]\nname = \"a\"\nsource = [\"10.2.0.2:80\", \"10.2.0.3:80\"]\n\
         bind = \"127.0.0.1:8080\"\nallow_from = \"10.0.0.0/8\"\n",
        f.router_key
    );
    assert_eq!(
        check(&f, &text),
        [
            "error: tunnels[0].source: expected a string, found a list; several sources go in \
             one string, comma-separated: source = \"10.2.0.2:80,10.2.0.3:80\" ($F:6)",
            "error: tunnels[0].allow_from: expected a list of strings, found a string; write it \
             as a list: allow_from = [\"10.0.0.0/8\"] ($F:8)",
        ]
    );
}
