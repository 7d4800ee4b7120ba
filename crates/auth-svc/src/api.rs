//! The HTTP API of docs/protocol.md: login, refresh, revoke, users and the JWKS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use serde_json::json;

use herald_common::http::{ApiError, ApiJson, KeyKind, Ops, layers, ops_routes, require_key};
use herald_common::jwt::JwtConfig;
use herald_common::keys::Keys;
use herald_common::store;
use herald_proto::control::Control;
use herald_proto::node::{LimitKind, RateLimitEvent};
use herald_proto::time::{now_ms, now_rfc3339};

use crate::metrics::Metrics;
use crate::password::{PasswordError, Passwords};
use crate::refresh::{RefreshStore, RefreshToken, Rotation};
use crate::signing::{KeyError, KeyStore, Signer};
use crate::throttle::Throttle;
use crate::tokens;
use crate::users::{self, User, UserStore};

/// Cap the rate-limit event stream the monitor reads, as the gateway does.
const RATELIMIT_STREAM_MAXLEN: u64 = 1000;

// === State ===

/// Everything the handlers share.
#[derive(Debug, Clone)]
pub(crate) struct AppState(pub(crate) Arc<Inner>);

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) conn: ConnectionManager,
    pub(crate) keys: Keys,
    pub(crate) jwt: JwtConfig,
    pub(crate) admin_key: Option<String>,
    pub(crate) access_ttl_s: u64,
    /// Shortest password accepted for a new user, in characters.
    pub(crate) min_password_len: usize,
    pub(crate) signer: Signer,
    /// Present in asymmetric mode.
    pub(crate) key_store: Option<KeyStore>,
    pub(crate) users: UserStore,
    pub(crate) refresh: RefreshStore,
    pub(crate) throttle: Throttle,
    pub(crate) passwords: Passwords,
    pub(crate) metrics: Metrics,
    pub(crate) node_id: String,
    /// Whether Redis answered the last request; `/readyz` follows it.
    pub(crate) health: store::Health,
}

impl std::ops::Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// The routers: the public API with the ops endpoints, and the admin endpoints
/// (users, revoke) — merged into the public one unless `separate_admin`, in which
/// case they are returned on their own for a private listener.
pub(crate) fn router(
    state: AppState,
    ops: Ops,
    separate_admin: bool,
    origins: Origins,
) -> (Router, Option<Router>) {
    let public = Router::new()
        .route("/v1/token", post(login))
        .route("/v1/token/refresh", post(refresh))
        .route_layer(cors(origins))
        .route("/.well-known/jwks.json", get(jwks))
        .with_state(state.clone());
    let admin = Router::new()
        .route("/v1/token/revoke", post(revoke))
        .route("/v1/users", post(create_user).get(list_users))
        .route("/v1/users/{name}", get(get_user).delete(delete_user))
        .with_state(state.clone());
    let finish = |r: Router| {
        layers(
            r.route_layer(axum::middleware::from_fn_with_state(state.clone(), track))
                .fallback(|| async { ApiError::not_found("no such endpoint") }),
        )
    };
    if separate_admin {
        (
            finish(public.merge(ops_routes(ops.clone()))),
            Some(finish(admin.merge(ops_routes(ops)))),
        )
    } else {
        (finish(public.merge(admin).merge(ops_routes(ops))), None)
    }
}

/// Which web pages may call the login and refresh endpoints from a browser.
#[derive(Debug, Clone)]
pub(crate) enum Origins {
    /// Development mode without a list: every origin.
    Any,
    /// Exactly these (an empty list: no browser page).
    List(Vec<String>),
}

/// CORS for login and refresh, so a page served from another origin than auth-svc
/// (the usual case) can log its user in. Credentials travel in the JSON body, never
/// in cookies, so no `Allow-Credentials`; the admin endpoints get no CORS at all.
fn cors(origins: Origins) -> tower_http::cors::CorsLayer {
    use axum::http::{HeaderValue, Method, header};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let allow = match origins {
        Origins::Any => AllowOrigin::any(),
        Origins::List(list) => AllowOrigin::list(
            list.iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect::<Vec<_>>(),
        ),
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::POST])
        .allow_headers([header::CONTENT_TYPE])
        .max_age(std::time::Duration::from_secs(600))
}

// === Errors ===

/// A handler failure: an expected API error, Redis being away (503), or an
/// internal fault (500, logged once).
#[derive(Debug)]
pub(crate) enum AppError {
    Api(ApiError),
    Redis(redis::RedisError),
    Internal(String),
}

/// Marks a response as caused by a Redis failure, for the metrics middleware;
/// `outage` when Redis could not be reached at all (readiness follows that).
#[derive(Debug, Clone, Copy)]
struct RedisFailure {
    outage: bool,
}

