//! The cluster view as pure data: a node's status from the age of its last beat,
//! rates from counter deltas, the overview built from one round of reads, and the
//! Redis Cluster's shards from its topology.
//! Nothing here does I/O, so every rule is tested with fixed timestamps.

use std::collections::{BTreeMap, HashMap, VecDeque};

use herald_common::engine::topology::Topology;
use herald_proto::monitor::{
    ChannelRow, NodeRow, Overview, RateLimitView, RecentHit, RedisClusterView, ShardView, Status,
    Totals,
};
use herald_proto::node::{ChannelStat, LimitKind, NodeInfo, RateLimitEvent};
use herald_proto::time::ms_to_rfc3339;

/// A node whose last beat is at most this old is `up`.
pub(crate) const UP_MAX_AGE_MS: u64 = 3_000;
/// A node whose last beat is at most this old (and not `up`) is `stale`.
pub(crate) const STALE_MAX_AGE_MS: u64 = 10_000;
/// How long a silent node stays listed as `down` before it is dropped.
pub(crate) const DOWN_RETENTION_MS: u64 = 5 * 60 * 1000;
/// How many channels the overview lists.
pub(crate) const TOP_CHANNELS: usize = 10;
/// How many rate-limit hits the overview lists, newest first.
pub(crate) const RECENT_HITS: usize = 20;
/// Rate-limit kinds the overview always reports, even at zero, so a dashboard
/// has stable columns.
const ALWAYS_KINDS: [LimitKind; 2] = [LimitKind::Message, LimitKind::Connection];

// === Status ===

/// The age of a beat; a beat from the future (clock skew) counts as fresh.
pub(crate) fn age_ms(now_ms: u64, beat_ms: u64) -> u64 {
    now_ms.saturating_sub(beat_ms)
}

pub(crate) fn classify(now_ms: u64, beat_ms: u64) -> Status {
    match age_ms(now_ms, beat_ms) {
        a if a <= UP_MAX_AGE_MS => Status::Up,
        a if a <= STALE_MAX_AGE_MS => Status::Stale,
        _ => Status::Down,
    }
}

/// Whether a node has been silent long enough to be dropped from the registry.
pub(crate) fn expired(now_ms: u64, beat_ms: u64) -> bool {
    age_ms(now_ms, beat_ms) > DOWN_RETENTION_MS
}

// === Rates ===

/// Events per second between two readings of a cumulative counter. A counter
/// that went down was reset (the node restarted), so everything it holds now
/// happened since.
pub(crate) fn per_sec(prev: u64, cur: u64, elapsed_ms: u64) -> f64 {
    if elapsed_ms == 0 {
        return 0.0;
    }
    let delta = if cur >= prev { cur - prev } else { cur };
    delta as f64 * 1000.0 / elapsed_ms as f64
}

/// One node's cumulative counters as of one of its beats.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Counters {
    /// The beat the counters belong to: the node's own clock, so the elapsed time
    /// between two readings is exactly the time the counters moved in.
    pub(crate) beat_ms: u64,
    /// Changes when the node restarts under the same id, which resets its counters.
    pub(crate) started_ms: u64,
    pub(crate) messages_in: u64,
    pub(crate) messages_out: u64,
    /// Channel → messages carried so far on this node.
    pub(crate) channels: HashMap<String, u64>,
}

/// A node's rates and the counters they were computed from.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Rates {
    pub(crate) basis: Counters,
    pub(crate) messages_in: f64,
    pub(crate) messages_out: f64,
    pub(crate) channels: HashMap<String, f64>,
}

