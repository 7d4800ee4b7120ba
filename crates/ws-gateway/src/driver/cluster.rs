//! The driver's session on a Redis Cluster: channel messages are shard channels
//! (`SSUBSCRIBE`, sent by the cluster connection to the node owning each slot: one
//! subscription connection per shard), control stays classic Pub/Sub.
//!
//! A shard can fail on its own (its primary dies and a replica takes over, or its
//! slots move to another shard), and the others must not notice. So nothing here
//! waits on a shard inline: subscriptions are confirmed off the loop, one channel
//! at a time, and a channel whose subscription was lost or not yet confirmed is
//! subscribed again every probe tick until it is, then caught up from history.
//! What tells a subscription was lost:
//!
//! - a node's connection dropped ([`SubEvent::NodeLost`]): every channel is
//!   subscribed again (cheap where nothing was lost) and caught up;
//! - the cluster dropped a channel itself ([`SubEvent::Dropped`], its slot moved);
//! - a shard's probe — a nonce published on a shard channel in that shard's slots —
//!   did not come back: the shard's channels are subscribed again.
//!
//! The whole session is replaced when no shard answers at all, when a silent
//! shard's slots turn up with a new primary in the topology (read off the loop
//! every other tick), or when a shard stays silent for long: the cluster client can
//! stay stuck on a dead primary, and a new one reads the topology afresh.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use herald_common::engine::{SubEvent, SubSink, topology};
use herald_common::keys;
use herald_common::store;

use super::{Driver, Exit, PUBSUB_TIMEOUT, Position};
use crate::hub::Cmd;

/// How often, in probe ticks, the cluster's topology is read again (off the loop).
const TOPOLOGY_EVERY: u32 = 2;

/// A shard's probe.
#[derive(Debug, Clone)]
struct Probe {
    /// A shard channel in the shard's first slot.
    name: String,
    slots: Vec<(u16, u16)>,
    /// The shard's primary (`host:port`) when last read.
    primary: String,
    /// The nonce in flight and when it was sent.
    outstanding: Option<(u64, Instant)>,
    /// Since when the shard has not answered.
    silent_since: Option<Instant>,
    /// Its subscription is confirmed (else it is subscribed again).
    confirmed: bool,
    /// The [`Subs::lost`] count when its subscription was last found lost.
    lost_at: u64,
}

impl Probe {
    fn new(name: String, slots: Vec<(u16, u16)>, primary: String) -> Self {
        Self {
            name,
            slots,
            primary,
            outstanding: None,
            silent_since: None,
            confirmed: false,
            lost_at: 0,
        }
    }

    /// Its subscription was found lost (the `lost`-th loss of [`Subs::lost`]): it
    /// subscribes again, and a confirmation sent before this does not count.
    fn lost(&mut self, lost: u64) {
        self.confirmed = false;
        self.lost_at = lost;
    }

    /// Whether this probe's shard carries `channel` (the slot of its hash tag).
    fn covers(&self, channel: &str) -> bool {
        let slot = keys::slot(format!("{{{channel}}}").as_bytes());
        self.slots.iter().any(|&(lo, hi)| (lo..=hi).contains(&slot))
    }
}

/// A subscription confirmed (or not) off the loop, or an unsubscription done.
#[derive(Debug)]
struct Confirmed {
    name: String,
    /// Subscribed, and for a channel its position read.
    ok: bool,
    /// An unsubscription (its outcome does not matter, only that it is over).
    unsubscribed: bool,
    /// A channel's position just after its subscription took effect (`None`: it
    /// had no history).
    position: Option<(u64, String)>,
    /// [`Subs::lost`] when the request was sent.
    sent_at: u64,
}

