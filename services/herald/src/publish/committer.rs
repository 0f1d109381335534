//! Group commit: concurrent publishes share one transaction, so durable
//! throughput grows with concurrency instead of with fsyncs.
//!
//! Requests queue on bounded channels, one per writer; each writer takes
//! whatever is waiting (up to a cap), appends it in one transaction and
//! answers every request. One writer for SQLite (it has one write lock);
//! several for Postgres, where groups on different topics commit in
//! parallel. A request goes to the writer of its (first) topic: two writers
//! never queue on the same topic's row lock, which would serialise them while
//! each holds a transaction open.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tracing::Instrument as _;

use crate::bus::Bus;
use crate::event::{Event, NewEvent, now_ms};
use crate::store::{Appended, Store, StoreError};

/// Group commit settings.
#[derive(Debug, Clone, Copy)]
pub struct CommitterSettings {
    /// Concurrent writer transactions.
    pub writers: usize,
    /// Requests that may wait for a writer; a publisher waits beyond that.
    pub queue_requests: usize,
    /// A group stops growing once it holds this many events.
    pub max_group_events: usize,
}

impl CommitterSettings {
    /// Settings for `store`: `writers` concurrent transactions where the
    /// store can commit in parallel (Postgres), one where it has a single
    /// write lock (SQLite).
    pub fn new(store: &dyn Store, writers: usize) -> CommitterSettings {
        CommitterSettings {
            writers: if store.kind() == "sqlite" {
                1
            } else {
                writers.max(1)
            },
            queue_requests: 16_384,
            max_group_events: 4_000,
        }
    }
}

/// Each event of a request with its outcome, in input order.
type Answer = Result<Vec<(NewEvent, Appended)>, Arc<StoreError>>;

struct Request {
    events: Vec<NewEvent>,
    reply: oneshot::Sender<Answer>,
    /// The publisher's span: the bus publish of these events joins its trace.
    span: tracing::Span,
}

/// A handle to the group committer. Cheap to clone.
///
/// Each writer hands its groups' new events to the bus after the commit and
/// before answering, in seq order, and a topic always has the same writer:
/// subscribers see a topic's events in order (see [`crate::publish`]).
#[derive(Clone)]
pub struct Committer {
    writers: Arc<[mpsc::Sender<Request>]>,
}

impl Committer {
    /// Starts the writers on the current Tokio runtime: they commit to
    /// `store`, then publish the new events on `bus`.
    pub fn start(
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        settings: CommitterSettings,
    ) -> Committer {
        let count = settings.writers.max(1);
        let writers: Vec<_> = (0..count)
            .map(|_| {
                let (tx, rx) = mpsc::channel((settings.queue_requests / count).max(1));
                tokio::spawn(writer(
                    store.clone(),
                    bus.clone(),
                    rx,
                    settings.max_group_events,
                ));
                tx
            })
            .collect();
        Committer {
            writers: writers.into(),
        }
    }

    /// Appends `events` atomically (all or none), sharing the transaction
    /// with whatever other requests are waiting. Answers each event with its
    /// outcome, in input order.
    pub async fn append(&self, events: Vec<NewEvent>) -> Answer {
        let (reply, answer) = oneshot::channel();
        let writer = match events.first() {
            Some(first) if self.writers.len() > 1 => {
                let mut hasher = std::hash::DefaultHasher::new();
                first.topic.hash(&mut hasher);
                (hasher.finish() % self.writers.len() as u64) as usize
            }
            _ => 0,
        };
        let queue = &self.writers[writer];
        crate::telemetry::metrics::commit_queue_depth(queue.max_capacity() - queue.capacity());
        queue
            .send(Request {
                events,
                reply,
                span: tracing::Span::current(),
            })
            .await
            .map_err(|_| Arc::new(StoreError::Closed))?;
        answer.await.map_err(|_| Arc::new(StoreError::Closed))?
    }
}

async fn writer(
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    mut rx: mpsc::Receiver<Request>,
    max_group_events: usize,
) {
    loop {
        let group = {
            let Some(first) = rx.recv().await else { return };
            let mut count = first.events.len();
            let mut group = vec![first];
            while count < max_group_events {
                match rx.try_recv() {
                    Ok(next) => {
                        count += next.events.len();
                        group.push(next);
                    }
                    Err(_) => break,
                }
            }
            group
        };
        commit(&*store, &*bus, group).await;
    }
}

