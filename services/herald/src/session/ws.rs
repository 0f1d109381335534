//! WebSocket `/v1/ws`: JSON text frames in both directions, many topics per
//! connection, in-band `auth`, protocol pings on the heartbeat.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use bytestring::ByteString;
use futures_util::Stream;
use serde::Deserialize;
use serde_json::json;

use super::gate::{Admission, Refused};
use super::outbound::{self, OutboundRx};
use super::{CloseReason, Env, Session, Transport};
use crate::auth::token::now_secs;
use crate::auth::{Principal, TokenId};
use crate::event::Encoded;
use crate::http::front::ws::{Message, Received, code};
use crate::topic::{Cursor, Topic};

/// A frame on its way to the client.
pub enum WsFrame {
    Text(ByteString),
    Ping,
    Pong(Bytes),
    /// The last frame: its code (none for an empty close) and reason.
    Close(Option<u16>, String),
}

/// The WebSocket transport: its budget of subscription frames, and what it
/// knows of the client's liveness and token.
pub struct Ws {
    ops: OpBudget,
    /// When the client was last heard from.
    last_seen: Instant,
    /// Whether the `expiring` notice went out for the current token.
    expiring_sent: bool,
}

/// A token bucket for `subscribe` and `unsubscribe` frames: each would read
/// the store and change the hub, so a client cannot make this connection
/// hammer them.
struct OpBudget {
    per_sec: f64,
    tokens: f64,
    at: std::time::Instant,
}

impl OpBudget {
    fn new(per_sec: u32) -> OpBudget {
        OpBudget {
            per_sec: f64::from(per_sec),
            tokens: f64::from(per_sec),
            at: std::time::Instant::now(),
        }
    }

