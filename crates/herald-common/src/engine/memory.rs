//! The in-memory engine: one process's channels, history, subscriptions, node
//! registry, presence, per-IP counts, rate-limit events and revocations, with the
//! meaning the Redis engine gives them (offsets +1 per publish, epochs, history
//! bounded in size and time, all-or-nothing recovery, an idempotency window, TTLs).
//!
//! Each part has its own lock, held only for in-memory work (never across an
//! await). A publish holds its part's lock while it assigns the offset, appends
//! to history and hands the frame to the subscribers, so offset order, history
//! order and delivery order agree, as the Redis publish script guarantees.
//! Expired entries are dropped when read and swept at most once a second.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use tokio::sync::mpsc;

use herald_proto::envelope::{self, FrameTemplate};
use herald_proto::node::{ChannelStat, ConnInfo, NodeInfo, RateLimitEvent};
use herald_proto::time::now_ms;

use crate::publish::{
    History, HistoryConfig, HistoryQuery, META_EXTRA_TTL_MS, Recovery, new_epoch,
};

super::opaque_debug!(MemoryEngine, SubSink, SubStream);

/// How often expired entries are swept at most.
const SWEEP_EVERY_MS: u64 = 1000;

/// The in-memory engine; clones share one state.
#[derive(Clone, Default)]
pub struct MemoryEngine(Arc<Shared>);

#[derive(Default)]
struct Shared {
    channels: Mutex<Channels>,
    bus: Mutex<Bus>,
    registry: Mutex<Registry>,
    ips: Mutex<Ips>,
    events: Mutex<Events>,
    revoked: Mutex<Expiring<String>>,
    /// Channel presence: channel → its members.
    members: Mutex<HashMap<String, ChannelMembers>>,
    next_subscriber: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock leaves plain data behind, still consistent
    // enough to serve (every update is a few assignments).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Keys with a deadline, swept lazily.
struct Expiring<K> {
    until: HashMap<K, u64>,
    swept_ms: u64,
}

impl<K> Default for Expiring<K> {
    fn default() -> Self {
        Self {
            until: HashMap::new(),
            swept_ms: 0,
        }
    }
}

impl<K: std::hash::Hash + Eq> Expiring<K> {
    fn insert(&mut self, key: K, now: u64, ttl_ms: u64) {
        self.sweep(now);
        self.until.insert(key, now + ttl_ms.max(1));
    }

    fn contains<Q>(&self, key: &Q, now: u64) -> bool
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.until.get(key).is_some_and(|&t| t > now)
    }

    fn sweep(&mut self, now: u64) {
        if now >= self.swept_ms + SWEEP_EVERY_MS {
            self.swept_ms = now;
            self.until.retain(|_, t| *t > now);
        }
    }
}

impl MemoryEngine {
    pub fn new() -> Self {
        Self::default()
    }

    // === Channels: publish, recovery, history ===

    /// Publishes a frame to `channel` (subscribers of the Pub/Sub name `pubsub`
    /// receive it) with the next offset; with `once`, a repeat of the same id
    /// within its window returns the first publish's position and `true`.
    pub fn publish(
        &self,
        history: HistoryConfig,
        channel: &str,
        pubsub: &str,
        frame: &FrameTemplate,
        published_ms: u64,
        once: Option<(&str, u64)>,
    ) -> (u64, String, bool) {
        let now = now_ms();
        let mut channels = lock(&self.0.channels);
        channels.sweep(now);
        if let Some((id, _)) = once
            && let Some((offset, epoch, until)) =
                channels.once.get(&(channel.to_owned(), id.to_owned()))
            && *until > now
        {
            return (*offset, epoch.clone(), true);
        }
        let meta_ttl = history.ttl_ms + META_EXTRA_TTL_MS;
        let ch = channels.live(channel, now, meta_ttl);
        ch.offset += 1;
        let offset = ch.offset;
        let text = frame.fill(offset, &ch.epoch);
        if history.size > 0 {
            ch.history.push_back((offset, text.clone()));
            while ch.history.len() as u64 > history.size {
                ch.history.pop_front();
            }
            ch.history_until = now + history.ttl_ms.max(1);
        }
        ch.meta_until = now + meta_ttl;
        let epoch = ch.epoch.clone();
        // The same envelope the Redis publish script writes.
        let payload = Bytes::from(envelope::encode(offset, &epoch, published_ms, &text));
        // Handed over under the channel lock: the next publish's offset cannot
        // overtake this one on its way to a subscriber.
        self.publish_raw(pubsub, payload);
        if let Some((id, ttl)) = once {
            channels.once.insert(
                (channel.to_owned(), id.to_owned()),
                (offset, epoch.clone(), now + ttl.max(1)),
            );
        }
        (offset, epoch, false)
    }

