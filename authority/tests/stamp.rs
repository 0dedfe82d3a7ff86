//! A store knows its project (DESIGN §5: "a store is stamped with its project at creation;
//! an authority refuses an empty or foreign store"), pinned on both databases: creating
//! stamps; opening for the same project works; opening an empty, missing, damaged or
//! foreign store is refused and changes nothing (on SQLite, not a byte nor a modification
//! time of any file in the directory; on PostgreSQL, not a table nor a row); a store an
//! earlier kith wrote without a stamp is adopted if it holds data, refused if it holds none.
//!
//! The PostgreSQL half needs a server, as `store.rs` does: `eval "$(bash .ci/postgres)"`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use kith_authority::store::{
    Member, MembershipStore, ProjectStamp, StampOrigin, StoreError, StoreOwner,
};
use kith_identity::Identifier;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::{Connection, Executor, PgConnection, Row, SqliteConnection};
use tempfile::TempDir;
use tokio::task::JoinSet;

#[path = "../../integration-tests/src/postgres.rs"]
mod temp_postgres;
use temp_postgres::TempDatabase;

/// An arbitrary fixed "now" (November 2023).
const NOW: u64 = 1_700_000_000;

/// The project the scenarios create and open.
const PROJECT_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

/// Another project, whose store A's authority must refuse.
const PROJECT_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

/// How many migrations the kith before the stamp had: its stores have these applied.
const MIGRATIONS_BEFORE_THE_STAMP: usize = 3;

// ---- the scenarios ------------------------------------------------------------------------

async fn creating_a_store_stamps_it_with_its_project_and_authority(db: &TestDb) {
    let authority = identifier(1);
    let owner = StoreOwner {
        project_id: PROJECT_A.to_owned(),
        authority: Some(authority),
    };
    let store = MembershipStore::create(&db.location(), &owner, NOW)
        .await
        .unwrap();
    assert_eq!(
        store.project().await.unwrap(),
        ProjectStamp {
            project_id: PROJECT_A.to_owned(),
            created_at: NOW,
            authority: Some(authority),
            origin: StampOrigin::Created,
        }
    );
    store.close().await;
    assert_eq!(db.stamp_rows().await, 1);
}

async fn reopening_for_the_same_project_works_and_keeps_members_and_stamp(db: &TestDb) {
    let store = create(db, PROJECT_A).await;
    let admin = identifier(1);
    store
        .add_member(&member(identifier(2), admin), &admin, NOW)
        .await
        .unwrap();
    let stamp = store.project().await.unwrap();
    store.close().await;

    // A later start, another authority identity: the stamp is the creation's.
    let reopened = MembershipStore::open(&db.location(), &owner_of(PROJECT_A), NOW + 60)
        .await
        .unwrap();
    assert_eq!(reopened.project().await.unwrap(), stamp);
    assert_eq!(reopened.members().await.unwrap().len(), 1);
    reopened.close().await;
}

async fn another_projects_store_is_refused_and_left_unchanged(db: &TestDb) {
    let store = create(db, PROJECT_B).await;
    let admin = identifier(1);
    store
        .add_member(&member(identifier(2), admin), &admin, NOW)
        .await
        .unwrap();
    store.close().await;
    let before = db.snapshot().await;

    let refused = MembershipStore::open(&db.location(), &owner_of(PROJECT_A), NOW)
        .await
        .unwrap_err();
    match &refused {
        StoreError::ForeignProject {
            found,
            expected,
            stamped_at,
            ..
        } => {
            assert_eq!((found.as_str(), expected.as_str()), (PROJECT_B, PROJECT_A));
            assert_eq!(*stamped_at, NOW);
        }
        other => panic!("expected a foreign project, got {other:?}"),
    }
    let message = refused.to_string();
    assert!(
        message.contains(PROJECT_B) && message.contains(PROJECT_A),
        "{message}"
    );
    assert_eq!(db.snapshot().await, before, "the refusal changed the store");

    // Creating a new project there is refused too: it holds one.
    let refused = MembershipStore::create(&db.location(), &owner_of(PROJECT_A), NOW)
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, StoreError::Occupied { found, .. } if found.contains(PROJECT_B)),
        "{refused:?}"
    );
    assert_eq!(
        db.snapshot().await,
        before,
        "the refused creation changed the store"
    );
}

