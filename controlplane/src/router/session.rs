//! A tunnel's control session: heartbeats, key rotations asked for by the client,
//! the router's keys named as they change, and revocations, until the link ends.

use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use conduit_proto::{Message, PublicKey, Refusal, RefusalCode};
use tracing::{debug, info, warn};

use super::{State, lock};
use crate::Transport;
use crate::authorized::{REVOKED, not_admitted};
use crate::keys;
use crate::wire::Wire;

pub(super) async fn control_session(
    state: &State,
    mut wire: Wire,
    key: Option<PublicKey>,
    who: String,
    tunnel: String,
    version: u16,
) {
    let peer = wire.peer_addr();
    // The router's keys, for the tunnel to trust from now on, and again whenever
    // they change (the plain transport authenticates nobody: nothing to name there).
    let names_keys =
        version >= conduit_proto::version::ROUTER_KEYS && state.transport == Transport::Tls;
    let mut presented = state.identity.subscribe();
    let keys = presented.borrow_and_update().keys.clone();
    let silence = state.client_timeout;
    if names_keys
        && let Err(e) = send_within(&mut wire, &Message::RouterKeys { keys }, silence).await
    {
        debug!(%peer, "client left before RouterKeys: {}", e.why);
        return;
    }
    let comment = key
        .and_then(|k| state.authorized.lookup(&k))
        .unwrap_or_default();
    info!(%peer, client = %who, name = %comment, %tunnel, cipher = %wire.cipher(), "client connected");
    // The plain transport has no keys: its clients share the all-zero one.
    let link_key = key.unwrap_or(conduit_dataplane::usage::NO_KEY);
    let session = state
        .monitor
        .link_up(link_key, &comment, &tunnel, Some(peer), wire.cipher());
    let live = (key, tunnel.clone());
    lock(&state.sessions)
        .entry(live.clone())
        .or_default()
        .push(peer.ip());
    let mut silent = false;
    // When a Ping was last passed on to the monitor, and a RotateKey last answered.
    let mut beaten: Option<Instant> = None;
    let mut asked_rotation: Option<Instant> = None;
    let mut revocations = state.revoked.subscribe();
    let mut stopping = state.stopping.subscribe();
    let (clean, reason) = loop {
        let got = tokio::select! {
            got = tokio::time::timeout(silence, wire.recv()) => got,
            _ = revocations.changed() => {
                if let Some(k) = key.filter(|k| state.authorized.lookup(k).is_none()) {
                    // Expired (its line is still there) or removed.
                    let why = match state.authorized.expiry(&k) {
                        Some(_) => not_admitted(&state.authorized, &k),
                        None => REVOKED.to_owned(),
                    };
                    let bye = Refusal::new(RefusalCode::Unauthorized, why.clone());
                    let _ = send_within(&mut wire, &Message::Goodbye(bye), silence).await;
                    break (false, why);
                }
                continue;
            }
            Ok(()) = async { stopping.wait_for(|s| *s).await.map(drop) } => {
                // Streams in flight go on over their own channels until the drain ends.
                let why = "the router is shutting down";
                let bye = Refusal::new(RefusalCode::ShuttingDown, why);
                let _ = send_within(&mut wire, &Message::Goodbye(bye), silence).await;
                break (true, why.to_owned());
            }
            Ok(()) = presented.changed(), if names_keys => {
                let keys = presented.borrow_and_update().keys.clone();
                if let Err(e) = send_within(&mut wire, &Message::RouterKeys { keys }, silence).await {
                    silent = e.stalled;
                    break (false, e.why);
                }
                continue;
            }
        };
        match got {
            Err(_) => {
                silent = true;
                // Said to the client in case it is alive but pings too seldom (its
                // log then names the setting to change); a dead one reads nothing.
                let why = format!("no heartbeat for {silence:?}");
                let bye = Refusal::new(
                    RefusalCode::Protocol,
                    format!(
                        "the router heard {why} (its health.client_timeout_secs): unless the \
                         tunnel was stopped or starved, keep its \
                         performance.heartbeat_interval_secs at most half of that"
                    ),
                );
                let _ = send_within(&mut wire, &Message::Goodbye(bye), GOODBYE_WAIT).await;
                break (false, why);
            }
            Ok(Ok(Some(Message::Ping { nonce }))) => {
                // The monitor needs a beat a second at most: a client pinging
                // back to back must not flood it.
                if beaten.is_none_or(|at| at.elapsed() >= BEAT_EVERY) {
                    beaten = Some(Instant::now());
                    state.monitor.beat(session);
                }
                if let Err(e) = send_within(&mut wire, &Message::Pong { nonce }, silence).await {
                    silent = e.stalled;
                    break (false, e.why);
                }
            }
            Ok(Ok(Some(Message::Goodbye(r)))) => {
                break (true, format!("client said goodbye: {}", r.message));
            }
            Ok(Ok(Some(Message::RotateKey { next }))) => {
                // A client asks once per rotation (and per link): one asking again
                // and again is answered without the file being read each time.
                // (Counted from the last rotation tried, so one asking every few
                // seconds is served every ten.)
                let again = asked_rotation.filter(|at| at.elapsed() < ROTATION_ASKED_EVERY);
                let rotated = match again {
                    Some(at) => Err(format!(
                        "this link asked for a rotation {} ago; ask again in {}",
                        whole_secs(at.elapsed()),
                        whole_secs(ROTATION_ASKED_EVERY.saturating_sub(at.elapsed()))
                    )),
                    None => {
                        asked_rotation = Some(Instant::now());
                        rotate(state, key, next, &comment, peer.ip()).await
                    }
                };
                let reply = match rotated {
                    Ok(expires) => {
                        let at = humantime::format_rfc3339_seconds(expires);
                        info!(%peer, client = %who, %tunnel, next = %next, "client key rotated: the new key is authorized, the old one until {at}");
                        Message::KeyRotated {
                            expires: expires
                                .duration_since(UNIX_EPOCH)
                                .map_or(0, |d| d.as_secs()),
                        }
                    }
                    Err(why) if again.is_some() => {
                        Message::Refused(Refusal::new(RefusalCode::LimitReached, why))
                    }
                    Err(why) => {
                        warn!(%peer, client = %who, %tunnel, "key rotation refused: {why}");
                        Message::Refused(Refusal::new(RefusalCode::Unauthorized, why))
                    }
                };
                if let Err(e) = send_within(&mut wire, &reply, silence).await {
                    silent = e.stalled;
                    break (false, e.why);
                }
            }
            Ok(Ok(Some(other))) => {
                break (
                    false,
                    format!(
                        "protocol error: unexpected {} on the control channel",
                        other.name()
                    ),
                );
            }
            Ok(Ok(None)) => break (false, "connection closed without a goodbye".into()),
            Ok(Err(e)) => break (false, e.to_string()),
        }
    };
    state.monitor.link_down(session, clean, &reason);
    info!(%peer, client = %who, %tunnel, "client disconnected: {reason}");
    let others = {
        let mut sessions = lock(&state.sessions);
        let left = sessions.get_mut(&live).map_or(0, |from| {
            if let Some(i) = from.iter().position(|ip| *ip == peer.ip()) {
                from.swap_remove(i);
            }
            from.len()
        });
        if left == 0 {
            sessions.remove(&live);
        }
        left
    };
    // A client that stopped answering or reading (frozen, or behind a link that
    // drops everything) sends no reset either: its streams would hold their sources
    // open forever. Close them, unless the same tunnel is connected again meanwhile.
    if silent && others == 0 {
        state.dp.client_lost(
            key,
            &tunnel,
            &format!("the client stopped answering ({reason})"),
        );
    } else if !clean && others == 0 {
        // Closed without a goodbye: the tunnel is most likely gone. Its channels end
        // by themselves, but a stream waiting on a source that does not read never
        // looks at its channel.
        state.dp.client_gone(
            key,
            &tunnel,
            &format!("the client's link was lost ({reason})"),
        );
    }
}

