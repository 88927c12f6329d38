//! `conduit start`: a tunnel, in the background (a detached, registered process) or
//! in this terminal with `--foreground`.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use conduit_controlplane::alerts::tunnel::TunnelAlerts;
use conduit_controlplane::config::{
    AlertsConfig, OptimizeFor, PerformanceConfig, STREAM_IDLE_TIMEOUT_SECS,
};
use conduit_controlplane::process::{NameClaim, RegisteredTunnel, Registration, claim_name};
use conduit_controlplane::spawn::{Launch, Launched, Standing, first_round_line, launch};
use conduit_controlplane::stop::StopSignals;
use conduit_controlplane::{ClientTunnel, Home, LinkStatus, TunnelSettings, keys};
use conduit_dataplane::Engine;
use conduit_proto::Secret;

use super::config::plural;
use super::service::{self, Tunnel, absolute, log_flags};
use super::{dataplane_options, listen_addr, runtime, say, secs, source_list};
use crate::args::{LogArgs, OptimizeArg, ProtocolArg, ServiceKind, StartArgs, TransportArg};
use crate::exit::Usage;
use crate::output::announce;

pub(crate) fn run(home: &Home, a: StartArgs, log: &LogArgs) -> Result<()> {
    super::service::check_files_as_service_user(&a.service);
    // The name names files (logs/NAME.log, run/NAME.lock): the rule `config validate`
    // applies to a file's tunnels.
    if let Some(n) = &a.name {
        conduit_controlplane::config::tunnel_name(n).map_err(|e| Usage(format!("--name {e}")))?;
    }
    // Before a service file too: it must not hold a tunnel that cannot start.
    if a.protocol == ProtocolArg::Udp
        && a.proxy_protocol.map(conduit_dataplane::ProxyProtocol::from)
            == Some(conduit_dataplane::ProxyProtocol::V1)
    {
        return Err(Usage(
            "--proxy-protocol v1 has no form for UDP: a UDP tunnel sends v2's before each \
             datagram; use --proxy-protocol v2"
                .into(),
        )
        .into());
    }
    // A UDP setting on a TCP tunnel: most likely `--protocol udp` was forgotten.
    if a.protocol == ProtocolArg::Tcp {
        let given = [
            ("--udp-idle-timeout", a.udp_idle_timeout != 60),
            ("--udp-max-new-flows", a.udp_max_new_flows != 0),
        ];
        if let Some((flag, _)) = given.iter().find(|(_, set)| *set) {
            return Err(Usage(format!(
                "{flag} applies to UDP tunnels only: add --protocol udp, or leave it out"
            ))
            .into());
        }
    }
    // A UDP tunnel's flows end by --udp-idle-timeout.
    if a.protocol == ProtocolArg::Udp && a.stream_idle_timeout != STREAM_IDLE_TIMEOUT_SECS {
        return Err(Usage(
            "--stream-idle-timeout applies to TCP tunnels only (a UDP flow ends after \
             --udp-idle-timeout): leave it out"
                .into(),
        )
        .into());
    }
    alert_urls(&a)?;
    if a.alert_after != 10 && a.alert_webhook.is_none() && a.alert_slack.is_none() {
        return Err(Usage(
            "--alert-after applies to the alerts a tunnel sends: add --alert-webhook URL or \
             --alert-slack URL, or leave it out"
                .into(),
        )
        .into());
    }
    if let Some(why) =
        (a.token.as_ref()).and_then(|t| conduit_controlplane::config::token_problem(t.expose()))
    {
        return Err(Usage(format!("--token (or CONDUIT_TOKEN): {why}")).into());
    }
    if let Some(w) = conduit_controlplane::config::small_burst(a.burst_limit, a.bandwidth_limit) {
        match a.burst_limit {
            0 => tracing::warn!("--bandwidth-limit {w} (--burst-limit)"),
            _ => tracing::warn!("--burst-limit {w}"),
        }
    }
    if let Some(kind) = a.service.service_file {
        return service_file(home, &a, log, kind);
    }
    // A tunnel in the foreground keeps its command line for as long as it runs (a
    // background one gets its secrets through its environment).
    if a.foreground && !a.detached {
        for (flag, var) in secret_flags_given(std::env::args()) {
            tracing::warn!(
                "{flag} puts a secret on the command line, where every user of this host can \
                 read it (`ps`); give it in {var} instead"
            );
        }
    }
    let bind = listen_addr("--bind", &a.bind)?;
    let router = source_list("--router", &a.router)?;
    let source = source_list("--source", &a.source)?;
    let (router_keys, router_key_specs) = pins(&a, &router)?;
    let plain = a.transport == TransportArg::Plain;
    let (identity, key_path) = match &a.key {
        // Given, it is used (and checked) on either transport.
        Some(key) => (keys::load_private(key, "client")?, Some(key.clone())),
        None => keys::client_identity(&home.private_key("client"), plain)?,
    };
    let name = tunnel_name(&a, bind);
    let metrics_bind = match &a.metrics_bind {
        Some(m) => Some(listen_addr("--metrics-bind", m)?),
        None => None,
    };
    // Held until this function returns: for a background start, by the child.
    let claim = claim_name(home, &name)?;
    if !a.foreground {
        return background(home, &name, secrets(&a), claim, log);
    }
    let performance = PerformanceConfig {
        optimize_for: a.optimize_for.into(),
        pool_size: a.pool_size,
        read_buffer_size: a.read_buffer_size,
        write_buffer_size: a.write_buffer_size,
        kernel_tls: a.kernel_tls,
        ..PerformanceConfig::default()
    };
    let alerts = tunnel_alerts(&a, &name);
    let settings = TunnelSettings {
        name: name.clone(),
        router: router.clone(),
        router_keys,
        router_key_specs,
        known_routers: Some(home.known_routers()),
        identity,
        source: source.clone(),
        bind,
        token: a.token,
        transport: a.transport.into(),
        suites: a.cipher_suites.clone().unwrap_or_default(),
        pool_size: performance.effective_pool_size(),
        connect_timeout: secs(a.connect_timeout),
        handshake_timeout: secs(a.handshake_timeout),
        max_connections: a.max_connections,
        bandwidth: conduit_dataplane::ratelimit::Limit::from_config(
            a.bandwidth_limit,
            a.burst_limit,
        ),
        sockets: performance.socket_options(),
        dataplane: dataplane_options(&a.engine),
        heartbeat: secs(a.heartbeat_interval),
        idle_timeout: performance.idle_timeout(),
        stream_idle: conduit_dataplane::StreamIdle::from_secs(a.stream_idle_timeout),
        key_path,
        key_rotation: conduit_controlplane::client::days(a.key_rotation_days),
        failback: conduit_controlplane::client::secs(a.router_failback),
        standby_check: conduit_controlplane::client::secs(a.standby_check),
        balance: a.router_balance,
        udp: (a.protocol == ProtocolArg::Udp).then(|| conduit_dataplane::UdpSpec {
            idle_timeout: secs(a.udp_idle_timeout),
            max_new_flows: a.udp_max_new_flows,
        }),
        proxy_protocol: a.proxy_protocol.map(Into::into),
        allow_from: a.allow_from.clone(),
        alerts: Some(alerts),
    };
    let log_file = (a.detached || log.log_file.is_some()).then(|| background_log(home, &name, log));
    if let Some(file) = log_file.as_deref().filter(|_| !a.detached) {
        // A foreground tunnel's own --log-file: `logs NAME` reads it while it runs
        // and after it stopped.
        conduit_controlplane::spawn::point_to_log(home, &name, Some(file));
    }
    let registration = Registration {
        home: home.clone(),
        name: name.clone(),
        router,
        source,
        file: None,
        digest: String::new(),
        settings: Default::default(),
        log_file,
        drain: secs(a.drain_timeout),
        metrics_bind,
        supervisor: None,
    };
    foreground(settings, registration, a.detached)
}

