//! No secret reaches a log: every service at `trace` (its own events, tower-http's
//! request spans, tungstenite's frame dumps, hyper and redis), a whole session of
//! logins, refreshes, connections and admin calls, then every line of every log
//! is searched for every secret that was used.

use std::path::Path;

use reqwest::Method;
use serde_json::{Value, json};

use crate::{
    ADMIN_KEY, API_KEY, Redis, Service, ServiceBuilder, TEST_SECRET, Ws, eventually, http_json,
    token_with, within,
};

/// A service at `trace`, its stderr appended to `dir/<name>.log`.
async fn traced(name: &str, redis: &Redis, dir: &Path, log: &str, json_format: bool) -> Service {
    let mut b = ServiceBuilder::new(name)
        .redis(redis)
        .env("HERALD_LOG", "trace")
        .env("RUST_LOG", "trace")
        .log_to(&dir.join(format!("{log}.log")));
    if json_format {
        b = b.env("HERALD_LOG_FORMAT", "json");
    }
    b.process().spawn().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_any_log_even_at_trace() {
    let redis = Redis::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let auth = traced("auth-svc", &redis, dir.path(), "auth-svc", false).await;
    let gw = traced("ws-gateway", &redis, dir.path(), "ws-gateway", false).await;
    let gw_json = traced("ws-gateway", &redis, dir.path(), "ws-gateway-json", true).await;
    let bc = traced("broadcaster", &redis, dir.path(), "broadcaster", false).await;
    let monitor = traced("monitor", &redis, dir.path(), "monitor", false).await;

    // The secrets of this session, besides the configured keys and JWT secret.
    let password = "correct-horse-battery-staple";
    let mut secrets: Vec<String> = vec![
        TEST_SECRET.to_owned(),
        ADMIN_KEY.to_owned(),
        API_KEY.to_owned(),
        password.to_owned(),
    ];

    // auth-svc: an admin creates a user; the user logs in and refreshes.
    let (status, body) = http_json(
        Method::POST,
        &format!("{}/v1/users", auth.http()),
        Some(ADMIN_KEY),
        Some(json!({"username":"ria","password":password,"channels":["news"],"publish":["news"]})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, login) = http_json(
        Method::POST,
        &format!("{}/v1/token", auth.http()),
        None,
        Some(json!({"username":"ria","password":password})),
    )
    .await;
    assert_eq!(status, 200, "{login}");
    let field = |v: &Value, k: &str| v[k].as_str().expect("token field").to_owned();
    let (access, refresh) = (
        field(&login, "access_token"),
        field(&login, "refresh_token"),
    );
    let (status, renewed) = http_json(
        Method::POST,
        &format!("{}/v1/token/refresh", auth.http()),
        None,
        Some(json!({"refresh_token":refresh})),
    )
    .await;
    assert_eq!(status, 200, "{renewed}");
    let (access2, refresh2) = (
        field(&renewed, "access_token"),
        field(&renewed, "refresh_token"),
    );
    secrets.extend([access.clone(), refresh, access2.clone(), refresh2]);
    // A wrong password and a token signed with another secret are secrets too.
    let wrong = "not-the-password-42";
    let (status, _) = http_json(
        Method::POST,
        &format!("{}/v1/token", auth.http()),
        None,
        Some(json!({"username":"ria","password":wrong})),
    )
    .await;
    assert_eq!(status, 401);
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub":"ria","exp":jsonwebtoken::get_current_timestamp() + 600}),
        &jsonwebtoken::EncodingKey::from_secret(b"some-other-secret-entirely"),
    )
    .expect("forge");
    secrets.extend([wrong.to_owned(), forged.clone()]);

    // The gateway: by header, by query (both log formats), by first frame; refused
    // by query and by first frame.
    let mut by_header =
        Ws::try_connect(&gw.ws(), &[("authorization", &format!("Bearer {access}"))])
            .await
            .expect("connect with a header");
    by_header.recv_type("auth_success").await;
    let mut by_query = Ws::connect(&format!("{}?token={access2}&channels=news", gw.ws())).await;
    by_query.recv_type("auth_success").await;
    let mut json_query = Ws::connect(&format!("{}?token={access}", gw_json.ws())).await;
    json_query.recv_type("auth_success").await;
    let (mut by_frame, _) = Ws::auth(&gw, &access2, &["news"]).await;
    let (mut json_frame, _) = Ws::auth(&gw_json, &access, &["news"]).await;
    assert_eq!(
        Ws::try_connect(&format!("{}?token={forged}", gw.ws()), &[])
            .await
            .err(),
        Some(401)
    );
    let mut refused = Ws::connect(&gw_json.ws()).await;
    refused.send(json!({"type":"auth","token":forged})).await;
    let (closed, _) = refused.closed().await;
    assert_eq!(closed.code, 1008);
    // A client refreshing its token on an open connection.
    by_frame
        .send(json!({"type":"auth","token":access,"id":1}))
        .await;
    by_frame.recv_type("auth_success").await;

    // The broadcaster, with the API key; the message reaches the subscribers.
    let (status, body) = http_json(
        Method::POST,
        &format!("{}/v1/publish", bc.http()),
        Some(API_KEY),
        Some(json!({"channel":"news","message":{"hello":"world"}})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    by_query.recv_type("message").await;
    json_frame.recv_type("message").await;

    // Admin calls: auth-svc revokes by token, the monitor disconnects a user.
    let (status, body) = http_json(
        Method::POST,
        &format!("{}/v1/token/revoke", auth.http()),
        Some(ADMIN_KEY),
        Some(json!({"token":access2})),
    )
    .await;
    assert_eq!(status, 200, "revoke: {body}");
    let (status, body) = http_json(
        Method::GET,
        &format!("{}/v1/users", auth.http()),
        Some(ADMIN_KEY),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    eventually("the monitor to list the connections", || async {
        let (status, v) = http_json(
            Method::GET,
            &format!("{}/api/v1/connections", monitor.http()),
            None,
            None,
        )
        .await;
        (status == 200 && v.to_string().contains("ria")).then_some(())
    })
    .await;
    let (status, body) = http_json(
        Method::POST,
        &format!("{}/api/v1/users/ria/disconnect", monitor.http()),
        Some(ADMIN_KEY),
        None,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let (closed, _) = by_header.closed().await;
    assert_ne!(closed.code, 1006, "an admin disconnect closes cleanly");
    for ws in [by_query, json_query, by_frame, json_frame] {
        ws.close().await;
    }
    // The last events are in the logs too: the closes, the gateways' presence
    // updates, and a monitor sample that lists no connection any more.
    eventually("the monitor to list no connection", || async {
        let (status, v) = http_json(
            Method::GET,
            &format!("{}/api/v1/connections", monitor.http()),
            None,
            None,
        )
        .await;
        (status == 200 && v["total"] == 0).then_some(())
    })
    .await;
    drop((auth, gw, gw_json, bc, monitor));

    let mut leaks = Vec::new();
    let mut total = 0;
    for entry in std::fs::read_dir(dir.path()).expect("log dir") {
        let path = entry.expect("log entry").path();
        let text = within("reading a log", tokio::fs::read(&path))
            .await
            .expect("read log");
        let text = String::from_utf8_lossy(&text);
        assert!(
            text.contains("TRACE"),
            "{} has no trace events: is trace logging on?",
            path.display()
        );
        total += text.lines().count();
        for (n, line) in text.lines().enumerate() {
            for s in &secrets {
                if line.contains(s.as_str()) {
                    leaks.push(format!(
                        "{}:{}: {s:.24}…: {line:.400}",
                        path.display(),
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "secrets in the logs:\n{}",
        leaks.join("\n")
    );
    // The logs are not empty of what matters: the request span names the path.
    let all: String = std::fs::read_dir(dir.path())
        .expect("log dir")
        .map(|e| std::fs::read_to_string(e.expect("entry").path()).unwrap_or_default())
        .collect();
    assert!(
        all.contains("path=/ws") || all.contains("\"path\":\"/ws\""),
        "no request spans"
    );
    // tungstenite's dump of an `auth` frame, scrubbed.
    assert!(
        all.contains(r#""token":"[redacted]""#),
        "no scrubbed auth frame: is the scrubber on?"
    );
    assert!(total > 200, "only {total} log lines");
}

/// A token in a query string is not even logged as redacted text by tower-http: the
/// request span carries the path only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_spans_name_the_path_not_the_query() {
    let redis = Redis::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let gw = ServiceBuilder::new("ws-gateway")
        .redis(&redis)
        .env("HERALD_LOG", "tower_http=debug")
        .log_to(&dir.path().join("gw.log"))
        .process()
        .spawn()
        .await;
    let t = token_with(json!({
        "sub":"q","exp":jsonwebtoken::get_current_timestamp() + 600,
        "iss":"herald-auth","aud":"herald","channels":[],"publish":[]
    }));
    let mut ws = Ws::connect(&format!("{}?channels=x&token={t}", gw.ws())).await;
    ws.recv_type("auth_success").await;
    ws.close().await;
    let log = eventually("the request span in the log", || async {
        let text = std::fs::read_to_string(dir.path().join("gw.log")).ok()?;
        text.contains("path=/ws").then_some(text)
    })
    .await;
    assert!(!log.contains("token="), "{log}");
    assert!(!log.contains("channels="), "{log}");
}
