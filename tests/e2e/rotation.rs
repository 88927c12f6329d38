//! Key rotation (`conduit keys rotate`): a running tunnel makes a new key, its router
//! authorizes it and keeps the old one for its grace period, the tunnel's key file is
//! replaced and the tunnel goes on with the new key; the router retires the old key
//! when the grace period ends. And the router's own key, replaced by hand without
//! an outage: tunnels pin the old and the new key while the router switches.

use std::io::{Read, Write};

use crate::harness::{Engine, Home, Proc, addr_in, assert_code};
use crate::sources;
use crate::users::{assert_echo, connect, wait_for_echo};

/// Waits for `tunnel` to stop, refusing a router that presented `got` where it
/// trusts only `expected`: exit 77, naming both.
fn refuses_the_key(tunnel: &mut Proc, expected: &str, got: &str) {
    let status = tunnel.wait_exit();
    assert_code(status, 77, &tunnel.stderr());
    assert!(
        tunnel.stderr().contains(&format!(
            "router key mismatch: expected {expected}, got {got}"
        )),
        "{}",
        tunnel.stderr()
    );
}

/// The key on the first line of a `.pub` file.
fn key_of(line: &str) -> String {
    line.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn a_tunnel_rotates_its_key_through_its_router() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let source = sources::echo();
    let (router, raddr) = home.router_with(
        engine,
        &[source.to_string()],
        &["--set", "router.key_grace_secs=4"],
    );
    let (tunnel, taddr) = home.tunnel(engine, raddr, &source.to_string());
    assert_echo(taddr, b"before");
    let old = key_of(&std::fs::read_to_string(home.key("client.pub")).unwrap());
    // A user connected before the rotation rides a channel of the old key.
    let mut early = connect(taddr);
    early.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    early.read_exact(&mut buf).unwrap();

    let out = home.ok(&["keys", "rotate", "--all"]);
    let new = key_of(&std::fs::read_to_string(home.key("client.pub")).unwrap());
    assert_ne!(new, old);
    assert!(
        out.starts_with(&format!(
            "tunnel \"tunnel\": key rotated to {new}; the old key is admitted until "
        )),
        "{out}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(home.key("client.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "the new private key is the owner's only"
        );
    }
    // The router's file: the old line dated, the new key under the same name.
    let auth = std::fs::read_to_string(home.path().join("authorized_clients")).unwrap();
    let lines: Vec<&str> = auth.lines().collect();
    assert_eq!(lines.len(), 2, "{auth}");
    assert!(
        lines[0].starts_with("expires=") && lines[0].ends_with(&format!(" {old} client")),
        "{auth}"
    );
    assert_eq!(lines[1], format!("{new} client"));
    router.wait_stderr("client key rotated: the new key is authorized");

    // The tunnel reconnects with the new key and serves; the early user is still served.
    tunnel.wait_stdout_count("connected to router", 2);
    assert_echo(taddr, b"after");
    early.write_all(b"pong").unwrap();
    early.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");

    // The grace period ends: the old key is retired, the tunnel goes on.
    router.wait_stderr("client key expired");
    assert_echo(taddr, b"after the grace period");
    // A tunnel started from the key file now uses the new key.
    let (_again, again) =
        home.tunnel_with(engine, raddr, &source.to_string(), &["--name", "again"]);
    assert_echo(again, b"from the file");
}

