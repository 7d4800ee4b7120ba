//! Background jobs: submitted over HTTP, queued on the engine, run by workers, and
//! reported as one `processing_result` frame on the job's target channel.
//!
//! On Redis the queue is durable: a Redis Stream with a consumer group, run by
//! workers on any broadcaster node, surviving restarts. On the memory engine it
//! lives in this process and is **not durable across restarts**; the states, the
//! retries and the exactly-once result are the same.
//!
//! # Layout
//! - [`kinds`]: the job types and their computations (pure).
//! - [`store`]: job state and the queue operations ([`store::JobStore`]), with
//!   their Redis commands (`herald:job:<id>`, the job stream).
//! - [`memory`]: the same operations in this process, for the memory engine.
//! - [`worker`]: the fetch loop, reclaiming of abandoned jobs, and the exactly-once
//!   result path (one loop over either store).

pub mod kinds;
pub mod memory;
pub mod store;
pub mod worker;

pub use kinds::{Job, JobError};
