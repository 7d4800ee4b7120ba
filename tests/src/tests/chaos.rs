//! Faults injected into a running cluster (real redis-server, real binaries): a
//! gateway killed with SIGKILL under load, and stalled consumers under fan-out load.
//! Every wait is bounded; what each fault looks like to a client is written down in
//! docs/reliability.md. Redis outages are in `outage.rs`, random client frames in
//! `frame_sequences.rs`, the soak in `soak.rs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::load_client::{Client, Next};
use crate::{
    Redis, Service, ServiceBuilder, Ws, eventually, eventually_within, http_json, rss_kib, token,
    within,
};

/// A gateway with per-IP limits and the message rate relaxed for load.
pub(super) fn gateway(redis: &Redis) -> ServiceBuilder {
    ServiceBuilder::new("ws-gateway")
        .redis(redis)
        .env("HERALD_MAX_CONNECTIONS_PER_IP", "1000")
        .env("HERALD_CONNECT_RATE_PER_IP", "1000")
        .env("HERALD_RATE_LIMIT_MESSAGES", "1000000")
        .env("HERALD_PUBSUB_PROBE_INTERVAL_MS", "300")
}

// === a gateway killed with SIGKILL ===

/// Every key in Redis that names `node`.
async fn keys_naming(redis: &Redis, node: &str) -> Vec<String> {
    let mut r = redis.conn().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("*{node}*"))
        .query_async(&mut r)
        .await
        .expect("keys");
    keys
}

/// The monitor's status of `node`, if it lists it.
async fn monitor_status(monitor: &Service, node: &str) -> Option<String> {
    let (status, body) = http_json(
        reqwest::Method::GET,
        &format!("{}/api/v1/overview", monitor.http()),
        None,
        None,
    )
    .await;
    if status != 200 {
        return None;
    }
    body["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["id"] == node)
        .and_then(|n| n["status"].as_str().map(str::to_owned))
}

/// A gateway killed with SIGKILL while its clients publish: within a few heartbeat
/// intervals its presence keys expire, every key naming it has a TTL, its per-IP
/// share stops counting (another gateway accepts the IP again), and the monitor
/// reports it down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_gateway_under_load_leaves_no_state_behind() {
    let redis = Redis::start().await;
    let per_ip = |b: ServiceBuilder| b.env("HERALD_MAX_CONNECTIONS_PER_IP", "4");
    let mut victim = per_ip(gateway(&redis)).process().spawn().await;
    let other = per_ip(gateway(&redis)).spawn().await;
    let monitor = ServiceBuilder::new("monitor")
        .redis(&redis)
        .env("HERALD_PROBE_INTERVAL_MS", "500")
        .spawn()
        .await;
    let t = token("k", &["load:*"], &["load:*"]);
    let mut node = String::new();
    let mut loaders = Vec::new();
    let mut counters = Vec::new();
    for i in 0..3 {
        let ch = format!("load:{i}");
        let (mut c, ok) = Client::auth(&victim.ws(), &t, &[&ch]).await.expect("auth");
        node = ok["node"].as_str().expect("node").to_owned();
        let sent = Arc::new(AtomicU64::new(0));
        counters.push(sent.clone());
        // Each client floods its channel (and reads its echo) until the socket dies.
        loaders.push(tokio::spawn(async move {
            loop {
                let n = sent.load(Ordering::Relaxed);
                let frame = json!({"type":"broadcast","channel":ch,"message":{"n":n}});
                if c.send(&frame).await.is_err() {
                    return;
                }
                sent.fetch_add(1, Ordering::Relaxed);
                if let Next::Closed(_) = c.next(Duration::from_millis(5)).await {
                    return;
                }
            }
        }));
    }
    let (_survivor, _) = Ws::auth(&other, &t, &["load:0"]).await;
    // The cap (4 per IP) is full across the two gateways.
    assert_eq!(Ws::try_connect(&other.ws(), &[]).await.err(), Some(429));
    let mut r = redis.conn().await;
    let conns_key = format!("herald:node:{node}:conns");
    let chans_key = format!("herald:node:{node}:channels");
    eventually("the victim's presence to be written", || {
        let mut r = r.clone();
        let key = conns_key.clone();
        async move {
            let n: u64 = redis::cmd("HLEN")
                .arg(&key)
                .query_async(&mut r)
                .await
                .ok()?;
            (n == 3).then_some(())
        }
    })
    .await;
    eventually("every client to be publishing", || async {
        counters
            .iter()
            .all(|sent| sent.load(Ordering::Relaxed) >= 20)
            .then_some(())
    })
    .await;

    victim.kill().await;
    let killed = Instant::now();
    for l in loaders {
        within("a loader to notice the kill", l)
            .await
            .expect("loader");
    }
    // The per-IP share of the dead gateway stops counting: the IP may connect again.
    let readmitted = eventually_within(
        "the dead gateway's per-IP share to expire",
        Duration::from_secs(25),
        || async { Ws::try_connect(&other.ws(), &[]).await.ok() },
    )
    .await;
    drop(readmitted);
    let readmitted_after = killed.elapsed();
    // Presence keys expire (TTL ~15 s, refreshed only by the live gateway).
    eventually_within(
        "the victim's presence keys to expire",
        Duration::from_secs(25),
        || {
            let mut r = r.clone();
            let (a, b) = (conns_key.clone(), chans_key.clone());
            async move {
                let n: u64 = redis::cmd("EXISTS")
                    .arg(&a)
                    .arg(&b)
                    .query_async(&mut r)
                    .await
                    .ok()?;
                (n == 0).then_some(())
            }
        },
    )
    .await;
    let presence_gone_after = killed.elapsed();
    // Whatever still names the node expires by itself (its registry entry is kept
    // for a while on purpose, so the monitor can show it down).
    for key in keys_naming(&redis, &node).await {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut r)
            .await
            .expect("pttl");
        assert!(ttl > 0, "{key} never expires (PTTL {ttl})");
    }
    let ip_hash: HashMap<String, String> = redis::cmd("HGETALL")
        .arg("herald:ip:{127.0.0.1}:conns")
        .query_async(&mut r)
        .await
        .expect("ip hash");
    assert!(
        !ip_hash.contains_key(&node),
        "the dead gateway's IP share was dropped: {ip_hash:?}"
    );
    // The monitor reports it down.
    eventually_within(
        "the monitor to report the victim down",
        Duration::from_secs(15),
        || async {
            (monitor_status(&monitor, &node).await.as_deref() == Some("down")).then_some(())
        },
    )
    .await;
    eprintln!(
        "sigkill: IP share released after {readmitted_after:?}, presence gone after {presence_gone_after:?}, monitor down after {:?}",
        killed.elapsed()
    );
}

