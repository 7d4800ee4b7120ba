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
    /// Glob patterns of channels whose presence (members, stats, join/leave) the
    /// user may see; absent means wherever the user may subscribe.
    // Boxed, as `history` and `info`: rare, and every connection keeps its claims.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<Box<Vec<String>>>,
    /// Glob patterns of channels whose history the user may read; absent means
    /// wherever the user may subscribe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Box<Vec<String>>>,
    /// What others see of this connection in presence: a JSON object of at most
    /// [`MAX_INFO_BYTES`] (checked by [`Claims::check_info`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Box<serde_json::Value>>,
}

/// The largest `info` claim, in bytes of compact JSON.
pub const MAX_INFO_BYTES: usize = 1024;

/// Why an `info` claim was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InfoError {
    #[error("the info claim must be a JSON object")]
    NotAnObject,
    #[error("the info claim is larger than {MAX_INFO_BYTES} bytes")]
    TooLarge,
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

    /// Whether the token allows seeing `channel`'s presence: the `presence`
    /// patterns when the claim is there, else whoever may subscribe.
    pub fn may_see_presence(&self, channel: &str) -> bool {
        match &self.presence {
            Some(p) => glob::any_matches(p, channel),
            None => self.may_subscribe(channel),
        }
    }

    /// Whether the token allows reading `channel`'s history: the `history`
    /// patterns when the claim is there, else whoever may subscribe.
    pub fn may_read_history(&self, channel: &str) -> bool {
        match &self.history {
            Some(p) => glob::any_matches(p, channel),
            None => self.may_subscribe(channel),
        }
    }

    /// Checks the `info` claim: absent, or an object of at most [`MAX_INFO_BYTES`].
    pub fn check_info(&self) -> Result<(), InfoError> {
        match &self.info {
            None => Ok(()),
            Some(v) if !v.is_object() => Err(InfoError::NotAnObject),
            Some(v)
                if serde_json::to_string(v).map_or(usize::MAX, |s| s.len()) > MAX_INFO_BYTES =>
            {
                Err(InfoError::TooLarge)
            }
            Some(_) => Ok(()),
        }
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
    fn presence_and_history_default_to_subscribe() {
        let mut c = claims(&["room:*"], &[]);
        assert!(c.may_see_presence("room:1"));
        assert!(c.may_read_history("room:1"));
        assert!(!c.may_see_presence("news"));
        c.presence = Some(Box::new(vec!["room:vip".into()]));
        c.history = Some(Box::default());
        assert!(!c.may_see_presence("room:1"));
        assert!(c.may_see_presence("room:vip"));
        assert!(
            !c.may_read_history("room:1"),
            "an empty claim allows nothing"
        );
    }

    #[test]
    fn info_is_a_small_object() {
        let mut c = claims(&[], &[]);
        assert_eq!(c.check_info(), Ok(()));
        c.info = Some(Box::new(serde_json::json!({"name": "Alice"})));
        assert_eq!(c.check_info(), Ok(()));
        c.info = Some(Box::new(serde_json::json!("Alice")));
        assert_eq!(c.check_info(), Err(InfoError::NotAnObject));
        c.info = Some(Box::new(
            serde_json::json!({"x": "a".repeat(MAX_INFO_BYTES)}),
        ));
        assert_eq!(c.check_info(), Err(InfoError::TooLarge));
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
