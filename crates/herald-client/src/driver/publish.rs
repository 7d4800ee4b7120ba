//! Requests answered by one reply frame (publishes, history and presence reads):
//! queued while disconnected, sent on the connection, settled by their reply, an
//! error, their deadline or the connection's loss.

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::socket::conn_send_text;
use super::{Answer, Ask, Conn, Driver, End, Failure, Pending, Reply};

impl Driver {
    pub(super) async fn request(
        &mut self,
        ask: Ask,
        deadline: Instant,
        reply: Reply,
        permit: OwnedSemaphorePermit,
        conn: Option<&mut Conn>,
    ) -> Result<(), End> {
        let id = self.next_id();
        self.deadlines.insert((deadline, id));
        let mut pending = Pending {
            frame: Some(ask.frame(id)),
            deadline,
            reply,
            _permit: permit,
        };
        match conn {
            Some(conn) => {
                let frame = pending.frame.take().unwrap_or_default();
                self.pending.insert(id, pending);
                conn_send_text(conn, frame).await?;
            }
            None => {
                self.pending.insert(id, pending);
                self.unsent.push_back(id);
            }
        }
        Ok(())
    }

    pub(super) fn expire_requests(&mut self) {
        let now = Instant::now();
        while let Some(&(at, id)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            if let Some(p) = self.pending.remove(&id) {
                if p.frame.is_some() {
                    self.unsent.retain(|u| *u != id);
                }
                p.reply.fail(Failure::Timeout);
            }
        }
    }

    /// Whether request `id` is waiting for its reply.
    pub(super) fn is_pending(&self, id: u64) -> bool {
        self.pending.contains_key(&id)
    }

    /// Settles request `id` with its reply, if it is still waiting.
    pub(super) fn answer(&mut self, id: u64, answer: Answer) {
        if let Some(p) = self.take_pending(id) {
            p.reply.answer(answer);
        }
    }

    /// Fails request `id`, if it is still waiting.
    pub(super) fn fail(&mut self, id: u64, failure: Failure) {
        if let Some(p) = self.take_pending(id) {
            p.reply.fail(failure);
        }
    }

    fn take_pending(&mut self, id: u64) -> Option<Pending> {
        let p = self.pending.remove(&id)?;
        self.deadlines.remove(&(p.deadline, id));
        Some(p)
    }
}
