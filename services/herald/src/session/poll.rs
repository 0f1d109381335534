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
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::gate::{Gate, Refused};
use super::{Close, Env};
use crate::auth::{Principal, TokenId};
use crate::event::Encoded;
use crate::hub::{self, Deliver, Member, Resync, SlowConsumer};
use crate::store::{Store, StoreError};
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
    fn handle(&mut self, Deliver { event, ticket }: Deliver, _: &mut Self::Context) {
        // A long poll keeps the event in its answer: off the books now.
        drop(ticket);
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
pub struct Answer {
    /// Each event's JSON, in order.
    pub events: Vec<Bytes>,
    /// Topics restarted at a later seq (`from`).
    pub resets: Vec<(Topic, u64)>,
    /// Where the next poll starts.
    pub cursor: Cursor,
    /// Whether more events are waiting than the `limit` let in.
    pub more: bool,
}

impl Answer {
    /// Whether there is nothing to tell the client.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.resets.is_empty()
    }
}

/// One requested topic while a poll reads the store.
struct Progress {
    topic: Topic,
    /// The last seq put in the answer (or the client's cursor).
    position: u64,
    /// The topic's head at its latest read.
    head: u64,
    events: Vec<Bytes>,
    /// Nothing more to read for it now.
    done: bool,
}

/// How `remaining` events are shared among `active` topics: an even share
/// each, the remainder one apiece from a random one on (so that when there
/// are fewer events than topics, no topic is always the one left out).
fn shares(remaining: usize, active: usize) -> Vec<usize> {
    if active == 0 {
        return Vec::new();
    }
    let (base, extra) = (remaining / active, remaining % active);
    let first = rand::random_range(0..active);
    (0..active)
        .map(|k| base + usize::from((k + active - first) % active < extra))
        .collect()
}

/// Reads up to `limit` events (across all topics) after `positions`,
/// shared fairly: each topic with events gets an even share of `limit`, and
/// what a topic leaves unused goes to the topics that have more. A cursor
/// beyond a topic's head is answered with a reset from the head plus one,
/// and the cursor moves back to the head.
async fn read(
    store: &dyn Store,
    positions: &[(Topic, u64)],
    limit: usize,
) -> Result<Answer, StoreError> {
    let mut topics: Vec<Progress> = positions
        .iter()
        .map(|(topic, after)| Progress {
            topic: topic.clone(),
            position: *after,
            head: 0,
            events: Vec::new(),
            done: false,
        })
        .collect();
    let mut resets = Vec::new();
    let mut remaining = limit;
    let mut first_round = true;
    // Every round either uses up `remaining` or finishes a topic.
    loop {
        let active: Vec<usize> = (0..topics.len()).filter(|&i| !topics[i].done).collect();
        if active.is_empty() || (remaining == 0 && !first_round) {
            break;
        }
        let quotas = shares(remaining, active.len());
        for (i, quota) in active.into_iter().zip(quotas) {
            // Every topic is read once, for its head, even with no share.
            if quota == 0 && !first_round {
                continue;
            }
            let topic = &mut topics[i];
            let read = store
                .read_since(&topic.topic, topic.position, quota)
                .await?;
            topic.head = read.head;
            if topic.position > read.head {
                // From another deployment, or a wiped store.
                resets.push((topic.topic.clone(), read.head + 1));
                topic.position = read.head;
                topic.done = true;
                continue;
            }
            if quota > 0
                && let Some(from) = read.reset_from(topic.position)
            {
                resets.push((topic.topic.clone(), from));
                topic.position = from - 1;
            }
            for event in &read.events {
                if event.seq > topic.position + 1 {
                    resets.push((topic.topic.clone(), event.seq));
                }
                topic.position = event.seq;
                topic.events.push(Bytes::from(event.to_json()));
            }
            remaining -= read.events.len().min(remaining);
            topic.done = read.head <= topic.position || (quota > 0 && read.events.len() < quota);
        }
        first_round = false;
    }
    let mut answer = Answer {
        events: Vec::with_capacity(limit - remaining),
        resets,
        cursor: Cursor::new(),
        more: false,
    };
    for topic in topics {
        answer.more |= topic.head > topic.position;
        answer.cursor.set(topic.topic, topic.position);
        answer.events.extend(topic.events);
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

/// A checked poll request.
pub struct Request<'a> {
    pub principal: &'a Principal,
    pub topics: &'a [Topic],
    pub since: &'a Cursor,
    /// Longest wait for an event, in seconds (`0`: answer at once).
    pub wait_secs: u64,
    /// Most events in the answer.
    pub limit: usize,
}

/// Why a poll could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Refused(#[from] Refused),
}

