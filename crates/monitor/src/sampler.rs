//! The background work: once a second, read the node registry, every node's
//! stats and channel counts, the new rate-limit events and the webhook queue
//! from the engine (and a Redis Cluster's topology), drop nodes that have been
//! down for five minutes, and swap in a new [`Snapshot`]; on its own interval,
//! probe every listed node's `/healthz`.
//!
//! Requests never touch this path: they read the latest snapshot. The storage
//! reads are the functions under "Reads", one per operation, each with its Redis
//! commands and its [`MemoryEngine`] twin; everything around them is shared.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use herald_common::engine::{Engine, MemoryEngine, RedisEngine, topology};
use herald_common::keys::Keys;
use herald_common::presence::Presence;
use herald_common::runtime::Gate;
use herald_proto::monitor::{ChannelRow, Overview, RedisClusterView, WebhookView};
use herald_proto::node::{ChannelStat, LimitKind, NodeInfo, RateLimitEvent};
use herald_proto::time::now_ms;

use crate::metrics::Metrics;
use crate::sample::{self, NodeReading, Probe, Rates, Snapshot, StreamId, Tally};

/// How often the cluster is sampled (and the stream pushes an overview).
pub(crate) const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// A round that takes longer than this failed: the next one starts fresh.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(3);
/// A probe that has not answered by then failed.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// The consumer group broadcasters deliver webhook events through.
use herald_common::webhooks::GROUP as WEBHOOK_GROUP;
/// Rate-limit events read per request, and requests per round: the stream keeps
/// about 1000 entries, so one round catches up with all of it.
const EVENTS_PER_READ: usize = 500;
const EVENT_READS_PER_ROUND: usize = 4;

/// Why a round failed (only the Redis engine can fail a read).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SampleError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("sampling took longer than {SAMPLE_TIMEOUT:?}")]
    Timeout,
}

/// What the sampler and prober write and every request reads.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Swapped whole once per round; readers clone the `Arc` and never hold the
    /// lock while they work (std lock: it is never held across an `.await`).
    snapshot: RwLock<Arc<Snapshot>>,
    /// The last probe of each listed node.
    probes: Mutex<HashMap<String, Probe>>,
}

