//! The job workers of one node, over the [`JobStore`] of its engine (the same loop
//! on Redis and in memory; the Redis commands named here have in-process
//! equivalents in [`super::memory`]).
//!
//! One fetch loop per node reads the job stream through the consumer group (the
//! consumer name is the node id) and runs up to `HERALD_JOB_WORKERS` jobs at once.
//! Every `HERALD_JOB_CLAIM_IDLE_MS / 2` it also `XAUTOCLAIM`s entries pending longer
//! than `HERALD_JOB_CLAIM_IDLE_MS`: those belong to workers that died mid-job. A
//! worker keeps its own running jobs fresh (`XCLAIM` to itself, resetting the idle
//! time) so a long job on a live worker is never taken over.
//!
//! Exactly-once results: a job's result is published with
//! `publish_once(once_id = "job:<id>")`, then its state is set to done/failed, then
//! its entry is acknowledged. A worker that dies anywhere in between leaves the
//! entry pending; the worker that reclaims it re-runs the job, and the re-run's
//! publish is the first one's (the script sees the marker and publishes nothing).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use herald_common::backoff::Backoff;
use herald_common::runtime::Runtime;
use herald_common::store;
use herald_proto::{channel, envelope, time::now_rfc3339};

use super::kinds::{Job, JobError};
use super::store::{Entry, JOB_TTL_MS, JobStore, RedisJobs, Start};
use crate::AppState;

/// How long one `XREADGROUP` blocks; also bounds how late a cancel or a due
/// reclaim scan is noticed.
pub const READ_BLOCK_MS: u64 = 1000;
/// A job started this many times without finishing (its worker crashing each time)
/// is failed instead of being retried forever.
pub const MAX_ATTEMPTS: u64 = 5;

/// Job ids this node is running now, so a reclaim scan never starts a second copy.
type InFlight = Arc<Mutex<HashSet<String>>>;

/// Starts the fetch loop, unless `HERALD_JOB_WORKERS` is 0.
pub fn spawn(ctx: &AppState, rt: &Runtime) {
    let workers = ctx.config.job_workers;
    if workers == 0 {
        tracing::info!("job workers disabled (HERALD_JOB_WORKERS=0)");
        return;
    }
    rt.spawn(fetch_loop(
        ctx.clone(),
        rt.tracker().clone(),
        rt.token(),
        workers,
    ));
}

/// The store the blocking reads go to: on Redis, a connection of its own, as they
/// would otherwise hold up every other request multiplexed on the shared
/// connection. In memory a waiting read holds up nothing else.
fn reader(ctx: &AppState) -> redis::RedisResult<JobStore> {
    let JobStore::Redis(r) = &ctx.jobs else {
        return Ok(ctx.jobs.clone());
    };
    let conn = r
        .client
        .dedicated(Duration::from_millis(READ_BLOCK_MS) + store::RESPONSE_TIMEOUT)?;
    Ok(JobStore::Redis(RedisJobs { conn, ..r.clone() }))
}

async fn fetch_loop(ctx: AppState, tracker: TaskTracker, token: CancellationToken, workers: usize) {
    let reader = match reader(&ctx) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(cause = %e, "job workers cannot open a Redis connection; jobs will not run on this node");
            return;
        }
    };
    let permits = Arc::new(Semaphore::new(workers));
    let in_flight: InFlight = Arc::default();
    let idle_ms = ctx.config.job_claim_idle_ms;
    let claim_every = Duration::from_millis((idle_ms / 2).clamp(100, 5_000));
    // Scan for abandoned jobs at once: this node may be the replacement of a dead one.
    let mut next_claim = Instant::now();
    let mut cursor = "0-0".to_owned();
    let mut backoff = Backoff::default();
    let mut group_ready = false;
    tracing::info!(workers, claim_idle_ms = idle_ms, "job workers started");

    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = token.cancelled() => break,
        };
        let step = async {
            if !group_ready {
                reader.ensure_group().await?;
                group_ready = true;
            }
            if Instant::now() >= next_claim {
                let (next, claimed) = reader.auto_claim(&ctx.node_id, idle_ms, &cursor).await?;
                let scan_done = next == "0-0";
                cursor = next;
                let claimed = claimed.filter(|(_, id)| !is_in_flight(&in_flight, id.as_deref()));
                if claimed.is_some() {
                    tracing::info!(entry = ?claimed, "claimed an abandoned job");
                    return Ok(claimed);
                }
                if scan_done {
                    next_claim = Instant::now() + claim_every;
                }
            }
            reader.read_new(&ctx.node_id, READ_BLOCK_MS).await
        };
        let got: redis::RedisResult<Option<Entry>> = tokio::select! {
            r = step => r,
            () = token.cancelled() => break,
        };
        match got {
            Ok(entry) => {
                if !backoff.is_reset() {
                    tracing::info!("job queue reachable again");
                    backoff.reset();
                }
                if let Some(entry) = entry {
                    start_job(&ctx, &tracker, &token, &in_flight, entry, permit);
                }
            }
            Err(e) => {
                ctx.metrics.redis_errors_total.inc();
                ctx.health.failed(&e);
                // After a Redis restart the group is gone (NOGROUP): create it again.
                group_ready = false;
                if backoff.is_reset() {
                    tracing::warn!(cause = %e, "job queue unavailable; retrying");
                } else {
                    tracing::debug!(cause = %e, "job queue still unavailable");
                }
                if !backoff.sleep(&token).await {
                    break;
                }
            }
        }
    }
    tracing::info!("job workers stopped");
}

