//! Acknowledgments: what a subscriber (the `sub` of its token) has processed,
//! per topic, as one cumulative seq ("everything up to N"), shared by every
//! node through the store.
//!
//! Acknowledgments never touch the fan-out path. Each node gathers them in a
//! bounded pending set ([`Acks`]) keyed by subscriber and topic, keeping the
//! highest seq, and writes the set to the store once per flush interval: at
//! most one store write per subscriber and topic per interval, however fast
//! acknowledgments arrive. A resume from the acknowledged position first
//! writes this node's pending acknowledgments of that subscriber, so it sees
//! them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::auth::Principal;
use crate::store::{AckWrite, Store, StoreError};
use crate::topic::{Cursor, Topic};

/// Why an acknowledgment was refused. Nothing of a refused acknowledgment
/// is kept: a cursor is taken whole or not at all.
#[derive(Debug, thiserror::Error)]
pub enum AckError {
    /// Not a cursor, or an empty one.
    #[error("{0}")]
    InvalidCursor(String),
    /// A seq beyond its topic's head (a topic never published to has head 0).
    #[error("{0}")]
    BeyondHead(String),
    /// The token may not subscribe to these topics.
    #[error("the token may not subscribe to {}", .0.join(", "))]
    Forbidden(Vec<String>),
    /// The pending set is full.
    #[error(
        "too many acknowledgments are waiting to be written on this node; \
         send the ack again shortly (acknowledgments are cumulative)"
    )]
    Full,
    /// The store could not be read.
    #[error("the store is unavailable: {0}")]
    Store(#[from] StoreError),
    /// The write that was to carry the acknowledgment failed; it stays
    /// pending on this node and is tried again.
    #[error(
        "the store did not take the acknowledgment yet; this node tries again, \
         and repeating the ack is safe"
    )]
    NotWritten,
}

impl AckError {
    /// The machine-readable code (problem+json, `error` frame).
    pub fn code(&self) -> &'static str {
        match self {
            AckError::InvalidCursor(_) | AckError::BeyondHead(_) => "invalid_cursor",
            AckError::Forbidden(_) => "forbidden",
            AckError::Full => "rate_limited",
            AckError::Store(_) | AckError::NotWritten => "unavailable",
        }
    }

    /// The topics the error is about, for an `error` frame.
    pub fn topics(&self) -> Vec<String> {
        match self {
            AckError::Forbidden(topics) => topics.clone(),
            _ => Vec::new(),
        }
    }
}

/// Parses the text of an acknowledgment and checks the token may subscribe
/// to every topic it names. Entries at seq 0 acknowledge nothing and are
/// dropped.
pub fn parse(text: &str, principal: &Principal) -> Result<Vec<(Topic, u64)>, AckError> {
    let cursor = Cursor::parse(text).map_err(|e| AckError::InvalidCursor(e.to_string()))?;
    if cursor.is_empty() {
        return Err(AckError::InvalidCursor(
            "an ack names at least one topic:seq".into(),
        ));
    }
    let forbidden: Vec<String> = cursor
        .iter()
        .filter(|(t, _)| !principal.may_subscribe(t))
        .map(|(t, _)| t.to_string())
        .collect();
    if !forbidden.is_empty() {
        return Err(AckError::Forbidden(forbidden));
    }
    Ok(cursor
        .iter()
        .filter(|(_, seq)| *seq > 0)
        .map(|(t, seq)| (t.clone(), seq))
        .collect())
}

/// Checks each entry against its topic's head (`heads` in the same order).
pub fn check_heads(entries: &[(Topic, u64)], heads: &[u64]) -> Result<(), AckError> {
    let beyond: Vec<String> = entries
        .iter()
        .zip(heads)
        .filter(|&((_, seq), head)| seq > head)
        .map(|((topic, seq), head)| format!("{topic}:{seq} (head {head})"))
        .collect();
    if beyond.is_empty() {
        Ok(())
    } else {
        Err(AckError::BeyondHead(format!(
            "acknowledged beyond the topic's head: {}",
            beyond.join(", ")
        )))
    }
}

/// One pending acknowledgment.
#[derive(Debug, Clone, Copy)]
struct Pending {
    seq: u64,
    at_ms: i64,
}

/// The pending set: per subscriber, per topic, the highest seq received
/// since the last write.
#[derive(Default)]
struct Set {
    by_sub: HashMap<Arc<str>, HashMap<Topic, Pending>>,
    /// Pairs held.
    len: usize,
    /// The flush that will write what is in the set now.
    generation: u64,
    /// The largest `head - seq` of the acknowledgments in the set.
    lag: u64,
}

