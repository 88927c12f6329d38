//! The TLS record pump: rustls' unbuffered API on caller-owned buffers.
//!
//! rustls keeps no I/O buffers here. The caller reads TLS bytes into its own buffer
//! and calls [`TlsSession::decrypt`], which hands out plaintext record by record and
//! says how many bytes to drop from the front; [`TlsSession::encrypt`] seals plaintext
//! straight into the caller's output buffer. That fits owned-buffer I/O (io_uring),
//! and lets the data plane size its writes to whole TLS records.
//!
//! One session is driven by two directions at once (one decrypting, one encrypting),
//! always from one thread. TLS bytes rustls produces while decrypting (a key-update
//! answer, an alert) are kept and sent in front of the next encrypted output, so the
//! decrypting direction never writes to the socket.

use std::sync::Arc;

use rustls::client::UnbufferedClientConnection;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use rustls::{ClientConfig, ServerConfig};

use crate::identity::PublicKey;
use crate::tls::{RouterKeyMismatch, UnknownClientKey, verification_error};

/// Worst-case bytes TLS 1.3 adds to one record: 5 header, 1 content type, 16 tag.
pub const RECORD_OVERHEAD: usize = 22;
/// Largest plaintext in one TLS record.
pub const MAX_RECORD_PLAINTEXT: usize = 16 * 1024;

/// A TLS failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// rustls refused the peer or its bytes (bad key, bad record, alert received…).
    #[error("{}", describe(.0))]
    Rustls(#[from] rustls::Error),
    /// The peer closed the connection before the handshake finished.
    #[error("the peer closed the connection during the TLS handshake")]
    ClosedDuringHandshake,
    /// The caller's output buffer is too small; retry with at least `required` bytes.
    #[error("output buffer too small: {required} bytes needed")]
    BufferTooSmall {
        /// Bytes needed.
        required: usize,
    },
    /// The traffic keys reached their usage limit and could not be refreshed.
    #[error("TLS traffic keys exhausted")]
    KeysExhausted,
    /// The session is closed; nothing more can be sent.
    #[error("TLS session already closed")]
    Closed,
    /// An earlier call failed; the session is unusable and the connection must close.
    #[error("TLS session already failed")]
    Failed,
    /// The session holds bytes its keys must still process (received but not
    /// decrypted, or sealed but not sent), so they cannot move to the kernel.
    #[error("cannot hand the TLS keys to the kernel: {0}")]
    NotAtRecordBoundary(&'static str),
}

fn describe(e: &rustls::Error) -> String {
    use rustls::PeerIncompatible as P;
    if let Some(m) = verification_error::<RouterKeyMismatch>(e) {
        return m.to_string();
    }
    if let Some(u) = verification_error::<UnknownClientKey>(e) {
        return u.to_string();
    }
    if let rustls::Error::PeerIncompatible(
        P::Tls12NotOffered
        | P::Tls12NotOfferedOrEnabled
        | P::SupportedVersionsExtensionRequired
        // A TLS 1.0 or 1.1 hello, which has no signature_algorithms (every TLS 1.3
        // one has): rustls stops at that before it looks at the version.
        | P::SignatureAlgorithmsExtensionRequired,
    ) = e
    {
        return format!(
            "TLS error: the peer offers only TLS 1.2 or older, and Conduit speaks TLS 1.3 only ({e})"
        );
    }
    if let rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol)
    | rustls::Error::NoApplicationProtocol = e
    {
        return format!(
            "TLS error: the peer does not speak Conduit's protocol (ALPN conduit/1); is it \
             a Conduit router (or, on a router, a Conduit client)? ({e})"
        );
    }
    format!("TLS error: {e}")
}

impl TlsError {
    /// The router-key mismatch inside this error, if that is what it is.
    pub fn router_key_mismatch(&self) -> Option<&RouterKeyMismatch> {
        match self {
            Self::Rustls(e) => verification_error(e),
            _ => None,
        }
    }

    /// The refused client key inside this error, if that is what it is.
    pub fn unknown_client_key(&self) -> Option<&UnknownClientKey> {
        match self {
            Self::Rustls(e) => verification_error(e),
            _ => None,
        }
    }

