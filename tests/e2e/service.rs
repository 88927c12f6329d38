//! `conduit start|up|router --service-file`: the exact unit it prints, `-o` writing the
//! file, and tokens kept out of it.

use std::path::Path;
use std::process::{Command, Output};

const ROUTER_KEY: &str = "ed25519:Ik6aDp1Rj7l1nB6ucjJJOXsn0sIBvlvSFwzC7xE0Zmk=";

/// `conduit start --service-file …` with a clean environment (no CONDUIT_* from the
/// caller leaks in) and `home` as CONDUIT_HOME.
fn start_service(home: &Path, extra: &[&str]) -> Output {
    // The plain transport takes no router key.
    let key: &[&str] = match extra.windows(2).any(|w| w == ["--transport", "plain"]) {
        true => &[],
        false => &["--router-key", ROUTER_KEY],
    };
    bare_conduit(home)
        .args(["start", "--router", "router.example.com:9999"])
        .args(key)
        .args([
            "--source",
            "10.2.0.2:8080",
            "--bind",
            "127.0.0.1:8080",
            "--name",
            "web",
            "--service-user",
            "conduit",
        ])
        .args(extra)
        .output()
        .expect("run conduit")
}

/// `conduit` with an empty environment but for `home` as CONDUIT_HOME (and a
/// coverage run's profile file, `tests/coverage.sh`, which the command never reads).
fn bare_conduit(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_conduit"));
    c.env_clear().env("CONDUIT_HOME", home);
    if let Some(profile) = std::env::var_os("LLVM_PROFILE_FILE") {
        c.env("LLVM_PROFILE_FILE", profile);
    }
    c
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).expect("utf-8 stdout")
}

/// Its stderr, but for the note that the service's user (`conduit` in these
/// tests) does not exist on this host, which depends on the host: see
/// `a_service_user_missing_here_is_told_of`.
fn stderr(o: &Output) -> String {
    let text = String::from_utf8(o.stderr.clone()).expect("utf-8 stderr");
    text.lines()
        .filter(|l| !l.starts_with("conduit: note: there is no user conduit on this host"))
        // These tests' homes have no keys: see `a_service_whose_key_is_not_there_yet_is_told_of`.
        .filter(|l| !l.starts_with("conduit: note: there is no private key at "))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// A key that is not there yet: the file is written (keys are made as the service's
/// user, maybe later), with a note that the service cannot start without it; none
/// once it is there.
#[test]
fn a_service_whose_key_is_not_there_yet_is_told_of() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("keys").join("client.key");
    let out = systemd_unit_as(dir.path(), &[]);
    let err = String::from_utf8(out.stderr.clone()).unwrap();
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains(&format!(
            "conduit: note: there is no private key at {} yet: create it before the service \
             starts (`conduit init`, run as the service's user with its CONDUIT_HOME, writes \
             $CONDUIT_HOME/keys/client.key), or the service cannot start\n",
            key.display()
        )),
        "{err}"
    );
    assert!(stdout(&out).contains(&format!("--key {}", key.display())));
    let init = bare_conduit(dir.path()).arg("init").output().unwrap();
    assert_eq!(init.status.code(), Some(0));
    let out = systemd_unit_as(dir.path(), &[]);
    let err = String::from_utf8(out.stderr.clone()).unwrap();
    assert!(!err.contains("private key"), "{err}");
}

/// A service user this host does not have: the file is written as asked (it may be
/// meant for another host), with a note that the service would not start here.
#[test]
fn a_service_user_missing_here_is_told_of() {
    let dir = tempfile::tempdir().unwrap();
    let user = "conduit-no-such-user";
    assert_eq!(
        bare_conduit(dir.path())
            .arg("init")
            .output()
            .unwrap()
            .status
            .code(),
        Some(0)
    );
    let out = systemd_unit_as(dir.path(), &["--service-user", user]);
    let err = String::from_utf8(out.stderr.clone()).unwrap();
    assert_eq!(
        (out.status.code(), err),
        (
            Some(0),
            format!(
                "conduit: note: there is no user {user} on this host: create it (such as \
                 `useradd --system {user}`) before the service starts, or the service cannot start\n"
            )
        )
    );
    assert!(stdout(&out).contains(&format!("\nUser={user}\n")));
}

