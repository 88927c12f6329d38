//! The client side of a worker: accept users on this core's listener, give each a
//! handshaken channel from this core's pool, open the source, relay.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use conduit_proto::{Message, Refusal, RefusalCode};
use futures::channel::oneshot;
use futures::future::{Either, select};
use monoio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::ClientSpec;
use crate::channel::Channel;
use crate::handoff::{ChannelHandoff, FromWorker};
use crate::limit::{Permit, Throttle, held_note, open_connections};
use crate::net::Socket;
use crate::relay::{Relay, Side, Stop};
use crate::stats::{ConnCounters, ConnEntry, Meter, Rides};
use crate::sys::Peek;
use crate::worker::Core;

/// Idle channels of one core, and the users waiting for one (each is sent a channel,
/// or the reason none will come).
#[derive(Default)]
struct Pool {
    idle: VecDeque<Channel>,
    waiters: VecDeque<oneshot::Sender<Result<Channel, String>>>,
    /// Channels asked of the control plane and not yet delivered.
    requested: usize,
}

impl Pool {
    /// Gives `ch` to the longest-waiting user still waiting; returns it if none is.
    fn hand_to_waiter(&mut self, mut ch: Channel) -> Option<Channel> {
        while let Some(waiter) = self.waiters.pop_front() {
            match waiter.send(Ok(ch)) {
                Ok(()) => return None,
                Err(Ok(back)) => ch = back,
                Err(Err(_)) => return None, // never: what was sent is `Ok`
            }
        }
        Some(ch)
    }
}

pub(crate) struct ClientCore {
    core: Rc<Core>,
    spec: Arc<ClientSpec>,
    pool: RefCell<Pool>,
    requests: flume::Sender<FromWorker>,
    stop_accept: RefCell<Option<oneshot::Sender<()>>>,
    /// Consecutive accept failures, for back-off.
    accept_errors: Cell<u32>,
    /// Keeps refusals at the connection limit from flooding the log.
    refusals: Throttle,
}

impl ClientCore {
    pub(crate) fn start(
        core: Rc<Core>,
        spec: Arc<ClientSpec>,
        listener: std::net::TcpListener,
        requests: flume::Sender<FromWorker>,
    ) -> std::io::Result<Rc<Self>> {
        listener.set_nonblocking(monoio::utils::is_legacy())?;
        let listener = TcpListener::from_std(listener)?;
        let (tx, rx) = oneshot::channel();
        let me = Rc::new(Self {
            core,
            spec,
            pool: RefCell::new(Pool::default()),
            requests,
            stop_accept: RefCell::new(Some(tx)),
            accept_errors: Cell::new(0),
            refusals: Throttle::new(Duration::from_secs(1)),
        });
        me.refill();
        monoio::spawn(me.clone().accept_loop(listener, rx));
        Ok(me)
    }

    async fn accept_loop(self: Rc<Self>, listener: TcpListener, mut stop: oneshot::Receiver<()>) {
        loop {
            let accepted = {
                let accept = listener.accept();
                futures::pin_mut!(accept);
                match select(accept, &mut stop).await {
                    Either::Left((r, _)) => r,
                    Either::Right(_) => return,
                }
            };
            match accepted {
                Ok((stream, peer)) => {
                    self.accept_errors.set(0);
                    match self.spec.limit.try_acquire() {
                        Some(permit) => {
                            monoio::spawn(self.clone().serve_user(stream, peer, permit));
                        }
                        None => self.refuse(stream, peer),
                    }
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning on the error.
                    let n = self.accept_errors.get().saturating_add(1);
                    self.accept_errors.set(n);
                    let wait = Duration::from_millis(10u64 << n.min(7));
                    warn!(
                        core = self.core.index,
                        "accept failed: {e}; retrying in {wait:?}"
                    );
                    monoio::time::sleep(wait).await;
                }
            }
        }
    }

