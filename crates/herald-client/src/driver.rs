//! The one task behind a [`Client`](crate::Client): it owns the socket, every
//! subscription's [`Tracker`], the publishes waiting for acknowledgement and the
//! token, and runs the connection lifecycle.
//!
//! The lifecycle is a loop: wait out the backoff, get a token, open a WebSocket and
//! authenticate, serve the connection until it ends, then decide from how it ended
//! (see [`Driver::next_step`]) whether to stop or which delay comes before the next
//! gateway. In every phase the driver keeps answering the application's commands, so
//! a publish made while disconnected is queued (or refused at once when the queue is
//! full), and timeouts fire on time.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{SinkExt as _, StreamExt as _};
use herald_proto::ErrorCode;
use herald_proto::disconnect::{Disconnect, DisconnectCode, close_code};
use herald_proto::frames::{ClientFrame, Position, ServerFrame};
use serde_json::value::RawValue;
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use crate::backoff;
use crate::event::{
    Ack, ClientError, ConnState, Event, Gap, Message, PublishError, SubscribeError, Subscribed,
};
use crate::options::Options;
use crate::queue::EventQueue;
use crate::token::{Token, TokenSource};
use crate::tracker::{Tracker, Verdict};

/// How long one frame may take to write before the connection counts as dead.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Slack on top of two heartbeat intervals before a silent connection counts as
/// dead: the gateway's own limit is two intervals, so this client never gives up
/// first on a merely slow heartbeat.
const DEAD_SOCKET_SLACK: Duration = Duration::from_secs(1);
/// Attempts at a fresh token on the live connection (the source failed, or the
/// gateway refused the token) before waiting for the gateway to end the connection
/// (`token_expired`) and reconnecting with a fresh token then. They are spaced 1, 2,
/// 4, 8 s apart.
const REFRESH_ATTEMPTS: u32 = 5;
const REFRESH_RETRY: Duration = Duration::from_secs(1);
/// The least pause before retrying a gateway that refused the upgrade as full or
/// rate limited without saying how long.
const REFUSED_RETRY: Duration = Duration::from_secs(1);
/// How long a closing client waits for its close frame to be written.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// The heartbeat interval assumed when `auth_success` does not give one (the
/// gateway's default).
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(25);
/// A wake-up far enough away to mean "no timer".
const IDLE: Duration = Duration::from_secs(24 * 3600);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the application asks of the driver.
pub(crate) enum Command {
    Subscribe {
        sub: u64,
        channel: String,
        since: Option<Position>,
        queue: Arc<EventQueue>,
    },
    Unsubscribe {
        sub: u64,
        done: Option<oneshot::Sender<()>>,
    },
    Publish {
        channel: String,
        message: Box<RawValue>,
        deadline: Instant,
        reply: oneshot::Sender<Result<Ack, PublishError>>,
        /// Held until the publish is settled: bounds publishes in the command channel
        /// and inside the driver together.
        permit: OwnedSemaphorePermit,
    },
}