/// Why a message did not reach the client.
#[derive(Debug)]
struct Unsent {
    /// The client read nothing for the whole time limit (rather than the
    /// connection failing).
    stalled: bool,
    /// What the log says.
    why: String,
}

/// Sends `msg` to the client within `limit` (the client timeout,
/// `health.client_timeout_secs`). A client that sends Pings but reads nothing fills
/// its receive window; without a limit the send would then hold the session, and
/// with it the heartbeat timeout and the revocation of its key, forever.
async fn send_within(wire: &mut Wire, msg: &Message, limit: Duration) -> Result<(), Unsent> {
    match tokio::time::timeout(limit, wire.send(msg)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Unsent {
            stalled: false,
            why: e.to_string(),
        }),
        Err(_) => Err(Unsent {
            stalled: true,
            why: format!(
                "the client read nothing for {limit:?}: a {} to it could not be sent",
                msg.name()
            ),
        }),
    }
}

/// Authorizes `next` in place of `key` in the authorized-clients file: `next` gets a
/// line of its own with the old one's name, and the old line gains
/// `expires=NOW+grace`. The file is replaced atomically and installed at once (the
/// client reconnects with `next` right after); returns when the old key expires.
pub(super) async fn rotate(
    state: &State,
    key: Option<PublicKey>,
    next: PublicKey,
    name: &str,
    from: IpAddr,
) -> Result<SystemTime, String> {
    let Some(key) = key else {
        return Err("the plain transport has no keys to rotate".into());
    };
    let Some(path) = &state.authorized_path else {
        return Err("this router's client keys do not come from a file".into());
    };
    if state.policy.names_client(&key) {
        return Err(format!(
            "the router's allow-list has rules for key {key} alone; rotate it by hand: add the \
             new key to authorized_clients and to those rules, then restart the tunnel with it \
             (or write the rules for the client's name, NAME=HOST:PORT, which rotation keeps)"
        ));
    }
    if let Some((ip, tunnel)) = in_use_elsewhere(&lock(&state.sessions), &key, from) {
        return Err(format!(
            "key {key} is also in use from {ip} (tunnel {tunnel:?}), which does not share this \
             tunnel's key file: rotating it would lock that host out once the old key expires; \
             give each host a key of its own (`conduit init` there, and its line in \
             authorized_clients), or set key_rotation_days = 0 where a key is copied between \
             hosts"
        ));
    }
    let mut recent = state.rotating.lock().await;
    let now = SystemTime::now();
    let expires = now + state.key_grace;
    let text = keys::read_trusted(path, "the authorized clients file").map_err(|e| match e {
        keys::Unread::Untrusted(e) => e.to_string(),
        keys::Unread::Io(e) => format!("cannot read {}: {e}", path.display()),
    })?;
    if let Ok(file) = keys::parse_authorized_file(&text)
        && file.names.contains_key(&next)
        && let Some(&old_expires) = file.expires.get(&key)
    {
        // This very rotation was made already: by another router sharing the file
        // (a tunnel with several routers asks each), or before an answer was lost.
        // The file says so; it is installed as it is.
        state
            .authorized
            .replace_with_expiry(file.names, file.expires);
        return Ok(old_expires);
    }
    // A client that rotated a moment ago (its key was made by that rotation) waits:
    // each rotation adds a line to the file and a key admitted through the grace
    // period, so a client rotating again and again would grow both without end.
    let born = Instant::now();
    recent.retain(|_, at| born.duration_since(*at) < MIN_KEY_AGE);
    if let Some(at) = recent.get(&key) {
        let age = born.duration_since(*at);
        return Err(format!(
            "key {key} was made by a rotation {} ago, and a client's key is rotated at most \
             once every {}: rotate it again in {}",
            whole_secs(age),
            whole_secs(MIN_KEY_AGE),
            whole_secs(MIN_KEY_AGE.saturating_sub(age))
        ));
    }
    let rotated = keys::rotate_authorized(&text, &key, &next, name, now, expires)?;
    let new = keys::parse_authorized_file(&rotated)
        .map_err(|(line, e)| format!("the rotated file does not parse at line {line}: {e}"))?;
    keys::replace_file(path, rotated.as_bytes()).map_err(|e| unwritable(path, &e))?;
    state.authorized.replace_with_expiry(new.names, new.expires);
    recent.insert(next, born);
    Ok(expires)
}

