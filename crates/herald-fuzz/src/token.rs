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

use arbitrary::{Arbitrary, Unstructured};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::FutureExt;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value, json};
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
        jwt_alg: "HS256".to_owned(),
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

/// A JSON value of any type, kept flat so generation stays cheap.
#[derive(Debug, Clone, Arbitrary)]
enum Wild {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Str(String),
    Strs(Vec<String>),
    Ints(Vec<i64>),
    Obj(Vec<(String, i64)>),
}

impl Wild {
    fn json(&self) -> Value {
        match self {
            Self::Null => Value::Null,
            Self::Bool(b) => json!(b),
            Self::Int(i) => json!(i),
            Self::Uint(u) => json!(u),
            Self::Float(f) => json!(f),
            Self::Str(s) => json!(s),
            Self::Strs(v) => json!(v),
            Self::Ints(v) => json!(v),
            Self::Obj(kv) => Value::Object(kv.iter().map(|(k, v)| (k.clone(), json!(v))).collect()),
        }
    }
}

#[derive(Debug, Clone, Arbitrary)]
enum AlgChoice {
    Hs256,
    Hs384,
    Hs512,
    None,
    NoneMixedCase,
    EdDsa,
    Rs256,
    Lowercase,
    Missing,
    Other(String),
    NotAString(i64),
}

#[derive(Debug, Clone, Arbitrary)]
enum KeyChoice {
    Right,
    /// A key that shares a prefix with the right one.
    Prefix,
    Empty,
    Other(Vec<u8>),
}

#[derive(Debug, Clone, Arbitrary)]
enum SigChoice {
    Keep,
    Empty,
    FlipBit(u8),
    Truncate(u8),
    Random(Vec<u8>),
}

/// A time claim relative to now.
#[derive(Debug, Clone, Arbitrary)]
enum Time {
    Absent,
    /// Seconds from now.
    Offset(i32),
    AsString(i32),
    AsFloat(i32),
    Wild(Wild),
}

#[derive(Debug, Clone, Arbitrary)]
enum Text {
    Absent,
    Value(String),
    Empty,
    Wild(Wild),
}

#[derive(Debug, Clone, Arbitrary)]
enum Iss {
    Absent,
    Right,
    Other(String),
    /// `["herald-auth"]`.
    ArrayRight,
    Wild(Wild),
}

#[derive(Debug, Clone, Arbitrary)]
enum Aud {
    Absent,
    Right,
    Other(String),
    /// An array that holds the right audience among others.
    ArrayWith(Vec<String>),
    ArrayWithout(Vec<String>),
    Wild(Wild),
}

#[derive(Debug, Clone, Arbitrary)]
enum Patterns {
    Absent,
    Strings(Vec<String>),
    Wild(Wild),
}

/// One generated token: how each part was made.
#[derive(Debug, Clone, Arbitrary)]
pub struct Case {
    alg: AlgChoice,
    kid: Option<String>,
    typ: Option<String>,
    key: KeyChoice,
    sig: SigChoice,
    sub: Text,
    user_id: Text,
    exp: Time,
    nbf: Time,
    iat: Time,
    iss: Iss,
    aud: Aud,
    jti: Text,
    channels: Patterns,
    publish: Patterns,
    extra: Option<(String, Wild)>,
}

/// What the oracle expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Accept,
    Refuse,
    /// Either is fine (a wild value, or a clock check within [`SLACK_S`] of its
    /// boundary); soundness is still checked.
    Either,
}

impl Expect {
    fn and(self, other: Self) -> Self {
        match (self, other) {
            (Self::Refuse, _) | (_, Self::Refuse) => Self::Refuse,
            (Self::Either, _) | (_, Self::Either) => Self::Either,
            _ => Self::Accept,
        }
    }

    fn when(ok: bool) -> Self {
        if ok { Self::Accept } else { Self::Refuse }
    }
}

