//! HTTP plumbing every service shares: the JSON error shape
//! `{"error":{"code","message"}}`, a body extractor that tells "not JSON" (400)
//! from "wrong shape" (422), constant-time key checks, and the ops endpoints
//! `/healthz`, `/readyz` and `/metrics`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRef, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;

use crate::runtime::Readiness;
use crate::store::Health;

/// Largest HTTP body any service accepts.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// An HTTP error with the protocol's JSON shape.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds, sent as `Retry-After` with 429 and 503.
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_s: None,
        }
    }

    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_json", message)
    }

    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
    }

    /// A 401; `message` says what was expected and never repeats what was sent.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn too_many(retry_after_s: u64) -> Self {
        Self {
            retry_after_s: Some(retry_after_s.max(1)),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests",
            )
        }
    }

    pub fn unavailable() -> Self {
        Self {
            retry_after_s: Some(1),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "storage temporarily unavailable, retry",
            )
        }
    }

    /// A server-side failure: the cause is logged here, once; the client sees a generic body.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(cause = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }
}

impl From<redis::RedisError> for ApiError {
    fn from(e: redis::RedisError) -> Self {
        tracing::warn!(cause = %e, "redis request failed");
        Self::unavailable()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut resp = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 9110 §11.6.1: a 401 names the scheme it wants.
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(s) = self.retry_after_s
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

/// A JSON body: 400 when it is not JSON at all, 422 when it is JSON of the wrong shape.
/// No `Content-Type` is required, as curl users forget it.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::bad_json(format!("cannot read body: {e}")))?;
        parse_body(&bytes).map(ApiJson)
    }
}

/// The body rules of [`ApiJson`], for callers holding raw bytes.
pub fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
        return Err(ApiError::bad_json(format!("body is not valid JSON: {e}")));
    }
    // serde would read a JSON array as a struct's fields in order; bodies are objects.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::unprocessable("body must be a JSON object"));
    }
    serde_json::from_slice::<T>(bytes)
        .map_err(|e| ApiError::unprocessable(format!("body has the wrong shape: {e}")))
}

/// Compares two secrets in constant time (for equal lengths; lengths leak, values do not).
pub fn secret_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The bearer token of a request, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Which key an endpoint asks for: named in its 401 messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// The broadcaster's publish key, `HERALD_API_KEY`.
    Api,
    /// The admin key of auth-svc and the monitor, `HERALD_ADMIN_KEY`.
    Admin,
}

impl KeyKind {
    fn name(self) -> &'static str {
        match self {
            Self::Api => "API key",
            Self::Admin => "admin key",
        }
    }

    fn variable(self) -> &'static str {
        match self {
            Self::Api => "HERALD_API_KEY",
            Self::Admin => "HERALD_ADMIN_KEY",
        }
    }
}

/// Requires `Authorization: Bearer <expected>`; with no key configured, refuses
/// everything. The 401 says what was expected (the header's form, or that the key
/// is wrong, or that none is configured) and never echoes what was sent.
pub fn require_key(
    headers: &HeaderMap,
    expected: Option<&str>,
    kind: KeyKind,
) -> Result<(), ApiError> {
    let Some(want) = expected.filter(|k| !k.is_empty()) else {
        return Err(ApiError::unauthorized(format!(
            "this endpoint is disabled: {} is not set on the server",
            kind.variable()
        )));
    };
    match bearer(headers).filter(|k| !k.is_empty()) {
        None => Err(ApiError::unauthorized(format!(
            "expected `Authorization: Bearer <{}>`",
            kind.name()
        ))),
        Some(got) if secret_eq(got, want) => Ok(()),
        Some(_) => Err(ApiError::unauthorized(format!("invalid {}", kind.name()))),
    }
}

/// The key a router's endpoints require, held in its state and reached through
/// `FromRef`; [`AdminKey`] checks requests against it.
#[derive(Debug, Clone)]
pub struct RequiredKey {
    kind: KeyKind,
    /// `None` (or empty) refuses every request.
    expected: Option<Arc<str>>,
    /// Counted on every refusal, where the service has such a metric.
    refusals: Option<prometheus::IntCounter>,
}

impl RequiredKey {
    pub fn new(kind: KeyKind, expected: Option<&str>) -> Self {
        Self {
            kind,
            expected: expected.filter(|k| !k.is_empty()).map(Arc::from),
            refusals: None,
        }
    }

    /// Counts every refused request in `counter`.
    #[must_use]
    pub fn counting(mut self, counter: prometheus::IntCounter) -> Self {
        self.refusals = Some(counter);
        self
    }

    /// Whether a key is configured at all (without one, every request is refused).
    pub fn is_set(&self) -> bool {
        self.expected.is_some()
    }
}

/// Proof that a request carried the key its router requires (see [`require_key`]
/// for the checks and their 401s). It reads only the headers, so used as a handler
/// argument or as `middleware::from_extractor_with_state`, the key is checked before
/// the body: a caller without it learns nothing about the body rules.
#[derive(Debug, Clone, Copy)]
pub struct AdminKey;

