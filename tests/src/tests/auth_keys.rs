//! auth-svc's signing keys: EdDSA keys shared through Redis and published as a JWKS
//! the gateway's verifier uses, rotation that keeps long-lived tokens verifiable,
//! and RS256, refused by auth-svc and verified by the gateway for external issuers.

use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use reqwest::Method;
use serde_json::json;

use super::auth::{add_user, login};
use crate::{ADMIN_KEY, Redis, ServiceBuilder, Ws, eventually, http_json, run_bin, serve_json};

fn jwt_config(jwks_url: &str) -> herald_common::jwt::JwtConfig {
    herald_common::jwt::JwtConfig {
        jwt_alg: herald_common::jwt::Alg::EdDsa,
        jwt_secret: None,
        jwks_url: jwks_url.to_owned(),
        jwt_issuer: "herald-auth".to_owned(),
        jwt_audience: "herald".to_owned(),
        jwt_leeway_s: 5,
    }
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

    // Past the access-token life and the leeway since the rotation: the passing of
    // time is what is under test, so this waits on the clock.
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
    // ...and refuses it from then on, leeway included (a wait on the clock: the
    // token's own life running out).
    let after = Duration::from_secs(TOKEN_TTL_S + LEEWAY_S + 1);
    tokio::time::sleep(after.saturating_sub(issued.elapsed())).await;
    let mut ws = Ws::connect(&gw.ws()).await;
    ws.send(json!({"type":"auth","token":token})).await;
    assert_eq!(ws.closed().await.0.code, 1008);
}
