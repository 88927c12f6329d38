use super::*;
use conduit_proto::KeyPair;

fn key() -> PublicKey {
    KeyPair::generate().unwrap().public()
}

fn no_dns(_: &str, _: u16) -> std::io::Result<Vec<SocketAddr>> {
    panic!("no lookup expected")
}

#[test]
fn addresses_cidrs_and_ports() {
    let l = AllowList::parse(&["10.2.0.0/24:5432", "127.0.0.1:8000-8100", "[::1]:*"]).unwrap();
    let k = key();
    assert_eq!(
        l.check(Some(Caller::key(&k)), "10.2.0.7:5432", no_dns)
            .unwrap(),
        vec!["10.2.0.7:5432".parse().unwrap()]
    );
    assert!(
        l.check(Some(Caller::key(&k)), "10.2.1.7:5432", no_dns)
            .is_err()
    );
    assert!(
        l.check(Some(Caller::key(&k)), "10.2.0.7:5433", no_dns)
            .is_err()
    );
    assert!(
        l.check(Some(Caller::key(&k)), "127.0.0.1:8050", no_dns)
            .is_ok()
    );
    assert!(l.check(Some(Caller::key(&k)), "[::1]:22", no_dns).is_ok());
    assert!(
        l.check(Some(Caller::key(&k)), "[::ffff:10.2.0.9]:5432", no_dns)
            .is_ok()
    );
}

#[test]
fn an_ipv6_host_goes_in_brackets() {
    assert!(AllowList::parse(&["[fd00::/64]:5432", "[::1]:80"]).is_ok());
    for bad in ["::1:80", "fe80::1:8080", "[::1:80"] {
        assert_eq!(
            bad.parse::<Rule>(),
            Err(format!(
                "invalid allow rule {bad:?}: an IPv6 address goes in brackets, such as \
                 [::1]:80 or [fd00::/64]:5432; expected HOST:PORT such as 10.2.0.2:8080, \
                 10.2.0.0/24:5432, db.internal:5432, [::1]:80, *:8000-8100 (optionally \
                 KEY=HOST:PORT or NAME=HOST:PORT)"
            )),
            "{bad}"
        );
    }
}

/// A target in its IPv4-mapped form is checked as the IPv4 address it is; so
/// is a rule, or it would allow nothing.
#[test]
fn ipv4_mapped_rules_are_the_ipv4_rules_they_map() {
    let k = key();
    let caller = Some(Caller::key(&k));
    let l = AllowList::parse(&["[::ffff:127.0.0.1]:20011", "[::ffff:10.0.0.0/104]:80"]).unwrap();
    for allowed in [
        "[::ffff:127.0.0.1]:20011",
        "127.0.0.1:20011",
        "10.200.0.1:80",
        "[::ffff:10.200.0.1]:80",
    ] {
        assert_eq!(
            l.check(caller, allowed, no_dns),
            Ok(vec![allowed.parse().unwrap()]),
            "{allowed}"
        );
        assert!(l.could_allow(allowed), "{allowed}");
    }
    for refused in ["11.0.0.1:80", "[::ffff:11.0.0.1]:80", "127.0.0.1:20012"] {
        assert!(l.check(caller, refused, no_dns).is_err(), "{refused}");
    }
    // The whole mapped range is every IPv4 address; a shorter prefix is IPv6's.
    let every = AllowList::parse(&["[::ffff:0:0/96]:80"]).unwrap();
    assert!(every.check(caller, "192.0.2.1:80", no_dns).is_ok());
    let v6 = AllowList::parse(&["[::fffe:0:0/95]:80"]).unwrap();
    assert!(v6.check(caller, "192.0.2.1:80", no_dns).is_err());
    assert!(v6.check(caller, "[::fffe:0:1]:80", no_dns).is_ok());
}

/// A block written with a host's address (`10.2.0.5/8`, typed for that one host)
/// is refused, naming both readings, rather than widened to the whole block.
#[test]
fn a_block_with_host_bits_set_is_refused() {
    let err = AllowList::parse(&["10.2.0.5/8:80"]).unwrap_err();
    assert_eq!(
        err,
        [
            "invalid allow rule \"10.2.0.5/8:80\": 10.2.0.5/8 has bits set past its /8: write \
          10.0.0.0/8 for the whole block, or 10.2.0.5 for that host alone; expected \
          HOST:PORT such as 10.2.0.2:8080, 10.2.0.0/24:5432, db.internal:5432, [::1]:80, \
          *:8000-8100 (optionally KEY=HOST:PORT or NAME=HOST:PORT)"
        ]
    );
    assert!(AllowList::parse(&["10.0.0.0/8:80", "[fd00::/64]:80"]).is_ok());
    assert!(AllowList::parse(&["[fd00::1/64]:80"]).is_err());
}

