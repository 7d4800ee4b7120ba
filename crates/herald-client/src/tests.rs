//! The client against a scripted gateway: a WebSocket server in the test that plays
//! the gateway's side frame by frame, so each rule of the driver (recovery requests,
//! batches, refusals, silence, token refresh, publish outcomes, stalls, server-side
//! subscriptions) is checked against the exact frames the client sends. End-to-end
//! tests against the real services live in the e2e crate (`tests/src/tests/client.rs`
//! and the `client_*.rs` beside it).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::{
    Client, ClientError, ConnState, DisconnectCode, ErrorCode, Event, GapReason, History,
    HistoryError, HistoryQuery, Member, MessageKind, Options, Position, Presence, PresenceError,
    PresenceStats, PublishError, ServerEvent, ServerSubscriptions, SubscribeOptions, Subscription,
    TokenSource,
};

/// How long any one step may take.
const PATIENCE: Duration = Duration::from_secs(5);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn options() -> Options {
    Options {
        min_reconnect_delay: Duration::from_millis(20),
        max_reconnect_delay: Duration::from_millis(100),
        ..Options::default()
    }
}

/// A JWT-shaped token (unsigned: nothing here verifies it) expiring `ttl` seconds
/// from now.
fn jwt(tag: &str, ttl: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims = json!({"sub": "u", "tag": tag, "iat": now, "exp": now + ttl});
    format!("{}.{}.sig", b.encode("{}"), b.encode(claims.to_string()))
}

fn claim(token: &str, name: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice::<Value>(&bytes).expect("JSON claims")[name].clone()
}

/// A token source that counts its fetches and makes the `n`th token with `make(n)`.
fn counting_source(
    make: impl Fn(usize) -> String + Send + Sync + 'static,
) -> (Arc<AtomicUsize>, TokenSource) {
    let fetched = Arc::new(AtomicUsize::new(0));
    let source = {
        let fetched = fetched.clone();
        let make = Arc::new(make);
        TokenSource::fetch(move || {
            let token = make(fetched.fetch_add(1, Ordering::SeqCst));
            async move { Ok::<_, String>(token) }
        })
    };
    (fetched, source)
}

/// The gateway's `auth_success` answering the request `id`.
fn auth_success(id: &Value, heartbeat_ms: u64) -> Value {
    json!({"type": "auth_success", "message": "authenticated", "user_id": "u",
           "conn_id": "c", "node": "fake", "channels": [],
           "heartbeat_interval_ms": heartbeat_ms, "id": id})
}

fn message(offset: u64, epoch: &str) -> Value {
    message_on("news", offset, epoch)
}

fn message_on(channel: &str, offset: u64, epoch: &str) -> Value {
    json!({"type": "message", "channel": channel, "offset": offset, "epoch": epoch,
           "message": {"n": offset}, "timestamp": "2026-01-05T14:47:57.123Z"})
}

/// A `join` or `leave` (`kind`) on `news` of `user`'s connection.
fn presence_event(kind: &str, user: &str) -> Value {
    json!({"type": kind, "channel": "news", "user_id": user, "conn_id": format!("{user}-conn"),
           "info": {"name": user}})
}

// === the scripted gateway ===

struct Fake {
    listener: TcpListener,
    url: String,
}

impl Fake {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("ws://{}/ws", listener.local_addr().expect("addr"));
        Self { listener, url }
    }

    async fn tcp(&self) -> TcpStream {
        within("a connection", self.listener.accept())
            .await
            .expect("accept")
            .0
    }

    /// The next connection, upgraded.
    async fn accept(&self) -> Peer {
        let tcp = self.tcp().await;
        let ws = within("the upgrade", tokio_tungstenite::accept_async(tcp))
            .await
            .expect("upgrade");
        Peer { ws }
    }

    /// Refuses the next upgrade with `status`.
    async fn refuse(&self, status: u16, retry_after: Option<&str>) {
        let tcp = self.tcp().await;
        #[expect(
            clippy::result_large_err,
            reason = "the signature tungstenite's handshake callback takes"
        )]
        let refuse = |_: &Request, _: Response| -> Result<Response, ErrorResponse> {
            let mut r = ErrorResponse::new(None);
            *r.status_mut() = StatusCode::from_u16(status).expect("status");
            if let Some(secs) = retry_after {
                r.headers_mut()
                    .insert("retry-after", secs.parse().expect("header"));
            }
            Err(r)
        };
        let refused = within(
            "the refused upgrade",
            tokio_tungstenite::accept_hdr_async(tcp, refuse),
        )
        .await;
        assert!(refused.is_err());
    }
}

struct Peer {
    ws: WebSocketStream<TcpStream>,
}

impl Peer {
    async fn send(&mut self, v: Value) {
        within("a send", self.ws.send(WsMessage::text(v.to_string())))
            .await
            .expect("send");
    }

    /// The client's next frame.
    async fn recv(&mut self) -> Value {
        loop {
            let msg = within("a client frame", self.ws.next())
                .await
                .expect("the client hung up")
                .expect("a frame");
            if let WsMessage::Text(t) = msg {
                return serde_json::from_str(&t).expect("JSON");
            }
        }
    }

    /// Reads the `auth` frame and accepts it; returns the frame.
    async fn hello(&mut self, heartbeat_ms: u64) -> Value {
        let auth = self.recv().await;
        assert_eq!(auth["type"], "auth", "{auth}");
        self.send(auth_success(&auth["id"], heartbeat_ms)).await;
        auth
    }

    /// Reads the client's next frame, a `subscribe` for `news`.
    async fn recv_subscribe(&mut self) -> Value {
        let req = self.recv().await;
        assert_eq!(
            (req["type"].as_str(), req["channel"].as_str()),
            (Some("subscribe"), Some("news")),
            "{req}"
        );
        req
    }

    /// Answers `req` with `subscribed` at (`offset`, `epoch`).
    async fn reply_subscribed(
        &mut self,
        req: &Value,
        offset: u64,
        epoch: &str,
        recovered: Option<bool>,
    ) {
        let mut reply = json!({"type": "subscribed", "channel": "news", "id": req["id"],
                               "offset": offset, "epoch": epoch});
        if let Some(r) = recovered {
            reply["recovered"] = json!(r);
        }
        self.send(reply).await;
    }

    /// Reads a `subscribe` for `news` and answers `subscribed` at (`offset`, `epoch`)
    /// with nothing to replay; returns its `since`.
    async fn subscribed(&mut self, offset: u64, epoch: &str, recovered: Option<bool>) -> Value {
        let req = self.recv_subscribe().await;
        self.reply_subscribed(&req, offset, epoch, recovered).await;
        req.get("since").cloned().unwrap_or(Value::Null)
    }

    /// Asserts the client sends nothing for a while.
    async fn assert_silent(&mut self) {
        let next = tokio::time::timeout(Duration::from_millis(300), self.recv()).await;
        assert!(next.is_err(), "expected nothing, got {next:?}");
    }

    async fn close(&mut self, code: u16, reason: &str) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        let _ = within("a close", self.ws.close(Some(frame))).await;
    }
}

/// Publishes `message` on `channel` from a task of its own.
fn spawn_publish(
    client: &Client,
    channel: &'static str,
    message: Value,
) -> tokio::task::JoinHandle<Result<crate::Ack, PublishError>> {
    let client = client.clone();
    tokio::spawn(async move { client.publish(channel, &message).await })
}

