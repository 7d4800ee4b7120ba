//! The webhook queue: gateways append events (channel occupied/vacated, members,
//! client publishes) to one Redis stream, `herald:webhooks` (field `e` = the
//! event's JSON, entry id = the event's `id`), and the broadcaster delivers them to
//! the application's backend from a consumer group, at least once.
//!
//! The queue is durable only on Redis: on the memory engine nothing is recorded
//! (the all-in-one `herald` without Redis has no webhooks, and says so).

use herald_proto::webhook::Event;

use crate::engine::Engine;
use crate::keys::Keys;

/// The stream keeps about this many undelivered events; older ones are trimmed
/// (a backend down for long loses the oldest, not the newest).
pub const STREAM_MAX_LEN: u64 = 100_000;
/// The stream's field holding an event.
pub const FIELD: &str = "e";
/// The consumer group the broadcasters deliver through (the monitor reads its lag).
pub const GROUP: &str = "webhooks";

/// Appends `events` to the webhook stream, in order, as one pipeline.
pub async fn record(engine: &Engine, keys: &Keys, events: &[Event]) -> redis::RedisResult<()> {
    let Engine::Redis(r) = engine else {
        return Ok(());
    };
    if events.is_empty() {
        return Ok(());
    }
    let stream = keys.webhooks();
    let mut pipe = redis::pipe();
    for e in events {
        let json = serde_json::to_string(e).unwrap_or_default();
        pipe.cmd("XADD")
            .arg(&stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(STREAM_MAX_LEN)
            .arg("*")
            .arg(FIELD)
            .arg(json)
            .ignore();
    }
    pipe.query_async(&mut r.conn.clone()).await
}
