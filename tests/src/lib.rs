//! The end-to-end harness: starts a private `redis-server` (on a unix socket) and the
//! real Herald services, and drives them with real clients.
//!
//! Services run in this process by default: each service crate's `run` on a listener
//! the harness bound to `127.0.0.1:0` ([`ServiceBuilder`]). Tests of what only a
//! process has (signals, exit codes, crashes, pids, logs) run the binaries instead
//! ([`ServiceBuilder::process`], [`run_bin`]), which the harness builds first
//! ([`bin_path`]), so nothing needs building beforehand and no binary is stale.
//!
//! Every wait has a timeout ([`patience`]); every service and process is stopped when
//! its handle drops, so a failing test leaves nothing running.

#![allow(
    unreachable_pub,
    reason = "the harness is used by this crate's tests only"
)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub mod browser;
pub mod cluster;
pub mod load_client;
mod service;
#[cfg(test)]
mod tests;

pub use cluster::RedisCluster;
pub use service::{Service, ServiceBuilder, Store, bin_path, listening_addr};

/// The HS256 secret every test cluster shares.
pub const TEST_SECRET: &str = "e2e-test-secret-0123456789";
/// The admin key of auth-svc and monitor in tests.
pub const ADMIN_KEY: &str = "e2e-admin-key";
/// The broadcaster API key in tests.
pub const API_KEY: &str = "e2e-api-key";

/// How long any single wait may take; `HERALD_E2E_PATIENCE_MS` overrides.
pub fn patience() -> Duration {
    let ms = std::env::var("HERALD_E2E_PATIENCE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    Duration::from_millis(ms)
}

/// Awaits `fut` for at most [`patience`], panicking with `what` on expiry.
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(patience(), fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {:?} waiting for {what}", patience()),
    }
}

/// What a check polled by [`eventually`] returns: `Some`/`Ok` ends the wait with its
/// value; `None`/`Err` means "not yet", and the last `Err` says what was still wrong
/// when time ran out.
pub trait Polled {
    type Value;
    fn settle(self) -> Result<Self::Value, Option<String>>;
}

impl<T> Polled for Option<T> {
    type Value = T;
    fn settle(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: std::fmt::Display> Polled for Result<T, E> {
    type Value = T;
    fn settle(self) -> Result<T, Option<String>> {
        self.map_err(|e| Some(e.to_string()))
    }
}

/// Polls `check` until it succeeds, for at most [`patience`].
pub async fn eventually<P, F, Fut>(what: &str, check: F) -> P::Value
where
    P: Polled,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = P>,
{
    eventually_within(what, patience(), check).await
}

/// Polls `check` until it succeeds, for at most `limit` (for waits that are longer
/// than [`patience`] by design, such as TTLs running out, or that must be shorter);
/// a check still running at the deadline is abandoned.
pub async fn eventually_within<P, F, Fut>(what: &str, limit: Duration, mut check: F) -> P::Value
where
    P: Polled,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = P>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let not_yet = match tokio::time::timeout_at(deadline, check()).await {
            Ok(polled) => match polled.settle() {
                Ok(v) => return v,
                Err(why) => why,
            },
            Err(_) => Some("the last check was still running".to_owned()),
        };
        if tokio::time::Instant::now() >= deadline {
            let why = not_yet.map(|w| format!(": {w}")).unwrap_or_default();
            panic!("timed out after {limit:?} waiting for {what}{why}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A number from the environment (a test's knob), or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The resident set of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Bytes that arrived on the established connections of `server` (a listening
/// address) and that its process has not read yet, from `/proc/net/tcp`: how a test
/// sees that a running service has read what it was sent, or that a stopped one has
/// been sent something.
pub fn unread_bytes(server: SocketAddr) -> u64 {
    tcp_sockets()
        .into_iter()
        .filter(|s| s.state == ESTABLISHED && s.local == server)
        .map(|s| s.unread)
        .sum()
}

/// `/proc/net/tcp`'s state of an established connection, and of a listening socket.
const ESTABLISHED: u8 = 0x01;
const LISTEN: u8 = 0x0A;

/// One IPv4 TCP socket of this network namespace, from `/proc/net/tcp`.
struct TcpSocketEntry {
    local: SocketAddr,
    state: u8,
    /// Bytes received and not yet read by the owning process.
    unread: u64,
    inode: String,
}

fn tcp_sockets() -> Vec<TcpSocketEntry> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state, queues) = (fields.get(1)?, fields.get(3)?, fields.get(4)?);
            let (ip, port) = local.split_once(':')?;
            // The kernel prints the address as the host-order view of its network bytes.
            let ip = Ipv4Addr::from(u32::from_str_radix(ip, 16).ok()?.to_ne_bytes());
            let port = u16::from_str_radix(port, 16).ok()?;
            Some(TcpSocketEntry {
                local: SocketAddr::from((ip, port)),
                state: u8::from_str_radix(state, 16).ok()?,
                unread: u64::from_str_radix(queues.split_once(':')?.1, 16).ok()?,
                inode: (*fields.get(9)?).to_owned(),
            })
        })
        .collect()
}

