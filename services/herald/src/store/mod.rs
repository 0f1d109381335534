//! The durable event log: the `Store` trait, its SQLite and Postgres
//! implementations, and retention. (Group commit, which writes to it, is
//! part of publishing: `crate::publish::committer`.)
//!
//! The store is the truth. A publish is answered only after its transaction
//! commits; every transport resumes from it.

pub mod acks;
pub mod devices;
pub mod outbox;
mod plan;
mod postgres;
mod revocations;
mod sqlite;
mod sqlite_heads;
mod tickets;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use acks::{AckRow, AckWrite};
pub use devices::{DeviceRecord, DeviceStore, Registered, Registration};
pub use outbox::{Candidate, Claimed, Due, FeedRow, OutboxStore, Planner, Scheduled};
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

use crate::auth::{Revocation, RevocationKind};
use crate::event::{Event, NewEvent};
use crate::topic::Topic;

/// How many rows a statement changed, for either store.
pub trait Changed {
    fn changed(&self) -> u64;
}

impl Changed for sqlx::sqlite::SqliteQueryResult {
    fn changed(&self) -> u64 {
        self.rows_affected()
    }
}

impl Changed for sqlx::postgres::PgQueryResult {
    fn changed(&self) -> u64 {
        self.rows_affected()
    }
}

/// Runs `sql`, a statement with one integer parameter (the pruning
/// deletes); how many rows it changed.
pub async fn execute_with<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
    sql: &'static str,
    value: i64,
) -> Result<u64, StoreError>
where
    for<'c> &'c sqlx::Pool<DB>: sqlx::Executor<'c, Database = DB>,
    for<'a> DB::Arguments: sqlx::IntoArguments<DB>,
    i64: sqlx::Type<DB> + for<'q> sqlx::Encode<'q, DB>,
    DB::QueryResult: Changed,
{
    Ok(sqlx::query(sql).bind(value).execute(pool).await?.changed())
}

/// A stored integer as the unsigned value it stands for.
fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// An unsigned value as a stored integer.
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The outcome of appending one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The event's seq (the original one for a duplicate).
    pub seq: u64,
    /// The event's id.
    pub id: String,
    /// Commit time, milliseconds since the epoch (the original one for a duplicate).
    pub time_ms: i64,
    /// Whether an event with this id was already stored on the topic.
    pub duplicate: bool,
}

/// Events of one topic after a position.
#[derive(Debug, Clone, Default)]
pub struct Read {
    /// Events with seq above the requested one, in seq order.
    pub events: Vec<Event>,
    /// The topic's head when the read began (0 for a topic never published to).
    pub head: u64,
}

impl Read {
    /// If events after `after` are no longer retained, the first seq still
    /// available (what a `reset` announces).
    pub fn reset_from(&self, after: u64) -> Option<u64> {
        match self.events.first() {
            Some(first) if first.seq > after + 1 => Some(first.seq),
            None if self.head > after => Some(self.head + 1),
            _ => None,
        }
    }
}

/// Revocations read from the store, and how far the read reached.
#[derive(Debug, Clone, Default)]
pub struct RevocationChanges {
    /// Revocations stored or renewed since the change asked after.
    pub revocations: Vec<Revocation>,
    /// The change to ask after next time.
    pub last_change: u64,
}

