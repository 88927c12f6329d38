//! `conduit up --foreground`: it supervises the file's tunnels and stops them all on
//! a signal (or with itself); a child that fails is logged and restarted alone, one
//! stopped on purpose stays stopped, and a plain `up` leaves the supervisor's
//! tunnels to it.

use std::time::{Duration, Instant};

use super::{Cleanup, echo_through, list, names, pid_of, said, write_file};
use crate::harness::{DEADLINE, Engine, Home, assert_code};
use crate::sources;

/// Waits until tunnel `name` runs (its status `running`), and returns its pid.
fn running(home: &Home, name: &str) -> u64 {
    crate::procfs::wait_until(&format!("tunnel {name} to run"), || {
        let l = list(home);
        let t = l.iter().find(|t| t["name"] == name).cloned();
        let pid = t
            .as_ref()
            .filter(|t| t["status"] == "running")
            .and_then(|t| t["pid"].as_u64());
        (pid.is_some(), (pid, l))
    })
    .0
    .unwrap_or_default()
}

fn sigkill(pid: u64) {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// A child killed outright (SIGKILL) is logged at once, naming the tunnel and the
/// signal, and started again alone; the other tunnel's process is left as it was.
/// A child stopped on purpose (`conduit kill`) is logged at info and not restarted;
/// once no child is left, the supervisor exits 0.
#[test]
fn a_killed_child_is_restarted_alone_and_a_stopped_one_is_not() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo().to_string();
    let (_router, raddr) = home.router(Engine::Epoll, std::slice::from_ref(&source));
    let file = write_file(
        &home,
        raddr.port(),
        &[("one", source.clone()), ("two", source.clone())],
    );
    let mut sup = home.spawn(&["up", "-f", file.to_str().unwrap(), "--foreground"]);
    let (one, two) = (running(&home, "one"), running(&home, "two"));

    sigkill(one);
    sup.wait_stderr("tunnel \"one\" was killed by signal 9 (SIGKILL) without saying why");
    sup.wait_stderr("restarting tunnel \"one\" in 1s (failure 1 in a row)");
    let again = crate::procfs::wait_until("one to be started again", || {
        let pid = running(&home, "one");
        (pid != one, pid)
    });
    assert_ne!(again, one);
    assert_eq!(pid_of(&home, "two"), two);
    echo_through(&home, "one");

    let (status, out, err) = home.run(&["kill", "--tunnel", "one"]);
    assert_code(status, 0, &err);
    assert!(out.starts_with("stopped tunnel \"one\""), "{out}");
    sup.wait_stderr(
        "tunnel \"one\" exited with code 0 (stopped on purpose: `conduit kill` or `down`); \
         not restarting it",
    );
    assert_eq!(names(&home), ["two"]);
    assert!(sup.running(), "{}", sup.stderr());
    assert_eq!(sup.stderr_count("restarting tunnel \"one\""), 1);

    let (status, _, err) = home.run(&["kill", "--tunnel", "two"]);
    assert_code(status, 0, &err);
    let status = sup.wait_exit();
    assert_code(status, 0, &sup.stderr());
    assert!(list(&home).is_empty());
}

/// Waits until tunnel `name` runs with a pid other than `old`, and returns it.
fn restarted(home: &Home, name: &str, old: u64) -> u64 {
    crate::procfs::wait_until(&format!("tunnel {name} to be started again"), || {
        let pid = running(home, name);
        (pid != old, pid)
    })
}

fn source_of(home: &Home, name: &str) -> String {
    let l = list(home);
    let t = l.iter().find(|t| t["name"] == name).unwrap();
    t["source"].as_str().unwrap().to_owned()
}

