//! A WebSocket client for tasks that run under load and faults (outages, killed
//! gateways, floods, soaks): every call is bounded, and a closed connection is a
//! value to inspect, not a panic, unlike [`crate::Ws`].

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any reply may take, even while Redis is down: "promptly", never a hang.
pub const PROMPT: Duration = Duration::from_secs(3);

/// What [`Client::next`] saw.
#[derive(Debug)]
pub enum Next {
    Frame(Value),
    /// Nothing within the wait.
    Idle,
    /// The connection ended (close code, or 1006 for a dropped socket).
    Closed(u16),
}

/// See the module documentation.
#[derive(Debug)]
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn connect(url: &str) -> Result<Self, String> {
        match tokio::time::timeout(PROMPT, tokio_tungstenite::connect_async(url)).await {
            Ok(Ok((ws, _))) => Ok(Self { ws }),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("handshake timed out".to_owned()),
        }
    }

    /// Connects and authenticates; returns the client and `auth_success`.
    pub async fn auth(url: &str, token: &str, channels: &[&str]) -> Result<(Self, Value), String> {
        let mut c = Self::connect(url).await?;
        c.send(&json!({"type":"auth","token":token,"channels":channels}))
            .await?;
        match c.next(PROMPT).await {
            Next::Frame(v) if v["type"] == "auth_success" => Ok((c, v)),
            other => Err(format!("no auth_success: {other:?}")),
        }
    }

    pub async fn send(&mut self, v: &Value) -> Result<(), String> {
        self.send_text(&v.to_string()).await
    }

    pub async fn send_text(&mut self, text: &str) -> Result<(), String> {
        match tokio::time::timeout(PROMPT, self.ws.send(Message::text(text))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("send timed out".to_owned()),
        }
    }

    /// The next JSON frame (heartbeats skipped) within `wait`.
    pub async fn next(&mut self, wait: Duration) -> Next {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Next::Idle,
                Ok(None | Some(Err(_))) => return Next::Closed(1006),
                Ok(Some(Ok(Message::Close(c)))) => {
                    return Next::Closed(c.map_or(1005, |c| u16::from(c.code)));
                }
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                    if v["type"] != "heartbeat" {
                        return Next::Frame(v);
                    }
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Sends `frame` (which carries `"id": id`) and waits at most `wait` for the reply
    /// with that id; other frames (messages) go to `other`.
    pub async fn request(
        &mut self,
        frame: &Value,
        id: u64,
        wait: Duration,
        other: &mut Vec<Value>,
    ) -> Result<Value, String> {
        self.send(frame).await?;
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Next::Frame(v) if v["id"] == id => return Ok(v),
                Next::Frame(v) => other.push(v),
                Next::Idle => return Err(format!("no reply to {frame} within {wait:?}")),
                Next::Closed(code) => return Err(format!("closed ({code}) awaiting {frame}")),
            }
        }
    }

    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.ws.close(None)).await;
    }
}

/// The `(epoch, offset)` of a `message`, `ack` or `subscribed` frame (or of an HTTP
/// publish answer).
pub fn position(v: &Value) -> Option<(String, u64)> {
    Some((v["epoch"].as_str()?.to_owned(), v["offset"].as_u64()?))
}
