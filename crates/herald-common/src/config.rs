//! Settings every service shares, read from `--flags` or `HERALD_*` environment
//! variables (clap reads both), and the fail-fast path for bad ones.

use std::net::SocketAddr;

use clap::{Args, Parser};

pub const ENV_REDIS_URL: &str = "HERALD_REDIS_URL";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const DEFAULT_REDIS_PREFIX: &str = "herald:";
pub const DEFAULT_LOG: &str = "info";
/// `EX_USAGE`: the exit code for a configuration the service cannot start with.
pub const EXIT_CONFIG: i32 = 64;

/// The settings of SPEC §1 that every service takes.
#[derive(Debug, Clone, Args)]
pub struct CommonConfig {
    /// Redis URL (`redis://[:password@]host:port[/db]`).
    #[arg(long, env = "HERALD_REDIS_URL", default_value = DEFAULT_REDIS_URL)]
    pub redis_url: String,
    /// Prefix of every Redis key and channel this cluster uses.
    #[arg(long, env = "HERALD_REDIS_PREFIX", default_value = DEFAULT_REDIS_PREFIX)]
    pub redis_prefix: String,
    /// Unique id of this node; defaults to the hostname plus a random suffix.
    #[arg(long, env = "HERALD_NODE_ID")]
    pub node_id: Option<String>,
    /// A tracing filter, e.g. `info` or `ws_gateway=debug,info`.
    #[arg(long, env = "HERALD_LOG", default_value = DEFAULT_LOG)]
    pub log: String,
    /// Development mode: fixed dev secrets and permissive origins, with a warning.
    #[arg(long, env = "HERALD_DEV", default_value = "0", num_args = 0..=1, default_missing_value = "1", value_parser = parse_bool_flag)]
    pub dev: bool,
    /// The address other nodes and the monitor use to reach this service's HTTP
    /// endpoints; defaults to the listen address (with 127.0.0.1 for 0.0.0.0).
    #[arg(long, env = "HERALD_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
}

/// Accepts `1/0/true/false/yes/no` so `HERALD_DEV=1` works as the spec writes it.
pub fn parse_bool_flag(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        other => Err(format!("expected 1/0/true/false, got {other:?}")),
    }
}

impl CommonConfig {
    /// Problems a service cannot start with; empty when all is well.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Err(e) = redis::Client::open(self.redis_url.as_str()) {
            out.push(format!(
                "HERALD_REDIS_URL {:?} is not a valid Redis URL: {e}",
                self.redis_url
            ));
        }
        if self.redis_prefix.contains(['{', '}', ' ']) {
            out.push("HERALD_REDIS_PREFIX must not contain braces or spaces".to_owned());
        }
        out
    }

    /// This node's id: the configured one, or hostname + random suffix.
    pub fn node_id(&self, service: &str) -> String {
        if let Some(id) = &self.node_id {
            return id.clone();
        }
        let host = hostname::get()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| service.to_owned());
        let suffix: u32 = rand::random();
        format!("{service}-{host}-{suffix:08x}")
    }

    /// The address to advertise for `listen`.
    pub fn advertise(&self, listen: SocketAddr) -> String {
        if let Some(a) = &self.advertise_addr {
            return a.clone();
        }
        if listen.ip().is_unspecified() {
            format!("127.0.0.1:{}", listen.port())
        } else {
            listen.to_string()
        }
    }
}

/// Parses flags and environment into `T`; on failure prints clap's message and exits
/// with [`EXIT_CONFIG`] (help and version exit 0 as usual).
pub fn parse_or_exit<T: Parser>() -> T {
    match T::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_CONFIG } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    }
}

/// Exits with one clear line per problem, before anything is bound.
pub fn exit_if_problems(service: &str, problems: &[String]) {
    if problems.is_empty() {
        return;
    }
    for p in problems {
        eprintln!("{service}: configuration error: {p}");
    }
    std::process::exit(EXIT_CONFIG);
}

/// Parses a listen address, naming the variable in the error.
pub fn parse_listen(var: &str, value: &str, problems: &mut Vec<String>) -> Option<SocketAddr> {
    match value.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            problems.push(format!(
                "{var} {value:?} is not an address like 0.0.0.0:8080"
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Parser, Debug)]
    struct T {
        #[command(flatten)]
        common: CommonConfig,
    }

    #[test]
    fn defaults_and_problems() {
        let t = T::try_parse_from(["t"]).unwrap();
        assert_eq!(t.common.redis_url, DEFAULT_REDIS_URL);
        assert!(t.common.problems().is_empty());
        let t = T::try_parse_from(["t", "--redis-url", "http://nope", "--dev", "1"]).unwrap();
        assert!(t.common.dev);
        assert_eq!(t.common.problems().len(), 1);
        assert!(t.common.node_id("gw").starts_with("gw-"));
    }
}
