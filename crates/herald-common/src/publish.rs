//! The publish path's Redis side: one Lua script assigns the next offset, appends the
//! finished frame to the channel's history stream and PUBLISHes it, so offset order,
//! history order and delivery order always agree. A second script answers recovery
//! requests ("everything after offset N in epoch E") all or nothing.
//!
//! [`Publisher`] runs them on the cluster's [`Engine`]; the memory engine gives
//! the same answers in one process.

use redis::Script;

use herald_proto::envelope::FrameTemplate;

use crate::engine::Engine;
use crate::keys::Keys;

/// Default number of messages kept per channel for recovery.
pub const DEFAULT_HISTORY_SIZE: u64 = 1000;
/// Default lifetime of a channel's history after its last publish.
pub const DEFAULT_HISTORY_TTL_MS: u64 = 10 * 60 * 1000;
/// Channel metadata (epoch, last offset) outlives its history by this much, so a
/// quiet channel keeps its offsets instead of restarting at 1 in a new epoch.
pub const META_EXTRA_TTL_MS: u64 = 24 * 60 * 60 * 1000;
/// The most messages one recovery may replay.
pub const MAX_RECOVERY: u64 = 10_000;

/// KEYS: meta, history, [once]. ARGV: pubsub channel, head, tail, history size,
/// history ttl, candidate epoch, publish ms, meta ttl, [once ttl].
/// With a third key, a publish already made under it returns its first result
/// and publishes nothing (idempotency keys, exactly-once job results).
const PUBLISH_LUA: &str = r#"
if KEYS[3] then
  local done = redis.call('GET', KEYS[3])
  if done then
    local sp = string.find(done, ' ')
    return {tonumber(string.sub(done, 1, sp - 1)), string.sub(done, sp + 1), 1}
  end
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[6]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
end
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
local off = string.format('%d', offset)
local frame = ARGV[2] .. off .. ',"epoch":"' .. epoch .. '"' .. ARGV[3]
local size = tonumber(ARGV[4])
if size > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', size, off .. '-0', 'f', frame, 't', ARGV[7])
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
redis.call('PEXPIRE', KEYS[1], ARGV[8])
redis.call('PUBLISH', ARGV[1], off .. ' ' .. epoch .. ' ' .. ARGV[7] .. '\n' .. frame)
if KEYS[3] then
  redis.call('SET', KEYS[3], off .. ' ' .. epoch, 'PX', ARGV[9])
end
return {offset, epoch, 0}
"#;

/// KEYS: meta, history. ARGV: since offset, since epoch ('' = none), max replay,
/// candidate epoch, meta ttl. Returns {top, epoch, recovered(0/1), frame...}.
const RECOVER_LUA: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[4]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
local top = tonumber(redis.call('HGET', KEYS[1], 'offset') or '0')
if ARGV[2] == '' then
  return {top, epoch, 0}
end
local since = tonumber(ARGV[1])
if ARGV[2] ~= epoch or since > top then
  return {top, epoch, 0}
end
local need = top - since
if need == 0 then
  return {top, epoch, 1}
end
if need > tonumber(ARGV[3]) then
  return {top, epoch, 0}
end
local entries = redis.call('XRANGE', KEYS[2], string.format('%d', since + 1) .. '-0', '+', 'COUNT', need)
if #entries ~= need then
  return {top, epoch, 0}
end
local first = entries[1][1]
if first ~= string.format('%d', since + 1) .. '-0' then
  return {top, epoch, 0}
