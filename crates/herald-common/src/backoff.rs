//! The delay schedule of every server-side reconnect loop (the gateway's Pub/Sub
//! driver, the broadcaster's bridge and job reader): doubling from a floor to a cap,
//! reset after a success, so a Redis restart is noticed fast without a retry storm.
//!
//! Servers are few and their reconnects are not synchronized by anything, so no
//! jitter. herald-client keeps its own jittered schedule: thousands of clients
//! dropped at once are exactly the synchronized wave jitter exists to spread.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// First delay after a failure.
pub const MIN_DELAY: Duration = Duration::from_millis(100);
/// Longest delay between attempts, unless a loop asks for another cap.
pub const MAX_DELAY: Duration = Duration::from_secs(5);

/// Exponential backoff state.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(MIN_DELAY, MAX_DELAY)
    }
}

impl Backoff {
    /// Doubling from `min` up to `max`.
    pub const fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
        }
    }

    /// The delay to wait now; the following one is twice as long, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// Whether no failure happened since the last reset: callers log the first
    /// failure of an outage loudly and the retries quietly.
    pub fn is_reset(&self) -> bool {
        self.next == self.min
    }

    /// Back to the floor after a success.
    pub fn reset(&mut self) {
        self.next = self.min;
    }

    /// Sleeps the next delay; `false` when `token` was cancelled first (the loop
    /// should end rather than retry).
    pub async fn sleep(&mut self, token: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = token.cancelled() => false,
        }
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

    #[test]
    fn another_cap() {
        let mut b = Backoff::new(MIN_DELAY, Duration::from_secs(2));
        let ms: Vec<u128> = (0..7).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 2000, 2000]);
    }

    #[tokio::test]
    async fn sleep_ends_early_on_cancel() {
        let token = CancellationToken::new();
        let mut b = Backoff::new(Duration::from_millis(1), Duration::from_millis(1));
        assert!(b.sleep(&token).await);
        token.cancel();
        // A cancelled loop does not wait out even the longest delay.
        let mut long = Backoff::new(Duration::from_secs(3600), Duration::from_secs(3600));
        assert!(!long.sleep(&token).await);
    }
}
