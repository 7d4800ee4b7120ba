//! Handler tests: `router(…).oneshot(request)`, with a Redis nobody listens on, or
//! on the memory engine.

use axum::body::Body;
use axum::http::{Method, header};
use clap::Parser;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tower::ServiceExt;

use herald_common::engine::{Engine, RedisEngine};
use herald_common::runtime::Runtime;

use super::*;
use crate::Config;

const KEY: &str = "test-key";

/// The shared state of a broadcaster on `engine`, and its runtime.
fn state(api_key: Option<&str>, engine: impl FnOnce(&Config) -> Engine) -> (AppState, Runtime) {
    let mut args = vec!["broadcaster", "--redis-url", "redis://127.0.0.1:1"];
    if let Some(k) = api_key {
        args.extend(["--api-key", k]);
    }
    let config = Config::try_parse_from(args).unwrap();
    let engine = engine(&config);
    let settings = config.validate().unwrap();
    let metrics = crate::metrics::Metrics::new().unwrap();
    let rt = Runtime::new(
        crate::SERVICE,
        &config.common,
        metrics.registry.clone(),
        crate::SHUTDOWN_GRACE,
        engine,
    );
    let ctx = AppState::new(config, &settings, &rt, metrics);
    (ctx, rt)
}

/// A Redis engine on a closed port: connected lazily, so every request fails fast,
/// as during an outage.
fn unreachable_redis(config: &Config) -> Engine {
    let client = redis::Client::open(config.common.redis_url()).unwrap();
    let conn = ConnectionManager::new_lazy_with_config(
        client.clone(),
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(std::time::Duration::from_millis(200)))
            .set_number_of_retries(0),
    )
    .unwrap();
    Engine::Redis(RedisEngine {
        client: herald_common::store::Client::Single(client),
        conn: herald_common::store::Conn::Single(conn),
        target: herald_common::store::Target::Single(config.common.redis_url().to_owned()),
    })
}

/// An app whose Redis is a closed port: everything before Redis is exercised for
/// real, and every Redis call fails fast, as during an outage.
fn app(api_key: Option<&str>) -> Router {
    let (ctx, rt) = state(api_key, unreachable_redis);
    router(ctx, rt.ops_routes())
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

#[tokio::test]
async fn publishes_and_runs_jobs_on_the_memory_engine() {
    let (ctx, rt) = state(Some(KEY), |_| Engine::memory());
    crate::jobs::worker::spawn(&ctx, &rt);
    crate::bridge::spawn(&ctx, &rt);
    let app = router(ctx.clone(), rt.ops_routes());
    let k = Some(KEY);

    let (status, _, _) = call(&app, Method::GET, "/readyz", None, "").await;
    assert_eq!(status, 200);

    let body = r#"{"channel":"news","message":{"a":1},"idempotency_key":"k1"}"#;
    let (status, first, _) = call(&app, Method::POST, "/v1/publish", k, body).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["offset"], 1);
    assert!(first["epoch"].is_string() && first.get("duplicate").is_none());
    let (_, replay, _) = call(&app, Method::POST, "/v1/publish", k, body).await;
    assert_eq!(
        (&replay["offset"], &replay["epoch"], &replay["duplicate"]),
        (&first["offset"], &first["epoch"], &Value::Bool(true))
    );
    let body = r#"{"channels":["news","other"],"message":"hi"}"#;
    let (status, v, _) = call(&app, Method::POST, "/v1/broadcast", k, body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["results"][0]["offset"], 2);
    assert_eq!(v["results"][1]["offset"], 1);
    let history = ctx.publisher.range("news", 1, 2).await.unwrap();
    assert_eq!(history.len(), 2);
    assert!(history[0].1.contains(r#""message":{"a":1}"#), "{history:?}");

    let body = r#"{"job_type":"data_processing","data":[1,2,3],"target_channel":"results"}"#;
    let (status, v, _) = call(&app, Method::POST, "/v1/jobs", k, body).await;
    assert_eq!(status, 202, "{v}");
    let uri = format!("/v1/jobs/{}", v["job_id"].as_str().unwrap());
    let job = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            let (status, job, _) = call(&app, Method::GET, &uri, k, "").await;
            assert_eq!(status, 200, "{job}");
            if job["status"] == "done" {
                return job;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the job finishes");
    assert_eq!(job["attempts"], 1);
    assert!(job["result"].is_object(), "{job}");
    // Its result was published once, on its target channel.
    let results = ctx.publisher.range("results", 1, 10).await.unwrap();
    assert_eq!(results.len(), 1, "{results:?}");
    assert!(
        results[0].1.contains(r#""type":"processing_result""#),
        "{results:?}"
    );
    assert!(results[0].1.contains(r#""status":"done""#), "{results:?}");

    rt.stop().await;
}
