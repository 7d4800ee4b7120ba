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

/// Opens a client and a managed connection, proving Redis answers `PING`.
pub async fn connect(url: &str) -> Result<(redis::Client, ConnectionManager), StoreError> {
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
pub async fn ensure_group(
    conn: &mut ConnectionManager,
    stream: &str,
    group: &str,
) -> redis::RedisResult<()> {
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
pub async fn ping(conn: &mut ConnectionManager) -> bool {
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
