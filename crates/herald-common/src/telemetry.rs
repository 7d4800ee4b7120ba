//! Tracing setup: `HERALD_LOG` (or `RUST_LOG`) filter, `HERALD_LOG_FORMAT=json|plain`,
//! and secrets scrubbed from every line before it is written ([`redact`]).

mod redact;

use std::io::Write;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Installs the global subscriber. `filter` is the service's `--log` value.
/// Logs go to stderr so that CLI subcommands can print results on stdout.
pub fn init(filter: &str) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(quiet_redis(&f)).ok())
        .or_else(|| EnvFilter::try_new(quiet_redis(filter)).ok())
        .unwrap_or_else(|| EnvFilter::new(quiet_redis("info")));
    let json = std::env::var("HERALD_LOG_FORMAT").is_ok_and(|v| v == "json");
    // Colour only for a person at a terminal: a log file or pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(RedactingStderr);
    // A second init (tests running several services in one process) is harmless.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// The Redis client logs a line per node connection attempt while a cluster node
/// is down (many a second), which Herald reports once in its own words; it speaks
/// at `error` only, unless the filter names it.
fn quiet_redis(filter: &str) -> String {
    if filter
        .split(',')
        .any(|d| d.trim_start().starts_with("redis"))
    {
        filter.to_owned()
    } else {
        format!("{filter},redis=error")
    }
}

/// Registers the secrets this process was configured with (API and admin keys, the
/// JWT secret): from now on they are replaced by `[redacted]` wherever they would
/// appear in a log line. Call it right after parsing the configuration; `None`s are
/// skipped, as are values shorter than six bytes (which would match ordinary words).
pub fn redact(secrets: &[Option<&str>]) {
    for secret in secrets.iter().flatten() {
        redact::register(secret);
    }
}

/// Stderr, with every line scrubbed of secrets first. The formatter writes an event
/// in one piece, but the writer collects whatever it is given and scrubs it whole
/// when the event is done, so a secret is never split between two writes.
#[derive(Debug, Clone, Copy)]
struct RedactingStderr;

impl<'a> MakeWriter<'a> for RedactingStderr {
    type Writer = RedactingLine;

    fn make_writer(&'a self) -> RedactingLine {
        RedactingLine(Vec::new())
    }
}

/// One event's text on its way to stderr.
#[derive(Debug)]
struct RedactingLine(Vec<u8>);

impl Write for RedactingLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for RedactingLine {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            // One write per event, so concurrent events do not interleave.
            let _ = std::io::stderr().write_all(&redact::scrub(&self.0));
        }
    }
}
