//! The store's operations, written once over any database that implements [`Dialect`], so
//! that SQLite and PostgreSQL run the same statements in the same transactions and behave
//! alike. The SQL here is the common subset of both dialects: `$n` parameters (SQLite
//! accepts them too), `RETURNING`, `ON CONFLICT … DO UPDATE`, 64-bit integers and text.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kith_identity::Identifier;
use kith_identity::sqlite::{Cause, SqlStore, retrying};
use sqlx::migrate::MigrateError;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Type};

/// Times are stored as the shared plumbing stores them, on both databases.
pub(super) use kith_identity::sqlite::sql_time;

use super::{
    AuditEvent, FeedEntry, FeedKind, Member, MemberChange, NewTicket, PageKey, RedeemError,
    Redeemed, StoreError, TicketRecord, check_ticket,
};

/// What differs between the databases in how operations run; the rest is shared.
pub(super) trait Dialect: Database {
    /// The statement that opens a transaction that will write.
    const BEGIN_WRITE: &'static str;

    /// The statement that a transaction filing or expiring join requests runs first, so
    /// that such transactions take turns and the caps on pending requests hold; `None`
    /// where [`Dialect::BEGIN_WRITE`] serializes writers already.
    const LOCK_JOIN_REQUESTS: Option<&'static str>;

    /// The statement that a transaction changing membership (adding, updating or deleting
    /// a member, redeeming a ticket, approving a join request) runs before it reads or
    /// writes a member, so that such transactions take turns: the membership feed's
    /// numbers then become visible in increasing order (a follower asking for the entries
    /// after N never misses one committed late with a smaller number), and what a
    /// transaction reads of a member stays true until it commits. `None` where
    /// [`Dialect::BEGIN_WRITE`] serializes writers already.
    const LOCK_MEMBERSHIP: Option<&'static str>;

    /// Whether `error` is contention that clears if the transaction is run again: nothing
    /// was committed, and a later attempt can succeed.
    fn is_transient(error: &sqlx::Error) -> bool;

    /// The statement that lists the database's tables (those where the store's own would
    /// be), one per row in a text column `name`; on SQLite, without SQLite's own.
    const LIST_TABLES: &'static str;
}

/// 3: how often a write that changes a row only if it is fit (a redemption, a filing, a
/// decision) is attempted when the change matched nothing, yet the row then looks fit. That
/// needs the row to change between two statements in a way the database's locking (or, for
/// filings, their taking turns) rules out, so a second attempt settles it; the third is a
/// margin before reporting the row as inconsistent.
const SETTLE_ATTEMPTS: usize = 3;

/// The columns of `tickets` that [`Db::ticket_record`] reads.
const TICKET_COLUMNS: &str =
    "id, attributes, usage_count, uses_left, created_at, expires_at, created_by, revoked_at";

/// The columns of `members` that [`Db::member_row`] reads.
const MEMBER_COLUMNS: &str =
    "identifier, attributes, added_at, added_by, via, credential_ttl, changed_at";

/// The one statement that decides a redemption: it takes a use only from a ticket that is
/// known, unexpired, unrevoked and not used up, and the row lock it takes makes concurrent
/// redeemers of one ticket queue, so uses are never taken twice.
const TAKE_USE: &str = "UPDATE tickets SET uses_left = uses_left - 1 \
     WHERE code_hash = $1 AND uses_left > 0 AND expires_at > $2 AND revoked_at IS NULL \
     RETURNING id, attributes, uses_left, created_by";

const INSERT_AUDIT: &str =
    "INSERT INTO audit (at, actor, action, subject, detail) VALUES ($1, $2, $3, $4, $5)";

/// Insert or replace a member; its `changed_at` is the time of the latest feed entry about
/// it, so a member added again after a deletion carries the deletion's time.
const UPSERT_MEMBER: &str = "INSERT INTO members \
     (identifier, attributes, added_at, added_by, via, credential_ttl, changed_at) \
     VALUES ($1, $2, $3, $4, $5, $6, \
     (SELECT at FROM membership_feed WHERE subject = $1 ORDER BY seq DESC LIMIT 1)) \
     ON CONFLICT (identifier) DO UPDATE SET attributes = excluded.attributes, \
     added_at = excluded.added_at, added_by = excluded.added_by, via = excluded.via, \
     credential_ttl = excluded.credential_ttl, changed_at = excluded.changed_at";

const INSERT_FEED: &str =
    "INSERT INTO membership_feed (subject, at, kind, actor) VALUES ($1, $2, $3, $4)";

/// Remember who redeemed which ticket, so that a retry is recognized. A row left by a
/// member deleted since is deleted with it; the update is for safety only.
const RECORD_REDEMPTION: &str = "INSERT INTO redemptions (code_hash, member, ticket_id, at) \
     VALUES ($1, $2, $3, $4) \
     ON CONFLICT (code_hash, member) DO UPDATE SET ticket_id = excluded.ticket_id, \
     at = excluded.at";

/// A redemption of ticket `$1` by `$2` made before, by an identity still a member.
const EARLIER_REDEMPTION: &str = "SELECT r.ticket_id FROM redemptions r \
     JOIN members m ON m.identifier = r.member \
     WHERE r.code_hash = $1 AND r.member = $2";

/// A store on database `DB`: its pool and how messages name it. Cloning shares the pool.
pub(super) struct Db<DB: Database> {
    pub(super) pool: Pool<DB>,
    /// `SQLite file …` or `PostgreSQL database …`, never with a password.
    pub(super) location: Arc<str>,
    /// Writes waiting to be committed together (group commit).
    pub(super) batch: Arc<Batch>,
}

