//! Owned, typed frames for clients: [`ServerFrame`] reads everything the gateway sends,
//! [`ClientFrame`] writes everything a client sends.
//!
//! The gateway itself builds its frames with the serialize-only builders of
//! [`crate::server`] and parses client frames with [`crate::client::parse`], which keeps
//! its hot paths free of owned copies. A client needs the opposite direction, and these
//! types give it one definition per wire type; the tests below bind them to the
//! gateway's builders and parser, so the two ends cannot drift apart.
//!
//! Reading is lenient where the protocol asks it to be: unknown fields are ignored, an
//! unknown frame `type` reads as [`ServerFrame::Unknown`], an unknown `disconnect` code
//! as [`DisconnectCode::Other`] and an unknown job status as [`JobStatus::Unknown`].

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::client::ErrorCode;
use crate::disconnect::DisconnectCode;
pub use crate::presence::Member;

// === positions ===

/// A place in a channel's history: the `offset` of a delivery within its `epoch`.
/// Clients keep the last one they saw per channel and send it as `since` to recover.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Position {
    pub offset: u64,
    pub epoch: String,
}

impl Position {
    pub fn new(offset: u64, epoch: impl Into<String>) -> Self {
        Self {
            offset,
            epoch: epoch.into(),
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.offset, self.epoch)
    }
}

// === server → client ===

/// Every frame the gateway sends (docs/protocol.md §3), owned.
///
/// Request ids are read as numbers: they are echoed exactly as sent, and
/// [`ClientFrame`] only ever sends numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// The connection (or a fresh token on it) was accepted.
    AuthSuccess {
        #[serde(default)]
        message: String,
        user_id: String,
        conn_id: String,
        /// The gateway serving the connection.
        node: String,
        /// The channels actually subscribed.
        #[serde(default)]
        channels: Vec<String>,
        /// The gateway sends a `heartbeat` this often (0 when absent).
        #[serde(default)]
        heartbeat_interval_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// The channel is subscribed; `offset` and `epoch` are its latest position.
    Subscribed {
        channel: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        offset: u64,
        epoch: String,
        /// Present only when the `subscribe` carried `since`: whether every missed
        /// message was replayed (before this frame).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        /// The application's backend made this subscription (no `id`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        server: bool,
        /// What the application's subscribe hook gave this subscriber.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<Value>,
    },
    Unsubscribed {
        channel: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The application's backend ended this subscription (no `id`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        server: bool,
    },
    /// A broadcast with an `id` was published at this position.
    Ack {
        id: u64,
        channel: String,
        offset: u64,
        epoch: String,
    },
    Pong {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        timestamp: String,
    },
    /// The answer to `history`: the channel's kept deliveries, each exactly as it
    /// was delivered (an unknown kind reads as [`ServerFrame::Unknown`]), and the
    /// channel's latest position.
    History {
        channel: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        #[serde(default)]
        publications: Vec<ServerFrame>,
        offset: u64,
        epoch: String,
    },
    /// The answer to `presence`: the channel's members, on every gateway.
    Presence {
        channel: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        #[serde(default)]
        members: Vec<Member>,
        /// More members than the gateway lists in one answer.
        #[serde(default)]
        truncated: bool,
    },
    /// The answer to `presence_stats`.
    PresenceStats {
        channel: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        num_clients: u64,
        num_users: u64,
    },
    /// A connection subscribed to a channel this client asked `join_leave` for.
    Join {
        channel: String,
        #[serde(flatten)]
        member: Member,
    },
    /// A connection left a channel this client asked `join_leave` for
    /// (unsubscribed, disconnected, or its gateway died).
    Leave {
        channel: String,
        #[serde(flatten)]
        member: Member,
    },
    /// A request was refused; the connection stays open.
    Error {
        /// A code this version does not know reads as [`ErrorCode::Internal`] (an
        /// unexpected server fault), so the frame still settles the request its `id`
        /// names.
        #[serde(deserialize_with = "lenient_error_code")]
        code: ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The channel the refusal is about.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        channel: Option<String>,
        /// For `rate_limited`: when the next frame is accepted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
        /// For `rejected` (and `permission_denied`): the application's own code.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        app_code: Option<String>,
    },
    Heartbeat {
        timestamp: String,
    },
    /// Channel deliveries coalesced into one frame (clients that asked for batching).
    BatchMessages {
        count: usize,
        messages: Vec<ServerFrame>,
    },
    /// The gateway is about to close the connection.
    Disconnect {
        code: DisconnectCode,
        reason: String,
        /// Whether reconnecting (after a backoff) can succeed.
        reconnect: bool,
        /// For a temporary handshake refusal: when to try again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// A published message (client `broadcast`, broadcaster `/v1/publish`).
    Message {
        channel: String,
        offset: u64,
        epoch: String,
        #[serde(default)]
        message: Value,
        /// The publishing user; absent for server-side publishes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from_user: Option<String>,
        timestamp: String,
    },
    /// A notification on the `system` channel.
    SystemNotification {
        channel: String,
        offset: u64,
        epoch: String,
        #[serde(default)]
        message: Value,
        timestamp: String,
    },
    /// A message posted on behalf of `user_id` (broadcaster `/v1/user-messages`).
    UserMessage {
        channel: String,
        offset: u64,
        epoch: String,
        user_id: String,
        #[serde(default)]
        content: Value,
        timestamp: String,
    },
    /// The outcome of a background job.
    ProcessingResult {
        channel: String,
        offset: u64,
        epoch: String,
        job_id: String,
        job_type: String,
        status: JobStatus,
        #[serde(default)]
        result: Value,
        timestamp: String,
    },
    /// A frame type this version does not know; clients ignore it.
    #[serde(other)]
    Unknown,
}

impl ServerFrame {
    /// Parses one text frame.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// For a channel delivery (`message`, `system_notification`, `user_message`,
    /// `processing_result`): its channel and position.
    pub fn delivery(&self) -> Option<(&str, u64, &str)> {
        match self {
            Self::Message {
                channel,
                offset,
                epoch,
                ..
            }
            | Self::SystemNotification {
                channel,
                offset,
                epoch,
                ..
            }
            | Self::UserMessage {
                channel,
                offset,
                epoch,
                ..
            }
            | Self::ProcessingResult {
                channel,
                offset,
                epoch,
                ..
            } => Some((channel, *offset, epoch)),
            _ => None,
        }
    }
}

fn lenient_error_code<'de, D: Deserializer<'de>>(d: D) -> Result<ErrorCode, D::Error> {
    let code = String::deserialize(d)?;
    Ok(ErrorCode::parse(&code).unwrap_or(ErrorCode::Internal))
}

/// How a background job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Done,
    Failed,
    /// A status this version does not know.
    #[serde(other)]
    Unknown,
}

