//! Command-line flags and their `HERALD_*` environment variables.

use std::path::PathBuf;

use clap::Parser;

pub const DEFAULT_MONITOR_URL: &str = "http://127.0.0.1:8083";
pub const DEFAULT_REFRESH_MS: u64 = 1_000;
pub const DEFAULT_FPS: u32 = 10;
/// Bounds that keep the dashboard useful and the monitor unharmed.
const REFRESH_MS_RANGE: std::ops::RangeInclusive<u64> = 100..=60_000;
const FPS_RANGE: std::ops::RangeInclusive<u32> = 1..=60;

/// Herald's live dashboard: nodes, connections, channels and rate limits, read
/// from the monitor's HTTP API.
#[derive(Debug, Clone, Parser)]
#[command(name = "herald-tui", version)]
pub struct Config {
    /// Base URL of the monitor service.
    #[arg(long, env = "HERALD_MONITOR_URL", default_value = DEFAULT_MONITOR_URL)]
    pub monitor: String,
    /// The monitor's admin key, needed only to disconnect connections (`d`).
    #[arg(long, env = "HERALD_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// How often to poll the monitor, in milliseconds.
    #[arg(long, env = "HERALD_TUI_REFRESH_MS", default_value_t = DEFAULT_REFRESH_MS)]
    pub refresh_ms: u64,
    /// Redraws per second.
    #[arg(long, env = "HERALD_TUI_FPS", default_value_t = DEFAULT_FPS)]
    pub fps: u32,
    /// Write logs to this file (the screen is the dashboard's; without it, no logs).
    #[arg(long, env = "HERALD_TUI_LOG_FILE")]
    pub log_file: Option<PathBuf>,
    /// Log filter for the log file (a `tracing` filter).
    #[arg(long, env = "HERALD_LOG", default_value = "herald_tui=info")]
    pub log: String,
}

impl Config {
    /// Every problem with the values, one line each.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !(self.monitor.starts_with("http://") || self.monitor.starts_with("https://")) {
            out.push(format!(
                "HERALD_MONITOR_URL/--monitor must be an http(s) URL, got {:?}",
                self.monitor
            ));
        }
        if !REFRESH_MS_RANGE.contains(&self.refresh_ms) {
            out.push(format!(
                "HERALD_TUI_REFRESH_MS/--refresh-ms must be {} to {}, got {}",
                REFRESH_MS_RANGE.start(),
                REFRESH_MS_RANGE.end(),
                self.refresh_ms
            ));
        }
        if !FPS_RANGE.contains(&self.fps) {
            out.push(format!(
                "HERALD_TUI_FPS/--fps must be {} to {}, got {}",
                FPS_RANGE.start(),
                FPS_RANGE.end(),
                self.fps
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        Config::try_parse_from(std::iter::once("herald-tui").chain(args.iter().copied()))
            .expect("parse")
    }

    #[test]
    fn flags_and_checks() {
        let c = parse(&[
            "--monitor",
            "http://m:1",
            "--refresh-ms",
            "500",
            "--admin-key",
            "k",
        ]);
        assert_eq!(c.monitor, "http://m:1");
        assert_eq!((c.refresh_ms, c.admin_key.as_deref()), (500, Some("k")));
        assert!(c.problems().is_empty());
        let bad = parse(&["--monitor", "m:1", "--refresh-ms", "5", "--fps", "0"]);
        assert_eq!(bad.problems().len(), 3, "{:?}", bad.problems());
    }
}
