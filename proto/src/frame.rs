//! Framing: every message is `length (u32, big-endian) | type (u8) | body`.
//!
//! `length` counts the type byte and the body. Limits are per frame type and are
//! checked on the header alone, before a byte of the body is buffered: a peer cannot
//! make this side allocate more than [`MAX_CONTROL_BODY`] for a control message, and
//! payload (`Data`) frames are never buffered at all (see [`crate::decoder`]).

use crate::error::ProtoError;

/// Bytes in a frame header: 4 of length, 1 of type.
pub const HEADER_LEN: usize = 5;
/// Largest body of a control message (everything but `Data`).
pub const MAX_CONTROL_BODY: u32 = 16 * 1024;
/// Largest body of a `Data` frame. Senders in this build use at most 64 KiB.
pub const MAX_DATA_BODY: u32 = 1024 * 1024;
/// Largest body of a `Datagram` frame: the largest UDP payload (IPv6 jumbograms
/// aside), so every datagram travels whole.
pub const MAX_DATAGRAM: u32 = 65_535;

/// The type byte of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    /// Client → router, first frame of every channel.
    Hello = 0x01,
    /// Router → client: the channel is accepted.
    Welcome = 0x02,
    /// Router → client: the channel is refused, with the reason.
    Refused = 0x03,
    /// Client → router on a data channel: connect to this source.
    Open = 0x10,
    /// Router → client: the source is connected.
    Opened = 0x11,
    /// Router → client: the source could not be opened, with the reason.
    OpenFailed = 0x12,
    /// Client → router on a data channel: open a UDP flow to this source (protocol 2).
    OpenDatagrams = 0x13,
    /// Client → router on a TLS data channel: connect to this source and, if the
    /// router can, hand the channel's TLS records to both kernels (protocol 4).
    OpenKernel = 0x14,
    /// Router → client: the source is connected and this is the router's last record
    /// sealed in userspace; its kernel seals the rest, and the client's kernel must open
    /// them. The stream's payload follows raw, without frames; close_notify ends it.
    OpenedKernel = 0x15,
    /// Payload bytes of the current stream.
    Data = 0x20,
    /// The sender will send no more payload on the current stream (TCP half-close).
    Eof = 0x21,
    /// The current stream was aborted; the channel closes.
    Reset = 0x22,
    /// One whole UDP datagram of the current flow (protocol 2).
    Datagram = 0x23,
    /// On a plain channel (protocol 5): the rest of this direction of the stream
    /// follows raw, without frames, and the sender's FIN ends it; the channel closes
    /// after the stream.
    Unframed = 0x24,
    /// Router → client on a UDP flow (protocol 8): the flow's source refused a
    /// datagram (nothing listens on its port), and the router has no other source
    /// to move the flow to; the flow goes on.
    SourceRefused = 0x25,
    /// Heartbeat request.
    Ping = 0x30,
    /// Heartbeat answer.
    Pong = 0x31,
    /// The sender is closing the channel on purpose, with the reason.
    Goodbye = 0x32,
    /// Client → router on the control channel: authorize this key in place of the
    /// one this channel was authenticated with (protocol 3).
    RotateKey = 0x40,
    /// Router → client: the new key is authorized; the old one until the time given.
    KeyRotated = 0x41,
    /// Router → client on the control channel: the keys it presents now and next
    /// (protocol 6).
    RouterKeys = 0x42,
}

impl FrameType {
    /// Parses a type byte.
    pub fn from_byte(b: u8) -> Result<Self, ProtoError> {
        Ok(match b {
            0x01 => Self::Hello,
            0x02 => Self::Welcome,
            0x03 => Self::Refused,
            0x10 => Self::Open,
            0x11 => Self::Opened,
            0x12 => Self::OpenFailed,
            0x13 => Self::OpenDatagrams,
            0x14 => Self::OpenKernel,
            0x15 => Self::OpenedKernel,
            0x20 => Self::Data,
            0x21 => Self::Eof,
            0x22 => Self::Reset,
            0x23 => Self::Datagram,
            0x24 => Self::Unframed,
            0x25 => Self::SourceRefused,
            0x30 => Self::Ping,
            0x31 => Self::Pong,
            0x32 => Self::Goodbye,
            0x40 => Self::RotateKey,
            0x41 => Self::KeyRotated,
            0x42 => Self::RouterKeys,
            other => return Err(ProtoError::UnknownFrameType(other)),
        })
    }