/// Answers a poll: the events after `since` at once, or, when there are
/// none and the request may wait, the first to arrive within `wait_secs`.
pub async fn answer(
    env: &Env,
    gate: &Arc<Gate>,
    request: Request<'_>,
) -> Result<Answer, PollError> {
    let Request {
        principal,
        topics,
        since,
        wait_secs,
        limit,
    } = request;
    let store = &*env.store;
    // Topics without a position are live-only: they stand at their head.
    let live_only: Vec<Topic> = topics
        .iter()
        .filter(|t| since.get(t).is_none())
        .cloned()
        .collect();
    let heads = if live_only.is_empty() {
        Vec::new()
    } else {
        store.heads(&live_only).await?
    };
    let positions: Vec<(Topic, u64)> = topics
        .iter()
        .map(|t| {
            let at = since.get(t).unwrap_or_else(|| {
                live_only
                    .iter()
                    .position(|l| l == t)
                    .map(|i| heads[i])
                    .unwrap_or(0)
            });
            (t.clone(), at)
        })
        .collect();

    let answer = read(store, &positions, limit).await?;
    if wait_secs == 0 || !answer.is_empty() {
        return Ok(answer);
    }

    // Long poll: register first, then read again, then wait.
    let _admission = gate.enter()?;
    let wake = Arc::new(Notify::new());
    let woken = Arc::new(Mutex::new(Woken::default()));
    let waiter = Waiter {
        wake: wake.clone(),
        woken: woken.clone(),
        limit,
    }
    .start();
    let member = Member {
        deliver: waiter.clone().recipient(),
        resync: waiter.clone().recipient(),
        slow: waiter.clone().recipient(),
    };
    let id = hub::connection_id();
    let ready = hub::register(&env.hubs, id, topics, &member);
    env.connections.add_long_poll(
        id,
        waiter.clone().recipient(),
        Some(TokenId::from(principal)),
    );
    let _pending = crate::telemetry::metrics::PendingPoll::start();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait_secs);
    let result = async {
        ready
            .wait(env.settings.heartbeat.min(Duration::from_secs(wait_secs)))
            .await;
        let mut answer = read(store, &positions, limit).await?;
        loop {
            if !answer.is_empty() || gate.is_draining() {
                return Ok(answer);
            }
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep_until(deadline) => return Ok(answer),
            }
            answer = match from_hub(&positions, &woken) {
                Some(answer) => answer,
                None => read(store, &positions, limit).await?,
            };
        }
    }
    .await;
    hub::unregister(id, topics);
    env.connections.remove(id);
    waiter.do_send(StopWaiter);
    result
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
    fn a_limit_is_shared_evenly_and_never_exceeded() {
        for (remaining, active) in [(10, 3), (1, 3), (100, 1), (7, 7), (2, 5), (0, 2)] {
            let shares = shares(remaining, active);
            assert_eq!(shares.len(), active);
            assert_eq!(shares.iter().sum::<usize>(), remaining, "{shares:?}");
            let (min, max) = (shares.iter().min(), shares.iter().max());
            assert!(
                max.zip(min).is_some_and(|(max, min)| max - min <= 1),
                "{shares:?}"
            );
        }
        assert!(shares(5, 0).is_empty());
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
