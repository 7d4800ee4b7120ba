//! Herald services under test: in this process by default (each service's `run` on a
//! runtime of its own, on a listener the harness bound to port 0), or as the built
//! binary ([`ServiceBuilder::process`]) for what only a process has: a pid, signals,
//! an exit code, a crash, its log output.
//!
//! No port is ever picked before it is bound: an in-process service gets a listener
//! the harness bound to `127.0.0.1:0`; a binary gets `HERALD_LISTEN=127.0.0.1:0` and
//! the harness reads the address it bound from its `listening` log line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use clap::Parser;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStderr, Command};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use herald_common::engine::Engine;

use crate::{ADMIN_KEY, API_KEY, Backend, Redis, TEST_SECRET, eventually, signal, within};

// === Binaries ===

/// The path of a Herald binary, built first: the workspace's binaries are built (once
/// per test process, by `cargo build --workspace --bins`, a no-op when they are up to
/// date), so a test never runs a stale one. `HERALD_E2E_PROFILE=release` builds and
/// runs release binaries.
pub fn bin_path(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let release = std::env::var("HERALD_E2E_PROFILE").is_ok_and(|p| p == "release");
    if let Err(e) = BUILT.get_or_init(|| build_binaries(release)) {
        panic!("cannot build the Herald binaries: {e}");
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("target"));
    let path = target
        .join(if release { "release" } else { "debug" })
        .join(name);
    assert!(
        path.exists(),
        "{} is not a binary of the workspace",
        path.display()
    );
    path
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every binary of the workspace in one `cargo` run: the same feature resolution as
/// `cargo build --workspace --bins` (`just build`), so its artefacts are reused. Cargo's
/// own lock on the target directory serialises test processes that build at once.
fn build_binaries(release: bool) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args([
        "build",
        "--quiet",
        "--workspace",
        "--bins",
        "--manifest-path",
    ])
    .arg(workspace_root().join("Cargo.toml"))
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    if release {
        cmd.arg("--release");
    }
    let out = cmd.output().map_err(|e| format!("cannot run cargo: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

// === Building a service ===

/// How to start one Herald service.
#[derive(Debug, Clone)]
pub struct ServiceBuilder {
    name: String,
    env: Vec<(String, String)>,
    args: Vec<String>,
    /// Run the built binary instead of the service's `run` in this process.
    process: bool,
    /// Where the binary's stderr goes (appended, restarts included); see [`ServiceBuilder::log_to`].
    log_file: Option<PathBuf>,
    /// The engine an in-process service runs on instead of `HERALD_REDIS_URL`'s Redis
    /// (the memory engine its cluster shares).
    engine: Option<Engine>,
}

impl ServiceBuilder {
    /// A service with the test secrets and keys already set.
    pub fn new(name: &str) -> Self {
        let env = [
            ("HERALD_JWT_SECRET", TEST_SECRET),
            ("HERALD_ADMIN_KEY", ADMIN_KEY),
            ("HERALD_API_KEY", API_KEY),
            ("HERALD_LOG", "info"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        Self {
            name: name.to_owned(),
            env,
            args: Vec::new(),
            process: false,
            log_file: None,
            engine: None,
        }
    }

    pub fn redis(self, redis: &Redis) -> Self {
        self.env("HERALD_REDIS_URL", &redis.url())
    }

    /// The service on `store`: a Redis, or a [`Backend`] (its Redis, or its shared
    /// memory engine — in this process only: a binary cannot share its memory).
    pub fn on(self, store: &impl Store) -> Self {
        store.configure(self)
    }

    fn engine(mut self, engine: &Engine) -> Self {
        self.engine = Some(engine.clone());
        self
    }
}

/// What a cluster of test services keeps its state in.
pub trait Store {
    fn configure(&self, builder: ServiceBuilder) -> ServiceBuilder;

    /// The engine the services run on, for a test that acts as another service
    /// would (a subscriber, a control command): a new connection to the Redis, or
    /// the shared memory engine.
    fn engine(&self) -> impl Future<Output = Engine> + Send;
}

impl Store for Redis {
    fn configure(&self, builder: ServiceBuilder) -> ServiceBuilder {
        builder.redis(self)
    }

    async fn engine(&self) -> Engine {
        within(
            "a Redis connection",
            Engine::connect(&herald_common::store::Target::Single(self.url())),
        )
        .await
        .expect("Redis answers")
    }
}

impl Store for Backend {
    fn configure(&self, builder: ServiceBuilder) -> ServiceBuilder {
        match self {
            Backend::Redis(r) => builder.redis(r),
            Backend::Memory(e) => builder.engine(e),
            Backend::Cluster(c) => c.configure(builder),
        }
    }

    async fn engine(&self) -> Engine {
        match self {
            Backend::Redis(r) => r.engine().await,
            Backend::Memory(e) => e.clone(),
            Backend::Cluster(c) => c.engine().await,
        }
    }
}

impl Store for crate::RedisCluster {
    fn configure(&self, builder: ServiceBuilder) -> ServiceBuilder {
        builder.env("HERALD_REDIS_CLUSTER", &self.seeds())
    }

    async fn engine(&self) -> Engine {
        let seeds = self.seeds().split(',').map(str::to_owned).collect();
        within(
            "a Redis Cluster connection",
            Engine::connect(&herald_common::store::Target::Cluster(seeds)),
        )
        .await
        .expect("the cluster answers")
    }
}

impl ServiceBuilder {
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    /// Runs the built binary as a process of its own: for tests of what only a process
    /// has (its pid, signals, exit code, a crash, its log output).
    pub fn process(mut self) -> Self {
        self.process = true;
        self
    }

    /// Appends the binary's stderr (its logs) to `path`, for tests that read them
    /// (process mode only: an in-process service has no logs of its own).
    pub fn log_to(mut self, path: &Path) -> Self {
        self.log_file = Some(path.to_owned());
        self
    }

    /// Starts the service on a port the system picks and waits for `/healthz`.
    pub async fn spawn(self) -> Service {
        assert!(
            self.process || self.log_file.is_none(),
            "{}: log_to needs .process(): only a binary writes logs",
            self.name
        );
        assert!(
            !(self.process && self.engine.is_some()),
            "{}: a binary cannot run on this process's memory engine",
            self.name
        );
        let running = if self.process {
            Running::Process(Process::start(&self, None).await)
        } else {
            let listener = bind(&self.name, SocketAddr::from(([127, 0, 0, 1], 0))).await;
            Running::InProcess(InProcess::start(&self, listener).await)
        };
        self.running(running)
    }

    /// Starts the service in this process on `listener`, bound beforehand (for a test
    /// that must know the address before the service starts), and waits for `/healthz`.
    pub async fn spawn_on(self, listener: std::net::TcpListener) -> Service {
        assert!(
            !self.process && self.log_file.is_none(),
            "{}: spawn_on runs the service in this process",
            self.name
        );
        let running = Running::InProcess(InProcess::start(&self, listener).await);
        self.running(running)
    }

    fn running(self, running: Running) -> Service {
        Service {
            name: self.name.clone(),
            addr: running.addr(),
            running,
            builder: self,
        }
    }
}

// === A running service ===

/// A running Herald service, stopped on drop (a binary is killed with SIGKILL, an
/// in-process service has its runtime shut down).
#[derive(Debug)]
pub struct Service {
    pub name: String,
    pub addr: SocketAddr,
    running: Running,
    builder: ServiceBuilder,
}

#[derive(Debug)]
enum Running {
    InProcess(InProcess),
    Process(Process),
    Stopped,
}

impl Running {
    fn addr(&self) -> SocketAddr {
        match self {
            Self::InProcess(s) => s.addr,
            Self::Process(p) => p.addr,
            Self::Stopped => unreachable!("a stopped service has no address"),
        }
    }
}

impl Service {
    /// `http://127.0.0.1:<port>`.
    pub fn http(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `ws://127.0.0.1:<port>/ws`.
    pub fn ws(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// The address of the separate admin listener (`HERALD_ADMIN_LISTEN`), once the
    /// binary has logged it (process mode only: it is read from the log).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        match &self.running {
            Running::Process(p) => p.logged.lock().expect("log state").admin_addr,
            Running::InProcess(_) => panic!("{}: admin_addr() needs .process()", self.name),
            Running::Stopped => None,
        }
    }

    /// The binary's process id (process mode only).
    pub fn pid(&self) -> Option<u32> {
        match &self.running {
            Running::Process(p) => p.child.id(),
            Running::InProcess(_) => panic!("{}: pid() needs .process()", self.name),
            Running::Stopped => None,
        }
    }

    /// Stops the service at once, as in a crash: a binary gets SIGKILL; an in-process
    /// service has its runtime shut down, every task and socket dropped mid-flight.
    pub async fn kill(&mut self) {
        match std::mem::replace(&mut self.running, Running::Stopped) {
            Running::Process(mut p) => {
                let _ = p.child.kill().await;
            }
            Running::InProcess(s) => s.kill().await,
            Running::Stopped => {}
        }
    }

    /// Stops an in-process service gracefully (its shutdown future resolves, as on
    /// SIGTERM) and waits for `run` to return.
    pub async fn stop(&mut self) {
        match std::mem::replace(&mut self.running, Running::Stopped) {
            Running::InProcess(s) => s.stop().await,
            Running::Process(_) => panic!(
                "{}: stop() is for in-process services; use terminate()",
                self.name
            ),
            Running::Stopped => {}
        }
    }

    /// SIGTERM, then waits for the exit; returns the exit status code (process mode
    /// only).
    pub async fn terminate(&mut self) -> Option<i32> {
        let mut p = match std::mem::replace(&mut self.running, Running::Stopped) {
            Running::Process(p) => p,
            Running::InProcess(_) => panic!("{}: terminate() needs .process()", self.name),
            Running::Stopped => return None,
        };
        if let Some(pid) = p.child.id() {
            signal(i32::try_from(pid).ok()?, 15);
        }
        within("the service to exit after SIGTERM", p.child.wait())
            .await
            .ok()
            .and_then(|s| s.code())
    }

    /// Starts the service again on the same address with the same settings: a binary
    /// is killed first (as in a crash); an in-process service is shut down gracefully
    /// (its shutdown future), then its address is bound again.
    pub async fn restart(&mut self) {
        let was_in_process = matches!(self.running, Running::InProcess(_));
        match std::mem::replace(&mut self.running, Running::Stopped) {
            Running::Process(mut p) => {
                let _ = p.child.kill().await;
            }
            Running::InProcess(s) => s.stop().await,
            Running::Stopped => {}
        }
        self.running = if self.builder.process && !was_in_process {
            Running::Process(Process::start(&self.builder, Some(self.addr)).await)
        } else {
            let listener = bind(&self.name, self.addr).await;
            Running::InProcess(InProcess::start(&self.builder, listener).await)
        };
    }
}

/// Waits for `GET /healthz` to answer 2xx, unless `exited` resolves first (the service
/// stopped before it was ready; its output says why).
async fn wait_healthy<F>(name: &str, addr: SocketAddr, exited: F)
where
    F: std::future::Future<Output = String>,
{
    let url = format!("http://{addr}/healthz");
    let what = format!("{name} /healthz");
    let healthy = eventually(&what, || {
        let url = url.clone();
        async move {
            let r = reqwest::get(url).await.ok()?;
            r.status().is_success().then_some(())
        }
    });
    tokio::select! {
        () = healthy => {}
        why = exited => panic!("{name} stopped before it was ready: {why}"),
    }
}

// === In-process ===

/// A service's `run` on a runtime (and thread) of its own, so that a test's own
/// runtime flavour or a blocking call in the test cannot starve it, and a hard stop
/// drops everything it holds, as a crash does.
#[derive(Debug)]
struct InProcess {
    addr: SocketAddr,
    /// Resolves `run`'s shutdown future: a graceful stop.
    shutdown: CancellationToken,
    /// Abandons `run` and shuts its runtime down: a hard stop.
    abort: CancellationToken,
    /// `run`'s result (`None` after a hard stop), once its runtime is gone.
    done: Option<oneshot::Receiver<Option<String>>>,
}

/// A service's settings, parsed as its binary parses them.
enum Config {
    Auth(auth_svc::config::Config),
    // Boxed: the gateway has by far the most settings.
    Gateway(Box<ws_gateway::Config>),
    Broadcaster(broadcaster::Config),
    Monitor(monitor::Config),
}

impl Config {
    /// Parses `builder`'s variables and arguments without touching this process's
    /// environment: each `HERALD_*` variable becomes the flag it is the environment
    /// form of. The checks the binary runs before `run` run here too.
    fn parse(builder: &ServiceBuilder, listen: SocketAddr) -> Self {
        let name = builder.name.as_str();
        let config = match name {
            "auth-svc" => {
                let cli: auth_svc::config::Cli = parse_flags(builder, listen);
                assert!(
                    matches!(cli.command, None | Some(auth_svc::config::Command::Serve)),
                    "auth-svc: an in-process service only serves; run subcommands with run_bin"
                );
                Self::Auth(cli.config)
            }
            "ws-gateway" => Self::Gateway(Box::new(parse_flags(builder, listen))),
            "broadcaster" => Self::Broadcaster(parse_flags(builder, listen)),
            "monitor" => Self::Monitor(parse_flags(builder, listen)),
            other => panic!("{other} is not a Herald service"),
        };
        let problems = match &config {
            Self::Auth(c) => c.validate().err(),
            Self::Gateway(c) => c.validate().err(),
            Self::Broadcaster(c) => c.validate().err(),
            Self::Monitor(c) => c.validate().err(),
        }
        .map(|e| e.lines().to_vec())
        .unwrap_or_default();
        assert!(
            problems.is_empty(),
            "{name}: invalid configuration (a test of refused settings needs run_bin): {}",
            problems.join("; ")
        );
        config
    }

    async fn run(
        self,
        listener: tokio::net::TcpListener,
        engine: Option<Engine>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let shutdown = shutdown.cancelled_owned();
        match self {
            Self::Auth(c) => auth_svc::run(listener, c, engine, shutdown).await,
            Self::Gateway(c) => ws_gateway::run(listener, *c, engine, shutdown).await,
            Self::Broadcaster(c) => broadcaster::run(listener, c, engine, shutdown).await,
            Self::Monitor(c) => monitor::run(listener, c, engine, shutdown).await,
        }
    }
}

/// `builder`'s settings as a command line for `C`: its arguments, then `--flag=value`
/// for each variable that is some flag's environment form, `HERALD_LISTEN` the address
/// the harness bound. A variable no flag of this service reads is skipped, as the
/// binary ignores it (the test keys are set for every service).
fn parse_flags<C: Parser>(builder: &ServiceBuilder, listen: SocketAddr) -> C {
    let command = C::command();
    let mut argv = vec![builder.name.clone()];
    let listen = listen.to_string();
    let env = builder
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain([("HERALD_LISTEN", listen.as_str())]);
    for (key, value) in env {
        let Some(arg) = command
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == key))
        else {
            continue;
        };
        let long = arg.get_long().expect("every HERALD_* setting has a --flag");
        argv.push(format!("--{long}={value}"));
    }
    // Flags go before a subcommand (auth-svc), so the test's own arguments come last.
    argv.extend(builder.args.iter().cloned());
    C::try_parse_from(&argv).unwrap_or_else(|e| panic!("{}: {argv:?}: {e}", builder.name))
}

/// Lifts the soft open-file limit to the hard one, as ws-gateway's binary does: an
/// in-process gateway's clients are this process's file descriptors.
fn raise_nofile_limit() {
    static RAISED: OnceLock<()> = OnceLock::new();
    RAISED.get_or_init(|| {
        let _ = rlimit::increase_nofile_limit(u64::MAX);
    });
}

/// The accept queue of an in-process service's listener: ws-gateway's binary asks for
/// as much, so that thousands of clients connecting at once are not dropped.
const LISTEN_BACKLOG: u32 = 8192;

/// Binds `addr`: port 0, or on a restart the address the previous run just released.
async fn bind(name: &str, addr: SocketAddr) -> std::net::TcpListener {
    let listener = eventually(&format!("{name} to bind {addr}"), || async move {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    })
    .await;
    // Handed over to the service's own runtime.
    listener.into_std().expect("std listener")
}

impl InProcess {
    /// Starts `run` on `listener` and waits for `/healthz`.
    async fn start(builder: &ServiceBuilder, listener: std::net::TcpListener) -> Self {
        let name = builder.name.clone();
        let addr = listener.local_addr().expect("listener address");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let config = Config::parse(builder, addr);
        let engine = builder.engine.clone();
        if name == "ws-gateway" {
            raise_nofile_limit();
        }
        let (shutdown, abort) = (CancellationToken::new(), CancellationToken::new());
        let (done_tx, done) = oneshot::channel();
        let (stop, hard_stop) = (shutdown.clone(), abort.clone());
        std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("service runtime");
                let result = rt.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    tokio::select! {
                        r = config.run(listener, engine, stop) => Some(r.err().map(|e| format!("{e:#}")).unwrap_or_default()),
                        () = hard_stop.cancelled() => None,
                    }
                });
                // Drops every task, and with them every socket the service held.
                rt.shutdown_timeout(Duration::from_secs(5));
                let _ = done_tx.send(result);
            })
            .expect("service thread");
        let mut svc = Self {
            addr,
            shutdown,
            abort,
            done: Some(done),
        };
        let done = svc.done.as_mut().expect("just set");
        wait_healthy(&name, addr, async move {
            match done.await {
                Ok(Some(e)) if !e.is_empty() => e,
                Ok(_) => "run returned".to_owned(),
                Err(_) => "its thread panicked".to_owned(),
            }
        })
        .await;
        svc
    }

    /// The shutdown future resolves; waits for `run` to return and its runtime to go.
    async fn stop(mut self) {
        self.shutdown.cancel();
        self.wait().await;
    }

    /// `run` is abandoned mid-flight; waits for its runtime to go.
    async fn kill(mut self) {
        self.abort.cancel();
        self.wait().await;
    }

    async fn wait(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = within("the in-process service to stop", done).await;
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.abort.cancel();
    }
}

