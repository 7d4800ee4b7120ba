//! herald.js's presence in a real headless Chromium against a real gateway: the page
//! imports the client from the gateway's `/herald.js`, subscribes with `joinLeave`,
//! sees other connections join and leave with their `info`, lists the members and
//! counts them, and is refused presence by a token whose `presence` claim allows none.

use serde_json::{Value, json};

use crate::browser::{Browser, Page, open_herald_page};
use crate::{Redis, ServiceBuilder, Ws, token_with};

/// A page that imports herald.js from the gateway at `gateway_http`.
async fn open_page(browser: &Browser, gateway_http: &str) -> (Page, tokio::task::JoinHandle<()>) {
    open_herald_page(browser, gateway_http, "herald.js presence").await
}

/// A token for `sub` that may subscribe to `room:*`, with extra claims (`info`,
/// `presence`).
fn room_token(sub: &str, extra: Value) -> String {
    let now = jsonwebtoken::get_current_timestamp();
    let mut claims = json!({
        "sub": sub,
        "channels": ["room:*"],
        "exp": now + 3600,
        "iat": now,
        "iss": "herald-auth",
        "aud": "herald",
    });
    if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    token_with(claims)
}

/// The `conn_id` of an `auth_success`.
fn conn_id(ok: &Value) -> String {
    ok["conn_id"]
        .as_str()
        .unwrap_or_else(|| panic!("conn_id: {ok}"))
        .to_owned()
}

/// The page's join/leave events once there are `n` of them, as `[kind, event]` pairs.
async fn events(page: &Page, n: usize) -> Value {
    page.wait_for(
        &format!("{n} join/leave events in the page"),
        &format!("window.events.length >= {n} && window.events"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_js_sees_presence_on_a_real_gateway() {
    let redis = Redis::start().await;
    let gw = ServiceBuilder::new("ws-gateway")
        .redis(&redis)
        // Development mode admits the test page's origin.
        .env("HERALD_DEV", "1")
        .spawn()
        .await;
    let browser = Browser::start().await;
    let (page, _server) = open_page(&browser, &gw.http()).await;
    let url = json!(gw.ws());
    let alice = json!(room_token("alice", json!({"info": {"name": "Alice"}})));

    // Alice, in the page, listens for joins and leaves on room:1.
    let subscribed = page
        .eval(&format!(
            "window.h = new herald.Herald({url}, {{ token: {alice} }}); \
             window.events = []; \
             h.on('state', (s) => {{ if (s.state === 'connected') window.aliceConn = s.connId; }}); \
             window.room = h.subscribe('room:1', {{ joinLeave: true }}); \
             room.on('join', (e) => events.push(['join', e])); \
             room.on('leave', (e) => events.push(['leave', e])); \
             new Promise((resolve) => room.on('subscribed', resolve))"
        ))
        .await;
    assert_eq!(subscribed["channel"], "room:1", "{subscribed}");
    let position = page.eval("room.position").await;
    let a_id = page.eval("window.aliceConn").await;
    assert!(a_id.is_string(), "{a_id}");

    // Bob joins with an `info` claim: the page sees him, with his info.
    let bob_t = room_token("bob", json!({"info": {"name": "Bob", "role": "guest"}}));
    let (mut bob, b_ok) = Ws::auth(&gw, &bob_t, &[]).await;
    let b_id = conn_id(&b_ok);
    bob.send(json!({"type":"subscribe","channel":"room:1","id":1}))
        .await;
    assert_eq!(bob.recv_type("subscribed").await["id"], 1);
    let bob_member = json!({"userId":"bob","connId":b_id,"info":{"name":"Bob","role":"guest"}});
    let mut bob_event = bob_member.clone();
    bob_event["channel"] = json!("room:1");
    assert_eq!(events(&page, 1).await, json!([["join", bob_event]]));

    // A second connection of Bob's, with no `info`: a member without one.
    let (bob2, b2_ok) = Ws::auth(&gw, &room_token("bob", json!({})), &["room:1"]).await;
    let b2_id = conn_id(&b2_ok);
    let got = events(&page, 2).await;
    assert_eq!(
        got[1],
        json!(["join", {"channel":"room:1","userId":"bob","connId":b2_id}])
    );

    // Presence lists all three (Alice's own connection included); the stats count
    // three connections of two users.
    let here = page.eval("h.presence('room:1')").await;
    assert_eq!(here["truncated"], false, "{here}");
    let mut members = here["members"]
        .as_array()
        .unwrap_or_else(|| panic!("members: {here}"))
        .clone();
    members.sort_by_key(|m| (m["userId"].to_string(), m["connId"].to_string()));
    let mut want = vec![
        json!({"userId":"alice","connId":a_id,"info":{"name":"Alice"}}),
        bob_member.clone(),
        json!({"userId":"bob","connId":b2_id}),
    ];
    want.sort_by_key(|m| (m["userId"].to_string(), m["connId"].to_string()));
    assert_eq!(members, want);
    let stats = page.eval("h.presenceStats('room:1')").await;
    assert_eq!(stats, json!({"numClients": 3, "numUsers": 2}));

    // Bob unsubscribes: the page sees him leave, with the same member.
    bob.send(json!({"type":"unsubscribe","channel":"room:1","id":2}))
        .await;
    assert_eq!(bob.recv_type("unsubscribed").await["id"], 2);
    let got = events(&page, 3).await;
    assert_eq!(got[2], json!(["leave", bob_event]));
    let stats = page.eval("h.presenceStats('room:1')").await;
    assert_eq!(stats, json!({"numClients": 2, "numUsers": 2}));
    // The events never touched the subscription's position, and Alice never heard of
    // her own join.
    assert_eq!(page.eval("room.position").await, position);
    assert_eq!(page.eval("events.length").await, 3);
    assert_eq!(
        page.eval("events.every(([, e]) => e.connId !== window.aliceConn)")
            .await,
        true
    );

    // A token whose `presence` claim allows none: both reads are refused with
    // `forbidden`, and so is a subscription asking for joins and leaves.
    let carol = json!(room_token("carol", json!({"presence": []})));
    let refused = page
        .eval(&format!(
            "window.c = new herald.Herald({url}, {{ token: {carol} }}); \
             Promise.all([ \
               c.presence('room:1').then(() => 'read', \
                 (e) => [e instanceof herald.HeraldError, e.code, e.channel]), \
               c.presenceStats('room:1').then(() => 'read', (e) => e.code), \
               new Promise((resolve) => {{ \
                 const s = c.subscribe('room:2', {{ joinLeave: true }}); \
                 s.on('error', (e) => resolve([e.code, s.state])); \
               }}), \
             ])"
        ))
        .await;
    assert_eq!(
        refused,
        json!([
            [true, "forbidden", "room:1"],
            "forbidden",
            ["forbidden", "closed"]
        ])
    );
    // Alice, whose token has no `presence` claim, may still read it.
    let stats = page.eval("h.presenceStats('room:1')").await;
    assert_eq!(stats, json!({"numClients": 2, "numUsers": 2}));

    page.eval("c.close(); h.close(); true").await;
    bob2.close().await;
    bob.close().await;
}
