//! Limits end to end: refused connections do not hold per-IP slots (while still
//! counting as attempts), and messages nested too deep are refused on the WebSocket
//! and HTTP publish paths before anyone receives them.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::{API_KEY, Redis, Service, ServiceBuilder, Store, Ws, http_json, token, within};

/// The nesting limit of published messages (herald-proto's `MAX_MESSAGE_DEPTH`).
const MAX_DEPTH: usize = 64;

/// A gateway whose per-IP connection cap is `cap`, attempts per second `rate`.
async fn gateway(store: &impl Store, cap: u32, rate: u32) -> Service {
    ServiceBuilder::new("ws-gateway")
        .on(store)
        .env("HERALD_MAX_CONNECTIONS_PER_IP", &cap.to_string())
        .env("HERALD_CONNECT_RATE_PER_IP", &rate.to_string())
        .env("HERALD_MAX_FRAME_BYTES", "524288")
        .spawn()
        .await
}

/// A WebSocket handshake made by hand, to read the refusal's JSON body.
async fn handshake(url: &str, bearer: Option<&str>) -> (u16, Value) {
    let url = url.replacen("ws://", "http://", 1);
    let mut req = reqwest::Client::new()
        .get(url)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let resp = within("a handshake", req.send()).await.expect("handshake");
    let status = resp.status().as_u16();
    if status == 101 {
        return (status, Value::Null);
    }
    let body = within("the refusal", resp.text()).await.unwrap_or_default();
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// A token signed with a secret the gateways do not know.
fn forged() -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub":"x","exp":jsonwebtoken::get_current_timestamp() + 600}),
        &jsonwebtoken::EncodingKey::from_secret(b"not-the-cluster-secret"),
    )
    .expect("forge")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_do_not_hold_per_ip_slots() {
    per_ip_slots_across_gateways(&Redis::start().await).await;
}

