//! One worker: a thread pinned to a core, running a single-threaded monoio runtime
//! that owns its listener, its connections, its channel pool and its counters.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::client::ClientCore;
use crate::handoff::{FromWorker, ToWorker};
use crate::router::RouterCore;
use crate::stats::{ConnTable, CoreStats, Rides};
use crate::usage::UsageBook;
use crate::{ClientSpec, RouterSpec, StreamIdle};

/// What every worker has, whatever its role.
pub(crate) struct Core {
    pub(crate) index: usize,
    /// How many workers there are (connection ids interleave across them).
    count: usize,
    pub(crate) stats: Arc<CoreStats>,
    pub(crate) conns: ConnTable,
    /// Per-client and per-source tallies (router side).
    pub(crate) usage: UsageBook,
    next_id: Cell<u64>,
    pub(crate) stopping: Cell<bool>,
}

impl Core {
    pub(crate) fn new(index: usize, count: usize, stats: Arc<CoreStats>) -> Self {
        Self {
            index,
            count: count.max(1),
            stats,
            conns: ConnTable::default(),
            usage: UsageBook::default(),
            next_id: Cell::new(0),
            stopping: Cell::new(false),
        }
    }

    /// A connection id unique in this process, small enough to type: ids interleave
    /// across cores (`id % workers` is the owning core), so the control plane knows
    /// where to send `Kill`.
    pub(crate) fn next_conn_id(&self) -> u64 {
        let n = self.next_id.get() + 1;
        self.next_id.set(n);
        n * self.count as u64 + self.index as u64
    }
}

/// The core a connection id belongs to, with `workers` workers.
pub fn core_of(conn_id: u64, workers: usize) -> usize {
    (conn_id % workers.max(1) as u64) as usize
}

/// What a client's worker receives users on.
pub(crate) enum Listen {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

impl Listen {
    pub(crate) fn local_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            Listen::Tcp(l) => l.local_addr().ok(),
            Listen::Udp(u) => u.local_addr().ok(),
        }
    }
}

/// The role a worker plays.
pub(crate) enum Role {
    Client {
        spec: Arc<ClientSpec>,
        listener: Listen,
        requests: flume::Sender<FromWorker>,
    },
    Router {
        spec: Arc<RouterSpec>,
    },
}

/// Answers the requests a worker serves running and draining alike (its
/// connections, its usage, closing one connection); gives back any other message.
fn answer(core: &Core, msg: ToWorker) -> Option<ToWorker> {
    match msg {
        ToWorker::Snapshot(reply) => {
            let _ = reply.send(core.conns.snapshot());
        }
        ToWorker::Usage(reply) => {
            let _ = reply.send(core.usage.report(&core.conns));
        }
        ToWorker::Kill(id) => {
            core.conns.kill(id, "closed by the operator");
        }
        other => return Some(other),
    }
    None
}

/// How a worker's stop went, for the line its process logs as it ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drained {
    /// Connections open when the stop began (UDP flows aside: they end at once, as
    /// nothing is in flight in a flow).
    pub open: usize,
    /// Of those, how many were still open at the deadline and were closed.
    pub closed: usize,
    /// The deadline was brought forward during the drain (a later stop: `kill
    /// --force`, a second stop signal), or there was no drain at all.
    pub cut_short: bool,
}

impl Drained {
    /// Every worker's stop, as one.
    pub fn sum(all: impl IntoIterator<Item = Drained>) -> Drained {
        all.into_iter().fold(Drained::default(), |a, b| Drained {
            open: a.open + b.open,
            closed: a.closed + b.closed,
            cut_short: a.cut_short || (b.cut_short && b.closed > 0),
        })
    }
}

