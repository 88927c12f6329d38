//! The typed messages carried in frames, and their encoding.
//!
//! Bodies are postcard-encoded structs. postcard ignores trailing bytes, so a later
//! version may append fields to a message without breaking this one.

use serde::{Deserialize, Serialize};

use crate::error::ProtoError;
use crate::frame::{FrameType, HEADER_LEN, Header};
use crate::identity::{PublicKey, Secret};
use crate::version::VersionRange;

/// What a channel is for, named by the first frame sent on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    /// One per tunnel process: heartbeats, status, errors.
    Control,
    /// One per user connection at a time; reusable once a stream ends cleanly.
    Data,
}

/// The first frame of every channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Protocol versions the client speaks.
    pub versions: VersionRange,
    /// What the channel is for.
    pub channel: ChannelKind,
    /// The tunnel's name, for the router's logs.
    pub tunnel: String,
    /// The authorization token, when the router requires one.
    pub token: Option<Secret>,
    /// On a control channel (protocol 7): the source the tunnel's streams will open
    /// (`host:port`, or members joined by commas), for the router to check against
    /// its policy before it admits the tunnel, so that a tunnel it would never serve
    /// fails at start rather than at its first user. Each stream's `Open` is checked
    /// all the same.
    pub source: Option<String>,
}

/// Why something was refused. Unknown codes from newer peers decode as `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefusalCode {
    /// No protocol version in common.
    UnsupportedVersion,
    /// The client's key or token is not accepted.
    Unauthorized,
    /// The router's policy does not allow this source.
    PolicyDenied,
    /// The source could not be reached (refused, unreachable, timed out).
    SourceUnreachable,
    /// A connection limit was reached.
    LimitReached,
    /// The sender is shutting down.
    ShuttingDown,
    /// The peer broke the protocol.
    Protocol,
    /// The current stream was aborted by one of its ends.
    Aborted,
    /// The current stream moved no byte either way for its sender's stream idle
    /// timeout, and was closed (a `Reset`; an older peer takes it for `Other(9)`).
    IdleTimeout,
    /// A code this build does not know.
    Other(u16),
}

impl RefusalCode {
    fn to_wire(self) -> u16 {
        match self {
            Self::UnsupportedVersion => 1,
            Self::Unauthorized => 2,
            Self::PolicyDenied => 3,
            Self::SourceUnreachable => 4,
            Self::LimitReached => 5,
            Self::ShuttingDown => 6,
            Self::Protocol => 7,
            Self::Aborted => 8,
            Self::IdleTimeout => 9,
            Self::Other(n) => n,
        }
    }

    fn from_wire(n: u16) -> Self {
        match n {
            1 => Self::UnsupportedVersion,
            2 => Self::Unauthorized,
            3 => Self::PolicyDenied,
            4 => Self::SourceUnreachable,
            5 => Self::LimitReached,
            6 => Self::ShuttingDown,
            7 => Self::Protocol,
            8 => Self::Aborted,
            9 => Self::IdleTimeout,
            n => Self::Other(n),
        }
    }
}

/// A refusal: a code for programs and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Machine-readable reason.
    pub code: RefusalCode,
    /// What happened and what to do, for the operator.
    pub message: String,
}