/// Runs one tunnel in this process, registered, until a signal, a `Shutdown`
/// request or a fatal refusal. Prints the lines a launching parent waits for.
pub(crate) fn foreground(
    settings: TunnelSettings,
    registration: Registration,
    detached: bool,
) -> Result<()> {
    let name = registration.name.clone();
    super::prepare_process();
    runtime(1)?.block_on(async move {
        if detached {
            ignore_hangups();
        }
        let tunnel = ClientTunnel::start(settings)?;
        let addr =
            conduit_controlplane::registry::shown_bind(tunnel.local_addr(), tunnel.protocol());
        let (workers, engine) = (tunnel.workers(), tunnel.engine());
        let status = tunnel.status();
        let first_round = tunnel.first_round();
        let process = RegisteredTunnel::register(tunnel, registration).await?;
        // In a terminal, the terminal closing (SIGHUP) stops the tunnel as SIGTERM
        // does: drained, with a goodbye to its router, its files removed.
        let signals = StopSignals::listen(!detached);
        announce(format_args!(
            "tunnel {name:?} listening on {addr} (id {}, {}, {engine})",
            process.id(),
            plural(workers, "worker")
        ));
        if detached {
            // For the launching `start` (or `up`): how long to wait for the line
            // that follows, "connected" or "retrying".
            announce(first_round_line(&name, first_round));
        }
        if let Some(m) = process.metrics_addr() {
            announce(format_args!(
                "tunnel {name:?} serves metrics at http://{m}/metrics"
            ));
        }
        let announcer = tokio::spawn(announce_link(name, status));
        let res = process.run(signals).await;
        announcer.abort();
        res.map_err(anyhow::Error::from)
    })
}

