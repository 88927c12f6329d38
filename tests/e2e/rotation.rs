//! Key rotation (`conduit keys rotate`): a running tunnel makes a new key, its router
//! authorizes it and keeps the old one for its grace period, the tunnel's key file is
//! replaced and the tunnel goes on with the new key; the router retires the old key
//! when the grace period ends. And the router's own key, replaced by hand without
//! an outage: tunnels pin the old and the new key while the router switches.

use std::io::{Read, Write};

use crate::harness::{Engine, Home, Proc, assert_code};
use crate::sources;
use crate::users::{assert_echo, connect};

mod router_by_hand;
mod router_rotates;
mod shared_key_file;

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

/// A key file that is a link to a key kept elsewhere stays a link through a
/// rotation: the file it leads to gets the new key, so that whatever else reads it
/// is not left with the old key, which the router stops admitting once it expires.
#[cfg(unix)]
#[test]
fn a_key_file_that_is_a_link_is_rotated_where_it_leads() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let shared = home.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let target = shared.join("tunnel.key");
    std::fs::rename(home.key("client.key"), &target).unwrap();
    std::os::unix::fs::symlink(&target, home.key("client.key")).unwrap();
    let source = sources::echo();
    let (_router, raddr) = home.router(engine, &[source.to_string()]);
    let (tunnel, taddr) = home.tunnel(engine, raddr, &source.to_string());
    let old = key_of(&std::fs::read_to_string(home.key("client.pub")).unwrap());

    home.ok(&["keys", "rotate", "--tunnel", "tunnel"]);
    let new = key_of(&std::fs::read_to_string(home.key("client.pub")).unwrap());
    assert_ne!(new, old);
    let link = std::fs::symlink_metadata(home.key("client.key")).unwrap();
    assert!(link.is_symlink(), "the link was replaced by a file");
    // `keys show` checks the .pub against the key the link leads to.
    assert_eq!(home.ok(&["keys", "show"]), format!("{new} client\n"));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&target).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    tunnel.wait_stdout_count("connected to router", 2);
    assert_echo(taddr, b"after");
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
    router.wait_stderr(&format!(
        "allow rule `ghost={source}` names client \"ghost\", but no key in"
    ));
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
    // Told how to be let in by name too, not to open the source to every client.
    assert!(
        err.contains(&format!(
            "the router refused this tunnel: source {source} is allowed to other clients only \
             by the router's policy; to allow it to this client too, add `--allow \
             other={source}` to the router"
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
    let (router, raddr) = home.router(engine, &[rule]);
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

    // Asked again at once over the same link: refused without the file being read
    // (a client asking in a loop costs the router nothing), and logged once.
    let (status, _, err) = home.run(&["keys", "rotate", "--all"]);
    assert_code(status, 1, &err);
    assert!(
        err.contains("the router refused the rotation: this link asked for a rotation ")
            && err.contains(" ago; ask again in "),
        "{err}"
    );
    assert_eq!(router.stderr_count("key rotation refused"), 1);

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

/// A router that does not answer a rotation (frozen) is named, before the control
/// API's deadline passes, rather than the tunnel; the rotation goes on and ends when
/// the router answers.
#[test]
fn a_router_that_does_not_answer_a_rotation_is_named() {
    let home = Home::with_keys();
    let source = sources::echo();
    let (router, raddr) = home.router(Engine::Epoll, &[source.to_string()]);
    let (tunnel, taddr) = home.tunnel(Engine::Epoll, raddr, &source.to_string());
    assert_echo(taddr, b"before");
    let old = std::fs::read_to_string(home.key("client.pub")).unwrap();
    router.signal("STOP");
    let (status, out, err) = home.run(&["keys", "rotate", "--all"]);
    router.signal("CONT");
    assert_code(status, 1, &err);
    assert_eq!(out, "");
    assert!(
        err.contains(&format!(
            "router {raddr} did not answer the rotation within 8s (stopped or overloaded?); \
             the tunnel goes on waiting for the answer and logs how the rotation ends: see \
             `conduit logs tunnel`\n"
        )),
        "{err}"
    );
    tunnel.wait_stderr("key rotated: now ");
    let new = std::fs::read_to_string(home.key("client.pub")).unwrap();
    assert_ne!(new, old);
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
