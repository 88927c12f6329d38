//! `up` and `down` while tunnels drain: a restart waits only for what each tunnel
//! needs, and each command says at once what it waits for.

use std::io::{Read, Write};
use std::net::TcpStream;

use super::{Cleanup, echo_through, list, names, pid_of, said, up, write_slow_draining};
use crate::harness::{DEADLINE, Engine, Home, assert_code};
use crate::sources;

/// Sends `what` on `c` and expects it back from the echo source.
fn echo_on(c: &mut TcpStream, what: &[u8]) {
    c.write_all(what).unwrap();
    let mut back = vec![0u8; what.len()];
    c.read_exact(&mut back).unwrap();
    assert_eq!(back, what);
}

/// A connection through the tunnel at `addr`, open and echoing.
fn held(addr: &str) -> TcpStream {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    echo_on(&mut c, b"held");
    c
}

/// A restart by `up` waits only for what each tunnel needs: beta, idle, is restarted
/// while alpha still drains a held connection (its drain allows 120 s).
#[test]
fn up_restarts_an_idle_tunnel_while_a_busy_one_drains() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo().to_string();
    let (_router, raddr) = home.router(Engine::Epoll, std::slice::from_ref(&source));
    let write = |source: &str| {
        let tunnels = [("alpha", source.to_owned()), ("beta", source.to_owned())];
        write_slow_draining(&home, raddr.port(), &tunnels, "127.0.0.1:0")
    };
    let file = write(&source);
    let (status, _, err) = up(&home, &file, &[]);
    assert_code(status, 0, &err);
    let (alpha, beta) = (pid_of(&home, "alpha"), pid_of(&home, "beta"));
    let entry = |name: &str, key: &str| {
        list(&home).iter().find(|t| t["name"] == name).unwrap()[key]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (bind, id) = (entry("alpha", "bind"), entry("alpha", "id"));
    let mut held = held(&bind);

    // Both change; beta comes back while alpha drains, and `up` says at once what
    // it waits for.
    let file = write(&source.replace("127.0.0.1", "localhost"));
    let mut again = home.spawn(&["up", "-f", file.to_str().unwrap()]);
    let draining = format!(
        "tunnel \"alpha\" ({id}) is draining 1 open connection for up to 120s: `up` starts it \
         again on its new settings once it has stopped; `conduit kill --tunnel {id} --force` \
         stops it now\n"
    );
    again.wait_stderr(&draining);
    crate::procfs::wait_until("beta to be restarted while alpha drains", || {
        let now = list(&home);
        let pid = |n: &str| {
            now.iter()
                .find(|t| t["name"] == n)
                .map(|t| t["pid"].clone())
        };
        let restarted = pid("beta").is_some_and(|p| p != beta);
        (restarted, now)
    });
    echo_through(&home, "beta");
    assert_eq!(pid_of(&home, "alpha"), alpha);
    echo_on(&mut held, b"still draining");
    drop(held);
    let status = again.wait_exit();
    assert_code(status, 0, &again.stderr());
    // Beta had nothing to drain: nothing said of it.
    assert_eq!(said(&again.stderr()), draining);
    let out = again.stdout().join("\n");
    for n in ["alpha", "beta"] {
        assert!(
            out.contains(&format!("restarted (source changed) tunnel \"{n}\"")),
            "{out}"
        );
    }
    assert_ne!(pid_of(&home, "alpha"), alpha);
    echo_through(&home, "alpha");
}

/// A tunnel new in the file on the port of one that left it starts only once that
/// one has drained and gone: it never listens beside it.
#[test]
fn a_new_tunnel_on_a_leaving_ones_port_waits_for_it() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo().to_string();
    let (_router, raddr) = home.router(Engine::Epoll, std::slice::from_ref(&source));
    let bind = format!("127.0.0.1:{}", crate::harness::dead_port());
    let write =
        |name: &str| write_slow_draining(&home, raddr.port(), &[(name, source.clone())], &bind);
    let (status, _, err) = up(&home, &write("alpha"), &[]);
    assert_code(status, 0, &err);
    let held = held(&bind);

    let file = write("delta");
    let mut again = home.spawn(&["up", "-f", file.to_str().unwrap()]);
    let now = crate::procfs::wait_until("alpha to drain", || {
        let now = list(&home);
        let draining = now
            .iter()
            .any(|t| t["name"] == "alpha" && t["status"] == "stopping");
        (draining, now)
    });
    assert!(!now.iter().any(|t| t["name"] == "delta"), "{now:?}");
    drop(held);
    let status = again.wait_exit();
    assert_code(status, 0, &again.stderr());
    let out = again.stdout().join("\n");
    assert!(
        out.contains("stopped tunnel \"alpha\" (no longer in"),
        "{out}"
    );
    assert!(out.contains("started tunnel \"delta\""), "{out}");
    assert_eq!(names(&home), ["delta"]);
    echo_through(&home, "delta");
}

