//! The membership store: the authority's persistent state (DESIGN §5) — enrollment tickets,
//! members and the audit log — in an embedded SQLite file (the default) or in a PostgreSQL
//! database that several authority processes may share.
//!
//! What it promises, on both databases alike (one implementation, in `ops`, runs the same
//! SQL on either; only opening, locking and retry rules differ, in `sqlite` and `postgres`):
//!
//! - Only SHA-256 of a ticket's one-time code is stored, never the code: the API does not
//!   even take the code.
//! - Redeeming a ticket is one atomic `UPDATE … WHERE uses_left > 0 AND expires_at > now AND
//!   revoked_at IS NULL`, in the transaction that also adds the member and its audit events.
//!   Under any concurrency, from any number of processes, a ticket with usage count N
//!   enrolls at most N identities.
//! - Every change (ticket created, revoked, redeemed; member added, deleted) appends an
//!   audit event in the same transaction, so the log never misses a committed change nor
//!   shows one that was rolled back.
//! - Every deletion of a member, and every change of a member's attributes, appends an entry
//!   to the membership feed in the same transaction ([`FeedEntry`]); on PostgreSQL such
//!   transactions take turns, so entries become visible in the order of their numbers.
//! - A redemption is recorded with its redeemer, so that a retry by the same identity (its
//!   answer was lost) succeeds again without taking another use.
//! - Transient contention (SQLite busy/locked; PostgreSQL serialization failures and
//!   deadlocks) is retried with a bounded backoff inside the store, then reported as
//!   [`StoreError::Busy`]; it never surfaces as a spurious failure or a hang.
//! - A row the store cannot decode is [`StoreError::Corrupt`], never a panic.
//! - A store is stamped with its project when it is created ([`ProjectStamp`]), and is opened
//!   afterwards only for that project: an authority refuses an empty, damaged or foreign
//!   store instead of beginning a new project in it, and a refusal changes nothing (`stamp`).
//!
//! What it does not do: decide who may call what (the services do), check ticket or member
//! attributes beyond storing them, or read the clock: every operation that depends on time
//! takes `now` in Unix seconds, so callers and tests control it.
//!
//! [`StoreError::Busy`]: crate::store::StoreError::Busy
//! [`StoreError::Corrupt`]: crate::store::StoreError::Corrupt

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use kith_identity::Identifier;
use sqlx::{Postgres, Sqlite};

mod ops;
mod postgres;
mod requests;
mod sqlite;
mod stamp;

pub use crate::error::{DecideError, FileError, RedeemError, StoreError};
pub use stamp::{ProjectStamp, StampOrigin, StoreOwner};

use ops::Db;
use stamp::Intent;

/// 64 characters: the longest ticket id. Ids are short handles (12 hex digits by default)
/// that admins type; the bound keeps them readable in lists and audit lines.
pub const MAX_TICKET_ID_LEN: usize = 64;

/// A ticket to store: everything but the one-time code, of which only the hash is kept.
#[derive(Clone, PartialEq, Eq)]
pub struct NewTicket {
    /// A short, non-secret handle for listing and revoking, chosen by the caller: 1 to
    /// [`MAX_TICKET_ID_LEN`] ASCII letters, digits, `-` or `_`.
    pub id: String,
    /// SHA-256 of the one-time code.
    pub code_hash: [u8; 32],
    /// The attributes a member enrolled with this ticket gets.
    pub attributes: BTreeMap<String, String>,
    /// How many identities the ticket may enroll (at least 1).
    pub usage_count: u32,
    /// Unix seconds from which the ticket is no longer accepted.
    pub expires_at: u64,
    /// The admin or enroller creating it.
    pub created_by: Identifier,
}

impl fmt::Debug for NewTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The hash cannot redeem anything, but it has no business in logs either.
        f.debug_struct("NewTicket")
            .field("id", &self.id)
            .field("attributes", &self.attributes)
            .field("usage_count", &self.usage_count)
            .field("expires_at", &self.expires_at)
            .field("created_by", &self.created_by)
            .finish_non_exhaustive()
    }
}

/// A stored ticket as `list_tickets` shows it: no code, no hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketRecord {
    /// The ticket's handle.
    pub id: String,
    /// What a member enrolled with it gets.
    pub attributes: BTreeMap<String, String>,
    /// How many identities it may enroll in all.
    pub usage_count: u32,
    /// How many more it may enroll.
    pub uses_left: u32,
    /// When it was created, Unix seconds.
    pub created_at: u64,
    /// From when it is no longer accepted, Unix seconds.
    pub expires_at: u64,
    /// Who created it.
    pub created_by: Identifier,
    /// When it was revoked, if it was.
    pub revoked_at: Option<u64>,
}

