//! Subscriptions: `subscribe` with `since` and `join_leave`, deliveries through each
//! one's [`Tracker`](crate::tracker::Tracker), join/leave events beside it, recovery
//! of gaps and of a paused queue, refusals. Deliveries on a channel no subscription
//! holds go to the server-side subscriptions (`server`).

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
            self.send_unsubscribe(channel, conn).await?;
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
        let Some(channel) = self.subs.get(&sub).map(|s| s.channel.clone()) else {
            return Ok(());
        };
        // The gateway keeps one subscription per channel and connection, and any
        // `subscribe` without `join_leave` turns that subscription's events off: so
        // each one asks for them while any subscription of the channel wants them.
        let join_leave = self.join_leave_wanted(&channel);
        let Some(s) = self.subs.get_mut(&sub) else {
            return Ok(());
        };
        s.request = Some(id);
        s.lent_join_leave = join_leave && !s.join_leave;
        conn.requests.insert(id, Request::Subscribe(sub));
        let frame = ClientFrame::Subscribe {
            channel,
            since,
            join_leave,
            id: Some(id),
        };
        conn_send(conn, &frame).await
    }

    /// Whether some subscription of `channel` asked for its join/leave events.
    fn join_leave_wanted(&self, channel: &str) -> bool {
        self.by_channel.get(channel).is_some_and(|ids| {
            ids.iter()
                .any(|id| self.subs.get(id).is_some_and(|s| s.join_leave))
        })
    }

    /// Some stalled subscription, or the server-side stream, has room again: recover
    /// what it dropped.
    pub(super) async fn on_room(&mut self, mut conn: Option<&mut Conn>) -> Result<(), End> {
        self.on_server_room(conn.as_deref_mut()).await?;
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
            return self.on_unclaimed_delivery(message, conn).await;
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
                Verdict::Buffered if s.join_leave => s.arrivals.message(offset, &epoch),
                Verdict::Duplicate | Verdict::Buffered | Verdict::Skip => {}
            }
        }
        for (sub, since) in recover {
            self.send_subscribe_since(sub, Some(since), conn).await?;
        }
        Ok(())
    }

    /// A join or leave on `channel`, for each of its subscriptions that asked.
    /// Events carry no offset, so they stay out of the trackers: they neither move a
    /// position nor call for a recovery, and they are queued apart from messages,
    /// never pausing a subscription.
    pub(super) fn on_presence_event(&mut self, channel: &str, event: Event) {
        let Some(ids) = self.by_channel.get(channel) else {
            return;
        };
        let listeners: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|id| self.subs.get(id).is_some_and(|s| s.join_leave))
            .collect();
        let mut event = Some(event);
        for (i, sub) in listeners.iter().enumerate() {
            // The last listener takes the event itself.
            let e = if i + 1 == listeners.len() {
                event.take()
            } else {
                event.clone()
            };
            let (Some(s), Some(e)) = (self.subs.get_mut(sub), e) else {
                continue;
            };
            if s.tracker.position().is_none() {
                // The tracker holds this subscription's messages until its first
                // `subscribed`; the event waits with them to keep its place.
                s.arrivals.event(e);
            } else {
                s.queue.push_presence(e);
            }
        }
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
        for e in s.arrivals.merge(out.deliver) {
            match e {
                Event::Message(_) => s.queue.push_message(e),
                _ => s.queue.push_presence(e),
            }
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
        // A `subscribe` that asked for join/leave events on behalf of another
        // subscription of the channel is refused as a whole when the token may not
        // see the channel's presence; that other subscription ends with its own
        // refusal, and the retry no longer asks for them.
        let lent = code == ErrorCode::Forbidden && std::mem::take(&mut s.lent_join_leave);
        if lent || is_temporary(code) {
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

/// Whether a refused `subscribe` may succeed when tried again later.
pub(super) fn is_temporary(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Unavailable | ErrorCode::RateLimited | ErrorCode::Internal
    )
}
