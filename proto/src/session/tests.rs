//! A client and a router session driven against each other in memory.

use std::collections::HashMap;
use std::sync::Arc;

use super::*;
use crate::identity::KeyPair;
use crate::tls::{AuthorizedClients, client_config, server_config};

struct Peers {
    client_key: KeyPair,
    router_key: KeyPair,
}

fn peers() -> Peers {
    Peers {
        client_key: KeyPair::generate().unwrap(),
        router_key: KeyPair::generate().unwrap(),
    }
}

fn sessions(p: &Peers, pinned: PublicKey, admitted: &[PublicKey]) -> (TlsSession, TlsSession) {
    let clients = Arc::new(AuthorizedClients::new(
        admitted
            .iter()
            .map(|k| (*k, String::new()))
            .collect::<HashMap<_, _>>(),
    ));
    let client = TlsSession::client(client_config(&p.client_key, pinned).unwrap()).unwrap();
    let server = TlsSession::server(server_config(&p.router_key, clients).unwrap()).unwrap();
    (client, server)
}

/// The bytes in flight each way.
#[derive(Default)]
struct Wire {
    to_server: Vec<u8>,
    to_client: Vec<u8>,
}

#[derive(Debug)]
enum Failed {
    Client(TlsError),
    Server(TlsError),
}

fn handshake(c: &mut TlsSession, s: &mut TlsSession, w: &mut Wire) -> Result<(), Failed> {
    for _ in 0..10 {
        deliver(c, &mut w.to_client);
        let mut out = Vec::new();
        let res = c.handshake(&mut out);
        w.to_server.extend_from_slice(&out);
        let cs = res.map_err(Failed::Client)?;

        deliver(s, &mut w.to_server);
        let mut out = Vec::new();
        let res = s.handshake(&mut out);
        w.to_client.extend_from_slice(&out);
        let ss = res.map_err(Failed::Server)?;

        if cs == HandshakeStatus::Done && ss == HandshakeStatus::Done {
            return Ok(());
        }
    }
    panic!("handshake did not finish in 10 rounds");
}

/// Moves everything in flight into the session's receive buffer.
fn deliver(to: &mut TlsSession, wire: &mut Vec<u8>) {
    let n = wire.len();
    to.spare(n)[..n].copy_from_slice(wire);
    to.received(n);
    wire.clear();
}

fn send(from: &mut TlsSession, plain: &[u8], wire: &mut Vec<u8>) {
    let mut out = vec![0; from.encrypted_len(plain.len())];
    let n = from.encrypt(plain, &mut out).unwrap();
    wire.extend_from_slice(&out[..n]);
}

/// Delivers `wire` to `to` in pieces of `step` bytes; returns plaintext and close state.
fn receive(
    to: &mut TlsSession,
    wire: &mut Vec<u8>,
    step: usize,
) -> Result<(Vec<u8>, bool), TlsError> {
    let mut plain = Vec::new();
    let mut closed = false;
    let all = std::mem::take(wire);
    for piece in all.chunks(step.max(1)) {
        let n = piece.len();
        to.spare(n)[..n].copy_from_slice(piece);
        to.received(n);
        closed = to.decrypt(|p| plain.extend_from_slice(p))?;
    }
    assert_eq!(to.buffered(), 0, "bytes left undecrypted");
    Ok((plain, closed))
}

#[test]
fn handshake_pins_both_keys() {
    let p = peers();
    let (mut c, mut s) = sessions(&p, p.router_key.public(), &[p.client_key.public()]);
    handshake(&mut c, &mut s, &mut Wire::default()).unwrap();
    assert_eq!(c.peer_key(), Some(p.router_key.public()));
    assert_eq!(s.peer_key(), Some(p.client_key.public()));
}

#[test]
fn data_flows_both_ways_whatever_the_split() {
    let p = peers();
    let (mut c, mut s) = sessions(&p, p.router_key.public(), &[p.client_key.public()]);
    let mut w = Wire::default();
    handshake(&mut c, &mut s, &mut w).unwrap();
    // Post-handshake messages (session tickets) must not disturb the data.
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    for step in [1, 13, 4096, 1 << 20] {
        send(&mut c, &payload, &mut w.to_server);
        let (got, closed) = receive(&mut s, &mut w.to_server, step).unwrap();
        assert_eq!((got.len(), closed), (payload.len(), false));
        assert!(got == payload);

        send(&mut s, b"pong", &mut w.to_client);
        let (got, _) = receive(&mut c, &mut w.to_client, step).unwrap();
        assert_eq!(got, b"pong");
    }
}

#[test]
fn half_close_still_carries_the_reply() {
    let p = peers();
    let (mut c, mut s) = sessions(&p, p.router_key.public(), &[p.client_key.public()]);
    let mut w = Wire::default();
    handshake(&mut c, &mut s, &mut w).unwrap();

    send(&mut c, b"request", &mut w.to_server);
    let mut out = vec![0; 128];
    let n = c.close_notify(&mut out).unwrap();
    w.to_server.extend_from_slice(&out[..n]);
    let (got, closed) = receive(&mut s, &mut w.to_server, 3).unwrap();
    assert_eq!((got.as_slice(), closed), (&b"request"[..], true));
    assert!(s.peer_closed());

    send(&mut s, b"the whole reply", &mut w.to_client);
    let (got, closed) = receive(&mut c, &mut w.to_client, 5).unwrap();
    assert_eq!((got.as_slice(), closed), (&b"the whole reply"[..], false));
}

