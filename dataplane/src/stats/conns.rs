//! The per-core table of open connections, and what each connection counts: its
//! bytes (through a [`Meter`], under its bandwidth limit), its idle clock, and how
//! it is told to close.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use conduit_proto::PublicKey;

use super::ErrorKind;

/// One open connection, as `conduit list --connections` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnSnapshot {
    /// Connection id (unique in this process).
    pub id: u64,
    /// The user's address (client side) or the client's address (router side).
    pub peer: Option<SocketAddr>,
    /// The source it goes to.
    pub target: String,
    /// The client key that opened it (router side).
    pub client: Option<PublicKey>,
    /// Seconds since it opened.
    pub age_secs: u64,
    /// Payload bytes toward the source.
    pub bytes_up: u64,
    /// Payload bytes toward the user.
    pub bytes_down: u64,
}

/// Byte counters of one connection, shared between its relay and the table.
#[derive(Debug, Default)]
pub(crate) struct ConnCounters {
    pub(crate) up: Cell<u64>,
    pub(crate) down: Cell<u64>,
    /// Client side: what was sent toward the source before the router answered.
    pub(crate) unanswered: Unanswered,
    /// How many of the relay's directions wait to write now (a TLS stream's; see
    /// [`Writing`]): a stream writing nothing is idle, not stalled.
    pub(crate) writing: Cell<u8>,
    /// The relay's two sockets while it runs (see [`Self::watch`]).
    sockets: Cell<Option<[std::os::fd::RawFd; 2]>>,
}

impl ConnCounters {
    /// Lets [`ConnTable::close_idle`] ask the kernel about `sockets` (the relay's two)
    /// for as long as the guard lives: bytes the relay handed over that a slow reader
    /// is still taking count as moving.
    pub(crate) fn watch(&self, sockets: [std::os::fd::RawFd; 2]) -> Watched<'_> {
        self.sockets.set(Some(sockets));
        Watched(&self.sockets)
    }

    /// What the kernel holds, sent or not but not acknowledged, in the relay's
    /// sockets; `None` when it cannot say (no relay running, not Linux).
    fn unacknowledged(&self) -> Option<u64> {
        let [a, b] = self.sockets.get()?;
        let (a, b) = (
            crate::sys::unacknowledged(a)?,
            crate::sys::unacknowledged(b)?,
        );
        Some(u64::from(a) + u64::from(b))
    }
}

/// See [`ConnCounters::watch`]: forgets the sockets when dropped, before they close.
pub(crate) struct Watched<'a>(&'a Cell<Option<[std::os::fd::RawFd; 2]>>);

impl Drop for Watched<'_> {
    fn drop(&mut self) {
        self.0.set(None);
    }
}

/// Counts a relay direction among those waiting to write for as long as it lives
/// (see [`ConnCounters::writing`]); dropped with the write, done or cut short.
pub(crate) struct Writing<'a>(&'a Cell<u8>);

impl<'a> Writing<'a> {
    pub(crate) fn new(writing: &'a Cell<u8>) -> Self {
        writing.set(writing.get().saturating_add(1));
        Self(writing)
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// Bytes a client sends toward the source before the router answers its open: they
/// go right behind the `Open`, saving a round trip, but the router may refuse it
/// (the source not allowed, unreachable, a limit reached), and then they never
/// reached a source. So they are held here and counted only once the router opens
/// the source. Held rather than counted at once and taken back on a refusal: the
/// byte counters only ever grow (a Prometheus counter that falls reads as a
/// restart), and none shows bytes that may yet be refused.
#[derive(Debug, Default)]
pub(crate) struct Unanswered {
    /// Bytes sent while waiting for the answer, not counted yet.
    held: Cell<u64>,
    /// The router opened the source: bytes count as they are sent.
    opened: Cell<bool>,
}

/// Where a relay direction counts its bytes: the connection's counter and the core's.
#[derive(Clone, Copy)]
pub(crate) struct Meter<'a> {
    pub(crate) conn: &'a Cell<u64>,
    pub(crate) core: &'a AtomicU64,
    /// The tunnel's bandwidth limit for this direction, if it has one.
    pub(crate) limit: Option<&'a std::sync::Mutex<crate::ratelimit::TokenBucket>>,
    /// Client side, toward the source: where bytes wait until the router opens the
    /// source (see [`Unanswered`]). `None` counts every byte as it is sent.
    pub(crate) unanswered: Option<&'a Unanswered>,
}

impl Meter<'_> {
    pub(crate) fn add(&self, n: usize) {
        if let Some(u) = self.unanswered
            && !u.opened.get()
        {
            u.held.set(u.held.get() + n as u64);
            return;
        }
        self.count(n as u64);
    }

