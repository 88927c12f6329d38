//! Streams relayed through kernel TLS (kTLS): the switch from rustls to the kernel,
//! agreed per stream, and the spliced relay after it.
//!
//! The switch must fall on a record boundary in both directions: each side's kernel
//! takes over the TCP byte stream exactly where rustls stopped, so no byte may sit in
//! a userspace buffer, undecrypted or unsent, when the keys move. The protocol makes
//! that so (protocol 4):
//!
//! ```text
//!  client                                       router
//!  attach "tls" ULP (else: plain Open)
//!  OpenKernel{target} ───────────────────────▶  channel clean, attach ULP? connect source
//!  (sends nothing more; reads record by record)   no: Opened ──▶ stream in userspace
//!                     ◀─────────────────────── OpenedKernel   (last userspace record)
//!  keys ─▶ kernel                               keys ─▶ kernel
//!  ◀══════════ payload, raw, in kernel-sealed records; close_notify ends each way ═════▶
//! ```
//!
//! The client reads the router's answer one record at a time (header, then exactly
//! its body), so the records the router's kernel seals after `OpenedKernel` (a source
//! that speaks first) stay in the socket for the client's kernel. The router reads
//! `OpenKernel` like any message: the client sent nothing after it.
//!
//! A kernel-TLS channel carries one stream and closes, like a plain one; neither end
//! sends a TLS `KeyUpdate` afterwards (rustls is gone), and the kernel has no record
//! limit of its own, so keys are not refreshed during a stream (as with nginx or
//! OpenSSL on kTLS). UDP flows stay in userspace.

use std::cell::RefCell;
use std::io;

use conduit_proto::{Message, ProtoError, TlsSession};

use crate::channel::{Channel, ChannelError, Held};
use crate::ktls;
use crate::net::Socket;
use crate::pool;
use crate::sys;

/// A TLS record header: content type, legacy version, length.
const RECORD_HEADER: usize = 5;
/// The largest TLS 1.3 record body (RFC 8446 §5.2: 2^14 + 256).
const MAX_RECORD_BODY: usize = (1 << 14) + 256;

/// Readies a channel's socket for kernel TLS; false when this host cannot (no kTLS,
/// or this socket refused the ULP), which is silent: the stream stays in userspace.
pub(crate) fn attach(sock: &Socket) -> bool {
    ktls::attach_ulp(sys::borrow_fd(sock))
}

/// Moves a channel's record keys from rustls to the kernel. Afterwards the socket
/// carries plaintext both ways through the kernel; on error it must be closed
/// (the keys have left rustls).
pub(crate) fn hand_over(sock: &Socket, tls: TlsSession) -> Result<(), String> {
    let secrets = tls.into_kernel().map_err(|e| e.to_string())?;
    ktls::install(sys::borrow_fd(sock), secrets).map_err(|e| e.to_string())
}

/// The client's wait for the router's answer to `OpenKernel`: the first message,
/// read one record at a time so that nothing after it leaves the socket. When it is
/// `OpenedKernel`, checks that it ended its record and nothing else was decoded.
pub(crate) async fn answer(ch: &mut Channel) -> Result<Message, ChannelError> {
    loop {
        if let Some(held) = ch.backlog.pop_front() {
            let Held::Msg(msg) = held else {
                return Err(ProtoError::Unexpected {
                    got: "payload",
                    expected: "OpenedKernel, Opened or OpenFailed",
                }
                .into());
            };
            if msg == Message::OpenedKernel && !(ch.backlog.is_empty() && ch.decoder.at_boundary())
            {
                return Err(ProtoError::Unexpected {
                    got: "bytes after OpenedKernel in its record",
                    expected: "kernel TLS records",
                }
                .into());
            }
            return Ok(msg);
        }
        if !read_record(&ch.sock, &ch.tls).await? {
            return Err(ChannelError::Closed);
        }
        if ch.decrypt_buffered()? && ch.backlog.is_empty() {
            return Err(ChannelError::Closed);
        }
    }
}

/// Reads exactly one TLS record into the session's buffer, waiting as needed;
/// false at end of stream. The session must hold no bytes when called.
async fn read_record(sock: &Socket, tls: &RefCell<TlsSession>) -> Result<bool, ChannelError> {
    let mut header = [0u8; RECORD_HEADER];
    if !read_exact(sock, &mut header).await? {
        return Ok(false);
    }
    let body = usize::from(u16::from_be_bytes([header[3], header[4]]));
    if body > MAX_RECORD_BODY {
        return Err(ProtoError::Malformed {
            what: "TLS record",
            reason: format!("a record of {body} bytes, above TLS 1.3's {MAX_RECORD_BODY}"),
        }
        .into());
    }
    let mut record = pool::take();
    record.clear();
    record.extend_from_slice(&header);
    record.resize(RECORD_HEADER + body, 0);
    let got = read_exact(sock, &mut record[RECORD_HEADER..]).await;
    if matches!(got, Ok(true)) {
        let mut t = tls.borrow_mut();
        t.spare(record.len())[..record.len()].copy_from_slice(&record);
        t.received(record.len());
    }
    pool::give(record);
    match got {
        Ok(true) => Ok(true),
        Ok(false) => Err(ChannelError::Closed),
        Err(e) => Err(e.into()),
    }
}

/// Fills `buf` from the socket; false if the stream ended before the first byte.
async fn read_exact(sock: &Socket, buf: &mut [u8]) -> io::Result<bool> {
    let mut have = 0;
    while have < buf.len() {
        match sock.try_recv(&mut buf[have..]) {
            Ok(0) if have == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => have += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => sock.readable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}
