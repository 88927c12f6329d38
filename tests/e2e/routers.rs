//! One tunnel, several routers (`--router A,B`, sharing one key): the link uses one
//! at a time and moves to the next when it cannot reach the one it uses.

use std::net::TcpListener;

use crate::harness::{Engine, Home, addr_in};
use crate::sources;
use crate::users::{assert_echo, exchange, open_user, wait_for_echo};

#[test]
fn the_link_moves_to_the_next_router_when_one_goes_away() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let source = sources::echo();
    let (mut first, a) = home.router(engine, &[source.to_string()]);
    let (_second, b) = home.router(engine, &[source.to_string()]);
    let tunnel = home.tunnel_via(engine, &format!("{a},{b}"), &source.to_string(), &[]);
    let taddr = addr_in(&tunnel.wait_stdout("listening on"));
    tunnel.wait_stdout(&format!("connected to router {a}"));
    assert_echo(taddr, b"through the first");

    first.stop();
    tunnel.wait_stdout(&format!("connected to router {b}"));
    wait_for_echo(taddr, b"through the second");
    assert_echo(taddr, b"and again");
    let status = home.ok(&["status"]);
    assert!(
        status.contains(&format!("router {b} connected since")),
        "{status}"
    );
}

#[test]
fn a_tunnel_whose_first_router_is_away_starts_on_the_next() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let source = sources::echo();
    // A port nothing listens on: bound, then closed again.
    let away = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (_router, b) = home.router(engine, &[source.to_string()]);
    let tunnel = home.tunnel_via(engine, &format!("{away},{b}"), &source.to_string(), &[]);
    let taddr = addr_in(&tunnel.wait_stdout("listening on"));
    tunnel.wait_stdout(&format!("connected to router {b}"));
    tunnel.wait_stderr(&format!("cannot reach router {away}"));
    tunnel.wait_stderr(&format!("trying router {b}"));
    assert_echo(taddr, b"through the second");
}

#[test]
fn the_link_moves_back_to_the_first_router_when_it_returns() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let source = sources::echo();
    let allow = [source.to_string()];
    let (mut first, a) = home.router(engine, &allow);
    let (mut second, b) = home.router(engine, &allow);
    let tunnel = home.tunnel_via(
        engine,
        &format!("{a},{b}"),
        &source.to_string(),
        &["--router-failback", "1"],
    );
    let taddr = addr_in(&tunnel.wait_stdout("listening on"));
    tunnel.wait_stdout(&format!("connected to router {a}"));
    first.stop();
    tunnel.wait_stdout(&format!("connected to router {b}"));
    wait_for_echo(taddr, b"through the second");

    // A user mid-stream on the second router when the first comes back.
    let mut user = open_user(taddr);
    exchange(&mut user, b"before the move");
    let (_first, _) = home.router_at(engine, &a.to_string(), &allow, &[]);
    tunnel.wait_stderr(&format!("router {a} answers again: moving back to it"));
    tunnel.wait_stdout_count(&format!("connected to router {a}"), 2);
    second.wait_stderr(&format!(
        "client said goodbye: the tunnel moves back to router {a}"
    ));
    // Its stream finishes where it started; new users go to the first router.
    exchange(&mut user, b"after the move");
    drop(user);
    assert_echo(taddr, b"through the first again");

    // The second router can go now: nothing depends on it.
    let lost = tunnel.stderr_count("lost the router link");
    second.stop();
    assert_echo(taddr, b"still through the first");
    assert_eq!(
        tunnel.stderr_count("lost the router link"),
        lost,
        "{}",
        tunnel.stderr()
    );
    let status = home.ok(&["status"]);
    assert!(
        status.contains(&format!("router {a} connected since")),
        "{status}"
    );
}