/// An address where nothing listens (a [`reserve_port`] no program is told about):
/// a connection to it is refused while the returned socket lives.
pub fn dead_addr() -> (tokio::net::TcpSocket, SocketAddr) {
    let (socket, port) = reserve_port();
    (socket, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// A port held for a program that must be told its port before it starts (`just dev`,
/// a compose stack): the returned socket is bound to it with `SO_REUSEADDR` but not
/// listening, so no other bind to port 0 is given it while the socket lives, yet the
/// program, binding with `SO_REUSEADDR` as Herald's services, redis-server and Go
/// programs do, can listen on it. Nothing listens on it until then.
pub fn reserve_port() -> (tokio::net::TcpSocket, u16) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind");
    let port = socket.local_addr().expect("addr").port();
    (socket, port)
}

/// A Redis URL where nothing listens (see [`dead_addr`]; keep the socket while it is used).
pub fn dead_redis() -> (tokio::net::TcpSocket, String) {
    let (socket, addr) = dead_addr();
    (socket, format!("redis://{addr}"))
}

/// The TCP addresses process `pid` listens on (IPv4), from `/proc`: how a test learns
/// the port a program given port 0 bound when the program does not print it.
pub fn listening_addrs(pid: u32) -> Vec<SocketAddr> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let inodes: Vec<String> = fds
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    tcp_sockets()
        .into_iter()
        .filter(|s| s.state == LISTEN && inodes.contains(&s.inode))
        .map(|s| s.local)
        .collect()
}

// === Redis ===

/// Where a test cluster keeps its state: a private Redis, or one in-memory engine
/// shared by the services this process runs. The protocol-level suite runs on both
/// ([`both_engines!`]), so a feature cannot exist in one engine only.
#[derive(Debug)]
pub enum Backend {
    Redis(Redis),
    Memory(herald_common::engine::Engine),
    /// A private six-node Redis Cluster (services get `HERALD_REDIS_CLUSTER`).
    Cluster(RedisCluster),
}

impl Backend {
    /// A fresh backend of `kind`.
    pub async fn start(kind: herald_common::engine::EngineKind) -> Self {
        match kind {
            herald_common::engine::EngineKind::Redis => Self::Redis(Redis::start().await),
            herald_common::engine::EngineKind::Memory => {
                Self::Memory(herald_common::engine::Engine::memory())
            }
        }
    }

    /// Sends a control command to every gateway, as auth-svc and the monitor do.
    pub async fn control(&self, command: &Value) {
        let keys = herald_common::keys::Keys::new("herald:");
        within(
            "a control command",
            self.engine()
                .await
                .publish_raw(&keys.control(), command.to_string()),
        )
        .await
        .expect("control published");
    }

