//! herald-client against real services: publishes from the broadcaster and its own
//! acknowledged publishes, batches, tokens refreshed on the live connection, and the
//! refusals that stop a client for good. Faults (a gateway killed, Redis restarted,
//! history trimmed) are in `client_faults.rs`, which shares the helpers here.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{FutureExt as _, StreamExt as _};
use herald_client::{
    Client, ConnState, DisconnectCode, ErrorCode, Event, Message, Options, PublishError,
    Subscription, TokenSource,
};
use reqwest::Method;
use serde_json::{Value, json};

use crate::{
    API_KEY, Redis, Service, ServiceBuilder, eventually, http_json, token, unread_bytes, within,
};

/// A gateway with the per-IP limits relaxed: every test connects from 127.0.0.1.
pub(super) fn gateway(redis: &Redis) -> ServiceBuilder {
    ServiceBuilder::new("ws-gateway")
        .redis(redis)
        .env("HERALD_MAX_CONNECTIONS_PER_IP", "1000")
        .env("HERALD_CONNECT_RATE_PER_IP", "1000")
        .env("HERALD_PUBSUB_PROBE_INTERVAL_MS", "300")
}

/// Reconnects quickly, so the tests spend their time on what they check.
pub(super) fn options() -> Options {
    Options {
        min_reconnect_delay: Duration::from_millis(100),
        max_reconnect_delay: Duration::from_millis(1000),
        ..Options::default()
    }
}

