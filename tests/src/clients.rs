//! Test clients for the three transports, each wait bounded by a timeout.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::app::TestApp;

/// How long a test waits for any single expected frame or event.
pub const WAIT: Duration = Duration::from_secs(15);

/// A WebSocket client.
pub struct WsClient {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// What a WebSocket read produced.
#[derive(Debug, Clone, PartialEq)]
pub enum WsEvent {
    /// A JSON text frame.
    Json(Value),
    /// A ping from the server.
    Ping,
    /// The server closed with this code and reason.
    Closed(u16, String),
    /// The connection ended without a close frame.
    Ended,
}

/// Why a WebSocket did not open.
#[derive(Debug)]
pub enum WsRefusal {
    /// The server answered the upgrade with this status and body (JSON, or null).
    Http(u16, Value),
    /// The connection failed before an answer.
    Failed(String),
    /// No answer within the time allowed.
    TimedOut,
}

/// Opens a WebSocket at `url` (`ws://...`) with extra request `headers`,
/// waiting at most `within`: the one way the harness opens WebSockets.
pub async fn open_ws(
    url: &str,
    headers: &[(&str, String)],
    within: Duration,
) -> Result<WsClient, WsRefusal> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderName;
    let mut request = url.into_client_request().expect("a valid URL");
    for (name, value) in headers {
        request.headers_mut().insert(
            HeaderName::from_bytes(name.as_bytes()).expect("a valid header name"),
            value.parse().expect("a valid header value"),
        );
    }
    match tokio::time::timeout(within, tokio_tungstenite::connect_async(request)).await {
        Ok(Ok((stream, _))) => Ok(WsClient { stream }),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
            let body = response
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            Err(WsRefusal::Http(response.status().as_u16(), body))
        }
        Ok(Err(e)) => Err(WsRefusal::Failed(e.to_string())),
        Err(_) => Err(WsRefusal::TimedOut),
    }
}

impl TestApp {
    /// Opens `/v1/ws` with `token` in the Authorization header (or none).
    pub async fn ws(&self, token: Option<&str>) -> WsClient {
        self.try_ws(token)
            .await
            .expect("the WebSocket upgrade succeeds")
    }

    /// Opens `/v1/ws`; an HTTP refusal comes back as its status.
    pub async fn try_ws(&self, token: Option<&str>) -> Result<WsClient, u16> {
        self.try_ws_query("", token).await
    }

    /// Opens `/v1/ws?{query}` (credentials in the URL, such as a ticket);
    /// an HTTP refusal comes back as its status.
    pub async fn try_ws_query(&self, query: &str, token: Option<&str>) -> Result<WsClient, u16> {
        let mut url = format!("{}/v1/ws", self.base_url.replace("http://", "ws://"));
        if !query.is_empty() {
            url = format!("{url}?{query}");
        }
        let headers: Vec<(&str, String)> = token
            .map(|token| ("authorization", format!("Bearer {token}")))
            .into_iter()
            .collect();
        match open_ws(&url, &headers, WAIT).await {
            Ok(ws) => Ok(ws),
            Err(WsRefusal::Http(status, _)) => Err(status),
            Err(WsRefusal::Failed(e)) => panic!("WebSocket connect failed: {e}"),
            Err(WsRefusal::TimedOut) => panic!("WebSocket connect timed out"),
        }
    }

    /// A WebSocket subscribed to `topics` (from `since`), its `subscribed`
    /// frame already read.
    pub async fn ws_subscribed(
        &self,
        token: &str,
        topics: &[&str],
        since: Option<&str>,
    ) -> WsClient {
        let mut ws = self.ws(Some(token)).await;
        let authenticated = ws.next_json().await;
        assert_eq!(authenticated["op"], "authenticated", "{authenticated}");
        ws.subscribe(topics, since).await;
        let subscribed = ws.next_json().await;
        assert_eq!(subscribed["op"], "subscribed", "{subscribed}");
        ws
    }

    /// Opens `/v1/sse` with `query` (after `?`) and optional Last-Event-ID.
    pub async fn sse(&self, query: &str, last_event_id: Option<&str>) -> SseClient {
        let response = self.sse_response(query, last_event_id).await;
        assert_eq!(response.status(), 200, "SSE refused");
        SseClient::new(response)
    }

    /// The raw SSE response.
    pub async fn sse_response(
        &self,
        query: &str,
        last_event_id: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .get(format!("{}/v1/sse?{query}", self.base_url))
            .timeout(Duration::from_secs(600));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        req.send().await.expect("the SSE request is answered")
    }

    /// GETs `/v1/poll?{query}`: (status, body).
    pub async fn poll(&self, query: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}/v1/poll?{query}", self.base_url))
            .send()
            .await
            .expect("the poll is answered");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

impl WsClient {
    /// Sends a JSON frame.
    pub async fn send_json(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    /// Sends a text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.stream
            .send(Message::text(text))
            .await
            .expect("the frame is sent");
    }

    /// Sends `subscribe`.
    pub async fn subscribe(&mut self, topics: &[&str], since: Option<&str>) {
        let mut frame = json!({"op": "subscribe", "topics": topics});
        if let Some(since) = since {
            frame["since"] = since.into();
        }
        self.send_json(frame).await;
    }

