//! The application's backend acting on a user's live connections across gateways
//! (broadcaster `/v1/subscribe`, `/v1/unsubscribe`, `/v1/disconnect`), and the
//! personal channel every connection can be subscribed to at login
//! (`HERALD_USER_CHANNEL=1`), on both engines; the legacy `user_messages` bridge
//! reaching it on Redis.

use reqwest::Method;
use serde_json::{Value, json};

use super::gateway::{broadcast, gateway};
use crate::{API_KEY, Backend, Redis, Service, ServiceBuilder, Ws, eventually, http_json, token};

/// POSTs `body` to the broadcaster's `path`; returns (status, body).
async fn post(bc: &Service, path: &str, body: Value) -> (u16, Value) {
    http_json(
        Method::POST,
        &format!("{}{path}", bc.http()),
        Some(API_KEY),
        Some(body),
    )
    .await
}

/// Publishes `n` on `channel` through the broadcaster; returns the offset.
async fn publish(bc: &Service, channel: &str, n: u64) -> Value {
    let (status, v) = post(
        bc,
        "/v1/publish",
        json!({"channel":channel,"message":{"n":n}}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v
}

pub(super) async fn the_backend_subscribes_unsubscribes_and_disconnects_a_user_everywhere(
    backend: Backend,
) {
    let gw1 = gateway(&backend).spawn().await;
    let gw2 = gateway(&backend).spawn().await;
    let bc = ServiceBuilder::new("broadcaster")
        .on(&backend)
        .spawn()
        .await;
    // Alice may not subscribe to `secret:1` herself; the backend may put her there.
    let alice_t = token("alice", &["news"], &[]);
    let (mut a1, _) = Ws::auth(&gw1, &alice_t, &[]).await;
    let (mut a2, _) = Ws::auth(&gw2, &alice_t, &[]).await;
    let (mut bob, _) = Ws::auth(&gw2, &token("bob", &["secret:*"], &[]), &["secret:1"]).await;
    let first = publish(&bc, "secret:1", 1).await;
    assert_eq!(bob.recv_type("message").await["message"]["n"], 1);
    let epoch = first["epoch"].as_str().expect("epoch").to_owned();
    for n in 2..=3 {
        publish(&bc, "secret:1", n).await;
        assert_eq!(bob.recv_type("message").await["message"]["n"], n);
    }

    // Subscribed on both gateways, recovering after offset 1: 2 and 3, then
    // `subscribed` saying the backend did it.
    let (status, v) = post(
        &bc,
        "/v1/subscribe",
        json!({"user_id":"alice","channel":"secret:1","since":{"offset":1,"epoch":epoch}}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v, json!({"affected":2,"gateways":2,"complete":true}));
    for ws in [&mut a1, &mut a2] {
        for n in 2..=3 {
            assert_eq!(ws.recv_type("message").await["message"]["n"], n);
        }
        let s = ws.recv_type("subscribed").await;
        assert_eq!(
            s,
            json!({"type":"subscribed","channel":"secret:1","offset":3,"epoch":epoch,
                   "recovered":true,"server":true})
        );
    }
    publish(&bc, "secret:1", 4).await;
    for ws in [&mut a1, &mut a2, &mut bob] {
        assert_eq!(ws.recv_type("message").await["message"]["n"], 4);
    }
    // The client may renew (recover) a subscription the backend made.
    a1.send(
        json!({"type":"subscribe","channel":"secret:1","since":{"offset":4,"epoch":epoch},"id":5}),
    )
    .await;
    let s = a1.recv_type("subscribed").await;
    assert_eq!(
        (&s["id"], &s["recovered"]),
        (&json!(5), &json!(true)),
        "{s}"
    );
    assert!(s.get("server").is_none(), "{s}");

    // Unsubscribed everywhere: no more messages.
    let (status, v) = post(
        &bc,
        "/v1/unsubscribe",
        json!({"user_id":"alice","channel":"secret:1"}),
    )
    .await;
    assert_eq!(
        (status, v),
        (200, json!({"affected":2,"gateways":2,"complete":true}))
    );
    for ws in [&mut a1, &mut a2] {
        let u = ws.recv_type("unsubscribed").await;
        assert_eq!(
            u,
            json!({"type":"unsubscribed","channel":"secret:1","server":true})
        );
    }
    publish(&bc, "secret:1", 5).await;
    assert_eq!(bob.recv_type("message").await["message"]["n"], 5);
    for ws in [&mut a1, &mut a2] {
        assert!(
            ws.recv_within(std::time::Duration::from_millis(300))
                .await
                .is_none()
        );
    }

    // Bad requests are refused; a user with no connections affects none.
    for (path, body) in [
        ("/v1/subscribe", json!({"user_id":"alice","channel":"a b"})),
        ("/v1/subscribe", json!({"user_id":"","channel":"news"})),
        ("/v1/unsubscribe", json!({"user_id":"alice"})),
        ("/v1/disconnect", json!({"user_id":"alice","code":"Not OK"})),
        (
            "/v1/disconnect",
            json!({"user_id":"alice","reason":"x".repeat(124)}),
        ),
    ] {
        let (status, e) = post(&bc, path, body.clone()).await;
        assert_eq!(status, 422, "{path} {body} → {e}");
    }
    let (status, v) = post(&bc, "/v1/disconnect", json!({"user_id":"nobody"})).await;
    assert_eq!(
        (status, v),
        (200, json!({"affected":0,"gateways":2,"complete":true}))
    );

    // Disconnected everywhere with the backend's code and reason.
    let (status, v) = post(
        &bc,
        "/v1/disconnect",
        json!({"user_id":"alice","code":"banned","reason":"you were banned"}),
    )
    .await;
    assert_eq!(
        (status, v),
        (200, json!({"affected":2,"gateways":2,"complete":true}))
    );
    for ws in [&mut a1, &mut a2] {
        let (closed, frames) = ws.closed().await;
        assert_eq!(
            (closed.code, closed.reason.as_str()),
            (1008, "you were banned")
        );
        assert_eq!(
            frames.last(),
            Some(
                &json!({"type":"disconnect","code":"banned","reason":"you were banned",
                         "reconnect":false})
            )
        );
    }
    // Without a code: `server_disconnect`; `reconnect` is the backend's to say.
    let (mut b2, _) = Ws::auth(&gw1, &token("bob", &[], &[]), &[]).await;
    let (_, v) = post(
        &bc,
        "/v1/disconnect",
        json!({"user_id":"bob","reconnect":true}),
    )
    .await;
    assert_eq!(v["affected"], 2);
    for ws in [&mut bob, &mut b2] {
        let (closed, frames) = ws.closed().await;
        assert_eq!(closed.code, 1001);
        let last = frames.last().expect("a disconnect frame");
        assert_eq!(
            (&last["code"], &last["reconnect"]),
            (&json!("server_disconnect"), &json!(true))
        );
    }
}

async fn the_personal_channel_reaches_a_user_wherever_connected(backend: Backend) {
    let gw = gateway(&backend)
        .env("HERALD_USER_CHANNEL", "1")
        .spawn()
        .await;
    let bc = ServiceBuilder::new("broadcaster")
        .on(&backend)
        .spawn()
        .await;
    let (mut carol, ok) = Ws::auth(&gw, &token("carol", &["news"], &[]), &["news"]).await;
    assert_eq!(ok["channels"], json!(["news"]), "{ok}");
    let s = carol.recv_type("subscribed").await;
    assert_eq!(
        (&s["channel"], &s["server"], &s["offset"]),
        (&json!("user:carol"), &json!(true), &json!(0)),
        "{s}"
    );
    // The backend needs no target: the user's channel.
    let (status, v) = post(
        &bc,
        "/v1/user-messages",
        json!({"user_id":"carol","content":{"text":"your order shipped"}}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let m = carol.recv_type("user_message").await;
    assert_eq!(
        (&m["channel"], &m["content"]["text"]),
        (&json!("user:carol"), &json!("your order shipped"))
    );
    // Asked for at login already: subscribed once, no second frame.
    let (mut dave, _) = Ws::auth(&gw, &token("dave", &[], &[]), &["user:dave"]).await;
    assert!(
        dave.recv_within(std::time::Duration::from_millis(300))
            .await
            .is_none()
    );
    // Without the setting, nobody is subscribed to anything unasked.
    let plain = gateway(&backend).spawn().await;
    let (mut erin, _) = Ws::auth(&plain, &token("erin", &[], &["x"]), &[]).await;
    let ack = broadcast(&mut erin, "x", json!(1), 1).await;
    assert_eq!(ack["type"], "ack", "nothing came before the ack: {ack}");
}

crate::both_engines!(
    the_backend_subscribes_unsubscribes_and_disconnects_a_user_everywhere,
    the_personal_channel_reaches_a_user_wherever_connected,
);

/// The original design's `user_messages` Redis channel without a `target_channel`
/// reaches the user's personal channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_user_messages_reach_the_personal_channel() {
    let redis = Redis::start().await;
    let gw = gateway(&redis)
        .env("HERALD_USER_CHANNEL", "1")
        .spawn()
        .await;
    let _bc = ServiceBuilder::new("broadcaster")
        .redis(&redis)
        .spawn()
        .await;
    let (mut frank, _) = Ws::auth(&gw, &token("frank", &[], &[]), &[]).await;
    frank.recv_type("subscribed").await;
    let mut r = redis.conn().await;
    let payload = json!({"user_id":"frank","content":"hello from the old system"}).to_string();
    // The bridge may still be connecting: publish until it is listening.
    eventually("the bridge to listen", || {
        let (mut r, payload) = (r.clone(), payload.clone());
        async move {
            let n: u64 = redis::cmd("PUBLISH")
                .arg("user_messages")
                .arg(payload)
                .query_async(&mut r)
                .await
                .unwrap_or(0);
            (n > 0).then_some(())
        }
    })
    .await;
    let _ = &mut r;
    let m = frank.recv_type("user_message").await;
    assert_eq!(
        (&m["channel"], &m["content"]),
        (&json!("user:frank"), &json!("hello from the old system"))
    );
}
