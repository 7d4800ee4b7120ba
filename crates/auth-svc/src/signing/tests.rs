//! Signing keys: the key ring, thumbprints, rotation and the JWKS.

use super::store::until_step;
use super::*;

fn claims() -> Claims {
    Claims {
        sub: Some("u1".into()),
        exp: jsonwebtoken::get_current_timestamp() + 60,
        jti: Some("j1".into()),
        ..Claims::default()
    }
}

#[test]
fn ed25519_roundtrip() {
    let k = Ed25519Key::generate().unwrap();
    let again = Ed25519Key::from_pem(&k.pem).unwrap();
    assert_eq!(k.kid, again.kid);
    assert_eq!(k.x, again.x);
    let jwk = k.jwk();
    assert_eq!(jwk["kty"], "OKP");
    assert_eq!(jwk["kid"], k.kid.as_str());
    // The JWK must be readable by jsonwebtoken's JWK types (the gateway's client).
    let parsed: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk).unwrap();
    assert!(DecodingKey::from_jwk(&parsed).is_ok());
}

#[test]
fn sign_and_read_back() {
    let k = Arc::new(Ed25519Key::generate().unwrap());
    let ring = Ring {
        current: k.clone(),
        keys: [(k.kid.clone(), k.clone())].into_iter().collect(),
    };
    let s = Signer::ring(ring);
    let t = s.sign(&claims()).unwrap();
    let h = jsonwebtoken::decode_header(&t).unwrap();
    assert_eq!(h.alg, Algorithm::EdDSA);
    assert_eq!(h.kid.as_deref(), Some(k.kid.as_str()));
    let (_, kid) = s.sign_with_kid(&claims()).unwrap();
    assert_eq!(kid.as_deref(), Some(k.kid.as_str()));
    assert_eq!(s.claims_of(&t).unwrap().jti.as_deref(), Some("j1"));
    assert_eq!(s.jwks()["keys"].as_array().map(Vec::len), Some(1));

    // A token from another key, or an HS256 token, is refused.
    let other = Signer::secret("0123456789abcdef0123");
    let hs = other.sign(&claims()).unwrap();
    assert_eq!(other.sign_with_kid(&claims()).unwrap().1, None);
    assert!(s.claims_of(&hs).is_err());
    assert_eq!(other.claims_of(&hs).unwrap().sub.as_deref(), Some("u1"));
    assert!(other.claims_of(&t).is_err());
    assert!(
        Signer::secret("another-secret-0123")
            .claims_of(&hs)
            .is_err()
    );
    assert_eq!(other.jwks(), json!({"keys": []}));
}

#[test]
fn until_steps_cover_exp_and_leeway() {
    // Exactly on a step stays on it; anything past moves to the next one.
    assert_eq!(until_step(60, 0), 60_000);
    assert_eq!(until_step(60, 1), 120_000);
    assert_eq!(until_step(1_000, 5_000), 1_020_000);
    assert!(until_step(1_000, 5_000) >= 1_000 * 1000 + 5_000);
}

#[test]
fn thumbprint_is_rfc7638() {
    // RFC 8037 appendix A.3.
    assert_eq!(
        thumbprint("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"),
        "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
    );
}