#[test]
fn prints_the_systemd_unit() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().display().to_string();
    let bin = env!("CARGO_BIN_EXE_conduit");
    let out = start_service(dir.path(), &["--service-file", "systemd"]);
    assert_eq!(
        (out.status.code(), stderr(&out).as_str()),
        (Some(0), ""),
        "conduit failed"
    );
    // The rule under test in conduit-controlplane: home directories become read-only
    // rather than hidden when the binary or CONDUIT_HOME lives in one (CI checkouts do).
    // The temporary CONDUIT_HOME is usually under /tmp, which a private /tmp would hide.
    let private_tmp = if ["/tmp", "/var/tmp"]
        .iter()
        .any(|d| Path::new(bin).starts_with(d) || dir.path().starts_with(d))
    {
        "# Not PrivateTmp=yes: the tunnel uses files under /tmp or /var/tmp, which\n\
         # a private /tmp would hide (better: move them somewhere lasting).\n\
         PrivateTmp=no\n"
    } else {
        "PrivateTmp=yes\n"
    };
    let protect_home = if ["/home", "/root", "/run/user"]
        .iter()
        .any(|d| Path::new(bin).starts_with(d) || dir.path().starts_with(d))
    {
        "read-only"
    } else {
        "yes"
    };
    let want = format!(
        "# Generated by `conduit`; review it, then install it as\n\
         # /etc/systemd/system/conduit-web.service and run:\n\
         #   systemctl daemon-reload && systemctl enable --now conduit-web.service\n\
         # Secrets (CONDUIT_TOKEN=...) go in /etc/conduit/conduit-web.env (mode 0600), never in this file.\n\
         # {home} must exist and belong to conduit.\n\
         [Unit]\n\
         Description=Conduit tunnel web\n\
         After=network-online.target\n\
         Wants=network-online.target\n\
         \n\
         [Service]\n\
         Type=simple\n\
         User=conduit\n\
         Environment=CONDUIT_HOME={home}\n\
         EnvironmentFile=-/etc/conduit/conduit-web.env\n\
         ExecStart={bin} start --foreground --router router.example.com:9999 \
         --router-key {ROUTER_KEY} --source 10.2.0.2:8080 --bind 127.0.0.1:8080 \
         --key {home}/keys/client.key --name web --pool-size 2 --drain-timeout 30\n\
         Restart=on-failure\n\
         RestartSec=5s\n\
         # A usage or configuration error (exit 64) needs fixing, not restarting.\n\
         RestartPreventExitStatus=64\n\
         # A stop signals the main process alone, which stops its own tunnels once each\n\
         # (they drain); systemd kills whatever is left after it exits.\n\
         KillMode=mixed\n\
         # Its drain, then time to exit, before systemd kills it.\n\
         TimeoutStopSec=40s\n\
         LimitNOFILE=1048576\n\
         UMask=0077\n\
         \n\
         # Sandboxing, see systemd.exec(5).\n\
         NoNewPrivileges=yes\n\
         ProtectSystem=strict\n\
         ProtectHome={protect_home}\n\
         ReadWritePaths={home}\n\
         {private_tmp}\
         PrivateDevices=yes\n\
         ProtectKernelTunables=yes\n\
         ProtectKernelModules=yes\n\
         ProtectControlGroups=yes\n\
         RestrictSUIDSGID=yes\n\
         LockPersonality=yes\n\
         RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK\n\
         CapabilityBoundingSet=\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    );
    assert_eq!(stdout(&out), want);
}

