//! The `broadcaster` binary: parse config, check Redis, bind, serve.

use std::process::ExitCode;

use anyhow::Context as _;

use broadcaster::Config;
use herald_common::config::{exit_if_problems, parse_or_exit};
use herald_common::{shutdown::shutdown_signal, store, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let config: Config = parse_or_exit();
    exit_if_problems(broadcaster::SERVICE, &config.problems());
    telemetry::init(&config.common.log);
    match serve(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, whatever RUST_BACKTRACE says: `{:#}` joins the cause chain.
            eprintln!("{}: {e:#}", broadcaster::SERVICE);
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let (client, conn) = store::connect(&config.common.redis_url).await?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr().context("listener has no address")?;
    tracing::info!(%addr, "listening");
    broadcaster::run_with(listener, config, client, conn, shutdown_signal()).await
}
