//! The broadcaster's legacy bridges: the original design's `system_notifications` and
//! `user_messages` Redis channels republished as Herald channels, once however many
//! bridges run, and again after a Redis restart.

use std::time::Duration;

use serde_json::json;

use super::broadcaster::{Sub, history_len, metrics, start};
use crate::{Redis, eventually};

/// Waits until `n` bridges listen on both legacy channels.
async fn bridges_subscribed(redis: &Redis, n: u64) {
    let url = redis.url();
    eventually("the legacy bridge to subscribe", || {
        let url = url.clone();
        async move {
            let client = redis::Client::open(url).ok()?;
            let mut c = client.get_multiplexed_async_connection().await.ok()?;
            let counts: Vec<(String, u64)> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg("system_notifications")
                .arg("user_messages")
                .query_async(&mut c)
                .await
                .ok()?;
            counts.iter().all(|(_, c)| *c >= n).then_some(())
        }
    })
    .await;
}

async fn legacy_publish(redis: &Redis, channel: &str, payload: &str) {
    let mut c = redis.conn().await;
    let _: u64 = redis::cmd("PUBLISH")
        .arg(channel)
        .arg(payload)
        .query_async(&mut c)
        .await
        .expect("PUBLISH");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_channels_are_bridged_and_bad_payloads_survive() {
    let redis = Redis::start().await;
    let bc = start(&redis).await;
    bridges_subscribed(&redis, 1).await;
    let mut sub = Sub::new(&redis, &["system", "room1"]).await;

    legacy_publish(&redis, "system_notifications", "this is not json").await;
    legacy_publish(&redis, "user_messages", r#"{"user_id":"u1"}"#).await;
    legacy_publish(
        &redis,
        "system_notifications",
        r#"{"content":"legacy hello","timestamp":1700000000.5}"#,
    )
    .await;
    let d = sub.next().await;
    assert_eq!(d.channel, "system");
    assert_eq!(d.frame["type"], "system_notification");
    assert_eq!(d.frame["message"], "legacy hello");
    assert_eq!(d.frame["timestamp"], "2023-11-14T22:13:20.500Z");

    legacy_publish(
        &redis,
        "user_messages",
        r#"{"user_id":"u2","target_channel":"room1","content":{"x":1},"timestamp":"2024-01-01T00:00:00"}"#,
    )
    .await;
    let d = sub.next().await;
    assert_eq!(d.channel, "room1");
    assert_eq!(d.frame["type"], "user_message");
    assert_eq!(d.frame["user_id"], "u2");
    assert_eq!(d.frame["content"], json!({"x":1}));
    assert_eq!(d.offset, 1);

    let m = metrics(&bc).await;
    for line in [
        r#"herald_bridge_messages_total{result="malformed",source="system_notifications"} 1"#,
        r#"herald_bridge_messages_total{result="malformed",source="user_messages"} 1"#,
        r#"herald_bridge_messages_total{result="published",source="system_notifications"} 1"#,
        r#"herald_bridge_messages_total{result="published",source="user_messages"} 1"#,
    ] {
        assert!(m.contains(line), "missing {line} in\n{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bridges_publish_a_legacy_message_once() {
    let redis = Redis::start().await;
    let _a = start(&redis).await;
    let _b = start(&redis).await;
    bridges_subscribed(&redis, 2).await;
    let mut sub = Sub::new(&redis, &["system"]).await;

    legacy_publish(
        &redis,
        "system_notifications",
        r#"{"content":"once","timestamp":1}"#,
    )
    .await;
    let d = sub.next().await;
    assert_eq!(d.frame["message"], "once");
    sub.assert_quiet(Duration::from_millis(700)).await;
    assert_eq!(history_len(&redis, "system").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_resubscribes_after_a_redis_restart() {
    let mut redis = Redis::start().await;
    let _bc = start(&redis).await;
    bridges_subscribed(&redis, 1).await;

    redis.restart().await;
    bridges_subscribed(&redis, 1).await;
    let mut sub = Sub::new(&redis, &["system"]).await;
    legacy_publish(
        &redis,
        "system_notifications",
        r#"{"content":"after restart"}"#,
    )
    .await;
    let d = sub.next().await;
    assert_eq!(d.frame["message"], "after restart");
}
