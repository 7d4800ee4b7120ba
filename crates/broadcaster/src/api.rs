//! The HTTP API (docs/protocol.md): publish, broadcast, system notifications,
//! user messages and jobs, all behind `Authorization: Bearer <HERALD_API_KEY>`.

use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use herald_common::http::{ApiError, ApiJson, KeyKind, Ops, layers, ops_routes, require_key};
use herald_proto::client::{MAX_MESSAGE_DEPTH, nests_deeper_than};
use herald_proto::{channel, envelope, time::now_rfc3339};

use crate::Ctx;
use crate::jobs::{self, Job};

/// Most channels one `/v1/broadcast` may name.
pub const MAX_BROADCAST_CHANNELS: usize = 100;
/// Longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY: usize = 256;
/// Longest `user_id`, in bytes.
pub const MAX_USER_ID: usize = 255;

/// The whole HTTP surface: `/v1/*` (key required), ops endpoints, JSON 404s.
pub fn router(ctx: Ctx, ops: Ops) -> Router {
    let metrics = ctx.metrics.clone();
    let v1 = Router::new()
        .route("/v1/publish", post(publish))
        .route("/v1/broadcast", post(broadcast))
        .route("/v1/system", post(system))
        .route("/v1/user-messages", post(user_messages))
        .route("/v1/jobs", post(submit_job))
        .route("/v1/jobs/{id}", get(get_job))
        // The key is checked before the body is read, so a caller without it
        // learns nothing about the body rules.
        .route_layer(middleware::from_fn_with_state(ctx.clone(), check_key))
        .with_state(ctx);
    let app = Router::new()
        .merge(v1)
        .merge(ops_routes(ops))
        .fallback(|| async { ApiError::not_found("no such route") });
    layers(app).layer(middleware::from_fn_with_state(metrics, count_requests))
}

async fn check_key(State(ctx): State<Ctx>, req: Request, next: Next) -> Result<Response, ApiError> {
    require_key(req.headers(), ctx.config.api_key(), KeyKind::Api)?;
    Ok(next.run(req).await)
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
    State(ctx): State<Ctx>,
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
    ctx: &Ctx,
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
    State(ctx): State<Ctx>,
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
    State(ctx): State<Ctx>,
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
    target_channel: String,
    content: Box<RawValue>,
}

