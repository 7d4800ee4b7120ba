//! Server → client frames. [`ServerMsg`] is every frame the gateway writes itself (the
//! channel deliveries are built by the publisher as templates, see [`crate::envelope`]);
//! each is serialized once into text, which the gateway turns into shared bytes.
//!
//! Borrowed fields keep the hot paths free of copies; [`crate::frames::ServerFrame`] is
//! the owned reading of the same frames for clients, and its tests bind the two.

use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

use crate::client::{ErrorCode, FrameError, Id};
use crate::disconnect::DisconnectCode;
use crate::time::now_rfc3339;

impl Serialize for Id {
    /// Echoed exactly as the client sent it (a number or a string).
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match serde_json::from_str::<&RawValue>(self.as_json()) {
            Ok(raw) => raw.serialize(s),
            Err(_) => s.serialize_none(),
        }
    }
}

/// Every frame the gateway writes, other than channel deliveries (docs/protocol.md §3).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg<'a> {
    /// The connection (or a fresh token on it) was accepted, with the channels
    /// actually subscribed.
    AuthSuccess {
        message: &'static str,
        user_id: &'a str,
        conn_id: &'a str,
        node: &'a str,
        channels: &'a [String],
        heartbeat_interval_ms: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Id>,
    },
    /// A channel is subscribed at this position; `recovered` is present only when the
    /// request carried `since`.
    Subscribed {
        channel: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Id>,
        offset: u64,
        epoch: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        /// The application's backend subscribed the connection (no request of its own).
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        server: bool,
        /// What the application's subscribe hook gave this subscriber.
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<&'a RawValue>,
    },
    Unsubscribed {
        channel: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Id>,
        /// The application's backend unsubscribed the connection.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        server: bool,
    },
    /// A broadcast that carried an `id` was published at this position.
    Ack {
        id: &'a Id,
        channel: &'a str,
        offset: u64,
        epoch: &'a str,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Id>,
        timestamp: String,
    },
    /// The answer to `history`: kept `message` frames (exactly as delivered), and
    /// the channel's current position.
    History {
        channel: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Id>,
        publications: Vec<&'a RawValue>,
        offset: u64,
        epoch: &'a str,
    },
    /// The answer to `presence`: the channel's members (member records as the
    /// engine keeps them), at most the gateway's cap, `truncated` when there were more.
    Presence {
        channel: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Id>,
        members: Vec<&'a RawValue>,
        truncated: bool,
    },
    /// The answer to `presence_stats`.
    PresenceStats {
        channel: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Id>,
        num_clients: u64,
        num_users: u64,
    },
    /// A request was refused; the connection stays open.
    Error {
        code: ErrorCode,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Id>,
        /// The channel the refusal is about.
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<&'a str>,
        /// For `rate_limited`: when the next frame is accepted.
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
        /// For `rejected` (and `permission_denied`): the application's own code.
        #[serde(skip_serializing_if = "Option::is_none")]
        app_code: Option<&'a str>,
    },
    Heartbeat {
        timestamp: String,
    },
    /// Sent just before a server-initiated close; built by
    /// [`crate::disconnect::Disconnect::frame`].
    Disconnect {
        code: &'a DisconnectCode,
        reason: &'a str,
        reconnect: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

impl<'a> ServerMsg<'a> {
    /// The frame as JSON text.
    pub fn to_json(&self) -> String {
        // Cannot fail: no maps with non-string keys, and every foreign Serialize
        // (RawValue) holds valid JSON.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// `auth_success`.
    pub fn auth_success(
        user_id: &'a str,
        conn_id: &'a str,
        node: &'a str,
        channels: &'a [String],
        heartbeat_interval_ms: u64,
        id: Option<&'a Id>,
    ) -> Self {
        Self::AuthSuccess {
            message: "authenticated",
            user_id,
            conn_id,
            node,
            channels,
            heartbeat_interval_ms,
            id,
        }
    }

    /// An `error` about no channel in particular.
    pub fn error(code: ErrorCode, message: &'a str, id: Option<&'a Id>) -> Self {
        Self::Error {
            code,
            message,
            id,
            channel: None,
            retry_after_ms: None,
            app_code: None,
        }
    }

    /// An `error` about `channel`.
    pub fn channel_error(
        code: ErrorCode,
        message: &'a str,
        id: Option<&'a Id>,
        channel: &'a str,
    ) -> Self {
        Self::Error {
            code,
            message,
            id,
            channel: Some(channel),
            retry_after_ms: None,
            app_code: None,
        }
    }

    pub fn pong(id: Option<&'a Id>) -> Self {
        Self::Pong {
            id,
            timestamp: now_rfc3339(),
        }
    }

    pub fn heartbeat() -> Self {
        Self::Heartbeat {
            timestamp: now_rfc3339(),
        }
    }
}

impl FrameError {
    /// This error as an `error` frame.
    pub fn to_frame(&self) -> String {
        ServerMsg::error(self.code, &self.message, self.id.as_ref()).to_json()
    }
}

/// `batch_messages` from frames that are already JSON text, without re-parsing them.
pub fn batch<'a>(frames: impl ExactSizeIterator<Item = &'a str>) -> String {
    let count = frames.len();
    let mut out = String::with_capacity(64 + count * 128);
    out.push_str(r#"{"type":"batch_messages","count":"#);
    out.push_str(&count.to_string());
    out.push_str(r#","messages":["#);
    for (i, f) in frames.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(f);
    }
    out.push_str("]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn v(m: ServerMsg<'_>) -> Value {
        serde_json::from_str(&m.to_json()).unwrap()
    }

    #[test]
    fn shapes() {
        let id = Id::from_raw(serde_json::from_str::<&RawValue>("7").unwrap()).unwrap();
        let sid = Id::from_raw(serde_json::from_str::<&RawValue>(r#""a\"b""#).unwrap()).unwrap();
        assert_eq!(
            v(ServerMsg::Subscribed {
                channel: "news",
                id: Some(&id),
                offset: 41,
                epoch: "e1",
                recovered: None,
                server: false,
                data: None
            }),
            json!({"type":"subscribed","channel":"news","id":7,"offset":41,"epoch":"e1"})
        );
        assert_eq!(
            v(ServerMsg::Subscribed {
                channel: "news",
                id: None,
                offset: 0,
                epoch: "e1",
                recovered: Some(false),
                server: true,
                data: None
            }),
            json!({"type":"subscribed","channel":"news","offset":0,"epoch":"e1","recovered":false,
                   "server":true})
        );
        assert_eq!(
            v(ServerMsg::error(
                ErrorCode::NotSubscribed,
                "not subscribed",
                Some(&sid)
            )),
            json!({"type":"error","code":"not_subscribed","message":"not subscribed","id":"a\"b"})
        );
        assert_eq!(
            v(ServerMsg::auth_success(
                "u1",
                "c1",
                "gw",
                &["news".to_owned()],
                25000,
                None
            )),
            json!({"type":"auth_success","message":"authenticated","user_id":"u1","conn_id":"c1",
                   "node":"gw","channels":["news"],"heartbeat_interval_ms":25000})
        );
        assert_eq!(
            serde_json::from_str::<Value>(&batch(["{\"a\":1}", "{\"b\":2}"].into_iter())).unwrap(),
            json!({"type":"batch_messages","count":2,"messages":[{"a":1},{"b":2}]})
        );
        let p = v(ServerMsg::pong(Some(&id)));
        assert_eq!(p["id"], 7);
        assert_eq!(p["type"], "pong");
    }
}
