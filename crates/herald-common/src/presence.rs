//! Channel presence: which connections, on every gateway, are subscribed to a
//! channel, and the `join` / `leave` events when that changes.
//!
//! On Redis each channel has one hash, `herald:presence:{<channel>}`, field =
//! conn_id, value = `<node id>\n<member JSON>` (see [`herald_proto::presence`]). The
//! gateway that owns a connection writes its entries through small scripts that
//! change the hash and PUBLISH the event on the channel's Pub/Sub name in one
//! step, so an event is sent exactly when an entry really came or went, whoever
//! (owner or reaper) got there first.
//!
//! Nothing is refreshed per member: an entry's liveness is its node's. A node whose
//! heartbeat in the registry is older than [`DEAD_AFTER_MS`] is dead; reads skip
//! members of nodes that are not live and remove (with a `leave`) those of dead
//! ones, and every gateway removes a dead node's members from its own channels as
//! soon as it sees the node die ([`Presence::reap`]). A gateway wrongly taken for
//! dead (its beats stalled) finds a mark left by the reaper
//! ([`Presence::take_reaped`]) and writes its members again. The hash itself has a
//! TTL that gateways with members refresh, so a channel whose every gateway died
//! leaves nothing behind for long.

use std::collections::HashSet;
use std::sync::Arc;

use redis::Script;

use herald_proto::presence::{EventKind, encode_event, event_frame};
use herald_proto::time::now_ms;

use crate::engine::Engine;
use crate::keys::Keys;
use crate::publish::ScriptReply;

/// A node whose last beat is older than this is dead, and its members leave.
pub const DEAD_AFTER_MS: u64 = 3_000;
/// A channel's presence hash lives this long after its last refresh.
pub const KEY_TTL_MS: u64 = 5 * 60 * 1000;
/// Most members one presence answer lists by default.
pub const DEFAULT_MEMBERS_LIMIT: usize = 1000;
/// How long the reaper's mark for a node wrongly taken for dead is kept.
const REAPED_MARK_TTL_MS: u64 = 10 * 60 * 1000;

/// KEYS: presence hash. ARGV: conn_id, `<node>\n<member>`, pubsub name, event
/// payload, key ttl. Publishes the join only for a new entry. Returns {new (0/1),
/// members now}.
const JOIN_LUA: &str = r#"
local new = redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
if new == 1 then redis.call('PUBLISH', ARGV[3], ARGV[4]) end
return {new, redis.call('HLEN', KEYS[1])}
"#;

/// KEYS: presence hash. ARGV: conn_id, pubsub name, event payload. Publishes the
/// leave only if the entry was still there. Returns {gone (0/1), members now}.
const LEAVE_LUA: &str = r#"
local gone = redis.call('HDEL', KEYS[1], ARGV[1])
if gone == 1 then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
return {gone, redis.call('HLEN', KEYS[1])}
"#;

