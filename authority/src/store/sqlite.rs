//! The membership store in an embedded SQLite file: how it is opened (owner-only file,
//! write-ahead log, bounded waits for the write lock), migrated and closed.
//!
//! SQLite admits one writer at a time. Every write transaction starts with `BEGIN
//! IMMEDIATE`, so it holds the write lock before it reads anything: concurrent writers, in
//! this process or another, queue on the lock (waiting up to [`BUSY_TIMEOUT`] each time)
//! instead of failing half-way, and a redemption's `UPDATE` sees every committed use.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Sqlite;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::StoreError;
use super::ops::{Db, Dialect};

/// The SQLite schema, embedded at build time; the twin of `migrations/postgres`.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// 5 s: how long SQLite itself waits for the write lock another connection holds. Store
/// writes take milliseconds, so this rides out a burst of enrollments or another authority
/// process; a holder that keeps the lock longer is stuck, and that is reported (after the
/// store's own retries), not waited out.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// 4 connections: SQLite admits one writer at a time anyway; a few connections let reads
/// (listing members, issuing credentials) proceed during a write (WAL) without holding many
/// file descriptors and worker threads.
const MAX_CONNECTIONS: u32 = 4;

/// 30 s: how long an operation waits for a free pool connection. Each holds one for
/// milliseconds, so this is hundreds of queued enrollments; running out means something is
/// stuck, and that is reported rather than waited out.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

impl Dialect for Sqlite {
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";

    /// `BEGIN IMMEDIATE` already makes writers take turns.
    const LOCK_JOIN_REQUESTS: Option<&'static str> = None;

    fn is_transient(error: &sqlx::Error) -> bool {
        kith_identity::sqlite::is_busy(error)
    }
}

impl Db<Sqlite> {
    /// Open (creating it, mode 0600) the store file at `path` and migrate it.
    pub(super) async fn open(path: &Path) -> Result<Self, StoreError> {
        kith_identity::sqlite::secure_files(path)
            .map_err(|(path, source)| StoreError::Io { path, source })?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            // Created above with the right mode; SQLite must not create it with its own.
            .create_if_missing(false)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a committed enrollment survives a power cut, so a ticket's used-up uses
            // are never handed out again after a crash.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        // Lazy: the first connection is made inside `migrate`, under its retries. Making it
        // switches a new file to WAL, which needs an exclusive lock that SQLite's busy
        // handler does not always wait for when another process opens the file at once.
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options);
        let db = Self {
            pool,
            location: Arc::from(format!("SQLite file {}", path.display())),
            batch: Default::default(),
        };
        if let Err(e) = db.migrate().await {
            db.close().await;
            return Err(e);
        }
        Ok(db)
    }

    /// Fold the write-ahead log into the file, then close every connection.
    pub(super) async fn close(&self) {
        if let Err(error) = kith_identity::sqlite::close(&self.pool).await {
            tracing::debug!(store = %self.location, %error, "no checkpoint before closing the membership store");
        }
    }

    /// Create the tables or bring them up to date, retrying what can pass.
    async fn migrate(&self) -> Result<(), StoreError> {
        let failure = match kith_identity::sqlite::migrate(&MIGRATOR, &self.pool).await {
            Ok(()) => return Ok(()),
            Err(failure) => failure,
        };
        let store = self.location.to_string();
        let waited = failure.waited;
        Err(match failure.database_error() {
            Ok((source, true)) => StoreError::Busy {
                store,
                waited,
                source,
            },
            Ok((source, false)) => StoreError::Database { store, source },
            Err(source) => StoreError::Migrate { store, source },
        })
    }
}
