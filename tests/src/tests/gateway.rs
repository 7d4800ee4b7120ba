//! ws-gateway end to end: the client protocol, fan-out across gateways, recovery,
//! slow consumers, Redis faults, batching and shutdown, against real processes.
//! Authentication is in `gateway_auth.rs`, handshake refusals in `handshake.rs`,
//! refused requests in `refusals.rs`; the helpers here serve all of them.

use serde_json::{Value, json};

use crate::{
    Backend, Redis, Service, ServiceBuilder, Store, Ws, eventually, token, token_with, within,
};

/// A gateway with limits relaxed so tests can open many connections quickly.
pub(super) fn gateway(store: &impl Store) -> ServiceBuilder {
    ServiceBuilder::new("ws-gateway")
        .on(store)
        .env("HERALD_MAX_CONNECTIONS_PER_IP", "1000")
        .env("HERALD_CONNECT_RATE_PER_IP", "1000")
        .env("HERALD_PUBSUB_PROBE_INTERVAL_MS", "300")
}

pub(super) fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

pub(super) async fn subscribe(ws: &mut Ws, channel: &str, id: u64) -> Value {
    ws.send(json!({"type":"subscribe","channel":channel,"id":id}))
        .await;
    let v = ws.recv_type("subscribed").await;
    assert_eq!(v["id"], id);
    v
}

pub(super) async fn broadcast(ws: &mut Ws, channel: &str, message: Value, id: u64) -> Value {
    ws.send(json!({"type":"broadcast","channel":channel,"message":message,"id":id}))
        .await;
    loop {
        let v = ws.recv().await;
        if v["type"] == "ack" || v["type"] == "error" {
            return v;
        }
    }
}

/// The value of an unlabelled metric in a service's `/metrics`.
pub(super) async fn metric(svc: &Service, name: &str) -> f64 {
    let text = within("metrics", async {
        reqwest::get(format!("{}/metrics", svc.http()))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body")
    })
    .await;
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.parse().ok())?
        })
        .unwrap_or(0.0)
}

pub(super) async fn cross_gateway_fanout_and_message_shape(backend: Backend) {
    let gw1 = gateway(&backend).spawn().await;
    let gw2 = gateway(&backend).spawn().await;
    let t = token("alice", &["news"], &["news"]);
    let (mut a, ok) = Ws::auth(&gw1, &t, &["news"]).await;
    assert_eq!(ok["user_id"], "alice");
    assert_eq!(ok["channels"], json!(["news"]));
    assert!(ok["conn_id"].is_string() && ok["node"].is_string());
    assert_eq!(ok["heartbeat_interval_ms"], 25000);
    let (mut b, _) = Ws::auth(&gw2, &token("bob", &["news"], &[]), &["news"]).await;

    let ack = broadcast(&mut a, "news", json!({"text":"hi","n":[1,2]}), 9).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["id"], 9);
    assert_eq!(ack["offset"], 1);
    for ws in [&mut a, &mut b] {
        let m = ws.recv_type("message").await;
        assert_eq!(m["channel"], "news");
        assert_eq!(m["message"], json!({"text":"hi","n":[1,2]}));
        assert_eq!(m["from_user"], "alice");
        assert_eq!(m["offset"], 1);
        assert_eq!(m["epoch"], ack["epoch"]);
        let ts = m["timestamp"].as_str().expect("timestamp");
        assert!(ts.ends_with('Z') && ts.len() == 24, "{ts}");
    }
    // `null` is a message too.
    broadcast(&mut a, "news", Value::Null, 10).await;
    assert_eq!(b.recv_type("message").await["message"], Value::Null);
    a.recv_type("message").await;
}

