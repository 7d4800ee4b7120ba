//! auth-svc: Herald's token service. Users log in with a password and get a
//! short-lived access token (HS256 or EdDSA) plus a rotating refresh token;
//! admins manage users and revoke tokens; gateways fetch the public keys from
//! the JWKS endpoint. All state lives in the engine: on Redis, so instances are
//! interchangeable; on the memory engine, in the process (see [`store`]).
//!
//! # Layout
//! - [`config`]: settings, subcommands and their checks.
//! - [`store`]: where the records below live (Redis or memory); revocation.
//! - [`users`]: the user store (a Redis HASH per user) and its validation rules.
//! - [`password`]: Argon2id hashing, bounded and off the async threads.
//! - [`signing`]: the HS256 secret or the shared Ed25519 key ring; JWKS.
//! - [`tokens`]: the claims of issued access tokens.
//! - [`refresh`]: refresh-token families, rotation and reuse detection.
//! - [`throttle`]: failed-login counting per username and per IP.
//! - [`metrics`]: the Prometheus registry.
//! - [`cli`]: the operator subcommands (`user`, `token`, `keys`).
//! - `api`: the HTTP handlers.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use herald_common::engine::Engine;
use herald_common::http::{KeyKind, RequiredKey};
use herald_common::jwt::Alg;
use herald_common::keys::Keys;
use herald_common::runtime::Runtime;

use crate::metrics::Metrics;
use crate::store::AuthStore;

mod api;
pub mod cli;
pub mod config;
pub mod metrics;
pub mod password;
pub mod refresh;
pub mod signing;
pub mod store;
pub mod throttle;
pub mod tokens;
pub mod users;

pub use config::{Cli, Config, Settings};

/// The service name in heartbeats and logs.
pub const SERVICE: &str = "auth-svc";
/// How long background tasks get to finish (deregistration included) at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Runs on `engine` (without one, connects to the configured Redis), loads the
/// signing keys, then serves the API on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: Config,
    engine: Option<Engine>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let settings = config.validate()?;
    let metrics = Metrics::new().context("cannot register metrics")?;
    let registry = metrics.registry.clone();
    let rt = Runtime::start(SERVICE, &config.common, registry, SHUTDOWN_GRACE, engine).await?;
    let (engine, keys) = (rt.engine().clone(), rt.keys().clone());
    // Once per run: on the memory engine, every handler shares these twins.
    let store = AuthStore::on(&engine);
    if store.is_memory() {
        tracing::info!(
            "users, refresh tokens and signing keys live in this process: a restart forgets them"
        );
    }
    // The signing keys are loaded before serving, so no readiness gate: the
    // engine decides.
    let (signer, key_store) = signer(&config, &settings, &store, &keys).await?;
    if let Some(ring) = signer.current_ring() {
        metrics
            .signing_keys
            .set(i64::try_from(ring.keys.len()).unwrap_or(i64::MAX));
        tracing::info!(kid = %ring.current.kid, keys = ring.keys.len(), "signing with EdDSA");
    }
    config
        .jwt
        .warn_if_dev_secret(settings.alg, config.common.dev);
    let admin = RequiredKey::new(KeyKind::Admin, config.admin_key.as_deref())
        .counting(metrics.auth_failures.with_label_values(&["admin_key"]));
    if !admin.is_set() {
        tracing::warn!("HERALD_ADMIN_KEY is not set: the admin endpoints refuse every request");
    }
    let limits = throttle::Limits {
        per_user: config.login_max_failures_per_user,
        per_ip: config.login_max_failures_per_ip,
        window: Duration::from_secs(config.login_window_s),
    };
    let state = api::AppState(Arc::new(api::Inner {
        engine,
        store,
        keys: keys.clone(),
        jwt: config.jwt.clone(),
        admin,
        access_ttl_s: config.access_token_ttl_s,
        min_password_len: config.min_password_length,
        signer,
        key_store,
        users: users::UserStore::new(keys.clone()),
        refresh: refresh::RefreshStore::new(keys.clone(), config.refresh_token_ttl_s),
        throttle: throttle::Throttle::new(keys.clone(), limits),
        passwords: password::Passwords::new()
            .await
            .context("cannot prepare password hashing")?,
        metrics,
        node_id: rt.node_id().to_owned(),
        health: rt.health().clone(),
    }));

    let address = config.common.advertise(listener.local_addr()?);
    rt.heartbeat(address, |_| {});
    rt.spawn(api::reload_keys(state.clone(), rt.token()));
    let origins = if settings.allowed_origins.is_empty() && config.common.dev {
        api::Origins::Any
    } else {
        api::Origins::List(settings.allowed_origins.clone())
    };
    let routers = api::routers(&state, origins);
    let finish = api::finish(state);
    rt.serve_with_admin(
        listener,
        settings.admin_listen,
        routers,
        finish,
        settings.limits,
        shutdown,
    )
    .await?;
    rt.stop().await;
    Ok(())
}

/// The signer the settings ask for; in EdDSA mode, makes sure `store` holds a
/// current key (the configured one, or a generated one) and loads the ring.
pub async fn signer(
    config: &Config,
    settings: &config::Settings,
    store: &AuthStore,
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
            let key_store = signing::KeyStore::new(
                keys,
                config.key_retention_ms(),
                config.jwt.jwt_leeway_s * 1000,
            );
            key_store
                .ensure(store, settings.key_file.as_deref())
                .await
                .context("cannot install the signing key")?;
            let ring = key_store
                .load(store, None)
                .await
                .context("cannot load the signing keys")?;
            Ok((signing::Signer::ring(ring), Some(key_store)))
        }
        Alg::Rs256 => anyhow::bail!("RS256 is not supported by auth-svc"),
    }
}
