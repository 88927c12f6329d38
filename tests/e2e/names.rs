//! Launching background tunnels: one tunnel per name, the log files they leave, the
//! names `start` accepts, and the home directory they are registered in.

use std::process::Stdio;

use crate::harness::{Engine, Home, assert_code};
use crate::manage::{Cleanup, list_json, pid_alive, run_args, start_args, wait_list};
use crate::procfs::wait_until;
use crate::sources;

fn log_of(home: &Home, file: &str) -> Vec<u8> {
    std::fs::read(home.path().join("logs").join(file))
        .unwrap_or_else(|e| panic!("logs/{file}: {e}"))
}

#[test]
fn two_starts_of_one_name_at_once_leave_one_tunnel() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo();
    let (_router, raddr) = home.router(Engine::Epoll, &[source.to_string()]);
    let args = start_args(&home, &raddr.to_string(), &source.to_string(), "race");
    let spawn = || {
        home.cmd()
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let mut outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
    outs.sort_by_key(|o| o.status.code());
    let [won, lost] = outs;
    let err = String::from_utf8_lossy(&won.stderr);
    assert_code(won.status, 0, &err);
    let err = String::from_utf8_lossy(&lost.stderr);
    assert_code(lost.status, 64, &err);
    assert!(lost.stdout.is_empty());
    // Before the winner registers, it is being started; after, it is running.
    // (The pid, once the winner has written it into the lock file.)
    let starting = err
        .starts_with("conduit: error: a tunnel named \"race\" is being started right now")
        && (err.ends_with(
            ": see it with `conduit list` once that is done, or choose another name (--name, or \
             name in the file)\n",
        ) || err.contains(
            ": see it with `conduit list` once that is done, or choose another name (--name, or \
             name in the file); if `conduit list` never shows it, pid ",
        ));
    let running = err.starts_with("conduit: error: a tunnel named \"race\" is already running (")
        && err.ends_with(
            "): stop it with `conduit kill --tunnel race` or choose another name (--name, or \
             name in the file)\n",
        );
    assert!(starting || running, "{err}");

    let l = list_json(&home);
    assert_eq!(l.len(), 1, "{l:#?}");
    assert_eq!(l[0]["name"], "race");
    // The winner's log is the only one, and the loser wrote nothing into it.
    let log = String::from_utf8_lossy(&log_of(&home, "race.log")).into_owned();
    assert!(!log.contains("already running"), "{log}");
    assert!(!home.path().join("logs/race.log.1").exists());
}

/// The name lock files in `run/`.
fn locks(home: &Home) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(home.path().join("run")) else {
        return Vec::new();
    };
    let mut names: Vec<_> = dir
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".lock"))
        .collect();
    names.sort();
    names
}

#[test]
fn neither_a_failed_start_nor_a_stopped_tunnel_leaves_its_name_lock() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo();
    let (_router, raddr) = home.router(Engine::Epoll, &[source.to_string()]);
    let mut args = start_args(&home, &raddr.to_string(), &source.to_string(), "tidy");
    let bind_at = args.iter().position(|a| a == "--bind").unwrap() + 1;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    args[bind_at] = taken.local_addr().unwrap().to_string();
    // In the background (the child fails after its parent handed it the claim) and
    // in the foreground.
    let (status, _, err) = run_args(&home, &args);
    assert_code(status, 69, &err);
    assert_eq!(locks(&home), Vec::<String>::new());
    let mut foreground = args.clone();
    foreground.insert(1, "--foreground".into());
    let (status, _, err) = run_args(&home, &foreground);
    assert_code(status, 69, &err);
    assert_eq!(locks(&home), Vec::<String>::new());

    // A tunnel holds its lock while it runs and leaves none once stopped, and the
    // name is free again (twice: the second run claims a file the first removed).
    args[bind_at] = "127.0.0.1:0".into();
    for _ in 0..2 {
        let (status, _, err) = run_args(&home, &args);
        assert_code(status, 0, &err);
        assert_eq!(locks(&home), ["tidy.lock"]);
        home.ok(&["kill", "--tunnel", "tidy"]);
        wait_until("the stopped tunnel's lock file gone", || {
            let l = locks(&home);
            (l.is_empty(), l)
        });
    }
}

