//! Random sequences of client frames against a real gateway, checked against what
//! the gateway keeps in Redis (presence and Pub/Sub subscriptions).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use super::chaos::gateway;
use crate::load_client::{Client, Next};
use crate::{Redis, Service, Ws, env_u64, eventually, token};

/// Channels the property test plays with; `q:x` is forbidden, `bad name` invalid.
const PROP_CHANNELS: [&str; 4] = ["p:a", "p:b", "p:c", "p:d"];

/// One connection of the property test and what its replies told it.
struct PropConn {
    client: Client,
    conn_id: String,
    told: BTreeSet<String>,
}

async fn prop_conn(gw: &Service, t: &str) -> PropConn {
    let (client, ok) = Client::auth(&gw.ws(), t, &[]).await.expect("auth");
    PropConn {
        client,
        conn_id: ok["conn_id"].as_str().expect("conn_id").to_owned(),
        told: BTreeSet::new(),
    }
}

/// Checks the invariants: the gateway's presence record of every open connection
/// lists exactly the channels its replies said, no closed connection lingers, and
/// Redis's Pub/Sub subscriptions equal the union of local demand.
async fn check_invariants(redis: &Redis, node: &str, conns: &[PropConn], round: usize) {
    let want: BTreeMap<String, Vec<String>> = conns
        .iter()
        .map(|c| (c.conn_id.clone(), c.told.iter().cloned().collect()))
        .collect();
    let union: BTreeSet<String> = conns
        .iter()
        .flat_map(|c| c.told.iter().map(|ch| format!("herald:ch:{ch}")))
        .collect();
    let key = format!("herald:node:{node}:conns");
    let r = redis.conn().await;
    eventually(&format!("the invariants after round {round}"), || {
        let (mut r, key, want, union) = (r.clone(), &key, &want, &union);
        async move {
            let raw: HashMap<String, String> = redis::cmd("HGETALL")
                .arg(key)
                .query_async(&mut r)
                .await
                .unwrap_or_default();
            let got: BTreeMap<String, Vec<String>> = raw
                .iter()
                .filter_map(|(id, json)| {
                    let info: herald_proto::node::ConnInfo = serde_json::from_str(json).ok()?;
                    let mut chans = info.channels;
                    chans.sort();
                    Some((id.clone(), chans))
                })
                .collect();
            let subs: BTreeSet<String> = redis::cmd("PUBSUB")
                .arg("CHANNELS")
                .arg("herald:ch:*")
                .query_async::<Vec<String>>(&mut r)
                .await
                .unwrap_or_default()
                .into_iter()
                .collect();
            // A connection without subscriptions may have no record (that it should
            // have one is checked by `observe::connections_without_channels_are_listed`).
            let stale = got.keys().any(|id| !want.contains_key(id));
            let agree = want
                .iter()
                .all(|(id, chans)| got.get(id).map_or(chans.is_empty(), |g| g == chans));
            if !stale && agree && subs == *union {
                Ok(())
            } else {
                Err(format!(
                    "presence {got:?} vs told {want:?}; PUBSUB {subs:?} vs demand {union:?}"
                ))
            }
        }
    })
    .await;
}

