//! What the client asks: every frame passes the rate and size limits, then is
//! parsed and answered (subscribe with recovery, unsubscribe, broadcast, ping, auth).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes};
use governor::clock::Clock;
use serde_json::value::RawValue;
use tokio::time::Instant;

use herald_common::publish::HistoryQuery;
use herald_proto::client::{self, ClientMsg, ErrorCode, Id, Since};
use herald_proto::disconnect::Disconnect;
use herald_proto::envelope;
use herald_proto::node::LimitKind;
use herald_proto::presence::EventKind;
use herald_proto::server::ServerMsg;
use herald_proto::time::{now_ms, now_rfc3339};
use herald_proto::webhook::{Event, EventKind as WebhookKind};

use super::{Conn, Flow, Socket};
use crate::hub::ConnCommand;
use crate::proxy::{Forwarded, Outcome};
use herald_proto::proxy::{
    self, Hook, PublishRequest, PublishResult, SubscribeRequest, SubscribeResult,
};

/// Longest wait for this connection's queued joins and leaves before a presence read.
const MEMBERS_WRITTEN_WAIT: Duration = Duration::from_secs(1);
/// How long a subscriber waits for Redis to confirm a new channel subscription.
const SUBSCRIBE_READY_TIMEOUT: Duration = Duration::from_secs(3);
/// Oversized frames tolerated per minute before the connection is closed.
const TOO_LARGE_STRIKES: u32 = 3;
/// The window of [`TOO_LARGE_STRIKES`].
const TOO_LARGE_WINDOW: Duration = Duration::from_secs(60);
/// A connection whose frames the rate limiter refused this many times its limit
/// within one window is closed.
const RATE_STRIKES_FACTOR: u32 = 3;
/// Rate-limit hits are reported to the monitor at most this often per connection.
const RATELIMIT_REPORT_EVERY: Duration = Duration::from_secs(1);

/// The outcome of one request.
enum Reply {
    Frame(String),
    Nothing,
    /// The socket failed while answering.
    Broken,
}

/// How a subscription is made.
#[derive(Debug, Clone, Copy)]
pub(super) struct How {
    /// Deliver the channel's join/leave events too.
    pub(super) join_leave: bool,
    /// Answer with `subscribed` (else only the replay is written: subscriptions
    /// made at login are listed in `auth_success`).
    pub(super) reply: bool,
    /// The application's backend asked for it: no permission check, and the
    /// `subscribed` frame says `server`.
    pub(super) by_server: bool,
}

/// A subscribe that did not happen.
pub(super) enum SubError {
    /// Tell the client with this `error` frame.
    Frame(String),
    /// The socket failed.
    Broken,
}

impl<S: Socket> Conn<S> {
    pub(super) async fn on_frame(&mut self, msg: Message) -> Flow {
        self.last_seen = Instant::now();
        let text = match msg {
            Message::Text(t) => t,
            Message::Binary(_) => return Flow::End(Disconnect::BinaryFrame),
            Message::Ping(_) | Message::Pong(_) => return Flow::Continue,
            Message::Close(_) => return Flow::Gone,
        };
        self.shared.messages_in.fetch_add(1, Ordering::Relaxed);
        self.state.metrics.messages_received.inc();
        if let Err(wait) = self.limiter.check() {
            let wait = wait.wait_time_from(self.state.clock.now());
            // Parse only to echo the request's id (the frame is within the size limit).
            let id = (text.len() <= self.state.settings.max_frame_bytes)
                .then(|| client::parse(&text).ok())
                .flatten()
                .and_then(|m| m.id().cloned());
            return self.rate_limited(wait, id).await;
        }
        if text.len() > self.state.settings.max_frame_bytes {
            return self.too_large().await;
        }
        let reply = match client::parse(&text) {
            Ok(msg) => self.on_request(msg).await,
            Err(e) => Reply::Frame(e.to_frame()),
        };
        match reply {
            Reply::Frame(r) => self.send_text(r).await,
            Reply::Nothing => Flow::Continue,
            Reply::Broken => Flow::Gone,
        }
    }

