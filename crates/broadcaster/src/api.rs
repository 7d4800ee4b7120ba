//! The HTTP API (docs/protocol.md): publish, broadcast, system notifications,
//! user messages, jobs, channel history and presence, and server-side subscribe,
//! unsubscribe and disconnect of a user's connections, all behind
//! `Authorization: Bearer <HERALD_API_KEY>`.

use axum::extract::rejection::QueryRejection;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use herald_common::http::{AdminKey, ApiError, ApiJson, layers};
use herald_common::presence::DEFAULT_MEMBERS_LIMIT;
use herald_common::publish::HistoryQuery;
use herald_proto::client::{MAX_MESSAGE_DEPTH, nests_deeper_than};
use herald_proto::{channel, envelope, time::now_rfc3339};

use crate::AppState;
use crate::jobs::{self, Job};

mod connections;

/// Most channels one `/v1/broadcast` may name.
pub const MAX_BROADCAST_CHANNELS: usize = 100;
/// Longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY: usize = 256;
/// Longest `user_id`, in bytes.
pub const MAX_USER_ID: usize = 255;

/// The whole HTTP surface: `/v1/*` (key required), `ops` (the ops endpoints),
/// JSON 404s.
pub fn router(ctx: AppState, ops: Router) -> Router {
    let metrics = ctx.metrics.clone();
    let v1 = Router::new()
        .route("/v1/publish", post(publish))
        .route("/v1/broadcast", post(broadcast))
        .route("/v1/system", post(system))
        .route("/v1/user-messages", post(user_messages))
        .route("/v1/jobs", post(submit_job))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/history/{channel}", get(history).delete(delete_history))
        .route("/v1/presence/{channel}", get(presence))
        .route("/v1/presence/{channel}/stats", get(presence_stats))
        .route("/v1/subscribe", post(connections::subscribe))
        .route("/v1/unsubscribe", post(connections::unsubscribe))
        .route("/v1/disconnect", post(connections::disconnect))
        // The key is checked before the body is read, so a caller without it
        // learns nothing about the body rules.
        .route_layer(middleware::from_extractor_with_state::<AdminKey, _>(
            ctx.clone(),
        ))
        .with_state(ctx);
    let app = Router::new()
        .merge(v1)
        .merge(ops)
        .fallback(|| async { ApiError::not_found("no such route") });
    layers(app).layer(middleware::from_fn_with_state(metrics, count_requests))
}

async fn count_requests(
    State(metrics): State<crate::metrics::Metrics>,
    req: Request,
    next: Next,
) -> Response {
    // Label by route template, never by the concrete path (job ids are unbounded).
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let resp = next.run(req).await;
    metrics
        .http_requests_total
        .with_label_values(&[route.as_str(), resp.status().as_str()])
        .inc();
    resp
}

// === Validation ===

fn check_channel(field: &str, name: &str) -> Result<(), ApiError> {
    channel::validate(name).map_err(|e| ApiError::unprocessable(format!("{field}: {e}")))
}

/// Refuses a payload nested deeper than clients can be expected to parse (the limit
/// the gateway applies to client broadcasts).
fn check_depth(field: &str, payload: &RawValue) -> Result<(), ApiError> {
    if nests_deeper_than(payload.get().as_bytes(), MAX_MESSAGE_DEPTH) {
        return Err(ApiError::unprocessable(format!(
            "{field} nests deeper than {MAX_MESSAGE_DEPTH} levels"
        )));
    }
    Ok(())
}

fn check_idempotency_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(ApiError::unprocessable(format!(
            "idempotency_key must be 1..={MAX_IDEMPOTENCY_KEY} bytes"
        )));
    }
    Ok(())
}

fn check_broadcast_channels(channels: &[String]) -> Result<(), ApiError> {
    if channels.is_empty() || channels.len() > MAX_BROADCAST_CHANNELS {
        return Err(ApiError::unprocessable(format!(
            "channels must name 1..={MAX_BROADCAST_CHANNELS} channels"
        )));
    }
    channels
        .iter()
        .try_for_each(|c| check_channel("channels", c))
}

fn check_user_id(user_id: &str) -> Result<(), ApiError> {
    if user_id.is_empty() || user_id.len() > MAX_USER_ID {
        return Err(ApiError::unprocessable(format!(
            "user_id must be 1..={MAX_USER_ID} bytes"
        )));
    }
    Ok(())
}

// === Publishing ===

/// A channel position, as every publish endpoint answers.
#[derive(Debug, Serialize)]
struct Position {
    offset: u64,
    epoch: String,
    /// Set on an idempotent replay: nothing was published this time.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    duplicate: bool,
}

