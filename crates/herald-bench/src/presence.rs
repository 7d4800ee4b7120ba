//! The presence flood: churners subscribe and unsubscribe on one channel, each cycle a
//! join and a leave for every `join_leave` listener, while one publisher's messages
//! reach plain subscribers of the same channel. Reports the cycles the churners
//! completed against the events the listeners received (so lost events show), message
//! latency and loss before and during the flood, and the gateway's CPU and RSS.
//!
//! Events are counted only when they name a churner's `conn_id` (learnt from each
//! churner's `auth_success`): the setup's own subscribes are joins too, and not part of
//! the flood.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::cli::{PresenceArgs, Target};
use crate::client::{self, Ws, now_ns, number_after, string_after};
use crate::fanout::wait_connected;
use crate::report::{self, ProcSample, latency_json, per_sec};

/// Publishes made before the churn started.
const BASELINE: usize = 0;
/// Publishes made while the churners ran.
const FLOOD: usize = 1;
/// Latency samples a subscriber buffers before taking the shared histogram's lock.
const SAMPLE_BATCH: usize = 64;
/// Unacknowledged publishes the publisher allows before it waits.
const PUBLISH_WINDOW: usize = 256;
/// The id of the final `presence_stats` request, far above any publish's.
const STATS_ID: u64 = 1 << 40;
/// Pause after a refused churn request without `retry_after_ms`, so a refusing gateway
/// is not answered with a tight loop.
const REFUSED_BACKOFF: Duration = Duration::from_millis(10);

/// Messages published in one phase and what reached the plain subscribers.
#[derive(Debug)]
struct Phase {
    sent: AtomicU64,
    delivered: AtomicU64,
    latency: Mutex<Histogram<u64>>,
}

impl Phase {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            sent: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            latency: Mutex::new(Histogram::new_with_bounds(1_000, 120_000_000_000, 3)?),
        })
    }

    fn record(&self, samples: &mut Vec<u64>) {
        if let Ok(mut h) = self.latency.lock() {
            for s in samples.drain(..) {
                let _ = h.record(s.clamp(1_000, 120_000_000_000));
            }
        }
    }
}

/// What every task adds to.
#[derive(Debug)]
struct Counts {
    /// `BASELINE` or `FLOOD`: the phase the next publish belongs to.
    phase: AtomicUsize,
    phases: [Phase; 2],
    publish_failed: AtomicU64,
    duplicates: AtomicU64,
    out_of_order: AtomicU64,
    /// `subscribed` / `unsubscribed` replies the churners got: one join / one leave each.
    joins: AtomicU64,
    leaves: AtomicU64,
    /// Churn requests answered with an `error` frame.
    refused: AtomicU64,
    /// Churn requests not answered in time (that churner stops: its state is unknown).
    timeouts: AtomicU64,
    /// Events the listeners received that a churner caused.
    ev_joins: AtomicU64,
    ev_leaves: AtomicU64,
    /// Events from connections other than the churners (the setup's subscribes).
    ev_other: AtomicU64,
    /// When the last churner event arrived (`now_ns`).
    last_event_ns: AtomicU64,
    /// Listeners subscribed with `join_leave`, and those refused.
    listening: AtomicU64,
    listeners_refused: AtomicU64,
    /// Plain subscribers subscribed at the handshake, and those refused.
    subscribed: AtomicU64,
    subscribers_refused: AtomicU64,
    /// Connections that ended before the run did, by role.
    lost: Lost,
    /// `error` frames by code, and `disconnect` frames by code.
    errors: Mutex<BTreeMap<String, u64>>,
    disconnects: Mutex<BTreeMap<String, u64>>,
    /// The churners' `conn_id`s, set once they are all connected.
    churner_ids: OnceLock<HashSet<String>>,
}

#[derive(Debug, Default)]
struct Lost {
    listeners: AtomicU64,
    subscribers: AtomicU64,
    churners: AtomicU64,
}

