//! JWT claims as Herald reads them, and the permission rules applied to them.

use serde::{Deserialize, Serialize};

use crate::channel::{SYSTEM_CHANNEL, USER_CHANNEL_PREFIX};
use crate::glob;

/// Default `iss` of tokens issued by auth-svc and required by the gateway.
pub const DEFAULT_ISSUER: &str = "herald-auth";
/// Default `aud` of tokens issued by auth-svc and required by the gateway.
pub const DEFAULT_AUDIENCE: &str = "herald";

/// The claims of an access token.
///
/// `user_id` is the legacy subject claim of the Python design; `sub` wins when both exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Claims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Required by verification; defaulted here only so a token without it is
    /// reported as "missing claim" rather than "malformed".
    #[serde(default)]
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// A string or an array of strings; the JWT library checks it, we only carry it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<serde_json::Value>,
    /// Glob patterns of channels the user may subscribe to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    /// Glob patterns of channels the user may broadcast to; none means no broadcasting.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<String>,
}

impl Claims {
    /// The user this token speaks for: `sub`, or the legacy `user_id`.
    pub fn user(&self) -> Option<&str> {
        self.sub
            .as_deref()
            .or(self.user_id.as_deref())
            .filter(|u| !u.is_empty())
    }

    /// Whether the token allows subscribing to `channel`. The user's own
    /// channel and the system channel are always allowed.
    pub fn may_subscribe(&self, channel: &str) -> bool {
        if channel == SYSTEM_CHANNEL {
            return true;
        }
        if let (Some(user), Some(rest)) = (self.user(), channel.strip_prefix(USER_CHANNEL_PREFIX))
            && rest == user
        {
            return true;
        }
        glob::any_matches(&self.channels, channel)
    }

    /// Whether the token allows broadcasting to `channel`.
    pub fn may_publish(&self, channel: &str) -> bool {
        glob::any_matches(&self.publish, channel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(channels: &[&str], publish: &[&str]) -> Claims {
        Claims {
            sub: Some("u1".into()),
            exp: 1,
            channels: channels.iter().map(|s| (*s).to_owned()).collect(),
            publish: publish.iter().map(|s| (*s).to_owned()).collect(),
            ..Claims::default()
        }
    }

    #[test]
    fn own_and_system_channels_always_allowed() {
        let c = claims(&[], &[]);
        assert!(c.may_subscribe("system"));
        assert!(c.may_subscribe("user:u1"));
        assert!(!c.may_subscribe("user:u2"));
        assert!(!c.may_subscribe("news"));
        assert!(!c.may_publish("user:u1"));
    }

    #[test]
    fn patterns() {
        let c = claims(&["news", "chat:*"], &["chat:*"]);
        assert!(c.may_subscribe("news"));
        assert!(c.may_subscribe("chat:1"));
        assert!(!c.may_subscribe("newsroom"));
        assert!(c.may_publish("chat:1"));
        assert!(!c.may_publish("news"));
    }

    #[test]
    fn legacy_user_id() {
        let c: Claims = serde_json::from_str(r#"{"user_id":"old","exp":5}"#).unwrap();
        assert_eq!(c.user(), Some("old"));
        assert!(c.may_subscribe("user:old"));
        let both: Claims =
            serde_json::from_str(r#"{"sub":"new","user_id":"old","exp":5}"#).unwrap();
        assert_eq!(both.user(), Some("new"));
    }
}