    /// The channel's position and, with `since`, every message after it — all of
    /// them (at most `max`) or none.
    pub fn recover(
        &self,
        history: HistoryConfig,
        channel: &str,
        since: Option<(u64, &str)>,
        max: u64,
    ) -> Recovery {
        let now = now_ms();
        let mut channels = lock(&self.0.channels);
        channels.sweep(now);
        let ch = channels.live(channel, now, history.ttl_ms + META_EXTRA_TTL_MS);
        let mut out = Recovery {
            offset: ch.offset,
            epoch: ch.epoch.clone(),
            recovered: false,
            frames: Vec::new(),
        };
        let Some((since, since_epoch)) = since else {
            return out;
        };
        if since_epoch != ch.epoch || since > ch.offset {
            return out;
        }
        let need = ch.offset - since;
        if need == 0 {
            out.recovered = true;
            return out;
        }
        if need > max {
            return out;
        }
        // History holds consecutive offsets ending at the top, so it covers the gap
        // exactly when it reaches back to `since + 1`.
        match ch.history.front() {
            Some(&(first, _)) if first <= since + 1 => {
                out.frames = ch
                    .history
                    .iter()
                    .filter(|(o, _)| *o > since)
                    .map(|(_, f)| f.clone())
                    .collect();
                out.recovered = out.frames.len() as u64 == need;
                if !out.recovered {
                    out.frames.clear();
                }
            }
            _ => {}
        }
        out
    }

    /// Kept frames as `query` asks, with the channel's position (created, as on
    /// subscribe, when the channel has none).
    pub fn history(&self, channel: &str, query: HistoryQuery<'_>, meta_ttl: u64) -> History {
        let now = now_ms();
        let mut channels = lock(&self.0.channels);
        channels.sweep(now);
        let ch = channels.live(channel, now, meta_ttl);
        let after = match query.since {
            Some((offset, epoch)) if epoch == ch.epoch => offset,
            _ => 0,
        };
        let limit = usize::try_from(query.limit.max(1)).unwrap_or(usize::MAX);
        let kept = ch.history.iter().filter(|(o, _)| *o > after);
        let frames = if query.reverse {
            kept.rev().take(limit).map(|(_, f)| f.clone()).collect()
        } else {
            kept.take(limit).map(|(_, f)| f.clone()).collect()
        };
        History {
            offset: ch.offset,
            epoch: ch.epoch.clone(),
            frames,
        }
    }

    /// Forgets a channel's history and position (its next publish starts a new epoch).
    pub fn delete_channel(&self, channel: &str) {
        lock(&self.0.channels).map.remove(channel);
    }

    /// Frames with offsets `from..=to` still in history, oldest first.
    pub fn range(&self, channel: &str, from: u64, to: u64) -> Vec<(u64, String)> {
        let now = now_ms();
        let mut channels = lock(&self.0.channels);
        let Some(ch) = channels.get(channel, now) else {
            return Vec::new();
        };
        ch.history
            .iter()
            .filter(|(o, _)| (from..=to).contains(o))
            .cloned()
            .collect()
    }

    /// The channel's `(offset, epoch)`, without creating it.
    pub fn position(&self, channel: &str) -> Option<(u64, String)> {
        let now = now_ms();
        let mut channels = lock(&self.0.channels);
        channels
            .get(channel, now)
            .map(|c| (c.offset, c.epoch.clone()))
    }

    // === Pub/Sub ===

    /// Hands `payload` to every subscriber of `name`; returns how many there were.
    pub fn publish_raw(&self, name: &str, payload: Bytes) -> u64 {
        let mut bus = lock(&self.0.bus);
        let Some(subs) = bus.subs.get_mut(name) else {
            return 0;
        };
        let channel: Arc<str> = Arc::from(name);
        // A subscriber whose stream is gone, or that fell too far behind, is dropped.
        subs.retain(|sub| {
            if !sub.queue.take(payload.len()) {
                return false;
            }
            sub.tx
                .send(Msg {
                    channel: channel.clone(),
                    payload: payload.clone(),
                })
                .is_ok()
        });
        let n = subs.len() as u64;
        if subs.is_empty() {
            bus.subs.remove(name);
        }
        n
    }