/// Shared by the read scripts: sorts the hash's entries into those of live nodes
/// (returned) and of dead ones (removed, each with a `leave`). ARGV: pubsub name,
/// channel, now ms, number of live nodes L, L live node ids, then dead node ids.
const SORT_LUA: &str = r#"
local live, dead = {}, {}
local nlive = tonumber(ARGV[4])
for i = 5, 4 + nlive do live[ARGV[i]] = true end
for i = 5 + nlive, #ARGV do dead[ARGV[i]] = true end
local all = redis.call('HGETALL', KEYS[1])
local members, removed = {}, {}
for i = 1, #all, 2 do
  local v = all[i + 1]
  local nl = string.find(v, '\n', 1, true)
  if nl then
    local node, member = string.sub(v, 1, nl - 1), string.sub(v, nl + 1)
    if live[node] then
      members[#members + 1] = member
    elseif dead[node] then
      redis.call('HDEL', KEYS[1], all[i])
      removed[#removed + 1] = member
      redis.call('PUBLISH', ARGV[1], 'ev ' .. ARGV[3] .. ' ' .. all[i] .. '\n{"type":"leave","channel":"' .. ARGV[2] .. '",' .. string.sub(member, 2))
    end
  end
end
"#;

/// Members of live nodes, at most ARGV[#ARGV] of them: {truncated(0/1), member...}.
/// The limit is the last argument so [`SORT_LUA`]'s layout stays put.
fn members_lua() -> String {
    format!(
        "{}{}",
        SORT_LUA.replace(
            "for i = 5 + nlive, #ARGV do",
            "for i = 5 + nlive, #ARGV - 1 do"
        ),
        r#"
local limit = tonumber(ARGV[#ARGV])
local out = {0}
for i = 1, #members do
  if i > limit then out[1] = 1 break end
  out[#out + 1] = members[i]
end
return out
"#
    )
}

/// {connections, distinct users} of live nodes.
fn stats_lua() -> String {
    format!(
        "{SORT_LUA}{}",
        r#"
local users, n = {}, 0
for i = 1, #members do
  -- Records start {"user_id":"<escaped id>","conn_id":…, and an escaped id cannot
  -- hold that unescaped quote sequence: the id's JSON text, without decoding.
  local m = members[i]
  local user
  local stop = string.find(m, '","conn_id":"', 13, true)
  if stop and string.sub(m, 1, 12) == '{"user_id":"' then
    user = string.sub(m, 13, stop - 1)
  else
    local ok, d = pcall(cjson.decode, m)
    if ok and type(d) == 'table' then user = d.user_id end
  end
  if user and not users[user] then
    users[user] = true
    n = n + 1
  end
end
return {#members, n}
"#
    )
}

/// One change a gateway makes to a channel's presence.
#[derive(Debug, Clone)]
pub struct Change {
    pub channel: Arc<str>,
    pub conn_id: Arc<str>,
    /// The member record (shared by all of a connection's channels).
    pub member: Arc<str>,
    pub kind: EventKind,
}

/// Which nodes count as live and which as dead, from the registry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Liveness {
    pub live: Vec<String>,
    pub dead: Vec<String>,
}

impl Liveness {
    /// Sorts the registry's `(node, last beat ms)` at `now`.
    pub fn at(nodes: impl IntoIterator<Item = (String, u64)>, now: u64) -> Self {
        let mut l = Self::default();
        for (node, beat) in nodes {
            if beat + DEAD_AFTER_MS >= now {
                l.live.push(node);
            } else {
                l.dead.push(node);
            }
        }
        l
    }
}

/// What one join or leave did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// The entry really came (join) or went (leave).
    pub changed: bool,
    /// Members the channel has after it, on every node.
    pub remaining: u64,
}

/// What a reap removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reaped {
    /// The removed members' records (JSON).
    pub removed: Vec<String>,
    /// Members the channel has after it.
    pub remaining: u64,
}

/// A presence answer: member records (JSON), and whether there were more.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    pub members: Vec<String>,
    pub truncated: bool,
}

/// How many connections and distinct users a channel has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub num_clients: u64,
    pub num_users: u64,
}

/// Reads and writes channel presence on the engine. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Presence {
    engine: Engine,
    keys: Keys,
    join: Script,
    leave: Script,
    members: Script,
    stats: Script,
    reap: Script,
}

impl Presence {
    pub fn new(engine: Engine, keys: Keys) -> Self {
        let script = |lua: &str| crate::publish::channel_script(&keys, lua);
        Self {
            join: script(JOIN_LUA),
            leave: script(LEAVE_LUA),
            members: script(&members_lua()),
            stats: script(&stats_lua()),
            // The sorting removes the dead; this says what it removed and what is left.
            reap: script(&format!(
                "{SORT_LUA}\nlocal out = {{redis.call('HLEN', KEYS[1])}}\nfor i = 1, #removed do out[#out + 1] = removed[i] end\nreturn out"
            )),
            engine,
            keys,
        }
    }

    /// Writes a batch of joins and leaves of `node`'s connections, in order, as
    /// one pipeline; says for each whether it changed anything and how many members
    /// the channel has after it. Safe to repeat: a repeated join or leave changes
    /// nothing and publishes nothing.
    pub async fn apply(&self, node: &str, changes: &[Change]) -> redis::RedisResult<Vec<Applied>> {
        let published_ms = now_ms();
        let r = match &self.engine {
            Engine::Redis(r) => r,
            Engine::Memory(m) => {
                let mut out = Vec::with_capacity(changes.len());
                for c in changes {
                    let payload = event_payload(c, published_ms);
                    let pubsub = self.keys.channel(&c.channel);
                    let (changed, remaining) = match c.kind {
                        EventKind::Join => {
                            m.member_join(&c.channel, &c.conn_id, node, &c.member, &pubsub, payload)
                        }
                        EventKind::Leave => {
                            m.member_leave(&c.channel, &c.conn_id, &pubsub, payload)
                        }
                    };
                    out.push(Applied { changed, remaining });
                }
                return Ok(out);
            }
        };
        let mut pipe = redis::pipe();
        for c in changes {
            let payload = event_payload(c, published_ms);
            let cmd = pipe.cmd("EVALSHA");
            match c.kind {
                EventKind::Join => cmd
                    .arg(self.join.get_hash())
                    .arg(1)
                    .arg(self.keys.presence(&c.channel))
                    .arg(&*c.conn_id)
                    .arg(format!("{node}\n{}", c.member))
                    .arg(self.keys.channel(&c.channel))
                    .arg(payload)
                    .arg(KEY_TTL_MS),
                EventKind::Leave => cmd
                    .arg(self.leave.get_hash())
                    .arg(1)
                    .arg(self.keys.presence(&c.channel))
                    .arg(&*c.conn_id)
                    .arg(self.keys.channel(&c.channel))
                    .arg(payload),
            };
        }
        let mut conn = r.conn.clone();
        let replies: Vec<(u8, u64)> = match pipe.query_async(&mut conn).await {
            // A Redis that restarted (or flushed its scripts) forgets them: load
            // and run the batch again, which the scripts make harmless.
            Err(e) if e.code() == Some("NOSCRIPT") => {
                self.join.prepare_invoke().load_async(&mut conn).await?;
                self.leave.prepare_invoke().load_async(&mut conn).await?;
                pipe.query_async(&mut conn).await?
            }
            res => res?,
        };
        Ok(replies
            .into_iter()
            .map(|(changed, remaining)| Applied {
                changed: changed == 1,
                remaining,
            })
            .collect())
    }

    /// Which registered nodes are live and which dead, now.
    pub async fn liveness(&self) -> redis::RedisResult<Liveness> {
        let nodes = match &self.engine {
            Engine::Redis(r) => {
                let raw: Vec<(String, f64)> = redis::cmd("ZRANGE")
                    .arg(self.keys.nodes())
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES")
                    .query_async(&mut r.conn.clone())
                    .await?;
                raw.into_iter().map(|(n, s)| (n, s as u64)).collect()
            }
            Engine::Memory(m) => m.nodes(),
        };
        Ok(Liveness::at(nodes, now_ms()))
    }

    /// The channel's members on live nodes, at most `limit` (`truncated` if more).
    pub async fn members(&self, channel: &str, limit: usize) -> redis::RedisResult<Members> {
        let alive = self.liveness().await?;
        let r = match &self.engine {
            Engine::Redis(r) => r,
            Engine::Memory(m) => {
                let (members, truncated) = m.members(
                    channel,
                    &self.keys.channel(channel),
                    &alive,
                    limit,
                    now_ms(),
                );
                return Ok(Members { members, truncated });
            }
        };
        let mut inv = self.members.prepare_invoke();
        self.sort_args(&mut inv, channel, &alive);
        inv.arg(limit);
        let reply: Vec<redis::Value> = inv.invoke_async(&mut r.conn.clone()).await?;
        let mut reply = ScriptReply::new(reply, "presence");
        let truncated = reply.next::<u8>()? == 1;
        Ok(Members {
            members: reply.rest()?,
            truncated,
        })
    }

    /// How many connections and distinct users the channel has on live nodes.
    pub async fn stats(&self, channel: &str) -> redis::RedisResult<Stats> {
        let alive = self.liveness().await?;
        self.stats_with(channel, &alive).await
    }

    /// [`Self::stats`] of several channels, with one read of the registry.
    pub async fn stats_of(&self, channels: &[&str]) -> redis::RedisResult<Vec<Stats>> {
        let alive = self.liveness().await?;
        let mut out = Vec::with_capacity(channels.len());
        for c in channels {
            out.push(self.stats_with(c, &alive).await?);
        }
        Ok(out)
    }

    async fn stats_with(&self, channel: &str, alive: &Liveness) -> redis::RedisResult<Stats> {
        let r = match &self.engine {
            Engine::Redis(r) => r,
            Engine::Memory(m) => {
                let (members, _) = m.members(
                    channel,
                    &self.keys.channel(channel),
                    alive,
                    usize::MAX,
                    now_ms(),
                );
                return Ok(count(&members));
            }
        };
        let mut inv = self.stats.prepare_invoke();
        self.sort_args(&mut inv, channel, alive);
        let (num_clients, num_users): (u64, u64) = inv.invoke_async(&mut r.conn.clone()).await?;
        Ok(Stats {
            num_clients,
            num_users,
        })
    }

    /// Removes the members of `dead` nodes from `channel`, each with a `leave`;
    /// returns the removed member records and how many members are left.
    pub async fn reap(&self, channel: &str, dead: &[String]) -> redis::RedisResult<Reaped> {
        let alive = Liveness {
            live: Vec::new(),
            dead: dead.to_vec(),
        };
        match &self.engine {
            Engine::Redis(r) => {
                let mut inv = self.reap.prepare_invoke();
                self.sort_args(&mut inv, channel, &alive);
                let reply: Vec<redis::Value> = inv.invoke_async(&mut r.conn.clone()).await?;
                let mut reply = ScriptReply::new(reply, "presence reap");
                Ok(Reaped {
                    remaining: reply.next()?,
                    removed: reply.rest()?,
                })
            }
            Engine::Memory(m) => {
                Ok(m.reap_members(channel, &self.keys.channel(channel), dead, now_ms()))
            }
        }
    }

    /// The channels `node` last reported having subscribers in (its monitor
    /// record, which outlives it by a few seconds): where a dead node's members are.
    pub async fn node_channels(&self, node: &str) -> redis::RedisResult<Vec<String>> {
        match &self.engine {
            Engine::Redis(r) => {
                redis::cmd("HKEYS")
                    .arg(self.keys.node_channels(node))
                    .query_async(&mut r.conn.clone())
                    .await
            }
            Engine::Memory(m) => Ok(m.channels(node).into_iter().map(|(c, _)| c).collect()),
        }
    }

    /// Refreshes the TTL of the presence of `channels` (a gateway's channels with
    /// members of its own).
    pub async fn touch(&self, channels: &[Arc<str>]) -> redis::RedisResult<()> {
        let Engine::Redis(r) = &self.engine else {
            // The memory engine's presence lives as long as the process.
            return Ok(());
        };
        let mut pipe = redis::pipe();
        for c in channels {
            pipe.pexpire(self.keys.presence(c), KEY_TTL_MS as i64)
                .ignore();
        }
        pipe.query_async(&mut r.conn.clone()).await
    }

    /// Leaves a mark for `node` saying its members were removed as a dead node's.
    pub async fn mark_reaped(&self, node: &str) -> redis::RedisResult<()> {
        match &self.engine {
            Engine::Redis(r) => {
                redis::cmd("SET")
                    .arg(self.keys.presence_reaped(node))
                    .arg(1)
                    .arg("PX")
                    .arg(REAPED_MARK_TTL_MS)
                    .query_async(&mut r.conn.clone())
                    .await
            }
            // One process: its own gateway cannot be taken for dead.
            Engine::Memory(_) => Ok(()),
        }
    }

    /// Whether `node`'s members were removed as a dead node's since the last call.
    pub async fn take_reaped(&self, node: &str) -> redis::RedisResult<bool> {
        match &self.engine {
            Engine::Redis(r) => {
                let n: u64 = redis::cmd("DEL")
                    .arg(self.keys.presence_reaped(node))
                    .query_async(&mut r.conn.clone())
                    .await?;
                Ok(n > 0)
            }
            Engine::Memory(_) => Ok(false),
        }
    }

    fn sort_args(&self, inv: &mut redis::ScriptInvocation<'_>, channel: &str, alive: &Liveness) {
        inv.key(self.keys.presence(channel))
            .arg(self.keys.channel(channel))
            .arg(channel)
            .arg(now_ms())
            .arg(alive.live.len());
        for n in alive.live.iter().chain(&alive.dead) {
            inv.arg(n);
        }
    }
}

/// The Pub/Sub payload of a change's event.
fn event_payload(c: &Change, published_ms: u64) -> String {
    encode_event(
        published_ms,
        &c.conn_id,
        &event_frame(c.kind, &c.channel, &c.member),
    )
}

/// Counts connections and distinct users in member records.
fn count(members: &[String]) -> Stats {
    #[derive(serde::Deserialize)]
    struct UserOnly {
        user_id: String,
    }
    let users: HashSet<String> = members
        .iter()
        .filter_map(|m| serde_json::from_str::<UserOnly>(m).ok())
        .map(|m| m.user_id)
        .collect();
    Stats {
        num_clients: members.len() as u64,
        num_users: users.len() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_follows_the_last_beat() {
        let l = Liveness::at(
            [("a".to_owned(), 10_000), ("b".to_owned(), 6_000)],
            10_000 + DEAD_AFTER_MS,
        );
        assert_eq!(l.live, vec!["a".to_owned()]);
        assert_eq!(l.dead, vec!["b".to_owned()]);
    }

    #[test]
    fn stats_count_users_once() {
        let s = count(&[
            r#"{"user_id":"a","conn_id":"1"}"#.to_owned(),
            r#"{"user_id":"a","conn_id":"2"}"#.to_owned(),
            r#"{"user_id":"b","conn_id":"3"}"#.to_owned(),
        ]);
        assert_eq!(
            s,
            Stats {
                num_clients: 3,
                num_users: 2
            }
        );
    }
}
