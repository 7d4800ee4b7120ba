//! The key ring, in Redis shared by every auth-svc instance.
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
//!
//! On the memory engine the same four records live in this process
//! ([`MemoryRing`]) and follow the same rules. They are not durable: each start
//! generates a key, as a first start with Redis does (or installs the configured
//! one), so tokens signed before a restart no longer verify after it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use herald_common::keys::Keys;
use herald_proto::time::now_ms;

use super::{EXPIRY_STEP_MS, Ed25519Key, KeyError, Ring};
use crate::store::{AuthStore, lock};

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

/// The ring as read: PEMs by kid, the current kid, retirements and `until`s
/// by kid.
type RingFields = (
    HashMap<String, String>,
    Option<String>,
    HashMap<String, u64>,
    HashMap<String, u64>,
);

/// Where the ring lives (its Redis keys) and the rules it follows.
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
        store: &AuthStore,
        key: &Ed25519Key,
        force: bool,
    ) -> Result<String, KeyError> {
        let now = now_ms();
        let mut conn = match store {
            AuthStore::Redis(c) => c.clone(),
            AuthStore::Memory(m) => {
                return Ok(m.ring.install(key, force, now, now + self.retention_ms));
            }
        };
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
            .invoke_async(&mut conn)
            .await?;
        Ok(kid)
    }

    /// Makes sure a current key exists: `configured` (from
    /// `HERALD_JWT_PRIVATE_KEY_FILE`) becomes current, or a key is generated when
    /// the ring has none. Returns the current kid.
    pub async fn ensure(
        &self,
        store: &AuthStore,
        configured: Option<&Ed25519Key>,
    ) -> Result<String, KeyError> {
        match configured {
            Some(k) => self.install(store, k, true).await,
            None => self.install(store, &Ed25519Key::generate()?, false).await,
        }
    }

    /// Adds a new current key; the previous one is retired after the retention.
    pub async fn rotate(&self, store: &AuthStore) -> Result<String, KeyError> {
        self.install(store, &Ed25519Key::generate()?, true).await
    }

    /// Keeps `kid` published until a token it signed with `exp` (seconds) has
    /// expired, leeway included. Call it before handing the token out.
    pub async fn record_expiry(
        &self,
        store: &AuthStore,
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
        let known = match store {
            AuthStore::Redis(c) => {
                let known: i64 = redis::Script::new(RECORD_SCRIPT)
                    .key(&self.ring)
                    .key(&self.until)
                    .arg(kid)
                    .arg(step)
                    .invoke_async(&mut c.clone())
                    .await?;
                known != 0
            }
            AuthStore::Memory(m) => m.ring.record(kid, step),
        };
        if !known {
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
    pub async fn load(&self, store: &AuthStore, previous: Option<&Ring>) -> Result<Ring, KeyError> {
        let (pems, current, retire, until): RingFields = match store {
            AuthStore::Redis(c) => {
                redis::pipe()
                    .cmd("HGETALL")
                    .arg(&self.ring)
                    .cmd("GET")
                    .arg(&self.current)
                    .cmd("HGETALL")
                    .arg(&self.retire)
                    .cmd("HGETALL")
                    .arg(&self.until)
                    .query_async(&mut c.clone())
                    .await?
            }
            AuthStore::Memory(m) => m.ring.fields(),
        };
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

/// The key ring on the memory engine: the four Redis records, under one lock
/// (the scripts' atomicity).
#[derive(Default)]
pub(crate) struct MemoryRing(Mutex<RingState>);

impl std::fmt::Debug for MemoryRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Private keys stay out of logs.
        f.debug_struct("MemoryRing")
            .field("keys", &lock(&self.0).pems.len())
            .finish()
    }
}

#[derive(Default, Clone)]
struct RingState {
    pems: HashMap<String, String>,
    current: Option<String>,
    retire: HashMap<String, u64>,
    until: HashMap<String, u64>,
}

impl MemoryRing {
    /// The install script's steps, on the maps: see [`INSTALL_SCRIPT`].
    fn install(&self, key: &Ed25519Key, force: bool, now: u64, retire_at: u64) -> String {
        let mut guard = lock(&self.0);
        let s = &mut *guard;
        let cur = s.current.clone().filter(|c| s.pems.contains_key(c));
        if let Some(cur) = &cur
            && (!force || *cur == key.kid)
        {
            return cur.clone();
        }
        s.pems.insert(key.kid.clone(), key.pem.clone());
        s.retire.remove(&key.kid);
        if let Some(cur) = cur {
            s.retire.insert(cur, retire_at);
        }
        s.current = Some(key.kid.clone());
        let gone: Vec<String> = s
            .retire
            .iter()
            .filter(|(kid, at)| (**at).max(s.until.get(*kid).copied().unwrap_or(0)) < now)
            .map(|(kid, _)| kid.clone())
            .collect();
        for kid in gone {
            s.pems.remove(&kid);
            s.retire.remove(&kid);
            s.until.remove(&kid);
        }
        key.kid.clone()
    }

    /// Raises `kid`'s `until` to `step`; false when the key is not in the ring.
    fn record(&self, kid: &str, step: u64) -> bool {
        let mut s = lock(&self.0);
        if !s.pems.contains_key(kid) {
            return false;
        }
        let until = s.until.entry(kid.to_owned()).or_insert(0);
        *until = (*until).max(step);
        true
    }

    fn fields(&self) -> RingFields {
        let s = lock(&self.0).clone();
        (s.pems, s.current, s.retire, s.until)
    }
}
