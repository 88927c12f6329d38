//! The foundation: bytes through the tunnel, intact, under both io engines.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread;

use crate::both_engines;
use crate::harness::{DEADLINE, Engine, Home};
use crate::procfs::{tcp_sockets_on_port, wait_until};
use crate::sources::{self, pattern, read_all_hashed, sha};
use crate::users::{exchange, open_user};

fn connect(addr: std::net::SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect to the tunnel");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    s
}

both_engines!(sixty_four_mib_each_way_arrive_intact, |engine: Engine| {
    const LEN: usize = 64 << 20;
    let home = Home::with_keys();
    let (source, seen) = sources::exchange(LEN);
    let (_router, raddr) = home.router(engine, &[source.to_string()]);
    let (_tunnel, taddr) = home.tunnel(engine, raddr, &source.to_string());

    let conn = connect(taddr);
    let mut w = conn.try_clone().unwrap();
    let upload = pattern(1, LEN);
    let want_up = sha(&upload);
    let writer = thread::spawn(move || {
        w.write_all(&upload).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut r = conn;
    let (down_len, down_sha) = read_all_hashed(&mut r).unwrap();
    writer.join().unwrap();
    assert_eq!((down_len, down_sha), (LEN, sha(&pattern(2, LEN))));
    let (up_len, up_sha) = seen.recv_timeout(DEADLINE).unwrap();
    assert_eq!((up_len, up_sha), (LEN, want_up));
});

both_engines!(
    two_hundred_concurrent_connections_each_get_their_own_bytes,
    |engine: Engine| {
        let home = Home::with_keys();
        let source = sources::echo();
        let (_router, raddr) = home.router(engine, &[source.to_string()]);
        let (_tunnel, taddr) = home.tunnel(engine, raddr, &source.to_string());

        let workers: Vec<_> = (0..200u64)
            .map(|i| {
                thread::spawn(move || {
                    let payload = pattern(1000 + i, 20_000 + (i as usize * 97));
                    let mut c = connect(taddr);
                    let mut w = c.try_clone().unwrap();
                    let sent = payload.clone();
                    let writer = thread::spawn(move || {
                        w.write_all(&sent).unwrap();
                        w.shutdown(Shutdown::Write).unwrap();
                    });
                    let mut back = Vec::new();
                    c.read_to_end(&mut back).unwrap();
                    writer.join().unwrap();
                    assert!(
                        back == payload,
                        "connection {i}: echo differs ({} bytes back)",
                        back.len()
                    );
                })
            })
            .collect();
        for w in workers {
            w.join().expect("a connection failed");
        }
    }
);

both_engines!(
    half_close_still_delivers_the_whole_reply,
    |engine: Engine| {
        let home = Home::with_keys();
        let source = sources::reply_after_eof();
        let (_router, raddr) = home.router(engine, &[source.to_string()]);
        let (_tunnel, taddr) = home.tunnel(engine, raddr, &source.to_string());

        // The user sends a request and shuts down its sending side; the source answers
        // only after seeing EOF, and the answer must still arrive whole.
        for round in 0..3u64 {
            let request = pattern(round, 300_000);
            let mut c = connect(taddr);
            c.write_all(&request).unwrap();
            c.shutdown(Shutdown::Write).unwrap();
            let mut reply = String::new();
            c.read_to_string(&mut reply).unwrap();
            assert_eq!(
                reply,
                format!("received 300000 bytes sha256={}\n", sha(&request))
            );
        }
    }
);

both_engines!(
    a_source_that_half_closes_first_still_receives,
    |engine: Engine| {
        let home = Home::with_keys();
        let (source, seen) = sources::greet_then_listen(b"hello, then silence\n");
        let (_router, raddr) = home.router(engine, &[source.to_string()]);
        let (_tunnel, taddr) = home.tunnel(engine, raddr, &source.to_string());

        let mut c = connect(taddr);
        let mut greeting = Vec::new();
        c.read_to_end(&mut greeting).unwrap();
        assert_eq!(greeting, b"hello, then silence\n");
        // Our side is still open: what we send now must reach the source.
        c.write_all(b"late words").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        assert_eq!(seen.recv_timeout(DEADLINE).unwrap(), b"late words");
    }
);

both_engines!(connections_reuse_channels_back_to_back, |engine: Engine| {
    let home = Home::with_keys();
    let source = sources::echo();
    let (_router, raddr) = home.router(engine, &[source.to_string()]);
    let (_tunnel, taddr) = home.tunnel(engine, raddr, &source.to_string());
    // Many short connections in a row: channels go back to the pool and carry the
    // next stream; every stream must see only its own bytes.
    echo_back_to_back(taddr, 300);
});

/// `count` connections in a row through a tunnel to an echo source, each sending
/// its own line and checking it comes back exactly.
pub(crate) fn echo_back_to_back(taddr: std::net::SocketAddr, count: u64) {
    for i in 0..count {
        let msg = format!("message {i}\n");
        let mut c = connect(taddr);
        c.write_all(msg.as_bytes()).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut back = String::new();
        c.read_to_string(&mut back).unwrap();
        assert_eq!(back, msg);
    }
}

/// A user connection that goes quiet is no idle channel: it outlives the router's
/// idle timeout (`performance.idle_timeout_secs`, which closes unused channels) and
/// works afterwards.
#[test]
fn a_quiet_user_connection_outlives_the_routers_idle_timeout() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let source = sources::echo();
    let (router, raddr) = home.router_with(
        engine,
        &[source.to_string()],
        &[
            "--set",
            "performance.idle_timeout_secs=1",
            "--log-level",
            "debug",
        ],
    );
    let (_tunnel, taddr) = home.tunnel(engine, raddr, &source.to_string());
    let mut c = open_user(taddr);
    // Quiet from here. The tunnel's ends of its connections to the router so far,
    // those closed already too (TIME_WAIT): any other channel is opened later.
    let before: HashSet<u16> = tcp_sockets_on_port(raddr.port())
        .iter()
        .flat_map(|(local, remote)| [local, remote])
        .filter_map(|a| u16::from_str_radix(a.rsplit(':').next()?, 16).ok())
        .collect();
    // The router times out a channel opened since: it sat unused for a whole
    // timeout, and the user's connection was quiet all along.
    wait_until(
        "the router to time out a channel opened after the user went quiet",
        || {
            let timed_out: Vec<SocketAddr> = router
                .stderr()
                .lines()
                .filter_map(|l| l.split_once("idle channel timed out peer="))
                .filter_map(|(_, p)| p.split_whitespace().next()?.parse().ok())
                .collect();
            (
                timed_out.iter().any(|p| !before.contains(&p.port())),
                timed_out,
            )
        },
    );
    exchange(&mut c, b"still open after the idle timeout");
}

/// A channel is reused as soon as the client has seen the router's `Eof`, so the
/// client's own `Eof` and the next stream's `Open` can reach the router in one read.
/// (This once reset ~10% of `Connection: close` requests.)
pub(crate) fn server_closes_first_then_user(
    taddr: std::net::SocketAddr,
    rounds: usize,
    tag: usize,
) {
    for i in 0..rounds {
        let req = format!("GET /{tag}/{i} HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut c = connect(taddr);
        c.write_all(req.as_bytes()).unwrap();
        let mut reply = String::new();
        c.read_to_string(&mut reply)
            .unwrap_or_else(|e| panic!("request {tag}/{i}: {e}"));
        let body = format!("you sent {} bytes", req.len());
        assert!(reply.ends_with(&body), "request {tag}/{i}: {reply:?}");
    }
}

both_engines!(
    reused_channels_survive_server_first_closes,
    |engine: Engine| {
        let home = Home::with_keys();
        let source = sources::answer_and_close();
        let (_router, raddr) = home.router(engine, &[source.to_string()]);
        let (_tunnel, taddr) = home.tunnel(engine, raddr, &source.to_string());
        server_closes_first_then_user(taddr, 300, 0);
        let loops: Vec<_> = (1..=8)
            .map(|t| thread::spawn(move || server_closes_first_then_user(taddr, 100, t)))
            .collect();
        for l in loops {
            l.join().expect("a request failed");
        }
    }
);

/// The router's key as `conduit init` printed it and its .pub file holds it, its name
/// too (`--router-key "$(cat keys/router.pub)"`), pins the router.
#[test]
fn a_router_key_given_as_the_line_init_printed_pins_the_router() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let source = sources::echo();
    let (_router, raddr) = home.router(engine, &[source.to_string()]);
    let line = std::fs::read_to_string(home.key("router.pub")).unwrap();
    let line = line.trim_end();
    assert_eq!(line, format!("{} router", home.public_key("router")));
    let tunnel = home.tunnel_keyed(engine, &raddr.to_string(), line, &source.to_string(), &[]);
    let taddr = crate::harness::addr_in(&tunnel.wait_stdout("listening on"));
    tunnel.wait_stdout("connected to router");
    crate::users::assert_echo(taddr, b"pinned by the printed line");
}
