//! The legacy bridges: the original design's producers PUBLISH to the Redis
//! channels `system_notifications` and `user_messages` (no prefix); each message is
//! republished through the publish script as a `system_notification` (channel
//! `system`) or a `user_message` (its `target_channel`), so gateways deliver it and
//! clients can recover it.
//!
//! Several broadcasters may run, and every one of them receives every Pub/Sub
//! message. So that a bridged message is published once, each publish is made with
//! `publish_once(once_id = "bridge:<sha256 of the raw payload>", ttl 60 s)`: the
//! first instance publishes, the others find the marker and publish nothing. The
//! flip side: a producer that sends byte-identical payloads within 60 s gets one
//! delivery (the legacy payloads carry a `timestamp`, which keeps real repeats apart).
//!
//! Pub/Sub itself is at-most-once: messages published while this bridge is
//! disconnected (a Redis restart) are not seen. The bridge reconnects with backoff
//! and subscribes again; a silent connection is caught by a periodic PING.
//!
//! The bridges run on a Redis engine only: the legacy producers publish to a
//! Redis, which a node on the memory engine does not have.

use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use herald_common::backoff::Backoff;
use herald_common::engine::Engine;
use herald_common::keys::{LEGACY_SYSTEM_NOTIFICATIONS, LEGACY_USER_MESSAGES};
use herald_common::runtime::Runtime;
use herald_common::store;
use herald_proto::channel;
use herald_proto::envelope::{self, FrameTemplate};
use herald_proto::legacy::{LegacySystemNotification, LegacyUserMessage};
use herald_proto::time::{ms_to_rfc3339, now_rfc3339};

use crate::AppState;
use crate::jobs::kinds::hex;

/// How long a bridged payload's dedupe marker lives.
pub const DEDUPE_TTL_MS: u64 = 60_000;
/// How often the subscription connection is probed with PING.
pub const PING_EVERY: Duration = Duration::from_secs(5);
/// Attempts to publish one bridged message while Redis hiccups (the dedupe marker
/// makes a retry safe).
pub const PUBLISH_ATTEMPTS: u32 = 3;

/// Why a subscription session ended.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("the subscription connection closed")]
    Closed,
}

/// A legacy message that cannot be bridged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("not the expected JSON: {0}")]
    Json(String),
    #[error("target_channel: {0}")]
    Channel(#[from] channel::ChannelError),
    #[error("user_id is empty")]
    EmptyUser,
    #[error("unknown source channel {0:?}")]
    Source(String),
}

/// A bridged message, ready to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bridged {
    pub channel: String,
    pub frame: FrameTemplate,
    pub once_id: String,
}

/// Starts the bridge task on a Redis engine; on the memory engine there are no
/// legacy channels to read.
pub fn spawn(ctx: &AppState, rt: &Runtime) {
    let Some(redis) = ctx.engine.redis() else {
        tracing::info!(
            "legacy bridges not started: they read the legacy system's Redis channels, and this node runs on the memory engine"
        );
        return;
    };
    let _ = redis;
    rt.spawn(run(ctx.clone(), ctx.engine.clone(), rt.token()));
}

async fn run(ctx: AppState, engine: Engine, token: CancellationToken) {
    let mut backoff = Backoff::default();
    loop {
        match session(&ctx, &engine, &token, &mut backoff).await {
            Ok(()) => break,
            Err(e) => {
                ctx.metrics.redis_errors_total.inc();
                if backoff.is_reset() {
                    tracing::warn!(cause = %e, "legacy bridge lost its subscription; reconnecting");
                } else {
                    tracing::debug!(cause = %e, "legacy bridge still cannot subscribe");
                }
                if !backoff.sleep(&token).await {
                    break;
                }
            }
        }
    }
    tracing::info!("legacy bridge stopped");
}

async fn timed<T>(fut: impl Future<Output = redis::RedisResult<T>>) -> Result<T, BridgeError> {
    Ok(store::within(store::RESPONSE_TIMEOUT, "legacy bridge", fut).await?)
}

