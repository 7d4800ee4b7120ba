//! The broadcaster's settings: `--flags` or `HERALD_*` environment variables.

use std::net::SocketAddr;

use clap::Parser;

use herald_common::config::{CommonConfig, ConfigErrors};
use herald_common::publish::{DEFAULT_HISTORY_SIZE, DEFAULT_HISTORY_TTL_MS, HistoryConfig};
use herald_common::serve::Limits;

/// The port when `HERALD_LISTEN` is not set: on every interface, or on loopback
/// only in development mode.
pub const DEFAULT_PORT: u16 = 8082;
/// How long a pending job may sit unacknowledged before another worker takes it.
pub const DEFAULT_JOB_CLAIM_IDLE_MS: u64 = 30_000;
/// Jobs one process runs at the same time.
pub const DEFAULT_JOB_WORKERS: usize = 2;
/// How long an idempotency key remembers its first publish (docs/protocol.md: 5 minutes).
pub const DEFAULT_IDEMPOTENCY_TTL_MS: u64 = 5 * 60 * 1000;
/// Upper bound for `HERALD_JOB_WORKERS`, so a typo cannot start thousands of tasks.
pub const MAX_JOB_WORKERS: usize = 256;
/// Lower bound for `HERALD_JOB_CLAIM_IDLE_MS`: below it, a worker's keep-alive
/// could not keep its own running job from being taken over.
pub const MIN_JOB_CLAIM_IDLE_MS: u64 = 300;

/// Everything the broadcaster can be told at startup.
#[derive(Debug, Clone, Parser)]
#[command(name = "broadcaster", version = herald_common::VERSION, about = "Herald's server-side publish API, legacy Redis bridges and background jobs")]
pub struct Config {
    #[command(flatten)]
    pub common: CommonConfig,
    #[command(flatten)]
    pub http: herald_common::serve::HttpArgs,
    /// Address the HTTP API listens on [default: 0.0.0.0:8082; 127.0.0.1:8082 with
    /// HERALD_DEV=1].
    #[arg(long, env = "HERALD_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Bearer key callers must present; without one, the API refuses every request.
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Messages kept per channel for client recovery.
    #[arg(long, env = "HERALD_HISTORY_SIZE", default_value_t = DEFAULT_HISTORY_SIZE)]
    pub history_size: u64,
    /// Lifetime of a channel's history after its last publish, in ms.
    #[arg(long, env = "HERALD_HISTORY_TTL_MS", default_value_t = DEFAULT_HISTORY_TTL_MS)]
    pub history_ttl_ms: u64,
    /// A job pending this long (its worker presumably dead) is claimed by another worker.
    #[arg(long, env = "HERALD_JOB_CLAIM_IDLE_MS", default_value_t = DEFAULT_JOB_CLAIM_IDLE_MS)]
    pub job_claim_idle_ms: u64,
    /// Jobs this process runs concurrently (0 disables the job workers of this node).
    #[arg(long, env = "HERALD_JOB_WORKERS", default_value_t = DEFAULT_JOB_WORKERS)]
    pub job_workers: usize,
    /// How long a publish `idempotency_key` is remembered, in ms.
    #[arg(long, env = "HERALD_IDEMPOTENCY_TTL_MS", default_value_t = DEFAULT_IDEMPOTENCY_TTL_MS)]
    pub idempotency_ttl_ms: u64,
}

/// The broadcaster's settings, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    /// The API key; an empty value counts as none.
    pub api_key: Option<String>,
    pub history: HistoryConfig,
    pub limits: Limits,
}

impl Config {
    /// Checks every setting, reporting all problems at once.
    pub fn validate(&self) -> Result<Settings, ConfigErrors> {
        let (mut out, listen) = self
            .common
            .check_http(&self.http, self.listen, DEFAULT_PORT);
        if self.history_ttl_ms == 0 {
            out.push("HERALD_HISTORY_TTL_MS must be greater than 0");
        }
        if self.job_claim_idle_ms < MIN_JOB_CLAIM_IDLE_MS {
            out.push(format!(
                "HERALD_JOB_CLAIM_IDLE_MS must be at least {MIN_JOB_CLAIM_IDLE_MS}"
            ));
        }
        if self.job_workers > MAX_JOB_WORKERS {
            out.push(format!(
                "HERALD_JOB_WORKERS must be at most {MAX_JOB_WORKERS}"
            ));
        }
        if self.idempotency_ttl_ms == 0 {
            out.push("HERALD_IDEMPOTENCY_TTL_MS must be greater than 0");
        }
        out.or(|| Settings {
            listen,
            api_key: self.api_key.clone().filter(|k| !k.is_empty()),
            history: HistoryConfig {
                size: self.history_size,
                ttl_ms: self.history_ttl_ms,
            },
            limits: self.http.limits(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = Config::try_parse_from(["broadcaster"]).unwrap();
        let s = c.validate().unwrap();
        assert_eq!(s.listen, "0.0.0.0:8082".parse().unwrap());
        assert_eq!(c.job_claim_idle_ms, 30_000);
        assert_eq!(c.job_workers, 2);
        assert_eq!(c.idempotency_ttl_ms, 300_000);
        assert_eq!(s.history.size, DEFAULT_HISTORY_SIZE);
        assert!(s.api_key.is_none());
        // Development mode listens on loopback unless told otherwise.
        let dev = Config::try_parse_from(["broadcaster", "--dev"]).unwrap();
        assert_eq!(
            dev.validate().unwrap().listen,
            "127.0.0.1:8082".parse().unwrap()
        );
    }

    #[test]
    fn reports_every_problem() {
        let c = Config::try_parse_from([
            "broadcaster",
            "--job-claim-idle-ms",
            "1",
            "--history-ttl-ms",
            "0",
            "--api-key",
            "",
        ])
        .unwrap();
        let problems = c.validate().unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        let c = Config::try_parse_from(["broadcaster", "--api-key", ""]).unwrap();
        assert!(c.validate().unwrap().api_key.is_none());
    }
}
