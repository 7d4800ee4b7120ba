//! The Pub/Sub driver: one task per gateway that owns the engine's subscription
//! (a dedicated connection on Redis). It SUBSCRIBEs to exactly the channels with local subscribers, hands
//! each message to the hub, and keeps delivery gapless and in order per channel:
//! it tracks the last offset seen, fills a gap from history, drops duplicates, and
//! after any reconnect catches every channel up from history.
//!
//! It also proves its own connection end to end: every probe interval it publishes
//! a nonce to this node's probe channel and expects it back. A connection that is
//! up but silent (wedged) is torn down and replaced, and the node reports not-ready
//! meanwhile.
//!
//! On a Redis Cluster the session is the one of [`cluster`]: shard channels, one
//! probe per shard, and a failed shard caught up on its own while the others
//! deliver on.

mod cluster;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use herald_common::backoff::{self, Backoff};
use herald_common::engine::Engine;
use herald_common::keys::Keys;
use herald_common::publish::Publisher;
use herald_common::runtime::Gate;
use herald_common::store;
use herald_proto::client::Since;
use herald_proto::control::{Control, ControlReply};
use herald_proto::disconnect::{AppDisconnect, Disconnect, DisconnectCode};
use herald_proto::envelope;
use herald_proto::presence;

use crate::hub::{Cmd, ConnCommand, Delivery, Hub};
use crate::metrics::Metrics;

/// Longest wait for a Pub/Sub connection or a SUBSCRIBE reply.
const PUBSUB_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest pause between reconnects: shorter than the shared default, as
/// every second without Pub/Sub is a second of undelivered messages.
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Where a channel's delivery stands on this node.
#[derive(Debug, Clone)]
struct Position {
    epoch: Box<str>,
    offset: u64,
    /// A catch-up or gap fill failed (Redis did not answer): messages past
    /// `offset` may be missing, so live ones are held back (they are in history)
    /// and the channel is caught up again every probe tick until that works.
    behind: bool,
}

impl Position {
    fn at(epoch: &str, offset: u64) -> Self {
        Self {
            epoch: epoch.into(),
            offset,
            behind: false,
        }
    }

    /// Where a channel stands by a read of its position: `None` when it had no
    /// history, so that everything later, in whatever epoch, is new to it.
    fn read(top: Option<(u64, String)>) -> Self {
        match top {
            Some((offset, epoch)) => Self::at(&epoch, offset),
            None => Self::at("", 0),
        }
    }
}

/// Everything the driver needs.
#[derive(Debug)]
pub(crate) struct Driver {
    pub(crate) hub: Arc<Hub>,
    pub(crate) engine: Engine,
    pub(crate) publisher: Publisher,
    pub(crate) keys: Keys,
    pub(crate) node_id: String,
    pub(crate) metrics: Metrics,
    pub(crate) probe_interval: Duration,
    /// Met while the subscription connection is up and its probe comes back.
    pub(crate) healthy: Gate,
    /// Where the probe publishes run, so they never hold up the delivery loop.
    pub(crate) tasks: TaskTracker,
}

/// A channel's position as read just after it was subscribed.
type Learned = (Arc<str>, redis::RedisResult<Option<(u64, String)>>);

enum Exit {
    Shutdown,
    Reconnect(&'static str),
}

impl Driver {
    pub(crate) async fn run(
        self,
        mut cmds: mpsc::UnboundedReceiver<Cmd>,
        token: CancellationToken,
    ) {
        let mut positions: HashMap<Arc<str>, Position> = HashMap::new();
        let mut backoff = Backoff::new(backoff::MIN_DELAY, BACKOFF_MAX);
        let mut first = true;
        loop {
            if token.is_cancelled() {
                return;
            }
            if !first {
                self.metrics.pubsub_reconnects.inc();
            }
            let session = if self.engine.is_cluster() {
                self.cluster_session(&mut cmds, &mut positions, &token, first)
                    .await
            } else {
                self.session(&mut cmds, &mut positions, &token, first).await
            };
            match session {
                Ok(Exit::Shutdown) => return,
                Ok(Exit::Reconnect(why)) => {
                    tracing::warn!(reason = why, "pub/sub connection lost; reconnecting");
                    backoff.reset();
                }
                Err(e) => {
                    tracing::warn!(cause = %e, "pub/sub connection failed; retrying");
                    self.metrics.redis_errors.inc();
                }
            }
            first = false;
            self.healthy.set(false);
            if !backoff.sleep(&token).await {
                return;
            }
        }
    }

