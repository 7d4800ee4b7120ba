//! One client connection: authentication, the request/response protocol, the
//! outbound queue, limits, heartbeats and token expiry — all in one task that owns
//! the socket, so reads, writes and timers never race.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::SinkExt;
use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::mpsc;
use tokio::time::Instant;

use herald_proto::claims::Claims;
use herald_proto::client::{self, ClientMsg, ErrorCode, Id, Since};
use herald_proto::envelope;
use herald_proto::server;
use herald_proto::time::{now_ms, now_rfc3339};

use crate::State;
use crate::hub::{ConnShared, Delivery, Kick};
use crate::limits::IpSlot;
use crate::presence;

/// Most frames written before one flush (write coalescing).
const MAX_WRITE_BATCH: usize = 64;
/// Most frames in one `batch_messages`.
const MAX_BATCH_FRAMES: usize = 100;
/// How long a subscriber waits for Redis to confirm a new channel subscription.
const SUBSCRIBE_READY_TIMEOUT: Duration = Duration::from_secs(3);
/// How long final frames (disconnect, close) may take to write.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// Oversized frames tolerated per minute before the connection is closed (1009).
const TOO_LARGE_STRIKES: u32 = 3;
/// Rate-limit hits are reported to the monitor at most this often per connection.
const RATELIMIT_REPORT_EVERY: Duration = Duration::from_secs(1);

/// A token accepted at the handshake (header or query).
#[derive(Debug)]
pub(crate) struct Preauth {
    pub(crate) claims: Claims,
    pub(crate) channels: Vec<String>,
    pub(crate) batch: bool,
}

/// Serves one upgraded socket until it closes.
pub(crate) async fn serve(
    mut socket: WebSocket,
    state: Arc<State>,
    ip: IpAddr,
    pre: Option<Preauth>,
    slot: IpSlot,
) {
    let (claims, channels, batch, auth_id) = match pre {
        Some(p) => (p.claims, p.channels, p.batch, None),
        // Boxed (here and for the other rare, deep requests below) so their state is
        // allocated only while they run instead of enlarging every idle connection's task.
        None => match Box::pin(first_frame_auth(&mut socket, &state, ip)).await {
            Ok(v) => v,
            Err(refusal) => {
                // Never served: the slot is given back before the client hears of it.
                slot.release(&mut state.redis.clone()).await;
                if let Some((code, reason)) = refusal {
                    close(&mut socket, code, reason).await;
                }
                return;
            }
        },
    };
    let key = state.next_key.fetch_add(1, Ordering::Relaxed);
    let conn_id = format!("{:016x}", rand::random::<u64>());
    // Unbounded as a channel, bounded by the hub's frame/byte count (see `ConnShared`).
    let (tx, rx) = mpsc::unbounded_channel();
    let cancel = state.shutdown.child_token();
    let user = claims.user().unwrap_or_default().to_owned();
    let shared = Arc::new(ConnShared::new(
        conn_id,
        user,
        ip,
        claims.jti.clone(),
        tx,
        cancel,
    ));
    state.hub.add_conn(key, shared.clone());
    state.metrics.connections_total.inc();
    let limit = NonZeroU32::new(state.settings.rate_messages).unwrap_or(NonZeroU32::MIN);
    let period = state.settings.rate_window / limit.get();
    let quota = Quota::with_period(period.max(Duration::from_nanos(1)))
        .unwrap_or_else(|| Quota::per_second(limit))
        .allow_burst(limit);
    let mut conn = Conn {
        expiry: expiry_instant(&claims, state.settings.heartbeat, state.leeway),
        socket,
        state: state.clone(),
        shared: shared.clone(),
        key,
        rx,
        claims,
        channels: HashSet::new(),
        floors: HashMap::new(),
        limiter: RateLimiter::direct_with_clock(quota, state.clock.clone()),
        refused: 0,
        refused_since: Instant::now(),
        too_large: Vec::new(),
        last_seen: Instant::now(),
        last_report: None,
        batch,
        pending_out: 0,
        batch_now_ms: 0,
        latency: state.metrics.delivery_latency.local(),
    };
    tracing::debug!(conn_id = %shared.conn_id, user = %shared.user, %ip, "connected");
    conn.run(channels, auth_id).await;
    for c in std::mem::take(&mut conn.channels) {
        state.hub.unsubscribe(&c, key);
    }
    state.hub.remove_conn(key);
    let _ = state
        .presence
        .send(presence::Event::Closed(shared.conn_id.clone()));
    drop(slot);
    tracing::debug!(conn_id = %shared.conn_id, "disconnected");
}