impl Shared {
    pub(crate) fn new() -> Self {
        Self {
            snapshot: RwLock::new(Arc::new(Snapshot::empty(now_ms()))),
            probes: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn replace(&self, s: Snapshot) {
        *self
            .snapshot
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(s);
    }

    fn probes(&self) -> HashMap<String, Probe> {
        self.probes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

// === Sampler ===

/// Reads the cluster once per [`SAMPLE_INTERVAL`] and keeps what rates need
/// from one round to the next.
#[derive(Debug)]
pub(crate) struct Sampler {
    engine: Engine,
    keys: Keys,
    shared: Arc<Shared>,
    metrics: Metrics,
    /// Whether the last round reached the engine: this is `/readyz`.
    ready: Gate,
    rates: HashMap<String, Rates>,
    tally: Tally,
    /// The `herald_node_up` label sets currently exported.
    shown: HashSet<(String, String)>,
    /// Reads the top channels' members.
    presence: Presence,
}

impl Sampler {
    pub(crate) fn new(
        engine: Engine,
        keys: Keys,
        shared: Arc<Shared>,
        metrics: Metrics,
        ready: Gate,
    ) -> Self {
        Self {
            presence: Presence::new(engine.clone(), keys.clone()),
            engine,
            keys,
            shared,
            metrics,
            ready,
            rates: HashMap::new(),
            tally: Tally::default(),
            shown: HashSet::new(),
        }
    }

    pub(crate) async fn run(mut self, token: CancellationToken) {
        let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = token.cancelled() => return,
            }
            self.round().await;
        }
    }

    /// One round: on success a new snapshot; on failure the last one, flagged stale.
    /// A Redis Cluster's topology is read alongside and is current either way: a
    /// primary down leaves its slots uncovered, and the cluster then refuses the
    /// sample's reads, so a failed round is when it matters most.
    pub(crate) async fn round(&mut self) {
        let started = Instant::now();
        // Its own handle (the connection inside is shared): the sample's reads
        // borrow the sampler while the topology is read beside them.
        let engine = self.engine.clone();
        let sample = async {
            match tokio::time::timeout(SAMPLE_TIMEOUT, self.read()).await {
                Ok(r) => r,
                Err(_) => Err(SampleError::Timeout),
            }
        };
        let (result, redis_cluster) = tokio::join!(sample, read_redis_cluster(&engine));
        let redis_cluster = match redis_cluster {
            Ok(view) => {
                if let Some(v) = &view {
                    self.metrics.record_redis_cluster(v);
                }
                view
            }
            Err(e) => {
                self.metrics.redis_errors_total.inc();
                tracing::debug!(cause = %e, "cannot read the Redis Cluster's topology");
                None
            }
        };
        match result {
            Ok((now, nodes)) => {
                self.metrics
                    .sample_duration_seconds
                    .observe(started.elapsed().as_secs_f64());
                let probes = self.shared.probes();
                let (snapshot, statuses) =
                    sample::build(now, &nodes, &mut self.rates, &self.tally, &probes);
                let snapshot = self.with_extras(snapshot, redis_cluster).await;
                self.metrics
                    .record_sample(&snapshot.overview.totals, &statuses, &mut self.shown);
                self.shared.replace(snapshot);
                if !self.ready.is_met() {
                    tracing::info!("sampling the cluster from {}", self.engine.name());
                }
                self.ready.set(true);
            }
            Err(e) => {
                self.metrics.redis_errors_total.inc();
                if self.ready.is_met() {
                    tracing::warn!(cause = %e, "cannot sample the cluster; serving the last sample");
                }
                self.ready.set(false);
                let last = (*self.shared.snapshot()).clone();
                self.shared.replace(last.into_stale(redis_cluster));
            }
        }
    }

    /// Adds what is read beside the node records: the top channels' members, the
    /// webhook queue and the Redis Cluster's topology (read by the caller). A read
    /// that fails or takes too long leaves its part out rather than failing the
    /// sample.
    async fn with_extras(
        &self,
        snapshot: Snapshot,
        redis_cluster: Option<RedisClusterView>,
    ) -> Snapshot {
        let Snapshot {
            mut overview,
            mut channels,
            ..
        } = snapshot;
        overview.redis_cluster = redis_cluster;
        self.add_members(&mut overview, &mut channels).await;
        let webhooks =
            tokio::time::timeout(SAMPLE_TIMEOUT, read_webhooks(&self.engine, &self.keys)).await;
        match webhooks {
            Ok(Ok(w)) => overview.webhooks = w,
            _ => self.metrics.redis_errors_total.inc(),
        }
        Snapshot::new(overview, channels)
    }

    /// The top channels' members (distinct users in presence).
    async fn add_members(&self, overview: &mut Overview, channels: &mut [ChannelRow]) {
        let names: Vec<&str> = overview
            .top_channels
            .iter()
            .map(|c| c.channel.as_str())
            .collect();
        if names.is_empty() {
            return;
        }
        let stats = tokio::time::timeout(SAMPLE_TIMEOUT, self.presence.stats_of(&names)).await;
        match stats {
            Ok(Ok(stats)) => {
                let members: HashMap<String, u64> = names
                    .iter()
                    .zip(&stats)
                    .map(|(n, s)| ((*n).to_owned(), s.num_users))
                    .collect();
                for row in overview.top_channels.iter_mut().chain(channels.iter_mut()) {
                    if let Some(m) = members.get(&row.channel) {
                        row.members = Some(*m);
                    }
                }
            }
            _ => self.metrics.redis_errors_total.inc(),
        }
    }

    async fn read(&mut self) -> Result<(u64, Vec<NodeReading>), SampleError> {
        let now = now_ms();
        let registry = read_registry(&self.engine, &self.keys).await?;
        let mut listed = Vec::with_capacity(registry.len());
        let mut expired = Vec::new();
        for (id, beat_ms) in registry {
            if sample::expired(now, beat_ms) {
                expired.push(id);
            } else {
                listed.push((id, beat_ms));
            }
        }
        if !expired.is_empty() {
            self.prune(now, &expired).await?;
        }
        let nodes = self.read_nodes(now, listed).await?;
        self.read_events().await?;
        Ok((now, nodes))
    }

    /// Drops nodes silent for longer than the retention, with everything they left.
    async fn prune(&mut self, now: u64, ids: &[String]) -> Result<(), SampleError> {
        let cutoff = now.saturating_sub(sample::DOWN_RETENTION_MS);
        prune_nodes(&self.engine, &self.keys, cutoff, ids).await?;
        self.metrics.nodes_pruned_total.inc_by(ids.len() as u64);
        tracing::info!(nodes = ?ids, "dropped nodes down for five minutes");
        Ok(())
    }

    async fn read_nodes(
        &mut self,
        now: u64,
        listed: Vec<(String, u64)>,
    ) -> Result<Vec<NodeReading>, SampleError> {
        if listed.is_empty() {
            return Ok(Vec::new());
        }
        let infos = read_infos(&self.engine, &self.keys, &listed).await?;
        // Only live nodes' channel counts matter; a down gateway's subscribers are gone.
        let live: Vec<usize> = listed
            .iter()
            .enumerate()
            .filter(|(_, (_, beat))| sample::classify(now, *beat).is_live())
            .map(|(i, _)| i)
            .collect();
        let live_ids: Vec<&str> = live.iter().map(|&i| listed[i].0.as_str()).collect();
        let channel_maps = read_channels(&self.engine, &self.keys, &live_ids).await?;
        let mut channels_of: HashMap<usize, HashMap<String, ChannelStat>> =
            live.into_iter().zip(channel_maps).collect();
        let readings = listed
            .into_iter()
            .zip(infos)
            .enumerate()
            .map(|(i, ((id, beat_ms), info))| NodeReading {
                info,
                channels: channels_of.remove(&i).unwrap_or_default(),
                id,
                beat_ms,
            })
            .collect();
        Ok(readings)
    }

    /// Reads rate-limit events newer than the last one counted.
    async fn read_events(&mut self) -> Result<(), SampleError> {
        // A Redis that restarted empty starts its ids over: notice and start over
        // too (the memory engine lives as long as this process, so never).
        if let Some(last) = self.tally.last_id {
            let newest = newest_event_id(&self.engine, &self.keys).await?;
            if newest.is_none_or(|n| n < last) {
                self.tally.last_id = None;
            }
        }
        for _ in 0..EVENT_READS_PER_ROUND {
            let batch = read_events_after(&self.engine, &self.keys, self.tally.last_id).await?;
            for (id, event) in batch.events {
                self.tally.record(id, event);
            }
            if batch.read < EVENTS_PER_READ {
                break;
            }
        }
        Ok(())
    }
}

// === Reads ===
//
// One function per storage operation: the Redis commands, and the memory
// engine's answer with the same meaning. The memory engine cannot fail.

/// Every registered node with its last beat (ms).
async fn read_registry(engine: &Engine, keys: &Keys) -> Result<Vec<(String, u64)>, SampleError> {
    let mut conn = match engine {
        Engine::Redis(RedisEngine { conn, .. }) => conn.clone(),
        Engine::Memory(m) => return Ok(m.nodes()),
    };
    let registry: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg(keys.nodes())
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut conn)
        .await?;
    Ok(registry
        .into_iter()
        .map(|(id, score)| {
            // Beats are whole milliseconds, well inside f64's exact range.
            let beat_ms = if score.is_finite() && score > 0.0 {
                score as u64
            } else {
                0
            };
            (id, beat_ms)
        })
        .collect())
}

/// Drops the nodes that last beat before `cutoff` from the registry, and the
/// stats, connections and channels of `ids`.
async fn prune_nodes(
    engine: &Engine,
    keys: &Keys,
    cutoff: u64,
    ids: &[String],
) -> Result<(), SampleError> {
    let mut conn = match engine {
        Engine::Redis(RedisEngine { conn, .. }) => conn.clone(),
        Engine::Memory(m) => {
            m.prune(cutoff, ids);
            return Ok(());
        }
    };
    let mut pipe = redis::pipe();
    // By score, not by id: a node that beat again in the meantime stays.
    pipe.cmd("ZREMRANGEBYSCORE")
        .arg(keys.nodes())
        .arg("-inf")
        .arg(format!("({cutoff}"))
        .ignore();
    for id in ids {
        pipe.cmd("DEL")
            .arg(keys.node(id))
            .arg(keys.node_connections(id))
            .arg(keys.node_channels(id))
            .ignore();
    }
    pipe.query_async::<()>(&mut conn).await?;
    Ok(())
}

/// The stats of each listed node, in order; `None` where they are gone or unreadable.
async fn read_infos(
    engine: &Engine,
    keys: &Keys,
    listed: &[(String, u64)],
) -> Result<Vec<Option<NodeInfo>>, SampleError> {
    let mut conn = match engine {
        Engine::Redis(RedisEngine { conn, .. }) => conn.clone(),
        Engine::Memory(m) => return Ok(listed.iter().map(|(id, _)| m.node_info(id)).collect()),
    };
    let infos: Vec<Option<String>> = redis::cmd("MGET")
        .arg(
            listed
                .iter()
                .map(|(id, _)| keys.node(id))
                .collect::<Vec<_>>(),
        )
        .query_async(&mut conn)
        .await?;
    Ok(listed
        .iter()
        .zip(infos)
        .map(|((id, _), info)| info.and_then(|json| parse_node(id, &json)))
        .collect())
}

/// The channel stats of each of `nodes`, in order.
async fn read_channels(
    engine: &Engine,
    keys: &Keys,
    nodes: &[&str],
) -> Result<Vec<HashMap<String, ChannelStat>>, SampleError> {
    if nodes.is_empty() {
        return Ok(Vec::new());
    }
    let mut conn = match engine {
        Engine::Redis(RedisEngine { conn, .. }) => conn.clone(),
        Engine::Memory(m) => {
            return Ok(nodes
                .iter()
                .map(|id| m.channels(id).into_iter().collect())
                .collect());
        }
    };
    let mut pipe = redis::pipe();
    for id in nodes {
        pipe.cmd("HGETALL").arg(keys.node_channels(id));
    }
    let maps: Vec<HashMap<String, String>> = pipe.query_async(&mut conn).await?;
    Ok(nodes
        .iter()
        .zip(maps)
        .map(|(id, m)| parse_channels(id, m))
        .collect())
}

/// Webhook delivery: the queue's length and the stats the broadcasters write
/// (`broadcaster::webhooks`, which this crate does not depend on: the names are
/// repeated here). `None` when the cluster records no webhook events: no queue and
/// no stats; always on the memory engine, which has no queue.
async fn read_webhooks(engine: &Engine, keys: &Keys) -> Result<Option<WebhookView>, SampleError> {
    let mut conn = match engine {
        Engine::Redis(RedisEngine { conn, .. }) => conn.clone(),
        Engine::Memory(_) => return Ok(None),
    };
    let stream = keys.webhooks();
    let stats: HashMap<String, u64> = {
        let raw: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(keys.webhook_stats())
            .query_async(&mut conn)
            .await?;
        raw.into_iter()
            .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
            .collect()
    };
    let queued = match redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(&stream)
        .query_async::<redis::streams::StreamInfoGroupsReply>(&mut conn)
        .await
    {
        Ok(reply) => {
            // Without a known lag (or before any broadcaster made the group), the
            // stream's length: delivered entries are deleted from it.
            let group = reply.groups.into_iter().find(|g| g.name == WEBHOOK_GROUP);
            match group.and_then(|g| g.lag.map(|lag| (lag + g.pending) as u64)) {
                Some(n) => Some(n),
                None => Some(
                    redis::cmd("XLEN")
                        .arg(&stream)
                        .query_async(&mut conn)
                        .await?,
                ),
            }
        }
        Err(e) if e.to_string().contains("no such key") => None,
        Err(e) => return Err(e.into()),
    };
    if queued.is_none() && stats.is_empty() {
        return Ok(None);
    }
    let stat = |name: &str| stats.get(name).copied().unwrap_or(0);
    Ok(Some(WebhookView {
        queued: queued.unwrap_or(0),
        delivered: stat("delivered"),
        failed: stat("failed"),
        failing: stat("last_error_ms") > stat("last_ok_ms"),
    }))
}

/// A Redis Cluster's shards as the node the cluster connection picks reports them,
/// within [`SAMPLE_TIMEOUT`]; `None` on a single Redis and on the memory engine.
async fn read_redis_cluster(engine: &Engine) -> Result<Option<RedisClusterView>, SampleError> {
    let conn = match engine.redis() {
        Some(r) if r.is_cluster() => &r.conn,
        _ => return Ok(None),
    };
    match tokio::time::timeout(SAMPLE_TIMEOUT, topology::read(conn)).await {
        Ok(t) => Ok(Some(sample::redis_cluster_view(&t?))),
        Err(_) => Err(SampleError::Timeout),
    }
}

/// The id of the newest rate-limit event retained.
async fn newest_event_id(engine: &Engine, keys: &Keys) -> Result<Option<StreamId>, SampleError> {
    let mut conn = match engine {
        Engine::Redis(RedisEngine { conn, .. }) => conn.clone(),
        Engine::Memory(m) => return Ok(m.newest_ratelimit_id().map(stream_id)),
    };
    let newest: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(keys.ratelimit_events())
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut conn)
        .await?;
    Ok(newest.ids.first().and_then(|e| StreamId::parse(&e.id)))
}

