//! Exit codes (sysexits.h where one fits).

use conduit_controlplane::Error;

/// Bad arguments or configuration (EX_USAGE).
pub(crate) const USAGE: u8 = 64;
/// The network or a peer is unavailable (EX_UNAVAILABLE).
pub(crate) const UNAVAILABLE: u8 = 69;
/// Output could not be written: stdout full or closed (EX_IOERR).
pub(crate) const IOERR: u8 = 74;
/// A peer answered, but not what it should: an error, or not its protocol (EX_PROTOCOL).
pub(crate) const PROTOCOL: u8 = 76;
/// A peer refused who we are, or is not who it must be (EX_NOPERM).
pub(crate) const NOPERM: u8 = 77;
/// Anything else.
pub(crate) const FAILURE: u8 = 1;

/// A usage error raised by a command after parsing (e.g. a bad address).
#[derive(Debug)]
pub(crate) struct Usage(pub(crate) String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// A peer's answer that cannot be used (a router's API answering an error), raised by a
/// command: exit 76, apart from 1, which `health` keeps for "something is down".
#[derive(Debug)]
pub(crate) struct BadAnswer(pub(crate) String);

impl std::fmt::Display for BadAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadAnswer {}

/// A command that failed in several parts (`up`'s tunnels), with the exit code
/// they share, or 1.
#[derive(Debug)]
pub(crate) struct Failed {
    pub(crate) message: String,
    pub(crate) code: u8,
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failed {}

/// The exit code of failures that share one (every tunnel refused the same way),
/// else 1.
pub(crate) fn shared_code(codes: impl IntoIterator<Item = u8>) -> u8 {
    let mut codes = codes.into_iter();
    let first = codes.next().unwrap_or(FAILURE);
    if codes.all(|c| c == first) {
        first
    } else {
        FAILURE
    }
}

pub(crate) fn code_for(e: &anyhow::Error) -> u8 {
    if let Some(f) = e.downcast_ref::<Failed>() {
        return f.code;
    }
    if e.downcast_ref::<Usage>().is_some() {
        return USAGE;
    }
    if e.downcast_ref::<BadAnswer>().is_some() {
        return PROTOCOL;
    }
    if e.downcast_ref::<crate::output::StdoutError>().is_some() {
        return IOERR;
    }
    if e.downcast_ref::<crate::commands::Unhealthy>().is_some() {
        return FAILURE;
    }
    match e.downcast_ref::<Error>() {
        Some(Error::Config(_) | Error::File { .. }) => USAGE,
        Some(Error::Authentication(_)) => NOPERM,
        Some(Error::Network { .. } | Error::Listen { .. } | Error::Dataplane(_)) => UNAVAILABLE,
        Some(Error::Launch { code, .. }) => u8::try_from(*code).unwrap_or(FAILURE),
        Some(_) => FAILURE,
        None => FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_keep_the_code_they_share() {
        assert_eq!(shared_code([NOPERM, NOPERM]), NOPERM);
        assert_eq!(shared_code([UNAVAILABLE]), UNAVAILABLE);
        assert_eq!(shared_code([NOPERM, UNAVAILABLE]), FAILURE);
        assert_eq!(shared_code([]), FAILURE);
    }
}