#[test]
fn a_second_start_while_one_runs_leaves_the_running_tunnels_log_alone() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo();
    let (_router, raddr) = home.router(Engine::Epoll, &[source.to_string()]);
    let args = start_args(&home, &raddr.to_string(), &source.to_string(), "keep");
    let (status, _, err) = run_args(&home, &args);
    assert_code(status, 0, &err);
    let before = log_of(&home, "keep.log");

    let (status, out, err) = run_args(&home, &args);
    assert_code(status, 64, &err);
    assert!(out.is_empty(), "{out}");
    let pid = list_json(&home)[0]["pid"].as_u64().unwrap();
    assert!(
        err.starts_with("conduit: error: a tunnel named \"keep\" is already running (id keep-"),
        "{err}"
    );
    assert!(err.contains(&format!(", pid {pid}): stop it")), "{err}");
    assert_eq!(log_of(&home, "keep.log"), before);
    assert!(!home.path().join("logs/keep.log.1").exists());
    assert_eq!(home.ok(&["logs", "keep"]).into_bytes(), before);
}

/// `kill --tunnel X`, `logs X` and the others take a name or an id: a new tunnel
/// may not be named after a running tunnel's id, or one of them would stop, or
/// show, the other.
#[test]
fn a_name_that_is_a_running_tunnels_id_is_refused() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo();
    let (_router, raddr) = home.router(Engine::Epoll, &[source.to_string()]);
    let (router, source) = (raddr.to_string(), source.to_string());
    let (status, _, err) = run_args(&home, &start_args(&home, &router, &source, "tok"));
    assert_code(status, 0, &err);
    let l = list_json(&home);
    let (id, pid) = (l[0]["id"].as_str().unwrap(), l[0]["pid"].as_u64().unwrap());

    let (status, out, err) = run_args(&home, &start_args(&home, &router, &source, id));
    assert_code(status, 64, &err);
    assert!(out.is_empty(), "{out}");
    assert_eq!(
        err,
        format!(
            "conduit: error: {id:?} is the id of the running tunnel \"tok\" (pid {pid}): a \
             tunnel named so could not be told from it by `conduit kill --tunnel`, `logs` and \
             the others; choose another name (--name, or name in the file)\n"
        )
    );
    assert_eq!(list_json(&home).len(), 1);
    // The refused start leaves nothing behind: its lock file used to stay.
    assert_eq!(locks(&home), ["tok.lock"]);
}

#[test]
fn a_restart_keeps_the_previous_runs_log_and_logs_shows_the_current_run() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo();
    let (_router, raddr) = home.router(Engine::Epoll, &[source.to_string()]);
    let args = start_args(&home, &raddr.to_string(), &source.to_string(), "again");
    let (status, _, err) = run_args(&home, &args);
    assert_code(status, 0, &err);
    home.ok(&["kill", "--tunnel", "again"]);
    let first = log_of(&home, "again.log");
    assert!(!first.is_empty());

    let (status, _, err) = run_args(&home, &args);
    assert_code(status, 0, &err);
    assert_eq!(log_of(&home, "again.log.1"), first);
    let current = log_of(&home, "again.log");
    assert_eq!(home.ok(&["logs", "again"]).into_bytes(), current);
    assert!(!current.starts_with(&first));

    // A start that fails leaves the last run's log where it was.
    home.ok(&["kill", "--tunnel", "again"]);
    let second = log_of(&home, "again.log");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut args = args;
    let bind_at = args.iter().position(|a| a == "--bind").unwrap() + 1;
    args[bind_at] = taken.local_addr().unwrap().to_string();
    let (status, _, err) = run_args(&home, &args);
    assert_code(status, 69, &err);
    assert_eq!(log_of(&home, "again.log"), second);
    assert_eq!(home.ok(&["logs", "again"]).into_bytes(), second);
    // And the run before it, as NAME.log.1, too.
    assert_eq!(log_of(&home, "again.log.1"), first);
    assert!(!home.path().join("logs/again.log.1.old").exists());
}

#[test]
fn start_refuses_a_name_that_is_not_a_plain_file_name() {
    let home = Home::with_keys();
    let long = "x".repeat(65);
    for bad in ["", "has space", "a/b", "../../trav", ".hidden", &long] {
        let mut args = start_args(&home, "127.0.0.1:1", "127.0.0.1:1", bad);
        let (status, out, err) = run_args(&home, &args);
        assert_code(status, 64, &err);
        assert!(out.is_empty(), "{out}");
        assert_eq!(
            err,
            format!(
                "conduit: error: --name {bad:?} is not a valid name; use 1-64 letters, digits, \
                 '-', '_' or '.' (not starting with '.' or '-')\n"
            )
        );
        args.push("--foreground".into());
        let (status, _, err) = run_args(&home, &args);
        assert_code(status, 64, &err);
    }
    // Nothing was started or written, inside the home or beside it.
    assert!(list_json(&home).is_empty());
    assert!(!home.path().join("logs").exists());
    assert!(!home.path().join("run").exists());
    assert!(!home.path().parent().unwrap().join("trav.log").exists());
}

