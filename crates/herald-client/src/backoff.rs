//! Reconnect delays: exponential backoff with full jitter.
//!
//! Full jitter (a uniformly random delay between zero and the exponential cap) spreads
//! the reconnects of many clients dropped at once, by a gateway crash for example, so
//! the surviving gateways are not hit by one synchronized wave.

use std::time::Duration;

/// The delay before reconnect attempt `attempt` (0 for the first retry):
/// `random × min(max, min_delay × 2^attempt)`, with `random` in `[0, 1)`.
pub fn delay(attempt: u32, min_delay: Duration, max: Duration, random: f64) -> Duration {
    // 2^attempt saturates well before u32::MAX attempts; the cap takes over anyway.
    let factor = 2u32.saturating_pow(attempt.min(31));
    let cap = min_delay.saturating_mul(factor).min(max);
    cap.mul_f64(random.clamp(0.0, 1.0))
}

/// [`delay`] with a fresh random number.
pub(crate) fn jittered(attempt: u32, min_delay: Duration, max: Duration) -> Duration {
    delay(attempt, min_delay, max, rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(20);

    #[track_caller]
    fn check(attempt: u32, random: f64, want_ms: u64) {
        assert_eq!(
            delay(attempt, MIN, MAX, random),
            Duration::from_millis(want_ms),
            "attempt {attempt}, random {random}"
        );
    }

    #[test]
    fn doubles_up_to_the_cap() {
        check(0, 1.0, 500);
        check(1, 1.0, 1000);
        check(2, 1.0, 2000);
        check(5, 1.0, 16_000);
        check(6, 1.0, 20_000);
        check(40, 1.0, 20_000);
        check(u32::MAX, 1.0, 20_000);
    }

    #[test]
    fn jitter_scales_the_whole_delay() {
        check(0, 0.0, 0);
        check(3, 0.5, 2000);
        check(10, 0.25, 5000);
        // Out-of-range randomness is clamped rather than trusted.
        check(1, 7.0, 1000);
        check(1, -1.0, 0);
    }

    #[test]
    fn jittered_stays_within_the_cap() {
        for attempt in 0..12 {
            let d = jittered(attempt, MIN, MAX);
            assert!(d <= MIN.saturating_mul(1 << attempt).min(MAX), "{d:?}");
        }
    }
}
