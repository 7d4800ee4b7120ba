//! The gateway's Prometheus metrics, registered once in the process's own registry.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

use herald_proto::node::LimitKind;

/// The limits a gateway enforces, by the kind their hits are counted under
/// (`login` is auth-svc's).
pub(crate) const LIMIT_KINDS: [LimitKind; 5] = [
    LimitKind::Message,
    LimitKind::Connection,
    LimitKind::ConnectRate,
    LimitKind::NodeCapacity,
    LimitKind::TooLarge,
];

/// Every metric the gateway exports (docs/protocol.md and a few more for operators).
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    pub(crate) registry: Registry,
    pub(crate) connections: IntGauge,
    pub(crate) connections_total: IntCounter,
    pub(crate) subscriptions: IntGauge,
    pub(crate) channels: IntGauge,
    pub(crate) messages_received: IntCounter,
    pub(crate) messages_delivered: IntCounter,
    pub(crate) publish: IntCounter,
    pub(crate) delivery_latency: Histogram,
    pub(crate) ratelimit_hits: IntCounterVec,
    pub(crate) auth_failures: IntCounterVec,
    pub(crate) slow_consumer_disconnects: IntCounter,
    pub(crate) redis_errors: IntCounter,
    pub(crate) pubsub_reconnects: IntCounter,
    pub(crate) gap_fills: IntCounter,
    pub(crate) disconnects: IntCounterVec,
    pub(crate) presence_events: IntCounter,
    pub(crate) presence_writes: IntCounter,
    pub(crate) presence_reaped_nodes: IntCounter,
    pub(crate) webhook_events: IntCounter,
    pub(crate) proxy_requests: IntCounterVec,
    pub(crate) proxy_duration: HistogramVec,
}

impl Metrics {
    pub(crate) fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let m = Self {
            connections: IntGauge::new("herald_connections", "Open client WebSocket connections.")?,
            connections_total: IntCounter::new(
                "herald_connections_total",
                "Client WebSocket connections accepted since start.",
            )?,
            subscriptions: IntGauge::new(
                "herald_subscriptions",
                "Channel subscriptions held by open connections.",
            )?,
            channels: IntGauge::new(
                "herald_channels",
                "Channels with at least one local subscriber (subscribed in Redis).",
            )?,
            messages_received: IntCounter::new(
                "herald_messages_received_total",
                "Frames received from clients.",
            )?,
            messages_delivered: IntCounter::new(
                "herald_messages_delivered_total",
                "Channel messages written to client sockets.",
            )?,
            publish: IntCounter::new(
                "herald_publish_total",
                "Client broadcasts published to Redis.",
            )?,
            delivery_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "herald_delivery_latency_seconds",
                    "Time from publish to the frame being written to the client socket.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ]),
            )?,
            ratelimit_hits: IntCounterVec::new(
                Opts::new(
                    "herald_ratelimit_hits_total",
                    "Requests refused by a limit.",
                ),
                &["kind"],
            )?,
            auth_failures: IntCounterVec::new(
                Opts::new("herald_auth_failures_total", "Refused authentications."),
                &["reason"],
            )?,
            slow_consumer_disconnects: IntCounter::new(
                "herald_slow_consumer_disconnects_total",
                "Clients disconnected because their outbound queue overflowed.",
            )?,
            redis_errors: IntCounter::new(
                "herald_redis_errors_total",
                "Failed Redis requests and lost Redis connections.",
            )?,
            pubsub_reconnects: IntCounter::new(
                "herald_pubsub_reconnects_total",
                "Times the Pub/Sub connection was re-established (lost or wedged).",
            )?,
            gap_fills: IntCounter::new(
                "herald_gap_fills_total",
                "Messages the gateway fetched from history because Pub/Sub skipped them.",
            )?,
            disconnects: IntCounterVec::new(
                Opts::new(
                    "herald_disconnects_total",
                    "Server-initiated disconnects by reason.",
                ),
                &["reason"],
            )?,
            presence_events: IntCounter::new(
                "herald_presence_events_total",
                "Join/leave events received for local listeners.",
            )?,
            presence_writes: IntCounter::new(
                "herald_presence_writes_total",
                "Joins and leaves of local connections written to the engine.",
            )?,
            presence_reaped_nodes: IntCounter::new(
                "herald_presence_reaped_nodes_total",
                "Dead nodes whose members this gateway removed from its channels.",
            )?,
            webhook_events: IntCounter::new(
                "herald_webhook_events_recorded_total",
                "Webhook events this gateway appended to the webhook queue.",
            )?,
            proxy_requests: IntCounterVec::new(
                Opts::new(
                    "herald_proxy_requests_total",
                    "Requests to the application's hooks, by hook and result (ok, refused, disconnect, timeout, error).",
                ),
                &["hook", "result"],
            )?,
            proxy_duration: HistogramVec::new(
                HistogramOpts::new(
                    "herald_proxy_duration_seconds",
                    "Time for a hook's answer, waiting for a free slot included.",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
                &["hook"],
            )?,
            registry,
        };
        let r = &m.registry;
        r.register(Box::new(m.connections.clone()))?;
        r.register(Box::new(m.connections_total.clone()))?;
        r.register(Box::new(m.subscriptions.clone()))?;
        r.register(Box::new(m.channels.clone()))?;
        r.register(Box::new(m.messages_received.clone()))?;
        r.register(Box::new(m.messages_delivered.clone()))?;
        r.register(Box::new(m.publish.clone()))?;
        r.register(Box::new(m.delivery_latency.clone()))?;
        r.register(Box::new(m.ratelimit_hits.clone()))?;
        r.register(Box::new(m.auth_failures.clone()))?;
        r.register(Box::new(m.slow_consumer_disconnects.clone()))?;
        r.register(Box::new(m.redis_errors.clone()))?;
        r.register(Box::new(m.pubsub_reconnects.clone()))?;
        r.register(Box::new(m.gap_fills.clone()))?;
        r.register(Box::new(m.disconnects.clone()))?;
        r.register(Box::new(m.presence_events.clone()))?;
        r.register(Box::new(m.presence_writes.clone()))?;
        r.register(Box::new(m.presence_reaped_nodes.clone()))?;
        r.register(Box::new(m.webhook_events.clone()))?;
        r.register(Box::new(m.proxy_requests.clone()))?;
        r.register(Box::new(m.proxy_duration.clone()))?;
        // Pre-create the common label values so dashboards see zeros, not gaps.
        for kind in LIMIT_KINDS {
            m.ratelimit_hits.with_label_values(&[kind.as_str()]);
        }
        Ok(m)
    }
}