/// A child that fails is started again on the settings the supervisor started
/// with, whatever the file says by then: a source edited in the file is not taken
/// up by the one tunnel restarted (the other running on the old one), and neither
/// a tunnel removed from the file nor a file made invalid keeps a child from
/// starting again.
#[test]
fn a_restarted_child_runs_the_settings_the_supervisor_started_with() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo().to_string();
    let edited = sources::echo().to_string();
    let (_router, raddr) = home.router(Engine::Epoll, &[source.clone(), edited.clone()]);
    let file = write_file(
        &home,
        raddr.port(),
        &[("one", source.clone()), ("two", source.clone())],
    );
    let text = std::fs::read_to_string(&file).unwrap();
    let mut sup = home.spawn(&["up", "-f", file.to_str().unwrap(), "--foreground"]);
    let (one, two) = (running(&home, "one"), running(&home, "two"));

    let was = format!("source = \"{source}\"");
    let now = format!("source = \"{edited}\"");
    std::fs::write(&file, text.replacen(&was, &now, 1)).unwrap();
    sigkill(one);
    let one = restarted(&home, "one", one);
    assert_eq!(source_of(&home, "one"), source);
    echo_through(&home, "one");

    let without_two = &text[..text.find("\n[[tunnels]]\nname = \"two\"").unwrap()];
    std::fs::write(&file, without_two).unwrap();
    sigkill(two);
    restarted(&home, "two", two);
    assert_eq!(source_of(&home, "two"), source);
    echo_through(&home, "two");

    std::fs::write(&file, format!("{text}garbage = [\n")).unwrap();
    sigkill(one);
    restarted(&home, "one", one);
    echo_through(&home, "one");

    let err = sup.stderr();
    assert_eq!(sup.stderr_count("restarting tunnel \"one\""), 2, "{err}");
    assert_eq!(sup.stderr_count("restarting tunnel \"two\""), 1, "{err}");
    assert!(!err.contains("invalid TOML"), "{err}");
    assert!(!err.contains("has no tunnel named"), "{err}");
    let status = sup.stop();
    assert_code(status, 0, &sup.stderr());
    assert!(list(&home).is_empty());
}

/// A child that cannot start (its bind address in use) is logged with its exit
/// code and its own reason, and tried again after 1 s, then 2 s; once the address
/// is free it comes up. A supervisor stopped while a restart is pending exits with
/// the failed child's code, as `up` would.
#[test]
fn a_child_that_cannot_bind_is_retried_with_backoff_until_it_can() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo().to_string();
    let (_router, raddr) = home.router(Engine::Epoll, std::slice::from_ref(&source));
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap().to_string();
    let file = write_file(&home, raddr.port(), &[("web", source.clone())]);
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("127.0.0.1:0", &taken);
    std::fs::write(&file, text).unwrap();
    let f = file.to_str().unwrap();

    let mut sup = home.spawn(&["up", "-f", f, "--foreground"]);
    let failed = format!(
        "tunnel \"web\" exited with code 69: cannot listen on {taken}: Address already in use"
    );
    sup.wait_stderr(&failed);
    sup.wait_stderr("restarting tunnel \"web\" in 1s (failure 1 in a row)");
    sup.wait_stderr("restarting tunnel \"web\" in 2s (failure 2 in a row)");
    // Between two runs the supervisor holds the name: neither a plain `up` of the
    // file nor a `start` takes the tunnel from it.
    let refusal = format!(
        "tunnel \"web\" is run by `conduit up --foreground` (pid {}), which restarts it when \
         it fails and holds its name meanwhile: leave it to that supervisor, stop the \
         supervisor (or the service that runs it) first, or choose another name (--name, or \
         name in the file)",
        sup.pid()
    );
    let (status, out, err) = home.run(&["up", "-f", f]);
    assert_code(status, 64, &err);
    assert_eq!(out, "");
    assert_eq!(
        said(&err),
        format!("conduit: error: tunnel \"web\": {refusal}\n")
    );
    let start = crate::manage::start_args(&home, &raddr.to_string(), &source, "web");
    let (status, _, err) = crate::manage::run_args(&home, &start);
    assert_code(status, 64, &err);
    assert_eq!(said(&err), format!("conduit: error: {refusal}\n"));
    drop(held);
    running(&home, "web");
    echo_through(&home, "web");
    let status = sup.stop();
    assert_code(status, 0, &sup.stderr());
    assert!(list(&home).is_empty());

    // Stopped while it waits to try again: the code of the last failure.
    let held = std::net::TcpListener::bind(&taken).unwrap();
    let mut sup = home.spawn(&["up", "-f", f, "--foreground"]);
    sup.wait_stderr("restarting tunnel \"web\" in 2s (failure 2 in a row)");
    let status = sup.stop();
    let err = sup.stderr();
    assert_code(status, 69, &err);
    assert!(
        err.ends_with("conduit: error: tunnels that failed: web\n"),
        "{err}"
    );
    drop(held);
}

