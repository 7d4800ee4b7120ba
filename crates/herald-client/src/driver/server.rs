//! Server-side subscriptions: the channels the server subscribes the connection to by
//! itself (`subscribed` with `server`: the application's backend, or the personal
//! channel at login), delivered through
//! [`ServerSubscriptions`](crate::ServerSubscriptions).
//!
//! Each one has a [`Tracker`] like a subscription's, so its messages come exactly once
//! and in order. The backend's replay (when it gave `since`) arrives before its
//! `subscribed`, on a channel the client holds nothing for yet: [`Orphans`] keeps
//! those deliveries until the `subscribed` says what they were. A server-side
//! subscription ends with its connection, but its position is kept: when the server
//! subscribes a later connection to the channel again, what was published meanwhile
//! is recovered with `subscribe` + `since`, as a hole is. The channel needs no
//! permission for that, since the connection already holds it.
//!
//! The application's own subscriptions come first: a server `subscribed` on a channel
//! they hold only confirms them, and
//! [`Client::subscribe`](crate::Client::subscribe) takes a server-side subscription
//! over from its position.

use std::collections::HashMap;
use std::time::Duration;

use herald_proto::ErrorCode;
use herald_proto::frames::{ClientFrame, Position};
use tokio::time::Instant;

use super::socket::conn_send;
use super::subscriptions::is_temporary;
use super::{Conn, Driver, End, Request, ServerSub};
use crate::backoff;
use crate::event::{ClientError, Event, Gap, Message, ServerEvent, ServerSubscribed};
use crate::tracker::{Lost, Outcome, Tracker, Verdict};

/// The deliveries held for one channel.
struct Held {
    epoch: String,
    /// The lowest offset seen, held or not.
    low: u64,
    messages: Vec<Message>,
}

/// Deliveries on channels the client holds nothing for, on one connection, until a
/// `subscribed` with `server` says they were its replay. Bounded across channels, and
/// forgotten with the connection.
#[derive(Default)]
pub(super) struct Orphans {
    held: HashMap<String, Held>,
    /// Deliveries held, every channel together.
    count: usize,
}

impl Orphans {
    /// Holds `m`, within `limit` deliveries for every channel together.
    fn hold(&mut self, m: Message, limit: usize) {
        if self
            .held
            .get(&m.channel)
            .is_some_and(|h| h.epoch != m.epoch)
        {
            // A replay is of one epoch: what came before belongs to no replay.
            self.forget(&m.channel);
        }
        if !self.held.contains_key(&m.channel) && self.count >= limit {
            return;
        }
        let held = self.held.entry(m.channel.clone()).or_insert_with(|| Held {
            epoch: m.epoch.clone(),
            low: m.offset,
            messages: Vec::new(),
        });
        held.low = held.low.min(m.offset);
        // Past the bound only `low` is kept: the replay's start is known, and the
        // tracker recovers the rest from history.
        if self.count < limit {
            held.messages.push(m);
            self.count += 1;
        }
    }

    fn take(&mut self, channel: &str) -> Option<Held> {
        let held = self.held.remove(channel)?;
        self.count -= held.messages.len();
        Some(held)
    }

    pub(super) fn forget(&mut self, channel: &str) {
        self.take(channel);
    }
}

impl Driver {
    /// A delivery on a channel no subscription of the application's holds.
    pub(super) async fn on_unclaimed_delivery(
        &mut self,
        m: Message,
        conn: &mut Conn,
    ) -> Result<(), End> {
        if self.server_subs.contains_key(&m.channel) {
            return self.on_server_delivery(m, conn).await;
        }
        // Sent before the gateway read our `unsubscribe`.
        if conn.leaving.contains_key(&m.channel) {
            return Ok(());
        }
        conn.orphans.hold(m, self.opts.pending_limit);
        Ok(())
    }

    async fn on_server_delivery(&mut self, m: Message, conn: &mut Conn) -> Result<(), End> {
        let Some(s) = self.server_subs.get_mut(&m.channel) else {
            return Ok(());
        };
        if !s.tracker.stalled() && self.server_events.room() == 0 {
            tracing::debug!(channel = %m.channel, "server-side subscriptions not read: pausing");
            s.tracker.stall();
            self.server_events.stall();
        }
        let (offset, epoch, channel) = (m.offset, m.epoch.clone(), m.channel.clone());
        match s.tracker.on_delivery(offset, &epoch, m) {
            Verdict::Deliver(m) => self.server_events.push_message(ServerEvent::Message(m)),
            Verdict::Recover(since) => {
                tracing::debug!(channel = %channel, %since, offset, epoch = %epoch, "missing messages on a server-side subscription: recovering");
                return self.send_server_subscribe(channel, since, conn).await;
            }
            Verdict::Duplicate | Verdict::Buffered | Verdict::Skip => {}
        }
        Ok(())
    }

