//! A user's TCP connection on the client, from accept to close: a channel from the
//! pool, the `Open` sent with the first bytes, then the relay (TLS records in
//! userspace, spliced plain frames, or kernel TLS), and the channel back to the pool
//! when the stream ended cleanly.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use conduit_proto::frame::Header;
use conduit_proto::{Message, ProtoError};
use futures::channel::oneshot;
use futures::future::{Either, select, try_join};
use monoio::net::TcpStream;
use tracing::{debug, info, warn};

use super::{ClientCore, Link, channel_failed, open_failed, stopped, tell_peer, unserved};
use crate::channel::{Channel, Held};
use crate::limit::{Permit, held_note};
use crate::net::Socket;
use crate::offload;
use crate::plain::{Ending, PlainChannel, Wire, frames_in, frames_out, pump, read_frame};
use crate::relay::{Relay, Side, Stop};
use crate::stats::{Closing, ConnCounters, ConnEntry, ErrorKind, KillReceiver, Meter, Rides};

impl ClientCore {
    /// A user's connection, from accept to close. The setup is done here and the
    /// task captures only what it uses: an `async fn` would keep its arguments (the
    /// accepted stream among them) in slots of their own for the connection's life.
    pub(super) fn serve_user(
        self: Rc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        permit: Permit,
    ) -> Option<impl Future<Output = ()>> {
        let id = self.core.next_conn_id();
        let user = match Socket::new(stream) {
            Ok(u) => u,
            Err(e) => {
                warn!(%peer, "cannot set up a user connection: {e}");
                return None;
            }
        };
        Some(async move {
            let core = &self.core;
            user.tune(&self.spec.sockets);
            // Until the stream ends cleanly: if this process dies, the user sees a
            // reset, not the end of a stream that was cut short.
            user.reset_on_close();
            let (counters, kill_rx, started) = self.open_entry(id, peer, false);
            debug!(conn = id, %peer, tunnel = %self.spec.tunnel, "user connection opened");

            let ran = match self.proxy_header(&user, peer) {
                Ok(header) => self.run_user(id, &user, &counters, kill_rx, header).await,
                Err(e) => Err((
                    ErrorKind::Plain,
                    format!("cannot write its PROXY protocol header: {e}"),
                )),
            };
            match &ran {
                Ok(()) => {
                    user.close_orderly();
                    self.spec.link.stream_served(started);
                }
                Err((ErrorKind::OpenFailed, reason)) => {
                    let router = self.core.conns.router_of(id);
                    self.spec.link.open_refused(router, reason);
                }
                Err(_) => {}
            }
            if let Err((kind, reason)) = ran {
                let held = if unserved(kind) {
                    self.unserved.admit()
                } else {
                    Some(0)
                };
                // A user that resets its own connection is routine (browsers do):
                // nothing for the operator to fix, noted, not warned about. One left
                // idle past the timeout is the end of a connection as any other
                // (each look sums them up at info).
                match held {
                    Some(_) if kind == ErrorKind::IdleTimeout => {
                        debug!(conn = id, %peer, tunnel = %self.spec.tunnel, "user connection closed: {reason}");
                    }
                    Some(_) if kind == ErrorKind::Plain => {
                        info!(conn = id, %peer, tunnel = %self.spec.tunnel, "user connection closed: {reason}");
                    }
                    Some(held) => {
                        warn!(conn = id, %peer, tunnel = %self.spec.tunnel, "user connection closed: {reason}{}", held_note(held));
                    }
                    None => {}
                }
                user.abort();
                core.stats.fail(kind);
            }
            self.close_entry(id, started);
            drop(permit);
            debug!(
                conn = id,
                up = counters.up.get(),
                down = counters.down.get(),
                secs = started.elapsed().as_secs_f64(),
                "user connection closed"
            );
        })
    }

    /// Counts a user connection (or UDP flow, `datagrams`) as open and enters it in
    /// this core's table: its counters, the receiver of a kill order, and when it
    /// started.
    pub(super) fn open_entry(
        &self,
        id: u64,
        peer: SocketAddr,
        datagrams: bool,
    ) -> (Rc<ConnCounters>, KillReceiver, Instant) {
        let core = &self.core;
        core.stats.opened.fetch_add(1, Relaxed);
        core.stats.open_one();
        let counters = Rc::new(ConnCounters::default());
        let (kill_tx, kill_rx) = oneshot::channel();
        let entry = ConnEntry::new(
            Some(peer),
            self.target.clone(),
            counters.clone(),
            kill_tx,
            datagrams,
        );
        let started = entry.started;
        core.conns.insert(id, entry);
        (counters, kill_rx, started)
    }

