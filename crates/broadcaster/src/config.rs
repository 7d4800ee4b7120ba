//! The broadcaster's settings: `--flags` or `HERALD_*` environment variables.

use std::net::SocketAddr;
use std::time::Duration;

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
/// Most webhook events in one POST, by default.
pub const DEFAULT_WEBHOOK_BATCH: usize = 100;
/// Upper bound for `HERALD_WEBHOOK_BATCH`: one POST body stays a few MB at most.
pub const MAX_WEBHOOK_BATCH: usize = 1000;
/// How long one webhook POST may take, by default.
pub const DEFAULT_WEBHOOK_TIMEOUT_MS: u64 = 5_000;
/// How long a webhook event is retried before it is dropped, by default (1 hour).
pub const DEFAULT_WEBHOOK_RETRY_FOR_MS: u64 = 60 * 60 * 1000;
/// How long a `channel_vacated` waits for a `channel_occupied` that cancels it, by default.
pub const DEFAULT_WEBHOOK_DEBOUNCE_MS: u64 = 1_000;
/// Upper bound for `HERALD_WEBHOOK_DEBOUNCE_MS`: a held `channel_vacated` holds up
/// every event after it.
pub const MAX_WEBHOOK_DEBOUNCE_MS: u64 = 60_000;
/// The shortest webhook secret accepted, as for `HERALD_JWT_SECRET`.
pub const MIN_WEBHOOK_SECRET_BYTES: usize = 16;

/// Everything the broadcaster can be told at startup.
#[derive(Debug, Clone, Parser)]
#[command(name = "broadcaster", version = herald_common::VERSION, about = "Herald's server-side publish API, legacy Redis bridges, background jobs and webhook delivery")]
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
    /// A job, or a batch of webhook events, pending this long (its broadcaster
    /// presumably dead) is claimed by another broadcaster.
    #[arg(long, env = "HERALD_JOB_CLAIM_IDLE_MS", default_value_t = DEFAULT_JOB_CLAIM_IDLE_MS)]
    pub job_claim_idle_ms: u64,
    /// Jobs this process runs concurrently (0 disables the job workers of this node).
    #[arg(long, env = "HERALD_JOB_WORKERS", default_value_t = DEFAULT_JOB_WORKERS)]
    pub job_workers: usize,
    /// How long a publish `idempotency_key` is remembered, in ms.
    #[arg(long, env = "HERALD_IDEMPOTENCY_TTL_MS", default_value_t = DEFAULT_IDEMPOTENCY_TTL_MS)]
    pub idempotency_ttl_ms: u64,
    /// Where webhook events are POSTed (`http://`); unset, this node delivers none.
    // Its value stays out of `--help`: a URL may carry credentials.
    #[arg(long, env = "HERALD_WEBHOOK_URL", hide_env_values = true)]
    pub webhook_url: Option<String>,
    /// Key of the `X-Herald-Signature` HMAC, at least 16 bytes; required with
    /// HERALD_WEBHOOK_URL.
    #[arg(long, env = "HERALD_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Most webhook events in one POST.
    #[arg(long, env = "HERALD_WEBHOOK_BATCH", default_value_t = DEFAULT_WEBHOOK_BATCH)]
    pub webhook_batch: usize,
    /// How long one webhook POST may take, in ms, before it counts as failed.
    #[arg(long, env = "HERALD_WEBHOOK_TIMEOUT_MS", default_value_t = DEFAULT_WEBHOOK_TIMEOUT_MS)]
    pub webhook_timeout_ms: u64,
    /// How long a webhook event is retried, in ms, before it is dropped and counted failed.
    #[arg(long, env = "HERALD_WEBHOOK_RETRY_FOR_MS", default_value_t = DEFAULT_WEBHOOK_RETRY_FOR_MS)]
    pub webhook_retry_for_ms: u64,
    /// A channel_vacated followed this soon (ms) by a channel_occupied of the same
    /// channel sends neither; 0 sends both.
    #[arg(long, env = "HERALD_WEBHOOK_DEBOUNCE_MS", default_value_t = DEFAULT_WEBHOOK_DEBOUNCE_MS)]
    pub webhook_debounce_ms: u64,
}

/// The broadcaster's settings, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    /// The API key; an empty value counts as none.
    pub api_key: Option<String>,
    pub history: HistoryConfig,
    pub limits: Limits,
    /// Webhook delivery; `None` when `HERALD_WEBHOOK_URL` is unset.
    pub webhooks: Option<WebhookSettings>,
}

/// Where and how webhook events are delivered.
#[derive(Clone)]
pub struct WebhookSettings {
    pub url: reqwest::Url,
    /// The HMAC key; never logged (see the `Debug` impl).
    pub secret: String,
    /// Most events per POST.
    pub batch: usize,
    /// One POST's time limit.
    pub timeout: Duration,
    /// How long an event is retried before it is dropped.
    pub retry_for: Duration,
    /// A vacated channel occupied again within this sends neither event.
    pub debounce: Duration,
}

impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("url", &herald_common::store::redacted(self.url.as_str()))
            .field("secret", &"[redacted]")
            .field("batch", &self.batch)
            .field("timeout", &self.timeout)
            .field("retry_for", &self.retry_for)
            .field("debounce", &self.debounce)
            .finish()
    }
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
        let webhooks = self.webhooks(&mut out);
        out.or(|| Settings {
            listen,
            api_key: self.api_key.clone().filter(|k| !k.is_empty()),
            history: HistoryConfig {
                size: self.history_size,
                ttl_ms: self.history_ttl_ms,
            },
            limits: self.http.limits(),
            webhooks,
        })
    }

    /// The webhook settings, checked even without a URL (a bad value is a mistake
    /// whether or not it is used yet). Problems never quote the secret.
    fn webhooks(&self, out: &mut ConfigErrors) -> Option<WebhookSettings> {
        if !(1..=MAX_WEBHOOK_BATCH).contains(&self.webhook_batch) {
            out.push(format!(
                "HERALD_WEBHOOK_BATCH must be between 1 and {MAX_WEBHOOK_BATCH}"
            ));
        }
        if self.webhook_timeout_ms == 0 {
            out.push("HERALD_WEBHOOK_TIMEOUT_MS must be greater than 0");
        }
        if self.webhook_retry_for_ms == 0 {
            out.push("HERALD_WEBHOOK_RETRY_FOR_MS must be greater than 0");
        }
        if self.webhook_debounce_ms > MAX_WEBHOOK_DEBOUNCE_MS {
            out.push(format!(
                "HERALD_WEBHOOK_DEBOUNCE_MS must be at most {MAX_WEBHOOK_DEBOUNCE_MS}"
            ));
        }
        let raw = self.webhook_url.as_deref().filter(|u| !u.is_empty())?;
        let url = match reqwest::Url::parse(raw) {
            // No TLS client is built in: an https URL would fail on every POST.
            Ok(u) if u.scheme() == "https" => {
                out.push(
                    "HERALD_WEBHOOK_URL: https is not supported (this build has no TLS \
                     client); use an http:// URL, e.g. a TLS-originating proxy",
                );
                None
            }
            Ok(u) if u.scheme() == "http" && u.host().is_some() => Some(u),
            Ok(_) => {
                out.push("HERALD_WEBHOOK_URL must be an http:// URL with a host");
                None
            }
            Err(e) => {
                out.push(format!("HERALD_WEBHOOK_URL is not a URL: {e}"));
                None
            }
        };
        let secret = match self.webhook_secret.as_deref() {
            None | Some("") => {
                out.push("HERALD_WEBHOOK_SECRET is required with HERALD_WEBHOOK_URL");
                None
            }
            Some(s) if s.len() < MIN_WEBHOOK_SECRET_BYTES => {
                out.push(format!(
                    "HERALD_WEBHOOK_SECRET must be at least {MIN_WEBHOOK_SECRET_BYTES} bytes"
                ));
                None
            }
            Some(s) => Some(s.to_owned()),
        };
        Some(WebhookSettings {
            url: url?,
            secret: secret?,
            batch: self.webhook_batch,
            timeout: Duration::from_millis(self.webhook_timeout_ms),
            retry_for: Duration::from_millis(self.webhook_retry_for_ms),
            debounce: Duration::from_millis(self.webhook_debounce_ms),
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
        assert!(s.webhooks.is_none(), "webhooks are off without a URL");
        assert_eq!(c.webhook_batch, 100);
        assert_eq!(c.webhook_timeout_ms, 5_000);
        assert_eq!(c.webhook_retry_for_ms, 3_600_000);
        assert_eq!(c.webhook_debounce_ms, 1_000);
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

    #[test]
    fn webhooks() {
        let secret = "a-webhook-secret-of-32-bytes-xyz";
        let c = Config::try_parse_from([
            "broadcaster",
            "--webhook-url",
            "http://backend.internal:8000/herald",
            "--webhook-secret",
            secret,
            "--webhook-batch",
            "10",
        ])
        .unwrap();
        let w = c.validate().unwrap().webhooks.expect("on with a URL");
        assert_eq!(w.url.as_str(), "http://backend.internal:8000/herald");
        assert_eq!(w.batch, 10);
        assert_eq!(w.debounce, Duration::from_secs(1));
        assert!(
            !format!("{w:?}").contains(secret),
            "the secret stays out of Debug"
        );

        // Each problem once, none quoting the secret.
        let short = "short-secret";
        let c = Config::try_parse_from([
            "broadcaster",
            "--webhook-url",
            "http://backend.internal/hook",
            "--webhook-secret",
            short,
            "--webhook-batch",
            "0",
            "--webhook-timeout-ms",
            "0",
            "--webhook-retry-for-ms",
            "0",
            "--webhook-debounce-ms",
            "60001",
        ])
        .unwrap();
        let problems = c.validate().unwrap_err();
        assert_eq!(problems.len(), 5, "{problems:?}");
        assert!(problems.lines().iter().all(|p| !p.contains(short)));

        for (url, secret) in [
            ("http://backend.internal/hook", None),
            ("https://backend.internal/hook", Some(secret)),
            ("ftp://backend.internal/hook", Some(secret)),
            ("not a url", Some(secret)),
        ] {
            let mut args = vec!["broadcaster", "--webhook-url", url];
            if let Some(s) = secret {
                args.extend(["--webhook-secret", s]);
            }
            let problems = Config::try_parse_from(args)
                .unwrap()
                .validate()
                .unwrap_err();
            assert_eq!(problems.len(), 1, "{url}: {problems:?}");
            assert!(
                problems.lines()[0].starts_with("HERALD_WEBHOOK_"),
                "{problems:?}"
            );
        }
        // A secret alone turns nothing on.
        let c = Config::try_parse_from(["broadcaster", "--webhook-secret", secret]).unwrap();
        assert!(c.validate().unwrap().webhooks.is_none());
    }
}