    async fn rate_limited(&mut self, wait: Duration, id: Option<Id>) -> Flow {
        self.state
            .metrics
            .ratelimit_hits
            .with_label_values(&[LimitKind::Message.as_str()])
            .inc();
        self.report_hit(LimitKind::Message);
        let window = self.state.settings.rate_window;
        if self.refused_since.elapsed() > window {
            self.refused = 0;
            self.refused_since = Instant::now();
        }
        self.refused += 1;
        let strikes = self
            .state
            .settings
            .rate_messages
            .saturating_mul(RATE_STRIKES_FACTOR);
        if self.refused >= strikes {
            return Flow::End(Disconnect::RateLimited);
        }
        let frame = ServerMsg::Error {
            code: ErrorCode::RateLimited,
            message: "rate limit exceeded",
            id: id.as_ref(),
            channel: None,
            retry_after_ms: Some(wait.as_millis().max(1) as u64),
            app_code: None,
        };
        self.send_text(frame.to_json()).await
    }

    async fn too_large(&mut self) -> Flow {
        self.state
            .metrics
            .ratelimit_hits
            .with_label_values(&[LimitKind::TooLarge.as_str()])
            .inc();
        let now = Instant::now();
        self.too_large
            .retain(|t| now.duration_since(*t) < TOO_LARGE_WINDOW);
        self.too_large.push(now);
        if self.too_large.len() as u32 >= TOO_LARGE_STRIKES {
            return Flow::End(Disconnect::TooLarge);
        }
        let msg = format!(
            "frame larger than {} bytes",
            self.state.settings.max_frame_bytes
        );
        self.send_text(ServerMsg::error(ErrorCode::TooLarge, &msg, None).to_json())
            .await
    }

    /// Tells the monitor about a limit hit, at most once a second per connection.
    fn report_hit(&mut self, kind: LimitKind) {
        if self
            .last_report
            .is_some_and(|t| t.elapsed() < RATELIMIT_REPORT_EVERY)
        {
            return;
        }
        self.last_report = Some(Instant::now());
        self.state.report_ratelimit(&self.shared.user, kind);
    }

    /// Handles one request.
    async fn on_request(&mut self, msg: ClientMsg) -> Reply {
        match msg {
            ClientMsg::Ping { id } => Reply::Frame(ServerMsg::pong(id.as_ref()).to_json()),
            ClientMsg::Subscribe {
                channel,
                since,
                join_leave,
                id,
            } => {
                let how = How {
                    join_leave,
                    reply: true,
                    by_server: false,
                };
                match Box::pin(self.subscribe(&channel, since, how, id.as_ref())).await {
                    Ok(()) => Reply::Nothing,
                    Err(SubError::Frame(frame)) => Reply::Frame(frame),
                    Err(SubError::Broken) => Reply::Broken,
                }
            }
            ClientMsg::Unsubscribe { channel, id } => {
                Reply::Frame(self.unsubscribe(&channel, id.as_ref(), false))
            }
            ClientMsg::Broadcast {
                channel,
                message,
                id,
            } => match Box::pin(self.broadcast(&channel, message.0.as_ref(), id.as_ref())).await {
                Some(f) => Reply::Frame(f),
                None => Reply::Nothing,
            },
            ClientMsg::Auth {
                token: Some(token),
                id,
                ..
            } => Reply::Frame(Box::pin(self.reauth(&token, id.as_ref())).await),
            ClientMsg::Auth {
                token: None, id, ..
            } => Reply::Frame(
                ServerMsg::error(ErrorCode::BadRequest, "missing field: token", id.as_ref())
                    .to_json(),
            ),
            ClientMsg::History {
                channel,
                since,
                limit,
                reverse,
                id,
            } => {
                let query = HistoryQuery {
                    since: since.as_ref().map(|s| (s.offset, s.epoch.as_str())),
                    limit: history_limit(limit, self.state.settings.history.size),
                    reverse,
                };
                Reply::Frame(Box::pin(self.history(&channel, query, id.as_ref())).await)
            }
            ClientMsg::Presence { channel, id } => {
                Reply::Frame(Box::pin(self.presence(&channel, false, id.as_ref())).await)
            }
            ClientMsg::PresenceStats { channel, id } => {
                Reply::Frame(Box::pin(self.presence(&channel, true, id.as_ref())).await)
            }
        }
    }

