//! `conduit router`: flags, `CONDUIT_<SECTION>_<KEY>` variables and the optional
//! configuration file (`--config`) are resolved in one place (the controlplane's
//! `config`), checked as a whole, then run.

use std::sync::Arc;

use anyhow::{Result, anyhow};
use conduit_controlplane::config::{
    self, Env, Origin, Override, Problem, Role, RouterConfig, Severity, Sources,
};
use conduit_controlplane::stop::StopSignals;
use conduit_controlplane::{
    AllowList, Error, Home, Router, RouterSettings, RulesGiven, Transport, keys,
};
use conduit_proto::tls::AuthorizedClients;
use conduit_proto::{KeyPair, PublicKey};
use tracing::{info, warn};

use super::config::plural;
use super::service::{self, Tunnel, absolute, log_flags};
use super::{runtime, start_logging};
use crate::args::{LogArgs, RouterArgs, ServiceKind, TransportArg};
use crate::exit::Usage;
use crate::output::announce;

pub(crate) fn run(home: &Home, a: RouterArgs, log: &LogArgs) -> Result<()> {
    super::service::check_files_as_service_user(&a.service);
    let overrides = overrides(&a);
    if let Some(e) = given_twice(&overrides) {
        return Err(Usage(e).into());
    }
    let sources = Sources {
        file: a.config.clone().unwrap_or_default(),
        file_flag: "--config",
        contents: None,
        env: Env::from_process(),
        overrides,
        home: home.clone(),
    };
    // A router that cannot start is logged where its logs would have gone, as far
    // as the flags and the file say where that is: an operator (or a collector)
    // reading the log sees why it stopped. Logging that cannot start leaves the
    // plain message on stderr.
    let loaded = match config::load_router(&sources) {
        Ok(l) => l,
        Err(report) => {
            let _ = start_logging(log, None);
            return Err(Usage(lines(&report.problems)).into());
        }
    };
    if loaded.report.has_errors() {
        if a.service.service_file.is_none() {
            // Not into a log file the configuration got wrong (a directory that is
            // not there would be made by trying).
            let file_wrong = (loaded.report.errors()).any(|p| p.path == "logging.file");
            let _ = start_logging(log, (!file_wrong).then_some(&loaded.config.logging));
        }
        let errors: Vec<Problem> = loaded.report.errors().cloned().collect();
        return Err(Usage(lines(&errors)).into());
    }
    if let Some(kind) = a.service.service_file {
        for p in loaded.report.warnings() {
            eprintln!("warning: {p}");
        }
        return service_file(home, &a, log, &loaded, kind);
    }
    start_logging(log, Some(&loaded.config.logging))?;
    super::prepare_process();
    for p in loaded.report.warnings() {
        warn!("{p}");
    }
    for (flag, given, instead) in [
        (
            "--token",
            a.token.is_some(),
            "CONDUIT_TOKEN or [router] token in --config",
        ),
        (
            "--api-token",
            a.api_token.is_some(),
            "CONDUIT_API_TOKEN or [api] token in --config",
        ),
        (
            "--alert-webhook",
            a.alert_webhook.is_some(),
            "CONDUIT_ALERTS_WEBHOOK or [alerts] webhook in --config",
        ),
        (
            "--alert-slack",
            a.alert_slack.is_some(),
            "CONDUIT_ALERTS_SLACK or [alerts] slack in --config",
        ),
    ] {
        if given {
            warn!(
                "{flag} puts a secret on the command line, where every user of this host can \
                 read it (`ps`); give it in {instead} instead"
            );
        }
    }
    super::warn_of_secrets_set(&a.set, "--config");
    // Where a refusal tells to add a missing allow rule.
    let given = match loaded.origins.get("router.allow") {
        Origin::File { .. } => RulesGiven::File,
        Origin::Env(var) => RulesGiven::Env(var.clone()),
        Origin::Cli(_) | Origin::Default => RulesGiven::Flags,
    };
    let c = loaded.config;
    let transport: Transport = c.router.transport.into();
    let settings = settings(&c, transport, given)?;
    let (key_path, auth_path) = (
        c.router.private_key_path.clone().unwrap_or_default(),
        c.router.authorized_keys.clone().unwrap_or_default(),
    );
    let drain = c.performance.drain_timeout();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(2));
    runtime(threads)?.block_on(async move {
        let router = Router::bind(settings).await?;
        // SIGINT and SIGTERM stop it; SIGHUP reads `authorized_clients` again.
        let signals = StopSignals::listen(false);
        match transport {
            Transport::Plain => info!("router up"),
            Transport::Tls => info!(
                key = %key_path.display(),
                clients = %auth_path.display(),
                "router up"
            ),
        }
        let plain = if transport == Transport::Plain {
            ", plain transport"
        } else {
            ""
        };
        announce(format_args!(
            "router listening on {} ({}, {}{plain})",
            router.local_addr(),
            plural(router.workers(), "worker"),
            router.engine()
        ));
        if let Some(api) = router.api_addr() {
            announce(format_args!("api listening on {api}"));
        }
        router.run(signals, drain).await?;
        Ok::<_, anyhow::Error>(())
    })
}

