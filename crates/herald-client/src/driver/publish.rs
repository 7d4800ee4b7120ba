//! Publishes: queued while disconnected, sent on the connection, settled by an
//! `ack`, an error, their deadline or the connection's loss.

use herald_proto::frames::ClientFrame;
use serde_json::value::RawValue;
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio::time::Instant;

use super::socket::conn_send_text;
use super::{Conn, Driver, End, Publish};
use crate::event::{Ack, PublishError};

impl Driver {
    pub(super) async fn publish(
        &mut self,
        channel: String,
        message: Box<RawValue>,
        deadline: Instant,
        reply: oneshot::Sender<Result<Ack, PublishError>>,
        permit: OwnedSemaphorePermit,
        conn: Option<&mut Conn>,
    ) -> Result<(), End> {
        let id = self.next_id();
        let frame = ClientFrame::Broadcast {
            channel,
            message,
            id: Some(id),
        }
        .to_json();
        self.deadlines.insert((deadline, id));
        let mut publish = Publish {
            frame: Some(frame),
            deadline,
            reply,
            _permit: permit,
        };
        match conn {
            Some(conn) => {
                let frame = publish.frame.take().unwrap_or_default();
                self.publishes.insert(id, publish);
                conn_send_text(conn, frame).await?;
            }
            None => {
                self.publishes.insert(id, publish);
                self.unsent.push_back(id);
            }
        }
        Ok(())
    }

    pub(super) fn expire_publishes(&mut self) {
        let now = Instant::now();
        while let Some(&(at, id)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            if let Some(p) = self.publishes.remove(&id) {
                if p.frame.is_some() {
                    self.unsent.retain(|u| *u != id);
                }
                let _ = p.reply.send(Err(PublishError::Timeout));
            }
        }
    }

    /// Settles publish `id` with `result`, if it is still waiting.
    pub(super) fn settle(&mut self, id: u64, result: Result<Ack, PublishError>) {
        if let Some(p) = self.publishes.remove(&id) {
            self.deadlines.remove(&(p.deadline, id));
            let _ = p.reply.send(result);
        }
    }
}
