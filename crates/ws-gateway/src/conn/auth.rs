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
use herald_proto::disconnect::Disconnect;
use herald_proto::server::ServerMsg;

use herald_proto::channel::USER_CHANNEL_PREFIX;

use super::request::{How, SubError};
use super::{Conn, Flow, Preauth, Socket};
use crate::state::State;

/// A token that never expires still ends the connection after this long.
const NO_EXPIRY: Duration = Duration::from_secs(365 * 24 * 3600);

/// Waits for the first frame, which must carry the token. A refusal is logged with
/// its reason and the client's address (never the token); `Err(None)` means the
/// client went away.
pub(super) async fn first_frame<S: Socket>(
    socket: &mut S,
    state: &State,
    ip: IpAddr,
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
                id,
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