    /// True when the peer answered the handshake with something that is not TLS 1.3
    /// (an HTTP server's answer, a plain-transport router's frame), or with a
    /// `protocol_version` alert (a plain-transport Conduit router given a ClientHello
    /// sends one; so does a server that has no TLS 1.3): it is no router of this
    /// transport, and trying again will not change that.
    pub fn peer_not_tls(&self) -> bool {
        use rustls::InvalidMessage as M;
        matches!(
            self,
            Self::Rustls(
                rustls::Error::InvalidMessage(M::InvalidContentType | M::UnknownProtocolVersion)
                    | rustls::Error::AlertReceived(rustls::AlertDescription::ProtocolVersion)
            )
        )
    }

    /// True when the peer closed the connection during the handshake without a word:
    /// a router going away, or a forwarder (a port-forward, a TCP proxy) whose router
    /// is not up yet. Worth trying again.
    pub fn closed_during_handshake(&self) -> bool {
        matches!(self, Self::ClosedDuringHandshake)
    }

    /// True when this side (a router) found none of its cipher suites among those the
    /// peer offered.
    pub fn no_cipher_suite_in_common(&self) -> bool {
        matches!(
            self,
            Self::Rustls(rustls::Error::PeerIncompatible(
                rustls::PeerIncompatible::NoCipherSuitesInCommon
            ))
        )
    }

    /// True when the peer (a router) ended the handshake with `handshake_failure`:
    /// between Conduit peers, which agree on everything else, it accepts none of the
    /// cipher suites offered.
    pub fn peer_refused_handshake(&self) -> bool {
        matches!(
            self,
            Self::Rustls(rustls::Error::AlertReceived(
                rustls::AlertDescription::HandshakeFailure
            ))
        )
    }

    /// True when the peer sent an alert that means "I do not accept your key".
    pub fn peer_rejected_our_key(&self) -> bool {
        use rustls::AlertDescription as A;
        matches!(
            self,
            Self::Rustls(rustls::Error::AlertReceived(
                A::BadCertificate
                    | A::CertificateUnknown
                    | A::AccessDenied
                    | A::UnknownCA
                    | A::CertificateRevoked
                    | A::UnsupportedCertificate
                    | A::CertificateRequired
            ))
        )
    }
}

/// How far a handshake got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeStatus {
    /// Send what was written to `out`, then read more bytes from the peer.
    NeedMore,
    /// The handshake is complete (send what was written to `out` first).
    Done,
}

enum Conn {
    Client(UnbufferedClientConnection),
    Server(UnbufferedServerConnection),
}

/// One TLS connection's state, either side. `Send`, so it can be handed from the
/// plane that ran the handshake to the core that relays.
///
/// The session owns the buffer of TLS bytes received and not yet processed: rustls'
/// unbuffered deframer remembers positions inside that buffer, so every call into
/// rustls must see the same bytes (minus what it said to discard). Callers read into
/// [`Self::spare`] and then call [`Self::received`]. When nothing is buffered the
/// buffer can be lent back to a pool ([`Self::take_buffer`]) so idle connections
/// hold no memory.
pub struct TlsSession {
    conn: Conn,
    /// Received TLS bytes; `inbuf[start..filled]` is unprocessed. Always fully
    /// initialised (`len() == capacity()`), so reads need no zeroing. Discarding
    /// advances `start` instead of moving bytes; they move only when room runs out.
    inbuf: Vec<u8>,
    start: usize,
    filled: usize,
    /// TLS bytes produced outside `seal` that must precede its next output.
    pending: Vec<u8>,
    /// Plaintext rustls released outside `decrypt`; handed out first by the next one.
    stash: Vec<u8>,
    peer_closed: bool,
    /// Set by the first error: rustls keeps the offending record, so calling into it
    /// again would process that record a second time.
    failed: bool,
    /// Whether the alert after a failure was already drained.
    alert_drained: bool,
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSession")
            .field(
                "side",
                &match self.conn {
                    Conn::Client(_) => "client",
                    Conn::Server(_) => "server",
                },
            )
            .field("peer", &self.peer_key())
            .field("buffered", &self.buffered())
            .finish()
    }
}

