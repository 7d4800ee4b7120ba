//! HTTP JSON bodies: `herald_common::http::parse_body` (the rules of every `ApiJson`
//! extractor: 400 for text that is not JSON, 422 for JSON that is not an object or not
//! of the endpoint's shape) on any bytes, into `serde_json::Value` and into copies of
//! the broadcaster's and auth-svc's request shapes (theirs are private to their
//! handlers), followed by what the handlers do with a parsed body before touching
//! Redis: channel checks, job parsing and computing, and the frame templates the
//! body becomes. The legacy Redis producers' messages go through the same steps.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_json::value::RawValue;

use broadcaster::jobs::kinds::Job;
use herald_common::http::{ApiError, parse_body};
use herald_proto::channel;
use herald_proto::envelope::{self, FrameTemplate};
use herald_proto::legacy::{LegacySystemNotification, LegacyUserMessage};

// === the request shapes, mirrored field for field ===

/// broadcaster `POST /v1/publish`.
#[derive(Debug, Deserialize)]
pub struct PublishReq {
    pub channel: String,
    pub message: Box<RawValue>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// broadcaster `POST /v1/broadcast`.
#[derive(Debug, Deserialize)]
pub struct BroadcastReq {
    pub channels: Vec<String>,
    pub message: Box<RawValue>,
}

/// broadcaster `POST /v1/system`.
#[derive(Debug, Deserialize)]
pub struct SystemReq {
    pub content: Box<RawValue>,
}

/// broadcaster `POST /v1/user-messages`.
#[derive(Debug, Deserialize)]
pub struct UserMessageReq {
    pub user_id: String,
    #[serde(default)]
    pub target_channel: Option<String>,
    pub content: Box<RawValue>,
}

/// broadcaster `POST /v1/jobs`.
#[derive(Debug, Deserialize)]
pub struct JobReq {
    pub job_type: String,
    #[serde(default)]
    pub data: Value,
    pub target_channel: String,
}

/// auth-svc `POST /v1/token`.
#[derive(Debug, Deserialize)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

/// auth-svc `POST /v1/token/refresh`.
#[derive(Debug, Deserialize)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

/// auth-svc `POST /v1/token/revoke`.
#[derive(Debug, Deserialize)]
pub struct RevokeRequest {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub jti: Option<String>,
}

/// auth-svc `POST /v1/users`.
#[derive(Debug, Deserialize)]
pub struct CreateUser {
    pub username: String,
    pub password: String,
    #[serde(default)]
    pub channels: Vec<String>,
    #[serde(default)]
    pub publish: Vec<String>,
}

const TS: &str = "2026-01-01T00:00:00.000Z";

/// One body through every endpoint's parser, and the legacy bridges' parsers.
pub fn http_body(data: &[u8]) {
    if let Some(v) = parsed::<Value>(data) {
        assert!(v.is_object(), "a body must be a JSON object: {v}");
    }
    if let Some(r) = parsed::<PublishReq>(data)
        && channel::validate(&r.channel).is_ok()
    {
        frame_ok(
            &envelope::message(&r.channel, &r.message, None, TS),
            "message",
            &r.message,
        );
    }
    if let Some(r) = parsed::<BroadcastReq>(data) {
        for c in r.channels.iter().filter(|c| channel::validate(c).is_ok()) {
            frame_ok(
                &envelope::message(c, &r.message, None, TS),
                "message",
                &r.message,
            );
        }
    }
    if let Some(r) = parsed::<SystemReq>(data) {
        frame_ok(
            &envelope::system_notification(&r.content, TS),
            "message",
            &r.content,
        );
    }
    if let Some(r) = parsed::<UserMessageReq>(data) {
        user_message(r.target_channel.as_deref(), &r.user_id, &r.content);
    }
    if let Some(r) = parsed::<JobReq>(data) {
        job(&r.job_type, &r.data, &r.target_channel);
    }
    if let Some(r) = parsed::<LoginRequest>(data) {
        let _ = (r.username.len(), r.password.len());
    }
    if let Some(r) = parsed::<RefreshRequest>(data) {
        let _ = auth_svc::refresh::RefreshToken::parse(&r.refresh_token);
    }
    if let Some(r) = parsed::<RevokeRequest>(data)
        && let Some(t) = &r.token
    {
        // auth-svc verifies a token it is asked to revoke.
        if let Ok(claims) = crate::token::verify(t) {
            crate::token::sound(t, &claims);
        }
    }
    if let Some(r) = parsed::<CreateUser>(data) {
        let _ = (r.channels.len(), r.publish.len());
    }
    // The legacy Redis channels carry the same kind of JSON from other producers.
    if let Ok(m) = serde_json::from_slice::<LegacySystemNotification>(data) {
        frame_ok(
            &envelope::system_notification(&m.content, TS),
            "message",
            &m.content,
        );
    }
    if let Ok(m) = serde_json::from_slice::<LegacyUserMessage>(data) {
        user_message(m.target_channel.as_deref(), &m.user_id, &m.content);
    }
}

/// `parse_body::<T>`, checked against the rules: 400 exactly when the bytes are not
/// JSON, 422 when they are JSON but not an object or not of `T`'s shape.
fn parsed<T: DeserializeOwned>(data: &[u8]) -> Option<T> {
    let got = parse_body::<T>(data);
    let is_json = serde_json::from_slice::<serde::de::IgnoredAny>(data).is_ok();
    let is_object = data.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    match got {
        Ok(v) => {
            assert!(
                is_json && is_object,
                "accepted a body that is not a JSON object"
            );
            Some(v)
        }
        Err(ApiError { status, code, .. }) => {
            let want = if is_json { 422 } else { 400 };
            assert_eq!(status.as_u16(), want, "status for a body (code {code})");
            assert!(!code.is_empty());
            if is_json && is_object {
                assert!(
                    serde_json::from_slice::<T>(data).is_err(),
                    "refused a body serde accepts"
                );
            }
            None
        }
    }
}

/// Without a target, a user message goes to the user's personal channel.
fn user_message(target: Option<&str>, user_id: &str, content: &RawValue) {
    let target = target.map_or_else(
        || format!("{}{user_id}", channel::USER_CHANNEL_PREFIX),
        str::to_owned,
    );
    if channel::validate(&target).is_ok() {
        let tpl = envelope::user_message(&target, user_id, content, TS);
        let fields = filled(&tpl);
        assert_eq!(
            fields.get("user_id").map(|v| v.get()),
            Some(Value::from(user_id).to_string().as_str())
        );
        assert_eq!(fields.get("content").map(|v| v.get()), Some(content.get()));
    }
}

fn job(job_type: &str, data: &Value, target: &str) {
    let Ok(job) = Job::parse(job_type, data) else {
        return;
    };
    // `compute` runs in the worker; a panic there would kill it mid-job.
    let result = job.compute();
    if let (Ok(result), Ok(())) = (result, channel::validate(target)) {
        let raw = serde_json::value::to_raw_value(&result).expect("a result serializes");
        let tpl = envelope::processing_result(target, "job-1", job_type, "done", &raw, TS);
        let fields = filled(&tpl);
        assert_eq!(fields.get("result").map(|v| v.get()), Some(raw.get()));
    }
}

/// A template with offset and epoch filled in, as the publish script does; it must be
/// one JSON object.
#[track_caller]
fn filled(tpl: &FrameTemplate) -> BTreeMap<String, Box<RawValue>> {
    let text = tpl.fill(1, "ep");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("frame is not JSON ({e}): {text}"))
}

