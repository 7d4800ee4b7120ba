//! Fixed monitor answers for tests: fixed timestamps, no wall clock, so a
//! screen renders the same today and next year.

use std::collections::BTreeMap;

use crate::model::{
    ChannelRow, ConnInfo, ConnRow, ConnectionsPage, LimitKind, NodeRow, Overview, RateLimitView,
    RecentHit, RedisClusterView, ShardView, Status, Totals, WebhookView,
};

pub(crate) const T0: &str = "2026-01-01T12:00:05.000Z";
/// [`T0`] in ms since the Unix epoch.
const T0_MS: u64 = 1_767_268_805_000;

pub(crate) fn node(id: &str, service: &str, status: Status, beat_ms: u64, conns: u64) -> NodeRow {
    NodeRow {
        id: id.to_owned(),
        service: service.to_owned(),
        address: format!("10.0.0.{}:8765", id.len()),
        version: "0.0.0".to_owned(),
        status,
        last_heartbeat_ms: beat_ms,
        ready: status == Status::Up,
        started_at: "2026-01-01T11:00:00.000Z".to_owned(),
        connections: conns,
        subscriptions: conns * 2,
        channels: conns.min(3),
        messages_in_per_sec: if status == Status::Up { 4.5 } else { 0.0 },
        messages_out_per_sec: if status == Status::Up && conns > 0 {
            812.0
        } else {
            0.0
        },
        ratelimit_hits: 0,
        probe_ok: Some(status == Status::Up),
        probe_latency_ms: Some(1.2),
    }
}

pub(crate) fn totals(nodes: &[NodeRow], channels: u64) -> Totals {
    let count = |s: Status| nodes.iter().filter(|n| n.status == s).count() as u64;
    let live = || nodes.iter().filter(|n| n.status != Status::Down);
    Totals {
        nodes_up: count(Status::Up),
        nodes_stale: count(Status::Stale),
        nodes_down: count(Status::Down),
        connections: live().map(|n| n.connections).sum(),
        channels,
        subscriptions: live().map(|n| n.subscriptions).sum(),
        messages_in_per_sec: live().map(|n| n.messages_in_per_sec).sum(),
        messages_out_per_sec: live().map(|n| n.messages_out_per_sec).sum(),
        ratelimit_hits: 0,
    }
}

fn quiet_ratelimits() -> RateLimitView {
    RateLimitView {
        hits_total: 0,
        by_kind: BTreeMap::from([(LimitKind::Connection, 0), (LimitKind::Message, 0)]),
        recent: Vec::new(),
    }
}

/// Four services, every one up, one gateway holding 1,234 connections.
pub(crate) fn healthy() -> Overview {
    let nodes = vec![
        node("auth-1", "auth-svc", Status::Up, 420, 0),
        node("bc-1", "broadcaster", Status::Up, 610, 0),
        node("mon-1", "monitor", Status::Up, 90, 0),
        node("gw-1", "ws-gateway", Status::Up, 350, 1_234),
    ];
    Overview {
        generated_at: T0.to_owned(),
        generated_ms: T0_MS,
        stale: false,
        totals: totals(&nodes, 3),
        nodes,
        top_channels: vec![
            ChannelRow {
                channel: "news".to_owned(),
                subscribers: 812,
                messages_per_sec: 2.0,
                members: Some(640),
            },
            ChannelRow {
                channel: "chat:lobby".to_owned(),
                subscribers: 300,
                messages_per_sec: 0.5,
                members: Some(212),
            },
            ChannelRow {
                channel: "system".to_owned(),
                subscribers: 122,
                messages_per_sec: 0.0,
                members: None,
            },
        ],
        ratelimit: quiet_ratelimits(),
        webhooks: None,
        redis_cluster: None,
    }
}

/// The healthy cluster delivering webhooks to a backend that fails now.
pub(crate) fn webhooks_failing() -> Overview {
    Overview {
        webhooks: Some(WebhookView {
            queued: 1_250,
            delivered: 48_211,
            failed: 3,
            failing: true,
        }),
        ..healthy()
    }
}

