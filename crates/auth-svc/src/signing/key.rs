//! Ed25519 keys: generated or read from PEM, their RFC 7638 `kid`, and the ring
//! of published keys with its JWKS.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use jsonwebtoken::{DecodingKey, EncodingKey};
use rand::RngCore;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::KeyError;

// === impl Ed25519Key ===

/// One Ed25519 key pair, ready to sign and verify.
pub struct Ed25519Key {
    pub kid: String,
    /// The public key, base64url (the JWK `x`).
    pub x: String,
    pub(super) pem: String,
    pub(super) encoding: EncodingKey,
    pub(super) decoding: DecodingKey,
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
