//! The docker compose stack, for real: the very `docker/compose.yml` users run (with the
//! offline override unless `HERALD_COMPOSE_ONLINE=1`), real clients through the ports it
//! publishes on the host, and the failures operators meet: a gateway killed, Redis
//! restarted.
//!
//! It also checks which images run: offline, the home-built Redis and Prometheus under
//! names of their own (never an official image's name), and the Herald image under its
//! size budget, whose size it prints.
//!
//! Ignored by default because it needs a Docker engine and the images that
//! `just images-offline` builds; `just compose-e2e` (and so CI) runs it. Without Docker
//! it fails, saying so: it never passes without having run.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::{ADMIN_KEY, API_KEY, TEST_SECRET, Ws, eventually_within, reserve_port, token};

/// The channel every client of the scenario follows.
const CHANNEL: &str = "news";
/// Longest wait for the stack to come up healthy (images already built).
const STARTUP: Duration = Duration::from_secs(180);
/// Longest wait for one change of state: the monitor noticing a dead node, a restarted
/// Redis serving again, a message crossing the stack.
const CHANGE: Duration = Duration::from_secs(60);
/// Longest any one docker or compose command may take.
const COMMAND: Duration = Duration::from_secs(300);
/// The Herald services, as named in `docker/compose.yml`.
const HERALD_SERVICES: [&str; 5] = [
    "auth-svc",
    "ws-gateway-1",
    "ws-gateway-2",
    "broadcaster",
    "monitor",
];
/// Their node ids (`HERALD_NODE_ID` in `docker/compose.yml`).
const NODE_IDS: [&str; 5] = ["auth-1", "gw-1", "gw-2", "broadcaster-1", "monitor-1"];
/// The images `just images-offline` builds, each with the official image it stands in for:
/// names of their own, so that they never shadow the official ones.
const OFFLINE_IMAGES: [(&str, &str); 3] = [
    (
        "herald-offline/debian:bookworm-slim",
        "debian:bookworm-slim",
    ),
    ("herald-offline/redis:7", "redis:7"),
    (
        "herald-offline/prometheus:v2.53.0",
        "prom/prometheus:v2.53.0",
    ),
];
/// The most the Herald image may weigh: five stripped binaries, their shared libraries
/// and bash (docker/README.md has the measured size).
const HERALD_IMAGE_BUDGET_BYTES: u64 = 60_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Docker and the images of `just images-offline`; `just compose-e2e` runs it"]
async fn compose_stack_survives_a_gateway_kill_and_a_redis_restart() {
    let clock = Clock::new();
    let stack = Stack::up().await;
    clock.lap("stack up and healthy");
    let p = stack.ports;

    // Every service runs the image meant for it, and the Herald image stays small.
    stack.assert_images().await;

    // Only what a user needs is published on the host, Redis not at all.
    stack.assert_published_ports().await;

    // Every service is a node the monitor sees up, and Prometheus scrapes them all.
    let overview = format!("http://127.0.0.1:{}/api/v1/overview", p.monitor);
    eventually_within("every Herald node up in the monitor", CHANGE, || async {
        let nodes = node_statuses(&overview).await?;
        NODE_IDS
            .iter()
            .all(|id| nodes.get(*id).is_some_and(|s| s == "up"))
            .then_some(())
    })
    .await;
    let targets = format!("http://127.0.0.1:{}/api/v1/targets", p.prometheus);
    eventually_within("Prometheus scraping every service", CHANGE, || async {
        let (status, body) = get_json(&targets, None).await?;
        let active = body["data"]["activeTargets"].as_array()?;
        (status == 200 && active.len() == 5 && active.iter().all(|t| t["health"] == "up"))
            .then_some(())
    })
    .await;
    clock.lap("monitor and Prometheus see every service");

    // Two clients on each gateway replica, all following one channel.
    let mut a1 = Client::subscribe("a1", p.gw1, None).await;
    let mut a2 = Client::subscribe("a2", p.gw1, None).await;
    let mut b1 = Client::subscribe("b1", p.gw2, None).await;
    let mut b2 = Client::subscribe("b2", p.gw2, None).await;
    let first = stack.publish("first", 3).await;
    for c in [&mut a1, &mut a2, &mut b1, &mut b2] {
        c.expect_live(&first).await;
    }
    clock.lap("delivery on both replicas");

    // Kill one gateway: its clients lose their connection.
    stack.compose(&["kill", "ws-gateway-1"]).await;
    for c in [&mut a1, &mut a2] {
        c.expect_dropped().await;
    }
    // Whatever is published meanwhile reaches the other replica's clients live...
    let missed = stack.publish("meanwhile", 5).await;
    for c in [&mut b1, &mut b2] {
        c.expect_live(&missed).await;
    }
    // ...and the dropped clients, reconnecting to the other replica, recover it by offset.
    for c in [&mut a1, &mut a2] {
        let replayed = c.reconnect(p.gw2).await;
        assert_eq!(replayed, missed, "{} recovered the wrong messages", c.name);
    }
    clock.lap("dropped clients recovered on the other replica");

    // The monitor reports the killed gateway down, the survivor up.
    eventually_within("the monitor reporting gw-1 down", CHANGE, || async {
        let nodes = node_statuses(&overview).await?;
        (nodes.get("gw-1").is_some_and(|s| s == "down")
            && nodes.get("gw-2").is_some_and(|s| s == "up"))
        .then_some(())
    })
    .await;
    // A killed container stays down (`restart: unless-stopped` honours the kill).
    assert_eq!(stack.state("ws-gateway-1").await, "exited");
    clock.lap("monitor reports the killed gateway down");

    // Bring it back, with a client on it, so the Redis restart hits both replicas.
    stack.compose(&["start", "ws-gateway-1"]).await;
    stack.wait_healthy(&["ws-gateway-1"], CHANGE).await;
    let mut c1 = Client::subscribe("c1", p.gw1, None).await;
    assert_eq!(c1.last, *missed.last().expect("published"));

    // Restart Redis: delivery resumes and nothing published after it is lost; history
    // survives (append-only file), so offsets go on in the same epoch.
    stack.compose(&["restart", "redis"]).await;
    stack.wait_healthy(&["redis"], CHANGE).await;
    let after = stack.publish("after-redis-restart", 5).await;
    assert_eq!(
        after.first().copied(),
        Some(c1.last + 1),
        "offsets restarted: Redis lost the channel's history"
    );
    let mut replays = 0;
    for c in [&mut a1, &mut a2, &mut b1, &mut b2, &mut c1] {
        replays += c.expect_or_recover(&after).await;
    }
    eprintln!("compose: {replays} of 5 clients needed a replay after the Redis restart");
    clock.lap("delivery resumed after the Redis restart, nothing lost");

    // Tear down, and prove nothing is left behind.
    stack.down().await;
    clock.lap("torn down, nothing left");
}

