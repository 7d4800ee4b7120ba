//! The monitor's settings: flags or `HERALD_*` environment variables (clap reads both).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

use herald_common::config::{CommonConfig, ConfigErrors};

pub const ENV_LISTEN: &str = "HERALD_LISTEN";
/// The port when `HERALD_LISTEN` is not set: on every interface, or on loopback
/// only in development mode.
pub const DEFAULT_PORT: u16 = 8083;
pub const DEFAULT_PROBE_INTERVAL_MS: u64 = 1_000;
/// Probing more often than this only loads the nodes; less often than this
/// leaves the dashboard's probe column meaningless.
const PROBE_INTERVAL_RANGE_MS: std::ops::RangeInclusive<u64> = 100..=60_000;

/// Everything the monitor can be told.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "monitor",
    version = herald_common::VERSION,
    about = "Herald's cluster view: node heartbeats, health probes, overview API, live stream and admin actions"
)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonConfig,
    #[command(flatten)]
    pub http: herald_common::serve::HttpArgs,
    /// Address the HTTP API listens on [default: 0.0.0.0:8083; 127.0.0.1:8083 with
    /// HERALD_DEV=1].
    #[arg(long, env = ENV_LISTEN)]
    pub listen: Option<SocketAddr>,
    /// Bearer key for the admin actions (disconnects); without it they refuse everything.
    #[arg(long, env = "HERALD_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// Serve the admin actions only on this address (e.g. a private interface);
    /// unset, they share the main listener.
    #[arg(long, env = "HERALD_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// How often every node's `/healthz` is probed, in ms.
    #[arg(long, env = "HERALD_PROBE_INTERVAL_MS", default_value_t = DEFAULT_PROBE_INTERVAL_MS)]
    pub probe_interval_ms: u64,
}

/// The monitor's settings, checked, in the units the code uses.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    /// Where the admin actions are served, when not on the main listener.
    pub admin_listen: Option<SocketAddr>,
    /// The admin key; an empty value counts as none, so that `HERALD_ADMIN_KEY=`
    /// cannot open the admin endpoints to an empty bearer.
    pub admin_key: Option<String>,
    pub probe_interval: Duration,
}

impl Config {
    /// Checks every setting, reporting all problems at once.
    pub fn validate(&self) -> Result<Settings, ConfigErrors> {
        let (mut out, listen) = self
            .common
            .check_http(&self.http, self.listen, DEFAULT_PORT);
        let admin_listen = self.admin_listen;
        if !PROBE_INTERVAL_RANGE_MS.contains(&self.probe_interval_ms) {
            out.push(format!(
                "HERALD_PROBE_INTERVAL_MS must be between {} and {}, got {}",
                PROBE_INTERVAL_RANGE_MS.start(),
                PROBE_INTERVAL_RANGE_MS.end(),
                self.probe_interval_ms
            ));
        }
        out.or(|| Settings {
            listen,
            admin_listen,
            admin_key: self.admin_key.clone().filter(|k| !k.is_empty()),
            probe_interval: Duration::from_millis(self.probe_interval_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = Config::try_parse_from(["monitor"]).unwrap();
        let s = c.validate().unwrap();
        assert_eq!(s.listen, "0.0.0.0:8083".parse().unwrap());
        assert_eq!(s.probe_interval, Duration::from_secs(1));
        assert_eq!(s.admin_key, None);
        // Development mode listens on loopback unless told otherwise.
        let dev = Config::try_parse_from(["monitor", "--dev"]).unwrap();
        assert_eq!(
            dev.validate().unwrap().listen,
            "127.0.0.1:8083".parse().unwrap()
        );
    }

    #[test]
    fn every_problem_at_once() {
        let c = Config::try_parse_from([
            "monitor",
            "--probe-interval-ms",
            "5",
            "--redis-url",
            "http://x",
            "--admin-key",
            "",
        ])
        .unwrap();
        let problems = c.validate().unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        let c = Config::try_parse_from(["monitor", "--admin-key", ""]).unwrap();
        assert_eq!(c.validate().unwrap().admin_key, None);
    }
}
