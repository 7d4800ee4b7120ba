//! Writes this gateway's share of channel presence and keeps everyone's honest.
//!
//! Connections queue a join when a subscribe succeeds and a leave when they
//! unsubscribe or end; this task writes what is queued as one pipeline (a quiet
//! gateway writes each change at once, a busy one batches whatever piled up
//! meanwhile), in order, retrying what failed. Once a second it reads the node
//! registry: a gateway it saw alive that went silent for
//! [`herald_common::presence::DEAD_AFTER_MS`] is dead, and its members leave every
//! channel this gateway serves (each leave published once, whoever removes it).
//! It also notices when this gateway was itself taken for dead (its beats stalled)
//! and writes its members back.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use herald_common::presence::{Applied, Change, Presence};
use herald_proto::presence::{EventKind, Member};
use herald_proto::time::now_ms;
use herald_proto::webhook::{self, Event};

use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::webhooks::Webhooks;

/// How often the registry is read for dead nodes.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How often the TTL of the presence of this gateway's channels is refreshed
/// (far inside `herald_common::presence::KEY_TTL_MS`).
const TOUCH_EVERY: Duration = Duration::from_secs(60);
/// Most changes in one pipeline.
const MAX_BATCH: usize = 1024;

/// What connections queue for the writer.
#[derive(Debug)]
pub(crate) enum Op {
    Change(Change),
    /// Answered once everything queued before it was written (or failed to be).
    Barrier(oneshot::Sender<()>),
}

/// What the members writer works with.
pub(crate) struct Members {
    pub(crate) presence: Presence,
    pub(crate) node: String,
    pub(crate) hub: Arc<Hub>,
    pub(crate) metrics: Metrics,
    pub(crate) hooks: Arc<Webhooks>,
}

/// Runs until `token` is cancelled, then writes what is still queued.
pub(crate) async fn run(
    m: Members,
    mut changes: mpsc::UnboundedReceiver<Op>,
    token: CancellationToken,
) {
    let Members {
        presence,
        hub,
        metrics,
        ..
    } = &m;
    let mut pending: VecDeque<Change> = VecDeque::new();
    let mut seen_live: HashSet<String> = HashSet::new();
    let mut check = tokio::time::interval(CHECK_EVERY);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut touch = tokio::time::interval(TOUCH_EVERY);
    touch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = token.cancelled() => break,
            Some(op) = changes.recv() => {
                let mut barriers = Vec::new();
                let mut next = Some(op);
                while let Some(op) = next {
                    match op {
                        Op::Change(c) => pending.push_back(c),
                        Op::Barrier(tx) => barriers.push(tx),
                    }
                    next = changes.try_recv().ok();
                }
                write(&m, &mut pending).await;
                for b in barriers {
                    let _ = b.send(());
                }
            }
            _ = check.tick() => {
                // Whatever failed before goes first.
                write(&m, &mut pending).await;
                if let Err(e) = check_nodes(&m, &mut seen_live, &mut pending).await {
                    metrics.redis_errors.inc();
                    tracing::debug!(cause = %e, "presence: cannot check the node registry");
                }
            }
            _ = touch.tick() => {
                if presence.touch(&hub.channel_names()).await.is_err() {
                    metrics.redis_errors.inc();
                }
            }
        }
    }
    // The connections have ended (their leaves are queued): write them out.
    while let Ok(op) = changes.try_recv() {
        if let Op::Change(c) = op {
            pending.push_back(c);
        }
    }
    write(&m, &mut pending).await;
    if !pending.is_empty() {
        tracing::warn!(
            left = pending.len(),
            "presence: leaves not written at shutdown; other gateways remove them once this node is silent"
        );
    }
}

