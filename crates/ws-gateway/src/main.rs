//! The ws-gateway binary: configuration, tracing, Redis check, bind, run.

use std::process::ExitCode;

use herald_common::config::{exit_if_problems, parse_or_exit};
use ws_gateway::Config;

#[tokio::main]
async fn main() -> ExitCode {
    // Variables whose values do not parse; reported with every other problem.
    let (config, mut problems): (Config, _) = parse_or_exit();
    herald_common::telemetry::init(&config.common.log);
    herald_common::telemetry::redact(&[config.jwt.jwt_secret.as_deref()]);
    // Every client is a file descriptor: lift the soft limit to the hard one, so the
    // node's capacity is HERALD_MAX_CONNECTIONS or the machine's limit, not a default 1024.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open-file limit"),
        Err(e) => tracing::warn!(cause = %e, "cannot raise the open-file limit"),
    }
    let settings = config.settings().map_err(|p| problems.extend(p)).ok();
    exit_if_problems("ws-gateway", &problems);
    let Some(settings) = settings else {
        unreachable!("settings are refused only with problems, and those exit");
    };
    let listener = match listen(settings.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ws-gateway: cannot listen on {}: {e}", settings.listen);
            return ExitCode::FAILURE;
        }
    };
    match ws_gateway::run(listener, config, herald_common::shutdown::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, the whole cause chain.
            eprintln!("ws-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Pending connections the kernel queues for `accept`. tokio's default (1024) overflows
/// when thousands of clients reconnect at once (a gateway restart, a network blip), and
/// each dropped SYN costs that client a one-second retransmission timeout. The kernel
/// caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 8192;

fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}
