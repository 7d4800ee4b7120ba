//! Token signing: an HS256 shared secret, or a ring of Ed25519 keys kept in Redis
//! so every auth-svc instance signs with the same current key and publishes the
//! same JWKS.
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

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use redis::aio::ConnectionManager;
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use herald_common::keys::Keys;
use herald_proto::claims::Claims;
use herald_proto::time::now_ms;

/// How often each instance rereads the key ring, so a rotation made by another
/// instance (or `auth-svc keys rotate`) is picked up quickly.
pub const KEY_RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// A key's `until` moves in steps of a minute, so an instance issuing tokens of
/// one lifetime writes it at most once a minute, not once per token; the key
/// stays published up to a minute longer than strictly needed.
pub const EXPIRY_STEP_MS: u64 = 60_000;

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

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("invalid Ed25519 key: {0}")]
    Invalid(String),
    #[error("no current signing key in Redis")]
    NoCurrent,
}

// === impl Ed25519Key ===

/// One Ed25519 key pair, ready to sign and verify.
pub struct Ed25519Key {
    pub kid: String,
    /// The public key, base64url (the JWK `x`).
    pub x: String,
    pem: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for Ed25519Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ed25519Key")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Ed25519Key {
    /// A fresh random key.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        rand::rng().fill_bytes(&mut seed);
        Self::from_signing_key(&SigningKey::from_bytes(&seed))
    }

    /// Parses a PKCS#8 PEM private key.
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let sk = SigningKey::from_pkcs8_pem(pem).map_err(|e| KeyError::Invalid(e.to_string()))?;
        Self::from_signing_key(&sk)
    }

    fn from_signing_key(sk: &SigningKey) -> Result<Self, KeyError> {
        let invalid = |e: &dyn std::fmt::Display| KeyError::Invalid(e.to_string());
        let der = sk.to_pkcs8_der().map_err(|e| invalid(&e))?;
        let pem = sk.to_pkcs8_pem(LineEnding::LF).map_err(|e| invalid(&e))?;
        let x = URL_SAFE_NO_PAD.encode(sk.verifying_key().to_bytes());
        let decoding = DecodingKey::from_ed_components(&x).map_err(|e| invalid(&e))?;
        Ok(Self {
            kid: thumbprint(&x),
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            decoding,
            x,
            pem: pem.to_string(),
        })
    }

    /// The public JWK, as the gateway's JWKS client reads it.
    pub fn jwk(&self) -> Value {
        json!({"kty":"OKP","crv":"Ed25519","x":self.x,"kid":self.kid,"alg":"EdDSA","use":"sig"})
    }
}

/// The `until` step covering a token that expires at `exp` (seconds).
fn until_step(exp: u64, leeway_ms: u64) -> u64 {
    exp.saturating_mul(1000)
        .saturating_add(leeway_ms)
        .div_ceil(EXPIRY_STEP_MS)
        .saturating_mul(EXPIRY_STEP_MS)
}

/// The RFC 7638 JWK thumbprint of an Ed25519 public key: a stable `kid`, the
/// same on every instance that holds the key.
pub fn thumbprint(x: &str) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

// === impl Ring ===

/// The keys in Redis at one moment.
#[derive(Debug, Clone)]
pub struct Ring {
    pub current: Arc<Ed25519Key>,
    /// Every published key (current included), by kid.
    pub keys: HashMap<String, Arc<Ed25519Key>>,
}

impl Ring {
    /// The JWKS document: current key first.
    pub fn jwks(&self) -> Value {
        let mut keys = vec![self.current.jwk()];
        let mut others: Vec<_> = self
            .keys
            .values()
            .filter(|k| k.kid != self.current.kid)
            .collect();
        others.sort_by(|a, b| a.kid.cmp(&b.kid));
        keys.extend(others.iter().map(|k| k.jwk()));
        json!({ "keys": keys })
    }
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

// === impl Signer ===

/// Signs access tokens and checks tokens presented for revocation.
#[derive(Debug)]
pub enum Signer {
    Secret {
        encoding: EncodingKey,
        decoding: DecodingKey,
    },
    /// The latest ring; a std lock because it is only held to clone the `Arc`.
    Ring(RwLock<Arc<Ring>>),
}

impl Signer {
    pub fn secret(secret: &str) -> Self {
        Self::Secret {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
        }
    }

    pub fn ring(ring: Ring) -> Self {
        Self::Ring(RwLock::new(Arc::new(ring)))
    }

    /// The current ring (asymmetric mode).
    pub fn current_ring(&self) -> Option<Arc<Ring>> {
        match self {
            Self::Secret { .. } => None,
            Self::Ring(r) => Some(
                r.read()
                    .map_or_else(|p| p.into_inner().clone(), |g| g.clone()),
            ),
        }
    }

    /// Replaces the ring after a reload.
    pub fn set_ring(&self, ring: Ring) {
        if let Self::Ring(r) = self {
            match r.write() {
                Ok(mut g) => *g = Arc::new(ring),
                Err(p) => *p.into_inner() = Arc::new(ring),
            }
        }
    }

    /// Signs `claims` with the secret or the current key (with its `kid`).
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, jsonwebtoken::errors::Error> {
        self.sign_with_kid(claims).map(|(token, _)| token)
    }

