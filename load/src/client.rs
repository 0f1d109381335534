//! Subscriber connections for the scenarios that open many of them
//! (`conns`, `fanout`): a TCP socket bound to a chosen source address on
//! 127.0.0.0/8 before it connects, then a WebSocket upgrade and a
//! `subscribe` frame, or a hand-written SSE request whose response headers
//! are read.
//!
//! Source addresses: the kernel picks a client's port per (source address,
//! port) pair when the socket is bound before connecting, so one source
//! address offers at most the ephemeral range (`ip_local_port_range`, about
//! 28,000 ports). Spreading sockets over 127.0.0.1 ..= 127.0.0.N lifts that
//! limit, and keeps ports in `TIME_WAIT` from a previous run out of the way.
//! Every address of 127.0.0.0/8 reaches this machine on Linux.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::target::Secret;

/// Source addresses, by default: 127.0.0.1 ..= 127.0.0.16.
pub const DEFAULT_SOURCE_IPS: u8 = 16;
/// Most source addresses: 127.0.0.1 ..= 127.0.0.254.
pub const MAX_SOURCE_IPS: u8 = 254;
/// Largest SSE response head this client reads.
const MAX_SSE_HEAD: usize = 4096;

/// A WebSocket over plain TCP.
pub type WsStream = WebSocketStream<TcpStream>;

/// How a stream's request reaches the server on its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arrival {
    /// The stream's request is the connection's first.
    First,
    /// A `GET /healthz` goes first on the same connection, and its answer
    /// is read: the stream's request is the connection's second, as for a
    /// browser that minted a ticket first or a proxy's pooled upstream
    /// connection.
    AfterRequest,
}

impl Arrival {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Arrival::First => "first",
            Arrival::AfterRequest => "after-request",
        }
    }
}

/// Where subscribers connect, with which token.
#[derive(Clone)]
pub struct Endpoint {
    /// The server's IPv4 loopback address.
    pub server: SocketAddrV4,
    token: Arc<str>,
    /// How each stream's request arrives on its connection.
    pub arrival: Arrival,
}

impl Endpoint {
    /// The IPv4 address behind `base_url` (`http://127.0.0.1:PORT` or
    /// `http://localhost:PORT`) and the token subscribers present.
    pub async fn resolve(base_url: &str, token: &Secret) -> anyhow::Result<Endpoint> {
        let authority = base_url
            .strip_prefix("http://")
            .with_context(|| format!("{base_url} is not http://"))?
            .trim_end_matches('/');
        let server = tokio::net::lookup_host(authority)
            .await
            .with_context(|| format!("resolving {authority}"))?
            .find_map(|addr| match addr {
                SocketAddr::V4(v4) if v4.ip().is_loopback() => Some(v4),
                _ => None,
            });
        let Some(server) = server else {
            bail!(
                "{base_url} has no IPv4 loopback address; connections from 127.0.0.N need one \
                 (use http://127.0.0.1:PORT)"
            );
        };
        Ok(Endpoint {
            server,
            token: token.expose().into(),
            arrival: Arrival::First,
        })
    }

    /// A connection from `source` ready for a stream's request: connected,
    /// and with a first request answered when the arrival asks for one.
    pub async fn open(&self, source: Ipv4Addr) -> Result<TcpStream, OpenError> {
        let mut stream = connect_from(source, self.server).await?;
        if self.arrival == Arrival::AfterRequest {
            request_first(&mut stream, self.server).await?;
        }
        Ok(stream)
    }
}

/// `GET /healthz` on `stream`, its whole answer read (head and a
/// `content-length` body), the connection kept alive for the next request.
async fn request_first(stream: &mut TcpStream, server: SocketAddrV4) -> Result<(), OpenError> {
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {server}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| OpenError::io("write", &e))?;
    let mut buf = [0u8; MAX_SSE_HEAD];
    let mut len = 0;
    let end = loop {
        let n = stream
            .read(&mut buf[len..])
            .await
            .map_err(|e| OpenError::io("read", &e))?;
        if n == 0 {
            return Err(OpenError::new("closed_after_first"));
        }
        len += n;
        if let Some(at) = buf[..len].windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if len == buf.len() {
            return Err(OpenError::new("bad_response"));
        }
    };
    match status_code(&buf[..end]) {
        Some(200) => {}
        Some(code) => return Err(OpenError(format!("first_http_{code}"))),
        None => return Err(OpenError::new("bad_response")),
    }
    let body = content_length(&buf[..end]).ok_or_else(|| OpenError::new("bad_response"))?;
    let mut left = body.saturating_sub(len - end);
    while left > 0 {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| OpenError::io("read", &e))?;
        if n == 0 {
            return Err(OpenError::new("closed_after_first"));
        }
        left = left.saturating_sub(n);
    }
    Ok(())
}

