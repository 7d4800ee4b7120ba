//! ws-gateway end to end: the client protocol, fan-out across gateways, limits,
//! recovery, Redis faults, revocation and shutdown, against real processes.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{
    ADMIN_KEY, Redis, Service, ServiceBuilder, Ws, eventually, http_json, serve_json, token,
    token_with, within,
};

/// A gateway with limits relaxed so tests can open many connections quickly.
fn gateway(redis: &Redis) -> ServiceBuilder {
    ServiceBuilder::new("ws-gateway")
        .redis(redis)
        .env("HERALD_MAX_CONNECTIONS_PER_IP", "1000")
        .env("HERALD_CONNECT_RATE_PER_IP", "1000")
        .env("HERALD_PUBSUB_PROBE_INTERVAL_MS", "300")
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

async fn subscribe(ws: &mut Ws, channel: &str, id: u64) -> Value {
    ws.send(json!({"type":"subscribe","channel":channel,"id":id}))
        .await;
    let v = ws.recv_type("subscribed").await;
    assert_eq!(v["id"], id);
    v
}

async fn broadcast(ws: &mut Ws, channel: &str, message: Value, id: u64) -> Value {
    ws.send(json!({"type":"broadcast","channel":channel,"message":message,"id":id}))
        .await;
    loop {
        let v = ws.recv().await;
        if v["type"] == "ack" || v["type"] == "error" {
            return v;
        }
    }
}

/// The value of an unlabelled metric in a service's `/metrics`.
async fn metric(svc: &Service, name: &str) -> f64 {
    let text = within("metrics", async {
        reqwest::get(format!("{}/metrics", svc.http()))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body")
    })
    .await;
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.parse().ok())?
        })
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_gateway_fanout_and_message_shape() {
    let redis = Redis::start().await;
    let gw1 = gateway(&redis).spawn().await;
    let gw2 = gateway(&redis).spawn().await;
    let t = token("alice", &["news"], &["news"]);
    let (mut a, ok) = Ws::auth(&gw1, &t, &["news"]).await;
    assert_eq!(ok["user_id"], "alice");
    assert_eq!(ok["channels"], json!(["news"]));
    assert!(ok["conn_id"].is_string() && ok["node"].is_string());
    assert_eq!(ok["heartbeat_interval_ms"], 25000);
    let (mut b, _) = Ws::auth(&gw2, &token("bob", &["news"], &[]), &["news"]).await;

    let ack = broadcast(&mut a, "news", json!({"text":"hi","n":[1,2]}), 9).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["id"], 9);
    assert_eq!(ack["offset"], 1);
    for ws in [&mut a, &mut b] {
        let m = ws.recv_type("message").await;
        assert_eq!(m["channel"], "news");
        assert_eq!(m["message"], json!({"text":"hi","n":[1,2]}));
        assert_eq!(m["from_user"], "alice");
        assert_eq!(m["offset"], 1);
        assert_eq!(m["epoch"], ack["epoch"]);
        let ts = m["timestamp"].as_str().expect("timestamp");
        assert!(ts.ends_with('Z') && ts.len() == 24, "{ts}");
    }
    // `null` is a message too.
    broadcast(&mut a, "news", Value::Null, 10).await;
    assert_eq!(b.recv_type("message").await["message"], Value::Null);
    a.recv_type("message").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_design_client_works_unchanged() {
    let redis = Redis::start().await;
    let gw = gateway(&redis).spawn().await;
    let mut ws = Ws::connect(&format!("ws://{}/", gw.addr)).await;
    // The original client: first frame without `type`, then subscribe/broadcast.
    ws.send(json!({"token": token("py", &["chat:*"], &["chat:*"]), "channels": ["chat:lobby"]}))
        .await;
    let ok = ws.recv_type("auth_success").await;
    assert_eq!(ok["channels"], json!(["chat:lobby"]));
    ws.send(json!({"type":"subscribe","channel":"chat:room2"}))
        .await;
    assert_eq!(ws.recv_type("subscribed").await["channel"], "chat:room2");
    ws.send(json!({"type":"broadcast","channel":"chat:lobby","message":{"text":"hello"}}))
        .await;
    let m = ws.recv_type("message").await;
    assert_eq!(m["message"]["text"], "hello");
    ws.send(json!({"type":"unsubscribe","channel":"chat:room2"}))
        .await;
    assert_eq!(ws.recv_type("unsubscribed").await["channel"], "chat:room2");
    // The legacy `user_id` claim is a subject too.
    let legacy =
        token_with(json!({"user_id":"old","exp":now()+60,"iss":"herald-auth","aud":"herald"}));
    let (_ws2, ok) = Ws::auth(&gw, &legacy, &["user:old"]).await;
    assert_eq!(ok["user_id"], "old");
    assert_eq!(ok["channels"], json!(["user:old"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_auth_header_and_query() {
    let redis = Redis::start().await;
    let gw = gateway(&redis).spawn().await;
    let t = token("hq", &["news"], &[]);
    let url = format!("{}?token={t}&channels=news,system", gw.ws());
    let mut ws = Ws::connect(&url).await;
    let ok = ws.recv_type("auth_success").await;
    assert_eq!(ok["channels"], json!(["news", "system"]));
    let auth = format!("Bearer {t}");
    let mut ws = Ws::try_connect(&gw.ws(), &[("authorization", &auth)])
        .await
        .expect("header auth");
    assert_eq!(ws.recv_type("auth_success").await["user_id"], "hq");
    // A bad token at the handshake is refused before the upgrade.
    assert_eq!(
        Ws::try_connect(&format!("{}?token=nope", gw.ws()), &[])
            .await
            .err(),
        Some(401)
    );
    assert_eq!(
        Ws::try_connect(&gw.ws(), &[("authorization", "Bearer x.y.z")])
            .await
            .err(),
        Some(401)
    );
}

/// Every way a first-frame token can be wrong closes with 1008.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failures_close_1008() {
    use base64::Engine;
    let redis = Redis::start().await;
    let gw = gateway(&redis)
        .env("HERALD_AUTH_TIMEOUT_MS", "500")
        .env("HERALD_JWT_LEEWAY_S", "0")
        .spawn()
        .await;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims = json!({"sub":"u","exp":now()+60,"iss":"herald-auth","aud":"herald"});
    let alg_none = format!(
        "{}.{}.",
        b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(claims.to_string())
    );
    let other_secret = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"not-the-secret-at-all"),
    )
    .expect("token");
    let ed = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
        &claims,
        &jsonwebtoken::EncodingKey::from_ed_pem(TEST_ED25519_PEM.as_bytes()).expect("key"),
    )
    .expect("token");
    let bad = [
        ("garbage", "not-a-jwt".to_owned()),
        ("alg none", alg_none),
        ("wrong secret", other_secret),
        ("asymmetric alg on an HS256 gateway", ed),
        (
            "expired",
            token_with(json!({"sub":"u","exp":now()-10,"iss":"herald-auth","aud":"herald"})),
        ),
        (
            "missing exp",
            token_with(json!({"sub":"u","iss":"herald-auth","aud":"herald"})),
        ),
        (
            "nbf in the future",
            token_with(
                json!({"sub":"u","exp":now()+60,"nbf":now()+60,"iss":"herald-auth","aud":"herald"}),
            ),
        ),
        (
            "wrong iss",
            token_with(json!({"sub":"u","exp":now()+60,"iss":"evil","aud":"herald"})),
        ),
        (
            "wrong aud",
            token_with(json!({"sub":"u","exp":now()+60,"iss":"herald-auth","aud":"other"})),
        ),
        (
            "no subject",
            token_with(json!({"exp":now()+60,"iss":"herald-auth","aud":"herald"})),
        ),
    ];
    for (what, t) in bad {
        let mut ws = Ws::connect(&gw.ws()).await;
        ws.send(json!({"type":"auth","token":t})).await;
        let (closed, frames) = ws.closed().await;
        assert_eq!(closed.code, 1008, "{what}");
        assert_eq!(closed.reason, "authentication failed", "{what}");
        assert!(frames.is_empty(), "{what}: {frames:?}");
    }
    // A first frame that is not an auth frame.
    let mut ws = Ws::connect(&gw.ws()).await;
    ws.send(json!({"type":"ping"})).await;
    assert_eq!(ws.closed().await.0.code, 1008);
    // Silence: authentication timeout.
    let mut ws = Ws::connect(&gw.ws()).await;
    let (closed, _) = ws.closed().await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (1008, "authentication timeout")
    );
    // A revoked token.
    let t = token_with(
        json!({"sub":"u","exp":now()+60,"iss":"herald-auth","aud":"herald","jti":"gone"}),
    );
    let mut r = redis.conn().await;
    let _: () = redis::cmd("SET")
        .arg("herald:revoked:gone")
        .arg(1)
        .query_async(&mut r)
        .await
        .expect("set");
    let mut ws = Ws::connect(&gw.ws()).await;
    ws.send(json!({"type":"auth","token":t})).await;
    assert_eq!(ws.closed().await.0.code, 1008);
}

