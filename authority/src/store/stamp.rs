//! The project stamp (DESIGN §5: "a store is stamped with its project at creation; an
//! authority refuses an empty or foreign store"), and the look at a store, before anything
//! is migrated or written, that decides whether it may be opened.
//!
//! A store is opened in one of two deliberate ways ([`Intent`]):
//!
//! - **creating** a new project's store: refused if its location holds a project's store,
//!   any members, tickets, join requests or audit entries, tables that are not kith's, or
//!   something that is not a database;
//! - **opening** an existing project's store: refused if it holds no project (no file, an
//!   empty one, no tables, or kith's tables with neither a stamp nor data), is damaged, or is
//!   stamped for another project. A store an earlier kith wrote, without a stamp but with
//!   data, is a real project's: it is adopted — stamped with the project it is opened for —
//!   and the adoption is logged.
//!
//! The look ([`survey`]) only reads, and the decision ([`admit`]) is pure: only a store it
//! admits is migrated and then stamped or confirmed ([`Db::settle_stamp`]), so a refusal
//! changes nothing — no file created, no table, no stamp.
//!
//! What it does not do: decide which project an authority serves (its configuration does),
//! or find a store's location.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use kith_identity::Identifier;
use kith_identity::sqlite::{Cause, SqlStore, retrying};
use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Row, Type};

use super::StoreError;
use super::ops::{Db, Dialect, sql_time};

/// The tables every kith store has had since its first migration; a store with some of
/// kith's tables but not these is damaged.
const CORE_TABLES: [&str; 4] = ["_sqlx_migrations", "tickets", "members", "audit"];

/// Every table kith's migrations create (and the migrator's own).
const KITH_TABLES: [&str; 9] = [
    "_sqlx_migrations",
    "tickets",
    "members",
    "audit",
    "join_requests",
    "auto_approve_rules",
    "membership_feed",
    "redemptions",
    STAMP_TABLE,
];

/// The tables whose rows make a project: an unstamped store with a row in any of them was
/// written by an earlier kith for a real project, and is adopted rather than refused. (The
/// other tables never hold a row without an audit entry beside it.)
const DATA_TABLES: [&str; 4] = ["members", "tickets", "join_requests", "audit"];

/// The table of the stamp.
const STAMP_TABLE: &str = "project_stamp";

/// 5: how many foreign table names a message lists before it says how many more there are.
const MAX_NAMES_SHOWN: usize = 5;

/// The stamp's one row.
const SELECT_STAMP: &str =
    "SELECT project_id, created_at, authority, origin FROM project_stamp WHERE id = 1";

/// Write the stamp unless the store has one, returning a row only if it wrote it. Then [`SELECT_STAMP`] reads the row that won:
/// ours, or one another process wrote first (on PostgreSQL a conflicting insert waits for
/// that process to commit, and the next statement sees its row).
const INSERT_STAMP: &str = "INSERT INTO project_stamp (id, project_id, created_at, authority, origin) \
     VALUES (1, $1, $2, $3, $4) ON CONFLICT (id) DO NOTHING RETURNING id";

/// What a store is opened for: the project it holds, and the authority opening it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOwner {
    /// The project's id: a store created is stamped with it; a store opened must be
    /// stamped with it, or is adopted and stamped with it if an earlier kith wrote it.
    pub project_id: String,
    /// The authority opening the store, recorded in a stamp it writes; `None` if unknown.
    pub authority: Option<Identifier>,
}

/// How a store came by its stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StampOrigin {
    /// The stamp was written when the store was created.
    Created,
    /// The store was written by an earlier kith without a stamp, and stamped when an
    /// authority of the project first opened it.
    Adopted,
}

impl StampOrigin {
    /// The name the `origin` column holds: `created` or `adopted`.
    pub fn as_str(self) -> &'static str {
        match self {
            StampOrigin::Created => "created",
            StampOrigin::Adopted => "adopted",
        }
    }

    /// The origin an `origin` column names, if it is one.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "created" => Some(StampOrigin::Created),
            "adopted" => Some(StampOrigin::Adopted),
            _ => None,
        }
    }
}

