//! The node heartbeat: every service writes its [`NodeInfo`] into the engine each
//! second (on Redis: `herald:nodes` ZSET + `herald:node:<id>`), which is all the
//! monitor needs to tell up from stale from down. A graceful stop deregisters at once.
//!
//! The beat is also the service's readiness probe of Redis: it is bounded by
//! [`BEAT_TIMEOUT`] and its outcome is recorded in the service's [`store::Health`],
//! so `/readyz` turns 503 within one beat of Redis going away (or hanging) even
//! when nothing else is asking Redis anything.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use herald_proto::node::NodeInfo;
use herald_proto::time::now_ms;

use crate::engine::Engine;
use crate::keys::Keys;
use crate::store;

/// How often a node beats.
pub const BEAT_INTERVAL: Duration = Duration::from_secs(1);
/// How long one beat may take before Redis counts as unreachable. Far below
/// [`store::RESPONSE_TIMEOUT`] and [`BEAT_INTERVAL`]: a local Redis answers in well
/// under a millisecond, and a Redis that hangs must not keep the service "ready".
pub const BEAT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a node's stats outlive its last beat: the monitor lists a silent
/// node as down for five minutes, so its details must still be readable then.
pub const NODE_TTL_MS: u64 = 5 * 60 * 1000 + 10_000;

/// Fills in the live parts of a node's [`NodeInfo`] at each beat.
pub type StatsFn = Arc<dyn Fn(&mut NodeInfo) + Send + Sync>;

/// Beats until `token` is cancelled, then deregisters. Each beat's outcome goes
/// into `health`, which `/readyz` follows.
pub async fn run_heartbeat(
    engine: Engine,
    keys: Keys,
    base: NodeInfo,
    stats: StatsFn,
    health: store::Health,
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
        match tokio::time::timeout(BEAT_TIMEOUT, beat(&engine, &keys, &info)).await {
            Ok(res) => health.record(&res),
            Err(_) => health.down(&format_args!("the heartbeat took over {BEAT_TIMEOUT:?}")),
        }
    }
    deregister(&engine, &keys, &base.id).await;
}

async fn beat(engine: &Engine, keys: &Keys, info: &NodeInfo) -> redis::RedisResult<()> {
    let r = match engine {
        Engine::Redis(r) => r,
        Engine::Memory(m) => {
            m.beat(info, NODE_TTL_MS);
            return Ok(());
        }
    };
    let json = serde_json::to_string(info).map_err(|e| {
        redis::RedisError::from((redis::ErrorKind::Client, "cannot encode", e.to_string()))
    })?;
    redis::pipe()
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
        .query_async(&mut r.conn.clone())
        .await
}

/// The ids of the nodes of `service` whose last beat is recent enough to count as
/// live (within [`crate::presence::DEAD_AFTER_MS`]).
pub async fn live_nodes(
    engine: &Engine,
    keys: &Keys,
    service: &str,
) -> redis::RedisResult<Vec<String>> {
    let cutoff = now_ms().saturating_sub(crate::presence::DEAD_AFTER_MS);
    let r = match engine {
        Engine::Redis(r) => r,
        Engine::Memory(m) => {
            return Ok(m
                .nodes()
                .into_iter()
                .filter(|(_, beat)| *beat >= cutoff)
                .filter(|(id, _)| m.node_info(id).is_some_and(|i| i.service == service))
                .map(|(id, _)| id)
                .collect());
        }
    };
    let mut conn = r.conn.clone();
    let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
        .arg(keys.nodes())
        .arg(cutoff)
        .arg("+inf")
        .query_async(&mut conn)
        .await?;
    if ids.is_empty() {
        return Ok(ids);
    }
    let infos: Vec<Option<String>> = redis::cmd("MGET")
        .arg(ids.iter().map(|id| keys.node(id)).collect::<Vec<_>>())
        .query_async(&mut conn)
        .await?;
    Ok(ids
        .into_iter()
        .zip(infos)
        .filter(|(_, info)| {
            info.as_deref()
                .and_then(|j| serde_json::from_str::<NodeInfo>(j).ok())
                .is_some_and(|i| i.service == service)
        })
        .map(|(id, _)| id)
        .collect())
}

/// Removes a node from the registry (graceful stop).
pub async fn deregister(engine: &Engine, keys: &Keys, id: &str) {
    let r = match engine {
        Engine::Redis(r) => r,
        Engine::Memory(m) => {
            m.deregister(id);
            tracing::info!(node = %id, "deregistered");
            return;
        }
    };
    let res: redis::RedisResult<()> = store::within(
        store::RESPONSE_TIMEOUT,
        "deregistration",
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
            .query_async(&mut r.conn.clone()),
    )
    .await;
    match res {
        Ok(()) => tracing::info!(node = %id, "deregistered"),
        Err(e) => tracing::warn!(node = %id, cause = %e, "could not deregister"),
    }
}