async fn python_design_client_works_unchanged(backend: Backend) {
    let gw = gateway(&backend).spawn().await;
    let mut ws = Ws::connect(&format!("ws://{}/", gw.addr)).await;
    // The original client: first frame without `type`, then subscribe/broadcast.
    ws.send(json!({"token": token("py", &["chat:*"], &["chat:*"]), "channels": ["chat:lobby"]}))
        .await;
    let ok = ws.recv_type("auth_success").await;
    assert_eq!(ok["channels"], json!(["chat:lobby"]));
    ws.send(json!({"type":"subscribe","channel":"chat:room2"}))
        .await;
    assert_eq!(ws.recv_type("subscribed").await["channel"], "chat:room2");
    ws.send(json!({"type":"broadcast","channel":"chat:lobby","message":{"text":"hello"}}))
        .await;
    let m = ws.recv_type("message").await;
    assert_eq!(m["message"]["text"], "hello");
    ws.send(json!({"type":"unsubscribe","channel":"chat:room2"}))
        .await;
    assert_eq!(ws.recv_type("unsubscribed").await["channel"], "chat:room2");
    // The legacy `user_id` claim is a subject too.
    let legacy =
        token_with(json!({"user_id":"old","exp":now()+60,"iss":"herald-auth","aud":"herald"}));
    let (_ws2, ok) = Ws::auth(&gw, &legacy, &["user:old"]).await;
    assert_eq!(ok["user_id"], "old");
    assert_eq!(ok["channels"], json!(["user:old"]));
}

async fn slow_consumer_is_cut_off_and_others_keep_up(backend: Backend) {
    let gw = gateway(&backend)
        .env("HERALD_OUTBOUND_QUEUE_FRAMES", "32")
        .env("HERALD_RATE_LIMIT_MESSAGES", "100000")
        .spawn()
        .await;
    let t = token("s", &["flood"], &["flood"]);
    let (mut slow, _) = Ws::auth(&gw, &t, &["flood"]).await;
    let (mut fast, _) = Ws::auth(&gw, &t, &["flood"]).await;
    let (mut publisher, _) = Ws::auth(&gw, &t, &[]).await;
    let payload = "x".repeat(32 * 1024);
    let total = 600u64;
    let reader = tokio::spawn(async move {
        let mut last = 0;
        while last < total {
            let m = fast.recv_type("message").await;
            let off = m["offset"].as_u64().expect("offset");
            assert_eq!(
                off,
                last + 1,
                "the fast consumer sees every message in order"
            );
            last = off;
        }
        last
    });
    for i in 0..total {
        publisher
            .send(json!({"type":"broadcast","channel":"flood","message":{"i":i,"pad":payload}}))
            .await;
    }
    assert_eq!(
        within("the fast consumer", reader).await.expect("reader"),
        total
    );
    let (closed, frames) = slow.closed().await;
    assert_eq!(closed.code, 1013);
    let d = frames
        .iter()
        .find(|f| f["type"] == "disconnect")
        .expect("disconnect frame");
    assert_eq!(d["reason"], "slow_consumer");
    assert!(metric(&gw, "herald_slow_consumer_disconnects_total").await >= 1.0);
}

pub(super) async fn recovery_with_and_without_a_gap(backend: Backend) {
    let gw = gateway(&backend)
        .env("HERALD_HISTORY_SIZE", "50")
        .env("HERALD_RATE_LIMIT_MESSAGES", "100000")
        .spawn()
        .await;
    let t = token("r", &["news"], &["news"]);
    let (mut a, _) = Ws::auth(&gw, &t, &[]).await;
    let first = subscribe(&mut a, "news", 1).await;
    assert_eq!(first["offset"], 0);
    let epoch = first["epoch"].as_str().expect("epoch").to_owned();
    for i in 1..=5 {
        broadcast(&mut a, "news", json!({"n": i}), 100 + i).await;
        a.recv_type("message").await;
    }
    // A client that saw offset 2 gets 3, 4, 5 and then `recovered:true`.
    let (mut b, _) = Ws::auth(&gw, &t, &[]).await;
    b.send(json!({"type":"subscribe","channel":"news","id":2,"since":{"offset":2,"epoch":epoch}}))
        .await;
    for want in 3..=5 {
        let m = b.recv_type("message").await;
        assert_eq!(
            (m["offset"].as_u64(), m["message"]["n"].as_u64()),
            (Some(want), Some(want))
        );
    }
    let s = b.recv_type("subscribed").await;
    assert_eq!(
        (s["offset"].as_u64(), s["recovered"].as_bool()),
        (Some(5), Some(true))
    );
    // Live delivery continues without duplicates.
    broadcast(&mut a, "news", json!({"n": 6}), 200).await;
    assert_eq!(b.recv_type("message").await["offset"], 6);
    // Nothing missed.
    let (mut c, _) = Ws::auth(&gw, &t, &[]).await;
    c.send(json!({"type":"subscribe","channel":"news","since":{"offset":6,"epoch":epoch}}))
        .await;
    let s = c.recv_type("subscribed").await;
    assert_eq!(
        (s["offset"].as_u64(), s["recovered"].as_bool()),
        (Some(6), Some(true))
    );
    // An epoch we no longer have: nothing replayed, `recovered:false`.
    let (mut d, _) = Ws::auth(&gw, &t, &[]).await;
    d.send(json!({"type":"subscribe","channel":"news","since":{"offset":1,"epoch":"gone"}}))
        .await;
    let s = d.recv_type("subscribed").await;
    assert_eq!(
        (s["offset"].as_u64(), s["recovered"].as_bool()),
        (Some(6), Some(false))
    );
    // A gap older than history: all or nothing, so nothing.
    for i in 0..400 {
        a.send(json!({"type":"broadcast","channel":"news","message":i}))
            .await;
    }
    for _ in 0..400 {
        a.recv_type("message").await;
    }
    let (mut e, _) = Ws::auth(&gw, &t, &[]).await;
    e.send(json!({"type":"subscribe","channel":"news","since":{"offset":1,"epoch":epoch}}))
        .await;
    let s = e.recv_type("subscribed").await;
    assert_eq!(
        (s["offset"].as_u64(), s["recovered"].as_bool()),
        (Some(406), Some(false))
    );
}

