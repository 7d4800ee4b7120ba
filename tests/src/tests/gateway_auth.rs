//! How ws-gateway authenticates: tokens at the handshake (header, query) or in the
//! first frame, every way a token can be wrong, EdDSA keys from a JWKS (cached
//! through its outages), and what ends an authenticated connection (expiry,
//! revocation, an admin disconnect, silence).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;

use super::gateway::{gateway, metric, now};
use crate::{
    Backend, Redis, Service, Store, Ws, eventually, serve_json, token, token_with, within,
};

/// A fixed Ed25519 key for tests (generated once with openssl; not a secret).
const TEST_ED25519_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIPufUHCNl0tUVBEe0QpyOaPiJ8g6J3rf93izWyOZL4M8\n-----END PRIVATE KEY-----\n";
/// Its public key, as a JWK `x`.
const TEST_ED25519_X: &str = "zKapNbIGb1JSYfcvyUK8oIhr8d1TpL6Fr9kpfgTrqi8";

/// A gateway in EdDSA mode whose JWKS (key `k1`, [`TEST_ED25519_X`]) comes from a
/// local key server; returns the gateway, the JWKS URL and the key server's task.
async fn eddsa_gateway(store: &impl Store) -> (Service, String, tokio::task::JoinHandle<()>) {
    let jwks = json!({"keys":[{"kty":"OKP","crv":"Ed25519","x":TEST_ED25519_X,"kid":"k1","alg":"EdDSA","use":"sig"}]});
    let (url, server) = serve_json(jwks.to_string()).await;
    let gw = gateway(store)
        .env("HERALD_JWT_ALG", "EdDSA")
        .env("HERALD_JWKS_URL", &url)
        .spawn()
        .await;
    (gw, url, server)
}

async fn handshake_auth_header_and_query(backend: Backend) {
    let gw = gateway(&backend).spawn().await;
    let t = token("hq", &["news"], &[]);
    let url = format!("{}?token={t}&channels=news,system", gw.ws());
    let mut ws = Ws::connect(&url).await;
    let ok = ws.recv_type("auth_success").await;
    assert_eq!(ok["channels"], json!(["news", "system"]));
    let auth = format!("Bearer {t}");
    let mut ws = Ws::try_connect(&gw.ws(), &[("authorization", &auth)])
        .await
        .expect("header auth");
    assert_eq!(ws.recv_type("auth_success").await["user_id"], "hq");
    // A bad token at the handshake is refused before the upgrade.
    assert_eq!(
        Ws::try_connect(&format!("{}?token=nope", gw.ws()), &[])
            .await
            .err(),
        Some(401)
    );
    assert_eq!(
        Ws::try_connect(&gw.ws(), &[("authorization", "Bearer x.y.z")])
            .await
            .err(),
        Some(401)
    );
}