type AuthOk = (Claims, Vec<String>, bool, Option<Id>);

/// Waits for the first frame, which must carry the token. A refusal is logged with
/// its reason and the client's address (never the token).
async fn first_frame_auth(
    socket: &mut WebSocket,
    state: &State,
    ip: IpAddr,
) -> Result<AuthOk, Option<(u16, &'static str)>> {
    let deadline = Instant::now() + state.settings.auth_timeout;
    loop {
        let msg = match tokio::time::timeout_at(deadline, socket.recv()).await {
            Err(_) => {
                state
                    .metrics
                    .auth_failures
                    .with_label_values(&["timeout"])
                    .inc();
                tracing::info!(reason = "timeout", %ip, "WebSocket login refused");
                return Err(Some((1008, "authentication timeout")));
            }
            Ok(None | Some(Err(_))) => return Err(None),
            Ok(Some(Ok(m))) => m,
        };
        let text = match msg {
            Message::Text(t) => t,
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Close(_) => return Err(None),
            Message::Binary(_) => return Err(Some((1003, "binary frames are not supported"))),
        };
        let failed = |reason: &str| {
            state
                .metrics
                .auth_failures
                .with_label_values(&[reason])
                .inc();
            tracing::info!(reason, %ip, "WebSocket login refused");
            Some((1008, "authentication failed"))
        };
        if text.len() > state.settings.max_frame_bytes {
            return Err(failed("too_large"));
        }
        return match client::parse(&text) {
            Ok(ClientMsg::Auth {
                token,
                channels,
                batch,
                id,
            }) => match state.authenticate(&token).await {
                Ok(claims) => Ok((claims, channels, batch, id)),
                Err(e) => Err(failed(e.reason())),
            },
            _ => Err(failed("no_token")),
        };
    }
}

/// When the token stops being valid on this connection (`exp` + leeway).
fn expiry_instant(claims: &Claims, fallback: Duration, leeway: Duration) -> Instant {
    let now_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if claims.exp == 0 {
        return Instant::now() + fallback.max(Duration::from_secs(365 * 24 * 3600));
    }
    let left = claims.exp.saturating_sub(now_s);
    Instant::now() + Duration::from_secs(left) + leeway
}

async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from(reason),
    };
    let _ = tokio::time::timeout(
        CLOSE_WRITE_TIMEOUT,
        socket.send(Message::Close(Some(frame))),
    )
    .await;
}

/// The outcome of one request.
enum Reply {
    Frame(String),
    Nothing,
    /// The socket failed while answering.
    Broken,
}

/// A subscribe that did not happen.
enum SubError {
    /// Tell the client with this `error` frame.
    Frame(String),
    /// The socket failed.
    Broken,
}

/// Whether the connection loop goes on.
enum Flow {
    Continue,
    Stop,
}