/// Random sequences of client frames (subscribe, unsubscribe, broadcast, garbage,
/// reconnects) from a few connections never break the invariants: every reply agrees
/// with what the connection was told before, the gateway's record of each
/// connection's subscriptions matches what it was told, Redis is subscribed to
/// exactly the channels with local subscribers, and a final broadcast reaches exactly
/// the connections subscribed to its channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_frame_sequences_keep_subscriptions_consistent() {
    let seed = env_u64("HERALD_CHAOS_SEED", 0x5eed_c4a0);
    let rounds = env_u64("HERALD_CHAOS_ROUNDS", 240) as usize;
    eprintln!("property test seed {seed} ({rounds} rounds; HERALD_CHAOS_SEED to replay)");
    let mut rng = StdRng::seed_from_u64(seed);
    let redis = Redis::start().await;
    let gw = gateway(&redis).spawn().await;
    let t = token("prop", &["p:*"], &["p:*"]);
    let mut conns = Vec::new();
    for _ in 0..3 {
        conns.push(prop_conn(&gw, &t).await);
    }
    let node = {
        let (_c, ok) = Client::auth(&gw.ws(), &t, &[]).await.expect("auth");
        ok["node"].as_str().expect("node").to_owned()
    };
    let mut id = 0u64;
    let mut messages: Vec<Value> = Vec::new();
    for round in 1..=rounds {
        let i = rng.random_range(0..conns.len());
        let ch = PROP_CHANNELS[rng.random_range(0..PROP_CHANNELS.len())];
        id += 1;
        let c = &mut conns[i];
        let roll = rng.random_range(0..100);
        let ctx = format!("seed {seed} round {round} conn {i}");
        match roll {
            0..=34 => {
                let r = c
                    .client
                    .request(
                        &json!({"type":"subscribe","channel":ch,"id":id}),
                        id,
                        crate::patience(),
                        &mut messages,
                    )
                    .await
                    .unwrap_or_else(|e| panic!("{ctx}: {e}"));
                assert_eq!(
                    (r["type"].as_str(), r["channel"].as_str()),
                    (Some("subscribed"), Some(ch)),
                    "{ctx}: {r}"
                );
                c.told.insert(ch.to_owned());
            }
            35..=59 => {
                let r = c
                    .client
                    .request(
                        &json!({"type":"unsubscribe","channel":ch,"id":id}),
                        id,
                        crate::patience(),
                        &mut messages,
                    )
                    .await
                    .unwrap_or_else(|e| panic!("{ctx}: {e}"));
                if c.told.remove(ch) {
                    assert_eq!(r["type"], "unsubscribed", "{ctx}: {r}");
                } else {
                    assert_eq!(
                        (r["type"].as_str(), r["code"].as_str()),
                        (Some("error"), Some("not_subscribed")),
                        "{ctx}: {r}"
                    );
                }
            }
            60..=74 => {
                let r = c
                    .client
                    .request(
                        &json!({"type":"broadcast","channel":ch,"message":{"round":round},"id":id}),
                        id,
                        crate::patience(),
                        &mut messages,
                    )
                    .await
                    .unwrap_or_else(|e| panic!("{ctx}: {e}"));
                assert_eq!(r["type"], "ack", "{ctx}: {r}");
            }
            75..=89 => {
                // Garbage: each kind gets its error code and changes nothing.
                let (frame, code, echoes) = match rng.random_range(0..7) {
                    0 => ("not json".to_owned(), "invalid_json", false),
                    1 => ("[1,2]".to_owned(), "invalid_json", false),
                    2 => (
                        json!({"type":"subscribe","id":id}).to_string(),
                        "bad_request",
                        true,
                    ),
                    3 => (
                        json!({"type":"dance","id":id}).to_string(),
                        "unsupported_type",
                        true,
                    ),
                    4 => (
                        json!({"type":"subscribe","channel":"bad name","id":id}).to_string(),
                        "bad_request",
                        true,
                    ),
                    5 => (
                        json!({"type":"subscribe","channel":"q:x","id":id}).to_string(),
                        "forbidden",
                        true,
                    ),
                    _ => (
                        json!({"type":"broadcast","channel":ch,"id":id}).to_string(),
                        "bad_request",
                        true,
                    ),
                };
                c.client
                    .send_text(&frame)
                    .await
                    .unwrap_or_else(|e| panic!("{ctx}: {e}"));
                let r = loop {
                    match c.client.next(crate::patience()).await {
                        Next::Frame(v) if v["type"] == "error" => break v,
                        Next::Frame(v) => messages.push(v),
                        other => panic!("{ctx}: no error for {frame}: {other:?}"),
                    }
                };
                assert_eq!(r["code"], code, "{ctx}: {frame} -> {r}");
                assert_eq!(r.get("id").is_some(), echoes, "{ctx}: {r}");
            }
            90..=94 => {
                let r = c
                    .client
                    .request(
                        &json!({"type":"ping","id":id}),
                        id,
                        crate::patience(),
                        &mut messages,
                    )
                    .await
                    .unwrap_or_else(|e| panic!("{ctx}: {e}"));
                assert_eq!(r["type"], "pong", "{ctx}");
            }
            _ => {
                // Churn: close this connection and open a fresh one in its place.
                let fresh = prop_conn(&gw, &t).await;
                let old = std::mem::replace(c, fresh);
                old.client.close().await;
            }
        }
        if round.is_multiple_of(60) || round == rounds {
            check_invariants(&redis, &node, &conns, round).await;
        }
    }
    // No connection ever got a message from a channel it was never subscribed to...
    for m in messages.iter().filter(|m| m["type"] == "message") {
        assert!(
            PROP_CHANNELS.contains(&m["channel"].as_str().unwrap_or("")),
            "{m}"
        );
    }
    // ...and now a broadcast on each channel reaches exactly its subscribers.
    let (mut marker, _) = Ws::auth(&gw, &t, &[]).await;
    for (k, ch) in PROP_CHANNELS.iter().enumerate() {
        marker
            .send(json!({"type":"broadcast","channel":ch,"message":{"marker":k},"id":k}))
            .await;
        assert_eq!(marker.recv_type("ack").await["id"], k);
    }
    for (i, c) in conns.iter_mut().enumerate() {
        let mut markers = BTreeSet::new();
        loop {
            match c.client.next(Duration::from_millis(500)).await {
                Next::Frame(v) if v["message"]["marker"].is_u64() => {
                    markers.insert(v["channel"].as_str().unwrap_or_default().to_owned());
                }
                Next::Frame(_) => {}
                Next::Idle => break,
                Next::Closed(code) => panic!("conn {i} closed ({code})"),
            }
        }
        assert_eq!(
            markers, c.told,
            "conn {i}: markers received vs subscriptions told"
        );
    }
}
