//! `conduit up` / `conduit down` with a configuration file of three tunnels.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::harness::{DEADLINE, Engine, Home, assert_code};
use crate::sources;
use crate::stopping::signal;

mod draining;
mod supervise;

struct Cleanup<'a>(&'a Home);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = self.0.run(&["kill", "--all", "--force"]);
    }
}

fn write_file(home: &Home, router_port: u16, tunnels: &[(&str, String)]) -> std::path::PathBuf {
    let mut s = format!(
        "[router]\nhost = \"127.0.0.1\"\nport = {router_port}\npublic_key = \"{}\"\n\n\
         [security]\nprivate_key_path = \"{}\"\n\n\
         [performance]\nworkers = 1\nio_engine = \"epoll\"\ndrain_timeout_secs = 2\n",
        home.key("router.pub").display(),
        home.key("client.key").display()
    );
    for (name, source) in tunnels {
        s.push_str(&format!(
            "\n[[tunnels]]\nname = \"{name}\"\nsource = \"{source}\"\nbind = \"127.0.0.1:0\"\n"
        ));
    }
    let path = home.path().join("conduit.toml");
    std::fs::write(&path, s).unwrap();
    path
}

/// `write_file` with tunnels alpha, beta and gamma, all to `source`.
fn write_three(home: &Home, router_port: u16, source: &str) -> std::path::PathBuf {
    let tunnels = ["alpha", "beta", "gamma"].map(|n| (n, source.to_owned()));
    write_file(home, router_port, &tunnels)
}

/// `write_file` with a drain long enough (120 s) that a held connection keeps a
/// stopping tunnel around until the test lets it go, and each tunnel on `bind`.
fn write_slow_draining(
    home: &Home,
    router_port: u16,
    tunnels: &[(&str, String)],
    bind: &str,
) -> std::path::PathBuf {
    let file = write_file(home, router_port, tunnels);
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("drain_timeout_secs = 2", "drain_timeout_secs = 120")
        .replace("127.0.0.1:0", bind);
    std::fs::write(&file, text).unwrap();
    file
}

