//! What `list`, `status`, `kill` and `keys rotate` share: the registry's tunnels and
//! their answers.

use std::time::Duration;

use conduit_controlplane::Home;
use conduit_controlplane::control::{self, pb};
use conduit_controlplane::registry::{Died, Entry, Registry, Unreadable, Waiting, process_alive};
use conduit_controlplane::timestamp;
use futures::future::join_all;

/// The tunnels a command names: every running one (`all`), or the one named or
/// with id `tunnel`.
pub(crate) fn chosen(
    registry: &Registry,
    all: bool,
    tunnel: Option<&str>,
) -> anyhow::Result<Vec<Entry>> {
    registry.readable().map_err(anyhow::Error::msg)?;
    if all {
        return Ok(registry.entries());
    }
    let key = tunnel.unwrap_or_default();
    match registry.find(key) {
        Some(e) => Ok(vec![e]),
        None => Err(crate::exit::Usage(format!(
            "no tunnel named or with id {key:?} is running (`conduit list` shows the running ones)"
        ))
        .into()),
    }
}

/// A registered tunnel and what its control API said (or why it could not).
pub(crate) struct Seen {
    pub(crate) entry: Entry,
    pub(crate) status: Result<pb::StatusResponse, String>,
    pub(crate) connections: Vec<pb::Connection>,
}

/// What commands say of a live tunnel whose control API does not answer.
pub(crate) const NO_ANSWER: &str =
    "control socket does not answer (the process may be stopped or overloaded)";

/// A control request's failure in words: the timeout tonic reports as "Timeout
/// expired" says what it means for a tunnel.
pub(crate) fn control_failed(message: &str) -> String {
    if message == "Timeout expired" {
        "its control socket did not answer in time (the process may be stopped or \
         overloaded)"
            .to_owned()
    } else {
        message.to_owned()
    }
}

/// How long one tunnel gets to answer a survey; all are asked at once, so this
/// bounds the whole survey. Shorter than the control client's own request timeout,
/// so a silent tunnel is always reported in the same words.
pub(crate) const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// Asks every live tunnel for its status (and connections, if asked), all at once.
pub(crate) async fn survey(home: &Home, with_connections: bool) -> anyhow::Result<Vec<Seen>> {
    let registry = Registry::new(home);
    registry.readable().map_err(anyhow::Error::msg)?;
    warn_unreadable(&registry);
    let asked = registry
        .entries()
        .into_iter()
        .map(|entry| look(&registry, entry, with_connections));
    Ok(join_all(asked).await.into_iter().flatten().collect())
}

/// Warns (on stderr) of each live tunnel whose registry entry this version cannot
/// read, with how to stop it, and returns them.
pub(crate) fn warn_unreadable(registry: &Registry) -> Vec<Unreadable> {
    let all = registry.unreadable();
    for u in &all {
        let name = u.name.as_deref().unwrap_or("?");
        if u.damaged {
            eprintln!(
                "warning: {}: the entry of tunnel {name:?} is damaged ({}), and pid {} holds \
                 its name: that tunnel runs on, unseen by list, status and health, and out of \
                 conduit kill's reach. Stop it with `kill {}` once you have checked that it is \
                 that tunnel (`ps -p {2}`; it drains, then removes the entry) and start it again",
                u.path.display(),
                u.why,
                u.pid,
                u.pid,
            );
            continue;
        }
        let stop = match u.verified {
            true => format!("or stop it with `kill {}`", u.pid),
            // No start time to check the pid against: it may be another process now.
            false => format!(
                "or stop it once you have checked that pid {} is that tunnel (`ps -p {0}`; \
                 the entry records no start time to tell)",
                u.pid
            ),
        };
        eprintln!(
            "warning: {}: tunnel {name:?} (pid {}) is registered in a form this conduit {} \
             cannot read ({}); a newer conduit started it? Manage it with that one, {stop}",
            u.path.display(),
            u.pid,
            env!("CARGO_PKG_VERSION"),
            u.why,
        );
    }
    all
}

