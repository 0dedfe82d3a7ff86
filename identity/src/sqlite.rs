//! The SQL plumbing the vault and the authority's membership store share, written once.
//!
//! For their SQLite files: created readable by their owner only (0600) before SQLite touches
//! them, opened with the same settings (`open_pool`), written in transactions that take the
//! write lock first (`BEGIN_WRITE`), migrated under retries (`migrate`) and closed so that
//! no write stays behind in the write-ahead log (`close`).
//!
//! For any database (the membership store runs these on PostgreSQL too), for a store that
//! implements `SqlStore`: `retrying` contention with a bounded, jittered backoff and then
//! reporting it as busy, never as a hang (DESIGN §7); and decoding columns, so that a row a
//! store cannot decode becomes that store's "corrupt" error, never a panic.
//!
//! What it does not do: word the errors. Each store keeps its own error type and messages,
//! which name its file or database; `SqlStore` is how the plumbing builds them.

use std::borrow::Cow;
use std::future::Future;
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ColumnIndex, Decode, Row, Type};

use crate::Identifier;
use crate::backoff::Backoff;

/// 5 s: how long SQLite itself waits for a lock another connection holds. Writes to the
/// vault and the membership store take milliseconds, so this rides out a burst of other
/// tasks or another `kith` process; a holder that keeps the lock longer is stuck, and DESIGN
/// §7 wants that reported (after the store's own retries), not waited out.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// 10 s: how long one operation keeps retrying while the database answers with contention:
/// SQLite still busy or locked after [`BUSY_TIMEOUT`] (or at once, where its busy handler
/// cannot wait, such as a read snapshot that went stale before a write), PostgreSQL
/// serialization failures and deadlocks. DESIGN §7: retried inside the store with a bounded
/// backoff, never surfaced as a hang. Writes take milliseconds, so this rides out a burst of
/// hundreds; an operation is reported busy after at most about this plus one
/// [`BUSY_TIMEOUT`].
pub const BUSY_RETRY_BUDGET: Duration = Duration::from_secs(10);

/// The statement that opens a SQLite transaction that will write. A deferred transaction
/// that reads and then writes can fail at once with `SQLITE_BUSY` when another writer
/// committed after its read (the busy handler cannot help there); `IMMEDIATE` takes the
/// write lock before anything is read, so concurrent writers, in this process or another,
/// queue on the lock (up to [`BUSY_TIMEOUT`] each time) instead of failing half-way, and
/// every statement sees every committed write.
pub const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

/// 4 connections: SQLite admits one writer at a time anyway; a few connections let reads
/// proceed during a write (WAL) without holding many file descriptors and worker threads.
const MAX_CONNECTIONS: u32 = 4;

/// 10 s: how long [`migrate`] keeps retrying a migration SQLite answers busy (another
/// process opening the same new file at the same moment).
const MIGRATE_RETRY_BUDGET: Duration = Duration::from_secs(10);

/// 1 s: how long [`close`] waits for connections still being handed back to the pool
/// (normally a few milliseconds); bounded so that closing never hangs.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// 1 ms: how often [`close`] looks whether the last connection has closed.
const CLOSE_POLL: Duration = Duration::from_millis(1);

/// Why a stored row is corrupt, where a decoding or verifying error says so.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A store kept in a database with this module's plumbing: how it names itself and words
/// its errors, and which database errors are contention. The provided methods (decoding
/// columns) and this module's functions are the plumbing: they decide which error to build;
/// the store's required methods build it.
pub trait SqlStore {
    /// The store's error type.
    type Error;

    /// How logs name the store: its file, or its database (never with a password).
    fn describe(&self) -> Cow<'_, str>;

    /// Whether `source` is contention that clears if the operation runs again: nothing was
    /// committed, and a later attempt can succeed.
    fn is_transient(source: &sqlx::Error) -> bool;

    /// A database failure, reported as it is.
    fn db(&self, source: sqlx::Error) -> Self::Error;

    /// The database failure inside an error [`SqlStore::db`] made; any other error as it is.
    fn db_source(error: Self::Error) -> Result<sqlx::Error, Self::Error>;