    /// A fresh six-node Redis Cluster.
    pub async fn cluster() -> Self {
        Self::Cluster(RedisCluster::start().await)
    }

    /// The Redis, for tests that also look at it directly.
    pub fn redis(&self) -> Option<&Redis> {
        match self {
            Self::Redis(r) => Some(r),
            Self::Memory(_) | Self::Cluster(_) => None,
        }
    }
}

/// Runs `async fn $name(backend: Backend)` as two tests, `$name::redis` and
/// `$name::memory`, one per engine.
#[macro_export]
macro_rules! both_engines {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                let backend =
                    $crate::Backend::start(herald_common::engine::EngineKind::Redis).await;
                super::$name(backend).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                let backend =
                    $crate::Backend::start(herald_common::engine::EngineKind::Memory).await;
                super::$name(backend).await;
            }
        }
    )+};
}

/// A private `redis-server`, killed on drop: on a unix socket in a directory of its
/// own (no port to race for), or on TCP for the few tests that need a port
/// ([`Redis::start_tcp`]).
#[derive(Debug)]
pub struct Redis {
    listen: RedisListen,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

#[derive(Debug, Clone, Copy)]
enum RedisListen {
    Unix,
    Tcp(u16),
}

/// A byte stream both ways (a unix or TCP connection).
pub trait Duplex: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Duplex for T {}

/// Where a [`Redis`] listens.
#[derive(Debug, Clone)]
pub enum RedisEndpoint {
    Unix(PathBuf),
    Tcp(u16),
}

impl RedisEndpoint {
    /// A raw connection to the server.
    pub async fn connect(&self) -> std::io::Result<Box<dyn Duplex>> {
        Ok(match self {
            Self::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
            Self::Tcp(port) => Box::new(TcpStream::connect(("127.0.0.1", *port)).await?),
        })
    }
}

/// Ports [`Redis::start_tcp`] tries: below Linux's ephemeral range (32768-60999), so
/// no port-0 bind in this or another test is handed one of them.
const REDIS_TCP_PORTS: std::ops::Range<u16> = 20_000..32_000;

impl Redis {
    /// Starts `redis-server` (no persistence) on a unix socket and waits until it answers.
    pub async fn start() -> Self {
        let mut r = Self {
            listen: RedisListen::Unix,
            child: None,
            dir: tempfile::tempdir().expect("temp dir"),
        };
        assert!(r.spawn().await, "redis-server did not start");
        r
    }

    /// Starts `redis-server` on a TCP port of its own: a random one, another if that
    /// one is taken (the server exits when it cannot bind).
    pub async fn start_tcp() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut r = Self {
            listen: RedisListen::Unix,
            child: None,
            dir,
        };
        for _ in 0..20 {
            r.listen = RedisListen::Tcp(rand::random_range(REDIS_TCP_PORTS));
            if r.spawn().await {
                return r;
            }
        }
        panic!("redis-server found no free port in 20 tries");
    }