impl Case {
    /// The token text and what the oracle expects of it.
    pub fn build(&self) -> (String, Expect) {
        let now = now();
        let mut header = Map::new();
        let mut expect = Expect::Accept;
        match &self.alg {
            AlgChoice::Hs256 => {
                header.insert("alg".into(), json!("HS256"));
            }
            other => {
                let v = match other {
                    AlgChoice::Hs384 => json!("HS384"),
                    AlgChoice::Hs512 => json!("HS512"),
                    AlgChoice::None => json!("none"),
                    AlgChoice::NoneMixedCase => json!("NoNe"),
                    AlgChoice::EdDsa => json!("EdDSA"),
                    AlgChoice::Rs256 => json!("RS256"),
                    AlgChoice::Lowercase => json!("hs256"),
                    AlgChoice::Other(s) => json!(s),
                    AlgChoice::NotAString(i) => json!(i),
                    AlgChoice::Hs256 | AlgChoice::Missing => Value::Null,
                };
                if !v.is_null() {
                    header.insert("alg".into(), v);
                }
                // Only HS256 is accepted; "HS256" itself can come from `Other`.
                expect = if matches!(other, AlgChoice::Other(s) if s == "HS256") {
                    Expect::Accept
                } else {
                    Expect::Refuse
                };
            }
        }
        if let Some(kid) = &self.kid {
            header.insert("kid".into(), json!(kid));
        }
        if let Some(typ) = &self.typ {
            header.insert("typ".into(), json!(typ));
        }

        let mut claims = Map::new();
        let mut put = |k: &str, v: Value| {
            claims.insert(k.to_owned(), v);
        };
        // The subject: `sub`, else the legacy `user_id`; an empty `sub` hides `user_id`.
        let text = |t: &Text| match t {
            Text::Absent => (None, Expect::Accept),
            Text::Value(s) => (Some(json!(s)), Expect::Accept),
            Text::Empty => (Some(json!("")), Expect::Accept),
            Text::Wild(w) => (Some(w.json()), Expect::Either),
        };
        let (sub, sub_e) = text(&self.sub);
        let (uid, uid_e) = text(&self.user_id);
        let user_ok = match (&self.sub, &self.user_id) {
            (Text::Value(s), _) => Expect::when(!s.is_empty()),
            (Text::Wild(_), _) => Expect::Either,
            (Text::Empty, _) => Expect::Refuse,
            (Text::Absent, Text::Value(u)) => Expect::when(!u.is_empty()),
            (Text::Absent, Text::Wild(_)) => Expect::Either,
            (Text::Absent, Text::Empty | Text::Absent) => Expect::Refuse,
        };
        expect = expect.and(sub_e).and(uid_e).and(user_ok);
        if let Some(v) = sub {
            put("sub", v);
        }
        if let Some(v) = uid {
            put("user_id", v);
        }

        let leeway = LEEWAY_S as i64;
        let time = |t: &Time, put: &mut dyn FnMut(&str, Value), name: &str| -> Option<i64> {
            match t {
                Time::Absent => None,
                Time::Offset(d) => {
                    let at = now + i64::from(*d);
                    put(name, json!(at));
                    Some(at)
                }
                Time::AsString(d) => {
                    put(name, json!((now + i64::from(*d)).to_string()));
                    None
                }
                Time::AsFloat(d) => {
                    put(name, json!(now as f64 + f64::from(*d) + 0.5));
                    None
                }
                Time::Wild(w) => {
                    put(name, w.json());
                    None
                }
            }
        };
        // `exp`: required, a non-negative integer, not before now - leeway.
        let exp_at = time(&self.exp, &mut put, "exp");
        expect = expect.and(match (&self.exp, exp_at) {
            (Time::Offset(_), Some(at)) if at < 0 => Expect::Refuse,
            (Time::Offset(_), Some(at)) => clock(at - (now - leeway)),
            (Time::Wild(_), _) => Expect::Either,
            _ => Expect::Refuse,
        });
        // `nbf`: optional; when present a non-negative integer not after now + leeway.
        let nbf_at = time(&self.nbf, &mut put, "nbf");
        expect = expect.and(match (&self.nbf, nbf_at) {
            (Time::Absent, _) => Expect::Accept,
            (Time::Offset(_), Some(at)) if at < 0 => Expect::Refuse,
            (Time::Offset(_), Some(at)) => clock((now + leeway) - at),
            (Time::Wild(_), _) => Expect::Either,
            _ => Expect::Refuse,
        });
        // `iat`: carried, not checked, but it must be a non-negative integer to parse.
        let iat_at = time(&self.iat, &mut put, "iat");
        expect = expect.and(match (&self.iat, iat_at) {
            (Time::Absent, _) => Expect::Accept,
            (Time::Offset(_), Some(at)) => Expect::when(at >= 0),
            (Time::Wild(_), _) => Expect::Either,
            _ => Expect::Refuse,
        });

        // `iss` and `aud`: required, and equal to the configured ones (docs/protocol.md).
        expect = expect.and(match &self.iss {
            Iss::Absent => Expect::Refuse,
            Iss::Right => {
                put("iss", json!(DEFAULT_ISSUER));
                Expect::Accept
            }
            Iss::Other(s) => {
                put("iss", json!(s));
                Expect::when(s == DEFAULT_ISSUER)
            }
            Iss::ArrayRight => {
                // Herald's claims carry one issuer; an array is not one.
                put("iss", json!([DEFAULT_ISSUER]));
                Expect::Refuse
            }
            Iss::Wild(w) => {
                put("iss", w.json());
                Expect::Either
            }
        });
        expect = expect.and(match &self.aud {
            Aud::Absent => Expect::Refuse,
            Aud::Right => {
                put("aud", json!(DEFAULT_AUDIENCE));
                Expect::Accept
            }
            Aud::Other(s) => {
                put("aud", json!(s));
                Expect::when(s == DEFAULT_AUDIENCE)
            }
            Aud::ArrayWith(others) => {
                let mut all = others.clone();
                let at = others.len() / 2;
                all.insert(at, DEFAULT_AUDIENCE.to_owned());
                put("aud", json!(all));
                Expect::Accept
            }
            Aud::ArrayWithout(others) => {
                put("aud", json!(others));
                Expect::when(others.iter().any(|a| a == DEFAULT_AUDIENCE))
            }
            Aud::Wild(w) => {
                put("aud", w.json());
                Expect::Either
            }
        });

        let (jti, jti_e) = text(&self.jti);
        expect = expect.and(jti_e);
        if let Some(v) = jti {
            put("jti", v);
        }
        for (name, p) in [("channels", &self.channels), ("publish", &self.publish)] {
            expect = expect.and(match p {
                Patterns::Absent => Expect::Accept,
                Patterns::Strings(v) => {
                    put(name, json!(v));
                    Expect::Accept
                }
                Patterns::Wild(w) => {
                    put(name, w.json());
                    Expect::Either
                }
            });
        }
        if let Some((k, w)) = &self.extra {
            // An unknown claim is ignored, unless it replaces a known one.
            let known = [
                "sub", "user_id", "exp", "nbf", "iat", "iss", "aud", "jti", "channels", "publish",
            ];
            if known.contains(&k.as_str()) {
                expect = expect.and(Expect::Either);
            }
            put(k, w.json());
        }

        let h = URL_SAFE_NO_PAD.encode(Value::Object(header).to_string());
        let c = URL_SAFE_NO_PAD.encode(Value::Object(claims).to_string());
        let signing_input = format!("{h}.{c}");
        let key: Vec<u8> = match &self.key {
            KeyChoice::Right => SECRET.as_bytes().to_vec(),
            KeyChoice::Prefix => SECRET.as_bytes()[..SECRET.len() - 1].to_vec(),
            KeyChoice::Empty => Vec::new(),
            KeyChoice::Other(k) => k.clone(),
        };
        expect = expect.and(Expect::when(key == SECRET.as_bytes()));
        let mut sig = hmac(&key, signing_input.as_bytes());
        match &self.sig {
            SigChoice::Keep => {}
            SigChoice::Empty => sig.clear(),
            SigChoice::FlipBit(i) => {
                let i = usize::from(*i) % (sig.len() * 8);
                sig[i / 8] ^= 1 << (i % 8);
            }
            SigChoice::Truncate(n) => sig.truncate(usize::from(*n) % sig.len()),
            SigChoice::Random(bytes) => sig.clone_from(bytes),
        }
        if !matches!(self.sig, SigChoice::Keep) {
            let same = hmac(SECRET.as_bytes(), signing_input.as_bytes()) == sig;
            expect = expect.and(Expect::when(same));
        }
        let token = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(&sig));
        (token, expect)
    }
}