/// Prints "connected", and the first "retrying", as the link changes.
async fn announce_link(name: String, mut status: tokio::sync::watch::Receiver<LinkStatus>) {
    let mut said_retrying = false;
    loop {
        let now = status.borrow_and_update().clone();
        match now {
            // Balancing, `router` names every router whose link is up.
            LinkStatus::Connected { router, .. } if router.contains(", ") => {
                announce(format_args!(
                    "tunnel {name:?} connected to routers {router}"
                ));
                said_retrying = false;
            }
            LinkStatus::Connected { router, .. } => {
                announce(format_args!("tunnel {name:?} connected to router {router}"));
                said_retrying = false;
            }
            LinkStatus::Retrying { error, .. } if !said_retrying => {
                announce(format_args!(
                    "tunnel {name:?}: {error}; retrying in the background (`conduit status` shows progress)"
                ));
                said_retrying = true;
            }
            _ => {}
        }
        if status.changed().await.is_err() {
            return;
        }
    }
}

/// A background tunnel ignores SIGHUP: closing the terminal must not stop it.
fn ignore_hangups() {
    #[cfg(unix)]
    if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        tokio::spawn(async move { while hup.recv().await.is_some() {} });
    }
}

/// Relaunches this command as a detached `--foreground --detached` process.
fn background(
    home: &Home,
    name: &str,
    secrets: Vec<(String, Secret)>,
    claim: NameClaim,
    log: &LogArgs,
) -> Result<()> {
    // The child inherits this working directory, so relative paths keep their meaning.
    // The token and the alert URLs travel in the child's environment, not on its
    // command line.
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    for (flag, _) in SECRET_FLAGS {
        args = without_flag(args, flag);
    }
    let pos = args.iter().position(|a| a == "start").map_or(0, |p| p + 1);
    args.insert(pos, "--foreground".into());
    args.insert(pos + 1, "--detached".into());
    let log_file = log
        .log_file
        .is_some()
        .then(|| background_log(home, name, log));
    let l = launch_detached(home, name, args, secrets, claim, log_file)?;
    report_started(home, "started", name, &l);
    // Its report could not be written (a full disk, not a reader that left early as
    // `| head` does): the start fails, so it leaves nothing behind.
    // (The stdout error itself is reported after this one, with its exit code.)
    if let Err(e) = crate::output::check()
        && !e.reader_gone()
    {
        let registry = conduit_controlplane::registry::Registry::new(home);
        if let Some(entry) = registry.find(&l.id) {
            let stopped = runtime(1)?.block_on(super::kill::stop(
                &registry,
                &entry,
                true,
                None,
                super::kill::Stopper::Kill,
            ));
            if let Err(why) = stopped {
                return Err(anyhow::anyhow!(
                    "its report could not be written, and the tunnel it started (id {}, pid \
                     {}) could not be stopped: {why}",
                    l.id,
                    l.pid
                ));
            }
        }
        return Err(anyhow::anyhow!(
            "its report could not be written, so the tunnel it started (id {}) was stopped \
             again: a start that fails leaves nothing behind",
            l.id
        ));
    }
    Ok(())
}

