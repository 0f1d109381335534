//! Connections. Each WebSocket and SSE connection is a [`Session`] actor
//! that owns its subscriptions, cursor, token and bounded outbound queue; the
//! transport only decides how frames look. Polling is a plain store read, or
//! a short-lived waiter registered with the hub.
//!
//! A session reacts to: a live event from the hub, a store read finishing, a
//! heartbeat tick, a frame from the client (WebSocket), and shutdown.

pub mod gate;
pub mod outbound;
pub mod poll;
pub mod sse;
pub mod subs;
pub mod ws;

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::HashMap;

use actix::prelude::*;
use parking_lot::Mutex;

use crate::auth::token::now_secs;
use crate::auth::{
    AuthError, Principal, Revocation, RevocationKind, Revocations, TokenError, TokenId, Verifier,
};
use crate::bus::{Bus, Control};
use crate::event::Encoded;
use crate::hub::{self, Deliver, Hubs, Member, Resync, SlowConsumer};
use crate::store::{Store, StoreError};
use crate::topic::{Cursor, Topic};
use gate::Ticket as GateTicket;
use outbound::Outbound;
use subs::{Action, PAGE_EVENTS, ReadRequest, Subs};

/// How long a store read waits before it is retried after a failure.
const READ_RETRY: Duration = Duration::from_secs(1);

/// Settings every session needs.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    pub heartbeat: Duration,
    pub queue_events: usize,
    pub queue_bytes: usize,
    pub max_topics: usize,
    pub max_frame_bytes: usize,
    pub leeway_secs: u64,
    /// How long a WebSocket may take to send its first `auth` frame.
    pub auth_timeout: Duration,
    /// `subscribe` and `unsubscribe` frames a WebSocket may send per second.
    pub max_subscription_ops_per_sec: u32,
}

/// What sessions share: the store, the hubs, the token verifier and the
/// revocations, the settings, and the node's list of open connections.
pub struct Shared {
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub hubs: Arc<Hubs>,
    pub verifier: Arc<Verifier>,
    pub revocations: Arc<Revocations>,
    pub settings: SessionSettings,
    pub connections: Connections,
    /// This node's acknowledgments on their way to the store.
    pub acks: Arc<crate::ack::Acks>,
}

impl Shared {
    /// Verifies a token (signature, claims, expiry) and checks that it is
    /// not revoked. Every credential of every route goes through here.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let principal = self.verifier.verify(token)?;
        self.admit(principal)
    }

    /// Checks that an already verified principal (a ticket's) still holds:
    /// its token has not expired and is not revoked.
    pub fn admit(&self, principal: Principal) -> Result<Principal, AuthError> {
        if principal.expired(self.settings.leeway_secs, now_secs()) {
            return Err(TokenError::Expired.into());
        }
        if self.revocations.is_revoked(&principal) {
            return Err(TokenError::Revoked.into());
        }
        Ok(principal)
    }

    /// Revokes `value` (a subject or a token id) as of this second: records
    /// it in the store, kept for `ttl_secs`, then applies it on this node at
    /// once, closing the connections it covers. Returns the second.
    pub async fn revoke(
        &self,
        kind: RevocationKind,
        value: String,
        ttl_secs: u64,
    ) -> Result<u64, StoreError> {
        let revoked_at_secs = now_secs();
        self.store
            .revoke(kind, &value, revoked_at_secs, revoked_at_secs + ttl_secs)
            .await?;
        let revocation = Revocation {
            kind,
            value,
            revoked_at_secs,
        };
        // The other nodes learn it at once from the bus, or from the store
        // within a heartbeat if the bus is away.
        if let Err(e) = self.bus.announce_revocation(&revocation).await {
            tracing::warn!(error = %e, "announcing a revocation on the bus failed; other nodes read it from the store within a heartbeat");
        }
        self.revocations.add(revocation);
        let closed = self.connections.close_revoked(&self.revocations);
        tracing::info!(%kind, closed, "revoked");
        Ok(revoked_at_secs)
    }
}

impl Control for Shared {
    fn revoked(&self, revocation: Revocation) {
        let kind = revocation.kind;
        self.revocations.add(revocation);
        let closed = self.connections.close_revoked(&self.revocations);
        tracing::info!(%kind, closed, "revoked by another node");
    }
}

