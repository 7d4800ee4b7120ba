//! Webhook delivery: the events gateways record in the `herald:webhooks` stream
//! (`herald_common::webhooks`) are POSTed to `HERALD_WEBHOOK_URL` in batches,
//! signed, at least once. docs/webhooks.md is the backend's side of it.
//!
//! Every broadcaster with a URL reads the stream through the consumer group
//! [`GROUP`] (created from the start of the stream, so events recorded before
//! the first broadcaster came are delivered too), under its node id. One loop per
//! node, one POST at a time, so the events one broadcaster delivers arrive in
//! stream order. An entry is acknowledged (and deleted) only after a 2xx, or when
//! it is dropped: retried for `HERALD_WEBHOOK_RETRY_FOR_MS` in vain, or unreadable.
//!
//! What a broadcaster has read and not yet acknowledged stays pending on it; a
//! keep-alive resets those entries' idle time, and every broadcaster `XAUTOCLAIM`s
//! entries idle longer than `HERALD_JOB_CLAIM_IDLE_MS`: a dead broadcaster's
//! events are delivered by another (possibly after newer ones, and possibly
//! twice: the event `id` is the stream entry id, the same on every attempt).
//!
//! Debounce: a `channel_vacated` followed within `HERALD_WEBHOOK_DEBOUNCE_MS` by a
//! `channel_occupied` of the same channel is a flap, and neither is sent. So a
//! `channel_vacated` is held until its window has passed (and every event after
//! it with it, to keep the order).
//!
//! The delivery loop has its own Redis connection for its blocking reads and its
//! own HTTP client with a time limit per POST; nothing else in the broadcaster
//! waits for it, so a slow or failing backend holds up only webhooks.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use herald_common::store::Conn;
use hmac::{Hmac, Mac};
use redis::{RedisResult, Value};
use sha2::Sha256;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use herald_common::backoff::Backoff;
use herald_common::keys::Keys;
use herald_common::runtime::Runtime;
use herald_common::store;
use herald_common::webhooks::FIELD;
use herald_proto::time::now_ms;
use herald_proto::webhook::{Batch, Event, EventKind};

use crate::AppState;
use crate::config::WebhookSettings;
use crate::jobs::kinds::hex;

// The consumer group every broadcaster delivers webhook events through (the monitor
// reads its lag and pending count).
pub use herald_common::webhooks::GROUP;
/// The request header carrying `t=<unix seconds>,v1=<hex HMAC-SHA256>`.
pub const SIGNATURE_HEADER: &str = "X-Herald-Signature";
/// How long one `XREADGROUP` blocks; also bounds how late a cancel is noticed.
pub const READ_BLOCK_MS: u64 = 1000;
/// The first pause after a failed POST; it doubles up to [`RETRY_MAX`], jittered.
pub const RETRY_MIN: Duration = Duration::from_secs(1);
pub const RETRY_MAX: Duration = Duration::from_secs(60);
/// Fewest entries read ahead, whatever the batch size: enough to find the
/// `channel_occupied` that cancels a held `channel_vacated`.
const MIN_READ_AHEAD: usize = 100;
/// How often the queue gauge is refreshed.
const QUEUE_EVERY: Duration = Duration::from_secs(5);
/// How often consumers of broadcasters long gone are removed from the group.
const CONSUMERS_EVERY: Duration = Duration::from_secs(60);
/// A consumer with nothing pending and silent this long belongs to a broadcaster
/// that stopped (a live one reads every second): it is removed from the group.
const CONSUMER_GONE_MS: usize = 60 * 60 * 1000;
/// How late, after the events it records, a gateway's write may reach the stream:
/// a `channel_occupied` that cancels a `channel_vacated` may come this much after
/// the debounce window.
const WRITE_SLACK_MS: u64 = 250;

/// The Redis hash of delivery stats the monitor shows: `delivered`, `failed`
/// (counters), `last_ok_ms`, `last_error_ms`, `last_error`.
pub fn stats_key(keys: &Keys) -> String {
    keys.webhook_stats()
}

/// The `X-Herald-Signature` value of `body` sent at `t` (Unix seconds):
/// `t=<t>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn signature(secret: &[u8], t: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex(&mac.finalize().into_bytes()))
}