/// What a successful redemption enrolled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redeemed {
    /// The ticket redeemed.
    pub ticket_id: String,
    /// The attributes the member has now: the ticket's, added to (or, with `replace`,
    /// replacing) those it had if it was a member already.
    pub attributes: BTreeMap<String, String>,
    /// The attributes it had before, if it was a member already; `None` if it was not.
    pub before: Option<BTreeMap<String, String>>,
    /// Whether this was a retry of a redemption this identity had already made with this
    /// ticket (its answer was lost): nothing was written and no use was taken.
    pub retried: bool,
    /// The member's [`Member::changed_at`] after the redemption.
    pub changed_at: Option<u64>,
}

/// A member of the project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The member's identifier.
    pub identifier: Identifier,
    /// The attributes its credentials carry.
    pub attributes: BTreeMap<String, String>,
    /// When it became a member, Unix seconds.
    pub added_at: u64,
    /// On whose authority: the admin who added it, or the creator of the ticket it redeemed.
    pub added_by: Identifier,
    /// How: [`Member::VIA_ADMIN`], `ticket:<id>` ([`Member::via_ticket`]) or
    /// `request:<id>` ([`Member::via_request`]).
    pub via: String,
    /// The longest lifetime of the credentials it gets, seconds, if shorter than the
    /// authority's default (a join request approved for less).
    pub credential_ttl: Option<u64>,
    /// When the latest [`FeedEntry`] about this identifier was appended (a change of its
    /// attributes, or its deletion before it was added again), Unix seconds; `None` if there
    /// is none. Credentials issued to it must be newer: nodes void a credential created at
    /// or before a feed entry about its subject. Set by the store; ignored when adding.
    pub changed_at: Option<u64>,
}

/// A change of a member's attributes: the member before and after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberChange {
    /// As it was.
    pub before: Member,
    /// As it is now (the same as `before` if the update changed nothing).
    pub after: Member,
}

/// What a [`FeedEntry`] says happened to its subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedKind {
    /// The member was deleted: its credentials are void.
    Revoked,
    /// The member's attributes changed: its credentials issued before are void.
    Changed,
}

impl FeedKind {
    /// The name the `kind` column holds: `revoked` or `changed`.
    pub fn as_str(self) -> &'static str {
        match self {
            FeedKind::Revoked => "revoked",
            FeedKind::Changed => "changed",
        }
    }

    /// The kind a `kind` column names, if it is one.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "revoked" => Some(FeedKind::Revoked),
            "changed" => Some(FeedKind::Changed),
            _ => None,
        }
    }
}

/// One entry of the membership feed (DESIGN §5): a member deleted or changed, appended in
/// the transaction that made the change, numbered in the order the changes committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedEntry {
    /// Its position in the feed, from 1.
    pub seq: u64,
    /// The member it is about.
    pub subject: Identifier,
    /// When, Unix seconds.
    pub at: u64,
    /// What happened.
    pub kind: FeedKind,
    /// Who did it.
    pub actor: Identifier,
}

impl Member {
    /// `via` of a member an admin added directly.
    pub const VIA_ADMIN: &'static str = "admin";

    /// `via` of a member enrolled by redeeming ticket `ticket_id`.
    pub fn via_ticket(ticket_id: &str) -> String {
        format!("ticket:{ticket_id}")
    }

    /// `via` of a member admitted by approving join request `request_id`.
    pub fn via_request(request_id: &str) -> String {
        format!("request:{request_id}")
    }
}

/// What an authority's store holds, counted ([`MembershipStore::counts`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreCounts {
    /// Members.
    pub members: u64,
    /// Join requests by state (`pending`, `approved`, `denied`, `expired`).
    pub join_requests: Vec<(String, u64)>,
    /// Audit events by action (the `AuditEvent::*` names).
    pub audit_events: Vec<(String, u64)>,
}

/// One entry of the audit log. Never holds secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// When, Unix seconds.
    pub at: u64,
    /// Who did it: an identifier.
    pub actor: String,
    /// What was done: one of the `AuditEvent::*` action names.
    pub action: String,
    /// What it was done to: a ticket id or a member identifier.
    pub subject: String,
    /// The rest, as `key=value` pairs.
    pub detail: String,
}

