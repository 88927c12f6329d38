//! `--service-file`: print or write a service file that runs a command in the
//! foreground under an init system. The text comes from
//! `conduit_controlplane::service`; this module gathers its inputs from the command
//! line and the environment.

use std::path::{Path, PathBuf};

use anyhow::Result;
use conduit_controlplane::Home;
use conduit_controlplane::config::env_value_from_working_dir;
use conduit_controlplane::service::{self, InitSystem, ServiceSpec};

use crate::args::{LogArgs, LogFormat, LogRotation, ServiceArgs, ServiceKind};
use crate::exit::Usage;
use crate::output;

/// What the command being turned into a service contributes.
pub(crate) struct Tunnel<'a> {
    /// The tunnel's name (for `up`, the configuration file's stem).
    pub(crate) name: &'a str,
    /// One line for people: what the service runs.
    pub(crate) description: String,
    /// The command's arguments after the binary, `--foreground` included.
    pub(crate) args: Vec<String>,
    /// It listens on a port below 1024.
    pub(crate) privileged_port: bool,
    /// The variables of settings that stay out of the file (secrets such as a token
    /// or an alert URL, and settings taken from this shell's environment): the user
    /// is told to put them in the service's environment file.
    pub(crate) env_vars: Vec<String>,
    /// Files the service writes outside `CONDUIT_HOME` (a log file, a key file that
    /// rotates beside it): their directories are made writable where the service is
    /// sandboxed.
    pub(crate) writes: Vec<PathBuf>,
    /// Files it only reads that its arguments do not name (a configuration file's
    /// pinned `.pub` files): where they lie shapes the sandbox.
    pub(crate) reads: Vec<PathBuf>,
    /// How long it drains open connections when stopped.
    pub(crate) drain: std::time::Duration,
}

/// The directories of `files`, made absolute; for a file that is a symbolic link,
/// the directory of the file it leads to as well, where a rotated key lands.
fn directories(files: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let dir = |f: &Path| {
        f.parent()
            .map_or_else(|| f.to_path_buf(), Path::to_path_buf)
    };
    let mut out = Vec::new();
    for f in files {
        let f = absolute(f)?;
        out.push(dir(&f));
        let is_link = std::fs::symlink_metadata(&f).is_ok_and(|m| m.file_type().is_symlink());
        if is_link && let Ok(target) = std::fs::canonicalize(&f) {
            out.push(dir(&target));
        }
    }
    Ok(out)
}

fn kind(k: ServiceKind) -> InitSystem {
    match k {
        ServiceKind::Systemd => InitSystem::Systemd,
        ServiceKind::Openrc => InitSystem::OpenRc,
        ServiceKind::Launchd => InitSystem::Launchd,
        ServiceKind::RcD => InitSystem::RcD,
    }
}

/// A service name from a tunnel (or file) name: `conduit-` and the name unless it
/// starts with `conduit` already, with anything a unit name cannot hold turned into `-`.
fn default_name(tunnel: &str) -> String {
    let clean: String = tunnel
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(56)
        .collect();
    if clean.starts_with("conduit") {
        clean
    } else {
        format!("conduit-{clean}")
    }
}

/// The service's name: `--service-name` as given, but for the `.service` a systemd
/// unit's name is often written with, which the unit file adds itself (the unit
/// would be `NAME.service.service`); without the flag, from the tunnel's name.
fn service_name(kind: InitSystem, given: Option<&str>, tunnel: &str) -> String {
    match given {
        Some(n) if kind == InitSystem::Systemd => n.strip_suffix(".service").unwrap_or(n).into(),
        Some(n) => n.to_owned(),
        None => default_name(tunnel),
    }
}

/// `path` made absolute against the current directory (not resolved: a symlink stays
/// a symlink, so a key rotated by replacing the link keeps working).
pub(crate) fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path)
        .map_err(|e| anyhow::anyhow!("cannot make {} absolute: {e}", path.display()))
}

/// The log flags to repeat in the service, where they differ from the defaults.
pub(crate) fn log_flags(log: &LogArgs) -> Vec<String> {
    let mut v = Vec::new();
    if let Some(level) = log.log_level.as_ref().filter(|l| *l != "info") {
        v.extend(["--log-level".to_owned(), level.clone()]);
    }
    if log.log_format == Some(LogFormat::Json) {
        v.extend(["--log-format".to_owned(), "json".to_owned()]);
    }
    if let Some(file) = &log.log_file {
        let file = std::path::absolute(file).unwrap_or_else(|_| file.clone());
        v.extend(["--log-file".to_owned(), file.display().to_string()]);
        if let Some(r) = log.log_rotation {
            let word = match r {
                LogRotation::Never => "never",
                LogRotation::Hourly => "hourly",
                LogRotation::Daily => "daily",
            };
            v.extend(["--log-rotation".to_owned(), word.to_owned()]);
        }
        if let Some(k) = log.log_keep {
            v.extend(["--log-keep".to_owned(), k.to_string()]);
        }
    }
    v
}