pub(super) fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Publishes through the broadcaster; returns `{offset, epoch}`.
pub(super) async fn publish(broadcaster: &Service, channel: &str, message: Value) -> Value {
    let (status, body) = http_json(
        Method::POST,
        &format!("{}/v1/publish", broadcaster.http()),
        Some(API_KEY),
        Some(json!({"channel": channel, "message": message})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Waits until the client's state passes `check`; returns that state.
pub(super) async fn until(
    client: &Client,
    what: &str,
    check: impl Fn(&ConnState) -> bool,
) -> ConnState {
    let mut states = client.states();
    within(what, states.wait_for(|s| check(s)))
        .await
        .expect("the client is gone")
        .clone()
}

pub(super) async fn connected(client: &Client) -> (String, String) {
    match until(client, "the client to connect", ConnState::is_connected).await {
        ConnState::Connected { node, conn_id } => (node, conn_id),
        other => unreachable!("{other:?}"),
    }
}

pub(super) async fn next_event(sub: &mut Subscription) -> Event {
    within("a subscription event", sub.next())
        .await
        .expect("the subscription ended")
}

/// The next message, skipping `subscribed` confirmations; panics on a gap or error.
pub(super) async fn next_message(sub: &mut Subscription) -> Message {
    loop {
        match next_event(sub).await {
            Event::Message(m) => return m,
            Event::Subscribed(_) => {}
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

/// Waits for the `subscribed` of a new subscription.
pub(super) async fn subscribed(sub: &mut Subscription) {
    match next_event(sub).await {
        Event::Subscribed(s) => assert_eq!(s.channel, sub.channel()),
        other => panic!("expected subscribed, got {other:?}"),
    }
}

/// Reads `count` messages, failing on a gap.
pub(super) async fn messages(sub: &mut Subscription, count: usize) -> Vec<Message> {
    let mut got = Vec::with_capacity(count);
    while got.len() < count {
        got.push(next_message(sub).await);
    }
    got
}

/// Reads `count` messages, failing on a gap; returns their offsets.
pub(super) async fn offsets(sub: &mut Subscription, count: usize) -> Vec<u64> {
    messages(sub, count)
        .await
        .iter()
        .map(|m| m.offset)
        .collect()
}

/// Nothing more arrives for a moment (a late duplicate would).
pub(super) async fn quiet(sub: &mut Subscription) {
    loop {
        match tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
            Err(_) => return,
            Ok(Some(Event::Subscribed(_))) => {}
            Ok(other) => panic!("nothing more expected, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_receives_publishes_and_publish_is_acknowledged() {
    let redis = Redis::start().await;
    let gw = gateway(&redis).spawn().await;
    let bc = ServiceBuilder::new("broadcaster")
        .redis(&redis)
        .spawn()
        .await;
    let t = token("ann", &["news", "chat:*"], &["chat:*"]);
    let client = Client::connect([gw.ws()], TokenSource::fixed(t), options());
    let mut news = client.subscribe("news", None);
    let mut lobby = client.subscribe("chat:lobby", None);
    connected(&client).await;
    subscribed(&mut news).await;
    subscribed(&mut lobby).await;

    for i in 1..=5 {
        publish(&bc, "news", json!({"n": i})).await;
    }
    for i in 1..=5u64 {
        let m = next_message(&mut news).await;
        assert_eq!((m.channel.as_str(), m.offset), ("news", i));
        assert_eq!(m.data, json!({"n": i}));
        assert_eq!(m.from_user, None, "a server-side publish");
        assert!(m.timestamp.ends_with('Z'), "{}", m.timestamp);
    }

    // Its own publish is acknowledged with its position and delivered back to it.
    let ack = within(
        "the publish",
        client.publish("chat:lobby", &json!({"text": "hi"})),
    )
    .await
    .expect("acknowledged");
    assert_eq!((ack.channel.as_str(), ack.offset), ("chat:lobby", 1));
    let m = next_message(&mut lobby).await;
    assert_eq!(m.position(), herald_client::Position::new(1, ack.epoch));
    assert_eq!(m.data, json!({"text": "hi"}));
    assert_eq!(m.from_user.as_deref(), Some("ann"));

    // A publish the token does not allow is refused with the server's code.
    let refused = within("the refused publish", client.publish("news", &json!({})))
        .await
        .expect_err("no publish claim for news");
    assert!(
        matches!(
            refused,
            PublishError::Refused {
                code: ErrorCode::Forbidden,
                ..
            }
        ),
        "{refused:?}"
    );

    // Unsubscribing ends the stream; closing ends the client.
    lobby.unsubscribe().await;
    within("close", client.close()).await;
    assert_eq!(
        client.state(),
        ConnState::Disconnected {
            code: None,
            reason: "closed by the client".to_owned(),
            reconnect: false
        }
    );
    assert_eq!(within("the stream to end", news.next()).await, None);
    assert_eq!(
        client.publish("chat:lobby", &1).await,
        Err(PublishError::Closed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_deliveries_are_unpacked_in_order() {
    let redis = Redis::start().await;
    let gw = gateway(&redis)
        .env("HERALD_RATE_LIMIT_MESSAGES", "100000")
        .spawn()
        .await;
    let opts = Options {
        batch: true,
        ..options()
    };
    let t = token("ann", &["chat:*"], &["chat:*"]);
    let client = Client::connect([gw.ws()], TokenSource::fixed(t), opts);
    let mut room = client.subscribe("chat:room", None);
    connected(&client).await;
    subscribed(&mut room).await;
    // A hundred publishes at once: their deliveries come back coalesced.
    let publishes = (1..=100).map(|n| {
        let c = client.clone();
        async move { c.publish("chat:room", &json!({"n": n})).await }
    });
    let acks = within(
        "a hundred acknowledgements",
        futures_util::future::join_all(publishes),
    )
    .await;
    let mut acked: Vec<u64> = acks
        .into_iter()
        .map(|a| a.expect("acknowledged").offset)
        .collect();
    acked.sort_unstable();
    assert_eq!(acked, (1..=100).collect::<Vec<u64>>());
    let got = messages(&mut room, 100).await;
    assert_eq!(
        got.iter().map(|m| m.offset).collect::<Vec<u64>>(),
        (1..=100).collect::<Vec<u64>>()
    );
    assert!(got.iter().all(|m| m.from_user.as_deref() == Some("ann")));
    quiet(&mut room).await;
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_tokens_are_refreshed_on_the_live_connection() {
    let redis = Redis::start().await;
    // No leeway: a token is refused the moment it expires.
    let gw = gateway(&redis)
        .env("HERALD_JWT_LEEWAY_S", "0")
        .spawn()
        .await;
    let bc = ServiceBuilder::new("broadcaster")
        .redis(&redis)
        .spawn()
        .await;
    let fetched = Arc::new(AtomicUsize::new(0));
    let source = {
        let fetched = fetched.clone();
        TokenSource::fetch(move || {
            let fetched = fetched.clone();
            async move {
                fetched.fetch_add(1, Ordering::SeqCst);
                let now = now();
                Ok::<_, String>(crate::token_with(json!({
                    "sub": "ann", "channels": ["news"], "iat": now, "exp": now + 4,
                    "iss": "herald-auth", "aud": "herald",
                })))
            }
        })
    };
    let client = Client::connect([gw.ws()], source, options());
    let mut errors = client.errors();
    let mut news = client.subscribe("news", None);
    let (_, conn_id) = connected(&client).await;
    subscribed(&mut news).await;
    // Three token lifetimes, publishing all along (the pace is the point: time passes
    // while the client refreshes its token).
    for i in 1..=12 {
        publish(&bc, "news", json!({"n": i})).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(offsets(&mut news, 12).await, (1..=12).collect::<Vec<u64>>());
    // One connection all along: never disconnected, never told the token expired.
    let (_, still) = connected(&client).await;
    assert_eq!(still, conn_id, "the same connection throughout");
    let n = fetched.load(Ordering::SeqCst);
    assert!(
        n >= 4,
        "the token was refreshed at least three times: {n} fetched"
    );
    assert!(errors.try_recv().is_err(), "no errors reported");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_disconnect_and_revocation_stop_the_client() {
    let redis = Redis::start().await;
    let gw = gateway(&redis).spawn().await;
    let mut control = redis.conn().await;

    // An operator disconnects the user: the client stops, its streams end and
    // publishes fail.
    let client = Client::connect(
        [gw.ws()],
        TokenSource::fixed(token("w", &["news"], &["news"])),
        options(),
    );
    let mut news = client.subscribe("news", None);
    connected(&client).await;
    subscribed(&mut news).await;
    let _: () = redis::cmd("PUBLISH")
        .arg("herald:control")
        .arg(json!({"type":"disconnect_user","user_id":"w"}).to_string())
        .query_async(&mut control)
        .await
        .expect("publish");
    let state = until(&client, "the client to stop", |s| {
        matches!(s, ConnState::Disconnected { .. })
    })
    .await;
    assert!(
        matches!(
            &state,
            ConnState::Disconnected {
                code: Some(DisconnectCode::AdminDisconnect),
                reconnect: false,
                ..
            }
        ),
        "{state:?}"
    );
    assert_eq!(within("the stream to end", news.next()).await, None);
    assert_eq!(client.publish("news", &1).await, Err(PublishError::Closed));

    // A revoked token stops even a client that could fetch another: revocation is an
    // operator's decision, not an expiry.
    let fetched = Arc::new(AtomicUsize::new(0));
    let source = {
        let fetched = fetched.clone();
        TokenSource::fetch(move || {
            let fetched = fetched.clone();
            async move {
                fetched.fetch_add(1, Ordering::SeqCst);
                Ok::<_, String>(crate::token_with(json!({
                    "sub": "v", "exp": now() + 600, "iss": "herald-auth", "aud": "herald",
                    "jti": "client-jti-1",
                })))
            }
        })
    };
    let revoked = Client::connect([gw.ws()], source, options());
    connected(&revoked).await;
    let _: () = redis::cmd("PUBLISH")
        .arg("herald:control")
        .arg(json!({"type":"revoke","jti":"client-jti-1"}).to_string())
        .query_async(&mut control)
        .await
        .expect("publish");
    let state = until(&revoked, "the revoked client to stop", |s| {
        matches!(s, ConnState::Disconnected { .. })
    })
    .await;
    assert!(
        matches!(
            &state,
            ConnState::Disconnected {
                code: Some(DisconnectCode::TokenRevoked),
                reconnect: false,
                ..
            }
        ),
        "{state:?}"
    );
    assert_eq!(fetched.load(Ordering::SeqCst), 1, "no reconnect attempted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_retried_once_with_a_fresh_one_then_stops() {
    let redis = Redis::start().await;
    let gw = gateway(&redis).spawn().await;
    // A fixed token that is refused: stop at once.
    let bad = crate::token_with(
        json!({"sub": "x", "exp": now() + 600, "iss": "someone-else", "aud": "herald"}),
    );
    let client = Client::connect([gw.ws()], TokenSource::fixed(bad.clone()), options());
    let state = until(&client, "the client to stop", |s| {
        matches!(
            s,
            ConnState::Disconnected {
                reconnect: false,
                ..
            }
        )
    })
    .await;
    assert!(
        matches!(
            &state,
            ConnState::Disconnected {
                code: Some(DisconnectCode::AuthenticationFailed),
                ..
            }
        ),
        "{state:?}"
    );
    // A fetching source gets one more chance: refused twice, it stops too.
    let fetched = Arc::new(AtomicUsize::new(0));
    let source = {
        let fetched = fetched.clone();
        TokenSource::fetch(move || {
            let (fetched, bad) = (fetched.clone(), bad.clone());
            async move {
                fetched.fetch_add(1, Ordering::SeqCst);
                Ok::<_, String>(bad)
            }
        })
    };
    let client = Client::connect([gw.ws()], source, options());
    until(&client, "the fetching client to stop", |s| {
        matches!(
            s,
            ConnState::Disconnected {
                reconnect: false,
                ..
            }
        )
    })
    .await;
    assert_eq!(fetched.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_wait_for_a_connection_and_fail_honestly() {
    let redis = Redis::start().await;
    let mut gw = gateway(&redis).process().spawn().await;
    let opts = Options {
        publish_queue: 2,
        publish_timeout: Duration::from_secs(3),
        ..options()
    };
    let client = Client::connect(
        [gw.ws()],
        TokenSource::fixed(token("ann", &["chat:*"], &["chat:*"])),
        opts,
    );
    connected(&client).await;

    // Made while disconnected, publishes wait for the next connection; past the
    // queue's bound they fail at once.
    gw.kill().await;
    until(&client, "the client to notice", |s| !s.is_connected()).await;
    // A publish takes its place in the queue on its first poll.
    let mut first = Box::pin(client.publish("chat:a", &1));
    let mut second = Box::pin(client.publish("chat:a", &2));
    assert!(first.as_mut().now_or_never().is_none());
    assert!(second.as_mut().now_or_never().is_none());
    assert_eq!(
        client.publish("chat:a", &json!(3)).await,
        Err(PublishError::QueueFull)
    );
    gw.restart().await;
    let mut acked = Vec::new();
    for p in [first, second] {
        let ack = within("a queued publish", p)
            .await
            .expect("acknowledged after the reconnect");
        acked.push(ack.offset);
    }
    acked.sort_unstable();
    assert_eq!(acked, [1, 2]);

    // Sent, then the connection dies before the acknowledgement: `Disconnected`, and
    // never sent again.
    connected(&client).await;
    let pid = i32::try_from(gw.pid().expect("pid")).expect("pid");
    crate::signal(pid, 19);
    let unread = unread_bytes(gw.addr);
    let pending = tokio::spawn({
        let c = client.clone();
        async move { c.publish("chat:a", &json!("maybe")).await }
    });
    // Sent: the stopped gateway has the frame waiting on its socket (a `broadcast`
    // frame is longer than anything else the client might send, such as a pong).
    eventually("the publish to reach the stopped gateway", || async {
        (unread_bytes(gw.addr) >= unread + 40).then_some(())
    })
    .await;
    gw.kill().await;
    assert_eq!(
        within("the unacknowledged publish", pending)
            .await
            .expect("task"),
        Err(PublishError::Disconnected)
    );

    // With no gateway at all, a publish times out.
    assert_eq!(
        within(
            "a publish with nowhere to go",
            client.publish("chat:a", &json!(4))
        )
        .await,
        Err(PublishError::Timeout)
    );
    client.close().await;
}