impl Refusal {
    /// Builds a refusal.
    pub fn new(code: RefusalCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// A control message (everything but payload, which the decoder hands out as slices).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// See [`Hello`].
    Hello(Hello),
    /// The router accepts the channel and names the negotiated version.
    Welcome {
        /// The negotiated protocol version.
        version: u16,
    },
    /// The router refuses the channel.
    Refused(Refusal),
    /// Open a stream to this source (`host:port`, as the router resolves it).
    Open {
        /// The source address.
        target: String,
    },
    /// Open a UDP flow to this source (`host:port`); `Datagram` frames follow, each
    /// one whole datagram, and `Eof` from the client ends the flow (protocol 2).
    OpenDatagrams {
        /// The source address.
        target: String,
    },
    /// Open a stream to this source (`host:port`) whose payload both ends relay
    /// through kernel TLS if the router can (protocol 4). The client sends nothing
    /// more until the answer: `OpenedKernel`, or `Opened` for a stream in userspace.
    OpenKernel {
        /// The source address.
        target: String,
    },
    /// The source is connected.
    Opened,
    /// The source is connected, and the record that carries this message is the
    /// last one sealed in userspace: both ends now hand their keys to the kernel.
    OpenedKernel,
    /// The source could not be opened.
    OpenFailed(Refusal),
    /// No more payload from the sender on this stream.
    Eof,
    /// The rest of this direction is raw bytes ended by FIN (plain channels only).
    Unframed,
    /// The stream was aborted; the channel will close.
    Reset(Refusal),
    /// Router → client on a UDP flow (protocol 8): the source refused a datagram of
    /// the flow, and the router has no other source to move it to. The flow goes on.
    SourceRefused(Refusal),
    /// Heartbeat request.
    Ping {
        /// Echoed in the answer.
        nonce: u64,
    },
    /// Heartbeat answer.
    Pong {
        /// The nonce of the request.
        nonce: u64,
    },
    /// The sender closes the channel on purpose.
    Goodbye(Refusal),
    /// Client → router, on the control channel: put this key in place of the one the
    /// channel was authenticated with (protocol 3). The router answers `KeyRotated`,
    /// or `Refused` with the reason.
    RotateKey {
        /// The client's next key.
        next: PublicKey,
    },
    /// Router → client: the next key is authorized, and the old one is accepted until
    /// `expires` (Unix seconds), for streams and tunnels not yet moved over.
    KeyRotated {
        /// When the old key stops being accepted, in Unix seconds.
        expires: u64,
    },
    /// Router → client, on the control channel after `Welcome` (protocol 6): every key
    /// the router may present (the one it presents now, and the one it will present
    /// once its operator switches to it), at most [`MAX_ROUTER_KEYS`]. Sent over a
    /// channel the client authenticated the router on, so the client may trust them
    /// for that router.
    RouterKeys {
        /// The keys, the one in use first.
        keys: Vec<PublicKey>,
    },
}

/// The most keys a `RouterKeys` may name.
pub const MAX_ROUTER_KEYS: usize = 4;

#[derive(Serialize, Deserialize)]
struct RouterKeysWire {
    keys: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct RotateKeyWire {
    next: String,
}

#[derive(Serialize, Deserialize)]
struct KeyRotatedWire {
    expires: u64,
}

#[derive(Serialize, Deserialize)]
struct HelloWire {
    versions: VersionRange,
    channel: u8,
    tunnel: String,
    token: Option<String>,
}

/// Appended to a `HelloWire` when the `Hello` names a source (protocol 7): older
/// routers read the `HelloWire` and ignore what follows.
#[derive(Serialize, Deserialize)]
struct HelloSourceWire {
    source: String,
}

#[derive(Serialize, Deserialize)]
struct RefusalWire {
    code: u16,
    message: String,
}

#[derive(Serialize, Deserialize)]
struct WelcomeWire {
    version: u16,
}

#[derive(Serialize, Deserialize)]
struct OpenWire {
    target: String,
}

#[derive(Serialize, Deserialize)]
struct NonceWire {
    nonce: u64,
}

impl Message {
    /// A short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Hello(_) => "Hello",
            Self::Welcome { .. } => "Welcome",
            Self::Refused(_) => "Refused",
            Self::Open { .. } => "Open",
            Self::OpenDatagrams { .. } => "OpenDatagrams",
            Self::OpenKernel { .. } => "OpenKernel",
            Self::Opened => "Opened",
            Self::OpenedKernel => "OpenedKernel",
            Self::OpenFailed(_) => "OpenFailed",
            Self::Eof => "Eof",
            Self::Unframed => "Unframed",
            Self::Reset(_) => "Reset",
            Self::SourceRefused(_) => "SourceRefused",
            Self::Ping { .. } => "Ping",
            Self::Pong { .. } => "Pong",
            Self::Goodbye(_) => "Goodbye",
            Self::RotateKey { .. } => "RotateKey",
            Self::KeyRotated { .. } => "KeyRotated",
            Self::RouterKeys { .. } => "RouterKeys",
        }
    }

