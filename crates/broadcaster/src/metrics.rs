//! The broadcaster's Prometheus metrics, in its own registry.

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

/// Every metric the broadcaster exports; cheap to clone (the fields are handles).
#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Channel publishes made through the HTTP API (idempotent replays excluded).
    pub publish_total: IntCounter,
    /// Jobs by outcome: `queued` on submit, then `done` or `failed`.
    pub jobs_total: IntCounterVec,
    /// Legacy bridge messages by source channel and result
    /// (`published`, `duplicate` when another instance bridged it, `malformed`, `error`).
    pub bridge_messages_total: IntCounterVec,
    /// HTTP requests by route template and status code.
    pub http_requests_total: IntCounterVec,
    /// Redis requests that failed (unreachable, timed out, script errors).
    pub redis_errors_total: IntCounter,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let publish_total = IntCounter::new(
            "herald_publish_total",
            "Channel publishes made through the broadcaster API.",
        )?;
        let jobs_total = IntCounterVec::new(
            Opts::new("herald_jobs_total", "Background jobs by status."),
            &["status"],
        )?;
        let bridge_messages_total = IntCounterVec::new(
            Opts::new(
                "herald_bridge_messages_total",
                "Messages received on the legacy Redis channels, by source and result.",
            ),
            &["source", "result"],
        )?;
        let http_requests_total = IntCounterVec::new(
            Opts::new(
                "herald_http_requests_total",
                "HTTP requests by route and status code.",
            ),
            &["route", "status"],
        )?;
        let redis_errors_total =
            IntCounter::new("herald_redis_errors_total", "Redis requests that failed.")?;
        registry.register(Box::new(publish_total.clone()))?;
        registry.register(Box::new(jobs_total.clone()))?;
        registry.register(Box::new(bridge_messages_total.clone()))?;
        registry.register(Box::new(http_requests_total.clone()))?;
        registry.register(Box::new(redis_errors_total.clone()))?;
        // Show the job series from the start, so rate() works before the first job.
        for status in ["queued", "done", "failed"] {
            jobs_total.with_label_values(&[status]);
        }
        Ok(Self {
            registry,
            publish_total,
            jobs_total,
            bridge_messages_total,
            http_requests_total,
            redis_errors_total,
        })
    }
}
