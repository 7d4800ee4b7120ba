//! Reading a channel's kept messages with [`Client::history`](crate::Client::history):
//! what to ask for, what comes back, and why it can fail.

use herald_proto::ErrorCode;
use herald_proto::frames::Position;

use crate::event::Message;

/// What [`Client::history`](crate::Client::history) asks for. The default is the
/// oldest kept messages first, as many as the gateway gives by default (100).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Only messages after this position. It counts only in the channel's current
    /// epoch: from another epoch (the history was lost since), the answer starts at
    /// the oldest kept message, and [`History::position`] shows the new epoch.
    pub since: Option<Position>,
    /// At most this many messages. `None` is the gateway's default (100); more than
    /// the channel keeps is capped at that; `Some(0)` is refused as `bad_request`.
    pub limit: Option<u64>,
    /// Newest first (the latest message, then older ones).
    pub reverse: bool,
}

/// A channel's kept messages, as [`Client::history`](crate::Client::history) read them.
#[derive(Debug, Clone, PartialEq)]
pub struct History {
    /// The messages, in the order asked for, each as a
    /// [`Subscription`](crate::Subscription) delivers it. A kind of delivery this
    /// version of the client does not know is left out.
    pub publications: Vec<Message>,
    /// The channel's latest position when it was read (offset 0 when nothing was
    /// published in this epoch yet). To go on live after a read, subscribe with
    /// `since` = the position of the newest message read, or this one when none was:
    /// the subscription replays whatever lies between, with no gap and no duplicate.
    pub position: Position,
}

/// Why a [`Client::history`](crate::Client::history) failed. The read changes
/// nothing, so each of these can be followed by another try.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// The gateway refused it: [`ErrorCode::Forbidden`] (the token may not subscribe
    /// to the channel), [`ErrorCode::Unavailable`] (the gateway cannot reach the
    /// history now; retry), [`ErrorCode::BadRequest`] (a bad channel name, a zero
    /// `limit`), or another code (`rate_limited`, …).
    #[error("refused: {}: {message}", code.as_str())]
    Refused { code: ErrorCode, message: String },
    /// Too many history reads are waiting already (at most
    /// [`Options::publish_queue`](crate::Options::publish_queue), counted apart from
    /// publishes); nothing was sent.
    #[error("too many history reads waiting")]
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