/// The rates after reading `cur`. The monitor samples about as often as nodes
/// beat, so it often reads the same beat twice: then the rates from the last new
/// beat stand, rather than dropping to zero and doubling on the next one.
pub(crate) fn advance(prev: Option<&Rates>, cur: Counters) -> Rates {
    let Some(prev) = prev else {
        return fresh(cur);
    };
    if cur.beat_ms == prev.basis.beat_ms && cur.started_ms == prev.basis.started_ms {
        return prev.clone();
    }
    if cur.beat_ms < prev.basis.beat_ms || cur.started_ms != prev.basis.started_ms {
        return fresh(cur);
    }
    let elapsed = cur.beat_ms - prev.basis.beat_ms;
    let channels = cur
        .channels
        .iter()
        .map(|(name, &n)| {
            // A channel first seen now started from zero since the last beat.
            let before = prev.basis.channels.get(name).copied().unwrap_or(0);
            (name.clone(), per_sec(before, n, elapsed))
        })
        .collect();
    Rates {
        messages_in: per_sec(prev.basis.messages_in, cur.messages_in, elapsed),
        messages_out: per_sec(prev.basis.messages_out, cur.messages_out, elapsed),
        channels,
        basis: cur,
    }
}

/// The first reading of a node (or of a restarted one): no rate is known yet.
fn fresh(cur: Counters) -> Rates {
    Rates {
        channels: cur.channels.keys().map(|c| (c.clone(), 0.0)).collect(),
        basis: cur,
        ..Rates::default()
    }
}

/// Two decimals are plenty for a dashboard and keep the JSON short.
fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

// === Rate-limit events ===

/// The rate-limit hits this monitor has read from the stream so far.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tally {
    /// The id of the last stream entry read, to read only newer ones next time.
    pub(crate) last_id: Option<StreamId>,
    pub(crate) by_kind: BTreeMap<LimitKind, u64>,
    /// Newest first, at most [`RECENT_HITS`].
    pub(crate) recent: VecDeque<RateLimitEvent>,
}

/// A stream entry id, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct StreamId {
    pub(crate) ms: u64,
    pub(crate) seq: u64,
}

impl StreamId {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        let (ms, seq) = s.split_once('-')?;
        Some(Self {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl Tally {
    /// Counts events read in stream order (oldest first).
    pub(crate) fn record(&mut self, id: StreamId, event: RateLimitEvent) {
        self.last_id = Some(id);
        *self.by_kind.entry(event.kind).or_insert(0) += 1;
        self.recent.push_front(event);
        self.recent.truncate(RECENT_HITS);
    }
}

// === The overview ===

/// One node as one sampling round read it.
#[derive(Debug, Clone, Default)]
pub(crate) struct NodeReading {
    pub(crate) id: String,
    /// Its score in the registry ZSET.
    pub(crate) beat_ms: u64,
    /// `None` when its stats key is gone (deleted by hand, or not yet written).
    pub(crate) info: Option<NodeInfo>,
    pub(crate) channels: HashMap<String, ChannelStat>,
}

/// The last health probe of a node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Probe {
    pub(crate) ok: bool,
    pub(crate) latency_ms: f64,
}

/// What requests are served from: built once per sampling round.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub(crate) overview: Overview,
    /// The overview serialized once, for `/overview` and every stream client.
    pub(crate) overview_json: String,
    /// Every channel on a live node, most subscribers first.
    pub(crate) channels: Vec<ChannelRow>,
}

impl Snapshot {
    pub(crate) fn new(overview: Overview, channels: Vec<ChannelRow>) -> Self {
        let overview_json = serde_json::to_string(&overview).unwrap_or_else(|_| "{}".to_owned());
        Self {
            overview,
            overview_json,
            channels,
        }
    }

    /// Before the first sample: an empty cluster, flagged stale.
    pub(crate) fn empty(now_ms: u64) -> Self {
        let mut rates = HashMap::new();
        let (mut s, _) = build(now_ms, &[], &mut rates, &Tally::default(), &HashMap::new());
        s.overview.stale = true;
        Self::new(s.overview, s.channels)
    }

    /// The same sample, flagged as no longer current (Redis unreachable), with the
    /// Redis Cluster's topology as read now: it can be read while the rest cannot.
    pub(crate) fn into_stale(self, redis_cluster: Option<RedisClusterView>) -> Self {
        if self.overview.stale && self.overview.redis_cluster == redis_cluster {
            return self;
        }
        let mut overview = self.overview;
        overview.stale = true;
        overview.redis_cluster = redis_cluster;
        Self::new(overview, self.channels)
    }

