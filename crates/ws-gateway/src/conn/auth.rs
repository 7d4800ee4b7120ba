//! Who the connection is: the first-frame login, the `auth_success` answer,
//! re-authentication with a fresh token, and when the token stops being valid.

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::Message;
use futures_util::StreamExt;
use tokio::time::Instant;

use herald_proto::claims::Claims;
use herald_proto::client::{self, ClientMsg, ErrorCode, Id};
use herald_proto::disconnect::{AppDisconnect, Disconnect, DisconnectCode};
use herald_proto::proxy::{
    self, ConnectRequest, ConnectResult, Hook, RefreshRequest, RefreshResult,
};
use herald_proto::server::ServerMsg;

use herald_proto::channel::USER_CHANNEL_PREFIX;

use super::request::{How, SubError};
use super::{Conn, Flow, Preauth, Socket};
use crate::proxy::{Forwarded, Outcome};
use crate::state::State;

/// A token that never expires still ends the connection after this long.
const NO_EXPIRY: Duration = Duration::from_secs(365 * 24 * 3600);

/// Waits for the first frame, which must carry the token — or, with a connect hook,
/// whatever the application's backend needs to say who the connection is. A refusal
/// is logged with its reason and the client's address (never the token);
/// `Err(None)` means the client went away.
pub(super) async fn first_frame<S: Socket>(
    socket: &mut S,
    state: &State,
    ip: IpAddr,
    conn_id: &str,
    forwarded: Option<&Forwarded>,
) -> Result<(Preauth, Option<Id>), Option<Disconnect>> {
    let refused = |reason: &str| {
        state
            .metrics
            .auth_failures
            .with_label_values(&[reason])
            .inc();
        tracing::info!(reason, %ip, "WebSocket login refused");
    };
    let deadline = Instant::now() + state.settings.auth_timeout;
    loop {
        let msg = match tokio::time::timeout_at(deadline, socket.next()).await {
            Err(_) => {
                refused("timeout");
                return Err(Some(Disconnect::AuthTimeout));
            }
            Ok(None | Some(Err(_))) => return Err(None),
            Ok(Some(Ok(m))) => m,
        };
        let text = match msg {
            Message::Text(t) => t,
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Close(_) => return Err(None),
            Message::Binary(_) => return Err(Some(Disconnect::BinaryFrame)),
        };
        if text.len() > state.settings.max_frame_bytes {
            refused("too_large");
            return Err(Some(Disconnect::AuthFailed));
        }
        return match client::parse(&text) {
            Ok(ClientMsg::Auth {
                token,
                channels,
                batch,
                data,
                id,
            }) if state.proxy.enabled(Hook::Connect)
                && (token.is_none() || state.proxy.connect_always) =>
            {
                let req = ConnectRequest {
                    conn_id: conn_id.to_owned(),
                    client_ip: ip.to_string(),
                    transport: "websocket".to_owned(),
                    headers: forwarded.cloned().unwrap_or_default(),
                    data: data.and_then(|d| serde_json::from_str(d.get()).ok()),
                    token,
                };
                match connect_hook(state, &req).await {
                    Ok(claims) => Ok((
                        Preauth {
                            claims,
                            channels,
                            batch,
                        },
                        id,
                    )),
                    Err((reason, why)) => {
                        refused(reason);
                        Err(Some(why))
                    }
                }
            }
            Ok(ClientMsg::Auth {
                token: Some(token),
                channels,
                batch,
                id,
                ..
            }) => match state.authenticate(&token).await {
                Ok(claims) => Ok((
                    Preauth {
                        claims,
                        channels,
                        batch,
                    },
                    id,
                )),
                Err(e) => {
                    refused(e.reason());
                    Err(Some(Disconnect::AuthFailed))
                }
            },
            _ => {
                refused("no_token");
                Err(Some(Disconnect::AuthFailed))
            }
        };
    }
}

/// Asks the connect hook who the connection is; its answer acts as a token's
/// claims. A refusal carries the backend's code and message to the client.
async fn connect_hook(
    state: &State,
    req: &ConnectRequest,
) -> Result<Claims, (&'static str, Disconnect)> {
    match state
        .proxy
        .call::<_, ConnectResult>(Hook::Connect, req, &req.headers)
        .await
    {
        Outcome::Allowed(r) => {
            let claims = Claims {
                sub: Some(r.user_id),
                exp: r.exp,
                channels: r.channels,
                publish: r.publish,
                presence: r.presence.map(Box::new),
                history: r.history.map(Box::new),
                info: r.info.map(Box::new),
                ..Claims::default()
            };
            if claims.user().is_none() {
                return Err((
                    "proxy_no_user",
                    backend_refusal("forbidden", "no user", false),
                ));
            }
            if let Err(e) = claims.check_info() {
                return Err((
                    "bad_info",
                    backend_refusal("forbidden", &e.to_string(), false),
                ));
            }
            Ok(claims)
        }
        Outcome::Refused(e) => Err(("proxy_refused", backend_refusal(&e.code, &e.message, false))),
        Outcome::Disconnect(d) => Err((
            "proxy_refused",
            backend_refusal(&d.code, &d.reason, d.reconnect),
        )),
        Outcome::Unavailable(_) => Err((
            "proxy_unavailable",
            backend_refusal("unavailable", "authorization backend unavailable", true),
        )),
    }
}

