//! Looking up sources named by host name, off the data plane.
//!
//! A worker must never wait on DNS: one slow answer would stall every stream of its
//! core. So a worker that meets a name asks [`Resolver::prefetch`], which starts the
//! lookup on the control plane's blocking pool and hands back a wait the worker
//! awaits (bounded); the allow-list then reads the answer with [`Resolver::cached`],
//! which never blocks.
//!
//! Answers are kept [`FOUND_FOR`] (failures [`FAILED_FOR`]), so busy names cost no
//! lookup per stream. The cache holds at most [`MAX_NAMES`] names and at most
//! [`MAX_LOOKUPS`] lookups run at once, so a client sending name after name can
//! neither grow the router's memory nor take all of its threads: beyond either
//! limit the stream is refused with a reason, and others go on.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

/// How long a found address list is used before the name is looked up again.
pub const FOUND_FOR: Duration = Duration::from_secs(30);
/// How long a failed lookup's error is given before the name is tried again.
pub const FAILED_FOR: Duration = Duration::from_secs(5);
/// The longest one lookup may take.
pub const LOOKUP_LIMIT: Duration = Duration::from_secs(5);
/// Names kept at most.
pub const MAX_NAMES: usize = 4096;
/// Lookups running at once at most.
pub const MAX_LOOKUPS: usize = 32;

type Name = (String, u16);

/// How a name is looked up (the system's resolver; tests give one that hangs).
type Lookup = fn(&str, u16) -> std::io::Result<Vec<SocketAddr>>;

fn system_lookup(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    Ok((host, port).to_socket_addrs()?.collect())
}

enum Entry {
    /// A lookup runs; each waiter's sender is dropped when it ends.
    Running { waiters: Vec<flume::Sender<()>> },
    /// It ended at `at`.
    Done {
        result: Result<Vec<SocketAddr>, String>,
        at: Instant,
    },
}

impl Entry {
    fn fresh(&self, now: Instant) -> bool {
        match self {
            Entry::Running { .. } => true,
            Entry::Done { result, at } => {
                let keep = if result.is_ok() {
                    FOUND_FOR
                } else {
                    FAILED_FOR
                };
                now.duration_since(*at) < keep
            }
        }
    }
}

/// The router's name lookups and their recent answers.
pub struct Resolver {
    entries: Mutex<HashMap<Name, Entry>>,
    runtime: tokio::runtime::Handle,
    slots: Arc<Semaphore>,
    lookup: Lookup,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").finish_non_exhaustive()
    }
}

impl Resolver {
    /// A resolver whose lookups run on `runtime`'s blocking pool.
    pub fn new(runtime: tokio::runtime::Handle) -> Arc<Self> {
        Self::with_lookup(runtime, system_lookup)
    }

    fn with_lookup(runtime: tokio::runtime::Handle, lookup: Lookup) -> Arc<Self> {
        Arc::new(Self {
            entries: Mutex::new(HashMap::new()),
            runtime,
            slots: Arc::new(Semaphore::new(MAX_LOOKUPS)),
            lookup,
        })
    }

    /// The answer for `host:port` if there is one now: the addresses, the error of
    /// the latest lookup, or an error while one runs (or none could start). Never
    /// blocks.
    pub fn cached(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(&(host.to_owned(), port)) {
            Some(Entry::Done { result, .. }) => result.clone().map_err(std::io::Error::other),
            Some(Entry::Running { .. }) => Err(std::io::Error::other(format!(
                "no answer yet: the router's lookup of {host} is still running after {}s \
                 (its DNS is slow)",
                LOOKUP_LIMIT.as_secs()
            ))),
            None => Err(std::io::Error::other(format!(
                "the router is looking up too many names at once ({MAX_NAMES} kept); try \
                 again, or name the source by its address"
            ))),
        }
    }

    /// Starts a lookup of each of `names` that has no recent answer. `None` when
    /// every one has; otherwise a receiver that disconnects once all of them ended.
    pub fn prefetch<'a>(
        self: &Arc<Self>,
        names: impl IntoIterator<Item = (&'a str, u16)>,
    ) -> Option<flume::Receiver<()>> {
        let mut names = names.into_iter().peekable();
        names.peek()?;
        let (tx, rx) = flume::bounded(0);
        let mut waiting = false;
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        for (host, port) in names {
            let name = (host.to_owned(), port);
            match entries.get_mut(&name) {
                Some(Entry::Running { waiters }) => {
                    waiters.push(tx.clone());
                    waiting = true;
                    continue;
                }
                Some(e) if e.fresh(now) => continue,
                _ => {}
            }
            if entries.len() >= MAX_NAMES {
                entries.retain(|_, e| e.fresh(now));
                if entries.len() >= MAX_NAMES {
                    // `cached` says so.
                    continue;
                }
            }
            entries.insert(
                name.clone(),
                Entry::Running {
                    waiters: vec![tx.clone()],
                },
            );
            waiting = true;
            self.runtime.spawn(self.clone().look_up(name));
        }
        waiting.then_some(rx)
    }

