//! The engine: where a Herald cluster keeps its shared state and moves its
//! messages. Two implementations with one meaning:
//!
//! - [`Engine::Redis`]: the services of a cluster share one Redis (the key layout of
//!   [`crate::keys`], the scripts of [`crate::publish`]); any number of processes.
//! - [`Engine::Memory`]: one process's own state ([`MemoryEngine`]), for the
//!   all-in-one `herald` binary without Redis. Nothing survives a restart and no
//!   other process can see it, so only services that run in the same process can
//!   share one.
//!
//! The services hold an `Engine` (cheap to clone) and ask it for what they share:
//! publishing and history ([`crate::publish::Publisher`]), subscriptions
//! ([`Subscriber`]), raw Pub/Sub messages (control commands, probes), the node
//! registry, rate-limit events and revocations. Operations that only one service
//! needs keep their Redis code in that service, next to an in-memory twin.
//!
//! Errors are Redis errors: only the Redis engine can fail (the memory engine has
//! nothing to lose a connection to), and callers already tell outages from
//! answers with [`crate::store::is_outage`].

pub mod memory;

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::ConnectionManager;

pub use memory::MemoryEngine;

use crate::store::{self, StoreError};

/// Where state lives: see the module docs.
#[derive(Clone)]
pub enum Engine {
    Redis(RedisEngine),
    Memory(MemoryEngine),
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Opaque in logs: the connection's state is of no use there.
macro_rules! opaque_debug {
    ($($t:ty),*) => {$(
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(stringify!($t))
            }
        }
    )*};
}
pub(crate) use opaque_debug;

opaque_debug!(RedisEngine, Subscriber, SubSink, SubStream, SubMsg);

/// A Redis engine: a client for connections of their own (Pub/Sub, blocking
/// reads) and the shared multiplexed connection for short requests.
#[derive(Clone)]
pub struct RedisEngine {
    pub client: redis::Client,
    pub conn: ConnectionManager,
}

/// Which engine a process runs on, as logs and `--help` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    Redis,
    Memory,
}

impl Engine {
    /// Connects to Redis, failing fast (one clear error) when it is unreachable.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let (client, conn) = store::connect(url).await?;
        Ok(Self::Redis(RedisEngine { client, conn }))
    }

    /// A new, empty in-memory engine. Every service that should see the same
    /// cluster must be given a clone of the same one.
    pub fn memory() -> Self {
        Self::Memory(MemoryEngine::new())
    }

    pub fn kind(&self) -> EngineKind {
        match self {
            Self::Redis(_) => EngineKind::Redis,
            Self::Memory(_) => EngineKind::Memory,
        }
    }

    /// `redis` or `memory`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Redis(_) => "redis",
            Self::Memory(_) => "memory",
        }
    }

    /// The Redis engine, for code that only exists there (bridges of the legacy
    /// system, the operator CLI).
    pub fn redis(&self) -> Option<&RedisEngine> {
        match self {
            Self::Redis(r) => Some(r),
            Self::Memory(_) => None,
        }
    }

    pub fn as_memory(&self) -> Option<&MemoryEngine> {
        match self {
            Self::Memory(m) => Some(m),
            Self::Redis(_) => None,
        }
    }

    /// Sends `payload` to every current subscriber of the Pub/Sub channel `name`
    /// (control commands, probes); returns how many there were.
    pub async fn publish_raw(
        &self,
        name: &str,
        payload: impl Into<Bytes>,
    ) -> redis::RedisResult<u64> {
        match self {
            Self::Redis(r) => {
                let payload: Bytes = payload.into();
                store::within(
                    store::RESPONSE_TIMEOUT,
                    "publish",
                    redis::cmd("PUBLISH")
                        .arg(name)
                        .arg(payload.as_ref())
                        .query_async(&mut r.conn.clone()),
                )
                .await
            }
            Self::Memory(m) => Ok(m.publish_raw(name, payload.into())),
        }
    }

    /// A subscription session of its own (a dedicated connection on Redis).
    pub async fn subscriber(&self) -> redis::RedisResult<Subscriber> {
        match self {
            Self::Redis(r) => {
                let pubsub = r.client.get_async_pubsub().await?;
                let (sink, stream) = pubsub.split();
                Ok(Subscriber {
                    sink: SubSink::Redis(sink),
                    stream: SubStream::Redis(stream),
                })
            }
            Self::Memory(m) => {
                let (sink, stream) = m.subscriber();
                Ok(Subscriber {
                    sink: SubSink::Memory(sink),
                    stream: SubStream::Memory(stream),
                })
            }
        }
    }

    /// Whether a token id was revoked (and its revocation has not expired).
    pub async fn is_revoked(
        &self,
        keys: &crate::keys::Keys,
        jti: &str,
    ) -> redis::RedisResult<bool> {
        match self {
            Self::Redis(r) => {
                store::within(
                    store::RESPONSE_TIMEOUT,
                    "revocation check",
                    redis::cmd("EXISTS")
                        .arg(keys.revoked(jti))
                        .query_async(&mut r.conn.clone()),
                )
                .await
            }
            Self::Memory(m) => Ok(m.is_revoked(jti)),
        }
    }

    /// Records that a token id is revoked for `ttl_ms`.
    pub async fn revoke(
        &self,
        keys: &crate::keys::Keys,
        jti: &str,
        ttl_ms: u64,
    ) -> redis::RedisResult<()> {
        match self {
            Self::Redis(r) => {
                store::within(
                    store::RESPONSE_TIMEOUT,
                    "revocation",
                    redis::cmd("SET")
                        .arg(keys.revoked(jti))
                        .arg(1)
                        .arg("PX")
                        .arg(ttl_ms.max(1))
                        .query_async(&mut r.conn.clone()),
                )
                .await
            }
            Self::Memory(m) => {
                m.revoke(jti, ttl_ms);
                Ok(())
            }
        }
    }
}