impl<DB: Database> Clone for Db<DB> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            location: Arc::clone(&self.location),
            batch: Arc::clone(&self.batch),
        }
    }
}

/// 256: the most writes one group commit carries. Enough to fold a storm of enrollments
/// into few commits, small enough that one transaction holds the write lock briefly.
const MAX_BATCH: usize = 256;

/// Group commit: concurrent ticket creations and redemptions are queued here, and whoever
/// holds `writer` runs everything queued in one transaction, each write in its own
/// savepoint, so a burst costs one disk sync instead of one per write. Every caller is
/// answered only after the commit that carries its write. The queue holds at most what
/// callers have in flight, which the authority's services bound (`service::MAX_IN_FLIGHT`).
#[derive(Default)]
pub(super) struct Batch {
    queue: std::sync::Mutex<Vec<Pending>>,
    writer: tokio::sync::Mutex<()>,
}

/// A queued write and where its outcome goes.
struct Pending {
    write: Write,
    reply: tokio::sync::oneshot::Sender<Result<Outcome, StoreError>>,
}

/// A write the group commit carries.
enum Write {
    Redeem {
        hash: String,
        member: Identifier,
        replace: bool,
        now: u64,
    },
    Create {
        ticket: NewTicket,
        now: u64,
    },
}

/// What a write came to.
enum Outcome {
    Redeemed(Attempt<Redeemed, RedeemError>),
    Created,
}

impl Batch {
    /// Up to [`MAX_BATCH`] queued writes, oldest first.
    fn take(&self) -> Vec<Pending> {
        let mut queue = self
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = queue.len().min(MAX_BATCH);
        queue.drain(..n).collect()
    }

    fn push(&self, pending: Pending) {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(pending);
    }
}

/// How one attempt at a write that changes a row only if it is fit ended.
pub(super) enum Attempt<T, E> {
    /// Done: a redemption's use taken and member added, a request filed or decided.
    Done(T),
    /// Refused (the ticket is unusable, the request undecidable, a cap is reached): nothing
    /// was written, but for the expiry marks that a refused filing commits.
    Refused(E),
    /// The row looked fit, yet the change matched nothing: run the attempt again.
    Inconclusive,
}

impl<DB: Database> Db<DB> {
    /// A store on `pool`, named `location` in messages and logs.
    pub(super) fn new(pool: Pool<DB>, location: String) -> Self {
        Self {
            pool,
            location: Arc::from(location),
            batch: Arc::default(),
        }
    }

    pub(super) fn location(&self) -> &str {
        &self.location
    }
}

/// The store's words for what the shared plumbing reports, on every database: every error
/// names the store; contention is what [`Dialect::is_transient`] says it is.
impl<DB: Dialect> SqlStore for Db<DB> {
    type Error = StoreError;

    fn describe(&self) -> Cow<'_, str> {
        Cow::Borrowed(&self.location)
    }

    fn is_transient(source: &sqlx::Error) -> bool {
        DB::is_transient(source)
    }

    fn db(&self, source: sqlx::Error) -> StoreError {
        StoreError::Database {
            store: self.location.to_string(),
            source,
        }
    }

    fn db_source(error: StoreError) -> Result<sqlx::Error, StoreError> {
        match error {
            StoreError::Database { source, .. } => Ok(source),
            other => Err(other),
        }
    }

    fn busy(&self, waited: Duration, source: sqlx::Error) -> StoreError {
        StoreError::Busy {
            store: self.location.to_string(),
            waited,
            source,
        }
    }

    fn migrate_failed(&self, source: MigrateError) -> StoreError {
        StoreError::Migrate {
            store: self.location.to_string(),
            hint: migrate_hint(&source),
            source,
        }
    }

    fn corrupt_row(&self, what: String, cause: Option<Cause>) -> StoreError {
        StoreError::Corrupt {
            store: self.location.to_string(),
            what,
            source: cause,
        }
    }
}

