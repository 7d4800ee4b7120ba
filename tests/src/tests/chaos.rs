//! Faults injected into a running cluster (real redis-server, real binaries): Redis
//! down for seconds, a gateway killed with SIGKILL under load, stalled consumers under
//! fan-out load, random client frame sequences checked against the gateway's state,
//! and (ignored; `just soak`) minutes of mixed load with churn and Redis restarts.
//! Every wait is bounded; what each fault looks like to a client is written down in
//! docs/reliability.md.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{API_KEY, Redis, Service, ServiceBuilder, Ws, eventually, http_json, token, within};

/// How long any reply may take while Redis is down: "promptly", never a hang.
const PROMPT: Duration = Duration::from_secs(3);

/// A gateway with per-IP limits and the message rate relaxed for load.
fn gateway(redis: &Redis) -> ServiceBuilder {
    ServiceBuilder::new("ws-gateway")
        .redis(redis)
        .env("HERALD_MAX_CONNECTIONS_PER_IP", "1000")
        .env("HERALD_CONNECT_RATE_PER_IP", "1000")
        .env("HERALD_RATE_LIMIT_MESSAGES", "1000000")
        .env("HERALD_PUBSUB_PROBE_INTERVAL_MS", "300")
}

/// Polls `check` every 100 ms for at most `limit` (for waits longer than the
/// harness's patience, such as TTLs running out).
async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The resident set of a process, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// === a client that reports closes instead of panicking ===

/// What [`Client::next`] saw.
#[derive(Debug)]
enum Next {
    Frame(Value),
    /// Nothing within the wait.
    Idle,
    /// The connection ended (close code, or 1006 for a dropped socket).
    Closed(u16),
}

/// A WebSocket client for long-running tasks: every call is bounded and a closed
/// connection is a value, not a panic.
struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    async fn connect(url: &str) -> Result<Self, String> {
        match tokio::time::timeout(PROMPT, tokio_tungstenite::connect_async(url)).await {
            Ok(Ok((ws, _))) => Ok(Self { ws }),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("handshake timed out".to_owned()),
        }
    }

    /// Connects and authenticates; returns the client and `auth_success`.
    async fn auth(url: &str, token: &str, channels: &[&str]) -> Result<(Self, Value), String> {
        let mut c = Self::connect(url).await?;
        c.send(&json!({"type":"auth","token":token,"channels":channels}))
            .await?;
        match c.next(PROMPT).await {
            Next::Frame(v) if v["type"] == "auth_success" => Ok((c, v)),
            other => Err(format!("no auth_success: {other:?}")),
        }
    }

    async fn send(&mut self, v: &Value) -> Result<(), String> {
        self.send_text(&v.to_string()).await
    }

    async fn send_text(&mut self, text: &str) -> Result<(), String> {
        match tokio::time::timeout(PROMPT, self.ws.send(Message::text(text))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("send timed out".to_owned()),
        }
    }

    /// The next JSON frame (heartbeats skipped) within `wait`.
    async fn next(&mut self, wait: Duration) -> Next {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Next::Idle,
                Ok(None | Some(Err(_))) => return Next::Closed(1006),
                Ok(Some(Ok(Message::Close(c)))) => {
                    return Next::Closed(c.map_or(1005, |c| u16::from(c.code)));
                }
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                    if v["type"] != "heartbeat" {
                        return Next::Frame(v);
                    }
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Sends `frame` (which carries `"id": id`) and waits at most `wait` for the reply
    /// with that id; other frames (messages) go to `other`.
    async fn request(
        &mut self,
        frame: &Value,
        id: u64,
        wait: Duration,
        other: &mut Vec<Value>,
    ) -> Result<Value, String> {
        self.send(frame).await?;
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Next::Frame(v) if v["id"] == id => return Ok(v),
                Next::Frame(v) => other.push(v),
                Next::Idle => return Err(format!("no reply to {frame} within {wait:?}")),
                Next::Closed(code) => return Err(format!("closed ({code}) awaiting {frame}")),
            }
        }
    }

    async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.ws.close(None)).await;
    }
}

/// The `(epoch, offset)` of a `message` or `ack` frame.
fn position(v: &Value) -> Option<(String, u64)> {
    Some((v["epoch"].as_str()?.to_owned(), v["offset"].as_u64()?))
}

// === Redis down for ~10 s ===

