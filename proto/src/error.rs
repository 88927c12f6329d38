//! Errors raised while decoding what a peer sent.

/// A frame or message a peer sent could not be accepted. The connection that carried
/// it must be closed; no other connection is affected. Retrying the same bytes cannot
/// help: the peer is at fault (or speaks another protocol).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtoError {
    /// A frame announced more bytes than the limit for its type; nothing was allocated.
    #[error("frame of type {typ:#04x} announces {len} bytes, over the {max}-byte limit")]
    FrameTooLarge {
        /// The frame type byte.
        typ: u8,
        /// The announced length.
        len: u32,
        /// The limit for this frame type.
        max: u32,
    },
    /// A frame announced a length of zero (every frame carries at least its type byte).
    #[error("frame with zero length")]
    EmptyFrame,
    /// The frame type byte is not one this version knows.
    #[error("unknown frame type {0:#04x}")]
    UnknownFrameType(u8),
    /// A message body did not decode as its type requires.
    #[error("malformed {what} message: {reason}")]
    Malformed {
        /// Which message.
        what: &'static str,
        /// What was wrong with it.
        reason: String,
    },
    /// The peer sent a valid message at a point where it is not allowed.
    #[error("unexpected {got} (expected {expected})")]
    Unexpected {
        /// What arrived.
        got: &'static str,
        /// What the state machine was waiting for.
        expected: &'static str,
    },
    /// A key was not in the `ed25519:<base64>` form.
    #[error("invalid public key {text:?}: {reason}")]
    InvalidKey {
        /// The text that failed to parse (a public key, never a secret).
        text: String,
        /// What was wrong with it.
        reason: &'static str,
    },
}
