//! herald-client's server-side subscriptions against real services, on both engines:
//! the personal channel (`HERALD_USER_CHANNEL=1`) delivered and recovered exactly once
//! across a restart of the client's gateway; the backend's `/v1/subscribe` (with its
//! replay) and `/v1/unsubscribe` as events of the server-side stream, a channel taken
//! over by the application's own subscription; `/v1/disconnect` reconnecting or
//! stopping the client as the backend said.

use std::time::Duration;

use futures_util::StreamExt as _;
use herald_client::{
    Client, ConnState, DisconnectCode, Event, MessageKind, Position, ServerEvent, ServerSubscribed,
    ServerSubscriptions, TokenSource,
};
use reqwest::Method;
use serde_json::{Value, json};

use super::client::{connected, next_event, options, publish, subscribed, until};
use super::gateway::gateway;
use crate::{API_KEY, Backend, Service, ServiceBuilder, http_json, token, within};

/// POSTs `body` to the broadcaster's `path`; returns the answer, after checking it is
/// a 200.
async fn post(bc: &Service, path: &str, body: Value) -> Value {
    let (status, v) = http_json(
        Method::POST,
        &format!("{}{path}", bc.http()),
        Some(API_KEY),
        Some(body),
    )
    .await;
    assert_eq!(status, 200, "{path}: {v}");
    v
}

async fn next_server_event(stream: &mut ServerSubscriptions) -> ServerEvent {
    within("a server-side event", stream.next())
        .await
        .expect("the server-side stream ended")
}

/// The next event, a `Subscribed`.
async fn server_subscribed(stream: &mut ServerSubscriptions) -> ServerSubscribed {
    match next_server_event(stream).await {
        ServerEvent::Subscribed(s) => s,
        other => panic!("expected subscribed, got {other:?}"),
    }
}

/// The next `count` events, messages, as (channel, offset, data).
async fn server_messages(
    stream: &mut ServerSubscriptions,
    count: usize,
) -> Vec<(String, u64, Value)> {
    let mut got = Vec::with_capacity(count);
    while got.len() < count {
        match next_server_event(stream).await {
            ServerEvent::Message(m) => got.push((m.channel, m.offset, m.data)),
            other => panic!("expected a message, got {other:?}"),
        }
    }
    got
}

/// Nothing more arrives for a moment (a late duplicate would).
async fn server_quiet(stream: &mut ServerSubscriptions) {
    let next = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    assert!(next.is_err(), "nothing more expected, got {next:?}");
}

/// A message to `user`'s personal channel (`/v1/user-messages` without a target).
async fn to_user(bc: &Service, user: &str, n: u64) -> Value {
    post(
        bc,
        "/v1/user-messages",
        json!({"user_id": user, "content": {"n": n}}),
    )
    .await
}

async fn client_gets_its_personal_channel_exactly_once_across_a_restart(backend: Backend) {
    let mut gw = gateway(&backend)
        .env("HERALD_USER_CHANNEL", "1")
        .spawn()
        .await;
    let bc = ServiceBuilder::new("broadcaster")
        .on(&backend)
        .spawn()
        .await;
    // No claim for it: the gateway subscribes the connection itself.
    let client = Client::connect(
        [gw.ws()],
        TokenSource::fixed(token("ann", &[], &[])),
        options(),
    );
    let mut server = client.server_subscriptions().expect("the stream");
    let (_, first) = connected(&client).await;
    let s = server_subscribed(&mut server).await;
    assert_eq!((s.channel.as_str(), s.offset), ("user:ann", 0), "{s:?}");
    assert_eq!(s.position.offset, 0, "{s:?}");

    let sent = to_user(&bc, "ann", 1).await;
    let epoch = sent["epoch"].as_str().expect("epoch").to_owned();
    match next_server_event(&mut server).await {
        ServerEvent::Message(m) => {
            assert_eq!(
                (m.channel.as_str(), m.kind, m.offset, &m.data),
                ("user:ann", MessageKind::UserMessage, 1, &json!({"n": 1}))
            );
            assert_eq!(m.epoch, epoch);
        }
        other => panic!("expected a message, got {other:?}"),
    }

    // The gateway dies; what is sent to Ann meanwhile reaches her once she is back,
    // once each, in order.
    gw.kill().await;
    until(&client, "the client to notice", |s| !s.is_connected()).await;
    for n in 2..=3 {
        to_user(&bc, "ann", n).await;
    }
    gw.restart().await;
    until(
        &client,
        "the reconnect",
        |s| matches!(s, ConnState::Connected { conn_id, .. } if *conn_id != first),
    )
    .await;
    let s = server_subscribed(&mut server).await;
    assert_eq!(s.channel, "user:ann");
    assert_eq!(s.position, Position::new(1, epoch.clone()), "kept: {s:?}");
    to_user(&bc, "ann", 4).await;
    let got = server_messages(&mut server, 3).await;
    let want: Vec<(String, u64, Value)> = (2..=4)
        .map(|n| ("user:ann".to_owned(), n, json!({"n": n})))
        .collect();
    assert_eq!(got, want);
    server_quiet(&mut server).await;
    client.close().await;
    assert!(within("the end", server.next()).await.is_none());
}

