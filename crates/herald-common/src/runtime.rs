//! The skeleton every service runs in: its node identity and heartbeat, its
//! readiness, the ops routes, the HTTP listeners, and one cancellation tree with
//! one task tracker for everything it starts in the background.
//!
//! A service's `run` builds a [`Runtime`], spawns its background tasks on it,
//! serves its router with [`Runtime::serve`] until the shutdown future resolves,
//! then calls [`Runtime::stop`]. The order at shutdown is the same everywhere:
//! 1. the shutdown future resolves: [`Runtime::draining`] is cancelled, so the
//!    listeners stop accepting and long-lived responses (streams, WebSockets) end;
//! 2. requests in flight finish (bounded by the HTTP drain timeout);
//! 3. [`Runtime::stop`] cancels the background tasks (the heartbeat deregisters the
//!    node) and waits for them, for at most the grace period.

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use herald_proto::node::NodeInfo;
use herald_proto::time::now_ms;

use crate::config::CommonConfig;
use crate::engine::Engine;
use crate::http::{Ops, ops_routes};
use crate::keys::Keys;
use crate::node;
use crate::serve::{Limits, serve};
use crate::store::Health;

/// Pending connections the kernel queues for `accept`. tokio's default (1024)
/// overflows when thousands of clients reconnect at once (a gateway restart, a
/// network blip), and each dropped SYN costs that client a one-second
/// retransmission timeout. The kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 8192;

// === Readiness ===