/// A failed tunnel has no process until its supervisor starts it again, but `list`,
/// `status` and `health` show it restarting, with how its last run ended; `kill`
/// (or `down`) stops it there: the supervisor does not start it again and, with
/// none left, exits as after a `kill` of a running tunnel.
#[test]
fn a_supervised_tunnel_waiting_to_restart_is_shown_and_can_be_stopped() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo().to_string();
    let (_router, raddr) = home.router(Engine::Epoll, std::slice::from_ref(&source));
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap().to_string();
    let file = write_file(&home, raddr.port(), &[("web", source.clone())]);
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("127.0.0.1:0", &taken);
    std::fs::write(&file, text).unwrap();
    let f = file.to_str().unwrap();
    let failed = format!(
        "exited with code 69: cannot listen on {taken}: Address already in use (os error 98); \
         another program (or another tunnel) already listens there: pick another --bind or \
         stop the other one (`conduit list` shows tunnels)"
    );

    for stopper in [vec!["kill", "--tunnel", "web"], vec!["down", "-f", f]] {
        let mut sup = home.spawn(&["up", "-f", f, "--foreground"]);
        // Four seconds to look before the next run: plenty for what follows.
        sup.wait_stderr("restarting tunnel \"web\" in 4s (failure 3 in a row)");
        let pid = sup.pid();
        let l = list(&home);
        assert_eq!(l.len(), 1, "{l:?}");
        let t = &l[0];
        assert_eq!(t["name"], "web");
        assert_eq!(t["status"], "restarting");
        assert_eq!(t["bind"], taken.as_str());
        assert_eq!(t["source"], source.as_str());
        assert!(t["id"].is_null() && t["pid"].is_null(), "{t}");
        assert_eq!(t["supervisor_pid"], pid);
        assert_eq!(t["failures"], 3);
        assert_eq!(t["error"], failed.as_str());
        let table = home.ok(&["list"]);
        let row: Vec<&str> = table
            .lines()
            .nth(1)
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let (r, b) = (raddr.to_string(), taken.as_str());
        let want = [
            "-",
            "web",
            "-",
            &r,
            &source,
            b,
            "restarting",
            "0",
            "-",
            "-",
            "-",
        ];
        assert_eq!(row, want, "{table}");
        let status = home.ok(&["status"]);
        assert!(
            status.starts_with(&format!(
                "web (supervised by pid {pid}): restarting — its last run failed ({failed}); \
                 it starts again in "
            )) && status.ends_with("s (failure 3 in a row)\n"),
            "{status}"
        );
        let (code, out, err) = home.run(&["health"]);
        assert_code(code, 1, &err);
        assert!(
            out.starts_with(&format!(
                "web: not running: its last run failed ({failed}); it starts again "
            )),
            "{out}"
        );

        let (code, out, err) = home.run(&stopper);
        assert_code(code, 0, &err);
        assert_eq!(
            out,
            format!(
                "stopped tunnel \"web\", which was waiting to start again after a failure: its \
                 supervisor (`conduit up --foreground`, pid {pid}) does not start it again\n"
            )
        );
        assert_eq!(home.ok(&["list"]), "no tunnels running\n");
        let status = sup.wait_exit();
        assert_code(status, 0, &sup.stderr());
        sup.wait_stderr(
            "tunnel \"web\" was stopped by `conduit kill` or `down` while it waited to start \
             again; not restarting it",
        );
        assert_eq!(sup.stderr_count("restarting tunnel \"web\" in 8s"), 0);
    }
    drop(held);
}

