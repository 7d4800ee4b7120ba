//! The monitor's JSON API under `/api/v1` (docs/protocol.md), typed once: the
//! monitor serializes these and herald-tui deserializes the same types, so a
//! renamed or missing field fails to parse instead of reading as zero.
//!
//! No field has a default: every one is always sent, except the optional parts
//! named as such (`members` of a channel, `webhooks`, `redis_cluster`). Fields a
//! newer monitor adds are ignored by an older reader.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::node::{ConnInfo, LimitKind};
use crate::time::ms_to_rfc3339;

/// The event name of each overview on `GET /api/v1/stream` (Server-Sent Events);
/// its data is an [`Overview`].
pub const STREAM_EVENT: &str = "overview";

/// The hash slots of a Redis Cluster: [`RedisClusterView::slots_covered`] is this
/// when every slot is served.
pub const REDIS_CLUSTER_SLOTS: u32 = 16_384;

/// A node's liveness, from the age of its last beat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Up,
    Stale,
    Down,
}

impl Status {
    pub const ALL: [Status; 3] = [Status::Up, Status::Stale, Status::Down];

    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Up => "up",
            Status::Stale => "stale",
            Status::Down => "down",
        }
    }

    /// Whether the node's reported state (connections, channels) still counts.
    /// A down node's sockets are gone with it, whatever its last beat said.
    pub fn is_live(self) -> bool {
        self != Status::Down
    }
}

/// `GET /api/v1/overview`, and the data of each stream event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Overview {
    pub generated_at: String,
    pub generated_ms: u64,
    /// True while the monitor cannot reach Redis and serves its last sample.
    pub stale: bool,
    /// By service, then id.
    pub nodes: Vec<NodeRow>,
    pub totals: Totals,
    /// The busiest channels, most subscribers first.
    pub top_channels: Vec<ChannelRow>,
    pub ratelimit: RateLimitView,
    /// Webhook delivery; absent when the cluster records no webhook events (and
    /// on the in-memory engine, which has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhooks: Option<WebhookView>,
    /// The Redis Cluster's shards; absent on a single Redis and on the in-memory
    /// engine, and when the topology could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_cluster: Option<RedisClusterView>,
}

/// One node of the overview.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRow {
    pub id: String,
    pub service: String,
    pub address: String,
    pub version: String,
    pub status: Status,
    /// The age of the last beat when the overview was built, in ms (not a timestamp).
    pub last_heartbeat_ms: u64,
    pub ready: bool,
    pub started_at: String,
    pub connections: u64,
    pub subscriptions: u64,
    pub channels: u64,
    pub messages_in_per_sec: f64,
    pub messages_out_per_sec: f64,
    pub ratelimit_hits: u64,
    /// `null` until the monitor has probed the node's `/healthz` once.
    pub probe_ok: Option<bool>,
    pub probe_latency_ms: Option<f64>,
}

/// The cluster's sums (see the monitor's crate docs for what each one counts).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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

/// One channel across the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelRow {
    pub channel: String,
    /// Summed over gateways.
    pub subscribers: u64,
    pub messages_per_sec: f64,
    /// Distinct users in the channel's presence, on every gateway; read for the
    /// top channels only (absent elsewhere, or when presence could not be read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<u64>,
}

/// Webhook delivery across the cluster: the `herald:webhooks` queue and the
/// delivery stats the broadcasters keep beside it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookView {
    /// Events recorded and not yet delivered or dropped.
    pub queued: u64,
    /// Events the backend accepted (a 2xx), since the stats began.
    pub delivered: u64,
    /// Events dropped after `HERALD_WEBHOOK_RETRY_FOR_MS` of failed attempts.
    pub failed: u64,
    /// The last POST any broadcaster made failed.
    pub failing: bool,
}

/// A Redis Cluster's topology as one of its nodes reports it (`CLUSTER NODES`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedisClusterView {
    /// The primaries that serve slots, in slot order, each with its replicas.
    pub shards: Vec<ShardView>,
    /// Slots served by a primary that is up, of [`REDIS_CLUSTER_SLOTS`]: fewer, and
    /// the cluster refuses keyed commands (unless `cluster-require-full-coverage` is off).
    pub slots_covered: u32,
}

