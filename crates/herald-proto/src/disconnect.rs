//! Why and how the gateway ends a connection (docs/protocol.md §1 and §4).
//!
//! [`Disconnect`] is the one place that knows, for each reason, the WebSocket close
//! code, the `disconnect` frame's code (if one is sent), the reason text and whether a
//! client should reconnect. The gateway ends connections only through it, and clients
//! read close codes back through [`Disconnect::from_close`], so both ends share one
//! table.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The `disconnect` frame's `code`. Whether to reconnect is said by the frame's
/// `reconnect`, not by the code.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DisconnectCode {
    /// The gateway is stopping (close 1001).
    Shutdown,
    /// The connection's outbound queue overflowed (close 1013).
    SlowConsumer,
    /// The token's `exp` (plus leeway) passed (close 1008).
    TokenExpired,
    /// The token's `jti` was revoked (close 1008).
    TokenRevoked,
    /// An operator disconnected the connection or its user (close 1008).
    AdminDisconnect,
    /// Too many frames refused for the rate limit (close 1008), or, at the handshake,
    /// too many connections from the address (4429).
    RateLimited,
    /// Too many oversized frames (close 1009).
    TooLarge,
    /// The handshake's `Origin` is not allowed (4403, HTTP 403).
    Forbidden,
    /// The handshake's token was refused (4401, HTTP 401).
    AuthenticationFailed,
    /// The gateway is full (4503, HTTP 503).
    OverCapacity,
    /// The application's backend disconnected the user (broadcaster
    /// `/v1/disconnect` without a `code` of its own).
    ServerDisconnect,
    /// A code this version does not know (or one the application chose).
    Other(String),
}

impl DisconnectCode {
    /// Every known code, in the order of docs/protocol.md.
    pub const KNOWN: [Self; 11] = [
        Self::Shutdown,
        Self::SlowConsumer,
        Self::TokenExpired,
        Self::TokenRevoked,
        Self::AdminDisconnect,
        Self::RateLimited,
        Self::TooLarge,
        Self::Forbidden,
        Self::AuthenticationFailed,
        Self::OverCapacity,
        Self::ServerDisconnect,
    ];

    /// The code as spelled on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Shutdown => "shutdown",
            Self::SlowConsumer => "slow_consumer",
            Self::TokenExpired => "token_expired",
            Self::TokenRevoked => "token_revoked",
            Self::AdminDisconnect => "admin_disconnect",
            Self::RateLimited => "rate_limited",
            Self::TooLarge => "too_large",
            Self::Forbidden => "forbidden",
            Self::AuthenticationFailed => "authentication_failed",
            Self::OverCapacity => "over_capacity",
            Self::ServerDisconnect => "server_disconnect",
            Self::Other(code) => code,
        }
    }

    /// The code of a handshake refused with HTTP `status`, if Herald refuses with it.
    pub fn for_refusal(status: u16) -> Option<Self> {
        match status {
            401 => Some(Self::AuthenticationFailed),
            403 => Some(Self::Forbidden),
            429 => Some(Self::RateLimited),
            503 => Some(Self::OverCapacity),
            _ => None,
        }
    }

    /// The code spelled `code` on the wire; never fails.
    pub fn parse(code: &str) -> Self {
        Self::KNOWN
            .into_iter()
            .find(|c| c.as_str() == code)
            .unwrap_or_else(|| Self::Other(code.to_owned()))
    }
}

impl fmt::Display for DisconnectCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for DisconnectCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for DisconnectCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self::parse(&String::deserialize(d)?))
    }
}

/// WebSocket close codes (RFC 6455 §7.4.1) the gateway uses, plus Herald's refusal
/// range: 4000 + the HTTP status of a refused handshake.
pub mod close_code {
    pub const GOING_AWAY: u16 = 1001;
    pub const UNSUPPORTED_DATA: u16 = 1003;
    pub const POLICY_VIOLATION: u16 = 1008;
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// Added to an HTTP status to make the close code of a refused `herald.v1` handshake.
    pub const REFUSAL_BASE: u16 = 4000;
}

/// A handshake refused after the upgrade (a `herald.v1` client): the HTTP refusal it
/// would have had, as a `disconnect` frame and close code 4000 + `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The HTTP status the refusal stands for (401, 403, 429, 503).
    pub status: u16,
    pub code: DisconnectCode,
    pub reason: String,
    /// For a temporary refusal: when to try again.
    pub retry_after_ms: Option<u64>,
}

/// A disconnect the application's backend asked for (broadcaster `/v1/disconnect`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppDisconnect {
    pub code: DisconnectCode,
    pub reason: String,
    pub reconnect: bool,
}

