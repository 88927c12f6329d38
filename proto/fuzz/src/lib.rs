//! What the fuzz targets share: how an input is cut into pieces, how decoder events
//! are collected for comparison, fixed key material, and an in-memory client/router
//! pair whose wire the fuzzer may tamper with.
//!
//! Input layouts are documented here once, because `examples/make_seeds.rs` writes
//! seeds in the same layouts.

use std::collections::HashMap;
use std::sync::Arc;

use conduit_proto::frame::FrameType;
use conduit_proto::session::HandshakeStatus;
use conduit_proto::stream::{Piece, StreamReader};
use conduit_proto::tls::{AuthorizedClients, Suites, client_config, server_config};
use conduit_proto::{Event, FrameDecoder, KeyPair, Message, ProtoError, TlsSession};

/// Every frame type, in a fixed order: `message_decode` picks one with its first byte.
/// Types added later go at the end, so that saved inputs keep their meaning.
pub const ALL_TYPES: [FrameType; 21] = [
    FrameType::Hello,
    FrameType::Welcome,
    FrameType::Refused,
    FrameType::Open,
    FrameType::Opened,
    FrameType::OpenFailed,
    FrameType::OpenDatagrams,
    FrameType::Data,
    FrameType::Datagram,
    FrameType::Eof,
    FrameType::Reset,
    FrameType::Ping,
    FrameType::Pong,
    FrameType::Goodbye,
    FrameType::RotateKey,
    FrameType::KeyRotated,
    FrameType::OpenKernel,
    FrameType::OpenedKernel,
    FrameType::Unframed,
    FrameType::RouterKeys,
    FrameType::SourceRefused,
];

/// Most cut points an input may ask for.
pub const MAX_CUTS: usize = 15;

/// Splits an input laid out as `n (1 byte) | n × u16 BE cut positions | stream` into
/// the stream and its pieces. `n` is taken modulo [`MAX_CUTS`] + 1; each position is
/// taken modulo `stream.len() + 1`, so every input is valid. Pieces may be empty
/// (feeding an empty slice is legal and must change nothing).
pub fn split_input(data: &[u8]) -> (&[u8], Vec<&[u8]>) {
    let Some((&n, rest)) = data.split_first() else {
        return (&[], Vec::new());
    };
    let n = (n as usize % (MAX_CUTS + 1)).min(rest.len() / 2);
    let (cut_bytes, stream) = rest.split_at(n * 2);
    let mut cuts: Vec<usize> = cut_bytes
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]) as usize % (stream.len() + 1))
        .collect();
    cuts.sort_unstable();
    let mut pieces = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for cut in cuts {
        pieces.push(&stream[start..cut]);
        start = cut;
    }
    pieces.push(&stream[start..]);
    (stream, pieces)
}

/// The inverse of [`split_input`]'s header: `n | cuts | stream`.
pub fn with_cuts(cuts: &[u16], stream: &[u8]) -> Vec<u8> {
    assert!(cuts.len() <= MAX_CUTS);
    let mut v = vec![cuts.len() as u8];
    for c in cuts {
        v.extend_from_slice(&c.to_be_bytes());
    }
    v.extend_from_slice(stream);
    v
}

/// A decoder event, owned, with adjacent payload pieces merged: the form in which two
/// decodings of the same stream must agree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owned {
    /// Payload bytes (possibly of several `Data` frames).
    Data(Vec<u8>),
    /// One whole datagram.
    Datagram(Vec<u8>),
    /// A control message.
    Msg(Message),
}

/// What decoding a stream produced.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded {
    /// Events in order, payload merged.
    pub events: Vec<Owned>,
    /// `Ok(at_boundary)` after the last piece, or the first error.
    pub end: Result<bool, ProtoError>,
}

/// Feeds `pieces` to one decoder in order, stopping at the first error (after which
/// the stream is unusable, as `FrameDecoder::feed` documents).
pub fn decode_pieces(pieces: &[&[u8]]) -> Decoded {
    let mut d = FrameDecoder::new();
    let mut events: Vec<Owned> = Vec::new();
    for piece in pieces {
        let res = d.feed(piece, |ev| match ev {
            Event::Data(b) => {
                assert!(
                    !b.is_empty(),
                    "the decoder handed out an empty payload slice"
                );
                match events.last_mut() {
                    Some(Owned::Data(v)) => v.extend_from_slice(b),
                    _ => events.push(Owned::Data(b.to_vec())),
                }
            }
            Event::Datagram(b) => events.push(Owned::Datagram(b.to_vec())),
            Event::Message(m) => events.push(Owned::Msg(m)),
        });
        if let Err(e) = res {
            return Decoded {
                events,
                end: Err(e),
            };
        }
    }
    Decoded {
        events,
        end: Ok(d.at_boundary()),
    }
}

