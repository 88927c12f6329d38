//! A client and a router session driven against each other in memory.

use std::collections::HashMap;
use std::sync::Arc;

use super::*;
use crate::identity::KeyPair;
use crate::tls::{AuthorizedClients, Suites, client_config, server_config};

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

fn sessions(p: &Peers, pinned: &[PublicKey], admitted: &[PublicKey]) -> (TlsSession, TlsSession) {
    let clients = Arc::new(AuthorizedClients::new(
        admitted
            .iter()
            .map(|k| (*k, String::new()))
            .collect::<HashMap<_, _>>(),
    ));
    let client = TlsSession::client(
        client_config(&p.client_key, pinned, &Suites::all()).unwrap(),
        None,
    )
    .unwrap();
    let server =
        TlsSession::server(server_config(&[&p.router_key], clients, &Suites::all()).unwrap())
            .unwrap();
    (client, server)
}

/// A router that holds `held` (presenting the first unless asked for another) and a
/// client that pins `pinned` and asks for `hint`; the key the client saw.
fn hinted(
    p: &Peers,
    held: &[&KeyPair],
    pinned: &[PublicKey],
    hint: Option<&PublicKey>,
) -> Result<Option<PublicKey>, Failed> {
    let clients = Arc::new(AuthorizedClients::new(HashMap::from([(
        p.client_key.public(),
        String::new(),
    )])));
    let mut c = TlsSession::client(
        client_config(&p.client_key, pinned, &Suites::all()).unwrap(),
        hint,
    )
    .unwrap();
    let mut s = TlsSession::server(server_config(held, clients, &Suites::all()).unwrap()).unwrap();
    handshake(&mut c, &mut s, &mut Wire::default())?;
    Ok(c.peer_key())
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
    let (mut c, mut s) = sessions(&p, &[p.router_key.public()], &[p.client_key.public()]);
    handshake(&mut c, &mut s, &mut Wire::default()).unwrap();
    assert_eq!(c.peer_key(), Some(p.router_key.public()));
    assert_eq!(s.peer_key(), Some(p.client_key.public()));
}

#[test]
fn data_flows_both_ways_whatever_the_split() {
    let p = peers();
    let (mut c, mut s) = sessions(&p, &[p.router_key.public()], &[p.client_key.public()]);
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
    let (mut c, mut s) = sessions(&p, &[p.router_key.public()], &[p.client_key.public()]);
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
    let (mut c, mut s) = sessions(&p, &[impostor.public()], &[p.client_key.public()]);
    let err = match handshake(&mut c, &mut s, &mut Wire::default()) {
        Err(Failed::Client(e)) => e,
        other => panic!("expected the client to refuse, got {other:?}"),
    };
    let m = err.router_key_mismatch().expect("a key mismatch");
    assert_eq!(
        (m.expected.clone(), m.got),
        (vec![impostor.public()], p.router_key.public())
    );
    let text = err.to_string();
    assert!(text.starts_with(&format!(
        "router key mismatch: expected {}, got {}",
        impostor.public(),
        p.router_key.public()
    )));
}

#[test]
fn a_router_may_present_any_of_its_pinned_keys_and_no_other() {
    let p = peers();
    let (old, third) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
    // While the router's key is being replaced, the client pins the old and the new.
    let pinned = [old.public(), p.router_key.public()];
    let (mut c, mut s) = sessions(&p, &pinned, &[p.client_key.public()]);
    handshake(&mut c, &mut s, &mut Wire::default()).expect("the new key is pinned");

    let pinned = [old.public(), third.public()];
    let (mut c, mut s) = sessions(&p, &pinned, &[p.client_key.public()]);
    let err = match handshake(&mut c, &mut s, &mut Wire::default()) {
        Err(Failed::Client(e)) => e,
        other => panic!("expected the client to refuse, got {other:?}"),
    };
    assert!(err.to_string().starts_with(&format!(
        "router key mismatch: expected {} or {}, got {}",
        old.public(),
        third.public(),
        p.router_key.public()
    )));
}

