//! One client connection: authentication, the request/response protocol, the
//! outbound queue, limits, heartbeats and token expiry — all in one task that owns
//! the socket, so reads, writes and timers never race.
//!
//! The task is a small state machine: [`Conn::run`] waits for the next [`Event`]
//! (a kick, a delivery, a client frame, a heartbeat tick, the token's expiry), handles
//! it while still watching for a kick, and every handler answers with a [`Flow`]: go
//! on, stop because the socket is gone, or end the connection for a [`Disconnect`]
//! reason. The loop is generic over the socket ([`Socket`]), so the unit tests in
//! `tests.rs` drive it with channels and paused time.
//!
//! - `auth`: the first-frame login, re-authentication and the token's expiry.
//! - `outbound`: writing deliveries (plain or batched), the shutdown drain, closing.
//! - `request`: client frames: limits, subscribe with recovery, broadcast.

mod auth;
mod outbound;
mod request;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::ws::Message;
use futures_util::{Sink, Stream, StreamExt};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::mpsc;
use tokio::time::Instant;

use herald_proto::claims::Claims;
use herald_proto::client::Id;
use herald_proto::disconnect::Disconnect;
use herald_proto::presence::EventKind;

use crate::hub::{ConnCommand, ConnShared, Delivery};
use crate::limits::IpSlot;
use crate::presence;
use crate::proxy::Forwarded;
use crate::state::State;

/// What a connection task reads and writes: a WebSocket, or in tests two channels.
pub(crate) trait Socket:
    Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin + Send
{
}

impl<T> Socket for T where
    T: Stream<Item = Result<Message, axum::Error>>
        + Sink<Message, Error = axum::Error>
        + Unpin
        + Send
{
}

/// A token accepted at the handshake (header or query).
#[derive(Debug)]
pub(crate) struct Preauth {
    pub(crate) claims: Claims,
    pub(crate) channels: Vec<String>,
    pub(crate) batch: bool,
}

/// Serves one upgraded socket until it closes.
// At `debug`: an enabled span keeps its formatted fields for the connection's life
// (+0.7 KiB per idle connection at `info`, measured), so by default it costs nothing
// and the few `info`/`warn` lines of a connection name it themselves.
#[tracing::instrument(
    name = "conn",
    level = "debug",
    skip_all,
    fields(conn_id = tracing::field::Empty, user = tracing::field::Empty, %ip)
)]
pub(crate) async fn serve<S: Socket>(
    mut socket: S,
    state: Arc<State>,
    ip: IpAddr,
    pre: Option<Preauth>,
    slot: IpSlot,
    forwarded: Option<Arc<Forwarded>>,
) {
    // The span carries the connection's id from the first byte, and its user once
    // known, so every log line of the connection says which one it is.
    // Kept as a number (and formatted once, by `Conn::open`) and the span not held in a
    // local: both would otherwise sit in every idle connection's task.
    let id = rand::random::<u64>();
    tracing::Span::current().record("conn_id", tracing::field::display(ConnId(id)));
    let (pre, auth_id) = match pre {
        Some(p) => (p, None),
        // Boxed (here and for the other rare, deep requests) so their state is
        // allocated only while they run instead of enlarging every idle connection's task.
        None => match Box::pin(auth::first_frame(
            &mut socket,
            &state,
            ip,
            &ConnId(id).to_string(),
            forwarded.as_deref(),
        ))
        .await
        {
            Ok(v) => v,
            Err(refusal) => {
                // Never served: the slot is given back before the client hears of it.
                slot.release(&state.engine).await;
                if let Some(why) = refusal {
                    // The backend's refusals (connect hook) say why in a frame too.
                    if let Some(frame) = why.frame() {
                        outbound::send_final(&mut socket, frame).await;
                    }
                    outbound::close(&mut socket, &why).await;
                }
                return;
            }
        },
    };
    tracing::Span::current().record(
        "user",
        tracing::field::display(pre.claims.user().unwrap_or_default()),
    );
    let channels = pre.channels.clone();
    let mut conn = Conn::open(ConnId(id).to_string(), socket, state.clone(), ip, pre);
    conn.forwarded = forwarded;
    tracing::debug!("connected");
    conn.run(channels, auth_id).await;
    conn.leave();
    drop(slot);
}

/// A connection's id as clients and the monitor see it: 16 hex digits.
struct ConnId(u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Whether the connection loop goes on.
#[must_use]
enum Flow {
    Continue,
    /// The socket failed or the client closed it: nothing more to send.
    Gone,
    /// End the connection for this reason (its `disconnect` frame, then its close).
    End(Disconnect),
}

/// What woke the connection up.
enum Event {
    Kicked,
    Delivery(Option<Arc<Delivery>>),
    Frame(Option<Result<Message, axum::Error>>),
    Heartbeat,
    Expired,
}

struct Conn<S> {
    socket: S,
    state: Arc<State>,
    shared: Arc<ConnShared>,
    key: u64,
    rx: mpsc::UnboundedReceiver<Arc<Delivery>>,
    claims: Claims,
    channels: HashSet<String>,
    /// A channel whose subscription is in progress (added to the hub, not yet to
    /// `channels`), so that a connection ending mid-subscribe still leaves it.
    joining: Option<String>,
    /// Backend commands taken off the queue, to run after the current write.
    commands: Vec<ConnCommand>,
    /// The handshake headers the hooks get (only when a hook is on).
    forwarded: Option<Arc<Forwarded>>,
    /// This connection's presence record in channels whose subscribe hook gave it
    /// an `info` of its own.
    #[allow(
        clippy::box_collection,
        reason = "8 bytes in every connection instead of an empty map's 48: few have one"
    )]
    channel_members: Option<Box<HashMap<String, Arc<str>>>>,
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

