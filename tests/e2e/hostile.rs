//! Hostile input and people in the middle: whatever arrives at the router's port
//! that is not a Conduit client is refused with a logged reason while the router
//! keeps serving; slow peers are cut off; relays with their own keys are refused;
//! keys others can read are refused; secrets never reach logs, `Debug` or
//! `config show`.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use crate::harness::{DEADLINE, Engine, Home, Proc, assert_code, have};
use crate::sources::{self, pattern};
use crate::users::{assert_echo, open_user};

/// Sends `bytes` to `addr` and reads until the other side closes; returns what it
/// answered. Panics if it does not close within [`DEADLINE`].
fn send_and_see_closed(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    let _ = c.write_all(bytes);
    see_closed(&mut c)
}

/// Reads until the other side closes; returns what it answered. Panics if it does
/// not close within the read timeout.
fn see_closed(c: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                ) =>
            {
                return got;
            }
            Err(e) => panic!("the router did not close the connection: {e}"),
        }
    }
}

/// A TLS alert record: content type 21.
fn is_alert(bytes: &[u8]) -> bool {
    bytes.first() == Some(&21)
}

#[test]
fn junk_http_and_tls12_are_refused_and_the_router_keeps_serving() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let source = sources::echo();
    let (router, raddr) = home.router(engine, &[source.to_string()]);
    let (_tunnel, taddr) = home.tunnel(engine, raddr, &source.to_string());
    let mut held = open_user(taddr);

    // Port checks (a load balancer's, a Kubernetes probe's): connect, close. Not
    // logged above debug, not counted as failed handshakes.
    for _ in 0..3 {
        drop(TcpStream::connect(raddr).unwrap());
    }

    // Random bytes.
    let junk = pattern(7, 4096);
    let answer = send_and_see_closed(raddr, &junk);
    assert!(answer.is_empty() || is_alert(&answer), "{answer:?}");
    router.wait_stderr("not a TLS connection");
    assert_eq!(
        router.stderr_count("TLS handshake failed"),
        0,
        "{}",
        router.stderr()
    );

    // A plain HTTP request.
    let answer = send_and_see_closed(raddr, b"GET / HTTP/1.1\r\nHost: conduit\r\n\r\n");
    assert!(answer.is_empty() || is_alert(&answer), "{answer:?}");
    router.wait_stderr("a plain-text HTTP request");

    // A client that speaks TLS 1.2 at most.
    if have("openssl", "version") {
        tls12_is_refused(&router, raddr);
    }

    // The existing stream and new ones are unharmed.
    held.write_all(b"still here").unwrap();
    let mut back = [0u8; 10];
    held.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"still here");
    assert_echo(taddr, b"and new users too");
}

