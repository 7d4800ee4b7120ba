//! Where access tokens come from, and when a fresh one is due.
//!
//! The client reads a token's `exp` and `iat` (without verifying anything: the
//! gateway does that) only to know when to replace it on the live connection, before
//! the gateway closes it with `token_expired`.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use tokio::time::Instant;

/// The shortest and longest margin between refreshing a token and its expiry: a
/// fifth of its lifetime, within these bounds. Long enough for a slow token endpoint,
/// short enough that short-lived tokens are still used for most of their life.
const MIN_MARGIN: f64 = 1.0;
const MAX_MARGIN: f64 = 60.0;
/// Added to the margin because `iat` and `exp` are whole seconds: a token issued at
/// 12.9 s says `iat` 12, so its real lifetime may be up to a second shorter.
const ROUNDING: f64 = 1.0;

type Fetcher = dyn Fn() -> BoxFuture<'static, Result<String, String>> + Send + Sync;

/// Where the client gets its access token.
#[derive(Clone)]
pub struct TokenSource {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    Fixed(Arc<str>),
    Fetch(Arc<Fetcher>),
}

impl TokenSource {
    /// Always the same token. When it expires the gateway disconnects with
    /// `token_expired` and the client stops.
    pub fn fixed(token: impl Into<String>) -> Self {
        Self {
            kind: Kind::Fixed(Arc::from(token.into())),
        }
    }

    /// A token from `fetch`, called for every connection attempt and again ahead
    /// of each token's expiry (its JWT `exp`), when the fresh token is sent on the
    /// live connection, so the connection is never closed for an expired token.
    /// Errors are reported ([`ClientError::TokenSource`](crate::ClientError::TokenSource))
    /// and retried.
    pub fn fetch<F, Fut, E>(fetch: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, E>> + Send + 'static,
        E: fmt::Display,
    {
        let fetcher = move || fetch().map(|r| r.map_err(|e| e.to_string())).boxed();
        Self {
            kind: Kind::Fetch(Arc::new(fetcher)),
        }
    }

    /// Whether this source can produce a fresh token.
    pub fn can_fetch(&self) -> bool {
        matches!(self.kind, Kind::Fetch(_))
    }

    /// A token, with when it should be replaced.
    pub(crate) fn get(&self) -> BoxFuture<'static, Result<Token, String>> {
        match &self.kind {
            Kind::Fixed(t) => {
                let t = Token::new(t.to_string(), false);
                async move { Ok(t) }.boxed()
            }
            Kind::Fetch(f) => f().map(|r| r.map(|t| Token::new(t, true))).boxed(),
        }
    }
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Kind::Fixed(_) => f.write_str("TokenSource::Fixed([redacted])"),
            Kind::Fetch(_) => f.write_str("TokenSource::Fetch"),
        }
    }
}

/// A token in use.
#[derive(Clone)]
pub(crate) struct Token {
    pub(crate) value: String,
    /// When to fetch its replacement; `None` when the source cannot fetch or the
    /// token says nothing about its expiry.
    pub(crate) refresh_at: Option<Instant>,
}