fn shard(port: u16, primary_up: bool, slots: u32, replicas_up: u32) -> ShardView {
    ShardView {
        primary: format!("10.0.1.{}:7000", port - 7000),
        primary_up,
        slots,
        replicas: 1,
        replicas_up,
    }
}

/// The healthy cluster on a Redis Cluster of three primaries with a replica each.
pub(crate) fn on_redis_cluster() -> Overview {
    Overview {
        redis_cluster: Some(RedisClusterView {
            shards: vec![
                shard(7001, true, 5_461, 1),
                shard(7002, true, 5_462, 1),
                shard(7003, true, 5_461, 1),
            ],
            slots_covered: 16_384,
        }),
        ..healthy()
    }
}

/// [`on_redis_cluster`] with the second primary down (its slots unserved until its
/// replica takes over) and the third one's replica down too.
pub(crate) fn redis_primary_down() -> Overview {
    Overview {
        redis_cluster: Some(RedisClusterView {
            shards: vec![
                shard(7001, true, 5_461, 1),
                shard(7002, false, 5_462, 1),
                shard(7003, true, 5_461, 0),
            ],
            slots_covered: 10_922,
        }),
        ..healthy()
    }
}

/// The healthy cluster plus a gateway gone quiet 5.2 s ago and one dead for 42 s.
pub(crate) fn degraded() -> Overview {
    let mut o = healthy();
    o.nodes
        .push(node("gw-2", "ws-gateway", Status::Stale, 5_200, 40));
    o.nodes
        .push(node("gw-3", "ws-gateway", Status::Down, 42_000, 77));
    o.totals = totals(&o.nodes, 3);
    o
}

/// The healthy cluster with rate-limit hits from two offenders.
pub(crate) fn rate_limited() -> Overview {
    let mut o = healthy();
    let hit = |who: &str, kind: LimitKind, at: &str| RecentHit {
        who: who.to_owned(),
        kind,
        node: "gw-1".to_owned(),
        at: at.to_owned(),
    };
    o.ratelimit = RateLimitView {
        hits_total: 17,
        by_kind: BTreeMap::from([(LimitKind::Connection, 2), (LimitKind::Message, 15)]),
        recent: vec![
            hit("spammer", LimitKind::Message, "2026-01-01T12:00:04.900Z"),
            hit("spammer", LimitKind::Message, "2026-01-01T12:00:04.100Z"),
            hit(
                "203.0.113.9",
                LimitKind::Connection,
                "2026-01-01T11:59:58.000Z",
            ),
        ],
    };
    o.totals.ratelimit_hits = 17;
    o
}

/// A monitor that sees no node at all.
pub(crate) fn empty() -> Overview {
    Overview {
        generated_at: T0.to_owned(),
        generated_ms: T0_MS,
        ratelimit: quiet_ratelimits(),
        ..Overview::default()
    }
}

pub(crate) fn conn(id: &str, user: &str, node: &str, channels: &[&str]) -> ConnRow {
    ConnRow {
        info: ConnInfo {
            conn_id: id.to_owned(),
            user: user.to_owned(),
            ip: "127.0.0.1".to_owned(),
            node: node.to_owned(),
            channels: channels.iter().map(|c| (*c).to_owned()).collect(),
            connected_ms: T0_MS - 125_000,
            messages_in: 3,
            messages_out: 1_500,
        },
        connected_at: "2026-01-01T11:58:00.000Z".to_owned(),
    }
}

pub(crate) fn connections() -> ConnectionsPage {
    ConnectionsPage {
        connections: vec![
            conn("c-1", "alice", "gw-1", &["news"]),
            conn("c-2", "bob", "gw-1", &["news", "chat:lobby"]),
            conn("c-3", "carol", "gw-2", &["system"]),
        ],
        total: 3,
        truncated: false,
    }
}