/// One tunnel's answer; `None` when its process turned out to be gone.
pub(crate) async fn look(
    registry: &Registry,
    entry: Entry,
    with_connections: bool,
) -> Option<Seen> {
    let mut c = match control::connect(&entry.control_socket).await {
        Ok(c) => c,
        Err(e) => {
            if !process_alive(entry.pid) {
                // It died between the registry read and now.
                registry.sweep_dead(&entry);
                return None;
            }
            return Some(Seen {
                entry,
                status: Err(e.to_string()),
                connections: Vec::new(),
            });
        }
    };
    let asked = async {
        let status = c
            .get_status(pb::StatusRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|e| format!("{NO_ANSWER}: {}", e.message()))?;
        let connections = if with_connections {
            c.list_connections(pb::ListConnectionsRequest {})
                .await
                .map(|r| r.into_inner().connections)
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        Ok((status, connections))
    };
    let (status, connections) = match tokio::time::timeout(ANSWER_WITHIN, asked).await {
        Ok(Ok((status, connections))) => (Ok(status), connections),
        Ok(Err(why)) => (Err(why), Vec::new()),
        Err(_) => (Err(NO_ANSWER.to_owned()), Vec::new()),
    };
    Some(Seen {
        entry,
        status,
        connections,
    })
}

/// The supervised tunnels of `home` waiting to start again after a failure (they
/// have no process meanwhile), not counting any that runs again by now.
pub(crate) fn waiting(home: &Home, running: &[Seen]) -> Vec<Waiting> {
    (Registry::new(home).waiting().into_iter())
        .filter(|w| !running.iter().any(|s| s.entry.name == w.name))
        .collect()
}

/// What `status` and `health` say of a tunnel whose process died.
pub(crate) fn died_detail(d: &Died) -> String {
    format!(
        "its process (pid {}) ended without being stopped (killed, or crashed; found {}): \
         start it again, or `conduit kill --tunnel {}` to forget it",
        d.pid, d.found_at, d.name
    )
}

/// When a waiting tunnel starts again, as `status` says it: `in 12s`, or
/// `any moment now`.
pub(crate) fn restart_in(w: &Waiting) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    match w.restart_at - now {
        secs @ 1.. => format!("in {secs}s"),
        _ => "any moment now".to_owned(),
    }
}

/// The tunnels whose `what` (stats, status) could not be read (name, id, why) fail
/// the command, each named, with the command that stops the first should it stay
/// stuck.
pub(crate) fn unreadable(what: &str, unread: &[(String, String, String)]) -> anyhow::Result<()> {
    let Some((_, first, _)) = unread.first() else {
        return Ok(());
    };
    let each: Vec<String> = (unread.iter())
        .map(|(name, id, why)| format!("{name} ({id}): {why}"))
        .collect();
    let stop = match unread {
        [_] => format!("should it stay stuck, `conduit kill --tunnel {first} --force` stops it"),
        _ => format!(
            "should they stay stuck, `conduit kill --tunnel ID --force` stops each (ids: {})",
            (unread.iter())
                .map(|(_, id, _)| id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    Err(anyhow::anyhow!(
        "could not read the {what} of {}; {stop}",
        each.join("; ")
    ))
}

/// Bytes as people read them.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Unix seconds as RFC 3339 (a time before 1970 as 1970); a time past year 9999,
/// which RFC 3339 cannot write, as its number.
pub(crate) fn time(unix: i64) -> String {
    timestamp::unix_rfc3339(unix.max(0).unsigned_abs())
        .unwrap_or_else(|| format!("{unix} (Unix seconds, past year 9999)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_like_people_write_them() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(1_500), "1.5 kB");
        assert_eq!(bytes(64 << 20), "67.1 MB");
    }

    #[test]
    fn times_past_year_9999_are_written_as_numbers_not_a_panic() {
        assert_eq!(time(1_764_612_000), "2025-12-01T18:00:00Z");
        assert_eq!(time(-5), "1970-01-01T00:00:00Z");
        // The first second of year 10000.
        assert_eq!(
            time(253_402_300_800),
            "253402300800 (Unix seconds, past year 9999)"
        );
        assert_eq!(
            time(i64::MAX),
            "9223372036854775807 (Unix seconds, past year 9999)"
        );
    }
}
