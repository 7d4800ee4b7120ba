//! Refresh tokens: opaque `<family>.<secret>` strings, stored only as a SHA-256
//! of the secret. Each use rotates the token within its family; presenting a
//! token that was already used revokes the whole family (the OAuth 2.0
//! "refresh token reuse detection" pattern), atomically in one script.
//!
//! Redis layout, one Cluster hash tag per family:
//! - `herald:auth:rt:{<family>}:<sha256>` HASH `user`, `used` (0/1), TTL = refresh TTL.
//! - `herald:auth:rtf:{<family>}` SET of the family's token keys; its absence
//!   means the family was revoked.
//!
//! On the memory engine, the same records in one map of families, each with its
//! tokens by hash, under one lock (the script's atomicity).

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};

use herald_common::keys::Keys;
use herald_proto::time::now_ms;

use crate::store::{AuthStore, Sweep, lock};

const FAMILY_BYTES: usize = 16;
const SECRET_BYTES: usize = 32;

/// Stores the first token of a new family.
const ISSUE_SCRIPT: &str = r"
redis.call('HSET', KEYS[1], 'user', ARGV[1], 'used', '0')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], KEYS[1])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
";

/// Rotates KEYS[1] into KEYS[3]. A used token revokes its family: every token
/// key in the family set is deleted (they share the family's hash tag, so this
/// stays within one Cluster slot).
const ROTATE_SCRIPT: &str = r"
local t = redis.call('HMGET', KEYS[1], 'user', 'used')
if not t[1] then return {'unknown'} end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('DEL', KEYS[1])
  return {'unknown'}
end
if t[2] ~= '0' then
  for _, k in ipairs(redis.call('SMEMBERS', KEYS[2])) do redis.call('DEL', k) end
  redis.call('DEL', KEYS[2])
  return {'reused', t[1]}
end
redis.call('HSET', KEYS[1], 'used', '1')
redis.call('HSET', KEYS[3], 'user', t[1], 'used', '0')
redis.call('PEXPIRE', KEYS[3], ARGV[1])
redis.call('SADD', KEYS[2], KEYS[3])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return {'ok', t[1]}
";

/// A refresh token, parsed.
#[derive(Clone, PartialEq, Eq)]
pub struct RefreshToken {
    family: String,
    secret: String,
}

impl std::fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret is a credential: never printed.
        f.debug_struct("RefreshToken")
            .field("family", &self.family)
            .finish_non_exhaustive()
    }
}

impl RefreshToken {
    /// A token in a new family.
    pub fn new_family() -> Self {
        Self::in_family(random_b64(FAMILY_BYTES))
    }

    /// The next token of this token's family.
    pub fn next(&self) -> Self {
        Self::in_family(self.family.clone())
    }

    fn in_family(family: String) -> Self {
        Self {
            family,
            secret: random_b64(SECRET_BYTES),
        }
    }

    /// Parses what a client sent; `None` for anything that is not one of ours.
    pub fn parse(s: &str) -> Option<Self> {
        let (family, secret) = s.split_once('.')?;
        let ok = |part: &str, len: usize| {
            URL_SAFE_NO_PAD
                .decode(part)
                .is_ok_and(|bytes| bytes.len() == len)
        };
        (ok(family, FAMILY_BYTES) && ok(secret, SECRET_BYTES)).then(|| Self {
            family: family.to_owned(),
            secret: secret.to_owned(),
        })
    }

    /// What the client holds.
    pub fn expose(&self) -> String {
        format!("{}.{}", self.family, self.secret)
    }

    /// What is stored of the secret.
    fn hash(&self) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(self.secret.as_bytes()))
    }

    fn key(&self, keys: &Keys) -> String {
        keys.other(&format!("auth:rt:{{{}}}:{}", self.family, self.hash()))
    }

    fn family_key(&self, keys: &Keys) -> String {
        keys.other(&format!("auth:rtf:{{{}}}", self.family))
    }
}

fn random_b64(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The outcome of presenting a refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// Valid: the new token is stored; the user it belongs to.
    Rotated { user: String },
    /// Unknown, expired or revoked.
    Unknown,
    /// Already used: the family is now revoked.
    Reused { user: String },
}

/// Stores and rotates refresh tokens.
#[derive(Debug, Clone)]
pub struct RefreshStore {
    keys: Keys,
    ttl_ms: u64,
}