/// `--alert-webhook` and `--alert-slack`, checked (the URLs are not repeated: they
/// may hold a token).
fn alert_urls(a: &StartArgs) -> Result<()> {
    for (flag, url) in [
        ("--alert-webhook", &a.alert_webhook),
        ("--alert-slack", &a.alert_slack),
    ] {
        if let Some(url) = url {
            conduit_controlplane::config::webhook_url(url.expose())
                .map_err(|e| Usage(format!("{flag}: {e}")))?;
        }
    }
    Ok(())
}

/// Where the tunnel reports its router link: the flags over the defaults of a
/// file's `[alerts]`.
fn tunnel_alerts(a: &StartArgs, name: &str) -> TunnelAlerts {
    AlertsConfig {
        webhook: a.alert_webhook.clone(),
        slack: a.alert_slack.clone(),
        lost_after_secs: Some(a.alert_after),
        ..AlertsConfig::default()
    }
    .tunnel_settings(name)
}

/// Where a background tunnel logs: `--log-file` (made absolute, as the registry
/// records it), else `logs/NAME.log`.
fn background_log(home: &Home, name: &str, log: &LogArgs) -> PathBuf {
    log.log_file
        .as_ref()
        .map(|f| std::path::absolute(f).unwrap_or_else(|_| f.clone()))
        .unwrap_or_else(|| home.logs().join(format!("{name}.log")))
}

/// Launches `conduit ARGS` in the background and waits until the tunnel is up.
/// A token goes to the child in its environment.
pub(crate) fn launch_detached(
    home: &Home,
    name: &str,
    args: Vec<OsString>,
    secrets: Vec<(String, Secret)>,
    claim: NameClaim,
    log_file: Option<PathBuf>,
) -> Result<Launched> {
    Ok(launch(Launch {
        exe: std::env::current_exe()?,
        args,
        home: home.clone(),
        name: name.to_owned(),
        log_file,
        timeout: Duration::from_secs(30),
        secrets,
        claim,
    })?)
}

/// The flags whose values are secrets, and the variables that carry them to a
/// background tunnel or a service instead.
const SECRET_FLAGS: [(&str, &str); 3] = [
    ("--token", "CONDUIT_TOKEN"),
    ("--alert-webhook", "CONDUIT_ALERTS_WEBHOOK"),
    ("--alert-slack", "CONDUIT_ALERTS_SLACK"),
];

/// The flags of [`SECRET_FLAGS`] that `args` (a command line) gives, each with the
/// variable to use instead.
fn secret_flags_given(args: impl IntoIterator<Item = String>) -> Vec<(&'static str, &'static str)> {
    let args: Vec<String> = args.into_iter().collect();
    SECRET_FLAGS
        .into_iter()
        .filter(|(flag, _)| {
            args.iter()
                .any(|a| a == flag || a.strip_prefix(flag).is_some_and(|r| r.starts_with('=')))
        })
        .collect()
}

/// The secrets given to `start`, each with its variable.
fn secrets(a: &StartArgs) -> Vec<(String, Secret)> {
    [&a.token, &a.alert_webhook, &a.alert_slack]
        .into_iter()
        .zip(SECRET_FLAGS)
        .filter_map(|(value, (_, var))| value.clone().map(|v| (var.to_owned(), v)))
        .collect()
}

