//! Token signing: an HS256 shared secret, or a ring of Ed25519 keys kept in the
//! [`AuthStore`](crate::store::AuthStore) (on Redis, so every auth-svc instance
//! signs with the same current key and publishes the same JWKS).
//!
//! Where the ring lives, and how keys leave it, is in `store`; the keys
//! themselves in `key`.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Serialize;
use serde_json::{Value, json};

use herald_proto::claims::Claims;

/// How often each instance rereads the key ring, so a rotation made by another
/// instance (or `auth-svc keys rotate`) is picked up quickly.
pub const KEY_RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// A key's `until` moves in steps of a minute, so an instance issuing tokens of
/// one lifetime writes it at most once a minute, not once per token; the key
/// stays published up to a minute longer than strictly needed.
pub const EXPIRY_STEP_MS: u64 = 60_000;

mod key;
mod store;

pub use key::{Ed25519Key, Ring, thumbprint};
pub use store::KeyStore;
pub(crate) use store::MemoryRing;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("invalid Ed25519 key: {0}")]
    Invalid(String),
    #[error("no current signing key in Redis")]
    NoCurrent,
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
mod tests;
