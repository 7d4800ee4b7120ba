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
//! - `metrics`: the Prometheus metrics.
//! - `assets`: `herald.js` for browsers, and the chat demo in development mode.

mod assets;
pub mod config;
mod conn;
mod driver;
mod hub;
mod limits;
mod metrics;
mod presence;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::extract::{ConnectInfo, Request, State as AxState};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use redis::aio::ConnectionManager;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use herald_common::http::{ApiError, Ops};
use herald_common::jwt::{Alg, AuthError, Verifier};
use herald_common::keys::Keys;
use herald_common::publish::Publisher;
use herald_proto::claims::Claims;
use herald_proto::disconnect::{Disconnect, DisconnectCode};
use herald_proto::node::{LimitKind, NodeInfo, RateLimitEvent};
use herald_proto::time::now_ms;

pub use config::Config;
use config::Settings;
use conn::Preauth;
use hub::Hub;
use limits::{IpLimiter, Refusal};
use metrics::Metrics;

/// Per-connection socket read buffer.
const READ_BUFFER_BYTES: usize = 1024;
/// Outgoing bytes buffered before tungstenite writes to the socket (flushes write
/// earlier; this only bounds how much one burst accumulates).
const WRITE_BUFFER_BYTES: usize = 16 * 1024;

/// Everything connection tasks and handlers share.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) settings: Settings,
    pub(crate) node_id: String,
    pub(crate) leeway: Duration,
    pub(crate) hub: Arc<Hub>,
    pub(crate) verifier: Verifier,
    pub(crate) publisher: Publisher,
    pub(crate) redis: ConnectionManager,
    /// Whether Redis answered the last request; `/readyz` follows it.
    pub(crate) health: herald_common::store::Health,
    pub(crate) keys: Keys,
    pub(crate) metrics: Metrics,
    pub(crate) ips: Arc<IpLimiter>,
    pub(crate) ip_release: mpsc::UnboundedSender<IpAddr>,
    pub(crate) presence: mpsc::UnboundedSender<presence::Event>,
    pub(crate) tracker: TaskTracker,
    /// Cancelled when the gateway stops accepting; each connection holds a child.
    pub(crate) shutdown: CancellationToken,
    pub(crate) next_key: AtomicU64,
    /// Whether Origin checks are relaxed (HERALD_DEV=1 without an allow-list).
    pub(crate) any_origin: bool,
    /// One clock for every connection's rate limiter: creating one per connection
    /// (governor's default) re-reads CPU identification each time.
    pub(crate) clock: governor::clock::DefaultClock,
}

/// The receiving ends of the queues [`State`] feeds, for the tasks that drain them.
pub(crate) struct Queues {
    /// Subscribe/unsubscribe requests for the Pub/Sub driver.
    pub(crate) cmds: mpsc::UnboundedReceiver<hub::Cmd>,
    /// Connection changes for the presence writer.
    pub(crate) presence: mpsc::UnboundedReceiver<presence::Event>,
    /// Per-IP slots to give back in Redis.
    pub(crate) ip_release: mpsc::UnboundedReceiver<IpAddr>,
}

impl State {
    /// The shared state of a gateway with these settings, talking to `redis`.
    pub(crate) fn new(
        config: &Config,
        settings: Settings,
        redis: ConnectionManager,
        metrics: Metrics,
    ) -> (Arc<Self>, Queues) {
        let keys = Keys::new(config.common.redis_prefix.clone());
        let (cmd_tx, cmds) = mpsc::unbounded_channel();
        let hub = Arc::new(Hub::new(
            cmd_tx,
            metrics.clone(),
            settings.queue_bytes,
            settings.queue_frames,
        ));
        let ips = Arc::new(IpLimiter::new(
            keys.clone(),
            settings.node_id.clone(),
            settings.max_conns_per_ip,
            settings.connect_rate_per_ip,
        ));
        let (presence_tx, presence) = mpsc::unbounded_channel();
        let (ip_tx, ip_release) = mpsc::unbounded_channel();
        let state = Self {
            leeway: Duration::from_secs(config.jwt.jwt_leeway_s.min(300)),
            node_id: settings.node_id.clone(),
            hub,
            verifier: Verifier::from_config(&config.jwt, settings.alg, settings.secret.as_deref()),
            publisher: Publisher::new(keys.clone(), settings.history),
            redis,
            health: herald_common::store::Health::new(),
            keys,
            metrics,
            ips,
            ip_release: ip_tx,
            presence: presence_tx,
            tracker: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            next_key: AtomicU64::new(1),
            any_origin: settings.allowed_origins.is_empty() && settings.dev,
            clock: governor::clock::DefaultClock::default(),
            settings,
        };
        let queues = Queues {
            cmds,
            presence,
            ip_release,
        };
        (Arc::new(state), queues)
    }