impl<DB> Db<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB>,
    for<'a> &'a str: ColumnIndex<DB::Row>,
{
    pub(super) async fn create_ticket(
        &self,
        ticket: &NewTicket,
        now: u64,
    ) -> Result<(), StoreError> {
        check_ticket(ticket, now)?;
        match self
            .grouped(Write::Create {
                ticket: ticket.clone(),
                now,
            })
            .await?
        {
            Outcome::Created => Ok(()),
            Outcome::Redeemed(_) => {
                Err(self.corrupt("group commit answered a creation with a redemption".to_owned()))
            }
        }
    }

    pub(super) async fn tickets_page(
        &self,
        after: Option<&PageKey>,
        limit: u32,
    ) -> Result<Vec<TicketRecord>, StoreError> {
        let sql = format!(
            "SELECT {TICKET_COLUMNS} FROM tickets WHERE {} ORDER BY created_at, id LIMIT $3",
            after_key("created_at", "id")
        );
        self.keyset_page(&sql, after, limit, None, Self::ticket_record)
            .await
    }

    /// One page of a keyset walk: `sql` selects the rows whose (time, key) comes after
    /// `$1`, `$2` (see [`after_key`]), at most `$3` of them, with `extra` as `$4` if given;
    /// `read` reads each row. Without `after`, from the first row.
    pub(super) async fn keyset_page<T>(
        &self,
        sql: &str,
        after: Option<&PageKey>,
        limit: u32,
        extra: Option<i64>,
        read: fn(&Self, &DB::Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let (at, key) = after.map_or((-1, ""), |k| (sql_time(k.at), k.key.as_str()));
        retrying(self, move || async move {
            let query = sqlx::query(sql)
                .bind(at)
                .bind(key.to_owned())
                .bind(i64::from(limit));
            let query = match extra {
                Some(extra) => query.bind(extra),
                None => query,
            };
            let rows = query.fetch_all(&self.pool).await.map_err(|e| self.db(e))?;
            rows.iter().map(|row| read(self, row)).collect()
        })
        .await
    }

    pub(super) async fn list_tickets(&self) -> Result<Vec<TicketRecord>, StoreError> {
        let sql = format!("SELECT {TICKET_COLUMNS} FROM tickets ORDER BY created_at, id");
        let sql = sql.as_str();
        retrying(self, move || async move {
            let rows = sqlx::query(sql)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.db(e))?;
            rows.iter().map(|row| self.ticket_record(row)).collect()
        })
        .await
    }

    pub(super) async fn revoke_ticket(
        &self,
        id: &str,
        actor: &Identifier,
        now: u64,
    ) -> Result<Option<TicketRecord>, StoreError> {
        let revoke = format!(
            "UPDATE tickets SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL \
             RETURNING {TICKET_COLUMNS}"
        );
        let select = format!("SELECT {TICKET_COLUMNS} FROM tickets WHERE id = $1");
        let actor = actor.to_string();
        let (revoke, select, actor) = (revoke.as_str(), select.as_str(), actor.as_str());
        retrying(self, move || async move {
            let mut tx = self.begin_write().await?;
            let revoked = sqlx::query(revoke)
                .bind(sql_time(now))
                .bind(id.to_owned())
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| self.db(e))?;
            let Some(row) = revoked else {
                // Unknown, or revoked already: nothing changes, so nothing is audited.
                let row = sqlx::query(select)
                    .bind(id.to_owned())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|e| self.db(e))?;
                return row.map(|row| self.ticket_record(&row)).transpose();
            };
            let record = self.ticket_record(&row)?;
            let detail = format!("uses_left={}", record.uses_left);
            self.audit(&mut tx, now, actor, AuditEvent::TICKET_REVOKED, id, &detail)
                .await?;
            tx.commit().await.map_err(|e| self.db(e))?;
            Ok(Some(record))
        })
        .await
    }

    pub(super) async fn redeem_ticket(
        &self,
        code_hash: &[u8; 32],
        member: &Identifier,
        replace: bool,
        now: u64,
    ) -> Result<Redeemed, RedeemError> {
        let hash = kith_identity::hex::encode(code_hash);
        let hash = hash.as_str();
        self.settle(
            "ticket redemption",
            move || async move {
                let write = Write::Redeem {
                    hash: hash.to_owned(),
                    member: *member,
                    replace,
                    now,
                };
                match self.grouped(write).await? {
                    Outcome::Redeemed(attempt) => Ok(attempt),
                    Outcome::Created => Err(self
                        .corrupt("group commit answered a redemption with a creation".to_owned())),
                }
            },
            || {
                "ticket (it is neither revoked, expired nor used up, yet it cannot be redeemed)"
                    .to_owned()
            },
        )
        .await
    }

    pub(super) async fn add_member(
        &self,
        member: &Member,
        actor: &Identifier,
        now: u64,
    ) -> Result<(), StoreError> {
        let actor = actor.to_string();
        let actor = actor.as_str();
        retrying(self, move || async move {
            let mut tx = self.begin_write().await?;
            self.upsert_member(&mut tx, member, actor, now).await?;
            tx.commit().await.map_err(|e| self.db(e))
        })
        .await
    }

    pub(super) async fn delete_member(
        &self,
        identifier: &Identifier,
        actor: &Identifier,
        now: u64,
    ) -> Result<Option<Member>, StoreError> {
        let sql = format!("DELETE FROM members WHERE identifier = $1 RETURNING {MEMBER_COLUMNS}");
        let (identifier, actor) = (identifier.to_string(), actor.to_string());
        let (sql, identifier, actor) = (sql.as_str(), identifier.as_str(), actor.as_str());
        retrying(self, move || async move {
            let mut tx = self.begin_write().await?;
            self.lock_membership(&mut tx).await?;
            let row = sqlx::query(sql)
                .bind(identifier.to_owned())
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| self.db(e))?;
            let Some(row) = row else {
                return Ok(None);
            };
            let deleted = self.member_row(&row)?;
            self.append_feed(&mut tx, identifier, now, FeedKind::Revoked, actor)
                .await?;
            // A ticket it redeemed is an ordinary redemption again, should it come back.
            sqlx::query("DELETE FROM redemptions WHERE member = $1")
                .bind(identifier.to_owned())
                .execute(&mut *tx)
                .await
                .map_err(|e| self.db(e))?;
            let detail = format!(
                "via={} attributes={}",
                deleted.via,
                attributes_json(&deleted.attributes)
            );
            self.audit(
                &mut tx,
                now,
                actor,
                AuditEvent::MEMBER_DELETED,
                identifier,
                &detail,
            )
            .await?;
            tx.commit().await.map_err(|e| self.db(e))?;
            Ok(Some(deleted))
        })
        .await
    }

    pub(super) async fn update_member(
        &self,
        identifier: &Identifier,
        set: &BTreeMap<String, String>,
        remove: &BTreeSet<String>,
        actor: &Identifier,
        now: u64,
    ) -> Result<Option<MemberChange>, StoreError> {
        let update = format!(
            "UPDATE members SET attributes = $2, changed_at = $3 WHERE identifier = $1 \
             RETURNING {MEMBER_COLUMNS}"
        );
        let (id_text, actor) = (identifier.to_string(), actor.to_string());
        let (update, id_text, actor) = (update.as_str(), id_text.as_str(), actor.as_str());
        retrying(self, move || async move {
            let mut tx = self.begin_write().await?;
            self.lock_membership(&mut tx).await?;
            let Some(before) = self.member_in(&mut tx, identifier).await? else {
                return Ok(None);
            };
            let mut attributes = before.attributes.clone();
            attributes.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
            attributes.retain(|name, _| !remove.contains(name));
            if attributes == before.attributes {
                // Nothing changes, so nothing is written: no audit event, no feed entry.
                return Ok(Some(MemberChange {
                    after: before.clone(),
                    before,
                }));
            }
            let at = self
                .append_feed(&mut tx, id_text, now, FeedKind::Changed, actor)
                .await?;
            let row = sqlx::query(update)
                .bind(id_text.to_owned())
                .bind(attributes_json(&attributes))
                .bind(sql_time(at))
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| self.db(e))?;
            let after = self.member_row(&row)?;
            let detail = format!(
                "before={} after={}",
                attributes_json(&before.attributes),
                attributes_json(&after.attributes)
            );
            self.audit(
                &mut tx,
                now,
                actor,
                AuditEvent::MEMBER_UPDATED,
                id_text,
                &detail,
            )
            .await?;
            tx.commit().await.map_err(|e| self.db(e))?;
            Ok(Some(MemberChange { before, after }))
        })
        .await
    }

    pub(super) async fn feed_page(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<FeedEntry>, StoreError> {
        retrying(self, move || async move {
            let rows = sqlx::query(
                "SELECT seq, subject, at, kind, actor FROM membership_feed \
                 WHERE seq > $1 ORDER BY seq LIMIT $2",
            )
            .bind(sql_time(after))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.db(e))?;
            rows.iter().map(|row| self.feed_entry(row)).collect()
        })
        .await
    }

    pub(super) async fn feed_head(&self) -> Result<u64, StoreError> {
        retrying(self, move || async move {
            let row = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS head FROM membership_feed")
                .fetch_one(&self.pool)
                .await
                .map_err(|e| self.db(e))?;
            self.time(&row, "head", || "membership feed head".to_owned())
        })
        .await
    }

    pub(super) async fn counts(&self) -> Result<super::StoreCounts, StoreError> {
        retrying(self, move || async move {
            let what = || "store counts".to_owned();
            let row = sqlx::query("SELECT COUNT(*) AS n FROM members")
                .fetch_one(&self.pool)
                .await
                .map_err(|e| self.db(e))?;
            let members = self.time(&row, "n", what)?;
            let mut grouped = Vec::new();
            for (sql, key) in [
                (
                    "SELECT state AS k, COUNT(*) AS n FROM join_requests GROUP BY state ORDER BY state",
                    "state",
                ),
                (
                    "SELECT action AS k, COUNT(*) AS n FROM audit GROUP BY action ORDER BY action",
                    "action",
                ),
            ] {
                let rows = sqlx::query(sql)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(|e| self.db(e))?;
                let mut counted = Vec::with_capacity(rows.len());
                for row in &rows {
                    let k: String = self.column(row, "k", || format!("{key} count"))?;
                    counted.push((k, self.time(row, "n", what)?));
                }
                grouped.push(counted);
            }
            let audit_events = grouped.pop().unwrap_or_default();
            let join_requests = grouped.pop().unwrap_or_default();
            Ok(super::StoreCounts {
                members,
                join_requests,
                audit_events,
            })
        })
        .await
    }

    pub(super) async fn member(
        &self,
        identifier: &Identifier,
    ) -> Result<Option<Member>, StoreError> {
        let sql = format!("SELECT {MEMBER_COLUMNS} FROM members WHERE identifier = $1");
        let identifier = identifier.to_string();
        let (sql, identifier) = (sql.as_str(), identifier.as_str());
        retrying(self, move || async move {
            let row = sqlx::query(sql)
                .bind(identifier.to_owned())
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| self.db(e))?;
            row.map(|row| self.member_row(&row)).transpose()
        })
        .await
    }

    pub(super) async fn members(&self) -> Result<Vec<Member>, StoreError> {
        let sql = format!("SELECT {MEMBER_COLUMNS} FROM members ORDER BY added_at, identifier");
        let sql = sql.as_str();
        retrying(self, move || async move {
            let rows = sqlx::query(sql)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.db(e))?;
            rows.iter().map(|row| self.member_row(row)).collect()
        })
        .await
    }

    pub(super) async fn members_page(
        &self,
        after: Option<&PageKey>,
        limit: u32,
    ) -> Result<Vec<Member>, StoreError> {
        let sql = format!(
            "SELECT {MEMBER_COLUMNS} FROM members WHERE {} \
             ORDER BY added_at, identifier LIMIT $3",
            after_key("added_at", "identifier")
        );
        self.keyset_page(&sql, after, limit, None, Self::member_row)
            .await
    }

    pub(super) async fn audit_page(
        &self,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<(i64, AuditEvent)>, StoreError> {
        let before = before.unwrap_or(i64::MAX);
        retrying(self, move || async move {
            let rows = sqlx::query(
                "SELECT seq, at, actor, action, subject, detail FROM audit \
                 WHERE seq < $1 ORDER BY seq DESC LIMIT $2",
            )
            .bind(before)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.db(e))?;
            rows.iter()
                .map(|row| {
                    let seq: i64 = self.column(row, "seq", || "audit event".to_owned())?;
                    Ok((seq, self.audit_event(row)?))
                })
                .collect()
        })
        .await
    }

    pub(super) async fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        retrying(self, move || async move {
            let mut tx = self.begin_write().await?;
            self.audit(
                &mut tx,
                event.at,
                &event.actor,
                &event.action,
                &event.subject,
                &event.detail,
            )
            .await?;
            tx.commit().await.map_err(|e| self.db(e))
        })
        .await
    }

    pub(super) async fn audit_log(&self, limit: u32) -> Result<Vec<AuditEvent>, StoreError> {
        retrying(self, move || async move {
            let rows = sqlx::query(
                "SELECT at, actor, action, subject, detail FROM \
                 (SELECT seq, at, actor, action, subject, detail FROM audit \
                  ORDER BY seq DESC LIMIT $1) AS newest \
                 ORDER BY seq",
            )
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.db(e))?;
            rows.iter().map(|row| self.audit_event(row)).collect()
        })
        .await
    }
}

