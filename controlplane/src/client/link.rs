//! The router link: the control channel kept up with back-off, heartbeats that
//! notice a dead router, failback to an earlier router, and the rotations asked for
//! while it is up.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use conduit_proto::{ChannelKind, Message, PublicKey, Refusal, RefusalCode};
use rand::Rng;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tracing::{debug, error, info, warn};

use super::open::{open_at, open_over};
use super::rotation::{Rotation, goodbye, rotate};
use super::standby::Standby;
use super::{LinkStatus, Rotated, RotationTurn, RotationsRx, Shared, SharedRotations};
use crate::Error;
use crate::backoff::Backoff;
use crate::wire::{self, Wire, WireError};

/// The longest wait before trying the router link again when it failed for want of
/// file descriptors.
pub(super) const OUT_OF_DESCRIPTORS_RETRY: Duration = Duration::from_secs(1);

/// Keeps the control channel up; returns a fatal error, or `None` once `stop` is set
/// (after saying goodbye to the router).
pub(super) async fn control_loop(
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    rotations: RotationsRx,
) -> Option<Error> {
    let rotations: SharedRotations = Arc::new(tokio::sync::Mutex::new(rotations));
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
    let mut attempt = 0u32;
    // Routers tried since the last back-off: each is tried once before waiting.
    let mut tried = 0usize;
    // The control channel of an earlier router that answered again, to move to.
    let mut back: Option<Preferred> = None;
    // Why each router refused this tunnel, since the link was last up.
    let mut refused: Vec<Option<String>> = vec![None; shared.routers.len()];
    // Which routers' last attempt found nothing listening (knocked on during the
    // back-off), and a connection one accepted meanwhile, for the attempt.
    let mut no_listener = vec![false; shared.routers.len()];
    let mut knocked = None;
    loop {
        // Both before any connection: refusals of the old keys say nothing about
        // the new ones.
        if shared.pick_up_key_file() | shared.reread_pins() {
            refused.fill(None);
        }
        let opened = match back.take() {
            Some(p) => {
                // The router left is fine, just no longer in use.
                let standby = LinkStatus::Standby {
                    since: SystemTime::now(),
                    serving: shared.routers[p.index].clone(),
                };
                shared.router_link(shared.at(), standby);
                shared.at.store(p.index, Ordering::Relaxed);
                shared.versions[p.index].store(p.version, Ordering::Relaxed);
                Ok(p.wire)
            }
            None => open_over(&shared, ChannelKind::Control, shared.at(), knocked.take())
                .await
                .map(|(w, version)| {
                    shared.versions[shared.at()].store(version, Ordering::Relaxed);
                    w
                }),
        };
        match opened {
            Ok(mut ctl) => {
                shared.admitted();
                attempt = 0;
                tried = 0;
                refused.fill(None);
                no_listener.fill(false);
                backoff.reset();
                let epoch = shared.link.switched_to(shared.at());
                shared.dp.flush_pools();
                let router = shared.router().to_owned();
                let connected = LinkStatus::Connected {
                    since: SystemTime::now(),
                    router: router.clone(),
                    cipher: ctl.cipher().to_owned(),
                };
                shared.router_link(shared.at(), connected.clone());
                shared.status.send_replace(connected);
                info!(tunnel = %shared.name, %router, cipher = %ctl.cipher(), "connected to router");
                let mut probe = Probe::start(&shared);
                let at = shared.at();
                let standby = Standby::start(&shared, at);
                let end = heartbeat(&shared, at, &mut ctl, &mut stop, &rotations, &mut probe).await;
                probe.stop();
                standby.stop();
                let why = &end.why;
                if end.again {
                    // The link is fine: make it again at once (with the new key, or
                    // to the earlier router). Users keep their streams (a clean
                    // goodbye leaves them to finish), and the pool is refilled with
                    // channels of the new link on connect.
                    info!(tunnel = %shared.name, %router, "{why}");
                    if let Some(p) = &end.back {
                        // Streams left on the router the link leaves: still watched.
                        let to = shared.routers[p.index].clone();
                        tokio::spawn(watch_leftovers(
                            shared.clone(),
                            ctl,
                            Leftovers { at, epoch, to },
                            stop.clone(),
                        ));
                    }
                    back = end.back;
                    continue;
                }
                // A router that stopped answering would most likely hold the next
                // attempt for its whole handshake timeout, and one that said goodbye
                // (it is shutting down) is going away: the next router that answers
                // takes over at once instead, and this one is tried again in its
                // turn. A router that closed the link or failed it is tried again
                // first: it fails at once if it is gone, and it may be back. Users
                // waiting for a channel wait for the next router's (set before the
                // link is down, so that none is turned away in between).
                let move_now =
                    (end.silent || end.goodbye) && shared.routers.len() > 1 && !*stop.borrow();
                shared.link.set_moving(move_now);
                shared.link.lost_all();
                if *stop.borrow() {
                    return None;
                }
                shared.router_link(at, retrying(why));
                // No router serves the tunnel until the next attempt succeeds:
                // `status` and `health` say so meanwhile, not "connected".
                shared.status.send_replace(retrying(&format!(
                    "lost the link to router {router}: {why}"
                )));
                // Idle channels of the lost link are dead or soon will be: close them
                // now rather than hold them half-closed until the link is back.
                shared.dp.flush_pools();
                if end.silent {
                    // A router that stopped answering (frozen, or behind a link that
                    // drops everything) sends no reset either: the data channels would
                    // wait forever. Their users are told now.
                    shared
                        .dp
                        .link_lost(epoch, &format!("the router link was lost: {why}"));
                } else if !end.goodbye {
                    // Closed without a goodbye: the router is most likely gone. Its
                    // channels end by themselves, but a stream waiting on a user who
                    // does not read never looks at its channel.
                    shared
                        .dp
                        .link_gone(epoch, &format!("the router link was lost: {why}"));
                }
                if move_now {
                    let next = shared.next_up_after(at);
                    shared.at.store(next, Ordering::Relaxed);
                    let next = &shared.routers[next];
                    warn!(tunnel = %shared.name, %router, "lost the router link: {why}; trying router {next} at once");
                } else {
                    warn!(tunnel = %shared.name, %router, "lost the router link: {why}; reconnecting");
                }
            }
            Err(e) => {
                // Down, if it was up until a link made again at once (a rotation,
                // a withdrawn key) failed: users are turned away, not left waiting.
                shared.link.lost_all();
                if shared.fall_back(shared.at(), &e) {
                    continue;
                }
                if shared.link.stop_moving() {
                    // The router taken over from the one that stopped answering
                    // failed too: the users waiting for its channels are let go (the
                    // next attempt may take a handshake timeout, or a back-off).
                    shared.dp.flush_pools();
                }
                let failed_at = shared.at();
                shared.router_link(failed_at, retrying(&e.to_string()));
                no_listener[failed_at] = e.found_no_listener();
                let refusal = !e.is_retryable();
                if refusal {
                    // Refused by this router. With several, the others may still
                    // serve: this one is tried again in later rounds (its operator
                    // may fix it). Only a tunnel no router has admitted yet stops,
                    // once every router refused it.
                    refused[shared.at()] = Some(e.to_string());
                    shared.link.router_refused(shared.at(), e.to_string());
                    if refused.iter().all(Option::is_some) && !shared.been_up() {
                        let e = match refused.len() {
                            1 => e,
                            _ => Error::Authentication(format!(
                                "every router refused this tunnel:{}",
                                refused
                                    .iter()
                                    .flatten()
                                    .map(|why| format!("\n  {why}"))
                                    .collect::<String>()
                            )),
                        };
                        shared.status.send_replace(LinkStatus::Refused {
                            reason: e.to_string(),
                        });
                        return Some(e);
                    }
                }
                // A refusal is the operator's to fix: an error, not a warning.
                let say = |line: String| {
                    if refusal {
                        error!(tunnel = %shared.name, "{line}");
                    } else {
                        warn!(tunnel = %shared.name, "{line}");
                    }
                };
                attempt += 1;
                if tried + 1 < shared.routers.len() {
                    // Another router may answer: try it now, and wait only once
                    // every one has failed.
                    tried += 1;
                    // No router serves the tunnel meanwhile (a link made again at
                    // once, or the one lost, failed): said. Not during the first
                    // round, still connecting: `start` takes the first "retrying"
                    // for the end of the round (the tunnel retries in the background).
                    shared.status.send_if_modified(|now| {
                        if *now == LinkStatus::Connecting {
                            return false;
                        }
                        *now = LinkStatus::Retrying {
                            attempt,
                            next_at: SystemTime::now(),
                            error: e.to_string(),
                            knocking: false,
                        };
                        true
                    });
                    // The first router standing by (answering its checks) if any,
                    // else the next in line: not one known to fail.
                    let next = shared.next_up_after(shared.at());
                    shared.at.store(next, Ordering::Relaxed);
                    let next = &shared.routers[next];
                    say(format!("{e}; trying router {next}"));
                    continue;
                }
                tried = 0;
                if shared.routers.len() > 1 {
                    // The round starts again with the next in line (the first
                    // router after the last).
                    shared.next_router();
                }
                let mut wait = backoff.next_wait();
                if e.out_of_descriptors() {
                    // Nothing is wrong with the router: descriptors come back as
                    // connections close, and a link is wanted as soon as they do.
                    wait = wait.min(OUT_OF_DESCRIPTORS_RETRY);
                }
                // The others' refusals too: the operator's to fix, where this error
                // may be only a router that is down.
                let others: Vec<&str> = (refused.iter().enumerate())
                    .filter(|&(i, _)| i != failed_at)
                    .filter_map(|(_, r)| r.as_deref())
                    .collect();
                let error = match others[..] {
                    [] => e.to_string(),
                    _ => format!("{e}; and refused: {}", others.join("; ")),
                };
                let knock: Vec<usize> = (0..shared.routers.len())
                    .filter(|&i| no_listener[i])
                    .collect();
                shared.status.send_replace(LinkStatus::Retrying {
                    attempt,
                    next_at: SystemTime::now() + wait,
                    error,
                    knocking: !knock.is_empty(),
                });
                say(format!("{e}; retrying in {:.1}s", wait.as_secs_f64()));
                // `start` returns on that line: the tunnel runs in the background now.
                shared.retries_in_background();
                match back_off(&shared, &knock, wait, &mut stop).await {
                    Waited::Stopped => return None,
                    Waited::Over => {}
                    Waited::Answered { index, tcp } => {
                        shared.at.store(index, Ordering::Relaxed);
                        knocked = Some(tcp);
                    }
                }
            }
        }
    }
}

