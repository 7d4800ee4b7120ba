//! The HTTP accept loop every service runs, with the limits a public listener needs.
//!
//! hyper is driven directly (not through `axum::serve`) for three limits:
//! - a client must send its whole request head within the header timeout, or the
//!   connection is closed (this also closes keep-alive connections idle that long);
//! - a request head larger than the header cap gets 431 and the connection is closed;
//! - at most `max_connections` connections are served at once: over the cap, a new
//!   connection is accepted and closed at once, so the backlog drains and the clients
//!   already connected are served as before.
//!
//! The body limit (413) is a layer on the router ([`crate::http::layers`]). Upgraded
//! connections (the gateway's WebSockets) leave the HTTP cap when they upgrade: they
//! count against the service's own limits from then on.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use clap::Args;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Time a client has to send a complete request head (and the longest a keep-alive
/// connection may sit idle between requests).
pub const DEFAULT_HEADER_TIMEOUT_MS: u64 = 10_000;
/// Largest request head (request line and headers) accepted; a larger one gets 431.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
/// Connections one listener serves at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// How long a request in flight at shutdown may take to finish.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// File descriptors kept out of the connection cap for everything else a process
/// opens (Redis connections, files, outgoing probes).
const FD_RESERVE: u64 = 64;
/// hyper's smallest read buffer; the header cap below it is enforced on the parsed head.
const MIN_READ_BUFFER: usize = 8 * 1024;
/// Refused connections are logged at most this often.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);
/// Pause after a failed `accept` (out of file descriptors and the like).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub header_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_millis(DEFAULT_HEADER_TIMEOUT_MS),
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// The `HERALD_HTTP_*` settings of the plain HTTP services (auth-svc, broadcaster,
/// monitor). The gateway derives its limits from its own handshake settings.
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Time a client has to send a complete request head, in ms; a keep-alive
    /// connection idle this long is closed too.
    #[arg(long, env = "HERALD_HTTP_HEADER_TIMEOUT_MS", default_value_t = DEFAULT_HEADER_TIMEOUT_MS)]
    pub http_header_timeout_ms: u64,
    /// Largest request head (request line and headers) accepted; larger gets 431.
    #[arg(long, env = "HERALD_HTTP_MAX_HEADER_BYTES", default_value_t = DEFAULT_MAX_HEADER_BYTES)]
    pub http_max_header_bytes: usize,
    /// HTTP connections served at once per listener; more are closed on arrival.
    #[arg(long, env = "HERALD_HTTP_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub http_max_connections: usize,
}

impl HttpArgs {
    /// Adds the problems of these settings to `out`.
    pub fn check(&self, out: &mut crate::config::ConfigErrors) {
        if self.http_header_timeout_ms == 0 {
            out.push("HERALD_HTTP_HEADER_TIMEOUT_MS must be greater than 0");
        }
        if self.http_max_header_bytes < 1024 {
            out.push("HERALD_HTTP_MAX_HEADER_BYTES must be at least 1024");
        }
        if self.http_max_connections == 0 {
            out.push("HERALD_HTTP_MAX_CONNECTIONS must be greater than 0");
        }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            header_timeout: Duration::from_millis(self.http_header_timeout_ms),
            max_header_bytes: self.http_max_header_bytes,
            max_connections: self.http_max_connections,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves; then stops accepting, lets
/// each request in flight finish (for at most [`DRAIN_TIMEOUT`]) and returns.
/// Handlers can read the peer address with `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes.max(MIN_READ_BUFFER))
        .max_header_size(limits.max_header_bytes);
    let cap = fd_bounded(limits.max_connections);
    let permits = Arc::new(Semaphore::new(cap));
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mut refusals = Refusals::default();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(cause = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Closing at once keeps the backlog moving and costs the clients already
            // served nothing; the refused client sees its connection closed.
            drop(stream);
            refusals.note(cap);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let svc = hyper::service::service_fn(
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                app.clone().oneshot(req.map(axum::body::Body::new))
            },
        );
        let conn = builder
            .serve_connection(TokioIo::new(stream), svc)
            .with_upgrades();
        let stop = stop.clone();
        tracker.spawn(async move {
            // Held until the connection ends or is handed over by an upgrade.
            let _permit = permit;
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(DRAIN_TIMEOUT, conn).await;
                }
            }
        });
    }
    // New connections are refused by the kernel from here on.
    drop(listener);
    stop.cancel();
    tracker.close();
    tracker.wait().await;
}

/// `wanted`, lowered to what the open-file limit leaves room for.
fn fd_bounded(wanted: usize) -> usize {
    let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE) else {
        return wanted;
    };
    let room = usize::try_from(soft.saturating_sub(FD_RESERVE).max(1)).unwrap_or(usize::MAX);
    if room < wanted {
        tracing::info!(
            wanted,
            serving = room,
            open_file_limit = soft,
            "the open-file limit lowers the HTTP connection cap"
        );
    }
    wanted.min(room).max(1)
}

/// Counts connections closed over the cap, for a warning now and then.
#[derive(Debug, Default)]
struct Refusals {
    count: u64,
    logged: Option<Instant>,
}

impl Refusals {
    fn note(&mut self, cap: usize) {
        self.count += 1;
        let now = Instant::now();
        if self
            .logged
            .is_none_or(|t| now.duration_since(t) >= REFUSAL_LOG_EVERY)
        {
            tracing::warn!(
                max_connections = cap,
                refused = self.count,
                "HTTP connection cap reached: closing new connections"
            );
            self.logged = Some(now);
            self.count = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        http: HttpArgs,
    }

    #[test]
    fn defaults_and_problems() {
        let t = T::try_parse_from(["t"]).unwrap();
        let problems = |t: &T| {
            let mut out = crate::config::ConfigErrors::new();
            t.http.check(&mut out);
            out.len()
        };
        assert_eq!(problems(&t), 0);
        assert_eq!(t.http.limits(), Limits::default());
        let t = T::try_parse_from([
            "t",
            "--http-header-timeout-ms",
            "0",
            "--http-max-header-bytes",
            "10",
            "--http-max-connections",
            "0",
        ])
        .unwrap();
        assert_eq!(problems(&t), 3);
    }

    #[test]
    fn the_cap_leaves_room_for_other_files() {
        assert_eq!(fd_bounded(1), 1);
        assert!(fd_bounded(usize::MAX) < usize::MAX);
    }
}
