//! Acting on a user's live connections, wherever they are: subscribe, unsubscribe,
//! disconnect. Each is a control command to every gateway, which answers how many of
//! its connections it reached; the endpoint waits for every live gateway's answer
//! (briefly) and returns the total.

use std::collections::HashSet;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};

use herald_common::http::{ApiError, ApiJson};
use herald_common::node;
use herald_proto::control::{Control, ControlReply};
use herald_proto::disconnect::DisconnectCode;
use herald_proto::frames::Position;

use super::{check_channel, check_user_id};
use crate::AppState;

/// How long to wait for every live gateway's answer.
const REPLY_WAIT: Duration = Duration::from_secs(2);
/// The gateway's service name in the node registry.
const GATEWAY: &str = "ws-gateway";
/// Longest `reason`: a WebSocket close frame's reason holds 123 bytes.
const MAX_REASON: usize = 123;
/// Longest application `code`.
const MAX_CODE: usize = 64;

/// What the gateways did.
#[derive(Debug, Serialize)]
pub(super) struct Affected {
    /// Connections the command reached, on every gateway that answered.
    affected: u64,
    /// Gateways that answered.
    gateways: usize,
    /// Whether every gateway alive when the command was sent answered in time.
    complete: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SubscribeReq {
    user_id: String,
    channel: String,
    #[serde(default)]
    since: Option<Position>,
}

pub(super) async fn subscribe(
    State(ctx): State<AppState>,
    ApiJson(req): ApiJson<SubscribeReq>,
) -> Result<Json<Affected>, ApiError> {
    check_user_id(&req.user_id)?;
    check_channel("channel", &req.channel)?;
    let affected = send(&ctx, |reply_to| Control::Subscribe {
        user_id: req.user_id.clone(),
        channel: req.channel.clone(),
        since: req.since.clone(),
        reply_to: Some(reply_to),
    })
    .await?;
    tracing::info!(user = %req.user_id, channel = %req.channel, affected = affected.affected, "server-side subscribe");
    Ok(Json(affected))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UnsubscribeReq {
    user_id: String,
    channel: String,
}

pub(super) async fn unsubscribe(
    State(ctx): State<AppState>,
    ApiJson(req): ApiJson<UnsubscribeReq>,
) -> Result<Json<Affected>, ApiError> {
    check_user_id(&req.user_id)?;
    check_channel("channel", &req.channel)?;
    let affected = send(&ctx, |reply_to| Control::Unsubscribe {
        user_id: req.user_id.clone(),
        channel: req.channel.clone(),
        reply_to: Some(reply_to),
    })
    .await?;
    tracing::info!(user = %req.user_id, channel = %req.channel, affected = affected.affected, "server-side unsubscribe");
    Ok(Json(affected))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DisconnectReq {
    user_id: String,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    reconnect: bool,
}

pub(super) async fn disconnect(
    State(ctx): State<AppState>,
    ApiJson(req): ApiJson<DisconnectReq>,
) -> Result<Json<Affected>, ApiError> {
    check_user_id(&req.user_id)?;
    let code = match req.code {
        None => DisconnectCode::ServerDisconnect.as_str().to_owned(),
        Some(c) if valid_code(&c) => c,
        Some(_) => {
            return Err(ApiError::unprocessable(format!(
                "code must be 1..={MAX_CODE} characters of [a-z0-9_]"
            )));
        }
    };
    let reason = req
        .reason
        .unwrap_or_else(|| "disconnected by the application".to_owned());
    if reason.len() > MAX_REASON {
        return Err(ApiError::unprocessable(format!(
            "reason must be at most {MAX_REASON} bytes (it travels in the close frame)"
        )));
    }
    let affected = send(&ctx, |reply_to| Control::Disconnect {
        user_id: req.user_id.clone(),
        code: code.clone(),
        reason: reason.clone(),
        reconnect: req.reconnect,
        reply_to: Some(reply_to),
    })
    .await?;
    tracing::info!(user = %req.user_id, %code, affected = affected.affected, "server-side disconnect");
    Ok(Json(affected))
}

fn valid_code(code: &str) -> bool {
    (1..=MAX_CODE).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Sends the command built for a fresh reply name and sums the gateways' answers.
async fn send(
    ctx: &AppState,
    command: impl FnOnce(String) -> Control,
) -> Result<Affected, ApiError> {
    let failed = |e| ctx.redis_failed(e);
    let expected: HashSet<String> = node::live_nodes(&ctx.engine, &ctx.keys, GATEWAY)
        .await
        .map_err(failed)?
        .into_iter()
        .collect();
    let reply_to = format!("{:032x}", rand::random::<u128>());
    // Listening before sending: an answer cannot come before the subscription.
    let sub = ctx.engine.subscriber().await.map_err(failed)?;
    let (mut sink, mut stream) = (sub.sink, sub.stream);
    sink.subscribe(&[ctx.keys.control_reply(&reply_to)])
        .await
        .map_err(failed)?;
    let body = serde_json::to_string(&command(reply_to)).unwrap_or_default();
    ctx.engine
        .publish_raw(&ctx.keys.control(), body)
        .await
        .map_err(failed)?;
    let mut answered: HashSet<String> = HashSet::new();
    let mut affected = 0;
    let deadline = tokio::time::Instant::now() + REPLY_WAIT;
    while !expected.is_subset(&answered) {
        let Ok(Some(msg)) = tokio::time::timeout_at(deadline, stream.next()).await else {
            break;
        };
        if let Ok(r) = serde_json::from_slice::<ControlReply>(msg.payload())
            && answered.insert(r.node)
        {
            affected += r.affected;
        }
    }
    let complete = expected.is_subset(&answered);
    if !complete {
        tracing::warn!(
            expected = expected.len(),
            answered = answered.len(),
            "not every gateway answered a control command in time"
        );
    }
    Ok(Affected {
        affected,
        gateways: answered.len(),
        complete,
    })
}
