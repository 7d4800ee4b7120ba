//! Background jobs: submitted over HTTP, queued durably in a Redis Stream with a
//! consumer group, run by workers on any broadcaster node, and reported as one
//! `processing_result` frame on the job's target channel.
//!
//! # Layout
//! - [`kinds`]: the job types and their computations (pure).
//! - [`store`]: job state (`herald:job:<id>`) and the stream commands.
//! - [`worker`]: the fetch loop, reclaiming of abandoned jobs, and the exactly-once
//!   result path.

pub mod kinds;
pub mod store;
pub mod worker;

pub use kinds::{Job, JobError};