fn is_in_flight(in_flight: &InFlight, id: Option<&str>) -> bool {
    let Some(id) = id else { return false };
    in_flight
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .contains(id)
}

fn start_job(
    ctx: &AppState,
    tracker: &TaskTracker,
    token: &CancellationToken,
    in_flight: &InFlight,
    (entry, job_id): Entry,
    permit: OwnedSemaphorePermit,
) {
    let ctx = ctx.clone();
    let Some(job_id) = job_id else {
        // Not written by us: drop it rather than have it claimed forever.
        tracing::warn!(%entry, "job stream entry without an id; deleting it");
        tracker.spawn(async move {
            let _ = ctx.jobs.ack(&entry).await;
            drop(permit);
        });
        return;
    };
    in_flight
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(job_id.clone());
    let guard = RunGuard {
        in_flight: in_flight.clone(),
        job_id: job_id.clone(),
        _permit: permit,
    };
    let token = token.clone();
    tracker.spawn(async move {
        // The keep-alive runs beside the job, in the same task, and ends with it.
        tokio::select! {
            () = run_job(&ctx, &entry, &job_id, &token) => {}
            () = keep_alive(&ctx, &entry) => {}
        }
        drop(guard);
    });
}

/// Releases what a running job holds, whichever way it ends.
struct RunGuard {
    in_flight: InFlight,
    job_id: String,
    _permit: OwnedSemaphorePermit,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        self.in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.job_id);
    }
}

/// Resets the entry's idle time three times per claim period while the job runs.
async fn keep_alive(ctx: &AppState, entry: &str) {
    let every = Duration::from_millis((ctx.config.job_claim_idle_ms / 3).max(50));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(e) = ctx.jobs.keep_alive(&ctx.node_id, entry).await {
            ctx.metrics.redis_errors_total.inc();
            ctx.health.failed(&e);
            tracing::debug!(cause = %e, %entry, "job keep-alive failed");
        }
    }
}

/// Runs one job to its single published result. Any Redis failure leaves the entry
/// pending, to be reclaimed and retried (the memory store does not fail).
async fn run_job(ctx: &AppState, entry: &str, job_id: &str, token: &CancellationToken) {
    let (attempts, job_type, target, data) = match ctx.jobs.start(job_id, &ctx.node_id).await {
        Ok(Start::Run {
            attempts,
            job_type,
            target_channel,
            data,
        }) => (attempts, job_type, target_channel, data),
        Ok(Start::Missing | Start::Finished) => {
            if let Err(e) = ctx.jobs.ack(entry).await {
                ctx.redis_failed(e);
            }
            return;
        }
        Err(e) => {
            ctx.redis_failed(e);
            return;
        }
    };
    tracing::info!(%job_id, %job_type, attempts, "job running");

    let outcome: Result<serde_json::Value, String> = if attempts > MAX_ATTEMPTS {
        Err(format!("gave up after {MAX_ATTEMPTS} attempts"))
    } else {
        match parse(&job_type, &data) {
            Ok(Job::Sleep { ms }) => {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(ms)) => {}
                    // Shutting down: leave the job pending for whoever comes next.
                    () = token.cancelled() => return,
                }
                Job::Sleep { ms }.compute().map_err(|e| e.to_string())
            }
            Ok(job) => job.compute().map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    };

    let result_text = match &outcome {
        Ok(v) => v.to_string(),
        Err(error) => serde_json::json!({ "error": error }).to_string(),
    };
    let (status, stored) = match outcome {
        Ok(_) => ("done", Ok(result_text.clone())),
        Err(e) => ("failed", Err(e)),
    };
    if channel::validate(&target).is_ok() {
        let Ok(raw) = RawValue::from_string(result_text) else {
            tracing::error!(%job_id, "job result is not JSON");
            return;
        };
        let frame =
            envelope::processing_result(&target, job_id, &job_type, status, &raw, &now_rfc3339());
        let once = format!("job:{job_id}");
        match ctx
            .publish(&target, &frame, Some((&once, JOB_TTL_MS)))
            .await
        {
            Ok((offset, _, duplicate)) => {
                tracing::debug!(%job_id, offset, duplicate, "job result published");
            }
            Err(e) => {
                tracing::warn!(%job_id, cause = %e, "cannot publish job result; will retry");
                return;
            }
        }
    } else {
        tracing::warn!(%job_id, target = %target, "job has an invalid target channel; result not published");
    }
    if let Err(e) = ctx.jobs.finish(job_id, &stored).await {
        ctx.redis_failed(e);
        return;
    }
    if let Err(e) = ctx.jobs.ack(entry).await {
        ctx.redis_failed(e);
        return;
    }
    ctx.metrics.jobs_total.with_label_values(&[status]).inc();
    tracing::info!(%job_id, status, "job finished");
}

fn parse(job_type: &str, data: &str) -> Result<Job, JobError> {
    let data: serde_json::Value = serde_json::from_str(data).map_err(|e| JobError::BadData {
        job_type: "stored",
        reason: e.to_string(),
    })?;
    Job::parse(job_type, &data)
}
