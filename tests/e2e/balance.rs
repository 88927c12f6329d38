//! One tunnel, several sources (`--source A,B`): the router takes them in turn,
//! fails over when one dies, and brings it back into the rotation when its health
//! probes see it up again; a source that is down altogether is turned away at once.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use crate::both_engines;
use crate::chaos::EchoSource;
use crate::harness::{Engine, Home, Proc};
use crate::procfs::wait_until;
use crate::users::{End, assert_echo, expect_refused_user, wait_for_echo};

/// A router allowing `allow` that probes its sources every second: one failed
/// probe makes a source down, `successes` in a row make it up again.
fn quickly_probing_router(
    home: &Home,
    engine: Engine,
    allow: &[String],
    successes: u32,
) -> (Proc, SocketAddr) {
    let successes = format!("health.successes={successes}");
    home.router_with(
        engine,
        allow,
        &[
            "--set",
            "health.interval_secs=1",
            "--set",
            "health.failures=1",
            "--set",
            &successes,
        ],
    )
}

#[test]
fn streams_take_turns_fail_over_and_come_back() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let a = EchoSource::start();
    let b = EchoSource::start();
    let (a_addr, b_addr) = (a.addr(), b.addr());
    let (router, raddr) =
        quickly_probing_router(&home, engine, &[a_addr.to_string(), b_addr.to_string()], 1);
    let target = format!("{a_addr}, {b_addr}");
    let (_tunnel, taddr) = home.tunnel(engine, raddr, &target);

    // In turn: one stream each way round.
    for i in 0..4 {
        assert_echo(taddr, format!("turn {i}").as_bytes());
    }
    assert_eq!((a.served(), b.served()), (2, 2));

    // A dies: every stream still gets through, to B.
    a.crash();
    for i in 0..4 {
        assert_echo(taddr, format!("failover {i}").as_bytes());
    }
    assert_eq!(b.served(), 6);
    router.wait_stderr(&format!("source {a_addr} is down"));
    for i in 0..2 {
        assert_echo(taddr, format!("while down {i}").as_bytes());
    }
    assert_eq!(b.served(), 8);

    // A comes back on its port: once probed up, it takes its turns again. (The
    // streams sent as the router logs it may still find A last in line: the first
    // that reaches A shows it is back.)
    let a = EchoSource::start_on(a_addr);
    router.wait_stderr(&format!("source {a_addr} is up again"));
    let mut i = 0;
    wait_until("a stream to reach A again", || {
        i += 1;
        assert_echo(taddr, format!("back {i}").as_bytes());
        (a.served() == 1, (a.served(), b.served()))
    });
    // From then on, in turn again.
    let before = b.served();
    for i in 0..4 {
        assert_echo(taddr, format!("in turn {i}").as_bytes());
    }
    assert_eq!((a.served(), b.served()), (3, before + 2));
}

#[test]
fn a_source_reported_down_is_turned_away_at_once_until_a_stream_gets_through() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let src = EchoSource::start();
    let saddr = src.addr();
    // Probed every second and down after one failure; back up only after 100
    // successful probes, far beyond the test's deadline, so only a stream that
    // connects can bring it back up here.
    let (router, raddr) = quickly_probing_router(&home, engine, &[saddr.to_string()], 100);
    let (tunnel, taddr) = home.tunnel(engine, raddr, &saddr.to_string());
    assert_echo(taddr, b"source up");

    src.crash();
    router.wait_stderr(&format!("source {saddr} is down"));
    // One stream a second still tries the source; the others are turned away by
    // the router without a connect, and told why.
    let turned_away =
        format!("the router could not open the source: source {saddr} is down (Connection refused");
    wait_until("a user turned away by the breaker", || {
        assert_eq!(expect_refused_user(taddr), End::Reset);
        let n = tunnel.stderr_count(&turned_away);
        (n > 0, n)
    });
    router.wait_stderr(&format!("open refused: source {saddr} is down ("));

    let src = EchoSource::start_on(saddr);
    wait_for_echo(taddr, b"source back");
    router.wait_stderr(&format!(
        "source {saddr} is up again (a stream connected to it)"
    ));
    for i in 0..4 {
        assert_echo(taddr, format!("after {i}").as_bytes());
    }
    drop(src);
}

both_engines!(
    an_endpoint_that_never_answers_costs_a_stream_only_a_moment,
    |engine: Engine| {
        let home = Home::with_keys();
        let silent = SilentSource::start();
        let b = EchoSource::start();
        let target = format!("{}, {}", silent.addr, b.addr());
        // Connects to the silent endpoint would time out only after an hour: a
        // stream that waited for that would not be served within the test.
        let (_router, raddr) = home.router_with(
            engine,
            &[silent.addr.to_string(), b.addr().to_string()],
            &["--set", "performance.connect_timeout_secs=3600"],
        );
        let (_tunnel, taddr) = home.tunnel(engine, raddr, &target);
        // Half of these start at the silent endpoint (they take turns): each is
        // served by the other one after a short head start.
        for i in 0..4 {
            assert_echo(taddr, format!("stream {i}").as_bytes());
        }
        assert_eq!(b.served(), 4);
    }
);

#[test]
fn a_source_that_stops_answering_is_turned_away_at_once_after_one_stream_waited() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let silent = SilentSource::start();
    let saddr = silent.addr;
    // Connects give up after a second; the health checks would take far longer to
    // call the source down, so only streams find it out here.
    let (router, raddr) = home.router_with(
        engine,
        &[saddr.to_string()],
        &[
            "--set",
            "performance.connect_timeout_secs=1",
            "--set",
            "health.failures=100",
        ],
    );
    let (tunnel, taddr) = home.tunnel(engine, raddr, &saddr.to_string());

    // The first stream waits out its connect; after it, the router turns streams
    // away at once (but for one a second, which tries the source), and says why.
    assert_eq!(expect_refused_user(taddr), End::Reset);
    router.wait_stderr(&format!(
        "the router could not connect to source {saddr}: connection timed out after 1s"
    ));
    let turned_away = format!(
        "the router could not open the source: source {saddr} is not answering (connection \
         timed out after 1s, when a stream last tried it); the router turns its streams away \
         at once until it answers again"
    );
    wait_until("a user turned away without a connect", || {
        assert_eq!(expect_refused_user(taddr), End::Reset);
        let n = tunnel.stderr_count(&turned_away);
        (n > 0, n)
    });
    router.wait_stderr(&format!("open refused: source {saddr} is not answering ("));

    // It answers again on the same port: the next trial connects, and every stream
    // after it gets through.
    drop(silent);
    let src = EchoSource::start_on(saddr);
    wait_for_echo(taddr, b"answering again");
    for i in 0..4 {
        assert_echo(taddr, format!("after {i}").as_bytes());
    }
    drop(src);
}

/// A listener whose accept queue is full: the kernel drops further SYNs, so a
/// connect to it neither succeeds nor fails until the connector gives up (as with
/// a host that is down).
struct SilentSource {
    addr: SocketAddr,
    _listener: TcpListener,
    _queued: Vec<TcpStream>,
}

impl SilentSource {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut queued = Vec::new();
        loop {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(s) => queued.push(s),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => break,
                Err(e) => panic!("filling the accept queue of {addr}: {e}"),
            }
            assert!(
                queued.len() < 100_000,
                "the accept queue of {addr} never filled"
            );
        }
        Self {
            addr,
            _listener: listener,
            _queued: queued,
        }
    }
}