#[test]
fn a_router_presents_a_key_it_is_retiring_only_to_a_client_that_asks_for_it() {
    let p = peers();
    let old = KeyPair::generate().unwrap();
    let (new, old_pub) = (p.router_key.public(), old.public());
    let held = [&p.router_key, &old];
    // A tunnel that was away during the rotation pins the old key and asks for it.
    assert_eq!(
        hinted(&p, &held, &[old_pub], Some(&old_pub)).unwrap(),
        Some(old_pub)
    );
    // Asking for nothing, or for a key the router does not hold, gets the key in use.
    assert_eq!(hinted(&p, &held, &[new], None).unwrap(), Some(new));
    let stranger = KeyPair::generate().unwrap().public();
    assert_eq!(
        hinted(&p, &held, &[new], Some(&stranger)).unwrap(),
        Some(new)
    );
    // Once the old key is retired, the tunnel that pins it alone is refused.
    match hinted(&p, &[&p.router_key], &[old_pub], Some(&old_pub)) {
        Err(Failed::Client(e)) => {
            let m = e.router_key_mismatch().expect("a key mismatch");
            assert_eq!((m.expected.clone(), m.got), (vec![old_pub], new));
        }
        other => panic!("expected the client to refuse, got {other:?}"),
    }
}

#[test]
fn hints_are_distinct_names_that_never_resolve() {
    let (a, b) = (
        KeyPair::generate().unwrap().public(),
        KeyPair::generate().unwrap().public(),
    );
    let (ha, hb) = (crate::tls::key_hint(&a), crate::tls::key_hint(&b));
    assert_ne!(ha, hb);
    assert_eq!(ha, crate::tls::key_hint(&a));
    assert!(ha.ends_with(".conduit.invalid") && ha.len() == "k.conduit.invalid".len() + 16);
    assert!(matches!(
        crate::tls::router_server_name(Some(&a)),
        rustls::pki_types::ServerName::DnsName(_)
    ));
}

#[test]
fn an_unknown_client_key_is_refused_and_the_client_learns_it() {
    let p = peers();
    let (mut c, mut s) = sessions(&p, &[p.router_key.public()], &[]);
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
    let (mut c, mut s) = sessions(&p, &[p.router_key.public()], &[p.client_key.public()]);
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
    let (mut c, mut s) = sessions(&p, &[p.router_key.public()], &[p.client_key.public()]);
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

/// What a router's session says to bytes that are not a TLS client's.
fn server_answer_to(junk: &[u8]) -> (TlsError, Vec<u8>) {
    let p = peers();
    let (_, mut s) = sessions(&p, &[p.router_key.public()], &[p.client_key.public()]);
    let mut wire = junk.to_vec();
    deliver(&mut s, &mut wire);
    let mut out = Vec::new();
    let err = s.handshake(&mut out).unwrap_err();
    (err, out)
}

/// One plaintext alert record (TLS 1.3 sends alerts before the handshake unencrypted).
fn assert_one_fatal_alert(out: &[u8], description: u8) {
    assert_eq!(out, [21, 3, 3, 0, 2, 2, description], "{out:?}");
}

#[test]
fn junk_and_plain_http_get_one_alert_and_an_error() {
    // Before the fix the session processed the junk twice and queued a second fatal
    // alert, which panics in debug builds of rustls.
    for junk in [&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], &[0xde; 300][..]] {
        let (err, out) = server_answer_to(junk);
        assert!(
            matches!(err, TlsError::Rustls(rustls::Error::InvalidMessage(_))),
            "{err:?}"
        );
        assert_one_fatal_alert(&out, 50); // decode_error
    }
}

