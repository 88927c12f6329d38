//! Limits: `--max-connections` on the tunnel and on the router, and what many
//! connections leave behind — open files, memory and half-dead sockets must come
//! back to where they started.
//!
//! The full 100,000-connection run is `#[ignore]`d (it takes minutes):
//!
//! ```sh
//! cargo nextest run -p conduit --test e2e --run-ignored only limits::a_hundred_thousand
//! ```

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use crate::both_engines;
use crate::harness::{Engine, Home, Proc};
use crate::procfs::{Footprint, close_wait, wait_until};
use crate::sources::{self, pattern};
use crate::users::{assert_echo, connect, expect_refused_user, open_user, wait_for_echo};

/// One more round trip on a connection that is already open.
fn still_works(c: &mut std::net::TcpStream, msg: &[u8]) {
    c.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    c.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
}

both_engines!(
    the_tunnel_refuses_connections_beyond_max_connections,
    |engine: Engine| {
        let home = Home::with_keys();
        let source = sources::echo();
        let (_router, raddr) = home.router(engine, &[source.to_string()]);
        let (tunnel, taddr) = home.tunnel_with(
            engine,
            raddr,
            &source.to_string(),
            &["--max-connections", "2"],
        );
        let mut a = open_user(taddr);
        let mut b = open_user(taddr);

        // Closed without a byte (reset, or end of file once a write took the reset).
        expect_refused_user(taddr);
        tunnel.wait_stderr(
            "refused a user connection: the tunnel's limit of 2 open connections is reached; \
             raise --max-connections (now 2) to allow more",
        );
        // Counted among the tunnel's errors, by kind.
        let metrics = home.ok(&["stats", "--format", "prometheus"]);
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("conduit_errors_total{")
                    && l.ends_with(",kind=\"limit_reached\"} 1")),
            "{metrics}"
        );
        // And among its connections, as a router counts what it refuses: never
        // more failed than in all.
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("conduit_connections_total{") && l.ends_with("} 3")),
            "{metrics}"
        );
        still_works(&mut a, b"a is unharmed");
        still_works(&mut b, b"b is unharmed");

        // A place comes free when a user leaves.
        drop(a);
        wait_for_echo(taddr, b"room again");
        still_works(&mut b, b"b still");
    }
);

both_engines!(
    the_router_refuses_streams_beyond_max_connections,
    |engine: Engine| {
        let home = Home::with_keys();
        let source = sources::echo();
        let (router, raddr) = home.router_at(
            engine,
            "127.0.0.1:0",
            &[source.to_string()],
            &["--max-connections", "1"],
        );
        let (tunnel, taddr) = home.tunnel(engine, raddr, &source.to_string());
        let mut a = open_user(taddr);

        let limit = "the router's limit of 1 open connection is reached; \
                     raise --max-connections (now 1) on the router to allow more";
        expect_refused_user(taddr);
        router.wait_stderr(&format!("open refused: {limit}"));
        tunnel.wait_stderr(&format!(
            "user connection closed: the router refused the stream: {limit}"
        ));
        // A crowd refused is logged once a second, with a count of the others (on
        // the next line, or as the second ends).
        crate::http::wait_for("the tunnel to hold refusals back", || {
            expect_refused_user(taddr);
            let e = tunnel.stderr();
            (e.contains("more refused since the last report)")
                || e.contains(
                    "user connections closed unserved in the second after the last report: ",
                ))
            .then_some(())
        });
        still_works(&mut a, b"a is unharmed");

        drop(a);
        wait_for_echo(taddr, b"room again");
    }
);

