//! The fan-out benchmark: N subscribers over C channels, publishers at a rate, and
//! an exact account of what arrived (per-channel offsets make loss and duplication
//! visible), how fast, and at what latency.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::cli::FanoutArgs;
use crate::client::{self, now_ns, number_after};
use crate::report::{self, latency_json, per_sec};

/// Latency samples a subscriber buffers before taking the shared histogram's lock.
const SAMPLE_BATCH: usize = 256;
const SHARED_CHANNEL: &str = "bench:shared";

/// What every subscriber adds to.
#[derive(Debug)]
pub(crate) struct Tally {
    pub(crate) delivered: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) out_of_order: AtomicU64,
    pub(crate) disconnected: AtomicU64,
    pub(crate) latency: Mutex<Histogram<u64>>,
}

impl Tally {
    pub(crate) fn new() -> anyhow::Result<Self> {
        Ok(Self {
            delivered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            disconnected: AtomicU64::new(0),
            latency: Mutex::new(Histogram::new_with_bounds(1_000, 120_000_000_000, 3)?),
        })
    }

    pub(crate) fn record(&self, samples: &mut Vec<u64>) {
        if let Ok(mut h) = self.latency.lock() {
            for s in samples.drain(..) {
                let _ = h.record(s.clamp(1_000, 120_000_000_000));
            }
        }
    }
}

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

/// Waits until `target` connections are up, failing on the first connection error.
pub(crate) async fn wait_connected(
    connected: &AtomicU64,
    target: u64,
    tasks: &mut JoinSet<anyhow::Result<()>>,
    what: &str,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    while connected.load(Ordering::Relaxed) < target {
        tokio::select! {
            _ = tick.tick() => {
                report::progress(&format!("connecting {what}: {}/{target}", connected.load(Ordering::Relaxed)));
                if started.elapsed() > Duration::from_secs(600) {
                    bail!("gave up connecting {what} after 10 minutes");
                }
            }
            Some(done) = tasks.join_next() => {
                match done {
                    Ok(Err(e)) => bail!("a connection failed: {e:#}"),
                    Err(e) => bail!("a connection task failed: {e}"),
                    Ok(Ok(())) => {}
                }
            }
        }
    }
    report::progress(&format!("connected {target} {what}"));
    eprintln!();
    Ok(())
}

/// Reads frames until told to stop, checking per-channel offsets and sampling latency.
async fn subscriber(mut ws: client::Ws, tally: &Tally, mut stop: watch::Receiver<bool>) {
    let mut own_last = 0u64;
    let mut shared_last = 0u64;
    let mut samples = Vec::with_capacity(SAMPLE_BATCH);
    // One stop future for the whole run: a fresh `changed()` per frame would take the
    // watch's waiter lock twice per delivery and slow the reader being measured.
    let stopped = stop.changed();
    tokio::pin!(stopped);
    loop {
        let msg = tokio::select! {
            m = ws.next() => m,
            _ = &mut stopped => break,
        };
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(_)) => continue,
            _ => {
                tally.disconnected.fetch_add(1, Ordering::Relaxed);
                break;
            }
        };
        if !text.starts_with(r#"{"type":"message""#) {
            continue;
        }
        let now = now_ns();
        let last = if text.contains(SHARED_CHANNEL) {
            &mut shared_last
        } else {
            &mut own_last
        };
        if let Some(off) = number_after(&text, r#""offset":"#) {
            if off <= *last {
                tally.duplicates.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if *last != 0 && off != *last + 1 {
                tally.out_of_order.fetch_add(1, Ordering::Relaxed);
            }
            *last = off;
        }
        tally.delivered.fetch_add(1, Ordering::Relaxed);
        if let Some(t) = number_after(&text, r#""t":"#) {
            samples.push(now.saturating_sub(t));
            if samples.len() >= SAMPLE_BATCH {
                tally.record(&mut samples);
            }
        }
    }
    tally.record(&mut samples);
}

/// Which channel each publish goes to and how many deliveries it owes.
#[derive(Debug)]
struct Plan {
    channels: Vec<String>,
    per_channel: Vec<u64>,
    everyone: u64,
    shared_every: Option<u64>,
    pad: String,
    counter: AtomicU64,
}

