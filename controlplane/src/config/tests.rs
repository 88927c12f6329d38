//! Precedence, origins, masking, `show` and plans, through the public entry points with
//! real files in a temporary directory. The environment is always an explicit [`Env`].

use std::path::PathBuf;

use conduit_proto::{KeyPair, PublicKey, Secret};

use super::*;
use crate::keys;

/// A temporary directory with a home holding `keys/client.key` and `keys/router.{key,pub}`.
pub(crate) struct Fixture {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) home: Home,
    pub(crate) router_key: String,
}

impl Fixture {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().join("home"));
        keys::generate(&home, "client", false).unwrap();
        let router = keys::generate(&home, "router", false).unwrap();
        Self {
            dir,
            home,
            router_key: router.public().to_string(),
        }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A valid client file with one tunnel, then `extra` appended.
    pub(crate) fn client_text(&self, extra: &str) -> String {
        format!(
            "[router]\nhost = \"10.2.0.1\"\npublic_key = \"{}\"\n\n[[tunnels]]\nname = \
             \"web\"\nsource = \"10.2.0.2:8080\"\nbind = \"0.0.0.0:8080\"\n{extra}",
            self.router_key
        )
    }

    pub(crate) fn sources(&self, text: &str, env: &[(&str, &str)], sets: &[&str]) -> Sources {
        let file = self.path("conduit.toml");
        std::fs::write(&file, text).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        Sources {
            file,
            file_flag: "-f",
            contents: None,
            env: Env::from_pairs(env.iter().copied()),
            overrides: sets
                .iter()
                .map(|s| Override::parse_set(s).unwrap())
                .collect(),
            home: self.home.clone(),
        }
    }

    /// The problems as `validate` prints them, with the temp dir shown as `$DIR`.
    pub(crate) fn lines(&self, report: &Report) -> Vec<String> {
        let dir = self.dir.path().display().to_string();
        report
            .problems
            .iter()
            .map(|p| {
                let kind = match p.severity {
                    Severity::Error => "error",
                    Severity::Warning => "warning",
                };
                format!("{kind}: {p}").replace(&dir, "$DIR")
            })
            .collect()
    }

    pub(crate) fn client(&self, text: &str) -> Vec<String> {
        match load_client(&self.sources(text, &[], &[])) {
            Ok(l) => self.lines(&l.report),
            Err(r) => self.lines(&r),
        }
    }
}

#[test]
fn a_valid_file_loads_with_defaults_and_no_problems() {
    let f = Fixture::new();
    let l = load_client(&f.sources(&f.client_text(""), &[], &[])).unwrap();
    assert_eq!(f.lines(&l.report), Vec::<String>::new());
    let c = &l.config;
    assert_eq!(c.router.host.as_deref(), Some("10.2.0.1"));
    assert_eq!(c.router.port, 9999);
    assert_eq!(c.performance, PerformanceConfig::default());
    assert_eq!(
        c.security.private_key_path,
        Some(f.home.private_key("client"))
    );
    assert_eq!(c.tunnels.len(), 1);
    assert_eq!(c.tunnels[0].protocol, Protocol::Tcp);
    assert_eq!(l.origins.get("router.port"), &Origin::Default);
    assert_eq!(
        l.origins.get("router.host").to_string(),
        format!("{}:2", l.file.display())
    );
}

#[test]
fn environment_beats_file_and_cli_beats_environment() {
    let f = Fixture::new();
    let text = f.client_text("[performance]\nworkers = 3\npool_size = 5\n");
    let env = [
        ("CONDUIT_ROUTER_PORT", "2000"),
        ("CONDUIT_PERFORMANCE_WORKERS", "4"),
        ("CONDUIT_LOGGING_FORMAT", "json"),
    ];
    let l = load_client(&f.sources(&text, &env, &["router.port=3000"])).unwrap();
    assert_eq!(f.lines(&l.report), Vec::<String>::new());
    let c = &l.config;
    assert_eq!(c.router.port, 3000, "cli over env");
    assert_eq!(c.performance.workers, 4, "env over file");
    assert_eq!(c.performance.pool_size, 5, "file over default");
    assert_eq!(c.logging.format, LogFormat::Json, "env over default");
    assert_eq!(c.performance.io_engine, IoEngine::Auto, "default");
    let o = |p: &str| l.origins.get(p).to_string();
    assert_eq!(o("router.port"), "cli --set router.port");
    assert_eq!(o("performance.workers"), "env CONDUIT_PERFORMANCE_WORKERS");
    assert_eq!(
        o("performance.pool_size"),
        format!("{}:11", l.file.display())
    );
    assert_eq!(o("performance.io_engine"), "default");
}