    /// A channel's members (or their counts, `stats`) on every gateway, for whoever
    /// may see its presence.
    async fn presence(&mut self, channel: &str, stats: bool, id: Option<&Id>) -> String {
        if !self.may_see_presence(channel) {
            return ServerMsg::channel_error(
                ErrorCode::Forbidden,
                "not allowed to see this channel's presence",
                id,
                channel,
            )
            .to_json();
        }
        // Read-your-writes: this connection's own joins and leaves first.
        let written = self.state.members_written();
        let _ = tokio::time::timeout(MEMBERS_WRITTEN_WAIT, written).await;
        let members = &self.state.members;
        let answer = if stats {
            members.stats(channel).await.map(|s| {
                ServerMsg::PresenceStats {
                    channel,
                    id,
                    num_clients: s.num_clients,
                    num_users: s.num_users,
                }
                .to_json()
            })
        } else {
            members
                .members(channel, self.state.settings.presence_limit)
                .await
                .map(|m| {
                    // Records are the JSON the gateways wrote; one that is not
                    // (never expected) is left out rather than breaking the reply.
                    let list: Vec<&RawValue> = m
                        .members
                        .iter()
                        .filter_map(|r| serde_json::from_str(r).ok())
                        .collect();
                    ServerMsg::Presence {
                        channel,
                        id,
                        members: list,
                        truncated: m.truncated,
                    }
                    .to_json()
                })
        };
        match answer {
            Ok(frame) => {
                self.state.health.up();
                frame
            }
            Err(e) => {
                self.state.metrics.redis_errors.inc();
                self.state.health.failed(&e);
                ServerMsg::channel_error(
                    ErrorCode::Unavailable,
                    "presence temporarily unavailable; retry",
                    id,
                    channel,
                )
                .to_json()
            }
        }
    }

    /// A channel's kept messages, for whoever may read its history.
    async fn history(&mut self, channel: &str, query: HistoryQuery<'_>, id: Option<&Id>) -> String {
        if !self.may_read_history(channel) {
            return ServerMsg::channel_error(
                ErrorCode::Forbidden,
                "not allowed to read this channel's history",
                id,
                channel,
            )
            .to_json();
        }
        match self.state.publisher.history(channel, query).await {
            Ok(h) => {
                self.state.health.up();
                // Frames in history are the JSON the publisher wrote; one that is
                // not (never expected) is left out rather than breaking the reply.
                let publications: Vec<&RawValue> = h
                    .frames
                    .iter()
                    .filter_map(|f| serde_json::from_str(f).ok())
                    .collect();
                ServerMsg::History {
                    channel,
                    id,
                    publications,
                    offset: h.offset,
                    epoch: &h.epoch,
                }
                .to_json()
            }
            Err(e) => {
                self.state.metrics.redis_errors.inc();
                self.state.health.failed(&e);
                ServerMsg::channel_error(
                    ErrorCode::Unavailable,
                    "history temporarily unavailable; retry",
                    id,
                    channel,
                )
                .to_json()
            }
        }
    }

    /// Runs the backend's commands set aside by the writer, in order.
    pub(super) async fn run_commands(&mut self) -> Flow {
        for cmd in std::mem::take(&mut self.commands) {
            let flow = match cmd {
                ConnCommand::Subscribe { channel, since } => {
                    let how = How {
                        join_leave: false,
                        reply: true,
                        by_server: true,
                    };
                    match Box::pin(self.subscribe(&channel, since, how, None)).await {
                        Ok(()) => Flow::Continue,
                        Err(SubError::Frame(frame)) => self.send_text(frame).await,
                        Err(SubError::Broken) => Flow::Gone,
                    }
                }
                ConnCommand::Unsubscribe { channel } => {
                    if self.channels.contains(&channel) {
                        let frame = self.unsubscribe(&channel, None, true);
                        self.send_text(frame).await
                    } else {
                        Flow::Continue
                    }
                }
            };
            if !matches!(flow, Flow::Continue) {
                return flow;
            }
        }
        Flow::Continue
    }

    fn unsubscribe(&mut self, channel: &str, id: Option<&Id>, by_server: bool) -> String {
        if !self.channels.remove(channel) {
            return ServerMsg::channel_error(
                ErrorCode::NotSubscribed,
                "not subscribed to this channel",
                id,
                channel,
            )
            .to_json();
        }
        self.state.hub.unsubscribe(channel, self.key);
        self.floors.remove(channel);
        let member = self.member_in(channel);
        if let Some(m) = self.channel_members.as_mut() {
            m.remove(channel);
        }
        self.state
            .member_change(&self.shared, channel, member, EventKind::Leave);
        self.publish_presence();
        ServerMsg::Unsubscribed {
            channel,
            id,
            server: by_server,
        }
        .to_json()
    }

