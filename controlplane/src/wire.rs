//! A Conduit channel on the Tokio side: a TCP stream with its TLS session, used for
//! handshakes, the `Hello`/`Welcome` exchange and the control channel, and handed to
//! the data plane as a [`ChannelHandoff`] once established.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use conduit_dataplane::ChannelHandoff;
use conduit_proto::session::{HandshakeStatus, MAX_RECORD_PLAINTEXT};
use conduit_proto::{Event, FrameDecoder, Message, ProtoError, PublicKey, TlsError, TlsSession};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What can go wrong on a channel.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("protocol error: {0}")]
    Proto(#[from] ProtoError),
    #[error("the other end closed the connection")]
    Closed,
}

/// An established (or establishing) channel: over TLS, or in clear on the plain
/// transport.
pub(crate) struct Wire {
    tcp: TcpStream,
    tls: Option<TlsSession>,
    /// Received bytes not yet decoded (plain transport only).
    raw: Vec<u8>,
    decoder: FrameDecoder,
    inbox: VecDeque<Message>,
    peer_addr: SocketAddr,
}

impl Wire {
    /// Runs the TLS handshake over `tcp`.
    pub(crate) async fn handshake(tcp: TcpStream, tls: TlsSession) -> Result<Self, WireError> {
        let _ = tcp.set_nodelay(true);
        let peer_addr = tcp.peer_addr()?;
        let mut tls = tls;
        let mut w = Self {
            tcp,
            tls: None,
            raw: Vec::new(),
            decoder: FrameDecoder::new(),
            inbox: VecDeque::new(),
            peer_addr,
        };
        loop {
            let mut out = Vec::new();
            let status = tls.handshake(&mut out);
            if !out.is_empty() {
                // On error this carries the alert that tells the peer why.
                let sent = w.tcp.write_all(&out).await;
                if status.is_ok() {
                    sent?;
                }
            }
            match status? {
                HandshakeStatus::Done => {
                    w.tls = Some(tls);
                    return Ok(w);
                }
                HandshakeStatus::NeedMore => {
                    let n = w.tcp.read(tls.spare(MAX_RECORD_PLAINTEXT + 64)).await?;
                    tls.received(n);
                    if n == 0 {
                        return Err(TlsError::ClosedDuringHandshake.into());
                    }
                }
            }
        }
    }

    /// A channel on the plain transport: no TLS, no authentication.
    pub(crate) fn plain(tcp: TcpStream) -> Result<Self, WireError> {
        let _ = tcp.set_nodelay(true);
        let peer_addr = tcp.peer_addr()?;
        Ok(Self {
            tcp,
            tls: None,
            raw: Vec::new(),
            decoder: FrameDecoder::new(),
            inbox: VecDeque::new(),
            peer_addr,
        })
    }

    async fn read_more(&mut self) -> std::io::Result<usize> {
        match &mut self.tls {
            Some(tls) => {
                let n = self.tcp.read(tls.spare(MAX_RECORD_PLAINTEXT + 64)).await?;
                tls.received(n);
                Ok(n)
            }
            None => {
                let mut chunk = [0u8; 4096];
                let n = self.tcp.read(&mut chunk).await?;
                self.raw.extend_from_slice(&chunk[..n]);
                Ok(n)
            }
        }
    }

    pub(crate) fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// The peer's verified key (`None` on the plain transport).
    pub(crate) fn peer_key(&self) -> Option<PublicKey> {
        self.tls.as_ref().and_then(TlsSession::peer_key)
    }

