//! Redis going away while every service runs. One outage (Redis killed for
//! `HERALD_CHAOS_OUTAGE_MS`, 10 s by default, then restarted empty) under publish and
//! subscribe load, read phase by phase: before, during, after; and a hung Redis
//! (SIGSTOP), a different fault, on its own. docs/reliability.md says what each
//! service does meanwhile.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use super::chaos::gateway;
use crate::load_client::{Client, Next, PROMPT, position};
use crate::{
    ADMIN_KEY, API_KEY, Redis, Service, ServiceBuilder, Ws, env_u64, eventually, eventually_within,
    http_json, patience, token, within,
};

/// The node heartbeat's interval and its bound (herald-common `node::BEAT_INTERVAL`
/// and `node::BEAT_TIMEOUT`).
const BEAT_INTERVAL: Duration = Duration::from_secs(1);
const BEAT_TIMEOUT: Duration = Duration::from_millis(500);
/// Scheduling and polling slack on a busy test machine.
const READY_SLACK: Duration = Duration::from_millis(500);
/// auth-svc's node id, to see it deregister.
const AUTH_NODE: &str = "auth-outage";
/// The user who logs in before and after the outage.
const USER: (&str, &str) = ("jack", "pw-long-enough");
/// The message that ends the subscriber's recording.
const END: &str = "end";

/// Redis and one of each service on it.
struct Cluster {
    redis: Redis,
    auth: Service,
    gw: Service,
    bc: Service,
    monitor: Service,
}

impl Cluster {
    async fn start() -> Self {
        let redis = Redis::start().await;
        let auth = ServiceBuilder::new("auth-svc")
            .redis(&redis)
            .env("HERALD_NODE_ID", AUTH_NODE)
            .spawn()
            .await;
        let gw = gateway(&redis).spawn().await;
        let bc = ServiceBuilder::new("broadcaster")
            .redis(&redis)
            .spawn()
            .await;
        let monitor = ServiceBuilder::new("monitor").redis(&redis).spawn().await;
        Self {
            redis,
            auth,
            gw,
            bc,
            monitor,
        }
    }

    fn services(&self) -> [&Service; 4] {
        [&self.auth, &self.gw, &self.bc, &self.monitor]
    }
}

// === readiness ===

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
async fn until_ready_is(services: &[&Service], want: u16, limit: Duration) -> Vec<Duration> {
    let started = Instant::now();
    let waits = services.iter().map(|svc| async move {
        eventually_within(&format!("{} /readyz {want}", svc.name), limit, || async {
            (readyz(svc).await == want).then(|| started.elapsed())
        })
        .await
    });
    futures_util::future::join_all(waits).await
}

/// Every service's `/readyz` turns 503 within one beat of `fault` (just done), plus
/// the beat's own bound and slack.
async fn readiness_flips_within_one_beat(services: &[&Service], fault: &str) {
    let limit = BEAT_INTERVAL + BEAT_TIMEOUT + READY_SLACK;
    let took = until_ready_is(services, 503, Duration::from_secs(10)).await;
    let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
    println!("503 after Redis was {fault}: {names:?} {took:?}");
    for (name, t) in names.iter().zip(&took) {
        assert!(
            *t <= limit,
            "{name} turned 503 {t:?} after Redis was {fault} (limit {limit:?}); all: {took:?}"
        );
    }
}

// === the traffic through the outage ===

/// One publish attempt of the WebSocket publisher.
#[derive(Debug, Clone)]
struct Attempt {
    at: Instant,
    latency: Duration,
    ack: Option<(String, u64)>,
    code: Option<String>,
}

/// A subscriber recording every message on `news` until [`END`], and a publisher
/// broadcasting to it (and pinging) until stopped, one request at a time.
struct Traffic {
    attempts: Arc<Mutex<Vec<Attempt>>>,
    received: Arc<Mutex<Vec<Value>>>,
    stop: Arc<AtomicBool>,
    publisher: JoinHandle<()>,
    subscriber: JoinHandle<Client>,
}