/// One primary of a Redis Cluster with its replicas.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardView {
    /// `host:port`, as the cluster gives it to clients.
    pub primary: String,
    /// Not marked failing (`fail`, or `fail?` while the nodes have not agreed yet).
    pub primary_up: bool,
    /// Slots the primary serves.
    pub slots: u32,
    pub replicas: u32,
    /// Replicas not marked failing.
    pub replicas_up: u32,
}

/// The rate-limit hits the monitor has read from `herald:ratelimit`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RateLimitView {
    pub hits_total: u64,
    pub by_kind: BTreeMap<LimitKind, u64>,
    /// Newest first.
    pub recent: Vec<RecentHit>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecentHit {
    pub who: String,
    pub kind: LimitKind,
    pub node: String,
    pub at: String,
}

/// `GET /api/v1/channels`: one page of channels.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChannelsPage {
    pub channels: Vec<ChannelRow>,
    /// Every match, not just this page.
    pub total: u64,
}

/// `GET /api/v1/connections`: one page of live connections.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnectionsPage {
    pub connections: Vec<ConnRow>,
    /// Every match, not just this page.
    pub total: u64,
    /// True when `total` is a lower bound: the monitor stopped scanning.
    pub truncated: bool,
}

/// One connection as a gateway reported it ([`ConnInfo`]), with its start as a timestamp.
/// The JSON is the record's fields and `connected_at` side by side.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnRow {
    #[serde(flatten)]
    pub info: ConnInfo,
    pub connected_at: String,
}