/// Redis loses writes subscribers had received (a replica promoted before it got
/// them, an append-only file missing its last second): the channel is behind what
/// the gateway delivered. Under the same epoch the next messages would reuse offsets
/// already seen and be dropped as duplicates; the gateway starts the channel over in a
/// new epoch instead, so they arrive, and recovery across the loss is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_that_went_back_starts_a_new_epoch() {
    let redis = Redis::start().await;
    let gw = gateway(&redis).spawn().await;
    let t = token("wb", &["news"], &["news"]);
    let (mut sub, _) = Ws::auth(&gw, &t, &["news"]).await;
    let (mut publisher, _) = Ws::auth(&gw, &t, &[]).await;
    let mut epoch = Value::Null;
    for i in 1..=5u64 {
        let ack = broadcast(&mut publisher, "news", json!(i), i).await;
        assert_eq!(ack["offset"], i, "{ack}");
        epoch = ack["epoch"].clone();
        assert_eq!(sub.recv_type("message").await["offset"], i);
    }
    // Redis "forgets" offsets 4 and 5, as a replica that had only 3 would.
    let mut c = redis.conn().await;
    let _: () = redis::pipe()
        .cmd("HSET")
        .arg("herald:meta:{news}")
        .arg("offset")
        .arg(3)
        .ignore()
        .cmd("XDEL")
        .arg("herald:hist:{news}")
        .arg("4-0")
        .arg("5-0")
        .ignore()
        .query_async(&mut c)
        .await
        .expect("roll the channel back");
    // The gateway notices when it catches up, e.g. after its subscription connection
    // was lost (as a failover loses it).
    let _: () = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut c)
        .await
        .expect("CLIENT KILL");
    eventually("the channel started over", || async {
        let mut c = redis.conn().await;
        let exists: u64 = redis::cmd("EXISTS")
            .arg("herald:meta:{news}")
            .query_async(&mut c)
            .await
            .ok()?;
        (exists == 0).then_some(())
    })
    .await;
    let ack = broadcast(&mut publisher, "news", json!("after"), 6).await;
    assert_eq!(ack["offset"], 1, "{ack}");
    assert_ne!(ack["epoch"], epoch, "{ack}");
    let m = sub.recv_type("message").await;
    assert_eq!(
        (&m["message"], &m["offset"], &m["epoch"]),
        (&json!("after"), &json!(1), &ack["epoch"])
    );
    // Recovery across the loss is all or nothing: nothing, and said so.
    let (mut late, _) = Ws::auth(&gw, &t, &[]).await;
    late.send(json!({"type":"subscribe","channel":"news","since":{"offset":5,"epoch":epoch}}))
        .await;
    let s = late.recv_type("subscribed").await;
    assert_eq!(s["recovered"], false, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_mid_stream_loses_nothing_after_it() {
    let mut redis = Redis::start().await;
    let gw = gateway(&redis).spawn().await;
    let t = token("rr", &["news"], &["news"]);
    let (mut sub, _) = Ws::auth(&gw, &t, &["news"]).await;
    let (mut publisher, _) = Ws::auth(&gw, &t, &[]).await;
    broadcast(&mut publisher, "news", json!("before"), 1).await;
    assert_eq!(sub.recv_type("message").await["message"], "before");

    redis.kill().await;
    // While Redis is down: the connection stays open and publishes say `unavailable`.
    let e = broadcast(&mut publisher, "news", json!("during"), 2).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("unavailable"))
    );
    publisher.send(json!({"type":"ping","id":3})).await;
    assert_eq!(publisher.recv_type("pong").await["id"], 3);

    redis.restart().await;
    // Publish right away, before the gateway has necessarily resubscribed.
    let publisher = tokio::sync::Mutex::new(publisher);
    let mut acks = Vec::new();
    for i in 0..5 {
        let ack = eventually(&format!("publish {i} acknowledged"), || async {
            let mut publisher = publisher.lock().await;
            let v = broadcast(&mut publisher, "news", json!({"after": i}), 10 + i).await;
            if v["type"] == "ack" {
                Ok(v)
            } else {
                Err(format!("the last reply: {v}"))
            }
        })
        .await;
        acks.push(ack);
    }
    let epoch = acks[0]["epoch"].clone();
    // The subscriber gets every one of them, in order, from the new epoch.
    for (i, ack) in acks.iter().enumerate() {
        let m = sub.recv_type("message").await;
        assert_eq!(m["message"]["after"], i as u64, "{m}");
        assert_eq!(m["offset"], ack["offset"]);
        assert_eq!(m["epoch"], epoch);
    }
    // And a client recovering from the new epoch's start misses nothing.
    let (mut late, _) = Ws::auth(&gw, &t, &[]).await;
    late.send(json!({"type":"subscribe","channel":"news","since":{"offset":0,"epoch":epoch}}))
        .await;
    for i in 0..5u64 {
        assert_eq!(late.recv_type("message").await["message"]["after"], i);
    }
    assert_eq!(late.recv_type("subscribed").await["recovered"], true);
    assert!(metric(&gw, "herald_pubsub_reconnects_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_says_goodbye_and_deregisters() {
    let redis = Redis::start().await;
    let mut gw = gateway(&redis).process().spawn().await;
    let (mut ws, ok) = Ws::auth(&gw, &token("g", &[], &[]), &[]).await;
    let node = ok["node"].as_str().expect("node").to_owned();
    let mut r = redis.conn().await;
    eventually("the node to beat", || {
        let (mut r, node) = (r.clone(), node.clone());
        async move {
            let score: Option<u64> = redis::cmd("ZSCORE")
                .arg("herald:nodes")
                .arg(node)
                .query_async(&mut r)
                .await
                .ok()?;
            score
        }
    })
    .await;
    let (code, (closed, frames)) = tokio::join!(gw.terminate(), ws.closed());
    assert_eq!(code, Some(0));
    assert_eq!((closed.code, closed.reason.as_str()), (1001, "going away"));
    let d = frames.last().expect("disconnect");
    assert_eq!(
        (d["type"].as_str(), d["reconnect"].as_bool()),
        (Some("disconnect"), Some(true))
    );
    let score: Option<u64> = redis::cmd("ZSCORE")
        .arg("herald:nodes")
        .arg(&node)
        .query_async(&mut r)
        .await
        .expect("zscore");
    assert_eq!(score, None, "deregistered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_fails_fast_with_one_line() {
    let (code, _, err) = crate::run_bin(
        "ws-gateway",
        &[],
        &[("HERALD_JWT_SECRET", ""), ("HERALD_DEV", "0")],
    )
    .await;
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("HERALD_JWT_SECRET"), "{err}");
    let (code, _, err) = crate::run_bin(
        "ws-gateway",
        &["--redis-url", "redis://127.0.0.1:1"],
        &[("HERALD_JWT_SECRET", crate::TEST_SECRET)],
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("unreachable"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let (code, _, err) = crate::run_bin(
        "ws-gateway",
        &["--redis-url", "http://x"],
        &[("HERALD_JWT_SECRET", crate::TEST_SECRET)],
    )
    .await;
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("HERALD_REDIS_URL"), "{err}");
}

/// A Pub/Sub connection that stays up but delivers nothing is detected by the
/// gateway's end-to-end probe and replaced, and what was published meanwhile is
/// delivered from history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wedged_pubsub_is_detected_and_nothing_is_lost() {
    wedged_while_publishing_to("news", "news").await;
}

/// The same before the channel's first message: what the gateway knew of the channel
/// when it subscribed is where it catches up from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_wedged_before_its_first_message_loses_nothing() {
    wedged_while_publishing_to("busy", "quiet").await;
}

