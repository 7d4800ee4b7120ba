//! Access-token verification with every check docs/protocol.md lists: the configured
//! algorithm only (never `none`, never an HMAC token checked against a public key),
//! required `exp`, and `nbf`, `iss`, `aud` checked with a bounded leeway.
//!
//! Asymmetric keys come from auth-svc's JWKS over HTTP, cached by `kid`; an
//! unknown `kid` triggers at most one refetch per [`JWKS_REFETCH_MIN`], and a JWKS
//! endpoint that is down leaves the cached keys in use.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use clap::Args;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use herald_proto::claims::{Claims, DEFAULT_AUDIENCE, DEFAULT_ISSUER};

/// The secret `HERALD_DEV=1` uses when none is configured. Never for production.
pub const DEV_SECRET: &str = "herald-dev-secret-do-not-use-in-production";
pub const DEFAULT_JWKS_URL: &str = "http://127.0.0.1:8081/.well-known/jwks.json";
pub const DEFAULT_LEEWAY_S: u64 = 5;
/// The least time between two JWKS fetches triggered by unknown `kid`s.
pub const JWKS_REFETCH_MIN: Duration = Duration::from_secs(5);
/// How long one JWKS fetch may take.
pub const JWKS_TIMEOUT: Duration = Duration::from_secs(2);

/// The token settings shared by auth-svc and ws-gateway.
#[derive(Debug, Clone, Args)]
pub struct JwtConfig {
    /// Signing algorithm: HS256, EdDSA or RS256 (RS256 only for ws-gateway verifying another issuer's tokens).
    #[arg(long, env = "HERALD_JWT_ALG", value_enum, default_value_t = Alg::Hs256)]
    pub jwt_alg: Alg,
    /// HS256 shared secret (required unless HERALD_DEV=1).
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Where the gateway fetches public keys in asymmetric modes.
    #[arg(long, env = "HERALD_JWKS_URL", default_value = DEFAULT_JWKS_URL)]
    pub jwks_url: String,
    /// Required `iss`.
    #[arg(long, env = "HERALD_JWT_ISSUER", default_value = DEFAULT_ISSUER)]
    pub jwt_issuer: String,
    /// Required `aud`.
    #[arg(long, env = "HERALD_JWT_AUDIENCE", default_value = DEFAULT_AUDIENCE)]
    pub jwt_audience: String,
    /// Clock-skew leeway for `exp` and `nbf`, in seconds (at most 300).
    #[arg(long, env = "HERALD_JWT_LEEWAY_S", default_value_t = DEFAULT_LEEWAY_S)]
    pub jwt_leeway_s: u64,
}

/// A supported signing algorithm, spelled as in a JWT header (case matters, as
/// there). A value not listed is refused at start with the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Alg {
    #[value(name = "HS256")]
    Hs256,
    #[value(name = "EdDSA")]
    EdDsa,
    #[value(name = "RS256")]
    Rs256,
}

impl Alg {
    pub fn algorithm(self) -> Algorithm {
        match self {
            Self::Hs256 => Algorithm::HS256,
            Self::EdDsa => Algorithm::EdDSA,
            Self::Rs256 => Algorithm::RS256,
        }
    }
}

impl JwtConfig {
    /// Checks the settings; returns the algorithm and, for HS256, the secret to use.
    pub fn resolve(
        &self,
        dev: bool,
        problems: &mut crate::config::ConfigErrors,
    ) -> (Alg, Option<String>) {
        let alg = self.jwt_alg;
        if self.jwt_leeway_s > 300 {
            problems.push("HERALD_JWT_LEEWAY_S must be at most 300");
        }
        let secret = match (&self.jwt_secret, alg) {
            (Some(s), Alg::Hs256) if s.len() < 16 => {
                problems.push("HERALD_JWT_SECRET must be at least 16 bytes");
                None
            }
            (Some(s), Alg::Hs256) => Some(s.clone()),
            // Validation is pure: the service warns about this once, when it starts.
            (None, Alg::Hs256) if dev => Some(DEV_SECRET.to_owned()),
            (None, Alg::Hs256) => {
                problems.push(
                    "HERALD_JWT_SECRET is not set (HS256 needs a shared secret; HERALD_DEV=1 uses a development one)",
                );
                None
            }
            (_, _) => None,
        };
        (alg, secret)
    }

    /// Warns when the service runs on the development secret; called once, at start
    /// (validation itself is pure, and may run more than once).
    pub fn warn_if_dev_secret(&self, alg: Alg, dev: bool) {
        if dev && alg == Alg::Hs256 && self.jwt_secret.is_none() {
            tracing::warn!("HERALD_DEV=1: using the fixed development JWT secret");
        }
    }