/// Prints what a launch achieved: `VERB tunnel "NAME" (id …, pid …) listening on …`.
pub(crate) fn report_started(home: &Home, verb: &str, name: &str, l: &Launched) {
    say(format_args!(
        "{verb} tunnel {name:?} (id {}, pid {}) listening on {}",
        l.id, l.pid, l.addr
    ));
    if let Standing::Retrying(line) = &l.standing {
        say(line);
    }
    // The address bound (`--metrics-bind …:0` lets the system choose the port).
    let entry = conduit_controlplane::registry::Registry::new(home).find(&l.id);
    if let Some(m) = entry.and_then(|e| e.config.metrics) {
        say(format_args!("metrics: http://{m}/metrics"));
    }
    // With --log-rotation the tunnel writes the newest FILE.DATE, newer than FILE.
    let rotated = crate::logging::newest_rotated(&l.log_file)
        .filter(|r| super::logs::modified(r) >= super::logs::modified(&l.log_file));
    match rotated {
        Some(r) => say(format_args!(
            "log: {} (a new file each period: `conduit logs {name}` shows the newest)",
            r.display()
        )),
        None => say(format_args!("log: {}", l.log_file.display())),
    }
}

/// The pinned key of each router in `routers` (a checked `--router` list), from
/// `--router-key`.
fn router_keys(routers: &str, spec: &str) -> Result<Vec<Vec<conduit_proto::PublicKey>>> {
    let keys = keys::load_router_pins(spec, "--router-key")?;
    let count = conduit_dataplane::source_members(routers).count().max(1);
    conduit_controlplane::client::router_keys(count, &keys)
        .map_err(|e| conduit_controlplane::Error::Config(format!("--router-key: {e}")).into())
}

/// The pinned keys of each router in `routers` and where they came from, from
/// `--router-key`: none on the plain transport when it is not given (that transport
/// checks no keys).
fn pins(a: &StartArgs, routers: &str) -> Result<(Vec<Vec<conduit_proto::PublicKey>>, Vec<String>)> {
    match &a.router_key {
        // A key given would read as the router being authenticated, which it is not.
        Some(_) if a.transport == TransportArg::Plain => Err(Usage(
            "--router-key (or CONDUIT_ROUTER_KEY) applies to TLS only: --transport plain \
             checks no router key (only --token), so the router would not be authenticated; \
             leave the key out, or drop --transport plain to pin the router"
                .to_owned(),
        )
        .into()),
        Some(spec) => Ok((router_keys(routers, spec)?, router_key_specs(spec)?)),
        None if a.transport == TransportArg::Plain => Ok((vec![Vec::new()], Vec::new())),
        None => Err(Usage(
            "--router-key is missing: give the router's public key (what its `conduit init` \
             printed) or the path of its .pub file, or set CONDUIT_ROUTER_KEY (only \
             --transport plain, which checks no keys, goes without)"
                .to_owned(),
        )
        .into()),
    }
}

/// Each router's keys from `--router-key` (separated by `,`), each key (separated
/// by `|`) inline or a path, made absolute.
fn router_key_specs(spec: &str) -> Result<Vec<String>> {
    spec.split(',')
        .map(|one| keys::absolute_pins(one).map_err(Into::into))
        .collect()
}

fn tunnel_name(a: &StartArgs, bind: SocketAddr) -> String {
    a.name.clone().unwrap_or_else(|| match bind.port() {
        0 => "tunnel".to_owned(),
        p => format!("tunnel-{p}"),
    })
}

/// The client key file the tunnel uses: `--key`, or the default one, which the
/// plain transport (checking no keys) does without when it is not there.
fn key_file(home: &Home, a: &StartArgs) -> Option<PathBuf> {
    let default = || home.private_key("client");
    match &a.key {
        Some(key) => Some(key.clone()),
        None if a.transport == TransportArg::Plain && !default().exists() => None,
        None => Some(default()),
    }
}

