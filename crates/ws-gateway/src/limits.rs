//! Per-IP limits that hold across the whole cluster: live connections per IP and
//! connection attempts per second per IP, counted in the engine (on Redis by one
//! script) once per connection attempt (never per message).
//!
//! Each gateway's share of an IP's connections is a field of one HASH, stamped with
//! the time the gateway last confirmed it; shares not confirmed for
//! [`STALE_MS`] (a dead gateway's) stop counting and are removed, so a crashed
//! gateway cannot lock an IP out for long. If Redis is unreachable the gateway
//! falls back to its local count, so limits still hold per node.
//!
//! A slot is taken with the attempt, before authentication (one script counts both
//! the attempt and the connection). A connection that ends normally gives its slot
//! back in the presence task's next batch; a refused one ([`IpSlot::release`]) gives
//! it back before the refusal is answered, so refused attempts never count as held
//! connections — they count only against the attempt rate.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::Script;

use herald_common::engine::Engine;

use herald_common::keys::Keys;
use herald_proto::node::LimitKind;
use herald_proto::time::now_ms;

/// A gateway's share of an IP's connections stops counting after this long without
/// being refreshed (the presence task refreshes every few seconds).
pub(crate) const STALE_MS: u64 = 15_000;
/// The per-IP HASH outlives its last write by this much.
pub(crate) const KEY_TTL_MS: u64 = 60_000;
/// How long a refused connection's release may wait for Redis before it is left to
/// the presence task's next batch instead.
const RELEASE_TIMEOUT: Duration = Duration::from_millis(500);

const ACQUIRE_LUA: &str = r#"
local n = redis.call('INCR', KEYS[2])
if n == 1 then redis.call('PEXPIRE', KEYS[2], 2000) end
if n > tonumber(ARGV[5]) then return -2 end
local now = tonumber(ARGV[2])
local stale = tonumber(ARGV[3])
local all = redis.call('HGETALL', KEYS[1])
local counts = {}
local stamps = {}
for i = 1, #all, 2 do
  local f = all[i]
  if string.sub(f, -2) == ':t' then
    stamps[string.sub(f, 1, -3)] = tonumber(all[i + 1])
  else
    counts[f] = tonumber(all[i + 1])
  end
end
local total = 0
for node, c in pairs(counts) do
  local t = stamps[node] or 0
  if node ~= ARGV[1] and now - t > stale then
    redis.call('HDEL', KEYS[1], node, node .. ':t')
  else
    total = total + c
  end
end
if total >= tonumber(ARGV[4]) then return -1 end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('HSET', KEYS[1], ARGV[1] .. ':t', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return total + 1
"#;

/// Why a connection attempt was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Too many live connections from this IP.
    TooMany,
    /// Too many attempts from this IP this second.
    TooFast,
}

impl Refusal {
    /// The kind the refusal is counted and reported under.
    pub(crate) fn kind(self) -> LimitKind {
        match self {
            Refusal::TooMany => LimitKind::Connection,
            Refusal::TooFast => LimitKind::ConnectRate,
        }
    }
}

/// The cluster-wide per-IP limiter.
#[derive(Debug)]
pub(crate) struct IpLimiter {
    keys: Keys,
    node: String,
    max_conns: u32,
    max_rate: u32,
    script: Script,
    /// This node's live connections per IP (the truth the Redis share is refreshed from).
    local: Mutex<HashMap<IpAddr, u32>>,
}

/// A held connection slot; dropping it gives the slot back (in Redis with the
/// presence task's next batch), [`IpSlot::release`] gives it back at once.
#[derive(Debug)]
pub(crate) struct IpSlot {
    ip: IpAddr,
    limiter: Arc<IpLimiter>,
    release: tokio::sync::mpsc::UnboundedSender<IpAddr>,
    /// Whether the script counted this slot in Redis (not when it was taken from the
    /// local count during an outage; the presence task reconciles those).
    in_redis: bool,
    /// Whether [`IpSlot::release`] already gave the slot back.
    released: bool,
}