    /// Contention that lasted past the retries: how long they `waited`, and the last
    /// contention error.
    fn busy(&self, waited: Duration, source: sqlx::Error) -> Self::Error;

    /// The store's tables could not be created or brought up to date.
    fn migrate_failed(&self, source: MigrateError) -> Self::Error;

    /// A stored row that is not what the store wrote: `what` names the value and how it is
    /// wrong; `cause` is the decoding or verifying error, where there is one.
    fn corrupt_row(&self, what: String, cause: Option<Cause>) -> Self::Error;

    /// A row that is not what the store wrote, with no further cause.
    fn corrupt(&self, what: String) -> Self::Error {
        self.corrupt_row(what, None)
    }

    /// A row that does not decode or verify, with the error that says why.
    fn corrupt_by<E>(&self, what: String, source: E) -> Self::Error
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        self.corrupt_row(what, Some(Box::new(source)))
    }

    /// Column `column` of `row` as a `T`. A value of another type means the row was not
    /// written by the store: a corrupt `what()`, naming the column.
    fn column<'r, R, T>(
        &self,
        row: &'r R,
        column: &str,
        what: impl FnOnce() -> String,
    ) -> Result<T, Self::Error>
    where
        R: Row,
        T: Decode<'r, R::Database> + Type<R::Database>,
        for<'c> &'c str: ColumnIndex<R>,
    {
        row.try_get(column)
            .map_err(|e| self.corrupt_by(format!("{} (column {column})", what()), e))
    }

    /// An integer column (the databases store 64-bit signed integers) as an `N`, such as a
    /// `u32` count; a value out of `N`'s range is a corrupt `what()`.
    fn integer<R, N>(
        &self,
        row: &R,
        column: &str,
        what: impl FnOnce() -> String + Copy,
    ) -> Result<N, Self::Error>
    where
        R: Row,
        N: TryFrom<i64>,
        N::Error: std::error::Error + Send + Sync + 'static,
        for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
        for<'c> &'c str: ColumnIndex<R>,
    {
        let value: i64 = self.column(row, column, what)?;
        N::try_from(value).map_err(|e| self.corrupt_by(what(), e))
    }

    /// A time in Unix seconds: stored as a signed 64-bit integer ([`sql_time`]), never
    /// negative.
    fn time<R>(
        &self,
        row: &R,
        column: &str,
        what: impl FnOnce() -> String + Copy,
    ) -> Result<u64, Self::Error>
    where
        R: Row,
        for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
        for<'c> &'c str: ColumnIndex<R>,
    {
        self.integer(row, column, what)
    }

    /// A time in Unix seconds, or NULL.
    fn optional_time<R>(
        &self,
        row: &R,
        column: &str,
        what: impl FnOnce() -> String + Copy,
    ) -> Result<Option<u64>, Self::Error>
    where
        R: Row,
        for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
        for<'c> &'c str: ColumnIndex<R>,
    {
        let value: Option<i64> = self.column(row, column, what)?;
        value
            .map(|value| u64::try_from(value).map_err(|e| self.corrupt_by(what(), e)))
            .transpose()
    }

    /// An identifier, stored as its text (`I` + 40 hex digits).
    fn identifier<R>(
        &self,
        row: &R,
        column: &str,
        what: impl FnOnce() -> String + Copy,
    ) -> Result<Identifier, Self::Error>
    where
        R: Row,
        for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
        for<'c> &'c str: ColumnIndex<R>,
    {
        let text: String = self.column(row, column, what)?;
        text.parse().map_err(|e| self.corrupt_by(what(), e))
    }
}

/// Run `op` until it succeeds or fails with something other than contention, retrying that
/// for at most [`BUSY_RETRY_BUDGET`]; then it is [`SqlStore::busy`] of `store`.
pub async fn retrying<S, T, F, Fut>(store: &S, op: F) -> Result<T, S::Error>
where
    S: SqlStore,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, S::Error>>,
{
    retrying_within(store, BUSY_RETRY_BUDGET, op).await
}