async fn a_store_of_an_earlier_kith_with_data_is_adopted_and_stamped(db: &TestDb) {
    db.legacy_store(true).await;
    // Creating a new project over it is refused: it is a real project's.
    let refused = MembershipStore::create(&db.location(), &owner_of(PROJECT_B), NOW)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, StoreError::Occupied { .. }),
        "{refused:?}"
    );

    let authority = identifier(9);
    let owner = StoreOwner {
        project_id: PROJECT_A.to_owned(),
        authority: Some(authority),
    };
    let store = MembershipStore::open(&db.location(), &owner, NOW + 5)
        .await
        .unwrap();
    assert_eq!(
        store.project().await.unwrap(),
        ProjectStamp {
            project_id: PROJECT_A.to_owned(),
            created_at: NOW + 5,
            authority: Some(authority),
            origin: StampOrigin::Adopted,
        }
    );
    let members = store.members().await.unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].identifier, identifier(2));
    store.close().await;

    // Adopted, it is A's: B's authority is refused, and A's opens it again.
    let refused = MembershipStore::open(&db.location(), &owner_of(PROJECT_B), NOW)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, StoreError::ForeignProject { .. }),
        "{refused:?}"
    );
    MembershipStore::open(&db.location(), &owner_of(PROJECT_A), NOW)
        .await
        .unwrap()
        .close()
        .await;
}

async fn a_store_of_an_earlier_kith_without_data_is_refused_as_empty_and_left_unchanged(
    db: &TestDb,
) {
    db.legacy_store(false).await;
    let before = db.snapshot().await;
    let refused = MembershipStore::open(&db.location(), &owner_of(PROJECT_A), NOW)
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, StoreError::NoProject { found, .. } if found.contains("no project stamp")),
        "{refused:?}"
    );
    assert!(
        refused.to_string().contains("kith authority create"),
        "{refused}"
    );
    assert_eq!(
        db.snapshot().await,
        before,
        "the refusal migrated or stamped the store"
    );
}

async fn processes_opening_a_store_of_an_earlier_kith_at_once_adopt_it_once(db: &TestDb) {
    db.legacy_store(true).await;
    let mut opening = JoinSet::new();
    for i in 0..4u64 {
        let location = db.location();
        opening.spawn(async move {
            let owner = StoreOwner {
                project_id: PROJECT_A.to_owned(),
                authority: Some(identifier(100 + i)),
            };
            MembershipStore::open(&location, &owner, NOW + i).await
        });
    }
    let mut stamps = Vec::new();
    let mut stores = Vec::new();
    while let Some(opened) = opening.join_next().await {
        let store = opened.unwrap().expect("every process opens the store");
        stamps.push(store.project().await.unwrap());
        stores.push(store);
    }
    assert!(stamps.iter().all(|s| *s == stamps[0]), "{stamps:?}");
    assert_eq!(stamps[0].origin, StampOrigin::Adopted);
    assert_eq!(db.stamp_rows().await, 1);
    for store in stores {
        assert_eq!(store.members().await.unwrap().len(), 1);
        store.close().await;
    }
}

/// Run the same scenarios on each database, as `sqlite::<name>` and `postgres::<name>`.
macro_rules! on_both_databases {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $scenario() {
                    super::TestDb::run_on_sqlite(super::$scenario).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $scenario() {
                    super::TestDb::run_on_postgres(super::$scenario).await;
                }
            )*
        }
    };
}

on_both_databases!(
    creating_a_store_stamps_it_with_its_project_and_authority,
    reopening_for_the_same_project_works_and_keeps_members_and_stamp,
    another_projects_store_is_refused_and_left_unchanged,
    a_store_of_an_earlier_kith_with_data_is_adopted_and_stamped,
    a_store_of_an_earlier_kith_without_data_is_refused_as_empty_and_left_unchanged,
    processes_opening_a_store_of_an_earlier_kith_at_once_adopt_it_once,
);

// ---- SQLite files -------------------------------------------------------------------------

#[tokio::test]
async fn sqlite_an_empty_file_is_refused_and_left_unchanged() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("authority.sqlite");
    std::fs::write(&path, b"").unwrap();
    let before = files(dir.path());

    let refused = MembershipStore::open_sqlite(&path, &owner_of(PROJECT_A), NOW)
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, StoreError::NoProject { found, .. } if found.contains("empty")),
        "{refused:?}"
    );
    let message = refused.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("holds no kith project"), "{message}");
    assert!(message.contains("kith authority create"), "{message}");
    assert_eq!(
        files(dir.path()),
        before,
        "the refusal touched the directory"
    );
}