/// Starts the delivery loop and the queue gauge, when a URL is set. The memory
/// engine was refused before (`crate::run`): there is no stream to read there.
pub fn spawn(ctx: &AppState, rt: &Runtime, settings: Option<WebhookSettings>) {
    let Some(settings) = settings else {
        return;
    };
    let Some(redis) = ctx.engine.redis() else {
        tracing::error!("webhooks need Redis; not delivering");
        return;
    };
    let http = reqwest::Client::builder()
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
        // A redirect would turn the POST into a GET: a 3xx is a failure to fix.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(format!("herald-broadcaster/{}", env!("CARGO_PKG_VERSION")))
        .build();
    let reader = redis
        .client
        .dedicated(Duration::from_millis(READ_BLOCK_MS) + store::RESPONSE_TIMEOUT);
    let (http, reader) = match (http, reader) {
        (Ok(h), Ok(r)) => (h, r),
        (Err(e), _) => {
            tracing::error!(cause = %e, "webhooks: cannot build the HTTP client; not delivering");
            return;
        }
        (_, Err(e)) => {
            tracing::error!(cause = %e, "webhooks: cannot open a Redis connection; not delivering");
            return;
        }
    };
    tracing::info!(
        url = %store::redacted(settings.url.as_str()),
        batch = settings.batch,
        timeout_ms = settings.timeout.as_millis() as u64,
        retry_for_ms = settings.retry_for.as_millis() as u64,
        debounce_ms = settings.debounce.as_millis() as u64,
        "webhook delivery started"
    );
    let d = Deliverer::new(ctx, settings, redis.conn.clone(), reader, http);
    rt.spawn(d.run(rt.token()));
    rt.spawn(watch_queue(ctx.clone(), redis.conn.clone(), rt.token()));
}

/// One read stream entry.
#[derive(Debug)]
struct Entry {
    id: String,
    /// When it was appended (the id's time part, Redis's clock).
    recorded_ms: u64,
    /// `None`: unreadable (trimmed before it was read again, or not an event).
    event: Option<Event>,
    /// For a `channel_vacated`: when its debounce window has passed.
    hold_until: Instant,
}

impl Entry {
    fn new(id: String, json: Option<String>, debounce_ms: u64) -> Self {
        let event = json
            .and_then(|j| serde_json::from_str::<Event>(&j).ok())
            .map(|mut e| {
                e.id = Some(id.clone());
                e
            });
        let recorded_ms = id_parts(&id).0;
        // What is left of the window by this host's clock; never more than the
        // whole window, whatever the clocks say.
        let full = debounce_ms + WRITE_SLACK_MS;
        let left = (recorded_ms + full).saturating_sub(now_ms()).min(full);
        Self {
            id,
            recorded_ms,
            event,
            hold_until: Instant::now() + Duration::from_millis(left),
        }
    }

    fn is(&self, kind: EventKind) -> bool {
        self.event.as_ref().is_some_and(|e| e.kind == kind)
    }
}

/// A stream id's `(ms, seq)`; `(0, 0)` for anything else.
fn id_parts(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// Entry ids this node has read and not acknowledged: the keep-alive keeps them
/// pending on it, so no other broadcaster takes them over while it works on them.
type Held = Arc<Mutex<Vec<String>>>;

/// Why a POST failed.
#[derive(Debug)]
enum Failure {
    Status(reqwest::StatusCode),
    Timeout,
    Send(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Status(s) => write!(f, "HTTP {s}"),
            Self::Timeout => f.write_str("timed out"),
            Self::Send(e) => f.write_str(e),
        }
    }
}

/// The delivery loop's state.
struct Deliverer {
    ctx: AppState,
    settings: WebhookSettings,
    http: reqwest::Client,
    /// For the blocking reads only.
    reader: Conn,
    /// The shared connection: acknowledgements, claims, stats.
    conn: Conn,
    stream: String,
    stats: String,
    claim_idle_ms: u64,
    claim_every: Duration,
    /// Most entries read ahead: enough to see past a held `channel_vacated`.
    capacity: usize,
    /// Read, not yet sent, in stream order.
    buffer: VecDeque<Entry>,
    /// The batch being POSTed.
    in_flight: Vec<String>,
    /// Done with (delivered, dropped, debounced), not yet acknowledged.
    acks: Vec<String>,
    held: Held,
    /// The last read of new entries returned less than it asked for: everything
    /// recorded until then has been read.
    caught_up: bool,
    /// Where the re-read of this consumer's own pending entries stands (a node
    /// restarted under the same id); `None` once done.
    own_cursor: Option<String>,
    claim_cursor: String,
    next_claim: Instant,
    group_ready: bool,
    /// The last POST failed: the next success is logged.
    failing: bool,
}

impl Deliverer {
    fn new(
        ctx: &AppState,
        settings: WebhookSettings,
        conn: Conn,
        reader: Conn,
        http: reqwest::Client,
    ) -> Self {
        let claim_idle_ms = ctx.config.job_claim_idle_ms;
        Self {
            ctx: ctx.clone(),
            stream: ctx.keys.webhooks(),
            stats: stats_key(&ctx.keys),
            conn,
            reader,
            http,
            capacity: (settings.batch * 2).max(MIN_READ_AHEAD),
            settings,
            claim_idle_ms,
            claim_every: Duration::from_millis((claim_idle_ms / 2).clamp(100, 5_000)),
            buffer: VecDeque::new(),
            in_flight: Vec::new(),
            acks: Vec::new(),
            held: Arc::default(),
            caught_up: false,
            own_cursor: Some("0".to_owned()),
            claim_cursor: "0-0".to_owned(),
            next_claim: Instant::now(),
            group_ready: false,
            failing: false,
        }
    }

