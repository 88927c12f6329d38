//! One direction of a stream on the plain transport, sans IO.
//!
//! After `Open` (client) and `Opened` (router), each direction of a plain-transport
//! stream is a run of `Data` frames ended by `Eof` (TCP half-close), after which the
//! channel carries the next stream's frames; or, for a bulk transfer, `Unframed`,
//! after which the rest of the direction is raw bytes up to the channel's FIN. Any
//! other frame in the middle of a stream is a protocol error. The data plane moves
//! large bodies with `splice(2)`, past this reader: see [`StreamReader::skip_body`].

use crate::ProtoError;
use crate::frame::{FrameType, HEADER_LEN, Header};

/// Reads one direction of a stream: where it stands, inside a header or inside a
/// `Data` body. It never allocates, whatever the bytes: a `Data` body's size is
/// checked against the limit from its header alone, and the body is handed out as
/// slices of what was fed, or left to the caller to move (see [`skip_body`]).
///
/// [`skip_body`]: StreamReader::skip_body
#[derive(Debug, Default)]
pub struct StreamReader {
    header: [u8; HEADER_LEN],
    /// Bytes of `header` received so far.
    have: usize,
    /// Bytes of the current `Data` body not yet received.
    body_left: usize,
}

/// What a [`StreamReader`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Payload of the stream.
    Payload(&'a [u8]),
    /// The end of this direction of the stream.
    Eof,
    /// The rest of this direction is raw, up to FIN.
    Unframed,
}

