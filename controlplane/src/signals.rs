//! Signals a router acts on while it runs (SIGHUP: read `authorized_clients` again;
//! SIGUSR1: rotate its key now), as streams a `select!` can wait on. Where a signal
//! cannot be listened for, its stream never yields and the router says what it does
//! without it.

use tracing::warn;

/// A signal's arrivals (nothing on platforms without Unix signals).
pub(crate) struct Signals(#[cfg(unix)] Option<tokio::signal::unix::Signal>);

/// Which signal.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Which {
    Hangup,
    User1,
}

impl Signals {
    /// Listens for `which`; `otherwise` says, when that fails, what happens without.
    pub(crate) fn listen(which: Which, otherwise: &str) -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let (kind, name) = match which {
                Which::Hangup => (SignalKind::hangup(), "SIGHUP"),
                Which::User1 => (SignalKind::user_defined1(), "SIGUSR1"),
            };
            match signal(kind) {
                Ok(s) => Self(Some(s)),
                Err(e) => {
                    warn!("cannot listen for {name} ({e}); {otherwise}");
                    Self(None)
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = (which, otherwise);
            Self()
        }
    }

    /// The next arrival; never, once the stream has ended or without one.
    pub(crate) async fn next(&mut self) {
        #[cfg(unix)]
        if let Some(s) = &mut self.0 {
            if s.recv().await.is_some() {
                return;
            }
            self.0 = None;
        }
        std::future::pending::<()>().await;
    }
}
