//! Settings every service shares, read from `--flags` or `HERALD_*` environment
//! variables (clap reads both), and the fail-fast path for bad ones: every problem
//! at once, one line each, naming the variable.

use std::ffi::{OsStr, OsString};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::{ArgMatches, ValueSource};
use clap::{Arg, Args, Command, Parser};

pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const DEFAULT_REDIS_PREFIX: &str = "herald:";
pub const DEFAULT_LOG: &str = "info";
/// The variable of every service's listen address.
pub const ENV_LISTEN: &str = "HERALD_LISTEN";
/// `EX_USAGE`: the exit code for a configuration the service cannot start with.
pub const EXIT_CONFIG: i32 = 64;

mod errors;

pub use errors::{ConfigErrors, load, load_from};

/// The settings of docs/protocol.md that every service takes.
#[derive(Debug, Clone, Args)]
pub struct CommonConfig {
    /// Redis URL (`redis://[:password@]host:port[/db]`); default
    /// `redis://127.0.0.1:6379`.
    #[arg(long, env = "HERALD_REDIS_URL")]
    pub redis_url: Option<String>,
    /// A Redis Cluster instead of one Redis: its seed nodes, comma-separated
    /// (`redis://10.0.0.1:7000,redis://10.0.0.2:7000`).
    #[arg(long, env = "HERALD_REDIS_CLUSTER")]
    pub redis_cluster: Option<String>,
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

/// Accepts `1/0/true/false/yes/no` so `HERALD_DEV=1` works as docs/protocol.md writes it.
pub fn parse_bool_flag(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        other => Err(format!("expected 1/0/true/false, got {other:?}")),
    }
}

impl CommonConfig {
    /// Adds the problems of these settings to `out`.
    pub fn check(&self, out: &mut ConfigErrors) {
        if self.single_url().is_some() && self.cluster_seeds().is_some() {
            out.push(
                "HERALD_REDIS_URL and HERALD_REDIS_CLUSTER are both set: set HERALD_REDIS_URL for \
                 one Redis or HERALD_REDIS_CLUSTER for a Redis Cluster, not both",
            );
        }
        match self.cluster_seeds() {
            Some(seeds) => check_url_list("HERALD_REDIS_CLUSTER", seeds, out),
            None => check_url("HERALD_REDIS_URL", self.redis_url(), out),
        }
        if self.redis_prefix.contains(['{', '}', ' ']) {
            out.push("HERALD_REDIS_PREFIX must not contain braces or spaces");
        }
    }

    /// The one Redis's URL (the default when none is set).
    pub fn redis_url(&self) -> &str {
        self.single_url().unwrap_or(DEFAULT_REDIS_URL)
    }

    /// `HERALD_REDIS_URL` when set (an empty one counts as unset, so an override
    /// file can clear it).
    fn single_url(&self) -> Option<&str> {
        self.redis_url.as_deref().filter(|u| !u.trim().is_empty())
    }

    /// `HERALD_REDIS_CLUSTER` when set (an empty one counts as unset).
    pub fn cluster_seeds(&self) -> Option<&str> {
        self.redis_cluster
            .as_deref()
            .filter(|u| !u.trim().is_empty())
    }

    /// Where the services' Redis is: a cluster's seed nodes, or one Redis.
    pub fn redis_target(&self) -> crate::store::Target {
        match self.cluster_seeds() {
            Some(seeds) => crate::store::Target::Cluster(
                seeds
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ),
            None => crate::store::Target::Single(self.redis_url().to_owned()),
        }
    }

    /// The service's listen address from `value` (`HERALD_LISTEN`), see [`resolve_listen`].
    pub fn listen(&self, value: Option<SocketAddr>, default_port: u16) -> SocketAddr {
        resolve_listen(value, default_port, self.dev)
    }