/// A supervisor whose file names a tunnel that already runs (here from a plain `up`
/// of the same file) refuses to start, naming it, and starts nothing: it would
/// otherwise fail that child again and again.
#[test]
fn a_supervisor_refuses_a_name_already_running() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo().to_string();
    let (_router, raddr) = home.router(Engine::Epoll, std::slice::from_ref(&source));
    let file = write_file(&home, raddr.port(), &[("web", source.clone())]);
    let f = file.to_str().unwrap();
    let (status, _, err) = home.run(&["up", "-f", f]);
    assert_code(status, 0, &err);
    let (pid, id) = {
        let l = list(&home);
        (
            l[0]["pid"].as_u64().unwrap(),
            l[0]["id"].as_str().unwrap().to_owned(),
        )
    };
    let (status, out, err) = home.run(&["up", "-f", f, "--foreground"]);
    assert_code(status, 64, &err);
    assert_eq!(out, "");
    assert_eq!(
        said(&err),
        format!(
            "conduit: error: a tunnel named \"web\" is already running (id {id}, pid {pid}): \
             stop it with `conduit kill --tunnel web` or choose another name (--name, or name \
             in the file)\n"
        )
    );
    assert_eq!(names(&home), ["web"]);
    assert_eq!(pid_of(&home, "web"), pid);
}

/// A plain `up` of the file a supervisor runs neither restarts a changed tunnel
/// nor stops one gone from the file: it names the supervisor and exits 64, and the
/// tunnels run on as they were. `down` stops them (the supervisor, told nothing,
/// does not restart them), saying that they stay down.
#[test]
fn plain_up_leaves_a_supervised_tunnel_to_its_supervisor() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo().to_string();
    let (_router, raddr) = home.router(Engine::Epoll, std::slice::from_ref(&source));
    let file = write_file(
        &home,
        raddr.port(),
        &[("web", source.clone()), ("old", source.clone())],
    );
    let f = file.to_str().unwrap();
    let mut sup = home.spawn(&["up", "-f", f, "--foreground"]);
    let (web, old) = (running(&home, "web"), running(&home, "old"));
    let sup_pid = sup.pid();

    // The same settings: up to date, as for any tunnel.
    let (status, out, err) = home.run(&["up", "-f", f]);
    assert_code(status, 0, &err);
    assert!(out.starts_with("tunnel \"web\" is up to date"), "{out}");

    let changed = std::fs::read_to_string(&file)
        .unwrap()
        .replace("drain_timeout_secs = 2", "drain_timeout_secs = 3");
    let web_only = changed[..changed.find("\n[[tunnels]]\nname = \"old\"").unwrap()].to_owned();
    std::fs::write(&file, web_only).unwrap();
    let (status, out, err) = home.run(&["up", "-f", f]);
    assert_code(status, 64, &err);
    assert_eq!(out, "");
    let tail = "runs it and restarts it when it fails, so this `up` leaves it alone; restart \
                that supervisor (or the service that runs it) to apply the file";
    assert_eq!(
        said(&err),
        format!(
            "conduit: error: tunnel \"web\": its settings changed, but `conduit up --foreground \
             -f {f}` (pid {sup_pid}) {tail}\ntunnel \"old\": it is no longer in the file, but \
             `conduit up --foreground -f {f}` (pid {sup_pid}) {tail}\n"
        )
    );
    assert_eq!((pid_of(&home, "web"), pid_of(&home, "old")), (web, old));

    let (status, out, err) = home.run(&["down", "-f", f]);
    assert_code(status, 0, &err);
    for n in ["web", "old"] {
        assert!(out.contains(&format!("stopped tunnel \"{n}\"")), "{out}");
        assert!(
            err.contains(&format!(
                "tunnel \"{n}\" is run by `conduit up --foreground` (pid {sup_pid}), which does \
                 not restart a tunnel stopped on purpose: it stays down until that supervisor \
                 is restarted\n"
            )),
            "{err}"
        );
    }
    let status = sup.wait_exit();
    assert_code(status, 0, &sup.stderr());
    assert_eq!(sup.stderr_count("restarting tunnel"), 0, "{}", sup.stderr());
    assert!(list(&home).is_empty());
}