impl Set {
    /// Keeps the higher of `seq` and what is pending. Returns whether the
    /// pair was pending already (the ack coalesced).
    fn raise(&mut self, sub: &Arc<str>, topic: &Topic, seq: u64, at_ms: i64) -> bool {
        let topics = self.by_sub.entry(sub.clone()).or_default();
        match topics.get_mut(topic) {
            Some(pending) => {
                if seq > pending.seq {
                    *pending = Pending { seq, at_ms };
                }
                true
            }
            None => {
                topics.insert(topic.clone(), Pending { seq, at_ms });
                self.len += 1;
                false
            }
        }
    }

    fn is_new(&self, sub: &str, topic: &Topic) -> bool {
        self.by_sub.get(sub).is_none_or(|t| !t.contains_key(topic))
    }

    fn rows(by_sub: HashMap<Arc<str>, HashMap<Topic, Pending>>) -> Vec<AckWrite> {
        by_sub
            .into_iter()
            .flat_map(|(sub, topics)| {
                topics.into_iter().map(move |(topic, p)| AckWrite {
                    sub: sub.to_string(),
                    topic,
                    seq: p.seq,
                    at_ms: p.at_ms,
                })
            })
            .collect()
    }
}

/// A finished flush.
#[derive(Debug, Clone, Copy, Default)]
struct Flushed {
    generation: u64,
    ok: bool,
}

/// This node's acknowledgments on their way to the store.
pub struct Acks {
    store: Arc<dyn Store>,
    flush: Duration,
    max_pending: usize,
    set: Mutex<Set>,
    /// Held while pending acknowledgments are being written, so a resume
    /// that writes its subscriber's first also waits for a write under way.
    writing: tokio::sync::Mutex<()>,
    flushed: watch::Sender<Flushed>,
}

impl Acks {
    /// A pending set writing to `store`.
    pub fn new(store: Arc<dyn Store>, flush: Duration, max_pending: usize) -> Arc<Acks> {
        Arc::new(Acks {
            store,
            flush,
            max_pending,
            set: Mutex::new(Set::default()),
            writing: tokio::sync::Mutex::new(()),
            flushed: watch::channel(Flushed::default()).0,
        })
    }