/// Reads `channel`'s history from a task of its own.
fn spawn_history(
    client: &Client,
    channel: &'static str,
    query: HistoryQuery,
) -> tokio::task::JoinHandle<Result<History, HistoryError>> {
    let client = client.clone();
    tokio::spawn(async move { client.history(channel, query).await })
}

async fn next_event(sub: &mut Subscription) -> Event {
    within("a subscription event", sub.next())
        .await
        .expect("the stream ended")
}

/// The offsets of the next `count` messages, skipping `subscribed`.
async fn offsets(sub: &mut Subscription, count: usize) -> Vec<u64> {
    let mut got = Vec::new();
    while got.len() < count {
        match next_event(sub).await {
            Event::Message(m) => got.push(m.offset),
            Event::Subscribed(_) => {}
            other => panic!("expected a message, got {other:?}"),
        }
    }
    got
}

/// An event in short: `m<offset>`, `+<user>` (join), `-<user>` (leave), `subscribed`,
/// `gap`, `error:<code>`.
fn shape(event: &Event) -> String {
    match event {
        Event::Message(m) => format!("m{}", m.offset),
        Event::Join(m) => format!("+{}", m.user_id),
        Event::Leave(m) => format!("-{}", m.user_id),
        Event::Subscribed(_) => "subscribed".to_owned(),
        Event::Gap(_) => "gap".to_owned(),
        Event::Error(e) => format!("error:{}", e.code.as_str()),
        Event::Unsubscribed => "unsubscribed".to_owned(),
    }
}

/// The next `count` events, in short.
async fn shapes(sub: &mut Subscription, count: usize) -> Vec<String> {
    let mut got = Vec::with_capacity(count);
    while got.len() < count {
        got.push(shape(&next_event(sub).await));
    }
    got
}

async fn until(client: &Client, what: &str, check: impl Fn(&ConnState) -> bool) -> ConnState {
    let mut states = client.states();
    within(what, states.wait_for(|s| check(s)))
        .await
        .expect("the client is gone")
        .clone()
}

/// Waits for the client to stop for good, and checks why.
async fn assert_stops_with(client: &Client, code: DisconnectCode) {
    let state = until(client, "the stop", stopped).await;
    assert!(
        matches!(&state, ConnState::Disconnected { code: Some(c), .. } if *c == code),
        "{state:?}"
    );
}

fn stopped(s: &ConnState) -> bool {
    matches!(
        s,
        ConnState::Disconnected {
            reconnect: false,
            ..
        }
    )
}

// === scenarios ===

#[tokio::test]
async fn batches_are_unpacked_and_a_hole_is_recovered_from_the_position() {
    let fake = Fake::start().await;
    let opts = Options {
        batch: true,
        ..options()
    };
    let client = Client::connect([fake.url.clone()], TokenSource::fixed("t0k3n"), opts);
    let mut sub = client.subscribe("news", None);
    let mut gw = fake.accept().await;
    let auth = gw.hello(25_000).await;
    assert_eq!(
        (auth["token"].as_str(), auth["batch"].as_bool()),
        (Some("t0k3n"), Some(true))
    );
    assert_eq!(
        gw.subscribed(0, "e", None).await,
        Value::Null,
        "no since at first"
    );
    gw.send(json!({"type": "batch_messages", "count": 3,
                   "messages": [message(1, "e"), {"type": "from_the_future"}, message(2, "e")]}))
        .await;
    gw.send(json!({"type": "notice", "text": "ignored"})).await;
    // 3 went missing: the client asks for everything after 2, the gateway replays
    // 3 and 4 and confirms; a copy of 4 arriving late is dropped.
    gw.send(message(4, "e")).await;
    let req = gw.recv_subscribe().await;
    assert_eq!(req["since"], json!({"offset": 2, "epoch": "e"}));
    gw.send(message(3, "e")).await;
    gw.send(message(4, "e")).await;
    gw.reply_subscribed(&req, 4, "e", Some(true)).await;
    gw.send(message(4, "e")).await;
    let mut late = message(5, "e");
    late["unknown_field"] = json!([1, 2]);
    gw.send(late).await;
    assert_eq!(offsets(&mut sub, 5).await, [1, 2, 3, 4, 5]);
    client.close().await;
}

#[tokio::test]
async fn an_epoch_change_is_asked_about_and_reported_as_a_gap() {
    let fake = Fake::start().await;
    let client = Client::connect([fake.url.clone()], TokenSource::fixed("t"), options());
    let mut sub = client.subscribe("news", None);
    let mut gw = fake.accept().await;
    gw.hello(25_000).await;
    gw.subscribed(7, "old", None).await;
    gw.send(message(8, "old")).await;
    gw.send(message(1, "new")).await;
    let since = gw.subscribed(3, "new", Some(false)).await;
    assert_eq!(since, json!({"offset": 8, "epoch": "old"}));
    gw.send(message(4, "new")).await;
    assert!(matches!(next_event(&mut sub).await, Event::Subscribed(_)));
    assert_eq!(offsets(&mut sub, 1).await, [8]);
    match next_event(&mut sub).await {
        Event::Gap(g) => {
            assert_eq!((g.from.offset, g.from.epoch.as_str()), (8, "old"));
            assert_eq!((g.to.offset, g.to.epoch.as_str()), (3, "new"));
            assert_eq!(g.reason, crate::GapReason::EpochChanged);
        }
        other => panic!("expected a gap, got {other:?}"),
    }
    assert_eq!(offsets(&mut sub, 1).await, [4]);
    client.close().await;
}

#[tokio::test]
async fn a_full_gateway_is_backed_off_from_and_a_refusal_stops() {
    let full = Fake::start().await;
    let refusing = Fake::start().await;
    let client = Client::connect(
        [full.url.clone(), refusing.url.clone()],
        TokenSource::fixed("t"),
        options(),
    );
    full.refuse(503, Some("1")).await;
    let state = until(&client, "the backoff", |s| {
        matches!(s, ConnState::Disconnected { .. })
    })
    .await;
    assert!(
        matches!(
            &state,
            ConnState::Disconnected {
                code: Some(DisconnectCode::OverCapacity),
                reconnect: true,
                ..
            }
        ),
        "{state:?}"
    );
    // On to the next gateway, which refuses the token: final.
    refusing.refuse(401, None).await;
    assert_stops_with(&client, DisconnectCode::AuthenticationFailed).await;
}

#[tokio::test]
async fn a_silent_gateway_is_left_for_another_connection() {
    let fake = Fake::start().await;
    let client = Client::connect([fake.url.clone()], TokenSource::fixed("t"), options());
    let mut sub = client.subscribe("news", None);
    let mut first = fake.accept().await;
    first.hello(100).await;
    first.subscribed(0, "e", None).await;
    first.send(message(1, "e")).await;
    assert_eq!(offsets(&mut sub, 1).await, [1]);
    // Silence from now on (the socket stays open): after 2 × 100 ms + 1 s the client
    // gives up on it and renews the subscription from where it was.
    let mut second = fake.accept().await;
    second.hello(25_000).await;
    let since = second.subscribed(1, "e", Some(true)).await;
    assert_eq!(since, json!({"offset": 1, "epoch": "e"}));
    drop(first);
    client.close().await;
}