    /// The validation rules for `alg`.
    pub fn validation(&self, alg: Alg) -> Validation {
        let mut v = Validation::new(alg.algorithm());
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.validate_exp = true;
        v.validate_nbf = true;
        v.leeway = self.jwt_leeway_s.min(300);
        v.set_issuer(&[&self.jwt_issuer]);
        v.set_audience(&[&self.jwt_audience]);
        v
    }
}

/// Why a token was refused. `reason()` is the metrics label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("token is malformed")]
    Malformed,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token algorithm is not accepted")]
    Algorithm,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token issuer is not accepted")]
    Issuer,
    #[error("token audience is not accepted")]
    Audience,
    #[error("token lacks a required claim")]
    MissingClaim,
    #[error("token key id is unknown")]
    UnknownKey,
    #[error("signing keys are unavailable")]
    KeysUnavailable,
    #[error("token has been revoked")]
    Revoked,
    /// The `info` claim is not a JSON object of at most 1 KiB.
    #[error("token {0}")]
    Info(#[from] herald_proto::claims::InfoError),
}

impl AuthError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::BadSignature => "bad_signature",
            Self::Algorithm => "algorithm",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::Issuer => "issuer",
            Self::Audience => "audience",
            Self::MissingClaim => "missing_claim",
            Self::UnknownKey => "unknown_key",
            Self::KeysUnavailable => "keys_unavailable",
            Self::Revoked => "revoked",
            Self::Info(_) => "bad_info",
        }
    }
}

impl From<jsonwebtoken::errors::Error> for AuthError {
    fn from(e: jsonwebtoken::errors::Error) -> Self {
        match e.kind() {
            ErrorKind::InvalidSignature => Self::BadSignature,
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => Self::Algorithm,
            ErrorKind::ExpiredSignature => Self::Expired,
            ErrorKind::ImmatureSignature => Self::NotYetValid,
            ErrorKind::InvalidIssuer => Self::Issuer,
            ErrorKind::InvalidAudience => Self::Audience,
            ErrorKind::MissingRequiredClaim(_) => Self::MissingClaim,
            _ => Self::Malformed,
        }
    }
}

/// Verifies access tokens. Cheap to clone.
#[derive(Clone)]
pub struct Verifier {
    alg: Alg,
    validation: Arc<Validation>,
    keys: Keys,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
enum Keys {
    Secret(Arc<DecodingKey>),
    Jwks(Arc<JwksCache>),
}

struct JwksCache {
    url: String,
    http: reqwest::Client,
    keys: RwLock<HashMap<String, Arc<DecodingKey>>>,
    /// Serializes refetches so a burst of unknown `kid`s makes one request.
    fetching: tokio::sync::Mutex<Option<Instant>>,
}

impl Verifier {
    /// A verifier for HS256 tokens signed with `secret`.
    pub fn hs256(config: &JwtConfig, secret: &str) -> Self {
        Self {
            alg: Alg::Hs256,
            validation: Arc::new(config.validation(Alg::Hs256)),
            keys: Keys::Secret(Arc::new(DecodingKey::from_secret(secret.as_bytes()))),
        }
    }

    /// A verifier for asymmetric tokens whose keys are served at `config.jwks_url`.
    pub fn jwks(config: &JwtConfig, alg: Alg) -> Self {
        let http = reqwest::Client::builder()
            .timeout(JWKS_TIMEOUT)
            .build()
            .unwrap_or_default();
        Self {
            alg,
            validation: Arc::new(config.validation(alg)),
            keys: Keys::Jwks(Arc::new(JwksCache {
                url: config.jwks_url.clone(),
                http,
                keys: RwLock::new(HashMap::new()),
                fetching: tokio::sync::Mutex::new(None),
            })),
        }
    }

    /// Builds the verifier the configuration asks for.
    pub fn from_config(config: &JwtConfig, alg: Alg, secret: Option<&str>) -> Self {
        match (alg, secret) {
            (Alg::Hs256, Some(s)) => Self::hs256(config, s),
            (Alg::Hs256, None) => Self::hs256(config, DEV_SECRET),
            (a, _) => Self::jwks(config, a),
        }
    }

    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// Loads the JWKS now (asymmetric mode); a no-op with a shared secret.
    pub async fn prefetch(&self) -> Result<usize, AuthError> {
        match &self.keys {
            Keys::Secret(_) => Ok(1),
            Keys::Jwks(cache) => cache.refresh(true).await,
        }
    }

    /// Verifies a token and returns its claims.
    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(AuthError::from)?;
        if header.alg != self.alg.algorithm() {
            return Err(AuthError::Algorithm);
        }
        let key = match &self.keys {
            Keys::Secret(k) => k.clone(),
            Keys::Jwks(cache) => {
                let kid = header.kid.as_deref().ok_or(AuthError::UnknownKey)?;
                cache.key(kid).await?
            }
        };
        let data = jsonwebtoken::decode::<Claims>(token, &key, &self.validation)?;
        if data.claims.user().is_none() {
            return Err(AuthError::MissingClaim);
        }
        data.claims.check_info()?;
        Ok(data.claims)
    }
}