#[test]
fn up_foreground_supervises_and_stops_everything_on_sigterm() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo().to_string();
    let (_router, raddr) = home.router(Engine::Epoll, std::slice::from_ref(&source));
    let file = write_file(
        &home,
        raddr.port(),
        &[("one", source.clone()), ("two", source.clone())],
    );
    let mut sup = home.spawn(&["up", "-f", file.to_str().unwrap(), "--foreground"]);
    let deadline = Instant::now() + DEADLINE;
    while !(names(&home) == ["one", "two"] && list(&home).iter().all(|t| t["status"] == "running"))
    {
        assert!(
            Instant::now() < deadline,
            "tunnels never came up: {:?}",
            list(&home)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    echo_through(&home, "one");
    echo_through(&home, "two");
    // Its tunnels log through it: `logs` says where, rather than show a log file an
    // earlier background run of the name left (planted here).
    std::fs::create_dir_all(home.path().join("logs")).unwrap();
    std::fs::write(home.path().join("logs/one.log"), "an earlier run's line\n").unwrap();
    let (status, out, err) = home.run(&["logs", "one"]);
    assert_code(status, 64, &err);
    assert_eq!(out, "");
    assert_eq!(
        err,
        format!(
            "conduit: error: tunnel \"one\" runs under `conduit up --foreground` (pid {}), \
             which writes its lines with its own (to its terminal or service journal, or to \
             its --log-file): read them there\n",
            sup.pid()
        )
    );
    let status = sup.stop();
    assert_code(status, 0, &sup.stderr());
    assert!(list(&home).is_empty(), "{:?}", list(&home));
}

/// Closing its terminal (SIGHUP) stops a supervisor as Ctrl-C does: every tunnel
/// drains and stops, and it exits 0 (it used to die at once, SIGHUP's default).
#[test]
fn up_foreground_stops_everything_gracefully_on_sighup() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo().to_string();
    let (_router, raddr) = home.router(Engine::Epoll, std::slice::from_ref(&source));
    let file = write_file(&home, raddr.port(), &[("one", source.clone())]);
    let mut sup = home.spawn(&["up", "-f", file.to_str().unwrap(), "--foreground"]);
    running(&home, "one");
    echo_through(&home, "one");
    sup.signal("HUP");
    let status = sup.wait_exit();
    assert_code(status, 0, &sup.stderr());
    assert!(
        sup.stderr().contains("stopping every tunnel (SIGHUP)"),
        "{}",
        sup.stderr()
    );
    assert!(list(&home).is_empty(), "{:?}", list(&home));
}

