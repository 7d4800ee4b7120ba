//! herald.js's server-side subscriptions in a real headless Chromium against a real
//! gateway with `HERALD_USER_CHANNEL=1` and a real broadcaster: the page gets its
//! personal channel at login and the backend's messages on it, is subscribed and
//! unsubscribed by the backend (with a replay), recovers the personal channel across a
//! reconnect the backend asked for, and stops when the backend disconnects it for good.

use reqwest::Method;
use serde_json::{Value, json};

use crate::browser::{Browser, Page, open_herald_page};
use crate::{API_KEY, Redis, Service, ServiceBuilder, http_json, token};

/// A page that imports herald.js from the gateway at `gateway_http`.
async fn open_page(browser: &Browser, gateway_http: &str) -> (Page, tokio::task::JoinHandle<()>) {
    open_herald_page(browser, gateway_http, "herald.js server-side subscriptions").await
}

/// POSTs `body` to the broadcaster's `path`, expecting 200; returns the answer.
async fn post(bc: &Service, path: &str, body: Value) -> Value {
    let (status, v) = http_json(
        Method::POST,
        &format!("{}{path}", bc.http()),
        Some(API_KEY),
        Some(body.clone()),
    )
    .await;
    assert_eq!(status, 200, "{path} {body} → {v}");
    v
}

/// The page's client-level events once there are `n` of them, as `[name, value]`
/// pairs (publications reduced to what the test checks).
async fn events(page: &Page, n: usize) -> Vec<Value> {
    let all = page
        .wait_for(
            &format!("{n} server-side events in the page"),
            &format!("window.events.length >= {n} && window.events"),
        )
        .await;
    all.as_array().expect("events").clone()
}

