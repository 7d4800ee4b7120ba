//! Talking to the monitor: one task polls the overview, one polls the
//! connections the user is looking at, and disconnects go out on demand. Each
//! sends its result into the same channel as an [`Event`]; the caller runs them
//! as tasks it owns, so they stop when the dashboard does.

use std::time::Duration;

use reqwest::{StatusCode, Url};
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;

use crate::event::Event;
use crate::model::{ConnectionsPage, Overview};

/// How many connections one page asks for; the list is for looking, not export.
pub const CONNECTIONS_LIMIT: usize = 500;

/// Why a request to the monitor failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0} is not an http(s) URL")]
    BadUrl(String),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("{}", describe(.0))]
    Unreachable(#[source] reqwest::Error),
    #[error("monitor answered {status}: {message}")]
    Status { status: StatusCode, message: String },
    #[error("unexpected answer from the monitor: {0}")]
    Decode(String),
    #[error("no admin key: start herald-tui with --admin-key or HERALD_ADMIN_KEY")]
    NoAdminKey,
}

/// One short line for the status bar, not reqwest's nested chain.
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "request timed out".to_owned()
    } else if e.is_connect() {
        "connection refused".to_owned()
    } else {
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            msg = s.to_string();
            source = s.source();
        }
        msg
    }
}

/// Which connections to list: the server-side part of the user's filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnQuery {
    /// Only poll while the connections view is on screen: the list is the one
    /// read that walks Redis hashes.
    pub active: bool,
    pub node: Option<String>,
    pub user: Option<String>,
    pub channel: Option<String>,
}

/// The monitor's HTTP API.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    /// Always ends with `/`, so joins append rather than replace.
    base: Url,
    admin_key: Option<String>,
}

impl Client {
    pub fn new(
        base: &str,
        admin_key: Option<String>,
        timeout: Duration,
    ) -> Result<Self, FetchError> {
        let mut base = Url::parse(base).map_err(|_| FetchError::BadUrl(base.to_owned()))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(FetchError::BadUrl(base.to_string()));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(FetchError::Client)?;
        Ok(Self {
            http,
            base,
            admin_key: admin_key.filter(|k| !k.is_empty()),
        })
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            // The base ends with `/`, which leaves an empty last segment.
            path.pop_if_empty().extend(segments);
        }
        url
    }

    pub async fn overview(&self) -> Result<Overview, FetchError> {
        let resp = self
            .http
            .get(self.url(&["api", "v1", "overview"]))
            .send()
            .await
            .map_err(FetchError::Unreachable)?;
        decode(resp).await
    }

    pub async fn connections(&self, q: &ConnQuery) -> Result<ConnectionsPage, FetchError> {
        let mut url = self.url(&["api", "v1", "connections"]);
        {
            let mut pairs = url.query_pairs_mut();
            pairs.append_pair("limit", &CONNECTIONS_LIMIT.to_string());
            for (k, v) in [
                ("node", &q.node),
                ("user", &q.user),
                ("channel", &q.channel),
            ] {
                if let Some(v) = v {
                    pairs.append_pair(k, v);
                }
            }
        }
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(FetchError::Unreachable)?;
        decode(resp).await
    }

    /// Asks the monitor to have the owning gateway close `conn_id`.
    pub async fn disconnect(&self, conn_id: &str) -> Result<(), FetchError> {
        let key = self.admin_key.as_deref().ok_or(FetchError::NoAdminKey)?;
        let resp = self
            .http
            .post(self.url(&["api", "v1", "connections", conn_id, "disconnect"]))
            .bearer_auth(key)
            .send()
            .await
            .map_err(FetchError::Unreachable)?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(error_status(resp).await)
        }
    }
}

async fn decode<T: serde::de::DeserializeOwned>(resp: reqwest::Response) -> Result<T, FetchError> {
    if !resp.status().is_success() {
        return Err(error_status(resp).await);
    }
    let bytes = resp.bytes().await.map_err(FetchError::Unreachable)?;
    serde_json::from_slice(&bytes).map_err(|e| FetchError::Decode(e.to_string()))
}

/// The error of a non-2xx answer, with the protocol's `{"error":{"message"}}` when present.
async fn error_status(resp: reqwest::Response) -> FetchError {
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.chars().take(120).collect());
    FetchError::Status { status, message }
}

