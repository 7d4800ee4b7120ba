//! `herald`: the gateway, auth-svc, broadcaster and monitor in one process, each on its
//! own port, through the same `run` the separate binaries call. Every `HERALD_*`
//! setting means what it means for those binaries; only the listen addresses are per
//! service. Prints where each service listens, then serves until SIGINT/SIGTERM.
//!
//! With `HERALD_REDIS_URL` the services share that Redis, exactly as the separate
//! binaries do (and may be spread over several processes with `--only`). Without it
//! they share one in-memory engine: a whole cluster in one process, which nothing
//! outside it can join, so every service must run here.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, ValueEnum};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use herald_common::config::{ConfigErrors, load_from, parse_or_exit_with};
use herald_common::engine::Engine;
use herald_common::jwt::Alg;
use herald_common::runtime::bind;
use herald_common::{shutdown::shutdown_signal, telemetry};

const NAME: &str = "herald";
/// The admin and API keys of development mode when none is set.
const DEV_ADMIN_KEY: &str = "dev-admin-key";
const DEV_API_KEY: &str = "dev-api-key";

#[derive(Debug, Parser)]
#[command(
    name = NAME,
    version = herald_common::VERSION,
    about = "Herald in one process: ws-gateway, auth-svc, broadcaster and monitor",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: Serve,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Serve (what `herald` alone does).
    Serve(Serve),
    /// Mint an access token and print it, as `auth-svc token` does (`--user`,
    /// `--channels`, `--publish`, `--ttl`); with the shared secret (HS256) it needs
    /// neither Redis nor a running server.
    #[command(disable_help_flag = true)]
    Token {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

#[derive(Debug, Clone, clap::Args)]
struct Serve {
    /// Run only these services, comma-separated [default: all four].
    #[arg(long, env = "HERALD_ONLY", value_enum, value_delimiter = ',')]
    only: Vec<Service>,
    /// Where the gateway listens [default: its own, 0.0.0.0:8765].
    #[arg(long, env = "HERALD_GATEWAY_LISTEN")]
    gateway_listen: Option<SocketAddr>,
    /// Where auth-svc listens [default: its own, 0.0.0.0:8081].
    #[arg(long, env = "HERALD_AUTH_LISTEN")]
    auth_listen: Option<SocketAddr>,
    /// Where the broadcaster listens [default: its own, 0.0.0.0:8082].
    #[arg(long, env = "HERALD_BROADCASTER_LISTEN")]
    broadcaster_listen: Option<SocketAddr>,
    /// Where the monitor listens [default: its own, 0.0.0.0:8083].
    #[arg(long, env = "HERALD_MONITOR_LISTEN")]
    monitor_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Service {
    #[value(name = "ws-gateway")]
    Gateway,
    #[value(name = "auth-svc")]
    Auth,
    Broadcaster,
    Monitor,
}

impl Service {
    const ALL: [Self; 4] = [Self::Gateway, Self::Auth, Self::Broadcaster, Self::Monitor];

    fn name(self) -> &'static str {
        match self {
            Self::Gateway => ws_gateway::SERVICE,
            Self::Auth => auth_svc::SERVICE,
            Self::Broadcaster => broadcaster::SERVICE,
            Self::Monitor => monitor::SERVICE,
        }
    }

    /// Where a client reaches it, for the start-up lines.
    fn url(self, addr: SocketAddr) -> String {
        match self {
            Self::Gateway => format!("ws://{addr}/ws"),
            _ => format!("http://{addr}"),
        }
    }
}

/// One service, configured and bound, ready to run.
enum Ready {
    // Boxed: the gateway has by far the most settings.
    Gateway(Box<ws_gateway::Config>),
    Auth(auth_svc::Config),
    Broadcaster(broadcaster::Config),
    Monitor(monitor::Config),
}

impl Ready {
    async fn run(
        self,
        listener: TcpListener,
        engine: Option<Engine>,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        let stop = stop.cancelled_owned();
        match self {
            Self::Gateway(c) => ws_gateway::run(listener, *c, engine, stop).await,
            Self::Auth(c) => auth_svc::run(listener, c, engine, stop).await,
            Self::Broadcaster(c) => broadcaster::run(listener, c, engine, stop).await,
            Self::Monitor(c) => monitor::run(listener, c, engine, stop).await,
        }
    }

    fn secrets(&self) -> Vec<Option<&str>> {
        match self {
            Self::Gateway(c) => vec![c.jwt.jwt_secret.as_deref(), c.proxy_secret.as_deref()],
            Self::Auth(c) => vec![c.jwt.jwt_secret.as_deref(), c.admin_key.as_deref()],
            Self::Broadcaster(c) => vec![c.api_key.as_deref(), c.webhook_secret.as_deref()],
            Self::Monitor(c) => vec![c.admin_key.as_deref()],
        }
    }

    /// In development mode, gives an unset admin or API key its development value
    /// (the ones `just dev` sets), so that a first try can publish and create users;
    /// returns whether it did.
    fn fill_dev_keys(&mut self) -> bool {
        let (key, dev, value) = match self {
            Self::Auth(c) => (&mut c.admin_key, c.common.dev, DEV_ADMIN_KEY),
            Self::Monitor(c) => (&mut c.admin_key, c.common.dev, DEV_ADMIN_KEY),
            Self::Broadcaster(c) => (&mut c.api_key, c.common.dev, DEV_API_KEY),
            Self::Gateway(_) => return false,
        };
        if !dev || key.is_some() {
            return false;
        }
        *key = Some(value.to_owned());
        true
    }

    /// Whether this service verifies or signs HS256 tokens with the built-in
    /// development secret (HERALD_DEV=1 and no HERALD_JWT_SECRET).
    fn signs_with_dev_secret(&self) -> bool {
        let (jwt, common) = match self {
            Self::Gateway(c) => (&c.jwt, &c.common),
            Self::Auth(c) => (&c.jwt, &c.common),
            Self::Broadcaster(_) | Self::Monitor(_) => return false,
        };
        common.dev && jwt.jwt_alg == Alg::Hs256 && jwt.jwt_secret.is_none()
    }

    fn log(&self) -> &str {
        match self {
            Self::Gateway(c) => &c.common.log,
            Self::Auth(c) => &c.common.log,
            Self::Broadcaster(c) => &c.common.log,
            Self::Monitor(c) => &c.common.log,
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let (cli, unparsed): (Cli, _) = parse_or_exit_with(|c| c.after_help(settings_help()));
    let serve = match cli.command {
        Some(Command::Serve(s)) => s,
        Some(Command::Token { args }) => return token(args).await,
        None => cli.serve,
    };
    let services = if serve.only.is_empty() {
        Service::ALL.to_vec()
    } else {
        Service::ALL
            .into_iter()
            .filter(|s| serve.only.contains(s))
            .collect()
    };
    let mut errors = ConfigErrors::from(unparsed);
    check_shared_settings(&services, &mut errors);
    let embedded = !is_set("HERALD_REDIS_URL") && !is_set("HERALD_REDIS_CLUSTER");
    if embedded && !serve.only.is_empty() {
        errors.push(
            "--only (HERALD_ONLY) needs HERALD_REDIS_URL or HERALD_REDIS_CLUSTER: without Redis the services share \
             this process's memory, which services in other processes cannot see",
        );
    }
    if !errors.is_empty() {
        errors.exit(NAME);
    }

    // Each service reads the environment as its own binary would; the listen address
    // (and a node id, made one per service) come as flags, which win over variables.
    let mut ready = Vec::new();
    for service in services {
        let listen = match service {
            Service::Gateway => serve.gateway_listen,
            Service::Auth => serve.auth_listen,
            Service::Broadcaster => serve.broadcaster_listen,
            Service::Monitor => serve.monitor_listen,
        };
        let args = service_args(service, listen);
        let name = service.name();
        let (config, addr) = match service {
            Service::Gateway => {
                let (c, s) = load_from(name, args, ws_gateway::Config::validate);
                (Ready::Gateway(Box::new(c)), s.listen)
            }
            Service::Auth => {
                let (cli, mode) = load_from(name, args, auth_svc::Cli::validate);
                let auth_svc::config::Mode::Serve(s) = mode else {
                    unreachable!("no subcommand is passed to auth-svc");
                };
                (Ready::Auth(cli.config), s.listen)
            }
            Service::Broadcaster => {
                let (c, s) = load_from(name, args, broadcaster::Config::validate);
                (Ready::Broadcaster(c), s.listen)
            }
            Service::Monitor => {
                let (c, s) = load_from(name, args, monitor::Config::validate);
                (Ready::Monitor(c), s.listen)
            }
        };
        ready.push((service, config, addr));
    }
    // Tokens signed with the development secret are what a first try needs.
    let dev_secret = ready.iter().any(|(_, c, _)| c.signs_with_dev_secret());
    let mut dev_keys = false;
    for (_, c, _) in &mut ready {
        dev_keys |= c.fill_dev_keys();
    }
    let Some((_, first, _)) = ready.first() else {
        return ExitCode::SUCCESS;
    };
    telemetry::init(first.log());
    telemetry::redact(
        &ready
            .iter()
            .flat_map(|(_, c, _)| c.secrets())
            .collect::<Vec<_>>(),
    );
    // Every client is a file descriptor: as in ws-gateway's own binary.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(cause = %e, "cannot raise the open-file limit");
    }

    // Everything is bound before anything runs, so a taken port stops all at once.
    let mut bound = Vec::new();
    for (service, config, addr) in ready {
        match bind(addr) {
            Ok(listener) => bound.push((service, config, listener)),
            Err(e) => {
                eprintln!("{NAME}: {}: {e:#}", service.name());
                return ExitCode::FAILURE;
            }
        }
    }
    // One engine for every service: the cluster they form lives in it.
    let engine = embedded.then(Engine::memory);
    if embedded {
        println!(
            "{NAME}: no HERALD_REDIS_URL: running on the in-memory engine (one process; \
             nothing is kept across restarts)"
        );
    }
    if dev_keys {
        println!(
            "{NAME}: development keys where none is set (HERALD_DEV=1): admin \
             {DEV_ADMIN_KEY}, API {DEV_API_KEY}"
        );
    }
    if dev_secret {
        println!(
            "{NAME}: a token to try it with (HERALD_DEV=1): \
             herald token --user alice --channels news --publish news"
        );
    }
    let stop = CancellationToken::new();
    let mut running = JoinSet::new();
    for (service, config, listener) in bound {
        if let Ok(addr) = listener.local_addr() {
            println!("{NAME}: {:<12} {}", service.name(), service.url(addr));
        }
        let (stop, engine) = (stop.clone(), engine.clone());
        running.spawn(async move { (service, config.run(listener, engine, stop).await) });
    }
    supervise(running, stop).await
}

/// `--help`'s list of the services' own settings: every variable any of them reads
/// (but `HERALD_LISTEN`, which is per service here), with its help and the services
/// that read it.
fn settings_help() -> String {
    let commands = [
        (Service::Gateway, ws_gateway::Config::command()),
        (Service::Auth, auth_svc::Cli::command()),
        (Service::Broadcaster, broadcaster::Config::command()),
        (Service::Monitor, monitor::Config::command()),
    ];
    // Variable → (help, the services that read it), in first-seen order.
    let mut settings: Vec<(String, String, Vec<&str>)> = Vec::new();
    for (service, command) in &commands {
        for arg in command.get_arguments() {
            let Some(var) = arg.get_env().and_then(|v| v.to_str()) else {
                continue;
            };
            if var == "HERALD_LISTEN" {
                continue;
            }
            match settings.iter_mut().find(|(v, _, _)| v == var) {
                Some((_, _, services)) => services.push(service.name()),
                None => {
                    let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                    let first = help.lines().next().unwrap_or_default().to_owned();
                    settings.push((var.to_owned(), first, vec![service.name()]));
                }
            }
        }
    }
    let width = settings.iter().map(|(v, _, _)| v.len()).max().unwrap_or(0);
    let mut out = String::from(
        "Settings of the services (environment variables; each means what it means for \
         the service's own binary).\nWithout HERALD_REDIS_URL the services share an \
         in-memory engine in this process.\n",
    );
    for (var, help, services) in settings {
        let who = if services.len() == commands.len() {
            "all".to_owned()
        } else {
            services.join(", ")
        };
        out.push_str(&format!("  {var:<width$}  {help} [{who}]\n"));
    }
    out
}

/// Settings that name one service's resource and so cannot be shared by several in one
/// process.
fn check_shared_settings(services: &[Service], errors: &mut ConfigErrors) {
    if is_set("HERALD_LISTEN") {
        errors.push(
            "HERALD_LISTEN is one service's address: herald takes HERALD_GATEWAY_LISTEN, \
             HERALD_AUTH_LISTEN, HERALD_BROADCASTER_LISTEN and HERALD_MONITOR_LISTEN",
        );
    }
    if is_set("HERALD_ADVERTISE_ADDR") && services.len() > 1 {
        errors.push(
            "HERALD_ADVERTISE_ADDR is one service's address: with several services in one \
             process each advertises its own listen address (unset it, or use --only)",
        );
    }
    if is_set("HERALD_ADMIN_LISTEN")
        && services.contains(&Service::Auth)
        && services.contains(&Service::Monitor)
    {
        errors.push(
            "HERALD_ADMIN_LISTEN would be bound by both auth-svc and monitor: run one of \
             them here (--only) or unset it",
        );
    }
}

/// `herald token …`: auth-svc's `token` command, configured from the environment as
/// `auth-svc token …` would be.
async fn token(args: Vec<OsString>) -> ExitCode {
    let mut argv = vec![OsString::from(auth_svc::SERVICE), OsString::from("token")];
    argv.extend(args);
    let (cli, mode) = load_from(auth_svc::SERVICE, argv, auth_svc::Cli::validate);
    let auth_svc::config::Mode::Command(command) = mode else {
        unreachable!("the token subcommand was given");
    };
    auth_svc::cli::run(command, cli.config).await
}

/// Whether a variable is set to something (an empty one counts as unset).
fn is_set(var: &str) -> bool {
    std::env::var_os(var).is_some_and(|v| !v.is_empty())
}

/// The command line a service is configured with: its name, then the flags this
/// process sets for it.
fn service_args(service: Service, listen: Option<SocketAddr>) -> Vec<OsString> {
    let mut args = vec![OsString::from(service.name())];
    if let Some(addr) = listen {
        args.push(format!("--listen={addr}").into());
    }
    // Nodes are listed by id: four services under one configured id would overwrite
    // one another's heartbeat.
    if let Some(id) = std::env::var_os("HERALD_NODE_ID").and_then(|v| v.into_string().ok()) {
        args.push(format!("--node-id={id}-{}", service.name()).into());
    }
    args
}

/// Waits for a signal (then stops every service) or for a service to end (then stops
/// the others); exits 1 if any service failed or ended on its own.
async fn supervise(
    mut running: JoinSet<(Service, anyhow::Result<()>)>,
    stop: CancellationToken,
) -> ExitCode {
    let mut failed = false;
    let signal = shutdown_signal();
    tokio::pin!(signal);
    loop {
        let joined = tokio::select! {
            () = &mut signal, if !stop.is_cancelled() => {
                stop.cancel();
                continue;
            }
            joined = running.join_next() => joined,
        };
        let Some(joined) = joined else { break };
        match joined {
            Ok((_, Ok(()))) if stop.is_cancelled() => {}
            Ok((service, Ok(()))) => {
                eprintln!("{NAME}: {} stopped; stopping the others", service.name());
                failed = true;
            }
            Ok((service, Err(e))) => {
                eprintln!("{NAME}: {}: {e:#}", service.name());
                failed = true;
            }
            Err(e) => {
                eprintln!("{NAME}: a service task failed: {e}");
                failed = true;
            }
        }
        stop.cancel();
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