/// A fixed Ed25519 key for tests (generated once with openssl; not a secret).
pub(crate) const TEST_ED25519_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIPufUHCNl0tUVBEe0QpyOaPiJ8g6J3rf93izWyOZL4M8\n-----END PRIVATE KEY-----\n";
/// Its public key, as a JWK `x`.
pub(crate) const TEST_ED25519_X: &str = "zKapNbIGb1JSYfcvyUK8oIhr8d1TpL6Fr9kpfgTrqi8";

/// Serves `body` as JSON at any path on a loopback port until dropped.
/// A gateway in EdDSA mode whose JWKS (key `k1`, [`TEST_ED25519_X`]) comes from a
/// local key server; returns the gateway, the JWKS URL and the key server's task.
async fn eddsa_gateway(redis: &Redis) -> (Service, String, tokio::task::JoinHandle<()>) {
    let jwks = json!({"keys":[{"kty":"OKP","crv":"Ed25519","x":TEST_ED25519_X,"kid":"k1","alg":"EdDSA","use":"sig"}]});
    let (url, server) = serve_json(jwks.to_string()).await;
    let gw = gateway(redis)
        .env("HERALD_JWT_ALG", "EdDSA")
        .env("HERALD_JWKS_URL", &url)
        .spawn()
        .await;
    (gw, url, server)
}

