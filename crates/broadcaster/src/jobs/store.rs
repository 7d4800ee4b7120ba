//! Job state and queue, on the engine: [`JobStore`] gives the workers and the API
//! one set of operations, kept in Redis or, on the memory engine, in this process
//! ([`MemoryJobs`](super::memory::MemoryJobs), not durable across restarts).
//!
//! On Redis:
//! - `herald:job:<id>`: a HASH with `status` (`queued|running|done|failed`),
//!   `job_type`, `target_channel`, `data`, `result`, `error`, `attempts`,
//!   `worker`, `created_ms`, `updated_ms`; it expires [`JOB_TTL_MS`] after its
//!   last change.
//! - `herald:jobs`: a Stream whose entries carry only the job id (`id`), read
//!   through the consumer group [`GROUP`]. An entry stays pending until its job's
//!   final state is written, so a worker that dies leaves it for another.

use std::collections::HashMap;

use herald_common::store::Conn;
use redis::{RedisResult, Script};
use serde_json::{Value, json};

use herald_common::engine::Engine;
use herald_common::keys::Keys;
use herald_proto::time::now_ms;

use super::kinds::hex;
pub use super::memory::MemoryJobs;

/// The consumer group every broadcaster's workers read the job stream through.
pub const GROUP: &str = "workers";
/// How long a job's state (and its exactly-once publish marker) is kept.
pub const JOB_TTL_MS: u64 = 24 * 60 * 60 * 1000;
/// Bound on the job stream; finished entries are deleted, so this is only reached
/// when workers are down for a long time.
pub const STREAM_MAXLEN: u64 = 100_000;
/// The stream entry field holding the job id.
const ID_FIELD: &str = "id";

/// Marks a job running unless it already finished. KEYS: job. ARGV: now ms,
/// worker, ttl ms. Returns {-2} for a missing job, {-1} for a finished one, else
/// {attempts, job_type, target_channel, data}.
const START_LUA: &str = r"
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {-2} end
if status == 'done' or status == 'failed' then return {-1} end
redis.call('HSET', KEYS[1], 'status', 'running', 'updated_ms', ARGV[1], 'worker', ARGV[2])
local n = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local f = redis.call('HMGET', KEYS[1], 'job_type', 'target_channel', 'data')
return {n, f[1] or '', f[2] or '', f[3] or 'null'}
";

/// A fresh job id: 128 random bits in hex.
pub fn new_job_id() -> String {
    hex(&rand::random::<[u8; 16]>())
}

/// Whether `s` looks like a job id (so arbitrary paths never become Redis keys).
pub fn is_job_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A job's lifecycle, as the `status` field names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Queued,
    Running,
    Done,
    Failed,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }

    /// Done or failed: a worker that finds it so only acknowledges the entry.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Done | Self::Failed)
    }
}

/// Where jobs live: the Redis of a Redis engine (shared by every broadcaster of
/// the cluster, surviving restarts), or this process's memory on the memory
/// engine. Cheap to clone. Errors only come from Redis.
#[derive(Debug, Clone)]
pub enum JobStore {
    Redis(RedisJobs),
    Memory(MemoryJobs),
}

/// The Redis job store: the connection its requests go on, a client for
/// connections of their own (the workers' blocking reads), and the key names.
#[derive(Clone)]
pub struct RedisJobs {
    pub conn: Conn,
    pub client: herald_common::store::Client,
    pub keys: Keys,
}

impl std::fmt::Debug for RedisJobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisJobs")
    }
}

impl JobStore {
    /// The job store of `engine`: its Redis, or a new, empty in-memory store
    /// (created once per service run, so every worker and handler sees the same).
    pub fn new(engine: &Engine, keys: &Keys) -> Self {
        match engine {
            Engine::Redis(r) => Self::Redis(RedisJobs {
                conn: r.conn.clone(),
                client: r.client.clone(),
                keys: keys.clone(),
            }),
            Engine::Memory(_) => Self::Memory(MemoryJobs::new()),
        }
    }

