//! Server → client frames. Each builder returns the frame's JSON text, built once;
//! the gateway turns it into shared bytes and hands the same bytes to every recipient.

use serde::Serialize;
use serde_json::value::RawValue;

use crate::client::{ErrorCode, FrameError, Id};
use crate::time::now_rfc3339;

fn to_json<T: Serialize>(frame: &T) -> String {
    // Serializing these plain structs cannot fail: no maps with non-string keys, no
    // foreign Serialize impls.
    serde_json::to_string(frame).unwrap_or_default()
}

fn raw_id(id: Option<&Id>) -> Option<&RawValue> {
    id.and_then(|id| serde_json::from_str::<&RawValue>(id.as_json()).ok())
}

#[derive(Serialize)]
struct AuthSuccess<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'static str,
    user_id: &'a str,
    conn_id: &'a str,
    node: &'a str,
    channels: &'a [String],
    heartbeat_interval_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RawValue>,
}

/// `auth_success`, listing the channels actually subscribed.
pub fn auth_success(
    user_id: &str,
    conn_id: &str,
    node: &str,
    channels: &[String],
    heartbeat_interval_ms: u64,
    id: Option<&Id>,
) -> String {
    to_json(&AuthSuccess {
        kind: "auth_success",
        message: "authenticated",
        user_id,
        conn_id,
        node,
        channels,
        heartbeat_interval_ms,
        id: raw_id(id),
    })
}

#[derive(Serialize)]
struct Subscribed<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    channel: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RawValue>,
    offset: u64,
    epoch: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    recovered: Option<bool>,
}

/// `subscribed`; `recovered` is present only when the request carried `since`.
pub fn subscribed(
    channel: &str,
    id: Option<&Id>,
    offset: u64,
    epoch: &str,
    recovered: Option<bool>,
) -> String {
    to_json(&Subscribed {
        kind: "subscribed",
        channel,
        id: raw_id(id),
        offset,
        epoch,
        recovered,
    })
}

#[derive(Serialize)]
struct Unsubscribed<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    channel: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RawValue>,
}

pub fn unsubscribed(channel: &str, id: Option<&Id>) -> String {
    to_json(&Unsubscribed {
        kind: "unsubscribed",
        channel,
        id: raw_id(id),
    })
}

#[derive(Serialize)]
struct Ack<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: Option<&'a RawValue>,
    channel: &'a str,
    offset: u64,
    epoch: &'a str,
}

/// `ack` for a broadcast that carried an `id`.
pub fn ack(id: &Id, channel: &str, offset: u64, epoch: &str) -> String {
    to_json(&Ack {
        kind: "ack",
        id: raw_id(Some(id)),
        channel,
        offset,
        epoch,
    })
}

#[derive(Serialize)]
struct Pong<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RawValue>,
    timestamp: String,
}

pub fn pong(id: Option<&Id>) -> String {
    to_json(&Pong {
        kind: "pong",
        id: raw_id(id),
        timestamp: now_rfc3339(),
    })
}

#[derive(Serialize)]
struct ErrorFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    code: &'static str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
}

/// An `error` frame.
pub fn error(code: ErrorCode, message: &str, id: Option<&Id>) -> String {
    error_full(code, message, id, None, None)
}

/// An `error` frame naming the channel it concerns and, for `rate_limited`, when to retry.
pub fn error_full(
    code: ErrorCode,
    message: &str,
    id: Option<&Id>,
    channel: Option<&str>,
    retry_after_ms: Option<u64>,
) -> String {
    to_json(&ErrorFrame {
        kind: "error",
        code: code.as_str(),
        message,
        id: raw_id(id),
        channel,
        retry_after_ms,
    })
}

impl FrameError {
    /// This error as an `error` frame.
    pub fn to_frame(&self) -> String {
        error(self.code, &self.message, self.id.as_ref())
    }
}

#[derive(Serialize)]
struct Heartbeat {
    #[serde(rename = "type")]
    kind: &'static str,
    timestamp: String,
}

pub fn heartbeat() -> String {
    to_json(&Heartbeat {
        kind: "heartbeat",
        timestamp: now_rfc3339(),
    })
}

#[derive(Serialize)]
struct Disconnect<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    code: &'a str,
    reason: &'a str,
    reconnect: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
}

/// `disconnect`, sent just before a server-initiated close.
pub fn disconnect(code: &str, reason: &str, reconnect: bool) -> String {
    to_json(&Disconnect {
        kind: "disconnect",
        code,
        reason,
        reconnect,
        retry_after_ms: None,
    })
}

/// `disconnect` for a handshake refused after all (a `herald.v1` client): `code` is the
/// HTTP error code the refusal would have had, and a temporary refusal says when to retry.
pub fn refusal(code: &str, reason: &str, reconnect: bool, retry_after_ms: Option<u64>) -> String {
    to_json(&Disconnect {
        kind: "disconnect",
        code,
        reason,
        reconnect,
        retry_after_ms,
    })
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

    fn v(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn shapes() {
        let id = Id::from_raw(serde_json::from_str::<&RawValue>("7").unwrap()).unwrap();
        assert_eq!(
            v(&subscribed("news", Some(&id), 41, "e1", None)),
            json!({"type":"subscribed","channel":"news","id":7,"offset":41,"epoch":"e1"})
        );
        assert_eq!(
            v(&subscribed("news", None, 0, "e1", Some(false))),
            json!({"type":"subscribed","channel":"news","offset":0,"epoch":"e1","recovered":false})
        );
        assert_eq!(
            v(&error(ErrorCode::NotSubscribed, "not subscribed", None)),
            json!({"type":"error","code":"not_subscribed","message":"not subscribed"})
        );
        assert_eq!(
            v(&auth_success(
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
            v(&batch(["{\"a\":1}", "{\"b\":2}"].into_iter())),
            json!({"type":"batch_messages","count":2,"messages":[{"a":1},{"b":2}]})
        );
        let p = v(&pong(Some(&id)));
        assert_eq!(p["id"], 7);
        assert_eq!(p["type"], "pong");
    }
}
