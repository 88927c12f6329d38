//! Soak: mixed bulk and request/response traffic on connections opening and closing
//! all the time while the router is restarted every so often (alternately SIGTERM
//! with a short drain and SIGKILL). Every transfer that completes must be exact;
//! one cut by a restart must end in an error the user sees (a reset), never a clean
//! end with bytes missing; and at the end the tunnel's open files and memory are
//! back at their starting level with no half-dead sockets.
//!
//! The CI version runs about a minute. The long one (30 minutes by default, a router
//! restart every 3 minutes) is `#[ignore]`d. Each runs over TLS and over the plain
//! transport (`plain_` in the name):
//!
//! ```sh
//! cargo nextest run -p conduit --test e2e --run-ignored only soak::thirty_minutes
//! cargo nextest run -p conduit --test e2e --run-ignored only soak::plain_thirty_minutes
//! CONDUIT_SOAK_SECS=7200 cargo nextest run -p conduit --test e2e --run-ignored only soak::thirty_minutes
//! ```

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::harness::{DEADLINE, Engine, Home, Proc, dead_port};
use crate::procfs::{Footprint, close_wait, wait_until};
use crate::sources::{self, Pattern, pattern};
use crate::users::wait_for_echo;

/// What the traffic threads saw.
#[derive(Default)]
struct Tally {
    bulk_done: AtomicU64,
    bulk_bytes: AtomicU64,
    rr_done: AtomicU64,
    rr_exchanges: AtomicU64,
    /// Ended by an error the user saw (reset, refused): allowed around restarts.
    interrupted: AtomicU64,
    /// Ended cleanly but short, or with wrong bytes: never allowed.
    broken: Mutex<Vec<String>>,
}

/// How one attempt ended.
enum Outcome {
    Done,
    Interrupted,
    Broken(String),
}

fn interrupted(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset
            | ErrorKind::ConnectionRefused
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
            // `shutdown` on a connection a reset already closed (its state is CLOSE:
            // a peer's FIN alone leaves it open for our half-close).
            | ErrorKind::NotConnected
    )
}

