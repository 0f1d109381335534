//! Server-Sent Events `/v1/sse`: one stream for several topics, each event's
//! `id:` the connection's whole cursor, so an `EventSource` resumes every
//! topic with the `Last-Event-ID` it sends by itself. Before any event,
//! `event: subscribed` says where each topic starts (its `id` that cursor).

use std::sync::Arc;

use actix::prelude::*;
use bytes::Bytes;
use serde_json::json;

use super::gate::Admission;
use super::outbound::{self, OutboundRx};
use super::{Close, CloseReason, Env, Session, Transport};
use crate::auth::Principal;
use crate::event::Encoded;
use crate::topic::{Cursor, Topic};

/// A frame: up to three pieces, so the shared event JSON is never copied.
pub struct SseFrame(pub [Bytes; 3]);

/// The SSE transport.
pub struct Sse {
    /// Told once the first subscriptions are in place: the response starts then.
    ready: Option<tokio::sync::oneshot::Sender<bool>>,
}

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

    fn on_started(session: &mut Session<Sse>, heads: Vec<(Topic, u64)>, since: &Cursor) {
        if heads.is_empty() {
            return;
        }
        let topics: Vec<&Topic> = heads.iter().map(|(t, _)| t).collect();
        let (heads, starts) = super::starts(&heads, since);
        // The id is where each topic starts, so a live subscription knows
        // its position before any event (and an `EventSource` resumes from
        // it after a cut).
        let (frame, size) = frame(format!(
            "id: {starts}\nevent: subscribed\ndata: {}\n\n",
            json!({"topics": topics, "heads": heads.to_string(), "cursor": starts.to_string()})
        ));
        // A full queue here is already being handled as a slow consumer.
        let _ = session.out.push(frame, size);
    }

    fn on_subscribed(&mut self, ok: bool) {
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(ok);
        }
    }
}

/// `retry:` in milliseconds, spread so that a node's clients do not all
/// come back in the same instant.
pub fn retry_ms() -> u64 {
    1_000 + rand::random::<u64>() % 4_000
}

/// Starts the session of an event stream for `principal` on `topics` from
/// `since`, with the handle through which its writer says the socket
/// stalled. The stream is returned once the subscriptions are in place
/// (every event committed after the client sees the response is
/// delivered); `None` when they could not be set up (the store is away).
pub async fn open(
    principal: Principal,
    topics: Vec<Topic>,
    since: Cursor,
    env: Arc<Env>,
    admission: Admission,
) -> Option<(
    impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + 'static,
    outbound::Stall,
)> {
    let settings = &env.settings;
    let (out, rx) = outbound::channel(settings.queue_events, settings.queue_bytes);
    let _ = out.push(frame(format!("retry: {}\n\n", retry_ms())).0, 0);
    let (ready, subscribed) = tokio::sync::oneshot::channel();
    let session = Session::new(
        Sse { ready: Some(ready) },
        out,
        Some(principal),
        env,
        admission,
    );
    let addr = Session::create(move |ctx| {
        // The hub handles exist once the actor has started; subscribe then.
        ctx.run_later(
            std::time::Duration::ZERO,
            move |session: &mut Session<Sse>, ctx| session.subscribe(topics, since, ctx),
        );
        session
    });
    if subscribed.await != Ok(true) {
        return None;
    }
    let stall = rx.stall();
    Some((body(rx, addr), stall))
}

/// Tells the session when the response body is dropped: the client is gone.
struct Hangup(Addr<Session<Sse>>);

impl Drop for Hangup {
    fn drop(&mut self) {
        self.0.do_send(Close(CloseReason::Normal));
    }
}

/// The response body: queued frames, piece by piece. A plain struct, so
/// an idle stream holds only its queue's end and the pieces of the frame
/// being sent.
struct Body {
    rx: OutboundRx<SseFrame>,
    /// The frame being sent, and how many of its pieces went.
    frame: [Bytes; 3],
    sent: usize,
    _hangup: Hangup,
}

impl futures_util::Stream for Body {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            while this.sent < this.frame.len() {
                let piece = std::mem::take(&mut this.frame[this.sent]);
                this.sent += 1;
                if !piece.is_empty() {
                    return std::task::Poll::Ready(Some(Ok(piece)));
                }
            }
            match std::task::ready!(this.rx.poll_next(cx)) {
                Some(SseFrame(pieces)) => {
                    this.frame = pieces;
                    this.sent = 0;
                }
                None => return std::task::Poll::Ready(None),
            }
        }
    }
}

fn body(
    rx: OutboundRx<SseFrame>,
    session: Addr<Session<Sse>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + 'static {
    Body {
        rx,
        frame: Default::default(),
        sent: 3,
        _hangup: Hangup(session),
    }
}
