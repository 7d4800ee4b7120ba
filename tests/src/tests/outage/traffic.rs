//! The load kept up through the outage, and what it must show afterwards.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::load_client::{Client, Next, PROMPT, position};
use crate::{API_KEY, Service, Ws, eventually, http_json, within};

/// The message that ends the subscriber's recording.
const END: &str = "end";

/// One publish attempt of the WebSocket publisher.
#[derive(Debug, Clone)]
pub(super) struct Attempt {
    at: Instant,
    latency: Duration,
    pub(super) ack: Option<(String, u64)>,
    code: Option<String>,
}

/// A subscriber recording every message on `news` until [`END`], and a publisher
/// broadcasting to it (and pinging) until stopped, one request at a time.
pub(super) struct Traffic {
    attempts: Arc<Mutex<Vec<Attempt>>>,
    received: Arc<Mutex<Vec<Value>>>,
    stop: Arc<AtomicBool>,
    publisher: JoinHandle<()>,
    subscriber: JoinHandle<Client>,
}

impl Traffic {
    pub(super) async fn start(gw: &Service, t: &str) -> Self {
        let (mut sub, _) = Client::auth(&gw.ws(), t, &["news"]).await.expect("sub");
        let (mut publisher, _) = Client::auth(&gw.ws(), t, &[]).await.expect("publisher");
        let received: Arc<Mutex<Vec<Value>>> = Arc::default();
        let subscriber = tokio::spawn({
            let received = received.clone();
            async move {
                loop {
                    match sub.next(PROMPT).await {
                        Next::Frame(v) if v["type"] == "message" => {
                            let end = v["message"] == END;
                            received.lock().expect("received").push(v);
                            if end {
                                return sub;
                            }
                        }
                        Next::Frame(_) | Next::Idle => {}
                        Next::Closed(code) => panic!("the subscriber was disconnected ({code})"),
                    }
                }
            }
        });
        let attempts: Arc<Mutex<Vec<Attempt>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let publisher = tokio::spawn({
            let (attempts, stop) = (attempts.clone(), stop.clone());
            async move {
                let mut other = Vec::new();
                let mut id = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    id += 1;
                    let frame =
                        json!({"type":"broadcast","channel":"news","message":{"i":id},"id":id});
                    let started = Instant::now();
                    let reply = publisher
                        .request(&frame, id, PROMPT, &mut other)
                        .await
                        .unwrap_or_else(|e| panic!("publish {id}: {e}"));
                    attempts.lock().expect("attempts").push(Attempt {
                        at: started,
                        latency: started.elapsed(),
                        ack: (reply["type"] == "ack").then(|| position(&reply)).flatten(),
                        code: reply["code"].as_str().map(str::to_owned),
                    });
                    if id.is_multiple_of(5) {
                        id += 1;
                        let pong = publisher
                            .request(&json!({"type":"ping","id":id}), id, PROMPT, &mut other)
                            .await
                            .unwrap_or_else(|e| panic!("ping {id}: {e}"));
                        assert_eq!(pong["type"], "pong");
                    }
                    // The pace of the load: ten publishes a second.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        Self {
            attempts,
            received,
            stop,
            publisher,
            subscriber,
        }
    }

    /// Waits until `n` publishes matching `epoch` (any if `None`) were acknowledged,
    /// and the subscriber has received `n` messages.
    pub(super) async fn until_acked(&self, n: usize, epoch: Option<&str>) {
        eventually(
            &format!("{n} acknowledged publishes (epoch {epoch:?})"),
            || async {
                let acked = self
                    .attempts
                    .lock()
                    .expect("attempts")
                    .iter()
                    .filter_map(|a| a.ack.as_ref())
                    .filter(|(e, _)| epoch.is_none_or(|want| want == e))
                    .count();
                let received = self.received.lock().expect("received").len();
                (acked >= n && received >= n).then_some(())
            },
        )
        .await;
    }

    /// Stops the publisher, publishes [`END`] over HTTP and waits for the subscriber
    /// to receive it (delivery follows offset order, so everything before it has
    /// arrived); returns the attempts, what the subscriber received, the subscriber,
    /// and the end marker's position.
    pub(super) async fn finish(
        self,
        bc: &Service,
    ) -> (Vec<Attempt>, Vec<Value>, Client, (String, u64)) {
        self.stop.store(true, Ordering::Relaxed);
        within("the publisher", self.publisher)
            .await
            .expect("publisher");
        let (status, body) = http_json(
            Method::POST,
            &format!("{}/v1/publish", bc.http()),
            Some(API_KEY),
            Some(json!({"channel":"news","message":END})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let sub = within("the subscriber to receive the end", self.subscriber)
            .await
            .expect("subscriber");
        let attempts = self.attempts.lock().expect("attempts").clone();
        let received = self.received.lock().expect("received").clone();
        (
            attempts,
            received,
            sub,
            position(&body).expect("end position"),
        )
    }
}

/// Every WebSocket reply was prompt, and the only error was the temporary one, which
/// every attempt during the outage got.
pub(super) fn replies_were_prompt_and_only_unavailable(
    attempts: &[Attempt],
    killed: Instant,
    restarting: Instant,
) {
    let slowest = attempts.iter().map(|a| a.latency).max().unwrap_or_default();
    assert!(slowest < PROMPT, "slowest reply {slowest:?}");
    eprintln!(
        "outage: {} publish attempts, slowest reply {slowest:?}",
        attempts.len()
    );
    for a in attempts {
        if let Some(code) = &a.code {
            assert_eq!(code, "unavailable", "{a:?}");
        }
    }
    // The outage ends when the restart begins: while `restart` waits for Redis to
    // answer, the gateway may already reconnect and acknowledge publishes.
    let during: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| a.at > killed + Duration::from_millis(200) && a.at + a.latency < restarting)
        .collect();
    assert!(
        during.len() >= 5,
        "the publisher kept trying during the outage: {during:?}"
    );
    assert!(
        during
            .iter()
            .all(|a| a.code.as_deref() == Some("unavailable")),
        "{during:?}"
    );
}

/// Everything acknowledged after the restart (`acked_after`, the new epoch) was
/// delivered live, in order, and is recoverable by offset; everything acknowledged
/// well before the kill was delivered too (Redis restarts empty, so what was in
/// flight at the kill is all a restart can take).
pub(super) async fn nothing_acknowledged_is_lost(
    gw: &Service,
    t: &str,
    attempts: &[Attempt],
    received: &[Value],
    acked_after: &BTreeSet<(String, u64)>,
    new_epoch: &str,
    killed: Instant,
) {
    let seen: Vec<(String, u64)> = received.iter().filter_map(position).collect();
    let seen_set: BTreeSet<(String, u64)> = seen.iter().cloned().collect();
    assert!(acked_after.len() > 5, "{acked_after:?}");
    let missing: Vec<_> = acked_after.difference(&seen_set).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not delivered: {missing:?}"
    );
    let new_offsets: Vec<u64> = seen
        .iter()
        .filter(|(e, _)| *e == new_epoch)
        .map(|(_, o)| *o)
        .collect();
    assert!(
        new_offsets.windows(2).all(|w| w[1] == w[0] + 1),
        "in order, no gaps: {new_offsets:?}"
    );
    for a in attempts
        .iter()
        .filter(|a| a.at + a.latency + Duration::from_millis(300) < killed)
    {
        let ack = a.ack.clone().expect("acknowledged before the outage");
        assert!(
            seen_set.contains(&ack),
            "acknowledged before the kill, never delivered: {a:?}"
        );
    }
    // A client recovering from the new epoch's start gets every one of them.
    let (mut late, _) = Ws::auth(gw, t, &[]).await;
    late.send(json!({"type":"subscribe","channel":"news","id":"r","since":{"offset":0,"epoch":new_epoch}}))
        .await;
    let mut replayed = BTreeSet::new();
    let done = loop {
        let v = late.recv().await;
        match v["type"].as_str() {
            Some("message") => {
                replayed.insert(position(&v).expect("position"));
            }
            Some("subscribed") => break v,
            _ => panic!("unexpected {v}"),
        }
    };
    assert_eq!(done["recovered"], true, "{done}");
    let missing: Vec<_> = acked_after.difference(&replayed).collect();
    assert!(missing.is_empty(), "not recoverable by offset: {missing:?}");
}