// === Process ===

/// A Herald binary, killed on drop; its stderr is read line by line (for the address
/// it bound, or, when its log filter hides that line, its only listening socket in
/// `/proc`; and to copy to a log file or, with `HERALD_E2E_LOGS`, to the test's output).
#[derive(Debug)]
struct Process {
    child: Child,
    addr: SocketAddr,
    logged: Arc<Mutex<Logged>>,
}

/// What the binary logged so far: the addresses it bound, and its last lines (to say
/// why it stopped).
#[derive(Debug, Default)]
struct Logged {
    addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    tail: Vec<String>,
}

impl Process {
    /// Starts the binary on `addr` (port 0 unless restarting) and waits for its
    /// `listening` line and `/healthz`.
    async fn start(builder: &ServiceBuilder, addr: Option<SocketAddr>) -> Self {
        let name = builder.name.as_str();
        let listen = addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let mut cmd = Command::new(bin_path(name));
        cmd.args(&builder.args)
            .env("HERALD_LISTEN", listen.to_string())
            .envs(builder.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn service");
        let logged = Arc::new(Mutex::new(Logged::default()));
        let stderr = child.stderr.take().expect("piped stderr");
        tokio::spawn(read_log(stderr, builder.log_file.clone(), logged.clone()));

        let seen = logged.clone();
        let what = format!("{name} to log the address it listens on");
        let pid = child.id();
        let addr = tokio::select! {
            addr = eventually(&what, || {
                let seen = seen.clone();
                async move {
                    // A log filter may hide the line: then its only listener is the one.
                    let logged = seen.lock().expect("log state").addr;
                    logged.or_else(|| match pid.map(crate::listening_addrs).as_deref() {
                        Some([only]) => Some(*only),
                        _ => None,
                    })
                }
            }) => addr,
            status = child.wait() => panic!(
                "{name} exited ({status:?}) before listening:\n{}",
                logged.lock().expect("log state").tail.join("\n")
            ),
        };
        let tail = logged.clone();
        wait_healthy(name, addr, async {
            let status = child.wait().await;
            let tail = tail.lock().expect("log state").tail.join("\n");
            format!("exited ({status:?}):\n{tail}")
        })
        .await;
        Self {
            child,
            addr,
            logged,
        }
    }
}

/// Reads the binary's stderr to its end: notes the addresses it logs as listening on,
/// keeps the last lines, and copies every line to `log_file` or, with
/// `HERALD_E2E_LOGS`, to the test's stderr.
async fn read_log(stderr: ChildStderr, log_file: Option<PathBuf>, logged: Arc<Mutex<Logged>>) {
    const TAIL: usize = 50;
    let mut file = match &log_file {
        Some(path) => Some(
            tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .await
                .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display())),
        ),
        None => None,
    };
    let echo = std::env::var_os("HERALD_E2E_LOGS").is_some();
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(f) = file.as_mut() {
            let _ = f.write_all(format!("{line}\n").as_bytes()).await;
        } else if echo {
            eprintln!("{line}");
        }
        let mut l = logged.lock().expect("log state");
        if let Some((admin, addr)) = listener_in(&line) {
            if admin {
                l.admin_addr.get_or_insert(addr);
            } else {
                l.addr.get_or_insert(addr);
            }
        }
        if l.tail.len() == TAIL {
            l.tail.remove(0);
        }
        l.tail.push(line);
    }
}