/// Frames `events` again: messages with `Message::encode`, datagrams as one `Datagram`
/// frame each, payload as `Data` frames of at most 64 KiB (what senders in this build
/// use).
pub fn encode_events(events: &[Owned]) -> Vec<u8> {
    let mut out = Vec::new();
    for ev in events {
        match ev {
            Owned::Msg(m) => m.encode(&mut out),
            Owned::Datagram(d) => {
                out.extend_from_slice(&conduit_proto::frame::Header::datagram(d.len()));
                out.extend_from_slice(d);
            }
            Owned::Data(b) => {
                for chunk in b.chunks(64 * 1024) {
                    out.extend_from_slice(&conduit_proto::frame::Header::data(chunk.len()));
                    out.extend_from_slice(chunk);
                }
            }
        }
    }
    out
}

/// A PKCS#8 v1 Ed25519 private key (RFC 8410) from a fixed seed: the targets use fixed
/// keys so that a crash reproduces from its input alone.
fn fixed_key(seed: u8) -> KeyPair {
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(&[seed; 32]);
    KeyPair::from_pkcs8_der(&der).expect("a fixed Ed25519 seed is a valid key")
}

/// The client's and the router's keys.
pub struct Keys {
    /// The client's identity.
    pub client: KeyPair,
    /// The router's identity.
    pub router: KeyPair,
}

impl Keys {
    /// The fixed keys every target uses.
    pub fn fixed() -> Self {
        Self {
            client: fixed_key(1),
            router: fixed_key(2),
        }
    }

    /// A client session that pins the router's key. Configs are built per call, so
    /// no session cache carries state from one fuzz input to the next.
    pub fn client_session(&self) -> TlsSession {
        let cfg = client_config(&self.client, &[self.router.public()], &Suites::all()).expect("client config");
        TlsSession::client(cfg, None).expect("client session")
    }

    /// A router session that admits the client's key.
    pub fn server_session(&self) -> TlsSession {
        let admitted = HashMap::from([(self.client.public(), String::new())]);
        let cfg = server_config(&[&self.router], Arc::new(AuthorizedClients::new(admitted)), &Suites::all())
            .expect("server config");
        TlsSession::server(cfg).expect("server session")
    }
}

/// Copies `bytes` into the session's receive buffer.
pub fn deliver(to: &mut TlsSession, bytes: &[u8]) {
    let n = bytes.len();
    to.spare(n)[..n].copy_from_slice(bytes);
    to.received(n);
}

/// Drives one session with `pieces` of peer bytes: `handshake` until it is done, then
/// `decrypt`. Stops at the first error (the connection would be closed). Returns
/// whether the handshake completed.
pub fn drive(session: &mut TlsSession, pieces: &[&[u8]]) -> bool {
    let mut done = false;
    for piece in pieces {
        deliver(session, piece);
        if done {
            if session.decrypt(|_| {}).is_err() {
                return done;
            }
            continue;
        }
        let mut out = Vec::new();
        match session.handshake(&mut out) {
            Ok(HandshakeStatus::Done) => {
                done = true;
                if session.decrypt(|_| {}).is_err() {
                    return done;
                }
            }
            Ok(HandshakeStatus::NeedMore) => {}
            Err(_) => return done,
        }
    }
    done
}

/// One change to the bytes in flight: at byte `offset` of one direction's stream,
/// XOR in `value` or insert `value` before it.
#[derive(Debug, Clone, Copy)]
pub struct Tamper {
    /// True for client → router, false for router → client.
    pub to_server: bool,
    /// True to insert a byte, false to XOR one.
    pub insert: bool,
    /// Offset in that direction's stream, counted from its first byte.
    pub offset: usize,
    /// The byte to XOR in or insert.
    pub value: u8,
}

impl Tamper {
    /// Parses 4 bytes: `flags | offset (u16 BE) | value`; bit 0 of flags picks the
    /// direction, bit 1 insertion.
    pub fn parse(b: &[u8; 4]) -> Self {
        Self {
            to_server: b[0] & 1 == 1,
            insert: b[0] & 2 == 2,
            offset: u16::from_be_bytes([b[1], b[2]]) as usize,
            value: b[3],
        }
    }
}

/// Bytes sent each way during a pair handshake, as sent (before tampering).
#[derive(Debug, Default)]
pub struct Transcript {
    /// Client → router.
    pub to_server: Vec<u8>,
    /// Router → client.
    pub to_client: Vec<u8>,
}

/// How a pair handshake ended.
#[derive(Debug)]
pub struct PairOutcome {
    /// Client and router sessions, for whatever the caller does next.
    pub client: TlsSession,
    /// The router's session.
    pub server: TlsSession,
    /// Whether each side completed its handshake without error.
    pub client_done: bool,
    /// See `client_done`.
    pub server_done: bool,
    /// Whether any tamper changed a byte that was actually sent.
    pub tampered: bool,
    /// What was sent.
    pub transcript: Transcript,
}

