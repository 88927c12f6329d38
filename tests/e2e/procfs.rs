//! What the tests observe of a running `conduit` process through /proc: open file
//! descriptors, resident memory, CPU time, and the TCP states of its sockets (to
//! count half-dead `CLOSE_WAIT` sockets).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::harness::DEADLINE;

/// TCP states as /proc/net/tcp numbers them.
pub const ESTABLISHED: u8 = 0x01;
pub const CLOSE_WAIT: u8 = 0x08;

/// Open file descriptors of `pid`.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// `Max open files` of `pid`: (soft, hard), as /proc prints them ("unlimited" too).
pub fn nofile_of(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_owned();
    let v: Vec<&str> = line.split_whitespace().collect();
    (v[3].to_owned(), v[4].to_owned())
}

/// Resident memory of `pid`, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Whether every thread of `pid` is stopped (by a signal: state `T`).
pub fn stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut any = false;
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .map(|(_, r)| r.trim_start().chars().next());
        if state != Some(Some('T')) {
            return false;
        }
        any = true;
    }
    any
}

/// User + system CPU time of `pid` (all threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    let get = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(14) + get(15)
}

/// Clock ticks per second (USER_HZ; 100 on every Linux the tests run on).
pub const TICKS_PER_SEC: u64 = 100;

fn socket_inodes(pid: u32) -> HashSet<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return HashSet::new();
    };
    dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|t| {
            t.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// How many of `pid`'s TCP sockets are in each state.
pub fn tcp_states(pid: u32) -> HashMap<u8, usize> {
    let inodes = socket_inodes(pid);
    let mut count = HashMap::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let (Ok(state), Ok(inode)) = (u8::from_str_radix(f[3], 16), f[9].parse::<u64>()) else {
                continue;
            };
            if inode != 0 && inodes.contains(&inode) {
                *count.entry(state).or_insert(0) += 1;
            }
        }
    }
    count
}

/// The TCP sockets on this host, in any state (`TIME_WAIT` included), that have
/// `port` at either end, as (local, remote) address pairs: a connection over
/// loopback shows twice, once per end. A listener on port 0 can get a port that
/// an earlier test's connections still hold in `TIME_WAIT`, so callers compare
/// two snapshots rather than count one.
pub fn tcp_sockets_on_port(port: u16) -> HashSet<(String, String)> {
    let port = format!("{port:04X}");
    let mut seen = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port_of = |addr: &str| addr.rsplit(':').next().map(str::to_owned);
            if f.len() > 2
                && (port_of(f[1]).as_ref() == Some(&port) || port_of(f[2]).as_ref() == Some(&port))
            {
                seen.insert((f[1].to_owned(), f[2].to_owned()));
            }
        }
    }
    seen
}

/// The most bytes waiting on any of `pid`'s TCP sockets: to be read (`rx_queue`)
/// and to be sent or acknowledged (`tx_queue`). A relay that lets bytes pile up
/// unread is not reading; one whose sends pile up has a peer that is not.
pub fn largest_queues(pid: u32) -> (u64, u64) {
    let inodes = socket_inodes(pid);
    let (mut rx, mut tx) = (0, 0);
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10
                || !f[9]
                    .parse::<u64>()
                    .is_ok_and(|i| i != 0 && inodes.contains(&i))
            {
                continue;
            }
            let queue = |i: usize| {
                f[4].split(':')
                    .nth(i)
                    .and_then(|q| u64::from_str_radix(q, 16).ok())
                    .unwrap_or(0)
            };
            (tx, rx) = (tx.max(queue(0)), rx.max(queue(1)));
        }
    }
    (rx, tx)
}

/// `pid`'s sockets whose peer closed and that it has not closed itself.
pub fn close_wait(pid: u32) -> usize {
    tcp_states(pid).get(&CLOSE_WAIT).copied().unwrap_or(0)
}

/// `pid`'s established TCP connections.
pub fn established(pid: u32) -> usize {
    tcp_states(pid).get(&ESTABLISHED).copied().unwrap_or(0)
}

/// Polls `cond` until it holds; panics with `what` and the last observation after
/// [`DEADLINE`].
#[track_caller]
pub fn wait_until<T: std::fmt::Debug>(what: &str, mut observe: impl FnMut() -> (bool, T)) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (ok, seen) = observe();
        if ok {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "never saw {what}; last observed: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A process's footprint: open fds and resident KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    pub fds: usize,
    pub rss_kib: u64,
}

impl Footprint {
    pub fn of(pid: u32) -> Self {
        Self {
            fds: open_fds(pid),
            rss_kib: rss_kib(pid),
        }
    }
}