/// Runs `$body` with `$c` bound to whichever side the session is (both sides have
/// the same unbuffered API on different types) and `$inbuf` to the unprocessed bytes.
macro_rules! on_conn {
    ($self:expr, $c:ident => $body:expr) => {
        match &mut $self.conn {
            Conn::Client($c) => $body,
            Conn::Server($c) => $body,
        }
    };
}

/// Default size of the receive buffer: room for four full records.
pub const DEFAULT_INBUF: usize = 4 * (MAX_RECORD_PLAINTEXT + RECORD_OVERHEAD);

impl TlsSession {
    /// A client session (sends its ClientHello on the first [`Self::handshake`]),
    /// asking the router for the key `hint` if it holds more than one
    /// ([`crate::tls::router_server_name`]).
    pub fn client(config: Arc<ClientConfig>, hint: Option<&PublicKey>) -> Result<Self, TlsError> {
        let conn = UnbufferedClientConnection::new(config, crate::tls::router_server_name(hint))?;
        Ok(Self::new(Conn::Client(conn)))
    }

    /// A server session.
    pub fn server(config: Arc<ServerConfig>) -> Result<Self, TlsError> {
        let conn = UnbufferedServerConnection::new(config)?;
        Ok(Self::new(Conn::Server(conn)))
    }

    fn new(conn: Conn) -> Self {
        Self {
            conn,
            inbuf: Vec::new(),
            start: 0,
            filled: 0,
            pending: Vec::new(),
            stash: Vec::new(),
            peer_closed: false,
            failed: false,
            alert_drained: false,
        }
    }

    /// The peer's key, once the handshake has verified it.
    pub fn peer_key(&self) -> Option<PublicKey> {
        let certs = match &self.conn {
            Conn::Client(c) => c.peer_certificates(),
            Conn::Server(c) => c.peer_certificates(),
        }?;
        PublicKey::from_spki(certs.first()?.as_ref())
    }

    /// The cipher suite the handshake agreed on (`None` before it).
    pub fn cipher_suite(&self) -> Option<crate::suite::Suite> {
        let negotiated = match &self.conn {
            Conn::Client(c) => c.negotiated_cipher_suite(),
            Conn::Server(c) => c.negotiated_cipher_suite(),
        }?;
        crate::suite::Suite::of(negotiated)
    }

    /// True once the peer's close_notify has been seen.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Received TLS bytes not yet processed (a partial record, normally).
    pub fn buffered(&self) -> usize {
        self.filled - self.start
    }

    /// Space to read TLS bytes into: at least `min` bytes (the buffer grows, never
    /// shrinks while it holds data). Follow with [`Self::received`].
    pub fn spare(&mut self, min: usize) -> &mut [u8] {
        if self.inbuf.len() - self.filled < min && self.start > 0 {
            // Out of room at the end: move the unprocessed tail to the front.
            self.inbuf.copy_within(self.start..self.filled, 0);
            self.filled -= self.start;
            self.start = 0;
        }
        if self.inbuf.len() - self.filled < min {
            let want = (self.filled + min).max(self.inbuf.len());
            self.inbuf.resize(want, 0);
        }
        &mut self.inbuf[self.filled..]
    }

    /// Records that `n` bytes were read into [`Self::spare`].
    pub fn received(&mut self, n: usize) {
        self.filled = (self.filled + n).min(self.inbuf.len());
    }

    /// Lends out the receive buffer when it holds nothing (for a pool); `None` if it
    /// holds bytes or was already taken.
    pub fn take_buffer(&mut self) -> Option<Vec<u8>> {
        if self.buffered() == 0 && !self.inbuf.is_empty() {
            self.start = 0;
            self.filled = 0;
            Some(std::mem::take(&mut self.inbuf))
        } else {
            None
        }
    }

    /// Gives the session a receive buffer (from a pool) if it has none.
    pub fn give_buffer(&mut self, mut buf: Vec<u8>) -> Option<Vec<u8>> {
        if self.inbuf.is_empty() {
            let cap = buf.capacity();
            buf.resize(cap, 0);
            self.inbuf = buf;
            None
        } else {
            Some(buf)
        }
    }

    fn discard(&mut self, n: usize) {
        self.start = (self.start + n).min(self.filled);
        if self.start == self.filled {
            self.start = 0;
            self.filled = 0;
        }
    }