/// The address of the main listener in a service's `… listening` log line.
pub fn listening_addr(line: &str) -> Option<SocketAddr> {
    listener_in(line).and_then(|(admin, addr)| (!admin).then_some(addr))
}

/// The address in a `… listening` log line (plain or JSON), and whether it is the
/// admin listener's.
fn listener_in(line: &str) -> Option<(bool, SocketAddr)> {
    if !line.contains("listening") {
        return None;
    }
    let start = line
        .find("addr=")
        .map(|i| i + "addr=".len())
        .or_else(|| line.find("\"addr\":\"").map(|i| i + "\"addr\":\"".len()))?;
    let rest = &line[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']')))
        .unwrap_or(rest.len());
    let addr = rest[..end].parse().ok()?;
    Some((line.contains("admin"), addr))
}

#[cfg(test)]
mod unit {
    use super::listener_in as listening_addr;

    #[test]
    fn finds_the_address_in_plain_and_json_lines() {
        let plain = "2026-01-01T00:00:00Z  INFO ws_gateway: ws-gateway listening addr=127.0.0.1:4321 node=n";
        assert_eq!(
            listening_addr(plain),
            Some((false, "127.0.0.1:4321".parse().expect("addr")))
        );
        let json = r#"{"fields":{"message":"listening","addr":"127.0.0.1:55"}}"#;
        assert_eq!(
            listening_addr(json),
            Some((false, "127.0.0.1:55".parse().expect("addr")))
        );
        let admin = "INFO auth_svc: auth-svc admin endpoints listening addr=127.0.0.1:9";
        assert_eq!(
            listening_addr(admin),
            Some((true, "127.0.0.1:9".parse().expect("addr")))
        );
        assert_eq!(listening_addr("INFO x: ready"), None);
    }
}
