//! The commands on the control channel (`herald:control`, Pub/Sub, JSON): every
//! gateway receives each one and the gateway holding the target acts on it.

use serde::{Deserialize, Serialize};

use crate::frames::Position;

/// Commands sent to every gateway over the control channel. Those with `reply_to` are
/// answered by every gateway with a [`ControlReply`] on that Pub/Sub name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// Close one connection, wherever it is.
    DisconnectConn { conn_id: String },
    /// Close every connection of a user.
    DisconnectUser { user_id: String },
    /// A token id was revoked: close connections authenticated with it.
    Revoke { jti: String },
    /// Subscribe every connection of a user to a channel (the application's
    /// backend: broadcaster `/v1/subscribe`), recovering after `since` when given.
    Subscribe {
        user_id: String,
        channel: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<Position>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<String>,
    },
    /// Unsubscribe every connection of a user from a channel.
    Unsubscribe {
        user_id: String,
        channel: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<String>,
    },
    /// Close every connection of a user with the application's code and reason.
    Disconnect {
        user_id: String,
        code: String,
        reason: String,
        reconnect: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<String>,
    },
}

impl Control {
    /// Where the sender waits for answers, if it does.
    pub fn reply_to(&self) -> Option<&str> {
        match self {
            Self::Subscribe { reply_to, .. }
            | Self::Unsubscribe { reply_to, .. }
            | Self::Disconnect { reply_to, .. } => reply_to.as_deref(),
            _ => None,
        }
    }
}

/// A gateway's answer to a command with `reply_to`: how many of its connections the
/// command reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlReply {
    pub node: String,
    pub affected: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn control_shape() {
        let c = Control::DisconnectUser {
            user_id: "u1".into(),
        };
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            json!({"type":"disconnect_user","user_id":"u1"})
        );
    }
}