/// Every refusal of a burst is in the log once: the first as its own line, the rest
/// in the count logged as the second ends, not held for a later refusal that may
/// never come.
#[test]
fn a_burst_of_refusals_is_counted_in_the_log_as_its_second_ends() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    // A source nobody listens on: the router refuses each stream.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let (_router, raddr) = home.router(engine, std::slice::from_ref(&dead));
    // Two workers: each core logs its own first line and count.
    let (tunnel, taddr) = home.tunnel(engine, raddr, &dead);
    const USERS: usize = 30;
    for _ in 0..USERS {
        expect_refused_user(taddr);
    }
    let logged = || {
        let e = tunnel.stderr();
        let lines = e.matches("user connection closed: ").count();
        let number_before = |needle: &str| -> usize {
            e.lines()
                .filter_map(|l| l.split_once(needle))
                .map(|(head, _)| {
                    let n = head.rsplit([' ', '(']).next().unwrap_or_default();
                    n.parse::<usize>()
                        .unwrap_or_else(|_| panic!("no count before {needle:?}: {head}"))
                })
                .sum()
        };
        // `… in the second after the last report: N more`.
        let number_after = |needle: &str| -> usize {
            e.lines()
                .filter_map(|l| l.split_once(needle))
                .map(|(_, tail)| {
                    let n = tail.split(' ').next().unwrap_or_default();
                    n.parse::<usize>()
                        .unwrap_or_else(|_| panic!("no count after {needle:?}: {tail}"))
                })
                .sum()
        };
        lines
            + number_after("user connections closed unserved in the second after the last report: ")
            + number_before(" more refused since the last report)")
    };
    crate::http::wait_for("every refusal counted", || {
        (logged() >= USERS).then_some(())
    });
    assert_eq!(logged(), USERS, "{}", tunnel.stderr());
}

/// `threads` users in parallel make `count` short echo connections in all, each
/// checking its bytes.
fn churn(taddr: SocketAddr, count: usize, threads: usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let next = next.clone();
            thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return;
                    }
                    let msg = pattern(i as u64, 64 + i % 1000);
                    let mut c = connect(taddr);
                    c.write_all(&msg).unwrap();
                    c.shutdown(Shutdown::Write).unwrap();
                    let mut back = Vec::with_capacity(msg.len());
                    c.read_to_end(&mut back)
                        .unwrap_or_else(|e| panic!("connection {i}: {e}"));
                    assert!(back == msg, "connection {i}: the echo differs");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("a connection failed");
    }
}

/// Raises this test process's soft open-file limit to `want` (within the hard
/// limit, which must allow it), with `prlimit` on its own pid.
fn raise_own_nofile(want: u64) {
    let (_, hard) = crate::procfs::nofile_of(std::process::id());
    let hard: u64 = hard.parse().unwrap_or(u64::MAX);
    assert!(
        hard >= want,
        "this test holds {want} open files; the hard limit is {hard}: raise it (ulimit -Hn)"
    );
    let status = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={want}:"))
        .status()
        .expect("run prlimit");
    assert!(status.success(), "prlimit: {status}");
}

/// A burst of connections held at once gives its memory back once it is over: the
/// allocator keeps what the burst freed, and the tunnel and the router hand it back
/// to the system within seconds (glibc's `malloc_trim`), so their resident size
/// falls most of the way back to where it was (what the pools keep stays).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn a_burst_of_connections_gives_its_memory_back() {
    const HELD: usize = 2_000;
    // The users' sockets and the echo source's, both in this process.
    raise_own_nofile(2 * HELD as u64 + 256);
    let home = Home::with_keys();
    let source = sources::echo();
    let (router, raddr) = home.router(Engine::Epoll, &[source.to_string()]);
    let (tunnel, taddr) = home.tunnel(Engine::Epoll, raddr, &source.to_string());
    churn(taddr, 100, 4);
    let rss = crate::procfs::rss_kib;
    let start = [rss(tunnel.pid()), rss(router.pid())];
    let users: Vec<_> = (0..HELD)
        .map(|i| {
            let mut u = open_user(taddr);
            crate::users::exchange(&mut u, &pattern(i as u64, 100));
            u
        })
        .collect();
    let held = [rss(tunnel.pid()), rss(router.pid())];
    drop(users);
    for (i, (who, pid)) in [("tunnel", tunnel.pid()), ("router", router.pid())]
        .into_iter()
        .enumerate()
    {
        let (start, held) = (start[i], held[i]);
        // Kept, it would stay where it was with them.
        let most = start + held.saturating_sub(start) * 3 / 4;
        let now = wait_until(
            &format!(
                "the {who}'s memory ({start} KiB before {HELD} connections, {held} KiB with them) at most {most} KiB"
            ),
            || {
                let now = rss(pid);
                (now <= most, now)
            },
        );
        eprintln!("{who}: {start} KiB, {held} KiB with {HELD} connections, {now} KiB after");
    }
    assert_echo(taddr, b"still serving");
}