async fn user_messages(
    State(ctx): State<Ctx>,
    ApiJson(req): ApiJson<UserMessageReq>,
) -> Result<Json<Position>, ApiError> {
    check_user_id(&req.user_id)?;
    check_channel("target_channel", &req.target_channel)?;
    check_depth("content", &req.content)?;
    ctx.received();
    let frame = envelope::user_message(
        &req.target_channel,
        &req.user_id,
        &req.content,
        &now_rfc3339(),
    );
    Ok(Json(
        publish_counted(&ctx, &req.target_channel, &frame, None).await?,
    ))
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
    State(ctx): State<Ctx>,
    ApiJson(req): ApiJson<JobReq>,
) -> Result<Response, ApiError> {
    Job::parse(&req.job_type, &req.data).map_err(|e| ApiError::unprocessable(e.to_string()))?;
    check_channel("target_channel", &req.target_channel)?;
    let id = jobs::store::new_job_id();
    let mut conn = ctx.conn.clone();
    jobs::store::submit(
        &mut conn,
        &ctx.keys,
        &id,
        &req.job_type,
        &req.target_channel,
        &req.data,
    )
    .await
    .map_err(|e| ctx.redis_failed(e))?;
    ctx.metrics.jobs_total.with_label_values(&["queued"]).inc();
    tracing::info!(job_id = %id, job_type = %req.job_type, "job queued");
    let body = serde_json::json!({"job_id": id, "status": "queued"});
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

async fn get_job(State(ctx): State<Ctx>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    if !jobs::store::is_job_id(&id) {
        return Err(ApiError::not_found("no such job"));
    }
    let mut conn = ctx.conn.clone();
    let record = jobs::store::get(&mut conn, &ctx.keys, &id)
        .await
        .map_err(|e| ctx.redis_failed(e))?
        .ok_or_else(|| ApiError::not_found("no such job"))?;
    Ok(Json(record.to_json(&id)))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    use axum::body::Body;
    use axum::http::{Method, header};
    use clap::Parser;
    use redis::aio::{ConnectionManager, ConnectionManagerConfig};
    use tower::ServiceExt;

    use super::*;
    use crate::Config;

    const KEY: &str = "test-key";

    /// An app whose Redis is a closed port: everything before Redis is exercised for
    /// real, and every Redis call fails fast, as during an outage.
    fn app(api_key: Option<&str>) -> Router {
        let mut args = vec!["broadcaster", "--redis-url", "redis://127.0.0.1:1"];
        if let Some(k) = api_key {
            args.extend(["--api-key", k]);
        }
        let config = Config::try_parse_from(args).unwrap();
        let client = redis::Client::open(config.common.redis_url.as_str()).unwrap();
        let conn = ConnectionManager::new_lazy_with_config(
            client.clone(),
            ConnectionManagerConfig::new()
                .set_connection_timeout(Some(std::time::Duration::from_millis(200)))
                .set_number_of_retries(0),
        )
        .unwrap();
        let ctx = Ctx::new(config, client, conn).unwrap();
        let ops = Ops {
            registry: ctx.metrics.registry.clone(),
            ready: Arc::new(AtomicBool::new(true)),
            redis: ctx.health.clone(),
        };
        router(ctx, ops)
    }

    async fn call(
        app: &Router,
        method: Method,
        uri: &str,
        key: Option<&str>,
        body: &str,
    ) -> (u16, Value, Option<String>) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(k) = key {
            req = req.header(header::AUTHORIZATION, format!("Bearer {k}"));
        }
        let resp = app
            .clone()
            .oneshot(req.body(Body::from(body.to_owned())).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let retry = resp
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            retry,
        )
    }

    #[tokio::test]
    async fn key_is_required() {
        let app = app(Some(KEY));
        let body = r#"{"channel":"news","message":1}"#;
        for key in [None, Some("wrong"), Some("test-key2")] {
            let (status, v, _) = call(&app, Method::POST, "/v1/publish", key, body).await;
            assert_eq!(status, 401, "{key:?}");
            assert_eq!(v["error"]["code"], "unauthorized");
        }
        // The key is checked before the body.
        let (status, _, _) = call(&app, Method::POST, "/v1/publish", None, "nope").await;
        assert_eq!(status, 401);
        let (status, _, _) = call(&app, Method::GET, "/v1/jobs/0123", None, "").await;
        assert_eq!(status, 401);
    }

    #[tokio::test]
    async fn no_configured_key_refuses_everything() {
        let app = app(None);
        for key in [None, Some(""), Some("anything")] {
            let (status, _, _) =
                call(&app, Method::POST, "/v1/system", key, r#"{"content":"x"}"#).await;
            assert_eq!(status, 401);
        }
        // Ops endpoints stay open.
        let (status, _, _) = call(&app, Method::GET, "/healthz", None, "").await;
        assert_eq!(status, 200);
    }

    #[tokio::test]
    async fn body_errors() {
        let app = app(Some(KEY));
        let k = Some(KEY);
        let cases: &[(&str, &str, u16)] = &[
            ("/v1/publish", "not json", 400),
            ("/v1/publish", "", 400),
            ("/v1/publish", r#"{"channel":"news"}"#, 422),
            ("/v1/publish", r#"{"channel":5,"message":1}"#, 422),
            ("/v1/publish", r#"{"channel":"a b","message":1}"#, 422),
            (
                "/v1/publish",
                r#"{"channel":"a","message":1,"idempotency_key":""}"#,
                422,
            ),
            ("/v1/broadcast", r#"{"channels":[],"message":1}"#, 422),
            (
                "/v1/broadcast",
                r#"{"channels":["ok","b{a}d"],"message":1}"#,
                422,
            ),
            ("/v1/system", r#"{"message":"x"}"#, 422),
            (
                "/v1/user-messages",
                r#"{"user_id":"u","target_channel":"","content":1}"#,
                422,
            ),
            (
                "/v1/user-messages",
                r#"{"user_id":"","target_channel":"c","content":1}"#,
                422,
            ),
            (
                "/v1/jobs",
                r#"{"job_type":"mine_bitcoin","data":{},"target_channel":"j"}"#,
                422,
            ),
            (
                "/v1/jobs",
                r#"{"job_type":"sleep","data":{"ms":60001},"target_channel":"j"}"#,
                422,
            ),
            (
                "/v1/jobs",
                r#"{"job_type":"data_processing","data":[1,"x"],"target_channel":"j"}"#,
                422,
            ),
            (
                "/v1/jobs",
                r#"{"job_type":"sleep","data":{"ms":1},"target_channel":"j k"}"#,
                422,
            ),
        ];
        for (uri, body, want) in cases {
            let (status, v, _) = call(&app, Method::POST, uri, k, body).await;
            assert_eq!(status, *want, "{uri} {body}: {v}");
            assert!(v["error"]["code"].is_string(), "{v}");
            assert!(v["error"]["message"].is_string(), "{v}");
        }
    }

    #[tokio::test]
    async fn deep_payloads_are_refused() {
        let app = app(Some(KEY));
        let nested = |n: usize| format!("{}\"]\"{}", "[".repeat(n), "]".repeat(n));
        for depth in [MAX_MESSAGE_DEPTH + 1, 100_000] {
            let deep = nested(depth);
            let bodies = [
                (
                    "/v1/publish",
                    format!(r#"{{"channel":"c","message":{deep}}}"#),
                ),
                (
                    "/v1/broadcast",
                    format!(r#"{{"channels":["c"],"message":{deep}}}"#),
                ),
                ("/v1/system", format!(r#"{{"content":{deep}}}"#)),
                (
                    "/v1/user-messages",
                    format!(r#"{{"user_id":"u","target_channel":"c","content":{deep}}}"#),
                ),
            ];
            for (uri, body) in bodies {
                let (status, v, _) = call(&app, Method::POST, uri, Some(KEY), &body).await;
                assert_eq!(status, 422, "{uri} at depth {depth}: {v}");
                assert_eq!(v["error"]["code"], "invalid_request");
                let message = v["error"]["message"].as_str().unwrap_or_default();
                assert!(message.contains("deeper than 64"), "{message}");
            }
        }
        // At the limit the payload is accepted (and reaches Redis, which is away here).
        let body = format!(
            r#"{{"channel":"c","message":{}}}"#,
            nested(MAX_MESSAGE_DEPTH)
        );
        let (status, _, _) = call(&app, Method::POST, "/v1/publish", Some(KEY), &body).await;
        assert_eq!(status, 503);
    }

    #[tokio::test]
    async fn not_found_is_json() {
        let app = app(Some(KEY));
        let (status, v, _) = call(&app, Method::GET, "/v2/nothing", Some(KEY), "").await;
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (404, Some("not_found"))
        );
        let (status, v, _) = call(&app, Method::GET, "/v1/jobs/not-an-id", Some(KEY), "").await;
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (404, Some("not_found"))
        );
    }

    #[tokio::test]
    async fn redis_outage_is_503_with_retry_after() {
        let app = app(Some(KEY));
        let body = r#"{"channel":"news","message":{"a":1}}"#;
        let (status, v, retry) = call(&app, Method::POST, "/v1/publish", Some(KEY), body).await;
        assert_eq!(status, 503, "{v}");
        assert_eq!(v["error"]["code"], "unavailable");
        assert_eq!(retry.as_deref(), Some("1"));
        let (status, _, _) = call(
            &app,
            Method::GET,
            "/v1/jobs/0123456789abcdef0123456789abcdef",
            Some(KEY),
            "",
        )
        .await;
        assert_eq!(status, 503);
    }

    #[tokio::test]
    async fn metrics_count_requests_by_route() {
        let app = app(Some(KEY));
        call(&app, Method::POST, "/v1/publish", None, "{}").await;
        call(
            &app,
            Method::GET,
            "/v1/jobs/0123456789abcdef0123456789abcdef",
            None,
            "",
        )
        .await;
        let resp = app
            .clone()
            .oneshot(
                Request::builder()
                    .uri("/metrics")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        assert!(
            text.contains(r#"herald_http_requests_total{route="/v1/publish",status="401"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"herald_http_requests_total{route="/v1/jobs/{id}",status="401"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"herald_jobs_total{status="queued"} 0"#),
            "{text}"
        );
    }

    #[test]
    fn validation() {
        assert!(check_channel("channel", "news").is_ok());
        assert_eq!(check_channel("channel", "a b").unwrap_err().status, 422);
        assert_eq!(check_channel("channel", "").unwrap_err().status, 422);
        assert!(check_idempotency_key("k-1").is_ok());
        assert!(check_idempotency_key("").is_err());
        assert!(check_idempotency_key(&"k".repeat(257)).is_err());
        assert!(check_broadcast_channels(&["a".to_owned(), "b".to_owned()]).is_ok());
        assert!(check_broadcast_channels(&[]).is_err());
        assert!(check_broadcast_channels(&["a".to_owned(), "{b}".to_owned()]).is_err());
        assert!(check_broadcast_channels(&vec!["a".to_owned(); 101]).is_err());
        assert!(check_user_id("u1").is_ok());
        assert!(check_user_id("").is_err());
    }
}
