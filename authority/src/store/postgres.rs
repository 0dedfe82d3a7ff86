//! The membership store in a PostgreSQL database, which several authority processes may
//! share: how it is connected, migrated and closed.
//!
//! Write transactions run at READ COMMITTED (set explicitly, whatever the server's
//! default): a redemption's `UPDATE` locks the ticket's row, a concurrent redeemer of the
//! same ticket waits for that lock and then re-checks `uses_left > 0` against the committed
//! row, so uses are never taken twice, in one process or many. Serialization failures and
//! deadlocks, which the server may still report under load, are retried by the store.

use std::str::FromStr;
use std::time::Duration;

use kith_identity::sqlite::SqlStore;
use sqlx::Connection as _;
use sqlx::Postgres;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};

use super::StoreError;
use super::ops::{Db, Dialect};
use super::stamp::{self, Intent, Seen, StoreOwner};

/// The PostgreSQL schema, embedded at build time; the twin of `migrations/sqlite`.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// 8 connections per authority process: enough for writes queued on different tickets and
/// reads to run side by side, few enough that a dozen processes stay well inside the
/// server's default `max_connections` of 100.
const MAX_CONNECTIONS: u32 = 8;

/// 30 s: how long an operation waits for a pool connection, including making a new one
/// (connecting and logging in). Operations hold one for milliseconds, so this is hundreds
/// of queued enrollments or an unreachable server; either is reported, not waited out.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// 10 s: how long the first connection may take before the server counts as unreachable.
const FIRST_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// 5 s: how long [`Db::close`] waits for connections still in use to come back; bounded so
/// that closing never hangs.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// SQLSTATE `serialization_failure`: the transaction lost a conflict and may be rerun.
const SERIALIZATION_FAILURE: &str = "40001";

/// SQLSTATE `deadlock_detected`: the server aborted this transaction to break a deadlock.
const DEADLOCK_DETECTED: &str = "40P01";

impl Dialect for Postgres {
    const BEGIN_WRITE: &'static str = "BEGIN ISOLATION LEVEL READ COMMITTED";

    /// SHARE ROW EXCLUSIVE conflicts with itself and with the ROW EXCLUSIVE lock that every
    /// `UPDATE` takes, yet not with plain reads: a filing's count of pending requests stays
    /// true until it commits, in any number of processes, while listings go on.
    const LOCK_JOIN_REQUESTS: Option<&'static str> =
        Some("LOCK TABLE join_requests IN SHARE ROW EXCLUSIVE MODE");

    /// EXCLUSIVE conflicts with itself and with every write to the feed, yet not with plain
    /// reads. An identity column numbers rows when they are inserted, not when they commit:
    /// without the lock, two authority processes could commit feed entries 6 then 5, and a
    /// follower that had read up to 6 would never see 5. With it, membership changes take
    /// turns across processes, so numbers become visible in increasing order, and what a
    /// change read of a member (its attributes before, an earlier redemption) stays true
    /// until it commits. Every such transaction takes it before it touches a ticket or
    /// member row, so the lock cannot join a deadlock.
    const LOCK_MEMBERSHIP: Option<&'static str> =
        Some("LOCK TABLE membership_feed IN EXCLUSIVE MODE");

    /// The store's tables are created unqualified, so in the first schema of the search
    /// path: `current_schema()`.
    const LIST_TABLES: &'static str = "SELECT tablename::text AS name FROM pg_catalog.pg_tables \
         WHERE schemaname = current_schema()";

    fn is_transient(error: &sqlx::Error) -> bool {
        match error {
            sqlx::Error::Database(e) => e
                .code()
                .is_some_and(|code| code == SERIALIZATION_FAILURE || code == DEADLOCK_DETECTED),
            _ => false,
        }
    }
}