/// Sends `len` pattern bytes to the echo source and checks they all come back.
///
/// One thread both writes and reads (non-blocking): after a reset, the first call
/// on the socket reports it and later ones see a plain end of file, so with a
/// reader and a writer racing, a reset could pass for a clean end. Here the first
/// error is always seen, and a clean end of file with bytes missing is a real loss.
fn bulk(addr: SocketAddr, seed: u64, len: usize) -> Outcome {
    let mut c = match TcpStream::connect(addr) {
        Ok(c) => c,
        Err(_) => return Outcome::Interrupted,
    };
    c.set_nonblocking(true).unwrap();
    let failed = |e: std::io::Error, what: &str| {
        if interrupted(&e) {
            Outcome::Interrupted
        } else {
            Outcome::Broken(format!("bulk {seed}: {what} failed: {e}"))
        }
    };
    let mut upload = Pattern::new(seed, len);
    let mut chunk: Vec<u8> = Vec::new();
    let mut pos = 0;
    let mut sent_all = false;
    let mut h = Sha256::new();
    let mut got = 0usize;
    let mut buf = vec![0u8; 128 * 1024];
    let mut last_progress = Instant::now();
    loop {
        let mut progressed = false;
        if !sent_all {
            if pos == chunk.len() {
                match upload.next_chunk() {
                    Some(next) => {
                        chunk.clear();
                        chunk.extend_from_slice(next);
                        pos = 0;
                    }
                    None => {
                        if let Err(e) = c.shutdown(Shutdown::Write) {
                            return failed(e, "half-closing");
                        }
                        sent_all = true;
                    }
                }
            }
            if !sent_all {
                match c.write(&chunk[pos..]) {
                    Ok(n) => {
                        pos += n;
                        progressed = true;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => return failed(e, "writing"),
                }
            }
        }
        match c.read(&mut buf) {
            Ok(0) if sent_all && got == len => break,
            Ok(0) => {
                return Outcome::Broken(format!(
                    "bulk {seed}: a clean end after {got} of {len} bytes came back"
                ));
            }
            Ok(n) => {
                h.update(&buf[..n]);
                got += n;
                progressed = true;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => return failed(e, "reading"),
        }
        if progressed {
            last_progress = Instant::now();
        } else if last_progress.elapsed() > DEADLINE {
            return Outcome::Broken(format!("bulk {seed}: stalled at {got} of {len} bytes"));
        } else {
            thread::sleep(Duration::from_micros(200));
        }
    }
    if got == len && hex::encode(h.finalize()) == sources::pattern_sha(seed, len) {
        Outcome::Done
    } else {
        Outcome::Broken(format!("bulk {seed}: {len} bytes came back different"))
    }
}

/// `rounds` small request/response exchanges on one connection.
fn request_response(addr: SocketAddr, seed: u64, rounds: usize) -> Outcome {
    let mut c = match TcpStream::connect(addr) {
        Ok(c) => c,
        Err(_) => return Outcome::Interrupted,
    };
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    for round in 0..rounds {
        let req = pattern(
            seed * 1000 + round as u64,
            16 + (seed as usize + round) % 2000,
        );
        if let Err(e) = c.write_all(&req) {
            return if interrupted(&e) {
                Outcome::Interrupted
            } else {
                Outcome::Broken(format!("rr {seed}/{round}: write failed: {e}"))
            };
        }
        let mut back = vec![0u8; req.len()];
        match c.read_exact(&mut back) {
            Ok(()) if back == req => {}
            Ok(()) => return Outcome::Broken(format!("rr {seed}/{round}: wrong bytes back")),
            Err(e) if interrupted(&e) => return Outcome::Interrupted,
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
                return Outcome::Broken(format!(
                    "rr {seed}/{round}: a clean end in the middle of an answer"
                ));
            }
            Err(e) => return Outcome::Broken(format!("rr {seed}/{round}: read failed: {e}")),
        }
    }
    let _ = c.shutdown(Shutdown::Write);
    let mut rest = Vec::new();
    match c.read_to_end(&mut rest) {
        Ok(_) if rest.is_empty() => Outcome::Done,
        Ok(_) => Outcome::Broken(format!(
            "rr {seed}: {} unexpected bytes at the end",
            rest.len()
        )),
        Err(e) if interrupted(&e) => Outcome::Interrupted,
        Err(e) => Outcome::Broken(format!("rr {seed}: closing failed: {e}")),
    }
}

fn record(t: &Tally, o: Outcome, done: &AtomicU64) -> bool {
    match o {
        Outcome::Done => {
            done.fetch_add(1, Ordering::Relaxed);
            true
        }
        Outcome::Interrupted => {
            t.interrupted.fetch_add(1, Ordering::Relaxed);
            false
        }
        Outcome::Broken(why) => {
            t.broken.lock().unwrap().push(why);
            false
        }
    }
}

/// Traffic threads: three doing bulk transfers of up to 4 MiB, three doing up to
/// 40 request/response exchanges per connection, until stopped.
struct Traffic {
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(taddr: SocketAddr, seeds: u64) -> Self {
        let tally = Arc::new(Tally::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for worker in 0..3u64 {
            let (t, stop) = (tally.clone(), stop.clone());
            threads.push(thread::spawn(move || {
                let mut seed = seeds + (worker << 40);
                while !stop.load(Ordering::Relaxed) {
                    seed += 1;
                    let len = 1024 + (seed as usize * 7919) % (4 << 20);
                    if record(&t, bulk(taddr, seed, len), &t.bulk_done) {
                        t.bulk_bytes.fetch_add(len as u64, Ordering::Relaxed);
                    } else {
                        thread::sleep(Duration::from_millis(50));
                    }
                }
            }));
        }
        for worker in 0..3u64 {
            let (t, stop) = (tally.clone(), stop.clone());
            threads.push(thread::spawn(move || {
                let mut seed = seeds + ((worker + 8) << 40);
                while !stop.load(Ordering::Relaxed) {
                    seed += 1;
                    let rounds = 1 + (seed as usize % 40);
                    if record(&t, request_response(taddr, seed, rounds), &t.rr_done) {
                        t.rr_exchanges.fetch_add(rounds as u64, Ordering::Relaxed);
                    } else {
                        thread::sleep(Duration::from_millis(50));
                    }
                }
            }));
        }
        Self {
            tally,
            stop,
            threads,
        }
    }

    /// Stops after the transfers in progress; returns what was seen.
    fn stop(self) -> Arc<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("a traffic thread panicked");
        }
        self.tally
    }
}

/// Slack for what pools keep after a burst (see `limits.rs`).
const FD_SLACK: usize = 8;
const RSS_SLACK_KIB: u64 = 8 * 1024;

/// The plain transport's arguments, for both ends.
const PLAIN: &[&str] = &["--transport", "plain", "--token", "soak-token"];