impl AuditEvent {
    /// A ticket was created; the subject is its id.
    pub const TICKET_CREATED: &'static str = "ticket.created";
    /// A ticket was revoked; the subject is its id.
    pub const TICKET_REVOKED: &'static str = "ticket.revoked";
    /// A ticket was redeemed (the actor is the redeemer); the subject is its id.
    pub const TICKET_REDEEMED: &'static str = "ticket.redeemed";
    /// A member was added or replaced; the subject is its identifier.
    pub const MEMBER_ADDED: &'static str = "member.added";
    /// A member was deleted; the subject is its identifier.
    pub const MEMBER_DELETED: &'static str = "member.deleted";
    /// A member's attributes were updated; the subject is its identifier.
    pub const MEMBER_UPDATED: &'static str = "member.updated";
    /// A join request was filed (or filed again); the subject is its id.
    pub const REQUEST_FILED: &'static str = "request.filed";
    /// A join request was approved; the subject is its id.
    pub const REQUEST_APPROVED: &'static str = "request.approved";
    /// A join request was denied; the subject is its id.
    pub const REQUEST_DENIED: &'static str = "request.denied";
    /// A join request expired undecided; the subject is its id.
    pub const REQUEST_EXPIRED: &'static str = "request.expired";
    /// Many pending join requests were denied at once, by one decision; the subject is
    /// what picked them (a netblock, or `all`), the detail has the count, the reason and
    /// (the first of) their ids. Their own rows are not audited one by one.
    pub const REQUESTS_BULK_DENIED: &'static str = "request.bulk_denied";
    /// An auto-approval rule was added; the subject is its id.
    pub const RULE_ADDED: &'static str = "auto_approve.added";
    /// An auto-approval rule was deleted; the subject is its id.
    pub const RULE_DELETED: &'static str = "auto_approve.deleted";
    /// Too many wrong codes: an identity or a source address became throttled. The subject
    /// is the identifier or the address (IPv6: its /64), the actor the identity of the
    /// attempt that tipped it; the detail has the kind (`redeem`, `approve`) and the counts.
    /// Written by the services, not with a change: one row per guesser and episode.
    pub const GUESS_THROTTLED: &'static str = "guess.throttled";
    /// A throttled guesser went on failing: the counts since its previous row, at most one
    /// row a minute per guesser.
    pub const GUESS_CONTINUED: &'static str = "guess.continued";
}

/// A join request to file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJoinRequest {
    /// Its id, chosen by the caller (a short random handle); used only if the requester
    /// has no pending request.
    pub id: String,
    /// Who asks.
    pub requester: Identifier,
    /// The IP address it came from, or `unknown`.
    pub source: String,
    /// The attributes asked for.
    pub attributes: BTreeMap<String, String>,
    /// The credential lifetime asked for, seconds.
    pub lifetime: u64,
    /// The requester's note.
    pub note: String,
    /// When it expires if undecided, Unix seconds.
    pub expires_at: u64,
}

/// Where a stored join request stands: the `state` column. The services show it to peers as
/// the API's own `JoinState`; the two are kept apart so that the wire format and the
/// stored one change only on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinState {
    /// Waiting for a decision.
    Pending,
    /// Approved: the requester is a member.
    Approved,
    /// Denied.
    Denied,
    /// Marked expired undecided.
    Expired,
}

impl JoinState {
    /// The name the `state` column holds: `pending`, `approved`, `denied` or `expired`.
    pub fn as_str(self) -> &'static str {
        match self {
            JoinState::Pending => "pending",
            JoinState::Approved => "approved",
            JoinState::Denied => "denied",
            JoinState::Expired => "expired",
        }
    }
}

/// A stored join request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRecord {
    /// Its id.
    pub id: String,
    /// Who asks.
    pub requester: Identifier,
    /// The IP address it came from, or `unknown`.
    pub source: String,
    /// The attributes asked for.
    pub attributes: BTreeMap<String, String>,
    /// The credential lifetime asked for, seconds.
    pub lifetime: u64,
    /// The requester's note.
    pub note: String,
    /// Its verification code.
    pub code: String,
    /// When it was filed, Unix seconds.
    pub created_at: u64,
    /// When it expires if undecided, Unix seconds.
    pub expires_at: u64,
    /// Where it stands. A pending request past `expires_at` that no sweep has marked yet is
    /// still `Pending` here; [`JoinRecord::state_at`] tells.
    pub state: JoinState,
    /// When it was decided or marked expired.
    pub decided_at: Option<u64>,
    /// Who decided it.
    pub decided_by: Option<String>,
    /// Why it was denied.
    pub reason: Option<String>,
    /// The attributes granted, if approved.
    pub granted_attributes: Option<BTreeMap<String, String>>,
    /// The credential lifetime granted, seconds, if approved.
    pub granted_lifetime: Option<u64>,
}

