//! Topic heads on SQLite, read for many callers at once.
//!
//! Every subscription asks for its topics' heads; when thousands of clients
//! connect together, one statement each (a round trip to one of sqlx's
//! SQLite worker threads, and a thread woken for it) cost more than the
//! answers. Callers queue their topics; the first finding no read under way
//! starts one (a task of its own, so a caller that goes away does not leave
//! the others waiting), which takes everything queued, reads it with one
//! statement per [`CHUNK`] topics, answers every caller, and goes on while
//! more arrived meanwhile, as the committer does with commits.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use sqlx::sqlite::SqlitePool;
use tokio::sync::oneshot;

use super::{StoreError, to_u64};
use crate::topic::Topic;

/// Topics per statement: far below SQLite's 32,766 bound parameters.
const CHUNK: usize = 500;

type Answer = oneshot::Sender<Result<Vec<u64>, StoreError>>;

/// The callers waiting for heads, and whether a read is under way.
#[derive(Default)]
struct Queue {
    waiting: Vec<(Vec<Topic>, Answer)>,
    reading: bool,
}

/// Coalesced head reads of one pool.
#[derive(Clone)]
pub(super) struct Heads {
    pool: SqlitePool,
    queue: Arc<Mutex<Queue>>,
}

impl Heads {
    pub(super) fn new(pool: SqlitePool) -> Heads {
        Heads {
            pool,
            queue: Arc::default(),
        }
    }

    /// The head of each of `topics` (0 for a topic never written), in order.
    pub(super) async fn read(&self, topics: &[Topic]) -> Result<Vec<u64>, StoreError> {
        if topics.is_empty() {
            return Ok(Vec::new());
        }
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut queue = self.queue.lock();
            queue.waiting.push((topics.to_vec(), answer));
            !std::mem::replace(&mut queue.reading, true)
        };
        if start {
            let heads = self.clone();
            tokio::spawn(async move { heads.drain().await });
        }
        match answered.await {
            Ok(result) => result,
            // The runtime that ran the read stopped: read alone.
            Err(_) => read_all(&self.pool, topics)
                .await
                .map(|heads| pick(&heads, topics)),
        }
    }

    /// Reads for everyone queued, until nobody is.
    async fn drain(self) {
        loop {
            let batch = {
                let mut queue = self.queue.lock();
                if queue.waiting.is_empty() {
                    queue.reading = false;
                    return;
                }
                std::mem::take(&mut queue.waiting)
            };
            let mut all: Vec<Topic> = batch.iter().flat_map(|(t, _)| t.iter().cloned()).collect();
            all.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
            all.dedup();
            let read = read_all(&self.pool, &all).await;
            for (topics, answer) in batch {
                let result = match &read {
                    Ok(heads) => Ok(pick(heads, &topics)),
                    // One failure for every caller of the read.
                    Err(e) => Err(StoreError::Unavailable(sqlx::Error::Protocol(format!(
                        "reading topic heads: {e}"
                    )))),
                };
                // A caller that went away no longer needs its answer.
                let _ = answer.send(result);
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
async fn read_all(pool: &SqlitePool, topics: &[Topic]) -> Result<HashMap<String, u64>, StoreError> {
    let mut heads = HashMap::with_capacity(topics.len());
    let mut conn = pool.acquire().await?;
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
