//! The broadcaster's Prometheus metrics, in its own registry.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

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
    /// Webhook events by outcome: `delivered` (a 2xx), `dropped` (retried for
    /// `HERALD_WEBHOOK_RETRY_FOR_MS` in vain, or unreadable), `debounced` (a vacated
    /// channel occupied again within `HERALD_WEBHOOK_DEBOUNCE_MS`: neither sent).
    pub webhook_events_total: IntCounterVec,
    /// Webhook POSTs by result: `ok` (2xx), `error` (another status, or no
    /// connection), `timeout`.
    pub webhook_posts_total: IntCounterVec,
    /// How long webhook POSTs took, whatever their result.
    pub webhook_post_seconds: Histogram,
    /// Webhook events recorded and not yet delivered or dropped (the consumer
    /// group's lag plus its pending entries), refreshed every few seconds.
    pub webhook_queued: IntGauge,
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
        let webhook_events_total = IntCounterVec::new(
            Opts::new(
                "herald_webhook_events_total",
                "Webhook events by outcome (delivered, dropped, debounced).",
            ),
            &["result"],
        )?;
        let webhook_posts_total = IntCounterVec::new(
            Opts::new(
                "herald_webhook_posts_total",
                "Webhook POSTs by result (ok, error, timeout).",
            ),
            &["result"],
        )?;
        let webhook_post_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "herald_webhook_post_duration_seconds",
                "How long webhook POSTs took.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
        )?;
        let webhook_queued = IntGauge::new(
            "herald_webhook_queued_events",
            "Webhook events waiting: recorded, not yet delivered or dropped.",
        )?;
        registry.register(Box::new(publish_total.clone()))?;
        registry.register(Box::new(jobs_total.clone()))?;
        registry.register(Box::new(bridge_messages_total.clone()))?;
        registry.register(Box::new(http_requests_total.clone()))?;
        registry.register(Box::new(redis_errors_total.clone()))?;
        registry.register(Box::new(webhook_events_total.clone()))?;
        registry.register(Box::new(webhook_posts_total.clone()))?;
        registry.register(Box::new(webhook_post_seconds.clone()))?;
        registry.register(Box::new(webhook_queued.clone()))?;
        // Show the job series from the start, so rate() works before the first job.
        for status in ["queued", "done", "failed"] {
            jobs_total.with_label_values(&[status]);
        }
        for result in ["delivered", "dropped", "debounced"] {
            webhook_events_total.with_label_values(&[result]);
        }
        for result in ["ok", "error", "timeout"] {
            webhook_posts_total.with_label_values(&[result]);
        }
        Ok(Self {
            registry,
            publish_total,
            jobs_total,
            bridge_messages_total,
            http_requests_total,
            redis_errors_total,
            webhook_events_total,
            webhook_posts_total,
            webhook_post_seconds,
            webhook_queued,
        })
    }
}
