//! Webhooks end to end: two gateways recording events on a real Redis, the
//! broadcaster delivering them to a real HTTP backend in this process (axum), which
//! checks every signature with the shared secret. Occupied and vacated across
//! gateways, members with their `info`, client publishes; retries with the same ids,
//! drops after `HERALD_WEBHOOK_RETRY_FOR_MS`; a flap that sends nothing; events
//! recorded before any broadcaster ran; a broadcaster killed with SIGKILL while the
//! backend is down; the monitor's view; the memory engine's refusal.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine as _;
use reqwest::Method;
use serde_json::{Value, json};

use super::broadcaster::metrics;
use super::gateway::{broadcast, gateway, now, subscribe};
use crate::{
    Redis, Service, ServiceBuilder, Ws, eventually, eventually_within, http_json, run_bin_clean,
    token_with,
};

const SECRET: &str = "webhook-secret-0123456789abcdef";
/// Every kind of event.
const ALL: &str = "channel_occupied,channel_vacated,member_added,member_removed,client_publish";

// === The backend ===

/// One POST the backend received.
#[derive(Debug, Clone)]
struct Post {
    /// What the backend answered.
    status: u16,
    events: Vec<Value>,
    body: String,
    /// The signature's timestamp (Unix seconds).
    t: u64,
    /// The signature matched the body and the secret, the content type was JSON.
    valid: bool,
    at: Instant,
}

#[derive(Debug, Default)]
struct Seen {
    posts: Vec<Post>,
    /// Statuses to answer next, before going back to 200.
    script: VecDeque<u16>,
    /// While set, every POST gets this (a backend that is down).
    down: Option<u16>,
}

type Shared = Arc<Mutex<Seen>>;

/// `HMAC-SHA256(secret, "<t>.<body>")` in hex, computed by jsonwebtoken's HS256
/// signer: another implementation than the broadcaster's.
fn expected_mac(t: u64, body: &[u8]) -> String {
    let mut message = format!("{t}.").into_bytes();
    message.extend_from_slice(body);
    let b64 = jsonwebtoken::crypto::sign(
        &message,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        jsonwebtoken::Algorithm::HS256,
    )
    .expect("HS256");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(b64)
        .expect("base64url");
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `(t, v1)` of an `X-Herald-Signature`.
fn parse_signature(h: &str) -> Option<(u64, String)> {
    let (mut t, mut v1) = (None, None);
    for part in h.split(',') {
        match part.split_once('=')? {
            ("t", v) => t = v.parse().ok(),
            ("v1", v) => v1 = Some(v.to_owned()),
            _ => {}
        }
    }
    Some((t?, v1?))
}

async fn receive(State(s): State<Shared>, h: HeaderMap, body: Bytes) -> StatusCode {
    let header = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    let signature = parse_signature(header("x-herald-signature"));
    let valid = header("content-type") == "application/json"
        && signature
            .as_ref()
            .is_some_and(|(t, v1)| *v1 == expected_mac(*t, &body));
    let text = String::from_utf8_lossy(&body).into_owned();
    let events = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["events"].as_array().cloned())
        .unwrap_or_default();
    let mut seen = s.lock().expect("seen");
    let status = seen.down.or_else(|| seen.script.pop_front()).unwrap_or(200);
    seen.posts.push(Post {
        status,
        events,
        body: text,
        t: signature.map_or(0, |(t, _)| t),
        valid,
        at: Instant::now(),
    });
    StatusCode::from_u16(status).expect("status")
}

/// The backend; returns its URL and what it saw.
async fn backend() -> (String, Shared) {
    let seen = Shared::default();
    let app = axum::Router::new()
        .route("/herald", post(receive))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/herald", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, seen)
}

fn posts(s: &Shared) -> Vec<Post> {
    s.lock().expect("seen").posts.clone()
}

/// The events of the POSTs answered 2xx, in arrival order.
fn delivered(s: &Shared) -> Vec<Value> {
    posts(s)
        .into_iter()
        .filter(|p| p.status < 300)
        .flat_map(|p| p.events)
        .collect()
}