    /// The tunnel is at `--max-connections`: close the user's connection at once.
    fn refuse(&self, stream: TcpStream, peer: SocketAddr) {
        let user = Socket::new(stream);
        user.abort();
        drop(user);
        if let Some(held) = self.refusals.admit() {
            let max = self.spec.limit.max();
            warn!(
                core = self.core.index,
                %peer,
                tunnel = %self.spec.tunnel,
                "refused a user connection: the tunnel's limit of {} is reached; \
                 raise --max-connections (now {max}) to allow more{}",
                open_connections(max),
                held_note(held)
            );
        }
    }

    pub(crate) fn stop_accepting(&self) {
        if let Some(tx) = self.stop_accept.borrow_mut().take() {
            let _ = tx.send(());
        }
    }

    /// A handshaken channel arrived from the control plane.
    pub(crate) fn channel_arrived(&self, h: ChannelHandoff) {
        let mut pool = self.pool.borrow_mut();
        pool.requested = pool.requested.saturating_sub(1);
        let ch = match Channel::adopt(h) {
            Ok(ch) => ch,
            Err(e) => {
                warn!(core = self.core.index, "cannot adopt a channel: {e}");
                drop(pool);
                self.refill();
                return;
            }
        };
        let ch = match pool.hand_to_waiter(ch) {
            Some(ch) => ch,
            None => {
                drop(pool);
                self.publish();
                return;
            }
        };
        if self.core.stopping.get() {
            return;
        }
        pool.idle.push_back(ch);
        drop(pool);
        self.publish();
    }

    /// Drops every idle channel (they belong to a link that is gone or new) and
    /// refills. While the link is down, users waiting for a channel are let go too:
    /// none will come until it is back.
    pub(crate) fn flush_pool(&self) {
        let dropped = std::mem::take(&mut self.pool.borrow_mut().idle);
        if !dropped.is_empty() {
            debug!(
                core = self.core.index,
                count = dropped.len(),
                "dropped stale idle channels"
            );
        }
        drop(dropped);
        if self.core.stopping.get() {
            self.fail_waiters("the tunnel is stopping");
        } else if !self.spec.link.is_up() {
            self.fail_waiters("the router is unreachable (the tunnel is reconnecting)");
        }
        self.publish();
        if !self.core.stopping.get() {
            self.refill();
        }
    }

    /// Tells every user waiting for a channel that none is coming, and why.
    pub(crate) fn fail_waiters(&self, reason: &str) {
        let waiters = std::mem::take(&mut self.pool.borrow_mut().waiters);
        for w in waiters {
            let _ = w.send(Err(reason.to_owned()));
        }
    }

    fn publish(&self) {
        let idle = self.pool.borrow().idle.len() as u64;
        self.core.stats.idle_channels.store(idle, Relaxed);
    }

    /// Asks the control plane for channels until idle + requested covers the pool
    /// size plus the users waiting.
    fn refill(&self) {
        let mut pool = self.pool.borrow_mut();
        let want = self.spec.pool_size + pool.waiters.len();
        let have = pool.idle.len() + pool.requested;
        if have < want {
            let count = want - have;
            pool.requested += count;
            let _ = self.requests.send(FromWorker::WantChannels {
                core: self.core.index,
                count,
            });
        }
    }

    fn usable(&self, ch: &Channel) -> bool {
        ch.epoch == self.spec.link.epoch()
            && ch.idle_since.elapsed() < self.spec.max_idle
            && ch.sock.peek() == Peek::Quiet
    }

    /// A live channel for a new user connection.
    async fn channel(&self) -> Result<Channel, String> {
        loop {
            let next = self.pool.borrow_mut().idle.pop_front();
            match next {
                Some(ch) if self.usable(&ch) => {
                    self.publish();
                    self.refill();
                    return Ok(ch);
                }
                Some(_) => continue,
                None => break,
            }
        }
        self.publish();
        if !self.spec.link.is_up() {
            self.refill();
            return Err("the router is unreachable (the tunnel is reconnecting)".into());
        }
        let (tx, rx) = oneshot::channel();
        self.pool.borrow_mut().waiters.push_back(tx);
        self.refill();
        match monoio::time::timeout(self.spec.wait_for_channel, rx).await {
            Ok(Ok(given)) => given,
            Ok(Err(_)) => Err("the tunnel is stopping".into()),
            Err(_) => Err(format!(
                "no channel to the router within {:?}",
                self.spec.wait_for_channel
            )),
        }
    }