    /// The next frame or close, within `timeout`; `None` on timeout.
    pub async fn next_within(&mut self, timeout: Duration) -> Option<WsEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .ok()?;
            return Some(match next {
                Some(Ok(Message::Text(t))) => {
                    WsEvent::Json(serde_json::from_str(&t).expect("JSON text frame"))
                }
                Some(Ok(Message::Ping(_))) => WsEvent::Ping,
                Some(Ok(Message::Close(Some(frame)))) => {
                    WsEvent::Closed(u16::from(frame.code), frame.reason.to_string())
                }
                Some(Ok(Message::Close(None))) => {
                    WsEvent::Closed(u16::from(CloseCode::Status), String::new())
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => WsEvent::Ended,
            });
        }
    }

    /// The next JSON frame (pings skipped); panics on close or timeout.
    pub async fn next_json(&mut self) -> Value {
        loop {
            match self.next_within(WAIT).await {
                Some(WsEvent::Json(v)) => return v,
                Some(WsEvent::Ping) => continue,
                other => panic!("expected a JSON frame, got {other:?}"),
            }
        }
    }

    /// The next `event` frame's seq and topic, skipping nothing else.
    pub async fn next_event(&mut self) -> Value {
        let frame = self.next_json().await;
        assert_eq!(frame["op"], "event", "expected an event: {frame}");
        frame
    }

    /// Reads until the connection closes; returns what came before and the close code.
    pub async fn until_closed(&mut self, timeout: Duration) -> (Vec<Value>, Option<u16>) {
        let mut frames = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await {
                Some(WsEvent::Json(v)) => frames.push(v),
                Some(WsEvent::Ping) => {}
                Some(WsEvent::Closed(code, _)) => return (frames, Some(code)),
                Some(WsEvent::Ended) => return (frames, None),
                None => panic!("the connection did not close within {timeout:?}"),
            }
        }
    }
}

/// One SSE message.
#[derive(Debug, Clone, PartialEq)]
pub struct SseMessage {
    pub event: String,
    pub id: String,
    pub data: String,
}

impl SseMessage {
    /// `data` as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).expect("SSE data is JSON")
    }
}

enum Block {
    Message(SseMessage),
    Comment(String),
    End,
}

/// An SSE client that also sees comment lines.
pub struct SseClient {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
    /// Comment lines seen so far (`: keepalive`).
    pub comments: Vec<String>,
    /// The last `retry:` value.
    pub retry: Option<u64>,
    /// The last `id:` seen (what an EventSource would send as Last-Event-ID).
    pub last_id: String,
    /// The `event: subscribed` messages seen (kept here, not returned by `next`).
    pub subscribed: Vec<SseMessage>,
}

impl SseClient {
    /// Wraps a `200` SSE response.
    pub fn new(response: reqwest::Response) -> SseClient {
        SseClient {
            body: Box::pin(response.bytes_stream()),
            buffer: String::new(),
            comments: Vec::new(),
            retry: None,
            last_id: String::new(),
            subscribed: Vec::new(),
        }
    }

    /// The next message (comments recorded, not returned); `None` at the end
    /// of the stream; panics after `WAIT`.
    pub async fn next(&mut self) -> Option<SseMessage> {
        self.next_within(WAIT)
            .await
            .expect("an SSE message in time")
    }

    /// Like `next`, with its own timeout: `Err(())` on timeout.
    pub async fn next_within(&mut self, timeout: Duration) -> Result<Option<SseMessage>, ()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.next_block(deadline).await? {
                Block::Message(m) => return Ok(Some(m)),
                Block::Comment(c) => self.comments.push(c),
                Block::End => return Ok(None),
            }
        }
    }

    /// Waits for a comment line within `timeout`; messages in between are a failure.
    pub async fn comment_within(&mut self, timeout: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        if let Some(c) = self.comments.pop() {
            return Some(c);
        }
        match self.next_block(deadline).await {
            Ok(Block::Comment(c)) => Some(c),
            Ok(Block::Message(m)) => panic!("expected only comments, got {m:?}"),
            Ok(Block::End) | Err(()) => None,
        }
    }

    /// The next block of lines (a message, a comment, or the end).
    async fn next_block(&mut self, deadline: tokio::time::Instant) -> Result<Block, ()> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut message = SseMessage {
                    event: "message".into(),
                    id: String::new(),
                    data: String::new(),
                };
                let mut has_data = false;
                let mut comment = None;
                for line in block.lines() {
                    if let Some(c) = line.strip_prefix(':') {
                        comment = Some(c.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("retry: ") {
                        self.retry = v.parse().ok();
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        message.id = v.to_owned();
                        self.last_id = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        message.event = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        message.data.push_str(v);
                        has_data = true;
                    }
                }
                if has_data && message.event == "subscribed" {
                    self.subscribed.push(message);
                    continue;
                }
                if has_data {
                    return Ok(Block::Message(message));
                }
                if let Some(c) = comment {
                    return Ok(Block::Comment(c));
                }
                continue;
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => return Err(()),
                Ok(Some(Ok(chunk))) => self.buffer.push_str(&String::from_utf8_lossy(&chunk)),
                Ok(Some(Err(_))) | Ok(None) => return Ok(Block::End),
            }
        }
    }
}