    /// The end of [`Self::open_entry`]'s connection: no longer open, its duration
    /// observed, out of the table.
    pub(super) fn close_entry(&self, id: u64, started: Instant) {
        let core = &self.core;
        core.stats.active.fetch_sub(1, Relaxed);
        core.stats.durations.observe(started.elapsed());
        core.conns.remove(id);
    }

    /// The PROXY protocol header this stream starts with, if the tunnel sends one:
    /// from the user's address to the tunnel's that it reached.
    fn proxy_header(&self, user: &Socket, peer: SocketAddr) -> std::io::Result<Option<Vec<u8>>> {
        let Some(version) = self.spec.proxy_protocol else {
            return Ok(None);
        };
        version.header(peer, user.local_addr()?).map(Some)
    }

    /// `header`: the PROXY protocol header to send ahead of the user's bytes, in the
    /// stream's first payload, whichever way the stream goes.
    pub(super) async fn run_user(
        &self,
        id: u64,
        user: &Socket,
        counters: &ConnCounters,
        kill: KillReceiver,
        header: Option<Vec<u8>>,
    ) -> Result<(), (ErrorKind, String)> {
        // Both boxed: the relay below may run for days, and a task's size is that of
        // its largest state.
        let link = Box::pin(self.channel()).await?;
        self.core.conns.set_rides(id, Rides::Link(link.epoch()));
        let _riding = self.spec.link.ride(link.epoch().router);
        let mut ch = match link {
            Link::Tls(ch) => ch,
            Link::Plain(ch) => {
                return Box::pin(self.run_plain(user, counters, kill, ch, header)).await;
            }
        };
        if self.spec.sockets.kernel_tls
            && ch.version >= conduit_proto::version::KERNEL_TLS
            && self.kernel_declined.get() != Some(ch.epoch)
            && ch.is_clean()
            && offload::attach(&ch.sock)
        {
            return Box::pin(self.run_kernel(id, user, counters, kill, ch, header)).await;
        }
        let mut frames = Message::Open {
            target: self.spec.target.clone(),
        }
        .to_frame();
        if let Some(h) = header {
            frames.extend_from_slice(&data_frame(&h));
        }
        ch.send_frames(frames).await.map_err(channel_failed)?;
        let watch = counters.watch([user.raw_fd(), ch.sock.raw_fd()]);
        let outcome = self.relay(user, counters, &mut ch).run(kill).await;
        drop(watch);
        self.finish(ch, outcome.stop, "the user's connection").await
    }