impl Counts {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            phase: AtomicUsize::new(BASELINE),
            phases: [Phase::new()?, Phase::new()?],
            publish_failed: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            joins: AtomicU64::new(0),
            leaves: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            ev_joins: AtomicU64::new(0),
            ev_leaves: AtomicU64::new(0),
            ev_other: AtomicU64::new(0),
            last_event_ns: AtomicU64::new(0),
            listening: AtomicU64::new(0),
            listeners_refused: AtomicU64::new(0),
            subscribed: AtomicU64::new(0),
            subscribers_refused: AtomicU64::new(0),
            lost: Lost::default(),
            errors: Mutex::new(BTreeMap::new()),
            disconnects: Mutex::new(BTreeMap::new()),
            churner_ids: OnceLock::new(),
        })
    }

    /// Counts an `error` or `disconnect` frame by its code.
    fn note(&self, frame: &str) {
        let code = string_after(frame, r#""code":""#).unwrap_or("?").to_owned();
        let map = if frame.starts_with(r#"{"type":"disconnect""#) {
            &self.disconnects
        } else {
            &self.errors
        };
        if let Ok(mut m) = map.lock() {
            *m.entry(code).or_default() += 1;
        }
    }

    fn events(&self) -> u64 {
        self.ev_joins.load(Ordering::Relaxed) + self.ev_leaves.load(Ordering::Relaxed)
    }

    /// Events owed by the cycles so far: every join and leave, to every listener.
    fn events_expected(&self) -> u64 {
        (self.joins.load(Ordering::Relaxed) + self.leaves.load(Ordering::Relaxed))
            * self.listening.load(Ordering::Relaxed)
    }

    fn delivered(&self) -> u64 {
        self.phases
            .iter()
            .map(|p| p.delivered.load(Ordering::Relaxed))
            .sum()
    }
}

/// Frames pushed by the gateway that never answer a request.
fn is_push(t: &str) -> bool {
    [
        r#"{"type":"message""#,
        r#"{"type":"join""#,
        r#"{"type":"leave""#,
        r#"{"type":"heartbeat""#,
    ]
    .iter()
    .any(|p| t.starts_with(p))
}

/// The answer to one request.
#[derive(Debug)]
enum Reply {
    /// The reply carrying the request's `id`.
    Ok(String),
    /// An `error` frame carrying the request's `id`.
    Refused(String),
    TimedOut,
    /// The connection ended (after a `disconnect` frame, or without one).
    Closed,
}