    /// Verifies a token and refuses revoked ones.
    pub(crate) async fn authenticate(&self, token: &str) -> Result<Claims, AuthError> {
        let claims = self.verifier.verify(token).await?;
        if let Some(jti) = &claims.jti {
            let mut redis = self.redis.clone();
            let revoked: redis::RedisResult<bool> = redis::cmd("EXISTS")
                .arg(self.keys.revoked(jti))
                .query_async(&mut redis)
                .await;
            match revoked {
                Ok(true) => return Err(AuthError::Revoked),
                Ok(false) => {}
                // Fail open: an outage must not lock every client out; revocations
                // still close connections through the control channel.
                Err(e) => {
                    self.metrics.redis_errors.inc();
                    self.health.failed(&e);
                }
            }
        }
        Ok(claims)
    }

    /// Records a limit hit for the monitor (`herald:ratelimit`), off the caller's path.
    pub(crate) fn report_ratelimit(&self, who: &str, kind: LimitKind) {
        let mut redis = self.redis.clone();
        let key = self.keys.ratelimit_events();
        let fields = RateLimitEvent {
            who: who.to_owned(),
            kind,
            node: self.node_id.clone(),
            at_ms: now_ms(),
        }
        .fields();
        tokio::spawn(async move {
            let _: redis::RedisResult<()> = redis::cmd("XADD")
                .arg(key)
                .arg("MAXLEN")
                .arg("~")
                .arg(1000)
                .arg("*")
                .arg(&fields[..])
                .query_async(&mut redis)
                .await;
        });
    }
}