    async fn run(mut self, token: CancellationToken) {
        let keep = keep_alive(
            self.ctx.clone(),
            self.conn.clone(),
            self.stream.clone(),
            self.held.clone(),
            self.claim_idle_ms,
        );
        tokio::select! {
            () = self.deliver_loop(&token) => {}
            () = keep => {}
        }
        tracing::info!("webhook delivery stopped");
    }

    async fn deliver_loop(&mut self, token: &CancellationToken) {
        let mut backoff = Backoff::default();
        while !token.is_cancelled() {
            let filled = tokio::select! {
                r = self.fill() => r,
                () = token.cancelled() => break,
            };
            if let Err(e) = filled {
                self.ctx.metrics.redis_errors_total.inc();
                self.ctx.health.failed(&e);
                // After a Redis restart the group is gone (NOGROUP): create it again.
                self.group_ready = false;
                if backoff.is_reset() {
                    tracing::warn!(cause = %e, "webhook queue unavailable; retrying");
                } else {
                    tracing::debug!(cause = %e, "webhook queue still unavailable");
                }
                if !backoff.sleep(token).await {
                    break;
                }
                continue;
            }
            if !backoff.is_reset() {
                tracing::info!("webhook queue reachable again");
                backoff.reset();
            }
            self.debounce();
            if let Some(batch) = self.take_ready()
                && !self.deliver(batch, token).await
            {
                break;
            }
        }
    }

    /// The Redis part of a round: acknowledge what is done, then read what comes
    /// next into the buffer: this node's own pending entries first (after a
    /// restart under the same id), then entries abandoned by a dead broadcaster,
    /// then new ones.
    async fn fill(&mut self) -> RedisResult<()> {
        if !self.acks.is_empty() {
            self.flush_acks().await?;
        }
        if !self.group_ready {
            // From the start: events recorded before any broadcaster delivered them
            // (or while no group existed, after a Redis restart) are sent too.
            store::ensure_group(&mut self.conn, &self.stream, GROUP).await?;
            self.group_ready = true;
        }
        let room = self.capacity.saturating_sub(self.buffer.len());
        if room == 0 {
            return Ok(());
        }
        let node = self.ctx.node_id.clone();
        if let Some(cursor) = self.own_cursor.clone() {
            let got =
                read_group(&mut self.reader, &self.stream, &node, &cursor, room, None).await?;
            self.own_cursor = got.last().map(|(id, _)| id.clone());
            if !got.is_empty() {
                self.push(got);
                return Ok(());
            }
        }
        if Instant::now() >= self.next_claim {
            let (next, claimed) = auto_claim(
                &mut self.conn,
                &self.stream,
                &node,
                self.claim_idle_ms,
                &self.claim_cursor,
                room,
            )
            .await?;
            if next == "0-0" {
                self.next_claim = Instant::now() + self.claim_every;
            }
            self.claim_cursor = next;
            let held: HashSet<String> = self.held_ids().into_iter().collect();
            let claimed: Vec<_> = claimed
                .into_iter()
                .filter(|(id, _)| !held.contains(id))
                .collect();
            if !claimed.is_empty() {
                tracing::info!(
                    events = claimed.len(),
                    "took over webhook events a stopped broadcaster had not delivered"
                );
                self.push(claimed);
                return Ok(());
            }
        }
        let block = self.block_ms();
        let got = read_group(&mut self.reader, &self.stream, &node, ">", room, block).await?;
        self.caught_up = got.len() < room;
        self.push(got);
        Ok(())
    }

    /// How long the next read of new entries may wait: not at all when something
    /// can be sent now, until the held `channel_vacated` is due otherwise.
    fn block_ms(&self) -> Option<u64> {
        let Some(first) = self.buffer.front() else {
            return Some(READ_BLOCK_MS);
        };
        if !self.held_back(0) {
            return None;
        }
        let left = first
            .hold_until
            .saturating_duration_since(Instant::now())
            .as_millis() as u64;
        // BLOCK 0 would wait forever.
        (left > 0).then_some(left.min(READ_BLOCK_MS))
    }

    /// Adds entries to the buffer in id order (taken-over entries are older than
    /// what was read before them).
    fn push(&mut self, got: Vec<(String, Option<String>)>) {
        let debounce_ms = self.settings.debounce.as_millis() as u64;
        for (id, json) in got {
            let entry = Entry::new(id, json, debounce_ms);
            let key = id_parts(&entry.id);
            let at = self
                .buffer
                .iter()
                .rposition(|e| id_parts(&e.id) <= key)
                .map_or(0, |i| i + 1);
            self.buffer.insert(at, entry);
        }
        self.sync_held();
    }

