//! A real headless Chromium driven over the Chrome DevTools Protocol (CDP).
//!
//! The browser is Debian's `chromium` (or `HERALD_CHROMIUM`); nothing is downloaded.
//! CDP is JSON over a WebSocket, and the tests need four of its commands (open a tab,
//! navigate, evaluate a script, take a screenshot), so this speaks it directly with the
//! WebSocket client the suite already has rather than pulling in a CDP crate whose
//! generated bindings cover the whole protocol.

use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{eventually, within};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The Chromium binary: `HERALD_CHROMIUM`, else the first of Debian's and other
/// distributions' names found on `PATH`.
pub fn chromium_binary() -> Option<String> {
    if let Ok(b) = std::env::var("HERALD_CHROMIUM") {
        return Some(b);
    }
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            std::process::Command::new("which")
                .arg(b)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(str::to_owned)
}

/// A headless Chromium with its own profile; killed (and the profile removed) on drop.
#[derive(Debug)]
pub struct Browser {
    child: Child,
    /// `127.0.0.1:<port>` of the DevTools endpoint.
    devtools: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts the browser and waits for its DevTools endpoint.
    pub async fn start() -> Self {
        let bin = chromium_binary()
            .expect("no Chromium: install it (`apt-get install chromium`) or set HERALD_CHROMIUM");
        let profile = tempfile::tempdir().expect("profile dir");
        let mut child = Command::new(&bin)
            .args([
                "--headless",
                // Root in a container has no user namespaces for the sandbox.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                // Timers of a hidden headless tab must run at full speed: the clients
                // under test schedule reconnects and token refreshes with them.
                "--disable-background-timer-throttling",
                "--disable-renderer-backgrounding",
                "--disable-backgrounding-occluded-windows",
                "--window-size=1200,800",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "about:blank",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        // Chromium prints `DevTools listening on ws://127.0.0.1:PORT/devtools/browser/…`.
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let devtools = within("Chromium's DevTools endpoint", async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.split("ws://").nth(1)
                    && line.contains("DevTools listening")
                {
                    return rest.split('/').next().map(str::to_owned);
                }
            }
            None
        })
        .await
        .expect("Chromium exited before printing its DevTools endpoint");
        // Keep draining stderr so the browser never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            child,
            devtools,
            _profile: profile,
        }
    }

    /// Opens a new tab at `url` and waits until it has loaded.
    pub async fn open(&self, url: &str) -> Page {
        let target: Value = within(
            "a new Chromium tab",
            reqwest::Client::new()
                .put(format!("http://{}/json/new?about:blank", self.devtools))
                .send(),
        )
        .await
        .expect("DevTools /json/new")
        .json()
        .await
        .expect("DevTools /json/new answer");
        let ws_url = target["webSocketDebuggerUrl"]
            .as_str()
            .expect("webSocketDebuggerUrl")
            .to_owned();
        let (socket, _) = within(
            "the tab's DevTools socket",
            tokio_tungstenite::connect_async(ws_url),
        )
        .await
        .expect("connect to the tab");
        let page = Page {
            socket: Mutex::new(socket),
            next_id: std::sync::atomic::AtomicU64::new(1),
            target_id: target["id"].as_str().unwrap_or_default().to_owned(),
            devtools: self.devtools.clone(),
        };
        page.goto(url).await;
        page
    }

    /// The browser's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// One tab. Commands go one at a time; events the tab sends meanwhile are skipped.
#[derive(Debug)]
pub struct Page {
    socket: Mutex<Socket>,
    next_id: std::sync::atomic::AtomicU64,
    target_id: String,
    devtools: String,
}

/// A script that threw, or a promise that rejected, in the page.
#[derive(Debug, Clone)]
pub struct ScriptError(pub String);

impl std::fmt::Display for ScriptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Page {
    /// Sends one CDP command and returns its `result`.
    pub async fn call(&self, method: &str, params: Value) -> Value {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut socket = self.socket.lock().await;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        within(method, socket.send(Message::text(msg)))
            .await
            .unwrap_or_else(|e| panic!("send {method}: {e}"));
        within(method, async {
            loop {
                let frame = socket
                    .next()
                    .await
                    .unwrap_or_else(|| panic!("{method}: the tab's socket closed"))
                    .unwrap_or_else(|e| panic!("{method}: {e}"));
                let Message::Text(text) = frame else { continue };
                let v: Value = serde_json::from_str(&text).expect("CDP JSON");
                if v["id"].as_u64() != Some(id) {
                    continue;
                }
                if let Some(err) = v.get("error") {
                    panic!("{method}: {err}");
                }
                return v["result"].clone();
            }
        })
        .await
    }