    /// An upper bound on what [`Self::encrypt`] writes for `plain_len` bytes.
    pub fn encrypted_len(&self, plain_len: usize) -> usize {
        let records = plain_len.div_ceil(MAX_RECORD_PLAINTEXT).max(1);
        self.pending.len() + plain_len + records * RECORD_OVERHEAD + 64
    }

    /// Advances the handshake with the buffered bytes, appending what must be sent to
    /// `out`.
    ///
    /// Application data that arrives with the peer's last handshake flight stays in
    /// the session and comes out of the next [`Self::decrypt`].
    ///
    /// On error, `out` may end with an alert telling the peer why; send it before
    /// closing.
    pub fn handshake(&mut self, out: &mut Vec<u8>) -> Result<HandshakeStatus, TlsError> {
        if self.failed {
            return Err(TlsError::Failed);
        }
        let res = self.handshake_inner(out);
        if res.is_err() {
            self.failed = true;
            self.drain_alerts(out);
        }
        res
    }

    /// After an error, moves the alert rustls queued (and pending bytes) into `out`.
    ///
    /// Exactly one call into rustls: after a fatal error it has queued one alert, and
    /// a second call would read the offending record again (which rustls answers with
    /// a debug assertion; found by the `handshake` fuzz target).
    pub fn drain_alerts(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.pending);
        if self.alert_drained {
            return;
        }
        self.alert_drained = true;
        let (start, filled) = (self.start, self.filled);
        let inbuf = &mut self.inbuf;
        on_conn!(self, c => {
            if let UnbufferedStatus {
                state: Ok(ConnectionState::EncodeTlsData(mut e)),
                ..
            } = c.process_tls_records(&mut inbuf[start..filled])
            {
                let _ = encode_into(out, |buf| e.encode(buf));
            }
        })
    }

    fn handshake_inner(&mut self, out: &mut Vec<u8>) -> Result<HandshakeStatus, TlsError> {
        loop {
            let (start, filled) = (self.start, self.filled);
            let inbuf = &mut self.inbuf;
            let stash = &mut self.stash;
            let (discard, step) = on_conn!(self, c => {
                let UnbufferedStatus { discard, state } =
                    c.process_tls_records(&mut inbuf[start..filled]);
                let step = match state {
                    Err(e) => Err(TlsError::from(e)),
                    Ok(ConnectionState::EncodeTlsData(mut e)) => {
                        encode_into(out, |buf| e.encode(buf)).map(|()| None)
                    }
                    Ok(ConnectionState::TransmitTlsData(t)) => {
                        // The caller sends `out` before it reads again, which keeps order.
                        t.done();
                        Ok(None)
                    }
                    Ok(ConnectionState::BlockedHandshake) => Ok(Some(HandshakeStatus::NeedMore)),
                    Ok(ConnectionState::WriteTraffic(_)) => Ok(Some(HandshakeStatus::Done)),
                    Ok(ConnectionState::ReadTraffic(mut rt)) => {
                        stash_records(&mut rt, stash).map(|()| Some(HandshakeStatus::Done))
                    }
                    Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => {
                        Err(TlsError::ClosedDuringHandshake)
                    }
                    Ok(_) => Ok(Some(HandshakeStatus::NeedMore)),
                };
                (discard, step)
            });
            self.discard(discard);
            if let Some(status) = step? {
                return Ok(status);
            }
        }
    }

    /// Decrypts every complete record buffered, calling `on_plain` with each record's
    /// plaintext in order. Returns true once the peer has sent close_notify.
    pub fn decrypt(&mut self, on_plain: impl FnMut(&[u8])) -> Result<bool, TlsError> {
        if self.failed {
            return Err(TlsError::Failed);
        }
        let res = self.decrypt_inner(on_plain);
        self.failed = res.is_err();
        res
    }

    fn decrypt_inner(&mut self, mut on_plain: impl FnMut(&[u8])) -> Result<bool, TlsError> {
        if !self.stash.is_empty() {
            let stash = std::mem::take(&mut self.stash);
            on_plain(&stash);
        }
        loop {
            let (start, filled) = (self.start, self.filled);
            let inbuf = &mut self.inbuf;
            let pending = &mut self.pending;
            let peer_closed = &mut self.peer_closed;
            let (discard, stop) = on_conn!(self, c => {
                let UnbufferedStatus { discard, state } =
                    c.process_tls_records(&mut inbuf[start..filled]);
                let stop = match state {
                    Err(e) => Err(TlsError::from(e)),
                    Ok(ConnectionState::ReadTraffic(mut rt)) => {
                        let mut res = Ok(false);
                        while let Some(record) = rt.next_record() {
                            match record {
                                Ok(r) => on_plain(r.payload),
                                Err(e) => {
                                    res = Err(TlsError::from(e));
                                    break;
                                }
                            }
                        }
                        res
                    }
                    Ok(ConnectionState::PeerClosed) => {
                        *peer_closed = true;
                        Ok(false)
                    }
                    Ok(ConnectionState::Closed) => {
                        *peer_closed = true;
                        Ok(true)
                    }
                    Ok(ConnectionState::EncodeTlsData(mut e)) => {
                        encode_into(pending, |buf| e.encode(buf)).map(|()| false)
                    }
                    Ok(ConnectionState::TransmitTlsData(t)) => {
                        t.done();
                        Ok(false)
                    }
                    Ok(_) => Ok(true),
                };
                (discard, stop)
            });
            self.discard(discard);
            if stop? {
                return Ok(self.peer_closed);
            }
        }
    }

    /// Gives up the session for kernel TLS: the record keys of both directions with
    /// their sequence numbers (for `dataplane::ktls::install`). Only at a record
    /// boundary: nothing received may wait undecrypted, nothing decrypted unread,
    /// nothing sealed unsent, or those bytes would be lost between rustls and the
    /// kernel. Needs a config with `enable_secret_extraction`.
    ///
    /// rustls keeps nothing afterwards: a TLS 1.3 `KeyUpdate` from the peer cannot be
    /// followed, so only a peer that agreed to the hand-over (Conduit's
    /// `OpenKernel`/`OpenedKernel`) may see this session's keys go to the kernel.
    pub fn into_kernel(self) -> Result<rustls::ExtractedSecrets, TlsError> {
        if self.failed {
            return Err(TlsError::Failed);
        }
        if self.buffered() > 0 {
            return Err(TlsError::NotAtRecordBoundary(
                "received bytes are not yet decrypted",
            ));
        }
        if !self.stash.is_empty() {
            return Err(TlsError::NotAtRecordBoundary(
                "decrypted bytes are not yet read",
            ));
        }
        if !self.pending.is_empty() {
            return Err(TlsError::NotAtRecordBoundary(
                "sealed bytes are not yet sent",
            ));
        }
        Ok(match self.conn {
            Conn::Client(c) => c.dangerous_into_kernel_connection()?.0,
            Conn::Server(c) => c.dangerous_into_kernel_connection()?.0,
        })
    }

    /// Encrypts `plain` into `out` (after any TLS bytes decrypting produced) and
    /// returns the number of bytes written. `out` must hold
    /// [`Self::encrypted_len`]`(plain.len())` bytes; on [`TlsError::BufferTooSmall`]
    /// nothing was consumed and the call can be retried with a larger buffer.
    pub fn encrypt(&mut self, plain: &[u8], out: &mut [u8]) -> Result<usize, TlsError> {
        self.seal(out, |w, buf| w.encrypt(plain, buf))
    }

    /// Writes a close_notify alert into `out`: no more data from this side.
    pub fn close_notify(&mut self, out: &mut [u8]) -> Result<usize, TlsError> {
        self.seal(out, |w, buf| w.queue_close_notify(buf))
    }

    fn seal(
        &mut self,
        out: &mut [u8],
        write: impl FnMut(&mut WriteTrafficAny<'_>, &mut [u8]) -> Result<usize, EncryptError>,
    ) -> Result<usize, TlsError> {
        if self.failed {
            return Err(TlsError::Failed);
        }
        let res = self.seal_inner(out, write);
        // A too-small buffer is the caller's to fix; anything else ends the session.
        if let Err(e) = &res {
            self.failed = !matches!(e, TlsError::BufferTooSmall { .. });
        }
        res
    }

    fn seal_inner(
        &mut self,
        out: &mut [u8],
        mut write: impl FnMut(&mut WriteTrafficAny<'_>, &mut [u8]) -> Result<usize, EncryptError>,
    ) -> Result<usize, TlsError> {
        loop {
            let (start, filled) = (self.start, self.filled);
            let inbuf = &mut self.inbuf;
            let pending = &mut self.pending;
            let stash = &mut self.stash;
            let peer_closed = &mut self.peer_closed;
            let (discard, done) = on_conn!(self, c => {
                let UnbufferedStatus { discard, state } =
                    c.process_tls_records(&mut inbuf[start..filled]);
                let done = match state {
                    Err(e) => Err(TlsError::from(e)),
                    Ok(ConnectionState::EncodeTlsData(mut e)) => {
                        encode_into(pending, |buf| e.encode(buf)).map(|()| None)
                    }
                    Ok(ConnectionState::TransmitTlsData(t)) => {
                        t.done();
                        Ok(None)
                    }
                    Ok(ConnectionState::PeerClosed) => {
                        *peer_closed = true;
                        Ok(None)
                    }
                    Ok(ConnectionState::ReadTraffic(mut rt)) => {
                        stash_records(&mut rt, stash).map(|()| None)
                    }
                    Ok(ConnectionState::WriteTraffic(mut w)) => {
                        let head = pending.len();
                        if out.len() < head {
                            Err(TlsError::BufferTooSmall { required: head + 64 })
                        } else {
                            let mut any = WriteTrafficAny(&mut w);
                            match write(&mut any, &mut out[head..]) {
                                Ok(n) => {
                                    out[..head].copy_from_slice(pending);
                                    pending.clear();
                                    Ok(Some(head + n))
                                }
                                Err(EncryptError::InsufficientSize(s)) => {
                                    Err(TlsError::BufferTooSmall {
                                        required: head + s.required_size,
                                    })
                                }
                                Err(_) => Err(TlsError::KeysExhausted),
                            }
                        }
                    }
                    Ok(ConnectionState::Closed) => Err(TlsError::Closed),
                    Ok(_) => Err(TlsError::Rustls(rustls::Error::HandshakeNotComplete)),
                };
                (discard, done)
            });
            self.discard(discard);
            if let Some(n) = done? {
                return Ok(n);
            }
        }
    }
}

/// Moves every decrypted record of a `ReadTraffic` state into `stash`.
fn stash_records<Data>(
    rt: &mut rustls::unbuffered::ReadTraffic<'_, '_, Data>,
    stash: &mut Vec<u8>,
) -> Result<(), TlsError> {
    while let Some(record) = rt.next_record() {
        stash.extend_from_slice(record?.payload);
    }
    Ok(())
}

/// Erases the client/server type parameter of rustls' `WriteTraffic`.
struct WriteTrafficAny<'a>(&'a mut dyn WriteTrafficOps);

