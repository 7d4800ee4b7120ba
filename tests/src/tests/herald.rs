//! The all-in-one `herald` binary: the four services in one process, each on the port
//! it prints, working together over one Redis, or with no Redis on its memory engine.

use std::process::Stdio;

use reqwest::Method;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::{Redis, Ws, bin_path, eventually, http_json, signal, token, within};

const API_KEY: &str = "herald-all-in-one-api-key";

/// What herald printed before serving: the address of each service
/// (`herald: <service> <url>`, one line each) and its other lines.
async fn printed(stdout: tokio::process::ChildStdout) -> (Vec<(String, String)>, Vec<String>) {
    let mut lines = BufReader::new(stdout).lines();
    let (mut urls, mut notes) = (Vec::new(), Vec::new());
    while urls.len() < 4 {
        let line = within("herald prints where it listens", lines.next_line())
            .await
            .expect("stdout readable")
            .expect("herald exited before listing its services");
        let mut words = line.split_whitespace();
        assert_eq!(words.next(), Some("herald:"), "{line}");
        match (words.next(), words.next(), words.next()) {
            (Some(service), Some(url), None) => urls.push((service.to_owned(), url.to_owned())),
            _ => notes.push(line),
        }
    }
    (urls, notes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_serves_publish_recovery_and_the_monitor() {
    let redis = Redis::start().await;
    let notes = serves_a_cluster(Some(&redis), Mode::Configured).await;
    assert!(notes.is_empty(), "{notes:?}");
}

/// No Redis anywhere: the in-memory engine, announced in one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_one_process_is_the_whole_cluster() {
    let notes = serves_a_cluster(None, Mode::Configured).await;
    assert_eq!(notes, [MEMORY_NOTICE]);
}

/// A newcomer's first try: `HERALD_DEV=1` and nothing else. The development keys and
/// a `herald token` are all it takes to publish and receive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_try_needs_nothing_but_development_mode() {
    let notes = serves_a_cluster(None, Mode::Development).await;
    assert_eq!(
        notes,
        [
            MEMORY_NOTICE,
            "herald: development keys where none is set (HERALD_DEV=1): admin dev-admin-key, \
             API dev-api-key",
            "herald: a token to try it with (HERALD_DEV=1): herald token --user alice \
             --channels news --publish news",
        ]
    );
}

const MEMORY_NOTICE: &str = "herald: no HERALD_REDIS_URL: running on the in-memory engine \
                             (one process; nothing is kept across restarts)";

/// How the test configures `herald`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A JWT secret and an API key of the test's own.
    Configured,
    /// `HERALD_DEV=1` alone: tokens from `herald token`, the development API key.
    Development,
}

