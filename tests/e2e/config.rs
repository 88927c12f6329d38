//! `conduit config init`, `validate` and `show`, run as the real binary with a
//! temporary CONDUIT_HOME and working directory and no inherited CONDUIT_* variables.
// Test helpers: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// Runs `conduit ARGS` in the sandbox with exactly the CONDUIT_* variables given.
    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_conduit"));
        cmd.args(args).current_dir(self.dir.path());
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("CONDUIT_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("CONDUIT_HOME", self.home());
        cmd.envs(env.iter().copied());
        cmd.output().unwrap()
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        p
    }

    /// `conduit init --name NAME`; returns the public key line's key.
    fn init(&self, name: &str) -> String {
        let out = self.run(&["init", "--name", name], &[]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        text(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn lines(b: &[u8]) -> Vec<String> {
    text(b).lines().map(str::to_owned).collect()
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name)
        .canonicalize()
        .unwrap()
}

#[test]
fn validate_accepts_the_documented_examples() {
    let s = Sandbox::new();
    let client = s.init("client");
    let router = s.init("router");
    let file = example("conduit.example.toml");
    // Its router key is a placeholder (all zeros) to replace: said so, and with the
    // router's key given the rest is valid.
    let out = s.run(&["config", "validate", "-f", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(64));
    assert_eq!(
        lines(&out.stderr)[0],
        format!(
            "error: router.public_key: is still the placeholder `conduit config init` wrote (all \
             zeros), not a key: paste the router's public key (what `conduit init --name \
             router` printed on the router; `conduit keys show --name router` there prints it \
             again) ({}:20)",
            file.display()
        )
    );
    let key = [("CONDUIT_ROUTER_PUBLIC_KEY", router.as_str())];
    let out = s.run(&["config", "validate", "-f", file.to_str().unwrap()], &key);
    assert_eq!(text(&out.stderr), "");
    assert_eq!(
        lines(&out.stdout),
        [format!("{} is valid: 3 tunnels", file.display())]
    );
    assert_eq!(out.status.code(), Some(0));

    std::fs::write(
        s.home().join("authorized_clients"),
        format!("{client} laptop\n"),
    )
    .unwrap();
    let file = example("router.example.toml");
    let out = s.run(
        &[
            "config",
            "validate",
            "--router",
            "-f",
            file.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(text(&out.stderr), "");
    assert_eq!(
        lines(&out.stdout),
        [format!(
            "{} is valid: a router listening on 0.0.0.0:9999",
            file.display()
        )]
    );
    assert_eq!(out.status.code(), Some(0));
}

/// `config init` writes the documented example (which validates once its router key
/// is filled in), owner-only, and
/// never over a file without --force; `-f -` prints it.
#[test]
fn init_writes_a_file_that_validates_and_never_overwrites_without_force() {
    let s = Sandbox::new();
    s.init("client");
    let out = s.run(&["config", "init"], &[]);
    assert_eq!(text(&out.stderr), "");
    assert_eq!(
        lines(&out.stdout),
        [
            "wrote conduit.toml (mode 0600): set [router] host and public_key (what `conduit \
          init --name router` printed on the router) and your [[tunnels]], then check it: \
          conduit config validate -f conduit.toml; run it: conduit up -f conduit.toml"
        ]
    );
    assert_eq!(out.status.code(), Some(0));
    let written = s.dir.path().join("conduit.toml");
    assert_eq!(
        std::fs::read(&written).unwrap(),
        std::fs::read(example("conduit.example.toml")).unwrap()
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&written).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Valid once its placeholder router key is replaced.
    let router = s.init("router");
    let placeholder = format!("ed25519:{}=", "A".repeat(43));
    let text_of = std::fs::read_to_string(&written).unwrap();
    assert!(text_of.contains(&placeholder), "{text_of}");
    std::fs::write(&written, text_of.replace(&placeholder, &router)).unwrap();
    let out = s.run(&["config", "validate"], &[]);
    assert_eq!(lines(&out.stdout), ["conduit.toml is valid: 3 tunnels"]);
    assert_eq!(out.status.code(), Some(0));

    std::fs::write(&written, "# mine\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let readable = std::fs::Permissions::from_mode(0o644);
        std::fs::set_permissions(&written, readable).unwrap();
    }
    let out = s.run(&["config", "init"], &[]);
    assert_eq!(
        text(&out.stderr),
        "conduit: error: conduit.toml already exists; use --force to replace it, or give \
         another file with -f\n"
    );
    assert_eq!(out.status.code(), Some(64));
    assert_eq!(std::fs::read_to_string(&written).unwrap(), "# mine\n");
    let out = s.run(&["config", "init", "--force"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read(&written).unwrap(),
        std::fs::read(example("conduit.example.toml")).unwrap()
    );
    // The file it replaced was readable by all; the new one is private, as it says.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&written).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let out = s.run(&["config", "init", "--router", "-f", "-"], &[]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        out.stdout,
        std::fs::read(example("router.example.toml")).unwrap()
    );
    assert!(!s.dir.path().join("router.toml").exists());

    // A directory is named as one, with or without --force.
    std::fs::create_dir(s.dir.path().join("etc")).unwrap();
    for force in [&[][..], &["--force"]] {
        let out = s.run(&[&["config", "init", "-f", "etc"][..], force].concat(), &[]);
        assert_eq!(
            text(&out.stderr),
            "conduit: error: -f etc is a directory: give a file in it, such as \
             etc/conduit.toml\n"
        );
        assert_eq!(out.status.code(), Some(64));
    }
}

#[test]
fn validate_reports_every_problem_and_exits_64() {
    let s = Sandbox::new();
    s.init("client");
    s.write(
        "conduit.toml",
        "[router]\nhost = \"10.2.0.1\"\nport = \"9999\"\npublic_key = \"ed25519:AAAA\"\n\
         [[tunnels]]\nname = \"web\"\nsource = \"10.2.0.2:8080\"\nbind = \"0.0.0.0:8080\"\n\
         [[tunnels]]\nname = \"web\"\nsource = \"10.2.0.3\"\nbind = \"127.0.0.1:8080\"\n",
    );
    let out = s.run(
        &["config", "validate"],
        &[("CONDUIT_PERFORMANCE_WORKERS", "lots")],
    );
    assert_eq!(
        lines(&out.stderr),
        [
            "error: router.port: expected an integer (1-65535), found a string; write it without \
             quotes: port = 9999 (conduit.toml:3)",
            "error: router.public_key: invalid public key \"ed25519:AAAA\": an Ed25519 public \
             key is 32 bytes; paste the key the router's `conduit init` printed (conduit.toml:4)",
            "error: tunnels[1].name: \"web\" is already the name of tunnels[0]; give each tunnel \
             its own name (conduit.toml:10)",
            "error: tunnels[1].source: \"10.2.0.3\" is not HOST:PORT; use the address the router \
             reaches the service at, such as 10.2.0.2:8080 or db.internal:5432 (conduit.toml:11)",
            "error: tunnels[1].bind: 127.0.0.1:8080 conflicts with tunnels[0].bind 0.0.0.0:8080 \
             (0.0.0.0 listens on every local address); give one of them another port \
             (conduit.toml:12)",
            "error: performance.workers: expected an integer (0-1024), found \"lots\" (env \
             CONDUIT_PERFORMANCE_WORKERS)",
            "conduit: error: conduit.toml has 6 errors; fix them and run `conduit config \
             validate -f conduit.toml` again",
        ]
    );
    assert_eq!(text(&out.stdout), "");
    assert_eq!(out.status.code(), Some(64));
}

/// `validate --format json`: one document on stdout for a script or a CI job, with
/// the same exit code and summary as text; problems are not printed twice.
#[test]
fn validate_as_json_gives_every_problem_with_its_path_and_origin() {
    let s = Sandbox::new();
    s.init("client");
    s.write(
        "conduit.toml",
        "[router]\nhost = \"10.2.0.1\"\nport = \"9999\"\npublic_key = \"ed25519:AAAA\"\n\
         [[tunnels]]\nname = \"web\"\nsource = \"10.2.0.2:8080\"\nbind = \"0.0.0.0:8080\"\n",
    );
    let out = s.run(
        &["config", "validate", "--format", "json"],
        &[("CONDUIT_PERFORMANCE_WORKERS", "lots")],
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        doc,
        serde_json::json!({
            "file": "conduit.toml",
            "role": "client",
            "valid": false,
            "summary": "1 tunnel",
            "errors": 3,
            "warnings": 0,
            "problems": [
                {
                    "severity": "error",
                    "path": "router.port",
                    "message": "expected an integer (1-65535), found a string; write it without \
                                quotes: port = 9999",
                    "origin": "conduit.toml:3",
                },
                {
                    "severity": "error",
                    "path": "router.public_key",
                    "message": "invalid public key \"ed25519:AAAA\": an Ed25519 public key is 32 \
                                bytes; paste the key the router's `conduit init` printed",
                    "origin": "conduit.toml:4",
                },
                {
                    "severity": "error",
                    "path": "performance.workers",
                    "message": "expected an integer (0-1024), found \"lots\"",
                    "origin": "env CONDUIT_PERFORMANCE_WORKERS",
                },
            ],
        })
    );
    assert_eq!(
        lines(&out.stderr),
        [
            "conduit: error: conduit.toml has 3 errors; fix them and run `conduit config \
          validate -f conduit.toml` again"
        ]
    );
    assert_eq!(out.status.code(), Some(64));

    // Valid: exit 0, nothing on stderr.
    let key = s.init("router");
    s.write(
        "conduit.toml",
        &format!(
            "[router]\nhost = \"10.2.0.1\"\nport = 9999\npublic_key = \"{key}\"\n\
             [[tunnels]]\nname = \"web\"\nsource = \"10.2.0.2:8080\"\nbind = \"0.0.0.0:8080\"\n"
        ),
    );
    let out = s.run(&["config", "validate", "--format", "json"], &[]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["valid"], true, "{doc:#}");
    assert_eq!(doc["summary"], "1 tunnel");
    assert_eq!(doc["problems"], serde_json::json!([]));
    assert_eq!(text(&out.stderr), "");
    assert_eq!(out.status.code(), Some(0));

    // A file that cannot be loaded: its one problem, with nothing valid to sum up.
    let out = s.run(
        &["config", "validate", "--format", "json", "-f", "none.toml"],
        &[],
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["valid"], false, "{doc:#}");
    assert_eq!(doc["summary"], serde_json::Value::Null);
    assert_eq!(doc["errors"], 1);
    assert_eq!(lines(&out.stderr).len(), 1, "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).starts_with("conduit: error: no configuration file at none.toml"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn a_missing_file_names_the_path_and_how_to_create_one() {
    let s = Sandbox::new();
    let out = s.run(&["config", "validate"], &[]);
    assert_eq!(
        lines(&out.stderr),
        [
            "conduit: error: no configuration file at conduit.toml: create it \
          with `conduit config init -f conduit.toml` (a documented starting file) or name another file with -f FILE"
        ]
    );
    assert_eq!(text(&out.stdout), "");
    assert_eq!(out.status.code(), Some(64));
    // A router's file is router.toml unless named.
    let out = s.run(&["config", "validate", "--router"], &[]);
    assert_eq!(
        lines(&out.stderr),
        [
            "conduit: error: no configuration file at router.toml: create it \
          with `conduit config init --router -f router.toml` (a documented starting file) or name another file with -f FILE"
        ]
    );
    let out = s.run(&["config", "show", "--router", "-f", "other.toml"], &[]);
    assert_eq!(
        lines(&out.stderr),
        [
            "conduit: error: no configuration file at other.toml: create it \
          with `conduit config init --router -f other.toml` (a documented starting file) or name another file with -f FILE"
        ]
    );
    assert_eq!(out.status.code(), Some(64));
    let out = s.run(&["router", "--config", "/no/such.toml"], &[]);
    assert_eq!(
        lines(&out.stderr),
        [
            "conduit: error: no configuration file at /no/such.toml: create it \
          with `conduit config init --router -f /no/such.toml` (a documented starting file) or name another file with --config FILE"
        ]
    );
    assert_eq!(out.status.code(), Some(64));
    // `-` is no standard input here: said so, not "create it".
    let out = s.run(&["config", "validate", "-f", "-"], &[]);
    assert_eq!(
        lines(&out.stderr),
        [
            "conduit: error: no configuration file at -: `-` is a file name here, not \
             standard input; give a file on disk with -f FILE (`config validate` and `config \
             show` also read -f /dev/stdin)"
        ]
    );
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn a_router_key_given_by_a_flag_and_by_set_is_refused() {
    let s = Sandbox::new();
    let out = s.run(
        &[
            "router",
            "--set",
            "router.bind=127.0.0.1:0",
            "--bind",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert_eq!(
        lines(&out.stderr),
        [
            "conduit: error: router.bind is given twice, by --bind and by --set router.bind: give it once"
        ]
    );
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn malformed_toml_gives_line_and_column() {
    let s = Sandbox::new();
    s.write("bad.toml", "[router]\nhost = \"10.2.0.1\"\nport = 99 99\n");
    let out = s.run(&["config", "validate", "-f", "bad.toml"], &[]);
    assert_eq!(
        lines(&out.stderr),
        [
            "conduit: error: bad.toml:3:8: invalid TOML: string values must be quoted, \
             expected literal string; fix the syntax there"
        ]
    );
    assert_eq!(out.status.code(), Some(64));

    s.write("bad.toml", "[router\nhost = \"10.2.0.1\nport = = 1\n");
    let out = s.run(&["config", "validate", "-f", "bad.toml"], &[]);
    let err = lines(&out.stderr);
    assert_eq!(err.len(), 4, "{err:?}");
    assert!(
        err[..3].iter().all(|l| l.starts_with("error: bad.toml:")),
        "{err:?}"
    );
    assert_eq!(
        err[3],
        "conduit: error: bad.toml has 3 errors; fix them and run `conduit config validate -f bad.toml` again"
    );
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn a_file_of_the_other_kind_is_named_with_the_command_that_checks_it() {
    let s = Sandbox::new();
    s.write(
        "router.toml",
        "[router]\nbind = \"127.0.0.1:1\"\nallow = [\"127.0.0.1:2\"]\n[api]\nenabled = true\n",
    );
    let out = s.run(&["config", "validate", "-f", "router.toml"], &[]);
    let err = lines(&out.stderr);
    assert_eq!(
        err.last().unwrap(),
        "conduit: error: router.toml has 7 errors, 3 of them keys or sections of a router's \
         file: if that is what it is, check it with `conduit config validate --router -f \
         router.toml`; otherwise fix them and run `conduit config validate -f router.toml` again",
        "{err:?}"
    );
    assert_eq!(out.status.code(), Some(64));

    s.write(
        "conduit.toml",
        "[router]\nhost = \"10.2.0.1\"\n[[tunnels]]\nname = \"web\"\nsource = \"s:1\"\n\
         bind = \"127.0.0.1:1\"\n",
    );
    let out = s.run(
        &["config", "validate", "--router", "-f", "conduit.toml"],
        &[],
    );
    let err = lines(&out.stderr);
    assert_eq!(
        err.last().unwrap(),
        "conduit: error: conduit.toml has 4 errors, 2 of them keys or sections of a client's \
         file: if that is what it is, check it with `conduit config validate -f conduit.toml`; \
         otherwise fix them and run `conduit config validate --router -f conduit.toml` again",
        "{err:?}"
    );
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn a_file_that_never_ends_is_no_configuration() {
    let s = Sandbox::new();
    for args in [
        &["config", "validate", "-f", "/dev/zero"][..],
        &["config", "validate", "--router", "-f", "/dev/urandom"],
    ] {
        let out = s.run(args, &[]);
        assert_eq!(
            lines(&out.stderr),
            [format!(
                "conduit: error: {} is larger than 4 MiB: not a Conduit configuration file \
                 (check -f)",
                args[args.len() - 1]
            )]
        );
        assert_eq!(out.status.code(), Some(64));
    }
}

#[test]
fn warnings_alone_keep_the_file_valid() {
    let s = Sandbox::new();
    let router_key = s.init("client");
    s.write(
        "conduit.toml",
        &format!(
            "[router]\nhost = \"h\"\npublic_key = \"{router_key}\"\n[[tunnels]]\nname = \"a\"\n\
             source = \"s:1\"\nbind = \"127.0.0.1:0\"\n"
        ),
    );
    let out = s.run(&["config", "validate"], &[("CONDUIT_ROUTER_HSOT", "x")]);
    assert_eq!(
        lines(&out.stderr),
        [
            "warning: tunnels[0].bind: port 0 lets the system pick a different free port at each \
             start, so users cannot know where to connect; pick a fixed port (conduit.toml:7)",
            "warning: CONDUIT_ROUTER_HSOT is not a Conduit setting and is ignored; did you mean \
             CONDUIT_ROUTER_HOST? settings are CONDUIT_<SECTION>_<KEY>, such as \
             CONDUIT_ROUTER_HOST",
        ]
    );
    assert_eq!(lines(&out.stdout), ["conduit.toml is valid: 1 tunnel"]);
    assert_eq!(out.status.code(), Some(0));
}

fn squash(b: &[u8]) -> Vec<String> {
    text(b)
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

#[test]
fn show_prints_values_with_origins_and_masks_secrets() {
    let s = Sandbox::new();
    let key = s.init("client");
    s.write(
        "conduit.toml",
        &format!(
            "[router]\nhost = \"10.2.0.1\"\nport = 1000\npublic_key = \"{key}\"\n[security]\n\
             token = \"from-file\"\n[[tunnels]]\nname = \"web\"\nsource = \"10.2.0.2:80\"\n\
             bind = \"127.0.0.1:8080\"\n"
        ),
    );
    let env = [
        ("CONDUIT_ROUTER_PORT", "2000"),
        ("CONDUIT_SECURITY_TOKEN", "from-env"),
    ];
    let out = s.run(&["config", "show", "--set", "router.port=3000"], &env);
    assert_eq!(text(&out.stderr), "");
    assert_eq!(out.status.code(), Some(0));
    let stdout = text(&out.stdout);
    assert!(
        !stdout.contains("from-file") && !stdout.contains("from-env"),
        "{stdout}"
    );
    let got = squash(&out.stdout);
    let home_key = s.home().join("keys/client.key");
    for want in [
        "# effective configuration from conduit.toml; each value's origin follows it, secrets \
         print as ***"
            .to_owned(),
        "host = \"10.2.0.1\" # conduit.toml:2".to_owned(),
        "port = 3000 # cli --set router.port".to_owned(),
        format!("private_key_path = \"{}\" # default", home_key.display()),
        "token = \"***\" # env CONDUIT_SECURITY_TOKEN".to_owned(),
        "workers = 0 # default".to_owned(),
        "bind = \"127.0.0.1:8080\" # conduit.toml:10".to_owned(),
    ] {
        assert!(got.contains(&want), "missing {want:?} in\n{stdout}");
    }

    let out = s.run(&["config", "show", "--format", "json"], &env);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["router"]["port"],
        serde_json::json!({"value": 2000, "origin": "env CONDUIT_ROUTER_PORT"})
    );
    assert_eq!(v["security"]["token"]["value"], "***");
    assert_eq!(v["tunnels"][0]["name"]["origin"], "conduit.toml:8");

    // The global log flags (and their variables) are no keys of the file, but win
    // over its [logging] where it runs: said beside what is shown.
    let out = s.run(
        &["config", "show", "--log-format", "json"],
        &[("CONDUIT_LOG_LEVEL", "warn")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr),
        "note: CONDUIT_LOG_LEVEL=warn wins over the logging.level shown, for the router and \
         for the tunnels `up` starts\nnote: --log-format json wins over the logging.format \
         shown, for the router and for the tunnels `up` starts\n"
    );
}

/// With errors, `show` prints the errors only: the configuration it would show is
/// not the one that runs (a bad value is left out of it).
#[test]
fn show_prints_only_the_errors_of_an_invalid_configuration() {
    let s = Sandbox::new();
    s.write("conduit.toml", "[router]\nhost = \"h\"\n");
    let out = s.run(&["config", "show"], &[]);
    assert_eq!(text(&out.stdout), "");
    let err = lines(&out.stderr);
    assert_eq!(
        err.last().map(String::as_str),
        Some(
            "conduit: error: conduit.toml has 3 errors; fix them and run `conduit config validate -f conduit.toml` again"
        ),
        "{err:?}"
    );
    assert_eq!(out.status.code(), Some(64));

    let key = s.init("client");
    s.write(
        "conduit.toml",
        &format!(
            "[router]\nhost = \"10.2.0.1\"\nport = 1000\npublic_key = \"{key}\"\n\
             [[tunnels]]\nname = \"web\"\nsource = \"10.2.0.2:80\"\nbind = \"127.0.0.1:8080\"\n"
        ),
    );
    let out = s.run(&["config", "show"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = s.run(&["config", "show", "--set", "performance.workers=abc"], &[]);
    assert_eq!(text(&out.stdout), "");
    assert_eq!(
        lines(&out.stderr),
        [
            "error: performance.workers: expected an integer (0-1024), found \"abc\" (cli --set \
             performance.workers)",
            "conduit: error: 1 error in the settings given with conduit.toml (--set \
             performance.workers); fix it and run this command again"
        ]
    );
    assert_eq!(out.status.code(), Some(64));
    // An error of the file's own still points at `validate`.
    let out = s.run(
        &["config", "show", "--set", "performance.workers=abc"],
        &[("CONDUIT_ROUTER_PORT", "1000")],
    );
    assert_eq!(out.status.code(), Some(64));
    s.write("conduit.toml", "[router]\nhost = \"10.2.0.1\"\nprt = 1\n");
    let out = s.run(&["config", "show", "--set", "performance.workers=abc"], &[]);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        text(&out.stderr).ends_with("and run `conduit config validate -f conduit.toml` again\n"),
        "{}",
        text(&out.stderr)
    );
}

/// A value clap refuses names the variable it came from: its own message names only
/// the flag, which the user never typed.
#[test]
fn a_bad_value_from_the_environment_names_the_variable() {
    let s = Sandbox::new();
    let out = s.run(&["list"], &[("CONDUIT_LOG_FORMAT", "xml")]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: invalid value 'xml' for '--log-format <FORMAT>'"),
        "{err}"
    );
    assert!(
        err.ends_with(
            "note: the value comes from the environment variable CONDUIT_LOG_FORMAT; fix or \
             unset it\n"
        ),
        "{err}"
    );
    // Given on the command line, the value is the user's own: no note.
    let out = s.run(
        &["list", "--log-format", "yaml"],
        &[("CONDUIT_LOG_FORMAT", "xml")],
    );
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: invalid value 'yaml'"), "{err}");
    assert!(!err.contains("note:"), "{err}");
}

/// A router whose `logging.file` is in a directory that is not there refuses to
/// start, and says so on stderr, without making the directory: the same answer
/// each time, as `config validate` gives.
#[test]
fn a_router_log_file_in_a_missing_directory_is_refused_without_making_it() {
    let s = Sandbox::new();
    s.init("router");
    let file = s.write(
        "router.toml",
        "[router]\nbind = \"127.0.0.1:0\"\n[logging]\nfile = \"logs/router.log\"\n",
    );
    let file = file.to_str().unwrap();
    let dir = s.dir.path().display();
    let want = format!(
        "conduit: error: logging.file: directory {dir}/logs does not exist; create it or \
         choose another file ({file}:4)"
    );
    for _ in 0..2 {
        let out = s.run(&["router", "--config", file, "--transport", "plain"], &[]);
        assert_eq!(lines(&out.stderr), [want.as_str()]);
        assert_eq!(out.status.code(), Some(64));
        assert!(!s.dir.path().join("logs").exists());
    }
    let out = s.run(&["config", "validate", "--router", "-f", file], &[]);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        text(&out.stderr).contains(&want["conduit: ".len()..]),
        "{}",
        text(&out.stderr)
    );
}

/// A router whose `logging.file` is a directory is refused by `config validate` and
/// at start, in the same words, naming the setting (no `--log-file` was given).
#[test]
fn a_router_log_file_that_is_a_directory_is_refused_by_validate_and_at_start() {
    let s = Sandbox::new();
    s.init("router");
    std::fs::create_dir(s.dir.path().join("logs")).unwrap();
    let file = s.write(
        "router.toml",
        "[router]\nbind = \"127.0.0.1:0\"\n[logging]\nfile = \"logs\"\n",
    );
    let file = file.to_str().unwrap();
    let dir = s.dir.path().display();
    let want = format!(
        "logging.file: {dir}/logs is a directory: give a file in it, such as \
         {dir}/logs/conduit.log ({file}:4)"
    );
    let out = s.run(&["config", "validate", "--router", "-f", file], &[]);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        lines(&out.stderr).contains(&format!("error: {want}")),
        "{}",
        text(&out.stderr)
    );
    let out = s.run(&["router", "--config", file, "--transport", "plain"], &[]);
    assert_eq!(lines(&out.stderr), [format!("conduit: error: {want}")]);
    assert_eq!(out.status.code(), Some(64));
}