trait WriteTrafficOps {
    fn encrypt(&mut self, plain: &[u8], out: &mut [u8]) -> Result<usize, EncryptError>;
    fn queue_close_notify(&mut self, out: &mut [u8]) -> Result<usize, EncryptError>;
}

impl<Data> WriteTrafficOps for rustls::unbuffered::WriteTraffic<'_, Data> {
    fn encrypt(&mut self, plain: &[u8], out: &mut [u8]) -> Result<usize, EncryptError> {
        rustls::unbuffered::WriteTraffic::encrypt(self, plain, out)
    }
    fn queue_close_notify(&mut self, out: &mut [u8]) -> Result<usize, EncryptError> {
        rustls::unbuffered::WriteTraffic::queue_close_notify(self, out)
    }
}

impl WriteTrafficAny<'_> {
    fn encrypt(&mut self, plain: &[u8], out: &mut [u8]) -> Result<usize, EncryptError> {
        self.0.encrypt(plain, out)
    }
    fn queue_close_notify(&mut self, out: &mut [u8]) -> Result<usize, EncryptError> {
        self.0.queue_close_notify(out)
    }
}

/// Appends one encoded handshake record to `out`, growing it as rustls asks.
fn encode_into(
    out: &mut Vec<u8>,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) -> Result<(), TlsError> {
    let start = out.len();
    out.resize(start + 4096, 0);
    loop {
        match encode(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(s)) => out.resize(start + s.required_size, 0),
            Err(EncodeError::AlreadyEncoded) => {
                out.truncate(start);
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests;
