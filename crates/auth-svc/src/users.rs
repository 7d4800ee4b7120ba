//! The user store: one Redis HASH per user (`herald:user:<name>`, fields
//! `password_hash`, `channels`, `publish`, `created_at`) plus the SET of names
//! (`herald:users`); on the memory engine, the same records in a map by name.
//! Only the password's Argon2id PHC string is stored.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use serde::Serialize;

use herald_common::keys::Keys;
use herald_proto::channel;

use crate::store::{AuthStore, lock};

/// Longest user name, in bytes.
pub const MAX_USERNAME_LEN: usize = 64;
/// Longest password, in bytes: bounds the hashing work one request can ask for.
pub const MAX_PASSWORD_LEN: usize = 1024;
/// Most patterns in `channels` or `publish`.
pub const MAX_PATTERNS: usize = 128;

/// Creates the user hash only if it does not exist, so two concurrent creations
/// cannot both succeed. It touches one key, so it runs on Redis Cluster too.
const CREATE_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'password_hash', ARGV[1], 'channels', ARGV[2],
  'publish', ARGV[3], 'created_at', ARGV[4])
return 1
";

/// A user as stored, password hash included (never serialized to clients).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub username: String,
    pub password_hash: String,
    pub channels: Vec<String>,
    pub publish: Vec<String>,
    pub created_at: String,
}

/// What clients may see of a user.
#[derive(Debug, Clone, Serialize)]
pub struct PublicUser<'a> {
    pub username: &'a str,
    pub channels: &'a [String],
    pub publish: &'a [String],
    pub created_at: &'a str,
}

impl User {
    pub fn public(&self) -> PublicUser<'_> {
        PublicUser {
            username: &self.username,
            channels: &self.channels,
            publish: &self.publish,
            created_at: &self.created_at,
        }
    }
}

/// Why a user definition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidUser {
    #[error("username must be 1-{MAX_USERNAME_LEN} characters of [A-Za-z0-9_.@-]")]
    Username,
    /// Shorter than `HERALD_MIN_PASSWORD_LENGTH` (the minimum, in characters).
    #[error("password must be at least {0} characters long")]
    PasswordTooShort(usize),
    #[error("password must be at most {MAX_PASSWORD_LEN} bytes")]
    PasswordTooLong,
    #[error("at most {MAX_PATTERNS} patterns are allowed in {0}")]
    TooManyPatterns(&'static str),
    #[error("{field} pattern {pattern:?} is not a channel name (with optional '*')")]
    Pattern {
        field: &'static str,
        pattern: String,
    },
}

/// Whether `name` is an acceptable user name. Names end up in the personal
/// channel `user:<name>`, so they use a subset of the channel alphabet.
pub fn valid_username(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_USERNAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'-'))
}

/// Checks a permission pattern: a channel name in which `*` may also appear.
pub fn valid_pattern(pattern: &str) -> bool {
    channel::validate(&pattern.replace('*', "x")).is_ok()
}

/// Checks everything about a new user except whether the name is taken;
/// `min_password` is the shortest password accepted, in characters.
pub fn validate(
    username: &str,
    password: &str,
    min_password: usize,
    channels: &[String],
    publish: &[String],
) -> Result<(), InvalidUser> {
    if !valid_username(username) {
        return Err(InvalidUser::Username);
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(InvalidUser::PasswordTooLong);
    }
    // Characters, not bytes: a user counts what they typed. At least one, always.
    let min = min_password.max(1);
    if password.chars().count() < min {
        return Err(InvalidUser::PasswordTooShort(min));
    }
    for (field, patterns) in [("channels", channels), ("publish", publish)] {
        if patterns.len() > MAX_PATTERNS {
            return Err(InvalidUser::TooManyPatterns(field));
        }
        if let Some(p) = patterns.iter().find(|p| !valid_pattern(p)) {
            return Err(InvalidUser::Pattern {
                field,
                pattern: p.clone(),
            });
        }
    }
    Ok(())
}

/// Reads and writes users in the [`AuthStore`].
#[derive(Debug, Clone)]
pub struct UserStore {
    keys: Keys,
}

impl UserStore {
    pub fn new(keys: Keys) -> Self {
        Self { keys }
    }

    /// Creates a user; `Ok(false)` when the name is taken.
    pub async fn create(&self, store: &AuthStore, user: &User) -> redis::RedisResult<bool> {
        let mut conn = match store {
            AuthStore::Redis(c) => c.clone(),
            AuthStore::Memory(m) => return Ok(m.users.create(user)),
        };
        let channels = serde_json::to_string(&user.channels).unwrap_or_else(|_| "[]".to_owned());
        let publish = serde_json::to_string(&user.publish).unwrap_or_else(|_| "[]".to_owned());
        let created: i64 = redis::Script::new(CREATE_SCRIPT)
            .key(self.keys.user(&user.username))
            .arg(&user.password_hash)
            .arg(channels)
            .arg(publish)
            .arg(&user.created_at)
            .invoke_async(&mut conn)
            .await?;
        if created == 0 {
            return Ok(false);
        }
        // The name index is a separate key (another Cluster slot), so it is
        // written after the user itself; `list` tolerates a stale name.
        redis::cmd("SADD")
            .arg(self.keys.users())
            .arg(&user.username)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(true)
    }