#[test]
fn the_sectioned_variable_beats_its_older_alias() {
    let f = Fixture::new();
    let text = f.client_text("");
    let l = load_client(&f.sources(&text, &[("CONDUIT_TOKEN", "old")], &[])).unwrap();
    assert_eq!(
        l.config.security.token.as_ref().map(Secret::expose),
        Some("old")
    );
    assert_eq!(
        l.origins.get("security.token").to_string(),
        "env CONDUIT_TOKEN"
    );
    let env = [("CONDUIT_TOKEN", "old"), ("CONDUIT_SECURITY_TOKEN", "new")];
    let l = load_client(&f.sources(&text, &env, &[])).unwrap();
    assert_eq!(
        l.config.security.token.as_ref().map(Secret::expose),
        Some("new")
    );
    assert_eq!(
        l.origins.get("security.token").to_string(),
        "env CONDUIT_SECURITY_TOKEN"
    );
}

/// `--set` of a key its section lacks names the section's keys; of a section that
/// does not exist, the sections there are.
#[test]
fn a_set_of_an_unknown_key_names_what_can_be_set() {
    let f = Fixture::new();
    let text = f.client_text("");
    let sets = ["performance.nosuch=5", "nosuch.key=1"];
    let l = load_client(&f.sources(&text, &[], &sets)).unwrap();
    let lines = f.lines(&l.report);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines[0].starts_with(
            "error: performance.nosuch: unknown key in [performance]; valid keys: workers, \
             io_engine, "
        ) && lines[0].ends_with(" (cli --set performance.nosuch)"),
        "{lines:#?}"
    );
    assert_eq!(
        lines[1],
        "error: nosuch.key: unknown key; only the keys of [router], [security], [performance], \
         [logging], [alerts] can be set this way (SECTION.KEY) (cli --set nosuch.key)"
    );
}

#[test]
fn a_bad_override_is_reported_and_the_layer_below_stays() {
    let f = Fixture::new();
    let text = f.client_text("[performance]\nworkers = 3\n");
    let env = [
        ("CONDUIT_PERFORMANCE_WORKERS", "many"),
        ("CONDUIT_ROUTER_HOTS", "x"),
    ];
    let sets = ["router.prot=1", "performance.io_engine=turbo"];
    let l = load_client(&f.sources(&text, &env, &sets)).unwrap();
    assert_eq!(
        f.lines(&l.report),
        [
            "error: performance.workers: expected an integer (0-1024), found \"many\" (env \
             CONDUIT_PERFORMANCE_WORKERS)",
            "error: router.prot: unknown key in [router]; did you mean router.port? valid keys: \
             host, port, public_key, transport, fallbacks, fallback_keys, failback_secs, \
             standby_check_secs, balance (cli --set router.prot)",
            "error: performance.io_engine: unknown value \"turbo\"; use auto, uring or epoll \
             (cli --set performance.io_engine)",
            "warning: CONDUIT_ROUTER_HOTS is not a Conduit setting and is ignored; did you \
             mean CONDUIT_ROUTER_HOST? settings are CONDUIT_<SECTION>_<KEY>, such as \
             CONDUIT_ROUTER_HOST",
        ]
    );
    assert_eq!(l.config.performance.workers, 3);
    assert_eq!(l.config.performance.io_engine, IoEngine::Auto);
}

#[test]
fn the_environment_can_supply_required_values() {
    let f = Fixture::new();
    let text = "[[tunnels]]\nname = \"web\"\nsource = \"10.2.0.2:80\"\nbind = \"127.0.0.1:8080\"\n";
    let env = [
        ("CONDUIT_ROUTER_HOST", "router.internal"),
        ("CONDUIT_ROUTER_KEY", f.router_key.as_str()),
    ];
    let l = load_client(&f.sources(text, &env, &[])).unwrap();
    assert_eq!(f.lines(&l.report), Vec::<String>::new());
    assert_eq!(
        l.origins.get("router.public_key").to_string(),
        "env CONDUIT_ROUTER_KEY"
    );
}

#[test]
fn relative_paths_in_the_file_resolve_against_its_directory() {
    let f = Fixture::new();
    std::fs::create_dir(f.path("keys")).unwrap();
    std::fs::copy(f.home.private_key("client"), f.path("keys/client.key")).unwrap();
    std::fs::copy(f.home.public_key("router"), f.path("router.pub")).unwrap();
    let text = "[router]\nhost = \"h\"\npublic_key = \"router.pub\"\n[security]\n\
                private_key_path = \"./keys/client.key\"\n[[tunnels]]\nname = \"a\"\n\
                source = \"s:1\"\nbind = \"127.0.0.1:1\"\n";
    let l = load_client(&f.sources(text, &[], &[])).unwrap();
    assert_eq!(f.lines(&l.report), Vec::<String>::new());
    assert_eq!(
        l.config.security.private_key_path,
        Some(f.path("./keys/client.key"))
    );
    assert_eq!(
        l.config.router.public_key,
        Some(f.path("router.pub").display().to_string())
    );
    let plan = plan_tunnels(&f.sources(text, &[], &[])).unwrap();
    assert_eq!(
        pins(&plan.tunnels[0].router_keys),
        std::slice::from_ref(&f.router_key)
    );
}

