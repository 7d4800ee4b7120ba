//! Tracing setup: `HERALD_LOG` (or `RUST_LOG`) filter, `HERALD_LOG_FORMAT=json|plain`.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `filter` is the service's `--log` value.
/// Logs go to stderr so that CLI subcommands can print results on stdout.
pub fn init(filter: &str) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_new(filter).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let json = std::env::var("HERALD_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests running several services in one process) is harmless.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