/// The rule a refusal offers is in the form rules are matched in: a mapped
/// address's IPv4 form.
#[test]
fn refusals_of_mapped_targets_offer_the_ipv4_rule() {
    let (a, b) = (key(), key());
    let l = AllowList::parse(&["127.0.0.1:1".to_owned(), format!("{a}=10.0.0.1:22")]).unwrap();
    let r = l
        .check(Some(Caller::key(&a)), "[::ffff:127.0.0.1]:20011", no_dns)
        .unwrap_err();
    assert_eq!(
        r.message,
        "source [::ffff:127.0.0.1]:20011 is not allowed by the router's policy; to allow \
         it, add `--allow 127.0.0.1:20011` to the router"
    );
    let named = Caller {
        key: &b,
        name: Some("laptop"),
    };
    let r = l
        .check(Some(named), "[::ffff:10.0.0.1]:22", no_dns)
        .unwrap_err();
    assert_eq!(
        r.message,
        "source [::ffff:10.0.0.1]:22 is allowed to other clients only by the router's \
         policy; to allow it to this client too, add `--allow laptop=10.0.0.1:22` to the \
         router"
    );
    let r = AllowList::default()
        .check(None, "[::ffff:10.0.0.1]:22", no_dns)
        .unwrap_err();
    assert!(
        r.message.ends_with("start it with `--allow 10.0.0.1:22`"),
        "{}",
        r.message
    );
}

/// `[::]/0`, the prefix after the brackets, is `[::/0]`.
#[test]
fn a_prefix_after_the_brackets_is_the_same_cidr() {
    let caller = None;
    for rule in ["[::]/0:*", "[::/0]:*"] {
        let l = AllowList::parse(&[rule]).unwrap();
        assert!(l.check(caller, "[2001:db8::1]:5", no_dns).is_ok(), "{rule}");
        assert!(l.check(caller, "192.0.2.1:5", no_dns).is_err(), "{rule}");
    }
    let l = AllowList::parse(&["[fd00::]/64:443"]).unwrap();
    assert!(l.check(caller, "[fd00::7]:443", no_dns).is_ok());
    assert!(l.check(caller, "[fd00:0:0:1::7]:443", no_dns).is_err());
    for bad in ["[::]/:80", "[::]/0]:80", "[::]/129:80"] {
        assert!(
            bad.parse::<Rule>().unwrap_err().contains("bad host"),
            "{bad}"
        );
    }
    // A prefix too long says so.
    let e = "10.0.0.0/33:80".parse::<Rule>().unwrap_err();
    assert!(
        e.contains("bad host: /33 is longer than the 32 bits of 10.0.0.0; a prefix is at most /32"),
        "{e}"
    );
    let e = "[::]/129:80".parse::<Rule>().unwrap_err();
    assert!(e.contains("/129 is longer than the 128 bits of ::"), "{e}");
}

