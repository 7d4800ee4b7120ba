//! Herald's wire contract, shared by every service: what clients send, what the
//! gateway answers, what travels through Redis, and who may do what.
//!
//! This crate does no I/O, so every rule in it can be tested in isolation.
//!
//! # Layout
//! - [`client`]: parsing client frames into [`client::ClientMsg`], with the exact error codes of docs/protocol.md.
//! - [`server`]: the frames the gateway writes ([`server::ServerMsg`]), serialized once.
//! - [`disconnect`]: every way a connection ends, with its close code and `disconnect` frame.
//! - [`frames`]: owned, typed frames in both directions, for clients.
//! - [`claims`]: JWT claims and the permission checks made on them.
//! - [`glob`]: the `*` pattern matcher used by permissions.
//! - [`channel`]: channel-name validation.
//! - [`envelope`]: the message-frame templates the publish script fills in, and the Pub/Sub envelope.
//! - [`control`]: the commands on the control channel (disconnects, revocations).
//! - [`legacy`]: the payloads of the legacy Redis channels the broadcaster bridges.
//! - [`presence`]: a channel member's record, join/leave frames and their Pub/Sub envelope.
//! - [`webhook`]: the events gateways record for the application's backend, as POSTed.
//! - [`proxy`]: what gateways ask the application's backend (connect, refresh, subscribe, publish).
//! - [`node`]: the records nodes write into Redis for the monitor, and the rate-limit kinds.
//! - [`monitor`]: the monitor's JSON API, as the monitor writes it and herald-tui reads it.
//! - [`time`]: the one timestamp format used on the wire.

pub mod channel;
pub mod claims;
pub mod client;
pub mod control;
pub mod disconnect;
pub mod envelope;
pub mod frames;
pub mod glob;
pub mod legacy;
pub mod monitor;
pub mod node;
pub mod presence;
pub mod proxy;
pub mod server;
pub mod time;
pub mod webhook;

pub use client::{ClientMsg, ErrorCode, FrameError};