    async fn broadcast(
        &mut self,
        channel: &str,
        message: &RawValue,
        id: Option<&Id>,
    ) -> Option<String> {
        // With a publish hook on this channel, the backend decides (and may rewrite).
        let rewritten;
        let message = if self.state.proxy.asks_publish(channel) {
            match Box::pin(publish_hook(self.asker(), channel, message)).await {
                Ok(None) => message,
                Ok(Some(new)) => {
                    rewritten = new;
                    &*rewritten
                }
                Err(refusal) => return Some(refusal.to_json_with(id, channel)),
            }
        } else if !self.claims.may_publish(channel) {
            return Some(
                ServerMsg::channel_error(
                    ErrorCode::Forbidden,
                    "not allowed to broadcast to this channel",
                    id,
                    channel,
                )
                .to_json(),
            );
        } else {
            message
        };
        let frame = envelope::message(channel, message, Some(&self.shared.user), &now_rfc3339());
        match self
            .state
            .publisher
            .publish(channel, &frame, now_ms())
            .await
        {
            Ok((offset, epoch)) => {
                self.state.health.up();
                self.state.metrics.publish.inc();
                if self.state.webhooks.wants_publish(channel) {
                    self.state.webhooks.send(Event {
                        user_id: Some(self.shared.user.clone()),
                        conn_id: Some(self.shared.conn_id.clone()),
                        message: serde_json::from_str(message.get()).ok(),
                        offset: Some(offset),
                        epoch: Some(epoch.clone()),
                        ..Event::channel(WebhookKind::ClientPublish, channel, now_ms())
                    });
                }
                // Nothing to acknowledge without an id; the sender sees its own
                // message if subscribed.
                id.map(|id| {
                    ServerMsg::Ack {
                        id,
                        channel,
                        offset,
                        epoch: &epoch,
                    }
                    .to_json()
                })
            }
            Err(e) => {
                self.state.metrics.redis_errors.inc();
                self.state.health.failed(&e);
                tracing::warn!(conn_id = %self.shared.conn_id, cause = %e, "publish failed");
                Some(
                    ServerMsg::channel_error(
                        ErrorCode::Unavailable,
                        "message could not be published; retry",
                        id,
                        channel,
                    )
                    .to_json(),
                )
            }
        }
    }