impl RefreshStore {
    pub fn new(keys: Keys, ttl_s: u64) -> Self {
        Self {
            keys,
            ttl_ms: ttl_s.saturating_mul(1000),
        }
    }

    /// Starts a new family for `user`; returns its first token.
    pub async fn issue(&self, store: &AuthStore, user: &str) -> redis::RedisResult<RefreshToken> {
        let token = RefreshToken::new_family();
        let mut conn = match store {
            AuthStore::Redis(c) => c.clone(),
            AuthStore::Memory(m) => {
                m.refresh.issue(&token, user, self.ttl_ms, now_ms());
                return Ok(token);
            }
        };
        redis::Script::new(ISSUE_SCRIPT)
            .key(token.key(&self.keys))
            .key(token.family_key(&self.keys))
            .arg(user)
            .arg(self.ttl_ms)
            .invoke_async::<()>(&mut conn)
            .await?;
        Ok(token)
    }

    /// Uses `old`: on success `next` is stored as its successor.
    pub async fn rotate(
        &self,
        store: &AuthStore,
        old: &RefreshToken,
        next: &RefreshToken,
    ) -> redis::RedisResult<Rotation> {
        let mut conn = match store {
            AuthStore::Redis(c) => c.clone(),
            AuthStore::Memory(m) => return Ok(m.refresh.rotate(old, next, self.ttl_ms, now_ms())),
        };
        let reply: Vec<String> = redis::Script::new(ROTATE_SCRIPT)
            .key(old.key(&self.keys))
            .key(old.family_key(&self.keys))
            .key(next.key(&self.keys))
            .arg(self.ttl_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok(match reply.as_slice() {
            [status, user] if status == "ok" => Rotation::Rotated { user: user.clone() },
            [status, user] if status == "reused" => Rotation::Reused { user: user.clone() },
            _ => Rotation::Unknown,
        })
    }
}

/// The refresh-token families on the memory engine.
#[derive(Default)]
pub(crate) struct MemoryRefresh(Mutex<Families>);

impl std::fmt::Debug for MemoryRefresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryRefresh")
            .field("families", &lock(&self.0).map.len())
            .finish()
    }
}

#[derive(Default)]
struct Families {
    /// Family id → its tokens. A family that is absent (or past its deadline)
    /// is revoked or expired, as the absence of its Redis SET means.
    map: HashMap<String, Family>,
    sweep: Sweep,
}

struct Family {
    /// Secret hash → token.
    tokens: HashMap<String, Token>,
    /// Moved to the newest token's deadline at each rotation, as the SET's TTL is.
    until_ms: u64,
}

struct Token {
    user: String,
    used: bool,
    until_ms: u64,
}

impl Families {
    fn sweep(&mut self, now: u64) {
        if !self.sweep.due(now) {
            return;
        }
        self.map.retain(|_, f| {
            // Used tokens of a long-lived family expire one by one, as their
            // Redis keys do.
            f.tokens.retain(|_, t| t.until_ms > now);
            f.until_ms > now
        });
    }

    /// The live family `id`, if any.
    fn live(&mut self, id: &str, now: u64) -> Option<&mut Family> {
        self.map.get_mut(id).filter(|f| f.until_ms > now)
    }
}

impl MemoryRefresh {
    /// Stores `token` as the first of its family, for `user`, for `ttl_ms`.
    fn issue(&self, token: &RefreshToken, user: &str, ttl_ms: u64, now: u64) {
        let mut families = lock(&self.0);
        families.sweep(now);
        let until_ms = now.saturating_add(ttl_ms);
        let family = families
            .map
            .entry(token.family.clone())
            .or_insert_with(|| Family {
                tokens: HashMap::new(),
                until_ms,
            });
        family.until_ms = until_ms;
        family.tokens.insert(
            token.hash(),
            Token {
                user: user.to_owned(),
                used: false,
                until_ms,
            },
        );
    }