/// Slack for what pools keep: idle channels (each core keeps up to 4 × its pool
/// size after a burst) and the per-core buffer pools and allocator arenas. Small
/// enough that a leak of one descriptor per 625 connections, or of 1 KiB per
/// connection, fails the 5,000-connection run.
const FD_SLACK: usize = 8;
const RSS_SLACK_KIB: u64 = 4 * 1024;

#[track_caller]
pub(crate) fn back_to(who: &str, p: &Proc, start: Footprint) {
    let now = wait_until(
        &format!("the {who}'s open files and memory back near {start:?}"),
        || {
            let f = Footprint::of(p.pid());
            (
                f.fds <= start.fds + FD_SLACK && f.rss_kib <= start.rss_kib + RSS_SLACK_KIB,
                f,
            )
        },
    );
    eprintln!("{who}: started at {start:?}, now {now:?}");
    assert_eq!(close_wait(p.pid()), 0, "the {who} holds CLOSE_WAIT sockets");
}

fn connections_leave_nothing_behind(engine: Engine, count: usize) {
    let home = Home::with_keys();
    let source = sources::echo();
    let (router, raddr) = home.router(engine, &[source.to_string()]);
    let (tunnel, taddr) = home.tunnel(engine, raddr, &source.to_string());
    // Warm up to the concurrency of the run, so pools are at their working size.
    churn(taddr, 400, 8);
    let start = (Footprint::of(tunnel.pid()), Footprint::of(router.pid()));
    let began = std::time::Instant::now();
    churn(taddr, count, 8);
    eprintln!("{count} connections in {:?}", began.elapsed());
    back_to("tunnel", &tunnel, start.0);
    back_to("router", &router, start.1);
    assert_echo(taddr, b"still serving");
}

both_engines!(five_thousand_connections_leave_nothing_behind, |engine| {
    connections_leave_nothing_behind(engine, 5_000)
});

#[test]
#[ignore = "minutes long; run on demand (see the module docs)"]
fn a_hundred_thousand_connections_leave_nothing_behind() {
    for engine in [Engine::Uring, Engine::Epoll] {
        if engine.available() {
            connections_leave_nothing_behind(engine, 100_000);
        }
    }
}

// `--bandwidth-limit`: 3 MiB each way at 1 MiB/s with a 256 KiB burst arrive whole,
// and cannot have taken less than the limit allows. (A lower bound only: a loaded
// machine makes the transfer slower, never faster.)
both_engines!(
    a_bandwidth_limit_paces_both_directions_and_loses_nothing,
    |engine: Engine| {
        const LEN: usize = 3 << 20;
        const RATE: usize = 1 << 20;
        const BURST: usize = 256 << 10;
        let home = Home::with_keys();
        let (source, got) = sources::exchange_timed(LEN);
        let (_router, raddr) = home.router(engine, &[source.to_string()]);
        let (_tunnel, taddr) = home.tunnel_with(
            engine,
            raddr,
            &source.to_string(),
            &[
                "--bandwidth-limit",
                &RATE.to_string(),
                "--burst-limit",
                &BURST.to_string(),
            ],
        );
        assert_paced(taddr, &got, LEN, RATE, BURST);
    }
);

// `--burst-limit` is the most a tunnel sends at once after an idle spell: a transfer
// of several bursts that fits in one read of the relay (64 KiB) must not go through
// at once, either way, on either transport.
both_engines!(
    a_burst_after_idle_is_the_most_that_leaves_at_once,
    |engine: Engine| burst_after_idle(engine, &[])
);

#[test]
fn a_burst_after_idle_is_the_most_that_leaves_at_once_over_plain() {
    burst_after_idle(Engine::Epoll, crate::plain::PLAIN);
}