/// How a connection (or an attempt at one) ended.
#[derive(Debug)]
enum End {
    /// [`Client::close`](crate::Client::close), or the last handle dropped.
    Cancelled,
    /// The upgrade was refused with this HTTP status.
    Refused {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// The gateway closed the connection without a `disconnect` frame first.
    Closed { code: u16, reason: String },
    /// The gateway said goodbye with a `disconnect` frame.
    Disconnect {
        code: DisconnectCode,
        reason: String,
        reconnect: bool,
        retry_after: Option<Duration>,
    },
    /// The token source failed.
    NoToken(String),
    /// Anything else: refused connections, resets, timeouts, a silent socket.
    Lost(String),
}

/// What to do after a connection ended.
#[derive(Debug, PartialEq)]
enum Step {
    Stop(ConnState),
    Retry {
        state: ConnState,
        /// The gateway asked for at least this pause.
        at_least: Duration,
    },
}

/// What a request on the current connection was.
#[derive(Debug)]
enum Request {
    Subscribe(u64),
    Unsubscribe,
    /// A fresh token sent on the live connection.
    Auth(Token),
}

/// One subscription.
struct Sub {
    channel: String,
    queue: Arc<EventQueue>,
    tracker: Tracker<Message>,
    /// The `subscribe` in flight on this connection.
    request: Option<u64>,
    /// When to retry a subscribe refused for a temporary reason.
    retry_at: Option<Instant>,
    /// Temporary refusals in a row, for the retry's backoff.
    retries: u32,
}

/// One publish, from the call until it is settled.
struct Publish {
    /// The `broadcast` frame, until it is sent.
    frame: Option<String>,
    deadline: Instant,
    reply: oneshot::Sender<Result<Ack, PublishError>>,
    _permit: OwnedSemaphorePermit,
}

/// The live connection.
struct Conn {
    ws: Ws,
    requests: HashMap<u64, Request>,
    /// The socket counts as dead when nothing arrived by then.
    silent_after: Duration,
    last_frame: Instant,
    /// The token this connection was authenticated with (last).
    token: String,
    /// When to fetch a fresh token for this connection.
    refresh_at: Option<Instant>,
    refresh_failures: u32,
    /// A fresh token being fetched.
    fetching: Option<BoxFuture<'static, Result<Token, String>>>,
}

/// What `auth_success` told about a new connection.
struct Hello {
    node: String,
    conn_id: String,
    heartbeat: Duration,
}

/// The driver task's state.
pub(crate) struct Driver {
    urls: Vec<String>,
    source: TokenSource,
    opts: Options,
    commands: mpsc::UnboundedReceiver<Command>,
    states: watch::Sender<ConnState>,
    errors: broadcast::Sender<ClientError>,
    cancel: CancellationToken,
    /// Woken by a subscription queue that has room again after a stall.
    room: Arc<Notify>,
    /// Ordered by creation, so subscriptions are renewed in the order they were made.
    subs: BTreeMap<u64, Sub>,
    by_channel: HashMap<String, Vec<u64>>,
    publishes: HashMap<u64, Publish>,
    /// Publishes waiting for a connection, in call order.
    unsent: VecDeque<u64>,
    /// Publish deadlines, earliest first.
    deadlines: BTreeSet<(Instant, u64)>,
    next_id: u64,
}

/// Wires for [`Driver::new`].
pub(crate) struct Wiring {
    pub(crate) commands: mpsc::UnboundedReceiver<Command>,
    pub(crate) states: watch::Sender<ConnState>,
    pub(crate) errors: broadcast::Sender<ClientError>,
    pub(crate) cancel: CancellationToken,
    pub(crate) room: Arc<Notify>,
}

impl Driver {
    pub(crate) fn new(urls: Vec<String>, source: TokenSource, opts: Options, w: Wiring) -> Self {
        Self {
            urls,
            source,
            opts,
            commands: w.commands,
            states: w.states,
            errors: w.errors,
            cancel: w.cancel,
            room: w.room,
            subs: BTreeMap::new(),
            by_channel: HashMap::new(),
            publishes: HashMap::new(),
            unsent: VecDeque::new(),
            deadlines: BTreeSet::new(),
            next_id: 0,
        }
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn set_state(&self, state: ConnState) {
        // A fresh token's `auth_success` repeats the state: not a change to report.
        self.states.send_if_modified(|s| {
            if *s == state {
                return false;
            }
            *s = state;
            true
        });
    }

    fn report(&self, error: ClientError) {
        tracing::debug!(%error, "herald client error");
        // Nobody listening is fine: errors are also logged.
        let _ = self.errors.send(error);
    }

    // === lifecycle ===

    pub(crate) async fn run(mut self) {
        if self.urls.is_empty() {
            return self.finish(ConnState::Disconnected {
                code: None,
                reason: "no gateway URL given".to_owned(),
                reconnect: false,
            });
        }
        let mut attempt: u32 = 0;
        let mut url_index = 0usize;
        // Whether the one retry after `authentication failed` was used (reset by a
        // successful authentication).
        let mut auth_retried = false;
        let mut delay = Duration::ZERO;
        loop {
            if !delay.is_zero() && self.serve_while(tokio::time::sleep(delay)).await.is_none() {
                break;
            }
            let url = self.urls[url_index % self.urls.len()].clone();
            self.set_state(ConnState::Connecting);
            let end = match self.open(&url).await {
                Ok((ws, hello, token)) => {
                    auth_retried = false;
                    let started = Instant::now();
                    let end = self.session(ws, hello, token).await;
                    if started.elapsed() >= self.opts.stable_after {
                        attempt = 0;
                    }
                    end
                }
                Err(end) => end,
            };
            if matches!(end, End::Cancelled) {
                break;
            }
            tracing::info!(url = %url, ending = ?end, "herald connection ended");
            match self.next_step(end, &mut auth_retried) {
                Step::Stop(state) => return self.finish(state),
                Step::Retry { state, at_least } => {
                    self.set_state(state);
                    let backoff = backoff::jittered(
                        attempt,
                        self.opts.min_reconnect_delay,
                        self.opts.max_reconnect_delay,
                    );
                    attempt = attempt.saturating_add(1);
                    delay = backoff.max(at_least);
                    url_index = url_index.wrapping_add(1);
                }
            }
        }
        self.finish(ConnState::Disconnected {
            code: None,
            reason: "closed by the client".to_owned(),
            reconnect: false,
        });
    }

    /// Decides what follows a connection's end. Every retry goes through the
    /// backoff and on to the next gateway; a fetching token source is asked for a
    /// fresh token at every attempt.
    fn next_step(&self, end: End, auth_retried: &mut bool) -> Step {
        let can_fetch = self.source.can_fetch();
        let retry =
            |code: Option<DisconnectCode>, reason: String, at_least: Duration| Step::Retry {
                state: ConnState::Disconnected {
                    code,
                    reason,
                    reconnect: true,
                },
                at_least,
            };
        let stop = |code: Option<DisconnectCode>, reason: String| {
            Step::Stop(ConnState::Disconnected {
                code,
                reason,
                reconnect: false,
            })
        };
        match end {
            End::Cancelled => stop(None, "closed by the client".to_owned()),
            End::Refused {
                status,
                retry_after,
            } => {
                let reason = format!("handshake refused with HTTP {status}");
                let code = DisconnectCode::for_refusal(status);
                match status {
                    429 | 503 => retry(code, reason, retry_after.unwrap_or(REFUSED_RETRY)),
                    _ if code.is_some() => stop(code, reason),
                    _ => retry(None, reason, Duration::ZERO),
                }
            }
            End::Disconnect {
                code,
                reason,
                reconnect: true,
                retry_after,
            } => retry(Some(code), reason, retry_after.unwrap_or_default()),
            // The one refusal a fresh token cures.
            End::Disconnect {
                code: DisconnectCode::TokenExpired,
                reason,
                reconnect: false,
                ..
            } if can_fetch => retry(Some(DisconnectCode::TokenExpired), reason, Duration::ZERO),
            End::Disconnect { code, reason, .. } => stop(Some(code), reason),
            // A close whose `disconnect` frame was lost (or never sent): the close code
            // alone decides.
            End::Closed { code, reason } => match Disconnect::from_close(code, &reason) {
                Some(d @ Disconnect::Refused(_)) if d.reconnect() => {
                    retry(d.code(), reason, REFUSED_RETRY)
                }
                Some(Disconnect::AuthFailed) => {
                    // A refused first-frame token: one more try, with a fresh one.
                    let again = can_fetch && !*auth_retried;
                    *auth_retried = true;
                    let code = Some(DisconnectCode::AuthenticationFailed);
                    if again {
                        retry(code, reason, Duration::ZERO)
                    } else {
                        stop(code, reason)
                    }
                }
                Some(Disconnect::TokenExpired) if can_fetch => {
                    retry(Some(DisconnectCode::TokenExpired), reason, Duration::ZERO)
                }
                Some(d) if d.reconnect() => retry(d.code(), reason, Duration::ZERO),
                Some(d) => stop(d.code(), reason),
                // Another policy refusal than ours (a proxy's, say): retrying will not help.
                None if code == close_code::POLICY_VIOLATION => stop(None, reason),
                None => retry(
                    None,
                    format!("closed by the gateway: {code} {reason}"),
                    Duration::ZERO,
                ),
            },
            End::NoToken(e) => retry(None, format!("no token: {e}"), Duration::ZERO),
            End::Lost(reason) => retry(None, reason, Duration::ZERO),
        }
    }

    /// Ends the client: settles every publish, ends every subscription stream.
    fn finish(mut self, state: ConnState) {
        self.commands.close();
        while let Ok(cmd) = self.commands.try_recv() {
            match cmd {
                Command::Subscribe { queue, .. } => queue.close(),
                Command::Unsubscribe { done, .. } => {
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                }
                Command::Publish { reply, .. } => {
                    let _ = reply.send(Err(PublishError::Closed));
                }
            }
        }
        for (_, p) in self.publishes.drain() {
            let _ = p.reply.send(Err(PublishError::Closed));
        }
        for sub in self.subs.values() {
            sub.queue.close();
        }
        tracing::debug!(state = ?state, "herald client stopped");
        self.set_state(state);
    }

    /// Runs `fut` while serving commands; `None` if the client was closed meanwhile.
    async fn serve_while<F: Future>(&mut self, fut: F) -> Option<F::Output> {
        tokio::pin!(fut);
        loop {
            let wake = self
                .deadlines
                .first()
                .map_or_else(|| Instant::now() + IDLE, |d| d.0);
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => return None,
                Some(cmd) = self.commands.recv() => {
                    // Nothing is sent while disconnected, so nothing can fail here.
                    let _ = self.on_command(cmd, None).await;
                }
                () = self.room.notified() => {
                    let _ = self.on_room(None).await;
                }
                () = tokio::time::sleep_until(wake) => self.expire_publishes(),
                out = &mut fut => return Some(out),
            }
        }
    }