    /// Navigates and waits for the document to finish loading.
    pub async fn goto(&self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
        eventually(&format!("{url} to load"), || async {
            let r = self
                .try_eval("document.readyState + ' ' + location.href")
                .await
                .ok()?;
            let s = r.as_str()?;
            (s.starts_with("complete ") && !s.ends_with("about:blank")).then_some(())
        })
        .await;
    }

    /// Evaluates `expr` in the page (awaiting it if it is a promise) and returns its
    /// value as JSON; an exception or rejection is an error.
    pub async fn try_eval(&self, expr: &str) -> Result<Value, ScriptError> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "awaitPromise": true, "returnByValue": true}),
            )
            .await;
        if let Some(ex) = r.get("exceptionDetails") {
            let text = ex["exception"]["description"]
                .as_str()
                .or_else(|| ex["text"].as_str())
                .unwrap_or("script error");
            return Err(ScriptError(text.to_owned()));
        }
        Ok(r["result"]["value"].clone())
    }

    /// [`Page::try_eval`] that fails the test on a script error.
    pub async fn eval(&self, expr: &str) -> Value {
        self.try_eval(expr)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n--- script ---\n{expr}"))
    }

    /// Polls `expr` until it returns a truthy value; returns that value.
    pub async fn wait_for(&self, what: &str, expr: &str) -> Value {
        eventually(what, || async {
            let v = self.try_eval(expr).await.ok()?;
            let truthy =
                !matches!(&v, Value::Null | Value::Bool(false)) && v != json!(0) && v != json!("");
            truthy.then_some(v)
        })
        .await
    }

    /// A PNG of the visible page.
    pub async fn screenshot(&self) -> Vec<u8> {
        let r = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("screenshot data"))
            .expect("screenshot base64")
    }

    /// Cuts the tab off the network (`true`) or restores it; the page sees `offline` /
    /// `online` events and its sockets fail as on a real network drop.
    pub async fn set_offline(&self, offline: bool) {
        self.call("Network.enable", json!({})).await;
        self.call(
            "Network.emulateNetworkConditions",
            json!({"offline": offline, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1}),
        )
        .await;
    }

    /// Closes the tab.
    pub async fn close(self) {
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            reqwest::get(format!(
                "http://{}/json/close/{}",
                self.devtools, self.target_id
            )),
        )
        .await;
    }
}

/// Serves one HTML page at `/` (anything else 404) on 127.0.0.1, giving tests a page
/// with an origin of its own; returns the origin (`http://127.0.0.1:PORT`) and the
/// server task (abort it to stop serving).
pub async fn serve_page(html: String) -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let origin = format!("http://{}", listener.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let html = html.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]);
                let resp = if head.starts_with("GET / ") {
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{html}",
                        html.len()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        .to_owned()
                };
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    (origin, task)
}

/// A page on an origin of its own (titled `title`) that imports herald.js from the
/// gateway at `gateway_http` and exposes the module as `window.herald`; returns once
/// the module loaded.
pub async fn open_herald_page(
    browser: &Browser,
    gateway_http: &str,
    title: &str,
) -> (Page, tokio::task::JoinHandle<()>) {
    let html = format!(
        r#"<!doctype html><meta charset="utf-8"><title>{title}</title>
<script type="module">
import * as herald from "{gateway_http}/herald.js";
window.herald = herald;
window.heraldLoaded = true;
</script>"#
    );
    let (origin, server) = serve_page(html).await;
    let page = browser.open(&format!("{origin}/")).await;
    page.wait_for(
        "herald.js to load from the gateway",
        "window.heraldLoaded === true",
    )
    .await;
    (page, server)
}

/// Counts the distinct colours of a PNG (at most `cap`), to tell a rendered page from
/// a blank one.
pub fn distinct_colours(png_bytes: &[u8], cap: usize) -> usize {
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("PNG size")];
    let info = reader.next_frame(&mut buf).expect("PNG frame");
    let step = info.color_type.samples() * usize::from(info.bit_depth as u8).div_ceil(8);
    let mut seen = std::collections::HashSet::new();
    for px in buf[..info.buffer_size()].chunks(step) {
        seen.insert(px.to_vec());
        if seen.len() >= cap {
            break;
        }
    }
    seen.len()
}