/// 50 000 bytes, written at once, each way through a tunnel just started (its buckets
/// full) with a limit of 10 000 bytes/s and a 10 000-byte burst: each way takes at
/// least 4 s, with a tenth off for slack (a lower bound only). Unpaced, each is one
/// read of the relay and arrives at once.
fn burst_after_idle(engine: Engine, transport: &[&str]) {
    use std::time::{Duration, Instant};
    const LEN: usize = 50_000;
    const RATE: usize = 10_000;
    const BURST: usize = 10_000;
    let least = Duration::from_secs_f64(0.9 * (LEN - BURST) as f64 / RATE as f64);
    let home = Home::with_keys();
    let answers = sources::answer_then_hold(LEN);
    let (receiver, received) = sources::receive_then_watch(LEN);
    let allow = [answers.to_string(), receiver.to_string()];
    let (_router, raddr) = home.router_with(engine, &allow, transport);
    let (rate, burst) = (RATE.to_string(), BURST.to_string());
    let tunnel = |name: &'static str, source: &str| {
        let mut flags = vec!["--bandwidth-limit", &rate, "--burst-limit", &burst];
        flags.extend_from_slice(&["--name", name]);
        flags.extend_from_slice(transport);
        home.tunnel_with(engine, raddr, source, &flags)
    };
    let (down, down_addr) = tunnel("down", &allow[0]);
    let (_up, up_addr) = tunnel("up", &allow[1]);
    // A burst smaller than a TLS record is taken, with a warning.
    let warning = format!(
        "WARN --burst-limit {BURST} bytes is less than one TLS record (16384): a limited \
         tunnel then relays in pieces that small"
    );
    assert!(down.stderr().contains(&warning), "{}", down.stderr());

    // Source to user: the source answers `go` with all of it in one write.
    let started = Instant::now();
    let mut c = connect(down_addr);
    c.write_all(b"go").unwrap();
    let mut got = vec![0u8; LEN];
    c.read_exact(&mut got).unwrap();
    let took = started.elapsed();
    assert!(got == pattern(3, LEN), "source to user: the bytes differ");
    assert!(
        took >= least,
        "source to user: {LEN} bytes at {RATE} bytes/s with a burst of {BURST} took only {took:?}"
    );

    // User to source: all of it in one write.
    let started = Instant::now();
    let mut c = connect(up_addr);
    c.write_all(&pattern(4, LEN)).unwrap();
    match received.recv_timeout(crate::harness::DEADLINE).unwrap() {
        sources::Watched::Received(n, sha) => {
            assert_eq!(
                (n, sha),
                (LEN, sources::pattern_sha(4, LEN)),
                "user to source"
            )
        }
        other => panic!("user to source: {other:?}"),
    }
    let took = started.elapsed();
    assert!(
        took >= least,
        "user to source: {LEN} bytes at {RATE} bytes/s with a burst of {BURST} took only {took:?}"
    );
}

// Short transfers one after another (a client that reads what it asked for and goes,
// as curl does with a Content-Length) are held to the limit too: the burst goes to
// the first, and each one after waits for what it sends to refill.
#[test]
fn short_transfers_one_after_another_are_held_to_the_bandwidth_limit() {
    // Each transfer fits in one read of the relay (64 KiB): without a grant for
    // each read it would reach the user at once.
    const RATE: usize = 30_000;
    const LEN: usize = 30_000;
    const COUNT: usize = 4;
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let source = sources::answer_then_hold(LEN);
    let (_router, raddr) = home.router(engine, &[source.to_string()]);
    let (_tunnel, taddr) = home.tunnel_with(
        engine,
        raddr,
        &source.to_string(),
        &["--bandwidth-limit", &RATE.to_string()],
    );
    let want = sources::pattern(3, LEN);
    let started = std::time::Instant::now();
    for i in 0..COUNT {
        let mut c = connect(taddr);
        c.write_all(b"go").unwrap();
        let mut got = vec![0u8; LEN];
        c.read_exact(&mut got)
            .unwrap_or_else(|e| panic!("transfer {i}: {e}"));
        assert!(got == want, "transfer {i}: the bytes differ");
    }
    let elapsed = started.elapsed();
    // At most the burst (one second's worth) at once, then the rate: (4 - 1) s here,
    // with a tenth off for slack. Unpaced, the four take milliseconds. A lower bound
    // only.
    let least = 0.9 * (COUNT * LEN - RATE) as f64 / RATE as f64;
    assert!(
        elapsed.as_secs_f64() >= least,
        "{COUNT} transfers of {LEN} bytes at {RATE} bytes/s took only {elapsed:?}"
    );
}