/// The flags that were given, as configuration overrides.
fn overrides(a: &RouterArgs) -> Vec<Override> {
    let mut o = Vec::new();
    let path = |p: &std::path::Path| p.display().to_string();
    let mut put = |flag: &str, key: &str, value: Option<String>| {
        if let Some(v) = value {
            o.push(Override::flag(flag, key, v));
        }
    };
    put("--bind", "router.bind", a.bind.clone());
    put(
        "--key",
        "router.private_key_path",
        a.key.as_deref().map(path),
    );
    put(
        "--next-key",
        "router.next_private_key_path",
        a.next_key.as_deref().map(path),
    );
    put(
        "--authorized-keys",
        "router.authorized_keys",
        a.authorized_keys.as_deref().map(path),
    );
    put(
        "--allow",
        "router.allow",
        (!a.allow.is_empty()).then(|| a.allow.join(",")),
    );
    put(
        "--token",
        "router.token",
        a.token.as_ref().map(|t| t.expose().to_owned()),
    );
    put(
        "--cipher-suites",
        "router.cipher_suites",
        a.cipher_suites.as_ref().map(ToString::to_string),
    );
    put(
        "--transport",
        "router.transport",
        a.transport.map(|t| {
            match t {
                TransportArg::Tls => "tls",
                TransportArg::Plain => "plain",
            }
            .to_owned()
        }),
    );
    put(
        "--drain-timeout",
        "performance.drain_timeout_secs",
        a.drain_timeout.map(|n| n.to_string()),
    );
    put(
        "--handshake-timeout",
        "performance.handshake_timeout_secs",
        a.handshake_timeout.map(|n| n.to_string()),
    );
    put(
        "--max-connections",
        "performance.max_connections",
        a.max_connections.map(|n| n.to_string()),
    );
    put(
        "--workers",
        "performance.workers",
        a.workers.map(|n| n.to_string()),
    );
    put("--io-engine", "performance.io_engine", a.io_engine.clone());
    put(
        "--pin-cores",
        "performance.pin_cores",
        a.pin_cores.map(|b| b.to_string()),
    );
    put(
        "--kernel-tls",
        "performance.kernel_tls",
        a.kernel_tls.map(|b| b.to_string()),
    );
    put("--api", "api.enabled", a.api.then(|| "true".into()));
    if a.api_bind.is_some() {
        put("--api-bind", "api.enabled", Some("true".into()));
    }
    put("--api-bind", "api.bind", a.api_bind.clone());
    put(
        "--api-token",
        "api.token",
        a.api_token.as_ref().map(|t| t.expose().to_owned()),
    );
    put(
        "--api-no-auth",
        "api.auth",
        a.api_no_auth.then(|| "false".into()),
    );
    put(
        "--alert-webhook",
        "alerts.webhook",
        a.alert_webhook.as_ref().map(|t| t.expose().to_owned()),
    );
    put(
        "--alert-slack",
        "alerts.slack",
        a.alert_slack.as_ref().map(|t| t.expose().to_owned()),
    );
    o.extend(a.set.iter().cloned());
    o
}

