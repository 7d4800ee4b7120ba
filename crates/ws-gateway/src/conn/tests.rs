//! The connection state machine driven without sockets: the test holds the client
//! end of two channels, time is paused (so a 25 s heartbeat takes no time), and the
//! gateway's Redis is an address nothing listens on — none of these paths may need it.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use clap::Parser;
use futures_channel::mpsc as fmpsc;
use futures_util::{Sink, Stream, StreamExt};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use herald_proto::claims::Claims;
use herald_proto::disconnect::Disconnect;

use super::{Conn, Preauth};
use crate::Config;
use crate::hub::Delivery;
use crate::metrics::Metrics;
use crate::state::{Queues, State};

/// The gateway's end: frames from the client in, frames to the client out. The out
/// channel is bounded so that a client that stops reading blocks the gateway's writes
/// the way a full TCP buffer does.
struct TestSocket {
    inbound: fmpsc::UnboundedReceiver<Message>,
    outbound: fmpsc::Sender<Message>,
}

impl Stream for TestSocket {
    type Item = Result<Message, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inbound.poll_next_unpin(cx).map(|m| m.map(Ok))
    }
}

impl Sink<Message> for TestSocket {
    type Error = axum::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.outbound.poll_ready(cx).map_err(axum::Error::new)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        self.outbound.start_send(item).map_err(axum::Error::new)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.outbound)
            .poll_flush(cx)
            .map_err(axum::Error::new)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.outbound)
            .poll_close(cx)
            .map_err(axum::Error::new)
    }
}

/// The client's end.
struct Client {
    tx: fmpsc::UnboundedSender<Message>,
    rx: fmpsc::Receiver<Message>,
}

/// How long a test waits for one frame (paused time: only a bound, never a delay).
const WAIT: Duration = Duration::from_secs(120);

impl Client {
    fn send(&self, text: &str) {
        self.tx
            .unbounded_send(Message::Text(Utf8Bytes::from(text)))
            .unwrap();
    }

    /// The next frame, or `None` once the gateway dropped its end.
    async fn next(&mut self) -> Option<Message> {
        tokio::time::timeout(WAIT, self.rx.next())
            .await
            .expect("a frame within the wait")
    }