/// The session's subscriptions and what they still need.
#[derive(Debug, Default)]
struct Subs {
    /// Channels with local demand.
    wanted: HashSet<Arc<str>>,
    /// Wanted channels whose subscription is not confirmed.
    pending: HashSet<Arc<str>>,
    /// Channels to catch up from history once confirmed again.
    catch_up: HashSet<Arc<str>>,
    /// Pub/Sub names being subscribed or unsubscribed now: one request per name
    /// at a time, so they take effect in the order they were asked for.
    in_flight: HashSet<String>,
    /// How many times subscriptions were found lost, and when each channel's last
    /// was: a confirmation sent before its channel's subscription was lost (its
    /// reply came from the connection that then went) does not count.
    lost: u64,
    lost_at: HashMap<Arc<str>, u64>,
}

impl Subs {
    /// Every wanted channel subscribes again and catches up.
    fn resubscribe_all(&mut self) {
        self.lost += 1;
        let wanted: Vec<Arc<str>> = self.wanted.iter().cloned().collect();
        for c in &wanted {
            self.mark_lost(c);
        }
    }

    /// `c`'s subscription was lost: it subscribes again and catches up.
    fn resubscribe(&mut self, c: &Arc<str>) {
        self.lost += 1;
        self.mark_lost(c);
    }

    fn mark_lost(&mut self, c: &Arc<str>) {
        self.pending.insert(c.clone());
        self.catch_up.insert(c.clone());
        self.lost_at.insert(c.clone(), self.lost);
    }

    /// Whether a confirmation sent at `sent_at` still stands for `c`.
    fn current(&self, c: &str, sent_at: u64) -> bool {
        self.lost_at.get(c).is_none_or(|&at| sent_at >= at)
    }
}

