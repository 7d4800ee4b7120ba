//! auth-svc under misuse: credentials that must not reveal which part was wrong,
//! throttled logins, refresh-token rotation with reuse detection, and revocation.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use jsonwebtoken::Algorithm;
use reqwest::Method;
use serde_json::{Value, json};

use super::auth::{add_user, auth_svc, decode, login, metrics, raw, refresh};
use crate::{ADMIN_KEY, Backend, Redis, Service, ServiceBuilder, eventually, http_json, within};

async fn wrong_password_and_unknown_user_look_the_same(backend: Backend) {
    let svc = auth_svc(&backend).await;
    add_user(&svc, "carol", "right-password", &["news"], &[]).await;
    let (s1, b1) = login(&svc, "carol", "wrong").await;
    let (s2, b2) = login(&svc, "nobody", "wrong").await;
    assert_eq!(s1, 401);
    assert_eq!((s1, &b1), (s2, &b2));
    assert_eq!(b1["error"]["code"], "invalid_credentials");

    // Same timing: the unknown user also pays for a full Argon2 verification.
    // Medians of a few tries, with a wide margin for a busy machine.
    async fn median(svc: &Service, user: &str) -> Duration {
        let mut times = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            let (s, _) = login(svc, user, "wrong").await;
            assert_eq!(s, 401);
            times.push(t.elapsed());
        }
        times.sort();
        times[1]
    }
    let known = median(&svc, "carol").await;
    let unknown = median(&svc, "nobody2").await;
    assert!(
        unknown * 3 >= known && known * 3 >= unknown,
        "wrong password took {known:?}, unknown user {unknown:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_throttling() {
    let redis = Redis::start().await;
    let svc = auth_svc(&redis).await;
    add_user(&svc, "dave", "right-password", &[], &[]).await;
    for _ in 0..5 {
        let (s, b) = login(&svc, "dave", "wrong").await;
        assert_eq!(s, 401, "{b}");
    }
    // The sixth attempt is refused even with the right password.
    let url = format!("{}/v1/token", svc.http());
    let body = json!({"username":"dave","password":"right-password"}).to_string();
    let (s, retry, b) = raw(Method::POST, &url, None, &body).await;
    assert_eq!(s, 429, "{b}");
    assert_eq!(b["error"]["code"], "rate_limited");
    let retry: u64 = retry.and_then(|r| r.parse().ok()).expect("Retry-After");
    assert!((1..=900).contains(&retry), "{retry}");
    // Another user from the same IP is not affected (the IP limit is 50).
    add_user(&svc, "erin", "right-password", &[], &[]).await;
    let (s, _) = login(&svc, "erin", "right-password").await;
    assert_eq!(s, 200);
    let m = metrics(&svc).await;
    assert!(
        m.contains("herald_auth_failures_total{reason=\"throttled\"} 1"),
        "{m}"
    );
    let mut r = redis.conn().await;
    let events: Vec<redis::Value> = redis::cmd("XRANGE")
        .arg("herald:ratelimit")
        .arg("-")
        .arg("+")
        .query_async(&mut r)
        .await
        .expect("xrange");
    assert_eq!(events.len(), 1);

    // Per-IP limit, with a short window that then passes.
    let svc = ServiceBuilder::new("auth-svc")
        .redis(&redis)
        .env("HERALD_REDIS_PREFIX", "ip:")
        .env("HERALD_LOGIN_MAX_FAILURES_PER_IP", "3")
        .env("HERALD_LOGIN_WINDOW_S", "2")
        .spawn()
        .await;
    add_user(&svc, "frank", "right-password", &[], &[]).await;
    for name in ["x1", "x2", "x3"] {
        let (s, _) = login(&svc, name, "wrong").await;
        assert_eq!(s, 401);
    }
    let (s, retry, _) = raw(
        Method::POST,
        &format!("{}/v1/token", svc.http()),
        None,
        &json!({"username":"frank","password":"right-password"}).to_string(),
    )
    .await;
    assert_eq!(s, 429);
    assert!(retry.is_some());
    eventually("the throttling window to pass", || async {
        let (s, _) = login(&svc, "frank", "right-password").await;
        (s == 200).then_some(())
    })
    .await;
}