    /// One connection's life: connect, subscribe to demand, catch up, deliver.
    async fn session(
        &self,
        cmds: &mut mpsc::UnboundedReceiver<Cmd>,
        positions: &mut HashMap<Arc<str>, Position>,
        token: &CancellationToken,
        first: bool,
    ) -> redis::RedisResult<Exit> {
        let sub = timeout(self.engine.subscriber()).await?;
        let (mut sink, mut stream) = (sub.sink, sub.stream);
        let control = self.keys.control();
        let probe = self.keys.probe(&self.node_id);
        timeout(sink.subscribe(&[control.clone(), probe.clone()])).await?;

        // Everything that has local demand now, including what queued up while down.
        let mut subscribed: HashSet<Arc<str>> = HashSet::new();
        while let Ok(cmd) = cmds.try_recv() {
            drop(cmd);
        }
        let wanted = self.hub.channel_names();
        if !wanted.is_empty() {
            let names: Vec<String> = wanted.iter().map(|c| self.keys.channel(c)).collect();
            timeout(sink.subscribe(&names)).await?;
        }
        positions.retain(|c, _| wanted.contains(c));
        let (known_tx, mut known_rx) = mpsc::unbounded_channel();
        for c in wanted {
            if positions.contains_key(&c) {
                self.hub.mark_ready(&c);
            } else {
                self.learn_position(c.clone(), &known_tx);
            }
            subscribed.insert(c);
        }
        if !first {
            self.catch_up(positions, |_, _| true).await;
        }
        tracing::info!(channels = subscribed.len(), "pub/sub connected");

        let mut probe_tick = tokio::time::interval(self.probe_interval);
        probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The nonce in flight and when it was sent.
        let mut outstanding: Option<(u64, Instant)> = None;
        let probe_deadline = (self.probe_interval * 3).max(Duration::from_secs(3));
        self.healthy.set(true);

        loop {
            tokio::select! {
                biased;
                () = token.cancelled() => return Ok(Exit::Shutdown),
                msg = stream.next() => {
                    let Some(msg) = msg else { return Ok(Exit::Reconnect("stream ended")) };
                    let name = msg.channel();
                    if let Some(channel) = self.keys.channel_of(name) {
                        self.on_message(channel, msg.payload(), positions).await;
                    } else if name == probe {
                        if let Ok(n) = std::str::from_utf8(msg.payload()).unwrap_or("").parse::<u64>()
                            && outstanding.is_some_and(|(want, _)| want == n)
                        {
                            outstanding = None;
                            self.healthy.set(true);
                        }
                    } else if name == control {
                        self.on_control(msg.payload());
                    }
                }
                cmd = cmds.recv() => {
                    let Some(cmd) = cmd else { return Ok(Exit::Shutdown) };
                    match cmd {
                        Cmd::Subscribe(c) => {
                            if self.hub.wants(&c) && !subscribed.contains(&c) {
                                timeout(sink.subscribe(&[self.keys.channel(&c)])).await?;
                                subscribed.insert(c.clone());
                                self.learn_position(c, &known_tx);
                            } else {
                                self.hub.mark_ready(&c);
                            }
                        }
                        Cmd::Unsubscribe(c) => {
                            if !self.hub.wants(&c) && subscribed.remove(&c) {
                                timeout(sink.unsubscribe(&self.keys.channel(&c))).await?;
                                positions.remove(&c);
                            }
                        }
                    }
                }
                Some((c, read)) = known_rx.recv() => {
                    if subscribed.contains(&c) {
                        self.learned(&c, read, positions);
                    }
                }
                _ = probe_tick.tick() => {
                    self.catch_up(positions, |_, p| p.behind).await;
                    match outstanding {
                        Some((_, sent)) if sent.elapsed() > probe_deadline => {
                            return Ok(Exit::Reconnect("probe did not come back (wedged subscription)"));
                        }
                        Some((_, sent)) if sent.elapsed() > self.probe_interval * 2 => {
                            self.healthy.set(false);
                        }
                        Some(_) => {}
                        None => {
                            let n: u64 = rand::random::<u64>() >> 1;
                            outstanding = Some((n, Instant::now()));
                            let engine = self.engine.clone();
                            let probe = probe.clone();
                            let errors = self.metrics.redis_errors.clone();
                            self.tasks.spawn(async move {
                                if engine.publish_raw(&probe, n.to_string()).await.is_err() {
                                    errors.inc();
                                }
                            });
                        }
                    }
                }
            }
        }
    }

    /// Reads, off the loop, where a channel just subscribed stands; the answer
    /// comes back on `to` for [`Self::learned`].
    fn learn_position(&self, channel: Arc<str>, to: &mpsc::UnboundedSender<Learned>) {
        let (publisher, to) = (self.publisher.clone(), to.clone());
        self.tasks.spawn(async move {
            let read = publisher.position(&channel).await;
            let _ = to.send((channel, read));
        });
    }