    /// Writes the pending set every flush interval, until the task is
    /// aborted.
    pub fn spawn_flusher(self: &Arc<Acks>) -> tokio::task::JoinHandle<()> {
        let acks = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(acks.flush);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                acks.flush_all().await;
            }
        })
    }

    /// Takes `sub`'s checked acknowledgments into the pending set, whole or
    /// not at all. `heads` are the heads they were checked against (for the
    /// lag metric). Returns the flush that will write them.
    pub fn offer(
        &self,
        sub: &Arc<str>,
        entries: &[(Topic, u64)],
        heads: &[u64],
    ) -> Result<u64, AckError> {
        let at_ms = crate::event::now_ms();
        let mut set = self.set.lock();
        let new = entries.iter().filter(|(t, _)| set.is_new(sub, t)).count();
        if set.len + new > self.max_pending {
            drop(set);
            crate::telemetry::acks::refused(entries.len() as u64);
            return Err(AckError::Full);
        }
        let mut coalesced = 0;
        for ((topic, seq), head) in entries.iter().zip(heads) {
            coalesced += u64::from(set.raise(sub, topic, *seq, at_ms));
            set.lag = set.lag.max(head.saturating_sub(*seq));
        }
        let generation = set.generation;
        let pending = set.len;
        drop(set);
        crate::telemetry::acks::received(entries.len() as u64, coalesced, pending);
        Ok(generation)
    }

    /// Waits until flush `generation` (or a later one) has finished:
    /// `Ok` if it wrote what it took.
    pub async fn flushed(&self, generation: u64) -> Result<(), AckError> {
        let mut rx = self.flushed.subscribe();
        let done = rx
            .wait_for(|f| f.generation >= generation)
            .await
            .map(|f| *f)
            .map_err(|_| AckError::NotWritten)?;
        if done.ok {
            Ok(())
        } else {
            Err(AckError::NotWritten)
        }
    }

    /// Writes everything pending now. A failed write puts its
    /// acknowledgments back (keeping the higher seq of each pair), to be
    /// tried at the next interval.
    pub async fn flush_all(&self) {
        let _writing = self.writing.lock().await;
        let (taken, generation, lag) = {
            let mut set = self.set.lock();
            let taken = std::mem::take(&mut set.by_sub);
            set.len = 0;
            let generation = set.generation;
            set.generation += 1;
            let lag = std::mem::take(&mut set.lag);
            crate::telemetry::acks::pending(0);
            (taken, generation, lag)
        };
        let ok = if taken.is_empty() {
            true
        } else {
            crate::telemetry::acks::lag(lag);
            self.write(Set::rows(taken)).await
        };
        self.flushed.send_replace(Flushed {
            generation: generation + 1,
            ok,
        });
    }

    /// Writes `sub`'s pending acknowledgments now (after any write under
    /// way), so that a read of the store sees every acknowledgment this
    /// node accepted for it.
    pub async fn flush_sub(&self, sub: &str) -> Result<(), AckError> {
        let _writing = self.writing.lock().await;
        let taken = {
            let mut set = self.set.lock();
            let taken = set.by_sub.remove(sub);
            if let Some(t) = &taken {
                set.len -= t.len();
            }
            taken
        };
        let Some((sub, topics)) = taken.map(|t| (Arc::<str>::from(sub), t)) else {
            return Ok(());
        };
        if self.write(Set::rows(HashMap::from([(sub, topics)]))).await {
            Ok(())
        } else {
            Err(AckError::NotWritten)
        }
    }

    /// Drops `sub`'s pending acknowledgments (an admin deletes them).
    pub fn forget(&self, sub: &str) {
        let mut set = self.set.lock();
        if let Some(topics) = set.by_sub.remove(sub) {
            set.len -= topics.len();
        }
    }

    async fn write(&self, rows: Vec<AckWrite>) -> bool {
        match self.store.put_acks(&rows).await {
            Ok(()) => {
                crate::telemetry::acks::written(rows.len() as u64);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, acks = rows.len(), "writing acknowledgments failed; will retry");
                let mut set = self.set.lock();
                for row in rows {
                    let sub: Arc<str> = Arc::from(row.sub.as_str());
                    set.raise(&sub, &row.topic, row.seq, row.at_ms);
                }
                crate::telemetry::acks::pending(set.len);
                false
            }
        }
    }

    /// `sub`'s acknowledged seq of each topic, including what this node has
    /// not written yet.
    pub async fn positions(&self, sub: &str, topics: &[Topic]) -> Result<Cursor, AckError> {
        self.flush_sub(sub).await?;
        let acked = self.store.acks_of(sub, topics).await?;
        let mut cursor = Cursor::new();
        for (topic, seq) in topics.iter().zip(acked) {
            if let Some(seq) = seq {
                cursor.set(topic.clone(), seq);
            }
        }
        Ok(cursor)
    }

    /// Checks an acknowledgment against the store's heads, takes it into
    /// the pending set and waits for the flush that writes it.
    pub async fn ack_and_wait(
        &self,
        principal: &Principal,
        text: &str,
    ) -> Result<Cursor, AckError> {
        let entries = parse(text, principal)?;
        let topics: Vec<Topic> = entries.iter().map(|(t, _)| t.clone()).collect();
        let heads = self.store.heads(&topics).await?;
        check_heads(&entries, &heads)?;
        let generation = self.offer(&principal.sub, &entries, &heads)?;
        self.flushed(generation + 1).await?;
        let mut accepted = Cursor::new();
        for (topic, seq) in entries {
            accepted.set(topic, seq);
        }
        Ok(accepted)
    }

    /// Fills `since` with `sub`'s acknowledged positions for the topics it
    /// does not name (explicit positions win); topics never acknowledged
    /// stay without a position.
    pub async fn resume(
        &self,
        sub: &str,
        topics: &[Topic],
        since: &mut Cursor,
    ) -> Result<(), AckError> {
        let missing: Vec<Topic> = topics
            .iter()
            .filter(|t| since.get(t).is_none())
            .cloned()
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        for (topic, seq) in self.positions(sub, &missing).await?.iter() {
            since.set(topic.clone(), seq);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_keeps_the_highest_seq_and_counts_pairs_once() {
        let mut set = Set::default();
        let sub: Arc<str> = Arc::from("u1");
        let topic = Topic::parse("orders.1").expect("a valid topic");
        assert!(!set.raise(&sub, &topic, 5, 1));
        assert!(set.raise(&sub, &topic, 3, 2));
        assert!(set.raise(&sub, &topic, 9, 3));
        assert_eq!(set.len, 1);
        let rows = Set::rows(std::mem::take(&mut set.by_sub));
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].seq, rows[0].at_ms), (9, 3));
    }

    #[test]
    fn heads_refuse_acks_beyond_them() {
        let topic = Topic::parse("a").expect("a valid topic");
        assert!(check_heads(&[(topic.clone(), 3)], &[3]).is_ok());
        let err = check_heads(&[(topic, 4)], &[3]).expect_err("beyond the head");
        assert_eq!(err.code(), "invalid_cursor");
    }
}