/// The parts of the transactions above.
impl<DB> Db<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB>,
    for<'a> &'a str: ColumnIndex<DB::Row>,
{
    /// Insert `ticket` and audit it, in the caller's transaction.
    async fn create_in(
        &self,
        tx: &mut DB::Connection,
        ticket: &NewTicket,
        now: u64,
    ) -> Result<(), StoreError> {
        let attributes = attributes_json(&ticket.attributes);
        let detail = format!(
            "usage_count={} expires_at={} attributes={attributes}",
            ticket.usage_count, ticket.expires_at
        );
        let created_by = ticket.created_by.to_string();
        let inserted = sqlx::query(
            "INSERT INTO tickets (id, code_hash, attributes, usage_count, uses_left, \
             created_at, expires_at, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(ticket.id.clone())
        .bind(kith_identity::hex::encode(&ticket.code_hash))
        .bind(attributes)
        .bind(i64::from(ticket.usage_count))
        .bind(i64::from(ticket.usage_count))
        .bind(sql_time(now))
        .bind(sql_time(ticket.expires_at))
        .bind(created_by.clone())
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(StoreError::TicketExists {
                    id: ticket.id.clone(),
                });
            }
            Err(e) => return Err(self.db(e)),
        }
        self.audit(
            tx,
            now,
            &created_by,
            AuditEvent::TICKET_CREATED,
            &ticket.id,
            &detail,
        )
        .await
    }

    /// Queue `write` for the next group commit and wait for its outcome, running the
    /// commit ourselves when no one else is.
    async fn grouped(&self, write: Write) -> Result<Outcome, StoreError> {
        let (reply, mut answer) = tokio::sync::oneshot::channel();
        self.batch.push(Pending { write, reply });
        // The writer running our batch was cancelled (its caller went away) before it
        // committed: replies are sent right after the commit with no await in between, so
        // an unanswered write was rolled back. Not corruption; the caller may try again.
        let lost = || {
            self.db(sqlx::Error::Protocol(
                "the group commit carrying this write was cancelled before it committed".to_owned(),
            ))
        };
        loop {
            tokio::select! {
                biased;
                outcome = &mut answer => return outcome.unwrap_or_else(|_| Err(lost())),
                guard = self.batch.writer.lock() => {
                    let batch = self.batch.take();
                    if batch.is_empty() {
                        // Another writer took ours and has answered it (it answers before
                        // it lets go of the lock).
                        drop(guard);
                        return answer.await.unwrap_or_else(|_| Err(lost()));
                    }
                    self.commit_batch(batch).await;
                    drop(guard);
                }
            }
        }
    }

    /// Commit `batch` in one transaction (retrying it whole while the database is busy)
    /// and answer every write in it.
    async fn commit_batch(&self, batch: Vec<Pending>) {
        let writes: Vec<&Write> = batch.iter().map(|p| &p.write).collect();
        let writes = writes.as_slice();
        match retrying(self, move || self.try_batch(writes)).await {
            Ok(outcomes) => {
                for (pending, outcome) in batch.into_iter().zip(outcomes) {
                    let _ = pending.reply.send(outcome);
                }
            }
            Err(error) => {
                let message = error.to_string();
                let mut first = Some(error);
                for pending in batch {
                    let e = first.take().unwrap_or_else(|| {
                        self.db(sqlx::Error::Protocol(format!(
                            "the group commit carrying this write failed: {message}"
                        )))
                    });
                    let _ = pending.reply.send(Err(e));
                }
            }
        }
    }

    /// One transaction for `writes`, each in its own savepoint: a write that is refused or
    /// fails leaves nothing behind, the others commit together. A transient failure fails
    /// the whole transaction, to be retried.
    async fn try_batch(
        &self,
        writes: &[&Write],
    ) -> Result<Vec<Result<Outcome, StoreError>>, StoreError> {
        let mut tx = self.begin_write().await?;
        let mut outcomes = Vec::with_capacity(writes.len());
        for write in writes {
            sqlx::query("SAVEPOINT write")
                .execute(&mut *tx)
                .await
                .map_err(|e| self.db(e))?;
            let outcome = match write {
                Write::Redeem {
                    hash,
                    member,
                    replace,
                    now,
                } => self
                    .redeem_in(&mut tx, hash, member, *replace, *now)
                    .await
                    .map(Outcome::Redeemed),
                Write::Create { ticket, now } => self
                    .create_in(&mut tx, ticket, *now)
                    .await
                    .map(|()| Outcome::Created),
            };
            if let Err(StoreError::Database { source, .. }) = &outcome
                && DB::is_transient(source)
            {
                return Err(outcome.err().unwrap_or_else(|| self.corrupt(String::new())));
            }
            let keep = matches!(
                outcome,
                Ok(Outcome::Created | Outcome::Redeemed(Attempt::Done(_)))
            );
            if !keep {
                sqlx::query("ROLLBACK TO SAVEPOINT write")
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| self.db(e))?;
            }
            sqlx::query("RELEASE SAVEPOINT write")
                .execute(&mut *tx)
                .await
                .map_err(|e| self.db(e))?;
            outcomes.push(outcome);
        }
        tx.commit().await.map_err(|e| self.db(e))?;
        Ok(outcomes)
    }

    /// One redemption: recognize a retry, or take a use and add the member (merging with
    /// or replacing its attributes if it is one already), or find out why no use could be
    /// taken. Nothing is written unless a use was taken.
    async fn redeem_in(
        &self,
        tx: &mut DB::Connection,
        hash: &str,
        member: &Identifier,
        replace: bool,
        now: u64,
    ) -> Result<Attempt<Redeemed, RedeemError>, StoreError> {
        self.lock_membership(&mut *tx).await?;
        let actor = member.to_string();
        // A retry first, before the ticket is looked at: the first answer may have been
        // lost, and the ticket may since have expired, been used up or revoked.
        let earlier = sqlx::query(EARLIER_REDEMPTION)
            .bind(hash.to_owned())
            .bind(actor.clone())
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| self.db(e))?;
        if let Some(row) = earlier {
            let ticket_id: String =
                self.column(&row, "ticket_id", || "redeemed ticket id".to_owned())?;
            if let Some(current) = self.member_in(&mut *tx, member).await? {
                return Ok(Attempt::Done(Redeemed {
                    ticket_id,
                    before: Some(current.attributes.clone()),
                    attributes: current.attributes,
                    retried: true,
                    changed_at: current.changed_at,
                }));
            }
        }
        let taken = sqlx::query(TAKE_USE)
            .bind(hash.to_owned())
            .bind(sql_time(now))
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| self.db(e))?;
        let Some(row) = taken else {
            // Nothing was written; the caller rolls back to its savepoint all the same.
            return self.refusal(&mut *tx, hash, now).await;
        };
        let id: String = self.column(&row, "id", || "ticket id".to_owned())?;
        let what = |part: &str| format!("{part} of ticket {id:?}");
        // A corrupt ticket fails here, before anything is written, and the use is given
        // back by the rollback.
        let granted = self.attributes(&row, "attributes", || what("attributes"))?;
        let uses_left: u32 = self.integer(&row, "uses_left", || what("uses left"))?;
        let added_by = self.identifier(&row, "created_by", || what("creator"))?;
        let before = self.member_in(&mut *tx, member).await?;
        let attributes = match &before {
            // The ticket's values win a clash.
            Some(before) if !replace => {
                let mut merged = before.attributes.clone();
                merged.extend(granted);
                merged
            }
            _ => granted,
        };
        let enrolled = Member {
            identifier: *member,
            attributes,
            added_at: now,
            added_by,
            via: Member::via_ticket(&id),
            // A ticket grants the authority's default lifetime, lifting any earlier limit.
            credential_ttl: None,
            changed_at: None,
        };
        let detail = format!("member={member} uses_left={uses_left}");
        self.audit(
            &mut *tx,
            now,
            &actor,
            AuditEvent::TICKET_REDEEMED,
            &id,
            &detail,
        )
        .await?;
        let changed_at = self
            .write_member(&mut *tx, &enrolled, before.as_ref(), &actor, now)
            .await?;
        sqlx::query(RECORD_REDEMPTION)
            .bind(hash.to_owned())
            .bind(actor.clone())
            .bind(id.clone())
            .bind(sql_time(now))
            .execute(&mut *tx)
            .await
            .map_err(|e| self.db(e))?;
        Ok(Attempt::Done(Redeemed {
            ticket_id: id,
            attributes: enrolled.attributes,
            before: before.map(|b| b.attributes),
            retried: false,
            changed_at,
        }))
    }

    /// Why the ticket with code hash `hash` could not be redeemed at `now`.
    async fn refusal(
        &self,
        conn: &mut DB::Connection,
        hash: &str,
        now: u64,
    ) -> Result<Attempt<Redeemed, RedeemError>, StoreError> {
        let row = sqlx::query(
            "SELECT id, usage_count, uses_left, expires_at, revoked_at FROM tickets \
             WHERE code_hash = $1",
        )
        .bind(hash.to_owned())
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| self.db(e))?;
        let Some(row) = row else {
            return Ok(Attempt::Refused(RedeemError::Unknown));
        };
        let id: String = self.column(&row, "id", || "ticket id".to_owned())?;
        let what = |part: &str| format!("{part} of ticket {id:?}");
        // Revocation is an admin's explicit decision, so it is the reason given first.
        if let Some(at) = self.optional_time(&row, "revoked_at", || what("revocation time"))? {
            return Ok(Attempt::Refused(RedeemError::Revoked { at }));
        }
        let expires_at = self.time(&row, "expires_at", || what("expiry"))?;
        if expires_at <= now {
            return Ok(Attempt::Refused(RedeemError::Expired { expires_at }));
        }
        if self.integer::<_, u32>(&row, "uses_left", || what("uses left"))? == 0 {
            let usage_count = self.integer(&row, "usage_count", || what("usage count"))?;
            return Ok(Attempt::Refused(RedeemError::UsedUp { usage_count }));
        }
        Ok(Attempt::Inconclusive)
    }

    /// Insert or replace `member`, and audit it as done by `actor` at `now`; if it
    /// replaces a member with other attributes, append a [`FeedKind::Changed`] entry.
    /// Returns the member's `changed_at`.
    pub(super) async fn upsert_member(
        &self,
        conn: &mut DB::Connection,
        member: &Member,
        actor: &str,
        now: u64,
    ) -> Result<Option<u64>, StoreError> {
        self.lock_membership(&mut *conn).await?;
        let before = self.member_in(&mut *conn, &member.identifier).await?;
        self.write_member(conn, member, before.as_ref(), actor, now)
            .await
    }

    /// Insert or replace `member`, which was `before` (read in this transaction, after
    /// [`Db::lock_membership`]), and audit it as done by `actor` at `now`; if its
    /// attributes change, append a [`FeedKind::Changed`] entry first, so that the member's
    /// `changed_at` is the entry's time. Returns the member's `changed_at`.
    async fn write_member(
        &self,
        conn: &mut DB::Connection,
        member: &Member,
        before: Option<&Member>,
        actor: &str,
        now: u64,
    ) -> Result<Option<u64>, StoreError> {
        let identifier = member.identifier.to_string();
        if before.is_some_and(|before| before.attributes != member.attributes) {
            self.append_feed(&mut *conn, &identifier, now, FeedKind::Changed, actor)
                .await?;
        }
        let attributes = attributes_json(&member.attributes);
        let row = sqlx::query(&format!("{UPSERT_MEMBER} RETURNING changed_at"))
            .bind(identifier.clone())
            .bind(attributes.clone())
            .bind(sql_time(member.added_at))
            .bind(member.added_by.to_string())
            .bind(member.via.clone())
            .bind(member.credential_ttl.map(sql_time))
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| self.db(e))?;
        let changed_at = self.optional_time(&row, "changed_at", || {
            format!("change time of member {identifier}")
        })?;
        let mut detail = format!("via={} attributes={attributes}", member.via);
        if let Some(before) = before {
            detail.push_str(&format!(" before={}", attributes_json(&before.attributes)));
        }
        if let Some(ttl) = member.credential_ttl {
            detail.push_str(&format!(" credential_ttl={ttl}"));
        }
        self.audit(
            conn,
            now,
            actor,
            AuditEvent::MEMBER_ADDED,
            &identifier,
            &detail,
        )
        .await?;
        Ok(changed_at)
    }

    /// The member `identifier` as this transaction sees it.
    async fn member_in(
        &self,
        conn: &mut DB::Connection,
        identifier: &Identifier,
    ) -> Result<Option<Member>, StoreError> {
        let sql = format!("SELECT {MEMBER_COLUMNS} FROM members WHERE identifier = $1");
        let row = sqlx::query(&sql)
            .bind(identifier.to_string())
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| self.db(e))?;
        row.map(|row| self.member_row(&row)).transpose()
    }

    /// Append a feed entry about `subject`, in the caller's transaction (which has taken
    /// [`Db::lock_membership`]), and stamp the member's `changed_at` if it is one. Returns
    /// the entry's time: `now`, or a second past the subject's previous entry if that is
    /// later. Every credential issued after the previous entry is dated after it (see
    /// `Member::changed_at`), perhaps in this very second, and this entry must void it too.
    async fn append_feed(
        &self,
        conn: &mut DB::Connection,
        subject: &str,
        now: u64,
        kind: FeedKind,
        actor: &str,
    ) -> Result<u64, StoreError> {
        let previous = sqlx::query(
            "SELECT at FROM membership_feed WHERE subject = $1 ORDER BY seq DESC LIMIT 1",
        )
        .bind(subject.to_owned())
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| self.db(e))?;
        let at = match previous {
            Some(row) => {
                let previous = self.time(&row, "at", || format!("feed time of {subject}"))?;
                now.max(previous.saturating_add(1))
            }
            None => now,
        };
        sqlx::query(INSERT_FEED)
            .bind(subject.to_owned())
            .bind(sql_time(at))
            .bind(kind.as_str().to_owned())
            .bind(actor.to_owned())
            .execute(&mut *conn)
            .await
            .map_err(|e| self.db(e))?;
        sqlx::query("UPDATE members SET changed_at = $2 WHERE identifier = $1")
            .bind(subject.to_owned())
            .bind(sql_time(at))
            .execute(&mut *conn)
            .await
            .map_err(|e| self.db(e))?;
        Ok(at)
    }

    /// Make this transaction's membership changes take turns with other transactions'
    /// ([`Dialect::LOCK_MEMBERSHIP`]).
    pub(super) async fn lock_membership(
        &self,
        conn: &mut DB::Connection,
    ) -> Result<(), StoreError> {
        if let Some(lock) = DB::LOCK_MEMBERSHIP {
            sqlx::query(lock)
                .execute(conn)
                .await
                .map_err(|e| self.db(e))?;
        }
        Ok(())
    }

    /// Append an audit event, in the caller's transaction.
    pub(super) async fn audit(
        &self,
        conn: &mut DB::Connection,
        at: u64,
        actor: &str,
        action: &str,
        subject: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(INSERT_AUDIT)
            .bind(sql_time(at))
            .bind(actor.to_owned())
            .bind(action.to_owned())
            .bind(subject.to_owned())
            .bind(detail.to_owned())
            .execute(conn)
            .await
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    /// A transaction that will write: on SQLite it holds the write lock from the start, so
    /// that concurrent writers queue instead of failing half-way.
    pub(super) async fn begin_write(&self) -> Result<sqlx::Transaction<'static, DB>, StoreError> {
        self.pool
            .begin_with(DB::BEGIN_WRITE)
            .await
            .map_err(|e| self.db(e))
    }

    /// Run `attempt` (`what`, for the log) until it is done or refused, at most
    /// [`SETTLE_ATTEMPTS`] times; past that, the row (`inconsistent` names it) is corrupt.
    pub(super) async fn settle<T, E, F, Fut>(
        &self,
        what: &str,
        mut attempt: F,
        inconsistent: impl FnOnce() -> String,
    ) -> Result<T, E>
    where
        E: From<StoreError>,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Attempt<T, E>, StoreError>>,
    {
        for _ in 0..SETTLE_ATTEMPTS {
            match attempt().await? {
                Attempt::Done(done) => return Ok(done),
                Attempt::Refused(refusal) => return Err(refusal),
                Attempt::Inconclusive => {
                    tracing::debug!(store = %self.location, what, "inconclusive; trying again");
                }
            }
        }
        Err(self.corrupt(inconsistent()).into())
    }
}

