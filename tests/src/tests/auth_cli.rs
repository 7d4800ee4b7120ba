//! auth-svc's operator CLI (`user add|del|list`, `token`) and the password minimum
//! it shares with the API.

use reqwest::Method;
use serde_json::json;

use super::auth::{add_user, auth_svc, decode, login};
use crate::{ADMIN_KEY, Redis, ServiceBuilder, TEST_SECRET, dead_redis, http_json, run_bin};

/// Runs an `auth-svc` subcommand against `redis`; (exit code, stdout, stderr).
async fn cli(redis: &Redis, args: &[&str]) -> (i32, String, String) {
    let url = redis.url();
    run_bin("auth-svc", args, &[("HERALD_REDIS_URL", url.as_str())]).await
}

/// `user add bob` with bob's permissions.
async fn cli_add_bob(redis: &Redis) -> (i32, String, String) {
    cli(
        redis,
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
    )
    .await
}

/// `user add|list|del`: exit 0 on success, 1 for a user that exists (or does not),
/// 64 for a bad name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_adds_lists_and_deletes_users() {
    let redis = Redis::start().await;
    let (code, out, err) = cli_add_bob(&redis).await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = cli(
        &redis,
        &["user", "add", "bob", "--password", "another-password"],
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already exists"), "{err}");
    let (code, _, err) = cli(&redis, &["user", "add", "b b", "--password", "x"]).await;
    assert_eq!(code, 64, "{err}");
    let (code, out, _) = cli(&redis, &["user", "list"]).await;
    assert_eq!((code, out.as_str()), (0, "bob\n"));
    let (code, _, _) = cli(&redis, &["user", "del", "bob"]).await;
    assert_eq!(code, 0);
    let (code, _, err) = cli(&redis, &["user", "del", "bob"]).await;
    assert_eq!(code, 1, "{err}");
}

/// The CLI and the API share one user store: a user the CLI adds logs in, with its
/// permissions, and one it deletes no longer does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_of_the_cli_log_in_through_the_api() {
    let redis = Redis::start().await;
    let (code, out, err) = cli_add_bob(&redis).await;
    assert_eq!(code, 0, "{out}{err}");
    let svc = auth_svc(&redis).await;
    let (s, b) = login(&svc, "bob", "pw-bob-long").await;
    assert_eq!(s, 200, "{b}");
    let claims = decode(b["access_token"].as_str().unwrap_or_default());
    assert_eq!(claims["channels"], json!(["news", "chat:*"]));
    let (code, _, _) = cli(&redis, &["user", "del", "bob"]).await;
    assert_eq!(code, 0);
    let (s, _) = login(&svc, "bob", "pw-bob-long").await;
    assert_eq!(s, 401);
}

/// `token` mints without Redis in HS256 mode and prints only the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_mints_tokens_without_redis() {
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
    let (_nobody, dead) = dead_redis();
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