    /// Gets a token, opens a WebSocket to `url` and authenticates.
    async fn open(&mut self, url: &str) -> Result<(Ws, Hello, Token), End> {
        let fetch = self.source.get();
        let token = match self.serve_while(fetch).await {
            None => return Err(End::Cancelled),
            Some(Ok(t)) => t,
            Some(Err(e)) => {
                self.report(ClientError::TokenSource(e.clone()));
                return Err(End::NoToken(e));
            }
        };
        let id = self.next_id();
        let auth = ClientFrame::Auth {
            token: token.value.clone(),
            channels: Vec::new(),
            batch: self.opts.batch,
            id: Some(id),
        };
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

    /// Serves one authenticated connection until it ends.
    async fn session(&mut self, ws: Ws, hello: Hello, token: Token) -> End {
        tracing::info!(node = %hello.node, conn_id = %hello.conn_id, "herald connected");
        let mut conn = Conn {
            ws,
            requests: HashMap::new(),
            silent_after: hello.heartbeat.saturating_mul(2) + DEAD_SOCKET_SLACK,
            last_frame: Instant::now(),
            token: token.value,
            refresh_at: token.refresh_at,
            refresh_failures: 0,
            fetching: None,
        };
        self.set_state(ConnState::Connected {
            node: hello.node,
            conn_id: hello.conn_id,
        });
        let end = match self.on_connected(&mut conn).await {
            Err(end) => end,
            Ok(()) => self.serve(&mut conn).await,
        };
        self.on_connection_lost(&mut conn);
        if matches!(end, End::Cancelled) {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.ws.close(None)).await;
        }
        end
    }