/// Runs the gateway on `listener` until `shutdown` resolves, then drains.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut settings = config
        .settings()
        .map_err(|p| anyhow::anyhow!(p.join("; ")))?;
    let (client, redis) = herald_common::store::connect(&config.common.redis_url).await?;
    let local = listener.local_addr().context("listener address")?;
    settings.listen = local;
    let metrics = Metrics::new().context("metrics")?;
    let (state, queues) = State::new(&config, settings.clone(), redis.clone(), metrics.clone());
    let (keys, hub, health, node_id) = (
        state.keys.clone(),
        state.hub.clone(),
        state.health.clone(),
        state.node_id.clone(),
    );
    if state.any_origin {
        tracing::warn!("HERALD_DEV=1 and no HERALD_ALLOWED_ORIGINS: accepting every Origin");
    }
    let keys_loaded = Arc::new(AtomicBool::new(settings.alg == Alg::Hs256));
    let bg = CancellationToken::new();
    let bg_tasks = TaskTracker::new();

    if settings.alg != Alg::Hs256 {
        let v = state.verifier.clone();
        let loaded = keys_loaded.clone();
        let token = bg.clone();
        bg_tasks.spawn(async move {
            while !token.is_cancelled() {
                match v.prefetch().await {
                    Ok(n) if n > 0 => {
                        loaded.store(true, Ordering::Relaxed);
                        tracing::info!(keys = n, "JWKS loaded");
                        return;
                    }
                    _ => tokio::time::sleep(Duration::from_secs(1)).await,
                }
            }
        });
    }

    let pubsub_ok = Arc::new(AtomicBool::new(false));
    bg_tasks.spawn(
        driver::Driver {
            hub: hub.clone(),
            client,
            conn: redis.clone(),
            publisher: state.publisher.clone(),
            keys: keys.clone(),
            node_id: node_id.clone(),
            metrics: metrics.clone(),
            probe_interval: settings.probe_interval,
            healthy: pubsub_ok.clone(),
        }
        .run(queues.cmds, bg.clone()),
    );
    bg_tasks.spawn(presence::run(
        redis.clone(),
        keys.clone(),
        node_id.clone(),
        hub.clone(),
        state.ips.clone(),
        metrics.clone(),
        health.clone(),
        queues.presence,
        queues.ip_release,
        bg.clone(),
    ));

    // Ready when the Pub/Sub connection and the keys are (`ready`) and Redis answers
    // (`health`, which `/readyz` reads directly so that it flips at once).
    let ready = Arc::new(AtomicBool::new(false));
    let base = NodeInfo {
        id: node_id.clone(),
        service: "ws-gateway".to_owned(),
        address: config.common.advertise(local),
        version: herald_common::VERSION.to_owned(),
        started_ms: now_ms(),
        ..NodeInfo::default()
    };
    let stats_metrics = metrics.clone();
    let stats_ready = ready.clone();
    let stats_health = health.clone();
    let stats: herald_common::node::StatsFn = Arc::new(move |info: &mut NodeInfo| {
        let m = &stats_metrics;
        info.ready = stats_ready.load(Ordering::Relaxed) && stats_health.is_up();
        info.connections = m.connections.get().max(0) as u64;
        info.subscriptions = m.subscriptions.get().max(0) as u64;
        info.channels = m.channels.get().max(0) as u64;
        info.messages_in = m.messages_received.get();
        info.messages_out = m.messages_delivered.get();
        info.ratelimit_hits = metrics::LIMIT_KINDS
            .iter()
            .map(|k| m.ratelimit_hits.with_label_values(&[k.as_str()]).get())
            .sum();
    });
    bg_tasks.spawn(herald_common::node::run_heartbeat(
        redis.clone(),
        keys.clone(),
        base,
        stats,
        health.clone(),
        bg.clone(),
    ));
    {
        let (ready, token) = (ready.clone(), bg.clone());
        bg_tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            while !token.is_cancelled() {
                tick.tick().await;
                ready.store(
                    pubsub_ok.load(Ordering::Relaxed) && keys_loaded.load(Ordering::Relaxed),
                    Ordering::Relaxed,
                );
            }
        });
    }

    let ops = Ops {
        registry: metrics.registry.clone(),
        ready,
        redis: health,
    };
    let app = Router::new()
        .route("/ws", get(ws_handler))
        .route("/", get(ws_handler))
        .with_state(state.clone())
        .merge(assets::routes(settings.dev))
        .merge(herald_common::http::ops_routes(ops));
    let app = herald_common::http::layers(app);

    tracing::info!(addr = %local, node = %node_id, "ws-gateway listening");
    let stop = state.shutdown.clone();
    tokio::spawn(async move {
        shutdown.await;
        stop.cancel();
    });
    // The accept loop runs on a runtime worker, not on the thread blocked in `main`:
    // each accepted connection is then spawned where it will run, with no cross-thread
    // wake-up (futex) per connection.
    let accept = {
        // The HTTP cap bounds connections that have not upgraded yet (handshakes in
        // progress, ops requests); an upgraded socket leaves it and counts against
        // HERALD_MAX_CONNECTIONS, whose refusal is a 503 the client can act on.
        let limits = herald_common::serve::Limits {
            header_timeout: settings.handshake_timeout,
            max_header_bytes: settings.max_header_bytes,
            max_connections: settings.max_connections,
        };
        let stop = state.shutdown.clone();
        tokio::spawn(herald_common::serve::serve(
            listener,
            app,
            limits,
            stop.cancelled_owned(),
        ))
    };
    if let Err(e) = accept.await {
        tracing::error!(cause = %e, "accept loop failed");
    }

    // Connections saw the same token and are sending `disconnect` + 1001.
    state.tracker.close();
    let open = hub.conn_count();
    if tokio::time::timeout(settings.shutdown_grace, state.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(open, "shutdown grace expired with connections still open");
    }
    herald_common::shutdown::stop_tasks(&bg, &bg_tasks, Duration::from_secs(5)).await;
    tracing::info!("ws-gateway stopped");
    Ok(())
}

