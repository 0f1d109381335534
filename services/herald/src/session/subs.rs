//! A connection's subscriptions: for each topic, how far the client has been
//! sent, and whether the store must be read before live events can flow.
//!
//! One state machine serves every transport and every way of falling behind:
//! resuming from a cursor, a gap in the bus's seqs, events committed while a
//! replay ran, a hub that lost events. Live events are delivered straight
//! through when they are the next seq; anything else records how far the
//! topic is known to reach and reads the store from the client's position
//! until it gets there. Delivery is therefore in order, with no gap and no
//! duplicate, and without buffering live events during a read.
//!
//! Each subscription of a topic has a generation: unsubscribing then
//! subscribing again makes a new one, and a head or a store read asked for
//! by an earlier generation is dropped when it comes back, so it can never
//! replay unasked events into the new subscription, nor repeat its events.

use std::collections::HashMap;
use std::sync::Arc;

use crate::event::Encoded;
use crate::store::Read;
use crate::topic::{Cursor, Topic};

/// Events read from the store per request.
pub const PAGE_EVENTS: usize = 256;

/// What the connection should send.
#[derive(Debug, Clone)]
pub enum Action {
    /// An event.
    Event(Arc<Encoded>),
    /// Events of `topic` before `from` are gone.
    Reset { topic: Topic, from: u64 },
}

/// A store read the connection should make: events of `topic` after `after`,
/// for the subscription of that `generation`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    pub topic: Topic,
    pub after: u64,
    pub generation: u64,
}

#[derive(Debug, Clone)]
struct TopicState {
    /// Which subscription of the topic this is.
    generation: u64,
    /// The last seq sent to the client (its cursor).
    position: u64,
    /// The highest seq known to exist (from live events or store heads).
    known: u64,
    /// Whether the starting position is known yet.
    started: bool,
    /// Whether a store read is under way; live events wait for it.
    reading: bool,
}

/// Every subscribed topic of one connection.
#[derive(Debug, Default)]
pub struct Subs {
    topics: HashMap<Topic, TopicState>,
    /// The generation of the last subscription added.
    last_generation: u64,
}

impl Subs {
    /// No topics.
    pub fn new() -> Subs {
        Subs::default()
    }

    /// Number of topics.
    pub fn len(&self) -> usize {
        self.topics.len()
    }

    /// Whether there is no topic.
    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    /// Whether `topic` is subscribed.
    pub fn contains(&self, topic: &Topic) -> bool {
        self.topics.contains_key(topic)
    }

    /// The subscribed topics.
    pub fn topics(&self) -> impl Iterator<Item = &Topic> {
        self.topics.keys()
    }

    /// Adds `topic`, registered with the hub but waiting for its head, and
    /// returns its generation (the current one if it is already held).
    /// Live events for it are noted, not delivered, until [`Subs::start`].
    pub fn add(&mut self, topic: Topic) -> u64 {
        let next = self.last_generation + 1;
        let state = self.topics.entry(topic).or_insert(TopicState {
            generation: next,
            position: 0,
            known: 0,
            started: false,
            reading: false,
        });
        if state.generation == next {
            self.last_generation = next;
        }
        state.generation
    }

    /// Whether `generation` is the current subscription of `topic`.
    pub fn is_current(&self, topic: &Topic, generation: u64) -> bool {
        self.topics
            .get(topic)
            .is_some_and(|state| state.generation == generation)
    }

    /// Removes `topic`.
    pub fn remove(&mut self, topic: &Topic) -> bool {
        self.topics.remove(topic).is_some()
    }

