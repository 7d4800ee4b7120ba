//! Every Redis key and channel Herald uses, built in one place.
//!
//! Keys that one script touches together share a Redis Cluster hash tag
//! (`{<channel>}`), so the layout works on a cluster as well as on one Redis.

use std::net::IpAddr;

/// Key builder for one prefix (`HERALD_REDIS_PREFIX`, default `herald:`).
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

/// Legacy bridge channels of the original design; they carry no prefix.
pub const LEGACY_SYSTEM_NOTIFICATIONS: &str = "system_notifications";
pub const LEGACY_USER_MESSAGES: &str = "user_messages";

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// Pub/Sub channel carrying a Herald channel's messages.
    pub fn channel(&self, channel: &str) -> String {
        format!("{}ch:{channel}", self.prefix)
    }

    /// The Pub/Sub prefix of [`Self::channel`], to map a Redis channel back to its name.
    pub fn channel_prefix(&self) -> String {
        format!("{}ch:", self.prefix)
    }

    /// History stream of a channel (entry id = `<offset>-0`).
    pub fn history(&self, channel: &str) -> String {
        format!("{}hist:{{{channel}}}", self.prefix)
    }

    /// Hash with the channel's `epoch` and last `offset`.
    pub fn meta(&self, channel: &str) -> String {
        format!("{}meta:{{{channel}}}", self.prefix)
    }

    /// Marks a publish made under an idempotency key or job id (same hash tag as
    /// the channel, so the publish script may touch it).
    pub fn once(&self, channel: &str, once_id: &str) -> String {
        format!("{}once:{{{channel}}}:{once_id}", self.prefix)
    }

    /// A channel's presence (HASH conn_id → `<node>\n<member JSON>`).
    pub fn presence(&self, channel: &str) -> String {
        format!("{}presence:{{{channel}}}", self.prefix)
    }

    /// Set when a node's presence entries were removed as a dead node's.
    pub fn presence_reaped(&self, node: &str) -> String {
        format!("{}presence-reaped:{node}", self.prefix)
    }

    /// ZSET node id → last beat (ms).
    pub fn nodes(&self) -> String {
        format!("{}nodes", self.prefix)
    }

    /// A node's latest stats (JSON, expires a few beats after the last one).
    pub fn node(&self, id: &str) -> String {
        format!("{}node:{id}", self.prefix)
    }

    /// A gateway's live connections (HASH conn_id → `ConnInfo` JSON), for the monitor.
    pub fn node_connections(&self, id: &str) -> String {
        format!("{}node:{id}:conns", self.prefix)
    }

    /// A gateway's per-channel subscriber counts (HASH), for the monitor.
    pub fn node_channels(&self, id: &str) -> String {
        format!("{}node:{id}:channels", self.prefix)
    }

    /// The Pub/Sub channel a gateway publishes to itself to prove its
    /// subscription connection still delivers.
    pub fn probe(&self, node_id: &str) -> String {
        format!("{}probe:{node_id}", self.prefix)
    }

    /// Pub/Sub control channel (disconnects, revocations).
    pub fn control(&self) -> String {
        format!("{}control", self.prefix)
    }

    /// Pub/Sub name where gateways answer a control command's `reply_to`.
    pub fn control_reply(&self, reply_to: &str) -> String {
        format!("{}control-reply:{reply_to}", self.prefix)
    }

    pub fn revoked(&self, jti: &str) -> String {
        format!("{}revoked:{jti}", self.prefix)
    }

    /// Stream of rate-limit events, for the monitor.
    pub fn ratelimit_events(&self) -> String {
        format!("{}ratelimit", self.prefix)
    }

    /// Per-IP live connection counts across gateways (HASH node → count).
    pub fn ip_connections(&self, ip: IpAddr) -> String {
        format!("{}ip:{{{ip}}}:conns", self.prefix)
    }

    /// Per-IP connection attempts in one second.
    pub fn ip_attempts(&self, ip: IpAddr, second: u64) -> String {
        format!("{}ip:{{{ip}}}:att:{second}", self.prefix)
    }

    /// Stream of webhook events for the broadcaster to deliver.
    pub fn webhooks(&self) -> String {
        format!("{}webhooks", self.prefix)
    }

    /// The broadcasters' webhook delivery stats (HASH), for the monitor.
    pub fn webhook_stats(&self) -> String {
        format!("{}webhooks:stats", self.prefix)
    }

    pub fn jobs(&self) -> String {
        format!("{}jobs", self.prefix)
    }

    pub fn job(&self, id: &str) -> String {
        format!("{}job:{id}", self.prefix)
    }

    pub fn user(&self, name: &str) -> String {
        format!("{}user:{name}", self.prefix)
    }

    pub fn users(&self) -> String {
        format!("{}users", self.prefix)
    }

    /// Any other key a service owns, under the prefix.
    pub fn other(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let k = Keys::new("herald:");
        assert_eq!(k.channel("news"), "herald:ch:news");
        assert_eq!(k.history("news"), "herald:hist:{news}");
        assert_eq!(k.meta("news"), "herald:meta:{news}");
        assert_eq!(k.presence("room:1"), "herald:presence:{room:1}");
        assert_eq!(
            k.ip_connections("127.0.0.1".parse().unwrap()),
            "herald:ip:{127.0.0.1}:conns"
        );
    }
}