#[test]
fn a_name_that_looks_like_an_option_is_refused_and_logs_reads_no_path() {
    let home = Home::with_keys();
    let mut args = start_args(&home, "127.0.0.1:1", "127.0.0.1:1", "-x");
    let at = args.iter().position(|a| a == "--name").unwrap();
    args.splice(at..at + 2, ["--name=-x".to_owned()]);
    let (status, out, err) = run_args(&home, &args);
    assert_code(status, 64, &err);
    assert_eq!(out, "");
    assert_eq!(
        err,
        "conduit: error: --name \"-x\" is not a valid name: commands would take it for an \
         option; use 1-64 letters, digits, '-', '_' or '.' (not starting with '.' or '-')\n"
    );
    // `logs NAME` reads logs/NAME.log, never a file elsewhere that ends in .log.
    std::fs::write(home.path().join("secret.log"), "not a tunnel's log\n").unwrap();
    for bad in ["../secret", "/var/log/dpkg"] {
        let (status, out, err) = home.run(&["logs", bad]);
        assert_code(status, 64, &err);
        assert_eq!(out, "");
        assert_eq!(
            err,
            format!(
                "conduit: error: {bad:?} is not a valid name; use 1-64 letters, digits, '-', \
                 '_' or '.' (not starting with '.' or '-')\n"
            )
        );
    }
}

#[test]
fn a_tunnel_started_under_a_relative_home_is_managed_from_anywhere() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo();
    let (_router, raddr) = home.router(Engine::Epoll, &[source.to_string()]);
    let args = start_args(&home, &raddr.to_string(), &source.to_string(), "relh");
    let out = home
        .cmd()
        .args(&args)
        .env("CONDUIT_HOME", home.path().file_name().unwrap())
        .current_dir(home.path().parent().unwrap())
        .output()
        .unwrap();
    assert_code(out.status, 0, &String::from_utf8_lossy(&out.stderr));
    let log = home.path().join("logs/relh.log");
    assert!(
        String::from_utf8_lossy(&out.stdout).ends_with(&format!("log: {}\n", log.display())),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // `home.run` works in the test's own directory, with the absolute home.
    let l = list_json(&home);
    assert_eq!(l.len(), 1, "{l:#?}");
    let entry: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            home.path()
                .join("tunnels")
                .join(format!("{}.json", l[0]["id"].as_str().unwrap())),
        )
        .unwrap(),
    )
    .unwrap();
    let socket = home
        .path()
        .join(format!("run/{}.sock", l[0]["id"].as_str().unwrap()));
    assert_eq!(entry["control_socket"], socket.to_str().unwrap());
    assert_eq!(entry["log_file"], log.to_str().unwrap());
    assert_eq!(
        home.ok(&["logs", "relh"]).into_bytes(),
        std::fs::read(&log).unwrap()
    );
    let out = home.ok(&["kill", "--tunnel", "relh"]);
    assert!(out.starts_with("stopped tunnel \"relh\""), "{out}");
    assert!(list_json(&home).is_empty());
}

#[test]
fn an_empty_conduit_home_is_an_error() {
    let home = Home::empty();
    let out = home
        .cmd()
        .args(["list"])
        .env("CONDUIT_HOME", "")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_code(out.status, 64, &err);
    assert_eq!(
        err,
        "conduit: error: CONDUIT_HOME is set but empty: unset it (for ~/.conduit) or give a \
         directory\n"
    );
}

