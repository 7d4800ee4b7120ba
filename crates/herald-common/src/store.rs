//! Redis connections. A service checks Redis once at startup and refuses to start
//! with one clear line if it is unreachable; after that, the connection manager
//! reconnects by itself and requests fail fast (never hang) while Redis is away.

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
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redacted("redis://:pw@h:1"), "redis://***@h:1");
        assert_eq!(redacted("redis://h:1"), "redis://h:1");
    }
}
