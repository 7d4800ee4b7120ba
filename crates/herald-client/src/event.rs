//! What the client reports: subscription events, server-side subscription events,
//! connection states, publish results and errors.

use std::fmt;

use herald_proto::ErrorCode;
use herald_proto::disconnect::DisconnectCode;
use herald_proto::frames::{JobStatus, Position, ServerFrame};
use serde_json::Value;

use crate::presence::Member;
use crate::tracker::GapReason;

/// What a [`Subscription`](crate::Subscription) yields.
// More kinds may come (as joins and leaves did): matches need a wildcard arm.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The next message of the channel: exactly once, in offset order.
    Message(Message),
    /// The gateway confirmed the subscription (after every connect, and after each
    /// recovery this subscription asked for).
    Subscribed(Subscribed),
    /// Messages were lost for good (history trimmed or expired, Redis restarted
    /// empty); delivery goes on after [`Gap::to`].
    Gap(Gap),
    /// The gateway refused the subscription for good (`forbidden`, `bad_request`):
    /// the last event, the stream ends after it. Temporary refusals (`unavailable`,
    /// `rate_limited`, `internal`) are retried with a backoff instead, silently.
    Error(SubscribeError),
    /// Another connection (on any gateway) subscribed to the channel; only for a
    /// subscription made with
    /// [`SubscribeOptions::join_leave`](crate::SubscribeOptions::join_leave). Its
    /// [`Member::info`] is the `info` claim of that connection's token. This client's
    /// own connection is never announced to itself.
    ///
    /// Joins and leaves come in the order they arrive among the messages (a message
    /// that had to be recovered, after a hole or while the subscription was paused
    /// for not being read, comes when the recovery brings it). They have no offset:
    /// they are not recovered, so those that happened while disconnected are never
    /// told; after each [`Event::Subscribed`],
    /// [`Client::presence`](crate::Client::presence) tells who is there. A
    /// subscription not read keeps at most
    /// [`Options::subscription_buffer`](crate::Options::subscription_buffer) of them
    /// and drops the oldest past that.
    Join(Member),
    /// Another connection left the channel: it unsubscribed, disconnected, or its
    /// gateway died. As [`Event::Join`].
    Leave(Member),
    /// The application's backend unsubscribed this connection from the channel
    /// (broadcaster `/v1/unsubscribe`): the last event, the stream ends after it.
    /// Every subscription of the channel ends, except when one of them has a
    /// `subscribe` on its way to the gateway: that subscribes the channel again, so
    /// they all go on.
    Unsubscribed,
}

/// What [`ServerSubscriptions`](crate::ServerSubscriptions) yields: the channels the
/// server subscribed this connection to by itself (the application's backend with
/// broadcaster `/v1/subscribe`, or a gateway with `HERALD_USER_CHANNEL=1`, the
/// user's personal channel `user:<user_id>` at each login), and their messages.
///
/// A channel the application has a [`Subscription`](crate::Subscription) of its own
/// for is not reported here: the server's `subscribed` only confirms that
/// subscription, whose stream keeps delivering the channel.
// More kinds may come: matches need a wildcard arm.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub enum ServerEvent {
    /// The server subscribed the connection to a channel: on the first time, or
    /// again on a later connection (the personal channel at every login). The
    /// channel's messages follow, after [`ServerSubscribed::position`].
    Subscribed(ServerSubscribed),
    /// The next message of a server-side subscription: exactly once, in offset
    /// order per channel (the channels' messages are interleaved as they arrive).
    Message(Message),
    /// Messages of a server-side subscription were lost for good (history trimmed or
    /// expired, the channel's epoch changed); delivery goes on after [`Gap::to`].
    Gap(Gap),
    /// The server-side subscription of `channel` is over: the backend ended it
    /// (`/v1/unsubscribe`), or the gateway refused to renew it for good (the refusal
    /// also goes to [`Client::errors`](crate::Client::errors)). Nothing more comes
    /// on the channel until the server subscribes the connection again.
    Unsubscribed { channel: String },
}

/// The server subscribed the connection to `channel`; see [`ServerEvent::Subscribed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSubscribed {
    pub channel: String,
    /// The channel's latest offset when the server subscribed the connection.
    pub offset: u64,
    /// The channel's epoch then.
    pub epoch: String,
    /// `Some` when the backend gave a position to start from: whether everything
    /// after it was replayed (the replay follows this event).
    pub recovered: Option<bool>,
    /// Where this client's deliveries on the channel stand: the messages that follow
    /// come after it. On a later connection, the position kept from the earlier
    /// one: what was published on the channel meanwhile is recovered from the
    /// gateway's history and delivered next (or a [`ServerEvent::Gap`] says it could
    /// not be).
    pub position: Position,
}

/// What kind of delivery a [`Message`] was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// A `message` frame: a client `broadcast` or the broadcaster's publish API.
    Message,
    /// A `system_notification` (channel `system`).
    SystemNotification,
    /// A `user_message` posted on behalf of a user.
    UserMessage,
    /// A `processing_result` of a background job.
    ProcessingResult,
}

/// One channel delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub channel: String,
    pub kind: MessageKind,
    /// The payload: `message` (message, system notification), `content` (user
    /// message) or `result` (processing result), as published.
    pub data: Value,
    /// 1, 2, 3, … per channel within an epoch.
    pub offset: u64,
    /// Changes when the channel's history was lost.
    pub epoch: String,
    /// When it was published (RFC 3339, UTC, milliseconds).
    pub timestamp: String,
    /// The publishing user (`from_user` of a message, `user_id` of a user message);
    /// `None` for server-side publishes.
    pub from_user: Option<String>,
    /// For a processing result: the job it reports on.
    pub job: Option<Job>,
}

