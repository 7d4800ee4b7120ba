//! The WebSocket handshake: origin, capacity and per-IP checks, then optional
//! token authentication, all before the upgrade so refusals are plain HTTP
//! statuses (or, for `herald.v1` clients, close codes).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::extract::{ConnectInfo, Request, State as AxState};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use herald_common::http::ApiError;
use herald_proto::disconnect::{Disconnect, DisconnectCode};
use herald_proto::node::LimitKind;

use crate::conn::{self, Preauth};
use crate::limits::Refusal;
use crate::state::State;

/// Per-connection socket read buffer.
const READ_BUFFER_BYTES: usize = 1024;
/// Outgoing bytes buffered before tungstenite writes to the socket (flushes write
/// earlier; this only bounds how much one burst accumulates).
const WRITE_BUFFER_BYTES: usize = 16 * 1024;

/// What a connection may say in its URL (`?token=…&channels=a,b&batch=1`).
#[derive(Debug, Default, PartialEq)]
struct ConnectQuery {
    token: Option<String>,
    channels: Vec<String>,
    batch: bool,
}

impl ConnectQuery {
    /// Reads the parameters the gateway knows and ignores the rest; a repeated one
    /// counts as its last value.
    fn parse(query: Option<&str>) -> Self {
        let mut q = Self::default();
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*k {
                "token" => q.token = Some(v.into_owned()),
                "channels" => {
                    q.channels = v
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect();
                }
                "batch" => q.batch = matches!(&*v, "1" | "true"),
                _ => {}
            }
        }
        q
    }
}

/// The handshake: origin, capacity and per-IP checks, then optional token auth,
/// all before the upgrade so refusals are plain HTTP statuses.
pub(crate) async fn ws_handler(
    AxState(state): AxState<Arc<State>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    // The request itself rather than `HeaderMap` and `Query` extractors: those copy the
    // headers and the query into owned maps for every connection.
    req: Request,
) -> Response {
    let headers = req.headers();
    let speaks_herald = offers_subprotocol(headers);
    let ws = match ws {
        Ok(ws) => ws,
        Err(_) => {
            return ApiError::new(
                StatusCode::UPGRADE_REQUIRED,
                "upgrade_required",
                "this endpoint speaks WebSocket",
            )
            .into_response();
        }
    };
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("").trim_end_matches('/');
        let allowed =
            state.any_origin || state.settings.allowed_origins.iter().any(|o| o == origin);
        if !allowed {
            return refuse(
                &state,
                ws,
                speaks_herald,
                ApiError::forbidden("origin not allowed"),
            );
        }
    }
    if state.hub.conn_count() >= state.settings.max_connections {
        state
            .metrics
            .ratelimit_hits
            .with_label_values(&[LimitKind::NodeCapacity.as_str()])
            .inc();
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "over_capacity",
            "this gateway is full; try another",
        );
        e.retry_after_s = Some(1);
        return refuse(&state, ws, speaks_herald, e);
    }
    let ip = peer.ip();
    let slot = match state
        .ips
        .acquire(&state.engine, ip, state.ip_release.clone())
        .await
    {
        Ok(slot) => slot,
        Err(refusal) => {
            let kind = refusal.kind();
            state
                .metrics
                .ratelimit_hits
                .with_label_values(&[kind.as_str()])
                .inc();
            state.report_ratelimit(&ip.to_string(), kind);
            let mut e = ApiError::too_many(1);
            e.message = match refusal {
                Refusal::TooMany => "too many connections from this address".to_owned(),
                Refusal::TooFast => "too many connection attempts from this address".to_owned(),
            };
            return refuse(&state, ws, speaks_herald, e);
        }
    };
    let query = ConnectQuery::parse(req.uri().query());
    let token = herald_common::http::bearer(headers)
        .map(str::to_owned)
        .or(query.token);
    let pre = match token {
        None => None,
        Some(t) => match state.authenticate(&t).await {
            Ok(claims) => Some(Preauth {
                claims,
                channels: query.channels,
                batch: query.batch,
            }),
            Err(e) => {
                state
                    .metrics
                    .auth_failures
                    .with_label_values(&[e.reason()])
                    .inc();
                tracing::info!(reason = e.reason(), %ip, "WebSocket login refused at the handshake");
                // A refused handshake must not hold this address's slot, not even until
                // the next batched release: give it back before answering.
                slot.release(&state.engine).await;
                let e = ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "authentication_failed",
                    "authentication failed",
                );
                return refuse(&state, ws, speaks_herald, e);
            }
        },
    };
    // Kept only when a hook may need them: most gateways keep nothing per connection.
    let forwarded = state
        .proxy
        .any()
        .then(|| Arc::new(state.proxy.forwarded(headers)));
    // Our own checks give `too_large` errors below this; beyond it the socket fails.
    let hard_limit = (state.settings.max_frame_bytes * 4).max(1 << 20);
    let tracker = state.tracker.clone();
    // Small buffers: tungstenite's defaults (128 KiB each way) are sized for bulk
    // transfer, but an idle connection should cost a few KiB. Larger frames still
    // work; the buffers grow while they are read or written.
    ws.protocols([SUBPROTOCOL])
        .max_message_size(hard_limit)
        .max_frame_size(hard_limit)
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .on_upgrade(move |socket| {
            tracker.track_future(conn::serve(socket, state, ip, pre, slot, forwarded))
        })
}