    async fn look_up(self: Arc<Self>, name: Name) {
        let result = match self.slots.clone().try_acquire_owned() {
            Err(_) => Err(format!(
                "the router runs {MAX_LOOKUPS} lookups at once already (its DNS is slow); try \
                 again, or name the source by its address"
            )),
            Ok(slot) => {
                let (host, port) = name.clone();
                let lookup = self.lookup;
                // The slot is held until getaddrinfo returns, however long after the
                // limit: lookups that hang cannot take every thread.
                let task = tokio::task::spawn_blocking(move || {
                    let _slot = slot;
                    lookup(&host, port)
                });
                match tokio::time::timeout(LOOKUP_LIMIT, task).await {
                    Ok(Ok(Ok(addrs))) if addrs.is_empty() => Err("no addresses".to_owned()),
                    Ok(Ok(Ok(addrs))) => Ok(addrs),
                    Ok(Ok(Err(e))) => Err(e.to_string()),
                    Ok(Err(e)) => Err(format!("the lookup failed: {e}")),
                    Err(_) => Err(format!(
                        "no answer within {}s (the router's DNS is slow)",
                        LOOKUP_LIMIT.as_secs()
                    )),
                }
            }
        };
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        // Dropping the `Running` entry's senders wakes its waiters.
        entries.insert(
            name,
            Entry::Done {
                result,
                at: Instant::now(),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_name_is_looked_up_once_then_answered_from_the_cache() {
        let rt = runtime();
        let r = Resolver::new(rt.handle().clone());
        assert!(
            r.prefetch([]).is_none(),
            "nothing to look up, nothing to wait for"
        );
        assert!(r.cached("localhost", 80).is_err());
        let wait = r.prefetch([("localhost", 80)]).expect("a lookup starts");
        // A second ask while it runs waits for the same lookup.
        let again = r.prefetch([("localhost", 80)]).expect("still running");
        let msg = r.cached("localhost", 80).unwrap_err().to_string();
        assert!(msg.contains("is still running"), "{msg}");
        rt.block_on(async {
            assert!(wait.recv_async().await.is_err());
            assert!(again.recv_async().await.is_err());
        });
        let addrs = r.cached("localhost", 80).unwrap();
        assert!(
            addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 80),
            "{addrs:?}"
        );
        assert!(r.prefetch([("localhost", 80)]).is_none());
    }

    fn fails(host: &str, _: u16) -> std::io::Result<Vec<SocketAddr>> {
        Err(std::io::Error::other(format!("{host}: no such host")))
    }

    #[test]
    fn a_failed_lookup_is_kept_as_an_error() {
        let rt = runtime();
        let r = Resolver::with_lookup(rt.handle().clone(), fails);
        let wait = r.prefetch([("name.invalid", 80)]).unwrap();
        rt.block_on(async { while wait.recv_async().await.is_ok() {} });
        assert_eq!(
            r.cached("name.invalid", 80).unwrap_err().to_string(),
            "name.invalid: no such host"
        );
        assert!(r.prefetch([("name.invalid", 80)]).is_none());
    }

    /// A DNS server that never answers: each lookup holds its thread for good
    /// (until the test's runtime is dropped).
    fn hangs(_: &str, _: u16) -> std::io::Result<Vec<SocketAddr>> {
        std::thread::sleep(Duration::from_secs(3600));
        Err(std::io::Error::other("unreachable"))
    }

    #[test]
    fn lookups_that_hang_time_out_and_cannot_take_every_thread() {
        // Real time (a paused clock does not move while blocking tasks run): the
        // test takes `LOOKUP_LIMIT`.
        let rt = runtime();
        let r = Resolver::with_lookup(rt.handle().clone(), hangs);
        let names: Vec<String> = (0..=MAX_LOOKUPS).map(|i| format!("slow{i}")).collect();
        let wait = r.prefetch(names.iter().map(|n| (n.as_str(), 80))).unwrap();
        // Asking never blocks: the lookups run on the runtime.
        let msg = r.cached("slow0", 80).unwrap_err().to_string();
        assert!(msg.contains("is still running"), "{msg}");
        rt.block_on(async { while wait.recv_async().await.is_ok() {} });
        let errors: Vec<String> = names
            .iter()
            .map(|n| r.cached(n, 80).unwrap_err().to_string())
            .collect();
        let timed_out = errors
            .iter()
            .filter(|e| e.contains("no answer within 5s"))
            .count();
        let turned_away = errors
            .iter()
            .filter(|e| e.contains("runs 32 lookups at once already"))
            .count();
        assert_eq!((timed_out, turned_away), (MAX_LOOKUPS, 1), "{errors:?}");
        rt.shutdown_background();
    }

    #[test]
    fn the_cache_is_bounded() {
        let rt = runtime();
        let r = Resolver::new(rt.handle().clone());
        {
            let mut e = r.entries.lock().unwrap();
            for i in 0..MAX_NAMES {
                e.insert(
                    (format!("n{i}"), 80),
                    Entry::Done {
                        result: Ok(Vec::new()),
                        at: Instant::now(),
                    },
                );
            }
        }
        assert!(r.prefetch([("one-too-many", 80)]).is_none());
        let msg = r.cached("one-too-many", 80).unwrap_err().to_string();
        assert!(msg.contains("too many names"), "{msg}");
        assert_eq!(r.entries.lock().unwrap().len(), MAX_NAMES);
    }
}
