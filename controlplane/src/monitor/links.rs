//! Client links as the router sees them: one per (client key, tunnel name), made of the
//! control sessions that tunnel keeps (normally one; two while a reconnect overlaps the
//! old session's timeout).
//!
//! A link is `connected` while it has a session, `lost` when its last session ended
//! without a `Goodbye` (heartbeats stopped, the connection broke), and `disconnected`
//! when the client said goodbye. Losing a link and getting it back are the transitions
//! worth an alert; a clean goodbye and a later reconnect are not.
//!
//! A link that is not connected is forgotten after `health.lost_link_expiry_secs` (a
//! tunnel gone for good stops making the router `degraded`), and every link of a key
//! at once when the key is removed from authorized_clients. A lost link forgotten
//! that way was reported lost and never back: if it returns, it is reported back.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use conduit_proto::PublicKey;
use tracing::warn;

/// Links kept per client key at most (tunnel names come from the client); beyond
/// that, the oldest link that is not connected is forgotten.
pub(crate) const MAX_LINKS_PER_CLIENT: usize = 64;

/// Lost links forgotten before they came back, kept at most (each a key and a
/// tunnel name); beyond that, a forgotten link's return goes unreported.
const MAX_FORGOTTEN_LOST: usize = 4096;

/// The state of one link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// At least one control session is up.
    Connected,
    /// The last session ended without a goodbye.
    Lost,
    /// The client said goodbye.
    Disconnected,
}

impl LinkState {
    /// The word the API and metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Connected => "connected",
            LinkState::Lost => "lost",
            LinkState::Disconnected => "disconnected",
        }
    }
}

/// One link, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkView {
    /// The client's key.
    pub key: PublicKey,
    /// The client's name (its comment in authorized_clients).
    pub name: String,
    /// The tunnel's name, as the client announced it.
    pub tunnel: String,
    /// Its state.
    pub state: LinkState,
    /// Since when.
    pub since: SystemTime,
    /// Where the newest session comes from.
    pub peer: Option<SocketAddr>,
    /// Where each live session comes from, in order: two from one host while a
    /// reconnect overlaps the old session, one from each host that runs the tunnel
    /// when several do with one key (replicas).
    pub peers: Vec<SocketAddr>,
    /// The TLS cipher suite of the newest session (`plain` on the plain transport).
    pub cipher: &'static str,
    /// The newest heartbeat of any of its sessions.
    pub last_heartbeat: Option<SystemTime>,
    /// Why it was lost or disconnected.
    pub reason: Option<String>,
}

/// A change worth telling the operator about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkChange {
    /// The last session ended without a goodbye.
    Lost(LinkView),
    /// A lost link has a session again.
    Back(LinkView),
}

#[derive(Debug)]
struct Link {
    view: LinkView,
    sessions: HashMap<u64, Option<SocketAddr>>,
}

/// A control session that started: whose, for which tunnel, from where, over which
/// cipher suite.
#[derive(Debug, Clone)]
pub struct Started {
    /// The session's id.
    pub session: u64,
    /// The client's key.
    pub key: PublicKey,
    /// The client's name (its comment in authorized_clients).
    pub name: String,
    /// The tunnel's name.
    pub tunnel: String,
    /// Where it comes from.
    pub peer: Option<SocketAddr>,
    /// Its TLS cipher suite (`plain` on the plain transport).
    pub cipher: &'static str,
}

impl Link {
    /// The addresses of its live sessions, in order.
    fn peers(&self) -> Vec<SocketAddr> {
        let mut p: Vec<SocketAddr> = self.sessions.values().flatten().copied().collect();
        p.sort_unstable();
        p
    }
}

/// Every link, owned by the monitor task.
#[derive(Debug, Default)]
pub struct Links {
    links: BTreeMap<(PublicKey, String), Link>,
    by_session: HashMap<u64, (PublicKey, String)>,
    /// Links forgotten while lost: reported lost, not yet back.
    forgotten_lost: HashSet<(PublicKey, String)>,
}