    /// The TLS cipher suite in use, as the log names it: `plain` on the plain
    /// transport.
    pub(crate) fn cipher(&self) -> &'static str {
        match &self.tls {
            Some(tls) => tls
                .cipher_suite()
                .map_or("unknown", conduit_proto::tls::Suite::name),
            None => "plain",
        }
    }

    /// Sends one message (encrypted, unless on the plain transport).
    pub(crate) async fn send(&mut self, msg: &Message) -> Result<(), WireError> {
        let frame = msg.to_frame();
        let Some(tls) = &mut self.tls else {
            self.tcp.write_all(&frame).await?;
            return Ok(());
        };
        let mut out = vec![0; tls.encrypted_len(frame.len())];
        let n = loop {
            match tls.encrypt(&frame, &mut out) {
                Err(TlsError::BufferTooSmall { required }) => out.resize(required, 0),
                other => break other?,
            }
        };
        self.tcp.write_all(&out[..n]).await?;
        Ok(())
    }

    /// The next control message; `Ok(None)` when the peer closed cleanly.
    pub(crate) async fn recv(&mut self) -> Result<Option<Message>, WireError> {
        loop {
            if let Some(m) = self.inbox.pop_front() {
                return Ok(Some(m));
            }
            let mut bad: Option<ProtoError> = None;
            let decoder = &mut self.decoder;
            let inbox = &mut self.inbox;
            let Some(tls) = &mut self.tls else {
                let raw = std::mem::take(&mut self.raw);
                let res = decoder.feed(&raw, |ev| match ev {
                    Event::Message(m) => inbox.push_back(m),
                    Event::Data(_) | Event::Datagram(_) => {
                        bad = Some(ProtoError::Unexpected {
                            got: "payload",
                            expected: "a control message",
                        })
                    }
                });
                if let Some(e) = bad {
                    return Err(e.into());
                }
                res?;
                if !self.inbox.is_empty() {
                    continue;
                }
                if self.read_more().await? == 0 {
                    return if self.decoder.at_boundary() {
                        Ok(None)
                    } else {
                        Err(WireError::Closed)
                    };
                }
                continue;
            };
            let closed = tls.decrypt(|plain| {
                if bad.is_some() {
                    return;
                }
                let res = decoder.feed(plain, |ev| match ev {
                    Event::Message(m) => inbox.push_back(m),
                    Event::Data(_) | Event::Datagram(_) => {
                        bad = Some(ProtoError::Unexpected {
                            got: "payload",
                            expected: "a control message",
                        })
                    }
                });
                if let Err(e) = res {
                    bad = Some(e);
                }
            });
            let closed = match closed {
                Ok(c) => c,
                Err(e) => {
                    let mut alert = Vec::new();
                    tls.drain_alerts(&mut alert);
                    let _ = self.tcp.write_all(&alert).await;
                    return Err(e.into());
                }
            };
            if let Some(e) = bad {
                return Err(e.into());
            }
            if !self.inbox.is_empty() {
                continue;
            }
            if closed {
                return if self.decoder.at_boundary() {
                    Ok(None)
                } else {
                    Err(WireError::Closed)
                };
            }
            if self.read_more().await? == 0 {
                let buffered = self.tls.as_ref().map_or(0, TlsSession::buffered);
                return if self.decoder.at_boundary() && buffered == 0 {
                    Ok(None)
                } else {
                    Err(WireError::Closed)
                };
            }
        }
    }

    /// Hands the channel to the data plane. Anything the peer pipelined beyond the
    /// messages consumed here is a protocol error: no frame may precede `Welcome`.
    pub(crate) fn into_handoff(
        self,
        epoch: conduit_dataplane::LinkEpoch,
        slot: Option<conduit_dataplane::ChannelSlot>,
        tunnel: String,
        version: u16,
    ) -> Result<ChannelHandoff, WireError> {
        if !self.inbox.is_empty() || !self.decoder.at_boundary() {
            return Err(ProtoError::Unexpected {
                got: "a frame before Welcome",
                expected: "nothing until the router's Welcome",
            }
            .into());
        }
        let peer_key = self.peer_key();
        if self.tls.is_some() && peer_key.is_none() {
            return Err(WireError::Closed);
        }
        let stream = self.tcp.into_std()?;
        Ok(ChannelHandoff {
            stream,
            tls: self.tls.map(Box::new),
            leftover: self.raw,
            peer_key,
            peer_addr: self.peer_addr,
            tunnel,
            epoch,
            slot,
            version,
            made: Instant::now(),
        })
    }
}

/// What [`connect`] says inside its `TimedOut` error: no answer to the connection
/// within the timeout (a host that is down, a firewall that drops), which tells it
/// apart from a peer that accepted the connection and then stalled.
#[derive(Debug)]
pub(crate) struct NoAnswer(pub(crate) std::time::Duration);

impl std::fmt::Display for NoAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no answer within {:?}", self.0)
    }
}

impl std::error::Error for NoAnswer {}

/// Connects TCP to `addr` (resolved now) with a timeout.
pub(crate) async fn connect(
    addr: &str,
    timeout: std::time::Duration,
) -> std::io::Result<TcpStream> {
    let attempt = async {
        let mut last = std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{addr} resolves to no address"),
        );
        for a in tokio::net::lookup_host(addr).await? {
            match TcpStream::connect(a).await {
                Ok(s) => return Ok(s),
                Err(e) => last = e,
            }
        }
        Err(last)
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            NoAnswer(timeout),
        )),
    }
}