    /// The server's TCP port (a [`Redis::start_tcp`] server only).
    pub fn port(&self) -> u16 {
        match self.listen {
            RedisListen::Tcp(port) => port,
            RedisListen::Unix => {
                panic!("this Redis listens on a unix socket: use Redis::start_tcp")
            }
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    pub fn url(&self) -> String {
        match self.listen {
            RedisListen::Unix => format!("redis+unix://{}", self.socket().display()),
            RedisListen::Tcp(port) => format!("redis://127.0.0.1:{port}"),
        }
    }

    /// Where the server listens, for proxies in front of it.
    pub fn endpoint(&self) -> RedisEndpoint {
        match self.listen {
            RedisListen::Unix => RedisEndpoint::Unix(self.socket()),
            RedisListen::Tcp(port) => RedisEndpoint::Tcp(port),
        }
    }

    /// Starts the server and waits until it answers; false if it exited first (its
    /// TCP port was taken).
    async fn spawn(&mut self) -> bool {
        let mut cmd = Command::new("redis-server");
        match self.listen {
            RedisListen::Unix => cmd
                .args(["--port", "0", "--unixsocket"])
                .arg(self.socket())
                .args(["--unixsocketperm", "700"]),
            RedisListen::Tcp(port) => cmd
                .args(["--port", &port.to_string()])
                .args(["--bind", "127.0.0.1"]),
        };
        let child = spawn_redis_server(&mut cmd, self.dir.path());
        let url = self.url();
        let child = self.child.insert(child);
        let answers = eventually("redis-server to answer PING", || {
            let url = url.clone();
            async move {
                let client = redis::Client::open(url).ok()?;
                let mut c = client.get_multiplexed_async_connection().await.ok()?;
                redis::cmd("PING").query_async::<String>(&mut c).await.ok()
            }
        });
        let answered = tokio::select! {
            _ = answers => true,
            _ = child.wait() => false,
        };
        if !answered {
            self.child = None;
        }
        answered
    }

    /// The server's process id (to stop and continue it with [`signal`]).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Kills the server (SIGKILL): everything in it is lost, as in a crash.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// Kills and starts again on the same socket or port, empty.
    pub async fn restart(&mut self) {
        self.kill().await;
        assert!(self.spawn().await, "redis-server did not restart");
    }

    /// Stops the server the way an operator restarts it (`SHUTDOWN SAVE`: the data is
    /// written to disk first) and starts it again on the same socket or port with that data, as a
    /// persistent Redis comes back from an upgrade or a host reboot.
    pub async fn restart_keeping_data(&mut self) {
        let mut c = self.conn().await;
        // The server closes the connection instead of answering.
        let _ = redis::cmd("SHUTDOWN")
            .arg("SAVE")
            .query_async::<()>(&mut c)
            .await;
        if let Some(mut child) = self.child.take() {
            within("redis-server to exit after SHUTDOWN SAVE", child.wait())
                .await
                .expect("wait for redis-server");
        }
        assert!(
            self.dir.path().join("dump.rdb").exists(),
            "SHUTDOWN SAVE wrote no dump.rdb"
        );
        assert!(self.spawn().await, "redis-server did not restart");
    }

    /// A plain connection for assertions on Redis state.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(self.url()).expect("redis url");
        within(
            "a Redis connection",
            client.get_multiplexed_async_connection(),
        )
        .await
        .expect("redis connection")
    }
}

/// Starts `cmd` (a `redis-server` with its own listening arguments) the way every test
/// server runs: no persistence, not protected, in `dir`, quiet, killed on drop.
pub(crate) fn spawn_redis_server(cmd: &mut Command, dir: &std::path::Path) -> Child {
    cmd.args(["--save", "", "--appendonly", "no"])
        .args(["--protected-mode", "no"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start redis-server ({e}): install it, e.g. `apt-get install -y redis-server`")
        })
}

// === Processes ===

/// Sends a signal by number (15 = SIGTERM, 9 = SIGKILL, 19 = SIGSTOP, 18 = SIGCONT).
pub fn signal(pid: i32, sig: i32) {
    // `kill(1)` keeps this crate free of unsafe code.
    let _ = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// Runs a Herald binary to completion (CLI subcommands, config errors); returns
/// (exit code, stdout, stderr).
pub async fn run_bin(name: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    output(
        name,
        Command::new(bin_path(name))
            .args(args)
            .envs(env.iter().copied()),
    )
    .await
}

/// [`run_bin`] with exactly `env`: nothing inherited, so the caller's own `HERALD_*`
/// or `RUST_LOG` cannot change the outcome.
pub async fn run_bin_clean(
    name: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> (i32, String, String) {
    let mut cmd = Command::new(bin_path(name));
    cmd.args(args).env_clear().envs(env.iter().copied());
    output(name, &mut cmd).await
}

async fn output(name: &str, cmd: &mut Command) -> (i32, String, String) {
    let out = within(
        &format!("{name} to exit"),
        cmd.stdin(Stdio::null()).kill_on_drop(true).output(),
    )
    .await
    .expect("run binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Serves `body` as JSON on every request (a stand-in JWKS endpoint); returns its
/// URL and the server task (abort it to stop serving).
pub async fn serve_json(body: String) -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!(
        "http://{}/.well-known/jwks.json",
        listener.local_addr().expect("addr")
    );
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    (url, task)
}

/// Publishes `{"n": 1..=count}` to `channel` through the broadcaster at about
/// `per_sec`, each with an idempotency key so that a retry (through a Redis outage)
/// publishes it once; returns when all are acknowledged.
pub async fn publish_stream(broadcaster: String, channel: &'static str, count: u64, per_sec: u64) {
    let client = reqwest::Client::new();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / per_sec));
    for i in 1..=count {
        tick.tick().await;
        let body = json!({"channel": channel, "message": {"n": i}, "idempotency_key": format!("{channel}-{i}")});
        eventually(&format!("publish #{i} acknowledged"), || async {
            let r = client
                .post(format!("{broadcaster}/v1/publish"))
                .bearer_auth(API_KEY)
                .json(&body)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .ok()?;
            r.status().is_success().then_some(())
        })
        .await;
    }
}

// === Tokens ===

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// An HS256 token for `sub` signed with [`TEST_SECRET`], valid for an hour.
pub fn token(sub: &str, channels: &[&str], publish: &[&str]) -> String {
    token_with(json!({
        "sub": sub,
        "channels": channels,
        "publish": publish,
        "exp": now() + 3600,
        "iat": now(),
        "iss": "herald-auth",
        "aud": "herald",
        "jti": format!("jti-{:016x}", rand::random::<u64>()),
    }))
}

/// An HS256 token with exactly these claims, signed with [`TEST_SECRET`].
pub fn token_with(claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(TEST_SECRET.as_bytes()),
    )
    .expect("encode token")
}

// === WebSocket client ===

/// A test WebSocket client.
#[derive(Debug)]
pub struct Ws {
    inner: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    pub code: u16,
    pub reason: String,
}

impl Ws {
    /// Opens a WebSocket to `url` (with any query string).
    pub async fn connect(url: &str) -> Self {
        Self::try_connect(url, &[])
            .await
            .expect("websocket connect")
    }

