//! herald-client against real services: publishes from the broadcaster and its own
//! acknowledged publishes, a gateway killed mid-stream, Redis restarted with and
//! without its data, tokens refreshed on the live connection, history trimmed during a
//! disconnect, and the refusals that stop a client for good.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{FutureExt as _, StreamExt as _};
use herald_client::{
    Client, ConnState, DisconnectCode, ErrorCode, Event, GapReason, Message, Options, PublishError,
    Subscription, TokenSource,
};
use reqwest::Method;
use serde_json::{Value, json};

use crate::{API_KEY, Redis, Service, ServiceBuilder, http_json, token, within};

/// A gateway with the per-IP limits relaxed: every test connects from 127.0.0.1.
fn gateway(redis: &Redis) -> ServiceBuilder {
    ServiceBuilder::new("ws-gateway")
        .redis(redis)
        .env("HERALD_MAX_CONNECTIONS_PER_IP", "1000")
        .env("HERALD_CONNECT_RATE_PER_IP", "1000")
        .env("HERALD_PUBSUB_PROBE_INTERVAL_MS", "300")
}

/// Reconnects quickly, so the tests spend their time on what they check.
fn options() -> Options {
    Options {
        min_reconnect_delay: Duration::from_millis(100),
        max_reconnect_delay: Duration::from_millis(1000),
        ..Options::default()
    }
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Publishes through the broadcaster; returns `{offset, epoch}`.
async fn publish(broadcaster: &Service, channel: &str, message: Value) -> Value {
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
async fn until(client: &Client, what: &str, check: impl Fn(&ConnState) -> bool) -> ConnState {
    let mut states = client.states();
    within(what, states.wait_for(|s| check(s)))
        .await
        .expect("the client is gone")
        .clone()
}

async fn connected(client: &Client) -> (String, String) {
    match until(client, "the client to connect", ConnState::is_connected).await {
        ConnState::Connected { node, conn_id } => (node, conn_id),
        other => unreachable!("{other:?}"),
    }
}

async fn next_event(sub: &mut Subscription) -> Event {
    within("a subscription event", sub.next())
        .await
        .expect("the subscription ended")
}

/// The next message, skipping `subscribed` confirmations; panics on a gap or error.
async fn next_message(sub: &mut Subscription) -> Message {
    loop {
        match next_event(sub).await {
            Event::Message(m) => return m,
            Event::Subscribed(_) => {}
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

/// Waits for the `subscribed` of a new subscription.
async fn subscribed(sub: &mut Subscription) {
    match next_event(sub).await {
        Event::Subscribed(s) => assert_eq!(s.channel, sub.channel()),
        other => panic!("expected subscribed, got {other:?}"),
    }
}

/// Reads `count` messages, failing on a gap.
async fn messages(sub: &mut Subscription, count: usize) -> Vec<Message> {
    let mut got = Vec::with_capacity(count);
    while got.len() < count {
        got.push(next_message(sub).await);
    }
    got
}

/// Reads `count` messages, failing on a gap; returns their offsets.
async fn offsets(sub: &mut Subscription, count: usize) -> Vec<u64> {
    messages(sub, count)
        .await
        .iter()
        .map(|m| m.offset)
        .collect()
}

/// Nothing more arrives for a moment (a late duplicate would).
async fn quiet(sub: &mut Subscription) {
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

/// 500 messages published at ~200/s while `disrupt` runs; the subscription must yield
/// every offset 1..=500 exactly once, in order, with no gap. Returns the gateway nodes
/// the client was connected to before and after.
async fn survives(disrupt: impl AsyncFnOnce(&mut Redis, &mut Service)) -> (String, String) {
    let mut redis = Redis::start().await;
    let mut gw1 = gateway(&redis).spawn().await;
    let gw2 = gateway(&redis).spawn().await;
    let bc = ServiceBuilder::new("broadcaster")
        .redis(&redis)
        .spawn()
        .await;
    let t = token("ann", &["feed"], &[]);
    // The first URL is tried first: the client starts on gw1.
    let client = Client::connect([gw1.ws(), gw2.ws()], TokenSource::fixed(t), options());
    let mut feed = client.subscribe("feed", None);
    let (before, _) = connected(&client).await;
    subscribed(&mut feed).await;

    let publisher = tokio::spawn(crate::publish_stream(bc.http(), "feed", 500, 200));
    let mut got = offsets(&mut feed, 100).await;
    disrupt(&mut redis, &mut gw1).await;
    got.extend(offsets(&mut feed, 400).await);
    within("the publisher", publisher).await.expect("publisher");
    quiet(&mut feed).await;
    assert_eq!(
        got,
        (1..=500).collect::<Vec<u64>>(),
        "every offset once, in order"
    );
    let (after, _) = connected(&client).await;
    client.close().await;
    (before, after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_gateway_mid_stream_loses_and_repeats_nothing() {
    let (before, after) = survives(async |_redis, gw1| {
        gw1.kill().await;
    })
    .await;
    assert_ne!(before, after, "moved to the other gateway");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_keeping_its_data_loses_and_repeats_nothing() {
    survives(async |redis, _gw1| {
        redis.restart_keeping_data().await;
    })
    .await;
}

/// Redis restarting empty loses the channel's history and starts a new epoch: the
/// client cannot get back what was published in the new epoch before it noticed, and
/// says so with a gap instead of delivering out of order or twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_without_its_data_is_reported_as_a_gap() {
    let mut redis = Redis::start().await;
    let gw = gateway(&redis).spawn().await;
    let bc = ServiceBuilder::new("broadcaster")
        .redis(&redis)
        .spawn()
        .await;
    let client = Client::connect(
        [gw.ws()],
        TokenSource::fixed(token("ann", &["feed"], &[])),
        options(),
    );
    let mut feed = client.subscribe("feed", None);
    connected(&client).await;
    subscribed(&mut feed).await;
    let publisher = tokio::spawn(crate::publish_stream(bc.http(), "feed", 300, 200));
    let before = messages(&mut feed, 50).await;
    let old_epoch = before[0].epoch.clone();
    assert_eq!(
        before.iter().map(|m| m.offset).collect::<Vec<u64>>(),
        (1..=50).collect::<Vec<u64>>()
    );
    redis.restart().await;
    within("the publisher", publisher).await.expect("publisher");

    // Read until message n = 300, the publisher's last.
    let mut events = Vec::new();
    loop {
        let ev = next_event(&mut feed).await;
        let last = matches!(&ev, Event::Message(m) if m.data["n"] == 300);
        events.push(ev);
        if last {
            break;
        }
    }
    quiet(&mut feed).await;
    let gaps: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Gap(g) => Some(g.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(gaps.len(), 1, "one gap: {gaps:?}");
    let gap = &gaps[0];
    assert_eq!(gap.reason, GapReason::EpochChanged, "{gap:?}");
    let after: Vec<Message> = events
        .into_iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some(m),
            _ => None,
        })
        .collect();
    let (old, new): (Vec<&Message>, Vec<&Message>) =
        after.iter().partition(|m| m.epoch == old_epoch);
    // The old epoch went on without a hole up to where the gap starts.
    let old_offsets: Vec<u64> = old.iter().map(|m| m.offset).collect();
    let last_old = old_offsets.last().copied().unwrap_or(50);
    assert_eq!(old_offsets, (51..=last_old).collect::<Vec<u64>>());
    assert_eq!(
        (gap.from.offset, gap.from.epoch.as_str()),
        (last_old, old_epoch.as_str())
    );
    // The new epoch resumes right after the gap, without a hole, through the last
    // message published.
    assert_ne!(gap.to.epoch, old_epoch);
    assert!(new.iter().all(|m| m.epoch == gap.to.epoch), "{new:?}");
    let new_offsets: Vec<u64> = new.iter().map(|m| m.offset).collect();
    let first_new = gap.to.offset + 1;
    assert_eq!(
        new_offsets,
        (first_new..first_new + new.len() as u64).collect::<Vec<u64>>()
    );
    // And in publishing order. (Not strictly: a publish acknowledged just as Redis
    // died may be retried by the publisher into the new epoch, a duplicate of its
    // own making that no client can tell from a new message.)
    let ns: Vec<u64> = before
        .iter()
        .chain(&after)
        .filter_map(|m| m.data["n"].as_u64())
        .collect();
    assert!(ns.windows(2).all(|w| w[0] <= w[1]), "{ns:?}");
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
    // Three token lifetimes, publishing all along.
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
async fn history_trimmed_during_a_disconnect_is_reported_as_a_gap() {
    let redis = Redis::start().await;
    let mut gw = gateway(&redis)
        .env("HERALD_HISTORY_SIZE", "10")
        .spawn()
        .await;
    let bc = ServiceBuilder::new("broadcaster")
        .redis(&redis)
        .env("HERALD_HISTORY_SIZE", "10")
        .spawn()
        .await;
    let client = Client::connect(
        [gw.ws()],
        TokenSource::fixed(token("ann", &["news"], &[])),
        options(),
    );
    let mut news = client.subscribe("news", None);
    connected(&client).await;
    subscribed(&mut news).await;
    for i in 1..=3 {
        publish(&bc, "news", json!({"n": i})).await;
    }
    assert_eq!(offsets(&mut news, 3).await, [1, 2, 3]);

    gw.kill().await;
    until(&client, "the client to notice", |s| !s.is_connected()).await;
    for i in 4..=53 {
        publish(&bc, "news", json!({"n": i})).await;
    }
    gw.restart().await;
    let gap = loop {
        match next_event(&mut news).await {
            Event::Gap(gap) => break gap,
            Event::Subscribed(_) => {}
            other => panic!("expected a gap, got {other:?}"),
        }
    };
    assert_eq!(gap.channel, "news");
    assert_eq!((gap.from.offset, gap.to.offset), (3, 53), "{gap:?}");
    assert_eq!(gap.reason, GapReason::NotRecovered);
    // Live delivery goes on from the new position.
    publish(&bc, "news", json!({"n": 54})).await;
    let m = next_message(&mut news).await;
    assert_eq!((m.offset, m.data["n"].as_u64()), (54, Some(54)));
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
    let mut gw = gateway(&redis).spawn().await;
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
    let pending = tokio::spawn({
        let c = client.clone();
        async move { c.publish("chat:a", &json!("maybe")).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
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