/// The backend's own refusal as a disconnect: its code when it is a protocol code
/// (else `forbidden`), its reason cut to what a close frame holds.
pub(super) fn backend_refusal(code: &str, reason: &str, reconnect: bool) -> Disconnect {
    let code = if proxy::valid_code(code) {
        code
    } else {
        "forbidden"
    };
    let mut reason = reason.to_owned();
    if reason.len() > MAX_CLOSE_REASON {
        let mut cut = MAX_CLOSE_REASON;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    Disconnect::Application(AppDisconnect {
        code: DisconnectCode::parse(code),
        reason,
        reconnect,
    })
}

/// The most a close frame's reason holds, in bytes.
const MAX_CLOSE_REASON: usize = 123;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// When the token stops being valid on this connection (`exp` + leeway).
pub(super) fn expiry_instant(claims: &Claims, leeway: Duration) -> Instant {
    if claims.exp == 0 {
        return Instant::now() + NO_EXPIRY;
    }
    let now_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let left = claims.exp.saturating_sub(now_s);
    Instant::now() + Duration::from_secs(left) + leeway
}

impl<S: Socket> Conn<S> {
    /// Subscribes the channels asked for at login and answers `auth_success`
    /// (listing those actually subscribed), then the refusals.
    pub(super) async fn hello(&mut self, initial: Vec<String>, auth_id: Option<Id>) -> Flow {
        let mut seen = HashSet::new();
        let mut subscribed = Vec::new();
        let mut errors = Vec::new();
        for ch in initial.into_iter().filter(|c| seen.insert(c.clone())) {
            let how = How {
                join_leave: false,
                reply: false,
                by_server: false,
            };
            match Box::pin(self.subscribe(&ch, None, how, None)).await {
                Ok(()) => subscribed.push(ch),
                Err(SubError::Frame(frame)) => errors.push(frame),
                Err(SubError::Broken) => return Flow::Gone,
            }
        }
        // Listed for the monitor at once, channels or not.
        self.publish_presence();
        let hello = self.auth_success(&subscribed, auth_id.as_ref());
        if let Flow::Gone = self.send_text(hello).await {
            return Flow::Gone;
        }
        for e in errors {
            if let Flow::Gone = self.send_text(e).await {
                return Flow::Gone;
            }
        }
        if self.state.settings.user_channel {
            return self.join_user_channel().await;
        }
        Flow::Continue
    }

    /// Subscribes the connection to its user's personal channel, as the backend
    /// would (`subscribed` with `server`), so the backend can reach the user
    /// wherever they are connected.
    async fn join_user_channel(&mut self) -> Flow {
        let channel = format!("{USER_CHANNEL_PREFIX}{}", self.shared.user);
        if self.channels.contains(&channel) {
            return Flow::Continue;
        }
        if herald_proto::channel::validate(&channel).is_err() {
            // A user id outside the channel alphabet has no personal channel.
            tracing::debug!("no personal channel: the user id is not a channel name");
            return Flow::Continue;
        }
        let how = How {
            join_leave: false,
            reply: true,
            by_server: true,
        };
        match Box::pin(self.subscribe(&channel, None, how, None)).await {
            Ok(()) => Flow::Continue,
            Err(SubError::Frame(frame)) => self.send_text(frame).await,
            Err(SubError::Broken) => Flow::Gone,
        }
    }

    fn auth_success(&self, channels: &[String], id: Option<&Id>) -> String {
        ServerMsg::auth_success(
            &self.shared.user,
            &self.shared.conn_id,
            &self.state.node_id,
            channels,
            self.state.settings.heartbeat.as_millis() as u64,
            id,
        )
        .to_json()
    }

    /// The connection's time is up: it ends, unless the refresh hook extends it.
    pub(super) async fn on_expired(&mut self) -> Flow {
        if !self.state.proxy.enabled(Hook::Refresh) {
            return Flow::End(Disconnect::TokenExpired);
        }
        let req = RefreshRequest {
            conn_id: self.shared.conn_id.clone(),
            user_id: self.shared.user.clone(),
            client_ip: self.shared.ip.to_string(),
        };
        let headers = self.forwarded.as_deref().cloned().unwrap_or_default();
        let state = self.state.clone();
        let answer = state
            .proxy
            .call::<_, RefreshResult>(Hook::Refresh, &req, &headers)
            .await;
        match answer {
            Outcome::Allowed(r) if r.exp > unix_now() => {
                self.claims.exp = r.exp;
                self.expiry = expiry_instant(&self.claims, self.state.leeway);
                Flow::Continue
            }
            Outcome::Allowed(_) => Flow::End(Disconnect::TokenExpired),
            Outcome::Refused(e) => Flow::End(backend_refusal(&e.code, &e.message, false)),
            Outcome::Disconnect(d) => Flow::End(backend_refusal(&d.code, &d.reason, d.reconnect)),
            Outcome::Unavailable(_) => Flow::End(backend_refusal(
                "unavailable",
                "the connection could not be extended; reconnect",
                true,
            )),
        }
    }

    /// A fresh token for the same user extends the connection's life.
    pub(super) async fn reauth(&mut self, token: &str, id: Option<&Id>) -> String {
        match self.state.authenticate(token).await {
            Ok(claims) if claims.user() == Some(self.shared.user.as_str()) => {
                self.expiry = expiry_instant(&claims, self.state.leeway);
                if let Ok(mut j) = self.shared.jti.lock() {
                    j.clone_from(&claims.jti);
                }
                self.claims = claims;
                let mut chans: Vec<String> = self.channels.iter().cloned().collect();
                chans.sort();
                self.auth_success(&chans, id)
            }
            Ok(_) => ServerMsg::error(
                ErrorCode::Forbidden,
                "a new token must be for the same user",
                id,
            )
            .to_json(),
            Err(e) => {
                ServerMsg::error(ErrorCode::Forbidden, &format!("token refused: {e}"), id).to_json()
            }
        }
    }
}
