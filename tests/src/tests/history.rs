//! Channel history on both engines: the client's `history` request (forward,
//! reverse, limit, after a position, permissions) and the broadcaster's history API,
//! whose `DELETE` starts a new epoch so that recovery says `recovered:false`.

use reqwest::Method;
use serde_json::{Value, json};

use super::gateway::{broadcast, gateway, subscribe};
use crate::{API_KEY, Backend, ServiceBuilder, Ws, http_json, token};

/// The `message.n` of each publication of a history answer.
fn numbers(v: &Value) -> Vec<u64> {
    v["publications"]
        .as_array()
        .unwrap_or_else(|| panic!("publications: {v}"))
        .iter()
        .map(|p| {
            assert_eq!(
                (&p["type"], &p["channel"]),
                (&json!("message"), &json!("news")),
                "{p}"
            );
            assert_eq!(p["offset"], p["message"]["n"], "{p}");
            p["message"]["n"].as_u64().expect("n")
        })
        .collect()
}

async fn ask(ws: &mut Ws, request: Value) -> Value {
    ws.send(request).await;
    loop {
        let v = ws.recv().await;
        if v["type"] == "history" || v["type"] == "error" {
            return v;
        }
    }
}

pub(super) async fn history_reads_forward_backward_and_after_a_position(backend: Backend) {
    let gw = gateway(&backend).spawn().await;
    let (mut a, _) = Ws::auth(&gw, &token("a", &["news"], &["news"]), &[]).await;
    for n in 1..=7u64 {
        let ack = broadcast(&mut a, "news", json!({"n": n}), n).await;
        assert_eq!(ack["offset"], n, "{ack}");
    }
    // Oldest first, with the channel's position.
    let all = ask(&mut a, json!({"type":"history","channel":"news","id":"h1"})).await;
    assert_eq!(
        (&all["id"], &all["offset"]),
        (&json!("h1"), &json!(7)),
        "{all}"
    );
    assert_eq!(numbers(&all), [1, 2, 3, 4, 5, 6, 7]);
    let epoch = all["epoch"].as_str().expect("epoch").to_owned();
    let newest = ask(
        &mut a,
        json!({"type":"history","channel":"news","limit":2,"reverse":true}),
    )
    .await;
    assert_eq!(numbers(&newest), [7, 6]);
    let after = ask(
        &mut a,
        json!({"type":"history","channel":"news","since":{"offset":5,"epoch":epoch}}),
    )
    .await;
    assert_eq!(numbers(&after), [6, 7]);
    // Another epoch's offset says nothing about this one: from the oldest kept.
    let other = ask(
        &mut a,
        json!({"type":"history","channel":"news","since":{"offset":5,"epoch":"gone"}}),
    )
    .await;
    assert_eq!(numbers(&other), [1, 2, 3, 4, 5, 6, 7]);
    let first = ask(&mut a, json!({"type":"history","channel":"news","limit":3})).await;
    assert_eq!(numbers(&first), [1, 2, 3]);
    // Zero is no limit a client can mean.
    let zero = ask(
        &mut a,
        json!({"type":"history","channel":"news","limit":0,"id":3}),
    )
    .await;
    assert_eq!(
        (&zero["code"], &zero["id"]),
        (&json!("bad_request"), &json!(3)),
        "{zero}"
    );
    // Only who may subscribe may read.
    let (mut b, _) = Ws::auth(&gw, &token("b", &["other"], &[]), &[]).await;
    let refused = ask(&mut b, json!({"type":"history","channel":"news","id":4})).await;
    assert_eq!(
        (&refused["code"], &refused["channel"]),
        (&json!("forbidden"), &json!("news")),
        "{refused}"
    );
}

async fn the_history_api_reads_and_deletes(backend: Backend) {
    let gw = gateway(&backend).spawn().await;
    let bc = ServiceBuilder::new("broadcaster")
        .on(&backend)
        .spawn()
        .await;
    let (mut a, _) = Ws::auth(&gw, &token("a", &["news"], &["news"]), &[]).await;
    for n in 1..=3u64 {
        broadcast(&mut a, "news", json!({"n": n}), n).await;
    }
    let url = |q: &str| format!("{}/v1/history/news{q}", bc.http());
    let (status, page) = http_json(Method::GET, &url(""), Some(API_KEY), None).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        (numbers(&page), &page["offset"]),
        (vec![1, 2, 3], &json!(3))
    );
    let epoch = page["epoch"].as_str().expect("epoch").to_owned();
    let (_, page) = http_json(
        Method::GET,
        &url(&format!("?since=1&epoch={epoch}")),
        Some(API_KEY),
        None,
    )
    .await;
    assert_eq!(numbers(&page), [2, 3]);
    let (_, page) = http_json(
        Method::GET,
        &url("?reverse=true&limit=1"),
        Some(API_KEY),
        None,
    )
    .await;
    assert_eq!(numbers(&page), [3]);
    let (status, e) = http_json(Method::GET, &url("?since=1"), Some(API_KEY), None).await;
    assert_eq!(
        (status, &e["error"]["code"]),
        (422, &json!("invalid_request")),
        "{e}"
    );
    let (status, _) = http_json(Method::GET, &url(""), None, None).await;
    assert_eq!(status, 401);

    // DELETE: history and position go; the next publish starts a new epoch, and a
    // client recovering from the old one is told so instead of getting a wrong answer.
    let (status, v) = http_json(Method::DELETE, &url(""), Some(API_KEY), None).await;
    assert_eq!(status, 200, "{v}");
    let (_, page) = http_json(Method::GET, &url(""), Some(API_KEY), None).await;
    assert_eq!(numbers(&page), Vec::<u64>::new());
    assert_ne!(page["epoch"], epoch.as_str());
    let (mut late, _) = Ws::auth(&gw, &token("l", &["news"], &[]), &[]).await;
    late.send(json!({"type":"subscribe","channel":"news","since":{"offset":3,"epoch":epoch}}))
        .await;
    let s = late.recv_type("subscribed").await;
    assert_eq!(s["recovered"], false, "{s}");
    subscribe(&mut a, "news", 9).await;
    let ack = broadcast(&mut a, "news", json!({"n": 1}), 10).await;
    assert_eq!(ack["offset"], 1, "{ack}");
    assert_ne!(ack["epoch"], epoch.as_str());
    assert_eq!(late.recv_type("message").await["offset"], 1);
}

crate::both_engines!(
    history_reads_forward_backward_and_after_a_position,
    the_history_api_reads_and_deletes,
);
