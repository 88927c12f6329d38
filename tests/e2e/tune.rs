//! `conduit tune --check` on the real host: whatever this machine's settings, the
//! report has one line per setting in the documented form, a fix under every SHORT
//! line, and an exit code that agrees with them.

use std::process::{Command, Output};

use crate::harness::conduit_bin;
use crate::procfs::nofile_of;

/// The settings the report covers, in order.
const NAMES: [&str; 16] = [
    "fs.file-max",
    "fs.nr_open",
    "RLIMIT_NOFILE.hard",
    "RLIMIT_NOFILE.soft",
    "net.core.somaxconn",
    "net.core.rmem_max",
    "net.core.wmem_max",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
    "net.core.netdev_max_backlog",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_tw_reuse",
    "net.ipv4.tcp_fin_timeout",
    "cpus",
    "ktls",
    "io_uring",
];

fn tune(args: &[&str]) -> Output {
    Command::new(conduit_bin())
        .arg("tune")
        .args(args)
        .env_remove("CONDUIT_LOG_LEVEL")
        .env_remove("CONDUIT_LOG_FORMAT")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn check_reports_every_setting_and_exits_accordingly() {
    let out = tune(&["--check"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    let (summary, body) = lines.split_last().expect("a summary line");

    let mut settings = Vec::new();
    let mut short = 0;
    for (i, line) in body.iter().enumerate() {
        if let Some(fix) = line.strip_prefix("        fix: ") {
            assert!(!fix.is_empty());
            assert!(
                i > 0 && body[i - 1].starts_with("SHORT   "),
                "a fix line follows only a SHORT line: {stdout}"
            );
            continue;
        }
        let status = line.split_whitespace().next().unwrap();
        assert!(
            ["OK", "SHORT", "UNKNOWN"].contains(&status),
            "unexpected line {line:?}"
        );
        assert_eq!(&line[..8], format!("{status:<8}"), "{line:?}");
        assert!(line.contains(" want "), "{line:?}");
        settings.push(line[8..].split_whitespace().next().unwrap());
        if status == "SHORT" {
            short += 1;
            assert!(
                body.get(i + 1)
                    .is_some_and(|l| l.starts_with("        fix: ")),
                "SHORT without a fix: {line:?}"
            );
        }
    }
    assert_eq!(settings, NAMES, "{stdout}");

    if short == 0 {
        assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
        assert!(
            summary.starts_with("no setting falls short of a 10 Gbps gateway"),
            "{summary}"
        );
        assert_eq!(stderr, "");
    } else {
        assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
        assert!(
            summary.starts_with(&format!(
                "{short} of 16 settings fall short of a 10 Gbps gateway"
            )),
            "{summary}"
        );
        let verb = if short == 1 {
            "setting falls"
        } else {
            "settings fall"
        };
        assert_eq!(
            stderr,
            format!(
                "conduit: error: {short} {verb} short of a 10 Gbps gateway; apply the fixes in \
                 the report\n"
            )
        );
    }
}

#[test]
fn json_agrees_with_the_exit_code() {
    let out = tune(&["--check", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["sysctl_root"], "/proc/sys");
    let checks = v["checks"].as_array().unwrap();
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, NAMES);
    let short = checks.iter().filter(|c| c["status"] == "SHORT").count();
    for c in checks {
        assert_eq!(c["fix"].is_string(), c["status"] == "SHORT", "{c}");
        assert!(c["why"].as_str().is_some_and(|w| !w.is_empty()), "{c}");
    }
    assert_eq!(v["short"], short);
    assert_eq!(v["ok"], short == 0);
    assert_eq!(out.status.code(), Some(if short == 0 { 0 } else { 1 }));
}

#[test]
fn tune_without_check_is_a_usage_error() {
    let out = tune(&[]);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        text(&out.stderr).contains("--check"),
        "{}",
        text(&out.stderr)
    );
    let help = tune(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(
        text(&help.stdout).contains("Exit status: 0 when no setting falls short, 1 when one does"),
        "{}",
        text(&help.stdout)
    );
}

#[test]
fn a_router_and_a_tunnel_raise_their_open_file_limit_to_the_hard_one() {
    use crate::harness::{Engine, Home, have};
    use crate::sources;
    if !have("prlimit", "--version") {
        return;
    }
    // This test's process (nextest runs each test in its own) starts its children
    // with a low soft limit; the hard one stays.
    let me = std::process::id().to_string();
    let set = Command::new("prlimit")
        .args(["--pid", &me, "--nofile=512:"])
        .status()
        .unwrap();
    assert!(set.success());
    assert_eq!(nofile_of(std::process::id()).0, "512");
    let hard = nofile_of(std::process::id()).1;

    let home = Home::with_keys();
    let source = sources::echo();
    let (router, raddr) = home.router(Engine::Epoll, &[source.to_string()]);
    let (tunnel, _) = home.tunnel(Engine::Epoll, raddr, &source.to_string());
    for pid in [router.pid(), tunnel.pid()] {
        assert_eq!(nofile_of(pid), (hard.clone(), hard.clone()), "pid {pid}");
    }
}

/// `conduit version`: the build (version, commit, date, target, protocol) and what
/// this host offers it, one line each; its kernel-TLS answer is the same live probe
/// as `tune --check`'s, so the two agree whatever this host has.
#[test]
fn version_names_the_build_and_what_this_host_offers() {
    let out = Command::new(conduit_bin()).arg("version").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stderr), "");
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    let field = |i: usize, label: &str| -> String {
        let line = lines
            .get(i)
            .unwrap_or_else(|| panic!("no line {i}: {stdout}"));
        line.strip_prefix(label)
            .unwrap_or_else(|| panic!("line {i} is not {label:?}…: {stdout}"))
            .to_owned()
    };
    assert_eq!(lines.len(), 7, "{stdout}");
    assert_eq!(lines[0], format!("conduit {}", env!("CARGO_PKG_VERSION")));

    let commit = field(1, "commit:     ");
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
        "{stdout}"
    );
    let built = field(2, "built:      ");
    let stamp = built.as_bytes();
    assert!(
        built == "unknown"
            || (stamp.len() == 20
                && stamp.iter().enumerate().all(|(i, b)| match i {
                    4 | 7 => *b == b'-',
                    10 => *b == b'T',
                    13 | 16 => *b == b':',
                    19 => *b == b'Z',
                    _ => b.is_ascii_digit(),
                })),
        "{stdout}"
    );
    let target = field(3, "target:     ");
    assert!(target.split('-').count() >= 3, "{stdout}");

    let engines = field(4, "io engines: ");
    assert!(
        ["io_uring, epoll", "epoll"].contains(&engines.as_str()),
        "{stdout}"
    );

    let tuned = text(&tune(&["--check"]).stdout);
    let ktls_line = tuned
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("ktls"))
        .unwrap_or_else(|| panic!("no ktls line: {tuned}"));
    let uring_line = tuned
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("io_uring"))
        .unwrap_or_else(|| panic!("no io_uring line: {tuned}"));
    assert_eq!(
        engines.starts_with("io_uring"),
        uring_line.starts_with("OK "),
        "{stdout}{uring_line}"
    );
    let kernel_tls = field(5, "kernel TLS: ");
    if ktls_line.starts_with("OK ") {
        assert_eq!(kernel_tls, "yes");
    } else {
        assert_eq!(
            kernel_tls,
            "no (TLS records are sealed in userspace; `conduit tune --check` says why)"
        );
    }
    assert_eq!(
        field(6, "protocol:   "),
        conduit_proto::version::CURRENT.to_string()
    );
}
