//! herald-bench against real services: small runs whose counts must add up exactly
//! (times are never asserted; BENCHMARKS.md has the figures), and the tool's errors.

use std::process::Stdio;

use serde_json::Value;

use crate::{
    API_KEY, Redis, ServiceBuilder, TEST_SECRET, bin_path, dead_addr, eventually, listening_addrs,
    run_bin, within,
};

fn gateway(redis: &Redis) -> ServiceBuilder {
    ServiceBuilder::new("ws-gateway")
        .redis(redis)
        .env("HERALD_MAX_CONNECTIONS_PER_IP", "10000")
        .env("HERALD_CONNECT_RATE_PER_IP", "10000")
        .env("HERALD_RATE_LIMIT_MESSAGES", "100000")
}

/// Runs `herald-bench --json ARGS`, expects success, returns its JSON report.
async fn bench(args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (code, out, err) = run_bin("herald-bench", &all, &[]).await;
    assert_eq!(code, 0, "herald-bench {args:?} failed: {err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn assert_exact(r: &Value, subscribers: u64) {
    let d = &r["deliveries"];
    let sent = r["publishes"]["sent"].as_u64().expect("sent");
    assert!(sent > 0, "nothing published: {r}");
    assert_eq!(d["expected"].as_u64(), Some(sent * subscribers), "{r}");
    assert_eq!(d["delivered"], d["expected"], "{r}");
    assert_eq!(d["lost"], 0, "{r}");
    assert_eq!(d["duplicates"], 0, "{r}");
    assert_eq!(d["out_of_order"], 0, "{r}");
    assert_eq!(r["publishes"]["failed"], 0, "{r}");
    assert!(r["latency_ms"]["p99"].as_f64().is_some(), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_over_websocket_and_http_counts_every_delivery() {
    let redis = Redis::start().await;
    let gw = gateway(&redis).process().spawn().await;
    let bc = ServiceBuilder::new("broadcaster")
        .redis(&redis)
        .spawn()
        .await;
    let (url, pid) = (gw.ws(), gw.pid().expect("pid").to_string());

    let ws = bench(&[
        "fanout",
        "--url",
        &url,
        "--secret",
        TEST_SECRET,
        "--pid",
        &pid,
        "--subscribers",
        "40",
        "--channels",
        "4",
        "--shared-every",
        "3",
        "--rate",
        "60",
        "--duration",
        "2",
        "--payload",
        "64",
    ])
    .await;
    // Every subscriber is on one of 4 channels and on the shared one: each publish is
    // owed to its channel's 10 subscribers, or to all 40 when it went to the shared one.
    let d = &ws["deliveries"];
    assert!(d["expected"].as_u64().expect("expected") > 0, "{ws}");
    assert_eq!(d["delivered"], d["expected"], "{ws}");
    assert_eq!(d["lost"], 0, "{ws}");
    assert_eq!(d["duplicates"], 0, "{ws}");
    assert!(
        ws["gateway"]["rss_mib"].as_f64().expect("rss") > 0.0,
        "{ws}"
    );
    assert!(
        ws["gateway"]["cpu_us_per_delivery"].as_f64().is_some(),
        "{ws}"
    );

    let http = bench(&[
        "fanout",
        "--url",
        &url,
        "--secret",
        TEST_SECRET,
        "--subscribers",
        "5",
        "--rate",
        "100",
        "--duration",
        "2",
        "--publish",
        "http",
        "--publishers",
        "2",
        "--window",
        "8",
        "--api-url",
        &bc.http(),
        "--api-key",
        API_KEY,
    ])
    .await;
    assert_exact(&http, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_report_setup_and_memory() {
    let redis = Redis::start().await;
    let gw = gateway(&redis).process().spawn().await;
    let pid = gw.pid().expect("pid").to_string();
    let r = bench(&[
        "connections",
        "--url",
        &gw.ws(),
        "--secret",
        TEST_SECRET,
        "--pid",
        &pid,
        "--count",
        "200",
        "--hold",
        "1",
        "--channel",
        "idle",
    ])
    .await;
    assert_eq!(r["connections"], 200, "{r}");
    assert!(r["setup_per_sec"].as_f64().expect("rate") > 0.0, "{r}");
    assert!(
        r["gateway"]["rss_kib_per_connection"].as_f64().is_some(),
        "{r}"
    );
    assert!(
        r["gateway"]["setup_cpu_us_per_connection"]
            .as_f64()
            .is_some(),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_flood_counts_every_join_and_leave() {
    let redis = Redis::start().await;
    let gw = gateway(&redis).process().spawn().await;
    let pid = gw.pid().expect("pid").to_string();
    let r = bench(&[
        "presence",
        "--url",
        &gw.ws(),
        "--secret",
        TEST_SECRET,
        "--pid",
        &pid,
        "--listeners",
        "3",
        "--subscribers",
        "5",
        "--churners",
        "4",
        "--rate",
        "50",
        "--duration",
        "2",
        "--baseline",
        "1",
        // Paced: listeners far behind (a busy machine) would be cut off as slow
        // consumers, and this test is about the counts.
        "--joins-per-sec",
        "200",
    ])
    .await;
    // Every completed cycle is one join and one leave, each owed to all 3 listeners.
    let churn = &r["churn"];
    let cycles = churn["cycles"].as_u64().expect("cycles");
    assert!(cycles > 0, "no cycle completed: {r}");
    assert_eq!(churn["joins"], churn["leaves"], "{r}");
    assert_eq!(churn["refused"], 0, "{r}");
    assert_eq!(churn["timeouts"], 0, "{r}");
    let ev = &r["events"];
    assert_eq!(ev["listeners"], 3, "{r}");
    assert_eq!(ev["expected"].as_u64(), Some(cycles * 2 * 3), "{r}");
    assert_eq!(ev["received"], ev["expected"], "{r}");
    assert_eq!(ev["lost"], 0, "{r}");
    for phase in ["baseline", "flood"] {
        let m = &r["messages"][phase];
        assert!(m["sent"].as_u64().expect("sent") > 0, "{phase}: {r}");
        assert_eq!(m["delivered"], m["expected"], "{phase}: {r}");
        assert!(r["latency_ms"][phase]["p99"].as_f64().is_some(), "{r}");
    }
    assert_eq!(r["messages"]["duplicates"], 0, "{r}");
    // Once the churners are done, only the listeners and subscribers are members.
    assert_eq!(r["presence_after"]["num_clients"], 8, "{r}");
    assert!(r["gateway"]["cpu_pct_flood"].as_f64().is_some(), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_baseline_delivers_everything() {
    raw_baseline(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_direct_writes_deliver_everything() {
    raw_baseline(&["--direct"]).await;
}

/// A raw-server run with `extra` flags: every frame it sent reaches every client.
async fn raw_baseline(extra: &[&str]) {
    use tokio::io::AsyncBufReadExt;
    let mut server = tokio::process::Command::new(bin_path("herald-bench"))
        .args([
            "raw-server",
            "--listen",
            "127.0.0.1:0",
            "--subscribers",
            "20",
            "--rate",
            "50",
            "--duration",
            "1",
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn raw-server");
    let mut lines = tokio::io::BufReader::new(server.stderr.take().expect("stderr")).lines();
    within("raw-server to listen", async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("waiting for") {
                return;
            }
        }
        panic!("raw-server exited before listening");
    })
    .await;
    // It names the address it was given, not the port it got: that comes from /proc.
    let pid = server.id().expect("raw-server pid");
    let listen = eventually("raw-server's listening socket", || async {
        listening_addrs(pid).first().copied()
    })
    .await;
    let r = bench(&[
        "fanout",
        "--raw",
        "--url",
        &format!("tcp://{listen}"),
        "--subscribers",
        "20",
    ])
    .await;
    let out = within("raw-server to exit", server.wait_with_output())
        .await
        .expect("wait");
    assert!(out.status.success(), "raw-server: {}", out.status);
    let sent: Value = serde_json::from_slice(&out.stdout).expect("raw-server JSON");
    let d = &r["deliveries"];
    assert!(sent["sent"].as_u64().expect("sent") > 0, "{sent}");
    assert_eq!(
        d["expected"].as_u64(),
        sent["sent"].as_u64().map(|n| n * 20),
        "{r}"
    );
    assert_eq!(d["delivered"], d["expected"], "{r}");
    assert_eq!(d["lost"], 0, "{r}");
    assert_eq!(d["duplicates"], 0, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_target_and_refused_tokens_fail_clearly() {
    let (_nobody, dead) = dead_addr();
    let nobody = format!("ws://{dead}/ws");
    let (code, _, err) = run_bin(
        "herald-bench",
        &[
            "fanout",
            "--url",
            &nobody,
            "--secret",
            TEST_SECRET,
            "--subscribers",
            "3",
            "--duration",
            "1",
        ],
        &[],
    )
    .await;
    assert_ne!(code, 0);
    assert!(err.contains("cannot connect"), "stderr: {err}");

    let redis = Redis::start().await;
    let gw = gateway(&redis).spawn().await;
    let (code, _, err) = run_bin(
        "herald-bench",
        &[
            "connections",
            "--url",
            &gw.ws(),
            "--secret",
            "not-the-gateway-secret-at-all",
            "--count",
            "3",
            "--hold",
            "1",
        ],
        &[],
    )
    .await;
    assert_ne!(code, 0);
    assert!(
        err.contains("refused") && err.contains("401"),
        "stderr: {err}"
    );

    let (code, _, err) = run_bin(
        "herald-bench",
        &["connections", "--url", &gw.ws(), "--count", "1"],
        &[],
    )
    .await;
    assert_ne!(code, 0);
    assert!(err.contains("--secret"), "stderr: {err}");
}
