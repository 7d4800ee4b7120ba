//! The commands on the control channel (`herald:control`, Pub/Sub, JSON): every
//! gateway receives each one and the gateway holding the target acts on it.

use serde::{Deserialize, Serialize};

/// Commands sent to every gateway over the control channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// Close one connection, wherever it is.
    DisconnectConn { conn_id: String },
    /// Close every connection of a user.
    DisconnectUser { user_id: String },
    /// A token id was revoked: close connections authenticated with it.
    Revoke { jti: String },
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
