//! The monitor's Prometheus metrics, in its own registry.

use std::collections::HashSet;

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use herald_proto::monitor::{RedisClusterView, Status, Totals};

/// Probe latencies span a loopback hop to the 1 s timeout.
const PROBE_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
/// A sampling round is a handful of Redis round trips.
const SAMPLE_BUCKETS: &[f64] = &[
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5,
];

#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    /// 1 for an up node, 0 for a stale or down one; labelled by node, which is
    /// bounded by the cluster size (nodes drop out five minutes after they die).
    pub(crate) node_up: IntGaugeVec,
    pub(crate) cluster_nodes: IntGaugeVec,
    pub(crate) cluster_connections: IntGauge,
    pub(crate) cluster_subscriptions: IntGauge,
    pub(crate) cluster_channels: IntGauge,
    pub(crate) probe_latency_seconds: Histogram,
    pub(crate) probe_failures_total: IntCounterVec,
    pub(crate) redis_errors_total: IntCounter,
    pub(crate) sample_duration_seconds: Histogram,
    pub(crate) nodes_pruned_total: IntCounter,
    pub(crate) admin_actions_total: IntCounterVec,
    pub(crate) stream_clients: IntGauge,
    /// The Redis Cluster's shape; registered only on one ([`Metrics::register_redis_cluster`]):
    /// on a single Redis they would read as a cluster with no slot served.
    redis_cluster_shards: IntGauge,
    redis_cluster_primaries_up: IntGauge,
    redis_cluster_slots_covered: IntGauge,
}

