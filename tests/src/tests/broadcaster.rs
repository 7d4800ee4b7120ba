//! The broadcaster end to end: a real `redis-server` and the real `broadcaster`
//! binary, observed the way gateways observe it (Pub/Sub `herald:ch:<channel>` and
//! the history streams), plus its HTTP errors. Jobs are in `broadcaster_jobs.rs`,
//! legacy bridges in `broadcaster_bridges.rs`; both share the helpers here.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::{
    API_KEY, Backend, Redis, Service, ServiceBuilder, Store, dead_redis, eventually,
    eventually_within, http_json, run_bin, within,
};

// === Helpers ===

/// A frame as a gateway receives it from Redis.
#[derive(Debug)]
pub(super) struct Delivered {
    pub(super) channel: String,
    pub(super) offset: u64,
    pub(super) epoch: String,
    /// The frame exactly as published.
    pub(super) text: String,
    pub(super) frame: Value,
}

/// A subscriber to Herald channels, on the engine the services run on.
pub(super) struct Sub {
    stream: herald_common::engine::SubStream,
    keys: herald_common::keys::Keys,
    /// Subscriptions last as long as their sink.
    _sink: herald_common::engine::SubSink,
}

impl Sub {
    pub(super) async fn new(store: &impl Store, channels: &[&str]) -> Self {
        let engine = store.engine().await;
        let keys = herald_common::keys::Keys::new("herald:").sharded(engine.is_cluster());
        let sub = within("a subscription", engine.subscriber())
            .await
            .expect("subscriber");
        let (mut sink, stream) = (sub.sink, sub.stream);
        let names: Vec<String> = channels.iter().map(|c| keys.channel(c)).collect();
        within("subscribe", sink.subscribe_shard(&names))
            .await
            .expect("subscribe");
        Self {
            stream,
            keys,
            _sink: sink,
        }
    }

    pub(super) async fn next(&mut self) -> Delivered {
        let msg = within("a published frame", self.stream.next())
            .await
            .expect("pubsub closed");
        let channel = self
            .keys
            .channel_of(msg.channel())
            .expect("a channel's pub/sub name")
            .to_owned();
        let payload = msg.payload();
        let env = herald_proto::envelope::decode(payload).expect("payload has the envelope header");
        let text = std::str::from_utf8(&payload[env.frame_start..])
            .expect("utf-8 frame")
            .to_owned();
        let frame: Value = serde_json::from_str(&text).expect("frame is JSON");
        assert_eq!(
            frame["offset"], env.offset,
            "header and frame agree: {text}"
        );
        assert_eq!(frame["epoch"], env.epoch, "header and frame agree: {text}");
        Delivered {
            channel,
            offset: env.offset,
            epoch: env.epoch.to_owned(),
            text,
            frame,
        }
    }

    /// Asserts nothing more arrives within `d`.
    pub(super) async fn assert_quiet(&mut self, d: Duration) {
        if let Ok(Some(msg)) = tokio::time::timeout(d, self.stream.next()).await {
            panic!(
                "unexpected frame: {}",
                String::from_utf8_lossy(msg.payload())
            );
        }
    }
}

pub(super) async fn start(store: &impl Store) -> Service {
    ServiceBuilder::new("broadcaster").on(store).spawn().await
}

pub(super) async fn post(svc: &Service, path: &str, body: Value) -> (u16, Value) {
    http_json(
        Method::POST,
        &format!("{}{path}", svc.http()),
        Some(API_KEY),
        Some(body),
    )
    .await
}

async fn post_raw(svc: &Service, path: &str, key: Option<&str>, body: &str) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{}{path}", svc.http()))
        .body(body.to_owned());
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = within("HTTP", req.send()).await.expect("http");
    let status = resp.status().as_u16();
    let text = within("HTTP body", resp.text()).await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

