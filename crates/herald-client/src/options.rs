//! Client settings.

use std::time::Duration;

use herald_proto::frames::Position;

/// How a [`Client`](crate::Client) behaves. Build it from [`Options::default`]:
/// `Options { batch: true, ..Options::default() }`.
#[derive(Debug, Clone)]
pub struct Options {
    /// Ask the gateway for `batch_messages` (deliveries coalesced over a few
    /// milliseconds); they are unpacked transparently.
    pub batch: bool,
    /// The first reconnect delay's cap; it doubles with each failed attempt.
    pub min_reconnect_delay: Duration,
    /// The most any reconnect delay can be.
    pub max_reconnect_delay: Duration,
    /// A connection up this long resets the reconnect delays to their minimum. A
    /// gateway that accepts connections and then drops them at once keeps being
    /// backed off from.
    pub stable_after: Duration,
    /// Publishes not yet settled, waiting for a connection or for their
    /// acknowledgement; one more fails with
    /// [`PublishError::QueueFull`](crate::PublishError::QueueFull) at once. History
    /// reads and presence reads are each bounded the same, apart from publishes and
    /// from each other ([`HistoryError::QueueFull`](crate::HistoryError::QueueFull),
    /// [`PresenceError::QueueFull`](crate::PresenceError::QueueFull)).
    pub publish_queue: usize,
    /// How long a publish may wait for its acknowledgement, and a history or presence
    /// read for its answer, from the call (time in the queue included).
    pub publish_timeout: Duration,
    /// How long opening a WebSocket and authenticating may take.
    pub connect_timeout: Duration,
    /// Messages a subscription holds for the application. When it is full, the
    /// subscription stops taking messages and, once the application has read half
    /// of them, recovers the rest from the gateway's history. It holds as many
    /// join/leave events besides, dropping the oldest past that (they cannot be
    /// recovered). The stream of server-side subscriptions
    /// ([`Client::server_subscriptions`](crate::Client::server_subscriptions)) is
    /// bounded the same, for all its channels together.
    pub subscription_buffer: usize,
    /// Deliveries a new subscription keeps while waiting for its `subscribed` reply;
    /// also, for all channels together, the deliveries kept on channels the client
    /// holds nothing for yet (the replay the server sends before it subscribes the
    /// connection to a channel itself).
    pub pending_limit: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            batch: false,
            min_reconnect_delay: Duration::from_millis(500),
            max_reconnect_delay: Duration::from_secs(20),
            stable_after: Duration::from_secs(10),
            publish_queue: 100,
            publish_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(15),
            subscription_buffer: 1024,
            pending_limit: 1000,
        }
    }
}

/// How [`Client::subscribe_with`](crate::Client::subscribe_with) subscribes. The
/// default is what `subscribe(channel, None)` does: from the channel's next message,
/// without join/leave events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// Start after this position: what was missed meanwhile is replayed if the
    /// gateway's history still holds it, otherwise an
    /// [`Event::Gap`](crate::Event::Gap) says so.
    pub since: Option<Position>,
    /// Also deliver [`Event::Join`](crate::Event::Join) and
    /// [`Event::Leave`](crate::Event::Leave) when other connections come to or leave
    /// the channel, kept on across reconnects. The token must allow seeing the
    /// channel's presence (its `presence` claim, or without one its `channels`);
    /// otherwise the subscription ends with a `forbidden`
    /// [`Event::Error`](crate::Event::Error).
    pub join_leave: bool,
}