#[tokio::test]
async fn sqlite_a_missing_file_is_refused_and_not_created() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("authority.sqlite");

    let refused = MembershipStore::open_sqlite(&path, &owner_of(PROJECT_A), NOW)
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, StoreError::NoProject { found, .. } if found.contains("no such file")),
        "{refused:?}"
    );
    assert_eq!(files(dir.path()), Vec::new(), "the refusal created a file");
}

#[tokio::test]
async fn sqlite_a_file_that_is_not_a_database_is_refused_and_left_unchanged() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("authority.sqlite");
    std::fs::write(&path, "members: alice, bob\n".repeat(300)).unwrap();
    let before = files(dir.path());

    for refused in [
        MembershipStore::open_sqlite(&path, &owner_of(PROJECT_A), NOW)
            .await
            .unwrap_err(),
        MembershipStore::create_sqlite(&path, &owner_of(PROJECT_A), NOW)
            .await
            .unwrap_err(),
    ] {
        assert!(
            matches!(&refused, StoreError::Damaged { what, .. } if what.contains("not a SQLite database")),
            "{refused:?}"
        );
        assert_eq!(
            files(dir.path()),
            before,
            "the refusal touched the directory"
        );
    }
}

#[tokio::test]
async fn sqlite_a_database_whose_pages_are_garbage_is_refused_as_damaged_and_left_unchanged() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("authority.sqlite");
    create_sqlite(&path, PROJECT_A).await;
    // Keep SQLite's 100-byte header, overwrite the rest of the file.
    let mut bytes = std::fs::read(&path).unwrap();
    for (i, byte) in bytes.iter_mut().enumerate().skip(100) {
        *byte = (i % 251) as u8;
    }
    std::fs::write(&path, &bytes).unwrap();
    let before = files(dir.path());

    let refused = MembershipStore::open_sqlite(&path, &owner_of(PROJECT_A), NOW)
        .await
        .unwrap_err();
    assert!(matches!(refused, StoreError::Damaged { .. }), "{refused:?}");
    assert!(refused.to_string().contains("damaged"), "{refused}");
    assert_eq!(
        files(dir.path()),
        before,
        "the refusal touched the directory"
    );
}

#[tokio::test]
async fn sqlite_a_database_without_tables_is_refused_and_left_unchanged() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("authority.sqlite");
    // Switching to the write-ahead log writes SQLite's header, and nothing else.
    let conn = SqliteConnection::connect_with(
        &SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal),
    )
    .await
    .unwrap();
    conn.close().await.unwrap();
    let before = files(dir.path());
    assert_eq!(before.len(), 1);

    let refused = MembershipStore::open_sqlite(&path, &owner_of(PROJECT_A), NOW)
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, StoreError::NoProject { found, .. } if found.contains("no tables")),
        "{refused:?}"
    );
    assert_eq!(
        files(dir.path()),
        before,
        "the refusal touched the directory"
    );
}

#[tokio::test]
async fn sqlite_a_database_of_something_else_is_refused_and_left_unchanged() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("authority.sqlite");
    let mut conn = SqliteConnection::connect_with(
        &SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true),
    )
    .await
    .unwrap();
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY); INSERT INTO orders VALUES (1)")
        .await
        .unwrap();
    conn.close().await.unwrap();
    let before = files(dir.path());

    let refused = MembershipStore::open_sqlite(&path, &owner_of(PROJECT_A), NOW)
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, StoreError::NoProject { found, .. } if found.contains("\"orders\"")),
        "{refused:?}"
    );
    let refused = MembershipStore::create_sqlite(&path, &owner_of(PROJECT_A), NOW)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, StoreError::Occupied { .. }),
        "{refused:?}"
    );
    assert_eq!(
        files(dir.path()),
        before,
        "the refusals touched the directory"
    );
}

#[tokio::test]
async fn sqlite_a_store_missing_one_of_kiths_tables_is_refused_as_damaged_and_left_unchanged() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("authority.sqlite");
    create_sqlite(&path, PROJECT_A).await;
    let mut conn = SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(&path))
        .await
        .unwrap();
    conn.execute("DROP TABLE members").await.unwrap();
    conn.close().await.unwrap();
    let before = files(dir.path());

    let refused = MembershipStore::open_sqlite(&path, &owner_of(PROJECT_A), NOW)
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, StoreError::Damaged { what, .. } if what.contains("\"members\"")),
        "{refused:?}"
    );
    assert_eq!(
        files(dir.path()),
        before,
        "the refusal touched the directory"
    );
}

// ---- PostgreSQL databases -----------------------------------------------------------------