    /// The router opened the source: what was sent before its answer counts now, and
    /// what follows as it is sent. Nothing to do for a meter that never waits.
    pub(crate) fn opened(&self) {
        if let Some(u) = self.unanswered
            && !u.opened.replace(true)
        {
            self.count(u.held.take());
        }
    }

    fn count(&self, n: u64) {
        if n > 0 {
            self.conn.set(self.conn.get() + n);
            self.core.fetch_add(n, Relaxed);
        }
    }

    /// What of `want` bytes may be read or sent now: all of it without a bandwidth
    /// limit; under one, what the bucket grants (waiting for at least
    /// `min(want, burst)`), taken out of it. What goes unsent goes back with
    /// [`Self::unused`].
    pub(crate) async fn allowance(&self, want: usize) -> usize {
        match self.limit {
            None => want,
            // Boxed: only limited tunnels pay for the sleep's state, not every task.
            Some(bucket) => Box::pin(crate::ratelimit::take(bucket, want)).await,
        }
    }

    /// Gives back `n` bytes of an [`Self::allowance`] that were not sent.
    pub(crate) fn unused(&self, n: usize) {
        if let Some(bucket) = self.limit {
            crate::ratelimit::give_back(bucket, n);
        }
    }

    /// Sends all of `bytes` on `sock` and counts them. Under a bandwidth limit they
    /// go in the pieces the bucket grants, each once granted: after an idle spell
    /// at most the burst leaves at once, however much arrived in one read.
    pub(crate) async fn send_all(&self, sock: &crate::net::Socket, bytes: &[u8]) -> io::Result<()> {
        if self.limit.is_none() {
            sock.send_all(bytes).await?;
            self.add(bytes.len());
            return Ok(());
        }
        Box::pin(self.send_granted(sock, bytes)).await
    }

    /// [`Self::send_all`], watching `other` while it waits for room (see
    /// [`crate::net::Socket::send_all_watching`]).
    pub(crate) async fn send_all_watching(
        &self,
        sock: &crate::net::Socket,
        bytes: &[u8],
        other: &crate::net::Socket,
    ) -> Result<(), crate::net::SendError> {
        if self.limit.is_none() {
            sock.send_all_watching(bytes, other).await?;
            self.add(bytes.len());
            return Ok(());
        }
        Box::pin(self.send_granted_watching(sock, bytes, other)).await
    }

    async fn send_granted_watching(
        &self,
        sock: &crate::net::Socket,
        mut bytes: &[u8],
        other: &crate::net::Socket,
    ) -> Result<(), crate::net::SendError> {
        while !bytes.is_empty() {
            let n = self.allowance(bytes.len()).await;
            sock.send_all_watching(&bytes[..n], other).await?;
            self.add(n);
            bytes = &bytes[n..];
        }
        Ok(())
    }

    async fn send_granted(&self, sock: &crate::net::Socket, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let n = self.allowance(bytes.len()).await;
            sock.send_all(&bytes[..n]).await?;
            self.add(n);
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// Under a bandwidth limit, pays for a datagram of `n` bytes before it is sent
    /// whole: how long to wait before sending it (zero: at once), or `None` when
    /// that would be longer than [`crate::ratelimit::DATAGRAM_MOST_WAIT`], and it is
    /// to be dropped. Without a limit, always at once. Datagrams cannot be cut to a
    /// grant; paid before they go, since each flow of a datagram or two would
    /// otherwise pass the limit by what it sent before its first wait, however many
    /// flows there are.
    pub(crate) fn charge_datagram(&self, n: usize) -> Option<Duration> {
        match self.limit {
            Some(bucket) => crate::ratelimit::charge_datagram(bucket, n),
            None => Some(Duration::ZERO),
        }
    }
}

/// Why a connection is told to stop from outside its relay, and what it counts as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Closing {
    pub(crate) why: String,
    pub(crate) kind: ErrorKind,
}