/// About how often (with jitter) the routers' ports are tried during a back-off
/// after nothing listened there (see [`back_off`]).
pub(super) const KNOCK_EVERY: Duration = Duration::from_secs(1);

/// How a back-off ended.
pub(super) enum Waited {
    /// `stop` was set.
    Stopped,
    /// The wait is over: attempt again.
    Over,
    /// Router `index`'s port accepted `tcp`: attempt at once, over it.
    Answered { index: usize, tcp: TcpStream },
}

/// Waits `wait` before the next attempt, or less: the ports of `knock` (indexes of
/// routers whose last attempt found nothing listening, see
/// [`Error::found_no_listener`]: a router restarting, or its host rebooting or
/// down) are
/// tried about every [`KNOCK_EVERY`] meanwhile, and the wait ends as soon as one
/// accepts a connection, which the attempt then uses (the router sees no
/// connection beyond the attempt's). A router that listens but fails the attempt
/// is not knocked on: its back-off is waited out in full.
pub(super) async fn back_off(
    shared: &Shared,
    knock: &[usize],
    wait: Duration,
    stop: &mut watch::Receiver<bool>,
) -> Waited {
    let until = tokio::time::Instant::now() + wait;
    let knocks = async {
        if knock.is_empty() {
            return std::future::pending().await;
        }
        loop {
            let jitter = rand::rng().random_range(0.5..1.5);
            let next = tokio::time::Instant::now() + KNOCK_EVERY.mul_f64(jitter);
            if next >= until {
                return std::future::pending().await;
            }
            tokio::time::sleep_until(next).await;
            for &index in knock {
                let router = &shared.routers[index];
                let within = shared.connect_timeout.min(KNOCK_EVERY);
                if let Ok(tcp) = wire::connect(router, within).await {
                    let left = until.saturating_duration_since(tokio::time::Instant::now());
                    info!(tunnel = %shared.name, %router, "router {router} accepts connections again: attempting now rather than in {:.1}s", left.as_secs_f64());
                    return Waited::Answered { index, tcp };
                }
            }
        }
    };
    tokio::select! {
        waited = knocks => waited,
        () = tokio::time::sleep_until(until) => Waited::Over,
        _ = stop.wait_for(|s| *s) => Waited::Stopped,
    }
}