    fn frame_type(&self) -> FrameType {
        match self {
            Self::Hello(_) => FrameType::Hello,
            Self::Welcome { .. } => FrameType::Welcome,
            Self::Refused(_) => FrameType::Refused,
            Self::Open { .. } => FrameType::Open,
            Self::OpenDatagrams { .. } => FrameType::OpenDatagrams,
            Self::OpenKernel { .. } => FrameType::OpenKernel,
            Self::Opened => FrameType::Opened,
            Self::OpenedKernel => FrameType::OpenedKernel,
            Self::OpenFailed(_) => FrameType::OpenFailed,
            Self::Eof => FrameType::Eof,
            Self::Unframed => FrameType::Unframed,
            Self::Reset(_) => FrameType::Reset,
            Self::SourceRefused(_) => FrameType::SourceRefused,
            Self::Ping { .. } => FrameType::Ping,
            Self::Pong { .. } => FrameType::Pong,
            Self::Goodbye(_) => FrameType::Goodbye,
            Self::RotateKey { .. } => FrameType::RotateKey,
            Self::KeyRotated { .. } => FrameType::KeyRotated,
            Self::RouterKeys { .. } => FrameType::RouterKeys,
        }
    }

    /// Appends this message, framed, to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; HEADER_LEN]);
        let body = match self {
            Self::Hello(h) => {
                let mut body = to_vec(&HelloWire {
                    versions: h.versions,
                    channel: match h.channel {
                        ChannelKind::Control => 1,
                        ChannelKind::Data => 2,
                    },
                    tunnel: h.tunnel.clone(),
                    token: h.token.as_ref().map(|t| t.expose().to_owned()),
                });
                if let Some(source) = &h.source {
                    body.extend(to_vec(&HelloSourceWire {
                        source: source.clone(),
                    }));
                }
                body
            }
            Self::Welcome { version } => to_vec(&WelcomeWire { version: *version }),
            Self::Refused(r)
            | Self::OpenFailed(r)
            | Self::Reset(r)
            | Self::SourceRefused(r)
            | Self::Goodbye(r) => to_vec(&RefusalWire {
                code: r.code.to_wire(),
                message: truncate(&r.message, 4096).to_owned(),
            }),
            Self::Open { target }
            | Self::OpenDatagrams { target }
            | Self::OpenKernel { target } => to_vec(&OpenWire {
                target: target.clone(),
            }),
            Self::Ping { nonce } | Self::Pong { nonce } => to_vec(&NonceWire { nonce: *nonce }),
            Self::RotateKey { next } => to_vec(&RotateKeyWire {
                next: next.to_string(),
            }),
            Self::KeyRotated { expires } => to_vec(&KeyRotatedWire { expires: *expires }),
            Self::RouterKeys { keys } => to_vec(&RouterKeysWire {
                keys: keys
                    .iter()
                    .take(MAX_ROUTER_KEYS)
                    .map(ToString::to_string)
                    .collect(),
            }),
            Self::Opened | Self::OpenedKernel | Self::Eof | Self::Unframed => Vec::new(),
        };
        out.extend_from_slice(&body);
        let mut header = [0; HEADER_LEN];
        Header::write(self.frame_type(), body.len(), &mut header);
        out[start..start + HEADER_LEN].copy_from_slice(&header);
    }

    /// Encodes this message into a fresh buffer.
    pub fn to_frame(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }

    /// Decodes the body of a control frame of type `typ`.
    pub fn decode(typ: FrameType, body: &[u8]) -> Result<Self, ProtoError> {
        Ok(match typ {
            FrameType::Hello => {
                let (w, rest): (HelloWire, _) =
                    postcard::take_from_bytes(body).map_err(|e| ProtoError::Malformed {
                        what: "Hello",
                        reason: e.to_string(),
                    })?;
                // A Hello of protocol 6 or older ends here.
                let source = match rest {
                    [] => None,
                    rest => Some(printable(
                        "Hello",
                        from_bytes::<HelloSourceWire>("Hello", rest)?.source,
                    )?),
                };
                let channel = match w.channel {
                    1 => ChannelKind::Control,
                    2 => ChannelKind::Data,
                    other => {
                        return Err(ProtoError::Malformed {
                            what: "Hello",
                            reason: format!("unknown channel kind {other}"),
                        });
                    }
                };
                Self::Hello(Hello {
                    versions: w.versions,
                    channel,
                    tunnel: w.tunnel,
                    token: w.token.map(Secret::new),
                    source,
                })
            }
            FrameType::Welcome => {
                let w: WelcomeWire = from_bytes("Welcome", body)?;
                Self::Welcome { version: w.version }
            }
            FrameType::Refused => Self::Refused(refusal("Refused", body)?),
            FrameType::Open => {
                let w: OpenWire = from_bytes("Open", body)?;
                Self::Open {
                    target: printable("Open", w.target)?,
                }
            }
            FrameType::OpenDatagrams => {
                let w: OpenWire = from_bytes("OpenDatagrams", body)?;
                Self::OpenDatagrams {
                    target: printable("OpenDatagrams", w.target)?,
                }
            }
            FrameType::OpenKernel => {
                let w: OpenWire = from_bytes("OpenKernel", body)?;
                Self::OpenKernel {
                    target: printable("OpenKernel", w.target)?,
                }
            }
            FrameType::Opened => Self::Opened,
            FrameType::OpenedKernel => Self::OpenedKernel,
            FrameType::OpenFailed => Self::OpenFailed(refusal("OpenFailed", body)?),
            FrameType::Eof => Self::Eof,
            FrameType::Unframed => Self::Unframed,
            FrameType::Reset => Self::Reset(refusal("Reset", body)?),
            FrameType::SourceRefused => Self::SourceRefused(refusal("SourceRefused", body)?),
            FrameType::Ping => Self::Ping {
                nonce: from_bytes::<NonceWire>("Ping", body)?.nonce,
            },
            FrameType::Pong => Self::Pong {
                nonce: from_bytes::<NonceWire>("Pong", body)?.nonce,
            },
            FrameType::Goodbye => Self::Goodbye(refusal("Goodbye", body)?),
            FrameType::RotateKey => {
                let w: RotateKeyWire = from_bytes("RotateKey", body)?;
                let next = w.next.parse().map_err(|e| ProtoError::Malformed {
                    what: "RotateKey",
                    reason: format!("{e}"),
                })?;
                Self::RotateKey { next }
            }
            FrameType::KeyRotated => Self::KeyRotated {
                expires: from_bytes::<KeyRotatedWire>("KeyRotated", body)?.expires,
            },
            FrameType::RouterKeys => {
                let w: RouterKeysWire = from_bytes("RouterKeys", body)?;
                let malformed = |reason: String| ProtoError::Malformed {
                    what: "RouterKeys",
                    reason,
                };
                if w.keys.is_empty() || w.keys.len() > MAX_ROUTER_KEYS {
                    return Err(malformed(format!(
                        "{} keys (1 to {MAX_ROUTER_KEYS} expected)",
                        w.keys.len()
                    )));
                }
                let keys = w
                    .keys
                    .iter()
                    .map(|k| k.parse().map_err(|e| malformed(format!("{e}"))))
                    .collect::<Result<Vec<PublicKey>, _>>()?;
                Self::RouterKeys { keys }
            }
            FrameType::Data | FrameType::Datagram => {
                return Err(ProtoError::Unexpected {
                    got: if typ == FrameType::Data {
                        "Data"
                    } else {
                        "Datagram"
                    },
                    expected: "a control message",
                });
            }
        })
    }
}