impl Closing {
    /// Stopped by an operator, a stop or a lost link: counted as `killed`.
    pub(crate) fn killed(why: impl Into<String>) -> Self {
        Self {
            why: why.into(),
            kind: ErrorKind::Killed,
        }
    }
}

impl Closing {
    /// The `Reset` that tells the other Conduit end, saying `why`: an idle stream's
    /// with its own code, so that end counts it as idle too.
    pub(crate) fn reset(&self, why: String) -> conduit_proto::Refusal {
        use conduit_proto::RefusalCode;
        let code = match self.kind {
            ErrorKind::IdleTimeout => RefusalCode::IdleTimeout,
            _ => RefusalCode::Aborted,
        };
        conduit_proto::Refusal::new(code, why)
    }
}

impl std::fmt::Display for Closing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)
    }
}

/// Where a connection's kill order goes.
pub(crate) type KillSender = futures::channel::oneshot::Sender<Closing>;
/// Where a connection's relay hears its kill order.
pub(crate) type KillReceiver = futures::channel::oneshot::Receiver<Closing>;

/// One open connection. Kept small (shared strings, the client key only once): a
/// busy core holds thousands.
pub(crate) struct ConnEntry {
    pub(crate) peer: Option<SocketAddr>,
    pub(crate) target: Rc<str>,
    pub(crate) started: Instant,
    pub(crate) counters: Rc<ConnCounters>,
    /// Stops the connection; carries the reason it is given.
    pub(crate) kill: Option<KillSender>,
    /// What the connection rides on, to stop it when that is lost.
    pub(crate) rides: Rides,
    /// A UDP flow: nothing is in flight to let finish when its process stops.
    pub(crate) datagrams: bool,
    /// How long nothing has moved on it (see [`ConnTable::close_idle`]).
    quiet: Quiet,
}

impl ConnEntry {
    /// A connection just opened, riding on nothing yet.
    pub(crate) fn new(
        peer: Option<SocketAddr>,
        target: Rc<str>,
        counters: Rc<ConnCounters>,
        kill: KillSender,
        datagrams: bool,
    ) -> Self {
        Self {
            peer,
            target,
            started: Instant::now(),
            counters,
            kill: Some(kill),
            rides: Rides::Nothing,
            datagrams,
            quiet: Quiet::default(),
        }
    }
}

/// What [`ConnTable::close_idle`] saw of a connection at its last look: the bytes
/// it had moved, and for how many looks in a row that did not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Quiet {
    moved: u64,
    looks: u32,
}

impl Default for Quiet {
    /// Not looked at yet: the first look only takes note (a connection opened just
    /// before it has not been quiet for a whole look).
    fn default() -> Self {
        Self {
            moved: u64::MAX,
            looks: 0,
        }
    }
}

/// What a connection depends on beyond its own sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rides {
    /// Nothing yet (a user still waiting for a channel).
    Nothing,
    /// Client side: a channel of this link (router and generation).
    Link(crate::LinkEpoch),
    /// Router side: a channel of this client key's tunnel (`usage::NO_KEY` on the
    /// plain transport).
    Client(PublicKey, Rc<str>),
}

impl ConnEntry {
    /// The client whose stream this is (router side).
    pub(crate) fn client(&self) -> Option<&PublicKey> {
        match &self.rides {
            Rides::Client(k, _) => Some(k),
            _ => None,
        }
    }
}

/// The open connections of one core.
#[derive(Default)]
pub(crate) struct ConnTable {
    entries: RefCell<HashMap<u64, ConnEntry>>,
}

impl ConnTable {
    pub(crate) fn insert(&self, id: u64, entry: ConnEntry) {
        self.entries.borrow_mut().insert(id, entry);
    }

    /// Removes connection `id`; returns when it started and its bytes up and down.
    pub(crate) fn remove(&self, id: u64) -> Option<(Instant, u64, u64)> {
        self.entries
            .borrow_mut()
            .remove(&id)
            .map(|e| (e.started, e.counters.up.get(), e.counters.down.get()))
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.borrow().len()
    }

