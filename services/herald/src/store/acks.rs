//! Acknowledgments in the store: one row per subscriber and topic holding
//! the seq up to which that subscriber has processed every event. The SQL
//! of both stores lives here, side by side, so the forward-only rule reads
//! the same in each: a write raises a row's seq, never lowers it, and its
//! time moves only when the seq does.

use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;
use sqlx::{Database, Encode, Executor, IntoArguments, Pool, Row, Type};

use super::{Changed, StoreError, to_i64, to_u64};
use crate::topic::Topic;

/// One acknowledgment to store: `sub` has processed `topic` up to `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckWrite {
    pub sub: String,
    pub topic: Topic,
    pub seq: u64,
    /// When the node received it, milliseconds since the epoch.
    pub at_ms: i64,
}

/// One stored acknowledgment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckRow {
    pub sub: String,
    pub seq: u64,
    /// When the seq last rose, milliseconds since the epoch.
    pub acked_at_ms: i64,
}

/// The highest seq of each pair, sorted by subscriber and topic:
/// concurrent writers on several nodes then lock rows in one order and
/// never deadlock, and no statement touches a row twice.
fn highest(acks: &[AckWrite]) -> Vec<AckWrite> {
    let mut by_pair: std::collections::BTreeMap<(&str, &str), AckWrite> = Default::default();
    for ack in acks {
        by_pair
            .entry((ack.sub.as_str(), ack.topic.as_str()))
            .and_modify(|kept| {
                if ack.seq > kept.seq {
                    *kept = ack.clone();
                }
            })
            .or_insert_with(|| ack.clone());
    }
    by_pair.into_values().collect()
}

/// Rows per SQLite statement: 4 parameters each, far below SQLite's bound
/// on parameters, and few statements per flush.
const SQLITE_ROWS_PER_STATEMENT: usize = 250;