#[test]
fn a_wrong_router_key_is_refused_with_both_keys_named() {
    let p = peers();
    let impostor = KeyPair::generate().unwrap();
    // The client pins a key the router does not hold.
    let (mut c, mut s) = sessions(&p, impostor.public(), &[p.client_key.public()]);
    let err = match handshake(&mut c, &mut s, &mut Wire::default()) {
        Err(Failed::Client(e)) => e,
        other => panic!("expected the client to refuse, got {other:?}"),
    };
    let m = err.router_key_mismatch().expect("a key mismatch");
    assert_eq!(
        (m.expected, m.got),
        (impostor.public(), p.router_key.public())
    );
    let text = err.to_string();
    assert!(text.starts_with(&format!(
        "router key mismatch: expected {}, got {}",
        impostor.public(),
        p.router_key.public()
    )));
}

#[test]
fn an_unknown_client_key_is_refused_and_the_client_learns_it() {
    let p = peers();
    let (mut c, mut s) = sessions(&p, p.router_key.public(), &[]);
    let mut w = Wire::default();
    let err = match handshake(&mut c, &mut s, &mut w) {
        Err(Failed::Server(e)) => e,
        other => panic!("expected the router to refuse, got {other:?}"),
    };
    assert_eq!(
        err.unknown_client_key().map(|u| u.got),
        Some(p.client_key.public())
    );
    // The router's alert reaches the client on its next read.
    let err = receive(&mut c, &mut w.to_client, 1 << 20).unwrap_err();
    assert!(err.peer_rejected_our_key(), "{err:?}");
}

#[test]
fn a_small_output_buffer_is_reported_and_nothing_is_lost() {
    let p = peers();
    let (mut c, mut s) = sessions(&p, p.router_key.public(), &[p.client_key.public()]);
    let mut w = Wire::default();
    handshake(&mut c, &mut s, &mut w).unwrap();
    let mut small = [0u8; 10];
    let required = match c.encrypt(b"hello world", &mut small) {
        Err(TlsError::BufferTooSmall { required }) => required,
        other => panic!("expected BufferTooSmall, got {other:?}"),
    };
    let mut out = vec![0; required];
    let n = c.encrypt(b"hello world", &mut out).unwrap();
    w.to_server.extend_from_slice(&out[..n]);
    assert_eq!(
        receive(&mut s, &mut w.to_server, 7).unwrap().0,
        b"hello world"
    );
}

#[test]
fn corrupted_records_are_errors() {
    let p = peers();
    let (mut c, mut s) = sessions(&p, p.router_key.public(), &[p.client_key.public()]);
    let mut w = Wire::default();
    handshake(&mut c, &mut s, &mut w).unwrap();
    send(&mut c, b"secret", &mut w.to_server);
    let last = w.to_server.len() - 1;
    w.to_server[last] ^= 1;
    assert!(matches!(
        receive(&mut s, &mut w.to_server, 64),
        Err(TlsError::Rustls(rustls::Error::DecryptError))
    ));
}

#[test]
fn the_receive_buffer_can_be_lent_out_when_empty() {
    let p = peers();
    let (mut c, mut s) = sessions(&p, p.router_key.public(), &[p.client_key.public()]);
    let mut w = Wire::default();
    handshake(&mut c, &mut s, &mut w).unwrap();
    send(&mut c, b"one", &mut w.to_server);
    // Half a record buffered: the buffer stays.
    let half = w.to_server.len() / 2;
    let rest = w.to_server.split_off(half);
    let mut got = Vec::new();
    deliver(&mut s, &mut w.to_server);
    s.decrypt(|p| got.extend_from_slice(p)).unwrap();
    assert!(s.take_buffer().is_none());
    let mut rest = rest;
    deliver(&mut s, &mut rest);
    s.decrypt(|p| got.extend_from_slice(p)).unwrap();
    assert_eq!(got, b"one");
    let buf = s.take_buffer().expect("an empty buffer can be lent");
    // Encrypting while the buffer is out must not disturb rustls.
    send(&mut s, b"two", &mut w.to_client);
    assert!(s.give_buffer(buf).is_none());
    send(&mut c, b"three", &mut w.to_server);
    assert_eq!(receive(&mut s, &mut w.to_server, 2).unwrap().0, b"three");
    assert_eq!(receive(&mut c, &mut w.to_client, 2).unwrap().0, b"two");
}

#[test]
fn a_record_of_unknown_type_is_an_error_with_an_alert_not_a_panic() {
    // Found by the `handshake` fuzz target: a 6-byte record of content type 0x56.
    let p = peers();
    let (_c, mut s) = sessions(&p, p.router_key.public(), &[p.client_key.public()]);
    let mut wire = vec![0x56, 0x03, 0x01, 0x00, 0x01, 0x00];
    deliver(&mut s, &mut wire);
    let mut out = Vec::new();
    assert!(s.handshake(&mut out).is_err());
    // The alert that tells the peer why: a TLS alert record (content type 21).
    assert_eq!(out.first(), Some(&21u8), "{out:?}");
}

#[test]
fn a_failed_session_refuses_every_later_call() {
    let p = peers();
    let (mut c, mut s) = sessions(&p, p.router_key.public(), &[p.client_key.public()]);
    let mut w = Wire::default();
    handshake(&mut c, &mut s, &mut w).unwrap();
    send(&mut c, b"secret", &mut w.to_server);
    let last = w.to_server.len() - 1;
    w.to_server[last] ^= 1;
    assert!(receive(&mut s, &mut w.to_server, 1 << 20).is_err());
    // The bad record is still buffered: rustls must not see it again.
    assert!(matches!(s.decrypt(|_| {}), Err(TlsError::Failed)));
    let mut out = vec![0; 256];
    assert!(matches!(s.encrypt(b"x", &mut out), Err(TlsError::Failed)));
    let mut alert = Vec::new();
    s.drain_alerts(&mut alert);
    s.drain_alerts(&mut alert);
}
