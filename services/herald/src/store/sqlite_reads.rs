//! Reads on SQLite for many callers at once: topic heads, and the events
//! after a seq (a subscription's replay, a long poll's page).
//!
//! Every subscription asks for its topics' heads, and a resuming one for
//! what it missed; when thousands of clients connect together, a round trip
//! to one of sqlx's SQLite worker threads per statement (a thread woken for
//! each, and a transaction of four statements per replay) cost more than the
//! answers. Callers queue what they ask; the first finding no read under way
//! starts one (a task of its own, so a caller that goes away does not leave
//! the others waiting), which takes everything queued and answers it in one
//! read transaction: the heads of every topic asked (one statement per
//! [`CHUNK`] topics), then one statement per distinct replay asked (clients
//! of one topic that resume from the same seq share it), each caller
//! answered as soon as its part is read. It goes on while more arrived
//! meanwhile, as the committer does with commits. A replay's events and its
//! head come from that one snapshot, as a read of its own would.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnection, SqlitePool};
use tokio::sync::oneshot;

use super::sqlite::event_from_row;
use super::{Read, StoreError, to_i64, to_u64};
use crate::topic::Topic;

/// Topics per statement: far below SQLite's 32,766 bound parameters.
const CHUNK: usize = 500;

type HeadsAnswer = oneshot::Sender<Result<Vec<u64>, StoreError>>;
type ReadAnswer = oneshot::Sender<Result<Read, StoreError>>;

/// One replay asked: the topic, the seq after which, and how many at most.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Since {
    topic: Topic,
    after: u64,
    limit: usize,
}

/// The callers waiting, and whether a read is under way.
#[derive(Default)]
struct Queue {
    heads: Vec<(Vec<Topic>, HeadsAnswer)>,
    since: Vec<(Since, ReadAnswer)>,
    reading: bool,
}

impl Queue {
    fn is_empty(&self) -> bool {
        self.heads.is_empty() && self.since.is_empty()
    }
}

/// Coalesced reads of one pool.
#[derive(Clone)]
pub(super) struct Reads {
    pool: SqlitePool,
    queue: Arc<Mutex<Queue>>,
}

impl Reads {
    pub(super) fn new(pool: SqlitePool) -> Reads {
        Reads {
            pool,
            queue: Arc::default(),
        }
    }

    /// The head of each of `topics` (0 for a topic never written), in order.
    pub(super) async fn heads(&self, topics: &[Topic]) -> Result<Vec<u64>, StoreError> {
        if topics.is_empty() {
            return Ok(Vec::new());
        }
        let (answer, answered) = oneshot::channel();
        self.queue(|queue| queue.heads.push((topics.to_vec(), answer)));
        match answered.await {
            Ok(result) => result,
            // The runtime that ran the read stopped: read alone.
            Err(_) => {
                let mut conn = self.pool.acquire().await?;
                let heads = read_heads(&mut conn, topics).await?;
                Ok(pick(&heads, topics))
            }
        }
    }

    /// Up to `limit` events of `topic` after seq `after`, and the head the
    /// read was bounded by (one snapshot).
    pub(super) async fn since(
        &self,
        topic: &Topic,
        after: u64,
        limit: usize,
    ) -> Result<Read, StoreError> {
        let asked = Since {
            topic: topic.clone(),
            after,
            limit,
        };
        let (answer, answered) = oneshot::channel();
        self.queue(|queue| queue.since.push((asked.clone(), answer)));
        match answered.await {
            Ok(result) => result,
            // The runtime that ran the read stopped: read alone.
            Err(_) => {
                let mut conn = self.pool.acquire().await?;
                let mut tx = conn.begin().await?;
                let heads = read_heads(&mut *tx, std::slice::from_ref(topic)).await?;
                let head = pick(&heads, std::slice::from_ref(topic))[0];
                let events = read_events(&mut *tx, &asked, head).await?;
                tx.commit().await?;
                Ok(Read { events, head })
            }
        }
    }

    /// Queues a caller, starting a read when none is under way.
    fn queue(&self, push: impl FnOnce(&mut Queue)) {
        let start = {
            let mut queue = self.queue.lock();
            push(&mut queue);
            !std::mem::replace(&mut queue.reading, true)
        };
        if start {
            let reads = self.clone();
            tokio::spawn(async move { reads.drain().await });
        }
    }