/// Every way a first-frame token can be wrong closes with 1008.
async fn auth_failures_close_1008(backend: Backend) {
    use base64::Engine;
    let gw = gateway(&backend)
        .env("HERALD_AUTH_TIMEOUT_MS", "500")
        .env("HERALD_JWT_LEEWAY_S", "0")
        .spawn()
        .await;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims = json!({"sub":"u","exp":now()+60,"iss":"herald-auth","aud":"herald"});
    let alg_none = format!(
        "{}.{}.",
        b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(claims.to_string())
    );
    let other_secret = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"not-the-secret-at-all"),
    )
    .expect("token");
    let ed = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
        &claims,
        &jsonwebtoken::EncodingKey::from_ed_pem(TEST_ED25519_PEM.as_bytes()).expect("key"),
    )
    .expect("token");
    let bad = [
        ("garbage", "not-a-jwt".to_owned()),
        ("alg none", alg_none),
        ("wrong secret", other_secret),
        ("asymmetric alg on an HS256 gateway", ed),
        (
            "expired",
            token_with(json!({"sub":"u","exp":now()-10,"iss":"herald-auth","aud":"herald"})),
        ),
        (
            "missing exp",
            token_with(json!({"sub":"u","iss":"herald-auth","aud":"herald"})),
        ),
        (
            "nbf in the future",
            token_with(
                json!({"sub":"u","exp":now()+60,"nbf":now()+60,"iss":"herald-auth","aud":"herald"}),
            ),
        ),
        (
            "wrong iss",
            token_with(json!({"sub":"u","exp":now()+60,"iss":"evil","aud":"herald"})),
        ),
        (
            "wrong aud",
            token_with(json!({"sub":"u","exp":now()+60,"iss":"herald-auth","aud":"other"})),
        ),
        (
            "no subject",
            token_with(json!({"exp":now()+60,"iss":"herald-auth","aud":"herald"})),
        ),
    ];
    for (what, t) in bad {
        let mut ws = Ws::connect(&gw.ws()).await;
        ws.send(json!({"type":"auth","token":t})).await;
        let (closed, frames) = ws.closed().await;
        assert_eq!(closed.code, 1008, "{what}");
        assert_eq!(closed.reason, "authentication failed", "{what}");
        assert!(frames.is_empty(), "{what}: {frames:?}");
    }
    // A first frame that is not an auth frame.
    let mut ws = Ws::connect(&gw.ws()).await;
    ws.send(json!({"type":"ping"})).await;
    assert_eq!(ws.closed().await.0.code, 1008);
    // Silence: authentication timeout.
    let mut ws = Ws::connect(&gw.ws()).await;
    let (closed, _) = ws.closed().await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (1008, "authentication timeout")
    );
    // A revoked token.
    let t = token_with(
        json!({"sub":"u","exp":now()+60,"iss":"herald-auth","aud":"herald","jti":"gone"}),
    );
    let keys = herald_common::keys::Keys::new("herald:");
    within(
        "a revocation",
        backend.engine().await.revoke(&keys, "gone", 60_000),
    )
    .await
    .expect("revoked");
    let mut ws = Ws::connect(&gw.ws()).await;
    ws.send(json!({"type":"auth","token":t})).await;
    assert_eq!(ws.closed().await.0.code, 1008);
}

/// EdDSA mode: keys from a JWKS URL; an HMAC token "signed" with the public key
/// (algorithm confusion) and an unknown `kid` are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eddsa_mode_and_algorithm_confusion() {
    let redis = Redis::start().await;
    let (gw, _, server) = eddsa_gateway(&redis).await;
    let claims =
        json!({"sub":"ed","exp":now()+60,"iss":"herald-auth","aud":"herald","channels":["news"]});
    let key = jsonwebtoken::EncodingKey::from_ed_pem(TEST_ED25519_PEM.as_bytes()).expect("key");
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some("k1".to_owned());
    let good = jsonwebtoken::encode(&header, &claims, &key).expect("token");
    let (_ws, ok) = Ws::auth(&gw, &good, &["news"]).await;
    assert_eq!(ok["user_id"], "ed");

    header.kid = Some("unknown".to_owned());
    let unknown_kid = jsonwebtoken::encode(&header, &claims, &key).expect("token");
    let mut hs = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs.kid = Some("k1".to_owned());
    let confused = jsonwebtoken::encode(
        &hs,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(TEST_ED25519_X.as_bytes()),
    )
    .expect("token");
    for (what, t) in [
        ("unknown kid", unknown_kid),
        ("HS256 with the public key", confused),
    ] {
        let mut ws = Ws::connect(&gw.ws()).await;
        ws.send(json!({"token": t})).await;
        assert_eq!(ws.closed().await.0.code, 1008, "{what}");
    }
    server.abort();
}