#[tokio::test]
async fn an_expired_token_is_replaced_when_the_source_can_fetch() {
    let fake = Fake::start().await;
    let (_, source) = counting_source(|n| format!("token-{n}"));
    let client = Client::connect([fake.url.clone()], source, options());
    let mut sub = client.subscribe("news", None);
    let mut gw = fake.accept().await;
    assert_eq!(gw.hello(25_000).await["token"], "token-0");
    gw.subscribed(0, "e", None).await;
    gw.send(message(1, "e")).await;
    assert_eq!(offsets(&mut sub, 1).await, [1]);
    gw.send(json!({"type": "disconnect", "code": "token_expired", "reason": "token expired", "reconnect": false}))
        .await;
    gw.close(1008, "token expired").await;
    let mut again = fake.accept().await;
    assert_eq!(again.hello(25_000).await["token"], "token-1");
    assert_eq!(
        again.subscribed(1, "e", Some(true)).await,
        json!({"offset": 1, "epoch": "e"})
    );
    client.close().await;

    // A fixed token cannot be replaced: the client stops.
    let client = Client::connect([fake.url.clone()], TokenSource::fixed("t"), options());
    let mut gw = fake.accept().await;
    gw.hello(25_000).await;
    gw.send(json!({"type": "disconnect", "code": "token_expired", "reason": "token expired", "reconnect": false}))
        .await;
    assert_stops_with(&client, DisconnectCode::TokenExpired).await;
}

#[tokio::test]
async fn a_refused_first_frame_is_retried_once_with_a_fresh_token() {
    let fake = Fake::start().await;
    let (fetched, source) = counting_source(|_| "t".to_owned());
    let client = Client::connect([fake.url.clone()], source, options());
    let mut gw = fake.accept().await;
    gw.recv().await;
    gw.close(1008, "authentication failed").await;
    // One more try with a fresh token, accepted: the retry is spent again only after
    // another refusal.
    let mut gw = fake.accept().await;
    gw.hello(25_000).await;
    until(&client, "the connection", ConnState::is_connected).await;
    gw.close(1001, "going away").await;
    let mut gw = fake.accept().await;
    gw.recv().await;
    gw.close(1008, "authentication failed").await;
    let mut gw = fake.accept().await;
    gw.recv().await;
    gw.close(1008, "authentication failed").await;
    assert_stops_with(&client, DisconnectCode::AuthenticationFailed).await;
    assert_eq!(fetched.load(Ordering::SeqCst), 4, "a token per attempt");
}

#[tokio::test]
async fn tokens_are_refreshed_on_the_live_connection() {
    let fake = Fake::start().await;
    // Two seconds of life: refreshed after one (half its lifetime).
    let (_, source) = counting_source(|n| jwt(&n.to_string(), 2));
    let client = Client::connect([fake.url.clone()], source, options());
    let mut errors = client.errors();
    let mut gw = fake.accept().await;
    let first = gw.hello(25_000).await;
    assert_eq!(claim(first["token"].as_str().expect("token"), "tag"), "0");
    // The fresh token comes as an `auth` frame; refusing it is reported, and it is
    // tried again.
    let refresh = gw.recv().await;
    assert_eq!(refresh["type"], "auth");
    assert_eq!(claim(refresh["token"].as_str().expect("token"), "tag"), "1");
    gw.send(json!({"type": "error", "code": "forbidden", "message": "token refused", "id": refresh["id"]}))
        .await;
    let reported = within("the error report", errors.recv()).await;
    assert!(
        matches!(&reported, Ok(ClientError::TokenRefused(m)) if m == "token refused"),
        "{reported:?}"
    );
    let again = gw.recv().await;
    assert_eq!(claim(again["token"].as_str().expect("token"), "tag"), "2");
    gw.send(auth_success(&again["id"], 25_000)).await;
    // Accepted: the next refresh follows that token's own schedule.
    let next = gw.recv().await;
    assert_eq!(claim(next["token"].as_str().expect("token"), "tag"), "3");
    assert!(client.state().is_connected());
    client.close().await;
}

#[tokio::test]
async fn publishes_are_acknowledged_refused_or_lost_with_the_connection() {
    let fake = Fake::start().await;
    let client = Client::connect([fake.url.clone()], TokenSource::fixed("t"), options());
    let mut gw = fake.accept().await;
    gw.hello(25_000).await;
    until(&client, "the connection", ConnState::is_connected).await;

    let publish = spawn_publish(&client, "chat:a", json!({"b": [1, 2]}));
    let frame = gw.recv().await;
    assert_eq!(frame["type"], "broadcast");
    assert_eq!(
        (frame["channel"].as_str(), &frame["message"]),
        (Some("chat:a"), &json!({"b": [1, 2]}))
    );
    gw.send(
        json!({"type": "ack", "id": frame["id"], "channel": "chat:a", "offset": 9, "epoch": "e"}),
    )
    .await;
    let ack = within("the ack", publish)
        .await
        .expect("task")
        .expect("ack");
    assert_eq!(
        (ack.channel.as_str(), ack.offset, ack.epoch.as_str()),
        ("chat:a", 9, "e")
    );

    let publish = spawn_publish(&client, "chat:a", json!(1));
    let frame = gw.recv().await;
    gw.send(json!({"type": "error", "code": "unavailable", "message": "retry", "id": frame["id"], "channel": "chat:a"}))
        .await;
    assert_eq!(
        within("the refusal", publish).await.expect("task"),
        Err(PublishError::Refused {
            code: ErrorCode::Unavailable,
            message: "retry".to_owned()
        })
    );

    let publish = spawn_publish(&client, "chat:a", json!(2));
    gw.recv().await;
    drop(gw);
    assert_eq!(
        within("the loss", publish).await.expect("task"),
        Err(PublishError::Disconnected)
    );
    // Reconnected, nothing is sent again.
    let mut gw = fake.accept().await;
    gw.hello(25_000).await;
    gw.assert_silent().await;
    client.close().await;
}

#[tokio::test]
async fn a_subscription_not_read_pauses_and_recovers_what_it_missed() {
    let fake = Fake::start().await;
    let opts = Options {
        subscription_buffer: 4,
        ..options()
    };
    let client = Client::connect([fake.url.clone()], TokenSource::fixed("t"), opts);
    let mut sub = client.subscribe("news", None);
    let mut gw = fake.accept().await;
    gw.hello(25_000).await;
    gw.subscribed(0, "e", None).await;
    for o in 1..=10 {
        gw.send(message(o, "e")).await;
    }
    // The queue holds four: 5 and later were dropped. From here on the gateway is an
    // honest one, replaying whatever each recovery asks for.
    let recoveries = Arc::new(AtomicUsize::new(0));
    let gateway = tokio::spawn({
        let recoveries = recoveries.clone();
        async move {
            loop {
                let req = gw.recv_subscribe().await;
                let since = req["since"]["offset"].as_u64().expect("since");
                recoveries.fetch_add(1, Ordering::SeqCst);
                for o in since + 1..=10 {
                    gw.send(message(o, "e")).await;
                }
                gw.reply_subscribed(&req, 10, "e", Some(true)).await;
            }
        }
    });
    assert_eq!(offsets(&mut sub, 10).await, (1..=10).collect::<Vec<u64>>());
    assert!(recoveries.load(Ordering::SeqCst) >= 1);
    gateway.abort();
    client.close().await;
}

