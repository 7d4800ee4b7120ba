//! The proxy hooks: what a gateway POSTs to the application's backend to have it
//! decide who a connection is (connect), extend it (refresh), approve a subscribe,
//! or approve and rewrite a publish — and what the backend answers.
//!
//! Every answer is one of `{"result":…}`, `{"error":{"code","message"}}` (a refusal,
//! passed on to the client with the backend's code) or, for connect and refresh,
//! `{"disconnect":{"code","reason","reconnect"}}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Which hook a request is for (metrics label, logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    Connect,
    Refresh,
    Subscribe,
    Publish,
}

impl Hook {
    pub const ALL: [Self; 4] = [Self::Connect, Self::Refresh, Self::Subscribe, Self::Publish];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Refresh => "refresh",
            Self::Subscribe => "subscribe",
            Self::Publish => "publish",
        }
    }
}

/// A connection to be described to the backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectRequest {
    pub conn_id: String,
    pub client_ip: String,
    /// Always `websocket`.
    pub transport: String,
    /// The forwarded handshake headers (`HERALD_PROXY_HEADERS`), by lowercase name.
    pub headers: BTreeMap<String, String>,
    /// The first frame's `data`, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    /// The first frame's token, when every connection goes to the backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// Who the connection is: it acts exactly as a token's claims do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectResult {
    pub user_id: String,
    #[serde(default)]
    pub channels: Vec<String>,
    #[serde(default)]
    pub publish: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Value>,
    /// When the connection expires (Unix seconds); absent or 0: never.
    #[serde(default)]
    pub exp: u64,
}

/// A connection whose time is up, to be extended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefreshRequest {
    pub conn_id: String,
    pub user_id: String,
    pub client_ip: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefreshResult {
    /// The new expiry (Unix seconds), in the future.
    pub exp: u64,
}

/// A subscribe to be approved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscribeRequest {
    pub conn_id: String,
    pub user_id: String,
    pub client_ip: String,
    pub channel: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SubscribeResult {
    /// This connection's `info` in the channel's presence, instead of its claim's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Value>,
    /// Sent to the subscriber in its `subscribed` frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// A client broadcast to be approved (and perhaps rewritten).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishRequest {
    pub conn_id: String,
    pub user_id: String,
    pub client_ip: String,
    pub channel: String,
    /// The message as the client sent it.
    pub data: Value,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PublishResult {
    /// Published instead of the client's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// The backend's refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyError {
    pub code: String,
    #[serde(default)]
    pub message: String,
}

/// The backend ending the connection (connect, refresh).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyDisconnect {
    pub code: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub reconnect: bool,
}

/// Any answer of the backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply<T> {
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub result: Option<T>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ProxyError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disconnect: Option<ProxyDisconnect>,
}

fn none<T>() -> Option<T> {
    None
}

/// Whether a backend's code can travel as a protocol code: 1–64 of `[a-z0-9_]`.
pub fn valid_code(code: &str) -> bool {
    (1..=64).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn answers_read() {
        let ok: Reply<ConnectResult> =
            serde_json::from_value(json!({"result":{"user_id":"alice","channels":["room:*"]}}))
                .unwrap();
        let r = ok.result.unwrap();
        assert_eq!((r.user_id.as_str(), r.exp), ("alice", 0));
        let no: Reply<SubscribeResult> =
            serde_json::from_value(json!({"error":{"code":"banned","message":"no"}})).unwrap();
        assert_eq!(no.error.unwrap().code, "banned");
        let bye: Reply<ConnectResult> = serde_json::from_value(
            json!({"disconnect":{"code":"expired_session","reason":"log in again"}}),
        )
        .unwrap();
        assert!(!bye.disconnect.unwrap().reconnect);
        assert!(valid_code("permission_denied") && !valid_code("Bad") && !valid_code(""));
    }
}
