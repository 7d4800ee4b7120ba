//! `just dev`, run as a newcomer runs it: it comes up with every service ready, or it
//! fails loudly, saying why, and leaves nothing running.
//!
//! Each test gives the recipe ports it holds for it ([`reserve_port`]) and a log
//! directory of its own (`HERALD_DEV_*_PORT`, `HERALD_DEV_LOG_DIR`), so it never meets
//! another test or a developer's own `just dev`, and runs it with `--no-deps`: the
//! binaries are the ones the harness builds ([`crate::bin_path`]). The recipe and
//! every process it starts run in a process group of their own, which each test checks
//! is empty at the end and kills (SIGKILL) in any case.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStderr, Command};

use crate::{Redis, reserve_port};

/// Longest a whole `just dev` run may take to come up or to fail (the recipe itself
/// gives each service 30 s to become ready).
const DEV_PATIENCE: Duration = Duration::from_secs(60);
/// Longest `just dev` may take to stop everything after Ctrl-C.
const STOP_PATIENCE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn dev_names_a_taken_service_port_and_starts_nothing() {
    let ports = Ports::free();
    // Something else holds the broadcaster's port.
    let holder = std::net::TcpListener::bind(("127.0.0.1", ports.broadcaster)).expect("bind");
    let run = Dev::start(&ports, &[]).await;
    let (code, stdout, stderr) = run.finish().await;

    assert_ne!(code, 0, "just dev must fail; it said:\n{stdout}{stderr}");
    let p = ports.broadcaster;
    assert!(
        stderr.contains(&format!("port {p} (broadcaster) is already in use"))
            && stderr.contains("HERALD_DEV_BROADCASTER_PORT="),
        "the error must name the port, the service and the setting that moves it:\n{stderr}"
    );
    assert!(!stdout.contains("is up"), "claimed to be up:\n{stdout}");
    assert_nothing_listens(&ports.all_but(p)).await;
    drop(holder);
}

#[tokio::test]
async fn dev_refuses_a_redis_port_already_taken_by_another_redis() {
    // Another redis-server (Debian's package starts one on 6379) holds the port: dev must
    // not quietly use it.
    let other = Redis::start_tcp().await;
    let mut ports = Ports::free();
    ports.redis = other.port();
    let run = Dev::start(&ports, &[]).await;
    let (code, stdout, stderr) = run.finish().await;

    assert_ne!(code, 0, "just dev must fail; it said:\n{stdout}{stderr}");
    assert!(
        stderr.contains(&format!("port {} (Redis) is already in use", other.port()))
            && stderr.contains("HERALD_DEV_REDIS_PORT="),
        "the error must name the port and HERALD_DEV_REDIS_PORT:\n{stderr}"
    );
    assert!(!stdout.contains("is up"), "claimed to be up:\n{stdout}");
    assert_nothing_listens(&ports.all_but(other.port())).await;
    // The other Redis is left alone.
    let _ = other.conn().await;
}

#[tokio::test]
async fn dev_reports_a_service_that_does_not_come_up_and_stops_the_rest() {
    let ports = Ports::free();
    // A bad setting only the gateway reads: it exits at start, the others come up.
    let run = Dev::start(&ports, &[("HERALD_MAX_CONNECTIONS_PER_IP", "lots")]).await;
    let (code, stdout, stderr) = run.finish().await;

    assert_ne!(code, 0, "just dev must fail; it said:\n{stdout}{stderr}");
    assert!(
        stderr.contains("ws-gateway exited") && stderr.contains("before it was ready"),
        "the error must name the service that did not come up:\n{stderr}"
    );
    // The reason, from the end of the gateway's log, is on the terminal too.
    assert!(
        stderr
            .to_lowercase()
            .replace('_', "-")
            .contains("max-connections-per-ip"),
        "the end of the gateway's log must be shown:\n{stderr}"
    );
    assert!(!stdout.contains("is up"), "claimed to be up:\n{stdout}");
    // Redis and the services that did start were stopped.
    assert_nothing_listens(&ports.all()).await;
}