/// A subscription session: subscribe and unsubscribe on the sink, read messages
/// from the stream (two halves, so one task can do both in one `select!`).
pub struct Subscriber {
    pub sink: SubSink,
    pub stream: SubStream,
}

/// The subscribing half of a [`Subscriber`].
pub enum SubSink {
    Redis(redis::aio::PubSubSink),
    Memory(memory::SubSink),
}

/// The receiving half of a [`Subscriber`].
pub enum SubStream {
    Redis(redis::aio::PubSubStream),
    Memory(memory::SubStream),
}

/// One message a [`Subscriber`] received.
pub enum SubMsg {
    Redis(redis::Msg),
    Memory(memory::Msg),
}

impl SubSink {
    /// Subscribes to every name in `names`; returns once messages published to them
    /// from now on will be received.
    pub async fn subscribe(&mut self, names: &[String]) -> redis::RedisResult<()> {
        match self {
            Self::Redis(s) => s.subscribe(names).await,
            Self::Memory(s) => {
                s.subscribe(names);
                Ok(())
            }
        }
    }

    pub async fn unsubscribe(&mut self, name: &str) -> redis::RedisResult<()> {
        match self {
            Self::Redis(s) => s.unsubscribe(name).await,
            Self::Memory(s) => {
                s.unsubscribe(name);
                Ok(())
            }
        }
    }
}

impl SubStream {
    /// The next message; `None` once the session is over (a lost connection).
    pub async fn next(&mut self) -> Option<SubMsg> {
        match self {
            Self::Redis(s) => s.next().await.map(SubMsg::Redis),
            Self::Memory(s) => s.next().await.map(SubMsg::Memory),
        }
    }
}

impl SubMsg {
    /// The Pub/Sub channel it came on.
    pub fn channel(&self) -> &str {
        match self {
            Self::Redis(m) => m.get_channel_name(),
            Self::Memory(m) => &m.channel,
        }
    }

    pub fn payload(&self) -> &[u8] {
        match self {
            Self::Redis(m) => m.get_payload_bytes(),
            Self::Memory(m) => &m.payload,
        }
    }
}