    /// Whether the entry at `i` is a `channel_vacated` that must wait (and with it
    /// everything after it).
    fn held_back(&self, i: usize) -> bool {
        !self.settings.debounce.is_zero()
            && self.buffer[i].is(EventKind::ChannelVacated)
            && !self.releasable(i)
    }

    /// Whether the `channel_vacated` at `i` may go: nothing that could cancel it
    /// can still come. Either an entry recorded after its window has been read, or
    /// everything recorded has been read and its window has passed; or the buffer
    /// is full, and waiting longer would stall delivery.
    fn releasable(&self, i: usize) -> bool {
        if self.buffer.len() >= self.capacity {
            return true;
        }
        let v = &self.buffer[i];
        let window_end = v.recorded_ms + self.settings.debounce.as_millis() as u64 + WRITE_SLACK_MS;
        if self
            .buffer
            .iter()
            .skip(i + 1)
            .any(|e| e.recorded_ms > window_end)
        {
            return true;
        }
        self.caught_up && Instant::now() >= v.hold_until
    }

    /// Removes each `channel_vacated` whose next event about the same channel is a
    /// `channel_occupied` within the debounce window, with that `channel_occupied`.
    fn debounce(&mut self) {
        let window = self.settings.debounce.as_millis() as u64;
        if window == 0 {
            return;
        }
        let mut gone: HashSet<usize> = HashSet::new();
        for i in 0..self.buffer.len() {
            let Some(v) = &self.buffer[i].event else {
                continue;
            };
            if v.kind != EventKind::ChannelVacated || gone.contains(&i) {
                continue;
            }
            let last = self.buffer[i].recorded_ms + window + WRITE_SLACK_MS;
            for j in i + 1..self.buffer.len() {
                let e = &self.buffer[j];
                if e.recorded_ms > last {
                    break;
                }
                let Some(o) = &e.event else { continue };
                let about_channel = matches!(
                    o.kind,
                    EventKind::ChannelOccupied | EventKind::ChannelVacated
                );
                if !about_channel || o.channel != v.channel {
                    continue;
                }
                if o.kind == EventKind::ChannelOccupied && o.at_ms <= v.at_ms + window {
                    gone.insert(i);
                    gone.insert(j);
                }
                break;
            }
        }
        if gone.is_empty() {
            return;
        }
        let mut i = 0;
        self.buffer.retain(|e| {
            let keep = !gone.contains(&i);
            if !keep {
                self.acks.push(e.id.clone());
            }
            i += 1;
            keep
        });
        self.ctx
            .metrics
            .webhook_events_total
            .with_label_values(&["debounced"])
            .inc_by(gone.len() as u64);
        tracing::debug!(
            events = gone.len(),
            "webhook: channels vacated and occupied again within the debounce; neither sent"
        );
        self.sync_held();
    }

    /// The next batch: up to `HERALD_WEBHOOK_BATCH` entries from the front,
    /// stopping before a `channel_vacated` still in its window.
    fn take_ready(&mut self) -> Option<Vec<Entry>> {
        let mut n = 0;
        while n < self.buffer.len() && n < self.settings.batch {
            if self.held_back(n) {
                break;
            }
            n += 1;
        }
        (n > 0).then(|| self.buffer.drain(..n).collect())
    }