/// The worker's main task: set up its role, then obey the control plane; returns
/// how its drain went.
pub(crate) async fn run(core: Rc<Core>, role: Role, inbox: flume::Receiver<ToWorker>) -> Drained {
    let mut client: Option<Rc<ClientCore>> = None;
    let mut router: Option<Rc<RouterCore>> = None;
    let stream_idle = match &role {
        Role::Client { spec, .. } => spec.stream_idle,
        Role::Router { spec } => spec.stream_idle,
    };
    match role {
        Role::Client {
            spec,
            listener,
            requests,
        } => match ClientCore::start(core.clone(), spec, listener, requests) {
            Ok(c) => client = Some(c),
            Err(e) => {
                warn!(core = core.index, "worker cannot listen: {e}");
                return Drained::default();
            }
        },
        Role::Router { spec } => router = Some(Rc::new(RouterCore::new(core.clone(), spec))),
    }
    if let Some(idle) = stream_idle {
        close_idle_streams(&core, idle);
    }
    debug!(core = core.index, "worker ready");

    let mut deadline = None;
    while let Ok(msg) = inbox.recv_async().await {
        let Some(msg) = answer(&core, msg) else {
            continue;
        };
        match msg {
            ToWorker::ClientChannel(h) => match &client {
                Some(c) => c.channel_arrived(h),
                None => warn!("client channel sent to a router worker; dropped"),
            },
            ToWorker::RouterChannel(h) => match &router {
                Some(r) => r.serve(h),
                None => warn!("router channel sent to a client worker; dropped"),
            },
            ToWorker::Flush => {
                if let Some(c) = &client {
                    c.flush_pool(false);
                }
            }
            ToWorker::Renew => {
                if let Some(c) = &client {
                    c.flush_pool(true);
                }
            }
            ToWorker::NoChannels(reason) => {
                if let Some(c) = &client {
                    c.channel_failed(reason);
                }
            }
            // Answered by `answer`.
            ToWorker::Snapshot(_) | ToWorker::Usage(_) | ToWorker::Kill(_) => {}
            ToWorker::LinkLost {
                epoch,
                reason,
                stalled_only,
            } => {
                let lost = |r: &Rides| {
                    matches!(r, Rides::Link(e)
                            if e.router == epoch.router && e.generation <= epoch.generation)
                };
                if stalled_only {
                    reap_stalled(&core, core.conns.riding(lost), reason);
                    continue;
                }
                let n = core.conns.kill_riding(lost, &reason);
                if n > 0 {
                    info!(
                        core = core.index,
                        count = n,
                        "closing user connections: {reason}"
                    );
                }
            }
            ToWorker::ClientLost {
                key,
                tunnel,
                reason,
                stalled_only,
            } => {
                let key = key.unwrap_or(crate::usage::NO_KEY);
                let lost = |r: &Rides| {
                    matches!(r, Rides::Client(k, t)
                        if *k == key && tunnel.as_deref().is_none_or(|want| **t == *want))
                };
                if stalled_only {
                    reap_stalled(&core, core.conns.riding(lost), reason);
                    continue;
                }
                let n = core.conns.kill_riding(lost, &reason);
                if n > 0 {
                    let tunnel = tunnel.as_deref().unwrap_or("(all)");
                    info!(core = core.index, count = n, client = %key, %tunnel, "closing streams: {reason}");
                }
            }
            ToWorker::Stop { deadline: d } => {
                deadline = Some(d);
                break;
            }
        }
    }

    // Stop: no new connections; let open ones finish until the deadline.
    core.stopping.set(true);
    if let Some(c) = &client {
        c.stop_accepting();
        c.flush_pool(true);
    }
    let stopped_at = Instant::now();
    let mut deadline = deadline.unwrap_or(stopped_at);
    let first_deadline = deadline;
    // UDP flows have nothing in flight to let finish: they end now (a tunnel's
    // next datagram starts a flow on a router that stays), not at the deadline.
    let flows = core.conns.kill_flows("stopping: a UDP flow is not drained");
    if flows > 0 {
        debug!(core = core.index, flows, "closed the UDP flows");
    }
    let open = core.conns.len().saturating_sub(flows);
    if open > 0 {
        info!(core = core.index, open, "draining open connections");
    }
    while core.conns.len() > 0 && Instant::now() < deadline {
        // Still obeyed while draining: an earlier deadline (a forced stop after a
        // graceful one), connection lists and closing one connection.
        while let Ok(msg) = inbox.try_recv() {
            if let Some(ToWorker::Stop { deadline: d }) = answer(&core, msg) {
                deadline = deadline.min(d);
            }
        }
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
    let closed = core.conns.len();
    let cut_short = first_deadline <= stopped_at || deadline < first_deadline;
    if closed > 0 {
        warn!(
            core = core.index,
            open = closed,
            "drain deadline reached; closing the connections still open"
        );
        core.conns.kill_all(if first_deadline <= stopped_at {
            "stopped without a drain (kill --force, or a drain timeout of 0)"
        } else if deadline < first_deadline {
            "a later stop (kill --force, or a shorter --drain-timeout) cut the drain short"
        } else {
            "the drain deadline passed (--drain-timeout) while stopping"
        });
        let cut = Instant::now() + Duration::from_secs(2);
        while core.conns.len() > 0 && Instant::now() < cut {
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    debug!(core = core.index, "worker stopped");
    Drained {
        open,
        closed,
        cut_short,
    }
}

/// Closes this core's streams that move nothing for the stream idle timeout, looking
/// every [`StreamIdle::every`] for as long as the worker runs (see
/// [`ConnTable::close_idle`](crate::stats::ConnTable::close_idle)).
fn close_idle_streams(core: &Rc<Core>, idle: StreamIdle) {
    let core = core.clone();
    let reason = format!(
        "idle: no byte moved either way for {}s (the stream idle timeout)",
        idle.timeout().as_secs()
    );
    monoio::spawn(async move {
        loop {
            monoio::time::sleep(idle.every()).await;
            let n = core.conns.close_idle(idle.looks(), &reason);
            if n > 0 {
                let secs = idle.timeout().as_secs();
                let streams = if n == 1 { "stream" } else { "streams" };
                info!(
                    core = core.index,
                    "closing {n} {streams} idle for {secs}s (the stream idle timeout)"
                );
            }
        }
    });
}

/// Stops each of `conns` (streams riding on a link whose far end closed it) that
/// waits to write and has moved no byte for [`STALLED_GRACE`](crate::STALLED_GRACE),
/// looking for [`REAP_FOR`] only. A stream still moving reaches its channel's end by
/// itself, and an idle one (waiting to read) sees it at once; one waiting on a user
/// (or source) that does not read never looks at its channel, and would otherwise
/// hold both for as long as that peer does not read.
fn reap_stalled(
    core: &Rc<Core>,
    conns: Vec<(u64, Rc<crate::stats::ConnCounters>)>,
    reason: String,
) {
    if conns.is_empty() {
        return;
    }
    let core = core.clone();
    monoio::spawn(async move {
        let start = Instant::now();
        let moved = |c: &crate::stats::ConnCounters| c.up.get() + c.down.get();
        let mut watched: Vec<_> = (conns.into_iter())
            .map(|(id, c)| {
                let m = moved(&c);
                (id, c, m, start)
            })
            .collect();
        let why = format!(
            "{reason}, and nothing moved on this stream for {}s",
            crate::STALLED_GRACE.as_secs()
        );
        while !watched.is_empty() && start.elapsed() < REAP_FOR {
            monoio::time::sleep(Duration::from_secs(1)).await;
            let now = Instant::now();
            watched.retain_mut(|(id, c, last, since)| {
                if !core.conns.contains(*id) {
                    return false;
                }
                // Moving, or not waiting to write (idle): not stalled, from now.
                if moved(c) != *last || c.writing.get() == 0 {
                    (*last, *since) = (moved(c), now);
                    return true;
                }
                if now.duration_since(*since) < crate::STALLED_GRACE {
                    return true;
                }
                core.conns.kill(*id, &why);
                false
            });
        }
    });
}

/// How long after its link was lost a stream is looked at by [`reap_stalled`]: one
/// that was moving stalls within moments if its far end is gone, having only what
/// was on its way.
const REAP_FOR: Duration = Duration::from_secs(120);