    /// The userspace relay of a stream opened on a TLS channel.
    pub(super) fn relay<'a>(
        &'a self,
        user: &'a Socket,
        counters: &'a ConnCounters,
        ch: &'a mut Channel,
    ) -> Relay<'a> {
        Relay {
            side: Side::Client,
            plain: user,
            ch,
            // What is sent before the router's `Opened` counts once it comes.
            to_chan: Meter {
                conn: &counters.up,
                core: &self.core.stats.bytes_up,
                limit: self.spec.bandwidth.as_ref().map(|b| &b.up),
                unanswered: Some(&counters.unanswered),
            },
            to_plain: Meter {
                conn: &counters.down,
                core: &self.core.stats.bytes_down,
                limit: self.spec.bandwidth.as_ref().map(|b| &b.down),
                unanswered: None,
            },
            chunk: self.spec.sockets.read_chunk,
            writing: &counters.writing,
        }
    }

    /// After a stream or flow on a TLS channel: back to the pool if it ended cleanly;
    /// else the reason, with the router told where it does not know (`user` names
    /// the user's side in messages).
    pub(super) async fn finish(
        &self,
        ch: Box<Channel>,
        stop: Option<Stop>,
        user: &str,
    ) -> Result<(), (ErrorKind, String)> {
        let Some(stop) = stop else {
            if ch.is_clean() && !self.core.stopping.get() {
                self.reuse(Link::Tls(ch));
            }
            return Ok(());
        };
        let (reason, notice) = stopped(&stop, user);
        if let Some(reset) = notice {
            tell_peer(&ch, reset).await;
        }
        Err((stop.kind(), reason))
    }

    /// One stream over a plain channel: `Open`, then splice both ways at once; the
    /// router's `Opened` (or `OpenFailed`) precedes its bytes. A channel that frames
    /// its streams (protocol 5) goes back to the pool once both directions ended.
    pub(super) async fn run_plain(
        &self,
        user: &Socket,
        counters: &ConnCounters,
        kill: KillReceiver,
        mut ch: Box<PlainChannel>,
        header: Option<Vec<u8>>,
    ) -> Result<(), (ErrorKind, String)> {
        let wire = ch.wire();
        let leftover = std::mem::take(&mut ch.leftover);
        let mut first = Message::Open {
            target: self.spec.target.clone(),
        }
        .to_frame();
        match (header, wire) {
            (Some(h), Wire::Framed) => first.extend_from_slice(&data_frame(&h)),
            // Raw bytes after `Open`, ended by FIN (protocol 4 and older).
            (Some(h), _) => first.extend_from_slice(&h),
            (None, _) => {}
        }
        ch.sock.send_all(&first).await.map_err(channel_failed)?;
        let sock = &ch.sock;
        let opened = async {
            let (reply, rest) = read_frame(sock, leftover)
                .await
                .map_err(|e| Stop::Channel(std::io::Error::other(e.to_string())))?;
            match reply {
                Message::Opened => Ok(rest),
                Message::OpenFailed(r) => Err(Stop::OpenFailed(r)),
                other => Err(Stop::Proto(ProtoError::Unexpected {
                    got: other.name(),
                    expected: "Opened or OpenFailed",
                })),
            }
        };
        let reusable = self
            .splice_both(user, counters, kill, sock, wire, opened)
            .await?;
        if reusable && !self.core.stopping.get() {
            self.reuse(Link::Plain(ch));
        }
        Ok(())
    }

    /// Splices a stream both ways between the user and a channel that carries raw
    /// payload (`wire` says how), until both directions end, one fails or `kill`
    /// fires. Bytes toward the user wait for `opened`, which yields what arrived
    /// with the router's answer. Whether the channel can carry another stream.
    pub(super) async fn splice_both(
        &self,
        user: &Socket,
        counters: &ConnCounters,
        kill: KillReceiver,
        sock: &Socket,
        wire: Wire,
        opened: impl Future<Output = Result<Vec<u8>, Stop>>,
    ) -> Result<bool, (ErrorKind, String)> {
        if wire == Wire::Plain {
            // Raw both ways, ended by FIN alone.
            sock.reset_on_close();
        }
        let stats = &self.core.stats;
        let limit = self.spec.bandwidth.as_ref();
        // What is sent before the router's answer counts once it opened the source.
        let to_router = Meter {
            conn: &counters.up,
            core: &stats.bytes_up,
            limit: limit.map(|b| &b.up),
            unanswered: Some(&counters.unanswered),
        };
        let up = async {
            if wire == Wire::Framed {
                Ok(frames_out(user, sock, to_router).await? == Ending::Eof)
            } else {
                pump(user, sock, false, wire, to_router)
                    .await
                    .map(|()| false)
            }
        };
        let down = async {
            let rest = opened.await?;
            to_router.opened();
            let to_user = Meter {
                conn: &counters.down,
                core: &stats.bytes_down,
                limit: limit.map(|b| &b.down),
                unanswered: None,
            };
            if wire == Wire::Framed {
                let (ending, after) = frames_in(sock, user, &rest, to_user).await?;
                // The router sends nothing after its `Eof` until the next `Open`: a
                // channel that did is not reused.
                return Ok(ending == Ending::Eof && after.is_empty());
            }
            to_user.send_all(user, &rest).await.map_err(Stop::Plain)?;
            pump(sock, user, true, wire, to_user).await.map(|()| false)
        };
        let both = try_join(up, down);
        futures::pin_mut!(both);
        let watch = counters.watch([user.raw_fd(), sock.raw_fd()]);
        let stop = match select(both, kill).await {
            Either::Left((Ok((up, down)), _)) => {
                let reusable = up && down;
                if !reusable {
                    sock.close_orderly();
                }
                return Ok(reusable);
            }
            Either::Left((Err(stop), _)) => stop,
            Either::Right((why, _)) => {
                Stop::Killed(why.unwrap_or_else(|_| Closing::killed("closed by the data plane")))
            }
        };
        drop(watch);
        sock.abort();
        let kind = stop.kind();
        let why = match stop {
            Stop::OpenFailed(r) => open_failed(&r),
            Stop::Killed(closing) => closing.why,
            Stop::Plain(e) => format!("the user's connection failed: {e}"),
            // Spliced streams carry no `Reset`: the router resets the channel itself.
            Stop::Channel(e) if e.kind() == std::io::ErrorKind::ConnectionReset => format!(
                "the channel to the router was reset: {e} (a router resets it when the source \
                 fails or it aborts the stream; if it still runs, its log says why)"
            ),
            other => other.to_string(),
        };
        Err((kind, why))
    }

    /// One stream offered to kernel TLS: `OpenKernel`, then the router's answer;
    /// `OpenedKernel` moves the keys to the kernel and splices both ways, `Opened`
    /// (a router that cannot) goes on in userspace. See `offload.rs`.
    pub(super) async fn run_kernel(
        &self,
        id: u64,
        user: &Socket,
        counters: &ConnCounters,
        mut kill: KillReceiver,
        mut ch: Box<Channel>,
        header: Option<Vec<u8>>,
    ) -> Result<(), (ErrorKind, String)> {
        ch.send(Message::OpenKernel {
            target: self.spec.target.clone(),
        })
        .await
        .map_err(channel_failed)?;
        let answer = match select(Box::pin(offload::answer(&mut ch)), &mut kill).await {
            Either::Left((answer, _)) => Ok(answer),
            Either::Right((why, _)) => {
                Err(why.unwrap_or_else(|_| Closing::killed("closed by the data plane")))
            }
        };
        let answer = match answer {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                ch.sock.abort();
                return Err(channel_failed(e));
            }
            Err(closing) => {
                ch.sock.abort();
                return Err((closing.kind, closing.why));
            }
        };
        match answer {
            Message::OpenedKernel => {}
            Message::Opened => {
                // The router keeps TLS in userspace: so does this stream, and so
                // will the next ones on this link.
                if self.kernel_declined.replace(Some(ch.epoch)) != Some(ch.epoch) {
                    debug!(
                        conn = id,
                        "the router keeps TLS in userspace; kernel TLS not offered again on this link"
                    );
                }
                ch.backlog.push_back(Held::Msg(Message::Opened));
                if let Some(h) = header {
                    ch.send_frames(data_frame(&h))
                        .await
                        .map_err(channel_failed)?;
                }
                let watch = counters.watch([user.raw_fd(), ch.sock.raw_fd()]);
                let outcome = self.relay(user, counters, &mut ch).run(kill).await;
                drop(watch);
                return self.finish(ch, outcome.stop, "the user's connection").await;
            }
            Message::OpenFailed(r) => {
                let why = open_failed(&r);
                return Err((ErrorKind::OpenFailed, why));
            }
            other => {
                let e = ProtoError::Unexpected {
                    got: other.name(),
                    expected: "OpenedKernel, Opened or OpenFailed",
                };
                return Err((ErrorKind::Channel, format!("protocol error: {e}")));
            }
        }
        // The slot stays: the stream still holds a channel's worth of its router.
        let Channel {
            sock, tls, slot, ..
        } = *ch;
        let _slot = slot;
        if let Err(e) = offload::hand_over(&sock, tls.into_inner()) {
            sock.abort();
            return Err((ErrorKind::Channel, e));
        }
        self.core.stats.kernel_tls.fetch_add(1, Relaxed);
        debug!(conn = id, "stream relayed through kernel TLS");
        if let Some(h) = header {
            // The kernel seals it like the payload that follows.
            if let Err(e) = sock.send_all(&h).await {
                sock.abort();
                return Err(channel_failed(e));
            }
        }
        let nothing_yet = async { Ok(Vec::new()) };
        self.splice_both(user, counters, kill, &sock, Wire::KernelTls, nothing_yet)
            .await
            .map(|_| ())
    }
}

/// `payload` as one `Data` frame.
fn data_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = Header::data(payload.len()).to_vec();
    f.extend_from_slice(payload);
    f
}
