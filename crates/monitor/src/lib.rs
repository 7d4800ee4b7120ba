//! Herald's monitor: aggregates every node's heartbeat and stats from Redis,
//! probes each node's `/healthz`, and serves the cluster view (JSON and a live
//! Server-Sent Events stream) and the admin actions of docs/protocol.md.
//!
//! # Layout
//! - [`config`]: flags and `HERALD_*` settings.
//! - `sample`: the pure part: node status, rates from counter deltas, the overview.
//! - `sampler`: the background reads from Redis, pruning of dead nodes, health probes.
//! - `api`: the `/api/v1` handlers, served from the latest sample.
//! - `metrics`: the Prometheus registry's contents.
//!
//! # Readings the protocol leaves open
//! - Rates are counter deltas between two of a node's beats, over the time between
//!   those beats (the node's own clock); reading the same beat twice keeps the last rate.
//!   Only `up` nodes report a non-zero rate.
//! - Totals of connections, subscriptions, channels and rates count live (up or
//!   stale) nodes only; `ratelimit_hits` sums every listed node's cumulative counter.
//! - A channel's `messages_per_sec` is the highest rate any gateway reports for it
//!   (each gateway with subscribers carries every message of the channel once);
//!   its `subscribers` are summed across gateways.
//! - `ratelimit.by_kind` and `hits_total` count the `herald:ratelimit` stream
//!   entries this monitor has read (the retained tail at start, then every new one).
//! - Extra fields: `stale` and `generated_ms` in the overview, `ready`,
//!   `started_at`, `channels`, `probe_ok`, `probe_latency_ms` per node, and
//!   `truncated` in a connections page whose filtered count stopped at its budget.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use herald_common::http::{Ops, layers, ops_routes};
use herald_common::keys::Keys;
use herald_common::node::{StatsFn, run_heartbeat};
use herald_common::serve::serve;
use herald_common::store;
use herald_proto::node::NodeInfo;
use herald_proto::time::now_ms;

mod api;
pub mod config;
mod metrics;
mod sample;
mod sampler;

pub use config::Config;

/// The service name nodes are listed under.
pub const SERVICE: &str = "monitor";
/// How long background tasks get to finish (the heartbeat deregisters) at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Connects to Redis, then serves on `listener` until `shutdown` resolves; then
/// ends open streams, deregisters this node and returns.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (_client, conn) = store::connect(&config.common.redis_url).await?;
    let keys = Keys::new(config.common.redis_prefix.clone());
    let registry = prometheus::Registry::new();
    let metrics = metrics::Metrics::new(&registry).context("cannot register metrics")?;
    let ready = Arc::new(AtomicBool::new(false));
    let shared = Arc::new(sampler::Shared::new());
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let local = listener
        .local_addr()
        .context("cannot read the listen address")?;

    if config.admin_key().is_none() {
        tracing::warn!("HERALD_ADMIN_KEY is not set: admin actions refuse every request");
    }

    // One round before serving, so the first request already sees the cluster.
    let mut sampler = sampler::Sampler::new(
        conn.clone(),
        keys.clone(),
        shared.clone(),
        metrics.clone(),
        ready.clone(),
    );
    sampler.round().await;
    tracker.spawn(sampler.run(token.child_token()));

    let probe_client = reqwest::Client::builder()
        .timeout(sampler::PROBE_TIMEOUT)
        .no_proxy()
        .build()
        .context("cannot build the probe client")?;
    tracker.spawn(sampler::run_prober(
        shared.clone(),
        probe_client,
        metrics.clone(),
        config.probe_interval(),
        token.child_token(),
    ));

    let node = NodeInfo {
        id: config.common.node_id(SERVICE),
        service: SERVICE.to_owned(),
        address: config.common.advertise(local),
        version: herald_common::VERSION.to_owned(),
        started_ms: now_ms(),
        ..NodeInfo::default()
    };
    tracing::info!(node = %node.id, address = %node.address, "registering as a node");
    // Ready once the sampler has read the cluster, and while Redis answers: the
    // sampler's round may take seconds to fail, the heartbeat's beat does not.
    let health = store::Health::new();
    let stats: StatsFn = {
        let ready = ready.clone();
        let health = health.clone();
        let clients = metrics.stream_clients.clone();
        Arc::new(move |info: &mut NodeInfo| {
            info.ready = ready.load(Ordering::Relaxed) && health.is_up();
            info.connections = u64::try_from(clients.get()).unwrap_or(0);
        })
    };
    tracker.spawn(run_heartbeat(
        conn.clone(),
        keys.clone(),
        node,
        stats,
        health.clone(),
        token.child_token(),
    ));

    let state = api::AppState {
        shared,
        conn,
        keys,
        admin_key: config.admin_key().map(Arc::from),
        metrics,
        token: token.clone(),
    };
    let ops = Ops {
        registry,
        ready,
        redis: health,
    };
    let finish = |r: axum::Router| {
        layers(
            r.fallback(|| async { herald_common::http::ApiError::not_found("no such endpoint") }),
        )
    };
    let limits = config.http.limits();
    // The admin listener is optional and named by the same configuration, so it is
    // bound here rather than by the caller.
    let app = match &config.admin_listen {
        Some(addr) => {
            let admin = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (HERALD_ADMIN_LISTEN)"))?;
            tracing::info!(addr = %admin.local_addr()?, "monitor admin actions listening");
            let admin_app = finish(api::admin_routes(state.clone()).merge(ops_routes(ops.clone())));
            let stop = token.clone();
            tracker.spawn(serve(admin, admin_app, limits, stop.cancelled_owned()));
            finish(api::routes(state).merge(ops_routes(ops)))
        }
        None => finish(
            api::routes(state.clone())
                .merge(api::admin_routes(state))
                .merge(ops_routes(ops)),
        ),
    };

    let stop = token.clone();
    serve(listener, app, limits, async move {
        shutdown.await;
        // Ends the streams (which would otherwise hold the drain open forever)
        // and the background tasks.
        stop.cancel();
    })
    .await;
    herald_common::shutdown::stop_tasks(&token, &tracker, SHUTDOWN_GRACE).await;
    tracing::info!("monitor stopped");
    Ok(())
}
