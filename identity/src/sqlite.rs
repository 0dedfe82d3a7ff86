//! SQLite files that only their owner can read, as the vault and the authority's membership
//! store keep them: created 0600 before SQLite touches them, migrated under retries, and
//! closed so that no write stays behind in the write-ahead log.

use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::migrate::{MigrateError, Migrator};

use crate::backoff::Backoff;

/// 10 s: how long [`migrate`] keeps retrying a migration SQLite answers busy (another
/// process opening the same new file at the same moment).
const MIGRATE_RETRY_BUDGET: Duration = Duration::from_secs(10);

/// 1 s: how long [`close`] waits for connections still being handed back to the pool
/// (normally a few milliseconds); bounded so that closing never hangs.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// 1 ms: how often [`close`] looks whether the last connection has closed.
const CLOSE_POLL: Duration = Duration::from_millis(1);

/// Create the database file at `path` readable and writable by its owner only, or tighten
/// an existing one (and its `-wal` and `-shm` files) to that. Done before SQLite opens it,
/// so the file is never briefly readable by others. On failure, the path that failed.
pub fn secure_files(path: &Path) -> Result<(), (PathBuf, io::Error)> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| (path.to_owned(), e))?;
    tighten_if_present(path)?;
    // SQLite gives these the main file's mode when it creates them; older ones may have
    // been left by a file that was once readable by others.
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        tighten_if_present(Path::new(&side))?;
    }
    Ok(())
}

/// If `path` exists and its group or others have any access, set its mode to 0600.
fn tighten_if_present(path: &Path) -> Result<(), (PathBuf, io::Error)> {
    let failed = |e| (path.to_owned(), e);
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(failed(e)),
    };
    if metadata.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(failed)?;
    }
    Ok(())
}

/// Whether SQLite answered busy (`SQLITE_BUSY`, 5) or locked (`SQLITE_LOCKED`, 6), in any of
/// their extended forms (the low byte of an extended result code is its primary code).
pub fn is_busy(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(e) => e
            .code()
            .and_then(|code| code.parse::<i32>().ok())
            .is_some_and(|code| matches!(code & 0xff, 5 | 6)),
        _ => false,
    }
}

/// Why [`migrate`] gave up, and after how long.
#[derive(Debug)]
pub struct MigrateFailure {
    /// What the migrator reported last.
    pub error: MigrateError,
    /// How long it tried.
    pub waited: Duration,
}

impl MigrateFailure {
    /// The database error behind it, and whether that was busy/locked (still so after the
    /// retries), if it was not a schema problem.
    pub fn database_error(self) -> Result<(sqlx::Error, bool), MigrateError> {
        match self.error {
            MigrateError::Execute(source) | MigrateError::ExecuteMigration(source, _)
                if is_busy(&source) =>
            {
                Ok((source, true))
            }
            // Opening the file or reading the migration table failed.
            MigrateError::Execute(source) => Ok((source, false)),
            other => Err(other),
        }
    }
}

/// Run `migrator` on `pool`, retrying busy answers with a doubling backoff for a bounded
/// time. SQLite has no advisory lock: two processes opening a new file at once can both find
/// a migration not yet applied and both run it, and the loser fails ("table … already
/// exists"); the migrator then runs once more, finds the winner's migration applied and
/// checks its checksum.
pub async fn migrate(migrator: &Migrator, pool: &SqlitePool) -> Result<(), MigrateFailure> {
    let mut backoff = Backoff::new(MIGRATE_RETRY_BUDGET);
    let mut raced = false;
    loop {
        let error = match migrator.run(pool).await {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        let retry = match &error {
            MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _) if is_busy(e) => true,
            MigrateError::ExecuteMigration(..) if !raced => {
                raced = true;
                true
            }
            _ => false,
        };
        if retry && let Some(pause) = backoff.next_pause() {
            tokio::time::sleep(pause).await;
            continue;
        }
        return Err(MigrateFailure {
            error,
            waited: backoff.waited(),
        });
    }
}

/// Fold the write-ahead log into the file, then close every connection of `pool`, waiting a
/// bounded time for connections still in use. Returns the checkpoint's error, if it failed
/// (which loses nothing: SQLite checkpoints again on the next open).
pub async fn close(pool: &SqlitePool) -> Result<(), sqlx::Error> {
    // SQLite checkpoints when the last connection closes, but connections closing at the
    // same moment can each see the other still open and leave recent writes (secrets
    // included) in the WAL beside the file until the next open.
    let checkpoint = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(pool)
        .await
        .map(|_| ());
    // sqlx hands a connection back to the pool on a spawned task after its last use, and
    // `SqlitePool::close` neither waits for connections still on their way back nor closes
    // one that lands in the idle queue after it has emptied it. So close again until none
    // is left, for a bounded time, so that a process that closes and exits leaves no
    // connection unclosed.
    let deadline = tokio::time::Instant::now() + CLOSE_GRACE;
    loop {
        pool.close().await;
        if pool.size() == 0 || tokio::time::Instant::now() >= deadline {
            return checkpoint;
        }
        tokio::time::sleep(CLOSE_POLL).await;
    }
}
