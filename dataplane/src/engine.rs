//! I/O engines: io_uring where the kernel allows it, epoll (Linux) or kqueue (macOS)
//! elsewhere, chosen at start and overridable with `--io-engine`.
//!
//! Containers often block io_uring with seccomp; the fallback engine is the same
//! code on a different monoio driver, not a second implementation.

use std::fmt;
use std::future::Future;
use std::io;
use std::str::FromStr;

/// What the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Engine {
    /// io_uring if usable, else the readiness engine.
    #[default]
    Auto,
    /// io_uring, or fail.
    Uring,
    /// epoll (Linux) / kqueue (macOS).
    Epoll,
}

impl FromStr for Engine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "uring" | "io_uring" | "io-uring" => Ok(Self::Uring),
            "epoll" | "kqueue" | "legacy" => Ok(Self::Epoll),
            other => Err(format!(
                "unknown io engine {other:?}; use auto, uring or epoll"
            )),
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Uring => "uring",
            Self::Epoll => "epoll",
        })
    }
}

/// The engine actually running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// monoio's io_uring driver.
    Uring,
    /// monoio's legacy driver (epoll on Linux, kqueue on macOS).
    Epoll,
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Uring => "io_uring",
            Self::Epoll if cfg!(target_os = "linux") => "epoll",
            Self::Epoll => "kqueue",
        })
    }
}

/// True when this kernel offers every io_uring operation the data plane uses.
pub fn uring_usable() -> bool {
    monoio::utils::detect_uring()
}

/// The engines this machine can run.
pub fn available() -> Vec<EngineKind> {
    let mut v = Vec::new();
    if uring_usable() {
        v.push(EngineKind::Uring);
    }
    v.push(EngineKind::Epoll);
    v
}

/// Resolves a request against what the machine offers.
pub fn resolve(engine: Engine) -> Result<EngineKind, crate::DataplaneError> {
    match engine {
        Engine::Auto if uring_usable() => Ok(EngineKind::Uring),
        Engine::Auto | Engine::Epoll => Ok(EngineKind::Epoll),
        Engine::Uring if uring_usable() => Ok(EngineKind::Uring),
        Engine::Uring => Err(crate::DataplaneError::UringUnavailable),
    }
}

/// Runs `fut` to completion on a fresh runtime of the given engine, on this thread.
pub(crate) fn block_on<F: Future>(kind: EngineKind, fut: F) -> io::Result<F::Output> {
    match kind {
        #[cfg(target_os = "linux")]
        EngineKind::Uring => Ok(monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .with_entries(4096)
            .build()?
            .block_on(fut)),
        #[cfg(not(target_os = "linux"))]
        EngineKind::Uring => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "io_uring exists only on Linux",
        )),
        EngineKind::Epoll => Ok(monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()?
            .block_on(fut)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_engine_names() {
        assert_eq!("auto".parse(), Ok(Engine::Auto));
        assert_eq!("io_uring".parse(), Ok(Engine::Uring));
        assert_eq!("EPOLL".parse(), Ok(Engine::Epoll));
        assert_eq!(
            "iocp".parse::<Engine>(),
            Err("unknown io engine \"iocp\"; use auto, uring or epoll".into())
        );
    }

    #[test]
    fn epoll_is_always_available_and_runs() {
        assert!(available().contains(&EngineKind::Epoll));
        assert_eq!(resolve(Engine::Epoll).unwrap(), EngineKind::Epoll);
        assert_eq!(block_on(EngineKind::Epoll, async { 7 }).unwrap(), 7);
        if uring_usable() {
            assert_eq!(block_on(EngineKind::Uring, async { 8 }).unwrap(), 8);
        }
    }
}
