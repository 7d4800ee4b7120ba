//! Login throttling: failed logins are counted per username and per client IP in
//! fixed windows (`INCR` + `PEXPIRE` on the first failure); once either count
//! reaches its limit, every login for that username or from that IP is refused
//! with 429 until the window ends, the right password included.

use std::net::IpAddr;
use std::time::Duration;

use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};

use herald_common::keys::Keys;

/// Counts one failure and starts the window on the first one.
const FAIL_SCRIPT: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 or redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return n
";

/// The limits (`HERALD_LOGIN_*`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub per_user: u64,
    pub per_ip: u64,
    pub window: Duration,
}

/// One counter as read from Redis: failures so far and the window's remaining ms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    pub failures: u64,
    pub remaining_ms: i64,
}

/// The wait before another attempt may be made, if the limits are reached.
pub fn decide(limits: &Limits, user: Count, ip: Count) -> Option<Duration> {
    let window_ms = i64::try_from(limits.window.as_millis()).unwrap_or(i64::MAX);
    // A counter without TTL (should not happen) blocks for one full window.
    let wait = |c: Count| {
        let ms = if c.remaining_ms > 0 {
            c.remaining_ms
        } else {
            window_ms
        };
        Duration::from_millis(u64::try_from(ms).unwrap_or(0))
    };
    let by_user = (user.failures >= limits.per_user).then(|| wait(user));
    let by_ip = (ip.failures >= limits.per_ip).then(|| wait(ip));
    by_user.into_iter().chain(by_ip).max()
}

/// The login throttle over Redis.
#[derive(Debug, Clone)]
pub struct Throttle {
    keys: Keys,
    limits: Limits,
}

impl Throttle {
    pub fn new(keys: Keys, limits: Limits) -> Self {
        Self { keys, limits }
    }

    fn user_key(&self, username: &str) -> String {
        if crate::users::valid_username(username) {
            self.keys.other(&format!("auth:fail:user:{username}"))
        } else {
            // Names that cannot exist are still counted (so a probe cannot tell
            // them apart), under a bounded, harmless key.
            let digest = Sha256::digest(username.as_bytes());
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            self.keys.other(&format!("auth:fail:user:~{hex}"))
        }
    }

    fn ip_key(&self, ip: IpAddr) -> String {
        self.keys.other(&format!("auth:fail:ip:{ip}"))
    }

    /// How long this login must wait, if throttled.
    pub async fn check(
        &self,
        conn: &mut ConnectionManager,
        username: &str,
        ip: IpAddr,
    ) -> redis::RedisResult<Option<Duration>> {
        let (uf, ut, ipf, ipt): (Option<u64>, i64, Option<u64>, i64) = redis::pipe()
            .cmd("GET")
            .arg(self.user_key(username))
            .cmd("PTTL")
            .arg(self.user_key(username))
            .cmd("GET")
            .arg(self.ip_key(ip))
            .cmd("PTTL")
            .arg(self.ip_key(ip))
            .query_async(conn)
            .await?;
        let user = Count {
            failures: uf.unwrap_or(0),
            remaining_ms: ut,
        };
        let ip = Count {
            failures: ipf.unwrap_or(0),
            remaining_ms: ipt,
        };
        Ok(decide(&self.limits, user, ip))
    }

    /// Counts a failed login for both the username and the IP.
    pub async fn failed(
        &self,
        conn: &mut ConnectionManager,
        username: &str,
        ip: IpAddr,
    ) -> redis::RedisResult<()> {
        let window_ms = u64::try_from(self.limits.window.as_millis()).unwrap_or(u64::MAX);
        let script = redis::Script::new(FAIL_SCRIPT);
        for key in [self.user_key(username), self.ip_key(ip)] {
            script
                .key(key)
                .arg(window_ms)
                .invoke_async::<i64>(conn)
                .await?;
        }
        Ok(())
    }

    /// A successful login clears the username's failures (not the IP's: one good
    /// password must not reset a spray across many accounts).
    pub async fn succeeded(
        &self,
        conn: &mut ConnectionManager,
        username: &str,
    ) -> redis::RedisResult<()> {
        redis::cmd("DEL")
            .arg(self.user_key(username))
            .query_async(conn)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        per_user: 5,
        per_ip: 50,
        window: Duration::from_secs(900),
    };

    #[track_caller]
    fn check(user: (u64, i64), ip: (u64, i64), expected: Option<u64>) {
        let c = |(failures, remaining_ms)| Count {
            failures,
            remaining_ms,
        };
        assert_eq!(
            decide(&LIMITS, c(user), c(ip)),
            expected.map(Duration::from_millis)
        );
    }

    #[test]
    fn decisions() {
        check((0, -2), (0, -2), None);
        check((4, 1000), (49, 1000), None);
        check((5, 1000), (0, -2), Some(1000));
        check((0, -2), (50, 2000), Some(2000));
        check((9, 3000), (60, 2000), Some(3000));
        // A counter that lost its TTL blocks for a whole window.
        check((5, -1), (0, -2), Some(900_000));
    }
}