    /// Starts `topic` once its head is known: at `since` when the client
    /// gave one, else at the head (live only). A `since` beyond the head
    /// (a cursor from another deployment, say) is answered with a reset.
    /// A head read for an earlier `generation` of the topic changes nothing.
    pub fn start(
        &mut self,
        topic: &Topic,
        generation: u64,
        head: u64,
        since: Option<u64>,
    ) -> (Vec<Action>, Option<ReadRequest>) {
        let Some(state) = self
            .topics
            .get_mut(topic)
            .filter(|s| s.generation == generation && !s.started)
        else {
            return (Vec::new(), None);
        };
        let mut actions = Vec::new();
        state.started = true;
        state.known = state.known.max(head);
        state.position = match since {
            Some(since) if since > head => {
                actions.push(Action::Reset {
                    topic: topic.clone(),
                    from: head + 1,
                });
                head
            }
            Some(since) => since,
            None => head,
        };
        (actions, Self::read_if_behind(topic, state))
    }

    fn read_if_behind(topic: &Topic, state: &mut TopicState) -> Option<ReadRequest> {
        if state.started && !state.reading && state.position < state.known {
            state.reading = true;
            Some(ReadRequest {
                topic: topic.clone(),
                after: state.position,
                generation: state.generation,
            })
        } else {
            None
        }
    }

    /// A live event from the hub.
    pub fn on_live(&mut self, event: &Arc<Encoded>) -> (Option<Action>, Option<ReadRequest>) {
        let Some(state) = self.topics.get_mut(&event.topic) else {
            return (None, None);
        };
        state.known = state.known.max(event.seq);
        if !state.started || state.reading || event.seq <= state.position {
            return (None, None);
        }
        if event.seq == state.position + 1 {
            state.position = event.seq;
            return (Some(Action::Event(event.clone())), None);
        }
        (None, Self::read_if_behind(&event.topic, state))
    }

    /// The answer to a [`ReadRequest`]; `read` is `None` when the read
    /// failed (the caller retries later with [`Subs::retry`]). The answer to
    /// a request of an earlier subscription of the topic is dropped.
    pub fn on_read(
        &mut self,
        request: &ReadRequest,
        read: Option<Read>,
    ) -> (Vec<Action>, Option<ReadRequest>) {
        let Some(state) = self
            .topics
            .get_mut(&request.topic)
            .filter(|s| s.generation == request.generation)
        else {
            return (Vec::new(), None);
        };
        let Some(read) = read else {
            return (Vec::new(), None);
        };
        state.reading = false;
        if request.after != state.position {
            // Stale: the topic was restarted meanwhile; read again from where it is.
            return (Vec::new(), Self::read_if_behind(&request.topic, state));
        }
        let mut actions = Vec::with_capacity(read.events.len() + 1);
        state.known = state.known.max(read.head);
        let full_page = read.events.len() >= PAGE_EVENTS;
        if read.events.is_empty() && read.head > state.position {
            // Everything after the position has been pruned.
            actions.push(Action::Reset {
                topic: request.topic.clone(),
                from: read.head + 1,
            });
            state.position = read.head;
        }
        for event in read.events {
            if event.seq <= state.position {
                continue;
            }
            if event.seq > state.position + 1 {
                actions.push(Action::Reset {
                    topic: request.topic.clone(),
                    from: event.seq,
                });
            }
            state.position = event.seq;
            actions.push(Action::Event(event.encode()));
        }
        if full_page && state.known <= state.position {
            // The page was full: there may be more than the head we knew of.
            state.known = state.position + 1;
        }
        (actions, Self::read_if_behind(&request.topic, state))
    }

    /// After a failed read: the same request again.
    pub fn retry(&mut self, request: &ReadRequest) -> Option<ReadRequest> {
        let state = self
            .topics
            .get_mut(&request.topic)
            .filter(|s| s.generation == request.generation)?;
        state.reading = false;
        Self::read_if_behind(&request.topic, state)
    }

    /// Events may have been lost on the way here: each started topic that is
    /// not already reading re-reads from its position. A topic with nothing
    /// new gets an empty answer.
    pub fn resync(&mut self) -> Vec<ReadRequest> {
        let mut requests = Vec::new();
        for (topic, state) in &mut self.topics {
            if state.started && !state.reading {
                state.known = state.known.max(state.position + 1);
                if let Some(r) = Self::read_if_behind(topic, state) {
                    requests.push(r);
                }
            }
        }
        requests
    }

