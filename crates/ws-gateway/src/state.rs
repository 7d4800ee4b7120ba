//! What every connection task and handshake shares: the gateway's [`State`],
//! built once per gateway, and the queues its background tasks drain.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use herald_common::engine::Engine;
use herald_common::jwt::{AuthError, Verifier};
use herald_common::keys::Keys;
use herald_common::presence::{Change, Presence};
use herald_common::publish::Publisher;
use herald_common::runtime::Runtime;
use herald_common::store;
use herald_proto::claims::Claims;
use herald_proto::node::{LimitKind, RateLimitEvent};
use herald_proto::presence::EventKind;
use herald_proto::time::now_ms;

use crate::config::{Config, Settings};
use crate::hub::{self, Hub};
use crate::limits::IpLimiter;
use crate::members;
use crate::metrics::Metrics;
use crate::presence;
use crate::proxy::Proxy;
use crate::webhooks::Webhooks;

/// Everything connection tasks and handlers share.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) settings: Settings,
    pub(crate) node_id: String,
    pub(crate) leeway: Duration,
    pub(crate) hub: Arc<Hub>,
    pub(crate) verifier: Verifier,
    pub(crate) publisher: Publisher,
    pub(crate) engine: Engine,
    /// Whether Redis answered the last request; `/readyz` follows it.
    pub(crate) health: herald_common::store::Health,
    pub(crate) keys: Keys,
    pub(crate) metrics: Metrics,
    pub(crate) ips: Arc<IpLimiter>,
    pub(crate) ip_release: mpsc::UnboundedSender<IpAddr>,
    pub(crate) presence: mpsc::UnboundedSender<presence::Event>,
    /// Channel presence: reads here, joins and leaves through the members writer.
    pub(crate) members: Presence,
    pub(crate) member_changes: mpsc::UnboundedSender<members::Op>,
    /// The webhook events this node records.
    pub(crate) webhooks: Arc<Webhooks>,
    /// The application's hooks.
    pub(crate) proxy: Proxy,
    pub(crate) tracker: TaskTracker,
    /// Cancelled when the gateway stops accepting; each connection holds a child.
    pub(crate) shutdown: CancellationToken,
    pub(crate) next_key: AtomicU64,
    /// Whether Origin checks are relaxed (HERALD_DEV=1 without an allow-list).
    pub(crate) any_origin: bool,
    /// One clock for every connection's rate limiter: creating one per connection
    /// (governor's default) re-reads CPU identification each time.
    pub(crate) clock: governor::clock::DefaultClock,
}

/// The receiving ends of the queues [`State`] feeds, for the tasks that drain them.
pub(crate) struct Queues {
    /// Subscribe/unsubscribe requests for the Pub/Sub driver.
    pub(crate) cmds: mpsc::UnboundedReceiver<hub::Cmd>,
    /// Connection changes for the presence writer.
    pub(crate) presence: mpsc::UnboundedReceiver<presence::Event>,
    /// Per-IP slots to give back in Redis.
    pub(crate) ip_release: mpsc::UnboundedReceiver<IpAddr>,
    /// Joins and leaves for the members writer.
    pub(crate) member_changes: mpsc::UnboundedReceiver<members::Op>,
    /// Webhook events for their writer.
    pub(crate) webhook_events: mpsc::UnboundedReceiver<herald_proto::webhook::Event>,
}

impl State {
    /// The shared state of a gateway with these settings on `rt`'s node and engine.
    pub(crate) fn new(
        config: &Config,
        settings: Settings,
        rt: &Runtime,
        metrics: Metrics,
    ) -> (Arc<Self>, Queues) {
        let keys = rt.keys().clone();
        let (cmd_tx, cmds) = mpsc::unbounded_channel();
        let hub = Arc::new(Hub::new(
            cmd_tx,
            metrics.clone(),
            settings.queue_bytes,
            settings.queue_frames,
        ));
        let ips = Arc::new(IpLimiter::new(
            keys.clone(),
            rt.node_id().to_owned(),
            settings.max_conns_per_ip,
            settings.connect_rate_per_ip,
        ));
        let (presence_tx, presence) = mpsc::unbounded_channel();
        let (ip_tx, ip_release) = mpsc::unbounded_channel();
        let (member_tx, member_changes) = mpsc::unbounded_channel();
        let (webhooks, webhook_events) = Webhooks::new(
            &settings.webhook_events,
            settings.webhook_publish_channels.clone(),
        );
        let state = Self {
            leeway: Duration::from_secs(config.jwt.jwt_leeway_s.min(300)),
            node_id: rt.node_id().to_owned(),
            hub,
            verifier: Verifier::from_config(&config.jwt, settings.alg, settings.secret.as_deref()),
            publisher: Publisher::new(rt.engine().clone(), keys.clone(), settings.history),
            engine: rt.engine().clone(),
            health: rt.health().clone(),
            members: Presence::new(rt.engine().clone(), keys.clone()),
            keys,
            proxy: Proxy::new(&settings, metrics.clone()),
            metrics,
            ips,
            ip_release: ip_tx,
            presence: presence_tx,
            member_changes: member_tx,
            webhooks: Arc::new(webhooks),
            tracker: TaskTracker::new(),
            shutdown: rt.draining(),
            next_key: AtomicU64::new(1),
            any_origin: settings.allowed_origins.is_empty() && settings.dev,
            clock: governor::clock::DefaultClock::default(),
            settings,
        };
        let queues = Queues {
            cmds,
            presence,
            ip_release,
            member_changes,
            webhook_events,
        };
        (Arc::new(state), queues)
    }

    /// Verifies a token and refuses revoked ones.
    pub(crate) async fn authenticate(&self, token: &str) -> Result<Claims, AuthError> {
        let claims = self.verifier.verify(token).await?;
        if let Some(jti) = &claims.jti {
            match self.engine.is_revoked(&self.keys, jti).await {
                Ok(true) => return Err(AuthError::Revoked),
                Ok(false) => {}
                // Fail open: an outage must not lock every client out; revocations
                // still close connections through the control channel.
                Err(e) => {
                    self.metrics.redis_errors.inc();
                    self.health.failed(&e);
                }
            }
        }
        Ok(claims)
    }

    /// Queues a join or leave of `conn` (as `member`) in `channel` for the members
    /// writer.
    pub(crate) fn member_change(
        &self,
        conn: &hub::ConnShared,
        channel: &str,
        member: Arc<str>,
        kind: EventKind,
    ) {
        let _ = self.member_changes.send(members::Op::Change(Change {
            channel: Arc::from(channel),
            conn_id: Arc::from(conn.conn_id.as_str()),
            member,
            kind,
        }));
    }

    /// Resolves once every join and leave queued before it was written (or failed
    /// to be), so a presence read sees its own connection's changes.
    pub(crate) fn members_written(&self) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = self.member_changes.send(members::Op::Barrier(tx));
        rx
    }

    /// Records a limit hit for the monitor (`herald:ratelimit`), off the caller's
    /// path: on the connection tracker, so shutdown waits for it.
    pub(crate) fn report_ratelimit(&self, who: &str, kind: LimitKind) {
        let (engine, keys) = (self.engine.clone(), self.keys.clone());
        let errors = self.metrics.redis_errors.clone();
        let event = RateLimitEvent {
            who: who.to_owned(),
            kind,
            node: self.node_id.clone(),
            at_ms: now_ms(),
        };
        self.tracker.spawn(async move {
            if store::record_ratelimit(&engine, &keys, &event)
                .await
                .is_err()
            {
                errors.inc();
            }
        });
    }
}