/// The project a store belongs to: its one stamp row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectStamp {
    /// The project's id.
    pub project_id: String,
    /// When the stamp was written, Unix seconds.
    pub created_at: u64,
    /// The authority that wrote it, if it was known.
    pub authority: Option<Identifier>,
    /// Whether it was written with the store or given to a store of an earlier kith.
    pub origin: StampOrigin,
}

/// Which of the two ways a store is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Intent {
    /// Create a new project's store, where there is none.
    Create,
    /// Open the store of an existing project.
    Existing,
}

/// What a store holds, read before anything is migrated or written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Survey {
    /// Its tables (on SQLite, without SQLite's own).
    pub(super) tables: BTreeSet<String>,
    /// Its stamp, if it has one.
    pub(super) stamp: Option<ProjectStamp>,
    /// Whether any of [`DATA_TABLES`] holds a row.
    pub(super) has_data: bool,
}

/// What is at a store's location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Seen {
    /// No file (SQLite).
    NoFile,
    /// A file of 0 bytes (SQLite).
    EmptyFile,
    /// A database, and what it holds.
    Database(Survey),
}

/// Whether the store that `seen` describes, at `store`, may be opened with `intent` for
/// `owner`'s project; if not, why, in the error the caller reports. Pure: the caller has
/// changed nothing yet, and changes nothing on a refusal.
pub(super) fn admit(
    seen: &Seen,
    intent: Intent,
    owner: &StoreOwner,
    store: &str,
) -> Result<(), StoreError> {
    let no_project = |found: String| StoreError::NoProject {
        store: store.to_owned(),
        found,
    };
    let occupied = |found: String| StoreError::Occupied {
        store: store.to_owned(),
        found,
    };
    let survey = match (seen, intent) {
        (Seen::NoFile | Seen::EmptyFile, Intent::Create) => return Ok(()),
        (Seen::NoFile, Intent::Existing) => {
            return Err(no_project("there is no such file".to_owned()));
        }
        (Seen::EmptyFile, Intent::Existing) => {
            return Err(no_project("the file is empty (0 bytes)".to_owned()));
        }
        (Seen::Database(survey), _) => survey,
    };
    let foreign: Vec<&str> = survey
        .tables
        .iter()
        .map(String::as_str)
        .filter(|t| !KITH_TABLES.contains(t))
        .collect();
    let has_kith_tables = survey.tables.len() > foreign.len();
    let missing: Vec<&str> = CORE_TABLES
        .into_iter()
        .filter(|t| !survey.tables.contains(*t))
        .collect();
    match intent {
        Intent::Create => {
            if let Some(stamp) = &survey.stamp {
                Err(occupied(stamped(stamp)))
            } else if survey.has_data {
                Err(occupied(
                    "a kith project's members, tickets, join requests or audit entries, from an \
                     earlier kith that did not stamp its stores"
                        .to_owned(),
                ))
            } else if !foreign.is_empty() {
                Err(occupied(format!(
                    "tables kith did not create ({})",
                    names(&foreign)
                )))
            } else if has_kith_tables && !missing.is_empty() {
                Err(occupied(format!(
                    "a damaged kith store, without its {} table",
                    names(&missing)
                )))
            } else {
                // Nothing, or kith's tables with no data and no stamp: a creation that
                // stopped before it stamped.
                Ok(())
            }
        }
        Intent::Existing => {
            if survey.tables.is_empty() {
                Err(no_project("the database has no tables".to_owned()))
            } else if !has_kith_tables {
                Err(no_project(format!(
                    "only tables kith did not create ({})",
                    names(&foreign)
                )))
            } else if !missing.is_empty() {
                Err(StoreError::Damaged {
                    store: store.to_owned(),
                    what: format!("it has some of kith's tables but not {}", names(&missing)),
                    source: None,
                })
            } else {
                match &survey.stamp {
                    Some(stamp) if stamp.project_id == owner.project_id => Ok(()),
                    Some(stamp) => Err(foreign_project(store, stamp, owner)),
                    // A store of an earlier kith: adopted once it is migrated.
                    None if survey.has_data => Ok(()),
                    None => Err(no_project(
                        "kith's tables, but no project stamp and no members, tickets, join \
                         requests or audit entries"
                            .to_owned(),
                    )),
                }
            }
        }
    }
}