#[test]
fn an_allow_rule_for_a_client_name_follows_the_key_through_rotation() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    // A second client, under another name.
    let other = home.ok(&["init", "--name", "other"]);
    let auth = home.path().join("authorized_clients");
    let both = std::fs::read_to_string(&auth).unwrap() + &other;
    std::fs::write(&auth, both).unwrap();
    let source = sources::echo();
    // `client` is the name on the key's line in authorized_clients; `ghost` is on none.
    let (router, raddr) = home.router(
        engine,
        &[format!("client={source}"), format!("ghost={source}")],
    );
    router.wait_stderr("allow rules name client \"ghost\", but no key in");
    let (tunnel, taddr) = home.tunnel(engine, raddr, &source.to_string());
    assert_echo(taddr, b"by name");
    let other_key = home.key("other.key");
    let mut other_tunnel = home.tunnel_proc(
        engine,
        raddr,
        &source.to_string(),
        &["--name", "other", "--key", other_key.to_str().unwrap()],
    );
    let status = other_tunnel.wait_exit();
    let err = other_tunnel.stderr();
    assert_code(status, 77, &err);
    assert!(
        err.contains(&format!(
            "the router refused this tunnel: source {source} is not allowed by the router's policy"
        )),
        "{err}"
    );

    // A rule by name does not hold the rotation back, and the new key keeps the
    // name, so its rights.
    let old = key_of(&std::fs::read_to_string(home.key("client.pub")).unwrap());
    home.ok(&["keys", "rotate", "--tunnel", "tunnel"]);
    let new = key_of(&std::fs::read_to_string(home.key("client.pub")).unwrap());
    assert_ne!(new, old);
    tunnel.wait_stdout_count("connected to router", 2);
    assert_echo(taddr, b"by name, with the new key");
}

#[test]
fn a_rotation_the_router_cannot_make_is_refused_and_changes_nothing() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let source = sources::echo();
    let client = key_of(&std::fs::read_to_string(home.key("client.pub")).unwrap());
    // A rule for this key alone: rotating it would silently drop its rights.
    let rule = format!("{client}={source}");
    let (_router, raddr) = home.router(engine, &[rule]);
    let (tunnel, taddr) = home.tunnel(engine, raddr, &source.to_string());
    let before = std::fs::read_to_string(home.path().join("authorized_clients")).unwrap();

    let (status, _, err) = home.run(&["keys", "rotate", "--all"]);
    assert_code(status, 1, &err);
    assert!(
        err.contains(&format!(
            "the router refused the rotation: the router's allow-list has rules for key \
             {client} alone; rotate it by hand"
        )),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(home.path().join("authorized_clients")).unwrap(),
        before
    );
    assert_eq!(
        key_of(&std::fs::read_to_string(home.key("client.pub")).unwrap()),
        client
    );
    // The link went on: one connection, still serving.
    assert_eq!(tunnel.stdout_count("connected to router"), 1);
    assert_echo(taddr, b"still here");

    let (status, _, err) = home.run(&["keys", "rotate", "--tunnel", "nope"]);
    assert_code(status, 64, &err);
    assert!(
        err.contains("no tunnel named or with id \"nope\" is running"),
        "{err}"
    );
}

/// A key a rotation just made is not rotated again at once: each rotation adds a
/// line and an admitted key, which a client rotating in a loop would pile up.
#[test]
fn a_key_a_rotation_just_made_is_not_rotated_again() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let source = sources::echo();
    let (_router, raddr) = home.router(engine, &[source.to_string()]);
    let (tunnel, taddr) = home.tunnel(engine, raddr, &source.to_string());
    home.ok(&["keys", "rotate", "--all"]);
    let new = key_of(&std::fs::read_to_string(home.key("client.pub")).unwrap());
    tunnel.wait_stdout_count("connected to router", 2);
    let auth = home.path().join("authorized_clients");
    let before = std::fs::read_to_string(&auth).unwrap();

    let (status, _, err) = home.run(&["keys", "rotate", "--all"]);
    assert_code(status, 1, &err);
    let why = format!("the router refused the rotation: key {new} was made by a rotation ");
    assert!(
        err.contains(&why)
            && err.contains(
                " ago, and a client's key is rotated at most once every 1h: rotate it again in "
            ),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&auth).unwrap(), before);
    assert_eq!(
        key_of(&std::fs::read_to_string(home.key("client.pub")).unwrap()),
        new
    );
    assert_echo(taddr, b"still served with the new key");
}

