//! Channel names: 1–255 bytes of `[A-Za-z0-9_\-:.@/#]`.
//!
//! The alphabet has no braces, so a channel name can sit inside a Redis Cluster
//! hash tag (`{news}`) without escaping, and no quote or backslash, so it can be
//! spliced into JSON without escaping.

/// Longest channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 255;

/// The channel every user may subscribe to for system notifications.
pub const SYSTEM_CHANNEL: &str = "system";

/// The personal channel prefix: `user:<sub>` is always subscribable by `<sub>`.
pub const USER_CHANNEL_PREFIX: &str = "user:";

/// Why a channel name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is longer than {MAX_CHANNEL_LEN} bytes")]
    TooLong,
    #[error("channel name has a character outside [A-Za-z0-9_-:.@/#]")]
    BadChar,
}

/// Checks a channel name against the protocol's alphabet and length.
pub fn validate(name: &str) -> Result<(), ChannelError> {
    if name.is_empty() {
        return Err(ChannelError::Empty);
    }
    if name.len() > MAX_CHANNEL_LEN {
        return Err(ChannelError::TooLong);
    }
    if !name.bytes().all(allowed) {
        return Err(ChannelError::BadChar);
    }
    Ok(())
}

fn allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':' | b'.' | b'@' | b'/' | b'#')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(validate("news"), Ok(()));
        assert_eq!(validate("chat:room-1/a.b@c#d_e"), Ok(()));
        assert_eq!(validate(""), Err(ChannelError::Empty));
        assert_eq!(validate(&"a".repeat(255)), Ok(()));
        assert_eq!(validate(&"a".repeat(256)), Err(ChannelError::TooLong));
        for bad in ["a b", "a\"b", "a{b}", "ä", "a\\b", "a*"] {
            assert_eq!(validate(bad), Err(ChannelError::BadChar), "{bad}");
        }
    }
}