impl From<ConnInfo> for ConnRow {
    fn from(info: ConnInfo) -> Self {
        Self {
            connected_at: ms_to_rfc3339(info.connected_ms),
            info,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn overview() -> Overview {
        Overview {
            generated_at: "2026-01-01T12:00:01.000Z".to_owned(),
            generated_ms: 1_767_268_801_000,
            stale: false,
            nodes: vec![
                NodeRow {
                    probe_ok: Some(true),
                    probe_latency_ms: Some(0.8),
                    ..node("gw-1", Status::Up)
                },
                node("gw-2", Status::Down),
            ],
            totals: Totals {
                nodes_up: 1,
                nodes_down: 1,
                connections: 4,
                channels: 3,
                subscriptions: 7,
                messages_in_per_sec: 1.5,
                messages_out_per_sec: 38.25,
                ratelimit_hits: 2,
                ..Totals::default()
            },
            top_channels: vec![ChannelRow {
                channel: "news".to_owned(),
                subscribers: 3,
                messages_per_sec: 2.0,
                members: None,
            }],
            ratelimit: RateLimitView {
                hits_total: 3,
                by_kind: BTreeMap::from([
                    (LimitKind::Connection, 0),
                    (LimitKind::Message, 2),
                    (LimitKind::Login, 1),
                ]),
                recent: vec![RecentHit {
                    who: "mallory".to_owned(),
                    kind: LimitKind::Message,
                    node: "gw-1".to_owned(),
                    at: "2026-01-01T12:00:00.500Z".to_owned(),
                }],
            },
            webhooks: Some(WebhookView {
                queued: 2,
                delivered: 40,
                failed: 1,
                failing: true,
            }),
            redis_cluster: Some(RedisClusterView {
                shards: vec![
                    ShardView {
                        primary: "10.0.0.7:6379".to_owned(),
                        primary_up: true,
                        slots: 8192,
                        replicas: 1,
                        replicas_up: 1,
                    },
                    ShardView {
                        primary: "10.0.0.8:6379".to_owned(),
                        primary_up: false,
                        slots: 8192,
                        replicas: 1,
                        replicas_up: 0,
                    },
                ],
                slots_covered: 8192,
            }),
        }
    }

    fn node(id: &str, status: Status) -> NodeRow {
        NodeRow {
            id: id.to_owned(),
            service: "ws-gateway".to_owned(),
            address: "10.0.0.5:8765".to_owned(),
            version: "0.4.0".to_owned(),
            status,
            last_heartbeat_ms: 412,
            ready: true,
            started_at: "2026-01-01T11:00:00.000Z".to_owned(),
            connections: 4,
            subscriptions: 7,
            channels: 3,
            messages_in_per_sec: 1.5,
            messages_out_per_sec: 38.25,
            ratelimit_hits: 2,
            probe_ok: None,
            probe_latency_ms: None,
        }
    }

    #[test]
    fn overview_round_trips() {
        let o = overview();
        let json = serde_json::to_string(&o).unwrap();
        let back: Overview = serde_json::from_str(&json).unwrap();
        assert_eq!(back, o);
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["nodes"][0]["status"], "up");
        assert_eq!(
            v["nodes"][1]["probe_ok"],
            Value::Null,
            "sent as null, not left out"
        );
        assert_eq!(
            v["ratelimit"]["by_kind"],
            json!({"connection":0,"login":1,"message":2})
        );
        assert_eq!(v["ratelimit"]["recent"][0]["kind"], "message");
        assert_eq!(
            v["webhooks"],
            json!({"queued":2,"delivered":40,"failed":1,"failing":true})
        );
        assert_eq!(
            v["redis_cluster"]["shards"][1],
            json!({"primary":"10.0.0.8:6379","primary_up":false,"slots":8192,"replicas":1,"replicas_up":0})
        );
        assert_eq!(v["redis_cluster"]["slots_covered"], 8192);
    }

    #[test]
    fn webhooks_are_left_out_when_off_and_optional_to_read() {
        let off = Overview {
            webhooks: None,
            ..overview()
        };
        let v = serde_json::to_value(&off).unwrap();
        assert!(v.get("webhooks").is_none(), "{v}");
        // An older monitor's overview (no webhooks) still reads.
        assert_eq!(serde_json::from_value::<Overview>(v).unwrap(), off);
    }

    #[test]
    fn the_redis_cluster_is_left_out_on_one_redis_and_optional_to_read() {
        let single = Overview {
            redis_cluster: None,
            ..overview()
        };
        let v = serde_json::to_value(&single).unwrap();
        assert!(v.get("redis_cluster").is_none(), "{v}");
        // An older monitor's overview (no topology) still reads.
        assert_eq!(serde_json::from_value::<Overview>(v).unwrap(), single);

        // Present, it is typed like the rest: a missing field is an error.
        let mut v = serde_json::to_value(overview()).unwrap();
        let Value::Object(shard) = &mut v["redis_cluster"]["shards"][0] else {
            panic!("a shard is an object")
        };
        shard.remove("primary_up");
        let err = serde_json::from_value::<Overview>(v).unwrap_err();
        assert!(err.to_string().contains("primary_up"), "{err}");
    }

    #[test]
    fn a_missing_field_is_an_error_and_an_extra_one_is_ignored() {
        let mut v = serde_json::to_value(overview()).unwrap();
        v["totals"]["added_later"] = json!(1);
        v["nodes"][0]["added_later"] = json!("x");
        assert_eq!(
            serde_json::from_value::<Overview>(v.clone()).unwrap(),
            overview()
        );

        let Value::Object(totals) = &mut v["totals"] else {
            panic!("totals is an object")
        };
        totals.remove("connections");
        let err = serde_json::from_value::<Overview>(v).unwrap_err();
        assert!(err.to_string().contains("connections"), "{err}");
    }

    #[test]
    fn a_status_outside_the_set_is_an_error() {
        let mut v = serde_json::to_value(overview()).unwrap();
        v["nodes"][0]["status"] = json!("exploded");
        assert!(serde_json::from_value::<Overview>(v).is_err());
        for s in Status::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }

    #[test]
    fn a_connection_row_is_its_record_plus_a_timestamp() {
        let info = ConnInfo {
            conn_id: "c1".to_owned(),
            user: "alice".to_owned(),
            ip: "10.0.0.7".to_owned(),
            node: "gw-1".to_owned(),
            channels: vec!["news".to_owned()],
            connected_ms: 1_700_000_000_123,
            messages_in: 3,
            messages_out: 9,
        };
        let row = ConnRow::from(info.clone());
        assert_eq!(row.connected_at, "2023-11-14T22:13:20.123Z");
        let mut v = serde_json::to_value(&row).unwrap();
        let Value::Object(fields) = &mut v else {
            panic!("an object")
        };
        fields.remove("connected_at");
        assert_eq!(v, serde_json::to_value(&info).unwrap());
        let back: ConnRow = serde_json::from_str(&serde_json::to_string(&row).unwrap()).unwrap();
        assert_eq!(back, row);
    }
}