impl From<ApiError> for AppError {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

impl From<redis::RedisError> for AppError {
    fn from(e: redis::RedisError) -> Self {
        Self::Redis(e)
    }
}

impl From<PasswordError> for AppError {
    fn from(e: PasswordError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<KeyError> for AppError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Redis(e) => Self::Redis(e),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<jsonwebtoken::errors::Error> for AppError {
    fn from(e: jsonwebtoken::errors::Error) -> Self {
        Self::Internal(format!("signing failed: {e}"))
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match self {
            Self::Api(e) => e.into_response(),
            Self::Redis(e) => {
                tracing::warn!(cause = %e, "redis request failed");
                let mut resp = ApiError::unavailable().into_response();
                resp.extensions_mut().insert(RedisFailure {
                    outage: store::is_outage(&e),
                });
                resp
            }
            Self::Internal(cause) => ApiError::internal(cause).into_response(),
        }
    }
}

fn invalid_credentials() -> AppError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
        "invalid username or password",
    )
    .into()
}

fn invalid_grant(message: &str) -> AppError {
    ApiError::new(StatusCode::UNAUTHORIZED, "invalid_grant", message).into()
}

/// Counts every request by route template and status, and Redis failures.
async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let resp = next.run(req).await;
    if let Some(failure) = resp.extensions().get::<RedisFailure>() {
        state.metrics.redis_errors.inc();
        if failure.outage {
            state.health.down(&"a request could not reach Redis");
        }
    }
    state
        .metrics
        .http_requests
        .with_label_values(&[route.as_str(), resp.status().as_str()])
        .inc();
    resp
}

// === Admin ===

/// Proof that the request carried the admin key (checked before the body is read,
/// so a caller without the key learns nothing about the body rules).
#[derive(Debug)]
pub(crate) struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        require_key(&parts.headers, state.admin_key.as_deref(), KeyKind::Admin).inspect_err(
            |_| {
                state
                    .metrics
                    .auth_failures
                    .with_label_values(&["admin_key"])
                    .inc();
            },
        )?;
        Ok(Self)
    }
}

// === Tokens ===

#[derive(Debug, Deserialize)]
struct LoginRequest {
    username: String,
    password: String,
}

#[derive(Debug, Serialize)]
struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
    refresh_token: String,
}

impl AppState {
    /// A new access token for `user` plus `refresh`, counted under `grant`. In
    /// asymmetric mode the signing key's publication is extended to cover the
    /// token before it is handed out.
    async fn token_pair(
        &self,
        conn: &mut ConnectionManager,
        user: &User,
        refresh: &RefreshToken,
        grant: &str,
    ) -> Result<Json<TokenResponse>, AppError> {
        let claims = tokens::access_claims(
            &self.jwt,
            &user.username,
            &user.channels,
            &user.publish,
            self.access_ttl_s,
        );
        let (access_token, kid) = self.signer.sign_with_kid(&claims)?;
        if let (Some(store), Some(kid)) = (&self.key_store, kid) {
            store.record_expiry(conn, &kid, claims.exp).await?;
        }
        self.metrics.tokens_issued.with_label_values(&[grant]).inc();
        Ok(Json(TokenResponse {
            access_token,
            token_type: "Bearer",
            expires_in: self.access_ttl_s,
            refresh_token: refresh.expose(),
        }))
    }

    /// Tells the monitor about a throttled login; best effort.
    async fn report_throttled(&self, conn: &mut ConnectionManager, who: &str) {
        let ev = RateLimitEvent {
            who: who.to_owned(),
            kind: LimitKind::Login,
            node: self.node_id.clone(),
            at_ms: now_ms(),
        };
        let res: redis::RedisResult<()> = redis::cmd("XADD")
            .arg(self.keys.ratelimit_events())
            .arg("MAXLEN")
            .arg("~")
            .arg(RATELIMIT_STREAM_MAXLEN)
            .arg("*")
            .arg(&ev.fields()[..])
            .query_async(conn)
            .await;
        if let Err(e) = res {
            self.metrics.redis_errors.inc();
            tracing::debug!(cause = %e, "cannot record a rate-limit event");
        }
    }
}