#[tokio::test]
async fn postgres_an_empty_database_is_refused_and_left_without_tables() {
    let db = TestDb::postgres();
    let refused = MembershipStore::open(&db.location(), &owner_of(PROJECT_A), NOW)
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, StoreError::NoProject { found, .. } if found.contains("no tables")),
        "{refused:?}"
    );
    assert!(
        refused.to_string().contains("PostgreSQL database"),
        "{refused}"
    );
    assert_eq!(
        db.snapshot().await,
        Snapshot::default(),
        "the refusal made tables"
    );
}

#[tokio::test]
async fn postgres_a_database_of_something_else_is_refused_and_left_unchanged() {
    let db = TestDb::postgres();
    db.execute("CREATE TABLE orders (id BIGINT PRIMARY KEY); INSERT INTO orders VALUES (1)")
        .await;
    let before = db.snapshot().await;
    let refused = MembershipStore::open(&db.location(), &owner_of(PROJECT_A), NOW)
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, StoreError::NoProject { found, .. } if found.contains("\"orders\"")),
        "{refused:?}"
    );
    let refused = MembershipStore::create(&db.location(), &owner_of(PROJECT_A), NOW)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, StoreError::Occupied { .. }),
        "{refused:?}"
    );
    assert_eq!(
        db.snapshot().await,
        before,
        "the refusals changed the database"
    );
}

// ---- helpers ------------------------------------------------------------------------------

/// The `n`th identifier of the test.
fn identifier(n: u64) -> Identifier {
    let mut bytes = [0u8; 20];
    bytes[..8].copy_from_slice(&n.to_be_bytes());
    bytes[19] = 0x5a;
    Identifier::from_bytes(bytes)
}

fn owner_of(project_id: &str) -> StoreOwner {
    StoreOwner {
        project_id: project_id.to_owned(),
        authority: None,
    }
}

fn member(identifier: Identifier, added_by: Identifier) -> Member {
    Member {
        identifier,
        attributes: BTreeMap::from([("role".to_owned(), "member".to_owned())]),
        added_at: NOW,
        added_by,
        via: Member::VIA_ADMIN.to_owned(),
        credential_ttl: None,
        changed_at: None,
    }
}

/// Create `project_id`'s store on `db`.
async fn create(db: &TestDb, project_id: &str) -> MembershipStore {
    MembershipStore::create(&db.location(), &owner_of(project_id), NOW)
        .await
        .unwrap()
}

/// Create `project_id`'s store in the SQLite file at `path`, and close it.
async fn create_sqlite(path: &Path, project_id: &str) {
    MembershipStore::create_sqlite(path, &owner_of(project_id), NOW)
        .await
        .unwrap()
        .close()
        .await;
}

