//! What a user of a tunnel does in the tests: connect, talk, and see how the
//! connection ends.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::harness::DEADLINE;

/// A connection to the tunnel whose reads give up after [`DEADLINE`].
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect to the tunnel");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    s
}

/// A user connection to an echo source that has carried bytes both ways and is
/// still open.
pub fn open_user(addr: SocketAddr) -> TcpStream {
    let mut c = connect(addr);
    c.write_all(b"ping").unwrap();
    let mut four = [0u8; 4];
    c.read_exact(&mut four).unwrap();
    assert_eq!(&four, b"ping");
    c
}

/// Writes `msg` on an open user connection to an echo source and asserts it comes
/// back whole.
#[track_caller]
pub fn exchange(user: &mut TcpStream, msg: &[u8]) {
    user.write_all(msg).expect("write to the tunnel");
    let mut back = vec![0; msg.len()];
    user.read_exact(&mut back).expect("read the echo");
    assert_eq!(back, msg);
}

/// One echo exchange: send `msg`, half-close, read to the end.
pub fn echo_once(addr: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut c = TcpStream::connect(addr)?;
    c.set_read_timeout(Some(DEADLINE))?;
    c.write_all(msg)?;
    c.shutdown(Shutdown::Write)?;
    let mut back = Vec::new();
    c.read_to_end(&mut back)?;
    Ok(back)
}

/// Asserts one echo exchange through `addr` returns exactly what was sent.
#[track_caller]
pub fn assert_echo(addr: SocketAddr, msg: &[u8]) {
    match echo_once(addr, msg) {
        Ok(back) => assert_eq!(back, msg, "the echo differs"),
        Err(e) => panic!("echo through {addr} failed: {e}"),
    }
}

/// Retries echo exchanges until one returns exactly `msg`; returns how long that
/// took. Panics after [`DEADLINE`].
#[track_caller]
pub fn wait_for_echo(addr: SocketAddr, msg: &[u8]) -> Duration {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < DEADLINE {
        match echo_once(addr, msg) {
            Ok(back) if back == msg => return started.elapsed(),
            Ok(back) => last = format!("{} bytes back instead of {}", back.len(), msg.len()),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no echo through {addr} within {DEADLINE:?}; last attempt: {last}");
}

/// How a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// Clean end of file.
    Eof,
    /// Reset or aborted.
    Reset,
}

/// Reads until the connection ends, expecting no more bytes; panics if bytes arrive
/// or nothing happens within [`DEADLINE`].
#[track_caller]
pub fn expect_end(c: &mut TcpStream) -> End {
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut buf = [0u8; 4096];
    match c.read(&mut buf) {
        Ok(0) => End::Eof,
        Ok(n) => panic!("expected the connection to end, got {n} bytes"),
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
            ) =>
        {
            End::Reset
        }
        Err(e) => panic!("expected the connection to end within {DEADLINE:?}: {e}"),
    }
}

/// Connects and expects the connection closed without a byte arriving.
#[track_caller]
pub fn expect_refused_user(addr: SocketAddr) -> End {
    let mut c = match TcpStream::connect(addr) {
        Ok(c) => c,
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => return End::Reset,
        // Accepted and reset before `connect` returned (a busy machine can hold the
        // caller that long): the same refusal, seen earlier.
        Err(e) if e.kind() == ErrorKind::ConnectionReset => return End::Reset,
        Err(e) => panic!("connect to {addr}: {e}"),
    };
    let _ = c.write_all(b"GET / HTTP/1.0\r\n\r\n");
    expect_end(&mut c)
}