/// The JWKS endpoint going away or hanging: keys already fetched keep working, an
/// unknown `kid` is refused, and other clients are served while a fetch hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_outage_keeps_cached_keys_and_never_blocks() {
    let redis = Redis::start().await;
    let (gw, url, server) = eddsa_gateway(&redis).await;
    let key = jsonwebtoken::EncodingKey::from_ed_pem(TEST_ED25519_PEM.as_bytes()).expect("key");
    let sign = |kid: &str| {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some(kid.to_owned());
        let claims = json!({"sub":"ed","exp":now()+60,"iss":"herald-auth","aud":"herald"});
        jsonwebtoken::encode(&header, &claims, &key).expect("token")
    };
    let (_first, _) = Ws::auth(&gw, &sign("k1"), &[]).await;
    // The key server now accepts connections and never answers.
    server.abort();
    let _ = server.await;
    let addr = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .expect("addr")
        .to_owned();
    let hang = tokio::net::TcpListener::bind(&addr)
        .await
        .expect("rebind the JWKS port");
    let fetches = Arc::new(AtomicUsize::new(0));
    let hanging = tokio::spawn({
        let fetches = fetches.clone();
        async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = hang.accept().await {
                fetches.fetch_add(1, Ordering::Relaxed);
                held.push(s);
            }
        }
    });
    // An unknown kid makes the gateway refetch (at most once per 5 s, so wait that
    // out: a wait for the clock, not for the gateway), which hangs until the fetch
    // timeout...
    tokio::time::sleep(Duration::from_millis(5_200)).await;
    let mut unknown = Ws::connect(&gw.ws()).await;
    unknown.send(json!({"token": sign("k2")})).await;
    eventually("the gateway to start fetching the JWKS", || async {
        (fetches.load(Ordering::Relaxed) > 0).then_some(())
    })
    .await;
    // ...while clients with the cached key are served at once.
    let started = std::time::Instant::now();
    let (_second, ok) = Ws::auth(&gw, &sign("k1"), &[]).await;
    assert_eq!(ok["user_id"], "ed", "the cached key still verifies");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let (closed, _) = unknown.closed().await;
    assert_eq!(
        closed.code, 1008,
        "the unknown kid is refused once the fetch gives up"
    );
    hanging.abort();
}

async fn token_expiry_and_heartbeats(backend: Backend) {
    let gw = gateway(&backend)
        .env("HERALD_JWT_LEEWAY_S", "0")
        .env("HERALD_HEARTBEAT_INTERVAL_MS", "300")
        .spawn()
        .await;
    let t = token_with(json!({"sub":"x","exp":now()+2,"iss":"herald-auth","aud":"herald"}));
    let (mut ws, ok) = Ws::auth(&gw, &t, &[]).await;
    assert_eq!(ok["heartbeat_interval_ms"], 300);
    let (closed, frames) = ws.closed().await;
    assert_eq!(closed.code, 1008);
    assert!(
        frames.iter().any(|f| f["type"] == "heartbeat"),
        "{frames:?}"
    );
    assert_eq!(frames.last().expect("disconnect")["code"], "token_expired");
    // A client that never answers pings is dropped after two intervals.
    let (_silent, _) = Ws::auth(&gw, &token("quiet", &[], &[]), &[]).await;
    eventually("the silent connection to be reaped", || async {
        (metric(&gw, "herald_connections").await == 0.0).then_some(())
    })
    .await;
}

async fn revoke_and_admin_disconnect_close_connections(backend: Backend) {
    let gw = gateway(&backend).spawn().await;
    let t = token_with(
        json!({"sub":"v","exp":now()+600,"iss":"herald-auth","aud":"herald","jti":"j-1"}),
    );
    let (mut ws, _) = Ws::auth(&gw, &t, &[]).await;
    let (mut other, _) = Ws::auth(&gw, &token("w", &[], &[]), &[]).await;
    let started = std::time::Instant::now();
    backend.control(&json!({"type":"revoke","jti":"j-1"})).await;
    let (closed, frames) = ws.closed().await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "closed within a second"
    );
    assert_eq!(closed.code, 1008);
    assert_eq!(frames.last().expect("disconnect")["code"], "token_revoked");
    // Others are untouched.
    other.send(json!({"type":"ping","id":1})).await;
    other.recv_type("pong").await;
    // Disconnect a user by name.
    backend
        .control(&json!({"type":"disconnect_user","user_id":"w"}))
        .await;
    assert_eq!(other.closed().await.0.code, 1008);
}

crate::both_engines!(
    handshake_auth_header_and_query,
    auth_failures_close_1008,
    token_expiry_and_heartbeats,
    revoke_and_admin_disconnect_close_connections,
);
