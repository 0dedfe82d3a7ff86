//! The membership store in an embedded SQLite file, opened, migrated and closed as
//! [`kith_identity::sqlite`] keeps every SQLite file of kith: owner-only, write-ahead log,
//! bounded waits for the write lock.
//!
//! SQLite admits one writer at a time. Every write transaction starts with
//! [`sqlite::BEGIN_WRITE`] (`BEGIN IMMEDIATE`), so it holds the write lock before it reads
//! anything: concurrent writers, in this process or another, queue on the lock (waiting up
//! to [`sqlite::BUSY_TIMEOUT`] each time) instead of failing half-way, and a redemption's
//! `UPDATE` sees every committed use.
//!
//! Before a file is opened that way (which would create a missing file, switch it to the
//! write-ahead log and migrate it), what the path holds is looked at without changing it, so
//! that a store that is refused (`stamp`) is left exactly as it was found: a missing file is
//! not created, and no byte or modification time of any file in its directory changes.

use std::io::Read as _;
use std::path::Path;
use std::time::Duration;

use kith_identity::backoff::Backoff;
use kith_identity::sqlite;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{Connection as _, Sqlite};

use super::StoreError;
use super::ops::{Db, Dialect};
use super::stamp::{self, Intent, Seen, StoreOwner};

/// The SQLite schema, embedded at build time; the twin of `migrations/postgres`.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// The first 16 bytes of every SQLite database file (the SQLite file format, §1.3.1).
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

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

    /// Names starting `sqlite_` are SQLite's own (`sqlite_sequence`, for `AUTOINCREMENT`).
    const LIST_TABLES: &'static str = "SELECT name FROM sqlite_master \
         WHERE type = 'table' AND substr(name, 1, 7) <> 'sqlite_'";

    fn is_transient(error: &sqlx::Error) -> bool {
        sqlite::is_busy(error)
    }
}

impl Db<Sqlite> {
    /// Open the store file at `path` with `intent` for `owner`'s project: look at what the
    /// path holds without changing it ([`look`]), and refuse it unless [`stamp::admit`]
    /// admits it; only then open it (creating a missing file, mode 0600), migrate it and
    /// stamp it or confirm its stamp at `now`.
    pub(super) async fn open(
        path: &Path,
        intent: Intent,
        owner: &StoreOwner,
        now: u64,
    ) -> Result<Self, StoreError> {
        let location = format!("SQLite file {}", path.display());
        let seen = look(path, &location).await?;
        stamp::admit(&seen, intent, owner, &location)?;
        let pool = sqlite::open_pool(path, ACQUIRE_TIMEOUT, |options| options)
            .map_err(|(path, source)| StoreError::Io { path, source })?;
        let db = Self::new(pool, location);
        sqlite::migrate(&db, &MIGRATOR, &db.pool).await?;
        if let Err(e) = db.settle_stamp(intent, owner, now).await {
            db.close().await;
            return Err(e);
        }
        Ok(db)
    }

    /// Fold the write-ahead log into the file, then close every connection.
    pub(super) async fn close(&self) {
        sqlite::close(self, &self.pool).await;
    }
}

/// What the file at `path` (the store `location`) holds, seen without changing it: whether
/// it exists, whether it is empty, whether it begins with SQLite's header; then, through one
/// connection that only reads and sets no journal mode, its [`Survey`](stamp::survey).
/// Closing that connection, the only one, removes the `-wal` and `-shm` files that opening
/// made, so a refused store's directory is left as it was found.
async fn look(path: &Path, location: &str) -> Result<Seen, StoreError> {
    let read_failed = |source| StoreError::Read {
        path: path.to_owned(),
        source,
    };
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Seen::NoFile),
        Err(e) => return Err(read_failed(e)),
    };
    let mut header = Vec::with_capacity(SQLITE_HEADER.len());
    file.take(SQLITE_HEADER.len() as u64)
        .read_to_end(&mut header)
        .map_err(read_failed)?;
    if header.is_empty() {
        return Ok(Seen::EmptyFile);
    }
    if header != SQLITE_HEADER {
        return Err(StoreError::Damaged {
            store: location.to_owned(),
            what: "it is not a SQLite database (it does not begin with SQLite's header)".to_owned(),
            source: None,
        });
    }
    let mut backoff = Backoff::new(sqlite::BUSY_RETRY_BUDGET).jittered();
    loop {
        let error = match survey_file(path, location).await {
            Err(StoreError::Database { source, .. }) if sqlite::is_busy(&source) => source,
            surveyed => return surveyed.map(Seen::Database),
        };
        // Another process holds a lock a reader must wait for (it is switching a new file
        // to the write-ahead log, or recovering one), longer than SQLite's busy handler
        // waited, or where it cannot wait.
        let waited = backoff.waited();
        let Some(pause) = backoff.next_pause() else {
            return Err(StoreError::Busy {
                store: location.to_owned(),
                waited,
                source: error,
            });
        };
        tokio::time::sleep(pause).await;
    }
}

/// The [`Survey`](stamp::survey) of the SQLite database at `path`, through one connection
/// that only reads and sets no journal mode.
async fn survey_file(path: &Path, location: &str) -> Result<stamp::Survey, StoreError> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(false)
        .busy_timeout(sqlite::BUSY_TIMEOUT);
    let mut conn = SqliteConnection::connect_with(&options)
        .await
        .map_err(|e| stamp::unreadable::<Sqlite>(location, "it cannot be opened", e))?;
    let survey = stamp::survey::<Sqlite>(&mut conn, location).await;
    if let Err(error) = conn.close().await {
        tracing::debug!(store = %location, %error, "closing the connection that looked at the store failed");
    }
    survey
}
