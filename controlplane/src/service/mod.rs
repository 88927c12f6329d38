//! Service files: a unit, script or job that lets an init system run a tunnel.
//!
//! The init system supervises the tunnel, so the service runs `conduit … --foreground`
//! and is restarted by the init system when it fails; Conduit's own reconnect logic
//! handles router outages inside one run. One module per init system:
//!
//! | kind | file | supervisor |
//! |---|---|---|
//! | [`InitSystem::Systemd`] | `/etc/systemd/system/NAME.service` | systemd, `Restart=on-failure` |
//! | [`InitSystem::OpenRc`] | `/etc/init.d/NAME` | `supervise-daemon` |
//! | [`InitSystem::Launchd`] | `/Library/LaunchDaemons/NAME.plist` | launchd, `KeepAlive` |
//! | [`InitSystem::RcD`] | `/usr/local/etc/rc.d/NAME` | `daemon(8) -r` |
//!
//! Secrets never go into the generated text: tokens belong in an environment file
//! (mode 0600) that the service reads at start ([`ServiceSpec::env_file`]). Every
//! argument is quoted for the format that carries it, and everything a format cannot
//! carry (control characters, a binary path a shell `eval` would split) is refused
//! with the reason.
//!
//! What this module does **not** do: install, enable or start anything.

mod launchd;
mod openrc;
mod rcd;
mod systemd;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::Error;

/// The init systems a service file can be generated for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitSystem {
    /// systemd (most Linux distributions).
    Systemd,
    /// OpenRC with `supervise-daemon` (Alpine, Gentoo, Devuan…).
    OpenRc,
    /// launchd (macOS), as a system daemon.
    Launchd,
    /// FreeBSD's rc.d with `daemon(8)`.
    RcD,
}

impl InitSystem {
    /// Every kind, in the order help texts list them.
    pub const ALL: [Self; 4] = [Self::Systemd, Self::OpenRc, Self::Launchd, Self::RcD];

    /// Where the environment file with secrets conventionally lives for `name`.
    pub fn default_env_file(self, name: &str) -> PathBuf {
        let dir = match self {
            Self::Systemd | Self::OpenRc => "/etc/conduit",
            Self::Launchd | Self::RcD => "/usr/local/etc/conduit",
        };
        Path::new(dir).join(format!("{name}.env"))
    }
}

impl fmt::Display for InitSystem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Systemd => "systemd",
            Self::OpenRc => "openrc",
            Self::Launchd => "launchd",
            Self::RcD => "rc.d",
        })
    }
}

impl FromStr for InitSystem {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::ALL
            .into_iter()
            .find(|k| k.to_string() == s)
            .ok_or_else(|| {
                Error::Config(format!(
                    "unknown service file kind {s:?}: use systemd, openrc, launchd or rc.d"
                ))
            })
    }
}

/// Everything a service file says about the tunnel it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// The service's name: the unit/script/label name. 1–64 of `A-Z a-z 0-9 . _ -`,
    /// starting with a letter or digit.
    pub name: String,
    /// One line for people (`Description=`, `description=`…).
    pub description: String,
    /// Absolute path of the `conduit` binary.
    pub binary: PathBuf,
    /// The arguments after the binary, e.g. `start --foreground --router …` or
    /// `up --foreground -f /etc/conduit/conduit.toml`. Paths in them must be absolute.
    pub args: Vec<String>,
    /// The account the tunnel runs as.
    pub user: String,
    /// `CONDUIT_HOME`: absolute; the only directory the service may write.
    pub home: PathBuf,
    /// More environment variables (never secrets: they are written into the file).
    pub env: Vec<(String, String)>,
    /// A file of `KEY=value` lines (secrets such as `CONDUIT_TOKEN`) read at start if
    /// it exists. Write it with mode 0600, owned by root or [`Self::user`].
    pub env_file: Option<PathBuf>,
    /// Variables the command was given that the service gets from [`Self::env_file`]
    /// only (a token, alert URLs): with any, the file is required, and the service
    /// refuses to start without it rather than run without them (no token check, no
    /// alerts).
    pub env_required: Vec<String>,
    /// The service listens on a port below 1024 and needs `CAP_NET_BIND_SERVICE`.
    pub privileged_port: bool,
    /// Directories besides [`Self::home`] that the service writes (a log file's, a
    /// key file's that rotates, an authorized-clients file's): absolute. Where the
    /// format sandboxes the service (systemd), they are made writable.
    pub writable: Vec<PathBuf>,
    /// Files the service only reads that its arguments do not name (those a
    /// configuration file names, such as a router's pinned `.pub` file): absolute.
    /// With [`Self::writable`] and the arguments, where they lie decides whether a
    /// sandbox may hide home directories or /tmp from the service (systemd).
    pub reads: Vec<PathBuf>,
    /// How long the service drains its open connections when stopped: the init
    /// system waits that long and [`STOP_MARGIN`] more before it kills it (its own
    /// default would cut the drain short: 5 s for OpenRC, about 20 s for launchd).
    pub drain: std::time::Duration,
}

/// What a stop may take beyond the drain: the process's own stopping.
pub const STOP_MARGIN: std::time::Duration = std::time::Duration::from_secs(10);