impl JoinRecord {
    /// Where it stands at `now`: a pending request past its expiry is expired.
    pub fn state_at(&self, now: u64) -> JoinState {
        if self.state == JoinState::Pending && self.expires_at <= now {
            JoinState::Expired
        } else {
            self.state
        }
    }
}

/// Caps on pending (unexpired) join requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinLimits {
    /// From one source address.
    pub per_source: u32,
    /// In all.
    pub total: u32,
}

/// What filing did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filed {
    /// The request as stored.
    pub record: JoinRecord,
    /// Whether it updated the requester's pending request instead of adding one.
    pub refiled: bool,
}

/// What a bulk denial did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkDenied {
    /// The requests denied, oldest first.
    pub denied: Vec<JoinRecord>,
    /// Whether more pending requests matched than the denial's limit.
    pub more: bool,
}

/// How a join request is decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Make the requester a member with these attributes and credential lifetime (seconds).
    Approve {
        /// Granted attributes.
        attributes: BTreeMap<String, String>,
        /// Granted credential lifetime, seconds.
        lifetime: u64,
    },
    /// Refuse, telling the requester why.
    Deny {
        /// Why.
        reason: String,
    },
}

/// An auto-approval rule as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRecord {
    /// Its id.
    pub id: String,
    /// The netblock, CIDR text as given (checked by the caller).
    pub netblock: String,
    /// The attributes a request may ask for.
    pub attributes: BTreeMap<String, String>,
    /// The longest credential lifetime granted, seconds.
    pub max_credential_lifetime: u64,
    /// Unix seconds.
    pub created_at: u64,
    /// Who added it.
    pub created_by: Identifier,
    /// When it stops applying, Unix seconds.
    pub expires_at: u64,
}

/// The authority's persistent state on SQLite or PostgreSQL. Cloning is cheap and shares
/// the connection pool.
#[derive(Clone)]
pub struct MembershipStore {
    backend: Backend,
}

/// The database behind a store; both run the same [`Db`] operations.
#[derive(Clone)]
enum Backend {
    Sqlite(Db<Sqlite>),
    Postgres(Db<Postgres>),
}

/// Run the same generic operation on whichever database backs `$store`.
macro_rules! on_backend {
    ($store:expr, $db:ident => $operation:expr) => {
        match &$store.backend {
            Backend::Sqlite($db) => $operation,
            Backend::Postgres($db) => $operation,
        }
    };
}

impl fmt::Debug for MembershipStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MembershipStore")
            .field("store", &self.location())
            .finish()
    }
}

/// Creating, opening and closing. A store is stamped with its project when it is created,
/// and opened later only for that project (DESIGN §5): [`MembershipStore::create`] makes a
/// new project's store and [`MembershipStore::open`] opens an existing one; neither ever
/// turns an empty or foreign store into a project's. Both look at the store before they
/// migrate or write anything, so a refusal changes nothing.
impl MembershipStore {
    /// Create a new project's store at `location`, stamped with `owner`'s project at `now`:
    /// a `postgres://` or `postgresql://` URL names an (empty) PostgreSQL database; anything
    /// else is the path of a SQLite file ([`MembershipStore::create_sqlite`]). Several
    /// processes may do this at once on one database: one creates it, the others are
    /// refused.
    ///
    /// Refused with [`StoreError::Occupied`] if the location holds a project's store (any
    /// project's), members, tickets, join requests or audit entries, tables kith did not
    /// create, or a file that is not a SQLite database. A location with nothing there, or
    /// with kith's tables but no stamp and no data (a creation that stopped half-way), is
    /// taken.
    pub async fn create(location: &str, owner: &StoreOwner, now: u64) -> Result<Self, StoreError> {
        Self::at(location, Intent::Create, owner, now).await
    }

