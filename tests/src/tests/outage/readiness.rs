//! Readiness through Redis faults: how fast every service's `/readyz` turns 503, and
//! a hung Redis (SIGSTOP), a fault of its own.

use std::time::{Duration, Instant};

use super::Cluster;
use crate::{Service, eventually_within, patience};

/// The node heartbeat's interval and its bound (herald-common `node::BEAT_INTERVAL`
/// and `node::BEAT_TIMEOUT`).
const BEAT_INTERVAL: Duration = Duration::from_secs(1);
const BEAT_TIMEOUT: Duration = Duration::from_millis(500);
/// Scheduling and polling slack on a busy test machine.
const READY_SLACK: Duration = Duration::from_millis(500);

/// `/readyz`'s status, or 0 if the service did not answer within a second.
pub(super) async fn readyz(svc: &Service) -> u16 {
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
pub(super) async fn until_ready_is(
    services: &[&Service],
    want: u16,
    limit: Duration,
) -> Vec<Duration> {
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
pub(super) async fn readiness_flips_within_one_beat(services: &[&Service], fault: &str) {
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