/// Waits until `n` events have been delivered; returns them all.
async fn delivered_n(s: &Shared, n: usize) -> Vec<Value> {
    eventually(&format!("{n} events delivered"), || async {
        let d = delivered(s);
        if d.len() >= n {
            Ok(d)
        } else {
            Err(format!("{} so far: {d:?}", d.len()))
        }
    })
    .await
}

/// Every POST so far was signed with the secret, as JSON, moments ago.
fn assert_signed(s: &Shared) {
    let now_s = now();
    for p in posts(s) {
        assert!(p.valid, "bad signature or content type on {}", p.body);
        assert!(
            p.t.abs_diff(now_s) < 120,
            "stale timestamp {} on {}",
            p.t,
            p.body
        );
    }
}

/// `(type, user_id)` of events, for comparing sequences.
fn kinds(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or("?").to_owned(),
                e["user_id"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

// === The cluster ===

fn hooked_gateway(redis: &Redis, events: &str) -> ServiceBuilder {
    gateway(redis)
        .env("HERALD_WEBHOOK_EVENTS", events)
        .env("HERALD_WEBHOOK_PUBLISH_CHANNELS", "room:*")
}

fn delivering(redis: &Redis, url: &str) -> ServiceBuilder {
    ServiceBuilder::new("broadcaster")
        .redis(redis)
        .env("HERALD_WEBHOOK_URL", url)
        .env("HERALD_WEBHOOK_SECRET", SECRET)
        .env("HERALD_JOB_CLAIM_IDLE_MS", "1000")
}

/// A token for `sub` that may subscribe and publish to `room:*`, with extra claims.
fn room_token(sub: &str, extra: Value) -> String {
    let mut claims = json!({
        "sub": sub,
        "channels": ["room:*"],
        "publish": ["room:*"],
        "exp": now() + 3600,
        "iss": "herald-auth",
        "aud": "herald",
    });
    if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    token_with(claims)
}

async fn connect(gw: &Service, user: &str, extra: Value) -> (Ws, String) {
    let (ws, ok) = Ws::auth(gw, &room_token(user, extra), &[]).await;
    let id = ok["conn_id"].as_str().expect("conn_id").to_owned();
    (ws, id)
}

async fn unsubscribe(ws: &mut Ws, channel: &str, id: u64) {
    ws.send(json!({"type":"unsubscribe","channel":channel,"id":id}))
        .await;
    // Messages of the channel may still come first.
    loop {
        let v = ws.recv().await;
        if v["type"] == "unsubscribed" {
            assert_eq!(v["id"], id);
            return;
        }
        assert_eq!(v["type"], "message", "{v}");
    }
}

/// The value of a labelled series in a `/metrics` text (0 when absent).
fn series(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == name).then(|| v.parse().ok())?
        })
        .unwrap_or(0.0)
}