    /// Opens a WebSocket with extra request headers; on a refused handshake returns
    /// the HTTP status.
    pub async fn try_connect(url: &str, headers: &[(&str, &str)]) -> Result<Self, u16> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = url.into_client_request().expect("request");
        for (k, v) in headers {
            req.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes())
                    .expect("header name"),
                v.parse().expect("header value"),
            );
        }
        match within("websocket handshake", tokio_tungstenite::connect_async(req)).await {
            Ok((inner, _)) => Ok(Self { inner }),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
            Err(e) => panic!("websocket handshake failed: {e}"),
        }
    }

    /// Connects and authenticates with a first frame; returns the client and `auth_success`.
    pub async fn auth(gw: &Service, token: &str, channels: &[&str]) -> (Self, Value) {
        let mut ws = Self::connect(&gw.ws()).await;
        ws.send(json!({"type":"auth","token":token,"channels":channels}))
            .await;
        let ok = ws.recv_type("auth_success").await;
        (ws, ok)
    }

    pub async fn send(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        within("websocket send", self.inner.send(Message::text(text)))
            .await
            .expect("send");
    }

    pub async fn send_raw(&mut self, msg: Message) {
        within("websocket send", self.inner.send(msg))
            .await
            .expect("send");
    }

    /// The next JSON frame, skipping `heartbeat`s; panics on close or timeout.
    pub async fn recv(&mut self) -> Value {
        loop {
            let msg = within("a websocket frame", self.inner.next())
                .await
                .expect("connection ended")
                .expect("websocket error");
            match msg {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).expect("server sent invalid JSON");
                    if v["type"] != "heartbeat" {
                        return v;
                    }
                }
                Message::Close(c) => panic!("connection closed: {c:?}"),
                _ => {}
            }
        }
    }

    /// The next frame, which must be of `kind`.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        let v = self.recv().await;
        assert_eq!(v["type"], kind, "expected a {kind} frame, got {v}");
        v
    }

    /// Waits for a frame for at most `d`; `None` if nothing came.
    pub async fn recv_within(&mut self, d: Duration) -> Option<Value> {
        tokio::time::timeout(d, self.recv()).await.ok()
    }

    /// Reads until the server closes; returns the close code and reason and the
    /// frames received before it.
    pub async fn closed(&mut self) -> (Closed, Vec<Value>) {
        let mut frames = Vec::new();
        loop {
            let msg = within("the server to close the connection", self.inner.next()).await;
            match msg {
                Some(Ok(Message::Text(t))) => {
                    frames.push(serde_json::from_str(&t).unwrap_or(Value::Null));
                }
                Some(Ok(Message::Close(c))) => {
                    let (code, reason) = c
                        .map(|CloseFrame { code, reason }| (u16::from(code), reason.to_string()))
                        .unwrap_or((1005, String::new()));
                    return (Closed { code, reason }, frames);
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    return (
                        Closed {
                            code: 1006,
                            reason: String::new(),
                        },
                        frames,
                    );
                }
            }
        }
    }

    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.inner.close(None)).await;
    }
}