async fn client_follows_the_backends_subscribe_unsubscribe_and_disconnect(backend: Backend) {
    let gw = gateway(&backend).spawn().await;
    let bc = ServiceBuilder::new("broadcaster")
        .on(&backend)
        .spawn()
        .await;
    // Alice may not subscribe to `secret:*` herself; the backend may put her there.
    let client = Client::connect(
        [gw.ws()],
        TokenSource::fixed(token("alice", &["news"], &[])),
        options(),
    );
    let mut server = client.server_subscriptions().expect("the stream");
    let (_, first) = connected(&client).await;
    let p1 = publish(&bc, "secret:1", json!({"n": 1})).await;
    let epoch = p1["epoch"].as_str().expect("epoch").to_owned();

    // From offset 0: the replay of 1 comes first, then delivery goes on live.
    let v = post(
        &bc,
        "/v1/subscribe",
        json!({"user_id": "alice", "channel": "secret:1",
               "since": {"offset": 0, "epoch": epoch}}),
    )
    .await;
    assert_eq!(v["affected"], 1, "{v}");
    let s = server_subscribed(&mut server).await;
    assert_eq!(
        (s.channel.as_str(), s.offset, s.recovered),
        ("secret:1", 1, Some(true))
    );
    assert_eq!(s.position, Position::new(0, epoch.clone()));
    publish(&bc, "secret:1", json!({"n": 2})).await;
    assert_eq!(
        server_messages(&mut server, 2).await,
        [
            ("secret:1".to_owned(), 1, json!({"n": 1})),
            ("secret:1".to_owned(), 2, json!({"n": 2}))
        ]
    );

    // Another channel, taken over by the application's own subscription (no claim
    // needed: the connection holds the channel already).
    post(
        &bc,
        "/v1/subscribe",
        json!({"user_id": "alice", "channel": "secret:2"}),
    )
    .await;
    let s = server_subscribed(&mut server).await;
    assert_eq!((s.channel.as_str(), s.position.offset), ("secret:2", 0));
    let mut own = client.subscribe("secret:2", None);
    subscribed(&mut own).await;
    publish(&bc, "secret:2", json!({"n": 1})).await;
    match next_event(&mut own).await {
        Event::Message(m) => assert_eq!((m.offset, &m.data), (1, &json!({"n": 1}))),
        other => panic!("expected a message, got {other:?}"),
    }
    server_quiet(&mut server).await;

    // Ended by the backend: the server-side one on the stream, the taken-over one
    // on its own subscription.
    post(
        &bc,
        "/v1/unsubscribe",
        json!({"user_id": "alice", "channel": "secret:1"}),
    )
    .await;
    assert_eq!(
        next_server_event(&mut server).await,
        ServerEvent::Unsubscribed {
            channel: "secret:1".to_owned()
        }
    );
    post(
        &bc,
        "/v1/unsubscribe",
        json!({"user_id": "alice", "channel": "secret:2"}),
    )
    .await;
    assert_eq!(next_event(&mut own).await, Event::Unsubscribed);
    assert!(within("the end", own.next()).await.is_none());
    publish(&bc, "secret:1", json!({"n": 3})).await;
    server_quiet(&mut server).await;

    // `/v1/disconnect` asking for a reconnect: the client comes back.
    let v = post(
        &bc,
        "/v1/disconnect",
        json!({"user_id": "alice", "reconnect": true}),
    )
    .await;
    assert_eq!(v["affected"], 1, "{v}");
    until(
        &client,
        "the reconnect",
        |s| matches!(s, ConnState::Connected { conn_id, .. } if *conn_id != first),
    )
    .await;
    // The backend's own code, no reconnect: the client stops with that code.
    post(
        &bc,
        "/v1/disconnect",
        json!({"user_id": "alice", "code": "banned", "reason": "you were banned"}),
    )
    .await;
    let state = until(&client, "the stop", |s| {
        matches!(
            s,
            ConnState::Disconnected {
                reconnect: false,
                ..
            }
        )
    })
    .await;
    assert_eq!(
        state,
        ConnState::Disconnected {
            code: Some(DisconnectCode::Other("banned".to_owned())),
            reason: "you were banned".to_owned(),
            reconnect: false,
        }
    );
    assert!(within("the end", server.next()).await.is_none());
}

crate::both_engines!(
    client_gets_its_personal_channel_exactly_once_across_a_restart,
    client_follows_the_backends_subscribe_unsubscribe_and_disconnect,
);