/// `--service-file`: checks the arguments as a start would, then writes a service
/// that runs `conduit start --foreground` with them, key paths made absolute.
fn service_file(home: &Home, a: &StartArgs, log: &LogArgs, kind: ServiceKind) -> Result<()> {
    let bind = listen_addr("--bind", &a.bind)?;
    let name = tunnel_name(a, bind);
    let args = service_args(home, a, log)?;
    // Written maybe before the key (or for another host): noted, as a missing user is.
    if let Some(key) = key_file(home, a)
        && std::fs::symlink_metadata(&key).is_err()
    {
        eprintln!(
            "conduit: note: there is no private key at {} yet: create it before the service \
             starts (`conduit init`, run as the service's user with its CONDUIT_HOME, writes \
             $CONDUIT_HOME/keys/client.key), or the service cannot start",
            key.display()
        );
    }
    service::emit(
        home,
        &a.service,
        kind,
        Tunnel {
            name: &name,
            description: format!("Conduit tunnel {name}"),
            args,
            privileged_port: (1..1024).contains(&bind.port()),
            env_vars: secrets(a)
                .into_iter()
                .map(|(var, _)| var.to_owned())
                .collect(),
            // The key rotates beside its file.
            writes: key_file(home, a)
                .into_iter()
                .chain(log.log_file.clone())
                .collect(),
            // Its pinned `.pub` files are among its arguments.
            reads: Vec::new(),
            drain: std::time::Duration::from_secs(a.drain_timeout),
        },
    )
}

/// The arguments of the `conduit start --foreground` a service runs: every setting
/// of this command line but the secrets (which the service reads from its
/// environment) and the service's own flags.
fn service_args(home: &Home, a: &StartArgs, log: &LogArgs) -> Result<Vec<String>> {
    let bind = listen_addr("--bind", &a.bind)?;
    let router = source_list("--router", &a.router)?;
    source_list("--source", &a.source)?;
    let (_, specs) = pins(a, &router)?;
    let name = tunnel_name(a, bind);
    let mut args: Vec<String> = ["start", "--foreground", "--router", &a.router]
        .map(String::from)
        .to_vec();
    if a.router_key.is_some() {
        args.extend(["--router-key".to_owned(), specs.join(",")]);
    }
    args.extend(["--source", &a.source, "--bind", &a.bind].map(String::from));
    if let Some(key) = key_file(home, a) {
        args.extend(["--key".to_owned(), path_arg(&key)?]);
    }
    args.extend(
        [
            "--name",
            &name,
            "--pool-size",
            &a.pool_size.to_string(),
            "--drain-timeout",
            &a.drain_timeout.to_string(),
        ]
        .map(String::from),
    );
    if a.engine.workers != 0 {
        args.extend(["--workers".to_owned(), a.engine.workers.to_string()]);
    }
    if a.engine.io_engine != Engine::Auto {
        args.extend(["--io-engine".to_owned(), a.engine.io_engine.to_string()]);
    }
    if a.engine.pin_cores {
        args.extend(["--pin-cores".to_owned(), "true".to_owned()]);
    }
    if let Some(m) = &a.metrics_bind {
        args.extend(["--metrics-bind".to_owned(), m.clone()]);
    }
    if a.transport == TransportArg::Plain {
        args.extend(["--transport".to_owned(), "plain".to_owned()]);
    }
    if !a.kernel_tls {
        args.extend(["--kernel-tls".to_owned(), "false".to_owned()]);
    }
    if a.protocol == ProtocolArg::Udp {
        args.extend(["--protocol".to_owned(), "udp".to_owned()]);
    }
    if let Some(suites) = &a.cipher_suites {
        args.extend(["--cipher-suites".to_owned(), suites.to_string()]);
    }
    if let Some(v) = a.proxy_protocol {
        let v = conduit_dataplane::ProxyProtocol::from(v);
        args.extend(["--proxy-protocol".to_owned(), v.to_string()]);
    }
    if !a.allow_from.is_empty() {
        let nets: Vec<String> = a.allow_from.iter().map(ToString::to_string).collect();
        args.extend(["--allow-from".to_owned(), nets.join(",")]);
    }
    if a.router_balance {
        args.push("--router-balance".to_owned());
    }
    if a.optimize_for != OptimizeArg::Balanced {
        let word = OptimizeFor::from(a.optimize_for).as_str();
        args.extend(["--optimize-for".to_owned(), word.to_owned()]);
    }
    let numbers = [
        ("--connect-timeout", a.connect_timeout, 10),
        ("--handshake-timeout", a.handshake_timeout, 10),
        ("--heartbeat-interval", a.heartbeat_interval, 5),
        ("--key-rotation-days", a.key_rotation_days, 30),
        ("--router-failback", a.router_failback, 30),
        ("--standby-check", a.standby_check, 300),
        ("--udp-idle-timeout", a.udp_idle_timeout, 60),
        (
            "--stream-idle-timeout",
            a.stream_idle_timeout,
            STREAM_IDLE_TIMEOUT_SECS,
        ),
        ("--alert-after", a.alert_after, 10),
        ("--udp-max-new-flows", a.udp_max_new_flows, 0),
        ("--max-connections", a.max_connections as u64, 0),
        ("--bandwidth-limit", a.bandwidth_limit, 0),
        ("--burst-limit", a.burst_limit, 0),
        ("--read-buffer-size", a.read_buffer_size as u64, 0),
        ("--write-buffer-size", a.write_buffer_size as u64, 0),
    ];
    for (flag, value, default) in numbers {
        if value != default {
            args.extend([flag.to_owned(), value.to_string()]);
        }
    }
    args.extend(log_flags(log));
    Ok(args)
}

