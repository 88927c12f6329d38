//! `FrameDecoder::feed` on arbitrary bytes, cut at arbitrary points.
//!
//! Input: `n | n × u16 cut positions | stream` (see `split_input`).
//!
//! Checks:
//! * no panic, whatever the bytes;
//! * split invariance: the stream fed whole and fed in pieces yields the same events
//!   (payload merged), the same error, and the same boundary state;
//! * no empty payload slices are handed out;
//! * a stream that decoded cleanly, framed again from its events, decodes to the same
//!   events.
#![no_main]

use conduit_proto_fuzz::{decode_pieces, encode_events, split_input};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (stream, pieces) = split_input(data);
    let whole = decode_pieces(&[stream]);
    let split = decode_pieces(&pieces);
    assert_eq!(whole, split, "decoding depends on where the stream was cut");

    let payload: usize = whole
        .events
        .iter()
        .map(|e| match e {
            conduit_proto_fuzz::Owned::Data(b) | conduit_proto_fuzz::Owned::Datagram(b) => b.len(),
            conduit_proto_fuzz::Owned::Msg(_) => 0,
        })
        .sum();
    assert!(payload <= stream.len(), "more payload out than bytes in");

    if whole.end == Ok(true) {
        let again = decode_pieces(&[&encode_events(&whole.events)]);
        assert_eq!(again.end, Ok(true), "re-framed events do not decode");
        assert_eq!(
            again.events, whole.events,
            "re-framed events decode differently"
        );
    }
});
