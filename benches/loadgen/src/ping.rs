//! Request/response latency: redis `PING` round trips over one connection.
//!
//! One request in flight at a time, so each sample is a full round trip through the
//! relay and back: user → relay → redis-server → relay → user.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::summary;

/// The inline-command form of PING and redis' reply to it.
pub(crate) const PING: &[u8] = b"PING\r\n";
pub(crate) const PONG: &[u8] = b"+PONG\r\n";

/// How long one round trip may take before the run counts as failed.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `addr` with Nagle off and bounded reads and writes.
pub(crate) fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

/// Sends one PING and reads the whole PONG.
pub(crate) fn round_trip(stream: &mut TcpStream) -> anyhow::Result<()> {
    stream.write_all(PING).context("sending PING")?;
    read_pong(stream)
}

/// Reads exactly one `+PONG\r\n`, failing on anything else or on EOF.
pub(crate) fn read_pong(stream: &mut TcpStream) -> anyhow::Result<()> {
    let mut reply = [0u8; PONG.len()];
    stream
        .read_exact(&mut reply)
        .context("reading the PONG reply")?;
    if reply != PONG {
        bail!(
            "expected +PONG, got {:?}",
            String::from_utf8_lossy(&reply).trim_end()
        );
    }
    Ok(())
}

/// Runs `warmup` unrecorded round trips, then `requests` recorded ones.
pub(crate) fn run(addr: SocketAddr, requests: u64, warmup: u64) -> anyhow::Result<Value> {
    let mut stream = connect(addr)?;
    for _ in 0..warmup {
        round_trip(&mut stream).context("during warm-up")?;
    }
    let mut hist = summary::new_histogram()?;
    let started = Instant::now();
    for i in 0..requests {
        let t = Instant::now();
        round_trip(&mut stream).with_context(|| format!("round trip {i}"))?;
        summary::record(&mut hist, t.elapsed());
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(json!({
        "kind": "ping",
        "addr": addr.to_string(),
        "round_trips_per_s": requests as f64 / elapsed.max(f64::EPSILON),
        "latency": summary::to_json(&hist),
    }))
}
