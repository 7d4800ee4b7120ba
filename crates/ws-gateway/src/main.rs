//! The `ws-gateway` binary: configuration (exit 64 on a bad one), bind, then
//! [`ws_gateway::run`] (an unreachable Redis exits 1).

use std::process::ExitCode;

use herald_common::runtime::{bind, exit_code};
use herald_common::{config, shutdown::shutdown_signal, telemetry};
use ws_gateway::{Config, SERVICE};

#[tokio::main]
async fn main() -> ExitCode {
    let (config, settings) = config::load(SERVICE, Config::validate);
    telemetry::init(&config.common.log);
    telemetry::redact(&[
        config.jwt.jwt_secret.as_deref(),
        config.proxy_secret.as_deref(),
    ]);
    // Every client is a file descriptor: lift the soft limit to the hard one, so the
    // node's capacity is HERALD_MAX_CONNECTIONS or the machine's limit, not a default 1024.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open-file limit"),
        Err(e) => tracing::warn!(cause = %e, "cannot raise the open-file limit"),
    }
    let result =
        async { ws_gateway::run(bind(settings.listen)?, config, None, shutdown_signal()).await };
    exit_code(SERVICE, result.await)
}
