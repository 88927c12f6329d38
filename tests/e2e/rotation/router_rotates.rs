//! The router rotating its own key (SIGUSR1): the next key named to tunnels first,
//! old keys kept for tunnels that were away and retired later, and what a router named
//! trusted only under the pin it was learned under.

use super::refuses_the_key;
use crate::harness::{Engine, Home, addr_in};
use crate::sources;
use crate::users::assert_echo;

#[test]
fn a_router_rotates_its_own_key_and_tunnels_that_heard_of_it_follow() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let old = home.public_key("router");
    let source = sources::echo();
    let allow = [source.to_string()];
    // The next key is named to tunnels for 2 s before the router presents it.
    let (router, raddr) =
        home.router_with(engine, &allow, &["--set", "router.key_announce_secs=2"]);
    let pinned = home.key("router.pub");
    let pinned = pinned.to_str().unwrap().to_owned();
    // A copy of the pin, as another machine's tunnel would hold it.
    let stranger_pin = home.path().join("stranger-router.pub");
    std::fs::copy(&pinned, &stranger_pin).unwrap();
    let tunnel = home.tunnel_keyed(
        engine,
        &raddr.to_string(),
        &pinned,
        &source.to_string(),
        &[],
    );
    let taddr = addr_in(&tunnel.wait_stdout("listening on"));
    tunnel.wait_stdout(&format!("connected to router {raddr}"));

    // SIGUSR1: the router makes its next key and names it on the open control
    // channel at once.
    router.signal("USR1");
    router.wait_stderr("router key rotation: naming the next key to tunnels for 2s");
    let staged = home.key("router.key.next");
    assert!(staged.exists());
    router.wait_stderr("router key rotated: presenting the new key from now on");
    let new = home.public_key("router");
    assert_ne!(new, old);
    assert!(!staged.exists());
    tunnel.wait_stderr(&format!(
        "router {raddr} names its key {old} and, next, {new}: trusted"
    ));
    // The switch is named too: the tunnel now keeps the new key alone.
    tunnel.wait_stderr(&format!("router {raddr} names its key {new}: trusted"));
    let known = home.path().join("known_routers");
    crate::procfs::wait_until("known_routers to hold the new key alone", || {
        let text = std::fs::read_to_string(&known).unwrap_or_default();
        (
            text.ends_with(&format!("\n{raddr} {new} pin={old}\n")),
            text,
        )
    });

    // Without a restart, the router presents the new key: a tunnel that knows it
    // (from known_routers) connects.
    let (_later, later_addr) =
        home.tunnel_with(engine, raddr, &source.to_string(), &["--name", "later"]);
    assert_echo(later_addr, b"with the rotated key");
    // The old key is kept, owner-only, for tunnels that were away.
    let kept = kept_keys(&home);
    assert_eq!(kept.len(), 1, "{kept:?}");
    let kept = &kept[0];
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(kept).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // A tunnel that was away during the announcement pins the old key alone and
    // asks for it: the router presents it, then names its new key, which the tunnel
    // trusts from then on.
    std::fs::remove_file(&known).unwrap();
    let away = |name: &str| {
        let p = home.tunnel_keyed(
            engine,
            &raddr.to_string(),
            stranger_pin.to_str().unwrap(),
            &source.to_string(),
            &["--name", name],
        );
        let addr = addr_in(&p.wait_stdout("listening on"));
        p.wait_stdout(&format!("connected to router {raddr}"));
        (p, addr)
    };
    let (stranger, stranger_addr) = away("stranger");
    stranger.wait_stderr(&format!("router {raddr} names its key {new}: trusted"));
    assert_echo(stranger_addr, b"away during the announcement");
    crate::procfs::wait_until("known_routers to hold the new key", || {
        let text = std::fs::read_to_string(&known).unwrap_or_default();
        (text.contains(&format!("{raddr} {new} pin={old}\n")), text)
    });
    // The first tunnel's link, made with the old key, goes on.
    assert_echo(taddr, b"the first link is untouched");

    // A router restarted on its port keeps presenting the old key to those who ask.
    let mut router = router;
    router.stop();
    let (router, _) = home.router_at(
        engine,
        &raddr.to_string(),
        &allow,
        &["--set", "router.key_announce_secs=2"],
    );
    router.wait_stderr("still presenting the old router key to tunnels that ask for it until");
    std::fs::remove_file(&known).unwrap();
    let (_second, second_addr) = away("second");
    assert_echo(second_addr, b"after the router's restart");
}

