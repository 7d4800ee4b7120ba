//! The monitor's JSON as the dashboard reads it (docs/protocol.md). Every field has a
//! default, so a monitor that adds or drops a field still renders.

use std::collections::BTreeMap;

use serde::Deserialize;

/// `GET /api/v1/overview`, also the data of each `overview` stream event.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Overview {
    pub generated_at: String,
    /// True while the monitor cannot reach Redis and serves its last sample.
    pub stale: bool,
    pub nodes: Vec<Node>,
    pub totals: Totals,
    pub top_channels: Vec<Channel>,
    pub ratelimit: RateLimits,
}

/// A node's liveness as the monitor classifies it from its last beat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Up,
    Stale,
    Down,
    /// Anything this dashboard does not know yet.
    #[default]
    #[serde(other)]
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Up => "up",
            Status::Stale => "stale",
            Status::Down => "down",
            Status::Unknown => "?",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Node {
    pub id: String,
    pub service: String,
    pub address: String,
    pub version: String,
    pub status: Status,
    /// The age of the node's last beat when the overview was built, in ms.
    pub last_heartbeat_ms: u64,
    pub connections: u64,
    pub subscriptions: u64,
    pub messages_in_per_sec: f64,
    pub messages_out_per_sec: f64,
    pub ratelimit_hits: u64,
    /// `None` until the monitor has probed the node's `/healthz` once.
    pub probe_ok: Option<bool>,
    pub probe_latency_ms: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Totals {
    pub nodes_up: u64,
    pub nodes_stale: u64,
    pub nodes_down: u64,
    pub connections: u64,
    pub channels: u64,
    pub subscriptions: u64,
    pub messages_in_per_sec: f64,
    pub messages_out_per_sec: f64,
    pub ratelimit_hits: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Channel {
    pub channel: String,
    pub subscribers: u64,
    pub messages_per_sec: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct RateLimits {
    pub hits_total: u64,
    pub by_kind: BTreeMap<String, u64>,
    /// Newest first.
    pub recent: Vec<RateLimitHit>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct RateLimitHit {
    pub who: String,
    pub kind: String,
    pub node: String,
    pub at: String,
}

/// `GET /api/v1/connections`: one page of live connections.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct ConnectionsPage {
    pub connections: Vec<Connection>,
    /// Every match, not just this page.
    pub total: u64,
    /// True when `total` is a lower bound (the monitor stopped scanning).
    pub truncated: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Connection {
    pub conn_id: String,
    pub user: String,
    pub ip: String,
    pub node: String,
    pub channels: Vec<String>,
    pub connected_at: String,
    pub messages_in: u64,
    pub messages_out: u64,
}

impl Connection {
    /// Whether `needle` (already lowercase) occurs in any field a person would search.
    pub fn contains(&self, needle: &str) -> bool {
        let hit = |s: &str| s.to_lowercase().contains(needle);
        hit(&self.conn_id)
            || hit(&self.user)
            || hit(&self.ip)
            || hit(&self.node)
            || self.channels.iter().any(|c| hit(c))
    }
}

/// The wall-clock part (`HH:MM:SS`) of an RFC 3339 timestamp, or the whole
/// string when it does not look like one.
pub fn clock(rfc3339: &str) -> &str {
    rfc3339.get(11..19).unwrap_or(rfc3339)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_monitor_overview_and_tolerates_extras() {
        let json = r#"{"generated_at":"2026-01-01T12:00:01.000Z","generated_ms":1,"stale":false,
            "nodes":[{"id":"gw-1","service":"ws-gateway","address":"127.0.0.1:8765","version":"0.0.0",
              "status":"up","last_heartbeat_ms":420,"ready":true,"connections":3,"subscriptions":4,
              "channels":2,"messages_in_per_sec":1.5,"messages_out_per_sec":12.25,"ratelimit_hits":0,
              "probe_ok":true,"probe_latency_ms":0.8},
              {"id":"x","status":"exploded"}],
            "totals":{"nodes_up":1,"connections":3},
            "top_channels":[{"channel":"news","subscribers":3,"messages_per_sec":2.0}],
            "ratelimit":{"hits_total":1,"by_kind":{"message":1},"recent":[{"who":"u1","kind":"message","node":"gw-1","at":"2026-01-01T12:00:00.500Z"}]}}"#;
        let o: Overview = serde_json::from_str(json).expect("overview");
        assert_eq!(o.nodes[0].status, Status::Up);
        assert_eq!(o.nodes[0].probe_ok, Some(true));
        assert_eq!(o.nodes[1].status, Status::Unknown);
        assert_eq!(o.totals.connections, 3);
        assert_eq!(o.top_channels[0].subscribers, 3);
        assert_eq!(o.ratelimit.by_kind["message"], 1);
        assert_eq!(clock(&o.ratelimit.recent[0].at), "12:00:00");
        assert_eq!(clock("soon"), "soon");
    }

    #[test]
    fn connection_search_covers_every_field() {
        let c = Connection {
            conn_id: "c-42".to_owned(),
            user: "Alice".to_owned(),
            ip: "10.0.0.7".to_owned(),
            node: "gw-2".to_owned(),
            channels: vec!["chat:lobby".to_owned()],
            ..Connection::default()
        };
        for needle in ["c-42", "alice", "10.0.0", "gw-2", "lobby"] {
            assert!(c.contains(needle), "{needle}");
        }
        assert!(!c.contains("bob"));
    }
}
