//! herald-client's presence against real gateways, on both engines: `presence()` and
//! `presence_stats()` across two gateways, the join and leave (with its token's
//! `info`) of a connection on the other gateway, events kept on through a reconnect,
//! and the gateway's refusals as typed errors.

use herald_client::{
    Client, ConnState, ErrorCode, Event, Member, PresenceError, PresenceStats, SubscribeOptions,
    Subscription, TokenSource,
};
use serde_json::{Value, json};

use super::client::{connected, next_event, options, subscribed, until};
use super::gateway::{gateway, now};
use crate::{Backend, Ws, eventually, token_with};

/// A token for `sub` that may subscribe to `room:*`, with extra claims.
fn room_token(sub: &str, extra: Value) -> String {
    let mut claims = json!({
        "sub": sub,
        "channels": ["room:*"],
        "exp": now() + 3600,
        "iss": "herald-auth",
        "aud": "herald",
    });
    if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    token_with(claims)
}

fn join_leave() -> SubscribeOptions {
    SubscribeOptions {
        join_leave: true,
        ..SubscribeOptions::default()
    }
}

fn conn_id(auth_success: &Value) -> String {
    auth_success["conn_id"]
        .as_str()
        .unwrap_or_else(|| panic!("conn_id: {auth_success}"))
        .to_owned()
}

/// The next join or leave that is not about `ignored` (this client's own earlier
/// connection, whose leave may reach the new one), skipping `subscribed`.
async fn next_presence_event(sub: &mut Subscription, ignored: &str) -> Event {
    loop {
        match next_event(sub).await {
            Event::Subscribed(_) => {}
            Event::Join(m) | Event::Leave(m) if m.conn_id == ignored => {}
            e @ (Event::Join(_) | Event::Leave(_)) => return e,
            other => panic!("expected a join or leave, got {other:?}"),
        }
    }
}

/// `client`'s view of the channel's members, as sorted `(user_id, conn_id)`.
async fn members(client: &Client) -> Vec<(String, String)> {
    let p = client.presence("room:1").await.expect("presence");
    assert!(!p.truncated, "{p:?}");
    let mut out: Vec<(String, String)> = p
        .members
        .into_iter()
        .map(|m| (m.user_id, m.conn_id))
        .collect();
    out.sort();
    out
}