/// Soaks a tunnel for `run_for`, restarting its router every `restart_every`;
/// `transport` goes to both ends (empty for TLS).
fn soak(run_for: Duration, restart_every: Duration, transport: &[&str]) {
    let engine = if Engine::Uring.available() {
        Engine::Uring
    } else {
        Engine::Epoll
    };
    let home = Home::with_keys();
    let source = sources::echo();
    let bind = format!("127.0.0.1:{}", dead_port());
    let allow = [source.to_string()];
    let router_args = [&["--drain-timeout", "2"], transport].concat();
    let (router, raddr) = home.router_at(engine, &bind, &allow, &router_args);
    let (tunnel, taddr) = home.tunnel_with(engine, raddr, &source.to_string(), transport);

    // Warm up with the same traffic, so buffer pools and allocator arenas reach
    // their working size; the footprint after that is the one to come back to.
    let warm_up = Traffic::start(taddr, 1 << 32);
    thread::sleep(Duration::from_secs(5));
    let warm = warm_up.stop();
    assert!(warm.broken.lock().unwrap().is_empty());
    assert_eq!(
        warm.interrupted.load(Ordering::Relaxed),
        0,
        "failures before any restart"
    );
    let start = Footprint::of(tunnel.pid());
    let router_start = Footprint::of(router.pid());
    eprintln!("after warming up: tunnel {start:?}, router {router_start:?}");

    let traffic = Traffic::start(taddr, 0);
    let tally = traffic.tally.clone();

    // The router comes and goes.
    let began = Instant::now();
    let mut router: Proc = router;
    let mut restarts = 0;
    while began.elapsed() + restart_every <= run_for {
        thread::sleep(restart_every);
        let sig = if restarts % 2 == 0 { "TERM" } else { "KILL" };
        router.signal(sig);
        router.wait_exit();
        restarts += 1;
        (router, _) = home.router_at(engine, &bind, &allow, &router_args);
        // The tunnel serves through each new router, amid the traffic.
        let back = wait_for_echo(taddr, format!("after restart {restarts}").as_bytes());
        eprintln!(
            "{:>5.0}s: router restarted ({sig}), echoing again after {back:?}; {} bulk and {} \
             request/response done, {} interrupted",
            began.elapsed().as_secs_f64(),
            tally.bulk_done.load(Ordering::Relaxed),
            tally.rr_done.load(Ordering::Relaxed),
            tally.interrupted.load(Ordering::Relaxed)
        );
    }
    if let Some(left) = run_for.checked_sub(began.elapsed()) {
        thread::sleep(left);
    }
    traffic.stop();

    let broken = tally.broken.lock().unwrap().clone();
    eprintln!(
        "soak of {run_for:?}: {restarts} router restarts; {} bulk transfers ({} MiB each way), \
         {} request/response connections ({} exchanges) verified; {} interrupted; {} broken",
        tally.bulk_done.load(Ordering::Relaxed),
        tally.bulk_bytes.load(Ordering::Relaxed) >> 20,
        tally.rr_done.load(Ordering::Relaxed),
        tally.rr_exchanges.load(Ordering::Relaxed),
        tally.interrupted.load(Ordering::Relaxed),
        broken.len()
    );
    assert!(
        broken.is_empty(),
        "transfers lost or changed bytes: {broken:#?}"
    );
    assert!(tally.bulk_done.load(Ordering::Relaxed) > 0);
    assert!(tally.rr_done.load(Ordering::Relaxed) > 0);

    // The tunnel serves the last router and is back to its starting footprint.
    wait_for_echo(taddr, b"after the soak");
    let now = wait_until(
        "the tunnel's open files and memory back at their start",
        || {
            let f = Footprint::of(tunnel.pid());
            (
                f.fds <= start.fds + FD_SLACK && f.rss_kib <= start.rss_kib + RSS_SLACK_KIB,
                f,
            )
        },
    );
    eprintln!("tunnel: started at {start:?}, ended at {now:?}");
    let r = Footprint::of(router.pid());
    eprintln!("router: the first started at {router_start:?}, the last ended at {r:?}");
    assert!(
        r.fds <= router_start.fds + FD_SLACK,
        "router fds {r:?} vs {router_start:?}"
    );
    assert_eq!(
        close_wait(tunnel.pid()),
        0,
        "CLOSE_WAIT sockets in the tunnel"
    );
    assert_eq!(
        close_wait(router.pid()),
        0,
        "CLOSE_WAIT sockets in the router"
    );
}

#[test]
fn one_minute() {
    soak(Duration::from_secs(60), Duration::from_secs(15), &[]);
}

/// The plain transport's channels carry stream after stream: the same soak shows
/// that reuse loses nothing across restarts either.
#[test]
fn plain_one_minute() {
    soak(Duration::from_secs(60), Duration::from_secs(15), PLAIN);
}

/// `CONDUIT_SOAK_SECS`, 1800 by default.
fn long_run() -> Duration {
    let secs = std::env::var("CONDUIT_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1800);
    Duration::from_secs(secs)
}

#[test]
#[ignore = "30 minutes; run on demand (see the module docs)"]
fn thirty_minutes() {
    soak(long_run(), Duration::from_secs(180), &[]);
}

#[test]
#[ignore = "30 minutes; run on demand (see the module docs)"]
fn plain_thirty_minutes() {
    soak(long_run(), Duration::from_secs(180), PLAIN);
}
