//! A Rust client for Herald's WebSocket gateways.
//!
//! One [`Client`] holds one connection at a time to one of several gateways. It
//! reconnects by itself (exponential backoff with full jitter, moving on to the next
//! gateway), renews every subscription on the new connection from the last position
//! it delivered, and so hands each [`Subscription`] every message of its channel
//! exactly once and in offset order, or says with an [`Event::Gap`] what was lost for
//! good. With a fetching [`TokenSource`] it replaces the token on the live connection
//! before it expires. [`Client::publish`] waits for the gateway's acknowledgement.
//! [`Client::history`] reads a channel's kept messages without subscribing, as the
//! same [`Message`]s a subscription delivers. [`Client::presence`] and
//! [`Client::presence_stats`] tell who is in a channel, on every gateway; a
//! subscription made with [`SubscribeOptions::join_leave`] also yields an
//! [`Event::Join`] or [`Event::Leave`] as other connections come and go.
//! [`Client::server_subscriptions`] yields the channels the server subscribed the
//! connection to by itself (the application's backend, or the user's personal
//! channel at login) and their messages, with the same exactly-once delivery.
//!
//! ```no_run
//! use futures_util::StreamExt as _;
//! use herald_client::{
//!     Client, Event, HistoryQuery, Options, ServerEvent, SubscribeOptions, TokenSource,
//! };
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::connect(
//!     ["ws://127.0.0.1:8765/ws", "ws://127.0.0.1:8766/ws"],
//!     TokenSource::fixed("eyJ…"),
//!     Options::default(),
//! );
//! let mut news = client.subscribe("news", None);
//! let ack = client
//!     .publish("chat:lobby", &serde_json::json!({"text": "hi"}))
//!     .await?;
//! println!("published at {}", ack.offset);
//! // The ten latest messages of chat:lobby, newest first.
//! let latest = client
//!     .history(
//!         "chat:lobby",
//!         HistoryQuery {
//!             limit: Some(10),
//!             reverse: true,
//!             ..HistoryQuery::default()
//!         },
//!     )
//!     .await?;
//! for m in &latest.publications {
//!     println!("#{}: {}", m.offset, m.data);
//! }
//! // Who is in the lobby now, and who comes and goes from here on.
//! let mut lobby = client.subscribe_with(
//!     "chat:lobby",
//!     SubscribeOptions {
//!         join_leave: true,
//!         ..SubscribeOptions::default()
//!     },
//! );
//! for member in client.presence("chat:lobby").await?.members {
//!     println!("{} is here ({:?})", member.user_id, member.info);
//! }
//! tokio::spawn(async move {
//!     while let Some(event) = lobby.next().await {
//!         match event {
//!             Event::Join(member) => println!("{} came", member.user_id),
//!             Event::Leave(member) => println!("{} left", member.user_id),
//!             _ => {}
//!         }
//!     }
//! });
//! // What the server subscribed this connection to: the backend's channels, the
//! // personal channel `user:<user_id>`.
//! let mut server = client.server_subscriptions().expect("taken once");
//! tokio::spawn(async move {
//!     while let Some(event) = server.next().await {
//!         match event {
//!             ServerEvent::Subscribed(s) => println!("now on {}", s.channel),
//!             ServerEvent::Message(m) => println!("{} #{}: {}", m.channel, m.offset, m.data),
//!             ServerEvent::Unsubscribed { channel } => println!("off {channel}"),
//!             _ => {}
//!         }
//!     }
//! });
//! while let Some(event) = news.next().await {
//!     match event {
//!         Event::Message(m) => println!("{} #{}: {}", m.channel, m.offset, m.data),
//!         Event::Gap(gap) => println!("lost {} to {}", gap.from, gap.to),
//!         // Subscribed, refused, ended by the backend; joins and leaves when asked.
//!         _ => {}
//!     }
//! }
//! client.close().await;
//! # Ok(())
//! # }
//! ```
//!
//! The token only ever travels in the first frame (never in the URL), and the client
//! sends no periodic pings: every client frame counts toward the gateway's rate limit,
//! and the gateway's heartbeats tell a dead socket well enough.
//!
//! # Layout
//! - [`Client`], [`Subscription`]: the handles (this file).
//! - `driver`: the one task per client that owns the socket and runs the lifecycle.
//! - [`tracker`]: the pure per-subscription state machine behind exactly-once delivery.
//! - [`backoff`]: reconnect delays.
//! - [`token`]: [`TokenSource`] and when a token is due for refresh.
//! - `queue`: the bounded queue between the driver and one subscription.
//! - [`Options`], [`SubscribeOptions`], and what the client reports ([`Event`],
//!   [`ConnState`], …).
//! - [`HistoryQuery`], [`History`], [`HistoryError`]: reading a channel's history.
//! - [`Presence`], [`PresenceStats`], [`PresenceError`], [`Member`]: who is in a
//!   channel; `arrivals` keeps join/leave events in their place among the messages
//!   a subscription holds before its first `subscribed`.
//! - [`ServerSubscriptions`], [`ServerEvent`]: the subscriptions the server made.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use serde::Serialize;
use tokio::sync::{Notify, Semaphore, broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

mod arrivals;
pub mod backoff;
mod driver;
mod event;
mod history;
mod options;
mod presence;
mod queue;
#[cfg(test)]
mod tests;
pub mod token;
pub mod tracker;

pub use event::{
    Ack, ClientError, ConnState, Event, Gap, Job, Message, MessageKind, PublishError, ServerEvent,
    ServerSubscribed, SubscribeError, Subscribed,
};
pub use herald_proto::ErrorCode;
pub use herald_proto::disconnect::DisconnectCode;
pub use herald_proto::frames::{JobStatus, Position};
pub use history::{History, HistoryError, HistoryQuery};
pub use options::{Options, SubscribeOptions};
pub use presence::{Member, Presence, PresenceError, PresenceStats};
pub use token::TokenSource;
pub use tracker::GapReason;

use driver::{Ask, Command, Driver, Reply, Wiring};
use queue::EventQueue;

/// Client-level errors kept for [`Client::errors`] receivers that lag behind; older
/// ones are dropped for them.
const ERROR_BACKLOG: usize = 64;

/// Numbers the clients of this process, for their tracing span.
static NEXT_CLIENT: AtomicU64 = AtomicU64::new(0);

/// A connection to a Herald cluster. Cheap to clone: clones share the connection.
///
/// The connection is served by one background task, which stops when
/// [`Client::close`] is called or when the last clone (and the last
/// [`Subscription`], and the [`ServerSubscriptions`]) is dropped.
#[derive(Debug, Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    commands: mpsc::UnboundedSender<Command>,
    states: watch::Receiver<ConnState>,
    errors: broadcast::Sender<ClientError>,
    /// One permit per publish not yet settled (in the command channel, waiting for a
    /// connection, or for its acknowledgement), so the bound holds before the driver
    /// even sees the publish.
    publish_slots: Arc<Semaphore>,
    /// The same for history reads, bounded apart so that reads never crowd out
    /// publishes.
    history_slots: Arc<Semaphore>,
    /// The same for presence reads (`presence` and `presence_stats` together).
    presence_slots: Arc<Semaphore>,
    publish_timeout: std::time::Duration,
    subscription_buffer: usize,
    room: Arc<Notify>,
    /// The events of every server-side subscription, kept from the start until
    /// [`Client::server_subscriptions`] takes them.
    server_events: Arc<EventQueue<ServerEvent>>,
    /// Set by the first [`Client::server_subscriptions`].
    server_events_taken: AtomicBool,
    cancel: CancellationToken,
    /// The driver task; taken and awaited by the first [`Client::close`]. A tokio
    /// lock, because later closers wait on it across that await for the task to end.
    driver: tokio::sync::Mutex<Option<JoinHandle<()>>>,
    next_sub: AtomicU64,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The last handle is gone: nobody can read or publish any more.
        self.cancel.cancel();
    }
}

