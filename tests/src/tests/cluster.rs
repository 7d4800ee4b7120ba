//! Herald on a Redis Cluster (three primaries with a replica each, started by the
//! test from `redis-server` binaries): the protocol-level guarantees hold with
//! channels spread over the shards, and through a primary's failover and a slot
//! migration under traffic — every client gets every message exactly once, in
//! order.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use super::{
    auth, auth_login, broadcaster, broadcaster_jobs, gateway, history, limits, monitor, presence,
    server_side,
};
use crate::cluster::slot_of;
use crate::{API_KEY, Backend, RedisCluster, Service, Ws, eventually, token};

/// Runs protocol tests written for any backend on a fresh cluster.
macro_rules! on_cluster {
    ($($name:ident => $test:path),+ $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            $test(Backend::cluster().await).await;
        }
    )+};
}

on_cluster!(
    cross_gateway_fanout => gateway::cross_gateway_fanout_and_message_shape,
    recovery_with_and_without_a_gap => gateway::recovery_with_and_without_a_gap,
    idempotent_publish => broadcaster::idempotency_key_publishes_once,
    a_job_end_to_end => broadcaster_jobs::jobs_run_and_publish_their_results,
    monitor_overview => monitor::the_overview_follows_a_live_cluster_and_a_graceful_stop,
    legacy_bridges => broadcaster::system_notifications_and_user_messages,
    history_reads => history::history_reads_forward_backward_and_after_a_position,
    presence_across_gateways => presence::presence_lists_members_of_every_gateway_and_announces_changes,
    server_side_commands => server_side::the_backend_subscribes_unsubscribes_and_disconnects_a_user_everywhere,
    users => auth::creating_a_user_answers_201_without_the_hash_and_a_duplicate_409,
    refresh_tokens => auth_login::refresh_rotation_and_reuse_detection,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_limits_hold_across_two_gateways() {
    let cluster = RedisCluster::start().await;
    limits::per_ip_slots_across_gateways(&cluster).await;
}

/// One Redis or a cluster, not both; an unreachable cluster is one line too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_cluster_settings_fail_fast_with_one_line() {
    for service in ["ws-gateway", "broadcaster", "monitor", "auth-svc"] {
        let (code, _, err) = crate::run_bin(
            service,
            &[],
            &[
                ("HERALD_JWT_SECRET", crate::TEST_SECRET),
                ("HERALD_API_KEY", API_KEY),
                ("HERALD_ADMIN_KEY", crate::ADMIN_KEY),
                ("HERALD_REDIS_URL", "redis://127.0.0.1:6379"),
                ("HERALD_REDIS_CLUSTER", "redis://127.0.0.1:7000"),
            ],
        )
        .await;
        assert_eq!(code, 64, "{service}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{service}: {err}");
        assert!(err.contains("not both"), "{service}: {err}");
    }
    let (_dead, url) = crate::dead_redis();
    let (code, _, err) = crate::run_bin(
        "ws-gateway",
        &[],
        &[
            ("HERALD_JWT_SECRET", crate::TEST_SECRET),
            (
                "HERALD_REDIS_CLUSTER",
                &format!("{url},redis://:secret-pw@127.0.0.1:1"),
            ),
        ],
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("unreachable"), "{err}");
    assert!(
        !err.contains("secret-pw"),
        "a password reached the log: {err}"
    );
}