struct Conn {
    socket: WebSocket,
    state: Arc<State>,
    shared: Arc<ConnShared>,
    key: u64,
    rx: mpsc::UnboundedReceiver<Arc<Delivery>>,
    claims: Claims,
    channels: HashSet<String>,
    /// After a subscribe, live messages at or below the reported offset were
    /// already covered (replayed or before the client's position): skip them.
    floors: HashMap<Arc<str>, (Box<str>, u64)>,
    limiter: DefaultDirectRateLimiter,
    /// Frames refused by the rate limiter since `refused_since`.
    refused: u32,
    refused_since: Instant,
    /// When oversized frames arrived (last minute).
    too_large: Vec<Instant>,
    last_seen: Instant,
    last_report: Option<Instant>,
    expiry: Instant,
    batch: bool,
    /// Deliveries written since the last [`Conn::flush_stats`].
    pending_out: u64,
    /// The clock read once per write batch, for latencies.
    batch_now_ms: u64,
    /// This connection's share of the latency histogram, flushed per batch.
    latency: prometheus::local::LocalHistogram,
}

impl Conn {
    async fn run(&mut self, initial: Vec<String>, auth_id: Option<Id>) {
        let mut subscribed = Vec::new();
        let mut errors = Vec::new();
        for ch in dedup(initial) {
            match Box::pin(self.subscribe(&ch, None, None, false)).await {
                Ok(()) => subscribed.push(ch),
                Err(SubError::Frame(frame)) => errors.push(frame),
                Err(SubError::Broken) => return,
            }
        }
        // Listed for the monitor at once, channels or not.
        self.publish_presence();
        let hello = server::auth_success(
            &self.shared.user,
            &self.shared.conn_id,
            &self.state.node_id,
            &subscribed,
            self.state.settings.heartbeat.as_millis() as u64,
            auth_id.as_ref(),
        );
        if self.send_text(hello).await.is_err() {
            return;
        }
        for e in errors {
            if self.send_text(e).await.is_err() {
                return;
            }
        }
        let hb = self.state.settings.heartbeat;
        let mut heartbeat = tokio::time::interval_at(Instant::now() + hb, hb);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Created once, not per loop turn: a fresh `cancelled()` or `sleep_until` would
        // register with (and on drop leave) the token's waiter list and the timer wheel
        // on every wake-up, i.e. per delivered message.
        let cancelled = self.shared.cancel.clone().cancelled_owned();
        tokio::pin!(cancelled);
        let expiry = tokio::time::sleep_until(self.expiry);
        tokio::pin!(expiry);
        loop {
            if expiry.deadline() != self.expiry {
                expiry.as_mut().reset(self.expiry);
            }
            let flow = tokio::select! {
                biased;
                () = &mut cancelled => {
                    let kick = self.shared.kicked().cloned().unwrap_or_else(|| {
                        Kick::new("shutdown", "going away", 1001, true)
                    });
                    if kick.code == "shutdown" {
                        self.drain().await;
                    }
                    self.kick(&kick).await;
                    Flow::Stop
                }
                d = self.rx.recv() => match d {
                    Some(d) => self.write_deliveries(d).await,
                    None => Flow::Stop,
                },
                msg = self.socket.recv() => match msg {
                    Some(Ok(m)) => self.on_frame(m).await,
                    _ => Flow::Stop,
                },
                _ = heartbeat.tick() => self.on_heartbeat().await,
                () = &mut expiry => {
                    self.kick(&Kick::new("token_expired", "token expired", 1008, false)).await;
                    Flow::Stop
                }
            };
            if matches!(flow, Flow::Stop) {
                break;
            }
        }
    }

    // === writing ===

    async fn send_text(&mut self, text: String) -> Result<(), axum::Error> {
        self.socket.send(Message::Text(Utf8Bytes::from(text))).await
    }

    /// Writes queued deliveries, coalescing what is already waiting into one flush.
    async fn write_deliveries(&mut self, first: Arc<Delivery>) -> Flow {
        self.batch_now_ms = now_ms();
        let flow = if self.batch {
            self.write_batch(first).await
        } else {
            self.write_plain(first).await
        };
        self.flush_stats();
        flow
    }