    /// A new subscription session.
    pub fn subscriber(&self) -> (SubSink, SubStream) {
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.0.next_subscriber.fetch_add(1, Ordering::Relaxed);
        let queue = Arc::new(Queue::default());
        (
            SubSink {
                engine: self.clone(),
                id,
                tx,
                queue: queue.clone(),
                names: HashSet::new(),
            },
            SubStream { rx, queue },
        )
    }

    // === Node registry ===

    /// Records a node's beat and its stats (kept for `info_ttl_ms`).
    pub fn beat(&self, info: &NodeInfo, info_ttl_ms: u64) {
        let mut reg = lock(&self.0.registry);
        reg.nodes.insert(
            info.id.clone(),
            NodeRecord {
                beat_ms: info.beat_ms,
                info: info.clone(),
                info_until: now_ms() + info_ttl_ms,
            },
        );
    }

    /// Removes a node and everything it registered.
    pub fn deregister(&self, id: &str) {
        let mut reg = lock(&self.0.registry);
        reg.nodes.remove(id);
        reg.presence.remove(id);
    }

    /// Every registered node with its last beat, oldest beat first.
    pub fn nodes(&self) -> Vec<(String, u64)> {
        let reg = lock(&self.0.registry);
        let mut nodes: Vec<(String, u64)> = reg
            .nodes
            .iter()
            .map(|(id, r)| (id.clone(), r.beat_ms))
            .collect();
        nodes.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        nodes
    }

    /// A node's latest stats, unless they expired.
    pub fn node_info(&self, id: &str) -> Option<NodeInfo> {
        let reg = lock(&self.0.registry);
        reg.nodes
            .get(id)
            .filter(|r| r.info_until > now_ms())
            .map(|r| r.info.clone())
    }

    /// Drops nodes that last beat before `cutoff_ms`, and everything `ids` left.
    pub fn prune(&self, cutoff_ms: u64, ids: &[String]) {
        let mut reg = lock(&self.0.registry);
        reg.nodes.retain(|_, r| r.beat_ms >= cutoff_ms);
        for id in ids {
            if !reg.nodes.contains_key(id) {
                reg.presence.remove(id);
            }
        }
    }

    // === Presence (what gateways tell the monitor) ===

    /// Writes (`Some`) or removes (`None`) one of `node`'s connection records.
    pub fn set_connection(&self, node: &str, conn_id: &str, info: Option<ConnInfo>, ttl_ms: u64) {
        let mut reg = lock(&self.0.registry);
        let p = reg.presence_of(node, ttl_ms);
        match info {
            Some(i) => p.conns.insert(conn_id.to_owned(), i),
            None => p.conns.remove(conn_id),
        };
    }

    /// Writes (`Some`) or removes (`None`) one of `node`'s channel stats.
    pub fn set_channel(&self, node: &str, channel: &str, stat: Option<ChannelStat>, ttl_ms: u64) {
        let mut reg = lock(&self.0.registry);
        let p = reg.presence_of(node, ttl_ms);
        match stat {
            Some(s) => p.channels.insert(channel.to_owned(), s),
            None => p.channels.remove(channel),
        };
    }

    /// Forgets `node`'s connection and channel records.
    pub fn clear_presence(&self, node: &str) {
        lock(&self.0.registry).presence.remove(node);
    }

    /// Keeps `node`'s records for another `ttl_ms`.
    pub fn touch_presence(&self, node: &str, ttl_ms: u64) {
        let mut reg = lock(&self.0.registry);
        if let Some(p) = reg.presence.get_mut(node) {
            p.until = now_ms() + ttl_ms;
        }
    }

    /// `node`'s connection records.
    pub fn connections(&self, node: &str) -> Vec<ConnInfo> {
        let reg = lock(&self.0.registry);
        reg.presence_live(node)
            .map(|p| p.conns.values().cloned().collect())
            .unwrap_or_default()
    }

    /// How many connection records `node` has.
    pub fn connection_count(&self, node: &str) -> u64 {
        let reg = lock(&self.0.registry);
        reg.presence_live(node).map_or(0, |p| p.conns.len() as u64)
    }

