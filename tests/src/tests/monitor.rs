//! The monitor against a real Redis, as a real process. Other nodes are faked by
//! writing the exact Redis layout every service writes (`herald:nodes`,
//! `herald:node:<id>`, and a gateway's `:channels` and `:conns` hashes), so these
//! scenarios do not depend on any other service.

use std::time::Duration;

use futures_util::StreamExt;
use herald_proto::monitor::{Overview, STREAM_EVENT};
use herald_proto::node::{ChannelStat, ConnInfo, NodeInfo};
use herald_proto::time::now_ms;
use redis::aio::MultiplexedConnection;
use reqwest::Method;
use serde_json::{Value, json};

use crate::{
    ADMIN_KEY, Backend, Redis, Service, ServiceBuilder, eventually, http_json, run_bin, within,
};

const PREFIX: &str = "herald:";

async fn start() -> (Redis, Service) {
    let redis = Redis::start().await;
    let monitor = ServiceBuilder::new("monitor").redis(&redis).spawn().await;
    (redis, monitor)
}

async fn overview(m: &Service) -> Value {
    let (status, body) = http_json(
        Method::GET,
        &format!("{}/api/v1/overview", m.http()),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

fn find_node<'a>(o: &'a Value, id: &str) -> Option<&'a Value> {
    o["nodes"].as_array()?.iter().find(|n| n["id"] == id)
}

fn gateway(id: &str, beat_ms: u64) -> NodeInfo {
    NodeInfo {
        id: id.to_owned(),
        service: "ws-gateway".to_owned(),
        // Nobody answers there: the probe must fail, not hang.
        address: "127.0.0.1:9".to_owned(),
        version: "0.0.0".to_owned(),
        started_ms: beat_ms.saturating_sub(60_000),
        beat_ms,
        ready: true,
        ..NodeInfo::default()
    }
}

/// Writes a beat exactly as `herald_common::node` does.
async fn beat(c: &mut MultiplexedConnection, info: &NodeInfo) {
    let json = serde_json::to_string(info).expect("node json");
    let () = redis::pipe()
        .cmd("SET")
        .arg(format!("{PREFIX}node:{}", info.id))
        .arg(json)
        .arg("PX")
        .arg(310_000)
        .ignore()
        .cmd("ZADD")
        .arg(format!("{PREFIX}nodes"))
        .arg(info.beat_ms)
        .arg(&info.id)
        .ignore()
        .query_async(c)
        .await
        .expect("write beat");
}

async fn set_channels(c: &mut MultiplexedConnection, node: &str, chans: &[(&str, u64, u64)]) {
    let key = format!("{PREFIX}node:{node}:channels");
    let mut pipe = redis::pipe();
    pipe.cmd("DEL").arg(&key).ignore();
    for (name, subscribers, messages) in chans {
        let stat = ChannelStat {
            subscribers: *subscribers,
            messages: *messages,
        };
        pipe.cmd("HSET")
            .arg(&key)
            .arg(*name)
            .arg(serde_json::to_string(&stat).expect("stat json"))
            .ignore();
    }
    pipe.cmd("PEXPIRE").arg(&key).arg(30_000).ignore();
    let () = pipe.query_async(c).await.expect("write channels");
}

async fn add_conn(c: &mut MultiplexedConnection, conn: &ConnInfo) {
    let () = redis::cmd("HSET")
        .arg(format!("{PREFIX}node:{}:conns", conn.node))
        .arg(&conn.conn_id)
        .arg(serde_json::to_string(conn).expect("conn json"))
        .query_async(c)
        .await
        .expect("write conn");
}

/// Beats for `infos` every 500 ms (current time) until dropped.
struct Beating(tokio::task::JoinHandle<()>);