    /// Open the existing store of `owner`'s project at `location` (a PostgreSQL URL or a
    /// SQLite file's path, as for [`MembershipStore::create`]) and bring its tables up to
    /// date. Several processes may do this at once on one database: the migrator serializes
    /// them.
    ///
    /// Refused, changing nothing, if the store holds no project ([`StoreError::NoProject`]:
    /// no file, an empty file, no tables, or kith's tables with no stamp and no data), is
    /// damaged ([`StoreError::Damaged`], or [`StoreError::Migrate`] if its tables cannot be
    /// brought up to date), or belongs to another project ([`StoreError::ForeignProject`]).
    /// A store an earlier kith wrote without a stamp, but with data, is adopted: stamped with
    /// `owner`'s project at `now`, and logged at info level.
    pub async fn open(location: &str, owner: &StoreOwner, now: u64) -> Result<Self, StoreError> {
        Self::at(location, Intent::Existing, owner, now).await
    }

    /// [`MembershipStore::create`] on the SQLite file at `path`, created with mode 0600
    /// (its directory must exist).
    pub async fn create_sqlite(
        path: &Path,
        owner: &StoreOwner,
        now: u64,
    ) -> Result<Self, StoreError> {
        Self::sqlite(path, Intent::Create, owner, now).await
    }

    /// [`MembershipStore::open`] on the SQLite file at `path`; an existing file's
    /// permissions are tightened to 0600 once it is admitted.
    pub async fn open_sqlite(
        path: &Path,
        owner: &StoreOwner,
        now: u64,
    ) -> Result<Self, StoreError> {
        Self::sqlite(path, Intent::Existing, owner, now).await
    }

    /// Open the store at `location` with `intent`.
    async fn at(
        location: &str,
        intent: Intent,
        owner: &StoreOwner,
        now: u64,
    ) -> Result<Self, StoreError> {
        if location.starts_with("postgres://") || location.starts_with("postgresql://") {
            let db = Db::<Postgres>::connect(location, intent, owner, now).await?;
            Ok(Self {
                backend: Backend::Postgres(db),
            })
        } else {
            Self::sqlite(Path::new(location), intent, owner, now).await
        }
    }

    /// Open the SQLite store at `path` with `intent`.
    async fn sqlite(
        path: &Path,
        intent: Intent,
        owner: &StoreOwner,
        now: u64,
    ) -> Result<Self, StoreError> {
        let db = Db::<Sqlite>::open(path, intent, owner, now).await?;
        Ok(Self {
            backend: Backend::Sqlite(db),
        })
    }

    /// The project this store belongs to: its stamp.
    pub async fn project(&self) -> Result<ProjectStamp, StoreError> {
        on_backend!(self, db => db.stamp().await)
    }

    /// Close every connection (on SQLite, after folding the write-ahead log into the file),
    /// waiting a bounded time for connections still in use. Operations afterwards fail with
    /// [`StoreError::Database`].
    pub async fn close(&self) {
        on_backend!(self, db => db.close().await)
    }

    /// Which store this is, for messages and logs: `SQLite file <path>` or `PostgreSQL
    /// database <user>@<host>:<port>/<database>` (never a password).
    pub fn location(&self) -> &str {
        on_backend!(self, db => db.location())
    }
}

/// Tickets.
impl MembershipStore {
    /// Store a new ticket, with all its uses left, created at `now`; audit
    /// [`AuditEvent::TICKET_CREATED`].
    pub async fn create_ticket(&self, ticket: &NewTicket, now: u64) -> Result<(), StoreError> {
        on_backend!(self, db => db.create_ticket(ticket, now).await)
    }

    /// Every ticket, oldest first, revoked and expired ones included.
    pub async fn tickets_page(
        &self,
        after: Option<&PageKey>,
        limit: u32,
    ) -> Result<Vec<TicketRecord>, StoreError> {
        on_backend!(self, db => db.tickets_page(after, limit).await)
    }

    /// Every ticket, oldest first.
    pub async fn list_tickets(&self) -> Result<Vec<TicketRecord>, StoreError> {
        on_backend!(self, db => db.list_tickets().await)
    }

    /// Revoke ticket `id` at `now` on behalf of `actor`, and audit
    /// [`AuditEvent::TICKET_REVOKED`]. Returns the ticket as it now is, or `None` if there is
    /// no such ticket. Revoking a revoked ticket changes nothing and returns it with its
    /// first revocation time.
    pub async fn revoke_ticket(
        &self,
        id: &str,
        actor: &Identifier,
        now: u64,
    ) -> Result<Option<TicketRecord>, StoreError> {
        on_backend!(self, db => db.revoke_ticket(id, actor, now).await)
    }