/// What a connection may say in its URL (`?token=…&channels=a,b&batch=1`).
#[derive(Debug, Default, PartialEq)]
struct ConnectQuery {
    token: Option<String>,
    channels: Vec<String>,
    batch: bool,
}

impl ConnectQuery {
    /// Reads the parameters the gateway knows and ignores the rest; a repeated one
    /// counts as its last value.
    fn parse(query: Option<&str>) -> Self {
        let mut q = Self::default();
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*k {
                "token" => q.token = Some(v.into_owned()),
                "channels" => {
                    q.channels = v
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect();
                }
                "batch" => q.batch = matches!(&*v, "1" | "true"),
                _ => {}
            }
        }
        q
    }
}

/// The handshake: origin, capacity and per-IP checks, then optional token auth,
/// all before the upgrade so refusals are plain HTTP statuses.
async fn ws_handler(
    AxState(state): AxState<Arc<State>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    // The request itself rather than `HeaderMap` and `Query` extractors: those copy the
    // headers and the query into owned maps for every connection.
    req: Request,
) -> Response {
    let headers = req.headers();
    let speaks_herald = offers_subprotocol(headers);
    let ws = match ws {
        Ok(ws) => ws,
        Err(_) => {
            return ApiError::new(
                StatusCode::UPGRADE_REQUIRED,
                "upgrade_required",
                "this endpoint speaks WebSocket",
            )
            .into_response();
        }
    };
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("").trim_end_matches('/');
        let allowed =
            state.any_origin || state.settings.allowed_origins.iter().any(|o| o == origin);
        if !allowed {
            return refuse(
                &state,
                ws,
                speaks_herald,
                ApiError::forbidden("origin not allowed"),
            );
        }
    }
    if state.hub.conn_count() >= state.settings.max_connections {
        state
            .metrics
            .ratelimit_hits
            .with_label_values(&[LimitKind::NodeCapacity.as_str()])
            .inc();
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "over_capacity",
            "this gateway is full; try another",
        );
        e.retry_after_s = Some(1);
        return refuse(&state, ws, speaks_herald, e);
    }
    let ip = peer.ip();
    let mut redis = state.redis.clone();
    let slot = match state
        .ips
        .acquire(&mut redis, ip, state.ip_release.clone())
        .await
    {
        Ok(slot) => slot,
        Err(refusal) => {
            let kind = refusal.kind();
            state
                .metrics
                .ratelimit_hits
                .with_label_values(&[kind.as_str()])
                .inc();
            state.report_ratelimit(&ip.to_string(), kind);
            let mut e = ApiError::too_many(1);
            e.message = match refusal {
                Refusal::TooMany => "too many connections from this address".to_owned(),
                Refusal::TooFast => "too many connection attempts from this address".to_owned(),
            };
            return refuse(&state, ws, speaks_herald, e);
        }
    };
    let query = ConnectQuery::parse(req.uri().query());
    let token = herald_common::http::bearer(headers)
        .map(str::to_owned)
        .or(query.token);
    let pre = match token {
        None => None,
        Some(t) => match state.authenticate(&t).await {
            Ok(claims) => Some(Preauth {
                claims,
                channels: query.channels,
                batch: query.batch,
            }),
            Err(e) => {
                state
                    .metrics
                    .auth_failures
                    .with_label_values(&[e.reason()])
                    .inc();
                tracing::info!(reason = e.reason(), %ip, "WebSocket login refused at the handshake");
                // A refused handshake must not hold this address's slot, not even until
                // the next batched release: give it back before answering.
                slot.release(&mut redis).await;
                let e = ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "authentication_failed",
                    "authentication failed",
                );
                return refuse(&state, ws, speaks_herald, e);
            }
        },
    };
    // Our own checks give `too_large` errors below this; beyond it the socket fails.
    let hard_limit = (state.settings.max_frame_bytes * 4).max(1 << 20);
    let tracker = state.tracker.clone();
    // Small buffers: tungstenite's defaults (128 KiB each way) are sized for bulk
    // transfer, but an idle connection should cost a few KiB. Larger frames still
    // work; the buffers grow while they are read or written.
    ws.protocols([SUBPROTOCOL])
        .max_message_size(hard_limit)
        .max_frame_size(hard_limit)
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .on_upgrade(move |socket| tracker.track_future(conn::serve(socket, state, ip, pre, slot)))
}

