//! The `auth-svc` binary: configuration (exit 64 on a bad one), bind, then
//! [`auth_svc::run`] (an unreachable Redis exits 1); or one operator subcommand.

use std::process::ExitCode;

use auth_svc::config::Mode;
use auth_svc::{Cli, SERVICE};
use herald_common::runtime::{bind, exit_code};
use herald_common::{config, shutdown::shutdown_signal, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let (cli, mode) = config::load(SERVICE, Cli::validate);
    telemetry::init(&cli.config.common.log);
    telemetry::redact(&[
        cli.config.jwt.jwt_secret.as_deref(),
        cli.config.admin_key.as_deref(),
    ]);
    let settings = match mode {
        Mode::Serve(settings) => settings,
        Mode::Command(command) => return auth_svc::cli::run(command, cli.config).await,
    };
    let result =
        async { auth_svc::run(bind(settings.listen)?, cli.config, None, shutdown_signal()).await };
    exit_code(SERVICE, result.await)
}
