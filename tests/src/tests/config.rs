//! Start-up as a user meets it, with the real binaries: configuration errors (every
//! problem at once, one line each, naming the variable), a taken port, the version
//! every node reports, and what the logs look like in a file.

use std::process::Stdio;

use herald_common::keys::Keys;
use tokio::process::Command;

use crate::{
    Redis, ServiceBuilder, bin_path, dead_redis, eventually, listening_addr, run_bin_clean, signal,
    within,
};

/// The four services.
const SERVICES: [&str; 4] = ["ws-gateway", "auth-svc", "broadcaster", "monitor"];

/// The non-blank lines of `text`.
fn lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.trim().is_empty()).collect()
}

/// What `service` prints when refused with `env` (plus a Redis nothing listens on:
/// configuration errors must come before Redis, and a listen address), after checking
/// that it exits 64.
async fn refused(service: &str, env: &[(&str, &str)]) -> Vec<String> {
    let (_nobody, dead) = dead_redis();
    let mut all = vec![
        ("HERALD_REDIS_URL", dead.as_str()),
        ("HERALD_LISTEN", "127.0.0.1:0"),
    ];
    all.extend_from_slice(env);
    let (code, _, err) = run_bin_clean(service, &[], &all).await;
    assert_eq!(code, 64, "{service}: {err}");
    lines(&err).into_iter().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bad_variables_are_both_reported_by_name() {
    // One numeric setting of each service, plus one every service shares.
    let numeric = [
        ("ws-gateway", "HERALD_HEARTBEAT_INTERVAL_MS"),
        ("auth-svc", "HERALD_ACCESS_TOKEN_TTL_S"),
        ("broadcaster", "HERALD_JOB_WORKERS"),
        ("monitor", "HERALD_PROBE_INTERVAL_MS"),
    ];
    for (service, var) in numeric {
        let mut got = refused(
            service,
            &[
                ("HERALD_JWT_SECRET", crate::TEST_SECRET),
                (var, "abc"),
                ("HERALD_DEV", "maybe"),
            ],
        )
        .await;
        got.sort_unstable();
        let mut expected = [
            format!(r#"{service}: configuration error: {var} "abc" is not a number"#),
            format!(
                r#"{service}: configuration error: HERALD_DEV "maybe" is not valid: expected 1/0/true/false, got "maybe""#
            ),
        ];
        expected.sort_unstable();
        assert_eq!(got, expected, "{service}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_number_and_a_missing_secret_are_reported_together() {
    for service in ["ws-gateway", "auth-svc"] {
        let got = refused(service, &[("HERALD_JWT_LEEWAY_S", "-3")]).await;
        assert_eq!(got.len(), 2, "{service}: {got:?}");
        assert_eq!(
            got[0],
            format!(
                r#"{service}: configuration error: HERALD_JWT_LEEWAY_S "-3" must not be negative"#
            )
        );
        assert!(
            got[1].starts_with(&format!(
                "{service}: configuration error: HERALD_JWT_SECRET is not set"
            )),
            "{got:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_jwt_algorithm_is_one_line_listing_the_choices() {
    for service in ["ws-gateway", "auth-svc"] {
        // Spelled as in a JWT header: case matters.
        let got = refused(
            service,
            &[
                ("HERALD_JWT_SECRET", crate::TEST_SECRET),
                ("HERALD_JWT_ALG", "hs256"),
            ],
        )
        .await;
        assert_eq!(
            got,
            [format!(
                r#"{service}: configuration error: HERALD_JWT_ALG "hs256" is not one of HS256, EdDSA, RS256"#
            )],
            "{service}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flag_overrides_a_bad_variable() {
    // The flag wins, so the variable's value does not matter.
    let (_nobody, dead) = dead_redis();
    let (code, _, err) = run_bin_clean(
        "broadcaster",
        &["--job-workers", "3", "--listen", "nowhere"],
        &[("HERALD_REDIS_URL", &dead), ("HERALD_JOB_WORKERS", "abc")],
    )
    .await;
    // The flag's own value is refused by the parser, in its words; the variable the
    // flag overrides is not reported.
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("invalid value 'nowhere' for '--listen <LISTEN>'"),
        "{err}"
    );
    assert!(!err.contains("HERALD_JOB_WORKERS"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_url_without_scheme_gets_the_redis_form() {
    for service in SERVICES {
        let (code, _, err) = run_bin_clean(
            service,
            &[],
            &[
                ("HERALD_REDIS_URL", "127.0.0.1:6379"),
                ("HERALD_JWT_SECRET", crate::TEST_SECRET),
                ("HERALD_LISTEN", "127.0.0.1:0"),
            ],
        )
        .await;
        assert_eq!(code, 64, "{service}: {err}");
        let got = lines(&err);
        assert_eq!(got.len(), 1, "{service}: {err}");
        assert!(
            got[0].starts_with(&format!(
                r#"{service}: configuration error: HERALD_REDIS_URL "127.0.0.1:6379" has no scheme: write it as redis://127.0.0.1:6379"#
            )),
            "{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_is_one_line_for_every_service() {
    let redis = Redis::start().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    for service in SERVICES {
        let (code, _, err) = run_bin_clean(
            service,
            &[],
            &[
                ("HERALD_REDIS_URL", &redis.url()),
                ("HERALD_JWT_SECRET", crate::TEST_SECRET),
                ("HERALD_LISTEN", &addr),
            ],
        )
        .await;
        assert_ne!(code, 0, "{service}: {err}");
        let got = lines(&err);
        assert_eq!(got.len(), 1, "{service}: {err}");
        assert!(
            got[0].starts_with(&format!("{service}: cannot listen on {addr}: ")),
            "{err}"
        );
    }
    drop(taken);
}

/// `0.4.0` or `0.4.0 (abc1234)`: the workspace version, then the git revision when
/// the build had one.
#[track_caller]
fn assert_herald_version(v: &str) {
    let workspace = env!("CARGO_PKG_VERSION");
    assert_ne!(workspace, "0.0.0");
    let Some(rest) = v.strip_prefix(workspace) else {
        panic!("{v:?} is not version {workspace}");
    };
    if !rest.is_empty() {
        let rev = rest
            .strip_prefix(" (")
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{v:?}: no revision in parentheses"));
        assert!(
            rev.len() >= 7 && rev.chars().all(|c| c.is_ascii_hexdigit()),
            "{v:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_reports_the_herald_version() {
    for service in SERVICES {
        let (code, out, err) = run_bin_clean(service, &["--version"], &[]).await;
        assert_eq!(code, 0, "{service}: {err}");
        let v = out
            .trim_end()
            .strip_prefix(&format!("{service} "))
            .unwrap_or_else(|| panic!("{out:?}"));
        assert_herald_version(v);
    }

    let redis = Redis::start().await;
    let mut running = Vec::new();
    for service in SERVICES {
        let id = format!("version-{service}");
        running.push(
            ServiceBuilder::new(service)
                .redis(&redis)
                .env("HERALD_NODE_ID", &id)
                .spawn()
                .await,
        );
        let key = Keys::new("herald:".to_owned()).node(&id);
        let conn = redis.conn().await;
        let info: String = eventually(&format!("{id}'s node record"), || {
            let key = key.clone();
            let mut conn = conn.clone();
            async move {
                redis::cmd("GET")
                    .arg(&key)
                    .query_async::<Option<String>>(&mut conn)
                    .await
                    .ok()
                    .flatten()
            }
        })
        .await;
        let info: serde_json::Value = serde_json::from_str(&info).expect("NodeInfo JSON");
        assert_herald_version(info["version"].as_str().expect("version"));
    }
}

/// Starts `service` in development mode with its log going to a file, waits until it
/// serves, stops it, and returns the log.
async fn dev_log(service: &str, redis: &Redis) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(format!("{service}.log"));
    let file = std::fs::File::create(&path).expect("log file");
    let node = format!("{service}-log");
    let mut child = Command::new(bin_path(service))
        .env_clear()
        .env("HERALD_DEV", "1")
        .env("HERALD_NODE_ID", &node)
        .env("HERALD_REDIS_URL", redis.url())
        .env("HERALD_LISTEN", "127.0.0.1:0")
        .env("HERALD_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let addr = eventually(&format!("{service} to log its address"), || async {
        let log = std::fs::read_to_string(&path).ok()?;
        log.lines().find_map(listening_addr)
    })
    .await;
    let url = format!("http://{addr}/healthz");
    eventually(&format!("{service} /healthz"), || {
        let url = url.clone();
        async move {
            let r = reqwest::get(url).await.ok()?;
            r.status().is_success().then_some(())
        }
    })
    .await;
    // Two heartbeats, so that anything logged periodically is in the file too.
    let beat = || async {
        let mut c = redis.conn().await;
        redis::cmd("ZSCORE")
            .arg("herald:nodes")
            .arg(&node)
            .query_async::<Option<u64>>(&mut c)
            .await
            .ok()
            .flatten()
    };
    let first = eventually(&format!("{service}'s first heartbeat"), beat).await;
    eventually(&format!("{service}'s second heartbeat"), || async {
        beat().await.filter(|b| *b > first)
    })
    .await;
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        signal(pid, 15);
    }
    within(&format!("{service} to stop"), child.wait())
        .await
        .expect("wait");
    std::fs::read(&path).expect("read log")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_file_is_plain_text_and_warns_about_the_dev_secret_once() {
    let redis = Redis::start().await;
    for service in ["ws-gateway", "auth-svc"] {
        let log = dev_log(service, &redis).await;
        let text = String::from_utf8_lossy(&log);
        assert!(
            !log.contains(&0x1b),
            "{service}: colour codes in a file:\n{text}"
        );
        let warnings = text
            .lines()
            .filter(|l| l.contains("fixed development JWT secret"))
            .count();
        assert_eq!(warnings, 1, "{service}:\n{text}");
    }
    for service in ["broadcaster", "monitor"] {
        let log = dev_log(service, &redis).await;
        assert!(
            !log.contains(&0x1b),
            "{service}: colour codes in a file:\n{}",
            String::from_utf8_lossy(&log)
        );
    }
}
