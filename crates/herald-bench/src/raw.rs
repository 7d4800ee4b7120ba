//! The raw baseline: the same fan-out with plain tokio TCP writes of pre-encoded
//! WebSocket frames — no JSON, no Redis, no per-connection protocol — the ceiling
//! this machine allows. The server mirrors Herald's shape (one bounded queue and
//! one writer task per connection, the frame encoded once and shared) so the
//! difference is what Herald itself costs. With `--direct` the publishing loop writes
//! every frame to every socket itself, with no queue and no task per connection: the
//! floor for latency at low rates, where each delivery is one `write`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::{BufMut, Bytes, BytesMut};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::cli::{FanoutArgs, RawServerArgs};
use crate::client::{self, number_after};
use crate::fanout::{Tally, client_json, gateway_json, wait_connected};
use crate::report::{self, latency_json, per_sec};

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// An unmasked server-to-client WebSocket text frame.
fn ws_frame(payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(payload.len() + 10);
    b.put_u8(0x81);
    match payload.len() {
        n if n < 126 => b.put_u8(n as u8),
        n if n <= u16::MAX as usize => {
            b.put_u8(126);
            b.put_u16(n as u16);
        }
        n => {
            b.put_u8(127);
            b.put_u64(n as u64);
        }
    }
    b.put_slice(payload);
    b.freeze()
}