/// The `content-length` of a response head.
fn content_length(head: &[u8]) -> Option<usize> {
    let head = std::str::from_utf8(head).ok()?;
    head.split("\r\n").find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

/// Source addresses 127.0.0.1 ..= 127.0.0.N, taken in turn.
#[derive(Debug, Clone, Copy)]
pub struct Sources(u8);

impl Sources {
    /// `n` addresses (1..=254).
    pub fn new(n: u8) -> anyhow::Result<Sources> {
        if n == 0 || n > MAX_SOURCE_IPS {
            bail!("--source-ips must be 1..={MAX_SOURCE_IPS}");
        }
        Ok(Sources(n))
    }

    /// The address of connection `i`.
    pub fn nth(self, i: usize) -> Ipv4Addr {
        let last = u8::try_from(i % usize::from(self.0)).expect("below 254") + 1;
        Ipv4Addr::new(127, 0, 0, last)
    }
}

/// Why a connection did not open, as a short kind for the report
/// (`connect_AddrNotAvailable`, `http_503`, `closed`, ...).
#[derive(Debug, Clone)]
pub struct OpenError(pub String);

impl OpenError {
    fn new(kind: impl Into<String>) -> OpenError {
        OpenError(kind.into())
    }

    fn io(stage: &str, e: &std::io::Error) -> OpenError {
        OpenError(format!("{stage}_{:?}", e.kind()))
    }
}

/// A TCP connection to `server` from `source`, port chosen by the kernel.
pub async fn connect_from(source: Ipv4Addr, server: SocketAddrV4) -> Result<TcpStream, OpenError> {
    let socket = TcpSocket::new_v4().map_err(|e| OpenError::io("socket", &e))?;
    // A port whose previous connection is in TIME_WAIT may be bound again.
    socket
        .set_reuseaddr(true)
        .map_err(|e| OpenError::io("socket", &e))?;
    socket
        .bind(SocketAddr::from((source, 0)))
        .map_err(|e| OpenError::io("bind", &e))?;
    let stream = socket
        .connect(server.into())
        .await
        .map_err(|e| OpenError::io("connect", &e))?;
    stream
        .set_nodelay(true)
        .map_err(|e| OpenError::io("socket", &e))?;
    Ok(stream)
}

/// A WebSocket to `/v1/ws` from `source`, authenticated in the upgrade
/// request, subscribed to `topic` (live only): returns once the server's
/// `subscribed` frame has arrived, so every event committed from then on is
/// delivered. `read_buffer` is the client's read buffer per connection
/// (tungstenite allocates 128 KiB by default, too much for thousands).
pub async fn ws_subscribe(
    endpoint: &Endpoint,
    source: Ipv4Addr,
    topic: &str,
    read_buffer: usize,
) -> Result<WsStream, OpenError> {
    ws_subscribe_since(endpoint, source, topic, None, read_buffer)
        .await
        .map(|(ws, _)| ws)
}

/// As [`ws_subscribe`], resuming from `since` (a cursor, `topic:seq`) when
/// given; also returns the topic's head seq from the `subscribed` frame's
/// `heads` (0 when absent).
pub async fn ws_subscribe_since(
    endpoint: &Endpoint,
    source: Ipv4Addr,
    topic: &str,
    since: Option<&str>,
    read_buffer: usize,
) -> Result<(WsStream, u64), OpenError> {
    let stream = endpoint.open(source).await?;
    let mut request = format!("ws://{}/v1/ws", endpoint.server)
        .into_client_request()
        .map_err(|_| OpenError::new("request"))?;
    let bearer = HeaderValue::from_str(&format!("Bearer {}", endpoint.token))
        .map_err(|_| OpenError::new("request"))?;
    request.headers_mut().insert(header::AUTHORIZATION, bearer);
    let config = WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .map_err(|e| match e {
            WsError::Http(response) => OpenError(format!("http_{}", response.status().as_u16())),
            WsError::Io(e) => OpenError::io("handshake", &e),
            _ => OpenError::new("handshake"),
        })?;
    let frame = match since {
        Some(cursor) => {
            format!(r#"{{"op":"subscribe","topics":["{topic}"],"since":"{cursor}"}}"#)
        }
        None => format!(r#"{{"op":"subscribe","topics":["{topic}"]}}"#),
    };
    ws.send(Message::text(frame))
        .await
        .map_err(|_| OpenError::new("send"))?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                // Control frames are JSON objects whose keys come in any order.
                if text.contains(r#""op":"subscribed""#) {
                    let head = head_of(text.as_str(), topic).unwrap_or(0);
                    return Ok((ws, head));
                }
                if text.contains(r#""op":"error""#) {
                    return Err(OpenError::new("subscribe_refused"));
                }
                // `authenticated`: read on.
            }
            Some(Ok(Message::Close(_))) | None => return Err(OpenError::new("closed")),
            Some(Ok(_)) => {}
            Some(Err(_)) => return Err(OpenError::new("read")),
        }
    }
}