    /// The router whose channel connection `id` rides (client side), if it does.
    pub(crate) fn router_of(&self, id: u64) -> Option<usize> {
        match self.entries.borrow().get(&id)?.rides {
            Rides::Link(epoch) => Some(epoch.router),
            _ => None,
        }
    }

    /// Records what connection `id` now rides on.
    pub(crate) fn set_rides(&self, id: u64, rides: Rides) {
        if let Some(e) = self.entries.borrow_mut().get_mut(&id) {
            e.rides = rides;
        }
    }

    /// Asks connection `id` to stop; false if it is not on this core.
    pub(crate) fn kill(&self, id: u64, reason: &str) -> bool {
        match self.entries.borrow_mut().get_mut(&id) {
            Some(e) => {
                if let Some(k) = e.kill.take() {
                    let _ = k.send(Closing::killed(reason));
                }
                true
            }
            None => false,
        }
    }

    /// One look at every stream for the stream idle timeout: a stream that moved no
    /// byte either way since the last look, with nothing on its way to a reader
    /// (none waiting for room to write, none the kernel holds unacknowledged in its
    /// sockets), is one look quieter; any other starts again from none. So a slow
    /// reader, or one that takes nothing at all, keeps its stream: silence, not
    /// slowness, is what the timeout ends. Streams quiet for `looks` looks
    /// in a row are asked to stop with `reason`; returns how many. UDP flows have
    /// their own idle timeout, and a user still waiting for a channel (riding on
    /// nothing yet) is not idle but waiting.
    pub(crate) fn close_idle(&self, looks: u32, reason: &str) -> usize {
        let mut n = 0;
        for e in self.entries.borrow_mut().values_mut() {
            let c = &e.counters;
            // Not quiet but waiting: for a channel, or for the router to open the
            // source.
            let waiting = match e.rides {
                Rides::Nothing => true,
                Rides::Link(_) => !c.unanswered.opened.get(),
                Rides::Client(..) => false,
            };
            if e.datagrams || waiting {
                e.quiet = Quiet::default();
                continue;
            }
            let moved = c.up.get() + c.down.get() + c.unanswered.held.get();
            // Bytes still on their way to a reader: in the relay, waiting for room,
            // or handed to the kernel and not yet taken. A slow reader drains a full
            // receive window in steps far apart, so only an empty queue is quiet.
            let pending = c.writing.get() > 0 || c.unacknowledged().is_some_and(|q| q > 0);
            if moved != e.quiet.moved || pending {
                e.quiet = Quiet { moved, looks: 0 };
                continue;
            }
            e.quiet.looks = e.quiet.looks.saturating_add(1);
            if e.quiet.looks >= looks
                && let Some(k) = e.kill.take()
            {
                let _ = k.send(Closing {
                    why: reason.to_owned(),
                    kind: ErrorKind::IdleTimeout,
                });
                n += 1;
            }
        }
        n
    }

    /// Asks every connection riding on something `lost` says is gone to stop;
    /// returns how many were asked.
    pub(crate) fn kill_riding(&self, lost: impl Fn(&Rides) -> bool, reason: &str) -> usize {
        let mut n = 0;
        for e in self.entries.borrow_mut().values_mut() {
            if lost(&e.rides)
                && let Some(k) = e.kill.take()
            {
                let _ = k.send(Closing::killed(reason));
                n += 1;
            }
        }
        n
    }

    /// The streams (not UDP flows) riding on something `lost` says is gone, with
    /// their counters (see `worker::reap_stalled`).
    pub(crate) fn riding(&self, lost: impl Fn(&Rides) -> bool) -> Vec<(u64, Rc<ConnCounters>)> {
        self.entries
            .borrow()
            .iter()
            // A UDP flow never waits on a reader: it drops what finds no room.
            .filter(|(_, e)| !e.datagrams && lost(&e.rides))
            .map(|(id, e)| (*id, e.counters.clone()))
            .collect()
    }

    /// Whether connection `id` is still open on this core.
    pub(crate) fn contains(&self, id: u64) -> bool {
        self.entries.borrow().contains_key(&id)
    }

    /// Asks every UDP flow to stop; returns how many were asked.
    pub(crate) fn kill_flows(&self, reason: &str) -> usize {
        let mut n = 0;
        for e in self.entries.borrow_mut().values_mut() {
            if e.datagrams
                && let Some(k) = e.kill.take()
            {
                let _ = k.send(Closing::killed(reason));
                n += 1;
            }
        }
        n
    }

