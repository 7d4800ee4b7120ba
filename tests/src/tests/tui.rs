//! The dashboard end to end: the real `herald-tui` binary runs in a tmux pane
//! against a real monitor, gateway and Redis with real WebSocket clients, and
//! the test reads the screen tmux captures, as an operator would.

use std::process::Stdio;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::process::Command;

use herald_proto::monitor::{ChannelsPage, STREAM_EVENT};
use herald_tui::fetch::{Client, ConnQuery};
use herald_tui::model::{ConnectionsPage, LimitKind, Overview};

use crate::{
    ADMIN_KEY, Redis, ServiceBuilder, Ws, bin_path, eventually, eventually_within, patience, token,
    within,
};

const GATEWAY_ID: &str = "gw-tui-e2e";
const WIDTH: u16 = 120;
const HEIGHT: u16 = 40;

/// A private tmux server (its own socket) with one session; killed on drop, so a
/// failing test leaves no dashboard running.
struct Tmux {
    socket: String,
    session: String,
}

impl Tmux {
    async fn start(command: &str) -> Self {
        let unique = format!(
            "herald-e2e-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        );
        let t = Self {
            socket: unique.clone(),
            session: unique,
        };
        let (w, h) = (WIDTH.to_string(), HEIGHT.to_string());
        let ok = t
            .tmux(&[
                "new-session",
                "-d",
                "-s",
                &t.session,
                "-x",
                &w,
                "-y",
                &h,
                command,
            ])
            .await;
        assert!(ok.is_some(), "tmux could not start the session");
        t
    }

    /// Runs one tmux command against this server; its stdout on success.
    async fn tmux(&self, args: &[&str]) -> Option<String> {
        let out = within(
            "tmux",
            Command::new("tmux")
                .arg("-L")
                .arg(&self.socket)
                .args(args)
                // tmux wants a terminal type even for a detached session.
                .env("TERM", "xterm-256color")
                .stdin(Stdio::null())
                .output(),
        )
        .await
        .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    async fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", &self.session])
            .await
            .unwrap_or_default()
    }

    /// Types `keys` as tmux key names (`Tab`, `Enter`, `Escape`, `q`).
    async fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", &self.session];
        args.extend_from_slice(keys);
        assert!(self.tmux(&args).await.is_some(), "send-keys {keys:?}");
    }

    /// Types `text` literally.
    async fn type_text(&self, text: &str) {
        let args = ["send-keys", "-t", &self.session, "-l", text];
        assert!(self.tmux(&args).await.is_some(), "type {text:?}");
    }