/// `up`'s stderr without the file's warnings (each `bind` on port 0 has one).
fn said(stderr: &str) -> String {
    let port_0 = |l: &&str| l.starts_with("tunnels[") && l.contains(".bind: port 0 lets");
    stderr
        .lines()
        .filter(|l| !port_0(l))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn list(home: &Home) -> Vec<serde_json::Value> {
    serde_json::from_str(&home.ok(&["list", "--format", "json"])).unwrap()
}

fn names(home: &Home) -> Vec<String> {
    let mut v: Vec<String> = list(home)
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

fn pid_of(home: &Home, name: &str) -> u64 {
    list(home).iter().find(|t| t["name"] == name).unwrap()["pid"]
        .as_u64()
        .unwrap()
}

/// Sends a line through tunnel `name` and expects it back from the echo source.
fn echo_through(home: &Home, name: &str) {
    let l = list(home);
    let bind = l.iter().find(|t| t["name"] == name).unwrap()["bind"]
        .as_str()
        .unwrap()
        .to_owned();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut c = TcpStream::connect(&bind).unwrap();
        c.set_read_timeout(Some(DEADLINE)).unwrap();
        c.write_all(name.as_bytes()).unwrap();
        let mut back = vec![0u8; name.len()];
        match c.read_exact(&mut back) {
            Ok(()) => {
                assert_eq!(back, name.as_bytes());
                return;
            }
            // Channels may still be on their way right after start.
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("tunnel {name}: {e}"),
        }
    }
}

fn up(
    home: &Home,
    file: &std::path::Path,
    env: &[(&str, &str)],
) -> (std::process::ExitStatus, String, String) {
    let mut cmd = home.cmd();
    cmd.args(["up", "-f", file.to_str().unwrap()]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = crate::harness::output_of(&mut cmd);
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A relative path given through the environment or `--set` names a file from
/// where `up` runs: the same command from another directory, whose `keys/` are other
/// files, restarts the tunnel on them rather than call it up to date.
#[test]
fn relative_paths_from_the_environment_or_set_follow_the_working_directory() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo().to_string();
    let (_router, raddr) = home.router(Engine::Epoll, std::slice::from_ref(&source));
    let file = write_file(&home, raddr.port(), &[("web", source.clone())]);
    let up_in = |dir: &str| {
        let dir = home.path().join(dir);
        std::fs::create_dir_all(dir.join("keys")).unwrap();
        for key in ["client.key", "router.pub"] {
            std::fs::copy(home.key(key), dir.join("keys").join(key)).unwrap();
        }
        let mut cmd = home.cmd();
        cmd.current_dir(&dir)
            .env("CONDUIT_SECURITY_PRIVATE_KEY_PATH", "keys/client.key")
            .args(["up", "-f", file.to_str().unwrap()])
            .args(["--set", "router.public_key=keys/router.pub"]);
        let out = crate::harness::output_of(&mut cmd);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_code(out.status, 0, &err);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = up_in("a");
    assert!(out.starts_with("started tunnel \"web\""), "{out}");
    let pid = pid_of(&home, "web");
    let out = up_in("a");
    assert!(out.starts_with("tunnel \"web\" is up to date"), "{out}");
    assert_eq!(pid_of(&home, "web"), pid);
    let out = up_in("b");
    assert!(
        out.starts_with(
            "restarted (router.public_key, security.private_key_path changed) tunnel \"web\""
        ),
        "{out}"
    );
    assert_ne!(pid_of(&home, "web"), pid);
    echo_through(&home, "web");
}

#[test]
fn up_twice_then_change_remove_and_down() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo().to_string();
    let (_router, raddr) = home.router(Engine::Epoll, std::slice::from_ref(&source));
    let file = write_three(&home, raddr.port(), &source);

    let (status, out, err) = up(&home, &file, &[]);
    assert_code(status, 0, &err);
    for n in ["alpha", "beta", "gamma"] {
        assert!(out.contains(&format!("started tunnel \"{n}\"")), "{out}");
    }
    assert_eq!(names(&home), ["alpha", "beta", "gamma"]);
    for n in ["alpha", "beta", "gamma"] {
        echo_through(&home, n);
    }
    let pids: Vec<u64> = ["alpha", "beta", "gamma"]
        .iter()
        .map(|n| pid_of(&home, n))
        .collect();

    // Again: nothing changes. A key added to the pinned `.pub` file is no reason to
    // restart: running tunnels read the file again themselves.
    home.ok(&["init", "--name", "router-next"]);
    let pinned = std::fs::read_to_string(home.key("router.pub")).unwrap()
        + &std::fs::read_to_string(home.key("router-next.pub")).unwrap();
    std::fs::write(home.key("router.pub"), pinned).unwrap();
    let (status, out, err) = up(&home, &file, &[]);
    assert_code(status, 0, &err);
    for n in ["alpha", "beta", "gamma"] {
        assert!(
            out.contains(&format!("tunnel \"{n}\" is up to date")),
            "{out}"
        );
    }
    assert!(!out.contains("started"), "{out}");
    let again: Vec<u64> = ["alpha", "beta", "gamma"]
        .iter()
        .map(|n| pid_of(&home, n))
        .collect();
    assert_eq!(pids, again);

    // beta changes (its source by name instead of address), gamma goes away: beta
    // restarts, gamma stops, alpha stays as it is.
    let by_name = source.replace("127.0.0.1", "localhost");
    let file = write_file(
        &home,
        raddr.port(),
        &[("alpha", source.clone()), ("beta", by_name)],
    );
    let (status, out, err) = up(&home, &file, &[]);
    assert_code(status, 0, &err);
    assert!(out.contains("tunnel \"alpha\" is up to date"), "{out}");
    assert!(
        out.contains("restarted (source changed) tunnel \"beta\""),
        "{out}"
    );
    assert!(
        out.contains("stopped tunnel \"gamma\" (no longer in"),
        "{out}"
    );
    assert_eq!(names(&home), ["alpha", "beta"]);
    assert_eq!(pid_of(&home, "alpha"), pids[0]);
    assert_ne!(pid_of(&home, "beta"), pids[1]);
    echo_through(&home, "beta");

    // A tunnel started by hand survives `down` of the file.
    let key = home.key("router.pub");
    home.ok(&[
        "start",
        "--name",
        "manual",
        "--router",
        &raddr.to_string(),
        "--router-key",
        key.to_str().unwrap(),
        "--source",
        &source,
        "--bind",
        "127.0.0.1:0",
        "--io-engine",
        "epoll",
    ]);
    // `down` through a symbolic link to the file `up` was given stops its tunnels.
    let link = home.path().join("link.toml");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let (status, out, err) = home.run(&["down", "-f", link.to_str().unwrap()]);
    assert_code(status, 0, &err);
    assert!(
        out.contains("stopped tunnel \"alpha\"") && out.contains("stopped tunnel \"beta\""),
        "{out}"
    );
    assert_eq!(names(&home), ["manual"]);
    let (status, out, _) = home.run(&["down", "-f", file.to_str().unwrap()]);
    assert_code(status, 0, "");
    assert!(out.contains("no tunnels from"), "{out}");
}

/// A process stopped with SIGSTOP, sent SIGCONT when this is dropped.
struct Thaw(u64);

impl Drop for Thaw {
    fn drop(&mut self) {
        signal(self.0, "CONT");
    }
}

/// An unchanged tunnel that does not answer (frozen with SIGSTOP) is not called up to
/// date: `up` names it, exits 1 and says how to get it going; after that, `up`
/// starts it again.
#[test]
fn up_names_an_unchanged_tunnel_that_does_not_answer() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo().to_string();
    let (_router, raddr) = home.router(Engine::Epoll, std::slice::from_ref(&source));
    let file = write_file(&home, raddr.port(), &[("web", source.clone())]);
    let (status, _, err) = up(&home, &file, &[]);
    assert_code(status, 0, &err);
    let l = list(&home);
    let (pid, id) = (
        pid_of(&home, "web"),
        l[0]["id"].as_str().unwrap().to_owned(),
    );
    signal(pid, "STOP");
    // Let go of, whatever happens, before the cleanup stops it.
    let thaw = Thaw(pid);

    let (status, out, err) = up(&home, &file, &[]);
    assert_code(status, 1, &err);
    assert_eq!(out, "");
    assert_eq!(
        said(&err),
        format!(
            "conduit: error: tunnel \"web\" (id {id}, pid {pid}) has these settings but does \
             not respond: control socket does not answer (the process may be stopped or \
             overloaded); `conduit kill --tunnel web --force` stops it (SIGKILL if it still \
             does not answer), then `conduit up -f {}` starts it again\n",
            std::fs::canonicalize(&file).unwrap().display()
        )
    );

    // As it says.
    let (status, _, err) = home.run(&["kill", "--tunnel", "web", "--force"]);
    assert_code(status, 0, &err);
    drop(thaw);
    let (status, out, err) = up(&home, &file, &[]);
    assert_code(status, 0, &err);
    assert!(out.starts_with("started tunnel \"web\""), "{out}");
    assert_ne!(pid_of(&home, "web"), pid);
    echo_through(&home, "web");
}

/// `down` of a tunnel that does not answer (frozen with SIGSTOP) exits 1 and names
/// `down --force` of the same file, which kills it.
#[test]
fn down_names_down_force_for_a_tunnel_that_does_not_answer() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo().to_string();
    let (_router, raddr) = home.router(Engine::Epoll, std::slice::from_ref(&source));
    let file = write_file(&home, raddr.port(), &[("web", source.clone())]);
    let (status, _, err) = up(&home, &file, &[]);
    assert_code(status, 0, &err);
    let id = list(&home)[0]["id"].as_str().unwrap().to_owned();
    let pid = pid_of(&home, "web");
    signal(pid, "STOP");
    // SIGKILL ends it stopped or not; this lets it go if the test fails first.
    let _thaw = Thaw(pid);
    let path = file.to_str().unwrap();
    let (status, _, err) = home.run(&["down", "-f", path]);
    assert_code(status, 1, &err);
    let file_shown = std::fs::canonicalize(&file).unwrap();
    assert!(
        err.contains(&format!(
            "the process may be stopped or hung: `conduit down -f {} --force` (or `conduit \
             kill --tunnel {id} --force` for this one) kills it (SIGKILL)",
            file_shown.display()
        )),
        "{err}"
    );
    // As it says.
    let (status, out, err) = home.run(&["down", "-f", path, "--force"]);
    assert_code(status, 0, &err);
    assert!(
        out.contains(&format!("stopped tunnel \"web\" ({id})")),
        "{out}"
    );
    assert!(list(&home).is_empty());
}