impl Driver {
    /// One cluster session: see the module docs.
    pub(super) async fn cluster_session(
        &self,
        cmds: &mut mpsc::UnboundedReceiver<Cmd>,
        positions: &mut HashMap<Arc<str>, Position>,
        token: &CancellationToken,
        first: bool,
    ) -> redis::RedisResult<Exit> {
        let sub = store::within(
            PUBSUB_TIMEOUT,
            "pub/sub connection",
            self.engine.subscriber(),
        )
        .await?;
        let (mut sink, mut stream) = (sub.sink, sub.stream);
        let control = self.keys.control();
        store::within(
            PUBSUB_TIMEOUT,
            "control subscription",
            sink.subscribe(std::slice::from_ref(&control)),
        )
        .await?;
        let mut probes = self.shard_probes().await?;
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Confirmed>();
        let (topology_tx, mut topology_rx) = mpsc::unbounded_channel::<topology::Topology>();
        let mut reading_topology = false;

        while let Ok(cmd) = cmds.try_recv() {
            drop(cmd);
        }
        let mut subs = Subs {
            wanted: self.hub.channel_names().into_iter().collect(),
            ..Subs::default()
        };
        positions.retain(|c, _| subs.wanted.contains(c));
        subs.pending = subs.wanted.clone();
        if !first {
            subs.catch_up = subs.wanted.clone();
        }
        self.confirm(&sink, &mut probes, &mut subs, &done_tx);
        tracing::info!(
            channels = subs.wanted.len(),
            shards = probes.len(),
            "cluster pub/sub connected"
        );

        let mut probe_tick = tokio::time::interval(self.probe_interval);
        probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let deadline = (self.probe_interval * 3).max(Duration::from_secs(3));
        let mut ticks: u32 = 0;

        loop {
            tokio::select! {
                biased;
                () = token.cancelled() => return Ok(Exit::Shutdown),
                event = stream.next_event() => {
                    let Some(event) = event else { return Ok(Exit::Reconnect("stream ended")) };
                    match event {
                        SubEvent::Message(msg) => {
                            let name = msg.channel();
                            if let Some(channel) = self.keys.channel_of(name) {
                                self.on_message(channel, msg.payload(), positions).await;
                            } else if name == control {
                                self.on_control(msg.payload());
                            } else if let Some(p) = probes.iter_mut().find(|p| p.name == name) {
                                let n = std::str::from_utf8(msg.payload()).unwrap_or("").parse::<u64>();
                                if let Ok(n) = n && p.outstanding.is_some_and(|(want, _)| want == n) {
                                    p.outstanding = None;
                                    if p.silent_since.take().is_some() {
                                        tracing::info!(probe = %p.name, "a silent shard answers again");
                                    }
                                }
                            }
                        }
                        SubEvent::NodeLost => {
                            // The cluster connection reconnects to the node, or finds
                            // the replica that took over; what it subscribes again by
                            // itself is not confirmed to us, so we do it.
                            tracing::warn!("lost a cluster node's pub/sub connection; subscribing again");
                            subs.resubscribe_all();
                            for p in &mut probes {
                                p.lost(subs.lost);
                            }
                            self.confirm(&sink, &mut probes, &mut subs, &done_tx);
                        }
                        SubEvent::Dropped(name) => {
                            // The slot moved: subscribing again follows it to its new shard.
                            if let Some(c) = self.keys.channel_of(&name).and_then(|c| subs.wanted.get(c).cloned()) {
                                subs.resubscribe(&c);
                            } else if let Some(p) = probes.iter_mut().find(|p| p.name == name) {
                                subs.lost += 1;
                                p.lost(subs.lost);
                            }
                            self.confirm(&sink, &mut probes, &mut subs, &done_tx);
                        }
                    }
                }
                Some(t) = topology_rx.recv() => {
                    reading_topology = false;
                    if self.follow_topology(&mut probes, &t) {
                        return Ok(Exit::Reconnect("a silent shard has a new primary"));
                    }
                }
                Some(done) = done_rx.recv() => {
                    subs.in_flight.remove(&done.name);
                    let wanted = self.keys.channel_of(&done.name).and_then(|c| subs.wanted.get(c).cloned());
                    if let Some(p) = probes.iter_mut().find(|p| p.name == done.name) {
                        if done.sent_at >= p.lost_at {
                            p.confirmed = done.ok;
                        }
                        if !done.ok {
                            // Cannot even subscribe: as silent as a probe that is lost.
                            p.silent_since.get_or_insert_with(Instant::now);
                        }
                    } else if wanted.is_none() && done.ok && !done.unsubscribed {
                        // Unsubscribed while this subscription was on its way.
                        self.unsubscribe(&sink, &mut subs, done.name, &done_tx);
                    } else if let Some(c) = wanted
                        && done.ok
                        && !done.unsubscribed
                        && subs.current(&c, done.sent_at)
                        && subs.pending.remove(&c)
                    {
                        // Known from here on: a later loss is caught up from this.
                        positions.entry(c.clone()).or_insert_with(|| Position::read(done.position));
                        self.hub.mark_ready(&c);
                        if subs.catch_up.remove(&c) {
                            self.catch_up(positions, |x, _| *x == *c).await;
                        }
                    }
                    self.confirm(&sink, &mut probes, &mut subs, &done_tx);
                }
                cmd = cmds.recv() => {
                    let Some(cmd) = cmd else { return Ok(Exit::Shutdown) };
                    match cmd {
                        Cmd::Subscribe(c) => {
                            if !self.hub.wants(&c) {
                                continue;
                            }
                            if subs.wanted.insert(c.clone()) {
                                subs.pending.insert(c);
                                self.confirm(&sink, &mut probes, &mut subs, &done_tx);
                            } else if !subs.pending.contains(&c) {
                                self.hub.mark_ready(&c);
                            }
                        }
                        Cmd::Unsubscribe(c) => {
                            if !self.hub.wants(&c) && subs.wanted.remove(&c) {
                                subs.pending.remove(&c);
                                subs.catch_up.remove(&c);
                                subs.lost_at.remove(&c);
                                positions.remove(&c);
                                let name = self.keys.channel(&c);
                                // One in flight for it already: its outcome unsubscribes.
                                if !subs.in_flight.contains(&name) {
                                    self.unsubscribe(&sink, &mut subs, name, &done_tx);
                                }
                            }
                        }
                    }
                }
                _ = probe_tick.tick() => {
                    ticks = ticks.wrapping_add(1);
                    // Catch-ups that Redis did not answer (a shard mid-failover):
                    // again, for the channels subscribed meanwhile.
                    self.catch_up(positions, |c, p| p.behind && !subs.pending.contains(c)).await;
                    if ticks.is_multiple_of(TOPOLOGY_EVERY) && !reading_topology {
                        reading_topology = true;
                        self.read_topology(&topology_tx);
                    }
                    for p in &mut probes {
                        match p.outstanding {
                            Some((_, sent)) if sent.elapsed() > self.probe_interval * 2 => {
                                // Silent: subscribe its channels again and catch them
                                // up once they are back (a failover, a wedged link).
                                p.silent_since.get_or_insert(sent);
                                p.outstanding = None;
                                subs.lost += 1;
                                p.lost(subs.lost);
                                let on_shard: Vec<Arc<str>> =
                                    subs.wanted.iter().filter(|c| p.covers(c)).cloned().collect();
                                for c in &on_shard {
                                    subs.mark_lost(c);
                                }
                            }
                            Some(_) => {}
                            None if p.confirmed => self.send_probe(p),
                            None => {}
                        }
                    }
                    self.confirm(&sink, &mut probes, &mut subs, &done_tx);
                    let silent_for = |p: &Probe, d: Duration| p.silent_since.is_some_and(|s| s.elapsed() > d);
                    if !probes.is_empty() && probes.iter().all(|p| silent_for(p, deadline)) {
                        return Ok(Exit::Reconnect("no shard answers its probe"));
                    }
                    // The cluster client did not find its way back to this shard (it
                    // can stay stuck on a dead primary): start over with a fresh view
                    // of the cluster. The other shards' channels are caught up too.
                    if probes.iter().any(|p| silent_for(p, deadline * 2)) {
                        return Ok(Exit::Reconnect("a shard stays silent"));
                    }
                    self.healthy.set(probes.iter().all(|p| p.confirmed && p.silent_since.is_none()));
                }
            }
        }
    }

