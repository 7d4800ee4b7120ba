//! auth-svc: Herald's token service. Users log in with a password and get a
//! short-lived access token (HS256 or EdDSA) plus a rotating refresh token;
//! admins manage users and revoke tokens; gateways fetch the public keys from
//! the JWKS endpoint. All state lives in Redis, so instances are interchangeable.
//!
//! # Layout
//! - [`config`]: settings, subcommands and their checks.
//! - [`users`]: the user store (Redis HASH per user) and its validation rules.
//! - [`password`]: Argon2id hashing, bounded and off the async threads.
//! - [`signing`]: the HS256 secret or the Ed25519 key ring shared through Redis; JWKS.
//! - [`tokens`]: the claims of issued access tokens.
//! - [`refresh`]: refresh-token families, rotation and reuse detection.
//! - [`throttle`]: failed-login counting per username and per IP.
//! - [`metrics`]: the Prometheus registry.
//! - [`cli`]: the operator subcommands (`user`, `token`, `keys`).
//! - `api`: the HTTP handlers.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use redis::aio::ConnectionManager;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use herald_common::http::Ops;
use herald_common::jwt::Alg;
use herald_common::keys::Keys;
use herald_common::node::{StatsFn, run_heartbeat};
use herald_common::serve::serve;
use herald_common::store;
use herald_proto::node::NodeInfo;
use herald_proto::time::now_ms;

use crate::metrics::Metrics;

mod api;
pub mod cli;
pub mod config;
pub mod metrics;
pub mod password;
pub mod refresh;
pub mod signing;
pub mod throttle;
pub mod tokens;
pub mod users;

pub use config::{Cli, Config};

/// The service name in heartbeats and logs.
pub const SERVICE: &str = "auth-svc";
/// How long background tasks get to finish (deregistration included) at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    let settings = config.settings(&mut problems);
    if !problems.is_empty() {
        anyhow::bail!("invalid configuration: {}", problems.join("; "));
    }
    let (_client, mut conn) = store::connect(&config.common.redis_url).await?;
    let keys = Keys::new(config.common.redis_prefix.clone());
    let (signer, key_store) = signer(&config, &settings, &mut conn, &keys).await?;
    let metrics = Metrics::new().context("cannot register metrics")?;
    if let Some(ring) = signer.current_ring() {
        metrics
            .signing_keys
            .set(i64::try_from(ring.keys.len()).unwrap_or(i64::MAX));
        tracing::info!(kid = %ring.current.kid, keys = ring.keys.len(), "signing with EdDSA");
    }
    let passwords = password::Passwords::new()
        .await
        .context("cannot prepare password hashing")?;
    let node_id = config.common.node_id(SERVICE);
    let local = listener.local_addr()?;

    let health = store::Health::new();
    let ops = Ops {
        registry: metrics.registry.clone(),
        // The signing keys are loaded by now; Redis decides the rest.
        ready: Arc::new(AtomicBool::new(true)),
        redis: health.clone(),
    };
    let limits = throttle::Limits {
        per_user: config.login_max_failures_per_user,
        per_ip: config.login_max_failures_per_ip,
        window: Duration::from_secs(config.login_window_s),
    };
    let state = api::AppState(Arc::new(api::Inner {
        conn: conn.clone(),
        keys: keys.clone(),
        jwt: config.jwt.clone(),
        admin_key: config.admin_key.clone(),
        access_ttl_s: config.access_token_ttl_s,
        min_password_len: config.min_password_length,
        signer,
        key_store,
        users: users::UserStore::new(keys.clone()),
        refresh: refresh::RefreshStore::new(keys.clone(), config.refresh_token_ttl_s),
        throttle: throttle::Throttle::new(keys.clone(), limits),
        passwords,
        metrics,
        node_id: node_id.clone(),
        health: health.clone(),
    }));
    if config.admin_key.is_none() {
        tracing::warn!("HERALD_ADMIN_KEY is not set: the admin endpoints refuse every request");
    }

    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let base = NodeInfo {
        id: node_id.clone(),
        service: SERVICE.to_owned(),
        address: config.common.advertise(local),
        version: herald_common::VERSION.to_owned(),
        started_ms: now_ms(),
        ..NodeInfo::default()
    };
    let stats: StatsFn = {
        let health = health.clone();
        Arc::new(move |info: &mut NodeInfo| info.ready = health.is_up())
    };
    tracker.spawn(run_heartbeat(
        conn.clone(),
        keys,
        base,
        stats,
        health,
        token.child_token(),
    ));
    tracker.spawn(api::reload_keys(state.clone(), token.child_token()));

    // The admin listener is optional and named by the same configuration, so it is
    // bound here rather than by the caller.
    let admin_listener = match &config.admin_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (HERALD_ADMIN_LISTEN)"))?,
        ),
        None => None,
    };
    let origins: Vec<String> = config
        .allowed_origins
        .iter()
        .map(|o| o.trim().trim_end_matches('/').to_owned())
        .filter(|o| !o.is_empty())
        .collect();
    let origins = if origins.is_empty() && config.common.dev {
        api::Origins::Any
    } else {
        api::Origins::List(origins)
    };
    let (app, admin_app) = api::router(state, ops, admin_listener.is_some(), origins);
    tracing::info!(node = %node_id, addr = %local, "auth-svc serving");
    let stop = token.clone();
    let limits = config.http.limits();
    if let (Some(l), Some(admin_app)) = (admin_listener, admin_app) {
        tracing::info!(addr = %l.local_addr()?, "auth-svc admin endpoints listening");
        let stop = token.clone();
        tracker.spawn(serve(l, admin_app, limits, stop.cancelled_owned()));
    }
    serve(listener, app, limits, async move {
        shutdown.await;
        stop.cancel();
    })
    .await;
    herald_common::shutdown::stop_tasks(&token, &tracker, SHUTDOWN_GRACE).await;
    Ok(())
}

/// The signer the settings ask for; in EdDSA mode, makes sure Redis holds a
/// current key (the configured one, or a generated one) and loads the ring.
pub async fn signer(
    config: &Config,
    settings: &config::Settings,
    conn: &mut ConnectionManager,
    keys: &Keys,
) -> anyhow::Result<(signing::Signer, Option<signing::KeyStore>)> {
    match settings.alg {
        Alg::Hs256 => {
            let secret = settings
                .secret
                .as_deref()
                .context("HS256 needs HERALD_JWT_SECRET")?;
            Ok((signing::Signer::secret(secret), None))
        }
        Alg::EdDsa => {
            let store = signing::KeyStore::new(
                keys,
                config.key_retention_ms(),
                config.jwt.jwt_leeway_s * 1000,
            );
            store
                .ensure(conn, settings.key_file.as_deref())
                .await
                .context("cannot install the signing key")?;
            let ring = store
                .load(conn, None)
                .await
                .context("cannot load the signing keys")?;
            Ok((signing::Signer::ring(ring), Some(store)))
        }
        Alg::Rs256 => anyhow::bail!("RS256 is not supported by auth-svc"),
    }
}
