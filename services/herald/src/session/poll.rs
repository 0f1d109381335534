//! Polling `/v1/poll`: a store read after the client's cursor, answered at
//! once (`wait=0`) or held until an event arrives (long polling). Stateless:
//! nothing is kept after the response.
//!
//! A waiting long poll is answered from the events the hub hands it when
//! they follow its cursor without a gap (no store read: the events are
//! committed, and already encoded); anything else (a gap, a resync, more
//! events than its `limit`) makes it read the store.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::Notify;

use super::Close;
use crate::auth::TokenId;
use crate::event::Encoded;
use crate::http::error::ApiError;
use crate::http::{AppState, SubscribeQuery};
use crate::hub::{self, Deliver, Member, Resync, SlowConsumer};
use crate::store::Store;
use crate::topic::{Cursor, Topic};

/// What a pending long poll was handed while it waited.
#[derive(Default)]
struct Woken {
    /// Events of its topics from the hub, in arrival order (at most its
    /// `limit`).
    events: Vec<Arc<Encoded>>,
    /// Events may have been lost on the way (a resync, more than `limit`):
    /// the answer must come from the store.
    read_store: bool,
}

/// A pending long poll, registered with the hub like any connection: any
/// event of its topics wakes it.
struct Waiter {
    wake: Arc<Notify>,
    woken: Arc<Mutex<Woken>>,
    limit: usize,
}

impl Actor for Waiter {
    type Context = Context<Self>;
}

impl Waiter {
    fn read_store(&self) {
        self.woken.lock().read_store = true;
        self.wake.notify_one();
    }
}

impl Handler<Deliver> for Waiter {
    type Result = ();
    fn handle(&mut self, Deliver(event): Deliver, _: &mut Self::Context) {
        {
            let mut woken = self.woken.lock();
            if woken.events.len() < self.limit {
                woken.events.push(event);
            } else {
                woken.read_store = true;
            }
        }
        self.wake.notify_one();
    }
}

impl Handler<Resync> for Waiter {
    type Result = ();
    fn handle(&mut self, _: Resync, _: &mut Self::Context) {
        self.read_store();
    }
}

impl Handler<SlowConsumer> for Waiter {
    type Result = ();
    fn handle(&mut self, _: SlowConsumer, _: &mut Self::Context) {
        self.read_store();
    }
}

impl Handler<Close> for Waiter {
    type Result = ();
    fn handle(&mut self, _: Close, _: &mut Self::Context) {
        self.wake.notify_one();
    }
}

/// One poll's answer.
struct Answer {
    events: Vec<Bytes>,
    resets: Vec<(Topic, u64)>,
    cursor: Cursor,
    more: bool,
}

impl Answer {
    fn is_empty(&self) -> bool {
        self.events.is_empty() && self.resets.is_empty()
    }

    fn into_response(self) -> HttpResponse {
        crate::telemetry::metrics::delivered("poll", self.events.len() as u64);
        crate::telemetry::metrics::resets_sent("poll", self.resets.len() as u64);
        let mut body = Vec::with_capacity(64 + self.events.iter().map(Bytes::len).sum::<usize>());
        body.extend_from_slice(b"{\"events\":[");
        for (i, event) in self.events.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(event);
        }
        let resets: Vec<serde_json::Value> = self
            .resets
            .iter()
            .map(|(topic, from)| json!({"topic": topic, "from": from}))
            .collect();
        let tail = json!({"resets": resets, "cursor": self.cursor.to_string(), "more": self.more});
        body.extend_from_slice(b"],");
        let tail = tail.to_string();
        body.extend_from_slice(&tail.as_bytes()[1..]);
        HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, "application/json"))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .body(body)
    }
}

/// Reads up to `limit` events (across all topics) after `positions`.
async fn read(
    store: &dyn Store,
    positions: &[(Topic, u64)],
    limit: usize,
) -> Result<Answer, ApiError> {
    let mut answer = Answer {
        events: Vec::new(),
        resets: Vec::new(),
        cursor: Cursor::new(),
        more: false,
    };
    for (topic, after) in positions {
        let remaining = limit - answer.events.len();
        let read = store
            .read_since(topic, *after, remaining)
            .await
            .map_err(|e| ApiError::Store(Arc::new(e)))?;
        let mut position = *after;
        if remaining > 0
            && let Some(from) = read.reset_from(position)
        {
            answer.resets.push((topic.clone(), from));
            position = from - 1;
        }
        for event in &read.events {
            if event.seq > position + 1 {
                answer.resets.push((topic.clone(), event.seq));
            }
            position = event.seq;
            answer.events.push(Bytes::from(event.to_json()));
        }
        answer.more |= read.head > position;
        answer.cursor.set(topic.clone(), position);
    }
    Ok(answer)
}

/// The answer made of the events the hub handed a waiting poll, if they
/// follow `positions` without a gap; `None` when the store must be read.
fn from_hub(positions: &[(Topic, u64)], woken: &Mutex<Woken>) -> Option<Answer> {
    let events = {
        let mut woken = woken.lock();
        if woken.read_store {
            return None;
        }
        std::mem::take(&mut woken.events)
    };
    let mut at: Vec<(Topic, u64)> = positions.to_vec();
    let mut answer = Answer {
        events: Vec::with_capacity(events.len()),
        resets: Vec::new(),
        cursor: Cursor::new(),
        more: false,
    };
    for event in events {
        let Some((_, position)) = at.iter_mut().find(|(t, _)| *t == event.topic) else {
            continue;
        };
        if event.seq <= *position {
            continue;
        }
        if event.seq != *position + 1 {
            // The bus lost something on the way: the store has it.
            return None;
        }
        *position = event.seq;
        answer.events.push(event.json.clone());
    }
    for (topic, position) in at {
        answer.cursor.set(topic, position);
    }
    Some(answer)
}

