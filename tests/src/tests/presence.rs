//! Channel presence on both engines and two gateways: members with their `info`,
//! stats, join/leave events for subscribe, unsubscribe and close, permissions, the
//! broadcaster's presence API; on Redis, a gateway killed with SIGKILL (its members
//! leave within the documented bound) and a channel with 10,000 members.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use super::gateway::{gateway, now, subscribe};
use crate::load_client::{Client, Next};
use crate::{API_KEY, Backend, Redis, ServiceBuilder, Ws, eventually, http_json, token_with};

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

/// Sends `request` and returns the reply of `kind` (or an `error`), skipping
/// join/leave events that arrive meanwhile.
async fn ask(ws: &mut Ws, request: Value, kind: &str) -> Value {
    ws.send(request).await;
    loop {
        let v = ws.recv().await;
        if v["type"] == kind || v["type"] == "error" {
            return v;
        }
    }
}

/// The members of a presence answer as sorted `(user_id, conn_id)`, checking shape.
fn members(v: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = v["members"]
        .as_array()
        .unwrap_or_else(|| panic!("members: {v}"))
        .iter()
        .map(|m| {
            (
                m["user_id"].as_str().expect("user_id").to_owned(),
                m["conn_id"].as_str().expect("conn_id").to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

/// The next join or leave, skipping nothing else: presence events are all a
/// listener that sent no request receives.
async fn event(ws: &mut Ws) -> Value {
    let v = ws.recv().await;
    assert!(
        v["type"] == "join" || v["type"] == "leave",
        "not an event: {v}"
    );
    v
}

/// Nothing arrives for a moment (no event for the connection that caused it).
async fn quiet(ws: &mut Ws) {
    if let Some(v) = ws.recv_within(Duration::from_millis(300)).await {
        panic!("unexpected frame: {v}");
    }
}

pub(super) async fn presence_lists_members_of_every_gateway_and_announces_changes(
    backend: Backend,
) {
    let gw1 = gateway(&backend).spawn().await;
    let gw2 = gateway(&backend).spawn().await;
    // Carol listens on gateway 1; her own join is not announced to her.
    let (mut carol, c_ok) = Ws::auth(&gw1, &room_token("carol", json!({})), &[]).await;
    let c_id = c_ok["conn_id"].as_str().expect("conn_id").to_owned();
    carol
        .send(json!({"type":"subscribe","channel":"room:1","join_leave":true,"id":1}))
        .await;
    assert_eq!(carol.recv_type("subscribed").await["id"], 1);
    quiet(&mut carol).await;

    // Alice joins on gateway 1 (with info), Bob on gateway 2 (without).
    let alice_t = room_token("alice", json!({"info": {"name": "Alice", "role": "admin"}}));
    let (alice, a_ok) = Ws::auth(&gw1, &alice_t, &["room:1"]).await;
    let a_id = a_ok["conn_id"].as_str().expect("conn_id").to_owned();
    let j = event(&mut carol).await;
    assert_eq!(
        j,
        json!({"type":"join","channel":"room:1","user_id":"alice","conn_id":a_id,
               "info":{"name":"Alice","role":"admin"}})
    );
    assert!(j.get("offset").is_none(), "events are not history");
    let (mut bob, b_ok) = Ws::auth(&gw2, &room_token("bob", json!({})), &[]).await;
    let b_id = b_ok["conn_id"].as_str().expect("conn_id").to_owned();
    subscribe(&mut bob, "room:1", 2).await;
    let j = event(&mut carol).await;
    assert_eq!(
        j,
        json!({"type":"join","channel":"room:1","user_id":"bob","conn_id":b_id})
    );

    // Presence, asked on either gateway, lists all three with their info.
    let want = {
        let mut w = vec![
            ("alice".to_owned(), a_id.clone()),
            ("bob".to_owned(), b_id.clone()),
            ("carol".to_owned(), c_id.clone()),
        ];
        w.sort();
        w
    };
    let p = ask(
        &mut bob,
        json!({"type":"presence","channel":"room:1","id":"p1"}),
        "presence",
    )
    .await;
    assert_eq!(
        (&p["id"], &p["truncated"]),
        (&json!("p1"), &json!(false)),
        "{p}"
    );
    assert_eq!(members(&p), want);
    let alice_rec = p["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["user_id"] == "alice")
        .expect("alice listed")
        .clone();
    assert_eq!(alice_rec["info"], json!({"name":"Alice","role":"admin"}));
    let p = ask(
        &mut carol,
        json!({"type":"presence","channel":"room:1","id":3}),
        "presence",
    )
    .await;
    assert_eq!(members(&p), want);

    // A second connection of Alice's: four clients, three users.
    let (alice2, _) = Ws::auth(&gw2, &alice_t, &["room:1"]).await;
    let j = event(&mut carol).await;
    assert_eq!(
        (&j["type"], &j["user_id"]),
        (&json!("join"), &json!("alice"))
    );
    let s = ask(
        &mut bob,
        json!({"type":"presence_stats","channel":"room:1","id":4}),
        "presence_stats",
    )
    .await;
    assert_eq!(
        s,
        json!({"type":"presence_stats","channel":"room:1","id":4,"num_clients":4,"num_users":3})
    );

    // Leaves: an unsubscribe, a client closing, a connection dropped without a close.
    bob.send(json!({"type":"unsubscribe","channel":"room:1","id":5}))
        .await;
    let l = event(&mut carol).await;
    assert_eq!(
        l,
        json!({"type":"leave","channel":"room:1","user_id":"bob","conn_id":b_id})
    );
    alice2.close().await;
    let l = event(&mut carol).await;
    assert_eq!(
        (&l["type"], &l["user_id"]),
        (&json!("leave"), &json!("alice"))
    );
    assert_ne!(l["conn_id"], a_id.as_str(), "the second connection left");
    drop(alice);
    let l = event(&mut carol).await;
    assert_eq!(
        l,
        json!({"type":"leave","channel":"room:1","user_id":"alice","conn_id":a_id,
               "info":{"name":"Alice","role":"admin"}})
    );
    let p = ask(
        &mut bob,
        json!({"type":"presence","channel":"room:1","id":6}),
        "presence",
    )
    .await;
    assert_eq!(members(&p), vec![("carol".to_owned(), c_id.clone())]);

    // Re-subscribing without join_leave stops the events; Bob's return is silent.
    carol
        .send(json!({"type":"subscribe","channel":"room:1","id":7}))
        .await;
    assert_eq!(carol.recv_type("subscribed").await["id"], 7);
    subscribe(&mut bob, "room:1", 8).await;
    quiet(&mut carol).await;

    // The broadcaster's API sees the same.
    let bc = ServiceBuilder::new("broadcaster")
        .on(&backend)
        .spawn()
        .await;
    let url = |rest: &str| format!("{}/v1/presence/room:1{rest}", bc.http());
    let (status, page) = http_json(Method::GET, &url(""), Some(API_KEY), None).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        members(&page),
        vec![("bob".to_owned(), b_id.clone()), ("carol".to_owned(), c_id)]
    );
    assert_eq!(page["truncated"], false);
    let (_, page) = http_json(Method::GET, &url("?limit=1"), Some(API_KEY), None).await;
    assert_eq!(
        (members(&page).len(), &page["truncated"]),
        (1, &json!(true))
    );
    let (_, stats) = http_json(Method::GET, &url("/stats"), Some(API_KEY), None).await;
    assert_eq!(
        stats,
        json!({"channel":"room:1","num_clients":2,"num_users":2})
    );
    let (status, e) = http_json(Method::GET, &url("?limit=0"), Some(API_KEY), None).await;
    assert_eq!(
        (status, &e["error"]["code"]),
        (422, &json!("invalid_request")),
        "{e}"
    );
    let (status, _) = http_json(Method::GET, &url(""), None, None).await;
    assert_eq!(status, 401);
}

async fn presence_and_history_follow_their_claims(backend: Backend) {
    let gw = gateway(&backend).spawn().await;
    // No presence claim: whoever may subscribe may see presence.
    let (mut member, _) = Ws::auth(&gw, &room_token("m", json!({})), &["room:1"]).await;
    let p = ask(
        &mut member,
        json!({"type":"presence","channel":"room:1","id":1}),
        "presence",
    )
    .await;
    assert_eq!(p["members"].as_array().map(Vec::len), Some(1), "{p}");
    let refused = ask(
        &mut member,
        json!({"type":"presence","channel":"news","id":2}),
        "presence",
    )
    .await;
    assert_eq!(
        (&refused["code"], &refused["channel"], &refused["id"]),
        (&json!("forbidden"), &json!("news"), &json!(2)),
        "{refused}"
    );
    // A presence claim replaces that rule; a history claim likewise for history.
    let t = room_token(
        "n",
        json!({"presence": ["lobby"], "history": ["archive:*"], "channels": ["room:*", "lobby"]}),
    );
    let (mut narrow, _) = Ws::auth(&gw, &t, &[]).await;
    for (request, kind) in [
        (
            json!({"type":"presence","channel":"room:1","id":3}),
            "presence",
        ),
        (
            json!({"type":"presence_stats","channel":"room:1","id":4}),
            "presence_stats",
        ),
        (
            json!({"type":"history","channel":"room:1","id":5}),
            "history",
        ),
        (
            json!({"type":"subscribe","channel":"room:1","join_leave":true,"id":6}),
            "subscribed",
        ),
    ] {
        let r = ask(&mut narrow, request.clone(), kind).await;
        assert_eq!(r["code"], "forbidden", "{request} → {r}");
    }
    let ok = ask(
        &mut narrow,
        json!({"type":"presence_stats","channel":"lobby","id":7}),
        "presence_stats",
    )
    .await;
    assert_eq!(
        (&ok["num_clients"], &ok["num_users"]),
        (&json!(0), &json!(0)),
        "{ok}"
    );
    let ok = ask(
        &mut narrow,
        json!({"type":"history","channel":"archive:1","id":8}),
        "history",
    )
    .await;
    assert_eq!(ok["type"], "history", "{ok}");
    // Malformed requests are refused with the request's id.
    let bad = ask(
        &mut narrow,
        json!({"type":"presence","channel":"a b","id":9}),
        "presence",
    )
    .await;
    assert_eq!(
        (&bad["code"], &bad["id"]),
        (&json!("bad_request"), &json!(9))
    );
    let bad = ask(
        &mut narrow,
        json!({"type":"subscribe","channel":"lobby","join_leave":1,"id":10}),
        "subscribed",
    )
    .await;
    assert_eq!(
        (&bad["code"], &bad["id"]),
        (&json!("bad_request"), &json!(10))
    );

    // An info claim that is not a small object refuses the token.
    for info in [json!("Alice"), json!({"bio": "x".repeat(1100)})] {
        let mut ws = Ws::connect(&gw.ws()).await;
        ws.send(json!({"type":"auth","token":room_token("i", json!({"info": info}))}))
            .await;
        let (closed, _) = ws.closed().await;
        assert_eq!(closed.code, 1008, "{closed:?}");
    }
    let (_ok, _) = Ws::auth(
        &gw,
        &room_token("i", json!({"info": {"bio": "x".repeat(900)}})),
        &[],
    )
    .await;
}

/// The monitor lists each top channel's members (distinct users in presence) next
/// to its subscriber count, which herald-tui shows.
async fn the_monitor_shows_members_next_to_subscribers(backend: Backend) {
    let gw1 = gateway(&backend).spawn().await;
    let gw2 = gateway(&backend).spawn().await;
    let monitor = ServiceBuilder::new("monitor").on(&backend).spawn().await;
    let alice = room_token("alice", json!({}));
    let _a1 = Ws::auth(&gw1, &alice, &["room:1"]).await;
    let _a2 = Ws::auth(&gw2, &alice, &["room:1"]).await;
    let _b = Ws::auth(&gw2, &room_token("bob", json!({})), &["room:1"]).await;
    let row = eventually("the monitor to count room:1's members", || async {
        let (_, o) = http_json(
            Method::GET,
            &format!("{}/api/v1/overview", monitor.http()),
            None,
            None,
        )
        .await;
        let row = o["top_channels"]
            .as_array()?
            .iter()
            .find(|c| c["channel"] == "room:1")?
            .clone();
        (row["subscribers"] == 3 && row["members"] == 2).then_some(row)
    })
    .await;
    assert_eq!(
        (&row["subscribers"], &row["members"]),
        (&json!(3), &json!(2))
    );
}

crate::both_engines!(
    presence_lists_members_of_every_gateway_and_announces_changes,
    presence_and_history_follow_their_claims,
    the_monitor_shows_members_next_to_subscribers,
);

/// A gateway killed with SIGKILL: its members leave, announced to listeners on the
/// surviving gateway, within the documented bound (the node counts as dead
/// 3 s after its last beat, and survivors check each second), and presence stops
/// listing them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_a_killed_gateway_leave_within_the_bound() {
    let redis = Redis::start().await;
    let mut victim = gateway(&redis).process().spawn().await;
    let survivor = gateway(&redis).spawn().await;
    let (mut listener, _) = Ws::auth(&survivor, &room_token("l", json!({})), &[]).await;
    listener
        .send(json!({"type":"subscribe","channel":"room:1","join_leave":true,"id":1}))
        .await;
    listener.recv_type("subscribed").await;
    let mut doomed = Vec::new();
    for user in ["x", "y"] {
        let (ws, ok) = Ws::auth(&victim, &room_token(user, json!({})), &["room:1"]).await;
        let j = event(&mut listener).await;
        assert_eq!(
            (&j["type"], &j["conn_id"]),
            (&json!("join"), &ok["conn_id"])
        );
        doomed.push((ws, ok["conn_id"].as_str().expect("conn_id").to_owned()));
    }
    let p = ask(
        &mut listener,
        json!({"type":"presence","channel":"room:1","id":2}),
        "presence",
    )
    .await;
    assert_eq!(members(&p).len(), 3, "{p}");

    let killed = Instant::now();
    victim.kill().await;
    let mut left = Vec::new();
    while left.len() < 2 {
        let v = tokio::time::timeout(Duration::from_secs(10), listener.recv())
            .await
            .expect("leaves within 10 s of the kill");
        if v["type"] == "leave" {
            left.push(v["conn_id"].as_str().expect("conn_id").to_owned());
        }
    }
    let took = killed.elapsed();
    // Documented: within DEAD_AFTER (3 s) + one check (1 s); slack for a loaded CI.
    assert!(took < Duration::from_secs(8), "leaves took {took:?}");
    left.sort();
    let mut want: Vec<String> = doomed.iter().map(|(_, id)| id.clone()).collect();
    want.sort();
    assert_eq!(left, want);
    let p = ask(
        &mut listener,
        json!({"type":"presence","channel":"room:1","id":3}),
        "presence",
    )
    .await;
    assert_eq!(members(&p).len(), 1, "only the listener remains: {p}");
    // Nothing of the dead node stays in the channel's presence hash.
    let mut r = redis.conn().await;
    let n: u64 = redis::cmd("HLEN")
        .arg("herald:presence:{room:1}")
        .query_async(&mut r)
        .await
        .expect("hlen");
    assert_eq!(n, 1);
    // No leave for anyone twice, and none for the listener.
    assert!(
        listener
            .recv_within(Duration::from_millis(500))
            .await
            .is_none()
    );
}

/// A channel with 10,000 members (real connections to a gateway process): presence
/// answers with the capped list and `truncated`, and stats count them all. (How long
/// that takes is measured in herald-bench, see BENCHMARKS.md.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_members_are_answered_bounded() {
    const MEMBERS: usize = 10_000;
    let redis = Redis::start().await;
    let gw = gateway(&redis)
        .env("HERALD_MAX_CONNECTIONS_PER_IP", "20000")
        .env("HERALD_CONNECT_RATE_PER_IP", "100000")
        .env("HERALD_PRESENCE_LIMIT", "500")
        .process()
        .spawn()
        .await;
    let url = gw.ws();
    // Ten users, a thousand connections each, opened 100 at a time.
    let mut clients: Vec<Client> = Vec::with_capacity(MEMBERS);
    let tokens: Vec<String> = (0..10)
        .map(|u| room_token(&format!("u{u}"), json!({})))
        .collect();
    for batch in 0..MEMBERS / 100 {
        let opened = futures_util::future::join_all((0..100).map(|i| {
            let (url, t) = (url.clone(), tokens[(batch * 100 + i) % 10].clone());
            async move { Client::auth(&url, &t, &["room:big"]).await }
        }))
        .await;
        for c in opened {
            clients.push(c.expect("member connects").0);
        }
    }
    let (mut asker, _) = Ws::auth(&gw, &room_token("asker", json!({})), &[]).await;
    let r = redis.conn().await;
    let stats = eventually("every member to be written", || {
        let mut r = r.clone();
        async move {
            let n: u64 = redis::cmd("HLEN")
                .arg("herald:presence:{room:big}")
                .query_async(&mut r)
                .await
                .unwrap_or(0);
            (n == MEMBERS as u64).then_some(n)
        }
    })
    .await;
    assert_eq!(stats, MEMBERS as u64);
    let s = ask(
        &mut asker,
        json!({"type":"presence_stats","channel":"room:big","id":1}),
        "presence_stats",
    )
    .await;
    assert_eq!(
        (&s["num_clients"], &s["num_users"]),
        (&json!(MEMBERS), &json!(10)),
        "{s}"
    );
    let p = ask(
        &mut asker,
        json!({"type":"presence","channel":"room:big","id":2}),
        "presence",
    )
    .await;
    assert_eq!(
        (p["members"].as_array().map(Vec::len), &p["truncated"]),
        (Some(500), &json!(true))
    );
    assert!(
        p.to_string().len() < 64 * 1024,
        "the answer is bounded by the cap"
    );
    // The members are still connected (nothing was kicked to answer).
    let mut alive = 0;
    for c in clients.iter_mut().take(50) {
        if !matches!(c.next(Duration::from_millis(1)).await, Next::Closed(_)) {
            alive += 1;
        }
    }
    assert_eq!(alive, 50);
}
