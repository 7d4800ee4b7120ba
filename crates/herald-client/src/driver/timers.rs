//! The connection's timers: the dead-socket check, request deadlines, subscribe
//! retries (server-side renewals too) and the token refresh on the live connection.

use std::future::Future;

use tokio::time::Instant;

use super::socket::conn_send;
use super::{Conn, Driver, End, REFRESH_ATTEMPTS, REFRESH_RETRY, Request};
use crate::event::ClientError;
use crate::token::Token;

impl Driver {
    pub(super) fn next_wakeup(&self, conn: &Conn) -> Instant {
        let mut at = conn.last_frame + conn.silent_after;
        if let Some((d, _)) = self.deadlines.first() {
            at = at.min(*d);
        }
        if let Some(r) = conn.refresh_at {
            at = at.min(r);
        }
        let retries = self.subs.values().map(|s| s.retry_at);
        let server_retries = self.server_subs.values().map(|s| s.retry_at);
        for r in retries.chain(server_retries).flatten() {
            at = at.min(r);
        }
        at
    }

    pub(super) async fn on_tick(&mut self, conn: &mut Conn) -> Result<(), End> {
        let now = Instant::now();
        self.expire_requests();
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
        let due: Vec<String> = self
            .server_subs
            .iter()
            .filter(|(_, s)| s.retry_at.is_some_and(|at| at <= now))
            .map(|(channel, _)| channel.clone())
            .collect();
        for channel in due {
            if let Some(s) = self.server_subs.get_mut(&channel) {
                s.retry_at = None;
            }
            self.renew_server(channel, conn).await?;
        }
        Ok(())
    }

    pub(super) async fn on_fresh_token(
        &mut self,
        token: Result<Token, String>,
        conn: &mut Conn,
    ) -> Result<(), End> {
        match token {
            // The same token again gains nothing: the gateway ends the connection when
            // it expires, and the reconnect asks for a token again.
            Ok(token) if token.value == conn.token => Ok(()),
            Ok(token) => {
                let (id, frame) = self.auth_frame(&token);
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
pub(super) fn retry_refresh(conn: &mut Conn) {
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
pub(super) async fn pending_or<F: Future + Unpin>(slot: &mut Option<F>) -> F::Output {
    match slot {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}
