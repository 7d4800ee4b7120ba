//! What ws-gateway refuses before a connection is established: node capacity,
//! origins, oversized or slow handshakes, the per-IP connection cap and attempt rate
//! (cluster-wide), and how `herald.v1` clients learn of a refusal.

use std::time::Duration;

use serde_json::json;

use super::gateway::gateway;
use crate::{Backend, Redis, ServiceBuilder, Ws, eventually, token, within};

async fn node_capacity_and_origin_checks(backend: Backend) {
    let gw = gateway(&backend)
        .env("HERALD_MAX_CONNECTIONS", "2")
        .env("HERALD_ALLOWED_ORIGINS", "https://app.example")
        .spawn()
        .await;
    let t = token("cap", &[], &[]);
    let (_a, _) = Ws::auth(&gw, &t, &[]).await;
    let (_b, _) = Ws::auth(&gw, &t, &[]).await;
    assert_eq!(Ws::try_connect(&gw.ws(), &[]).await.err(), Some(503));
    drop((_a, _b));
    let gw2 = gateway(&backend)
        .env("HERALD_ALLOWED_ORIGINS", "https://app.example")
        .spawn()
        .await;
    assert_eq!(
        Ws::try_connect(&gw2.ws(), &[("origin", "https://evil.example")])
            .await
            .err(),
        Some(403)
    );
    let mut ok = Ws::try_connect(&gw2.ws(), &[("origin", "https://app.example")])
        .await
        .expect("allowed origin");
    ok.send(json!({"token": t})).await;
    ok.recv_type("auth_success").await;
    // Without an allow-list, browsers (requests with Origin) are refused outside dev mode.
    let gw3 = gateway(&backend).spawn().await;
    assert_eq!(
        Ws::try_connect(&gw3.ws(), &[("origin", "https://app.example")])
            .await
            .err(),
        Some(403)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_limits_oversized_heads_and_slow_clients() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let redis = Redis::start().await;
    let gw = gateway(&redis)
        .env("HERALD_HANDSHAKE_TIMEOUT_MS", "500")
        .spawn()
        .await;
    let head = |extra: &str| {
        format!(
            "GET /ws?{extra} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        )
    };
    // Headers over 16 KiB: 431 before any upgrade.
    let mut s = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let big = format!("{}X-Pad: {}\r\n\r\n", head(""), "a".repeat(20 * 1024));
    let _ = s.write_all(big.as_bytes()).await;
    let mut buf = vec![0u8; 256];
    let n = within("the 431 answer", s.read(&mut buf))
        .await
        .expect("read");
    let status = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(status.starts_with("HTTP/1.1 431"), "{status}");
    // So is a 20 KiB query string.
    let mut s = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let long = format!("{}\r\n", head(&"q".repeat(20 * 1024)));
    let _ = s.write_all(long.as_bytes()).await;
    let n = within("the answer to a long query", s.read(&mut buf))
        .await
        .expect("read");
    let status = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        status.starts_with("HTTP/1.1 431") || status.starts_with("HTTP/1.1 414"),
        "{status}"
    );
    // A client that never finishes its request is dropped after the handshake timeout.
    let mut s = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    s.write_all(head("").as_bytes()).await.expect("write");
    let started = std::time::Instant::now();
    let n = within("the slow client to be dropped", s.read(&mut buf))
        .await
        .unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// A client offering the `herald.v1` subprotocol gets handshake refusals as a
/// `disconnect` frame and close code 4000 + the status; others keep the HTTP status, and
/// an accepted `herald.v1` connection has the subprotocol echoed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_v1_clients_get_refusals_as_close_codes() {
    let redis = Redis::start().await;
    let gw = ServiceBuilder::new("ws-gateway")
        .redis(&redis)
        .env("HERALD_ALLOWED_ORIGINS", "https://app.example")
        .env("HERALD_MAX_CONNECTIONS_PER_IP", "1")
        .spawn()
        .await;
    let v1 = ("sec-websocket-protocol", "herald.v1");

    // An origin not allowed: plain 403, or 4403 for herald.v1, final.
    let evil = ("origin", "https://evil.example");
    assert_eq!(Ws::try_connect(&gw.ws(), &[evil]).await.err(), Some(403));
    let mut ws = Ws::try_connect(&gw.ws(), &[evil, v1])
        .await
        .expect("the upgrade completes");
    let (closed, frames) = ws.closed().await;
    assert_eq!((closed.code, closed.reason.as_str()), (4403, "forbidden"));
    assert_eq!(
        frames,
        [
            json!({"type":"disconnect","code":"forbidden","reason":"origin not allowed","reconnect":false})
        ]
    );

    // A refused token in the URL: 4401.
    let mut ws = Ws::try_connect(&format!("{}?token=not-a-jwt", gw.ws()), &[v1])
        .await
        .expect("the upgrade completes");
    let (closed, frames) = ws.closed().await;
    assert_eq!(closed.code, 4401);
    assert_eq!(frames[0]["code"], "authentication_failed");
    assert_eq!(frames[0]["reconnect"], false);

    // Accepted: the subprotocol is echoed (browsers fail the socket otherwise).
    let ok = ("origin", "https://app.example");
    let t = token("ann", &["news"], &[]);
    let (inner, resp) = {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = gw.ws().into_client_request().expect("request");
        req.headers_mut().insert("origin", ok.1.parse().unwrap());
        req.headers_mut().insert(v1.0, v1.1.parse().unwrap());
        within("handshake", tokio_tungstenite::connect_async(req))
            .await
            .expect("accepted")
    };
    assert_eq!(resp.headers()["sec-websocket-protocol"], "herald.v1");
    let mut first = Ws { inner };
    first.send(json!({"type":"auth","token":t})).await;
    first.recv_type("auth_success").await;

    // Over the per-IP limit (1): temporary, with a retry time.
    let mut ws = Ws::try_connect(&gw.ws(), &[ok, v1])
        .await
        .expect("the upgrade completes");
    let (closed, frames) = ws.closed().await;
    assert_eq!(closed.code, 4429);
    assert_eq!(frames[0]["code"], "rate_limited");
    assert_eq!(frames[0]["reconnect"], true);
    assert_eq!(frames[0]["retry_after_ms"], 1000);
    assert_eq!(Ws::try_connect(&gw.ws(), &[ok]).await.err(), Some(429));
}

async fn per_ip_connection_cap_holds_across_gateways(backend: Backend) {
    let gw1 = gateway(&backend)
        .env("HERALD_MAX_CONNECTIONS_PER_IP", "3")
        .spawn()
        .await;
    let gw2 = gateway(&backend)
        .env("HERALD_MAX_CONNECTIONS_PER_IP", "3")
        .spawn()
        .await;
    let t = token("ip", &[], &[]);
    let (a, _) = Ws::auth(&gw1, &t, &[]).await;
    let (_b, _) = Ws::auth(&gw1, &t, &[]).await;
    let (_c, _) = Ws::auth(&gw2, &t, &[]).await;
    assert_eq!(Ws::try_connect(&gw2.ws(), &[]).await.err(), Some(429));
    assert_eq!(Ws::try_connect(&gw1.ws(), &[]).await.err(), Some(429));
    // Closing one frees a slot cluster-wide.
    a.close().await;
    let ws = eventually("a freed slot", || async {
        Ws::try_connect(&gw2.ws(), &[]).await.ok()
    })
    .await;
    drop(ws);
}

async fn connect_rate_per_ip(backend: Backend) {
    // Two gateways share the per-IP attempt budget through Redis.
    let gw1 = gateway(&backend)
        .env("HERALD_CONNECT_RATE_PER_IP", "5")
        .spawn()
        .await;
    let gw2 = gateway(&backend)
        .env("HERALD_CONNECT_RATE_PER_IP", "5")
        .spawn()
        .await;
    // Attempts are counted per wall-clock second: start just after one begins (a wait
    // for the clock, not for the gateways).
    let into = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .subsec_millis();
    tokio::time::sleep(Duration::from_millis(u64::from(1000 - into) + 5)).await;
    let mut refused = 0;
    let mut open = Vec::new();
    for i in 0..12 {
        let gw = if i % 2 == 0 { &gw1 } else { &gw2 };
        match Ws::try_connect(&gw.ws(), &[]).await {
            Ok(ws) => open.push(ws),
            Err(status) => {
                assert_eq!(status, 429);
                refused += 1;
            }
        }
    }
    assert!(refused >= 5, "refused {refused} of 12");
}

crate::both_engines!(
    node_capacity_and_origin_checks,
    per_ip_connection_cap_holds_across_gateways,
    connect_rate_per_ip,
);
