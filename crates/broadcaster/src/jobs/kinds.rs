//! The job types and what they compute. Pure: no I/O, except that `sleep` is
//! carried out by the worker, which can cancel it.

use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The longest a `sleep` job may sleep, in ms.
pub const MAX_SLEEP_MS: u64 = 60_000;
/// The most numbers one `data_processing` job takes.
pub const MAX_VALUES: usize = 100_000;

/// Why a job cannot be accepted or did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    #[error("unknown job_type {0:?} (expected data_processing, file_operation or sleep)")]
    UnknownType(String),
    #[error("invalid data for {job_type}: {reason}")]
    BadData {
        job_type: &'static str,
        reason: String,
    },
    /// The job was valid but could not produce a result.
    #[error("{0}")]
    Failed(String),
}

/// A parsed, runnable job.
#[derive(Debug, Clone, PartialEq)]
pub enum Job {
    /// Statistics over numbers.
    DataProcessing(Vec<f64>),
    FileOperation {
        op: FileOp,
        content: String,
    },
    /// Waits, then reports how long: lets tests and operators exercise the
    /// queue's failover with a job that is still running when its worker dies.
    Sleep {
        ms: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileOp {
    Checksum,
    WordCount,
    LineCount,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumbersIn {
    Plain(Vec<f64>),
    Wrapped { values: Vec<f64> },
}

#[derive(Deserialize)]
struct FileIn {
    operation: FileOp,
    content: String,
}

#[derive(Deserialize)]
struct SleepIn {
    ms: u64,
}

impl Job {
    /// Parses `data` for `job_type`: every mistake detectable before running is caught here.
    pub fn parse(job_type: &str, data: &Value) -> Result<Self, JobError> {
        match job_type {
            "data_processing" => {
                let bad = |reason: String| JobError::BadData {
                    job_type: "data_processing",
                    reason,
                };
                let values = match serde_json::from_value::<NumbersIn>(data.clone()) {
                    Ok(NumbersIn::Plain(v) | NumbersIn::Wrapped { values: v }) => v,
                    Err(_) => {
                        return Err(bad(
                            "expected an array of numbers or {\"values\": [numbers]}".to_owned(),
                        ));
                    }
                };
                if values.len() > MAX_VALUES {
                    return Err(bad(format!("at most {MAX_VALUES} values")));
                }
                Ok(Self::DataProcessing(values))
            }
            "file_operation" => {
                let f = serde_json::from_value::<FileIn>(data.clone()).map_err(|_| {
                    JobError::BadData {
                        job_type: "file_operation",
                        reason: "expected {\"operation\": \"checksum\"|\"word_count\"|\"line_count\", \"content\": string}".to_owned(),
                    }
                })?;
                Ok(Self::FileOperation {
                    op: f.operation,
                    content: f.content,
                })
            }
            "sleep" => {
                let s = serde_json::from_value::<SleepIn>(data.clone())
                    .ok()
                    .filter(|s| s.ms <= MAX_SLEEP_MS)
                    .ok_or_else(|| JobError::BadData {
                        job_type: "sleep",
                        reason: format!("expected {{\"ms\": 0..={MAX_SLEEP_MS}}}"),
                    })?;
                Ok(Self::Sleep { ms: s.ms })
            }
            other => Err(JobError::UnknownType(other.to_owned())),
        }
    }

    /// The result of a job that needs no waiting (`sleep` is the worker's business).
    pub fn compute(&self) -> Result<Value, JobError> {
        match self {
            Self::DataProcessing(values) => stats(values),
            Self::FileOperation { op, content } => Ok(file_op(*op, content)),
            Self::Sleep { ms } => Ok(json!({ "slept_ms": ms })),
        }
    }
}

fn stats(values: &[f64]) -> Result<Value, JobError> {
    let count = values.len();
    let sum: f64 = values.iter().sum();
    if !sum.is_finite() {
        // Inputs are finite (JSON has no infinities) but their sum may not be.
        return Err(JobError::Failed(
            "the sum of the values overflows a 64-bit float".to_owned(),
        ));
    }
    if count == 0 {
        return Ok(json!({"count": 0, "sum": 0.0, "mean": null, "min": null, "max": null}));
    }
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    #[allow(
        clippy::cast_precision_loss,
        reason = "count is at most MAX_VALUES, exact in an f64"
    )]
    let mean = sum / count as f64;
    Ok(json!({"count": count, "sum": sum, "mean": mean, "min": min, "max": max}))
}

fn file_op(op: FileOp, content: &str) -> Value {
    match op {
        FileOp::Checksum => {
            let digest = Sha256::digest(content.as_bytes());
            json!({"algorithm": "sha256", "checksum": hex(&digest), "bytes": content.len()})
        }
        FileOp::WordCount => json!({"words": content.split_whitespace().count()}),
        FileOp::LineCount => json!({"lines": content.lines().count()}),
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(job_type: &str, data: Value, expected: Result<Value, &str>) {
        let got = Job::parse(job_type, &data).and_then(|j| j.compute());
        match (got, expected) {
            (Ok(v), Ok(e)) => assert_eq!(v, e),
            (Err(err), Err(fragment)) => {
                assert!(err.to_string().contains(fragment), "{err} !~ {fragment}");
            }
            (got, expected) => panic!("got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn data_processing() {
        let r = json!({"count": 4, "sum": 10.0, "mean": 2.5, "min": 1.0, "max": 4.0});
        check("data_processing", json!([1, 2, 3, 4]), Ok(r.clone()));
        check("data_processing", json!({"values": [4, 3, 2, 1]}), Ok(r));
        check(
            "data_processing",
            json!([-1.5]),
            Ok(json!({"count": 1, "sum": -1.5, "mean": -1.5, "min": -1.5, "max": -1.5})),
        );
        check(
            "data_processing",
            json!([]),
            Ok(json!({"count": 0, "sum": 0.0, "mean": null, "min": null, "max": null})),
        );
        check("data_processing", json!([1, "x"]), Err("array of numbers"));
        check("data_processing", json!("1,2"), Err("array of numbers"));
        check("data_processing", json!([1e308, 1e308]), Err("overflows"));
    }

    #[test]
    fn file_operation() {
        check(
            "file_operation",
            json!({"operation": "checksum", "content": "abc"}),
            Ok(json!({
                "algorithm": "sha256",
                "checksum": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
                "bytes": 3
            })),
        );
        check(
            "file_operation",
            json!({"operation": "word_count", "content": " hello  brave\nnew world "}),
            Ok(json!({"words": 4})),
        );
        check(
            "file_operation",
            json!({"operation": "line_count", "content": "a\nb\r\nc"}),
            Ok(json!({"lines": 3})),
        );
        check(
            "file_operation",
            json!({"operation": "line_count", "content": ""}),
            Ok(json!({"lines": 0})),
        );
        check(
            "file_operation",
            json!({"operation": "delete", "content": "x"}),
            Err("operation"),
        );
        check(
            "file_operation",
            json!({"operation": "checksum"}),
            Err("content"),
        );
    }

    #[test]
    fn sleep_and_unknown() {
        check("sleep", json!({"ms": 5}), Ok(json!({"slept_ms": 5})));
        check("sleep", json!({"ms": 60_001}), Err("ms"));
        check("sleep", json!({"ms": -1}), Err("ms"));
        check("sleep", json!(null), Err("ms"));
        check("resize_image", json!({}), Err("unknown job_type"));
        assert_eq!(
            Job::parse("nope", &json!(1)),
            Err(JobError::UnknownType("nope".to_owned()))
        );
    }

    #[test]
    fn hex_is_lowercase_and_padded() {
        assert_eq!(hex(&[0, 1, 0xab, 0xff]), "0001abff");
    }
}
