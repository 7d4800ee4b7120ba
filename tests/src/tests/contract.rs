//! The Pub/Sub envelope has two writers that must agree byte for byte: the
//! publish script in Redis (`herald_common::publish`), which is what gateways
//! receive, and `herald_proto::envelope::encode`, which tests, replays and the
//! fuzzer build payloads with. Every kind of channel frame goes through the real
//! script on a real `redis-server` and comes back out of Pub/Sub and history.

use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use serde_json::Value;
use serde_json::value::RawValue;

use herald_common::engine::{Engine, RedisEngine};
use herald_common::keys::Keys;
use herald_common::publish::{HistoryConfig, Publisher};
use herald_proto::channel::SYSTEM_CHANNEL;
use herald_proto::envelope::{self, FrameTemplate};
use herald_proto::time::now_ms;

use crate::{Redis, within};

const CHANNEL: &str = "chat:lobby";
const TS: &str = "2026-01-01T12:00:00.000Z";

/// Payloads that put the splicing to the test: non-ASCII (two-, three- and
/// four-byte UTF-8), JSON escapes, and characters that mean something to Lua
/// patterns or to the envelope header (`%`, spaces, a newline).
const PAYLOAD: &str = r#"{"text":"héllo 世界 🎉","quote":"say \"hi\"","path":"C:\\dir\\","nl":"one\ntwo","ctrl":"\u0001\u001f","ls":"\u2028","lua":"%d %s [^x]*$","html":"</script>"}"#;

fn raw(json: &str) -> Box<RawValue> {
    RawValue::from_string(json.to_owned()).expect("valid JSON")
}