    /// `node`'s channel stats.
    pub fn channels(&self, node: &str) -> Vec<(String, ChannelStat)> {
        let reg = lock(&self.0.registry);
        reg.presence_live(node)
            .map(|p| p.channels.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default()
    }

    // === Per-IP limits ===

    /// Counts a connection attempt from `ip` and takes a connection slot for
    /// `node`: the same answer as the Redis script (`-2` too many attempts this
    /// second, `-1` too many connections, else the IP's connections with this one).
    pub fn ip_acquire(
        &self,
        ip: IpAddr,
        node: &str,
        stale_ms: u64,
        max_conns: u32,
        max_rate: u32,
    ) -> i64 {
        let now = now_ms();
        let mut ips = lock(&self.0.ips);
        ips.sweep(now, stale_ms);
        let second = now / 1000;
        let attempts = ips.attempts.entry(ip).or_insert((second, 0));
        if attempts.0 != second {
            *attempts = (second, 0);
        }
        attempts.1 += 1;
        if attempts.1 > u64::from(max_rate) {
            return -2;
        }
        let shares = ips.shares.entry(ip).or_default();
        shares.retain(|n, s| n == node || now.saturating_sub(s.confirmed_ms) <= stale_ms);
        let total: i64 = shares.values().map(|s| s.count).sum();
        if total >= i64::from(max_conns) {
            return -1;
        }
        let share = shares.entry(node.to_owned()).or_default();
        share.count += 1;
        share.confirmed_ms = now;
        total + 1
    }

    /// Adds `delta` to `node`'s share of `ip`'s connections (`-1`: a release).
    pub fn ip_add(&self, ip: IpAddr, node: &str, delta: i64) {
        lock(&self.0.ips).share(ip, node).count += delta;
    }

    /// Confirms `node`'s share of `ip` (and with `count`, sets it: a resync).
    pub fn ip_confirm(&self, ip: IpAddr, node: &str, count: Option<u32>) {
        let mut ips = lock(&self.0.ips);
        let share = ips.share(ip, node);
        if let Some(n) = count {
            share.count = i64::from(n);
        }
        share.confirmed_ms = now_ms();
    }

    // === Rate-limit events ===

    /// Appends a limit hit (the newest `cap` are kept); its id is `(ms, seq)`.
    pub fn record_ratelimit(&self, event: &RateLimitEvent, cap: usize) {
        let mut ev = lock(&self.0.events);
        let ms = now_ms();
        let id = match ev.last {
            Some((last_ms, seq)) if last_ms >= ms => (last_ms, seq + 1),
            _ => (ms, 0),
        };
        ev.last = Some(id);
        ev.entries.insert(id, event.clone());
        while ev.entries.len() > cap {
            ev.entries.pop_first();
        }
    }

    /// Up to `count` events after `after` (from the oldest without one).
    pub fn ratelimit_events(
        &self,
        after: Option<(u64, u64)>,
        count: usize,
    ) -> Vec<((u64, u64), RateLimitEvent)> {
        let ev = lock(&self.0.events);
        let range = match after {
            Some(id) => ev
                .entries
                .range((std::ops::Bound::Excluded(id), std::ops::Bound::Unbounded)),
            None => ev.entries.range(..),
        };
        range.take(count).map(|(k, v)| (*k, v.clone())).collect()
    }

    /// The newest event's id.
    pub fn newest_ratelimit_id(&self) -> Option<(u64, u64)> {
        lock(&self.0.events)
            .entries
            .last_key_value()
            .map(|(k, _)| *k)
    }

    // === Channel presence ===

    /// Adds a connection to a channel's presence; a new entry publishes `payload`
    /// (its join) on `pubsub`. Returns whether the entry is new, and the members now.
    pub fn member_join(
        &self,
        channel: &str,
        conn_id: &str,
        node: &str,
        member: &str,
        pubsub: &str,
        payload: String,
    ) -> (bool, u64) {
        let mut members = lock(&self.0.members);
        let ch = members.entry(channel.to_owned()).or_default();
        let new = ch
            .insert(conn_id.to_owned(), (node.to_owned(), member.to_owned()))
            .is_none();
        let now = ch.len() as u64;
        if new {
            // Under the presence lock, as the Redis script is atomic: events of
            // one channel reach subscribers in the order the entries changed.
            self.publish_raw(pubsub, Bytes::from(payload));
        }
        (new, now)
    }

    /// Removes a connection from a channel's presence; publishes `payload` (its
    /// leave) if it was there. Returns whether it was, and the members now.
    pub fn member_leave(
        &self,
        channel: &str,
        conn_id: &str,
        pubsub: &str,
        payload: String,
    ) -> (bool, u64) {
        let mut members = lock(&self.0.members);
        let Some(m) = members.get_mut(channel) else {
            return (false, 0);
        };
        let gone = m.remove(conn_id).is_some();
        let now = m.len() as u64;
        if m.is_empty() {
            members.remove(channel);
        }
        if gone {
            self.publish_raw(pubsub, Bytes::from(payload));
        }
        (gone, now)
    }

    /// Removes the members of `dead` nodes from a channel, each with a leave on
    /// `pubsub`, as the Redis reap script does.
    pub fn reap_members(
        &self,
        channel: &str,
        pubsub: &str,
        dead: &[String],
        now: u64,
    ) -> crate::presence::Reaped {
        let alive = crate::presence::Liveness {
            live: Vec::new(),
            dead: dead.to_vec(),
        };
        let (_, _, removed) = self.sort_members(channel, pubsub, &alive, 0, now);
        let remaining = lock(&self.0.members)
            .get(channel)
            .map_or(0, |m| m.len() as u64);
        crate::presence::Reaped { removed, remaining }
    }

    /// The channel's members on `alive.live` nodes (at most `limit`, and whether
    /// there were more); members of `alive.dead` nodes are removed, each with a
    /// leave published on `pubsub`, as the Redis read script does.
    pub fn members(
        &self,
        channel: &str,
        pubsub: &str,
        alive: &crate::presence::Liveness,
        limit: usize,
        now: u64,
    ) -> (Vec<String>, bool) {
        let (out, truncated, _) = self.sort_members(channel, pubsub, alive, limit, now);
        (out, truncated)
    }

    /// Members of live nodes (at most `limit`, and whether there were more), after
    /// removing those of dead nodes (returned third).
    fn sort_members(
        &self,
        channel: &str,
        pubsub: &str,
        alive: &crate::presence::Liveness,
        limit: usize,
        now: u64,
    ) -> (Vec<String>, bool, Vec<String>) {
        use herald_proto::presence::{EventKind, encode_event, event_frame};
        let mut members = lock(&self.0.members);
        let Some(m) = members.get_mut(channel) else {
            return (Vec::new(), false, Vec::new());
        };
        let mut out = Vec::new();
        let mut truncated = false;
        let mut gone = Vec::new();
        for (conn, (node, member)) in m.iter() {
            if alive.live.contains(node) {
                if out.len() < limit {
                    out.push(member.clone());
                } else {
                    truncated = true;
                }
            } else if alive.dead.contains(node) {
                gone.push(conn.clone());
            }
        }
        let mut removed = Vec::with_capacity(gone.len());
        for conn in gone {
            if let Some((_, member)) = m.remove(&conn) {
                let frame = event_frame(EventKind::Leave, channel, &member);
                self.publish_raw(pubsub, Bytes::from(encode_event(now, &conn, &frame)));
                removed.push(member);
            }
        }
        if m.is_empty() {
            members.remove(channel);
        }
        (out, truncated, removed)
    }

    // === Revocations ===

    pub fn revoke(&self, jti: &str, ttl_ms: u64) {
        lock(&self.0.revoked).insert(jti.to_owned(), now_ms(), ttl_ms);
    }

    pub fn is_revoked(&self, jti: &str) -> bool {
        lock(&self.0.revoked).contains(jti, now_ms())
    }
}

/// One channel's presence: conn_id → (node, member record).
type ChannelMembers = HashMap<String, (String, String)>;

// === Channels ===

#[derive(Default)]
struct Channels {
    map: HashMap<String, Channel>,
    /// Publishes made under an idempotency key: `(channel, id)` → their result
    /// and its deadline.
    once: HashMap<(String, String), (u64, String, u64)>,
    swept_ms: u64,
}

struct Channel {
    epoch: String,
    offset: u64,
    /// `(offset, frame)`, consecutive offsets ending at `offset`.
    history: VecDeque<(u64, String)>,
    history_until: u64,
    /// When the channel's offsets are forgotten (a new epoch begins).
    meta_until: u64,
}

impl Channels {
    /// The channel, forgetting what expired.
    fn get(&mut self, name: &str, now: u64) -> Option<&mut Channel> {
        if self.map.get(name).is_some_and(|c| c.meta_until <= now) {
            self.map.remove(name);
        }
        let ch = self.map.get_mut(name)?;
        if ch.history_until <= now {
            ch.history.clear();
        }
        Some(ch)
    }

