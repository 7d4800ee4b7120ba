//! Login throttling: failed logins are counted per username and per client IP in
//! fixed windows (`INCR` + `PEXPIRE` on the first failure); once either count
//! reaches its limit, every login for that username or from that IP is refused
//! with 429 until the window ends, the right password included. On the memory
//! engine, the same counters (by the same names) in a map with deadlines.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use sha2::{Digest, Sha256};

use herald_common::keys::Keys;
use herald_proto::time::now_ms;

use crate::store::{AuthStore, Sweep, lock};

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

/// One counter as read: failures so far and the window's remaining ms (`PTTL`:
/// -2 without a counter, -1 for one without a deadline).
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

/// The login throttle over the [`AuthStore`].
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
        store: &AuthStore,
        username: &str,
        ip: IpAddr,
    ) -> redis::RedisResult<Option<Duration>> {
        let mut conn = match store {
            AuthStore::Redis(c) => c.clone(),
            AuthStore::Memory(m) => {
                let now = now_ms();
                let user = m.throttle.count(&self.user_key(username), now);
                let ip = m.throttle.count(&self.ip_key(ip), now);
                return Ok(decide(&self.limits, user, ip));
            }
        };
        let (uf, ut, ipf, ipt): (Option<u64>, i64, Option<u64>, i64) = redis::pipe()
            .cmd("GET")
            .arg(self.user_key(username))
            .cmd("PTTL")
            .arg(self.user_key(username))
            .cmd("GET")
            .arg(self.ip_key(ip))
            .cmd("PTTL")
            .arg(self.ip_key(ip))
            .query_async(&mut conn)
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
        store: &AuthStore,
        username: &str,
        ip: IpAddr,
    ) -> redis::RedisResult<()> {
        let window_ms = u64::try_from(self.limits.window.as_millis()).unwrap_or(u64::MAX);
        let mut conn = match store {
            AuthStore::Redis(c) => c.clone(),
            AuthStore::Memory(m) => {
                let now = now_ms();
                for key in [self.user_key(username), self.ip_key(ip)] {
                    m.throttle.fail(key, window_ms, now);
                }
                return Ok(());
            }
        };
        let script = redis::Script::new(FAIL_SCRIPT);
        for key in [self.user_key(username), self.ip_key(ip)] {
            script
                .key(key)
                .arg(window_ms)
                .invoke_async::<i64>(&mut conn)
                .await?;
        }
        Ok(())
    }

    /// A successful login clears the username's failures (not the IP's: one good
    /// password must not reset a spray across many accounts).
    pub async fn succeeded(&self, store: &AuthStore, username: &str) -> redis::RedisResult<()> {
        let mut conn = match store {
            AuthStore::Redis(c) => c.clone(),
            AuthStore::Memory(m) => {
                m.throttle.clear(&self.user_key(username));
                return Ok(());
            }
        };
        redis::cmd("DEL")
            .arg(self.user_key(username))
            .query_async(&mut conn)
            .await
    }
}

/// The failure counters on the memory engine, by key name.
#[derive(Default)]
pub(crate) struct MemoryThrottle(Mutex<Counters>);

impl std::fmt::Debug for MemoryThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryThrottle")
            .field("counters", &lock(&self.0).map.len())
            .finish()
    }
}

#[derive(Default)]
struct Counters {
    /// Key → (failures, end of the window).
    map: HashMap<String, (u64, u64)>,
    sweep: Sweep,
}

impl MemoryThrottle {
    /// The counter `key` at `now`: as `GET` and `PTTL` read it.
    fn count(&self, key: &str, now: u64) -> Count {
        match lock(&self.0).map.get(key) {
            Some(&(failures, until_ms)) if until_ms > now => Count {
                failures,
                remaining_ms: i64::try_from(until_ms - now).unwrap_or(i64::MAX),
            },
            _ => Count {
                failures: 0,
                remaining_ms: -2,
            },
        }
    }

    /// Counts one failure; the first one of a window starts it, as the script does.
    fn fail(&self, key: String, window_ms: u64, now: u64) {
        let mut counters = lock(&self.0);
        if counters.sweep.due(now) {
            counters.map.retain(|_, (_, until_ms)| *until_ms > now);
        }
        let counter = counters.map.entry(key).or_insert((0, 0));
        if counter.1 > now {
            counter.0 += 1;
        } else {
            *counter = (1, now.saturating_add(window_ms));
        }
    }

    fn clear(&self, key: &str) {
        lock(&self.0).map.remove(key);
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

    #[test]
    fn memory_counts_within_a_window() {
        let m = MemoryThrottle::default();
        let gone = Count {
            failures: 0,
            remaining_ms: -2,
        };
        assert_eq!(m.count("u", 0), gone);
        m.fail("u".into(), 1000, 100);
        m.fail("u".into(), 1000, 600);
        // The window runs from the first failure; later ones do not extend it.
        assert_eq!(
            m.count("u", 700),
            Count {
                failures: 2,
                remaining_ms: 400,
            }
        );
        assert_eq!(m.count("ip", 700), gone);
        assert_eq!(m.count("u", 1100), gone);
        // A failure after the window starts a new one.
        m.fail("u".into(), 1000, 1100);
        assert_eq!(
            m.count("u", 1100),
            Count {
                failures: 1,
                remaining_ms: 1000,
            }
        );
        m.clear("u");
        assert_eq!(m.count("u", 1100), gone);
        // Expired counters are swept.
        m.fail("a".into(), 1000, 1100);
        m.fail("b".into(), 1000, 5000);
        assert_eq!(lock(&m.0).map.len(), 1);
    }
}
