//! Herald's monitor: aggregates every node's heartbeat and stats from the engine
//! (Redis, or the in-memory engine of an all-in-one process), probes each node's
//! `/healthz`, and serves the cluster view (JSON and a live Server-Sent Events
//! stream) and the admin actions of docs/protocol.md.
//!
//! # Layout
//! - [`config`]: flags and `HERALD_*` settings.
//! - `sample`: the pure part: node status, rates from counter deltas, the overview.
//! - `sampler`: the background reads from the engine, pruning of dead nodes, health probes.
//! - `api`: the `/api/v1` handlers, served from the latest sample.
//! - `metrics`: the Prometheus registry's contents.
//!
//! # Readings the protocol leaves open
//! - Rates are counter deltas between two of a node's beats, over the time between
//!   those beats (the node's own clock); reading the same beat twice keeps the last rate.
//!   Only `up` nodes report a non-zero rate.
//! - Totals of connections, subscriptions, channels and rates count live (up or
//!   stale) nodes only; `ratelimit_hits` sums every listed node's cumulative counter.
//! - A channel's `messages_per_sec` is the highest rate any gateway reports for it
//!   (each gateway with subscribers carries every message of the channel once);
//!   its `subscribers` are summed across gateways.
//! - `ratelimit.by_kind` and `hits_total` count the rate-limit events (on Redis,
//!   the `herald:ratelimit` stream entries) this monitor has read (the retained
//!   tail at start, then every new one).
//! - `webhooks` is there when the cluster has a webhook queue or delivery stats
//!   (`herald:webhooks`, `herald:webhooks:stats`): `queued` is the delivery group's
//!   lag plus its pending entries (the stream's length before any broadcaster
//!   delivered), `delivered` and `failed` the broadcasters' counters, `failing`
//!   whether the last POST failed.
//! - `redis_cluster` is there on a Redis Cluster: its shards as the node the
//!   cluster connection picks reports them (`CLUSTER NODES`). A primary is up
//!   while that node does not mark it failing (`fail` or `fail?`), and
//!   `slots_covered` counts the slots of the primaries that are up. It is read
//!   every round, also when the rest cannot be (the overview is then `stale`, its
//!   topology current), and left out when it cannot be read.
//! - Extra fields: `stale` and `generated_ms` in the overview, `ready`,
//!   `started_at`, `channels`, `probe_ok`, `probe_latency_ms` per node, and
//!   `truncated` in a connections page whose filtered count stopped at its budget.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;

use herald_common::engine::Engine;
use herald_common::http::{ApiError, KeyKind, RequiredKey, layers};
use herald_common::runtime::Runtime;
use herald_proto::node::NodeInfo;

mod api;
pub mod config;
mod metrics;
mod sample;
mod sampler;

pub use config::{Config, Settings};

