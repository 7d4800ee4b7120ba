//! What this gateway records for the application's backend (`HERALD_WEBHOOK_EVENTS`):
//! the members writer reports channels occupied and vacated (the first member
//! anywhere, the last one gone: the presence scripts say how many are left) and
//! members added and removed; connections report client publishes on
//! `HERALD_WEBHOOK_PUBLISH_CHANNELS`. A writer task appends them to the webhook
//! stream in batches; the broadcaster delivers them.

use std::collections::{HashSet, VecDeque};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use herald_common::engine::Engine;
use herald_common::keys::Keys;
use herald_common::webhooks;
use herald_proto::glob;
use herald_proto::webhook::{Event, EventKind};

use crate::metrics::Metrics;

/// Most events one write appends.
const MAX_BATCH: usize = 512;
/// Events kept while the engine is unreachable; beyond, the oldest are dropped.
const MAX_PENDING: usize = 100_000;
/// Pause before retrying a failed write.
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Which events to record, and where they go.
#[derive(Debug)]
pub(crate) struct Webhooks {
    kinds: HashSet<EventKind>,
    publish_channels: Vec<String>,
    tx: mpsc::UnboundedSender<Event>,
}

impl Webhooks {
    pub(crate) fn new(
        kinds: &[EventKind],
        publish_channels: Vec<String>,
    ) -> (Self, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let hooks = Self {
            kinds: kinds.iter().copied().collect(),
            publish_channels,
            tx,
        };
        (hooks, rx)
    }

    pub(crate) fn wants(&self, kind: EventKind) -> bool {
        self.kinds.contains(&kind)
    }

    /// Whether a client publish on `channel` is recorded.
    pub(crate) fn wants_publish(&self, channel: &str) -> bool {
        self.wants(EventKind::ClientPublish) && glob::any_matches(&self.publish_channels, channel)
    }

    /// Queues `event` if its kind is recorded.
    pub(crate) fn send(&self, event: Event) {
        if self.wants(event.kind) {
            let _ = self.tx.send(event);
        }
    }
}

/// Appends queued events until `token` is cancelled, then writes what is left.
pub(crate) async fn run(
    engine: Engine,
    keys: Keys,
    metrics: Metrics,
    mut events: mpsc::UnboundedReceiver<Event>,
    token: CancellationToken,
) {
    if matches!(engine, Engine::Memory(_)) {
        tracing::info!("webhook events are not recorded on the in-memory engine (they need Redis)");
    }
    let mut pending: VecDeque<Event> = VecDeque::new();
    loop {
        tokio::select! {
            () = token.cancelled() => break,
            Some(e) = events.recv() => {
                pending.push_back(e);
                while let Ok(e) = events.try_recv() {
                    pending.push_back(e);
                }
                if !write(&engine, &keys, &metrics, &mut pending).await {
                    tokio::select! {
                        () = token.cancelled() => break,
                        () = tokio::time::sleep(RETRY_AFTER) => {}
                    }
                }
            }
        }
    }
    while let Ok(e) = events.try_recv() {
        pending.push_back(e);
    }
    write(&engine, &keys, &metrics, &mut pending).await;
}

/// Writes `pending` in batches; false (with the rest kept) when the engine failed.
async fn write(
    engine: &Engine,
    keys: &Keys,
    metrics: &Metrics,
    pending: &mut VecDeque<Event>,
) -> bool {
    if pending.len() > MAX_PENDING {
        let dropped = pending.len() - MAX_PENDING;
        pending.drain(..dropped);
        tracing::warn!(
            dropped,
            "webhook events dropped: the engine was unreachable for long"
        );
    }
    while !pending.is_empty() {
        let n = pending.len().min(MAX_BATCH);
        let batch: Vec<Event> = pending.iter().take(n).cloned().collect();
        match webhooks::record(engine, keys, &batch).await {
            Ok(()) => {
                metrics.webhook_events.inc_by(n as u64);
                pending.drain(..n);
            }
            Err(e) => {
                metrics.redis_errors.inc();
                tracing::debug!(cause = %e, queued = pending.len(), "webhook events: write failed; retrying");
                return false;
            }
        }
    }
    true
}