/// A key file that is a link to one elsewhere: the directory it leads to is made
/// writable too, where a rotated key lands (`ProtectSystem=strict` would refuse it).
#[cfg(unix)]
#[test]
fn a_linked_key_s_own_directory_is_writable() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let made = bare_conduit(elsewhere.path())
        .args(["init"])
        .output()
        .expect("run conduit");
    assert_eq!(made.status.code(), Some(0), "{}", stderr(&made));
    std::fs::create_dir(dir.path().join("keys")).unwrap();
    let real = std::fs::canonicalize(elsewhere.path().join("keys")).unwrap();
    std::os::unix::fs::symlink(real.join("client.key"), dir.path().join("keys/client.key"))
        .unwrap();
    let out = start_service(dir.path(), &["--service-file", "systemd"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let unit = stdout(&out);
    let want = format!(
        "\nReadWritePaths={} -{}\n",
        dir.path().display(),
        real.display()
    );
    assert!(unit.contains(&want), "{want:?} not in:\n{unit}");
}

/// `conduit start … --service-file systemd` in an empty environment, with `extra`.
fn systemd_unit_as(home: &Path, extra: &[&str]) -> Output {
    bare_conduit(home)
        .args([
            "start",
            "--router",
            "router.example.com:9999",
            "--router-key",
            ROUTER_KEY,
            "--source",
            "10.2.0.2:8080",
            "--bind",
            "127.0.0.1:8080",
            "--service-file",
            "systemd",
        ])
        .args(extra)
        .output()
        .expect("run conduit")
}

/// Without --service-user, $USER or $LOGNAME, the service runs as whoever this uid
/// is in the password database (root in a container or a cron job has neither).
#[test]
fn without_user_variables_the_service_user_is_this_uid_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let me = Command::new("id").arg("-un").output().expect("run id -un");
    let me = String::from_utf8(me.stdout).unwrap().trim().to_owned();
    let out = systemd_unit_as(dir.path(), &[]);
    assert_eq!(
        (out.status.code(), stderr(&out).as_str()),
        (Some(0), ""),
        "conduit failed"
    );
    let unit = stdout(&out);
    assert!(unit.contains(&format!("\nUser={me}\n")), "{unit}");
}

/// A service that runs as another user than the owner of CONDUIT_HOME could not read
/// its keys: the command says so, and how to set it up instead.
#[test]
fn a_service_user_who_cannot_read_conduit_home_is_told_of() {
    let dir = tempfile::tempdir().unwrap();
    let me = Command::new("id").arg("-un").output().expect("run id -un");
    let me = String::from_utf8(me.stdout).unwrap().trim().to_owned();
    assert_ne!(me, "nobody", "run the tests as another user than nobody");
    let out = systemd_unit_as(dir.path(), &["--service-user", "nobody"]);
    let home = dir.path().display();
    assert_eq!(
        (out.status.code(), stderr(&out)),
        (
            Some(0),
            format!(
                "conduit: note: CONDUIT_HOME {home} belongs to {me}, and the service runs as \
                 nobody, who cannot read the keys there (mode 0600); run this command as nobody \
                 with a CONDUIT_HOME of theirs (e.g. sudo -u nobody env \
                 CONDUIT_HOME=/var/lib/conduit conduit …), or chown -R nobody {home}\n"
            )
        )
    );
    assert!(stdout(&out).contains("\nUser=nobody\n"));
}

/// `--service-name edge.service` names the systemd unit `edge.service`, as
/// `--service-name edge` does, not `edge.service.service`.
#[test]
fn a_systemd_service_name_may_end_in_dot_service() {
    let dir = tempfile::tempdir().unwrap();
    let unit = |name: &str| {
        let out = start_service(
            dir.path(),
            &["--service-file", "systemd", "--service-name", name],
        );
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        stdout(&out)
    };
    let text = unit("edge.service");
    assert!(
        text.starts_with(
            "# Generated by `conduit`; review it, then install it as\n\
             # /etc/systemd/system/edge.service and run:\n\
             #   systemctl daemon-reload && systemctl enable --now edge.service\n\
             # Secrets (CONDUIT_TOKEN=...) go in /etc/conduit/edge.env (mode 0600), never in \
             this file.\n"
        ),
        "{text}"
    );
    assert_eq!(text, unit("edge"));
}