// === slow and stalled consumers ===

/// A flood on one channel with stalled readers (never read), slow readers and normal
/// readers: the gateway's memory stays bounded, stalled readers are cut off with 1013
/// `slow_consumer`, normal readers get everything in order, and a slow reader either
/// keeps up or is cut off, never silently skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_consumers_under_fanout_keep_memory_bounded() {
    const MESSAGES: u64 = 800;
    const PAYLOAD: usize = 16 * 1024;
    const RSS_BOUND_KIB: u64 = 300 * 1024;
    let redis = Redis::start().await;
    let gw = gateway(&redis).process().spawn().await;
    let pid = gw.pid().expect("gateway pid");
    let t = token("f", &["flood"], &["flood"]);
    let mut stalled = Vec::new();
    for _ in 0..6 {
        stalled.push(Ws::auth(&gw, &t, &["flood"]).await.0);
    }
    let mut readers = Vec::new();
    for slow in [false, false, false, true, true] {
        let (mut c, _) = Client::auth(&gw.ws(), &t, &["flood"])
            .await
            .expect("reader");
        readers.push(tokio::spawn(async move {
            let mut last = 0u64;
            loop {
                match c.next(Duration::from_secs(10)).await {
                    Next::Frame(v) if v["type"] == "message" => {
                        let off = v["offset"].as_u64().expect("offset");
                        assert_eq!(off, last + 1, "delivered in order without gaps");
                        last = off;
                        if last == MESSAGES {
                            return (slow, last, None);
                        }
                        if slow {
                            // What makes this reader slow.
                            tokio::time::sleep(Duration::from_millis(3)).await;
                        }
                    }
                    Next::Frame(v) if v["type"] == "disconnect" => {
                        assert_eq!(v["reason"], "slow_consumer", "{v}");
                    }
                    Next::Frame(v) => panic!("unexpected {v}"),
                    Next::Idle => panic!("reader starved at offset {last}"),
                    Next::Closed(code) => return (slow, last, Some(code)),
                }
            }
        }));
    }
    let baseline = rss_kib(pid).expect("rss");
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let mut max = 0;
            while sampling.load(Ordering::Relaxed) {
                max = max.max(rss_kib(pid).unwrap_or(0));
                // The sampling period of the memory measurement.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            max
        })
    };
    let (mut publisher, _) = Ws::auth(&gw, &t, &[]).await;
    let pad = "x".repeat(PAYLOAD);
    for i in 0..MESSAGES {
        publisher
            .send(json!({"type":"broadcast","channel":"flood","message":{"i":i,"pad":pad}}))
            .await;
    }
    let mut outcomes = Vec::new();
    for r in readers {
        outcomes.push(within("a reader", r).await.expect("reader"));
    }
    for mut s in stalled {
        let (closed, frames) = s.closed().await;
        assert_eq!(closed.code, 1013, "a stalled consumer is cut off");
        let d = frames
            .iter()
            .find(|f| f["type"] == "disconnect")
            .expect("disconnect frame");
        assert_eq!(d["reason"], "slow_consumer");
    }
    sampling.store(false, Ordering::Relaxed);
    let max = sampler.await.expect("sampler");
    for (slow, last, closed) in &outcomes {
        match (slow, closed) {
            (false, _) => assert_eq!(
                (*last, *closed),
                (MESSAGES, None),
                "a normal reader gets everything"
            ),
            (true, None) => assert_eq!(*last, MESSAGES),
            (true, Some(code)) => {
                assert_eq!(*code, 1013, "a slow reader is only ever cut off as slow")
            }
        }
    }
    eprintln!(
        "flood: {MESSAGES} x {PAYLOAD} B to 11 readers; RSS {baseline} KiB -> max {max} KiB; slow readers: {:?}",
        outcomes.iter().filter(|o| o.0).collect::<Vec<_>>()
    );
    assert!(max < RSS_BOUND_KIB, "gateway RSS peaked at {max} KiB");
}
