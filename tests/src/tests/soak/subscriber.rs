//! A soak subscriber: reconnects now and then and recovers every channel by offset,
//! keeping the log the report is made from.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::load_client::{Client, Next, position};
use crate::patience;

/// What one recovering subscriber saw.
#[derive(Debug, Default)]
pub(super) struct SubLog {
    /// Offsets seen per (channel, epoch).
    pub(super) seen: HashMap<(String, String), BTreeSet<u64>>,
    /// The offset after which the subscriber owes itself every message of an epoch.
    pub(super) base: HashMap<(String, String), u64>,
    /// Messages history could not replay within an unchanged epoch (must stay 0).
    pub(super) unrecovered_same_epoch: u64,
    pub(super) epoch_resets: u64,
    pub(super) duplicates: u64,
    pub(super) reconnects: u64,
    pub(super) unexpected_closes: u64,
}

impl SubLog {
    fn message(&mut self, v: &Value) {
        let (Some(ch), Some((epoch, offset))) = (v["channel"].as_str(), position(v)) else {
            return;
        };
        let key = (ch.to_owned(), epoch);
        // An epoch first met through a live message is owed from its start.
        self.base.entry(key.clone()).or_insert(0);
        if !self.seen.entry(key).or_default().insert(offset) {
            self.duplicates += 1;
        }
    }

    /// Where to resume `channel`: the newest epoch seen and its highest offset.
    fn resume(&self, channel: &str, current: &HashMap<String, String>) -> Option<(String, u64)> {
        let epoch = current.get(channel)?;
        let key = (channel.to_owned(), epoch.clone());
        let top = self.seen.get(&key).and_then(|s| s.last().copied());
        Some((
            epoch.clone(),
            top.or(self.base.get(&key).copied()).unwrap_or(0),
        ))
    }
}

/// The message published on every channel at the end; delivery follows offset
/// order, so a subscriber that has it has everything acknowledged before it.
pub(super) const END: &str = "end";

/// One subscriber that reconnects now and then (to either gateway) and recovers
/// every channel by offset. It counts itself in `subscribed` once it first holds
/// every channel; once `stop` is set (after [`END`] was published everywhere) it
/// finishes when it has received every [`END`], or after the harness's patience.
pub(super) async fn recovering_subscriber(
    urls: Vec<String>,
    token: String,
    channels: Vec<String>,
    subscribed: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    seed: u64,
) -> SubLog {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut log = SubLog::default();
    // The epoch currently followed per channel.
    let mut current: HashMap<String, String> = HashMap::new();
    let mut id = 0u64;
    let mut counted = false;
    let mut ended: BTreeSet<String> = BTreeSet::new();
    let mut finish_by: Option<Instant> = None;
    let mut finished = |ended: &BTreeSet<String>| {
        if !stop.load(Ordering::Relaxed) {
            return false;
        }
        let by = *finish_by.get_or_insert_with(|| Instant::now() + patience());
        ended.len() == channels.len() || Instant::now() > by
    };
    'connection: while !finished(&ended) {
        let url = &urls[rng.random_range(0..urls.len())];
        let Ok((mut c, _)) = Client::auth(url, &token, &[]).await else {
            // A pause before trying again (a gateway may be restarting its Redis).
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        log.reconnects += 1;
        // Pending subscribe ids → (channel, since).
        let mut pending: HashMap<u64, (String, Option<(String, u64)>)> = HashMap::new();
        for ch in &channels {
            id += 1;
            let since = log.resume(ch, &current);
            let mut frame = json!({"type":"subscribe","channel":ch,"id":id});
            if let Some((e, o)) = &since {
                frame["since"] = json!({"offset":o,"epoch":e});
            }
            if c.send(&frame).await.is_err() {
                continue 'connection;
            }
            pending.insert(id, (ch.clone(), since));
        }
        let stay = Duration::from_millis(rng.random_range(5_000..15_000));
        let connected = Instant::now();
        loop {
            if pending.is_empty() && !counted {
                counted = true;
                subscribed.fetch_add(1, Ordering::Relaxed);
            }
            if pending.is_empty() && finished(&ended) {
                c.close().await;
                return log;
            }
            if connected.elapsed() > stay && pending.is_empty() {
                c.close().await;
                continue 'connection;
            }
            match c.next(Duration::from_millis(200)).await {
                Next::Frame(v) if v["type"] == "message" => {
                    log.message(&v);
                    if v["message"] == END {
                        ended.insert(v["channel"].as_str().unwrap_or_default().to_owned());
                    }
                    // Follow the newest epoch, also when it arrives live.
                    if let (Some(ch), Some((epoch, _))) = (v["channel"].as_str(), position(&v)) {
                        current.insert(ch.to_owned(), epoch);
                    }
                }
                Next::Frame(v) if v["type"] == "subscribed" => {
                    let Some((ch, since)) = v["id"].as_u64().and_then(|i| pending.remove(&i))
                    else {
                        continue;
                    };
                    let (epoch, offset) = position(&v).expect("subscribed has a position");
                    let key = (ch.clone(), epoch.clone());
                    match (&since, v["recovered"].as_bool()) {
                        (None, _) => {
                            log.base.entry(key).or_insert(offset);
                        }
                        (Some(_), Some(true)) => {}
                        (Some((since_epoch, since_offset)), _) if *since_epoch == epoch => {
                            log.unrecovered_same_epoch += offset.saturating_sub(*since_offset);
                        }
                        (Some(_), _) => {
                            // History was lost (a Redis restart): start the new epoch
                            // from its beginning.
                            log.epoch_resets += 1;
                            log.base.entry(key).or_insert(0);
                            id += 1;
                            let frame = json!({"type":"subscribe","channel":ch,"id":id,"since":{"offset":0,"epoch":epoch}});
                            if c.send(&frame).await.is_err() {
                                current.insert(ch, epoch);
                                continue 'connection;
                            }
                            pending.insert(id, (ch.clone(), Some((epoch.clone(), 0))));
                        }
                    }
                    current.insert(ch, epoch);
                }
                Next::Frame(v) if v["type"] == "error" => {
                    // `unavailable` while Redis restarts: retry on a fresh connection.
                    if let Some(i) = v["id"].as_u64() {
                        pending.remove(&i);
                    }
                    c.close().await;
                    // A pause before trying again, while Redis comes back.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    continue 'connection;
                }
                Next::Frame(_) | Next::Idle => {}
                Next::Closed(_) => {
                    log.unexpected_closes += 1;
                    continue 'connection;
                }
            }
        }
    }
    log
}