/// A key set both by one of the router's flags and by `--set`: which one was meant
/// is not for the router to guess.
fn given_twice(o: &[Override]) -> Option<String> {
    let (sets, flags): (Vec<&Override>, Vec<&Override>) =
        o.iter().partition(|x| x.flag.starts_with("--set "));
    sets.iter().find_map(|s| {
        let f = flags.iter().find(|f| f.key == s.key)?;
        Some(format!(
            "{} is given twice, by {} and by {}: give it once",
            s.key, f.flag, s.flag
        ))
    })
}

fn settings(c: &RouterConfig, transport: Transport, given: RulesGiven) -> Result<RouterSettings> {
    let r = &c.router;
    let bind = r
        .bind
        .parse()
        .map_err(|_| Usage(format!("invalid router.bind {:?}", r.bind)))?;
    let key_path = r.private_key_path.clone().unwrap_or_default();
    let (identity, key_file) = match transport {
        Transport::Tls => (keys::load_private(&key_path, "router")?, true),
        // The plain transport presents no key: a key file is checked only if there is
        // one, and a key made for this run (never written, never sent) fills in.
        Transport::Plain => match keys::load_private_if_present(&key_path, "router")? {
            Some(pair) => (pair, true),
            None => (
                KeyPair::generate().map_err(|e| anyhow!("cannot make a key: {e}"))?,
                false,
            ),
        },
    };
    let next_key = match &r.next_private_key_path {
        Some(p) => {
            let next = keys::load_private(p, "router-next")?.public();
            if next == identity.public() {
                return Err(Usage(format!(
                    "router.next_private_key_path: {}",
                    config::next_key_is_the_current_one(p, &next)
                ))
                .into());
            }
            info!(%next, "naming the next router key to tunnels: they accept it from now on, so the router can switch to it (--key) without an outage");
            Some(next)
        }
        None => None,
    };
    let auth_path = r.authorized_keys.clone().unwrap_or_default();
    let authorized = match keys::load_authorized_file(&auth_path) {
        // Not read on the plain transport, which checks no client keys.
        Err(_) if transport == Transport::Plain && !auth_path.exists() => {
            keys::AuthorizedFile::default()
        }
        other => other?,
    };
    for (key, when) in &authorized.expires {
        let name = authorized.names.get(key).cloned().unwrap_or_default();
        let at = humantime::format_rfc3339_seconds(*when);
        if *when <= std::time::SystemTime::now() {
            warn!(client = %key, %name, "client key expired at {at} (expires= in authorized_clients): it is refused");
        } else {
            info!(client = %key, %name, "client key admitted until {at} (expires= in authorized_clients)");
        }
    }
    let policy = AllowList::parse(&r.allow)
        .map_err(|errs| Error::Config(errs.join("\n")))?
        .given_in(given);
    let names: Vec<(PublicKey, String)> = authorized
        .names
        .iter()
        .map(|(k, n)| (*k, n.clone()))
        .collect();
    for unnamed in conduit_controlplane::authorized::unnamed_rules(&policy, &names, &auth_path) {
        warn!("{unnamed}");
    }
    let api = c.api_settings().map_err(Usage)?;
    if let Some(a) = &api
        && a.token.is_none()
    {
        warn!(
            "the API on {} answers without a token (--api-no-auth, api.auth = false): anyone on this machine can read it",
            a.bind
        );
    }
    if transport == Transport::Plain {
        if r.token.is_none() {
            warn!(
                "--transport plain without --token: anyone who can reach {bind} may open the allowed \
                 sources; use it only on a network that is already protected"
            );
        } else {
            warn!("--transport plain: traffic is not encrypted and client keys are not checked");
        }
    }
    let p = &super::auto_tune(&c.performance, transport == Transport::Plain);
    Ok(RouterSettings {
        bind,
        identity,
        authorized: Arc::new(AuthorizedClients::with_expiry(
            authorized.names,
            authorized.expires,
        )),
        authorized_path: (transport == Transport::Tls || auth_path.exists()).then_some(auth_path),
        policy,
        token: r.token.clone(),
        transport,
        suites: conduit_controlplane::config::suites(&r.cipher_suites).map_err(Usage)?,
        handshake_timeout: p.handshake_timeout(),
        max_pending_handshakes: p.max_pending_handshakes,
        connect_timeout: p.connect_timeout(),
        idle_timeout: p.idle_timeout(),
        stream_idle: p.stream_idle(),
        max_connections: usize::try_from(p.max_connections).unwrap_or(usize::MAX),
        sockets: p.socket_options(),
        bandwidth: conduit_dataplane::ratelimit::Limit::from_config(
            p.default_bandwidth_limit,
            p.burst_bandwidth_limit,
        ),
        dataplane: p.dataplane_options(),
        api,
        health: c.health_settings(),
        alerts: c.alert_settings(),
        key_grace: std::time::Duration::from_secs(r.key_grace_secs),
        // By hand (a next key given) or by the router: one or the other.
        key_rotation: (next_key.is_none() && key_file).then(|| {
            conduit_controlplane::router_key::KeyRotation {
                path: key_path.clone(),
                every: conduit_controlplane::client::days(r.key_rotation_days),
                announce: std::time::Duration::from_secs(r.key_announce_secs),
                retire: std::time::Duration::from_secs(r.key_retire_secs),
            }
        }),
        next_key,
    })
}

