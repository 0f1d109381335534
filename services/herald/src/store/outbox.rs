//! The push outbox in the store: the feed that a commit writes, the due
//! pushes it becomes, their claims and how they end. The SQL of both stores
//! lives here, side by side.
//!
//! # How a committed event becomes exactly one push per device
//!
//! 1. While push is on, the transaction that commits a group of events also
//!    writes one `push_feed` row per topic of the group ([`feed_sqlite`],
//!    [`feed_postgres`]): a commit without its feed row cannot exist.
//! 2. A scheduler takes feed rows and, in the same transaction, writes the
//!    due pushes they cause ([`OutboxStore::schedule`]): a feed row is gone
//!    only once its pushes are in the outbox. On Postgres, feed rows are
//!    taken `FOR UPDATE SKIP LOCKED`, so several nodes share the feed and
//!    never take one row twice.
//! 3. A due push is claimed by one node at a time: a short transaction
//!    locks due rows (`SKIP LOCKED`) and sets a lease
//!    ([`OutboxStore::claim`]). The node sends, then settles the row
//!    ([`OutboxStore::settle`], [`OutboxStore::retry_later`]). A node that
//!    dies between claim and settle leaves a lease that runs out; the row
//!    is then claimed again.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use sqlx::postgres::PgConnection;
use sqlx::sqlite::SqliteConnection;
use sqlx::{Row, postgres::PgRow, sqlite::SqliteRow};

use super::plan::Row as PlannedRow;
use super::{PostgresStore, SqliteStore, StoreError, to_i64, to_u64};
use crate::topic::Topic;

/// One taken feed row: events `first_seq..=last_seq` of `topic` were
/// committed at `time_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedRow {
    pub topic: Topic,
    pub first_seq: u64,
    pub last_seq: u64,
    pub time_ms: i64,
}

/// A device filter whose prefix is a prefix of a fed topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub device_id: String,
    pub sub: String,
    pub filter: String,
}

/// A due push to write: `device_id` is to hear of `topic` up to `last_seq`
/// at `due_at_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub device_id: String,
    pub topic: String,
    pub sub: String,
    pub first_seq: u64,
    pub last_seq: u64,
    /// Commit time of the first event it stands for.
    pub first_time_ms: i64,
    pub due_at_ms: i64,
}

/// Turns taken feed rows and the device filters that may match them into
/// due pushes (the matching and the delays are the push module's).
pub type Planner = dyn Fn(&[FeedRow], &[Candidate]) -> Vec<Due> + Send + Sync;

/// What one scheduling transaction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scheduled {
    /// Feed rows taken.
    pub feed_rows: usize,
    /// New due pushes.
    pub due: u64,
    /// Due pushes that took more events of their topic (collapsed).
    pub collapsed: u64,
}

/// A claimed push, with what sending it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub device_id: String,
    pub topic: String,
    pub sub: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub first_time_ms: i64,
    /// Failed sends so far.
    pub attempts: u32,
    pub platform: String,
    pub address: String,
    pub keys: Option<String>,
    /// The device's quiet time before this claim moved it (to put it back
    /// when nothing is sent).
    pub quiet_was: i64,
    /// The quiet time this claim set.
    pub quiet_set: i64,
}

/// The outbox of the store.
#[async_trait]
pub trait OutboxStore {
    /// Whether commits write the push feed (push is on for this node).
    fn set_push_feed(&self, on: bool);

    /// Takes up to `batch` feed rows and writes the due pushes `planner`
    /// makes of them, in one transaction. A due push for a device and topic
    /// that is already waiting takes the later `last_seq` and keeps its due
    /// time (collapse).
    async fn schedule(&self, batch: usize, planner: &Planner) -> Result<Scheduled, StoreError>;

    /// Claims up to `limit` pushes due at `now_ms` whose device is out of its
    /// quiet time, leasing them until `lease_until_ms`. With `quiet_ms`, at
    /// most one per device, and the device is quiet until `now_ms + quiet_ms`.
    async fn claim(
        &self,
        now_ms: i64,
        limit: usize,
        lease_until_ms: i64,
        quiet_ms: i64,
    ) -> Result<Vec<Claimed>, StoreError>;