/// A router's link that just failed (`why`), as [`Shared::links`] holds it: the
/// tunnel tries it again in its turn. Also the tunnel's own state once its link
/// is lost, until the next attempt ends.
pub(super) fn retrying(why: &str) -> LinkStatus {
    LinkStatus::Retrying {
        attempt: 1,
        next_at: SystemTime::now(),
        error: why.to_owned(),
        knocking: false,
    }
}

/// How a control channel ended.
pub(super) struct LinkEnd {
    pub(super) why: String,
    /// The router stopped answering, rather than closing or failing the connection.
    pub(super) silent: bool,
    /// The link was fine and is to be made again at once: the key was rotated, or
    /// an earlier router answered again.
    pub(super) again: bool,
    /// The earlier router's control channel, ready to use.
    pub(super) back: Option<Preferred>,
    /// The router said goodbye (it is shutting down, or refused the tunnel): its
    /// streams in flight go on until they end.
    pub(super) goodbye: bool,
}

/// Why the router's control channel ended, as [`read`] found it.
pub(super) struct Ended {
    why: String,
    /// With a goodbye from the router.
    goodbye: bool,
}

impl From<String> for Ended {
    fn from(why: String) -> Self {
        Self {
            why,
            goodbye: false,
        }
    }
}

impl From<Ended> for LinkEnd {
    fn from(e: Ended) -> Self {
        Self {
            goodbye: e.goodbye,
            ..Self::from(e.why)
        }
    }
}