/// A client subscribes to `live` and `channel`; once a message on `live` proved the
/// gateway's Pub/Sub connection works, the connection is wedged and three messages go
/// to `channel`: the client gets all three, in order.
async fn wedged_while_publishing_to(live: &str, channel: &str) {
    let redis = Redis::start().await;
    let proxy = crate::WedgeProxy::start(&redis).await;
    let gw = gateway(&redis)
        .env("HERALD_REDIS_URL", &proxy.url())
        .spawn()
        .await;
    let names: Vec<&str> = if live == channel {
        vec![live]
    } else {
        vec![live, channel]
    };
    let t = token("wedge", &names, &names);
    let (mut sub, _) = Ws::auth(&gw, &t, &names).await;
    let (mut publisher, _) = Ws::auth(&gw, &t, &[]).await;
    broadcast(&mut publisher, live, json!(0), 1).await;
    assert_eq!(sub.recv_type("message").await["message"], 0);
    assert!(proxy.wedge_subscribers() >= 1);
    for i in 1..=3 {
        let ack = broadcast(&mut publisher, channel, json!(i), 10 + i).await;
        assert_eq!(ack["type"], "ack");
    }
    for i in 1..=3 {
        let m = sub.recv_type("message").await;
        assert_eq!(
            (&m["channel"], &m["message"]),
            (&json!(channel), &json!(i)),
            "{m}"
        );
    }
    assert!(metric(&gw, "herald_pubsub_reconnects_total").await >= 1.0);
}