/// Starts `herald` (on `redis`, or on its own memory), then publishes through the
/// broadcaster, receives through the gateway, recovers with `since`, finds every
/// service in the monitor and stops it with SIGTERM. Returns the lines it printed
/// besides the addresses.
async fn serves_a_cluster(redis: Option<&Redis>, mode: Mode) -> Vec<String> {
    let mut cmd = Command::new(bin_path("herald"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HERALD_LOG", "warn")
        .env("HERALD_GATEWAY_LISTEN", "127.0.0.1:0")
        .env("HERALD_AUTH_LISTEN", "127.0.0.1:0")
        .env("HERALD_BROADCASTER_LISTEN", "127.0.0.1:0")
        .env("HERALD_MONITOR_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    if let Some(redis) = redis {
        cmd.env("HERALD_REDIS_URL", redis.url());
    }
    let (t, api_key) = match mode {
        Mode::Configured => {
            cmd.env("HERALD_JWT_SECRET", crate::TEST_SECRET)
                .env("HERALD_API_KEY", API_KEY);
            (token("u1", &["news"], &[]), API_KEY)
        }
        Mode::Development => {
            cmd.env("HERALD_DEV", "1");
            let (code, out, err) = crate::run_bin_clean(
                "herald",
                &["token", "--user", "u1", "--channels", "news"],
                &[("HERALD_DEV", "1")],
            )
            .await;
            assert_eq!(code, 0, "{err}");
            (out.trim().to_owned(), "dev-api-key")
        }
    };
    let mut child = cmd.spawn().expect("herald starts");
    let (urls, notes) = printed(child.stdout.take().expect("piped")).await;
    let url = |service: &str| {
        urls.iter()
            .find(|(s, _)| s == service)
            .unwrap_or_else(|| panic!("{service} not listed: {urls:?}"))
            .1
            .clone()
    };

    // Published through the broadcaster, delivered by the gateway.
    let mut ws = Ws::connect(&url("ws-gateway")).await;
    ws.send(json!({"type":"auth","token":t,"channels":["news"]}))
        .await;
    assert_eq!(
        ws.recv_type("auth_success").await["channels"],
        json!(["news"])
    );
    let mut epoch = String::new();
    let publish = format!("{}/v1/publish", url("broadcaster"));
    for n in 1..=2 {
        let (status, _) = http_json(
            Method::POST,
            &publish,
            Some(api_key),
            Some(json!({"channel":"news","message":{"n":n}})),
        )
        .await;
        assert_eq!(status, 200);
        let m = ws.recv_type("message").await;
        assert_eq!(
            (m["offset"].as_u64(), m["message"]["n"].as_u64()),
            (Some(n), Some(n))
        );
        epoch = m["epoch"].as_str().expect("epoch").to_owned();
    }

    // A client that saw offset 1 recovers offset 2.
    let mut late = Ws::connect(&url("ws-gateway")).await;
    late.send(json!({"type":"auth","token":t})).await;
    late.recv_type("auth_success").await;
    late.send(json!({"type":"subscribe","channel":"news","since":{"offset":1,"epoch":epoch}}))
        .await;
    assert_eq!(late.recv_type("message").await["message"]["n"], 2);
    let s = late.recv_type("subscribed").await;
    assert_eq!(s["recovered"], true);

    // auth-svc answers, and the monitor lists all four services as nodes.
    let (status, _) = http_json(
        Method::GET,
        &format!("{}/healthz", url("auth-svc")),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let overview = format!("{}/api/v1/overview", url("monitor"));
    eventually("the monitor lists the four services", || async {
        let (status, v) = http_json(Method::GET, &overview, None, None).await;
        let mut services: Vec<&str> = v["nodes"]
            .as_array()
            .map(|n| n.iter().filter_map(|n| n["service"].as_str()).collect())
            .unwrap_or_default();
        services.sort_unstable();
        (status == 200 && services == ["auth-svc", "broadcaster", "monitor", "ws-gateway"])
            .then_some(())
    })
    .await;

    // One signal stops them all, cleanly.
    let pid = i32::try_from(child.id().expect("running")).expect("pid");
    signal(pid, 15); // SIGTERM
    let status = within("herald stops on SIGTERM", child.wait())
        .await
        .expect("exit status");
    assert!(status.success(), "{status}");
    notes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_one_service_owns_are_refused_with_the_per_service_ones_named() {
    let (code, _, err) =
        crate::run_bin_clean("herald", &[], &[("HERALD_LISTEN", "127.0.0.1:0")]).await;
    assert_eq!(code, 64, "{err}");
    assert_eq!(
        err.trim(),
        "herald: configuration error: HERALD_LISTEN is one service's address: herald takes \
         HERALD_GATEWAY_LISTEN, HERALD_AUTH_LISTEN, HERALD_BROADCASTER_LISTEN and \
         HERALD_MONITOR_LISTEN"
    );
    // Only auth-svc and monitor would both bind an admin listener.
    let (code, _, err) =
        crate::run_bin_clean("herald", &[], &[("HERALD_ADMIN_LISTEN", "127.0.0.1:0")]).await;
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("HERALD_ADMIN_LISTEN would be bound by both"),
        "{err}"
    );
    // Without Redis, a service left out would run where it cannot see this memory.
    let (code, _, err) = crate::run_bin_clean("herald", &["--only", "ws-gateway"], &[]).await;
    assert_eq!(code, 64, "{err}");
    assert_eq!(
        err.trim(),
        "herald: configuration error: --only (HERALD_ONLY) needs HERALD_REDIS_URL or HERALD_REDIS_CLUSTER: \
         without Redis the services share this process's memory, which services in other processes \
         cannot see"
    );
}