impl Links {
    /// Remembers that `link`, about to be forgotten, was lost, so that its return is
    /// reported as it would have been.
    fn remember_if_lost(forgotten_lost: &mut HashSet<(PublicKey, String)>, link: &Link) {
        if link.view.state == LinkState::Lost && forgotten_lost.len() < MAX_FORGOTTEN_LOST {
            forgotten_lost.insert((link.view.key, link.view.tunnel.clone()));
        }
    }

    /// A control session started.
    pub fn up(&mut self, started: Started, now: SystemTime) -> Option<LinkChange> {
        let Started {
            session,
            key,
            name,
            tunnel,
            peer,
            cipher,
        } = started;
        let id = (key, tunnel.clone());
        if !self.links.contains_key(&id) {
            self.make_room(&key);
        }
        let returning = self.forgotten_lost.remove(&id);
        let link = self.links.entry(id.clone()).or_insert_with(|| Link {
            view: LinkView {
                key,
                name: name.clone(),
                tunnel,
                state: LinkState::Disconnected,
                since: now,
                peer,
                peers: Vec::new(),
                cipher,
                last_heartbeat: None,
                reason: None,
            },
            sessions: HashMap::new(),
        });
        self.by_session.insert(session, id);
        link.sessions.insert(session, peer);
        link.view.peers = link.peers();
        link.view.peer = peer;
        link.view.cipher = cipher;
        link.view.name = name;
        link.view.last_heartbeat = Some(now);
        if link.view.state == LinkState::Connected {
            return None;
        }
        let was = link.view.state;
        link.view.state = LinkState::Connected;
        link.view.since = now;
        link.view.reason = None;
        (was == LinkState::Lost || returning).then(|| LinkChange::Back(link.view.clone()))
    }

    /// A session's heartbeat arrived.
    pub fn beat(&mut self, session: u64, now: SystemTime) {
        if let Some(link) = self
            .by_session
            .get(&session)
            .and_then(|id| self.links.get_mut(id))
        {
            link.view.last_heartbeat = Some(now);
        }
    }

    /// A session ended; `clean` when the client said goodbye.
    pub fn down(
        &mut self,
        session: u64,
        clean: bool,
        reason: &str,
        now: SystemTime,
    ) -> Option<LinkChange> {
        let id = self.by_session.remove(&session)?;
        let link = self.links.get_mut(&id)?;
        let from = link.sessions.remove(&session).flatten();
        link.view.peers = link.peers();
        if let Some((_, newest)) = link.sessions.iter().max_by_key(|(id, _)| **id) {
            // Session ids grow: the newest that is left.
            link.view.peer = *newest;
        }
        if !link.sessions.is_empty() {
            // One of several hosts running the tunnel with one key went away: the
            // link stays up through the others (its alert would say "lost" of a link
            // still connected), but the operator is told.
            let ip = from.map(|a| a.ip());
            if !clean && ip.is_some() && link.view.peers.iter().all(|p| Some(p.ip()) != ip) {
                let others: Vec<String> = link.view.peers.iter().map(ToString::to_string).collect();
                warn!(
                    client = %link.view.key,
                    name = %link.view.name,
                    tunnel = %link.view.tunnel,
                    "the tunnel's instance at {} was lost ({reason}); still connected from {}",
                    from.map_or_else(String::new, |a| a.to_string()),
                    others.join(", ")
                );
            }
            return None;
        }
        link.view.state = if clean {
            LinkState::Disconnected
        } else {
            LinkState::Lost
        };
        link.view.since = now;
        link.view.reason = Some(reason.to_owned());
        (!clean).then(|| LinkChange::Lost(link.view.clone()))
    }

    /// Forgets every link of `key` (its key was revoked); returns how many there were.
    pub fn forget(&mut self, key: &PublicKey) -> usize {
        let before = self.links.len();
        let forgotten = &mut self.forgotten_lost;
        self.links.retain(|(k, _), link| {
            let keep = k != key;
            if !keep {
                Self::remember_if_lost(forgotten, link);
            }
            keep
        });
        self.by_session.retain(|_, (k, _)| k != key);
        before - self.links.len()
    }