#[test]
fn the_environment_overrides_the_file() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo().to_string();
    let (_router, raddr) = home.router(Engine::Epoll, std::slice::from_ref(&source));
    // The file names a port nothing listens on; the environment names the router's.
    let file = write_file(
        &home,
        crate::harness::dead_port(),
        &[("envy", source.clone())],
    );
    let port = raddr.port().to_string();
    let (status, out, err) = up(&home, &file, &[("CONDUIT_ROUTER_PORT", &port)]);
    assert_code(status, 0, &err);
    assert!(out.contains("started tunnel \"envy\""), "{out}");
    assert_eq!(list(&home)[0]["router"], raddr.to_string());
    assert_eq!(list(&home)[0]["status"], "running");
    echo_through(&home, "envy");
}

/// A token given to `up` with `--set` reaches its tunnel processes through their
/// environment: it works, and no command line shows it.
#[test]
fn a_token_set_on_the_command_line_stays_off_the_tunnels_command_lines() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo().to_string();
    let token = "t0ken-in-a-set-flag";
    let (_router, raddr) = home.router_with(
        Engine::Epoll,
        std::slice::from_ref(&source),
        &["--token", token],
    );
    let file = write_file(&home, raddr.port(), &[("secret", source.clone())]);
    let mut cmd = home.cmd();
    cmd.args(["up", "-f", file.to_str().unwrap(), "--set"])
        .arg(format!("security.token={token}"))
        // A variable the tunnel inherits loses to the command line, as it does for
        // `up` itself.
        .env("CONDUIT_SECURITY_TOKEN", "an-older-token");
    let out = crate::harness::output_of(&mut cmd);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_code(out.status, 0, &err);
    echo_through(&home, "secret");
    let pid = pid_of(&home, "secret");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(cmdline.contains(" up -f "), "{cmdline}");
    assert!(!cmdline.contains(token), "{cmdline}");
}

