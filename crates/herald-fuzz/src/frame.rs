//! Client frames: `herald_proto::client::parse` on any text, and the server frames the
//! gateway builds from what it parsed (`error` with the echoed `id`, `pong`,
//! `subscribed`, `ack`, and the `message` frame template a broadcast becomes).

use std::collections::BTreeMap;

use serde_json::Value;
use serde_json::value::RawValue;

use herald_proto::channel;
use herald_proto::client::{self, ClientMsg, ErrorCode, FrameError, Id};
use herald_proto::envelope;
use herald_proto::server::ServerMsg;

/// One WebSocket text frame. Text frames are UTF-8 by the WebSocket protocol (the
/// server's WebSocket layer refuses others), so other bytes are not a parser input.
pub fn client_frame(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match client::parse(text) {
        Ok(msg) => accepted(text, &msg),
        Err(e) => refused(text, &e),
    }
}

/// A server frame's fields as raw JSON text. Raw, not `Value`: JSON allows numbers
/// that do not fit an `f64` (`1e400`), which clients may send as an id or inside a
/// message and which must come back byte for byte.
type Fields<'a> = BTreeMap<String, &'a RawValue>;

/// The frame's fields; the server's frames must always be JSON objects.
#[track_caller]
fn object(frame: &str) -> Fields<'_> {
    assert!(
        frame.starts_with('{'),
        "server frame is not a JSON object: {frame:?}"
    );
    serde_json::from_str::<Fields<'_>>(frame)
        .unwrap_or_else(|e| panic!("server frame is not a JSON object: {frame:?} ({e})"))
}

/// The raw text of a field.
fn raw<'a>(frame: &'a Fields<'_>, key: &str) -> Option<&'a str> {
    frame.get(key).map(|v| v.get())
}

#[track_caller]
fn is_str(frame: &Fields<'_>, key: &str, want: &str) {
    let want = Value::from(want).to_string();
    assert_eq!(raw(frame, key), Some(want.as_str()), "field {key}");
}

#[track_caller]
fn echoes(frame: &Fields<'_>, id: Option<&Id>) {
    assert_eq!(
        raw(frame, "id"),
        id.map(Id::as_json),
        "the reply must echo the request's id exactly"
    );
}

fn refused(text: &str, e: &FrameError) {
    let text_frame = e.to_frame();
    let frame = object(&text_frame);
    is_str(&frame, "type", "error");
    is_str(&frame, "code", e.code.as_str());
    assert!(raw(&frame, "message").is_some_and(|m| m.starts_with('"')));
    echoes(&frame, e.id.as_ref());
    if let Some(id) = &e.id {
        let first = id.as_json().as_bytes().first().copied();
        assert!(
            matches!(first, Some(b'"' | b'-' | b'0'..=b'9')),
            "only numbers and strings are ids: {:?}",
            id.as_json()
        );
    }
    // Text that is not JSON, or JSON that is not an object, is `invalid_json`.
    let not_json = serde_json::from_str::<serde::de::IgnoredAny>(text).is_err();
    let not_object = !text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('{');
    if not_json || not_object {
        assert_eq!(e.code, ErrorCode::InvalidJson, "{text:?}: {e}");
    }
    if e.code == ErrorCode::InvalidJson {
        assert!(e.id.is_none(), "invalid_json cannot know the id");
    }
}

