//! The local side of fan-out: which connections listen to which channels, and the
//! one hand-off from a published message to every local subscriber's queue.
//!
//! A message arrives once per gateway (Redis Pub/Sub), is wrapped once in an
//! `Arc<Delivery>` whose bytes are the finished client frame, and each recipient
//! gets a clone of that `Arc` through its queue: one read lock per message, no lock,
//! parse or allocation per recipient. The queue is bounded by one packed counter of
//! frames and bytes (a single atomic add per recipient); a recipient over either
//! bound is kicked as a slow consumer instead of slowing anyone else.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use herald_proto::disconnect::Disconnect;

use crate::metrics::Metrics;

/// One published message (or presence event) as every local recipient receives it.
#[derive(Debug)]
pub(crate) struct Delivery {
    /// The exact client frame.
    pub(crate) text: Utf8Bytes,
    pub(crate) channel: Arc<str>,
    /// 0 for a presence event, which has no place in the channel's history.
    pub(crate) offset: u64,
    pub(crate) epoch: Box<str>,
    /// When it was published (Unix ms), for the delivery-latency histogram; 0 if unknown.
    pub(crate) published_ms: u64,
    /// Not a frame but something the application's backend asks of this
    /// connection, queued behind what it was sent before.
    pub(crate) command: Option<Box<ConnCommand>>,
}

/// What the application's backend asks of a user's connections (control commands).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ConnCommand {
    Subscribe {
        channel: String,
        since: Option<herald_proto::client::Since>,
    },
    Unsubscribe {
        channel: String,
    },
}

/// The part of a connection that other tasks (fan-out, control) may touch.
#[derive(Debug)]
pub(crate) struct ConnShared {
    pub(crate) conn_id: String,
    pub(crate) user: String,
    pub(crate) ip: IpAddr,
    pub(crate) connected_ms: u64,
    /// The token id the connection authenticated with (changes on re-auth).
    pub(crate) jti: Mutex<Option<String>>,
    pub(crate) tx: mpsc::UnboundedSender<Arc<Delivery>>,
    /// Frames and bytes sitting in `tx`, packed into one word (frames from bit 40
    /// up) so the fan-out checks both bounds with one atomic add per recipient.
    queued: AtomicU64,
    pub(crate) cancel: CancellationToken,
    kick: OnceLock<Disconnect>,
    pub(crate) messages_in: AtomicU64,
    pub(crate) messages_out: AtomicU64,
    /// The channels the connection is in, for the monitor (written on change only).
    pub(crate) channels: Mutex<Vec<String>>,
    /// This connection's presence record (`herald_proto::presence::Member` JSON),
    /// made when first needed: an idle connection never subscribes.
    member: OnceLock<Arc<str>>,
    /// The token's `info` claim, for the presence record.
    info: Option<Box<serde_json::Value>>,
}

impl ConnShared {
    pub(crate) fn new(
        conn_id: String,
        user: String,
        ip: IpAddr,
        jti: Option<String>,
        info: Option<Box<serde_json::Value>>,
        tx: mpsc::UnboundedSender<Arc<Delivery>>,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            member: OnceLock::new(),
            info,
            conn_id,
            user,
            ip,
            connected_ms: herald_proto::time::now_ms(),
            jti: Mutex::new(jti),
            tx,
            queued: AtomicU64::new(0),
            cancel,
            kick: OnceLock::new(),
            messages_in: AtomicU64::new(0),
            messages_out: AtomicU64::new(0),
            channels: Mutex::new(Vec::new()),
        }
    }

    /// This connection's presence record.
    pub(crate) fn member(&self) -> Arc<str> {
        self.member
            .get_or_init(|| {
                let member = herald_proto::presence::Member {
                    user_id: self.user.clone(),
                    conn_id: self.conn_id.clone(),
                    info: self.info.as_deref().cloned(),
                };
                Arc::from(member.to_json())
            })
            .clone()
    }

    /// Counts one frame of `bytes` into the queue; returns the queue's (frames, bytes).
    pub(crate) fn enqueued(&self, bytes: usize) -> (u64, u64) {
        let add = FRAME_UNIT + bytes as u64;
        let now = self.queued.fetch_add(add, Ordering::Relaxed) + add;
        (now / FRAME_UNIT, now % FRAME_UNIT)
    }

    /// Takes `frames` frames totalling `bytes` off the queue's count.
    pub(crate) fn dequeued(&self, frames: u64, bytes: u64) {
        self.queued
            .fetch_sub(frames * FRAME_UNIT + bytes, Ordering::Relaxed);
    }

    /// Asks the connection to close for `why`; the first reason wins. Returns
    /// whether this call was the first.
    pub(crate) fn kick(&self, why: Disconnect) -> bool {
        let first = self.kick.set(why).is_ok();
        self.cancel.cancel();
        first
    }

    pub(crate) fn kicked(&self) -> Option<&Disconnect> {
        self.kick.get()
    }

    pub(crate) fn jti(&self) -> Option<String> {
        self.jti.lock().ok().and_then(|j| j.clone())
    }
}

