//! Revocations in a store, shared by both: the SQL of each (they differ
//! only in placeholders and the name of the larger-of function), where a
//! read starts, and what its rows mean.

use crate::auth::{Revocation, RevocationKind};

use sqlx::{Database, Decode, Encode, Executor, IntoArguments, Pool, Type};

use super::{Changed, RevocationChanges, StoreError, to_i64, to_u64};

/// How a store writes SQL.
#[derive(Debug, Clone, Copy)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// Takes the next change number. The counter's row lock orders writers:
/// change numbers are assigned in commit order, so a reader that saw
/// number N has seen every change below it.
pub const NEXT_CHANGE: &str =
    "UPDATE revocation_changes SET last_change = last_change + 1 RETURNING last_change";

/// The last change number: read first, every change up to it is committed,
/// and so visible to the read that follows.
pub const LAST_CHANGE: &str = "SELECT last_change FROM revocation_changes";

/// Records a revocation (kind, value, revoked_at, expires_at, change_no);
/// revoking again keeps the later times.
pub fn upsert(d: Dialect) -> &'static str {
    match d {
        Dialect::Sqlite => {
            "INSERT INTO revocations (kind, value, revoked_at, expires_at, change_no) \
             VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (kind, value) DO UPDATE SET \
             revoked_at = MAX(revocations.revoked_at, excluded.revoked_at), \
             expires_at = MAX(revocations.expires_at, excluded.expires_at), \
             change_no = excluded.change_no"
        }
        Dialect::Postgres => {
            "INSERT INTO revocations (kind, value, revoked_at, expires_at, change_no) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (kind, value) DO UPDATE SET \
             revoked_at = GREATEST(revocations.revoked_at, excluded.revoked_at), \
             expires_at = GREATEST(revocations.expires_at, excluded.expires_at), \
             change_no = excluded.change_no"
        }
    }
}

/// The live revocations changed after a change number (arguments: change
/// number, now), as `(kind, value, revoked_at, change_no)` rows.
pub fn changed_since(d: Dialect) -> &'static str {
    match d {
        Dialect::Sqlite => {
            "SELECT kind, value, revoked_at, change_no FROM revocations \
             WHERE change_no > ? AND expires_at > ?"
        }
        Dialect::Postgres => {
            "SELECT kind, value, revoked_at, change_no FROM revocations \
             WHERE change_no > $1 AND expires_at > $2"
        }
    }
}

/// Deletes the revocations expired at a time (argument: now).
pub fn prune(d: Dialect) -> &'static str {
    match d {
        Dialect::Sqlite => "DELETE FROM revocations WHERE expires_at <= ?",
        Dialect::Postgres => "DELETE FROM revocations WHERE expires_at <= $1",
    }
}

/// Where to read from after `after_change`, given the store's `last`
/// change: a counter behind what the caller saw means the store was
/// replaced (restored, wiped), and everything is read again.
pub fn read_after(last: u64, after_change: u64) -> u64 {
    if last < after_change { 0 } else { after_change }
}

/// The changes a read found: `rows` as [`changed_since`] selects them.
pub fn changes(last: u64, rows: Vec<(String, String, i64, i64)>) -> RevocationChanges {
    let mut changes = RevocationChanges {
        revocations: Vec::with_capacity(rows.len()),
        last_change: last,
    };
    for (kind, value, revoked_at, change_no) in rows {
        changes.last_change = changes.last_change.max(to_u64(change_no));
        // A kind this version does not know is skipped, not an outage.
        let Ok(kind) = kind.parse::<RevocationKind>() else {
            continue;
        };
        changes.revocations.push(Revocation {
            kind,
            value,
            revoked_at_secs: to_u64(revoked_at),
        });
    }
    changes
}

/// Records a revocation in `pool`'s store, with the next change number, in
/// one transaction.
pub async fn revoke<DB: Database>(
    pool: &Pool<DB>,
    d: Dialect,
    kind: RevocationKind,
    value: &str,
    revoked_at_secs: u64,
    expires_at_secs: u64,
) -> Result<(), StoreError>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> DB::Arguments: IntoArguments<DB>,
    i64: Type<DB> + for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB>,
    for<'q> &'q str: Type<DB> + Encode<'q, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    let mut tx = pool.begin().await?;
    let change: i64 = sqlx::query_scalar(NEXT_CHANGE).fetch_one(&mut *tx).await?;
    sqlx::query(upsert(d))
        .bind(kind.as_str())
        .bind(value)
        .bind(to_i64(revoked_at_secs))
        .bind(to_i64(expires_at_secs))
        .bind(change)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// The revocations of `pool`'s store changed after `after_change`.
pub async fn read<DB: Database>(
    pool: &Pool<DB>,
    d: Dialect,
    after_change: u64,
    now_secs: u64,
) -> Result<RevocationChanges, StoreError>
where
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    for<'a> DB::Arguments: IntoArguments<DB>,
    i64: Type<DB> + for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB>,
    String: Type<DB> + for<'r> Decode<'r, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    let last: i64 = sqlx::query_scalar(LAST_CHANGE).fetch_one(pool).await?;
    let last = to_u64(last);
    let rows = sqlx::query_as(changed_since(d))
        .bind(to_i64(read_after(last, after_change)))
        .bind(to_i64(now_secs))
        .fetch_all(pool)
        .await?;
    Ok(changes(last, rows))
}

/// Deletes the revocations of `pool`'s store expired at `now_secs`;
/// returns how many went.
pub async fn prune_expired<DB: Database>(
    pool: &Pool<DB>,
    d: Dialect,
    now_secs: u64,
) -> Result<u64, StoreError>
where
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    for<'a> DB::Arguments: IntoArguments<DB>,
    i64: Type<DB> + for<'q> Encode<'q, DB>,
    DB::QueryResult: Changed,
{
    super::execute_with(pool, prune(d), to_i64(now_secs)).await
}
