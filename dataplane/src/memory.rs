//! The memory a burst of connections leaves behind, handed back to the system once
//! the burst is over: glibc keeps what the connections freed, and the process's
//! resident size (its container's memory use) would stay at the burst's peak.

/// How many fewer connections than at the peak make a burst over (and no more than
/// half the peak's): below that, what is free is soon used again.
pub const BURST: u64 = 1024;

/// Watches the open connections, looked at now and then, for the end of a burst.
#[derive(Debug, Default)]
pub struct BurstWatch {
    peak: u64,
}

impl BurstWatch {
    /// Notes `open` connections now, and `peak` the most at once since the last
    /// look; true when a burst just ended: at least [`BURST`] fewer than the most
    /// seen since it last said so, and at most half as many. The peak starts over
    /// from `open` then.
    pub fn ended(&mut self, peak: u64, open: u64) -> bool {
        self.peak = self.peak.max(peak).max(open);
        if self.peak - open >= BURST && open <= self.peak / 2 {
            self.peak = open;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_ends_once_most_of_its_connections_have_closed() {
        let mut w = BurstWatch::default();
        // Small swings are no burst.
        for open in [0, 500, 1000, 10, 900, 0] {
            assert!(!w.ended(open, open), "{open}");
        }
        // 1,500 at the peak: over at 476 (1,024 fewer), not before.
        assert!(!w.ended(1500, 1500));
        assert!(!w.ended(477, 477));
        assert!(w.ended(476, 476));
        // Said once: the peak starts over from there.
        assert!(!w.ended(0, 0));
        // A large peak ends only at half of it.
        assert!(!w.ended(9000, 9000));
        assert!(!w.ended(4501, 4501));
        assert!(w.ended(4500, 4500));
        assert!(!w.ended(4500, 4500));
        // A burst that came and went between two looks is seen by its peak.
        assert!(w.ended(6000, 10));
    }
}
