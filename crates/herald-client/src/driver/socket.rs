//! Reading the socket: each server frame to its handler; writing frames with a timeout.

use futures_util::SinkExt as _;
use herald_proto::ErrorCode;
use herald_proto::frames::{ClientFrame, Position, ServerFrame};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};

use super::ending::closed;
use super::timers::retry_refresh;
use super::{Answer, Conn, Driver, End, Failure, Request, WRITE_TIMEOUT};
use crate::event::{Ack, ClientError, ConnState, Event, Message};
use crate::history::History;
use crate::presence::{Presence, PresenceStats};

impl Driver {
    pub(super) async fn on_socket(
        &mut self,
        msg: Option<Result<WsMessage, tungstenite::Error>>,
        conn: &mut Conn,
    ) -> Result<(), End> {
        let msg = match msg {
            None => return Err(End::Lost("connection closed".to_owned())),
            Some(Err(e)) => return Err(End::Lost(format!("connection lost: {e}"))),
            Some(Ok(m)) => m,
        };
        conn.last_frame = Instant::now();
        match msg {
            WsMessage::Text(text) => match ServerFrame::parse(&text) {
                Ok(frame) => self.on_frame(frame, conn).await,
                Err(e) => {
                    tracing::debug!(cause = %e, "ignored a frame that could not be read");
                    Ok(())
                }
            },
            WsMessage::Close(frame) => Err(closed(frame)),
            WsMessage::Binary(_)
            | WsMessage::Ping(_)
            | WsMessage::Pong(_)
            | WsMessage::Frame(_) => Ok(()),
        }
    }

    pub(super) async fn on_frame(
        &mut self,
        frame: ServerFrame,
        conn: &mut Conn,
    ) -> Result<(), End> {
        match frame {
            ServerFrame::AuthSuccess {
                id, node, conn_id, ..
            } => {
                if let Some(Request::Auth(token)) = id.and_then(|id| conn.requests.remove(&id)) {
                    tracing::debug!("fresh token accepted");
                    conn.token = token.value;
                    conn.refresh_at = token.refresh_at;
                    conn.refresh_failures = 0;
                    self.set_state(ConnState::Connected { node, conn_id });
                }
            }
            ServerFrame::Subscribed {
                channel,
                id,
                offset,
                epoch,
                recovered,
                server,
                ..
            } => {
                let request = id.and_then(|id| Some((id, conn.requests.remove(&id)?)));
                match request {
                    Some((_, Request::Subscribe(sub))) => {
                        return self
                            .on_subscribed(sub, channel, offset, epoch, recovered, conn)
                            .await;
                    }
                    Some((id, Request::ServerSubscribe(channel))) => {
                        return self
                            .on_server_renewed(id, channel, offset, epoch, recovered, conn)
                            .await;
                    }
                    Some(_) => {}
                    None if server => {
                        return self
                            .on_server_subscribed(channel, offset, epoch, recovered, conn)
                            .await;
                    }
                    None => {}
                }
            }
            ServerFrame::Unsubscribed {
                channel,
                id,
                server,
                ..
            } => match id.and_then(|id| conn.requests.remove(&id)) {
                Some(Request::Unsubscribe(channel)) => self.on_left(channel, true, conn),
                Some(_) => {}
                None if server => self.on_server_unsubscribed(channel, conn),
                None => {}
            },
            ServerFrame::Ack {
                id,
                channel,
                offset,
                epoch,
            } => {
                self.answer(
                    id,
                    Answer::Ack(Ack {
                        channel,
                        offset,
                        epoch,
                    }),
                );
            }
            ServerFrame::History {
                id,
                publications,
                offset,
                epoch,
                ..
            } => {
                if let Some(id) = id {
                    let history = History {
                        publications: publications
                            .into_iter()
                            .filter_map(Message::from_frame)
                            .collect(),
                        position: Position::new(offset, epoch),
                    };
                    self.answer(id, Answer::History(history));
                }
            }
            ServerFrame::Presence {
                id,
                members,
                truncated,
                ..
            } => {
                if let Some(id) = id {
                    self.answer(id, Answer::Presence(Presence { members, truncated }));
                }
            }
            ServerFrame::PresenceStats {
                id,
                num_clients,
                num_users,
                ..
            } => {
                if let Some(id) = id {
                    let stats = PresenceStats {
                        num_clients,
                        num_users,
                    };
                    self.answer(id, Answer::PresenceStats(stats));
                }
            }
            ServerFrame::Error {
                code,
                message,
                id,
                channel,
                retry_after_ms,
                ..
            } => {
                return self
                    .on_error(code, message, id, channel, retry_after_ms, conn)
                    .await;
            }
            ServerFrame::BatchMessages { messages, .. } => {
                for frame in messages {
                    self.on_channel_frame(frame, conn).await?;
                }
            }
            ServerFrame::Disconnect {
                code,
                reason,
                reconnect,
                retry_after_ms,
            } => {
                return Err(End::disconnect(code, reason, reconnect, retry_after_ms));
            }
            ServerFrame::Heartbeat { .. } | ServerFrame::Pong { .. } | ServerFrame::Unknown => {}
            // Channel deliveries, joins and leaves.
            frame => return self.on_channel_frame(frame, conn).await,
        }
        Ok(())
    }

    /// A channel delivery or a join/leave, alone or out of a `batch_messages` (the
    /// gateway's outbound queue carries both, so a batch may hold both).
    async fn on_channel_frame(&mut self, frame: ServerFrame, conn: &mut Conn) -> Result<(), End> {
        match frame {
            ServerFrame::Join { channel, member } => {
                self.on_presence_event(&channel, Event::Join(member));
            }
            ServerFrame::Leave { channel, member } => {
                self.on_presence_event(&channel, Event::Leave(member));
            }
            frame => {
                if let Some(m) = Message::from_frame(frame) {
                    return self.on_delivery(m, conn).await;
                }
            }
        }
        Ok(())
    }

    pub(super) async fn on_error(
        &mut self,
        code: ErrorCode,
        message: String,
        id: Option<u64>,
        channel: Option<String>,
        retry_after_ms: Option<u64>,
        conn: &mut Conn,
    ) -> Result<(), End> {
        if let Some(id) = id {
            if self.is_pending(id) {
                self.fail(id, Failure::Refused { code, message });
                return Ok(());
            }
            match conn.requests.remove(&id) {
                Some(Request::Subscribe(sub)) => {
                    self.subscribe_refused(sub, code, message, channel, retry_after_ms);
                    return Ok(());
                }
                Some(Request::ServerSubscribe(channel)) => {
                    self.server_renewal_refused(id, channel, code, message, retry_after_ms);
                    return Ok(());
                }
                Some(Request::Auth(_)) => {
                    self.report(ClientError::TokenRefused(message));
                    retry_refresh(conn);
                    return Ok(());
                }
                Some(Request::Unsubscribe(channel)) => {
                    self.on_left(channel, false, conn);
                    return Ok(());
                }
                None => {}
            }
        }
        self.report(ClientError::Server { code, message });
        Ok(())
    }
}

pub(super) async fn conn_send(conn: &mut Conn, frame: &ClientFrame) -> Result<(), End> {
    conn_send_text(conn, frame.to_json()).await
}

pub(super) async fn conn_send_text(conn: &mut Conn, text: String) -> Result<(), End> {
    match tokio::time::timeout(WRITE_TIMEOUT, conn.ws.send(WsMessage::text(text))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(End::Lost(format!("cannot write: {e}"))),
        Err(_) => Err(End::Lost(format!("a write took over {WRITE_TIMEOUT:?}"))),
    }
}
