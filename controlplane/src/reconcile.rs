//! What `conduit up` must do to make the running tunnels match a file, and what
//! `conduit down` must stop: decided here, from the plan and the registry alone.

use std::path::Path;

use crate::config::{Plan, TunnelPlan};
use crate::registry::Entry;

/// The actions that bring the running tunnels in line with a file.
#[derive(Debug, Default)]
pub struct Actions<'p> {
    /// Not running: start.
    pub start: Vec<&'p TunnelPlan>,
    /// Running with the same settings: leave alone.
    pub keep: Vec<(&'p TunnelPlan, Entry)>,
    /// Running from this file with other settings: stop, then start.
    pub restart: Vec<(&'p TunnelPlan, Entry)>,
    /// Stopping (a `kill` draining it), though the file wants it: let it stop, then
    /// start it again.
    pub revive: Vec<(&'p TunnelPlan, Entry)>,
    /// Running from this file but no longer in it: stop.
    pub remove: Vec<Entry>,
    /// Its name is taken by a tunnel that was not started from this file.
    pub conflict: Vec<(&'p TunnelPlan, Entry)>,
    /// From this file, and to restart or stop, but a live `up --foreground` runs it
    /// and would not know: left alone (its supervisor is the one to restart).
    pub supervised: Vec<Entry>,
}

/// Compares `plan` with the live registry `entries`.
pub fn reconcile<'p>(plan: &'p Plan, entries: &[Entry]) -> Actions<'p> {
    let mut a = Actions::default();
    for t in &plan.tunnels {
        match entries.iter().find(|e| e.name == t.name) {
            None => a.start.push(t),
            Some(e) if !from_file(e, &plan.file) => a.conflict.push((t, e.clone())),
            Some(e) if e.status != "stopping" && e.config.digest == t.digest() => {
                a.keep.push((t, e.clone()));
            }
            Some(e) if e.live_supervisor().is_some() => a.supervised.push(e.clone()),
            Some(e) if e.status == "stopping" => a.revive.push((t, e.clone())),
            Some(e) => a.restart.push((t, e.clone())),
        }
    }
    for e in entries {
        if from_file(e, &plan.file) && !plan.tunnels.iter().any(|t| t.name == e.name) {
            match e.live_supervisor() {
                Some(_) => a.supervised.push(e.clone()),
                None => a.remove.push(e.clone()),
            }
        }
    }
    a
}

/// The live tunnels that were started from `file`.
pub fn started_from(file: &Path, entries: &[Entry]) -> Vec<Entry> {
    entries
        .iter()
        .filter(|e| from_file(e, file))
        .cloned()
        .collect()
}

/// Whether `e` was started from `file`: the same path, or one that leads to the
/// same file through symbolic links (`up -f link.toml`, `down -f real.toml`). The
/// path given is what is kept: a Kubernetes ConfigMap's file is a link whose target
/// changes with each update, and its tunnels must stay the file's.
fn from_file(e: &Entry, file: &Path) -> bool {
    is_from_file(e.config.file.as_deref(), file)
}

/// Whether a tunnel started from `theirs` (none: not from a file) was started from
/// `file`, as [`started_from`] tells.
pub fn is_from_file(theirs: Option<&Path>, file: &Path) -> bool {
    let Some(theirs) = theirs else {
        return false;
    };
    theirs == file
        || matches!(
            (std::fs::canonicalize(theirs), std::fs::canonicalize(file)),
            (Ok(a), Ok(b)) if a == b
        )
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use conduit_proto::KeyPair;

    use super::*;
    use crate::config::{LoggingConfig, PerformanceConfig, Protocol};
    use crate::registry::EntryConfig;

    fn plan(file: &str, names: &[(&str, &str)]) -> Plan {
        let key = KeyPair::generate().unwrap().public();
        Plan {
            file: PathBuf::from(file),
            tunnels: names
                .iter()
                .map(|(n, source)| TunnelPlan {
                    name: (*n).into(),
                    router: "10.0.0.1:9999".into(),
                    router_keys: vec![vec![key]],
                    router_key_specs: vec![key.to_string()],
                    private_key_path: "/k/client.key".into(),
                    source: (*source).into(),
                    bind: "127.0.0.1:8080".parse().unwrap(),
                    protocol: Protocol::Tcp,
                    proxy_protocol: None,
                    allow_from: Vec::new(),
                    transport: crate::config::TransportKind::Tls,
                    token: None,
                    key_rotation_days: 30,
                    suites: conduit_proto::tls::Suites::all(),
                    failback_secs: 30,
                    standby_check_secs: 300,
                    balance: false,
                    performance: PerformanceConfig::default(),
                    alerts: crate::config::AlertsConfig::default().tunnel_settings(n),
                    logging: LoggingConfig::default(),
                    log_level_flag: None,
                })
                .collect(),
            logging: LoggingConfig::default(),
            warnings: Vec::new(),
            env_vars: Vec::new(),
        }
    }

    fn entry(name: &str, file: Option<&str>, digest: &str) -> Entry {
        Entry {
            tunnel_id: format!("{name}-0001"),
            name: name.into(),
            pid: 1,
            started: None,
            control_socket: "/x.sock".into(),
            log_file: None,
            config: EntryConfig {
                router: String::new(),
                source: String::new(),
                bind: String::new(),
                protocol: "tcp".into(),
                file: file.map(PathBuf::from),
                digest: digest.into(),
                settings: Default::default(),
                balance: false,
                proxy_protocol: None,
                allow_from: Vec::new(),
                metrics: None,
                stream_idle_timeout_secs: 0,
                udp_idle_timeout_secs: 0,
            },
            status: "running".into(),
            created_at: String::new(),
            supervisor: None,
        }
    }

    /// A tunnel a `kill` is draining is not "up to date": once it has stopped, it is
    /// started again, whether its settings changed or not.
    #[test]
    fn a_stopping_tunnel_is_started_again() {
        let p = plan(
            "/etc/c.toml",
            &[("web", "10.0.0.2:80"), ("api", "10.0.0.3:80")],
        );
        let mut web = entry("web", Some("/etc/c.toml"), &p.tunnels[0].digest());
        web.status = "stopping".into();
        let mut api = entry("api", Some("/etc/c.toml"), "stale");
        api.status = "stopping".into();
        let a = reconcile(&p, &[web, api]);
        let names: Vec<&str> = a.revive.iter().map(|(t, _)| t.name.as_str()).collect();
        assert_eq!(names, ["web", "api"]);
        assert!(a.keep.is_empty() && a.restart.is_empty() && a.start.is_empty());
    }

    #[test]
    fn start_keep_restart_remove_and_conflict() {
        let p = plan(
            "/etc/c.toml",
            &[
                ("web", "10.0.0.2:80"),
                ("api", "10.0.0.3:80"),
                ("db", "10.0.0.4:5432"),
                ("new", "10.0.0.5:1"),
            ],
        );
        let web_digest = p.tunnels[0].digest();
        let entries = vec![
            entry("web", Some("/etc/c.toml"), &web_digest),
            entry("api", Some("/etc/c.toml"), "stale"),
            entry("db", None, "whatever"),
            entry("old", Some("/etc/c.toml"), "x"),
            entry("other", Some("/etc/other.toml"), "y"),
        ];
        let a = reconcile(&p, &entries);
        let names = |v: &[&TunnelPlan]| v.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&a.start), ["new"]);
        assert_eq!(
            a.keep
                .iter()
                .map(|(t, _)| t.name.as_str())
                .collect::<Vec<_>>(),
            ["web"]
        );
        assert_eq!(
            a.restart
                .iter()
                .map(|(t, _)| t.name.as_str())
                .collect::<Vec<_>>(),
            ["api"]
        );
        assert_eq!(
            a.conflict
                .iter()
                .map(|(t, _)| t.name.as_str())
                .collect::<Vec<_>>(),
            ["db"]
        );
        assert_eq!(
            a.remove.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
            ["old"]
        );
        assert_eq!(started_from(Path::new("/etc/c.toml"), &entries).len(), 3);
    }

    /// A tunnel an `up --foreground` runs is neither restarted, started again nor
    /// stopped by another `up` of its file (its supervisor would not know); one whose
    /// supervisor is gone is handled as any other.
    #[test]
    fn a_supervised_tunnel_is_left_to_its_supervisor() {
        use crate::registry::Supervisor;
        let p = plan(
            "/etc/c.toml",
            &[
                ("same", "10.0.0.2:80"),
                ("changed", "10.0.0.3:80"),
                ("stopping", "10.0.0.4:80"),
            ],
        );
        let live = Supervisor::of(std::process::id());
        let dead = Supervisor {
            pid: 4_000_000_000,
            started: None,
        };
        let supervised = |name: &str, digest: &str, by: Supervisor| Entry {
            supervisor: Some(by),
            ..entry(name, Some("/etc/c.toml"), digest)
        };
        let mut stopping = supervised("stopping", &p.tunnels[2].digest(), live);
        stopping.status = "stopping".into();
        let entries = vec![
            supervised("same", &p.tunnels[0].digest(), live),
            supervised("changed", "stale", live),
            stopping,
            supervised("gone", "x", live),
            supervised("orphan", "y", dead),
        ];
        let a = reconcile(&p, &entries);
        let names: Vec<&str> = a.supervised.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["changed", "stopping", "gone"]);
        assert_eq!(a.keep.len(), 1);
        assert_eq!(a.keep[0].0.name, "same");
        assert!(a.restart.is_empty() && a.revive.is_empty() && a.start.is_empty());
        let removed: Vec<&str> = a.remove.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(removed, ["orphan"]);
    }

    #[test]
    fn the_digest_follows_the_settings_and_hides_the_token() {
        let mut p = plan("/c.toml", &[("web", "10.0.0.2:80")]);
        let a = p.tunnels[0].digest();
        assert_eq!(a, p.tunnels[0].digest());
        assert_eq!(a.len(), 16);
        p.tunnels[0].source = "10.0.0.2:81".into();
        let b = p.tunnels[0].digest();
        assert_ne!(a, b);
        // A changed inline key restarts the tunnel; a changed key file does not
        // (the tunnel reads it again itself).
        p.tunnels[0].router_key_specs = vec!["/keys/router.pub".into()];
        let b2 = p.tunnels[0].digest();
        assert_ne!(b, b2);
        p.tunnels[0].router_keys = vec![vec![KeyPair::generate().unwrap().public()]];
        assert_eq!(b2, p.tunnels[0].digest());
        let b = b2;
        p.tunnels[0].token = Some(conduit_proto::Secret::new("hunter2".into()));
        let c = p.tunnels[0].digest();
        assert_ne!(b, c);
        assert!(!c.contains("hunter2"));
        // Balancing over the routers, or not, restarts the tunnel.
        p.tunnels[0].balance = true;
        assert_ne!(c, p.tunnels[0].digest());
        assert!(
            p.tunnels[0]
                .settings(KeyPair::generate().unwrap(), None)
                .balance
        );
    }

    /// `up`'s own log flags are part of what a tunnel runs with: given, they change
    /// the digest; given as the defaults, or as the file's own values, they do not.
    #[test]
    fn the_digest_holds_the_log_flags_of_up() {
        use crate::config::LogFormat;
        let file = plan("/c.toml", &[("web", "10.0.0.2:80")]);
        let plain = file.tunnels[0].digest();
        let with = |level: Option<&str>, format: Option<LogFormat>| {
            file.clone().with_log_flags(level, format).tunnels[0].digest()
        };
        assert_eq!(with(None, None), plain);
        assert_eq!(with(Some("info"), Some(LogFormat::Text)), plain);
        let debug = with(Some("debug"), None);
        assert_ne!(debug, plain);
        assert_ne!(with(Some("conduit=debug"), None), debug);
        let json = with(None, Some(LogFormat::Json));
        assert_ne!(json, plain);
        assert_ne!(json, debug);
        // The file saying `debug` runs the same process as the flag saying it.
        let mut in_file = file.clone();
        in_file.tunnels[0].logging.level = crate::config::LogLevel::Debug;
        assert_eq!(in_file.tunnels[0].digest(), debug);
    }
}