/// Ctrl-C at the terminal (SIGINT to the supervisor's whole process group) reaches
/// the supervisor only: its tunnels are asked once to stop, and drain, so a held
/// connection goes on echoing until it closes (a tunnel signalled twice, by the
/// terminal and then by the supervisor, would cut it).
#[cfg(unix)]
#[test]
fn ctrl_c_to_the_supervisor_s_group_lets_its_tunnels_drain() {
    use std::io::{Read, Write};
    use std::os::unix::process::CommandExt;
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo().to_string();
    let (_router, raddr) = home.router(Engine::Epoll, std::slice::from_ref(&source));
    let file = write_file(&home, raddr.port(), &[("one", source.clone())]);
    let mut cmd = home.cmd();
    cmd.args(["up", "-f", file.to_str().unwrap(), "--foreground"])
        .process_group(0);
    let mut sup = crate::harness::Proc::spawn(&mut cmd);
    running(&home, "one");
    let bind = list(&home)[0]["bind"].as_str().unwrap().to_owned();
    let mut held = std::net::TcpStream::connect(&bind).unwrap();
    held.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut echo = |what: &[u8]| {
        held.write_all(what).unwrap();
        let mut back = vec![0u8; what.len()];
        held.read_exact(&mut back).unwrap();
        assert_eq!(back, what);
    };
    echo(b"before");

    let status = std::process::Command::new("kill")
        .args(["-INT", "--", &format!("-{}", sup.pid())])
        .status()
        .unwrap();
    assert!(status.success());
    sup.wait_stderr("stopping every tunnel (SIGINT)");
    sup.wait_stderr("stopping: no new connections; draining open ones");
    echo(b"while it drains");
    drop(held);
    let status = sup.wait_exit();
    let err = sup.stderr();
    assert_code(status, 0, &err);
    assert!(!err.contains("while stopping"), "{err}");
    assert!(
        err.contains("the open connection finished within the drain"),
        "{err}"
    );
    assert!(list(&home).is_empty(), "{:?}", list(&home));
}

/// A second signal to the supervisor cuts its tunnels' drains short, as a second
/// signal to a tunnel does: a held connection is closed and the supervisor exits
/// within moments, not at the drain deadline (ten minutes here).
#[test]
fn a_second_signal_to_the_supervisor_cuts_the_drains_short() {
    use std::io::Read;
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo().to_string();
    let (_router, raddr) = home.router(Engine::Epoll, std::slice::from_ref(&source));
    let file = write_file(&home, raddr.port(), &[("one", source.clone())]);
    let mut sup = home.spawn(&[
        "up",
        "-f",
        file.to_str().unwrap(),
        "--foreground",
        "--set",
        "performance.drain_timeout_secs=600",
    ]);
    running(&home, "one");
    let bind = list(&home)[0]["bind"].as_str().unwrap().to_owned();
    let mut held = std::net::TcpStream::connect(&bind).unwrap();
    held.set_read_timeout(Some(DEADLINE)).unwrap();
    crate::procfs::wait_until("the held connection to be counted", || {
        let l = list(&home);
        (l.first().is_some_and(|t| t["active_connections"] == 1), ())
    });

    sup.signal("INT");
    sup.wait_stderr("stopping: no new connections; draining open ones");
    sup.signal("INT");
    sup.wait_stderr("stopping every tunnel now (SIGINT again): open connections close");
    let status = sup.wait_exit();
    assert_code(status, 0, &sup.stderr());
    // Closed by the cut, not by the deadline.
    let mut rest = Vec::new();
    let _ = held.read_to_end(&mut rest);
    assert!(rest.is_empty());
    assert!(list(&home).is_empty(), "{:?}", list(&home));
}

/// A supervised tunnel stopped with `conduit kill --force` (SIGKILL once it does
/// not answer: here it is frozen) stays down, as `kill` says; the supervisor does
/// not take the kill for a failure.
#[test]
fn a_supervised_tunnel_killed_with_force_stays_down() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo().to_string();
    let (_router, raddr) = home.router(Engine::Epoll, std::slice::from_ref(&source));
    let file = write_file(
        &home,
        raddr.port(),
        &[("one", source.clone()), ("two", source.clone())],
    );
    let mut sup = home.spawn(&["up", "-f", file.to_str().unwrap(), "--foreground"]);
    let (one, _) = (running(&home, "one"), running(&home, "two"));
    let stop = std::process::Command::new("kill")
        .args(["-STOP", &one.to_string()])
        .status()
        .unwrap();
    assert!(stop.success());

    let (status, out, err) = home.run(&["kill", "--tunnel", "one", "--force"]);
    assert_code(status, 0, &err);
    assert!(
        out.contains(&format!(
            "killed pid {one} (SIGKILL) and removed its registry entry"
        )),
        "{out}"
    );
    sup.wait_stderr(
        "tunnel \"one\" was killed by `conduit kill --force` (or `down --force`), on purpose; \
         not restarting it",
    );
    assert_eq!(sup.stderr_count("restarting tunnel \"one\""), 0);
    assert_eq!(names(&home), ["two"]);
    assert!(!home.path().join("run").join("one.killed").exists());

    let (status, _, err) = home.run(&["kill", "--tunnel", "two"]);
    assert_code(status, 0, &err);
    assert_code(sup.wait_exit(), 0, &sup.stderr());
}

