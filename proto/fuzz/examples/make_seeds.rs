//! Writes the seed corpora under `seeds/<target>/`, in each target's input layout.
//!
//! Seeds give libFuzzer well-formed frames, messages and TLS flights to mutate from,
//! instead of making it rediscover the formats; short CI runs reach far deeper with
//! them. Regenerate after a wire format change:
//!
//! ```text
//! cargo run --manifest-path proto/fuzz/Cargo.toml --example make_seeds
//! ```
//!
//! TLS flights carry fresh randomness, so regenerating changes the handshake seeds'
//! bytes even when nothing else changed.

use std::path::{Path, PathBuf};

use conduit_proto::frame::{FrameType, HEADER_LEN, Header};
use conduit_proto::message::{ChannelKind, Hello, Refusal, RefusalCode};
use conduit_proto::version::VersionRange;
use conduit_proto::{Message, Secret};
use conduit_proto_fuzz::{ALL_TYPES, Keys, pair_handshake, with_cuts};

fn messages() -> Vec<Message> {
    vec![
        Message::Hello(Hello {
            versions: VersionRange::ours(),
            channel: ChannelKind::Control,
            tunnel: "web".into(),
            token: None,
            source: Some("10.2.0.5:8080,web.internal:8080".into()),
        }),
        Message::Hello(Hello {
            versions: VersionRange::ours(),
            channel: ChannelKind::Data,
            tunnel: "db".into(),
            token: Some(Secret::new("s3cret".into())),
            source: None,
        }),
        Message::Welcome { version: 1 },
        Message::Refused(Refusal::new(RefusalCode::Unauthorized, "no")),
        Message::Open {
            target: "10.2.0.2:8080".into(),
        },
        Message::OpenDatagrams {
            target: "10.2.0.3:53".into(),
        },
        Message::Opened,
        Message::OpenFailed(Refusal::new(RefusalCode::SourceUnreachable, "refused")),
        Message::Eof,
        Message::Reset(Refusal::new(RefusalCode::Aborted, "rst")),
        Message::Ping { nonce: 7 },
        Message::Pong { nonce: u64::MAX },
        Message::Goodbye(Refusal::new(RefusalCode::Other(999), "bye")),
        Message::RotateKey {
            next: Keys::fixed().client.public(),
        },
        Message::KeyRotated {
            expires: 1_800_000_000,
        },
        Message::OpenKernel {
            target: "10.2.0.4:443".into(),
        },
        Message::OpenedKernel,
        Message::Unframed,
        Message::SourceRefused(Refusal::new(
            RefusalCode::SourceUnreachable,
            "source 10.0.0.5:53 refused a datagram",
        )),
    ]
}

fn frame_of(typ: FrameType) -> Vec<u8> {
    let mut v = [0u8; HEADER_LEN];
    Header::write(typ, 0, &mut v);
    v.to_vec()
}

fn data_frame(payload: &[u8]) -> Vec<u8> {
    let mut v = Header::data(payload.len()).to_vec();
    v.extend_from_slice(payload);
    v
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("create the seed directory");
    std::fs::write(dir.join(name), bytes).expect("write a seed");
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds");
    for b in 0..=u8::MAX {
        if let Ok(t) = FrameType::from_byte(b) {
            assert!(ALL_TYPES.contains(&t), "ALL_TYPES lacks {t:?}");
        }
    }

    // frame_decoder: single frames, and a mixed stream whole and cut.
    let dir = root.join("frame_decoder");
    let mut stream = Vec::new();
    for (i, m) in messages().iter().enumerate() {
        let frame = m.to_frame();
        write(
            &dir,
            &format!("msg-{i:02}-{}", m.name()),
            &with_cuts(&[], &frame),
        );
        stream.extend_from_slice(&frame);
        stream.extend(data_frame(format!("payload {i}").as_bytes()));
    }
    stream.extend(data_frame(b""));
    for d in [&b"query"[..], b"", &[0xa5; 1400]] {
        stream.extend_from_slice(&Header::datagram(d.len()));
        stream.extend_from_slice(d);
    }
    write(&dir, "stream-whole", &with_cuts(&[], &stream));
    write(
        &dir,
        "stream-cut",
        &with_cuts(&[1, 4, 5, 9, 40, 41, 200], &stream),
    );

    // stream_reader: one direction ending with Eof (the next stream's Open after it),
    // one going Unframed (raw bytes after it), whole and cut.
    let dir = root.join("stream_reader");
    let next = Message::Open {
        target: "10.2.0.2:8080".into(),
    }
    .to_frame();
    let eof_stream = [
        data_frame(b"GET / HTTP/1.1\r\n\r\n"),
        data_frame(b""),
        data_frame(&[0x5a; 3000]),
        frame_of(FrameType::Eof),
        next,
    ]
    .concat();
    write(&dir, "eof-whole", &with_cuts(&[], &eof_stream));
    write(
        &dir,
        "eof-cut",
        &with_cuts(&[2, 5, 7, 30, 1000], &eof_stream),
    );
    let unframed_stream = [
        data_frame(b"hello"),
        frame_of(FrameType::Unframed),
        data_frame(b"raw bytes that look like frames"),
    ]
    .concat();
    write(&dir, "unframed-whole", &with_cuts(&[], &unframed_stream));
    write(
        &dir,
        "unframed-cut",
        &with_cuts(&[3, 9, 12], &unframed_stream),
    );

    // message_decode: selector byte, then the body.
    let dir = root.join("message_decode");
    for (i, m) in messages().iter().enumerate() {
        let frame = m.to_frame();
        let h = Header::parse(frame[..HEADER_LEN].try_into().expect("a header")).expect("valid");
        let sel = ALL_TYPES
            .iter()
            .position(|t| *t == h.typ)
            .expect("a known type") as u8;
        let mut seed = vec![sel];
        seed.extend_from_slice(&frame[HEADER_LEN..]);
        write(&dir, &format!("{i:02}-{}", m.name()), &seed);
    }

    // handshake: real flights for modes 0 and 1, and mode 2 with and without tampers.
    let dir = root.join("handshake");
    let p = pair_handshake(&Keys::fixed(), &[]);
    assert!(p.client_done && p.server_done, "the seed handshake failed");
    let mut seed = vec![0];
    seed.extend(with_cuts(&[], &p.transcript.to_server));
    write(&dir, "server-fed-client-flights", &seed);
    let mut seed = vec![1];
    seed.extend(with_cuts(&[], &p.transcript.to_client));
    write(&dir, "client-fed-router-flights", &seed);
    write(&dir, "pair-untampered", &[2, 0]);
    // XOR the ClientHello's first byte; insert a byte into the router's first flight.
    write(&dir, "pair-tampered", &[2, 2, 1, 0, 0, 0x40, 2, 0, 7, 0x17]);
}
