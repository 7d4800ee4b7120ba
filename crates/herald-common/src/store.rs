//! Redis connections. A service checks Redis once at startup and refuses to start
//! with one clear line if it is unreachable; after that, the connection manager
//! reconnects by itself and requests fail fast (never hang) while Redis is away,
//! and [`Health`] tells `/readyz` whether the last request got through.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// How long a startup check waits for Redis before giving up.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one Redis request may take before it counts as failed.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a (re)connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid Redis URL {url:?}: {source}")]
    BadUrl {
        url: String,
        source: redis::RedisError,
    },
    #[error("Redis at {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
}

/// Where a service's Redis is: one server (`HERALD_REDIS_URL`) or a Redis Cluster
/// (`HERALD_REDIS_CLUSTER`, its seed nodes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Single(String),
    Cluster(Vec<String>),
}

impl Target {
    /// The target as logs may show it (passwords redacted).
    pub fn describe(&self) -> String {
        match self {
            Self::Single(url) => redacted(url),
            Self::Cluster(seeds) => format!(
                "cluster {}",
                seeds
                    .iter()
                    .map(|s| redacted(s))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

/// A client that opens connections of its own (Pub/Sub sessions, blocking reads).
#[derive(Clone)]
pub enum Client {
    Single(redis::Client),
    Cluster(Arc<redis::cluster::ClusterClient>),
}

/// The shared connection for short requests: a managed connection to one Redis,
/// or a cluster connection that routes each command to the node owning its
/// keys' slot (following `MOVED`/`ASK` and failovers by itself).
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(Healing),
}

crate::engine::opaque_debug!(Client, Conn, Healing);

/// How long a cluster connection may fail every request before it is replaced.
const WEDGED_AFTER: Duration = Duration::from_secs(2);

/// A cluster connection that replaces itself when it stops serving.
///
/// The cluster client follows failovers and moved slots by itself, but while a
/// node is unreachable it can hold every request, to every node, behind its
/// repair of that one (it refreshes its slot map under one lock), and it has
/// been seen never to come back. So: every request is bounded by `timeout`, and
/// once no request has succeeded for [`WEDGED_AFTER`], the next failing one opens
/// a new connection (a new slot map from the nodes that answer) for everyone.
#[derive(Clone)]
pub struct Healing(Arc<HealingInner>);

struct HealingInner {
    client: redis::cluster::ClusterClient,
    config: Option<redis::cluster::ClusterConfig>,
    current: std::sync::RwLock<redis::cluster_async::ClusterConnection>,
    timeout: Duration,
    /// When a request last succeeded (ms since `epoch`).
    last_ok_ms: std::sync::atomic::AtomicU64,
    epoch: std::time::Instant,
    /// Held by the one request replacing the connection.
    replacing: tokio::sync::Mutex<()>,
}

impl Healing {
    fn new(
        client: redis::cluster::ClusterClient,
        config: Option<redis::cluster::ClusterConfig>,
        conn: redis::cluster_async::ClusterConnection,
        timeout: Duration,
    ) -> Self {
        Self(Arc::new(HealingInner {
            client,
            config,
            current: std::sync::RwLock::new(conn),
            timeout,
            last_ok_ms: std::sync::atomic::AtomicU64::new(0),
            epoch: std::time::Instant::now(),
            replacing: tokio::sync::Mutex::new(()),
        }))
    }

    /// The connection requests go on now.
    pub fn current(&self) -> redis::cluster_async::ClusterConnection {
        self.0
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn now_ms(&self) -> u64 {
        self.0.epoch.elapsed().as_millis() as u64
    }

    /// `op` on the current connection, bounded; a failure after a long enough run
    /// of failures replaces the connection.
    async fn run<T>(
        &self,
        op: impl AsyncFnOnce(redis::cluster_async::ClusterConnection) -> redis::RedisResult<T>,
    ) -> redis::RedisResult<T> {
        let res = within(self.0.timeout, "cluster request", op(self.current())).await;
        match &res {
            Ok(_) => self.0.last_ok_ms.store(self.now_ms(), Ordering::Relaxed),
            Err(e) if is_outage(e) => self.maybe_replace().await,
            Err(_) => {}
        }
        res
    }

    async fn maybe_replace(&self) {
        let failing_for = self
            .now_ms()
            .saturating_sub(self.0.last_ok_ms.load(Ordering::Relaxed));
        if failing_for < WEDGED_AFTER.as_millis() as u64 {
            return;
        }
        // Someone else is at it: their connection will do.
        let Ok(_guard) = self.0.replacing.try_lock() else {
            return;
        };
        let fresh = match &self.0.config {
            Some(config) => {
                within(
                    STARTUP_TIMEOUT,
                    "cluster reconnection",
                    self.0
                        .client
                        .get_async_connection_with_config(config.clone()),
                )
                .await
            }
            None => {
                within(
                    STARTUP_TIMEOUT,
                    "cluster reconnection",
                    self.0.client.get_async_connection(),
                )
                .await
            }
        };
        match fresh {
            Ok(conn) => {
                tracing::warn!(
                    failing_ms = failing_for,
                    "the cluster connection served nothing for a while; replaced it"
                );
                *self
                    .0
                    .current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = conn;
                // A fresh start: the new connection gets its own grace period.
                self.0.last_ok_ms.store(self.now_ms(), Ordering::Relaxed);
            }
            Err(e) => tracing::debug!(cause = %e, "cannot open a new cluster connection yet"),
        }
    }
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => {
                let c = c.clone();
                Box::pin(async move {
                    c.run(async |mut conn| conn.req_packed_command(cmd).await)
                        .await
                })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(cmd, offset, count),
            // A transaction must stay one request (its keys share a slot by
            // construction). Any other pipeline may span slots, which a cluster
            // cannot take as one request: its commands go out one by one, at
            // once, each to its own node, and the multiplexed node connections
            // pipeline them anyway.
            Self::Cluster(c) => {
                let c = c.clone();
                if cmd.is_transaction() {
                    return Box::pin(async move {
                        c.run(async |mut conn| conn.req_packed_commands(cmd, offset, count).await)
                            .await
                    });
                }
                Box::pin(async move {
                    let replies = futures_util::future::join_all(cmd.cmd_iter().map(|one| {
                        let c = c.clone();
                        async move {
                            c.run(async |mut conn| conn.req_packed_command(one).await)
                                .await
                        }
                    }))
                    .await;
                    replies
                        .into_iter()
                        .skip(offset)
                        .take(count)
                        .collect::<redis::RedisResult<Vec<_>>>()
                })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(_) => 0,
        }
    }
}

impl Client {
    /// A connection of its own, connected on first use, whose requests may take up
    /// to `response_timeout` (a blocking read waits longer than a short request).
    pub fn dedicated(&self, response_timeout: Duration) -> redis::RedisResult<Conn> {
        Ok(match self {
            Self::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(response_timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                Conn::Single(ConnectionManager::new_lazy_with_config(
                    client.clone(),
                    config,
                )?)
            }
            Self::Cluster(client) => {
                let config = redis::cluster::ClusterConfig::new()
                    .set_connection_timeout(CONNECT_TIMEOUT)
                    .set_response_timeout(response_timeout);
                let conn = client.get_pending_async_connection_with_config(config.clone());
                Conn::Cluster(Healing::new(
                    (**client).clone(),
                    Some(config),
                    conn,
                    response_timeout + RESPONSE_TIMEOUT,
                ))
            }
        })
    }
}

/// Opens a client and the shared connection, proving Redis answers `PING` (on a
/// cluster: that it knows its slots and every primary answers).
pub async fn connect(target: &Target) -> Result<(Client, Conn), StoreError> {
    match target {
        Target::Single(url) => {
            let (client, conn) = connect_single(url).await?;
            Ok((Client::Single(client), Conn::Single(conn)))
        }
        Target::Cluster(seeds) => connect_cluster(seeds).await,
    }
}

/// The cluster client for `seeds`, with Herald's timeouts. Commands are retried on
/// `MOVED`, `ASK`, `TRYAGAIN` and lost connections (a failover in progress), within
/// the caller's own deadline ([`within`]).
fn cluster_client(
    seeds: &[String],
    push: Option<tokio::sync::mpsc::UnboundedSender<redis::PushInfo>>,
) -> redis::RedisResult<redis::cluster::ClusterClient> {
    let mut builder = redis::cluster::ClusterClientBuilder::new(seeds.iter().map(String::as_str))
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(RESPONSE_TIMEOUT)
        .retries(4)
        .min_retry_wait(20)
        .max_retry_wait(400)
        .use_protocol(redis::ProtocolVersion::RESP3);
    if let Some(push) = push {
        builder = builder.push_sender(push);
    }
    builder.build()
}

async fn connect_cluster(seeds: &[String]) -> Result<(Client, Conn), StoreError> {
    let described = Target::Cluster(seeds.to_vec()).describe();
    let client = cluster_client(seeds, None).map_err(|source| StoreError::BadUrl {
        url: described.clone(),
        source,
    })?;
    let unreachable = |reason: String| StoreError::Unreachable {
        url: described.clone(),
        reason,
    };
    let mut conn = tokio::time::timeout(STARTUP_TIMEOUT, client.get_async_connection())
        .await
        .map_err(|_| unreachable("timed out".to_owned()))?
        .map_err(|e| unreachable(e.to_string()))?;
    let pong: String =
        tokio::time::timeout(STARTUP_TIMEOUT, redis::cmd("PING").query_async(&mut conn))
            .await
            .map_err(|_| unreachable("PING timed out".to_owned()))?
            .map_err(|e| unreachable(e.to_string()))?;
    if pong != "PONG" {
        return Err(unreachable(format!("unexpected PING reply {pong:?}")));
    }
    let conn = Healing::new(client.clone(), None, conn, RESPONSE_TIMEOUT);
    Ok((Client::Cluster(Arc::new(client)), Conn::Cluster(conn)))
}

/// A cluster connection whose Pub/Sub messages (and other pushes: confirmations,
/// a node's connection lost) arrive on `push`.
pub async fn cluster_pubsub(
    seeds: &[String],
    push: tokio::sync::mpsc::UnboundedSender<redis::PushInfo>,
) -> redis::RedisResult<redis::cluster_async::ClusterConnection> {
    cluster_client(seeds, Some(push))?
        .get_async_connection()
        .await
}

/// Opens a client and a managed connection to one Redis, proving it answers `PING`.
async fn connect_single(url: &str) -> Result<(redis::Client, ConnectionManager), StoreError> {
    let client = redis::Client::open(url).map_err(|source| StoreError::BadUrl {
        url: url.to_owned(),
        source,
    })?;
    let unreachable = |reason: String| StoreError::Unreachable {
        url: redacted(url),
        reason,
    };
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    let manager = tokio::time::timeout(
        STARTUP_TIMEOUT,
        ConnectionManager::new_with_config(client.clone(), config),
    )
    .await
    .map_err(|_| unreachable("timed out".to_owned()))?
    .map_err(|e| unreachable(e.to_string()))?;
    let mut probe = manager.clone();
    let pong: String =
        tokio::time::timeout(STARTUP_TIMEOUT, redis::cmd("PING").query_async(&mut probe))
            .await
            .map_err(|_| unreachable("PING timed out".to_owned()))?
            .map_err(|e| unreachable(e.to_string()))?;
    if pong != "PONG" {
        return Err(unreachable(format!("unexpected PING reply {pong:?}")));
    }
    Ok((client, manager))
}

/// Whether this process can reach Redis, as its requests find out: any request
/// that fails for want of Redis (connection refused or dropped, I/O error, timeout,
/// a server still loading) marks it down at once, and the next one that succeeds
/// marks it up again. `/readyz` follows it, and the node heartbeat — a bounded
/// request every second — makes sure it is never older than one beat.
///
/// Errors Redis answered with (a script error, a wrong type) say nothing about
/// reachability and leave it as it is.
#[derive(Debug, Clone)]
pub struct Health(Arc<AtomicBool>);

impl Default for Health {
    /// Up: a service starts only after [`connect`] proved Redis answers.
    fn default() -> Self {
        Self(Arc::new(AtomicBool::new(true)))
    }
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_up(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// A request succeeded. Cheap when nothing changes (one load, no store), as it
    /// runs for every publish.
    pub fn up(&self) {
        if !self.is_up() && !self.0.swap(true, Ordering::Relaxed) {
            tracing::info!("Redis answers again");
        }
    }

    /// A request could not reach Redis (or took too long).
    pub fn down(&self, cause: &dyn std::fmt::Display) {
        if self.is_up() && self.0.swap(false, Ordering::Relaxed) {
            tracing::warn!(cause = %cause, "Redis is unreachable: not ready until it answers");
        }
    }

    /// Records what one request's outcome says about Redis being reachable.
    pub fn record<T>(&self, res: &redis::RedisResult<T>) {
        match res {
            Ok(_) => self.up(),
            Err(e) => self.failed(e),
        }
    }

    /// Records a failed request: down if Redis could not be reached.
    pub fn failed(&self, e: &redis::RedisError) {
        if is_outage(e) {
            self.down(e);
        }
    }
}

/// Whether an error means Redis could not be reached or could not serve, as opposed
/// to an answer it gave (a script error, a wrong type).
pub fn is_outage(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
            )
        )
}

/// `fut` bounded by `limit`: a Redis that hangs fails like one that is gone, with
/// an I/O error (so [`is_outage`] counts it) naming what timed out.
pub async fn within<T>(
    limit: Duration,
    what: &'static str,
    fut: impl Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| {
        Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "timed out",
            what.to_owned(),
        )))
    })
}