/// Without a router link there is nobody to authorize the new key: said at once.
#[test]
fn a_tunnel_away_from_its_router_says_so_instead_of_rotating() {
    let home = Home::with_keys();
    let source = sources::echo();
    let router = format!("127.0.0.1:{}", crate::harness::dead_port());
    let tunnel = home.tunnel_via(Engine::Epoll, &router, &source.to_string(), &[]);
    tunnel.wait_stderr("retrying in");
    let client = std::fs::read_to_string(home.key("client.pub")).unwrap();
    let (status, _, err) = home.run(&["keys", "rotate", "--all"]);
    assert_code(status, 1, &err);
    assert!(
        err.contains("the tunnel is not connected to its router (the last attempt: "),
        "{err}"
    );
    assert!(
        err.contains("rotate once `conduit status` shows it connected"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(home.key("client.pub")).unwrap(),
        client
    );
}

#[test]
fn a_key_older_than_the_rotation_period_is_rotated_on_connect() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let source = sources::echo();
    let old = key_of(&std::fs::read_to_string(home.key("client.pub")).unwrap());
    // The key file was written 40 days ago; tunnels rotate after 30 by default.
    let forty_days = std::time::Duration::from_secs(40 * 86_400);
    std::fs::File::options()
        .write(true)
        .open(home.key("client.key"))
        .unwrap()
        .set_modified(std::time::SystemTime::now() - forty_days)
        .unwrap();
    let (router, raddr) = home.router(engine, &[source.to_string()]);
    let (tunnel, taddr) = home.tunnel(engine, raddr, &source.to_string());
    tunnel.wait_stderr("the key is 40 days old: rotating it");
    router.wait_stderr("client key rotated: the new key is authorized");
    tunnel.wait_stdout_count("connected to router", 2);
    let new = key_of(&std::fs::read_to_string(home.key("client.pub")).unwrap());
    assert_ne!(new, old);
    let auth = std::fs::read_to_string(home.path().join("authorized_clients")).unwrap();
    assert!(auth.contains(&format!("{new} client")), "{auth}");
    assert_echo(taddr, b"with the new key");
}

#[test]
fn a_key_an_operator_is_phasing_out_is_not_rotated() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let source = sources::echo();
    let auth = home.path().join("authorized_clients");
    let line = std::fs::read_to_string(&auth).unwrap();
    let client = key_of(&line);
    std::fs::write(&auth, format!("expires=2099-01-01 {line}")).unwrap();
    let (_router, raddr) = home.router(engine, &[source.to_string()]);
    let (_tunnel, taddr) = home.tunnel(engine, raddr, &source.to_string());

    let (status, _, err) = home.run(&["keys", "rotate", "--all"]);
    assert_code(status, 1, &err);
    assert!(
        err.contains(&format!(
            "the router refused the rotation: key {client} is already set to expire at \
             2099-01-01T00:00:00Z in authorized_clients; it is not rotated again"
        )),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&auth).unwrap(),
        format!("expires=2099-01-01 {line}")
    );
    assert_eq!(
        key_of(&std::fs::read_to_string(home.key("client.pub")).unwrap()),
        client
    );
    assert!(
        !home.key("client.key.next").exists(),
        "the staged key is removed"
    );
    assert_echo(taddr, b"still here");
}

/// What [`shared_key_file_rotated_through_another_router`] leaves running.
struct SharedKeyFile {
    home: Home,
    tb: Proc,
    tb_addr: std::net::SocketAddr,
    b_clients: std::path::PathBuf,
    old: String,
    new: String,
    _routers: Vec<Proc>,
    _ta: Proc,
}

