//! The monitor's Prometheus metrics, in its own registry.

use std::collections::HashSet;

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use herald_proto::monitor::{Status, Totals};

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
}