    /// POSTs one batch until a 2xx, or until its oldest event has been retried for
    /// `HERALD_WEBHOOK_RETRY_FOR_MS` (then drops it). `false` when cancelled: the
    /// batch stays pending for whoever delivers next.
    async fn deliver(&mut self, batch: Vec<Entry>, token: &CancellationToken) -> bool {
        let metrics = self.ctx.metrics.clone();
        let mut events = Vec::with_capacity(batch.len());
        let mut oldest_ms = u64::MAX;
        for e in batch {
            match e.event {
                Some(ev) => {
                    oldest_ms = oldest_ms.min(e.recorded_ms);
                    self.in_flight.push(e.id);
                    events.push(ev);
                }
                None => {
                    tracing::warn!(entry = %e.id, "webhook: unreadable entry (trimmed, or not an event); dropped");
                    metrics
                        .webhook_events_total
                        .with_label_values(&["dropped"])
                        .inc();
                    self.acks.push(e.id);
                }
            }
        }
        self.sync_held();
        if events.is_empty() {
            return true;
        }
        let n = events.len() as u64;
        let body = match serde_json::to_vec(&Batch { events }) {
            Ok(b) => b,
            Err(e) => {
                // Events parsed from JSON serialize again; this is not expected.
                tracing::error!(cause = %e, "webhook: cannot encode a batch; dropped");
                self.finish(false, n).await;
                return true;
            }
        };
        let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
        loop {
            let outcome = tokio::select! {
                o = self.post(&body) => o,
                () = token.cancelled() => return false,
            };
            match outcome {
                Ok(()) => {
                    if self.failing {
                        tracing::info!("webhook backend accepts events again");
                        self.failing = false;
                    }
                    self.finish(true, n).await;
                    return true;
                }
                Err(failure) => {
                    self.record_error(&failure).await;
                    let age_ms = now_ms().saturating_sub(oldest_ms);
                    if age_ms >= self.settings.retry_for.as_millis() as u64 {
                        tracing::warn!(
                            events = n,
                            cause = %failure,
                            "webhook events dropped: not accepted within HERALD_WEBHOOK_RETRY_FOR_MS"
                        );
                        self.finish(false, n).await;
                        return true;
                    }
                    if self.failing {
                        tracing::debug!(cause = %failure, events = n, "webhook POST failed again; retrying");
                    } else {
                        tracing::warn!(cause = %failure, events = n, "webhook POST failed; retrying");
                        self.failing = true;
                    }
                    let pause = jittered(backoff.next_delay());
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = token.cancelled() => return false,
                    }
                }
            }
        }
    }

    /// One signed POST of `body`.
    async fn post(&self, body: &[u8]) -> Result<(), Failure> {
        let metrics = &self.ctx.metrics;
        // Signed at each attempt: the timestamp says when this request was sent.
        let sig = signature(self.settings.secret.as_bytes(), now_ms() / 1000, body);
        let started = std::time::Instant::now();
        let res = self
            .http
            .post(self.settings.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, sig)
            .body(body.to_vec())
            .send()
            .await;
        metrics
            .webhook_post_seconds
            .observe(started.elapsed().as_secs_f64());
        let (result, outcome) = match res {
            Ok(r) if r.status().is_success() => ("ok", Ok(())),
            Ok(r) => ("error", Err(Failure::Status(r.status()))),
            Err(e) if e.is_timeout() => ("timeout", Err(Failure::Timeout)),
            Err(e) => ("error", Err(Failure::Send(describe(e)))),
        };
        metrics
            .webhook_posts_total
            .with_label_values(&[result])
            .inc();
        outcome
    }

    /// Counts the batch in flight as delivered or dropped, and acknowledges it.
    async fn finish(&mut self, delivered: bool, n: u64) {
        let result = if delivered { "delivered" } else { "dropped" };
        self.ctx
            .metrics
            .webhook_events_total
            .with_label_values(&[result])
            .inc_by(n);
        let mut pipe = redis::pipe();
        if delivered {
            pipe.cmd("HINCRBY").arg(&self.stats).arg("delivered").arg(n);
            pipe.cmd("HSET")
                .arg(&self.stats)
                .arg("last_ok_ms")
                .arg(now_ms());
        } else {
            pipe.cmd("HINCRBY").arg(&self.stats).arg("failed").arg(n);
        }
        self.write_stats(pipe).await;
        self.acks.append(&mut self.in_flight);
        self.sync_held();
        // Right away if Redis lets us; otherwise the next round retries.
        if let Err(e) = self.flush_acks().await {
            self.ctx.redis_failed(e);
        }
    }

    async fn record_error(&mut self, failure: &Failure) {
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(&self.stats)
            .arg("last_error_ms")
            .arg(now_ms())
            .arg("last_error")
            .arg(failure.to_string());
        self.write_stats(pipe).await;
    }

    /// Best effort: stats that fail to be written are only counted.
    async fn write_stats(&mut self, mut pipe: redis::Pipeline) {
        let pipe = pipe.ignore();
        let res = store::within(
            store::RESPONSE_TIMEOUT,
            "webhook stats",
            pipe.query_async::<()>(&mut self.conn),
        )
        .await;
        if let Err(e) = res {
            self.ctx.metrics.redis_errors_total.inc();
            tracing::debug!(cause = %e, "webhook: cannot write the stats");
        }
    }

    /// Acknowledges and deletes the entries done with.
    async fn flush_acks(&mut self) -> RedisResult<()> {
        if self.acks.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.cmd("XACK")
            .arg(&self.stream)
            .arg(GROUP)
            .arg(&self.acks)
            .ignore()
            .cmd("XDEL")
            .arg(&self.stream)
            .arg(&self.acks)
            .ignore();
        store::within(
            store::RESPONSE_TIMEOUT,
            "webhook acknowledgements",
            pipe.query_async::<()>(&mut self.conn),
        )
        .await?;
        self.acks.clear();
        self.sync_held();
        Ok(())
    }

    fn held_ids(&self) -> Vec<String> {
        self.acks
            .iter()
            .chain(&self.in_flight)
            .cloned()
            .chain(self.buffer.iter().map(|e| e.id.clone()))
            .collect()
    }

    fn sync_held(&self) {
        let ids = self.held_ids();
        *self.held.lock().unwrap_or_else(PoisonError::into_inner) = ids;
    }
}

/// A retry pause, ±20 %, so broadcasters that failed together do not retry together.
fn jittered(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.8..1.2))
}