/// One open connection: how to close it and whose token it holds.
struct Entry {
    close: Recipient<Close>,
    /// `None` until a WebSocket authenticates.
    token: Option<TokenId>,
    /// A pending long poll (told first when draining: it answers normally).
    long_poll: bool,
}

/// Every open connection of the node (sessions and pending long polls), so
/// that they can be told to close (drain, revocation).
#[derive(Default)]
pub struct Connections {
    open: Mutex<HashMap<u64, Entry>>,
}

impl Connections {
    /// Adds connection `id`, holding `token` if it has authenticated.
    pub fn add(&self, id: u64, close: Recipient<Close>, token: Option<TokenId>) {
        self.insert(id, close, token, false);
    }

    /// Adds pending long poll `id`, holding `token`.
    pub fn add_long_poll(&self, id: u64, close: Recipient<Close>, token: Option<TokenId>) {
        self.insert(id, close, token, true);
    }

    fn insert(&self, id: u64, close: Recipient<Close>, token: Option<TokenId>, long_poll: bool) {
        self.open.lock().insert(
            id,
            Entry {
                close,
                token,
                long_poll,
            },
        );
    }

    /// Records that connection `id` now holds `token` (a WebSocket `auth`).
    pub fn set_token(&self, id: u64, token: TokenId) {
        if let Some(entry) = self.open.lock().get_mut(&id) {
            entry.token = Some(token);
        }
    }

    /// Tells every connection whose token `revocations` covers to close as
    /// revoked. Returns how many were told.
    pub fn close_revoked(&self, revocations: &Revocations) -> usize {
        let revoked: Vec<Recipient<Close>> = self
            .open
            .lock()
            .values()
            .filter(|e| e.token.as_ref().is_some_and(|t| revocations.covers(t)))
            .map(|e| e.close.clone())
            .collect();
        for close in &revoked {
            close.do_send(Close(CloseReason::Revoked));
        }
        revoked.len()
    }

    /// Removes connection `id`.
    pub fn remove(&self, id: u64) {
        self.open.lock().remove(&id);
    }

    /// How many are open.
    pub fn len(&self) -> usize {
        self.open.lock().len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Handles to every open connection.
    pub fn all(&self) -> Vec<Recipient<Close>> {
        self.open.lock().values().map(|e| e.close.clone()).collect()
    }

    /// Every open connection with its id, pending long polls first: the
    /// order a draining node tells them to go.
    pub fn drain_order(&self) -> Vec<(u64, Recipient<Close>)> {
        let mut open: Vec<(bool, u64, Recipient<Close>)> = self
            .open
            .lock()
            .iter()
            .map(|(id, e)| (!e.long_poll, *id, e.close.clone()))
            .collect();
        open.sort_by_key(|(not_poll, id, _)| (*not_poll, *id));
        open.into_iter().map(|(_, id, close)| (id, close)).collect()
    }
}

/// Why a session ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The client stopped reading and its queue filled.
    SlowConsumer,
    /// The token expired.
    TokenExpired,
    /// The token was revoked.
    Revoked,
    /// No valid credentials (WebSocket: none in time, or a bad first `auth`).
    Unauthorized(String),
    /// A refreshed token allows none of the connection's topics.
    Forbidden,
    /// The node is going away.
    Draining,
    /// The client broke the protocol.
    Protocol(String),
    /// An inbound frame was over the limit.
    FrameTooLarge,
    /// The store could not be read.
    Unavailable,
    /// The client went away, or the session ended normally.
    Normal,
}

impl CloseReason {
    /// The machine-readable code (SSE `event: error`, logs).
    pub fn code(&self) -> &'static str {
        match self {
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::TokenExpired => "token_expired",
            CloseReason::Revoked => "revoked",
            CloseReason::Unauthorized(_) => "unauthorized",
            CloseReason::Forbidden => "forbidden",
            CloseReason::Draining => "draining",
            CloseReason::Protocol(_) => "protocol_error",
            CloseReason::FrameTooLarge => "frame_too_large",
            CloseReason::Unavailable => "unavailable",
            CloseReason::Normal => "normal",
        }
    }

    /// Human text.
    pub fn message(&self) -> String {
        match self {
            CloseReason::SlowConsumer => {
                "the client fell behind; resume from your cursor to lose nothing".into()
            }
            CloseReason::TokenExpired => "the token has expired".into(),
            CloseReason::Revoked => "the token has been revoked".into(),
            CloseReason::Unauthorized(m) | CloseReason::Protocol(m) => m.clone(),
            CloseReason::Forbidden => "the token allows none of this connection's topics".into(),
            CloseReason::Draining => "this node is going away; reconnect".into(),
            CloseReason::FrameTooLarge => "frame too large".into(),
            CloseReason::Unavailable => "the store is unavailable; reconnect later".into(),
            CloseReason::Normal => "bye".into(),
        }
    }
}

