//! The gateway's settings (docs/protocol.md), from `--flags` or `HERALD_*` variables.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

use herald_common::config::{CommonConfig, ConfigErrors, parse_bool_flag};
use herald_common::jwt::{Alg, JwtConfig};
use herald_common::presence::DEFAULT_MEMBERS_LIMIT;
use herald_common::publish::{DEFAULT_HISTORY_SIZE, DEFAULT_HISTORY_TTL_MS, HistoryConfig};
use herald_proto::webhook::EventKind;

/// The port when `HERALD_LISTEN` is not set: on every interface, or on loopback
/// only in development mode.
pub const DEFAULT_PORT: u16 = 8765;

/// ws-gateway: holds client WebSocket connections and fans messages out.
#[derive(Debug, Clone, Parser)]
#[command(name = "ws-gateway", version = herald_common::VERSION, about)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonConfig,
    #[command(flatten)]
    pub jwt: JwtConfig,
    /// Address to listen on (WebSocket at `/ws` and `/`, plus ops endpoints)
    /// [default: 0.0.0.0:8765; 127.0.0.1:8765 with HERALD_DEV=1].
    #[arg(long, env = "HERALD_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Interval of WebSocket pings and `heartbeat` frames; silence for twice this drops a client.
    #[arg(long, env = "HERALD_HEARTBEAT_INTERVAL_MS", default_value_t = 25_000)]
    pub heartbeat_interval_ms: u64,
    /// Time a client has to authenticate after connecting.
    #[arg(long, env = "HERALD_AUTH_TIMEOUT_MS", default_value_t = 10_000)]
    pub auth_timeout_ms: u64,
    /// Client frames allowed per window per connection (GCRA, burst = this).
    #[arg(long, env = "HERALD_RATE_LIMIT_MESSAGES", default_value_t = 100)]
    pub rate_limit_messages: u32,
    /// The rate-limit window.
    #[arg(long, env = "HERALD_RATE_LIMIT_WINDOW_MS", default_value_t = 60_000)]
    pub rate_limit_window_ms: u64,
    /// Live connections per client IP across the cluster.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS_PER_IP", default_value_t = 10)]
    pub max_connections_per_ip: u32,
    /// Connection attempts per second per client IP across the cluster.
    #[arg(long, env = "HERALD_CONNECT_RATE_PER_IP", default_value_t = 20)]
    pub connect_rate_per_ip: u32,
    /// Live connections on this gateway.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,
    /// Largest client frame; a larger one gets `too_large`.
    #[arg(long, env = "HERALD_MAX_FRAME_BYTES", default_value_t = 64 * 1024)]
    pub max_frame_bytes: usize,
    /// Channels one connection may be subscribed to.
    #[arg(
        long,
        env = "HERALD_MAX_CHANNELS_PER_CONNECTION",
        default_value_t = 128
    )]
    pub max_channels_per_connection: usize,
    /// Frames queued for one client before it counts as a slow consumer.
    #[arg(long, env = "HERALD_OUTBOUND_QUEUE_FRAMES", default_value_t = 1024)]
    pub outbound_queue_frames: usize,
    /// Bytes queued for one client before it counts as a slow consumer.
    #[arg(long, env = "HERALD_OUTBOUND_QUEUE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub outbound_queue_bytes: usize,
    /// Messages kept per channel for recovery.
    #[arg(long, env = "HERALD_HISTORY_SIZE", default_value_t = DEFAULT_HISTORY_SIZE)]
    pub history_size: u64,
    /// How long a channel's history lives after its last publish.
    #[arg(long, env = "HERALD_HISTORY_TTL_MS", default_value_t = DEFAULT_HISTORY_TTL_MS)]
    pub history_ttl_ms: u64,
    /// Time to drain connections on shutdown.
    #[arg(long, env = "HERALD_SHUTDOWN_GRACE_MS", default_value_t = 10_000)]
    pub shutdown_grace_ms: u64,
    /// Coalescing window for clients that asked for `batch_messages`.
    #[arg(long, env = "HERALD_BATCH_WINDOW_MS", default_value_t = 5)]
    pub batch_window_ms: u64,
    /// Comma-separated exact origins allowed to open WebSockets from browsers.
    #[arg(long, env = "HERALD_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Time a client has to send a complete upgrade request.
    #[arg(long, env = "HERALD_HANDSHAKE_TIMEOUT_MS", default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,
    /// Largest request head (request line + headers) accepted; larger gets 431.
    #[arg(long, env = "HERALD_MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub max_header_bytes: usize,
    /// How often the gateway proves its Pub/Sub connection delivers.
    #[arg(long, env = "HERALD_PUBSUB_PROBE_INTERVAL_MS", default_value_t = 1_000)]
    pub pubsub_probe_interval_ms: u64,
    /// Subscribe every connection to its user's channel `user:<user id>` at login.
    #[arg(long, env = "HERALD_USER_CHANNEL", default_value = "0", num_args = 0..=1, default_missing_value = "1", value_parser = parse_bool_flag)]
    pub user_channel: bool,
    /// Webhook events to record for the broadcaster to deliver, comma-separated:
    /// channel_occupied, channel_vacated, member_added, member_removed, client_publish.
    #[arg(long, env = "HERALD_WEBHOOK_EVENTS", value_delimiter = ',')]
    pub webhook_events: Vec<String>,
    /// Channels (patterns) whose client publishes are recorded (`client_publish`).
    #[arg(
        long,
        env = "HERALD_WEBHOOK_PUBLISH_CHANNELS",
        value_delimiter = ',',
        default_value = "*"
    )]
    pub webhook_publish_channels: Vec<String>,
    /// Most members one `presence` answer lists (more are `truncated`).
    #[arg(long, env = "HERALD_PRESENCE_LIMIT", default_value_t = DEFAULT_MEMBERS_LIMIT)]
    pub presence_limit: usize,
}

