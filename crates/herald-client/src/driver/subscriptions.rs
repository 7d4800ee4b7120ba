//! Subscriptions: `subscribe` with `since`, deliveries through each one's
//! [`Tracker`](crate::tracker::Tracker), recovery of gaps and of a paused queue, refusals.

use std::time::Duration;

use herald_proto::ErrorCode;
use herald_proto::frames::{ClientFrame, Position};
use tokio::time::Instant;

use super::socket::conn_send;
use super::{Conn, Driver, End, Request};
use crate::backoff;
use crate::event::{Event, Gap, Message, SubscribeError, Subscribed};
use crate::tracker::Verdict;

impl Driver {
    pub(super) async fn unsubscribe(
        &mut self,
        sub: u64,
        conn: Option<&mut Conn>,
    ) -> Result<(), End> {
        let Some((channel, true)) = self.drop_sub(sub) else {
            return Ok(());
        };
        if let Some(conn) = conn {
            let id = self.next_id();
            conn.requests.insert(id, Request::Unsubscribe);
            conn_send(
                conn,
                &ClientFrame::Unsubscribe {
                    channel,
                    id: Some(id),
                },
            )
            .await?;
        }
        Ok(())
    }

    /// Sends `subscribe` for `sub`, with `since` when it has a position.
    pub(super) async fn send_subscribe(&mut self, sub: u64, conn: &mut Conn) -> Result<(), End> {
        let Some(s) = self.subs.get_mut(&sub) else {
            return Ok(());
        };
        let since = s.tracker.begin_request();
        self.send_subscribe_since(sub, since, conn).await
    }

    /// Sends `subscribe` for `sub` from `since`: a renewal, or a recovery.
    pub(super) async fn send_subscribe_since(
        &mut self,
        sub: u64,
        since: Option<Position>,
        conn: &mut Conn,
    ) -> Result<(), End> {
        let id = self.next_id();
        let Some(s) = self.subs.get_mut(&sub) else {
            return Ok(());
        };
        s.request = Some(id);
        conn.requests.insert(id, Request::Subscribe(sub));
        let frame = ClientFrame::Subscribe {
            channel: s.channel.clone(),
            since,
            join_leave: false,
            id: Some(id),
        };
        conn_send(conn, &frame).await
    }

    /// Some stalled subscription has room again: recover what it dropped.
    pub(super) async fn on_room(&mut self, mut conn: Option<&mut Conn>) -> Result<(), End> {
        let ready: Vec<u64> = self
            .subs
            .iter()
            .filter(|(_, s)| s.tracker.stalled() && !s.queue.is_stalled())
            .map(|(id, _)| *id)
            .collect();
        for sub in ready {
            let Some(s) = self.subs.get_mut(&sub) else {
                continue;
            };
            let Some(since) = s.tracker.resume() else {
                continue;
            };
            match conn.as_deref_mut() {
                Some(conn) => {
                    tracing::debug!(channel = %s.channel, "subscription has room again: recovering");
                    self.send_subscribe_since(sub, Some(since), conn).await?;
                }
                // The next connection renews it from its position anyway.
                None => s.tracker.request_failed(),
            }
        }
        Ok(())
    }

    pub(super) async fn on_delivery(
        &mut self,
        message: Message,
        conn: &mut Conn,
    ) -> Result<(), End> {
        let Some(ids) = self.by_channel.get(&message.channel) else {
            return Ok(());
        };
        let ids = ids.clone();
        let mut recover = Vec::new();
        let mut message = Some(message);
        for (i, sub) in ids.iter().enumerate() {
            let Some(s) = self.subs.get_mut(sub) else {
                continue;
            };
            // The last subscription of the channel takes the message itself.
            let m = if i + 1 == ids.len() {
                message.take()
            } else {
                message.clone()
            };
            let Some(m) = m else {
                continue;
            };
            if !s.tracker.stalled() && s.queue.room() == 0 {
                tracing::debug!(channel = %s.channel, "subscription full: pausing it");
                s.tracker.stall();
                s.queue.stall();
            }
            let (offset, epoch) = (m.offset, m.epoch.clone());
            match s.tracker.on_delivery(offset, &epoch, m) {
                Verdict::Deliver(m) => s.queue.push_message(Event::Message(m)),
                Verdict::Recover(since) => {
                    tracing::debug!(channel = %s.channel, %since, offset, epoch = %epoch, "missing messages: recovering");
                    recover.push((*sub, since));
                }
                Verdict::Duplicate | Verdict::Buffered | Verdict::Skip => {}
            }
        }
        for (sub, since) in recover {
            self.send_subscribe_since(sub, Some(since), conn).await?;
        }
        Ok(())
    }

