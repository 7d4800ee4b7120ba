//! Keeps the monitor's view of this gateway in the engine: its connections
//! (on Redis `node:<id>:conns`), its channels (`node:<id>:channels`) and its share
//! of each IP's connection count. Writes are batched and incremental (proportional to
//! churn, not to the number of connections), and everything carries a TTL that the
//! beat refreshes, so a crashed gateway leaves nothing behind for long.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use herald_common::engine::Engine;
use herald_common::keys::Keys;
use herald_common::store::Health;
use herald_proto::node::{ChannelStat, ConnInfo};
use herald_proto::time::now_ms;

use crate::hub::Hub;
use crate::limits::{IpLimiter, KEY_TTL_MS};
use crate::metrics::Metrics;

/// How often batched changes are written.
const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// How often channel stats, IP shares and TTLs are refreshed.
const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// TTL of the per-node presence keys.
const PRESENCE_TTL_MS: u64 = 15_000;
/// How often per-connection message counters are refreshed (only changed ones).
const COUNTERS_EVERY: u32 = 5;

/// A change to publish.
#[derive(Debug)]
pub(crate) enum Event {
    /// A connection opened or changed its channels.
    Upsert(ConnInfo),
    Closed(String),
}

/// Runs until `token` is cancelled, then removes this node's presence keys.
#[allow(clippy::too_many_arguments, reason = "one call site, wiring only")]
pub(crate) async fn run(
    engine: Engine,
    keys: Keys,
    node: String,
    hub: Arc<Hub>,
    ips: Arc<IpLimiter>,
    metrics: Metrics,
    health: Health,
    mut events: mpsc::UnboundedReceiver<Event>,
    mut ip_release: mpsc::UnboundedReceiver<IpAddr>,
    token: CancellationToken,
) {
    let conns_key = keys.node_connections(&node);
    let chans_key = keys.node_channels(&node);
    let mut pending: HashMap<String, Option<ConnInfo>> = HashMap::new();
    let mut released: Vec<IpAddr> = Vec::new();
    let mut written_channels: HashMap<Arc<str>, ChannelStat> = HashMap::new();
    let mut written_counters: HashMap<String, (u64, u64)> = HashMap::new();
    let mut ticks = 0u32;
    let mut resync = false;
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    let mut refresh = tokio::time::interval(REFRESH_EVERY);
    loop {
        tokio::select! {
            () = token.cancelled() => break,
            Some(ev) = events.recv() => {
                match ev {
                    Event::Upsert(info) => { pending.insert(info.conn_id.clone(), Some(info)); }
                    Event::Closed(id) => {
                        written_counters.remove(&id);
                        pending.insert(id, None);
                    }
                }
            }
            Some(ip) = ip_release.recv() => released.push(ip),
            _ = flush.tick() => {
                if pending.is_empty() && released.is_empty() {
                    continue;
                }
                let changes = Changes {
                    conns: pending.drain().collect(),
                    released: std::mem::take(&mut released),
                };
                let res = changes.write(&engine, &keys, &node, &conns_key).await;
                health.record(&res);
                if res.is_err() {
                    metrics.redis_errors.inc();
                    resync = true;
                }
            }
            _ = refresh.tick() => {
                ticks = ticks.wrapping_add(1);
                if ticks.is_multiple_of(COUNTERS_EVERY) {
                    refresh_counters(&hub, &node, &mut written_counters, &mut pending);
                }
                let res = refresh_all(&engine, &keys, &node, &hub, &ips, &chans_key, &conns_key, &mut written_channels, resync).await;
                health.record(&res);
                if res.is_ok() {
                    resync = false;
                } else {
                    metrics.redis_errors.inc();
                    resync = true;
                    written_channels.clear();
                }
            }
        }
    }
    match &engine {
        Engine::Redis(r) => {
            let _: redis::RedisResult<()> = redis::pipe()
                .del(&conns_key)
                .ignore()
                .del(&chans_key)
                .ignore()
                .query_async(&mut r.conn.clone())
                .await;
        }
        Engine::Memory(m) => m.clear_presence(&node),
    }
}

/// Connection records and IP slots changed since the last flush.
struct Changes {
    conns: Vec<(String, Option<ConnInfo>)>,
    released: Vec<IpAddr>,
}

impl Changes {
    async fn write(
        self,
        engine: &Engine,
        keys: &Keys,
        node: &str,
        conns_key: &str,
    ) -> redis::RedisResult<()> {
        let r = match engine {
            Engine::Redis(r) => r,
            Engine::Memory(m) => {
                for (id, info) in self.conns {
                    m.set_connection(node, &id, info, PRESENCE_TTL_MS);
                }
                for ip in self.released {
                    m.ip_add(ip, node, -1);
                }
                m.touch_presence(node, PRESENCE_TTL_MS);
                return Ok(());
            }
        };
        let mut pipe = redis::pipe();
        for (id, info) in self.conns {
            match info.and_then(|i| serde_json::to_string(&i).ok()) {
                Some(json) => pipe.hset(conns_key, id, json).ignore(),
                None => pipe.hdel(conns_key, id).ignore(),
            };
        }
        for ip in self.released {
            pipe.hincr(keys.ip_connections(ip), node, -1).ignore();
        }
        pipe.pexpire(conns_key, PRESENCE_TTL_MS as i64).ignore();
        pipe.query_async::<()>(&mut r.conn.clone()).await
    }
}