/// Two routers of one home, each with a clients file of its own (both admitting
/// client.pub), tunnel `ta` through the first and `tb` (with `tb_args`) through the
/// second, both with the default key file; `ta`'s key is rotated, then the second
/// router restarts: `tb` tries the file's new key, which that router does not know,
/// and goes back to the old one, which it admits.
fn shared_key_file_rotated_through_another_router(tb_args: &[&str]) -> SharedKeyFile {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let source = sources::echo();
    let allow = [source.to_string()];
    let authorized = std::fs::read_to_string(home.path().join("authorized_clients")).unwrap();
    let files = ["a.txt", "b.txt"].map(|f| {
        let path = home.path().join(f);
        std::fs::write(&path, &authorized).unwrap();
        path
    });
    let own = |i: usize| ["--authorized-keys", files[i].to_str().unwrap()];
    let (ra, a) = home.router_with(engine, &allow, &own(0));
    let (mut rb, b) = home.router_with(engine, &allow, &own(1));
    let (ta, _) = home.tunnel_with(engine, a, &source.to_string(), &["--name", "ta"]);
    let mut args = vec!["--name", "tb"];
    args.extend_from_slice(tb_args);
    let (mut tb, tb_addr) = home.tunnel_with(engine, b, &source.to_string(), &args);
    let old = home.public_key("client");

    home.ok(&["keys", "rotate", "--tunnel", "ta"]);
    let new = home.public_key("client");
    assert_ne!(new, old);
    assert_eq!(std::fs::read_to_string(&files[1]).unwrap(), authorized);

    rb.stop();
    let (rb, _) = home.router_at(engine, &b.to_string(), &allow, &own(1));
    tb.wait_stderr(&format!(
        "router {b} does not admit the key the key file {} holds now, {new} (another tunnel \
         sharing the file rotated it through a router of its own): the router refused this \
         client's key {new}",
        home.key("client.key").display()
    ));
    tb.wait_stderr(&format!(
        "going back to the previous key {old}, which this tunnel used until now"
    ));
    tb.wait_stdout_count("connected to router", 2);
    assert!(tb.running(), "{}", tb.stderr());
    let [_, b_clients] = files;
    SharedKeyFile {
        home,
        tb,
        tb_addr,
        b_clients,
        old,
        new,
        _routers: vec![ra, rb],
        _ta: ta,
    }
}

/// The second router's clients file holds the old key dated and the new one.
fn authorizes_the_new_key(s: &SharedKeyFile) {
    let text = std::fs::read_to_string(&s.b_clients).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.len() == 2
            && lines[0].starts_with("expires=")
            && lines[0].ends_with(&format!(" {} client", s.old))
            && lines[1] == format!("{} client", s.new),
        "{text}"
    );
}

/// A tunnel whose router does not know the key another tunnel rotated the shared
/// key file to goes back to the key it still admits, instead of stopping, and has
/// its router authorize the file's key through a rotation of its own.
#[test]
fn a_tunnel_sharing_its_key_file_with_another_routers_tunnel_has_its_router_authorize_it() {
    let mut s = shared_key_file_rotated_through_another_router(&[]);
    s.tb.wait_stderr(
        ", and asking its routers to authorize the file's key (as `conduit keys rotate --tunnel \
         tb` does). To keep tunnels apart, give each a key file of its own (--key)",
    );
    s.tb.wait_stderr(&format!(
        "asking this tunnel's routers to authorize the key file's key {}",
        s.new
    ));
    s.tb.wait_stdout_count("connected to router", 3);
    authorizes_the_new_key(&s);
    assert_eq!(s.home.public_key("client"), s.new);
    assert_echo(s.tb_addr, b"with the new key");
    assert!(s.tb.running(), "{}", s.tb.stderr());
}

/// The same, for a tunnel that does not rotate its key by itself: it keeps serving
/// with the old key, says to rotate it, and `conduit keys rotate` then has its router
/// authorize the file's key.
#[test]
fn a_tunnel_sharing_its_key_file_keeps_its_admitted_key_until_rotated_by_hand() {
    let mut s = shared_key_file_rotated_through_another_router(&["--key-rotation-days", "0"]);
    s.tb.wait_stderr(
        "; to move it to the file's key, rotate it too (`conduit keys rotate --tunnel tb`: its \
         routers authorize that key). To keep tunnels apart, give each a key file of its own \
         (--key)",
    );
    assert_echo(s.tb_addr, b"with the old key");

    let out = s.home.ok(&["keys", "rotate", "--tunnel", "tb"]);
    assert!(
        out.starts_with(&format!(
            "tunnel \"tb\": key rotated to {}; the old key is admitted until ",
            s.new
        )),
        "{out}"
    );
    assert_eq!(s.home.public_key("client"), s.new);
    authorizes_the_new_key(&s);
    s.tb.wait_stdout_count("connected to router", 3);
    assert_echo(s.tb_addr, b"with the new key");
    assert!(s.tb.running(), "{}", s.tb.stderr());
}

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
            "conduit: error: --next-key (router.next_private_key_path) {} holds the key the \
             router presents now ({}): give it a new key (`conduit init --name router-next`), \
             or leave --next-key out once the router has switched to it\n",
            key.display(),
            home.public_key("router")
        )),
        "{err}"
    );
}