// === the stack ===

/// The host ports the stack publishes, held for this run ([`reserve_port`]).
#[derive(Debug, Clone, Copy)]
struct Ports {
    gw1: u16,
    gw2: u16,
    auth: u16,
    broadcaster: u16,
    monitor: u16,
    prometheus: u16,
}

/// One compose project, torn down (containers, networks, volumes) when dropped.
#[derive(Debug)]
struct Stack {
    /// `docker compose` or `docker-compose`, whichever this machine has.
    compose: Vec<String>,
    project: String,
    files: Vec<PathBuf>,
    env: Vec<(String, String)>,
    ports: Ports,
    /// Holds the ports until the stack is down.
    _held: Vec<tokio::net::TcpSocket>,
    down: bool,
    /// Holds the env file with the test's secrets; dropped after `down`.
    _dir: tempfile::TempDir,
}

impl Stack {
    /// Starts the stack (with the `prometheus` profile) and waits for every healthcheck.
    async fn up() -> Self {
        let compose = compose_command().await;
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files = vec![root.join("docker/compose.yml")];
        if std::env::var("HERALD_COMPOSE_ONLINE").as_deref() != Ok("1") {
            files.push(root.join("docker/compose.offline.yml"));
        }
        let project = std::env::var("HERALD_COMPOSE_PROJECT").unwrap_or_else(|_| {
            format!(
                "herald-e2e-{}-{:06x}",
                std::process::id(),
                rand::random::<u32>() & 0xff_ffff
            )
        });
        let dir = tempfile::tempdir().expect("temp dir");
        let env_file = dir.path().join("herald.env");
        std::fs::write(
            &env_file,
            format!(
                "HERALD_JWT_SECRET={TEST_SECRET}\nHERALD_ADMIN_KEY={ADMIN_KEY}\n\
                 HERALD_API_KEY={API_KEY}\nHERALD_LOG=info\n"
            ),
        )
        .expect("write env file");
        let mut held = Vec::new();
        let mut port = || {
            let (socket, port) = reserve_port();
            held.push(socket);
            port
        };
        let ports = Ports {
            gw1: port(),
            gw2: port(),
            auth: port(),
            broadcaster: port(),
            monitor: port(),
            prometheus: port(),
        };
        let env = [
            ("HERALD_ENV_FILE", env_file.display().to_string()),
            ("HERALD_HOST_IP", "127.0.0.1".to_owned()),
            ("HERALD_GATEWAY_1_PORT", ports.gw1.to_string()),
            ("HERALD_GATEWAY_2_PORT", ports.gw2.to_string()),
            ("HERALD_AUTH_PORT", ports.auth.to_string()),
            ("HERALD_BROADCASTER_PORT", ports.broadcaster.to_string()),
            ("HERALD_MONITOR_PORT", ports.monitor.to_string()),
            ("HERALD_PROMETHEUS_PORT", ports.prometheus.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let stack = Self {
            compose,
            project,
            files,
            env,
            ports,
            _held: held,
            down: false,
            _dir: dir,
        };
        eprintln!("compose: project {}", stack.project);
        stack.compose(&["up", "-d"]).await;
        let mut all = vec!["redis", "prometheus"];
        all.extend(HERALD_SERVICES);
        stack.wait_healthy(&all, STARTUP).await;
        stack
    }

    /// The compose command line for this project, up to the subcommand.
    fn command(&self) -> (String, Vec<String>) {
        let mut args: Vec<String> = self.compose[1..].to_vec();
        args.extend(["-p".to_owned(), self.project.clone()]);
        for f in &self.files {
            args.extend(["-f".to_owned(), f.display().to_string()]);
        }
        args.extend(["--profile".to_owned(), "prometheus".to_owned()]);
        (self.compose[0].clone(), args)
    }

    /// Runs a compose subcommand; panics with its output if it fails.
    async fn compose(&self, args: &[&str]) -> String {
        let (program, mut full) = self.command();
        full.extend(args.iter().map(|a| (*a).to_owned()));
        run(&program, &full, &self.env).await
    }

    /// The container of `service` (empty before it exists).
    async fn container(&self, service: &str) -> String {
        self.compose(&["ps", "-q", service]).await.trim().to_owned()
    }

    /// The `docker inspect` value of `format` for `service`'s container.
    async fn inspect(&self, service: &str, format: &str) -> String {
        let id = self.container(service).await;
        assert!(!id.is_empty(), "{service} has no container");
        run("docker", &["inspect", "-f", format, &id], &[])
            .await
            .trim()
            .to_owned()
    }

    /// `running`, `exited`, … for `service`'s container.
    async fn state(&self, service: &str) -> String {
        self.inspect(service, "{{.State.Status}}").await
    }

    /// Waits until every service's container reports `healthy`.
    async fn wait_healthy(&self, services: &[&str], patience: Duration) {
        eventually_within("every container healthy", patience, || async {
            let mut pending = Vec::new();
            for s in services {
                let id = self.container(s).await;
                let health = if id.is_empty() {
                    "no container".to_owned()
                } else {
                    let f = "{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{end}}";
                    try_run("docker", &["inspect", "-f", f, &id], &[])
                        .await
                        .map_or_else(|e| e, |o| o.trim().to_owned())
                };
                if health != "running/healthy" {
                    pending.push(format!("{s}: {health}"));
                }
            }
            if pending.is_empty() {
                return Ok(());
            }
            // A container that stopped will not come back by itself (a crashing one is
            // `restarting`, by the restart policy): no point waiting.
            if let Some(gone) = pending
                .iter()
                .find(|p| p.contains(": exited/") || p.contains(": dead/"))
            {
                panic!("{gone}: the container stopped while starting");
            }
            Err(format!("not healthy: {}", pending.join(", ")))
        })
        .await;
    }

    /// Asserts the image each service runs: offline, the home-built Redis and Prometheus
    /// under their own names (and no official name given to them); the Herald image for
    /// every Herald service, under the size budget. Prints that image's size.
    async fn assert_images(&self) {
        let offline = self.files.len() > 1;
        let herald = std::env::var("HERALD_IMAGE").unwrap_or_else(|_| "herald:latest".to_owned());
        let (redis, prometheus) = if offline {
            (OFFLINE_IMAGES[1].0, OFFLINE_IMAGES[2].0)
        } else {
            (OFFLINE_IMAGES[1].1, OFFLINE_IMAGES[2].1)
        };
        let mut expected = vec![("redis", redis), ("prometheus", prometheus)];
        expected.extend(HERALD_SERVICES.map(|s| (s, herald.as_str())));
        for (service, image) in expected {
            assert_eq!(
                self.inspect(service, "{{.Config.Image}}").await,
                image,
                "{service} runs the wrong image"
            );
        }
        if offline {
            for (ours, official) in OFFLINE_IMAGES {
                let mine = image_id(ours).await;
                assert!(
                    mine.is_some(),
                    "{ours} is missing: run `just images-offline`"
                );
                assert_ne!(
                    image_id(official).await,
                    mine,
                    "{ours} is also tagged {official}, shadowing the official image"
                );
            }
        }
        let size = run(
            "docker",
            &["image", "inspect", "-f", "{{.Size}}", &herald],
            &[],
        )
        .await;
        let bytes: u64 = size.trim().parse().expect("image size");
        eprintln!(
            "compose: the Herald image {herald} is {:.1} MB ({bytes} bytes)",
            bytes as f64 / 1e6
        );
        assert!(
            bytes <= HERALD_IMAGE_BUDGET_BYTES,
            "the Herald image is {bytes} bytes, over its budget of {HERALD_IMAGE_BUDGET_BYTES}"
        );
    }

    /// Asserts that the host ports published are exactly the user-facing ones, on
    /// loopback, and that Redis publishes none.
    async fn assert_published_ports(&self) {
        let p = self.ports;
        let expected: [(&str, u16); 6] = [
            ("auth-svc", p.auth),
            ("ws-gateway-1", p.gw1),
            ("ws-gateway-2", p.gw2),
            ("broadcaster", p.broadcaster),
            ("monitor", p.monitor),
            ("prometheus", p.prometheus),
        ];
        for (service, port) in expected {
            let published = self.published(service).await;
            assert_eq!(
                published,
                vec![format!("127.0.0.1:{port}")],
                "{service} publishes the wrong host ports"
            );
        }
        assert!(
            self.published("redis").await.is_empty(),
            "Redis must not be published on the host"
        );
    }

    /// The `ip:port`s that `service` publishes on the host.
    async fn published(&self, service: &str) -> Vec<String> {
        let ports: Value = serde_json::from_str(
            &self
                .inspect(service, "{{json .NetworkSettings.Ports}}")
                .await,
        )
        .expect("ports JSON");
        let mut out = Vec::new();
        for bindings in ports.as_object().into_iter().flat_map(|m| m.values()) {
            for b in bindings.as_array().into_iter().flatten() {
                out.push(format!(
                    "{}:{}",
                    b["HostIp"].as_str().unwrap_or_default(),
                    b["HostPort"].as_str().unwrap_or_default()
                ));
            }
        }
        out
    }

    /// Publishes `n` messages through the broadcaster's API and returns their offsets,
    /// which must follow one another. Retries while the API answers 503 (Redis away); an
    /// idempotency key per message makes a retry publish nothing twice.
    async fn publish(&self, tag: &str, n: usize) -> Vec<u64> {
        let url = format!("http://127.0.0.1:{}/v1/publish", self.ports.broadcaster);
        let mut offsets = Vec::with_capacity(n);
        for i in 0..n {
            let body = json!({
                "channel": CHANNEL,
                "message": {"tag": tag, "n": i},
                "idempotency_key": format!("{}-{tag}-{i}", self.project),
            });
            let what = format!("the broadcaster to publish {tag} #{i}");
            let offset = eventually_within(&what, CHANGE, || async {
                let (status, reply) = post_json(&url, API_KEY, &body).await?;
                assert!(
                    status == 200 || status == 503,
                    "publish answered {status}: {reply}"
                );
                reply["offset"].as_u64()
            })
            .await;
            offsets.push(offset);
        }
        for w in offsets.windows(2) {
            assert_eq!(
                w[1],
                w[0] + 1,
                "offsets must follow one another: {offsets:?}"
            );
        }
        offsets
    }

    /// `compose down -v`, then checks that no container, network or volume of the
    /// project is left.
    async fn down(mut self) {
        self.compose(&["down", "-v", "--remove-orphans", "-t", "5"])
            .await;
        self.down = true;
        let label = format!("label=com.docker.compose.project={}", self.project);
        for kind in ["container", "network", "volume"] {
            let mut args = vec![kind, "ls", "-q", "--filter", label.as_str()];
            if kind == "container" {
                args.push("-a");
            }
            let left = run("docker", &args, &[]).await;
            assert!(left.trim().is_empty(), "{kind}s left behind: {left}");
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if self.down {
            return;
        }
        let (program, args) = self.command();
        let sync = |extra: &[&str]| {
            std::process::Command::new(&program)
                .args(&args)
                .args(extra)
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .output()
        };
        if std::thread::panicking() {
            // What the services said is the best clue to a failure: show the end of it.
            if let Ok(out) = sync(&["logs", "--no-color", "--tail", "40"]) {
                eprintln!(
                    "=== compose logs ({}) ===\n{}",
                    self.project,
                    String::from_utf8_lossy(&out.stdout)
                );
            }
        }
        match sync(&["down", "-v", "--remove-orphans", "-t", "5"]) {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "compose down failed for {}: {}",
                self.project,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("compose down failed for {}: {e}", self.project),
        }
    }
}

/// `docker compose` (v2) where it exists, else `docker-compose` (v1); panics when the
/// engine or compose is missing, so that the test never passes without having run.
async fn compose_command() -> Vec<String> {
    if let Err(e) = try_run("docker", &["info", "--format", "{{.ServerVersion}}"], &[]).await {
        panic!("this test needs a running Docker engine, and `docker info` failed: {e}");
    }
    if try_run("docker", &["compose", "version"], &[])
        .await
        .is_ok()
    {
        return vec!["docker".to_owned(), "compose".to_owned()];
    }
    if try_run("docker-compose", &["version"], &[]).await.is_ok() {
        return vec!["docker-compose".to_owned()];
    }
    panic!("this test needs Docker Compose: neither `docker compose` nor `docker-compose` works");
}

/// The id of the local image `name`, if there is one.
async fn image_id(name: &str) -> Option<String> {
    try_run("docker", &["image", "inspect", "-f", "{{.Id}}", name], &[])
        .await
        .map(|id| id.trim().to_owned())
        .ok()
}

/// Runs a command to completion; its stdout, or why it failed.
async fn try_run<S: AsRef<str>>(
    program: &str,
    args: &[S],
    env: &[(String, String)],
) -> Result<String, String> {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let line = format!("{program} {}", args.join(" "));
    let out = tokio::process::Command::new(program)
        .args(&args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(COMMAND, out).await {
        Err(_) => Err(format!("`{line}` took longer than {COMMAND:?}")),
        Ok(Err(e)) => Err(format!("`{line}` could not start: {e}")),
        Ok(Ok(o)) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(Ok(o)) => Err(format!(
            "`{line}` failed ({}): {}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )),
    }
}

/// Runs a command to completion and returns its stdout; panics if it fails.
async fn run<S: AsRef<str>>(program: &str, args: &[S], env: &[(String, String)]) -> String {
    try_run(program, args, env)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

// === clients ===

/// A WebSocket client following [`CHANNEL`] on one gateway, tracking the last offset it
/// has seen, as a real client does to recover after a reconnect.
#[derive(Debug)]
struct Client {
    name: String,
    ws: Ws,
    port: u16,
    epoch: String,
    last: u64,
}

/// What came out of a socket.
#[derive(Debug)]
enum Next {
    Frame(Value),
    Ended,
    Silence,
}

impl Client {
    /// Connects to the gateway on host `port`, authenticates, subscribes (from `since`
    /// when given) and returns the client with the offsets replayed to it.
    async fn open(name: &str, port: u16, since: Option<(u64, &str)>) -> (Self, Vec<u64>) {
        let mut ws = Ws::connect(&format!("ws://127.0.0.1:{port}/ws")).await;
        ws.send(json!({"type": "auth", "token": token(name, &[CHANNEL], &[]), "channels": []}))
            .await;
        ws.recv_type("auth_success").await;
        let mut sub = json!({"type": "subscribe", "channel": CHANNEL, "id": 1});
        if let Some((offset, epoch)) = since {
            sub["since"] = json!({"offset": offset, "epoch": epoch});
        }
        ws.send(sub).await;
        let mut replayed = Vec::new();
        let subscribed = loop {
            let f = ws.recv().await;
            match f["type"].as_str() {
                Some("message") => replayed.push(f["offset"].as_u64().expect("offset")),
                Some("subscribed") => break f,
                _ => panic!("{name}: unexpected frame while subscribing: {f}"),
            }
        };
        if since.is_some() {
            assert_eq!(
                subscribed["recovered"], true,
                "{name}: history did not cover the gap: {subscribed}"
            );
        }
        let client = Self {
            name: name.to_owned(),
            ws,
            port,
            epoch: subscribed["epoch"].as_str().expect("epoch").to_owned(),
            last: subscribed["offset"].as_u64().expect("offset"),
        };
        (client, replayed)
    }

    async fn subscribe(name: &str, port: u16, since: Option<(u64, &str)>) -> Self {
        Self::open(name, port, since).await.0
    }

    /// Reconnects to the gateway on `port`, recovering everything after the last offset
    /// seen; returns the replayed offsets.
    async fn reconnect(&mut self, port: u16) -> Vec<u64> {
        let (fresh, replayed) =
            Self::open(&self.name, port, Some((self.last, self.epoch.as_str()))).await;
        let mut want = self.last;
        for o in &replayed {
            want += 1;
            assert_eq!(*o, want, "{}: replay out of order: {replayed:?}", self.name);
        }
        let old = std::mem::replace(self, fresh);
        old.ws.close().await;
        assert_eq!(self.last, want, "{}: replay stopped short", self.name);
        replayed
    }

    /// The next frame, the end of the connection, or silence for `d`.
    async fn next(&mut self, d: Duration) -> Next {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let Ok(msg) = tokio::time::timeout_at(deadline, self.ws.inner.next()).await else {
                return Next::Silence;
            };
            match msg {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).expect("server sent invalid JSON");
                    if v["type"] != "heartbeat" {
                        return Next::Frame(v);
                    }
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => return Next::Ended,
                Some(Ok(_)) => {}
            }
        }
    }

    /// Checks one `message` frame: the next offset, in the same epoch.
    fn accept(&mut self, f: &Value) -> u64 {
        assert_eq!(
            f["type"], "message",
            "{}: expected a message, got {f}",
            self.name
        );
        assert_eq!(f["channel"], CHANNEL);
        assert_eq!(
            f["epoch"],
            self.epoch.as_str(),
            "{}: epoch changed",
            self.name
        );
        let offset = f["offset"].as_u64().expect("offset");
        assert_eq!(offset, self.last + 1, "{}: gap or duplicate", self.name);
        self.last = offset;
        offset
    }

    /// Receives exactly `offsets`, live, in order.
    async fn expect_live(&mut self, offsets: &[u64]) {
        for want in offsets {
            match self.next(CHANGE).await {
                Next::Frame(f) => assert_eq!(self.accept(&f), *want),
                other => panic!("{}: waiting for offset {want}: {other:?}", self.name),
            }
        }
    }

    /// Receives `offsets`, live or — as a real client does when its connection broke or
    /// went quiet with a gap — by reconnecting to its gateway and recovering from the last
    /// offset seen. Returns 1 if it had to recover, 0 if everything came live.
    async fn expect_or_recover(&mut self, offsets: &[u64]) -> usize {
        let last = *offsets.last().expect("offsets");
        while self.last < last {
            match self.next(Duration::from_secs(15)).await {
                Next::Frame(f) if f["type"] == "message" => {
                    self.accept(&f);
                }
                Next::Frame(f) => eprintln!("{}: ignoring {f}", self.name),
                why @ (Next::Ended | Next::Silence) => {
                    eprintln!("{}: {why:?} at offset {}; recovering", self.name, self.last);
                    self.reconnect(self.port).await;
                    assert_eq!(self.last, last, "{}: recovery fell short", self.name);
                    return 1;
                }
            }
        }
        0
    }

    /// Waits for the server side to vanish (the gateway was killed).
    async fn expect_dropped(&mut self) {
        match self.next(CHANGE).await {
            Next::Ended => {}
            other => panic!(
                "{}: expected the connection to end, got {other:?}",
                self.name
            ),
        }
    }
}

// === HTTP and waiting ===

/// `GET` returning (status, JSON), or `None` if the request failed (a service away).
async fn get_json(url: &str, bearer: Option<&str>) -> Option<(u16, Value)> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .ok()?;
    let mut req = client.get(url);
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let resp = req.send().await.ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.json().await.unwrap_or(Value::Null)))
}

/// `POST` a JSON body with a bearer key: (status, JSON), or `None` if the request failed.
async fn post_json(url: &str, bearer: &str, body: &Value) -> Option<(u16, Value)> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .ok()?;
    let resp = client
        .post(url)
        .bearer_auth(bearer)
        .json(body)
        .send()
        .await
        .ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.json().await.unwrap_or(Value::Null)))
}

/// Node id → status from the monitor's overview.
async fn node_statuses(url: &str) -> Option<BTreeMap<String, String>> {
    let (status, body) = get_json(url, None).await?;
    if status != 200 {
        return None;
    }
    let nodes = body["nodes"].as_array()?;
    Some(
        nodes
            .iter()
            .filter_map(|n| {
                Some((
                    n["id"].as_str()?.to_owned(),
                    n["status"].as_str()?.to_owned(),
                ))
            })
            .collect(),
    )
}

/// Prints how long each phase took, for CI's log.
#[derive(Debug)]
struct Clock {
    start: Instant,
}

impl Clock {
    fn new() -> Self {
        Self {
            start: Instant::now(),
        }
    }

    fn lap(&self, what: &str) {
        eprintln!(
            "compose: {what} (at {:.1}s)",
            self.start.elapsed().as_secs_f64()
        );
    }
}