impl JwksCache {
    async fn key(&self, kid: &str) -> Result<Arc<DecodingKey>, AuthError> {
        if let Some(k) = self.cached(kid) {
            return Ok(k);
        }
        match self.refresh(false).await {
            Ok(_) => self.cached(kid).ok_or(AuthError::UnknownKey),
            Err(AuthError::KeysUnavailable) if self.has_any() => Err(AuthError::UnknownKey),
            Err(e) => Err(e),
        }
    }

    fn cached(&self, kid: &str) -> Option<Arc<DecodingKey>> {
        self.keys.read().ok()?.get(kid).cloned()
    }

    fn has_any(&self) -> bool {
        self.keys.read().is_ok_and(|k| !k.is_empty())
    }

    async fn refresh(&self, force: bool) -> Result<usize, AuthError> {
        let mut last = self.fetching.lock().await;
        if !force && last.is_some_and(|t| t.elapsed() < JWKS_REFETCH_MIN) {
            return Ok(0);
        }
        *last = Some(Instant::now());
        let set: JwkSet = async {
            self.http
                .get(&self.url)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await
        }
        .await
        .map_err(|e: reqwest::Error| {
            tracing::warn!(url = %self.url, cause = %e, "cannot fetch JWKS; keeping cached keys");
            AuthError::KeysUnavailable
        })?;
        let mut fresh = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            match DecodingKey::from_jwk(jwk) {
                Ok(k) => {
                    fresh.insert(kid, Arc::new(k));
                }
                Err(e) => tracing::warn!(kid, cause = %e, "ignoring unusable JWK"),
            }
        }
        let n = fresh.len();
        if let Ok(mut keys) = self.keys.write() {
            // Keep keys we knew: a token signed by a key that just left the set
            // stays valid until its own `exp`.
            keys.extend(fresh);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use jsonwebtoken::{EncodingKey, Header, encode};

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        jwt: JwtConfig,
    }

    fn config() -> JwtConfig {
        T::try_parse_from(["t"]).unwrap().jwt
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn token(claims: serde_json::Value, secret: &str) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[track_caller]
    fn check(v: &Verifier, claims: serde_json::Value, expected: Result<(), AuthError>) {
        let t = token(claims, "0123456789abcdef");
        let got = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(v.verify(&t))
            .map(|_| ());
        assert_eq!(got, expected);
    }

    #[test]
    fn checks_claims() {
        let v = Verifier::hs256(&config(), "0123456789abcdef");
        let base = |extra: serde_json::Value| {
            let mut c =
                serde_json::json!({"sub":"u1","exp":now()+60,"iss":"herald-auth","aud":"herald"});
            for (k, val) in extra.as_object().unwrap() {
                c[k] = val.clone();
            }
            c
        };
        check(&v, base(serde_json::json!({})), Ok(()));
        check(
            &v,
            base(serde_json::json!({"exp": now() - 60})),
            Err(AuthError::Expired),
        );
        check(
            &v,
            base(serde_json::json!({"nbf": now() + 60})),
            Err(AuthError::NotYetValid),
        );
        check(
            &v,
            base(serde_json::json!({"iss": "evil"})),
            Err(AuthError::Issuer),
        );
        check(
            &v,
            base(serde_json::json!({"aud": "other"})),
            Err(AuthError::Audience),
        );
        check(
            &v,
            serde_json::json!({"sub":"u1","iss":"herald-auth","aud":"herald"}),
            Err(AuthError::MissingClaim),
        );
        let wrong = token(base(serde_json::json!({})), "another-secret-of-16");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(v.verify(&wrong)), Err(AuthError::BadSignature));
        assert_eq!(rt.block_on(v.verify("x.y.z")), Err(AuthError::Malformed));
    }

    #[test]
    fn refuses_alg_none() {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let body = b64.encode(format!(
            r#"{{"sub":"u1","exp":{},"iss":"herald-auth","aud":"herald"}}"#,
            now() + 60
        ));
        let v = Verifier::hs256(&config(), "0123456789abcdef");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let got = rt.block_on(v.verify(&format!("{header}.{body}.")));
        assert!(got.is_err(), "{got:?}");
    }

    #[test]
    fn config_problems() {
        let mut problems = crate::config::ConfigErrors::new();
        let (_, secret) = config().resolve(false, &mut problems);
        assert!(secret.is_none());
        assert_eq!(problems.len(), 1, "{problems:?}");
        let mut problems = crate::config::ConfigErrors::new();
        let (_, secret) = config().resolve(true, &mut problems);
        assert_eq!(secret.as_deref(), Some(DEV_SECRET));
        assert!(problems.is_empty());
    }
}
