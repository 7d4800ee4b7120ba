//! The soak (ignored; `just soak`): minutes of mixed load, churn and Redis restarts
//! against two gateways and a broadcaster, ending with a report.

mod subscriber;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use super::chaos::gateway;
use crate::load_client::{Client, PROMPT, position};
use crate::{
    API_KEY, Redis, ServiceBuilder, env_u64, eventually, http_json, patience, rss_kib, token,
    within,
};

use subscriber::{END, recovering_subscriber};

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
    let gw1 = gateway(&redis).process().spawn().await;
    let gw2 = gateway(&redis).process().spawn().await;
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
