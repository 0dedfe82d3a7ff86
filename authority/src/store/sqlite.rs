//! The membership store in an embedded SQLite file, opened, migrated and closed as
//! [`kith_identity::sqlite`] keeps every SQLite file of kith: owner-only, write-ahead log,
//! bounded waits for the write lock.
//!
//! SQLite admits one writer at a time. Every write transaction starts with
//! [`sqlite::BEGIN_WRITE`] (`BEGIN IMMEDIATE`), so it holds the write lock before it reads
//! anything: concurrent writers, in this process or another, queue on the lock (waiting up
//! to [`sqlite::BUSY_TIMEOUT`] each time) instead of failing half-way, and a redemption's
//! `UPDATE` sees every committed use.

use std::path::Path;
use std::time::Duration;

use kith_identity::sqlite;
use sqlx::Sqlite;
use sqlx::migrate::Migrator;

use super::StoreError;
use super::ops::{Db, Dialect};

/// The SQLite schema, embedded at build time; the twin of `migrations/postgres`.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// 30 s: how long an operation waits for a free pool connection. Each holds one for
/// milliseconds, so this is hundreds of queued enrollments; running out means something is
/// stuck, and that is reported rather than waited out.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

impl Dialect for Sqlite {
    const BEGIN_WRITE: &'static str = sqlite::BEGIN_WRITE;

    /// `BEGIN IMMEDIATE` already makes writers take turns.
    const LOCK_JOIN_REQUESTS: Option<&'static str> = None;

    /// `BEGIN IMMEDIATE` already makes writers take turns, so feed entries commit in the
    /// order of their numbers.
    const LOCK_MEMBERSHIP: Option<&'static str> = None;

    fn is_transient(error: &sqlx::Error) -> bool {
        sqlite::is_busy(error)
    }
}

impl Db<Sqlite> {
    /// Open (creating it, mode 0600) the store file at `path` and migrate it.
    pub(super) async fn open(path: &Path) -> Result<Self, StoreError> {
        let pool = sqlite::open_pool(path, ACQUIRE_TIMEOUT, |options| options)
            .map_err(|(path, source)| StoreError::Io { path, source })?;
        let db = Self::new(pool, format!("SQLite file {}", path.display()));
        sqlite::migrate(&db, &MIGRATOR, &db.pool).await?;
        Ok(db)
    }

    /// Fold the write-ahead log into the file, then close every connection.
    pub(super) async fn close(&self) {
        sqlite::close(self, &self.pool).await;
    }
}