/// `up --log-level` wins over the file's `[logging]` for the tunnels it starts: the
/// file says `warn`, the flag `debug`, and a stream's open is logged (at debug).
#[test]
fn the_log_flags_of_up_override_the_file() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo().to_string();
    let (_router, raddr) = home.router(Engine::Epoll, std::slice::from_ref(&source));
    let file = write_file(&home, raddr.port(), &[("chatty", source.clone())]);
    let mut text = std::fs::read_to_string(&file).unwrap();
    text = text.replace(
        "[performance]",
        "[logging]\nlevel = \"warn\"\n\n[performance]",
    );
    std::fs::write(&file, text).unwrap();
    let (status, _, err) = home.run(&["--log-level", "debug", "up", "-f", file.to_str().unwrap()]);
    assert_code(status, 0, &err);
    echo_through(&home, "chatty");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let log = home.ok(&["logs", "chatty"]);
        if log.contains("DEBUG") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no debug line in the tunnel's log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The flags are part of what the tunnel runs with: an `up` without them, or
    // with others (by flag or variable), restarts it on what it asks for, and the
    // same again leaves it be.
    let f = file.to_str().unwrap();
    let level_of = || {
        let pid = pid_of(&home, "chatty");
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let after = |flag: &str| {
            let rest = cmdline.split_once(flag).unwrap().1;
            rest.split_whitespace().next().unwrap().to_owned()
        };
        (after(" --log-level "), after(" --log-format "))
    };
    assert_eq!(level_of(), ("debug".to_owned(), "text".to_owned()));
    // Twice each: restarted, then up to date.
    let up_as = |flags: &[&str], env: &[(&str, &str)], level: &str, format: &str, changed| {
        let restarted = format!("restarted ({changed} changed) tunnel \"chatty\"");
        for want in [restarted.as_str(), "tunnel \"chatty\" is up to date"] {
            let mut cmd = home.cmd();
            cmd.args(flags)
                .args(["up", "-f", f])
                .envs(env.iter().copied());
            let out = crate::harness::output_of(&mut cmd);
            let (o, err) = (
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
            );
            assert_code(out.status, 0, &err);
            assert!(o.starts_with(want), "{flags:?} {env:?}: {o}");
            assert_eq!(level_of(), (level.to_owned(), format.to_owned()));
        }
    };
    up_as(&[], &[], "warn", "text", "logging.level");
    let debug = [("CONDUIT_LOG_LEVEL", "debug")];
    up_as(&[], &debug, "debug", "text", "logging.level");
    let both = "logging.format, logging.level";
    up_as(&["--log-format", "json"], &[], "warn", "json", both);
}