#[test]
fn output_flag_writes_the_file_instead() {
    let dir = tempfile::tempdir().unwrap();
    let printed = start_service(dir.path(), &["--service-file", "openrc"]);
    assert_eq!(printed.status.code(), Some(0), "{}", stderr(&printed));
    let path = dir.path().join("conduit-web");
    let written = start_service(
        dir.path(),
        &["--service-file", "openrc", "-o", path.to_str().unwrap()],
    );
    assert_eq!(written.status.code(), Some(0), "{}", stderr(&written));
    assert_eq!(stdout(&written), "");
    assert_eq!(
        stderr(&written),
        format!(
            "conduit: wrote the openrc service file {}\n",
            path.display()
        )
    );
    let file = std::fs::read_to_string(&path).unwrap();
    assert!(file.starts_with("#!/sbin/openrc-run\n"), "{file}");
    assert_eq!(file, stdout(&printed));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
    }
}

#[test]
fn tokens_stay_out_of_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = start_service(
        dir.path(),
        &["--service-file", "rc.d", "--token", "s3cret-t0ken"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stdout(&out).contains("s3cret-t0ken"));
    assert_eq!(
        stderr(&out),
        "conduit: note: the token is not written into the service file; put \
         CONDUIT_TOKEN=<token> in /usr/local/etc/conduit/conduit-web.env (mode 0600) instead\n\
         conduit: note: the service does not start until /usr/local/etc/conduit/conduit-web.env \
         exists, rather than run without these\n"
    );
}

#[test]
fn output_without_service_file_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = start_service(dir.path(), &["-o", "x.service"]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("--service-file"), "{}", stderr(&out));
}

#[test]
fn up_writes_a_service_that_runs_the_file_in_the_foreground() {
    let dir = tempfile::tempdir().unwrap();
    let conduit = || bare_conduit(dir.path());
    // The file must validate, and that needs the client key it names by default.
    let init = conduit().arg("init").output().unwrap();
    assert_eq!(init.status.code(), Some(0), "{}", stderr(&init));
    let file = dir.path().join("prod.toml");
    std::fs::write(
        &file,
        format!(
            "[router]\nhost = \"router.example.com\"\npublic_key = \"{ROUTER_KEY}\"\n\n\
             [[tunnels]]\nname = \"web\"\nsource = \"10.2.0.2:8080\"\nbind = \"0.0.0.0:80\"\n"
        ),
    )
    .unwrap();
    let out = conduit()
        .args(["up", "-f"])
        .arg(&file)
        .args(["--service-file", "openrc", "--service-user", "conduit"])
        .args([
            "--set",
            "performance.workers=2",
            "--set",
            "security.token=s3cret-t0ken",
            "--set",
            "alerts.webhook=https://hooks.example/x?t=HOOK-SECRET",
        ])
        // A setting from the shell: the service has no such shell, so it is named too.
        .env("CONDUIT_PERFORMANCE_IO_ENGINE", "epoll")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "\ncommand_args=\"up --foreground -f {} --set performance.workers=2\"\n",
            file.display()
        )),
        "{text}"
    );
    assert!(
        text.contains("\ndescription=\"Conduit tunnels of "),
        "{text}"
    );
    // Port 80: the one capability, and nothing else.
    assert!(
        text.contains("\ncapabilities=\"^cap_net_bind_service\"\n"),
        "{text}"
    );
    assert!(!text.contains("s3cret-t0ken"), "{text}");
    assert!(!text.contains("HOOK-SECRET"), "{text}");
    assert_eq!(
        stderr(&out),
        "conduit: note: the token is not written into the service file; put \
         CONDUIT_TOKEN=<token> in /etc/conduit/conduit-prod.env (mode 0600) instead\n\
         conduit: note: CONDUIT_ALERTS_WEBHOOK is not written into the service file; put \
         CONDUIT_ALERTS_WEBHOOK=<value> in /etc/conduit/conduit-prod.env (mode 0600) instead\n\
         conduit: note: CONDUIT_PERFORMANCE_IO_ENGINE is not written into the service file; \
         put CONDUIT_PERFORMANCE_IO_ENGINE=<value> in /etc/conduit/conduit-prod.env (mode \
         0600) instead\n\
         conduit: note: the service does not start until /etc/conduit/conduit-prod.env exists, \
         rather than run without these\n"
    );
}