impl LinkEnd {
    /// The router stopped answering: `why`.
    fn silent(why: String) -> Self {
        Self {
            silent: true,
            ..Self::from(why)
        }
    }
}

impl From<String> for LinkEnd {
    fn from(why: String) -> Self {
        Self {
            why,
            silent: false,
            again: false,
            back: None,
            goodbye: false,
        }
    }
}

/// A router earlier in the list than the one in use, answering again.
pub(super) struct Preferred {
    /// Its index in the list.
    pub(super) index: usize,
    /// Its control channel, past `Hello`/`Welcome`.
    pub(super) wire: Wire,
    /// The protocol version it chose.
    pub(super) version: u16,
}

/// While the link uses a router other than the first, tries the earlier ones every
/// [`Shared::failback`] and hands over the control channel of the first to answer.
pub(super) struct Probe(
    pub(super) Option<(tokio::task::JoinHandle<()>, oneshot::Receiver<Preferred>)>,
);

impl Probe {
    fn start(shared: &Arc<Shared>) -> Self {
        let (Some(every), current) = (shared.failback, shared.at()) else {
            return Self(None);
        };
        if shared.balance {
            return Self(None); // every router is in use
        }
        if current == 0 {
            return Self(None);
        }
        let (tx, rx) = oneshot::channel();
        let shared = shared.clone();
        let task = tokio::spawn(async move {
            // The last refusal said of each earlier router: said again only if it changes.
            let mut said: Vec<Option<String>> = vec![None; current];
            loop {
                tokio::time::sleep(every).await;
                for (index, said) in said.iter_mut().enumerate() {
                    let router = &shared.routers[index];
                    match open_at(&shared, ChannelKind::Control, index).await {
                        Ok((wire, version)) => {
                            let _ = tx.send(Preferred {
                                index,
                                wire,
                                version,
                            });
                            return;
                        }
                        Err(e) => {
                            let why = e.to_string();
                            // `status` and `health` show each router's latest attempt;
                            // one that refuses the tunnel is its operator's to fix.
                            if !e.is_retryable() {
                                shared.link.router_refused(index, why.clone());
                                if said.as_deref() != Some(why.as_str()) {
                                    error!(tunnel = %shared.name, %router, "router {router} refused this tunnel, which stays on the router it uses: {why}");
                                    *said = Some(why.clone());
                                }
                            } else {
                                *said = None;
                                debug!(tunnel = %shared.name, %router, "not moving back yet: {why}");
                            }
                            shared.router_link(index, retrying(&why));
                        }
                    }
                }
            }
        });
        Self(Some((task, rx)))
    }