impl<S> FromRequestParts<S> for AdminKey
where
    RequiredKey: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let key = RequiredKey::from_ref(state);
        require_key(&parts.headers, key.expected.as_deref(), key.kind).inspect_err(|_| {
            if let Some(c) = &key.refusals {
                c.inc();
            }
        })?;
        Ok(Self)
    }
}

/// What the ops endpoints need. `/readyz` answers 200 when both `ready` and
/// `redis` say so.
#[derive(Debug, Clone)]
pub struct Ops {
    pub registry: prometheus::Registry,
    /// Met when the service's own dependencies (signing keys, the Pub/Sub
    /// connection, a first sample) are usable.
    pub ready: Readiness,
    /// Whether Redis answered the service's last request (see [`Health`]).
    pub redis: Health,
}

/// `/healthz`, `/readyz` and `/metrics`.
pub fn ops_routes<S: Clone + Send + Sync + 'static>(ops: Ops) -> Router<S> {
    Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(ops)
}

async fn readyz(State(ops): State<Ops>) -> Response {
    if ops.ready.is_ready() && ops.redis.is_up() {
        axum::Json(serde_json::json!({"status": "ready"})).into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "dependencies unavailable",
        )
        .into_response()
    }
}

async fn metrics(State(ops): State<Ops>) -> Response {
    match render_metrics(&ops.registry) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            )],
            text,
        )
            .into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

/// The registry in Prometheus text format.
pub fn render_metrics(registry: &prometheus::Registry) -> Result<String, prometheus::Error> {
    use prometheus::Encoder;
    let mut buf = Vec::new();
    prometheus::TextEncoder::new().encode(&registry.gather(), &mut buf)?;
    String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
}

/// Tracing and body-size layers every service puts on its router.
pub fn layers<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            MAX_BODY_BYTES,
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http().make_span_with(RequestSpan))
}

/// The span of one HTTP request: its method and path, never its query string (a
/// WebSocket client may put its token there, `/ws?token=…`) nor its headers
/// (`Authorization`). The log writer scrubs secrets too; this keeps them out of the
/// events in the first place.
#[derive(Debug, Clone, Copy)]
struct RequestSpan;

impl<B> tower_http::trace::MakeSpan<B> for RequestSpan {
    fn make_span(&mut self, req: &axum::http::Request<B>) -> tracing::Span {
        // tower-http's own target, so filters like `tower_http=debug` keep working.
        tracing::debug_span!(
            target: "tower_http::trace::make_span",
            "request",
            method = %req.method(),
            path = %req.uri().path(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code, reason = "only the shape matters")]
    struct Body {
        a: u32,
    }

    #[test]
    fn body_errors() {
        assert_eq!(parse_body::<Body>(b"nope").unwrap_err().status, 400);
        assert_eq!(
            parse_body::<Body>(b"{\"a\":\"x\"}").unwrap_err().status,
            422
        );
        assert_eq!(parse_body::<Body>(b"{}").unwrap_err().status, 422);
        assert_eq!(parse_body::<Body>(b"[1]").unwrap_err().status, 422);
        assert!(parse_body::<Body>(b"{\"a\":1}").is_ok());
    }

    #[track_caller]
    fn check_key(header: Option<&'static str>, expected: Option<&str>, message: Option<&str>) {
        let mut h = HeaderMap::new();
        if let Some(v) = header {
            h.insert(header::AUTHORIZATION, HeaderValue::from_static(v));
        }
        let got = require_key(&h, expected, KeyKind::Api).err();
        assert_eq!(
            got.as_ref().map(|e| e.status),
            message.map(|_| StatusCode::UNAUTHORIZED)
        );
        assert_eq!(got.as_ref().map(|e| e.message.as_str()), message);
    }

    #[test]
    fn keys() {
        let expected = Some("expected `Authorization: Bearer <API key>`");
        check_key(None, Some("k"), expected);
        check_key(Some("k"), Some("k"), expected);
        check_key(Some("Basic k"), Some("k"), expected);
        check_key(Some("Bearer "), Some("k"), expected);
        check_key(Some("Bearer k"), Some("k"), None);
        check_key(Some("bearer  k "), Some("k"), None);
        check_key(Some("Bearer kk"), Some("k"), Some("invalid API key"));
        let off = Some("this endpoint is disabled: HERALD_API_KEY is not set on the server");
        check_key(Some("Bearer k"), None, off);
        check_key(Some("Bearer "), Some(""), off);
    }

    /// Collects what a test subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn request_spans_carry_the_path_not_the_query_or_headers() {
        use tower::ServiceExt;
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let app: Router = layers(Router::new().route("/ws", get(|| async { "ok" })));
        let req = axum::http::Request::builder()
            .uri("/ws?channels=a&token=query-secret-123")
            .header(header::AUTHORIZATION, "Bearer header-secret-456")
            .body(axum::body::Body::empty())
            .unwrap();
        let resp = app.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("path=/ws"), "{text}");
        assert!(text.contains("method=GET"), "{text}");
        assert!(!text.contains("secret"), "{text}");
        assert!(!text.contains("channels="), "{text}");
    }
}