    /// Ends a claimed push that covered its topic up to `seq` (sent,
    /// acknowledged already, or given up): the row goes, unless events came
    /// after `seq` meanwhile; then it stands for those, due at `next_due_ms`.
    async fn settle(
        &self,
        device_id: &str,
        topic: &str,
        seq: u64,
        next_due_ms: i64,
    ) -> Result<(), StoreError>;

    /// Releases a claimed push to be tried again at `due_at_ms`, after
    /// `attempts` failed sends.
    async fn retry_later(
        &self,
        device_id: &str,
        topic: &str,
        attempts: u32,
        due_at_ms: i64,
    ) -> Result<(), StoreError>;

    /// Puts a device's quiet time back from `set` to `was` (a claim that
    /// sent nothing), unless another claim moved it since.
    async fn restore_quiet(&self, device_id: &str, set: i64, was: i64) -> Result<(), StoreError>;

    /// `sub`'s unread count: over the topics pushed to it, the events after
    /// both its acknowledged seq and the first pushed one.
    async fn unread(&self, sub: &str) -> Result<u64, StoreError>;

    /// Ends every lease (SQLite, at start-up: the only node is starting, so
    /// no claim is under way). Returns how many there were.
    async fn release_leases(&self) -> Result<u64, StoreError>;
}

