//! Who is in a channel: [`Client::presence`](crate::Client::presence) and
//! [`Client::presence_stats`](crate::Client::presence_stats), what they return, and why
//! they can fail. Comings and goings as they happen are [`Event::Join`] and
//! [`Event::Leave`] on a subscription made with
//! [`SubscribeOptions::join_leave`](crate::SubscribeOptions::join_leave).
//!
//! [`Event::Join`]: crate::Event::Join
//! [`Event::Leave`]: crate::Event::Leave

use herald_proto::ErrorCode;
pub use herald_proto::presence::Member;

/// A channel's members, as [`Client::presence`](crate::Client::presence) read them:
/// every connection subscribed to the channel, on every gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    /// One per connection (a user with two connections is listed twice, with two
    /// `conn_id`s), in no particular order. [`Member::info`] is the `info` claim of
    /// that connection's token.
    pub members: Vec<Member>,
    /// The channel had more members than the gateway lists in one answer
    /// (`HERALD_PRESENCE_LIMIT`, 1000 by default); [`Client::presence_stats`]
    /// counts them all.
    ///
    /// [`Client::presence_stats`]: crate::Client::presence_stats
    pub truncated: bool,
}

/// How many are in a channel, as
/// [`Client::presence_stats`](crate::Client::presence_stats) counted them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceStats {
    /// Connections subscribed to the channel, on every gateway.
    pub num_clients: u64,
    /// Distinct users among them.
    pub num_users: u64,
}

/// Why a [`Client::presence`](crate::Client::presence) or
/// [`Client::presence_stats`](crate::Client::presence_stats) failed. Reading presence
/// changes nothing, so each of these can be followed by another try.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresenceError {
    /// The gateway refused it: [`ErrorCode::Forbidden`] (the token's `presence` claim,
    /// or without one its `channels`, does not cover the channel),
    /// [`ErrorCode::Unavailable`] (the gateway cannot read presence now; retry),
    /// [`ErrorCode::BadRequest`] (a bad channel name), or another code
    /// (`rate_limited`, …).
    #[error("refused: {}: {message}", code.as_str())]
    Refused { code: ErrorCode, message: String },
    /// Too many presence reads are waiting already (at most
    /// [`Options::publish_queue`](crate::Options::publish_queue), counted apart from
    /// publishes and history reads); nothing was sent.
    #[error("too many presence reads waiting")]
    QueueFull,
    /// No answer within [`Options::publish_timeout`](crate::Options::publish_timeout)
    /// of the call, time waiting for a connection included.
    #[error("not answered in time")]
    Timeout,
    /// The connection dropped after the request was sent and before the answer; it
    /// is not sent again by itself.
    #[error("connection lost before the answer")]
    Disconnected,
    /// The client was closed, or stopped for good, before the answer.
    #[error("the client is closed")]
    Closed,
}
