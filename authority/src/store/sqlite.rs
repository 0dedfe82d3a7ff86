//! The membership store in an embedded SQLite file: how it is opened (owner-only file,
//! write-ahead log, bounded waits for the write lock), migrated and closed.
//!
//! SQLite admits one writer at a time. Every write transaction starts with `BEGIN
//! IMMEDIATE`, so it holds the write lock before it reads anything: concurrent writers, in
//! this process or another, queue on the lock (waiting up to [`BUSY_TIMEOUT`] each time)
//! instead of failing half-way, and a redemption's `UPDATE` sees every committed use.

use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::Sqlite;
use sqlx::migrate::{MigrateError, Migrator};
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

/// 10 s: how long opening keeps retrying a migration that SQLite answers busy (another
/// process opening the same new file at the same moment).
const MIGRATE_RETRY_BUDGET: Duration = Duration::from_secs(10);

/// 10 ms, doubling to 500 ms: pauses between migration retries.
const MIGRATE_FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MIGRATE_MAX_BACKOFF: Duration = Duration::from_millis(500);

/// 1 s: how long [`Db::close`] waits for connections still being handed back to the pool
/// (normally a few milliseconds); bounded so that closing never hangs.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// 1 ms: how often closing looks whether the last connection has closed.
const CLOSE_POLL: Duration = Duration::from_millis(1);

impl Dialect for Sqlite {
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";

    fn is_transient(error: &sqlx::Error) -> bool {
        is_busy(error)
    }
}

impl Db<Sqlite> {
    /// Open (creating it, mode 0600) the store file at `path` and migrate it.
    pub(super) async fn open(path: &Path) -> Result<Self, StoreError> {
        secure_file(path)?;
        // SQLite gives these the main file's mode when it creates them; older ones may have
        // been left by a file that was once readable by others.
        for suffix in ["-wal", "-shm"] {
            let mut side = path.as_os_str().to_owned();
            side.push(suffix);
            tighten_if_present(Path::new(&side))?;
        }
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
        // SQLite checkpoints when the last connection closes, but connections closing at the
        // same moment can each see the other still open and leave the WAL beside the file.
        // Best effort: failing to checkpoint loses nothing.
        if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await
        {
            tracing::debug!(store = %self.location, %error, "no checkpoint before closing the membership store");
        }
        // `SqlitePool::close` neither waits for connections still on their way back to the
        // pool nor closes one that lands in the idle queue after it has emptied it; close
        // again until none is left, for a bounded time.
        let deadline = tokio::time::Instant::now() + CLOSE_GRACE;
        loop {
            self.pool.close().await;
            if self.pool.size() == 0 || tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(CLOSE_POLL).await;
        }
    }

    /// Create the tables or bring them up to date, retrying what can pass.
    async fn migrate(&self) -> Result<(), StoreError> {
        let started = Instant::now();
        let mut backoff = MIGRATE_FIRST_BACKOFF;
        let mut raced = false;
        loop {
            let error = match MIGRATOR.run(&self.pool).await {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            let retry = match &error {
                MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _) if is_busy(e) => {
                    true
                }
                // SQLite has no advisory lock: two processes opening a new file at once can
                // both find a migration not yet applied and both run it; the loser fails
                // ("table tickets already exists"). Run the migrator once more: it then
                // finds the winner's migration applied and checks its checksum.
                MigrateError::ExecuteMigration(..) if !raced => {
                    raced = true;
                    true
                }
                _ => false,
            };
            if retry && started.elapsed().saturating_add(backoff) <= MIGRATE_RETRY_BUDGET {
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2).min(MIGRATE_MAX_BACKOFF);
                continue;
            }
            let store = self.location.to_string();
            return Err(match error {
                MigrateError::Execute(source) | MigrateError::ExecuteMigration(source, _)
                    if is_busy(&source) =>
                {
                    StoreError::Busy {
                        store,
                        waited: started.elapsed(),
                        source,
                    }
                }
                // Opening the file or reading the migration table failed: not a schema
                // problem.
                MigrateError::Execute(source) => StoreError::Database { store, source },
                source => StoreError::Migrate { store, source },
            });
        }
    }
}

/// Whether SQLite answered busy (`SQLITE_BUSY`, 5) or locked (`SQLITE_LOCKED`, 6), in any of
/// their extended forms (the low byte of an extended result code is its primary code).
fn is_busy(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(e) => e
            .code()
            .and_then(|code| code.parse::<i32>().ok())
            .is_some_and(|code| matches!(code & 0xff, 5 | 6)),
        _ => false,
    }
}

/// Create `path` with mode 0600 if it is missing, and tighten it to 0600 if it exists.
fn secure_file(path: &Path) -> Result<(), StoreError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|source| io_error(path, source))?;
    tighten_if_present(path)
}

/// If `path` exists and its group or others have any access, set its mode to 0600.
fn tighten_if_present(path: &Path) -> Result<(), StoreError> {
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error(path, e)),
    };
    if metadata.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|source| io_error(path, source))?;
    }
    Ok(())
}

fn io_error(path: &Path, source: io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_owned(),
        source,
    }
}
