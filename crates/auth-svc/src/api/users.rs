//! The admin endpoints that manage users.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use herald_common::http::{AdminKey, ApiError, ApiJson};
use herald_proto::time::now_rfc3339;

use super::{AppError, AppState};
use crate::users::{self, User};

// === Users ===

#[derive(Debug, Deserialize)]
pub(super) struct CreateUser {
    username: String,
    password: String,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
}

/// `POST /v1/users` (admin).
pub(super) async fn create_user(
    State(s): State<AppState>,
    _admin: AdminKey,
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
    if !s.users.create(&s.store, &user).await? {
        return Err(ApiError::conflict("user already exists").into());
    }
    tracing::info!(user = %user.username, "user created");
    Ok((StatusCode::CREATED, Json(user.public())).into_response())
}

/// `GET /v1/users` (admin): every user name.
pub(super) async fn list_users(
    State(s): State<AppState>,
    _admin: AdminKey,
) -> Result<Json<serde_json::Value>, AppError> {
    let names = s.users.list(&s.store).await?;
    Ok(Json(json!({ "users": names })))
}

/// `GET /v1/users/{name}` (admin): the user without its password hash.
pub(super) async fn get_user(
    State(s): State<AppState>,
    _admin: AdminKey,
    Path(name): Path<String>,
) -> Result<Response, AppError> {
    let user = if users::valid_username(&name) {
        s.users.get(&s.store, &name).await?
    } else {
        None
    };
    match user {
        Some(u) => Ok(Json(u.public()).into_response()),
        None => Err(ApiError::not_found("no such user").into()),
    }
}

/// `DELETE /v1/users/{name}` (admin).
pub(super) async fn delete_user(
    State(s): State<AppState>,
    _admin: AdminKey,
    Path(name): Path<String>,
) -> Result<StatusCode, AppError> {
    let deleted = users::valid_username(&name) && s.users.delete(&s.store, &name).await?;
    if deleted {
        tracing::info!(user = %name, "user deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("no such user").into())
    }
}