    /// The largest body this frame type may carry.
    pub const fn max_body(self) -> u32 {
        match self {
            Self::Data => MAX_DATA_BODY,
            Self::Datagram => MAX_DATAGRAM,
            _ => MAX_CONTROL_BODY,
        }
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The frame type.
    pub typ: FrameType,
    /// Length of the body (the bytes after the type byte).
    pub body_len: u32,
}

impl Header {
    /// Parses and checks a header against the limit of its type.
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Result<Self, ProtoError> {
        let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        if len == 0 {
            return Err(ProtoError::EmptyFrame);
        }
        let typ = FrameType::from_byte(bytes[4])?;
        let body_len = len - 1;
        if body_len > typ.max_body() {
            return Err(ProtoError::FrameTooLarge {
                typ: bytes[4],
                len,
                max: typ.max_body() + 1,
            });
        }
        Ok(Self { typ, body_len })
    }

    /// Writes a header for a body of `body_len` bytes.
    ///
    /// `body_len` must respect the type's limit; callers build frames from their own
    /// buffers, whose sizes are far below it.
    pub fn write(typ: FrameType, body_len: usize, out: &mut [u8; HEADER_LEN]) {
        debug_assert!(body_len <= typ.max_body() as usize);
        let len = (body_len as u32).saturating_add(1);
        out[..4].copy_from_slice(&len.to_be_bytes());
        out[4] = typ as u8;
    }

    /// The header bytes of a `Data` frame carrying `body_len` payload bytes.
    pub fn data(body_len: usize) -> [u8; HEADER_LEN] {
        let mut h = [0; HEADER_LEN];
        Self::write(FrameType::Data, body_len, &mut h);
        h
    }

    /// The header bytes of a `Datagram` frame carrying a datagram of `len` bytes
    /// (at most [`MAX_DATAGRAM`]).
    pub fn datagram(len: usize) -> [u8; HEADER_LEN] {
        let mut h = [0; HEADER_LEN];
        Self::write(FrameType::Datagram, len, &mut h);
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let mut h = [0; HEADER_LEN];
        Header::write(FrameType::Open, 17, &mut h);
        assert_eq!(h, [0, 0, 0, 18, 0x10]);
        assert_eq!(
            Header::parse(&h),
            Ok(Header {
                typ: FrameType::Open,
                body_len: 17
            })
        );
    }

    #[test]
    fn limits_are_checked_per_type() {
        let over = (MAX_CONTROL_BODY + 2).to_be_bytes();
        let h = [over[0], over[1], over[2], over[3], FrameType::Hello as u8];
        assert_eq!(
            Header::parse(&h),
            Err(ProtoError::FrameTooLarge {
                typ: 0x01,
                len: MAX_CONTROL_BODY + 2,
                max: MAX_CONTROL_BODY + 1
            })
        );
        // The same length is fine for payload.
        let h = [over[0], over[1], over[2], over[3], FrameType::Data as u8];
        assert_eq!(
            Header::parse(&h),
            Ok(Header {
                typ: FrameType::Data,
                body_len: MAX_CONTROL_BODY + 1
            })
        );
        let h = [0xff, 0xff, 0xff, 0xff, FrameType::Data as u8];
        assert_eq!(
            Header::parse(&h),
            Err(ProtoError::FrameTooLarge {
                typ: FrameType::Data as u8,
                len: u32::MAX,
                max: MAX_DATA_BODY + 1
            })
        );
    }

    #[test]
    fn rejects_zero_length_and_unknown_types() {
        assert_eq!(Header::parse(&[0, 0, 0, 0, 1]), Err(ProtoError::EmptyFrame));
        assert_eq!(
            Header::parse(&[0, 0, 0, 1, 0x7f]),
            Err(ProtoError::UnknownFrameType(0x7f))
        );
    }
}