/// One read of the rate-limit events.
#[derive(Debug, Default)]
struct EventBatch {
    /// Entries read, counting any whose id could not be parsed: a full read
    /// means more may follow.
    read: usize,
    /// The readable ones, oldest first.
    events: Vec<(StreamId, RateLimitEvent)>,
}

/// Up to [`EVENTS_PER_READ`] rate-limit events after `after` (from the oldest
/// retained without one).
async fn read_events_after(
    engine: &Engine,
    keys: &Keys,
    after: Option<StreamId>,
) -> Result<EventBatch, SampleError> {
    let mut conn = match engine {
        Engine::Redis(RedisEngine { conn, .. }) => conn.clone(),
        Engine::Memory(m) => return Ok(memory_events_after(m, after)),
    };
    let start = match after {
        Some(id) => format!("({id}"),
        None => "-".to_owned(),
    };
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(keys.ratelimit_events())
        .arg(start)
        .arg("+")
        .arg("COUNT")
        .arg(EVENTS_PER_READ)
        .query_async(&mut conn)
        .await?;
    let read = reply.ids.len();
    let events = reply
        .ids
        .into_iter()
        .filter_map(|entry| {
            let id = StreamId::parse(&entry.id)?;
            let field = |name: &str| entry.get::<String>(name).unwrap_or_default();
            let event = RateLimitEvent {
                who: field("who"),
                kind: LimitKind::parse(&field("kind")),
                node: field("node"),
                at_ms: entry.get::<u64>("at_ms").unwrap_or(id.ms),
            };
            Some((id, event))
        })
        .collect();
    Ok(EventBatch { read, events })
}

