//! Connecting many clients fast: source-address spreading, token minting, and
//! cheap extraction of numbers from frames (the bench must not become the bottleneck
//! by parsing JSON it only needs two integers from).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use anyhow::{Context, bail};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::cli::Target;

/// Connections one source address can carry before its ephemeral ports run out.
pub(crate) const PER_SOURCE: usize = 20_000;

pub(crate) type Ws = WebSocketStream<TcpStream>;

/// Nanoseconds since the bench started; publishers stamp it, subscribers subtract it.
pub(crate) fn now_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// The source addresses to use for `n` connections.
pub(crate) fn sources(target: &Target, n: usize) -> Vec<IpAddr> {
    if !target.sources.is_empty() {
        return target.sources.clone();
    }
    let count = n.div_ceil(PER_SOURCE).max(1);
    (1..=count)
        .map(|i| IpAddr::from([127, 0, 0, u8::try_from(i.min(254)).unwrap_or(254)]))
        .collect()
}

/// Host and port of a ws:// or tcp:// URL.
pub(crate) fn host_port(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .split_once("://")
        .map(|(_, r)| r)
        .context("URL needs a scheme, e.g. ws://127.0.0.1:8765/ws")?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let authority = authority.replace("localhost", "127.0.0.1");
    authority
        .parse()
        .with_context(|| format!("{authority:?} is not host:port with an IP address"))
}

/// A TCP connection from `source` to `target`.
pub(crate) async fn tcp(source: IpAddr, target: SocketAddr) -> anyhow::Result<TcpStream> {
    // Binding to port 0 makes the kernel search for a free port at bind time, which
    // gets slow with thousands of sockets in TIME_WAIT; for the default source, let
    // connect() pick the port instead.
    if source == IpAddr::from([127, 0, 0, 1]) {
        let stream = TcpStream::connect(target)
            .await
            .with_context(|| format!("cannot connect to {target}"))?;
        stream.set_nodelay(true)?;
        return Ok(stream);
    }
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = socket
        .connect(target)
        .await
        .with_context(|| format!("cannot connect to {target}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A token for connection `i`: the fixed one, or minted with the secret.
pub(crate) fn token(target: &Target, i: usize) -> anyhow::Result<String> {
    if let Some(t) = &target.token {
        return Ok(t.clone());
    }
    let Some(secret) = &target.secret else {
        bail!("give --secret (or HERALD_JWT_SECRET) or --token");
    };
    let now = jsonwebtoken::get_current_timestamp();
    let claims = serde_json::json!({
        "sub": format!("bench-{i}"),
        "exp": now + 6 * 3600,
        "iat": now,
        "iss": "herald-auth",
        "aud": "herald",
        "channels": ["*"],
        "publish": ["*"],
    });
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// Tokens for connections `0..n`, minted before any clock starts: a real client
/// arrives with its token, so minting is not part of connection setup.
pub(crate) fn tokens(target: &Target, n: usize) -> anyhow::Result<Vec<Arc<str>>> {
    (0..n).map(|i| token(target, i).map(Arc::from)).collect()
}

/// Read buffer of an idle or lightly loaded client connection.
pub(crate) const SMALL_READ_BUFFER: usize = 4 * 1024;
/// Read buffer of a subscriber under load: one read takes in many frames.
pub(crate) const BULK_READ_BUFFER: usize = 64 * 1024;

/// Opens an authenticated WebSocket (token and channels in the query) and waits for
/// `auth_success`.
pub(crate) async fn connect(
    target: &Target,
    source: IpAddr,
    token: &str,
    channels: &[String],
    read_buffer: usize,
) -> anyhow::Result<Ws> {
    Ok(connect_hello(target, source, token, channels, read_buffer)
        .await?
        .0)
}

/// [`connect`], also returning the `auth_success` frame (it names the connection's
/// `conn_id`, which presence events carry).
pub(crate) async fn connect_hello(
    target: &Target,
    source: IpAddr,
    token: &str,
    channels: &[String],
    read_buffer: usize,
) -> anyhow::Result<(Ws, String)> {
    use futures_util::StreamExt;
    let addr = host_port(&target.url)?;
    let stream = tcp(source, addr).await?;
    let url = format!(
        "{}?token={token}&channels={}",
        target.url,
        channels.join(",")
    );
    let req = url.into_client_request()?;
    // Sized by the caller: tungstenite's 128 KiB default makes every connection an
    // mmap/munmap pair and page faults (the bench becomes the bottleneck of setup),
    // while a subscriber under load wants many frames per read. Writes keep the default
    // buffer, so a publisher's fed frames still go out in one write per flush.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(read_buffer);
    let (mut ws, _) =
        match tokio_tungstenite::client_async_with_config(req, stream, Some(config)).await {
            Ok(ok) => ok,
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                bail!("the gateway refused the connection: HTTP {}", resp.status())
            }
            Err(e) => return Err(e.into()),
        };
    loop {
        match ws.next().await {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                if t.starts_with(r#"{"type":"auth_success""#) {
                    return Ok((ws, t.as_str().to_owned()));
                }
                if t.contains(r#""type":"error""#) {
                    bail!("the gateway answered with an error: {}", t.as_str());
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("the gateway closed the connection during authentication"),
        }
    }
}

/// The unsigned integer after `key` (e.g. `"offset":`) in `text`.
pub(crate) fn number_after(text: &str, key: &str) -> Option<u64> {
    let start = text.find(key)? + key.len();
    let digits = &text[start..];
    let end = digits
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// The JSON string value after `key` (e.g. `"conn_id":"`) in `text`, up to the next
/// quote: for values that never hold escapes (ids, codes, channel names).
pub(crate) fn string_after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let start = text.find(key)? + key.len();
    let rest = &text[start..];
    rest.find('"').map(|end| &rest[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_numbers() {
        let f = r#"{"type":"message","channel":"c","offset":42,"epoch":"e","message":{"t":123456,"pad":"x"}}"#;
        assert_eq!(number_after(f, r#""offset":"#), Some(42));
        assert_eq!(number_after(f, r#""t":"#), Some(123_456));
        assert_eq!(number_after(f, r#""nope":"#), None);
        let j = r#"{"type":"join","channel":"room","user_id":"u","conn_id":"3f1c9a0b"}"#;
        assert_eq!(string_after(j, r#""conn_id":""#), Some("3f1c9a0b"));
        assert_eq!(string_after(j, r#""code":""#), None);
    }

    #[test]
    fn parses_targets() {
        assert_eq!(
            host_port("ws://127.0.0.1:8765/ws").unwrap(),
            "127.0.0.1:8765".parse().unwrap()
        );
        assert_eq!(
            host_port("tcp://localhost:9100").unwrap(),
            "127.0.0.1:9100".parse().unwrap()
        );
        assert!(host_port("nonsense").is_err());
    }
}
