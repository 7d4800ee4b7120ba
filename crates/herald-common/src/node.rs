//! The node heartbeat: every service writes its [`NodeInfo`] into Redis each second
//! (`herald:nodes` ZSET + `herald:node:<id>`), which is all the monitor needs to
//! tell up from stale from down. A graceful stop deregisters at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

use herald_proto::envelope::NodeInfo;
use herald_proto::time::now_ms;

use crate::keys::Keys;
use crate::store;

/// How often a node beats.
pub const BEAT_INTERVAL: Duration = Duration::from_secs(1);
/// How long a node's stats outlive its last beat: the monitor lists a silent
/// node as down for five minutes, so its details must still be readable then.
pub const NODE_TTL_MS: u64 = 5 * 60 * 1000 + 10_000;

/// Fills in the live parts of a node's [`NodeInfo`] at each beat.
pub type StatsFn = Arc<dyn Fn(&mut NodeInfo) + Send + Sync>;

/// Beats until `token` is cancelled, then deregisters. `ready` tracks whether the
/// last beat reached Redis, for `/readyz`.
pub async fn run_heartbeat(
    mut conn: ConnectionManager,
    keys: Keys,
    base: NodeInfo,
    stats: StatsFn,
    ready: Arc<AtomicBool>,
    token: CancellationToken,
) {
    let mut tick = tokio::time::interval(BEAT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = token.cancelled() => break,
        }
        let mut info = base.clone();
        info.beat_ms = now_ms();
        stats(&mut info);
        let ok = beat(&mut conn, &keys, &info).await;
        if !ok && ready.load(Ordering::Relaxed) {
            tracing::warn!(node = %info.id, "heartbeat could not reach Redis");
        }
        ready.store(ok, Ordering::Relaxed);
    }
    deregister(&mut conn, &keys, &base.id).await;
}

async fn beat(conn: &mut ConnectionManager, keys: &Keys, info: &NodeInfo) -> bool {
    let Ok(json) = serde_json::to_string(info) else {
        return false;
    };
    let res: redis::RedisResult<()> = redis::pipe()
        .cmd("SET")
        .arg(keys.node(&info.id))
        .arg(json)
        .arg("PX")
        .arg(NODE_TTL_MS)
        .ignore()
        .cmd("ZADD")
        .arg(keys.nodes())
        .arg(info.beat_ms)
        .arg(&info.id)
        .ignore()
        .query_async(conn)
        .await;
    res.is_ok()
}

/// Removes a node from the registry (graceful stop).
pub async fn deregister(conn: &mut ConnectionManager, keys: &Keys, id: &str) {
    let res: redis::RedisResult<()> = tokio::time::timeout(
        store::RESPONSE_TIMEOUT,
        redis::pipe()
            .cmd("ZREM")
            .arg(keys.nodes())
            .arg(id)
            .ignore()
            .cmd("DEL")
            .arg(keys.node(id))
            .arg(keys.node_connections(id))
            .arg(keys.node_channels(id))
            .ignore()
            .query_async(conn),
    )
    .await
    .unwrap_or_else(|_| Err(redis::RedisError::from((redis::ErrorKind::Io, "timed out"))));
    match res {
        Ok(()) => tracing::info!(node = %id, "deregistered"),
        Err(e) => tracing::warn!(node = %id, cause = %e, "could not deregister"),
    }
}