    /// `subscribed` with `server` answering no request of ours: the server subscribed
    /// the connection to `channel`.
    pub(super) async fn on_server_subscribed(
        &mut self,
        channel: String,
        offset: u64,
        epoch: String,
        recovered: Option<bool>,
        conn: &mut Conn,
    ) -> Result<(), End> {
        let held = conn.orphans.take(&channel);
        if self.by_channel.contains_key(&channel) {
            return self.server_confirms(&channel, conn).await;
        }
        let room = self.server_events.room();
        let mut recover = None;
        let mut out = match self.server_subs.get_mut(&channel) {
            None => {
                let (sub, out) = self.new_server_sub(held, offset, &epoch, recovered, room);
                self.server_subs.insert(channel.clone(), sub);
                out
            }
            Some(s) if s.request.is_some() || s.retry_at.is_some() || s.tracker.stalled() => {
                // A renewal of ours is on its way or due, or the stream is paused and
                // resuming recovers from the position: either settles it.
                Outcome::default()
            }
            Some(s) => {
                let behind = s
                    .tracker
                    .position()
                    .is_some_and(|p| p.epoch == epoch && p.offset < offset);
                let since = s.tracker.begin_request();
                if behind {
                    // Published while the connection was away (or left out of the
                    // backend's own replay): recovered from history, as a hole is.
                    recover = since;
                    Outcome::default()
                } else {
                    // Another epoch is a gap; the same position, nothing.
                    s.tracker.on_subscribed(offset, &epoch, None, room)
                }
            }
        };
        recover = recover.or(out.recover.take());
        let Some(s) = self.server_subs.get(&channel) else {
            return Ok(());
        };
        // The application has seen everything up to the step's first delivery (the
        // tracker has already moved past them all).
        let position = match out.deliver.first() {
            Some(m) => Some(Position::new(m.offset.saturating_sub(1), m.epoch.clone())),
            None => s.tracker.position().cloned(),
        }
        .unwrap_or_else(|| Position::new(offset, epoch.clone()));
        let stalled = s.tracker.stalled();
        tracing::debug!(channel = %channel, %position, "subscribed by the server");
        if let Some(lost) = out.gap {
            self.server_gap(&channel, lost);
        }
        self.server_events
            .push_control(ServerEvent::Subscribed(ServerSubscribed {
                channel: channel.clone(),
                offset,
                epoch,
                recovered,
                position,
            }));
        for m in out.deliver {
            self.server_events.push_message(ServerEvent::Message(m));
        }
        if stalled {
            self.server_events.stall();
        }
        if let Some(since) = recover {
            self.send_server_subscribe(channel, since, conn).await?;
        }
        Ok(())
    }

    /// A new server-side subscription at (`offset`, `epoch`), with the deliveries
    /// `held` for its channel; at most `room` of them are handed out.
    fn new_server_sub(
        &self,
        held: Option<Held>,
        offset: u64,
        epoch: &str,
        recovered: Option<bool>,
        room: usize,
    ) -> (ServerSub, Outcome<Message>) {
        // With `recovered: true` the deliveries held are the backend's replay:
        // delivery starts right before the first of them. Otherwise it starts after
        // the channel's offset, as for a subscription made without `since`.
        let since = held
            .as_ref()
            .filter(|h| recovered == Some(true) && h.epoch == epoch)
            .map(|h| Position::new(h.low.saturating_sub(1), epoch));
        let mut tracker = Tracker::new(since, self.opts.pending_limit);
        tracker.begin_request();
        let mut deliver = Vec::new();
        for m in held.map(|h| h.messages).unwrap_or_default() {
            if deliver.len() >= room && tracker.position().is_some() {
                tracker.stall();
            }
            let (o, e) = (m.offset, m.epoch.clone());
            if let Verdict::Deliver(m) = tracker.on_delivery(o, &e, m) {
                deliver.push(m);
            }
        }
        let mut out =
            tracker.on_subscribed(offset, epoch, recovered, room.saturating_sub(deliver.len()));
        deliver.append(&mut out.deliver);
        out.deliver = deliver;
        let sub = ServerSub {
            tracker,
            request: None,
            retry_at: None,
            retries: 0,
        };
        (sub, out)
    }

