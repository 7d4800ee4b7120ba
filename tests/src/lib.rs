//! The end-to-end harness: starts a private `redis-server` and the real Herald
//! binaries on free loopback ports, and drives them with real clients.
//!
//! Every wait has a timeout ([`patience`]); every process is killed when its handle
//! drops, so a failing test leaves nothing running.
//!
//! The binaries are found in the workspace's target directory (`debug` unless
//! `HERALD_E2E_PROFILE=release`); build them first (`cargo build --workspace --bins`,
//! which `just test` does).

#![allow(
    unreachable_pub,
    reason = "the harness is used by this crate's tests only"
)]

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
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
pub mod load_client;
#[cfg(test)]
mod tests;

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
            let established = *state == "01";
            let unread = u64::from_str_radix(queues.split_once(':')?.1, 16).ok()?;
            (established && SocketAddr::from((ip, port)) == server).then_some(unread)
        })
        .sum()
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot find a free port")
}

// === Redis ===

/// A private `redis-server` on a free port, killed on drop.
#[derive(Debug)]
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Redis {
    /// Starts `redis-server` (no persistence) and waits until it answers.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let mut r = Self {
            port,
            child: None,
            dir,
        };
        r.spawn().await;
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no"])
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}): install it, e.g. `apt-get install -y redis-server`")
            });
        self.child = Some(child);
        let url = self.url();
        eventually("redis-server to answer PING", || {
            let url = url.clone();
            async move {
                let client = redis::Client::open(url).ok()?;
                let mut c = client.get_multiplexed_async_connection().await.ok()?;
                redis::cmd("PING").query_async::<String>(&mut c).await.ok()
            }
        })
        .await;
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

    /// Kills and starts again on the same port, empty.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }

    /// Stops the server the way an operator restarts it (`SHUTDOWN SAVE`: the data is
    /// written to disk first) and starts it again on the same port with that data, as a
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
        self.spawn().await;
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

// === Services ===

/// The path of a built Herald binary.
pub fn bin_path(name: &str) -> PathBuf {
    let profile = std::env::var("HERALD_E2E_PROFILE").unwrap_or_else(|_| "debug".to_owned());
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = target.join(profile).join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`)",
        path.display()
    );
    path
}

/// How to start one Herald service.
#[derive(Debug, Clone)]
pub struct ServiceBuilder {
    name: String,
    env: Vec<(String, String)>,
    args: Vec<String>,
    port: Option<u16>,
    /// Where stderr goes (appended, restarts included); see [`ServiceBuilder::log_to`].
    log_file: Option<PathBuf>,
}

/// A running Herald binary, killed (SIGKILL) on drop.
#[derive(Debug)]
pub struct Service {
    pub name: String,
    pub addr: SocketAddr,
    child: Option<Child>,
    builder: ServiceBuilder,
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
            port: None,
            log_file: None,
        }
    }

    pub fn redis(self, redis: &Redis) -> Self {
        self.env("HERALD_REDIS_URL", &redis.url())
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Appends the service's stderr (its logs) to `path`, for tests that read them.
    pub fn log_to(mut self, path: &std::path::Path) -> Self {
        self.log_file = Some(path.to_owned());
        self
    }

    /// Starts the binary on a free port and waits for `/healthz`.
    pub async fn spawn(self) -> Service {
        let port = self.port.unwrap_or_else(free_port);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let mut svc = Service {
            name: self.name.clone(),
            addr,
            child: None,
            builder: ServiceBuilder {
                port: Some(port),
                ..self
            },
        };
        svc.start().await;
        svc
    }
}

impl Service {
    async fn start(&mut self) {
        let mut cmd = Command::new(bin_path(&self.builder.name));
        cmd.args(&self.builder.args)
            .env("HERALD_LISTEN", self.addr.to_string())
            .envs(self.builder.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true);
        if let Some(path) = &self.builder.log_file {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
            cmd.stderr(file);
        } else if std::env::var("HERALD_E2E_LOGS").is_err() {
            cmd.stderr(Stdio::null());
        }
        self.child = Some(cmd.spawn().expect("spawn service"));
        let url = format!("{}/healthz", self.http());
        let name = self.name.clone();
        eventually(&format!("{name} /healthz"), || {
            let url = url.clone();
            async move {
                let r = reqwest::get(url).await.ok()?;
                r.status().is_success().then_some(())
            }
        })
        .await;
    }

    /// `http://127.0.0.1:<port>`.
    pub fn http(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `ws://127.0.0.1:<port>/ws`.
    pub fn ws(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// SIGKILL, as in a crash.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// SIGTERM, then waits for the exit; returns the exit status code.
    pub async fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        if let Some(pid) = child.id() {
            let pid = i32::try_from(pid).ok()?;
            signal(pid, 15);
        }
        within("the service to exit after SIGTERM", child.wait())
            .await
            .ok()
            .and_then(|s| s.code())
    }

    /// Starts the same binary again, same port and settings.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.start().await;
    }
}

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
    pub async fn start(upstream_port: u16) -> Self {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let conns: std::sync::Arc<std::sync::Mutex<Vec<std::sync::Arc<ProxyConn>>>> =
            std::sync::Arc::default();
        let registry = conns.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)).await else {
                    continue;
                };
                let state = std::sync::Arc::new(ProxyConn::default());
                registry.lock().expect("registry").push(state.clone());
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
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