#[tokio::test]
async fn a_forbidden_subscription_ends_and_a_temporary_refusal_is_retried() {
    let fake = Fake::start().await;
    let client = Client::connect([fake.url.clone()], TokenSource::fixed("t"), options());
    let mut news = client.subscribe("news", None);
    let mut gw = fake.accept().await;
    gw.hello(25_000).await;
    let req = gw.recv().await;
    gw.send(json!({"type": "error", "code": "unavailable", "message": "later", "id": req["id"], "channel": "news"}))
        .await;
    // Retried after a pause, then refused for good: the stream says why and ends.
    let req = gw.recv().await;
    assert_eq!(req["type"], "subscribe");
    gw.send(json!({"type": "error", "code": "forbidden", "message": "no", "id": req["id"], "channel": "news"}))
        .await;
    match next_event(&mut news).await {
        Event::Error(e) => assert_eq!((e.code, e.channel.as_str()), (ErrorCode::Forbidden, "news")),
        other => panic!("expected an error, got {other:?}"),
    }
    assert!(within("the end", news.next()).await.is_none());
    // Not renewed on the next connection either.
    gw.close(1001, "going away").await;
    let mut gw = fake.accept().await;
    gw.hello(25_000).await;
    gw.assert_silent().await;
    client.close().await;
}

#[tokio::test]
async fn close_settles_everything_and_dropping_the_last_handle_stops_the_task() {
    let fake = Fake::start().await;
    let client = Client::connect([fake.url.clone()], TokenSource::fixed("t"), options());
    let mut sub = client.subscribe("news", None);
    // Never connected: the publish waits in the queue until the close.
    let publish = spawn_publish(&client, "chat:a", json!(1));
    let _tcp = fake.tcp().await;
    client.close().await;
    assert_eq!(
        within("the publish", publish).await.expect("task"),
        Err(PublishError::Closed)
    );
    assert!(within("the end", sub.next()).await.is_none());
    assert!(stopped(&client.state()));

    let client = Client::connect([fake.url.clone()], TokenSource::fixed("t"), options());
    let mut gw = fake.accept().await;
    gw.hello(25_000).await;
    let mut states = client.states();
    within("the connection", states.wait_for(ConnState::is_connected))
        .await
        .expect("connected");
    drop(client);
    // The task closes the socket on its way out.
    let end = within("the close", gw.ws.next()).await;
    assert!(
        matches!(end, Some(Ok(WsMessage::Close(_))) | None | Some(Err(_))),
        "{end:?}"
    );
    // The final state, then the driver's end of the channel is gone.
    within("the task to end", async {
        while states.changed().await.is_ok() {}
    })
    .await;
    assert!(stopped(&states.borrow()));
}

#[tokio::test]
async fn history_waits_for_the_connection_and_reads_as_a_subscription_delivers() {
    let fake = Fake::start().await;
    let opts = Options {
        publish_queue: 1,
        ..options()
    };
    let client = Client::connect([fake.url.clone()], TokenSource::fixed("t"), opts);
    let query = HistoryQuery {
        since: Some(Position::new(41, "e")),
        limit: Some(2),
        reverse: true,
    };
    // Polled first, so the read is queued before the gateway even accepts.
    let (read, mut gw) = tokio::join!(client.history("news", query), async {
        let mut gw = fake.accept().await;
        gw.hello(25_000).await;
        let req = gw.recv().await;
        assert_eq!(
            req,
            json!({"type": "history", "channel": "news", "since": {"offset": 41, "epoch": "e"},
                   "limit": 2, "reverse": true, "id": req["id"]})
        );
        assert!(req["id"].is_u64(), "{req}");
        // One read unanswered is the bound for reads; publishes are counted apart.
        assert_eq!(
            client
                .history("news", HistoryQuery::default())
                .now_or_never(),
            Some(Err(HistoryError::QueueFull))
        );
        let publish = spawn_publish(&client, "chat:a", json!(1));
        let frame = gw.recv().await;
        assert_eq!(frame["type"], "broadcast");
        gw.send(json!({"type": "ack", "id": frame["id"], "channel": "chat:a", "offset": 1, "epoch": "e"}))
            .await;
        assert!(within("the ack", publish).await.expect("task").is_ok());
        let user_message = json!({"type": "user_message", "channel": "news", "offset": 42,
                                  "epoch": "e", "user_id": "bot", "content": "hi",
                                  "timestamp": "2026-01-05T14:47:57.123Z"});
        gw.send(json!({"type": "history", "channel": "news", "id": req["id"],
                       "publications": [message(43, "e"), {"type": "future_kind", "offset": 9}, user_message],
                       "offset": 43, "epoch": "e"}))
            .await;
        gw
    });
    let read = read.expect("the history");
    assert_eq!(read.position, Position::new(43, "e"));
    let got: Vec<(u64, MessageKind, Option<&str>)> = read
        .publications
        .iter()
        .map(|m| (m.offset, m.kind, m.from_user.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            (43, MessageKind::Message, None),
            (42, MessageKind::UserMessage, Some("bot"))
        ]
    );
    // The same message delivered live is the same value.
    let mut sub = client.subscribe("news", Some(Position::new(42, "e")));
    let req = gw.recv_subscribe().await;
    gw.send(message(43, "e")).await;
    gw.reply_subscribed(&req, 43, "e", Some(true)).await;
    match next_event(&mut sub).await {
        Event::Message(m) => assert_eq!(m, read.publications[0]),
        other => panic!("expected a message, got {other:?}"),
    }
    // Free again once answered.
    let again = spawn_history(&client, "news", HistoryQuery::default());
    let req = gw.recv().await;
    assert_eq!(
        req,
        json!({"type": "history", "channel": "news", "id": req["id"]})
    );
    gw.send(
        json!({"type": "history", "channel": "news", "id": req["id"], "publications": [],
                   "offset": 43, "epoch": "e"}),
    )
    .await;
    let again = within("the answer", again)
        .await
        .expect("task")
        .expect("history");
    assert!(again.publications.is_empty());
    client.close().await;
}

#[tokio::test]
async fn history_refusals_are_typed_and_a_read_is_lost_with_its_connection() {
    let fake = Fake::start().await;
    let client = Client::connect([fake.url.clone()], TokenSource::fixed("t"), options());
    let mut gw = fake.accept().await;
    gw.hello(25_000).await;
    until(&client, "the connection", ConnState::is_connected).await;
    for (wire, code) in [
        ("forbidden", ErrorCode::Forbidden),
        ("unavailable", ErrorCode::Unavailable),
        ("bad_request", ErrorCode::BadRequest),
    ] {
        let read = spawn_history(&client, "news", HistoryQuery::default());
        let req = gw.recv().await;
        gw.send(json!({"type": "error", "code": wire, "message": "no", "id": req["id"], "channel": "news"}))
            .await;
        assert_eq!(
            within("the refusal", read).await.expect("task"),
            Err(HistoryError::Refused {
                code,
                message: "no".to_owned()
            })
        );
    }
    // A reply of another kind than asked for settles it too, as a fault.
    let read = spawn_history(&client, "news", HistoryQuery::default());
    let req = gw.recv().await;
    gw.send(json!({"type": "ack", "id": req["id"], "channel": "news", "offset": 1, "epoch": "e"}))
        .await;
    assert!(matches!(
        within("the fault", read).await.expect("task"),
        Err(HistoryError::Refused {
            code: ErrorCode::Internal,
            ..
        })
    ));

    let read = spawn_history(&client, "news", HistoryQuery::default());
    gw.recv().await;
    drop(gw);
    assert_eq!(
        within("the loss", read).await.expect("task"),
        Err(HistoryError::Disconnected)
    );
    // Reconnected, nothing is sent again.
    let mut gw = fake.accept().await;
    gw.hello(25_000).await;
    gw.assert_silent().await;
    client.close().await;
}

