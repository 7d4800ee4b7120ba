//! Runtime pieces every Herald service shares. Unlike `herald-proto`, this crate
//! does I/O: it talks to its engine (Redis or memory), serves HTTP and reads the environment.
//!
//! # Layout
//! - [`runtime`]: the service skeleton: node id, heartbeat, readiness, ops routes,
//!   listeners, and one cancellation tree and task tracker for background tasks.
//! - [`backoff`]: the reconnect delay schedule of every server-side reconnect loop.
//! - [`config`]: the `HERALD_*` settings every service has, and fail-fast startup errors.
//! - [`telemetry`]: tracing setup, once per process.
//! - [`shutdown`]: the one SIGINT/SIGTERM future.
//! - [`engine`]: where shared state lives: Redis, or one process's memory.
//! - [`keys`]: every Redis key and Pub/Sub channel name, in one place.
//! - [`store`]: Redis connections with a fail-fast startup check.
//! - [`publish`]: the atomic publish script (offset + history + fan-out) and history reads.
//! - [`presence`]: channel members on every gateway, join/leave events, dead nodes' cleanup.
//! - [`webhooks`]: the queue of webhook events gateways append and the broadcaster delivers.
//! - [`node`]: the per-second node heartbeat every service writes for the monitor.
//! - [`http`]: the JSON error shape, body extractor, the `AdminKey` extractor and
//!   `/healthz` `/readyz` `/metrics`.
//! - [`serve`]: the HTTP accept loop with header timeout, header cap and connection cap.
//! - [`jwt`]: access-token verification (HS256 secret or JWKS) with the protocol's checks.

pub mod backoff;
pub mod config;
pub mod engine;
pub mod http;
pub mod jwt;
pub mod keys;
pub mod node;
pub mod presence;
pub mod publish;
pub mod runtime;
pub mod serve;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod webhooks;

/// The version every service reports in its heartbeat and `--version`: the workspace
/// version and, when the build saw one, the git revision, e.g. `0.4.0 (abc1234)`
/// (`build.rs` writes it).
pub const VERSION: &str = env!("HERALD_BUILD_VERSION");
