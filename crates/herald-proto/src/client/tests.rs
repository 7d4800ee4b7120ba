//! Client frame parsing: each failure's error code and the request's id.

use super::*;

#[track_caller]
fn err(text: &str, code: ErrorCode, id: Option<&str>) {
    let e = parse(text).unwrap_err();
    assert_eq!(e.code, code, "{text}: {e}");
    assert_eq!(e.id.as_ref().map(Id::as_json), id, "{text}");
}

#[test]
fn error_codes_have_one_spelling() {
    for (code, name) in ErrorCode::ALL.into_iter().zip(ERROR_CODE_NAMES) {
        assert_eq!(code.as_str(), name);
        assert_eq!(ErrorCode::parse(name), Some(code));
        let json = serde_json::to_string(&code).unwrap();
        assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
    }
    assert_eq!(ErrorCode::parse("nope"), None);
    assert!(serde_json::from_str::<ErrorCode>(r#""nope""#).is_err());
}

#[test]
fn first_frame_without_type_is_auth() {
    let m = parse(r#"{"token":"t","channels":["news"]}"#).unwrap();
    assert_eq!(
        m,
        ClientMsg::Auth {
            token: Some("t".into()),
            channels: vec!["news".into()],
            batch: false,
            data: None,
            id: None
        }
    );
    let m = parse(r#"{"type":"auth","token":"t","batch":true,"id":1}"#).unwrap();
    assert!(matches!(m, ClientMsg::Auth { batch: true, .. }));
    // No token: the application's backend may say who it is (connect proxy).
    let m = parse(r#"{"type":"auth","data":{"room":"42"}}"#).unwrap();
    let ClientMsg::Auth { token, data, .. } = m else {
        panic!("not an auth frame")
    };
    assert_eq!(
        (token, data.map(|d| d.get().to_owned())),
        (None, Some(r#"{"room":"42"}"#.to_owned()))
    );
    // Without `type`, only a token says it is an auth frame.
    assert!(parse(r#"{"data":{}}"#).is_err());
}

#[test]
fn requests() {
    let m =
        parse(r#"{"type":"subscribe","channel":"news","id":7,"since":{"offset":41,"epoch":"e"}}"#)
            .unwrap();
    assert_eq!(
        m,
        ClientMsg::Subscribe {
            channel: "news".into(),
            since: Some(Since {
                offset: 41,
                epoch: "e".into()
            }),
            join_leave: false,
            id: Some(Id("7".into()))
        }
    );
    assert!(matches!(
        parse(r#"{"type":"subscribe","channel":"room:1","join_leave":true}"#).unwrap(),
        ClientMsg::Subscribe {
            join_leave: true,
            ..
        }
    ));
    let e =
        parse(r#"{"type":"subscribe","channel":"room:1","join_leave":"yes","id":3}"#).unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert_eq!(e.message, "join_leave must be a boolean");
    assert_eq!(
        parse(r#"{"type":"presence","channel":"room:1","id":7,"extra":1}"#).unwrap(),
        ClientMsg::Presence {
            channel: "room:1".into(),
            id: Some(Id("7".into()))
        }
    );
    assert_eq!(
        parse(r#"{"type":"presence_stats","channel":"room:1"}"#).unwrap(),
        ClientMsg::PresenceStats {
            channel: "room:1".into(),
            id: None
        }
    );
    assert_eq!(
        parse(r#"{"type":"presence","id":2}"#).unwrap_err().message,
        "missing field: channel"
    );
    let m = parse(r#"{"type":"broadcast","channel":"news","message":{"b":1, "a":[2]},"id":"x"}"#)
        .unwrap();
    let ClientMsg::Broadcast { message, id, .. } = m else {
        panic!("not a broadcast")
    };
    assert_eq!(message.get(), r#"{"b":1, "a":[2]}"#);
    assert_eq!(id.unwrap().as_json(), "\"x\"");
    let m = parse(r#"{"type":"broadcast","channel":"news","message":null}"#).unwrap();
    let ClientMsg::Broadcast { message, .. } = m else {
        panic!("not a broadcast")
    };
    assert_eq!(message.get(), "null");
    assert_eq!(
        parse(r#"{"type":"ping"}"#).unwrap(),
        ClientMsg::Ping { id: None }
    );
}

#[test]
fn errors() {
    err("not json", ErrorCode::InvalidJson, None);
    err("[1,2]", ErrorCode::InvalidJson, None);
    err("42", ErrorCode::InvalidJson, None);
    err(r#""str""#, ErrorCode::InvalidJson, None);
    err(r#"{"type":"ping""#, ErrorCode::InvalidJson, None);
    err(
        r#"{"type":"dance","id":3}"#,
        ErrorCode::UnsupportedType,
        Some("3"),
    );
    err(r#"{"type":5}"#, ErrorCode::UnsupportedType, None);
    err(r#"{}"#, ErrorCode::UnsupportedType, None);
    err(
        r#"{"type":"subscribe","id":4}"#,
        ErrorCode::BadRequest,
        Some("4"),
    );
    err(
        r#"{"type":"subscribe","channel":7,"id":4}"#,
        ErrorCode::BadRequest,
        Some("4"),
    );
    err(
        r#"{"type":"subscribe","channel":"a b"}"#,
        ErrorCode::BadRequest,
        None,
    );
    err(
        r#"{"type":"subscribe","channel":"ok","since":5}"#,
        ErrorCode::BadRequest,
        None,
    );
    err(
        r#"{"type":"broadcast","channel":"news"}"#,
        ErrorCode::BadRequest,
        None,
    );
    err(r#"{"type":"auth","token":1}"#, ErrorCode::BadRequest, None);
    err(
        r#"{"type":"auth","token":"t","channels":"news"}"#,
        ErrorCode::BadRequest,
        None,
    );
    err(
        r#"{"type":"ping","id":{"x":1}}"#,
        ErrorCode::BadRequest,
        None,
    );
}

/// `n` arrays nested in each other, the innermost holding `inner`.
fn nested(n: usize, inner: &str) -> String {
    format!("{}{inner}{}", "[".repeat(n), "]".repeat(n))
}

#[track_caller]
fn deeper(json: &str, limit: usize, expected: bool) {
    assert!(
        serde_json::from_str::<serde::de::IgnoredAny>(json).is_ok(),
        "not JSON: {json}"
    );
    assert_eq!(
        nests_deeper_than(json.as_bytes(), limit),
        expected,
        "{json}"
    );
}

#[test]
fn nesting_depth() {
    // Scalars have no depth; the message itself is level 1.
    deeper("1", 0, false);
    deeper(r#""[[[""#, 0, false);
    deeper("[]", 0, true);
    deeper("[]", 1, false);
    deeper(r#"{"a":{"b":[1,{"c":2}]}}"#, 3, true);
    deeper(r#"{"a":{"b":[1,{"c":2}]}}"#, 4, false);
    // Siblings do not add up; only the deepest path counts.
    deeper("[[1],[2],[[3]]]", 3, false);
    deeper("[[1],[2],[[3]]]", 2, true);
    // Brackets and braces inside strings are text, escapes included.
    deeper(r#"["[[[[{{{{"]"#, 1, false);
    deeper(r#"{"k]}":"\"[[[\\","x":["\\"]}"#, 2, false);
    deeper(r#"["\\",["\\\"]"]]"#, 1, true);
    deeper(r#"["\u005b\u005b"]"#, 1, false);
    // Exactly the limit passes, one more level does not.
    let limit = MAX_MESSAGE_DEPTH;
    deeper(&nested(limit, "1"), limit, false);
    deeper(&nested(limit + 1, "1"), limit, true);
    deeper(&nested(limit - 1, r#"{"a":"]]]]"}"#), limit, false);
    deeper(&nested(limit, r#"{"a":"[[[["}"#), limit, true);
    // Far too deep stops early, whatever serde_json's own limits are.
    deeper(&nested(100_000, ""), limit, true);
}

#[test]
fn deep_broadcasts_are_bad_requests() {
    let frame = |message: &str| {
        format!(r#"{{"type":"broadcast","channel":"news","id":9,"message":{message}}}"#)
    };
    let ok = nested(MAX_MESSAGE_DEPTH, r#""[""#);
    assert!(matches!(
        parse(&frame(&ok)),
        Ok(ClientMsg::Broadcast { message, .. }) if message.get() == ok
    ));
    err(
        &frame(&nested(MAX_MESSAGE_DEPTH + 1, "")),
        ErrorCode::BadRequest,
        Some("9"),
    );
    err(
        &frame(&nested(100_000, "")),
        ErrorCode::BadRequest,
        Some("9"),
    );
}

/// The nesting depth of a parsed value (a scalar is 0).
fn depth(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Arbitrary JSON whose strings are full of brackets, quotes and backslashes.
fn json_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<i32>().prop_map(serde_json::Value::from),
        "[\\[\\]{}\"\\\\a ]{0,6}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(10, 64, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            proptest::collection::btree_map("[\\]{\"\\\\k]{0,4}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest::proptest! {
    /// Whatever bytes arrive, parsing returns and never panics.
    #[test]
    fn never_panics(s in ".{0,200}") {
        let _ = parse(&s);
    }

    /// The scan agrees with a real parser's depth on any JSON value.
    #[test]
    fn depth_matches_a_parser(v in json_value(), limit in 0usize..8) {
        let text = v.to_string();
        proptest::prop_assert_eq!(nests_deeper_than(text.as_bytes(), limit), depth(&v) > limit, "{}", text);
    }

    /// Frames built from structured noise parse or fail with a spec error code.
    #[test]
    fn structured_noise(kind in proptest::option::of("(subscribe|unsubscribe|broadcast|ping|auth|x)"),
                        channel in proptest::option::of("[a-z: ]{0,8}"),
                        id in proptest::option::of(0u32..100)) {
        let mut obj = serde_json::Map::new();
        if let Some(k) = kind { obj.insert("type".into(), k.into()); }
        if let Some(c) = channel { obj.insert("channel".into(), c.into()); }
        if let Some(i) = id { obj.insert("id".into(), i.into()); }
        let text = serde_json::Value::Object(obj).to_string();
        match parse(&text) {
            Ok(m) => proptest::prop_assert_eq!(m.id().map(|i| i.as_json().to_owned()), id.map(|i| i.to_string())),
            Err(e) => proptest::prop_assert!(e.code != ErrorCode::InvalidJson, "{}", text),
        }
    }
}
