//! Tickets in a store, written once for both: a row per ticket, keyed by
//! the ticket's SHA-256, deleted when redeemed (so it opens one connection
//! in the whole cluster) or when it expires.

use sqlx::{Database, Decode, Encode, Executor, IntoArguments, Pool, Type};

use super::revocations::Dialect;
use super::{Changed, StoreError};

/// Stores a ticket's grant until `expires_at_ms`.
pub async fn put<DB: Database>(
    pool: &Pool<DB>,
    d: Dialect,
    key: &str,
    grant: &str,
    expires_at_ms: i64,
) -> Result<(), StoreError>
where
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    for<'a> DB::Arguments: IntoArguments<DB>,
    i64: Type<DB> + for<'q> Encode<'q, DB>,
    for<'q> &'q str: Type<DB> + Encode<'q, DB>,
{
    let sql = match d {
        Dialect::Sqlite => "INSERT INTO tickets (key, principal, expires_at) VALUES (?, ?, ?)",
        Dialect::Postgres => "INSERT INTO tickets (key, principal, expires_at) VALUES ($1, $2, $3)",
    };
    sqlx::query(sql)
        .bind(key)
        .bind(grant)
        .bind(expires_at_ms)
        .execute(pool)
        .await?;
    Ok(())
}

/// Takes the ticket stored under `key`: its grant, if it is there and has
/// not expired at `now_ms`. Taking deletes it, expired or not.
pub async fn take<DB: Database>(
    pool: &Pool<DB>,
    d: Dialect,
    key: &str,
    now_ms: i64,
) -> Result<Option<String>, StoreError>
where
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    for<'a> DB::Arguments: IntoArguments<DB>,
    i64: Type<DB> + for<'r> Decode<'r, DB>,
    String: Type<DB> + for<'r> Decode<'r, DB>,
    for<'q> &'q str: Type<DB> + Encode<'q, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    let sql = match d {
        Dialect::Sqlite => "DELETE FROM tickets WHERE key = ? RETURNING principal, expires_at",
        Dialect::Postgres => "DELETE FROM tickets WHERE key = $1 RETURNING principal, expires_at",
    };
    let row: Option<(String, i64)> = sqlx::query_as(sql).bind(key).fetch_optional(pool).await?;
    Ok(row.and_then(|(grant, expires_at)| (expires_at > now_ms).then_some(grant)))
}

/// Deletes the tickets expired at `now_ms`; returns how many went.
pub async fn prune<DB: Database>(
    pool: &Pool<DB>,
    d: Dialect,
    now_ms: i64,
) -> Result<u64, StoreError>
where
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    for<'a> DB::Arguments: IntoArguments<DB>,
    i64: Type<DB> + for<'q> Encode<'q, DB>,
    DB::QueryResult: Changed,
{
    let sql = match d {
        Dialect::Sqlite => "DELETE FROM tickets WHERE expires_at <= ?",
        Dialect::Postgres => "DELETE FROM tickets WHERE expires_at <= $1",
    };
    super::execute_with(pool, sql, now_ms).await
}