#[test]
fn a_background_tunnel_with_log_file_logs_there_and_says_so() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo();
    let (_router, raddr) = home.router(Engine::Epoll, &[source.to_string()]);
    let dir = tempfile::tempdir().unwrap();
    let mut args = start_args(&home, &raddr.to_string(), &source.to_string(), "lf");
    // Relative: the tunnel's log is where the command's directory says.
    args.extend(["--log-file".into(), "lf.log".into()]);
    let out = home
        .cmd()
        .args(&args)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_code(out.status, 0, &String::from_utf8_lossy(&out.stderr));
    let log = dir.path().join("lf.log");
    assert!(
        stdout.ends_with(&format!("log: {}\n", log.display())),
        "{stdout}"
    );
    let l = list_json(&home);
    let entry: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            home.path()
                .join("tunnels")
                .join(format!("{}.json", l[0]["id"].as_str().unwrap())),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(entry["log_file"], log.to_str().unwrap());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("connected to router"), "{text}");
    assert_eq!(home.ok(&["logs", "lf"]), text);
    assert!(!home.path().join("logs/lf.log").exists());

    // A log file that cannot be written stops `start` before it launches anything.
    std::fs::write(dir.path().join("afile"), b"").unwrap();
    let bad = dir.path().join("afile/x.log");
    let mut args = start_args(&home, &raddr.to_string(), &source.to_string(), "lf2");
    args.extend(["--log-file".into(), bad.to_string_lossy().into_owned()]);
    let (status, out, err) = run_args(&home, &args);
    assert_code(status, 64, &err);
    assert!(out.is_empty(), "{out}");
    assert!(
        err.starts_with(&format!(
            "conduit: error: cannot create the log directory {}: ",
            bad.parent().unwrap().display()
        )),
        "{err}"
    );
    assert_eq!(list_json(&home).len(), 1);

    // `~` is not expanded (no shell reads `--log-file=~/…` or CONDUIT_LOG_FILE), as
    // in a file: refused, not a directory named `~`.
    let mut args = start_args(&home, &raddr.to_string(), &source.to_string(), "lf3");
    args.push("--log-file=~/lf3.log".into());
    let out = home
        .cmd()
        .args(&args)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_code(out.status, 64, &err);
    assert!(
        err.starts_with(
            "error: invalid value '~/lf3.log' for '--log-file <PATH>': \"~/lf3.log\" starts \
             with ~, which is not expanded here (no shell reads this value): write the home \
             directory in full, such as /home/USER/lf3.log\n"
        ),
        "{err}"
    );
    assert!(!dir.path().join("~").exists());
    assert_eq!(list_json(&home).len(), 1);
}

/// A signal that stops `start` while it waits for the tunnel to come up stops the
/// tunnel too, and leaves nothing behind; `start` exits as the signal would have
/// ended it. SIGTERM used to exit 130, and SIGHUP (the terminal closing) ended
/// `start` at once and left the tunnel running, "starting".
#[test]
fn a_signal_while_start_waits_stops_the_tunnel_too() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    // A router that accepts and never answers: the tunnel waits in its handshake.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let raddr = silent.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in silent.incoming().map_while(Result::ok) {
            held.push(c);
        }
    });
    let signals = [
        ("INT", 130, "interrupted"),
        ("TERM", 143, "terminated (SIGTERM)"),
        ("HUP", 129, "hung up (SIGHUP: its terminal closed)"),
    ];
    for (signal, code, what) in signals {
        let name = format!("hung-{}", signal.to_lowercase());
        let mut args = start_args(&home, &raddr.to_string(), "127.0.0.1:1", &name);
        args.extend(["--handshake-timeout".into(), "3600".into()]);
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut start = home.spawn(&a);
        // Registered: the tunnel process is up, and `start` is waiting for its link.
        let l = wait_list(&home, "the starting tunnel", |l| l.len() == 1);
        let pid = l[0]["pid"].as_u64().unwrap();
        start.signal(signal);
        let status = start.wait_exit();
        assert_code(status, code, &start.stderr());
        assert_eq!(
            start.stderr(),
            format!(
                "conduit: error: {what}; the tunnel was stopped (its log: {})\n",
                home.path().join(format!("logs/{name}.log")).display()
            )
        );
        assert!(start.stdout().is_empty());
        assert!(
            !pid_alive(pid),
            "SIG{signal}: the tunnel process is still there"
        );
        assert!(list_json(&home).is_empty());
        assert_eq!(locks(&home), Vec::<String>::new());
        assert_eq!(
            std::fs::read_dir(home.path().join("tunnels"))
                .unwrap()
                .count(),
            0
        );
    }
}

/// Whatever the shell's umask (here 000), what a background tunnel writes (its log,
/// its registry entry) is not writable by the group nor readable by others.
#[test]
fn files_a_tunnel_writes_are_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo();
    let (_router, raddr) = home.router(Engine::Epoll, &[source.to_string()]);
    let args = start_args(&home, &raddr.to_string(), &source.to_string(), "um");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("umask 000; exec \"$0\" \"$@\"")
        .arg(crate::harness::conduit_bin())
        .args(&args)
        .env("CONDUIT_HOME", home.path())
        .output()
        .unwrap();
    assert_code(out.status, 0, &String::from_utf8_lossy(&out.stderr));
    let id = list_json(&home)[0]["id"].as_str().unwrap().to_owned();
    for file in [
        home.path().join("logs/um.log"),
        home.path().join("tunnels").join(format!("{id}.json")),
    ] {
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o027, 0, "{} is {mode:04o}", file.display());
    }
}
