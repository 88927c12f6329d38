//! New connections per second: each worker thread loops connect → one HTTP/1.1
//! request with `Connection: close` → read the response to EOF → close.
//!
//! Two latencies per connection: `connect` (until `connect()` returns, which through
//! a relay is only the relay's own accept) and `request` (from the start of connect
//! to the end of the response: the user-visible cost of a new connection).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::summary;

const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// What one worker thread saw.
struct Tally {
    connect: Histogram<u64>,
    request: Histogram<u64>,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
}

/// Runs `concurrency` workers against `addr` for `duration`.
pub(crate) fn run(
    addr: SocketAddr,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Value> {
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: conduit-loadgen\r\nConnection: close\r\n\r\n"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let stop = Arc::clone(&stop);
            let request = request.clone();
            thread::spawn(move || worker(addr, request.as_bytes(), &stop))
        })
        .collect();
    thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);

    let mut connect = summary::new_histogram()?;
    let mut total = summary::new_histogram()?;
    let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None);
    for w in workers {
        let tally = w
            .join()
            .map_err(|_| anyhow!("a connrate worker panicked"))??;
        connect.add(&tally.connect).context("merging histograms")?;
        total.add(&tally.request).context("merging histograms")?;
        ok += tally.ok;
        errors += tally.errors;
        first_error = first_error.or(tally.first_error);
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(json!({
        "kind": "connrate",
        "addr": addr.to_string(),
        "concurrency": concurrency,
        "seconds": elapsed,
        "ok": ok,
        "errors": errors,
        "first_error": first_error,
        "conns_per_s": ok as f64 / elapsed.max(f64::EPSILON),
        "connect": summary::to_json(&connect),
        "request": summary::to_json(&total),
    }))
}

fn worker(addr: SocketAddr, request: &[u8], stop: &AtomicBool) -> anyhow::Result<Tally> {
    let mut tally = Tally {
        connect: summary::new_histogram()?,
        request: summary::new_histogram()?,
        ok: 0,
        errors: 0,
        first_error: None,
    };
    let mut buf = vec![0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        match one(addr, request, &mut buf, start, &mut tally.connect) {
            Ok(()) => {
                summary::record(&mut tally.request, start.elapsed());
                tally.ok += 1;
            }
            Err(e) => {
                tally.errors += 1;
                tally.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    Ok(tally)
}

/// One connection: connect, send the request, read to EOF, check the status line.
fn one(
    addr: SocketAddr,
    request: &[u8],
    buf: &mut [u8],
    start: Instant,
    connect_hist: &mut Histogram<u64>,
) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).context("connect")?;
    summary::record(connect_hist, start.elapsed());
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.write_all(request).context("sending the request")?;
    let mut head = [0u8; 12];
    let mut got = 0;
    loop {
        let n = stream.read(buf).context("reading the response")?;
        if n == 0 {
            break;
        }
        let take = n.min(head.len() - got);
        head[got..got + take].copy_from_slice(&buf[..take]);
        got += take;
    }
    if !head.starts_with(b"HTTP/1.1 200") {
        return Err(anyhow!(
            "expected HTTP/1.1 200, got {:?} ({got} bytes before EOF)",
            String::from_utf8_lossy(&head[..got])
        ));
    }
    Ok(())
}