/// A clock check with `margin` seconds to spare (negative: failed by that much).
fn clock(margin: i64) -> Expect {
    if margin > SLACK_S {
        Expect::Accept
    } else if margin < -SLACK_S {
        Expect::Refuse
    } else {
        Expect::Either
    }
}

/// A structurally valid token built from the input, checked against the oracle.
///
/// The first byte is a mask of parts to force valid: uniformly random parts are almost
/// never all valid at once, and the interesting cases are tokens valid in every way
/// but one or two.
pub fn structured_token(data: &[u8]) {
    let Some((&mask, rest)) = data.split_first() else {
        return;
    };
    let Ok(mut case) = Case::arbitrary_take_rest(Unstructured::new(rest)) else {
        return;
    };
    case.force_valid(mask);
    check_case(&case);
}

impl Case {
    /// Makes the parts whose bit is set in `mask` valid.
    fn force_valid(&mut self, mask: u8) {
        let bit = |i: u8| mask & (1 << i) != 0;
        if bit(0) {
            self.alg = AlgChoice::Hs256;
        }
        if bit(1) {
            self.key = KeyChoice::Right;
        }
        if bit(2) {
            self.sig = SigChoice::Keep;
        }
        if bit(3) {
            self.iss = Iss::Right;
        }
        if bit(4) {
            self.aud = Aud::Right;
        }
        if bit(5) && !matches!(self.exp, Time::Offset(d) if d > 60) {
            self.exp = Time::Offset(3600);
        }
        if bit(6) {
            self.sub = Text::Value("u1".to_owned());
        }
        if bit(7) {
            self.nbf = Time::Absent;
            self.iat = Time::Absent;
            self.extra = None;
            self.channels = Patterns::Absent;
            self.publish = Patterns::Absent;
            self.jti = Text::Absent;
        }
    }
}