    /// Takes a position read just after `channel`'s subscription took effect as
    /// where this node stands (unless a message came first), so a later loss is
    /// caught up from it even if no message came before; then lets its
    /// subscribers in, who read their own positions after this one (a message the
    /// read counted is theirs to skip, too).
    fn learned(
        &self,
        channel: &Arc<str>,
        read: redis::RedisResult<Option<(u64, String)>>,
        positions: &mut HashMap<Arc<str>, Position>,
    ) {
        match read {
            Ok(top) => {
                positions
                    .entry(channel.clone())
                    .or_insert_with(|| Position::read(top));
            }
            Err(e) => {
                // Delivery goes on; only a loss before the channel's first message
                // would go uncaught.
                self.metrics.redis_errors.inc();
                tracing::warn!(%channel, cause = %e, "cannot read a new channel's position");
            }
        }
        self.hub.mark_ready(channel);
    }

    /// After a reconnect, delivers what each channel (of those `which` picks)
    /// published while we were away. A channel that cannot be caught up now (Redis
    /// did not answer) keeps its position, marked behind, for the next try.
    async fn catch_up(
        &self,
        positions: &mut HashMap<Arc<str>, Position>,
        which: impl Fn(&str, &Position) -> bool,
    ) {
        let channels: Vec<Arc<str>> = positions
            .iter()
            .filter(|(c, p)| which(c, p))
            .map(|(c, _)| c.clone())
            .collect();
        for channel in channels {
            let Some(pos) = positions.get(&channel).cloned() else {
                continue;
            };
            let caught_up = match self.publisher.position(&channel).await {
                // No history (expired or never written): nothing to deliver.
                Ok(None) => true,
                Ok(Some((top, epoch))) => {
                    let same = *pos.epoch == *epoch;
                    if same && top < pos.offset {
                        self.went_back(&channel, &epoch, pos.offset, top).await;
                        positions.remove(&channel);
                        continue;
                    }
                    let from = if same { pos.offset + 1 } else { 1 };
                    if top < from || self.fill(&channel, &epoch, from, top).await {
                        let offset = if same { top.max(pos.offset) } else { top };
                        positions.insert(channel, Position::at(&epoch, offset));
                        continue;
                    }
                    false
                }
                Err(e) => {
                    self.metrics.redis_errors.inc();
                    tracing::debug!(%channel, cause = %e, "cannot read a channel's position; catching up later");
                    false
                }
            };
            if let Some(p) = positions.get_mut(&channel) {
                p.behind = !caught_up;
            }
        }
    }

    /// `channel` is at offset `top` of the epoch in which this node delivered up to
    /// `delivered`: Redis lost writes (a failover to a replica that had not
    /// received them, a restart that lost the tail of its append-only file). New
    /// messages would reuse offsets subscribers have seen and be dropped as
    /// duplicates, so the channel starts a new epoch: its subscribers take the next
    /// message as a new start, and recovery across the loss says `recovered:false`,
    /// as after any loss of history.
    async fn went_back(&self, channel: &str, epoch: &str, delivered: u64, top: u64) {
        tracing::warn!(
            channel,
            delivered,
            now = top,
            "a channel's history went back (Redis lost writes); starting a new epoch"
        );
        if let Err(e) = self
            .publisher
            .restart_epoch(channel, epoch, delivered)
            .await
        {
            self.metrics.redis_errors.inc();
            tracing::warn!(channel, cause = %e, "cannot start a channel over");
        }
    }

    /// Delivers offsets `from..=to` of `channel` from history; false when history
    /// could not be read (nothing was delivered).
    async fn fill(&self, channel: &Arc<str>, epoch: &str, from: u64, to: u64) -> bool {
        match self.publisher.range(channel, from, to).await {
            Ok(frames) => {
                for (offset, frame) in frames {
                    self.metrics.gap_fills.inc();
                    let d = Arc::new(Delivery {
                        text: Utf8Bytes::from(frame),
                        channel: channel.clone(),
                        offset,
                        epoch: epoch.into(),
                        published_ms: 0,
                        command: None,
                    });
                    self.hub.fanout(&d);
                }
                true
            }
            Err(e) => {
                self.metrics.redis_errors.inc();
                tracing::warn!(%channel, cause = %e, "cannot fill a delivery gap from history; catching up later");
                false
            }
        }
    }