/// Appends a limit hit to the rate-limit events the monitor reads (on Redis the
/// `herald:ratelimit` stream; capped
/// at [`RATELIMIT_STREAM_MAXLEN`] entries). Best effort: the caller counts failures.
pub async fn record_ratelimit(
    engine: &crate::engine::Engine,
    keys: &crate::keys::Keys,
    event: &herald_proto::node::RateLimitEvent,
) -> redis::RedisResult<()> {
    let r = match engine {
        crate::engine::Engine::Redis(r) => r,
        crate::engine::Engine::Memory(m) => {
            m.record_ratelimit(event, RATELIMIT_STREAM_MAXLEN as usize);
            return Ok(());
        }
    };
    within(
        RESPONSE_TIMEOUT,
        "rate-limit event",
        redis::cmd("XADD")
            .arg(keys.ratelimit_events())
            .arg("MAXLEN")
            .arg("~")
            .arg(RATELIMIT_STREAM_MAXLEN)
            .arg("*")
            .arg(&event.fields()[..])
            .query_async(&mut r.conn.clone()),
    )
    .await
}

/// Entries the rate-limit stream keeps (approximately: `MAXLEN ~`).
pub const RATELIMIT_STREAM_MAXLEN: u64 = 1000;

/// Creates `stream`'s consumer `group` (and the stream), accepting one that exists.
/// The group reads from the start of the stream, so entries added while no group
/// existed (before the first consumer, or after a Redis restart) are not skipped.
pub async fn ensure_group(conn: &mut Conn, stream: &str, group: &str) -> redis::RedisResult<()> {
    let res: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match res {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// Whether Redis answers `PING` within the response timeout.
pub async fn ping(conn: &mut Conn) -> bool {
    matches!(
        tokio::time::timeout(
            RESPONSE_TIMEOUT,
            redis::cmd("PING").query_async::<String>(conn)
        )
        .await,
        Ok(Ok(_))
    )
}

/// The URL without its password, for logs and errors.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        // No scheme (a configuration mistake): everything before the `@` may be a password.
        (None, Some(at)) => format!("***{}", &url[at..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_follows_outages_not_answers() {
        let h = Health::new();
        assert!(h.is_up());
        let refused: redis::RedisError =
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into();
        h.record::<()>(&Err(refused));
        assert!(!h.is_up());
        // A clone shares the state: `/readyz` and the request paths see one flag.
        let seen = h.clone();
        h.record(&Ok(()));
        assert!(seen.is_up());
        let answered = redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, "nope"));
        h.record::<()>(&Err(answered));
        assert!(h.is_up());
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redacted("redis://:pw@h:1"), "redis://***@h:1");
        assert_eq!(redacted("redis://h:1"), "redis://h:1");
        assert_eq!(redacted(":pw@h:1"), "***@h:1");
    }
}