impl Token {
    fn new(value: String, refreshable: bool) -> Self {
        let refresh_at = refreshable
            .then(|| {
                let (exp, iat) = expiry(&value)?;
                refresh_delay(exp, iat, unix_now())
            })
            .flatten()
            .map(|d| Instant::now() + d);
        Self { value, refresh_at }
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("value", &"[redacted]")
            .field("refresh_at", &self.refresh_at)
            .finish()
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The `exp` and `iat` claims of a JWT, read without verification; `None` when it is
/// not a JWT or has no `exp`.
pub fn expiry(jwt: &str) -> Option<(f64, Option<f64>)> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_f64()?;
    Some((exp, claims.get("iat").and_then(serde_json::Value::as_f64)))
}

/// How long after obtaining a token (at `now`, Unix seconds on this machine's clock)
/// to replace it; `None` when it has already expired.
///
/// The lifetime is `exp − iat`, measured entirely on the issuer's clock, so a client
/// whose clock is off still refreshes on time; only without `iat` does it fall back to
/// `exp − now`. The refresh comes a margin before the end: a fifth of the lifetime
/// clamped to 1–60 s, plus a second for the whole-second claims, and never earlier
/// than half the lifetime, so a very short-lived token cannot make the client refresh
/// in a tight loop.
pub fn refresh_delay(exp: f64, iat: Option<f64>, now: f64) -> Option<Duration> {
    let lifetime = match iat {
        Some(iat) => exp - iat,
        None => exp - now,
    };
    if !(lifetime > 0.0 && lifetime.is_finite()) {
        return None;
    }
    let margin = (lifetime / 5.0).clamp(MIN_MARGIN, MAX_MARGIN) + ROUNDING;
    Some(Duration::from_secs_f64(
        (lifetime - margin).max(lifetime / 2.0),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(exp: f64, iat: Option<f64>, now: f64, want_secs: f64) {
        let got = refresh_delay(exp, iat, now).expect("a delay");
        assert!(
            (got.as_secs_f64() - want_secs).abs() < 1e-6,
            "exp {exp}, iat {iat:?}, now {now}: {got:?}, want {want_secs}s"
        );
    }

    #[test]
    fn refresh_a_fifth_of_the_lifetime_before_expiry_within_bounds() {
        // 15 minutes: 61 s before (a fifth would be 3 minutes).
        check(1900.0, Some(1000.0), 1000.0, 839.0);
        // 100 s: 21 s before.
        check(1100.0, Some(1000.0), 1000.0, 79.0);
        // 10 s: 3 s before (at least 1 s, plus the rounding second).
        check(1010.0, Some(1000.0), 1000.0, 7.0);
        // 4 s: never before half the lifetime.
        check(1004.0, Some(1000.0), 1000.0, 2.0);
        check(1001.0, Some(1000.0), 1000.0, 0.5);
    }

    #[test]
    fn the_lifetime_is_measured_on_the_issuers_clock() {
        // A client clock 50 s ahead of (or behind) the issuer changes nothing.
        check(1100.0, Some(1000.0), 1050.0, 79.0);
        check(1100.0, Some(1000.0), 950.0, 79.0);
        // Without `iat`, the lifetime is what is left by this clock.
        check(1100.0, None, 1000.0, 79.0);
        assert_eq!(refresh_delay(1100.0, None, 1200.0), None);
    }

    #[test]
    fn nonsense_times_mean_no_refresh() {
        assert_eq!(refresh_delay(f64::NAN, None, 1.0), None);
        assert_eq!(refresh_delay(5.0, Some(10.0), 1.0), None);
    }

    fn jwt(payload: &str) -> String {
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            b.encode(r#"{"alg":"HS256"}"#),
            b.encode(payload)
        )
    }

    #[test]
    fn reads_exp_and_iat_without_verifying() {
        assert_eq!(
            expiry(&jwt(r#"{"sub":"u","exp":1767624477,"iat":1767623577}"#)),
            Some((1_767_624_477.0, Some(1_767_623_577.0)))
        );
        assert_eq!(expiry(&jwt(r#"{"exp":5}"#)), Some((5.0, None)));
        assert_eq!(expiry(&jwt(r#"{"sub":"u"}"#)), None);
        assert_eq!(expiry("not-a-jwt"), None);
        assert_eq!(expiry("a.!!!.c"), None);
        // Padded base64url is accepted too.
        let b = base64::engine::general_purpose::URL_SAFE;
        assert_eq!(
            expiry(&format!("h.{}.s", b.encode(r#"{"exp":77}"#))),
            Some((77.0, None))
        );
    }

    #[tokio::test]
    async fn fixed_tokens_are_never_refreshed_and_fetched_ones_are() {
        let t = TokenSource::fixed(jwt(r#"{"exp":1}"#)).get().await.unwrap();
        assert_eq!(t.refresh_at, None);
        let exp = unix_now() + 100.0;
        let src = TokenSource::fetch(move || async move {
            Ok::<_, String>(jwt(&format!(r#"{{"exp":{exp}}}"#)))
        });
        assert!(src.can_fetch());
        let t = src.get().await.unwrap();
        assert!(t.refresh_at.is_some());
        let failing = TokenSource::fetch(|| async { Err::<String, _>("down") });
        assert_eq!(failing.get().await.unwrap_err(), "down");
        assert!(!format!("{:?}", TokenSource::fixed("s3cret")).contains("s3cret"));
    }
}
