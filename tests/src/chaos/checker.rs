//! The delivery checker, in the spirit of Jepsen's queue and log checkers:
//! from what the store holds at the end, what the publishers were told and
//! what every subscriber observed, it counts violations of Herald's
//! promise. The rules (also in docs/RELIABILITY.md):
//!
//! **The store.** Per topic the stored seqs are 1..=head with no hole
//! (a hole counts as `gap`). Every publish answered `2xx` is stored once,
//! at the seq it was answered with: missing is `lost`, at another seq or
//! stored twice is `id_dup`. An id stored more than once on a topic is
//! `id_dup` whether or not it was acknowledged (this is the check of
//! publishes retried with their id). A stored event no publisher sent is
//! `mismatch`. A publish answered with a status that is neither `2xx` nor
//! retryable (`503`, `408`) is `rejected`.
//!
//! **Each subscriber and topic**, replaying its observations in order with
//! a position `have` (starting at 0: every subscriber starts from `topic:0`):
//!
//! - an event with seq `have + 1` is in order; its id must be the stored
//!   one at that seq (else `mismatch`);
//! - an event above `have + 1` is a `gap` (one per jump), unless a `reset`
//!   announced it: a `reset` with `from` moves `have` to `from - 1` and
//!   excuses the seqs it skipped;
//! - an event at or below `have` that was never delivered before is
//!   `order` (it came after a later one);
//! - an event delivered before is a `duplicate` if it came again in the
//!   same connection (or poll request), or in a later one that resumed from
//!   a cursor at or above its seq (the client said it had it). A repeat in
//!   a later connection that resumed from a cursor below its seq is a
//!   tolerated redelivery (the client asked for it), counted apart. Our
//!   clients always resume from the highest seq they hold (WebSocket, polls)
//!   or from the server's own last SSE `id:`, so a redelivery only happens
//!   when a server-given cursor lagged behind what was delivered;
//! - a server-given cursor (SSE `id:`, a poll's `cursor`) ahead of `have`
//!   skips events without announcing them: `gap`; one behind it (moving
//!   back without a `reset`) is `order`;
//! - at the end, every stored seq not delivered and not excused by a
//!   `reset` is `lost` (counted once per subscriber and event).
//!
//! A delivery on a topic the subscriber never asked for is `unasked`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use super::publisher::{Outcome, PublishRecord};
use super::subscriber::{Obs, SubscriberLog};

/// Violation examples kept for the report.
const MAX_EXAMPLES: usize = 40;

/// One stored event: its seq and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub seq: u64,
    pub id: String,
}

/// Violations by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Violations {
    pub lost: u64,
    pub gap: u64,
    pub duplicate: u64,
    pub order: u64,
    pub id_dup: u64,
    pub mismatch: u64,
    pub unasked: u64,
    pub rejected: u64,
}

impl Violations {
    /// The sum over every kind.
    pub fn total(&self) -> u64 {
        self.lost
            + self.gap
            + self.duplicate
            + self.order
            + self.id_dup
            + self.mismatch
            + self.unasked
            + self.rejected
    }
}

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "lost={} gap={} duplicate={} order={} id_dup={} mismatch={} unasked={} rejected={}",
            self.lost,
            self.gap,
            self.duplicate,
            self.order,
            self.id_dup,
            self.mismatch,
            self.unasked,
            self.rejected
        )
    }
}

/// What the checker found.
#[derive(Debug, Clone, Default)]
pub struct Check {
    /// Publishes attempted (each with its own id, however often retried).
    pub attempted: u64,
    /// Publishes answered `2xx`.
    pub acknowledged: u64,
    /// Publishes that needed more than one request.
    pub retried: u64,
    /// Publishes given up after the retry bound (ambiguous: may be stored).
    pub gave_up: u64,
    /// Failed publish requests that were retried, by cause (`503`, `408`,
    /// `timeout`, `connection`).
    pub publish_failures: BTreeMap<String, u64>,
    /// Events in the store at the end.
    pub stored: u64,
    /// Event deliveries observed, over all subscribers.
    pub delivered: u64,
    /// Tolerated redeliveries (see the module's rules).
    pub redelivered: u64,
    /// `reset`s observed.
    pub resets: u64,
    pub violations: Violations,
    /// The first violations, described.
    pub examples: Vec<String>,
}

