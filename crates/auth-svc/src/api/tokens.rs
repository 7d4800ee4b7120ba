//! The token endpoints: login, refresh, revoke (admin), the JWKS, and the
//! periodic reload of the signing key ring.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use herald_common::http::{AdminKey, ApiError, ApiJson};
use herald_common::store;
use herald_proto::control::Control;
use herald_proto::node::{LimitKind, RateLimitEvent};
use herald_proto::time::now_ms;

use super::{AppError, AppState, invalid_credentials, invalid_grant};
use crate::refresh::{RefreshToken, Rotation};
use crate::signing::KeyError;
use crate::tokens;
use crate::users::{self, User};

// === Tokens ===

#[derive(Debug, Deserialize)]
pub(super) struct LoginRequest {
    username: String,
    password: String,
}

#[derive(Debug, Serialize)]
pub(super) struct TokenResponse {
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
        if let (Some(key_store), Some(kid)) = (&self.key_store, kid) {
            key_store
                .record_expiry(&self.store, &kid, claims.exp)
                .await?;
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
    async fn report_throttled(&self, who: &str) {
        let event = RateLimitEvent {
            who: who.to_owned(),
            kind: LimitKind::Login,
            node: self.node_id.clone(),
            at_ms: now_ms(),
        };
        if let Err(e) = store::record_ratelimit(&self.engine, &self.keys, &event).await {
            self.metrics.redis_errors.inc();
            tracing::debug!(cause = %e, "cannot record a rate-limit event");
        }
    }
}

/// `POST /v1/token`: username and password for a token pair.
pub(super) async fn login(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Json<TokenResponse>, AppError> {
    let ip = peer.ip().to_canonical();
    if let Some(wait) = s.throttle.check(&s.store, &req.username, ip).await? {
        s.metrics
            .auth_failures
            .with_label_values(&["throttled"])
            .inc();
        let who = if users::valid_username(&req.username) {
            req.username.clone()
        } else {
            ip.to_string()
        };
        s.report_throttled(&who).await;
        let mut e = ApiError::too_many(wait.as_secs() + u64::from(wait.subsec_nanos() > 0));
        e.message = "too many failed logins; retry later".to_owned();
        return Err(e.into());
    }
    // An impossible name skips the lookup but not the hashing work, so it costs
    // the same as any unknown user.
    let user = if users::valid_username(&req.username) {
        s.users.get(&s.store, &req.username).await?
    } else {
        None
    };
    let hash = user.as_ref().map(|u| u.password_hash.as_str());
    let ok = s.passwords.verify(hash, &req.password).await;
    let Some(user) = user.filter(|_| ok) else {
        s.throttle.failed(&s.store, &req.username, ip).await?;
        s.metrics
            .auth_failures
            .with_label_values(&["invalid_credentials"])
            .inc();
        return Err(invalid_credentials());
    };
    s.throttle.succeeded(&s.store, &user.username).await?;
    let refresh = s.refresh.issue(&s.store, &user.username).await?;
    tracing::info!(user = %user.username, "login");
    s.token_pair(&user, &refresh, "password").await
}

#[derive(Debug, Deserialize)]
pub(super) struct RefreshRequest {
    refresh_token: String,
}

/// `POST /v1/token/refresh`: a refresh token for a new pair.
pub(super) async fn refresh(
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
    match s.refresh.rotate(&s.store, &old, &next).await? {
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
            let Some(user) = s.users.get(&s.store, &user).await? else {
                fail("unknown_user");
                return Err(invalid_grant("the user no longer exists"));
            };
            s.token_pair(&user, &next, "refresh").await
        }
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct RevokeRequest {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    jti: Option<String>,
}

/// Longest `jti` accepted for revocation.
const MAX_JTI_LEN: usize = 256;

/// `POST /v1/token/revoke` (admin): marks a `jti` revoked for the token's
/// remaining life and tells every gateway.
pub(super) async fn revoke(
    State(s): State<AppState>,
    _admin: AdminKey,
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
    crate::store::revoke(&s.engine, &s.keys, &jti, ttl_ms, control).await?;
    s.metrics.tokens_revoked.inc();
    tracing::info!(%jti, "token revoked");
    Ok(Json(json!({"revoked": true, "jti": jti})))
}

// === JWKS ===

/// How long clients may cache the JWKS; gateways refetch on an unknown `kid` anyway.
const JWKS_MAX_AGE: &str = "public, max-age=60";

/// `GET /.well-known/jwks.json`: the ring read fresh, so a key another instance
/// just started signing with is always listed; the last known ring otherwise.
pub(super) async fn jwks(State(s): State<AppState>) -> Response {
    if let (Some(key_store), Some(prev)) = (&s.key_store, s.signer.current_ring()) {
        match key_store.load(&s.store, Some(&prev)).await {
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
    let Some(key_store) = s.key_store.clone() else {
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
        match tokio::time::timeout(
            Duration::from_secs(3),
            key_store.load(&s.store, prev.as_deref()),
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