/// A send error with its causes, without the URL (it may carry credentials).
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut out = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// Resets the idle time of every held entry three times per claim period, so a
/// long retry never lets another broadcaster take them over.
async fn keep_alive(ctx: AppState, mut conn: Conn, stream: String, held: Held, idle_ms: u64) {
    let mut tick = tokio::time::interval(Duration::from_millis((idle_ms / 3).max(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let ids = held.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if ids.is_empty() {
            continue;
        }
        let res = store::within(
            store::RESPONSE_TIMEOUT,
            "webhook keep-alive",
            redis::cmd("XCLAIM")
                .arg(&stream)
                .arg(GROUP)
                .arg(&ctx.node_id)
                .arg(0)
                .arg(&ids)
                .arg("JUSTID")
                .query_async::<Value>(&mut conn),
        )
        .await;
        if let Err(e) = res {
            ctx.metrics.redis_errors_total.inc();
            tracing::debug!(cause = %e, "webhook keep-alive failed");
        }
    }
}

/// Refreshes the queue gauge every few seconds, and removes consumers of
/// broadcasters long gone from the group.
async fn watch_queue(ctx: AppState, mut conn: Conn, token: CancellationToken) {
    let stream = ctx.keys.webhooks();
    let mut tick = tokio::time::interval(QUEUE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_cleanup = Instant::now() + CONSUMERS_EVERY;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = token.cancelled() => return,
        }
        match store::within(
            store::RESPONSE_TIMEOUT,
            "webhook queue",
            queued(&mut conn, &stream),
        )
        .await
        {
            Ok(n) => ctx
                .metrics
                .webhook_queued
                .set(i64::try_from(n).unwrap_or(i64::MAX)),
            Err(e) => {
                ctx.metrics.redis_errors_total.inc();
                tracing::debug!(cause = %e, "webhook: cannot read the queue length");
            }
        }
        if Instant::now() >= next_cleanup {
            next_cleanup = Instant::now() + CONSUMERS_EVERY;
            let res = store::within(
                store::RESPONSE_TIMEOUT,
                "webhook consumers",
                remove_gone_consumers(&mut conn, &stream, &ctx.node_id),
            )
            .await;
            if let Err(e) = res {
                ctx.metrics.redis_errors_total.inc();
                tracing::debug!(cause = %e, "webhook: cannot list the group's consumers");
            }
        }
    }
}

// === Redis ===

/// Up to `count` entries for `consumer` after `id` (`>`: new ones, waiting up to
/// `block` ms; an id: its own pending ones), as (entry id, event JSON).
async fn read_group(
    conn: &mut Conn,
    stream: &str,
    consumer: &str,
    id: &str,
    count: usize,
    block: Option<u64>,
) -> RedisResult<Vec<(String, Option<String>)>> {
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP")
        .arg(GROUP)
        .arg(consumer)
        .arg("COUNT")
        .arg(count);
    if let Some(ms) = block {
        cmd.arg("BLOCK").arg(ms);
    }
    cmd.arg("STREAMS").arg(stream).arg(id);
    let reply: Value = cmd.query_async(conn).await?;
    Ok(stream_entries(reply))
}

/// The entries of an `XREADGROUP` reply (one stream). A pending entry trimmed
/// from the stream comes back without fields: `None`.
fn stream_entries(reply: Value) -> Vec<(String, Option<String>)> {
    let streams: Vec<Value> = match reply {
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(mut kv) if kv.len() == 2 => kv.pop(),
                _ => None,
            })
            .collect(),
        Value::Map(m) => m.into_iter().map(|(_, v)| v).collect(),
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for entries in streams {
        let Value::Array(entries) = entries else {
            continue;
        };
        for entry in entries {
            let Value::Array(mut parts) = entry else {
                continue;
            };
            if parts.len() != 2 {
                continue;
            }
            let fields = parts.pop().unwrap_or(Value::Nil);
            let Ok(id) = redis::from_redis_value::<String>(parts.pop().unwrap_or(Value::Nil))
            else {
                continue;
            };
            out.push((id, field(fields)));
        }
    }
    out
}

/// The event field of an entry's `[field, value, …]`.
fn field(fields: Value) -> Option<String> {
    let Value::Array(fields) = fields else {
        return None;
    };
    let mut it = fields.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        if redis::from_redis_value::<String>(k).is_ok_and(|k| k == FIELD) {
            return redis::from_redis_value(v).ok();
        }
    }
    None
}

/// Claims for `consumer` up to `count` entries idle longer than `idle_ms`, scanning
/// from `cursor`; returns the next cursor (`0-0` when the scan is complete) and
/// the entries.
async fn auto_claim(
    conn: &mut Conn,
    stream: &str,
    consumer: &str,
    idle_ms: u64,
    cursor: &str,
    count: usize,
) -> RedisResult<(String, Vec<(String, Option<String>)>)> {
    let reply: redis::streams::StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
        .arg(stream)
        .arg(GROUP)
        .arg(consumer)
        .arg(idle_ms)
        .arg(cursor)
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await?;
    let claimed = reply
        .claimed
        .into_iter()
        .map(|e| {
            let json = e.get::<String>(FIELD);
            (e.id, json)
        })
        .collect();
    Ok((reply.next_stream_id, claimed))
}