#[test]
fn a_router_stops_presenting_its_old_key_when_it_retires() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let old = home.public_key("router");
    let source = sources::echo();
    let allow = [source.to_string()];
    let (router, raddr) = home.router_with(
        engine,
        &allow,
        &[
            "--set",
            "router.key_announce_secs=1",
            "--set",
            "router.key_retire_secs=2",
        ],
    );
    let stranger_pin = home.path().join("stranger-router.pub");
    std::fs::copy(home.key("router.pub"), &stranger_pin).unwrap();
    router.signal("USR1");
    router.wait_stderr("router key rotated: presenting the new key from now on");
    let new = home.public_key("router");
    assert_ne!(new, old);
    router.wait_stderr(&format!(
        "router key retired: tunnels that still pin only {old}"
    ));
    assert_eq!(kept_keys(&home), Vec::<std::path::PathBuf>::new());
    // A tunnel that pins the old key alone is refused now, naming both keys.
    let mut stranger = home.tunnel_keyed(
        engine,
        &raddr.to_string(),
        stranger_pin.to_str().unwrap(),
        &source.to_string(),
        &["--name", "stranger"],
    );
    refuses_the_key(&mut stranger, &old, &new);
}

/// The old keys a router keeps after its rotations (`router.key.old-SECS`).
fn kept_keys(home: &Home) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(home.path().join("keys"))
        .unwrap()
        .map(|f| f.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("router.key.old"))
        })
        .collect();
    v.sort();
    v
}

/// Rotations closer together than `key_retire_secs` leave every old key kept: a
/// tunnel that pins the key of two rotations ago, or of one, still connects (and
/// learns the key in use), also after the router restarts.
#[test]
fn a_router_rotated_twice_within_the_retire_time_keeps_both_old_keys() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let source = sources::echo();
    let allow = [source.to_string()];
    let args = ["--set", "router.key_announce_secs=1"];
    let (router, raddr) = home.router_with(engine, &allow, &args);
    let first = home.public_key("router");
    let first_pin = home.path().join("first-router.pub");
    std::fs::copy(home.key("router.pub"), &first_pin).unwrap();
    router.signal("USR1");
    router.wait_stderr_count("router key rotated: presenting the new key from now on", 1);
    let second = home.public_key("router");
    let second_pin = home.path().join("second-router.pub");
    std::fs::copy(home.key("router.pub"), &second_pin).unwrap();
    router.signal("USR1");
    router.wait_stderr_count("router key rotated: presenting the new key from now on", 2);
    router.wait_stderr("(1 older key kept too, each for 2592000s after its own switch)");
    let third = home.public_key("router");
    assert!(first != second && second != third && first != third);
    assert_eq!(kept_keys(&home).len(), 2, "{:?}", kept_keys(&home));

    let known = home.path().join("known_routers");
    let away = |pin: &std::path::Path, name: &str| {
        let _ = std::fs::remove_file(&known);
        let p = home.tunnel_keyed(
            engine,
            &raddr.to_string(),
            pin.to_str().unwrap(),
            &source.to_string(),
            &["--name", name],
        );
        let addr = addr_in(&p.wait_stdout("listening on"));
        p.wait_stdout(&format!("connected to router {raddr}"));
        p.wait_stderr(&format!("router {raddr} names its key {third}: trusted"));
        assert_echo(addr, name.as_bytes());
        p
    };
    drop(away(&first_pin, "two-rotations-ago"));
    drop(away(&second_pin, "one-rotation-ago"));

    // A restarted router takes both up again.
    let mut router = router;
    router.stop();
    let (router, _) = home.router_at(engine, &raddr.to_string(), &allow, &args);
    router.wait_stderr_count(
        "still presenting the old router key to tunnels that ask for it until",
        2,
    );
    drop(away(&first_pin, "after-restart"));
}

/// What a router named is trusted only under the pin it was learned under: a
/// tunnel that pins the router to another key (a key thought stolen, replaced) is
/// not let in by known_routers, and says why.
#[test]
fn keys_a_router_named_are_not_trusted_once_it_is_pinned_to_another_key() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let router_key = home.public_key("router");
    let other = home.public_key("client");
    let source = sources::echo();
    let (_router, raddr) = home.router(engine, &[source.to_string()]);
    // A first tunnel learns the router's key under its pin.
    let (_first, _) = home.tunnel_with(engine, raddr, &source.to_string(), &[]);
    let known = home.path().join("known_routers");
    crate::procfs::wait_until("known_routers to name the router", || {
        let text = std::fs::read_to_string(&known).unwrap_or_default();
        (
            text.ends_with(&format!("\n{raddr} {router_key} pin={router_key}\n")),
            text,
        )
    });
    // Another pins the router to a key it does not hold.
    let mut repinned = home.tunnel_keyed(
        engine,
        &raddr.to_string(),
        &other,
        &source.to_string(),
        &["--name", "repinned"],
    );
    refuses_the_key(&mut repinned, &other, &router_key);
    assert!(
        repinned.stderr().contains(&format!(
            "known_routers holds keys router {raddr} named ({router_key}) while it was \
             pinned to {router_key}; it is pinned to {other} now, so they are not trusted"
        )),
        "{}",
        repinned.stderr()
    );
}
