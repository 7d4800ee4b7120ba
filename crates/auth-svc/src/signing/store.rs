//! The key ring in Redis, shared by every auth-svc instance.
//!
//! Redis layout (one hash tag, so the install script works on a cluster):
//! - `herald:auth:{keys}` HASH kid → PKCS#8 PEM private key. Redis is trusted
//!   with the keys, as it is trusted with every session.
//! - `herald:auth:{keys}:current` the kid new tokens are signed with.
//! - `herald:auth:{keys}:retire` HASH kid → ms when a rotated-out key may leave
//!   the JWKS: its rotation plus the access-token life and the leeway.
//! - `herald:auth:{keys}:until` HASH kid → ms until which tokens the key signed
//!   may still be presented: the latest `exp` it signed plus the leeway, rounded
//!   up to [`EXPIRY_STEP_MS`]. Written before a token is handed out, so a token
//!   that outlives the access-token life (`auth-svc token --ttl`) keeps its key
//!   published, and verifiable, for its whole life.
//!
//! A rotated-out key leaves the JWKS once both times have passed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use redis::aio::ConnectionManager;

use herald_common::keys::Keys;
use herald_proto::time::now_ms;

use super::{EXPIRY_STEP_MS, Ed25519Key, KeyError, Ring};

/// Installs a key: with mode `if_none`, only when there is no usable current key
/// (first start; concurrent first starts agree on one key); with `force`, makes
/// it current and schedules the previous current key's retirement. Retired keys
/// whose retirement and `until` have both passed are dropped. Returns the
/// current kid.
const INSTALL_SCRIPT: &str = r"
local cur = redis.call('GET', KEYS[2])
if cur and redis.call('HEXISTS', KEYS[1], cur) == 0 then cur = false end
if ARGV[3] == 'if_none' and cur then return cur end
if cur == ARGV[1] then return cur end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[1])
if cur then redis.call('HSET', KEYS[3], cur, ARGV[5]) end
redis.call('SET', KEYS[2], ARGV[1])
local r = redis.call('HGETALL', KEYS[3])
for i = 1, #r, 2 do
  local untl = tonumber(redis.call('HGET', KEYS[4], r[i]) or '0')
  if math.max(tonumber(r[i + 1]), untl) < tonumber(ARGV[4]) then
    redis.call('HDEL', KEYS[1], r[i])
    redis.call('HDEL', KEYS[3], r[i])
    redis.call('HDEL', KEYS[4], r[i])
  end
end
return ARGV[1]
";

/// Raises a key's `until` to ARGV[2] (never lowers it: concurrent signers agree
/// on the latest). Returns 0 when the key is not in the ring.
const RECORD_SCRIPT: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
local cur = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if tonumber(ARGV[2]) > cur then redis.call('HSET', KEYS[2], ARGV[1], ARGV[2]) end
return 1
";

/// The `until` step covering a token that expires at `exp` (seconds).
pub(super) fn until_step(exp: u64, leeway_ms: u64) -> u64 {
    exp.saturating_mul(1000)
        .saturating_add(leeway_ms)
        .div_ceil(EXPIRY_STEP_MS)
        .saturating_mul(EXPIRY_STEP_MS)
}

/// The ring as read from Redis: PEMs by kid, the current kid, retirements
/// and `until`s by kid.
type RingFields = (
    HashMap<String, String>,
    Option<String>,
    HashMap<String, u64>,
    HashMap<String, u64>,
);

/// Where the ring lives in Redis.
#[derive(Debug, Clone)]
pub struct KeyStore {
    ring: String,
    current: String,
    retire: String,
    until: String,
    /// The least time a rotated-out key stays published.
    retention_ms: u64,
    /// The verifiers' clock-skew leeway: a token is accepted this long after its `exp`.
    leeway_ms: u64,
    /// The kid and `until` step this instance last wrote, so that tokens whose
    /// step is already recorded cost no Redis write.
    recorded: Arc<Mutex<Option<(String, u64)>>>,
}

impl KeyStore {
    pub fn new(keys: &Keys, retention_ms: u64, leeway_ms: u64) -> Self {
        Self {
            ring: keys.other("auth:{keys}"),
            current: keys.other("auth:{keys}:current"),
            retire: keys.other("auth:{keys}:retire"),
            until: keys.other("auth:{keys}:until"),
            retention_ms,
            leeway_ms,
            recorded: Arc::new(Mutex::new(None)),
        }
    }