#[tokio::test]
async fn dev_comes_up_ready_keeps_the_previous_logs_and_stops_on_ctrl_c() {
    let ports = Ports::free();
    let mut run = Dev::start(&ports, &[]).await;
    std::fs::write(run.logs.path().join("auth-svc.log"), "the previous run\n")
        .expect("write an old log");

    // Wait for the banner, which comes only once every service answered /readyz.
    let banner = run.banner().await;
    assert!(
        banner.contains(&format!("ws://127.0.0.1:{}/ws", ports.gateway)),
        "the banner must show the ports in use:\n{banner}"
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    for (name, port) in ports.services() {
        let status = http
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{name} on {port} after the banner: {e}"))
            .status();
        assert_eq!(
            status, 200,
            "{name} on {port} is not ready after the banner"
        );
    }
    let old = std::fs::read_to_string(run.logs.path().join("auth-svc.log.1"))
        .expect("the previous run's log is kept as auth-svc.log.1");
    assert_eq!(old, "the previous run\n");

    // Ctrl-C: the terminal sends SIGINT to the whole foreground group.
    run.signal("INT");
    let (_, _, stderr) = run.finish().await;
    assert!(stderr.contains("dev: stopping"), "{stderr}");
    assert_nothing_listens(&ports.all()).await;
}

// === the recipe's ports ===

/// The ports `just dev` is told to use, held for it while this lives.
#[derive(Debug)]
struct Ports {
    redis: u16,
    auth: u16,
    gateway: u16,
    broadcaster: u16,
    monitor: u16,
    _held: Vec<tokio::net::TcpSocket>,
}

impl Ports {
    fn free() -> Self {
        let mut held = Vec::new();
        let mut port = || {
            let (socket, port) = reserve_port();
            held.push(socket);
            port
        };
        Self {
            redis: port(),
            auth: port(),
            gateway: port(),
            broadcaster: port(),
            monitor: port(),
            _held: held,
        }
    }

    /// The services, as `just dev` names them, with their ports.
    fn services(&self) -> [(&'static str, u16); 4] {
        [
            ("auth-svc", self.auth),
            ("ws-gateway", self.gateway),
            ("broadcaster", self.broadcaster),
            ("monitor", self.monitor),
        ]
    }

    fn all(&self) -> Vec<u16> {
        let mut all = vec![self.redis];
        all.extend(self.services().map(|(_, p)| p));
        all
    }

    fn all_but(&self, port: u16) -> Vec<u16> {
        self.all().into_iter().filter(|p| *p != port).collect()
    }

    fn env(&self) -> [(&'static str, String); 5] {
        [
            ("HERALD_DEV_REDIS_PORT", self.redis.to_string()),
            ("HERALD_DEV_AUTH_PORT", self.auth.to_string()),
            ("HERALD_DEV_GATEWAY_PORT", self.gateway.to_string()),
            ("HERALD_DEV_BROADCASTER_PORT", self.broadcaster.to_string()),
            ("HERALD_DEV_MONITOR_PORT", self.monitor.to_string()),
        ]
    }
}

/// Nothing accepts connections on any of `ports` any more.
async fn assert_nothing_listens(ports: &[u16]) {
    for port in ports {
        let connect = tokio::net::TcpStream::connect(("127.0.0.1", *port));
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), connect).await {
            panic!("something still listens on port {port} after just dev ended");
        }
    }
}

// === one run of the recipe ===

/// `just --no-deps dev` in a process group of its own; the group is killed on drop.
#[derive(Debug)]
struct Dev {
    child: Option<Child>,
    pgid: i32,
    logs: tempfile::TempDir,
    stdout: Option<tokio::io::Lines<BufReader<tokio::process::ChildStdout>>>,
    seen: String,
}

impl Dev {
    async fn start(ports: &Ports, extra: &[(&str, &str)]) -> Self {
        // `--no-deps` skips the recipe's build: the harness builds the binaries.
        crate::bin_path("ws-gateway");
        let logs = tempfile::tempdir().expect("temp dir");
        let mut child = Command::new("just")
            .args(["--no-deps", "dev"])
            .current_dir(repo_root())
            .envs(ports.env())
            .env("HERALD_DEV_LOG_DIR", logs.path())
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run `just` ({e}): install it (`cargo install just`)")
            });
        let pgid = i32::try_from(child.id().expect("pid")).expect("pid fits i32");
        let stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Self {
            child: Some(child),
            pgid,
            logs,
            stdout: Some(stdout),
            seen: String::new(),
        }
    }

    /// Reads stdout up to the "is up" banner and returns it; panics (with what the recipe
    /// said) if the recipe ends or stays silent instead.
    async fn banner(&mut self) -> String {
        let stdout = self.stdout.as_mut().expect("stdout");
        let read = async {
            while let Some(line) = stdout.next_line().await.expect("read stdout") {
                self.seen.push_str(&line);
                self.seen.push('\n');
                if line.contains("is up") {
                    // The banner's lines follow at once; read up to the monitor's.
                    while let Some(line) = stdout.next_line().await.expect("read stdout") {
                        self.seen.push_str(&line);
                        self.seen.push('\n');
                        if line.trim_start().starts_with("monitor") {
                            return true;
                        }
                    }
                }
            }
            false
        };
        let up = tokio::time::timeout(DEV_PATIENCE, read).await;
        if !matches!(up, Ok(true)) {
            // Stop it first, so that its stderr ends.
            self.signal("KILL");
            let stderr = read_all(self.child.as_mut().and_then(|c| c.stderr.take())).await;
            panic!(
                "just dev did not come up within {DEV_PATIENCE:?}:\n{}{stderr}\n{}",
                self.seen,
                self.log_tails()
            );
        }
        self.seen.clone()
    }

    /// Sends `sig` (a name: INT, TERM, KILL) to the recipe's whole process group.
    fn signal(&self, sig: &str) {
        // `kill(1)` keeps this crate free of unsafe code.
        let _ = std::process::Command::new("kill")
            .args(["-s", sig, "--", &format!("-{}", self.pgid)])
            .stderr(Stdio::null())
            .status();
    }

    /// Whether any process of the group is still alive.
    fn group_alive(&self) -> bool {
        std::process::Command::new("kill")
            .args(["-s", "0", "--", &format!("-{}", self.pgid)])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Waits for the recipe to end: (exit code, stdout, stderr). Everything it started
    /// must be gone by then.
    async fn finish(mut self) -> (i32, String, String) {
        let mut child = self.child.take().expect("child");
        let stderr = child.stderr.take();
        let stdout = self.stdout.take();
        let rest = async {
            let out = async {
                let mut out = String::new();
                if let Some(mut lines) = stdout {
                    while let Ok(Some(line)) = lines.next_line().await {
                        out.push_str(&line);
                        out.push('\n');
                    }
                }
                out
            };
            let (out, err) = tokio::join!(out, read_all(stderr));
            let status = child.wait().await.expect("wait for just");
            (status.code().unwrap_or(-1), out, err)
        };
        let patience = if self.seen.is_empty() {
            DEV_PATIENCE
        } else {
            STOP_PATIENCE
        };
        let Ok((code, out, err)) = tokio::time::timeout(patience, rest).await else {
            panic!(
                "just dev did not end within {patience:?}\n{}",
                self.log_tails()
            );
        };
        let stdout = format!("{}{out}", self.seen);
        // The recipe stops what it started before it exits.
        assert!(
            !self.group_alive(),
            "processes of just dev are still running after it exited:\n{stdout}{err}"
        );
        (code, stdout, err)
    }

    /// The last lines of every log in the run's log directory, for failure messages.
    fn log_tails(&self) -> String {
        let mut out = String::new();
        let Ok(dir) = std::fs::read_dir(self.logs.path()) else {
            return out;
        };
        for entry in dir.flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(10).collect();
            out.push_str(&format!("--- {}\n", entry.file_name().to_string_lossy()));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        self.signal("KILL");
    }
}

async fn read_all(stderr: Option<ChildStderr>) -> String {
    let mut text = String::new();
    if let Some(mut s) = stderr {
        let _ = s.read_to_string(&mut text).await;
    }
    text
}

/// The repository root, where the justfile is.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the repository")
        .to_path_buf()
}
