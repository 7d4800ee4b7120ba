//! auth-svc end to end: the real binary against a real Redis — users (API and
//! CLI), login, throttling, refresh rotation and reuse detection, revocation,
//! the JWKS with EdDSA and the gateway's verifier, and fail-fast startup.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use reqwest::Method;
use serde_json::{Value, json};

use crate::{
    ADMIN_KEY, Redis, Service, ServiceBuilder, TEST_SECRET, Ws, eventually, free_port, http_json,
    run_bin, serve_json, within,
};

async fn auth_svc(redis: &Redis) -> Service {
    ServiceBuilder::new("auth-svc").redis(redis).spawn().await
}

/// Creates a user through the admin API.
async fn add_user(svc: &Service, name: &str, password: &str, channels: &[&str], publish: &[&str]) {
    let (status, body) = http_json(
        Method::POST,
        &format!("{}/v1/users", svc.http()),
        Some(ADMIN_KEY),
        Some(json!({"username":name,"password":password,"channels":channels,"publish":publish})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
}

async fn login(svc: &Service, name: &str, password: &str) -> (u16, Value) {
    http_json(
        Method::POST,
        &format!("{}/v1/token", svc.http()),
        None,
        Some(json!({"username":name,"password":password})),
    )
    .await
}

async fn refresh(svc: &Service, token: &str) -> (u16, Value) {
    http_json(
        Method::POST,
        &format!("{}/v1/token/refresh", svc.http()),
        None,
        Some(json!({"refresh_token":token})),
    )
    .await
}

/// Decodes an HS256 access token with the shared test secret, checking what the
/// gateway checks.
fn decode(token: &str) -> Value {
    let mut v = Validation::new(Algorithm::HS256);
    v.set_issuer(&["herald-auth"]);
    v.set_audience(&["herald"]);
    v.validate_nbf = true;
    jsonwebtoken::decode::<Value>(token, &DecodingKey::from_secret(TEST_SECRET.as_bytes()), &v)
        .expect("token verifies with the shared secret")
        .claims
}

/// A raw request: (status, Retry-After, JSON body).
async fn raw(
    method: Method,
    url: &str,
    bearer: Option<&str>,
    body: &str,
) -> (u16, Option<String>, Value) {
    let mut req = reqwest::Client::new()
        .request(method, url)
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let resp = within("HTTP", req.send()).await.expect("http");
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = within("HTTP body", resp.text()).await.unwrap_or_default();
    (
        status,
        retry,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

async fn metrics(svc: &Service) -> String {
    let resp = within("metrics", reqwest::get(format!("{}/metrics", svc.http())))
        .await
        .expect("metrics");
    within("metrics body", resp.text()).await.expect("text")
}

fn jwt_config(jwks_url: &str) -> herald_common::jwt::JwtConfig {
    herald_common::jwt::JwtConfig {
        jwt_alg: "EdDSA".to_owned(),
        jwt_secret: None,
        jwks_url: jwks_url.to_owned(),
        jwt_issuer: "herald-auth".to_owned(),
        jwt_audience: "herald".to_owned(),
        jwt_leeway_s: 5,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_api_login_and_errors() {
    let redis = Redis::start().await;
    let svc = auth_svc(&redis).await;
    let users = format!("{}/v1/users", svc.http());

    // Admin key required, wrong key refused, before the body is even looked at.
    let user = json!({"username":"alice","password":"s3cret-pass","channels":["news","chat:*"],"publish":["chat:*"]});
    let (s, b) = http_json(Method::POST, &users, None, Some(user.clone())).await;
    assert_eq!(s, 401, "{b}");
    assert_eq!(b["error"]["code"], "unauthorized");
    let (s, _) = http_json(Method::POST, &users, Some("wrong"), Some(user.clone())).await;
    assert_eq!(s, 401);
    let (s, _, _) = raw(Method::POST, &users, None, "not json").await;
    assert_eq!(s, 401);

    let (s, b) = http_json(Method::POST, &users, Some(ADMIN_KEY), Some(user.clone())).await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["username"], "alice");
    assert!(b.get("password_hash").is_none());
    let (s, b) = http_json(Method::POST, &users, Some(ADMIN_KEY), Some(user)).await;
    assert_eq!(s, 409, "{b}");

    // Bad bodies: not JSON is 400, the wrong shape is 422.
    let (s, _, b) = raw(Method::POST, &users, Some(ADMIN_KEY), "{nope").await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["error"]["code"], "invalid_json");
    for bad in [
        json!({"username":"","password":"long enough"}),
        json!({"username":"bob","password":""}),
        json!({"username":"bob"}),
        json!({"username":"bob","password":"long enough","channels":"news"}),
        json!({"username":"b b","password":"long enough"}),
        json!({"username":"bob","password":"long enough","channels":["bad name"]}),
    ] {
        let (s, b) = http_json(Method::POST, &users, Some(ADMIN_KEY), Some(bad.clone())).await;
        assert_eq!(s, 422, "{bad} -> {b}");
        assert!(b["error"]["code"].is_string(), "{b}");
    }
    let (s, _, b) = raw(
        Method::POST,
        &format!("{}/v1/token", svc.http()),
        None,
        "[1,",
    )
    .await;
    assert_eq!(s, 400, "{b}");
    let (s, b) = http_json(
        Method::POST,
        &format!("{}/v1/token", svc.http()),
        None,
        Some(json!({"username":"alice"})),
    )
    .await;
    assert_eq!(s, 422, "{b}");

    // Reading a user needs the key and never shows the hash.
    let (s, _) = http_json(Method::GET, &format!("{users}/alice"), None, None).await;
    assert_eq!(s, 401);
    let (s, b) = http_json(
        Method::GET,
        &format!("{users}/alice"),
        Some(ADMIN_KEY),
        None,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["channels"], json!(["news", "chat:*"]));
    assert_eq!(b["publish"], json!(["chat:*"]));
    assert!(
        b["created_at"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{b}"
    );
    assert_eq!(b.as_object().map(|o| o.len()), Some(4), "{b}");
    let mut r = redis.conn().await;
    let stored: String = redis::cmd("HGET")
        .arg("herald:user:alice")
        .arg("password_hash")
        .query_async(&mut r)
        .await
        .expect("hash stored");
    assert!(stored.starts_with("$argon2id$"), "{stored}");

    // Login: a token the gateway accepts, carrying the user's permissions.
    let (s, b) = login(&svc, "alice", "s3cret-pass").await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["token_type"], "Bearer");
    assert_eq!(b["expires_in"], 900);
    assert!(b["refresh_token"].as_str().is_some_and(|t| t.len() > 40));
    let claims = decode(b["access_token"].as_str().expect("access token"));
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["channels"], json!(["news", "chat:*"]));
    assert_eq!(claims["publish"], json!(["chat:*"]));
    assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()));
    let exp = claims["exp"].as_u64().expect("exp");
    let iat = claims["iat"].as_u64().expect("iat");
    assert_eq!(exp - iat, 900);
    let (_, b2) = login(&svc, "alice", "s3cret-pass").await;
    assert_ne!(
        decode(b2["access_token"].as_str().unwrap_or_default())["jti"],
        claims["jti"]
    );

    // Listing and deletion.
    let (s, b) = http_json(Method::GET, &users, Some(ADMIN_KEY), None).await;
    assert_eq!((s, b["users"].clone()), (200, json!(["alice"])));
    let (s, _) = http_json(Method::DELETE, &format!("{users}/alice"), None, None).await;
    assert_eq!(s, 401);
    let (s, _) = http_json(
        Method::DELETE,
        &format!("{users}/alice"),
        Some(ADMIN_KEY),
        None,
    )
    .await;
    assert_eq!(s, 204);
    let (s, _) = http_json(
        Method::DELETE,
        &format!("{users}/alice"),
        Some(ADMIN_KEY),
        None,
    )
    .await;
    assert_eq!(s, 404);
    let (s, b) = http_json(
        Method::GET,
        &format!("{users}/alice"),
        Some(ADMIN_KEY),
        None,
    )
    .await;
    assert_eq!(s, 404, "{b}");
    let (s, b) = login(&svc, "alice", "s3cret-pass").await;
    assert_eq!(s, 401, "{b}");

    // The node beats with its service name; HS256 mode publishes no keys.
    let nodes: Vec<String> = redis::cmd("ZRANGE")
        .arg("herald:nodes")
        .arg(0)
        .arg(-1)
        .query_async(&mut r)
        .await
        .expect("nodes");
    let node = nodes.first().expect("a registered node");
    let info: String = redis::cmd("GET")
        .arg(format!("herald:node:{node}"))
        .query_async(&mut r)
        .await
        .expect("node info");
    let info: Value = serde_json::from_str(&info).expect("node json");
    assert_eq!(info["service"], "auth-svc");
    let (s, b) = http_json(
        Method::GET,
        &format!("{}/.well-known/jwks.json", svc.http()),
        None,
        None,
    )
    .await;
    assert_eq!((s, b), (200, json!({"keys": []})));
    let m = metrics(&svc).await;
    assert!(
        m.contains("herald_tokens_issued_total{grant=\"password\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("herald_auth_failures_total{reason=\"invalid_credentials\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("herald_http_requests_total{route=\"/v1/token\",status=\"200\"} 2"),
        "{m}"
    );
    let (s, b) = http_json(Method::GET, &format!("{}/readyz", svc.http()), None, None).await;
    assert_eq!(s, 200, "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_users_and_tokens() {
    let redis = Redis::start().await;
    let url = redis.url();
    let env = [("HERALD_REDIS_URL", url.as_str())];
    let (code, out, err) = run_bin(
        "auth-svc",
        &[
            "user",
            "add",
            "bob",
            "--password",
            "pw-bob-long",
            "--channels",
            "news,chat:*",
            "--publish",
            "chat:*",
        ],
        &env,
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = run_bin(
        "auth-svc",
        &["user", "add", "bob", "--password", "another-password"],
        &env,
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already exists"), "{err}");
    let (code, _, err) =
        run_bin("auth-svc", &["user", "add", "b b", "--password", "x"], &env).await;
    assert_eq!(code, 64, "{err}");
    let (code, out, _) = run_bin("auth-svc", &["user", "list"], &env).await;
    assert_eq!((code, out.as_str()), (0, "bob\n"));

    // A user created by the CLI logs in through the API.
    let svc = auth_svc(&redis).await;
    let (s, b) = login(&svc, "bob", "pw-bob-long").await;
    assert_eq!(s, 200, "{b}");
    let claims = decode(b["access_token"].as_str().unwrap_or_default());
    assert_eq!(claims["channels"], json!(["news", "chat:*"]));

    // `token` mints without Redis in HS256 mode and prints only the token.
    let (code, out, err) = run_bin(
        "auth-svc",
        &[
            "token",
            "--user",
            "u1",
            "--channels",
            "news,chat:*",
            "--publish",
            "chat:*",
            "--ttl",
            "3600",
        ],
        &[
            ("HERALD_JWT_SECRET", TEST_SECRET),
            ("HERALD_REDIS_URL", "redis://127.0.0.1:1"),
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    let claims = decode(out.trim());
    assert_eq!(claims["sub"], "u1");
    assert_eq!(claims["channels"], json!(["news", "chat:*"]));
    assert_eq!(claims["publish"], json!(["chat:*"]));
    let exp = claims["exp"].as_u64().unwrap_or_default();
    assert_eq!(exp - claims["iat"].as_u64().unwrap_or_default(), 3600);

    let (code, _, _) = run_bin("auth-svc", &["user", "del", "bob"], &env).await;
    assert_eq!(code, 0);
    let (code, _, err) = run_bin("auth-svc", &["user", "del", "bob"], &env).await;
    assert_eq!(code, 1, "{err}");
    let (s, _) = login(&svc, "bob", "pw-bob-long").await;
    assert_eq!(s, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_unknown_user_look_the_same() {
    let redis = Redis::start().await;
    let svc = auth_svc(&redis).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotation_and_reuse_detection() {
    let redis = Redis::start().await;
    let svc = auth_svc(&redis).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eddsa_jwks_verified_by_the_gateway_verifier() {
    let redis = Redis::start().await;
    let eddsa = |b: ServiceBuilder| {
        b.redis(&redis)
            .env("HERALD_JWT_ALG", "EdDSA")
            .env("HERALD_JWT_SECRET", "")
    };
    let svc = eddsa(ServiceBuilder::new("auth-svc")).spawn().await;
    add_user(&svc, "ivy", "pw-long-enough", &["news"], &["news"]).await;
    let jwks_url = format!("{}/.well-known/jwks.json", svc.http());
    let (s, jwks) = http_json(Method::GET, &jwks_url, None, None).await;
    assert_eq!(s, 200);
    let keys = jwks["keys"].as_array().expect("keys").clone();
    assert_eq!(keys.len(), 1, "{jwks}");
    assert_eq!(keys[0]["kty"], "OKP");
    assert_eq!(keys[0]["crv"], "Ed25519");
    assert_eq!(keys[0]["alg"], "EdDSA");
    assert_eq!(keys[0]["use"], "sig");
    let kid1 = keys[0]["kid"].as_str().expect("kid").to_owned();

    let (s, b) = login(&svc, "ivy", "pw-long-enough").await;
    assert_eq!(s, 200, "{b}");
    let token1 = b["access_token"].as_str().expect("token").to_owned();
    let header = jsonwebtoken::decode_header(&token1).expect("header");
    assert_eq!(header.alg, Algorithm::EdDSA);
    assert_eq!(header.kid.as_deref(), Some(kid1.as_str()));

    let config = jwt_config(&jwks_url);
    let verifier = herald_common::jwt::Verifier::jwks(&config, herald_common::jwt::Alg::EdDsa);
    let claims = verifier
        .verify(&token1)
        .await
        .expect("gateway accepts the token");
    assert_eq!(claims.user(), Some("ivy"));
    assert_eq!(claims.channels, ["news"]);
    // An HS256 token is refused by an EdDSA verifier.
    assert!(
        verifier
            .verify(&crate::token("ivy", &[], &[]))
            .await
            .is_err()
    );

    // A second instance shares the key through Redis.
    let svc2 = eddsa(ServiceBuilder::new("auth-svc")).spawn().await;
    let (_, jwks2) = http_json(
        Method::GET,
        &format!("{}/.well-known/jwks.json", svc2.http()),
        None,
        None,
    )
    .await;
    assert_eq!(jwks2, jwks);

    // Rotation: a new current key; the old one stays published and valid.
    let url = redis.url();
    let (code, out, err) = run_bin(
        "auth-svc",
        &["keys", "rotate"],
        &[
            ("HERALD_REDIS_URL", url.as_str()),
            ("HERALD_JWT_ALG", "EdDSA"),
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let kid2 = out.trim().to_owned();
    assert_ne!(kid2, kid1);
    let (_, jwks) = http_json(Method::GET, &jwks_url, None, None).await;
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .map(|k| k.iter().filter_map(|k| k["kid"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(kids, [kid2.as_str(), kid1.as_str()], "{jwks}");
    let token2 = eventually("logins to use the new key", || async {
        let (_, b) = login(&svc2, "ivy", "pw-long-enough").await;
        let t = b["access_token"].as_str()?.to_owned();
        let h = jsonwebtoken::decode_header(&t).ok()?;
        (h.kid.as_deref() == Some(kid2.as_str())).then_some(t)
    })
    .await;
    // The verifier has not seen kid2 yet: it refetches the JWKS.
    let fresh = herald_common::jwt::Verifier::jwks(&config, herald_common::jwt::Alg::EdDsa);
    assert!(fresh.verify(&token2).await.is_ok());
    assert!(fresh.verify(&token1).await.is_ok());

    // `token` in EdDSA mode signs with the current key from Redis.
    let (code, out, err) = run_bin(
        "auth-svc",
        &["token", "--user", "u9", "--channels", "news"],
        &[
            ("HERALD_REDIS_URL", url.as_str()),
            ("HERALD_JWT_ALG", "EdDSA"),
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let claims = fresh.verify(out.trim()).await.expect("CLI token verifies");
    assert_eq!(claims.user(), Some("u9"));

    // Revocation takes EdDSA tokens too.
    let (s, b) = http_json(
        Method::POST,
        &format!("{}/v1/token/revoke", svc.http()),
        Some(ADMIN_KEY),
        Some(json!({"token": token2})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_fails_fast() {
    // No secret: exit 64 with one line naming the variable.
    let dead = format!("redis://127.0.0.1:{}", free_port());
    let (code, _, err) = run_bin(
        "auth-svc",
        &[],
        &[
            ("HERALD_REDIS_URL", dead.as_str()),
            ("HERALD_JWT_SECRET", ""),
        ],
    )
    .await;
    assert_eq!(code, 64, "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("HERALD_JWT_SECRET"), "{err}");

    // Unreachable Redis: non-zero, one line.
    let (code, _, err) = run_bin(
        "auth-svc",
        &[],
        &[
            ("HERALD_REDIS_URL", dead.as_str()),
            ("HERALD_JWT_SECRET", TEST_SECRET),
            ("HERALD_LISTEN", "127.0.0.1:0"),
        ],
    )
    .await;
    assert_ne!(code, 0, "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("unreachable"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_minimum_api_and_cli() {
    let redis = Redis::start().await;
    let svc = auth_svc(&redis).await;
    let users = format!("{}/v1/users", svc.http());

    // The API: 422 naming the minimum (8 by default), in characters.
    let (s, b) = http_json(
        Method::POST,
        &users,
        Some(ADMIN_KEY),
        Some(json!({"username":"kim","password":"1"})),
    )
    .await;
    assert_eq!(s, 422, "{b}");
    assert_eq!(b["error"]["code"], "invalid_request", "{b}");
    assert_eq!(
        b["error"]["message"], "password must be at least 8 characters long",
        "{b}"
    );
    let (s, b) = http_json(
        Method::POST,
        &users,
        Some(ADMIN_KEY),
        Some(json!({"username":"kim","password":"1234567"})),
    )
    .await;
    assert_eq!(s, 422, "{b}");
    add_user(&svc, "kim", "12345678", &[], &[]).await;
    add_user(&svc, "kai", "éééééééé", &[], &[]).await;
    let (s, b) = login(&svc, "kim", "12345678").await;
    assert_eq!(s, 200, "{b}");

    // Configurable.
    let strict = ServiceBuilder::new("auth-svc")
        .redis(&redis)
        .env("HERALD_MIN_PASSWORD_LENGTH", "12")
        .spawn()
        .await;
    let (s, b) = http_json(
        Method::POST,
        &format!("{}/v1/users", strict.http()),
        Some(ADMIN_KEY),
        Some(json!({"username":"lou","password":"12345678901"})),
    )
    .await;
    assert_eq!(s, 422, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("at least 12 characters")),
        "{b}"
    );

    // The CLI: exit 64, one line naming the minimum and the setting; nothing created.
    let url = redis.url();
    let (code, out, err) = run_bin(
        "auth-svc",
        &["user", "add", "zed", "--password", "x"],
        &[("HERALD_REDIS_URL", url.as_str())],
    )
    .await;
    assert_eq!(code, 64, "{out}{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("at least 8 characters"), "{err}");
    assert!(lines[0].contains("HERALD_MIN_PASSWORD_LENGTH"), "{err}");
    let (code, out, err) = run_bin(
        "auth-svc",
        &["user", "add", "zed", "--password", "abcd"],
        &[
            ("HERALD_REDIS_URL", url.as_str()),
            ("HERALD_MIN_PASSWORD_LENGTH", "4"),
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let (_, out, _) = run_bin(
        "auth-svc",
        &["user", "list"],
        &[("HERALD_REDIS_URL", url.as_str())],
    )
    .await;
    assert_eq!(out, "kai\nkim\nzed\n");

    // A minimum of 0 is a configuration error, named.
    let dead = format!("redis://127.0.0.1:{}", free_port());
    let (code, _, err) = run_bin(
        "auth-svc",
        &[],
        &[
            ("HERALD_REDIS_URL", dead.as_str()),
            ("HERALD_JWT_SECRET", TEST_SECRET),
            ("HERALD_MIN_PASSWORD_LENGTH", "0"),
        ],
    )
    .await;
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("HERALD_MIN_PASSWORD_LENGTH"), "{err}");
}

/// A test RSA key (2048 bits, PKCS#8) standing in for an external issuer's.
const TEST_RSA_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQCjryfrPMHQBxtI
wOhy6AimwssT62Jj0Wq4jXkYLclb3VEraO8bFQiGy1JqDr8Su1obP2cOQ9E8VhwL
CYv8etZibtOa/rWPaDbIb0USt1qfKBqkgm2hBtf8lxhPeBbjF+VjOhOkm2KUCDHe
3cxqCDtGI6n5/jRkCv+vJ/zWdfOq27lPXJ5mGg5DesJ3iYOmRB6cNm9r+myq3rmC
jPRPR+PGNcBo9uEk7HwhmhmHOaraTGO2z12WWKFVoFDWfg7P8XD0VkCmlDyZsw4w
4otASUWdmDVIoElckEsKLXZnjypeHE7iInLQWo81NsRpfwdtTt67a7Mb7TWy7Ot2
AzU0iWvFAgMBAAECggEAE6k2Yksp/JLd9B83zJWSdHVxbzMW3maJKyHTKdRWG3K6
DTzNe7NLEuXZQGQFD3rxl9RFzLDYsSamt6yt4+XdWnV1dWii5lbePbUf1t+vQu7O
RHRmNrFbwDtl8CW8mgqEwyZ2tY70iFNzqhF6PEJA3GvsPtsJ7/piO+fRtvD0E9Gf
ewwU6xgbquWrJJ58yvZNeiI0j6f8NsHsEEaqysoCaP2l1oRp8oahbHhpVPuMyQ/0
GrnJFC3HDd7giP0X9LWroNW0uBtDB1O9v7bpKGiJ5nyrLTUSvouk/lydnWEPAFBL
nzB02uXO5l+yfk3mOT7M3YDE6XnRrDykJ2dgUsLZAQKBgQDUUcbiLzX+ceW0ecIN
P82uZ1fyv5kYyQd5mRsz1tSo32HqKxJf4aTB2wcWRPr9ViOTUFTh9n4UBZocbYzj
ChCSXuNR01pe7vpM9Olii+sFw0aP9ek9/faqEDSOyln6CGOFpeEyJHQnd634VWhZ
76oBxuUKsmGDv0sgSG4CypakhwKBgQDFW+h30YYu8MIgY3MfuA2UGELzxG1t8Hh1
bxRA8YedJUO+sRJHR/G+25Z3YEPS1GVDkLGDftmql6Lf3IgI2j+OwzG2LkiX2+60
HR9f4ZTO+VMnFU77Hyw+1HTfe/M5p/TBcn8KMDx16c7AskEydjIxXjqcocg16tdf
3Al/nNZMUwKBgFC5/xqExMzH1YS3Prb26WdEV8YuXzFzTepH8nXVWuoSdRIp6kSW
cKRceOdYtu2X0NL0GjIIHIvUTXI9nPG+I+rjNR8pcxThXD3iaNJVTLjWNIAMCfDO
HPkwTCt2eJt+kQiBt4vvHFLdSEJBhvmbDFK8ot1cUYNcOl4968YX7QsFAoGAQ/Sf
mRI2J9eSoGBd9aAEXOf1tcX/AAn7EESNLsd7sKpyJykFaDHnlZY6uyQUdnXX4Gnk
FakJ/el0laxz0siDdf7UESziphd+m9ojQXqFKLdE4II/zcwwCfpRu9oMJ+AjMLDh
+Xoed2NoY4V9WYjFQ6Z0fBZgv9/7BPDY/G3ehC0CgYAPiHigW8PzwiNzULgkHCFw
9pZ8cLyWM2yqrNOvIGKS4GkyxDqsuK1HCzXbYtptKzkS9Ei4eyk8WRwwOF67gyXQ
OpM0f7TPCVvCoZjcmZmH3MJoTH80P9D8ajQDYZebN9HknJqqd283YBLtJnPbr+pJ
naixEcHGQgJ3GsE/IfSrTg==
-----END PRIVATE KEY-----
";
/// Its public modulus, base64url (the JWK `n`).
const TEST_RSA_N: &str = "o68n6zzB0AcbSMDocugIpsLLE-tiY9FquI15GC3JW91RK2jvGxUIhstSag6_ErtaGz9nDkPRPFYcCwmL_HrWYm7Tmv61j2g2yG9FErdanygapIJtoQbX_JcYT3gW4xflYzoTpJtilAgx3t3Magg7RiOp-f40ZAr_ryf81nXzqtu5T1yeZhoOQ3rCd4mDpkQenDZva_psqt65goz0T0fjxjXAaPbhJOx8IZoZhzmq2kxjts9dllihVaBQ1n4Oz_Fw9FZAppQ8mbMOMOKLQElFnZg1SKBJXJBLCi12Z48qXhxO4iJy0FqPNTbEaX8HbU7eu2uzG-01suzrdgM1NIlrxQ";

/// auth-svc issues HS256 and EdDSA only: RS256 is refused at start (and by the
/// subcommands that sign) with one line saying what to use instead — and what
/// that line promises holds: a gateway set to RS256 verifies an external
/// issuer's tokens through its JWKS URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_is_refused_by_auth_svc_and_verified_by_the_gateway() {
    let redis = Redis::start().await;
    let url = redis.url();
    let env = [
        ("HERALD_REDIS_URL", url.as_str()),
        ("HERALD_JWT_ALG", "RS256"),
        ("HERALD_LISTEN", "127.0.0.1:0"),
    ];
    let commands: [&[&str]; 3] = [&[], &["token", "--user", "u1"], &["keys", "rotate"]];
    for args in commands {
        let (code, out, err) = run_bin("auth-svc", args, &env).await;
        assert_eq!(code, 64, "{args:?}: {out}{err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        for needle in [
            "HERALD_JWT_ALG=RS256",
            "HERALD_JWT_ALG=EdDSA",
            "HERALD_JWKS_URL",
        ] {
            assert!(lines[0].contains(needle), "{args:?}: {err}");
        }
    }

    let jwks = json!({"keys":[{"kty":"RSA","n":TEST_RSA_N,"e":"AQAB","kid":"ext-1","alg":"RS256","use":"sig"}]});
    let (jwks_url, server) = serve_json(jwks.to_string()).await;
    let gw = ServiceBuilder::new("ws-gateway")
        .redis(&redis)
        .env("HERALD_JWT_ALG", "RS256")
        .env("HERALD_JWT_SECRET", "")
        .env("HERALD_JWKS_URL", &jwks_url)
        .spawn()
        .await;
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(TEST_RSA_PEM.as_bytes()).expect("rsa key");
    let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
    header.kid = Some("ext-1".to_owned());
    let exp = jsonwebtoken::get_current_timestamp() + 60;
    let claims =
        json!({"sub":"ext","exp":exp,"iss":"herald-auth","aud":"herald","channels":["news"]});
    let good = jsonwebtoken::encode(&header, &claims, &key).expect("token");
    let (_ws, ok) = Ws::auth(&gw, &good, &["news"]).await;
    assert_eq!(ok["user_id"], "ext");
    // An HS256 token is refused by the RS256 gateway.
    let mut ws = Ws::connect(&gw.ws()).await;
    ws.send(json!({"type":"auth","token":crate::token("ext", &[], &[])}))
        .await;
    assert_eq!(ws.closed().await.0.code, 1008);
    server.abort();
}

/// A token that outlives the access-token life (`auth-svc token --ttl`) keeps
/// its signing key published after `keys rotate` for its whole life: a gateway
/// that first sees the key after the access-token life has passed still
/// accepts the token, until the token's own `exp`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lived_tokens_outlive_key_rotation() {
    const ACCESS_TTL_S: u64 = 1;
    const LEEWAY_S: u64 = 1;
    const TOKEN_TTL_S: u64 = 8;
    let redis = Redis::start().await;
    let url = redis.url();
    let env = [
        ("HERALD_REDIS_URL", url.as_str()),
        ("HERALD_JWT_ALG", "EdDSA"),
        ("HERALD_ACCESS_TOKEN_TTL_S", "1"),
        ("HERALD_JWT_LEEWAY_S", "1"),
    ];
    let mut svc = ServiceBuilder::new("auth-svc").redis(&redis);
    for (k, v) in env {
        svc = svc.env(k, v);
    }
    let svc = svc.env("HERALD_JWT_SECRET", "").spawn().await;
    let jwks_url = format!("{}/.well-known/jwks.json", svc.http());

    let ttl = TOKEN_TTL_S.to_string();
    let (code, out, err) = run_bin(
        "auth-svc",
        &[
            "token",
            "--user",
            "long",
            "--channels",
            "news",
            "--ttl",
            &ttl,
        ],
        &env,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let token = out.trim().to_owned();
    let issued = Instant::now();
    let kid1 = jsonwebtoken::decode_header(&token)
        .expect("header")
        .kid
        .expect("kid");
    let (code, out, err) = run_bin("auth-svc", &["keys", "rotate"], &env).await;
    assert_eq!(code, 0, "{err}");
    let kid2 = out.trim().to_owned();
    assert_ne!(kid2, kid1);

    // Past the access-token life and the leeway since the rotation.
    tokio::time::sleep(Duration::from_millis(
        (ACCESS_TTL_S + LEEWAY_S) * 1000 + 1500,
    ))
    .await;
    let (s, jwks) = http_json(Method::GET, &jwks_url, None, None).await;
    assert_eq!(s, 200);
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .map(|k| k.iter().filter_map(|k| k["kid"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(kids, [kid2.as_str(), kid1.as_str()], "{jwks}");

    // A gateway that never saw the old key fetches it and accepts the token...
    let gw = ServiceBuilder::new("ws-gateway")
        .redis(&redis)
        .env("HERALD_JWT_ALG", "EdDSA")
        .env("HERALD_JWT_SECRET", "")
        .env("HERALD_JWKS_URL", &jwks_url)
        .env("HERALD_JWT_LEEWAY_S", "1")
        .spawn()
        .await;
    assert!(
        issued.elapsed() < Duration::from_secs(TOKEN_TTL_S - 1),
        "too slow to check the token within its life"
    );
    let (mut ws, ok) = Ws::auth(&gw, &token, &["news"]).await;
    assert_eq!(ok["user_id"], "long");

    // ...until the token's own expiry, which ends the connection...
    let (closed, frames) = ws.closed().await;
    assert_eq!(closed.code, 1008, "{frames:?}");
    assert_eq!(
        frames.last().map(|f| f["code"].clone()),
        Some(json!("token_expired")),
        "{frames:?}"
    );
    // ...and refuses it from then on, leeway included.
    let after = Duration::from_secs(TOKEN_TTL_S + LEEWAY_S + 1);
    tokio::time::sleep(after.saturating_sub(issued.elapsed())).await;
    let mut ws = Ws::connect(&gw.ws()).await;
    ws.send(json!({"type":"auth","token":token})).await;
    assert_eq!(ws.closed().await.0.code, 1008);
}

/// Login and refresh answer CORS for the allowed origins only (preflight included);
/// the admin endpoints never do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_and_refresh_answer_cors_for_allowed_origins_only() {
    let redis = Redis::start().await;
    let auth = ServiceBuilder::new("auth-svc")
        .redis(&redis)
        .env("HERALD_ALLOWED_ORIGINS", "https://app.example/")
        .spawn()
        .await;
    let client = reqwest::Client::new();
    let preflight = |path: &'static str, origin: &'static str| {
        client
            .request(reqwest::Method::OPTIONS, format!("{}{path}", auth.http()))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    for path in ["/v1/token", "/v1/token/refresh"] {
        let r = preflight(path, "https://app.example")
            .await
            .expect("preflight");
        assert!(r.status().is_success(), "{path}: {}", r.status());
        assert_eq!(
            r.headers()["access-control-allow-origin"],
            "https://app.example"
        );
        let r = preflight(path, "https://evil.example")
            .await
            .expect("preflight");
        assert!(
            r.headers().get("access-control-allow-origin").is_none(),
            "{path}"
        );
    }
    let r = preflight("/v1/users", "https://app.example")
        .await
        .expect("preflight");
    assert!(r.headers().get("access-control-allow-origin").is_none());
    // The real request carries the header too (a wrong password still answers 401).
    let r = client
        .post(format!("{}/v1/token", auth.http()))
        .header("origin", "https://app.example")
        .body(r#"{"username":"nobody","password":"wrong-password"}"#)
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
}
