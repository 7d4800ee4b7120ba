//! The scenarios, one module per area; each test starts its own Redis and services.
mod admin;
mod auth;
mod bench;
mod broadcaster;
mod chaos;
mod compose;
mod config;
mod docs;
mod gateway;
mod http_limits;
mod limits;
mod metrics;
mod monitor;
mod observe;
mod pipeline;
mod redaction;
mod tui;