/// The service name nodes are listed under.
pub const SERVICE: &str = "monitor";
/// How long background tasks get to finish (the heartbeat deregisters) at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Runs on `engine`, or without one connects to the configured Redis; then
/// serves on `listener` until `shutdown` resolves; then ends open streams,
/// deregisters this node and returns.
pub async fn run(
    listener: TcpListener,
    config: Config,
    engine: Option<Engine>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let settings = config.validate()?;
    let registry = prometheus::Registry::new();
    let metrics = metrics::Metrics::new(&registry).context("cannot register metrics")?;
    let rt = Runtime::start(
        SERVICE,
        &config.common,
        registry.clone(),
        SHUTDOWN_GRACE,
        engine,
    )
    .await?;
    let (engine, keys) = (rt.engine().clone(), rt.keys().clone());
    if engine.is_cluster() {
        metrics
            .register_redis_cluster(&registry)
            .context("cannot register metrics")?;
    }
    let admin = RequiredKey::new(KeyKind::Admin, settings.admin_key.as_deref());
    if !admin.is_set() {
        tracing::warn!("HERALD_ADMIN_KEY is not set: admin actions refuse every request");
    }

    // One round before serving, so the first request already sees the cluster.
    let shared = Arc::new(sampler::Shared::new());
    let ready = rt.readiness().gate();
    let mut sampler = sampler::Sampler::new(
        engine.clone(),
        keys.clone(),
        shared.clone(),
        metrics.clone(),
        ready,
    );
    sampler.round().await;
    rt.spawn(sampler.run(rt.token()));
    let probe_client = reqwest::Client::builder()
        .timeout(sampler::PROBE_TIMEOUT)
        .no_proxy()
        .build()
        .context("cannot build the probe client")?;
    rt.spawn(sampler::run_prober(
        shared.clone(),
        probe_client,
        metrics.clone(),
        settings.probe_interval,
        rt.token(),
    ));
    let clients = metrics.stream_clients.clone();
    let address = config.common.advertise(listener.local_addr()?);
    rt.heartbeat(address, move |info: &mut NodeInfo| {
        info.connections = u64::try_from(clients.get()).unwrap_or(0);
    });

    let state = api::AppState(Arc::new(api::Inner {
        shared,
        engine,
        keys,
        admin,
        metrics,
        // Ends the streams, which would otherwise hold the drain open forever.
        token: rt.draining(),
    }));
    let routers = (api::routes(state.clone()), api::admin_routes(state));
    let finish =
        |r: axum::Router| layers(r.fallback(|| async { ApiError::not_found("no such endpoint") }));
    let limits = config.http.limits();
    rt.serve_with_admin(
        listener,
        settings.admin_listen,
        routers,
        finish,
        limits,
        shutdown,
    )
    .await?;
    rt.stop().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser as _;
    use herald_common::engine::Engine;
    use herald_common::keys::Keys;
    use herald_common::node::NODE_TTL_MS;
    use herald_proto::control::Control;
    use herald_proto::monitor::{ChannelsPage, ConnectionsPage, Overview, Status};
    use herald_proto::node::{ChannelStat, ConnInfo, LimitKind, NodeInfo, RateLimitEvent};
    use herald_proto::time::now_ms;
    use tokio::net::TcpListener;

    use super::*;

    const PRESENCE_TTL_MS: u64 = 60_000;

    fn conn(id: &str, user: &str, channel: &str) -> ConnInfo {
        ConnInfo {
            conn_id: id.to_owned(),
            user: user.to_owned(),
            ip: "10.0.0.1".to_owned(),
            node: "gw-1".to_owned(),
            channels: vec![channel.to_owned()],
            connected_ms: now_ms(),
            ..ConnInfo::default()
        }
    }

    async fn get<T: serde::de::DeserializeOwned>(client: &reqwest::Client, url: String) -> T {
        let r = client.get(&url).send().await.unwrap();
        assert!(r.status().is_success(), "{url}: {}", r.status());
        r.json().await.unwrap()
    }

    /// The whole service on the memory engine: what a fake gateway wrote there is
    /// in the overview, the channel list and the connections listing, a node
    /// gone for too long is pruned, and an admin action reaches the control channel.
    #[tokio::test]
    async fn serves_the_memory_engine() {
        let engine = Engine::memory();
        let m = engine.as_memory().unwrap().clone();
        m.beat(
            &NodeInfo {
                id: "gw-1".to_owned(),
                service: "ws-gateway".to_owned(),
                beat_ms: now_ms(),
                ready: true,
                connections: 2,
                ..NodeInfo::default()
            },
            NODE_TTL_MS,
        );
        m.set_connection(
            "gw-1",
            "c1",
            Some(conn("c1", "alice", "news")),
            PRESENCE_TTL_MS,
        );
        m.set_connection(
            "gw-1",
            "c2",
            Some(conn("c2", "bob", "sports")),
            PRESENCE_TTL_MS,
        );
        let stat = ChannelStat {
            subscribers: 1,
            messages: 3,
        };
        m.set_channel("gw-1", "news", Some(stat), PRESENCE_TTL_MS);
        // Silent for longer than the retention: the first round drops it.
        let old = now_ms() - sample::DOWN_RETENTION_MS - 60_000;
        m.beat(
            &NodeInfo {
                id: "gw-old".to_owned(),
                service: "ws-gateway".to_owned(),
                beat_ms: old,
                ..NodeInfo::default()
            },
            NODE_TTL_MS,
        );
        m.set_connection(
            "gw-old",
            "c9",
            Some(conn("c9", "carol", "news")),
            PRESENCE_TTL_MS,
        );
        let hit = RateLimitEvent {
            who: "alice".to_owned(),
            kind: LimitKind::Message,
            node: "gw-1".to_owned(),
            at_ms: now_ms(),
        };
        m.record_ratelimit(&hit, 1000);

        let config = Config::try_parse_from(["monitor", "--admin-key", "secret"]).unwrap();
        let keys = Keys::new(config.common.redis_prefix.clone());
        let mut control = engine.subscriber().await.unwrap();
        control.sink.subscribe(&[keys.control()]).await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/api/v1", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(run(listener, config, Some(engine.clone()), async {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::builder().no_proxy().build().unwrap();

        // One round runs before serving: the first answer already has the cluster.
        let overview: Overview = get(&client, format!("{base}/overview")).await;
        let gw = overview.nodes.iter().find(|n| n.id == "gw-1").unwrap();
        assert_eq!((gw.status, gw.connections), (Status::Up, 2));
        assert!(overview.nodes.iter().all(|n| n.id != "gw-old"));
        assert!(m.nodes().iter().all(|(id, _)| id != "gw-old"));
        assert!(m.connections("gw-old").is_empty());
        assert_eq!(overview.top_channels[0].channel, "news");
        assert_eq!(overview.top_channels[0].subscribers, 1);
        assert_eq!(overview.ratelimit.hits_total, 1);
        assert_eq!(overview.ratelimit.by_kind[&LimitKind::Message], 1);

        let channels: ChannelsPage = get(&client, format!("{base}/channels?prefix=ne")).await;
        assert_eq!(channels.total, 1);

        let all: ConnectionsPage = get(&client, format!("{base}/connections")).await;
        let ids: Vec<&str> = all
            .connections
            .iter()
            .map(|c| c.info.conn_id.as_str())
            .collect();
        assert_eq!((ids, all.total), (vec!["c1", "c2"], 2));
        // One row of two: the total is the count, not the page.
        let one: ConnectionsPage = get(&client, format!("{base}/connections?limit=1")).await;
        assert_eq!((one.connections.len(), one.total), (1, 2));
        let second: ConnectionsPage =
            get(&client, format!("{base}/connections?limit=1&offset=1")).await;
        assert_eq!(second.connections[0].info.conn_id, "c2");
        let bob: ConnectionsPage = get(
            &client,
            format!("{base}/connections?node=gw-1&channel=sports"),
        )
        .await;
        assert_eq!(bob.total, 1);
        assert_eq!(bob.connections[0].info.user, "bob");

        // A new hit is counted by a later round.
        m.record_ratelimit(&hit, 1000);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let o: Overview = get(&client, format!("{base}/overview")).await;
            if o.ratelimit.hits_total == 2 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the new hit was not read"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        let r = client
            .post(format!("{base}/users/alice/disconnect"))
            .bearer_auth("secret")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::ACCEPTED);
        let msg = tokio::time::timeout(Duration::from_secs(5), control.stream.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(msg.channel(), keys.control());
        let sent: Control = serde_json::from_slice(msg.payload()).unwrap();
        assert_eq!(
            sent,
            Control::DisconnectUser {
                user_id: "alice".to_owned()
            }
        );

        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        // A graceful stop deregisters the monitor itself.
        assert!(m.nodes().iter().all(|(id, _)| id == "gw-1"));
    }
}