/// Every way the gateway ends a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disconnect {
    /// The gateway is stopping; reconnect elsewhere.
    Shutdown,
    /// The outbound queue overflowed.
    SlowConsumer,
    /// The token's `exp` (plus leeway) passed.
    TokenExpired,
    /// The token's `jti` was revoked.
    TokenRevoked,
    /// An operator disconnected the connection or its user.
    Admin,
    /// Too many frames refused by the rate limit.
    RateLimited,
    /// Too many oversized frames.
    TooLarge,
    /// Nothing heard from the client for two heartbeat intervals (no frame: the
    /// client is presumed gone).
    HeartbeatTimeout,
    /// No first frame with a token within the authentication timeout.
    AuthTimeout,
    /// The first frame's token was refused.
    AuthFailed,
    /// A binary frame arrived; the protocol is text only.
    BinaryFrame,
    /// A refused `herald.v1` handshake.
    Refused(Refusal),
    /// The application's backend disconnected the user: close 1001 when it may
    /// reconnect, 1008 when not.
    Application(AppDisconnect),
}

impl Disconnect {
    /// Every reason but a handshake refusal (whose code follows the HTTP status).
    pub const FIXED: [Self; 11] = [
        Self::Shutdown,
        Self::SlowConsumer,
        Self::TokenExpired,
        Self::TokenRevoked,
        Self::Admin,
        Self::RateLimited,
        Self::TooLarge,
        Self::HeartbeatTimeout,
        Self::AuthTimeout,
        Self::AuthFailed,
        Self::BinaryFrame,
    ];

    /// The WebSocket close code.
    pub fn close_code(&self) -> u16 {
        use close_code::*;
        match self {
            Self::Shutdown | Self::HeartbeatTimeout => GOING_AWAY,
            Self::SlowConsumer => TRY_AGAIN_LATER,
            Self::TokenExpired
            | Self::TokenRevoked
            | Self::Admin
            | Self::RateLimited
            | Self::AuthTimeout
            | Self::AuthFailed => POLICY_VIOLATION,
            Self::TooLarge => MESSAGE_TOO_BIG,
            Self::BinaryFrame => UNSUPPORTED_DATA,
            Self::Refused(r) => REFUSAL_BASE + r.status,
            Self::Application(a) if a.reconnect => GOING_AWAY,
            Self::Application(_) => POLICY_VIOLATION,
        }
    }

    /// The `disconnect` frame's code; `None` when the connection is closed without
    /// one (the client is gone, or never authenticated).
    pub fn code(&self) -> Option<DisconnectCode> {
        Some(match self {
            Self::Shutdown => DisconnectCode::Shutdown,
            Self::SlowConsumer => DisconnectCode::SlowConsumer,
            Self::TokenExpired => DisconnectCode::TokenExpired,
            Self::TokenRevoked => DisconnectCode::TokenRevoked,
            Self::Admin => DisconnectCode::AdminDisconnect,
            Self::RateLimited => DisconnectCode::RateLimited,
            Self::TooLarge => DisconnectCode::TooLarge,
            Self::Refused(r) => r.code.clone(),
            Self::Application(a) => a.code.clone(),
            Self::HeartbeatTimeout | Self::AuthTimeout | Self::AuthFailed | Self::BinaryFrame => {
                return None;
            }
        })
    }

    /// The human-readable reason, sent in the `disconnect` frame and the close frame.
    pub fn reason(&self) -> &str {
        match self {
            Self::Shutdown => "going away",
            Self::SlowConsumer => "slow_consumer",
            Self::TokenExpired => "token expired",
            Self::TokenRevoked => "token revoked",
            Self::Admin => "disconnected by an operator",
            Self::RateLimited => "rate limit exceeded",
            Self::TooLarge => "frames too large",
            Self::HeartbeatTimeout => "heartbeat timeout",
            Self::AuthTimeout => "authentication timeout",
            Self::AuthFailed => "authentication failed",
            Self::BinaryFrame => "binary frames are not supported",
            Self::Refused(r) => &r.reason,
            Self::Application(a) => &a.reason,
        }
    }

    /// Whether reconnecting (after a backoff) can succeed.
    pub fn reconnect(&self) -> bool {
        match self {
            Self::Shutdown | Self::SlowConsumer | Self::HeartbeatTimeout | Self::AuthTimeout => {
                true
            }
            Self::Refused(r) => matches!(r.status, 429 | 503),
            Self::Application(a) => a.reconnect,
            _ => false,
        }
    }

