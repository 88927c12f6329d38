//! How a tunnel or router process stops: the signals that stop it (the first drains
//! open connections, a later one closes them now, as most servers do), and the line
//! it logs as it ends, saying why and how the drain went.
//!
//! What it does **not** do: drain (the data plane does, see
//! [`conduit_dataplane::DataPlane::stop`]), or act on the signals that do not stop a
//! process (a router's SIGHUP and SIGUSR1, see `signals.rs`).

use std::time::Duration;

use conduit_dataplane::{DataPlane, Drained};
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

/// The line a process logs as it ends, after `why` stopped it (a signal's name, or
/// what asked it to stop) and its drain of up to `drain` went as `d` says.
pub fn stopped_line(what: &str, why: &str, drain: Duration, d: Drained) -> String {
    let how = if d.open == 0 {
        "no connection was open".to_owned()
    } else if d.closed == 0 {
        match d.open {
            1 => "the open connection finished within the drain".to_owned(),
            n => format!("all {n} open connections finished within the drain"),
        }
    } else if d.cut_short {
        format!(
            "the drain was cut short (a second stop signal, `kill --force`, or a drain \
             timeout of 0): closed {} of {}",
            d.closed,
            connections(d.open as u64, "open connection")
        )
    } else {
        format!(
            "the drain deadline ({drain:?}) passed: closed {} of {}",
            d.closed,
            connections(d.open as u64, "open connection")
        )
    };
    format!("{what} stopped ({why}): {how}")
}

/// `1 open connection`, `2 open connections`.
fn connections(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drained(open: usize, closed: usize, cut_short: bool) -> Drained {
        Drained {
            open,
            closed,
            cut_short,
        }
    }

    #[test]
    fn the_last_line_says_why_and_how_the_drain_went() {
        let d = Duration::from_secs(30);
        let line = |why, x| stopped_line("tunnel \"web\"", why, d, x);
        assert_eq!(
            line("SIGTERM", drained(0, 0, false)),
            "tunnel \"web\" stopped (SIGTERM): no connection was open"
        );
        assert_eq!(
            line("SIGINT", drained(1, 0, false)),
            "tunnel \"web\" stopped (SIGINT): the open connection finished within the drain"
        );
        assert_eq!(
            line("SIGHUP", drained(3, 0, false)),
            "tunnel \"web\" stopped (SIGHUP): all 3 open connections finished within the drain"
        );
        assert_eq!(
            line("SIGTERM", drained(3, 2, false)),
            "tunnel \"web\" stopped (SIGTERM): the drain deadline (30s) passed: closed 2 of 3 \
             open connections"
        );
        assert_eq!(
            line("SIGTERM", drained(1, 1, true)),
            "tunnel \"web\" stopped (SIGTERM): the drain was cut short (a second stop signal, \
             `kill --force`, or a drain timeout of 0): closed 1 of 1 open connection"
        );
    }
}