/// The condition of a keyset page: rows whose (`time`, `key`) comes after (`$1`, `$2`).
/// Spelled out rather than as a row-value comparison, which both databases read alike.
pub(super) fn after_key(time: &str, key: &str) -> String {
    format!("({time} > $1 OR ({time} = $1 AND {key} > $2))")
}

/// Decoding rows. A value that does not decode means the row was not written by the store.
impl<DB> Db<DB>
where
    DB: Dialect,
    for<'q> String: Decode<'q, DB> + Type<DB>,
    for<'q> i64: Decode<'q, DB> + Type<DB>,
    for<'a> &'a str: ColumnIndex<DB::Row>,
{
    /// A `tickets` row read with [`TICKET_COLUMNS`].
    fn ticket_record(&self, row: &DB::Row) -> Result<TicketRecord, StoreError> {
        let id: String = self.column(row, "id", || "ticket id".to_owned())?;
        let what = |part: &str| format!("{part} of ticket {id:?}");
        Ok(TicketRecord {
            attributes: self.attributes(row, "attributes", || what("attributes"))?,
            usage_count: self.integer(row, "usage_count", || what("usage count"))?,
            uses_left: self.integer(row, "uses_left", || what("uses left"))?,
            created_at: self.time(row, "created_at", || what("creation time"))?,
            expires_at: self.time(row, "expires_at", || what("expiry"))?,
            created_by: self.identifier(row, "created_by", || what("creator"))?,
            revoked_at: self.optional_time(row, "revoked_at", || what("revocation time"))?,
            id,
        })
    }

    /// A `members` row read with [`MEMBER_COLUMNS`].
    fn member_row(&self, row: &DB::Row) -> Result<Member, StoreError> {
        let identifier = self.identifier(row, "identifier", || "member identifier".to_owned())?;
        let what = |part: &str| format!("{part} of member {identifier}");
        Ok(Member {
            attributes: self.attributes(row, "attributes", || what("attributes"))?,
            added_at: self.time(row, "added_at", || what("time added"))?,
            added_by: self.identifier(row, "added_by", || what("adder"))?,
            via: self.column(row, "via", || what("origin"))?,
            credential_ttl: self
                .optional_time(row, "credential_ttl", || what("credential lifetime"))?,
            changed_at: self.optional_time(row, "changed_at", || what("change time"))?,
            identifier,
        })
    }

    /// A `membership_feed` row.
    fn feed_entry(&self, row: &DB::Row) -> Result<FeedEntry, StoreError> {
        let what = || "membership feed entry".to_owned();
        let kind: String = self.column(row, "kind", what)?;
        let kind = FeedKind::parse(&kind)
            .ok_or_else(|| self.corrupt(format!("kind {kind:?} of a membership feed entry")))?;
        Ok(FeedEntry {
            seq: self.integer(row, "seq", what)?,
            subject: self.identifier(row, "subject", what)?,
            at: self.time(row, "at", what)?,
            kind,
            actor: self.identifier(row, "actor", what)?,
        })
    }

    /// An `audit` row.
    fn audit_event(&self, row: &DB::Row) -> Result<AuditEvent, StoreError> {
        let what = || "audit event".to_owned();
        Ok(AuditEvent {
            at: self.time(row, "at", what)?,
            actor: self.column(row, "actor", what)?,
            action: self.column(row, "action", what)?,
            subject: self.column(row, "subject", what)?,
            detail: self.column(row, "detail", what)?,
        })
    }

    /// Attributes: a JSON object of strings.
    pub(super) fn attributes(
        &self,
        row: &DB::Row,
        column: &str,
        what: impl FnOnce() -> String + Copy,
    ) -> Result<BTreeMap<String, String>, StoreError> {
        let text: String = self.column(row, column, what)?;
        self.attributes_of(&text, what)
    }

    /// Attributes, or NULL.
    pub(super) fn optional_attributes(
        &self,
        row: &DB::Row,
        column: &str,
        what: impl FnOnce() -> String + Copy,
    ) -> Result<Option<BTreeMap<String, String>>, StoreError> {
        let text: Option<String> = self.column(row, column, what)?;
        text.map(|text| self.attributes_of(&text, what)).transpose()
    }

    fn attributes_of(
        &self,
        text: &str,
        what: impl FnOnce() -> String,
    ) -> Result<BTreeMap<String, String>, StoreError> {
        serde_json::from_str(text)
            .map_err(|e| self.corrupt_by(format!("{} (not a JSON object of strings)", what()), e))
    }
}

/// Attributes as stored: compact JSON with sorted keys, so equal attributes are equal text.
pub(super) fn attributes_json(attributes: &BTreeMap<String, String>) -> String {
    let object: serde_json::Map<String, serde_json::Value> = attributes
        .iter()
        .map(|(key, value)| (key.clone(), serde_json::Value::String(value.clone())))
        .collect();
    serde_json::Value::Object(object).to_string()
}

/// What a user can do about a failed migration: only a store that a newer kith prepared is
/// fixed by another version; a role without the right to create tables needs a grant.
fn migrate_hint(error: &MigrateError) -> &'static str {
    let denied = |e: &sqlx::Error| matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("42501"));
    match error {
        MigrateError::VersionMissing(_) | MigrateError::VersionTooNew(..) => {
            "a newer kith prepared it: run that version"
        }
        MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _) if denied(e) => {
            "the database role may not create tables there: give it a database it owns, or grant it CREATE on the schema"
        }
        _ => "the database's answer follows",
    }
}
