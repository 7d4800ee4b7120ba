//! What a connected client's requests are refused with: permissions (at `auth` and
//! per request), each error code of a bad frame, frame size and type limits, the
//! per-connection channel cap and the message rate limit. One behaviour per test.

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::gateway::{broadcast, gateway, metric, subscribe};
use crate::{Backend, Redis, Service, Ws, token};

/// The frame limit of [`carol`]'s gateway, in bytes.
const MAX_FRAME_BYTES: usize = 1024;

/// A gateway refusing frames over [`MAX_FRAME_BYTES`] (and its Redis): keep it
/// bound for as long as the test uses it.
struct Gateway {
    gw: Service,
    _redis: Redis,
}

/// carol, who may read `news` and `chat:*` and publish to `chat:*`, connected to a
/// fresh [`Gateway`].
async fn carol() -> (Ws, Gateway) {
    let redis = Redis::start().await;
    let gw = gateway(&redis)
        .env("HERALD_MAX_FRAME_BYTES", &MAX_FRAME_BYTES.to_string())
        .spawn()
        .await;
    let (ws, _) = Ws::auth(&gw, &carol_token(), &[]).await;
    (ws, Gateway { gw, _redis: redis })
}

fn carol_token() -> String {
    token("carol", &["news", "chat:*"], &["chat:*"])
}

/// A text frame over the limit.
fn oversized() -> String {
    format!(
        "{{\"type\":\"ping\",\"pad\":\"{}\"}}",
        "x".repeat(2 * MAX_FRAME_BYTES)
    )
}

