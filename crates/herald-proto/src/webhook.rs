//! Webhook events: what gateways record about channels for the application's backend
//! (on Redis the `herald:webhooks` stream), and what the broadcaster POSTs to
//! `HERALD_WEBHOOK_URL`, with the stream entry's id as the event's `id`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The kinds of events, as configured (`HERALD_WEBHOOK_EVENTS`) and on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A channel got its first subscriber anywhere in the cluster.
    ChannelOccupied,
    /// A channel's last subscriber anywhere is gone.
    ChannelVacated,
    /// A connection joined a channel's presence.
    MemberAdded,
    /// A connection left a channel's presence (unsubscribed, disconnected, or its
    /// gateway died).
    MemberRemoved,
    /// A client broadcast on a channel the gateway reports publishes of.
    ClientPublish,
}

impl EventKind {
    pub const ALL: [Self; 5] = [
        Self::ChannelOccupied,
        Self::ChannelVacated,
        Self::MemberAdded,
        Self::MemberRemoved,
        Self::ClientPublish,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ChannelOccupied => "channel_occupied",
            Self::ChannelVacated => "channel_vacated",
            Self::MemberAdded => "member_added",
            Self::MemberRemoved => "member_removed",
            Self::ClientPublish => "client_publish",
        }
    }

    /// The kind spelled `name` (as in `HERALD_WEBHOOK_EVENTS`).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// One event. `id` is set when it is delivered (the stream entry's id: unique,
/// and the same on every retry, so the backend can de-duplicate).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub channel: String,
    /// When it happened (Unix ms).
    pub at_ms: u64,
    /// The member's or publisher's user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conn_id: Option<String>,
    /// The member's `info` claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Value>,
    /// A client publish's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Value>,
    /// A client publish's position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
}

impl Event {
    /// An event about a channel only (occupied, vacated).
    pub fn channel(kind: EventKind, channel: &str, at_ms: u64) -> Self {
        Self {
            id: None,
            kind,
            channel: channel.to_owned(),
            at_ms,
            user_id: None,
            conn_id: None,
            info: None,
            message: None,
            offset: None,
            epoch: None,
        }
    }

    /// A member came or went (`member` as `crate::presence::Member` JSON).
    pub fn member(
        kind: EventKind,
        channel: &str,
        member: &crate::presence::Member,
        at_ms: u64,
    ) -> Self {
        Self {
            user_id: Some(member.user_id.clone()),
            conn_id: Some(member.conn_id.clone()),
            info: member.info.clone(),
            ..Self::channel(kind, channel, at_ms)
        }
    }
}

/// The body of one webhook POST.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub events: Vec<Event>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shapes() {
        let mut e = Event::channel(EventKind::ChannelOccupied, "room:1", 7);
        e.id = Some("1-0".into());
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            json!({"id":"1-0","type":"channel_occupied","channel":"room:1","at_ms":7})
        );
        let m = crate::presence::Member {
            user_id: "alice".into(),
            conn_id: "c1".into(),
            info: Some(json!({"name":"Alice"})),
        };
        let e = Event::member(EventKind::MemberAdded, "room:1", &m, 8);
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            json!({"type":"member_added","channel":"room:1","at_ms":8,"user_id":"alice",
                   "conn_id":"c1","info":{"name":"Alice"}})
        );
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
            assert_eq!(serde_json::to_value(k).unwrap(), json!(k.as_str()));
        }
    }
}