/// `POST /v1/token`: username and password for a token pair.
async fn login(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Json<TokenResponse>, AppError> {
    let ip = peer.ip().to_canonical();
    let mut conn = s.conn.clone();
    if let Some(wait) = s.throttle.check(&mut conn, &req.username, ip).await? {
        s.metrics
            .auth_failures
            .with_label_values(&["throttled"])
            .inc();
        let who = if users::valid_username(&req.username) {
            req.username.clone()
        } else {
            ip.to_string()
        };
        s.report_throttled(&mut conn, &who).await;
        let mut e = ApiError::too_many(wait.as_secs() + u64::from(wait.subsec_nanos() > 0));
        e.message = "too many failed logins; retry later".to_owned();
        return Err(e.into());
    }
    // An impossible name skips the lookup but not the hashing work, so it costs
    // the same as any unknown user.
    let user = if users::valid_username(&req.username) {
        s.users.get(&mut conn, &req.username).await?
    } else {
        None
    };
    let hash = user.as_ref().map(|u| u.password_hash.as_str());
    let ok = s.passwords.verify(hash, &req.password).await;
    let Some(user) = user.filter(|_| ok) else {
        s.throttle.failed(&mut conn, &req.username, ip).await?;
        s.metrics
            .auth_failures
            .with_label_values(&["invalid_credentials"])
            .inc();
        return Err(invalid_credentials());
    };
    s.throttle.succeeded(&mut conn, &user.username).await?;
    let refresh = s.refresh.issue(&mut conn, &user.username).await?;
    tracing::info!(user = %user.username, "login");
    s.token_pair(&mut conn, &user, &refresh, "password").await
}

#[derive(Debug, Deserialize)]
struct RefreshRequest {
    refresh_token: String,
}

/// `POST /v1/token/refresh`: a refresh token for a new pair.
async fn refresh(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<RefreshRequest>,
) -> Result<Json<TokenResponse>, AppError> {
    let fail = |reason: &str| {
        s.metrics.auth_failures.with_label_values(&[reason]).inc();
    };
    let Some(old) = RefreshToken::parse(&req.refresh_token) else {
        fail("invalid_refresh");
        return Err(invalid_grant(
            "refresh token is invalid, expired or revoked",
        ));
    };
    let next = old.next();
    let mut conn = s.conn.clone();
    match s.refresh.rotate(&mut conn, &old, &next).await? {
        Rotation::Unknown => {
            fail("invalid_refresh");
            Err(invalid_grant(
                "refresh token is invalid, expired or revoked",
            ))
        }
        Rotation::Reused { user } => {
            fail("refresh_reuse");
            s.metrics.refresh_families_revoked.inc();
            tracing::warn!(%user, "a used refresh token was presented again; its family is revoked");
            Err(invalid_grant(
                "refresh token was already used; every token of its session is revoked",
            ))
        }
        Rotation::Rotated { user } => {
            let Some(user) = s.users.get(&mut conn, &user).await? else {
                fail("unknown_user");
                return Err(invalid_grant("the user no longer exists"));
            };
            s.token_pair(&mut conn, &user, &next, "refresh").await
        }
    }
}

#[derive(Debug, Deserialize)]
struct RevokeRequest {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    jti: Option<String>,
}

/// Longest `jti` accepted for revocation.
const MAX_JTI_LEN: usize = 256;

/// `POST /v1/token/revoke` (admin): marks a `jti` revoked for the token's
/// remaining life and tells every gateway.
async fn revoke(
    State(s): State<AppState>,
    _admin: Admin,
    ApiJson(req): ApiJson<RevokeRequest>,
) -> Result<Json<serde_json::Value>, AppError> {
    let leeway_ms = s.jwt.jwt_leeway_s * 1000;
    let default_ms = s.access_ttl_s * 1000 + leeway_ms;
    let (jti, ttl_ms) = match (req.token, req.jti) {
        (Some(token), _) => {
            let claims = s.signer.claims_of(&token).map_err(|_| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_token",
                    "token was not signed by this service",
                )
            })?;
            let jti = claims
                .jti
                .filter(|j| !j.is_empty())
                .ok_or_else(|| ApiError::unprocessable("token has no jti"))?;
            let ttl = if claims.exp == 0 {
                default_ms
            } else {
                (claims.exp * 1000 + leeway_ms).saturating_sub(now_ms())
            };
            (jti, ttl)
        }
        (None, Some(jti)) if !jti.is_empty() && jti.len() <= MAX_JTI_LEN => (jti, default_ms),
        (None, _) => {
            return Err(ApiError::unprocessable(format!(
                "give \"token\" or \"jti\" (1-{MAX_JTI_LEN} characters)"
            ))
            .into());
        }
    };
    let control = serde_json::to_string(&Control::Revoke { jti: jti.clone() })
        .map_err(|e| AppError::Internal(e.to_string()))?;
    let mut conn = s.conn.clone();
    redis::pipe()
        .cmd("SET")
        .arg(s.keys.revoked(&jti))
        .arg(1)
        .arg("PX")
        .arg(ttl_ms.max(1000))
        .ignore()
        .cmd("PUBLISH")
        .arg(s.keys.control())
        .arg(control)
        .ignore()
        .query_async::<()>(&mut conn)
        .await?;
    s.metrics.tokens_revoked.inc();
    tracing::info!(%jti, "token revoked");
    Ok(Json(json!({"revoked": true, "jti": jti})))
}