    /// The server subscribed the connection to a channel the application subscribed
    /// to itself: that confirms the subscription, whose deliveries go on through its
    /// own tracker. The server's `subscribe` turns the channel's join/leave events
    /// off, though: a subscription that asked for them asks again (one on its way
    /// asks anyway).
    async fn server_confirms(&mut self, channel: &str, conn: &mut Conn) -> Result<(), End> {
        let Some(ids) = self.by_channel.get(channel) else {
            return Ok(());
        };
        let busy = ids
            .iter()
            .filter_map(|id| self.subs.get(id))
            .any(|s| s.request.is_some() || s.retry_at.is_some());
        if busy {
            return Ok(());
        }
        let asker = ids
            .iter()
            .copied()
            .find(|id| self.subs.get(id).is_some_and(|s| s.join_leave));
        match asker {
            Some(sub) => self.send_subscribe(sub, conn).await,
            None => Ok(()),
        }
    }

    /// `unsubscribed` with `server`: the backend ended the channel's subscription on
    /// this connection.
    pub(super) fn on_server_unsubscribed(&mut self, channel: String, conn: &mut Conn) {
        conn.orphans.forget(&channel);
        if let Some(ids) = self.by_channel.get(&channel).cloned() {
            if ids
                .iter()
                .any(|id| self.subs.get(id).is_some_and(|s| s.request.is_some()))
            {
                // A `subscribe` of the application's is on its way: it subscribes the
                // channel again, and its answer settles the subscription.
                return;
            }
            tracing::info!(channel = %channel, "subscription ended by the backend");
            for sub in ids {
                if let Some(s) = self.subs.get(&sub) {
                    s.queue.push_control(Event::Unsubscribed);
                }
                self.drop_sub(sub);
            }
            return;
        }
        if self.server_subs.remove(&channel).is_some() {
            tracing::debug!(channel = %channel, "server-side subscription ended by the backend");
            self.server_events
                .push_control(ServerEvent::Unsubscribed { channel });
        }
    }

    /// Our `unsubscribe` of `channel` is settled: `answered` by `unsubscribed`, or
    /// refused (`not_subscribed`: the gateway had already dropped it).
    pub(super) fn on_left(&mut self, channel: String, answered: bool, conn: &mut Conn) {
        if let Some(n) = conn.leaving.get_mut(&channel) {
            *n -= 1;
            if *n == 0 {
                conn.leaving.remove(&channel);
            }
        }
        // The server subscribed the connection again while the `unsubscribe` was on
        // its way, and the `unsubscribe` ended that too.
        if answered && self.server_subs.remove(&channel).is_some() {
            self.server_events
                .push_control(ServerEvent::Unsubscribed { channel });
        }
    }

    /// Sends `unsubscribe` for `channel`.
    pub(super) async fn send_unsubscribe(
        &mut self,
        channel: String,
        conn: &mut Conn,
    ) -> Result<(), End> {
        let id = self.next_id();
        conn.requests
            .insert(id, Request::Unsubscribe(channel.clone()));
        *conn.leaving.entry(channel.clone()).or_default() += 1;
        conn_send(
            conn,
            &ClientFrame::Unsubscribe {
                channel,
                id: Some(id),
            },
        )
        .await
    }

    /// The answer to request `id`, a renewal of the server-side subscription of
    /// `channel`.
    pub(super) async fn on_server_renewed(
        &mut self,
        id: u64,
        channel: String,
        offset: u64,
        epoch: String,
        recovered: Option<bool>,
        conn: &mut Conn,
    ) -> Result<(), End> {
        let room = self.server_events.room();
        let Some(s) = self.server_subs.get_mut(&channel) else {
            // Ended while the renewal was on its way (the backend unsubscribed it
            // first), so the renewal subscribed the channel again: undone, unless the
            // application has subscribed to it meanwhile.
            if self.by_channel.contains_key(&channel) {
                return Ok(());
            }
            return self.send_unsubscribe(channel, conn).await;
        };
        if s.request != Some(id) {
            return Ok(());
        }
        s.request = None;
        s.retries = 0;
        let out = s.tracker.on_subscribed(offset, &epoch, recovered, room);
        let stalled = s.tracker.stalled();
        if let Some(lost) = out.gap {
            self.server_gap(&channel, lost);
        }
        for m in out.deliver {
            self.server_events.push_message(ServerEvent::Message(m));
        }
        if stalled {
            self.server_events.stall();
        }
        if let Some(since) = out.recover {
            self.send_server_subscribe(channel, since, conn).await?;
        }
        Ok(())
    }