#[test]
fn a_bad_file_starts_nothing() {
    let home = Home::with_keys();
    let path = home.path().join("conduit.toml");
    std::fs::write(&path, "[router]\nhost = \"127.0.0.1\"\nprt = 1\n").unwrap();
    let (status, _, err) = home.run(&["up", "-f", path.to_str().unwrap()]);
    assert_code(status, 64, &err);
    assert!(err.contains("router.prt"), "{err}");
    assert!(list(&home).is_empty());
    let (status, _, err) = home.run(&[
        "up",
        "-f",
        home.path().join("missing.toml").to_str().unwrap(),
    ]);
    assert_code(status, 64, &err);
    assert!(err.contains("no configuration file at"), "{err}");
}

/// `down` of a file that is not there (and started nothing) is refused as `up`
/// refuses it (exit 64), not answered with "no tunnels are running"; it is not
/// told to create the file.
#[test]
fn down_with_a_missing_file_fails_like_up() {
    let home = Home::empty();
    let up = "conduit: error: no configuration file at /no/such/file.toml: create it with \
              `conduit config init -f /no/such/file.toml` (a documented starting file) or name \
              another file with -f FILE\n";
    let down = "conduit: error: no configuration file at /no/such/file.toml and no tunnels \
                started from it are running: check the path (`down` stops the tunnels an `up` \
                of that same file started)\n";
    for (command, want) in [("up", up), ("down", down)] {
        let (status, out, err) = home.run(&[command, "-f", "/no/such/file.toml"]);
        assert_code(status, 64, &err);
        assert_eq!((out.as_str(), err.as_str()), ("", want), "{command}");
    }
}

/// `up`s and a `down` of one file run one at a time: three `up`s at once all succeed
/// (the later ones find the tunnels up to date), and a `down` started meanwhile stops
/// every tunnel the `up`s started, or, if it ran first, found none.
#[test]
fn ups_and_a_down_at_once_take_turns() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo().to_string();
    let (_router, raddr) = home.router(Engine::Epoll, std::slice::from_ref(&source));
    let file = write_three(&home, raddr.port(), &source);
    let f = file.to_str().unwrap();
    let ups: Vec<_> = (0..3).map(|_| home.spawn(&["up", "-f", f])).collect();
    for mut u in ups {
        let status = u.wait_exit();
        assert_code(status, 0, &u.stderr());
    }
    assert_eq!(names(&home), ["alpha", "beta", "gamma"]);

    home.ok(&["down", "-f", f]);
    let mut up = home.spawn(&["up", "-f", f]);
    let (status, out, err) = home.run(&["down", "-f", f]);
    assert_code(status, 0, &err);
    assert_code(up.wait_exit(), 0, &up.stderr());
    let left = names(&home);
    if out.starts_with("no tunnels from ") {
        // `down` went first; `up` then started all three.
        assert_eq!(left, ["alpha", "beta", "gamma"], "{out}");
    } else {
        assert_eq!(left, Vec::<String>::new(), "{out}");
    }
}