async fn commit(store: &dyn Store, bus: &dyn Bus, group: Vec<Request>) {
    let mut spans = Vec::with_capacity(group.len());
    let (events, replies): (Vec<_>, Vec<_>) = group
        .into_iter()
        .map(|r| {
            spans.push(r.span);
            (r.events, r.reply)
        })
        .unzip();
    let started = std::time::Instant::now();
    let appended = store.append_group(&events, now_ms()).await;
    crate::telemetry::metrics::committed(started.elapsed(), counts(&appended));
    match appended {
        Ok(answers) => {
            let outcomes: Vec<Vec<(NewEvent, Appended)>> = events
                .into_iter()
                .zip(answers)
                .map(|(events, answer)| events.into_iter().zip(answer).collect())
                .collect();
            // One hand-over per request, each in its publisher's trace.
            for (outcome, span) in outcomes.iter().zip(&spans) {
                hand_to_bus(bus, outcome.iter(), span).await;
            }
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(Ok(outcome));
            }
        }
        // A statement failed (a lock conflict, or something about one request):
        // commit each request on its own so one cannot fail the others.
        Err(StoreError::Unavailable(sqlx::Error::Database(e))) if events.len() > 1 => {
            tracing::warn!(error = %e, requests = events.len(), "group commit failed; committing its requests one by one");
            for ((events, reply), span) in events.into_iter().zip(replies).zip(&spans) {
                let answer: Answer = store
                    .append_group(std::slice::from_ref(&events), now_ms())
                    .await
                    .map(|mut a| {
                        events
                            .into_iter()
                            .zip(a.pop().unwrap_or_default())
                            .collect()
                    })
                    .map_err(Arc::new);
                if let Ok(outcome) = &answer {
                    hand_to_bus(bus, outcome.iter(), span).await;
                }
                let _ = reply.send(answer);
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, requests = events.len(), "group commit failed");
            let e = Arc::new(e);
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// Hands the new (not repeated) events of committed outcomes to the bus, in
/// order. The events are committed whatever happens here: a failure only
/// delays them, and subscribers repair the gap from the store.
async fn hand_to_bus<'a>(
    bus: &dyn Bus,
    outcomes: impl Iterator<Item = &'a (NewEvent, Appended)>,
    publisher: &tracing::Span,
) {
    let fresh: Vec<Event> = outcomes
        .filter(|(_, a)| !a.duplicate)
        .map(|(e, a)| Event {
            topic: e.topic.clone(),
            seq: a.seq,
            id: a.id.clone(),
            kind: e.kind.clone(),
            time_ms: a.time_ms,
            data: e.data.clone(),
        })
        .collect();
    if fresh.is_empty() {
        return;
    }
    for event in fresh
        .iter()
        .filter(|e| crate::telemetry::logs_topic(&e.topic))
    {
        tracing::debug!(
            target: crate::telemetry::TOPIC_LOG_TARGET,
            topic = event.topic.as_str(),
            seq = event.seq,
            id = event.id.as_str(),
            "committed; handing it to the bus"
        );
    }
    let span = tracing::info_span!(parent: publisher, "bus.publish", events = fresh.len(), bus = bus.kind());
    let started = std::time::Instant::now();
    let result = bus.publish(&fresh).instrument(span).await;
    crate::telemetry::metrics::bus_published(started.elapsed(), result.is_ok());
    if let Err(e) = result {
        tracing::warn!(error = %e, events = fresh.len(), "bus publish failed after commit");
    }
}

/// New and repeated events of a group commit, for the metrics.
fn counts(appended: &Result<Vec<Vec<Appended>>, StoreError>) -> Result<(u64, u64), ()> {
    let answers = appended.as_ref().map_err(|_| ())?;
    let duplicates = answers.iter().flatten().filter(|a| a.duplicate).count() as u64;
    let all = answers.iter().map(Vec::len).sum::<usize>() as u64;
    Ok((all - duplicates, duplicates))
}
