//! Seq assignment and idempotency for a group of publish requests, shared by
//! both stores: given each topic's head and the ids already stored, decide
//! which rows to insert and what to answer each request.

use std::collections::HashMap;

use super::Appended;
use crate::event::NewEvent;
use crate::topic::Topic;

/// A row to insert.
pub struct Row<'a> {
    pub topic: &'a Topic,
    pub seq: u64,
    pub event: &'a NewEvent,
}

/// What a group of requests does to the store.
pub struct Plan<'a> {
    /// New events, in seq order per topic.
    pub rows: Vec<Row<'a>>,
    /// Each topic's new head (only topics that grew).
    pub heads: Vec<(&'a Topic, u64)>,
    /// The answer for each request, in input order.
    pub answers: Vec<Vec<Appended>>,
}

/// Plans the group. `heads` holds the current head of every topic in the
/// group (0 for new topics); `existing` the stored `(seq, time_ms)` of every
/// `(topic, id)` of the group that is already stored.
pub fn plan<'a>(
    requests: &'a [Vec<NewEvent>],
    mut heads: HashMap<&'a Topic, u64>,
    existing: &HashMap<(&'a Topic, &'a str), (u64, i64)>,
    time_ms: i64,
) -> Plan<'a> {
    let mut fresh: HashMap<(&Topic, &str), u64> = HashMap::new();
    let mut rows = Vec::new();
    let answers = requests
        .iter()
        .map(|events| {
            events
                .iter()
                .map(|e| {
                    let key = (&e.topic, e.id.as_str());
                    if let Some(&(seq, time_ms)) = existing.get(&key) {
                        return Appended {
                            seq,
                            id: e.id.clone(),
                            time_ms,
                            duplicate: true,
                        };
                    }
                    if let Some(&seq) = fresh.get(&key) {
                        return Appended {
                            seq,
                            id: e.id.clone(),
                            time_ms,
                            duplicate: true,
                        };
                    }
                    let head = heads.entry(&e.topic).or_insert(0);
                    *head += 1;
                    let seq = *head;
                    fresh.insert(key, seq);
                    rows.push(Row {
                        topic: &e.topic,
                        seq,
                        event: e,
                    });
                    Appended {
                        seq,
                        id: e.id.clone(),
                        time_ms,
                        duplicate: false,
                    }
                })
                .collect()
        })
        .collect();
    let mut grown: Vec<&Topic> = rows.iter().map(|r| r.topic).collect();
    grown.sort();
    grown.dedup();
    let heads = grown.into_iter().map(|t| (t, heads[t])).collect();
    Plan {
        rows,
        heads,
        answers,
    }
}

/// The distinct topics of a group, sorted (the order locks are taken in).
pub fn topics(requests: &[Vec<NewEvent>]) -> Vec<&Topic> {
    let mut topics: Vec<&Topic> = requests.iter().flatten().map(|e| &e.topic).collect();
    topics.sort();
    topics.dedup();
    topics
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn ev(topic: &str, id: &str) -> NewEvent {
        NewEvent {
            topic: Topic::parse(topic).expect("valid"),
            id: id.into(),
            id_given: true,
            kind: None,
            data: RawValue::from_string("1".into()).expect("valid"),
        }
    }

    #[test]
    fn seqs_continue_from_heads_and_repeats_take_the_first_seq() {
        let requests = vec![
            vec![ev("a", "1"), ev("b", "1")],
            vec![ev("a", "2"), ev("a", "1"), ev("a", "old")],
        ];
        let a = Topic::parse("a").expect("valid");
        let heads = HashMap::from([(&requests[0][0].topic, 5u64)]);
        let mut existing = HashMap::new();
        existing.insert((&requests[1][2].topic, "old"), (3u64, 77i64));
        let p = plan(&requests, heads, &existing, 1000);
        let seqs: Vec<Vec<(u64, bool)>> = p
            .answers
            .iter()
            .map(|r| r.iter().map(|a| (a.seq, a.duplicate)).collect())
            .collect();
        assert_eq!(
            seqs,
            vec![
                vec![(6, false), (1, false)],
                vec![(7, false), (6, true), (3, true)]
            ]
        );
        assert_eq!(p.rows.len(), 3);
        assert_eq!(p.heads.iter().find(|(t, _)| **t == a).map(|h| h.1), Some(7));
        assert_eq!(p.answers[1][2].time_ms, 77);
    }
}
