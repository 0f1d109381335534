//! Devices in the store: who registered a device for push, its address
//! (a Web Push endpoint, an FCM or APNs token) and the topics or patterns
//! that reach it. The SQL of both stores lives here, side by side.
//!
//! A device is one row, unique by its address (`address_key`): registering
//! the same address again by the same subject replaces its topics and keeps
//! its id; by another subject, the device moves to that subject (a phone
//! that changed hands, a browser profile that logged in as someone else).
//! The per-subject bound is checked in the transaction that inserts, under
//! a lock per subject (Postgres: an advisory lock; SQLite has one writer).

use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::PgPool;

use super::{PostgresStore, SqliteStore, StoreError};

/// A device to register: its subject, platform and address, and its topic
/// filters with their prefixes (see [`crate::push::filter`]).
#[derive(Debug, Clone)]
pub struct Registration {
    /// The id the device gets if it is new.
    pub new_id: String,
    pub sub: String,
    pub platform: String,
    pub address: String,
    /// `platform:` and the SHA-256 of the address (hex).
    pub address_key: String,
    /// A Web Push subscription's keys (JSON), else `None`.
    pub keys: Option<String>,
    /// `(filter, prefix)` pairs.
    pub filters: Vec<(String, String)>,
    pub now_ms: i64,
    /// Most devices one subject may hold.
    pub max_devices: usize,
}

/// A stored device, as its owner sees it (never its address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    pub id: String,
    pub sub: String,
    pub platform: String,
    pub created_at_ms: i64,
    pub filters: Vec<String>,
}

/// What a registration did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registered {
    /// A new device (also when the address moved from another subject).
    Created(DeviceRecord),
    /// The subject had registered this address already: its topics were replaced.
    Updated(DeviceRecord),
    /// The subject holds this many devices already; nothing was stored.
    TooMany(usize),
}

/// The devices of the store.
#[async_trait]
pub trait DeviceStore {
    /// Registers a device, under the per-subject bound, in one transaction.
    async fn register_device(&self, registration: &Registration) -> Result<Registered, StoreError>;

    /// `sub`'s devices, oldest first.
    async fn devices_of(&self, sub: &str) -> Result<Vec<DeviceRecord>, StoreError>;

    /// Deletes device `id` if it belongs to `sub` (any subject's when `sub`
    /// is `None`); returns its subject if it was there.
    async fn delete_device(
        &self,
        id: &str,
        sub: Option<&str>,
    ) -> Result<Option<String>, StoreError>;

    /// Deletes every device of `sub`; returns how many went.
    async fn delete_devices_of(&self, sub: &str) -> Result<u64, StoreError>;
}

/// Keeps a subject's unread-count rows only while it has a device.
const FORGET_TOPICS_SQLITE: &str = "DELETE FROM push_topics WHERE sub = ?1 \
     AND NOT EXISTS (SELECT 1 FROM devices WHERE devices.sub = ?1)";
const FORGET_TOPICS_POSTGRES: &str = "DELETE FROM push_topics WHERE sub = $1 \
     AND NOT EXISTS (SELECT 1 FROM devices WHERE devices.sub = $1)";

fn record(id: String, r: &Registration) -> DeviceRecord {
    DeviceRecord {
        id,
        sub: r.sub.clone(),
        platform: r.platform.clone(),
        created_at_ms: r.now_ms,
        filters: r.filters.iter().map(|(f, _)| f.clone()).collect(),
    }
}

