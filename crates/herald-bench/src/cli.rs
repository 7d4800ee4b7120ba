//! Commands and flags.

use clap::{Args, Parser, Subcommand};

/// Load generator for Herald.
#[derive(Debug, Parser)]
#[command(name = "herald-bench", version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
    /// Print one JSON object instead of the table.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Runtime worker threads of the bench itself.
    #[arg(long, global = true)]
    pub(crate) threads: Option<usize>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// N subscribers, publishers at a rate; deliveries, losses and latency.
    Fanout(FanoutArgs),
    /// N idle authenticated connections: setup rate and memory per connection.
    Connections(ConnArgs),
    /// The raw baseline server: pre-encoded WebSocket frames over plain tokio TCP.
    RawServer(RawServerArgs),
    /// A presence flood: connections subscribing and unsubscribing on one channel as
    /// fast as they can; join/leave events delivered, message latency before and during.
    Presence(PresenceArgs),
    /// Publishes over many channels through the broadcaster: publishes/s, and what
    /// they cost Redis (CPU per publish summed over the nodes, each node's share).
    Publish(PublishArgs),
}

#[derive(Debug, Clone, Args)]
pub(crate) struct PublishArgs {
    /// The broadcaster's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8082")]
    pub(crate) api_url: String,
    /// The broadcaster's API key.
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    pub(crate) api_key: String,
    /// Channels, published to in turn (`bench:0` … `bench:C-1`).
    #[arg(long, default_value_t = 10_000)]
    pub(crate) channels: usize,
    /// Publishes in flight at once.
    #[arg(long, default_value_t = 64)]
    pub(crate) concurrency: usize,
    /// Publishing time in seconds.
    #[arg(long, default_value_t = 10)]
    pub(crate) duration: u64,
    /// Message payload size in bytes.
    #[arg(long, default_value_t = 100)]
    pub(crate) payload: usize,
    /// The Redis nodes to measure (comma-separated URLs): the one Redis, or a
    /// cluster's primaries; each one's CPU and publish-script calls, from `INFO`.
    #[arg(long, value_delimiter = ',', required = true)]
    pub(crate) redis: Vec<String>,
    /// Pid of the broadcaster, for its CPU per publish.
    #[arg(long)]
    pub(crate) pid: Option<u32>,
}