    /// The label of `herald_disconnects_total` (and of log lines).
    pub fn label(&self) -> &'static str {
        match self {
            Self::Shutdown => "shutdown",
            Self::SlowConsumer => "slow_consumer",
            Self::TokenExpired => "token_expired",
            Self::TokenRevoked => "token_revoked",
            Self::Admin => "admin_disconnect",
            Self::RateLimited => "rate_limited",
            Self::TooLarge => "too_large",
            Self::HeartbeatTimeout => "heartbeat_timeout",
            Self::AuthTimeout => "auth_timeout",
            Self::AuthFailed => "authentication_failed",
            Self::BinaryFrame => "binary_frame",
            Self::Refused(_) => "refused",
            Self::Application(_) => "server_disconnect",
        }
    }

    /// The `disconnect` frame sent before the close, if any.
    pub fn frame(&self) -> Option<String> {
        let code = self.code()?;
        let retry_after_ms = match self {
            Self::Refused(r) => r.retry_after_ms,
            _ => None,
        };
        Some(
            crate::server::ServerMsg::Disconnect {
                code: &code,
                reason: self.reason(),
                reconnect: self.reconnect(),
                retry_after_ms,
            }
            .to_json(),
        )
    }

    /// What a client should make of a close it did not get a `disconnect` frame for:
    /// the reason the gateway closed with `close_code` and `reason`, if it is one of
    /// the gateway's (a refusal's reason is its `disconnect` code).
    pub fn from_close(close_code: u16, reason: &str) -> Option<Self> {
        use close_code::*;
        if (REFUSAL_BASE + 400..REFUSAL_BASE + 600).contains(&close_code) {
            let status = close_code - REFUSAL_BASE;
            return Some(Self::Refused(Refusal {
                status,
                code: DisconnectCode::for_refusal(status)
                    .unwrap_or_else(|| DisconnectCode::parse(reason)),
                reason: reason.to_owned(),
                retry_after_ms: None,
            }));
        }
        Self::FIXED
            .into_iter()
            .find(|d| d.close_code() == close_code && d.reason() == reason)
    }
}

impl fmt::Display for Disconnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.reason(), self.close_code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_round_trips_through_its_close() {
        let all = [
            Disconnect::Shutdown,
            Disconnect::SlowConsumer,
            Disconnect::TokenExpired,
            Disconnect::TokenRevoked,
            Disconnect::Admin,
            Disconnect::RateLimited,
            Disconnect::TooLarge,
            Disconnect::HeartbeatTimeout,
            Disconnect::AuthTimeout,
            Disconnect::AuthFailed,
            Disconnect::BinaryFrame,
        ];
        for d in all {
            assert_eq!(
                Disconnect::from_close(d.close_code(), d.reason()),
                Some(d.clone())
            );
        }
        assert_eq!(Disconnect::from_close(1000, "bye"), None);
    }

    #[test]
    fn refusals_use_the_4000_range() {
        let r = Disconnect::Refused(Refusal {
            status: 429,
            code: DisconnectCode::RateLimited,
            reason: "too many connections from this address".into(),
            retry_after_ms: Some(1000),
        });
        assert_eq!(r.close_code(), 4429);
        assert!(r.reconnect());
        let frame: serde_json::Value = serde_json::from_str(&r.frame().unwrap()).unwrap();
        assert_eq!(
            frame,
            serde_json::json!({"type": "disconnect", "code": "rate_limited",
                "reason": "too many connections from this address", "reconnect": true,
                "retry_after_ms": 1000})
        );
        let back = Disconnect::from_close(4401, "authentication_failed").unwrap();
        assert_eq!(back.code(), Some(DisconnectCode::AuthenticationFailed));
        assert!(!back.reconnect());
    }

    #[test]
    fn application_disconnects_say_what_the_backend_said() {
        let d = Disconnect::Application(AppDisconnect {
            code: DisconnectCode::parse("banned"),
            reason: "you were banned".into(),
            reconnect: false,
        });
        assert_eq!(d.close_code(), 1008);
        let f: serde_json::Value = serde_json::from_str(&d.frame().unwrap()).unwrap();
        assert_eq!(
            f,
            serde_json::json!({"type":"disconnect","code":"banned","reason":"you were banned",
                               "reconnect":false})
        );
        let again = Disconnect::Application(AppDisconnect {
            code: DisconnectCode::ServerDisconnect,
            reason: "moving you".into(),
            reconnect: true,
        });
        assert_eq!(again.close_code(), 1001);
        assert_eq!(again.label(), "server_disconnect");
    }

    #[test]
    fn frames_only_for_clients_that_can_hear_them() {
        assert!(Disconnect::HeartbeatTimeout.frame().is_none());
        assert!(Disconnect::AuthFailed.frame().is_none());
        let f: serde_json::Value =
            serde_json::from_str(&Disconnect::SlowConsumer.frame().unwrap()).unwrap();
        assert_eq!(f["code"], "slow_consumer");
        assert_eq!(f["reconnect"], true);
        assert!(f.get("retry_after_ms").is_none());
    }
}
