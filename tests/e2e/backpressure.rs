//! A source that stops reading holds its stream up, as TCP would, but only for as
//! long as someone is on the other end: a user who gives up (resets), or an operator
//! who closes the connection, frees both ends of the tunnel and the source's
//! connection at once, though nothing on the way reads any more.

use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::both_engines;
use crate::harness::{Engine, Home};
use crate::procfs::wait_until;

/// A source that takes connections and never reads from them; the connections.
fn deaf_source() -> (SocketAddr, Arc<Mutex<Vec<TcpStream>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let kept = held.clone();
    thread::spawn(move || {
        for c in l.incoming().flatten() {
            kept.lock().unwrap().push(c);
        }
    });
    (addr, held)
}

/// A user that has written until nothing more is taken: every buffer between it and
/// the deaf source is full.
fn stuck_user(taddr: SocketAddr) -> TcpStream {
    let mut user = TcpStream::connect(taddr).unwrap();
    user.set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let chunk = vec![7u8; 64 << 10];
    loop {
        match user.write(&chunk) {
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return user;
            }
            Err(e) => panic!("the user's write failed: {e}"),
        }
    }
}

/// The source's connection of the stream: the one holding what the user sent (the
/// router's health checks connect too, and send nothing).
fn stream_at_source(held: &Mutex<Vec<TcpStream>>) -> TcpStream {
    wait_until("the stream's bytes waiting at the source", || {
        let held = held.lock().unwrap();
        let with_data = held.iter().find(|c| {
            c.set_nonblocking(true).unwrap();
            matches!(c.peek(&mut [0u8; 1]), Ok(n) if n > 0)
        });
        (
            with_data.is_some(),
            with_data.map(|c| c.try_clone().unwrap()),
        )
    })
    .unwrap()
}

/// Waits until the source's connection `c` is reset (the router aborted it).
fn reset_by_router(c: &TcpStream) {
    wait_until("the source's connection reset by the router", || {
        let err = socket2::SockRef::from(c).take_error().ok().flatten();
        let reset = err
            .as_ref()
            .is_some_and(|e| e.kind() == ErrorKind::ConnectionReset);
        (reset, err.map(|e| e.to_string()))
    });
}

/// The connections the tunnel `list` shows open.
fn open_on_tunnel(home: &Home) -> u64 {
    let list: serde_json::Value =
        serde_json::from_str(&home.ok(&["list", "--format", "json"])).unwrap();
    list[0]["active_connections"].as_u64().unwrap()
}

/// A user resets its connection while all between it and the deaf source is full.
fn user_resets(engine: Engine, transport: &[&str]) {
    let home = Home::with_keys();
    let (saddr, held) = deaf_source();
    let (_router, raddr) = home.router_with(engine, &[saddr.to_string()], transport);
    let (_tunnel, taddr) = home.tunnel_with(engine, raddr, &saddr.to_string(), transport);
    let user = stuck_user(taddr);
    let at_source = stream_at_source(&held);
    assert_eq!(open_on_tunnel(&home), 1);
    crate::chaos::reset(&user);
    drop(user);
    reset_by_router(&at_source);
    wait_until("no connection open on the tunnel", || {
        let n = open_on_tunnel(&home);
        (n == 0, n)
    });
}

both_engines!(
    a_user_who_resets_while_the_source_reads_nothing_frees_both_ends,
    |engine: Engine| user_resets(engine, &[])
);

both_engines!(on_the_plain_transport_too, |engine: Engine| user_resets(
    engine,
    crate::plain::PLAIN
));

/// An operator's close of such a stream on the tunnel reaches the source too.
#[test]
fn an_operator_close_of_a_stuck_stream_reaches_the_source() {
    let home = Home::with_keys();
    let (saddr, held) = deaf_source();
    let (_router, raddr) = home.router(Engine::Epoll, &[saddr.to_string()]);
    let (_tunnel, taddr) = home.tunnel(Engine::Epoll, raddr, &saddr.to_string());
    let _user = stuck_user(taddr);
    let at_source = stream_at_source(&held);
    let list: serde_json::Value =
        serde_json::from_str(&home.ok(&["list", "--connections", "--format", "json"])).unwrap();
    let id = list[0]["connections"][0]["id"].to_string();
    home.ok(&["kill", "--connection", &id]);
    reset_by_router(&at_source);
}