async fn overview_webhooks(monitor: &Service) -> Value {
    let (status, o) = http_json(
        Method::GET,
        &format!("{}/api/v1/overview", monitor.http()),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{o}");
    o["webhooks"].clone()
}

async fn stream_ids(redis: &Redis) -> Vec<String> {
    let mut c = redis.conn().await;
    let r: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg("herald:webhooks")
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .expect("XRANGE");
    r.ids.into_iter().map(|e| e.id).collect()
}

/// Entries pending in the delivery group, and the stream's length.
async fn queue(redis: &Redis) -> (i64, i64) {
    let mut c = redis.conn().await;
    let summary: redis::Value = redis::cmd("XPENDING")
        .arg("herald:webhooks")
        .arg("webhooks")
        .query_async(&mut c)
        .await
        .expect("XPENDING");
    let pending = match summary {
        redis::Value::Array(f) => match f.first() {
            Some(redis::Value::Int(n)) => *n,
            _ => -1,
        },
        _ => -1,
    };
    let len: i64 = redis::cmd("XLEN")
        .arg("herald:webhooks")
        .query_async(&mut c)
        .await
        .expect("XLEN");
    (pending, len)
}

/// Waits until nothing is pending and the stream is empty (done entries are
/// deleted).
async fn drained(redis: &Redis) {
    eventually("the webhook queue to drain", || async {
        let q = queue(redis).await;
        if q == (0, 0) {
            Ok(())
        } else {
            Err(format!("pending, length: {q:?}"))
        }
    })
    .await;
}

// === Scenarios ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_members_and_publishes_reach_the_backend_signed_and_in_order() {
    let redis = Redis::start().await;
    let (url, seen) = backend().await;
    let gw1 = hooked_gateway(&redis, ALL).spawn().await;
    let gw2 = hooked_gateway(&redis, ALL).spawn().await;
    let bc = delivering(&redis, &url).spawn().await;
    let monitor = ServiceBuilder::new("monitor").redis(&redis).spawn().await;

    // The first subscriber anywhere occupies the channel.
    let info = json!({"name": "Alice"});
    let (mut alice, a_id) = connect(&gw1, "alice", json!({"info": info})).await;
    subscribe(&mut alice, "room:1", 1).await;
    let d = delivered_n(&seen, 2).await;
    assert_eq!(
        kinds(&d),
        pairs(&[("member_added", "alice"), ("channel_occupied", "")])
    );
    assert_eq!(d[0]["conn_id"], a_id.as_str());
    assert_eq!(d[0]["info"], info);
    assert_eq!(d[0]["channel"], "room:1");
    let c = &d[1];
    assert_eq!(c["channel"], "room:1");
    assert!(c.get("user_id").is_none() && c.get("info").is_none(), "{c}");

    // A second one, on the other gateway: a member, not an occupation.
    let (mut bob, b_id) = connect(&gw2, "bob", json!({})).await;
    subscribe(&mut bob, "room:1", 1).await;
    let d = delivered_n(&seen, 3).await;
    assert_eq!(d[2]["type"], "member_added");
    assert_eq!(
        (&d[2]["user_id"], &d[2]["conn_id"]),
        (&json!("bob"), &json!(b_id))
    );
    assert!(d[2].get("info").is_none(), "{}", d[2]);

    // A client publish, with its position.
    let ack = broadcast(&mut alice, "room:1", json!({"text": "hi"}), 2).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let d = delivered_n(&seen, 4).await;
    let p = &d[3];
    assert_eq!(p["type"], "client_publish", "{p}");
    assert_eq!(
        (&p["user_id"], &p["conn_id"], &p["message"]),
        (&json!("alice"), &json!(a_id), &json!({"text": "hi"}))
    );
    assert_eq!(p["offset"], ack["offset"]);
    assert!(p["epoch"].is_string(), "{p}");

    // Alice leaves (her connection closes): one member less, the channel stays.
    alice.close().await;
    let d = delivered_n(&seen, 5).await;
    assert_eq!(kinds(&d[4..]), pairs(&[("member_removed", "alice")]));
    assert_eq!(d[4]["info"], info);

    // The last member anywhere leaves, on the other gateway: vacated.
    unsubscribe(&mut bob, "room:1", 3).await;
    let d = delivered_n(&seen, 7).await;
    assert_eq!(
        kinds(&d[5..]),
        pairs(&[("member_removed", "bob"), ("channel_vacated", "")])
    );

    // Each event once, with its stream id, in stream order; every POST signed.
    assert_eq!(d.len(), 7, "{d:?}");
    let ids: Vec<(u64, u64)> = d
        .iter()
        .map(|e| {
            let id = e["id"].as_str().unwrap_or_else(|| panic!("no id: {e}"));
            let (ms, seq) = id.split_once('-').expect("a stream id");
            (ms.parse().expect("ms"), seq.parse().expect("seq"))
        })
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    for e in &d {
        let at = e["at_ms"].as_u64().expect("at_ms");
        assert!(at.abs_diff(now() * 1000) < 120_000, "{e}");
    }
    assert_signed(&seen);

    // The broadcaster counts and acknowledges once it has the answer.
    eventually("the deliveries counted", || async {
        let m = metrics(&bc).await;
        let ok_posts = series(&m, r#"herald_webhook_posts_total{result="ok"}"#);
        let counted = series(&m, r#"herald_webhook_events_total{result="delivered"}"#) == 7.0
            && series(&m, r#"herald_webhook_events_total{result="dropped"}"#) == 0.0
            && series(&m, r#"herald_webhook_posts_total{result="error"}"#) == 0.0
            && ok_posts >= 1.0
            && series(&m, "herald_webhook_post_duration_seconds_count") == ok_posts;
        if counted { Ok(()) } else { Err(m) }
    })
    .await;
    // Delivered entries leave the stream.
    drained(&redis).await;

    eventually("the monitor to show the deliveries", || async {
        let w = overview_webhooks(&monitor).await;
        let want = json!({"queued":0,"delivered":7,"failed":0,"failing":false});
        if w == want { Ok(()) } else { Err(w) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_post_is_retried_with_backoff_and_the_same_ids() {
    let redis = Redis::start().await;
    let (url, seen) = backend().await;
    seen.lock().expect("seen").script.extend([500, 500]);
    let gw = hooked_gateway(&redis, "channel_occupied").spawn().await;
    let bc = delivering(&redis, &url).spawn().await;

    let (mut alice, _) = connect(&gw, "alice", json!({})).await;
    subscribe(&mut alice, "room:r", 1).await;
    let d = eventually_within(
        "a delivery after two failures",
        Duration::from_secs(20),
        || async {
            let d = delivered(&seen);
            if d.is_empty() { Err("none yet") } else { Ok(d) }
        },
    )
    .await;
    let p = posts(&seen);
    assert_eq!(
        p.iter().map(|p| p.status).collect::<Vec<_>>(),
        [500, 500, 200]
    );
    // The same batch every time: same events, same ids.
    assert!(p.iter().all(|x| x.body == p[0].body), "{p:?}");
    assert_eq!(d.len(), 1);
    assert_eq!(d[0]["type"], "channel_occupied");
    assert!(d[0]["id"].is_string(), "{}", d[0]);
    // About 1 s, then about 2 s (jittered by ±20 %).
    let gaps: Vec<Duration> = p.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(gaps[0] >= Duration::from_millis(700), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(1500), "{gaps:?}");
    assert_signed(&seen);

    eventually("two failed POSTs and one delivery counted", || async {
        let m = metrics(&bc).await;
        let counted = series(&m, r#"herald_webhook_posts_total{result="error"}"#) == 2.0
            && series(&m, r#"herald_webhook_posts_total{result="ok"}"#) == 1.0
            && series(&m, r#"herald_webhook_events_total{result="delivered"}"#) == 1.0;
        if counted { Ok(()) } else { Err(m) }
    })
    .await;
    drained(&redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_refused_for_longer_than_retry_for_are_dropped_and_counted() {
    let redis = Redis::start().await;
    let (url, seen) = backend().await;
    seen.lock().expect("seen").down = Some(503);
    let gw = hooked_gateway(&redis, "channel_occupied").spawn().await;
    let bc = delivering(&redis, &url)
        .env("HERALD_WEBHOOK_RETRY_FOR_MS", "2000")
        .spawn()
        .await;
    let monitor = ServiceBuilder::new("monitor").redis(&redis).spawn().await;

    let (mut alice, _) = connect(&gw, "alice", json!({})).await;
    subscribe(&mut alice, "room:d", 1).await;
    eventually("the monitor to show the backend failing", || async {
        let w = overview_webhooks(&monitor).await;
        if w["failing"] == true { Ok(()) } else { Err(w) }
    })
    .await;
    eventually_within(
        "the event dropped after 2 s of failures",
        Duration::from_secs(20),
        || async {
            let m = metrics(&bc).await;
            let dropped = series(&m, r#"herald_webhook_events_total{result="dropped"}"#);
            if dropped == 1.0 { Ok(()) } else { Err(m) }
        },
    )
    .await;
    let attempts = posts(&seen);
    assert!(attempts.len() >= 2, "retried before dropping: {attempts:?}");
    assert!(
        attempts
            .iter()
            .all(|p| p.status == 503 && p.body == attempts[0].body)
    );
    drained(&redis).await;
    eventually("the monitor to count the failure", || async {
        let w = overview_webhooks(&monitor).await;
        let want = json!({"queued":0,"delivered":0,"failed":1,"failing":true});
        if w == want { Ok(()) } else { Err(w) }
    })
    .await;

    // The backend is back: new events go through, the dropped one is not resent.
    seen.lock().expect("seen").down = None;
    subscribe(&mut alice, "room:d2", 2).await;
    let d = delivered_n(&seen, 1).await;
    assert_eq!(
        (&d[0]["type"], &d[0]["channel"]),
        (&json!("channel_occupied"), &json!("room:d2"))
    );
    eventually("the monitor to show the recovery", || async {
        let w = overview_webhooks(&monitor).await;
        let want = json!({"queued":0,"delivered":1,"failed":1,"failing":false});
        if w == want { Ok(()) } else { Err(w) }
    })
    .await;
    assert_signed(&seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_vacated_and_occupied_again_within_the_debounce_sends_nothing() {
    let redis = Redis::start().await;
    let (url, seen) = backend().await;
    let events = "channel_occupied,channel_vacated";
    let gw1 = hooked_gateway(&redis, events).spawn().await;
    let gw2 = hooked_gateway(&redis, events).spawn().await;
    let bc = delivering(&redis, &url).spawn().await;

    let (mut alice, _) = connect(&gw1, "alice", json!({})).await;
    subscribe(&mut alice, "room:f", 1).await;
    let d = delivered_n(&seen, 1).await;
    assert_eq!(d[0]["type"], "channel_occupied");

    // Leave and come back on the same connection; then leave on one gateway while
    // someone arrives on the other.
    unsubscribe(&mut alice, "room:f", 2).await;
    subscribe(&mut alice, "room:f", 3).await;
    let (mut bob, _) = connect(&gw2, "bob", json!({})).await;
    unsubscribe(&mut alice, "room:f", 4).await;
    subscribe(&mut bob, "room:f", 1).await;
    eventually("both flaps debounced", || async {
        let m = metrics(&bc).await;
        let n = series(&m, r#"herald_webhook_events_total{result="debounced"}"#);
        if n == 4.0 { Ok(()) } else { Err(m) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(delivered(&seen).len(), 1, "{:?}", delivered(&seen));

    // A real departure: sent once its window has passed, not before.
    let left = Instant::now();
    unsubscribe(&mut bob, "room:f", 2).await;
    let d = delivered_n(&seen, 2).await;
    let waited = left.elapsed();
    assert_eq!(
        (&d[1]["type"], &d[1]["channel"]),
        (&json!("channel_vacated"), &json!("room:f"))
    );
    assert!(waited >= Duration::from_millis(700), "held {waited:?}");
    assert_signed(&seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_recorded_before_any_broadcaster_ran_are_delivered_when_one_starts() {
    let redis = Redis::start().await;
    let (url, seen) = backend().await;
    let gw = hooked_gateway(&redis, ALL).spawn().await;

    let (mut alice, _) = connect(&gw, "alice", json!({})).await;
    subscribe(&mut alice, "room:e", 1).await;
    let ack = broadcast(&mut alice, "room:e", json!({"n": 1}), 2).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    alice.close().await;
    let recorded = eventually("the gateway to record five events", || async {
        let ids = stream_ids(&redis).await;
        if ids.len() == 5 {
            Ok(ids)
        } else {
            Err(format!("{ids:?}"))
        }
    })
    .await;

    let _bc = delivering(&redis, &url).spawn().await;
    let d = delivered_n(&seen, 5).await;
    // Presence events and publishes are recorded by different parts of the gateway:
    // the publish may come before the subscription's member_added.
    let mut got = kinds(&d);
    got.sort();
    assert_eq!(
        got,
        pairs(&[
            ("channel_occupied", ""),
            ("channel_vacated", ""),
            ("client_publish", "alice"),
            ("member_added", "alice"),
            ("member_removed", "alice"),
        ])
    );
    let at = |kind: &str| d.iter().position(|e| e["type"] == kind);
    assert!(at("member_added") < at("channel_occupied"), "{d:?}");
    assert!(at("channel_occupied") < at("member_removed"), "{d:?}");
    assert!(at("member_removed") < at("channel_vacated"), "{d:?}");
    let ids: Vec<String> = d
        .iter()
        .map(|e| e["id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(ids, recorded, "the ids are the stream entry ids");
    assert_signed(&seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcaster_killed_while_the_backend_is_down_leaves_its_events_to_another() {
    let redis = Redis::start().await;
    let (url, seen) = backend().await;
    seen.lock().expect("seen").down = Some(503);
    let gw = hooked_gateway(&redis, "channel_occupied,member_added")
        .spawn()
        .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("broadcaster-a.log");
    let mut a = delivering(&redis, &url)
        .env("HERALD_NODE_ID", "bc-a")
        .env("HERALD_LOG", "debug")
        .process()
        .log_to(&log)
        .spawn()
        .await;

    let mut clients = Vec::new();
    for (user, room) in [
        ("alice", "room:k1"),
        ("bob", "room:k2"),
        ("carol", "room:k3"),
    ] {
        let (mut ws, _) = connect(&gw, user, json!({})).await;
        subscribe(&mut ws, room, 1).await;
        clients.push(ws);
    }
    let recorded = eventually("six events recorded", || async {
        let ids = stream_ids(&redis).await;
        if ids.len() == 6 {
            Ok(ids)
        } else {
            Err(format!("{ids:?}"))
        }
    })
    .await;
    // A has taken events and keeps failing to deliver them.
    eventually("broadcaster A to hold events it cannot deliver", || async {
        let (pending, _) = queue(&redis).await;
        let tried = posts(&seen).len();
        if pending > 0 && tried >= 2 {
            Ok(())
        } else {
            Err(format!("pending {pending}, attempts {tried}"))
        }
    })
    .await;
    a.kill().await;
    assert!(delivered(&seen).is_empty());

    seen.lock().expect("seen").down = None;
    let _b = delivering(&redis, &url)
        .env("HERALD_NODE_ID", "bc-b")
        .spawn()
        .await;
    let got: HashSet<String> = eventually("every recorded event delivered", || async {
        let got: HashSet<String> = delivered(&seen)
            .iter()
            .filter_map(|e| e["id"].as_str().map(str::to_owned))
            .collect();
        let missing: Vec<&String> = recorded.iter().filter(|id| !got.contains(*id)).collect();
        if missing.is_empty() {
            Ok(got)
        } else {
            Err(format!("missing {missing:?}"))
        }
    })
    .await;
    // At least once: duplicates may come, but only of recorded events.
    assert!(got.iter().all(|id| recorded.contains(id)), "{got:?}");
    drained(&redis).await;
    assert_signed(&seen);

    let logged = std::fs::read_to_string(&log).expect("A's log");
    assert!(logged.contains("webhook POST failed"), "{logged}");
    assert!(!logged.contains(SECRET), "the secret reached a log line");
}

/// The all-in-one `herald` without Redis refuses webhooks in one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_engine_refuses_webhooks_at_start() {
    let any = "127.0.0.1:0";
    let (code, _, err) = run_bin_clean(
        "herald",
        &[],
        &[
            ("HERALD_GATEWAY_LISTEN", any),
            ("HERALD_AUTH_LISTEN", any),
            ("HERALD_BROADCASTER_LISTEN", any),
            ("HERALD_MONITOR_LISTEN", any),
            ("HERALD_JWT_SECRET", crate::TEST_SECRET),
            ("HERALD_WEBHOOK_URL", "http://127.0.0.1:9/herald"),
            ("HERALD_WEBHOOK_SECRET", SECRET),
            ("HERALD_LOG", "warn"),
        ],
    )
    .await;
    assert_ne!(code, 0, "{err}");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("HERALD_WEBHOOK_URL"))
        .collect();
    assert_eq!(
        lines,
        [
            "herald: broadcaster: HERALD_WEBHOOK_URL needs Redis (HERALD_REDIS_URL): webhook \
          events are queued in a Redis stream, which the in-memory engine does not have"
        ],
        "{err}"
    );
    assert!(!err.contains(SECRET), "{err}");
}