fn tls12_is_refused(router: &Proc, raddr: SocketAddr) {
    let out = Command::new("openssl")
        .args(["s_client", "-tls1_2", "-connect", &raddr.to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "openssl connected with TLS 1.2:\n{said}"
    );
    assert!(said.contains("alert protocol version"), "{said}");
    router.wait_stderr("offers only TLS 1.2 or older");
}

#[test]
fn silent_and_dribbling_peers_are_cut_off_by_the_handshake_timeout() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let source = sources::echo();
    let (router, raddr) = home.router_at(
        engine,
        "127.0.0.1:0",
        &[source.to_string()],
        &["--handshake-timeout", "2"],
    );
    let (_tunnel, taddr) = home.tunnel(engine, raddr, &source.to_string());

    // One peer says nothing at all.
    let silent = thread::spawn(move || send_and_see_closed(raddr, b""));
    // Another sends the start of a ClientHello, a byte a second: each byte alone
    // would reset a per-read timer; the handshake timeout must be for the whole.
    let dribbler = thread::spawn(move || {
        let hello_start = [
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ];
        let mut c = TcpStream::connect(raddr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut sent = 0;
        let mut buf = [0u8; 64];
        for b in hello_start.iter().cycle().take(DEADLINE.as_secs() as usize) {
            if c.write_all(&[*b]).is_err() {
                return Some(sent);
            }
            sent += 1;
            match c.read(&mut buf) {
                Ok(0) => return Some(sent),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Ok(_) | Err(_) => return Some(sent),
            }
        }
        None
    });
    assert_eq!(silent.join().unwrap(), b"", "the silent peer got an answer");
    let sent = dribbler.join().unwrap();
    assert!(
        sent.is_some(),
        "the dribbling peer was never cut off ({}s of bytes)",
        DEADLINE.as_secs()
    );
    router.wait_stderr_count(
        "connection dropped: no TLS handshake and Hello within 2s",
        2,
    );
    assert_echo(taddr, b"the router still serves");
}

/// Handshakes in progress are capped; when every slot is taken, one whose peer has
/// sent nothing gives its slot to the next connection: peers that connect and say
/// nothing (each opened again as the handshake timeout closes it) cannot keep
/// tunnels out, as they did while new connections waited for a free slot.
#[test]
fn handshakes_in_progress_are_capped_and_silent_ones_give_way() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let source = sources::echo();
    let (router, raddr) = home.router_with(
        engine,
        &[source.to_string()],
        &["--set", "performance.max_pending_handshakes=2"],
    );
    let (_tunnel, taddr) = home.tunnel(engine, raddr, &source.to_string());
    assert_echo(taddr, b"before");

    // Two peers open connections and say nothing: both slots are taken (the router
    // accepts in the order they came, one slot each).
    let mut silent: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(raddr).unwrap()).collect();
    // A third peer's junk is read at once, in the slot of the first silent one...
    let mut junk = TcpStream::connect(raddr).unwrap();
    junk.set_read_timeout(Some(DEADLINE)).unwrap();
    junk.write_all(b"not a TLS client hello").unwrap();
    let answer = see_closed(&mut junk);
    assert!(answer.is_empty() || is_alert(&answer), "{answer:?}");
    router.wait_stderr("not a TLS connection");
    router.wait_stderr(
        "2 handshakes in progress (performance.max_pending_handshakes): those that sent \
         nothing for 500ms, or took 2s or more, give their slot to new connections; if they \
         are real clients, raise the limit",
    );
    // ...which was closed, and said so.
    silent[0].set_read_timeout(Some(DEADLINE)).unwrap();
    assert_eq!(see_closed(&mut silent[0]), b"");
    router.wait_stderr(
        "connection dropped: every handshake slot was taken, and this one, silent after ",
    );

    // Silent peers in every slot again: a new tunnel still gets in, each of its
    // handshakes in the slot of a silent peer.
    silent.extend((0..4).map(|_| TcpStream::connect(raddr).unwrap()));
    let (_late, late_addr) =
        home.tunnel_with(engine, raddr, &source.to_string(), &["--name", "late"]);
    assert_echo(late_addr, b"a new tunnel got in");
    assert_echo(taddr, b"after");
}

#[test]
fn a_man_in_the_middle_with_its_own_router_key_is_refused_naming_both_keys() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let source = sources::echo();
    let real_key = home.public_key("router");
    let (_router, _raddr) = home.router(engine, &[source.to_string()]);

    // The attacker runs a real router with a key of its own, admitting the victim's
    // (public) client key, and gets the victim pointed at it.
    let mitm = Home::with_keys();
    let mitm_key = mitm.public_key("router");
    std::fs::write(
        mitm.path().join("authorized_clients"),
        home.ok(&["keys", "show", "--name", "client"]),
    )
    .unwrap();
    let (mitm_router, maddr) = mitm.router(engine, &[source.to_string()]);

    // The victim pins the real router's key.
    let mut victim = home.tunnel_proc(engine, maddr, &source.to_string(), &[]);
    let status = victim.wait_exit();
    let err = victim.stderr();
    assert_code(status, 77, &err);
    assert!(
        err.contains(&format!(
            "router key mismatch: expected {real_key}, got {mitm_key}"
        )),
        "{err}"
    );
    assert!(
        err.contains("something is intercepting the connection"),
        "{err}"
    );
    // The impostor got no Hello: it saw the handshake fail.
    mitm_router.wait_stderr("TLS handshake failed");
    assert!(!mitm_router.stderr().contains("client connected"));
}