// === Users ===

#[derive(Debug, Deserialize)]
struct CreateUser {
    username: String,
    password: String,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
}

/// `POST /v1/users` (admin).
async fn create_user(
    State(s): State<AppState>,
    _admin: Admin,
    ApiJson(req): ApiJson<CreateUser>,
) -> Result<Response, AppError> {
    users::validate(
        &req.username,
        &req.password,
        s.min_password_len,
        &req.channels,
        &req.publish,
    )
    .map_err(|e| ApiError::unprocessable(e.to_string()))?;
    let user = User {
        password_hash: s.passwords.hash(&req.password).await?,
        username: req.username,
        channels: req.channels,
        publish: req.publish,
        created_at: now_rfc3339(),
    };
    let mut conn = s.conn.clone();
    if !s.users.create(&mut conn, &user).await? {
        return Err(ApiError::conflict("user already exists").into());
    }
    tracing::info!(user = %user.username, "user created");
    Ok((StatusCode::CREATED, Json(user.public())).into_response())
}

/// `GET /v1/users` (admin): every user name.
async fn list_users(
    State(s): State<AppState>,
    _admin: Admin,
) -> Result<Json<serde_json::Value>, AppError> {
    let mut conn = s.conn.clone();
    let names = s.users.list(&mut conn).await?;
    Ok(Json(json!({ "users": names })))
}

/// `GET /v1/users/{name}` (admin): the user without its password hash.
async fn get_user(
    State(s): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
) -> Result<Response, AppError> {
    let user = if users::valid_username(&name) {
        let mut conn = s.conn.clone();
        s.users.get(&mut conn, &name).await?
    } else {
        None
    };
    match user {
        Some(u) => Ok(Json(u.public()).into_response()),
        None => Err(ApiError::not_found("no such user").into()),
    }
}

/// `DELETE /v1/users/{name}` (admin).
async fn delete_user(
    State(s): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
) -> Result<StatusCode, AppError> {
    let deleted = users::valid_username(&name) && {
        let mut conn = s.conn.clone();
        s.users.delete(&mut conn, &name).await?
    };
    if deleted {
        tracing::info!(user = %name, "user deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("no such user").into())
    }
}

// === JWKS ===

/// How long clients may cache the JWKS; gateways refetch on an unknown `kid` anyway.
const JWKS_MAX_AGE: &str = "public, max-age=60";

/// `GET /.well-known/jwks.json`: read fresh from Redis, so a key another instance
/// just started signing with is always listed; the last known ring otherwise.
async fn jwks(State(s): State<AppState>) -> Response {
    if let (Some(store), Some(prev)) = (&s.key_store, s.signer.current_ring()) {
        let mut conn = s.conn.clone();
        match store.load(&mut conn, Some(&prev)).await {
            Ok(ring) => s.signer.set_ring(ring),
            Err(e) => {
                if matches!(e, KeyError::Redis(_)) {
                    s.metrics.redis_errors.inc();
                }
                tracing::warn!(cause = %e, "cannot reload signing keys; serving the last known ones");
            }
        }
    }
    (
        [(
            header::CACHE_CONTROL,
            HeaderValue::from_static(JWKS_MAX_AGE),
        )],
        Json(s.signer.jwks()),
    )
        .into_response()
}

/// Rereads the key ring every [`crate::signing::KEY_RELOAD_INTERVAL`] until cancelled.
pub(crate) async fn reload_keys(s: AppState, token: tokio_util::sync::CancellationToken) {
    let Some(store) = s.key_store.clone() else {
        return;
    };
    let mut tick = tokio::time::interval(crate::signing::KEY_RELOAD_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = token.cancelled() => return,
        }
        let prev = s.signer.current_ring();
        let mut conn = s.conn.clone();
        match tokio::time::timeout(
            Duration::from_secs(3),
            store.load(&mut conn, prev.as_deref()),
        )
        .await
        {
            Ok(Ok(ring)) => {
                s.metrics
                    .signing_keys
                    .set(i64::try_from(ring.keys.len()).unwrap_or(i64::MAX));
                if prev.is_some_and(|p| p.current.kid != ring.current.kid) {
                    tracing::info!(kid = %ring.current.kid, "signing with a new key");
                }
                s.signer.set_ring(ring);
            }
            Ok(Err(e)) => {
                if matches!(e, KeyError::Redis(_)) {
                    s.metrics.redis_errors.inc();
                }
                tracing::debug!(cause = %e, "cannot reload signing keys");
            }
            Err(_) => s.metrics.redis_errors.inc(),
        }
    }
}