    /// Nodes whose reported state still counts (up or stale), by id.
    pub(crate) fn live_nodes(&self) -> impl Iterator<Item = &NodeRow> {
        self.overview.nodes.iter().filter(|n| n.status.is_live())
    }
}

/// Builds the snapshot of one round, updating each node's rates in `rates`
/// (nodes no longer listed are forgotten). Returns the snapshot and the status
/// of every node, for metrics.
pub(crate) fn build(
    now_ms: u64,
    nodes: &[NodeReading],
    rates: &mut HashMap<String, Rates>,
    tally: &Tally,
    probes: &HashMap<String, Probe>,
) -> (Snapshot, Vec<(String, String, Status)>) {
    let mut rows = Vec::with_capacity(nodes.len());
    let mut totals = Totals::default();
    let mut next_rates = HashMap::with_capacity(nodes.len());
    // Channel → (subscribers summed over nodes, highest rate on any node).
    let mut channels: HashMap<&str, (u64, f64)> = HashMap::new();

    for node in nodes {
        let status = classify(now_ms, node.beat_ms);
        let info = node.info.clone().unwrap_or_else(|| NodeInfo {
            id: node.id.clone(),
            service: "unknown".to_owned(),
            beat_ms: node.beat_ms,
            ..NodeInfo::default()
        });
        let counters = Counters {
            beat_ms: info.beat_ms,
            started_ms: info.started_ms,
            messages_in: info.messages_in,
            messages_out: info.messages_out,
            channels: node
                .channels
                .iter()
                .map(|(c, s)| (c.clone(), s.messages))
                .collect(),
        };
        let r = advance(rates.get(&node.id), counters);
        // Only an up node's rates are current; a silent one moves nothing we can see.
        let live_rate = |x: f64| if status == Status::Up { round2(x) } else { 0.0 };
        let (rate_in, rate_out) = (live_rate(r.messages_in), live_rate(r.messages_out));

        match status {
            Status::Up => totals.nodes_up += 1,
            Status::Stale => totals.nodes_stale += 1,
            Status::Down => totals.nodes_down += 1,
        }
        // Counters are cumulative history, so a down node's hits still count.
        totals.ratelimit_hits += info.ratelimit_hits;
        if status.is_live() {
            totals.connections += info.connections;
            totals.subscriptions += info.subscriptions;
            totals.messages_in_per_sec += rate_in;
            totals.messages_out_per_sec += rate_out;
            for (name, stat) in &node.channels {
                let rate = live_rate(r.channels.get(name).copied().unwrap_or(0.0));
                let entry = channels.entry(name.as_str()).or_insert((0, 0.0));
                entry.0 += stat.subscribers;
                // Every gateway with subscribers receives each message of the
                // channel once, so the channel's rate is the highest any reports,
                // not their sum.
                entry.1 = entry.1.max(rate);
            }
        }
        let probe = probes.get(&node.id);
        rows.push(NodeRow {
            id: node.id.clone(),
            service: info.service,
            address: info.address,
            version: info.version,
            status,
            last_heartbeat_ms: age_ms(now_ms, node.beat_ms),
            ready: info.ready,
            started_at: ms_to_rfc3339(info.started_ms),
            connections: info.connections,
            subscriptions: info.subscriptions,
            channels: info.channels,
            messages_in_per_sec: rate_in,
            messages_out_per_sec: rate_out,
            ratelimit_hits: info.ratelimit_hits,
            probe_ok: probe.map(|p| p.ok),
            probe_latency_ms: probe.map(|p| round2(p.latency_ms)),
        });
        next_rates.insert(node.id.clone(), r);
    }
    *rates = next_rates;
    totals.messages_in_per_sec = round2(totals.messages_in_per_sec);
    totals.messages_out_per_sec = round2(totals.messages_out_per_sec);
    totals.channels = channels.len() as u64;

    rows.sort_by(|a, b| (&a.service, &a.id).cmp(&(&b.service, &b.id)));
    let mut all_channels: Vec<ChannelRow> = channels
        .into_iter()
        .map(|(channel, (subscribers, rate))| ChannelRow {
            channel: channel.to_owned(),
            subscribers,
            messages_per_sec: round2(rate),
            members: None,
        })
        .collect();
    all_channels.sort_by(|a, b| {
        b.subscribers
            .cmp(&a.subscribers)
            .then_with(|| a.channel.cmp(&b.channel))
    });
    let statuses = rows
        .iter()
        .map(|r| (r.service.clone(), r.id.clone(), r.status))
        .collect();

    let overview = Overview {
        generated_at: ms_to_rfc3339(now_ms),
        generated_ms: now_ms,
        stale: false,
        nodes: rows,
        totals,
        top_channels: all_channels.iter().take(TOP_CHANNELS).cloned().collect(),
        ratelimit: ratelimit_view(tally),
        // Read by the sampler beside the build (engine reads happen there).
        webhooks: None,
        redis_cluster: None,
    };
    (Snapshot::new(overview, all_channels), statuses)
}

fn ratelimit_view(tally: &Tally) -> RateLimitView {
    let mut by_kind = tally.by_kind.clone();
    for kind in ALWAYS_KINDS {
        by_kind.entry(kind).or_insert(0);
    }
    RateLimitView {
        hits_total: by_kind.values().sum(),
        by_kind,
        recent: tally
            .recent
            .iter()
            .map(|e| RecentHit {
                who: e.who.clone(),
                kind: e.kind,
                node: e.node.clone(),
                at: ms_to_rfc3339(e.at_ms),
            })
            .collect(),
    }
}

// === Redis Cluster ===

/// The shards of a Redis Cluster topology. A failing primary keeps its shard (and
/// its slots, uncovered) until a replica takes them over; after that it serves no
/// slot and is no longer listed.
pub(crate) fn redis_cluster_view(topology: &Topology) -> RedisClusterView {
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    let shards: Vec<ShardView> = topology
        .shards()
        .iter()
        .map(|s| ShardView {
            primary: s.primary.addr.clone(),
            primary_up: !s.primary.failing,
            slots: s.slot_count(),
            replicas: count(s.replicas.len()),
            replicas_up: count(s.replicas.iter().filter(|r| !r.failing).count()),
        })
        .collect();
    let slots_covered = shards
        .iter()
        .filter(|s| s.primary_up)
        .map(|s| s.slots)
        .sum();
    RedisClusterView {
        shards,
        slots_covered,
    }
}

#[cfg(test)]
mod tests {
    use herald_proto::monitor::REDIS_CLUSTER_SLOTS;