/// A rule for every address (on every port, or on some) turns the router into an
/// open proxy into its network: allowed, with a warning naming the narrower forms.
#[test]
fn rules_for_every_address_are_warned_of() {
    let k = key();
    let rules = [
        "*:*".to_owned(),
        "0.0.0.0/0:*".to_owned(),
        "[::]/0:*".to_owned(),
        "[::ffff:0:0/96]:*".to_owned(),
        format!("{k}=*:*"),
        "laptop=*:*".to_owned(),
        "[::/0]:1-65535".to_owned(),
        // Every address on some ports: warned of too.
        "*:443".to_owned(),
        "laptop=0.0.0.0/0:80".to_owned(),
        "*:8000-8100".to_owned(),
        "[::/0]:80".to_owned(),
        // Narrower: not warned of.
        "0.0.0.0/1:*".to_owned(),
        "10.0.0.0/8:*".to_owned(),
        "db.internal:*".to_owned(),
    ];
    let warned: Vec<String> = (rules.iter())
        .filter_map(|r| r.parse::<Rule>().unwrap().opens_everything())
        .collect();
    let expected = [
        ("*:*", "every client", "every address"),
        ("0.0.0.0/0:*", "every client", "every IPv4 address"),
        ("[::]/0:*", "every client", "every IPv6 address"),
        ("[::ffff:0:0/96]:*", "every client", "every IPv4 address"),
        (&format!("{k}=*:*"), &format!("client {k}"), "every address"),
        ("laptop=*:*", "client \"laptop\"", "every address"),
        ("[::/0]:1-65535", "every client", "every IPv6 address"),
    ]
    .map(|(rule, who, every)| {
        let own = match every {
            "every IPv6 address" => {
                "its own services on [::1], cloud metadata over IPv6 ([fd00:ec2::254] on AWS)"
            }
            _ => "its own loopback services and API, cloud metadata (169.254.169.254)",
        };
        format!(
            "allow rule `{rule}` lets {who} reach {every} on every port the router can \
             reach: {own}, the whole network around it; allow only the sources clients \
             need, by address and port (10.2.0.2:8080), network and port (10.2.0.0/24:5432) \
             or name (db.internal:5432)"
        )
    });
    let some_ports = [
        "allow rule `*:443` lets every client reach port 443 of every address the \
             router can reach: its own loopback services, the whole network around it; \
             allow only the sources clients need, by address and port (10.2.0.2:443), \
             network and port (10.2.0.0/24:443) or name (db.internal:443)"
            .to_owned(),
        "allow rule `laptop=0.0.0.0/0:80` lets client \"laptop\" reach port 80 of every \
             IPv4 address the router can reach: its own loopback services, cloud metadata \
             (169.254.169.254:80), the whole network around it; allow only the sources \
             clients need, by address and port (10.2.0.2:80), network and port \
             (10.2.0.0/24:80) or name (db.internal:80)"
            .to_owned(),
        "allow rule `*:8000-8100` lets every client reach ports 8000-8100 of every \
             address the router can reach: its own loopback services, the whole network \
             around it; allow only the sources clients need, by address and port \
             (10.2.0.2:8000), network and port (10.2.0.0/24:8000) or name \
             (db.internal:8000)"
            .to_owned(),
        "allow rule `[::/0]:80` lets every client reach port 80 of every IPv6 address the \
             router can reach: its own services on [::1], cloud metadata over IPv6 \
             ([fd00:ec2::254]:80 on AWS), the whole network around it; allow only the \
             sources clients need, by address and port (10.2.0.2:80), network and port \
             (10.2.0.0/24:80) or name (db.internal:80)"
            .to_owned(),
    ];
    let expected: Vec<String> = expected.into_iter().chain(some_ports).collect();
    assert_eq!(warned, expected);
}

#[test]
fn refusals_say_how_to_allow() {
    let l = AllowList::default();
    let r = l
        .check(Some(Caller::key(&key())), "10.0.0.1:22", no_dns)
        .unwrap_err();
    assert_eq!(r.code, RefusalCode::PolicyDenied);
    assert_eq!(
        r.message,
        "source 10.0.0.1:22 is not allowed by the router's policy; this router allows no \
         sources yet: start it with `--allow 10.0.0.1:22`"
    );
}

#[test]
fn the_any_address_is_no_source_even_where_every_address_is_allowed() {
    let l = AllowList::parse(&["*:80"]).unwrap();
    let r = l
        .check(Some(Caller::key(&key())), "0.0.0.0:80", no_dns)
        .unwrap_err();
    assert_eq!(r.code, RefusalCode::PolicyDenied);
    assert_eq!(
        r.message,
        "source 0.0.0.0:80 is not a host's address (0.0.0.0 means any address): give the \
         source's own address, e.g. --source 127.0.0.1:80"
    );
    assert!(l.check(None, "[::]:80", no_dns).is_err());
    // Nor in its IPv4-mapped spelling.
    for any in ["[::ffff:0.0.0.0]:80", "[::ffff:0:0]:80"] {
        let r = l.check(Some(Caller::key(&key())), any, no_dns).unwrap_err();
        assert_eq!(r.code, RefusalCode::PolicyDenied, "{any}");
    }
    // Nor a name that resolves there, even one a rule names.
    let l = AllowList::parse(&["*:80", "zero.internal:80"]).unwrap();
    for name in ["0:80", "zero.internal:80"] {
        let r = l
            .check(Some(Caller::key(&key())), name, |_: &str, p: u16| {
                Ok(vec![SocketAddr::from(([0, 0, 0, 0], p))])
            })
            .unwrap_err();
        assert_eq!(r.code, RefusalCode::PolicyDenied);
        assert_eq!(
            r.message,
            format!(
                "source {name} resolves to 0.0.0.0, which means any address: give the \
                 source's own address or name"
            )
        );
    }
}