/// `up` exits with the code its failed tunnels share, as `start` would for each
/// (69 for a bind address in use, 77 for a source the router does not allow), and
/// with 1 when they differ.
#[test]
fn up_exits_with_the_code_its_failed_tunnels_share() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo().to_string();
    let (_router, raddr) = home.router(Engine::Epoll, std::slice::from_ref(&source));
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap().to_string();
    let in_use = |name: &str| {
        format!("tunnel {name:?}: cannot listen on {taken}: Address already in use (os error 98)")
    };

    let file = write_slow_draining(&home, raddr.port(), &[("one", source.clone())], &taken);
    let (status, _, err) = up(&home, &file, &[]);
    assert_code(status, 69, &err);
    assert!(err.contains(&in_use("one")), "{err}");

    let forbidden = [("three", "127.0.0.1:2".to_owned())];
    let file = write_file(&home, raddr.port(), &forbidden);
    let (status, _, err) = up(&home, &file, &[]);
    assert_code(status, 77, &err);
    assert!(
        err.contains("tunnel \"three\": the router refused this tunnel: source 127.0.0.1:2 is not allowed by the router's policy"),
        "{err}"
    );

    // One of each: 1. The second tunnel's bind is the taken address.
    let mixed = [("three", "127.0.0.1:2".to_owned()), ("four", source)];
    let file = write_file(&home, raddr.port(), &mixed);
    let text = std::fs::read_to_string(&file).unwrap();
    let (head, tail) = text.rsplit_once("127.0.0.1:0").unwrap();
    std::fs::write(&file, format!("{head}{taken}{tail}")).unwrap();
    let (status, _, err) = up(&home, &file, &[]);
    assert_code(status, 1, &err);
    assert!(
        err.contains("tunnel \"three\": the router refused this tunnel: source 127.0.0.1:2 is not allowed by the router's policy")
            && err.contains(&in_use("four")),
        "{err}"
    );
    assert!(list(&home).is_empty());
}

/// One file named two ways is one file: its tunnels are up to date whatever path
/// `up` is given (relative paths in it resolve to the same files); and a file `up`
/// cannot read again (a pipe) is refused before anything starts.
#[test]
fn up_takes_a_file_however_it_is_named_and_refuses_a_pipe() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo().to_string();
    let (_router, raddr) = home.router(Engine::Epoll, std::slice::from_ref(&source));
    let dir = home.path().join("etc");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("c.toml"),
        format!(
            "[router]\nhost = \"127.0.0.1\"\nport = {}\npublic_key = \"../keys/router.pub\"\n\
             [security]\nprivate_key_path = \"../keys/client.key\"\n\
             [performance]\nworkers = 1\nio_engine = \"epoll\"\n\
             [[tunnels]]\nname = \"web\"\nsource = \"{source}\"\nbind = \"127.0.0.1:0\"\n",
            raddr.port()
        ),
    )
    .unwrap();
    let up_as = |path: &str| {
        let mut cmd = home.cmd();
        cmd.current_dir(home.path()).args(["up", "-f", path]);
        let out = crate::harness::output_of(&mut cmd);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_code(out.status, 0, &err);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = up_as("etc/c.toml");
    assert!(out.contains("started tunnel \"web\""), "{out}");
    let pid = pid_of(&home, "web");
    for path in ["etc/../etc/c.toml", "./etc/c.toml"] {
        let out = up_as(path);
        assert!(
            out.starts_with("tunnel \"web\" is up to date"),
            "{path}: {out}"
        );
    }
    assert_eq!(pid_of(&home, "web"), pid);

    // Its stdin here is /dev/null, no more a file on disk than a pipe is.
    let mut cmd = home.cmd();
    cmd.args(["up", "-f", "/dev/stdin"]);
    let out = crate::harness::output_of(&mut cmd);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_code(out.status, 64, &err);
    assert_eq!(
        err,
        "conduit: error: /dev/stdin is not a regular file: each tunnel `up` starts reads the \
         file again, so give one on disk (a pipe or /dev/stdin can be read only once)\n"
    );
}