/// A supervisor killed outright (SIGKILL: no chance to stop its children) takes its
/// tunnels with it, so a new `up --foreground` can bring them up again.
#[test]
fn tunnels_of_a_killed_supervisor_stop_and_come_up_again() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo().to_string();
    let (_router, raddr) = home.router(Engine::Epoll, std::slice::from_ref(&source));
    let file = write_file(&home, raddr.port(), &[("one", source.clone())]);
    let file = file.to_str().unwrap();
    let up = || {
        let sup = home.spawn(&["up", "-f", file, "--foreground"]);
        crate::procfs::wait_until("the tunnel to run", || {
            let l = list(&home);
            (l.len() == 1 && l[0]["status"] == "running", l)
        });
        sup
    };
    let sup = up();
    echo_through(&home, "one");
    sup.signal("KILL");
    crate::procfs::wait_until("the supervisor's tunnel to stop", || {
        let l = list(&home);
        (l.is_empty(), l)
    });
    let mut again = up();
    echo_through(&home, "one");
    let status = again.stop();
    assert_code(status, 0, &again.stderr());
}

/// `up --foreground --log-file FILE` (a service's command line) sends every tunnel's
/// log to FILE, not only the supervisor's own lines; a plain `up` says that its
/// `--log-file` (or `CONDUIT_LOG_FILE`) is not where its tunnels log, and they log
/// to `logs/NAME.log` as always.
#[test]
fn the_log_file_of_up_foreground_holds_every_tunnels_log() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo().to_string();
    let (_router, raddr) = home.router(Engine::Epoll, std::slice::from_ref(&source));
    let file = write_file(
        &home,
        raddr.port(),
        &[("one", source.clone()), ("two", source.clone())],
    );
    let file = file.to_str().unwrap();
    let log = home.path().join("supervisor.log");
    let mut sup = home.spawn(&[
        "up",
        "-f",
        file,
        "--foreground",
        "--log-file",
        log.to_str().unwrap(),
    ]);
    running(&home, "one");
    running(&home, "two");
    crate::procfs::wait_until("both tunnels' lines in the log file", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let both = ["one", "two"].iter().all(|n| {
            text.lines()
                .any(|l| l.contains("connected to router") && l.contains(&format!("tunnel={n}")))
        });
        (both, text)
    });
    assert!(
        !sup.stderr().contains("connected to router"),
        "{}",
        sup.stderr()
    );
    echo_through(&home, "one");
    let status = sup.stop();
    assert_code(status, 0, &sup.stderr());

    // A plain `up`: the variable is up's own, and each tunnel logs to its own file.
    let elsewhere = home.path().join("elsewhere.log");
    let (status, _, err) = {
        let out = home
            .cmd()
            .args(["up", "-f", file])
            .env("CONDUIT_LOG_FILE", &elsewhere)
            .output()
            .unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_code(status, 0, &err);
    assert!(
        err.contains(&format!(
            "warning: --log-file {} (or CONDUIT_LOG_FILE) takes only this command's own \
             messages: each tunnel `up` starts in the background logs to \
             $CONDUIT_HOME/logs/NAME.log (`conduit logs NAME`); under `up --foreground` every \
             tunnel's log goes to it",
            elsewhere.display()
        )),
        "{err}"
    );
    let own = std::fs::read_to_string(home.path().join("logs").join("one.log")).unwrap();
    assert!(own.contains("connected to router"), "{own}");
    let shared = std::fs::read_to_string(&elsewhere).unwrap_or_default();
    assert!(!shared.contains("connected to router"), "{shared}");
}
