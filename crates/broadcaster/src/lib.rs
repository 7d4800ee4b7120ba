//! Herald's broadcaster: the server-side publish API over HTTP, the bridges from the
//! original design's Redis channels, and durable background jobs whose results are
//! pushed to channels. Every channel publish goes through the shared publish script,
//! so gateways deliver it and clients can recover it from history.
//!
//! # Layout
//! - [`config`]: `--flags` / `HERALD_*` settings.
//! - [`api`]: the `/v1/*` HTTP handlers, key check and request metrics.
//! - [`jobs`]: job types (pure), their Redis state and the stream workers.
//! - [`bridge`]: the legacy `system_notifications` / `user_messages` subscribers.
//! - [`metrics`]: the Prometheus registry and metric handles.
//! - [`backoff`]: the reconnect delay schedule.

pub mod api;
pub mod backoff;
pub mod bridge;
pub mod config;
pub mod jobs;
pub mod metrics;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use redis::aio::ConnectionManager;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use herald_common::http::Ops;
use herald_common::keys::Keys;
use herald_common::node;
use herald_common::publish::Publisher;
use herald_common::store;
use herald_proto::envelope::FrameTemplate;
use herald_proto::node::NodeInfo;
use herald_proto::time::now_ms;

pub use config::Config;
use metrics::Metrics;

/// The service name in heartbeats.
pub const SERVICE: &str = "broadcaster";
/// How long background tasks (running jobs, the bridge, the heartbeat) get to stop
/// after the HTTP server has drained. A job still running then stays pending in
/// the stream, and another worker (or this one, restarted) claims it.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What the API handlers, job workers and bridges share. Cloned for every request
/// (axum state), so it is one `Arc`: cloning the fields themselves (metric handles,
/// the scripts' source text, strings) cost more than the publish.
#[derive(Debug, Clone)]
pub struct Ctx(Arc<CtxInner>);

impl std::ops::Deref for Ctx {
    type Target = CtxInner;

    fn deref(&self) -> &CtxInner {
        &self.0
    }
}

/// The fields behind [`Ctx`].
#[derive(Debug)]
pub struct CtxInner {
    /// The shared multiplexed connection for short requests (never for blocking ones).
    pub conn: ConnectionManager,
    /// For connections that must not be shared: Pub/Sub and blocking stream reads.
    pub client: redis::Client,
    pub keys: Keys,
    pub publisher: Publisher,
    pub metrics: Metrics,
    pub node_id: String,
    pub config: Arc<Config>,
    /// Whether Redis answered the last request; `/readyz` follows it.
    pub health: store::Health,
    /// Frames this node published (any source), for the heartbeat's `messages_out`.
    published: Arc<AtomicU64>,
    /// Publish requests this node received (API and bridges), for `messages_in`.
    received: Arc<AtomicU64>,
}

impl Ctx {
    pub fn new(
        config: Config,
        client: redis::Client,
        conn: ConnectionManager,
    ) -> anyhow::Result<Self> {
        let keys = Keys::new(config.common.redis_prefix.clone());
        let publisher = Publisher::new(keys.clone(), config.history());
        let metrics = Metrics::new().context("cannot register metrics")?;
        let node_id = config.common.node_id(SERVICE);
        Ok(Self(Arc::new(CtxInner {
            conn,
            client,
            keys,
            publisher,
            metrics,
            node_id,
            config: Arc::new(config),
            health: store::Health::new(),
            published: Arc::default(),
            received: Arc::default(),
        })))
    }

    /// Publishes `frame` to `channel`, at most once per `once` id `(id, ttl_ms)` when
    /// given; returns `(offset, epoch, duplicate)`. Failures are counted here.
    pub async fn publish(
        &self,
        channel: &str,
        frame: &FrameTemplate,
        once: Option<(&str, u64)>,
    ) -> redis::RedisResult<(u64, String, bool)> {
        let mut conn = self.conn.clone();
        let res = match once {
            Some((id, ttl)) => {
                self.publisher
                    .publish_once(&mut conn, channel, frame, now_ms(), id, ttl)
                    .await
            }
            None => self
                .publisher
                .publish(&mut conn, channel, frame, now_ms())
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

/// Connects to Redis, then serves on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let local = listener.local_addr().context("listener has no address")?;
    let (client, conn) = store::connect(&config.common.redis_url).await?;
    let ctx = Ctx::new(config, client, conn)?;
    if ctx.config.api_key().is_none() {
        tracing::warn!("HERALD_API_KEY is not set: the publish API refuses every request (401)");
    }
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();

    let base = NodeInfo {
        id: ctx.node_id.clone(),
        service: SERVICE.to_owned(),
        address: ctx.config.common.advertise(local),
        version: herald_common::VERSION.to_owned(),
        started_ms: now_ms(),
        ..NodeInfo::default()
    };
    let stats: node::StatsFn = {
        let health = ctx.health.clone();
        let published = ctx.published.clone();
        let received = ctx.received.clone();
        Arc::new(move |info: &mut NodeInfo| {
            info.ready = health.is_up();
            info.messages_in = received.load(Ordering::Relaxed);
            info.messages_out = published.load(Ordering::Relaxed);
        })
    };
    tracker.spawn(node::run_heartbeat(
        ctx.conn.clone(),
        ctx.keys.clone(),
        base,
        stats,
        ctx.health.clone(),
        token.clone(),
    ));
    jobs::worker::spawn(&ctx, &tracker, &token);
    bridge::spawn(&ctx, &tracker, &token);

    let ops = Ops {
        registry: ctx.metrics.registry.clone(),
        // Nothing but Redis decides whether the broadcaster can serve.
        ready: Arc::new(AtomicBool::new(true)),
        redis: ctx.health.clone(),
    };
    let app = api::router(ctx.clone(), ops);
    tracing::info!(node = %ctx.node_id, addr = %local, "broadcaster serving");
    let limits = ctx.config.http.limits();
    herald_common::serve::serve(listener, app, limits, shutdown).await;

    herald_common::shutdown::stop_tasks(&token, &tracker, SHUTDOWN_GRACE).await;
    tracing::info!("broadcaster stopped");
    Ok(())
}