    async fn on_message(
        &self,
        channel: &str,
        payload: &[u8],
        positions: &mut HashMap<Arc<str>, Position>,
    ) {
        if let Some(ev) = presence::decode_event(payload) {
            self.on_event(channel, payload, &ev);
            return;
        }
        let Some(env) = envelope::decode(payload) else {
            tracing::warn!(channel, "dropping a malformed pub/sub payload");
            return;
        };
        let name: Arc<str> = match positions.get_key_value(channel) {
            Some((k, _)) => k.clone(),
            None => Arc::from(channel),
        };
        let filled = match positions.get(channel) {
            // Held back: the next catch-up delivers it from history, in order.
            Some(pos) if pos.behind => return,
            Some(pos) if *pos.epoch == *env.epoch => {
                if env.offset <= pos.offset {
                    return; // already delivered (by a gap fill)
                }
                let from = pos.offset + 1;
                env.offset == from || self.fill(&name, env.epoch, from, env.offset - 1).await
            }
            // A new epoch (history was lost): everything in it is new to us.
            Some(_) if env.offset > 1 => self.fill(&name, env.epoch, 1, env.offset - 1).await,
            _ => true,
        };
        if !filled {
            if let Some(pos) = positions.get_mut(channel) {
                pos.behind = true;
            }
            return;
        }
        positions.insert(name.clone(), Position::at(env.epoch, env.offset));
        let Ok(text) = Utf8Bytes::try_from(Bytes::copy_from_slice(&payload[env.frame_start..]))
        else {
            tracing::warn!(channel, "dropping a non-UTF-8 frame");
            return;
        };
        let d = Arc::new(Delivery {
            text,
            channel: name,
            offset: env.offset,
            epoch: env.epoch.into(),
            published_ms: env.published_ms,
            command: None,
        });
        self.hub.fanout(&d);
    }

    /// A join or leave: to the channel's listeners, outside the offset bookkeeping.
    fn on_event(&self, channel: &str, payload: &[u8], ev: &presence::EventEnvelope<'_>) {
        self.metrics.presence_events.inc();
        let Ok(text) = Utf8Bytes::try_from(Bytes::copy_from_slice(&payload[ev.frame_start..]))
        else {
            tracing::warn!(channel, "dropping a non-UTF-8 presence event");
            return;
        };
        let d = Arc::new(Delivery {
            text,
            channel: Arc::from(channel),
            offset: 0,
            epoch: "".into(),
            // Kept out of the delivery-latency histogram, which is about messages.
            published_ms: 0,
            command: None,
        });
        self.hub.fanout_event(&d, ev.origin);
    }

    fn on_control(&self, payload: &[u8]) {
        let Ok(cmd) = serde_json::from_slice::<Control>(payload) else {
            tracing::warn!("ignoring a malformed control message");
            return;
        };
        let n = match &cmd {
            Control::DisconnectConn { conn_id } => self
                .hub
                .kick_where(|c| c.conn_id == *conn_id, &Disconnect::Admin),
            Control::DisconnectUser { user_id } => self
                .hub
                .kick_where(|c| c.user == *user_id, &Disconnect::Admin),
            Control::Revoke { jti } => self.hub.kick_where(
                |c| c.jti().as_deref() == Some(jti.as_str()),
                &Disconnect::TokenRevoked,
            ),
            Control::Subscribe {
                user_id,
                channel,
                since,
                ..
            } => self.hub.command_user(
                user_id,
                &ConnCommand::Subscribe {
                    channel: channel.clone(),
                    since: since.as_ref().map(|p| Since {
                        offset: p.offset,
                        epoch: p.epoch.clone(),
                    }),
                },
            ),
            Control::Unsubscribe {
                user_id, channel, ..
            } => self.hub.command_user(
                user_id,
                &ConnCommand::Unsubscribe {
                    channel: channel.clone(),
                },
            ),
            Control::Disconnect {
                user_id,
                code,
                reason,
                reconnect,
                ..
            } => self.hub.kick_where(
                |c| c.user == *user_id,
                &Disconnect::Application(AppDisconnect {
                    code: DisconnectCode::parse(code),
                    reason: reason.clone(),
                    reconnect: *reconnect,
                }),
            ),
        };
        if n > 0 {
            tracing::info!(?cmd, affected = n, "control command applied");
        }
        if let Some(reply_to) = cmd.reply_to() {
            // Off the delivery loop, like the probes: the sender waits for one
            // answer per gateway.
            let reply = ControlReply {
                node: self.node_id.clone(),
                affected: n as u64,
            };
            let (engine, name) = (self.engine.clone(), self.keys.control_reply(reply_to));
            let errors = self.metrics.redis_errors.clone();
            self.tasks.spawn(async move {
                let body = serde_json::to_string(&reply).unwrap_or_default();
                if engine.publish_raw(&name, body).await.is_err() {
                    errors.inc();
                }
            });
        }
    }
}

/// A Pub/Sub request bounded by [`PUBSUB_TIMEOUT`].
async fn timeout<T>(
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    store::within(PUBSUB_TIMEOUT, "pub/sub request", fut).await
}