/// One queued frame in [`ConnShared::queued`]; the bits below count bytes.
const FRAME_UNIT: u64 = 1 << 40;

/// A channel with local subscribers.
#[derive(Debug)]
struct Channel {
    subs: HashMap<u64, Arc<ConnShared>>,
    /// The subscribers that asked for join/leave events.
    listeners: HashMap<u64, Arc<ConnShared>>,
    /// Becomes true once Redis confirmed the SUBSCRIBE, so a subscriber's history
    /// read cannot miss a message published in between.
    ready: watch::Sender<bool>,
    /// Messages delivered on this node (cumulative), for the monitor's rates.
    messages: AtomicU64,
}

/// What the Pub/Sub driver must do in Redis.
#[derive(Debug)]
pub(crate) enum Cmd {
    Subscribe(Arc<str>),
    Unsubscribe(Arc<str>),
}

/// The registry of local connections and subscriptions.
#[derive(Debug)]
pub(crate) struct Hub {
    channels: RwLock<HashMap<Arc<str>, Channel>>,
    conns: RwLock<HashMap<u64, Arc<ConnShared>>>,
    cmds: mpsc::UnboundedSender<Cmd>,
    metrics: Metrics,
    queue_bytes: u64,
    queue_frames: u64,
}

/// Locks poisoned by a panicking thread still hold consistent maps (every
/// mutation is a single insert/remove), so carry on with the inner value.
fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Hub {
    pub(crate) fn new(
        cmds: mpsc::UnboundedSender<Cmd>,
        metrics: Metrics,
        queue_bytes: usize,
        queue_frames: usize,
    ) -> Self {
        Self {
            channels: RwLock::new(HashMap::new()),
            conns: RwLock::new(HashMap::new()),
            cmds,
            metrics,
            queue_bytes: queue_bytes as u64,
            queue_frames: queue_frames as u64,
        }
    }

    // === connections ===

    pub(crate) fn add_conn(&self, key: u64, conn: Arc<ConnShared>) {
        write(&self.conns).insert(key, conn);
        self.metrics.connections.inc();
    }

    pub(crate) fn remove_conn(&self, key: u64) {
        if write(&self.conns).remove(&key).is_some() {
            self.metrics.connections.dec();
        }
    }

    pub(crate) fn conn_count(&self) -> usize {
        read(&self.conns).len()
    }

    /// Queues `cmd` for every connection of `user`; returns how many.
    pub(crate) fn command_user(&self, user: &str, cmd: &ConnCommand) -> usize {
        let conns = read(&self.conns);
        let d = Arc::new(Delivery {
            text: Utf8Bytes::from_static(""),
            channel: Arc::from(""),
            offset: 0,
            epoch: "".into(),
            published_ms: 0,
            command: Some(Box::new(cmd.clone())),
        });
        conns
            .values()
            .filter(|c| c.user == user && self.hand(c, &d))
            .count()
    }

    /// Kicks every connection `pred` selects; returns how many.
    pub(crate) fn kick_where(&self, pred: impl Fn(&ConnShared) -> bool, why: &Disconnect) -> usize {
        let conns = read(&self.conns);
        let mut n = 0;
        for c in conns.values().filter(|c| pred(c)) {
            c.kick(why.clone());
            n += 1;
        }
        n
    }

    /// Every connection, for shutdown and presence snapshots.
    pub(crate) fn all_conns(&self) -> Vec<Arc<ConnShared>> {
        read(&self.conns).values().cloned().collect()
    }

    // === subscriptions ===

    /// Adds a local subscriber (or, subscribed already, sets whether it gets
    /// join/leave events); returns a receiver that turns true once Redis delivers
    /// the channel to this node.
    pub(crate) fn subscribe(
        &self,
        channel: &str,
        key: u64,
        conn: Arc<ConnShared>,
        join_leave: bool,
    ) -> watch::Receiver<bool> {
        let mut map = write(&self.channels);
        if let Some(ch) = map.get_mut(channel) {
            if join_leave {
                ch.listeners.insert(key, conn.clone());
            } else {
                ch.listeners.remove(&key);
            }
            if ch.subs.insert(key, conn).is_none() {
                self.metrics.subscriptions.inc();
            }
            return ch.ready.subscribe();
        }
        let name: Arc<str> = Arc::from(channel);
        let (ready, rx) = watch::channel(false);
        let mut listeners = HashMap::new();
        if join_leave {
            listeners.insert(key, conn.clone());
        }
        let mut subs = HashMap::new();
        subs.insert(key, conn);
        map.insert(
            name.clone(),
            Channel {
                subs,
                listeners,
                ready,
                messages: AtomicU64::new(0),
            },
        );
        self.metrics.subscriptions.inc();
        self.metrics.channels.inc();
        let _ = self.cmds.send(Cmd::Subscribe(name));
        rx
    }

    /// Removes a local subscriber; the last one out unsubscribes the node in Redis.
    pub(crate) fn unsubscribe(&self, channel: &str, key: u64) {
        let mut map = write(&self.channels);
        let Some(ch) = map.get_mut(channel) else {
            return;
        };
        ch.listeners.remove(&key);
        if ch.subs.remove(&key).is_some() {
            self.metrics.subscriptions.dec();
        }
        if ch.subs.is_empty()
            && let Some((name, _)) = map.remove_entry(channel)
        {
            self.metrics.channels.dec();
            let _ = self.cmds.send(Cmd::Unsubscribe(name));
        }
    }

    /// Whether the channel still has local subscribers (the driver's demand check).
    pub(crate) fn wants(&self, channel: &str) -> bool {
        read(&self.channels).contains_key(channel)
    }

    /// Marks a channel as delivered by Redis.
    pub(crate) fn mark_ready(&self, channel: &str) {
        if let Some(ch) = read(&self.channels).get(channel) {
            ch.ready.send_replace(true);
        }
    }

    /// The channels with local subscribers.
    pub(crate) fn channel_names(&self) -> Vec<Arc<str>> {
        read(&self.channels).keys().cloned().collect()
    }

    /// (channel, local subscribers, messages delivered) for every channel.
    pub(crate) fn channel_stats(&self) -> Vec<(Arc<str>, u64, u64)> {
        read(&self.channels)
            .iter()
            .map(|(k, c)| {
                (
                    k.clone(),
                    c.subs.len() as u64,
                    c.messages.load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    // === fan-out ===

    /// Hands `d` to every local subscriber of its channel; returns how many got it.
    pub(crate) fn fanout(&self, d: &Arc<Delivery>) -> usize {
        let map = read(&self.channels);
        let Some(ch) = map.get(&d.channel) else {
            return 0;
        };
        ch.messages.fetch_add(1, Ordering::Relaxed);
        ch.subs.values().filter(|c| self.hand(c, d)).count()
    }

    /// Queues `d` for `conn` unless that takes it over a bound (then kicks it).
    fn hand(&self, conn: &ConnShared, d: &Arc<Delivery>) -> bool {
        let (frames, bytes) = conn.enqueued(d.text.len());
        if frames > self.queue_frames || bytes > self.queue_bytes {
            self.slow(conn);
            return false;
        }
        conn.tx.send(d.clone()).is_ok()
    }

    /// Hands a presence event to the channel's local listeners other than the
    /// connection that caused it (`origin`); returns how many got it.
    pub(crate) fn fanout_event(&self, d: &Arc<Delivery>, origin: &str) -> usize {
        let map = read(&self.channels);
        let Some(ch) = map.get(&d.channel) else {
            return 0;
        };
        ch.listeners
            .values()
            .filter(|c| c.conn_id != origin && self.hand(c, d))
            .count()
    }

    fn slow(&self, conn: &ConnShared) {
        if conn.kick(Disconnect::SlowConsumer) {
            self.metrics.slow_consumer_disconnects.inc();
            tracing::info!(conn_id = %conn.conn_id, "slow consumer disconnected");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(id: &str) -> (Arc<ConnShared>, mpsc::UnboundedReceiver<Arc<Delivery>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let c = ConnShared::new(
            id.to_owned(),
            "u".to_owned(),
            "127.0.0.1".parse().unwrap(),
            None,
            None,
            tx,
            CancellationToken::new(),
        );
        (Arc::new(c), rx)
    }

    fn delivery(channel: &str, offset: u64) -> Arc<Delivery> {
        Arc::new(Delivery {
            text: Utf8Bytes::from(format!("{{\"offset\":{offset}}}")),
            channel: Arc::from(channel),
            offset,
            epoch: "e".into(),
            published_ms: 0,
            command: None,
        })
    }

    #[test]
    fn subscribe_once_per_channel_and_unsubscribe_when_empty() {
        let (tx, mut cmds) = mpsc::unbounded_channel();
        let hub = Hub::new(tx, Metrics::new().unwrap(), 1 << 20, 8);
        let (a, _ra) = conn("a");
        let (b, _rb) = conn("b");
        hub.subscribe("news", 1, a, false);
        hub.subscribe("news", 2, b, false);
        assert!(matches!(cmds.try_recv(), Ok(Cmd::Subscribe(c)) if &*c == "news"));
        assert!(cmds.try_recv().is_err(), "one SUBSCRIBE per channel");
        hub.unsubscribe("news", 1);
        assert!(cmds.try_recv().is_err());
        hub.unsubscribe("news", 2);
        assert!(matches!(cmds.try_recv(), Ok(Cmd::Unsubscribe(c)) if &*c == "news"));
        assert!(!hub.wants("news"));
    }

    #[test]
    fn fanout_shares_one_allocation_and_kicks_slow_consumers() {
        let (tx, _cmds) = mpsc::unbounded_channel();
        let hub = Hub::new(tx, Metrics::new().unwrap(), 1 << 20, 1);
        let (fast, mut rfast) = conn("fast");
        let (slow, _rslow) = conn("slow");
        hub.subscribe("news", 1, fast.clone(), false);
        hub.subscribe("news", 2, slow.clone(), false);
        let d = delivery("news", 1);
        assert_eq!(hub.fanout(&d), 2);
        // The fast one drains its queue; the slow one does not.
        let got = rfast.try_recv().unwrap();
        assert!(Arc::ptr_eq(&got, &d), "recipients share the same bytes");
        fast.dequeued(1, got.text.len() as u64);
        assert_eq!(hub.fanout(&delivery("news", 2)), 1);
        assert!(slow.cancel.is_cancelled());
        assert_eq!(slow.kicked(), Some(&Disconnect::SlowConsumer));
        assert!(!fast.cancel.is_cancelled());
        assert_eq!(hub.fanout(&delivery("other", 1)), 0);
    }

    #[test]
    fn events_go_to_listeners_but_not_their_origin() {
        let (tx, _cmds) = mpsc::unbounded_channel();
        let hub = Hub::new(tx, Metrics::new().unwrap(), 1 << 20, 8);
        let (quiet, mut rquiet) = conn("quiet");
        let (a, mut ra) = conn("a");
        let (b, mut rb) = conn("b");
        hub.subscribe("room", 1, quiet, false);
        hub.subscribe("room", 2, a.clone(), true);
        hub.subscribe("room", 3, b.clone(), true);
        let mut ev = Arc::new(Delivery {
            text: Utf8Bytes::from_static("{\"type\":\"join\"}"),
            channel: Arc::from("room"),
            offset: 0,
            epoch: "".into(),
            published_ms: 0,
            command: None,
        });
        assert_eq!(hub.fanout_event(&ev, "a"), 1, "only b: a caused it");
        assert!(rb.try_recv().is_ok());
        assert!(ra.try_recv().is_err());
        assert!(rquiet.try_recv().is_err());
        // Re-subscribing without join_leave stops the events.
        hub.subscribe("room", 3, b, false);
        ev = Arc::new(Delivery {
            channel: Arc::from("room"),
            text: ev.text.clone(),
            offset: 0,
            epoch: "".into(),
            published_ms: 0,
            command: None,
        });
        assert_eq!(hub.fanout_event(&ev, "x"), 1, "only a now");
        hub.unsubscribe("room", 2);
        assert_eq!(hub.fanout_event(&ev, "x"), 0);
    }

    #[test]
    fn byte_bound_kicks_too() {
        let (tx, _cmds) = mpsc::unbounded_channel();
        let hub = Hub::new(tx, Metrics::new().unwrap(), 20, 100);
        let (c, _r) = conn("c");
        hub.subscribe("news", 1, c.clone(), false);
        hub.fanout(&delivery("news", 1));
        assert!(!c.cancel.is_cancelled());
        hub.fanout(&delivery("news", 2));
        assert!(c.cancel.is_cancelled(), "over the byte bound");
    }
}
