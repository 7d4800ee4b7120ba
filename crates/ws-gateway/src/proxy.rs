//! The proxy hooks: the gateway asks the application's backend over HTTP who a
//! connection is (connect), whether to extend it (refresh), whether a subscribe or
//! a broadcast may go ahead (subscribe, publish; a publish may be rewritten).
//!
//! Each hook is off unless its URL is set, and bounded on its own: at most
//! `HERALD_PROXY_CONCURRENCY` requests in flight and `HERALD_PROXY_TIMEOUT_MS` per
//! request, waiting for a slot included. A backend that hangs or is down fails that
//! hook's requests with a clear client error (`unavailable`) within the timeout;
//! other hooks, other clients and message delivery are not held up. Nothing is
//! retried here: the client retries a connect or subscribe, and a publish the
//! backend did not answer is not published (never twice).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;

use herald_proto::glob;
use herald_proto::proxy::{Hook, ProxyDisconnect, ProxyError, Reply};

use crate::config::Settings;
use crate::metrics::Metrics;

/// The header that tells the backend the request comes from Herald.
pub(crate) const SECRET_HEADER: &str = "x-herald-proxy-secret";

/// What the backend decided.
#[derive(Debug)]
pub(crate) enum Outcome<T> {
    Allowed(T),
    /// `{"error":…}`: passed on to the client with the backend's code.
    Refused(ProxyError),
    /// `{"disconnect":…}` (connect, refresh).
    Disconnect(ProxyDisconnect),
    /// No usable answer in time (down, hanging, 5xx, malformed): temporary.
    Unavailable(&'static str),
}

/// One hook's address and its in-flight bound.
#[derive(Debug)]
struct Endpoint {
    url: String,
    slots: Semaphore,
}

/// The configured hooks.
#[derive(Debug)]
pub(crate) struct Proxy {
    client: reqwest::Client,
    connect: Option<Endpoint>,
    refresh: Option<Endpoint>,
    subscribe: Option<Endpoint>,
    publish: Option<Endpoint>,
    timeout: Duration,
    secret: Option<String>,
    /// Lowercase names of the handshake headers forwarded.
    forward: Vec<String>,
    subscribe_channels: Vec<String>,
    publish_channels: Vec<String>,
    /// Every first-frame login goes to the connect hook, tokens included.
    pub(crate) connect_always: bool,
    metrics: Metrics,
}

/// The forwarded handshake headers of one connection (empty unless a hook is on).
pub(crate) type Forwarded = BTreeMap<String, String>;

impl Proxy {
    pub(crate) fn new(s: &Settings, metrics: Metrics) -> Self {
        let endpoint = |url: &Option<String>| {
            url.as_ref().map(|u| Endpoint {
                url: u.clone(),
                slots: Semaphore::new(s.proxy_concurrency),
            })
        };
        Self {
            // Redirects are not followed: the URL is the operator's, and a backend
            // answering with a redirect is a misconfiguration, not a place to go.
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
            connect: endpoint(&s.proxy_connect_url),
            refresh: endpoint(&s.proxy_refresh_url),
            subscribe: endpoint(&s.proxy_subscribe_url),
            publish: endpoint(&s.proxy_publish_url),
            timeout: s.proxy_timeout,
            secret: s.proxy_secret.clone(),
            forward: s
                .proxy_headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            subscribe_channels: s.proxy_subscribe_channels.clone(),
            publish_channels: s.proxy_publish_channels.clone(),
            connect_always: s.proxy_connect_always,
            metrics,
        }
    }

    fn endpoint(&self, hook: Hook) -> Option<&Endpoint> {
        match hook {
            Hook::Connect => self.connect.as_ref(),
            Hook::Refresh => self.refresh.as_ref(),
            Hook::Subscribe => self.subscribe.as_ref(),
            Hook::Publish => self.publish.as_ref(),
        }
    }

    pub(crate) fn enabled(&self, hook: Hook) -> bool {
        self.endpoint(hook).is_some()
    }

    /// Whether any hook is on (then handshake headers are kept for them).
    pub(crate) fn any(&self) -> bool {
        Hook::ALL.into_iter().any(|h| self.enabled(h))
    }

    /// Whether a subscribe to `channel` goes to the backend: always for the
    /// configured patterns, otherwise when the claims do not allow it.
    pub(crate) fn asks_subscribe(&self, channel: &str, claims_allow: bool) -> bool {
        self.enabled(Hook::Subscribe)
            && (!claims_allow || glob::any_matches(&self.subscribe_channels, channel))
    }

    /// Whether a broadcast on `channel` goes to the backend (which then decides
    /// instead of the `publish` claim).
    pub(crate) fn asks_publish(&self, channel: &str) -> bool {
        self.enabled(Hook::Publish) && glob::any_matches(&self.publish_channels, channel)
    }

    /// The forwarded headers of a handshake.
    pub(crate) fn forwarded(&self, headers: &HeaderMap) -> Forwarded {
        self.forward
            .iter()
            .filter_map(|name| {
                let v = headers.get(name.as_str())?.to_str().ok()?;
                Some((name.clone(), v.to_owned()))
            })
            .collect()
    }

    /// Asks `hook` about `body`; every failure is an `Unavailable`.
    pub(crate) async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        hook: Hook,
        body: &B,
        headers: &Forwarded,
    ) -> Outcome<T> {
        let Some(ep) = self.endpoint(hook) else {
            return Outcome::Unavailable("hook not configured");
        };
        let started = Instant::now();
        let outcome = match tokio::time::timeout(self.timeout, self.post(ep, body, headers)).await {
            Ok(o) => o,
            Err(_) => Outcome::Unavailable("timeout"),
        };
        let result = match &outcome {
            Outcome::Allowed(_) => "ok",
            Outcome::Refused(_) => "refused",
            Outcome::Disconnect(_) => "disconnect",
            Outcome::Unavailable("timeout") => "timeout",
            Outcome::Unavailable(_) => "error",
        };
        self.metrics
            .proxy_requests
            .with_label_values(&[hook.as_str(), result])
            .inc();
        self.metrics
            .proxy_duration
            .with_label_values(&[hook.as_str()])
            .observe(started.elapsed().as_secs_f64());
        if let Outcome::Unavailable(why) = &outcome {
            tracing::warn!(hook = hook.as_str(), why, "proxy request failed");
        }
        outcome
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        ep: &Endpoint,
        body: &B,
        headers: &Forwarded,
    ) -> Outcome<T> {
        // Waiting for a slot counts against the timeout (the caller's).
        let Ok(_slot) = ep.slots.acquire().await else {
            return Outcome::Unavailable("closed");
        };
        let mut req = self.client.post(&ep.url).json(body);
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if let Some(secret) = &self.secret {
            req = req.header(SECRET_HEADER, secret.as_str());
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(_) => return Outcome::Unavailable("unreachable"),
        };
        if !resp.status().is_success() {
            return Outcome::Unavailable("error status");
        }
        let Ok(reply) = resp.json::<Reply<T>>().await else {
            return Outcome::Unavailable("malformed answer");
        };
        match reply {
            Reply {
                disconnect: Some(d),
                ..
            } => Outcome::Disconnect(d),
            Reply { error: Some(e), .. } => Outcome::Refused(e),
            Reply {
                result: Some(r), ..
            } => Outcome::Allowed(r),
            _ => Outcome::Unavailable("malformed answer"),
        }
    }
}