/// The seq of `topic` in a `subscribed` frame's `heads` cursor.
fn head_of(frame: &str, topic: &str) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_str(frame).ok()?;
    let heads = value.get("heads")?.as_str()?;
    heads.split(',').find_map(|pair| {
        let (t, seq) = pair.rsplit_once(':')?;
        (t == topic).then(|| seq.parse().ok()).flatten()
    })
}

/// Reads a WebSocket until it ends, answering pings (tungstenite queues the
/// pong and sends it on the next read) and discarding everything else.
pub async fn ws_idle(mut ws: WsStream) {
    while let Some(message) = ws.next().await {
        if matches!(message, Err(_) | Ok(Message::Close(_))) {
            break;
        }
    }
}

/// An SSE stream of `/v1/sse?topic=...&access_token=...` from `source`,
/// with a hand-written HTTP/1.1 request: returns once the `200` response
/// head has been read (Herald answers only once the stream is subscribed).
/// Bytes of the body read along with the head are dropped.
pub async fn sse_subscribe(
    endpoint: &Endpoint,
    source: Ipv4Addr,
    topic: &str,
) -> Result<TcpStream, OpenError> {
    let mut stream = endpoint.open(source).await?;
    let request = format!(
        "GET /v1/sse?topic={topic}&access_token={} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
        endpoint.token, endpoint.server
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| OpenError::io("write", &e))?;
    let mut head = [0u8; MAX_SSE_HEAD];
    let mut len = 0;
    loop {
        let n = stream
            .read(&mut head[len..])
            .await
            .map_err(|e| OpenError::io("read", &e))?;
        if n == 0 {
            return Err(OpenError::new("closed"));
        }
        len += n;
        if head[..len].windows(4).any(|w| w == b"\r\n\r\n") {
            return match status_code(&head[..len]) {
                Some(200) => Ok(stream),
                Some(code) => Err(OpenError(format!("http_{code}"))),
                None => Err(OpenError::new("bad_response")),
            };
        }
        if len == head.len() {
            return Err(OpenError::new("bad_response"));
        }
    }
}

/// The status code of an HTTP/1.1 response head.
fn status_code(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// Reads an SSE stream until it ends, discarding what arrives (keepalives).
pub async fn sse_idle(mut stream: TcpStream) {
    let mut sink = [0u8; 256];
    while let Ok(n) = stream.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_cycle_over_127_0_0_n() {
        let sources = Sources::new(3).expect("3 is allowed");
        let ips: Vec<Ipv4Addr> = (0..4).map(|i| sources.nth(i)).collect();
        assert_eq!(
            ips,
            [
                Ipv4Addr::new(127, 0, 0, 1),
                Ipv4Addr::new(127, 0, 0, 2),
                Ipv4Addr::new(127, 0, 0, 3),
                Ipv4Addr::new(127, 0, 0, 1)
            ]
        );
        assert!(Sources::new(0).is_err());
        assert_eq!(
            Sources::new(254).expect("254 is allowed").nth(253),
            Ipv4Addr::new(127, 0, 0, 254)
        );
    }

    #[test]
    fn heads_give_the_topic_head() {
        let frame = r#"{"op":"subscribed","topics":["a.b","c"],"heads":"a.b:25,c:0"}"#;
        assert_eq!(head_of(frame, "a.b"), Some(25));
        assert_eq!(head_of(frame, "c"), Some(0));
        assert_eq!(head_of(frame, "d"), None);
    }

    #[test]
    fn content_lengths_parse() {
        let head =
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ncontent-length: 15\r\n\r\n";
        assert_eq!(content_length(head), Some(15));
        assert_eq!(content_length(b"HTTP/1.1 200 OK\r\n\r\n"), None);
    }

    #[test]
    fn status_lines_parse() {
        assert_eq!(
            status_code(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n"),
            Some(200)
        );
        assert_eq!(
            status_code(b"HTTP/1.1 503 Service Unavailable\r\n\r\n"),
            Some(503)
        );
        assert_eq!(status_code(b"garbage\r\n\r\n"), None);
    }
}
