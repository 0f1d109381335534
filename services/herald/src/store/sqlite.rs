//! The embedded store: one SQLite file in WAL mode, for a single node.
//!
//! Writes are serialised by the committer (one writer), so SQLite's single
//! write lock is never contended by Herald itself; reads run concurrently.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::value::RawValue;
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::plan::{plan, topics};
use super::revocations::{self, Dialect};
use super::sqlite_heads::Heads;
use super::tickets;
use super::{Appended, Read, RevocationChanges, Store, StoreError, to_i64, to_u64};
use crate::auth::RevocationKind;
use crate::event::{Event, NewEvent};
use crate::topic::Topic;

/// The SQLite store.
pub struct SqliteStore {
    pub(super) pool: SqlitePool,
    /// Whether commits write the push feed (`store::outbox`).
    pub(super) push_feed: std::sync::atomic::AtomicBool,
    /// Topic heads, read for many callers at once.
    heads: Heads,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` (`sqlite://relative.db`
    /// or `sqlite:///absolute/path.db`).
    pub async fn open(url: &str) -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a 201 means the event survives a power cut, not only a crash.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        Ok(SqliteStore {
            heads: Heads::new(pool.clone()),
            pool,
            push_feed: Default::default(),
        })
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("../../migrations/sqlite")
            .run(&self.pool)
            .await?;
        Ok(())
    }

    async fn append_group(
        &self,
        requests: &[Vec<NewEvent>],
        time_ms: i64,
    ) -> Result<Vec<Vec<Appended>>, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let mut heads = HashMap::new();
        for topic in topics(requests) {
            let head: Option<i64> = sqlx::query_scalar("SELECT head FROM topics WHERE topic = ?")
                .bind(topic.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            heads.insert(topic, to_u64(head.unwrap_or(0)));
        }
        let mut existing = HashMap::new();
        for e in requests.iter().flatten().filter(|e| e.id_given) {
            let row = sqlx::query("SELECT seq, time_ms FROM events WHERE topic = ? AND id = ?")
                .bind(e.topic.as_str())
                .bind(e.id.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(row) = row {
                existing.insert(
                    (&e.topic, e.id.as_str()),
                    (to_u64(row.try_get(0)?), row.try_get(1)?),
                );
            }
        }
        let plan = plan(requests, heads, &existing, time_ms);
        for row in &plan.rows {
            sqlx::query(
                "INSERT INTO events (topic, seq, id, type, time_ms, data) VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(row.topic.as_str())
            .bind(to_i64(row.seq))
            .bind(row.event.id.as_str())
            .bind(row.event.kind.as_deref())
            .bind(time_ms)
            .bind(row.event.data.get())
            .execute(&mut *tx)
            .await?;
        }
        for (topic, head) in &plan.heads {
            sqlx::query(
                "INSERT INTO topics (topic, head) VALUES (?, ?) \
                 ON CONFLICT (topic) DO UPDATE SET head = excluded.head",
            )
            .bind(topic.as_str())
            .bind(to_i64(*head))
            .execute(&mut *tx)
            .await?;
        }
        if self.push_feed.load(std::sync::atomic::Ordering::Relaxed) {
            super::outbox::feed_sqlite(&mut tx, &plan.rows, time_ms).await?;
        }
        tx.commit().await?;
        Ok(plan.answers)
    }

    async fn read_since(
        &self,
        topic: &Topic,
        after: u64,
        limit: usize,
    ) -> Result<Read, StoreError> {
        // One read transaction: the head and the events come from one snapshot.
        let mut tx = self.pool.begin().await?;
        let head: Option<i64> = sqlx::query_scalar("SELECT head FROM topics WHERE topic = ?")
            .bind(topic.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let head = to_u64(head.unwrap_or(0));
        let mut events = Vec::new();
        if head > after && limit > 0 {
            let rows = sqlx::query(
                "SELECT seq, id, type, time_ms, data FROM events \
                 WHERE topic = ? AND seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
            )
            .bind(topic.as_str())
            .bind(to_i64(after))
            .bind(to_i64(head))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await?;
            events.reserve(rows.len());
            for row in rows {
                events.push(event_from_row(topic, &row)?);
            }
        }
        tx.commit().await?;
        Ok(Read { events, head })
    }

    async fn heads(&self, topics: &[Topic]) -> Result<Vec<u64>, StoreError> {
        self.heads.read(topics).await
    }

    async fn prune(
        &self,
        older_than_ms: i64,
        keep_per_topic: u64,
        batch: u64,
    ) -> Result<u64, StoreError> {
        let by_age = sqlx::query(
            "DELETE FROM events WHERE rowid IN \
             (SELECT rowid FROM events WHERE time_ms < ? LIMIT ?)",
        )
        .bind(older_than_ms)
        .bind(to_i64(batch))
        .execute(&self.pool)
        .await?
        .rows_affected();
        let by_count = sqlx::query(
            "DELETE FROM events WHERE rowid IN \
             (SELECT e.rowid FROM topics t JOIN events e ON e.topic = t.topic \
              WHERE e.seq <= t.head - ? LIMIT ?)",
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
            Dialect::Sqlite,
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
        revocations::read(&self.pool, Dialect::Sqlite, after_change, now_secs).await
    }

    async fn prune_revocations(&self, now_secs: u64) -> Result<u64, StoreError> {
        revocations::prune_expired(&self.pool, Dialect::Sqlite, now_secs).await
    }

    async fn put_ticket(
        &self,
        key: &str,
        grant: &str,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        tickets::put(&self.pool, Dialect::Sqlite, key, grant, expires_at_ms).await
    }

    async fn take_ticket(&self, key: &str, now_ms: i64) -> Result<Option<String>, StoreError> {
        tickets::take(&self.pool, Dialect::Sqlite, key, now_ms).await
    }

    async fn prune_tickets(&self, now_ms: i64) -> Result<u64, StoreError> {
        tickets::prune(&self.pool, Dialect::Sqlite, now_ms).await
    }

    async fn put_acks(&self, acks: &[super::AckWrite]) -> Result<(), StoreError> {
        super::acks::put_sqlite(&self.pool, acks).await
    }

    async fn acks_by_topic(
        &self,
        topic: &Topic,
        sub: Option<&str>,
        after_sub: Option<&str>,
        limit: usize,
    ) -> Result<Vec<super::AckRow>, StoreError> {
        super::acks::by_topic_sqlite(&self.pool, topic, sub, after_sub, limit).await
    }

    async fn acks_of(&self, sub: &str, topics: &[Topic]) -> Result<Vec<Option<u64>>, StoreError> {
        super::acks::of_sub_sqlite(&self.pool, sub, topics).await
    }

    async fn delete_acks(&self, sub: &str) -> Result<u64, StoreError> {
        super::acks::delete_sub(&self.pool, sub).await
    }

    async fn prune_acks(&self, older_than_ms: i64) -> Result<u64, StoreError> {
        super::acks::prune_idle(&self.pool, older_than_ms).await
    }
}

fn event_from_row(topic: &Topic, row: &sqlx::sqlite::SqliteRow) -> Result<Event, StoreError> {
    let data: String = row.try_get(4)?;
    Ok(Event {
        topic: topic.clone(),
        seq: to_u64(row.try_get(0)?),
        id: row.try_get(1)?,
        kind: row.try_get(2)?,
        time_ms: row.try_get(3)?,
        data: RawValue::from_string(data).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
    })
}
