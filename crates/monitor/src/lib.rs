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
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;

use herald_common::http::{ApiError, KeyKind, RequiredKey, layers};
use herald_common::runtime::Runtime;
use herald_proto::node::NodeInfo;

mod api;
pub mod config;
mod metrics;
mod sample;
mod sampler;

pub use config::{Config, Settings};

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
    let settings = config.validate()?;
    let registry = prometheus::Registry::new();
    let metrics = metrics::Metrics::new(&registry).context("cannot register metrics")?;
    let rt = Runtime::start(SERVICE, &config.common, registry, SHUTDOWN_GRACE).await?;
    let (conn, keys) = (rt.conn().clone(), rt.keys().clone());
    let admin = RequiredKey::new(KeyKind::Admin, settings.admin_key.as_deref());
    if !admin.is_set() {
        tracing::warn!("HERALD_ADMIN_KEY is not set: admin actions refuse every request");
    }

    // One round before serving, so the first request already sees the cluster.
    let shared = Arc::new(sampler::Shared::new());
    let ready = rt.readiness().gate();
    let mut sampler = sampler::Sampler::new(
        conn.clone(),
        keys.clone(),
        shared.clone(),
        metrics.clone(),
        ready,
    );
    sampler.round().await;
    rt.spawn(sampler.run(rt.token()));
    let probe_client = reqwest::Client::builder()
        .timeout(sampler::PROBE_TIMEOUT)
        .no_proxy()
        .build()
        .context("cannot build the probe client")?;
    rt.spawn(sampler::run_prober(
        shared.clone(),
        probe_client,
        metrics.clone(),
        settings.probe_interval,
        rt.token(),
    ));
    let clients = metrics.stream_clients.clone();
    let address = config.common.advertise(listener.local_addr()?);
    rt.heartbeat(address, move |info: &mut NodeInfo| {
        info.connections = u64::try_from(clients.get()).unwrap_or(0);
    });

    let state = api::AppState(Arc::new(api::Inner {
        shared,
        conn,
        keys,
        admin,
        metrics,
        // Ends the streams, which would otherwise hold the drain open forever.
        token: rt.draining(),
    }));
    let routers = (api::routes(state.clone()), api::admin_routes(state));
    let finish =
        |r: axum::Router| layers(r.fallback(|| async { ApiError::not_found("no such endpoint") }));
    let limits = config.http.limits();
    rt.serve_with_admin(
        listener,
        settings.admin_listen,
        routers,
        finish,
        limits,
        shutdown,
    )
    .await?;
    rt.stop().await;
    Ok(())
}
