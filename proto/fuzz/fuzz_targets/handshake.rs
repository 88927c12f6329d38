//! TLS sessions fed what an attacker on the wire could send.
//!
//! Input: `mode | rest`, mode taken modulo 3:
//! * 0, a router session fed arbitrary client bytes: `rest` is `n | cuts | stream`
//!   (see `split_input`); each piece is delivered, then `handshake` (or, once it is
//!   done, `decrypt`) runs, until an error closes the connection;
//! * 1, the same for a client session fed arbitrary router bytes, after it sent its
//!   ClientHello;
//! * 2, a real client and router handshaking in memory while the fuzzer tampers with
//!   the bytes in flight: `rest` is `k | k × 4-byte tampers (see Tamper::parse) |
//!   tail`, k modulo 8. Afterwards the router decrypts `tail` as if the client sent it.
//!
//! Checks: no panic and no hang in any mode. In mode 2: without tampering both sides
//! complete and carry data both ways; with tampering, a side that completes has
//! verified the right peer key and then decrypts only what was really sent.
#![no_main]

use conduit_proto_fuzz::{Keys, Tamper, deliver, drive, pair_handshake, split_input};
use libfuzzer_sys::fuzz_target;

fn send(from: &mut conduit_proto::TlsSession, plain: &[u8]) -> Option<Vec<u8>> {
    let mut out = vec![0; from.encrypted_len(plain.len())];
    let n = from.encrypt(plain, &mut out).ok()?;
    out.truncate(n);
    Some(out)
}

fn receive(to: &mut conduit_proto::TlsSession, wire: &[u8]) -> Option<Vec<u8>> {
    deliver(to, wire);
    let mut plain = Vec::new();
    to.decrypt(|p| plain.extend_from_slice(p)).ok()?;
    Some(plain)
}

fn tampered_pair(keys: &Keys, data: &[u8]) {
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let k = (k as usize % 8).min(rest.len() / 4);
    let (ops, tail) = rest.split_at(k * 4);
    let tampers: Vec<Tamper> = ops
        .chunks_exact(4)
        .map(|c| Tamper::parse(&[c[0], c[1], c[2], c[3]]))
        .collect();
    let mut p = pair_handshake(keys, &tampers);
    if !p.tampered {
        assert!(
            p.client_done && p.server_done,
            "an untampered handshake failed (client done: {}, router done: {})",
            p.client_done,
            p.server_done
        );
    }
    if p.client_done {
        assert_eq!(
            p.client.peer_key(),
            Some(keys.router.public()),
            "client accepted another router key"
        );
    }
    if p.server_done {
        assert_eq!(
            p.server.peer_key(),
            Some(keys.client.public()),
            "router admitted another client key"
        );
    }
    if p.client_done && p.server_done {
        // Whatever was tampered with, data that does go through is what was sent.
        if let Some(wire) = send(&mut p.client, b"ping")
            && let Some(got) = receive(&mut p.server, &wire)
        {
            assert!(got.is_empty() || got == b"ping", "router decrypted {got:?}");
        }
        if let Some(wire) = send(&mut p.server, b"pong")
            && let Some(got) = receive(&mut p.client, &wire)
        {
            assert!(got.is_empty() || got == b"pong", "client decrypted {got:?}");
        }
        if !p.tampered {
            // Untampered: the exchange above must have worked, checked again strictly.
            let wire = send(&mut p.client, b"again").expect("client encrypts");
            assert_eq!(
                receive(&mut p.server, &wire).as_deref(),
                Some(&b"again"[..])
            );
        }
    }
    if p.server_done {
        // Arbitrary bytes where the client's records should be.
        let _ = receive(&mut p.server, tail);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let keys = Keys::fixed();
    match mode % 3 {
        0 => {
            let (_, pieces) = split_input(rest);
            drive(&mut keys.server_session(), &pieces);
        }
        1 => {
            let mut client = keys.client_session();
            let mut hello = Vec::new();
            client
                .handshake(&mut hello)
                .expect("the first client flight");
            assert!(!hello.is_empty(), "no ClientHello");
            let (_, pieces) = split_input(rest);
            drive(&mut client, &pieces);
        }
        _ => tampered_pair(&keys, rest),
    }
});
