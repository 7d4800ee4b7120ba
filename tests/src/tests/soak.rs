//! The soak (ignored; `just soak`): minutes of mixed load, churn and Redis restarts
//! against two gateways and a broadcaster, ending with a report.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{Value, json};

use super::chaos::gateway;
use crate::load_client::{Client, Next, PROMPT, position};
use crate::{
    API_KEY, Redis, ServiceBuilder, env_u64, eventually, http_json, patience, rss_kib, token,
    within,
};

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

/// The message published on every channel at the end; delivery follows offset
/// order, so a subscriber that has it has everything acknowledged before it.
const END: &str = "end";

/// One subscriber that reconnects now and then (to either gateway) and recovers
/// every channel by offset. It counts itself in `subscribed` once it first holds
/// every channel; once `stop` is set (after [`END`] was published everywhere) it
/// finishes when it has received every [`END`], or after the harness's patience.
async fn recovering_subscriber(
    urls: Vec<String>,
    token: String,
    channels: Vec<String>,
    subscribed: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    seed: u64,
) -> SubLog {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut log = SubLog::default();
    // The epoch currently followed per channel.
    let mut current: HashMap<String, String> = HashMap::new();
    let mut id = 0u64;
    let mut counted = false;
    let mut ended: BTreeSet<String> = BTreeSet::new();
    let mut finish_by: Option<Instant> = None;
    let mut finished = |ended: &BTreeSet<String>| {
        if !stop.load(Ordering::Relaxed) {
            return false;
        }
        let by = *finish_by.get_or_insert_with(|| Instant::now() + patience());
        ended.len() == channels.len() || Instant::now() > by
    };
    'connection: while !finished(&ended) {
        let url = &urls[rng.random_range(0..urls.len())];
        let Ok((mut c, _)) = Client::auth(url, &token, &[]).await else {
            // A pause before trying again (a gateway may be restarting its Redis).
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
            if pending.is_empty() && !counted {
                counted = true;
                subscribed.fetch_add(1, Ordering::Relaxed);
            }
            if pending.is_empty() && finished(&ended) {
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
                    if v["message"] == END {
                        ended.insert(v["channel"].as_str().unwrap_or_default().to_owned());
                    }
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
                    // A pause before trying again, while Redis comes back.
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
    let subscribed = Arc::new(AtomicUsize::new(0));
    for k in 0..4u64 {
        subscribers.push(tokio::spawn(recovering_subscriber(
            urls.clone(),
            t.clone(),
            channels.clone(),
            subscribed.clone(),
            stop_sub.clone(),
            k,
        )));
    }
    eventually("every subscriber to hold every channel", || async {
        (subscribed.load(Ordering::Relaxed) == subscribers.len()).then_some(())
    })
    .await;

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
                // The publisher's pace.
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
                // The HTTP publisher's pace.
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
                // The churn's pace: about ten connections a second.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            n
        })
    };

    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    // The memory baseline is taken under load, once its connections and buffers exist.
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
            // The outage: Redis stays down this long.
            tokio::time::sleep(Duration::from_secs(2)).await;
            redis.restart().await;
            restarts += 1;
            next_restart = Instant::now() + restart_every;
        }
        // The period of the memory samples and restart checks.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop_pub.store(true, Ordering::Relaxed);
    for p in publishers {
        within("a publisher to stop", p).await.expect("publisher");
    }
    let churned = within("churn to stop", churn).await.expect("churn");
    // The end marker on every channel, acknowledged like the rest; the subscribers
    // finish once they have every one (or report what they lack).
    for ch in &channels {
        let ack = eventually("the end marker to be published", || async {
            let (status, body) = http_json(
                Method::POST,
                &format!("{}/v1/publish", bc.http()),
                Some(API_KEY),
                Some(json!({"channel":ch,"message":END})),
            )
            .await;
            (status == 200).then_some(body)
        })
        .await;
        let (e, o) = position(&ack).expect("position");
        acks.lock().expect("acks").push((ch.clone(), e, o));
    }
    stop_sub.store(true, Ordering::Relaxed);
    let mut logs = Vec::new();
    for s in subscribers {
        // A subscriber gives up waiting for the end markers after the patience.
        let log = tokio::time::timeout(patience() + PROMPT * 2, s)
            .await
            .expect("a subscriber to finish")
            .expect("subscriber");
        logs.push(log);
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