/// Channels named `prefix:0..n`.
fn channels(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}:{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_reaches_channels_on_every_shard() {
    let cluster = RedisCluster::start().await;
    let names = channels("spread", 30);
    for p in cluster.primaries().await {
        assert!(
            names.iter().any(|c| p.owns(slot_of(c))),
            "no test channel on the primary at :{}",
            p.port
        );
    }
    let gws = [
        gateway::gateway(&cluster).spawn().await,
        gateway::gateway(&cluster).spawn().await,
    ];
    let bc = broadcaster::start(&cluster).await;
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let t = token("fan", &["spread:*"], &[]);
    let (mut a, _) = Ws::auth(&gws[0], &t, &refs).await;
    let (mut b, _) = Ws::auth(&gws[1], &t, &refs).await;
    for (i, c) in names.iter().enumerate() {
        let (status, body) = broadcaster::post(
            &bc,
            "/v1/publish",
            json!({"channel": c, "message": {"i": i}}),
        )
        .await;
        assert_eq!((status, body["offset"].as_u64()), (200, Some(1)), "{body}");
    }
    for ws in [&mut a, &mut b] {
        let mut got = BTreeSet::new();
        for _ in 0..names.len() {
            let m = ws.recv_type("message").await;
            let c = m["channel"].as_str().expect("channel").to_owned();
            assert_eq!(
                m["message"]["i"],
                names.iter().position(|n| *n == c).unwrap()
            );
            assert!(got.insert(c), "a message delivered twice: {m}");
        }
        assert!(ws.recv_within(Duration::from_millis(300)).await.is_none());
    }
}

/// One delivery a client saw.
#[derive(Debug, Clone)]
struct Seen {
    channel: String,
    offset: u64,
    n: u64,
    at: Instant,
}

/// How long a client of the traffic tests may take to get all its messages.
const COLLECT_DEADLINE: Duration = Duration::from_secs(60);

/// Reads `ws` until it has `per_channel` messages on each of `channels`.
async fn collect(mut ws: Ws, channels: Vec<String>, per_channel: u64) -> Vec<Seen> {
    let want = channels.len() as u64 * per_channel;
    let mut seen = Vec::new();
    let deadline = COLLECT_DEADLINE;
    let started = Instant::now();
    while (seen.len() as u64) < want {
        let left = deadline.saturating_sub(started.elapsed());
        assert!(
            !left.is_zero(),
            "a client got {} of {want} messages within {deadline:?}",
            seen.len()
        );
        // Waits shorter than the harness's per-frame patience: a client whose
        // remaining messages are all on the dead shard may hear nothing for a while
        // on a loaded machine, and only the overall deadline counts.
        let Some(m) = ws.recv_within(left.min(Duration::from_secs(5))).await else {
            continue;
        };
        assert_eq!(m["type"], "message", "{m}");
        seen.push(Seen {
            channel: m["channel"].as_str().expect("channel").to_owned(),
            offset: m["offset"].as_u64().expect("offset"),
            n: m["message"]["n"].as_u64().expect("n"),
            at: Instant::now(),
        });
    }
    assert!(
        ws.recv_within(Duration::from_millis(500)).await.is_none(),
        "more than {want} messages"
    );
    seen
}

/// Asserts every channel's deliveries are `1..=per_channel`, each once, in order.
fn assert_exactly_once_in_order(who: &str, seen: &[Seen], channels: &[String], per_channel: u64) {
    let mut by_channel: BTreeMap<&str, Vec<(u64, u64)>> = BTreeMap::new();
    for s in seen {
        by_channel
            .entry(&s.channel)
            .or_default()
            .push((s.offset, s.n));
    }
    let want: Vec<(u64, u64)> = (1..=per_channel).map(|i| (i, i)).collect();
    for c in channels {
        assert_eq!(
            by_channel.get(c.as_str()),
            Some(&want),
            "{who}: channel {c} (offset, n) deliveries"
        );
    }
}

/// What the publishers of [`publish_all`] did: how many publishes were
/// acknowledged, and when each (channel, n) was first sent.
#[derive(Default)]
struct Published {
    acked: AtomicU64,
    sent: Mutex<HashMap<(String, u64), Instant>>,
}

impl Published {
    /// Whether (channel, n) was first sent after `t`.
    fn sent_after(&self, channel: &str, n: u64, t: Instant) -> bool {
        let sent = self.sent.lock().expect("publish log");
        sent.get(&(channel.to_owned(), n)).is_some_and(|&at| at > t)
    }
}

/// Publishes `{"n": 1..=per_channel}` to each channel through the broadcaster,
/// the channels at once and each channel's messages in order, `pause` apart; each
/// with an idempotency key, retried until acknowledged (through a failover).
fn publish_all(
    bc: &Service,
    channels: &[String],
    per_channel: u64,
    pause: Duration,
    log: Arc<Published>,
) -> tokio::task::JoinSet<()> {
    let mut set = tokio::task::JoinSet::new();
    let client = reqwest::Client::new();
    for c in channels {
        let (client, url, c, log) = (
            client.clone(),
            format!("{}/v1/publish", bc.http()),
            c.clone(),
            log.clone(),
        );
        set.spawn(async move {
            for n in 1..=per_channel {
                let body = json!({"channel": c, "message": {"n": n}, "idempotency_key": format!("{c}-{n}")});
                let started = Instant::now();
                log.sent
                    .lock()
                    .expect("publish log")
                    .insert((c.clone(), n), started);
                loop {
                    let sent = client
                        .post(&url)
                        .bearer_auth(API_KEY)
                        .json(&body)
                        .timeout(Duration::from_secs(3))
                        .send()
                        .await;
                    if let Ok(r) = sent
                        && r.status().is_success()
                    {
                        let v: Value = r.json().await.expect("publish reply");
                        assert_eq!(v["offset"], n, "{c} #{n}: {v}");
                        break;
                    }
                    assert!(
                        started.elapsed() < Duration::from_secs(30),
                        "{c} #{n} never acknowledged"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                log.acked.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(pause).await;
            }
        });
    }
    set
}

/// The publishers of [`publish_all`] and what they did.
struct Traffic {
    publishers: tokio::task::JoinSet<()>,
    log: Arc<Published>,
    total: u64,
}

impl Traffic {
    /// Starts publishing and returns once a quarter is acknowledged.
    async fn start(bc: &Service, names: &[String], pause: Duration) -> Self {
        let log = Arc::new(Published::default());
        let publishers = publish_all(bc, names, PER_CHANNEL, pause, log.clone());
        let total = names.len() as u64 * PER_CHANNEL;
        eventually("a quarter of the messages acknowledged", || async {
            (log.acked.load(Ordering::Relaxed) >= total / 4).then_some(())
        })
        .await;
        Self {
            publishers,
            log,
            total,
        }
    }

    /// Waits for every publish to be acknowledged; returns what was published.
    async fn finish(mut self) -> Arc<Published> {
        // Each publish is retried for up to 30 s (`publish_all`): the bound is that, not
        // the harness's per-wait patience.
        while let Some(done) =
            tokio::time::timeout(Duration::from_secs(40), self.publishers.join_next())
                .await
                .expect("a publisher outlived its own deadline")
        {
            done.expect("a publisher failed");
        }
        assert_eq!(self.log.acked.load(Ordering::Relaxed), self.total);
        self.log
    }
}

/// What each client of [`clients`] received, asserted to be every message of its
/// `channels` channels exactly once, in order.
async fn delivered(
    readers: Vec<tokio::task::JoinHandle<Vec<Seen>>>,
    channels: usize,
) -> Vec<Vec<Seen>> {
    let mut all = Vec::new();
    for (i, r) in readers.into_iter().enumerate() {
        // Bounded by the client's own deadline (`collect`), not the harness's
        // per-wait patience: on a loaded machine a failover can hold the dead shard's
        // last messages longer than that.
        let seen = tokio::time::timeout(COLLECT_DEADLINE + Duration::from_secs(5), r)
            .await
            .expect("a client outlived its own deadline")
            .expect("a client failed");
        let mine: Vec<String> = seen
            .iter()
            .map(|s| s.channel.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(mine.len(), channels, "client {i}'s channels");
        assert_exactly_once_in_order(&format!("client {i}"), &seen, &mine, PER_CHANNEL);
        all.push(seen);
    }
    all
}

/// Four clients (two per gateway, half the channels each), collecting.
async fn clients(
    gws: &[Service; 2],
    names: &[String],
    per_channel: u64,
) -> Vec<tokio::task::JoinHandle<Vec<Seen>>> {
    let t = token("fo", &["fo:*"], &[]);
    let halves: Vec<Vec<String>> = names
        .chunks(names.len() / 2)
        .map(<[String]>::to_vec)
        .collect();
    let mut tasks = Vec::new();
    for gw in gws {
        for half in &halves {
            let refs: Vec<&str> = half.iter().map(String::as_str).collect();
            let (ws, ok) = Ws::auth(gw, &t, &refs).await;
            assert_eq!(ok["channels"].as_array().map(Vec::len), Some(half.len()));
            tasks.push(tokio::spawn(collect(ws, half.clone(), per_channel)));
        }
    }
    tasks
}

/// After the run: a client recovering each of `sample` by offset from 5 gets
/// 6..=per_channel and `recovered:true`.
async fn assert_recovers_by_offset(gw: &Service, sample: &[String], per_channel: u64) {
    let t = token("late", &["fo:*"], &[]);
    let (mut ws, _) = Ws::auth(gw, &t, &[]).await;
    for c in sample {
        // The epoch of the channel, from a plain subscribe.
        let s = subscribe_as_a_client(&mut ws, json!({"type": "subscribe", "channel": c})).await;
        assert_eq!(s["type"], "subscribed", "{s}");
        let epoch = s["epoch"].as_str().expect("epoch").to_owned();
        assert_eq!(s["offset"], per_channel, "{s}");
        ws.send(json!({"type": "unsubscribe", "channel": c})).await;
        ws.recv_type("unsubscribed").await;
        let since =
            json!({"type": "subscribe", "channel": c, "since": {"offset": 5, "epoch": epoch}});
        let mut m = subscribe_as_a_client(&mut ws, since).await;
        for want in 6..=per_channel {
            if want > 6 {
                m = ws.recv().await;
            }
            assert_eq!(m["type"], "message", "{c}: {m}");
            assert_eq!(
                (m["offset"].as_u64(), m["message"]["n"].as_u64()),
                (Some(want), Some(want)),
                "{c}"
            );
        }
        let s = ws.recv_type("subscribed").await;
        assert_eq!(s["recovered"], true, "{c}: {s}");
        ws.send(json!({"type": "unsubscribe", "channel": c})).await;
        ws.recv_type("unsubscribed").await;
    }
}

/// Sends a subscribe and returns the first frame that answers it, asking again after
/// `unavailable` as a client does (the gateway could not confirm the subscription in
/// time, which a loaded machine makes likelier; the protocol says retry).
async fn subscribe_as_a_client(ws: &mut Ws, frame: Value) -> Value {
    for _ in 0..20 {
        ws.send(frame.clone()).await;
        let v = ws.recv().await;
        if v["type"] == "error" && v["code"] == "unavailable" {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        return v;
    }
    panic!("the subscription stayed unavailable: {frame}");
}

const PER_CHANNEL: u64 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_under_traffic_loses_nothing() {
    let mut cluster = RedisCluster::start().await;
    let names = channels("fo", 100);
    let victim = cluster.primary_for_slot(slot_of(&names[0])).await;
    let on_victim: HashSet<&str> = names
        .iter()
        .filter(|c| victim.owns(slot_of(c)))
        .map(String::as_str)
        .collect();
    assert!(!on_victim.is_empty() && on_victim.len() < names.len());
    let gws = [
        gateway::gateway(&cluster).spawn().await,
        gateway::gateway(&cluster).spawn().await,
    ];
    let bc = broadcaster::start(&cluster).await;
    let readers = clients(&gws, &names, PER_CHANNEL).await;

    let traffic = Traffic::start(&bc, &names, Duration::from_millis(150)).await;
    let killed_at = Instant::now();
    cluster.kill_primary(victim.port).await;
    let promoted = cluster.wait_promoted(victim.port).await;
    assert_ne!(promoted.port, victim.port);
    let published = traffic.finish().await;

    for (i, seen) in delivered(readers, names.len() / 2).await.iter().enumerate() {
        // Clients on the other shards' channels were not held up by the dead one:
        // their messages kept coming while it was away (from the kill until the
        // first of its messages sent after the kill; one sent before can still
        // arrive just after).
        let back = seen
            .iter()
            .filter(|s| {
                on_victim.contains(s.channel.as_str())
                    && published.sent_after(&s.channel, s.n, killed_at)
            })
            .map(|s| s.at)
            .min();
        if let Some(back) = back {
            eprintln!(
                "client {i}: the dead shard's channels resumed {:?} after the kill",
                back - killed_at
            );
            let meanwhile = seen
                .iter()
                .filter(|s| {
                    s.at > killed_at && s.at < back && !on_victim.contains(s.channel.as_str())
                })
                .count();
            assert!(
                meanwhile > 0,
                "client {i}: no message of another shard arrived while the dead shard was away"
            );
        }
    }
    let sample: Vec<String> = names.iter().take(10).cloned().collect();
    assert_recovers_by_offset(&gws[1], &sample, PER_CHANNEL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_migration_under_traffic_loses_nothing() {
    let cluster = RedisCluster::start().await;
    let names = channels("fo", 100);
    let primaries = cluster.primaries().await;
    let (from, to) = (&primaries[0], &primaries[1]);
    let gws = [
        gateway::gateway(&cluster).spawn().await,
        gateway::gateway(&cluster).spawn().await,
    ];
    let bc = broadcaster::start(&cluster).await;
    let readers = clients(&gws, &names, PER_CHANNEL).await;
    let before: Vec<u16> = {
        let mut ports = Vec::new();
        for c in &names {
            ports.push(cluster.primary_for_slot(slot_of(c)).await.port);
        }
        ports
    };

    let traffic = Traffic::start(&bc, &names, Duration::from_millis(100)).await;
    cluster.reshard(from.port, to.port, 2000).await;
    traffic.finish().await;
    let mut moved = 0;
    for (c, was) in names.iter().zip(&before) {
        if cluster.primary_for_slot(slot_of(c)).await.port != *was {
            moved += 1;
        }
    }
    assert!(moved > 0, "the migration moved none of the test channels");

    delivered(readers, names.len() / 2).await;
    let sample: Vec<String> = names.iter().take(10).cloned().collect();
    assert_recovers_by_offset(&gws[0], &sample, PER_CHANNEL).await;
}
