//! Opening a connection: a token, the WebSocket upgrade, `auth` and `auth_success`.

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use herald_proto::frames::{ClientFrame, ServerFrame};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};

use super::ending::closed;
use super::{DEFAULT_HEARTBEAT, Driver, End, Hello, Ws};
use crate::event::ClientError;
use crate::token::Token;

impl Driver {
    /// An `auth` frame for `token`, under a fresh request id.
    pub(super) fn auth_frame(&mut self, token: &Token) -> (u64, ClientFrame) {
        let id = self.next_id();
        let frame = ClientFrame::Auth {
            token: token.value.clone(),
            channels: Vec::new(),
            batch: self.opts.batch,
            id: Some(id),
        };
        (id, frame)
    }

    /// Gets a token, opens a WebSocket to `url` and authenticates.
    pub(super) async fn open(&mut self, url: &str) -> Result<(Ws, Hello, Token), End> {
        let fetch = self.source.get();
        let token = match self.serve_while(fetch).await {
            None => return Err(End::Cancelled),
            Some(Ok(t)) => t,
            Some(Err(e)) => {
                self.report(ClientError::TokenSource(e.clone()));
                return Err(End::NoToken(e));
            }
        };
        let (_, auth) = self.auth_frame(&token);
        let attempt =
            tokio::time::timeout(self.opts.connect_timeout, handshake(url.to_owned(), auth));
        match self.serve_while(attempt).await {
            None => Err(End::Cancelled),
            Some(Ok(Ok((ws, hello)))) => Ok((ws, hello, token)),
            Some(Ok(Err(end))) => Err(end),
            Some(Err(_)) => Err(End::Lost(format!(
                "no auth_success within {:?}",
                self.opts.connect_timeout
            ))),
        }
    }
}

/// Opens the WebSocket, sends `auth` and waits for `auth_success`.
pub(super) async fn handshake(url: String, auth: ClientFrame) -> Result<(Ws, Hello), End> {
    let (mut ws, _) =
        match tokio_tungstenite::connect_async_with_config(url.as_str(), None, true).await {
            Ok(ok) => ok,
            Err(tungstenite::Error::Http(resp)) => {
                let retry_after = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                return Err(End::Refused {
                    status: resp.status().as_u16(),
                    retry_after,
                });
            }
            Err(e) => return Err(End::Lost(format!("cannot connect: {e}"))),
        };
    ws.send(WsMessage::text(auth.to_json()))
        .await
        .map_err(|e| End::Lost(format!("cannot write: {e}")))?;
    loop {
        let msg = match ws.next().await {
            None => return Err(End::Lost("closed before auth_success".to_owned())),
            Some(Err(e)) => return Err(End::Lost(format!("connection lost: {e}"))),
            Some(Ok(m)) => m,
        };
        match msg {
            WsMessage::Text(text) => match ServerFrame::parse(&text) {
                Ok(ServerFrame::AuthSuccess {
                    node,
                    conn_id,
                    heartbeat_interval_ms,
                    ..
                }) => {
                    let heartbeat = match heartbeat_interval_ms {
                        0 => DEFAULT_HEARTBEAT,
                        ms => Duration::from_millis(ms),
                    };
                    let hello = Hello {
                        node,
                        conn_id,
                        heartbeat,
                    };
                    return Ok((ws, hello));
                }
                Ok(ServerFrame::Disconnect {
                    code,
                    reason,
                    reconnect,
                    retry_after_ms,
                }) => {
                    return Err(End::disconnect(code, reason, reconnect, retry_after_ms));
                }
                _ => {}
            },
            WsMessage::Close(f) => return Err(closed(f)),
            _ => {}
        }
    }
}