#[track_caller]
fn frame_ok(tpl: &FrameTemplate, field: &str, content: &RawValue) {
    let fields = filled(tpl);
    assert_eq!(
        fields.get(field).map(|v| v.get()),
        Some(content.get()),
        "the payload travels byte for byte"
    );
    assert_eq!(fields.get("offset").map(|v| v.get()), Some("1"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_bodies_hold_the_invariants() {
        for body in [
            r#"{"channel":"news","message":{"a":1e400},"idempotency_key":"k"}"#,
            r#"{"channels":["a","b c"],"message":null}"#,
            r#"{"job_type":"data_processing","data":[1e308,1e308],"target_channel":"r"}"#,
            r#"{"job_type":"file_operation","data":{"operation":"word_count","content":"a b"},"target_channel":"r"}"#,
            r#"{"job_type":"sleep","data":{"ms":5},"target_channel":"r"}"#,
            r#"{"user_id":"u\"1","target_channel":"t","content":"\u2028"}"#,
            r#"[1]"#,
            "",
            "\u{c}{}",
            r#"{"content":1,"timestamp":[]}"#,
        ] {
            http_body(body.as_bytes());
        }
    }

    #[test]
    fn statuses_follow_the_spec() {
        assert_eq!(
            parse_body::<Value>(b"nope").unwrap_err().status.as_u16(),
            400
        );
        assert_eq!(
            parse_body::<Value>(b"[1]").unwrap_err().status.as_u16(),
            422
        );
        assert_eq!(
            parse_body::<PublishReq>(b"{}").unwrap_err().status.as_u16(),
            422
        );
        assert!(parse_body::<Value>(b" {}").is_ok());
    }
}