// === client → server ===

/// Every frame a client sends (docs/protocol.md §2). Request ids are numbers, unique
/// per connection, so replies can be matched to requests.
#[derive(Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// The first frame of a connection, or a fresh token on a live one.
    Auth {
        token: String,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        channels: Vec<String>,
        /// Ask for `batch_messages` (read in a connection's first frame only).
        batch: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// Subscribe; with `since`, replay what was missed after that position first.
    Subscribe {
        channel: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<Position>,
        /// Also deliver the channel's `join` / `leave` events (only `true` is sent).
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        join_leave: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    Unsubscribe {
        channel: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// Publish `message` (any JSON, sent byte for byte); acknowledged when `id` is set.
    Broadcast {
        channel: String,
        message: Box<RawValue>,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    Ping {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// Read the channel's kept messages without subscribing: oldest first (newest
    /// first with `reverse`), at most `limit` (the gateway's default and cap apply),
    /// after `since` when it names the channel's current epoch.
    History {
        channel: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<Position>,
        #[serde(skip_serializing_if = "Option::is_none")]
        limit: Option<u64>,
        /// Absent means oldest first, so only `true` is sent.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        reverse: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// Who is in the channel (on every gateway).
    Presence {
        channel: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// How many connections and distinct users are in the channel.
    PresenceStats {
        channel: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
}

impl ClientFrame {
    /// The frame as JSON text.
    pub fn to_json(&self) -> String {
        // Plain strings, numbers and already-valid raw JSON: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

// Written by hand so a token never reaches a log through `{:?}`.
impl fmt::Debug for ClientFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auth {
                channels,
                batch,
                id,
                ..
            } => f
                .debug_struct("Auth")
                .field("token", &"[redacted]")
                .field("channels", channels)
                .field("batch", batch)
                .field("id", id)
                .finish(),
            Self::Subscribe {
                channel,
                since,
                join_leave,
                id,
            } => f
                .debug_struct("Subscribe")
                .field("channel", channel)
                .field("since", since)
                .field("join_leave", join_leave)
                .field("id", id)
                .finish(),
            Self::Presence { channel, id } => f
                .debug_struct("Presence")
                .field("channel", channel)
                .field("id", id)
                .finish(),
            Self::PresenceStats { channel, id } => f
                .debug_struct("PresenceStats")
                .field("channel", channel)
                .field("id", id)
                .finish(),
            Self::Unsubscribe { channel, id } => f
                .debug_struct("Unsubscribe")
                .field("channel", channel)
                .field("id", id)
                .finish(),
            Self::Broadcast {
                channel,
                message,
                id,
            } => f
                .debug_struct("Broadcast")
                .field("channel", channel)
                .field("message", &message.get())
                .field("id", id)
                .finish(),
            Self::Ping { id } => f.debug_struct("Ping").field("id", id).finish(),
            Self::History {
                channel,
                since,
                limit,
                reverse,
                id,
            } => f
                .debug_struct("History")
                .field("channel", channel)
                .field("since", since)
                .field("limit", limit)
                .field("reverse", reverse)
                .field("id", id)
                .finish(),
        }
    }
}

#[cfg(test)]
mod tests;
