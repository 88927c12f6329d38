//! `tune` against fake `/proc/sys` trees.

use std::path::Path;

use super::*;

/// Writes `name = value` pairs as a `/proc/sys` tree (dots become directories).
fn tree(values: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, value) in values {
        let path = name
            .split('.')
            .fold(dir.path().to_path_buf(), |p, part| p.join(part));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, format!("{value}\n")).unwrap();
    }
    dir
}

/// A stock Linux 6.x host: what a fresh install reports.
const STOCK: &[(&str, &str)] = &[
    ("fs.file-max", "9223372036854775807"),
    ("fs.nr_open", "1048576"),
    ("net.core.somaxconn", "4096"),
    ("net.core.rmem_max", "212992"),
    ("net.core.wmem_max", "212992"),
    ("net.ipv4.tcp_rmem", "4096\t131072\t6291456"),
    ("net.ipv4.tcp_wmem", "4096\t16384\t4194304"),
    ("net.core.netdev_max_backlog", "1000"),
    ("net.ipv4.ip_local_port_range", "32768\t60999"),
    ("net.ipv4.tcp_tw_reuse", "2"),
    ("net.ipv4.tcp_fin_timeout", "60"),
    ("net.ipv4.tcp_available_ulp", "mptcp"),
    ("kernel.io_uring_disabled", "0"),
];

/// A host tuned as recommended.
const TUNED: &[(&str, &str)] = &[
    ("fs.file-max", "2097152"),
    ("fs.nr_open", "1048576"),
    ("net.core.somaxconn", "65535"),
    ("net.core.rmem_max", "16777216"),
    ("net.core.wmem_max", "33554432"),
    ("net.ipv4.tcp_rmem", "4096\t131072\t16777216"),
    ("net.ipv4.tcp_wmem", "4096\t16384\t16777216"),
    ("net.core.netdev_max_backlog", "30000"),
    ("net.ipv4.ip_local_port_range", "1024\t65535"),
    ("net.ipv4.tcp_tw_reuse", "1"),
    ("net.ipv4.tcp_fin_timeout", "10"),
    ("net.ipv4.tcp_available_ulp", "espintcp mptcp tls"),
    ("kernel.io_uring_disabled", "0"),
];

fn stock_probes() -> Probes {
    Probes {
        nofile: Some((1024, 524_288)),
        cpus: 2,
        ktls: Err("No such file or directory (os error 2)".into()),
        uring: true,
    }
}

fn tuned_probes() -> Probes {
    Probes {
        nofile: Some((1_048_576, 1_048_576)),
        cpus: 8,
        ktls: Ok(()),
        uring: true,
    }
}

fn lines(root: &Path, probes: &Probes) -> Vec<String> {
    check(root, probes).lines()
}

#[test]
fn a_tuned_host_is_all_ok() {
    let dir = tree(TUNED);
    let report = check(dir.path(), &tuned_probes());
    assert_eq!(report.short(), 0);
    assert_eq!(report.unknown(), 0);
    assert_eq!(
        report.lines(),
        [
            "OK      fs.file-max                   2097152               want >= 1048576",
            "OK      fs.nr_open                    1048576               want >= 1048576",
            "OK      RLIMIT_NOFILE.hard            1048576               want >= 1048576",
            "OK      RLIMIT_NOFILE.soft            1048576               want >= 1048576",
            "OK      net.core.somaxconn            65535                 want >= 4096",
            "OK      net.core.rmem_max             16777216              want >= 16777216",
            "OK      net.core.wmem_max             33554432              want >= 16777216",
            "OK      net.ipv4.tcp_rmem             4096 131072 16777216  want max >= 16777216",
            "OK      net.ipv4.tcp_wmem             4096 16384 16777216   want max >= 16777216",
            "OK      net.core.netdev_max_backlog   30000                 want >= 16384",
            "OK      net.ipv4.ip_local_port_range  1024 65535            want >= 55296 ports (10240 65535)",
            "OK      net.ipv4.tcp_tw_reuse         1                     want 1 or 2",
            "OK      net.ipv4.tcp_fin_timeout      10                    want <= 15",
            "OK      cpus                          8                     want >= 8",
            "OK      ktls                          available             want available",
            "OK      io_uring                      usable                want available",
            "no setting falls short of a 10 Gbps gateway",
        ]
    );
}

