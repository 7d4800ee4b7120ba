//! The HTTP API of docs/protocol.md: login, refresh, revoke, users and the JWKS.
//!
//! - this module: the state, the routers, the error type and the request metrics;
//! - `tokens`: login, refresh, revoke, the JWKS and the key-ring reload;
//! - `users`: the admin endpoints managing users.

mod tokens;
mod users;

pub(crate) use tokens::reload_keys;

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRef, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use herald_common::engine::Engine;
use herald_common::http::{ApiError, RequiredKey, layers};
use herald_common::jwt::JwtConfig;
use herald_common::keys::Keys;
use herald_common::store;

use crate::metrics::Metrics;
use crate::password::{PasswordError, Passwords};
use crate::refresh::RefreshStore;
use crate::signing::{KeyError, KeyStore, Signer};
use crate::store::AuthStore;
use crate::throttle::Throttle;
use crate::users::UserStore;

// === State ===

/// Everything the handlers share.
#[derive(Debug, Clone)]
pub(crate) struct AppState(pub(crate) Arc<Inner>);

#[derive(Debug)]
pub(crate) struct Inner {
    /// What the services share: revocations, control messages, rate-limit events.
    pub(crate) engine: Engine,
    /// auth-svc's own records: users, refresh tokens, throttle counters, keys.
    pub(crate) store: AuthStore,
    pub(crate) keys: Keys,
    pub(crate) jwt: JwtConfig,
    /// What the admin endpoints require: `HERALD_ADMIN_KEY`.
    pub(crate) admin: RequiredKey,
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

impl FromRef<AppState> for RequiredKey {
    fn from_ref(s: &AppState) -> Self {
        s.admin.clone()
    }
}

/// The routers: the public API (login, refresh, the JWKS) and the admin endpoints
/// (users, revoke), for [`herald_common::runtime::Runtime::serve_with_admin`].
pub(crate) fn routers(state: &AppState, origins: Origins) -> (Router, Router) {
    let public = Router::new()
        .route("/v1/token", post(tokens::login))
        .route("/v1/token/refresh", post(tokens::refresh))
        .route_layer(cors(origins))
        .route("/.well-known/jwks.json", get(tokens::jwks))
        .with_state(state.clone());
    let admin = Router::new()
        .route("/v1/token/revoke", post(tokens::revoke))
        .route("/v1/users", post(users::create_user).get(users::list_users))
        .route(
            "/v1/users/{name}",
            get(users::get_user).delete(users::delete_user),
        )
        .with_state(state.clone());
    (public, admin)
}

/// What every router gets last: request metrics, the JSON 404 and the shared layers.
pub(crate) fn finish(state: AppState) -> impl Fn(Router) -> Router {
    move |r: Router| {
        layers(
            r.route_layer(axum::middleware::from_fn_with_state(state.clone(), track))
                .fallback(|| async { ApiError::not_found("no such endpoint") }),
        )
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