/// How messages name a stamped store.
fn stamped(stamp: &ProjectStamp) -> String {
    format!(
        "the store of project {} (stamped at Unix time {})",
        stamp.project_id, stamp.created_at
    )
}

/// The refusal of a store stamped with another project than `owner`'s.
fn foreign_project(store: &str, stamp: &ProjectStamp, owner: &StoreOwner) -> StoreError {
    StoreError::ForeignProject {
        store: store.to_owned(),
        found: stamp.project_id.clone(),
        stamped_at: stamp.created_at,
        expected: owner.project_id.clone(),
    }
}

/// Table names for a message: quoted, at most [`MAX_NAMES_SHOWN`] of them. Names read from
/// a database are shown escaped, as any text from outside.
fn names(tables: &[&str]) -> String {
    let mut text = String::new();
    for (i, table) in tables.iter().take(MAX_NAMES_SHOWN).enumerate() {
        if i > 0 {
            text.push_str(", ");
        }
        let _ = write!(text, "{table:?}");
    }
    if let Some(more) = tables.len().checked_sub(MAX_NAMES_SHOWN).filter(|n| *n > 0) {
        let _ = write!(text, " and {more} more");
    }
    text
}

/// Read what the database behind `conn` (the store `store`) holds: its tables, its stamp,
/// whether it has data. Only reads. An answer the database refuses or cannot give (a file
/// that is not a database, a table that cannot be read) is [`StoreError::Damaged`];
/// contention and lost connections are [`StoreError::Database`].
pub(super) async fn survey<DB>(conn: &mut DB::Connection, store: &str) -> Result<Survey, StoreError>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Decode<'q, DB> + Type<DB>,
    for<'q> i64: Decode<'q, DB> + Type<DB>,
    for<'a> &'a str: ColumnIndex<DB::Row>,
{
    let rows = sqlx::query(DB::LIST_TABLES)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| unreadable::<DB>(store, "its list of tables cannot be read", e))?;
    let mut tables = BTreeSet::new();
    for row in &rows {
        let name: String = row
            .try_get("name")
            .map_err(|e| unreadable::<DB>(store, "its list of tables cannot be decoded", e))?;
        tables.insert(name);
    }
    let mut has_data = false;
    for table in DATA_TABLES.into_iter().filter(|t| tables.contains(*t)) {
        let probe = format!("SELECT 1 FROM {table} LIMIT 1");
        let row = sqlx::query(&probe)
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| {
                unreadable::<DB>(store, &format!("its table {table} cannot be read"), e)
            })?;
        if row.is_some() {
            has_data = true;
            break;
        }
    }
    let stamp = if tables.contains(STAMP_TABLE) {
        let row = sqlx::query(SELECT_STAMP)
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| unreadable::<DB>(store, "its project stamp cannot be read", e))?;
        row.map(|row| {
            stamp_from_row(&row, |what, source| StoreError::Damaged {
                store: store.to_owned(),
                what: format!("its project stamp holds a corrupt {what}"),
                source,
            })
        })
        .transpose()?
    } else {
        None
    };
    Ok(Survey {
        tables,
        stamp,
        has_data,
    })
}

/// A failure of the survey of `store`: a database's answer to what it was asked (`what`
/// failed) means the store is damaged; contention, a lost connection or a driver failure is
/// the database's, and says nothing about the store.
pub(super) fn unreadable<DB: Dialect>(store: &str, what: &str, source: sqlx::Error) -> StoreError {
    match source {
        sqlx::Error::Database(_) if !DB::is_transient(&source) => StoreError::Damaged {
            store: store.to_owned(),
            what: what.to_owned(),
            source: Some(Box::new(source)),
        },
        source => StoreError::Database {
            store: store.to_owned(),
            source,
        },
    }
}