async fn client_presence_sees_members_and_their_comings_and_goings(backend: Backend) {
    let mut gw1 = gateway(&backend).spawn().await;
    let gw2 = gateway(&backend).spawn().await;
    let carol_t = room_token("carol", json!({"info": {"name": "Carol"}}));
    let client = Client::connect([gw1.ws()], TokenSource::fixed(carol_t), options());
    let mut room = client.subscribe_with("room:1", join_leave());
    let (_, carol) = connected(&client).await;
    subscribed(&mut room).await;

    // Alice comes on the other gateway: her join carries her token's info.
    let alice_info = json!({"name": "Alice", "role": "admin"});
    let alice_t = room_token("alice", json!({"info": alice_info}));
    let (alice, ok) = Ws::auth(&gw2, &alice_t, &["room:1"]).await;
    let alice_member = Member {
        user_id: "alice".to_owned(),
        conn_id: conn_id(&ok),
        info: Some(alice_info.clone()),
    };
    assert_eq!(
        next_presence_event(&mut room, "").await,
        Event::Join(alice_member.clone())
    );

    // Both are listed, with their info, whichever gateway holds them.
    let p = client.presence("room:1").await.expect("presence");
    let mut listed = p.members.clone();
    listed.sort_by(|a, b| a.user_id.cmp(&b.user_id));
    assert_eq!(
        listed,
        [
            alice_member.clone(),
            Member {
                user_id: "carol".to_owned(),
                conn_id: carol.clone(),
                info: Some(json!({"name": "Carol"})),
            }
        ],
        "{p:?}"
    );
    assert!(!p.truncated);
    assert_eq!(
        client.presence_stats("room:1").await,
        Ok(PresenceStats {
            num_clients: 2,
            num_users: 2
        })
    );

    // A second connection of Alice's counts as a client, not a user; it comes and
    // goes, then the first leaves.
    let (alice2, ok2) = Ws::auth(&gw2, &alice_t, &["room:1"]).await;
    match next_presence_event(&mut room, "").await {
        Event::Join(m) => assert_eq!((m.user_id, m.conn_id), ("alice".to_owned(), conn_id(&ok2))),
        other => panic!("expected a join, got {other:?}"),
    }
    assert_eq!(
        client.presence_stats("room:1").await,
        Ok(PresenceStats {
            num_clients: 3,
            num_users: 2
        })
    );
    alice2.close().await;
    match next_presence_event(&mut room, "").await {
        Event::Leave(m) => assert_eq!(m.conn_id, conn_id(&ok2)),
        other => panic!("expected a leave, got {other:?}"),
    }
    alice.close().await;
    assert_eq!(
        next_presence_event(&mut room, "").await,
        Event::Leave(alice_member)
    );
    assert_eq!(
        members(&client).await,
        [("carol".to_owned(), carol.clone())]
    );

    // The client's gateway restarts: the client reconnects, renews the subscription
    // with its events, and the next join reaches it.
    gw1.restart().await;
    let again = match until(
        &client,
        "the reconnect",
        |s| matches!(s, ConnState::Connected { conn_id, .. } if *conn_id != carol),
    )
    .await
    {
        ConnState::Connected { conn_id, .. } => conn_id,
        other => unreachable!("{other:?}"),
    };
    loop {
        match next_event(&mut room).await {
            Event::Subscribed(_) => break,
            Event::Leave(m) if m.conn_id == carol => {}
            other => panic!("expected the renewed subscription, got {other:?}"),
        }
    }
    let (_bob, ok) = Ws::auth(&gw2, &room_token("bob", json!({})), &["room:1"]).await;
    assert_eq!(
        next_presence_event(&mut room, &carol).await,
        Event::Join(Member {
            user_id: "bob".to_owned(),
            conn_id: conn_id(&ok),
            info: None,
        })
    );
    // The connection before the restart is gone from the channel; the new one is in.
    let want = vec![
        ("bob".to_owned(), conn_id(&ok)),
        ("carol".to_owned(), again),
    ];
    let client = &client;
    eventually("presence after the reconnect", || {
        let want = want.clone();
        async move {
            let got = members(client).await;
            if got == want {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        }
    })
    .await;
    client.close().await;
}

async fn client_presence_refusals_are_typed_errors(mut backend: Backend) {
    let gw = gateway(&backend).spawn().await;
    // May subscribe to the room, may not see who is in it.
    let t = room_token("dave", json!({"presence": []}));
    let client = Client::connect([gw.ws()], TokenSource::fixed(t), options());
    let refusal = |r: Result<_, PresenceError>| match r {
        Err(PresenceError::Refused { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(
        refusal(client.presence("room:1").await.map(|_| ())),
        ErrorCode::Forbidden
    );
    assert_eq!(
        refusal(client.presence_stats("room:1").await.map(|_| ())),
        ErrorCode::Forbidden
    );
    // Asking for join/leave events is refused the same; subscribing without is not.
    let mut events = client.subscribe_with("room:1", join_leave());
    match next_event(&mut events).await {
        Event::Error(e) => assert_eq!(e.code, ErrorCode::Forbidden, "{e}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let mut plain = client.subscribe("room:2", None);
    subscribed(&mut plain).await;
    // Refusals leave the connection up; a user who may look sees Dave in room:2.
    let allowed = Client::connect(
        [gw.ws()],
        TokenSource::fixed(room_token("erin", json!({}))),
        options(),
    );
    assert_eq!(
        allowed.presence_stats("room:2").await,
        Ok(PresenceStats {
            num_clients: 1,
            num_users: 1
        })
    );
    assert!(client.state().is_connected());
    if let Backend::Redis(redis) = &mut backend {
        redis.kill().await;
        assert_eq!(
            refusal(allowed.presence("room:2").await.map(|_| ())),
            ErrorCode::Unavailable
        );
    }
    allowed.close().await;
    client.close().await;
}

crate::both_engines!(
    client_presence_sees_members_and_their_comings_and_goings,
    client_presence_refusals_are_typed_errors,
);