/// Every file in `dir`: its name, bytes and modification time.
fn files(dir: &Path) -> Vec<(String, Vec<u8>, SystemTime)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let metadata = entry.metadata().unwrap();
            (
                entry.file_name().to_string_lossy().into_owned(),
                std::fs::read(entry.path()).unwrap(),
                metadata.modified().unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

/// What a PostgreSQL database holds: each table with a digest of its rows.
#[derive(Debug, Default, PartialEq, Eq)]
struct Snapshot {
    /// SQLite: every file of the directory.
    files: Vec<(String, Vec<u8>, SystemTime)>,
    /// PostgreSQL: every table of the schema, and a digest of its rows.
    tables: Vec<(String, String)>,
}

/// A fresh database for one test, on either backend.
enum TestDb {
    Sqlite { dir: TempDir, path: PathBuf },
    Postgres(TempDatabase),
}

impl TestDb {
    fn sqlite() -> Self {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("authority.sqlite");
        TestDb::Sqlite { dir, path }
    }

    fn postgres() -> Self {
        TestDb::Postgres(TempDatabase::for_test(
            "the project stamp tests",
            "kith_stamp_test",
        ))
    }

    async fn run_on_sqlite(scenario: impl AsyncFnOnce(&TestDb)) {
        scenario(&Self::sqlite()).await;
    }

    async fn run_on_postgres(scenario: impl AsyncFnOnce(&TestDb)) {
        scenario(&Self::postgres()).await;
    }

    /// What [`MembershipStore::open`] takes: a file path or a URL.
    fn location(&self) -> String {
        match self {
            TestDb::Sqlite { path, .. } => path.to_str().unwrap().to_owned(),
            TestDb::Postgres(database) => database.url.clone(),
        }
    }

    /// Everything the store is: the directory's files, or the database's tables and rows.
    async fn snapshot(&self) -> Snapshot {
        match self {
            TestDb::Sqlite { dir, .. } => Snapshot {
                files: files(dir.path()),
                tables: Vec::new(),
            },
            TestDb::Postgres(database) => {
                let mut conn = PgConnection::connect(&database.url).await.unwrap();
                let names: Vec<String> = sqlx::query_scalar(
                    "SELECT tablename::text FROM pg_catalog.pg_tables \
                     WHERE schemaname = current_schema() ORDER BY tablename",
                )
                .fetch_all(&mut conn)
                .await
                .unwrap();
                let mut tables = Vec::new();
                for name in names {
                    let digest: Option<String> = sqlx::query_scalar(&format!(
                        "SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM {name} t"
                    ))
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
                    tables.push((name, digest.unwrap_or_default()));
                }
                conn.close().await.unwrap();
                Snapshot {
                    files: Vec::new(),
                    tables,
                }
            }
        }
    }

    /// Run `sql` on a connection of its own.
    async fn execute(&self, sql: &str) {
        match self {
            TestDb::Sqlite { path, .. } => {
                let mut conn =
                    SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(path))
                        .await
                        .unwrap();
                conn.execute(sql).await.unwrap();
                conn.close().await.unwrap();
            }
            TestDb::Postgres(database) => {
                let mut conn = PgConnection::connect(&database.url).await.unwrap();
                conn.execute(sql).await.unwrap();
                conn.close().await.unwrap();
            }
        }
    }

    /// How many rows the stamp table has.
    async fn stamp_rows(&self) -> i64 {
        let sql = "SELECT count(*) AS n FROM project_stamp";
        match self {
            TestDb::Sqlite { path, .. } => {
                let mut conn =
                    SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(path))
                        .await
                        .unwrap();
                let n = sqlx::query(sql)
                    .fetch_one(&mut conn)
                    .await
                    .unwrap()
                    .get("n");
                conn.close().await.unwrap();
                n
            }
            TestDb::Postgres(database) => {
                let mut conn = PgConnection::connect(&database.url).await.unwrap();
                let n = sqlx::query(sql)
                    .fetch_one(&mut conn)
                    .await
                    .unwrap()
                    .get("n");
                conn.close().await.unwrap();
                n
            }
        }
    }

    /// Make the store as the kith before the stamp left it: its migrations (those before
    /// the stamp's) applied by sqlx's migrator and, `with_data`, a member added by an admin
    /// with its audit entry; no stamp.
    async fn legacy_store(&self, with_data: bool) {
        let dialect = match self {
            TestDb::Sqlite { .. } => "sqlite",
            TestDb::Postgres(_) => "postgres",
        };
        let migrations = TempDir::new().unwrap();
        let source = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(dialect);
        let mut names: Vec<_> = std::fs::read_dir(&source)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        names.sort();
        for name in names.iter().take(MIGRATIONS_BEFORE_THE_STAMP) {
            std::fs::copy(source.join(name), migrations.path().join(name)).unwrap();
        }
        let migrator = Migrator::new(migrations.path()).await.unwrap();
        assert_eq!(migrator.iter().count(), MIGRATIONS_BEFORE_THE_STAMP);
        // One connection each, closed before this returns: a pool may hand a connection
        // back after it was closed, and leave it open.
        match self {
            TestDb::Sqlite { path, .. } => {
                let mut conn = SqliteConnection::connect_with(
                    &SqliteConnectOptions::new()
                        .filename(path)
                        .create_if_missing(true)
                        .journal_mode(SqliteJournalMode::Wal),
                )
                .await
                .unwrap();
                migrator.run(&mut conn).await.unwrap();
                conn.close().await.unwrap();
            }
            TestDb::Postgres(database) => {
                let mut conn = PgConnection::connect(&database.url).await.unwrap();
                migrator.run(&mut conn).await.unwrap();
                conn.close().await.unwrap();
            }
        }
        if with_data {
            let (member, admin) = (identifier(2), identifier(1));
            self.execute(&format!(
                "INSERT INTO members (identifier, attributes, added_at, added_by, via) \
                 VALUES ('{member}', '{{\"role\":\"member\"}}', {NOW}, '{admin}', 'admin'); \
                 INSERT INTO audit (at, actor, action, subject, detail) \
                 VALUES ({NOW}, '{admin}', 'member.added', '{member}', 'via=admin')"
            ))
            .await;
        }
    }
}
