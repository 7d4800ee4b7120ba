//! herald.js in a real headless Chromium: the page imports the client from a real
//! gateway's `/herald.js` and talks to real services, while the test kills gateways,
//! restarts Redis, lets tokens expire and trims history underneath it.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::browser::{Browser, Page, distinct_colours, serve_page};
use crate::{ADMIN_KEY, API_KEY, Redis, Service, ServiceBuilder, http_json, token, within};

/// Serves a test page on an origin of its own (a tiny HTTP server) that imports
/// herald.js from the gateway at `gateway_http` and defines `setup(urls, options,
/// channel)`, which creates `window.h` and records everything the client reports in
/// `window.log`. Returns the page's origin and its server task.
async fn serve_test_page(gateway_http: &str) -> (String, tokio::task::JoinHandle<()>) {
    let html = format!(
        r#"<!doctype html><meta charset="utf-8"><title>herald.js test page</title>
<script type="module">
import * as herald from "{gateway_http}/herald.js";
window.setup = (urls, options, channel) => {{
  const log = window.log = {{ states: [], msgs: [], data: [], gaps: [], subscribed: [], errors: [], subErrors: [], tokens: 0 }};
  const h = window.h = new herald.Herald(urls, options);
  h.on("state", (s) => log.states.push(s));
  h.on("error", (e) => log.errors.push({{ code: e.code, message: e.message }}));
  if (channel) {{
    const sub = window.sub = h.subscribe(channel);
    sub.on("message", (m) => {{ log.msgs.push(m.offset); log.data.push(m.data); }});
    sub.on("gap", (g) => log.gaps.push(g));
    sub.on("subscribed", (i) => log.subscribed.push(i));
    sub.on("error", (e) => log.subErrors.push({{ code: e.code, message: e.message }}));
  }}
  return true;
}};
window.heraldLoaded = true;
</script>"#
    );
    serve_page(html).await
}

/// Opens a page served by [`serve_test_page`] and waits for herald.js to load.
async fn open_test_page(browser: &Browser, origin: &str) -> Page {
    let page = browser.open(&format!("{origin}/")).await;
    page.wait_for(
        "herald.js to load from the gateway",
        "window.heraldLoaded === true",
    )
    .await;
    page
}

/// [`serve_test_page`] and [`open_test_page`] in one.
async fn test_page(
    browser: &Browser,
    gateway: &Service,
) -> (Page, String, tokio::task::JoinHandle<()>) {
    let (origin, server) = serve_test_page(&gateway.http()).await;
    let page = open_test_page(browser, &origin).await;
    (page, origin, server)
}

/// Creates the client in the page.
async fn setup(page: &Page, urls: &[String], options: Value, channel: Option<&str>) {
    page.eval(&format!(
        "setup({}, {}, {})",
        json!(urls),
        options,
        channel.map_or("null".to_owned(), |c| json!(c).to_string())
    ))
    .await;
}

/// A test page whose client (given `options`, pointed at `urls`) is connected and
/// subscribed to `channel`; herald.js comes from `gateway`.
async fn subscribed_page(
    browser: &Browser,
    gateway: &Service,
    urls: &[String],
    options: Value,
    channel: &str,
) -> (Page, tokio::task::JoinHandle<()>) {
    let (page, _origin, server) = test_page(browser, gateway).await;
    setup(&page, urls, options, Some(channel)).await;
    until_connected(&page).await;
    page.wait_for(
        &format!("subscribed to {channel}"),
        "log.subscribed.length === 1",
    )
    .await;
    (page, server)
}

/// The offsets the page's subscription has delivered to the app, in order.
async fn delivered(page: &Page) -> Vec<u64> {
    serde_json::from_value(page.eval("log.msgs").await).expect("offsets")
}

/// Waits until the page's client reports `connected`.
async fn until_connected(page: &Page) {
    page.wait_for("the client to connect", "h.state === 'connected'")
        .await;
}

fn gateway(redis: &Redis) -> ServiceBuilder {
    ServiceBuilder::new("ws-gateway")
        .redis(redis)
        // Browsers send an Origin; each test says which it allows.
        .env("HERALD_DEV", "1")
}