/// Paths from the environment or `--set` are made absolute against the working
/// directory as the configuration is resolved (keys written inline stay as they
/// are); those in the file stay relative to the file.
#[test]
fn relative_paths_from_the_environment_or_the_command_line_are_made_absolute() {
    let f = Fixture::new();
    let cwd = std::env::current_dir().unwrap();
    let env = [
        ("CONDUIT_SECURITY_PRIVATE_KEY_PATH", "keys/client.key"),
        ("CONDUIT_LOGGING_FILE", "./logs/c.log"),
    ];
    let inline = &f.router_key;
    let sets = [
        "router.public_key=keys/router.pub",
        &format!("router.fallback_keys={inline}|old/r.pub, /etc/r2.pub"),
    ];
    let l = load_client(&f.sources(&f.client_text(""), &env, &sets)).unwrap();
    let c = &l.config;
    assert_eq!(
        c.security.private_key_path,
        Some(cwd.join("keys/client.key"))
    );
    assert_eq!(c.logging.file, Some(cwd.join("logs/c.log")));
    let d = cwd.display();
    assert_eq!(c.router.public_key, Some(format!("{d}/keys/router.pub")));
    assert_eq!(
        c.router.fallback_keys,
        [format!("{inline}|{d}/old/r.pub"), "/etc/r2.pub".to_owned()]
    );
    // In the file, the same text is the file's directory's.
    let text = f.client_text("[security]\nprivate_key_path = \"keys/client.key\"\n");
    let l = load_client(&f.sources(&text, &[], &[])).unwrap();
    assert_eq!(
        l.config.security.private_key_path,
        Some(f.path("keys/client.key"))
    );
}

