//! How a connection ended, and what follows: stop, or retry after at least some pause.

use std::time::Duration;

use herald_proto::disconnect::{Disconnect, DisconnectCode, close_code};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use super::{Driver, End, REFUSED_RETRY};
use crate::event::ConnState;

impl End {
    /// The gateway's goodbye in a `disconnect` frame.
    pub(super) fn disconnect(
        code: DisconnectCode,
        reason: String,
        reconnect: bool,
        retry_after_ms: Option<u64>,
    ) -> Self {
        Self::Disconnect {
            code,
            reason,
            reconnect,
            retry_after: retry_after_ms.map(Duration::from_millis),
        }
    }
}

/// What to do after a connection ended.
#[derive(Debug, PartialEq)]
pub(super) enum Step {
    Stop(ConnState),
    Retry {
        state: ConnState,
        /// The gateway asked for at least this pause.
        at_least: Duration,
    },
}

impl Driver {
    /// Decides what follows a connection's end. Every retry goes through the
    /// backoff and on to the next gateway; a fetching token source is asked for a
    /// fresh token at every attempt.
    pub(super) fn next_step(&self, end: End, auth_retried: &mut bool) -> Step {
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
}

/// How a close frame ends a connection.
pub(super) fn closed(frame: Option<CloseFrame>) -> End {
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