/// How a transport frames what a session sends.
pub trait Transport: Unpin + Sized + 'static {
    /// One queued frame.
    type Frame: Send + 'static;

    /// An event; `cursor` is the connection's cursor after it.
    fn event(&self, event: &Arc<Encoded>, cursor: &dyn Fn() -> Cursor) -> (Self::Frame, usize);
    /// A reset of `topic` to `from`; `cursor` as for events.
    fn reset(&self, topic: &Topic, from: u64, cursor: &dyn Fn() -> Cursor) -> (Self::Frame, usize);
    /// The heartbeat frame (WebSocket ping, SSE comment).
    fn heartbeat(&self) -> Self::Frame;
    /// The final frame for `reason`.
    fn close(&self, reason: &CloseReason) -> Self::Frame;
    /// Transport-specific reaction to a heartbeat tick (after the common checks).
    fn on_heartbeat(session: &mut Session<Self>, ctx: &mut Context<Session<Self>>);
    /// Transport-specific reaction to a topic's subscription being confirmed.
    fn on_started(session: &mut Session<Self>, heads: Vec<(Topic, u64)>);
    /// The transport's name, for logs and metrics.
    const NAME: &'static str;
}

/// One connection.
pub struct Session<T: Transport> {
    pub id: u64,
    pub transport: T,
    pub out: Outbound<T::Frame>,
    pub subs: Subs,
    pub principal: Option<Principal>,
    pub shared: Arc<Shared>,
    pub member: Option<Member>,
    /// When the client was last heard from (WebSocket).
    pub last_seen: Instant,
    /// Whether the `expiring` notice went out for the current token.
    pub expiring_sent: bool,
    pub closing: bool,
    pub opened: Instant,
    pub events_sent: u64,
    /// The connection's span, open for its lifetime.
    pub span: tracing::Span,
    pub close_reason: Option<CloseReason>,
    /// Told once the first subscription is in place (SSE answers then).
    pub ready: Option<tokio::sync::oneshot::Sender<bool>>,
    _gate: GateTicket,
}

impl<T: Transport> Session<T> {
    /// A session over `transport`, writing to `out`.
    pub fn new(
        transport: T,
        out: Outbound<T::Frame>,
        principal: Option<Principal>,
        shared: Arc<Shared>,
        gate: GateTicket,
    ) -> Session<T> {
        let id = hub::connection_id();
        Session {
            id,
            span: crate::telemetry::trace::connection_span(id, T::NAME),
            transport,
            out,
            subs: Subs::new(),
            principal,
            shared,
            member: None,
            last_seen: Instant::now(),
            expiring_sent: false,
            closing: false,
            opened: Instant::now(),
            events_sent: 0,
            close_reason: None,
            ready: None,
            _gate: gate,
        }
    }

    /// Queues a frame; a full queue closes the session as a slow consumer.
    pub fn send(&mut self, frame: T::Frame, size: usize, ctx: &mut Context<Self>) -> bool {
        if self.closing {
            return false;
        }
        match self.out.push(frame, size) {
            Ok(()) => true,
            Err(outbound::Full::Full) => {
                self.close(CloseReason::SlowConsumer, ctx);
                false
            }
            Err(outbound::Full::Closed) => {
                self.close(CloseReason::Normal, ctx);
                false
            }
        }
    }

    /// Ends the session with `reason`: the final frame jumps the queue.
    pub fn close(&mut self, reason: CloseReason, ctx: &mut Context<Self>) {
        if self.closing {
            return;
        }
        self.closing = true;
        let frame = self.transport.close(&reason);
        self.out.finish(frame);
        self.close_reason = Some(reason);
        ctx.stop();
    }