    async fn install(
        &self,
        conn: &mut ConnectionManager,
        key: &Ed25519Key,
        force: bool,
    ) -> Result<String, KeyError> {
        let now = now_ms();
        let kid: String = redis::Script::new(INSTALL_SCRIPT)
            .key(&self.ring)
            .key(&self.current)
            .key(&self.retire)
            .key(&self.until)
            .arg(&key.kid)
            .arg(&key.pem)
            .arg(if force { "force" } else { "if_none" })
            .arg(now)
            .arg(now + self.retention_ms)
            .invoke_async(conn)
            .await?;
        Ok(kid)
    }

    /// Makes sure a current key exists: `configured` (from
    /// `HERALD_JWT_PRIVATE_KEY_FILE`) becomes current, or a key is generated when
    /// Redis has none. Returns the current kid.
    pub async fn ensure(
        &self,
        conn: &mut ConnectionManager,
        configured: Option<&Ed25519Key>,
    ) -> Result<String, KeyError> {
        match configured {
            Some(k) => self.install(conn, k, true).await,
            None => self.install(conn, &Ed25519Key::generate()?, false).await,
        }
    }

    /// Adds a new current key; the previous one is retired after the retention.
    pub async fn rotate(&self, conn: &mut ConnectionManager) -> Result<String, KeyError> {
        self.install(conn, &Ed25519Key::generate()?, true).await
    }

    /// Keeps `kid` published until a token it signed with `exp` (seconds) has
    /// expired, leeway included. Call it before handing the token out.
    pub async fn record_expiry(
        &self,
        conn: &mut ConnectionManager,
        kid: &str,
        exp: u64,
    ) -> Result<(), KeyError> {
        let step = until_step(exp, self.leeway_ms);
        let done = self
            .recorded
            .lock()
            .map(|g| matches!(&*g, Some((k, at)) if k == kid && *at >= step))
            .unwrap_or(false);
        if done {
            return Ok(());
        }
        let known: i64 = redis::Script::new(RECORD_SCRIPT)
            .key(&self.ring)
            .key(&self.until)
            .arg(kid)
            .arg(step)
            .invoke_async(conn)
            .await?;
        if known == 0 {
            tracing::warn!(kid, "signed with a key that is no longer in the key ring");
            return Ok(());
        }
        if let Ok(mut g) = self.recorded.lock() {
            match &mut *g {
                Some((k, at)) if k == kid => *at = (*at).max(step),
                other => *other = Some((kid.to_owned(), step)),
            }
        }
        Ok(())
    }

    /// Reads the ring, reusing already parsed keys from `previous`.
    pub async fn load(
        &self,
        conn: &mut ConnectionManager,
        previous: Option<&Ring>,
    ) -> Result<Ring, KeyError> {
        let (pems, current, retire, until): RingFields = redis::pipe()
            .cmd("HGETALL")
            .arg(&self.ring)
            .cmd("GET")
            .arg(&self.current)
            .cmd("HGETALL")
            .arg(&self.retire)
            .cmd("HGETALL")
            .arg(&self.until)
            .query_async(conn)
            .await?;
        let now = now_ms();
        let mut keys = HashMap::new();
        for (kid, pem) in pems {
            let retired = retire
                .get(&kid)
                .is_some_and(|&at| at.max(until.get(&kid).copied().unwrap_or_default()) < now);
            if retired {
                continue;
            }
            let key = match previous.and_then(|r| r.keys.get(&kid)) {
                Some(k) => k.clone(),
                None => match Ed25519Key::from_pem(&pem) {
                    Ok(k) if k.kid == kid => Arc::new(k),
                    Ok(_) | Err(_) => {
                        tracing::warn!(kid, "ignoring an unusable key in the key ring");
                        continue;
                    }
                },
            };
            keys.insert(kid, key);
        }
        let current = current
            .and_then(|kid| keys.get(&kid).cloned())
            .ok_or(KeyError::NoCurrent)?;
        Ok(Ring { current, keys })
    }
}
