//! The `monitor` binary: configuration (exit 64 on a bad one), bind, then
//! [`monitor::run`] (an unreachable Redis exits 1).

use std::process::ExitCode;

use herald_common::runtime::{bind, exit_code};
use herald_common::{config, shutdown::shutdown_signal, telemetry};
use monitor::{Config, SERVICE};

#[tokio::main]
async fn main() -> ExitCode {
    let (config, settings) = config::load(SERVICE, Config::validate);
    telemetry::init(&config.common.log);
    telemetry::redact(&[settings.admin_key.as_deref()]);
    let result =
        async { monitor::run(bind(settings.listen)?, config, None, shutdown_signal()).await };
    exit_code(SERVICE, result.await)
}
