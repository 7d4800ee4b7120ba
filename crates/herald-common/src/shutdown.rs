//! The one shutdown signal for every binary.

/// Resolves on SIGINT or SIGTERM, logging which arrived.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(cause = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(cause = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!(signal = "SIGINT", "shutting down"),
        () = term => tracing::info!(signal = "SIGTERM", "shutting down"),
    }
}

/// Stops a service's background tasks: cancels `token`, then waits for `tracker`'s
/// tasks for at most `grace`, warning when they outlive it (a stuck task must not hold
/// the process open forever).
pub async fn stop_tasks(
    token: &tokio_util::sync::CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
    grace: std::time::Duration,
) {
    token.cancel();
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(?grace, "background tasks did not stop in time");
    }
}
