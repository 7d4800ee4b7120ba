//! The application's hooks, against a real HTTP backend in this process (axum), real
//! Redis and two gateways: a cookie-authenticated connect, the backend's refusals
//! carried to the client with its code, subscribe approval and denial, publish
//! rewrite and rejection, refresh extending a connection past its first `exp`, and a
//! backend that hangs or is down (clear errors; other clients keep getting their
//! messages).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::gateway::{broadcast, gateway, now};
use crate::{Redis, Service, ServiceBuilder, Ws, dead_addr, token};

const SECRET: &str = "proxy-secret-0123456789";

/// What the backend saw.
#[derive(Debug, Default)]
struct Seen {
    /// (hook, body, cookie header, secret header)
    requests: Vec<(String, Value, Option<String>, Option<String>)>,
}

type Shared = Arc<Mutex<Seen>>;

fn record(s: &Shared, hook: &str, h: &HeaderMap, body: &Value) {
    let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    s.lock().expect("seen").requests.push((
        hook.to_owned(),
        body.clone(),
        get("cookie"),
        get("x-herald-proxy-secret"),
    ));
}

async fn connect(State(s): State<Shared>, h: HeaderMap, Json(body): Json<Value>) -> Json<Value> {
    record(&s, "connect", &h, &body);
    let cookie = h.get("cookie").and_then(|v| v.to_str().ok()).unwrap_or("");
    Json(match cookie {
        "session=alice" => json!({"result":{
            "user_id":"alice","channels":["room:*"],"publish":["room:*"],
            "info":{"name":"Alice"},"exp": now() + 2}}),
        "session=bob" => {
            json!({"result":{"user_id":"bob","channels":["room:*"],"publish":["room:*"]}})
        }
        "session=banned" => json!({"error":{"code":"banned","message":"account suspended"}}),
        "session=gone" => {
            json!({"disconnect":{"code":"session_expired","reason":"log in again","reconnect":false}})
        }
        _ => json!({"error":{"code":"unauthorized","message":"no session"}}),
    })
}

async fn refresh(State(s): State<Shared>, h: HeaderMap, Json(body): Json<Value>) -> Json<Value> {
    record(&s, "refresh", &h, &body);
    Json(json!({"result":{"exp": now() + 60}}))
}

async fn subscribe(State(s): State<Shared>, h: HeaderMap, Json(body): Json<Value>) -> Json<Value> {
    record(&s, "subscribe", &h, &body);
    Json(match body["channel"].as_str().unwrap_or("") {
        "vip:1" => json!({"result":{"data":{"welcome":"hi"},"info":{"vip":true}}}),
        "slow:1" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            json!({"result":{}})
        }
        _ => json!({"error":{"code":"closed","message":"room closed"}}),
    })
}

async fn publish(State(s): State<Shared>, h: HeaderMap, Json(body): Json<Value>) -> Json<Value> {
    record(&s, "publish", &h, &body);
    let text = body["data"]["text"].as_str().unwrap_or("").to_owned();
    if body["channel"] == "room:hang" {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    Json(match text.as_str() {
        "rewrite me" => json!({"result":{"data":{"text":"rewritten"}}}),
        t if t.contains("badword") => {
            json!({"error":{"code":"profanity","message":"watch your language"}})
        }
        _ => json!({"result":{}}),
    })
}

/// The backend; returns its base URL and what it saw.
async fn backend() -> (String, Shared, tokio::task::JoinHandle<()>) {
    let seen = Shared::default();
    let app = Router::new()
        .route("/connect", post(connect))
        .route("/refresh", post(refresh))
        .route("/subscribe", post(subscribe))
        .route("/publish", post(publish))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, seen, task)
}

/// A gateway with every hook pointed at `url`.
fn hooked(redis: &Redis, url: &str) -> ServiceBuilder {
    gateway(redis)
        .env("HERALD_PROXY_CONNECT_URL", &format!("{url}/connect"))
        .env("HERALD_PROXY_REFRESH_URL", &format!("{url}/refresh"))
        .env("HERALD_PROXY_SUBSCRIBE_URL", &format!("{url}/subscribe"))
        .env("HERALD_PROXY_SUBSCRIBE_CHANNELS", "vip:*")
        .env("HERALD_PROXY_PUBLISH_URL", &format!("{url}/publish"))
        .env("HERALD_PROXY_PUBLISH_CHANNELS", "room:*")
        .env("HERALD_PROXY_SECRET", SECRET)
        .env("HERALD_PROXY_TIMEOUT_MS", "500")
        .env("HERALD_JWT_LEEWAY_S", "0")
}