/// `down` says at once which tunnel drains how many connections for how long, and
/// how to stop it now; an `up` that waits for that `down` says so too.
#[test]
fn down_and_a_waiting_up_say_what_they_wait_for() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo().to_string();
    let (_router, raddr) = home.router(Engine::Epoll, std::slice::from_ref(&source));
    let file = write_slow_draining(&home, raddr.port(), &[("alpha", source)], "127.0.0.1:0");
    let f = file.to_str().unwrap();
    let (status, _, err) = up(&home, &file, &[]);
    assert_code(status, 0, &err);
    let (bind, id) = {
        let l = list(&home);
        let s = |k: &str| l[0][k].as_str().unwrap().to_owned();
        (s("bind"), s("id"))
    };
    let held = held(&bind);

    let mut down = home.spawn(&["down", "-f", f]);
    let draining = format!(
        "tunnel \"alpha\" ({id}) is draining 1 open connection for up to 120s; `conduit kill \
         --tunnel {id} --force` stops it now (`down --force` does not drain)\n"
    );
    down.wait_stderr(&draining);
    let mut up = home.spawn(&["up", "-f", f]);
    let waiting = format!(
        "another `conduit up` or `conduit down` (pid {}) is changing the tunnels of {}; \
         waiting for it to finish (it may be draining a tunnel; Ctrl-C stops waiting)\n",
        down.pid(),
        home.path().display()
    );
    up.wait_stderr(&waiting);

    let (status, out, err) = home.run(&["kill", "--tunnel", &id, "--force"]);
    assert_code(status, 0, &err);
    assert_eq!(out, format!("stopped tunnel \"alpha\" ({id})\n"));
    assert_eq!(err, "");
    assert_code(down.wait_exit(), 0, &down.stderr());
    assert_eq!(down.stdout(), [format!("stopped tunnel \"alpha\" ({id})")]);
    assert_eq!(down.stderr(), draining);
    assert_code(up.wait_exit(), 0, &up.stderr());
    assert_eq!(said(&up.stderr()), waiting);
    assert!(
        up.stdout()[0].starts_with("started tunnel \"alpha\""),
        "{:?}",
        up.stdout()
    );
    drop(held);
}

/// A tunnel of the file that a `kill` is draining is not "up to date": `up` lets it
/// finish stopping, then starts it again.
#[test]
fn up_starts_again_a_tunnel_that_a_kill_is_draining() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo().to_string();
    let (_router, raddr) = home.router(Engine::Epoll, std::slice::from_ref(&source));
    let file = write_slow_draining(&home, raddr.port(), &[("alpha", source)], "127.0.0.1:0");
    let (status, _, err) = up(&home, &file, &[]);
    assert_code(status, 0, &err);
    let before = pid_of(&home, "alpha");
    let bind = list(&home)[0]["bind"].as_str().unwrap().to_owned();
    let mut held = held(&bind);
    let mut kill = home.spawn(&["kill", "--tunnel", "alpha"]);
    // As `up` reads it: the registry's entry.
    crate::procfs::wait_until("alpha's registry entry to say stopping", || {
        let dir = home.path().join("tunnels");
        let stopping = std::fs::read_dir(&dir).unwrap().flatten().any(|f| {
            std::fs::read_to_string(f.path()).is_ok_and(|t| t.contains("\"status\": \"stopping\""))
        });
        (stopping, ())
    });
    let mut again = home.spawn(&["up", "-f", file.to_str().unwrap()]);
    // `up` has found it stopping once it asks it to stop too.
    crate::procfs::wait_until("up to ask alpha to stop", || {
        let log = home.ok(&["logs", "alpha"]);
        (
            log.contains("asked to stop (conduit kill, down or up) while stopping"),
            (),
        )
    });
    // The drain goes on until its last user leaves.
    echo_on(&mut held, b"still draining");
    drop(held);
    assert_code(kill.wait_exit(), 0, &kill.stderr());
    assert_code(again.wait_exit(), 0, &again.stderr());
    let out = again.stdout().join("\n");
    assert!(
        out.contains("started again (it was stopping) tunnel \"alpha\""),
        "{out}"
    );
    // Its settings did not change: `up` does not say they did.
    let err = again.stderr();
    assert!(
        err.contains("is draining 1 open connection for up to ")
            && err.contains("s: `up` starts it again once it has stopped; `conduit kill"),
        "{err}"
    );
    assert_ne!(pid_of(&home, "alpha"), before);
    echo_through(&home, "alpha");
}

/// An `up` interrupted (Ctrl-C) while a tunnel it restarts drains stops waiting: it
/// says the tunnel is not restarted and how to start it, and exits 130; the old
/// process drains on, and the next `up` starts the tunnel once it has stopped.
#[test]
fn an_interrupted_up_says_which_tunnel_it_did_not_restart() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo().to_string();
    let (_router, raddr) = home.router(Engine::Epoll, std::slice::from_ref(&source));
    let write = |source: &str| {
        write_slow_draining(
            &home,
            raddr.port(),
            &[("alpha", source.to_owned())],
            "127.0.0.1:0",
        )
    };
    let (status, _, err) = up(&home, &write(&source), &[]);
    assert_code(status, 0, &err);
    let bind = list(&home)[0]["bind"].as_str().unwrap().to_owned();
    let mut held = held(&bind);

    let file = write(&source.replace("127.0.0.1", "localhost"));
    let f = file.to_str().unwrap();
    let mut again = home.spawn(&["up", "-f", f]);
    again.wait_stderr("tunnel \"alpha\" (");
    again.wait_stderr("is draining 1 open connection");
    again.signal("INT");
    let status = again.wait_exit();
    let err = again.stderr();
    assert_code(status, 130, &err);
    assert!(
        err.contains(&format!(
            "tunnel \"alpha\" is not restarted: `up` was interrupted while its old process \
             drained (it stops once drained, and nothing starts it again: run `conduit up -f \
             {f}` to start it)"
        )),
        "{err}"
    );
    // The old process drains on, serving its connection. An `up` now waits for it
    // to stop, then starts the tunnel, naming what changed.
    echo_on(&mut held, b"still served");
    let mut third = home.spawn(&["up", "-f", f]);
    third.wait_stderr("is draining 1 open connection");
    drop(held);
    let status = third.wait_exit();
    assert_code(status, 0, &third.stderr());
    let out = third.stdout().join("\n");
    assert!(
        out.starts_with("restarted (source changed) tunnel \"alpha\""),
        "{out}"
    );
    echo_through(&home, "alpha");
}