/// A service file gets a `--set` value, or the note for a variable, with its paths
/// made absolute; other values as they were given.
#[test]
fn values_for_a_service_have_their_paths_made_absolute() {
    let d = std::env::current_dir().unwrap().display().to_string();
    let set = |s: &str, role| Override::parse_set(s).unwrap().value_from_working_dir(role);
    assert_eq!(
        set("router.public_key=k/r.pub", Role::Client),
        Ok(format!("{d}/k/r.pub"))
    );
    assert_eq!(
        set("router.fallback_keys=a.pub, /b.pub", Role::Client),
        Ok(format!("{d}/a.pub,/b.pub"))
    );
    // A path with a comma in it: a TOML list, which reads back as one item.
    let listed = set(
        r#"router.fallback_keys=["k/a,b.pub", "/c.pub"]"#,
        Role::Client,
    )
    .unwrap();
    assert_eq!(listed, format!(r#"["{d}/k/a,b.pub", "/c.pub"]"#));
    let again = format!("router.fallback_keys={listed}");
    assert_eq!(set(&again, Role::Client), Ok(listed.clone()));
    assert_eq!(
        set("router.authorized_keys=clients", Role::Router),
        Ok(format!("{d}/clients"))
    );
    assert_eq!(
        set("performance.workers=2", Role::Client),
        Ok("2".to_owned())
    );
    assert_eq!(
        env_value_from_working_dir("CONDUIT_ROUTER_KEY", "k/r.pub"),
        Some(format!("{d}/k/r.pub"))
    );
    assert_eq!(
        env_value_from_working_dir("CONDUIT_API_HISTORY_FILE", "h.json"),
        Some(format!("{d}/h.json"))
    );
    assert_eq!(
        env_value_from_working_dir("CONDUIT_SECURITY_PRIVATE_KEY_PATH", "/k/c.key"),
        None
    );
    assert_eq!(
        env_value_from_working_dir("CONDUIT_PERFORMANCE_WORKERS", "2"),
        None
    );
}

fn squash(s: &str) -> Vec<String> {
    s.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

#[test]
fn show_prints_every_value_with_its_origin_and_masks_secrets() {
    let f = Fixture::new();
    let text = f.client_text("[security]\ntoken = \"hunter2\"\n");
    let env = [("CONDUIT_ROUTER_PORT", "2000")];
    let l = load_client(&f.sources(&text, &env, &["performance.workers=2"])).unwrap();
    let out = show_client(&l, Format::Text);
    assert!(!out.contains("hunter2"), "{out}");
    let file = l.file.display().to_string();
    let key = f.home.private_key("client").display().to_string();
    let lines = squash(&out);
    let expect = [
        format!(
            "# effective configuration from {file}; each value's origin follows it, secrets print as ***"
        ),
        String::new(),
        "[router]".into(),
        format!("host = \"10.2.0.1\" # {file}:2"),
        "port = 2000 # env CONDUIT_ROUTER_PORT".into(),
        format!("public_key = \"{}\" # {file}:3", f.router_key),
        "transport = \"tls\" # default".into(),
        "fallbacks = [] # default".into(),
        "fallback_keys = [] # default".into(),
        "failback_secs = 30 # default".into(),
        "standby_check_secs = 300 # default".into(),
        "balance = false # default".into(),
        String::new(),
        "[security]".into(),
        format!("private_key_path = \"{key}\" # default"),
        format!("token = \"***\" # {file}:10"),
        "key_rotation_days = 30 # default".into(),
        "cipher_suites = [\"TLS_AES_128_GCM_SHA256\", \"TLS_AES_256_GCM_SHA384\", \
         \"TLS_CHACHA20_POLY1305_SHA256\"] # default"
            .into(),
        String::new(),
        "[performance]".into(),
        "workers = 2 # cli --set performance.workers".into(),
        "io_engine = \"auto\" # default".into(),
        "pin_cores = false # default".into(),
    ];
    assert_eq!(lines[..expect.len()], expect[..], "{out}");
    let tail: Vec<&String> = lines.iter().rev().take(7).collect();
    assert_eq!(
        tail,
        [
            "allow_from = [] # default",
            "proxy_protocol = (not set) # default",
            "protocol = \"tcp\" # default",
            &format!("bind = \"0.0.0.0:8080\" # {file}:8"),
            &format!("source = \"10.2.0.2:8080\" # {file}:7"),
            &format!("name = \"web\" # {file}:6"),
            "[[tunnels]]",
        ]
    );
    assert!(
        lines.contains(&"file = (not set) # default".to_owned()),
        "{out}"
    );
}

#[test]
fn show_json_has_values_and_origins() {
    let f = Fixture::new();
    let text = f.client_text("[security]\ntoken = \"hunter2\"\n");
    let l = load_client(&f.sources(&text, &[], &[])).unwrap();
    let out = show_client(&l, Format::Json);
    assert!(!out.contains("hunter2"), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let file = l.file.display().to_string();
    assert_eq!(v["file"], file.as_str());
    assert_eq!(
        v["router"]["port"],
        serde_json::json!({"value": 9999, "origin": "default"})
    );
    assert_eq!(v["security"]["token"]["value"], "***");
    assert_eq!(v["logging"]["file"]["value"], serde_json::Value::Null);
    assert_eq!(v["tunnels"][0]["bind"]["origin"], format!("{file}:8"));
}

/// A file whose every key is past its `expires=` admits nobody: said beforehand.
#[test]
fn an_authorized_clients_file_of_expired_keys_is_warned_of() {
    let f = Fixture::new();
    let line = std::fs::read_to_string(f.home.public_key("client")).unwrap();
    std::fs::write(
        f.home.authorized_clients(),
        format!("expires=2020-01-01 {line}"),
    )
    .unwrap();
    let text = "[router]\nbind = \"127.0.0.1:9999\"\nallow = [\"10.2.0.0/24:*\"]\n";
    let l = load_router(&f.sources(text, &[], &[])).unwrap();
    assert_eq!(
        f.lines(&l.report),
        [format!(
            "warning: router.authorized_keys: every key in {}/home/authorized_clients has \
             expired (expires= in the past): every client will be refused; remove expires= \
             from the lines to keep, or add keys",
            "$DIR"
        )]
    );
    std::fs::write(f.home.authorized_clients(), line).unwrap();
    let l = load_router(&f.sources(text, &[], &[])).unwrap();
    assert_eq!(f.lines(&l.report), Vec::<String>::new());
}

#[test]
fn a_router_file_loads_shows_and_masks_too() {
    let f = Fixture::new();
    std::fs::write(f.home.authorized_clients(), "").unwrap();
    // A per-client rule: the key's base64 padding '=' must not split the rule.
    let client = keys::load_public(&f.home.public_key("client").display().to_string(), "k");
    let text = format!(
        "[router]\nbind = \"127.0.0.1:9999\"\nallow = [\"10.2.0.0/24:*\", \"{}=10.9.0.1:22\"]\n\
         token = \"s3cret\"\n",
        client.unwrap()
    );
    let env = [("CONDUIT_ROUTER_BIND", "127.0.0.1:7000")];
    let l = load_router(&f.sources(&text, &env, &[])).unwrap();
    assert_eq!(
        f.lines(&l.report),
        [format!(
            "warning: router.authorized_keys: {}/home/authorized_clients lists no client keys: \
             every client will be refused; add one client public key per line",
            "$DIR"
        )]
    );
    assert_eq!(l.config.router.bind, "127.0.0.1:7000");
    let out = squash(&show_router(&l, Format::Text));
    assert!(
        out.contains(&"bind = \"127.0.0.1:7000\" # env CONDUIT_ROUTER_BIND".to_owned()),
        "{out:?}"
    );
    assert!(
        out.contains(&format!("token = \"***\" # {}:4", l.file.display())),
        "{out:?}"
    );
    assert!(!out.iter().any(|l| l.contains("s3cret")));
}

#[test]
fn plans_carry_everything_a_tunnel_needs() {
    let f = Fixture::new();
    let text = f.client_text(
        "\n[[tunnels]]\nname = \"db\"\nsource = \"db.internal:5432\"\nbind = \"127.0.0.1:5432\"\n\
         [performance]\npool_size = 4\nidle_timeout_secs = 60\n",
    );
    let env = [
        ("CONDUIT_ROUTER_HOST", "fd00::1"),
        ("CONDUIT_SECURITY_TOKEN", "t"),
    ];
    let plan = plan_tunnels(&f.sources(&text, &env, &[])).unwrap();
    assert_eq!(plan.warnings, Vec::new());
    let names: Vec<&str> = plan.tunnels.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["web", "db"]);
    let db = &plan.tunnels[1];
    assert_eq!(db.router, "[fd00::1]:9999");
    assert_eq!(db.source, "db.internal:5432");
    assert_eq!(
        db.bind,
        "127.0.0.1:5432".parse::<std::net::SocketAddr>().unwrap()
    );
    assert_eq!(db.token.as_ref().map(Secret::expose), Some("t"));
    assert_eq!(db.private_key_path, f.home.private_key("client"));
    let identity = keys::load_private(&db.private_key_path, "client").unwrap();
    let s = db.settings(identity, None);
    assert_eq!((s.pool_size, s.connect_timeout.as_secs()), (4, 10));
    assert_eq!(s.idle_timeout.as_secs(), 60);
    assert_eq!(pins(&s.router_keys), std::slice::from_ref(&f.router_key));
}

#[test]
fn plans_are_refused_while_anything_is_wrong() {
    let f = Fixture::new();
    let text = f.client_text("");
    let err = plan_tunnels(&f.sources(&text, &[("CONDUIT_ROUTER_PORT", "0")], &[])).unwrap_err();
    assert_eq!(
        f.lines(&err),
        ["error: router.port: 0 is out of range; use 1-65535 (env CONDUIT_ROUTER_PORT)"]
    );
}

/// `CONDUIT_LOG_LEVEL` belongs to the global flag, which takes tracing filters too: it
/// must neither set `logging.level` nor be reported.
#[test]
fn the_global_log_variables_are_left_to_their_flags() {
    let f = Fixture::new();
    let env = [
        ("CONDUIT_LOG_LEVEL", "conduit=debug"),
        ("CONDUIT_LOG_FORMAT", "json"),
    ];
    let l = load_client(&f.sources(&f.client_text(""), &env, &[])).unwrap();
    assert_eq!(f.lines(&l.report), Vec::<String>::new());
    assert_eq!(l.config.logging, LoggingConfig::default());
}

#[test]
fn optimize_for_and_the_buffer_sizes_reach_the_data_plane() {
    use conduit_dataplane::{MAX_READ_CHUNK, MIN_READ_CHUNK};
    let defaults = PerformanceConfig::default();
    let s = defaults.socket_options();
    assert_eq!(
        (s.recv_buffer, s.send_buffer, s.read_chunk),
        (None, None, MAX_READ_CHUNK)
    );
    assert_eq!(defaults.effective_pool_size(), 2);

    let latency = PerformanceConfig {
        optimize_for: OptimizeFor::Latency,
        read_buffer_size: 65536,
        write_buffer_size: 8192,
        ..PerformanceConfig::default()
    };
    let s = latency.socket_options();
    assert_eq!(
        (s.recv_buffer, s.send_buffer, s.read_chunk),
        (Some(65536), Some(8192), MIN_READ_CHUNK)
    );
    assert_eq!(MIN_READ_CHUNK, 16 * 1024 - 5);
    assert_eq!(latency.effective_pool_size(), LATENCY_POOL);
    let big_pool = PerformanceConfig {
        pool_size: 9,
        ..latency
    };
    assert_eq!(big_pool.effective_pool_size(), 9);

    let throughput = PerformanceConfig {
        optimize_for: OptimizeFor::Throughput,
        ..PerformanceConfig::default()
    };
    assert_eq!(throughput.socket_options().read_chunk, MAX_READ_CHUNK);
}

#[test]
fn auto_tune_derives_only_what_was_left_at_its_default() {
    let off = PerformanceConfig::default();
    assert_eq!(off.auto_tuned(Some(20_000), 2), (off.clone(), vec![]));

    let on = PerformanceConfig {
        auto_tune: true,
        ..PerformanceConfig::default()
    };
    let (tuned, said) = on.auto_tuned(Some(20_000), 2);
    assert_eq!(tuned.max_connections, (20_000 - RESERVED_FDS) / 2);
    assert_eq!(
        said,
        [
            "max_connections = 9872: the open-file limit 20000, less 256 for the process, at 2 \
          per connection"
        ]
    );
    assert_eq!(
        PerformanceConfig {
            max_connections: 0,
            ..tuned
        },
        on
    );
    let (plain, _) = on.auto_tuned(Some(20_000), 6);
    assert_eq!(plain.max_connections, 3290);
    // A tiny limit still lets one connection through.
    assert_eq!(on.auto_tuned(Some(100), 2).0.max_connections, 1);

    let (unlimited, said) = on.auto_tuned(Some(u64::MAX), 2);
    assert_eq!(unlimited.max_connections, 0);
    assert_eq!(
        said,
        ["max_connections stays unlimited: the open-file limit is unlimited"]
    );
    let (unknown, said) = on.auto_tuned(None, 2);
    assert_eq!(unknown.max_connections, 0);
    assert_eq!(
        said,
        ["max_connections stays unlimited: the open-file limit is unreadable"]
    );

    // What the operator set stays.
    let set = PerformanceConfig {
        max_connections: 500,
        ..on
    };
    assert_eq!(set.auto_tuned(Some(20_000), 2), (set.clone(), vec![]));
}

#[test]
fn fallback_routers_follow_the_router_in_the_plan() {
    let f = Fixture::new();
    let text = f.client_text("").replacen(
        "[[tunnels]]",
        "fallbacks = [\"10.2.0.3:9999\", \"[fd00::4]:9000\"]\n[[tunnels]]",
        1,
    );
    let plan = plan_tunnels(&f.sources(&text, &[], &[])).unwrap();
    assert_eq!(
        plan.tunnels[0].router,
        "10.2.0.1:9999,10.2.0.3:9999,[fd00::4]:9000"
    );
}

/// Each router's pinned keys, `|` between a router's keys.
fn pins(routers: &[Vec<PublicKey>]) -> Vec<String> {
    routers
        .iter()
        .map(|keys| {
            let keys: Vec<String> = keys.iter().map(ToString::to_string).collect();
            keys.join("|")
        })
        .collect()
}

#[test]
fn fallback_keys_give_each_router_its_own_keys_in_the_plan() {
    let f = Fixture::new();
    let new_key = || KeyPair::generate().unwrap().public();
    let (old, b, c, c_next) = (new_key(), new_key(), new_key(), new_key());
    // Relative paths resolve against the file's directory, as a single path does;
    // every key in a file is pinned.
    std::fs::write(f.path("old.pub"), format!("{old} router-old\n")).unwrap();
    std::fs::write(
        f.path("c.pub"),
        format!("# router c, and its next key\n{c} router-c\n{c_next} router-c-next\n"),
    )
    .unwrap();
    let text = f
        .client_text("")
        .replacen(
            &format!("public_key = \"{}\"", f.router_key),
            &format!("public_key = \"{}|old.pub\"", f.router_key),
            1,
        )
        .replacen(
            "[[tunnels]]",
            &format!(
                "fallbacks = [\"10.2.0.3:9999\", \"10.2.0.4:9999\"]\nfallback_keys = [\"{b}|old.pub\", \
                 \"c.pub\"]\n[[tunnels]]"
            ),
            1,
        );
    let plan = plan_tunnels(&f.sources(&text, &[], &[])).unwrap();
    assert_eq!(
        pins(&plan.tunnels[0].router_keys),
        [
            format!("{}|{old}", f.router_key),
            format!("{b}|{old}"),
            format!("{c}|{c_next}")
        ]
    );
    assert_eq!(
        plan.tunnels[0].router,
        "10.2.0.1:9999,10.2.0.3:9999,10.2.0.4:9999"
    );
}

#[test]
fn cipher_suites_reach_the_plan_and_bad_names_are_named() {
    use conduit_proto::tls::{Suite, Suites};
    let f = Fixture::new();
    let text = f.client_text(
        "[security]\ncipher_suites = [\"TLS_CHACHA20_POLY1305_SHA256\", \"tls_aes_256_gcm_sha384\"]\n",
    );
    let plan = plan_tunnels(&f.sources(&text, &[], &[])).unwrap();
    assert_eq!(
        plan.tunnels[0].suites.list(),
        [Suite::Chacha20Poly1305, Suite::Aes256Gcm]
    );
    let default = plan_tunnels(&f.sources(&f.client_text(""), &[], &[])).unwrap();
    assert_eq!(default.tunnels[0].suites, Suites::all());
    // A changed choice restarts the tunnel on `up`; the default keeps old digests.
    assert_ne!(plan.tunnels[0].digest(), default.tunnels[0].digest());

    let env = [("CONDUIT_SECURITY_CIPHER_SUITES", "TLS_AES_256_GCM_SHA384")];
    let plan = plan_tunnels(&f.sources(&text, &env, &[])).unwrap();
    assert_eq!(plan.tunnels[0].suites.list(), [Suite::Aes256Gcm]);

    let bad = f.client_text("[security]\ncipher_suites = [\"TLS_AES_128_GCM_SHA256\", \"RC4\"]\n");
    assert_eq!(
        f.client(&bad),
        [
            "error: security.cipher_suites[1]: unknown cipher suite \"RC4\": Conduit speaks \
          TLS 1.3 only, with TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384 and \
          TLS_CHACHA20_POLY1305_SHA256 (conduit.toml:10)"
                .replace(
                    "conduit.toml",
                    &f.path("conduit.toml").display().to_string()
                )
                .replace(&f.dir.path().display().to_string(), "$DIR")
        ]
    );
    let empty = f.client_text("[security]\ncipher_suites = []\n");
    assert_eq!(
        f.client(&empty),
        [
            "error: security.cipher_suites: no cipher suite named; leave cipher_suites out to \
          allow every suite, or name one or more of TLS_AES_128_GCM_SHA256,\
          TLS_AES_256_GCM_SHA384,TLS_CHACHA20_POLY1305_SHA256 (conduit.toml:10)"
                .replace(
                    "conduit.toml",
                    &f.path("conduit.toml").display().to_string()
                )
                .replace(&f.dir.path().display().to_string(), "$DIR")
        ]
    );
}

/// A router's setting in the shared `[performance]` section does not change a
/// tunnel's digest (`up` restarts nothing for it); a tunnel's own does.
#[test]
fn only_what_a_tunnel_uses_changes_its_digest() {
    let f = Fixture::new();
    let digest = |extra: &str| {
        let plan = plan_tunnels(&f.sources(&f.client_text(extra), &[], &[])).unwrap();
        plan.tunnels[0].digest()
    };
    let default = digest("");
    assert_eq!(
        digest("[performance]\nmax_pending_handshakes = 10\n"),
        default
    );
    assert_ne!(digest("[performance]\npool_size = 3\n"), default);
    // A setting added later changes a digest only when set away from its default:
    // tunnels started before it stay as they are on `up`.
    assert_eq!(
        digest("[performance]\nstream_idle_timeout_secs = 0\n"),
        default
    );
    assert_ne!(
        digest("[performance]\nstream_idle_timeout_secs = 3600\n"),
        default
    );
    assert_eq!(
        super::plan::performance_text(&PerformanceConfig::default()),
        "PerformanceConfig { workers: 0, io_engine: Auto, pin_cores: false, pool_size: 2, \
         auto_tune: false, optimize_for: Balanced, tcp_nodelay: true, kernel_tls: true, \
         tcp_keepalive_secs: 60, read_buffer_size: 0, write_buffer_size: 0, \
         default_bandwidth_limit: 0, burst_bandwidth_limit: 0, max_connections: 0, \
         connect_timeout_secs: 10, handshake_timeout_secs: 10, max_pending_handshakes: 1024, \
         idle_timeout_secs: 300, drain_timeout_secs: 30, heartbeat_interval_secs: 5, \
         udp_idle_timeout_secs: 60, udp_max_new_flows: 0 }",
        "what digests were made of before stream_idle_timeout_secs"
    );
    // A setting for the other protocol's tunnels is not this one's.
    let udp = |extra: &str| digest(&format!("protocol = \"udp\"\n{extra}"));
    let udp_default = udp("");
    for tcp_only in ["stream_idle_timeout_secs = 3600", "kernel_tls = false"] {
        let set = format!("[performance]\n{tcp_only}\n");
        assert_eq!(udp(&set), udp_default, "{tcp_only}");
        assert_ne!(digest(&set), default, "{tcp_only}");
    }
    for udp_only in ["udp_idle_timeout_secs = 8", "udp_max_new_flows = 100"] {
        let set = format!("[performance]\n{udp_only}\n");
        assert_eq!(digest(&set), default, "{udp_only}");
        assert_ne!(udp(&set), udp_default, "{udp_only}");
    }
    // The log's level and format are the tunnel's too.
    assert_eq!(digest("[logging]\nlevel = \"info\"\n"), default);
    assert_ne!(digest("[logging]\nlevel = \"debug\"\n"), default);
    assert_ne!(digest("[logging]\nformat = \"json\"\n"), default);
}

/// `up` names what changed: each setting the digest takes has a digest of its own,
/// and a change of the whole digest shows in at least one of them.
#[test]
fn up_can_name_each_setting_that_changed() {
    let f = Fixture::new();
    let plan = |extra: &str, sets: &[&str]| {
        let sources = f.sources(&f.client_text(extra), &[], sets);
        plan_tunnels(&sources).unwrap().tunnels.remove(0)
    };
    let base = plan("", &[]);
    let before = base.setting_digests();
    assert_eq!(base.changed_from(&before), Some(vec![]));
    assert_eq!(
        base.changed_from(&Default::default()),
        None,
        "an entry that kept none"
    );
    let changes: [(&str, &[&str], &[&str]); 10] = [
        (
            "[performance]\npool_size = 3\n",
            &[],
            &["performance.pool_size"],
        ),
        (
            "[performance]\nstream_idle_timeout_secs = 60\nkernel_tls = false\n",
            &[],
            &[
                "performance.kernel_tls",
                "performance.stream_idle_timeout_secs",
            ],
        ),
        ("[logging]\nformat = \"json\"\n", &[], &["logging.format"]),
        ("", &["router.port=7001"], &["router.port"]),
        (
            "[alerts]\nwebhook = \"https://hooks.example/a\"\nretries = 5\n",
            &[],
            &["alerts"],
        ),
        (
            "[security]\ncipher_suites = [\"TLS_AES_256_GCM_SHA384\"]\n",
            &[],
            &["security.cipher_suites"],
        ),
        // A secret's change is not named (its digest is not kept).
        ("", &["security.token=another-token"], &[]),
        // Nor what alerts would take while none goes out.
        ("[alerts]\nretries = 5\n", &[], &[]),
        // Switching protocols names the protocol, not the settings that come into
        // use or go out of it.
        (
            "protocol = \"udp\"\n[performance]\nudp_idle_timeout_secs = 30\n",
            &[],
            &["protocol"],
        ),
        // A router's setting in the shared section is not the tunnel's.
        ("[performance]\nmax_pending_handshakes = 10\n", &[], &[]),
    ];
    let secret = ["security.token=another-token"];
    for (extra, sets, want) in changes {
        let now = plan(extra, sets);
        assert_eq!(now.changed_from(&before).unwrap(), want, "{extra} {sets:?}");
        let restarts = !want.is_empty() || sets == secret;
        assert_eq!(now.digest() != base.digest(), restarts, "{extra}");
    }
    // A fallback's key is its own setting, not the router's key.
    let key = format!("router.fallback_keys={}", f.router_key);
    let fallback = plan("", &["router.fallbacks=10.2.0.9:7000", &key]);
    assert_eq!(
        fallback.changed_from(&before).unwrap(),
        ["router.fallback_keys", "router.fallbacks"]
    );
    // While alerts go out, each of their settings is named.
    let hook = "[alerts]\nwebhook = \"https://hooks.example/a\"\n";
    let alerting = plan(hook, &[]).setting_digests();
    let retried = plan(&format!("{hook}retries = 5\n"), &[]);
    assert_eq!(retried.changed_from(&alerting).unwrap(), ["alerts.retries"]);
    let text = f.client_text("").replace("10.2.0.2:8080", "10.2.0.3:80");
    let moved = plan_tunnels(&f.sources(&text, &[], &[]))
        .unwrap()
        .tunnels
        .remove(0);
    assert_eq!(moved.changed_from(&before).unwrap(), ["source"]);
    // No digest of a secret is kept.
    let with_token = plan("", &["security.token=s3cret-token-value"]);
    assert_eq!(with_token.setting_digests(), before);
}

/// A path in the file written two ways is one path: `up` restarts nothing for it.
#[test]
fn a_path_written_two_ways_in_the_file_is_one_path() {
    let f = Fixture::new();
    let plan = |key: &str| {
        let text = f.client_text(&format!("[security]\nprivate_key_path = \"{key}\"\n"));
        plan_tunnels(&f.sources(&text, &[], &[]))
            .unwrap()
            .tunnels
            .remove(0)
    };
    let plain = plan("home/keys/client.key");
    assert_eq!(plain.private_key_path, f.path("home/keys/client.key"));
    let abs = f.path("home/keys/client.key").display().to_string();
    for other in [
        "./home/keys/client.key",
        "home/./keys/client.key",
        "home//keys/client.key",
        &abs,
    ] {
        let p = plan(other);
        assert_eq!(p.private_key_path, plain.private_key_path, "{other}");
        assert_eq!(p.digest(), plain.digest(), "{other}");
    }
}

/// A problem quoting a huge value is shown cut in its middle, whole at both ends.
#[test]
fn a_problem_with_a_huge_message_is_cut_in_the_middle() {
    let f = Fixture::new();
    let host = "é".repeat(50_000);
    let text = f
        .client_text("")
        .replacen("host = \"10.2.0.1\"", &format!("host = \"{host}\""), 1);
    let err = plan_tunnels(&f.sources(&text, &[], &[])).unwrap_err();
    let line = err
        .problems
        .iter()
        .find(|p| p.path == "router.host")
        .map(ToString::to_string)
        .unwrap();
    assert!(line.len() < 1200, "{} bytes", line.len());
    assert!(line.starts_with("router.host: "), "{line}");
    assert!(line.contains(" bytes left out) …"), "{line}");
    assert!(line.ends_with("/conduit.toml:2)"), "{line}");
}

/// `CONDUIT_ROUTER` is `start --router`'s: a file's router is host and port, and
/// the variable left over from a `start` setup is named as ignored.
#[test]
fn start_s_router_variable_is_named_as_ignored_by_a_file() {
    let f = Fixture::new();
    let env = [("CONDUIT_ROUTER", "10.9.9.9:9999")];
    let l = load_client(&f.sources(&f.client_text(""), &env, &[])).unwrap();
    assert_eq!(
        f.lines(&l.report),
        [
            "warning: router: CONDUIT_ROUTER is `conduit start --router`'s and is ignored here: \
             a file's router is router.host and router.port (CONDUIT_ROUTER_HOST, \
             CONDUIT_ROUTER_PORT)"
        ]
    );
    assert_eq!(l.config.router.host.as_deref(), Some("10.2.0.1"));
}

/// An IPv4-mapped `allow_from` entry stands for the IPv4 block it maps: users are
/// checked by their IPv4 address, so it would otherwise match nobody.
#[test]
fn mapped_allow_from_entries_are_their_ipv4_blocks() {
    let net = |s: &str| super::allow_from_net(s).unwrap().to_string();
    assert_eq!(net("::ffff:127.0.0.1"), "127.0.0.1/32");
    assert_eq!(net("[::ffff:10.1.2.3]"), "10.1.2.3/32");
    assert_eq!(net("::ffff:10.0.0.0/104"), "10.0.0.0/8");
    assert_eq!(net("::ffff:0.0.0.0/96"), "0.0.0.0/0");
    // A wider block reaches beyond the mapped addresses: kept as it is.
    assert_eq!(net("::/64"), "::/64");
    // A host's address with a block's length is refused, not widened.
    assert_eq!(
        super::allow_from_net("192.0.2.7/8"),
        Err(
            "192.0.2.7/8 has bits set past its /8: write 192.0.0.0/8 for the whole block, \
             or 192.0.2.7 for that host alone"
                .to_owned()
        )
    );
    assert_eq!(net("2001:db8::1"), "2001:db8::1/128");
}