/// A store failure: the operation did not happen (transactions roll back),
/// except after [`StoreError::CommitUnknown`], where it may have.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store is unavailable: {0}")]
    Unavailable(#[from] sqlx::Error),
    /// The connection failed after `COMMIT` was sent: the transaction may
    /// or may not have committed.
    #[error("the store did not confirm a commit: {0}")]
    CommitUnknown(#[source] sqlx::Error),
    #[error("the store's migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the store is shutting down")]
    Closed,
    #[error("the store's URL is not understood: {0}")]
    Url(String),
}

/// A durable per-topic event log (and, as [`DeviceStore`] and
/// [`OutboxStore`], the devices and due pushes of push to offline devices).
#[async_trait]
pub trait Store: DeviceStore + OutboxStore + Send + Sync + 'static {
    /// `"sqlite"` or `"postgres"`.
    fn kind(&self) -> &'static str;

    /// Applies pending migrations.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Appends every request's events in one transaction: all of them are
    /// stored, or none. Seqs are given in input order; an event whose
    /// `(topic, id)` is already stored (or appears earlier in the group) is a
    /// duplicate and takes the original seq. `time_ms` is the commit time.
    async fn append_group(
        &self,
        requests: &[Vec<NewEvent>],
        time_ms: i64,
    ) -> Result<Vec<Vec<Appended>>, StoreError>;

    /// Up to `limit` events of `topic` with seq above `after`, in order,
    /// and the head the read was bounded by.
    async fn read_since(&self, topic: &Topic, after: u64, limit: usize)
    -> Result<Read, StoreError>;

    /// The head (latest seq, 0 when empty) of each topic, in input order.
    async fn heads(&self, topics: &[Topic]) -> Result<Vec<u64>, StoreError>;

    /// Deletes up to `batch` events older than `older_than_ms`, or beyond the
    /// newest `keep_per_topic` of their topic. Returns how many went.
    async fn prune(
        &self,
        older_than_ms: i64,
        keep_per_topic: u64,
        batch: u64,
    ) -> Result<u64, StoreError>;

    /// Checks that the store answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Records a revocation kept until `expires_at_secs`. Revoking again
    /// keeps the later `revoked_at_secs` and `expires_at_secs`.
    async fn revoke(
        &self,
        kind: RevocationKind,
        value: &str,
        revoked_at_secs: u64,
        expires_at_secs: u64,
    ) -> Result<(), StoreError>;

    /// The revocations stored or renewed after change `after_change` (0:
    /// every one) and not expired at `now_secs`, with the change to ask
    /// after next time. Changes are numbered in commit order, so asking
    /// after the last one seen never misses one.
    async fn revocations(
        &self,
        after_change: u64,
        now_secs: u64,
    ) -> Result<RevocationChanges, StoreError>;

    /// Deletes the revocations expired at `now_secs`. Returns how many went.
    async fn prune_revocations(&self, now_secs: u64) -> Result<u64, StoreError>;

    /// Keeps a ticket: `grant` (what it authorizes) under `key` until
    /// `expires_at_ms`.
    async fn put_ticket(
        &self,
        key: &str,
        grant: &str,
        expires_at_ms: i64,
    ) -> Result<(), StoreError>;

    /// Takes the ticket stored under `key`: deletes it and returns its grant
    /// if it had not expired at `now_ms`. Of concurrent takes of one ticket,
    /// on any node, at most one gets it.
    async fn take_ticket(&self, key: &str, now_ms: i64) -> Result<Option<String>, StoreError>;

    /// Deletes the tickets expired at `now_ms`. Returns how many went.
    async fn prune_tickets(&self, now_ms: i64) -> Result<u64, StoreError>;

    /// Raises each acknowledgment (subscriber, topic) to its seq in one
    /// transaction; never lowers one (a lower or equal seq changes nothing,
    /// its time included).
    async fn put_acks(&self, acks: &[AckWrite]) -> Result<(), StoreError>;

    /// Up to `limit` acknowledgments of `topic` (only `sub`'s, if given),
    /// by subscriber, after subscriber `after_sub`.
    async fn acks_by_topic(
        &self,
        topic: &Topic,
        sub: Option<&str>,
        after_sub: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AckRow>, StoreError>;

    /// `sub`'s acknowledged seq of each topic (`None`: never acknowledged),
    /// in input order.
    async fn acks_of(&self, sub: &str, topics: &[Topic]) -> Result<Vec<Option<u64>>, StoreError>;

    /// Deletes every acknowledgment of `sub`. Returns how many went.
    async fn delete_acks(&self, sub: &str) -> Result<u64, StoreError>;

    /// Deletes the acknowledgments of every subscriber that has acknowledged
    /// nothing since `older_than_ms`. Returns how many went.
    async fn prune_acks(&self, older_than_ms: i64) -> Result<u64, StoreError>;
}

/// Opens the store named by `url` (`sqlite://...` or `postgres://...`).
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::open(url).await?))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Ok(Arc::new(PostgresStore::open(url).await?))
    } else {
        Err(StoreError::Url(
            "expected sqlite://PATH or postgres://USER@HOST/DB".to_owned(),
        ))
    }
}

/// Retention limits.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Events older than this are pruned.
    pub max_age: Duration,
    /// At most this many events are kept per topic.
    pub max_events_per_topic: u64,
    /// How often the pruner runs.
    pub interval: Duration,
}

/// Events deleted per prune statement: small enough that no publish waits long.
const PRUNE_BATCH: u64 = 2_000;

/// Prunes the store in the background, in small batches so publishes never
/// wait long behind it. Runs until the returned task is dropped or aborted.
pub fn spawn_pruner(store: Arc<dyn Store>, retention: Retention) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(retention.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            prune_once(&*store, retention).await;
        }
    })
}

/// Runs prune batches until nothing is left to prune (or the store fails),
/// then deletes expired revocations and tickets.
pub async fn prune_once(store: &dyn Store, retention: Retention) -> u64 {
    let total = prune_events(store, retention).await;
    if let Err(e) = store
        .prune_revocations(crate::auth::token::now_secs())
        .await
    {
        tracing::warn!(error = %e, "pruning expired revocations failed; will retry");
    }
    if let Err(e) = store.prune_tickets(crate::event::now_ms()).await {
        tracing::warn!(error = %e, "pruning expired tickets failed; will retry");
    }
    acks::prune(store, retention.max_age).await;
    total
}

async fn prune_events(store: &dyn Store, retention: Retention) -> u64 {
    let mut total = 0;
    loop {
        let cutoff = crate::event::now_ms()
            - i64::try_from(retention.max_age.as_millis()).unwrap_or(i64::MAX);
        match store
            .prune(cutoff, retention.max_events_per_topic, PRUNE_BATCH)
            .await
        {
            Ok(n) => {
                total += n;
                if n < PRUNE_BATCH {
                    if total > 0 {
                        tracing::debug!(pruned = total, "retention pruned events");
                    }
                    return total;
                }
                tokio::task::yield_now().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "retention pruning failed; will retry");
                return total;
            }
        }
    }
}