/// One publish attempt of the background publisher.
#[derive(Debug)]
struct Attempt {
    at: Instant,
    latency: Duration,
    ack: Option<(String, u64)>,
    code: Option<String>,
}

/// Redis is killed for ~10 s while clients publish and subscribe: publishes get a
/// prompt `unavailable` (HTTP publishes 503), connections stay open and answer pings,
/// and once Redis is back everything acknowledged after the restart is delivered live
/// and recoverable by offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_keeps_clients_and_loses_nothing_acknowledged() {
    let outage = Duration::from_millis(env_u64("HERALD_CHAOS_OUTAGE_MS", 10_000));
    let mut redis = Redis::start().await;
    let gw = gateway(&redis).spawn().await;
    let bc = ServiceBuilder::new("broadcaster")
        .redis(&redis)
        .spawn()
        .await;
    let t = token("o", &["news", "other"], &["news"]);
    let (mut sub, _) = Client::auth(&gw.ws(), &t, &["news"]).await.expect("sub");
    let (mut publisher, _) = Client::auth(&gw.ws(), &t, &[]).await.expect("publisher");
    let (mut probe, _) = Ws::auth(&gw, &t, &[]).await;
    let stop = Arc::new(AtomicBool::new(false));

    // The subscriber records every message until told to stop.
    let sub_stop = stop.clone();
    let subscriber = tokio::spawn(async move {
        let mut got: Vec<Value> = Vec::new();
        let mut stopping_since: Option<Instant> = None;
        loop {
            match sub.next(Duration::from_millis(200)).await {
                Next::Frame(v) if v["type"] == "message" => got.push(v),
                Next::Frame(_) => {}
                Next::Idle => {
                    if sub_stop.load(Ordering::Relaxed) {
                        // Quiet for a while after the stop: nothing more is coming.
                        let since = *stopping_since.get_or_insert_with(Instant::now);
                        if since.elapsed() > Duration::from_secs(1) {
                            break;
                        }
                    }
                }
                Next::Closed(code) => panic!("the subscriber was disconnected ({code})"),
            }
        }
        (sub, got)
    });
    // The publisher broadcasts every 100 ms, one request at a time, and pings.
    let pub_stop = stop.clone();
    let publishing = tokio::spawn(async move {
        let mut attempts = Vec::new();
        let mut other = Vec::new();
        let mut id = 0u64;
        while !pub_stop.load(Ordering::Relaxed) {
            id += 1;
            let frame = json!({"type":"broadcast","channel":"news","message":{"i":id},"id":id});
            let started = Instant::now();
            let reply = publisher
                .request(&frame, id, PROMPT, &mut other)
                .await
                .unwrap_or_else(|e| panic!("publish {id}: {e}"));
            let latency = started.elapsed();
            attempts.push(Attempt {
                at: started,
                latency,
                ack: (reply["type"] == "ack").then(|| position(&reply)).flatten(),
                code: reply["code"].as_str().map(str::to_owned),
            });
            if id.is_multiple_of(5) {
                id += 1;
                let pong = publisher
                    .request(&json!({"type":"ping","id":id}), id, PROMPT, &mut other)
                    .await
                    .unwrap_or_else(|e| panic!("ping {id}: {e}"));
                assert_eq!(pong["type"], "pong");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        attempts
    });

    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.kill().await;
    let killed = Instant::now();
    // During the outage: HTTP publishes get 503 promptly, a new subscription gets
    // `unavailable`, the gateway says it is not ready, connections stay open.
    let mut http_503 = 0;
    let mut subscribe_checked = false;
    while killed.elapsed() < outage {
        let started = Instant::now();
        let (status, body) = http_json(
            reqwest::Method::POST,
            &format!("{}/v1/publish", bc.http()),
            Some(API_KEY),
            Some(json!({"channel":"news","message":"during"})),
        )
        .await;
        assert!(
            started.elapsed() < PROMPT,
            "HTTP publish took {:?}",
            started.elapsed()
        );
        assert_eq!(status, 503, "{body}");
        http_503 += 1;
        if !subscribe_checked {
            probe
                .send(json!({"type":"subscribe","channel":"other","id":"s"}))
                .await;
            let e = tokio::time::timeout(PROMPT + Duration::from_secs(2), probe.recv())
                .await
                .expect("a subscribe during the outage is answered");
            assert_eq!(
                (e["type"].as_str(), e["code"].as_str()),
                (Some("error"), Some("unavailable")),
                "{e}"
            );
            subscribe_checked = true;
            let ready = reqwest::get(format!("{}/readyz", gw.http()))
                .await
                .expect("readyz")
                .status();
            assert!(!ready.is_success(), "a gateway without Redis is not ready");
        }
        probe.send(json!({"type":"ping","id":"p"})).await;
        assert_eq!(probe.recv_type("pong").await["id"], "p");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The outage ends when the restart begins: while `restart` waits for Redis to
    // answer, the gateway may already reconnect and acknowledge publishes.
    let restarting = Instant::now();
    redis.restart().await;

    // After: publishes are acknowledged again, the HTTP API answers 200, and the
    // gateway is ready again.
    let mut http_acks = Vec::new();
    for i in 0..3 {
        let ack = eventually("the HTTP publish API to recover", || async {
            let (status, body) = http_json(
                reqwest::Method::POST,
                &format!("{}/v1/publish", bc.http()),
                Some(API_KEY),
                Some(json!({"channel":"news","message":{"http":i}})),
            )
            .await;
            (status == 200).then_some(body)
        })
        .await;
        http_acks.push((
            ack["epoch"].as_str().expect("epoch").to_owned(),
            ack["offset"].as_u64().expect("offset"),
        ));
    }
    eventually("/readyz after the outage", || async {
        let r = reqwest::get(format!("{}/readyz", gw.http())).await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let attempts = within("the publisher", publishing)
        .await
        .expect("publisher");
    let (mut sub, got) = within("the subscriber", subscriber)
        .await
        .expect("subscriber");

    // Every reply was prompt, and the only error is the temporary one.
    let slowest = attempts.iter().map(|a| a.latency).max().unwrap_or_default();
    assert!(slowest < PROMPT, "slowest reply {slowest:?}");
    eprintln!(
        "outage: {} publish attempts, slowest reply {slowest:?}, {http_503} HTTP 503s",
        attempts.len()
    );
    for a in &attempts {
        if let Some(code) = &a.code {
            assert_eq!(code, "unavailable", "{a:?}");
        }
    }
    let during: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| a.at > killed + Duration::from_millis(200) && a.at + a.latency < restarting)
        .collect();
    assert!(
        during.len() >= 5,
        "the publisher kept trying during the outage: {during:?}"
    );
    assert!(
        during
            .iter()
            .all(|a| a.code.as_deref() == Some("unavailable")),
        "{during:?}"
    );
    assert!(http_503 >= 3);

    // Acknowledged after the restart (the new epoch): all delivered live, in order.
    let new_epoch = http_acks[0].0.clone();
    let seen: Vec<(String, u64)> = got.iter().filter_map(position).collect();
    let seen_set: BTreeSet<(String, u64)> = seen.iter().cloned().collect();
    let mut acked_after: BTreeSet<(String, u64)> = http_acks.iter().cloned().collect();
    acked_after.extend(
        attempts
            .iter()
            .filter_map(|a| a.ack.clone())
            .filter(|(e, _)| *e == new_epoch),
    );
    assert!(acked_after.len() > 5, "{acked_after:?}");
    let missing: Vec<_> = acked_after.difference(&seen_set).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not delivered: {missing:?}"
    );
    let new_offsets: Vec<u64> = seen
        .iter()
        .filter(|(e, _)| *e == new_epoch)
        .map(|(_, o)| *o)
        .collect();
    assert!(
        new_offsets.windows(2).all(|w| w[1] == w[0] + 1),
        "in order, no gaps: {new_offsets:?}"
    );
    // Acknowledged well before the kill: delivered too (Redis restarts empty, so
    // what was in flight at the kill is all a restart can take).
    for a in attempts
        .iter()
        .filter(|a| a.at + a.latency + Duration::from_millis(300) < killed)
    {
        let ack = a.ack.clone().expect("acknowledged before the outage");
        assert!(
            seen_set.contains(&ack),
            "acknowledged before the kill, never delivered: {a:?}"
        );
    }
    // And a client recovering from the new epoch's start gets every one of them.
    let (mut late, _) = Ws::auth(&gw, &t, &[]).await;
    late.send(json!({"type":"subscribe","channel":"news","id":"r","since":{"offset":0,"epoch":new_epoch}}))
        .await;
    let mut replayed = BTreeSet::new();
    let done = loop {
        let v = late.recv().await;
        match v["type"].as_str() {
            Some("message") => {
                replayed.insert(position(&v).expect("position"));
            }
            Some("subscribed") => break v,
            _ => panic!("unexpected {v}"),
        }
    };
    assert_eq!(done["recovered"], true, "{done}");
    let missing: Vec<_> = acked_after.difference(&replayed).collect();
    assert!(missing.is_empty(), "not recoverable by offset: {missing:?}");
    // The subscriber's connection survived the whole outage.
    let mut other = Vec::new();
    let pong = sub
        .request(&json!({"type":"ping","id":1}), 1, PROMPT, &mut other)
        .await
        .expect("the subscriber still answers");
    assert_eq!(pong["type"], "pong");
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
    let mut victim = per_ip(gateway(&redis)).spawn().await;
    let other = per_ip(gateway(&redis)).spawn().await;
    let monitor = ServiceBuilder::new("monitor")
        .redis(&redis)
        .env("HERALD_PROBE_INTERVAL_MS", "500")
        .spawn()
        .await;
    let t = token("k", &["load:*"], &["load:*"]);
    let mut node = String::new();
    let mut loaders = Vec::new();
    for i in 0..3 {
        let ch = format!("load:{i}");
        let (mut c, ok) = Client::auth(&victim.ws(), &t, &[&ch]).await.expect("auth");
        node = ok["node"].as_str().expect("node").to_owned();
        // Each client floods its channel (and reads its echo) until the socket dies.
        loaders.push(tokio::spawn(async move {
            let mut sent = 0u64;
            loop {
                let frame = json!({"type":"broadcast","channel":ch,"message":{"n":sent}});
                if c.send(&frame).await.is_err() {
                    return sent;
                }
                sent += 1;
                if let Next::Closed(_) = c.next(Duration::from_millis(5)).await {
                    return sent;
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
    tokio::time::sleep(Duration::from_millis(500)).await;

    victim.kill().await;
    let killed = Instant::now();
    for l in loaders {
        let sent = within("a loader to notice the kill", l)
            .await
            .expect("loader");
        assert!(sent > 0, "the clients were publishing");
    }
    // The per-IP share of the dead gateway stops counting: the IP may connect again.
    let readmitted = wait_for(
        "the dead gateway's per-IP share to expire",
        Duration::from_secs(25),
        || async { Ws::try_connect(&other.ws(), &[]).await.ok() },
    )
    .await;
    drop(readmitted);
    let readmitted_after = killed.elapsed();
    // Presence keys expire (TTL ~15 s, refreshed only by the live gateway).
    wait_for(
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
    wait_for(
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
    let gw = gateway(&redis).spawn().await;
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

// === random frame sequences ===

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
    let mut last = String::new();
    let ok = tokio::time::timeout(crate::patience(), async {
        let mut r = redis.conn().await;
        loop {
            let raw: HashMap<String, String> = redis::cmd("HGETALL")
                .arg(&key)
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
            // have one is checked by `connections_without_channels_are_listed`).
            let stale = got.keys().any(|id| !want.contains_key(id));
            let agree = want
                .iter()
                .all(|(id, chans)| got.get(id).map_or(chans.is_empty(), |g| g == chans));
            if !stale && agree && subs == union {
                return;
            }
            last =
                format!("presence {got:?} vs told {want:?}; PUBSUB {subs:?} vs demand {union:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(ok.is_ok(), "round {round}: invariants do not hold: {last}");
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

/// Found by the property test: the monitor's connection list (the presence hash)
/// must list every open connection, also one that has not subscribed to anything
/// yet, or operators can neither see nor disconnect it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_channels_are_listed() {
    let redis = Redis::start().await;
    let gw = gateway(&redis).spawn().await;
    let (_idle, ok) = Ws::auth(&gw, &token("idle", &[], &[]), &[]).await;
    let key = format!("herald:node:{}:conns", ok["node"].as_str().expect("node"));
    let conn_id = ok["conn_id"].as_str().expect("conn_id").to_owned();
    let r = redis.conn().await;
    wait_for(
        "the idle connection's presence record",
        Duration::from_secs(3),
        || {
            let mut r = r.clone();
            let (key, conn_id) = (key.clone(), conn_id.clone());
            async move {
                let json: Option<String> = redis::cmd("HGET")
                    .arg(&key)
                    .arg(&conn_id)
                    .query_async(&mut r)
                    .await
                    .ok()?;
                let info: herald_proto::node::ConnInfo = serde_json::from_str(&json?).ok()?;
                info.channels.is_empty().then_some(())
            }
        },
    )
    .await;
}

// === soak (ignored; `just soak`) ===

/// What one recovering subscriber saw.
#[derive(Debug, Default)]
struct SubLog {
    /// Offsets seen per (channel, epoch).
    seen: HashMap<(String, String), BTreeSet<u64>>,
    /// The offset after which the subscriber owes itself every message of an epoch.
    base: HashMap<(String, String), u64>,
    /// Messages history could not replay within an unchanged epoch (must stay 0).
    unrecovered_same_epoch: u64,
    epoch_resets: u64,
    duplicates: u64,
    reconnects: u64,
    unexpected_closes: u64,
}

impl SubLog {
    fn message(&mut self, v: &Value) {
        let (Some(ch), Some((epoch, offset))) = (v["channel"].as_str(), position(v)) else {
            return;
        };
        let key = (ch.to_owned(), epoch);
        // An epoch first met through a live message is owed from its start.
        self.base.entry(key.clone()).or_insert(0);
        if !self.seen.entry(key).or_default().insert(offset) {
            self.duplicates += 1;
        }
    }

    /// Where to resume `channel`: the newest epoch seen and its highest offset.
    fn resume(&self, channel: &str, current: &HashMap<String, String>) -> Option<(String, u64)> {
        let epoch = current.get(channel)?;
        let key = (channel.to_owned(), epoch.clone());
        let top = self.seen.get(&key).and_then(|s| s.last().copied());
        Some((
            epoch.clone(),
            top.or(self.base.get(&key).copied()).unwrap_or(0),
        ))
    }
}

/// One subscriber that reconnects now and then (to either gateway) and recovers
/// every channel by offset.
async fn recovering_subscriber(
    urls: Vec<String>,
    token: String,
    channels: Vec<String>,
    stop: Arc<AtomicBool>,
    seed: u64,
) -> SubLog {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut log = SubLog::default();
    // The epoch currently followed per channel.
    let mut current: HashMap<String, String> = HashMap::new();
    let mut id = 0u64;
    let mut first = true;
    'connection: while !stop.load(Ordering::Relaxed) || first {
        first = false;
        let url = &urls[rng.random_range(0..urls.len())];
        let Ok((mut c, _)) = Client::auth(url, &token, &[]).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        log.reconnects += 1;
        // Pending subscribe ids → (channel, since).
        let mut pending: HashMap<u64, (String, Option<(String, u64)>)> = HashMap::new();
        for ch in &channels {
            id += 1;
            let since = log.resume(ch, &current);
            let mut frame = json!({"type":"subscribe","channel":ch,"id":id});
            if let Some((e, o)) = &since {
                frame["since"] = json!({"offset":o,"epoch":e});
            }
            if c.send(&frame).await.is_err() {
                continue 'connection;
            }
            pending.insert(id, (ch.clone(), since));
        }
        let stay = Duration::from_millis(rng.random_range(5_000..15_000));
        let connected = Instant::now();
        loop {
            if stop.load(Ordering::Relaxed) && pending.is_empty() {
                c.close().await;
                return log;
            }
            if connected.elapsed() > stay && pending.is_empty() {
                c.close().await;
                continue 'connection;
            }
            match c.next(Duration::from_millis(200)).await {
                Next::Frame(v) if v["type"] == "message" => {
                    log.message(&v);
                    // Follow the newest epoch, also when it arrives live.
                    if let (Some(ch), Some((epoch, _))) = (v["channel"].as_str(), position(&v)) {
                        current.insert(ch.to_owned(), epoch);
                    }
                }
                Next::Frame(v) if v["type"] == "subscribed" => {
                    let Some((ch, since)) = v["id"].as_u64().and_then(|i| pending.remove(&i))
                    else {
                        continue;
                    };
                    let (epoch, offset) = position(&v).expect("subscribed has a position");
                    let key = (ch.clone(), epoch.clone());
                    match (&since, v["recovered"].as_bool()) {
                        (None, _) => {
                            log.base.entry(key).or_insert(offset);
                        }
                        (Some(_), Some(true)) => {}
                        (Some((since_epoch, since_offset)), _) if *since_epoch == epoch => {
                            log.unrecovered_same_epoch += offset.saturating_sub(*since_offset);
                        }
                        (Some(_), _) => {
                            // History was lost (a Redis restart): start the new epoch
                            // from its beginning.
                            log.epoch_resets += 1;
                            log.base.entry(key).or_insert(0);
                            id += 1;
                            let frame = json!({"type":"subscribe","channel":ch,"id":id,"since":{"offset":0,"epoch":epoch}});
                            if c.send(&frame).await.is_err() {
                                current.insert(ch, epoch);
                                continue 'connection;
                            }
                            pending.insert(id, (ch.clone(), Some((epoch.clone(), 0))));
                        }
                    }
                    current.insert(ch, epoch);
                }
                Next::Frame(v) if v["type"] == "error" => {
                    // `unavailable` while Redis restarts: retry on a fresh connection.
                    if let Some(i) = v["id"].as_u64() {
                        pending.remove(&i);
                    }
                    c.close().await;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    continue 'connection;
                }
                Next::Frame(_) | Next::Idle => {}
                Next::Closed(_) => {
                    log.unexpected_closes += 1;
                    continue 'connection;
                }
            }
        }
    }
    log
}

/// Minutes of mixed load against two gateways and a broadcaster: publishers over
/// WebSocket and HTTP, subscribers that reconnect and recover by offset, connection
/// churn, and Redis restarts. Ends with a report; recovering clients must have lost
/// nothing acknowledged (within an epoch, and everything of the final epoch).
/// `HERALD_SOAK_SECS` (default 600) and `HERALD_SOAK_REDIS_RESTART_SECS` (default 60).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a soak of minutes: run it with `just soak`"]
async fn soak() {
    let secs = env_u64("HERALD_SOAK_SECS", 600);
    let restart_every = Duration::from_secs(env_u64("HERALD_SOAK_REDIS_RESTART_SECS", 60).max(10));
    let mut redis = Redis::start().await;
    let gw1 = gateway(&redis).spawn().await;
    let gw2 = gateway(&redis).spawn().await;
    let bc = ServiceBuilder::new("broadcaster")
        .redis(&redis)
        .spawn()
        .await;
    let pids = [gw1.pid().expect("pid"), gw2.pid().expect("pid")];
    let urls = vec![gw1.ws(), gw2.ws()];
    let channels: Vec<String> = (0..3).map(|i| format!("soak:{i}")).collect();
    let t = token("soak", &["soak:*"], &["soak:*"]);
    let stop_pub = Arc::new(AtomicBool::new(false));
    let stop_sub = Arc::new(AtomicBool::new(false));
    let acks: Arc<std::sync::Mutex<Vec<(String, String, u64)>>> = Arc::default();
    let errors: Arc<std::sync::Mutex<BTreeMap<String, u64>>> = Arc::default();
    let count_error = |errors: &Arc<std::sync::Mutex<BTreeMap<String, u64>>>, what: String| {
        *errors.lock().expect("errors").entry(what).or_default() += 1;
    };

    let mut subscribers = Vec::new();
    for k in 0..4u64 {
        subscribers.push(tokio::spawn(recovering_subscriber(
            urls.clone(),
            t.clone(),
            channels.clone(),
            stop_sub.clone(),
            k,
        )));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Publishers over WebSocket: the Rust client, one per gateway, which reconnects
    // by itself; every publish is awaited for its ack.
    let mut publishers = Vec::new();
    for (k, url) in urls.iter().enumerate() {
        let (url, t, channels) = (url.clone(), t.clone(), channels.clone());
        let (stop, acks, errors) = (stop_pub.clone(), acks.clone(), errors.clone());
        publishers.push(tokio::spawn(async move {
            let options = herald_client::Options {
                publish_timeout: PROMPT,
                ..herald_client::Options::default()
            };
            let client = herald_client::Client::connect(
                [url],
                herald_client::TokenSource::fixed(t),
                options,
            );
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let ch = &channels[(i as usize + k) % channels.len()];
                match client.publish(ch, &json!({"p": k, "i": i})).await {
                    Ok(ack) => {
                        acks.lock()
                            .expect("acks")
                            .push((ch.clone(), ack.epoch, ack.offset));
                    }
                    Err(herald_client::PublishError::Refused { code, .. }) => {
                        count_error(&errors, format!("ws publish: {}", code.as_str()));
                    }
                    Err(e) => {
                        count_error(
                            &errors,
                            format!("ws publisher: {e}").chars().take(60).collect(),
                        );
                        // Not connected (or the connection dropped): wait a moment
                        // rather than fill the client's queue.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            client.close().await;
        }));
    }
    {
        let (http, channels) = (bc.http(), channels.clone());
        let (stop, acks, errors) = (stop_pub.clone(), acks.clone(), errors.clone());
        publishers.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(PROMPT)
                .build()
                .expect("client");
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let ch = &channels[n as usize % channels.len()];
                let resp = client
                    .post(format!("{http}/v1/publish"))
                    .bearer_auth(API_KEY)
                    .json(&json!({"channel":ch,"message":{"http":n}}))
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status() == 200 => {
                        let v: Value = r.json().await.unwrap_or(Value::Null);
                        if let Some((e, o)) = position(&v) {
                            acks.lock().expect("acks").push((ch.clone(), e, o));
                        }
                    }
                    Ok(r) => count_error(&errors, format!("http publish: {}", r.status().as_u16())),
                    Err(_) => count_error(&errors, "http publish: timeout".to_owned()),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    // Churn: short-lived connections that authenticate, subscribe and leave.
    let churn = {
        let (urls, t, stop, errors) = (urls.clone(), t.clone(), stop_pub.clone(), errors.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                match Client::auth(&urls[n as usize % urls.len()], &t, &["soak:0"]).await {
                    Ok((c, _)) => c.close().await,
                    Err(_) => count_error(&errors, "churn: connect".to_owned()),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            n
        })
    };

    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    tokio::time::sleep(Duration::from_secs(3).min(Duration::from_secs(secs))).await;
    let rss_start: Vec<u64> = pids.iter().map(|p| rss_kib(*p).unwrap_or(0)).collect();
    let mut rss_max = rss_start.clone();
    let mut next_restart = started + restart_every;
    let mut restarts = 0;
    while Instant::now() < deadline {
        for (i, p) in pids.iter().enumerate() {
            rss_max[i] = rss_max[i].max(rss_kib(*p).unwrap_or(0));
        }
        if Instant::now() >= next_restart
            && deadline.saturating_duration_since(Instant::now()) > Duration::from_secs(8)
        {
            redis.kill().await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            redis.restart().await;
            restarts += 1;
            next_restart = Instant::now() + restart_every;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop_pub.store(true, Ordering::Relaxed);
    for p in publishers {
        within("a publisher to stop", p).await.expect("publisher");
    }
    let churned = within("churn to stop", churn).await.expect("churn");
    // Let the last deliveries and recoveries land.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_sub.store(true, Ordering::Relaxed);
    let mut logs = Vec::new();
    for s in subscribers {
        logs.push(within("a subscriber to stop", s).await.expect("subscriber"));
    }
    let rss_end: Vec<u64> = pids.iter().map(|p| rss_kib(*p).unwrap_or(0)).collect();

    // The report.
    let acks = acks.lock().expect("acks").clone();
    let mut final_epoch: HashMap<String, String> = HashMap::new();
    let mut acked: HashMap<(String, String), BTreeSet<u64>> = HashMap::new();
    for (ch, e, o) in &acks {
        final_epoch.insert(ch.clone(), e.clone());
        acked.entry((ch.clone(), e.clone())).or_default().insert(*o);
    }
    let mut losses = 0u64;
    let mut lost_to_restarts = 0u64;
    let mut lines = Vec::new();
    for (k, log) in logs.iter().enumerate() {
        let mut holes = 0u64;
        let mut tail = 0u64;
        let mut old_tail = 0u64;
        for (key, base) in &log.base {
            let seen = log.seen.get(key).cloned().unwrap_or_default();
            let top = seen.last().copied().unwrap_or(*base);
            holes += (base + 1..=top).filter(|o| !seen.contains(o)).count() as u64;
            let owed_after_top = acked
                .get(key)
                .map_or(0, |a| a.range(top.max(*base) + 1..).count() as u64);
            if final_epoch.get(&key.0) == Some(&key.1) {
                tail += owed_after_top;
            } else {
                old_tail += owed_after_top;
            }
        }
        // A final epoch the subscriber never met at all is owed whole.
        for (ch, e) in &final_epoch {
            if !log.base.contains_key(&(ch.clone(), e.clone())) {
                tail += acked
                    .get(&(ch.clone(), e.clone()))
                    .map_or(0, |a| a.len() as u64);
            }
        }
        let lost = holes + tail + log.unrecovered_same_epoch;
        losses += lost;
        lost_to_restarts += old_tail;
        let received: usize = log.seen.values().map(BTreeSet::len).sum();
        lines.push(format!(
            "  subscriber {k}: received {received}, lost {lost} (holes {holes}, final-epoch tail {tail}, unrecovered {}), \
             old-epoch tail lost with Redis {old_tail}, epoch resets {}, duplicates {}, connections {}, unexpected closes {}",
            log.unrecovered_same_epoch, log.epoch_resets, log.duplicates, log.reconnects, log.unexpected_closes
        ));
    }
    let errors = errors.lock().expect("errors").clone();
    let drift: Vec<i64> = rss_end
        .iter()
        .zip(&rss_start)
        .map(|(e, s)| *e as i64 - *s as i64)
        .collect();
    println!("soak report ({secs}s, {restarts} Redis restarts, {churned} churned connections)");
    println!("  acknowledged publishes: {}", acks.len());
    for l in &lines {
        println!("{l}");
    }
    println!("  losses for recovering clients: {losses} (must be 0)");
    println!("  lost with Redis's memory at restarts (old epochs, by design): {lost_to_restarts}");
    println!("  errors: {errors:?}");
    println!(
        "  gateway RSS KiB: start {rss_start:?}, max {rss_max:?}, end {rss_end:?}, drift {drift:?}"
    );
    assert!(!acks.is_empty(), "nothing was published");
    assert_eq!(losses, 0, "recovering clients lost acknowledged messages");
    assert!(
        rss_max.iter().all(|m| *m < 512 * 1024),
        "gateway RSS {rss_max:?} KiB"
    );
}

// === Readiness ===

/// The node heartbeat's interval and its bound (herald-common `node::BEAT_INTERVAL`
/// and `node::BEAT_TIMEOUT`).
const BEAT_INTERVAL: Duration = Duration::from_secs(1);
const BEAT_TIMEOUT: Duration = Duration::from_millis(500);
/// Scheduling and polling slack on a busy test machine.
const READY_SLACK: Duration = Duration::from_millis(500);

/// `/readyz`'s status, or 0 if the service did not answer within a second.
async fn readyz(svc: &Service) -> u16 {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .expect("client");
    match client.get(format!("{}/readyz", svc.http())).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// Polls every service's `/readyz` until it answers `want`; returns how long each took.
async fn until_ready_is(services: &[Service], want: u16, limit: Duration) -> Vec<Duration> {
    let started = Instant::now();
    let waits = services.iter().map(|svc| async move {
        wait_for(&format!("{} /readyz {want}", svc.name), limit, || async {
            (readyz(svc).await == want).then(|| started.elapsed())
        })
        .await
    });
    futures_util::future::join_all(waits).await
}

/// Every service's `/readyz` turns 503 within one heartbeat of Redis going away —
/// killed (connections refused) or hung (SIGSTOP: connections open, no answers) —
/// and 200 again once it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_redis_within_one_beat() {
    let mut redis = Redis::start().await;
    let mut services = Vec::new();
    for name in ["auth-svc", "ws-gateway", "broadcaster", "monitor"] {
        let b = if name == "ws-gateway" {
            gateway(&redis)
        } else {
            ServiceBuilder::new(name).redis(&redis)
        };
        services.push(b.spawn().await);
    }
    let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
    until_ready_is(&services, 200, crate::patience()).await;

    // Killed: within one beat, plus the beat's own bound and slack.
    let limit = BEAT_INTERVAL + BEAT_TIMEOUT + READY_SLACK;
    redis.kill().await;
    let took = until_ready_is(&services, 503, Duration::from_secs(10)).await;
    println!("503 after Redis was killed: {names:?} {took:?}");
    for (name, t) in names.iter().zip(&took) {
        assert!(
            *t <= limit,
            "{name} turned 503 {t:?} after Redis was killed (limit {limit:?}); all: {took:?}"
        );
    }
    redis.restart().await;
    until_ready_is(&services, 200, crate::patience()).await;

    // Hung: the same bound, though no request fails on its own before 2 s.
    let pid = i32::try_from(redis.pid().expect("redis pid")).expect("pid");
    crate::signal(pid, 19);
    let took = until_ready_is(&services, 503, Duration::from_secs(10)).await;
    crate::signal(pid, 18);
    println!("503 after Redis hung: {names:?} {took:?}");
    for (name, t) in names.iter().zip(&took) {
        assert!(
            *t <= limit,
            "{name} turned 503 {t:?} after Redis hung (limit {limit:?}); all: {took:?}"
        );
    }
    until_ready_is(&services, 200, crate::patience()).await;
}
