//! A streaming frame decoder.
//!
//! Input arrives in arbitrary pieces (TLS records, socket reads); frames may span them.
//! Payload bytes are handed out as slices of the input, never copied or buffered, so a
//! `Data` frame of any allowed size costs no memory here. Control message bodies are
//! buffered, but only after their header passed the size limit. A `Datagram` is handed
//! out whole: as a slice of the input when it arrived in one piece, else buffered (at
//! most [`crate::frame::MAX_DATAGRAM`] bytes) until its last byte is in.

use crate::error::ProtoError;
use crate::frame::{FrameType, HEADER_LEN, Header};
use crate::message::Message;

/// What the decoder found, in stream order.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// Payload bytes of a `Data` frame (a frame may be handed out in several pieces).
    Data(&'a [u8]),
    /// One whole UDP datagram (possibly empty: UDP allows it).
    Datagram(&'a [u8]),
    /// A complete control message.
    Message(Message),
}

#[derive(Debug, Clone, Copy)]
enum State {
    Header,
    Body { typ: FrameType, remaining: usize },
    Data { remaining: usize },
}

/// Decodes a byte stream into [`Event`]s.
#[derive(Debug)]
pub struct FrameDecoder {
    header: [u8; HEADER_LEN],
    header_len: usize,
    state: State,
    body: Vec<u8>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder waiting for the first frame header.
    pub fn new() -> Self {
        Self {
            header: [0; HEADER_LEN],
            header_len: 0,
            state: State::Header,
            body: Vec::new(),
        }
    }

    /// True when no partial frame is buffered: the stream ended on a frame boundary.
    pub fn at_boundary(&self) -> bool {
        matches!(self.state, State::Header) && self.header_len == 0
    }

    /// Feeds `input`, calling `on` for every event in order.
    ///
    /// On error the stream is unusable and the connection must be closed.
    pub fn feed(
        &mut self,
        mut input: &[u8],
        mut on: impl FnMut(Event<'_>),
    ) -> Result<(), ProtoError> {
        while !input.is_empty() {
            match self.state {
                State::Header => {
                    let take = (HEADER_LEN - self.header_len).min(input.len());
                    self.header[self.header_len..self.header_len + take]
                        .copy_from_slice(&input[..take]);
                    self.header_len += take;
                    input = &input[take..];
                    if self.header_len < HEADER_LEN {
                        break;
                    }
                    self.header_len = 0;
                    let h = Header::parse(&self.header)?;
                    let remaining = h.body_len as usize;
                    if h.typ == FrameType::Data {
                        self.state = State::Data { remaining };
                    } else if h.typ == FrameType::Datagram {
                        if input.len() >= remaining {
                            on(Event::Datagram(&input[..remaining]));
                            input = &input[remaining..];
                        } else {
                            self.body.clear();
                            self.body.reserve_exact(remaining);
                            self.state = State::Body {
                                typ: h.typ,
                                remaining,
                            };
                        }
                    } else if remaining == 0 {
                        on(Event::Message(Message::decode(h.typ, &[])?));
                    } else {
                        self.body.clear();
                        self.body.reserve_exact(remaining);
                        self.state = State::Body {
                            typ: h.typ,
                            remaining,
                        };
                    }
                }
                State::Data { remaining } => {
                    let take = remaining.min(input.len());
                    if take > 0 {
                        on(Event::Data(&input[..take]));
                    }
                    input = &input[take..];
                    self.state = if remaining == take {
                        State::Header
                    } else {
                        State::Data {
                            remaining: remaining - take,
                        }
                    };
                }
                State::Body { typ, remaining } => {
                    let take = remaining.min(input.len());
                    self.body.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    if remaining == take {
                        self.state = State::Header;
                        if typ == FrameType::Datagram {
                            on(Event::Datagram(&self.body));
                            self.body = Vec::new();
                            continue;
                        }
                        let msg = Message::decode(typ, &self.body)?;
                        self.body = Vec::new();
                        on(Event::Message(msg));
                    } else {
                        self.state = State::Body {
                            typ,
                            remaining: remaining - take,
                        };
                    }
                }
            }
        }
        // A zero-length Data frame completes as soon as its header does.
        if let State::Data { remaining: 0 } = self.state {
            self.state = State::Header;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::MAX_CONTROL_BODY;

    #[derive(Debug, PartialEq, Eq)]
    enum Owned {
        Data(Vec<u8>),
        Datagram(Vec<u8>),
        Msg(Message),
    }

    /// Feeds `stream` in pieces of `step` bytes, merging adjacent payload pieces.
    fn decode_in_steps(stream: &[u8], step: usize) -> Result<Vec<Owned>, ProtoError> {
        let mut d = FrameDecoder::new();
        let mut out: Vec<Owned> = Vec::new();
        for chunk in stream.chunks(step) {
            d.feed(chunk, |ev| match ev {
                Event::Data(b) => match out.last_mut() {
                    Some(Owned::Data(v)) => v.extend_from_slice(b),
                    _ => out.push(Owned::Data(b.to_vec())),
                },
                Event::Datagram(b) => out.push(Owned::Datagram(b.to_vec())),
                Event::Message(m) => out.push(Owned::Msg(m)),
            })?;
        }
        assert!(d.at_boundary());
        Ok(out)
    }

    fn data_frame(payload: &[u8]) -> Vec<u8> {
        let mut v = Header::data(payload.len()).to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn decodes_the_same_events_whatever_the_split() {
        let mut stream = Message::Open {
            target: "127.0.0.1:80".into(),
        }
        .to_frame();
        stream.extend(data_frame(b"GET / HTTP/1.1\r\n\r\n"));
        stream.extend(data_frame(b""));
        stream.extend(data_frame(&[7u8; 3000]));
        stream.extend(Message::Eof.to_frame());
        let want = vec![
            Owned::Msg(Message::Open {
                target: "127.0.0.1:80".into(),
            }),
            Owned::Data({
                let mut v = b"GET / HTTP/1.1\r\n\r\n".to_vec();
                v.extend_from_slice(&[7u8; 3000]);
                v
            }),
            Owned::Msg(Message::Eof),
        ];
        for step in [1, 2, 3, 5, 7, 64, 1000, stream.len()] {
            assert_eq!(decode_in_steps(&stream, step).unwrap(), want, "step {step}");
        }
    }

    #[test]
    fn oversized_control_frames_fail_before_buffering() {
        let mut d = FrameDecoder::new();
        let len = (MAX_CONTROL_BODY + 10).to_be_bytes();
        let err = d
            .feed(&[len[0], len[1], len[2], len[3], 0x01], |_| {})
            .unwrap_err();
        assert!(matches!(err, ProtoError::FrameTooLarge { typ: 0x01, .. }));
        assert_eq!(d.body.capacity(), 0);
    }

    #[test]
    fn garbage_is_an_error() {
        // An HTTP request read as a frame: "GET " is the length, '/' the type.
        let mut d = FrameDecoder::new();
        assert_eq!(
            d.feed(b"GET / HTTP/1.1\r\n", |_| {}),
            Err(ProtoError::UnknownFrameType(b'/'))
        );
        // "GET " then a space: a 1.2 GB Data frame, refused on its header.
        let mut d = FrameDecoder::new();
        assert_eq!(
            d.feed(b"GET  HTTP", |_| {}),
            Err(ProtoError::FrameTooLarge {
                typ: 0x20,
                len: u32::from_be_bytes(*b"GET "),
                max: crate::frame::MAX_DATA_BODY + 1
            })
        );
        let mut d = FrameDecoder::new();
        assert_eq!(
            d.feed(&[0, 0, 0, 1, 0x99], |_| {}),
            Err(ProtoError::UnknownFrameType(0x99))
        );
    }

    #[test]
    fn a_partial_frame_is_not_a_boundary() {
        let mut d = FrameDecoder::new();
        let frame = Message::Ping { nonce: 1 }.to_frame();
        d.feed(&frame[..3], |_| {}).unwrap();
        assert!(!d.at_boundary());
        let mut got = None;
        d.feed(&frame[3..], |ev| {
            if let Event::Message(m) = ev {
                got = Some(m)
            }
        })
        .unwrap();
        assert_eq!(got, Some(Message::Ping { nonce: 1 }));
        assert!(d.at_boundary());
    }

    fn datagram_frame(payload: &[u8]) -> Vec<u8> {
        let mut v = Header::datagram(payload.len()).to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn datagrams_come_out_whole_and_separate_whatever_the_split() {
        let big: Vec<u8> = (0..crate::frame::MAX_DATAGRAM).map(|i| i as u8).collect();
        let mut stream = Message::OpenDatagrams {
            target: "10.0.0.1:53".into(),
        }
        .to_frame();
        stream.extend(datagram_frame(b"one"));
        stream.extend(datagram_frame(b""));
        stream.extend(datagram_frame(b"two"));
        stream.extend(datagram_frame(&big));
        stream.extend(Message::Eof.to_frame());
        let want = vec![
            Owned::Msg(Message::OpenDatagrams {
                target: "10.0.0.1:53".into(),
            }),
            Owned::Datagram(b"one".to_vec()),
            Owned::Datagram(Vec::new()),
            Owned::Datagram(b"two".to_vec()),
            Owned::Datagram(big.clone()),
            Owned::Msg(Message::Eof),
        ];
        for step in [1, 2, 5, 7, 4096, 16_384, stream.len()] {
            assert_eq!(decode_in_steps(&stream, step).unwrap(), want, "step {step}");
        }
    }

    #[test]
    fn an_oversized_datagram_fails_on_its_header() {
        let mut d = FrameDecoder::new();
        let len = (crate::frame::MAX_DATAGRAM + 2).to_be_bytes();
        let err = d
            .feed(&[len[0], len[1], len[2], len[3], 0x23], |_| {})
            .unwrap_err();
        assert!(matches!(err, ProtoError::FrameTooLarge { typ: 0x23, .. }));
        assert_eq!(d.body.capacity(), 0);
    }
}