impl Client {
    /// Starts connecting to the gateways at `urls` (`ws://host:port/ws`), tried in
    /// turn, with tokens from `token`. Returns at once; watch [`Client::states`] to
    /// know when it is connected. Subscriptions, publishes, history and presence
    /// reads can be made right away.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn connect<U>(urls: U, token: TokenSource, options: Options) -> Self
    where
        U: IntoIterator,
        U::Item: Into<String>,
    {
        let urls: Vec<String> = urls.into_iter().map(Into::into).collect();
        let (commands_tx, commands) = mpsc::unbounded_channel();
        let (states_tx, states) = watch::channel(ConnState::Connecting);
        let (errors, _) = broadcast::channel(ERROR_BACKLOG);
        let cancel = CancellationToken::new();
        let room = Arc::new(Notify::new());
        let slots = options.publish_queue;
        let publish_timeout = options.publish_timeout;
        let subscription_buffer = options.subscription_buffer;
        let server_events = Arc::new(EventQueue::new(subscription_buffer, room.clone()));
        let driver = Driver::new(
            urls,
            token,
            options,
            Wiring {
                commands,
                states: states_tx,
                errors: errors.clone(),
                cancel: cancel.clone(),
                room: room.clone(),
                server_events: server_events.clone(),
            },
        );
        // Every log line of this client's task says which client and which gateway.
        let span = tracing::info_span!(
            "herald_client",
            client = NEXT_CLIENT.fetch_add(1, Ordering::Relaxed),
            url = tracing::field::Empty,
        );
        let task = tokio::spawn(driver.run().instrument(span));
        Self {
            shared: Arc::new(Shared {
                commands: commands_tx,
                states,
                errors,
                publish_slots: Arc::new(Semaphore::new(slots)),
                history_slots: Arc::new(Semaphore::new(slots)),
                presence_slots: Arc::new(Semaphore::new(slots)),
                publish_timeout,
                subscription_buffer,
                room,
                server_events,
                server_events_taken: AtomicBool::new(false),
                cancel,
                driver: tokio::sync::Mutex::new(Some(task)),
                next_sub: AtomicU64::new(0),
            }),
        }
    }

