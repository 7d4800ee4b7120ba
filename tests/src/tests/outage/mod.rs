//! Redis going away while every service runs. One outage (Redis killed for
//! `HERALD_CHAOS_OUTAGE_MS`, 10 s by default, then restarted empty) under publish and
//! subscribe load, read phase by phase: before, during, after; and a hung Redis
//! (SIGSTOP), a different fault, on its own. docs/reliability.md says what each
//! service does meanwhile.

mod readiness;
mod traffic;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use super::chaos::gateway;
use crate::load_client::{PROMPT, position};
use crate::{
    ADMIN_KEY, API_KEY, Redis, Service, ServiceBuilder, Ws, env_u64, eventually, http_json,
    patience, token, within,
};
use readiness::{readiness_flips_within_one_beat, readyz, until_ready_is};
use traffic::{Traffic, nothing_acknowledged_is_lost, replies_were_prompt_and_only_unavailable};

/// auth-svc's node id, to see it deregister.
const AUTH_NODE: &str = "auth-outage";
/// The user who logs in before and after the outage.
const USER: (&str, &str) = ("jack", "pw-long-enough");

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
            .process()
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
