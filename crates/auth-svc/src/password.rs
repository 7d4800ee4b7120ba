//! Password hashing with Argon2id (PHC strings), off the async threads and with
//! bounded concurrency, plus the dummy hash that makes "unknown user" cost the
//! same as "wrong password".

use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand::RngCore;
use tokio::sync::Semaphore;

/// Why hashing failed (never because of the password's content).
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("password hashing task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Hashes and verifies passwords.
#[derive(Debug, Clone)]
pub struct Passwords {
    /// A hash of a random password with the same parameters as real ones:
    /// verifying against it takes as long as a real verification.
    dummy: Arc<str>,
    /// Each Argon2 run takes ~19 MiB and tens of milliseconds of CPU; a login
    /// flood queues here instead of exhausting memory. A tokio semaphore because
    /// permits are held across the `spawn_blocking` await.
    permits: Arc<Semaphore>,
}

impl Passwords {
    /// Prepares the dummy hash (one Argon2 run).
    pub async fn new() -> Result<Self, PasswordError> {
        let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
        let permits = Arc::new(Semaphore::new(parallel.max(2)));
        let mut random = [0u8; 32];
        rand::rng().fill_bytes(&mut random);
        let dummy = hash_blocking(hex(&random)).await?;
        Ok(Self {
            dummy: dummy.into(),
            permits,
        })
    }

    /// The PHC string of `password`.
    pub async fn hash(&self, password: &str) -> Result<String, PasswordError> {
        let _permit = self.permits.acquire().await;
        hash_blocking(password.to_owned()).await
    }

    /// Whether `password` matches `hash`. With no hash (unknown user) the dummy
    /// hash is checked instead, and the answer is always `false`.
    pub async fn verify(&self, hash: Option<&str>, password: &str) -> bool {
        let known = hash.is_some();
        let phc = hash.map_or_else(|| self.dummy.to_string(), str::to_owned);
        let password = password.to_owned();
        let _permit = self.permits.acquire().await;
        let ok = tokio::task::spawn_blocking(move || verify_sync(&phc, &password))
            .await
            .unwrap_or(false);
        ok && known
    }
}

async fn hash_blocking(password: String) -> Result<String, PasswordError> {
    tokio::task::spawn_blocking(move || hash_sync(&password)).await?
}

/// Argon2id with the crate's default (OWASP-recommended) parameters and a
/// random 16-byte salt.
pub fn hash_sync(password: &str) -> Result<String, PasswordError> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| PasswordError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// Checks a password against a PHC string; a malformed string never matches.
pub fn verify_sync(phc: &str, password: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash_sync("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_sync(&h, "correct horse"));
        assert!(!verify_sync(&h, "wrong"));
        assert!(!verify_sync("not a phc string", "correct horse"));
        // Salts differ, so equal passwords give different hashes.
        assert_ne!(h, hash_sync("correct horse").unwrap());
    }

    #[tokio::test]
    async fn unknown_users_never_match() {
        let p = Passwords::new().await.unwrap();
        let h = p.hash("pw").await.unwrap();
        assert!(p.verify(Some(&h), "pw").await);
        assert!(!p.verify(Some(&h), "nope").await);
        assert!(!p.verify(None, "pw").await);
    }
}
