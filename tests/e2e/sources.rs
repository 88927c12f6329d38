//! Sources the tests put behind the router: small TCP servers on threads, bound to
//! port 0, each reporting what it saw.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

use sha2::{Digest, Sha256};

/// Deterministic bytes: `len` bytes of xorshift output from `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut p = Pattern::new(seed, len);
    let mut v = Vec::with_capacity(len);
    while let Some(chunk) = p.next_chunk() {
        v.extend_from_slice(chunk);
    }
    v
}

/// The bytes of [`pattern`], produced a chunk at a time (for transfers too large to
/// hold in memory twice).
pub struct Pattern {
    x: u64,
    left: usize,
    buf: Vec<u8>,
}

impl Pattern {
    pub fn new(seed: u64, len: usize) -> Self {
        Self {
            x: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            left: len,
            buf: Vec::with_capacity(256 * 1024),
        }
    }

    /// The next chunk (at most 256 KiB); `None` at the end.
    pub fn next_chunk(&mut self) -> Option<&[u8]> {
        if self.left == 0 {
            return None;
        }
        self.buf.clear();
        let n = self.left.min(256 * 1024);
        while self.buf.len() < n {
            self.x ^= self.x << 13;
            self.x ^= self.x >> 7;
            self.x ^= self.x << 17;
            self.buf.extend_from_slice(&self.x.to_le_bytes());
        }
        self.buf.truncate(n);
        self.left -= n;
        Some(&self.buf)
    }

    /// Writes every remaining byte to `w`.
    pub fn write_to(mut self, w: &mut impl Write) -> std::io::Result<()> {
        while let Some(c) = self.next_chunk() {
            w.write_all(c)?;
        }
        Ok(())
    }
}

/// The sha256 of `pattern(seed, len)`, without holding it.
pub fn pattern_sha(seed: u64, len: usize) -> String {
    let mut p = Pattern::new(seed, len);
    let mut h = Sha256::new();
    while let Some(c) = p.next_chunk() {
        h.update(c);
    }
    hex::encode(h.finalize())
}

pub fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Reads to EOF, hashing; returns (length, sha256).
pub fn read_all_hashed(s: &mut impl Read) -> std::io::Result<(usize, String)> {
    let mut h = Sha256::new();
    let mut n = 0;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let k = s.read(&mut buf)?;
        if k == 0 {
            return Ok((n, hex::encode(h.finalize())));
        }
        h.update(&buf[..k]);
        n += k;
    }
}

fn serve(handler: impl Fn(TcpStream) + Send + Sync + Clone + 'static) -> SocketAddr {
    serve_on(
        TcpListener::bind("127.0.0.1:0").expect("bind source"),
        handler,
    )
}

fn serve_on(
    l: TcpListener,
    handler: impl Fn(TcpStream) + Send + Sync + Clone + 'static,
) -> SocketAddr {
    let addr = l.local_addr().expect("addr");
    thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(conn) = conn else { return };
            let h = handler.clone();
            thread::spawn(move || h(conn));
        }
    });
    addr
}

/// Writes `len` pattern bytes of `seed` to `conn` and half-closes it, on a thread of
/// its own (the caller reads the other direction meanwhile).
pub fn upload(conn: &TcpStream, seed: u64, len: usize) -> thread::JoinHandle<()> {
    let mut w = conn.try_clone().expect("clone the connection");
    thread::spawn(move || {
        Pattern::new(seed, len).write_to(&mut w).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    })
}