    /// Redeem the ticket whose code hashes to `code_hash`, at `now`, for `member`: take one
    /// of its uses and make `member` a member with the ticket's attributes, auditing
    /// [`AuditEvent::TICKET_REDEEMED`] and [`AuditEvent::MEMBER_ADDED`] — all in one
    /// transaction, committed before this returns. A ticket with usage count N enrolls at
    /// most N identities, however many redeem it at once.
    ///
    /// An identity that is a member already keeps its attributes and gets the ticket's
    /// added (the ticket's value wins a clash), or, with `replace`, only the ticket's; if
    /// that changes them, a [`FeedKind::Changed`] entry is appended.
    ///
    /// Redeeming again a ticket this identity redeemed before, while it is still a member,
    /// succeeds without taking a use ([`Redeemed::retried`]), whatever became of the ticket
    /// since: the first answer may have been lost.
    pub async fn redeem_ticket(
        &self,
        code_hash: &[u8; 32],
        member: &Identifier,
        replace: bool,
        now: u64,
    ) -> Result<Redeemed, RedeemError> {
        on_backend!(self, db => db.redeem_ticket(code_hash, member, replace, now).await)
    }
}

/// Members and the audit log.
impl MembershipStore {
    /// Add `member`, replacing any member with its identifier, on behalf of `actor` at
    /// `now`; audit [`AuditEvent::MEMBER_ADDED`].
    pub async fn add_member(
        &self,
        member: &Member,
        actor: &Identifier,
        now: u64,
    ) -> Result<(), StoreError> {
        on_backend!(self, db => db.add_member(member, actor, now).await)
    }

    /// Delete the member `identifier` on behalf of `actor` at `now`, auditing
    /// [`AuditEvent::MEMBER_DELETED`] and appending a [`FeedKind::Revoked`] entry to the
    /// feed in the same transaction; returns what was deleted, or `None` (and writes
    /// nothing) if it was not a member. Its redemptions are forgotten: redeeming a ticket
    /// again afterwards takes a use.
    pub async fn delete_member(
        &self,
        identifier: &Identifier,
        actor: &Identifier,
        now: u64,
    ) -> Result<Option<Member>, StoreError> {
        on_backend!(self, db => db.delete_member(identifier, actor, now).await)
    }

    /// Update the attributes of member `identifier` on behalf of `actor` at `now`: set
    /// those in `set`, then remove those named in `remove` (a name it does not have is
    /// ignored). If that changes them, audit [`AuditEvent::MEMBER_UPDATED`] and append a
    /// [`FeedKind::Changed`] entry in the same transaction; otherwise write nothing.
    /// Returns the member before and after, or `None` if it is not a member.
    pub async fn update_member(
        &self,
        identifier: &Identifier,
        set: &BTreeMap<String, String>,
        remove: &BTreeSet<String>,
        actor: &Identifier,
        now: u64,
    ) -> Result<Option<MemberChange>, StoreError> {
        on_backend!(self, db => db.update_member(identifier, set, remove, actor, now).await)
    }

    /// At most `limit` entries of the membership feed numbered after `after`, in order.
    /// Entries become visible in the order of their numbers, so a follower that has seen
    /// up to N misses nothing by asking for the entries after N.
    pub async fn feed_page(&self, after: u64, limit: u32) -> Result<Vec<FeedEntry>, StoreError> {
        on_backend!(self, db => db.feed_page(after, limit).await)
    }

    /// The number of the newest feed entry, 0 when the feed is empty.
    pub async fn feed_head(&self) -> Result<u64, StoreError> {
        on_backend!(self, db => db.feed_head().await)
    }

    /// How many members there are, join requests by state and audit events by action: what
    /// an authority's metrics report. Three counting queries, whatever the store's size.
    pub async fn counts(&self) -> Result<StoreCounts, StoreError> {
        on_backend!(self, db => db.counts().await)
    }

    /// The member `identifier`, if it is one.
    pub async fn member(&self, identifier: &Identifier) -> Result<Option<Member>, StoreError> {
        on_backend!(self, db => db.member(identifier).await)
    }

    /// Every member, in the order they were added.
    pub async fn members(&self) -> Result<Vec<Member>, StoreError> {
        on_backend!(self, db => db.members().await)
    }

    /// At most `limit` members after `after` (from the first without), in the order they
    /// were added: one page of a walk that loses no member that existed when it started,
    /// whatever is added meanwhile (a new member sorts after every existing one).
    pub async fn members_page(
        &self,
        after: Option<&PageKey>,
        limit: u32,
    ) -> Result<Vec<Member>, StoreError> {
        on_backend!(self, db => db.members_page(after, limit).await)
    }