pub(crate) async fn server(args: RawServerArgs) -> anyhow::Result<()> {
    // A deep accept queue, as the gateway has: connection storms must not wait out
    // SYN retransmissions.
    let addr: std::net::SocketAddr = args
        .listen
        .parse()
        .with_context(|| format!("--listen {} is not host:port", args.listen))?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket
        .bind(addr)
        .with_context(|| format!("cannot listen on {addr}"))?;
    let listener = socket.listen(8192)?;
    eprintln!(
        "raw-server: waiting for {} clients on {}",
        args.subscribers, args.listen
    );
    let mut queues = Vec::with_capacity(args.subscribers);
    let mut direct = Vec::new();
    let give_up = tokio::time::Instant::now() + Duration::from_secs(args.accept_timeout);
    while queues.len() + direct.len() < args.subscribers {
        let Ok(accepted) = tokio::time::timeout_at(give_up, listener.accept()).await else {
            anyhow::bail!(
                "only {} of {} clients connected within {} s",
                queues.len() + direct.len(),
                args.subscribers,
                args.accept_timeout
            );
        };
        let (stream, _) = accepted?;
        stream.set_nodelay(true)?;
        if args.direct {
            direct.push(stream);
            continue;
        }
        let (tx, mut rx) = mpsc::channel::<Bytes>(args.queue);
        tokio::spawn(async move {
            let mut w = BufWriter::with_capacity(64 * 1024, stream);
            while let Some(first) = rx.recv().await {
                if w.write_all(&first).await.is_err() {
                    return;
                }
                // Coalesce what is already queued into one flush, as Herald does.
                for _ in 0..64 {
                    match rx.try_recv() {
                        Ok(b) => {
                            if w.write_all(&b).await.is_err() {
                                return;
                            }
                        }
                        Err(_) => break,
                    }
                }
                if w.flush().await.is_err() {
                    return;
                }
            }
            let _ = w.shutdown().await;
        });
        queues.push(tx);
    }
    eprintln!("raw-server: publishing for {} s", args.duration);
    let pad = "x".repeat(args.payload.saturating_sub(40));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration);
    let mut seq = 0u64;
    while Instant::now() < deadline {
        if args.rate > 0 {
            let due = (started.elapsed().as_secs_f64() * args.rate as f64) as u64;
            if seq >= due {
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        }
        let payload = format!(r#"{{"t":{},"seq":{},"pad":"{pad}"}}"#, unix_ns(), seq + 1);
        let frame = ws_frame(payload.as_bytes());
        for q in &queues {
            // Backpressure instead of loss: the ceiling, not a policy.
            let _ = q.send(frame.clone()).await;
        }
        for s in &mut direct {
            // One write while the socket has room; waits (backpressure) when it has not.
            let _ = s.write_all(&frame).await;
        }
        seq += 1;
    }
    drop(queues);
    drop(direct);
    println!("{}", json!({"sent": seq, "subscribers": args.subscribers}));
    // Let the writers finish.
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(())
}

/// `fanout --raw`: N plain TCP readers of a raw-server.
pub(crate) async fn client(args: FanoutArgs, json_out: bool) -> anyhow::Result<()> {
    let target = client::host_port(&args.target.url)?;
    let sources = client::sources(&args.target, args.subscribers);
    let tally = Arc::new(Tally::new()?);
    let connected = Arc::new(AtomicU64::new(0));
    let max_seq = Arc::new(AtomicU64::new(0));
    let sem = Arc::new(Semaphore::new(args.target.connect_concurrency.max(1)));
    let mut tasks = JoinSet::new();
    let before = report::sample(args.target.pid);
    let me_before = report::sample(Some(std::process::id()));
    for i in 0..args.subscribers {
        let source = sources[i % sources.len()];
        let (tally, connected, max_seq, sem) = (
            tally.clone(),
            connected.clone(),
            max_seq.clone(),
            sem.clone(),
        );
        tasks.spawn(async move {
            let permit = sem.acquire_owned().await.ok();
            let mut stream = client::tcp(source, target).await?;
            drop(permit);
            connected.fetch_add(1, Ordering::Relaxed);
            let mut buf = BytesMut::with_capacity(64 * 1024);
            let mut last = 0u64;
            let mut samples = Vec::with_capacity(256);
            loop {
                // Parse every complete frame in the buffer.
                while let Some((len, start)) = frame_len(&buf) {
                    if buf.len() < start + len {
                        break;
                    }
                    let frame = buf.split_to(start + len);
                    let text = std::str::from_utf8(&frame[start..]).unwrap_or("");
                    if let Some(seq) = number_after(text, r#""seq":"#) {
                        if seq <= last {
                            tally.duplicates.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        last = seq;
                        max_seq.fetch_max(seq, Ordering::Relaxed);
                    }
                    tally.delivered.fetch_add(1, Ordering::Relaxed);
                    if let Some(t) = number_after(text, r#""t":"#) {
                        samples.push(unix_ns().saturating_sub(t));
                        if samples.len() >= 256 {
                            tally.record(&mut samples);
                        }
                    }
                }
                match stream.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            tally.record(&mut samples);
            anyhow::Ok(())
        });
    }
    wait_connected(
        &connected,
        args.subscribers as u64,
        &mut tasks,
        "raw subscribers",
    )
    .await?;
    let started = Instant::now();
    // Wait for the server to finish (it closes every connection).
    let mut first_delivery: Option<Instant> = None;
    while !tasks.is_empty() {
        tokio::select! {
            _ = tasks.join_next() => {}
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                if first_delivery.is_none() && tally.delivered.load(Ordering::Relaxed) > 0 {
                    first_delivery = Some(Instant::now());
                }
                report::progress(&format!("delivered {}", tally.delivered.load(Ordering::Relaxed)));
            }
        }
    }
    eprintln!();
    let elapsed = first_delivery.map_or(started.elapsed(), |f| f.elapsed());
    let after = report::sample(args.target.pid);
    let me_after = report::sample(Some(std::process::id()));
    let delivered = tally.delivered.load(Ordering::Relaxed);
    let expected = max_seq.load(Ordering::Relaxed) * args.subscribers as u64;
    let hist = tally.latency.lock().map(|h| h.clone()).ok();
    let cpu = match (before, after) {
        (Some(b), Some(a)) => Some(a.cpu_s - b.cpu_s),
        _ => None,
    };
    let out = json!({
        "scenario": {"raw": true, "subscribers": args.subscribers, "payload": args.payload},
        "deliveries": {"expected": expected, "delivered": delivered, "lost": expected.saturating_sub(delivered),
                       "duplicates": tally.duplicates.load(Ordering::Relaxed), "per_sec": per_sec(delivered, elapsed)},
        "latency_ms": hist.as_ref().map(latency_json),
        "server": gateway_json(after, cpu, delivered),
        "client": client_json(me_before, me_after, delivered),
    });
    report::print(&out, json_out);
    Ok(())
}

/// The payload length and header size of the frame at the start of `buf`.
fn frame_len(buf: &[u8]) -> Option<(usize, usize)> {
    let b1 = *buf.get(1)?;
    match b1 & 0x7f {
        126 => Some((u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize, 4)),
        127 => {
            let bytes: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            Some((u64::from_be_bytes(bytes) as usize, 10))
        }
        n => Some((n as usize, 2)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        for n in [0usize, 10, 125, 126, 1000, 70_000] {
            let payload = vec![b'a'; n];
            let f = ws_frame(&payload);
            let (len, start) = frame_len(&f).unwrap();
            assert_eq!((len, f.len() - start), (n, n));
        }
    }
}
