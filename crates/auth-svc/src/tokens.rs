//! The claims of the access tokens auth-svc issues.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;

use herald_common::jwt::JwtConfig;
use herald_proto::claims::Claims;

/// Claims for `sub`, valid from now for `ttl_s` seconds, with a random `jti`
/// (so each token can be revoked alone) and the configured `iss` and `aud`.
pub fn access_claims(
    jwt: &JwtConfig,
    sub: &str,
    channels: &[String],
    publish: &[String],
    ttl_s: u64,
) -> Claims {
    let now = jsonwebtoken::get_current_timestamp();
    Claims {
        sub: Some(sub.to_owned()),
        user_id: None,
        exp: now + ttl_s,
        iat: Some(now),
        nbf: Some(now),
        jti: Some(new_jti()),
        iss: Some(jwt.jwt_issuer.clone()),
        aud: Some(serde_json::Value::String(jwt.jwt_audience.clone())),
        channels: channels.to_vec(),
        publish: publish.to_vec(),
        presence: None,
        history: None,
        info: None,
    }
}

/// 128 random bits, base64url.
pub fn new_jti() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use herald_common::jwt::{DEFAULT_JWKS_URL, DEFAULT_LEEWAY_S, Verifier};
    use herald_proto::claims::{DEFAULT_AUDIENCE, DEFAULT_ISSUER};

    use super::*;
    use crate::signing::Signer;

    #[tokio::test]
    async fn issued_tokens_pass_the_gateway_checks() {
        // The defaults, spelled out: parsing them would also read HERALD_* from the
        // environment.
        let jwt = JwtConfig {
            jwt_alg: herald_common::jwt::Alg::Hs256,
            jwt_secret: None,
            jwks_url: DEFAULT_JWKS_URL.to_owned(),
            jwt_issuer: DEFAULT_ISSUER.to_owned(),
            jwt_audience: DEFAULT_AUDIENCE.to_owned(),
            jwt_leeway_s: DEFAULT_LEEWAY_S,
        };
        let secret = "0123456789abcdef-secret";
        let claims = access_claims(&jwt, "u1", &["news".into()], &["chat:*".into()], 60);
        let token = Signer::secret(secret).sign(&claims).unwrap();
        let got = Verifier::hs256(&jwt, secret).verify(&token).await.unwrap();
        assert_eq!(got.user(), Some("u1"));
        assert_eq!(got.channels, ["news"]);
        assert_eq!(got.publish, ["chat:*"]);
        assert_eq!(got.iss.as_deref(), Some("herald-auth"));
        assert_ne!(new_jti(), new_jti());
    }
}