/// EdDSA mode: keys from a JWKS URL; an HMAC token "signed" with the public key
/// (algorithm confusion) and an unknown `kid` are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eddsa_mode_and_algorithm_confusion() {
    let redis = Redis::start().await;
    let (gw, _, server) = eddsa_gateway(&redis).await;
    let claims =
        json!({"sub":"ed","exp":now()+60,"iss":"herald-auth","aud":"herald","channels":["news"]});
    let key = jsonwebtoken::EncodingKey::from_ed_pem(TEST_ED25519_PEM.as_bytes()).expect("key");
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some("k1".to_owned());
    let good = jsonwebtoken::encode(&header, &claims, &key).expect("token");
    let (_ws, ok) = Ws::auth(&gw, &good, &["news"]).await;
    assert_eq!(ok["user_id"], "ed");

    header.kid = Some("unknown".to_owned());
    let unknown_kid = jsonwebtoken::encode(&header, &claims, &key).expect("token");
    let mut hs = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs.kid = Some("k1".to_owned());
    let confused = jsonwebtoken::encode(
        &hs,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(TEST_ED25519_X.as_bytes()),
    )
    .expect("token");
    for (what, t) in [
        ("unknown kid", unknown_kid),
        ("HS256 with the public key", confused),
    ] {
        let mut ws = Ws::connect(&gw.ws()).await;
        ws.send(json!({"token": t})).await;
        assert_eq!(ws.closed().await.0.code, 1008, "{what}");
    }
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_and_every_error_code() {
    let redis = Redis::start().await;
    let gw = gateway(&redis)
        .env("HERALD_MAX_FRAME_BYTES", "1024")
        .spawn()
        .await;
    let t = token("carol", &["news", "chat:*"], &["chat:*"]);
    let (mut ws, ok) = Ws::auth(&gw, &t, &["news", "secret", "user:carol", "user:dave"]).await;
    assert_eq!(ok["channels"], json!(["news", "user:carol"]));
    for ch in ["secret", "user:dave"] {
        let e = ws.recv_type("error").await;
        assert_eq!(
            (e["code"].as_str(), e["channel"].as_str()),
            (Some("forbidden"), Some(ch))
        );
    }
    #[track_caller]
    fn code(v: &Value, code: &str, id: Option<u64>) {
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["code"], code, "{v}");
        assert!(v["message"].is_string(), "{v}");
        match id {
            Some(id) => assert_eq!(v["id"], id, "{v}"),
            None => assert!(v.get("id").is_none(), "{v}"),
        }
    }
    ws.send_text("this is not json").await;
    code(&ws.recv().await, "invalid_json", None);
    ws.send_text("[1,2,3]").await;
    code(&ws.recv().await, "invalid_json", None);
    ws.send(json!({"type":"dance","id":1})).await;
    code(&ws.recv().await, "unsupported_type", Some(1));
    ws.send(json!({"type":"subscribe","id":2})).await;
    code(&ws.recv().await, "bad_request", Some(2));
    ws.send(json!({"type":"subscribe","channel":"bad name!","id":3}))
        .await;
    code(&ws.recv().await, "bad_request", Some(3));
    ws.send(json!({"type":"subscribe","channel":"admin","id":4}))
        .await;
    code(&ws.recv().await, "forbidden", Some(4));
    let e = broadcast(&mut ws, "news", json!(1), 5).await;
    code(&e, "forbidden", Some(5));
    ws.send(json!({"type":"unsubscribe","channel":"chat:x","id":6}))
        .await;
    code(&ws.recv().await, "not_subscribed", Some(6));
    ws.send_text(&format!(
        "{{\"type\":\"ping\",\"pad\":\"{}\"}}",
        "x".repeat(2000)
    ))
    .await;
    code(&ws.recv().await, "too_large", None);
    ws.send(json!({"type":"ping","id":"p1"})).await;
    let pong = ws.recv_type("pong").await;
    assert_eq!(pong["id"], "p1");
    assert!(pong["timestamp"].is_string());
    // Glob permissions allow the chat namespace.
    subscribe(&mut ws, "chat:room:1", 7).await;
    let ack = broadcast(&mut ws, "chat:room:1", json!("x"), 8).await;
    assert_eq!(ack["type"], "ack");
    // The third oversized frame within a minute closes with 1009.
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(2000));
    ws.send_text(&big).await;
    ws.send_text(&big).await;
    let (closed, _) = ws.closed().await;
    assert_eq!(closed.code, 1009);
    // Binary frames close with 1003.
    let (mut ws, _) = Ws::auth(&gw, &t, &[]).await;
    ws.send_raw(tokio_tungstenite::tungstenite::Message::binary(vec![
        1u8, 2, 3,
    ]))
    .await;
    assert_eq!(ws.closed().await.0.code, 1003);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_cap_per_connection() {
    let redis = Redis::start().await;
    let gw = gateway(&redis)
        .env("HERALD_RATE_LIMIT_MESSAGES", "100000")
        .spawn()
        .await;
    let (mut ws, _) = Ws::auth(&gw, &token("many", &["c:*"], &[]), &[]).await;
    for i in 0..128u64 {
        ws.send(json!({"type":"subscribe","channel":format!("c:{i}"),"id":i}))
            .await;
    }
    for _ in 0..128 {
        ws.recv_type("subscribed").await;
    }
    ws.send(json!({"type":"subscribe","channel":"c:129","id":999}))
        .await;
    let e = ws.recv_type("error").await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_u64()),
        (Some("bad_request"), Some(999))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_rate_limit() {
    let redis = Redis::start().await;
    let gw = gateway(&redis)
        .env("HERALD_RATE_LIMIT_MESSAGES", "5")
        .env("HERALD_RATE_LIMIT_WINDOW_MS", "60000")
        .spawn()
        .await;
    let (mut ws, _) = Ws::auth(&gw, &token("fast", &[], &[]), &[]).await;
    for i in 0..5 {
        ws.send(json!({"type":"ping","id":i})).await;
        ws.recv_type("pong").await;
    }
    ws.send(json!({"type":"ping","id":6})).await;
    let e = ws.recv_type("error").await;
    assert_eq!(e["code"], "rate_limited");
    assert_eq!(e["id"], 6, "the refused request's id is echoed");
    assert!(
        e["retry_after_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 0 && ms <= 12_000),
        "{e}"
    );
    // 3x the limit refused within the window closes with 1008.
    for _ in 0..20 {
        ws.send(json!({"type":"ping"})).await;
    }
    let (closed, frames) = ws.closed().await;
    assert_eq!(closed.code, 1008, "{frames:?}");
    assert!(frames.iter().any(|f| f["type"] == "disconnect"));
    assert!(metric(&gw, "herald_ratelimit_hits_total{kind=\"message\"}").await >= 14.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_connection_cap_holds_across_gateways() {
    let redis = Redis::start().await;
    let gw1 = gateway(&redis)
        .env("HERALD_MAX_CONNECTIONS_PER_IP", "3")
        .spawn()
        .await;
    let gw2 = gateway(&redis)
        .env("HERALD_MAX_CONNECTIONS_PER_IP", "3")
        .spawn()
        .await;
    let t = token("ip", &[], &[]);
    let (a, _) = Ws::auth(&gw1, &t, &[]).await;
    let (_b, _) = Ws::auth(&gw1, &t, &[]).await;
    let (_c, _) = Ws::auth(&gw2, &t, &[]).await;
    assert_eq!(Ws::try_connect(&gw2.ws(), &[]).await.err(), Some(429));
    assert_eq!(Ws::try_connect(&gw1.ws(), &[]).await.err(), Some(429));
    // Closing one frees a slot cluster-wide.
    a.close().await;
    let ws = eventually("a freed slot", || async {
        Ws::try_connect(&gw2.ws(), &[]).await.ok()
    })
    .await;
    drop(ws);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_rate_per_ip() {
    let redis = Redis::start().await;
    // Two gateways share the per-IP attempt budget through Redis.
    let gw1 = gateway(&redis)
        .env("HERALD_CONNECT_RATE_PER_IP", "5")
        .spawn()
        .await;
    let gw2 = gateway(&redis)
        .env("HERALD_CONNECT_RATE_PER_IP", "5")
        .spawn()
        .await;
    // Attempts are counted per wall-clock second: start just after one begins.
    let into = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .subsec_millis();
    tokio::time::sleep(Duration::from_millis(u64::from(1000 - into) + 5)).await;
    let mut refused = 0;
    let mut open = Vec::new();
    for i in 0..12 {
        let gw = if i % 2 == 0 { &gw1 } else { &gw2 };
        match Ws::try_connect(&gw.ws(), &[]).await {
            Ok(ws) => open.push(ws),
            Err(status) => {
                assert_eq!(status, 429);
                refused += 1;
            }
        }
    }
    assert!(refused >= 5, "refused {refused} of 12");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_cut_off_and_others_keep_up() {
    let redis = Redis::start().await;
    let gw = gateway(&redis)
        .env("HERALD_OUTBOUND_QUEUE_FRAMES", "32")
        .env("HERALD_RATE_LIMIT_MESSAGES", "100000")
        .spawn()
        .await;
    let t = token("s", &["flood"], &["flood"]);
    let (mut slow, _) = Ws::auth(&gw, &t, &["flood"]).await;
    let (mut fast, _) = Ws::auth(&gw, &t, &["flood"]).await;
    let (mut publisher, _) = Ws::auth(&gw, &t, &[]).await;
    let payload = "x".repeat(32 * 1024);
    let total = 600u64;
    let reader = tokio::spawn(async move {
        let mut last = 0;
        while last < total {
            let m = fast.recv_type("message").await;
            let off = m["offset"].as_u64().expect("offset");
            assert_eq!(
                off,
                last + 1,
                "the fast consumer sees every message in order"
            );
            last = off;
        }
        last
    });
    for i in 0..total {
        publisher
            .send(json!({"type":"broadcast","channel":"flood","message":{"i":i,"pad":payload}}))
            .await;
    }
    assert_eq!(
        within("the fast consumer", reader).await.expect("reader"),
        total
    );
    let (closed, frames) = slow.closed().await;
    assert_eq!(closed.code, 1013);
    let d = frames
        .iter()
        .find(|f| f["type"] == "disconnect")
        .expect("disconnect frame");
    assert_eq!(d["reason"], "slow_consumer");
    assert!(metric(&gw, "herald_slow_consumer_disconnects_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_with_and_without_a_gap() {
    let redis = Redis::start().await;
    let gw = gateway(&redis)
        .env("HERALD_HISTORY_SIZE", "50")
        .env("HERALD_RATE_LIMIT_MESSAGES", "100000")
        .spawn()
        .await;
    let t = token("r", &["news"], &["news"]);
    let (mut a, _) = Ws::auth(&gw, &t, &[]).await;
    let first = subscribe(&mut a, "news", 1).await;
    assert_eq!(first["offset"], 0);
    let epoch = first["epoch"].as_str().expect("epoch").to_owned();
    for i in 1..=5 {
        broadcast(&mut a, "news", json!({"n": i}), 100 + i).await;
        a.recv_type("message").await;
    }
    // A client that saw offset 2 gets 3, 4, 5 and then `recovered:true`.
    let (mut b, _) = Ws::auth(&gw, &t, &[]).await;
    b.send(json!({"type":"subscribe","channel":"news","id":2,"since":{"offset":2,"epoch":epoch}}))
        .await;
    for want in 3..=5 {
        let m = b.recv_type("message").await;
        assert_eq!(
            (m["offset"].as_u64(), m["message"]["n"].as_u64()),
            (Some(want), Some(want))
        );
    }
    let s = b.recv_type("subscribed").await;
    assert_eq!(
        (s["offset"].as_u64(), s["recovered"].as_bool()),
        (Some(5), Some(true))
    );
    // Live delivery continues without duplicates.
    broadcast(&mut a, "news", json!({"n": 6}), 200).await;
    assert_eq!(b.recv_type("message").await["offset"], 6);
    // Nothing missed.
    let (mut c, _) = Ws::auth(&gw, &t, &[]).await;
    c.send(json!({"type":"subscribe","channel":"news","since":{"offset":6,"epoch":epoch}}))
        .await;
    let s = c.recv_type("subscribed").await;
    assert_eq!(
        (s["offset"].as_u64(), s["recovered"].as_bool()),
        (Some(6), Some(true))
    );
    // An epoch we no longer have: nothing replayed, `recovered:false`.
    let (mut d, _) = Ws::auth(&gw, &t, &[]).await;
    d.send(json!({"type":"subscribe","channel":"news","since":{"offset":1,"epoch":"gone"}}))
        .await;
    let s = d.recv_type("subscribed").await;
    assert_eq!(
        (s["offset"].as_u64(), s["recovered"].as_bool()),
        (Some(6), Some(false))
    );
    // A gap older than history: all or nothing, so nothing.
    for i in 0..400 {
        a.send(json!({"type":"broadcast","channel":"news","message":i}))
            .await;
    }
    for _ in 0..400 {
        a.recv_type("message").await;
    }
    let (mut e, _) = Ws::auth(&gw, &t, &[]).await;
    e.send(json!({"type":"subscribe","channel":"news","since":{"offset":1,"epoch":epoch}}))
        .await;
    let s = e.recv_type("subscribed").await;
    assert_eq!(
        (s["offset"].as_u64(), s["recovered"].as_bool()),
        (Some(406), Some(false))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_mid_stream_loses_nothing_after_it() {
    let mut redis = Redis::start().await;
    let gw = gateway(&redis).spawn().await;
    let t = token("rr", &["news"], &["news"]);
    let (mut sub, _) = Ws::auth(&gw, &t, &["news"]).await;
    let (mut publisher, _) = Ws::auth(&gw, &t, &[]).await;
    broadcast(&mut publisher, "news", json!("before"), 1).await;
    assert_eq!(sub.recv_type("message").await["message"], "before");

    redis.kill().await;
    // While Redis is down: the connection stays open and publishes say `unavailable`.
    let e = broadcast(&mut publisher, "news", json!("during"), 2).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("unavailable"))
    );
    publisher.send(json!({"type":"ping","id":3})).await;
    assert_eq!(publisher.recv_type("pong").await["id"], 3);

    redis.restart().await;
    // Publish right away, before the gateway has necessarily resubscribed.
    let mut acks = Vec::new();
    let deadline = tokio::time::Instant::now() + crate::patience();
    for i in 0..5 {
        loop {
            let v = broadcast(&mut publisher, "news", json!({"after": i}), 10 + i).await;
            if v["type"] == "ack" {
                acks.push(v);
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "publishes never recovered: {v}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let epoch = acks[0]["epoch"].clone();
    // The subscriber gets every one of them, in order, from the new epoch.
    for (i, ack) in acks.iter().enumerate() {
        let m = sub.recv_type("message").await;
        assert_eq!(m["message"]["after"], i as u64, "{m}");
        assert_eq!(m["offset"], ack["offset"]);
        assert_eq!(m["epoch"], epoch);
    }
    // And a client recovering from the new epoch's start misses nothing.
    let (mut late, _) = Ws::auth(&gw, &t, &[]).await;
    late.send(json!({"type":"subscribe","channel":"news","since":{"offset":0,"epoch":epoch}}))
        .await;
    for i in 0..5u64 {
        assert_eq!(late.recv_type("message").await["message"]["after"], i);
    }
    assert_eq!(late.recv_type("subscribed").await["recovered"], true);
    assert!(metric(&gw, "herald_pubsub_reconnects_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_and_admin_disconnect_close_connections() {
    let redis = Redis::start().await;
    let gw = gateway(&redis).spawn().await;
    let t = token_with(
        json!({"sub":"v","exp":now()+600,"iss":"herald-auth","aud":"herald","jti":"j-1"}),
    );
    let (mut ws, _) = Ws::auth(&gw, &t, &[]).await;
    let (mut other, _) = Ws::auth(&gw, &token("w", &[], &[]), &[]).await;
    let mut r = redis.conn().await;
    let started = std::time::Instant::now();
    let _: () = redis::cmd("PUBLISH")
        .arg("herald:control")
        .arg(json!({"type":"revoke","jti":"j-1"}).to_string())
        .query_async(&mut r)
        .await
        .expect("publish");
    let (closed, frames) = ws.closed().await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "closed within a second"
    );
    assert_eq!(closed.code, 1008);
    assert_eq!(frames.last().expect("disconnect")["code"], "token_revoked");
    // Others are untouched.
    other.send(json!({"type":"ping","id":1})).await;
    other.recv_type("pong").await;
    // Disconnect a user by name.
    let _: () = redis::cmd("PUBLISH")
        .arg("herald:control")
        .arg(json!({"type":"disconnect_user","user_id":"w"}).to_string())
        .query_async(&mut r)
        .await
        .expect("publish");
    assert_eq!(other.closed().await.0.code, 1008);
    let _ = ADMIN_KEY;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_expiry_and_heartbeats() {
    let redis = Redis::start().await;
    let gw = gateway(&redis)
        .env("HERALD_JWT_LEEWAY_S", "0")
        .env("HERALD_HEARTBEAT_INTERVAL_MS", "300")
        .spawn()
        .await;
    let t = token_with(json!({"sub":"x","exp":now()+2,"iss":"herald-auth","aud":"herald"}));
    let (mut ws, ok) = Ws::auth(&gw, &t, &[]).await;
    assert_eq!(ok["heartbeat_interval_ms"], 300);
    let (closed, frames) = ws.closed().await;
    assert_eq!(closed.code, 1008);
    assert!(
        frames.iter().any(|f| f["type"] == "heartbeat"),
        "{frames:?}"
    );
    assert_eq!(frames.last().expect("disconnect")["code"], "token_expired");
    // A client that never answers pings is dropped after two intervals.
    let (_silent, _) = Ws::auth(&gw, &token("quiet", &[], &[]), &[]).await;
    eventually("the silent connection to be reaped", || async {
        (metric(&gw, "herald_connections").await == 0.0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_says_goodbye_and_deregisters() {
    let redis = Redis::start().await;
    let mut gw = gateway(&redis).spawn().await;
    let (mut ws, ok) = Ws::auth(&gw, &token("g", &[], &[]), &[]).await;
    let node = ok["node"].as_str().expect("node").to_owned();
    let mut r = redis.conn().await;
    eventually("the node to beat", || {
        let (mut r, node) = (r.clone(), node.clone());
        async move {
            let score: Option<u64> = redis::cmd("ZSCORE")
                .arg("herald:nodes")
                .arg(node)
                .query_async(&mut r)
                .await
                .ok()?;
            score
        }
    })
    .await;
    let (code, (closed, frames)) = tokio::join!(gw.terminate(), ws.closed());
    assert_eq!(code, Some(0));
    assert_eq!((closed.code, closed.reason.as_str()), (1001, "going away"));
    let d = frames.last().expect("disconnect");
    assert_eq!(
        (d["type"].as_str(), d["reconnect"].as_bool()),
        (Some("disconnect"), Some(true))
    );
    let score: Option<u64> = redis::cmd("ZSCORE")
        .arg("herald:nodes")
        .arg(&node)
        .query_async(&mut r)
        .await
        .expect("zscore");
    assert_eq!(score, None, "deregistered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_fails_fast_with_one_line() {
    let (code, _, err) = crate::run_bin(
        "ws-gateway",
        &[],
        &[("HERALD_JWT_SECRET", ""), ("HERALD_DEV", "0")],
    )
    .await;
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("HERALD_JWT_SECRET"), "{err}");
    let (code, _, err) = crate::run_bin(
        "ws-gateway",
        &["--redis-url", "redis://127.0.0.1:1"],
        &[("HERALD_JWT_SECRET", crate::TEST_SECRET)],
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("unreachable"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let (code, _, err) = crate::run_bin(
        "ws-gateway",
        &["--redis-url", "http://x"],
        &[("HERALD_JWT_SECRET", crate::TEST_SECRET)],
    )
    .await;
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("HERALD_REDIS_URL"), "{err}");
    let _ = http_json;
}

/// A Pub/Sub connection that stays up but delivers nothing is detected by the
/// gateway's end-to-end probe and replaced, and what was published meanwhile is
/// delivered from history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wedged_pubsub_is_detected_and_nothing_is_lost() {
    let redis = Redis::start().await;
    let proxy = crate::WedgeProxy::start(redis.port).await;
    let gw = gateway(&redis)
        .env("HERALD_REDIS_URL", &proxy.url())
        .spawn()
        .await;
    let t = token("wedge", &["news"], &["news"]);
    let (mut sub, _) = Ws::auth(&gw, &t, &["news"]).await;
    let (mut publisher, _) = Ws::auth(&gw, &t, &[]).await;
    broadcast(&mut publisher, "news", json!(0), 1).await;
    assert_eq!(sub.recv_type("message").await["message"], 0);
    assert!(proxy.wedge_subscribers() >= 1);
    for i in 1..=3 {
        let ack = broadcast(&mut publisher, "news", json!(i), 10 + i).await;
        assert_eq!(ack["type"], "ack");
    }
    for i in 1..=3 {
        let m = sub.recv_type("message").await;
        assert_eq!(m["message"], i, "{m}");
    }
    assert!(metric(&gw, "herald_pubsub_reconnects_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batching_clients_get_batch_messages() {
    let redis = Redis::start().await;
    let gw = gateway(&redis)
        .env("HERALD_BATCH_WINDOW_MS", "50")
        .env("HERALD_RATE_LIMIT_MESSAGES", "100000")
        .spawn()
        .await;
    let t = token("b", &["news"], &["news"]);
    let mut batcher = Ws::connect(&gw.ws()).await;
    batcher
        .send(json!({"type":"auth","token":t,"channels":["news"],"batch":true}))
        .await;
    batcher.recv_type("auth_success").await;
    let (mut publisher, _) = Ws::auth(&gw, &t, &[]).await;
    for i in 0..10 {
        publisher
            .send(json!({"type":"broadcast","channel":"news","message":i}))
            .await;
    }
    let mut seen = Vec::new();
    let mut batches = 0;
    while seen.len() < 10 {
        let v = batcher.recv().await;
        match v["type"].as_str() {
            Some("batch_messages") => {
                batches += 1;
                let msgs = v["messages"].as_array().expect("messages");
                assert_eq!(v["count"].as_u64(), Some(msgs.len() as u64));
                assert!(msgs.len() <= 100);
                seen.extend(msgs.iter().map(|m| m["message"].as_u64().expect("n")));
            }
            Some("message") => seen.push(v["message"].as_u64().expect("n")),
            other => panic!("unexpected frame {other:?}: {v}"),
        }
    }
    assert_eq!(seen, (0..10).collect::<Vec<_>>());
    assert!(
        batches >= 1,
        "ten quick messages within a 50 ms window come batched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_capacity_and_origin_checks() {
    let redis = Redis::start().await;
    let gw = gateway(&redis)
        .env("HERALD_MAX_CONNECTIONS", "2")
        .env("HERALD_ALLOWED_ORIGINS", "https://app.example")
        .spawn()
        .await;
    let t = token("cap", &[], &[]);
    let (_a, _) = Ws::auth(&gw, &t, &[]).await;
    let (_b, _) = Ws::auth(&gw, &t, &[]).await;
    assert_eq!(Ws::try_connect(&gw.ws(), &[]).await.err(), Some(503));
    drop((_a, _b));
    let gw2 = gateway(&redis)
        .env("HERALD_ALLOWED_ORIGINS", "https://app.example")
        .spawn()
        .await;
    assert_eq!(
        Ws::try_connect(&gw2.ws(), &[("origin", "https://evil.example")])
            .await
            .err(),
        Some(403)
    );
    let mut ok = Ws::try_connect(&gw2.ws(), &[("origin", "https://app.example")])
        .await
        .expect("allowed origin");
    ok.send(json!({"token": t})).await;
    ok.recv_type("auth_success").await;
    // Without an allow-list, browsers (requests with Origin) are refused outside dev mode.
    let gw3 = gateway(&redis).spawn().await;
    assert_eq!(
        Ws::try_connect(&gw3.ws(), &[("origin", "https://app.example")])
            .await
            .err(),
        Some(403)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_limits_oversized_heads_and_slow_clients() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let redis = Redis::start().await;
    let gw = gateway(&redis)
        .env("HERALD_HANDSHAKE_TIMEOUT_MS", "500")
        .spawn()
        .await;
    let head = |extra: &str| {
        format!(
            "GET /ws?{extra} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        )
    };
    // Headers over 16 KiB: 431 before any upgrade.
    let mut s = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let big = format!("{}X-Pad: {}\r\n\r\n", head(""), "a".repeat(20 * 1024));
    let _ = s.write_all(big.as_bytes()).await;
    let mut buf = vec![0u8; 256];
    let n = within("the 431 answer", s.read(&mut buf))
        .await
        .expect("read");
    let status = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(status.starts_with("HTTP/1.1 431"), "{status}");
    // So is a 20 KiB query string.
    let mut s = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let long = format!("{}\r\n", head(&"q".repeat(20 * 1024)));
    let _ = s.write_all(long.as_bytes()).await;
    let n = within("the answer to a long query", s.read(&mut buf))
        .await
        .expect("read");
    let status = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        status.starts_with("HTTP/1.1 431") || status.starts_with("HTTP/1.1 414"),
        "{status}"
    );
    // A client that never finishes its request is dropped after the handshake timeout.
    let mut s = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    s.write_all(head("").as_bytes()).await.expect("write");
    let started = std::time::Instant::now();
    let n = within("the slow client to be dropped", s.read(&mut buf))
        .await
        .unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// The JWKS endpoint going away or hanging: keys already fetched keep working, an
/// unknown `kid` is refused, and other clients are served while a fetch hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_outage_keeps_cached_keys_and_never_blocks() {
    let redis = Redis::start().await;
    let (gw, url, server) = eddsa_gateway(&redis).await;
    let key = jsonwebtoken::EncodingKey::from_ed_pem(TEST_ED25519_PEM.as_bytes()).expect("key");
    let sign = |kid: &str| {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some(kid.to_owned());
        let claims = json!({"sub":"ed","exp":now()+60,"iss":"herald-auth","aud":"herald"});
        jsonwebtoken::encode(&header, &claims, &key).expect("token")
    };
    let (_first, _) = Ws::auth(&gw, &sign("k1"), &[]).await;
    // The key server now accepts connections and never answers.
    server.abort();
    let _ = server.await;
    let addr = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .expect("addr")
        .to_owned();
    let hang = tokio::net::TcpListener::bind(&addr)
        .await
        .expect("rebind the JWKS port");
    let hanging = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hang.accept().await {
            held.push(s);
        }
    });
    // An unknown kid makes the gateway refetch (at most once per 5 s, so wait that
    // out), which hangs until the fetch timeout...
    tokio::time::sleep(Duration::from_millis(5_200)).await;
    let mut unknown = Ws::connect(&gw.ws()).await;
    unknown.send(json!({"token": sign("k2")})).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...while clients with the cached key are served at once.
    let started = std::time::Instant::now();
    let (_second, ok) = Ws::auth(&gw, &sign("k1"), &[]).await;
    assert_eq!(ok["user_id"], "ed", "the cached key still verifies");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let (closed, _) = unknown.closed().await;
    assert_eq!(
        closed.code, 1008,
        "the unknown kid is refused once the fetch gives up"
    );
    hanging.abort();
}

/// A client offering the `herald.v1` subprotocol gets handshake refusals as a
/// `disconnect` frame and close code 4000 + the status; others keep the HTTP status, and
/// an accepted `herald.v1` connection has the subprotocol echoed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_v1_clients_get_refusals_as_close_codes() {
    let redis = Redis::start().await;
    let gw = ServiceBuilder::new("ws-gateway")
        .redis(&redis)
        .env("HERALD_ALLOWED_ORIGINS", "https://app.example")
        .env("HERALD_MAX_CONNECTIONS_PER_IP", "1")
        .spawn()
        .await;
    let v1 = ("sec-websocket-protocol", "herald.v1");

    // An origin not allowed: plain 403, or 4403 for herald.v1, final.
    let evil = ("origin", "https://evil.example");
    assert_eq!(Ws::try_connect(&gw.ws(), &[evil]).await.err(), Some(403));
    let mut ws = Ws::try_connect(&gw.ws(), &[evil, v1])
        .await
        .expect("the upgrade completes");
    let (closed, frames) = ws.closed().await;
    assert_eq!((closed.code, closed.reason.as_str()), (4403, "forbidden"));
    assert_eq!(
        frames,
        [
            json!({"type":"disconnect","code":"forbidden","reason":"origin not allowed","reconnect":false})
        ]
    );

    // A refused token in the URL: 4401.
    let mut ws = Ws::try_connect(&format!("{}?token=not-a-jwt", gw.ws()), &[v1])
        .await
        .expect("the upgrade completes");
    let (closed, frames) = ws.closed().await;
    assert_eq!(closed.code, 4401);
    assert_eq!(frames[0]["code"], "authentication_failed");
    assert_eq!(frames[0]["reconnect"], false);

    // Accepted: the subprotocol is echoed (browsers fail the socket otherwise).
    let ok = ("origin", "https://app.example");
    let t = token("ann", &["news"], &[]);
    let (inner, resp) = {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = gw.ws().into_client_request().expect("request");
        req.headers_mut().insert("origin", ok.1.parse().unwrap());
        req.headers_mut().insert(v1.0, v1.1.parse().unwrap());
        within("handshake", tokio_tungstenite::connect_async(req))
            .await
            .expect("accepted")
    };
    assert_eq!(resp.headers()["sec-websocket-protocol"], "herald.v1");
    let mut first = Ws { inner };
    first.send(json!({"type":"auth","token":t})).await;
    first.recv_type("auth_success").await;

    // Over the per-IP limit (1): temporary, with a retry time.
    let mut ws = Ws::try_connect(&gw.ws(), &[ok, v1])
        .await
        .expect("the upgrade completes");
    let (closed, frames) = ws.closed().await;
    assert_eq!(closed.code, 4429);
    assert_eq!(frames[0]["code"], "rate_limited");
    assert_eq!(frames[0]["reconnect"], true);
    assert_eq!(frames[0]["retry_after_ms"], 1000);
    assert_eq!(Ws::try_connect(&gw.ws(), &[ok]).await.err(), Some(429));
}