/// Who runs the service when `--service-user` is not given: `$USER` or `$LOGNAME`,
/// else the name of this process's uid in the password database (cron jobs and
/// containers often run as root without either variable).
fn current_user() -> Option<String> {
    let from_env = ["USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()));
    if from_env.is_some() {
        return from_env;
    }
    #[cfg(unix)]
    if let Ok(Some(u)) = nix::unistd::User::from_uid(nix::unistd::getuid()) {
        return Some(u.name);
    }
    None
}

/// Checks the files of trusted keys (authorized clients, pinned router keys) for
/// the user the service runs as, who may own them, rather than for the user writing
/// the service file (root, most often): called before the command reads them.
pub(crate) fn check_files_as_service_user(a: &ServiceArgs) {
    #[cfg(unix)]
    if let (Some(_), Some(name)) = (a.service_file, &a.service_user)
        && let Ok(Some(u)) = nix::unistd::User::from_name(name)
    {
        conduit_controlplane::keys::check_files_for(u.uid.as_raw());
    }
    #[cfg(not(unix))]
    let _ = a;
}

/// A note when `home` (the service's `CONDUIT_HOME`) is not owned by `user`, who
/// runs the service: its keys, mode 0600, would be unreadable to it (a unit written
/// as root with `--service-user conduit` and root's `~/.conduit`).
fn home_not_theirs(home: &Path, user: &str) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let runs_as = match nix::unistd::User::from_name(user) {
            Ok(Some(u)) => u,
            // Generated for another host, maybe; here, the unit would not start.
            Ok(None) => {
                return Some(format!(
                    "there is no user {user} on this host: create it (such as `useradd \
                     --system {user}`) before the service starts, or the service cannot start"
                ));
            }
            Err(_) => return None,
        };
        let owner = std::fs::metadata(home).ok()?.uid();
        if runs_as.uid.as_raw() == owner {
            return None;
        }
        let of = nix::unistd::User::from_uid(owner.into())
            .ok()
            .flatten()
            .map_or_else(|| format!("uid {owner}"), |u| u.name);
        Some(format!(
            "CONDUIT_HOME {} belongs to {of}, and the service runs as {user}, who cannot \
             read the keys there (mode 0600); run this command as {user} with a CONDUIT_HOME \
             of theirs (e.g. sudo -u {user} env CONDUIT_HOME=/var/lib/conduit conduit …), \
             or chown -R {user} {}",
            home.display(),
            home.display()
        ))
    }
    #[cfg(not(unix))]
    {
        let _ = (home, user);
        None
    }
}

/// Renders the service file and prints it, or writes it to `--output`.
pub(crate) fn emit(
    home: &Home,
    s: &ServiceArgs,
    kind_flag: ServiceKind,
    t: Tunnel<'_>,
) -> Result<()> {
    let kind = kind(kind_flag);
    let name = service_name(kind, s.service_name.as_deref(), t.name);
    let user = match &s.service_user {
        Some(u) => u.clone(),
        None => current_user().ok_or_else(|| {
            Usage("cannot tell the current user: pass --service-user USER".into())
        })?,
    };
    let env_file = match &s.service_env_file {
        Some(p) => absolute(p)?,
        None => kind.default_env_file(&name),
    };
    let spec = ServiceSpec {
        description: t.description,
        name,
        binary: std::env::current_exe()
            .map_err(|e| anyhow::anyhow!("cannot find the path of this conduit binary: {e}"))?,
        args: t.args,
        user,
        home: absolute(home.root())?,
        env: Vec::new(),
        env_file: Some(env_file.clone()),
        env_required: t.env_vars.clone(),
        privileged_port: t.privileged_port,
        writable: directories(&t.writes)?,
        reads: (t.reads.iter())
            .map(|p| absolute(p))
            .collect::<Result<_>>()?,
        drain: t.drain,
    };
    let text = service::render(kind, &spec)?;
    if let Some(note) = home_not_theirs(&spec.home, &spec.user) {
        eprintln!("conduit: note: {note}");
    }
    for var in &t.env_vars {
        // A relative path in this shell would name another file to the service,
        // which does not start in this directory: the note gives it made absolute.
        let absolute = std::env::var(var)
            .ok()
            .and_then(|v| env_value_from_working_dir(var, &v));
        let (what, value) = match absolute {
            Some(path) => (var.as_str(), path),
            None if var.ends_with("_TOKEN") => ("the token", "<token>".to_owned()),
            None => (var.as_str(), "<value>".to_owned()),
        };
        eprintln!(
            "conduit: note: {what} is not written into the service file; put \
             {var}={value} in {} (mode 0600) instead",
            env_file.display()
        );
    }
    if !t.env_vars.is_empty() {
        eprintln!(
            "conduit: note: the service does not start until {} exists, rather than run \
             without these",
            env_file.display()
        );
    }
    match &s.output {
        None => output::write(text),
        Some(path) => {
            let shown = path.display();
            let replaced = path.is_file();
            std::fs::write(path, &text).map_err(|e| {
                Usage(format!(
                    "cannot write the service file {shown}: {e}; give -o a file in a \
                     directory this user may write to"
                ))
            })?;
            // Scripts run (0755); units and plists are read by the init system and
            // by whoever checks them (0644), whatever this process's umask. They hold
            // no secret.
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = match kind {
                    InitSystem::OpenRc | InitSystem::RcD => 0o755,
                    InitSystem::Systemd | InitSystem::Launchd => 0o644,
                };
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                    .map_err(|e| Usage(format!("cannot set the mode of {shown}: {e}")))?;
            }
            let note = if replaced {
                " (it replaced the file there)"
            } else {
                ""
            };
            eprintln!("conduit: wrote the {kind} service file {shown}{note}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_come_from_tunnel_names() {
        assert_eq!(default_name("web"), "conduit-web");
        assert_eq!(default_name("db eu/1"), "conduit-db-eu-1");
        assert_eq!(default_name("conduit-prod"), "conduit-prod");
    }

    #[test]
    fn a_systemd_name_may_end_in_dot_service() {
        let name = |kind, given| service_name(kind, given, "web");
        assert_eq!(name(InitSystem::Systemd, Some("x.service")), "x");
        assert_eq!(name(InitSystem::Systemd, Some("x.svc")), "x.svc");
        assert_eq!(name(InitSystem::Systemd, None), "conduit-web");
        assert_eq!(name(InitSystem::OpenRc, Some("x.service")), "x.service");
        assert_eq!(name(InitSystem::Launchd, Some("x.service")), "x.service");
    }
}
