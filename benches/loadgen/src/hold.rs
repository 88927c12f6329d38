//! Held connections: open N connections through the relay, each proven end to end by
//! a PING round trip, report, wait while the orchestrator reads the relay's memory,
//! then check that every connection still answers.
//!
//! Protocol with the orchestrator, one JSON object a line on stdout:
//!
//! ```text
//! loadgen → {"event":"held","opened":N,"failed":F,...}
//! (orchestrator reads RSS, then writes any line to loadgen's stdin)
//! loadgen → {"kind":"hold","opened":N,"alive":A,...}   and exits, closing them all
//! ```

use std::io::{BufRead, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::ping;

/// Connections opened before their PINGs are answered: enough to overlap relay
/// handshakes, few enough not to overflow a listen backlog.
const BATCH: usize = 100;
/// Stop opening after this many failures: the relay has hit a limit.
const MAX_FAILURES: u64 = 200;
/// Time allowed for the final check of all connections.
const CHECK_DEADLINE: Duration = Duration::from_secs(60);

pub(crate) fn run(
    addr: SocketAddr,
    target: usize,
    open_deadline: Duration,
) -> anyhow::Result<Value> {
    let started = Instant::now();
    let mut held: Vec<TcpStream> = Vec::with_capacity(target);
    let (mut failed, mut first_error) = (0u64, None::<String>);
    let mut note = |e: anyhow::Error, failed: &mut u64| {
        *failed += 1;
        first_error.get_or_insert_with(|| format!("{e:#}"));
    };
    while held.len() < target && failed < MAX_FAILURES && started.elapsed() < open_deadline {
        let mut batch = Vec::with_capacity(BATCH);
        for _ in 0..BATCH.min(target - held.len()) {
            match ping::connect(addr).and_then(|mut s| {
                s.write_all(ping::PING).context("sending PING")?;
                Ok(s)
            }) {
                Ok(s) => batch.push(s),
                Err(e) => note(e, &mut failed),
            }
        }
        for mut s in batch {
            match ping::read_pong(&mut s) {
                Ok(()) => held.push(s),
                Err(e) => note(e, &mut failed),
            }
        }
    }
    let open_seconds = started.elapsed().as_secs_f64();
    let opened = held.len();
    let first_open_error = first_error.clone();

    let mut out = std::io::stdout().lock();
    let line = json!({
        "event": "held", "opened": opened, "failed": failed,
        "open_seconds": open_seconds, "first_error": first_open_error,
    });
    writeln!(out, "{line}").context("writing to stdout")?;
    out.flush().context("writing to stdout")?;
    drop(out);

    let mut go = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut go)
        .context("waiting for the go-ahead on stdin")?;

    let (alive, check_error) = check(&mut held);
    Ok(json!({
        "kind": "hold",
        "addr": addr.to_string(),
        "target": target,
        "opened": opened,
        "failed_to_open": failed,
        "open_seconds": open_seconds,
        "first_open_error": first_open_error,
        "alive": alive,
        "first_check_error": check_error,
    }))
}

/// Pipelines one PING on every connection, then reads every PONG; returns how many
/// answered and the first failure.
fn check(held: &mut [TcpStream]) -> (usize, Option<String>) {
    let deadline = Instant::now() + CHECK_DEADLINE;
    let mut first_error = None;
    let mut sent = vec![false; held.len()];
    for (s, sent) in held.iter_mut().zip(sent.iter_mut()) {
        match s.write_all(ping::PING) {
            Ok(()) => *sent = true,
            Err(e) => {
                first_error.get_or_insert_with(|| format!("sending PING: {e}"));
            }
        }
    }
    let mut alive = 0;
    for (s, sent) in held.iter_mut().zip(sent) {
        if !sent {
            continue;
        }
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let result = s
            .set_read_timeout(Some(left))
            .context("setting a read timeout")
            .and_then(|()| ping::read_pong(s));
        match result {
            Ok(()) => alive += 1,
            Err(e) => {
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    (alive, first_error)
}