    pub(super) async fn on_subscribed(
        &mut self,
        sub: u64,
        channel: String,
        offset: u64,
        epoch: String,
        recovered: Option<bool>,
        conn: &mut Conn,
    ) -> Result<(), End> {
        let Some(s) = self.subs.get_mut(&sub) else {
            return Ok(());
        };
        s.request = None;
        s.retries = 0;
        let out = s
            .tracker
            .on_subscribed(offset, &epoch, recovered, s.queue.room());
        if let Some(lost) = out.gap {
            tracing::info!(channel = %channel, from = %lost.from, to = %lost.to, reason = lost.reason.as_str(), "messages lost for good");
            s.queue.push_control(Event::Gap(Gap {
                channel: channel.clone(),
                from: lost.from,
                to: lost.to,
                reason: lost.reason,
            }));
        }
        s.queue.push_control(Event::Subscribed(Subscribed {
            channel,
            offset,
            epoch,
            recovered,
        }));
        for m in out.deliver {
            s.queue.push_message(Event::Message(m));
        }
        if s.tracker.stalled() {
            s.queue.stall();
        }
        if let Some(since) = out.recover {
            self.send_subscribe_since(sub, Some(since), conn).await?;
        }
        Ok(())
    }

    /// A `subscribe` was refused: retried after a backoff when the refusal is
    /// temporary, otherwise the subscription ends with an [`Event::Error`].
    pub(super) fn subscribe_refused(
        &mut self,
        sub: u64,
        code: ErrorCode,
        message: String,
        channel: Option<String>,
        retry_after_ms: Option<u64>,
    ) {
        let Some(s) = self.subs.get_mut(&sub) else {
            return;
        };
        s.request = None;
        s.tracker.request_failed();
        if matches!(
            code,
            ErrorCode::Unavailable | ErrorCode::RateLimited | ErrorCode::Internal
        ) {
            let wait = backoff::jittered(
                s.retries,
                self.opts.min_reconnect_delay,
                self.opts.max_reconnect_delay,
            )
            .max(retry_after_ms.map_or(Duration::ZERO, Duration::from_millis));
            s.retries = s.retries.saturating_add(1);
            s.retry_at = Some(Instant::now() + wait);
            tracing::debug!(channel = %s.channel, code = code.as_str(), %message, ?wait, "subscribe refused for now; retrying");
            return;
        }
        // Refused for good: retrying would meet the same answer.
        tracing::info!(channel = %s.channel, code = code.as_str(), %message, "subscribe refused");
        let channel = channel.unwrap_or_else(|| s.channel.clone());
        s.queue.push_control(Event::Error(SubscribeError {
            channel,
            code,
            message,
        }));
        self.drop_sub(sub);
    }

    /// Forgets a subscription and ends its stream; returns its channel, and whether
    /// it was that channel's last subscription.
    pub(super) fn drop_sub(&mut self, sub: u64) -> Option<(String, bool)> {
        let s = self.subs.remove(&sub)?;
        s.queue.close();
        let last = match self.by_channel.get_mut(&s.channel) {
            Some(ids) => {
                ids.retain(|i| *i != sub);
                ids.is_empty()
            }
            None => true,
        };
        if last {
            self.by_channel.remove(&s.channel);
        }
        Some((s.channel, last))
    }
}