impl Drop for Beating {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn keep_beating(mut c: MultiplexedConnection, infos: Vec<NodeInfo>) -> Beating {
    Beating(tokio::spawn(async move {
        loop {
            for info in &infos {
                let info = NodeInfo {
                    beat_ms: now_ms(),
                    ..info.clone()
                };
                beat(&mut c, &info).await;
            }
            // The pace of a live node's heartbeat (real nodes beat every second).
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overview_lists_the_monitor_itself_up_and_probed() {
    let (_redis, m) = start().await;
    let o = eventually("the monitor to list itself, probed", || async {
        let o = overview(&m).await;
        let me = o["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["service"] == "monitor")?
            .clone();
        (me["probe_ok"] == true).then_some(o)
    })
    .await;
    let me = o["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["service"] == "monitor"))
        .expect("monitor node");
    assert_eq!(me["status"], "up");
    assert_eq!(me["address"], m.addr.to_string());
    assert!(me["last_heartbeat_ms"].as_u64().expect("age") <= 3_000);
    assert!(me["probe_latency_ms"].as_f64().expect("latency") < 1_000.0);
    for field in [
        "version",
        "connections",
        "subscriptions",
        "messages_in_per_sec",
        "messages_out_per_sec",
        "ratelimit_hits",
    ] {
        assert!(!me[field].is_null(), "node lacks {field}: {me}");
    }
    assert_eq!(o["totals"]["nodes_up"], 1);
    assert_eq!(o["stale"], false);
    assert!(o["generated_at"].as_str().is_some_and(|s| s.ends_with('Z')));
    assert_eq!(o["ratelimit"]["by_kind"]["message"], 0);
    assert!(o["top_channels"].as_array().is_some());

    let (status, _) = http_json(Method::GET, &format!("{}/readyz", m.http()), None, None).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_goes_stale_then_down_then_is_dropped() {
    let (redis, m) = start().await;
    let mut c = redis.conn().await;
    let now = now_ms();
    beat(&mut c, &gateway("gw-quiet", now - 5_000)).await;
    eventually("gw-quiet stale", || async {
        let o = overview(&m).await;
        (find_node(&o, "gw-quiet")?["status"] == "stale").then_some(())
    })
    .await;

    beat(&mut c, &gateway("gw-quiet", now_ms() - 20_000)).await;
    let o = eventually("gw-quiet down and probed", || async {
        let o = overview(&m).await;
        let n = find_node(&o, "gw-quiet")?;
        (n["status"] == "down" && !n["probe_ok"].is_null()).then_some(o)
    })
    .await;
    let n = find_node(&o, "gw-quiet").expect("listed");
    assert!(n["last_heartbeat_ms"].as_u64().expect("age") >= 20_000);
    assert_eq!(n["probe_ok"], false, "nobody answers at its address");
    assert_eq!(o["totals"]["nodes_down"], 1);

    // Five minutes after its last beat it is dropped, with everything it left.
    set_channels(&mut c, "gw-quiet", &[("news", 1, 0)]).await;
    beat(&mut c, &gateway("gw-quiet", now_ms() - 6 * 60 * 1000)).await;
    eventually("gw-quiet dropped", || async {
        let o = overview(&m).await;
        find_node(&o, "gw-quiet").is_none().then_some(())
    })
    .await;
    let mut c = redis.conn().await;
    let score: Option<f64> = redis::cmd("ZSCORE")
        .arg(format!("{PREFIX}nodes"))
        .arg("gw-quiet")
        .query_async(&mut c)
        .await
        .expect("zscore");
    assert_eq!(score, None);
    let left: u64 = redis::cmd("EXISTS")
        .arg(format!("{PREFIX}node:gw-quiet"))
        .arg(format!("{PREFIX}node:gw-quiet:channels"))
        .query_async(&mut c)
        .await
        .expect("exists");
    assert_eq!(left, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rates_come_from_counter_deltas() {
    let (redis, m) = start().await;
    let mut c = redis.conn().await;
    let t0 = now_ms();
    let mut info = gateway("gw-rate", t0);
    info.connections = 7;
    info.subscriptions = 9;
    set_channels(&mut c, "gw-rate", &[("news", 3, 0)]).await;
    beat(&mut c, &info).await;
    // The monitor must see the first beat before the second.
    eventually("gw-rate listed", || async {
        let o = overview(&m).await;
        find_node(&o, "gw-rate").map(|_| ())
    })
    .await;

    // The second beat says it came a second after the first: rates come from the beats'
    // own times and counters, not from when the monitor reads them.
    info.beat_ms = t0 + 1_000;
    info.messages_out = 500;
    info.messages_in = 100;
    set_channels(&mut c, "gw-rate", &[("news", 3, 250)]).await;
    beat(&mut c, &info).await;

    let close = |v: &Value, want: f64| v.as_f64().is_some_and(|x| (x - want).abs() < 0.5);
    let o = eventually("rates of ~500/s out and ~100/s in", || async {
        let o = overview(&m).await;
        let n = find_node(&o, "gw-rate")?;
        close(&n["messages_out_per_sec"], 500.0).then_some(o)
    })
    .await;
    let n = find_node(&o, "gw-rate").expect("listed");
    assert!(close(&n["messages_in_per_sec"], 100.0), "{n}");
    assert!(close(&o["totals"]["messages_out_per_sec"], 500.0), "{o}");
    assert_eq!(o["totals"]["connections"], 7);
    assert_eq!(o["totals"]["subscriptions"], 9);
    let news = &o["top_channels"][0];
    assert_eq!(news["channel"], "news");
    assert_eq!(news["subscribers"], 3);
    assert!(close(&news["messages_per_sec"], 250.0), "{news}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_and_connections_with_filters() {
    let (redis, m) = start().await;
    let mut c = redis.conn().await;
    let now = now_ms();
    set_channels(&mut c, "gw-a", &[("news", 2, 0), ("chat:1", 1, 0)]).await;
    set_channels(&mut c, "gw-b", &[("news", 1, 0), ("chat:2", 4, 0)]).await;
    let conns = [
        ("c-1", "u1", "gw-a", vec!["news", "chat:1"]),
        ("c-2", "u2", "gw-a", vec!["news"]),
        ("c-3", "u1", "gw-b", vec!["chat:2"]),
    ];
    for (id, user, node, chans) in &conns {
        add_conn(
            &mut c,
            &ConnInfo {
                conn_id: (*id).to_owned(),
                user: (*user).to_owned(),
                ip: "10.0.0.1".to_owned(),
                node: (*node).to_owned(),
                channels: chans.iter().map(|s| (*s).to_owned()).collect(),
                connected_ms: now,
                messages_in: 3,
                messages_out: 4,
            },
        )
        .await;
    }
    let _beats = keep_beating(
        redis.conn().await,
        vec![gateway("gw-a", now), gateway("gw-b", now)],
    );

    let base = m.http();
    let get = |path: String| async move { http_json(Method::GET, &path, None, None).await };
    let all = eventually("both gateways' channels", || async {
        let (_, body) = get(format!("{base}/api/v1/channels")).await;
        (body["total"] == 3).then_some(body)
    })
    .await;
    assert_eq!(
        all["channels"][0],
        // Written by stand-in gateways, which keep no presence: no members.
        json!({"channel": "chat:2", "subscribers": 4, "messages_per_sec": 0.0, "members": 0})
    );
    let news = all["channels"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["channel"] == "news"))
        .expect("news");
    assert_eq!(news["subscribers"], 3, "summed across gateways");
    let (_, chat) = get(format!("{base}/api/v1/channels?prefix=chat:&limit=1")).await;
    assert_eq!(chat["total"], 2);
    assert_eq!(chat["channels"].as_array().map(Vec::len), Some(1));
    assert_eq!(chat["channels"][0]["channel"], "chat:2");
    let (status, _) = get(format!("{base}/api/v1/channels?limit=many")).await;
    assert_eq!(status, 400);

    let ids = |body: &Value| -> Vec<String> {
        let mut v: Vec<String> = body["connections"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c["conn_id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let (status, every) = get(format!("{base}/api/v1/connections")).await;
    assert_eq!(status, 200, "{every}");
    assert_eq!(every["total"], 3);
    assert_eq!(ids(&every), ["c-1", "c-2", "c-3"]);
    let c1 = every["connections"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["conn_id"] == "c-1"))
        .expect("c-1");
    assert_eq!(c1["user"], "u1");
    assert_eq!(c1["ip"], "10.0.0.1");
    assert_eq!(c1["node"], "gw-a");
    assert_eq!(c1["channels"], json!(["news", "chat:1"]));
    assert_eq!(c1["messages_out"], 4);
    assert!(
        c1["connected_at"]
            .as_str()
            .is_some_and(|s| s.ends_with('Z'))
    );

    let (_, on_a) = get(format!("{base}/api/v1/connections?node=gw-a")).await;
    assert_eq!(ids(&on_a), ["c-1", "c-2"]);
    let (_, u1) = get(format!("{base}/api/v1/connections?user=u1")).await;
    assert_eq!(
        (ids(&u1), u1["total"].clone()),
        (vec!["c-1".to_owned(), "c-3".to_owned()], json!(2))
    );
    let (_, in_news) = get(format!("{base}/api/v1/connections?channel=news&user=u2")).await;
    assert_eq!(ids(&in_news), ["c-2"]);
    let (_, page) = get(format!("{base}/api/v1/connections?limit=1")).await;
    assert_eq!(page["total"], 3);
    assert_eq!(page["connections"].as_array().map(Vec::len), Some(1));
    let (_, last) = get(format!("{base}/api/v1/connections?offset=2")).await;
    assert_eq!(last["connections"].as_array().map(Vec::len), Some(1));
    assert_eq!(last["total"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_disconnect_needs_the_key_and_publishes_control() {
    let (redis, m) = start().await;
    let client = redis::Client::open(redis.url()).expect("url");
    let mut sub = within("pubsub", client.get_async_pubsub())
        .await
        .expect("pubsub");
    within("subscribe", sub.subscribe(format!("{PREFIX}control")))
        .await
        .expect("subscribe");
    let mut messages = sub.into_on_message();

    let conn_url = format!("{}/api/v1/connections/c-42/disconnect", m.http());
    let user_url = format!("{}/api/v1/users/u1/disconnect", m.http());
    let (status, body) = http_json(Method::POST, &conn_url, None, None).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
    let (status, _) = http_json(Method::POST, &conn_url, Some("wrong-key"), None).await;
    assert_eq!(status, 401);

    let (status, body) = http_json(Method::POST, &conn_url, Some(ADMIN_KEY), None).await;
    assert_eq!((status, body), (202, json!({"ok": true})));
    let msg = within("control message", messages.next())
        .await
        .expect("message");
    let v: Value =
        serde_json::from_str(&msg.get_payload::<String>().expect("payload")).expect("json");
    assert_eq!(v, json!({"type": "disconnect_conn", "conn_id": "c-42"}));

    let (status, _) = http_json(Method::POST, &user_url, Some(ADMIN_KEY), None).await;
    assert_eq!(status, 202);
    let msg = within("control message", messages.next())
        .await
        .expect("message");
    let v: Value =
        serde_json::from_str(&msg.get_payload::<String>().expect("payload")).expect("json");
    assert_eq!(v, json!({"type": "disconnect_user", "user_id": "u1"}));

    // Without a configured key, nothing passes, whatever the caller sends.
    let keyless = ServiceBuilder::new("monitor")
        .redis(&redis)
        .env("HERALD_ADMIN_KEY", "")
        .spawn()
        .await;
    let url = format!("{}/api/v1/users/u1/disconnect", keyless.http());
    for bearer in [None, Some(""), Some(ADMIN_KEY)] {
        let (status, _) = http_json(Method::POST, &url, bearer, None).await;
        assert_eq!(status, 401, "bearer {bearer:?}");
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), messages.next())
            .await
            .is_err(),
        "a refused action published something"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_sends_an_overview_event_every_second() {
    let (_redis, m) = start().await;
    let mut resp = within(
        "stream response",
        reqwest::Client::new()
            .get(format!("{}/api/v1/stream", m.http()))
            .send(),
    )
    .await
    .expect("stream");
    assert_eq!(resp.status(), 200);
    let ctype = resp.headers()["content-type"]
        .to_str()
        .unwrap_or_default()
        .to_owned();
    assert!(ctype.starts_with("text/event-stream"), "{ctype}");

    let mut buf = String::new();
    let mut events: Vec<Overview> = Vec::new();
    while events.len() < 2 {
        let chunk = within("an SSE chunk", resp.chunk())
            .await
            .expect("chunk")
            .expect("stream open");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let raw: String = buf.drain(..end + 2).collect();
            if !raw.lines().any(|l| l == format!("event: {STREAM_EVENT}")) {
                continue;
            }
            let data: String = raw
                .lines()
                .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
                .collect();
            // The overview type of the JSON endpoint, which the dashboard reads too.
            events.push(serde_json::from_str(&data).expect("event data is an overview"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool() {
    let (redis, m) = start().await;
    let mut c = redis.conn().await;
    beat(&mut c, &gateway("gw-dead", now_ms() - 20_000)).await;
    let text = eventually("node metrics for the monitor and gw-dead", || async {
        let t = reqwest::get(format!("{}/metrics", m.http()))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        (t.contains(r#"herald_node_up{node="gw-dead",service="ws-gateway"} 0"#)
            && t.contains(r#"service="monitor"} 1"#)
            && t.contains("herald_probe_latency_seconds_count"))
        .then_some(t)
    })
    .await;
    for name in [
        "herald_cluster_connections",
        "herald_cluster_nodes{status=\"down\"} 1",
        "herald_redis_errors_total",
    ] {
        assert!(text.contains(name), "missing {name}");
    }
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("metrics.txt");
    std::fs::write(&path, &text).expect("write metrics");
    let out = within(
        "promtool",
        tokio::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::fs::File::open(&path).expect("open"))
            .output(),
    )
    .await
    .expect("run promtool (install prometheus' promtool)");
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_deregisters_the_monitor() {
    let redis = Redis::start().await;
    let mut m = ServiceBuilder::new("monitor")
        .redis(&redis)
        .env("HERALD_NODE_ID", "mon-e2e")
        .process()
        .spawn()
        .await;
    let mut c = redis.conn().await;
    eventually("mon-e2e registered", || {
        let mut c = c.clone();
        async move {
            let s: Option<f64> = redis::cmd("ZSCORE")
                .arg(format!("{PREFIX}nodes"))
                .arg("mon-e2e")
                .query_async(&mut c)
                .await
                .ok()?;
            s.map(|_| ())
        }
    })
    .await;
    // An open stream must not hold the shutdown up.
    let _stream = reqwest::Client::new()
        .get(format!("{}/api/v1/stream", m.http()))
        .send()
        .await
        .expect("stream");
    assert_eq!(m.terminate().await, Some(0));
    let score: Option<f64> = redis::cmd("ZSCORE")
        .arg(format!("{PREFIX}nodes"))
        .arg("mon-e2e")
        .query_async(&mut c)
        .await
        .expect("zscore");
    assert_eq!(score, None);
    let exists: u64 = redis::cmd("EXISTS")
        .arg(format!("{PREFIX}node:mon-e2e"))
        .query_async(&mut c)
        .await
        .expect("exists");
    assert_eq!(exists, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_and_unreachable_redis_fail_fast() {
    let (code, _, err) = run_bin(
        "monitor",
        &[],
        &[
            ("HERALD_LISTEN", "nowhere"),
            ("HERALD_PROBE_INTERVAL_MS", "0"),
        ],
    )
    .await;
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("HERALD_LISTEN") && err.contains("HERALD_PROBE_INTERVAL_MS"),
        "{err}"
    );

    let (_nobody, dead) = crate::dead_redis();
    let (code, _, err) = run_bin(
        "monitor",
        &[],
        &[
            ("HERALD_LISTEN", "127.0.0.1:0"),
            ("HERALD_REDIS_URL", &dead),
        ],
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.lines()
            .any(|l| l.starts_with("monitor:") && l.contains("unreachable")),
        "{err}"
    );
}

/// A whole cluster on one engine: a client's subscription and a publish through the
/// broadcaster show in the monitor's overview, and a gateway's graceful stop says
/// goodbye to its clients and takes it off the list.
pub(super) async fn the_overview_follows_a_live_cluster_and_a_graceful_stop(backend: Backend) {
    let gw = super::gateway::gateway(&backend).spawn().await;
    let bc = super::broadcaster::start(&backend).await;
    let mut m = ServiceBuilder::new("monitor").on(&backend).spawn().await;
    let (mut ws, ok) = crate::Ws::auth(&gw, &crate::token("ann", &["news"], &[]), &["news"]).await;
    let node = ok["node"].as_str().expect("node").to_owned();
    let (status, v) =
        super::broadcaster::post(&bc, "/v1/publish", json!({"channel":"news","message":"hi"}))
            .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(ws.recv_type("message").await["message"], "hi");

    let o = eventually(
        "the gateway's connection and channel in the overview",
        || async {
            let o = overview(&m).await;
            let n = find_node(&o, &node)?;
            let news = o["top_channels"]
                .as_array()?
                .iter()
                .find(|c| c["channel"] == "news")?;
            (n["status"] == "up" && n["connections"] == 1 && news["subscribers"] == 1).then_some(o)
        },
    )
    .await;
    for service in ["ws-gateway", "broadcaster", "monitor"] {
        assert!(
            o["nodes"]
                .as_array()
                .is_some_and(|n| n.iter().any(|n| n["service"] == service)),
            "{service} is listed: {o}"
        );
    }
    let (status, page) = http_json(
        Method::GET,
        &format!("{}/api/v1/connections?channel=news", m.http()),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["connections"][0]["user"], "ann", "{page}");

    let mut gw = gw;
    let ((), (closed, _)) = tokio::join!(gw.stop(), ws.closed());
    assert_eq!((closed.code, closed.reason.as_str()), (1001, "going away"));
    eventually("the stopped gateway off the list", || async {
        find_node(&overview(&m).await, &node)
            .is_none()
            .then_some(())
    })
    .await;
    m.stop().await;
}

crate::both_engines!(the_overview_follows_a_live_cluster_and_a_graceful_stop);