    /// Registers `topics` with the hub, then reads their heads and starts
    /// each at `since` (or its head).
    pub fn subscribe(&mut self, topics: Vec<Topic>, since: Cursor, ctx: &mut Context<Self>) {
        if topics.is_empty() {
            return;
        }
        // A head read that comes back after the topic was unsubscribed (and
        // perhaps subscribed again) must not start the new subscription.
        let generations: Vec<u64> = topics.iter().map(|t| self.subs.add(t.clone())).collect();
        let ready = match &self.member {
            Some(member) => hub::register(&self.shared.hubs, self.id, &topics, member),
            None => hub::Ready::now(),
        };
        let store = self.shared.store.clone();
        let read_topics = topics.clone();
        let ready_limit = self.shared.settings.heartbeat;
        let heads = async move {
            ready.wait(ready_limit).await;
            store.heads(&read_topics).await
        };
        ctx.spawn(
            heads
                .into_actor(self)
                .map(move |heads, session, ctx| match heads {
                    Ok(heads) => {
                        let heads: Vec<(Topic, u64)> = topics.into_iter().zip(heads).collect();
                        session.shared.hubs.saw_heads(&heads);
                        let started: Vec<(Topic, u64)> = heads
                            .iter()
                            .zip(&generations)
                            .filter(|((t, _), g)| session.subs.is_current(t, **g))
                            .map(|(h, _)| h.clone())
                            .collect();
                        T::on_started(session, started.clone());
                        for ((topic, head), generation) in heads.into_iter().zip(generations) {
                            let (actions, read) =
                                session
                                    .subs
                                    .start(&topic, generation, head, since.get(&topic));
                            session.apply(actions, ctx);
                            if let Some(read) = read {
                                session.read(read, ctx);
                            }
                        }
                        if let Some(ready) = session.ready.take() {
                            let _ = ready.send(true);
                        }
                    }
                    Err(e) => {
                        if let Some(ready) = session.ready.take() {
                            let _ = ready.send(false);
                        }
                        tracing::warn!(error = %e, "reading heads failed; closing the connection");
                        session.close(CloseReason::Unavailable, ctx);
                    }
                }),
        );
    }

    /// Stops `topics`.
    pub fn unsubscribe(&mut self, topics: &[Topic]) {
        for topic in topics {
            self.subs.remove(topic);
        }
        hub::unregister(self.id, topics);
    }

    /// Sends what the subscriptions decided.
    pub fn apply(&mut self, actions: impl IntoIterator<Item = Action>, ctx: &mut Context<Self>) {
        for action in actions {
            // The cursor as of this action: the subscriptions may already
            // stand further on (a whole page was read at once).
            let (topic, position) = match &action {
                Action::Event(event) => (&event.topic, event.seq),
                Action::Reset { topic, from } => (topic, from - 1),
            };
            let subs = &self.subs;
            let cursor = || {
                let mut cursor = subs.cursor();
                cursor.set(topic.clone(), position);
                cursor
            };
            let (frame, size) = match &action {
                Action::Event(event) => self.transport.event(event, &cursor),
                Action::Reset { topic, from } => self.transport.reset(topic, *from, &cursor),
            };
            if !self.send(frame, size, ctx) {
                return;
            }
            match &action {
                Action::Event(event) => {
                    self.events_sent += 1;
                    crate::telemetry::delivered(T::NAME, self.id, event);
                }
                Action::Reset { .. } => crate::telemetry::metrics::resets_sent(T::NAME, 1),
            }
        }
    }