/// How to reach and authenticate against a gateway.
#[derive(Debug, Clone, Args)]
pub(crate) struct Target {
    /// Gateway WebSocket URL (or `tcp://host:port` of a raw-server with --raw).
    #[arg(long, default_value = "ws://127.0.0.1:8765/ws")]
    pub(crate) url: String,
    /// HS256 secret to mint tokens with (one per connection).
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
    pub(crate) secret: Option<String>,
    /// A ready token used by every connection instead of minting.
    #[arg(long)]
    pub(crate) token: Option<String>,
    /// Local source addresses to spread connections over (comma-separated);
    /// default: as many of 127.0.0.1, 127.0.0.2, … as N needs (20,000 per address).
    #[arg(long, value_delimiter = ',')]
    pub(crate) sources: Vec<std::net::IpAddr>,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 256)]
    pub(crate) connect_concurrency: usize,
    /// Pid of the gateway, for RSS and CPU time from /proc.
    #[arg(long)]
    pub(crate) pid: Option<u32>,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct FanoutArgs {
    #[command(flatten)]
    pub(crate) target: Target,
    /// Subscriber connections.
    #[arg(long, default_value_t = 1000)]
    pub(crate) subscribers: usize,
    /// Channels; subscriber i listens to channel i mod C.
    #[arg(long, default_value_t = 1)]
    pub(crate) channels: usize,
    /// Also subscribe everyone to one shared channel and send every K-th publish there.
    #[arg(long)]
    pub(crate) shared_every: Option<u64>,
    /// Publishes per second in total (0: as fast as the in-flight window allows).
    #[arg(long, default_value_t = 100)]
    pub(crate) rate: u64,
    /// Publishing time in seconds.
    #[arg(long, default_value_t = 10)]
    pub(crate) duration: u64,
    /// Message payload size in bytes.
    #[arg(long, default_value_t = 100)]
    pub(crate) payload: usize,
    /// How to publish: `ws` (client broadcasts) or `http` (broadcaster API).
    #[arg(long, default_value = "ws")]
    pub(crate) publish: String,
    /// Publisher connections (ws) or concurrent HTTP requests (http).
    #[arg(long, default_value_t = 4)]
    pub(crate) publishers: usize,
    /// Unacknowledged publishes allowed per publisher.
    #[arg(long, default_value_t = 64)]
    pub(crate) window: usize,
    /// Broadcaster URL for --publish http.
    #[arg(long, default_value = "http://127.0.0.1:8082")]
    pub(crate) api_url: String,
    /// Broadcaster API key for --publish http.
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    pub(crate) api_key: Option<String>,
    /// Target a raw-server baseline (plain TCP) instead of Herald.
    #[arg(long)]
    pub(crate) raw: bool,
    /// Give up waiting for stragglers this long after publishing stops.
    #[arg(long, default_value_t = 10)]
    pub(crate) drain_timeout: u64,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct ConnArgs {
    #[command(flatten)]
    pub(crate) target: Target,
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    pub(crate) count: usize,
    /// Seconds to hold them open.
    #[arg(long, default_value_t = 10)]
    pub(crate) hold: u64,
    /// Channel every connection subscribes to at the handshake (none if empty).
    #[arg(long, default_value = "")]
    pub(crate) channel: String,
    /// Bare TCP connections to `tcp://host:port` (e.g. a raw-server): the
    /// machine's own connection-setup ceiling, for comparison.
    #[arg(long)]
    pub(crate) raw: bool,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct PresenceArgs {
    #[command(flatten)]
    pub(crate) target: Target,
    /// The channel everyone uses.
    #[arg(long, default_value = "room")]
    pub(crate) channel: String,
    /// Connections subscribed with `join_leave`: each gets every join and leave.
    #[arg(long, default_value_t = 10)]
    pub(crate) listeners: usize,
    /// Plain subscribers of the channel whose message latency is measured.
    #[arg(long, default_value_t = 100)]
    pub(crate) subscribers: usize,
    /// Connections that subscribe and unsubscribe in a loop during the flood.
    #[arg(long, default_value_t = 50)]
    pub(crate) churners: usize,
    /// Messages per second the one publisher broadcasts to the channel (0: none).
    #[arg(long, default_value_t = 100)]
    pub(crate) rate: u64,
    /// Flood time in seconds.
    #[arg(long, default_value_t = 10)]
    pub(crate) duration: u64,
    /// Subscribe/unsubscribe cycles per second over all churners (0: as fast as each
    /// churner's replies come back).
    #[arg(long, default_value_t = 0)]
    pub(crate) joins_per_sec: u64,
    /// Seconds of publishing before the flood, for the latency baseline (0: none).
    #[arg(long, default_value_t = 3)]
    pub(crate) baseline: u64,
    /// Message payload size in bytes.
    #[arg(long, default_value_t = 100)]
    pub(crate) payload: usize,
    /// Bound in seconds on every wait: a connection, a reply, an acknowledgement, and
    /// the quiet time after which the drain gives up on stragglers.
    #[arg(long, default_value_t = 5)]
    pub(crate) timeout: u64,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct RawServerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9100")]
    pub(crate) listen: String,
    /// Start publishing once this many clients are connected.
    #[arg(long, default_value_t = 1000)]
    pub(crate) subscribers: usize,
    /// Messages per second (0: as fast as the queues drain).
    #[arg(long, default_value_t = 0)]
    pub(crate) rate: u64,
    /// Publishing time in seconds.
    #[arg(long, default_value_t = 10)]
    pub(crate) duration: u64,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 100)]
    pub(crate) payload: usize,
    /// Frames queued per connection.
    #[arg(long, default_value_t = 1024)]
    pub(crate) queue: usize,
    /// Give up (and exit non-zero) if the clients have not all connected by then (s).
    #[arg(long, default_value_t = 120)]
    pub(crate) accept_timeout: u64,
    /// Write every frame to every socket from the publishing loop itself (one `write`
    /// per subscriber, no queue, no task per connection): the least a core can do per
    /// delivery, i.e. the floor for fan-out latency at low rates.
    #[arg(long)]
    pub(crate) direct: bool,
}