    /// Signs `claims`; also returns the `kid` of the key used (asymmetric mode),
    /// whose publication must then cover the token's life
    /// ([`KeyStore::record_expiry`]).
    pub fn sign_with_kid<T: Serialize>(
        &self,
        claims: &T,
    ) -> Result<(String, Option<String>), jsonwebtoken::errors::Error> {
        match self {
            Self::Secret { encoding, .. } => {
                jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, encoding)
                    .map(|t| (t, None))
            }
            Self::Ring(_) => {
                let ring = self
                    .current_ring()
                    .ok_or(jsonwebtoken::errors::ErrorKind::InvalidKeyFormat)?;
                let mut header = Header::new(Algorithm::EdDSA);
                header.kid = Some(ring.current.kid.clone());
                let token = jsonwebtoken::encode(&header, claims, &ring.current.encoding)?;
                Ok((token, Some(ring.current.kid.clone())))
            }
        }
    }

    /// The claims of a token this service signed, checking only the signature:
    /// an expired or foreign-audience token may still be revoked.
    pub fn claims_of(&self, token: &str) -> Result<Claims, jsonwebtoken::errors::Error> {
        let header = jsonwebtoken::decode_header(token)?;
        let mut validation = Validation::new(header.alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims = HashSet::new();
        let wrong_key =
            || jsonwebtoken::errors::Error::from(jsonwebtoken::errors::ErrorKind::InvalidSignature);
        match self {
            Self::Secret { decoding, .. } => {
                if header.alg != Algorithm::HS256 {
                    return Err(jsonwebtoken::errors::ErrorKind::InvalidAlgorithm.into());
                }
                Ok(jsonwebtoken::decode::<Claims>(token, decoding, &validation)?.claims)
            }
            Self::Ring(_) => {
                if header.alg != Algorithm::EdDSA {
                    return Err(jsonwebtoken::errors::ErrorKind::InvalidAlgorithm.into());
                }
                let ring = self.current_ring().ok_or_else(wrong_key)?;
                let key = header
                    .kid
                    .as_deref()
                    .and_then(|kid| ring.keys.get(kid))
                    .ok_or_else(wrong_key)?;
                Ok(jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation)?.claims)
            }
        }
    }

    /// The JWKS this instance knows (empty with a shared secret).
    pub fn jwks(&self) -> Value {
        match self.current_ring() {
            Some(r) => r.jwks(),
            None => json!({ "keys": [] }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            sub: Some("u1".into()),
            exp: jsonwebtoken::get_current_timestamp() + 60,
            jti: Some("j1".into()),
            ..Claims::default()
        }
    }

    #[test]
    fn ed25519_roundtrip() {
        let k = Ed25519Key::generate().unwrap();
        let again = Ed25519Key::from_pem(&k.pem).unwrap();
        assert_eq!(k.kid, again.kid);
        assert_eq!(k.x, again.x);
        let jwk = k.jwk();
        assert_eq!(jwk["kty"], "OKP");
        assert_eq!(jwk["kid"], k.kid.as_str());
        // The JWK must be readable by jsonwebtoken's JWK types (the gateway's client).
        let parsed: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk).unwrap();
        assert!(DecodingKey::from_jwk(&parsed).is_ok());
    }

    #[test]
    fn sign_and_read_back() {
        let k = Arc::new(Ed25519Key::generate().unwrap());
        let ring = Ring {
            current: k.clone(),
            keys: [(k.kid.clone(), k.clone())].into_iter().collect(),
        };
        let s = Signer::ring(ring);
        let t = s.sign(&claims()).unwrap();
        let h = jsonwebtoken::decode_header(&t).unwrap();
        assert_eq!(h.alg, Algorithm::EdDSA);
        assert_eq!(h.kid.as_deref(), Some(k.kid.as_str()));
        let (_, kid) = s.sign_with_kid(&claims()).unwrap();
        assert_eq!(kid.as_deref(), Some(k.kid.as_str()));
        assert_eq!(s.claims_of(&t).unwrap().jti.as_deref(), Some("j1"));
        assert_eq!(s.jwks()["keys"].as_array().map(Vec::len), Some(1));

        // A token from another key, or an HS256 token, is refused.
        let other = Signer::secret("0123456789abcdef0123");
        let hs = other.sign(&claims()).unwrap();
        assert_eq!(other.sign_with_kid(&claims()).unwrap().1, None);
        assert!(s.claims_of(&hs).is_err());
        assert_eq!(other.claims_of(&hs).unwrap().sub.as_deref(), Some("u1"));
        assert!(other.claims_of(&t).is_err());
        assert!(
            Signer::secret("another-secret-0123")
                .claims_of(&hs)
                .is_err()
        );
        assert_eq!(other.jwks(), json!({"keys": []}));
    }

    #[test]
    fn until_steps_cover_exp_and_leeway() {
        // Exactly on a step stays on it; anything past moves to the next one.
        assert_eq!(until_step(60, 0), 60_000);
        assert_eq!(until_step(60, 1), 120_000);
        assert_eq!(until_step(1_000, 5_000), 1_020_000);
        assert!(until_step(1_000, 5_000) >= 1_000 * 1000 + 5_000);
    }

    #[test]
    fn thumbprint_is_rfc7638() {
        // RFC 8037 appendix A.3.
        assert_eq!(
            thumbprint("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }
}