    /// The next text frame as JSON, skipping pings and heartbeats.
    async fn json(&mut self) -> Value {
        loop {
            match self.next().await {
                Some(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["type"] != "heartbeat" {
                        return v;
                    }
                }
                Some(Message::Ping(_)) => {}
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Reads until the close frame, which it returns, skipping pings and heartbeats;
    /// any other frame is returned in the list.
    async fn until_close(&mut self) -> (Vec<Value>, Option<CloseFrame>) {
        let mut frames = Vec::new();
        loop {
            match self.next().await {
                Some(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["type"] != "heartbeat" {
                        frames.push(v);
                    }
                }
                Some(Message::Close(c)) => return (frames, c),
                Some(_) => {}
                None => return (frames, None),
            }
        }
    }
}

struct Harness {
    state: std::sync::Arc<State>,
    /// Kept so the hub's and presence's queues stay open.
    _queues: Queues,
}

fn harness(args: &[&str]) -> Harness {
    let mut all = vec![
        "ws-gateway",
        "--jwt-secret",
        "0123456789abcdef0123456789abcdef",
    ];
    all.extend_from_slice(args);
    let config = Config::try_parse_from(all).unwrap();
    let settings = config.validate().unwrap();
    // Nothing listens on port 1: a path that touched Redis would fail, not pass.
    let client = redis::Client::open("redis://127.0.0.1:1/").unwrap();
    let redis = redis::aio::ConnectionManager::new_lazy_with_config(
        client.clone(),
        redis::aio::ConnectionManagerConfig::new(),
    )
    .unwrap();
    let metrics = Metrics::new().unwrap();
    let rt = herald_common::runtime::Runtime::new(
        crate::SERVICE,
        &config.common,
        metrics.registry.clone(),
        Duration::from_secs(1),
        herald_common::engine::Engine::Redis(herald_common::engine::RedisEngine {
            client: herald_common::store::Client::Single(client),
            conn: herald_common::store::Conn::Single(redis),
            target: herald_common::store::Target::Single("redis://127.0.0.1:1/".to_owned()),
        }),
    );
    let (state, queues) = State::new(&config, settings, &rt, metrics);
    Harness {
        state,
        _queues: queues,
    }
}

fn claims(exp_in: Option<Duration>) -> Claims {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    Claims {
        sub: Some("u1".into()),
        exp: exp_in.map_or(0, |d| (now + d).as_secs()),
        channels: vec!["*".into()],
        publish: vec!["*".into()],
        ..Claims::default()
    }
}

impl Harness {
    /// Opens an authenticated connection (as after a handshake token) and runs it;
    /// `setup` may touch the connection before it starts.
    async fn connect(
        &self,
        claims: Claims,
        batch: bool,
        setup: impl FnOnce(&mut Conn<TestSocket>),
    ) -> (Client, Running) {
        let (client_tx, inbound) = fmpsc::unbounded();
        let (outbound, client_rx) = fmpsc::channel(0);
        let socket = TestSocket { inbound, outbound };
        let pre = Preauth {
            claims,
            channels: Vec::new(),
            batch,
        };
        let mut conn = Conn::open(
            "test-conn".to_owned(),
            socket,
            self.state.clone(),
            [127, 0, 0, 1].into(),
            pre,
        );
        setup(&mut conn);
        let shared = conn.shared.clone();
        let key = conn.key;
        let task = tokio::spawn(async move {
            conn.run(Vec::new(), None).await;
            conn.leave();
        });
        let mut client = Client {
            tx: client_tx,
            rx: client_rx,
        };
        assert_eq!(client.json().await["type"], "auth_success");
        (client, Running { task, shared, key })
    }

    fn disconnects(&self, label: &str) -> u64 {
        self.state
            .metrics
            .disconnects
            .with_label_values(&[label])
            .get()
    }

    /// Publishes `offsets` of `epoch` on `channel` to every local subscriber.
    fn fan_out(&self, channel: &str, epoch: &str, offsets: impl IntoIterator<Item = u64>) {
        for offset in offsets {
            let text = format!(
                r#"{{"type":"message","channel":"{channel}","offset":{offset},"epoch":"{epoch}","message":{{}}}}"#
            );
            let d = std::sync::Arc::new(Delivery {
                text: Utf8Bytes::from(text),
                channel: channel.into(),
                offset,
                epoch: epoch.into(),
                published_ms: 0,
                command: None,
            });
            self.state.hub.fanout(&d);
        }
    }
}

struct Running {
    task: JoinHandle<()>,
    shared: std::sync::Arc<crate::hub::ConnShared>,
    key: u64,
}

impl Running {
    /// Subscribes the connection to `channel` in the hub, as a confirmed subscribe does.
    fn join(&self, h: &Harness, channel: &str) {
        let _ready = h
            .state
            .hub
            .subscribe(channel, self.key, self.shared.clone(), false);
    }

    async fn ended(self) {
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the connection ends")
            .unwrap();
    }
}

fn close_code(c: &Option<CloseFrame>) -> Option<u16> {
    c.as_ref().map(|c| c.code)
}

#[tokio::test(start_paused = true)]
async fn a_silent_client_is_dropped_after_two_heartbeats() {
    let h = harness(&["--heartbeat-interval-ms", "1000"]);
    let (mut client, conn) = h.connect(claims(None), false, |_| {}).await;
    let started = Instant::now();
    let (frames, close) = client.until_close().await;
    let after = started.elapsed();
    assert!(
        frames.is_empty(),
        "no disconnect frame to a gone client: {frames:?}"
    );
    assert_eq!(close_code(&close), Some(1001));
    assert_eq!(close.unwrap().reason.as_str(), "heartbeat timeout");
    assert!(
        after > Duration::from_secs(2) && after <= Duration::from_secs(3),
        "{after:?}"
    );
    conn.ended().await;
    assert_eq!(h.disconnects("heartbeat_timeout"), 1);
    assert_eq!(h.state.hub.conn_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_answers_heartbeats_stays() {
    let h = harness(&["--heartbeat-interval-ms", "1000"]);
    let (mut client, conn) = h.connect(claims(None), false, |_| {}).await;
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        match client.next().await {
            Some(Message::Ping(p)) => client.tx.unbounded_send(Message::Pong(p)).unwrap(),
            Some(Message::Text(_)) => {}
            other => panic!("the connection ended: {other:?}"),
        }
    }
    assert!(!conn.task.is_finished());
}

#[tokio::test(start_paused = true)]
async fn an_expired_token_ends_the_connection() {
    let h = harness(&["--jwt-leeway-s", "0"]);
    let (mut client, conn) = h
        .connect(claims(Some(Duration::from_secs(5))), false, |_| {})
        .await;
    let started = Instant::now();
    let (frames, close) = client.until_close().await;
    let after = started.elapsed();
    assert_eq!(
        frames,
        [
            serde_json::json!({"type": "disconnect", "code": "token_expired",
            "reason": "token expired", "reconnect": false})
        ]
    );
    assert_eq!(close_code(&close), Some(1008));
    // `exp` is in whole seconds.
    assert!(
        after >= Duration::from_secs(4) && after <= Duration::from_secs(5),
        "{after:?}"
    );
    conn.ended().await;
    assert_eq!(h.disconnects("token_expired"), 1);
}

#[tokio::test(start_paused = true)]
async fn rate_limit_strikes_end_the_connection() {
    // 2 frames per 10 s: the limiter refills far slower than the test runs.
    let h = harness(&[
        "--rate-limit-messages",
        "2",
        "--rate-limit-window-ms",
        "10000",
    ]);
    let (mut client, conn) = h.connect(claims(None), false, |_| {}).await;
    for id in 1..=2 {
        client.send(&format!(r#"{{"type":"ping","id":{id}}}"#));
        assert_eq!(client.json().await["type"], "pong");
    }
    // Three times the limit refused within one window closes the connection.
    for id in 3..=7 {
        client.send(&format!(r#"{{"type":"ping","id":{id}}}"#));
        let e = client.json().await;
        assert_eq!(e["code"], "rate_limited", "{e}");
        assert_eq!(e["id"], id);
        assert!(e["retry_after_ms"].as_u64().unwrap() > 0, "{e}");
    }
    client.send(r#"{"type":"ping","id":8}"#);
    let (frames, close) = client.until_close().await;
    assert_eq!(frames[0]["code"], "rate_limited");
    assert_eq!(frames[0]["reconnect"], false);
    assert_eq!(close_code(&close), Some(1008));
    conn.ended().await;
    assert_eq!(h.disconnects("rate_limited"), 1);
}

#[tokio::test(start_paused = true)]
async fn oversized_frames_strike_out_on_the_third() {
    let h = harness(&["--max-frame-bytes", "64"]);
    let (mut client, conn) = h.connect(claims(None), false, |_| {}).await;
    let big = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(100));
    for _ in 0..2 {
        client.send(&big);
        let e = client.json().await;
        assert_eq!(e["code"], "too_large", "{e}");
    }
    // A frame within the limit is still served between strikes.
    client.send(r#"{"type":"ping","id":1}"#);
    assert_eq!(client.json().await["type"], "pong");
    client.send(&big);
    let (frames, close) = client.until_close().await;
    assert_eq!(frames[0]["code"], "too_large");
    assert_eq!(close_code(&close), Some(1009));
    conn.ended().await;
}

#[tokio::test(start_paused = true)]
async fn oversize_strikes_older_than_a_minute_are_forgiven() {
    let h = harness(&["--max-frame-bytes", "64"]);
    let (mut client, conn) = h.connect(claims(None), false, |_| {}).await;
    let big = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(100));
    for _ in 0..2 {
        client.send(&big);
        assert_eq!(client.json().await["code"], "too_large");
    }
    tokio::time::sleep(Duration::from_secs(61)).await;
    client.send(&big);
    assert_eq!(client.json().await["code"], "too_large");
    assert!(!conn.task.is_finished());
}

#[tokio::test(start_paused = true)]
async fn a_slow_consumer_is_kicked_and_told_why() {
    let h = harness(&["--outbound-queue-frames", "4"]);
    let (mut client, conn) = h.connect(claims(None), false, |_| {}).await;
    conn.join(&h, "news");
    // The client reads nothing: the gateway's write blocks on the full socket...
    h.fan_out("news", "e1", 1..=3);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!conn.task.is_finished());
    // ...while the queue behind it overflows: the hub kicks it at once, and no more
    // is queued for it.
    h.fan_out("news", "e1", 4..=10);
    assert_eq!(conn.shared.kicked(), Some(&Disconnect::SlowConsumer));
    // Once the client reads again it gets whole frames, then why, then 1013.
    let (frames, close) = client.until_close().await;
    let last = frames.last().unwrap();
    assert_eq!(last["code"], "slow_consumer");
    assert_eq!(last["reconnect"], true);
    assert_eq!(close_code(&close), Some(1013));
    conn.ended().await;
    assert_eq!(h.disconnects("slow_consumer"), 1);
    assert_eq!(h.state.hub.conn_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn batch_mode_coalesces_what_arrives_within_the_window() {
    let h = harness(&["--batch-window-ms", "50"]);
    let (mut client, conn) = h.connect(claims(None), true, |_| {}).await;
    conn.join(&h, "news");
    let started = Instant::now();
    h.fan_out("news", "e1", 1..=3);
    let batch = client.json().await;
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert_eq!(batch["type"], "batch_messages");
    assert_eq!(batch["count"], 3);
    let offsets: Vec<u64> = batch["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [1, 2, 3]);
    // One message alone goes out as itself.
    h.fan_out("news", "e1", [4]);
    let single = client.json().await;
    assert_eq!(
        (single["type"].as_str(), single["offset"].as_u64()),
        (Some("message"), Some(4))
    );
}

#[tokio::test(start_paused = true)]
async fn a_kick_does_not_wait_for_the_batch_window() {
    let h = harness(&["--batch-window-ms", "10000"]);
    let (mut client, conn) = h.connect(claims(None), true, |_| {}).await;
    conn.join(&h, "news");
    h.fan_out("news", "e1", [1]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let kicked = Instant::now();
    conn.shared.kick(Disconnect::Admin);
    let (frames, close) = client.until_close().await;
    assert!(
        kicked.elapsed() < Duration::from_secs(1),
        "{:?}",
        kicked.elapsed()
    );
    assert_eq!(frames.last().unwrap()["code"], "admin_disconnect");
    assert_eq!(close_code(&close), Some(1008));
    conn.ended().await;
}

#[tokio::test(start_paused = true)]
async fn live_messages_already_covered_by_recovery_are_skipped() {
    let h = harness(&[]);
    // As after a subscribe whose recovery reported (and replayed up to) offset 5 of e1.
    let (mut client, conn) = h
        .connect(claims(None), false, |c| {
            c.floors.insert("news".into(), ("e1".into(), 5));
        })
        .await;
    conn.join(&h, "news");
    h.fan_out("news", "e1", [4, 5, 6]);
    h.fan_out("news", "e2", [1]);
    let got: Vec<(String, u64)> = [client.json().await, client.json().await]
        .iter()
        .map(|m| {
            (
                m["epoch"].as_str().unwrap().to_owned(),
                m["offset"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, [("e1".to_owned(), 6), ("e2".to_owned(), 1)]);
}

#[tokio::test(start_paused = true)]
async fn shutdown_drains_the_queue_then_says_goodbye() {
    let h = harness(&[]);
    let (mut client, conn) = h.connect(claims(None), false, |_| {}).await;
    conn.join(&h, "news");
    // Queued when the stop comes: written before the goodbye.
    h.fan_out("news", "e1", 1..=3);
    h.state.shutdown.cancel();
    let (frames, close) = client.until_close().await;
    let offsets: Vec<u64> = frames.iter().filter_map(|f| f["offset"].as_u64()).collect();
    assert_eq!(offsets, [1, 2, 3]);
    let last = frames.last().unwrap();
    assert_eq!(last["code"], "shutdown");
    assert_eq!(last["reconnect"], true);
    assert_eq!(close_code(&close), Some(1001));
    conn.ended().await;
}

#[tokio::test(start_paused = true)]
async fn binary_frames_close_with_1003() {
    let h = harness(&[]);
    let (mut client, conn) = h.connect(claims(None), false, |_| {}).await;
    client
        .tx
        .unbounded_send(Message::Binary(bytes::Bytes::from_static(b"\x00")))
        .unwrap();
    let (frames, close) = client.until_close().await;
    assert!(frames.is_empty());
    assert_eq!(close_code(&close), Some(1003));
    conn.ended().await;
}
