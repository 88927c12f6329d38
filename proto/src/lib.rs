//! Conduit's wire protocol, sans-IO.
//!
//! Everything a conduit client and router say to each other is decided here, and
//! nothing here touches a socket, a clock or a runtime: functions take bytes in and
//! hand bytes and events out. That is what lets the control plane (Tokio) and the
//! data plane (monoio) share one implementation, and what lets the tests below drive
//! a client and a router against each other in memory.
//!
//! ```text
//!  plaintext ──frame::encode──▶ TlsSession::encrypt ──▶ TLS bytes ─┐
//!                                                                   │ (socket, owned by a plane)
//!  events ◀──FrameDecoder::feed◀── TlsSession::decrypt ◀── TLS bytes┘
//! ```
//!
//! * [`identity`]: Ed25519 keys, their `ed25519:…` text form and key generation.
//! * [`tls`]: rustls configurations for TLS 1.3 with RFC 7250 raw public keys, pinned
//!   on both sides.
//! * [`session`]: the record pump over rustls' unbuffered API, on caller-owned buffers.
//! * [`frame`], [`message`], [`decoder`]: the framing (4-byte length, 1-byte type) with
//!   its size limits, the typed messages, and a streaming decoder that yields payload
//!   slices without copying them.
//! * [`stream`]: one direction of a stream on the plain transport (`Data` frames up to
//!   `Eof`, or `Unframed` and raw bytes), read without allocating.
//! * [`version`]: protocol version negotiation.
//!
//! What this crate does **not** do: open sockets, read key files, keep time, retry,
//! or decide policy (which sources a client may open). Those belong to
//! `conduit-controlplane` and `conduit-dataplane`.
#![forbid(unsafe_code)]

pub mod decoder;
pub mod error;
pub mod frame;
pub mod identity;
pub mod message;
pub mod session;
pub mod stream;
pub mod suite;
pub mod tls;
pub mod version;

pub use decoder::{Event, FrameDecoder};
pub use error::ProtoError;
pub use identity::{KeyPair, PublicKey, Secret};
pub use message::{ChannelKind, Hello, Message, Refusal, RefusalCode};
pub use session::{TlsError, TlsSession};
