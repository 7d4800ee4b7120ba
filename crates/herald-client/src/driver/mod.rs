//! The one task behind a [`Client`](crate::Client): it owns the socket, every
//! subscription's [`Tracker`] (the server-side subscriptions' too), the requests
//! waiting for their reply (publishes, history and presence reads) and the token,
//! and runs the connection lifecycle.
//!
//! The lifecycle is a loop: wait out the backoff, get a token, open a WebSocket and
//! authenticate, serve the connection until it ends, then decide from how it ended
//! (see [`Driver::next_step`]) whether to stop or which delay comes before the next
//! gateway. In every phase the driver keeps answering the application's commands, so
//! a publish or a read made while disconnected is queued (or refused at once when
//! the queue is full), and timeouts fire on time.
//!
//! # Layout
//! - this file: the driver's state and the tunables.
//! - `lifecycle`: the reconnect loop, one session, commands, a lost connection.
//! - `connect`: token, WebSocket upgrade, `auth` and `auth_success`.
//! - `ending`: how a connection ended and what follows it ([`Driver::next_step`]).
//! - `socket`: server frames to their handlers; writes with a timeout.
//! - `subscriptions`: subscribe with `since` (and `join_leave`), deliveries and
//!   join/leave events, recovery, refusals.
//! - `server`: the subscriptions the server made (`subscribed` / `unsubscribed` with
//!   `server`): kept with their position across reconnects, recovered when the
//!   server subscribes again, taken over by the application's own subscriptions.
//! - `publish`: requests answered by one reply (publishes, history and presence
//!   reads): queued, sent and settled.
//! - `timers`: the dead-socket check, deadlines, retries and the token refresh.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use herald_proto::ErrorCode;
use herald_proto::disconnect::DisconnectCode;
use herald_proto::frames::{ClientFrame, Position};
use serde_json::value::RawValue;
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use crate::arrivals::Arrivals;
use crate::event::{Ack, ClientError, ConnState, Message, PublishError, ServerEvent};
use crate::history::{History, HistoryError, HistoryQuery};
use crate::options::Options;
use crate::presence::{Presence, PresenceError, PresenceStats};
use crate::queue::EventQueue;
use crate::token::{Token, TokenSource};
use crate::tracker::Tracker;

mod connect;
mod ending;
mod lifecycle;
mod publish;
mod server;
mod socket;
mod subscriptions;
mod timers;

/// How long one frame may take to write before the connection counts as dead.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Slack on top of two heartbeat intervals before a silent connection counts as
/// dead: the gateway's own limit is two intervals, so this client never gives up
/// first on a merely slow heartbeat.
const DEAD_SOCKET_SLACK: Duration = Duration::from_secs(1);
/// Attempts at a fresh token on the live connection (the source failed, or the
/// gateway refused the token) before waiting for the gateway to end the connection
/// (`token_expired`) and reconnecting with a fresh token then. They are spaced 1, 2,
/// 4, 8 s apart.
const REFRESH_ATTEMPTS: u32 = 5;
const REFRESH_RETRY: Duration = Duration::from_secs(1);
/// The least pause before retrying a gateway that refused the upgrade as full or
/// rate limited without saying how long.
const REFUSED_RETRY: Duration = Duration::from_secs(1);
/// How long a closing client waits for its close frame to be written.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// The heartbeat interval assumed when `auth_success` does not give one (the
/// gateway's default).
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(25);
/// A wake-up far enough away to mean "no timer".
const IDLE: Duration = Duration::from_secs(24 * 3600);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the application asks of the driver.
pub(crate) enum Command {
    Subscribe {
        sub: u64,
        channel: String,
        since: Option<Position>,
        join_leave: bool,
        queue: Arc<EventQueue>,
    },
    Unsubscribe {
        sub: u64,
        done: Option<oneshot::Sender<()>>,
    },
    /// A publish, a history read or a presence read: queued while disconnected,
    /// answered by one reply frame.
    Request {
        ask: Ask,
        deadline: Instant,
        reply: Reply,
        /// Held until the request is settled: bounds the requests of its kind in the
        /// command channel and inside the driver together.
        permit: OwnedSemaphorePermit,
    },
}

/// What a [`Command::Request`] asks of the gateway.
pub(crate) enum Ask {
    Publish {
        channel: String,
        message: Box<RawValue>,
    },
    History {
        channel: String,
        query: HistoryQuery,
    },
    Presence {
        channel: String,
    },
    PresenceStats {
        channel: String,
    },
}