impl Traffic {
    async fn start(gw: &Service, t: &str) -> Self {
        let (mut sub, _) = Client::auth(&gw.ws(), t, &["news"]).await.expect("sub");
        let (mut publisher, _) = Client::auth(&gw.ws(), t, &[]).await.expect("publisher");
        let received: Arc<Mutex<Vec<Value>>> = Arc::default();
        let subscriber = tokio::spawn({
            let received = received.clone();
            async move {
                loop {
                    match sub.next(PROMPT).await {
                        Next::Frame(v) if v["type"] == "message" => {
                            let end = v["message"] == END;
                            received.lock().expect("received").push(v);
                            if end {
                                return sub;
                            }
                        }
                        Next::Frame(_) | Next::Idle => {}
                        Next::Closed(code) => panic!("the subscriber was disconnected ({code})"),
                    }
                }
            }
        });
        let attempts: Arc<Mutex<Vec<Attempt>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let publisher = tokio::spawn({
            let (attempts, stop) = (attempts.clone(), stop.clone());
            async move {
                let mut other = Vec::new();
                let mut id = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    id += 1;
                    let frame =
                        json!({"type":"broadcast","channel":"news","message":{"i":id},"id":id});
                    let started = Instant::now();
                    let reply = publisher
                        .request(&frame, id, PROMPT, &mut other)
                        .await
                        .unwrap_or_else(|e| panic!("publish {id}: {e}"));
                    attempts.lock().expect("attempts").push(Attempt {
                        at: started,
                        latency: started.elapsed(),
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
                    // The pace of the load: ten publishes a second.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        Self {
            attempts,
            received,
            stop,
            publisher,
            subscriber,
        }
    }

    /// Waits until `n` publishes matching `epoch` (any if `None`) were acknowledged,
    /// and the subscriber has received `n` messages.
    async fn until_acked(&self, n: usize, epoch: Option<&str>) {
        eventually(
            &format!("{n} acknowledged publishes (epoch {epoch:?})"),
            || async {
                let acked = self
                    .attempts
                    .lock()
                    .expect("attempts")
                    .iter()
                    .filter_map(|a| a.ack.as_ref())
                    .filter(|(e, _)| epoch.is_none_or(|want| want == e))
                    .count();
                let received = self.received.lock().expect("received").len();
                (acked >= n && received >= n).then_some(())
            },
        )
        .await;
    }

    /// Stops the publisher, publishes [`END`] over HTTP and waits for the subscriber
    /// to receive it (delivery follows offset order, so everything before it has
    /// arrived); returns the attempts, what the subscriber received, the subscriber,
    /// and the end marker's position.
    async fn finish(self, bc: &Service) -> (Vec<Attempt>, Vec<Value>, Client, (String, u64)) {
        self.stop.store(true, Ordering::Relaxed);
        within("the publisher", self.publisher)
            .await
            .expect("publisher");
        let (status, body) = http_json(
            Method::POST,
            &format!("{}/v1/publish", bc.http()),
            Some(API_KEY),
            Some(json!({"channel":"news","message":END})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let sub = within("the subscriber to receive the end", self.subscriber)
            .await
            .expect("subscriber");
        let attempts = self.attempts.lock().expect("attempts").clone();
        let received = self.received.lock().expect("received").clone();
        (
            attempts,
            received,
            sub,
            position(&body).expect("end position"),
        )
    }
}

// === before ===

/// Every service is ready, a user can log in, and the monitor lists all four nodes
/// up; returns that count.
async fn before(c: &Cluster) -> u64 {
    until_ready_is(&c.services(), 200, patience()).await;
    let (s, b) = add_user(c).await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(login(c).await.0, 200);
    eventually("the monitor to list every service up", || async {
        let o = overview(&c.monitor).await;
        (o["totals"]["nodes_up"] == 4).then_some(4)
    })
    .await
}

async fn add_user(c: &Cluster) -> (u16, Value) {
    let (name, password) = USER;
    http_json(
        Method::POST,
        &format!("{}/v1/users", c.auth.http()),
        Some(ADMIN_KEY),
        Some(json!({"username":name,"password":password})),
    )
    .await
}

async fn login(c: &Cluster) -> (u16, Value) {
    let (name, password) = USER;
    http_json(
        Method::POST,
        &format!("{}/v1/token", c.auth.http()),
        None,
        Some(json!({"username":name,"password":password})),
    )
    .await
}

async fn overview(monitor: &Service) -> Value {
    let (status, body) = http_json(
        Method::GET,
        &format!("{}/api/v1/overview", monitor.http()),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "the overview is served, outage or not: {body}");
    body
}

// === during ===

/// An HTTP publish during the outage: 503 `unavailable` with a Retry-After, promptly.
async fn http_publish_is_503(bc: &Service) {
    let started = Instant::now();
    let resp = within(
        "a publish during the outage",
        reqwest::Client::new()
            .post(format!("{}/v1/publish", bc.http()))
            .bearer_auth(API_KEY)
            .json(&json!({"channel":"news","message":"during"}))
            .send(),
    )
    .await
    .expect("http");
    assert!(
        started.elapsed() < PROMPT,
        "HTTP publish took {:?}",
        started.elapsed()
    );
    assert_eq!(resp.status().as_u16(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let v: Value = within("the body", resp.json()).await.expect("json");
    assert_eq!(v["error"]["code"], "unavailable", "{v}");
}

/// Logins and HTTP publishes answer 503 `unavailable`; auth-svc is still alive.
async fn http_apis_answer_503_unavailable(c: &Cluster) {
    let (s, b) = login(c).await;
    assert_eq!(s, 503, "{b}");
    assert_eq!(b["error"]["code"], "unavailable");
    let (s, _) = http_json(
        Method::GET,
        &format!("{}/healthz", c.auth.http()),
        None,
        None,
    )
    .await;
    assert_eq!(s, 200, "liveness does not depend on Redis");
    http_publish_is_503(&c.bc).await;
}

/// The connection stays open and answers pings; a new subscription is refused as
/// `unavailable`, promptly.
async fn gateway_keeps_clients_and_refuses_new_subscriptions(probe: &mut Ws) {
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
    probe.send(json!({"type":"ping","id":"p"})).await;
    assert_eq!(probe.recv_type("pong").await["id"], "p");
}

/// The monitor keeps serving its last sample (marked stale) and says it is not
/// ready; what it cannot answer from the sample is a 503.
async fn monitor_serves_the_last_sample(monitor: &Service, nodes_up: u64) {
    // Readiness follows the shared Redis health, which any failed command flips; the
    // sample turns stale only when the sampler's own next round fails.
    let o = eventually("a stale overview", || async {
        let o = overview(monitor).await;
        (o["stale"] == true).then_some(o)
    })
    .await;
    assert_eq!(o["totals"]["nodes_up"], nodes_up, "the last sample: {o}");
    assert_eq!(readyz(monitor).await, 503);
    let (status, body) = http_json(
        Method::GET,
        &format!("{}/api/v1/connections", monitor.http()),
        None,
        None,
    )
    .await;
    assert_eq!(status, 503, "{body}");
}

/// Keeps checking HTTP publishes and the probe's pings until the outage has lasted
/// `outage`; returns how many HTTP publishes were answered 503.
async fn hold_the_outage(c: &Cluster, probe: &mut Ws, killed: Instant, outage: Duration) -> u32 {
    let mut http_503 = 0;
    while killed.elapsed() < outage {
        http_publish_is_503(&c.bc).await;
        http_503 += 1;
        probe.send(json!({"type":"ping","id":"p"})).await;
        assert_eq!(probe.recv_type("pong").await["id"], "p");
        // The pace of these checks; the outage's length is what is under test.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    http_503
}

// === after ===

/// Every service is ready again and serves from Redis: HTTP publishes are
/// acknowledged (returned), the user store is usable again (empty: Redis restarted
/// without its data), the monitor's sample is fresh, and the errors were counted.
async fn every_service_recovers(c: &Cluster, nodes_up: u64) -> Vec<(String, u64)> {
    until_ready_is(&c.services(), 200, patience()).await;
    let mut http_acks = Vec::new();
    for i in 0..3 {
        let ack = eventually("the HTTP publish API to recover", || async {
            let (status, body) = http_json(
                Method::POST,
                &format!("{}/v1/publish", c.bc.http()),
                Some(API_KEY),
                Some(json!({"channel":"news","message":{"http":i}})),
            )
            .await;
            (status == 200).then_some(body)
        })
        .await;
        http_acks.push(position(&ack).expect("position"));
    }
    eventually("auth-svc to store users again", || async {
        (add_user(c).await.0 == 201).then_some(())
    })
    .await;
    assert_eq!(login(c).await.0, 200);
    eventually("a fresh sample listing every service", || async {
        let o = overview(&c.monitor).await;
        (o["stale"] == false && o["totals"]["nodes_up"] == nodes_up).then_some(())
    })
    .await;
    for svc in [&c.auth, &c.bc] {
        let text = metrics(svc).await;
        assert!(
            text.lines()
                .any(|l| l.starts_with("herald_redis_errors_total ") && !l.ends_with(" 0")),
            "{}: {text}",
            svc.name
        );
    }
    http_acks
}

async fn metrics(svc: &Service) -> String {
    let resp = within("metrics", reqwest::get(format!("{}/metrics", svc.http())))
        .await
        .expect("metrics");
    within("metrics body", resp.text()).await.expect("text")
}

/// Every WebSocket reply was prompt, and the only error was the temporary one, which
/// every attempt during the outage got.
fn replies_were_prompt_and_only_unavailable(
    attempts: &[Attempt],
    killed: Instant,
    restarting: Instant,
) {
    let slowest = attempts.iter().map(|a| a.latency).max().unwrap_or_default();
    assert!(slowest < PROMPT, "slowest reply {slowest:?}");
    eprintln!(
        "outage: {} publish attempts, slowest reply {slowest:?}",
        attempts.len()
    );
    for a in attempts {
        if let Some(code) = &a.code {
            assert_eq!(code, "unavailable", "{a:?}");
        }
    }
    // The outage ends when the restart begins: while `restart` waits for Redis to
    // answer, the gateway may already reconnect and acknowledge publishes.
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
}

/// Everything acknowledged after the restart (`acked_after`, the new epoch) was
/// delivered live, in order, and is recoverable by offset; everything acknowledged
/// well before the kill was delivered too (Redis restarts empty, so what was in
/// flight at the kill is all a restart can take).
async fn nothing_acknowledged_is_lost(
    gw: &Service,
    t: &str,
    attempts: &[Attempt],
    received: &[Value],
    acked_after: &BTreeSet<(String, u64)>,
    new_epoch: &str,
    killed: Instant,
) {
    let seen: Vec<(String, u64)> = received.iter().filter_map(position).collect();
    let seen_set: BTreeSet<(String, u64)> = seen.iter().cloned().collect();
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
    // A client recovering from the new epoch's start gets every one of them.
    let (mut late, _) = Ws::auth(gw, t, &[]).await;
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
}

/// A graceful stop after the outage exits 0 and deregisters the node.
async fn auth_stops_gracefully(c: &mut Cluster) {
    assert_eq!(c.auth.terminate().await, Some(0));
    let mut r = c.redis.conn().await;
    let score: Option<u64> = redis::cmd("ZSCORE")
        .arg("herald:nodes")
        .arg(AUTH_NODE)
        .query_async(&mut r)
        .await
        .expect("zscore");
    assert_eq!(score, None, "auth-svc deregistered");
}

// === the scenarios ===

/// Redis killed for seconds, then restarted empty, with every service running and
/// clients publishing and subscribing: every service turns not-ready within one beat
/// and answers 503 `unavailable` promptly; gateways keep their clients; the monitor
/// serves its last sample; and once Redis is back everything recovers and nothing
/// acknowledged after the restart is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_degrades_every_service_and_loses_nothing_acknowledged() {
    let outage = Duration::from_millis(env_u64("HERALD_CHAOS_OUTAGE_MS", 10_000));
    let mut cluster = Cluster::start().await;
    let t = token("o", &["news", "other"], &["news"]);

    // Before.
    let nodes_up = before(&cluster).await;
    let traffic = Traffic::start(&cluster.gw, &t).await;
    let (mut probe, _) = Ws::auth(&cluster.gw, &t, &[]).await;
    traffic.until_acked(5, None).await;

    // During.
    cluster.redis.kill().await;
    let killed = Instant::now();
    readiness_flips_within_one_beat(&cluster.services(), "killed").await;
    http_apis_answer_503_unavailable(&cluster).await;
    gateway_keeps_clients_and_refuses_new_subscriptions(&mut probe).await;
    monitor_serves_the_last_sample(&cluster.monitor, nodes_up).await;
    let http_503 = hold_the_outage(&cluster, &mut probe, killed, outage).await;
    assert!(
        http_503 >= 3,
        "{http_503} HTTP publishes checked during the outage"
    );

    // After.
    let restarting = Instant::now();
    cluster.redis.restart().await;
    let http_acks = every_service_recovers(&cluster, nodes_up).await;
    let new_epoch = http_acks[0].0.clone();
    traffic.until_acked(5, Some(&new_epoch)).await;
    let (attempts, received, mut sub, end) = traffic.finish(&cluster.bc).await;
    replies_were_prompt_and_only_unavailable(&attempts, killed, restarting);
    let mut acked_after: BTreeSet<(String, u64)> = http_acks.into_iter().collect();
    acked_after.insert(end);
    acked_after.extend(
        attempts
            .iter()
            .filter_map(|a| a.ack.clone())
            .filter(|(e, _)| *e == new_epoch),
    );
    nothing_acknowledged_is_lost(
        &cluster.gw,
        &t,
        &attempts,
        &received,
        &acked_after,
        &new_epoch,
        killed,
    )
    .await;
    // The subscriber's connection survived the whole outage.
    let pong = sub
        .request(&json!({"type":"ping","id":1}), 1, PROMPT, &mut Vec::new())
        .await
        .expect("the subscriber still answers");
    assert_eq!(pong["type"], "pong");
    auth_stops_gracefully(&mut cluster).await;
}

/// A hung Redis (SIGSTOP: connections stay open, nothing answers, no request fails on
/// its own before 2 s) turns every service's `/readyz` 503 within one beat as well,
/// and 200 again once it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_a_hung_redis_within_one_beat() {
    let cluster = Cluster::start().await;
    let services = cluster.services();
    until_ready_is(&services, 200, patience()).await;
    let pid = i32::try_from(cluster.redis.pid().expect("redis pid")).expect("pid");
    crate::signal(pid, 19);
    readiness_flips_within_one_beat(&services, "hung").await;
    crate::signal(pid, 18);
    until_ready_is(&services, 200, patience()).await;
}
