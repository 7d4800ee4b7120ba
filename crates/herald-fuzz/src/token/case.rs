//! How a structured token is generated: each part picked from valid and invalid
//! choices, a mask that forces some parts valid, and the check of one case.

use arbitrary::{Arbitrary, Unstructured};
use serde_json::{Value, json};

use super::{sound, verify};

/// A JSON value of any type, kept flat so generation stays cheap.
#[derive(Debug, Clone, Arbitrary)]
pub(super) enum Wild {
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
    pub(super) fn json(&self) -> Value {
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
pub(super) enum AlgChoice {
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
pub(super) enum KeyChoice {
    Right,
    /// A key that shares a prefix with the right one.
    Prefix,
    Empty,
    Other(Vec<u8>),
}

#[derive(Debug, Clone, Arbitrary)]
pub(super) enum SigChoice {
    Keep,
    Empty,
    FlipBit(u8),
    Truncate(u8),
    Random(Vec<u8>),
}

/// A time claim relative to now.
#[derive(Debug, Clone, Arbitrary)]
pub(super) enum Time {
    Absent,
    /// Seconds from now.
    Offset(i32),
    AsString(i32),
    AsFloat(i32),
    Wild(Wild),
}

#[derive(Debug, Clone, Arbitrary)]
pub(super) enum Text {
    Absent,
    Value(String),
    Empty,
    Wild(Wild),
}

#[derive(Debug, Clone, Arbitrary)]
pub(super) enum Iss {
    Absent,
    Right,
    Other(String),
    /// `["herald-auth"]`.
    ArrayRight,
    Wild(Wild),
}

#[derive(Debug, Clone, Arbitrary)]
pub(super) enum Aud {
    Absent,
    Right,
    Other(String),
    /// An array that holds the right audience among others.
    ArrayWith(Vec<String>),
    ArrayWithout(Vec<String>),
    Wild(Wild),
}

#[derive(Debug, Clone, Arbitrary)]
pub(super) enum Patterns {
    Absent,
    Strings(Vec<String>),
    Wild(Wild),
}

/// One generated token: how each part was made.
#[derive(Debug, Clone, Arbitrary)]
pub struct Case {
    pub(super) alg: AlgChoice,
    pub(super) kid: Option<String>,
    pub(super) typ: Option<String>,
    pub(super) key: KeyChoice,
    pub(super) sig: SigChoice,
    pub(super) sub: Text,
    pub(super) user_id: Text,
    pub(super) exp: Time,
    pub(super) nbf: Time,
    pub(super) iat: Time,
    pub(super) iss: Iss,
    pub(super) aud: Aud,
    pub(super) jti: Text,
    pub(super) channels: Patterns,
    pub(super) publish: Patterns,
    pub(super) extra: Option<(String, Wild)>,
}

/// What the oracle expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Accept,
    Refuse,
    /// Either is fine (a wild value, or a clock check within [`SLACK_S`](super::SLACK_S) of its
    /// boundary); soundness is still checked.
    Either,
}

impl Expect {
    pub(super) fn and(self, other: Self) -> Self {
        match (self, other) {
            (Self::Refuse, _) | (_, Self::Refuse) => Self::Refuse,
            (Self::Either, _) | (_, Self::Either) => Self::Either,
            _ => Self::Accept,
        }
    }

    pub(super) fn when(ok: bool) -> Self {
        if ok { Self::Accept } else { Self::Refuse }
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
    pub(super) fn force_valid(&mut self, mask: u8) {
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