/// `v` is an `error` frame with `code`, a message, and the request's `id` when it
/// had one (none otherwise).
#[track_caller]
fn assert_error(v: &Value, code: &str, id: Option<u64>) {
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["code"], code, "{v}");
    assert!(v["message"].is_string(), "{v}");
    match id {
        Some(id) => assert_eq!(v["id"], id, "{v}"),
        None => assert!(v.get("id").is_none(), "{v}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_subscribes_only_the_permitted_channels_and_names_each_refused_one() {
    let (_, gateway) = carol().await;
    let (mut ws, ok) = Ws::auth(
        &gateway.gw,
        &carol_token(),
        &["news", "secret", "user:carol", "user:dave"],
    )
    .await;
    // `user:<own name>` is always permitted.
    assert_eq!(ok["channels"], json!(["news", "user:carol"]));
    for ch in ["secret", "user:dave"] {
        let e = ws.recv_type("error").await;
        assert_eq!(
            (e["code"].as_str(), e["channel"].as_str()),
            (Some("forbidden"), Some(ch))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_that_is_not_a_json_object_is_invalid_json() {
    let (mut ws, _gateway) = carol().await;
    for text in ["this is not json", "[1,2,3]"] {
        ws.send_text(text).await;
        assert_error(&ws.recv().await, "invalid_json", None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_frame_type_is_unsupported_type() {
    let (mut ws, _gateway) = carol().await;
    ws.send(json!({"type":"dance","id":1})).await;
    assert_error(&ws.recv().await, "unsupported_type", Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_without_a_valid_channel_is_bad_request() {
    let (mut ws, _gateway) = carol().await;
    ws.send(json!({"type":"subscribe","id":2})).await;
    assert_error(&ws.recv().await, "bad_request", Some(2));
    ws.send(json!({"type":"subscribe","channel":"bad name!","id":3}))
        .await;
    assert_error(&ws.recv().await, "bad_request", Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_outside_the_token_is_forbidden() {
    let (mut ws, _gateway) = carol().await;
    ws.send(json!({"type":"subscribe","channel":"admin","id":4}))
        .await;
    assert_error(&ws.recv().await, "forbidden", Some(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_without_publish_permission_is_forbidden() {
    let (mut ws, _gateway) = carol().await;
    let e = broadcast(&mut ws, "news", json!(1), 5).await;
    assert_error(&e, "forbidden", Some(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_from_a_channel_not_subscribed_is_not_subscribed() {
    let (mut ws, _gateway) = carol().await;
    ws.send(json!({"type":"unsubscribe","channel":"chat:x","id":6}))
        .await;
    assert_error(&ws.recv().await, "not_subscribed", Some(6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_is_answered_with_pong_echoing_its_id() {
    let (mut ws, _gateway) = carol().await;
    ws.send(json!({"type":"ping","id":"p1"})).await;
    let pong = ws.recv_type("pong").await;
    assert_eq!(pong["id"], "p1");
    assert!(pong["timestamp"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glob_permissions_cover_the_whole_namespace() {
    let (mut ws, _gateway) = carol().await;
    subscribe(&mut ws, "chat:room:1", 7).await;
    let ack = broadcast(&mut ws, "chat:room:1", json!("x"), 8).await;
    assert_eq!(ack["type"], "ack", "{ack}");
}

/// An oversized frame is refused as `too_large` and the connection goes on; the
/// third within a minute closes it with 1009.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_are_too_large_and_the_third_closes_1009() {
    let (mut ws, _gateway) = carol().await;
    ws.send_text(&oversized()).await;
    assert_error(&ws.recv().await, "too_large", None);
    ws.send(json!({"type":"ping","id":"still-open"})).await;
    assert_eq!(ws.recv_type("pong").await["id"], "still-open");
    ws.send_text(&oversized()).await;
    ws.send_text(&oversized()).await;
    let (closed, _) = ws.closed().await;
    assert_eq!(closed.code, 1009);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_frame_closes_1003() {
    let (mut ws, _gateway) = carol().await;
    ws.send_raw(Message::binary(vec![1u8, 2, 3])).await;
    assert_eq!(ws.closed().await.0.code, 1003);
}

async fn channel_cap_per_connection(backend: Backend) {
    let gw = gateway(&backend)
        .env("HERALD_RATE_LIMIT_MESSAGES", "100000")
        .spawn()
        .await;
    let (mut ws, _) = Ws::auth(&gw, &token("many", &["c:*"], &[]), &[]).await;
    for i in 0..128u64 {
        ws.send(json!({"type":"subscribe","channel":format!("c:{i}"),"id":i}))
            .await;
    }
    for _ in 0..128 {
        ws.recv_type("subscribed").await;
    }
    ws.send(json!({"type":"subscribe","channel":"c:129","id":999}))
        .await;
    let e = ws.recv_type("error").await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_u64()),
        (Some("bad_request"), Some(999))
    );
}

async fn message_rate_limit(backend: Backend) {
    let gw = gateway(&backend)
        .env("HERALD_RATE_LIMIT_MESSAGES", "5")
        .env("HERALD_RATE_LIMIT_WINDOW_MS", "60000")
        .spawn()
        .await;
    let (mut ws, _) = Ws::auth(&gw, &token("fast", &[], &[]), &[]).await;
    for i in 0..5 {
        ws.send(json!({"type":"ping","id":i})).await;
        ws.recv_type("pong").await;
    }
    ws.send(json!({"type":"ping","id":6})).await;
    let e = ws.recv_type("error").await;
    assert_eq!(e["code"], "rate_limited");
    assert_eq!(e["id"], 6, "the refused request's id is echoed");
    assert!(
        e["retry_after_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 0 && ms <= 12_000),
        "{e}"
    );
    // 3x the limit refused within the window closes with 1008: one refused above, 14
    // more (sending past the close would race the gateway's close with our writes).
    for _ in 0..14 {
        ws.send(json!({"type":"ping"})).await;
    }
    let (closed, frames) = ws.closed().await;
    assert_eq!(closed.code, 1008, "{frames:?}");
    assert!(frames.iter().any(|f| f["type"] == "disconnect"));
    assert!(metric(&gw, "herald_ratelimit_hits_total{kind=\"message\"}").await >= 14.0);
}

crate::both_engines!(channel_cap_per_connection, message_rate_limit,);
