//! Admin endpoints bound to their own listener (`HERALD_ADMIN_LISTEN`): absent from
//! the public one, working (with the key) on the private one. The services run as
//! binaries: given port 0, the address they bound for admin is in their log.

use reqwest::Method;
use serde_json::json;

use crate::{ADMIN_KEY, Redis, ServiceBuilder, eventually, http_json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_can_live_on_a_separate_listener() {
    let redis = Redis::start().await;
    let auth = ServiceBuilder::new("auth-svc")
        .redis(&redis)
        .env("HERALD_ADMIN_LISTEN", "127.0.0.1:0")
        .process()
        .spawn()
        .await;
    let auth_admin = eventually("auth-svc's admin address", || async { auth.admin_addr() }).await;
    let user = json!({"username":"adm","password":"long enough pw","channels":[],"publish":[]});
    let (status, _) = http_json(
        Method::POST,
        &format!("{}/v1/users", auth.http()),
        Some(ADMIN_KEY),
        Some(user.clone()),
    )
    .await;
    assert_eq!(status, 404, "users are not served on the public listener");
    let (status, _) = http_json(
        Method::POST,
        &format!("http://{auth_admin}/v1/users"),
        None,
        Some(user.clone()),
    )
    .await;
    assert_eq!(
        status, 401,
        "the key is still required on the admin listener"
    );
    let (status, body) = http_json(
        Method::POST,
        &format!("http://{auth_admin}/v1/users"),
        Some(ADMIN_KEY),
        Some(user),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    // Login stays public.
    let (status, _) = http_json(
        Method::POST,
        &format!("{}/v1/token", auth.http()),
        None,
        Some(json!({"username":"adm","password":"long enough pw"})),
    )
    .await;
    assert_eq!(status, 200);

    let monitor = ServiceBuilder::new("monitor")
        .redis(&redis)
        .env("HERALD_ADMIN_LISTEN", "127.0.0.1:0")
        .process()
        .spawn()
        .await;
    let mon_admin = eventually("monitor's admin address", || async { monitor.admin_addr() }).await;
    let (status, _) = http_json(
        Method::POST,
        &format!("{}/api/v1/users/adm/disconnect", monitor.http()),
        Some(ADMIN_KEY),
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = http_json(
        Method::POST,
        &format!("http://{mon_admin}/api/v1/users/adm/disconnect"),
        Some(ADMIN_KEY),
        None,
    )
    .await;
    assert_eq!(status, 202);
    let (status, _) = http_json(
        Method::GET,
        &format!("{}/api/v1/overview", monitor.http()),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
}