#[async_trait]
impl DeviceStore for SqliteStore {
    async fn register_device(&self, r: &Registration) -> Result<Registered, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let existing: Option<(String, String, i64)> =
            sqlx::query_as("SELECT id, sub, created_at FROM devices WHERE address_key = ?")
                .bind(&r.address_key)
                .fetch_optional(&mut *tx)
                .await?;
        let updated = match existing {
            Some((id, sub, created_at)) if sub == r.sub => {
                sqlx::query("UPDATE devices SET address = ?, keys = ? WHERE id = ?")
                    .bind(&r.address)
                    .bind(r.keys.as_deref())
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM device_topics WHERE device_id = ?")
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                Some((id, created_at))
            }
            Some((id, other, _)) => {
                sqlx::query("DELETE FROM devices WHERE id = ?")
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(FORGET_TOPICS_SQLITE)
                    .bind(&other)
                    .execute(&mut *tx)
                    .await?;
                None
            }
            None => None,
        };
        let (id, created) = match updated {
            Some((id, created_at)) => (id, Some(created_at)),
            None => {
                let held: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM devices WHERE sub = ?")
                    .bind(&r.sub)
                    .fetch_one(&mut *tx)
                    .await?;
                let held = usize::try_from(held).unwrap_or(usize::MAX);
                if held >= r.max_devices {
                    return Ok(Registered::TooMany(held));
                }
                sqlx::query(
                    "INSERT INTO devices (id, sub, platform, address, address_key, keys, created_at) \
                     VALUES (?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(&r.new_id)
                .bind(&r.sub)
                .bind(&r.platform)
                .bind(&r.address)
                .bind(&r.address_key)
                .bind(r.keys.as_deref())
                .bind(r.now_ms)
                .execute(&mut *tx)
                .await?;
                (r.new_id.clone(), None)
            }
        };
        for (filter, prefix) in &r.filters {
            sqlx::query("INSERT INTO device_topics (device_id, filter, prefix) VALUES (?, ?, ?)")
                .bind(&id)
                .bind(filter)
                .bind(prefix)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        let mut device = record(id, r);
        Ok(match created {
            Some(created_at) => {
                device.created_at_ms = created_at;
                Registered::Updated(device)
            }
            None => Registered::Created(device),
        })
    }

    async fn devices_of(&self, sub: &str) -> Result<Vec<DeviceRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT d.id, d.platform, d.created_at, t.filter FROM devices d \
             LEFT JOIN device_topics t ON t.device_id = d.id \
             WHERE d.sub = ? ORDER BY d.created_at, d.id, t.filter",
        )
        .bind(sub)
        .fetch_all(&self.pool)
        .await?;
        let mut rows_out = Vec::with_capacity(rows.len());
        for row in rows {
            rows_out.push((
                row.try_get::<String, _>(0)?,
                row.try_get::<String, _>(1)?,
                row.try_get::<i64, _>(2)?,
                row.try_get::<Option<String>, _>(3)?,
            ));
        }
        Ok(group(sub, rows_out))
    }

    async fn delete_device(
        &self,
        id: &str,
        sub: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let owner: Option<String> = sqlx::query_scalar(
            "DELETE FROM devices WHERE id = ? AND (? IS NULL OR sub = ?) RETURNING sub",
        )
        .bind(id)
        .bind(sub)
        .bind(sub)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(owner) = &owner {
            sqlx::query(FORGET_TOPICS_SQLITE)
                .bind(owner)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(owner)
    }

    async fn delete_devices_of(&self, sub: &str) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let gone = sqlx::query("DELETE FROM devices WHERE sub = ?")
            .bind(sub)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query(FORGET_TOPICS_SQLITE)
            .bind(sub)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(gone)
    }
}

/// Rows of `(id, platform, created_at, filter)` ordered by device, as
/// devices with their filters.
fn group(sub: &str, rows: Vec<(String, String, i64, Option<String>)>) -> Vec<DeviceRecord> {
    let mut devices: Vec<DeviceRecord> = Vec::new();
    for (id, platform, created_at_ms, filter) in rows {
        if devices.last().is_none_or(|d| d.id != id) {
            devices.push(DeviceRecord {
                id,
                sub: sub.to_owned(),
                platform,
                created_at_ms,
                filters: Vec::new(),
            });
        }
        if let (Some(device), Some(filter)) = (devices.last_mut(), filter) {
            device.filters.push(filter);
        }
    }
    devices
}

/// Advisory-lock namespaces (the first key of `pg_advisory_xact_lock`):
/// a subject's devices, and one address.
const LOCK_SUBJECT: i32 = 24_001;
const LOCK_ADDRESS: i32 = 24_002;