    use super::*;

    const T0: u64 = 1_700_000_000_000;

    #[track_caller]
    fn check_status(age: u64, want: Status) {
        assert_eq!(classify(T0 + age, T0), want, "age {age} ms");
    }

    #[test]
    fn status_by_beat_age() {
        check_status(0, Status::Up);
        check_status(3_000, Status::Up);
        check_status(3_001, Status::Stale);
        check_status(10_000, Status::Stale);
        check_status(10_001, Status::Down);
        check_status(DOWN_RETENTION_MS, Status::Down);
        // A beat from a node whose clock runs ahead is fresh, not an overflow.
        assert_eq!(classify(T0, T0 + 5_000), Status::Up);
        assert!(!expired(T0 + DOWN_RETENTION_MS, T0));
        assert!(expired(T0 + DOWN_RETENTION_MS + 1, T0));
        assert!(!expired(T0, T0 + 1));
    }

    #[test]
    fn per_sec_from_deltas() {
        assert_eq!(per_sec(0, 500, 1_000), 500.0);
        assert_eq!(per_sec(100, 400, 2_000), 150.0);
        assert_eq!(per_sec(10, 10, 1_000), 0.0);
        assert_eq!(per_sec(0, 5, 0), 0.0);
        // A reset counter: the node restarted and has counted 30 since.
        assert_eq!(per_sec(1_000, 30, 1_000), 30.0);
    }