/// The feed of one group commit: per topic, the first and last new seq.
fn feed_of<'a>(rows: &'a [PlannedRow<'a>]) -> BTreeMap<&'a str, (u64, u64)> {
    let mut by_topic: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for row in rows {
        by_topic
            .entry(row.topic.as_str())
            .and_modify(|(first, last)| {
                *first = (*first).min(row.seq);
                *last = (*last).max(row.seq);
            })
            .or_insert((row.seq, row.seq));
    }
    by_topic
}

/// Writes a group commit's feed rows, inside its transaction (SQLite).
pub async fn feed_sqlite(
    tx: &mut SqliteConnection,
    rows: &[PlannedRow<'_>],
    time_ms: i64,
) -> Result<(), StoreError> {
    for (topic, (first, last)) in feed_of(rows) {
        sqlx::query(
            "INSERT INTO push_feed (topic, first_seq, last_seq, time_ms) VALUES (?, ?, ?, ?)",
        )
        .bind(topic)
        .bind(to_i64(first))
        .bind(to_i64(last))
        .bind(time_ms)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Writes a group commit's feed rows, inside its transaction (Postgres).
pub async fn feed_postgres(
    tx: &mut PgConnection,
    rows: &[PlannedRow<'_>],
    time_ms: i64,
) -> Result<(), StoreError> {
    let feed = feed_of(rows);
    if feed.is_empty() {
        return Ok(());
    }
    let topics: Vec<&str> = feed.keys().copied().collect();
    let firsts: Vec<i64> = feed.values().map(|(f, _)| to_i64(*f)).collect();
    let lasts: Vec<i64> = feed.values().map(|(_, l)| to_i64(*l)).collect();
    sqlx::query(
        "INSERT INTO push_feed (topic, first_seq, last_seq, time_ms) \
         SELECT t, f, l, $4 FROM UNNEST($1::text[], $2::int8[], $3::int8[]) AS r(t, f, l)",
    )
    .bind(&topics)
    .bind(&firsts)
    .bind(&lasts)
    .bind(time_ms)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Every prefix a device filter of `topic` may have stored: the empty one
/// (a filter that starts with a wildcard) and each run of leading segments.
pub fn topic_prefixes(topic: &str) -> impl Iterator<Item = &str> {
    std::iter::once("").chain(
        topic
            .char_indices()
            .filter(|&(_, c)| c == '.')
            .map(|(i, _)| &topic[..i])
            .chain(std::iter::once(topic)),
    )
}

/// The distinct prefixes of every fed topic.
fn prefixes_of(feed: &[FeedRow]) -> Vec<String> {
    let mut prefixes: Vec<String> = feed
        .iter()
        .flat_map(|f| topic_prefixes(f.topic.as_str()).map(str::to_owned))
        .collect();
    prefixes.sort_unstable();
    prefixes.dedup();
    prefixes
}

fn feed_row<R: Row>(row: &R) -> Result<Option<FeedRow>, StoreError>
where
    usize: sqlx::ColumnIndex<R>,
    String: sqlx::Type<R::Database> + for<'r> sqlx::Decode<'r, R::Database>,
    i64: sqlx::Type<R::Database> + for<'r> sqlx::Decode<'r, R::Database>,
{
    let topic: String = row.try_get(0)?;
    // Topics in the feed were parsed before they were committed.
    Ok(Topic::parse(&topic).ok().map(|topic| FeedRow {
        topic,
        first_seq: to_u64(row.try_get(1).unwrap_or(0)),
        last_seq: to_u64(row.try_get(2).unwrap_or(0)),
        time_ms: row.try_get(3).unwrap_or(0),
    }))
}

/// Due pushes sorted by device and topic: concurrent schedulers lock
/// outbox rows in one order and never deadlock; one row each. Also returns
/// how many commits were folded into another of the same batch.
fn sorted(mut due: Vec<Due>) -> (Vec<Due>, u64) {
    due.sort_by(|a, b| {
        (&a.device_id, &a.topic, a.first_seq).cmp(&(&b.device_id, &b.topic, b.first_seq))
    });
    let mut folded = 0;
    due.dedup_by(|b, a| {
        if a.device_id == b.device_id && a.topic == b.topic {
            // Two filters of one device matching one commit are not a collapse.
            folded += u64::from(a.first_seq != b.first_seq);
            a.first_seq = a.first_seq.min(b.first_seq);
            a.last_seq = a.last_seq.max(b.last_seq);
            a.first_time_ms = a.first_time_ms.min(b.first_time_ms);
            a.due_at_ms = a.due_at_ms.min(b.due_at_ms);
            true
        } else {
            false
        }
    });
    (due, folded)
}

fn claimed<R: Row>(row: &R) -> Result<Claimed, StoreError>
where
    usize: sqlx::ColumnIndex<R>,
    String: sqlx::Type<R::Database> + for<'r> sqlx::Decode<'r, R::Database>,
    Option<String>: sqlx::Type<R::Database> + for<'r> sqlx::Decode<'r, R::Database>,
    i64: sqlx::Type<R::Database> + for<'r> sqlx::Decode<'r, R::Database>,
{
    let attempts: i64 = row.try_get(6)?;
    Ok(Claimed {
        device_id: row.try_get(0)?,
        topic: row.try_get(1)?,
        sub: row.try_get(2)?,
        first_seq: to_u64(row.try_get(3)?),
        last_seq: to_u64(row.try_get(4)?),
        first_time_ms: row.try_get(5)?,
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        platform: row.try_get(7)?,
        address: row.try_get(8)?,
        keys: row.try_get(9)?,
        quiet_was: row.try_get(10)?,
        quiet_set: 0,
    })
}

/// Of claimable rows (ordered by due time), those this claim takes: all of
/// them without a quiet period, else the first of each device.
fn pick(rows: Vec<Claimed>, now_ms: i64, quiet_ms: i64) -> Vec<Claimed> {
    if quiet_ms <= 0 {
        return rows;
    }
    let mut seen = std::collections::HashSet::new();
    rows.into_iter()
        .filter(|c| seen.insert(c.device_id.clone()))
        .map(|mut c| {
            c.quiet_set = now_ms + quiet_ms;
            c
        })
        .collect()
}

const CLAIMABLE_COLUMNS: &str = "o.device_id, o.topic, o.sub, o.first_seq, o.last_seq, \
     o.first_time_ms, CAST(o.attempts AS BIGINT), d.platform, d.address, d.keys, d.next_push_at";

#[async_trait]
impl OutboxStore for SqliteStore {
    fn set_push_feed(&self, on: bool) {
        self.push_feed.store(on, Ordering::Relaxed);
    }

    async fn schedule(&self, batch: usize, planner: &Planner) -> Result<Scheduled, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let rows: Vec<SqliteRow> = sqlx::query(
            "DELETE FROM push_feed WHERE id IN (SELECT id FROM push_feed ORDER BY id LIMIT ?) \
             RETURNING topic, first_seq, last_seq, time_ms",
        )
        .bind(i64::try_from(batch).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await?;
        let mut feed = Vec::with_capacity(rows.len());
        for row in &rows {
            feed.extend(feed_row(row)?);
        }
        let mut done = Scheduled {
            feed_rows: rows.len(),
            ..Scheduled::default()
        };
        if feed.is_empty() {
            tx.commit().await?;
            return Ok(done);
        }
        let mut candidates = Vec::new();
        for chunk in prefixes_of(&feed).chunks(SQLITE_PARAMS_PER_STATEMENT) {
            // Only placeholders vary: the text holds no input.
            let sql = format!(
                "SELECT t.device_id, d.sub, t.filter FROM device_topics t \
                 JOIN devices d ON d.id = t.device_id WHERE t.prefix IN ({})",
                vec!["?"; chunk.len()].join(", ")
            );
            let mut query = sqlx::query_as::<_, (String, String, String)>(sqlx::AssertSqlSafe(sql));
            for prefix in chunk {
                query = query.bind(prefix);
            }
            for (device_id, sub, filter) in query.fetch_all(&mut *tx).await? {
                candidates.push(Candidate {
                    device_id,
                    sub,
                    filter,
                });
            }
        }
        let (due, folded) = sorted(planner(&feed, &candidates));
        done.collapsed = folded;
        for due in due {
            let waiting: Option<i64> = sqlx::query_scalar(
                "SELECT last_seq FROM push_outbox WHERE device_id = ? AND topic = ?",
            )
            .bind(&due.device_id)
            .bind(&due.topic)
            .fetch_optional(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO push_outbox \
                 (device_id, topic, sub, first_seq, last_seq, first_time_ms, due_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (device_id, topic) DO UPDATE \
                 SET last_seq = MAX(push_outbox.last_seq, excluded.last_seq)",
            )
            .bind(&due.device_id)
            .bind(&due.topic)
            .bind(&due.sub)
            .bind(to_i64(due.first_seq))
            .bind(to_i64(due.last_seq))
            .bind(due.first_time_ms)
            .bind(due.due_at_ms)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO push_topics (sub, topic, since_seq) VALUES (?, ?, ?) \
                 ON CONFLICT (sub, topic) DO NOTHING",
            )
            .bind(&due.sub)
            .bind(&due.topic)
            .bind(to_i64(due.first_seq.saturating_sub(1)))
            .execute(&mut *tx)
            .await?;
            match waiting {
                Some(_) => done.collapsed += 1,
                None => done.due += 1,
            }
        }
        tx.commit().await?;
        Ok(done)
    }

    async fn claim(
        &self,
        now_ms: i64,
        limit: usize,
        lease_until_ms: i64,
        quiet_ms: i64,
    ) -> Result<Vec<Claimed>, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        // Only the column list (a constant) is formatted in.
        let sql = format!(
            "SELECT {CLAIMABLE_COLUMNS} FROM push_outbox o JOIN devices d ON d.id = o.device_id \
             WHERE o.due_at <= ? AND o.lease_until <= ? AND d.next_push_at <= ? \
             ORDER BY o.due_at LIMIT ?"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now_ms)
            .bind(now_ms)
            .bind(now_ms)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await?;
        let rows = rows.iter().map(claimed).collect::<Result<Vec<_>, _>>()?;
        let picked = pick(rows, now_ms, quiet_ms);
        for c in &picked {
            sqlx::query("UPDATE push_outbox SET lease_until = ? WHERE device_id = ? AND topic = ?")
                .bind(lease_until_ms)
                .bind(&c.device_id)
                .bind(&c.topic)
                .execute(&mut *tx)
                .await?;
            if c.quiet_set > 0 {
                sqlx::query("UPDATE devices SET next_push_at = ? WHERE id = ?")
                    .bind(c.quiet_set)
                    .bind(&c.device_id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(picked)
    }

    async fn settle(
        &self,
        device_id: &str,
        topic: &str,
        seq: u64,
        next_due_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("DELETE FROM push_outbox WHERE device_id = ? AND topic = ? AND last_seq <= ?")
            .bind(device_id)
            .bind(topic)
            .bind(to_i64(seq))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE push_outbox SET first_seq = MAX(first_seq, ?), lease_until = 0, attempts = 0, \
             due_at = ? WHERE device_id = ? AND topic = ?",
        )
        .bind(to_i64(seq.saturating_add(1)))
        .bind(next_due_ms)
        .bind(device_id)
        .bind(topic)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn retry_later(
        &self,
        device_id: &str,
        topic: &str,
        attempts: u32,
        due_at_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE push_outbox SET lease_until = 0, attempts = ?, due_at = ? \
             WHERE device_id = ? AND topic = ?",
        )
        .bind(i64::from(attempts))
        .bind(due_at_ms)
        .bind(device_id)
        .bind(topic)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn restore_quiet(&self, device_id: &str, set: i64, was: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE devices SET next_push_at = ? WHERE id = ? AND next_push_at = ?")
            .bind(was)
            .bind(device_id)
            .bind(set)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn unread(&self, sub: &str) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COALESCE(SUM(MAX(0, t.head - MAX(p.since_seq, COALESCE(a.seq, 0)))), 0) \
             FROM push_topics p JOIN topics t ON t.topic = p.topic \
             LEFT JOIN acks a ON a.sub = p.sub AND a.topic = p.topic WHERE p.sub = ?",
        )
        .bind(sub)
        .fetch_one(&self.pool)
        .await?;
        Ok(to_u64(n))
    }

    async fn release_leases(&self) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("UPDATE push_outbox SET lease_until = 0 WHERE lease_until > 0")
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }
}

/// Parameters per SQLite statement, far below its bound.
const SQLITE_PARAMS_PER_STATEMENT: usize = 500;

#[async_trait]
impl OutboxStore for PostgresStore {
    fn set_push_feed(&self, on: bool) {
        self.push_feed.store(on, Ordering::Relaxed);
    }

    async fn schedule(&self, batch: usize, planner: &Planner) -> Result<Scheduled, StoreError> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<PgRow> = sqlx::query(
            "DELETE FROM push_feed WHERE id IN \
             (SELECT id FROM push_feed ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) \
             RETURNING topic, first_seq, last_seq, time_ms",
        )
        .bind(i64::try_from(batch).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await?;
        let mut feed = Vec::with_capacity(rows.len());
        for row in &rows {
            feed.extend(feed_row(row)?);
        }
        let mut done = Scheduled {
            feed_rows: rows.len(),
            ..Scheduled::default()
        };
        if feed.is_empty() {
            tx.commit().await?;
            return Ok(done);
        }
        let candidates: Vec<Candidate> = sqlx::query_as::<_, (String, String, String)>(
            "SELECT t.device_id, d.sub, t.filter FROM device_topics t \
             JOIN devices d ON d.id = t.device_id WHERE t.prefix = ANY($1::text[])",
        )
        .bind(prefixes_of(&feed))
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|(device_id, sub, filter)| Candidate {
            device_id,
            sub,
            filter,
        })
        .collect();
        let (due, folded) = sorted(planner(&feed, &candidates));
        done.collapsed = folded;
        if !due.is_empty() {
            let devices: Vec<&str> = due.iter().map(|d| d.device_id.as_str()).collect();
            let topics: Vec<&str> = due.iter().map(|d| d.topic.as_str()).collect();
            let subs: Vec<&str> = due.iter().map(|d| d.sub.as_str()).collect();
            let firsts: Vec<i64> = due.iter().map(|d| to_i64(d.first_seq)).collect();
            let lasts: Vec<i64> = due.iter().map(|d| to_i64(d.last_seq)).collect();
            let times: Vec<i64> = due.iter().map(|d| d.first_time_ms).collect();
            let dues: Vec<i64> = due.iter().map(|d| d.due_at_ms).collect();
            // `xmax = 0` on a returned row: it was inserted, not updated.
            let inserted: Vec<bool> = sqlx::query_scalar(
                "INSERT INTO push_outbox \
                 (device_id, topic, sub, first_seq, last_seq, first_time_ms, due_at) \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], \
                   $5::int8[], $6::int8[], $7::int8[]) \
                 ON CONFLICT (device_id, topic) DO UPDATE \
                 SET last_seq = GREATEST(push_outbox.last_seq, excluded.last_seq) \
                 RETURNING (xmax = 0)",
            )
            .bind(&devices)
            .bind(&topics)
            .bind(&subs)
            .bind(&firsts)
            .bind(&lasts)
            .bind(&times)
            .bind(&dues)
            .fetch_all(&mut *tx)
            .await?;
            done.due = inserted.iter().filter(|i| **i).count() as u64;
            done.collapsed += inserted.len() as u64 - done.due;
            let since: Vec<i64> = due
                .iter()
                .map(|d| to_i64(d.first_seq.saturating_sub(1)))
                .collect();
            // The same (sub, topic) may come from several devices: one row each.
            sqlx::query(
                "INSERT INTO push_topics (sub, topic, since_seq) \
                 SELECT DISTINCT ON (s, t) s, t, f FROM UNNEST($1::text[], $2::text[], $3::int8[]) \
                 AS r(s, t, f) ORDER BY s, t, f \
                 ON CONFLICT (sub, topic) DO NOTHING",
            )
            .bind(&subs)
            .bind(&topics)
            .bind(&since)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(done)
    }

    async fn claim(
        &self,
        now_ms: i64,
        limit: usize,
        lease_until_ms: i64,
        quiet_ms: i64,
    ) -> Result<Vec<Claimed>, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Rows another node is claiming are skipped, not waited for. `NO KEY`:
        // a scheduler's foreign-key check on the device does not wait either.
        // Only the column list (a constant) is formatted in.
        let sql = format!(
            "SELECT {CLAIMABLE_COLUMNS} FROM push_outbox o JOIN devices d ON d.id = o.device_id \
             WHERE o.due_at <= $1 AND o.lease_until <= $1 AND d.next_push_at <= $1 \
             ORDER BY o.due_at LIMIT $2 FOR NO KEY UPDATE OF o, d SKIP LOCKED"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now_ms)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await?;
        let rows = rows.iter().map(claimed).collect::<Result<Vec<_>, _>>()?;
        let picked = pick(rows, now_ms, quiet_ms);
        if !picked.is_empty() {
            let devices: Vec<&str> = picked.iter().map(|c| c.device_id.as_str()).collect();
            let topics: Vec<&str> = picked.iter().map(|c| c.topic.as_str()).collect();
            sqlx::query(
                "UPDATE push_outbox SET lease_until = $1 \
                 FROM UNNEST($2::text[], $3::text[]) AS r(d, t) \
                 WHERE push_outbox.device_id = r.d AND push_outbox.topic = r.t",
            )
            .bind(lease_until_ms)
            .bind(&devices)
            .bind(&topics)
            .execute(&mut *tx)
            .await?;
            if quiet_ms > 0 {
                sqlx::query("UPDATE devices SET next_push_at = $1 WHERE id = ANY($2::text[])")
                    .bind(now_ms + quiet_ms)
                    .bind(&devices)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(picked)
    }

    async fn settle(
        &self,
        device_id: &str,
        topic: &str,
        seq: u64,
        next_due_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "DELETE FROM push_outbox WHERE device_id = $1 AND topic = $2 AND last_seq <= $3",
        )
        .bind(device_id)
        .bind(topic)
        .bind(to_i64(seq))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE push_outbox SET first_seq = GREATEST(first_seq, $3), lease_until = 0, \
             attempts = 0, due_at = $4 WHERE device_id = $1 AND topic = $2",
        )
        .bind(device_id)
        .bind(topic)
        .bind(to_i64(seq.saturating_add(1)))
        .bind(next_due_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn retry_later(
        &self,
        device_id: &str,
        topic: &str,
        attempts: u32,
        due_at_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE push_outbox SET lease_until = 0, attempts = $3, due_at = $4 \
             WHERE device_id = $1 AND topic = $2",
        )
        .bind(device_id)
        .bind(topic)
        .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
        .bind(due_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn restore_quiet(&self, device_id: &str, set: i64, was: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE devices SET next_push_at = $3 WHERE id = $1 AND next_push_at = $2")
            .bind(device_id)
            .bind(set)
            .bind(was)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn unread(&self, sub: &str) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COALESCE(SUM(GREATEST(0, t.head - GREATEST(p.since_seq, COALESCE(a.seq, 0)))), 0)::int8 \
             FROM push_topics p JOIN topics t ON t.topic = p.topic \
             LEFT JOIN acks a ON a.sub = p.sub AND a.topic = p.topic WHERE p.sub = $1",
        )
        .bind(sub)
        .fetch_one(&self.pool)
        .await?;
        Ok(to_u64(n))
    }

    async fn release_leases(&self) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("UPDATE push_outbox SET lease_until = 0 WHERE lease_until > 0")
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_has_the_empty_prefix_and_each_run_of_leading_segments() {
        let prefixes: Vec<&str> = topic_prefixes("user.7.inbox").collect();
        assert_eq!(prefixes, vec!["", "user", "user.7", "user.7.inbox"]);
        assert_eq!(topic_prefixes("a").collect::<Vec<_>>(), vec!["", "a"]);
    }

    fn due(device: &str, topic: &str, first: u64, last: u64, at: i64) -> Due {
        Due {
            device_id: device.into(),
            topic: topic.into(),
            sub: "u".into(),
            first_seq: first,
            last_seq: last,
            first_time_ms: at,
            due_at_ms: at + 10,
        }
    }

    #[test]
    fn due_pushes_of_one_device_and_topic_merge_into_one_row_in_lock_order() {
        let (merged, folded) = sorted(vec![
            due("d2", "a", 1, 1, 5),
            due("d1", "b", 4, 6, 7),
            due("d1", "b", 2, 3, 3),
        ]);
        assert_eq!((merged.len(), folded), (2, 1));
        assert_eq!(
            (merged[0].device_id.as_str(), merged[0].topic.as_str()),
            ("d1", "b")
        );
        assert_eq!((merged[0].first_seq, merged[0].last_seq), (2, 6));
        assert_eq!((merged[0].first_time_ms, merged[0].due_at_ms), (3, 13));
    }

    #[test]
    fn a_quiet_period_claims_one_push_per_device() {
        let row = |device: &str, topic: &str| Claimed {
            device_id: device.into(),
            topic: topic.into(),
            sub: "u".into(),
            first_seq: 1,
            last_seq: 1,
            first_time_ms: 0,
            attempts: 0,
            platform: "fcm".into(),
            address: "t".into(),
            keys: None,
            quiet_was: 0,
            quiet_set: 0,
        };
        let rows = vec![row("d1", "a"), row("d1", "b"), row("d2", "a")];
        assert_eq!(pick(rows.clone(), 100, 0).len(), 3);
        let picked = pick(rows, 100, 50);
        assert_eq!(picked.len(), 2);
        assert!(picked.iter().all(|c| c.quiet_set == 150));
        assert_eq!(picked[0].topic, "a");
    }
}