#[test]
fn a_man_in_the_middle_with_its_own_client_key_is_refused_by_the_router() {
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let source = sources::echo();
    let (router, raddr) = home.router(engine, &[source.to_string()]);
    let (_tunnel, taddr) = home.tunnel(engine, raddr, &source.to_string());

    // The attacker knows the router's public key, but has only its own client key.
    let mitm = Home::with_keys();
    std::fs::copy(home.key("router.pub"), mitm.key("router.pub")).unwrap();
    let mitm_client = mitm.public_key("client");
    let mut relay = mitm.tunnel_proc(engine, raddr, &source.to_string(), &[]);
    let status = relay.wait_exit();
    let err = relay.stderr();
    assert_code(status, 77, &err);
    assert!(
        err.contains(&format!(
            "the router refused this client's key {mitm_client}"
        )),
        "{err}"
    );
    router.wait_stderr(&format!("refused unknown client key {mitm_client}"));
    assert_echo(taddr, b"the real client is unharmed");
}

#[test]
fn private_keys_others_can_read_are_refused_with_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let home = Home::with_keys();
    let chmod = |file: &str, mode: u32| {
        std::fs::set_permissions(home.key(file), std::fs::Permissions::from_mode(mode)).unwrap()
    };
    let refusal = |file: &str, mode: &str| {
        let p = home.key(file);
        format!(
            "private key {} is readable by group or others (mode {mode}); run `chmod 600 {}` and start again",
            p.display(),
            p.display()
        )
    };

    chmod("router.key", 0o644);
    let (status, _, err) = home.run(&["router", "--bind", "127.0.0.1:0"]);
    assert_code(status, 64, &err);
    assert!(err.contains(&refusal("router.key", "0644")), "{err}");

    let key = home.key("router.pub");
    for (background, mode, shown) in [(false, 0o644, "0644"), (true, 0o640, "0640")] {
        chmod("client.key", mode);
        let mut args = vec!["start"];
        if !background {
            args.push("--foreground");
        }
        args.extend([
            "--router",
            "127.0.0.1:9",
            "--router-key",
            key.to_str().unwrap(),
            "--source",
            "127.0.0.1:1",
            "--bind",
            "127.0.0.1:0",
        ]);
        let (status, _, err) = home.run(&args);
        assert_code(status, 64, &err);
        assert!(err.contains(&refusal("client.key", shown)), "{err}");
    }

    // After the fix, the router starts.
    chmod("router.key", 0o600);
    let mut router: Proc = home.spawn(&["router", "--bind", "127.0.0.1:0"]);
    router.wait_stdout("router listening on");
    assert_code(router.stop(), 0, &router.stderr());
}

