//! auth-svc's Prometheus metrics, in its own registry.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Every metric auth-svc exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Access tokens issued, by grant (`password`, `refresh`).
    pub tokens_issued: IntCounterVec,
    /// Refused logins and refreshes, by reason.
    pub auth_failures: IntCounterVec,
    /// HTTP requests, by route template and status code.
    pub http_requests: IntCounterVec,
    pub redis_errors: IntCounter,
    /// Refresh-token families revoked because a used token came back.
    pub refresh_families_revoked: IntCounter,
    /// Access tokens revoked through the admin API.
    pub tokens_revoked: IntCounter,
    /// Signing keys currently published (0 with a shared secret).
    pub signing_keys: IntGauge,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let tokens_issued = IntCounterVec::new(
            Opts::new("herald_tokens_issued_total", "Access tokens issued."),
            &["grant"],
        )?;
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "herald_auth_failures_total",
                "Refused logins and token refreshes, by reason.",
            ),
            &["reason"],
        )?;
        let http_requests = IntCounterVec::new(
            Opts::new("herald_http_requests_total", "HTTP requests served."),
            &["route", "status"],
        )?;
        let redis_errors = IntCounter::new(
            "herald_redis_errors_total",
            "Redis requests that failed or timed out.",
        )?;
        let refresh_families_revoked = IntCounter::new(
            "herald_refresh_families_revoked_total",
            "Refresh-token families revoked after a used token was presented again.",
        )?;
        let tokens_revoked = IntCounter::new(
            "herald_tokens_revoked_total",
            "Access tokens revoked through the admin API.",
        )?;
        let signing_keys = IntGauge::new(
            "herald_signing_keys",
            "Signing keys currently published in the JWKS.",
        )?;
        registry.register(Box::new(tokens_issued.clone()))?;
        registry.register(Box::new(auth_failures.clone()))?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(redis_errors.clone()))?;
        registry.register(Box::new(refresh_families_revoked.clone()))?;
        registry.register(Box::new(tokens_revoked.clone()))?;
        registry.register(Box::new(signing_keys.clone()))?;
        Ok(Self {
            registry,
            tokens_issued,
            auth_failures,
            http_requests,
            redis_errors,
            refresh_families_revoked,
            tokens_revoked,
            signing_keys,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders() {
        let m = Metrics::new().unwrap();
        m.tokens_issued.with_label_values(&["password"]).inc();
        m.auth_failures.with_label_values(&["throttled"]).inc();
        let text = herald_common::http::render_metrics(&m.registry).unwrap();
        assert!(
            text.contains("herald_tokens_issued_total{grant=\"password\"} 1"),
            "{text}"
        );
        assert!(text.contains("herald_auth_failures_total{reason=\"throttled\"} 1"));
        assert!(text.contains("herald_redis_errors_total 0"));
    }
}