impl StreamReader {
    /// The next piece of the stream in `buf`, consuming what it read; `None` once
    /// `buf` is used up without completing one. After `Eof` or `Unframed`, `buf`
    /// holds what followed, unread: the next stream's frames, or raw payload.
    pub fn take<'a>(&mut self, buf: &mut &'a [u8]) -> Result<Option<Piece<'a>>, ProtoError> {
        while !buf.is_empty() {
            if self.body_left > 0 {
                let (payload, rest) = buf.split_at(self.body_left.min(buf.len()));
                *buf = rest;
                self.body_left -= payload.len();
                return Ok(Some(Piece::Payload(payload)));
            }
            let k = (HEADER_LEN - self.have).min(buf.len());
            self.header[self.have..self.have + k].copy_from_slice(&buf[..k]);
            self.have += k;
            *buf = &buf[k..];
            if let Some(piece) = self.header_done()? {
                return Ok(Some(piece));
            }
        }
        Ok(None)
    }

    /// Bytes of the current `Data` body not yet taken: the caller may move up to
    /// this many itself (splice them) and say so with [`skip_body`](Self::skip_body).
    pub fn body_left(&self) -> usize {
        self.body_left
    }

    /// Counts `n` bytes of the current `Data` body as moved by the caller; at most
    /// [`body_left`](Self::body_left).
    pub fn skip_body(&mut self, n: usize) {
        debug_assert!(n <= self.body_left, "skipped past the body");
        self.body_left = self.body_left.saturating_sub(n);
    }

    /// Once the header is whole: `Eof`, or a `Data` body to expect.
    fn header_done(&mut self) -> Result<Option<Piece<'static>>, ProtoError> {
        if self.have < HEADER_LEN {
            return Ok(None);
        }
        self.have = 0;
        let header = Header::parse(&self.header)?;
        match header.typ {
            FrameType::Data => {
                self.body_left = header.body_len as usize;
                Ok(None)
            }
            FrameType::Eof | FrameType::Unframed if header.body_len > 0 => {
                Err(ProtoError::Malformed {
                    what: if header.typ == FrameType::Eof {
                        "Eof"
                    } else {
                        "Unframed"
                    },
                    reason: format!("it carries {} bytes; it carries none", header.body_len),
                })
            }
            FrameType::Eof => Ok(Some(Piece::Eof)),
            FrameType::Unframed => Ok(Some(Piece::Unframed)),
            _ => Err(ProtoError::Unexpected {
                got: "a control frame",
                expected: "Data, Eof or Unframed, in the middle of a stream",
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(typ: FrameType, body: &[u8]) -> Vec<u8> {
        let mut h = [0u8; HEADER_LEN];
        Header::write(typ, body.len(), &mut h);
        [&h[..], body].concat()
    }

    /// Everything a reader finds in `stream` fed `step` bytes at a time: the payload,
    /// and how many bytes were left unread after `Eof` or `Unframed` (`None`: neither).
    fn read_in_steps(stream: &[u8], step: usize) -> Result<(Vec<u8>, Option<usize>), ProtoError> {
        let mut r = StreamReader::default();
        let mut payload = Vec::new();
        for (i, chunk) in stream.chunks(step).enumerate() {
            let mut buf = chunk;
            while let Some(piece) = r.take(&mut buf)? {
                match piece {
                    Piece::Payload(p) => payload.extend_from_slice(p),
                    Piece::Eof | Piece::Unframed => {
                        let after = buf.len() + stream.len().saturating_sub((i + 1) * step);
                        return Ok((payload, Some(after)));
                    }
                }
            }
        }
        Ok((payload, None))
    }

    #[test]
    fn payload_and_eof_come_out_whole_however_the_bytes_are_cut() {
        let stream = [
            frame(FrameType::Data, b"hello, "),
            frame(FrameType::Data, b""),
            frame(FrameType::Data, &[7u8; 3000]),
            frame(FrameType::Eof, b""),
        ]
        .concat();
        let want = [&b"hello, "[..], &[7u8; 3000][..]].concat();
        for step in 1..=stream.len() {
            assert_eq!(
                read_in_steps(&stream, step).unwrap(),
                (want.clone(), Some(0)),
                "step {step}"
            );
        }
    }

    #[test]
    fn the_reader_stops_at_eof_and_leaves_the_next_stream_alone() {
        let next = frame(FrameType::Open, b"next");
        let stream = [
            frame(FrameType::Data, b"abc"),
            frame(FrameType::Eof, b""),
            next.clone(),
        ]
        .concat();
        assert_eq!(
            read_in_steps(&stream, stream.len()).unwrap(),
            (b"abc".to_vec(), Some(next.len()))
        );
    }

    #[test]
    fn after_unframed_the_rest_is_left_raw() {
        let raw = [0x20u8, 0, 0, 0, 9, 1, 2, 3];
        let stream = [
            frame(FrameType::Data, b"framed"),
            frame(FrameType::Unframed, b""),
            raw.to_vec(),
        ]
        .concat();
        let mut r = StreamReader::default();
        let mut buf = &stream[..];
        assert_eq!(
            r.take(&mut buf).unwrap(),
            Some(Piece::Payload(&b"framed"[..]))
        );
        assert_eq!(r.take(&mut buf).unwrap(), Some(Piece::Unframed));
        // Raw bytes that look like a header are payload all the same: not parsed.
        assert_eq!(buf, &raw[..]);
        let with_body = frame(FrameType::Unframed, b"x");
        assert!(matches!(
            read_in_steps(&with_body, 2),
            Err(ProtoError::Malformed {
                what: "Unframed",
                ..
            })
        ));
    }

    #[test]
    fn a_body_moved_by_the_caller_is_skipped_and_the_frames_after_it_read() {
        let stream = [
            frame(FrameType::Data, &[1u8; 100]),
            frame(FrameType::Data, b"tail"),
            frame(FrameType::Eof, b""),
        ]
        .concat();
        let mut r = StreamReader::default();
        let mut buf = &stream[..HEADER_LEN];
        assert_eq!(r.take(&mut buf).unwrap(), None);
        assert_eq!(r.body_left(), 100);
        // The caller splices 60 bytes, then 40, without showing them to the reader.
        r.skip_body(60);
        assert_eq!(r.body_left(), 40);
        r.skip_body(40);
        assert_eq!(r.body_left(), 0);
        let mut buf = &stream[HEADER_LEN + 100..];
        assert_eq!(
            r.take(&mut buf).unwrap(),
            Some(Piece::Payload(&b"tail"[..]))
        );
        assert_eq!(r.take(&mut buf).unwrap(), Some(Piece::Eof));
        assert!(buf.is_empty());
    }

    #[test]
    fn a_stream_cut_short_has_no_eof() {
        let stream = [frame(FrameType::Data, b"abcdef")].concat();
        assert_eq!(
            read_in_steps(&stream[..stream.len() - 2], 4).unwrap(),
            (b"abcd".to_vec(), None)
        );
    }

    #[test]
    fn control_frames_and_bad_headers_mid_stream_are_errors() {
        let ping = [frame(FrameType::Data, b"x"), frame(FrameType::Ping, b"")].concat();
        assert!(matches!(
            read_in_steps(&ping, 1),
            Err(ProtoError::Unexpected {
                got: "a control frame",
                ..
            })
        ));
        let eof_with_body = frame(FrameType::Eof, b"!");
        assert!(matches!(
            read_in_steps(&eof_with_body, 3),
            Err(ProtoError::Malformed { what: "Eof", .. })
        ));
        // Over the Data limit: refused from the header alone, nothing allocated.
        let mut huge = ((MAX_DATA + 2) as u32).to_be_bytes().to_vec();
        huge.push(FrameType::Data as u8);
        assert!(matches!(
            read_in_steps(&huge, HEADER_LEN),
            Err(ProtoError::FrameTooLarge { .. })
        ));
        assert!(matches!(
            read_in_steps(&[0, 0, 0, 0, 0x20], HEADER_LEN),
            Err(ProtoError::EmptyFrame)
        ));
    }

    const MAX_DATA: usize = crate::frame::MAX_DATA_BODY as usize;
}