    fn counters(beat_ms: u64, msg_in: u64, msg_out: u64, chans: &[(&str, u64)]) -> Counters {
        Counters {
            beat_ms,
            started_ms: T0 - 60_000,
            messages_in: msg_in,
            messages_out: msg_out,
            channels: chans.iter().map(|(c, n)| ((*c).to_owned(), *n)).collect(),
        }
    }

    #[test]
    fn rates_advance_only_on_new_beats() {
        let first = advance(None, counters(T0, 10, 0, &[("news", 0)]));
        assert_eq!((first.messages_in, first.messages_out), (0.0, 0.0));
        assert_eq!(first.channels["news"], 0.0);

        let second = advance(
            Some(&first),
            counters(T0 + 1_000, 110, 500, &[("news", 250), ("chat", 4)]),
        );
        assert_eq!(second.messages_in, 100.0);
        assert_eq!(second.messages_out, 500.0);
        assert_eq!(second.channels["news"], 250.0);
        assert_eq!(second.channels["chat"], 4.0);

        // The same beat read again keeps the rates it produced.
        let again = advance(
            Some(&second),
            counters(T0 + 1_000, 110, 500, &[("news", 250)]),
        );
        assert_eq!(again, second);

        // Half a second later, 100 more out: 200/s.
        let third = advance(
            Some(&again),
            counters(T0 + 1_500, 110, 600, &[("news", 250)]),
        );
        assert_eq!(third.messages_out, 200.0);
        assert_eq!(third.messages_in, 0.0);
        assert_eq!(third.channels["news"], 0.0);
    }

    #[test]
    fn restart_or_clock_step_back_starts_over() {
        let a = advance(None, counters(T0, 0, 1_000, &[]));
        let mut restarted = counters(T0 + 1_000, 0, 5, &[]);
        restarted.started_ms = T0 + 500;
        let b = advance(Some(&a), restarted.clone());
        assert_eq!(b.messages_out, 0.0);
        assert_eq!(b.basis, restarted);
        let back = advance(Some(&b), counters(T0, 0, 9, &[]));
        assert_eq!(back.messages_out, 0.0);
    }

    fn reading(id: &str, service: &str, beat_ms: u64, info: NodeInfo) -> NodeReading {
        NodeReading {
            id: id.to_owned(),
            beat_ms,
            info: Some(NodeInfo {
                id: id.to_owned(),
                service: service.to_owned(),
                beat_ms,
                started_ms: T0 - 60_000,
                ..info
            }),
            channels: HashMap::new(),
        }
    }