async fn batching_clients_get_batch_messages(backend: Backend) {
    let gw = gateway(&backend)
        .env("HERALD_BATCH_WINDOW_MS", "50")
        .env("HERALD_RATE_LIMIT_MESSAGES", "100000")
        .spawn()
        .await;
    let t = token("b", &["news"], &["news"]);
    let mut batcher = Ws::connect(&gw.ws()).await;
    batcher
        .send(json!({"type":"auth","token":t,"channels":["news"],"batch":true}))
        .await;
    batcher.recv_type("auth_success").await;
    let (mut publisher, _) = Ws::auth(&gw, &t, &[]).await;
    for i in 0..10 {
        publisher
            .send(json!({"type":"broadcast","channel":"news","message":i}))
            .await;
    }
    let mut seen = Vec::new();
    let mut batches = 0;
    while seen.len() < 10 {
        let v = batcher.recv().await;
        match v["type"].as_str() {
            Some("batch_messages") => {
                batches += 1;
                let msgs = v["messages"].as_array().expect("messages");
                assert_eq!(v["count"].as_u64(), Some(msgs.len() as u64));
                assert!(msgs.len() <= 100);
                seen.extend(msgs.iter().map(|m| m["message"].as_u64().expect("n")));
            }
            Some("message") => seen.push(v["message"].as_u64().expect("n")),
            other => panic!("unexpected frame {other:?}: {v}"),
        }
    }
    assert_eq!(seen, (0..10).collect::<Vec<_>>());
    assert!(
        batches >= 1,
        "ten quick messages within a 50 ms window come batched"
    );
}

crate::both_engines!(
    cross_gateway_fanout_and_message_shape,
    python_design_client_works_unchanged,
    slow_consumer_is_cut_off_and_others_keep_up,
    recovery_with_and_without_a_gap,
    batching_clients_get_batch_messages,
);
