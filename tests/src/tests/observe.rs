//! The observability path end to end with real services: gateways beat and write
//! presence, the monitor aggregates it, and operators act through it.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::{
    ADMIN_KEY, Redis, Service, ServiceBuilder, Ws, eventually, eventually_within, http_json, token,
};

fn gateway(redis: &Redis) -> ServiceBuilder {
    ServiceBuilder::new("ws-gateway")
        .redis(redis)
        .env("HERALD_MAX_CONNECTIONS_PER_IP", "1000")
        .env("HERALD_CONNECT_RATE_PER_IP", "1000")
        .env("HERALD_RATE_LIMIT_MESSAGES", "100000")
}

async fn get(m: &Service, path: &str) -> Value {
    let (status, body) = http_json(Method::GET, &format!("{}{path}", m.http()), None, None).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

fn node<'a>(o: &'a Value, id: &str) -> Option<&'a Value> {
    o["nodes"].as_array()?.iter().find(|n| n["id"] == id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_counts_real_clients_rates_and_failures() {
    let redis = Redis::start().await;
    let mut gw1 = gateway(&redis).process().spawn().await;
    let gw2 = gateway(&redis).spawn().await;
    let monitor = ServiceBuilder::new("monitor").redis(&redis).spawn().await;
    let t = token("obs", &["news", "chat:*"], &["news"]);
    let mut clients = Vec::new();
    let mut nodes = Vec::new();
    for (gw, chans) in [
        (&gw1, vec!["news"]),
        (&gw1, vec!["news", "chat:a"]),
        (&gw2, vec!["news"]),
    ] {
        let (ws, ok) = Ws::auth(gw, &t, &chans).await;
        nodes.push(ok["node"].as_str().expect("node").to_owned());
        clients.push((ws, ok["conn_id"].as_str().expect("conn").to_owned()));
    }
    let (gw1_id, gw2_id) = (nodes[0].clone(), nodes[2].clone());

    // Counts match the clients opened: 2 + 1 connections, news has 3 subscribers.
    let o = eventually("the overview to count the clients", || async {
        let o = get(&monitor, "/api/v1/overview").await;
        let ok = node(&o, &gw1_id)?["connections"] == 2
            && node(&o, &gw2_id)?["connections"] == 1
            && o["totals"]["connections"] == 3
            && o["totals"]["subscriptions"] == 4
            && o["top_channels"]
                .as_array()?
                .iter()
                .any(|c| c["channel"] == "news" && c["subscribers"] == 3);
        ok.then_some(o)
    })
    .await;
    assert_eq!(node(&o, &gw1_id).expect("gw1")["status"], "up");
    let conns = get(&monitor, &format!("/api/v1/connections?node={gw1_id}")).await;
    assert_eq!(
        conns["connections"].as_array().map(Vec::len),
        Some(2),
        "{conns}"
    );
    let chans = get(&monitor, "/api/v1/channels?prefix=chat").await;
    assert_eq!(chans["channels"][0]["channel"], "chat:a", "{chans}");

    // Rates move under traffic.
    let (publisher, _) = &mut clients[0];
    let pump = async {
        for i in 0..60 {
            publisher
                .send(json!({"type":"broadcast","channel":"news","message":i}))
                .await;
            // The pace of the traffic whose rate the monitor must see.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let watch = eventually("messages_out_per_sec to rise", || async {
        let o = get(&monitor, "/api/v1/overview").await;
        (o["totals"]["messages_out_per_sec"].as_f64()? > 1.0).then_some(())
    });
    tokio::join!(pump, watch);
    // Per-connection counters reach the monitor too.
    eventually("per-connection message counts", || async {
        let c = get(&monitor, &format!("/api/v1/connections?node={gw1_id}")).await;
        let list = c["connections"].as_array()?.clone();
        let ins: u64 = list.iter().filter_map(|c| c["messages_in"].as_u64()).sum();
        let outs: u64 = list.iter().filter_map(|c| c["messages_out"].as_u64()).sum();
        (ins >= 60 && outs >= 60).then_some(())
    })
    .await;

    // Admin disconnect needs the key, then the owning gateway closes the connection.
    let victim = clients[2].1.clone();
    let url = format!("{}/api/v1/connections/{victim}/disconnect", monitor.http());
    let (status, _) = http_json(Method::POST, &url, None, None).await;
    assert_eq!(status, 401);
    let (status, _) = http_json(Method::POST, &url, Some(ADMIN_KEY), None).await;
    assert_eq!(status, 202);
    let (closed, frames) = clients[2].0.closed().await;
    assert_eq!(closed.code, 1008);
    assert_eq!(frames.last().expect("disconnect")["type"], "disconnect");

    // A killed gateway turns stale, then down.
    gw1.kill().await;
    for want in ["stale", "down"] {
        eventually_within(
            &format!("the killed gateway to be {want}"),
            Duration::from_secs(20),
            || async {
                let o = get(&monitor, "/api/v1/overview").await;
                node(&o, &gw1_id)
                    .is_some_and(|n| n["status"] == want)
                    .then_some(())
            },
        )
        .await;
    }
    let o = get(&monitor, "/api/v1/overview").await;
    assert_eq!(node(&o, &gw2_id).expect("gw2")["status"], "up");
}

/// Found by `frame_sequences`' property test: the monitor's connection list (the presence hash)
/// must list every open connection, also one that has not subscribed to anything
/// yet, or operators can neither see nor disconnect it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_channels_are_listed() {
    let redis = Redis::start().await;
    let gw = gateway(&redis).spawn().await;
    let (_idle, ok) = Ws::auth(&gw, &token("idle", &[], &[]), &[]).await;
    let key = format!("herald:node:{}:conns", ok["node"].as_str().expect("node"));
    let conn_id = ok["conn_id"].as_str().expect("conn_id").to_owned();
    let r = redis.conn().await;
    eventually_within(
        "the idle connection's presence record",
        Duration::from_secs(3),
        || {
            let mut r = r.clone();
            let (key, conn_id) = (key.clone(), conn_id.clone());
            async move {
                let json: Option<String> = redis::cmd("HGET")
                    .arg(&key)
                    .arg(&conn_id)
                    .query_async(&mut r)
                    .await
                    .ok()?;
                let info: herald_proto::node::ConnInfo = serde_json::from_str(&json?).ok()?;
                info.channels.is_empty().then_some(())
            }
        },
    )
    .await;
}