impl Check {
    fn violation(&mut self, bump: impl FnOnce(&mut Violations), example: impl FnOnce() -> String) {
        bump(&mut self.violations);
        if self.examples.len() < MAX_EXAMPLES {
            self.examples.push(example());
        }
    }
}

/// Checks a run: `topics` names the topics, `stored[t]` is what the store
/// holds for topic `t` (in seq order), `publishes` every publish attempted,
/// `subscribers` every subscriber's log.
pub fn check(
    topics: &[String],
    stored: &[Vec<Stored>],
    publishes: &[PublishRecord],
    subscribers: &[SubscriberLog],
) -> Check {
    let mut check = Check::default();
    let topic_index: HashMap<&str, usize> = topics
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();

    // The store: gapless seqs, ids once each.
    let mut ids: Vec<HashMap<&str, Vec<u64>>> = vec![HashMap::new(); topics.len()];
    for (t, events) in stored.iter().enumerate() {
        check.stored += events.len() as u64;
        for (i, event) in events.iter().enumerate() {
            if event.seq != i as u64 + 1 {
                check.violation(
                    |v| v.gap += 1,
                    || {
                        format!(
                            "store gap: {} holds seq {} at position {}",
                            topics[t],
                            event.seq,
                            i + 1
                        )
                    },
                );
            }
            ids[t].entry(event.id.as_str()).or_default().push(event.seq);
        }
        for (id, seqs) in &ids[t] {
            if seqs.len() > 1 {
                check.violation(
                    |v| v.id_dup += 1,
                    || {
                        format!(
                            "id_dup: {id} stored {} times on {} (seqs {seqs:?})",
                            seqs.len(),
                            topics[t]
                        )
                    },
                );
            }
        }
    }

    // The publishers: every acknowledged publish stored once, at its seq.
    let mut published: Vec<HashMap<&str, ()>> = vec![HashMap::new(); topics.len()];
    for publish in publishes {
        check.attempted += 1;
        if publish.attempts > 1 {
            check.retried += 1;
        }
        for cause in &publish.failures {
            *check.publish_failures.entry(cause.clone()).or_default() += 1;
        }
        let Some(&t) = topic_index.get(publish.topic.as_str()) else {
            continue;
        };
        published[t].insert(publish.id.as_str(), ());
        match &publish.outcome {
            Outcome::Acked { seq, status } => {
                check.acknowledged += 1;
                match ids[t].get(publish.id.as_str()).map(Vec::as_slice) {
                    None | Some([]) => check.violation(
                        |v| v.lost += 1,
                        || format!("lost: {} on {} acknowledged ({status}) with seq {seq} is not stored", publish.id, publish.topic),
                    ),
                    Some([stored_seq]) if stored_seq == seq => {}
                    Some(seqs) => check.violation(
                        |v| v.id_dup += 1,
                        || format!("id_dup: {} on {} acknowledged with seq {seq}, stored at {seqs:?}", publish.id, publish.topic),
                    ),
                }
            }
            Outcome::GaveUp { .. } => check.gave_up += 1,
            Outcome::Rejected { status, body } => check.violation(
                |v| v.rejected += 1,
                || {
                    format!(
                        "rejected: {} on {} answered {status}: {body}",
                        publish.id, publish.topic
                    )
                },
            ),
        }
    }
    for (t, events) in stored.iter().enumerate() {
        for event in events {
            if !published[t].contains_key(event.id.as_str()) {
                check.violation(
                    |v| v.mismatch += 1,
                    || {
                        format!(
                            "mismatch: {} seq {} has id {} that no publisher sent",
                            topics[t], event.seq, event.id
                        )
                    },
                );
            }
        }
    }

    // Every subscriber and topic.
    for log in subscribers {
        for (position, &t) in log.topics.iter().enumerate() {
            check_subscription(&mut check, topics, &stored[t], log, position, t);
        }
        for obs in &log.obs {
            if let Obs::Unasked { topic, seq } = obs {
                check.violation(
                    |v| v.unasked += 1,
                    || format!("unasked: subscriber {} got {topic} seq {seq}", log.index),
                );
            }
        }
    }
    check
}