    async fn write_plain(&mut self, first: Arc<Delivery>) -> Flow {
        let mut pending = Some(first);
        let mut written = 0usize;
        let (mut taken, mut taken_bytes) = (0u64, 0u64);
        while let Some(d) = pending.take() {
            taken += 1;
            taken_bytes += d.text.len() as u64;
            if self.keep(&d) {
                if self
                    .socket
                    .feed(Message::Text(d.text.clone()))
                    .await
                    .is_err()
                {
                    return Flow::Stop;
                }
                self.observe(&d);
                written += 1;
            }
            if written < MAX_WRITE_BATCH {
                pending = self.rx.try_recv().ok();
            }
        }
        self.shared.dequeued(taken, taken_bytes);
        if self.socket.flush().await.is_err() {
            return Flow::Stop;
        }
        Flow::Continue
    }

    /// `batch_messages` mode: wait a moment for more, then send them as one frame.
    async fn write_batch(&mut self, first: Arc<Delivery>) -> Flow {
        tokio::time::sleep(self.state.settings.batch_window).await;
        let mut frames: Vec<Arc<Delivery>> = Vec::with_capacity(8);
        let mut next = Some(first);
        let (mut taken, mut taken_bytes) = (0u64, 0u64);
        while let Some(d) = next.take() {
            taken += 1;
            taken_bytes += d.text.len() as u64;
            if self.keep(&d) {
                frames.push(d);
            }
            if frames.len() < MAX_BATCH_FRAMES {
                next = self.rx.try_recv().ok();
            }
        }
        self.shared.dequeued(taken, taken_bytes);
        let text = match frames.len() {
            0 => return Flow::Continue,
            1 => frames[0].text.clone(),
            _ => Utf8Bytes::from(server::batch(frames.iter().map(|d| d.text.as_str()))),
        };
        if self.socket.send(Message::Text(text)).await.is_err() {
            return Flow::Stop;
        }
        for d in &frames {
            self.observe(d);
        }
        Flow::Continue
    }

    /// Whether a delivery is new to this client (see `floors`).
    fn keep(&mut self, d: &Delivery) -> bool {
        if self.floors.is_empty() {
            return true;
        }
        match self.floors.get(&*d.channel) {
            Some((epoch, offset)) if **epoch == *d.epoch && d.offset <= *offset => false,
            Some(_) => {
                self.floors.remove(&*d.channel);
                true
            }
            None => true,
        }
    }

    /// Counts one written delivery into this connection's local tallies; they are
    /// folded into the shared metrics once per write batch ([`Self::flush_stats`]),
    /// so the hot path touches no shared cache line per message.
    fn observe(&mut self, d: &Delivery) {
        self.pending_out += 1;
        if d.published_ms > 0 {
            let ms = self.batch_now_ms.saturating_sub(d.published_ms);
            self.latency.observe(ms as f64 / 1000.0);
        }
    }

    fn flush_stats(&mut self) {
        if self.pending_out > 0 {
            self.shared
                .messages_out
                .fetch_add(self.pending_out, Ordering::Relaxed);
            self.state
                .metrics
                .messages_delivered
                .inc_by(self.pending_out);
            self.pending_out = 0;
            self.latency.flush();
        }
    }