/// The WebSocket subprotocol of clients that want refusals as close codes. A browser
/// never sees the HTTP status of a refused handshake (only an abnormal close, 1006), so
/// it could not tell "stop: this origin is refused" from "back off: try another gateway".
pub const SUBPROTOCOL: &str = "herald.v1";

/// Whether the client listed [`SUBPROTOCOL`] in `Sec-WebSocket-Protocol`.
fn offers_subprotocol(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL)
}

/// How long a refused `herald.v1` client gets to read its `disconnect` and close frame.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);

/// Refuses a handshake: with the plain HTTP error, or, for a client speaking
/// [`SUBPROTOCOL`], by completing the upgrade and sending the same refusal as a
/// `disconnect` frame and a close code of 4000 + the HTTP status (4401, 4403, 4429,
/// 4503). Nothing the client sends is read, so a refused origin gains nothing from the
/// upgrade.
fn refuse(state: &State, ws: WebSocketUpgrade, speaks_herald: bool, e: ApiError) -> Response {
    if !speaks_herald {
        return e.into_response();
    }
    use axum::extract::ws::{CloseFrame, Message};
    let why = Disconnect::Refused(herald_proto::disconnect::Refusal {
        status: e.status.as_u16(),
        code: DisconnectCode::parse(e.code),
        reason: e.message.clone(),
        retry_after_ms: e.retry_after_s.map(|s| s * 1000),
    });
    let frame = why.frame().unwrap_or_default();
    // The close frame's reason is the code: short, and what clients without the
    // `disconnect` frame can act on.
    let close = CloseFrame {
        code: why.close_code(),
        reason: e.code.into(),
    };
    let tracker = state.tracker.clone();
    ws.protocols([SUBPROTOCOL])
        .max_message_size(1024)
        .on_upgrade(move |mut socket| {
            tracker.track_future(async move {
                let _ = tokio::time::timeout(REFUSAL_LINGER, async {
                    use futures_util::StreamExt;
                    socket.send(Message::Text(frame.into())).await.ok()?;
                    socket.send(Message::Close(Some(close))).await.ok()?;
                    // Wait for the client's close reply so the close code reaches it
                    // before the TCP connection goes away.
                    while socket.next().await?.is_ok() {}
                    Some(())
                })
                .await;
            })
        })
}

#[cfg(test)]
mod tests {
    use super::ConnectQuery;

    #[test]
    fn connect_query() {
        assert_eq!(ConnectQuery::parse(None), ConnectQuery::default());
        let q = ConnectQuery::parse(Some("token=a%2Eb&channels=x,%20y,,z&batch=1&other=2"));
        assert_eq!(q.token.as_deref(), Some("a.b"));
        assert_eq!(q.channels, ["x", "y", "z"]);
        assert!(q.batch);
        // Malformed escapes are taken literally, a repeat counts as its last value.
        let q = ConnectQuery::parse(Some("token=%zz&batch=true&batch=0"));
        assert_eq!(q.token.as_deref(), Some("%zz"));
        assert!(!q.batch);
    }
}