/// Two gateways share each address's connection cap, and refusals hold no slot.
pub(super) async fn per_ip_slots_across_gateways(store: &impl Store) {
    // Two connections per address across the cluster; attempts are not the limit here.
    let gws = [gateway(store, 2, 1000).await, gateway(store, 2, 1000).await];
    let bad = forged();
    // Handshakes refused with 401, by query and by header, alternating gateways.
    for i in 0..12 {
        let gw = &gws[i % 2];
        let (status, body) = if i % 4 < 2 {
            handshake(&format!("{}?token={bad}", gw.ws()), None).await
        } else {
            handshake(&gw.ws(), Some(&bad)).await
        };
        assert_eq!(status, 401, "attempt {i}: {body}");
    }
    // Connections refused at their first frame (closed 1008), alternating too.
    for i in 0..6 {
        let mut ws = Ws::connect(&gws[i % 2].ws()).await;
        ws.send(json!({"type":"auth","token":bad})).await;
        let (closed, _) = ws.closed().await;
        assert_eq!(closed.code, 1008, "first-frame attempt {i}");
    }
    // At once, valid connections get both slots, one on each gateway...
    let t = token("ip", &["news"], &[]);
    let mut a = Ws::try_connect(&format!("{}?token={t}", gws[0].ws()), &[])
        .await
        .expect("a valid connection after refused ones (query)");
    a.recv_type("auth_success").await;
    let mut b = Ws::try_connect(&gws[1].ws(), &[("authorization", &format!("Bearer {t}"))])
        .await
        .expect("a valid connection after refused ones (header)");
    b.recv_type("auth_success").await;
    // ...and the cap still holds for held connections, with its own message.
    let (status, body) = handshake(&format!("{}?token={t}", gws[0].ws()), None).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(
        body["error"]["message"], "too many connections from this address",
        "{body}"
    );
    // A refusal while the cap is reached does not take anything either: closing one
    // connection frees exactly one slot.
    let (status, _) = handshake(&format!("{}?token={bad}", gws[1].ws()), None).await;
    assert_eq!(status, 429);
    a.close().await;
    let c = crate::eventually("the freed slot", || async {
        Ws::try_connect(&format!("{}?token={t}", gws[1].ws()), &[])
            .await
            .ok()
    })
    .await;
    let (status, _) = handshake(&format!("{}?token={t}", gws[0].ws()), None).await;
    assert_eq!(status, 429);
    drop((b, c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_still_count_as_attempts() {
    let redis = Redis::start().await;
    let rate = 4;
    let gws = [
        gateway(&redis, 2, rate).await,
        gateway(&redis, 2, rate).await,
    ];
    let bad = forged();
    // Attempts are counted per wall-clock second, across gateways: 2 × rate + 1
    // quick attempts span at most two seconds, so one of them must be refused for
    // its rate, with the rate's own message (not the connection cap's).
    let mut statuses = Vec::new();
    let mut rate_refusal = None;
    for i in 0..(2 * rate + 1) as usize {
        let (status, body) = handshake(&format!("{}?token={bad}", gws[i % 2].ws()), None).await;
        statuses.push(status);
        if status == 429 {
            rate_refusal = Some(body);
            break;
        }
        assert_eq!(status, 401, "attempt {i}: {body}");
    }
    let body = rate_refusal.unwrap_or_else(|| panic!("never refused for rate: {statuses:?}"));
    assert_eq!(
        body["error"]["message"], "too many connection attempts from this address",
        "{body}"
    );
}

/// `n` arrays nested in each other around a string full of brackets.
fn nested(n: usize) -> String {
    format!("{}\"]]}}{{\\\"[\"{}", "[".repeat(n), "]".repeat(n))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_nested_too_deep_are_refused_and_never_delivered() {
    let redis = Redis::start().await;
    let gw = gateway(&redis, 100, 1000).await;
    let bc = ServiceBuilder::new("broadcaster")
        .redis(&redis)
        .spawn()
        .await;
    let (mut sub, _) = Ws::auth(&gw, &token("sub", &["deep"], &[]), &["deep"]).await;
    let (mut publisher, _) = Ws::auth(&gw, &token("pub", &[], &["deep"]), &[]).await;

    // The WebSocket path: a bad_request error frame carrying the request's id.
    for (id, depth) in [(1, MAX_DEPTH + 1), (2, 100_000)] {
        let frame = format!(
            r#"{{"type":"broadcast","channel":"deep","id":{id},"message":{}}}"#,
            nested(depth)
        );
        publisher.send_text(&frame).await;
        let err = publisher.recv_type("error").await;
        assert_eq!(err["code"], "bad_request", "{err}");
        assert_eq!(err["id"], id, "{err}");
        assert!(
            err["message"].as_str().unwrap_or_default().contains("64"),
            "{err}"
        );
    }
    // The HTTP path: the API's 422 for an out-of-range value, on every publish endpoint.
    for depth in [MAX_DEPTH + 1, 100_000] {
        let deep = nested(depth);
        for (path, body) in [
            (
                "/v1/publish",
                format!(r#"{{"channel":"deep","message":{deep}}}"#),
            ),
            (
                "/v1/broadcast",
                format!(r#"{{"channels":["deep"],"message":{deep}}}"#),
            ),
            ("/v1/system", format!(r#"{{"content":{deep}}}"#)),
            (
                "/v1/user-messages",
                format!(r#"{{"user_id":"u","target_channel":"deep","content":{deep}}}"#),
            ),
        ] {
            let resp = within(
                "a deep publish",
                reqwest::Client::new()
                    .post(format!("{}{path}", bc.http()))
                    .bearer_auth(API_KEY)
                    .body(body)
                    .send(),
            )
            .await
            .expect("publish");
            let status = resp.status().as_u16();
            let v: Value =
                serde_json::from_str(&resp.text().await.unwrap_or_default()).unwrap_or(Value::Null);
            assert_eq!(status, 422, "{path} at depth {depth}: {v}");
            assert_eq!(v["error"]["code"], "invalid_request", "{v}");
        }
    }
    // The subscriber got none of it.
    assert_eq!(sub.recv_within(Duration::from_millis(500)).await, None);

    // Exactly the limit passes on both paths, byte for byte.
    let ok = nested(MAX_DEPTH);
    publisher
        .send_text(&format!(
            r#"{{"type":"broadcast","channel":"deep","id":3,"message":{ok}}}"#
        ))
        .await;
    assert_eq!(publisher.recv_type("ack").await["id"], 3);
    let m = sub.recv_type("message").await;
    assert_eq!(
        m["message"],
        serde_json::from_str::<Value>(&ok).expect("json")
    );
    let (status, v) = http_json(
        Method::POST,
        &format!("{}/v1/publish", bc.http()),
        Some(API_KEY),
        Some(json!({"channel":"deep","message":serde_json::from_str::<Value>(&ok).expect("json")})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let m = sub.recv_type("message").await;
    assert_eq!(
        m["message"],
        serde_json::from_str::<Value>(&ok).expect("json")
    );
}
