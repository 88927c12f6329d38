//! The router side of a worker: serve data channels. Each waits for `Open`, checks
//! the router's policy, connects the source, answers `Opened` or `OpenFailed`, relays,
//! and waits for the next `Open` when the stream ended cleanly.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use conduit_proto::{Message, Refusal, RefusalCode};
use futures::channel::oneshot;
use monoio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::RouterSpec;
use crate::channel::{Channel, ChannelError};
use crate::handoff::ChannelHandoff;
use crate::limit::{Throttle, held_note, open_connections};
use crate::net::Socket;
use crate::relay::{Relay, Side, Stop};
use crate::stats::{ConnCounters, ConnEntry, Meter, Rides};
use crate::worker::Core;

pub(crate) struct RouterCore {
    core: Rc<Core>,
    spec: Arc<RouterSpec>,
    /// Keeps refusals at the connection limit from flooding the log.
    refusals: Throttle,
}

impl RouterCore {
    pub(crate) fn new(core: Rc<Core>, spec: Arc<RouterSpec>) -> Self {
        Self {
            core,
            spec,
            refusals: Throttle::new(Duration::from_secs(1)),
        }
    }

    pub(crate) fn serve(self: &Rc<Self>, h: ChannelHandoff) {
        let peer = h.peer_addr;
        match Channel::adopt(h) {
            Ok(ch) => {
                monoio::spawn(self.clone().channel_loop(ch, peer));
            }
            Err(e) => warn!(%peer, "cannot adopt a channel: {e}"),
        }
    }

    async fn channel_loop(self: Rc<Self>, mut ch: Channel, peer: SocketAddr) {
        let client = ch.peer_key;
        loop {
            let idle = monoio::time::timeout(self.spec.idle_timeout, ch.next_message()).await;
            let target = match idle {
                Err(_) => {
                    debug!(%peer, "idle channel timed out");
                    let _ = ch
                        .send(&Message::Goodbye(Refusal::new(
                            RefusalCode::ShuttingDown,
                            "idle channel closed by the router",
                        )))
                        .await;
                    return;
                }
                Ok(Ok(Some(Message::Open { target }))) => target,
                Ok(Ok(Some(Message::Goodbye(_)))) | Ok(Ok(None)) => return,
                Ok(Ok(Some(other))) => {
                    warn!(%peer, %client, "protocol error: {} on an idle channel; closing it", other.name());
                    return;
                }
                Ok(Err(ChannelError::Closed)) => return,
                Ok(Err(e)) => {
                    warn!(%peer, %client, "channel error: {e}; closing it");
                    return;
                }
            };
            if self.core.stopping.get() {
                let _ = ch
                    .send(&Message::OpenFailed(Refusal::new(
                        RefusalCode::ShuttingDown,
                        "the router is shutting down",
                    )))
                    .await;
                return;
            }
            if !self.stream(&mut ch, peer, target).await {
                return;
            }
        }
    }