    /// The connection state, now and as it changes.
    pub fn states(&self) -> watch::Receiver<ConnState> {
        self.shared.states.clone()
    }

    /// The connection state now.
    pub fn state(&self) -> ConnState {
        self.shared.states.borrow().clone()
    }

    /// Problems outside any one subscription or publish: a failing token source, a
    /// fresh token refused, an `error` frame answering no request. Only errors after
    /// this call are received.
    pub fn errors(&self) -> broadcast::Receiver<ClientError> {
        self.shared.errors.subscribe()
    }

    /// Subscribes to `channel`: from its next message, or with `since`, from the
    /// message after that position (what was missed meanwhile is replayed if the
    /// gateway's history still holds it, otherwise an [`Event::Gap`] says so).
    ///
    /// Several subscriptions to one channel each get every message. For join/leave
    /// events too, see [`Client::subscribe_with`].
    ///
    /// A channel the server subscribed the connection to by itself (see
    /// [`Client::server_subscriptions`]) is taken over: its messages come to this
    /// subscription from then on, after the last one the server-side stream had
    /// (unless `since` says otherwise), and that stream says nothing more about it.
    /// No permission is needed while the connection holds the channel; but the
    /// subscription is the application's own from then on, renewed on every later
    /// connection, where the token must allow the channel (the personal channel
    /// always is) or it ends with a `forbidden` [`Event::Error`].
    pub fn subscribe(&self, channel: impl Into<String>, since: Option<Position>) -> Subscription {
        self.subscribe_with(
            channel,
            SubscribeOptions {
                since,
                ..SubscribeOptions::default()
            },
        )
    }

    /// Subscribes to `channel` as `options` say: [`Client::subscribe`], and with
    /// [`SubscribeOptions::join_leave`] an [`Event::Join`] or [`Event::Leave`] each
    /// time another connection comes to or leaves the channel.
    ///
    /// Several subscriptions to one channel each get every message, and each that
    /// asked gets every join and leave.
    pub fn subscribe_with(
        &self,
        channel: impl Into<String>,
        options: SubscribeOptions,
    ) -> Subscription {
        let channel = channel.into();
        let sub = self.shared.next_sub.fetch_add(1, Ordering::Relaxed);
        let queue = Arc::new(EventQueue::new(
            self.shared.subscription_buffer,
            self.shared.room.clone(),
        ));
        let cmd = Command::Subscribe {
            sub,
            channel: channel.clone(),
            since: options.since,
            join_leave: options.join_leave,
            queue: queue.clone(),
        };
        if self.shared.commands.send(cmd).is_err() {
            // The client has stopped: the stream ends at once.
            queue.close();
        }
        Subscription {
            client: self.clone(),
            sub,
            channel,
            queue,
            active: true,
        }
    }

