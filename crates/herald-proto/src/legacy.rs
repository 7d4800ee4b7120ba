//! The payloads of the original design's Redis channels (`system_notifications`,
//! `user_messages`, unprefixed), which the broadcaster bridges into Herald frames.

use serde::Deserialize;
use serde_json::value::RawValue;

/// A message on the legacy Redis channel `system_notifications`.
#[derive(Debug, Clone, Deserialize)]
pub struct LegacySystemNotification {
    pub content: Box<RawValue>,
    #[serde(default)]
    pub timestamp: Option<serde_json::Value>,
}

/// A message on the legacy Redis channel `user_messages`. Without `target_channel` it
/// goes to the user's personal channel, `user:<user_id>`.
#[derive(Debug, Clone, Deserialize)]
pub struct LegacyUserMessage {
    pub user_id: String,
    #[serde(default)]
    pub target_channel: Option<String>,
    pub content: Box<RawValue>,
    #[serde(default)]
    pub timestamp: Option<serde_json::Value>,
}