/// Whether a service's own dependencies are usable: ready when every [`Gate`]
/// taken from it is met (a service without gates is ready at once). `/readyz` and
/// the heartbeat's `ready` read it; [`Readiness::changed`] lets code wait for it.
#[derive(Debug, Clone)]
pub struct Readiness {
    /// How many gates are not met.
    unmet: Arc<watch::Sender<usize>>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self {
            unmet: Arc::new(watch::Sender::new(0)),
        }
    }
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    /// A new condition of readiness, not met until [`Gate::set`] says so.
    pub fn gate(&self) -> Gate {
        self.unmet.send_modify(|n| *n += 1);
        Gate(Arc::new(GateInner {
            readiness: self.clone(),
            met: AtomicBool::new(false),
        }))
    }

    pub fn is_ready(&self) -> bool {
        *self.unmet.borrow() == 0
    }

    /// Resolves once the service is ready.
    pub async fn changed(&self) {
        let mut rx = self.unmet.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

/// One condition of a [`Readiness`].
#[derive(Debug, Clone)]
pub struct Gate(Arc<GateInner>);

#[derive(Debug)]
struct GateInner {
    readiness: Readiness,
    met: AtomicBool,
}

impl Gate {
    /// Records whether this condition holds now.
    pub fn set(&self, met: bool) {
        if self.0.met.swap(met, Ordering::AcqRel) == met {
            return;
        }
        self.0.readiness.unmet.send_modify(|n| {
            if met {
                *n -= 1;
            } else {
                *n += 1;
            }
        });
    }

    pub fn is_met(&self) -> bool {
        self.0.met.load(Ordering::Acquire)
    }
}

// === Runtime ===

/// One service process's skeleton: see the module docs.
#[derive(Debug)]
pub struct Runtime {
    service: &'static str,
    node_id: String,
    /// Where the cluster's shared state lives.
    engine: Engine,
    keys: Keys,
    registry: prometheus::Registry,
    readiness: Readiness,
    health: Health,
    /// Cancelled by [`Runtime::stop`]: every background task watches it.
    token: CancellationToken,
    /// A child of `token`, cancelled as soon as the shutdown future resolves.
    draining: CancellationToken,
    tracker: TaskTracker,
    grace: Duration,
}

impl Runtime {
    /// The skeleton of `service` on `engine`, or without one on the Redis of
    /// `common` (failing fast, with one clear error, when it is unreachable).
    pub async fn start(
        service: &'static str,
        common: &CommonConfig,
        registry: prometheus::Registry,
        grace: Duration,
        engine: Option<Engine>,
    ) -> Result<Self, crate::store::StoreError> {
        let engine = match engine {
            Some(e) => e,
            None => Engine::connect(&common.redis_target()).await?,
        };
        Ok(Self::new(service, common, registry, grace, engine))
    }

    /// The skeleton of `service` on `engine`, with its node id chosen once, here.
    pub fn new(
        service: &'static str,
        common: &CommonConfig,
        registry: prometheus::Registry,
        grace: Duration,
        engine: Engine,
    ) -> Self {
        let token = CancellationToken::new();
        let sharded = engine.is_cluster();
        Self {
            service,
            node_id: common.node_id(service),
            engine,
            keys: Keys::new(common.redis_prefix.clone()).sharded(sharded),
            registry,
            readiness: Readiness::new(),
            health: Health::new(),
            draining: token.child_token(),
            token,
            tracker: TaskTracker::new(),
            grace,
        }
    }

    /// Where the cluster's shared state lives (cheap to clone).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The cluster's Redis key names.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn service(&self) -> &'static str {
        self.service
    }

    /// This node's id in the registry, the presence keys and the logs.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Whether Redis answered the service's last request (`/readyz` follows it;
    /// always up on the memory engine).
    pub fn health(&self) -> &Health {
        &self.health
    }

    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// Cancelled when the service stops its background tasks.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Cancelled as soon as shutdown begins: long-lived responses end on it.
    pub fn draining(&self) -> CancellationToken {
        self.draining.clone()
    }

    /// Runs `task` in the background until [`Runtime::stop`] (which waits for it).
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task);
    }

    /// The tracker [`Runtime::spawn`] uses, for tasks that spawn more tasks.
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// `/healthz`, `/readyz` and `/metrics` for this service.
    pub fn ops_routes<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        ops_routes(Ops {
            registry: self.registry.clone(),
            ready: self.readiness.clone(),
            redis: self.health.clone(),
        })
    }

    /// Starts the heartbeat that registers this node under `address`: `ready` is
    /// readiness and Redis health; `stats` fills in the service's own numbers.
    pub fn heartbeat(
        &self,
        address: String,
        stats: impl Fn(&mut NodeInfo) + Send + Sync + 'static,
    ) {
        let base = NodeInfo {
            id: self.node_id.clone(),
            service: self.service.to_owned(),
            address,
            version: crate::VERSION.to_owned(),
            started_ms: now_ms(),
            ..NodeInfo::default()
        };
        tracing::info!(node = %base.id, address = %base.address, "registering as a node");
        let (readiness, health) = (self.readiness.clone(), self.health.clone());
        let stats: node::StatsFn = Arc::new(move |info: &mut NodeInfo| {
            info.ready = readiness.is_ready() && health.is_up();
            stats(info);
        });
        self.spawn(node::run_heartbeat(
            self.engine.clone(),
            self.keys.clone(),
            base,
            stats,
            self.health.clone(),
            self.token.clone(),
        ));
    }

    /// Serves a service with admin endpoints: `public` on `listener`, and `admin`
    /// on its own listener at `admin_addr` (a private interface, bound here since
    /// the same configuration names it) or, without one, next to `public`. Both
    /// get the ops routes, and `finish` (the service's layers and fallback).
    pub async fn serve_with_admin(
        &self,
        listener: TcpListener,
        admin_addr: Option<SocketAddr>,
        (public, admin): (Router, Router),
        finish: impl Fn(Router) -> Router,
        limits: Limits,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        use anyhow::Context as _;
        let Some(addr) = admin_addr else {
            let app = finish(public.merge(admin).merge(self.ops_routes()));
            self.serve(listener, app, limits, shutdown).await;
            return Ok(());
        };
        let admin_listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (HERALD_ADMIN_LISTEN)"))?;
        tracing::info!(addr = %admin_listener.local_addr()?, "admin endpoints listening");
        self.spawn(serve(
            admin_listener,
            finish(admin.merge(self.ops_routes())),
            limits,
            self.draining.clone().cancelled_owned(),
        ));
        let app = finish(public.merge(self.ops_routes()));
        self.serve(listener, app, limits, shutdown).await;
        Ok(())
    }

    /// Serves `app` on `listener` until `shutdown` resolves, then cancels
    /// [`Runtime::draining`] and returns once the requests in flight have finished.
    pub async fn serve(
        &self,
        listener: TcpListener,
        app: Router,
        limits: Limits,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(service = self.service, node = %self.node_id, %addr, "listening");
        }
        let draining = self.draining.clone();
        let stop = async move {
            tokio::select! {
                () = shutdown => draining.cancel(),
                () = draining.cancelled() => {}
            }
        };
        // The accept loop runs on a runtime worker, not on the thread blocked in
        // `main`: each accepted connection is then spawned where it will run, with no
        // cross-thread wake-up per connection.
        let accept = self.tracker.spawn(serve(listener, app, limits, stop));
        if let Err(e) = accept.await {
            tracing::error!(cause = %e, "accept loop failed");
        }
    }

    /// Stops every background task: cancels them, then waits for them for at most
    /// the grace period, warning when some outlive it.
    pub async fn stop(self) {
        crate::shutdown::stop_tasks(&self.token, &self.tracker, self.grace).await;
        tracing::info!(service = self.service, "stopped");
    }
}

// === The binaries ===

/// Binds `addr` the way every service listens: address reuse and a deep backlog.
pub fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context as _;
    let bound = (|| {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    })();
    // Logged by `Runtime::serve` once the service is up: a service that cannot
    // start (Redis unreachable) says only why.
    bound.with_context(|| format!("cannot listen on {addr}"))
}

/// The exit code of a binary whose service returned `result`: failures print one
/// line (the whole cause chain) for operators and scripts.
pub fn exit_code(service: &str, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{service}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_when_every_gate_is_met() {
        let r = Readiness::new();
        assert!(r.is_ready());
        let (a, b) = (r.gate(), r.gate());
        assert!(!r.is_ready());
        a.set(true);
        a.set(true);
        assert!(!r.is_ready());
        b.set(true);
        assert!(r.is_ready());
        r.changed().await;
        b.set(false);
        assert!(!r.is_ready());
        b.clone().set(true);
        assert!(r.is_ready() && b.is_met());
    }
}
