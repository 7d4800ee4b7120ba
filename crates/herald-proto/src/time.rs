//! Timestamps on the wire are RFC 3339, UTC, with milliseconds, so every frame
//! sorts and parses the same way whichever service produced it.

use chrono::{SecondsFormat, TimeZone, Utc};

/// The current time as `2026-11-27T14:47:57.123Z`.
pub fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Milliseconds since the Unix epoch, the unit used in Redis for beats and latencies.
pub fn now_ms() -> u64 {
    u64::try_from(Utc::now().timestamp_millis()).unwrap_or(0)
}

/// Formats a Unix-epoch millisecond count like [`now_rfc3339`].
pub fn ms_to_rfc3339(ms: u64) -> String {
    let ms = i64::try_from(ms).unwrap_or(i64::MAX);
    match Utc.timestamp_millis_opt(ms).single() {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::Millis, true),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_millis_and_z() {
        assert_eq!(ms_to_rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        let now = now_rfc3339();
        assert!(now.ends_with('Z') && now.len() == 24, "{now}");
    }
}