    /// The user named `name`, if any. Invalid names are never stored, so they
    /// are answered without a Redis round trip only by callers that check first.
    pub async fn get(&self, store: &AuthStore, name: &str) -> redis::RedisResult<Option<User>> {
        let mut conn = match store {
            AuthStore::Redis(c) => c.clone(),
            AuthStore::Memory(m) => return Ok(m.users.get(name)),
        };
        let fields: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.user(name))
            .query_async(&mut conn)
            .await?;
        Ok(from_fields(name, fields))
    }

    /// Deletes a user; `Ok(false)` when there was none.
    pub async fn delete(&self, store: &AuthStore, name: &str) -> redis::RedisResult<bool> {
        let mut conn = match store {
            AuthStore::Redis(c) => c.clone(),
            AuthStore::Memory(m) => return Ok(m.users.delete(name)),
        };
        let removed: i64 = redis::cmd("DEL")
            .arg(self.keys.user(name))
            .query_async(&mut conn)
            .await?;
        redis::cmd("SREM")
            .arg(self.keys.users())
            .arg(name)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(removed > 0)
    }

    /// Every user name, sorted.
    pub async fn list(&self, store: &AuthStore) -> redis::RedisResult<Vec<String>> {
        let mut conn = match store {
            AuthStore::Redis(c) => c.clone(),
            AuthStore::Memory(m) => return Ok(m.users.list()),
        };
        let mut names: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.users())
            .query_async(&mut conn)
            .await?;
        names.sort();
        Ok(names)
    }
}

/// The users on the memory engine, by name: one map holds both the records and
/// the index that Redis keeps apart, so a creation is atomic as a whole.
#[derive(Default)]
pub(crate) struct MemoryUsers(Mutex<BTreeMap<String, User>>);

impl std::fmt::Debug for MemoryUsers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Password hashes stay out of logs.
        f.debug_struct("MemoryUsers")
            .field("users", &lock(&self.0).len())
            .finish()
    }
}

impl MemoryUsers {
    /// Stores `user` unless the name is taken; whether it was stored.
    fn create(&self, user: &User) -> bool {
        match lock(&self.0).entry(user.username.clone()) {
            std::collections::btree_map::Entry::Occupied(_) => false,
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(user.clone());
                true
            }
        }
    }

    fn get(&self, name: &str) -> Option<User> {
        lock(&self.0).get(name).cloned()
    }

    fn delete(&self, name: &str) -> bool {
        lock(&self.0).remove(name).is_some()
    }

    /// Every name, sorted (the map's order).
    fn list(&self) -> Vec<String> {
        lock(&self.0).keys().cloned().collect()
    }
}

/// Builds a user from its hash fields; `None` for a missing (empty) hash.
fn from_fields(name: &str, mut fields: HashMap<String, String>) -> Option<User> {
    let password_hash = fields.remove("password_hash")?;
    let list = |v: Option<String>| -> Vec<String> {
        v.and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default()
    };
    Some(User {
        username: name.to_owned(),
        password_hash,
        channels: list(fields.remove("channels")),
        publish: list(fields.remove("publish")),
        created_at: fields.remove("created_at").unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn usernames() {
        for ok in ["alice", "u1", "a.b-c_d@example.com"] {
            assert!(valid_username(ok), "{ok}");
        }
        for bad in ["", "a b", "a:b", "a{b}", &"x".repeat(65)] {
            assert!(!valid_username(bad), "{bad}");
        }
    }

    #[test]
    fn validation() {
        assert_eq!(
            validate("alice", "pw", 1, &s(&["news", "chat:*"]), &s(&["*"])),
            Ok(())
        );
        assert_eq!(validate("", "pw", 1, &[], &[]), Err(InvalidUser::Username));
        assert_eq!(
            validate("alice", "", 0, &[], &[]),
            Err(InvalidUser::PasswordTooShort(1))
        );
        assert_eq!(
            validate("alice", &"x".repeat(MAX_PASSWORD_LEN + 1), 8, &[], &[]),
            Err(InvalidUser::PasswordTooLong)
        );
        assert!(matches!(
            validate("alice", "pw", 1, &s(&["bad name"]), &[]),
            Err(InvalidUser::Pattern {
                field: "channels",
                ..
            })
        ));
        assert!(matches!(
            validate("alice", "pw", 1, &[], &s(&[""])),
            Err(InvalidUser::Pattern {
                field: "publish",
                ..
            })
        ));
    }

    #[test]
    fn password_minimum_counts_characters() {
        assert_eq!(
            validate("alice", "1234567", 8, &[], &[]),
            Err(InvalidUser::PasswordTooShort(8))
        );
        assert_eq!(validate("alice", "12345678", 8, &[], &[]), Ok(()));
        // Eight characters, sixteen bytes.
        assert_eq!(validate("alice", "éééééééé", 8, &[], &[]), Ok(()));
        assert_eq!(
            InvalidUser::PasswordTooShort(8).to_string(),
            "password must be at least 8 characters long"
        );
    }

    #[test]
    fn fields() {
        assert_eq!(from_fields("a", HashMap::new()), None);
        let f: HashMap<String, String> = [
            ("password_hash", "$argon2id$x"),
            ("channels", r#"["news"]"#),
            ("created_at", "2026-01-01T00:00:00.000Z"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let u = from_fields("a", f).unwrap();
        assert_eq!(u.channels, ["news"]);
        assert!(u.publish.is_empty());
        let v = serde_json::to_value(u.public()).unwrap();
        assert!(v.get("password_hash").is_none());
    }
}
