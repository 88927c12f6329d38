//! HTTP for the operations tests: `curl` as the real client of the router's API, a
//! local webhook receiver that records what it is sent, one that holds each request
//! unanswered until the test lets it go, and a source that can be stopped and started again on the same port.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::DEADLINE;

/// An answer as curl saw it.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

/// `curl -X METHOD URL` with an optional bearer token and extra headers.
pub fn curl(method: &str, url: &str, token: Option<&str>, headers: &[&str]) -> Answer {
    let mut c = Command::new("curl");
    c.args(["-sS", "-i", "--max-time", "20", "-X", method, url]);
    if let Some(t) = token {
        c.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    for h in headers {
        c.args(["-H", h]);
    }
    let out = c.output().expect("run curl (tests/run.sh installs it)");
    assert!(
        out.status.success(),
        "curl {url} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    Answer {
        status,
        headers: head.to_owned(),
        body: body.to_owned(),
    }
}

/// One request a receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub body: serde_json::Value,
}

/// A webhook receiver on a thread: answers 200 to every POST and keeps the JSON bodies.
pub struct Receiver {
    pub addr: SocketAddr,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    pub fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        let addr = l.local_addr().expect("addr");
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { return };
                let g = g.clone();
                thread::spawn(move || {
                    if let Some(r) = read_request(conn) {
                        g.lock().unwrap().push(r);
                    }
                });
            }
        });
        Self { addr, got }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for what was received.
    pub fn wait(&self, what: &str, pred: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        wait_for(what, || {
            let r = self.received();
            pred(&r).then_some(r)
        })
    }
}

fn read_request(conn: TcpStream) -> Option<Received> {
    let (mut conn, r) = read_unanswered(conn)?;
    let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    Some(r)
}

/// Reads one request whose body is JSON, and answers nothing; the connection and
/// what it brought.
fn read_unanswered(conn: TcpStream) -> Option<(TcpStream, Received)> {
    conn.set_read_timeout(Some(DEADLINE)).ok()?;
    let mut r = BufReader::new(conn);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_owned();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    let body = serde_json::from_slice(&body).ok()?;
    Some((r.into_inner(), Received { path, body }))
}

/// What [`Holding`] has seen.
#[derive(Default)]
struct HoldState {
    received: Vec<Received>,
    held: Vec<TcpStream>,
    released: bool,
}

/// A webhook receiver that reads each request and holds it, unanswered, until the
/// test calls [`Holding::release`]; then it answers each one, and each one after,
/// `503 Service Unavailable`.
pub struct Holding {
    pub addr: SocketAddr,
    state: Arc<Mutex<HoldState>>,
}

const UNAVAILABLE: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

impl Holding {
    pub fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        let addr = l.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(HoldState::default()));
        let s = state.clone();
        thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { return };
                let s = s.clone();
                thread::spawn(move || {
                    let Some((mut conn, r)) = read_unanswered(conn) else {
                        return;
                    };
                    let mut s = s.lock().unwrap();
                    s.received.push(r);
                    if s.released {
                        let _ = conn.write_all(UNAVAILABLE);
                    } else {
                        s.held.push(conn);
                    }
                });
            }
        });
        Self { addr, state }
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// Waits until `n` requests are held.
    pub fn wait_held(&self, n: usize) {
        wait_for(&format!("{n} requests held by the receiver"), || {
            (self.state.lock().unwrap().held.len() >= n).then_some(())
        });
    }

    /// How many held requests their sender still waits on (it has not closed the
    /// connection).
    pub fn held_open(&self) -> usize {
        let s = self.state.lock().unwrap();
        s.held
            .iter()
            .filter(|c| {
                c.set_nonblocking(true).expect("nonblocking");
                let open = matches!(
                    c.peek(&mut [0u8; 1]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
                );
                c.set_nonblocking(false).expect("blocking");
                open
            })
            .count()
    }

    /// Answers the held requests, and from now on every request, with 503.
    pub fn release(&self) {
        let mut s = self.state.lock().unwrap();
        s.released = true;
        for mut c in s.held.drain(..) {
            let _ = c.write_all(UNAVAILABLE);
        }
    }
}

/// An echo source that can be stopped (its port then refuses) and started again on
/// the same port.
pub struct Switchable {
    pub addr: SocketAddr,
    running: Option<Arc<AtomicBool>>,
}

impl Switchable {
    pub fn start() -> Self {
        let mut s = Self {
            addr: "127.0.0.1:0".parse().unwrap(),
            running: None,
        };
        s.up();
        s
    }

    /// Listens (again) on the same address.
    pub fn up(&mut self) {
        let l = TcpListener::bind(self.addr).expect("bind switchable source");
        self.addr = l.local_addr().expect("addr");
        l.set_nonblocking(true).expect("nonblocking");
        let run = Arc::new(AtomicBool::new(true));
        let r = run.clone();
        thread::spawn(move || {
            while r.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((c, _)) => {
                        thread::spawn(move || echo(c));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        self.running = Some(run);
    }

    /// Stops listening; the port refuses connections from then on.
    pub fn down(&mut self) {
        if let Some(r) = self.running.take() {
            r.store(false, Ordering::SeqCst);
        }
        // The listener closes within one poll; wait until the port refuses.
        wait_for("the source's port to refuse", || {
            TcpStream::connect(self.addr).is_err().then_some(())
        });
    }
}

impl Drop for Switchable {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.store(false, Ordering::SeqCst);
        }
    }
}

fn echo(mut c: TcpStream) {
    let _ = c.set_nonblocking(false);
    let mut buf = [0u8; 64 * 1024];
    loop {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if c.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// Polls `f` until it returns `Some`, within the deadline.
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}