/// Opens a connection with `cookie` and logs in through the connect hook.
async fn login(gw: &Service, cookie: &str, data: Value) -> Ws {
    let mut ws = Ws::try_connect(&gw.ws(), &[("Cookie", cookie)])
        .await
        .expect("upgrade");
    ws.send(json!({"type":"auth","data":data})).await;
    ws
}

fn hooks_seen(seen: &Shared, hook: &str) -> Vec<(Value, Option<String>, Option<String>)> {
    seen.lock()
        .expect("seen")
        .requests
        .iter()
        .filter(|(h, ..)| h == hook)
        .map(|(_, b, c, s)| (b.clone(), c.clone(), s.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_authorizes_connects_subscribes_and_publishes() {
    let redis = Redis::start().await;
    let (url, seen, _backend) = backend().await;
    let gw1 = hooked(&redis, &url).spawn().await;
    let gw2 = hooked(&redis, &url).spawn().await;

    // A cookie session, told to the backend with the first frame's data.
    let mut alice = login(&gw1, "session=alice", json!({"room":"1"})).await;
    let ok = alice.recv_type("auth_success").await;
    assert_eq!(ok["user_id"], "alice", "{ok}");
    let (body, cookie, secret) = hooks_seen(&seen, "connect").remove(0);
    assert_eq!(
        (&body["conn_id"], &body["transport"], &body["data"]),
        (&ok["conn_id"], &json!("websocket"), &json!({"room":"1"}))
    );
    assert_eq!(body["headers"]["cookie"], "session=alice");
    assert_eq!(
        (cookie.as_deref(), secret.as_deref()),
        (Some("session=alice"), Some(SECRET))
    );

    // The backend's refusals reach the client with its code and reason.
    for (cookie, code, reason) in [
        ("session=banned", "banned", "account suspended"),
        ("session=gone", "session_expired", "log in again"),
        ("x=1", "unauthorized", "no session"),
    ] {
        let mut ws = login(&gw2, cookie, Value::Null).await;
        let (closed, frames) = ws.closed().await;
        assert_eq!(
            (closed.code, closed.reason.as_str()),
            (1008, reason),
            "{cookie}"
        );
        assert_eq!(
            frames.last(),
            Some(&json!({"type":"disconnect","code":code,"reason":reason,"reconnect":false}))
        );
    }
    // A token still works, without the backend.
    let (mut carol, _) = Ws::auth(
        &gw2,
        &token("carol", &["room:*", "vip:*"], &[]),
        &["room:1"],
    )
    .await;

    // Subscribe: vip:* always asks the backend, which approves with data for the
    // subscriber and an info of its own in presence, or refuses with its code.
    alice
        .send(json!({"type":"subscribe","channel":"vip:1","id":1}))
        .await;
    let s = alice.recv_type("subscribed").await;
    assert_eq!(
        (&s["id"], &s["data"]),
        (&json!(1), &json!({"welcome":"hi"})),
        "{s}"
    );
    alice
        .send(json!({"type":"presence","channel":"vip:1","id":2}))
        .await;
    let p = alice.recv_type("presence").await;
    assert_eq!(p["members"][0]["info"], json!({"vip":true}), "{p}");
    alice
        .send(json!({"type":"subscribe","channel":"vip:closed","id":3}))
        .await;
    let e = alice.recv_type("error").await;
    assert_eq!(
        e,
        json!({"type":"error","code":"permission_denied","message":"room closed","id":3,
               "channel":"vip:closed","app_code":"closed"})
    );
    // Allowed by the claims and not a vip:* channel: the backend is not asked.
    let asked = hooks_seen(&seen, "subscribe").len();
    alice
        .send(json!({"type":"subscribe","channel":"room:1","id":4}))
        .await;
    alice.recv_type("subscribed").await;
    assert_eq!(hooks_seen(&seen, "subscribe").len(), asked);
    // Not allowed by the claims: the backend decides (here: refused).
    alice
        .send(json!({"type":"subscribe","channel":"other:1","id":5}))
        .await;
    assert_eq!(alice.recv_type("error").await["code"], "permission_denied");

    // Publish: the backend lets it through, rewrites it, or refuses it with its code;
    // carol on the other gateway sees what was published.
    let ack = broadcast(&mut alice, "room:1", json!({"text":"hello"}), 6).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(alice.recv_type("message").await["message"]["text"], "hello");
    assert_eq!(carol.recv_type("message").await["message"]["text"], "hello");
    let ack = broadcast(&mut alice, "room:1", json!({"text":"rewrite me"}), 7).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(
        alice.recv_type("message").await["message"],
        json!({"text":"rewritten"})
    );
    assert_eq!(
        carol.recv_type("message").await["message"],
        json!({"text":"rewritten"})
    );
    let refused = broadcast(&mut alice, "room:1", json!({"text":"a badword"}), 8).await;
    assert_eq!(
        refused,
        json!({"type":"error","code":"rejected","message":"watch your language","id":8,
               "channel":"room:1","app_code":"profanity"})
    );
    let (body, ..) = hooks_seen(&seen, "publish").remove(0);
    assert_eq!(
        (&body["user_id"], &body["channel"], &body["data"]),
        (&json!("alice"), &json!("room:1"), &json!({"text":"hello"}))
    );
    assert!(
        carol
            .recv_within(Duration::from_millis(300))
            .await
            .is_none(),
        "nothing refused was published"
    );

    // Refresh: alice's session said exp = now + 2 s (no leeway here); the backend
    // extends it, so she is still connected well past it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    alice.send(json!({"type":"ping","id":9})).await;
    assert_eq!(alice.recv_type("pong").await["id"], 9);
    let refreshes = hooks_seen(&seen, "refresh");
    assert_eq!(refreshes.len(), 1, "{refreshes:?}");
    assert_eq!(refreshes[0].0["user_id"], "alice");
}

/// A hanging backend fails its own hook's requests in time (`unavailable`, nothing
/// published) while other clients' messages keep flowing; a backend that is down
/// refuses logins with a temporary, clear reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_or_dead_backend_degrades_only_its_hook() {
    let redis = Redis::start().await;
    let (url, _seen, _backend) = backend().await;
    let gw = hooked(&redis, &url)
        .env("HERALD_RATE_LIMIT_MESSAGES", "10000")
        .spawn()
        .await;
    let mut bob = login(&gw, "session=bob", Value::Null).await;
    bob.recv_type("auth_success").await;
    // Unrelated traffic: a token client publishing on a channel without hooks.
    let (mut pub_c, _) = Ws::auth(&gw, &token("p", &["news"], &["news"]), &["news"]).await;

    // Ten hung publishes on bob's side.
    for i in 0..10 {
        bob.send(json!({"type":"broadcast","channel":"room:hang","message":{"text":"x"},"id":i}))
            .await;
    }
    let started = Instant::now();
    let mut latencies = Vec::new();
    for n in 0..100u64 {
        let sent = Instant::now();
        let ack = broadcast(&mut pub_c, "news", json!({"n": n}), 1000 + n).await;
        assert_eq!(ack["type"], "ack", "{ack}");
        let m = pub_c.recv_type("message").await;
        assert_eq!(m["message"]["n"], n);
        latencies.push(sent.elapsed());
    }
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100 - 1];
    eprintln!(
        "unrelated client while 10 publish hooks hang: 100 round trips in {:?}, p99 {p99:?}",
        started.elapsed()
    );
    // Each hung publish is answered `unavailable` once the hook's timeout passes.
    let mut unavailable = 0;
    while unavailable < 10 {
        let v = bob.recv().await;
        if v["type"] == "error" {
            assert_eq!(
                (&v["code"], &v["channel"]),
                (&json!("unavailable"), &json!("room:hang")),
                "{v}"
            );
            unavailable += 1;
        }
    }

    // A backend that is not there: logins are refused as temporary.
    let (_hold, dead) = dead_addr();
    let down = gateway(&redis)
        .env(
            "HERALD_PROXY_CONNECT_URL",
            &format!("http://{dead}/connect"),
        )
        .spawn()
        .await;
    let mut ws = login(&down, "session=bob", Value::Null).await;
    let (closed, frames) = ws.closed().await;
    assert_eq!(closed.code, 1001);
    let last = frames.last().expect("a disconnect frame");
    assert_eq!(
        (&last["code"], &last["reconnect"]),
        (&json!("unavailable"), &json!(true))
    );
}

/// Settings the hooks cannot work with stop the gateway at start with one line each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_hook_settings_fail_fast() {
    let (code, _, err) = crate::run_bin(
        "ws-gateway",
        &[],
        &[
            ("HERALD_JWT_SECRET", crate::TEST_SECRET),
            ("HERALD_PROXY_CONNECT_URL", "ftp://backend/connect"),
            ("HERALD_PROXY_SECRET", "short"),
        ],
    )
    .await;
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("HERALD_PROXY_CONNECT_URL must be an http:// URL"),
        "{err}"
    );
    assert!(
        err.contains("HERALD_PROXY_SECRET must be at least 16 bytes"),
        "{err}"
    );
}