    /// The channel, created in a new epoch if it has none.
    fn live(&mut self, name: &str, now: u64, meta_ttl: u64) -> &mut Channel {
        if self.get(name, now).is_none() {
            self.map.insert(
                name.to_owned(),
                Channel {
                    epoch: new_epoch(),
                    offset: 0,
                    history: VecDeque::new(),
                    history_until: 0,
                    meta_until: now + meta_ttl,
                },
            );
        }
        self.map.get_mut(name).expect("inserted above")
    }

    fn sweep(&mut self, now: u64) {
        if now < self.swept_ms + SWEEP_EVERY_MS {
            return;
        }
        self.swept_ms = now;
        self.map.retain(|_, c| c.meta_until > now);
        for c in self.map.values_mut() {
            if c.history_until <= now {
                c.history = VecDeque::new();
            }
        }
        self.once.retain(|_, (_, _, until)| *until > now);
    }
}

// === Pub/Sub ===

#[derive(Default)]
struct Bus {
    /// Pub/Sub name → its subscribers.
    subs: HashMap<String, Vec<Subscriber>>,
}

/// One session's registration under a name.
struct Subscriber {
    id: u64,
    tx: mpsc::UnboundedSender<Msg>,
    queue: Arc<Queue>,
}

/// The most bytes a subscription may have waiting: Redis's default
/// `client-output-buffer-limit pubsub` hard limit.
pub const SUBSCRIBER_BUFFER_LIMIT: usize = 32 * 1024 * 1024;

/// What a session has waiting. A session that falls [`SUBSCRIBER_BUFFER_LIMIT`]
/// behind is cut off, as Redis cuts off a Pub/Sub client: its stream ends (the
/// gateway reconnects and catches up from history) instead of its backlog
/// growing without bound while publishers outrun it.
#[derive(Default)]
struct Queue {
    bytes: AtomicUsize,
    cut: AtomicBool,
}

impl Queue {
    /// Counts `n` more bytes waiting; false (and cut off) when over the limit.
    fn take(&self, n: usize) -> bool {
        if self.cut.load(Ordering::Relaxed) {
            return false;
        }
        if self.bytes.fetch_add(n, Ordering::Relaxed) + n > SUBSCRIBER_BUFFER_LIMIT {
            self.cut.store(true, Ordering::Relaxed);
            return false;
        }
        true
    }
}

/// One message a [`SubStream`] received.
#[derive(Debug, Clone)]
pub struct Msg {
    pub channel: Arc<str>,
    pub payload: Bytes,
}

/// The subscribing half of a memory subscription; dropping it unsubscribes from
/// everything.
pub struct SubSink {
    engine: MemoryEngine,
    id: u64,
    tx: mpsc::UnboundedSender<Msg>,
    queue: Arc<Queue>,
    names: HashSet<String>,
}

impl SubSink {
    /// Subscribes to `names`; what is published to them afterwards is received.
    pub fn subscribe(&mut self, names: &[String]) {
        let mut bus = lock(&self.engine.0.bus);
        for name in names {
            if self.names.insert(name.clone()) {
                bus.subs.entry(name.clone()).or_default().push(Subscriber {
                    id: self.id,
                    tx: self.tx.clone(),
                    queue: self.queue.clone(),
                });
            }
        }
    }

