//! Protocol version negotiation.
//!
//! A client announces the range of versions it speaks in its `Hello`; the router picks
//! the highest version both speak and names it in its `Welcome`, or refuses with a
//! message that says which side to upgrade.

use serde::{Deserialize, Serialize};

/// The protocol version this build speaks.
pub const CURRENT: u16 = 8;
/// The first version with UDP flows (`OpenDatagrams`, `Datagram`). A router that
/// negotiates less cannot serve a UDP tunnel; version 1 is otherwise unchanged.
pub const DATAGRAMS: u16 = 2;
/// The first version with key rotation over the control channel (`RotateKey`,
/// `KeyRotated`); versions 1 and 2 are otherwise unchanged.
pub const ROTATION: u16 = 3;
/// The first version with kernel TLS streams (`OpenKernel`, `OpenedKernel`): after
/// them both ends hand the channel's record keys to their kernels. Versions 1 to 3
/// are otherwise unchanged.
pub const KERNEL_TLS: u16 = 4;
/// The first version whose plain channels outlive their streams: after `Open` and
/// `Opened` each direction's payload travels in `Data` frames (header, then the raw
/// bytes, spliced) and `Eof` ends it, so the channel can carry the next stream; a
/// bulk direction may send `Unframed` and go on raw to FIN, and the channel closes.
/// Before it a plain channel carried one stream of raw bytes, ended by TCP's FIN.
/// Versions 1 to 4 are otherwise unchanged.
pub const PLAIN_FRAMES: u16 = 5;
/// The first version in which the router names its keys on the control channel
/// (`RouterKeys`): the key it presents and the one it will present next, so that
/// tunnels take a replaced router key up by themselves. Versions 1 to 5 are
/// otherwise unchanged.
pub const ROUTER_KEYS: u16 = 6;
/// The first version whose control channel's `Hello` names the tunnel's source, and
/// whose routers refuse a tunnel whose source their policy does not allow
/// (`Refused` with `PolicyDenied`) before they admit it. Versions 1 to 6 are
/// otherwise unchanged.
pub const SOURCE_CHECK: u16 = 7;
/// The first version whose routers tell a UDP flow's client that its source refuses
/// its datagrams (`SourceRefused`, at most once a second a flow), so that the
/// tunnel's `status` and `health` show it as they show a refused stream. Versions 1
/// to 7 are otherwise unchanged.
pub const SOURCE_REFUSALS: u16 = 8;
/// The oldest protocol version this build still speaks.
pub const OLDEST: u16 = 1;

/// An inclusive range of protocol versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRange {
    /// Oldest version spoken.
    pub min: u16,
    /// Newest version spoken.
    pub max: u16,
}

impl VersionRange {
    /// The range this build speaks.
    pub const fn ours() -> Self {
        Self {
            min: OLDEST,
            max: CURRENT,
        }
    }

    /// The highest version in both ranges, or a sentence saying who must upgrade.
    pub fn negotiate(self, peer: VersionRange) -> Result<u16, String> {
        let high = self.max.min(peer.max);
        let low = self.min.max(peer.min);
        if peer.min > peer.max {
            return Err(format!(
                "peer announced an empty version range {}..={}",
                peer.min, peer.max
            ));
        }
        if high >= low {
            return Ok(high);
        }
        if peer.max < self.min {
            Err(format!(
                "peer speaks protocol {}..={}, this side {}..={}: upgrade the peer's conduit",
                peer.min, peer.max, self.min, self.max
            ))
        } else {
            Err(format!(
                "peer speaks protocol {}..={}, this side {}..={}: upgrade this side's conduit",
                peer.min, peer.max, self.min, self.max
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(min: u16, max: u16) -> VersionRange {
        VersionRange { min, max }
    }

    #[test]
    fn picks_the_highest_common_version() {
        assert_eq!(r(1, 3).negotiate(r(2, 5)), Ok(3));
        assert_eq!(r(1, 1).negotiate(r(1, 1)), Ok(1));
    }

    #[test]
    fn says_who_must_upgrade() {
        let err = r(3, 4).negotiate(r(1, 2)).unwrap_err();
        assert_eq!(
            err,
            "peer speaks protocol 1..=2, this side 3..=4: upgrade the peer's conduit"
        );
        let err = r(1, 2).negotiate(r(3, 4)).unwrap_err();
        assert_eq!(
            err,
            "peer speaks protocol 3..=4, this side 1..=2: upgrade this side's conduit"
        );
    }

    #[test]
    fn rejects_an_empty_range() {
        assert!(r(1, 1).negotiate(r(2, 1)).unwrap_err().contains("empty"));
    }
}
