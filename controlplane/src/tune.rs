//! `conduit tune --check`: how far this host's settings are from what a 10 Gbps
//! Conduit gateway wants, each with the exact command that closes the gap.
//!
//! Values come from a `/proc/sys` tree whose root is passed in (tests use a fake
//! one), plus a few probes of the running process ([`Probes`]). [`SETTINGS`] is the
//! one table of recommended values, each with its reason. It agrees with
//! `tuning/sysctl-10g.conf` and `tuning/limits.conf`, which set these values or more;
//! the check accepts the least that does not hold Conduit back, so e.g.
//! `net.core.somaxconn` is OK from 4096 (the backlog Conduit's listeners ask for)
//! while the fix sets the profile's 65535. Keep the two in step.
//!
//! Every setting ends up `OK`, `SHORT` (with a fix), or `UNKNOWN` when its value
//! cannot be read (inside a container's network namespace, say); only `SHORT`
//! counts against the host. Nothing here changes the host.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// What a setting must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// A number at least this big.
    AtLeast(u64),
    /// A number at most this big.
    AtMost(u64),
    /// A number in `lo..=hi`.
    Between(u64, u64),
    /// "min default max" whose max is at least this big.
    MaxAtLeast(u64),
    /// "low high": at least as many ports as `low..=high`.
    Ports(u64, u64),
    /// A kernel facility that works.
    Available,
}

impl fmt::Display for Want {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::AtLeast(n) => write!(f, ">= {n}"),
            Self::AtMost(n) => write!(f, "<= {n}"),
            Self::Between(lo, hi) if lo == hi => write!(f, "{lo}"),
            Self::Between(lo, hi) if hi == lo + 1 => write!(f, "{lo} or {hi}"),
            Self::Between(lo, hi) => write!(f, "{lo} to {hi}"),
            Self::MaxAtLeast(n) => write!(f, "max >= {n}"),
            Self::Ports(lo, hi) => write!(f, ">= {} ports ({lo} {hi})", hi - lo + 1),
            Self::Available => f.write_str("available"),
        }
    }
}

/// Where a value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// `<root>/<name with dots as slashes>`.
    Sysctl,
    /// This process's `RLIMIT_NOFILE`.
    NofileSoft,
    NofileHard,
    /// Cores this process may use.
    Cpus,
    /// The "tls" TCP ULP.
    Ktls,
    /// io_uring with every operation the data plane uses.
    IoUring,
}

/// One recommended value and why.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// The sysctl key, or a name for what is not a sysctl.
    pub name: &'static str,
    source: Source,
    want: Want,
    /// What a fix sets, when not the bound in `want`.
    set: Option<u64>,
    /// Why this value, for operators and for reconciling with `tuning/`.
    pub why: &'static str,
}

const fn sysctl(name: &'static str, want: Want, why: &'static str) -> Setting {
    Setting {
        name,
        source: Source::Sysctl,
        want,
        set: None,
        why,
    }
}

impl Setting {
    /// Makes the fix set `v` rather than the bound in `want`.
    const fn fix_sets(mut self, v: u64) -> Self {
        self.set = Some(v);
        self
    }
}

/// The open-file count recommended for the process and system-wide.
const NOFILE: u64 = 1_048_576;
/// Socket buffer ceilings: 16 MiB.
const BUF_MAX: u64 = 16 * 1024 * 1024;

