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
    /// The application's connect hook: says who a connection without a token is.
    #[arg(long, env = "HERALD_PROXY_CONNECT_URL")]
    pub proxy_connect_url: Option<String>,
    /// Send every first-frame login to the connect hook (tokens included).
    #[arg(long, env = "HERALD_PROXY_CONNECT_ALWAYS", default_value = "0", num_args = 0..=1, default_missing_value = "1", value_parser = parse_bool_flag)]
    pub proxy_connect_always: bool,
    /// The refresh hook: extends a connection whose expiry came, instead of ending it.
    #[arg(long, env = "HERALD_PROXY_REFRESH_URL")]
    pub proxy_refresh_url: Option<String>,
    /// The subscribe hook: approves subscribes the claims do not allow (and those of
    /// HERALD_PROXY_SUBSCRIBE_CHANNELS).
    #[arg(long, env = "HERALD_PROXY_SUBSCRIBE_URL")]
    pub proxy_subscribe_url: Option<String>,
    /// Channels (patterns) whose every subscribe goes to the subscribe hook.
    #[arg(long, env = "HERALD_PROXY_SUBSCRIBE_CHANNELS", value_delimiter = ',')]
    pub proxy_subscribe_channels: Vec<String>,
    /// The publish hook: approves, rewrites or refuses client broadcasts.
    #[arg(long, env = "HERALD_PROXY_PUBLISH_URL")]
    pub proxy_publish_url: Option<String>,
    /// Channels (patterns) whose broadcasts go to the publish hook.
    #[arg(
        long,
        env = "HERALD_PROXY_PUBLISH_CHANNELS",
        value_delimiter = ',',
        default_value = "*"
    )]
    pub proxy_publish_channels: Vec<String>,
    /// Longest wait for a hook's answer (a free slot included).
    #[arg(long, env = "HERALD_PROXY_TIMEOUT_MS", default_value_t = 1_000)]
    pub proxy_timeout_ms: u64,
    /// Requests in flight per hook on this gateway.
    #[arg(long, env = "HERALD_PROXY_CONCURRENCY", default_value_t = 64)]
    pub proxy_concurrency: usize,
    /// Handshake headers forwarded to the hooks, comma-separated.
    #[arg(
        long,
        env = "HERALD_PROXY_HEADERS",
        value_delimiter = ',',
        default_value = "Cookie,Authorization,User-Agent,X-Forwarded-For"
    )]
    pub proxy_headers: Vec<String>,
    /// Sent to the hooks as `X-Herald-Proxy-Secret`, so the backend knows the caller.
    #[arg(long, env = "HERALD_PROXY_SECRET", hide_env_values = true)]
    pub proxy_secret: Option<String>,
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
    pub proxy_connect_url: Option<String>,
    pub proxy_connect_always: bool,
    pub proxy_refresh_url: Option<String>,
    pub proxy_subscribe_url: Option<String>,
    pub proxy_subscribe_channels: Vec<String>,
    pub proxy_publish_url: Option<String>,
    pub proxy_publish_channels: Vec<String>,
    pub proxy_timeout: Duration,
    pub proxy_concurrency: usize,
    pub proxy_headers: Vec<String>,
    pub proxy_secret: Option<String>,
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
        let url = |name: &str, v: &Option<String>, problems: &mut ConfigErrors| {
            let v = v.as_deref().map(str::trim).filter(|u| !u.is_empty())?;
            // Plain HTTP only: the hooks are the application's backend on its private
            // network (docs/security.md); the gateway carries no TLS client.
            if v.starts_with("http://") {
                Some(v.to_owned())
            } else {
                problems.push(format!(
                    "{name} must be an http:// URL (the backend on your private network)"
                ));
                None
            }
        };
        let proxy_connect_url = url(
            "HERALD_PROXY_CONNECT_URL",
            &self.proxy_connect_url,
            &mut problems,
        );
        let proxy_refresh_url = url(
            "HERALD_PROXY_REFRESH_URL",
            &self.proxy_refresh_url,
            &mut problems,
        );
        let proxy_subscribe_url = url(
            "HERALD_PROXY_SUBSCRIBE_URL",
            &self.proxy_subscribe_url,
            &mut problems,
        );
        let proxy_publish_url = url(
            "HERALD_PROXY_PUBLISH_URL",
            &self.proxy_publish_url,
            &mut problems,
        );
        positive(
            "HERALD_PROXY_TIMEOUT_MS",
            self.proxy_timeout_ms,
            &mut problems,
        );
        positive(
            "HERALD_PROXY_CONCURRENCY",
            self.proxy_concurrency as u64,
            &mut problems,
        );
        if self.proxy_connect_always && proxy_connect_url.is_none() {
            problems.push("HERALD_PROXY_CONNECT_ALWAYS needs HERALD_PROXY_CONNECT_URL");
        }
        let proxy_secret = self
            .proxy_secret
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        if proxy_secret.as_ref().is_some_and(|s| s.len() < 16) {
            problems.push("HERALD_PROXY_SECRET must be at least 16 bytes");
        }
        let list = |v: &[String]| -> Vec<String> {
            v.iter()
                .map(|c| c.trim().to_owned())
                .filter(|c| !c.is_empty())
                .collect()
        };
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
            webhook_publish_channels: list(&self.webhook_publish_channels),
            proxy_connect_url,
            proxy_connect_always: self.proxy_connect_always,
            proxy_refresh_url,
            proxy_subscribe_url,
            proxy_subscribe_channels: list(&self.proxy_subscribe_channels),
            proxy_publish_url,
            proxy_publish_channels: list(&self.proxy_publish_channels),
            proxy_timeout: Duration::from_millis(self.proxy_timeout_ms),
            proxy_concurrency: self.proxy_concurrency,
            proxy_headers: list(&self.proxy_headers),
            proxy_secret,
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