fn ticker(every: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(every);
    // A slow monitor gets one request at a time, not a burst to catch up.
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick
}

/// Polls the overview every `every` until the receiving side is gone.
pub async fn poll_overview(client: Client, every: Duration, tx: mpsc::Sender<Event>) {
    let mut tick = ticker(every);
    loop {
        tick.tick().await;
        let answer = client.overview().await;
        if !report(&tx, "overview", answer, Event::Snapshot, Event::FetchError).await {
            return;
        }
    }
}

/// Polls the connections matching the latest query while it is active, and at
/// once whenever the query changes.
pub async fn poll_connections(
    client: Client,
    every: Duration,
    mut query: watch::Receiver<ConnQuery>,
    tx: mpsc::Sender<Event>,
) {
    let mut tick = ticker(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = query.changed() => {
                if changed.is_err() {
                    return;
                }
                tick.reset();
            }
        }
        let q = query.borrow_and_update().clone();
        if !q.active {
            continue;
        }
        let answer = client.connections(&q).await;
        let (ok, failed) = (Event::Connections, Event::ConnectionsError);
        if !report(&tx, "connections", answer, ok, failed).await {
            return;
        }
    }
}

/// Sends one poll's answer as an event; false once the dashboard is gone.
async fn report<T>(
    tx: &mpsc::Sender<Event>,
    what: &str,
    answer: Result<T, FetchError>,
    ok: fn(Box<T>) -> Event,
    failed: fn(String) -> Event,
) -> bool {
    let event = match answer {
        Ok(v) => ok(Box::new(v)),
        Err(e) => {
            tracing::debug!(error = %e, "{what} fetch failed");
            failed(e.to_string())
        }
    };
    tx.send(event).await.is_ok()
}

/// Sends one disconnect request and reports its outcome as an event.
pub async fn disconnect(client: Client, conn_id: String, tx: mpsc::Sender<Event>) {
    let result = client.disconnect(&conn_id).await.map_err(|e| e.to_string());
    if let Err(e) = &result {
        tracing::warn!(%conn_id, error = %e, "disconnect failed");
    }
    // The dashboard may have quit meanwhile; nobody is left to tell.
    let _ = tx.send(Event::Disconnected { conn_id, result }).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_append_to_any_base() {
        let t = Duration::from_secs(1);
        for base in [
            "http://127.0.0.1:8083",
            "http://127.0.0.1:8083/",
            "http://h/mon",
            "http://h/mon/",
        ] {
            let c = Client::new(base, None, t).expect("client");
            let url = c.url(&["api", "v1", "overview"]);
            assert!(url.as_str().ends_with("/api/v1/overview"), "{url}");
            assert!(!url.as_str().contains("//api"), "{url}");
        }
        let c = Client::new("http://h/mon", None, t).expect("client");
        assert_eq!(c.url(&["api"]).as_str(), "http://h/mon/api");
        // A connection id is one path segment, whatever it contains.
        let url = c.url(&["api", "v1", "connections", "a/b c", "disconnect"]);
        assert_eq!(
            url.as_str(),
            "http://h/mon/api/v1/connections/a%2Fb%20c/disconnect"
        );
    }

    #[test]
    fn rejects_what_is_not_an_http_url() {
        let t = Duration::from_secs(1);
        for bad in ["127.0.0.1:8083", "ftp://h/", "nonsense", "mailto:x@y"] {
            assert!(
                matches!(Client::new(bad, None, t), Err(FetchError::BadUrl(_))),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn disconnect_without_key_is_refused_locally() {
        let c = Client::new(
            "http://127.0.0.1:9",
            Some(String::new()),
            Duration::from_secs(1),
        )
        .expect("client");
        assert!(matches!(
            c.disconnect("c1").await,
            Err(FetchError::NoAdminKey)
        ));
    }

    #[tokio::test]
    async fn an_absent_monitor_is_unreachable() {
        // Port 9 (discard) has no listener on a test machine.
        let c = Client::new("http://127.0.0.1:9", None, Duration::from_secs(2)).expect("client");
        let err = c.overview().await.expect_err("nobody listens");
        assert!(matches!(err, FetchError::Unreachable(_)), "{err:?}");
        assert_eq!(err.to_string(), "connection refused");
    }
}