/// Replays subscriber `log`'s observations of topic `t` (its `position`-th).
fn check_subscription(
    check: &mut Check,
    topics: &[String],
    stored: &[Stored],
    log: &SubscriberLog,
    position: usize,
    t: usize,
) {
    let who = || {
        format!(
            "subscriber {} ({}) on {}",
            log.index,
            log.transport.name(),
            topics[t]
        )
    };
    let by_seq: BTreeMap<u64, &str> = stored.iter().map(|e| (e.seq, e.id.as_str())).collect();
    let mut have = 0u64;
    let mut session = 0u64;
    let mut resume = 0u64;
    // seq -> the session it was first delivered in.
    let mut delivered: HashMap<u64, u64> = HashMap::new();
    let mut excused: Vec<(u64, u64)> = Vec::new();
    for obs in &log.obs {
        match obs {
            Obs::Session { resume: cursor } => {
                session += 1;
                resume = cursor.get(position).copied().unwrap_or(0);
            }
            Obs::Event { topic, seq, id } if *topic == t => {
                let seq = *seq;
                check.delivered += 1;
                match by_seq.get(&seq) {
                    Some(stored_id) if *stored_id == id => {}
                    stored_id => check.violation(
                        |v| v.mismatch += 1,
                        || {
                            format!(
                                "mismatch: {} got seq {seq} id {id}, the store has {stored_id:?}",
                                who()
                            )
                        },
                    ),
                }
                if let Some(&first) = delivered.get(&seq) {
                    if first == session || seq <= resume {
                        check.violation(
                            |v| v.duplicate += 1,
                            || format!("duplicate: {} got seq {seq} again (session {session}, resumed from {resume}, first in session {first})", who()),
                        );
                    } else {
                        check.redelivered += 1;
                    }
                } else if seq <= have {
                    check.violation(
                        |v| v.order += 1,
                        || format!("order: {} got seq {seq} after {have}", who()),
                    );
                } else if seq > have + 1 {
                    check.violation(
                        |v| v.gap += 1,
                        || format!("gap: {} got seq {seq} after {have}, with no reset", who()),
                    );
                }
                delivered.entry(seq).or_insert(session);
                have = have.max(seq);
            }
            Obs::Reset { topic, from } if *topic == t => {
                check.resets += 1;
                let until = from.saturating_sub(1);
                if until > have {
                    excused.push((have + 1, until));
                }
                have = until;
            }
            Obs::Cursor { topic, seq } if *topic == t => {
                let seq = *seq;
                if seq > have {
                    check.violation(
                        |v| v.gap += 1,
                        || format!("gap: {} was given cursor {seq} while it held {have}, with no event or reset in between", who()),
                    );
                } else if seq < have {
                    check.violation(
                        |v| v.order += 1,
                        || format!("order: {} was given cursor {seq} below the {have} it held, with no reset", who()),
                    );
                }
                have = seq;
            }
            _ => {}
        }
    }
    let mut lost = Vec::new();
    for event in stored {
        let excused = excused
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&event.seq));
        if !delivered.contains_key(&event.seq) && !excused {
            lost.push(event.seq);
        }
    }
    if !lost.is_empty() {
        check.violations.lost += lost.len() as u64;
        if check.examples.len() < MAX_EXAMPLES {
            let shown: Vec<u64> = lost.iter().copied().take(10).collect();
            check.examples.push(format!(
                "lost: {} never got {} stored event(s): seqs {shown:?}{} (its position {have})",
                who(),
                lost.len(),
                if lost.len() > shown.len() { " ..." } else { "" }
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::chaos::subscriber::Transport;

    fn topics() -> Vec<String> {
        vec!["t.a".into()]
    }

    fn stored(n: u64) -> Vec<Vec<Stored>> {
        vec![
            (1..=n)
                .map(|seq| Stored {
                    seq,
                    id: format!("id{seq}"),
                })
                .collect(),
        ]
    }

    fn publishes(n: u64) -> Vec<PublishRecord> {
        (1..=n)
            .map(|seq| PublishRecord {
                topic: "t.a".into(),
                id: format!("id{seq}"),
                attempts: 1,
                failures: Vec::new(),
                outcome: Outcome::Acked { seq, status: 201 },
            })
            .collect()
    }

    fn event(seq: u64) -> Obs {
        Obs::Event {
            topic: 0,
            seq,
            id: format!("id{seq}"),
        }
    }

    fn session(resume: u64) -> Obs {
        Obs::Session {
            resume: vec![resume],
        }
    }

    fn subscriber(obs: Vec<Obs>) -> Vec<SubscriberLog> {
        vec![SubscriberLog {
            index: 0,
            transport: Transport::WebSocket,
            topics: vec![0],
            obs,
            ends: BTreeMap::new(),
            notes: Vec::new(),
        }]
    }

    fn run(obs: Vec<Obs>) -> Check {
        check(&topics(), &stored(4), &publishes(4), &subscriber(obs))
    }

    #[test]
    fn every_event_once_in_order_across_a_reconnect_is_clean() {
        let c = run(vec![
            session(0),
            event(1),
            event(2),
            session(2),
            event(3),
            event(4),
        ]);
        assert_eq!(c.violations, Violations::default(), "{:?}", c.examples);
        assert_eq!((c.delivered, c.acknowledged, c.stored), (4, 4, 4));
    }

    #[test]
    fn a_missing_event_is_a_gap_and_lost() {
        let c = run(vec![session(0), event(1), event(3), event(4)]);
        assert_eq!(
            (c.violations.gap, c.violations.lost),
            (1, 1),
            "{:?}",
            c.examples
        );
    }

    #[test]
    fn a_reset_excuses_what_it_announces() {
        let c = run(vec![
            session(0),
            Obs::Reset { topic: 0, from: 3 },
            event(3),
            event(4),
        ]);
        assert_eq!(c.violations, Violations::default(), "{:?}", c.examples);
        assert_eq!(c.resets, 1);
    }

    #[test]
    fn a_repeat_the_client_said_it_had_is_a_duplicate_and_one_it_asked_for_is_not() {
        let c = run(vec![
            session(0),
            event(1),
            event(2),
            session(2),
            event(2),
            event(3),
            event(4),
        ]);
        assert_eq!(c.violations.duplicate, 1, "{:?}", c.examples);
        let c = run(vec![
            session(0),
            event(1),
            event(2),
            session(1),
            event(2),
            event(3),
            event(4),
        ]);
        assert_eq!(c.violations, Violations::default(), "{:?}", c.examples);
        assert_eq!(c.redelivered, 1);
        let c = run(vec![
            session(0),
            event(1),
            event(1),
            event(2),
            event(3),
            event(4),
        ]);
        assert_eq!(c.violations.duplicate, 1, "the same connection twice");
    }

    #[test]
    fn a_late_event_is_out_of_order() {
        let c = run(vec![session(0), event(1), event(3), event(2), event(4)]);
        assert_eq!(
            (c.violations.order, c.violations.gap),
            (1, 1),
            "{:?}",
            c.examples
        );
    }

    #[test]
    fn a_cursor_that_skips_events_is_a_gap() {
        let c = run(vec![
            session(0),
            event(1),
            Obs::Cursor { topic: 0, seq: 3 },
            session(3),
            event(4),
        ]);
        assert_eq!(
            (c.violations.gap, c.violations.lost),
            (1, 2),
            "2 and 3 skipped: {:?}",
            c.examples
        );
    }

    #[test]
    fn the_store_and_the_publishers_are_checked() {
        let mut store = stored(4);
        store[0][3].id = "id1".into();
        let mut sent = publishes(4);
        sent[3].outcome = Outcome::Rejected {
            status: 500,
            body: String::new(),
        };
        let obs = vec![
            session(0),
            event(1),
            event(2),
            event(3),
            Obs::Event {
                topic: 0,
                seq: 4,
                id: "id1".into(),
            },
        ];
        let c = check(&topics(), &store, &sent, &subscriber(obs));
        // id1 twice in the store; id4 lost... it was rejected, not acknowledged.
        assert_eq!(
            c.violations.id_dup, 2,
            "stored twice, and acknowledged at another seq: {:?}",
            c.examples
        );
        assert_eq!(c.violations.rejected, 1);
        assert_eq!(c.violations.lost, 0);
    }

    #[test]
    fn an_acknowledged_event_missing_from_the_store_is_lost() {
        let c = check(
            &topics(),
            &stored(3),
            &publishes(4),
            &subscriber(vec![session(0), event(1), event(2), event(3)]),
        );
        assert_eq!(c.violations.lost, 1, "{:?}", c.examples);
    }
}