impl ServiceSpec {
    /// Seconds the init system lets a stop take before it kills the service.
    fn stop_secs(&self) -> u64 {
        (self.drain + STOP_MARGIN).as_secs()
    }
}

impl ServiceSpec {
    /// Checks what every format relies on; each problem names the field and the fix.
    fn validate(&self) -> Result<(), Error> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self.name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !name_ok {
            return Err(Error::Config(format!(
                "invalid service name {:?}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
                self.name
            )));
        }
        let user_ok = !self.user.is_empty()
            && !self.user.starts_with('-')
            && self
                .user
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !user_ok {
            return Err(Error::Config(format!(
                "invalid service user {:?}: use an account name of letters, digits, '.', '_' or '-'",
                self.user
            )));
        }
        for (what, path) in [
            ("conduit binary", &self.binary),
            ("CONDUIT_HOME", &self.home),
        ]
        .into_iter()
        .chain(self.env_file.iter().map(|p| ("environment file", p)))
        .chain(self.writable.iter().map(|p| ("writable directory", p)))
        {
            if !path.is_absolute() {
                return Err(Error::Config(format!(
                    "the {what} path {} is relative: a service needs an absolute path",
                    path.display()
                )));
            }
            text(what, path)?;
        }
        for (k, _) in &self.env {
            let ok = k.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err(Error::Config(format!(
                    "invalid environment variable name {k:?}: use letters, digits and '_'"
                )));
            }
        }
        let strings = std::iter::once(&self.description)
            .chain(&self.args)
            .chain(self.env.iter().map(|(_, v)| v));
        for s in strings {
            if s.chars().any(char::is_control) {
                return Err(Error::Config(format!(
                    "{s:?} contains a control character, which service files cannot carry"
                )));
            }
        }
        Ok(())
    }

    /// [`Self::writable`] without those under [`Self::home`] (writable anyway) and
    /// without repeats, in order.
    fn extra_writable(&self) -> Vec<&Path> {
        let mut out: Vec<&Path> = Vec::new();
        for dir in &self.writable {
            if !dir.starts_with(&self.home) && !out.iter().any(|d| dir.starts_with(d)) {
                out.retain(|d| !d.starts_with(dir));
                out.push(dir);
            }
        }
        out
    }

    /// The environment the tunnel runs with: `CONDUIT_HOME` first, then [`Self::env`].
    fn environment(&self) -> Result<Vec<(String, String)>, Error> {
        let mut env = vec![(
            "CONDUIT_HOME".to_owned(),
            text("CONDUIT_HOME", &self.home)?.to_owned(),
        )];
        env.extend(self.env.iter().cloned());
        Ok(env)
    }
}

/// The service file for `kind`, as text.
pub fn render(kind: InitSystem, spec: &ServiceSpec) -> Result<String, Error> {
    spec.validate()?;
    match kind {
        InitSystem::Systemd => systemd::render(spec),
        InitSystem::OpenRc => openrc::render(spec),
        InitSystem::Launchd => launchd::render(spec),
        InitSystem::RcD => rcd::render(spec),
    }
}

/// A path as UTF-8 text without control characters, or why not.
fn text<'a>(what: &str, path: &'a Path) -> Result<&'a str, Error> {
    match path.to_str() {
        Some(s) => match s.chars().find(|c| c.is_control()) {
            None => Ok(s),
            Some(c) => Err(Error::Config(format!(
                "the {what} path {s:?} holds the control character {c:?}, which service \
                 files cannot carry; give a path without it"
            ))),
        },
        None => Err(Error::Config(format!(
            "the {what} path {} is not UTF-8 text, which service files cannot carry",
            path.display()
        ))),
    }
}

/// Characters that need no quoting in any shell word.
fn shell_safe(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(c, '/' | '.' | '_' | '-' | ':' | '=' | '@' | '%' | '+' | ',')
}

/// Quotes `s` as one POSIX shell word: bare when safe, else in single quotes (a single
/// quote inside becomes `'\''`).
fn sh_word(s: &str) -> String {
    if !s.is_empty() && s.chars().all(shell_safe) {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `words`, each quoted with [`sh_word`] and joined by spaces: a string that a shell
/// `eval` splits back into exactly `words`.
fn sh_words<'a>(words: impl IntoIterator<Item = &'a str>) -> String {
    words.into_iter().map(sh_word).collect::<Vec<_>>().join(" ")
}

/// `s` escaped for the inside of a double-quoted shell string.
fn sh_dquote_inner(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | '"' | '$' | '`') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A path for a shell script that `eval`s it unquoted (rc.subr and OpenRC do with
/// `command`): only characters that need no quoting are accepted.
fn sh_eval_path(what: &str, path: &Path) -> Result<String, Error> {
    let s = text(what, path)?;
    if s.chars().all(shell_safe) {
        Ok(s.to_owned())
    } else {
        Err(Error::Config(format!(
            "the {what} path {s:?} has characters an init script cannot carry unquoted; \
             use a path of letters, digits and / . _ - (e.g. install conduit in /usr/local/bin)"
        )))
    }
}

#[cfg(test)]
mod tests;