    /// The rotation script's steps: unknown, reused (revoking the family) or
    /// rotated into `next`.
    fn rotate(&self, old: &RefreshToken, next: &RefreshToken, ttl_ms: u64, now: u64) -> Rotation {
        let mut families = lock(&self.0);
        families.sweep(now);
        // A revoked or expired family took its tokens with it.
        let Some(family) = families.live(&old.family, now) else {
            return Rotation::Unknown;
        };
        let Some(token) = family
            .tokens
            .get_mut(&old.hash())
            .filter(|t| t.until_ms > now)
        else {
            return Rotation::Unknown;
        };
        let user = token.user.clone();
        if token.used {
            families.map.remove(&old.family);
            return Rotation::Reused { user };
        }
        // The used token keeps its deadline (so its reuse is still detected
        // until then), as `HSET` keeps a key's TTL.
        token.used = true;
        let until_ms = now.saturating_add(ttl_ms);
        family.tokens.insert(
            next.hash(),
            Token {
                user: user.clone(),
                used: false,
                until_ms,
            },
        );
        family.until_ms = until_ms;
        Rotation::Rotated { user }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_roundtrip() {
        let t = RefreshToken::new_family();
        let s = t.expose();
        assert_eq!(RefreshToken::parse(&s), Some(t.clone()));
        let n = t.next();
        assert_eq!(n.family, t.family);
        assert_ne!(n.secret, t.secret);
        for bad in ["", "abc", "a.b", &format!("{s}x"), &s.replace('.', "")] {
            assert_eq!(RefreshToken::parse(bad), None, "{bad}");
        }
        assert!(!format!("{t:?}").contains(&t.secret));
    }

    #[test]
    fn keys_share_the_family_tag() {
        let keys = Keys::new("herald:");
        let t = RefreshToken::new_family();
        let tag = format!("{{{}}}", t.family);
        assert!(t.key(&keys).contains(&tag));
        assert!(t.family_key(&keys).contains(&tag));
        assert!(!t.key(&keys).contains(&t.secret));
    }

    #[test]
    fn memory_rotation_and_reuse() {
        let m = MemoryRefresh::default();
        let rotated = || Rotation::Rotated {
            user: "alice".into(),
        };
        let t1 = RefreshToken::new_family();
        m.issue(&t1, "alice", 1000, 0);
        let t2 = t1.next();
        assert_eq!(m.rotate(&t1, &t2, 1000, 10), rotated());
        let t3 = t2.next();
        assert_eq!(m.rotate(&t2, &t3, 1000, 20), rotated());
        // A token of another family, or a made-up one of this family, is unknown
        // and changes nothing.
        let stranger = RefreshToken::new_family();
        assert_eq!(
            m.rotate(&stranger, &stranger.next(), 1000, 30),
            Rotation::Unknown
        );
        let forged = t1.next();
        assert_eq!(
            m.rotate(&forged, &forged.next(), 1000, 30),
            Rotation::Unknown
        );
        // t1 again: the whole family goes, the newest token included.
        assert_eq!(
            m.rotate(&t1, &t1.next(), 1000, 40),
            Rotation::Reused {
                user: "alice".into()
            }
        );
        assert_eq!(m.rotate(&t3, &t3.next(), 1000, 50), Rotation::Unknown);
        assert_eq!(m.rotate(&t1, &t1.next(), 1000, 60), Rotation::Unknown);
    }

    #[test]
    fn memory_tokens_expire() {
        let m = MemoryRefresh::default();
        let t1 = RefreshToken::new_family();
        m.issue(&t1, "alice", 1000, 0);
        let t2 = t1.next();
        // The deadline is exclusive, as a Redis key is gone once its TTL is spent.
        assert_eq!(m.rotate(&t1, &t2, 1000, 1000), Rotation::Unknown);
        let t1 = RefreshToken::new_family();
        m.issue(&t1, "alice", 1000, 0);
        let t2 = t1.next();
        assert!(matches!(
            m.rotate(&t1, &t2, 1000, 999),
            Rotation::Rotated { .. }
        ));
        // The rotation moved the family's deadline with the new token: t2 lives
        // until 1999, past t1's 1000, whose reuse is no longer detected then.
        assert_eq!(m.rotate(&t1, &t1.next(), 1000, 1500), Rotation::Unknown);
        let t3 = t2.next();
        assert!(matches!(
            m.rotate(&t2, &t3, 1000, 1998),
            Rotation::Rotated { .. }
        ));
        // Expired entries are swept, families and used tokens alike: of this
        // family only t3 is left (the first family expired at 1000).
        m.issue(&RefreshToken::new_family(), "bob", 1000, 2500);
        let families = lock(&m.0);
        assert_eq!(families.map.len(), 2);
        let tokens = &families.map[&t1.family].tokens;
        assert_eq!(tokens.len(), 1);
        assert!(tokens.contains_key(&t3.hash()));
    }
}