/// The settings after validation, in the units the code uses.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub alg: Alg,
    pub secret: Option<String>,
    pub heartbeat: Duration,
    pub auth_timeout: Duration,
    pub rate_messages: u32,
    pub rate_window: Duration,
    pub max_conns_per_ip: u32,
    pub connect_rate_per_ip: u32,
    pub max_connections: usize,
    pub max_frame_bytes: usize,
    pub max_channels: usize,
    pub queue_frames: usize,
    pub queue_bytes: usize,
    pub history: HistoryConfig,
    pub shutdown_grace: Duration,
    pub batch_window: Duration,
    pub allowed_origins: Vec<String>,
    pub probe_interval: Duration,
    pub handshake_timeout: Duration,
    pub max_header_bytes: usize,
    pub presence_limit: usize,
    pub user_channel: bool,
    pub webhook_events: Vec<EventKind>,
    pub webhook_publish_channels: Vec<String>,
    pub dev: bool,
}

impl Config {
    /// Checks every setting, reporting all problems at once.
    pub fn validate(&self) -> Result<Settings, ConfigErrors> {
        let mut problems = ConfigErrors::new();
        self.common.check(&mut problems);
        let listen = self.common.listen(self.listen, DEFAULT_PORT);
        let (alg, secret) = self.jwt.resolve(self.common.dev, &mut problems);
        let positive = |name: &str, v: u64, problems: &mut ConfigErrors| {
            if v == 0 {
                problems.push(format!("{name} must be greater than 0"));
            }
        };
        positive(
            "HERALD_HEARTBEAT_INTERVAL_MS",
            self.heartbeat_interval_ms,
            &mut problems,
        );
        positive(
            "HERALD_AUTH_TIMEOUT_MS",
            self.auth_timeout_ms,
            &mut problems,
        );
        positive(
            "HERALD_RATE_LIMIT_MESSAGES",
            self.rate_limit_messages.into(),
            &mut problems,
        );
        positive(
            "HERALD_RATE_LIMIT_WINDOW_MS",
            self.rate_limit_window_ms,
            &mut problems,
        );
        positive(
            "HERALD_MAX_CONNECTIONS_PER_IP",
            self.max_connections_per_ip.into(),
            &mut problems,
        );
        positive(
            "HERALD_CONNECT_RATE_PER_IP",
            self.connect_rate_per_ip.into(),
            &mut problems,
        );
        positive(
            "HERALD_MAX_CONNECTIONS",
            self.max_connections as u64,
            &mut problems,
        );
        positive(
            "HERALD_MAX_FRAME_BYTES",
            self.max_frame_bytes as u64,
            &mut problems,
        );
        positive(
            "HERALD_OUTBOUND_QUEUE_FRAMES",
            self.outbound_queue_frames as u64,
            &mut problems,
        );
        positive(
            "HERALD_OUTBOUND_QUEUE_BYTES",
            self.outbound_queue_bytes as u64,
            &mut problems,
        );
        positive(
            "HERALD_PUBSUB_PROBE_INTERVAL_MS",
            self.pubsub_probe_interval_ms,
            &mut problems,
        );
        positive(
            "HERALD_PRESENCE_LIMIT",
            self.presence_limit as u64,
            &mut problems,
        );
        let mut webhook_events = Vec::new();
        for name in self
            .webhook_events
            .iter()
            .map(|e| e.trim())
            .filter(|e| !e.is_empty())
        {
            match EventKind::parse(name) {
                Some(k) => webhook_events.push(k),
                None => problems.push(format!(
                    "HERALD_WEBHOOK_EVENTS: unknown event {name:?} (known: {})",
                    EventKind::ALL.map(EventKind::as_str).join(", ")
                )),
            }
        }
        let allowed_origins: Vec<String> = self
            .allowed_origins
            .iter()
            .map(|o| o.trim().trim_end_matches('/').to_owned())
            .filter(|o| !o.is_empty())
            .collect();
        problems.or(|| Settings {
            listen,
            alg,
            secret,
            heartbeat: Duration::from_millis(self.heartbeat_interval_ms),
            auth_timeout: Duration::from_millis(self.auth_timeout_ms),
            rate_messages: self.rate_limit_messages,
            rate_window: Duration::from_millis(self.rate_limit_window_ms),
            max_conns_per_ip: self.max_connections_per_ip,
            connect_rate_per_ip: self.connect_rate_per_ip,
            max_connections: self.max_connections,
            max_frame_bytes: self.max_frame_bytes,
            max_channels: self.max_channels_per_connection,
            queue_frames: self.outbound_queue_frames,
            queue_bytes: self.outbound_queue_bytes,
            history: HistoryConfig {
                size: self.history_size,
                ttl_ms: self.history_ttl_ms,
            },
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
            batch_window: Duration::from_millis(self.batch_window_ms),
            allowed_origins,
            probe_interval: Duration::from_millis(self.pubsub_probe_interval_ms),
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
            max_header_bytes: self.max_header_bytes,
            presence_limit: self.presence_limit,
            user_channel: self.user_channel,
            webhook_events,
            webhook_publish_channels: self
                .webhook_publish_channels
                .iter()
                .map(|c| c.trim().to_owned())
                .filter(|c| !c.is_empty())
                .collect(),
            dev: self.common.dev,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_spec() {
        let c = Config::try_parse_from(["gw", "--jwt-secret", "0123456789abcdef"]).unwrap();
        let s = c.validate().unwrap();
        assert_eq!(s.listen, "0.0.0.0:8765".parse().unwrap());
        assert_eq!(s.heartbeat, Duration::from_secs(25));
        assert_eq!(s.rate_messages, 100);
        assert_eq!(s.max_conns_per_ip, 10);
        assert_eq!(s.max_frame_bytes, 65536);
        assert_eq!(s.max_channels, 128);
        assert_eq!(s.queue_frames, 1024);
        // Development mode listens on loopback unless told otherwise.
        let dev = Config::try_parse_from(["gw", "--dev"]).unwrap();
        assert_eq!(
            dev.validate().unwrap().listen,
            "127.0.0.1:8765".parse().unwrap()
        );
    }

    #[test]
    fn reports_every_problem() {
        let c = Config::try_parse_from(["gw", "--heartbeat-interval-ms", "0"]).unwrap();
        let problems = c.validate().unwrap_err();
        // Zero heartbeat, no secret.
        assert_eq!(problems.len(), 2, "{problems:?}");
        // A listen address is typed: one that does not parse is refused by the parser
        // (as a variable, with the line `herald_common::config` tests).
        assert!(Config::try_parse_from(["gw", "--listen", "nope"]).is_err());
    }
}