    async fn serve(&mut self, conn: &mut Conn) -> End {
        let timer = tokio::time::sleep_until(Instant::now() + IDLE);
        tokio::pin!(timer);
        loop {
            let wake = self.next_wakeup(conn);
            if timer.deadline() != wake {
                timer.as_mut().reset(wake);
            }
            let step = tokio::select! {
                biased;
                () = self.cancel.cancelled() => Err(End::Cancelled),
                Some(cmd) = self.commands.recv() => self.on_command(cmd, Some(&mut *conn)).await,
                msg = conn.ws.next() => self.on_socket(msg, conn).await,
                () = self.room.notified() => self.on_room(Some(&mut *conn)).await,
                token = pending_or(&mut conn.fetching) => {
                    conn.fetching = None;
                    self.on_fresh_token(token, conn).await
                }
                () = &mut timer => self.on_tick(conn).await,
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// Renews every subscription, then sends the publishes that waited.
    async fn on_connected(&mut self, conn: &mut Conn) -> Result<(), End> {
        let ids: Vec<u64> = self.subs.keys().copied().collect();
        for sub in ids {
            self.send_subscribe(sub, conn).await?;
        }
        while let Some(id) = self.unsent.pop_front() {
            let Some(frame) = self.publishes.get_mut(&id).and_then(|p| p.frame.take()) else {
                continue;
            };
            conn_send_text(conn, frame).await?;
        }
        Ok(())
    }

    /// Settles what the lost connection leaves undecided.
    fn on_connection_lost(&mut self, conn: &mut Conn) {
        let sent: Vec<u64> = self
            .publishes
            .iter()
            .filter(|(_, p)| p.frame.is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in sent {
            if let Some(p) = self.publishes.remove(&id) {
                self.deadlines.remove(&(p.deadline, id));
                let _ = p.reply.send(Err(PublishError::Disconnected));
            }
        }
        for sub in self.subs.values_mut() {
            sub.tracker.reset();
            sub.request = None;
            sub.retry_at = None;
        }
        conn.requests.clear();
    }

    // === timers ===

    fn next_wakeup(&self, conn: &Conn) -> Instant {
        let mut at = conn.last_frame + conn.silent_after;
        if let Some((d, _)) = self.deadlines.first() {
            at = at.min(*d);
        }
        if let Some(r) = conn.refresh_at {
            at = at.min(r);
        }
        for sub in self.subs.values() {
            if let Some(r) = sub.retry_at {
                at = at.min(r);
            }
        }
        at
    }

    async fn on_tick(&mut self, conn: &mut Conn) -> Result<(), End> {
        let now = Instant::now();
        self.expire_publishes();
        if now >= conn.last_frame + conn.silent_after {
            return Err(End::Lost(format!(
                "nothing from the gateway for {:?}",
                conn.silent_after
            )));
        }
        if conn.refresh_at.is_some_and(|at| at <= now) && conn.fetching.is_none() {
            conn.refresh_at = None;
            tracing::debug!("fetching a fresh token");
            conn.fetching = Some(self.source.get());
        }
        let due: Vec<u64> = self
            .subs
            .iter()
            .filter(|(_, s)| s.retry_at.is_some_and(|at| at <= now))
            .map(|(id, _)| *id)
            .collect();
        for sub in due {
            if let Some(s) = self.subs.get_mut(&sub) {
                s.retry_at = None;
            }
            self.send_subscribe(sub, conn).await?;
        }
        Ok(())
    }

    fn expire_publishes(&mut self) {
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

    // === commands ===

    async fn on_command(&mut self, cmd: Command, conn: Option<&mut Conn>) -> Result<(), End> {
        match cmd {
            Command::Subscribe {
                sub,
                channel,
                since,
                queue,
            } => {
                self.by_channel
                    .entry(channel.clone())
                    .or_default()
                    .push(sub);
                self.subs.insert(
                    sub,
                    Sub {
                        channel,
                        queue,
                        tracker: Tracker::new(since, self.opts.pending_limit),
                        request: None,
                        retry_at: None,
                        retries: 0,
                    },
                );
                if let Some(conn) = conn {
                    self.send_subscribe(sub, conn).await?;
                }
            }
            Command::Unsubscribe { sub, done } => {
                let result = self.unsubscribe(sub, conn).await;
                if let Some(done) = done {
                    let _ = done.send(());
                }
                result?;
            }
            Command::Publish {
                channel,
                message,
                deadline,
                reply,
                permit,
            } => {
                self.publish(channel, message, deadline, reply, permit, conn)
                    .await?
            }
        }
        Ok(())
    }

    async fn unsubscribe(&mut self, sub: u64, conn: Option<&mut Conn>) -> Result<(), End> {
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

    async fn publish(
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

    /// Sends `subscribe` for `sub`, with `since` when it has a position.
    async fn send_subscribe(&mut self, sub: u64, conn: &mut Conn) -> Result<(), End> {
        let id = self.next_id();
        let Some(s) = self.subs.get_mut(&sub) else {
            return Ok(());
        };
        let since = s.tracker.begin_request();
        s.request = Some(id);
        conn.requests.insert(id, Request::Subscribe(sub));
        let frame = ClientFrame::Subscribe {
            channel: s.channel.clone(),
            since,
            id: Some(id),
        };
        conn_send(conn, &frame).await
    }

    /// Some stalled subscription has room again: recover what it dropped.
    async fn on_room(&mut self, mut conn: Option<&mut Conn>) -> Result<(), End> {
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
                    self.send_recovery(sub, since, conn).await?;
                }
                // The next connection renews it from its position anyway.
                None => s.tracker.request_failed(),
            }
        }
        Ok(())
    }

    async fn send_recovery(
        &mut self,
        sub: u64,
        since: Position,
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
            since: Some(since),
            id: Some(id),
        };
        conn_send(conn, &frame).await
    }

    // === the socket ===

    async fn on_socket(
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

    async fn on_frame(&mut self, frame: ServerFrame, conn: &mut Conn) -> Result<(), End> {
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
            } => {
                if let Some(Request::Subscribe(sub)) = id.and_then(|id| conn.requests.remove(&id)) {
                    return self
                        .on_subscribed(sub, channel, offset, epoch, recovered, conn)
                        .await;
                }
            }
            ServerFrame::Unsubscribed { id, .. } => {
                if let Some(id) = id {
                    conn.requests.remove(&id);
                }
            }
            ServerFrame::Ack {
                id,
                channel,
                offset,
                epoch,
            } => {
                if let Some(p) = self.publishes.remove(&id) {
                    self.deadlines.remove(&(p.deadline, id));
                    let _ = p.reply.send(Ok(Ack {
                        channel,
                        offset,
                        epoch,
                    }));
                }
            }
            ServerFrame::Error {
                code,
                message,
                id,
                channel,
                retry_after_ms,
            } => {
                return self
                    .on_error(code, message, id, channel, retry_after_ms, conn)
                    .await;
            }
            ServerFrame::BatchMessages { messages, .. } => {
                for m in messages {
                    if let Some(m) = Message::from_frame(m) {
                        self.on_delivery(m, conn).await?;
                    }
                }
            }
            ServerFrame::Disconnect {
                code,
                reason,
                reconnect,
                retry_after_ms,
            } => {
                return Err(End::Disconnect {
                    code,
                    reason,
                    reconnect,
                    retry_after: retry_after_ms.map(Duration::from_millis),
                });
            }
            ServerFrame::Heartbeat { .. } | ServerFrame::Pong { .. } | ServerFrame::Unknown => {}
            delivery => {
                if let Some(m) = Message::from_frame(delivery) {
                    self.on_delivery(m, conn).await?;
                }
            }
        }
        Ok(())
    }

    async fn on_delivery(&mut self, message: Message, conn: &mut Conn) -> Result<(), End> {
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
            self.send_recovery(sub, since, conn).await?;
        }
        Ok(())
    }

    async fn on_subscribed(
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
            self.send_recovery(sub, since, conn).await?;
        }
        Ok(())
    }