/// `GET /v1/poll?topic=...&since=...&wait=...&limit=...`
pub async fn handler(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if state.gate.is_draining() {
        return Err(ApiError::Draining {
            retry_after_secs: 1,
        });
    }
    let query = SubscribeQuery::parse(&req, &state, true).await?;
    let store = &*state.sessions.store;
    // Topics without a position are live-only: they stand at their head.
    let live_only: Vec<Topic> = query
        .topics
        .iter()
        .filter(|t| query.since.get(t).is_none())
        .cloned()
        .collect();
    let heads = if live_only.is_empty() {
        Vec::new()
    } else {
        store
            .heads(&live_only)
            .await
            .map_err(|e| ApiError::Store(Arc::new(e)))?
    };
    let positions: Vec<(Topic, u64)> = query
        .topics
        .iter()
        .map(|t| {
            let at = query.since.get(t).unwrap_or_else(|| {
                live_only
                    .iter()
                    .position(|l| l == t)
                    .map(|i| heads[i])
                    .unwrap_or(0)
            });
            (t.clone(), at)
        })
        .collect();

    let answer = read(store, &positions, query.limit).await?;
    if query.wait_secs == 0 || !answer.is_empty() {
        return Ok(answer.into_response());
    }

    // Long poll: register first, then read again, then wait.
    let _ticket = state.gate.enter()?;
    let wake = Arc::new(Notify::new());
    let woken = Arc::new(Mutex::new(Woken::default()));
    let waiter = Waiter {
        wake: wake.clone(),
        woken: woken.clone(),
        limit: query.limit,
    }
    .start();
    let member = Member {
        deliver: waiter.clone().recipient(),
        resync: waiter.clone().recipient(),
        slow: waiter.clone().recipient(),
    };
    let id = hub::connection_id();
    let ready = hub::register(&state.sessions.hubs, id, &query.topics, &member);
    state.sessions.connections.add_long_poll(
        id,
        waiter.clone().recipient(),
        Some(TokenId::from(&query.principal)),
    );
    let _pending = crate::telemetry::metrics::PendingPoll::start();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(query.wait_secs);
    let result = async {
        ready
            .wait(
                state
                    .sessions
                    .settings
                    .heartbeat
                    .min(Duration::from_secs(query.wait_secs)),
            )
            .await;
        let mut answer = read(store, &positions, query.limit).await?;
        loop {
            if !answer.is_empty() || state.gate.is_draining() {
                return Ok(answer);
            }
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep_until(deadline) => return Ok(answer),
            }
            answer = match from_hub(&positions, &woken) {
                Some(answer) => answer,
                None => read(store, &positions, query.limit).await?,
            };
        }
    }
    .await;
    hub::unregister(id, &query.topics);
    state.sessions.connections.remove(id);
    waiter.do_send(StopWaiter);
    result.map(Answer::into_response)
}

#[derive(Message)]
#[rtype(result = "()")]
struct StopWaiter;

impl Handler<StopWaiter> for Waiter {
    type Result = ();
    fn handle(&mut self, _: StopWaiter, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str) -> Topic {
        Topic::parse(name).expect("valid topic")
    }

    fn event(topic: &str, seq: u64) -> Arc<Encoded> {
        let json = format!(r#"{{"topic":"{topic}","seq":{seq},"id":"x","time":"t","data":null}}"#);
        Arc::new(Encoded::new(t(topic), seq, 0, json.into_bytes()))
    }

    fn woken(events: Vec<Arc<Encoded>>) -> Mutex<Woken> {
        Mutex::new(Woken {
            events,
            read_store: false,
        })
    }

    #[test]
    fn events_that_follow_the_cursor_answer_without_the_store() {
        let positions = [(t("a"), 4), (t("b"), 0)];
        let got = woken(vec![event("a", 5), event("b", 1), event("a", 6)]);
        let answer = from_hub(&positions, &got).expect("no gap");
        assert_eq!(answer.events.len(), 3);
        assert_eq!(answer.cursor.to_string(), "a:6,b:1");
        assert!(!answer.more);
        assert!(got.lock().events.is_empty(), "taken");
    }

    #[test]
    fn events_already_covered_are_skipped() {
        let positions = [(t("a"), 4)];
        let answer = from_hub(&positions, &woken(vec![event("a", 4)])).expect("no gap");
        assert!(answer.is_empty());
        assert_eq!(answer.cursor.to_string(), "a:4");
    }

    #[test]
    fn a_gap_or_a_possible_loss_reads_the_store() {
        let positions = [(t("a"), 4)];
        assert!(from_hub(&positions, &woken(vec![event("a", 6)])).is_none());
        let lost = woken(vec![event("a", 5)]);
        lost.lock().read_store = true;
        assert!(from_hub(&positions, &lost).is_none());
    }
}