/// The recommended values: the one table.
pub const SETTINGS: &[Setting] = &[
    sysctl(
        "fs.file-max",
        Want::AtLeast(NOFILE),
        "open files system-wide: each relayed connection holds two sockets (six fds while a \
         plain leg splices through pipes), so 10k+ connections need 20k-60k on top of the rest \
         of the system; most kernels size this from RAM and pass already",
    ),
    sysctl(
        "fs.nr_open",
        Want::AtLeast(NOFILE),
        "the ceiling for any process's hard RLIMIT_NOFILE; 1048576 is the kernel default and \
         the RLIMIT_NOFILE recommended below cannot exceed it",
    ),
    Setting {
        name: "RLIMIT_NOFILE.hard",
        source: Source::NofileHard,
        want: Want::AtLeast(NOFILE),
        set: None,
        why: "bounds the connections a process can hold even after raising its soft limit: 10k \
              connections need 20k-60k fds; 1048576 (fs.nr_open's default, the usual \
              LimitNOFILE) leaves room",
    },
    Setting {
        name: "RLIMIT_NOFILE.soft",
        source: Source::NofileSoft,
        want: Want::AtLeast(NOFILE),
        set: None,
        why: "what a process started from here gets unless it raises its own limit, as \
              controlplane::limits::raise_nofile does up to the hard one; load generators and \
              other tools on a gateway do not",
    },
    sysctl(
        "net.core.somaxconn",
        Want::AtLeast(4096),
        "caps every listen() backlog; a tunnel's per-core listeners and a router's port ask \
         for 4096 each, so less silently shrinks their accept queues and drops connections in bursts (kernels before \
         5.4 default to 128); the fix sets tuning/sysctl-10g.conf's 65535, room for a larger \
         backlog later",
    )
    .fix_sets(65_535),
    sysctl(
        "net.core.rmem_max",
        Want::AtLeast(BUF_MAX),
        "caps receive buffers set with SO_RCVBUF (benchmark tools, future per-socket tuning); \
         16 MiB covers the bandwidth-delay product of 10 Gbit/s at 13 ms RTT",
    ),
    sysctl(
        "net.core.wmem_max",
        Want::AtLeast(BUF_MAX),
        "caps send buffers set with SO_SNDBUF; 16 MiB as for rmem_max",
    ),
    sysctl(
        "net.ipv4.tcp_rmem",
        Want::MaxAtLeast(BUF_MAX),
        "TCP receive autotuning grows a socket's buffer up to the third value; the default \
         6 MiB caps one flow near 5 Gbit/s at 10 ms RTT, 16 MiB reaches 10 Gbit/s at 13 ms; \
         buffers grow only for flows that need it",
    ),
    sysctl(
        "net.ipv4.tcp_wmem",
        Want::MaxAtLeast(BUF_MAX),
        "the same ceiling for send buffers; the default 4 MiB caps one flow near 3.4 Gbit/s \
         at 10 ms RTT",
    ),
    sysctl(
        "net.core.netdev_max_backlog",
        Want::AtLeast(16_384),
        "packets a core may queue between the NIC driver and the TCP stack; the default 1000 \
         overflows (drops) in 10 Gbit/s bursts when softirq processing falls behind; 16384 as \
         in tuning/sysctl-10g.conf (raise further if /proc/net/softnet_stat shows drops)",
    ),
    sysctl(
        "net.ipv4.ip_local_port_range",
        Want::Ports(10_240, 65_535),
        "a router opens one connection to the source per user connection, each needing its own \
         local port towards one source address and keeping it 60 s in TIME_WAIT after closing; \
         the default 32768-60999 (28232 ports) caps that churn well below 10k connections/s",
    ),
    sysctl(
        "net.ipv4.tcp_tw_reuse",
        Want::Between(1, 2),
        "0 never reuses a TIME_WAIT port for a new outgoing connection; the default 2 does for \
         loopback and 1 for all traffic when timestamps make it safe. As tuning/README.md says, \
         keep 2 unless a router runs out of ports to one source (EADDRNOTAVAIL), then try 1",
    )
    .fix_sets(2),
    sysctl(
        "net.ipv4.tcp_fin_timeout",
        Want::AtMost(15),
        "seconds an orphaned connection waits in FIN_WAIT_2 for the peer's FIN; the default 60 \
         keeps memory and ports of vanished peers four times longer under churn",
    ),
    Setting {
        name: "cpus",
        source: Source::Cpus,
        want: Want::AtLeast(8),
        set: None,
        why: "Conduit runs one data-plane worker per core; the spec's 10 Gbit/s at < 50 % CPU \
              and tuning/README.md's reference host are 8 cores (on a 2-vCPU host a loopback \
              relay moved about 9 Gbit/s with client and server sharing the cores, so fewer \
              cores can reach 10 Gbit/s, without the headroom)",
    },
    Setting {
        name: "ktls",
        source: Source::Ktls,
        want: Want::Available,
        set: None,
        why: "kernel TLS lets the kernel seal and open TLS records so relays splice TCP \
              streams without copying them through userspace (when both ends' kernels have it; \
              `modprobe tls` where it is a module)",
    },
    Setting {
        name: "io_uring",
        source: Source::IoUring,
        want: Want::Available,
        set: None,
        why: "the io_uring engine needs fewer system calls per byte than epoll; without it \
              Conduit runs on epoll, which works everywhere",
    },
];

/// What the host reports beyond `/proc/sys`: the running process and live probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probes {
    /// `RLIMIT_NOFILE` (soft, hard), `u64::MAX` meaning unlimited; `None` if unreadable.
    pub nofile: Option<(u64, u64)>,
    /// Cores this process may use.
    pub cpus: usize,
    /// The kTLS probe on a loopback connection: `Ok`, or what the kernel said.
    pub ktls: Result<(), String>,
    /// Whether io_uring offers what the data plane needs (monoio's probe).
    pub uring: bool,
}