    /// Resolves when an earlier router answered; never without a probe.
    async fn answered(&mut self) -> Preferred {
        match &mut self.0 {
            Some((_, rx)) => match rx.await {
                Ok(p) => p,
                Err(_) => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }

    fn stop(self) {
        if let Some((task, _)) = self.0 {
            task.abort();
        }
    }
}

/// Pings router `index` over its control channel `ctl` until the link fails or
/// `stop` is set (then says goodbye), taking the key rotations asked for meanwhile;
/// returns why it ended.
pub(super) async fn heartbeat(
    shared: &Shared,
    index: usize,
    ctl: &mut Wire,
    stop: &mut watch::Receiver<bool>,
    rotations: &SharedRotations,
    probe: &mut Probe,
) -> LinkEnd {
    let interval = shared.heartbeat;
    let router = &shared.routers[index];
    // What the link was made with: a key withdrawn from `trusted`, or a new key of
    // this tunnel's own, makes it again.
    let mut trusted = shared.trusted_for(index);
    let key = shared.our_key();
    let mut nonce = 0u64;
    let mut next_check = tokio::time::Instant::now();
    loop {
        if tokio::time::Instant::now() >= next_check
            && let Ok(_turn) = rotations.clone().try_lock_owned()
        {
            next_check = tokio::time::Instant::now() + ROTATION_CHECK;
            if let Some(age) = shared.key_too_old() {
                let days = age.as_secs() / 86_400;
                let unit = if days == 1 { "day" } else { "days" };
                info!(tunnel = %shared.name, "the key is {days} {unit} old: rotating it");
                match rotate(shared, ctl, index).await {
                    Ok(done) => return rotated(ctl, done).await,
                    Err(Rotation::Refused(why)) => {
                        warn!(tunnel = %shared.name, "the key is due for rotation but was not rotated: {why}; trying again in {ROTATION_CHECK:?}");
                    }
                    Err(Rotation::Link(why)) => return why.into(),
                    Err(Rotation::Silent(why)) => return LinkEnd::silent(why),
                }
            } else if let Some(next) = shared.declined_in_file() {
                // A router refused the key file's key (see `Shared::fall_back`): it is
                // taken up through a rotation, which has the routers authorize it.
                info!(tunnel = %shared.name, "asking this tunnel's routers to authorize the key file's key {next}");
                match rotate(shared, ctl, index).await {
                    Ok(done) => return rotated(ctl, done).await,
                    Err(Rotation::Refused(why)) => {
                        warn!(tunnel = %shared.name, "the key file's key {next} was not authorized: {why}; this tunnel keeps its key {key}: add {next} to its routers' authorized_clients, or give each tunnel a key file of its own (--key); trying again in {ROTATION_CHECK:?}");
                    }
                    Err(Rotation::Link(why)) => return why.into(),
                    Err(Rotation::Silent(why)) => return LinkEnd::silent(why),
                }
            }
        }
        shared.reread_pins();
        let now_trusted = shared.trusted_for(index);
        let gone: Vec<PublicKey> = trusted
            .iter()
            .filter(|k| !now_trusted.contains(k))
            .copied()
            .collect();
        trusted = now_trusted;
        if !gone.is_empty() {
            // The router was admitted with a key that may have been withdrawn:
            // connect again, which checks it against the keys pinned now. Streams
            // in flight go on.
            goodbye(ctl, "the tunnel checks the router's key again").await;
            return LinkEnd {
                why: format!(
                    "{} is no longer trusted for router {router}: connecting again to check the key it presents",
                    conduit_proto::tls::one_of(&gone)
                ),
                silent: false,
                again: true,
                back: None,
                goodbye: false,
            };
        }
        if shared.our_key() != key {
            // Rotated on another router's link, or taken from the key file: this
            // link is made again with the new key. Streams in flight go on.
            goodbye(ctl, "the tunnel's key changed").await;
            return LinkEnd {
                why: format!(
                    "the tunnel's key is now {}: connecting again with it",
                    shared.our_key()
                ),
                silent: false,
                again: true,
                back: None,
                goodbye: false,
            };
        }
        if *stop.borrow() {
            let bye = Message::Goodbye(Refusal::new(
                RefusalCode::ShuttingDown,
                "the tunnel is stopping",
            ));
            let _ = ctl.send(&bye).await;
            return "stopping".to_owned().into();
        }
        nonce += 1;
        if let Err(e) = ctl.send(&Message::Ping { nonce }).await {
            return e.to_string().into();
        }
        let deadline = tokio::time::Instant::now() + interval * 3;
        loop {
            let next = tokio::select! {
                r = tokio::time::timeout_at(deadline, ctl.recv()) => Woke::Got(r),
                _ = stop.wait_for(|s| *s) => break,
                // Taken while the answer is awaited too: a router that stopped
                // answering is then found out by the rotation, which is told so.
                (reply, turn) = asked_to_rotate(rotations) => Woke::Rotate(reply, turn),
                p = probe.answered() => Woke::Back(Box::new(p)),
            };
            let next = match next {
                Woke::Got(next) => next,
                Woke::Back(p) => return move_back(shared, ctl, *p).await,
                Woke::Rotate(reply, _turn) => {
                    match take_rotation(shared, ctl, index, reply).await {
                        // It answered the rotation: alive (its Pong was passed over).
                        None => break,
                        Some(end) => return end,
                    }
                }
            };
            match next {
                Err(_) => {
                    return LinkEnd {
                        why: format!("no heartbeat answer for {:?}", interval * 3),
                        silent: true,
                        again: false,
                        back: None,
                        goodbye: false,
                    };
                }
                Ok(got) => match read(shared, index, ctl, got, &mut trusted) {
                    Ok(Some(n)) if n == nonce => break,
                    Ok(_) => continue,
                    Err(why) => return why.into(),
                },
            }
        }
        // Until the next ping, keep reading: a router that goes away is noticed at
        // once, not at the next ping.
        let next = tokio::time::Instant::now() + interval;
        loop {
            let woke = tokio::select! {
                r = tokio::time::timeout_at(next, ctl.recv()) => Woke::Got(r),
                _ = stop.wait_for(|s| *s) => break,
                (reply, turn) = asked_to_rotate(rotations) => Woke::Rotate(reply, turn),
                p = probe.answered() => Woke::Back(Box::new(p)),
            };
            let got = match woke {
                Woke::Got(got) => got,
                Woke::Back(p) => return move_back(shared, ctl, *p).await,
                Woke::Rotate(reply, _turn) => {
                    match take_rotation(shared, ctl, index, reply).await {
                        None => continue,
                        Some(end) => return end,
                    }
                }
            };
            match got {
                Err(_) => break,
                Ok(got) => {
                    if let Err(why) = read(shared, index, ctl, got, &mut trusted) {
                        return why.into();
                    }
                }
            }
        }
    }
}

/// Rotates the key over router `index`'s control channel `ctl`, as asked, and
/// answers `reply`: `None` when the link goes on (the router refused the rotation),
/// else how the link ends (made again with the new key, or lost).
async fn take_rotation(
    shared: &Shared,
    ctl: &mut Wire,
    index: usize,
    reply: oneshot::Sender<Result<Rotated, String>>,
) -> Option<LinkEnd> {
    match rotate(shared, ctl, index).await {
        Ok(done) => {
            let _ = reply.send(Ok(done.clone()));
            Some(rotated(ctl, done).await)
        }
        Err(Rotation::Refused(why)) => {
            let _ = reply.send(Err(why));
            None
        }
        Err(Rotation::Link(why)) => {
            let _ = reply.send(Err(format!("the router link failed: {why}")));
            Some(why.into())
        }
        Err(Rotation::Silent(why)) => {
            let _ = reply.send(Err(format!(
                "router {} stopped answering ({why}); the key is unchanged: rotate again \
                 once `conduit status` shows the tunnel connected",
                shared.routers[index]
            )));
            Some(LinkEnd::silent(why))
        }
    }
}

/// What a message read on router `index`'s control channel means for the link: a
/// `Pong` (its nonce) or router keys learned (`None`) let it go on; a goodbye,
/// anything else, the end of the connection or an error end it, for the reason
/// returned.
fn read(
    shared: &Shared,
    index: usize,
    ctl: &Wire,
    got: Result<Option<Message>, WireError>,
    trusted: &mut Vec<PublicKey>,
) -> Result<Option<u64>, Ended> {
    match got {
        Ok(Some(Message::Pong { nonce })) => Ok(Some(nonce)),
        Ok(Some(Message::RouterKeys { keys })) => {
            shared.learn(index, &keys, ctl.peer_key());
            // What the router itself says of its keys needs no new check.
            *trusted = shared.trusted_for(index);
            Ok(None)
        }
        Ok(Some(Message::Goodbye(r))) => Err(Ended {
            why: format!("router said goodbye: {}", r.message),
            goodbye: true,
        }),
        Ok(Some(other)) => Err(format!("unexpected {} from the router", other.name()).into()),
        Ok(None) => Err("the router closed the connection".to_owned().into()),
        Err(e) => Err(e.to_string().into()),
    }
}

/// The next request to rotate the key, with the turn to rotate it.
pub(super) async fn asked_to_rotate(
    rotations: &SharedRotations,
) -> (oneshot::Sender<Result<Rotated, String>>, RotationTurn) {
    let mut turn = rotations.clone().lock_owned().await;
    match turn.recv().await {
        Some(reply) => (reply, turn),
        None => std::future::pending().await,
    }
}

/// What woke the control channel between two pings.
pub(super) enum Woke<T> {
    /// A message, an error, or the time for the next ping.
    Got(T),
    /// `conduit keys rotate` asked for a rotation.
    Rotate(oneshot::Sender<Result<Rotated, String>>, RotationTurn),
    /// An earlier router answers again.
    Back(Box<Preferred>),
}

/// How often a tunnel with `key_rotation` checks its key file's age.
pub(super) const ROTATION_CHECK: Duration = Duration::from_secs(3600);

/// Ends a control channel after a rotation: says goodbye, so that the link is made
/// again with the new key.
pub(super) async fn rotated(ctl: &mut Wire, done: Rotated) -> LinkEnd {
    let until = done
        .old_expires
        .and_then(crate::timestamp::rfc3339)
        .unwrap_or_else(|| "its grace period ends".to_owned());
    let why = format!(
        "key rotated: now {}; the old key is admitted until {until}; reconnecting with \
         the new key",
        done.key
    );
    let bye = Refusal::new(RefusalCode::ShuttingDown, "key rotated");
    let _ = ctl.send(&Message::Goodbye(bye)).await;
    LinkEnd {
        why,
        silent: false,
        again: true,
        back: None,
        goodbye: false,
    }
}

/// The streams a link leaves on router `at` (link `epoch`) when it moves back to
/// router `to`.
pub(super) struct Leftovers {
    at: usize,
    epoch: conduit_dataplane::LinkEpoch,
    to: String,
}

/// Watches the router a link left for an earlier one while streams still ride its
/// channels, as the link did: its control channel stays open and is pinged at each
/// heartbeat. Should the router stop answering (frozen, or its host gone: nothing
/// resets those streams) they are closed with the reason; once none is left, or
/// the link is back at that router (its heartbeats cover them again), the channel
/// says goodbye.
async fn watch_leftovers(
    shared: Arc<Shared>,
    mut ctl: Wire,
    left: Leftovers,
    mut stop: watch::Receiver<bool>,
) {
    let Leftovers { at, epoch, to } = left;
    let router = shared.routers[at].clone();
    let interval = shared.heartbeat;
    let bye = format!("the tunnel moves back to router {to}");
    let mut nonce = 0u64;
    loop {
        let covered = shared.at() == at && shared.link.is_up_at(at);
        if shared.link.streams(at) == 0 || covered || *stop.borrow() {
            goodbye(&mut ctl, &bye).await;
            return;
        }
        nonce += 1;
        let answered = async {
            ctl.send(&Message::Ping { nonce })
                .await
                .map_err(|e| (e.to_string(), false))?;
            let deadline = tokio::time::Instant::now() + interval * 3;
            loop {
                match tokio::time::timeout_at(deadline, ctl.recv()).await {
                    Err(_) => {
                        let why = format!("no heartbeat answer for {:?}", interval * 3);
                        return Err((why, true));
                    }
                    Ok(Ok(Some(Message::Pong { nonce: n }))) if n == nonce => return Ok(true),
                    // Shutting down: its drain ends the streams, which reach their ends.
                    Ok(Ok(Some(Message::Goodbye(_)))) => return Ok(false),
                    Ok(Ok(Some(_))) => {}
                    Ok(Ok(None)) => return Err(("connection closed".to_owned(), false)),
                    Ok(Err(e)) => return Err((e.to_string(), false)),
                }
            }
        };
        let answered = tokio::select! {
            a = answered => a,
            _ = stop.wait_for(|s| *s) => continue,
        };
        match answered {
            Ok(true) => {}
            Ok(false) => return,
            Err((why, silent)) => {
                let reason = format!("the router link was lost: {why}");
                warn!(tunnel = %shared.name, %router, "lost router {router}, where streams were left when the tunnel moved back to router {to}: {why}; closing them");
                if silent {
                    shared.dp.link_lost(epoch, &reason);
                } else {
                    shared.dp.link_gone(epoch, &reason);
                }
                return;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }
}

/// Ends the link to the router in use so that it moves to the earlier router `p`.
/// Its control channel is left to [`watch_leftovers`], which says goodbye once the
/// streams still riding there have ended.
pub(super) async fn move_back(shared: &Shared, _ctl: &mut Wire, p: Preferred) -> LinkEnd {
    let to = &shared.routers[p.index];
    LinkEnd {
        why: format!("router {to} answers again: moving back to it"),
        silent: false,
        again: true,
        back: Some(p),
        goodbye: false,
    }
}
