//! A tunnel whose settings ask for more pooled channels than its open-file limit
//! leaves room for: the pool keeps to half the limit, so that the tunnel still
//! answers `conduit status` and `conduit down` and does not spin.

use std::process::Command;

use crate::harness::{Engine, Home, conduit_bin, have, output_of};
use crate::procfs::{TICKS_PER_SEC, cpu_ticks, open_fds, wait_until};
use crate::sources;

struct Cleanup<'a>(&'a Home);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = self.0.run(&["kill", "--all", "--force"]);
    }
}

/// `conduit ARGS` in `home` under an open-file limit of `nofile` (soft and hard, so
/// that the process cannot raise it), which the tunnels it starts inherit.
fn limited(home: &Home, nofile: u64, args: &[&str]) -> Command {
    let mut c = Command::new("prlimit");
    c.arg(format!("--nofile={nofile}:{nofile}"))
        .arg("--")
        .arg(conduit_bin())
        .args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CONDUIT_") {
            c.env_remove(&k);
        }
    }
    c.env_remove("RUST_LOG").env("CONDUIT_HOME", home.path());
    c
}

fn status(home: &Home) -> serde_json::Value {
    serde_json::from_str(&home.ok(&["status", "--format", "json"])).unwrap()
}

/// The audit's case: 2 workers × pool_size 64 under `ulimit -n 120`. The pool used
/// to take every descriptor, after which the control socket could not accept
/// (`unreachable: control socket does not answer`, `down` failing after 5 s) and
/// its accept loop spun a core.
#[test]
fn a_pool_the_open_file_limit_cannot_hold_keeps_to_half_of_it() {
    if !have("prlimit", "--version") {
        return;
    }
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo();
    let (_router, raddr) = home.router(Engine::Epoll, &[source.to_string()]);
    let file = home.path().join("fd.toml");
    std::fs::write(
        &file,
        format!(
            "[router]\nhost = \"127.0.0.1\"\nport = {}\npublic_key = \"{}\"\n\n\
             [security]\nprivate_key_path = \"{}\"\n\n\
             [performance]\nworkers = 2\npool_size = 64\nio_engine = \"epoll\"\n\
             drain_timeout_secs = 2\n\n\
             [[tunnels]]\nname = \"big\"\nsource = \"{source}\"\nbind = \"127.0.0.1:0\"\n",
            raddr.port(),
            home.key("router.pub").display(),
            home.key("client.key").display()
        ),
    )
    .unwrap();
    let file = file.to_str().unwrap();
    // `config validate` says so beforehand, and the file is still valid.
    let checked = output_of(&mut limited(
        &home,
        120,
        &["config", "validate", "-f", file],
    ));
    let said = String::from_utf8_lossy(&checked.stderr);
    assert!(checked.status.success(), "{said}");
    assert!(
        said.contains(&format!(
            "warning: performance.pool_size: workers 2 × pool_size 64 = 128 pooled channels \
             would take more than half of the open-file limit of 120 a tunnel started here \
             runs with (ulimit -Hn; it raises its soft limit to that): each worker would keep \
             30 ready instead; raise the limit to 256 or more (ulimit -n, or LimitNOFILE= in a \
             systemd unit), or lower pool_size or workers ({file}:"
        )),
        "{said}"
    );
    let up = output_of(&mut limited(&home, 120, &["up", "-f", file]));
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );

    // 30 channels for each of the 2 workers: half of 120.
    let seen = wait_until("the pool filled", || {
        let s = status(&home);
        (s[0]["idle_channels"] == 60, s)
    });
    assert_eq!(seen[0]["status"], "running", "{seen}");
    let pid = u32::try_from(seen[0]["pid"].as_u64().unwrap()).unwrap();
    let log = std::fs::read_to_string(home.path().join("logs").join("big.log")).unwrap();
    assert!(
        log.contains(
            "2 workers × pool_size 64 = 128 pooled channels would take more than half of this \
             process's open-file limit of 120: each worker keeps 30 ready instead; raise the \
             open-file limit to 256 or more (ulimit -n, or LimitNOFILE= in a systemd unit) to keep \
             them all, or lower [performance] pool_size or workers"
        ),
        "{log}"
    );
    let fds = open_fds(pid);
    assert!(fds < 100, "the tunnel holds {fds} descriptors of its 120");

    // Idle, it is idle.
    let ticks = cpu_ticks(pid);
    // A window to measure in, not a synchronisation.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let cpu = cpu_ticks(pid) - ticks;
    assert!(
        cpu < TICKS_PER_SEC / 2,
        "an idle tunnel used {cpu} CPU ticks in 2 s"
    );

    let (code, out, err) = home.run(&["down", "-f", file]);
    assert!(code.success(), "conduit down failed: {out}{err}");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z ")),
        "the tunnel is still running after `down`: {out}{err}"
    );
}