/// Applies the tampers of one direction to `bytes`, which start at stream offset `at`.
fn apply(tampers: &[Tamper], to_server: bool, at: usize, bytes: Vec<u8>) -> (Vec<u8>, bool) {
    let mut out = Vec::with_capacity(bytes.len() + tampers.len());
    let mut hit = false;
    for (i, b) in bytes.into_iter().enumerate() {
        let mut b = b;
        for t in tampers
            .iter()
            .filter(|t| t.to_server == to_server && t.offset == at + i)
        {
            if t.insert {
                out.push(t.value);
                hit = true;
            } else if t.value != 0 {
                b ^= t.value;
                hit = true;
            }
        }
        out.push(b);
    }
    (out, hit)
}

/// Runs a client and a router handshake against each other in memory (at most 10
/// rounds), applying `tampers` to the bytes in flight.
pub fn pair_handshake(keys: &Keys, tampers: &[Tamper]) -> PairOutcome {
    let mut c = keys.client_session();
    let mut s = keys.server_session();
    let mut t = Transcript::default();
    let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
    let (mut c_state, mut s_state) = (Some(false), Some(false));
    let mut tampered = false;
    for _ in 0..10 {
        if c_state == Some(false) {
            deliver(&mut c, &std::mem::take(&mut to_client));
            let mut out = Vec::new();
            c_state = match c.handshake(&mut out) {
                Ok(st) => Some(st == HandshakeStatus::Done),
                Err(_) => None,
            };
            let (bytes, hit) = apply(tampers, true, t.to_server.len(), out.clone());
            t.to_server.extend_from_slice(&out);
            tampered |= hit;
            to_server.extend_from_slice(&bytes);
        }
        if s_state == Some(false) {
            deliver(&mut s, &std::mem::take(&mut to_server));
            let mut out = Vec::new();
            s_state = match s.handshake(&mut out) {
                Ok(st) => Some(st == HandshakeStatus::Done),
                Err(_) => None,
            };
            let (bytes, hit) = apply(tampers, false, t.to_client.len(), out.clone());
            t.to_client.extend_from_slice(&out);
            tampered |= hit;
            to_client.extend_from_slice(&bytes);
        }
        if c_state != Some(false) && s_state != Some(false) {
            break;
        }
    }
    // What is still in flight (the router's last flight, session tickets) is delivered
    // so that the caller's next decrypt sees it.
    deliver(&mut c, &to_client);
    deliver(&mut s, &to_server);
    PairOutcome {
        client: c,
        server: s,
        client_done: c_state == Some(true),
        server_done: s_state == Some(true),
        tampered,
        transcript: t,
    }
}

/// How one direction of a plain-transport stream read (see [`read_stream`]).
#[derive(Debug, PartialEq)]
pub struct StreamRead {
    /// All payload, in order.
    pub payload: Vec<u8>,
    /// `Ok(None)`: the bytes ran out inside the stream; `Ok(Some((unframed, rest)))`:
    /// it ended with `Eof` (`unframed` false) or `Unframed`, and `rest` followed.
    pub end: Result<Option<(bool, Vec<u8>)>, ProtoError>,
}

/// Reads `pieces` in order with one [`StreamReader`], as the plain transport's data
/// plane does. With `splice`, a piece that starts inside a `Data` body has that part
/// of the body moved past the reader (`skip_body`), as the data plane splices large
/// bodies, and only the rest of the piece is fed to it.
pub fn read_stream(pieces: &[&[u8]], splice: bool) -> StreamRead {
    let mut r = StreamReader::default();
    let mut payload = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        let mut buf: &[u8] = piece;
        if splice && r.body_left() > 0 {
            let n = r.body_left().min(buf.len());
            payload.extend_from_slice(&buf[..n]);
            r.skip_body(n);
            buf = &buf[n..];
        }
        loop {
            match r.take(&mut buf) {
                Ok(Some(Piece::Payload(p))) => {
                    assert!(!p.is_empty(), "the reader handed out an empty payload");
                    payload.extend_from_slice(p);
                }
                Ok(Some(end @ (Piece::Eof | Piece::Unframed))) => {
                    let mut rest = buf.to_vec();
                    for later in &pieces[i + 1..] {
                        rest.extend_from_slice(later);
                    }
                    return StreamRead {
                        payload,
                        end: Ok(Some((end == Piece::Unframed, rest))),
                    };
                }
                Ok(None) => break,
                Err(e) => {
                    return StreamRead {
                        payload,
                        end: Err(e),
                    };
                }
            }
        }
    }
    StreamRead {
        payload,
        end: Ok(None),
    }
}