/// Verifies one case's token and checks the outcome against the oracle.
#[track_caller]
pub fn check_case(case: &Case) {
    let (token, expect) = case.build();
    let got = verify(&token);
    match (&got, expect) {
        (Ok(claims), Expect::Accept | Expect::Either) => sound(&token, claims),
        (Err(_), Expect::Refuse | Expect::Either) => {}
        (Ok(claims), Expect::Refuse) => {
            sound(&token, claims);
            panic!("accepted a token the rules refuse: {case:?} -> {claims:?}");
        }
        (Err(e), Expect::Accept) => panic!("refused a valid token ({e}): {case:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Case {
        Case {
            alg: AlgChoice::Hs256,
            kid: None,
            typ: Some("JWT".into()),
            key: KeyChoice::Right,
            sig: SigChoice::Keep,
            sub: Text::Value("u1".into()),
            user_id: Text::Absent,
            exp: Time::Offset(3600),
            nbf: Time::Absent,
            iat: Time::Offset(0),
            iss: Iss::Right,
            aud: Aud::Right,
            jti: Text::Value("j1".into()),
            channels: Patterns::Strings(vec!["news".into(), "chat:*".into()]),
            publish: Patterns::Absent,
            extra: None,
        }
    }

    #[track_caller]
    fn outcome(case: &Case) -> Result<Claims, AuthError> {
        check_case(case);
        verify(&case.build().0)
    }

    #[test]
    fn the_oracle_agrees_on_the_classic_pitfalls() {
        assert!(outcome(&good()).is_ok());
        let cases: Vec<(&str, Case)> = vec![
            (
                "alg none",
                Case {
                    alg: AlgChoice::None,
                    ..good()
                },
            ),
            (
                "alg NoNe",
                Case {
                    alg: AlgChoice::NoneMixedCase,
                    ..good()
                },
            ),
            (
                "alg HS512",
                Case {
                    alg: AlgChoice::Hs512,
                    ..good()
                },
            ),
            (
                "alg EdDSA with an HMAC signature",
                Case {
                    alg: AlgChoice::EdDsa,
                    ..good()
                },
            ),
            (
                "no alg",
                Case {
                    alg: AlgChoice::Missing,
                    ..good()
                },
            ),
            (
                "wrong key",
                Case {
                    key: KeyChoice::Prefix,
                    ..good()
                },
            ),
            (
                "empty key",
                Case {
                    key: KeyChoice::Empty,
                    ..good()
                },
            ),
            (
                "empty signature",
                Case {
                    sig: SigChoice::Empty,
                    ..good()
                },
            ),
            (
                "flipped bit",
                Case {
                    sig: SigChoice::FlipBit(77),
                    ..good()
                },
            ),
            (
                "expired",
                Case {
                    exp: Time::Offset(-60),
                    ..good()
                },
            ),
            (
                "no exp",
                Case {
                    exp: Time::Absent,
                    ..good()
                },
            ),
            (
                "exp as a string",
                Case {
                    exp: Time::AsString(3600),
                    ..good()
                },
            ),
            (
                "exp as a float",
                Case {
                    exp: Time::AsFloat(3600),
                    ..good()
                },
            ),
            (
                "nbf ahead",
                Case {
                    nbf: Time::Offset(60),
                    ..good()
                },
            ),
            (
                "wrong iss",
                Case {
                    iss: Iss::Other("evil".into()),
                    ..good()
                },
            ),
            (
                "wrong aud",
                Case {
                    aud: Aud::Other("other".into()),
                    ..good()
                },
            ),
            (
                "aud array without ours",
                Case {
                    aud: Aud::ArrayWithout(vec!["x".into()]),
                    ..good()
                },
            ),
            (
                "empty sub",
                Case {
                    sub: Text::Empty,
                    user_id: Text::Value("u".into()),
                    ..good()
                },
            ),
            (
                "no subject",
                Case {
                    sub: Text::Absent,
                    ..good()
                },
            ),
        ];
        for (what, case) in cases {
            assert!(outcome(&case).is_err(), "{what} must be refused");
        }
        let legacy = Case {
            sub: Text::Absent,
            user_id: Text::Value("old".into()),
            ..good()
        };
        assert_eq!(
            outcome(&legacy).map(|c| c.user().map(str::to_owned)),
            Ok(Some("old".into()))
        );
        let within_leeway = Case {
            exp: Time::Offset(-1),
            nbf: Time::Offset(1),
            ..good()
        };
        assert!(outcome(&within_leeway).is_ok());
        let aud_list = Case {
            aud: Aud::ArrayWith(vec!["a".into(), "b".into()]),
            ..good()
        };
        assert!(outcome(&aud_list).is_ok());
    }

    /// Regression (found by the `claims` target): `iss` and `aud` are required by the
    /// configuration (`HERALD_JWT_ISSUER` / `HERALD_JWT_AUDIENCE`), but a token that
    /// leaves either out, or carries an `aud` that is not a string or an array of
    /// strings, was accepted: jsonwebtoken only compares them when they are present
    /// and parse. The fix: `required_spec_claims` = `exp`, `iss`, `aud`.
    #[test]
    fn missing_or_malformed_iss_and_aud_are_refused() {
        for (what, case) in [
            (
                "no iss",
                Case {
                    iss: Iss::Absent,
                    ..good()
                },
            ),
            (
                "no aud",
                Case {
                    aud: Aud::Absent,
                    ..good()
                },
            ),
            (
                "aud a number",
                Case {
                    aud: Aud::Wild(Wild::Int(5)),
                    ..good()
                },
            ),
            (
                "aud an object",
                Case {
                    aud: Aud::Wild(Wild::Obj(vec![("herald".into(), 1)])),
                    ..good()
                },
            ),
        ] {
            let (token, _) = case.build();
            assert!(verify(&token).is_err(), "{what} must be refused");
        }
    }

    #[test]
    fn a_full_mask_makes_a_valid_token() {
        let mut case = Case {
            alg: AlgChoice::None,
            key: KeyChoice::Empty,
            sig: SigChoice::Empty,
            iss: Iss::Absent,
            aud: Aud::Absent,
            exp: Time::Absent,
            sub: Text::Empty,
            nbf: Time::Offset(600),
            ..good()
        };
        case.force_valid(0xff);
        assert!(outcome(&case).is_ok(), "{case:?}");
    }

    #[test]
    fn arbitrary_strings_are_refused() {
        for t in [
            "",
            ".",
            "..",
            "a.b.c",
            "e30.e30.",
            "e30.e30.e30",
            "\u{0}",
            "Bearer x",
        ] {
            assert!(verify(t).is_err(), "{t:?}");
            token_string(t.as_bytes());
        }
    }

    #[test]
    fn refresh_tokens_round_trip() {
        let t = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode([1u8; 16]),
            URL_SAFE_NO_PAD.encode([2u8; 32])
        );
        assert!(auth_svc::refresh::RefreshToken::parse(&t).is_some());
        refresh_token(&t);
        for bad in ["{x}.y", "a.b", &format!("{t}."), &t.replace('.', "{")] {
            refresh_token(bad);
            assert!(
                auth_svc::refresh::RefreshToken::parse(bad).is_none(),
                "{bad}"
            );
        }
    }
}
