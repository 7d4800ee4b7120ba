//! ws-gateway: holds client WebSocket connections, authenticates them, and fans
//! channel messages out to them from Redis.
//!
//! # Layout
//! - [`config`]: settings and their validation.
//! - `conn`: one task per client connection (protocol, limits, heartbeats, expiry).
//! - `hub`: local subscriptions and the per-message fan-out to connection queues.
//! - `driver`: the Redis Pub/Sub connection (demand-driven SUBSCRIBE, gap filling,
//!   end-to-end probe, control commands).
//! - `limits`: cluster-wide per-IP connection cap and attempt rate.
//! - `presence`: what the monitor reads about this node's connections and channels.
//! - `members`: this node's share of channel presence (joins, leaves), and the
//!   cleanup after dead nodes.
//! - `webhooks`: the webhook events this node records (channels occupied/vacated,
//!   members, client publishes).
//! - `proxy`: the application's hooks (connect, refresh, subscribe, publish) over HTTP.
//! - `metrics`: the Prometheus metrics.
//! - `assets`: `herald.js` for browsers, and the chat demo in development mode.

mod assets;
pub mod config;
mod conn;
mod driver;
mod handshake;
mod hub;
mod limits;
mod members;
mod metrics;
mod presence;
mod proxy;
mod state;
mod webhooks;

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use herald_common::engine::Engine;
use herald_common::jwt::{Alg, Verifier};
use herald_common::runtime::{Gate, Runtime};
use herald_common::serve::Limits;
use herald_proto::node::NodeInfo;

pub use config::{Config, Settings};
pub use handshake::SUBPROTOCOL;
use metrics::Metrics;
use state::State;

/// The service name in heartbeats and node ids.
pub const SERVICE: &str = "ws-gateway";
/// How long background tasks (the Pub/Sub driver, presence, the heartbeat) get to
/// stop once the connections have drained (`HERALD_SHUTDOWN_GRACE_MS`).
const BACKGROUND_GRACE: Duration = Duration::from_secs(5);
/// Pause between two attempts to fetch the JWKS at start.
const JWKS_RETRY: Duration = Duration::from_secs(1);

/// Runs the gateway on `listener` until `shutdown` resolves, then drains.
pub async fn run(
    listener: TcpListener,
    config: Config,
    engine: Option<Engine>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut settings = config.validate()?;
    settings.listen = listener
        .local_addr()
        .context("cannot read the listen address")?;
    let metrics = Metrics::new().context("cannot register metrics")?;
    let registry = metrics.registry.clone();
    let rt = Runtime::start(SERVICE, &config.common, registry, BACKGROUND_GRACE, engine).await?;
    config.jwt.warn_if_dev_secret(settings.alg, settings.dev);
    let (state, queues) = State::new(&config, settings.clone(), &rt, metrics.clone());
    if state.any_origin {
        tracing::warn!("HERALD_DEV=1 and no HERALD_ALLOWED_ORIGINS: accepting every Origin");
    }

    // Ready once the Pub/Sub connection delivers and the verification keys are in.
    if settings.alg != Alg::Hs256 {
        rt.spawn(load_keys(
            state.verifier.clone(),
            rt.readiness().gate(),
            rt.token(),
        ));
    }
    let driver = driver::Driver {
        hub: state.hub.clone(),
        engine: rt.engine().clone(),
        publisher: state.publisher.clone(),
        keys: state.keys.clone(),
        node_id: rt.node_id().to_owned(),
        metrics: metrics.clone(),
        probe_interval: settings.probe_interval,
        healthy: rt.readiness().gate(),
        tasks: rt.tracker().clone(),
    };
    rt.spawn(driver.run(queues.cmds, rt.token()));
    rt.spawn(presence::run(
        rt.engine().clone(),
        state.keys.clone(),
        rt.node_id().to_owned(),
        state.hub.clone(),
        state.ips.clone(),
        metrics.clone(),
        rt.health().clone(),
        queues.presence,
        queues.ip_release,
        rt.token(),
    ));
    let members = members::Members {
        presence: state.members.clone(),
        node: rt.node_id().to_owned(),
        hub: state.hub.clone(),
        metrics: metrics.clone(),
        hooks: state.webhooks.clone(),
    };
    rt.spawn(members::run(members, queues.member_changes, rt.token()));
    rt.spawn(webhooks::run(
        rt.engine().clone(),
        state.keys.clone(),
        metrics.clone(),
        queues.webhook_events,
        rt.token(),
    ));
    let address = config.common.advertise(settings.listen);
    rt.heartbeat(address, move |info| node_stats(&metrics, info));

    let app = Router::new()
        .route("/ws", get(handshake::ws_handler))
        .route("/", get(handshake::ws_handler))
        .with_state(state.clone())
        .merge(assets::routes(settings.dev))
        .merge(rt.ops_routes());
    // The HTTP cap bounds connections that have not upgraded yet (handshakes in
    // progress, ops requests); an upgraded socket leaves it and counts against
    // HERALD_MAX_CONNECTIONS, whose refusal is a 503 the client can act on.
    let limits = Limits {
        header_timeout: settings.handshake_timeout,
        max_header_bytes: settings.max_header_bytes,
        max_connections: settings.max_connections,
    };
    rt.serve(listener, herald_common::http::layers(app), limits, shutdown)
        .await;

    // Connections saw the draining token and are sending `disconnect` + 1001.
    state.tracker.close();
    let open = state.hub.conn_count();
    if tokio::time::timeout(settings.shutdown_grace, state.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(open, "shutdown grace expired with connections still open");
    }
    rt.stop().await;
    Ok(())
}

/// Fetches the JWKS until it has keys (the gateway is not ready before).
async fn load_keys(verifier: Verifier, loaded: Gate, token: CancellationToken) {
    while !token.is_cancelled() {
        match verifier.prefetch().await {
            Ok(n) if n > 0 => {
                loaded.set(true);
                tracing::info!(keys = n, "JWKS loaded");
                return;
            }
            _ => {
                tokio::select! {
                    () = tokio::time::sleep(JWKS_RETRY) => {}
                    () = token.cancelled() => return,
                }
            }
        }
    }
}

/// The gateway's numbers in its heartbeat.
fn node_stats(m: &Metrics, info: &mut NodeInfo) {
    let count = |g: &prometheus::IntGauge| u64::try_from(g.get()).unwrap_or(0);
    info.connections = count(&m.connections);
    info.subscriptions = count(&m.subscriptions);
    info.channels = count(&m.channels);
    info.messages_in = m.messages_received.get();
    info.messages_out = m.messages_delivered.get();
    info.ratelimit_hits = metrics::LIMIT_KINDS
        .iter()
        .map(|k| m.ratelimit_hits.with_label_values(&[k.as_str()]).get())
        .sum();
}
