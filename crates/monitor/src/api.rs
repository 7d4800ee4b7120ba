//! The HTTP API under `/api/v1`: overview, channels and the live stream are
//! served from the latest sample; connections are read from the gateways'
//! records in the engine on request; admin actions go out on the control channel.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRef, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::Stream;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use herald_common::engine::{Engine, RedisEngine};
use herald_common::http::{AdminKey, ApiError, RequiredKey};
use herald_common::keys::Keys;
use herald_proto::control::Control;
use herald_proto::monitor::{ChannelsPage, ConnRow, ConnectionsPage, STREAM_EVENT};
use herald_proto::node::ConnInfo;

use crate::metrics::Metrics;
use crate::sampler::{SAMPLE_INTERVAL, Shared};

/// Rows a list returns unless asked otherwise, and at most.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1_000;
/// Connection hashes are read in pages of this many entries.
const HSCAN_COUNT: usize = 500;
/// With a filter, the count of matches needs a full scan; past this many
/// entries a request stops and reports a lower bound rather than walk 100k
/// connections for one page.
const SCAN_BUDGET: usize = 100_000;
/// Ids in admin paths are ours to check, as they go out to every gateway.
const MAX_ID_BYTES: usize = 256;

/// What the handlers share: one `Arc`, cloned per request.
#[derive(Debug, Clone)]
pub(crate) struct AppState(pub(crate) Arc<Inner>);

impl std::ops::Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// The fields behind [`AppState`].
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) shared: Arc<Shared>,
    pub(crate) engine: Engine,
    pub(crate) keys: Keys,
    /// What the admin actions require.
    pub(crate) admin: RequiredKey,
    pub(crate) metrics: Metrics,
    /// Cancelled at shutdown, so open streams end and the server can drain.
    pub(crate) token: CancellationToken,
}

impl FromRef<AppState> for RequiredKey {
    fn from_ref(s: &AppState) -> Self {
        s.admin.clone()
    }
}

/// The read API.
pub(crate) fn routes(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/overview", get(overview))
        .route("/api/v1/channels", get(channels))
        .route("/api/v1/connections", get(connections))
        .route("/api/v1/stream", get(stream))
        .with_state(state)
}

/// The admin actions, served with [`routes`] or on their own listener.
pub(crate) fn admin_routes(state: AppState) -> Router {
    Router::new()
        .route(
            "/api/v1/connections/{conn_id}/disconnect",
            post(disconnect_conn),
        )
        .route("/api/v1/users/{user}/disconnect", post(disconnect_user))
        .with_state(state)
}

fn bad_query(e: QueryRejection) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text())
}

fn clamp_limit(limit: Option<usize>) -> usize {
    limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT)
}

// === Read endpoints ===

async fn overview(State(s): State<AppState>) -> Response {
    let snap = s.shared.snapshot();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        snap.overview_json.clone(),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct ChannelsQuery {
    prefix: Option<String>,
    limit: Option<usize>,
}

async fn channels(
    State(s): State<AppState>,
    q: Result<Query<ChannelsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(bad_query)?;
    let limit = clamp_limit(q.limit);
    let snap = s.shared.snapshot();
    let prefix = q.prefix.as_deref().unwrap_or("");
    let mut total = 0;
    let mut rows = Vec::new();
    for row in snap
        .channels
        .iter()
        .filter(|c| c.channel.starts_with(prefix))
    {
        total += 1;
        if rows.len() < limit {
            rows.push(row.clone());
        }
    }
    Ok(axum::Json(ChannelsPage {
        channels: rows,
        total,
    })
    .into_response())
}

#[derive(Debug, Deserialize)]
struct ConnectionsQuery {
    node: Option<String>,
    user: Option<String>,
    channel: Option<String>,
    limit: Option<usize>,
    offset: Option<usize>,
}

impl ConnectionsQuery {
    fn matches(&self, c: &ConnInfo) -> bool {
        self.user.as_ref().is_none_or(|u| &c.user == u)
            && self
                .channel
                .as_ref()
                .is_none_or(|ch| c.channels.iter().any(|x| x == ch))
    }

    fn filtered(&self) -> bool {
        self.user.is_some() || self.channel.is_some()
    }
}

async fn connections(
    State(s): State<AppState>,
    q: Result<Query<ConnectionsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(bad_query)?;
    let page = read_connections(&s, &q).await.inspect_err(|_| {
        s.metrics.redis_errors_total.inc();
    })?;
    Ok(axum::Json(page).into_response())
}

/// Walks the live gateways' connection records batch by batch, keeping one page.
async fn read_connections(
    s: &AppState,
    q: &ConnectionsQuery,
) -> Result<ConnectionsPage, redis::RedisError> {
    let limit = clamp_limit(q.limit);
    let offset = q.offset.unwrap_or(0);
    let nodes: Vec<String> = match &q.node {
        Some(n) => vec![n.clone()],
        None => {
            let snap = s.shared.snapshot();
            snap.live_nodes().map(|n| n.id.clone()).collect()
        }
    };
    let mut page = Vec::new();
    let mut matched: u64 = 0;
    let mut scanned = 0usize;
    let mut complete = true;
    'nodes: for (i, node) in nodes.iter().enumerate() {
        let mut cursor: u64 = 0;
        loop {
            let batch = read_conn_batch(&s.engine, &s.keys, node, cursor).await?;
            scanned += batch.scanned;
            for (conn_id, mut info) in batch.entries {
                if !q.matches(&info) {
                    continue;
                }
                matched += 1;
                if matched > offset as u64 && page.len() < limit {
                    if info.conn_id.is_empty() {
                        info.conn_id = conn_id;
                    }
                    if info.node.is_empty() {
                        info.node = node.clone();
                    }
                    page.push(ConnRow::from(info));
                }
            }
            cursor = batch.next;
            let more = cursor != 0 || i + 1 < nodes.len();
            // Unfiltered, the total comes from the counts below, so one full page is enough.
            if more && page.len() >= limit && (!q.filtered() || scanned >= SCAN_BUDGET) {
                complete = false;
                break 'nodes;
            }
            if cursor == 0 {
                break;
            }
        }
    }
    let total = if complete || q.filtered() {
        matched
    } else {
        count_connections(&s.engine, &s.keys, &nodes).await?
    };
    Ok(ConnectionsPage {
        connections: page,
        total,
        truncated: !complete && q.filtered(),
    })
}