/// [`retrying`] within `budget`. The pauses double from 10 ms up to 500 ms, each with up to
/// half again at random, so that processes that collided do not collide again in step.
pub async fn retrying_within<S, T, F, Fut>(
    store: &S,
    budget: Duration,
    mut op: F,
) -> Result<T, S::Error>
where
    S: SqlStore,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, S::Error>>,
{
    let mut backoff = Backoff::new(budget).jittered();
    loop {
        let source = match op().await.map_err(S::db_source) {
            Ok(done) => return Ok(done),
            Err(Ok(source)) if S::is_transient(&source) => source,
            Err(Ok(source)) => return Err(store.db(source)),
            Err(Err(other)) => return Err(other),
        };
        let waited = backoff.waited();
        let Some(pause) = backoff.next_pause() else {
            return Err(store.busy(waited, source));
        };
        tracing::debug!(store = %store.describe(), ?waited, error = %source, "busy; retrying");
        tokio::time::sleep(pause).await;
    }
}

/// A time as the databases store it: a signed 64-bit integer. Times past the year 292
/// billion saturate, which keeps "expires after now" true for them.
pub fn sql_time(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
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

/// A pool on the SQLite file at `path`, made readable and writable by its owner only first
/// (`secure_files`); on failure, the path that failed and why. Every connection uses the
/// write-ahead log (reads go on during a write), FULL sync (a committed write — a key, a
/// ticket's used-up use — survives a power cut; the stores write rarely enough that the
/// extra fsync costs nothing noticeable), [`BUSY_TIMEOUT`] and foreign keys; `configure`
/// adds a store's own settings. An operation waits at most `acquire_timeout` for one of
/// the pool's few connections.
///
/// The pool is lazy: its first connection is made inside [`migrate`], under its retries.
/// Making it switches a new file to WAL, which needs an exclusive lock that SQLite's busy
/// handler does not always wait for when another process opens the file at once.
pub fn open_pool(
    path: &Path,
    acquire_timeout: Duration,
    configure: impl FnOnce(SqliteConnectOptions) -> SqliteConnectOptions,
) -> Result<SqlitePool, (PathBuf, io::Error)> {
    secure_files(path)?;
    let options = SqliteConnectOptions::new()
        .filename(path)
        // Created above with the right mode; SQLite must not create it with its own.
        .create_if_missing(false)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true);
    Ok(SqlitePoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .acquire_timeout(acquire_timeout)
        .connect_lazy_with(configure(options)))
}