    /// The channels the server subscribed this connection to by itself, and their
    /// messages: the application's backend (broadcaster `/v1/subscribe`,
    /// `/v1/unsubscribe`) and, with a gateway set to `HERALD_USER_CHANNEL=1`, the
    /// user's personal channel `user:<user_id>` at every login. Each channel's
    /// messages come exactly once and in order, as a [`Subscription`]'s do; a channel
    /// the application subscribed to itself is left to that subscription.
    ///
    /// One stream per client: `None` after the first call (on this handle or a clone).
    /// Events are kept from [`Client::connect`] on until it is taken, so nothing
    /// that arrived before is missed. Like a subscription, it holds at most
    /// [`Options::subscription_buffer`] messages not read, then pauses and recovers
    /// the rest from the gateway's history once read down to half. Dropping it
    /// discards the events from then on.
    ///
    /// A server-side subscription lasts as long as its connection. After a
    /// reconnect the client keeps each one's position but does not subscribe again by
    /// itself: when the server subscribes the new connection to the channel again
    /// (the personal channel is, at every login), what was published meanwhile is
    /// recovered from history and delivered next, exactly once (or a
    /// [`ServerEvent::Gap`] says it could not be). The others stay silent: a backend
    /// that wants them kept subscribes the user again, or sends to the personal
    /// channel.
    pub fn server_subscriptions(&self) -> Option<ServerSubscriptions> {
        if self.shared.server_events_taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        Some(ServerSubscriptions {
            _client: self.clone(),
            queue: self.shared.server_events.clone(),
        })
    }

    /// Publishes `message` (anything that serializes to JSON) to `channel` and waits
    /// for the gateway's acknowledgement. While disconnected, the publish waits in a
    /// bounded queue for the next connection; one sent on a connection that then
    /// drops fails with [`PublishError::Disconnected`] and is not sent again (it may
    /// have been published).
    pub async fn publish<T>(&self, channel: &str, message: &T) -> Result<Ack, PublishError>
    where
        T: Serialize + ?Sized,
    {
        let message = serde_json::value::to_raw_value(message)
            .map_err(|e| PublishError::Encode(e.to_string()))?;
        let (reply, answer) = oneshot::channel();
        let ask = Ask::Publish {
            channel: channel.to_owned(),
            message,
        };
        let slots = &self.shared.publish_slots;
        self.request(slots, ask, Reply::Publish(reply))
            .map_err(|e| match e {
                Unsent::QueueFull => PublishError::QueueFull,
                Unsent::Closed => PublishError::Closed,
            })?;
        answer.await.unwrap_or(Err(PublishError::Closed))
    }