#[async_trait]
impl DeviceStore for PostgresStore {
    async fn register_device(&self, r: &Registration) -> Result<Registered, StoreError> {
        let pool: &PgPool = &self.pool;
        let mut tx = pool.begin().await?;
        // Subject first, then address, in every transaction: no lock cycle.
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(LOCK_SUBJECT)
            .bind(&r.sub)
            .execute(&mut *tx)
            .await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(LOCK_ADDRESS)
            .bind(&r.address_key)
            .execute(&mut *tx)
            .await?;
        let existing: Option<(String, String, i64)> =
            sqlx::query_as("SELECT id, sub, created_at FROM devices WHERE address_key = $1")
                .bind(&r.address_key)
                .fetch_optional(&mut *tx)
                .await?;
        let updated = match existing {
            Some((id, sub, created_at)) if sub == r.sub => {
                sqlx::query("UPDATE devices SET address = $1, keys = $2 WHERE id = $3")
                    .bind(&r.address)
                    .bind(r.keys.as_deref())
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM device_topics WHERE device_id = $1")
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                Some((id, created_at))
            }
            Some((id, other, _)) => {
                sqlx::query("DELETE FROM devices WHERE id = $1")
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(FORGET_TOPICS_POSTGRES)
                    .bind(&other)
                    .execute(&mut *tx)
                    .await?;
                None
            }
            None => None,
        };
        let (id, created) = match updated {
            Some((id, created_at)) => (id, Some(created_at)),
            None => {
                let held: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM devices WHERE sub = $1")
                    .bind(&r.sub)
                    .fetch_one(&mut *tx)
                    .await?;
                let held = usize::try_from(held).unwrap_or(usize::MAX);
                if held >= r.max_devices {
                    return Ok(Registered::TooMany(held));
                }
                sqlx::query(
                    "INSERT INTO devices (id, sub, platform, address, address_key, keys, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(&r.new_id)
                .bind(&r.sub)
                .bind(&r.platform)
                .bind(&r.address)
                .bind(&r.address_key)
                .bind(r.keys.as_deref())
                .bind(r.now_ms)
                .execute(&mut *tx)
                .await?;
                (r.new_id.clone(), None)
            }
        };
        let (filters, prefixes): (Vec<&str>, Vec<&str>) = r
            .filters
            .iter()
            .map(|(f, p)| (f.as_str(), p.as_str()))
            .unzip();
        sqlx::query(
            "INSERT INTO device_topics (device_id, filter, prefix) \
             SELECT $1, f, p FROM UNNEST($2::text[], $3::text[]) AS t(f, p)",
        )
        .bind(&id)
        .bind(&filters)
        .bind(&prefixes)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut device = record(id, r);
        Ok(match created {
            Some(created_at) => {
                device.created_at_ms = created_at;
                Registered::Updated(device)
            }
            None => Registered::Created(device),
        })
    }

    async fn devices_of(&self, sub: &str) -> Result<Vec<DeviceRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT d.id, d.platform, d.created_at, t.filter FROM devices d \
             LEFT JOIN device_topics t ON t.device_id = d.id \
             WHERE d.sub = $1 ORDER BY d.created_at, d.id, t.filter",
        )
        .bind(sub)
        .fetch_all(&self.pool)
        .await?;
        let mut rows_out = Vec::with_capacity(rows.len());
        for row in rows {
            rows_out.push((
                row.try_get::<String, _>(0)?,
                row.try_get::<String, _>(1)?,
                row.try_get::<i64, _>(2)?,
                row.try_get::<Option<String>, _>(3)?,
            ));
        }
        Ok(group(sub, rows_out))
    }

    async fn delete_device(
        &self,
        id: &str,
        sub: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let owner: Option<String> = sqlx::query_scalar(
            "DELETE FROM devices WHERE id = $1 AND ($2::text IS NULL OR sub = $2) RETURNING sub",
        )
        .bind(id)
        .bind(sub)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(owner) = &owner {
            sqlx::query(FORGET_TOPICS_POSTGRES)
                .bind(owner)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(owner)
    }

    async fn delete_devices_of(&self, sub: &str) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let gone = sqlx::query("DELETE FROM devices WHERE sub = $1")
            .bind(sub)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query(FORGET_TOPICS_POSTGRES)
            .bind(sub)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_group_into_devices_with_their_filters() {
        let rows = vec![
            ("d1".into(), "fcm".into(), 1, Some("a".into())),
            ("d1".into(), "fcm".into(), 1, Some("b.>".into())),
            ("d2".into(), "apns".into(), 2, None),
        ];
        let devices = group("u", rows);
        assert_eq!(devices.len(), 2);
        assert_eq!(devices[0].filters, vec!["a", "b.>"]);
        assert!(devices[1].filters.is_empty());
    }
}
