//! The wait between delivery rounds of a durable queue (device-hub's outbox, the connector's
//! dead letters): doubles after each failed round up to a cap, and starts over after a success.

use std::time::Duration;

/// Capped exponential backoff between rounds. Pure: the caller sleeps.
#[derive(Debug, Clone)]
pub struct RoundBackoff {
    base: Duration,
    max: Duration,
    next: Duration,
}

impl RoundBackoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max: max.max(base),
            next: base,
        }
    }

    /// The wait after a failed round; each call doubles the following one, up to the cap.
    pub fn failed(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }

    /// A round succeeded: the next failure waits `base` again.
    pub fn succeeded(&mut self) {
        self.next = self.base;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_starts_over_after_a_success() {
        let mut b = RoundBackoff::new(Duration::from_millis(500), Duration::from_secs(3));
        let waits: Vec<u128> = (0..5).map(|_| b.failed().as_millis()).collect();
        assert_eq!(waits, vec![500, 1000, 2000, 3000, 3000]);
        b.succeeded();
        assert_eq!(b.failed(), Duration::from_millis(500));
    }

    #[test]
    fn a_cap_below_the_base_is_the_base() {
        let mut b = RoundBackoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(b.failed(), Duration::from_secs(2));
        assert_eq!(b.failed(), Duration::from_secs(2));
    }
}