/// Create the database file at `path` readable and writable by its owner only, or tighten
/// an existing one (and its `-wal` and `-shm` files) to that. Done before SQLite opens it,
/// so the file is never briefly readable by others. On failure, the path that failed.
fn secure_files(path: &Path) -> Result<(), (PathBuf, io::Error)> {
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

/// Run `migrator` on `pool`, the pool of `store`, retrying busy answers with a doubling
/// backoff for a bounded time. SQLite has no advisory lock: two processes opening a new file
/// at once can both find a migration not yet applied and both run it, and the loser fails
/// ("table … already exists"); the migrator then runs once more, finds the winner's
/// migration applied and checks its checksum. A file with several migrations can be raced on
/// each of them, so each version may be lost once; the same version failing twice is a real
/// error.
///
/// On failure the pool is closed (a store that cannot be migrated is not used) and the
/// error is the store's: [`SqlStore::busy`] if SQLite stayed busy, [`SqlStore::db`] if the
/// file could not be opened or read, [`SqlStore::migrate_failed`] for a schema problem.
pub async fn migrate<S: SqlStore>(
    store: &S,
    migrator: &Migrator,
    pool: &SqlitePool,
) -> Result<(), S::Error> {
    let mut backoff = Backoff::new(MIGRATE_RETRY_BUDGET);
    // The last version whose run lost a race; versions only go up as the migrator advances.
    let mut raced = None;
    let error = loop {
        let error = match migrator.run(pool).await {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        let retry = match &error {
            MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _) if is_busy(e) => true,
            MigrateError::ExecuteMigration(_, version) if raced != Some(*version) => {
                raced = Some(*version);
                true
            }
            _ => false,
        };
        if retry && let Some(pause) = backoff.next_pause() {
            tokio::time::sleep(pause).await;
            continue;
        }
        break error;
    };
    let waited = backoff.waited();
    close(store, pool).await;
    Err(match error {
        MigrateError::Execute(source) | MigrateError::ExecuteMigration(source, _)
            if is_busy(&source) =>
        {
            store.busy(waited, source)
        }
        // Opening the file or reading the migration table failed.
        MigrateError::Execute(source) => store.db(source),
        other => store.migrate_failed(other),
    })
}

/// Fold the write-ahead log into the file, then close every connection of `pool`, the pool
/// of `store`, waiting a bounded time for connections still in use. A checkpoint that fails
/// is logged and loses nothing: SQLite checkpoints again on the next open.
pub async fn close<S: SqlStore>(store: &S, pool: &SqlitePool) {
    // SQLite checkpoints when the last connection closes, but connections closing at the
    // same moment can each see the other still open and leave recent writes (secrets
    // included) in the WAL beside the file until the next open.
    if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(pool)
        .await
    {
        tracing::debug!(store = %store.describe(), %error, "no checkpoint before closing");
    }
    // sqlx hands a connection back to the pool on a spawned task after its last use, and
    // `SqlitePool::close` neither waits for connections still on their way back nor closes
    // one that lands in the idle queue after it has emptied it. So close again until none
    // is left, for a bounded time, so that a process that closes and exits leaves no
    // connection unclosed.
    let deadline = tokio::time::Instant::now() + CLOSE_GRACE;
    loop {
        pool.close().await;
        if pool.size() == 0 {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(CLOSE_POLL).await;
    }
    // Connections closing at the same moment can each see another still open, and then
    // none removes the (checkpointed, empty) `-wal` and `-shm` files beside the store. One
    // more connection, opened and closed alone, is the last one out: it removes them, so a
    // cleanly stopped store is one file, as a later look at it expects.
    use sqlx::{ConnectOptions as _, Connection as _};
    match pool.connect_options().connect().await {
        Ok(last) => {
            let _ = last.close().await;
        }
        Err(error) => {
            tracing::debug!(store = %store.describe(), %error, "no last connection to tidy up with");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Instant;

    use sqlx::sqlite::SqliteRow;

    use super::*;

    /// The vault's schema: a real migration to run.
    static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

    /// A store whose errors show which one the plumbing chose. `PoolTimedOut` stands for
    /// contention, so that tests can make some without a second connection.
    struct TestStore;

    #[derive(Debug)]
    enum TestError {
        Db(sqlx::Error),
        Busy(Duration, sqlx::Error),
        Migrate(MigrateError),
        Corrupt(String, Option<Cause>),
        Refused,
    }

    impl SqlStore for TestStore {
        type Error = TestError;

        fn describe(&self) -> Cow<'_, str> {
            Cow::Borrowed("test store")
        }

        fn is_transient(source: &sqlx::Error) -> bool {
            matches!(source, sqlx::Error::PoolTimedOut)
        }

        fn db(&self, source: sqlx::Error) -> TestError {
            TestError::Db(source)
        }

        fn db_source(error: TestError) -> Result<sqlx::Error, TestError> {
            match error {
                TestError::Db(source) => Ok(source),
                other => Err(other),
            }
        }

        fn busy(&self, waited: Duration, source: sqlx::Error) -> TestError {
            TestError::Busy(waited, source)
        }

        fn migrate_failed(&self, source: MigrateError) -> TestError {
            TestError::Migrate(source)
        }

        fn corrupt_row(&self, what: String, cause: Option<Cause>) -> TestError {
            TestError::Corrupt(what, cause)
        }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn side_file(path: &Path, suffix: &str) -> PathBuf {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        PathBuf::from(side)
    }

    #[tokio::test]
    async fn contention_is_retried_until_the_operation_succeeds() {
        let attempts = AtomicU32::new(0);
        let attempts_ref = &attempts;
        let done = retrying_within(&TestStore, Duration::from_secs(5), move || async move {
            match attempts_ref.fetch_add(1, Ordering::Relaxed) {
                0..=2 => Err(TestError::Db(sqlx::Error::PoolTimedOut)),
                _ => Ok(7),
            }
        })
        .await
        .unwrap();
        assert_eq!(done, 7);
        assert_eq!(attempts.into_inner(), 4);
    }

    #[tokio::test]
    async fn contention_past_the_budget_is_busy_with_the_time_it_waited() {
        let started = Instant::now();
        let attempts = AtomicU32::new(0);
        let attempts_ref = &attempts;
        let err = retrying_within(&TestStore, Duration::from_millis(100), move || async move {
            attempts_ref.fetch_add(1, Ordering::Relaxed);
            Err::<(), _>(TestError::Db(sqlx::Error::PoolTimedOut))
        })
        .await
        .unwrap_err();
        let took = started.elapsed();
        match err {
            // 10 + 20 + 40 ms at least, before the next pause would pass the budget.
            TestError::Busy(waited, sqlx::Error::PoolTimedOut) => {
                assert!(waited >= Duration::from_millis(70), "{waited:?}");
                assert!(waited <= took, "{waited:?} > {took:?}");
            }
            other => panic!("expected Busy, got {other:?}"),
        }
        assert!(took < Duration::from_secs(1), "gave up after {took:?}");
        assert!(attempts.into_inner() >= 4);
    }

    #[tokio::test]
    async fn other_failures_are_returned_at_once_as_they_are() {
        let attempts = AtomicU32::new(0);
        let attempts_ref = &attempts;
        let err = retrying(&TestStore, move || async move {
            attempts_ref.fetch_add(1, Ordering::Relaxed);
            Err::<(), _>(TestError::Db(sqlx::Error::RowNotFound))
        })
        .await
        .unwrap_err();
        assert!(
            matches!(err, TestError::Db(sqlx::Error::RowNotFound)),
            "{err:?}"
        );
        let err = retrying(&TestStore, move || async move {
            attempts_ref.fetch_add(1, Ordering::Relaxed);
            Err::<(), _>(TestError::Refused)
        })
        .await
        .unwrap_err();
        assert!(matches!(err, TestError::Refused), "{err:?}");
        assert_eq!(attempts.into_inner(), 2, "neither was retried");
    }

    async fn one_row(sql: &str) -> SqliteRow {
        let pool = SqlitePool::connect("sqlite::memory:").await.unwrap();
        let row = sqlx::query(sql).fetch_one(&pool).await.unwrap();
        pool.close().await;
        row
    }

    /// The `what` and whether there is a cause, of a corrupt-row error.
    fn corrupt<T: std::fmt::Debug>(result: Result<T, TestError>) -> (String, bool) {
        match result {
            Err(TestError::Corrupt(what, cause)) => (what, cause.is_some()),
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn columns_decode_or_are_corrupt_naming_the_value_and_the_column() {
        let id = Identifier::from_bytes([7; crate::IDENTIFIER_LEN]);
        let row = one_row(&format!(
            "SELECT 5 AS n, -1 AS negative, 4294967296 AS big, NULL AS missing, 'x' AS text, \
             '{id}' AS id"
        ))
        .await;
        let s = TestStore;
        let what = || "the value".to_owned();

        assert_eq!(s.column::<_, i64>(&row, "n", what).unwrap(), 5);
        assert_eq!(s.time(&row, "n", what).unwrap(), 5);
        assert_eq!(s.optional_time(&row, "n", what).unwrap(), Some(5));
        assert_eq!(s.optional_time(&row, "missing", what).unwrap(), None);
        assert_eq!(s.integer::<_, u64>(&row, "big", what).unwrap(), 1 << 32);
        assert_eq!(s.identifier(&row, "id", what).unwrap(), id);

        // A value of another type, or no such column: the column is named.
        let expected = ("the value (column text)".to_owned(), true);
        assert_eq!(corrupt(s.time(&row, "text", what)), expected);
        assert_eq!(
            corrupt(s.column::<_, String>(&row, "n", what)).0,
            "the value (column n)"
        );
        assert_eq!(
            corrupt(s.time(&row, "nope", what)).0,
            "the value (column nope)"
        );
        // A value that decodes but is out of range or does not parse: the value alone.
        let expected = ("the value".to_owned(), true);
        assert_eq!(corrupt(s.time(&row, "negative", what)), expected);
        assert_eq!(corrupt(s.optional_time(&row, "negative", what)), expected);
        assert_eq!(corrupt(s.integer::<_, u32>(&row, "big", what)), expected);
        assert_eq!(corrupt(s.identifier(&row, "text", what)), expected);

        assert_eq!(
            corrupt(Err::<(), _>(s.corrupt("plain".into()))),
            ("plain".into(), false)
        );
    }

    #[test]
    fn times_past_the_signed_range_saturate() {
        assert_eq!(sql_time(0), 0);
        assert_eq!(sql_time(1_700_000_000), 1_700_000_000);
        assert_eq!(sql_time(u64::MAX), i64::MAX);
    }

    #[tokio::test]
    async fn a_pool_opens_an_owner_only_file_with_the_shared_settings_and_closes_clean() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.sqlite");
        // Files left readable by others are tightened before SQLite opens them.
        for file in [path.clone(), side_file(&path, "-wal")] {
            std::fs::write(&file, b"").unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let pool = open_pool(&path, Duration::from_secs(5), |options| {
            options.pragma("secure_delete", "ON")
        })
        .unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&side_file(&path, "-wal")), 0o600);
        migrate(&TestStore, &MIGRATOR, &pool).await.unwrap();
        // Running it again finds everything applied.
        migrate(&TestStore, &MIGRATOR, &pool).await.unwrap();

        let mut conn = pool.acquire().await.unwrap();
        for (pragma, expected) in [
            ("journal_mode", "wal"),
            ("synchronous", "2"),
            ("foreign_keys", "1"),
            ("busy_timeout", "5000"),
            ("secure_delete", "1"),
        ] {
            let row = sqlx::query(&format!("PRAGMA {pragma}"))
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            let value: String = match row.try_get::<String, _>(0) {
                Ok(text) => text,
                Err(_) => row.try_get::<i64, _>(0).unwrap().to_string(),
            };
            assert_eq!(value, expected, "PRAGMA {pragma}");
        }
        sqlx::query("INSERT INTO credentials VALUES ('h', 'i', x'00', x'00', 1, 1)")
            .execute(&mut *conn)
            .await
            .expect_err("foreign keys are enforced");
        drop(conn);

        close(&TestStore, &pool).await;
        assert_eq!(pool.size(), 0, "close leaves no connection open");
        let wal = std::fs::metadata(side_file(&path, "-wal")).map_or(0, |m| m.len());
        assert_eq!(wal, 0, "close leaves nothing in the write-ahead log");
    }

    #[tokio::test]
    async fn a_file_that_cannot_be_created_names_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("store.sqlite");
        let (failed, error) = open_pool(&path, Duration::from_secs(5), |o| o).unwrap_err();
        assert_eq!(failed, path);
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn a_schema_problem_is_a_migration_failure_and_closes_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        let pool = open_pool(
            &dir.path().join("store.sqlite"),
            Duration::from_secs(5),
            |o| o,
        )
        .unwrap();
        migrate(&TestStore, &MIGRATOR, &pool).await.unwrap();
        // An applied migration that is not the one this build carries.
        sqlx::query("UPDATE _sqlx_migrations SET checksum = x'00' WHERE version = 1")
            .execute(&pool)
            .await
            .unwrap();
        let err = migrate(&TestStore, &MIGRATOR, &pool).await.unwrap_err();
        assert!(
            matches!(err, TestError::Migrate(MigrateError::VersionMismatch(1))),
            "{err:?}"
        );
        assert!(pool.is_closed());
    }

    #[tokio::test]
    async fn busy_and_locked_are_told_apart_from_other_failures() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.sqlite");
        let pool = open_pool(&path, Duration::from_secs(5), |o| o).unwrap();
        migrate(&TestStore, &MIGRATOR, &pool).await.unwrap();
        let holder = pool.begin_with(BEGIN_WRITE).await.unwrap();
        // Another process that will not wait for the lock.
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .busy_timeout(Duration::ZERO);
        let impatient = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .unwrap();
        let err = impatient.begin_with(BEGIN_WRITE).await.unwrap_err();
        assert!(is_busy(&err), "{err:?}");
        assert!(!is_busy(&sqlx::Error::RowNotFound));
        holder.rollback().await.unwrap();
        impatient
            .begin_with(BEGIN_WRITE)
            .await
            .unwrap()
            .commit()
            .await
            .unwrap();
        impatient.close().await;
        close(&TestStore, &pool).await;
    }
}
