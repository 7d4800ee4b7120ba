//! The job store of the memory engine: job states and the queue in this process,
//! with the meaning the Redis store gives them ([`super::store`]).
//!
//! **Not durable across restarts**: queued, running and finished jobs live only as
//! long as the process. On Redis a job submitted before a restart still runs after
//! it; here it is gone (and `GET /v1/jobs/{id}` answers 404 for it).
//!
//! Same semantics otherwise, so the one worker loop runs on either store:
//! - a job's state expires [`JOB_TTL_MS`] after its last change;
//! - the queue is a log of entries carrying the job id, delivered once each to the
//!   reader that asks for new ones (`XREADGROUP >`), then pending (owned by that
//!   worker, with an idle time) until acknowledged;
//! - an entry pending longer than the claim idle time is taken over by the next
//!   claim scan (`XAUTOCLAIM`), and a worker's keep-alive resets its idle time
//!   (`XCLAIM` to itself);
//! - starting a job counts an attempt; a finished job is only acknowledged;
//! - the log is bounded at [`STREAM_MAXLEN`] entries, dropping the oldest.
//!
//! Within one process the only worker that can die is a cancelled one (at
//! shutdown, which loses the store anyway), so reclaiming rarely has anything to
//! do here; it is kept so the worker needs no second path.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Notify;
use tokio::time::Instant;

use herald_proto::time::now_ms;

use super::store::{Entry, JOB_TTL_MS, JobRecord, JobStatus, STREAM_MAXLEN, Start};

/// How often expired job states are swept (they are also dropped when read).
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// This process's jobs: see the module docs. Cheap to clone (one shared state).
#[derive(Debug, Clone, Default)]
pub struct MemoryJobs(Arc<Shared>);

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// Woken on every submit, for readers waiting for a new entry.
    queued: Notify,
}

#[derive(Debug, Default)]
struct State {
    jobs: HashMap<String, StoredJob>,
    /// The queue by entry number (the entry id is `<n>-0`), oldest first.
    entries: BTreeMap<u64, QueueEntry>,
    /// The last entry number given out.
    last_entry: u64,
    /// The last entry delivered as new: later ones are the new ones.
    last_delivered: u64,
    last_sweep: Option<Instant>,
}

#[derive(Debug)]
struct StoredJob {
    status: JobStatus,
    job_type: String,
    target_channel: String,
    /// The submitted data, as JSON text.
    data: String,
    result: Option<String>,
    error: Option<String>,
    attempts: u64,
    created_ms: u64,
    updated_ms: u64,
    expires: Instant,
}

#[derive(Debug)]
struct QueueEntry {
    job_id: String,
    /// Since when its worker last showed it is on it (delivery, claim or
    /// keep-alive); `None` until it is delivered. Which worker holds it is not
    /// kept: nothing reads it.
    pending_since: Option<Instant>,
}

fn job_expiry(now: Instant) -> Instant {
    now + Duration::from_millis(JOB_TTL_MS)
}

fn entry_id(n: u64) -> String {
    format!("{n}-0")
}

