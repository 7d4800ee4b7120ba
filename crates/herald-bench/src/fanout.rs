//! The fan-out benchmark: N subscribers over C channels, publishers at a rate, and
//! an exact account of what arrived (per-channel offsets make loss and duplication
//! visible), how fast, and at what latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::cli::FanoutArgs;
use crate::client;
use crate::report::{self, latency_json, per_sec};

/// The channel every `--shared-every`th publish goes to; every subscriber is on it.
const SHARED_CHANNEL: &str = "bench:shared";

mod publisher;
mod subscriber;

use publisher::{Plan, PubCtx, http_publisher, ws_publisher};
use subscriber::subscriber;
pub(crate) use subscriber::{Tally, wait_connected};

pub(crate) async fn run(args: FanoutArgs, json_out: bool) -> anyhow::Result<()> {
    if args.raw {
        return crate::raw::client(args, json_out).await;
    }
    if args.channels == 0 || args.subscribers == 0 {
        bail!("--subscribers and --channels must be at least 1");
    }
    let channels: Vec<String> = (0..args.channels).map(|i| format!("bench:{i}")).collect();
    let tally = Arc::new(Tally::new()?);
    let sources = client::sources(&args.target, args.subscribers + args.publishers);
    let tokens = client::tokens(&args.target, args.subscribers + args.publishers.max(1))?;
    let target = Arc::new(args.target.clone());
    let (stop_tx, stop_rx) = watch::channel(false);

    // Subscribers.
    let connected = Arc::new(AtomicU64::new(0));
    let sem = Arc::new(Semaphore::new(args.target.connect_concurrency.max(1)));
    let mut subs = JoinSet::new();
    let setup_started = Instant::now();
    for i in 0..args.subscribers {
        let mut chans = vec![channels[i % channels.len()].clone()];
        if args.shared_every.is_some() {
            chans.push(SHARED_CHANNEL.to_owned());
        }
        let (target, source, token) = (
            target.clone(),
            sources[i % sources.len()],
            tokens[i].clone(),
        );
        let (tally, connected, sem, stop) = (
            tally.clone(),
            connected.clone(),
            sem.clone(),
            stop_rx.clone(),
        );
        subs.spawn(async move {
            let permit = sem.acquire_owned().await.ok();
            let ws =
                client::connect(&target, source, &token, &chans, client::BULK_READ_BUFFER).await?;
            drop(permit);
            connected.fetch_add(1, Ordering::Relaxed);
            subscriber(ws, &tally, stop).await;
            anyhow::Ok(())
        });
    }
    wait_connected(
        &connected,
        args.subscribers as u64,
        &mut subs,
        "subscribers",
    )
    .await?;
    let setup = setup_started.elapsed();

    // Expected deliveries per publish, by channel.
    let per_channel: Vec<u64> = (0..channels.len())
        .map(|c| {
            (0..args.subscribers)
                .filter(|i| i % channels.len() == c)
                .count() as u64
        })
        .collect();
    let expected = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let publishing = Arc::new(AtomicBool::new(true));
    let plan = Arc::new(Plan {
        channels,
        per_channel,
        everyone: args.subscribers as u64,
        shared_every: args.shared_every,
        pad: "x".repeat(args.payload.saturating_sub(40)),
        counter: AtomicU64::new(0),
    });

    let before = report::sample(args.target.pid);
    let me_before = report::sample(Some(std::process::id()));
    let pub_started = Instant::now();
    let deadline = pub_started + Duration::from_secs(args.duration);
    let per_publisher_rate = args.rate as f64 / args.publishers.max(1) as f64;
    let mut pubs = JoinSet::new();
    for j in 0..args.publishers.max(1) {
        let ctx = PubCtx {
            plan: plan.clone(),
            expected: expected.clone(),
            sent: sent.clone(),
            failed: failed.clone(),
            rate: per_publisher_rate,
            // Publisher j runs j/P of an interval behind the first, so P publishers at
            // R/P each make one even stream of R, not a burst of P every P/R seconds.
            started: pub_started
                + Duration::from_secs_f64(if args.rate > 0 {
                    j as f64 / args.rate as f64
                } else {
                    0.0
                }),
            window: args.window.max(1),
            deadline,
        };
        if args.publish == "http" {
            let key = args
                .api_key
                .clone()
                .context("--publish http needs --api-key")?;
            let url = format!("{}/v1/publish", args.api_url.trim_end_matches('/'));
            pubs.spawn(http_publisher(ctx, url, key));
        } else {
            let ws = client::connect(
                &args.target,
                sources[(args.subscribers + j) % sources.len()],
                &tokens[args.subscribers + j],
                &[],
                client::SMALL_READ_BUFFER,
            )
            .await
            .context("publisher connection")?;
            pubs.spawn(ws_publisher(ctx, ws));
        }
    }
    // Progress while publishing.
    let ticker = {
        let (tally, sent, publishing) = (tally.clone(), sent.clone(), publishing.clone());
        tokio::spawn(async move {
            while publishing.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                report::progress(&format!(
                    "published {}  delivered {}",
                    sent.load(Ordering::Relaxed),
                    tally.delivered.load(Ordering::Relaxed)
                ));
            }
        })
    };
    while let Some(r) = pubs.join_next().await {
        r??;
    }
    let publish_time = pub_started.elapsed();
    // Drain: wait until everything expected arrived, or nothing moves for a while.
    let want = expected.load(Ordering::Relaxed);
    let mut last = tally.delivered.load(Ordering::Relaxed);
    let mut still_since = Instant::now();
    let mut finished = Instant::now();
    loop {
        let now_delivered = tally.delivered.load(Ordering::Relaxed);
        if now_delivered >= want {
            finished = Instant::now();
            break;
        }
        if now_delivered != last {
            last = now_delivered;
            still_since = Instant::now();
            finished = still_since;
        } else if still_since.elapsed() > Duration::from_secs(args.drain_timeout) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    publishing.store(false, Ordering::Relaxed);
    ticker.abort();
    eprintln!();
    let after = report::sample(args.target.pid);
    let me_after = report::sample(Some(std::process::id()));
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while subs.join_next().await.is_some() {}
    })
    .await;
    subs.abort_all();

    let delivered = tally.delivered.load(Ordering::Relaxed);
    let active = finished.duration_since(pub_started);
    let cpu = match (before, after) {
        (Some(b), Some(a)) => Some(a.cpu_s - b.cpu_s),
        _ => None,
    };
    let hist = tally.latency.lock().map(|h| h.clone()).ok();
    let out = json!({
        "scenario": {
            "subscribers": args.subscribers, "channels": args.channels, "rate": args.rate,
            "duration_s": args.duration, "payload": args.payload, "publish": args.publish,
            "publishers": args.publishers, "shared_every": args.shared_every,
        },
        "publishes": {"sent": sent.load(Ordering::Relaxed), "failed": failed.load(Ordering::Relaxed),
                      "per_sec": per_sec(sent.load(Ordering::Relaxed), publish_time)},
        "deliveries": {
            "expected": want, "delivered": delivered,
            "lost": want.saturating_sub(delivered),
            "duplicates": tally.duplicates.load(Ordering::Relaxed),
            "out_of_order": tally.out_of_order.load(Ordering::Relaxed),
            "per_sec": per_sec(delivered, active),
        },
        "latency_ms": hist.as_ref().map(latency_json),
        "connect": {"subscribers": args.subscribers, "seconds": (setup.as_secs_f64() * 1000.0).round() / 1000.0,
                    "per_sec": per_sec(args.subscribers as u64, setup),
                    "disconnected": tally.disconnected.load(Ordering::Relaxed)},
        "gateway": gateway_json(after, cpu, delivered),
        "client": client_json(me_before, me_after, delivered),
    });
    report::print(&out, json_out);
    Ok(())
}