fn memory_events_after(m: &MemoryEngine, after: Option<StreamId>) -> EventBatch {
    let events: Vec<(StreamId, RateLimitEvent)> = m
        .ratelimit_events(after.map(|id| (id.ms, id.seq)), EVENTS_PER_READ)
        .into_iter()
        .map(|(id, event)| (stream_id(id), event))
        .collect();
    EventBatch {
        read: events.len(),
        events,
    }
}

/// The memory engine numbers its events `(ms, seq)`, as a Redis stream does.
fn stream_id((ms, seq): (u64, u64)) -> StreamId {
    StreamId { ms, seq }
}

/// A node's stats; a node that writes garbage is still listed, without them.
fn parse_node(id: &str, json: &str) -> Option<NodeInfo> {
    serde_json::from_str(json)
        .inspect_err(|e| tracing::debug!(node = %id, cause = %e, "unreadable node stats"))
        .ok()
}

fn parse_channels(id: &str, raw: HashMap<String, String>) -> HashMap<String, ChannelStat> {
    raw.into_iter()
        .filter_map(|(channel, json)| match serde_json::from_str(&json) {
            Ok(stat) => Some((channel, stat)),
            Err(e) => {
                tracing::debug!(node = %id, %channel, cause = %e, "unreadable channel stat");
                None
            }
        })
        .collect()
}