#[derive(Debug, Deserialize)]
struct PublishReq {
    channel: String,
    /// Kept raw so the caller's JSON reaches clients byte for byte.
    message: Box<RawValue>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

async fn publish(
    State(ctx): State<AppState>,
    ApiJson(req): ApiJson<PublishReq>,
) -> Result<Json<Position>, ApiError> {
    check_channel("channel", &req.channel)?;
    check_depth("message", &req.message)?;
    let once = match &req.idempotency_key {
        Some(k) => {
            check_idempotency_key(k)?;
            Some(format!("idem:{k}"))
        }
        None => None,
    };
    ctx.received();
    let ts = now_rfc3339();
    let frame = envelope::message(&req.channel, &req.message, None, &ts);
    let once = once
        .as_deref()
        .map(|id| (id, ctx.config.idempotency_ttl_ms));
    Ok(Json(
        publish_counted(&ctx, &req.channel, &frame, once).await?,
    ))
}

/// Publishes through the shared script and counts it; an idempotent replay publishes
/// nothing and is not counted.
async fn publish_counted(
    ctx: &AppState,
    channel: &str,
    frame: &envelope::FrameTemplate,
    once: Option<(&str, u64)>,
) -> Result<Position, ApiError> {
    let (offset, epoch, duplicate) = ctx.publish(channel, frame, once).await?;
    if !duplicate {
        ctx.metrics.publish_total.inc();
    }
    Ok(Position {
        offset,
        epoch,
        duplicate,
    })
}

#[derive(Debug, Deserialize)]
struct BroadcastReq {
    channels: Vec<String>,
    message: Box<RawValue>,
}

#[derive(Debug, Serialize)]
struct ChannelPosition {
    channel: String,
    offset: u64,
    epoch: String,
}

async fn broadcast(
    State(ctx): State<AppState>,
    ApiJson(req): ApiJson<BroadcastReq>,
) -> Result<Json<Value>, ApiError> {
    check_broadcast_channels(&req.channels)?;
    check_depth("message", &req.message)?;
    ctx.received();
    let ts = now_rfc3339();
    let mut results = Vec::with_capacity(req.channels.len());
    for channel in req.channels {
        let frame = envelope::message(&channel, &req.message, None, &ts);
        let Position { offset, epoch, .. } = publish_counted(&ctx, &channel, &frame, None).await?;
        results.push(ChannelPosition {
            channel,
            offset,
            epoch,
        });
    }
    Ok(Json(serde_json::json!({ "results": results })))
}

#[derive(Debug, Deserialize)]
struct SystemReq {
    content: Box<RawValue>,
}

async fn system(
    State(ctx): State<AppState>,
    ApiJson(req): ApiJson<SystemReq>,
) -> Result<Json<Position>, ApiError> {
    check_depth("content", &req.content)?;
    ctx.received();
    let frame = envelope::system_notification(&req.content, &now_rfc3339());
    Ok(Json(
        publish_counted(&ctx, channel::SYSTEM_CHANNEL, &frame, None).await?,
    ))
}

#[derive(Debug, Deserialize)]
struct UserMessageReq {
    user_id: String,
    /// Absent: the user's personal channel, `user:<user_id>`.
    #[serde(default)]
    target_channel: Option<String>,
    content: Box<RawValue>,
}

async fn user_messages(
    State(ctx): State<AppState>,
    ApiJson(req): ApiJson<UserMessageReq>,
) -> Result<Json<Position>, ApiError> {
    check_user_id(&req.user_id)?;
    let target = req
        .target_channel
        .unwrap_or_else(|| format!("{}{}", channel::USER_CHANNEL_PREFIX, req.user_id));
    check_channel("target_channel", &target)?;
    check_depth("content", &req.content)?;
    ctx.received();
    let frame = envelope::user_message(&target, &req.user_id, &req.content, &now_rfc3339());
    Ok(Json(publish_counted(&ctx, &target, &frame, None).await?))
}

// === Jobs ===

#[derive(Debug, Deserialize)]
struct JobReq {
    job_type: String,
    #[serde(default)]
    data: Value,
    target_channel: String,
}

async fn submit_job(
    State(ctx): State<AppState>,
    ApiJson(req): ApiJson<JobReq>,
) -> Result<Response, ApiError> {
    Job::parse(&req.job_type, &req.data).map_err(|e| ApiError::unprocessable(e.to_string()))?;
    check_channel("target_channel", &req.target_channel)?;
    let id = jobs::store::new_job_id();
    ctx.jobs
        .submit(&id, &req.job_type, &req.target_channel, &req.data)
        .await
        .map_err(|e| ctx.redis_failed(e))?;
    ctx.metrics.jobs_total.with_label_values(&["queued"]).inc();
    tracing::info!(job_id = %id, job_type = %req.job_type, "job queued");
    let body = serde_json::json!({"job_id": id, "status": "queued"});
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

async fn get_job(
    State(ctx): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if !jobs::store::is_job_id(&id) {
        return Err(ApiError::not_found("no such job"));
    }
    let record = ctx
        .jobs
        .get(&id)
        .await
        .map_err(|e| ctx.redis_failed(e))?
        .ok_or_else(|| ApiError::not_found("no such job"))?;
    Ok(Json(record.to_json(&id)))
}

/// Messages one history read returns when the request does not say.
pub const DEFAULT_HISTORY_LIMIT: u64 = 100;

/// `GET /v1/history/{channel}?since=<offset>&epoch=<epoch>&limit=<n>&reverse=<bool>`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryParams {
    since: Option<u64>,
    epoch: Option<String>,
    limit: Option<u64>,
    #[serde(default)]
    reverse: bool,
}

#[derive(Debug, Serialize)]
struct HistoryPage<'a> {
    channel: &'a str,
    publications: Vec<&'a RawValue>,
    offset: u64,
    epoch: &'a str,
}