/// The gateway's RSS and CPU per delivered message, when its pid is known.
pub(crate) fn gateway_json(
    after: Option<report::ProcSample>,
    cpu_s: Option<f64>,
    delivered: u64,
) -> serde_json::Value {
    json!({
        "rss_mib": after.map(|a| (a.rss_bytes as f64 / 1048576.0 * 10.0).round() / 10.0),
        "cpu_s": cpu_s.map(|c| (c * 100.0).round() / 100.0),
        "cpu_us_per_delivery": cpu_s.filter(|_| delivered > 0).map(|c| (c * 1e6 / delivered as f64 * 1000.0).round() / 1000.0),
    })
}

/// The bench's own CPU per delivery: with both on one machine, the reader is
/// often the bottleneck, and this shows when.
pub(crate) fn client_json(
    before: Option<report::ProcSample>,
    after: Option<report::ProcSample>,
    delivered: u64,
) -> serde_json::Value {
    let cpu = match (before, after) {
        (Some(b), Some(a)) if delivered > 0 => Some(a.cpu_s - b.cpu_s),
        _ => None,
    };
    json!({
        "cpu_s": cpu.map(|c| (c * 100.0).round() / 100.0),
        "cpu_us_per_delivery": cpu.map(|c| (c * 1e6 / delivered as f64 * 1000.0).round() / 1000.0),
    })
}