    /// Reads `channel`'s kept messages without subscribing (see [`HistoryQuery`] for
    /// what to ask); the token must allow subscribing to the channel. The messages
    /// are the same [`Message`]s a [`Subscription`] delivers.
    ///
    /// While disconnected it waits like a publish: queued for the next connection
    /// (at most [`Options::publish_queue`] history reads not yet answered, counted
    /// apart from publishes; one more fails with [`HistoryError::QueueFull`] at
    /// once), answered within [`Options::publish_timeout`] of the call or failing
    /// with [`HistoryError::Timeout`]. One sent on a connection that then drops fails
    /// with [`HistoryError::Disconnected`] and is not sent again; reading changes
    /// nothing, so calling again is safe. The gateway's refusals (`forbidden`,
    /// `unavailable`, `bad_request`, …) are [`HistoryError::Refused`] with their
    /// [`ErrorCode`].
    pub async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
    ) -> Result<History, HistoryError> {
        let (reply, answer) = oneshot::channel();
        let ask = Ask::History {
            channel: channel.to_owned(),
            query,
        };
        let slots = &self.shared.history_slots;
        self.request(slots, ask, Reply::History(reply))
            .map_err(|e| match e {
                Unsent::QueueFull => HistoryError::QueueFull,
                Unsent::Closed => HistoryError::Closed,
            })?;
        answer.await.unwrap_or(Err(HistoryError::Closed))
    }

    /// Lists `channel`'s members: every connection subscribed to it, on every
    /// gateway, each with the `info` claim of its token (at most the gateway's limit,
    /// [`Presence::truncated`] when there were more). The token's `presence` claim,
    /// or without one its `channels`, must cover the channel; subscribing is not
    /// needed.
    ///
    /// While disconnected it waits like a history read: queued for the next
    /// connection (at most [`Options::publish_queue`] presence reads not yet
    /// answered, this and [`Client::presence_stats`] together, counted apart from
    /// publishes and history reads; one more fails with
    /// [`PresenceError::QueueFull`] at once), answered within
    /// [`Options::publish_timeout`] of the call or failing with
    /// [`PresenceError::Timeout`]. One sent on a connection that then drops fails
    /// with [`PresenceError::Disconnected`] and is not sent again; calling again is
    /// safe. The gateway's refusals (`forbidden`, `unavailable`, `bad_request`, …)
    /// are [`PresenceError::Refused`] with their [`ErrorCode`].
    pub async fn presence(&self, channel: &str) -> Result<Presence, PresenceError> {
        let (reply, answer) = oneshot::channel();
        let ask = Ask::Presence {
            channel: channel.to_owned(),
        };
        self.presence_request(ask, Reply::Presence(reply))?;
        answer.await.unwrap_or(Err(PresenceError::Closed))
    }

    /// Counts `channel`'s members: connections and distinct users, on every gateway,
    /// without listing them. Allowed, queued and failing as [`Client::presence`].
    pub async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, PresenceError> {
        let (reply, answer) = oneshot::channel();
        let ask = Ask::PresenceStats {
            channel: channel.to_owned(),
        };
        self.presence_request(ask, Reply::PresenceStats(reply))?;
        answer.await.unwrap_or(Err(PresenceError::Closed))
    }

    fn presence_request(&self, ask: Ask, reply: Reply) -> Result<(), PresenceError> {
        let slots = &self.shared.presence_slots;
        self.request(slots, ask, reply).map_err(|e| match e {
            Unsent::QueueFull => PresenceError::QueueFull,
            Unsent::Closed => PresenceError::Closed,
        })
    }

    /// Hands a request to the driver, within the bound `slots` keeps on requests of
    /// its kind not yet settled.
    fn request(&self, slots: &Arc<Semaphore>, ask: Ask, reply: Reply) -> Result<(), Unsent> {
        let permit = slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| Unsent::QueueFull)?;
        let cmd = Command::Request {
            ask,
            deadline: tokio::time::Instant::now() + self.shared.publish_timeout,
            reply,
            permit,
        };
        self.shared.commands.send(cmd).map_err(|_| Unsent::Closed)
    }

    /// Closes the connection and stops the client: pending publishes, history and
    /// presence reads fail with [`PublishError::Closed`] / [`HistoryError::Closed`] /
    /// [`PresenceError::Closed`], subscription streams and the server-side stream
    /// end. Returns once the background task has finished.
    pub async fn close(&self) {
        self.shared.cancel.cancel();
        let mut slot = self.shared.driver.lock().await;
        if let Some(task) = slot.take()
            && let Err(e) = task.await
        {
            tracing::warn!(cause = %e, "herald client task failed");
        }
    }
}

/// Why a request never reached the driver.
enum Unsent {
    QueueFull,
    Closed,
}

/// The events of one channel; a [`futures_util::Stream`] of [`Event`]s, read with
/// `StreamExt::next`. The stream ends when the client stops.
///
/// Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    client: Client,
    sub: u64,
    channel: String,
    queue: Arc<EventQueue>,
    /// Cleared once unsubscribed, so dropping does not unsubscribe twice.
    active: bool,
}

impl Subscription {
    /// The channel subscribed to.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Unsubscribes; returns once the client has stopped delivering to it (and sent
    /// `unsubscribe` if no other subscription wants the channel).
    pub async fn unsubscribe(mut self) {
        self.active = false;
        let (done, finished) = oneshot::channel();
        let cmd = Command::Unsubscribe {
            sub: self.sub,
            done: Some(done),
        };
        if self.client.shared.commands.send(cmd).is_ok() {
            let _ = finished.await;
        }
    }
}

impl futures_util::Stream for Subscription {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.queue.poll_next(cx)
    }
}

/// The events of the subscriptions the server made (see
/// [`Client::server_subscriptions`]); a [`futures_util::Stream`] of [`ServerEvent`]s,
/// read with `StreamExt::next`. The stream ends when the client stops.
#[derive(Debug)]
pub struct ServerSubscriptions {
    /// Keeps the client running while the stream is read, as a [`Subscription`] does.
    _client: Client,
    queue: Arc<EventQueue<ServerEvent>>,
}

impl futures_util::Stream for ServerSubscriptions {
    type Item = ServerEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ServerEvent>> {
        self.queue.poll_next(cx)
    }
}

impl Drop for ServerSubscriptions {
    fn drop(&mut self) {
        // Nobody can read them any more: the driver's pushes are discarded.
        self.queue.close();
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.active {
            let _ = self.client.shared.commands.send(Command::Unsubscribe {
                sub: self.sub,
                done: None,
            });
        }
    }
}
