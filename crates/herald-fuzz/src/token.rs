//! The auth path: `herald_common::jwt::Verifier::verify` (HS256) on arbitrary strings
//! and on structurally valid tokens with random headers, claims and signatures, and
//! auth-svc's refresh-token parser.
//!
//! Structured tokens are checked two ways. An *oracle* computes, from how each part
//! was generated, whether the token must be accepted or refused (docs/protocol.md: HS256 only,
//! the right secret, `exp` required and in the future, `nbf` not in the future, `iss`
//! and `aud` present and equal to the configured ones, a non-empty subject; leeway
//! bounds the clock checks). And every *accepted* token, however it was made, must be
//! sound: `alg` is HS256, the signature is the HMAC of the configured secret
//! (recomputed here independently), and the claims obey every rule.

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::FutureExt;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use herald_common::jwt::{AuthError, JwtConfig, Verifier};
use herald_proto::claims::{Claims, DEFAULT_AUDIENCE, DEFAULT_ISSUER};

/// The shared secret the verifier under test is configured with.
pub const SECRET: &str = "fuzz-secret-0123456789abcdef";
/// The clock-skew leeway it is configured with, in seconds.
pub const LEEWAY_S: u64 = 5;
/// Clock checks within this many seconds of a boundary may go either way (the clock
/// ticks between signing and verifying).
const SLACK_S: i64 = 2;

fn config() -> JwtConfig {
    JwtConfig {
        jwt_alg: herald_common::jwt::Alg::Hs256,
        jwt_secret: Some(SECRET.to_owned()),
        jwks_url: String::new(),
        jwt_issuer: DEFAULT_ISSUER.to_owned(),
        jwt_audience: DEFAULT_AUDIENCE.to_owned(),
        jwt_leeway_s: LEEWAY_S,
    }
}

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| Verifier::hs256(&config(), SECRET))
}

/// Runs the verifier. HS256 verification never waits on I/O, so the future must be
/// ready on its first poll: a pending one would mean the accept path can block.
pub fn verify(token: &str) -> Result<Claims, AuthError> {
    verifier()
        .verify(token)
        .now_or_never()
        .expect("HS256 verification must complete without waiting")
}

fn now() -> i64 {
    i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap_or(i64::MAX)
}

fn hmac(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

// === arbitrary strings ===

/// Any string as a token (first frame, `?token=`, `Authorization: Bearer`), and as a
/// refresh token.
pub fn token_string(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(claims) = verify(&text) {
        sound(&text, &claims);
    }
    refresh_token(&text);
}

/// auth-svc's refresh tokens: `<family>.<secret>`, both base64url. The family becomes
/// a Redis hash tag (`{family}`), so nothing else may get through.
fn refresh_token(text: &str) {
    if let Some(t) = auth_svc::refresh::RefreshToken::parse(text) {
        assert_eq!(t.expose(), text, "a parsed refresh token is what was sent");
        let (family, secret) = text.split_once('.').expect("two parts");
        for part in [family, secret] {
            assert!(
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "refresh token part outside base64url: {part:?}"
            );
        }
    }
}

/// Everything that must hold for a token the verifier accepted.
#[track_caller]
pub fn sound(token: &str, claims: &Claims) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(
        parts.len(),
        3,
        "accepted a token without three parts: {token:?}"
    );
    let header: Value = URL_SAFE_NO_PAD
        .decode(parts[0])
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| panic!("accepted a token whose header is not JSON: {token:?}"));
    assert_eq!(header["alg"], "HS256", "accepted alg {}", header["alg"]);
    let signing_input = &token[..parts[0].len() + 1 + parts[1].len()];
    let sig = URL_SAFE_NO_PAD
        .decode(parts[2])
        .unwrap_or_else(|_| panic!("accepted a signature that is not base64url: {token:?}"));
    assert_eq!(
        sig,
        hmac(SECRET.as_bytes(), signing_input.as_bytes()),
        "accepted a token not signed with the secret: {token:?}"
    );
    let payload: Value = URL_SAFE_NO_PAD
        .decode(parts[1])
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| panic!("accepted a token whose claims are not JSON: {token:?}"));
    let now = now();
    let exp = payload["exp"]
        .as_u64()
        .unwrap_or_else(|| panic!("accepted a token without a numeric exp: {payload}"));
    assert!(
        i128::from(exp) >= i128::from(now) - i128::from(LEEWAY_S) - 1,
        "accepted an expired token: {payload}"
    );
    if let Some(nbf) = payload.get("nbf") {
        let nbf = nbf
            .as_u64()
            .unwrap_or_else(|| panic!("accepted a token with a malformed nbf: {payload}"));
        assert!(
            i128::from(nbf) <= i128::from(now) + i128::from(LEEWAY_S) + 1,
            "accepted a token that is not valid yet: {payload}"
        );
    }
    assert_eq!(
        payload.get("iss"),
        Some(&Value::from(DEFAULT_ISSUER)),
        "accepted a token without the configured iss: {payload}"
    );
    let aud_ok = match payload.get("aud") {
        Some(Value::String(a)) => a == DEFAULT_AUDIENCE,
        Some(Value::Array(a)) => a.iter().any(|x| x == DEFAULT_AUDIENCE),
        _ => false,
    };
    assert!(
        aud_ok,
        "accepted a token without the configured aud: {payload}"
    );
    assert!(
        claims.user().is_some_and(|u| !u.is_empty()),
        "accepted a token without a subject: {payload}"
    );
    let direct: Claims = serde_json::from_value(payload.clone())
        .unwrap_or_else(|e| panic!("accepted claims that do not deserialize ({e}): {payload}"));
    assert_eq!(&direct, claims, "the claims returned are the claims signed");
    // Permission checks on whatever patterns the token carries stay total.
    for ch in claims.channels.iter().chain(&claims.publish) {
        let _ = claims.may_subscribe(ch);
        let _ = claims.may_publish(ch);
    }
}

// === structured tokens ===

mod case;
mod oracle;

pub use case::{Case, Expect, check_case, structured_token};

#[cfg(test)]
mod tests;
