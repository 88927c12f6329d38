//! How a tunnel or router process stops: the signals that stop it (the first drains
//! open connections, a later one closes them now, as most servers do).
//!
//! What it does **not** do: drain (the data plane does, see
//! [`conduit_dataplane::DataPlane::stop`]), or act on the signals that do not stop a
//! process (a router's SIGHUP and SIGUSR1, see `signals.rs`).

use std::time::Duration;

use conduit_dataplane::DataPlane;
use tracing::warn;

/// The signals that stop a process gracefully, in the order they arrive.
///
/// The handlers are installed when this is made, not when it is first polled: make
/// it before announcing that the process is up, so that a signal sent right after
/// the announcement drains instead of ending the process with the default action.
pub struct StopSignals {
    #[cfg(unix)]
    streams: Vec<(tokio::signal::unix::Signal, &'static str)>,
}

impl StopSignals {
    /// SIGINT and SIGTERM; and SIGHUP too when `hangup`, for a process in a
    /// terminal, which closing the terminal stops as SIGTERM does (a router reads
    /// `authorized_clients` again on SIGHUP instead, and a background tunnel ignores
    /// it). Must be called within a Tokio runtime.
    pub fn listen(hangup: bool) -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut kinds = vec![
                (SignalKind::interrupt(), "SIGINT"),
                (SignalKind::terminate(), "SIGTERM"),
            ];
            if hangup {
                kinds.push((SignalKind::hangup(), "SIGHUP"));
            }
            let streams = (kinds.into_iter())
                .filter_map(|(kind, name)| match signal(kind) {
                    Ok(s) => Some((s, name)),
                    Err(e) => {
                        // Its default action stays: it still ends the process, at once.
                        warn!(
                            "cannot listen for {name} ({e}); it stops this process without a drain"
                        );
                        None
                    }
                })
                .collect();
            Self { streams }
        }
        #[cfg(not(unix))]
        {
            let _ = hangup;
            Self {}
        }
    }

    /// The next stop signal to arrive: its name (`SIGTERM`); never, without any.
    pub async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            std::future::poll_fn(|cx| {
                for (s, name) in &mut self.streams {
                    if let std::task::Poll::Ready(Some(())) = s.poll_recv(cx) {
                        return std::task::Poll::Ready(*name);
                    }
                }
                std::task::Poll::Pending
            })
            .await
        }
        #[cfg(not(unix))]
        {
            match tokio::signal::ctrl_c().await {
                Ok(()) => "Ctrl-C",
                Err(_) => std::future::pending().await,
            }
        }
    }
}

/// A stop signal arrived while the process drains: its open connections are closed
/// now instead of at the drain deadline, and the log says so.
pub(crate) fn cut_drain(dp: &DataPlane, signal: &str) {
    let open = dp.totals().active;
    dp.cut_drain(Duration::ZERO);
    warn!(
        "{signal} while stopping: closing {} now",
        connections(open, "open connection")
    );
}

/// `1 open connection`, `2 open connections`.
fn connections(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}
