//! Throwaway PostgreSQL databases for tests and benches, on the server
//! `KITH_TEST_POSTGRES_URL` names (`eval "$(bash .ci/postgres)"` starts one and sets it).
//!
//! One file serves every suite that needs PostgreSQL: this crate's tests and benches use it
//! as `kith_integration_tests::postgres`, and `kith-authority`'s own tests include it by
//! path (that crate cannot depend on this one).

#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::{Connection, Executor, PgConnection};

/// The variable that names the server: a URL whose role may create databases.
pub const POSTGRES_URL_VARIABLE: &str = "KITH_TEST_POSTGRES_URL";

/// What goes wrong talking to the server.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// The server's URL, or a message that says how to get one (`who` names the suite, e.g.
/// "the membership store tests").
pub fn server_url(who: &str) -> Result<String, String> {
    std::env::var(POSTGRES_URL_VARIABLE).map_err(|_| {
        format!(
            "{POSTGRES_URL_VARIABLE} is not set, and {who} must also run on PostgreSQL. Start a \
             local server and set it with:\n\n    eval \"$(bash .ci/postgres)\"\n"
        )
    })
}

/// A database made for one test or run, dropped (with any connections still open to it)
/// when this value is, also while a failed test unwinds.
pub struct TempDatabase {
    admin_url: String,
    name: String,
    /// The URL of the new database.
    pub url: String,
}

impl TempDatabase {
    /// A new database on the server at `admin_url`, named `PREFIX_…` uniquely.
    pub fn create(admin_url: &str, prefix: &str) -> Result<Self, Error> {
        static SEQUENCE: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "{prefix}_{}_{nanos:x}_{}",
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        );
        let url = with_database(admin_url, &name)?;
        on_server(admin_url, format!("CREATE DATABASE {name}")).map_err(|e| {
            format!(
                "cannot create a database through {POSTGRES_URL_VARIABLE}; is the server \
                 running? (eval \"$(bash .ci/postgres)\" starts one): {e}"
            )
        })?;
        Ok(Self {
            admin_url: admin_url.to_owned(),
            name,
            url,
        })
    }

    /// For tests: a new database on the server the environment names, or a panic that says
    /// how to start one.
    pub fn for_test(who: &str, prefix: &str) -> Self {
        let admin_url = server_url(who).unwrap_or_else(|e| panic!("{e}"));
        Self::create(&admin_url, prefix).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for TempDatabase {
    fn drop(&mut self) {
        // It must not panic (a failed test may be unwinding): report and go on.
        let statement = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = on_server(&self.admin_url, statement) {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}

/// Run one statement on the server at `url`, on a thread and runtime of its own, so that
/// it works from synchronous code, from async code and from `Drop`.
fn on_server(url: &str, statement: String) -> Result<(), Error> {
    let url = url.to_owned();
    let worker = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let mut admin = PgConnection::connect(&url).await?;
            admin.execute(statement.as_str()).await?;
            admin.close().await?;
            Ok::<_, Error>(())
        })
    });
    worker
        .join()
        .map_err(|_| "the database statement's thread panicked")?
}

/// `url` with its database replaced by `database`.
pub fn with_database(url: &str, database: &str) -> Result<String, Error> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{POSTGRES_URL_VARIABLE} is not a postgres:// URL"))?;
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, format!("?{query}")),
        None => (rest, String::new()),
    };
    let authority = rest
        .split_once('/')
        .map_or(rest, |(authority, _)| authority);
    Ok(format!("{scheme}://{authority}/{database}{query}"))
}
