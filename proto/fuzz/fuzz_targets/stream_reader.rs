//! `StreamReader`, which reads each direction of a plain-transport stream, on
//! arbitrary bytes cut at arbitrary points.
//!
//! Input: `n | n × u16 cut positions | stream` (see `split_input`).
//!
//! Checks:
//! * no panic, whatever the bytes;
//! * split invariance: the stream read whole, read in pieces, and read in pieces with
//!   the start of each piece that falls inside a `Data` body moved past the reader (as
//!   the data plane splices large bodies) give the same payload, the same ending with
//!   the same bytes after it, and the same error;
//! * no empty payload slices; never more payload out than bytes in;
//! * a stream that ended with `Eof`, framed again from its payload, reads back the same.
#![no_main]

use conduit_proto::frame::{FrameType, HEADER_LEN, Header};
use conduit_proto_fuzz::{read_stream, split_input};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (stream, pieces) = split_input(data);
    let whole = read_stream(&[stream], false);
    assert_eq!(
        whole,
        read_stream(&pieces, false),
        "reading depends on the cuts"
    );
    assert_eq!(
        whole,
        read_stream(&pieces, true),
        "splicing bodies past the reader changes what is read"
    );
    assert!(
        whole.payload.len() <= stream.len(),
        "more payload out than bytes in"
    );

    if let Ok(Some((false, _))) = whole.end {
        let mut again = Vec::new();
        for chunk in whole.payload.chunks(64 * 1024) {
            again.extend_from_slice(&Header::data(chunk.len()));
            again.extend_from_slice(chunk);
        }
        let mut eof = [0u8; HEADER_LEN];
        Header::write(FrameType::Eof, 0, &mut eof);
        again.extend_from_slice(&eof);
        let back = read_stream(&[&again], false);
        assert_eq!(
            back.payload, whole.payload,
            "re-framed payload reads differently"
        );
        assert_eq!(back.end, Ok(Some((false, Vec::new()))));
    }
});