impl Metrics {
    pub(crate) fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            node_up: IntGaugeVec::new(
                Opts::new(
                    "herald_node_up",
                    "Whether a node is up (1) or stale/down (0).",
                ),
                &["service", "node"],
            )?,
            cluster_nodes: IntGaugeVec::new(
                Opts::new("herald_cluster_nodes", "Nodes in the registry by status."),
                &["status"],
            )?,
            cluster_connections: IntGauge::new(
                "herald_cluster_connections",
                "Client connections on live nodes.",
            )?,
            cluster_subscriptions: IntGauge::new(
                "herald_cluster_subscriptions",
                "Channel subscriptions on live nodes.",
            )?,
            cluster_channels: IntGauge::new(
                "herald_cluster_channels",
                "Distinct channels with subscribers on live nodes.",
            )?,
            probe_latency_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "herald_probe_latency_seconds",
                    "Latency of the monitor's /healthz probes.",
                )
                .buckets(PROBE_BUCKETS.to_vec()),
            )?,
            probe_failures_total: IntCounterVec::new(
                Opts::new(
                    "herald_probe_failures_total",
                    "Health probes that failed or timed out, by service.",
                ),
                &["service"],
            )?,
            redis_errors_total: IntCounter::new(
                "herald_redis_errors_total",
                "Redis requests that failed.",
            )?,
            sample_duration_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "herald_sample_duration_seconds",
                    "Time to read one sample of the cluster from Redis.",
                )
                .buckets(SAMPLE_BUCKETS.to_vec()),
            )?,
            nodes_pruned_total: IntCounter::new(
                "herald_nodes_pruned_total",
                "Nodes dropped from the registry after five minutes down.",
            )?,
            admin_actions_total: IntCounterVec::new(
                Opts::new(
                    "herald_admin_actions_total",
                    "Admin actions published on the control channel, by action.",
                ),
                &["action"],
            )?,
            stream_clients: IntGauge::new(
                "herald_stream_clients",
                "Open Server-Sent Events streams.",
            )?,
            redis_cluster_shards: IntGauge::new(
                "herald_redis_cluster_shards",
                "Redis Cluster primaries that serve slots, up or not.",
            )?,
            redis_cluster_primaries_up: IntGauge::new(
                "herald_redis_cluster_primaries_up",
                "Redis Cluster primaries that serve slots and are not marked failing.",
            )?,
            redis_cluster_slots_covered: IntGauge::new(
                "herald_redis_cluster_slots_covered",
                "Redis Cluster hash slots served by a primary that is up (16384 when all are).",
            )?,
        };
        registry.register(Box::new(m.node_up.clone()))?;
        registry.register(Box::new(m.cluster_nodes.clone()))?;
        registry.register(Box::new(m.cluster_connections.clone()))?;
        registry.register(Box::new(m.cluster_subscriptions.clone()))?;
        registry.register(Box::new(m.cluster_channels.clone()))?;
        registry.register(Box::new(m.probe_latency_seconds.clone()))?;
        registry.register(Box::new(m.probe_failures_total.clone()))?;
        registry.register(Box::new(m.redis_errors_total.clone()))?;
        registry.register(Box::new(m.sample_duration_seconds.clone()))?;
        registry.register(Box::new(m.nodes_pruned_total.clone()))?;
        registry.register(Box::new(m.admin_actions_total.clone()))?;
        registry.register(Box::new(m.stream_clients.clone()))?;
        // Present from the start, so dashboards and alerts see zeros rather than gaps.
        for s in Status::ALL {
            m.cluster_nodes.with_label_values(&[s.as_str()]).set(0);
        }
        for action in ["disconnect_conn", "disconnect_user"] {
            m.admin_actions_total.with_label_values(&[action]);
        }
        Ok(m)
    }

    /// Adds the Redis Cluster gauges to `registry`, for a monitor that runs on one.
    pub(crate) fn register_redis_cluster(
        &self,
        registry: &Registry,
    ) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.redis_cluster_shards.clone()))?;
        registry.register(Box::new(self.redis_cluster_primaries_up.clone()))?;
        registry.register(Box::new(self.redis_cluster_slots_covered.clone()))?;
        Ok(())
    }

    /// Publishes a topology read of the Redis Cluster (a failed read changes nothing:
    /// `herald_redis_errors_total` says it failed).
    pub(crate) fn record_redis_cluster(&self, view: &RedisClusterView) {
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.redis_cluster_shards.set(gauge(view.shards.len()));
        self.redis_cluster_primaries_up
            .set(gauge(view.shards.iter().filter(|s| s.primary_up).count()));
        self.redis_cluster_slots_covered
            .set(i64::from(view.slots_covered));
    }

    /// Publishes one sample: per-node gauges (dropping nodes that left, whose
    /// labels are in `shown`) and cluster totals.
    pub(crate) fn record_sample(
        &self,
        totals: &Totals,
        statuses: &[(String, String, Status)],
        shown: &mut HashSet<(String, String)>,
    ) {
        let mut now_shown = HashSet::with_capacity(statuses.len());
        for (service, node, status) in statuses {
            self.node_up
                .with_label_values(&[service.as_str(), node.as_str()])
                .set(i64::from(*status == Status::Up));
            now_shown.insert((service.clone(), node.clone()));
        }
        for (service, node) in shown.difference(&now_shown) {
            let _ = self
                .node_up
                .remove_label_values(&[service.as_str(), node.as_str()]);
        }
        *shown = now_shown;
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.cluster_nodes
            .with_label_values(&["up"])
            .set(gauge(totals.nodes_up));
        self.cluster_nodes
            .with_label_values(&["stale"])
            .set(gauge(totals.nodes_stale));
        self.cluster_nodes
            .with_label_values(&["down"])
            .set(gauge(totals.nodes_down));
        self.cluster_connections.set(gauge(totals.connections));
        self.cluster_subscriptions.set(gauge(totals.subscriptions));
        self.cluster_channels.set(gauge(totals.channels));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn departed_nodes_leave_the_output() {
        let registry = Registry::new();
        let m = Metrics::new(&registry).unwrap();
        let mut shown = HashSet::new();
        let totals = Totals {
            nodes_up: 1,
            nodes_down: 1,
            ..Totals::default()
        };
        let both = [
            ("ws-gateway".to_owned(), "gw-1".to_owned(), Status::Up),
            ("ws-gateway".to_owned(), "gw-2".to_owned(), Status::Down),
        ];
        m.record_sample(&totals, &both, &mut shown);
        let text = herald_common::http::render_metrics(&registry).unwrap();
        assert!(text.contains(r#"herald_node_up{node="gw-1",service="ws-gateway"} 1"#));
        assert!(text.contains(r#"herald_node_up{node="gw-2",service="ws-gateway"} 0"#));
        assert!(text.contains(r#"herald_cluster_nodes{status="down"} 1"#));
        m.record_sample(&totals, &both[..1], &mut shown);
        let text = herald_common::http::render_metrics(&registry).unwrap();
        assert!(!text.contains("gw-2"));
    }

    #[test]
    fn redis_cluster_gauges_only_where_registered() {
        let view = RedisClusterView {
            shards: vec![
                herald_proto::monitor::ShardView {
                    primary: "10.0.0.1:7000".to_owned(),
                    primary_up: true,
                    slots: 10_000,
                    replicas: 1,
                    replicas_up: 1,
                },
                herald_proto::monitor::ShardView {
                    primary: "10.0.0.2:7000".to_owned(),
                    primary_up: false,
                    slots: 6_384,
                    replicas: 1,
                    replicas_up: 1,
                },
            ],
            slots_covered: 10_000,
        };
        let single = Registry::new();
        let m = Metrics::new(&single).unwrap();
        m.record_redis_cluster(&view);
        let text = herald_common::http::render_metrics(&single).unwrap();
        assert!(!text.contains("herald_redis_cluster"), "{text}");

        let cluster = Registry::new();
        let m = Metrics::new(&cluster).unwrap();
        m.register_redis_cluster(&cluster).unwrap();
        m.record_redis_cluster(&view);
        let text = herald_common::http::render_metrics(&cluster).unwrap();
        for line in [
            "herald_redis_cluster_shards 2",
            "herald_redis_cluster_primaries_up 1",
            "herald_redis_cluster_slots_covered 10000",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}:\n{text}");
        }
    }
}
