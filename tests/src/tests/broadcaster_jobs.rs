//! The broadcaster's durable jobs: they run and publish their results, and a job
//! whose worker dies is taken over and its result published exactly once.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use super::broadcaster::{Sub, finished, get_job, history_len, metrics, post, start, submit};
use crate::{API_KEY, Backend, Redis, ServiceBuilder, eventually, http_json};

pub(super) async fn jobs_run_and_publish_their_results(backend: Backend) {
    let bc = start(&backend).await;
    let mut sub = Sub::new(&backend, &["results"]).await;

    let id = submit(&bc, "data_processing", json!([1, 2, 3, 4]), "results").await;
    let v = finished(&bc, &id, Duration::from_secs(10)).await;
    assert_eq!(v["status"], "done", "{v}");
    assert_eq!(v["job_type"], "data_processing");
    assert_eq!(v["result"]["count"], 4);
    assert_eq!(v["result"]["sum"].as_f64(), Some(10.0));
    assert_eq!(v["result"]["mean"].as_f64(), Some(2.5));
    let d = sub.next().await;
    assert_eq!(d.frame["type"], "processing_result");
    assert_eq!(d.frame["job_id"], id.as_str());
    assert_eq!(d.frame["job_type"], "data_processing");
    assert_eq!(d.frame["status"], "done");
    assert_eq!(d.frame["channel"], "results");
    assert_eq!(d.frame["result"], v["result"]);

    let id = submit(
        &bc,
        "file_operation",
        json!({"operation":"word_count","content":"one two  three"}),
        "results",
    )
    .await;
    let v = finished(&bc, &id, Duration::from_secs(10)).await;
    assert_eq!(v["result"], json!({"words": 3}));
    assert_eq!(sub.next().await.frame["result"], json!({"words": 3}));

    // A job that fails while running: failed state and a failed result frame.
    let id = submit(
        &bc,
        "data_processing",
        json!({"values":[1e308, 1e308]}),
        "results",
    )
    .await;
    let v = finished(&bc, &id, Duration::from_secs(10)).await;
    assert_eq!(v["status"], "failed", "{v}");
    assert!(
        v["error"].as_str().is_some_and(|e| e.contains("overflow")),
        "{v}"
    );
    let d = sub.next().await;
    assert_eq!(d.frame["status"], "failed");
    assert!(d.frame["result"]["error"].is_string(), "{}", d.text);

    // Unknown jobs and bad submissions.
    let (status, _) = http_json(
        Method::GET,
        &format!("{}/v1/jobs/0123456789abcdef0123456789abcdef", bc.http()),
        Some(API_KEY),
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, v) = post(
        &bc,
        "/v1/jobs",
        json!({"job_type":"teleport","data":{},"target_channel":"results"}),
    )
    .await;
    assert_eq!(status, 422, "{v}");

    let m = metrics(&bc).await;
    for line in [
        r#"herald_jobs_total{status="queued"} 3"#,
        r#"herald_jobs_total{status="done"} 2"#,
        r#"herald_jobs_total{status="failed"} 1"#,
    ] {
        assert!(m.contains(line), "missing {line} in\n{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_worker_dies_is_taken_over_and_published_once() {
    let redis = Redis::start().await;
    let builder = |node: &str| {
        ServiceBuilder::new("broadcaster")
            .redis(&redis)
            .env("HERALD_JOB_CLAIM_IDLE_MS", "1000")
            .env("HERALD_NODE_ID", node)
    };
    let mut a = builder("bc-a").process().spawn().await;
    let mut sub = Sub::new(&redis, &["work"]).await;

    let id = submit(&a, "sleep", json!({"ms": 3000}), "work").await;
    eventually("worker A to start the job", || {
        let a = &a;
        let id = id.clone();
        async move {
            let v = get_job(a, &id).await;
            (v["status"] == "running").then_some(())
        }
    })
    .await;
    a.kill().await;

    let b = builder("bc-b").spawn().await;
    let v = finished(&b, &id, Duration::from_secs(30)).await;
    assert_eq!(v["status"], "done", "{v}");
    assert_eq!(v["result"], json!({"slept_ms": 3000}));
    assert_eq!(v["attempts"], 2, "{v}");

    let d = sub.next().await;
    assert_eq!(d.frame["type"], "processing_result");
    assert_eq!(d.frame["job_id"], id.as_str());
    assert_eq!(d.frame["status"], "done");
    // Exactly once: no second frame, one history entry, nothing left pending.
    sub.assert_quiet(Duration::from_millis(1500)).await;
    assert_eq!(history_len(&redis, "work").await, 1);
    let mut c = redis.conn().await;
    let summary: redis::Value = redis::cmd("XPENDING")
        .arg("herald:jobs")
        .arg("workers")
        .query_async(&mut c)
        .await
        .expect("XPENDING");
    let redis::Value::Array(fields) = summary else {
        panic!("unexpected XPENDING reply {summary:?}");
    };
    assert_eq!(fields.first(), Some(&redis::Value::Int(0)), "{fields:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reclaimed_job_whose_result_was_already_published_is_not_published_again() {
    let redis = Redis::start().await;
    // A node without workers only queues.
    let queuer = ServiceBuilder::new("broadcaster")
        .redis(&redis)
        .env("HERALD_JOB_WORKERS", "0")
        .spawn()
        .await;
    let id = submit(&queuer, "sleep", json!({"ms": 10}), "work2").await;
    assert_eq!(get_job(&queuer, &id).await["status"], "queued");

    // A worker "ghost" takes the job, publishes its result, and dies before
    // recording it: the entry is pending and the exactly-once marker is set.
    let mut c = redis.conn().await;
    let _: redis::Value = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("herald:jobs")
        .arg("workers")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut c)
        .await
        .expect("XGROUP CREATE");
    let read: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("workers")
        .arg("ghost")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg("herald:jobs")
        .arg(">")
        .query_async(&mut c)
        .await
        .expect("XREADGROUP");
    assert_ne!(read, redis::Value::Nil);
    let _: () = redis::cmd("SET")
        .arg(format!("herald:once:{{work2}}:job:{id}"))
        .arg("41 ghost-epoch")
        .query_async(&mut c)
        .await
        .expect("SET");

    let mut sub = Sub::new(&redis, &["work2"]).await;
    let worker = ServiceBuilder::new("broadcaster")
        .redis(&redis)
        .env("HERALD_JOB_CLAIM_IDLE_MS", "1000")
        .spawn()
        .await;
    let v = finished(&worker, &id, Duration::from_secs(30)).await;
    assert_eq!(v["status"], "done", "{v}");
    assert_eq!(v["attempts"], 1);
    sub.assert_quiet(Duration::from_millis(500)).await;
    assert_eq!(history_len(&redis, "work2").await, 0);
}

crate::both_engines!(jobs_run_and_publish_their_results,);