fn accepted(text: &str, msg: &ClientMsg) {
    // Only JSON objects are frames.
    assert!(
        text.trim_start().starts_with('{'),
        "accepted a frame that is not an object: {text:?}"
    );
    let pong = ServerMsg::pong(msg.id()).to_json();
    echoes(&object(&pong), msg.id());
    match msg {
        ClientMsg::Auth { channels, .. } => {
            let frame =
                ServerMsg::auth_success("fuzz-user", "c1", "gw-1", channels, 25_000, msg.id())
                    .to_json();
            echoes(&object(&frame), msg.id());
        }
        ClientMsg::Subscribe { channel, id, .. } => {
            valid_channel(channel);
            let frame = ServerMsg::Subscribed {
                channel,
                id: id.as_ref(),
                offset: 7,
                epoch: "ep",
                recovered: Some(true),
                server: false,
                data: None,
            }
            .to_json();
            let s = object(&frame);
            is_str(&s, "channel", channel);
            echoes(&s, id.as_ref());
        }
        ClientMsg::History {
            channel, limit, id, ..
        } => {
            valid_channel(channel);
            assert!(limit.is_none_or(|n| n > 0), "a zero limit was accepted");
            let publication =
                RawValue::from_string("{\"type\":\"message\"}".to_owned()).expect("a JSON object");
            let frame = ServerMsg::History {
                channel,
                id: id.as_ref(),
                publications: vec![&publication],
                offset: 7,
                epoch: "ep",
            }
            .to_json();
            let h = object(&frame);
            is_str(&h, "channel", channel);
            echoes(&h, id.as_ref());
        }
        ClientMsg::Unsubscribe { channel, id } => {
            valid_channel(channel);
            let frame = ServerMsg::Unsubscribed {
                channel,
                id: id.as_ref(),
                server: false,
            }
            .to_json();
            let u = object(&frame);
            echoes(&u, id.as_ref());
        }
        ClientMsg::Presence { channel, id } => {
            valid_channel(channel);
            let frame = ServerMsg::Presence {
                channel,
                id: id.as_ref(),
                members: Vec::new(),
                truncated: false,
            }
            .to_json();
            let p = object(&frame);
            is_str(&p, "channel", channel);
            echoes(&p, id.as_ref());
        }
        ClientMsg::PresenceStats { channel, id } => {
            valid_channel(channel);
            let frame = ServerMsg::PresenceStats {
                channel,
                id: id.as_ref(),
                num_clients: 0,
                num_users: 0,
            }
            .to_json();
            let p = object(&frame);
            is_str(&p, "channel", channel);
            echoes(&p, id.as_ref());
        }
        ClientMsg::Broadcast {
            channel,
            message,
            id,
        } => {
            valid_channel(channel);
            // The message is JSON on its own.
            if let Err(e) = serde_json::from_str::<&RawValue>(message.get()) {
                panic!("broadcast message is not JSON: {e}");
            }
            // What subscribers get: the publish script fills offset and epoch into the
            // template; the result is one JSON object carrying the message unchanged.
            let tpl = envelope::message(
                channel,
                &message.0,
                Some("fuzz-user"),
                "2026-01-01T00:00:00.000Z",
            );
            let filled = tpl.fill(42, "ep0");
            let m = object(&filled);
            is_str(&m, "type", "message");
            is_str(&m, "channel", channel);
            is_str(&m, "from_user", "fuzz-user");
            // Byte for byte as the client wrote it.
            assert_eq!(raw(&m, "message"), Some(message.get()));
            assert_eq!(raw(&m, "offset"), Some("42"));
            is_str(&m, "epoch", "ep0");
            // And through the Pub/Sub envelope, the header decodes back.
            let payload = envelope::encode(42, "ep0", 1_000, &filled);
            let env = envelope::decode(payload.as_bytes()).expect("envelope decodes");
            assert_eq!((env.offset, env.epoch), (42, "ep0"));
            assert_eq!(&payload[env.frame_start..], filled);
            if let Some(id) = id {
                let frame = ServerMsg::Ack {
                    id,
                    channel,
                    offset: 42,
                    epoch: "ep0",
                }
                .to_json();
                echoes(&object(&frame), Some(id));
            }
        }
        ClientMsg::Ping { .. } => {}
    }
}

#[track_caller]
fn valid_channel(name: &str) {
    assert!(
        channel::validate(name).is_ok(),
        "accepted an invalid channel name {name:?}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_frames_hold_the_invariants() {
        for text in [
            r#"{"type":"subscribe","channel":"news","id":7,"since":{"offset":41,"epoch":"e"}}"#,
            r#"{"type":"broadcast","channel":"chat:1","message":{"a":[1,2.5e3,"\u0000"]},"id":"x"}"#,
            r#"{"type":"broadcast","channel":"n","message":null,"id":-0}"#,
            r#"{"token":"t","channels":["a","b"]}"#,
            r#"{"type":"ping","id":1e400}"#,
            r#"{"type":"unsubscribe","channel":"a b","id":[1]}"#,
            r#"{"type":"subscribe","channel":"room:1","join_leave":true}"#,
            r#"{"type":"presence","channel":"room:1","id":2}"#,
            r#"{"type":"presence_stats","channel":"room:1","id":"s"}"#,
            "[]",
            "",
            "\u{feff}{}",
        ] {
            client_frame(text.as_bytes());
        }
    }
}
