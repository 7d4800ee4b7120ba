//! Herald's broadcaster: the server-side publish API over HTTP, the bridges from the
//! original design's Redis channels, background jobs whose results are pushed to
//! channels, and the delivery of webhook events to the application's backend. Every
//! channel publish goes through the engine's publish path (the shared publish script
//! on Redis), so gateways deliver it and clients can recover it from history.
//!
//! It runs on either engine. On the memory engine the jobs live in this process
//! (not durable across restarts) and the legacy bridges do not run: they read the
//! legacy system's Redis channels. Webhooks are refused there (with
//! `HERALD_WEBHOOK_URL` set, `run` fails at once): their queue is a Redis stream.
//!
//! # Layout
//! - [`config`]: `--flags` / `HERALD_*` settings.
//! - [`api`]: the `/v1/*` HTTP handlers, key check and request metrics.
//! - [`jobs`]: job types (pure), their state and queue on the engine, and the workers.
//! - [`bridge`]: the legacy `system_notifications` / `user_messages` subscribers.
//! - [`webhooks`]: the webhook events gateways record, POSTed signed and in order.
//! - [`metrics`]: the Prometheus registry and metric handles.

pub mod api;
pub mod bridge;
pub mod config;
pub mod jobs;
pub mod metrics;
pub mod webhooks;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::FromRef;
use tokio::net::TcpListener;

use herald_common::engine::Engine;
use herald_common::http::{KeyKind, RequiredKey};
use herald_common::keys::Keys;
use herald_common::presence::Presence;
use herald_common::publish::Publisher;
use herald_common::runtime::Runtime;
use herald_common::store;
use herald_proto::envelope::FrameTemplate;
use herald_proto::node::NodeInfo;
use herald_proto::time::now_ms;

pub use config::{Config, Settings};
use jobs::store::JobStore;
use metrics::Metrics;

/// The service name in heartbeats.
pub const SERVICE: &str = "broadcaster";
/// How long background tasks (running jobs, the bridge, the heartbeat) get to stop
/// after the HTTP server has drained. A job still running then stays pending in
/// the stream, and another worker (or this one, restarted) claims it; on the
/// memory engine it is lost with the process.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What the API handlers, job workers and bridges share. Cloned for every request
/// (axum state), so it is one `Arc`: cloning the fields themselves (metric handles,
/// the scripts' source text, strings) cost more than the publish.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Inner>);

impl std::ops::Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// The fields behind [`AppState`].
#[derive(Debug)]
pub struct Inner {
    /// Where the cluster's shared state lives.
    pub engine: Engine,
    /// Job states and the job queue: in the engine's Redis, or in this process.
    pub jobs: JobStore,
    pub keys: Keys,
    pub publisher: Publisher,
    /// Channel presence (read only: the gateways write it).
    pub presence: Presence,
    pub metrics: Metrics,
    pub node_id: String,
    pub config: Arc<Config>,
    /// What the publish API requires: `HERALD_API_KEY`.
    pub api_key: RequiredKey,
    /// Whether Redis answered the last request; `/readyz` follows it (always up
    /// on the memory engine).
    pub health: store::Health,
    /// Frames this node published (any source), for the heartbeat's `messages_out`.
    published: Arc<AtomicU64>,
    /// Publish requests this node received (API and bridges), for `messages_in`.
    received: Arc<AtomicU64>,
}

impl AppState {
    /// The shared state of a broadcaster with these settings, on `rt`'s node and
    /// engine (on the memory engine, with a new, empty job store).
    pub fn new(config: Config, settings: &Settings, rt: &Runtime, metrics: Metrics) -> Self {
        Self(Arc::new(Inner {
            engine: rt.engine().clone(),
            jobs: JobStore::new(rt.engine(), rt.keys()),
            publisher: Publisher::new(rt.engine().clone(), rt.keys().clone(), settings.history),
            presence: Presence::new(rt.engine().clone(), rt.keys().clone()),
            keys: rt.keys().clone(),
            metrics,
            node_id: rt.node_id().to_owned(),
            api_key: RequiredKey::new(KeyKind::Api, settings.api_key.as_deref()),
            config: Arc::new(config),
            health: rt.health().clone(),
            published: Arc::default(),
            received: Arc::default(),
        }))
    }

    /// Publishes `frame` to `channel`, at most once per `once` id `(id, ttl_ms)` when
    /// given; returns `(offset, epoch, duplicate)`. Failures are counted here.
    pub async fn publish(
        &self,
        channel: &str,
        frame: &FrameTemplate,
        once: Option<(&str, u64)>,
    ) -> redis::RedisResult<(u64, String, bool)> {
        let res = match once {
            Some((id, ttl)) => {
                self.publisher
                    .publish_once(channel, frame, now_ms(), id, ttl)
                    .await
            }
            None => self
                .publisher
                .publish(channel, frame, now_ms())
                .await
                .map(|(o, e)| (o, e, false)),
        };
        self.health.record(&res);
        match &res {
            Ok((_, _, false)) => {
                self.published.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(_) => self.metrics.redis_errors_total.inc(),
        }
        res
    }

    /// Counts one incoming publish request (API or bridge).
    pub(crate) fn received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failed Redis request and passes the error on.
    pub(crate) fn redis_failed(&self, e: redis::RedisError) -> redis::RedisError {
        self.metrics.redis_errors_total.inc();
        self.health.failed(&e);
        e
    }
}

impl FromRef<AppState> for RequiredKey {
    fn from_ref(ctx: &AppState) -> Self {
        ctx.api_key.clone()
    }
}

/// Serves on `listener` until `shutdown` resolves, on `engine` or, without one,
/// on the configured Redis (connecting to it first).
pub async fn run(
    listener: TcpListener,
    config: Config,
    engine: Option<Engine>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let settings = config.validate()?;
    if settings.webhooks.is_some() && engine.as_ref().is_some_and(|e| e.as_memory().is_some()) {
        anyhow::bail!(
            "HERALD_WEBHOOK_URL needs Redis (HERALD_REDIS_URL): webhook events are queued in a \
             Redis stream, which the in-memory engine does not have"
        );
    }
    // Here rather than in `main`, so the all-in-one `herald` registers it too.
    herald_common::telemetry::redact(&[settings.webhooks.as_ref().map(|w| w.secret.as_str())]);
    let metrics = Metrics::new().context("cannot register metrics")?;
    // Nothing but the engine decides whether the broadcaster can serve (and the
    // memory engine cannot go away): no readiness gate.
    let registry = metrics.registry.clone();
    let rt = Runtime::start(SERVICE, &config.common, registry, SHUTDOWN_GRACE, engine).await?;
    let address = config.common.advertise(listener.local_addr()?);
    let ctx = AppState::new(config, &settings, &rt, metrics);
    if !ctx.api_key.is_set() {
        tracing::warn!("HERALD_API_KEY is not set: the publish API refuses every request (401)");
    }

    let (published, received) = (ctx.published.clone(), ctx.received.clone());
    rt.heartbeat(address, move |info: &mut NodeInfo| {
        info.messages_in = received.load(Ordering::Relaxed);
        info.messages_out = published.load(Ordering::Relaxed);
    });
    jobs::worker::spawn(&ctx, &rt);
    bridge::spawn(&ctx, &rt);
    webhooks::spawn(&ctx, &rt, settings.webhooks);

    let app = api::router(ctx, rt.ops_routes());
    rt.serve(listener, app, settings.limits, shutdown).await;
    rt.stop().await;
    Ok(())
}
