//! The cluster store: Postgres, shared by every node.
//!
//! A group commit takes four statements whatever its size (lock heads, look
//! up repeated ids, insert rows, move heads), each over arrays. Heads are
//! locked in topic order, so concurrent groups from several nodes queue on a
//! topic's row instead of deadlocking, and seqs stay gapless across nodes.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::value::RawValue;
use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions};

use super::plan::{plan, topics};
use super::revocations::{self, Dialect};
use super::tickets;
use super::{Appended, Read, RevocationChanges, Store, StoreError, to_i64, to_u64};
use crate::auth::RevocationKind;
use crate::event::{Event, NewEvent};
use crate::topic::Topic;

/// The Postgres store.
pub struct PostgresStore {
    pub(super) pool: PgPool,
    /// Whether commits write the push feed (`store::outbox`).
    pub(super) push_feed: std::sync::atomic::AtomicBool,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://...`). Connections are made lazily, so a
    /// node can start before its database is reachable.
    pub async fn open(url: &str) -> Result<PostgresStore, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(24)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy(url)?;
        Ok(PostgresStore {
            pool,
            push_feed: Default::default(),
        })
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("../../migrations/postgres")
            .run(&self.pool)
            .await?;
        Ok(())
    }

    async fn append_group(
        &self,
        requests: &[Vec<NewEvent>],
        time_ms: i64,
    ) -> Result<Vec<Vec<Appended>>, StoreError> {
        let group_topics = topics(requests);
        let names: Vec<&str> = group_topics.iter().map(|t| t.as_str()).collect();
        let mut tx = self.pool.begin().await?;

        // Lock every head of the group, in topic order; creates missing topics.
        let rows = sqlx::query(
            "INSERT INTO topics (topic, head) SELECT t, 0 FROM UNNEST($1::text[]) AS t ORDER BY t \
             ON CONFLICT (topic) DO UPDATE SET head = topics.head RETURNING topic, head",
        )
        .bind(&names)
        .fetch_all(&mut *tx)
        .await?;
        let mut heads = HashMap::with_capacity(group_topics.len());
        for row in rows {
            let name: String = row.try_get(0)?;
            if let Some(topic) = group_topics.iter().find(|t| t.as_str() == name) {
                heads.insert(*topic, to_u64(row.try_get(1)?));
            }
        }

        // Ids already stored (read after the locks, so a concurrent group's
        // commit is seen).
        let mut by_key: HashMap<(&str, &str), (&Topic, &str)> = HashMap::new();
        for e in requests.iter().flatten().filter(|e| e.id_given) {
            by_key.insert((e.topic.as_str(), e.id.as_str()), (&e.topic, e.id.as_str()));
        }
        let (key_topics, key_ids): (Vec<&str>, Vec<&str>) = by_key.keys().copied().unzip();
        // LATERAL: one index lookup per key, never a scan of the log.
        let rows = if by_key.is_empty() {
            Vec::new()
        } else {
            sqlx::query(
                "SELECT k.topic, k.id, e.seq, e.time_ms \
                 FROM UNNEST($1::text[], $2::text[]) AS k(topic, id) \
                 CROSS JOIN LATERAL (SELECT seq, time_ms FROM events \
                   WHERE events.topic = k.topic AND events.id = k.id) AS e",
            )
            .bind(&key_topics)
            .bind(&key_ids)
            .fetch_all(&mut *tx)
            .await?
        };
        let mut existing = HashMap::with_capacity(rows.len());
        for row in rows {
            let topic: String = row.try_get(0)?;
            let id: String = row.try_get(1)?;
            if let Some(key) = by_key.get(&(topic.as_str(), id.as_str())) {
                existing.insert(*key, (to_u64(row.try_get(2)?), row.try_get(3)?));
            }
        }

        let plan = plan(requests, heads, &existing, time_ms);
        if !plan.rows.is_empty() {
            let mut topics = Vec::with_capacity(plan.rows.len());
            let mut seqs = Vec::with_capacity(plan.rows.len());
            let mut ids = Vec::with_capacity(plan.rows.len());
            let mut kinds = Vec::with_capacity(plan.rows.len());
            let mut datas = Vec::with_capacity(plan.rows.len());
            for row in &plan.rows {
                topics.push(row.topic.as_str());
                seqs.push(to_i64(row.seq));
                ids.push(row.event.id.as_str());
                kinds.push(row.event.kind.as_deref());
                datas.push(row.event.data.get());
            }
            sqlx::query(
                "INSERT INTO events (topic, seq, id, type, time_ms, data) \
                 SELECT t, s, i, k, $5, d \
                 FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $6::text[]) \
                 AS r(t, s, i, k, d)",
            )
            .bind(&topics)
            .bind(&seqs)
            .bind(&ids)
            .bind(&kinds)
            .bind(time_ms)
            .bind(&datas)
            .execute(&mut *tx)
            .await?;
            let (head_topics, head_seqs): (Vec<&str>, Vec<i64>) = plan
                .heads
                .iter()
                .map(|(t, h)| (t.as_str(), to_i64(*h)))
                .unzip();
            sqlx::query(
                "UPDATE topics SET head = v.head \
                 FROM UNNEST($1::text[], $2::int8[]) AS v(topic, head) \
                 WHERE topics.topic = v.topic",
            )
            .bind(&head_topics)
            .bind(&head_seqs)
            .execute(&mut *tx)
            .await?;
            if self.push_feed.load(std::sync::atomic::Ordering::Relaxed) {
                super::outbox::feed_postgres(&mut tx, &plan.rows, time_ms).await?;
            }
        }
        tx.commit().await.map_err(commit_failed)?;
        Ok(plan.answers)
    }

    async fn read_since(
        &self,
        topic: &Topic,
        after: u64,
        limit: usize,
    ) -> Result<Read, StoreError> {
        // The head is read first and bounds the events: everything up to a
        // committed head is in the table unless pruned, so an empty answer
        // below the head really means "pruned", never "not yet visible".
        let head: Option<i64> = sqlx::query_scalar("SELECT head FROM topics WHERE topic = $1")
            .bind(topic.as_str())
            .fetch_optional(&self.pool)
            .await?;
        let head = to_u64(head.unwrap_or(0));
        let mut events = Vec::new();
        if head > after && limit > 0 {
            let rows = sqlx::query(
                "SELECT seq, id, type, time_ms, data FROM events \
                 WHERE topic = $1 AND seq > $2 AND seq <= $3 ORDER BY seq LIMIT $4",
            )
            .bind(topic.as_str())
            .bind(to_i64(after))
            .bind(to_i64(head))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?;
            events.reserve(rows.len());
            for row in rows {
                let data: String = row.try_get(4)?;
                events.push(Event {
                    topic: topic.clone(),
                    seq: to_u64(row.try_get(0)?),
                    id: row.try_get(1)?,
                    kind: row.try_get(2)?,
                    time_ms: row.try_get(3)?,
                    data: RawValue::from_string(data)
                        .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
                });
            }
        }
        Ok(Read { events, head })
    }

    async fn heads(&self, topics: &[Topic]) -> Result<Vec<u64>, StoreError> {
        let names: Vec<&str> = topics.iter().map(|t| t.as_str()).collect();
        let rows = sqlx::query("SELECT topic, head FROM topics WHERE topic = ANY($1::text[])")
            .bind(&names)
            .fetch_all(&self.pool)
            .await?;
        let mut found: HashMap<String, i64> = HashMap::with_capacity(rows.len());
        for row in rows {
            found.insert(row.try_get(0)?, row.try_get(1)?);
        }
        Ok(topics
            .iter()
            .map(|t| to_u64(found.get(t.as_str()).copied().unwrap_or(0)))
            .collect())
    }

    async fn prune(
        &self,
        older_than_ms: i64,
        keep_per_topic: u64,
        batch: u64,
    ) -> Result<u64, StoreError> {
        let by_age = sqlx::query(
            "DELETE FROM events WHERE ctid = ANY(ARRAY( \
             SELECT ctid FROM events WHERE time_ms < $1 LIMIT $2))",
        )
        .bind(older_than_ms)
        .bind(to_i64(batch))
        .execute(&self.pool)
        .await?
        .rows_affected();
        let by_count = sqlx::query(
            "DELETE FROM events WHERE ctid = ANY(ARRAY( \
             SELECT e.ctid FROM topics t JOIN events e ON e.topic = t.topic \
             WHERE e.seq <= t.head - $1 LIMIT $2))",
        )
        .bind(to_i64(keep_per_topic))
        .bind(to_i64(batch))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(by_age + by_count)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn revoke(
        &self,
        kind: RevocationKind,
        value: &str,
        revoked_at_secs: u64,
        expires_at_secs: u64,
    ) -> Result<(), StoreError> {
        revocations::revoke(
            &self.pool,
            Dialect::Postgres,
            kind,
            value,
            revoked_at_secs,
            expires_at_secs,
        )
        .await
    }

    async fn revocations(
        &self,
        after_change: u64,
        now_secs: u64,
    ) -> Result<RevocationChanges, StoreError> {
        revocations::read(&self.pool, Dialect::Postgres, after_change, now_secs).await
    }

    async fn prune_revocations(&self, now_secs: u64) -> Result<u64, StoreError> {
        revocations::prune_expired(&self.pool, Dialect::Postgres, now_secs).await
    }

    async fn put_ticket(
        &self,
        key: &str,
        grant: &str,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        tickets::put(&self.pool, Dialect::Postgres, key, grant, expires_at_ms).await
    }

    async fn take_ticket(&self, key: &str, now_ms: i64) -> Result<Option<String>, StoreError> {
        tickets::take(&self.pool, Dialect::Postgres, key, now_ms).await
    }

    async fn prune_tickets(&self, now_ms: i64) -> Result<u64, StoreError> {
        tickets::prune(&self.pool, Dialect::Postgres, now_ms).await
    }

    async fn put_acks(&self, acks: &[super::AckWrite]) -> Result<(), StoreError> {
        super::acks::put_postgres(&self.pool, acks).await
    }

    async fn acks_by_topic(
        &self,
        topic: &Topic,
        sub: Option<&str>,
        after_sub: Option<&str>,
        limit: usize,
    ) -> Result<Vec<super::AckRow>, StoreError> {
        super::acks::by_topic_postgres(&self.pool, topic, sub, after_sub, limit).await
    }

    async fn acks_of(&self, sub: &str, topics: &[Topic]) -> Result<Vec<Option<u64>>, StoreError> {
        super::acks::of_sub_postgres(&self.pool, sub, topics).await
    }

    async fn delete_acks(&self, sub: &str) -> Result<u64, StoreError> {
        super::acks::delete_sub(&self.pool, sub).await
    }

    async fn prune_acks(&self, older_than_ms: i64) -> Result<u64, StoreError> {
        super::acks::prune_idle(&self.pool, older_than_ms).await
    }
}

/// A failed `COMMIT`: refused by the server (it answered, and rolled back),
/// or lost on the way (the connection broke after `COMMIT` was sent, so the
/// transaction may have committed).
fn commit_failed(error: sqlx::Error) -> StoreError {
    match error {
        sqlx::Error::Database(_) => StoreError::Unavailable(error),
        other => StoreError::CommitUnknown(other),
    }
}