#[test]
fn names_match_by_name_or_by_resolved_address() {
    let l = AllowList::parse(&["db.internal:5432", "10.9.0.0/16:80"]).unwrap();
    let k = key();
    let inside = |p: u16| SocketAddr::from(([10, 9, 1, 1], p));
    let outside = |p: u16| SocketAddr::from(([192, 168, 1, 1], p));
    let resolved = |_: &str, p: u16| Ok(vec![inside(p)]);
    // Allowed by name: whatever it resolves to.
    assert_eq!(
        l.check(Some(Caller::key(&k)), "DB.internal:5432", resolved),
        Ok(vec![inside(5432)])
    );
    // Allowed by the address it resolves to.
    assert_eq!(
        l.check(Some(Caller::key(&k)), "web.internal:80", resolved),
        Ok(vec![inside(80)])
    );
    let also_inside = SocketAddr::from(([10, 9, 200, 3], 80));
    let both = move |_: &str, p: u16| Ok(vec![inside(p), also_inside]);
    assert_eq!(
        l.check(Some(Caller::key(&k)), "web.internal:80", both),
        Ok(vec![inside(80), also_inside])
    );
    let refused = "source web.internal:80 is not allowed by the router's policy (it \
                   resolves to an address outside the allowed ranges); to allow it, add \
                   `--allow web.internal:80` to the router";
    let r = l
        .check(
            Some(Caller::key(&k)),
            "web.internal:80",
            |_: &str, p: u16| Ok(vec![outside(p)]),
        )
        .unwrap_err();
    assert_eq!(
        (r.code, r.message.as_str()),
        (RefusalCode::PolicyDenied, refused)
    );
    // Every address must be allowed: one outside the ranges refuses the name,
    // whichever comes first.
    for mixed in [vec![inside(80), outside(80)], vec![outside(80), inside(80)]] {
        let r = l
            .check(
                Some(Caller::key(&k)),
                "web.internal:80",
                move |_: &str, _| Ok(mixed),
            )
            .unwrap_err();
        assert_eq!(
            (r.code, r.message.as_str()),
            (RefusalCode::PolicyDenied, refused)
        );
    }
    // A port no rule mentions is refused before any lookup.
    let r = l
        .check(Some(Caller::key(&k)), "web.internal:81", no_dns)
        .unwrap_err();
    assert_eq!(
        r.message,
        "source web.internal:81 is not allowed by the router's policy; to allow it, add \
         `--allow web.internal:81` to the router"
    );
}

#[test]
fn rules_can_be_per_client() {
    let (a, b) = (key(), key());
    let l = AllowList::parse(&[format!("{a}=127.0.0.1:9000")]).unwrap();
    assert!(
        l.check(Some(Caller::key(&a)), "127.0.0.1:9000", no_dns)
            .is_ok()
    );
    assert!(
        l.check(Some(Caller::key(&b)), "127.0.0.1:9000", no_dns)
            .is_err()
    );
    assert!(l.check(None, "127.0.0.1:9000", no_dns).is_err());
    assert!(l.names_client(&a) && !l.names_client(&b));
    // Refused to another client, which is told how to be allowed too, not to
    // open the source to every client.
    let r = l
        .check(Some(Caller::key(&b)), "127.0.0.1:9000", no_dns)
        .unwrap_err();
    assert_eq!(
        r.message,
        format!(
            "source 127.0.0.1:9000 is allowed to other clients only by the router's policy; \
             to allow it to this client too, add `--allow {b}=127.0.0.1:9000` to the router"
        )
    );
    let named = Caller {
        key: &b,
        name: Some("laptop"),
    };
    let r = l.check(Some(named), "127.0.0.1:9000", no_dns).unwrap_err();
    assert!(
        r.message
            .ends_with("add `--allow laptop=127.0.0.1:9000` to the router"),
        "{}",
        r.message
    );
    // A source no rule covers is refused as before.
    let r = l
        .check(Some(Caller::key(&b)), "127.0.0.1:9001", no_dns)
        .unwrap_err();
    assert!(
        r.message
            .ends_with("add `--allow 127.0.0.1:9001` to the router")
    );
}