/// The page's `state` events that said `state`.
async fn states(page: &Page, state: &str) -> Vec<Value> {
    let all = page
        .eval(&format!(
            "window.states.filter((s) => s.state === {})",
            json!(state)
        ))
        .await;
    all.as_array().expect("states").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_js_follows_server_side_subscriptions_on_a_real_gateway() {
    let redis = Redis::start().await;
    let gw = ServiceBuilder::new("ws-gateway")
        .redis(&redis)
        // Development mode admits the test page's origin.
        .env("HERALD_DEV", "1")
        .env("HERALD_USER_CHANNEL", "1")
        .spawn()
        .await;
    let bc = ServiceBuilder::new("broadcaster")
        .redis(&redis)
        .spawn()
        .await;
    let browser = Browser::start().await;
    let (page, _server) = open_page(&browser, &gw.http()).await;
    let url = json!(gw.ws());
    // Carol may subscribe to `news` only: `secret:1` is the backend's to give.
    let carol = json!(token("carol", &["news"], &[]));

    // At login: the personal channel, a server-side subscription.
    let first = page
        .eval(&format!(
            "window.h = new herald.Herald({url}, {{ token: {carol}, minReconnectDelay: 3000, random: () => 1 }}); \
             window.events = []; window.states = []; \
             h.on('state', (s) => states.push(s)); \
             h.on('serverSubscribed', (e) => events.push(['serverSubscribed', e])); \
             h.on('serverUnsubscribed', (e) => events.push(['serverUnsubscribed', e])); \
             h.on('gap', (e) => events.push(['gap', e])); \
             h.on('publication', (m) => events.push(['publication', \
               {{ channel: m.channel, type: m.type, data: m.data, offset: m.offset, fromUser: m.fromUser }}])); \
             new Promise((resolve) => h.on('serverSubscribed', resolve))"
        ))
        .await;
    assert_eq!(
        (
            &first["channel"],
            &first["offset"],
            &first["position"]["offset"]
        ),
        (&json!("user:carol"), &json!(0), &json!(0)),
        "{first}"
    );
    assert!(first.get("recovered").is_none(), "{first}");
    let kept = page.eval("h.serverSubscriptions").await;
    assert_eq!(kept[0]["channel"], "user:carol", "{kept}");
    assert_eq!(kept[0]["live"], true, "{kept}");

    // The backend writes to the user: a publication on the personal channel.
    post(
        &bc,
        "/v1/user-messages",
        json!({"user_id":"carol","content":{"text":"your order shipped"}}),
    )
    .await;
    let got = events(&page, 2).await;
    assert_eq!(
        got[1],
        json!(["publication", {"channel":"user:carol","type":"user_message",
            "data":{"text":"your order shipped"},"offset":1,"fromUser":"carol"}])
    );

    // The backend subscribes Carol to `secret:1` from offset 1: the replay (2), then
    // `serverSubscribed`, then live publishes.
    let mut epoch = Value::Null;
    for n in 1..=2 {
        let ack = post(
            &bc,
            "/v1/publish",
            json!({"channel":"secret:1","message":{"n":n}}),
        )
        .await;
        epoch = ack["epoch"].clone();
    }
    let v = post(
        &bc,
        "/v1/subscribe",
        json!({"user_id":"carol","channel":"secret:1","since":{"offset":1,"epoch":epoch}}),
    )
    .await;
    assert_eq!(v["affected"], 1, "{v}");
    let got = events(&page, 4).await;
    assert_eq!(
        got[2],
        json!(["serverSubscribed", {"channel":"secret:1","offset":2,"epoch":epoch,
            "recovered":true,"position":{"offset":1,"epoch":epoch}}])
    );
    assert_eq!(
        got[3],
        json!(["publication", {"channel":"secret:1","type":"message","data":{"n":2},"offset":2}])
    );
    post(
        &bc,
        "/v1/publish",
        json!({"channel":"secret:1","message":{"n":3}}),
    )
    .await;
    let got = events(&page, 5).await;
    assert_eq!(
        got[4],
        json!(["publication", {"channel":"secret:1","type":"message","data":{"n":3},"offset":3}])
    );

    // Unsubscribed by the backend: nothing more from `secret:1`. A later message on
    // the personal channel shows that whatever was to come has come.
    post(
        &bc,
        "/v1/unsubscribe",
        json!({"user_id":"carol","channel":"secret:1"}),
    )
    .await;
    let got = events(&page, 6).await;
    assert_eq!(
        got[5],
        json!(["serverUnsubscribed", {"channel":"secret:1"}])
    );
    post(
        &bc,
        "/v1/publish",
        json!({"channel":"secret:1","message":{"n":4}}),
    )
    .await;
    post(
        &bc,
        "/v1/user-messages",
        json!({"user_id":"carol","content":"after the unsubscribe"}),
    )
    .await;
    let got = events(&page, 7).await;
    assert_eq!(
        (&got[6][1]["channel"], &got[6][1]["offset"]),
        (&json!("user:carol"), &json!(2)),
        "{got:?}"
    );
    let kept = page
        .eval("h.serverSubscriptions.map((s) => s.channel)")
        .await;
    assert_eq!(kept, json!(["user:carol"]));

    // The backend asks for a reconnect. A message sent while the page is away (the
    // reconnect waits 3 s: `random` is pinned) is recovered once the personal channel
    // is back: the client renews it with since.
    post(
        &bc,
        "/v1/disconnect",
        json!({"user_id":"carol","reason":"moving you","reconnect":true}),
    )
    .await;
    let away = page
        .wait_for(
            "the page to be disconnected",
            "window.states.find((s) => s.state === 'disconnected')",
        )
        .await;
    assert_eq!(
        (&away["disconnect"], &away["reason"], &away["reconnect"]),
        (
            &json!("server_disconnect"),
            &json!("moving you"),
            &json!(true)
        ),
        "{away}"
    );
    post(
        &bc,
        "/v1/user-messages",
        json!({"user_id":"carol","content":"while you were away"}),
    )
    .await;
    let got = events(&page, 9).await;
    assert_eq!(
        got[7],
        json!(["serverSubscribed", {"channel":"user:carol","offset":3,"epoch":got[7][1]["epoch"],
            "position":{"offset":2,"epoch":got[7][1]["epoch"]}}])
    );
    assert_eq!(
        got[8],
        json!(["publication", {"channel":"user:carol","type":"user_message",
            "data":"while you were away","offset":3,"fromUser":"carol"}])
    );
    assert_eq!(states(&page, "connected").await.len(), 2);

    // Disconnected for good with the backend's code and reason: the client stops.
    post(
        &bc,
        "/v1/disconnect",
        json!({"user_id":"carol","code":"banned","reason":"bye"}),
    )
    .await;
    let stopped = page
        .wait_for(
            "the client to stop",
            "window.states.find((s) => s.reconnect === false)",
        )
        .await;
    assert_eq!(
        stopped,
        json!({"state":"disconnected","code":1008,"reason":"bye","disconnect":"banned",
            "reconnect":false})
    );
    // A stopped client schedules nothing: still no new attempt a while later.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(page.eval("h.state").await, "disconnected");
    assert_eq!(states(&page, "connecting").await.len(), 2);
    let all = page.eval("window.events.length").await;
    assert_eq!(all, 9, "{:?}", page.eval("window.events").await);
    assert_eq!(
        page.eval("window.events.filter(([name]) => name === 'gap').length")
            .await,
        0
    );
    page.eval("h.close(); true").await;
}
