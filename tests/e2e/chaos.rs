//! Things that fail on purpose: a source that can be taken down and brought back on
//! the same port, and a TCP forwarder between tunnel and router whose connections
//! can be cut, as a dying network link would.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::harness::DEADLINE;

/// Arms `s` to close with RST and wakes whoever reads it (with end of file and
/// nothing sent to the peer); the reader must then drop it without a FIN of its own.
pub fn reset(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
    let _ = s.shutdown(Shutdown::Read);
}

/// Accepts on `l` until `stop` is set (a connection to `l` wakes it), giving each
/// connection to `handle` on its own thread and remembering it in `open` if given.
fn accept_loop(
    l: TcpListener,
    stop: Arc<AtomicBool>,
    open: Option<Arc<Mutex<Vec<TcpStream>>>>,
    handle: impl Fn(TcpStream) + Send + Sync + Clone + 'static,
) {
    thread::spawn(move || {
        for conn in l.incoming() {
            if stop.load(Ordering::SeqCst) {
                return; // drops the listener: the port is closed
            }
            let Ok(conn) = conn else { continue };
            if let (Some(open), Ok(c)) = (&open, conn.try_clone()) {
                open.lock().unwrap().push(c);
            }
            let h = handle.clone();
            thread::spawn(move || h(conn));
        }
    });
}

fn wake(addr: SocketAddr) {
    let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
}

/// An echo source that can go down (listener closed, open connections reset) and
/// come back on the same address.
pub struct EchoSource {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    live: Arc<AtomicUsize>,
    served: Arc<AtomicUsize>,
}

impl EchoSource {
    pub fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap())
    }

    pub fn start_on(addr: SocketAddr) -> Self {
        let l = TcpListener::bind(addr).expect("bind echo source");
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::new()));
        let crashed = stop.clone();
        let live = Arc::new(AtomicUsize::new(0));
        let count = live.clone();
        let served = Arc::new(AtomicUsize::new(0));
        let echoed = served.clone();
        accept_loop(
            l,
            stop.clone(),
            Some(open.clone()),
            move |mut conn: TcpStream| {
                count.fetch_add(1, Ordering::SeqCst);
                let _done = Decrement(count.clone());
                let mut buf = vec![0u8; 64 * 1024];
                let mut first = true;
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if first {
                                first = false;
                                echoed.fetch_add(1, Ordering::SeqCst);
                            }
                            if conn.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
                if !crashed.load(Ordering::SeqCst) {
                    let _ = conn.shutdown(Shutdown::Write);
                }
            },
        );
        Self {
            addr,
            stop,
            open,
            live,
            served,
        }
    }

    /// Connections that sent it at least one byte (health probes send none).
    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections the source is serving now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// Goes down like a crashed server: the port closes, open connections are reset.
    pub fn crash(self) -> SocketAddr {
        self.stop.store(true, Ordering::SeqCst);
        wake(self.addr);
        for c in self.open.lock().unwrap().drain(..) {
            reset(&c);
        }
        // The accept thread drops the listener after the wake-up connection.
        let deadline = std::time::Instant::now() + DEADLINE;
        while TcpStream::connect(self.addr).is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "the source port never closed"
            );
            thread::sleep(Duration::from_millis(20));
        }
        self.addr
    }
}

/// A TCP forwarder to `target` standing in for the network between tunnel and
/// router. [`Forwarder::cut`] resets every connection it carries, on both sides.
pub struct Forwarder {
    addr: SocketAddr,
    open: Arc<Mutex<Vec<Carried>>>,
}

/// One forwarded connection: both sockets, and whether it was cut.
type Carried = (TcpStream, TcpStream, Arc<AtomicBool>);

impl Forwarder {
    pub fn start(target: SocketAddr) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind forwarder");
        let addr = l.local_addr().unwrap();
        let open: Arc<Mutex<Vec<Carried>>> = Arc::default();
        let o = open.clone();
        accept_loop(
            l,
            Arc::new(AtomicBool::new(false)),
            None,
            move |inbound: TcpStream| {
                let Ok(outbound) = TcpStream::connect(target) else {
                    return;
                };
                let dead = Arc::new(AtomicBool::new(false));
                o.lock().unwrap().push((
                    inbound.try_clone().unwrap(),
                    outbound.try_clone().unwrap(),
                    dead.clone(),
                ));
                let (a, b, d) = (
                    inbound.try_clone().unwrap(),
                    outbound.try_clone().unwrap(),
                    dead.clone(),
                );
                let t = thread::spawn(move || pipe(a, b, &d));
                pipe(outbound, inbound, &dead);
                let _ = t.join();
            },
        );
        Self { addr, open }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Resets every connection carried so far, on both sides.
    pub fn cut(&self) {
        for (a, b, dead) in self.open.lock().unwrap().drain(..) {
            dead.store(true, Ordering::SeqCst);
            reset(&a);
            reset(&b);
        }
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream, dead: &AtomicBool) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => {
                if !dead.load(Ordering::SeqCst) {
                    let _ = to.shutdown(Shutdown::Write);
                }
                return;
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

struct Decrement(Arc<AtomicUsize>);

impl Drop for Decrement {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
