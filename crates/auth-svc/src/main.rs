//! The `auth-svc` binary: parses the configuration, fails fast on bad settings
//! (exit 64) or an unreachable Redis (exit 1), binds and serves; or runs one
//! operator subcommand.

use std::process::ExitCode;

use auth_svc::config::{Cli, Command, Config};
use herald_common::config::{exit_if_problems, parse_or_exit};
use herald_common::{shutdown, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    // Variables whose values do not parse; reported with every other problem.
    let (cli, mut problems): (Cli, _) = parse_or_exit();
    telemetry::init(&cli.config.common.log);
    telemetry::redact(&[
        cli.config.jwt.jwt_secret.as_deref(),
        cli.config.admin_key.as_deref(),
    ]);
    match cli.command {
        None | Some(Command::Serve) => serve(cli.config, problems).await,
        Some(command) => {
            problems.extend(cli.config.common.problems());
            exit_if_problems(auth_svc::SERVICE, &problems);
            auth_svc::cli::run(command, cli.config).await
        }
    }
}

async fn serve(config: Config, mut problems: Vec<String>) -> ExitCode {
    let settings = config.settings(&mut problems);
    exit_if_problems(auth_svc::SERVICE, &problems);
    let Some(listen) = settings.listen else {
        return ExitCode::FAILURE;
    };
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("auth-svc: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "listening");
    }
    match auth_svc::run(listener, config, shutdown::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("auth-svc: {e:#}");
            ExitCode::FAILURE
        }
    }
}
