//! The idle-connection benchmark: how fast authenticated connections are set up and
//! how much gateway memory each one costs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::cli::ConnArgs;
use crate::client;
use crate::fanout::wait_connected;
use crate::report::{self, per_sec};

pub(crate) async fn run(args: ConnArgs, json_out: bool) -> anyhow::Result<()> {
    let sources = client::sources(&args.target, args.count);
    let tokens = if args.raw {
        Vec::new()
    } else {
        client::tokens(&args.target, args.count)?
    };
    let target = Arc::new(args.target.clone());
    let before = report::sample(args.target.pid);
    let me_before = report::sample(Some(std::process::id()));
    let connected = Arc::new(AtomicU64::new(0));
    let sem = Arc::new(Semaphore::new(args.target.connect_concurrency.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let channels: Vec<String> = if args.channel.is_empty() {
        Vec::new()
    } else {
        vec![args.channel.clone()]
    };
    let mut tasks = JoinSet::new();
    let started = Instant::now();
    for i in 0..args.count {
        let (target, source, chans) =
            (target.clone(), sources[i % sources.len()], channels.clone());
        let token = tokens.get(i).cloned();
        let (connected, sem, mut stop) = (connected.clone(), sem.clone(), stop_rx.clone());
        let raw = args.raw;
        tasks.spawn(async move {
            let permit = sem.acquire_owned().await.ok();
            if raw {
                // The baseline: a bare TCP connection, nothing on top.
                let addr = client::host_port(&target.url)?;
                let _stream = client::tcp(source, addr).await?;
                drop(permit);
                connected.fetch_add(1, Ordering::Relaxed);
                let _ = stop.changed().await;
                return anyhow::Ok(());
            }
            let token = token.unwrap_or_default();
            let mut ws =
                client::connect(&target, source, &token, &chans, client::SMALL_READ_BUFFER).await?;
            drop(permit);
            connected.fetch_add(1, Ordering::Relaxed);
            // Keep reading so pings are answered; stop when told.
            let stopped = stop.changed();
            tokio::pin!(stopped);
            loop {
                tokio::select! {
                    m = ws.next() => if !matches!(m, Some(Ok(_))) { break },
                    _ = &mut stopped => break,
                }
            }
            anyhow::Ok(())
        });
    }
    wait_connected(&connected, args.count as u64, &mut tasks, "connections").await?;
    let setup = started.elapsed();
    let after_setup = report::sample(args.target.pid);
    let me_after_setup = report::sample(Some(std::process::id()));
    tokio::time::sleep(Duration::from_secs(args.hold)).await;
    let held = report::sample(args.target.pid);
    let _ = stop_tx.send(true);
    tasks.abort_all();
    let per_conn = match (before, held) {
        (Some(b), Some(h)) if args.count > 0 => {
            Some((h.rss_bytes.saturating_sub(b.rss_bytes)) as f64 / args.count as f64 / 1024.0)
        }
        _ => None,
    };
    let out = json!({
        "connections": args.count,
        "setup_seconds": (setup.as_secs_f64() * 1000.0).round() / 1000.0,
        "setup_per_sec": per_sec(args.count as u64, setup),
        "gateway": {
            "rss_before_mib": before.map(|b| (b.rss_bytes as f64 / 1048576.0 * 10.0).round() / 10.0),
            "rss_held_mib": held.map(|h| (h.rss_bytes as f64 / 1048576.0 * 10.0).round() / 10.0),
            "rss_kib_per_connection": per_conn.map(|k| (k * 100.0).round() / 100.0),
            "setup_cpu_us_per_connection": report::cpu_us_per(before, after_setup, args.count as u64),
        },
        "client": {
            "setup_cpu_us_per_connection": report::cpu_us_per(me_before, me_after_setup, args.count as u64),
        },
    });
    report::print(&out, json_out);
    Ok(())
}