/// A tunnel stopped to restart on new settings that then cannot start is down, and
/// `up` says so rather than only why the start failed.
#[test]
fn a_restart_that_fails_says_the_tunnel_is_down() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo().to_string();
    let (_router, raddr) = home.router(Engine::Epoll, std::slice::from_ref(&source));
    let file = write_file(&home, raddr.port(), &[("web", source.clone())]);
    let (status, _, err) = up(&home, &file, &[]);
    assert_code(status, 0, &err);
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap().to_string();
    let file = write_slow_draining(&home, raddr.port(), &[("web", source)], &taken);
    let (status, _, err) = up(&home, &file, &[]);
    assert_code(status, 69, &err);
    assert!(
        err.starts_with(&format!(
            "conduit: error: tunnel \"web\" is down: it was stopped to restart (bind, \
             performance.drain_timeout_secs changed), and could not start again: cannot \
             listen on {taken}: Address already in use"
        )),
        "{err}"
    );
    assert!(list(&home).is_empty());
}

/// A tunnel name another file's tunnel has is refused, naming that file and how to
/// stop its tunnels.
#[test]
fn a_name_another_file_runs_is_refused_naming_that_file() {
    let home = Home::with_keys();
    let _cleanup = Cleanup(&home);
    let source = sources::echo().to_string();
    let (_router, raddr) = home.router(Engine::Epoll, std::slice::from_ref(&source));
    let written = write_file(&home, raddr.port(), &[("web", source)]);
    let (first, second) = (home.path().join("a.toml"), home.path().join("b.toml"));
    std::fs::copy(&written, &first).unwrap();
    std::fs::copy(&written, &second).unwrap();
    let (status, _, err) = up(&home, &first, &[]);
    assert_code(status, 0, &err);
    let (status, _, err) = up(&home, &second, &[]);
    assert_code(status, 64, &err);
    let (a, b) = (first.display(), second.display());
    let line = err
        .lines()
        .find(|l| l.starts_with("conduit: error:"))
        .unwrap_or_default();
    assert!(
        line.starts_with(&format!(
            "conduit: error: tunnel \"web\": the name is taken by a tunnel started from {a}, not \
             from {b} (id web-"
        )) && line.ends_with(&format!(
            "stop it with `conduit down -f {a}` or rename one of them"
        )),
        "{err}"
    );
}

/// Ctrl-C while `up` launches: the tunnel being launched is stopped and the ones
/// not launched yet are not started; `up` exits 130 (it used to launch each of
/// them in turn, and leave them running).
#[test]
fn up_interrupted_while_launching_starts_no_more_tunnels() {
    let home = Home::with_keys();
    // A router that accepts connections and never answers: each launch waits.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let file = write_three(&home, port, "127.0.0.1:9");
    let mut up = home.spawn(&["up", "-f", file.to_str().unwrap()]);
    // The first launch under way: its router connection accepted.
    let (_held, _) = silent.accept().unwrap();
    up.signal("INT");
    let status = up.wait_exit();
    let err = up.stderr();
    assert_code(status, 130, &err);
    assert!(err.contains("interrupted; the tunnel was stopped"), "{err}");
    assert_eq!(
        err.matches("not started: `up` was interrupted").count(),
        2,
        "{err}"
    );
    assert!(list(&home).is_empty(), "{:?}", list(&home));
    // Stopped, not dead: nothing is left for `health` to report.
    assert_eq!(home.ok(&["health"]), "no tunnels running\n");
    assert_eq!(home.ok(&["status"]), "no tunnels running\n");
}
