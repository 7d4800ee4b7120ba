//! Metrics as operators consume them: every service's `/metrics` passes
//! `promtool check metrics`, and a real Prometheus server scraping the services
//! ingests the gateway's connection and delivery counts with the right values.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::Command;

use crate::{Redis, ServiceBuilder, Ws, eventually, listening_addrs, token, within};

fn gateway(redis: &Redis) -> ServiceBuilder {
    ServiceBuilder::new("ws-gateway")
        .redis(redis)
        .env("HERALD_MAX_CONNECTIONS_PER_IP", "1000")
        .env("HERALD_CONNECT_RATE_PER_IP", "1000")
}

async fn scrape(base: &str) -> String {
    within("a /metrics scrape", async {
        reqwest::get(format!("{base}/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("body")
    })
    .await
}

/// Runs `promtool check metrics` on `text`; returns (success, output).
async fn promtool(text: &str) -> (bool, String) {
    use tokio::io::AsyncWriteExt;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("promtool is missing: install Debian's `prometheus` package");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(text.as_bytes()).await.expect("write");
    drop(stdin);
    let out = within("promtool", child.wait_with_output())
        .await
        .expect("promtool");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_passes_promtool() {
    let redis = Redis::start().await;
    let gw = gateway(&redis).spawn().await;
    let auth = ServiceBuilder::new("auth-svc").redis(&redis).spawn().await;
    let bc = ServiceBuilder::new("broadcaster")
        .redis(&redis)
        .spawn()
        .await;
    let mon = ServiceBuilder::new("monitor").redis(&redis).spawn().await;
    // Some traffic so counters and histograms have samples.
    let (mut ws, _) = Ws::auth(&gw, &token("m", &["news"], &["news"]), &["news"]).await;
    ws.send(json!({"type":"broadcast","channel":"news","message":1,"id":1}))
        .await;
    ws.recv_type("ack").await;
    ws.recv_type("message").await;
    for svc in [&gw, &auth, &bc, &mon] {
        let text = scrape(&svc.http()).await;
        assert!(text.contains("herald_"), "{}: no herald metrics", svc.name);
        let (ok, out) = promtool(&text).await;
        assert!(
            ok && out.trim().is_empty(),
            "{}: promtool says:\n{out}",
            svc.name
        );
    }
    let gw_text = scrape(&gw.http()).await;
    for name in [
        "herald_connections ",
        "herald_connections_total ",
        "herald_subscriptions ",
        "herald_messages_received_total ",
        "herald_messages_delivered_total ",
        "herald_publish_total ",
        "herald_delivery_latency_seconds_bucket",
        "herald_ratelimit_hits_total{",
        "herald_slow_consumer_disconnects_total ",
        "herald_redis_errors_total ",
    ] {
        assert!(gw_text.contains(name), "gateway metrics lack {name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_ingests_gateway_metrics() {
    let redis = Redis::start().await;
    let gw = gateway(&redis).spawn().await;
    let dir = tempfile::tempdir().expect("dir");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: herald\n    static_configs:\n      - targets: ['{}']\n",
        gw.addr
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).expect("config");
    let prom = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg("--web.listen-address=127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus is missing: install Debian's `prometheus` package");
    // Given port 0, it binds one of the system's choosing; /proc says which.
    let pid = prom.id().expect("prometheus pid");
    let prom_addr = eventually("prometheus to listen", || async {
        listening_addrs(pid).first().copied()
    })
    .await;

    let t = token("p", &["news"], &["news"]);
    let mut subs = Vec::new();
    for _ in 0..3 {
        subs.push(Ws::auth(&gw, &t, &["news"]).await.0);
    }
    let (mut publisher, _) = Ws::auth(&gw, &t, &[]).await;
    for i in 0..5 {
        publisher
            .send(json!({"type":"broadcast","channel":"news","message":i,"id":i}))
            .await;
        publisher.recv_type("ack").await;
    }
    for s in &mut subs {
        for _ in 0..5 {
            s.recv_type("message").await;
        }
    }
    let query = |q: &'static str| {
        let url = format!("http://{prom_addr}/api/v1/query");
        async move {
            let resp = reqwest::Client::new()
                .get(url)
                .query(&[("query", q)])
                .send()
                .await
                .ok()?;
            let v: Value = resp.json().await.ok()?;
            v["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|s| s.parse::<f64>().ok())
        }
    };
    // 3 subscribers + 1 publisher connected; 3 × 5 messages delivered.
    let patient = Duration::from_secs(30);
    let res = tokio::time::timeout(patient, async {
        eventually("prometheus to ingest herald_connections = 4", || async {
            (query("herald_connections").await? == 4.0).then_some(())
        })
        .await;
        eventually(
            "prometheus to ingest herald_messages_delivered_total = 15",
            || async { (query("herald_messages_delivered_total").await? == 15.0).then_some(()) },
        )
        .await;
    })
    .await;
    assert!(
        res.is_ok(),
        "prometheus did not ingest the expected values in {patient:?}"
    );
}
