//! Where auth-svc keeps the state only it uses: users, refresh-token families,
//! login-failure counters and the signing key ring.
//!
//! - [`AuthStore::Redis`]: in the cluster's Redis, so every instance (and the
//!   operator CLI) reads and writes the same records.
//! - [`AuthStore::Memory`]: in this process ([`MemoryAuth`], one in-memory twin per
//!   module next to its Redis code, with the same conditions, counters and TTLs).
//!   Nothing survives a restart: users created through the API, refresh tokens,
//!   throttle counters, and the Ed25519 key ring, which is generated at each start
//!   as on a first start with Redis (so EdDSA tokens issued before a restart no
//!   longer verify; an HS256 secret is configuration and stays).
//!
//! What the services share (revocations, the control messages to the gateways,
//! rate-limit events) goes through the [`Engine`] itself.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use herald_common::store::Conn;

use herald_common::engine::Engine;
use herald_common::keys::Keys;

use crate::refresh::MemoryRefresh;
use crate::signing::MemoryRing;
use crate::throttle::MemoryThrottle;
use crate::users::MemoryUsers;

/// The storage of auth-svc's own records: see the module docs.
#[derive(Clone)]
pub enum AuthStore {
    Redis(Conn),
    Memory(Arc<MemoryAuth>),
}

impl std::fmt::Debug for AuthStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The connection's state and the records (password hashes) are of no
        // use in logs.
        f.write_str(match self {
            Self::Redis(_) => "AuthStore::Redis",
            Self::Memory(_) => "AuthStore::Memory",
        })
    }
}

impl AuthStore {
    /// The store on `engine`: its shared Redis connection, or new, empty twins.
    /// Made once per service run, since every handler must see the same twins.
    pub fn on(engine: &Engine) -> Self {
        match engine {
            Engine::Redis(r) => Self::Redis(r.conn.clone()),
            Engine::Memory(_) => Self::memory(),
        }
    }

    /// New, empty in-memory twins.
    pub fn memory() -> Self {
        Self::Memory(Arc::default())
    }

    pub fn is_memory(&self) -> bool {
        matches!(self, Self::Memory(_))
    }
}

/// The in-memory twins of the Redis records, one per module.
#[derive(Debug, Default)]
pub struct MemoryAuth {
    pub(crate) users: MemoryUsers,
    pub(crate) refresh: MemoryRefresh,
    pub(crate) throttle: MemoryThrottle,
    pub(crate) ring: MemoryRing,
}

/// Locks a twin's state. A panic while holding the lock leaves plain data
/// behind, each update being a few assignments, so it is still served.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How often a twin drops its expired entries at most: often enough to bound
/// memory, rarely enough that a burst of requests does not rescan every time.
const SWEEP_EVERY_MS: u64 = 1000;

/// When a twin last dropped its expired entries. Reads never need it (they
/// check deadlines themselves); it only keeps expired entries from piling up.
#[derive(Debug, Default)]
pub(crate) struct Sweep {
    last_ms: u64,
}

impl Sweep {
    /// Whether a sweep is due at `now` (and if so, it counts as done).
    pub(crate) fn due(&mut self, now: u64) -> bool {
        if now < self.last_ms.saturating_add(SWEEP_EVERY_MS) {
            return false;
        }
        self.last_ms = now;
        true
    }
}

/// Marks `jti` revoked for `ttl_ms` (at least a second) and sends `control` to
/// every gateway on the control channel. On Redis both go in one pipeline, as
/// one round trip.
pub(crate) async fn revoke(
    engine: &Engine,
    keys: &Keys,
    jti: &str,
    ttl_ms: u64,
    control: String,
) -> redis::RedisResult<()> {
    match engine {
        Engine::Redis(r) => {
            redis::pipe()
                .cmd("SET")
                .arg(keys.revoked(jti))
                .arg(1)
                .arg("PX")
                .arg(ttl_ms.max(1000))
                .ignore()
                .cmd("PUBLISH")
                .arg(keys.control())
                .arg(control)
                .ignore()
                .query_async::<()>(&mut r.conn.clone())
                .await
        }
        Engine::Memory(m) => {
            m.revoke(jti, ttl_ms.max(1000));
            engine.publish_raw(&keys.control(), control).await?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests;
