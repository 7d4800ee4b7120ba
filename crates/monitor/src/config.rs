//! The monitor's settings: flags or `HERALD_*` environment variables (clap reads both).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

use herald_common::config::{CommonConfig, parse_listen, resolve_listen};

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
    pub listen: Option<String>,
    /// Bearer key for the admin actions (disconnects); without it they refuse everything.
    #[arg(long, env = "HERALD_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// Serve the admin actions only on this address (e.g. a private interface);
    /// unset, they share the main listener.
    #[arg(long, env = "HERALD_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
    /// How often every node's `/healthz` is probed, in ms.
    #[arg(long, env = "HERALD_PROBE_INTERVAL_MS", default_value_t = DEFAULT_PROBE_INTERVAL_MS)]
    pub probe_interval_ms: u64,
}

impl Config {
    /// Every problem the monitor cannot start with; empty when all is well.
    pub fn problems(&self) -> Vec<String> {
        let mut out = self.common.problems();
        out.extend(self.http.problems());
        self.resolve_listen(&mut out);
        if let Some(a) = &self.admin_listen {
            parse_listen("HERALD_ADMIN_LISTEN", a, &mut out);
        }
        if !PROBE_INTERVAL_RANGE_MS.contains(&self.probe_interval_ms) {
            out.push(format!(
                "HERALD_PROBE_INTERVAL_MS must be between {} and {}, got {}",
                PROBE_INTERVAL_RANGE_MS.start(),
                PROBE_INTERVAL_RANGE_MS.end(),
                self.probe_interval_ms
            ));
        }
        out
    }

    /// The listen address (checked by [`Self::problems`]).
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.resolve_listen(&mut Vec::new())
    }

    fn resolve_listen(&self, problems: &mut Vec<String>) -> Option<SocketAddr> {
        resolve_listen(
            ENV_LISTEN,
            self.listen.as_deref(),
            DEFAULT_PORT,
            self.common.dev,
            problems,
        )
    }

    /// The admin key, if one is set; an empty value counts as none, so that
    /// `HERALD_ADMIN_KEY=` cannot open the admin endpoints to an empty bearer.
    pub fn admin_key(&self) -> Option<&str> {
        self.admin_key.as_deref().filter(|k| !k.is_empty())
    }

    pub fn probe_interval(&self) -> Duration {
        Duration::from_millis(self.probe_interval_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = Config::try_parse_from(["monitor"]).unwrap();
        assert_eq!(c.listen_addr(), Some("0.0.0.0:8083".parse().unwrap()));
        assert_eq!(c.probe_interval_ms, 1_000);
        assert_eq!(c.admin_key(), None);
        assert!(c.problems().is_empty(), "{:?}", c.problems());
    }

    #[test]
    fn development_mode_listens_on_loopback_unless_told_otherwise() {
        let listen = |args: &[&str]| {
            let mut all = vec!["monitor"];
            all.extend_from_slice(args);
            Config::try_parse_from(all).unwrap().listen_addr().unwrap()
        };
        assert_eq!(listen(&["--dev"]), "127.0.0.1:8083".parse().unwrap());
        assert_eq!(
            listen(&["--dev", "--listen", "0.0.0.0:8083"]),
            "0.0.0.0:8083".parse().unwrap()
        );
    }

    #[test]
    fn every_problem_at_once() {
        let c = Config::try_parse_from([
            "monitor",
            "--listen",
            "nowhere",
            "--probe-interval-ms",
            "5",
            "--redis-url",
            "http://x",
            "--admin-key",
            "",
        ])
        .unwrap();
        assert_eq!(c.problems().len(), 3, "{:?}", c.problems());
        assert_eq!(c.admin_key(), None);
    }
}
