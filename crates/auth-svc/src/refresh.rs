//! Refresh tokens: opaque `<family>.<secret>` strings, stored only as a SHA-256
//! of the secret. Each use rotates the token within its family; presenting a
//! token that was already used revokes the whole family (the OAuth 2.0
//! "refresh token reuse detection" pattern), atomically in one script.
//!
//! Redis layout, one Cluster hash tag per family:
//! - `herald:auth:rt:{<family>}:<sha256>` HASH `user`, `used` (0/1), TTL = refresh TTL.
//! - `herald:auth:rtf:{<family>}` SET of the family's token keys; its absence
//!   means the family was revoked.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};

use herald_common::keys::Keys;

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

    fn key(&self, keys: &Keys) -> String {
        let hash = URL_SAFE_NO_PAD.encode(Sha256::digest(self.secret.as_bytes()));
        keys.other(&format!("auth:rt:{{{}}}:{hash}", self.family))
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
    pub async fn issue(
        &self,
        conn: &mut ConnectionManager,
        user: &str,
    ) -> redis::RedisResult<RefreshToken> {
        let token = RefreshToken::new_family();
        redis::Script::new(ISSUE_SCRIPT)
            .key(token.key(&self.keys))
            .key(token.family_key(&self.keys))
            .arg(user)
            .arg(self.ttl_ms)
            .invoke_async::<()>(conn)
            .await?;
        Ok(token)
    }

    /// Uses `old`: on success `next` is stored as its successor.
    pub async fn rotate(
        &self,
        conn: &mut ConnectionManager,
        old: &RefreshToken,
        next: &RefreshToken,
    ) -> redis::RedisResult<Rotation> {
        let reply: Vec<String> = redis::Script::new(ROTATE_SCRIPT)
            .key(old.key(&self.keys))
            .key(old.family_key(&self.keys))
            .key(next.key(&self.keys))
            .arg(self.ttl_ms)
            .invoke_async(conn)
            .await?;
        Ok(match reply.as_slice() {
            [status, user] if status == "ok" => Rotation::Rotated { user: user.clone() },
            [status, user] if status == "reused" => Rotation::Reused { user: user.clone() },
            _ => Rotation::Unknown,
        })
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
}