/// The stamp in `row`, read with [`SELECT_STAMP`]; a value that does not decode is
/// `bad(what, cause)`.
fn stamp_from_row<R>(
    row: &R,
    bad: impl Fn(String, Option<Cause>) -> StoreError,
) -> Result<ProjectStamp, StoreError>
where
    R: Row,
    for<'q> String: Decode<'q, R::Database> + Type<R::Database>,
    for<'q> i64: Decode<'q, R::Database> + Type<R::Database>,
    for<'a> &'a str: ColumnIndex<R>,
{
    let column = |name: &str| format!("{name} (column {name})");
    let project_id: String = row
        .try_get("project_id")
        .map_err(|e| bad(column("project_id"), Some(Box::new(e))))?;
    let created_at: i64 = row
        .try_get("created_at")
        .map_err(|e| bad(column("created_at"), Some(Box::new(e))))?;
    let created_at =
        u64::try_from(created_at).map_err(|e| bad(column("created_at"), Some(Box::new(e))))?;
    let authority: Option<String> = row
        .try_get("authority")
        .map_err(|e| bad(column("authority"), Some(Box::new(e))))?;
    let authority = authority
        .map(|text| text.parse::<Identifier>())
        .transpose()
        .map_err(|e| bad(column("authority"), Some(Box::new(e))))?;
    let origin: String = row
        .try_get("origin")
        .map_err(|e| bad(column("origin"), Some(Box::new(e))))?;
    let origin = StampOrigin::parse(&origin)
        .ok_or_else(|| bad(format!("origin {origin:?} (column origin)"), None))?;
    Ok(ProjectStamp {
        project_id,
        created_at,
        authority,
        origin,
    })
}