/// Queues the records of connections whose message counters moved since last time.
/// `written` holds only connections that ever moved (a new one was written with
/// zeros when it opened) and loses them when they close, so this costs a scan of
/// the connections and work proportional to the active ones, not a rebuild.
fn refresh_counters(
    hub: &Hub,
    node: &str,
    written: &mut HashMap<String, (u64, u64)>,
    pending: &mut HashMap<String, Option<ConnInfo>>,
) {
    use std::sync::atomic::Ordering;
    for c in hub.all_conns() {
        let now = (
            c.messages_in.load(Ordering::Relaxed),
            c.messages_out.load(Ordering::Relaxed),
        );
        let before = written.get(&c.conn_id).copied().unwrap_or((0, 0));
        if before != now && !pending.contains_key(&c.conn_id) {
            pending.insert(c.conn_id.clone(), Some(conn_info(&c, node)));
            written.insert(c.conn_id.clone(), now);
        }
    }
}

/// Writes changed channel stats, refreshes IP shares and TTLs; after a Redis
/// outage (`full`), rewrites everything from local truth.
#[allow(clippy::too_many_arguments, reason = "internal helper")]
async fn refresh_all(
    engine: &Engine,
    keys: &Keys,
    node: &str,
    hub: &Hub,
    ips: &IpLimiter,
    chans_key: &str,
    conns_key: &str,
    written: &mut HashMap<Arc<str>, ChannelStat>,
    full: bool,
) -> redis::RedisResult<()> {
    let r = match engine {
        Engine::Redis(r) => r,
        Engine::Memory(m) => {
            refresh_memory(m, node, hub, ips, written, full);
            return Ok(());
        }
    };
    let now = now_ms();
    let mut pipe = redis::pipe();
    if full {
        pipe.del(chans_key).ignore();
        pipe.del(conns_key).ignore();
        for c in hub.all_conns() {
            let info = conn_info(&c, node);
            if let Ok(json) = serde_json::to_string(&info) {
                pipe.hset(conns_key, &c.conn_id, json).ignore();
            }
        }
    }
    let stats = hub.channel_stats();
    let mut live: HashMap<Arc<str>, ChannelStat> = HashMap::with_capacity(stats.len());
    for (name, subscribers, messages) in stats {
        let stat = ChannelStat {
            subscribers,
            messages,
        };
        let changed = full || written.get(&name) != Some(&stat);
        if changed && let Ok(json) = serde_json::to_string(&stat) {
            pipe.hset(chans_key, &*name, json).ignore();
        }
        live.insert(name, stat);
    }
    for gone in written.keys().filter(|k| !live.contains_key(*k)) {
        pipe.hdel(chans_key, &**gone).ignore();
    }
    for (ip, n) in ips.snapshot() {
        let key = keys.ip_connections(ip);
        if full {
            pipe.hset(&key, node, n).ignore();
        }
        pipe.hset(&key, format!("{node}:t"), now).ignore();
        pipe.pexpire(&key, KEY_TTL_MS as i64).ignore();
    }
    pipe.pexpire(chans_key, PRESENCE_TTL_MS as i64).ignore();
    pipe.pexpire(conns_key, PRESENCE_TTL_MS as i64).ignore();
    let res = pipe.query_async::<()>(&mut r.conn.clone()).await;
    if res.is_ok() {
        *written = live;
    }
    res
}

/// [`refresh_all`] on the memory engine: the same records, written in place
/// (nothing to batch, and nothing can fail).
fn refresh_memory(
    m: &herald_common::engine::MemoryEngine,
    node: &str,
    hub: &Hub,
    ips: &IpLimiter,
    written: &mut HashMap<Arc<str>, ChannelStat>,
    full: bool,
) {
    if full {
        m.clear_presence(node);
        for c in hub.all_conns() {
            m.set_connection(node, &c.conn_id, Some(conn_info(&c, node)), PRESENCE_TTL_MS);
        }
    }
    let mut live: HashMap<Arc<str>, ChannelStat> = HashMap::new();
    for (name, subscribers, messages) in hub.channel_stats() {
        let stat = ChannelStat {
            subscribers,
            messages,
        };
        if full || written.get(&name) != Some(&stat) {
            m.set_channel(node, &name, Some(stat), PRESENCE_TTL_MS);
        }
        live.insert(name, stat);
    }
    for gone in written.keys().filter(|k| !live.contains_key(*k)) {
        m.set_channel(node, gone, None, PRESENCE_TTL_MS);
    }
    for (ip, n) in ips.snapshot() {
        m.ip_confirm(ip, node, full.then_some(n));
    }
    m.touch_presence(node, PRESENCE_TTL_MS);
    *written = live;
}

/// The monitor's record of one connection.
pub(crate) fn conn_info(c: &crate::hub::ConnShared, node: &str) -> ConnInfo {
    use std::sync::atomic::Ordering;
    let channels = c.channels.lock().map(|c| c.clone()).unwrap_or_default();
    ConnInfo {
        conn_id: c.conn_id.clone(),
        user: c.user.clone(),
        ip: c.ip.to_string(),
        node: node.to_owned(),
        channels,
        connected_ms: c.connected_ms,
        messages_in: c.messages_in.load(Ordering::Relaxed),
        messages_out: c.messages_out.load(Ordering::Relaxed),
    }
}