impl Ask {
    /// The request's frame, carrying `id`.
    fn frame(self, id: u64) -> String {
        match self {
            Self::Publish { channel, message } => ClientFrame::Broadcast {
                channel,
                message,
                id: Some(id),
            },
            Self::History { channel, query } => ClientFrame::History {
                channel,
                since: query.since,
                limit: query.limit,
                reverse: query.reverse,
                id: Some(id),
            },
            Self::Presence { channel } => ClientFrame::Presence {
                channel,
                id: Some(id),
            },
            Self::PresenceStats { channel } => ClientFrame::PresenceStats {
                channel,
                id: Some(id),
            },
        }
        .to_json()
    }
}

/// Where a request's outcome goes, typed for the call that made it.
pub(crate) enum Reply {
    Publish(oneshot::Sender<Result<Ack, PublishError>>),
    History(oneshot::Sender<Result<History, HistoryError>>),
    Presence(oneshot::Sender<Result<Presence, PresenceError>>),
    PresenceStats(oneshot::Sender<Result<PresenceStats, PresenceError>>),
}

/// A reply frame that settles a request.
enum Answer {
    Ack(Ack),
    History(History),
    Presence(Presence),
    PresenceStats(PresenceStats),
}

impl Answer {
    fn kind(&self) -> &'static str {
        match self {
            Self::Ack(_) => "ack",
            Self::History(_) => "history",
            Self::Presence(_) => "presence",
            Self::PresenceStats(_) => "presence_stats",
        }
    }
}

/// How a request failed, whichever kind it was.
enum Failure {
    Refused { code: ErrorCode, message: String },
    Timeout,
    Disconnected,
    Closed,
}

// A send fails only when the caller stopped waiting: nothing is left to tell it.
impl Reply {
    fn answer(self, answer: Answer) {
        match (self, answer) {
            (Self::Publish(tx), Answer::Ack(ack)) => {
                let _ = tx.send(Ok(ack));
            }
            (Self::History(tx), Answer::History(history)) => {
                let _ = tx.send(Ok(history));
            }
            (Self::Presence(tx), Answer::Presence(presence)) => {
                let _ = tx.send(Ok(presence));
            }
            (Self::PresenceStats(tx), Answer::PresenceStats(stats)) => {
                let _ = tx.send(Ok(stats));
            }
            // Only a faulty gateway answers a request with another kind of reply;
            // waiting longer would not bring the right one.
            (reply, answer) => reply.fail(Failure::Refused {
                code: ErrorCode::Internal,
                message: format!("answered with an unexpected `{}` frame", answer.kind()),
            }),
        }
    }

    fn fail(self, failure: Failure) {
        match self {
            Self::Publish(tx) => {
                let _ = tx.send(Err(match failure {
                    Failure::Refused { code, message } => PublishError::Refused { code, message },
                    Failure::Timeout => PublishError::Timeout,
                    Failure::Disconnected => PublishError::Disconnected,
                    Failure::Closed => PublishError::Closed,
                }));
            }
            Self::History(tx) => {
                let _ = tx.send(Err(match failure {
                    Failure::Refused { code, message } => HistoryError::Refused { code, message },
                    Failure::Timeout => HistoryError::Timeout,
                    Failure::Disconnected => HistoryError::Disconnected,
                    Failure::Closed => HistoryError::Closed,
                }));
            }
            Self::Presence(tx) => {
                let _ = tx.send(Err(failure.into_presence()));
            }
            Self::PresenceStats(tx) => {
                let _ = tx.send(Err(failure.into_presence()));
            }
        }
    }
}

impl Failure {
    /// Both presence reads fail alike.
    fn into_presence(self) -> PresenceError {
        match self {
            Self::Refused { code, message } => PresenceError::Refused { code, message },
            Self::Timeout => PresenceError::Timeout,
            Self::Disconnected => PresenceError::Disconnected,
            Self::Closed => PresenceError::Closed,
        }
    }
}

