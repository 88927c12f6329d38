//! Values and parsers the router's and the tunnels' flags share.

use clap::ValueEnum;
use conduit_proto::Secret;
use conduit_proto::tls::Suites;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum TransportArg {
    Tls,
    Plain,
}

impl From<TransportArg> for conduit_controlplane::Transport {
    fn from(t: TransportArg) -> Self {
        match t {
            TransportArg::Tls => Self::Tls,
            TransportArg::Plain => Self::Plain,
        }
    }
}

pub(super) fn parse_suites(s: &str) -> Result<Suites, String> {
    Suites::parse_list(s)
}

/// A token or a URL with a secret in it: not empty. What else is wrong with it is
/// said where it is used, as clap would repeat the value in its error.
pub(crate) fn parse_secret(s: &str) -> Result<Secret, String> {
    if s.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(Secret::new(s.to_owned()))
    }
}

/// true/false as a configuration file's environment variables take it (`yes`, `on`,
/// `1` and their opposites too).
pub(super) fn parse_bool(s: &str) -> Result<bool, String> {
    conduit_controlplane::config::parse_bool(s)
}
