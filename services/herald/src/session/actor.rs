//! One connection as an actor: a [`Session`] owns its subscriptions,
//! cursor, token and bounded outbound queue; its [`Transport`] decides how
//! frames look and holds what only that transport needs.
//!
//! A session reacts to: a live event from the hub, a store read finishing,
//! a heartbeat tick, a frame from the client (WebSocket), and [`Close`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::Env;
use super::gate::Admission;
use super::outbound::{self, Outbound};
use super::subs::{Action, PAGE_EVENTS, ReadRequest, Subs};
use crate::auth::{Principal, TokenError, TokenId};
use crate::close::CloseReason;
use crate::event::Encoded;
use crate::hub::{self, Deliver, Member, Resync, SlowConsumer};
use crate::topic::{Cursor, Topic};

/// How long a store read waits before it is retried after a failure.
const READ_RETRY: Duration = Duration::from_secs(1);

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
    /// Transport-specific reaction to topics' subscriptions being confirmed:
    /// each topic's head, and `since`, the positions the client asked for.
    fn on_started(session: &mut Session<Self>, heads: Vec<(Topic, u64)>, since: &Cursor);
    /// The first subscriptions are in place (`true`), or could not be set up.
    fn on_subscribed(&mut self, _ok: bool) {}
    /// The transport's name, for logs and metrics.
    const NAME: &'static str;
}

/// Whether a session still sends, or is on its way out and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Open,
    Closing(CloseReason),
}

/// One connection.
pub struct Session<T: Transport> {
    pub id: u64,
    pub transport: T,
    pub out: Outbound<T::Frame>,
    pub subs: Subs,
    pub principal: Option<Principal>,
    pub env: Arc<Env>,
    pub member: Option<Member>,
    pub state: State,
    pub opened: Instant,
    pub events_sent: u64,
    /// The connection's span, open for its lifetime.
    pub span: tracing::Span,
    /// Its place at the gate: a connection's, or (a WebSocket waiting for
    /// its `auth` frame) the waiting room's.
    pub admission: Admission,
}

impl<T: Transport> Session<T> {
    /// A session over `transport`, writing to `out`.
    pub fn new(
        transport: T,
        out: Outbound<T::Frame>,
        principal: Option<Principal>,
        env: Arc<Env>,
        admission: Admission,
    ) -> Session<T> {
        let id = hub::connection_id();
        Session {
            id,
            span: crate::telemetry::trace::connection_span(id, T::NAME),
            transport,
            out,
            subs: Subs::new(),
            principal,
            env,
            member: None,
            state: State::Open,
            opened: Instant::now(),
            events_sent: 0,
            admission,
        }
    }

    /// Queues a frame; a full queue closes the session as a slow consumer.
    pub fn send(&mut self, frame: T::Frame, size: usize, ctx: &mut Context<Self>) -> bool {
        self.send_held(frame, size, None, ctx)
    }

    /// [`send`](Self::send) for a live event, with its `ticket` on the
    /// thread's books (given back once the socket takes the frame).
    fn send_held(
        &mut self,
        frame: T::Frame,
        size: usize,
        ticket: Option<hub::Ticket>,
        ctx: &mut Context<Self>,
    ) -> bool {
        if self.is_closing() {
            return false;
        }
        match self.out.push_held(frame, size, ticket) {
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

    /// Whether the session is on its way out.
    pub fn is_closing(&self) -> bool {
        self.state != State::Open
    }

    /// Ends the session with `reason`: the final frame jumps the queue.
    pub fn close(&mut self, reason: CloseReason, ctx: &mut Context<Self>) {
        if self.is_closing() {
            return;
        }
        let frame = self.transport.close(&reason);
        self.out.finish(frame);
        self.state = State::Closing(reason);
        ctx.stop();
    }

    /// Ends the session without a final frame: the client is gone.
    pub fn gone(&mut self, ctx: &mut Context<Self>) {
        if !self.is_closing() {
            self.state = State::Closing(CloseReason::Normal);
        }
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
            Some(member) => hub::register(&self.env.hubs, self.id, &topics, member),
            None => hub::Ready::now(),
        };
        let store = self.env.store.clone();
        let read_topics = topics.clone();
        let ready_limit = self.env.settings.heartbeat;
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
                        session.env.hubs.saw_heads(&heads);
                        let started: Vec<(Topic, u64)> = heads
                            .iter()
                            .zip(&generations)
                            .filter(|((t, _), g)| session.subs.is_current(t, **g))
                            .map(|(h, _)| h.clone())
                            .collect();
                        T::on_started(session, started.clone(), &since);
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
                        session.transport.on_subscribed(true);
                    }
                    Err(e) => {
                        session.transport.on_subscribed(false);
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
            if !self.apply_one(action, None, ctx) {
                return;
            }
        }
    }

    /// Sends one action (a live event's with its `ticket`); `false` once
    /// the session no longer sends.
    fn apply_one(
        &mut self,
        action: Action,
        ticket: Option<hub::Ticket>,
        ctx: &mut Context<Self>,
    ) -> bool {
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
        if !self.send_held(frame, size, ticket, ctx) {
            return false;
        }
        match &action {
            Action::Event(event) => {
                self.events_sent += 1;
                crate::telemetry::delivered(T::NAME, self.id, event);
            }
            Action::Reset { .. } => crate::telemetry::metrics::resets_sent(T::NAME, 1),
        }
        true
    }

    /// Reads the store for `request` once the queue has room for a page.
    pub fn read(&mut self, request: ReadRequest, ctx: &mut Context<Self>) {
        // A page takes at most half the queue, in items and in bytes, and is
        // read once the queue is at most half full: replay never crowds out
        // live events, nor trips the slow-consumer bound by itself.
        let settings = &self.env.settings;
        let half_items = (settings.queue_events / 2).max(1);
        let half_bytes = settings.queue_bytes / 2;
        let room = self
            .out
            .until_below(settings.queue_events - half_items, half_bytes);
        let page = PAGE_EVENTS.min(half_items);
        let store = self.env.store.clone();
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
            match self.env.access.recheck(principal) {
                Ok(()) => {}
                Err(TokenError::Revoked) => return self.close(CloseReason::Revoked, ctx),
                Err(_) => return self.close(CloseReason::TokenExpired, ctx),
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
        ctx.set_mailbox_capacity(self.env.settings.queue_events.max(16));
        let addr = ctx.address();
        self.env.connections.add(
            self.id,
            addr.clone().recipient(),
            self.principal.as_ref().map(TokenId::from),
        );
        self.member = Some(Member {
            deliver: addr.clone().recipient(),
            resync: addr.clone().recipient(),
            slow: addr.recipient(),
        });
        ctx.run_interval(self.env.settings.heartbeat, |session, ctx| {
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
        self.env.connections.remove(self.id);
        let topics: Vec<Topic> = self.subs.topics().cloned().collect();
        hub::unregister(self.id, &topics);
        let reason = match &self.state {
            State::Closing(reason) => reason.clone(),
            State::Open => CloseReason::Normal,
        };
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

    fn handle(&mut self, Deliver { event, ticket }: Deliver, ctx: &mut Self::Context) {
        // Held on the books until the frame is taken for the socket, or
        // given back here when nothing is sent.
        let (action, read) = self.subs.on_live(&event);
        if let Some(action) = action {
            self.apply_one(action, Some(ticket), ctx);
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
