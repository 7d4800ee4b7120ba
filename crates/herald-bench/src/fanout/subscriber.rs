//! The subscribers' side: connecting them, and what each reads (per-channel
//! offsets for loss, duplicates and reordering; latency samples).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use super::SHARED_CHANNEL;
use crate::client::{self, now_ns, number_after};
use crate::report;

/// Latency samples a subscriber buffers before taking the shared histogram's lock.
const SAMPLE_BATCH: usize = 256;

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
pub(super) async fn subscriber(mut ws: client::Ws, tally: &Tally, mut stop: watch::Receiver<bool>) {
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