impl Message {
    /// Where this message sits in its channel; pass it to
    /// [`Client::subscribe`](crate::Client::subscribe) to resume after it.
    pub fn position(&self) -> Position {
        Position::new(self.offset, self.epoch.clone())
    }

    /// The message of a delivery frame; `None` for any other frame.
    pub(crate) fn from_frame(frame: ServerFrame) -> Option<Self> {
        let message = match frame {
            ServerFrame::Message {
                channel,
                offset,
                epoch,
                message,
                from_user,
                timestamp,
            } => Self {
                channel,
                kind: MessageKind::Message,
                data: message,
                offset,
                epoch,
                timestamp,
                from_user,
                job: None,
            },
            ServerFrame::SystemNotification {
                channel,
                offset,
                epoch,
                message,
                timestamp,
            } => Self {
                channel,
                kind: MessageKind::SystemNotification,
                data: message,
                offset,
                epoch,
                timestamp,
                from_user: None,
                job: None,
            },
            ServerFrame::UserMessage {
                channel,
                offset,
                epoch,
                user_id,
                content,
                timestamp,
            } => Self {
                channel,
                kind: MessageKind::UserMessage,
                data: content,
                offset,
                epoch,
                timestamp,
                from_user: Some(user_id),
                job: None,
            },
            ServerFrame::ProcessingResult {
                channel,
                offset,
                epoch,
                job_id,
                job_type,
                status,
                result,
                timestamp,
            } => Self {
                channel,
                kind: MessageKind::ProcessingResult,
                data: result,
                offset,
                epoch,
                timestamp,
                from_user: None,
                job: Some(Job {
                    id: job_id,
                    job_type,
                    status,
                }),
            },
            _ => return None,
        };
        Some(message)
    }
}

/// The job a processing result reports on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: String,
    pub job_type: String,
    pub status: JobStatus,
}

/// A `subscribed` reply: the channel's latest position when it was subscribed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribed {
    pub channel: String,
    pub offset: u64,
    pub epoch: String,
    /// `Some` when the subscription resumed from a position: whether everything
    /// missed was replayed (`false` comes with an [`Event::Gap`]).
    pub recovered: Option<bool>,
}

/// Messages lost for good: everything after `from` up to and including `to`.
/// When the epoch changed, that is the rest of `from`'s epoch and `1..=to.offset` of
/// the new one. The next message delivered is the one after `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub channel: String,
    /// The last message delivered before the gap.
    pub from: Position,
    /// The channel's position when the loss was found; delivery resumes after it.
    pub to: Position,
    pub reason: GapReason,
}

/// The gateway refused a `subscribe`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{channel}: {}: {message}", code.as_str())]
pub struct SubscribeError {
    pub channel: String,
    pub code: ErrorCode,
    pub message: String,
}

/// Where the connection stands; see [`Client::states`](crate::Client::states).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnState {
    /// Opening a WebSocket and authenticating.
    Connecting,
    /// Authenticated on gateway `node`.
    Connected { node: String, conn_id: String },
    /// Not connected.
    Disconnected {
        /// Why, when the gateway said (a `disconnect` frame, or a handshake refusal
        /// mapped to its documented code); `None` for network failures, timeouts and
        /// [`Client::close`](crate::Client::close).
        code: Option<DisconnectCode>,
        /// For people.
        reason: String,
        /// Whether the client will connect again by itself. `false` is final: the
        /// client has stopped.
        reconnect: bool,
    },
}

impl ConnState {
    pub fn is_connected(&self) -> bool {
        matches!(self, Self::Connected { .. })
    }
}

/// Where a published message landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub channel: String,
    pub offset: u64,
    pub epoch: String,
}

/// Why a [`Client::publish`](crate::Client::publish) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The gateway refused it (`forbidden`, `unavailable`, `bad_request`, …); it was
    /// not published.
    #[error("refused: {}: {message}", code.as_str())]
    Refused { code: ErrorCode, message: String },
    /// Too many publishes are waiting already; nothing was sent.
    #[error("too many publishes waiting")]
    QueueFull,
    /// No acknowledgement within the publish timeout. If it had been sent, it may
    /// have been published.
    #[error("not acknowledged in time")]
    Timeout,
    /// The connection dropped after it was sent and before the acknowledgement: it
    /// may or may not have been published, and it is not sent again.
    #[error("connection lost before the acknowledgement; it may have been published")]
    Disconnected,
    /// The client was closed, or stopped for good, before it was sent.
    #[error("the client is closed")]
    Closed,
    /// The message could not be serialized to JSON.
    #[error("cannot serialize the message: {0}")]
    Encode(String),
}

/// A problem the client reports outside any one subscription or publish; see
/// [`Client::errors`](crate::Client::errors).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The token source failed; it is asked again after a pause.
    #[error("token source failed: {0}")]
    TokenSource(String),
    /// The gateway refused a fresh token on the live connection (which keeps its old
    /// one until that expires); it is tried again after a pause.
    #[error("fresh token refused: {0}")]
    TokenRefused(String),
    /// An `error` frame that answers no request of this client (a refused frame
    /// under the rate limit, for example).
    #[error("{}: {message}", code.as_str())]
    Server { code: ErrorCode, message: String },
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Message => "message",
            Self::SystemNotification => "system_notification",
            Self::UserMessage => "user_message",
            Self::ProcessingResult => "processing_result",
        })
    }
}
