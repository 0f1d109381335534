//! Server-Sent Events `/v1/sse`: one stream for several topics, each event's
//! `id:` the connection's whole cursor, so an `EventSource` resumes every
//! topic with the `Last-Event-ID` it sends by itself.

use std::collections::VecDeque;
use std::sync::Arc;

use actix::prelude::*;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use serde_json::json;

use super::outbound::{self, OutboundRx};
use super::{Close, CloseReason, Session, Transport};
use crate::event::Encoded;
use crate::http::error::ApiError;
use crate::http::{AppState, SubscribeQuery};
use crate::topic::{Cursor, Topic};

/// A frame: up to three pieces, so the shared event JSON is never copied.
pub struct SseFrame(pub [Bytes; 3]);

/// The SSE transport.
pub struct Sse;

fn frame(text: String) -> (SseFrame, usize) {
    let len = text.len();
    (
        SseFrame([Bytes::from(text), Bytes::new(), Bytes::new()]),
        len,
    )
}

impl Transport for Sse {
    type Frame = SseFrame;
    const NAME: &'static str = "sse";

    fn event(&self, event: &Arc<Encoded>, cursor: &dyn Fn() -> Cursor) -> (SseFrame, usize) {
        let head = Bytes::from(format!("id: {}\ndata: ", cursor()));
        let size = head.len() + event.json.len() + 2;
        (
            SseFrame([head, event.json.clone(), Bytes::from_static(b"\n\n")]),
            size,
        )
    }

    fn reset(&self, topic: &Topic, from: u64, cursor: &dyn Fn() -> Cursor) -> (SseFrame, usize) {
        // The id moves past the gap too, so a reconnect does not see the reset again.
        frame(format!(
            "id: {}\nevent: reset\ndata: {}\n\n",
            cursor(),
            json!({"topic": topic, "from": from})
        ))
    }

    fn heartbeat(&self) -> SseFrame {
        SseFrame([
            Bytes::from_static(b": keepalive\n\n"),
            Bytes::new(),
            Bytes::new(),
        ])
    }

    fn close(&self, reason: &CloseReason) -> SseFrame {
        let text = match reason {
            CloseReason::Draining => "event: drain\ndata: {\"reason\":\"draining\"}\n\n".to_owned(),
            CloseReason::Normal => String::new(),
            other => format!(
                "event: error\ndata: {}\n\n",
                json!({"code": other.code(), "message": other.message()})
            ),
        };
        frame(text).0
    }

    fn on_heartbeat(_: &mut Session<Sse>, _: &mut Context<Session<Sse>>) {}

    fn on_started(_: &mut Session<Sse>, _: Vec<(Topic, u64)>) {}
}

/// `retry:` in milliseconds, spread so that a node's clients do not all
/// come back in the same instant.
fn retry_ms() -> u64 {
    1_000 + rand::random::<u64>() % 4_000
}

/// `GET /v1/sse?topic=...&topic=...`
pub async fn handler(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let gate = match state.gate.enter() {
        Ok(gate) => gate,
        Err(ApiError::Draining { .. }) => return Ok(come_back_later("draining")),
        Err(ApiError::Unavailable(_)) => return Ok(come_back_later("full")),
        Err(other) => return Err(other),
    };
    let query = match SubscribeQuery::parse(&req, &state, false).await {
        Ok(query) => query,
        // A ticket that could not be looked up: the store is away.
        Err(ApiError::Unavailable(_) | ApiError::Store(_)) => {
            return Ok(come_back_later("unavailable"));
        }
        Err(refused) => return Err(refused),
    };
    let since = match req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.trim().is_empty())
    {
        Some(last) => Cursor::parse(last)
            .map_err(|e| ApiError::InvalidCursor(format!("Last-Event-ID is not a cursor: {e}")))?,
        None => query.since.clone(),
    };
    let settings = &state.sessions.settings;
    let (out, rx) = outbound::channel(settings.queue_events, settings.queue_bytes);
    let _ = out.push(frame(format!("retry: {}\n\n", retry_ms())).0, 0);
    let mut session = Session::new(
        Sse,
        out,
        Some(query.principal),
        state.sessions.clone(),
        gate,
    );
    let (ready, subscribed) = tokio::sync::oneshot::channel();
    session.ready = Some(ready);
    let topics = query.topics;
    let addr = Session::create(move |ctx| {
        // The hub handles exist once the actor has started; subscribe then.
        ctx.run_later(
            std::time::Duration::ZERO,
            move |session: &mut Session<Sse>, ctx| session.subscribe(topics, since, ctx),
        );
        session
    });
    // Answer once the subscriptions are in place: every event committed
    // after the client sees the response is delivered.
    if subscribed.await != Ok(true) {
        return Ok(come_back_later("unavailable"));
    }
    Ok(stream_response().streaming(body(rx, addr)))
}

/// The headers of every event stream.
fn stream_response() -> actix_web::HttpResponseBuilder {
    let mut response = HttpResponse::Ok();
    response
        .insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .insert_header((header::CONTENT_ENCODING, "identity"));
    response
}

/// The answer when this node cannot take the stream now (`reason`:
/// `draining`, `full`, `unavailable`): a `200` stream that only says
/// `retry:` and `event: drain`, then ends. A native `EventSource` gives up
/// for good on any status but `200`; this makes it reconnect by itself,
/// with the `Last-Event-ID` it holds, and the load balancer sends it to
/// another node.
fn come_back_later(reason: &'static str) -> HttpResponse {
    stream_response().body(format!(
        "retry: {}\n\nevent: drain\ndata: {}\n\n",
        retry_ms(),
        json!({ "reason": reason })
    ))
}

/// Tells the session when the response body is dropped: the client is gone.
struct Hangup(Addr<Session<Sse>>);

impl Drop for Hangup {
    fn drop(&mut self) {
        self.0.do_send(Close(CloseReason::Normal));
    }
}

/// The response body: queued frames, piece by piece.
fn body(
    rx: OutboundRx<SseFrame>,
    session: Addr<Session<Sse>>,
) -> impl futures_util::Stream<Item = Result<Bytes, actix_web::Error>> + 'static {
    futures_util::stream::unfold(
        (rx, VecDeque::<Bytes>::new(), Hangup(session)),
        |(mut rx, mut pending, hangup)| async move {
            loop {
                if let Some(piece) = pending.pop_front() {
                    if piece.is_empty() {
                        continue;
                    }
                    return Some((Ok(piece), (rx, pending, hangup)));
                }
                let SseFrame(pieces) = rx.next().await?;
                pending.extend(pieces);
            }
        },
    )
}
