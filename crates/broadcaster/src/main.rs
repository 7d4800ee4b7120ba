//! The `broadcaster` binary: parse config, bind, serve (an unreachable Redis exits 1).

use std::process::ExitCode;

use anyhow::Context as _;

use broadcaster::Config;
use herald_common::config::{exit_if_problems, parse_or_exit};
use herald_common::{shutdown::shutdown_signal, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    // Variables whose values do not parse; reported with every other problem.
    let (config, mut problems): (Config, _) = parse_or_exit();
    problems.extend(config.problems());
    exit_if_problems(broadcaster::SERVICE, &problems);
    telemetry::init(&config.common.log);
    telemetry::redact(&[config.api_key()]);
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
    let listen = config
        .listen_addr()
        .context("HERALD_LISTEN is not an address")?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr().context("listener has no address")?;
    tracing::info!(%addr, "listening");
    broadcaster::run(listener, config, shutdown_signal()).await
}
