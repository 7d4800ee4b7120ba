//! The oracle: builds a [`Case`]'s token and works out, from how each part was
//! made, whether the verifier must accept it (docs/protocol.md's rules).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};

use herald_proto::claims::{DEFAULT_AUDIENCE, DEFAULT_ISSUER};

use super::case::{
    AlgChoice, Aud, Case, Expect, Iss, KeyChoice, Patterns, SigChoice, Text, Time, Wild,
};
use super::{LEEWAY_S, SECRET, SLACK_S, hmac, now};

/// Claims as they are built, in insertion order.
type Claims = Map<String, Value>;

impl Case {
    /// The token text and what the oracle expects of it.
    pub fn build(&self) -> (String, Expect) {
        let (header, alg) = self.header();
        let mut claims = Claims::new();
        let expect = alg
            .and(self.subject(&mut claims))
            .and(self.times(&mut claims, now()))
            .and(self.issuer_and_audience(&mut claims))
            .and(self.others(&mut claims));
        let (token, signature) = self.sign(&header, &claims);
        (token, expect.and(signature))
    }

    /// The header; only HS256 is accepted.
    fn header(&self) -> (Claims, Expect) {
        let mut header = Claims::new();
        let (alg, expect) = match &self.alg {
            AlgChoice::Hs256 => (json!("HS256"), Expect::Accept),
            AlgChoice::Hs384 => (json!("HS384"), Expect::Refuse),
            AlgChoice::Hs512 => (json!("HS512"), Expect::Refuse),
            AlgChoice::None => (json!("none"), Expect::Refuse),
            AlgChoice::NoneMixedCase => (json!("NoNe"), Expect::Refuse),
            AlgChoice::EdDsa => (json!("EdDSA"), Expect::Refuse),
            AlgChoice::Rs256 => (json!("RS256"), Expect::Refuse),
            AlgChoice::Lowercase => (json!("hs256"), Expect::Refuse),
            // "HS256" itself can come from `Other`.
            AlgChoice::Other(s) => (json!(s), Expect::when(s == "HS256")),
            AlgChoice::NotAString(i) => (json!(i), Expect::Refuse),
            AlgChoice::Missing => (Value::Null, Expect::Refuse),
        };
        if !alg.is_null() {
            header.insert("alg".into(), alg);
        }
        if let Some(kid) = &self.kid {
            header.insert("kid".into(), json!(kid));
        }
        if let Some(typ) = &self.typ {
            header.insert("typ".into(), json!(typ));
        }
        (header, expect)
    }

    /// The subject: `sub`, else the legacy `user_id`; an empty `sub` hides `user_id`.
    fn subject(&self, claims: &mut Claims) -> Expect {
        let user_ok = match (&self.sub, &self.user_id) {
            (Text::Value(s), _) => Expect::when(!s.is_empty()),
            (Text::Wild(_), _) => Expect::Either,
            (Text::Empty, _) => Expect::Refuse,
            (Text::Absent, Text::Value(u)) => Expect::when(!u.is_empty()),
            (Text::Absent, Text::Wild(_)) => Expect::Either,
            (Text::Absent, Text::Empty | Text::Absent) => Expect::Refuse,
        };
        put_text(claims, "sub", &self.sub)
            .and(put_text(claims, "user_id", &self.user_id))
            .and(user_ok)
    }

    /// `exp`, `nbf` and `iat`, against the clock at `now` with the leeway.
    fn times(&self, claims: &mut Claims, now: i64) -> Expect {
        let leeway = LEEWAY_S as i64;
        // `exp`: required, a non-negative integer, not before now - leeway.
        let exp = match (&self.exp, put_time(claims, "exp", &self.exp, now)) {
            (Time::Offset(_), Some(at)) if at < 0 => Expect::Refuse,
            (Time::Offset(_), Some(at)) => clock(at - (now - leeway)),
            (Time::Wild(_), _) => Expect::Either,
            _ => Expect::Refuse,
        };
        // `nbf`: optional; when present a non-negative integer not after now + leeway.
        let nbf = match (&self.nbf, put_time(claims, "nbf", &self.nbf, now)) {
            (Time::Absent, _) => Expect::Accept,
            (Time::Offset(_), Some(at)) if at < 0 => Expect::Refuse,
            (Time::Offset(_), Some(at)) => clock((now + leeway) - at),
            (Time::Wild(_), _) => Expect::Either,
            _ => Expect::Refuse,
        };
        // `iat`: carried, not checked, but it must be a non-negative integer to parse.
        let iat = match (&self.iat, put_time(claims, "iat", &self.iat, now)) {
            (Time::Absent, _) => Expect::Accept,
            (Time::Offset(_), Some(at)) => Expect::when(at >= 0),
            (Time::Wild(_), _) => Expect::Either,
            _ => Expect::Refuse,
        };
        exp.and(nbf).and(iat)
    }