    /// Subscribes this connection to `channel` as `how` says; `Ok` after
    /// `subscribed` (and any replay) was written when `how.reply`, otherwise
    /// silently. `Err` is an error frame.
    pub(super) async fn subscribe(
        &mut self,
        channel: &str,
        since: Option<Since>,
        how: How,
        id: Option<&Id>,
    ) -> Result<(), SubError> {
        let How {
            join_leave,
            reply,
            by_server,
        } = how;
        let err = |code, msg: &str| {
            Err(SubError::Frame(
                ServerMsg::channel_error(code, msg, id, channel).to_json(),
            ))
        };
        if let Err(e) = herald_proto::channel::validate(channel) {
            return err(ErrorCode::BadRequest, &e.to_string());
        }
        let already = self.channels.contains(channel);
        // The backend's subscriptions need no permission, and a channel already
        // subscribed (perhaps by the backend) may be renewed, e.g. to recover.
        let mut hook_data = None;
        let mut own_member = None;
        if !by_server && !already {
            let allowed = self.claims.may_subscribe(channel);
            if self.state.proxy.asks_subscribe(channel, allowed) {
                match Box::pin(subscribe_hook(self.asker(), channel)).await {
                    Ok(r) => {
                        own_member = r.info.map(|info| self.member_with(info));
                        hook_data = r
                            .data
                            .and_then(|d| serde_json::value::to_raw_value(&d).ok());
                    }
                    Err(frame) => {
                        return Err(SubError::Frame(frame.to_json_with(id, channel)));
                    }
                }
            } else if !allowed {
                return err(
                    ErrorCode::Forbidden,
                    "not allowed to subscribe to this channel",
                );
            }
        }
        // Past here the subscription is allowed: by the claims, the backend, or as a
        // renewal; without a `presence` claim that is enough to see its presence.
        let sees_presence = match &self.claims.presence {
            Some(_) => self.claims.may_see_presence(channel),
            None => true,
        };
        if join_leave && !sees_presence {
            return err(
                ErrorCode::Forbidden,
                "not allowed to see this channel's presence (join_leave)",
            );
        }
        if !already && self.channels.len() >= self.state.settings.max_channels {
            let max = self.state.settings.max_channels;
            return err(
                ErrorCode::BadRequest,
                &format!("too many channels (at most {max})"),
            );
        }
        let mut ready =
            self.state
                .hub
                .subscribe(channel, self.key, self.shared.clone(), join_leave);
        if !already {
            self.joining = Some(channel.to_owned());
        }
        let confirmed = tokio::time::timeout(SUBSCRIBE_READY_TIMEOUT, ready.wait_for(|r| *r))
            .await
            .is_ok_and(|r| r.is_ok());
        let recovery = if confirmed {
            self.state
                .publisher
                .recover(
                    channel,
                    since.as_ref().map(|s| (s.offset, s.epoch.as_str())),
                )
                .await
                .ok()
        } else {
            None
        };
        self.joining = None;
        let Some(rec) = recovery else {
            if !already {
                self.state.hub.unsubscribe(channel, self.key);
            }
            self.state.metrics.redis_errors.inc();
            return err(
                ErrorCode::Unavailable,
                "subscription temporarily unavailable; retry",
            );
        };
        if self.channels.insert(channel.to_owned()) {
            if let Some(member) = own_member {
                self.channel_members
                    .get_or_insert_default()
                    .insert(channel.to_owned(), member);
            }
            let member = self.member_in(channel);
            self.state
                .member_change(&self.shared, channel, member, EventKind::Join);
        }
        self.floors
            .insert(Arc::from(channel), (rec.epoch.as_str().into(), rec.offset));
        self.publish_presence();
        let recovered = since.as_ref().map(|_| rec.recovered);
        if rec.recovered {
            for frame in rec.frames {
                if let Flow::Gone = self.feed(Message::Text(Utf8Bytes::from(frame))).await {
                    return Err(SubError::Broken);
                }
                self.shared.messages_out.fetch_add(1, Ordering::Relaxed);
                self.state.metrics.messages_delivered.inc();
            }
        }
        let flow = if reply {
            let frame = ServerMsg::Subscribed {
                channel,
                id,
                offset: rec.offset,
                epoch: &rec.epoch,
                recovered,
                server: by_server,
                data: hook_data.as_deref(),
            };
            self.send_text(frame.to_json()).await
        } else {
            self.flush().await
        };
        match flow {
            Flow::Continue => Ok(()),
            _ => Err(SubError::Broken),
        }
    }
}

impl<S: Socket> Conn<S> {
    /// The `presence` claim's rule, or, without one, whoever may subscribe — and a
    /// connection subscribed (by the backend's leave, perhaps) may.
    fn may_see_presence(&self, channel: &str) -> bool {
        match &self.claims.presence {
            Some(_) => self.claims.may_see_presence(channel),
            None => self.claims.may_subscribe(channel) || self.channels.contains(channel),
        }
    }

    /// As [`Self::may_see_presence`], for the `history` claim.
    fn may_read_history(&self, channel: &str) -> bool {
        match &self.claims.history {
            Some(_) => self.claims.may_read_history(channel),
            None => self.claims.may_subscribe(channel) || self.channels.contains(channel),
        }
    }

    /// What a hook request needs of this connection, owned: the request must not
    /// borrow the connection across its wait.
    fn asker(&self) -> Asker {
        Asker {
            state: self.state.clone(),
            shared: self.shared.clone(),
            forwarded: self.forwarded.clone(),
        }
    }

    /// This connection's presence record with another `info`.
    fn member_with(&self, info: serde_json::Value) -> Arc<str> {
        let member = herald_proto::presence::Member {
            user_id: self.shared.user.clone(),
            conn_id: self.shared.conn_id.clone(),
            info: Some(info),
        };
        Arc::from(member.to_json())
    }
}

/// See [`Conn::asker`].
struct Asker {
    state: Arc<crate::state::State>,
    shared: Arc<crate::hub::ConnShared>,
    forwarded: Option<Arc<Forwarded>>,
}