end
local out = {top, epoch, 1}
for i = 1, #entries do
  local fields = entries[i][2]
  for j = 1, #fields, 2 do
    if fields[j] == 'f' then
      out[#out + 1] = fields[j + 1]
    end
  end
end
return out
"#;

/// KEYS: meta, history. ARGV: after offset, since epoch ('' = none), limit,
/// reverse (0/1), candidate epoch, meta ttl. Returns {top, epoch, frame...}: up to
/// `limit` frames after `after` when the epoch is current (else from the oldest
/// kept), oldest first or, reversed, newest first.
/// Starts the channel over (a new epoch on its next publish) if it is still at
/// epoch ARGV[1] below offset ARGV[2]: KEYS meta, history. Conditional, so several
/// gateways that noticed the same loss start it over once.
const RESTART_LUA: &str = r#"
local e = redis.call('HGET', KEYS[1], 'epoch')
local o = tonumber(redis.call('HGET', KEYS[1], 'offset') or '0')
if e == ARGV[1] and o < tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
return 0
"#;

const HISTORY_LUA: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[5]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
end
local top = tonumber(redis.call('HGET', KEYS[1], 'offset') or '0')
local after = 0
if ARGV[2] == epoch then after = tonumber(ARGV[1]) end
local from = string.format('%d', after + 1) .. '-0'
local entries
if ARGV[4] == '1' then
  entries = redis.call('XREVRANGE', KEYS[2], '+', from, 'COUNT', ARGV[3])
else
  entries = redis.call('XRANGE', KEYS[2], from, '+', 'COUNT', ARGV[3])
end
local out = {top, epoch}
for i = 1, #entries do
  local fields = entries[i][2]
  for j = 1, #fields, 2 do
    if fields[j] == 'f' then
      out[#out + 1] = fields[j + 1]
    end
  end
end
return out
"#;

/// What a history read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    /// The channel's latest offset.
    pub offset: u64,
    pub epoch: String,
    /// Kept frames, in the order asked for.
    pub frames: Vec<String>,
}

/// A history read: after which position, how many, which way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryQuery<'a> {
    /// Only frames after this offset, when the epoch is the channel's current one
    /// (another epoch's offsets say nothing about this one: then from the oldest).
    pub since: Option<(u64, &'a str)>,
    pub limit: u64,
    /// Newest first.
    pub reverse: bool,
}

/// History settings shared by every publisher.
#[derive(Debug, Clone, Copy)]
pub struct HistoryConfig {
    pub size: u64,
    pub ttl_ms: u64,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            size: DEFAULT_HISTORY_SIZE,
            ttl_ms: DEFAULT_HISTORY_TTL_MS,
        }
    }
}

/// Publishes frames to channels and reads their history.
#[derive(Debug, Clone)]
pub struct Publisher {
    engine: Engine,
    keys: Keys,
    history: HistoryConfig,
    publish: Script,
    recover: Script,
    read_history: Script,
    restart: Script,
}

/// What a recovery read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// The channel's latest offset.
    pub offset: u64,
    pub epoch: String,
    /// Whether `frames` is every message after the requested position.
    pub recovered: bool,
    /// The missed frames, oldest first (empty unless `recovered`).
    pub frames: Vec<String>,
}