    /// Reads for everyone queued, until nobody is.
    async fn drain(self) {
        loop {
            let batch = {
                let mut queue = self.queue.lock();
                if queue.is_empty() {
                    queue.reading = false;
                    return;
                }
                Queue {
                    heads: std::mem::take(&mut queue.heads),
                    since: std::mem::take(&mut queue.since),
                    reading: true,
                }
            };
            self.answer(batch).await;
        }
    }

    /// Answers one batch; a failure goes to every caller not yet answered.
    async fn answer(&self, batch: Queue) {
        let Queue { heads, since, .. } = batch;
        // Identical replays share one statement and one answer.
        let mut replays: HashMap<Since, Vec<ReadAnswer>> = HashMap::new();
        for (asked, answer) in since {
            replays.entry(asked).or_default().push(answer);
        }
        let mut all: Vec<Topic> = heads
            .iter()
            .flat_map(|(t, _)| t.iter().cloned())
            .chain(replays.keys().map(|s| s.topic.clone()))
            .collect();
        all.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        all.dedup();

        let mut heads_left = heads;
        let mut replays_left = replays;
        let failed = async {
            let mut conn = self.pool.acquire().await?;
            let mut tx = conn.begin().await?;
            let read = read_heads(&mut *tx, &all).await?;
            for (topics, answer) in heads_left.drain(..) {
                // A caller that went away no longer needs its answer.
                let _ = answer.send(Ok(pick(&read, &topics)));
            }
            let asked: Vec<Since> = replays_left.keys().cloned().collect();
            for asked in asked {
                let head = read.get(asked.topic.as_str()).copied().unwrap_or(0);
                let events = read_events(&mut *tx, &asked, head).await?;
                for answer in replays_left.remove(&asked).into_iter().flatten() {
                    let _ = answer.send(Ok(Read {
                        events: events.clone(),
                        head,
                    }));
                }
            }
            tx.commit().await?;
            Ok::<(), StoreError>(())
        }
        .await
        .err();
        if let Some(e) = failed {
            // One failure for every caller of the read not yet answered.
            let error = || {
                StoreError::Unavailable(sqlx::Error::Protocol(format!("reading the store: {e}")))
            };
            for (_, answer) in heads_left {
                let _ = answer.send(Err(error()));
            }
            for answer in replays_left.into_values().flatten() {
                let _ = answer.send(Err(error()));
            }
        }
    }
}

/// The head of each of `topics`, in order, from what was read (0 for a
/// topic never written).
fn pick(heads: &HashMap<String, u64>, topics: &[Topic]) -> Vec<u64> {
    topics
        .iter()
        .map(|t| heads.get(t.as_str()).copied().unwrap_or(0))
        .collect()
}

/// The heads of `topics` that were ever written, by name.
async fn read_heads(
    conn: &mut SqliteConnection,
    topics: &[Topic],
) -> Result<HashMap<String, u64>, StoreError> {
    let mut heads = HashMap::with_capacity(topics.len());
    for chunk in topics.chunks(CHUNK) {
        let placeholders = vec!["?"; chunk.len()].join(",");
        // Only placeholders are formatted in; the topics are bound.
        let sql = format!("SELECT topic, head FROM topics WHERE topic IN ({placeholders})");
        let mut query = sqlx::query_as::<_, (String, i64)>(sqlx::AssertSqlSafe(sql));
        for topic in chunk {
            query = query.bind(topic.as_str());
        }
        for (topic, head) in query.fetch_all(&mut *conn).await? {
            heads.insert(topic, to_u64(head));
        }
    }
    Ok(heads)
}

/// The events `asked` for, up to `head`.
async fn read_events(
    conn: &mut SqliteConnection,
    asked: &Since,
    head: u64,
) -> Result<Vec<crate::event::Event>, StoreError> {
    if head <= asked.after || asked.limit == 0 {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(
        "SELECT seq, id, type, time_ms, data FROM events \
         WHERE topic = ? AND seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
    )
    .bind(asked.topic.as_str())
    .bind(to_i64(asked.after))
    .bind(to_i64(head))
    .bind(i64::try_from(asked.limit).unwrap_or(i64::MAX))
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| event_from_row(&asked.topic, row))
        .collect()
}
