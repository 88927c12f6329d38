//! Admitting and revoking clients while the router runs: `authorized_clients` is read
//! again when it changes and on SIGHUP; a removed key loses its streams and its
//! tunnel, other clients carry on, and a file that does not parse changes nothing.

use std::io::{Read, Write};
use std::path::Path;

use crate::harness::{Engine, Home, assert_code};
use crate::sources;
use crate::users::{End, assert_echo, expect_end, open_user};

/// Replaces `path` the way editors and config tools do: a new file renamed over it.
fn rewrite(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn keys_are_revoked_and_admitted_without_a_restart() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let client = home.ok(&["keys", "show", "--name", "client"]);
    let other = home.ok(&["init", "--name", "other"]);
    let file = home.path().join("authorized_clients");
    rewrite(&file, &format!("{client}{other}"));
    let source = sources::echo();
    let (router, raddr) = home.router(engine, &[source.to_string()]);
    let other_key = home.key("other.key");
    let other_key = other_key.to_str().unwrap();
    let (mut revoked, revoked_addr) =
        home.tunnel_with(engine, raddr, &source.to_string(), &["--name", "first"]);
    let (_kept, kept_addr) = home.tunnel_with(
        engine,
        raddr,
        &source.to_string(),
        &["--name", "other", "--key", other_key],
    );
    let mut doomed = open_user(revoked_addr);
    let mut survivor = open_user(kept_addr);

    // The first client's key goes: its stream is closed and its tunnel, refused on
    // reconnecting, keeps trying (whoever runs the router may put the key back); the
    // other client's stream carries on.
    rewrite(&file, &format!("# only the other one now\n{other}"));
    router.wait_stderr("authorized_clients reloaded from");
    router.wait_stderr("(the file changed): 1 in all, 0 added, 1 removed");
    router.wait_stderr(
        "client key removed from authorized_clients: closing its streams and control sessions",
    );
    assert_eq!(expect_end(&mut doomed), End::Reset);
    revoked.wait_stderr(
        "router said goodbye: the client's key was removed from the router's \
         authorized_clients",
    );
    revoked.wait_stderr(
        "is not authorized; add it to the router's authorized_clients file; retrying in ",
    );
    assert!(revoked.running(), "{}", revoked.stderr());
    // Its users are told why, not that the router is away.
    crate::users::expect_refused_user(revoked_addr);
    revoked.wait_stderr("user connection closed: the router refused this client: client key ");
    survivor.write_all(b"still here").unwrap();
    let mut back = [0u8; 10];
    survivor.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"still here");

    // Written in place (`> authorized_clients`), the file is empty for a moment:
    // that revokes nobody; its content, once there, is read as usual.
    std::fs::write(&file, "").unwrap();
    router.wait_stderr("authorized_clients lists no key now (the file changed): not reloaded");
    assert_echo(kept_addr, b"an empty moment revokes nobody");
    std::fs::write(&file, &other).unwrap();
    router.wait_stderr("(the file changed): 1 in all, 0 added, 0 removed");

    // A file that no longer parses changes nothing.
    rewrite(&file, "ed25519:garbage\n");
    router.wait_stderr("authorized_clients not reloaded (the file changed): ");
    router.wait_stderr("line 1: invalid public key");
    router.wait_stderr("the 1 key(s) loaded before stay in force until the file is fixed");
    assert_echo(kept_addr, b"the other client is unharmed");

    // Nor does one that cannot be read (a directory in its place): said once, not at
    // every look, and again when SIGHUP asks.
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();
    let unread = format!("cannot read {}: not a regular file; ", file.display());
    router.wait_stderr(&format!(
        "authorized_clients not reloaded (the file changed): {unread}"
    ));
    router.signal("HUP");
    router.wait_stderr(&format!(
        "authorized_clients not reloaded (SIGHUP): {unread}"
    ));
    assert_eq!(router.stderr_count(&unread), 2, "{}", router.stderr());
    std::fs::remove_dir(&file).unwrap();

    // Written back and announced with SIGHUP, the first key works again: the tunnel
    // it refused is back by itself, at its next attempt (its back-off is capped at
    // 30 s), and so is a new one.
    rewrite(&file, &format!("{client}{other}"));
    router.signal("HUP");
    router.wait_stderr("(SIGHUP): 2 in all, 1 added, 0 removed");
    let (_back, back_addr) =
        home.tunnel_with(engine, raddr, &source.to_string(), &["--name", "again"]);
    assert_echo(back_addr, b"admitted again");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while revoked.stderr_count("connected to router") < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the refused tunnel never came back: {}",
            revoked.stderr()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_echo(revoked_addr, b"back by itself");
}