#[tokio::test]
async fn a_history_read_never_sent_times_out_or_fails_with_the_close() {
    let fake = Fake::start().await;
    let opts = Options {
        publish_timeout: Duration::from_millis(200),
        ..options()
    };
    let client = Client::connect([fake.url.clone()], TokenSource::fixed("t"), opts);
    // The gateway never answers the upgrade.
    let _tcp = fake.tcp().await;
    assert_eq!(
        within(
            "the timeout",
            client.history("news", HistoryQuery::default())
        )
        .await,
        Err(HistoryError::Timeout)
    );
    let read = spawn_history(&client, "news", HistoryQuery::default());
    // Most likely queued by then; sent to a client already closing, it fails alike.
    tokio::task::yield_now().await;
    client.close().await;
    assert_eq!(
        within("the read", read).await.expect("task"),
        Err(HistoryError::Closed)
    );
    assert_eq!(
        client.history("news", HistoryQuery::default()).await,
        Err(HistoryError::Closed)
    );
}

fn join_leave() -> SubscribeOptions {
    SubscribeOptions {
        join_leave: true,
        ..SubscribeOptions::default()
    }
}

#[tokio::test]
async fn join_leave_is_asked_on_every_subscribe_and_events_keep_their_place() {
    let fake = Fake::start().await;
    let opts = Options {
        batch: true,
        ..options()
    };
    let client = Client::connect([fake.url.clone()], TokenSource::fixed("t"), opts);
    let mut room = client.subscribe_with("news", join_leave());
    let mut gw = fake.accept().await;
    gw.hello(25_000).await;
    let req = gw.recv_subscribe().await;
    assert_eq!(
        req,
        json!({"type": "subscribe", "channel": "news", "join_leave": true, "id": req["id"]})
    );
    // Before `subscribed`, the tracker holds the messages (1 turns out to be older
    // than the start); the events keep their place among those it lets through.
    gw.send(message(1, "e")).await;
    gw.send(presence_event("join", "a")).await;
    gw.send(message(2, "e")).await;
    gw.send(presence_event("join", "b")).await;
    gw.reply_subscribed(&req, 1, "e", None).await;
    assert_eq!(shapes(&mut room, 1).await, ["subscribed"]);
    match next_event(&mut room).await {
        Event::Join(m) => assert_eq!(
            m,
            Member {
                user_id: "a".to_owned(),
                conn_id: "a-conn".to_owned(),
                info: Some(json!({"name": "a"})),
            }
        ),
        other => panic!("expected a join, got {other:?}"),
    }
    assert_eq!(shapes(&mut room, 2).await, ["m2", "+b"]);

    // Live, alone or batched: in arrival order, and never mistaken for a hole.
    gw.send(presence_event("join", "c")).await;
    gw.send(message(3, "e")).await;
    gw.send(json!({"type": "batch_messages", "count": 3,
                   "messages": [presence_event("leave", "a"), message(4, "e"), presence_event("join", "d")]}))
        .await;
    assert_eq!(shapes(&mut room, 5).await, ["+c", "m3", "-a", "m4", "+d"]);

    // A hole: the recovery asks for the events too. One arriving meanwhile is not
    // held back for the replay.
    gw.send(message(6, "e")).await;
    let req = gw.recv_subscribe().await;
    assert_eq!(
        (&req["since"], &req["join_leave"]),
        (&json!({"offset": 4, "epoch": "e"}), &json!(true))
    );
    gw.send(presence_event("join", "e")).await;
    gw.send(message(5, "e")).await;
    gw.send(message(6, "e")).await;
    gw.reply_subscribed(&req, 6, "e", Some(true)).await;
    assert_eq!(shapes(&mut room, 4).await, ["+e", "m5", "m6", "subscribed"]);

    // Another subscription of the channel, without events: its subscribe asks for
    // them all the same (one without would turn them off for the first), and it
    // gets none.
    let mut plain = client.subscribe("news", None);
    let req = gw.recv_subscribe().await;
    assert_eq!(req["join_leave"], true, "{req}");
    gw.reply_subscribed(&req, 6, "e", None).await;
    gw.send(presence_event("leave", "c")).await;
    gw.send(message(7, "e")).await;
    assert_eq!(shapes(&mut room, 2).await, ["-c", "m7"]);
    assert_eq!(shapes(&mut plain, 2).await, ["subscribed", "m7"]);

    // Renewed on the next connection, both still ask for them.
    gw.close(1001, "going away").await;
    let mut gw = fake.accept().await;
    gw.hello(25_000).await;
    for _ in 0..2 {
        let req = gw.recv_subscribe().await;
        assert_eq!(
            (&req["since"], &req["join_leave"]),
            (&json!({"offset": 7, "epoch": "e"}), &json!(true)),
            "{req}"
        );
        gw.reply_subscribed(&req, 7, "e", Some(true)).await;
    }
    gw.send(presence_event("join", "f")).await;
    gw.send(message(8, "e")).await;
    assert_eq!(shapes(&mut room, 3).await, ["subscribed", "+f", "m8"]);
    assert_eq!(shapes(&mut plain, 2).await, ["subscribed", "m8"]);

    // The last subscription that wanted them gone, the channel's next subscribe no
    // longer asks.
    room.unsubscribe().await;
    gw.send(message(10, "e")).await;
    let req = gw.recv_subscribe().await;
    assert_eq!(
        req,
        json!({"type": "subscribe", "channel": "news", "since": {"offset": 8, "epoch": "e"},
               "id": req["id"]})
    );
    client.close().await;
}

#[tokio::test]
async fn join_leave_refused_ends_only_the_subscription_that_asked() {
    let fake = Fake::start().await;
    let client = Client::connect([fake.url.clone()], TokenSource::fixed("t"), options());
    let mut room = client.subscribe_with("news", join_leave());
    let mut plain = client.subscribe("news", None);
    let mut gw = fake.accept().await;
    gw.hello(25_000).await;
    // Both ask for the events, so both are refused.
    for _ in 0..2 {
        let req = gw.recv_subscribe().await;
        assert_eq!(req["join_leave"], true, "{req}");
        gw.send(
            json!({"type": "error", "code": "forbidden", "id": req["id"], "channel": "news",
                       "message": "not allowed to see this channel's presence (join_leave)"}),
        )
        .await;
    }
    assert_eq!(shapes(&mut room, 1).await, ["error:forbidden"]);
    assert!(within("the end", room.next()).await.is_none());
    // The other asked only for the first one's sake: it tries again without.
    let req = gw.recv_subscribe().await;
    assert_eq!(req.get("join_leave"), None, "{req}");
    gw.reply_subscribed(&req, 0, "e", None).await;
    gw.send(message(1, "e")).await;
    assert_eq!(shapes(&mut plain, 2).await, ["subscribed", "m1"]);
    client.close().await;
}

