//! The oracle on hand-picked cases, the mask, arbitrary strings and refresh tokens.

use super::case::{AlgChoice, Aud, Iss, KeyChoice, Patterns, SigChoice, Text, Time, Wild};
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
