//! The harness itself: an in-process service stops and restarts on its address, as the
//! scenarios that restart one rely on.

use crate::{Redis, ServiceBuilder, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_service_restarts_on_its_address_and_stops_when_killed() {
    let redis = Redis::start().await;
    let mut gw = ServiceBuilder::new("ws-gateway")
        .redis(&redis)
        .spawn()
        .await;
    let addr = gw.addr;
    gw.restart().await;
    assert_eq!(gw.addr, addr, "a restart keeps the address");
    let (status, _) = crate::http_json(
        reqwest::Method::GET,
        &format!("{}/healthz", gw.http()),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
    gw.kill().await;
    eventually("the killed service to stop accepting", || async {
        tokio::net::TcpStream::connect(addr).await.err()
    })
    .await;
}