/// The WebSocket subprotocol of clients that want refusals as close codes. A browser
/// never sees the HTTP status of a refused handshake (only an abnormal close, 1006), so
/// it could not tell "stop: this origin is refused" from "back off: try another gateway".
pub const SUBPROTOCOL: &str = "herald.v1";

/// Whether the client listed [`SUBPROTOCOL`] in `Sec-WebSocket-Protocol`.
fn offers_subprotocol(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL)
}

/// How long a refused `herald.v1` client gets to read its `disconnect` and close frame.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);

/// Refuses a handshake: with the plain HTTP error, or, for a client speaking
/// [`SUBPROTOCOL`], by completing the upgrade and sending the same refusal as a
/// `disconnect` frame and a close code of 4000 + the HTTP status (4401, 4403, 4429,
/// 4503). Nothing the client sends is read, so a refused origin gains nothing from the
/// upgrade.
fn refuse(state: &State, ws: WebSocketUpgrade, speaks_herald: bool, e: ApiError) -> Response {
    if !speaks_herald {
        return e.into_response();
    }
    use axum::extract::ws::{CloseFrame, Message};
    let why = Disconnect::Refused(herald_proto::disconnect::Refusal {
        status: e.status.as_u16(),
        code: DisconnectCode::parse(e.code),
        reason: e.message.clone(),
        retry_after_ms: e.retry_after_s.map(|s| s * 1000),
    });
    let frame = why.frame().unwrap_or_default();
    // The close frame's reason is the code: short, and what clients without the
    // `disconnect` frame can act on.
    let close = CloseFrame {
        code: why.close_code(),
        reason: e.code.into(),
    };
    let tracker = state.tracker.clone();
    ws.protocols([SUBPROTOCOL])
        .max_message_size(1024)
        .on_upgrade(move |mut socket| {
            tracker.track_future(async move {
                let _ = tokio::time::timeout(REFUSAL_LINGER, async {
                    use futures_util::StreamExt;
                    socket.send(Message::Text(frame.into())).await.ok()?;
                    socket.send(Message::Close(Some(close))).await.ok()?;
                    // Wait for the client's close reply so the close code reaches it
                    // before the TCP connection goes away.
                    while socket.next().await?.is_ok() {}
                    Some(())
                })
                .await;
            })
        })
}

#[cfg(test)]
mod tests {
    use super::ConnectQuery;

    #[test]
    fn connect_query() {
        assert_eq!(ConnectQuery::parse(None), ConnectQuery::default());
        let q = ConnectQuery::parse(Some("token=a%2Eb&channels=x,%20y,,z&batch=1&other=2"));
        assert_eq!(q.token.as_deref(), Some("a.b"));
        assert_eq!(q.channels, ["x", "y", "z"]);
        assert!(q.batch);
        // Malformed escapes are taken literally, a repeat counts as its last value.
        let q = ConnectQuery::parse(Some("token=%zz&batch=true&batch=0"));
        assert_eq!(q.token.as_deref(), Some("%zz"));
        assert!(!q.batch);
    }
}