/// Reads `channel`'s presence from a task of its own.
fn spawn_presence(
    client: &Client,
    channel: &'static str,
) -> tokio::task::JoinHandle<Result<Presence, PresenceError>> {
    let client = client.clone();
    tokio::spawn(async move { client.presence(channel).await })
}

#[tokio::test]
async fn presence_reads_wait_for_the_connection_and_are_typed() {
    let fake = Fake::start().await;
    let opts = Options {
        publish_queue: 1,
        ..options()
    };
    let client = Client::connect([fake.url.clone()], TokenSource::fixed("t"), opts);
    // Polled first, so the read is queued before the gateway even accepts.
    let (read, mut gw) = tokio::join!(client.presence("room:1"), async {
        let mut gw = fake.accept().await;
        gw.hello(25_000).await;
        let req = gw.recv().await;
        assert_eq!(
            req,
            json!({"type": "presence", "channel": "room:1", "id": req["id"]})
        );
        assert!(req["id"].is_u64(), "{req}");
        // One presence read unanswered is the bound for both kinds; history reads
        // are counted apart.
        assert_eq!(
            client.presence_stats("room:1").now_or_never(),
            Some(Err(PresenceError::QueueFull))
        );
        let history = spawn_history(&client, "news", HistoryQuery::default());
        let h = gw.recv().await;
        assert_eq!(h["type"], "history");
        gw.send(
            json!({"type": "history", "channel": "news", "id": h["id"], "publications": [],
                       "offset": 0, "epoch": "e"}),
        )
        .await;
        assert!(within("the history", history).await.expect("task").is_ok());
        gw.send(
            json!({"type": "presence", "channel": "room:1", "id": req["id"], "truncated": true,
                       "members": [{"user_id": "alice", "conn_id": "c1", "info": {"name": "Alice"}},
                                   {"user_id": "bob", "conn_id": "c2", "future": 1}]}),
        )
        .await;
        gw
    });
    assert_eq!(
        read.expect("presence"),
        Presence {
            members: vec![
                Member {
                    user_id: "alice".to_owned(),
                    conn_id: "c1".to_owned(),
                    info: Some(json!({"name": "Alice"})),
                },
                Member {
                    user_id: "bob".to_owned(),
                    conn_id: "c2".to_owned(),
                    info: None,
                },
            ],
            truncated: true,
        }
    );

    // Free again once answered.
    let stats = {
        let client = client.clone();
        tokio::spawn(async move { client.presence_stats("room:1").await })
    };
    let req = gw.recv().await;
    assert_eq!(
        req,
        json!({"type": "presence_stats", "channel": "room:1", "id": req["id"]})
    );
    gw.send(
        json!({"type": "presence_stats", "channel": "room:1", "id": req["id"],
                   "num_clients": 3, "num_users": 2}),
    )
    .await;
    assert_eq!(
        within("the stats", stats).await.expect("task"),
        Ok(PresenceStats {
            num_clients: 3,
            num_users: 2
        })
    );

    // Refusals carry the gateway's code.
    for (wire, code) in [
        ("forbidden", ErrorCode::Forbidden),
        ("unavailable", ErrorCode::Unavailable),
        ("bad_request", ErrorCode::BadRequest),
    ] {
        let read = spawn_presence(&client, "room:1");
        let req = gw.recv().await;
        gw.send(json!({"type": "error", "code": wire, "message": "no", "id": req["id"], "channel": "room:1"}))
            .await;
        assert_eq!(
            within("the refusal", read).await.expect("task"),
            Err(PresenceError::Refused {
                code,
                message: "no".to_owned()
            })
        );
    }
    // The other kind of presence answer settles it too, as a fault.
    let read = spawn_presence(&client, "room:1");
    let req = gw.recv().await;
    gw.send(
        json!({"type": "presence_stats", "channel": "room:1", "id": req["id"],
                   "num_clients": 1, "num_users": 1}),
    )
    .await;
    assert!(matches!(
        within("the fault", read).await.expect("task"),
        Err(PresenceError::Refused {
            code: ErrorCode::Internal,
            ..
        })
    ));

    let read = spawn_presence(&client, "room:1");
    gw.recv().await;
    drop(gw);
    assert_eq!(
        within("the loss", read).await.expect("task"),
        Err(PresenceError::Disconnected)
    );
    // Reconnected, nothing is sent again.
    let mut gw = fake.accept().await;
    gw.hello(25_000).await;
    gw.assert_silent().await;
    client.close().await;
    assert_eq!(client.presence("room:1").await, Err(PresenceError::Closed));
}

// === server-side subscriptions ===

/// The gateway's `subscribed` for a subscription the server made (no `id`).
fn server_subscribed(channel: &str, offset: u64, epoch: &str, recovered: Option<bool>) -> Value {
    let mut frame = json!({"type": "subscribed", "channel": channel, "offset": offset,
                           "epoch": epoch, "server": true});
    if let Some(r) = recovered {
        frame["recovered"] = json!(r);
    }
    frame
}

fn server_unsubscribed(channel: &str) -> Value {
    json!({"type": "unsubscribed", "channel": channel, "server": true})
}

/// A server-side event in short: `sub:<channel>@<position offset>`, `<channel>#<offset>`,
/// `gap:<channel>:<from>..<to>`, `unsub:<channel>`.
fn server_shape(event: &ServerEvent) -> String {
    match event {
        ServerEvent::Subscribed(s) => format!("sub:{}@{}", s.channel, s.position.offset),
        ServerEvent::Message(m) => format!("{}#{}", m.channel, m.offset),
        ServerEvent::Gap(g) => format!("gap:{}:{}..{}", g.channel, g.from.offset, g.to.offset),
        ServerEvent::Unsubscribed { channel } => format!("unsub:{channel}"),
    }
}

async fn next_server_event(stream: &mut ServerSubscriptions) -> ServerEvent {
    within("a server-side event", stream.next())
        .await
        .expect("the stream ended")
}

/// The next `count` server-side events, in short.
async fn server_shapes(stream: &mut ServerSubscriptions, count: usize) -> Vec<String> {
    let mut got = Vec::with_capacity(count);
    while got.len() < count {
        got.push(server_shape(&next_server_event(stream).await));
    }
    got
}

/// Asserts no server-side event comes for a while.
async fn assert_no_server_event(stream: &mut ServerSubscriptions) {
    let next = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    assert!(next.is_err(), "expected nothing, got {next:?}");
}

/// Reads the client's next frame, a `subscribe` for `channel`.
async fn recv_subscribe_to(gw: &mut Peer, channel: &str) -> Value {
    let req = gw.recv().await;
    assert_eq!(
        (req["type"].as_str(), req["channel"].as_str()),
        (Some("subscribe"), Some(channel)),
        "{req}"
    );
    req
}

/// Answers `req`, a `subscribe` for `channel`, with `subscribed` at `offset` in epoch
/// `e`, recovered.
async fn reply_recovered(gw: &mut Peer, req: &Value, channel: &str, offset: u64) {
    gw.send(
        json!({"type": "subscribed", "channel": channel, "id": req["id"],
                   "offset": offset, "epoch": "e", "recovered": true}),
    )
    .await;
}

