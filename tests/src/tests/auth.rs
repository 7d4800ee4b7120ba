//! auth-svc end to end: the real binary against a real Redis. Here the users API,
//! login, startup and CORS, and the helpers the other auth-svc files share; login
//! abuse, refresh and revocation are in `auth_login.rs`, the operator CLI in
//! `auth_cli.rs`, signing keys (EdDSA, RS256, rotation) in `auth_keys.rs`.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use reqwest::Method;
use serde_json::{Value, json};

use crate::{
    ADMIN_KEY, Backend, Redis, Service, ServiceBuilder, Store, TEST_SECRET, dead_redis, eventually,
    http_json, run_bin, within,
};

pub(super) async fn auth_svc(store: &impl Store) -> Service {
    ServiceBuilder::new("auth-svc").on(store).spawn().await
}

/// Creates a user through the admin API.
pub(super) async fn add_user(
    svc: &Service,
    name: &str,
    password: &str,
    channels: &[&str],
    publish: &[&str],
) {
    let (status, body) = http_json(
        Method::POST,
        &format!("{}/v1/users", svc.http()),
        Some(ADMIN_KEY),
        Some(json!({"username":name,"password":password,"channels":channels,"publish":publish})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
}

pub(super) async fn login(svc: &Service, name: &str, password: &str) -> (u16, Value) {
    http_json(
        Method::POST,
        &format!("{}/v1/token", svc.http()),
        None,
        Some(json!({"username":name,"password":password})),
    )
    .await
}

pub(super) async fn refresh(svc: &Service, token: &str) -> (u16, Value) {
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
pub(super) fn decode(token: &str) -> Value {
    let mut v = Validation::new(Algorithm::HS256);
    v.set_issuer(&["herald-auth"]);
    v.set_audience(&["herald"]);
    v.validate_nbf = true;
    jsonwebtoken::decode::<Value>(token, &DecodingKey::from_secret(TEST_SECRET.as_bytes()), &v)
        .expect("token verifies with the shared secret")
        .claims
}

/// A raw request: (status, Retry-After, JSON body).
pub(super) async fn raw(
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

pub(super) async fn metrics(svc: &Service) -> String {
    let resp = within("metrics", reqwest::get(format!("{}/metrics", svc.http())))
        .await
        .expect("metrics");
    within("metrics body", resp.text()).await.expect("text")
}

/// alice: may read `news` and `chat:*`, publish to `chat:*`.
fn alice() -> Value {
    json!({"username":"alice","password":"s3cret-pass","channels":["news","chat:*"],"publish":["chat:*"]})
}

/// Redis and an auth-svc on it where the admin API has created [`alice`]; keep both
/// bound for as long as the test uses them.
async fn with_alice() -> (Redis, Service) {
    let redis = Redis::start().await;
    let svc = auth_svc(&redis).await;
    let (s, b) = http_json(Method::POST, &users(&svc), Some(ADMIN_KEY), Some(alice())).await;
    assert_eq!(s, 201, "{b}");
    (redis, svc)
}

fn users(svc: &Service) -> String {
    format!("{}/v1/users", svc.http())
}

/// The admin key is required, and checked before the body is even looked at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_users_api_needs_the_admin_key() {
    let (_redis, svc) = with_alice().await;
    let users = users(&svc);
    let (s, b) = http_json(Method::POST, &users, None, Some(alice())).await;
    assert_eq!(s, 401, "{b}");
    assert_eq!(b["error"]["code"], "unauthorized");
    let (s, _) = http_json(Method::POST, &users, Some("wrong"), Some(alice())).await;
    assert_eq!(s, 401);
    let (s, _, _) = raw(Method::POST, &users, None, "not json").await;
    assert_eq!(s, 401);
    let alice_url = format!("{users}/alice");
    for method in [Method::GET, Method::DELETE] {
        let (s, _) = http_json(method.clone(), &alice_url, None, None).await;
        assert_eq!(s, 401, "{method}");
    }
}

pub(super) async fn creating_a_user_answers_201_without_the_hash_and_a_duplicate_409(
    backend: Backend,
) {
    let svc = auth_svc(&backend).await;
    let (s, b) = http_json(Method::POST, &users(&svc), Some(ADMIN_KEY), Some(alice())).await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["username"], "alice");
    assert!(b.get("password_hash").is_none());
    let (s, b) = http_json(Method::POST, &users(&svc), Some(ADMIN_KEY), Some(alice())).await;
    assert_eq!(s, 409, "{b}");
}

/// A body that is not JSON is 400 `invalid_json`; JSON of the wrong shape is 422.
async fn bad_bodies_are_400_when_not_json_and_422_when_misshapen(backend: Backend) {
    let svc = auth_svc(&backend).await;
    let users = users(&svc);
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
    let token_url = format!("{}/v1/token", svc.http());
    let (s, _, b) = raw(Method::POST, &token_url, None, "[1,").await;
    assert_eq!(s, 400, "{b}");
    let (s, b) = http_json(
        Method::POST,
        &token_url,
        None,
        Some(json!({"username":"alice"})),
    )
    .await;
    assert_eq!(s, 422, "{b}");
}

/// A user reads back with its permissions and creation time, never its hash, which
/// Redis holds as Argon2id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_reads_back_without_its_hash() {
    let (redis, svc) = with_alice().await;
    let (s, b) = http_json(
        Method::GET,
        &format!("{}/alice", users(&svc)),
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
}

/// Login gives a token the gateway accepts, carrying the user's permissions; each
/// login has its own `jti`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_issues_a_token_carrying_the_users_permissions() {
    let (_redis, svc) = with_alice().await;
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
    let m = metrics(&svc).await;
    assert!(
        m.contains("herald_tokens_issued_total{grant=\"password\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("herald_http_requests_total{route=\"/v1/token\",status=\"200\"} 2"),
        "{m}"
    );
}

/// Users are listed by name; a deleted user is gone (404) and can no longer log in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_listed_and_deleted() {
    let (_redis, svc) = with_alice().await;
    let users = users(&svc);
    let alice_url = format!("{users}/alice");
    let (s, b) = http_json(Method::GET, &users, Some(ADMIN_KEY), None).await;
    assert_eq!((s, b["users"].clone()), (200, json!(["alice"])));
    let (s, _) = http_json(Method::DELETE, &alice_url, Some(ADMIN_KEY), None).await;
    assert_eq!(s, 204);
    let (s, _) = http_json(Method::DELETE, &alice_url, Some(ADMIN_KEY), None).await;
    assert_eq!(s, 404);
    let (s, b) = http_json(Method::GET, &alice_url, Some(ADMIN_KEY), None).await;
    assert_eq!(s, 404, "{b}");
    let (s, b) = login(&svc, "alice", "s3cret-pass").await;
    assert_eq!(s, 401, "{b}");
    let m = metrics(&svc).await;
    assert!(
        m.contains("herald_auth_failures_total{reason=\"invalid_credentials\"} 1"),
        "{m}"
    );
}

/// The node beats under its service name, is ready, and in HS256 mode publishes no
/// keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_beats_as_auth_svc_and_hs256_publishes_no_keys() {
    let redis = Redis::start().await;
    let svc = auth_svc(&redis).await;
    let r = redis.conn().await;
    let info: Value = eventually("auth-svc's heartbeat", || {
        let mut r = r.clone();
        async move {
            let nodes: Vec<String> = redis::cmd("ZRANGE")
                .arg("herald:nodes")
                .arg(0)
                .arg(-1)
                .query_async(&mut r)
                .await
                .ok()?;
            let info: String = redis::cmd("GET")
                .arg(format!("herald:node:{}", nodes.first()?))
                .query_async(&mut r)
                .await
                .ok()?;
            serde_json::from_str(&info).ok()
        }
    })
    .await;
    assert_eq!(info["service"], "auth-svc");
    let (s, b) = http_json(
        Method::GET,
        &format!("{}/.well-known/jwks.json", svc.http()),
        None,
        None,
    )
    .await;
    assert_eq!((s, b), (200, json!({"keys": []})));
    let (s, b) = http_json(Method::GET, &format!("{}/readyz", svc.http()), None, None).await;
    assert_eq!(s, 200, "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_fails_fast() {
    // No secret: exit 64 with one line naming the variable.
    let (_nobody, dead) = dead_redis();
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

crate::both_engines!(
    creating_a_user_answers_201_without_the_hash_and_a_duplicate_409,
    bad_bodies_are_400_when_not_json_and_422_when_misshapen,
);