impl Probes {
    /// Probes this process and kernel. The kTLS probe may load the kernel's `tls`
    /// module when run as root.
    pub fn this_process() -> Self {
        Self {
            nofile: crate::limits::nofile().ok(),
            cpus: conduit_dataplane::default_workers(),
            ktls: conduit_dataplane::ktls::probe().map_err(|e| e.to_string()),
            uring: conduit_dataplane::engine::uring_usable(),
        }
    }
}

/// How a setting compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// Meets the recommendation.
    Ok,
    /// Falls short; the check's `fix` says what to do.
    Short,
    /// Could not be read.
    Unknown,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ok => "OK",
            Self::Short => "SHORT",
            Self::Unknown => "UNKNOWN",
        })
    }
}

/// One setting, judged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// The sysctl key or name.
    pub name: &'static str,
    /// How it compares.
    pub status: Status,
    /// The value found (or why there is none).
    pub value: String,
    /// The recommendation.
    pub want: String,
    /// For `SHORT`: the command (or change) that fixes it.
    pub fix: Option<String>,
    /// Why the recommendation.
    pub why: &'static str,
}

/// Every setting, judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Where the sysctl values were read.
    pub sysctl_root: PathBuf,
    /// In [`SETTINGS`] order.
    pub checks: Vec<Check>,
}

impl Report {
    /// How many settings fall short.
    pub fn short(&self) -> usize {
        self.count(Status::Short)
    }

    /// How many could not be read.
    pub fn unknown(&self) -> usize {
        self.count(Status::Unknown)
    }

    fn count(&self, s: Status) -> usize {
        self.checks.iter().filter(|c| c.status == s).count()
    }

    /// The text report, one line per setting, each `SHORT` followed by its fix line,
    /// then a summary line.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::with_capacity(self.checks.len() * 2 + 1);
        for c in &self.checks {
            out.push(format!(
                "{:<8}{:<29} {:<21} want {}",
                c.status.to_string(),
                c.name,
                c.value,
                c.want
            ));
            if let Some(fix) = &c.fix {
                out.push(format!("        fix: {fix}"));
            }
        }
        let n = self.checks.len();
        let unknown = match self.unknown() {
            0 => String::new(),
            k => format!(" ({k} could not be read)"),
        };
        out.push(match self.short() {
            0 => format!("no setting falls short of a 10 Gbps gateway{unknown}"),
            k => format!(
                "{k} of {n} settings fall short of a 10 Gbps gateway{unknown}; `sysctl -w` lasts \
                 until reboot: keep them in /etc/sysctl.d/90-conduit.conf (see tuning/sysctl-10g.conf)"
            ),
        });
        out
    }

    /// The JSON report, pretty-printed: `{"ok", "short", "unknown", "sysctl_root",
    /// "checks": [{"name", "status", "value", "want", "fix", "why"}, ...]}`.
    pub fn json(&self) -> String {
        #[derive(Serialize)]
        struct Json<'a> {
            ok: bool,
            short: usize,
            unknown: usize,
            sysctl_root: &'a Path,
            checks: &'a [Check],
        }
        let json = Json {
            ok: self.short() == 0,
            short: self.short(),
            unknown: self.unknown(),
            sysctl_root: &self.sysctl_root,
            checks: &self.checks,
        };
        // Strings, numbers and a path: serialising cannot fail.
        serde_json::to_string_pretty(&json).unwrap_or_default()
    }
}

/// Judges every setting of [`SETTINGS`] on the host whose `/proc/sys` is `sysctl_root`.
pub fn check(sysctl_root: &Path, probes: &Probes) -> Report {
    let checks = SETTINGS
        .iter()
        .map(|s| judge(s, sysctl_root, probes))
        .collect();
    Report {
        sysctl_root: sysctl_root.to_path_buf(),
        checks,
    }
}

fn judge(s: &Setting, root: &Path, p: &Probes) -> Check {
    let (status, value, fix) = match s.source {
        Source::Sysctl => match read_sysctl(root, s.name) {
            Ok(v) => sysctl_status(s, v),
            Err(e) => (Status::Unknown, unreadable(&e), None),
        },
        Source::NofileSoft | Source::NofileHard => match p.nofile {
            Some((soft, hard)) => {
                let v = if s.source == Source::NofileSoft {
                    soft
                } else {
                    hard
                };
                let fix = nofile_fix(s.source, hard);
                number_status(s.want, v, limit_text(v), || fix)
            }
            None => (Status::Unknown, "unreadable".into(), None),
        },
        Source::Cpus => number_status(s.want, p.cpus as u64, p.cpus.to_string(), || {
            "run on a machine (or give the container or VM) more cores; Conduit starts one \
             worker per core"
                .into()
        }),
        Source::Ktls => ktls_status(root, p),
        Source::IoUring => uring_status(root, p),
    };
    Check {
        name: s.name,
        status,
        value,
        want: s.want.to_string(),
        fix,
        why: s.why,
    }
}