    /// Asks every connection to stop.
    pub(crate) fn kill_all(&self, reason: &str) {
        self.kill_riding(|_| true, reason);
    }

    /// Calls `f` with each open connection's target, and whether it is a UDP flow.
    pub(crate) fn for_each_target(&self, mut f: impl FnMut(&str, bool)) {
        for e in self.entries.borrow().values() {
            f(&e.target, e.datagrams);
        }
    }

    /// Calls `f` with each open connection's client and byte counts.
    pub(crate) fn for_each_open(&self, mut f: impl FnMut(Option<&PublicKey>, u64, u64)) {
        for e in self.entries.borrow().values() {
            f(e.client(), e.counters.up.get(), e.counters.down.get());
        }
    }

    pub(crate) fn snapshot(&self) -> Vec<ConnSnapshot> {
        let now = Instant::now();
        self.entries
            .borrow()
            .iter()
            .map(|(id, e)| ConnSnapshot {
                id: *id,
                peer: e.peer,
                target: e.target.to_string(),
                client: e.client().copied(),
                age_secs: now.duration_since(e.started).as_secs(),
                bytes_up: e.counters.up.get(),
                bytes_down: e.counters.down.get(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table entry riding on `rides`, and the receiver of its kill order.
    fn entry(
        table: &ConnTable,
        id: u64,
        rides: Rides,
        datagrams: bool,
    ) -> (Rc<ConnCounters>, KillReceiver) {
        let counters = Rc::new(ConnCounters::default());
        let (tx, rx) = futures::channel::oneshot::channel();
        let mut e = ConnEntry::new(None, "s:1".into(), counters.clone(), tx, datagrams);
        e.rides = rides;
        table.insert(id, e);
        (counters, rx)
    }

    #[test]
    fn a_stream_quiet_for_the_looks_it_needs_is_closed_as_idle_and_nothing_else_is() {
        let table = ConnTable::default();
        let riding = || Rides::Client(crate::usage::NO_KEY, "t".into());
        let (_, mut quiet) = entry(&table, 1, riding(), false);
        let (moving, mut busy) = entry(&table, 2, riding(), false);
        let (_, mut flow) = entry(&table, 3, riding(), true);
        let (_, mut waiting) = entry(&table, 4, Rides::Nothing, false);
        let (held, mut early) = entry(&table, 6, riding(), false);
        let link = Rides::Link(crate::LinkEpoch {
            router: 0,
            generation: 1,
        });
        let (unanswered, mut opening) = entry(&table, 7, link, false);
        let (stuck, mut writer) = entry(&table, 8, riding(), false);
        stuck.writing.set(1);
        let heard = |rx: &mut KillReceiver| rx.try_recv().expect("sender kept");

        // The first look only takes note; two quiet looks after it close a stream.
        for _ in 0..2 {
            moving.down.set(moving.down.get() + 1);
            held.unanswered.held.set(held.unanswered.held.get() + 5);
            assert_eq!(table.close_idle(2, "idle"), 0);
        }
        moving.up.set(7);
        assert_eq!(table.close_idle(2, "idle"), 1, "only the quiet stream");
        assert_eq!(
            heard(&mut quiet),
            Some(Closing {
                why: "idle".into(),
                kind: ErrorKind::IdleTimeout
            })
        );
        for rx in [
            &mut busy,
            &mut flow,
            &mut waiting,
            &mut early,
            &mut opening,
            &mut writer,
        ] {
            assert_eq!(heard(rx), None);
        }
        // Told once; the others once they too stay quiet (the held bytes once they
        // stop growing, the stream the router opened and the writer once it is done:
        // with no kernel to ask, waiting for room to write counts as moving).
        unanswered.unanswered.opened.set(true);
        stuck.writing.set(0);
        assert_eq!(table.close_idle(2, "idle"), 1, "held bytes stopped");
        assert_eq!(
            table.close_idle(2, "idle"),
            2,
            "the stream that moved, the writer"
        );
        assert_eq!(
            table.close_idle(2, "idle"),
            1,
            "the stream the router opened: a look later, its first only took note"
        );
        assert_eq!(
            heard(&mut busy).map(|c| c.kind),
            Some(ErrorKind::IdleTimeout)
        );
        assert_eq!(
            heard(&mut early).map(|c| c.kind),
            Some(ErrorKind::IdleTimeout)
        );
        for rx in [&mut opening, &mut writer] {
            assert_eq!(heard(rx).map(|c| c.kind), Some(ErrorKind::IdleTimeout));
        }
        for _ in 0..4 {
            assert_eq!(table.close_idle(2, "idle"), 0);
        }
        assert_eq!(
            heard(&mut flow),
            None,
            "a UDP flow has its own idle timeout"
        );
        assert_eq!(
            heard(&mut waiting),
            None,
            "a user waiting for a channel is not idle"
        );
        // An operator's kill is counted as one.
        assert!(table.kill(4, "closed by the operator"));
        assert_eq!(heard(&mut waiting).map(|c| c.kind), Some(ErrorKind::Killed));
    }

    /// Bytes the kernel holds for a reader, slow or stopped, keep its stream from
    /// being idle; once the reader has taken them all, the stream is quiet.
    #[cfg(target_os = "linux")]
    #[test]
    fn bytes_the_kernel_holds_for_a_reader_keep_a_stream_from_idling() {
        use std::io::{Read, Write};
        use std::os::fd::AsRawFd;

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut writer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut reader, _) = listener.accept().unwrap();
        let other = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        // Fill the reader's window and the writer's send queue.
        writer.set_nonblocking(true).unwrap();
        let chunk = [7u8; 65536];
        let mut sent = 0;
        while let Ok(n) = writer.write(&chunk) {
            sent += n;
        }
        assert!(crate::sys::unacknowledged(writer.as_raw_fd()).unwrap() > 0);

        let table = ConnTable::default();
        let riding = Rides::Client(crate::usage::NO_KEY, "t".into());
        let (counters, mut rx) = entry(&table, 1, riding, false);
        let _watch = counters.watch([writer.as_raw_fd(), other.as_raw_fd()]);
        for _ in 0..5 {
            assert_eq!(table.close_idle(2, "idle"), 0, "bytes wait for the reader");
        }
        // The reader takes them all: the queue empties, and the stream is quiet.
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0;
        while got < sent {
            got += reader.read(&mut buf).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while crate::sys::unacknowledged(writer.as_raw_fd()) != Some(0) {
            assert!(Instant::now() < deadline, "the queue never emptied");
            std::thread::yield_now();
        }
        assert_eq!(rx.try_recv().unwrap(), None);
        // Counted from the last look that saw bytes pending.
        assert_eq!(table.close_idle(2, "idle"), 0, "one quiet look");
        assert_eq!(table.close_idle(2, "idle"), 1, "two");
        assert_eq!(
            rx.try_recv().unwrap().map(|c| c.kind),
            Some(ErrorKind::IdleTimeout)
        );
    }

    #[test]
    fn bytes_sent_before_the_answer_count_only_once_the_router_opens() {
        let core = AtomicU64::new(0);
        let refused = ConnCounters::default();
        let meter = Meter {
            conn: &refused.up,
            core: &core,
            limit: None,
            unanswered: Some(&refused.unanswered),
        };
        meter.add(100);
        meter.add(20);
        // Refused: the meter is never told, and the bytes never count.
        assert_eq!((refused.up.get(), core.load(Relaxed)), (0, 0));

        let accepted = ConnCounters::default();
        let meter = Meter {
            conn: &accepted.up,
            core: &core,
            limit: None,
            unanswered: Some(&accepted.unanswered),
        };
        meter.add(7);
        assert_eq!((accepted.up.get(), core.load(Relaxed)), (0, 0));
        meter.opened();
        assert_eq!((accepted.up.get(), core.load(Relaxed)), (7, 7));
        meter.add(3);
        // Told twice (a stray second `Opened`): nothing counted twice.
        meter.opened();
        assert_eq!((accepted.up.get(), core.load(Relaxed)), (10, 10));

        // A meter that never waits counts at once.
        let router = ConnCounters::default();
        let meter = Meter {
            conn: &router.up,
            core: &core,
            limit: None,
            unanswered: None,
        };
        meter.add(5);
        assert_eq!((router.up.get(), core.load(Relaxed)), (5, 15));
    }
}
