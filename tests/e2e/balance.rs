//! One tunnel, several sources (`--source A,B`): the router takes them in turn,
//! fails over when one dies, and brings it back into the rotation when its health
//! probes see it up again.

use crate::chaos::EchoSource;
use crate::harness::{Engine, Home};
use crate::users::assert_echo;

#[test]
fn streams_take_turns_fail_over_and_come_back() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let a = EchoSource::start();
    let b = EchoSource::start();
    let (a_addr, b_addr) = (a.addr(), b.addr());
    let (router, raddr) = home.router_with(
        engine,
        &[a_addr.to_string(), b_addr.to_string()],
        &[
            "--set",
            "health.interval_secs=1",
            "--set",
            "health.failures=1",
            "--set",
            "health.successes=1",
        ],
    );
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

    // A comes back on its port: once probed up, it takes its turns again.
    let a = EchoSource::start_on(a_addr);
    router.wait_stderr(&format!("source {a_addr} is up again"));
    for i in 0..4 {
        assert_echo(taddr, format!("back {i}").as_bytes());
    }
    assert_eq!((a.served(), b.served()), (2, 10));
}