type Judged = (Status, String, Option<String>);

fn sysctl_status(s: &Setting, raw: String) -> Judged {
    let fields: Vec<u64> = match raw.split_whitespace().map(str::parse).collect() {
        Ok(f) => f,
        Err(_) => return (Status::Unknown, format!("not a number: {raw}"), None),
    };
    let set = |v: String| format!("sysctl -w {}={v}", s.name);
    match (s.want, fields.as_slice()) {
        (Want::MaxAtLeast(n), [min, default, max]) => {
            let ok = *max >= n;
            let fix = set(format!("\"{min} {default} {n}\""));
            (status(ok), raw, (!ok).then_some(fix))
        }
        (Want::Ports(lo, hi), [low, high]) => {
            let ok = high.saturating_sub(*low) >= hi - lo;
            (
                status(ok),
                raw,
                (!ok).then(|| set(format!("\"{lo} {hi}\""))),
            )
        }
        (Want::AtLeast(n) | Want::AtMost(n) | Want::Between(_, n), [v]) => {
            number_status(s.want, *v, raw, || set(s.set.unwrap_or(n).to_string()))
        }
        _ => (Status::Unknown, format!("unexpected value: {raw}"), None),
    }
}

fn number_status(want: Want, v: u64, shown: String, fix: impl FnOnce() -> String) -> Judged {
    let ok = match want {
        Want::AtLeast(n) => v >= n,
        Want::AtMost(n) => v <= n,
        Want::Between(lo, hi) => (lo..=hi).contains(&v),
        Want::MaxAtLeast(_) | Want::Ports(..) | Want::Available => false,
    };
    (status(ok), shown, (!ok).then(fix))
}

fn status(ok: bool) -> Status {
    if ok { Status::Ok } else { Status::Short }
}

fn nofile_fix(which: Source, hard: u64) -> String {
    if which == Source::NofileSoft && hard >= NOFILE {
        return format!("ulimit -Sn {NOFILE} in the shell that starts it");
    }
    format!(
        "ulimit -n {NOFILE} as root in the shell that starts it; for a service, LimitNOFILE={NOFILE} \
         in its systemd unit; for logins, tuning/limits.conf in /etc/security/limits.d/"
    )
}

fn ktls_status(root: &Path, p: &Probes) -> Judged {
    let listed = read_sysctl(root, "net.ipv4.tcp_available_ulp")
        .map(|ulps| ulps.split_whitespace().any(|u| u == "tls"));
    match (&p.ktls, listed) {
        (Ok(()), _) => (Status::Ok, "available".into(), None),
        (Err(_), Ok(true)) => (
            Status::Short,
            "listed, but refused".into(),
            Some(format!(
                "the kernel lists the tls ULP but refused it on a test socket ({}); check \
                 dmesg",
                p.ktls.as_ref().err().map_or("", String::as_str)
            )),
        ),
        (Err(_), _) => (
            Status::Short,
            "absent".into(),
            Some(
                "modprobe tls (the kernel must be built with CONFIG_TLS); without it TLS \
                 stays in userspace"
                    .into(),
            ),
        ),
    }
}

fn uring_status(root: &Path, p: &Probes) -> Judged {
    // The knob exists since Linux 6.6; older kernels cannot disable io_uring this way.
    let disabled = match read_sysctl(root, "kernel.io_uring_disabled") {
        Ok(v) => v.trim().parse::<u64>().unwrap_or(0),
        Err(_) => 0,
    };
    match (p.uring, disabled) {
        (true, _) => (Status::Ok, "usable".into(), None),
        (false, d @ 1..) => (
            Status::Short,
            format!("disabled (io_uring_disabled={d})"),
            Some("sysctl -w kernel.io_uring_disabled=0".into()),
        ),
        (false, _) => (
            Status::Short,
            "blocked".into(),
            Some(
                "allow io_uring_setup, io_uring_enter and io_uring_register in the container's \
                 seccomp profile, or use a newer kernel; meanwhile Conduit runs on epoll"
                    .into(),
            ),
        ),
    }
}

/// Reads `<root>/a/b/c` for `a.b.c`, with runs of whitespace (tabs in `tcp_rmem`)
/// turned into single spaces.
fn read_sysctl(root: &Path, name: &str) -> io::Result<String> {
    let path = name
        .split('.')
        .fold(root.to_path_buf(), |p, part| p.join(part));
    let text = std::fs::read_to_string(path)?;
    Ok(text.split_whitespace().collect::<Vec<_>>().join(" "))
}

fn unreadable(e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::NotFound {
        "missing".into()
    } else {
        format!("unreadable: {e}")
    }
}

fn limit_text(v: u64) -> String {
    if v == u64::MAX {
        "unlimited".into()
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests;