    pub fn unsubscribe(&mut self, name: &str) {
        if !self.names.remove(name) {
            return;
        }
        let mut bus = lock(&self.engine.0.bus);
        if let Some(subs) = bus.subs.get_mut(name) {
            subs.retain(|sub| sub.id != self.id);
            if subs.is_empty() {
                bus.subs.remove(name);
            }
        }
    }
}

impl Drop for SubSink {
    fn drop(&mut self) {
        for name in std::mem::take(&mut self.names) {
            self.names.insert(name.clone());
            self.unsubscribe(&name);
        }
    }
}

/// The receiving half of a memory subscription.
pub struct SubStream {
    rx: mpsc::UnboundedReceiver<Msg>,
    queue: Arc<Queue>,
}

impl SubStream {
    /// The next message; `None` once the sink is gone or the session was cut off
    /// for falling too far behind (what it had waiting is dropped, as a closed
    /// connection drops it).
    pub async fn next(&mut self) -> Option<Msg> {
        if self.queue.cut.load(Ordering::Relaxed) {
            return None;
        }
        let msg = self.rx.recv().await?;
        self.queue
            .bytes
            .fetch_sub(msg.payload.len(), Ordering::Relaxed);
        Some(msg)
    }
}

// === Registry ===

#[derive(Default)]
struct Registry {
    nodes: HashMap<String, NodeRecord>,
    presence: HashMap<String, Presence>,
}

struct NodeRecord {
    beat_ms: u64,
    info: NodeInfo,
    info_until: u64,
}

#[derive(Default)]
struct Presence {
    conns: HashMap<String, ConnInfo>,
    channels: HashMap<String, ChannelStat>,
    until: u64,
}

impl Registry {
    fn presence_of(&mut self, node: &str, ttl_ms: u64) -> &mut Presence {
        let now = now_ms();
        let p = self.presence.entry(node.to_owned()).or_default();
        if p.until <= now {
            // Expired records are gone, as a Redis key past its TTL would be.
            p.conns.clear();
            p.channels.clear();
        }
        p.until = now + ttl_ms;
        p
    }