    /// Request `id`, a renewal of the server-side subscription of `channel`, was
    /// refused: retried after a backoff when the refusal is temporary; otherwise the
    /// server-side subscription is over.
    pub(super) fn server_renewal_refused(
        &mut self,
        id: u64,
        channel: String,
        code: ErrorCode,
        message: String,
        retry_after_ms: Option<u64>,
    ) {
        let Some(s) = self.server_subs.get_mut(&channel) else {
            return;
        };
        if s.request != Some(id) {
            return;
        }
        s.request = None;
        s.tracker.request_failed();
        if is_temporary(code) {
            let wait = backoff::jittered(
                s.retries,
                self.opts.min_reconnect_delay,
                self.opts.max_reconnect_delay,
            )
            .max(retry_after_ms.map_or(Duration::ZERO, Duration::from_millis));
            s.retries = s.retries.saturating_add(1);
            s.retry_at = Some(Instant::now() + wait);
            tracing::debug!(channel = %channel, code = code.as_str(), %message, ?wait, "server-side subscription renewal refused for now; retrying");
            return;
        }
        // Renewing a channel the connection holds needs no permission: a refusal
        // means the connection no longer holds it.
        tracing::info!(channel = %channel, code = code.as_str(), %message, "server-side subscription renewal refused");
        self.server_subs.remove(&channel);
        self.server_events.push_control(ServerEvent::Unsubscribed {
            channel: channel.clone(),
        });
        self.report(ClientError::Server {
            code,
            message: format!("renewing {channel}: {message}"),
        });
    }

    /// Renews the server-side subscription of `channel` from its position (a retry
    /// after a temporary refusal).
    pub(super) async fn renew_server(
        &mut self,
        channel: String,
        conn: &mut Conn,
    ) -> Result<(), End> {
        let Some(since) = self
            .server_subs
            .get_mut(&channel)
            .and_then(|s| s.tracker.begin_request())
        else {
            return Ok(());
        };
        self.send_server_subscribe(channel, since, conn).await
    }

    /// Sends `subscribe` with `since` for the server-side subscription of `channel`:
    /// a recovery.
    async fn send_server_subscribe(
        &mut self,
        channel: String,
        since: Position,
        conn: &mut Conn,
    ) -> Result<(), End> {
        let id = self.next_id();
        let Some(s) = self.server_subs.get_mut(&channel) else {
            return Ok(());
        };
        s.request = Some(id);
        s.retry_at = None;
        conn.requests
            .insert(id, Request::ServerSubscribe(channel.clone()));
        let frame = ClientFrame::Subscribe {
            channel,
            since: Some(since),
            join_leave: false,
            id: Some(id),
        };
        conn_send(conn, &frame).await
    }

    /// The server-side stream has room again: the server-side subscriptions it paused
    /// recover what they dropped.
    pub(super) async fn on_server_room(&mut self, mut conn: Option<&mut Conn>) -> Result<(), End> {
        if self.server_events.is_stalled() {
            return Ok(());
        }
        let ready: Vec<String> = self
            .server_subs
            .iter()
            .filter(|(_, s)| s.tracker.stalled())
            .map(|(channel, _)| channel.clone())
            .collect();
        for channel in ready {
            let Some(s) = self.server_subs.get_mut(&channel) else {
                continue;
            };
            let Some(since) = s.tracker.resume() else {
                continue;
            };
            match conn.as_deref_mut() {
                Some(conn) => {
                    tracing::debug!(channel = %channel, "server-side subscriptions have room again: recovering");
                    self.send_server_subscribe(channel, since, conn).await?;
                }
                // The connection is gone, and the server-side subscription with it:
                // the position waits for the server to subscribe again.
                None => s.tracker.request_failed(),
            }
        }
        Ok(())
    }

    /// The application subscribes to `channel`: a server-side subscription of it is
    /// taken over. Returns its position, where the application's subscription goes
    /// on from (unless it gave one of its own), so that nothing falls between the
    /// two. A renewal in flight stays in the connection's requests: its answer finds
    /// the channel held by the application.
    pub(super) fn take_over(&mut self, channel: &str) -> Option<Position> {
        let s = self.server_subs.remove(channel)?;
        tracing::debug!(channel = %channel, "server-side subscription taken over");
        s.tracker.position().cloned()
    }

    fn server_gap(&self, channel: &str, lost: Lost) {
        tracing::info!(channel = %channel, from = %lost.from, to = %lost.to, reason = lost.reason.as_str(), "messages lost for good");
        self.server_events.push_control(ServerEvent::Gap(Gap {
            channel: channel.to_owned(),
            from: lost.from,
            to: lost.to,
            reason: lost.reason,
        }));
    }
}