pub(super) async fn refresh_rotation_and_reuse_detection(backend: Backend) {
    let svc = auth_svc(&backend).await;
    add_user(&svc, "gina", "pw-long-enough", &["news"], &["news"]).await;
    let (_, b) = login(&svc, "gina", "pw-long-enough").await;
    let r1 = b["refresh_token"].as_str().expect("refresh").to_owned();

    let (s, b) = refresh(&svc, &r1).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["token_type"], "Bearer");
    let claims = decode(b["access_token"].as_str().unwrap_or_default());
    assert_eq!(
        (claims["sub"].clone(), claims["publish"].clone()),
        (json!("gina"), json!(["news"]))
    );
    let r2 = b["refresh_token"].as_str().expect("refresh").to_owned();
    assert_ne!(r1, r2);
    let (s, b) = refresh(&svc, &r2).await;
    assert_eq!(s, 200, "{b}");
    let r3 = b["refresh_token"].as_str().expect("refresh").to_owned();

    // A second, independent session of the same user.
    let (_, b) = login(&svc, "gina", "pw-long-enough").await;
    let other = b["refresh_token"].as_str().expect("refresh").to_owned();

    // Reusing r1 is refused and revokes the family: r3 no longer works.
    let (s, b) = refresh(&svc, &r1).await;
    assert_eq!(s, 401, "{b}");
    assert_eq!(b["error"]["code"], "invalid_grant");
    let (s, b) = refresh(&svc, &r3).await;
    assert_eq!(s, 401, "{b}");
    // The other session is untouched.
    let (s, b) = refresh(&svc, &other).await;
    assert_eq!(s, 200, "{b}");

    for bad in ["", "garbage", "a.b"] {
        let (s, _) = refresh(&svc, bad).await;
        assert_eq!(s, 401, "{bad}");
    }
    let (s, _) = http_json(
        Method::POST,
        &format!("{}/v1/token/refresh", svc.http()),
        None,
        Some(json!({"token": r3})),
    )
    .await;
    assert_eq!(s, 422);
    let m = metrics(&svc).await;
    assert!(
        m.contains("herald_auth_failures_total{reason=\"refresh_reuse\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("herald_tokens_issued_total{grant=\"refresh\"} 3"),
        "{m}"
    );
    // Nothing in Redis holds a refresh token in clear.
    let Some(redis) = backend.redis() else { return };
    let mut r = redis.conn().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut r)
        .await
        .expect("keys");
    let secret = other.split('.').nth(1).unwrap_or_default();
    assert!(keys.iter().all(|k| !k.contains(secret)), "{keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_marks_and_announces() {
    let redis = Redis::start().await;
    let svc = auth_svc(&redis).await;
    add_user(&svc, "hank", "pw-long-enough", &["news"], &[]).await;
    let client = redis::Client::open(redis.url()).expect("client");
    let mut pubsub = within("pubsub", client.get_async_pubsub())
        .await
        .expect("pubsub");
    within("subscribe", pubsub.subscribe("herald:control"))
        .await
        .expect("subscribe");
    let mut messages = pubsub.into_on_message();

    let (_, b) = login(&svc, "hank", "pw-long-enough").await;
    let token = b["access_token"].as_str().expect("token").to_owned();
    let jti = decode(&token)["jti"].as_str().expect("jti").to_owned();
    let url = format!("{}/v1/token/revoke", svc.http());

    let (s, _) = http_json(Method::POST, &url, None, Some(json!({"token": token}))).await;
    assert_eq!(s, 401);
    let (s, b) = http_json(
        Method::POST,
        &url,
        Some(ADMIN_KEY),
        Some(json!({"token": token})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b, json!({"revoked": true, "jti": jti}));

    let mut r = redis.conn().await;
    let pttl: i64 = redis::cmd("PTTL")
        .arg(format!("herald:revoked:{jti}"))
        .query_async(&mut r)
        .await
        .expect("pttl");
    assert!(pttl > 800_000 && pttl <= 905_000, "{pttl}");
    let msg = within("the control message", messages.next())
        .await
        .expect("message");
    let payload: String = msg.get_payload().expect("payload");
    let v: Value = serde_json::from_str(&payload).expect("control json");
    assert_eq!(v, json!({"type": "revoke", "jti": jti}));

    // By jti alone.
    let (s, b) = http_json(
        Method::POST,
        &url,
        Some(ADMIN_KEY),
        Some(json!({"jti": "abc123"})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let msg = within("the control message", messages.next())
        .await
        .expect("message");
    let payload: String = msg.get_payload().expect("payload");
    assert_eq!(
        serde_json::from_str::<Value>(&payload).ok(),
        Some(json!({"type": "revoke", "jti": "abc123"}))
    );
    let exists: bool = redis::cmd("EXISTS")
        .arg("herald:revoked:abc123")
        .query_async(&mut r)
        .await
        .expect("exists");
    assert!(exists);

    // A token signed by someone else, or nothing to revoke: 422.
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &json!({"sub":"x","jti":"j","exp":4_000_000_000_u64}),
        &jsonwebtoken::EncodingKey::from_secret(b"some-other-secret-0123"),
    )
    .expect("encode");
    let (s, b) = http_json(
        Method::POST,
        &url,
        Some(ADMIN_KEY),
        Some(json!({"token": forged})),
    )
    .await;
    assert_eq!(s, 422, "{b}");
    let (s, _) = http_json(Method::POST, &url, Some(ADMIN_KEY), Some(json!({}))).await;
    assert_eq!(s, 422);
    let (s, _, _) = raw(Method::POST, &url, Some(ADMIN_KEY), "nope").await;
    assert_eq!(s, 400);
}

crate::both_engines!(
    wrong_password_and_unknown_user_look_the_same,
    refresh_rotation_and_reuse_detection,
);
