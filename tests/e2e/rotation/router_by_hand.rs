//! The router's key replaced by hand: the next key added to the tunnels' pinned file,
//! given to the router as `--next-key` and named to tunnels, or the old key left beside
//! the new one; a next key that is the key in use is refused.

use super::refuses_the_key;
use crate::harness::{Engine, Home, addr_in, assert_code};
use crate::sources;
use crate::users::{assert_echo, wait_for_echo};

#[test]
fn a_router_key_replaced_by_hand_is_taken_up_from_the_pinned_file_without_a_restart() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    home.ok(&["init", "--name", "router-next"]);
    let old = home.public_key("router");
    let next = home.public_key("router-next");
    let source = sources::echo();
    let allow = [source.to_string()];
    let (mut old_router, raddr) = home.router(engine, &allow);
    let pins = home.path().join("pinned-router.pub");
    let old_line = std::fs::read_to_string(home.key("router.pub")).unwrap();
    let next_line = std::fs::read_to_string(home.key("router-next.pub")).unwrap();
    std::fs::write(&pins, &old_line).unwrap();
    let mut tunnel = home.tunnel_keyed(
        engine,
        &raddr.to_string(),
        pins.to_str().unwrap(),
        &source.to_string(),
        &["--heartbeat-interval", "1"],
    );
    let taddr = addr_in(&tunnel.wait_stdout("listening on"));
    let connected = format!("connected to router {raddr}");
    tunnel.wait_stdout(&connected);
    assert_echo(taddr, b"the old key");

    // Step 1: the router's next key is added to the pinned file, and the running
    // tunnel takes it up (at its next heartbeat; a link is not made again for it).
    std::fs::write(&pins, old_line.clone() + &next_line).unwrap();
    tunnel.wait_stderr(&format!(
        "the keys pinned for router {raddr} changed ({}): now {old} or {next}",
        pins.display()
    ));

    // Step 2: the router restarts with its next key; the same tunnel process comes
    // back to it.
    old_router.stop();
    let next_key = home.key("router-next.key");
    let (_new_router, _) = home.router_at(
        engine,
        &raddr.to_string(),
        &allow,
        &["--key", next_key.to_str().unwrap()],
    );
    tunnel.wait_stdout_count(&connected, 2);
    wait_for_echo(taddr, b"the next key");

    // Step 3: the old key leaves the file: the link is made again to check the
    // router's key, which is still pinned.
    std::fs::write(&pins, &next_line).unwrap();
    tunnel.wait_stderr(&format!(
        "{old} is no longer trusted for router {raddr}: connecting again"
    ));
    tunnel.wait_stdout_count(&connected, 3);
    assert_echo(taddr, b"still the next key");
    assert!(
        !tunnel.stderr().contains("router key mismatch"),
        "{}",
        tunnel.stderr()
    );

    // The router named its key itself (protocol 6), and the tunnel keeps trusting
    // it while known_routers says so. A pinned file with only a key the router no
    // longer has, and that line gone: the tunnel refuses the router it is connected
    // to, as it would at start, but having been up it keeps trying (a man in the
    // middle must not stop it for good) and takes the router back once its key is
    // pinned again.
    let known = home.path().join("known_routers");
    assert!(
        std::fs::read_to_string(&known)
            .unwrap()
            .contains(&format!("\n{raddr} {next} pin=")),
    );
    std::fs::write(&pins, &old_line).unwrap();
    std::fs::remove_file(&known).unwrap();
    tunnel.wait_stderr(&format!("router key mismatch: expected {old}, got {next}"));
    tunnel.wait_stderr("; retrying in ");
    assert!(tunnel.running(), "{}", tunnel.stderr());
    std::fs::write(&pins, &next_line).unwrap();
    tunnel.wait_stdout_count(&connected, 4);
    wait_for_echo(taddr, b"pinned again");
}

