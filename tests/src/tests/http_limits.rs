//! The limits every HTTP listener has (a slow request head is dropped, an oversized
//! one gets 431, the connection cap closes new connections and leaves served ones
//! alone, bodies over the limit get 413, shutdown drains), checked against every
//! service; and what a refused credential is told and what the gateway logs about it.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{
    ADMIN_KEY, API_KEY, Redis, Service, ServiceBuilder, TEST_SECRET, Ws, bin_path, eventually,
    listening_addr, run_bin, signal, token, token_with, unread_bytes, within,
};

const SERVICES: [&str; 4] = ["auth-svc", "broadcaster", "monitor", "ws-gateway"];

/// The gateway names its limits after its handshake; the other services use
/// `HERALD_HTTP_*`.
fn header_timeout_var(name: &str) -> &'static str {
    if name == "ws-gateway" {
        "HERALD_HANDSHAKE_TIMEOUT_MS"
    } else {
        "HERALD_HTTP_HEADER_TIMEOUT_MS"
    }
}

fn max_connections_var(name: &str) -> &'static str {
    if name == "ws-gateway" {
        "HERALD_MAX_CONNECTIONS"
    } else {
        "HERALD_HTTP_MAX_CONNECTIONS"
    }
}

fn service(name: &str, redis: &Redis) -> ServiceBuilder {
    // The monitor probes every registered node, itself included; an address nobody
    // listens on keeps its probe from holding one of its own connections.
    ServiceBuilder::new(name)
        .redis(redis)
        .env("HERALD_ADVERTISE_ADDR", "127.0.0.1:9")
}

async fn connect(svc: &Service) -> TcpStream {
    within("a TCP connection", TcpStream::connect(svc.addr))
        .await
        .expect("connect")
}