#[tokio::test]
async fn the_personal_channel_is_delivered_once_and_recovered_at_each_login() {
    let fake = Fake::start().await;
    let client = Client::connect([fake.url.clone()], TokenSource::fixed("t"), options());
    let mut server = client.server_subscriptions().expect("the stream");
    assert!(
        client.clone().server_subscriptions().is_none(),
        "one stream per client"
    );
    let mut gw = fake.accept().await;
    gw.hello(25_000).await;
    gw.send(server_subscribed("user:u", 2, "e", None)).await;
    match next_server_event(&mut server).await {
        ServerEvent::Subscribed(s) => {
            assert_eq!(
                (s.channel.as_str(), s.offset, s.epoch.as_str(), s.recovered),
                ("user:u", 2, "e", None)
            );
            assert_eq!(s.position, Position::new(2, "e"));
        }
        other => panic!("expected subscribed, got {other:?}"),
    }
    // Judged like a subscription's deliveries: a duplicate dropped, a hole recovered
    // from the position with a plain `subscribe` + `since`.
    gw.send(message_on("user:u", 3, "e")).await;
    gw.send(message_on("user:u", 3, "e")).await;
    gw.send(message_on("user:u", 5, "e")).await;
    let req = recv_subscribe_to(&mut gw, "user:u").await;
    assert_eq!(
        req,
        json!({"type": "subscribe", "channel": "user:u", "since": {"offset": 3, "epoch": "e"},
               "id": req["id"]})
    );
    gw.send(message_on("user:u", 4, "e")).await;
    gw.send(message_on("user:u", 5, "e")).await;
    reply_recovered(&mut gw, &req, "user:u", 5).await;
    assert_eq!(
        server_shapes(&mut server, 3).await,
        ["user:u#3", "user:u#4", "user:u#5"]
    );

    // The connection drops. The next one renews nothing by itself: the gateway
    // subscribes it to the personal channel again, two messages ahead, and the
    // client recovers them from its position, each once.
    drop(gw);
    let mut gw = fake.accept().await;
    gw.hello(25_000).await;
    gw.assert_silent().await;
    gw.send(server_subscribed("user:u", 7, "e", None)).await;
    let req = recv_subscribe_to(&mut gw, "user:u").await;
    assert_eq!(req["since"], json!({"offset": 5, "epoch": "e"}));
    gw.send(message_on("user:u", 6, "e")).await;
    gw.send(message_on("user:u", 7, "e")).await;
    reply_recovered(&mut gw, &req, "user:u", 7).await;
    gw.send(message_on("user:u", 7, "e")).await;
    gw.send(message_on("user:u", 8, "e")).await;
    assert_eq!(
        server_shapes(&mut server, 4).await,
        ["sub:user:u@5", "user:u#6", "user:u#7", "user:u#8"]
    );

    // Nothing missed: nothing asked.
    drop(gw);
    let mut gw = fake.accept().await;
    gw.hello(25_000).await;
    gw.send(server_subscribed("user:u", 8, "e", None)).await;
    assert_eq!(server_shapes(&mut server, 1).await, ["sub:user:u@8"]);
    gw.assert_silent().await;

    // The channel's history was lost meanwhile: a gap to the new epoch's offset.
    drop(gw);
    let mut gw = fake.accept().await;
    gw.hello(25_000).await;
    gw.send(server_subscribed("user:u", 2, "f", None)).await;
    gw.send(message_on("user:u", 3, "f")).await;
    match next_server_event(&mut server).await {
        ServerEvent::Gap(g) => {
            assert_eq!(
                (g.from, g.to),
                (Position::new(8, "e"), Position::new(2, "f"))
            );
            assert_eq!(g.reason, GapReason::EpochChanged);
        }
        other => panic!("expected a gap, got {other:?}"),
    }
    assert_eq!(
        server_shapes(&mut server, 2).await,
        ["sub:user:u@2", "user:u#3"]
    );
    gw.assert_silent().await;
    client.close().await;
    assert!(within("the end", server.next()).await.is_none());
}

#[tokio::test]
async fn the_backends_replay_and_unsubscribe_reach_the_server_side_stream() {
    let fake = Fake::start().await;
    let client = Client::connect([fake.url.clone()], TokenSource::fixed("t"), options());
    let mut server = client.server_subscriptions().expect("the stream");
    let mut gw = fake.accept().await;
    gw.hello(25_000).await;
    // The backend's `since` was offset 1: the replay comes before `subscribed`, on a
    // channel the client holds nothing for yet.
    gw.send(message_on("room:9", 2, "e")).await;
    gw.send(message_on("room:9", 3, "e")).await;
    gw.send(server_subscribed("room:9", 3, "e", Some(true)))
        .await;
    match next_server_event(&mut server).await {
        ServerEvent::Subscribed(s) => {
            assert_eq!((s.offset, s.recovered), (3, Some(true)));
            assert_eq!(s.position, Position::new(1, "e"), "right before the replay");
        }
        other => panic!("expected subscribed, got {other:?}"),
    }
    gw.send(message_on("room:9", 4, "e")).await;
    assert_eq!(
        server_shapes(&mut server, 3).await,
        ["room:9#2", "room:9#3", "room:9#4"]
    );
    // Without `since`: from the channel's offset on.
    gw.send(server_subscribed("alerts", 10, "e", None)).await;
    gw.send(message_on("alerts", 11, "e")).await;
    assert_eq!(
        server_shapes(&mut server, 2).await,
        ["sub:alerts@10", "alerts#11"]
    );
    // A replay cut short (the replay claimed complete, yet stops at 21 of 22): the
    // rest is asked for.
    gw.send(message_on("feed", 21, "e")).await;
    gw.send(server_subscribed("feed", 22, "e", Some(true)))
        .await;
    let req = recv_subscribe_to(&mut gw, "feed").await;
    assert_eq!(req["since"], json!({"offset": 21, "epoch": "e"}));
    gw.send(message_on("feed", 22, "e")).await;
    reply_recovered(&mut gw, &req, "feed", 22).await;
    assert_eq!(
        server_shapes(&mut server, 3).await,
        ["sub:feed@20", "feed#21", "feed#22"]
    );

    // Ended by the backend: said once, and later deliveries on the channel are not
    // its messages.
    gw.send(server_unsubscribed("room:9")).await;
    gw.send(message_on("room:9", 5, "e")).await;
    gw.send(message_on("alerts", 12, "e")).await;
    assert_eq!(
        server_shapes(&mut server, 2).await,
        ["unsub:room:9", "alerts#12"]
    );

    // A renewal refused for now is retried; refused for good, the server-side
    // subscription is over and the refusal reported.
    let mut errors = client.errors();
    gw.send(message_on("alerts", 14, "e")).await;
    let req = recv_subscribe_to(&mut gw, "alerts").await;
    gw.send(
        json!({"type": "error", "code": "unavailable", "message": "later",
                   "id": req["id"], "channel": "alerts"}),
    )
    .await;
    let req = recv_subscribe_to(&mut gw, "alerts").await;
    assert_eq!(req["since"], json!({"offset": 12, "epoch": "e"}));
    gw.send(
        json!({"type": "error", "code": "forbidden", "message": "no",
                   "id": req["id"], "channel": "alerts"}),
    )
    .await;
    assert_eq!(server_shapes(&mut server, 1).await, ["unsub:alerts"]);
    match within("the refusal", errors.recv()).await {
        Ok(ClientError::Server { code, message }) => {
            assert_eq!(code, ErrorCode::Forbidden);
            assert!(message.contains("alerts"), "{message}");
        }
        other => panic!("expected the refusal, got {other:?}"),
    }

    // The backend ends one while its renewal is on its way: the renewal subscribed
    // the channel again, so the client unsubscribes.
    gw.send(message_on("feed", 24, "e")).await;
    let req = recv_subscribe_to(&mut gw, "feed").await;
    gw.send(server_unsubscribed("feed")).await;
    reply_recovered(&mut gw, &req, "feed", 24).await;
    let unsub = gw.recv().await;
    assert_eq!(
        unsub,
        json!({"type": "unsubscribe", "channel": "feed", "id": unsub["id"]})
    );
    gw.send(json!({"type": "unsubscribed", "channel": "feed", "id": unsub["id"]}))
        .await;
    assert_eq!(server_shapes(&mut server, 1).await, ["unsub:feed"]);
    assert_no_server_event(&mut server).await;
    client.close().await;
}