/// A fresh epoch: random, short, and safe to splice into JSON.
pub fn new_epoch() -> String {
    format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

/// A script that sends on a channel's Pub/Sub name: on a cluster its `PUBLISH`
/// becomes `SPUBLISH`, to the shard channel in the slot of the script's keys.
pub(crate) fn channel_script(keys: &Keys, lua: &str) -> Script {
    if keys.is_sharded() {
        Script::new(&lua.replace("redis.call('PUBLISH'", "redis.call('SPUBLISH'"))
    } else {
        Script::new(lua)
    }
}

impl Publisher {
    pub fn new(engine: Engine, keys: Keys, history: HistoryConfig) -> Self {
        Self {
            publish: channel_script(&keys, PUBLISH_LUA),
            engine,
            keys,
            history,
            recover: Script::new(RECOVER_LUA),
            read_history: Script::new(HISTORY_LUA),
            restart: Script::new(RESTART_LUA),
        }
    }

    /// The engine it publishes on.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Publishes a frame to `channel`; returns its `(offset, epoch)`.
    pub async fn publish(
        &self,
        channel: &str,
        frame: &FrameTemplate,
        published_ms: u64,
    ) -> redis::RedisResult<(u64, String)> {
        let (offset, epoch, _) = self
            .publish_with(channel, frame, published_ms, None)
            .await?;
        Ok((offset, epoch))
    }

    /// Publishes at most once per `once_id` within `once_ttl_ms`: a repeat returns the
    /// first publish's `(offset, epoch)` with `true` and publishes nothing. The check
    /// and the publish are one script, so two racing callers cannot both publish.
    pub async fn publish_once(
        &self,
        channel: &str,
        frame: &FrameTemplate,
        published_ms: u64,
        once_id: &str,
        once_ttl_ms: u64,
    ) -> redis::RedisResult<(u64, String, bool)> {
        self.publish_with(channel, frame, published_ms, Some((once_id, once_ttl_ms)))
            .await
    }

    async fn publish_with(
        &self,
        channel: &str,
        frame: &FrameTemplate,
        published_ms: u64,
        once: Option<(&str, u64)>,
    ) -> redis::RedisResult<(u64, String, bool)> {
        match &self.engine {
            Engine::Redis(r) => {
                let (offset, epoch, dup): (u64, String, u8) = self
                    .publish_invocation(channel, frame, published_ms, once)
                    .invoke_async(&mut r.conn.clone())
                    .await?;
                Ok((offset, epoch, dup == 1))
            }
            Engine::Memory(m) => Ok(m.publish(
                self.history,
                channel,
                &self.keys.channel(channel),
                frame,
                published_ms,
                once,
            )),
        }
    }

    /// The publish script's keys and arguments (see `PUBLISH_LUA`).
    fn publish_invocation(
        &self,
        channel: &str,
        frame: &FrameTemplate,
        published_ms: u64,
        once: Option<(&str, u64)>,
    ) -> redis::ScriptInvocation<'_> {
        let mut inv = self.publish.prepare_invoke();
        inv.key(self.keys.meta(channel))
            .key(self.keys.history(channel));
        if let Some((id, _)) = once {
            inv.key(self.keys.once(channel, id));
        }
        inv.arg(self.keys.channel(channel))
            .arg(&frame.head)
            .arg(&frame.tail)
            .arg(self.history.size)
            .arg(self.history.ttl_ms.max(1))
            .arg(new_epoch())
            .arg(published_ms)
            .arg(self.history.ttl_ms + META_EXTRA_TTL_MS);
        if let Some((_, ttl)) = once {
            inv.arg(ttl.max(1));
        }
        inv
    }

    /// The channel's position, and with `since` every message after it.
    pub async fn recover(
        &self,
        channel: &str,
        since: Option<(u64, &str)>,
    ) -> redis::RedisResult<Recovery> {
        let max = MAX_RECOVERY.min(self.history.size.max(1));
        let r = match &self.engine {
            Engine::Redis(r) => r,
            Engine::Memory(m) => return Ok(m.recover(self.history, channel, since, max)),
        };
        let (since_offset, since_epoch) = since.unwrap_or((0, ""));
        let reply: Vec<redis::Value> = self
            .recover
            .key(self.keys.meta(channel))
            .key(self.keys.history(channel))
            .arg(since_offset)
            .arg(since_epoch)
            .arg(max)
            .arg(new_epoch())
            .arg(self.history.ttl_ms + META_EXTRA_TTL_MS)
            .invoke_async(&mut r.conn.clone())
            .await?;
        parse_recovery(reply)
    }

    /// Frames with offsets `from..=to` of the current epoch, oldest first; fewer
    /// when history no longer holds them. Used by gateways to fill their own gaps.
    pub async fn range(
        &self,
        channel: &str,
        from: u64,
        to: u64,
    ) -> redis::RedisResult<Vec<(u64, String)>> {
        if from > to {
            return Ok(Vec::new());
        }
        let r = match &self.engine {
            Engine::Redis(r) => r,
            Engine::Memory(m) => return Ok(m.range(channel, from, to)),
        };
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(self.keys.history(channel))
            .arg(format!("{from}-0"))
            .arg(format!("{to}-0"))
            .query_async(&mut r.conn.clone())
            .await?;
        Ok(reply
            .ids
            .into_iter()
            .filter_map(|e| {
                let offset = e.id.split('-').next()?.parse().ok()?;
                let frame: String = e.get("f")?;
                Some((offset, frame))
            })
            .collect())
    }

    /// The channel's kept messages as `query` asks, with its position (a channel
    /// never published to gets its epoch here, as on subscribe).
    pub async fn history(
        &self,
        channel: &str,
        query: HistoryQuery<'_>,
    ) -> redis::RedisResult<History> {
        let meta_ttl = self.history.ttl_ms + META_EXTRA_TTL_MS;
        let r = match &self.engine {
            Engine::Redis(r) => r,
            Engine::Memory(m) => return Ok(m.history(channel, query, meta_ttl)),
        };
        let (after, since_epoch) = query.since.unwrap_or((0, ""));
        let reply: Vec<redis::Value> = self
            .read_history
            .key(self.keys.meta(channel))
            .key(self.keys.history(channel))
            .arg(after)
            .arg(since_epoch)
            .arg(query.limit.max(1))
            .arg(u8::from(query.reverse))
            .arg(new_epoch())
            .arg(meta_ttl)
            .invoke_async(&mut r.conn.clone())
            .await?;
        let mut reply = ScriptReply::new(reply, "history");
        Ok(History {
            offset: reply.next()?,
            epoch: reply.next()?,
            frames: reply.rest()?,
        })
    }

    /// Forgets the channel's history and position: the next publish starts a new
    /// epoch at offset 1, so a client recovering from the old one is told
    /// `recovered:false` rather than given a wrong answer.
    /// Starts `channel` over if it is still at `epoch` and below offset `below`:
    /// its history and position are dropped, so its next publish opens a new epoch.
    /// For a channel that went back in time (Redis lost writes subscribers had
    /// received): under the same epoch, new messages would reuse offsets already
    /// seen. Says whether it did.
    pub async fn restart_epoch(
        &self,
        channel: &str,
        epoch: &str,
        below: u64,
    ) -> redis::RedisResult<bool> {
        match &self.engine {
            Engine::Redis(r) => {
                let done: u8 = self
                    .restart
                    .key(self.keys.meta(channel))
                    .key(self.keys.history(channel))
                    .arg(epoch)
                    .arg(below)
                    .invoke_async(&mut r.conn.clone())
                    .await?;
                Ok(done == 1)
            }
            Engine::Memory(m) => match m.position(channel) {
                Some((offset, e)) if e == epoch && offset < below => {
                    m.delete_channel(channel);
                    Ok(true)
                }
                _ => Ok(false),
            },
        }
    }

    pub async fn delete_history(&self, channel: &str) -> redis::RedisResult<()> {
        match &self.engine {
            Engine::Redis(r) => {
                redis::cmd("DEL")
                    .arg(self.keys.meta(channel))
                    .arg(self.keys.history(channel))
                    .query_async(&mut r.conn.clone())
                    .await
            }
            Engine::Memory(m) => {
                m.delete_channel(channel);
                Ok(())
            }
        }
    }

    /// The channel's `(offset, epoch)` without creating anything.
    pub async fn position(&self, channel: &str) -> redis::RedisResult<Option<(u64, String)>> {
        let r = match &self.engine {
            Engine::Redis(r) => r,
            Engine::Memory(m) => return Ok(m.position(channel)),
        };
        let (epoch, offset): (Option<String>, Option<u64>) = redis::cmd("HMGET")
            .arg(self.keys.meta(channel))
            .arg("epoch")
            .arg("offset")
            .query_async(&mut r.conn.clone())
            .await?;
        Ok(epoch.map(|e| (offset.unwrap_or(0), e)))
    }
}

fn parse_recovery(reply: Vec<redis::Value>) -> redis::RedisResult<Recovery> {
    let mut reply = ScriptReply::new(reply, "recovery");
    Ok(Recovery {
        offset: reply.next()?,
        epoch: reply.next()?,
        recovered: reply.next::<u8>()? == 1,
        frames: reply.rest()?,
    })
}

/// A script's array reply read in order: a few leading values, then frames.
pub(crate) struct ScriptReply {
    values: std::vec::IntoIter<redis::Value>,
    what: &'static str,
}

impl ScriptReply {
    pub(crate) fn new(reply: Vec<redis::Value>, what: &'static str) -> Self {
        Self {
            values: reply.into_iter(),
            what,
        }
    }

    pub(crate) fn next<T: redis::FromRedisValue>(&mut self) -> redis::RedisResult<T> {
        let value = self.values.next().ok_or_else(|| {
            redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "malformed script reply",
                self.what.to_owned(),
            ))
        })?;
        Ok(redis::from_redis_value(value)?)
    }

    pub(crate) fn rest(self) -> redis::RedisResult<Vec<String>> {
        self.values
            .map(|v| Ok(redis::from_redis_value(v)?))
            .collect()
    }
}