/// Why connecting failed, told by what the server said: a missing database and a refused
/// login each have their own remedy; the driver's text is given once.
fn connect_failed(
    store: String,
    user: &str,
    host: &str,
    port: u16,
    database: &str,
    source: &sqlx::Error,
) -> StoreError {
    if let sqlx::Error::Database(db) = source {
        match db.code().as_deref() {
            // invalid_catalog_name
            Some("3D000") => {
                return StoreError::NoDatabase {
                    store,
                    database: database.to_owned(),
                    create: format!("createdb -h {host} -p {port} -U {user} {database}"),
                };
            }
            // invalid_password, invalid_authorization_specification
            Some("28P01" | "28000") => {
                return StoreError::LoginRefused {
                    store,
                    user: user.to_owned(),
                    reason: db.message().to_owned(),
                };
            }
            _ => {}
        }
        return StoreError::Connect {
            store,
            reason: db.message().to_owned(),
        };
    }
    StoreError::Connect {
        store,
        reason: source.to_string(),
    }
}

impl Db<Postgres> {
    /// Connect to the database at `url` and open the store there with `intent` for
    /// `owner`'s project: look at what it holds without changing it, and refuse it unless
    /// [`stamp::admit`] admits it; only then migrate it and stamp it or confirm its stamp at
    /// `now`.
    pub(super) async fn connect(
        url: &str,
        intent: Intent,
        owner: &StoreOwner,
        now: u64,
    ) -> Result<Self, StoreError> {
        let options =
            PgConnectOptions::from_str(url).map_err(|source| StoreError::InvalidUrl { source })?;
        let (user, host, port) = (
            options.get_username().to_owned(),
            options.get_host().to_owned(),
            options.get_port(),
        );
        let database = options.get_database().unwrap_or(&user).to_owned();
        let location = format!("PostgreSQL database {user}@{host}:{port}/{database}");
        // One connection first, so a server that is not there or refuses us is reported at
        // once: the pool would retry until its acquire timeout.
        let failed = |source: &sqlx::Error| {
            connect_failed(location.clone(), &user, &host, port, &database, source)
        };
        match tokio::time::timeout(FIRST_CONNECT_TIMEOUT, PgConnection::connect_with(&options))
            .await
        {
            Ok(Ok(first)) => {
                let _ = first.close().await;
            }
            Ok(Err(source)) => return Err(failed(&source)),
            Err(_) => {
                return Err(StoreError::Connect {
                    store: location,
                    reason: format!("no answer within {FIRST_CONNECT_TIMEOUT:?}"),
                });
            }
        }
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|source| failed(&source))?;
        let db = Self::new(pool, location);
        if let Err(e) = db.prepare(intent, owner, now).await {
            db.close().await;
            return Err(e);
        }
        Ok(db)
    }

    /// Survey, admit, migrate and stamp, as [`Db::connect`] describes.
    async fn prepare(
        &self,
        intent: Intent,
        owner: &StoreOwner,
        now: u64,
    ) -> Result<(), StoreError> {
        let survey = {
            let mut conn = self.pool.acquire().await.map_err(|e| self.db(e))?;
            stamp::survey::<Postgres>(&mut conn, &self.location).await?
        };
        stamp::admit(&Seen::Database(survey), intent, owner, &self.location)?;
        self.migrate().await?;
        self.settle_stamp(intent, owner, now).await
    }

    /// Close every connection, waiting at most [`CLOSE_GRACE`] for those in use.
    pub(super) async fn close(&self) {
        if tokio::time::timeout(CLOSE_GRACE, self.pool.close())
            .await
            .is_err()
        {
            tracing::debug!(store = %self.location, "connections still in use after closing the membership store");
        }
    }

    /// Create the tables or bring them up to date. The migrator holds a session advisory
    /// lock while it runs, so processes starting together take turns. A failed run can
    /// leave that lock held by its connection; [`Db::connect`] then closes the whole pool,
    /// which releases it.
    async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|source| self.migrate_failed(source))
    }
}
