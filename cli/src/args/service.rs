//! `--service-file` and its flags: write a service file instead of running.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

/// The init systems `--service-file` writes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ServiceKind {
    /// A systemd unit (Linux).
    Systemd,
    /// An OpenRC script run by supervise-daemon (Alpine, Gentoo).
    Openrc,
    /// A launchd job for /Library/LaunchDaemons (macOS).
    Launchd,
    /// An rc.d script run by daemon(8) (FreeBSD).
    #[value(name = "rc.d")]
    RcD,
}

/// Flags that turn a command into "write a service file that runs this command".
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Service file")]
pub(crate) struct ServiceArgs {
    /// Instead of running, print a service file for this init system; the service
    /// runs the same command in the foreground.
    #[arg(long, value_enum, value_name = "KIND")]
    pub(crate) service_file: Option<ServiceKind>,
    /// Write the service file here instead of printing it.
    #[arg(short = 'o', long, value_name = "PATH", requires = "service_file")]
    pub(crate) output: Option<PathBuf>,
    /// The service's name (default: conduit-NAME, NAME being the tunnel's for start,
    /// `router` for a router, the file's for up: conduit-edge for edge.toml; a NAME
    /// that starts with conduit stays as it is, so conduit.toml gives conduit); a
    /// systemd unit's trailing .service may be given or not.
    #[arg(long, value_name = "NAME", requires = "service_file")]
    pub(crate) service_name: Option<String>,
    /// The account the service runs as (default: the current user).
    #[arg(long, value_name = "USER", requires = "service_file")]
    pub(crate) service_user: Option<String>,
    /// The file of secrets (CONDUIT_TOKEN=...) the service reads at start (default:
    /// /etc/conduit/NAME.env; /usr/local/etc/conduit/NAME.env for launchd and rc.d).
    #[arg(long, value_name = "PATH", requires = "service_file")]
    pub(crate) service_env_file: Option<PathBuf>,
}
