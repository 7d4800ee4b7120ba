//! Every server frame and every client frame through both ends of the contract.

use serde_json::json;

use super::*;
use crate::client::{self, ClientMsg, Id};
use crate::disconnect::{Disconnect, Refusal};
use crate::envelope;
use crate::presence::{EventKind, event_frame};
use crate::server::{self, ServerMsg};

fn id(n: u64) -> Id {
    let raw = serde_json::value::to_raw_value(&n).unwrap();
    Id::from_raw(&raw).unwrap()
}

#[track_caller]
fn read(text: &str) -> ServerFrame {
    ServerFrame::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// Reading a frame and writing it again gives the same JSON.
#[track_caller]
fn round_trip(text: &str) -> ServerFrame {
    let frame = read(text);
    let again: Value = serde_json::to_value(&frame).unwrap();
    assert_eq!(
        again,
        serde_json::from_str::<Value>(text).unwrap(),
        "{text}"
    );
    frame
}

#[test]
fn every_reply_builder_reads_back() {
    let chans = ["news".to_owned(), "chat:lobby".to_owned()];
    assert_eq!(
        round_trip(
            &ServerMsg::auth_success("u1", "c1", "gw-1", &chans, 25_000, Some(&id(1))).to_json()
        ),
        ServerFrame::AuthSuccess {
            message: "authenticated".into(),
            user_id: "u1".into(),
            conn_id: "c1".into(),
            node: "gw-1".into(),
            channels: chans.to_vec(),
            heartbeat_interval_ms: 25_000,
            id: Some(1),
        }
    );
    assert!(matches!(
        round_trip(&ServerMsg::auth_success("u1", "c1", "gw-1", &[], 300, None).to_json()),
        ServerFrame::AuthSuccess { id: None, heartbeat_interval_ms: 300, channels, .. } if channels.is_empty()
    ));
    for recovered in [None, Some(true), Some(false)] {
        assert_eq!(
            round_trip(
                &ServerMsg::Subscribed {
                    channel: "news",
                    id: Some(&id(7)),
                    offset: 41,
                    epoch: "e1",
                    recovered,
                    server: recovered.is_none(),
                    data: None,
                }
                .to_json()
            ),
            ServerFrame::Subscribed {
                channel: "news".into(),
                id: Some(7),
                offset: 41,
                epoch: "e1".into(),
                recovered,
                server: recovered.is_none(),
                data: None,
            }
        );
    }
    for server in [false, true] {
        assert_eq!(
            round_trip(
                &ServerMsg::Unsubscribed {
                    channel: "news",
                    id: Some(&id(8)),
                    server,
                }
                .to_json()
            ),
            ServerFrame::Unsubscribed {
                channel: "news".into(),
                id: Some(8),
                server,
            }
        );
    }
    let alice = Member {
        user_id: "alice".into(),
        conn_id: "c1".into(),
        info: Some(serde_json::json!({"name": "Alice"})),
    };
    let bob = Member {
        user_id: "bob".into(),
        conn_id: "c2".into(),
        info: None,
    };
    let (a, b) = (raw(&alice.to_json()), raw(&bob.to_json()));
    assert_eq!(
        round_trip(
            &ServerMsg::Presence {
                channel: "room:1",
                id: Some(&id(3)),
                members: vec![&a, &b],
                truncated: true,
            }
            .to_json()
        ),
        ServerFrame::Presence {
            channel: "room:1".into(),
            id: Some(3),
            members: vec![alice.clone(), bob.clone()],
            truncated: true,
        }
    );
    assert_eq!(
        round_trip(
            &ServerMsg::PresenceStats {
                channel: "room:1",
                id: Some(&id(4)),
                num_clients: 3,
                num_users: 2,
            }
            .to_json()
        ),
        ServerFrame::PresenceStats {
            channel: "room:1".into(),
            id: Some(4),
            num_clients: 3,
            num_users: 2,
        }
    );
    for (kind, m) in [(EventKind::Join, &alice), (EventKind::Leave, &bob)] {
        let want = match kind {
            EventKind::Join => ServerFrame::Join {
                channel: "room:1".into(),
                member: m.clone(),
            },
            EventKind::Leave => ServerFrame::Leave {
                channel: "room:1".into(),
                member: m.clone(),
            },
        };
        assert_eq!(round_trip(&event_frame(kind, "room:1", &m.to_json())), want);
    }
    assert_eq!(
        round_trip(
            &ServerMsg::Ack {
                id: &id(9),
                channel: "chat:lobby",
                offset: 42,
                epoch: "e2"
            }
            .to_json()
        ),
        ServerFrame::Ack {
            id: 9,
            channel: "chat:lobby".into(),
            offset: 42,
            epoch: "e2".into()
        }
    );
    assert!(matches!(
        round_trip(&ServerMsg::pong(Some(&id(10))).to_json()),
        ServerFrame::Pong { id: Some(10), timestamp } if timestamp.ends_with('Z')
    ));
    assert!(matches!(
        round_trip(&ServerMsg::heartbeat().to_json()),
        ServerFrame::Heartbeat { timestamp } if timestamp.ends_with('Z')
    ));
}

#[test]
fn every_error_code_reads_back() {
    for code in ErrorCode::ALL {
        assert_eq!(
            round_trip(&ServerMsg::error(code, "why", Some(&id(3))).to_json()),
            ServerFrame::Error {
                code,
                message: "why".into(),
                id: Some(3),
                channel: None,
                retry_after_ms: None,
                app_code: None,
            }
        );
    }
    assert_eq!(
        round_trip(
            &ServerMsg::Error {
                code: ErrorCode::RateLimited,
                message: "slow down",
                id: None,
                channel: Some("news"),
                retry_after_ms: Some(250),
                app_code: None,
            }
            .to_json()
        ),
        ServerFrame::Error {
            code: ErrorCode::RateLimited,
            message: "slow down".into(),
            id: None,
            channel: Some("news".into()),
            retry_after_ms: Some(250),
            app_code: None,
        }
    );
    assert_eq!(
        round_trip(
            &ServerMsg::Error {
                code: ErrorCode::Rejected,
                message: "too spicy",
                id: Some(&id(5)),
                channel: Some("chat"),
                retry_after_ms: None,
                app_code: Some("spam"),
            }
            .to_json()
        ),
        ServerFrame::Error {
            code: ErrorCode::Rejected,
            message: "too spicy".into(),
            id: Some(5),
            channel: Some("chat".into()),
            retry_after_ms: None,
            app_code: Some("spam".into()),
        }
    );
    // A code from a newer gateway still settles the request.
    assert!(matches!(
        read(r#"{"type":"error","code":"brand_new","message":"m","id":4}"#),
        ServerFrame::Error {
            code: ErrorCode::Internal,
            id: Some(4),
            ..
        }
    ));
    let e = client::parse("[]").unwrap_err();
    assert!(matches!(
        round_trip(&e.to_frame()),
        ServerFrame::Error {
            code: ErrorCode::InvalidJson,
            ..
        }
    ));
}

#[test]
fn disconnects_and_refusals_read_back() {
    for code in DisconnectCode::KNOWN {
        for reconnect in [true, false] {
            assert_eq!(
                round_trip(
                    &ServerMsg::Disconnect {
                        code: &code,
                        reason: "why",
                        reconnect,
                        retry_after_ms: None
                    }
                    .to_json()
                ),
                ServerFrame::Disconnect {
                    code: code.clone(),
                    reason: "why".into(),
                    reconnect,
                    retry_after_ms: None,
                }
            );
        }
    }
    assert_eq!(
        round_trip(
            &Disconnect::Refused(Refusal {
                status: 503,
                code: DisconnectCode::OverCapacity,
                reason: "gateway full".into(),
                retry_after_ms: Some(1000),
            })
            .frame()
            .unwrap()
        ),
        ServerFrame::Disconnect {
            code: DisconnectCode::OverCapacity,
            reason: "gateway full".into(),
            reconnect: true,
            retry_after_ms: Some(1000),
        }
    );
    assert_eq!(
        round_trip(
            &ServerMsg::Disconnect {
                code: &DisconnectCode::Other("moved_away".into()),
                reason: "",
                reconnect: true,
                retry_after_ms: None
            }
            .to_json()
        ),
        ServerFrame::Disconnect {
            code: DisconnectCode::Other("moved_away".into()),
            reason: String::new(),
            reconnect: true,
            retry_after_ms: None,
        }
    );
}

fn raw(json: &str) -> Box<RawValue> {
    RawValue::from_string(json.to_owned()).unwrap()
}

/// A filled frame of every delivery kind, as the publish script writes it.
fn deliveries() -> Vec<(String, ServerFrame)> {
    let ts = "2026-01-05T14:47:57.123Z";
    vec![
        (
            envelope::message("chat:lobby", &raw(r#"{"text":"hi"}"#), Some("u1"), ts)
                .fill(42, "e1"),
            ServerFrame::Message {
                channel: "chat:lobby".into(),
                offset: 42,
                epoch: "e1".into(),
                message: json!({"text":"hi"}),
                from_user: Some("u1".into()),
                timestamp: ts.into(),
            },
        ),
        (
            envelope::message("news", &raw("null"), None, ts).fill(1, "e1"),
            ServerFrame::Message {
                channel: "news".into(),
                offset: 1,
                epoch: "e1".into(),
                message: Value::Null,
                from_user: None,
                timestamp: ts.into(),
            },
        ),
        (
            envelope::system_notification(&raw(r#""maintenance""#), ts).fill(3, "e2"),
            ServerFrame::SystemNotification {
                channel: "system".into(),
                offset: 3,
                epoch: "e2".into(),
                message: json!("maintenance"),
                timestamp: ts.into(),
            },
        ),
        (
            envelope::user_message("chat:lobby", "bot", &raw(r#"{"t":1}"#), ts).fill(43, "e1"),
            ServerFrame::UserMessage {
                channel: "chat:lobby".into(),
                offset: 43,
                epoch: "e1".into(),
                user_id: "bot".into(),
                content: json!({"t":1}),
                timestamp: ts.into(),
            },
        ),
        (
            envelope::processing_result(
                "news",
                "j1",
                "sleep",
                "done",
                &raw(r#"{"slept_ms":5}"#),
                ts,
            )
            .fill(7, "e3"),
            ServerFrame::ProcessingResult {
                channel: "news".into(),
                offset: 7,
                epoch: "e3".into(),
                job_id: "j1".into(),
                job_type: "sleep".into(),
                status: JobStatus::Done,
                result: json!({"slept_ms":5}),
                timestamp: ts.into(),
            },
        ),
    ]
}

#[test]
fn every_delivery_kind_reads_back() {
    for (text, want) in deliveries() {
        let got = round_trip(&text);
        assert_eq!(got, want, "{text}");
        assert!(got.delivery().is_some());
    }
    assert!(matches!(
        read(
            r#"{"type":"processing_result","channel":"c","offset":1,"epoch":"e","job_id":"j","job_type":"t","status":"lost","result":null,"timestamp":"t"}"#
        ),
        ServerFrame::ProcessingResult {
            status: JobStatus::Unknown,
            ..
        }
    ));
}

#[test]
fn batches_read_back_in_order() {
    let frames = deliveries();
    let text = server::batch(frames.iter().map(|(t, _)| t.as_str()));
    assert_eq!(
        round_trip(&text),
        ServerFrame::BatchMessages {
            count: frames.len(),
            messages: frames.into_iter().map(|(_, f)| f).collect(),
        }
    );
}

#[test]
fn history_replies_read_back_with_every_delivery_kind() {
    let frames = deliveries();
    let publications: Vec<&RawValue> = frames
        .iter()
        .map(|(t, _)| serde_json::from_str(t).unwrap())
        .collect();
    assert_eq!(
        round_trip(
            &ServerMsg::History {
                channel: "news",
                id: Some(&id(11)),
                publications,
                offset: 42,
                epoch: "e1",
            }
            .to_json()
        ),
        ServerFrame::History {
            channel: "news".into(),
            id: Some(11),
            publications: frames.iter().map(|(_, f)| f.clone()).collect(),
            offset: 42,
            epoch: "e1".into(),
        }
    );
    // Nothing kept, no id: still a reply.
    assert_eq!(
        round_trip(
            &ServerMsg::History {
                channel: "news",
                id: None,
                publications: vec![],
                offset: 0,
                epoch: "e2",
            }
            .to_json()
        ),
        ServerFrame::History {
            channel: "news".into(),
            id: None,
            publications: vec![],
            offset: 0,
            epoch: "e2".into(),
        }
    );
    // A kind of delivery this version does not know does not lose the others.
    let ServerFrame::History { publications, .. } = read(
        r#"{"type":"history","channel":"c","id":1,"publications":[{"type":"future"},{"type":"message","channel":"c","offset":1,"epoch":"e","message":1,"timestamp":"t"}],"offset":1,"epoch":"e"}"#,
    ) else {
        panic!("not a history reply")
    };
    assert_eq!(publications[0], ServerFrame::Unknown);
    assert_eq!(publications[1].delivery(), Some(("c", 1, "e")));
}

#[test]
fn unknown_types_and_fields_are_tolerated() {
    assert_eq!(
        read(r#"{"type":"future_frame","who":["a"]}"#),
        ServerFrame::Unknown
    );
    assert_eq!(
        read(r#"{"type":"heartbeat","timestamp":"t","load":0.5,"extra":{"a":[1]}}"#),
        ServerFrame::Heartbeat {
            timestamp: "t".into()
        }
    );
    // Inside a batch too: the known deliveries survive the unknown frame.
    let batch = read(
        r#"{"type":"batch_messages","count":2,"messages":[{"type":"future"},{"type":"message","channel":"c","offset":1,"epoch":"e","message":1,"timestamp":"t","new":true}]}"#,
    );
    let ServerFrame::BatchMessages { messages, .. } = batch else {
        panic!("not a batch: {batch:?}")
    };
    assert_eq!(messages[0], ServerFrame::Unknown);
    assert_eq!(messages[1].delivery(), Some(("c", 1, "e")));
    assert!(ServerFrame::parse(r#"{"no_type":1}"#).is_err());
}

/// Checks that the gateway's parser reads `frame` as `want`.
#[track_caller]
fn accepted(frame: ClientFrame, want: &ClientMsg) {
    let text = frame.to_json();
    let got = client::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
    assert_eq!(&got, want, "{text}");
}

#[test]
fn every_client_frame_is_accepted_by_the_gateway_parser() {
    accepted(
        ClientFrame::Auth {
            token: "t.k.n".into(),
            channels: vec![],
            batch: true,
            id: Some(1),
        },
        &ClientMsg::Auth {
            token: Some("t.k.n".into()),
            channels: vec![],
            batch: true,
            data: None,
            id: Some(id(1)),
        },
    );
    accepted(
        ClientFrame::Auth {
            token: "t".into(),
            channels: vec!["news".into()],
            batch: false,
            id: None,
        },
        &ClientMsg::Auth {
            token: Some("t".into()),
            channels: vec!["news".into()],
            batch: false,
            data: None,
            id: None,
        },
    );
    accepted(
        ClientFrame::Subscribe {
            channel: "news".into(),
            since: None,
            join_leave: false,
            id: Some(7),
        },
        &ClientMsg::Subscribe {
            channel: "news".into(),
            since: None,
            join_leave: false,
            id: Some(id(7)),
        },
    );
    accepted(
        ClientFrame::Subscribe {
            channel: "room:1".into(),
            since: None,
            join_leave: true,
            id: None,
        },
        &ClientMsg::Subscribe {
            channel: "room:1".into(),
            since: None,
            join_leave: true,
            id: None,
        },
    );
    accepted(
        ClientFrame::Presence {
            channel: "room:1".into(),
            id: Some(12),
        },
        &ClientMsg::Presence {
            channel: "room:1".into(),
            id: Some(id(12)),
        },
    );
    accepted(
        ClientFrame::PresenceStats {
            channel: "room:1".into(),
            id: Some(13),
        },
        &ClientMsg::PresenceStats {
            channel: "room:1".into(),
            id: Some(id(13)),
        },
    );
    accepted(
        ClientFrame::Subscribe {
            channel: "news".into(),
            since: Some(Position::new(41, "a1b2")),
            join_leave: false,
            id: Some(u64::MAX),
        },
        &ClientMsg::Subscribe {
            channel: "news".into(),
            since: Some(client::Since {
                offset: 41,
                epoch: "a1b2".into(),
            }),
            join_leave: false,
            id: Some(id(u64::MAX)),
        },
    );
    accepted(
        ClientFrame::Unsubscribe {
            channel: "news".into(),
            id: Some(8),
        },
        &ClientMsg::Unsubscribe {
            channel: "news".into(),
            id: Some(id(8)),
        },
    );
    for message in [r#"{"b":1, "a":[2]}"#, "null", r#""text""#] {
        accepted(
            ClientFrame::Broadcast {
                channel: "chat:lobby".into(),
                message: raw(message),
                id: Some(9),
            },
            &ClientMsg::Broadcast {
                channel: "chat:lobby".into(),
                message: client::RawJson(raw(message)),
                id: Some(id(9)),
            },
        );
    }
    accepted(
        ClientFrame::Ping { id: Some(10) },
        &ClientMsg::Ping { id: Some(id(10)) },
    );
    accepted(
        ClientFrame::Ping { id: None },
        &ClientMsg::Ping { id: None },
    );
    accepted(
        ClientFrame::History {
            channel: "news".into(),
            since: Some(Position::new(41, "a1b2")),
            limit: Some(20),
            reverse: true,
            id: Some(11),
        },
        &ClientMsg::History {
            channel: "news".into(),
            since: Some(client::Since {
                offset: 41,
                epoch: "a1b2".into(),
            }),
            limit: Some(20),
            reverse: true,
            id: Some(id(11)),
        },
    );
    accepted(
        ClientFrame::History {
            channel: "news".into(),
            since: None,
            limit: None,
            reverse: false,
            id: None,
        },
        &ClientMsg::History {
            channel: "news".into(),
            since: None,
            limit: None,
            reverse: false,
            id: None,
        },
    );
}

#[test]
fn tokens_stay_out_of_debug_output() {
    let frame = ClientFrame::Auth {
        token: "secret-token".into(),
        channels: vec![],
        batch: false,
        id: None,
    };
    assert!(!format!("{frame:?}").contains("secret-token"));
    assert!(frame.to_json().contains("secret-token"));
}