    #[test]
    fn overview_totals_and_channels() {
        let mut g1 = reading(
            "gw-1",
            "ws-gateway",
            T0,
            NodeInfo {
                connections: 3,
                subscriptions: 5,
                messages_out: 0,
                ratelimit_hits: 2,
                ..NodeInfo::default()
            },
        );
        g1.channels = HashMap::from([
            (
                "news".to_owned(),
                ChannelStat {
                    subscribers: 2,
                    messages: 0,
                },
            ),
            (
                "chat:1".to_owned(),
                ChannelStat {
                    subscribers: 3,
                    messages: 0,
                },
            ),
        ]);
        let mut g2 = g1.clone();
        g2.id = "gw-2".to_owned();
        let dead = reading(
            "gw-dead",
            "ws-gateway",
            T0 - 20_000,
            NodeInfo {
                connections: 50,
                ratelimit_hits: 1,
                ..NodeInfo::default()
            },
        );
        let mut rates = HashMap::new();
        let tally = Tally::default();
        let probes = HashMap::from([(
            "gw-1".to_owned(),
            Probe {
                ok: true,
                latency_ms: 1.234,
            },
        )]);
        build(
            T0,
            &[g1.clone(), g2.clone(), dead.clone()],
            &mut rates,
            &tally,
            &probes,
        );

        // One second later both gateways carried 100 news messages; gw-1 sent 400 frames.
        let step = |r: &mut NodeReading, out: u64| {
            r.beat_ms += 1_000;
            if let Some(i) = r.info.as_mut() {
                i.beat_ms += 1_000;
                i.messages_out = out;
            }
            if let Some(s) = r.channels.get_mut("news") {
                s.messages = 100;
            }
        };
        step(&mut g1, 400);
        step(&mut g2, 0);
        let (snap, statuses) = build(T0 + 1_000, &[g1, g2, dead], &mut rates, &tally, &probes);
        let o = &snap.overview;
        assert_eq!((o.totals.nodes_up, o.totals.nodes_down), (2, 1));
        assert_eq!(
            o.totals.connections, 6,
            "a down node's connections are gone"
        );
        assert_eq!(o.totals.subscriptions, 10);
        assert_eq!(
            o.totals.ratelimit_hits, 5,
            "cumulative hits count from every node"
        );
        assert_eq!(o.totals.messages_out_per_sec, 400.0);
        assert_eq!(o.totals.channels, 2);
        assert_eq!(
            o.top_channels,
            vec![
                ChannelRow {
                    channel: "chat:1".to_owned(),
                    subscribers: 6,
                    messages_per_sec: 0.0,
                    members: None,
                },
                ChannelRow {
                    channel: "news".to_owned(),
                    subscribers: 4,
                    messages_per_sec: 100.0,
                    members: None,
                },
            ]
        );
        let gw1 = &o.nodes[0];
        assert_eq!(gw1.id, "gw-1");
        assert_eq!(gw1.last_heartbeat_ms, 0);
        assert_eq!(
            (gw1.probe_ok, gw1.probe_latency_ms),
            (Some(true), Some(1.23))
        );
        assert_eq!(o.nodes[1].probe_ok, None);
        assert_eq!(o.nodes[2].status, Status::Down);
        assert_eq!(o.nodes[2].last_heartbeat_ms, 21_000);
        assert_eq!(statuses.len(), 3);
        assert_eq!(rates.len(), 3);

        // A node that left the registry leaves the rate table too.
        build(T0 + 2_000, &[], &mut rates, &tally, &probes);
        assert!(rates.is_empty());
    }

    #[test]
    fn missing_stats_still_listed() {
        let n = NodeReading {
            id: "x".to_owned(),
            beat_ms: T0 - 5_000,
            info: None,
            channels: HashMap::new(),
        };
        let (snap, _) = build(
            T0,
            &[n],
            &mut HashMap::new(),
            &Tally::default(),
            &HashMap::new(),
        );
        let row = &snap.overview.nodes[0];
        assert_eq!(
            (row.service.as_str(), row.status),
            ("unknown", Status::Stale)
        );
    }

    #[test]
    fn tally_counts_by_kind_and_keeps_recent() {
        let mut t = Tally::default();
        for i in 0..25u64 {
            let kind = if i % 5 == 0 {
                LimitKind::Connection
            } else {
                LimitKind::Message
            };
            t.record(
                StreamId { ms: T0 + i, seq: 0 },
                RateLimitEvent {
                    who: format!("u{i}"),
                    kind,
                    node: "gw-1".to_owned(),
                    at_ms: T0 + i,
                },
            );
        }
        let v = ratelimit_view(&t);
        assert_eq!(v.hits_total, 25);
        assert_eq!(v.by_kind[&LimitKind::Message], 20);
        assert_eq!(v.by_kind[&LimitKind::Connection], 5);
        assert_eq!(v.recent.len(), RECENT_HITS);
        assert_eq!(v.recent[0].who, "u24", "newest first");
        assert_eq!(
            t.last_id,
            Some(StreamId {
                ms: T0 + 24,
                seq: 0
            })
        );
        assert_eq!(
            ratelimit_view(&Tally::default()).by_kind[&LimitKind::Connection],
            0
        );
    }