#[test]
fn rules_can_name_clients_as_authorized_clients_does() {
    let (a, b) = (key(), key());
    let l = AllowList::parse(&["gw-eu.1@edge=127.0.0.1:9000", "127.0.0.1:80"]).unwrap();
    let named = |key, name| {
        Some(Caller {
            key,
            name: Some(name),
        })
    };
    // Any key of that name (old and new during a rotation), no other.
    assert!(
        l.check(named(&a, "gw-eu.1@edge"), "127.0.0.1:9000", no_dns)
            .is_ok()
    );
    assert!(
        l.check(named(&b, "gw-eu.1@edge"), "127.0.0.1:9000", no_dns)
            .is_ok()
    );
    assert!(
        l.check(named(&a, "gw-us"), "127.0.0.1:9000", no_dns)
            .is_err()
    );
    assert!(
        l.check(Some(Caller::key(&a)), "127.0.0.1:9000", no_dns)
            .is_err()
    );
    assert!(l.check(None, "127.0.0.1:9000", no_dns).is_err());
    assert!(l.check(named(&a, "gw-us"), "127.0.0.1:80", no_dns).is_ok());
    // A rule by name does not stop the key's rotation.
    assert!(!l.names_client(&a));
    assert_eq!(
        l.name_rules(),
        [("gw-eu.1@edge", vec!["gw-eu.1@edge=127.0.0.1:9000"])]
    );
    let l = AllowList::parse(&["b=127.0.0.1:1", "a=127.0.0.1:2", " b=db.internal:3"]).unwrap();
    assert_eq!(
        l.name_rules(),
        [
            ("a", vec!["a=127.0.0.1:2"]),
            ("b", vec!["b=127.0.0.1:1", "b=db.internal:3"])
        ]
    );

    let errs = AllowList::parse(&["web gw=127.0.0.1:80", "=127.0.0.1:80"]).unwrap_err();
    assert_eq!(errs.len(), 2);
    assert!(
        errs[0].contains("\"web gw\" is neither a client key (ed25519:…) nor a client name"),
        "{}",
        errs[0]
    );
}

#[test]
fn port_0_is_refused() {
    assert_eq!(
        AllowList::parse(&["127.0.0.1:0", "web=db.internal:0"]).unwrap_err(),
        ["127.0.0.1:0", "web=db.internal:0"].map(|r| format!(
            "invalid allow rule {r:?}: port 0 is no source's port; give the port the \
             source listens on, or * for every port; expected HOST:PORT such as \
             10.2.0.2:8080, 10.2.0.0/24:5432, db.internal:5432, [::1]:80, *:8000-8100 \
             (optionally KEY=HOST:PORT or NAME=HOST:PORT)"
        ))
    );
    // A range from 0 still allows the ports above it.
    let allow = AllowList::parse(&["127.0.0.1:0-80"]).unwrap();
    assert!(allow.could_allow("127.0.0.1:80"));
}

#[test]
fn bad_rules_are_all_reported() {
    let errs =
        AllowList::parse(&["10.0.0.1", "1.2.3.4:99999", "ok.example:80", "h:9-1"]).unwrap_err();
    assert_eq!(errs.len(), 3);
    assert!(errs[0].contains("no port"), "{}", errs[0]);
}

/// A refusal names the place the router's rules are given: a rule added with
/// `--allow` to a router whose rules are in its file would replace them all.
#[test]
fn refusals_say_where_to_add_the_rule() {
    let refusal = |given: RulesGiven| {
        AllowList::parse(&["10.0.0.2:80"])
            .unwrap()
            .given_in(given)
            .check(Some(Caller::key(&key())), "10.0.0.1:22", no_dns)
            .unwrap_err()
            .message
    };
    let head = "source 10.0.0.1:22 is not allowed by the router's policy; to allow it, ";
    assert_eq!(
        refusal(RulesGiven::Flags),
        format!("{head}add `--allow 10.0.0.1:22` to the router")
    );
    assert_eq!(
        refusal(RulesGiven::File),
        format!("{head}add \"10.0.0.1:22\" to `allow` under [router] in the router's file")
    );
    assert_eq!(
        refusal(RulesGiven::Env("CONDUIT_ROUTER_ALLOW".into())),
        format!("{head}add 10.0.0.1:22 to the router's CONDUIT_ROUTER_ALLOW (comma-separated)")
    );
    // A file that allows nothing yet: the rule goes in it too.
    let empty = AllowList::default()
        .given_in(RulesGiven::File)
        .check(None, "10.0.0.1:22", no_dns)
        .unwrap_err()
        .message;
    assert_eq!(
        empty,
        format!("{head}add \"10.0.0.1:22\" to `allow` under [router] in the router's file")
    );
}