impl Asker {
    fn headers(&self) -> Forwarded {
        self.forwarded.as_deref().cloned().unwrap_or_default()
    }
}

/// Asks the subscribe hook about `channel`.
async fn subscribe_hook(a: Asker, channel: &str) -> Result<SubscribeResult, Refusal> {
    let req = SubscribeRequest {
        conn_id: a.shared.conn_id.clone(),
        user_id: a.shared.user.clone(),
        client_ip: a.shared.ip.to_string(),
        channel: channel.to_owned(),
    };
    let headers = a.headers();
    match a.state.proxy.call(Hook::Subscribe, &req, &headers).await {
        Outcome::Allowed(r) => Ok(r),
        Outcome::Refused(e) => Err(Refusal::backend(
            ErrorCode::PermissionDenied,
            e.code,
            e.message,
        )),
        Outcome::Disconnect(d) => Err(Refusal::backend(
            ErrorCode::PermissionDenied,
            d.code,
            d.reason,
        )),
        Outcome::Unavailable(_) => Err(Refusal::unavailable(
            "subscription could not be approved; retry",
        )),
    }
}

/// Asks the publish hook about a broadcast; `Ok(Some(_))` is the message to
/// publish instead.
async fn publish_hook(
    a: Asker,
    channel: &str,
    message: &RawValue,
) -> Result<Option<Box<RawValue>>, Refusal> {
    let req = PublishRequest {
        conn_id: a.shared.conn_id.clone(),
        user_id: a.shared.user.clone(),
        client_ip: a.shared.ip.to_string(),
        channel: channel.to_owned(),
        data: serde_json::from_str(message.get()).unwrap_or_default(),
    };
    let headers = a.headers();
    match a
        .state
        .proxy
        .call::<_, PublishResult>(Hook::Publish, &req, &headers)
        .await
    {
        Outcome::Allowed(r) => Ok(r
            .data
            .and_then(|d| serde_json::value::to_raw_value(&d).ok())),
        Outcome::Refused(e) => Err(Refusal::backend(ErrorCode::Rejected, e.code, e.message)),
        Outcome::Disconnect(d) => Err(Refusal::backend(ErrorCode::Rejected, d.code, d.reason)),
        // Not published: the client may send it again (it was not published twice).
        Outcome::Unavailable(_) => {
            Err(Refusal::unavailable("message could not be approved; retry"))
        }
    }
}

/// A hook's refusal, to be told to the client as an `error` frame.
pub(super) struct Refusal {
    code: ErrorCode,
    message: String,
    /// The backend's own code.
    app_code: Option<String>,
}

impl Refusal {
    fn backend(code: ErrorCode, app_code: String, message: String) -> Self {
        Self {
            code,
            message: if message.is_empty() {
                "refused by the application".to_owned()
            } else {
                message
            },
            app_code: Some(app_code).filter(|c| proxy::valid_code(c)),
        }
    }

    fn unavailable(message: &str) -> Self {
        Self {
            code: ErrorCode::Unavailable,
            message: message.to_owned(),
            app_code: None,
        }
    }

    fn to_json_with(&self, id: Option<&Id>, channel: &str) -> String {
        ServerMsg::Error {
            code: self.code,
            message: &self.message,
            id,
            channel: Some(channel),
            retry_after_ms: None,
            app_code: self.app_code.as_deref(),
        }
        .to_json()
    }
}

/// How many messages a history request gets: what it asked for (100 when it did not
/// say), at most what a channel keeps.
pub(crate) fn history_limit(asked: Option<u64>, kept: u64) -> u64 {
    asked.unwrap_or(DEFAULT_HISTORY_LIMIT).min(kept.max(1))
}

/// Messages a history request gets when it does not say.
pub(crate) const DEFAULT_HISTORY_LIMIT: u64 = 100;

#[cfg(test)]
mod history_tests {
    use super::*;

    #[test]
    fn history_limit_defaults_and_caps_at_what_a_channel_keeps() {
        assert_eq!(history_limit(None, 1000), DEFAULT_HISTORY_LIMIT);
        assert_eq!(history_limit(Some(7), 1000), 7);
        assert_eq!(history_limit(Some(5000), 1000), 1000);
        assert_eq!(history_limit(None, 10), 10);
        assert_eq!(history_limit(Some(3), 0), 1);
    }
}
