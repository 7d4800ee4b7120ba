//! The records every node writes into Redis for the monitor: its beat
//! ([`NodeInfo`]), a gateway's connections ([`ConnInfo`]) and channels
//! ([`ChannelStat`]), and the rate-limit hits ([`RateLimitEvent`]) of every kind
//! ([`LimitKind`]).

use serde::{Deserialize, Serialize};

/// What every node writes into Redis each second (`herald:node:<id>`, JSON).
/// Counters are cumulative; the monitor turns them into rates.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: String,
    pub service: String,
    /// Where the node's HTTP endpoints answer (for the monitor's health probe).
    pub address: String,
    pub version: String,
    pub started_ms: u64,
    pub beat_ms: u64,
    #[serde(default)]
    pub ready: bool,
    #[serde(default)]
    pub connections: u64,
    #[serde(default)]
    pub subscriptions: u64,
    #[serde(default)]
    pub channels: u64,
    #[serde(default)]
    pub messages_in: u64,
    #[serde(default)]
    pub messages_out: u64,
    #[serde(default)]
    pub ratelimit_hits: u64,
}

/// One live connection as a gateway reports it for the monitor
/// (`herald:node:<id>:conns`, a HASH conn_id → this as JSON, updated on change).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnInfo {
    pub conn_id: String,
    pub user: String,
    pub ip: String,
    pub node: String,
    pub channels: Vec<String>,
    pub connected_ms: u64,
    #[serde(default)]
    pub messages_in: u64,
    #[serde(default)]
    pub messages_out: u64,
}

/// One channel as a gateway reports it (`herald:node:<id>:channels`, a HASH
/// channel → this as JSON): local subscribers and messages delivered so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelStat {
    pub subscribers: u64,
    pub messages: u64,
}

/// Which limit refused something. The wire name ([`LimitKind::as_str`]) is the
/// `kind` of a `herald:ratelimit` entry, a key of the monitor's `ratelimit.by_kind`
/// and the `kind` label of `herald_ratelimit_hits_total`.
///
/// The variants are declared in the order of their wire names, so maps keyed by
/// kind list them alphabetically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    /// ws-gateway: too many connection attempts per second from one IP.
    ConnectRate,
    /// ws-gateway: too many live connections from one IP, across the cluster.
    Connection,
    /// auth-svc: logins refused after too many failures for a user or an IP.
    Login,
    /// ws-gateway: a connection over its frame rate.
    Message,
    /// ws-gateway: the gateway is full.
    NodeCapacity,
    /// ws-gateway: a frame over the size limit.
    TooLarge,
    /// A kind this build does not know, reported by a newer node. Only ever read:
    /// nodes report the kinds above.
    #[serde(other)]
    Other,
}

impl LimitKind {
    /// Every kind a node reports ([`LimitKind::Other`] is not one).
    pub const ALL: [LimitKind; 6] = [
        LimitKind::ConnectRate,
        LimitKind::Connection,
        LimitKind::Login,
        LimitKind::Message,
        LimitKind::NodeCapacity,
        LimitKind::TooLarge,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            LimitKind::ConnectRate => "connect_rate",
            LimitKind::Connection => "connection",
            LimitKind::Login => "login",
            LimitKind::Message => "message",
            LimitKind::NodeCapacity => "node_capacity",
            LimitKind::TooLarge => "too_large",
            LimitKind::Other => "other",
        }
    }

    /// The kind a wire name stands for; an unknown name is [`LimitKind::Other`].
    pub fn parse(s: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .unwrap_or(LimitKind::Other)
    }
}

/// As [`LimitKind::parse`]: an unknown name is [`LimitKind::Other`].
impl From<&str> for LimitKind {
    fn from(s: &str) -> Self {
        Self::parse(s)
    }
}

impl std::fmt::Display for LimitKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One rate-limit hit: the fields of a `herald:ratelimit` stream entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitEvent {
    /// The user, or the IP for connection-level limits.
    pub who: String,
    pub kind: LimitKind,
    pub node: String,
    pub at_ms: u64,
}

impl RateLimitEvent {
    /// The entry's field-value pairs, as `XADD` takes them.
    pub fn fields(&self) -> [(&'static str, String); 4] {
        [
            ("who", self.who.clone()),
            ("kind", self.kind.as_str().to_owned()),
            ("node", self.node.clone()),
            ("at_ms", self.at_ms.to_string()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn limit_kinds_have_one_wire_name_each() {
        for k in LimitKind::ALL {
            assert_eq!(LimitKind::parse(k.as_str()), k);
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
            assert_eq!(
                serde_json::from_value::<LimitKind>(k.as_str().into()).unwrap(),
                k
            );
        }
        assert_eq!(LimitKind::parse("brand_new"), LimitKind::Other);
        let read: LimitKind = serde_json::from_str(r#""brand_new""#).unwrap();
        assert_eq!(read, LimitKind::Other);
        let mut sorted = LimitKind::ALL.map(LimitKind::as_str);
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            LimitKind::ALL.map(LimitKind::as_str),
            "declared in name order"
        );
    }

    #[test]
    fn limit_kinds_key_json_maps() {
        let m = BTreeMap::from([(LimitKind::Message, 3), (LimitKind::ConnectRate, 1)]);
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(json, r#"{"connect_rate":1,"message":3}"#);
        let back: BTreeMap<LimitKind, u64> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
        let unknown: BTreeMap<LimitKind, u64> = serde_json::from_str(r#"{"brand_new":2}"#).unwrap();
        assert_eq!(unknown[&LimitKind::Other], 2);
    }

    #[test]
    fn rate_limit_event_fields() {
        let e = RateLimitEvent {
            who: "10.0.0.1".to_owned(),
            kind: LimitKind::ConnectRate,
            node: "gw-1".to_owned(),
            at_ms: 42,
        };
        assert_eq!(
            e.fields(),
            [
                ("who", "10.0.0.1".to_owned()),
                ("kind", "connect_rate".to_owned()),
                ("node", "gw-1".to_owned()),
                ("at_ms", "42".to_owned()),
            ]
        );
    }
}
