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
pub mod topology;

use bytes::Bytes;
use futures_util::StreamExt;

pub use memory::MemoryEngine;

use crate::store::{self, Conn, StoreError, Target};

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

opaque_debug!(
    RedisEngine,
    Subscriber,
    SubSink,
    SubStream,
    SubMsg,
    SubEvent
);

/// A Redis engine (one Redis or a Redis Cluster): a client for connections of
/// their own (Pub/Sub, blocking reads) and the shared multiplexed connection for
/// short requests.
#[derive(Clone)]
pub struct RedisEngine {
    pub client: store::Client,
    pub conn: Conn,
    pub target: Target,
}

impl RedisEngine {
    pub fn is_cluster(&self) -> bool {
        self.target.is_cluster()
    }
}

/// Which engine a process runs on, as logs and `--help` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    Redis,
    Memory,
}

impl Engine {
    /// Connects to Redis (one server or a cluster), failing fast (one clear error)
    /// when it is unreachable.
    pub async fn connect(target: &Target) -> Result<Self, StoreError> {
        let (client, conn) = store::connect(target).await?;
        Ok(Self::Redis(RedisEngine {
            client,
            conn,
            target: target.clone(),
        }))
    }

    /// Whether this engine is a Redis Cluster (channel messages on sharded Pub/Sub).
    pub fn is_cluster(&self) -> bool {
        self.redis().is_some_and(RedisEngine::is_cluster)
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
    /// (control commands, probes); returns how many there were. On a cluster this
    /// is classic Pub/Sub, which every node relays to every other: right for the
    /// few cluster-wide names, see [`Self::publish_shard`] for the rest.
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

    /// Sends `payload` on the shard channel `name` (a cluster's sharded Pub/Sub:
    /// only the shard owning `name`'s slot carries it); on one Redis, plain Pub/Sub.
    pub async fn publish_shard(
        &self,
        name: &str,
        payload: impl Into<Bytes>,
    ) -> redis::RedisResult<u64> {
        match self {
            Self::Redis(r) if r.is_cluster() => {
                let payload: Bytes = payload.into();
                store::within(
                    store::RESPONSE_TIMEOUT,
                    "spublish",
                    redis::cmd("SPUBLISH")
                        .arg(name)
                        .arg(payload.as_ref())
                        .query_async(&mut r.conn.clone()),
                )
                .await
            }
            _ => self.publish_raw(name, payload).await,
        }
    }

    /// A subscription session of its own (a dedicated connection on Redis; on a
    /// cluster, a cluster connection of its own: one connection per node).
    pub async fn subscriber(&self) -> redis::RedisResult<Subscriber> {
        match self {
            Self::Redis(r) => match (&r.client, &r.target) {
                (store::Client::Single(client), _) => {
                    let pubsub = client.get_async_pubsub().await?;
                    let (sink, stream) = pubsub.split();
                    Ok(Subscriber {
                        sink: SubSink::Redis(sink),
                        stream: SubStream::Redis(stream),
                    })
                }
                (store::Client::Cluster(_), Target::Cluster(seeds)) => {
                    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                    let conn = store::cluster_pubsub(seeds, tx).await?;
                    Ok(Subscriber {
                        sink: SubSink::Cluster(conn),
                        stream: SubStream::Cluster(rx),
                    })
                }
                (store::Client::Cluster(_), Target::Single(_)) => {
                    unreachable!("a cluster client is made from a cluster target")
                }
            },
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
    /// A cluster connection whose pushes go to the matching [`SubStream::Cluster`].
    Cluster(redis::cluster_async::ClusterConnection),
    Memory(memory::SubSink),
}

/// The receiving half of a [`Subscriber`].
pub enum SubStream {
    Redis(redis::aio::PubSubStream),
    Cluster(tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>),
    Memory(memory::SubStream),
}

/// One message a [`Subscriber`] received.
pub enum SubMsg {
    Redis(redis::Msg),
    Memory(memory::Msg),
}

/// What a subscription session reports: a message, or (on a cluster) news that
/// some messages may have been missed.
pub enum SubEvent {
    Message(SubMsg),
    /// A connection to one of the cluster's nodes was lost: messages on its
    /// shard channels may have been missed until it is re-established.
    NodeLost,
    /// The cluster dropped this shard channel subscription by itself (its slot
    /// moved to another shard): subscribe again to follow it.
    Dropped(String),
}

impl SubSink {
    /// Subscribes to every name in `names`; returns once messages published to them
    /// from now on will be received.
    pub async fn subscribe(&mut self, names: &[String]) -> redis::RedisResult<()> {
        match self {
            Self::Redis(s) => s.subscribe(names).await,
            Self::Cluster(c) => c.subscribe(names).await,
            Self::Memory(s) => {
                s.subscribe(names);
                Ok(())
            }
        }
    }

    pub async fn unsubscribe(&mut self, name: &str) -> redis::RedisResult<()> {
        match self {
            Self::Redis(s) => s.unsubscribe(name).await,
            Self::Cluster(c) => c.unsubscribe(name).await,
            Self::Memory(s) => {
                s.unsubscribe(name);
                Ok(())
            }
        }
    }

    /// Another handle on the same session, for requests made off the task that
    /// reads it (a cluster connection is shared by its clones); `None` on the
    /// others, whose sink has one owner.
    pub fn detached(&self) -> Option<SubSink> {
        match self {
            Self::Cluster(c) => Some(Self::Cluster(c.clone())),
            _ => None,
        }
    }

    /// Proves the session's connection answers (a lost one errors).
    pub async fn ping(&mut self) -> redis::RedisResult<()> {
        match self {
            Self::Redis(s) => s.ping::<redis::Value>().await.map(drop),
            Self::Cluster(c) => redis::cmd("PING")
                .query_async::<redis::Value>(c)
                .await
                .map(drop),
            Self::Memory(_) => Ok(()),
        }
    }

    /// Subscribes to shard channels (names of [`crate::keys::Keys::channel`] and
    /// shard probes): on a cluster `SSUBSCRIBE`, each on the node owning its slot;
    /// elsewhere plain Pub/Sub.
    pub async fn subscribe_shard(&mut self, names: &[String]) -> redis::RedisResult<()> {
        match self {
            Self::Cluster(c) => {
                // One SSUBSCRIBE may only name channels of one slot.
                let replies = futures_util::future::join_all(names.iter().map(|n| {
                    let mut c = c.clone();
                    async move { c.ssubscribe(n).await }
                }))
                .await;
                replies.into_iter().collect()
            }
            _ => self.subscribe(names).await,
        }
    }

    pub async fn unsubscribe_shard(&mut self, name: &str) -> redis::RedisResult<()> {
        match self {
            Self::Cluster(c) => c.sunsubscribe(name).await,
            _ => self.unsubscribe(name).await,
        }
    }
}

impl SubStream {
    /// The next message; `None` once the session is over (a lost connection; on
    /// a cluster, a lost connection to any node).
    pub async fn next(&mut self) -> Option<SubMsg> {
        loop {
            match self.next_event().await? {
                SubEvent::Message(m) => return Some(m),
                SubEvent::NodeLost => return None,
                SubEvent::Dropped(_) => {}
            }
        }
    }

    /// The next message or news of possibly missed ones; `None` once the session
    /// is over.
    pub async fn next_event(&mut self) -> Option<SubEvent> {
        match self {
            Self::Redis(s) => s.next().await.map(|m| SubEvent::Message(SubMsg::Redis(m))),
            Self::Memory(s) => s.next().await.map(|m| SubEvent::Message(SubMsg::Memory(m))),
            Self::Cluster(rx) => loop {
                let push = rx.recv().await?;
                match push.kind {
                    redis::PushKind::Message | redis::PushKind::SMessage => {
                        if let Some(m) = redis::Msg::from_push_info(push) {
                            return Some(SubEvent::Message(SubMsg::Redis(m)));
                        }
                    }
                    redis::PushKind::Disconnection => return Some(SubEvent::NodeLost),
                    redis::PushKind::SUnsubscribe => {
                        let name = push.data.first().and_then(|v| match v {
                            redis::Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
                            _ => None,
                        });
                        if let Some(name) = name {
                            return Some(SubEvent::Dropped(name));
                        }
                    }
                    _ => {}
                }
            },
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
