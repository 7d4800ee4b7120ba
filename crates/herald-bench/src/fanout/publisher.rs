//! The publishers' side: which channel each publish goes to, pacing (staggered so
//! that together the publishers send one even stream) and the acknowledgements.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use super::SHARED_CHANNEL;
use crate::client::{self, now_ns, number_after};

/// Which channel each publish goes to and how many deliveries it owes.
#[derive(Debug)]
pub(super) struct Plan {
    pub(super) channels: Vec<String>,
    pub(super) per_channel: Vec<u64>,
    pub(super) everyone: u64,
    pub(super) shared_every: Option<u64>,
    pub(super) pad: String,
    pub(super) counter: AtomicU64,
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

pub(super) struct PubCtx {
    pub(super) plan: Arc<Plan>,
    pub(super) expected: Arc<AtomicU64>,
    pub(super) sent: Arc<AtomicU64>,
    pub(super) failed: Arc<AtomicU64>,
    /// Publishes per second for this publisher (0: unpaced).
    pub(super) rate: f64,
    /// When this publisher's schedule starts (staggered between publishers).
    pub(super) started: Instant,
    pub(super) window: usize,
    pub(super) deadline: Instant,
}

impl PubCtx {
    /// Accounts for a reply to a publish: an `ack` makes its deliveries expected, an
    /// `error` counts as failed. Returns 1 if the reply settled a publish.
    fn settle(&self, text: &str, owed: &mut HashMap<u64, u64>) -> u64 {
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

pub(super) async fn ws_publisher(ctx: PubCtx, mut ws: client::Ws) -> anyhow::Result<()> {
    let (mut done, mut acked) = (0u64, 0u64);
    let mut owed: HashMap<u64, u64> = HashMap::new();
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

pub(super) async fn http_publisher(ctx: PubCtx, url: String, key: String) -> anyhow::Result<()> {
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