#[test]
fn a_router_names_its_next_key_and_tunnels_take_it_up_by_themselves() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    home.ok(&["init", "--name", "router-next"]);
    let old = home.public_key("router");
    let next = home.public_key("router-next");
    let source = sources::echo();
    let allow = [source.to_string()];
    let next_key = home.key("router-next.key");
    let next_key = next_key.to_str().unwrap();
    // The router names the key it will present next (its API says so too).
    let (mut router, raddr, api) = crate::ops::router_api(&home, &allow, &["--next-key", next_key]);
    router.wait_stderr("naming the next router key to tunnels");
    let info = crate::ops::get(&api, "/api/v1/info");
    assert_eq!(info["data"]["public_key"], old.as_str());
    assert_eq!(info["data"]["next_public_key"], next.as_str());
    // A next key given by hand: SIGUSR1 starts no rotation of the router's own, and
    // does not end the router either.
    router.signal("USR1");
    router.wait_stderr(
        "SIGUSR1: this router does not rotate its key: the next key was given by hand \
         (--next-key): restart the router with it as --key",
    );
    // The tunnels pin the router's present key only.
    let pinned = home.key("router.pub");
    let pinned = pinned.to_str().unwrap();
    let tunnel = home.tunnel_keyed(engine, &raddr.to_string(), pinned, &source.to_string(), &[]);
    let taddr = addr_in(&tunnel.wait_stdout("listening on"));
    let known = home.path().join("known_routers");
    tunnel.wait_stderr(&format!(
        "router {raddr} names its key {old} and, next, {next}: trusted for it from now on \
         (kept in {})",
        known.display()
    ));
    assert!(
        std::fs::read_to_string(&known)
            .unwrap()
            .ends_with(&format!("\n{raddr} {old} {next} pin={old}\n"))
    );
    assert_echo(taddr, b"the present key");

    // The router switches to its next key; nobody touches the tunnel or its pins.
    router.stop();
    let (_switched, _) = home.router_at(engine, &raddr.to_string(), &allow, &["--key", next_key]);
    tunnel.wait_stdout_count(&format!("connected to router {raddr}"), 2);
    wait_for_echo(taddr, b"the next key");
    tunnel.wait_stderr(&format!("router {raddr} names its key {next}: trusted"));
    assert!(
        !tunnel.stderr().contains("router key mismatch"),
        "{}",
        tunnel.stderr()
    );
    // A tunnel started now, pinning the old key only, trusts the key the router
    // named, from known_routers.
    let later = home.tunnel_keyed(
        engine,
        &raddr.to_string(),
        pinned,
        &source.to_string(),
        &["--name", "later"],
    );
    let later_addr = addr_in(&later.wait_stdout("listening on"));
    later.wait_stdout(&format!("connected to router {raddr}"));
    assert_echo(later_addr, b"a tunnel started after the switch");

    // Without that trust, the same pin is refused: the key came from the router.
    std::fs::remove_file(&known).unwrap();
    let mut stranger = home.tunnel_keyed(
        engine,
        &raddr.to_string(),
        pinned,
        &source.to_string(),
        &["--name", "stranger"],
    );
    refuses_the_key(&mut stranger, &old, &next);
}

/// After a switch by hand to `--key NEW.key`, the old key copied beside it as
/// `NEW.key.old` is presented to tunnels that ask for it, which learn the new key.
#[test]
fn an_old_key_left_by_hand_beside_the_new_one_is_presented_to_those_who_ask() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let old = home.public_key("router");
    home.ok(&["init", "--name", "router-next"]);
    let new = home.public_key("router-next");
    let next_key = home.key("router-next.key");
    let left = home.key("router-next.key.old");
    std::fs::copy(home.key("router.key"), &left).unwrap();
    let source = sources::echo();
    let (router, raddr) = home.router_with(
        engine,
        &[source.to_string()],
        &["--key", next_key.to_str().unwrap()],
    );
    router.wait_stderr("still presenting the old router key to tunnels that ask for it until");
    assert!(router.stderr().contains(&old), "{}", router.stderr());
    // A tunnel that pins the old key alone connects, and learns the new one.
    let tunnel = home.tunnel_keyed(
        engine,
        &raddr.to_string(),
        home.key("router.pub").to_str().unwrap(),
        &source.to_string(),
        &[],
    );
    let addr = addr_in(&tunnel.wait_stdout("listening on"));
    tunnel.wait_stdout(&format!("connected to router {raddr}"));
    tunnel.wait_stderr(&format!("router {raddr} names its key {new}: trusted"));
    assert_echo(addr, b"through the key left by hand");
}

#[test]
fn a_next_key_that_is_the_key_in_use_is_refused() {
    let home = Home::with_keys();
    let key = home.key("router.key");
    let (status, _, err) = home.run(&[
        "router",
        "--bind",
        "127.0.0.1:0",
        "--next-key",
        key.to_str().unwrap(),
    ]);
    assert_code(status, 64, &err);
    assert!(
        err.ends_with(&format!(
            "conduit: error: router.next_private_key_path: {} holds the key the router \
             presents now ({}): give it a new key (`conduit init --name router-next`), or \
             leave it unset once the router has switched to it (cli --next-key)\n",
            key.display(),
            home.public_key("router")
        )),
        "{err}"
    );
}