    fn presence_live(&self, node: &str) -> Option<&Presence> {
        self.presence.get(node).filter(|p| p.until > now_ms())
    }
}

// === Per-IP counts ===

#[derive(Default)]
struct Ips {
    /// IP → (second, attempts in it).
    attempts: HashMap<IpAddr, (u64, u64)>,
    /// IP → node → its share.
    shares: HashMap<IpAddr, HashMap<String, Share>>,
    swept_ms: u64,
}

#[derive(Default)]
struct Share {
    count: i64,
    confirmed_ms: u64,
}

impl Ips {
    /// `node`'s share of `ip`'s connections, made when it has none.
    fn share(&mut self, ip: IpAddr, node: &str) -> &mut Share {
        self.shares
            .entry(ip)
            .or_default()
            .entry(node.to_owned())
            .or_default()
    }

    fn sweep(&mut self, now: u64, stale_ms: u64) {
        if now < self.swept_ms + SWEEP_EVERY_MS {
            return;
        }
        self.swept_ms = now;
        let second = now / 1000;
        self.attempts.retain(|_, (s, _)| *s == second);
        self.shares.retain(|_, shares| {
            shares.retain(|_, s| s.count > 0 && now.saturating_sub(s.confirmed_ms) <= stale_ms);
            !shares.is_empty()
        });
    }
}

// === Rate-limit events ===

#[derive(Default)]
struct Events {
    entries: BTreeMap<(u64, u64), RateLimitEvent>,
    last: Option<(u64, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> FrameTemplate {
        herald_proto::envelope::FrameTemplate {
            head: "{\"type\":\"message\",\"offset\":".to_owned(),
            tail: "}".to_owned(),
        }
    }

    fn history(size: u64) -> HistoryConfig {
        HistoryConfig {
            size,
            ttl_ms: 60_000,
        }
    }

    #[tokio::test]
    async fn offsets_history_and_delivery_agree() {
        let m = MemoryEngine::new();
        let (mut sink, mut stream) = m.subscriber();
        sink.subscribe(&["ch:a".to_owned()]);
        let (o1, e1, dup) = m.publish(history(10), "a", "ch:a", &frame(), 5, None);
        let (o2, e2, _) = m.publish(history(10), "a", "ch:a", &frame(), 6, None);
        assert_eq!((o1, o2, dup), (1, 2, false));
        assert_eq!(e1, e2);
        let first = stream.next().await.unwrap();
        assert_eq!(&*first.channel, "ch:a");
        let text = std::str::from_utf8(&first.payload).unwrap();
        assert!(text.starts_with(&format!("1 {e1} 5\n")), "{text}");
        let env = herald_proto::envelope::decode(&first.payload).unwrap();
        assert_eq!((env.offset, env.epoch), (1, e1.as_str()));
        assert_eq!(m.range("a", 2, 2).len(), 1);
        assert_eq!(m.position("a"), Some((2, e1.clone())));
        drop(sink);
        assert_eq!(m.publish_raw("ch:a", Bytes::from_static(b"x")), 0);
    }

    #[tokio::test]
    async fn a_subscriber_too_far_behind_is_cut_off() {
        let m = MemoryEngine::new();
        let (mut sink, mut stream) = m.subscriber();
        sink.subscribe(&["x".to_owned()]);
        let chunk = Bytes::from(vec![b'.'; 1024 * 1024]);
        for _ in 0..SUBSCRIBER_BUFFER_LIMIT / chunk.len() {
            assert_eq!(m.publish_raw("x", chunk.clone()), 1);
        }
        // Reading gives room back: still within the limit.
        stream.next().await.expect("a message");
        assert_eq!(m.publish_raw("x", chunk.clone()), 1);
        // One more than fits: the session ends, and stops counting as a subscriber.
        assert_eq!(m.publish_raw("x", chunk.clone()), 0);
        assert!(stream.next().await.is_none());
        assert_eq!(m.publish_raw("x", chunk), 0);
    }

    #[test]
    fn recovery_is_all_or_nothing() {
        let m = MemoryEngine::new();
        for _ in 0..5 {
            m.publish(history(3), "a", "ch:a", &frame(), 0, None);
        }
        let epoch = m.position("a").unwrap().1;
        let r = m.recover(history(3), "a", Some((2, &epoch)), 100);
        assert!(r.recovered);
        assert_eq!(r.frames.len(), 3);
        // Offset 2 fell out of a history of three: not a partial answer.
        let r = m.recover(history(3), "a", Some((1, &epoch)), 100);
        assert!(!r.recovered && r.frames.is_empty());
        let r = m.recover(history(3), "a", Some((5, &epoch)), 100);
        assert!(r.recovered && r.frames.is_empty());
        let r = m.recover(history(3), "a", Some((2, "other")), 100);
        assert!(!r.recovered && r.offset == 5);
        let r = m.recover(history(3), "a", Some((3, &epoch)), 1);
        assert!(!r.recovered);
    }

    #[test]
    fn history_reads_forward_backward_and_after_a_position() {
        let m = MemoryEngine::new();
        for _ in 0..5 {
            m.publish(history(3), "a", "ch:a", &frame(), 0, None);
        }
        let offsets = |h: History| -> Vec<u64> {
            h.frames
                .iter()
                .map(|f| {
                    serde_json::from_str::<serde_json::Value>(f).unwrap()["offset"]
                        .as_u64()
                        .unwrap()
                })
                .collect()
        };
        let q = |since, limit, reverse| HistoryQuery {
            since,
            limit,
            reverse,
        };
        let h = m.history("a", q(None, 10, false), 60_000);
        assert_eq!(h.offset, 5);
        let epoch = h.epoch.clone();
        assert_eq!(offsets(h), [3, 4, 5]);
        assert_eq!(offsets(m.history("a", q(None, 2, true), 60_000)), [5, 4]);
        assert_eq!(
            offsets(m.history("a", q(Some((3, &epoch)), 10, false), 60_000)),
            [4, 5]
        );
        assert_eq!(
            offsets(m.history("a", q(Some((4, &epoch)), 10, true), 60_000)),
            [5]
        );
        // Another epoch's offset says nothing: from the oldest kept.
        assert_eq!(
            offsets(m.history("a", q(Some((4, "old")), 10, false), 60_000)),
            [3, 4, 5]
        );
        m.delete_channel("a");
        let h = m.history("a", q(None, 10, false), 60_000);
        assert!(h.frames.is_empty() && h.offset == 0 && h.epoch != epoch);
    }

    #[test]
    fn once_publishes_once() {
        let m = MemoryEngine::new();
        let a = m.publish(history(3), "a", "ch:a", &frame(), 0, Some(("k", 60_000)));
        let b = m.publish(history(3), "a", "ch:a", &frame(), 0, Some(("k", 60_000)));
        assert_eq!((a.0, b.0, a.2, b.2), (1, 1, false, true));
        assert_eq!(m.position("a").unwrap().0, 1);
    }

    #[test]
    fn ip_limits_count_attempts_and_connections() {
        let m = MemoryEngine::new();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(m.ip_acquire(ip, "g1", 15_000, 2, 100), 1);
        assert_eq!(m.ip_acquire(ip, "g2", 15_000, 2, 100), 2);
        assert_eq!(m.ip_acquire(ip, "g1", 15_000, 2, 100), -1);
        m.ip_add(ip, "g2", -1);
        assert_eq!(m.ip_acquire(ip, "g1", 15_000, 2, 100), 2);
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(m.ip_acquire(other, "g1", 15_000, 100, 1), 1);
        assert_eq!(m.ip_acquire(other, "g1", 15_000, 100, 1), -2);
    }

    #[test]
    fn events_and_revocations() {
        let m = MemoryEngine::new();
        let ev = RateLimitEvent {
            who: "u".into(),
            kind: herald_proto::node::LimitKind::Message,
            node: "n".into(),
            at_ms: 1,
        };
        for _ in 0..5 {
            m.record_ratelimit(&ev, 3);
        }
        let all = m.ratelimit_events(None, 10);
        assert_eq!(all.len(), 3);
        assert_eq!(m.ratelimit_events(Some(all[0].0), 10).len(), 2);
        assert_eq!(m.newest_ratelimit_id(), Some(all[2].0));
        m.revoke("j", 60_000);
        assert!(m.is_revoked("j") && !m.is_revoked("k"));
    }
}
