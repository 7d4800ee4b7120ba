//! The whole publish path with every service in it: server-side producers (the
//! broadcaster's API, the legacy Redis channels, a background job) reach a client
//! on a gateway, and tokens come from auth-svc.

use reqwest::Method;
use serde_json::json;

use crate::{ADMIN_KEY, API_KEY, Redis, ServiceBuilder, Ws, http_json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_reach_clients_through_the_gateway() {
    let redis = Redis::start().await;
    let auth = ServiceBuilder::new("auth-svc").redis(&redis).spawn().await;
    let gw = ServiceBuilder::new("ws-gateway")
        .redis(&redis)
        .spawn()
        .await;
    let bc = ServiceBuilder::new("broadcaster")
        .redis(&redis)
        .spawn()
        .await;

    // A user created through auth-svc logs in and connects with that token.
    let (status, body) = http_json(
        Method::POST,
        &format!("{}/v1/users", auth.http()),
        Some(ADMIN_KEY),
        Some(json!({"username":"ann","password":"correct horse","channels":["news","jobs"],"publish":[]})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, login) = http_json(
        Method::POST,
        &format!("{}/v1/token", auth.http()),
        None,
        Some(json!({"username":"ann","password":"correct horse"})),
    )
    .await;
    assert_eq!(status, 200, "{login}");
    let token = login["access_token"].as_str().expect("token");
    let (mut ws, ok) = Ws::auth(&gw, token, &["news", "jobs", "system", "user:ann"]).await;
    assert_eq!(
        ok["channels"],
        json!(["news", "jobs", "system", "user:ann"])
    );

    // The publish API.
    let (status, res) = http_json(
        Method::POST,
        &format!("{}/v1/publish", bc.http()),
        Some(API_KEY),
        Some(json!({"channel":"news","message":{"headline":"hi"}})),
    )
    .await;
    assert_eq!(status, 200, "{res}");
    let m = ws.recv_type("message").await;
    assert_eq!(m["message"]["headline"], "hi");
    assert_eq!(m["offset"], res["offset"]);
    assert!(
        m.get("from_user").is_none(),
        "server-side publishes have no from_user"
    );

    // The legacy channels of the original design.
    let mut r = redis.conn().await;
    let _: () = redis::cmd("PUBLISH")
        .arg("system_notifications")
        .arg(
            json!({"content":"maintenance at noon","timestamp":"2026-01-01T00:00:00Z"}).to_string(),
        )
        .query_async(&mut r)
        .await
        .expect("publish");
    let s = ws.recv_type("system_notification").await;
    assert_eq!(
        (s["channel"].as_str(), s["message"].as_str()),
        (Some("system"), Some("maintenance at noon"))
    );
    let _: () = redis::cmd("PUBLISH")
        .arg("user_messages")
        .arg(json!({"user_id":"bob","target_channel":"user:ann","content":"hello ann"}).to_string())
        .query_async(&mut r)
        .await
        .expect("publish");
    let u = ws.recv_type("user_message").await;
    assert_eq!(
        (
            u["channel"].as_str(),
            u["user_id"].as_str(),
            u["content"].as_str()
        ),
        (Some("user:ann"), Some("bob"), Some("hello ann"))
    );

    // A background job's result.
    let (status, job) = http_json(
        Method::POST,
        &format!("{}/v1/jobs", bc.http()),
        Some(API_KEY),
        Some(json!({"job_type":"data_processing","data":[1,2,3,4],"target_channel":"jobs"})),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let p = ws.recv_type("processing_result").await;
    assert_eq!(p["job_id"], job["job_id"]);
    assert_eq!(
        (p["status"].as_str(), p["channel"].as_str()),
        (Some("done"), Some("jobs"))
    );
    assert_eq!(p["result"]["sum"].as_f64(), Some(10.0), "{p}");
}
