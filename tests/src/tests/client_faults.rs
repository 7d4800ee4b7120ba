//! herald-client through faults, against real services: a gateway killed mid-stream,
//! Redis restarted with and without its data, and history trimmed during a
//! disconnect. Exactly once and in order, or a gap that says what was lost.

use herald_client::{Client, Event, GapReason, Message, TokenSource};
use serde_json::json;

use super::client::{
    connected, gateway, messages, next_event, next_message, offsets, options, publish, quiet,
    subscribed, until,
};
use crate::{Redis, Service, ServiceBuilder, token, within};

/// 500 messages published at ~200/s while `disrupt` runs; the subscription must yield
/// every offset 1..=500 exactly once, in order, with no gap. Returns the gateway nodes
/// the client was connected to before and after.
async fn survives(disrupt: impl AsyncFnOnce(&mut Redis, &mut Service)) -> (String, String) {
    let mut redis = Redis::start().await;
    let mut gw1 = gateway(&redis).process().spawn().await;
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
async fn history_trimmed_during_a_disconnect_is_reported_as_a_gap() {
    let redis = Redis::start().await;
    let mut gw = gateway(&redis)
        .env("HERALD_HISTORY_SIZE", "10")
        .process()
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