impl<DB> Db<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB>,
    for<'q> Option<String>: Encode<'q, DB>,
    for<'a> &'a str: ColumnIndex<DB::Row>,
{
    /// Once an admitted store is migrated: stamp it with `owner`'s project at `now` (a new
    /// store, or an earlier kith's adopted store) or confirm the stamp it has, in one
    /// transaction. A stamp that another process wrote since the survey is judged as the
    /// survey would have judged it: creating is then refused ([`StoreError::Occupied`]),
    /// opening accepts only `owner`'s project ([`StoreError::ForeignProject`]).
    pub(super) async fn settle_stamp(
        &self,
        intent: Intent,
        owner: &StoreOwner,
        now: u64,
    ) -> Result<(), StoreError> {
        let origin = match intent {
            Intent::Create => StampOrigin::Created,
            Intent::Existing => StampOrigin::Adopted,
        };
        let authority = owner.authority.map(|a| a.to_string());
        let (project_id, authority) = (owner.project_id.as_str(), authority.as_deref());
        let (stamp, wrote) = retrying(self, move || async move {
            let mut tx = self.begin_write().await?;
            let wrote = sqlx::query(INSERT_STAMP)
                .bind(project_id.to_owned())
                .bind(sql_time(now))
                .bind(authority.map(str::to_owned))
                .bind(origin.as_str().to_owned())
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| self.db(e))?
                .is_some();
            let row = sqlx::query(SELECT_STAMP)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| self.db(e))?;
            let stamp = self.stamp_row(&row)?;
            tx.commit().await.map_err(|e| self.db(e))?;
            Ok((stamp, wrote))
        })
        .await?;
        match intent {
            Intent::Create if wrote => Ok(()),
            Intent::Create => Err(StoreError::Occupied {
                store: self.location().to_owned(),
                found: stamped(&stamp),
            }),
            Intent::Existing if stamp.project_id != owner.project_id => {
                Err(foreign_project(self.location(), &stamp, owner))
            }
            Intent::Existing => {
                if wrote {
                    tracing::info!(
                        store = %self.location(),
                        project_id = %stamp.project_id,
                        "stamped a membership store that an earlier kith wrote without a project stamp: it holds this project's data, so it is adopted as this project's store"
                    );
                }
                Ok(())
            }
        }
    }

    /// The store's stamp. Every store opened has one; its absence is corruption.
    pub(super) async fn stamp(&self) -> Result<ProjectStamp, StoreError> {
        retrying(self, move || async move {
            let row = sqlx::query(SELECT_STAMP)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| self.db(e))?
                .ok_or_else(|| self.corrupt("project stamp (its row is missing)".to_owned()))?;
            self.stamp_row(&row)
        })
        .await
    }

    /// The stamp in `row`, read with [`SELECT_STAMP`].
    fn stamp_row(&self, row: &DB::Row) -> Result<ProjectStamp, StoreError> {
        stamp_from_row(row, |what, cause| {
            self.corrupt_row(format!("project stamp: {what}"), cause)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STORE: &str = "SQLite file /tmp/authority.sqlite";

    fn owner(project_id: &str) -> StoreOwner {
        StoreOwner {
            project_id: project_id.to_owned(),
            authority: None,
        }
    }

    fn kith_tables() -> BTreeSet<String> {
        KITH_TABLES.iter().map(|t| (*t).to_owned()).collect()
    }

    fn stamp(project_id: &str) -> ProjectStamp {
        ProjectStamp {
            project_id: project_id.to_owned(),
            created_at: 1_700_000_000,
            authority: None,
            origin: StampOrigin::Created,
        }
    }

    fn database(tables: BTreeSet<String>, stamp: Option<ProjectStamp>, has_data: bool) -> Seen {
        Seen::Database(Survey {
            tables,
            stamp,
            has_data,
        })
    }

    #[test]
    fn a_new_store_may_be_created_only_where_there_is_nothing_of_a_project() {
        let a = owner("a");
        for nothing in [
            Seen::NoFile,
            Seen::EmptyFile,
            database(BTreeSet::new(), None, false),
            // Migrated, never stamped: a creation that stopped half-way.
            database(kith_tables(), None, false),
        ] {
            assert!(
                admit(&nothing, Intent::Create, &a, STORE).is_ok(),
                "{nothing:?}"
            );
        }
        let mut other = kith_tables();
        other.insert("orders".to_owned());
        let mut partial = BTreeSet::new();
        partial.insert("members".to_owned());
        for something in [
            database(kith_tables(), Some(stamp("a")), false),
            database(kith_tables(), Some(stamp("b")), true),
            database(kith_tables(), None, true),
            database(other, None, false),
            database(partial, None, false),
        ] {
            let refused = admit(&something, Intent::Create, &a, STORE);
            assert!(
                matches!(refused, Err(StoreError::Occupied { .. })),
                "{something:?}: {refused:?}"
            );
        }
    }

    #[test]
    fn an_existing_store_opens_only_if_it_holds_this_project_or_an_unstamped_ones_data() {
        let a = owner("a");
        assert!(
            admit(
                &database(kith_tables(), Some(stamp("a")), false),
                Intent::Existing,
                &a,
                STORE
            )
            .is_ok()
        );
        assert!(
            admit(
                &database(kith_tables(), None, true),
                Intent::Existing,
                &a,
                STORE
            )
            .is_ok()
        );

        let mut only_others = BTreeSet::new();
        only_others.insert("orders".to_owned());
        for empty in [
            Seen::NoFile,
            Seen::EmptyFile,
            database(BTreeSet::new(), None, false),
            database(only_others, None, false),
            database(kith_tables(), None, false),
        ] {
            let refused = admit(&empty, Intent::Existing, &a, STORE);
            assert!(
                matches!(refused, Err(StoreError::NoProject { .. })),
                "{empty:?}: {refused:?}"
            );
        }
        let refused = admit(
            &database(kith_tables(), Some(stamp("b")), true),
            Intent::Existing,
            &a,
            STORE,
        );
        assert!(
            matches!(&refused, Err(StoreError::ForeignProject { found, expected, .. }) if found == "b" && expected == "a"),
            "{refused:?}"
        );
        let mut partial = kith_tables();
        partial.remove("members");
        let refused = admit(&database(partial, None, true), Intent::Existing, &a, STORE);
        assert!(
            matches!(refused, Err(StoreError::Damaged { .. })),
            "{refused:?}"
        );
    }

    #[test]
    fn a_refusal_names_the_store_what_was_found_and_how_to_start_a_new_project() {
        let refused = admit(&Seen::EmptyFile, Intent::Existing, &owner("a"), STORE)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(refused.contains(STORE), "{refused}");
        assert!(
            refused.contains("holds no kith project: the file is empty"),
            "{refused}"
        );
        assert!(refused.contains("kith authority create"), "{refused}");
    }

    #[test]
    fn foreign_table_names_are_listed_escaped_and_bounded() {
        let tables = ["a", "b\"c", "d", "e", "f", "g", "h"];
        assert_eq!(names(&tables), r#""a", "b\"c", "d", "e", "f" and 2 more"#);
        assert_eq!(names(&["members"]), r#""members""#);
    }
}