    /// At most `limit` audit events before the one numbered `before` (from the newest
    /// without), newest first, each with its number: one page of a walk back through the
    /// log. Events written meanwhile come after the walk's start, so none it passes moves.
    pub async fn audit_page(
        &self,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<(i64, AuditEvent)>, StoreError> {
        on_backend!(self, db => db.audit_page(before, limit).await)
    }

    /// The newest `limit` audit events, oldest of them first (newest last).
    pub async fn audit_log(&self, limit: u32) -> Result<Vec<AuditEvent>, StoreError> {
        on_backend!(self, db => db.audit_log(limit).await)
    }

    /// Append `event` to the audit log on its own: for what the services see that changes
    /// nothing stored (failed attempts, [`AuditEvent::GUESS_THROTTLED`]). Every change is
    /// audited by the operation that makes it, in its transaction.
    pub async fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        on_backend!(self, db => db.append_audit(event).await)
    }
}

/// Where a page of a list ends: the sort key of its last row (a time, then a unique text
/// key). The next page starts after it, so rows added during a walk never shift the rows
/// that existed when it began, as an offset would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageKey {
    /// The row's time (added or created), Unix seconds.
    pub at: u64,
    /// Its unique key (identifier, id).
    pub key: String,
}

impl PageKey {
    /// The cursor a client is handed: `TIME.KEY`, opaque to it.
    pub fn to_cursor(&self) -> String {
        format!("{}.{}", self.at, self.key)
    }

    /// The key a cursor names, if it is one this authority handed out.
    pub fn from_cursor(cursor: &str) -> Option<Self> {
        let (at, key) = cursor.split_once('.')?;
        let at = at.parse().ok()?;
        let valid = !key.is_empty()
            && key.len() <= 128
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        valid.then(|| Self {
            at,
            key: key.to_owned(),
        })
    }
}

/// Join requests and auto-approval rules.
impl MembershipStore {
    /// File `request` at `now`, in one transaction: mark the requests past their expiry
    /// expired (auditing [`AuditEvent::REQUEST_EXPIRED`]); if the requester has a pending
    /// request, update its source, attributes, lifetime, note and code and keep its id,
    /// creation and expiry; otherwise check `limits` (pending requests from
    /// `request.source`, and in all) and insert it. The verification code depends on the
    /// id, so the one stored is `code_for` the id the request ends up with. Audits
    /// [`AuditEvent::REQUEST_FILED`].
    pub async fn file_join_request(
        &self,
        request: &NewJoinRequest,
        code_for: &(dyn Fn(&str) -> String + Sync),
        limits: JoinLimits,
        now: u64,
    ) -> Result<Filed, FileError> {
        on_backend!(self, db => db.file_join_request(request, code_for, limits, now).await)
    }

    /// The join request `id`.
    pub async fn join_request(&self, id: &str) -> Result<Option<JoinRecord>, StoreError> {
        on_backend!(self, db => db.join_request(id).await)
    }

    /// At most `limit` join requests after `after`, oldest first: those pending and
    /// unexpired at `now`, or every one with `all`. One page of a walk, as
    /// [`MembershipStore::members_page`].
    pub async fn join_requests_page(
        &self,
        all: bool,
        now: u64,
        after: Option<&PageKey>,
        limit: u32,
    ) -> Result<Vec<JoinRecord>, StoreError> {
        on_backend!(self, db => db.join_requests_page(all, now, after, limit).await)
    }

    /// Join requests, oldest first: those pending and unexpired at `now`, or every one
    /// with `all`.
    pub async fn join_requests(&self, all: bool, now: u64) -> Result<Vec<JoinRecord>, StoreError> {
        on_backend!(self, db => db.join_requests(all, now).await)
    }

    /// Decide the pending, unexpired request `id` whose code is still `code`, on behalf of
    /// `actor` (`decided_by` is `decided_by`) at `now`. Approving makes the requester a
    /// member (via `request:<id>`, added by `actor`, with the granted attributes and
    /// credential lifetime) in the same transaction. Audits
    /// [`AuditEvent::REQUEST_APPROVED`] (and [`AuditEvent::MEMBER_ADDED`]) or
    /// [`AuditEvent::REQUEST_DENIED`].
    pub async fn decide_join_request(
        &self,
        id: &str,
        code: &str,
        decision: &Decision,
        actor: &Identifier,
        decided_by: &str,
        now: u64,
    ) -> Result<JoinRecord, DecideError> {
        on_backend!(self, db => db.decide_join_request(id, code, decision, actor, decided_by, now).await)
    }

