//! Many channels published to through the broadcaster, for what publishing costs
//! Redis: publishes/s, Redis CPU per publish summed over the nodes measured, and how
//! the publish-script calls spread over them (on a cluster, over the shards).
//!
//! Each node's CPU (`used_cpu_user` + `used_cpu_sys`) and publish-script calls
//! (`cmdstat_evalsha` — every publish is one) are read from `INFO` before and after.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde_json::json;

use crate::cli::PublishArgs;
use crate::report;

/// One node's counters.
#[derive(Debug, Clone, Copy, Default)]
struct NodeStats {
    cpu_s: f64,
    evalsha_calls: u64,
}

async fn node_stats(url: &str) -> anyhow::Result<NodeStats> {
    let client = redis::Client::open(url).with_context(|| format!("redis url {url}"))?;
    let mut conn = tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    .context("connecting to redis timed out")??;
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .arg("commandstats")
        .query_async(&mut conn)
        .await?;
    let mut s = NodeStats::default();
    for line in info.lines() {
        if let Some(v) = line
            .strip_prefix("used_cpu_user:")
            .or_else(|| line.strip_prefix("used_cpu_sys:"))
        {
            s.cpu_s += v.trim().parse::<f64>().unwrap_or(0.0);
        } else if let Some(rest) = line.strip_prefix("cmdstat_evalsha:") {
            s.evalsha_calls = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        }
    }
    Ok(s)
}

async fn all_stats(urls: &[String]) -> anyhow::Result<Vec<NodeStats>> {
    let mut out = Vec::with_capacity(urls.len());
    for u in urls {
        out.push(node_stats(u).await?);
    }
    Ok(out)
}

pub(crate) async fn run(args: PublishArgs, json_out: bool) -> anyhow::Result<()> {
    let url = format!("{}/v1/publish", args.api_url.trim_end_matches('/'));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(10))
        .build()?;
    let message = "x".repeat(args.payload);
    let before = all_stats(&args.redis).await?;
    let broadcaster_before = report::sample(args.pid);

    let next = Arc::new(AtomicU64::new(0));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency.max(1) {
        let (http, url, key) = (http.clone(), url.clone(), args.api_key.clone());
        let (next, sent, failed, stop) = (next.clone(), sent.clone(), failed.clone(), stop.clone());
        let (channels, message) = (args.channels.max(1) as u64, message.clone());
        workers.spawn(async move {
            let mut latency = Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3)
                .expect("histogram bounds");
            while !stop.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let body =
                    json!({"channel": format!("bench:{}", i % channels), "message": message});
                let t = Instant::now();
                let ok = match http.post(&url).bearer_auth(&key).json(&body).send().await {
                    Ok(r) => r.status().is_success(),
                    Err(_) => false,
                };
                if ok {
                    sent.fetch_add(1, Ordering::Relaxed);
                    let _ = latency.record(t.elapsed().as_nanos() as u64);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            latency
        });
    }
    let deadline = Duration::from_secs(args.duration);
    while started.elapsed() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        report::progress(&format!("published {}", sent.load(Ordering::Relaxed)));
    }
    stop.store(true, Ordering::Relaxed);
    let mut latency = Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3)?;
    while let Some(h) = workers.join_next().await {
        latency.add(h?)?;
    }
    let elapsed = started.elapsed();
    eprintln!();
    let after = all_stats(&args.redis).await?;
    let broadcaster_after = report::sample(args.pid);

    let published = sent.load(Ordering::Relaxed);
    let nodes: Vec<(f64, u64)> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| {
            (
                a.cpu_s - b.cpu_s,
                a.evalsha_calls.saturating_sub(b.evalsha_calls),
            )
        })
        .collect();
    let cpu_total: f64 = nodes.iter().map(|(c, _)| c).sum();
    let calls_total: u64 = nodes.iter().map(|(_, n)| n).sum();
    let mean = calls_total as f64 / nodes.len().max(1) as f64;
    // The largest departure of one node's share from an even spread, in %.
    let spread_pct = nodes
        .iter()
        .map(|(_, n)| ((*n as f64 - mean) / mean.max(1.0) * 100.0).abs())
        .fold(0.0_f64, f64::max);
    let round = |x: f64, d: f64| (x * d).round() / d;
    let out = json!({
        "scenario": {
            "channels": args.channels, "concurrency": args.concurrency,
            "duration_s": args.duration, "payload": args.payload, "redis_nodes": args.redis.len(),
        },
        "publishes": {
            "acknowledged": published, "failed": failed.load(Ordering::Relaxed),
            "per_sec": report::per_sec(published, elapsed),
        },
        "latency_ms": report::latency_json(&latency),
        "redis": {
            "cpu_s": round(cpu_total, 100.0),
            "cpu_us_per_publish": (published > 0).then(|| round(cpu_total * 1e6 / published as f64, 100.0)),
            "script_calls": calls_total,
            "max_deviation_from_even_pct": round(spread_pct, 10.0),
            "nodes": nodes.iter().zip(&args.redis).map(|((cpu, n), url)| json!({
                "url": url, "cpu_s": round(*cpu, 100.0), "script_calls": n,
                "share_pct": round(*n as f64 * 100.0 / calls_total.max(1) as f64, 10.0),
            })).collect::<Vec<_>>(),
        },
        "broadcaster": {
            "cpu_us_per_publish": report::cpu_us_per(broadcaster_before, broadcaster_after, published),
        },
    });
    report::print(&out, json_out);
    Ok(())
}