    /// Subscribes, off the loop and one name each, every unconfirmed probe and
    /// pending channel not already being confirmed; each result comes back on
    /// `done`, a channel's with its position once subscribed.
    fn confirm(
        &self,
        sink: &SubSink,
        probes: &mut [Probe],
        subs: &mut Subs,
        done: &mpsc::UnboundedSender<Confirmed>,
    ) {
        let mut names: Vec<(String, Option<Arc<str>>)> = Vec::new();
        for p in probes.iter().filter(|p| !p.confirmed) {
            names.push((p.name.clone(), None));
        }
        for c in &subs.pending {
            names.push((self.keys.channel(c), Some(c.clone())));
        }
        for (name, channel) in names {
            if !subs.in_flight.insert(name.clone()) {
                continue;
            }
            let Some(mut s) = sink.detached() else {
                return;
            };
            let (done, publisher, sent_at) = (done.clone(), self.publisher.clone(), subs.lost);
            self.tasks.spawn(async move {
                let mut res = store::within(
                    PUBSUB_TIMEOUT,
                    "ssubscribe",
                    s.subscribe_shard(std::slice::from_ref(&name)),
                )
                .await
                .map(|()| None);
                if let (Ok(_), Some(c)) = (&res, channel) {
                    // Read after the subscription took effect, so nothing between
                    // the two is missed; unread, the subscription is tried again.
                    res = publisher.position(&c).await;
                }
                if let Err(e) = &res {
                    tracing::debug!(%name, cause = %e, "a shard channel subscription failed; retrying");
                }
                let _ = done.send(Confirmed {
                    name,
                    ok: res.is_ok(),
                    unsubscribed: false,
                    position: res.ok().flatten(),
                    sent_at,
                });
            });
        }
    }

