//! `loadgen`: the Rust half of Conduit's benchmark harness (`benches/run.py` is the
//! other). Each subcommand drives one kind of load at one TCP address (a relay's
//! listening port, or the backend itself for the "direct" row; UDP for `udp`) and
//! prints one JSON object on stdout:
//!
//! ```text
//! ping      redis PING round trips over one connection   → latency percentiles
//! connrate  HTTP/1.1 `Connection: close` requests, loop  → connections/s, connect p99
//! hold      open N connections, wait, check each is alive → opened, alive
//! udp       UDP users sending and awaiting echoes          → transactions/s, latency
//! udp-echo  the UDP echo backend for `udp`
//! ```
//!
//! It does not start or stop relays, read their CPU or memory, or compare results:
//! that is the orchestrator's job. It never asserts timings; it only reports them.
#![forbid(unsafe_code)]

mod aead;
mod connrate;
mod hold;
mod ping;
mod summary;
mod udp;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Load generator for Conduit's benchmark harness.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Redis PING round trips over one connection: latency p50/p99/p99.9.
    Ping {
        /// Where to connect: the relay's listening address (backend: redis-server).
        #[arg(long)]
        addr: SocketAddr,
        /// Round trips to record.
        #[arg(long, default_value_t = 50_000)]
        requests: u64,
        /// Round trips before recording starts (connection set-up, caches).
        #[arg(long, default_value_t = 1_000)]
        warmup: u64,
    },
    /// New connections in a loop: connect, HTTP GET with `Connection: close`, read to EOF.
    Connrate {
        /// Where to connect: the relay's listening address (backend: an HTTP server).
        #[arg(long)]
        addr: SocketAddr,
        /// Connections in flight at once (one thread each).
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// How long to run, in seconds.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// Open N connections (each proven by a PING round trip), print a `held` line,
    /// wait for a line on stdin, then check every connection with another round trip.
    Hold {
        /// Where to connect: the relay's listening address (backend: redis-server).
        #[arg(long)]
        addr: SocketAddr,
        /// Connections to hold open.
        #[arg(long, default_value_t = 9_000)]
        conns: usize,
        /// Give up opening after this many seconds.
        #[arg(long, default_value_t = 120.0)]
        open_deadline: f64,
    },
    /// UDP users, each sending a datagram and waiting for its echo, for a while:
    /// transactions/s, latency p50/p99/p99.9, datagrams lost (no echo within 1 s).
    Udp {
        /// Where to send: the relay's UDP address (backend: `loadgen udp-echo`).
        #[arg(long)]
        addr: SocketAddr,
        /// Users, each on its own socket and thread (a flow each, for a relay).
        #[arg(long, default_value_t = 1)]
        users: usize,
        /// Bytes per datagram (at least 16).
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// How long to record, in seconds.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Round trips per user before recording starts.
        #[arg(long, default_value_t = 100)]
        warmup: u64,
    },
    /// A UDP echo on 127.0.0.1: prints `{"listening": PORT}`, runs until killed.
    UdpEcho {
        /// The port (0: any free one).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Threads serving the socket.
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// AES-GCM alone, no network: GB/s sealing 16 KiB records on one core, with
    /// ring (what Conduit's records use) and aws-lc-rs, 128- and 256-bit keys.
    Aead {
        /// Seconds per library and key size.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The fd soft limit starts low on many systems; `hold` needs one fd per connection.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("loadgen: could not raise the open-files limit: {e}");
    }
    let result = match cli.command {
        Command::Ping {
            addr,
            requests,
            warmup,
        } => ping::run(addr, requests, warmup),
        Command::Connrate {
            addr,
            concurrency,
            seconds,
        } => connrate::run(addr, concurrency.max(1), Duration::from_secs_f64(seconds)),
        Command::Hold {
            addr,
            conns,
            open_deadline,
        } => hold::run(addr, conns, Duration::from_secs_f64(open_deadline)),
        Command::Udp {
            addr,
            users,
            size,
            seconds,
            warmup,
        } => udp::run(
            addr,
            users.max(1),
            size,
            Duration::from_secs_f64(seconds),
            warmup,
        ),
        Command::UdpEcho { port, threads } => udp::echo(port, threads),
        Command::Aead { seconds } => aead::run(seconds),
    };
    match result {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}