impl<S: Socket> Conn<S> {
    /// Registers an authenticated connection with the hub.
    fn open(conn_id: String, socket: S, state: Arc<State>, ip: IpAddr, pre: Preauth) -> Self {
        let key = state.next_key.fetch_add(1, Ordering::Relaxed);
        // Unbounded as a channel, bounded by the hub's frame/byte count (see `ConnShared`).
        let (tx, rx) = mpsc::unbounded_channel();
        let cancel = state.shutdown.child_token();
        let user = pre.claims.user().unwrap_or_default().to_owned();
        let shared = Arc::new(ConnShared::new(
            conn_id,
            user,
            ip,
            pre.claims.jti.clone(),
            pre.claims.info.clone(),
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
        Self {
            expiry: auth::expiry_instant(&pre.claims, state.leeway),
            socket,
            shared,
            key,
            rx,
            claims: pre.claims,
            channels: HashSet::new(),
            joining: None,
            commands: Vec::new(),
            forwarded: None,
            channel_members: None,
            floors: HashMap::new(),
            limiter: RateLimiter::direct_with_clock(quota, state.clock.clone()),
            refused: 0,
            refused_since: Instant::now(),
            too_large: Vec::new(),
            last_seen: Instant::now(),
            last_report: None,
            batch: pre.batch,
            pending_out: 0,
            batch_now_ms: 0,
            latency: state.metrics.delivery_latency.local(),
            state,
        }
    }

    /// Takes the connection out of the hub, channel presence and the monitor's view.
    fn leave(mut self) {
        let joining = self.joining.take();
        for c in &self.channels {
            let member = self.member_in(c);
            self.state
                .member_change(&self.shared, c, member, EventKind::Leave);
        }
        for c in std::mem::take(&mut self.channels)
            .into_iter()
            .chain(joining)
        {
            self.state.hub.unsubscribe(&c, self.key);
        }
        self.state.hub.remove_conn(self.key);
        let _ = self
            .state
            .presence
            .send(presence::Event::Closed(self.shared.conn_id.clone()));
        tracing::debug!("disconnected");
    }

    async fn run(&mut self, initial: Vec<String>, auth_id: Option<Id>) {
        if !matches!(self.hello(initial, auth_id).await, Flow::Continue) {
            return;
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
            let event = tokio::select! {
                biased;
                () = &mut cancelled => Event::Kicked,
                d = self.rx.recv() => Event::Delivery(d),
                m = self.socket.next() => Event::Frame(m),
                _ = heartbeat.tick() => Event::Heartbeat,
                () = &mut expiry => Event::Expired,
            };
            let mut flow = match event {
                Event::Kicked => Flow::End(self.kick_reason()),
                // Writes are not interrupted: a frame cut off mid-write would leave the
                // socket unusable for the `disconnect` that tells a slow consumer why. A
                // kick during the batch window cuts the window short (`write_batch`).
                Event::Delivery(Some(d)) => self.write_deliveries(d).await,
                // Requests may wait on Redis (a subscribe's confirmation, a publish):
                // a kick must still end the connection at once. Boxed: a request's state
                // is several hundred bytes, held only while it runs instead of in every
                // idle connection's task.
                event => tokio::select! {
                    biased;
                    () = &mut cancelled => Flow::End(self.kick_reason()),
                    flow = Box::pin(self.handle(event)) => flow,
                },
            };
            if matches!(flow, Flow::Continue) && !self.commands.is_empty() {
                flow = tokio::select! {
                    biased;
                    () = &mut cancelled => Flow::End(self.kick_reason()),
                    flow = Box::pin(self.run_commands()) => flow,
                };
            }
            match flow {
                Flow::Continue => {}
                Flow::Gone => return,
                Flow::End(why) => {
                    if why == Disconnect::Shutdown {
                        self.drain().await;
                    }
                    self.end(&why).await;
                    return;
                }
            }
        }
    }

    /// Why the connection was kicked; a bare cancellation is the gateway stopping.
    fn kick_reason(&self) -> Disconnect {
        self.shared
            .kicked()
            .cloned()
            .unwrap_or(Disconnect::Shutdown)
    }

    async fn handle(&mut self, event: Event) -> Flow {
        match event {
            Event::Delivery(Some(d)) => self.write_deliveries(d).await,
            Event::Frame(Some(Ok(m))) => self.on_frame(m).await,
            Event::Heartbeat => self.on_heartbeat().await,
            Event::Expired => self.on_expired().await,
            Event::Delivery(None) | Event::Frame(_) | Event::Kicked => Flow::Gone,
        }
    }

    /// Sends a heartbeat, or ends a connection that said nothing for two intervals.
    async fn on_heartbeat(&mut self) -> Flow {
        if self.last_seen.elapsed() > self.state.settings.heartbeat * 2 {
            return Flow::End(Disconnect::HeartbeatTimeout);
        }
        let ping = self.feed(Message::Ping(bytes::Bytes::new())).await;
        match ping {
            Flow::Continue => {
                self.send_text(herald_proto::server::ServerMsg::heartbeat().to_json())
                    .await
            }
            other => other,
        }
    }

    /// This connection's presence record in `channel`.
    fn member_in(&self, channel: &str) -> Arc<str> {
        self.channel_members
            .as_ref()
            .and_then(|m| m.get(channel).cloned())
            .unwrap_or_else(|| self.shared.member())
    }

    /// Lists the connection for the monitor (and, with its channels, for presence).
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
