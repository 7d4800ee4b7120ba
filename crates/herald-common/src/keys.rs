//! Every Redis key and channel Herald uses, built in one place.
//!
//! Keys that one script touches together share a Redis Cluster hash tag
//! (`{<channel>}`, `{<ip>}`), so the layout works on a cluster as well as on one
//! Redis. On a cluster ([`Keys::sharded`]) a channel's Pub/Sub name carries the
//! channel's tag too: it is a shard channel (`SPUBLISH`/`SSUBSCRIBE`) living in
//! the same slot as the channel's history, so the publish script can send it.

use std::net::IpAddr;

/// Key builder for one prefix (`HERALD_REDIS_PREFIX`, default `herald:`).
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    /// On a Redis Cluster: channel messages go over sharded Pub/Sub.
    sharded: bool,
}

/// Redis Cluster's slot count.
pub const SLOTS: u16 = 16384;

/// The Redis Cluster hash slot of `key`: CRC16 (XMODEM) of its hash tag — the
/// text between the first `{` and the next `}`, when not empty — or of the whole
/// key, modulo [`SLOTS`].
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(key)) % SLOTS
}

/// A short hash tag for every slot (`tags()[s]` hashes to slot `s`), so a node
/// can name a Pub/Sub channel that lands on a shard of its choosing.
pub fn slot_tags() -> &'static [Box<str>] {
    static TAGS: std::sync::OnceLock<Vec<Box<str>>> = std::sync::OnceLock::new();
    TAGS.get_or_init(|| {
        let mut tags: Vec<Option<Box<str>>> = vec![None; SLOTS as usize];
        let mut missing = SLOTS as usize;
        let mut n: u64 = 0;
        while missing > 0 {
            let tag = n.to_string();
            let s = usize::from(slot(tag.as_bytes()));
            if tags[s].is_none() {
                tags[s] = Some(tag.into());
                missing -= 1;
            }
            n += 1;
        }
        tags.into_iter().map(Option::unwrap_or_default).collect()
    })
}

/// Legacy bridge channels of the original design; they carry no prefix.
pub const LEGACY_SYSTEM_NOTIFICATIONS: &str = "system_notifications";
pub const LEGACY_USER_MESSAGES: &str = "user_messages";

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            sharded: false,
        }
    }

    /// The keys of a Redis Cluster deployment: channel messages on shard channels.
    pub fn sharded(mut self, sharded: bool) -> Self {
        self.sharded = sharded;
        self
    }

    pub fn is_sharded(&self) -> bool {
        self.sharded
    }

    /// Pub/Sub channel carrying a Herald channel's messages (on a cluster, a shard
    /// channel in the channel's slot).
    pub fn channel(&self, channel: &str) -> String {
        if self.sharded {
            format!("{}ch:{{{channel}}}", self.prefix)
        } else {
            format!("{}ch:{channel}", self.prefix)
        }
    }

    /// The Herald channel a Pub/Sub name of [`Self::channel`] carries.
    pub fn channel_of<'a>(&self, pubsub: &'a str) -> Option<&'a str> {
        let rest = pubsub
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix("ch:")?;
        if self.sharded {
            rest.strip_prefix('{')?.strip_suffix('}')
        } else {
            Some(rest)
        }
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

    /// The shard channel a gateway publishes to itself to prove its subscription
    /// to one shard still delivers (`tag` hashes to a slot of that shard).
    pub fn shard_probe(&self, node_id: &str, tag: &str) -> String {
        format!("{}probe:{node_id}:{{{tag}}}", self.prefix)
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
    fn slots_follow_the_hash_tag_rules() {
        // Values Redis's CLUSTER KEYSLOT gives.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_ne!(slot(b"foo{}{bar}"), slot(b"bar"));
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
        let tags = slot_tags();
        assert_eq!(tags.len(), usize::from(SLOTS));
        for (s, tag) in tags.iter().enumerate().step_by(97) {
            assert_eq!(usize::from(slot(tag.as_bytes())), s);
        }
    }

    #[test]
    fn a_channels_keys_and_shard_channel_share_its_slot() {
        let k = Keys::new("herald:").sharded(true);
        for c in ["news", "a:b", "user#42", "x.y/z@w"] {
            let s = slot(k.meta(c).as_bytes());
            for key in [k.history(c), k.once(c, "id"), k.presence(c), k.channel(c)] {
                assert_eq!(slot(key.as_bytes()), s, "{key}");
            }
            assert_eq!(k.channel_of(&k.channel(c)), Some(c));
        }
        let single = Keys::new("herald:");
        assert_eq!(single.channel("news"), "herald:ch:news");
        assert_eq!(single.channel_of("herald:ch:news"), Some("news"));
        assert_eq!(single.channel_of("herald:control"), None);
    }

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
