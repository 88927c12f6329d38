//! Exponential back-off with jitter: 100 ms, doubling, capped; each wait is drawn
//! from the upper half of the current step so many clients do not retry in lockstep.

use std::time::Duration;

use rand::Rng;

/// A back-off sequence.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    step: u32,
}

impl Backoff {
    /// Starts at `base`, never waits longer than `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self { base, cap, step: 0 }
    }

    /// The next wait.
    pub fn next_wait(&mut self) -> Duration {
        let full = self
            .base
            .saturating_mul(1u32 << self.step.min(20))
            .min(self.cap);
        self.step = self.step.saturating_add(1);
        let half = full / 2;
        let jitter = rand::rng().random_range(0..=half.as_millis() as u64);
        half + Duration::from_millis(jitter)
    }

    /// Back to the first step (after a success).
    pub fn reset(&mut self) {
        self.step = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let w: Vec<_> = (0..8).map(|_| b.next_wait()).collect();
        assert!(w[0] >= Duration::from_millis(50) && w[0] <= Duration::from_millis(100));
        assert!(w[3] >= Duration::from_millis(400) && w[3] <= Duration::from_millis(800));
        for x in &w[5..] {
            assert!(
                *x >= Duration::from_secs(1) && *x <= Duration::from_secs(2),
                "{x:?}"
            );
        }
        b.reset();
        assert!(b.next_wait() <= Duration::from_millis(100));
    }
}
