//! Results: readings of the target process from /proc, and the human or JSON report.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// Clock ticks per second for /proc/<pid>/stat (USER_HZ is 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// CPU time (user + system) and RSS of a process.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ProcSample {
    pub(crate) cpu_s: f64,
    pub(crate) rss_bytes: u64,
}

/// Reads /proc/<pid>; `None` if the process is not there.
pub(crate) fn sample(pid: Option<u32>) -> Option<ProcSample> {
    let pid = pid?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some(ProcSample {
        cpu_s: (utime + stime) / TICKS_PER_SEC,
        rss_bytes: rss_kb * 1024,
    })
}

/// CPU microseconds per item between two samples of one process, rounded.
pub(crate) fn cpu_us_per(
    before: Option<ProcSample>,
    after: Option<ProcSample>,
    n: u64,
) -> Option<f64> {
    match (before, after) {
        (Some(b), Some(a)) if n > 0 => Some(((a.cpu_s - b.cpu_s) * 1e6 / n as f64).round()),
        _ => None,
    }
}

/// Latency percentiles in milliseconds.
pub(crate) fn latency_json(h: &Histogram<u64>) -> Value {
    let ms = |ns: u64| (ns as f64 / 1e6 * 1000.0).round() / 1000.0;
    if h.is_empty() {
        return Value::Null;
    }
    json!({
        "p50": ms(h.value_at_quantile(0.50)),
        "p90": ms(h.value_at_quantile(0.90)),
        "p99": ms(h.value_at_quantile(0.99)),
        "p99_9": ms(h.value_at_quantile(0.999)),
        "max": ms(h.max()),
    })
}

/// Prints `report` as a table (or JSON).
pub(crate) fn print(report: &Value, json_out: bool) {
    if json_out {
        println!("{report}");
        return;
    }
    fn walk(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            other => out.push((prefix.to_owned(), other.to_string())),
        }
    }
    let mut rows = Vec::new();
    walk("", report, &mut rows);
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        println!("{k:<width$}  {v}");
    }
}

/// A progress line on stderr, overwritten in place.
pub(crate) fn progress(line: &str) {
    eprint!("\r\x1b[2K{line}");
}

pub(crate) fn per_sec(n: u64, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        (n as f64 / d.as_secs_f64()).round()
    }
}