    /// Forgets the links that have not been connected for `after`; returns them.
    pub fn expire(&mut self, now: SystemTime, after: Duration) -> Vec<LinkView> {
        let old = |l: &Link| {
            l.view.state != LinkState::Connected
                && now.duration_since(l.view.since).is_ok_and(|d| d >= after)
        };
        let gone: Vec<(PublicKey, String)> = self
            .links
            .iter()
            .filter(|(_, l)| old(l))
            .map(|(id, _)| id.clone())
            .collect();
        let gone: Vec<Link> = gone.iter().filter_map(|id| self.links.remove(id)).collect();
        for l in &gone {
            Self::remember_if_lost(&mut self.forgotten_lost, l);
        }
        gone.into_iter().map(|l| l.view).collect()
    }

    /// Every link, by client key then tunnel name.
    pub fn views(&self) -> Vec<LinkView> {
        self.links.values().map(|l| l.view.clone()).collect()
    }

    fn make_room(&mut self, key: &PublicKey) {
        let mine: Vec<&Link> = self.links.values().filter(|l| l.view.key == *key).collect();
        if mine.len() < MAX_LINKS_PER_CLIENT {
            return;
        }
        let oldest = mine
            .iter()
            .filter(|l| l.view.state != LinkState::Connected)
            .min_by_key(|l| l.view.since)
            .map(|l| (l.view.key, l.view.tunnel.clone()));
        if let Some(link) = oldest.and_then(|id| self.links.remove(&id)) {
            Self::remember_if_lost(&mut self.forgotten_lost, &link);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(session: u64, key: PublicKey, name: &str, tunnel: &str) -> Started {
        Started {
            session,
            key,
            name: name.into(),
            tunnel: tunnel.into(),
            peer: None,
            cipher: "TLS_AES_128_GCM_SHA256",
        }
    }

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
    }

    #[test]
    fn lost_and_back_are_reported_once_goodbye_is_not() {
        let k = PublicKey::from_bytes([1; 32]);
        let mut l = Links::default();
        assert_eq!(l.up(started(1, k, "laptop", "web"), t(0)), None);
        // A reconnect overlapping the old session: still connected, nothing to say.
        assert_eq!(l.up(started(2, k, "laptop", "web"), t(1)), None);
        assert_eq!(l.down(1, false, "no heartbeat", t(2)), None);
        let lost = l.down(2, false, "connection reset", t(3));
        match lost {
            Some(LinkChange::Lost(v)) => {
                assert_eq!(v.state, LinkState::Lost);
                assert_eq!(v.reason.as_deref(), Some("connection reset"));
                assert_eq!(v.since, t(3));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            l.up(started(3, k, "laptop", "web"), t(4)),
            Some(LinkChange::Back(_))
        ));
        assert_eq!(l.down(3, true, "client said goodbye", t(5)), None);
        assert_eq!(l.views()[0].state, LinkState::Disconnected);
        assert_eq!(l.up(started(4, k, "laptop", "web"), t(6)), None);
        l.beat(4, t(7));
        assert_eq!(l.views()[0].last_heartbeat, Some(t(7)));
        // An unknown session changes nothing.
        assert_eq!(l.down(99, false, "x", t(8)), None);
    }

    #[test]
    fn each_host_running_the_tunnel_is_listed_and_one_lost_leaves_the_link_up() {
        let k = PublicKey::from_bytes([6; 32]);
        let at = |a: &str| Some(a.parse::<SocketAddr>().unwrap());
        let mut l = Links::default();
        let from = |session, peer| Started {
            peer,
            ..started(session, k, "edge", "web")
        };
        assert_eq!(l.up(from(1, at("10.0.0.6:40000")), t(0)), None);
        assert_eq!(l.up(from(2, at("10.0.0.5:40000")), t(1)), None);
        assert_eq!(
            l.views()[0].peers,
            [at("10.0.0.5:40000").unwrap(), at("10.0.0.6:40000").unwrap()]
        );
        // One replica gone: the link stays connected through the other.
        assert_eq!(l.down(1, false, "no heartbeat", t(2)), None);
        let v = &l.views()[0];
        assert_eq!(v.state, LinkState::Connected);
        assert_eq!(v.peers, [at("10.0.0.5:40000").unwrap()]);
        assert_eq!(v.peer, at("10.0.0.5:40000"));
        // The last one gone: lost, with nobody left.
        assert!(matches!(
            l.down(2, false, "reset", t(3)),
            Some(LinkChange::Lost(v)) if v.peers.is_empty()
        ));
    }

    #[test]
    fn links_per_client_are_bounded() {
        let k = PublicKey::from_bytes([2; 32]);
        let mut l = Links::default();
        for i in 0..MAX_LINKS_PER_CLIENT as u64 + 5 {
            l.up(started(i, k, "c", &format!("t{i}")), t(i));
            l.down(i, true, "bye", t(i));
        }
        assert_eq!(l.views().len(), MAX_LINKS_PER_CLIENT);
    }

    #[test]
    fn a_revoked_keys_links_are_forgotten_and_its_sessions_too() {
        let (k, other) = (
            PublicKey::from_bytes([3; 32]),
            PublicKey::from_bytes([4; 32]),
        );
        let mut l = Links::default();
        l.up(started(1, k, "laptop", "web"), t(0));
        l.up(started(2, k, "laptop", "db"), t(0));
        l.up(started(3, other, "desk", "web"), t(0));
        assert!(matches!(
            l.down(1, false, "reset", t(1)),
            Some(LinkChange::Lost(_))
        ));
        assert_eq!(l.forget(&k), 2);
        let left: Vec<(String, String)> =
            l.views().into_iter().map(|v| (v.name, v.tunnel)).collect();
        assert_eq!(left, [("desk".to_owned(), "web".to_owned())]);
        // Its session closing afterwards brings nothing back.
        assert_eq!(l.down(2, false, "revoked", t(2)), None);
        assert_eq!(l.views().len(), 1);
    }

    #[test]
    fn links_not_connected_expire_connected_ones_do_not() {
        let k = PublicKey::from_bytes([5; 32]);
        let mut l = Links::default();
        l.up(started(1, k, "laptop", "web"), t(0));
        l.up(started(2, k, "laptop", "db"), t(0));
        l.up(started(3, k, "laptop", "ssh"), t(0));
        l.down(1, false, "reset", t(10));
        l.down(2, true, "bye", t(20));
        let day = Duration::from_secs(86_400);
        assert_eq!(l.expire(t(10) + day - Duration::from_secs(1), day), []);
        let gone: Vec<String> = l
            .expire(t(10) + day, day)
            .into_iter()
            .map(|v| v.tunnel)
            .collect();
        assert_eq!(gone, ["web"]);
        let gone: Vec<String> = l
            .expire(t(1_000_000), day)
            .into_iter()
            .map(|v| v.tunnel)
            .collect();
        assert_eq!(gone, ["db"]);
        assert_eq!(l.views()[0].tunnel, "ssh");
        assert_eq!(l.views()[0].state, LinkState::Connected);

        // The lost one, reported lost, is reported back when it returns; the one
        // that said goodbye is not.
        assert!(matches!(
            l.up(started(4, k, "laptop", "web"), t(1_000_001)),
            Some(LinkChange::Back(v)) if v.tunnel == "web" && v.state == LinkState::Connected
        ));
        assert_eq!(l.up(started(5, k, "laptop", "db"), t(1_000_001)), None);
        // Once only.
        l.down(4, true, "bye", t(1_000_002));
        assert_eq!(l.up(started(6, k, "laptop", "web"), t(1_000_003)), None);
    }

    /// A revoked key's lost link, when the key is admitted again and the tunnel
    /// returns, is reported back.
    #[test]
    fn a_lost_link_forgotten_with_its_key_is_reported_back() {
        let k = PublicKey::from_bytes([7; 32]);
        let mut l = Links::default();
        l.up(started(1, k, "laptop", "web"), t(0));
        assert!(matches!(
            l.down(1, false, "reset", t(1)),
            Some(LinkChange::Lost(_))
        ));
        assert_eq!(l.forget(&k), 1);
        assert!(matches!(
            l.up(started(2, k, "laptop", "web"), t(2)),
            Some(LinkChange::Back(_))
        ));
    }
}