    /// Records a queued job and queues it for a worker.
    pub async fn submit(
        &self,
        id: &str,
        job_type: &str,
        target_channel: &str,
        data: &Value,
    ) -> RedisResult<()> {
        match self {
            Self::Redis(r) => {
                submit(
                    &mut r.conn.clone(),
                    &r.keys,
                    id,
                    job_type,
                    target_channel,
                    data,
                )
                .await
            }
            Self::Memory(m) => {
                m.submit(id, job_type, target_channel, data);
                Ok(())
            }
        }
    }

    /// The stored job, or `None` if unknown (or expired).
    pub async fn get(&self, id: &str) -> RedisResult<Option<JobRecord>> {
        match self {
            Self::Redis(r) => get(&mut r.conn.clone(), &r.keys, id).await,
            Self::Memory(m) => Ok(m.get(id)),
        }
    }

    /// Marks a job running for `worker` (unless it finished) and loads what running
    /// it needs.
    pub async fn start(&self, id: &str, worker: &str) -> RedisResult<Start> {
        match self {
            Self::Redis(r) => start(&mut r.conn.clone(), &r.keys, id, worker).await,
            Self::Memory(m) => Ok(m.start(id, worker)),
        }
    }

    /// Writes a job's final state: `done` with its result, or `failed` with an error.
    pub async fn finish(&self, id: &str, outcome: &Result<String, String>) -> RedisResult<()> {
        match self {
            Self::Redis(r) => finish(&mut r.conn.clone(), &r.keys, id, outcome).await,
            Self::Memory(m) => {
                m.finish(id, outcome);
                Ok(())
            }
        }
    }

    /// Removes a queue entry for good: its job is finished.
    pub async fn ack(&self, entry: &str) -> RedisResult<()> {
        match self {
            Self::Redis(r) => ack(&mut r.conn.clone(), &r.keys, entry).await,
            Self::Memory(m) => {
                m.ack(entry);
                Ok(())
            }
        }
    }

    /// Resets a pending entry's idle time: "this worker is alive and still on it".
    pub async fn keep_alive(&self, worker: &str, entry: &str) -> RedisResult<()> {
        match self {
            Self::Redis(r) => keep_alive(&mut r.conn.clone(), &r.keys, worker, entry).await,
            Self::Memory(m) => {
                m.keep_alive(worker, entry);
                Ok(())
            }
        }
    }

    /// Makes sure the queue can be read (on Redis, that the consumer group exists).
    pub async fn ensure_group(&self) -> RedisResult<()> {
        match self {
            // From the start: jobs queued while no group existed (a Redis restart)
            // still run.
            Self::Redis(r) => {
                herald_common::store::ensure_group(&mut r.conn.clone(), &r.keys.jobs(), GROUP).await
            }
            // Nothing to create: the memory queue lives as long as the store.
            Self::Memory(_) => Ok(()),
        }
    }

    /// The next new entry for `worker`, waiting up to `block_ms`.
    pub async fn read_new(&self, worker: &str, block_ms: u64) -> RedisResult<Option<Entry>> {
        match self {
            Self::Redis(r) => read_new(&mut r.conn.clone(), &r.keys, worker, block_ms).await,
            Self::Memory(m) => Ok(m.read_new(worker, block_ms).await),
        }
    }

    /// Claims for `worker` one entry pending longer than `idle_ms`, scanning from
    /// `cursor`; returns the next cursor (`0-0` when the scan is complete) and the entry.
    pub async fn auto_claim(
        &self,
        worker: &str,
        idle_ms: u64,
        cursor: &str,
    ) -> RedisResult<(String, Option<Entry>)> {
        match self {
            Self::Redis(r) => {
                auto_claim(&mut r.conn.clone(), &r.keys, worker, idle_ms, cursor).await
            }
            Self::Memory(m) => Ok(m.auto_claim(worker, idle_ms, cursor)),
        }
    }
}

// === Redis ===