impl IpSlot {
    /// Gives the slot back now, in Redis too, so that the next attempt from this
    /// address — on any gateway — no longer counts it. For connections refused
    /// before they were ever served; falls back to the batched release if Redis
    /// does not answer in time.
    pub(crate) async fn release(mut self, engine: &Engine) {
        self.released = true;
        self.limiter.release_local(self.ip);
        if !self.in_redis {
            let _ = self.release.send(self.ip);
            return;
        }
        let conn = match engine {
            Engine::Redis(r) => &mut r.conn.clone(),
            Engine::Memory(m) => {
                m.ip_add(self.ip, &self.limiter.node, -1);
                return;
            }
        };
        let res: redis::RedisResult<i64> = tokio::time::timeout(
            RELEASE_TIMEOUT,
            redis::cmd("HINCRBY")
                .arg(self.limiter.keys.ip_connections(self.ip))
                .arg(&self.limiter.node)
                .arg(-1)
                .query_async(conn),
        )
        .await
        .unwrap_or_else(|_| Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()));
        if res.is_err() {
            let _ = self.release.send(self.ip);
        }
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if !self.released {
            self.limiter.release_local(self.ip);
            let _ = self.release.send(self.ip);
        }
    }
}

impl IpLimiter {
    pub(crate) fn new(keys: Keys, node: String, max_conns: u32, max_rate: u32) -> Self {
        Self {
            keys,
            node,
            max_conns,
            max_rate,
            script: Script::new(ACQUIRE_LUA),
            local: Mutex::new(HashMap::new()),
        }
    }

    fn local(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, u32>> {
        self.local
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn release_local(&self, ip: IpAddr) {
        let mut local = self.local();
        if let Some(n) = local.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                local.remove(&ip);
            }
        }
    }

    /// This node's live connections per IP.
    pub(crate) fn snapshot(&self) -> Vec<(IpAddr, u32)> {
        self.local().iter().map(|(k, v)| (*k, *v)).collect()
    }

    /// The acquire script's answer (see `ACQUIRE_LUA`).
    async fn acquire_in_redis(
        &self,
        conn: &mut herald_common::store::Conn,
        ip: IpAddr,
        now: u64,
    ) -> redis::RedisResult<i64> {
        self.script
            .key(self.keys.ip_connections(ip))
            .key(self.keys.ip_attempts(ip, now / 1000))
            .arg(&self.node)
            .arg(now)
            .arg(STALE_MS)
            .arg(self.max_conns)
            .arg(self.max_rate)
            .arg(KEY_TTL_MS)
            .invoke_async(conn)
            .await
    }

    /// Takes a slot for `ip`, or says why not.
    pub(crate) async fn acquire(
        self: &Arc<Self>,
        engine: &Engine,
        ip: IpAddr,
        release: tokio::sync::mpsc::UnboundedSender<IpAddr>,
    ) -> Result<IpSlot, Refusal> {
        let now = now_ms();
        let res: redis::RedisResult<i64> = match engine {
            Engine::Redis(r) => self.acquire_in_redis(&mut r.conn.clone(), ip, now).await,
            Engine::Memory(m) => {
                Ok(m.ip_acquire(ip, &self.node, STALE_MS, self.max_conns, self.max_rate))
            }
        };
        let in_redis = match res {
            Ok(-2) => return Err(Refusal::TooFast),
            Ok(n) if n < 0 => return Err(Refusal::TooMany),
            Ok(_) => {
                *self.local().entry(ip).or_insert(0) += 1;
                true
            }
            Err(e) => {
                // Redis is away: hold the limit on this node alone.
                tracing::debug!(cause = %e, "per-IP limit falls back to the local count");
                let mut local = self.local();
                let n = local.entry(ip).or_insert(0);
                if *n >= self.max_conns {
                    return Err(Refusal::TooMany);
                }
                *n += 1;
                false
            }
        };
        Ok(IpSlot {
            ip,
            limiter: self.clone(),
            release,
            in_redis,
            released: false,
        })
    }
}
