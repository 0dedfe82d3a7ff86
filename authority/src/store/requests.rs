//! Join requests and auto-approval rules: the rest of the store's operations, on the same
//! [`Dialect`]-generic [`Db`] as `ops` and in the same way: every write is one transaction,
//! retried whole on transient contention, with its audit events inside it.
//!
//! Filing is the one write that counts before it inserts (the caps on pending requests), so
//! filings take turns: on SQLite `BEGIN IMMEDIATE` makes every writer do so, on PostgreSQL
//! the transaction first takes [`Dialect::LOCK_JOIN_REQUESTS`]. Deciding needs no such lock:
//! its one `UPDATE … WHERE state = 'pending' AND code = …` decides a request at most once,
//! and only as the admin saw it.

use kith_identity::Identifier;
use kith_identity::sqlite::{SqlStore, retrying};
use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Transaction, Type};

use super::PageKey;
use super::ops::{Attempt, Db, Dialect, after_key, attributes_json, sql_time};
use super::{
    AuditEvent, BulkDenied, DecideError, Decision, FileError, Filed, JoinLimits, JoinRecord,
    JoinState, Member, NewJoinRequest, RuleRecord, StoreError,
};

/// The columns of `join_requests` that [`Db::join_record`] reads.
const JOIN_COLUMNS: &str = "id, requester, source, attributes, lifetime, note, code, \
     created_at, expires_at, state, decided_at, decided_by, reason, granted_attributes, \
     granted_lifetime";

/// The columns of `auto_approve_rules` that [`Db::rule_record`] reads.
const RULE_COLUMNS: &str =
    "id, netblock, attributes, max_credential_lifetime, created_at, created_by, expires_at";

/// Marks every pending request past its expiry (`$1` is now).
const EXPIRE: &str = "UPDATE join_requests SET state = 'expired', decided_at = $1 \
     WHERE state = 'pending' AND expires_at <= $1";

/// 50 ids: the most a bulk denial's audit row names (with how many more there were), so
/// that a page of the audit log stays well inside one channel message however many were
/// denied.
const MAX_AUDITED_IDS: usize = 50;

/// How one filing attempt ended. A refused one committed only its expiry marks.
type FileAttempt = Attempt<Filed, FileError>;