/// `--service-file`: a service that runs this router as configured here: the
/// configuration file's absolute path, and each flag as `--set SECTION.KEY=VALUE`
/// (paths made absolute). Secrets, and settings taken from the environment, stay out
/// of the file: the user is told to put them in the service's environment file.
fn service_file(
    home: &Home,
    a: &RouterArgs,
    log: &LogArgs,
    loaded: &config::Loaded<RouterConfig>,
    kind: ServiceKind,
) -> Result<()> {
    let mut args = vec!["router".to_owned()];
    if let Some(file) = &a.config {
        args.extend(["--config".to_owned(), absolute(file)?.display().to_string()]);
    }
    // `--transport` is one of the overrides below (`--set router.transport=…`).
    let mut env = Vec::new();
    for o in overrides(a) {
        let Some(s) = config::setting(Role::Router, &o.key) else {
            return Err(Usage(format!("{}: no such setting {}", o.flag, o.key)).into());
        };
        if s.secret {
            env.push(s.env);
            continue;
        }
        let value = o.value_from_working_dir(Role::Router).map_err(Usage)?;
        args.extend(["--set".to_owned(), format!("{}={value}", o.key)]);
    }
    for var in loaded.origins.env_vars() {
        if !env.contains(&var) {
            env.push(var);
        }
    }
    args.extend(log_flags(log));
    let c = &loaded.config;
    let port = |addr: &str| addr.parse::<std::net::SocketAddr>().map_or(0, |a| a.port());
    let api_port = if c.api.enabled { port(&c.api.bind) } else { 0 };
    // What the router writes besides CONDUIT_HOME: KEY.next and KEY.old beside its
    // key, the clients file when a client rotates its key, the history, the log.
    let writes = [
        c.router.private_key_path.clone(),
        c.router.authorized_keys.clone(),
        c.api.history_file.clone(),
        log.log_file.clone().or_else(|| c.logging.file.clone()),
    ]
    .into_iter()
    .flatten()
    .collect();
    service::emit(
        home,
        &a.service,
        kind,
        Tunnel {
            name: "router",
            description: format!("Conduit router on {}", c.router.bind),
            args,
            privileged_port: [port(&c.router.bind), api_port]
                .iter()
                .any(|p| (1..1024).contains(p)),
            env_vars: env,
            writes,
            reads: Vec::new(),
            drain: c.performance.drain_timeout(),
        },
    )
}

/// The problems, one a line, as `config validate` prints them.
fn lines(problems: &[Problem]) -> String {
    let v: Vec<String> = problems
        .iter()
        .map(|p| match p.severity {
            Severity::Error => p.to_string(),
            Severity::Warning => format!("warning: {p}"),
        })
        .collect();
    v.join("\n")
}