/// One batch of a node's connection records.
#[derive(Debug, Default)]
struct ConnBatch {
    /// Where the next batch starts; 0 when this was the last.
    next: u64,
    /// Records read, counting unreadable ones (they cost the scan all the same).
    scanned: usize,
    /// The readable ones: conn id and record.
    entries: Vec<(String, ConnInfo)>,
}

/// The batch of `node`'s connection records at `cursor`: an HSCAN page on
/// Redis; every record at once on the memory engine, which has no round trips
/// to save.
async fn read_conn_batch(
    engine: &Engine,
    keys: &Keys,
    node: &str,
    cursor: u64,
) -> Result<ConnBatch, redis::RedisError> {
    let mut conn = match engine {
        Engine::Redis(RedisEngine { conn, .. }) => conn.clone(),
        Engine::Memory(m) => {
            let mut entries: Vec<(String, ConnInfo)> = m
                .connections(node)
                .into_iter()
                .map(|c| (c.conn_id.clone(), c))
                .collect();
            // In a stable order, so that offsets page through the same sequence.
            entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            return Ok(ConnBatch {
                next: 0,
                scanned: entries.len(),
                entries,
            });
        }
    };
    let (next, flat): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
        .arg(keys.node_connections(node))
        .arg(cursor)
        .arg("COUNT")
        .arg(HSCAN_COUNT)
        .query_async(&mut conn)
        .await?;
    let scanned = flat.len();
    let entries = flat
        .into_iter()
        .filter_map(
            |(conn_id, json)| match serde_json::from_str::<ConnInfo>(&json) {
                Ok(info) => Some((conn_id, info)),
                Err(_) => {
                    tracing::debug!(%node, %conn_id, "unreadable connection entry");
                    None
                }
            },
        )
        .collect();
    Ok(ConnBatch {
        next,
        scanned,
        entries,
    })
}

/// How many connection records `nodes` have in all.
async fn count_connections(
    engine: &Engine,
    keys: &Keys,
    nodes: &[String],
) -> Result<u64, redis::RedisError> {
    let mut conn = match engine {
        Engine::Redis(RedisEngine { conn, .. }) => conn.clone(),
        Engine::Memory(m) => return Ok(nodes.iter().map(|n| m.connection_count(n)).sum()),
    };
    let mut pipe = redis::pipe();
    for node in nodes {
        pipe.cmd("HLEN").arg(keys.node_connections(node));
    }
    let lens: Vec<u64> = pipe.query_async(&mut conn).await?;
    Ok(lens.iter().sum())
}

/// Server-Sent Events: one `overview` event per sample.
async fn stream(State(s): State<AppState>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let guard = StreamGuard::new(&s.metrics);
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let events =
        futures_util::stream::unfold((s, tick, guard), |(s, mut tick, guard)| async move {
            tokio::select! {
                _ = tick.tick() => {}
                () = s.token.cancelled() => return None,
            }
            let snap = s.shared.snapshot();
            let event = Event::default()
                .event(STREAM_EVENT)
                .data(snap.overview_json.as_str());
            Some((Ok(event), (s, tick, guard)))
        });
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// Counts an open stream for as long as it lives.
#[derive(Debug)]
struct StreamGuard(prometheus::IntGauge);

impl StreamGuard {
    fn new(metrics: &Metrics) -> Self {
        metrics.stream_clients.inc();
        Self(metrics.stream_clients.clone())
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

// === Admin actions ===

async fn disconnect_conn(
    _admin: AdminKey,
    State(s): State<AppState>,
    Path(conn_id): Path<String>,
) -> Result<Response, ApiError> {
    check_id("conn_id", &conn_id)?;
    send_control(&s, "disconnect_conn", &Control::DisconnectConn { conn_id }).await
}

async fn disconnect_user(
    _admin: AdminKey,
    State(s): State<AppState>,
    Path(user_id): Path<String>,
) -> Result<Response, ApiError> {
    check_id("user", &user_id)?;
    send_control(&s, "disconnect_user", &Control::DisconnectUser { user_id }).await
}

fn check_id(what: &str, id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(ApiError::unprocessable(format!(
            "{what} must be 1 to {MAX_ID_BYTES} bytes"
        )));
    }
    Ok(())
}

/// Publishes a control command to every gateway; the owner of the target acts on it.
async fn send_control(
    s: &AppState,
    action: &'static str,
    control: &Control,
) -> Result<Response, ApiError> {
    let json = serde_json::to_string(control).map_err(ApiError::internal)?;
    let gateways = s
        .engine
        .publish_raw(&s.keys.control(), json.clone())
        .await
        .inspect_err(|_| s.metrics.redis_errors_total.inc())?;
    s.metrics
        .admin_actions_total
        .with_label_values(&[action])
        .inc();
    tracing::info!(action, command = %json, gateways, "admin action published");
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({"ok": true})),
    )
        .into_response())
}