// The same limit set on the router (`[performance] default_bandwidth_limit`) applies
// to each client key over all its streams: a tunnel without a limit of its own is
// paced by the router, in both directions, and loses nothing.
#[test]
fn a_router_paces_each_client_and_loses_nothing() {
    const LEN: usize = 3 << 20;
    const RATE: usize = 1 << 20;
    // The burst: 0 in the file means one second's worth (a router's file may not
    // set a burst below the rate).
    const BURST: usize = RATE;
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let (source, got) = sources::exchange_timed(LEN);
    let rate = format!("performance.default_bandwidth_limit={RATE}");
    let burst = format!("performance.burst_bandwidth_limit={BURST}");
    let (_router, raddr) = home.router_with(
        engine,
        &[source.to_string()],
        &["--set", &rate, "--set", &burst],
    );
    let (_tunnel, taddr) = home.tunnel(engine, raddr, &source.to_string());
    assert_paced(taddr, &got, LEN, RATE, BURST);
}

/// Sends `len` bytes each way through the tunnel at `taddr` (to a
/// [`sources::exchange_timed`] source whose results arrive on `got`), checks both
/// arrive whole, and that each way took at least what a limit of `rate` bytes/s
/// with `burst` allows: the burst, then the rest at the rate, with a tenth off for
/// slack. Each way is timed on its own: the download until the user reads its end,
/// the upload until the source's read reaches its end. (A lower bound only: a
/// loaded machine makes the transfer slower, never faster.)
fn assert_paced(
    taddr: std::net::SocketAddr,
    got: &std::sync::mpsc::Receiver<(usize, String, std::time::Instant)>,
    len: usize,
    rate: usize,
    burst: usize,
) {
    use crate::sources::{pattern_sha, read_all_hashed};
    let started = std::time::Instant::now();
    let user = connect(taddr);
    let writer = sources::upload(&user, 1, len);
    let mut r = user;
    let (n, sha) = read_all_hashed(&mut r).unwrap();
    let down = started.elapsed();
    writer.join().unwrap();
    assert_eq!((n, sha), (len, pattern_sha(2, len)), "source to user");
    let (n, sha, uploaded) = got.recv_timeout(crate::harness::DEADLINE).unwrap();
    let up = uploaded.duration_since(started);
    assert_eq!((n, sha), (len, pattern_sha(1, len)), "user to source");
    let least = 0.9 * (len - burst) as f64 / rate as f64;
    for (way, took) in [("source to user", down), ("user to source", up)] {
        assert!(
            took.as_secs_f64() >= least,
            "{way}: {len} bytes at {rate} bytes/s with a burst of {burst} took only {took:?}"
        );
    }
}

/// The TCP timers `ss` shows for sockets matching `filter` (e.g. "dst 127.0.0.1:80").
fn ss_timers(filter: &str) -> String {
    let out = std::process::Command::new("ss")
        .args(["-tnoH", "state", "established"])
        .args(filter.split_whitespace())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn users_and_sources_sockets_get_the_configured_keepalive() {
    use crate::harness::have;
    if !have("ss", "--version") {
        return;
    }
    let home = Home::with_keys();
    let source = sources::echo();
    let (_router, raddr) = home.router_with(
        Engine::Epoll,
        &[source.to_string()],
        &["--set", "performance.tcp_keepalive_secs=1234"],
    );
    let (_tunnel, taddr) = home.tunnel(Engine::Epoll, raddr, &source.to_string());
    let mut user = open_user(taddr);
    still_works(&mut user, b"kept alive");
    // The router's socket to the source: the configured idle time; the tunnel's
    // socket from the user: the default minute. (`ss` shows the retransmit timer
    // instead while data is unacknowledged: wait for it to settle.)
    let keepalive = |filter: String, shown: &'static [&'static str]| {
        wait_until(&format!("keep-alive on {filter}"), || {
            let t = ss_timers(&filter);
            (shown.iter().any(|s| t.contains(s)), t)
        });
    };
    keepalive(format!("dst {source}"), &["timer:(keepalive,20min"]);
    keepalive(
        format!("src {taddr}"),
        &["timer:(keepalive,59sec", "timer:(keepalive,1min"],
    );
}