/// Records a queued job and appends it to the stream.
async fn submit(
    conn: &mut Conn,
    keys: &Keys,
    id: &str,
    job_type: &str,
    target_channel: &str,
    data: &Value,
) -> RedisResult<()> {
    let key = keys.job(id);
    let now = now_ms();
    // Two keys in different cluster slots, so not one transaction: the state is
    // written first, so a worker never finds a stream entry without its job.
    redis::pipe()
        .cmd("HSET")
        .arg(&key)
        .arg("status")
        .arg("queued")
        .arg("job_type")
        .arg(job_type)
        .arg("target_channel")
        .arg(target_channel)
        .arg("data")
        .arg(data.to_string())
        .arg("attempts")
        .arg(0)
        .arg("created_ms")
        .arg(now)
        .arg("updated_ms")
        .arg(now)
        .ignore()
        .cmd("PEXPIRE")
        .arg(&key)
        .arg(JOB_TTL_MS)
        .ignore()
        .query_async::<()>(conn)
        .await?;
    redis::cmd("XADD")
        .arg(keys.jobs())
        .arg("MAXLEN")
        .arg("~")
        .arg(STREAM_MAXLEN)
        .arg("*")
        .arg(ID_FIELD)
        .arg(id)
        .query_async::<String>(conn)
        .await?;
    Ok(())
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRecord {
    pub job_type: String,
    pub status: String,
    pub target_channel: String,
    /// The result as JSON text.
    pub result: Option<String>,
    pub error: Option<String>,
    pub attempts: u64,
    pub created_ms: u64,
    pub updated_ms: u64,
}

impl JobRecord {
    fn from_hash(mut h: HashMap<String, String>) -> Option<Self> {
        let num = |v: Option<String>| v.and_then(|s| s.parse().ok()).unwrap_or(0);
        Some(Self {
            status: h.remove("status")?,
            job_type: h.remove("job_type").unwrap_or_default(),
            target_channel: h.remove("target_channel").unwrap_or_default(),
            result: h.remove("result"),
            error: h.remove("error"),
            attempts: num(h.remove("attempts")),
            created_ms: num(h.remove("created_ms")),
            updated_ms: num(h.remove("updated_ms")),
        })
    }

    /// The `GET /v1/jobs/{id}` body.
    pub fn to_json(&self, id: &str) -> Value {
        let mut v = json!({
            "job_id": id,
            "job_type": self.job_type,
            "status": self.status,
            "target_channel": self.target_channel,
            "attempts": self.attempts,
            "created_ms": self.created_ms,
            "updated_ms": self.updated_ms,
        });
        if let Some(r) = &self.result {
            v["result"] = serde_json::from_str(r).unwrap_or(Value::Null);
        }
        if let Some(e) = &self.error {
            v["error"] = Value::String(e.clone());
        }
        v
    }
}

/// The stored job, or `None` if unknown (or expired).
async fn get(conn: &mut Conn, keys: &Keys, id: &str) -> RedisResult<Option<JobRecord>> {
    let h: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(keys.job(id))
        .query_async(conn)
        .await?;
    Ok(JobRecord::from_hash(h))
}

/// What a worker finds when it starts a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// No such job (expired): drop the stream entry.
    Missing,
    /// Already done or failed (a worker died before acknowledging): just acknowledge.
    Finished,
    /// Run it; this is attempt number `attempts`.
    Run {
        attempts: u64,
        job_type: String,
        target_channel: String,
        data: String,
    },
}

/// Marks a job running (unless it finished) and loads what running it needs.
async fn start(conn: &mut Conn, keys: &Keys, id: &str, worker: &str) -> RedisResult<Start> {
    let reply: Vec<redis::Value> = Script::new(START_LUA)
        .key(keys.job(id))
        .arg(now_ms())
        .arg(worker)
        .arg(JOB_TTL_MS)
        .invoke_async(conn)
        .await?;
    let mut it = reply.into_iter();
    let code: i64 = match it.next() {
        Some(v) => redis::from_redis_value(v)?,
        None => return Ok(Start::Missing),
    };
    Ok(match code {
        -2 => Start::Missing,
        -1 => Start::Finished,
        n => {
            let mut next = || -> RedisResult<String> {
                match it.next() {
                    Some(v) => Ok(redis::from_redis_value(v)?),
                    None => Ok(String::new()),
                }
            };
            Start::Run {
                attempts: u64::try_from(n).unwrap_or(0),
                job_type: next()?,
                target_channel: next()?,
                data: next()?,
            }
        }
    })
}