#[test]
fn a_tls12_only_client_is_told_the_version_is_wrong() {
    // A ClientHello for TLS 1.2 without the supported_versions extension (what
    // `openssl s_client -tls1_2` sends, trimmed to what rustls needs to decide).
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]); // random
    body.push(0); // no session id
    body.extend_from_slice(&[0, 2, 0xc0, 0x2f]); // one TLS 1.2 suite
    body.extend_from_slice(&[1, 0]); // null compression
    // Only signature_algorithms (ed25519): no supported_versions.
    body.extend_from_slice(&[0, 8, 0, 0x0d, 0, 4, 0, 2, 8, 7]);
    let mut hs = vec![1, 0, 0, body.len() as u8];
    hs.extend_from_slice(&body);
    let mut record = vec![22, 3, 1, 0, hs.len() as u8];
    record.extend_from_slice(&hs);
    let (err, out) = server_answer_to(&record);
    let text = err.to_string();
    assert!(
        text.starts_with(
            "TLS error: the peer offers only TLS 1.2 or older, and Conduit speaks TLS 1.3 only"
        ),
        "{text}"
    );
    assert_one_fatal_alert(&out, 70); // protocol_version
}

#[test]
fn the_receive_buffer_can_be_lent_out_when_empty() {
    let p = peers();
    let (mut c, mut s) = sessions(&p, &[p.router_key.public()], &[p.client_key.public()]);
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
    let (_c, mut s) = sessions(&p, &[p.router_key.public()], &[p.client_key.public()]);
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
    let (mut c, mut s) = sessions(&p, &[p.router_key.public()], &[p.client_key.public()]);
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

/// A direction's sequence number and key bytes, to compare the two ends.
fn seq_and_key(d: &(u64, rustls::ConnectionTrafficSecrets)) -> (u64, Vec<u8>) {
    use rustls::ConnectionTrafficSecrets as S;
    let key = match &d.1 {
        S::Aes128Gcm { key, .. } | S::Aes256Gcm { key, .. } | S::Chacha20Poly1305 { key, .. } => {
            key.as_ref().to_vec()
        }
        _ => panic!("a suite Conduit does not negotiate"),
    };
    (d.0, key)
}

#[test]
fn keys_move_to_the_kernel_with_matching_sequence_numbers() {
    let p = peers();
    let (mut c, mut s) = sessions(&p, &[p.router_key.public()], &[p.client_key.public()]);
    let mut w = Wire::default();
    handshake(&mut c, &mut s, &mut w).unwrap();
    // Three records one way, one the other (plus the router's session tickets).
    send(&mut c, &vec![7; 40_000], &mut w.to_server);
    receive(&mut s, &mut w.to_server, 4096).unwrap();
    send(&mut s, b"opened", &mut w.to_client);
    receive(&mut c, &mut w.to_client, 4096).unwrap();

    let (cs, ss) = (c.into_kernel().unwrap(), s.into_kernel().unwrap());
    assert_eq!(seq_and_key(&cs.tx), seq_and_key(&ss.rx));
    assert_eq!(seq_and_key(&ss.tx), seq_and_key(&cs.rx));
    assert_eq!(cs.tx.0, 3, "the client sealed three records");
    assert_ne!(seq_and_key(&cs.tx).1, seq_and_key(&cs.rx).1);
}

#[test]
fn keys_stay_while_received_bytes_wait_to_be_decrypted() {
    let p = peers();
    let (mut c, mut s) = sessions(&p, &[p.router_key.public()], &[p.client_key.public()]);
    let mut w = Wire::default();
    handshake(&mut c, &mut s, &mut w).unwrap();
    send(&mut c, b"the first bytes", &mut w.to_server);
    deliver(&mut s, &mut w.to_server);
    assert!(matches!(
        s.into_kernel(),
        Err(TlsError::NotAtRecordBoundary(
            "received bytes are not yet decrypted"
        ))
    ));
}

#[test]
fn a_peer_that_does_not_speak_conduit_is_named_as_such() {
    let p = peers();
    let clients = Arc::new(AuthorizedClients::new(HashMap::from([(
        p.client_key.public(),
        String::new(),
    )])));
    // A TLS server with the same key that speaks another protocol (HTTP/2, say).
    let mut other = (*server_config(&[&p.router_key], clients, &Suites::all()).unwrap()).clone();
    other.alpn_protocols = vec![b"h2".to_vec()];
    let mut c = TlsSession::client(
        client_config(&p.client_key, &[p.router_key.public()], &Suites::all()).unwrap(),
        None,
    )
    .unwrap();
    let mut s = TlsSession::server(Arc::new(other)).unwrap();
    let err = match handshake(&mut c, &mut s, &mut Wire::default()) {
        Err(Failed::Server(e)) | Err(Failed::Client(e)) => e.to_string(),
        Ok(()) => panic!("a handshake without a protocol in common succeeded"),
    };
    assert!(
        err.starts_with(
            "TLS error: the peer does not speak Conduit's protocol (ALPN conduit/1); is it a \
             Conduit router (or, on a router, a Conduit client)?"
        ),
        "{err}"
    );
}

/// A client offering `client` and a router accepting `router`, each admitting the
/// other.
fn with_suites(p: &Peers, client: &Suites, router: &Suites) -> (TlsSession, TlsSession) {
    let clients = Arc::new(AuthorizedClients::new(HashMap::from([(
        p.client_key.public(),
        String::new(),
    )])));
    let pinned = [p.router_key.public()];
    let c = client_config(&p.client_key, &pinned, client).unwrap();
    let s = server_config(&[&p.router_key], clients, router).unwrap();
    (
        TlsSession::client(c, None).unwrap(),
        TlsSession::server(s).unwrap(),
    )
}

#[test]
fn the_routers_order_of_cipher_suites_wins() {
    use crate::tls::Suite::{Aes256Gcm, Chacha20Poly1305};
    let p = peers();
    let (mut c, mut s) = with_suites(
        &p,
        &Suites::new([Chacha20Poly1305, Aes256Gcm]),
        &Suites::new([Aes256Gcm, Chacha20Poly1305]),
    );
    assert_eq!(c.cipher_suite(), None);
    handshake(&mut c, &mut s, &mut Wire::default()).unwrap();
    assert_eq!(c.cipher_suite(), Some(Aes256Gcm));
    assert_eq!(s.cipher_suite(), Some(Aes256Gcm));
    // By default both ends offer every suite, AES-128-GCM first.
    let (mut c, mut s) = with_suites(&p, &Suites::all(), &Suites::all());
    handshake(&mut c, &mut s, &mut Wire::default()).unwrap();
    assert_eq!(c.cipher_suite(), Some(crate::tls::Suite::Aes128Gcm));
}

#[test]
fn no_cipher_suite_in_common_is_told_apart_on_both_sides() {
    use crate::tls::Suite::{Aes256Gcm, Chacha20Poly1305};
    let p = peers();
    let (mut c, mut s) = with_suites(
        &p,
        &Suites::new([Chacha20Poly1305]),
        &Suites::new([Aes256Gcm]),
    );
    let mut w = Wire::default();
    match handshake(&mut c, &mut s, &mut w) {
        Err(Failed::Server(e)) => {
            assert!(e.no_cipher_suite_in_common(), "{e}");
            assert!(!e.peer_refused_handshake(), "{e}");
        }
        other => panic!("the router must refuse the handshake: {other:?}"),
    }
    deliver(&mut c, &mut w.to_client);
    let e = c.handshake(&mut Vec::new()).unwrap_err();
    assert!(e.peer_refused_handshake(), "{e}");
    assert!(!e.no_cipher_suite_in_common(), "{e}");
}

/// A peer of TLS 1.2 or older is told so, whichever check refused its hello first: a
/// TLS 1.0 or 1.1 hello fails on its missing signature_algorithms before the version.
#[test]
fn old_tls_versions_are_named_as_such() {
    use rustls::PeerIncompatible as P;
    for p in [
        P::Tls12NotOffered,
        P::SupportedVersionsExtensionRequired,
        P::SignatureAlgorithmsExtensionRequired,
    ] {
        let said = describe(&rustls::Error::PeerIncompatible(p.clone()));
        assert!(
            said.starts_with(
                "TLS error: the peer offers only TLS 1.2 or older, and Conduit speaks TLS 1.3 \
                 only ("
            ),
            "{p:?}: {said}"
        );
    }
}