/// How a connection (or an attempt at one) ended.
#[derive(Debug)]
enum End {
    /// [`Client::close`](crate::Client::close), or the last handle dropped.
    Cancelled,
    /// The upgrade was refused with this HTTP status.
    Refused {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// The gateway closed the connection without a `disconnect` frame first.
    Closed { code: u16, reason: String },
    /// The gateway said goodbye with a `disconnect` frame.
    Disconnect {
        code: DisconnectCode,
        reason: String,
        reconnect: bool,
        retry_after: Option<Duration>,
    },
    /// The token source failed.
    NoToken(String),
    /// Anything else: refused connections, resets, timeouts, a silent socket.
    Lost(String),
}

/// What a request on the current connection was.
#[derive(Debug)]
enum Request {
    Subscribe(u64),
    /// Renewing the server-side subscription of this channel (a recovery).
    ServerSubscribe(String),
    Unsubscribe(String),
    /// A fresh token sent on the live connection.
    Auth(Token),
}

/// One subscription.
struct Sub {
    channel: String,
    queue: Arc<EventQueue>,
    tracker: Tracker<Message>,
    /// Whether it asked for the channel's join/leave events.
    join_leave: bool,
    /// Join/leave events, and the messages among them, that arrived before the
    /// first `subscribed` (while the tracker holds the messages).
    arrivals: Arrivals,
    /// The `subscribe` in flight on this connection.
    request: Option<u64>,
    /// That `subscribe` carried `join_leave` for another subscription of the channel
    /// (see `Driver::send_subscribe_since`).
    lent_join_leave: bool,
    /// When to retry a subscribe refused for a temporary reason.
    retry_at: Option<Instant>,
    /// Temporary refusals in a row, for the retry's backoff.
    retries: u32,
}

/// One subscription the server made, for a channel the application has no
/// subscription of its own for. Kept across reconnects for its position, though the
/// server subscription itself ends with its connection.
struct ServerSub {
    tracker: Tracker<Message>,
    /// The renewal (`subscribe` with `since`) in flight on this connection.
    request: Option<u64>,
    /// When to retry a renewal refused for a temporary reason.
    retry_at: Option<Instant>,
    /// Temporary refusals in a row, for the retry's backoff.
    retries: u32,
}

/// One request (a publish, a history or presence read), from the call until it is
/// settled.
struct Pending {
    /// The request's frame, until it is sent.
    frame: Option<String>,
    deadline: Instant,
    reply: Reply,
    _permit: OwnedSemaphorePermit,
}

/// The live connection.
struct Conn {
    ws: Ws,
    requests: HashMap<u64, Request>,
    /// The socket counts as dead when nothing arrived by then.
    silent_after: Duration,
    last_frame: Instant,
    /// The token this connection was authenticated with (last).
    token: String,
    /// When to fetch a fresh token for this connection.
    refresh_at: Option<Instant>,
    refresh_failures: u32,
    /// A fresh token being fetched.
    fetching: Option<BoxFuture<'static, Result<Token, String>>>,
    /// Deliveries on channels the client holds nothing for yet.
    orphans: server::Orphans,
    /// `unsubscribe` frames sent and not yet answered, by channel: what the gateway
    /// sent on the channel before it read them is not a server-side replay.
    leaving: HashMap<String, usize>,
}

/// What `auth_success` told about a new connection.
struct Hello {
    node: String,
    conn_id: String,
    heartbeat: Duration,
}

/// The driver task's state.
pub(crate) struct Driver {
    urls: Vec<String>,
    source: TokenSource,
    opts: Options,
    commands: mpsc::UnboundedReceiver<Command>,
    states: watch::Sender<ConnState>,
    errors: broadcast::Sender<ClientError>,
    cancel: CancellationToken,
    /// Woken by a subscription queue that has room again after a stall.
    room: Arc<Notify>,
    /// Ordered by creation, so subscriptions are renewed in the order they were made.
    subs: BTreeMap<u64, Sub>,
    by_channel: HashMap<String, Vec<u64>>,
    /// The server-side subscriptions, by channel.
    server_subs: BTreeMap<String, ServerSub>,
    /// Their events, for [`ServerSubscriptions`](crate::ServerSubscriptions).
    server_events: Arc<EventQueue<ServerEvent>>,
    /// Requests not yet settled, by request id.
    pending: HashMap<u64, Pending>,
    /// Requests waiting for a connection, in call order.
    unsent: VecDeque<u64>,
    /// Request deadlines, earliest first.
    deadlines: BTreeSet<(Instant, u64)>,
    next_id: u64,
}

/// Wires for [`Driver::new`].
pub(crate) struct Wiring {
    pub(crate) commands: mpsc::UnboundedReceiver<Command>,
    pub(crate) states: watch::Sender<ConnState>,
    pub(crate) errors: broadcast::Sender<ClientError>,
    pub(crate) cancel: CancellationToken,
    pub(crate) room: Arc<Notify>,
    pub(crate) server_events: Arc<EventQueue<ServerEvent>>,
}

impl Driver {
    pub(crate) fn new(urls: Vec<String>, source: TokenSource, opts: Options, w: Wiring) -> Self {
        Self {
            urls,
            source,
            opts,
            commands: w.commands,
            states: w.states,
            errors: w.errors,
            cancel: w.cancel,
            room: w.room,
            subs: BTreeMap::new(),
            by_channel: HashMap::new(),
            server_subs: BTreeMap::new(),
            server_events: w.server_events,
            pending: HashMap::new(),
            unsent: VecDeque::new(),
            deadlines: BTreeSet::new(),
            next_id: 0,
        }
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn set_state(&self, state: ConnState) {
        // A fresh token's `auth_success` repeats the state: not a change to report.
        self.states.send_if_modified(|s| {
            if *s == state {
                return false;
            }
            *s = state;
            true
        });
    }

    fn report(&self, error: ClientError) {
        tracing::debug!(%error, "herald client error");
        // Nobody listening is fine: errors are also logged.
        let _ = self.errors.send(error);
    }
}