    /// `iss` and `aud`: required, and equal to the configured ones (docs/protocol.md).
    fn issuer_and_audience(&self, claims: &mut Claims) -> Expect {
        let iss = match &self.iss {
            Iss::Absent => Expect::Refuse,
            Iss::Right => put_named(claims, "iss", DEFAULT_ISSUER, DEFAULT_ISSUER),
            Iss::Other(s) => put_named(claims, "iss", s, DEFAULT_ISSUER),
            Iss::ArrayRight => {
                // Herald's claims carry one issuer; an array is not one.
                claims.insert("iss".into(), json!([DEFAULT_ISSUER]));
                Expect::Refuse
            }
            Iss::Wild(w) => put_wild(claims, "iss", w),
        };
        let aud = match &self.aud {
            Aud::Absent => Expect::Refuse,
            Aud::Right => put_named(claims, "aud", DEFAULT_AUDIENCE, DEFAULT_AUDIENCE),
            Aud::Other(s) => put_named(claims, "aud", s, DEFAULT_AUDIENCE),
            Aud::ArrayWith(others) => {
                let mut all = others.clone();
                all.insert(others.len() / 2, DEFAULT_AUDIENCE.to_owned());
                claims.insert("aud".into(), json!(all));
                Expect::Accept
            }
            Aud::ArrayWithout(others) => {
                claims.insert("aud".into(), json!(others));
                Expect::when(others.iter().any(|a| a == DEFAULT_AUDIENCE))
            }
            Aud::Wild(w) => put_wild(claims, "aud", w),
        };
        iss.and(aud)
    }

    /// `jti`, the patterns, and one extra claim.
    fn others(&self, claims: &mut Claims) -> Expect {
        let mut expect = put_text(claims, "jti", &self.jti);
        for (name, p) in [("channels", &self.channels), ("publish", &self.publish)] {
            expect = expect.and(match p {
                Patterns::Absent => Expect::Accept,
                Patterns::Strings(v) => {
                    claims.insert(name.into(), json!(v));
                    Expect::Accept
                }
                Patterns::Wild(w) => put_wild(claims, name, w),
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
            claims.insert(k.clone(), w.json());
        }
        expect
    }

    /// The signed token; accepted only with the right key and an intact signature.
    fn sign(&self, header: &Claims, claims: &Claims) -> (String, Expect) {
        let h = URL_SAFE_NO_PAD.encode(Value::Object(header.clone()).to_string());
        let c = URL_SAFE_NO_PAD.encode(Value::Object(claims.clone()).to_string());
        let signing_input = format!("{h}.{c}");
        let key: Vec<u8> = match &self.key {
            KeyChoice::Right => SECRET.as_bytes().to_vec(),
            KeyChoice::Prefix => SECRET.as_bytes()[..SECRET.len() - 1].to_vec(),
            KeyChoice::Empty => Vec::new(),
            KeyChoice::Other(k) => k.clone(),
        };
        let mut expect = Expect::when(key == SECRET.as_bytes());
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

/// Puts a text claim; any string is fine here, a wild value may go either way.
fn put_text(claims: &mut Claims, name: &str, t: &Text) -> Expect {
    match t {
        Text::Absent => Expect::Accept,
        Text::Value(s) => {
            claims.insert(name.into(), json!(s));
            Expect::Accept
        }
        Text::Empty => {
            claims.insert(name.into(), json!(""));
            Expect::Accept
        }
        Text::Wild(w) => put_wild(claims, name, w),
    }
}

/// Puts a time claim; returns its time when it is an integer one.
fn put_time(claims: &mut Claims, name: &str, t: &Time, now: i64) -> Option<i64> {
    let (value, at) = match t {
        Time::Absent => return None,
        Time::Offset(d) => {
            let at = now + i64::from(*d);
            (json!(at), Some(at))
        }
        Time::AsString(d) => (json!((now + i64::from(*d)).to_string()), None),
        Time::AsFloat(d) => (json!(now as f64 + f64::from(*d) + 0.5), None),
        Time::Wild(w) => (w.json(), None),
    };
    claims.insert(name.into(), value);
    at
}

/// Puts a string claim that must equal `want`.
fn put_named(claims: &mut Claims, name: &str, value: &str, want: &str) -> Expect {
    claims.insert(name.into(), json!(value));
    Expect::when(value == want)
}

/// Puts a wild value: it may go either way.
fn put_wild(claims: &mut Claims, name: &str, w: &Wild) -> Expect {
    claims.insert(name.into(), w.json());
    Expect::Either
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