pub(super) async fn get_job(svc: &Service, id: &str) -> Value {
    let (status, v) = http_json(
        Method::GET,
        &format!("{}/v1/jobs/{id}", svc.http()),
        Some(API_KEY),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v
}

pub(super) async fn submit(svc: &Service, job_type: &str, data: Value, target: &str) -> String {
    let (status, v) = post(
        svc,
        "/v1/jobs",
        json!({"job_type": job_type, "data": data, "target_channel": target}),
    )
    .await;
    assert_eq!(status, 202, "{v}");
    v["job_id"].as_str().expect("job_id").to_owned()
}

/// Polls until the job is `done` or `failed`, for at most `limit`.
pub(super) async fn finished(svc: &Service, id: &str, limit: Duration) -> Value {
    eventually_within(&format!("job {id} to finish"), limit, || async {
        let v = get_job(svc, id).await;
        if v["status"] == "done" || v["status"] == "failed" {
            Ok(v)
        } else {
            Err(format!("the job: {v}"))
        }
    })
    .await
}

/// How many messages `channel`'s history holds.
pub(super) async fn history_len(store: &impl Store, channel: &str) -> u64 {
    use herald_common::publish::{HistoryConfig, Publisher};
    let engine = store.engine().await;
    let keys = herald_common::keys::Keys::new("herald:").sharded(engine.is_cluster());
    let publisher = Publisher::new(engine, keys, HistoryConfig::default());
    let frames = within("a history read", publisher.range(channel, 1, u64::MAX))
        .await
        .expect("history");
    frames.len() as u64
}

pub(super) async fn metrics(svc: &Service) -> String {
    let resp = within(
        "GET /metrics",
        reqwest::get(format!("{}/metrics", svc.http())),
    )
    .await
    .expect("metrics");
    within("metrics body", resp.text())
        .await
        .expect("metrics text")
}

// === Publishing ===

async fn publish_assigns_increasing_offsets_and_passes_the_message_through(backend: Backend) {
    let bc = start(&backend).await;
    let mut sub = Sub::new(&backend, &["news"]).await;

    // Odd spacing and number formats must reach clients byte for byte.
    let raw = r#"{"b": 1, "a":[1.50, "x"]}"#;
    let (status, first) = post_raw(
        &bc,
        "/v1/publish",
        Some(API_KEY),
        &format!(r#"{{"channel":"news","message":{raw}}}"#),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["offset"], 1);
    let epoch = first["epoch"].as_str().expect("epoch").to_owned();

    let d = sub.next().await;
    assert_eq!(
        (d.channel.as_str(), d.offset, d.epoch.as_str()),
        ("news", 1, epoch.as_str())
    );
    assert!(
        d.text.contains(&format!(r#""message":{raw}"#)),
        "{}",
        d.text
    );
    assert_eq!(d.frame["type"], "message");
    assert_eq!(d.frame["channel"], "news");
    assert!(
        d.frame.get("from_user").is_none(),
        "server-side publish: {}",
        d.text
    );
    let ts = d.frame["timestamp"].as_str().expect("timestamp");
    assert!(ts.ends_with('Z') && ts.len() == 24, "{ts}");

    for (i, msg) in [json!("two"), Value::Null].into_iter().enumerate() {
        let (status, v) = post(&bc, "/v1/publish", json!({"channel":"news","message":msg})).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["offset"], i + 2);
        assert_eq!(v["epoch"], epoch.as_str());
        let d = sub.next().await;
        assert_eq!(d.offset, i as u64 + 2);
        assert_eq!(d.frame["message"], msg);
    }
    assert_eq!(history_len(&backend, "news").await, 3);
    assert!(metrics(&bc).await.contains("herald_publish_total 3"));
}

pub(super) async fn idempotency_key_publishes_once(backend: Backend) {
    let bc = start(&backend).await;
    let mut sub = Sub::new(&backend, &["orders"]).await;
    let body = json!({"channel":"orders","message":{"id":7},"idempotency_key":"order-7"});

    let (status, first) = post(&bc, "/v1/publish", body.clone()).await;
    assert_eq!(status, 200, "{first}");
    let (status, again) = post(&bc, "/v1/publish", body.clone()).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["offset"], first["offset"]);
    assert_eq!(again["epoch"], first["epoch"]);
    assert_eq!(again["duplicate"], true);

    let d = sub.next().await;
    assert_eq!(d.frame["message"], json!({"id": 7}));
    sub.assert_quiet(Duration::from_millis(500)).await;
    assert_eq!(history_len(&backend, "orders").await, 1);

    // Another key is another publish.
    let (_, other) = post(
        &bc,
        "/v1/publish",
        json!({"channel":"orders","message":{"id":8},"idempotency_key":"order-8"}),
    )
    .await;
    assert_eq!(other["offset"], 2);
    assert_eq!(sub.next().await.offset, 2);
    // The key is remembered for HERALD_IDEMPOTENCY_TTL_MS (5 minutes by default).
    let Some(redis) = backend.redis() else { return };
    let mut c = redis.conn().await;
    let ttl: i64 = redis::cmd("PTTL")
        .arg("herald:once:{orders}:idem:order-7")
        .query_async(&mut c)
        .await
        .expect("PTTL");
    assert!(ttl > 290_000 && ttl <= 300_000, "{ttl}");
}

async fn broadcast_publishes_to_every_channel(backend: Backend) {
    let bc = start(&backend).await;
    let mut sub = Sub::new(&backend, &["a", "b", "c:1"]).await;
    // Give channel `b` a history first, so offsets differ per channel.
    post(&bc, "/v1/publish", json!({"channel":"b","message":0})).await;
    assert_eq!(sub.next().await.channel, "b");

    let (status, v) = post(
        &bc,
        "/v1/broadcast",
        json!({"channels":["a","b","c:1"],"message":{"hello":"all"}}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let results = v["results"].as_array().expect("results");
    let got: Vec<(&str, u64)> = results
        .iter()
        .map(|r| {
            (
                r["channel"].as_str().unwrap_or(""),
                r["offset"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(got, [("a", 1), ("b", 2), ("c:1", 1)]);
    assert!(results.iter().all(|r| r["epoch"].is_string()));
    let mut seen = Vec::new();
    for _ in 0..3 {
        let d = sub.next().await;
        assert_eq!(d.frame["message"], json!({"hello":"all"}));
        seen.push((d.channel, d.offset));
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            ("a".to_owned(), 1),
            ("b".to_owned(), 2),
            ("c:1".to_owned(), 1)
        ]
    );

    // One bad channel refuses the whole request, before anything is published.
    let (status, v) = post(
        &bc,
        "/v1/broadcast",
        json!({"channels":["a","no way"],"message":1}),
    )
    .await;
    assert_eq!(status, 422, "{v}");
    let too_many: Vec<String> = (0..101).map(|i| format!("ch{i}")).collect();
    let (status, _) = post(
        &bc,
        "/v1/broadcast",
        json!({"channels":too_many,"message":1}),
    )
    .await;
    assert_eq!(status, 422);
    sub.assert_quiet(Duration::from_millis(300)).await;
}

pub(super) async fn system_notifications_and_user_messages(backend: Backend) {
    let bc = start(&backend).await;
    let mut sub = Sub::new(&backend, &["system", "user:u9"]).await;

    let (status, v) = post(&bc, "/v1/system", json!({"content":"maintenance at 5"})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["offset"], 1);
    let d = sub.next().await;
    assert_eq!(d.channel, "system");
    assert_eq!(d.frame["type"], "system_notification");
    assert_eq!(d.frame["channel"], "system");
    assert_eq!(d.frame["message"], "maintenance at 5");
    assert!(d.frame["timestamp"].is_string());

    let (status, v) = post(
        &bc,
        "/v1/user-messages",
        json!({"user_id":"u1","target_channel":"user:u9","content":{"text":"hi"}}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let d = sub.next().await;
    assert_eq!(d.channel, "user:u9");
    assert_eq!(d.frame["type"], "user_message");
    assert_eq!(d.frame["user_id"], "u1");
    assert_eq!(d.frame["content"], json!({"text":"hi"}));
    assert_eq!(d.offset, v["offset"].as_u64().expect("offset"));
}

// === Errors, configuration, operations ===

async fn http_errors(backend: Backend) {
    let bc = start(&backend).await;
    let body = r#"{"channel":"news","message":1}"#;
    for key in [None, Some("wrong-key")] {
        let (status, v) = post_raw(&bc, "/v1/publish", key, body).await;
        assert_eq!(status, 401, "{key:?}");
        assert_eq!(v["error"]["code"], "unauthorized");
    }
    let cases = [
        ("{not json", 400, "invalid_json"),
        (r#"{"channel":"news"}"#, 422, "invalid_request"),
        (r#""just a string""#, 422, "invalid_request"),
        (
            r#"{"channel":"bad channel","message":1}"#,
            422,
            "invalid_request",
        ),
    ];
    for (body, status, code) in cases {
        let (got, v) = post_raw(&bc, "/v1/publish", Some(API_KEY), body).await;
        assert_eq!(
            (got, v["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}"
        );
    }
    let (status, _) = http_json(Method::GET, &format!("{}/nope", bc.http()), None, None).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_api_key_it_starts_but_refuses_everything() {
    let redis = Redis::start().await;
    let bc = ServiceBuilder::new("broadcaster")
        .redis(&redis)
        .env("HERALD_API_KEY", "")
        .spawn()
        .await;
    for key in [Some(API_KEY), Some(""), None] {
        let (status, _) = post_raw(&bc, "/v1/system", key, r#"{"content":"x"}"#).await;
        assert_eq!(status, 401);
    }
    let (status, _) = http_json(Method::GET, &format!("{}/readyz", bc.http()), None, None).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_failures_are_one_clear_line() {
    let (_nobody, dead) = dead_redis();
    let (code, _, stderr) = run_bin(
        "broadcaster",
        &[],
        &[
            ("HERALD_REDIS_URL", &dead),
            ("HERALD_LISTEN", "127.0.0.1:0"),
            ("HERALD_LOG", "warn"),
        ],
    )
    .await;
    assert_ne!(code, 0, "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("unreachable"), "{stderr}");

    let (code, _, stderr) = run_bin(
        "broadcaster",
        &[],
        &[
            ("HERALD_LISTEN", "nowhere"),
            ("HERALD_JOB_CLAIM_IDLE_MS", "5"),
        ],
    )
    .await;
    assert_eq!(code, 64, "{stderr}");
    assert!(
        stderr.contains("HERALD_LISTEN") && stderr.contains("HERALD_JOB_CLAIM_IDLE_MS"),
        "{stderr}"
    );

    let (code, stdout, _) = run_bin("broadcaster", &["--help"], &[]).await;
    assert_eq!(code, 0);
    for flag in [
        "HERALD_API_KEY",
        "HERALD_JOB_WORKERS",
        "HERALD_IDEMPOTENCY_TTL_MS",
        "HERALD_HISTORY_SIZE",
    ] {
        assert!(stdout.contains(flag), "--help lacks {flag}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_metrics_and_graceful_stop() {
    let redis = Redis::start().await;
    let mut bc = ServiceBuilder::new("broadcaster")
        .redis(&redis)
        .env("HERALD_NODE_ID", "bc-beat")
        .process()
        .spawn()
        .await;
    post(&bc, "/v1/publish", json!({"channel":"m","message":1})).await;

    let mut c = redis.conn().await;
    let info: Value = eventually("a heartbeat", || {
        let mut c = c.clone();
        async move {
            let s: Option<String> = redis::cmd("GET")
                .arg("herald:node:bc-beat")
                .query_async(&mut c)
                .await
                .ok()?;
            serde_json::from_str(&s?).ok()
        }
    })
    .await;
    assert_eq!(info["service"], "broadcaster");
    assert_eq!(info["address"], bc.addr.to_string());

    // The whole exposition passes promtool's checks.
    let text = metrics(&bc).await;
    assert!(text.contains("herald_redis_errors_total 0"), "{text}");
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed");
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write metrics");
    }
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    assert_eq!(bc.terminate().await, Some(0));
    let score: Option<f64> = redis::cmd("ZSCORE")
        .arg("herald:nodes")
        .arg("bc-beat")
        .query_async(&mut c)
        .await
        .expect("ZSCORE");
    assert_eq!(score, None, "a graceful stop deregisters the node");
}

crate::both_engines!(
    publish_assigns_increasing_offsets_and_passes_the_message_through,
    idempotency_key_publishes_once,
    broadcast_publishes_to_every_channel,
    system_notifications_and_user_messages,
    http_errors,
);
