//! The `monitor` binary: configuration, bind, then [`monitor::run`] (an unreachable
//! Redis exits 1).

use anyhow::Context as _;

use herald_common::config::{exit_if_problems, parse_or_exit};
use herald_common::shutdown::shutdown_signal;
use herald_common::telemetry;
use monitor::Config;

#[tokio::main]
async fn main() {
    // Variables whose values do not parse; reported with every other problem.
    let (config, mut problems): (Config, _) = parse_or_exit();
    problems.extend(config.problems());
    exit_if_problems(monitor::SERVICE, &problems);
    telemetry::init(&config.common.log);
    telemetry::redact(&[config.admin_key()]);
    if let Err(e) = serve(config).await {
        // One line, the whole cause chain, for operators and scripts.
        eprintln!("{}: {e:#}", monitor::SERVICE);
        std::process::exit(1);
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let addr = config
        .listen_addr()
        .context("HERALD_LISTEN is not an address")?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, "monitor listening");
    monitor::run(listener, config, shutdown_signal()).await
}
