//! The monitor's JSON as the dashboard reads it: the types the monitor itself
//! serializes (`herald_proto::monitor`), so a field the monitor renames or drops
//! fails to parse (shown as an unexpected answer) rather than reading as zero.

pub use herald_proto::monitor::{
    ChannelRow, ConnRow, ConnectionsPage, NodeRow, Overview, REDIS_CLUSTER_SLOTS, RateLimitView,
    RecentHit, RedisClusterView, ShardView, Status, Totals, WebhookView,
};
pub use herald_proto::node::{ConnInfo, LimitKind};

/// Whether `needle` (already lowercase) occurs in any field of a connection a
/// person would search.
pub fn conn_contains(c: &ConnRow, needle: &str) -> bool {
    let c = &c.info;
    let hit = |s: &str| s.to_lowercase().contains(needle);
    hit(&c.conn_id)
        || hit(&c.user)
        || hit(&c.ip)
        || hit(&c.node)
        || c.channels.iter().any(|c| hit(c))
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
    fn clock_of_a_timestamp() {
        assert_eq!(clock("2026-01-01T12:00:00.500Z"), "12:00:00");
        assert_eq!(clock("soon"), "soon");
    }

    #[test]
    fn connection_search_covers_every_field() {
        let c = ConnRow {
            info: ConnInfo {
                conn_id: "c-42".to_owned(),
                user: "Alice".to_owned(),
                ip: "10.0.0.7".to_owned(),
                node: "gw-2".to_owned(),
                channels: vec!["chat:lobby".to_owned()],
                ..ConnInfo::default()
            },
            ..ConnRow::default()
        };
        for needle in ["c-42", "alice", "10.0.0", "gw-2", "lobby"] {
            assert!(conn_contains(&c, needle), "{needle}");
        }
        assert!(!conn_contains(&c, "bob"));
    }
}