impl Plan {
    /// The next publish: (channel, expected deliveries, message JSON).
    fn next(&self) -> (&str, u64, String) {
        let k = self.counter.fetch_add(1, Ordering::Relaxed);
        let msg = format!(r#"{{"t":{},"pad":"{}"}}"#, now_ns(), self.pad);
        match self.shared_every {
            Some(every) if every > 0 && k.is_multiple_of(every) => {
                (SHARED_CHANNEL, self.everyone, msg)
            }
            _ => {
                let c = (k as usize) % self.channels.len();
                (&self.channels[c], self.per_channel[c], msg)
            }
        }
    }
}

struct PubCtx {
    plan: Arc<Plan>,
    expected: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    /// Publishes per second for this publisher (0: unpaced).
    rate: f64,
    /// When this publisher's schedule starts (staggered between publishers).
    started: Instant,
    window: usize,
    deadline: Instant,
}

impl PubCtx {
    /// Accounts for a reply to a publish: an `ack` makes its deliveries expected, an
    /// `error` counts as failed. Returns 1 if the reply settled a publish.
    fn settle(&self, text: &str, owed: &mut std::collections::HashMap<u64, u64>) -> u64 {
        let id = number_after(text, r#""id":"#);
        if text.starts_with(r#"{"type":"ack""#) {
            if let Some(owes) = id.and_then(|id| owed.remove(&id)) {
                self.expected.fetch_add(owes, Ordering::Relaxed);
                self.sent.fetch_add(1, Ordering::Relaxed);
            }
            1
        } else if text.contains(r#""type":"error""#) {
            self.failed.fetch_add(1, Ordering::Relaxed);
            if let Some(id) = id {
                owed.remove(&id);
            }
            1
        } else {
            0
        }
    }

    /// How many publishes are due by now at the configured rate.
    fn due(&self, done: u64) -> u64 {
        if self.rate <= 0.0 {
            return u64::MAX;
        }
        let Some(elapsed) = Instant::now().checked_duration_since(self.started) else {
            return 0;
        };
        let should = (elapsed.as_secs_f64() * self.rate) as u64 + 1;
        should.saturating_sub(done)
    }
}

async fn ws_publisher(ctx: PubCtx, mut ws: client::Ws) -> anyhow::Result<()> {
    let (mut done, mut acked) = (0u64, 0u64);
    let mut owed: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while Instant::now() < ctx.deadline {
        let room = ctx.window.saturating_sub((done - acked) as usize) as u64;
        let n = ctx.due(done).min(room);
        for _ in 0..n {
            let (channel, owes, message) = ctx.plan.next();
            let id = done;
            let frame = format!(
                r#"{{"type":"broadcast","channel":"{channel}","message":{message},"id":{id}}}"#
            );
            ws.feed(Message::text(frame)).await?;
            owed.insert(id, owes);
            done += 1;
        }
        if n > 0 {
            ws.flush().await?;
        }
        // Read acks without blocking the pacing for long.
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => acked += ctx.settle(&t, &mut owed),
                Some(Ok(_)) => {}
                _ => bail!("a publisher connection closed"),
            },
            _ = tick.tick() => {}
        }
    }
    // Collect the outstanding acks.
    let wait_until = Instant::now() + Duration::from_secs(10);
    while acked < done && Instant::now() < wait_until {
        match tokio::time::timeout(Duration::from_secs(1), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => acked += ctx.settle(&t, &mut owed),
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    Ok(())
}

async fn http_publisher(ctx: PubCtx, url: String, key: String) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        // Keep a connection per request in flight: a smaller idle pool closes and
        // reopens connections all the time, and the target pays for the handshakes.
        .pool_max_idle_per_host(ctx.window)
        .timeout(Duration::from_secs(5))
        .build()?;
    // Parsed once, not per request.
    let url = reqwest::Url::parse(&url).with_context(|| format!("{url} is not a URL"))?;
    let mut done = 0u64;
    let mut inflight = JoinSet::new();
    while Instant::now() < ctx.deadline {
        while inflight.len() >= ctx.window {
            inflight.join_next().await;
        }
        if ctx.due(done) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        let (channel, owes, message) = ctx.plan.next();
        let body = format!(r#"{{"channel":"{channel}","message":{message}}}"#);
        let req = http
            .post(url.clone())
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(body);
        let (expected, sent, failed) = (ctx.expected.clone(), ctx.sent.clone(), ctx.failed.clone());
        inflight.spawn(async move {
            match req.send().await {
                Ok(r) if r.status().is_success() => {
                    expected.fetch_add(owes, Ordering::Relaxed);
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        done += 1;
    }
    while inflight.join_next().await.is_some() {}
    Ok(())
}