async fn history(
    State(ctx): State<AppState>,
    Path(channel): Path<String>,
    q: Result<Query<HistoryParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    check_channel("channel", &channel)?;
    let Query(q) = q.map_err(|e| ApiError::unprocessable(e.body_text()))?;
    let since = match (q.since, q.epoch.as_deref()) {
        (Some(offset), Some(epoch)) => Some((offset, epoch)),
        (None, None) => None,
        _ => {
            return Err(ApiError::unprocessable(
                "since and epoch go together: the position a client last saw",
            ));
        }
    };
    if q.limit == Some(0) {
        return Err(ApiError::unprocessable("limit must be at least 1"));
    }
    let kept = ctx.config.history_size.max(1);
    let query = HistoryQuery {
        since,
        limit: q.limit.unwrap_or(DEFAULT_HISTORY_LIMIT).min(kept),
        reverse: q.reverse,
    };
    let h = ctx
        .publisher
        .history(&channel, query)
        .await
        .map_err(|e| ctx.redis_failed(e))?;
    let publications = h
        .frames
        .iter()
        .filter_map(|f| serde_json::from_str::<&RawValue>(f).ok())
        .collect();
    let page = HistoryPage {
        channel: &channel,
        publications,
        offset: h.offset,
        epoch: &h.epoch,
    };
    Ok(Json(page).into_response())
}

async fn delete_history(
    State(ctx): State<AppState>,
    Path(channel): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_channel("channel", &channel)?;
    ctx.publisher
        .delete_history(&channel)
        .await
        .map_err(|e| ctx.redis_failed(e))?;
    tracing::info!(%channel, "history deleted");
    Ok(Json(serde_json::json!({"ok": true})))
}

/// Most members one `/v1/presence` answer may list.
pub const MAX_PRESENCE_LIMIT: usize = 10_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PresenceParams {
    limit: Option<usize>,
}

#[derive(Debug, Serialize)]
struct PresencePage<'a> {
    channel: &'a str,
    members: Vec<&'a RawValue>,
    truncated: bool,
}

/// The channel's members on every gateway: `?limit=` (default
/// `DEFAULT_MEMBERS_LIMIT`, at most [`MAX_PRESENCE_LIMIT`]), `truncated` when more.
async fn presence(
    State(ctx): State<AppState>,
    Path(channel): Path<String>,
    q: Result<Query<PresenceParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    check_channel("channel", &channel)?;
    let Query(q) = q.map_err(|e| ApiError::unprocessable(e.body_text()))?;
    let limit = match q.limit {
        Some(0) => return Err(ApiError::unprocessable("limit must be at least 1")),
        Some(n) if n > MAX_PRESENCE_LIMIT => {
            return Err(ApiError::unprocessable(format!(
                "limit must be at most {MAX_PRESENCE_LIMIT}"
            )));
        }
        Some(n) => n,
        None => DEFAULT_MEMBERS_LIMIT,
    };
    let m = ctx
        .presence
        .members(&channel, limit)
        .await
        .map_err(|e| ctx.redis_failed(e))?;
    let page = PresencePage {
        channel: &channel,
        members: m
            .members
            .iter()
            .filter_map(|r| serde_json::from_str::<&RawValue>(r).ok())
            .collect(),
        truncated: m.truncated,
    };
    Ok(Json(page).into_response())
}

/// How many connections and distinct users the channel has.
async fn presence_stats(
    State(ctx): State<AppState>,
    Path(channel): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_channel("channel", &channel)?;
    let s = ctx
        .presence
        .stats(&channel)
        .await
        .map_err(|e| ctx.redis_failed(e))?;
    Ok(Json(serde_json::json!({
        "channel": channel,
        "num_clients": s.num_clients,
        "num_users": s.num_users,
    })))
}

#[cfg(test)]
mod tests;