/// Sends `send_len` pattern bytes (seed 2) while reading everything the client sends;
/// reports (received length, received sha256) when the client's side ends, for
/// connections that sent anything.
pub fn exchange(send_len: usize) -> (SocketAddr, mpsc::Receiver<(usize, String)>) {
    let (addr, timed) = exchange_timed(send_len);
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for (len, sha, _) in timed {
            if tx.send((len, sha)).is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

/// [`exchange`], reporting also the instant the source's read reached the end of
/// what the client sent (before its own sending is done).
pub fn exchange_timed(send_len: usize) -> (SocketAddr, mpsc::Receiver<(usize, String, Instant)>) {
    let (tx, rx) = mpsc::channel();
    let addr = serve(move |conn| {
        let mut w = conn.try_clone().expect("clone");
        let writer = thread::spawn(move || {
            // A connection the tunnel aborts ends the test's transfer, not the source.
            if Pattern::new(2, send_len).write_to(&mut w).is_ok() {
                let _ = w.shutdown(Shutdown::Write);
            }
        });
        let mut r = conn;
        let got = read_all_hashed(&mut r);
        let ended = Instant::now();
        let _ = writer.join();
        // A connection that brings nothing is the router's health probe (it connects
        // and closes every few seconds while the source is in use), not the transfer
        // under test, which always uploads something: on a slow machine one lands
        // mid-transfer and must not be taken for its result.
        match got {
            Ok((0, _)) | Err(_) => {}
            Ok((len, sha)) => {
                let _ = tx.send((len, sha, ended));
            }
        }
    });
    (addr, rx)
}

/// Echoes every connection until the client half-closes, then closes.
pub fn echo() -> SocketAddr {
    echo_on(TcpListener::bind("127.0.0.1:0").expect("bind source"))
}

/// [`echo`] on `l`: a source that comes up at an address chosen before.
pub fn echo_on(l: TcpListener) -> SocketAddr {
    serve_on(l, |mut conn| {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = conn.shutdown(Shutdown::Write);
    })
}

/// Reads until the client half-closes, then answers with what it received.
pub fn reply_after_eof() -> SocketAddr {
    serve(|mut conn| {
        let Ok((n, digest)) = read_all_hashed(&mut conn) else {
            return;
        };
        let reply = format!("received {n} bytes sha256={digest}\n");
        let _ = conn.write_all(reply.as_bytes());
        let _ = conn.shutdown(Shutdown::Write);
    })
}

/// Sends a greeting and half-closes at once, then reads the client's bytes and
/// reports them (if there were any: see [`exchange`]).
pub fn greet_then_listen(greeting: &'static [u8]) -> (SocketAddr, mpsc::Receiver<Vec<u8>>) {
    let (tx, rx) = mpsc::channel();
    let addr = serve(move |mut conn| {
        // A health probe closes at once: the greeting may fail, and it brings nothing.
        if conn.write_all(greeting).is_err() || conn.shutdown(Shutdown::Write).is_err() {
            return;
        }
        let mut got = Vec::new();
        let _ = conn.read_to_end(&mut got);
        if !got.is_empty() {
            let _ = tx.send(got);
        }
    });
    (addr, rx)
}

/// Reads one request (up to a blank line), answers, and closes first — like an HTTP
/// server with `Connection: close`.
pub fn answer_and_close() -> SocketAddr {
    serve(|mut conn| {
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => req.extend_from_slice(&buf[..n]),
            }
        }
        let body = format!("you sent {} bytes", req.len());
        let reply = format!(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = conn.write_all(reply.as_bytes());
        let _ = conn.shutdown(Shutdown::Both);
    })
}

/// On the first bytes a client sends, answers with `len` pattern bytes (seed 3) and
/// then holds the connection open, sending nothing more, until the client goes.
pub fn answer_then_hold(len: usize) -> SocketAddr {
    serve(move |mut conn| {
        let mut first = [0u8; 64];
        if !matches!(conn.read(&mut first), Ok(n) if n > 0) {
            return;
        }
        if conn.write_all(&pattern(3, len)).is_err() {
            return;
        }
        let _ = std::io::copy(&mut conn, &mut std::io::sink());
    })
}

/// Reads `len` bytes, reports them (length, sha256), then reports how the client's
/// side went on: `Ok(n)` bytes more up to a clean end, or the error that ended it.
pub fn receive_then_watch(len: usize) -> (SocketAddr, mpsc::Receiver<Watched>) {
    let (tx, rx) = mpsc::channel();
    let addr = serve(move |mut conn| {
        let mut got = vec![0u8; len];
        if conn.read_exact(&mut got).is_err() {
            // A health probe, which closes at once.
            return;
        }
        let _ = tx.send(Watched::Received(got.len(), sha(&got)));
        let _ = tx.send(Watched::Then(std::io::copy(
            &mut conn,
            &mut std::io::sink(),
        )));
    });
    (addr, rx)
}

/// What [`receive_then_watch`] saw.
#[derive(Debug)]
pub enum Watched {
    Received(usize, String),
    Then(std::io::Result<u64>),
}