/// Writes `pending` in batches, in order; what fails stays for the next try.
async fn write(m: &Members, pending: &mut VecDeque<Change>) {
    let Members {
        presence,
        node,
        metrics,
        hooks,
        ..
    } = m;
    while !pending.is_empty() {
        let n = pending.len().min(MAX_BATCH);
        let batch: Vec<Change> = pending.iter().take(n).cloned().collect();
        match presence.apply(node, &batch).await {
            Ok(applied) => {
                metrics.presence_writes.inc_by(n as u64);
                pending.drain(..n);
                for (c, a) in batch.iter().zip(applied) {
                    report(hooks, c, a);
                }
            }
            Err(e) => {
                metrics.redis_errors.inc();
                tracing::debug!(cause = %e, queued = pending.len(), "presence: write failed; retrying");
                return;
            }
        }
    }
}

/// The webhook events of one applied join or leave: the member, and the channel's
/// first arrival or last departure anywhere.
fn report(hooks: &Webhooks, c: &Change, a: Applied) {
    use webhook::EventKind as K;
    if !a.changed {
        return;
    }
    let (member_kind, edge_kind, edge) = match c.kind {
        EventKind::Join => (K::MemberAdded, K::ChannelOccupied, a.remaining == 1),
        EventKind::Leave => (K::MemberRemoved, K::ChannelVacated, a.remaining == 0),
    };
    let at = now_ms();
    if hooks.wants(member_kind)
        && let Ok(member) = serde_json::from_str::<Member>(&c.member)
    {
        hooks.send(Event::member(member_kind, &c.channel, &member, at));
    }
    if edge {
        hooks.send(Event::channel(edge_kind, &c.channel, at));
    }
}

/// Reaps nodes that died since the last check (in this node's channels and those
/// the dead node last reported), and rewrites this node's members if another
/// gateway reaped them.
async fn check_nodes(
    m: &Members,
    seen_live: &mut HashSet<String>,
    pending: &mut VecDeque<Change>,
) -> redis::RedisResult<()> {
    let Members {
        presence,
        node,
        hub,
        metrics,
        hooks,
    } = m;
    let alive = presence.liveness().await?;
    let newly_dead: Vec<String> = alive
        .dead
        .iter()
        .filter(|n| n.as_str() != node && seen_live.remove(n.as_str()))
        .cloned()
        .collect();
    seen_live.extend(alive.live.iter().cloned());
    if !newly_dead.is_empty() {
        let mut channels: HashSet<String> =
            hub.channel_names().iter().map(|c| c.to_string()).collect();
        for dead in &newly_dead {
            channels.extend(presence.node_channels(dead).await?);
        }
        for c in &channels {
            let reaped = presence.reap(c, &newly_dead).await?;
            let at = now_ms();
            if hooks.wants(webhook::EventKind::MemberRemoved) {
                for r in &reaped.removed {
                    if let Ok(member) = serde_json::from_str::<Member>(r) {
                        hooks.send(Event::member(
                            webhook::EventKind::MemberRemoved,
                            c,
                            &member,
                            at,
                        ));
                    }
                }
            }
            if !reaped.removed.is_empty() && reaped.remaining == 0 {
                hooks.send(Event::channel(webhook::EventKind::ChannelVacated, c, at));
            }
        }
        for dead in &newly_dead {
            presence.mark_reaped(dead).await?;
            metrics.presence_reaped_nodes.inc();
            tracing::info!(node = %dead, channels = channels.len(), "presence: a dead node's members left");
        }
    }
    if presence.take_reaped(node).await? {
        let mut n = 0;
        for c in hub.all_conns() {
            let chans = c.channels.lock().map(|c| c.clone()).unwrap_or_default();
            let conn_id: Arc<str> = Arc::from(c.conn_id.as_str());
            for channel in chans {
                pending.push_back(Change {
                    channel: Arc::from(channel),
                    conn_id: conn_id.clone(),
                    member: c.member(),
                    kind: EventKind::Join,
                });
                n += 1;
            }
        }
        tracing::warn!(
            members = n,
            "presence: this gateway was taken for dead (its beats stalled); writing its members again"
        );
        write(m, pending).await;
    }
    Ok(())
}