/// Why a rotation is refused when the authorized clients file at `path` could not be
/// written for `e`, and what to do: the router rotates a key by writing that file.
fn unwritable(path: &std::path::Path, e: &std::io::Error) -> String {
    use std::io::ErrorKind::{PermissionDenied, ReadOnlyFilesystem};
    let fix = match e.kind() {
        PermissionDenied | ReadOnlyFilesystem => {
            "let the user the router runs as write it and its directory (`chattr -i` if it \
             is immutable, a writable mount if it is read-only)"
        }
        _ => "check the disk it is on",
    };
    format!(
        "cannot write {}: {e}; the router rotates a client's key by writing that file: {fix}, \
         or turn key rotation off on the client (key_rotation_days = 0, or \
         --key-rotation-days 0)",
        path.display()
    )
}

/// A live session with `key` from another address than `from`, and its tunnel: a
/// copy of the key on another host (replicas, a key copied by hand), which a
/// rotation would leave with a key that expires. Tunnels on the rotating tunnel's
/// host may share its key file, which hands them the new key.
fn in_use_elsewhere(
    sessions: &super::Sessions,
    key: &PublicKey,
    from: IpAddr,
) -> Option<(IpAddr, String)> {
    sessions
        .iter()
        .filter(|((k, _), _)| k.as_ref() == Some(key))
        .find_map(|((_, tunnel), ips)| {
            ips.iter()
                .find(|ip| **ip != from)
                .map(|ip| (*ip, tunnel.clone()))
        })
}

/// How often a link's heartbeats reach the monitor at most (a little under a
/// second, so that pings a second apart, give or take, all do).
const BEAT_EVERY: Duration = Duration::from_millis(900);

/// How long a goodbye to a client that went silent may take to send.
const GOODBYE_WAIT: Duration = Duration::from_secs(1);