/// Each channel frame the services publish, with the channel it goes to.
fn templates() -> Vec<(&'static str, &'static str, FrameTemplate)> {
    let payload = raw(PAYLOAD);
    vec![
        (
            "a message from a user",
            CHANNEL,
            envelope::message(CHANNEL, &payload, Some("ålice \"the\" user"), TS),
        ),
        (
            "a server-side message",
            CHANNEL,
            envelope::message(CHANNEL, &raw(r#""plain string""#), None, TS),
        ),
        (
            "a message of null",
            CHANNEL,
            envelope::message(CHANNEL, &raw("null"), None, TS),
        ),
        (
            "a system notification",
            SYSTEM_CHANNEL,
            envelope::system_notification(&payload, TS),
        ),
        (
            "a user message",
            CHANNEL,
            envelope::user_message(CHANNEL, "bot-ü", &payload, TS),
        ),
        (
            "a processing result",
            CHANNEL,
            envelope::processing_result(CHANNEL, "job-1", "stats", "done", &payload, TS),
        ),
    ]
}

/// The history entry of `offset` on `channel`: its frame and publish time.
async fn history_entry(
    conn: &mut ConnectionManager,
    keys: &Keys,
    channel: &str,
    offset: u64,
) -> (String, u64) {
    let id = format!("{offset}-0");
    let reply: redis::streams::StreamRangeReply = within(
        "XRANGE",
        redis::cmd("XRANGE")
            .arg(keys.history(channel))
            .arg(&id)
            .arg(&id)
            .query_async(conn),
    )
    .await
    .expect("XRANGE");
    let [entry] = reply.ids.as_slice() else {
        panic!("one history entry at {id}, found {:?}", reply.ids);
    };
    let frame: String = entry.get("f").expect("the frame field");
    let ms: u64 = entry.get("t").expect("the publish-time field");
    (frame, ms)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publish_script_writes_what_envelope_encode_writes() {
    let redis = Redis::start().await;
    let keys = Keys::new("herald:");
    let client = redis::Client::open(redis.url()).expect("redis url");
    let mut conn = within(
        "a connection manager",
        ConnectionManager::new(client.clone()),
    )
    .await
    .expect("connection manager");
    let mut pubsub = within("a pubsub connection", client.get_async_pubsub())
        .await
        .expect("pubsub");
    for channel in [CHANNEL, SYSTEM_CHANNEL] {
        within("SUBSCRIBE", pubsub.subscribe(keys.channel(channel)))
            .await
            .expect("subscribe");
    }
    let mut messages = pubsub.into_on_message();
    let engine = Engine::Redis(RedisEngine {
        client: herald_common::store::Client::Single(client.clone()),
        conn: herald_common::store::Conn::Single(conn.clone()),
        target: herald_common::store::Target::Single(redis.url()),
    });
    let publisher = Publisher::new(engine, keys.clone(), HistoryConfig::default());

    // (channel, epoch) of every publish so far.
    let mut seen: Vec<(&str, String)> = Vec::new();
    for (what, channel, template) in templates() {
        let published_ms = now_ms();
        let (offset, epoch) = within(what, publisher.publish(channel, &template, published_ms))
            .await
            .expect("publish");
        let before = seen.iter().filter(|(c, _)| *c == channel).count();
        assert_eq!(
            offset,
            before as u64 + 1,
            "{what}: offsets count up per channel"
        );
        seen.push((channel, epoch.clone()));

        let msg = within(what, messages.next())
            .await
            .expect("the pubsub connection stays open");
        assert_eq!(msg.get_channel_name(), keys.channel(channel), "{what}");
        let payload = msg.get_payload_bytes();
        let frame = template.fill(offset, &epoch);
        let expected = envelope::encode(offset, &epoch, published_ms, &frame);
        assert_eq!(
            String::from_utf8_lossy(payload),
            expected,
            "{what}: the script's payload differs from envelope::encode"
        );
        assert_eq!(payload, expected.as_bytes(), "{what}: byte for byte");

        // And the reading side takes it apart again.
        let env = envelope::decode(payload).expect("the header decodes");
        assert_eq!(
            (env.offset, env.epoch, env.published_ms),
            (offset, epoch.as_str(), published_ms),
            "{what}"
        );
        assert_eq!(&payload[env.frame_start..], frame.as_bytes(), "{what}");

        let (stored, stored_ms) = history_entry(&mut conn, &keys, channel, offset).await;
        assert_eq!(stored, frame, "{what}: history holds the filled frame");
        assert_eq!(stored_ms, published_ms, "{what}");

        // The spliced frame is still the JSON the template was built from.
        let v: Value = serde_json::from_str(&frame).expect("the frame is JSON");
        assert_eq!(
            (v["offset"].as_u64(), v["epoch"].as_str()),
            (Some(offset), Some(epoch.as_str()))
        );
        assert_eq!(v["channel"], channel, "{what}");
    }

    // One epoch per channel, kept across its publishes.
    for channel in [CHANNEL, SYSTEM_CHANNEL] {
        let mut of_channel = seen.iter().filter(|(c, _)| *c == channel).map(|(_, e)| e);
        let first = of_channel.next().expect("a publish");
        assert!(of_channel.all(|e| e == first), "{channel}: {seen:?}");
    }
    drop(redis);
}

/// The memory engine's publish writes the same envelope and history as the script.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_engine_writes_what_envelope_encode_writes() {
    let keys = Keys::new("herald:");
    let engine = Engine::memory();
    let mut sub = within("a subscription", engine.subscriber())
        .await
        .expect("subscriber");
    let names = [keys.channel(CHANNEL), keys.channel(SYSTEM_CHANNEL)];
    within("subscribe", sub.sink.subscribe(&names))
        .await
        .expect("subscribe");
    let publisher = Publisher::new(engine, keys.clone(), HistoryConfig::default());
    for (what, channel, template) in templates() {
        let published_ms = now_ms();
        let (offset, epoch) = within(what, publisher.publish(channel, &template, published_ms))
            .await
            .expect("publish");
        let msg = within(what, sub.stream.next())
            .await
            .expect("the subscription stays open");
        assert_eq!(msg.channel(), keys.channel(channel), "{what}");
        let frame = template.fill(offset, &epoch);
        let expected = envelope::encode(offset, &epoch, published_ms, &frame);
        assert_eq!(msg.payload(), expected.as_bytes(), "{what}: byte for byte");
        let stored = within(what, publisher.range(channel, offset, offset))
            .await
            .expect("range");
        assert_eq!(
            stored,
            vec![(offset, frame)],
            "{what}: history holds the frame"
        );
    }
}