fn refusal(what: &'static str, body: &[u8]) -> Result<Refusal, ProtoError> {
    let w: RefusalWire = from_bytes(what, body)?;
    // Shown and logged as it came: a peer's line break or terminal escape must not
    // forge a log line or repaint a terminal.
    let message = if w.message.contains(char::is_control) {
        w.message
            .chars()
            .map(|c| if c.is_control() { '\u{fffd}' } else { c })
            .collect()
    } else {
        w.message
    };
    Ok(Refusal {
        code: RefusalCode::from_wire(w.code),
        message,
    })
}

/// A source a peer names (`HOST:PORT`, or several, comma-separated): it goes into
/// logs and messages, so a control character (a line break that would forge a log
/// line, a terminal escape) makes the message malformed.
fn printable(what: &'static str, target: String) -> Result<String, ProtoError> {
    if target.contains(char::is_control) {
        return Err(ProtoError::Malformed {
            what,
            reason: "the source it names holds a control character".into(),
        });
    }
    Ok(target)
}

fn to_vec<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing these plain structs into a Vec cannot fail; an empty body would be
    // rejected by the peer's decoder, never silently accepted.
    postcard::to_stdvec(v).unwrap_or_default()
}

fn from_bytes<'a, T: Deserialize<'a>>(what: &'static str, body: &'a [u8]) -> Result<T, ProtoError> {
    postcard::from_bytes(body).map_err(|e| ProtoError::Malformed {
        what,
        reason: e.to_string(),
    })
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Header;

    fn round_trip(m: Message) {
        let frame = m.to_frame();
        let header: [u8; HEADER_LEN] = frame[..HEADER_LEN].try_into().unwrap();
        let h = Header::parse(&header).unwrap();
        assert_eq!(h.body_len as usize, frame.len() - HEADER_LEN);
        assert_eq!(Message::decode(h.typ, &frame[HEADER_LEN..]).unwrap(), m);
    }

    #[test]
    fn every_message_round_trips() {
        round_trip(Message::Hello(Hello {
            versions: VersionRange::ours(),
            channel: ChannelKind::Data,
            tunnel: "web".into(),
            token: Some(Secret::new("s3cret".into())),
            source: None,
        }));
        round_trip(Message::Hello(Hello {
            versions: VersionRange::ours(),
            channel: ChannelKind::Control,
            tunnel: "web".into(),
            token: None,
            source: Some("10.2.0.5:8080,10.2.0.6:8080".into()),
        }));
        round_trip(Message::Welcome { version: 1 });
        round_trip(Message::Refused(Refusal::new(
            RefusalCode::Unauthorized,
            "no",
        )));
        round_trip(Message::Open {
            target: "10.2.0.2:8080".into(),
        });
        round_trip(Message::Opened);
        round_trip(Message::OpenKernel {
            target: "10.0.0.5:5432".into(),
        });
        round_trip(Message::OpenedKernel);
        round_trip(Message::OpenFailed(Refusal::new(
            RefusalCode::SourceUnreachable,
            "connection refused",
        )));
        round_trip(Message::Eof);
        round_trip(Message::Unframed);
        round_trip(Message::Reset(Refusal::new(RefusalCode::Aborted, "rst")));
        round_trip(Message::SourceRefused(Refusal::new(
            RefusalCode::SourceUnreachable,
            "source 10.0.0.5:53 refused a datagram",
        )));
        round_trip(Message::Reset(Refusal::new(
            RefusalCode::IdleTimeout,
            "idle",
        )));
        round_trip(Message::Ping { nonce: u64::MAX });
        round_trip(Message::Pong { nonce: 7 });
        round_trip(Message::RotateKey {
            next: crate::KeyPair::generate().unwrap().public(),
        });
        round_trip(Message::KeyRotated {
            expires: 1_800_000_000,
        });
        round_trip(Message::RouterKeys {
            keys: vec![
                crate::KeyPair::generate().unwrap().public(),
                crate::KeyPair::generate().unwrap().public(),
            ],
        });
        round_trip(Message::Goodbye(Refusal::new(
            RefusalCode::Other(999),
            "bye",
        )));
    }

    #[test]
    fn a_hello_without_a_source_is_the_hello_of_protocol_6() {
        let hello = |source: Option<&str>| {
            Message::Hello(Hello {
                versions: VersionRange { min: 1, max: 6 },
                channel: ChannelKind::Control,
                tunnel: "web".into(),
                token: None,
                source: source.map(Into::into),
            })
            .to_frame()
        };
        // What a build of protocol 6 sends, byte for byte: no source.
        let old = hello(None);
        assert_eq!(
            old[HEADER_LEN..],
            [1, 6, 1, 3, b'w', b'e', b'b', 0],
            "versions 1..=6, control, \"web\", no token"
        );
        // The source follows it: what a router of protocol 6 reads is the same.
        let new = hello(Some("a:1"));
        assert_eq!(new[HEADER_LEN..old.len()], old[HEADER_LEN..]);
        assert_eq!(new[old.len()..], [3, b'a', b':', b'1']);
        let old_reader: HelloWire = postcard::from_bytes(&new[HEADER_LEN..]).unwrap();
        assert_eq!(old_reader.tunnel, "web");
        // A source that is cut short is an error, not a Hello without one.
        let cut = &new[HEADER_LEN..new.len() - 1];
        assert!(matches!(
            Message::decode(FrameType::Hello, cut),
            Err(ProtoError::Malformed { what: "Hello", .. })
        ));
    }

    /// What a peer names goes into logs: it cannot carry a line of its own.
    #[test]
    fn a_control_character_from_a_peer_never_reaches_a_log_line() {
        let forged = "127.0.0.1:1\n2026-12-06T10:00:00Z  INFO client connected";
        for m in [
            Message::Open {
                target: forged.into(),
            },
            Message::OpenDatagrams {
                target: forged.into(),
            },
            Message::OpenKernel {
                target: "a:1\x1b[2J".into(),
            },
            Message::Hello(Hello {
                versions: VersionRange { min: 1, max: 7 },
                channel: ChannelKind::Control,
                tunnel: "web".into(),
                token: None,
                source: Some(forged.into()),
            }),
        ] {
            let frame = m.to_frame();
            let h = Header::parse(&frame[..HEADER_LEN].try_into().unwrap()).unwrap();
            assert_eq!(
                Message::decode(h.typ, &frame[HEADER_LEN..]),
                Err(ProtoError::Malformed {
                    what: m.name(),
                    reason: "the source it names holds a control character".into(),
                }),
            );
        }
        let frame =
            Message::Goodbye(Refusal::new(RefusalCode::ShuttingDown, "bye\r\nINFO x")).to_frame();
        let h = Header::parse(&frame[..HEADER_LEN].try_into().unwrap()).unwrap();
        assert_eq!(
            Message::decode(h.typ, &frame[HEADER_LEN..]),
            Ok(Message::Goodbye(Refusal::new(
                RefusalCode::ShuttingDown,
                "bye\u{fffd}\u{fffd}INFO x"
            )))
        );
    }

    #[test]
    fn exact_bytes_of_an_open_frame() {
        let frame = Message::Open {
            target: "a:1".into(),
        }
        .to_frame();
        // length 5 (type + varint len + "a:1"), type 0x10, postcard string.
        assert_eq!(frame, [0, 0, 0, 5, 0x10, 3, b'a', b':', b'1']);
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        assert!(matches!(
            Message::decode(FrameType::Hello, &[0xff, 0xff, 0xff]),
            Err(ProtoError::Malformed { what: "Hello", .. })
        ));
        assert!(matches!(
            Message::decode(FrameType::Open, &[200, 1]),
            Err(ProtoError::Malformed { what: "Open", .. })
        ));
        // Hello with an unknown channel kind.
        let body = postcard::to_stdvec(&HelloWire {
            versions: VersionRange::ours(),
            channel: 9,
            tunnel: String::new(),
            token: None,
        })
        .unwrap();
        assert_eq!(
            Message::decode(FrameType::Hello, &body),
            Err(ProtoError::Malformed {
                what: "Hello",
                reason: "unknown channel kind 9".into()
            })
        );
    }

    #[test]
    fn router_keys_are_one_to_four_sound_keys() {
        let body = |keys: Vec<String>| postcard::to_stdvec(&RouterKeysWire { keys }).unwrap();
        let k = crate::KeyPair::generate().unwrap().public().to_string();
        for (keys, reason) in [
            (vec![], "0 keys (1 to 4 expected)".to_owned()),
            (vec![k.clone(); 5], "5 keys (1 to 4 expected)".to_owned()),
        ] {
            assert_eq!(
                Message::decode(FrameType::RouterKeys, &body(keys)),
                Err(ProtoError::Malformed {
                    what: "RouterKeys",
                    reason
                })
            );
        }
        assert!(matches!(
            Message::decode(FrameType::RouterKeys, &body(vec![k, "ed25519:nope".into()])),
            Err(ProtoError::Malformed {
                what: "RouterKeys",
                ..
            })
        ));
    }

    #[test]
    fn unknown_refusal_codes_survive() {
        let frame = Message::Refused(Refusal::new(RefusalCode::Other(4242), "later")).to_frame();
        let m = Message::decode(FrameType::Refused, &frame[HEADER_LEN..]).unwrap();
        assert_eq!(
            m,
            Message::Refused(Refusal::new(RefusalCode::Other(4242), "later"))
        );
    }

    #[test]
    fn trailing_fields_from_newer_peers_are_ignored() {
        let mut body = postcard::to_stdvec(&WelcomeWire { version: 1 }).unwrap();
        body.extend_from_slice(&[1, 2, 3]);
        assert_eq!(
            Message::decode(FrameType::Welcome, &body),
            Ok(Message::Welcome { version: 1 })
        );
    }
}
