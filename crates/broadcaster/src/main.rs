//! The `broadcaster` binary: configuration (exit 64 on a bad one), bind, then
//! [`broadcaster::run`] (an unreachable Redis exits 1).

use std::process::ExitCode;

use broadcaster::{Config, SERVICE};
use herald_common::runtime::{bind, exit_code};
use herald_common::{config, shutdown::shutdown_signal, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let (config, settings) = config::load(SERVICE, Config::validate);
    telemetry::init(&config.common.log);
    telemetry::redact(&[
        settings.api_key.as_deref(),
        settings.webhooks.as_ref().map(|w| w.secret.as_str()),
    ]);
    let result =
        async { broadcaster::run(bind(settings.listen)?, config, None, shutdown_signal()).await };
    exit_code(SERVICE, result.await)
}