    /// Polls the screen until `check` accepts it; panics with the last screen
    /// after `timeout`.
    async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Screen) -> bool,
    ) -> Screen {
        eventually_within(what, timeout, || async {
            let screen = Screen(self.screen().await);
            if check(&screen) {
                Ok(screen)
            } else {
                Err(format!("the screen:\n{}", screen.0))
            }
        })
        .await
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A shell line that runs the dashboard, then prints its exit status and
/// whether the terminal is back in cooked mode (`icanon echo`, not `-icanon
/// -echo` as raw mode leaves it), then keeps the pane open to be read.
fn dashboard_command(env: &str, args: &str) -> String {
    format!(
        "{env} RUST_BACKTRACE=0 '{}' {args}; echo EXIT=$?; \
         echo \"TTY=$(stty -a | tr ' ;' '\\n\\n' | grep -x -e icanon -e -icanon -e echo -e -echo | tr '\\n' ' ')\"; \
         sleep 60",
        bin_path("herald-tui").display()
    )
}

/// One captured screen.
struct Screen(String);

impl Screen {
    fn has(&self, needle: &str) -> bool {
        self.0.contains(needle)
    }

    /// The cell of a bordered panel that starts with `first` (a row of a table),
    /// e.g. `news   3   0.0` from `│news   3   0.0   ││hits …│`.
    fn cell_starting(&self, first: &str) -> Option<Vec<String>> {
        self.0.lines().find_map(|line| {
            line.split('│')
                .find(|cell| cell.split_whitespace().next() == Some(first))
                .map(|cell| cell.split_whitespace().map(str::to_owned).collect())
        })
    }

    /// In the table whose header row has `column`, the text under that column
    /// in the row that contains `row`.
    fn column(&self, column: &str, row: &str) -> Option<String> {
        let lines: Vec<Vec<char>> = self.0.lines().map(|l| l.chars().collect()).collect();
        let find = |l: &[char], s: &str| -> Option<usize> {
            let s: Vec<char> = s.chars().collect();
            l.windows(s.len()).position(|w| w == s.as_slice())
        };
        let (header, x) = lines
            .iter()
            .enumerate()
            .find_map(|(i, l)| find(l, column).map(|x| (i, x)))?;
        let line = lines[header..].iter().find(|l| find(l, row).is_some())?;
        let rest: String = line.get(x..)?.iter().collect();
        rest.split_whitespace().next().map(str::to_owned)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_the_live_cluster_and_quits_cleanly() {
    let redis = Redis::start().await;
    let mut monitor = ServiceBuilder::new("monitor")
        .redis(&redis)
        .process()
        .spawn()
        .await;
    let mut gw = ServiceBuilder::new("ws-gateway")
        .redis(&redis)
        .env("HERALD_NODE_ID", GATEWAY_ID)
        .env("HERALD_MAX_CONNECTIONS_PER_IP", "100")
        .env("HERALD_CONNECT_RATE_PER_IP", "1000")
        // Low enough that one client trips it with a few pings.
        .env("HERALD_RATE_LIMIT_MESSAGES", "3")
        .process()
        .spawn()
        .await;

    // Three readers of `news`, one of them on `chat:lobby` too, and a noisy client.
    let mut clients = Vec::new();
    for user in ["alice", "bob", "carol"] {
        let channels: &[&str] = if user == "bob" {
            &["news", "chat:lobby"]
        } else {
            &["news"]
        };
        let (ws, _) = Ws::auth(&gw, &token(user, channels, &[]), channels).await;
        clients.push((user, ws));
    }
    let (mut spammer, _) = Ws::auth(&gw, &token("spammer", &["alerts"], &[]), &["alerts"]).await;
    for i in 0..6 {
        spammer.send(json!({"type": "ping", "id": i})).await;
    }

    let tui = Tmux::start(&dashboard_command(
        "",
        &format!(
            "--monitor {} --admin-key {ADMIN_KEY} --refresh-ms 500",
            monitor.http()
        ),
    ))
    .await;
    let wait = patience() + Duration::from_secs(5);

    // The overview: the gateway up with four connections, the channels counted.
    let s = tui
        .wait_for("the gateway, its connections and the channels", wait, |s| {
            s.has("Connections  4 ·")
                && s.column("STATUS", GATEWAY_ID).as_deref() == Some("●")
                && s.column("CONNS", GATEWAY_ID).as_deref() == Some("4")
                && s.cell_starting("news").is_some_and(|c| c[1] == "3")
                && s.cell_starting("chat:lobby").is_some_and(|c| c[1] == "1")
                && s.cell_starting("alerts").is_some_and(|c| c[1] == "1")
        })
        .await;
    let gw_row =
        s.0.lines()
            .find(|l| l.contains(GATEWAY_ID))
            .expect("gateway row");
    assert!(
        gw_row.contains("● up") && gw_row.contains("ws-gateway"),
        "{gw_row}"
    );
    assert!(s.has(" Nodes ") && s.has("monitor"), "{}", s.0);
    assert!(s.has("Top channels") && s.has("Rate limits"), "{}", s.0);

    // The spammer's pings were refused past the limit; the hit shows with its name.
    tui.wait_for("the rate-limit hit", wait, |s| {
        s.cell_starting("reported").is_some_and(|c| c[1] != "0")
            && s.0
                .lines()
                .any(|l| l.contains("spammer") && l.contains("message"))
    })
    .await;

    // The connections view lists every client.
    tui.keys(&["Tab"]).await;
    tui.wait_for("the four connections", wait, |s| {
        s.has("Connections (4 shown of 4)")
            && ["alice", "bob", "carol", "spammer"]
                .iter()
                .all(|u| s.0.lines().any(|l| l.contains(u) && l.contains(GATEWAY_ID)))
    })
    .await;

    // Filter down to carol, disconnect her after confirming, and her socket closes.
    tui.keys(&["/"]).await;
    tui.type_text("carol").await;
    tui.keys(&["Enter"]).await;
    tui.wait_for("the filtered list", wait, |s| {
        s.has("(1 shown of 4) · filter: carol") && !s.has("alice")
    })
    .await;
    tui.keys(&["d"]).await;
    tui.wait_for("the confirmation", wait, |s| s.has("(user carol)?"))
        .await;
    tui.keys(&["y"]).await;
    let carol = &mut clients
        .iter_mut()
        .find(|(u, _)| *u == "carol")
        .expect("carol")
        .1;
    let (closed, _) = carol.closed().await;
    assert_ne!(
        closed.code, 1006,
        "the gateway closes the socket properly: {closed:?}"
    );
    tui.wait_for("the notice", wait, |s| s.has("sent; its gateway closes it"))
        .await;
    tui.wait_for("carol gone from the list", wait, |s| {
        s.has("no connection matches the filter")
    })
    .await;

    // Back to the overview; the gateway dies and its row turns stale, then down.
    tui.keys(&["Escape", "Escape", "Tab"]).await;
    gw.kill().await;
    let s = tui
        .wait_for("the killed gateway to go stale or down", wait, |s| {
            s.0.lines()
                .any(|l| l.contains(GATEWAY_ID) && (l.contains("● stale") || l.contains("● down")))
        })
        .await;
    assert!(!s.has("unreachable"), "{}", s.0);

    // The monitor goes away: the dashboard says so and keeps the last data.
    monitor.kill().await;
    let s = tui
        .wait_for("the unreachable banner", wait, |s| {
            s.has("monitor unreachable — retrying")
        })
        .await;
    assert!(s.has(GATEWAY_ID) && s.has("(stale)"), "{}", s.0);

    // `q` quits: the process exits 0 and the alternate screen is gone.
    tui.keys(&["q"]).await;
    let s = tui.wait_for("a clean exit", wait, |s| s.has("TTY=")).await;
    assert!(s.has("EXIT=0"), "{}", s.0);
    assert!(s.has("TTY=icanon echo"), "raw mode is off again:\n{}", s.0);
    assert!(
        !s.has("Top channels") && !s.has("Rate limits"),
        "the dashboard is off the screen:\n{}",
        s.0
    );
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_restores_the_terminal() {
    // Nobody listens on port 9: the dashboard draws its first frame (monitor
    // unreachable), then the debug-only switch makes it panic.
    let tui = Tmux::start(&dashboard_command(
        "HERALD_TUI_DEBUG_PANIC=1",
        "--monitor http://127.0.0.1:9",
    ))
    .await;
    let s = tui
        .wait_for("the panic exit", patience(), |s| s.has("TTY="))
        .await;
    assert!(s.has("EXIT=101"), "a panic exits 101:\n{}", s.0);
    assert!(s.has("TTY=icanon echo"), "raw mode is off again:\n{}", s.0);
    // The message was printed after the restore, so it is on the normal screen.
    assert!(s.has("panicking on purpose"), "{}", s.0);
    assert!(
        !s.has("q quit"),
        "the dashboard is off the screen:\n{}",
        s.0
    );
}

/// Parses `body` as the dashboard does and checks that the typed value
/// serializes back to the same JSON: nothing the monitor sent was dropped,
/// renamed away or replaced by a default on the way in.
fn read_as_the_dashboard<T: DeserializeOwned + Serialize>(what: &str, body: &str) -> T {
    let typed: T = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("the dashboard cannot read the {what} ({e}): {body}"));
    let sent: Value = serde_json::from_str(body).expect("the monitor sends JSON");
    let read = serde_json::to_value(&typed).expect("serializable");
    assert_eq!(read, sent, "the {what} as the dashboard reads it");
    typed
}

async fn get_text(url: &str) -> Option<String> {
    let resp = reqwest::get(url).await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.text().await.ok()
}

/// The first `overview` event of the monitor's stream, as sent.
async fn first_stream_event(monitor: &str) -> String {
    let mut resp = within(
        "the stream",
        reqwest::Client::new()
            .get(format!("{monitor}/api/v1/stream"))
            .send(),
    )
    .await
    .expect("stream");
    let mut buf = String::new();
    loop {
        let chunk = within("an SSE chunk", resp.chunk())
            .await
            .expect("chunk")
            .expect("stream open");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            if !event.lines().any(|l| l == format!("event: {STREAM_EVENT}")) {
                continue;
            }
            return event
                .lines()
                .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
                .collect();
        }
    }
}

/// The dashboard and the monitor share their types; this feeds the dashboard
/// what a live monitor actually serves (overview, stream event, connections and
/// channels pages, with every part populated) rather than JSON written by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_reads_the_monitors_own_answers() {
    let redis = Redis::start().await;
    let monitor = ServiceBuilder::new("monitor").redis(&redis).spawn().await;
    let gw = ServiceBuilder::new("ws-gateway")
        .redis(&redis)
        .env("HERALD_NODE_ID", GATEWAY_ID)
        .env("HERALD_MAX_CONNECTIONS_PER_IP", "100")
        .env("HERALD_CONNECT_RATE_PER_IP", "1000")
        .env("HERALD_RATE_LIMIT_MESSAGES", "3")
        .spawn()
        .await;
    let mut clients = Vec::new();
    for (user, channels) in [("alice", &["news"][..]), ("bob", &["news", "chat:lobby"])] {
        clients.push(Ws::auth(&gw, &token(user, channels, &[]), channels).await.0);
    }
    let (mut spammer, _) = Ws::auth(&gw, &token("spammer", &["alerts"], &[]), &["alerts"]).await;
    for i in 0..6 {
        spammer.send(json!({"type": "ping", "id": i})).await;
    }
    let base = monitor.http();

    // Wait for an overview with every part filled in: nodes probed, channels,
    // and the spammer's rate-limit hit.
    let body = eventually("an overview with every part filled in", || async {
        let body = get_text(&format!("{base}/api/v1/overview")).await?;
        let o: Overview = read_as_the_dashboard("overview", &body);
        let full = o
            .nodes
            .iter()
            .any(|n| n.id == GATEWAY_ID && n.connections == 3 && n.probe_ok == Some(true))
            && o.top_channels.iter().any(|c| c.channel == "news")
            && o.ratelimit.recent.iter().any(|h| h.who == "spammer");
        full.then_some(body)
    })
    .await;
    let o: Overview = read_as_the_dashboard("overview", &body);
    let hit = o
        .ratelimit
        .recent
        .iter()
        .find(|h| h.who == "spammer")
        .expect("the spammer's hit");
    assert_eq!(hit.kind, LimitKind::Message);
    assert!(o.ratelimit.by_kind[&LimitKind::Message] >= 1, "{body}");

    let event = first_stream_event(&base).await;
    let streamed: Overview = read_as_the_dashboard("stream event", &event);
    assert!(streamed.nodes.iter().any(|n| n.id == GATEWAY_ID), "{event}");

    let body = get_text(&format!("{base}/api/v1/connections"))
        .await
        .expect("connections");
    let page: ConnectionsPage = read_as_the_dashboard("connections page", &body);
    assert_eq!(page.connections.len(), 3, "{body}");
    let body = get_text(&format!("{base}/api/v1/channels"))
        .await
        .expect("channels");
    let channels: ChannelsPage = read_as_the_dashboard("channels page", &body);
    assert_eq!(channels.total, 3, "{body}");

    // And through the dashboard's own client.
    let client = Client::new(&base, None, patience()).expect("client");
    let o = within("the dashboard's overview", client.overview())
        .await
        .expect("the dashboard reads the overview");
    assert!(o.nodes.iter().any(|n| n.id == GATEWAY_ID));
    let q = ConnQuery {
        active: true,
        user: Some("bob".to_owned()),
        ..ConnQuery::default()
    };
    let page = within("the dashboard's connections", client.connections(&q))
        .await
        .expect("the dashboard reads the connections");
    assert_eq!(page.connections.len(), 1);
    let mut channels = page.connections[0].info.channels.clone();
    channels.sort();
    assert_eq!(channels, ["chat:lobby", "news"]);
    drop(clients);
}