/// Relative paths given through `--set` or the environment are written as the
/// files they name from here: the service does not start in this directory.
#[test]
fn up_gives_the_service_relative_paths_made_absolute() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let conduit = || bare_conduit(&dir.path().join("home"));
    let init = conduit().arg("init").output().unwrap();
    assert_eq!(init.status.code(), Some(0), "{}", stderr(&init));
    let keys = dir.path().join("home").join("keys");
    std::fs::copy(keys.join("client.pub"), keys.join("router.pub")).unwrap();
    let file = dir.path().join("edge.toml");
    std::fs::write(
        &file,
        "[router]\nhost = \"router.example.com\"\n\n[[tunnels]]\nname = \"web\"\n\
         source = \"10.2.0.2:8080\"\nbind = \"127.0.0.1:8080\"\n",
    )
    .unwrap();
    let out = conduit()
        .current_dir(dir.path())
        .env("CONDUIT_SECURITY_PRIVATE_KEY_PATH", "home/keys/client.key")
        .args([
            "up",
            "-f",
            "edge.toml",
            "--set",
            "router.public_key=home/keys/router.pub",
        ])
        .args(["--service-file", "systemd", "--service-user", "conduit"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let unit = stdout(&out);
    assert_eq!(
        exec_start(&unit),
        format!(
            "ExecStart={} up --foreground -f {d}/edge.toml --set \
             router.public_key={d}/home/keys/router.pub",
            env!("CARGO_BIN_EXE_conduit")
        )
    );
    assert_eq!(
        stderr(&out),
        format!(
            "conduit: note: CONDUIT_SECURITY_PRIVATE_KEY_PATH is not written into the service \
             file; put CONDUIT_SECURITY_PRIVATE_KEY_PATH={d}/home/keys/client.key in \
             /etc/conduit/conduit-edge.env (mode 0600) instead\n\
             conduit: note: the service does not start until /etc/conduit/conduit-edge.env \
             exists, rather than run without these\n"
        )
    );
}

#[test]
fn a_udp_tunnel_keeps_its_protocol_in_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let out = start_service(
        dir.path(),
        &[
            "--service-file",
            "systemd",
            "--protocol",
            "udp",
            "--udp-idle-timeout",
            "15",
            "--udp-max-new-flows",
            "500",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let unit = stdout(&out);
    let exec = exec_start(&unit);
    assert!(
        exec.contains(" --protocol udp ")
            && exec.contains(" --udp-idle-timeout 15")
            && exec.contains(" --udp-max-new-flows 500"),
        "{exec}"
    );
    let out = start_service(
        dir.path(),
        &[
            "--service-file",
            "systemd",
            "--protocol",
            "udp",
            "--transport",
            "plain",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let unit = stdout(&out);
    let exec = exec_start(&unit);
    assert!(
        exec.contains(" --transport plain ") && exec.contains(" --protocol udp"),
        "{exec}"
    );
}

#[test]
fn the_proxy_header_and_allow_from_stay_in_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let out = start_service(
        dir.path(),
        &[
            "--service-file",
            "systemd",
            "--proxy-protocol",
            "v2",
            "--allow-from",
            "10.0.0.0/8",
            "--allow-from",
            "192.0.2.7",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let unit = stdout(&out);
    let exec = exec_start(&unit);
    assert!(
        exec.contains(" --proxy-protocol v2 --allow-from 10.0.0.0/8,192.0.2.7/32"),
        "{exec}"
    );
    // A unit that could not start is not written.
    let out = start_service(
        dir.path(),
        &[
            "--service-file",
            "systemd",
            "--protocol",
            "udp",
            "--proxy-protocol",
            "v1",
        ],
    );
    assert_eq!(out.status.code(), Some(64));
    assert_eq!(stdout(&out), "");
    assert!(
        stderr(&out).contains("--proxy-protocol v1 has no form for UDP"),
        "{}",
        stderr(&out)
    );
}

/// A systemd unit's `ExecStart=` line.
fn exec_start(unit: &str) -> &str {
    unit.lines()
        .find(|l| l.starts_with("ExecStart="))
        .expect("an ExecStart line")
}

/// `conduit router --service-file`: the router as configured here (its file by its
/// absolute path, each flag as `--set`, relative paths made absolute), secrets and
/// settings from this shell's environment left for the environment file; and the
/// command it writes runs that router.
#[test]
fn a_router_service_runs_the_router_as_configured_here() {
    let home = crate::harness::Home::with_keys();
    // The configuration and the log live outside CONDUIT_HOME, named relative to it.
    let elsewhere = tempfile::tempdir().unwrap();
    let dir = elsewhere.path();
    let source = crate::sources::echo();
    std::fs::write(
        dir.join("router.toml"),
        format!("[router]\nallow = [\"{source}\"]\n"),
    )
    .unwrap();
    std::fs::create_dir(dir.join("logs")).unwrap();
    let out = home
        .cmd()
        .current_dir(dir)
        .env("CONDUIT_HEALTH_INTERVAL_SECS", "7")
        .args([
            "router",
            "--config",
            "router.toml",
            "--bind",
            "127.0.0.1:0",
            "--api-bind",
            "127.0.0.1:0",
            "--api-token",
            "s3cret-api-t0ken",
            "--log-file",
            "logs/router.log",
            "--service-file",
            "systemd",
            "--service-user",
            "conduit",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let unit = stdout(&out);
    assert!(!unit.contains("s3cret-api-t0ken"), "{unit}");
    let d = dir.display();
    assert_eq!(
        stderr(&out),
        "warning: router.bind: port 0 lets the system pick a different free port at each \
         start, so users cannot know where to connect; pick a fixed port (cli --bind)\n\
         conduit: note: the token is not written into the service file; put \
         CONDUIT_API_TOKEN=<token> in /etc/conduit/conduit-router.env (mode 0600) instead\n\
         conduit: note: CONDUIT_HEALTH_INTERVAL_SECS is not written into the service file; \
         put CONDUIT_HEALTH_INTERVAL_SECS=<value> in /etc/conduit/conduit-router.env (mode \
         0600) instead\n\
         conduit: note: the service does not start until /etc/conduit/conduit-router.env \
         exists, rather than run without these\n"
    );
    let exec = exec_start(&unit);
    let bin = env!("CARGO_BIN_EXE_conduit");
    assert_eq!(
        exec,
        format!(
            "ExecStart={bin} router --config {d}/router.toml --set router.bind=127.0.0.1:0 \
             --set api.enabled=true --set api.bind=127.0.0.1:0 --log-file {d}/logs/router.log"
        )
    );
    // The log's directory is writable under systemd's sandbox; the keys and clients
    // file are in CONDUIT_HOME, writable anyway.
    let h = home.path().display();
    assert!(
        unit.contains(&format!("\nReadWritePaths={h} -{d}/logs\n")),
        "{unit}"
    );
    assert!(unit.contains("\nDescription=Conduit router on 127.0.0.1:0\n"));

    // What systemd would run, with the token from the environment file.
    let words: Vec<&str> = exec["ExecStart=".len()..].split(' ').collect();
    let router = crate::harness::Proc::spawn(
        home.cmd()
            .env("CONDUIT_API_TOKEN", "s3cret-api-t0ken")
            .args(&words[1..]),
    );
    let raddr = crate::harness::addr_in(&router.wait_stdout("router listening on"));
    let (_tunnel, taddr) = home.tunnel_with(
        crate::harness::Engine::Epoll,
        raddr,
        &source.to_string(),
        &[],
    );
    crate::users::assert_echo(taddr, b"through the router the service runs");
    crate::procfs::wait_until("the router to log to its file", || {
        let log = std::fs::read_to_string(dir.join("logs/router.log")).unwrap_or_default();
        (log.contains("router up"), log)
    });
}

/// The units the Debian and RPM packages install (`deploy/packaging/`): accepted by
/// `systemd-analyze verify` (with this build's binary in place of /usr/bin/conduit),
/// and every file the packages' metadata names exists.
#[test]
fn the_packaged_units_and_files_are_sound() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let manifest = std::fs::read_to_string(root.join("cli/Cargo.toml")).unwrap();
    let mut named = 0;
    for line in manifest.lines() {
        // `["../path", …]` (cargo-deb) and `{ source = "../path", … }` (generate-rpm).
        for piece in line.split('"').skip(1).step_by(2) {
            if let Some(rel) = piece.strip_prefix("../") {
                assert!(root.join(rel).exists(), "{rel}, named in cli/Cargo.toml");
                named += 1;
            }
        }
    }
    assert!(named >= 20, "{named} files named");
    if !crate::harness::have("systemd-analyze", "--version") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for unit in ["conduit-router.service", "conduit-tunnels.service"] {
        let text = std::fs::read_to_string(root.join("deploy/packaging").join(unit)).unwrap();
        assert!(text.contains("ExecStart=/usr/bin/conduit "), "{unit}");
        let path = dir.path().join(unit);
        std::fs::write(
            &path,
            text.replace("/usr/bin/conduit", env!("CARGO_BIN_EXE_conduit")),
        )
        .unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(
            (out.status.code(), stderr(&out)),
            (Some(0), String::new()),
            "{unit}"
        );
    }
}

/// A plain-transport router's service runs what it says: the transport once (as a
/// setting), and the router it starts listens on the plain transport.
#[test]
fn a_plain_router_service_runs() {
    let home = crate::harness::Home::with_keys();
    let source = crate::sources::echo().to_string();
    let out = home
        .cmd()
        .args([
            "router",
            "--bind",
            "127.0.0.1:0",
            "--allow",
            &source,
            "--transport",
            "plain",
            "--token",
            "s3cret-t0ken",
            "--service-file",
            "systemd",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let unit = stdout(&out);
    let exec = exec_start(&unit);
    assert_eq!(exec.matches("transport").count(), 1, "{exec}");
    assert!(exec.contains(" --set router.transport=plain"), "{exec}");
    let words: Vec<&str> = exec["ExecStart=".len()..].split(' ').collect();
    let router = crate::harness::Proc::spawn(
        home.cmd()
            .env("CONDUIT_TOKEN", "s3cret-t0ken")
            .args(&words[1..]),
    );
    let line = router.wait_stdout("router listening on");
    assert!(line.ends_with("plain transport)"), "{line}");
}

/// The init system waits out the tunnel's drain (and 10 s to exit) before it kills
/// it: its own default would cut a long drain short (OpenRC's after 5 s).
#[test]
fn a_stop_waits_for_the_drain() {
    let dir = tempfile::tempdir().unwrap();
    let want = [
        ("systemd", "\nTimeoutStopSec=310s\n"),
        ("openrc", "\nretry=\"TERM/310/KILL/5\"\n"),
        (
            "launchd",
            "\t<key>ExitTimeOut</key>\n\t<integer>310</integer>\n",
        ),
    ];
    for (kind, line) in want {
        let out = start_service(
            dir.path(),
            &["--service-file", kind, "--drain-timeout", "300"],
        );
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(stdout(&out).contains(line), "{kind}: {}", stdout(&out));
    }
    let out = start_service(dir.path(), &["--service-file", "systemd"]);
    assert!(
        stdout(&out).contains("\nTimeoutStopSec=40s\n"),
        "{}",
        stdout(&out)
    );
}