/// Sends `frame` and reads until the reply carrying `id`, at most `timeout`; pushed
/// frames in between (messages, events, heartbeats) are skipped.
async fn request(ws: &mut Ws, frame: String, id: u64, timeout: Duration, c: &Counts) -> Reply {
    if ws.send(Message::text(frame)).await.is_err() {
        return Reply::Closed;
    }
    let until = tokio::time::Instant::now() + timeout;
    loop {
        let t = match tokio::time::timeout_at(until, ws.next()).await {
            Err(_) => return Reply::TimedOut,
            Ok(Some(Ok(Message::Text(t)))) => t,
            Ok(Some(Ok(Message::Close(_))) | Some(Err(_)) | None) => return Reply::Closed,
            Ok(Some(Ok(_))) => continue,
        };
        if is_push(&t) {
            continue;
        }
        if t.starts_with(r#"{"type":"disconnect""#) {
            c.note(&t);
            return Reply::Closed;
        }
        let is_error = t.starts_with(r#"{"type":"error""#);
        if number_after(&t, r#""id":"#) != Some(id) {
            if is_error {
                c.note(&t);
            }
            continue;
        }
        if is_error {
            c.note(&t);
            return Reply::Refused(t.as_str().to_owned());
        }
        return Reply::Ok(t.as_str().to_owned());
    }
}

/// Connects with the run's timeout.
async fn connect(
    target: &Target,
    source: std::net::IpAddr,
    token: &str,
    channels: &[String],
    read_buffer: usize,
    timeout: Duration,
) -> anyhow::Result<(Ws, String)> {
    tokio::time::timeout(
        timeout,
        client::connect_hello(target, source, token, channels, read_buffer),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no auth_success within {timeout:?}"))?
}

/// A listener: subscribes with `join_leave`, then counts the churners' events until
/// told to stop.
async fn listener(
    mut ws: Ws,
    channel: &str,
    c: &Counts,
    timeout: Duration,
    settled: &AtomicU64,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let frame = json!({"type":"subscribe","channel":channel,"join_leave":true,"id":1}).to_string();
    // Counted before `settled`: the run reads `listening` once all have settled.
    match request(&mut ws, frame, 1, timeout, c).await {
        Reply::Ok(_) => {
            c.listening.fetch_add(1, Ordering::Relaxed);
            settled.fetch_add(1, Ordering::Relaxed);
        }
        Reply::Refused(_) => {
            c.listeners_refused.fetch_add(1, Ordering::Relaxed);
            settled.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        Reply::TimedOut => bail!("a listener's subscribe got no reply within {timeout:?}"),
        Reply::Closed => bail!("a listener's connection closed at its subscribe"),
    }
    let stopped = stop.changed();
    tokio::pin!(stopped);
    loop {
        let msg = tokio::select! {
            m = ws.next() => m,
            _ = &mut stopped => break,
        };
        let t = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_)) | Err(_)) | None => {
                c.lost.listeners.fetch_add(1, Ordering::Relaxed);
                break;
            }
            Some(Ok(_)) => continue,
        };
        let counter = if t.starts_with(r#"{"type":"join""#) {
            &c.ev_joins
        } else if t.starts_with(r#"{"type":"leave""#) {
            &c.ev_leaves
        } else {
            if t.starts_with(r#"{"type":"error""#) || t.starts_with(r#"{"type":"disconnect""#) {
                c.note(&t);
            }
            continue;
        };
        let from_churner = string_after(&t, r#""conn_id":""#)
            .zip(c.churner_ids.get())
            .is_some_and(|(id, ids)| ids.contains(id));
        if from_churner {
            counter.fetch_add(1, Ordering::Relaxed);
            c.last_event_ns.fetch_max(now_ns(), Ordering::Relaxed);
        } else {
            c.ev_other.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// A plain subscriber: per-channel offsets for loss and reordering, latency by the
/// phase each message was published in.
async fn subscriber(mut ws: Ws, c: &Counts, mut stop: watch::Receiver<bool>) {
    let mut last = 0u64;
    let mut samples: [Vec<u64>; 2] = [
        Vec::with_capacity(SAMPLE_BATCH),
        Vec::with_capacity(SAMPLE_BATCH),
    ];
    let stopped = stop.changed();
    tokio::pin!(stopped);
    loop {
        let msg = tokio::select! {
            m = ws.next() => m,
            _ = &mut stopped => break,
        };
        let t = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_)) | Err(_)) | None => {
                c.lost.subscribers.fetch_add(1, Ordering::Relaxed);
                break;
            }
            Some(Ok(_)) => continue,
        };
        if !t.starts_with(r#"{"type":"message""#) {
            if t.starts_with(r#"{"type":"error""#) || t.starts_with(r#"{"type":"disconnect""#) {
                c.note(&t);
            }
            continue;
        }
        let now = now_ns();
        if let Some(off) = number_after(&t, r#""offset":"#) {
            if off <= last {
                c.duplicates.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if last != 0 && off != last + 1 {
                c.out_of_order.fetch_add(1, Ordering::Relaxed);
            }
            last = off;
        }
        let p = match number_after(&t, r#""p":"#) {
            Some(0) => BASELINE,
            _ => FLOOD,
        };
        c.phases[p].delivered.fetch_add(1, Ordering::Relaxed);
        if let Some(sent_at) = number_after(&t, r#""t":"#) {
            samples[p].push(now.saturating_sub(sent_at));
            if samples[p].len() >= SAMPLE_BATCH {
                c.phases[p].record(&mut samples[p]);
            }
        }
    }
    for (p, s) in samples.iter_mut().enumerate() {
        c.phases[p].record(s);
    }
}