    /// Unsubscribes `name`, off the loop; the outcome comes back on `done`.
    fn unsubscribe(
        &self,
        sink: &SubSink,
        subs: &mut Subs,
        name: String,
        done: &mpsc::UnboundedSender<Confirmed>,
    ) {
        let Some(mut s) = sink.detached() else {
            return;
        };
        subs.in_flight.insert(name.clone());
        let (done, sent_at) = (done.clone(), subs.lost);
        self.tasks.spawn(async move {
            let ok = store::within(PUBSUB_TIMEOUT, "sunsubscribe", s.unsubscribe_shard(&name))
                .await
                .is_ok();
            let _ = done.send(Confirmed {
                name,
                ok,
                unsubscribed: true,
                position: None,
                sent_at,
            });
        });
    }

    /// One probe per shard of the current topology.
    async fn shard_probes(&self) -> redis::RedisResult<Vec<Probe>> {
        let Some(redis) = self.engine.redis() else {
            return Ok(Vec::new());
        };
        let topology = topology::read(&redis.conn).await?;
        Ok(self.probes_for(&topology.shards()))
    }

    fn probes_for(&self, shards: &[topology::Shard]) -> Vec<Probe> {
        let tags = keys::slot_tags();
        shards
            .iter()
            .filter_map(|s| {
                let tag = &tags[usize::from(s.first_slot()?)];
                Some(Probe::new(
                    self.keys.shard_probe(&self.node_id, tag),
                    s.primary.slots.clone(),
                    s.primary.addr.clone(),
                ))
            })
            .collect()
    }

    /// Reads the topology off the loop (a read that meets the dead node of a
    /// failover waits for its timeout); the result comes back on `to`, a failed read
    /// as an empty topology.
    fn read_topology(&self, to: &mpsc::UnboundedSender<topology::Topology>) {
        let Some(redis) = self.engine.redis() else {
            return;
        };
        let (conn, to) = (redis.conn.clone(), to.clone());
        self.tasks.spawn(async move {
            let _ = to.send(topology::read(&conn).await.unwrap_or_default());
        });
    }

    /// Follows a topology read: when slots moved between shards, the probes follow
    /// (a new probe is subscribed and sent like any other). Says whether a silent
    /// shard now has another primary (a failover the subscription connection may
    /// not find by itself: a fresh session finds it at once).
    fn follow_topology(&self, probes: &mut Vec<Probe>, t: &topology::Topology) -> bool {
        // Mid-failover (or a failed read) some slots have no primary: keep what we have.
        if t.slots_covered() != u32::from(keys::SLOTS) {
            return false;
        }
        let next = self.probes_for(&t.shards());
        let same = next.len() == probes.len()
            && next
                .iter()
                .zip(probes.iter())
                .all(|(a, b)| a.name == b.name && a.slots == b.slots);
        if !same {
            tracing::info!(
                shards = next.len(),
                "the cluster's slots moved; probing its shards anew"
            );
            *probes = next;
            return false;
        }
        let mut failed_over = false;
        for (p, n) in probes.iter_mut().zip(next) {
            if p.primary != n.primary {
                tracing::info!(from = %p.primary, to = %n.primary, "a shard's primary changed");
                failed_over |= p.silent_since.is_some();
                p.primary = n.primary;
            }
        }
        failed_over
    }

    /// Publishes a fresh nonce on `p`'s shard channel, off the loop.
    fn send_probe(&self, p: &mut Probe) {
        let n: u64 = rand::random::<u64>() >> 1;
        p.outstanding = Some((n, Instant::now()));
        let engine = self.engine.clone();
        let name = p.name.clone();
        let errors = self.metrics.redis_errors.clone();
        self.tasks.spawn(async move {
            if engine.publish_shard(&name, n.to_string()).await.is_err() {
                errors.inc();
            }
        });
    }
}
