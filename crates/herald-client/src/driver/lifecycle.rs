//! The connection lifecycle: the reconnect loop, one authenticated session, the
//! commands served in every phase, and what a lost connection leaves to settle.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::time::Instant;

use super::ending::Step;
use super::server::Orphans;
use super::socket::conn_send_text;
use super::timers::pending_or;
use super::{
    CLOSE_TIMEOUT, Command, Conn, DEAD_SOCKET_SLACK, Driver, End, Failure, Hello, IDLE, Sub, Ws,
};
use crate::arrivals::Arrivals;
use crate::backoff;
use crate::event::ConnState;
use crate::token::Token;
use crate::tracker::Tracker;

impl Driver {
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
            tracing::Span::current().record("url", url.as_str());
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

    /// Ends the client: settles every request, ends every subscription stream.
    pub(super) fn finish(mut self, state: ConnState) {
        self.commands.close();
        while let Ok(cmd) = self.commands.try_recv() {
            match cmd {
                Command::Subscribe { queue, .. } => queue.close(),
                Command::Unsubscribe { done, .. } => {
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                }
                Command::Request { reply, .. } => reply.fail(Failure::Closed),
            }
        }
        for (_, p) in self.pending.drain() {
            p.reply.fail(Failure::Closed);
        }
        for sub in self.subs.values() {
            sub.queue.close();
        }
        self.server_events.close();
        tracing::debug!(state = ?state, "herald client stopped");
        self.set_state(state);
    }

    /// Runs `fut` while serving commands; `None` if the client was closed meanwhile.
    pub(super) async fn serve_while<F: Future>(&mut self, fut: F) -> Option<F::Output> {
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
                () = tokio::time::sleep_until(wake) => self.expire_requests(),
                out = &mut fut => return Some(out),
            }
        }
    }

    /// Serves one authenticated connection until it ends.
    pub(super) async fn session(&mut self, ws: Ws, hello: Hello, token: Token) -> End {
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
            orphans: Orphans::default(),
            leaving: HashMap::new(),
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

    pub(super) async fn serve(&mut self, conn: &mut Conn) -> End {
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

    pub(super) async fn on_command(
        &mut self,
        cmd: Command,
        conn: Option<&mut Conn>,
    ) -> Result<(), End> {
        match cmd {
            Command::Subscribe {
                sub,
                channel,
                since,
                join_leave,
                queue,
            } => {
                let taken = self.take_over(&channel);
                let since = since.or(taken);
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
                        join_leave,
                        arrivals: Arrivals::new(self.opts.subscription_buffer),
                        request: None,
                        lent_join_leave: false,
                        retry_at: None,
                        retries: 0,
                    },
                );
                if let Some(conn) = conn {
                    if let Some(s) = self.subs.get(&sub) {
                        conn.orphans.forget(&s.channel);
                    }
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
            Command::Request {
                ask,
                deadline,
                reply,
                permit,
            } => self.request(ask, deadline, reply, permit, conn).await?,
        }
        Ok(())
    }

    /// Renews every subscription, then sends the requests that waited. Server-side
    /// subscriptions ended with the last connection: they wait for the server to
    /// subscribe this one again.
    pub(super) async fn on_connected(&mut self, conn: &mut Conn) -> Result<(), End> {
        let ids: Vec<u64> = self.subs.keys().copied().collect();
        for sub in ids {
            self.send_subscribe(sub, conn).await?;
        }
        while let Some(id) = self.unsent.pop_front() {
            let Some(frame) = self.pending.get_mut(&id).and_then(|p| p.frame.take()) else {
                continue;
            };
            conn_send_text(conn, frame).await?;
        }
        Ok(())
    }

    /// Settles what the lost connection leaves undecided.
    pub(super) fn on_connection_lost(&mut self, conn: &mut Conn) {
        let sent: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.frame.is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in sent {
            self.fail(id, Failure::Disconnected);
        }
        for sub in self.subs.values_mut() {
            sub.tracker.reset();
            sub.arrivals.clear();
            sub.request = None;
            sub.retry_at = None;
        }
        // Each keeps its position, in case the server subscribes the next connection
        // to the channel again.
        for sub in self.server_subs.values_mut() {
            sub.tracker.reset();
            sub.request = None;
            sub.retry_at = None;
        }
        conn.requests.clear();
    }
}