/// Events waiting in the group: not yet read by any broadcaster (its lag) plus
/// read and not yet acknowledged (pending). Without a known lag, the stream's
/// length, which is the same thing as long as done entries are deleted.
pub async fn queued(conn: &mut Conn, stream: &str) -> RedisResult<u64> {
    let reply: RedisResult<redis::streams::StreamInfoGroupsReply> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await;
    let groups = match reply {
        Ok(r) => r.groups,
        // No stream yet: nothing recorded.
        Err(e) if e.to_string().contains("no such key") => return Ok(0),
        Err(e) => return Err(e),
    };
    let group = groups.into_iter().find(|g| g.name == GROUP);
    match group.and_then(|g| g.lag.map(|lag| (lag + g.pending) as u64)) {
        Some(n) => Ok(n),
        None => redis::cmd("XLEN").arg(stream).query_async(conn).await,
    }
}

/// Removes consumers that hold nothing and have been silent for an hour.
async fn remove_gone_consumers(conn: &mut Conn, stream: &str, me: &str) -> RedisResult<()> {
    let reply: redis::streams::StreamInfoConsumersReply = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(stream)
        .arg(GROUP)
        .query_async(conn)
        .await?;
    for c in reply.consumers {
        if c.name != me && c.pending == 0 && c.idle > CONSUMER_GONE_MS {
            redis::cmd("XGROUP")
                .arg("DELCONSUMER")
                .arg(stream)
                .arg(GROUP)
                .arg(&c.name)
                .query_async::<Value>(conn)
                .await?;
            tracing::debug!(consumer = %c.name, "webhook: removed a stopped broadcaster's consumer");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // python3 -c 'import hmac,hashlib; print(hmac.new(b"0123456789abcdef",
        //   b"1700000000.{\"events\":[]}", hashlib.sha256).hexdigest())'
        assert_eq!(
            signature(b"0123456789abcdef", 1_700_000_000, br#"{"events":[]}"#),
            "t=1700000000,v1=1f1c43683e76ee83b09613ab56fa5bdd3ce55f3ee41db00a92e22eea0376899e"
        );
    }

    #[test]
    fn ids_order_numerically() {
        assert_eq!(id_parts("1700000000000-12"), (1_700_000_000_000, 12));
        assert!(id_parts("999-5") < id_parts("1000-0"));
        assert_eq!(id_parts("junk"), (0, 0));
    }

    #[test]
    fn entries_of_a_read_reply() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("herald:webhooks"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("1-0"),
                    Value::Array(vec![bulk("e"), bulk(r#"{"type":"x"}"#)]),
                ]),
                // Trimmed while pending.
                Value::Array(vec![bulk("2-0"), Value::Nil]),
                Value::Array(vec![
                    bulk("3-0"),
                    Value::Array(vec![bulk("other"), bulk("1")]),
                ]),
            ]),
        ])]);
        assert_eq!(
            stream_entries(reply),
            vec![
                ("1-0".to_owned(), Some(r#"{"type":"x"}"#.to_owned())),
                ("2-0".to_owned(), None),
                ("3-0".to_owned(), None),
            ]
        );
        assert!(
            stream_entries(Value::Nil).is_empty(),
            "a read that timed out"
        );
    }

    #[test]
    fn an_entry_takes_its_id_and_time_from_the_stream() {
        let e = Entry::new(
            "1700000000000-3".to_owned(),
            Some(
                r#"{"type":"channel_vacated","channel":"room:1","at_ms":1699999999999}"#.to_owned(),
            ),
            1000,
        );
        assert_eq!(e.recorded_ms, 1_700_000_000_000);
        assert!(e.is(EventKind::ChannelVacated));
        let ev = e.event.expect("readable");
        assert_eq!(ev.id.as_deref(), Some("1700000000000-3"));
        // Long past: its window is over already.
        assert!(e.hold_until <= Instant::now());
        let bad = Entry::new("1-0".to_owned(), Some("{".to_owned()), 1000);
        assert!(bad.event.is_none());
    }

    /// A delivery loop on nothing (its connections are never used): for the
    /// buffer's rules alone.
    fn deliverer(debounce_ms: u64, batch: usize) -> Deliverer {
        use clap::Parser as _;
        let config = crate::Config::try_parse_from(["broadcaster"]).unwrap();
        let settings = config.validate().unwrap();
        let rt = Runtime::new(
            crate::SERVICE,
            &config.common,
            prometheus::Registry::new(),
            Duration::from_secs(1),
            herald_common::engine::Engine::memory(),
        );
        let ctx = AppState::new(config, &settings, &rt, crate::Metrics::new().unwrap());
        let client = redis::Client::open("redis://127.0.0.1:1").unwrap();
        let conn = herald_common::store::Client::Single(client)
            .dedicated(Duration::from_secs(1))
            .unwrap();
        let settings = WebhookSettings {
            url: reqwest::Url::parse("http://127.0.0.1:1/hook").unwrap(),
            secret: "0123456789abcdef".to_owned(),
            batch,
            timeout: Duration::from_secs(1),
            retry_for: Duration::from_secs(60),
            debounce: Duration::from_millis(debounce_ms),
        };
        Deliverer::new(&ctx, settings, conn.clone(), conn, reqwest::Client::new())
    }

    /// An entry recorded `ago_ms` before now, about `channel`, happening then too.
    fn entry(seq: u64, ago_ms: u64, kind: &str, channel: &str) -> (String, Option<String>) {
        let ms = now_ms() - ago_ms;
        let json = serde_json::json!({"type": kind, "channel": channel, "at_ms": ms});
        (format!("{ms}-{seq}"), Some(json.to_string()))
    }

    fn kinds(batch: &[Entry]) -> Vec<(EventKind, String)> {
        batch
            .iter()
            .map(|e| {
                let ev = e.event.as_ref().unwrap();
                (ev.kind, ev.channel.clone())
            })
            .collect()
    }

    #[tokio::test]
    async fn a_flap_is_removed_and_acknowledged_unsent() {
        let mut d = deliverer(1000, 100);
        d.push(vec![
            entry(0, 5000, "channel_occupied", "a"),
            entry(1, 20, "channel_vacated", "a"),
            entry(2, 20, "member_added", "a"),
            entry(3, 10, "channel_occupied", "a"),
        ]);
        d.debounce();
        assert_eq!(d.acks.len(), 2);
        // Acknowledged entries stay this node's until the acknowledgement is written.
        assert_eq!(d.held.lock().unwrap().len(), 4);
        let batch = d.take_ready().unwrap();
        assert_eq!(
            kinds(&batch),
            [
                (EventKind::ChannelOccupied, "a".to_owned()),
                (EventKind::MemberAdded, "a".to_owned())
            ]
        );
    }

    #[tokio::test]
    async fn a_vacated_waits_for_its_window_and_holds_what_follows() {
        let mut d = deliverer(1000, 100);
        d.caught_up = true;
        d.push(vec![
            entry(0, 30, "member_removed", "a"),
            entry(1, 20, "channel_vacated", "a"),
            entry(2, 10, "channel_occupied", "b"),
        ]);
        d.debounce();
        assert!(d.acks.is_empty(), "another channel's occupation is no flap");
        let batch = d.take_ready().unwrap();
        assert_eq!(kinds(&batch), [(EventKind::MemberRemoved, "a".to_owned())]);
        assert!(d.take_ready().is_none(), "held within its window");
        let wait = d.block_ms().unwrap();
        assert!((1..=1000).contains(&wait), "{wait}");
        // Once an entry recorded after the window is read, nothing can cancel it.
        let later = now_ms() + 2000;
        d.push(vec![(
            format!("{later}-0"),
            Some(
                serde_json::json!({"type": "channel_occupied", "channel": "a", "at_ms": later})
                    .to_string(),
            ),
        )]);
        d.debounce();
        assert!(
            d.acks.is_empty(),
            "an occupation after the window is no flap"
        );
        assert_eq!(d.take_ready().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn a_vacated_long_past_goes_at_once_and_batches_are_bounded() {
        let mut d = deliverer(1000, 2);
        d.caught_up = true;
        d.push(vec![
            entry(0, 9000, "channel_vacated", "a"),
            entry(1, 6000, "channel_occupied", "a"),
            entry(2, 5000, "channel_vacated", "a"),
        ]);
        d.debounce();
        assert!(d.acks.is_empty(), "3 s apart is no flap: {:?}", d.acks);
        assert_eq!(d.take_ready().unwrap().len(), 2);
        assert_eq!(d.take_ready().unwrap().len(), 1);
        assert!(d.take_ready().is_none());
    }

    #[tokio::test]
    async fn without_debounce_nothing_is_held_or_removed() {
        let mut d = deliverer(0, 100);
        d.push(vec![
            entry(0, 10, "channel_vacated", "a"),
            entry(1, 5, "channel_occupied", "a"),
        ]);
        d.debounce();
        assert!(d.acks.is_empty());
        assert_eq!(d.take_ready().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn taken_over_entries_go_in_id_order() {
        let mut d = deliverer(0, 100);
        d.push(vec![entry(5, 10, "member_added", "new")]);
        d.push(vec![entry(1, 5000, "member_added", "old")]);
        let batch = d.take_ready().unwrap();
        assert_eq!(batch[0].event.as_ref().unwrap().channel, "old");
    }
}