/// How one decision attempt ended. A refused one wrote nothing.
type DecideAttempt = Attempt<JoinRecord, DecideError>;

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
    pub(super) async fn file_join_request(
        &self,
        request: &NewJoinRequest,
        code_for: &(dyn Fn(&str) -> String + Sync),
        limits: JoinLimits,
        now: u64,
    ) -> Result<Filed, FileError> {
        self.settle(
            "join request filing",
            move || retrying(self, move || self.try_file(request, code_for, limits, now)),
            || {
                format!(
                    "join request of {} (filing it conflicts with a request that cannot be found)",
                    request.requester
                )
            },
        )
        .await
    }

    pub(super) async fn join_request(&self, id: &str) -> Result<Option<JoinRecord>, StoreError> {
        let sql = format!("SELECT {JOIN_COLUMNS} FROM join_requests WHERE id = $1");
        let sql = sql.as_str();
        retrying(self, move || async move {
            let row = sqlx::query(sql)
                .bind(id.to_owned())
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| self.db(e))?;
            row.map(|row| self.join_record(&row)).transpose()
        })
        .await
    }

    pub(super) async fn join_requests_page(
        &self,
        all: bool,
        now: u64,
        after: Option<&PageKey>,
        limit: u32,
    ) -> Result<Vec<JoinRecord>, StoreError> {
        let (pending, now) = if all {
            ("", None)
        } else {
            (
                "state = 'pending' AND expires_at > $4 AND ",
                Some(sql_time(now)),
            )
        };
        let sql = format!(
            "SELECT {JOIN_COLUMNS} FROM join_requests WHERE {pending}{} \
             ORDER BY created_at, id LIMIT $3",
            after_key("created_at", "id")
        );
        self.keyset_page(&sql, after, limit, now, Self::join_record)
            .await
    }

    pub(super) async fn join_requests(
        &self,
        all: bool,
        now: u64,
    ) -> Result<Vec<JoinRecord>, StoreError> {
        let sql = if all {
            format!("SELECT {JOIN_COLUMNS} FROM join_requests ORDER BY created_at, id")
        } else {
            format!(
                "SELECT {JOIN_COLUMNS} FROM join_requests \
                 WHERE state = 'pending' AND expires_at > $1 ORDER BY created_at, id"
            )
        };
        let sql = sql.as_str();
        retrying(self, move || async move {
            let query = sqlx::query(sql);
            let query = if all {
                query
            } else {
                query.bind(sql_time(now))
            };
            let rows = query.fetch_all(&self.pool).await.map_err(|e| self.db(e))?;
            rows.iter().map(|row| self.join_record(row)).collect()
        })
        .await
    }

    pub(super) async fn decide_join_request(
        &self,
        id: &str,
        code: &str,
        decision: &Decision,
        actor: &Identifier,
        decided_by: &str,
        now: u64,
    ) -> Result<JoinRecord, DecideError> {
        self.settle(
            "join request decision",
            move || {
                retrying(self, move || {
                    self.try_decide(id, code, decision, actor, decided_by, now)
                })
            },
            || {
                format!(
                    "join request {id:?} (it is pending, unexpired and has this code, yet it \
                     cannot be decided)"
                )
            },
        )
        .await
    }

    pub(super) async fn deny_join_requests(
        &self,
        select: &(dyn Fn(&JoinRecord) -> bool + Sync),
        selector: &str,
        reason: &str,
        limit: usize,
        actor: &Identifier,
        now: u64,
    ) -> Result<BulkDenied, StoreError> {
        let pending = format!(
            "SELECT {JOIN_COLUMNS} FROM join_requests \
             WHERE state = 'pending' AND expires_at > $1 ORDER BY created_at, id"
        );
        let deny = format!(
            "UPDATE join_requests SET state = 'denied', decided_at = $1, decided_by = $2, \
             reason = $3 WHERE id = $4 AND state = 'pending' AND expires_at > $1 \
             RETURNING {JOIN_COLUMNS}"
        );
        let actor = actor.to_string();
        let (pending, deny, actor) = (pending.as_str(), deny.as_str(), actor.as_str());
        retrying(self, move || async move {
            let mut tx = self.begin_write().await?;
            self.lock_join_requests(&mut tx).await?;
            self.expire_in(&mut tx, now).await?;
            let rows = sqlx::query(pending)
                .bind(sql_time(now))
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| self.db(e))?;
            let mut picked = Vec::new();
            let mut more = false;
            for row in &rows {
                let record = self.join_record(row)?;
                if select(&record) {
                    if picked.len() < limit {
                        picked.push(record.id);
                    } else {
                        more = true;
                        break;
                    }
                }
            }
            let mut denied = Vec::with_capacity(picked.len());
            for id in picked {
                let row = sqlx::query(deny)
                    .bind(sql_time(now))
                    .bind(actor.to_owned())
                    .bind(reason.to_owned())
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|e| self.db(e))?;
                if let Some(row) = row {
                    denied.push(self.join_record(&row)?);
                }
            }
            if !denied.is_empty() {
                let named: Vec<&str> = denied
                    .iter()
                    .take(MAX_AUDITED_IDS)
                    .map(|r| r.id.as_str())
                    .collect();
                let unnamed = denied.len().saturating_sub(named.len());
                let mut detail = format!(
                    "count={} reason={reason:?} ids={}",
                    denied.len(),
                    named.join(",")
                );
                if unnamed > 0 {
                    detail.push_str(&format!(" (and {unnamed} more)"));
                }
                self.audit(
                    &mut tx,
                    now,
                    actor,
                    AuditEvent::REQUESTS_BULK_DENIED,
                    selector,
                    &detail,
                )
                .await?;
            }
            tx.commit().await.map_err(|e| self.db(e))?;
            Ok(BulkDenied { denied, more })
        })
        .await
    }

    pub(super) async fn expire_join_requests(
        &self,
        now: u64,
    ) -> Result<Vec<JoinRecord>, StoreError> {
        retrying(self, move || async move {
            let mut tx = self.begin_write().await?;
            self.lock_join_requests(&mut tx).await?;
            let expired = self.expire_in(&mut tx, now).await?;
            tx.commit().await.map_err(|e| self.db(e))?;
            Ok(expired)
        })
        .await
    }

    pub(super) async fn add_rule(&self, rule: &RuleRecord, now: u64) -> Result<(), StoreError> {
        let attributes = attributes_json(&rule.attributes);
        let created_by = rule.created_by.to_string();
        let detail = format!(
            "netblock={} attributes={attributes} max_credential_lifetime={} expires_at={}",
            rule.netblock, rule.max_credential_lifetime, rule.expires_at
        );
        let (attributes, created_by, detail) =
            (attributes.as_str(), created_by.as_str(), detail.as_str());
        retrying(self, move || async move {
            let mut tx = self.begin_write().await?;
            sqlx::query(
                "INSERT INTO auto_approve_rules (id, netblock, attributes, \
                 max_credential_lifetime, created_at, created_by, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(rule.id.clone())
            .bind(rule.netblock.clone())
            .bind(attributes.to_owned())
            .bind(sql_time(rule.max_credential_lifetime))
            .bind(sql_time(rule.created_at))
            .bind(created_by.to_owned())
            .bind(sql_time(rule.expires_at))
            .execute(&mut *tx)
            .await
            .map_err(|e| self.db(e))?;
            self.audit(
                &mut tx,
                now,
                created_by,
                AuditEvent::RULE_ADDED,
                &rule.id,
                detail,
            )
            .await?;
            tx.commit().await.map_err(|e| self.db(e))
        })
        .await
    }

    pub(super) async fn rules(&self, now: u64) -> Result<Vec<RuleRecord>, StoreError> {
        let sql = format!(
            "SELECT {RULE_COLUMNS} FROM auto_approve_rules WHERE expires_at > $1 \
             ORDER BY created_at, id"
        );
        let sql = sql.as_str();
        retrying(self, move || async move {
            let rows = sqlx::query(sql)
                .bind(sql_time(now))
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.db(e))?;
            rows.iter().map(|row| self.rule_record(row)).collect()
        })
        .await
    }

    pub(super) async fn delete_rule(
        &self,
        id: &str,
        actor: &Identifier,
        now: u64,
    ) -> Result<Option<RuleRecord>, StoreError> {
        let sql = format!("DELETE FROM auto_approve_rules WHERE id = $1 RETURNING {RULE_COLUMNS}");
        let actor = actor.to_string();
        let (sql, actor) = (sql.as_str(), actor.as_str());
        retrying(self, move || async move {
            let mut tx = self.begin_write().await?;
            let row = sqlx::query(sql)
                .bind(id.to_owned())
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| self.db(e))?;
            let Some(row) = row else {
                return Ok(None);
            };
            let deleted = self.rule_record(&row)?;
            let detail = format!(
                "netblock={} attributes={}",
                deleted.netblock,
                attributes_json(&deleted.attributes)
            );
            self.audit(&mut tx, now, actor, AuditEvent::RULE_DELETED, id, &detail)
                .await?;
            tx.commit().await.map_err(|e| self.db(e))?;
            Ok(Some(deleted))
        })
        .await
    }

    // The parts of the transactions above.

    /// One filing transaction: expire, then file again or check the caps and insert.
    async fn try_file(
        &self,
        request: &NewJoinRequest,
        code_for: &(dyn Fn(&str) -> String + Sync),
        limits: JoinLimits,
        now: u64,
    ) -> Result<FileAttempt, StoreError> {
        let mut tx = self.begin_write().await?;
        self.lock_join_requests(&mut tx).await?;
        // First, so that expired requests neither count against the caps nor are filed
        // again in place of a new request.
        self.expire_in(&mut tx, now).await?;
        if let Some(record) = self.refile_in(&mut tx, request, code_for).await? {
            return self.filed(tx, record, now, true).await;
        }

        let from_source = self.pending(&mut tx, Some(&request.source), now).await?;
        let refusal = if from_source >= limits.per_source {
            Some(FileError::PerSource {
                source_address: request.source.clone(),
                pending: from_source,
                max: limits.per_source,
            })
        } else {
            let total = self.pending(&mut tx, None, now).await?;
            (total >= limits.total).then_some(FileError::Total {
                pending: total,
                max: limits.total,
            })
        };
        if let Some(refusal) = refusal {
            // What was marked expired stays so.
            tx.commit().await.map_err(|e| self.db(e))?;
            return Ok(Attempt::Refused(refusal));
        }

        // DO NOTHING rather than an error on a conflict, so that the transaction goes on
        // (a failed statement aborts a PostgreSQL transaction) and can tell which conflict
        // it was.
        let insert = format!(
            "INSERT INTO join_requests (id, requester, source, attributes, lifetime, note, \
             code, created_at, expires_at, state) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending') \
             ON CONFLICT DO NOTHING RETURNING {JOIN_COLUMNS}"
        );
        let inserted = sqlx::query(&insert)
            .bind(request.id.clone())
            .bind(request.requester.to_string())
            .bind(request.source.clone())
            .bind(attributes_json(&request.attributes))
            .bind(sql_time(request.lifetime))
            .bind(request.note.clone())
            .bind(code_for(&request.id))
            .bind(sql_time(now))
            .bind(sql_time(request.expires_at))
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| self.db(e))?;
        if let Some(row) = inserted {
            let record = self.join_record(&row)?;
            return self.filed(tx, record, now, false).await;
        }

        // A conflict. With filings taking turns the requester's own pending request cannot
        // appear meanwhile, but should it (a filing that did not take turns), this filing
        // updates it like any refiling instead of failing.
        if let Some(record) = self.refile_in(&mut tx, request, code_for).await? {
            return self.filed(tx, record, now, true).await;
        }
        let taken = sqlx::query("SELECT id FROM join_requests WHERE id = $1")
            .bind(request.id.clone())
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| self.db(e))?;
        if taken.is_some() {
            tx.commit().await.map_err(|e| self.db(e))?;
            return Ok(Attempt::Refused(FileError::IdTaken {
                id: request.id.clone(),
            }));
        }
        tx.rollback().await.map_err(|e| self.db(e))?;
        Ok(Attempt::Inconclusive)
    }

    /// Update the requester's pending request with `request` (and the code for its id), if
    /// it has one; in the caller's transaction.
    async fn refile_in(
        &self,
        conn: &mut DB::Connection,
        request: &NewJoinRequest,
        code_for: &(dyn Fn(&str) -> String + Sync),
    ) -> Result<Option<JoinRecord>, StoreError> {
        let requester = request.requester.to_string();
        let pending =
            sqlx::query("SELECT id FROM join_requests WHERE requester = $1 AND state = 'pending'")
                .bind(requester.clone())
                .fetch_optional(&mut *conn)
                .await
                .map_err(|e| self.db(e))?;
        let Some(row) = pending else {
            return Ok(None);
        };
        let id: String = self.column(&row, "id", || {
            format!("id of the pending join request of {requester}")
        })?;
        let update = format!(
            "UPDATE join_requests SET source = $1, attributes = $2, lifetime = $3, note = $4, \
             code = $5 WHERE id = $6 AND state = 'pending' RETURNING {JOIN_COLUMNS}"
        );
        let row = sqlx::query(&update)
            .bind(request.source.clone())
            .bind(attributes_json(&request.attributes))
            .bind(sql_time(request.lifetime))
            .bind(request.note.clone())
            .bind(code_for(&id))
            .bind(id.clone())
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| self.db(e))?;
        row.map(|row| self.join_record(&row)).transpose()
    }

    /// Audit `record` as filed and commit.
    async fn filed(
        &self,
        mut tx: Transaction<'static, DB>,
        record: JoinRecord,
        now: u64,
        refiled: bool,
    ) -> Result<FileAttempt, StoreError> {
        let detail = format!(
            "source={} attributes={} lifetime={} refiled={refiled}",
            record.source,
            attributes_json(&record.attributes),
            record.lifetime
        );
        self.audit(
            &mut tx,
            now,
            &record.requester.to_string(),
            AuditEvent::REQUEST_FILED,
            &record.id,
            &detail,
        )
        .await?;
        tx.commit().await.map_err(|e| self.db(e))?;
        Ok(Attempt::Done(Filed { record, refiled }))
    }

    /// How many requests are pending and unexpired at `now`: from `source`, or in all.
    async fn pending(
        &self,
        conn: &mut DB::Connection,
        source: Option<&str>,
        now: u64,
    ) -> Result<u32, StoreError> {
        let query = match source {
            Some(source) => sqlx::query(
                "SELECT COUNT(*) AS n FROM join_requests \
                 WHERE state = 'pending' AND expires_at > $1 AND source = $2",
            )
            .bind(sql_time(now))
            .bind(source.to_owned()),
            None => sqlx::query(
                "SELECT COUNT(*) AS n FROM join_requests \
                 WHERE state = 'pending' AND expires_at > $1",
            )
            .bind(sql_time(now)),
        };
        let row = query.fetch_one(conn).await.map_err(|e| self.db(e))?;
        let n: i64 = self.column(&row, "n", || "count of join requests".to_owned())?;
        // More than 4 billion pending is more than any cap.
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// Mark every pending request past its expiry at `now` expired and audit each, in the
    /// caller's transaction; returns them, oldest first.
    async fn expire_in(
        &self,
        conn: &mut DB::Connection,
        now: u64,
    ) -> Result<Vec<JoinRecord>, StoreError> {
        let sql = format!("{EXPIRE} RETURNING {JOIN_COLUMNS}");
        let rows = sqlx::query(&sql)
            .bind(sql_time(now))
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| self.db(e))?;
        let mut expired = rows
            .iter()
            .map(|row| self.join_record(row))
            .collect::<Result<Vec<_>, _>>()?;
        expired.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        for record in &expired {
            let detail = format!(
                "requester={} source={} expires_at={}",
                record.requester, record.source, record.expires_at
            );
            self.audit(
                &mut *conn,
                now,
                &record.requester.to_string(),
                AuditEvent::REQUEST_EXPIRED,
                &record.id,
                &detail,
            )
            .await?;
        }
        Ok(expired)
    }

    /// Make this transaction's filings and expiries take turns with other transactions'.
    async fn lock_join_requests(&self, conn: &mut DB::Connection) -> Result<(), StoreError> {
        if let Some(lock) = DB::LOCK_JOIN_REQUESTS {
            sqlx::query(lock)
                .execute(conn)
                .await
                .map_err(|e| self.db(e))?;
        }
        Ok(())
    }

    /// One decision transaction.
    async fn try_decide(
        &self,
        id: &str,
        code: &str,
        decision: &Decision,
        actor: &Identifier,
        decided_by: &str,
        now: u64,
    ) -> Result<DecideAttempt, StoreError> {
        // Each `UPDATE` decides only a request that is pending, unexpired (`$1` is now) and
        // still has the code the decider saw.
        let mut tx = self.begin_write().await?;
        let row = match decision {
            Decision::Approve {
                attributes,
                lifetime,
            } => {
                let sql = format!(
                    "UPDATE join_requests SET state = 'approved', decided_at = $1, \
                     decided_by = $2, granted_attributes = $3, granted_lifetime = $4 \
                     WHERE id = $5 AND code = $6 AND state = 'pending' AND expires_at > $1 \
                     RETURNING {JOIN_COLUMNS}"
                );
                sqlx::query(&sql)
                    .bind(sql_time(now))
                    .bind(decided_by.to_owned())
                    .bind(attributes_json(attributes))
                    .bind(sql_time(*lifetime))
                    .bind(id.to_owned())
                    .bind(code.to_owned())
                    .fetch_optional(&mut *tx)
                    .await
            }
            Decision::Deny { reason } => {
                let sql = format!(
                    "UPDATE join_requests SET state = 'denied', decided_at = $1, \
                     decided_by = $2, reason = $3 \
                     WHERE id = $4 AND code = $5 AND state = 'pending' AND expires_at > $1 \
                     RETURNING {JOIN_COLUMNS}"
                );
                sqlx::query(&sql)
                    .bind(sql_time(now))
                    .bind(decided_by.to_owned())
                    .bind(reason.clone())
                    .bind(id.to_owned())
                    .bind(code.to_owned())
                    .fetch_optional(&mut *tx)
                    .await
            }
        }
        .map_err(|e| self.db(e))?;
        let Some(row) = row else {
            let attempt = self.undecidable(&mut tx, id, code, now).await?;
            tx.rollback().await.map_err(|e| self.db(e))?;
            return Ok(attempt);
        };
        let record = self.join_record(&row)?;
        let actor_text = actor.to_string();
        let (action, detail) = match decision {
            Decision::Approve {
                attributes,
                lifetime,
            } => (
                AuditEvent::REQUEST_APPROVED,
                format!(
                    "requester={} attributes={} lifetime={lifetime} decided_by={decided_by:?}",
                    record.requester,
                    attributes_json(attributes)
                ),
            ),
            Decision::Deny { reason } => (
                AuditEvent::REQUEST_DENIED,
                format!(
                    "requester={} decided_by={decided_by:?} reason={reason:?}",
                    record.requester
                ),
            ),
        };
        self.audit(&mut tx, now, &actor_text, action, id, &detail)
            .await?;
        if let Decision::Approve {
            attributes,
            lifetime,
        } = decision
        {
            let member = Member {
                identifier: record.requester,
                attributes: attributes.clone(),
                added_at: now,
                added_by: *actor,
                via: Member::via_request(id),
                credential_ttl: Some(*lifetime),
                changed_at: None,
            };
            self.upsert_member(&mut tx, &member, &actor_text, now)
                .await?;
        }
        tx.commit().await.map_err(|e| self.db(e))?;
        Ok(Attempt::Done(record))
    }

    /// Why request `id` could not be decided with `code` at `now`.
    async fn undecidable(
        &self,
        conn: &mut DB::Connection,
        id: &str,
        code: &str,
        now: u64,
    ) -> Result<DecideAttempt, StoreError> {
        let row = sqlx::query("SELECT state, expires_at, code FROM join_requests WHERE id = $1")
            .bind(id.to_owned())
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| self.db(e))?;
        let Some(row) = row else {
            return Ok(Attempt::Refused(DecideError::NotFound));
        };
        let what = |part: &str| format!("{part} of join request {id:?}");
        let state = self.join_state(&row, "state", || what("state"))?;
        if state != JoinState::Pending {
            return Ok(Attempt::Refused(DecideError::Closed { state }));
        }
        let expires_at = self.time(&row, "expires_at", || what("expiry"))?;
        if expires_at <= now {
            return Ok(Attempt::Refused(DecideError::Expired { expires_at }));
        }
        let current: String = self.column(&row, "code", || what("code"))?;
        if current != code {
            return Ok(Attempt::Refused(DecideError::CodeChanged));
        }
        Ok(Attempt::Inconclusive)
    }

    // Decoding rows. A value that does not decode means the row was not written by the
    // store.

    /// A `join_requests` row read with [`JOIN_COLUMNS`].
    fn join_record(&self, row: &DB::Row) -> Result<JoinRecord, StoreError> {
        let id: String = self.column(row, "id", || "join request id".to_owned())?;
        let what = |part: &str| format!("{part} of join request {id:?}");
        Ok(JoinRecord {
            requester: self.identifier(row, "requester", || what("requester"))?,
            source: self.column(row, "source", || what("source"))?,
            attributes: self.attributes(row, "attributes", || what("attributes"))?,
            lifetime: self.time(row, "lifetime", || what("lifetime"))?,
            note: self.column(row, "note", || what("note"))?,
            code: self.column(row, "code", || what("code"))?,
            created_at: self.time(row, "created_at", || what("creation time"))?,
            expires_at: self.time(row, "expires_at", || what("expiry"))?,
            state: self.join_state(row, "state", || what("state"))?,
            decided_at: self.optional_time(row, "decided_at", || what("decision time"))?,
            decided_by: self.column(row, "decided_by", || what("decider"))?,
            reason: self.column(row, "reason", || what("reason"))?,
            granted_attributes: self
                .optional_attributes(row, "granted_attributes", || what("granted attributes"))?,
            granted_lifetime: self
                .optional_time(row, "granted_lifetime", || what("granted lifetime"))?,
            id,
        })
    }

    /// An `auto_approve_rules` row read with [`RULE_COLUMNS`].
    fn rule_record(&self, row: &DB::Row) -> Result<RuleRecord, StoreError> {
        let id: String = self.column(row, "id", || "auto-approval rule id".to_owned())?;
        let what = |part: &str| format!("{part} of auto-approval rule {id:?}");
        Ok(RuleRecord {
            netblock: self.column(row, "netblock", || what("netblock"))?,
            attributes: self.attributes(row, "attributes", || what("attributes"))?,
            max_credential_lifetime: self.time(row, "max_credential_lifetime", || {
                what("maximum credential lifetime")
            })?,
            created_at: self.time(row, "created_at", || what("creation time"))?,
            created_by: self.identifier(row, "created_by", || what("creator"))?,
            expires_at: self.time(row, "expires_at", || what("expiry"))?,
            id,
        })
    }

    /// A request's state: one of [`JoinState::as_str`]'s names.
    fn join_state(
        &self,
        row: &DB::Row,
        column: &str,
        what: impl FnOnce() -> String + Copy,
    ) -> Result<JoinState, StoreError> {
        let text: String = self.column(row, column, what)?;
        [
            JoinState::Pending,
            JoinState::Approved,
            JoinState::Denied,
            JoinState::Expired,
        ]
        .into_iter()
        .find(|state| state.as_str() == text)
        .ok_or_else(|| self.corrupt(format!("{} ({text:?} is not a state)", what())))
    }
}