    /// Deny, on behalf of `actor` at `now`, the oldest `limit` of the pending, unexpired
    /// requests that `select` picks, telling each requester `reason` (`decided_by` is
    /// `actor`), in one transaction that takes turns with filings (so none is filed again
    /// from elsewhere meanwhile) and audits the whole once: [`AuditEvent::REQUESTS_BULK_DENIED`],
    /// its subject `selector`. A request decided by someone else meanwhile is left as they
    /// decided it. Denying none writes nothing but the expiry marks of requests past their
    /// expiry (audited each, as filing does).
    pub async fn deny_join_requests(
        &self,
        select: &(dyn Fn(&JoinRecord) -> bool + Sync),
        selector: &str,
        reason: &str,
        limit: usize,
        actor: &Identifier,
        now: u64,
    ) -> Result<BulkDenied, StoreError> {
        on_backend!(self, db => db.deny_join_requests(select, selector, reason, limit, actor, now).await)
    }

    /// Mark every pending request past its expiry at `now` expired, auditing each
    /// ([`AuditEvent::REQUEST_EXPIRED`]); returns them.
    pub async fn expire_join_requests(&self, now: u64) -> Result<Vec<JoinRecord>, StoreError> {
        on_backend!(self, db => db.expire_join_requests(now).await)
    }

    /// Store `rule`, auditing [`AuditEvent::RULE_ADDED`].
    pub async fn add_rule(&self, rule: &RuleRecord, now: u64) -> Result<(), StoreError> {
        on_backend!(self, db => db.add_rule(rule, now).await)
    }

    /// The rules that have not expired at `now`, oldest first.
    pub async fn rules(&self, now: u64) -> Result<Vec<RuleRecord>, StoreError> {
        on_backend!(self, db => db.rules(now).await)
    }

    /// Delete rule `id` on behalf of `actor`, auditing [`AuditEvent::RULE_DELETED`];
    /// returns it, or `None` if there is no such rule.
    pub async fn delete_rule(
        &self,
        id: &str,
        actor: &Identifier,
        now: u64,
    ) -> Result<Option<RuleRecord>, StoreError> {
        on_backend!(self, db => db.delete_rule(id, actor, now).await)
    }
}

/// Check a ticket before it is stored: an id of 1 to [`MAX_TICKET_ID_LEN`] ASCII letters,
/// digits, `-` or `_`, at least one use, and an expiry after `now`.
fn check_ticket(ticket: &NewTicket, now: u64) -> Result<(), StoreError> {
    let id = &ticket.id;
    let reason = if id.is_empty() || id.len() > MAX_TICKET_ID_LEN {
        Some(format!(
            "its id must be 1 to {MAX_TICKET_ID_LEN} characters long"
        ))
    } else if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        Some("its id may hold only ASCII letters, digits, '-' and '_'".to_owned())
    } else if ticket.usage_count == 0 {
        Some("its usage count is 0, so it could never enroll anyone; use 1 or more".to_owned())
    } else if ticket.expires_at <= now {
        Some(format!(
            "it expires at Unix time {}, not after it is created ({now}); give it a lifetime",
            ticket.expires_at
        ))
    } else {
        None
    };
    match reason {
        Some(reason) => Err(StoreError::InvalidTicket {
            id: id.chars().take(80).collect(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::PageKey;

    proptest! {
        /// A cursor from a client is untrusted text: parsing never panics, and whatever
        /// parses names a key of the shape the store hands out.
        #[test]
        fn any_cursor_text_parses_or_is_refused_without_panicking(text in "\\PC{0,200}") {
            if let Some(key) = PageKey::from_cursor(&text) {
                prop_assert!(!key.key.is_empty() && key.key.len() <= 128);
                prop_assert!(key.key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
                prop_assert_eq!(PageKey::from_cursor(&key.to_cursor()), Some(key));
            }
        }

        /// Every key the store hands out comes back as the same key.
        #[test]
        fn cursors_the_store_hands_out_round_trip(at in any::<u64>(), key in "[A-Za-z0-9_-]{1,128}") {
            let page = PageKey { at, key };
            prop_assert_eq!(PageKey::from_cursor(&page.to_cursor()), Some(page));
        }
    }
}