    /// A started topic's position: what the connection has sent of it.
    pub fn position(&self, topic: &Topic) -> Option<u64> {
        self.topics
            .get(topic)
            .filter(|state| state.started)
            .map(|state| state.position)
    }

    /// Each started topic's position.
    pub fn cursor(&self) -> Cursor {
        let mut cursor = Cursor::new();
        for (topic, state) in &self.topics {
            if state.started {
                cursor.set(topic.clone(), state.position);
            }
        }
        cursor
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;
    use serde_json::value::RawValue;

    fn t() -> Topic {
        Topic::parse("orders.1").expect("valid")
    }

    fn event(seq: u64) -> Event {
        Event {
            topic: t(),
            seq,
            id: format!("e{seq}"),
            kind: None,
            time_ms: 0,
            data: RawValue::from_string("null".into()).expect("valid"),
        }
    }

    fn live(seq: u64) -> Arc<Encoded> {
        event(seq).encode()
    }

    fn seqs(actions: &[Action]) -> Vec<i64> {
        actions
            .iter()
            .map(|a| match a {
                Action::Event(e) => e.seq as i64,
                Action::Reset { from, .. } => -(*from as i64),
            })
            .collect()
    }

    fn nothing(head: u64) -> Read {
        Read {
            events: Vec::new(),
            head,
        }
    }

    fn read(events: std::ops::RangeInclusive<u64>, head: u64) -> Read {
        Read {
            events: events.map(event).collect(),
            head,
        }
    }

    #[test]
    fn live_only_delivers_what_comes_after_the_head() {
        let mut s = Subs::new();
        s.add(t());
        assert!(s.on_live(&live(5)).0.is_none(), "nothing before the start");
        let (actions, read) = s.start(&t(), 1, 5, None);
        assert!(actions.is_empty() && read.is_none());
        assert!(s.on_live(&live(5)).0.is_none(), "the head itself is old");
        assert!(matches!(s.on_live(&live(6)).0, Some(Action::Event(_))));
        assert_eq!(s.cursor().to_string(), "orders.1:6");
    }

    #[test]
    fn resume_replays_then_catches_up_with_events_published_during_the_replay() {
        let mut s = Subs::new();
        s.add(t());
        let (_, req) = s.start(&t(), 1, 10, Some(7));
        let req = req.expect("behind the head: read");
        assert_eq!(req.after, 7);
        // Events 11 and 12 arrive live while the replay is under way.
        for seq in [11, 12] {
            let (action, read) = s.on_live(&live(seq));
            assert!(action.is_none() && read.is_none(), "waits for the replay");
        }
        let (actions, next) = s.on_read(&req, Some(read(8..=10, 10)));
        assert_eq!(seqs(&actions), vec![8, 9, 10]);
        let next = next.expect("11 and 12 are known: read on");
        let (actions, next) = s.on_read(&next, Some(read(11..=12, 12)));
        assert_eq!(seqs(&actions), vec![11, 12]);
        assert!(next.is_none());
        assert!(matches!(s.on_live(&live(13)).0, Some(Action::Event(_))));
    }

    #[test]
    fn a_gap_in_live_events_is_filled_from_the_store() {
        let mut s = Subs::new();
        s.add(t());
        s.start(&t(), 1, 3, None);
        let (action, req) = s.on_live(&live(5));
        assert!(action.is_none());
        let req = req.expect("gap: read");
        let (actions, next) = s.on_read(&req, Some(read(4..=5, 5)));
        assert_eq!(seqs(&actions), vec![4, 5]);
        assert!(next.is_none());
    }

    #[test]
    fn a_cursor_older_than_retention_resets_to_the_oldest_event() {
        let mut s = Subs::new();
        s.add(t());
        let (_, req) = s.start(&t(), 1, 130, Some(17));
        let (actions, _) = s.on_read(&req.expect("read"), Some(read(120..=130, 130)));
        assert_eq!(seqs(&actions)[..2], [-120, 120]);
        // Everything pruned: the reset points past the head.
        let mut s = Subs::new();
        s.add(t());
        let (_, req) = s.start(&t(), 1, 50, Some(10));
        let (actions, _) = s.on_read(&req.expect("read"), Some(nothing(50)));
        assert_eq!(seqs(&actions), vec![-51]);
        assert_eq!(s.cursor().to_string(), "orders.1:50");
    }

    #[test]
    fn a_cursor_beyond_the_head_resets_to_the_head() {
        let mut s = Subs::new();
        s.add(t());
        let (actions, req) = s.start(&t(), 1, 4, Some(9));
        assert_eq!(seqs(&actions), vec![-5]);
        assert!(req.is_none());
        assert!(matches!(s.on_live(&live(5)).0, Some(Action::Event(_))));
    }

    #[test]
    fn a_full_page_reads_on_and_a_failed_read_is_retried() {
        let mut s = Subs::new();
        s.add(t());
        let (_, req) = s.start(&t(), 1, PAGE_EVENTS as u64, Some(0));
        let req = req.expect("read");
        assert_eq!(s.on_read(&req, None).0.len(), 0);
        let req = s.retry(&req).expect("retried");
        let (actions, next) =
            s.on_read(&req, Some(read(1..=PAGE_EVENTS as u64, PAGE_EVENTS as u64)));
        assert_eq!(actions.len(), PAGE_EVENTS);
        assert!(next.is_some(), "a full page may not be the end");
    }

    #[test]
    fn a_read_or_head_of_an_earlier_subscription_is_dropped() {
        let mut s = Subs::new();
        let old = s.add(t());
        let (_, stale) = s.start(&t(), old, 5, Some(0));
        let stale = stale.expect("behind: read");
        // Unsubscribed and subscribed again, live only, while that read runs.
        assert!(s.remove(&t()));
        let new = s.add(t());
        assert_ne!(old, new);
        assert!(s.is_current(&t(), new) && !s.is_current(&t(), old));
        let (actions, next) = s.on_read(&stale, Some(read(1..=5, 5)));
        assert!(actions.is_empty() && next.is_none(), "not asked for");
        assert!(s.retry(&stale).is_none());
        // A head read for the earlier subscription does not start this one.
        let (actions, next) = s.start(&t(), old, 5, Some(0));
        assert!(actions.is_empty() && next.is_none());
        // This one resumes from 3: exactly 4 and 5, once.
        let (_, req) = s.start(&t(), new, 5, Some(3));
        let req = req.expect("behind: read");
        assert_eq!(req.generation, new);
        let (actions, next) = s.on_read(&req, Some(read(4..=5, 5)));
        assert_eq!(seqs(&actions), vec![4, 5]);
        assert!(next.is_none());
        let (actions, _) = s.on_read(&stale, Some(read(1..=5, 5)));
        assert!(actions.is_empty(), "still dropped later on");
        assert!(matches!(s.on_live(&live(6)).0, Some(Action::Event(_))));
        // Subscribing again to a held topic keeps its generation and position.
        assert_eq!(s.add(t()), new);
        assert!(
            s.start(&t(), new, 6, Some(0)).1.is_none(),
            "already started"
        );
        assert_eq!(s.cursor().to_string(), "orders.1:6");
    }

    #[test]
    fn resync_rereads_every_started_topic() {
        let mut s = Subs::new();
        s.add(t());
        s.start(&t(), 1, 2, None);
        let reqs = s.resync();
        assert_eq!(
            reqs,
            vec![ReadRequest {
                topic: t(),
                after: 2,
                generation: 1,
            }]
        );
        let (actions, next) = s.on_read(&reqs[0], Some(read(3..=3, 3)));
        assert_eq!(seqs(&actions), vec![3]);
        assert!(next.is_none());
        let (actions, next) = s.on_read(&reqs[0], Some(nothing(3)));
        assert!(
            actions.is_empty() && next.is_none(),
            "a stale answer changes nothing"
        );
    }
}