    /// The checks every plain HTTP service (auth-svc, broadcaster, monitor) starts
    /// with: these settings, the `HERALD_HTTP_*` limits and the listen address. The
    /// service adds its own problems to the errors returned.
    pub fn check_http(
        &self,
        http: &crate::serve::HttpArgs,
        listen: Option<SocketAddr>,
        default_port: u16,
    ) -> (ConfigErrors, SocketAddr) {
        let mut problems = ConfigErrors::new();
        self.check(&mut problems);
        http.check(&mut problems);
        let listen = self.listen(listen, default_port);
        (problems, listen)
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

/// Adds the problems of one Redis URL in `var` to `out`.
fn check_url(var: &str, url: &str, out: &mut ConfigErrors) {
    let shown = crate::store::redacted(url);
    if !url.contains("://") {
        out.push(format!(
            "{var} {shown:?} has no scheme: write it as {} (redis://[:password@]host:port[/db])",
            redis_url_hint(&shown)
        ));
    } else if let Err(e) = redis::Client::open(url) {
        out.push(format!("{var} {shown:?} is not a valid Redis URL: {e}"));
    }
}

/// Adds the problems of a comma-separated list of seed node URLs to `out`.
fn check_url_list(var: &str, list: &str, out: &mut ConfigErrors) {
    let seeds: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if seeds.is_empty() {
        out.push(format!(
            "{var} is empty: list the cluster's seed nodes, e.g. redis://10.0.0.1:7000,redis://10.0.0.2:7000"
        ));
    }
    for seed in seeds {
        check_url(var, seed, out);
    }
}

/// The `redis://` form of a Redis address written without a scheme.
fn redis_url_hint(url: &str) -> String {
    let host_port = url.trim().trim_end_matches('/');
    if host_port.is_empty() {
        "redis://host:port".to_owned()
    } else if host_port
        .rsplit_once(':')
        .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
    {
        format!("redis://{host_port}")
    } else {
        format!("redis://{host_port}:6379")
    }
}

/// Parses flags and environment into `T`. A bad command line prints clap's message
/// and exits with [`EXIT_CONFIG`]; help and version exit 0 as usual.
///
/// A `HERALD_*` variable whose value does not parse does not stop parsing: it comes
/// back as a problem naming the variable, and `T` holds that setting's default, so
/// the caller can add its own checks and report everything at once with
/// [`exit_if_problems`]. A flag given on the command line overrides its variable,
/// so a bad variable under a good flag is no problem.
pub fn parse_or_exit<T: Parser>() -> (T, Vec<String>) {
    parse_args_or_exit(std::env::args_os().collect())
}

/// [`parse_or_exit`] with these command-line arguments (the first is the program's
/// name) instead of the process's: the all-in-one binary reads each service's settings
/// from the environment alone.
pub fn parse_args_or_exit<T: Parser>(args: Vec<OsString>) -> (T, Vec<String>) {
    parse_adjusted_or_exit(args, |c| c)
}

/// [`parse_or_exit`] with the command adjusted first (a help text built at run time).
pub fn parse_or_exit_with<T: Parser>(
    adjust: impl Fn(clap::Command) -> clap::Command,
) -> (T, Vec<String>) {
    parse_adjusted_or_exit(std::env::args_os().collect(), adjust)
}

fn parse_adjusted_or_exit<T: Parser>(
    args: Vec<OsString>,
    adjust: impl Fn(clap::Command) -> clap::Command,
) -> (T, Vec<String>) {
    let mut built = adjust(T::command());
    built.build();
    let mut bad = Vec::new();
    collect_env_problems(&built, &mut Vec::new(), &mut bad);

    // Parse again without the bad variables: their settings fall back to defaults.
    let mut cmd = adjust(T::command());
    for b in &bad {
        cmd = without_env(cmd, &b.path, &b.id);
    }
    let mut matches = match cmd.try_get_matches_from_mut(&args) {
        Ok(m) => m,
        Err(e) => {
            // No matches to ask which variables a flag overrode: read the arguments.
            let top_level: Vec<String> = bad
                .iter()
                .filter(|b| b.path.is_empty() && !given_as_flag(&built, &b.id, &args))
                .map(|b| b.line.clone())
                .collect();
            exit_on_clap_error(e, &mut cmd, &top_level)
        }
    };
    let problems = bad
        .into_iter()
        .filter(|b| env_was_used(&matches, &b.path, &b.id))
        .map(|b| b.line)
        .collect();
    match T::from_arg_matches_mut(&mut matches) {
        Ok(t) => (t, problems),
        Err(e) => exit_on_clap_error(e, &mut cmd, &problems),
    }
}

/// Whether setting `id` of `cmd` appears on the command line as `--long` or
/// `--long=value`.
fn given_as_flag(cmd: &Command, id: &str, args: &[OsString]) -> bool {
    let Some(long) = cmd
        .get_arguments()
        .find(|a| a.get_id() == id)
        .and_then(Arg::get_long)
    else {
        return false;
    };
    let flag = format!("--{long}");
    args.iter().filter_map(|a| a.to_str()).any(|a| {
        a == flag
            || a.strip_prefix(flag.as_str())
                .is_some_and(|rest| rest.starts_with('='))
    })
}

/// Prints clap's message (after the variables already known to be bad) and exits:
/// 0 for help and version, [`EXIT_CONFIG`] otherwise.
fn exit_on_clap_error(e: clap::Error, cmd: &mut Command, env_lines: &[String]) -> ! {
    if !e.use_stderr() {
        let _ = e.print();
        std::process::exit(0);
    }
    let service = cmd.get_name().to_owned();
    for line in env_lines {
        eprintln!("{service}: configuration error: {line}");
    }
    let _ = e.format(cmd).print();
    std::process::exit(EXIT_CONFIG);
}

/// A variable whose value its setting cannot take.
#[derive(Debug)]
struct EnvProblem {
    /// The subcommands the setting belongs to (empty: the top level).
    path: Vec<String>,
    /// The setting's clap id.
    id: String,
    /// One line naming the variable.
    line: String,
}

/// Runs every setting's own value parser on its variable, if set, in `cmd` (built)
/// and its subcommands.
fn collect_env_problems(cmd: &Command, path: &mut Vec<String>, out: &mut Vec<EnvProblem>) {
    for arg in cmd.get_arguments() {
        let Some(var) = arg.get_env() else { continue };
        let Some(value) = std::env::var_os(var) else {
            continue;
        };
        if let Some(line) = env_value_problem(arg, &var.to_string_lossy(), &value) {
            out.push(EnvProblem {
                path: path.clone(),
                id: arg.get_id().to_string(),
                line,
            });
        }
    }
    for sub in cmd.get_subcommands() {
        path.push(sub.get_name().to_owned());
        collect_env_problems(sub, path, out);
        path.pop();
    }
}

/// `cmd` with the variable of setting `id` (in subcommand `path`) no longer read.
fn without_env(cmd: Command, path: &[String], id: &str) -> Command {
    match path.split_first() {
        None => cmd.mut_arg(id, |a| a.env(None::<&'static str>)),
        Some((sub, rest)) => cmd.mut_subcommand(sub, |s| without_env(s, rest, id)),
    }
}

/// Whether the variable of setting `id` would have been used: its subcommand ran
/// and no flag gave the setting on the command line.
fn env_was_used(matches: &ArgMatches, path: &[String], id: &str) -> bool {
    match path.split_first() {
        None => matches.value_source(id) != Some(ValueSource::CommandLine),
        Some((sub, rest)) => matches
            .subcommand_matches(sub)
            .is_some_and(|m| env_was_used(m, rest, id)),
    }
}

/// Why `value` of variable `var` is not a value of `arg`, as one line naming the
/// variable; `None` when it is fine. Uses the setting's own value parser (per item
/// for comma-separated lists), exactly as clap would.
fn env_value_problem(arg: &Arg, var: &str, value: &OsStr) -> Option<String> {
    let items: Vec<OsString> = match (arg.get_value_delimiter(), value.to_str()) {
        (Some(d), Some(text)) => text.split(d).map(OsString::from).collect(),
        _ => vec![value.to_owned()],
    };
    let probe = Command::new("env").no_binary_name(true).arg(
        Arg::new("value")
            .long("value")
            .num_args(1)
            .allow_hyphen_values(true)
            .value_parser(arg.get_value_parser().clone()),
    );
    items.into_iter().find_map(|item| {
        let err = probe
            .clone()
            .try_get_matches_from([OsString::from("--value"), item.clone()])
            .err()?;
        Some(describe_bad_value(var, &item.to_string_lossy(), &err))
    })
}

/// One line saying why `value` of `var` was refused, from the parser's error.
fn describe_bad_value(var: &str, value: &str, err: &clap::Error) -> String {
    use std::num::IntErrorKind;
    if err.kind() == ErrorKind::InvalidUtf8 {
        return format!("{var} is not valid UTF-8");
    }
    if let Some(ContextValue::Strings(valid)) = err.get(ContextKind::ValidValue) {
        return format!("{var} {value:?} is not one of {}", valid.join(", "));
    }
    let source = std::error::Error::source(err);
    if let Some(e) = source.and_then(|s| s.downcast_ref::<std::num::ParseIntError>()) {
        let trimmed = value.trim();
        let what = match e.kind() {
            IntErrorKind::PosOverflow => "is too large",
            IntErrorKind::NegOverflow => "is too small",
            _ if trimmed != value && trimmed.parse::<u128>().is_ok() => {
                "has spaces around the number"
            }
            _ if trimmed.parse::<i128>().is_ok_and(|n| n < 0) => "must not be negative",
            _ if trimmed.parse::<f64>().is_ok() => "is not a whole number",
            _ => "is not a number",
        };
        return format!("{var} {value:?} {what}");
    }
    if source.is_some_and(|s| s.is::<std::net::AddrParseError>()) {
        return format!("{var} {value:?} is not an address like 0.0.0.0:8080");
    }
    match source.map(ToString::to_string) {
        // clap's ranged integer parsers say `<n> is not in <range>`.
        Some(text) if text.contains(" is not in ") => {
            let range = text.rsplit(" is not in ").next().unwrap_or_default();
            format!("{var} {value:?} is out of range ({range})")
        }
        Some(text) => format!("{var} {value:?} is not valid: {text}"),
        None => format!("{var} {value:?} is not valid"),
    }
}

/// The address a service listens on: `value` when given (a typed setting, so a value
/// that is not an address was refused when parsing), otherwise `default_port` on every
/// interface, or on loopback only in development mode, whose fixed secrets and public
/// keys must not be reachable from the network.
pub fn resolve_listen(value: Option<SocketAddr>, default_port: u16, dev: bool) -> SocketAddr {
    value.unwrap_or_else(|| default_listen(default_port, dev))
}

/// The listen address used when none is set: see [`resolve_listen`].
pub fn default_listen(port: u16, dev: bool) -> SocketAddr {
    let ip = if dev {
        Ipv4Addr::LOCALHOST
    } else {
        Ipv4Addr::UNSPECIFIED
    };
    SocketAddr::new(IpAddr::V4(ip), port)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[derive(Parser, Debug)]
    struct T {
        #[command(flatten)]
        common: CommonConfig,
    }

    fn problems(t: &T) -> Vec<String> {
        let mut out = ConfigErrors::new();
        t.common.check(&mut out);
        out.into_iter().collect()
    }

    #[test]
    fn defaults_and_problems() {
        let t = T::try_parse_from(["t"]).unwrap();
        assert_eq!(t.common.redis_url(), DEFAULT_REDIS_URL);
        assert!(problems(&t).is_empty());
        let t = T::try_parse_from(["t", "--redis-url", "http://nope", "--dev", "1"]).unwrap();
        assert!(t.common.dev);
        assert_eq!(problems(&t).len(), 1);
        assert!(t.common.node_id("gw").starts_with("gw-"));
    }

    #[test]
    fn a_redis_url_without_scheme_gets_the_redis_form() {
        #[track_caller]
        fn check(url: &str, hint: &str) {
            let t = T::try_parse_from(["t", "--redis-url", url]).unwrap();
            let problems = problems(&t);
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(
                problems[0].contains(&format!("write it as {hint} ")),
                "{problems:?}"
            );
        }
        check("localhost:6379", "redis://localhost:6379");
        check("10.0.0.5", "redis://10.0.0.5:6379");
        // A password in a malformed URL is not repeated in the error.
        check(":hunter22@cache:6379", "redis://***@cache:6379");
        let t = T::try_parse_from(["t", "--redis-url", "ftp://:hunter22@cache"]).unwrap();
        assert!(!problems(&t)[0].contains("hunter22"));
        let t = T::try_parse_from(["t", "--redis-url", "redis://10.0.0.5:6380/2"]).unwrap();
        assert!(problems(&t).is_empty());
    }

    #[test]
    fn one_redis_or_a_cluster_not_both() {
        let t = T::try_parse_from([
            "t",
            "--redis-url",
            "redis://a:6379",
            "--redis-cluster",
            "redis://b:7000",
        ])
        .unwrap();
        let found = problems(&t);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("not both"), "{found:?}");
        // An empty one counts as unset (an override file clears it so).
        let t = T::try_parse_from([
            "t",
            "--redis-url",
            "",
            "--redis-cluster",
            "redis://b:7000, redis://c:7000",
        ])
        .unwrap();
        assert!(problems(&t).is_empty());
        assert_eq!(
            t.common.redis_target(),
            crate::store::Target::Cluster(vec!["redis://b:7000".into(), "redis://c:7000".into()])
        );
        let t = T::try_parse_from(["t", "--redis-cluster", "b:7000,redis://:pw@c:7000"]).unwrap();
        let found = problems(&t);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("HERALD_REDIS_CLUSTER"), "{found:?}");
        let t = T::try_parse_from(["t", "--redis-cluster", " , "]).unwrap();
        assert!(problems(&t)[0].contains("is empty"));
        let t = T::try_parse_from(["t"]).unwrap();
        assert_eq!(
            t.common.redis_target(),
            crate::store::Target::Single(DEFAULT_REDIS_URL.into())
        );
    }

    /// The arg clap derives for a field of type `$ty`, with its value parser.
    macro_rules! arg_of {
        ($ty:ty) => {{
            #[derive(Parser, Debug)]
            struct One {
                #[arg(long)]
                #[allow(dead_code, reason = "only the arg is used")]
                v: $ty,
            }
            let mut cmd = <One as clap::CommandFactory>::command();
            cmd.build();
            cmd.get_arguments()
                .find(|a| a.get_id() == "v")
                .cloned()
                .unwrap()
        }};
    }

    #[test]
    fn bad_variable_values_name_the_variable() {
        #[track_caller]
        fn check(arg: &Arg, value: &str, expected: Option<&str>) {
            let got = env_value_problem(arg, "HERALD_X", OsStr::new(value));
            assert_eq!(got.as_deref(), expected, "{value:?}");
        }
        let u64_arg = arg_of!(u64);
        check(&u64_arg, "25000", None);
        check(&u64_arg, "abc", Some(r#"HERALD_X "abc" is not a number"#));
        check(&u64_arg, "", Some(r#"HERALD_X "" is not a number"#));
        check(
            &u64_arg,
            "-1",
            Some(r#"HERALD_X "-1" must not be negative"#),
        );
        check(
            &u64_arg,
            "1.5",
            Some(r#"HERALD_X "1.5" is not a whole number"#),
        );
        check(
            &u64_arg,
            " 7",
            Some(r#"HERALD_X " 7" has spaces around the number"#),
        );
        check(
            &u64_arg,
            "99999999999999999999999",
            Some(r#"HERALD_X "99999999999999999999999" is too large"#),
        );
        let u32_arg = arg_of!(u32);
        check(
            &u32_arg,
            "5000000000",
            Some(r#"HERALD_X "5000000000" is out of range (0..=4294967295)"#),
        );
        let usize_arg = arg_of!(usize);
        check(&usize_arg, "x1", Some(r#"HERALD_X "x1" is not a number"#));
        let string_arg = arg_of!(String);
        check(&string_arg, "anything at all", None);
        let dev = T::command()
            .get_arguments()
            .find(|a| a.get_id() == "dev")
            .cloned()
            .unwrap();
        check(&dev, "yes", None);
        check(
            &dev,
            "maybe",
            Some(r#"HERALD_X "maybe" is not valid: expected 1/0/true/false, got "maybe""#),
        );
    }

    #[test]
    fn comma_separated_variables_are_checked_item_by_item() {
        #[derive(Parser, Debug)]
        struct L {
            #[arg(long, value_delimiter = ',')]
            #[allow(dead_code, reason = "only the arg is used")]
            ports: Vec<u16>,
        }
        let mut cmd = <L as clap::CommandFactory>::command();
        cmd.build();
        let arg = cmd.get_arguments().find(|a| a.get_id() == "ports").unwrap();
        assert_eq!(
            env_value_problem(arg, "HERALD_P", OsStr::new("1,2,3")),
            None
        );
        assert_eq!(
            env_value_problem(arg, "HERALD_P", OsStr::new("1,x,3")).as_deref(),
            Some(r#"HERALD_P "x" is not a number"#)
        );
    }

    #[test]
    fn development_mode_listens_on_loopback_unless_told_otherwise() {
        #[track_caller]
        fn check(value: Option<&str>, dev: bool, expected: &str) {
            let value = value.map(|v| v.parse().unwrap());
            let got = resolve_listen(value, 8081, dev);
            assert_eq!(got, expected.parse::<SocketAddr>().unwrap());
        }
        check(None, false, "0.0.0.0:8081");
        check(None, true, "127.0.0.1:8081");
        check(Some("0.0.0.0:9000"), true, "0.0.0.0:9000");
        check(Some("10.1.2.3:8081"), false, "10.1.2.3:8081");
    }

    #[test]
    fn a_listen_address_that_does_not_parse_says_what_one_looks_like() {
        let arg = Arg::new("listen")
            .long("listen")
            .value_parser(clap::value_parser!(SocketAddr));
        assert_eq!(
            env_value_problem(&arg, "HERALD_LISTEN", OsStr::new("nowhere")).as_deref(),
            Some(r#"HERALD_LISTEN "nowhere" is not an address like 0.0.0.0:8080"#)
        );
        assert_eq!(
            env_value_problem(&arg, "HERALD_LISTEN", OsStr::new("[::1]:80")),
            None
        );
    }
}