#[test]
fn a_stock_host_gets_every_fix() {
    let dir = tree(STOCK);
    let report = check(dir.path(), &stock_probes());
    assert_eq!(report.short(), 11);
    assert_eq!(
        report.lines(),
        [
            "OK      fs.file-max                   9223372036854775807   want >= 1048576",
            "OK      fs.nr_open                    1048576               want >= 1048576",
            "SHORT   RLIMIT_NOFILE.hard            524288                want >= 1048576",
            "        fix: ulimit -n 1048576 as root in the shell that starts it; for a service, \
             LimitNOFILE=1048576 in its systemd unit; for logins, tuning/limits.conf in \
             /etc/security/limits.d/",
            "SHORT   RLIMIT_NOFILE.soft            1024                  want >= 1048576",
            "        fix: ulimit -n 1048576 as root in the shell that starts it; for a service, \
             LimitNOFILE=1048576 in its systemd unit; for logins, tuning/limits.conf in \
             /etc/security/limits.d/",
            "OK      net.core.somaxconn            4096                  want >= 4096",
            "SHORT   net.core.rmem_max             212992                want >= 16777216",
            "        fix: sysctl -w net.core.rmem_max=16777216",
            "SHORT   net.core.wmem_max             212992                want >= 16777216",
            "        fix: sysctl -w net.core.wmem_max=16777216",
            "SHORT   net.ipv4.tcp_rmem             4096 131072 6291456   want max >= 16777216",
            "        fix: sysctl -w net.ipv4.tcp_rmem=\"4096 131072 16777216\"",
            "SHORT   net.ipv4.tcp_wmem             4096 16384 4194304    want max >= 16777216",
            "        fix: sysctl -w net.ipv4.tcp_wmem=\"4096 16384 16777216\"",
            "SHORT   net.core.netdev_max_backlog   1000                  want >= 16384",
            "        fix: sysctl -w net.core.netdev_max_backlog=16384",
            "SHORT   net.ipv4.ip_local_port_range  32768 60999           want >= 55296 ports (10240 65535)",
            "        fix: sysctl -w net.ipv4.ip_local_port_range=\"10240 65535\"",
            "OK      net.ipv4.tcp_tw_reuse         2                     want 1 or 2",
            "SHORT   net.ipv4.tcp_fin_timeout      60                    want <= 15",
            "        fix: sysctl -w net.ipv4.tcp_fin_timeout=15",
            "SHORT   cpus                          2                     want >= 8",
            "        fix: run on a machine (or give the container or VM) more cores; Conduit \
             starts one worker per core",
            "SHORT   ktls                          absent                want available",
            "        fix: modprobe tls (the kernel must be built with CONFIG_TLS); without it \
             TLS stays in userspace",
            "OK      io_uring                      usable                want available",
            "11 of 16 settings fall short of a 10 Gbps gateway; `sysctl -w` lasts until reboot: \
             keep them in /etc/sysctl.d/90-conduit.conf (see tuning/sysctl-10g.conf)",
        ]
    );
}

#[test]
fn some_fixes_set_the_profile_value_rather_than_the_floor() {
    // An old kernel's listen() cap, and TIME_WAIT reuse switched off.
    let mut old: Vec<_> = TUNED
        .iter()
        .copied()
        .filter(|(k, _)| !["net.core.somaxconn", "net.ipv4.tcp_tw_reuse"].contains(k))
        .collect();
    old.extend([
        ("net.core.somaxconn", "128"),
        ("net.ipv4.tcp_tw_reuse", "0"),
    ]);
    let dir = tree(&old);
    let l = lines(dir.path(), &tuned_probes());
    assert_eq!(
        &l[4..6],
        [
            "SHORT   net.core.somaxconn            128                   want >= 4096",
            "        fix: sysctl -w net.core.somaxconn=65535",
        ]
    );
    assert_eq!(
        &l[12..14],
        [
            "SHORT   net.ipv4.tcp_tw_reuse         0                     want 1 or 2",
            "        fix: sysctl -w net.ipv4.tcp_tw_reuse=2",
        ]
    );
}

#[test]
fn a_soft_limit_below_a_high_hard_one_needs_no_root() {
    let dir = tree(TUNED);
    let probes = Probes {
        nofile: Some((1024, u64::MAX)),
        ..tuned_probes()
    };
    let l = lines(dir.path(), &probes);
    assert_eq!(
        l[2],
        "OK      RLIMIT_NOFILE.hard            unlimited             want >= 1048576"
    );
    assert_eq!(
        &l[3..5],
        [
            "SHORT   RLIMIT_NOFILE.soft            1024                  want >= 1048576",
            "        fix: ulimit -Sn 1048576 in the shell that starts it",
        ]
    );
}