#[tokio::test]
async fn the_applications_own_subscription_comes_first() {
    let fake = Fake::start().await;
    let client = Client::connect([fake.url.clone()], TokenSource::fixed("t"), options());
    let mut server = client.server_subscriptions().expect("the stream");
    let mut room = client.subscribe_with("news", join_leave());
    let mut gw = fake.accept().await;
    gw.hello(25_000).await;
    gw.subscribed(0, "e", None).await;
    assert_eq!(shapes(&mut room, 1).await, ["subscribed"]);
    // The server subscribes a channel the application holds: only a confirmation.
    // Its `subscribe` turned the join/leave events off, so they are asked again.
    gw.send(server_subscribed("news", 0, "e", None)).await;
    let req = gw.recv_subscribe().await;
    assert_eq!(
        (&req["since"], &req["join_leave"]),
        (&json!({"offset": 0, "epoch": "e"}), &json!(true))
    );
    gw.reply_subscribed(&req, 0, "e", Some(true)).await;
    gw.send(message(1, "e")).await;
    assert_eq!(shapes(&mut room, 2).await, ["subscribed", "m1"]);
    assert_no_server_event(&mut server).await;

    // Subscribing to a channel the server subscribed takes it over, after the last
    // message the server-side stream had.
    gw.send(server_subscribed("alerts", 4, "e", None)).await;
    gw.send(message_on("alerts", 5, "e")).await;
    assert_eq!(
        server_shapes(&mut server, 2).await,
        ["sub:alerts@4", "alerts#5"]
    );
    let mut alerts = client.subscribe("alerts", None);
    let req = recv_subscribe_to(&mut gw, "alerts").await;
    assert_eq!(req["since"], json!({"offset": 5, "epoch": "e"}));
    gw.send(message_on("alerts", 6, "e")).await;
    reply_recovered(&mut gw, &req, "alerts", 6).await;
    gw.send(message_on("alerts", 7, "e")).await;
    assert_eq!(shapes(&mut alerts, 3).await, ["m6", "subscribed", "m7"]);
    assert_no_server_event(&mut server).await;

    // The backend ends a channel the application holds: its subscriptions end.
    gw.send(server_unsubscribed("alerts")).await;
    assert_eq!(shapes(&mut alerts, 1).await, ["unsubscribed"]);
    assert!(within("the end", alerts.next()).await.is_none());
    // Dropping the ended subscription sends nothing more.
    drop(alerts);
    gw.assert_silent().await;
    // While a `subscribe` of the application's is on its way, the subscription
    // goes on: that `subscribe` subscribes the channel again.
    gw.send(message(3, "e")).await;
    let req = gw.recv_subscribe().await;
    gw.send(server_unsubscribed("news")).await;
    gw.send(message(2, "e")).await;
    gw.send(message(3, "e")).await;
    gw.reply_subscribed(&req, 3, "e", Some(true)).await;
    assert_eq!(shapes(&mut room, 3).await, ["m2", "m3", "subscribed"]);
    assert_no_server_event(&mut server).await;
    client.close().await;
}

#[tokio::test]
async fn a_server_side_stream_not_read_pauses_and_recovers() {
    let fake = Fake::start().await;
    let opts = Options {
        subscription_buffer: 2,
        ..options()
    };
    let client = Client::connect([fake.url.clone()], TokenSource::fixed("t"), opts);
    let mut gw = fake.accept().await;
    gw.hello(25_000).await;
    // Kept from the start, before the stream is taken.
    gw.send(server_subscribed("user:u", 0, "e", None)).await;
    for o in 1..=4 {
        gw.send(message_on("user:u", o, "e")).await;
    }
    gw.assert_silent().await;
    let mut server = client.server_subscriptions().expect("the stream");
    assert_eq!(
        server_shapes(&mut server, 2).await,
        ["sub:user:u@0", "user:u#1"]
    );
    // Read down to half: the rest is recovered from the last message it had.
    let req = recv_subscribe_to(&mut gw, "user:u").await;
    assert_eq!(req["since"], json!({"offset": 2, "epoch": "e"}));
    gw.send(message_on("user:u", 3, "e")).await;
    gw.send(message_on("user:u", 4, "e")).await;
    reply_recovered(&mut gw, &req, "user:u", 4).await;
    assert_eq!(
        server_shapes(&mut server, 3).await,
        ["user:u#2", "user:u#3", "user:u#4"]
    );
    client.close().await;
}

#[tokio::test]
async fn a_disconnect_with_the_applications_code_stops_or_reconnects_as_it_says() {
    let fake = Fake::start().await;
    let client = Client::connect([fake.url.clone()], TokenSource::fixed("t"), options());
    let mut gw = fake.accept().await;
    gw.hello(25_000).await;
    // `retry_after_ms` holds the reconnect back long enough to see the state.
    gw.send(json!({"type": "disconnect", "code": "server_disconnect",
                   "reason": "come back later", "reconnect": true, "retry_after_ms": 300}))
        .await;
    gw.close(1001, "come back later").await;
    let state = until(&client, "the disconnect", |s| {
        matches!(s, ConnState::Disconnected { .. })
    })
    .await;
    assert_eq!(
        state,
        ConnState::Disconnected {
            code: Some(DisconnectCode::ServerDisconnect),
            reason: "come back later".to_owned(),
            reconnect: true,
        }
    );
    let mut gw = fake.accept().await;
    gw.hello(25_000).await;
    until(&client, "the reconnect", ConnState::is_connected).await;
    gw.send(
        json!({"type": "disconnect", "code": "banned", "reason": "you were banned",
                   "reconnect": false}),
    )
    .await;
    gw.close(1008, "you were banned").await;
    assert_stops_with(&client, DisconnectCode::Other("banned".to_owned())).await;
    assert_eq!(
        client.state(),
        ConnState::Disconnected {
            code: Some(DisconnectCode::Other("banned".to_owned())),
            reason: "you were banned".to_owned(),
            reconnect: false,
        }
    );
}