/// One subscription: returns `Ok` when cancelled, `Err` when the connection fails.
async fn session(
    ctx: &AppState,
    engine: &Engine,
    token: &CancellationToken,
    backoff: &mut Backoff,
) -> Result<(), BridgeError> {
    // Classic Pub/Sub, also on a cluster: the legacy publishers PUBLISH, which
    // every node of a cluster relays to every other.
    let sub = timed(engine.subscriber()).await?;
    let (mut sink, mut stream) = (sub.sink, sub.stream);
    let names = [LEGACY_SYSTEM_NOTIFICATIONS, LEGACY_USER_MESSAGES].map(str::to_owned);
    timed(sink.subscribe(&names)).await?;
    backoff.reset();
    tracing::info!(
        channels = ?[LEGACY_SYSTEM_NOTIFICATIONS, LEGACY_USER_MESSAGES],
        "legacy bridge subscribed"
    );
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        tokio::select! {
            () = token.cancelled() => return Ok(()),
            msg = stream.next() => {
                let Some(msg) = msg else { return Err(BridgeError::Closed) };
                handle(ctx, msg.channel(), msg.payload()).await;
            }
            _ = ping.tick() => {
                timed(sink.ping()).await?;
            }
        }
    }
}

/// Bridges one message; failures are logged and counted, never fatal.
async fn handle(ctx: &AppState, source: &str, payload: &[u8]) {
    ctx.received();
    let count = |result: &str| {
        ctx.metrics
            .bridge_messages_total
            .with_label_values(&[source, result])
            .inc();
    };
    let bridged = match translate(source, payload) {
        Ok(b) => b,
        Err(e) => {
            count("malformed");
            tracing::warn!(source, cause = %e, "malformed legacy message dropped");
            return;
        }
    };
    let mut delay = Duration::from_millis(100);
    for attempt in 1..=PUBLISH_ATTEMPTS {
        match ctx
            .publish(
                &bridged.channel,
                &bridged.frame,
                Some((&bridged.once_id, DEDUPE_TTL_MS)),
            )
            .await
        {
            Ok((offset, _, duplicate)) => {
                count(if duplicate { "duplicate" } else { "published" });
                tracing::debug!(source, channel = %bridged.channel, offset, duplicate, "legacy message bridged");
                return;
            }
            Err(e) if attempt < PUBLISH_ATTEMPTS => {
                tracing::debug!(source, cause = %e, attempt, "bridge publish failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 3;
            }
            Err(e) => {
                count("error");
                tracing::warn!(source, cause = %e, "legacy message lost: cannot publish it");
            }
        }
    }
}

/// Turns a legacy payload into the frame to publish (pure).
pub fn translate(source: &str, payload: &[u8]) -> Result<Bridged, Malformed> {
    let once_id = format!("bridge:{}", hex(&Sha256::digest(payload)));
    match source {
        LEGACY_SYSTEM_NOTIFICATIONS => {
            let m: LegacySystemNotification =
                serde_json::from_slice(payload).map_err(|e| Malformed::Json(e.to_string()))?;
            let ts = frame_timestamp(m.timestamp.as_ref());
            Ok(Bridged {
                channel: channel::SYSTEM_CHANNEL.to_owned(),
                frame: envelope::system_notification(&m.content, &ts),
                once_id,
            })
        }
        LEGACY_USER_MESSAGES => {
            let m: LegacyUserMessage =
                serde_json::from_slice(payload).map_err(|e| Malformed::Json(e.to_string()))?;
            if m.user_id.is_empty() {
                return Err(Malformed::EmptyUser);
            }
            // No target: the user's personal channel, which reaches the user on
            // whichever gateway they are connected (HERALD_USER_CHANNEL=1).
            let target = m
                .target_channel
                .unwrap_or_else(|| format!("{}{}", channel::USER_CHANNEL_PREFIX, m.user_id));
            channel::validate(&target)?;
            let ts = frame_timestamp(m.timestamp.as_ref());
            Ok(Bridged {
                frame: envelope::user_message(&target, &m.user_id, &m.content, &ts),
                channel: target,
                once_id,
            })
        }
        other => Err(Malformed::Source(other.to_owned())),
    }
}

/// The frame's timestamp: a numeric legacy timestamp (Unix seconds, as Python's
/// `time.time()` gives, or milliseconds) is kept, in the wire format; anything
/// else (absent, or a string in some other format) becomes the bridging time, so
/// every frame carries the one RFC 3339 format clients parse.
fn frame_timestamp(ts: Option<&Value>) -> String {
    /// Numbers above this are milliseconds (it is year 33658 in seconds).
    const MS_THRESHOLD: f64 = 1e12;
    match ts.and_then(Value::as_f64) {
        Some(t) if t.is_finite() && t > 0.0 => {
            let ms = if t >= MS_THRESHOLD { t } else { t * 1000.0 };
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "finite, positive, and far below u64::MAX after the check"
            )]
            let ms = ms.min(1e15) as u64;
            ms_to_rfc3339(ms)
        }
        _ => now_rfc3339(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(b: &Bridged) -> Value {
        serde_json::from_str(&b.frame.fill(1, "ep")).unwrap()
    }

    #[test]
    fn system_notifications() {
        let b = translate(
            LEGACY_SYSTEM_NOTIFICATIONS,
            br#"{"content":{"text":"maintenance"},"timestamp":1700000000.123}"#,
        )
        .unwrap();
        assert_eq!(b.channel, "system");
        let v = frame(&b);
        assert_eq!(v["type"], "system_notification");
        assert_eq!(v["channel"], "system");
        assert_eq!(v["message"], serde_json::json!({"text": "maintenance"}));
        assert_eq!(v["timestamp"], "2023-11-14T22:13:20.123Z");
        assert!(b.once_id.starts_with("bridge:") && b.once_id.len() == 7 + 64);
    }

    #[test]
    fn user_messages() {
        let b = translate(
            LEGACY_USER_MESSAGES,
            br#"{"user_id":"u1","target_channel":"chat:1","content":"hi","timestamp":"yesterday"}"#,
        )
        .unwrap();
        assert_eq!(b.channel, "chat:1");
        let v = frame(&b);
        assert_eq!(v["type"], "user_message");
        assert_eq!(v["user_id"], "u1");
        assert_eq!(v["content"], "hi");
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
        // No target: the user's personal channel.
        let b = translate(LEGACY_USER_MESSAGES, br#"{"user_id":"u1","content":"hi"}"#).unwrap();
        assert_eq!(b.channel, "user:u1");
        assert_eq!(frame(&b)["channel"], "user:u1");
    }

    #[test]
    fn same_payload_same_once_id() {
        let p = br#"{"content":"x","timestamp":1}"#;
        let a = translate(LEGACY_SYSTEM_NOTIFICATIONS, p).unwrap();
        let b = translate(LEGACY_SYSTEM_NOTIFICATIONS, p).unwrap();
        let c = translate(
            LEGACY_SYSTEM_NOTIFICATIONS,
            br#"{"content":"x","timestamp":2}"#,
        )
        .unwrap();
        assert_eq!(a.once_id, b.once_id);
        assert_ne!(a.once_id, c.once_id);
    }

    #[test]
    fn malformed() {
        let bad = |src: &str, p: &[u8]| translate(src, p).unwrap_err();
        assert!(matches!(
            bad(LEGACY_SYSTEM_NOTIFICATIONS, b"nope"),
            Malformed::Json(_)
        ));
        assert!(matches!(
            bad(LEGACY_SYSTEM_NOTIFICATIONS, b"{}"),
            Malformed::Json(_)
        ));
        assert!(matches!(
            bad(
                LEGACY_USER_MESSAGES,
                br#"{"user_id":"u","target_channel":"a b","content":1}"#
            ),
            Malformed::Channel(_)
        ));
        assert_eq!(
            bad(
                LEGACY_USER_MESSAGES,
                br#"{"user_id":"","target_channel":"a","content":1}"#
            ),
            Malformed::EmptyUser
        );
        assert!(matches!(bad("other", b"{}"), Malformed::Source(_)));
    }

    #[test]
    fn timestamps() {
        assert_eq!(
            frame_timestamp(Some(&serde_json::json!(1_700_000_000_123_u64))),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(
            frame_timestamp(Some(&serde_json::json!(1_700_000_000))),
            "2023-11-14T22:13:20.000Z"
        );
        assert_eq!(frame_timestamp(None).len(), 24);
        assert_eq!(frame_timestamp(Some(&serde_json::json!(-5))).len(), 24);
    }
}