    async fn serve_user(self: Rc<Self>, stream: TcpStream, peer: SocketAddr, permit: Permit) {
        let core = &self.core;
        let id = core.next_conn_id();
        let user = Socket::new(stream);
        user.set_nodelay();
        core.stats.opened.fetch_add(1, Relaxed);
        core.stats.active.fetch_add(1, Relaxed);
        let counters = Rc::new(ConnCounters::default());
        let (kill_tx, kill_rx) = oneshot::channel();
        core.conns.insert(
            id,
            ConnEntry {
                peer: Some(peer),
                target: self.spec.target.clone(),
                started: Instant::now(),
                counters: counters.clone(),
                kill: Some(kill_tx),
                rides: Rides::Nothing,
            },
        );
        debug!(conn = id, %peer, tunnel = %self.spec.tunnel, "user connection opened");

        let failed = match self.run_user(id, &user, &counters, kill_rx).await {
            Ok(()) => false,
            Err(reason) => {
                warn!(conn = id, %peer, tunnel = %self.spec.tunnel, "user connection closed: {reason}");
                user.abort();
                true
            }
        };
        if failed {
            core.stats.failed.fetch_add(1, Relaxed);
        }
        core.stats.active.fetch_sub(1, Relaxed);
        core.conns.remove(id);
        drop(permit);
        debug!(
            conn = id,
            up = counters.up.get(),
            down = counters.down.get(),
            "user connection closed"
        );
    }

    async fn run_user(
        &self,
        id: u64,
        user: &Socket,
        counters: &ConnCounters,
        kill: oneshot::Receiver<String>,
    ) -> Result<(), String> {
        let mut ch = self.channel().await?;
        self.core.conns.set_rides(id, Rides::Link(ch.epoch));
        ch.send(&Message::Open {
            target: self.spec.target.clone(),
        })
        .await
        .map_err(|e| format!("the channel to the router failed: {e}"))?;
        let Channel {
            sock,
            tls,
            decoder,
            backlog,
            ..
        } = &mut ch;
        let outcome = Relay {
            side: Side::Client,
            plain: user,
            chan: sock,
            tls,
            decoder,
            backlog,
            to_chan: Meter {
                conn: &counters.up,
                core: &self.core.stats.bytes_up,
            },
            to_plain: Meter {
                conn: &counters.down,
                core: &self.core.stats.bytes_down,
            },
        }
        .run(kill)
        .await;
        match outcome.stop {
            None => {
                if ch.is_clean() && !self.core.stopping.get() {
                    self.reuse(ch);
                }
                Ok(())
            }
            Some(stop) => {
                let reason = match &stop {
                    Stop::OpenFailed(r) => {
                        format!("the router could not open the source: {}", r.message)
                    }
                    Stop::Plain(e) => {
                        tell_peer(&ch, "the user's connection failed").await;
                        format!("user connection failed: {e}")
                    }
                    Stop::Killed(why) => {
                        tell_peer(&ch, &format!("closed by the client: {why}")).await;
                        why.clone()
                    }
                    other => other.to_string(),
                };
                Err(reason)
            }
        }
    }

    /// Puts a channel that finished a stream cleanly back in the pool.
    fn reuse(&self, ch: Channel) {
        let mut pool = self.pool.borrow_mut();
        if pool.idle.len() >= self.spec.pool_size.max(1) * 4 {
            return; // plenty idle already; let this one close
        }
        let Some(mut ch) = pool.hand_to_waiter(ch) else {
            return;
        };
        ch.idle_since = Instant::now();
        pool.idle.push_front(ch);
        drop(pool);
        self.publish();
    }
}

/// Best effort: tell the router this stream is aborted, so it resets the source.
async fn tell_peer(ch: &Channel, why: &str) {
    ch.send_best_effort(&Message::Reset(Refusal::new(RefusalCode::Aborted, why)))
        .await;
}