/// Reads one response head; `None` when the connection ends (or fails) first.
async fn read_head(s: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match within("a response", s.read(&mut byte)).await {
            Ok(1) => buf.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

fn status_of(head: &str) -> u16 {
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a response head: {head:?}"))
}

/// Sends `request` and reads the whole response (the body by its Content-Length);
/// `None` when the connection ends first.
async fn exchange(s: &mut TcpStream, request: &str) -> Option<(u16, String)> {
    s.write_all(request.as_bytes()).await.ok()?;
    let head = read_head(s).await?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    within("a response body", s.read_exact(&mut body))
        .await
        .ok()?;
    Some((
        status_of(&head),
        String::from_utf8_lossy(&body).into_owned(),
    ))
}

const HEALTHZ: &str = "GET /healthz HTTP/1.1\r\nHost: herald\r\n\r\n";

/// Waits until the server closes `s`; returns what it sent before and how long it took.
async fn until_closed(s: &mut TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match within("the server to close the connection", s.read(&mut buf)).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    (
        String::from_utf8_lossy(&got).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_sent_too_slowly_is_dropped_on_every_service() {
    let redis = Redis::start().await;
    join_all(SERVICES.map(|name| {
        let redis = &redis;
        async move {
            let svc = service(name, redis)
                .env(header_timeout_var(name), "500")
                .spawn()
                .await;
            // Half a request head, many times over: each is closed after the timeout,
            // and the service answers others meanwhile.
            let mut slow = Vec::new();
            for _ in 0..50 {
                let mut s = connect(&svc).await;
                s.write_all(b"GET /healthz HTTP/1.1\r\nHost: herald\r\n")
                    .await
                    .expect("write");
                slow.push(s);
            }
            let mut fresh = connect(&svc).await;
            let started = Instant::now();
            let (status, _) = exchange(&mut fresh, HEALTHZ).await.expect("healthz");
            assert_eq!(status, 200, "{name}");
            assert!(started.elapsed() < Duration::from_secs(2), "{name}");
            drop(fresh);
            for s in &mut slow {
                let (sent, took) = until_closed(s).await;
                assert!(
                    sent.is_empty() || sent.starts_with("HTTP/1.1 408"),
                    "{name}: {sent}"
                );
                assert!(
                    took < Duration::from_secs(3),
                    "{name}: closed after {took:?}"
                );
            }
            // A connection that never sends anything, and a keep-alive connection left
            // idle after a request, are closed the same way.
            let mut silent = connect(&svc).await;
            let (_, took) = until_closed(&mut silent).await;
            assert!(
                took >= Duration::from_millis(300) && took < Duration::from_secs(3),
                "{name}: {took:?}"
            );
            let mut idle = connect(&svc).await;
            let (status, _) = exchange(&mut idle, HEALTHZ).await.expect("keep-alive");
            assert_eq!(status, 200, "{name}");
            let (sent, took) = until_closed(&mut idle).await;
            assert!(sent.is_empty(), "{name}: {sent}");
            assert!(
                took >= Duration::from_millis(300) && took < Duration::from_secs(3),
                "{name}: {took:?}"
            );
        }
    }))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_response_outlives_the_header_timeout() {
    // The timeout covers reading a request head, not the answer: the monitor's event
    // stream keeps flowing long after it.
    let redis = Redis::start().await;
    let m = service("monitor", &redis)
        .env("HERALD_HTTP_HEADER_TIMEOUT_MS", "300")
        .spawn()
        .await;
    let mut resp = within(
        "the stream",
        reqwest::Client::new()
            .get(format!("{}/api/v1/stream", m.http()))
            .send(),
    )
    .await
    .expect("stream");
    let started = Instant::now();
    let mut events = 0;
    while started.elapsed() < Duration::from_millis(2500) {
        let chunk = within("an event", resp.chunk())
            .await
            .expect("chunk")
            .expect("the stream stays open");
        events += String::from_utf8_lossy(&chunk)
            .matches("event: overview")
            .count();
    }
    assert!(events >= 2, "{events} events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_head_gets_431_on_every_service() {
    let redis = Redis::start().await;
    join_all(SERVICES.map(|name| {
        let redis = &redis;
        async move {
            let svc = service(name, redis).spawn().await;
            // 8 KiB of cookies is an ordinary request.
            let mut s = connect(&svc).await;
            let ordinary = format!(
                "GET /healthz HTTP/1.1\r\nHost: herald\r\nCookie: {}\r\n\r\n",
                "c".repeat(8 * 1024)
            );
            let (status, _) = exchange(&mut s, &ordinary).await.expect("healthz");
            assert_eq!(status, 200, "{name}");
            // 200 KB is not. The server stops reading long before the client stops
            // writing, so the head is written from another task.
            let s = connect(&svc).await;
            let (mut rd, mut wr) = s.into_split();
            let big = format!(
                "GET /healthz HTTP/1.1\r\nHost: herald\r\nX-Pad: {}\r\n\r\n",
                "a".repeat(200 * 1024)
            );
            let writer = tokio::spawn(async move {
                let _ = wr.write_all(big.as_bytes()).await;
                wr
            });
            let mut buf = vec![0u8; 256];
            let n = within("the 431 answer", rd.read(&mut buf))
                .await
                .expect("read");
            let head = String::from_utf8_lossy(&buf[..n]).into_owned();
            assert!(head.starts_with("HTTP/1.1 431"), "{name}: {head:?}");
            drop(writer);
        }
    }))
    .await;
}

/// A connection on which `/healthz` was answered, kept open (keep-alive).
async fn served(svc: &Service) -> TcpStream {
    eventually("a connection the service serves", || async {
        let mut s = TcpStream::connect(svc.addr).await.ok()?;
        let (status, _) = exchange(&mut s, HEALTHZ).await?;
        (status == 200).then_some(s)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_closed_and_served_ones_keep_working() {
    const CAP: usize = 3;
    let redis = Redis::start().await;
    join_all(SERVICES.map(|name| {
        let redis = &redis;
        async move {
            let svc = service(name, redis)
                .env(max_connections_var(name), &CAP.to_string())
                .env(header_timeout_var(name), "60000")
                .spawn()
                .await;
            let mut held = Vec::new();
            for _ in 0..CAP {
                held.push(served(&svc).await);
            }
            // Every slot is taken: the next connection is closed unanswered.
            for _ in 0..3 {
                let mut extra = connect(&svc).await;
                let _ = extra.write_all(HEALTHZ.as_bytes()).await;
                let (sent, _) = until_closed(&mut extra).await;
                assert!(sent.is_empty(), "{name}: {sent}");
            }
            // The connections already served still are.
            for s in &mut held {
                let (status, _) = exchange(s, HEALTHZ).await.expect("held connection");
                assert_eq!(status, 200, "{name}");
            }
            // A freed slot serves the next connection.
            drop(held.pop());
            let mut next = served(&svc).await;
            let (status, _) = exchange(&mut next, HEALTHZ).await.expect("next");
            assert_eq!(status, 200, "{name}");
        }
    }))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgraded_websockets_count_against_the_node_cap_not_the_http_cap() {
    let redis = Redis::start().await;
    let gw = service("ws-gateway", &redis)
        .env("HERALD_MAX_CONNECTIONS", "3")
        .spawn()
        .await;
    let mut sockets = Vec::new();
    for i in 0..3 {
        let (ws, _) = Ws::auth(&gw, &token(&format!("u{i}"), &["*"], &[]), &[]).await;
        sockets.push(ws);
    }
    // Three live sockets fill the node, yet plain HTTP is still served...
    let mut s = served(&gw).await;
    let (status, _) = exchange(&mut s, HEALTHZ).await.expect("healthz");
    assert_eq!(status, 200);
    drop(s);
    // ...and a fourth socket is told the node is full (503), not cut off.
    let refused = eventually("the fourth handshake to be answered", || async {
        Ws::try_connect(&gw.ws(), &[]).await.err()
    })
    .await;
    assert_eq!(refused, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_gets_413_on_every_service() {
    let redis = Redis::start().await;
    join_all(SERVICES.map(|name| {
        let redis = &redis;
        async move {
            let svc = service(name, redis).spawn().await;
            let (path, key) = match name {
                "auth-svc" => ("/v1/token", ADMIN_KEY),
                "broadcaster" => ("/v1/publish", API_KEY),
                "monitor" => ("/api/v1/users/bob/disconnect", ADMIN_KEY),
                _ => ("/ws", ""),
            };
            let mut s = connect(&svc).await;
            let request = format!(
                "POST {path} HTTP/1.1\r\nHost: herald\r\nAuthorization: Bearer {key}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                2 * 1024 * 1024
            );
            let (status, _) = exchange(&mut s, &request).await.expect("an answer");
            assert_eq!(status, 413, "{name}");
        }
    }))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_request_in_flight_finish() {
    let redis = Redis::start().await;
    let mut bc = service("broadcaster", &redis).process().spawn().await;
    let body = json!({"channel": "drain", "message": "x".repeat(1000)}).to_string();
    let (first, rest) = body.split_at(body.len() / 2);
    let mut s = connect(&bc).await;
    let head = format!(
        "POST /v1/publish HTTP/1.1\r\nHost: herald\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("write");
    s.write_all(first.as_bytes()).await.expect("write");
    // In flight: the broadcaster has read everything sent so far.
    eventually("the broadcaster to read the request so far", || async {
        (unread_bytes(bc.addr) == 0).then_some(())
    })
    .await;
    let pid = i32::try_from(bc.pid().expect("pid")).expect("pid");
    signal(pid, 15);
    // New connections are refused while the request in flight is still served.
    eventually("the listener to close", || async {
        TcpStream::connect(bc.addr).await.is_err().then_some(())
    })
    .await;
    s.write_all(rest.as_bytes()).await.expect("write the rest");
    let head = read_head(&mut s).await.expect("the publish answer");
    assert_eq!(status_of(&head), 200, "{head}");
    assert_eq!(bc.terminate().await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_http_limits_are_configuration_errors() {
    for name in ["auth-svc", "broadcaster", "monitor"] {
        let (code, _, err) = run_bin(
            name,
            &[],
            &[
                ("HERALD_HTTP_MAX_CONNECTIONS", "0"),
                ("HERALD_HTTP_HEADER_TIMEOUT_MS", "0"),
            ],
        )
        .await;
        assert_eq!(code, 64, "{name}: {err}");
        assert!(
            err.contains("HERALD_HTTP_MAX_CONNECTIONS")
                && err.contains("HERALD_HTTP_HEADER_TIMEOUT_MS"),
            "{name}: {err}"
        );
    }
}

// === Refused credentials ===

/// (status, body, WWW-Authenticate) of a call with this Authorization header.
async fn call(method: Method, url: &str, authorization: Option<&str>) -> (u16, Value, String) {
    let mut req = reqwest::Client::new()
        .request(method, url)
        .header("content-type", "application/json")
        .body("{}");
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    let resp = within("an HTTP answer", req.send()).await.expect("request");
    let status = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let text = within("a body", resp.text()).await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        challenge,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_key_is_told_what_was_expected() {
    let redis = Redis::start().await;
    let wrong = "wrong-key-0123456789";
    join_all(
        [
            (
                "broadcaster",
                Method::POST,
                "/v1/publish",
                API_KEY,
                "API key",
            ),
            ("auth-svc", Method::GET, "/v1/users", ADMIN_KEY, "admin key"),
            (
                "monitor",
                Method::POST,
                "/api/v1/users/bob/disconnect",
                ADMIN_KEY,
                "admin key",
            ),
        ]
        .map(|(name, method, path, key, what)| {
            let redis = &redis;
            async move {
                let svc = service(name, redis).spawn().await;
                let url = format!("{}{path}", svc.http());
                let expected = format!("expected `Authorization: Bearer <{what}>`");
                let basic = format!("Basic {key}");
                for (header, message) in [
                    (None, expected.as_str()),
                    (Some(key), expected.as_str()),
                    (Some(basic.as_str()), expected.as_str()),
                    (Some("Bearer "), expected.as_str()),
                    (
                        Some(&*format!("Bearer {wrong}")),
                        &*format!("invalid {what}"),
                    ),
                ] {
                    let (status, body, challenge) = call(method.clone(), &url, header).await;
                    assert_eq!(status, 401, "{name} {header:?}: {body}");
                    assert_eq!(body["error"]["code"], "unauthorized", "{name}");
                    assert_eq!(body["error"]["message"], message, "{name} {header:?}");
                    assert_eq!(challenge, "Bearer", "{name}");
                    assert!(!body.to_string().contains(wrong), "{name}: {body}");
                }
                let (status, _, _) = call(method, &url, Some(&format!("Bearer {key}"))).await;
                assert_ne!(status, 401, "{name}");
            }
        }),
    )
    .await;
    // Without a key configured, the answer names the setting.
    let bc = service("broadcaster", &redis)
        .env("HERALD_API_KEY", "")
        .spawn()
        .await;
    let (status, body, _) = call(
        Method::POST,
        &format!("{}/v1/publish", bc.http()),
        Some(&format!("Bearer {API_KEY}")),
    )
    .await;
    assert_eq!(status, 401);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("HERALD_API_KEY")),
        "{body}"
    );
}

/// Removes terminal colour sequences (`ESC [ … m`).
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_websocket_login_is_logged_with_reason_and_address_but_no_token() {
    let redis = Redis::start().await;
    // Started here rather than through the harness, to read its stderr at the
    // default log level.
    let mut child = tokio::process::Command::new(bin_path("ws-gateway"))
        .env_remove("HERALD_LOG")
        .env_remove("RUST_LOG")
        .env("HERALD_LISTEN", "127.0.0.1:0")
        .env("HERALD_REDIS_URL", redis.url())
        .env("HERALD_JWT_SECRET", TEST_SECRET)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn ws-gateway");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let sink = lines.clone();
    let reader = tokio::spawn(async move {
        while let Ok(Some(l)) = stderr.next_line().await {
            sink.lock().expect("lines").push(plain(&l));
        }
    });
    let addr = eventually("ws-gateway to log its address", || async {
        lines
            .lock()
            .expect("lines")
            .iter()
            .find_map(|l| listening_addr(l))
    })
    .await;
    let http = format!("http://{addr}");
    eventually("ws-gateway /healthz", || async {
        let r = reqwest::get(format!("{http}/healthz")).await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    let ws = format!("ws://{addr}/ws");

    let expired = token_with(json!({
        "sub": "eve", "channels": ["*"], "exp": 1_000_000_000u64, "iat": 999_999_000u64,
        "iss": "herald-auth", "aud": "herald",
    }));
    let forged = {
        let good = token("eve", &["*"], &[]);
        let (rest, _) = good.rsplit_once('.').expect("a JWT");
        format!("{rest}.c2lnbmF0dXJlLWZyb20tc29tZW9uZS1lbHNl")
    };
    let garbage = "not-a-jwt-but-secret-9f8e7d";
    // At the handshake, by header and by query; then in the first frame.
    let bearer = format!("Bearer {expired}");
    assert_eq!(
        Ws::try_connect(&ws, &[("authorization", bearer.as_str())])
            .await
            .err(),
        Some(401)
    );
    assert_eq!(
        Ws::try_connect(&format!("{ws}?token={garbage}"), &[])
            .await
            .err(),
        Some(401)
    );
    let mut c = Ws::connect(&ws).await;
    c.send(json!({"type": "auth", "token": forged})).await;
    let (closed, _) = c.closed().await;
    assert_eq!(closed.code, 1008);

    let logged = |reason: &'static str| {
        let lines = lines.clone();
        move || {
            let lines = lines.clone();
            async move {
                lines
                    .lock()
                    .expect("lines")
                    .iter()
                    .find(|l| l.contains("login refused") && l.contains(reason))
                    .cloned()
            }
        }
    };
    for reason in ["expired", "malformed", "bad_signature"] {
        let line = eventually(&format!("a log line for {reason}"), logged(reason)).await;
        assert!(line.contains("127.0.0.1"), "{line}");
        assert!(line.contains("INFO") || line.contains("WARN"), "{line}");
    }
    let signature = |t: &str| t.rsplit('.').next().unwrap_or(t).to_owned();
    for l in lines.lock().expect("lines").iter() {
        for secret in [
            expired.as_str(),
            forged.as_str(),
            garbage,
            &signature(&expired),
            &signature(&forged),
        ] {
            assert!(!l.contains(secret), "a token was logged: {l}");
        }
    }
    drop(child);
    reader.abort();
}