    /// Serves one stream; true when the channel can carry another.
    async fn stream(&self, ch: &mut Channel, peer: SocketAddr, target: String) -> bool {
        let core = &self.core;
        let id = core.next_conn_id();
        let client = ch.peer_key;
        core.stats.opened.fetch_add(1, Relaxed);

        let addrs = match self.spec.policy.resolve(&client, &target) {
            Ok(a) => a,
            Err(refusal) => {
                warn!(conn = id, %peer, %client, %target, "open refused: {}", refusal.message);
                core.stats.failed.fetch_add(1, Relaxed);
                let _ = ch.send(&Message::OpenFailed(refusal)).await;
                return false;
            }
        };
        let Some(permit) = self.spec.limit.try_acquire() else {
            let max = self.spec.limit.max();
            let message = format!(
                "the router's limit of {} is reached; \
                 raise --max-connections (now {max}) on the router to allow more",
                open_connections(max)
            );
            if let Some(held) = self.refusals.admit() {
                warn!(conn = id, %peer, %client, %target, "open refused: {message}{}", held_note(held));
            }
            core.stats.failed.fetch_add(1, Relaxed);
            let _ = ch
                .send(&Message::OpenFailed(Refusal::new(
                    RefusalCode::LimitReached,
                    message,
                )))
                .await;
            return false;
        };
        let source = match connect(&addrs, self.spec.connect_timeout).await {
            Ok(s) => s,
            Err(e) => {
                let message = format!("the router could not connect to source {target}: {e}");
                warn!(conn = id, %peer, %client, "{message}");
                core.stats.failed.fetch_add(1, Relaxed);
                let _ = ch
                    .send(&Message::OpenFailed(Refusal::new(
                        RefusalCode::SourceUnreachable,
                        message,
                    )))
                    .await;
                return false;
            }
        };
        if let Err(e) = ch.send(&Message::Opened).await {
            debug!(conn = id, "channel failed before the stream started: {e}");
            return false;
        }

        core.stats.active.fetch_add(1, Relaxed);
        let counters = Rc::new(ConnCounters::default());
        let (kill_tx, kill_rx) = oneshot::channel();
        core.conns.insert(
            id,
            ConnEntry {
                peer: Some(peer),
                target: target.clone(),
                started: Instant::now(),
                counters: counters.clone(),
                kill: Some(kill_tx),
                rides: Rides::Client(client, ch.tunnel.clone()),
            },
        );
        debug!(conn = id, %peer, %target, "stream opened");
        let Channel {
            sock,
            tls,
            decoder,
            backlog,
            ..
        } = &mut *ch;
        // Counters keep the user's point of view: "up" is toward the source.
        let outcome = Relay {
            side: Side::Router,
            plain: &source,
            chan: sock,
            tls,
            decoder,
            to_chan: Meter {
                conn: &counters.down,
                core: &core.stats.bytes_down,
            },
            to_plain: Meter {
                conn: &counters.up,
                core: &core.stats.bytes_up,
            },
            backlog,
        }
        .run(kill_rx)
        .await;
        core.stats.active.fetch_sub(1, Relaxed);
        core.conns.remove(id);
        drop(permit);
        let reusable = match outcome.stop {
            // What is already buffered belongs to the client's next stream.
            None => !ch.tls.borrow().peer_closed(),
            Some(stop) => {
                core.stats.failed.fetch_add(1, Relaxed);
                match &stop {
                    Stop::Plain(e) => {
                        warn!(conn = id, %target, "source connection failed: {e}");
                        ch.send_best_effort(&Message::Reset(Refusal::new(
                            RefusalCode::Aborted,
                            format!("the source connection failed: {e}"),
                        )))
                        .await;
                    }
                    Stop::Killed(why) => {
                        info!(conn = id, %peer, %target, "stream closed: {why}");
                        ch.send_best_effort(&Message::Reset(Refusal::new(
                            RefusalCode::Aborted,
                            format!("closed by the router: {why}"),
                        )))
                        .await;
                    }
                    Stop::PeerReset(r) => {
                        debug!(conn = id, "client aborted the stream: {}", r.message)
                    }
                    other => warn!(conn = id, %peer, "stream failed: {other}"),
                }
                source.abort();
                false
            }
        };
        debug!(
            conn = id,
            to_source = counters.up.get(),
            from_source = counters.down.get(),
            "stream closed"
        );
        reusable
    }
}

async fn connect(addrs: &[SocketAddr], timeout: std::time::Duration) -> std::io::Result<Socket> {
    let mut last =
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to connect to");
    for addr in addrs {
        match monoio::time::timeout(timeout, TcpStream::connect_addr(*addr)).await {
            Ok(Ok(s)) => {
                let s = Socket::new(s);
                s.set_nodelay();
                return Ok(s);
            }
            Ok(Err(e)) => last = e,
            Err(_) => {
                last = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connection timed out after {timeout:?}"),
                )
            }
        }
    }
    Err(last)
}