/// The lines of a PEM file between its armour: the key material itself.
fn pem_body(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----") && !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn secrets_never_reach_logs_debug_output_or_config_show() {
    const TOKEN: &str = "s3cr3t-T0KEN-5a7e";
    const WRONG: &str = "wr0ng-T0KEN-91cd";
    let engine = Engine::Epoll;
    let home = Home::with_keys();
    let _cleanup = crate::manage::Cleanup(&home);
    let source = sources::echo();
    let trace = ["--log-level", "trace"];
    let (mut router, raddr) = home.router_at(
        engine,
        "127.0.0.1:0",
        &[source.to_string()],
        &["--token", TOKEN, "--log-level", "trace"],
    );
    let (mut tunnel, taddr) = home.tunnel_with(
        engine,
        raddr,
        &source.to_string(),
        &["--token", TOKEN, "--log-level", "trace"],
    );
    assert_echo(taddr, b"traffic at trace level");
    // As a flag, on the command line of a process that runs for long: said so.
    tunnel.wait_stderr(
        "--token puts a secret on the command line, where every user of this host can read it \
         (`ps`); give it in CONDUIT_TOKEN instead",
    );

    // A client with the wrong token is refused, and neither token is printed.
    let mut wrong = home.tunnel_proc(
        engine,
        raddr,
        &source.to_string(),
        &["--name", "wrong", "--token", WRONG, "--log-level", "trace"],
    );
    assert_code(wrong.wait_exit(), 77, &wrong.stderr());
    assert!(
        wrong.stderr().contains("the token is wrong"),
        "{}",
        wrong.stderr()
    );
    router.wait_stderr("the token is wrong");

    // The token given in the environment instead.
    let mut from_env = Proc::spawn(
        home.cmd()
            .args(["start", "--foreground", "--router", &raddr.to_string()])
            .arg("--router-key")
            .arg(home.key("router.pub"))
            .args(["--source", &source.to_string(), "--bind", "127.0.0.1:0"])
            .args(["--io-engine", engine.flag(), "--name", "env"])
            .args(trace)
            .env("CONDUIT_TOKEN", TOKEN),
    );
    from_env.wait_stdout("connected to router");
    assert!(
        !from_env.stderr().contains("puts a secret"),
        "{}",
        from_env.stderr()
    );

    // A background tunnel: the token must not be on its command line (every local
    // user can read that), nor in its log, nor in the registry.
    let out = home.ok(&[
        "start",
        "--name",
        "bg",
        "--router",
        &raddr.to_string(),
        "--router-key",
        home.key("router.pub").to_str().unwrap(),
        "--source",
        &source.to_string(),
        "--bind",
        "127.0.0.1:0",
        "--io-engine",
        engine.flag(),
        "--token",
        TOKEN,
        "--log-level",
        "trace",
    ]);
    let pid: u32 = out
        .split("pid ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {out:?}"));
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(cmdline.contains("--foreground"), "{cmdline}");
    let bg_log = home.path().join("logs").join("bg.log");
    crate::http::wait_for("the background tunnel to log its link", || {
        std::fs::read_to_string(&bg_log)
            .is_ok_and(|l| l.contains("connected to router"))
            .then_some(())
    });
    let listed = home.ok(&["list", "--format", "json", "--connections"]);
    let status_out = home.ok(&["status", "--format", "json"]);
    let (_, _, kill_err) = home.run(&["kill", "--all"]);

    // Configuration files: `config show` prints the token as *** (a valid file: with
    // errors it prints only them).
    let file = home.path().join("conduit.toml");
    std::fs::write(
        &file,
        format!(
            "[router]\nhost = \"127.0.0.1\"\npublic_key = \"{}\"\n\n[security]\ntoken = \"{TOKEN}\"\n\n\
             [[tunnels]]\nname = \"web\"\nsource = \"127.0.0.1:80\"\nbind = \"127.0.0.1:8080\"\n",
            home.public_key("router")
        ),
    )
    .unwrap();
    let file_arg = file.to_str().unwrap();
    let mut shown = String::new();
    for format in ["text", "json"] {
        let (status, out, err) = home.run(&["config", "show", "-f", file_arg, "--format", format]);
        assert_code(status, 0, &err);
        assert!(out.contains("***"), "{out}{err}");
        shown.push_str(&out);
        shown.push_str(&err);
    }

    assert_code(tunnel.stop(), 0, &tunnel.stderr());
    assert_code(from_env.stop(), 0, &from_env.stderr());
    assert_code(router.stop(), 0, &router.stderr());
    let log = std::fs::read_to_string(&bg_log).unwrap();
    let registry: String = std::fs::read_dir(home.path().join("tunnels"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
                .collect()
        })
        .unwrap_or_default();

    let mut everything = vec![
        ("router stderr", router.stderr()),
        ("router stdout", router.stdout().join("\n")),
        ("tunnel stderr", tunnel.stderr()),
        ("tunnel stdout", tunnel.stdout().join("\n")),
        ("wrong-token tunnel", wrong.stderr()),
        ("env-token tunnel", from_env.stderr()),
        ("background start", out.clone()),
        ("background command line", cmdline),
        ("background log", log.clone()),
        ("registry", registry),
        ("list", listed),
        ("status", status_out),
        ("kill", kill_err),
        ("config show", shown),
    ];
    everything.push(("wrong-token stdout", wrong.stdout().join("\n")));
    // The log checked is the one of a tunnel that got through, at trace level.
    assert!(log.contains("connected to router"), "{log}");
    assert!(log.contains("TRACE"), "{log}");
    let keys: Vec<String> = ["router.key", "client.key"]
        .iter()
        .flat_map(|k| pem_body(&home.key(k)))
        .collect();
    for (what, text) in &everything {
        assert!(
            !text.contains(TOKEN),
            "the token appears in the {what}:\n{text}"
        );
        assert!(
            !text.contains(WRONG),
            "the wrong token appears in the {what}:\n{text}"
        );
        for line in &keys {
            assert!(
                !text.contains(line.as_str()),
                "private key material in the {what}"
            );
        }
    }
}