    async fn on_error(
        &mut self,
        code: ErrorCode,
        message: String,
        id: Option<u64>,
        channel: Option<String>,
        retry_after_ms: Option<u64>,
        conn: &mut Conn,
    ) -> Result<(), End> {
        if let Some(id) = id {
            if let Some(p) = self.publishes.remove(&id) {
                self.deadlines.remove(&(p.deadline, id));
                let _ = p.reply.send(Err(PublishError::Refused { code, message }));
                return Ok(());
            }
            match conn.requests.remove(&id) {
                Some(Request::Subscribe(sub)) => {
                    self.subscribe_refused(sub, code, message, channel, retry_after_ms);
                    return Ok(());
                }
                Some(Request::Auth(_)) => {
                    self.report(ClientError::TokenRefused(message));
                    retry_refresh(conn);
                    return Ok(());
                }
                Some(Request::Unsubscribe) => return Ok(()),
                None => {}
            }
        }
        self.report(ClientError::Server { code, message });
        Ok(())
    }

    /// A `subscribe` was refused: retried after a backoff when the refusal is
    /// temporary, otherwise the subscription ends with an [`Event::Error`].
    fn subscribe_refused(
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
    fn drop_sub(&mut self, sub: u64) -> Option<(String, bool)> {
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

    async fn on_fresh_token(
        &mut self,
        token: Result<Token, String>,
        conn: &mut Conn,
    ) -> Result<(), End> {
        match token {
            // The same token again gains nothing: the gateway ends the connection when
            // it expires, and the reconnect asks for a token again.
            Ok(token) if token.value == conn.token => Ok(()),
            Ok(token) => {
                let id = self.next_id();
                let frame = ClientFrame::Auth {
                    token: token.value.clone(),
                    channels: Vec::new(),
                    batch: self.opts.batch,
                    id: Some(id),
                };
                conn.requests.insert(id, Request::Auth(token));
                conn_send(conn, &frame).await
            }
            Err(e) => {
                self.report(ClientError::TokenSource(e));
                retry_refresh(conn);
                Ok(())
            }
        }
    }
}

/// Schedules the next attempt at a fresh token after a failed one, if any is left.
fn retry_refresh(conn: &mut Conn) {
    conn.refresh_failures = conn.refresh_failures.saturating_add(1);
    if conn.refresh_failures >= REFRESH_ATTEMPTS {
        tracing::warn!(
            "no fresh token after {REFRESH_ATTEMPTS} attempts; the connection ends when the token expires"
        );
        return;
    }
    let wait = REFRESH_RETRY.saturating_mul(1 << (conn.refresh_failures - 1));
    conn.refresh_at = Some(Instant::now() + wait);
}

/// Awaits the future in `slot`, or forever when there is none.
async fn pending_or<F: Future + Unpin>(slot: &mut Option<F>) -> F::Output {
    match slot {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

async fn conn_send(conn: &mut Conn, frame: &ClientFrame) -> Result<(), End> {
    conn_send_text(conn, frame.to_json()).await
}

async fn conn_send_text(conn: &mut Conn, text: String) -> Result<(), End> {
    match tokio::time::timeout(WRITE_TIMEOUT, conn.ws.send(WsMessage::text(text))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(End::Lost(format!("cannot write: {e}"))),
        Err(_) => Err(End::Lost(format!("a write took over {WRITE_TIMEOUT:?}"))),
    }
}

/// Opens the WebSocket, sends `auth` and waits for `auth_success`.
async fn handshake(url: String, auth: ClientFrame) -> Result<(Ws, Hello), End> {
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
                    return Err(End::Disconnect {
                        code,
                        reason,
                        reconnect,
                        retry_after: retry_after_ms.map(Duration::from_millis),
                    });
                }
                _ => {}
            },
            WsMessage::Close(f) => return Err(closed(f)),
            _ => {}
        }
    }
}

/// How a close frame ends a connection.
fn closed(frame: Option<CloseFrame>) -> End {
    match frame {
        Some(f) => End::Closed {
            code: u16::from(f.code),
            reason: f.reason.to_string(),
        },
        None => End::Closed {
            code: 1005,
            reason: String::new(),
        },
    }
}