#[test]
fn a_key_listed_with_an_expiry_time_is_revoked_when_it_passes() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let client = home.ok(&["keys", "show", "--name", "client"]);
    let file = home.path().join("authorized_clients");
    let expires_in = |secs| {
        humantime::format_rfc3339_seconds(
            std::time::SystemTime::now() + std::time::Duration::from_secs(secs),
        )
        .to_string()
    };
    // Listed with an expiry an hour ahead while router and tunnel come up,
    // however long that takes on a loaded machine.
    let far = expires_in(3600);
    rewrite(&file, &format!("expires={far} {client}"));
    let source = sources::echo();
    let (router, raddr) = home.router(engine, &[source.to_string()]);
    router.wait_stderr(&format!(
        "client key admitted until {far} (expires= in authorized_clients)"
    ));
    let (mut tunnel, taddr) = home.tunnel(engine, raddr, &source.to_string());
    let mut held = open_user(taddr);

    // Then the line gets an expiry a few seconds ahead, announced with SIGHUP.
    let at = expires_in(5);
    rewrite(&file, &format!("expires={at} {client}"));
    router.signal("HUP");
    router.wait_stderr("(SIGHUP): 1 in all, 0 added, 0 removed");
    router.wait_stderr("1 key(s) in authorized_clients carry an expiry time (expires=)");

    router.wait_stderr(
        "client key expired (expires= in authorized_clients): closing its streams and control \
         sessions",
    );
    assert_eq!(expect_end(&mut held), End::Reset);
    // Told that it expired and where the fix is, not that it was never listed; the
    // tunnel keeps trying, for the key's line to be renewed.
    let expired = format!(
        "client key {} expired at {at} (expires= on its line in the router's authorized_clients)",
        client.split_whitespace().next().unwrap()
    );
    tunnel.wait_stderr(&expired);
    tunnel.wait_stderr("; retrying in ");
    let err = tunnel.stderr();
    assert!(!err.contains("add it to the router's"), "{err}");
    assert!(tunnel.running(), "{err}");
    // A tunnel that no router admitted yet stops at its first refusal.
    let mut late = home.tunnel_proc(engine, raddr, &source.to_string(), &["--name", "late"]);
    let status = late.wait_exit();
    let err = late.stderr();
    assert_code(status, 77, &err);
    assert!(
        err.contains("conduit: error: the router refused this client's key"),
        "{err}"
    );
    // The fix it cannot tell from the refusal alone is named too.
    assert!(
        err.contains(
            "choose your own; if the key is there already, its expires= time has passed: \
             extend or remove that expires=)"
        ),
        "{err}"
    );

    // A key added with a date already past (a typo, most likely) is named at once;
    // the key whose time ran out above is not named again.
    let other = home.ok(&["init", "--name", "other"]);
    let other = other
        .split_whitespace()
        .find(|w| w.starts_with("ed25519:"))
        .unwrap()
        .to_owned();
    rewrite(
        &file,
        &format!("expires={at} {client}\nexpires=2020-01-01 {other}"),
    );
    router.signal("HUP");
    router.wait_stderr(&format!(
        "client key {other} was added to authorized_clients with an expiry time already past \
         (expires=2020-01-01T00:00:00Z): it admits nobody; correct the date (UTC, such as \
         2027-01-31) or remove expires="
    ));
    router.wait_stderr("(SIGHUP): 2 in all, 0 added, 0 removed");
    assert_eq!(
        router.stderr_count("with an expiry time already past"),
        1,
        "{}",
        router.stderr()
    );
}

/// A key's name is the whole rest of its line: `Bob Smith laptop` is not `laptop`.
/// The router says so at start and whenever a reload leaves a rule by name for no
/// key, naming the rule and the line to write.
#[test]
fn a_rule_for_a_name_no_line_gives_is_named_at_start_and_at_reload() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let key = home.public_key("client");
    let file = home.path().join("authorized_clients");
    rewrite(&file, &format!("{key} Bob Smith laptop\n"));
    let source = sources::echo();
    let rule = format!("laptop={source}");
    let (router, raddr) = home.router(engine, std::slice::from_ref(&rule));
    let unnamed = format!(
        "allow rule `{rule}` names client \"laptop\", but no key in {} has that name: it \
         applies to no one until a key's line names it `ed25519:… laptop` (a key's name is the \
         whole rest of its line; anything else goes after a `#`); key {key} is named \"Bob \
         Smith laptop\" there: write its line `{key} laptop  # Bob Smith`",
        file.display()
    );
    router.wait_stderr(&unnamed);
    let mut refused = home.tunnel_proc(engine, raddr, &source.to_string(), &[]);
    let status = refused.wait_exit();
    let err = refused.stderr();
    assert_code(status, 77, &err);
    // Not nameable by a rule, the client is offered a rule for its key.
    assert!(
        err.contains(&format!(
            "the router refused this tunnel: source {source} is allowed to other clients only \
             by the router's policy; to allow it to this client too, add `--allow \
             {key}={source}` to the router"
        )),
        "{err}"
    );

    // The line written as the warning says: the rule names the key.
    rewrite(&file, &format!("{key} laptop  # Bob Smith\n"));
    router.wait_stderr("(the file changed): 1 in all, 0 added, 0 removed");
    let (_tunnel, taddr) = home.tunnel(engine, raddr, &source.to_string());
    assert_echo(taddr, b"named by its rule");
    assert_eq!(router.stderr_count(&unnamed), 1, "{}", router.stderr());

    // A reload that takes the name away again says so.
    rewrite(&file, &format!("{key} Bob Smith laptop\n"));
    router.wait_stderr_count("(the file changed): 1 in all, 0 added, 0 removed", 2);
    router.wait_stderr_count(&unnamed, 2);
}