/// Creates the user `ann` (password `ann-password`) at auth-svc.
async fn add_ann(auth: &Service, channels: &[&str], publish: &[&str]) {
    let (status, body) = http_json(
        Method::POST,
        &format!("{}/v1/users", auth.http()),
        Some(ADMIN_KEY),
        Some(json!({"username": "ann", "password": "ann-password",
                    "channels": channels, "publish": publish})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
}

async fn publish(broadcaster: &Service, channel: &str, message: Value) -> Value {
    let (status, body) = http_json(
        Method::POST,
        &format!("{}/v1/publish", broadcaster.http()),
        Some(API_KEY),
        Some(json!({"channel": channel, "message": message})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_imports_herald_js_and_receives_publishes() {
    let redis = Redis::start().await;
    let gw = gateway(&redis).spawn().await;
    let bc = ServiceBuilder::new("broadcaster")
        .redis(&redis)
        .spawn()
        .await;

    // Served with a type, a validator and a cache lifetime, to any origin.
    let res = reqwest::get(format!("{}/herald.js", gw.http()))
        .await
        .expect("GET /herald.js");
    assert_eq!(res.status(), 200);
    let h = res.headers().clone();
    assert!(
        h["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(h["cache-control"].to_str().unwrap().contains("max-age"));
    assert_eq!(h["access-control-allow-origin"], "*");
    let etag = h["etag"].to_str().unwrap().to_owned();
    let body = res.text().await.expect("body");
    assert_eq!(body, include_str!("../../../clients/js/herald.js"));
    let again = reqwest::Client::new()
        .get(format!("{}/herald.js", gw.http()))
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("conditional GET");
    assert_eq!(again.status(), 304);

    let browser = Browser::start().await;
    let (page, _origin, _server) = test_page(&browser, &gw).await;
    let t = token("ann", &["news", "chat:*"], &["chat:*"]);
    setup(&page, &[gw.ws()], json!({"token": t}), Some("news")).await;
    until_connected(&page).await;
    page.wait_for("subscribed to news", "log.subscribed.length === 1")
        .await;
    for i in 1..=5 {
        publish(&bc, "news", json!({"n": i})).await;
    }
    page.wait_for("five messages", "log.msgs.length === 5")
        .await;
    assert_eq!(delivered(&page).await, [1, 2, 3, 4, 5]);
    assert_eq!(page.eval("log.data[4]").await, json!({"n": 5}));

    // A publish from the page is acknowledged with its position; a refused one rejects
    // with the server's code.
    let ack = page.eval("h.publish('chat:lobby', {text: 'hi'})").await;
    assert_eq!(ack["offset"], 1, "{ack}");
    assert_eq!(ack["channel"], "chat:lobby");
    let refused = page
        .eval("h.publish('news', {}).then(() => 'published', (e) => e.code)")
        .await;
    assert_eq!(refused, "forbidden");
    assert_eq!(page.eval("log.errors.length").await, 0);
    page.eval("h.close(), true").await;
    page.wait_for("the client closed", "h.state === 'disconnected'")
        .await;
}

/// The page's client rides through `disrupt` while 500 messages are published at
/// 200/s and must deliver every offset exactly once, in order, with no gap.
/// Returns the client's state changes, in order.
async fn survives(disrupt: impl AsyncFnOnce(&mut Redis, &mut Service)) -> Value {
    let mut redis = Redis::start().await;
    let mut gw1 = gateway(&redis).process().spawn().await;
    let gw2 = gateway(&redis).spawn().await;
    let bc = ServiceBuilder::new("broadcaster")
        .redis(&redis)
        .spawn()
        .await;
    let browser = Browser::start().await;
    let (page, _server) = subscribed_page(
        &browser,
        &gw2,
        &[gw1.ws(), gw2.ws()],
        json!({"token": token("ann", &["feed"], &[])}),
        "feed",
    )
    .await;

    let publisher = tokio::spawn(crate::publish_stream(bc.http(), "feed", 500, 200));
    page.wait_for("the stream to be flowing", "log.msgs.length >= 100")
        .await;
    disrupt(&mut redis, &mut gw1).await;
    let at_disruption = page.eval("log.msgs.length").await.as_u64().unwrap_or(0);
    assert!(
        at_disruption < 500,
        "the disruption came after the stream had ended"
    );
    within("the publisher", publisher).await.expect("publisher");
    page.wait_for("all 500 messages", "log.msgs.length >= 500")
        .await;
    // A quiet window: a late duplicate would arrive within it, and an absence cannot
    // be polled for.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = delivered(&page).await;
    assert_eq!(
        got,
        (1..=500).collect::<Vec<u64>>(),
        "every offset once, in order"
    );
    assert_eq!(page.eval("log.gaps").await, json!([]));
    assert_eq!(page.eval("h.state").await, "connected");
    page.eval("log.states.map((s) => s.state)").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_gateway_mid_stream_loses_and_repeats_nothing() {
    let states = survives(async |_redis, gw1| {
        gw1.kill().await;
    })
    .await;
    // It did move: dropped by the first gateway, connected again (to the second).
    assert_eq!(
        states,
        json!([
            "connecting",
            "connected",
            "disconnected",
            "connecting",
            "connected"
        ]),
        "{states}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_mid_stream_loses_and_repeats_nothing() {
    let states = survives(async |redis, _gw1| {
        redis.restart_keeping_data().await;
    })
    .await;
    // A Redis outage does not close client connections.
    assert_eq!(states, json!(["connecting", "connected"]), "{states}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_refreshed_before_they_expire() {
    let redis = Redis::start().await;
    // No leeway: a token is refused the moment it expires.
    let gw = gateway(&redis)
        .env("HERALD_JWT_LEEWAY_S", "0")
        .spawn()
        .await;
    let bc = ServiceBuilder::new("broadcaster")
        .redis(&redis)
        .spawn()
        .await;
    let auth = ServiceBuilder::new("auth-svc")
        .redis(&redis)
        .env("HERALD_DEV", "1")
        .env("HERALD_ACCESS_TOKEN_TTL_S", "4")
        .spawn()
        .await;
    add_ann(&auth, &["news"], &[]).await;

    let browser = Browser::start().await;
    let (page, _origin, _server) = test_page(&browser, &gw).await;
    // The page logs in at auth-svc across origins (CORS), then refreshes there.
    let script = format!(
        r#"(async () => {{
  const auth = {auth};
  const login = await fetch(auth + "/v1/token", {{ method: "POST", headers: {{ "content-type": "application/json" }},
    body: JSON.stringify({{ username: "ann", password: "ann-password" }}) }});
  if (!login.ok) throw new Error("login " + login.status);
  let pair = await login.json();
  let first = true;
  setup([{ws}], {{ getToken: async () => {{
    if (!first) {{
      const r = await fetch(auth + "/v1/token/refresh", {{ method: "POST", headers: {{ "content-type": "application/json" }},
        body: JSON.stringify({{ refresh_token: pair.refresh_token }}) }});
      if (!r.ok) throw new Error("refresh " + r.status);
      pair = await r.json();
    }}
    first = false;
    log.tokens += 1;
    return pair.access_token;
  }} }}, "news");
  return true;
}})()"#,
        auth = json!(auth.http()),
        ws = json!(gw.ws()),
    );
    page.eval(&script).await;
    until_connected(&page).await;
    page.wait_for("subscribed to news", "log.subscribed.length === 1")
        .await;
    // Three token lifetimes, publishing all along (the pace is the point: time passes
    // while the client refreshes its token).
    for i in 1..=12u64 {
        publish(&bc, "news", json!({"n": i})).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    page.wait_for("twelve messages", "log.msgs.length === 12")
        .await;
    assert_eq!(delivered(&page).await, (1..=12).collect::<Vec<u64>>());
    let tokens = page.eval("log.tokens").await.as_u64().unwrap_or(0);
    assert!(
        tokens >= 3,
        "the token was refreshed at least twice: {tokens} fetched"
    );
    // One connection all along: never disconnected, never told the token expired.
    let states = page.eval("log.states.map((s) => s.state)").await;
    assert_eq!(states, json!(["connecting", "connected"]), "{states}");
    assert_eq!(page.eval("log.errors").await, json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_trimmed_during_a_disconnect_is_reported_as_a_gap() {
    let redis = Redis::start().await;
    let mut gw = gateway(&redis)
        .env("HERALD_HISTORY_SIZE", "10")
        .process()
        .spawn()
        .await;
    let bc = ServiceBuilder::new("broadcaster")
        .redis(&redis)
        .env("HERALD_HISTORY_SIZE", "10")
        .spawn()
        .await;
    let browser = Browser::start().await;
    let (page, _server) = subscribed_page(
        &browser,
        &gw,
        &[gw.ws()],
        json!({"token": token("ann", &["news"], &[]), "maxReconnectDelay": 1000}),
        "news",
    )
    .await;
    for i in 1..=3 {
        publish(&bc, "news", json!({"n": i})).await;
    }
    page.wait_for("three messages", "log.msgs.length === 3")
        .await;

    gw.kill().await;
    page.wait_for("the client to notice", "h.state !== 'connected'")
        .await;
    for i in 4..=53 {
        publish(&bc, "news", json!({"n": i})).await;
    }
    gw.restart().await;
    let gap = page.wait_for("a gap", "log.gaps[0]").await;
    assert_eq!(gap["from"]["offset"], 3, "{gap}");
    assert_eq!(gap["to"]["offset"], 53, "{gap}");
    // Live delivery goes on from the new position.
    publish(&bc, "news", json!({"n": 54})).await;
    page.wait_for("the next live message", "log.msgs.includes(54)")
        .await;
    assert_eq!(delivered(&page).await, [1, 2, 3, 54]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_allow_list_admits_the_page_and_refuses_another() {
    let redis = Redis::start().await;
    let browser = Browser::start().await;
    // The allowed page's origin is known only once its server is bound, so the pages
    // are served first and the gateway started after them, on a listener bound ahead.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let gw_http = format!("http://{}", listener.local_addr().expect("addr"));
    let (origin_ok, _s1) = serve_test_page(&gw_http).await;
    let (origin_no, _s2) = serve_test_page(&gw_http).await;
    let gw = ServiceBuilder::new("ws-gateway")
        .redis(&redis)
        .env("HERALD_ALLOWED_ORIGINS", &origin_ok)
        .spawn_on(listener)
        .await;
    let page_ok = open_test_page(&browser, &origin_ok).await;
    let page_no = open_test_page(&browser, &origin_no).await;
    let t = token("ann", &["news"], &[]);
    setup(&page_ok, &[gw.ws()], json!({"token": t}), Some("news")).await;
    setup(&page_no, &[gw.ws()], json!({"token": t}), Some("news")).await;
    until_connected(&page_ok).await;
    let last = page_no
        .wait_for(
            "the other origin to be refused for good",
            "h.state === 'disconnected' && log.states[log.states.length - 1]",
        )
        .await;
    assert_eq!(last["reconnect"], false, "{last} (from {origin_no})");
    assert_eq!(last["code"], 4403, "{last}");
    // It stays refused: no retry loop against the gateway. A quiet window longer than
    // the first retry's backoff: an absence cannot be polled for.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let attempts = page_no
        .eval("log.states.filter((s) => s.state === 'connecting').length")
        .await;
    assert_eq!(attempts, 1, "a refused origin is not retried");
    assert_eq!(page_ok.eval("h.state").await, "connected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_demo_renders_and_delivers() {
    let redis = Redis::start().await;
    let gw = gateway(&redis).spawn().await;
    let auth = ServiceBuilder::new("auth-svc")
        .redis(&redis)
        .env("HERALD_DEV", "1")
        .spawn()
        .await;
    add_ann(&auth, &["chat:*"], &["chat:*"]).await;
    let browser = Browser::start().await;
    let url = format!(
        "{}/demo/?user=ann&password=ann-password&auth={}",
        gw.http(),
        auth.http()
    );
    let page = browser.open(&url).await;
    page.wait_for(
        "the demo to connect",
        "document.querySelector('#state')?.textContent.trim() === 'connected'",
    )
    .await;
    page.eval(
        "document.querySelector('#text').value = 'hello from the demo'; \
         document.querySelector('#send').click(); true",
    )
    .await;
    page.wait_for(
        "the message to come back through the gateway",
        "document.querySelector('#messages').textContent.includes('hello from the demo')",
    )
    .await;
    let png = page.screenshot().await;
    if let Ok(path) = std::env::var("HERALD_DEMO_SCREENSHOT") {
        std::fs::write(&path, &png).expect("write the screenshot");
    }
    let colours = distinct_colours(&png, 64);
    assert!(
        colours >= 16,
        "the screenshot looks blank ({colours} colours)"
    );

    // After a reload the conversation is still there and nothing is delivered twice.
    page.goto(&url).await;
    page.wait_for(
        "the demo to reconnect after a reload",
        "document.querySelector('#state')?.textContent.trim() === 'connected'",
    )
    .await;
    let count = page
        .eval("document.querySelector('#messages').textContent.split('hello from the demo').length - 1")
        .await;
    assert_eq!(count, 1, "the message is shown once after a reload");
    let _ = within("closing the tab", page.close()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn going_offline_and_online_recovers_what_was_missed() {
    let redis = Redis::start().await;
    let gw = gateway(&redis).spawn().await;
    let bc = ServiceBuilder::new("broadcaster")
        .redis(&redis)
        .spawn()
        .await;
    let browser = Browser::start().await;
    let (page, _origin, _server) = test_page(&browser, &gw).await;
    let t = token("ann", &["news"], &[]);
    setup(&page, &[gw.ws()], json!({"token": t}), Some("news")).await;
    until_connected(&page).await;
    page.wait_for("subscribed to news", "log.subscribed.length === 1")
        .await;
    publish(&bc, "news", json!({"n": 1})).await;
    page.wait_for("the first message", "log.msgs.length === 1")
        .await;

    page.set_offline(true).await;
    let last = page
        .wait_for(
            "the client to go offline",
            "h.state === 'disconnected' && log.states[log.states.length - 1]",
        )
        .await;
    assert_eq!(last["reconnect"], true, "{last}");
    for i in 2..=6 {
        publish(&bc, "news", json!({"n": i})).await;
    }
    page.set_offline(false).await;
    page.wait_for("all six messages after coming back", "log.msgs.length >= 6")
        .await;
    until_connected(&page).await;
    assert_eq!(delivered(&page).await, [1, 2, 3, 4, 5, 6]);
    assert_eq!(page.eval("log.gaps").await, json!([]));
}

/// The README's "Use it from a web page" snippet, pasted into a page as it stands (only
/// the ports changed to this test's), works against a development-mode cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_web_page_snippet_works_as_pasted() {
    let readme = include_str!("../../../README.md");
    let section = readme
        .split("## Use it from a web page")
        .nth(1)
        .expect("the README's web page section");
    let html = section
        .split("```html\n")
        .nth(1)
        .and_then(|s| s.split("\n```").next())
        .expect("an html block in that section");
    let redis = Redis::start().await;
    let gw = gateway(&redis).spawn().await;
    let auth = ServiceBuilder::new("auth-svc")
        .redis(&redis)
        .env("HERALD_DEV", "1")
        .spawn()
        .await;
    add_ann(&auth, &["chat:*"], &["chat:*"]).await;
    let html = html
        .replace("127.0.0.1:8765", &gw.addr.to_string())
        .replace("127.0.0.1:8081", &auth.addr.to_string());
    let (origin, _server) = serve_page(html).await;
    let browser = Browser::start().await;
    let page = browser.open(&format!("{origin}/")).await;
    let text = page
        .wait_for(
            "the page to show its own message",
            "document.body.innerText.includes('hello from a page') && document.body.innerText",
        )
        .await;
    assert!(text.as_str().unwrap_or("").starts_with("1: "), "{text}");
}

/// A gateway that stops answering without closing anything (SIGSTOP: the OS reports
/// no close) is given up after its heartbeats go missing, and the client recovers on
/// the other gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_gateway_is_noticed_by_its_missing_heartbeats() {
    let redis = Redis::start().await;
    let gw1 = gateway(&redis)
        .env("HERALD_HEARTBEAT_INTERVAL_MS", "1000")
        .process()
        .spawn()
        .await;
    let gw2 = gateway(&redis)
        .env("HERALD_HEARTBEAT_INTERVAL_MS", "1000")
        .spawn()
        .await;
    let bc = ServiceBuilder::new("broadcaster")
        .redis(&redis)
        .spawn()
        .await;
    let browser = Browser::start().await;
    let (page, _server) = subscribed_page(
        &browser,
        &gw2,
        &[gw1.ws(), gw2.ws()],
        json!({"token": token("ann", &["news"], &[])}),
        "news",
    )
    .await;
    publish(&bc, "news", json!({"n": 1})).await;
    page.wait_for("the first message", "log.msgs.length === 1")
        .await;

    let pid = i32::try_from(gw1.pid().expect("pid")).expect("pid");
    crate::signal(pid, 19);
    for i in 2..=4 {
        publish(&bc, "news", json!({"n": i})).await;
    }
    // 2 × the heartbeat interval + 1 s of silence, then a reconnect to gw2.
    let last = page
        .wait_for(
            "the client to give up the silent gateway",
            "log.states.find((s) => s.state === 'disconnected')",
        )
        .await;
    assert_eq!(last["code"], 4000, "{last}");
    page.wait_for(
        "all four messages, from the other gateway",
        "log.msgs.length >= 4",
    )
    .await;
    until_connected(&page).await;
    assert_eq!(delivered(&page).await, [1, 2, 3, 4]);
    crate::signal(pid, 18);
}