// === Prober ===

/// Probes every listed node's `/healthz` each `interval`, all at once, and
/// keeps the results for the next sample.
pub(crate) async fn run_prober(
    shared: Arc<Shared>,
    client: reqwest::Client,
    metrics: Metrics,
    interval: Duration,
    token: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = token.cancelled() => return,
        }
        let snapshot = shared.snapshot();
        let probes = snapshot.overview.nodes.iter().map(|n| {
            let client = &client;
            let metrics = &metrics;
            async move {
                let probe = probe(client, &n.address).await;
                metrics
                    .probe_latency_seconds
                    .observe(probe.latency_ms / 1000.0);
                if !probe.ok {
                    metrics
                        .probe_failures_total
                        .with_label_values(&[n.service.as_str()])
                        .inc();
                }
                (n.id.clone(), probe)
            }
        });
        let results: HashMap<String, Probe> = tokio::select! {
            r = futures_util::future::join_all(probes) => r.into_iter().collect(),
            () = token.cancelled() => return,
        };
        *shared.probes.lock().unwrap_or_else(PoisonError::into_inner) = results;
    }
}

async fn probe(client: &reqwest::Client, address: &str) -> Probe {
    let started = Instant::now();
    let ok = if address.is_empty() {
        false
    } else {
        let url = format!("http://{address}/healthz");
        matches!(
            tokio::time::timeout(PROBE_TIMEOUT, client.get(url).send()).await,
            Ok(Ok(r)) if r.status().is_success()
        )
    };
    Probe {
        ok,
        latency_ms: started.elapsed().as_secs_f64() * 1000.0,
    }
}
