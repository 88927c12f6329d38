//! Output that cannot be written: a full disk fails the command with one line and
//! exit 74 (EX_IOERR), a reader that went away (`| head`) ends it without a word;
//! never a panic, never output lost with exit 0.

use std::process::{Output, Stdio};

use crate::harness::Home;

const FULL: &str =
    "conduit: error: cannot write to stdout: No space left on device (os error 28)\n";

/// `conduit ARGS > /dev/full`.
fn to_full_disk(home: &Home, args: &[&str]) -> Output {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("open /dev/full");
    home.cmd()
        .args(args)
        .stdout(Stdio::from(full))
        .output()
        .expect("run conduit")
}

/// `conduit ARGS` writing into a pipe nobody reads any more.
fn to_closed_pipe(home: &Home, args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    home.cmd()
        .args(args)
        .stdout(Stdio::from(writer))
        .output()
        .expect("run conduit")
}

#[test]
fn a_full_disk_fails_each_command_with_one_line_and_exit_74() {
    let home = Home::with_keys();
    let file = home.path().join("conduit.toml");
    std::fs::write(
        &file,
        format!(
            "[router]\nhost = \"10.2.0.1\"\nport = 9999\npublic_key = \"{}\"\n\
             [[tunnels]]\nname = \"web\"\nsource = \"10.2.0.2:80\"\nbind = \"127.0.0.1:8080\"\n",
            home.public_key("router")
        ),
    )
    .unwrap();
    let file = file.to_str().unwrap();
    for args in [
        &["version"][..],
        &["completions", "bash"],
        &["list"],
        &["list", "--format", "json"],
        &["status"],
        &["stats"],
        &["keys", "show"],
        &["config", "show", "-f", file],
        &["config", "validate", "-f", file],
        &["--help"],
        &["start", "--help"],
        &["--version"],
    ] {
        let out = to_full_disk(&home, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            (out.status.code(), err.as_ref()),
            (Some(74), FULL),
            "conduit {args:?}"
        );
    }
}

#[test]
fn a_reader_gone_ends_the_command_quietly_with_exit_74() {
    let home = Home::with_keys();
    for args in [
        &["completions", "bash"][..],
        &["version"],
        &["keys", "show"],
        &["--help"],
    ] {
        let out = to_closed_pipe(&home, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            (out.status.code(), err.as_ref()),
            (Some(74), ""),
            "conduit {args:?}"
        );
    }
}

#[test]
fn a_failing_command_whose_report_is_lost_says_both_and_exits_74() {
    let home = Home::with_keys();
    let out = to_full_disk(&home, &["health", "--tunnel", "nosuch"]);
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).as_ref()
        ),
        (
            Some(74),
            &*format!("conduit: error: unhealthy: nosuch (not running)\n{FULL}")
        )
    );
    // A reader that has what it wanted: the command's own answer stands.
    let out = to_closed_pipe(&home, &["health", "--tunnel", "nosuch"]);
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).as_ref()
        ),
        (Some(1), "conduit: error: unhealthy: nosuch (not running)\n")
    );
}

/// `start` whose report cannot be written (a full disk) fails, and so leaves no
/// tunnel behind: the one it launched is stopped again.
#[test]
fn a_start_whose_report_is_lost_leaves_no_tunnel() {
    let home = Home::with_keys();
    let _cleanup = crate::manage::Cleanup(&home);
    let source = crate::sources::echo();
    let (_router, raddr) = home.router(crate::harness::Engine::Epoll, &[source.to_string()]);
    let args = crate::manage::start_args(&home, &raddr.to_string(), &source.to_string(), "lost");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = to_full_disk(&home, &args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(74), "{err}");
    assert!(
        err.starts_with(
            "conduit: error: its report could not be written, so the tunnel it \
             started (id lost-"
        ) && err.ends_with(&format!(
            ") was stopped again: a start that fails leaves nothing behind\n{FULL}"
        )),
        "{err}"
    );
    assert!(crate::manage::list_json(&home).is_empty());
}
