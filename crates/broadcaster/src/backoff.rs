//! The delay schedule for reconnecting to Redis: doubling from a floor to a cap,
//! reset after a success, so a Redis restart is noticed fast without a retry storm.

use std::time::Duration;

/// First delay after a failure.
pub const MIN_DELAY: Duration = Duration::from_millis(100);
/// Longest delay between attempts.
pub const MAX_DELAY: Duration = Duration::from_secs(5);

/// Exponential backoff state.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: MIN_DELAY }
    }
}

impl Backoff {
    /// The delay to wait now; the following one is twice as long, up to [`MAX_DELAY`].
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(MAX_DELAY);
        d
    }

    /// Whether no failure happened since the last reset: callers log the first
    /// failure of an outage loudly and the retries quietly.
    pub fn is_reset(&self) -> bool {
        self.next == MIN_DELAY
    }

    /// Back to [`MIN_DELAY`] after a success.
    pub fn reset(&mut self) {
        self.next = MIN_DELAY;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::default();
        assert!(b.is_reset());
        let ms: Vec<u128> = (0..9).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert!(!b.is_reset());
        b.reset();
        assert!(b.is_reset());
        assert_eq!(b.next_delay(), MIN_DELAY);
    }
}