/// The entry number of an id or cursor (`<n>-<seq>`); `None` if it is not one.
fn entry_number(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

impl MemoryJobs {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every change is complete before the lock is released, so a panic
        // elsewhere cannot leave the state half-written.
        self.0.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a queued job and appends it to the queue.
    pub fn submit(&self, id: &str, job_type: &str, target_channel: &str, data: &Value) {
        let now = Instant::now();
        let ms = now_ms();
        {
            let mut st = self.state();
            st.sweep(now);
            st.jobs.insert(
                id.to_owned(),
                StoredJob {
                    status: JobStatus::Queued,
                    job_type: job_type.to_owned(),
                    target_channel: target_channel.to_owned(),
                    data: data.to_string(),
                    result: None,
                    error: None,
                    attempts: 0,
                    created_ms: ms,
                    updated_ms: ms,
                    expires: job_expiry(now),
                },
            );
            st.last_entry += 1;
            let n = st.last_entry;
            st.entries.insert(
                n,
                QueueEntry {
                    job_id: id.to_owned(),
                    pending_since: None,
                },
            );
            while st.entries.len() as u64 > STREAM_MAXLEN {
                st.entries.pop_first();
            }
        }
        self.0.queued.notify_waiters();
    }

    /// The stored job, or `None` if unknown (or expired).
    pub fn get(&self, id: &str) -> Option<JobRecord> {
        let mut st = self.state();
        let job = st.live_job(id, Instant::now())?;
        Some(JobRecord {
            job_type: job.job_type.clone(),
            status: job.status.as_str().to_owned(),
            target_channel: job.target_channel.clone(),
            result: job.result.clone(),
            error: job.error.clone(),
            attempts: job.attempts,
            created_ms: job.created_ms,
            updated_ms: job.updated_ms,
        })
    }

    /// Marks a job running (unless it finished), counting an attempt. The worker
    /// is not recorded: nothing reads it back.
    pub fn start(&self, id: &str, _worker: &str) -> Start {
        let now = Instant::now();
        let mut st = self.state();
        let Some(job) = st.live_job(id, now) else {
            return Start::Missing;
        };
        if job.status.is_final() {
            return Start::Finished;
        }
        job.status = JobStatus::Running;
        job.updated_ms = now_ms();
        job.attempts += 1;
        job.expires = job_expiry(now);
        Start::Run {
            attempts: job.attempts,
            job_type: job.job_type.clone(),
            target_channel: job.target_channel.clone(),
            data: job.data.clone(),
        }
    }

    /// Writes a job's final state: `done` with its result, or `failed` with an error.
    pub fn finish(&self, id: &str, outcome: &Result<String, String>) {
        let now = Instant::now();
        let ms = now_ms();
        let mut st = self.state();
        // Drops an expired state first: as on Redis (an HSET), a job that expired
        // while it ran comes back with only its final state.
        st.live_job(id, now);
        let job = st.jobs.entry(id.to_owned()).or_insert_with(|| StoredJob {
            status: JobStatus::Queued,
            job_type: String::new(),
            target_channel: String::new(),
            data: String::new(),
            result: None,
            error: None,
            attempts: 0,
            created_ms: 0,
            updated_ms: ms,
            expires: now,
        });
        match outcome {
            Ok(result) => {
                job.status = JobStatus::Done;
                job.result = Some(result.clone());
            }
            Err(error) => {
                job.status = JobStatus::Failed;
                job.error = Some(error.clone());
            }
        }
        job.updated_ms = ms;
        job.expires = job_expiry(now);
    }

    /// Removes an entry from the queue: its job is finished for good.
    pub fn ack(&self, entry: &str) {
        if let Some(n) = entry_number(entry) {
            self.state().entries.remove(&n);
        }
    }

    /// Resets a pending entry's idle time (an entry not pending is left alone).
    pub fn keep_alive(&self, _worker: &str, entry: &str) {
        let Some(n) = entry_number(entry) else { return };
        let mut st = self.state();
        if let Some(since) = st
            .entries
            .get_mut(&n)
            .and_then(|e| e.pending_since.as_mut())
        {
            *since = Instant::now();
        }
    }

    /// The next new entry, waiting up to `block_ms` (0: until there is one, as
    /// Redis's `BLOCK 0`).
    pub async fn read_new(&self, _worker: &str, block_ms: u64) -> Option<Entry> {
        let deadline = (block_ms > 0).then(|| Instant::now() + Duration::from_millis(block_ms));
        loop {
            // Registered before looking, so a submit in between still wakes us.
            let queued = self.0.queued.notified();
            tokio::pin!(queued);
            queued.as_mut().enable();
            if let Some(entry) = self.state().take_new(Instant::now()) {
                return Some(entry);
            }
            match deadline {
                Some(at) => {
                    if tokio::time::timeout_at(at, queued).await.is_err() {
                        return None;
                    }
                }
                None => queued.await,
            }
        }
    }

    /// Claims one entry pending for at least `idle_ms`, scanning from `cursor`;
    /// returns the next cursor (`0-0` when the scan is complete) and the entry.
    pub fn auto_claim(&self, _worker: &str, idle_ms: u64, cursor: &str) -> (String, Option<Entry>) {
        let now = Instant::now();
        let idle = Duration::from_millis(idle_ms);
        let from = entry_number(cursor).unwrap_or(0);
        let mut st = self.state();
        let mut pending = st
            .entries
            .range_mut(from..)
            .filter(|(_, e)| e.pending_since.is_some());
        let claimed = pending.find_map(|(n, e)| {
            let since = e.pending_since.as_mut()?;
            if now.saturating_duration_since(*since) < idle {
                return None;
            }
            *since = now;
            Some((entry_id(*n), Some(e.job_id.clone())))
        });
        let next = match (&claimed, pending.next()) {
            (Some(_), Some((n, _))) => entry_id(*n),
            _ => entry_id(0),
        };
        (next, claimed)
    }
}

impl State {
    /// The job `id` unless it expired (an expired one is dropped).
    fn live_job(&mut self, id: &str, now: Instant) -> Option<&mut StoredJob> {
        if self.jobs.get(id).is_some_and(|j| j.expires <= now) {
            self.jobs.remove(id);
        }
        self.jobs.get_mut(id)
    }

    /// Delivers the oldest entry never delivered, making it pending.
    fn take_new(&mut self, now: Instant) -> Option<Entry> {
        let (&n, entry) = self.entries.range_mut(self.last_delivered + 1..).next()?;
        self.last_delivered = n;
        entry.pending_since = Some(now);
        Some((entry_id(n), Some(entry.job_id.clone())))
    }

    /// Drops expired job states, at most once per [`SWEEP_EVERY`].
    fn sweep(&mut self, now: Instant) {
        if self.last_sweep.is_some_and(|t| now < t + SWEEP_EVERY) {
            return;
        }
        self.last_sweep = Some(now);
        self.jobs.retain(|_, j| j.expires > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: &str = "node-1";

    fn submit(jobs: &MemoryJobs, id: &str) {
        jobs.submit(id, "sleep", "results", &serde_json::json!({"ms": 1}));
    }

    fn run(attempts: u64) -> Start {
        Start::Run {
            attempts,
            job_type: "sleep".to_owned(),
            target_channel: "results".to_owned(),
            data: r#"{"ms":1}"#.to_owned(),
        }
    }

    #[tokio::test]
    async fn enqueue_claim_complete() {
        let jobs = MemoryJobs::new();
        submit(&jobs, "a");
        let queued = jobs.get("a").unwrap();
        assert_eq!(
            (
                queued.status.as_str(),
                queued.attempts,
                queued.job_type.as_str()
            ),
            ("queued", 0, "sleep")
        );
        assert!(queued.created_ms > 0 && queued.created_ms == queued.updated_ms);

        let (entry, id) = jobs.read_new(W, 10).await.unwrap();
        assert_eq!(id.as_deref(), Some("a"));
        // Delivered once: a second read finds nothing new.
        assert!(jobs.read_new(W, 10).await.is_none());

        assert_eq!(jobs.start("a", W), run(1));
        assert_eq!(jobs.get("a").unwrap().status, "running");
        jobs.finish("a", &Ok(r#"{"slept_ms":1}"#.to_owned()));
        jobs.ack(&entry);
        let done = jobs.get("a").unwrap();
        assert_eq!(done.status, "done");
        assert_eq!(done.result.as_deref(), Some(r#"{"slept_ms":1}"#));
        assert!(done.error.is_none());
        assert_eq!(done.to_json("a")["result"]["slept_ms"], 1);
        // Acknowledged: nothing left to claim, however long we wait.
        assert_eq!(jobs.auto_claim(W, 0, "0-0"), ("0-0".to_owned(), None));
        // A finished job is only acknowledged if it comes round again.
        assert_eq!(jobs.start("a", W), Start::Finished);

        jobs.finish("b", &Err("boom".to_owned()));
        let failed = jobs.get("b").unwrap();
        assert_eq!(
            (failed.status.as_str(), failed.error.as_deref()),
            ("failed", Some("boom"))
        );
        assert_eq!(jobs.start("nope", W), Start::Missing);
        assert!(jobs.get("nope").is_none());
    }

    #[tokio::test]
    async fn entries_are_delivered_in_order_and_wake_a_waiting_reader() {
        let jobs = MemoryJobs::new();
        submit(&jobs, "a");
        submit(&jobs, "b");
        let first = jobs.read_new(W, 10).await.unwrap();
        let second = jobs.read_new(W, 10).await.unwrap();
        assert_eq!(
            (first.1.as_deref(), second.1.as_deref()),
            (Some("a"), Some("b"))
        );
        assert!(entry_number(&first.0) < entry_number(&second.0));

        let reader = tokio::spawn({
            let jobs = jobs.clone();
            async move { jobs.read_new(W, 10_000).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        submit(&jobs, "c");
        let got = tokio::time::timeout(Duration::from_secs(2), reader)
            .await
            .expect("the reader was woken")
            .unwrap();
        assert_eq!(got.unwrap().1.as_deref(), Some("c"));
    }

    #[tokio::test]
    async fn an_abandoned_job_is_claimed_and_retried() {
        let jobs = MemoryJobs::new();
        submit(&jobs, "a");
        let (entry, _) = jobs.read_new(W, 10).await.unwrap();
        assert_eq!(jobs.start("a", W), run(1));

        // Not idle long enough yet: the scan completes without a claim.
        assert_eq!(
            jobs.auto_claim("node-2", 60_000, "0-0"),
            ("0-0".to_owned(), None)
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
        // The worker's keep-alive keeps its job from being taken over.
        jobs.keep_alive(W, &entry);
        assert_eq!(jobs.auto_claim("node-2", 100, "0-0").1, None);

        // Its worker went quiet: another takes the entry and runs attempt 2.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let (next, claimed) = jobs.auto_claim("node-2", 100, "0-0");
        assert_eq!(next, "0-0");
        assert_eq!(claimed, Some((entry.clone(), Some("a".to_owned()))));
        // Claiming resets the idle time.
        assert_eq!(jobs.auto_claim("node-3", 100, "0-0").1, None);
        assert_eq!(jobs.start("a", "node-2"), run(2));
        assert_eq!(jobs.get("a").unwrap().attempts, 2);
        jobs.finish("a", &Ok("1".to_owned()));
        jobs.ack(&entry);
        assert_eq!(jobs.get("a").unwrap().status, "done");
    }

    #[tokio::test]
    async fn a_claim_scan_moves_on_with_its_cursor() {
        let jobs = MemoryJobs::new();
        for id in ["a", "b", "c"] {
            submit(&jobs, id);
            jobs.read_new(W, 10).await.unwrap();
        }
        // Never delivered entries are not pending, so never claimed.
        submit(&jobs, "d");
        tokio::time::sleep(Duration::from_millis(10)).await;
        let (cursor, first) = jobs.auto_claim("node-2", 5, "0-0");
        assert_eq!(first.unwrap().1.as_deref(), Some("a"));
        assert_ne!(cursor, "0-0");
        let (cursor, second) = jobs.auto_claim("node-2", 5, &cursor);
        assert_eq!(second.unwrap().1.as_deref(), Some("b"));
        let (cursor, third) = jobs.auto_claim("node-2", 5, &cursor);
        assert_eq!(third.unwrap().1.as_deref(), Some("c"));
        assert_eq!(cursor, "0-0");
        assert_eq!(jobs.read_new(W, 10).await.unwrap().1.as_deref(), Some("d"));
    }

    #[test]
    fn job_states_expire() {
        let jobs = MemoryJobs::new();
        submit(&jobs, "a");
        jobs.state().jobs.get_mut("a").unwrap().expires = Instant::now();
        assert!(jobs.get("a").is_none());
        assert_eq!(jobs.start("a", W), Start::Missing);
    }
}