// === HTTP ===

/// A JSON HTTP call; returns (status, body as JSON or Null).
pub async fn http_json(
    method: reqwest::Method,
    url: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = client.request(method, url);
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = within(&format!("HTTP {url}"), req.send())
        .await
        .expect("http request");
    let status = resp.status().as_u16();
    let text = within("HTTP body", resp.text()).await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

// === Fault injection ===

/// A TCP proxy in front of Redis that can wedge Pub/Sub connections: after
/// [`WedgeProxy::wedge_subscribers`], connections that had sent SUBSCRIBE stay up
/// but stop receiving anything — the silent failure the gateway's probe must catch.
#[derive(Debug)]
pub struct WedgeProxy {
    pub port: u16,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::sync::Arc<ProxyConn>>>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Default)]
struct ProxyConn {
    subscriber: std::sync::atomic::AtomicBool,
    wedged: std::sync::atomic::AtomicBool,
}

impl WedgeProxy {
    /// A proxy on a port of its own in front of `redis`.
    pub async fn start(redis: &Redis) -> Self {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let conns: std::sync::Arc<std::sync::Mutex<Vec<std::sync::Arc<ProxyConn>>>> =
            std::sync::Arc::default();
        let registry = conns.clone();
        let upstream = redis.endpoint();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = upstream.connect().await else {
                    continue;
                };
                let state = std::sync::Arc::new(ProxyConn::default());
                registry.lock().expect("registry").push(state.clone());
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = tokio::io::split(server);
                let up = state.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = cr.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let chunk = String::from_utf8_lossy(&buf[..n]).to_ascii_uppercase();
                        if chunk.contains("SUBSCRIBE") {
                            up.subscriber.store(true, Ordering::Relaxed);
                        }
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = sr.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        if state.wedged.load(Ordering::Relaxed) {
                            // Swallow everything: the socket stays open, nothing arrives.
                            continue;
                        }
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Self { port, conns, task }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Wedges every Pub/Sub connection open now; returns how many.
    pub fn wedge_subscribers(&self) -> usize {
        use std::sync::atomic::Ordering;
        let conns = self.conns.lock().expect("registry");
        let mut n = 0;
        for c in conns
            .iter()
            .filter(|c| c.subscriber.load(Ordering::Relaxed))
        {
            c.wedged.store(true, Ordering::Relaxed);
            n += 1;
        }
        n
    }
}

impl Drop for WedgeProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