    /// Writes what is queued (shutdown drain), bounded by the queue's size.
    async fn drain(&mut self) {
        self.batch_now_ms = now_ms();
        let mut n = 0;
        while let Ok(d) = self.rx.try_recv() {
            self.shared.dequeued(1, d.text.len() as u64);
            if self.keep(&d) {
                let r = tokio::time::timeout(
                    CLOSE_WRITE_TIMEOUT,
                    self.socket.feed(Message::Text(d.text.clone())),
                )
                .await;
                if !matches!(r, Ok(Ok(()))) {
                    return;
                }
                self.observe(&d);
            }
            n += 1;
            if n >= self.state.settings.queue_frames {
                break;
            }
        }
        let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, self.socket.flush()).await;
        self.flush_stats();
    }

    /// Sends `disconnect` and closes.
    async fn kick(&mut self, kick: &Kick) {
        self.state
            .metrics
            .disconnects
            .with_label_values(&[kick.code])
            .inc();
        let frame = server::disconnect(kick.code, &kick.reason, kick.reconnect);
        let _ = tokio::time::timeout(
            CLOSE_WRITE_TIMEOUT,
            self.socket.send(Message::Text(Utf8Bytes::from(frame))),
        )
        .await;
        close(&mut self.socket, kick.close_code, &kick.reason).await;
    }

    // === reading ===

    async fn on_heartbeat(&mut self) -> Flow {
        if self.last_seen.elapsed() > self.state.settings.heartbeat * 2 {
            tracing::debug!(conn_id = %self.shared.conn_id, "no traffic for two heartbeats; dropping");
            self.state
                .metrics
                .disconnects
                .with_label_values(&["heartbeat_timeout"])
                .inc();
            close(&mut self.socket, 1001, "heartbeat timeout").await;
            return Flow::Stop;
        }
        let ping = self.socket.feed(Message::Ping(bytes::Bytes::new())).await;
        let hb = self.send_text(server::heartbeat()).await;
        if ping.is_err() || hb.is_err() {
            return Flow::Stop;
        }
        Flow::Continue
    }

    async fn on_frame(&mut self, msg: Message) -> Flow {
        self.last_seen = Instant::now();
        let text = match msg {
            Message::Text(t) => t,
            Message::Binary(_) => {
                close(&mut self.socket, 1003, "binary frames are not supported").await;
                return Flow::Stop;
            }
            Message::Ping(_) | Message::Pong(_) => return Flow::Continue,
            Message::Close(_) => return Flow::Stop,
        };
        self.shared.messages_in.fetch_add(1, Ordering::Relaxed);
        self.state.metrics.messages_received.inc();
        if let Err(wait) = self.limiter.check() {
            let wait = wait.wait_time_from(self.state.clock.now());
            // Parse only to echo the request's id (the frame is within the size limit).
            let id = (text.len() <= self.state.settings.max_frame_bytes)
                .then(|| client::parse(&text).ok())
                .flatten()
                .and_then(|m| m.id().cloned());
            return self.rate_limited(wait, id).await;
        }
        if text.len() > self.state.settings.max_frame_bytes {
            return self.too_large().await;
        }
        let reply = match client::parse(&text) {
            Ok(msg) => self.on_request(msg).await,
            Err(e) => Reply::Frame(e.to_frame()),
        };
        match reply {
            Reply::Frame(r) => match self.send_text(r).await {
                Ok(()) => Flow::Continue,
                Err(_) => Flow::Stop,
            },
            Reply::Nothing => Flow::Continue,
            Reply::Broken => Flow::Stop,
        }
    }

    async fn rate_limited(&mut self, wait: Duration, id: Option<Id>) -> Flow {
        self.state
            .metrics
            .ratelimit_hits
            .with_label_values(&["message"])
            .inc();
        self.report_hit("message");
        let window = self.state.settings.rate_window;
        if self.refused_since.elapsed() > window {
            self.refused = 0;
            self.refused_since = Instant::now();
        }
        self.refused += 1;
        if self.refused >= self.state.settings.rate_messages.saturating_mul(3) {
            self.kick(&Kick::new(
                "rate_limited",
                "rate limit exceeded",
                1008,
                false,
            ))
            .await;
            return Flow::Stop;
        }
        let frame = server::error_full(
            ErrorCode::RateLimited,
            "rate limit exceeded",
            id.as_ref(),
            None,
            Some(wait.as_millis().max(1) as u64),
        );
        match self.send_text(frame).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Stop,
        }
    }

    async fn too_large(&mut self) -> Flow {
        self.state
            .metrics
            .ratelimit_hits
            .with_label_values(&["too_large"])
            .inc();
        let now = Instant::now();
        self.too_large
            .retain(|t| now.duration_since(*t) < Duration::from_secs(60));
        self.too_large.push(now);
        if self.too_large.len() as u32 >= TOO_LARGE_STRIKES {
            self.kick(&Kick::new("too_large", "frames too large", 1009, false))
                .await;
            return Flow::Stop;
        }
        let msg = format!(
            "frame larger than {} bytes",
            self.state.settings.max_frame_bytes
        );
        match self
            .send_text(server::error(ErrorCode::TooLarge, &msg, None))
            .await
        {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Stop,
        }
    }

    /// Tells the monitor about a limit hit, at most once a second per connection.
    fn report_hit(&mut self, kind: &str) {
        if self
            .last_report
            .is_some_and(|t| t.elapsed() < RATELIMIT_REPORT_EVERY)
        {
            return;
        }
        self.last_report = Some(Instant::now());
        self.state.report_ratelimit(&self.shared.user, kind);
    }

    /// Handles one request.
    async fn on_request(&mut self, msg: ClientMsg) -> Reply {
        match msg {
            ClientMsg::Ping { id } => Reply::Frame(server::pong(id.as_ref())),
            ClientMsg::Subscribe { channel, since, id } => {
                match Box::pin(self.subscribe(&channel, since, id.as_ref(), true)).await {
                    Ok(()) => Reply::Nothing,
                    Err(SubError::Frame(frame)) => Reply::Frame(frame),
                    Err(SubError::Broken) => Reply::Broken,
                }
            }
            ClientMsg::Unsubscribe { channel, id } => {
                if !self.channels.remove(&channel) {
                    return Reply::Frame(server::error_full(
                        ErrorCode::NotSubscribed,
                        "not subscribed to this channel",
                        id.as_ref(),
                        Some(&channel),
                        None,
                    ));
                }
                self.state.hub.unsubscribe(&channel, self.key);
                self.floors.remove(channel.as_str());
                self.publish_presence();
                Reply::Frame(server::unsubscribed(&channel, id.as_ref()))
            }
            ClientMsg::Broadcast {
                channel,
                message,
                id,
            } => match Box::pin(self.broadcast(&channel, message.0.as_ref(), id.as_ref())).await {
                Some(f) => Reply::Frame(f),
                None => Reply::Nothing,
            },
            ClientMsg::Auth { token, id, .. } => {
                Reply::Frame(Box::pin(self.reauth(&token, id.as_ref())).await)
            }
        }
    }

    async fn broadcast(
        &mut self,
        channel: &str,
        message: &serde_json::value::RawValue,
        id: Option<&Id>,
    ) -> Option<String> {
        if !self.claims.may_publish(channel) {
            return Some(server::error_full(
                ErrorCode::Forbidden,
                "not allowed to broadcast to this channel",
                id,
                Some(channel),
                None,
            ));
        }
        let frame = envelope::message(channel, message, Some(&self.shared.user), &now_rfc3339());
        let mut redis = self.state.redis.clone();
        match self
            .state
            .publisher
            .publish(&mut redis, channel, &frame, now_ms())
            .await
        {
            Ok((offset, epoch)) => {
                self.state.health.up();
                self.state.metrics.publish.inc();
                // Nothing to acknowledge without an id; the sender sees its own
                // message if subscribed.
                id.map(|id| server::ack(id, channel, offset, &epoch))
            }
            Err(e) => {
                self.state.metrics.redis_errors.inc();
                self.state.health.failed(&e);
                tracing::warn!(cause = %e, "publish failed");
                Some(server::error_full(
                    ErrorCode::Unavailable,
                    "message could not be published; retry",
                    id,
                    Some(channel),
                    None,
                ))
            }
        }
    }

    /// Subscribes this connection to `channel`; `Ok` after `subscribed` (and any
    /// replay) was written when `reply`, otherwise silently. `Err` is an error frame.
    async fn subscribe(
        &mut self,
        channel: &str,
        since: Option<Since>,
        id: Option<&Id>,
        reply: bool,
    ) -> Result<(), SubError> {
        let err = |code, msg: &str| {
            Err(SubError::Frame(server::error_full(
                code,
                msg,
                id,
                Some(channel),
                None,
            )))
        };
        if let Err(e) = herald_proto::channel::validate(channel) {
            return err(ErrorCode::BadRequest, &e.to_string());
        }
        if !self.claims.may_subscribe(channel) {
            return err(
                ErrorCode::Forbidden,
                "not allowed to subscribe to this channel",
            );
        }
        let already = self.channels.contains(channel);
        if !already && self.channels.len() >= self.state.settings.max_channels {
            return err(
                ErrorCode::BadRequest,
                &format!(
                    "too many channels (at most {})",
                    self.state.settings.max_channels
                ),
            );
        }
        let mut ready = self
            .state
            .hub
            .subscribe(channel, self.key, self.shared.clone());
        let confirmed = tokio::time::timeout(SUBSCRIBE_READY_TIMEOUT, ready.wait_for(|r| *r))
            .await
            .is_ok_and(|r| r.is_ok());
        let mut redis = self.state.redis.clone();
        let recovery = if confirmed {
            self.state
                .publisher
                .recover(
                    &mut redis,
                    channel,
                    since.as_ref().map(|s| (s.offset, s.epoch.as_str())),
                )
                .await
                .ok()
        } else {
            None
        };
        let Some(rec) = recovery else {
            if !already {
                self.state.hub.unsubscribe(channel, self.key);
            }
            self.state.metrics.redis_errors.inc();
            return err(
                ErrorCode::Unavailable,
                "subscription temporarily unavailable; retry",
            );
        };
        self.channels.insert(channel.to_owned());
        self.floors
            .insert(Arc::from(channel), (rec.epoch.as_str().into(), rec.offset));
        self.publish_presence();
        let recovered = since.as_ref().map(|_| rec.recovered);
        if rec.recovered {
            for frame in rec.frames {
                if self
                    .socket
                    .feed(Message::Text(Utf8Bytes::from(frame)))
                    .await
                    .is_err()
                {
                    return Err(SubError::Broken);
                }
                self.shared.messages_out.fetch_add(1, Ordering::Relaxed);
                self.state.metrics.messages_delivered.inc();
            }
        }
        if reply {
            let frame = server::subscribed(channel, id, rec.offset, &rec.epoch, recovered);
            if self.send_text(frame).await.is_err() {
                return Err(SubError::Broken);
            }
        } else if self.socket.flush().await.is_err() {
            return Err(SubError::Broken);
        }
        Ok(())
    }

    async fn reauth(&mut self, token: &str, id: Option<&Id>) -> String {
        match self.state.authenticate(token).await {
            Ok(claims) if claims.user() == Some(self.shared.user.as_str()) => {
                self.expiry =
                    expiry_instant(&claims, self.state.settings.heartbeat, self.state.leeway);
                if let Ok(mut j) = self.shared.jti.lock() {
                    j.clone_from(&claims.jti);
                }
                self.claims = claims;
                let mut chans: Vec<String> = self.channels.iter().cloned().collect();
                chans.sort();
                server::auth_success(
                    &self.shared.user,
                    &self.shared.conn_id,
                    &self.state.node_id,
                    &chans,
                    self.state.settings.heartbeat.as_millis() as u64,
                    id,
                )
            }
            Ok(_) => server::error(
                ErrorCode::Forbidden,
                "a new token must be for the same user",
                id,
            ),
            Err(e) => server::error(ErrorCode::Forbidden, &format!("token refused: {e}"), id),
        }
    }

    fn publish_presence(&self) {
        let mut chans: Vec<String> = self.channels.iter().cloned().collect();
        chans.sort();
        if let Ok(mut c) = self.shared.channels.lock() {
            *c = chans;
        }
        let info = presence::conn_info(&self.shared, &self.state.node_id);
        let _ = self.state.presence.send(presence::Event::Upsert(info));
    }
}

fn dedup(channels: Vec<String>) -> Vec<String> {
    let mut seen = HashSet::new();
    channels
        .into_iter()
        .filter(|c| seen.insert(c.clone()))
        .collect()
}