    /// Takes one frame's worth, if there is any.
    fn take(&mut self) -> bool {
        let now = std::time::Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * self.per_sec;
        self.tokens = (self.tokens + refill).min(self.per_sec);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn text(value: serde_json::Value) -> (WsFrame, usize) {
    let s = value.to_string();
    let len = s.len();
    (WsFrame::Text(ByteString::from(s)), len)
}

/// An `error` frame.
fn error_frame(code: &str, topics: &[String], message: &str) -> (WsFrame, usize) {
    if topics.is_empty() {
        text(json!({"op": "error", "code": code, "message": message}))
    } else {
        text(json!({"op": "error", "code": code, "topics": topics, "message": message}))
    }
}

impl Transport for Ws {
    type Frame = WsFrame;
    const NAME: &'static str = "ws";

    fn event(&self, event: &Arc<Encoded>, _: &dyn Fn() -> Cursor) -> (WsFrame, usize) {
        (WsFrame::Text(event.ws_frame.clone()), event.ws_frame.len())
    }

    fn reset(&self, topic: &Topic, from: u64, _: &dyn Fn() -> Cursor) -> (WsFrame, usize) {
        text(json!({"op": "reset", "topic": topic, "from": from}))
    }

    fn heartbeat(&self) -> WsFrame {
        WsFrame::Ping
    }

    fn close(&self, reason: &CloseReason) -> WsFrame {
        let code = match reason {
            CloseReason::SlowConsumer => code::SLOW_CONSUMER,
            CloseReason::TokenExpired | CloseReason::Revoked | CloseReason::Unauthorized(_) => {
                code::UNAUTHORIZED
            }
            CloseReason::Forbidden => code::FORBIDDEN,
            CloseReason::Draining => code::SERVICE_RESTART,
            CloseReason::Protocol(_) => code::HERALD_PROTOCOL,
            CloseReason::Violation(code, _) => *code,
            CloseReason::FrameTooLarge => code::TOO_BIG,
            CloseReason::Unavailable => code::INTERNAL_ERROR,
            CloseReason::Full => code::TRY_AGAIN_LATER,
            CloseReason::Normal => code::NORMAL,
            // The client's close, answered with its own code.
            CloseReason::ClientClosed(code) => return WsFrame::Close(*code, String::new()),
        };
        WsFrame::Close(Some(code), reason.message())
    }

    fn on_heartbeat(session: &mut Session<Ws>, ctx: &mut Context<Session<Ws>>) {
        let heartbeat = session.env.settings.heartbeat;
        if session.transport.last_seen.elapsed() > heartbeat * 2 + Duration::from_secs(5) {
            session.close(CloseReason::Protocol("no answer to pings".into()), ctx);
            return;
        }
        // Warn once when the token has less than two heartbeats left.
        if let Some(principal) = &session.principal
            && !session.transport.expiring_sent
        {
            let left = principal
                .exp
                .saturating_add(session.env.settings.leeway_secs)
                .saturating_sub(now_secs());
            if left < 2 * heartbeat.as_secs().max(1) {
                session.transport.expiring_sent = true;
                let (frame, size) = text(json!({"op": "expiring", "in": left}));
                session.send(frame, size, ctx);
            }
        }
    }

    fn on_started(session: &mut Session<Ws>, heads: Vec<(Topic, u64)>, since: &Cursor) {
        if heads.is_empty() {
            return;
        }
        let topics: Vec<&Topic> = heads.iter().map(|(t, _)| t).collect();
        let (heads, starts) = super::starts(&heads, since);
        let (frame, size) = text(json!({
            "op": "subscribed", "topics": topics, "heads": heads.to_string(),
            "cursor": starts.to_string()
        }));
        // A full queue here is already being handled as a slow consumer.
        let _ = session.out.push(frame, size);
    }
}

/// Starts the session of a WebSocket: the connection decodes the client's
/// frames into `messages` and takes the session's from the queue returned.
/// `principal` when the request carried credentials, else the client must
/// send an `auth` frame within the auth timeout.
pub fn start(
    messages: impl Stream<Item = Received> + 'static,
    principal: Option<Principal>,
    env: Arc<Env>,
    admission: Admission,
) -> OutboundRx<WsFrame> {
    let (out, rx) = outbound::channel(env.settings.queue_events, env.settings.queue_bytes);
    run(out, messages, principal, env, admission);
    rx
}

fn run(
    out: outbound::Outbound<WsFrame>,
    messages: impl Stream<Item = Received> + 'static,
    principal: Option<Principal>,
    env: Arc<Env>,
    admission: Admission,
) {
    let authenticated = principal.is_some();
    let ws_transport = Ws {
        ops: OpBudget::new(env.settings.max_subscription_ops_per_sec),
        last_seen: Instant::now(),
        expiring_sent: false,
    };
    let session = Session::new(ws_transport, out, principal, env, admission);
    Session::create(move |ctx| {
        ctx.add_stream(messages);
        if authenticated {
            let exp = session.principal.as_ref().map(|p| p.exp).unwrap_or(0);
            let (frame, size) = text(json!({"op": "authenticated", "exp": exp}));
            let _ = session.out.push(frame, size);
        } else {
            ctx.run_later(session.env.settings.auth_timeout, |session, ctx| {
                if session.principal.is_none() {
                    session.close(
                        CloseReason::Unauthorized("no auth frame in time".into()),
                        ctx,
                    );
                }
            });
        }
        session
    });
}

/// What a client may send.
#[derive(Deserialize)]
struct OpOnly {
    op: String,
}

/// `{"op":"subscribe","topics":[...],"since":"..."}`
#[derive(Deserialize)]
pub struct SubscribeOp {
    pub topics: Vec<String>,
    #[serde(default)]
    pub since: Option<String>,
    /// `"ack"`: resume from the subscriber's acknowledged positions.
    #[serde(default)]
    pub resume: Option<String>,
}

/// `{"op":"unsubscribe","topics":[...]}`
#[derive(Deserialize)]
pub struct UnsubscribeOp {
    pub topics: Vec<String>,
}

/// `{"op":"auth","token":"..."}`
#[derive(Deserialize)]
pub struct AuthOp {
    pub token: String,
}

/// A client frame, decoded (nothing in it is checked yet).
pub enum ClientOp {
    Subscribe(SubscribeOp),
    Unsubscribe(UnsubscribeOp),
    Auth(AuthOp),
    Ack(super::ack::AckOp),
    Ping,
    /// An `op` Herald does not know.
    Unknown(String),
}

/// Why a client frame could not be decoded.
#[derive(Debug)]
pub enum FrameError {
    /// Not a JSON object with a string `op`.
    NoOp,
    /// A known `op` whose other fields do not fit.
    Body {
        op: &'static str,
        error: serde_json::Error,
    },
}

/// Decodes a text frame from a client.
pub fn decode_frame(text: &str) -> Result<ClientOp, FrameError> {
    let OpOnly { op } = serde_json::from_str::<OpOnly>(text).map_err(|_| FrameError::NoOp)?;
    let body = |op: &'static str| move |error| FrameError::Body { op, error };
    Ok(match op.as_str() {
        "subscribe" => ClientOp::Subscribe(serde_json::from_str(text).map_err(body("subscribe"))?),
        "unsubscribe" => {
            ClientOp::Unsubscribe(serde_json::from_str(text).map_err(body("unsubscribe"))?)
        }
        "auth" => ClientOp::Auth(serde_json::from_str(text).map_err(body("auth"))?),
        "ack" => ClientOp::Ack(serde_json::from_str(text).map_err(body("ack"))?),
        "ping" => ClientOp::Ping,
        _ => ClientOp::Unknown(op),
    })
}

impl StreamHandler<Received> for Session<Ws> {
    fn handle(&mut self, msg: Received, ctx: &mut Self::Context) {
        self.transport.last_seen = Instant::now();
        match msg {
            Ok(Message::Text(text)) => self.on_text(&text, ctx),
            Ok(Message::Binary(_)) if self.principal.is_none() => self.close(
                CloseReason::Unauthorized(
                    r#"the first frame must be {"op":"auth","token":"..."}"#.into(),
                ),
                ctx,
            ),
            Ok(Message::Binary(_)) => self.reply_error(
                "invalid_frame",
                &[],
                "frames are JSON text; binary frames are not understood",
                ctx,
            ),
            Ok(Message::Ping(payload)) => {
                self.send(WsFrame::Pong(payload), 0, ctx);
            }
            Ok(Message::Pong(_)) => {}
            // Answered with the same code; the connection then waits for
            // nothing more.
            Ok(Message::Close(code)) => self.close(CloseReason::ClientClosed(code), ctx),
            Err(violation) if violation.code == code::TOO_BIG => {
                self.close(CloseReason::FrameTooLarge, ctx)
            }
            Err(violation) => self.close(
                CloseReason::Violation(violation.code, violation.reason.into()),
                ctx,
            ),
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        // The client's side of the socket is gone.
        self.gone(ctx);
    }
}

impl Session<Ws> {
    fn reply(&mut self, value: serde_json::Value, ctx: &mut Context<Self>) {
        let (frame, size) = text(value);
        self.send(frame, size, ctx);
    }

    fn reply_error(
        &mut self,
        code: &str,
        topics: &[String],
        message: &str,
        ctx: &mut Context<Self>,
    ) {
        let (frame, size) = error_frame(code, topics, message);
        self.send(frame, size, ctx);
    }

    fn on_text(&mut self, text: &str, ctx: &mut Context<Self>) {
        let frame = decode_frame(text);
        if self.principal.is_none() {
            match &frame {
                Err(FrameError::NoOp) => {
                    return self.close(CloseReason::Unauthorized("authenticate first".into()), ctx);
                }
                Ok(ClientOp::Auth(_)) | Err(FrameError::Body { op: "auth", .. }) => {}
                _ => {
                    return self.close(
                        CloseReason::Unauthorized(
                            r#"the first frame must be {"op":"auth","token":"..."}"#.into(),
                        ),
                        ctx,
                    );
                }
            }
        }
        let subscription_op = matches!(
            frame,
            Ok(ClientOp::Subscribe(_) | ClientOp::Unsubscribe(_))
                | Err(FrameError::Body {
                    op: "subscribe" | "unsubscribe",
                    ..
                })
        );
        if subscription_op && !self.transport.ops.take() {
            let limit = self.env.settings.max_subscription_ops_per_sec;
            return self.reply_error(
                "rate_limited",
                &[],
                &format!(
                    "at most {limit} subscribe and unsubscribe frames per second; frame ignored"
                ),
                ctx,
            );
        }
        match frame {
            Err(FrameError::NoOp) => self.reply_error(
                "invalid_frame",
                &[],
                r#"frames are JSON objects with an "op""#,
                ctx,
            ),
            Err(FrameError::Body { op, error }) => {
                if self.principal.is_none() {
                    self.close(CloseReason::Unauthorized(format!("{op}: {error}")), ctx);
                } else {
                    self.reply_error("invalid_frame", &[], &format!("{op}: {error}"), ctx);
                }
            }
            Ok(ClientOp::Subscribe(op)) => self.on_subscribe(op, ctx),
            Ok(ClientOp::Unsubscribe(op)) => self.on_unsubscribe(op, ctx),
            Ok(ClientOp::Auth(op)) => self.on_auth(op, ctx),
            Ok(ClientOp::Ack(op)) => self.on_ack(op, ctx),
            Ok(ClientOp::Ping) => self.reply(json!({"op": "pong"}), ctx),
            Ok(ClientOp::Unknown(other)) => {
                let other: String = other.chars().take(64).collect();
                self.reply_error("unknown_op", &[], &format!("unknown op {other:?}"), ctx);
            }
        }
    }

    fn on_subscribe(&mut self, op: SubscribeOp, ctx: &mut Context<Self>) {
        let since = match op.since.as_deref().map(Cursor::parse).transpose() {
            Ok(since) => since.unwrap_or_default(),
            Err(e) => return self.reply_error("invalid_cursor", &[], &e.to_string(), ctx),
        };
        let from_acks = match super::ack::resume_from_acks(op.resume.as_deref()) {
            Ok(from_acks) => from_acks,
            Err(message) => return self.reply_error("invalid_frame", &[], message, ctx),
        };
        let mut invalid = Vec::new();
        let mut valid: Vec<Topic> = Vec::new();
        for text in op.topics {
            match Topic::parse(&text) {
                Ok(topic) if !valid.contains(&topic) => valid.push(topic),
                Ok(_) => {}
                Err(_) => invalid.push(text.chars().take(300).collect::<String>()),
            }
        }
        if !invalid.is_empty() {
            self.reply_error(
                "invalid_topic",
                &invalid,
                "a topic is 1 to 255 bytes of dot-separated [A-Za-z0-9_-] segments",
                ctx,
            );
        }
        let fresh: Vec<Topic> = valid
            .iter()
            .filter(|t| !self.subs.contains(t))
            .cloned()
            .collect();
        let max = self.env.settings.max_topics;
        if self.subs.len() + fresh.len() > max {
            let topics: Vec<String> = fresh.iter().map(Topic::to_string).collect();
            return self.reply_error(
                "too_many_topics",
                &topics,
                &format!("a connection holds at most {max} topics"),
                ctx,
            );
        }
        let principal = self.principal.as_ref().expect("checked: authenticated");
        let (allowed, forbidden): (Vec<Topic>, Vec<Topic>) =
            fresh.into_iter().partition(|t| principal.may_subscribe(t));
        if !forbidden.is_empty() {
            let topics: Vec<String> = forbidden.iter().map(Topic::to_string).collect();
            self.reply_error(
                "forbidden",
                &topics,
                "the token may not subscribe to these topics",
                ctx,
            );
        }
        let existing: Vec<Topic> = valid
            .into_iter()
            .filter(|t| self.subs.contains(t))
            .collect();
        if !existing.is_empty() {
            // Already subscribed: confirmed as they stand.
            let cursor = self.subs.cursor();
            let mut heads = Cursor::new();
            for t in &existing {
                heads.set(t.clone(), cursor.get(t).unwrap_or(0));
            }
            self.reply(
                json!({"op": "subscribed", "topics": existing, "heads": heads.to_string()}),
                ctx,
            );
        }
        if from_acks {
            return self.subscribe_from_acks(allowed, since, ctx);
        }
        self.subscribe(allowed, since, ctx);
    }

    fn on_unsubscribe(&mut self, op: UnsubscribeOp, ctx: &mut Context<Self>) {
        let topics: Vec<Topic> = op
            .topics
            .iter()
            .filter_map(|t| Topic::parse(t).ok())
            .filter(|t| self.subs.contains(t))
            .collect();
        self.unsubscribe(&topics);
        self.reply(json!({"op": "unsubscribed", "topics": topics}), ctx);
    }

    fn on_auth(&mut self, op: AuthOp, ctx: &mut Context<Self>) {
        let verified = self.env.access.verify(&op.token);
        let principal = match verified {
            Ok(p) => p,
            Err(e) => {
                if self.principal.is_none() {
                    return self.close(CloseReason::Unauthorized(e.to_string()), ctx);
                }
                // A refused refresh keeps the connection, but counts.
                crate::telemetry::metrics::auth_failure(e.code());
                return self.reply_error(e.code(), &[], &e.to_string(), ctx);
            }
        };
        // The first credentials: the connection takes its place at the gate.
        if self.admission.is_waiting() {
            match self.admission.admit() {
                Ok(()) => {}
                Err(Refused::Draining) => return self.close(CloseReason::Draining, ctx),
                Err(Refused::Full(_) | Refused::TooManyWaiting(_)) => {
                    return self.close(CloseReason::Full, ctx);
                }
            }
        }
        // A narrower token drops what it no longer allows.
        let dropped: Vec<Topic> = self
            .subs
            .topics()
            .filter(|t| !principal.may_subscribe(t))
            .cloned()
            .collect();
        let had_topics = !self.subs.is_empty();
        let exp = principal.exp;
        self.env
            .connections
            .set_token(self.id, TokenId::from(&principal));
        self.principal = Some(principal);
        self.transport.expiring_sent = false;
        self.reply(json!({"op": "authenticated", "exp": exp}), ctx);
        if !dropped.is_empty() {
            self.unsubscribe(&dropped);
            let topics: Vec<String> = dropped.iter().map(Topic::to_string).collect();
            self.reply_error(
                "forbidden",
                &topics,
                "the new token does not allow these topics",
                ctx,
            );
            if had_topics && self.subs.is_empty() {
                self.close(CloseReason::Forbidden, ctx);
            }
        }
    }
}