    #[test]
    fn stream_ids_parse_and_order() {
        let a = StreamId::parse("1700000000000-3").unwrap();
        let b = StreamId::parse("1700000000001-0").unwrap();
        assert!(a < b);
        assert_eq!(a.to_string(), "1700000000000-3");
        assert_eq!(StreamId::parse("nope"), None);
    }

    #[test]
    fn stale_flag_round_trips_into_json() {
        let s = Snapshot::empty(T0);
        assert!(s.overview_json.contains("\"stale\":true"));
        let mut rates = HashMap::new();
        let (fresh, _) = build(T0, &[], &mut rates, &Tally::default(), &HashMap::new());
        assert!(fresh.overview_json.contains("\"stale\":false"));
        assert!(
            fresh
                .into_stale(None)
                .overview_json
                .contains("\"stale\":true")
        );
    }

    /// `CLUSTER NODES` of three primaries with a replica each, given the lines of
    /// the first primary (`a`) and of its replica (`d`).
    fn cluster_nodes(a: &str, d: &str) -> Topology {
        Topology::parse(&format!(
            "a 10.0.0.1:7000@17000 {a}\n\
             b 10.0.0.2:7000@17000 master - 0 0 2 connected 5461-10922\n\
             c 10.0.0.3:7000@17000 myself,master - 0 0 3 connected 10923-16383\n\
             d 10.0.0.4:7000@17000 {d}\n\
             e 10.0.0.5:7000@17000 slave b 0 0 5 connected\n\
             f 10.0.0.6:7000@17000 slave c 0 0 6 connected\n"
        ))
    }

    #[test]
    fn redis_cluster_shards_from_the_topology() {
        const REPLICA: &str = "slave a 0 0 4 connected";
        let whole = redis_cluster_view(&cluster_nodes("master - 0 0 1 connected 0-5460", REPLICA));
        assert_eq!(whole.slots_covered, REDIS_CLUSTER_SLOTS);
        assert_eq!(whole.shards.len(), 3);
        assert_eq!(
            whole.shards[0],
            ShardView {
                primary: "10.0.0.1:7000".to_owned(),
                primary_up: true,
                slots: 5461,
                replicas: 1,
                replicas_up: 1,
            }
        );
        assert!(
            whole
                .shards
                .iter()
                .all(|s| s.primary_up && s.replicas_up == 1)
        );

        // The first primary died: its slots are uncovered until its replica takes over.
        for flags in ["master,fail?", "master,fail"] {
            let a = format!("{flags} - 0 0 1 disconnected 0-5460");
            let v = redis_cluster_view(&cluster_nodes(&a, REPLICA));
            assert_eq!(v.shards.len(), 3, "{flags}");
            assert!(!v.shards[0].primary_up, "{flags}");
            assert!(v.shards[1..].iter().all(|s| s.primary_up), "{flags}");
            assert_eq!(v.slots_covered, REDIS_CLUSTER_SLOTS - 5461, "{flags}");
        }

        // A replica died: the shard is still served.
        let v = redis_cluster_view(&cluster_nodes(
            "master - 0 0 1 connected 0-5460",
            "slave,fail a 0 0 4 disconnected",
        ));
        assert_eq!((v.shards[0].replicas, v.shards[0].replicas_up), (1, 0));
        assert_eq!(v.slots_covered, REDIS_CLUSTER_SLOTS);

        // The replica took over: the dead primary serves nothing and is not listed.
        let v = redis_cluster_view(&cluster_nodes(
            "master,fail - 0 0 1 disconnected",
            "master - 0 0 7 connected 0-5460",
        ));
        assert_eq!(v.shards.len(), 3);
        assert_eq!(v.shards[0].primary, "10.0.0.4:7000");
        assert!(v.shards[0].primary_up);
        assert_eq!((v.shards[0].replicas, v.shards[0].replicas_up), (0, 0));
        assert_eq!(v.slots_covered, REDIS_CLUSTER_SLOTS);
    }
}