fn path_arg(p: &Path) -> Result<String> {
    Ok(absolute(p)?.to_string_lossy().into_owned())
}

/// `args` without `flag VALUE` and `flag=VALUE`.
fn without_flag(args: impl IntoIterator<Item = OsString>, flag: &str) -> Vec<OsString> {
    let with_value = format!("{flag}=");
    let mut out = Vec::new();
    let mut args = args.into_iter();
    while let Some(a) = args.next() {
        let s = a.to_string_lossy();
        if s == flag {
            args.next();
        } else if !s.starts_with(&with_value) {
            out.push(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every flag of `start` set away from its default reaches the service's command
    /// line, but for those the service has no business with. A flag added to `start`
    /// fails this test until it is carried or listed here as not carried.
    #[test]
    fn secrets_given_as_flags_are_found_in_either_form() {
        let line = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert_eq!(
            secret_flags_given(line("conduit start --foreground --token t --alert-slack=u")),
            [
                ("--token", "CONDUIT_TOKEN"),
                ("--alert-slack", "CONDUIT_ALERTS_SLACK")
            ]
        );
        assert!(secret_flags_given(line("conduit start --foreground --tokens x")).is_empty());
    }

    #[test]
    fn a_service_runs_with_every_setting_of_the_command_line() {
        use clap::{CommandFactory, Parser};
        // Secrets go to the service's environment; `--detached` is a background
        // tunnel's own; the rest are the service's.
        let not_carried = [
            "foreground",
            "detached",
            "token",
            "alert-webhook",
            "alert-slack",
            "service-file",
            "output",
            "service-name",
            "service-user",
            "service-env-file",
            "help",
        ];
        let set: &[(&str, &str)] = &[
            ("router", "10.0.0.1:9000"),
            (
                "router-key",
                "ed25519:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            ),
            ("source", "10.2.0.2:8080"),
            ("bind", "127.0.0.1:8080"),
            ("key", "/etc/conduit/client.key"),
            ("name", "web"),
            ("cipher-suites", "TLS_AES_256_GCM_SHA384"),
            ("protocol", "udp"),
            ("proxy-protocol", "v2"),
            ("allow-from", "10.0.0.0/8"),
            ("udp-idle-timeout", "61"),
            ("stream-idle-timeout", "61"),
            ("udp-max-new-flows", "7"),
            ("pool-size", "5"),
            ("optimize-for", "latency"),
            ("read-buffer-size", "65536"),
            ("kernel-tls", "false"),
            ("write-buffer-size", "65536"),
            ("drain-timeout", "7"),
            ("heartbeat-interval", "6"),
            ("key-rotation-days", "9"),
            ("router-failback", "31"),
            ("standby-check", "301"),
            ("metrics-bind", "127.0.0.1:9100"),
            ("alert-after", "11"),
            ("connect-timeout", "11"),
            ("handshake-timeout", "11"),
            ("max-connections", "7"),
            ("bandwidth-limit", "100000"),
            ("burst-limit", "200000"),
            ("workers", "3"),
            ("io-engine", "epoll"),
            ("pin-cores", "true"),
            ("log-level", "debug"),
            ("log-format", "json"),
            ("log-file", "/var/log/conduit.log"),
            ("log-rotation", "daily"),
            ("log-keep", "3"),
        ];
        let cli = crate::args::Cli::command();
        let start = cli.find_subcommand("start").unwrap();
        let flags = start
            .get_arguments()
            .chain(cli.get_arguments())
            .filter_map(|arg| arg.get_long());
        // Failover's settings and balancing exclude each other, and the plain
        // transport takes no router key: balancing and the plain transport are
        // tried on their own below.
        let (balance, transport) = ("router-balance", "transport");
        for flag in flags {
            assert!(
                not_carried.contains(&flag)
                    || flag == balance
                    || flag == transport
                    || set.iter().any(|(f, _)| *f == flag),
                "--{flag} of `start`: set it in this test, or list it as not carried"
            );
        }
        let mut argv = vec!["conduit".to_owned()];
        for (flag, value) in set.iter().filter(|(f, _)| f.starts_with("log-")) {
            argv.extend([format!("--{flag}"), (*value).to_owned()]);
        }
        argv.push("start".to_owned());
        for (flag, value) in set.iter().filter(|(f, _)| !f.starts_with("log-")) {
            argv.push(format!("--{flag}"));
            if !value.is_empty() {
                argv.push((*value).to_owned());
            }
        }
        let home = Home::at(std::path::PathBuf::from("/nonexistent-home"));
        let service = |argv: &[String]| {
            let cli = crate::args::Cli::try_parse_from(argv).unwrap();
            let crate::args::Command::Start(a) = cli.command else {
                panic!("not a start");
            };
            service_args(&home, &a, &cli.log).unwrap()
        };
        let balanced: Vec<String> = ["conduit", "start", "--router", "a:1,b:2", "--source"]
            .into_iter()
            .chain(["10.2.0.2:8080", "--bind", "127.0.0.1:8080", "--router-key"])
            .chain(["ed25519:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="])
            .map(str::to_owned)
            .chain([format!("--{balance}")])
            .collect();
        assert!(service(&balanced).contains(&format!("--{balance}")));
        let plain: Vec<String> = ["conduit", "start", "--router", "a:1", "--source"]
            .into_iter()
            .chain(["10.2.0.2:8080", "--bind", "127.0.0.1:8080"])
            .chain([&format!("--{transport}") as &str, "plain"])
            .map(str::to_owned)
            .collect();
        assert!(
            service(&plain)
                .windows(2)
                .any(|w| w == [format!("--{transport}"), "plain".to_owned()])
        );
        let args = service(&argv);
        for (flag, value) in set {
            let at = args.iter().position(|x| *x == format!("--{flag}"));
            let at = at.unwrap_or_else(|| panic!("--{flag} is not in the service: {args:?}"));
            if !value.is_empty() {
                assert_eq!(
                    args.get(at + 1).map(String::as_str),
                    Some(*value),
                    "--{flag}"
                );
            }
        }
    }

    #[test]
    fn the_token_is_taken_off_the_command_line() {
        let args = [
            "start",
            "--token",
            "s3cret",
            "--bind",
            "b",
            "--token=x",
            "--name",
            "n",
        ];
        let got = without_flag(args.iter().map(OsString::from), "--token");
        assert_eq!(got, ["start", "--bind", "b", "--name", "n"]);
    }
}
