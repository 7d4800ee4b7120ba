//! A channel message as it travels through Redis: written by the publish script
//! (`herald_common::publish`) into the channel's history and Pub/Sub.
//!
//! A channel publish is a frame *template*: the publisher serializes the whole
//! client frame except `offset` and `epoch`, which only the Redis script knows, and
//! the script splices them in (`head .. offset .. ',"epoch":"' .. epoch .. '"' .. tail`).
//! So the bytes stored in history and sent through Pub/Sub are already the exact
//! client frame: gateways never parse or re-serialize a message on the fan-out path.
//!
//! Pub/Sub payloads carry a one-line header before the frame:
//! `<offset> <epoch> <publish_ms>\n<frame>`, which lets a gateway track per-channel
//! offsets (gap detection) and delivery latency without touching the JSON.

use serde::Serialize;
use serde_json::value::RawValue;

/// A frame with the offset/epoch hole the publish script fills.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameTemplate {
    /// Everything up to and including `"offset":`.
    pub head: String,
    /// Everything after the epoch string, starting with `,` (or the closing `}`).
    pub tail: String,
}

impl FrameTemplate {
    /// A template for a frame of `kind` on `channel` with extra `fields`
    /// (a struct that serializes to a JSON object).
    pub fn new<T: Serialize>(kind: &str, channel: &str, fields: &T) -> Self {
        let head = format!(r#"{{"type":"{kind}","channel":"{channel}","offset":"#);
        let obj = serde_json::to_string(fields).unwrap_or_else(|_| "{}".to_owned());
        let inner = obj.strip_prefix('{').unwrap_or("}");
        let tail = if inner == "}" {
            "}".to_owned()
        } else {
            format!(",{inner}")
        };
        Self { head, tail }
    }

    /// Fills the hole, as the publish script does (used by tests and by replays).
    pub fn fill(&self, offset: u64, epoch: &str) -> String {
        format!(r#"{}{offset},"epoch":"{epoch}"{}"#, self.head, self.tail)
    }
}

#[derive(Serialize)]
struct MessageFields<'a> {
    message: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    from_user: Option<&'a str>,
    timestamp: &'a str,
}

/// The template of a `message` frame; `from_user` is absent for server-side publishes.
pub fn message(
    channel: &str,
    message: &RawValue,
    from_user: Option<&str>,
    timestamp: &str,
) -> FrameTemplate {
    FrameTemplate::new(
        "message",
        channel,
        &MessageFields {
            message,
            from_user,
            timestamp,
        },
    )
}

#[derive(Serialize)]
struct SystemFields<'a> {
    message: &'a RawValue,
    timestamp: &'a str,
}

/// The template of a `system_notification` frame (always on channel `system`).
pub fn system_notification(content: &RawValue, timestamp: &str) -> FrameTemplate {
    FrameTemplate::new(
        "system_notification",
        crate::channel::SYSTEM_CHANNEL,
        &SystemFields {
            message: content,
            timestamp,
        },
    )
}

#[derive(Serialize)]
struct UserMessageFields<'a> {
    user_id: &'a str,
    content: &'a RawValue,
    timestamp: &'a str,
}

/// The template of a `user_message` frame.
pub fn user_message(
    channel: &str,
    user_id: &str,
    content: &RawValue,
    timestamp: &str,
) -> FrameTemplate {
    FrameTemplate::new(
        "user_message",
        channel,
        &UserMessageFields {
            user_id,
            content,
            timestamp,
        },
    )
}

#[derive(Serialize)]
struct ResultFields<'a> {
    job_id: &'a str,
    job_type: &'a str,
    status: &'a str,
    result: &'a RawValue,
    timestamp: &'a str,
}

/// The template of a `processing_result` frame.
pub fn processing_result(
    channel: &str,
    job_id: &str,
    job_type: &str,
    status: &str,
    result: &RawValue,
    timestamp: &str,
) -> FrameTemplate {
    FrameTemplate::new(
        "processing_result",
        channel,
        &ResultFields {
            job_id,
            job_type,
            status,
            result,
            timestamp,
        },
    )
}

/// A decoded Pub/Sub payload header; `frame` borrows the rest of the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    pub offset: u64,
    pub epoch: &'a str,
    pub published_ms: u64,
    /// Byte range of the frame within the payload, so callers can slice shared bytes.
    pub frame_start: usize,
}

/// Decodes `<offset> <epoch> <publish_ms>\n<frame>`; `None` if the header is malformed.
pub fn decode(payload: &[u8]) -> Option<Envelope<'_>> {
    let nl = payload.iter().position(|&b| b == b'\n')?;
    let header = std::str::from_utf8(&payload[..nl]).ok()?;
    let mut parts = header.split(' ');
    let offset = parts.next()?.parse().ok()?;
    let epoch = parts.next()?;
    let published_ms = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some(Envelope {
        offset,
        epoch,
        published_ms,
        frame_start: nl + 1,
    })
}

/// Encodes a Pub/Sub payload the way the publish script does.
pub fn encode(offset: u64, epoch: &str, published_ms: u64, frame: &str) -> String {
    format!("{offset} {epoch} {published_ms}\n{frame}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn template_fills_to_the_spec_shape() {
        let msg = serde_json::from_str::<&RawValue>(r#"{"x":[1,2]}"#).unwrap();
        let t = message("news", msg, Some("u1"), "2026-01-01T00:00:00.000Z");
        let v: serde_json::Value = serde_json::from_str(&t.fill(42, "ep")).unwrap();
        assert_eq!(
            v,
            json!({"type":"message","channel":"news","offset":42,"epoch":"ep",
                   "message":{"x":[1,2]},"from_user":"u1","timestamp":"2026-01-01T00:00:00.000Z"})
        );
        let null = serde_json::from_str::<&RawValue>("null").unwrap();
        let t = message("news", null, None, "ts");
        let v: serde_json::Value = serde_json::from_str(&t.fill(1, "e")).unwrap();
        assert_eq!(v["message"], serde_json::Value::Null);
        assert!(v.get("from_user").is_none());
    }

    #[test]
    fn envelope_round_trip() {
        let p = encode(7, "abc", 123, "{\"a\":1}");
        let e = decode(p.as_bytes()).unwrap();
        assert_eq!((e.offset, e.epoch, e.published_ms), (7, "abc", 123));
        assert_eq!(&p[e.frame_start..], "{\"a\":1}");
        assert!(decode(b"garbage").is_none());
        assert!(decode(b"1 2\n{}").is_none());
        assert!(decode(b"x e 1\n{}").is_none());
    }
}