#[test]
fn unreadable_values_are_unknown_and_do_not_count_as_short() {
    // A container's network namespace hides net.core.*; io_uring_disabled only
    // exists since Linux 6.6, and its absence means "not disabled".
    let kept: Vec<_> = TUNED
        .iter()
        .copied()
        .filter(|(k, _)| !k.starts_with("net.core.") && *k != "kernel.io_uring_disabled")
        .map(|(k, v)| {
            if k == "fs.file-max" {
                (k, "lots")
            } else {
                (k, v)
            }
        })
        .collect();
    let dir = tree(&kept);
    let report = check(dir.path(), &tuned_probes());
    assert_eq!((report.short(), report.unknown()), (0, 5));
    let l = report.lines();
    assert_eq!(
        l[0],
        "UNKNOWN fs.file-max                   not a number: lots    want >= 1048576"
    );
    assert_eq!(
        l[4],
        "UNKNOWN net.core.somaxconn            missing               want >= 4096"
    );
    assert_eq!(
        l[15],
        "OK      io_uring                      usable                want available"
    );
    assert_eq!(
        l.last().unwrap(),
        "no setting falls short of a 10 Gbps gateway (5 could not be read)"
    );
    let probes = Probes {
        nofile: None,
        ..tuned_probes()
    };
    let l = lines(dir.path(), &probes);
    assert_eq!(
        l[2],
        "UNKNOWN RLIMIT_NOFILE.hard            unreadable            want >= 1048576"
    );
}

#[test]
fn io_uring_says_whether_a_sysctl_or_seccomp_blocks_it() {
    let no_uring = Probes {
        uring: false,
        ..tuned_probes()
    };
    let mut disabled: Vec<_> = TUNED.to_vec();
    disabled.retain(|(k, _)| *k != "kernel.io_uring_disabled");
    disabled.push(("kernel.io_uring_disabled", "2"));
    let dir = tree(&disabled);
    let l = lines(dir.path(), &no_uring);
    assert_eq!(
        &l[15..17],
        [
            "SHORT   io_uring                      disabled (io_uring_disabled=2) want available",
            "        fix: sysctl -w kernel.io_uring_disabled=0",
        ]
    );
    let dir = tree(TUNED);
    let l = lines(dir.path(), &no_uring);
    assert_eq!(
        &l[15..17],
        [
            "SHORT   io_uring                      blocked               want available",
            "        fix: allow io_uring_setup, io_uring_enter and io_uring_register in the \
             container's seccomp profile, or use a newer kernel; meanwhile Conduit runs on epoll",
        ]
    );
}

#[test]
fn ktls_listed_but_refused_is_short() {
    let dir = tree(TUNED);
    let probes = Probes {
        ktls: Err("Operation not permitted (os error 1)".into()),
        ..tuned_probes()
    };
    let l = lines(dir.path(), &probes);
    assert_eq!(
        &l[14..16],
        [
            "SHORT   ktls                          listed, but refused   want available",
            "        fix: the kernel lists the tls ULP but refused it on a test socket \
             (Operation not permitted (os error 1)); check dmesg",
        ]
    );
}

#[test]
fn json_carries_every_check_with_its_reason() {
    let dir = tree(STOCK);
    let report = check(dir.path(), &stock_probes());
    let text = report.json();
    assert!(
        text.starts_with("{\n  \"ok\": false,\n  \"short\": 11,\n  \"unknown\": 0,\n"),
        "{text}"
    );
    assert!(
        text.contains("{\n      \"name\": \"fs.file-max\",\n      \"status\": \"OK\",\n"),
        "fields keep their order: {text}"
    );
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["short"], 11);
    assert_eq!(v["unknown"], 0);
    assert_eq!(v["sysctl_root"], dir.path().display().to_string());
    let checks = v["checks"].as_array().unwrap();
    assert_eq!(checks.len(), SETTINGS.len());
    assert_eq!(
        checks[4],
        serde_json::json!({
            "name": "net.core.somaxconn",
            "status": "OK",
            "value": "4096",
            "want": ">= 4096",
            "fix": null,
            "why": SETTINGS[4].why,
        })
    );
    assert_eq!(checks[10]["status"], "SHORT");
    assert_eq!(
        checks[10]["fix"],
        "sysctl -w net.ipv4.ip_local_port_range=\"10240 65535\""
    );
}

#[test]
fn the_table_gives_every_setting_a_reason_and_a_unique_name() {
    let mut names: Vec<_> = SETTINGS.iter().map(|s| s.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), SETTINGS.len());
    for s in SETTINGS {
        assert!(s.why.len() > 40, "{}: say why", s.name);
    }
}

#[test]
fn this_host_can_be_checked() {
    // The real /proc/sys: every line is judged, and the summary agrees with them.
    let report = check(Path::new("/proc/sys"), &Probes::this_process());
    assert_eq!(report.checks.len(), SETTINGS.len());
    let l = report.lines();
    let short = l.iter().filter(|l| l.starts_with("SHORT ")).count();
    assert_eq!(short, report.short());
    assert_eq!(
        l.iter().filter(|l| l.starts_with("        fix: ")).count(),
        short
    );
}