    /// Reads the store for `request` once the queue has room for a page.
    pub fn read(&mut self, request: ReadRequest, ctx: &mut Context<Self>) {
        // A page takes at most half the queue, in items and in bytes, and is
        // read once the queue is at most half full: replay never crowds out
        // live events, nor trips the slow-consumer bound by itself.
        let settings = &self.shared.settings;
        let half_items = (settings.queue_events / 2).max(1);
        let half_bytes = settings.queue_bytes / 2;
        let room = self
            .out
            .until_below(settings.queue_events - half_items, half_bytes);
        let page = PAGE_EVENTS.min(half_items);
        let store = self.shared.store.clone();
        let req = request.clone();
        let fut = async move {
            room.await;
            let mut read = store.read_since(&req.topic, req.after, page).await?;
            let mut bytes = 0;
            let keep = read
                .events
                .iter()
                .take_while(|e| {
                    bytes += e.data.get().len() + 128;
                    bytes <= half_bytes
                })
                .count()
                .max(1);
            read.events.truncate(keep);
            Ok::<_, crate::store::StoreError>(read)
        };
        ctx.spawn(fut.into_actor(self).map(move |read, session, ctx| {
            let read = match read {
                Ok(read) => Some(read),
                Err(e) => {
                    tracing::warn!(error = %e, topic = %request.topic, "store read failed; retrying");
                    None
                }
            };
            let failed = read.is_none();
            let (actions, next) = session.subs.on_read(&request, read);
            let sent_before = session.events_sent;
            session.apply(actions, ctx);
            crate::telemetry::metrics::replayed(T::NAME, session.events_sent - sent_before);
            if failed {
                ctx.run_later(READ_RETRY, move |session, ctx| {
                    if let Some(next) = session.subs.retry(&request) {
                        session.read(next, ctx);
                    }
                });
            } else if let Some(next) = next {
                session.read(next, ctx);
            }
        }));
    }

    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        if self.out.is_closed() {
            self.close(CloseReason::Normal, ctx);
            return;
        }
        if let Some(principal) = &self.principal {
            let now = now_secs();
            if principal.expired(self.shared.settings.leeway_secs, now) {
                self.close(CloseReason::TokenExpired, ctx);
                return;
            }
            if self.shared.revocations.is_revoked(principal) {
                self.close(CloseReason::Revoked, ctx);
                return;
            }
        }
        crate::telemetry::metrics::queue_depth(self.out.high_water());
        let frame = self.transport.heartbeat();
        if !self.send(frame, 0, ctx) {
            return;
        }
        T::on_heartbeat(self, ctx);
    }
}

impl<T: Transport> Actor for Session<T> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.shared.settings.queue_events.max(16));
        let addr = ctx.address();
        self.shared.connections.add(
            self.id,
            addr.clone().recipient(),
            self.principal.as_ref().map(TokenId::from),
        );
        self.member = Some(Member {
            deliver: addr.clone().recipient(),
            resync: addr.clone().recipient(),
            slow: addr.recipient(),
        });
        ctx.run_interval(self.shared.settings.heartbeat, |session, ctx| {
            session.heartbeat(ctx)
        });
        crate::telemetry::metrics::opened(T::NAME);
        tracing::info!(
            parent: &self.span,
            connection = self.id,
            transport = T::NAME,
            sub = self.principal.as_ref().map(|p| &*p.sub),
            "connection opened"
        );
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.shared.connections.remove(self.id);
        let topics: Vec<Topic> = self.subs.topics().cloned().collect();
        hub::unregister(self.id, &topics);
        let reason = self.close_reason.clone().unwrap_or(CloseReason::Normal);
        crate::telemetry::metrics::closed(T::NAME, reason.code());
        crate::telemetry::metrics::queue_depth(self.out.high_water());
        self.span.record("reason", reason.code());
        tracing::info!(
            parent: &self.span,
            connection = self.id,
            transport = T::NAME,
            sub = self.principal.as_ref().map(|p| &*p.sub),
            topics = topics.len(),
            duration_ms = self.opened.elapsed().as_millis() as u64,
            events_sent = self.events_sent,
            bytes_sent = self.out.total_bytes(),
            queue_high_water = self.out.high_water(),
            reason = reason.code(),
            "connection closed"
        );
    }
}

impl<T: Transport> Handler<Deliver> for Session<T> {
    type Result = ();

    fn handle(&mut self, Deliver(event): Deliver, ctx: &mut Self::Context) {
        let (action, read) = self.subs.on_live(&event);
        if let Some(action) = action {
            self.apply(Some(action), ctx);
        }
        if let Some(read) = read {
            self.read(read, ctx);
        }
    }
}

impl<T: Transport> Handler<Resync> for Session<T> {
    type Result = ();

    fn handle(&mut self, _: Resync, ctx: &mut Self::Context) {
        for read in self.subs.resync() {
            self.read(read, ctx);
        }
    }
}

impl<T: Transport> Handler<SlowConsumer> for Session<T> {
    type Result = ();

    fn handle(&mut self, _: SlowConsumer, ctx: &mut Self::Context) {
        self.close(CloseReason::SlowConsumer, ctx);
    }
}

/// Ends a session (drain, revocation).
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct Close(pub CloseReason);

impl<T: Transport> Handler<Close> for Session<T> {
    type Result = ();

    fn handle(&mut self, Close(reason): Close, ctx: &mut Self::Context) {
        self.close(reason, ctx);
    }
}