/// How soon one link may ask for a key rotation again.
const ROTATION_ASKED_EVERY: Duration = Duration::from_secs(10);

/// How long after a rotation the key it made may be rotated again.
pub(super) const MIN_KEY_AGE: Duration = Duration::from_secs(3600);

fn whole_secs(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_secs(d.as_secs().max(1)))
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpSocket;

    use super::*;

    /// An authorized clients file the router may not write (immutable, read-only,
    /// another user's): the refusal says how to let it, or how to stop asking.
    #[test]
    fn a_rotation_refused_for_a_file_it_cannot_write_says_what_to_do() {
        let path = std::path::Path::new("/etc/conduit/authorized_clients");
        let eperm = std::io::Error::from_raw_os_error(1);
        assert_eq!(
            unwritable(path, &eperm),
            format!(
                "cannot write /etc/conduit/authorized_clients: {eperm}; the router rotates a \
                 client's key by writing that file: let the user the router runs as write it \
                 and its directory (`chattr -i` if it is immutable, a writable mount if it is \
                 read-only), or turn key rotation off on the client (key_rotation_days = 0, \
                 or --key-rotation-days 0)"
            )
        );
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        assert_eq!(
            unwritable(path, &full),
            format!(
                "cannot write /etc/conduit/authorized_clients: {full}; the router rotates a \
                 client's key by writing that file: check the disk it is on, or turn key \
                 rotation off on the client (key_rotation_days = 0, or --key-rotation-days 0)"
            )
        );
    }

    /// A client that never reads what the router sends: the send that finds its
    /// window and the router's buffer full ends at the time limit, not never.
    #[tokio::test(start_paused = true)]
    async fn a_send_to_a_client_that_reads_nothing_ends_at_the_time_limit() {
        // Small buffers on both ends (the accepted socket inherits the listener's),
        // so that they fill after a few thousand Pongs.
        let listening = TcpSocket::new_v4().unwrap();
        listening.set_send_buffer_size(4096).unwrap();
        listening.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = listening.listen(1).unwrap();
        let client = TcpSocket::new_v4().unwrap();
        client.set_recv_buffer_size(4096).unwrap();
        let client = client
            .connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let mut wire = Wire::plain(tcp).unwrap();
        let limit = Duration::from_secs(15);
        let mut nonce = 0;
        let (unsent, started) = loop {
            let started = tokio::time::Instant::now();
            match send_within(&mut wire, &Message::Pong { nonce }, limit).await {
                Ok(()) => nonce += 1,
                Err(e) => break (e, started),
            }
            assert!(nonce < 1_000_000, "the buffers never filled");
        };
        assert!(unsent.stalled);
        assert_eq!(
            unsent.why,
            "the client read nothing for 15s: a Pong to it could not be sent"
        );
        let waited = started.elapsed();
        assert!(
            waited >= limit && waited < limit + Duration::from_secs(1),
            "{waited:?}"
        );
        drop(client);
    }

    /// A client that closed its connection: the send fails at once, not stalled.
    #[tokio::test]
    async fn a_send_to_a_closed_client_fails_without_waiting() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let mut wire = Wire::plain(tcp).unwrap();
        drop(client);
        // The first send may still be taken by the kernel; the reset fails a later one.
        let mut unsent = None;
        for nonce in 0..100 {
            if let Err(e) = send_within(
                &mut wire,
                &Message::Pong { nonce },
                Duration::from_secs(3600),
            )
            .await
            {
                unsent = Some(e);
                break;
            }
        }
        let unsent = unsent.unwrap();
        assert!(!unsent.stalled, "{unsent:?}");
    }

    #[test]
    fn a_key_in_use_from_another_host_is_named() {
        let key = conduit_proto::KeyPair::generate().unwrap().public();
        let other = conduit_proto::KeyPair::generate().unwrap().public();
        let here: IpAddr = "10.0.0.5".parse().unwrap();
        let there: IpAddr = "10.0.0.6".parse().unwrap();
        let mut sessions = std::collections::HashMap::new();
        // This host's tunnels (one reconnecting: two sessions), another key elsewhere.
        sessions.insert((Some(key), "web".to_owned()), vec![here, here]);
        sessions.insert((Some(key), "db".to_owned()), vec![here]);
        sessions.insert((Some(other), "web".to_owned()), vec![there]);
        assert_eq!(in_use_elsewhere(&sessions, &key, here), None);
        // A replica on another host with the same key, under another tunnel name too.
        sessions.insert((Some(key), "web-2".to_owned()), vec![there]);
        assert_eq!(
            in_use_elsewhere(&sessions, &key, here),
            Some((there, "web-2".to_owned()))
        );
    }
}