/// The publisher: `rate` broadcasts per second (each stamped with its send time and
/// phase) until `publishing` turns false, then the outstanding acks. Gives the
/// connection back for the final presence check.
async fn publisher(
    mut ws: Ws,
    channel: String,
    rate: u64,
    pad: String,
    c: Arc<Counts>,
    publishing: Arc<AtomicBool>,
    timeout: Duration,
) -> anyhow::Result<Ws> {
    // An `ack` counts its publish as sent in the phase it was made in; an `error`
    // counts it as failed.
    let settle = |t: &str, owed: &mut HashMap<u64, usize>| {
        let id = number_after(t, r#""id":"#);
        if t.starts_with(r#"{"type":"ack""#) {
            if let Some(p) = id.and_then(|id| owed.remove(&id)) {
                c.phases[p].sent.fetch_add(1, Ordering::Relaxed);
            }
        } else if t.starts_with(r#"{"type":"error""#) {
            c.note(t);
            c.publish_failed.fetch_add(1, Ordering::Relaxed);
            if let Some(id) = id {
                owed.remove(&id);
            }
        }
    };
    let started = Instant::now();
    let mut owed: HashMap<u64, usize> = HashMap::new();
    let mut done = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while publishing.load(Ordering::Relaxed) {
        let due = if rate == 0 {
            0
        } else {
            (started.elapsed().as_secs_f64() * rate as f64) as u64 + 1
        };
        let n = due
            .saturating_sub(done)
            .min(PUBLISH_WINDOW.saturating_sub(owed.len()) as u64);
        for _ in 0..n {
            let phase = c.phase.load(Ordering::Relaxed);
            let frame = format!(
                r#"{{"type":"broadcast","channel":"{channel}","message":{{"t":{},"p":{phase},"pad":"{pad}"}},"id":{done}}}"#,
                now_ns()
            );
            ws.feed(Message::text(frame)).await?;
            owed.insert(done, phase);
            done += 1;
        }
        if n > 0 {
            ws.flush().await?;
        }
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => settle(&t, &mut owed),
                Some(Ok(_)) => {}
                _ => bail!("the publisher's connection closed"),
            },
            _ = tick.tick() => {}
        }
    }
    let until = tokio::time::Instant::now() + timeout;
    while !owed.is_empty() {
        match tokio::time::timeout_at(until, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => settle(&t, &mut owed),
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    Ok(ws)
}

/// What every churner shares.
#[derive(Clone)]
struct Churn {
    channel: String,
    c: Arc<Counts>,
    /// Turns to the flood's start.
    go: watch::Receiver<Option<Instant>>,
    /// Time between one churner's cycles when paced.
    every: Option<Duration>,
    duration: Duration,
    timeout: Duration,
}

/// One churner's loop: subscribe, `subscribed`, unsubscribe, `unsubscribed`, until the
/// flood ends; paced when `every` is given (its k-th cycle at `first_offset + k × every`
/// from the start).
async fn churner(mut ws: Ws, churn: Churn, first_offset: Duration) {
    let Churn {
        channel,
        c,
        mut go,
        every,
        duration,
        timeout,
    } = churn;
    let Ok(start) = go
        .wait_for(Option::is_some)
        .await
        .map(|s| s.unwrap_or_else(Instant::now))
    else {
        return;
    };
    let deadline = start + duration;
    let mut id = 0u64;
    let mut k = 0u32;
    let backoff = |refusal: &str| {
        number_after(refusal, r#""retry_after_ms":"#)
            .map_or(REFUSED_BACKOFF, Duration::from_millis)
            .min(deadline.saturating_duration_since(Instant::now()))
    };
    loop {
        if let Some(every) = every {
            let due = start + first_offset + every * k;
            if due >= deadline {
                break;
            }
            tokio::time::sleep_until(due.into()).await;
        } else if Instant::now() >= deadline {
            break;
        }
        k += 1;
        id += 1;
        let sub = format!(r#"{{"type":"subscribe","channel":"{channel}","id":{id}}}"#);
        match request(&mut ws, sub, id, timeout, &c).await {
            Reply::Ok(_) => c.joins.fetch_add(1, Ordering::Relaxed),
            Reply::Refused(t) => {
                c.refused.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(backoff(&t)).await;
                continue;
            }
            Reply::TimedOut => {
                c.timeouts.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Reply::Closed => {
                c.lost.churners.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        // Every join gets its leave, past the deadline if need be (within `timeout`):
        // a churner left subscribed would make the next cycle's `subscribed` a join
        // that never happened.
        let give_up = deadline.max(Instant::now()) + timeout;
        loop {
            id += 1;
            let unsub = format!(r#"{{"type":"unsubscribe","channel":"{channel}","id":{id}}}"#);
            match request(&mut ws, unsub, id, timeout, &c).await {
                Reply::Ok(_) => {
                    c.leaves.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Reply::Refused(t) => {
                    c.refused.fetch_add(1, Ordering::Relaxed);
                    if Instant::now() >= give_up {
                        return;
                    }
                    tokio::time::sleep(backoff(&t).max(REFUSED_BACKOFF)).await;
                }
                Reply::TimedOut => {
                    c.timeouts.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Reply::Closed => {
                    c.lost.churners.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
}

/// Percent of one core between two samples `wall` apart.
fn cpu_pct(a: Option<ProcSample>, b: Option<ProcSample>, wall: Duration) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if !wall.is_zero() => {
            Some(((b.cpu_s - a.cpu_s) / wall.as_secs_f64() * 1000.0).round() / 10.0)
        }
        _ => None,
    }
}

fn mib(s: Option<ProcSample>) -> Option<f64> {
    s.map(|s| (s.rss_bytes as f64 / 1048576.0 * 10.0).round() / 10.0)
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

pub(crate) async fn run(args: PresenceArgs, json_out: bool) -> anyhow::Result<()> {
    if args.churners == 0 || args.duration == 0 {
        bail!("--churners and --duration must be at least 1");
    }
    let timeout = Duration::from_secs(args.timeout.max(1));
    let (n_listen, n_sub, n_churn) = (args.listeners, args.subscribers, args.churners);
    let total = n_listen + n_sub + 1 + n_churn;
    let sources = client::sources(&args.target, total);
    let tokens = client::tokens(&args.target, total)?;
    let target = Arc::new(args.target.clone());
    let c = Arc::new(Counts::new()?);
    let (stop_tx, stop_rx) = watch::channel(false);
    let sem = Arc::new(Semaphore::new(args.target.connect_concurrency.max(1)));
    let role_of = |i: usize| (sources[i % sources.len()], tokens[i].clone());

    // Listeners, subscribed with join_leave before anything else joins.
    let settled = Arc::new(AtomicU64::new(0));
    let mut readers = JoinSet::new();
    for i in 0..n_listen {
        let (source, token) = role_of(i);
        let (target, c, sem, settled, stop) = (
            target.clone(),
            c.clone(),
            sem.clone(),
            settled.clone(),
            stop_rx.clone(),
        );
        let channel = args.channel.clone();
        readers.spawn(async move {
            let permit = sem.acquire_owned().await.ok();
            let (ws, _) = connect(
                &target,
                source,
                &token,
                &[],
                client::BULK_READ_BUFFER,
                timeout,
            )
            .await?;
            drop(permit);
            listener(ws, &channel, &c, timeout, &settled, stop).await
        });
    }
    wait_connected(&settled, n_listen as u64, &mut readers, "listeners").await?;
    if n_listen > 0 && c.listening.load(Ordering::Relaxed) == 0 {
        let errors = c
            .errors
            .lock()
            .map(|e| format!("{e:?}"))
            .unwrap_or_default();
        bail!("every listener's join_leave subscribe was refused: {errors}");
    }

    // Plain subscribers, subscribed at the handshake.
    let connected = Arc::new(AtomicU64::new(0));
    let channels = vec![args.channel.clone()];
    for i in n_listen..n_listen + n_sub {
        let (source, token) = role_of(i);
        let (target, c, sem, connected, stop, chans) = (
            target.clone(),
            c.clone(),
            sem.clone(),
            connected.clone(),
            stop_rx.clone(),
            channels.clone(),
        );
        readers.spawn(async move {
            let permit = sem.acquire_owned().await.ok();
            let (ws, hello) = connect(
                &target,
                source,
                &token,
                &chans,
                client::BULK_READ_BUFFER,
                timeout,
            )
            .await?;
            drop(permit);
            // A refused channel is left out of auth_success's list (an error frame
            // follows, counted by the reader); such a subscriber owes nothing.
            if hello.contains(&format!(r#""channels":["{}"]"#, chans[0])) {
                c.subscribed.fetch_add(1, Ordering::Relaxed);
            } else {
                c.subscribers_refused.fetch_add(1, Ordering::Relaxed);
            }
            connected.fetch_add(1, Ordering::Relaxed);
            subscriber(ws, &c, stop).await;
            anyhow::Ok(())
        });
    }
    wait_connected(&connected, n_sub as u64, &mut readers, "subscribers").await?;

    // The publisher, and the churners (not subscribed yet).
    let (source, token) = role_of(n_listen + n_sub);
    let (pub_ws, _) = connect(
        &target,
        source,
        &token,
        &[],
        client::SMALL_READ_BUFFER,
        timeout,
    )
    .await
    .context("publisher connection")?;
    let mut churner_conns = JoinSet::new();
    for i in n_listen + n_sub + 1..total {
        let (source, token) = role_of(i);
        let (target, sem) = (target.clone(), sem.clone());
        churner_conns.spawn(async move {
            let _permit = sem.acquire_owned().await.ok();
            let (ws, hello) = connect(
                &target,
                source,
                &token,
                &[],
                client::SMALL_READ_BUFFER,
                timeout,
            )
            .await?;
            let id = string_after(&hello, r#""conn_id":""#)
                .with_context(|| format!("auth_success without a conn_id: {hello}"))?
                .to_owned();
            anyhow::Ok((ws, id))
        });
    }
    let mut churn_ws = Vec::with_capacity(n_churn);
    let mut ids = HashSet::with_capacity(n_churn);
    while let Some(r) = churner_conns.join_next().await {
        let (ws, id) = r.context("a churner's connection task failed")??;
        churn_ws.push(ws);
        ids.insert(id);
        report::progress(&format!(
            "connecting churners: {}/{n_churn}",
            churn_ws.len()
        ));
    }
    eprintln!();
    let _ = c.churner_ids.set(ids);

    let (go_tx, go_rx) = watch::channel(None::<Instant>);
    let every = (args.joins_per_sec > 0)
        .then(|| Duration::from_secs_f64(n_churn as f64 / args.joins_per_sec as f64));
    let duration = Duration::from_secs(args.duration);
    let churn = Churn {
        channel: args.channel.clone(),
        c: c.clone(),
        go: go_rx,
        every,
        duration,
        timeout,
    };
    let mut churners = JoinSet::new();
    for (j, ws) in churn_ws.into_iter().enumerate() {
        // Churner j runs j/R s behind the first, so N churners at R/N each make one
        // even stream of R cycles per second.
        let offset = if args.joins_per_sec > 0 {
            Duration::from_secs_f64(j as f64 / args.joins_per_sec as f64)
        } else {
            Duration::ZERO
        };
        churners.spawn(churner(ws, churn.clone(), offset));
    }

    // Baseline: messages only.
    let publishing = Arc::new(AtomicBool::new(true));
    let rss_before = report::sample(args.target.pid);
    let gw0 = rss_before;
    let t0 = Instant::now();
    let pub_task = tokio::spawn(publisher(
        pub_ws,
        args.channel.clone(),
        args.rate,
        "x".repeat(args.payload.saturating_sub(40)),
        c.clone(),
        publishing.clone(),
        timeout,
    ));
    if args.baseline > 0 {
        for s in 0..args.baseline {
            report::progress(&format!(
                "baseline {s}/{}s: delivered {}",
                args.baseline,
                c.delivered()
            ));
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        eprintln!();
    }

    // The flood.
    let gw1 = report::sample(args.target.pid);
    let me1 = report::sample(Some(std::process::id()));
    c.phase.store(FLOOD, Ordering::Relaxed);
    let t1 = Instant::now();
    let t1_ns = now_ns();
    let _ = go_tx.send(Some(t1));
    let ticker = {
        let c = c.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                report::progress(&format!(
                    "flood {:.0}s: cycles {}  events {}/{}  delivered {}",
                    t1.elapsed().as_secs_f64(),
                    c.leaves.load(Ordering::Relaxed),
                    c.events(),
                    c.events_expected(),
                    c.delivered()
                ));
            }
        })
    };
    tokio::time::sleep(duration).await;
    publishing.store(false, Ordering::Relaxed);
    // Each churner finishes its cycle, every wait bounded by `timeout`.
    let _ = tokio::time::timeout(duration + 3 * timeout, async {
        while churners.join_next().await.is_some() {}
    })
    .await;
    churners.abort_all();
    let t2 = Instant::now();
    let behind_at_end = c.events_expected().saturating_sub(c.events());
    // A publisher that lost its connection (or hung) is reported, and what it
    // published still counts.
    let pub_ws = match tokio::time::timeout(2 * timeout, pub_task).await {
        Ok(Ok(Ok(ws))) => Some(ws),
        Ok(Ok(Err(e))) => {
            eprintln!("herald-bench: the publisher stopped early: {e:#}");
            None
        }
        Ok(Err(e)) => bail!("the publisher task failed: {e}"),
        Err(_) => {
            eprintln!("herald-bench: the publisher did not stop within {timeout:?}");
            None
        }
    };
    let publisher_lost = pub_ws.is_none();

    // Drain: until everything owed arrived, or nothing moved for `timeout`.
    let subs = c.subscribed.load(Ordering::Relaxed);
    let owed_msgs = || {
        c.phases
            .iter()
            .map(|p| p.sent.load(Ordering::Relaxed) * subs)
            .sum::<u64>()
    };
    let mut last = (c.events(), c.delivered());
    let mut still_since = Instant::now();
    loop {
        let now = (c.events(), c.delivered());
        if now.0 >= c.events_expected() && now.1 >= owed_msgs() {
            break;
        }
        if now != last {
            last = now;
            still_since = Instant::now();
        } else if still_since.elapsed() > timeout {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t3 = Instant::now();
    let gw3 = report::sample(args.target.pid);
    let me3 = report::sample(Some(std::process::id()));
    ticker.abort();
    eprintln!();

    // What presence says is left: the listeners and subscribers, no churner.
    let mut members_after = None;
    if let Some(mut ws) = pub_ws {
        let ask = json!({"type":"presence_stats","channel":args.channel,"id":STATS_ID});
        if let Reply::Ok(t) = request(&mut ws, ask.to_string(), STATS_ID, timeout, &c).await {
            members_after = number_after(&t, r#""num_clients":"#);
        }
    }

    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(timeout, async {
        while readers.join_next().await.is_some() {}
    })
    .await;
    readers.abort_all();

    let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let (joins, leaves) = (ld(&c.joins), ld(&c.leaves));
    let listening = ld(&c.listening);
    let events = c.events();
    let expected_events = c.events_expected();
    let churn_time = t2.duration_since(t1);
    let last_event = ld(&c.last_event_ns);
    // Events per second over the time they took to arrive: from the flood's start to
    // the last one, which may be after the churners stopped if the gateway fell behind.
    let event_time = Duration::from_nanos(last_event.saturating_sub(t1_ns));
    let phase_json = |p: usize| {
        let sent = ld(&c.phases[p].sent);
        let delivered = ld(&c.phases[p].delivered);
        json!({
            "sent": sent, "expected": sent * subs, "delivered": delivered,
            "lost": (sent * subs).saturating_sub(delivered),
        })
    };
    let latency = |p: usize| {
        c.phases[p]
            .latency
            .lock()
            .ok()
            .map_or(Value::Null, |h| latency_json(&h))
    };
    let map_json = |m: &Mutex<BTreeMap<String, u64>>| m.lock().map_or(Value::Null, |m| json!(*m));
    let flood_cpu = match (gw1, gw3) {
        (Some(a), Some(b)) => Some(b.cpu_s - a.cpu_s),
        _ => None,
    };
    // The flood's own cost: its CPU less what the baseline's load (the same messages
    // to the same connections) took, at the baseline's rate, over as long.
    let extra_cpu = match (gw0, gw1, flood_cpu) {
        (Some(a), Some(b), Some(f)) if args.baseline > 0 => {
            let per_s = (b.cpu_s - a.cpu_s) / t1.duration_since(t0).as_secs_f64();
            Some(f - per_s * t3.duration_since(t1).as_secs_f64())
        }
        _ => None,
    };
    let us_per = |cpu: Option<f64>, n: u64| {
        cpu.filter(|_| n > 0)
            .map(|s| (s * 1e6 / n as f64 * 100.0).round() / 100.0)
    };
    let out = json!({
        "scenario": {
            "channel": args.channel, "listeners": n_listen, "subscribers": n_sub,
            "churners": n_churn, "rate": args.rate, "duration_s": args.duration,
            "joins_per_sec_target": args.joins_per_sec, "baseline_s": args.baseline,
            "payload": args.payload,
        },
        "churn": {
            "cycles": leaves, "joins": joins, "leaves": leaves,
            "seconds": secs(churn_time),
            "joins_per_sec": per_sec(joins, churn_time),
            "leaves_per_sec": per_sec(leaves, churn_time),
            "refused": ld(&c.refused), "timeouts": ld(&c.timeouts),
            "disconnected": ld(&c.lost.churners),
        },
        "events": {
            "listeners": listening, "listeners_refused": ld(&c.listeners_refused),
            "expected": expected_events, "received": events,
            "joins": ld(&c.ev_joins), "leaves": ld(&c.ev_leaves),
            "lost": expected_events.saturating_sub(events),
            "per_sec": per_sec(events, event_time),
            "behind_at_churn_end": behind_at_end,
            "arrival_seconds": secs(event_time),
            "not_from_churners": ld(&c.ev_other),
            "listeners_disconnected": ld(&c.lost.listeners),
        },
        "messages": {
            "baseline": phase_json(BASELINE),
            "flood": phase_json(FLOOD),
            "failed": ld(&c.publish_failed), "publisher_lost": publisher_lost,
            "duplicates": ld(&c.duplicates), "out_of_order": ld(&c.out_of_order),
            "subscribers": subs, "subscribers_refused": ld(&c.subscribers_refused),
            "subscribers_disconnected": ld(&c.lost.subscribers),
        },
        "latency_ms": {"baseline": latency(BASELINE), "flood": latency(FLOOD)},
        "presence_after": {
            "num_clients": members_after,
            "expected": listening + subs,
        },
        "errors": map_json(&c.errors),
        "disconnects": map_json(&c.disconnects),
        "gateway": {
            "cpu_pct_baseline": (args.baseline > 0)
                .then(|| cpu_pct(gw0, gw1, t1.duration_since(t0))).flatten(),
            "cpu_pct_flood": cpu_pct(gw1, gw3, t3.duration_since(t1)),
            "cpu_s_flood": flood_cpu.map(|s| (s * 100.0).round() / 100.0),
            "cpu_us_per_event": us_per(flood_cpu, events),
            "extra_cpu_us_per_cycle": us_per(extra_cpu, leaves),
            "extra_cpu_us_per_event": us_per(extra_cpu, events),
            "rss_mib_before": mib(rss_before),
            "rss_mib_after": mib(gw3),
        },
        "client": {"cpu_pct_flood": cpu_pct(me1, me3, t3.duration_since(t1))},
    });
    report::print(&out, json_out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_frames_and_counts_refusals_by_code() {
        assert!(is_push(
            r#"{"type":"join","channel":"room","user_id":"u","conn_id":"a1"}"#
        ));
        assert!(is_push(r#"{"type":"heartbeat","timestamp":"t"}"#));
        assert!(!is_push(r#"{"type":"subscribed","channel":"room","id":3}"#));
        let c = Counts::new().unwrap();
        c.note(r#"{"type":"error","code":"rate_limited","message":"m","id":4,"retry_after_ms":9}"#);
        c.note(r#"{"type":"error","code":"rate_limited","message":"m","id":5}"#);
        c.note(r#"{"type":"disconnect","code":"slow_consumer","reason":"r","reconnect":true}"#);
        assert_eq!(c.errors.lock().unwrap().get("rate_limited"), Some(&2));
        assert_eq!(c.disconnects.lock().unwrap().get("slow_consumer"), Some(&1));
        c.joins.store(3, Ordering::Relaxed);
        c.leaves.store(2, Ordering::Relaxed);
        c.listening.store(4, Ordering::Relaxed);
        assert_eq!(c.events_expected(), 20);
    }
}