pub async fn put_sqlite(pool: &SqlitePool, acks: &[AckWrite]) -> Result<(), StoreError> {
    if acks.is_empty() {
        return Ok(());
    }
    let rows = highest(acks);
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    for chunk in rows.chunks(SQLITE_ROWS_PER_STATEMENT) {
        // Only placeholders vary: the text holds no input.
        let sql = format!(
            "INSERT INTO acks (sub, topic, seq, acked_at) VALUES {} \
             ON CONFLICT (sub, topic) DO UPDATE SET seq = excluded.seq, acked_at = excluded.acked_at \
             WHERE excluded.seq > acks.seq",
            vec!["(?, ?, ?, ?)"; chunk.len()].join(", ")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for ack in chunk {
            query = query
                .bind(ack.sub.as_str())
                .bind(ack.topic.as_str())
                .bind(to_i64(ack.seq))
                .bind(ack.at_ms);
        }
        query.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

pub async fn put_postgres(pool: &PgPool, acks: &[AckWrite]) -> Result<(), StoreError> {
    if acks.is_empty() {
        return Ok(());
    }
    let rows = highest(acks);
    let subs: Vec<&str> = rows.iter().map(|a| a.sub.as_str()).collect();
    let topics: Vec<&str> = rows.iter().map(|a| a.topic.as_str()).collect();
    let seqs: Vec<i64> = rows.iter().map(|a| to_i64(a.seq)).collect();
    let times: Vec<i64> = rows.iter().map(|a| a.at_ms).collect();
    // The conflict's WHERE is evaluated on the row's latest committed
    // version, under its lock: a lower seq from another node never wins.
    sqlx::query(
        "INSERT INTO acks (sub, topic, seq, acked_at) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[]) \
         ON CONFLICT (sub, topic) DO UPDATE \
         SET seq = GREATEST(acks.seq, excluded.seq), acked_at = excluded.acked_at \
         WHERE excluded.seq > acks.seq",
    )
    .bind(&subs)
    .bind(&topics)
    .bind(&seqs)
    .bind(&times)
    .execute(pool)
    .await?;
    Ok(())
}

/// At most this many rows per receipt read.
pub const MAX_RECEIPTS: usize = 1_000;

pub async fn by_topic_sqlite(
    pool: &SqlitePool,
    topic: &Topic,
    sub: Option<&str>,
    after_sub: Option<&str>,
    limit: usize,
) -> Result<Vec<AckRow>, StoreError> {
    let rows = sqlx::query(
        "SELECT sub, seq, acked_at FROM acks \
         WHERE topic = ? AND (? IS NULL OR sub = ?) AND (? IS NULL OR sub > ?) \
         ORDER BY sub LIMIT ?",
    )
    .bind(topic.as_str())
    .bind(sub)
    .bind(sub)
    .bind(after_sub)
    .bind(after_sub)
    .bind(i64::try_from(limit.min(MAX_RECEIPTS)).unwrap_or(1))
    .fetch_all(pool)
    .await?;
    rows.iter().map(row_sqlite).collect()
}

fn row_sqlite(row: &sqlx::sqlite::SqliteRow) -> Result<AckRow, StoreError> {
    Ok(AckRow {
        sub: row.try_get(0)?,
        seq: to_u64(row.try_get(1)?),
        acked_at_ms: row.try_get(2)?,
    })
}

pub async fn by_topic_postgres(
    pool: &PgPool,
    topic: &Topic,
    sub: Option<&str>,
    after_sub: Option<&str>,
    limit: usize,
) -> Result<Vec<AckRow>, StoreError> {
    let rows = sqlx::query(
        "SELECT sub, seq, acked_at FROM acks \
         WHERE topic = $1 AND ($2::text IS NULL OR sub = $2) AND ($3::text IS NULL OR sub > $3) \
         ORDER BY sub LIMIT $4",
    )
    .bind(topic.as_str())
    .bind(sub)
    .bind(after_sub)
    .bind(i64::try_from(limit.min(MAX_RECEIPTS)).unwrap_or(1))
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(AckRow {
                sub: row.try_get(0)?,
                seq: to_u64(row.try_get(1)?),
                acked_at_ms: row.try_get(2)?,
            })
        })
        .collect()
}

pub async fn of_sub_sqlite(
    pool: &SqlitePool,
    sub: &str,
    topics: &[Topic],
) -> Result<Vec<Option<u64>>, StoreError> {
    let mut conn = pool.acquire().await?;
    let mut acked = Vec::with_capacity(topics.len());
    for topic in topics {
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT seq FROM acks WHERE sub = ? AND topic = ?")
                .bind(sub)
                .bind(topic.as_str())
                .fetch_optional(&mut *conn)
                .await?;
        acked.push(seq.map(to_u64));
    }
    Ok(acked)
}

pub async fn of_sub_postgres(
    pool: &PgPool,
    sub: &str,
    topics: &[Topic],
) -> Result<Vec<Option<u64>>, StoreError> {
    let names: Vec<&str> = topics.iter().map(|t| t.as_str()).collect();
    let rows =
        sqlx::query("SELECT topic, seq FROM acks WHERE sub = $1 AND topic = ANY($2::text[])")
            .bind(sub)
            .bind(&names)
            .fetch_all(pool)
            .await?;
    let mut found = std::collections::HashMap::with_capacity(rows.len());
    for row in rows {
        let topic: String = row.try_get(0)?;
        let seq: i64 = row.try_get(1)?;
        found.insert(topic, to_u64(seq));
    }
    Ok(topics
        .iter()
        .map(|t| found.get(t.as_str()).copied())
        .collect())
}

/// The statement that deletes one subscriber's rows (both stores: SQLite
/// binds the one `$1` as its first parameter).
const DELETE_SUB: &str = "DELETE FROM acks WHERE sub = $1";

/// The statement that deletes the rows of every subscriber whose newest
/// acknowledgment is older than `$1` (milliseconds).
const PRUNE_IDLE: &str = "DELETE FROM acks WHERE sub IN \
     (SELECT sub FROM acks GROUP BY sub HAVING MAX(acked_at) < $1)";

/// Deletes `sub`'s rows; returns how many went.
pub async fn delete_sub<DB: Database>(pool: &Pool<DB>, sub: &str) -> Result<u64, StoreError>
where
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    for<'a> DB::Arguments: IntoArguments<DB>,
    for<'q> &'q str: Type<DB> + Encode<'q, DB>,
    DB::QueryResult: Changed,
{
    Ok(sqlx::query(DELETE_SUB)
        .bind(sub)
        .execute(pool)
        .await?
        .changed())
}

/// Deletes the rows of subscribers idle since before `older_than_ms`.
pub async fn prune_idle<DB: Database>(
    pool: &Pool<DB>,
    older_than_ms: i64,
) -> Result<u64, StoreError>
where
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    for<'a> DB::Arguments: IntoArguments<DB>,
    i64: Type<DB> + for<'q> Encode<'q, DB>,
    DB::QueryResult: Changed,
{
    super::execute_with(pool, PRUNE_IDLE, older_than_ms).await
}

/// Deletes the acknowledgments of subscribers idle for longer than
/// `max_age` (the event retention: their positions point at pruned events).
pub async fn prune(store: &dyn super::Store, max_age: std::time::Duration) -> u64 {
    let cutoff = crate::event::now_ms() - i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX);
    match store.prune_acks(cutoff).await {
        Ok(n) => {
            if n > 0 {
                tracing::debug!(pruned = n, "retention pruned acknowledgments");
            }
            n
        }
        Err(e) => {
            tracing::warn!(error = %e, "pruning idle acknowledgments failed; will retry");
            0
        }
    }
}
