//! `Message::decode` for every frame type, and the encode/decode round trip.
//!
//! Input: `type selector (1 byte, index into ALL_TYPES modulo its length) | body`. The body is
//! cut to `MAX_CONTROL_BODY`, the most a `FrameDecoder` ever hands to `decode`.
//!
//! Checks:
//! * no panic, whatever the body;
//! * whatever decodes re-encodes into a frame whose header parses, names the same type
//!   and counts the body exactly, and whose body decodes to the same message;
//! * encoding is deterministic: the decoded copy encodes to the same bytes.
//!
//! One documented loss: `Message::encode` cuts a refusal's text to 4096 bytes (at a
//! character boundary), so a longer text a peer sent comes back cut. The expected
//! value applies the same cut.
#![no_main]

use conduit_proto::frame::{HEADER_LEN, Header, MAX_CONTROL_BODY};
use conduit_proto::{Message, Refusal};
use conduit_proto_fuzz::ALL_TYPES;
use libfuzzer_sys::fuzz_target;

/// The longest refusal text `Message::encode` sends.
const REFUSAL_TEXT_MAX: usize = 4096;

fn cut(r: &Refusal) -> Refusal {
    let mut end = r.message.len().min(REFUSAL_TEXT_MAX);
    while !r.message.is_char_boundary(end) {
        end -= 1;
    }
    Refusal::new(r.code, &r.message[..end])
}

/// What decoding the encoding of `m` must give back.
fn expected(m: &Message) -> Message {
    match m {
        Message::Refused(r) => Message::Refused(cut(r)),
        Message::OpenFailed(r) => Message::OpenFailed(cut(r)),
        Message::Reset(r) => Message::Reset(cut(r)),
        Message::Goodbye(r) => Message::Goodbye(cut(r)),
        other => other.clone(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let typ = ALL_TYPES[sel as usize % ALL_TYPES.len()];
    let body = &body[..body.len().min(MAX_CONTROL_BODY as usize)];
    let Ok(msg) = Message::decode(typ, body) else {
        return;
    };

    let frame = msg.to_frame();
    let header: [u8; HEADER_LEN] = frame[..HEADER_LEN].try_into().expect("a whole header");
    let h = Header::parse(&header).expect("an encoded message has a valid header");
    assert_eq!(h.typ, typ, "re-encoded as another frame type");
    assert_eq!(
        h.body_len as usize,
        frame.len() - HEADER_LEN,
        "header miscounts the body"
    );

    let again = Message::decode(h.typ, &frame[HEADER_LEN..]).expect("a re-encoded message decodes");
    assert_eq!(again, expected(&msg), "round trip changed the message");
    assert_eq!(again.to_frame(), frame, "encoding is not deterministic");
});
