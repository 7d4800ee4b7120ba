//! Presence on the wire: a channel member's record, the `join` / `leave` frames
//! built from it, and the Pub/Sub envelope those frames travel in.
//!
//! A member record is serialized once, when its connection subscribes, and kept as
//! JSON text in the engine; the join/leave frames are that text with `type` and
//! `channel` put in front (channel names need no escaping, see [`crate::channel`]),
//! which is also how the Redis scripts build the `leave` of a member whose gateway
//! died.
//!
//! Events share the channel's Pub/Sub name with its messages, so a subscriber sees
//! them in publish order, but their header says they carry no offset:
//! `ev <publish_ms> <origin conn_id>\n<frame>`. The origin lets each gateway keep an
//! event from the connection that caused it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One connection in a channel's presence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub user_id: String,
    pub conn_id: String,
    /// The `info` claim of the connection's token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Value>,
}

impl Member {
    /// The record as stored: compact JSON, `{"user_id":…,"conn_id":…[,"info":…]}`.
    pub fn to_json(&self) -> String {
        // Strings and an already-parsed JSON value: cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Whether a member came or went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Join,
    Leave,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Join => "join",
            Self::Leave => "leave",
        }
    }
}

/// The client frame of a join or leave: `{"type":…,"channel":…,<member fields>}`
/// from a member record as [`Member::to_json`] writes it.
pub fn event_frame(kind: EventKind, channel: &str, member_json: &str) -> String {
    let fields = member_json.strip_prefix('{').unwrap_or("}");
    format!(
        r#"{{"type":"{}","channel":"{channel}",{fields}"#,
        kind.as_str()
    )
}

/// The header word that marks a presence event on a channel's Pub/Sub name.
pub const EVENT_TAG: &str = "ev";

/// A decoded event payload; `frame_start` is where the client frame begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventEnvelope<'a> {
    pub published_ms: u64,
    /// The connection whose subscribe, unsubscribe or end caused the event.
    pub origin: &'a str,
    pub frame_start: usize,
}

/// Encodes an event payload the way the presence scripts do.
pub fn encode_event(published_ms: u64, origin: &str, frame: &str) -> String {
    format!("{EVENT_TAG} {published_ms} {origin}\n{frame}")
}

/// Decodes `ev <publish_ms> <origin>\n<frame>`; `None` for anything else
/// (a message payload, or a malformed header).
pub fn decode_event(payload: &[u8]) -> Option<EventEnvelope<'_>> {
    let rest = payload
        .strip_prefix(EVENT_TAG.as_bytes())?
        .strip_prefix(b" ")?;
    let nl = rest.iter().position(|&b| b == b'\n')?;
    let header = std::str::from_utf8(&rest[..nl]).ok()?;
    let (ms, origin) = header.split_once(' ')?;
    Some(EventEnvelope {
        published_ms: ms.parse().ok()?,
        origin,
        frame_start: EVENT_TAG.len() + 1 + nl + 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn event_frames_carry_the_member() {
        let m = Member {
            user_id: "alice".into(),
            conn_id: "c1".into(),
            info: Some(json!({"name": "Alice"})),
        };
        let f: Value =
            serde_json::from_str(&event_frame(EventKind::Join, "room:1", &m.to_json())).unwrap();
        assert_eq!(
            f,
            json!({"type":"join","channel":"room:1","user_id":"alice","conn_id":"c1",
                   "info":{"name":"Alice"}})
        );
        let bare = Member {
            info: None,
            ..m.clone()
        };
        let f: Value =
            serde_json::from_str(&event_frame(EventKind::Leave, "r", &bare.to_json())).unwrap();
        assert_eq!(
            f,
            json!({"type":"leave","channel":"r","user_id":"alice","conn_id":"c1"})
        );
    }

    #[test]
    fn event_envelope_round_trip() {
        let p = encode_event(123, "c1", "{\"a\":1}");
        let e = decode_event(p.as_bytes()).unwrap();
        assert_eq!((e.published_ms, e.origin), (123, "c1"));
        assert_eq!(&p[e.frame_start..], "{\"a\":1}");
        assert!(
            decode_event(b"7 e 1\n{}").is_none(),
            "a message is not an event"
        );
        assert!(decode_event(b"ev x c1\n{}").is_none());
        assert!(decode_event(b"ev 1\n{}").is_none());
        assert!(
            crate::envelope::decode(p.as_bytes()).is_none(),
            "nor an event a message"
        );
    }
}
