//! UDP request/response: an echo backend, and users that each send a datagram and
//! wait for its echo before sending the next.
//!
//! With one user this is UDP latency (like `ping` for TCP); with several it is the
//! rate of transactions a relay sustains, the shape of DNS or game traffic. Each
//! datagram carries its user and sequence number, so a late echo of an earlier
//! datagram (after a timeout) is recognised and not counted as an answer.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::summary;

/// How long a user waits for an echo before counting the datagram as lost.
const LOSS_TIMEOUT: Duration = Duration::from_secs(1);

/// The longest a user's warm-up may take: a relay that drops a user's datagrams
/// (socat's forking UDP listener can, when several senders start at once) must not
/// hold up the others; the measurement then counts that user's losses.
const WARMUP_LIMIT: Duration = Duration::from_secs(5);

/// Echoes every datagram on 127.0.0.1:`port` (0: any free port) back to its sender,
/// with `threads` threads on one socket; prints `{"listening": PORT}` once bound and
/// runs until killed.
pub(crate) fn echo(port: u16, threads: usize) -> anyhow::Result<Value> {
    let sock = UdpSocket::bind(("127.0.0.1", port)).context("binding the echo socket")?;
    let port = sock.local_addr()?.port();
    println!("{}", json!({ "listening": port }));
    let mut handles = Vec::new();
    for _ in 0..threads.max(1) {
        let s = sock.try_clone()?;
        handles.push(thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            loop {
                match s.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        let _ = s.send_to(&buf[..n], from);
                    }
                    Err(e) => eprintln!("udp-echo: {e}"),
                }
            }
        }));
    }
    for h in handles {
        let _ = h.join();
    }
    bail!("the echo threads ended")
}

/// What one user saw.
struct UserResult {
    hist: hdrhistogram::Histogram<u64>,
    answered: u64,
    lost: u64,
}

/// `users` users, each on its own socket, for `seconds` after `warmup` unrecorded
/// round trips each; datagrams of `size` bytes (at least 16).
pub(crate) fn run(
    addr: SocketAddr,
    users: usize,
    size: usize,
    seconds: Duration,
    warmup: u64,
) -> anyhow::Result<Value> {
    let size = size.max(16);
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(std::sync::Barrier::new(users + 1));
    let mut handles = Vec::new();
    for u in 0..users {
        let (stop, start) = (stop.clone(), start.clone());
        handles.push(thread::spawn(move || {
            user(addr, u as u64, size, warmup, &start, &stop)
        }));
    }
    start.wait();
    let began = Instant::now();
    thread::sleep(seconds);
    stop.store(true, Ordering::Relaxed);
    let mut hist = summary::new_histogram()?;
    let (mut answered, mut lost) = (0, 0);
    for h in handles {
        let r = h
            .join()
            .map_err(|_| anyhow::anyhow!("a user thread panicked"))??;
        hist.add(&r.hist).context("merging histograms")?;
        answered += r.answered;
        lost += r.lost;
    }
    let elapsed = began.elapsed().as_secs_f64();
    Ok(json!({
        "kind": "udp",
        "addr": addr.to_string(),
        "users": users,
        "size": size,
        "answered": answered,
        "lost": lost,
        "transactions_per_s": answered as f64 / elapsed.max(f64::EPSILON),
        "latency": summary::to_json(&hist),
    }))
}

fn user(
    addr: SocketAddr,
    id: u64,
    size: usize,
    warmup: u64,
    start: &std::sync::Barrier,
    stop: &AtomicBool,
) -> anyhow::Result<UserResult> {
    let setup = || -> anyhow::Result<(UdpSocket, hdrhistogram::Histogram<u64>)> {
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        sock.connect(addr)?;
        sock.set_read_timeout(Some(LOSS_TIMEOUT))?;
        Ok((sock, summary::new_histogram()?))
    };
    let set_up = setup();
    // Every user reaches the barrier, even one whose set-up failed.
    let (sock, mut hist) = match set_up {
        Ok(x) => x,
        Err(e) => {
            start.wait();
            return Err(e);
        }
    };
    let mut out = vec![0xa5u8; size];
    let mut back = vec![0u8; 65_536];
    let mut seq = 0u64;
    let mut round_trip = |seq: u64| -> anyhow::Result<Option<Duration>> {
        out[..8].copy_from_slice(&id.to_be_bytes());
        out[8..16].copy_from_slice(&seq.to_be_bytes());
        let t = Instant::now();
        sock.send(&out).context("sending a datagram")?;
        loop {
            match sock.recv(&mut back) {
                Ok(n) if n == size && back[..16] == out[..16] => return Ok(Some(t.elapsed())),
                Ok(_) => continue, // a late echo of an earlier datagram
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None);
                }
                Err(e) => return Err(e).context("receiving an echo"),
            }
        }
    };
    // Warm-up: the relay's flow (and channel) are set up by the first datagrams.
    let warm_until = Instant::now() + WARMUP_LIMIT;
    for _ in 0..warmup {
        if Instant::now() > warm_until {
            break;
        }
        seq += 1;
        round_trip(seq)?;
    }
    start.wait();
    let (mut answered, mut lost) = (0, 0);
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        match round_trip(seq)? {
            Some(d) => {
                summary::record(&mut hist, d);
                answered += 1;
            }
            None => lost += 1,
        }
    }
    Ok(UserResult {
        hist,
        answered,
        lost,
    })
}