/// Writes a job's final state: `done` with its result, or `failed` with an error.
async fn finish(
    conn: &mut Conn,
    keys: &Keys,
    id: &str,
    outcome: &Result<String, String>,
) -> RedisResult<()> {
    let key = keys.job(id);
    let mut cmd = redis::cmd("HSET");
    cmd.arg(&key).arg("updated_ms").arg(now_ms());
    match outcome {
        Ok(result) => cmd.arg("status").arg("done").arg("result").arg(result),
        Err(error) => cmd.arg("status").arg("failed").arg("error").arg(error),
    };
    redis::pipe()
        .add_command(cmd)
        .ignore()
        .cmd("PEXPIRE")
        .arg(&key)
        .arg(JOB_TTL_MS)
        .ignore()
        .query_async(conn)
        .await
}

/// Acknowledges and deletes a stream entry: the job is finished for good.
async fn ack(conn: &mut Conn, keys: &Keys, entry: &str) -> RedisResult<()> {
    redis::pipe()
        .cmd("XACK")
        .arg(keys.jobs())
        .arg(GROUP)
        .arg(entry)
        .ignore()
        .cmd("XDEL")
        .arg(keys.jobs())
        .arg(entry)
        .ignore()
        .query_async(conn)
        .await
}

/// Resets a pending entry's idle time: "this worker is alive and still on it".
async fn keep_alive(conn: &mut Conn, keys: &Keys, worker: &str, entry: &str) -> RedisResult<()> {
    redis::cmd("XCLAIM")
        .arg(keys.jobs())
        .arg(GROUP)
        .arg(worker)
        .arg(0)
        .arg(entry)
        .arg("JUSTID")
        .query_async::<redis::Value>(conn)
        .await
        .map(drop)
}

/// A stream entry: its id, and the job id it carries (`None` if malformed).
pub type Entry = (String, Option<String>);

fn entry(e: &redis::streams::StreamId) -> Entry {
    (e.id.clone(), e.get::<String>(ID_FIELD))
}

/// The next new entry for `worker`, waiting up to `block_ms`.
async fn read_new(
    conn: &mut Conn,
    keys: &Keys,
    worker: &str,
    block_ms: u64,
) -> RedisResult<Option<Entry>> {
    let reply: Option<redis::streams::StreamReadReply> = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(GROUP)
        .arg(worker)
        .arg("COUNT")
        .arg(1)
        .arg("BLOCK")
        .arg(block_ms)
        .arg("STREAMS")
        .arg(keys.jobs())
        .arg(">")
        .query_async(conn)
        .await?;
    Ok(reply.and_then(|r| {
        r.keys
            .into_iter()
            .flat_map(|k| k.ids)
            .next()
            .map(|e| entry(&e))
    }))
}

/// Claims for `worker` one entry pending longer than `idle_ms`, scanning from
/// `cursor`; returns the next cursor (`0-0` when the scan is complete) and the entry.
async fn auto_claim(
    conn: &mut Conn,
    keys: &Keys,
    worker: &str,
    idle_ms: u64,
    cursor: &str,
) -> RedisResult<(String, Option<Entry>)> {
    let reply: redis::streams::StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
        .arg(keys.jobs())
        .arg(GROUP)
        .arg(worker)
        .arg(idle_ms)
        .arg(cursor)
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    let claimed = reply.claimed.first().map(entry);
    Ok((reply.next_stream_id, claimed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids() {
        let id = new_job_id();
        assert!(is_job_id(&id), "{id}");
        assert_ne!(id, new_job_id());
        assert!(!is_job_id("../../etc"));
        assert!(!is_job_id(&id.to_uppercase()));
    }

    #[test]
    fn record_json() {
        let h: HashMap<String, String> = [
            ("status", "done"),
            ("job_type", "sleep"),
            ("target_channel", "jobs"),
            ("result", r#"{"slept_ms":5}"#),
            ("attempts", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let r = JobRecord::from_hash(h).unwrap();
        let v = r.to_json("abc");
        assert_eq!(v["job_id"], "abc");
        assert_eq!(v["status"], "done");
        assert_eq!(v["result"], json!({"slept_ms": 5}));
        assert!(v.get("error").is_none());
        assert!(JobRecord::from_hash(HashMap::new()).is_none());
    }
}
