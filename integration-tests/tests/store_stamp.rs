//! An authority's store knows its project (DESIGN §5; issue 17, item 5), through the real
//! `kith` binary: an authority node whose store file was emptied, or replaced by another
//! project's, while it was stopped refuses to start — `kith node start` says what it found
//! and how to start a new project deliberately, within a second — and leaves the file as it
//! was; given its own store back, it starts with its tickets. On a shared PostgreSQL
//! database, `kith authority create` without `--project-id` refuses a database that holds a
//! project already.
//!
//! The PostgreSQL test needs a server: `eval "$(bash .ci/postgres)"`.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::Kith;
use kith_integration_tests::postgres::TempDatabase;

/// 1 s: a refusal reaches the user at once (issue 17: "within a second"); it takes tens of
/// milliseconds — the daemon fails before it serves, and `kith node start` reads its reason
/// from the log.
const REFUSAL_LIMIT: Duration = Duration::from_secs(1);

/// The store file of authority node `node`.
fn store_file(k: &Kith, node: &str) -> PathBuf {
    k.home().join("nodes").join(node).join("authority.sqlite")
}

/// The store file and any write-ahead log or shared-memory file beside it: each one's name,
/// bytes and modification time.
fn store_files(path: &Path) -> Vec<(String, Vec<u8>, SystemTime)> {
    ["", "-wal", "-shm", "-journal"]
        .iter()
        .map(|suffix| PathBuf::from(format!("{}{suffix}", path.display())))
        .filter(|p| p.exists())
        .map(|p| {
            let modified = std::fs::metadata(&p).unwrap().modified().unwrap();
            (
                p.display().to_string(),
                std::fs::read(&p).unwrap(),
                modified,
            )
        })
        .collect()
}

/// Create authority node `node` for a new project `project`, cut a ticket there, and stop
/// the node; returns the project's id.
fn stopped_authority_with_a_ticket(k: &Kith, node: &str, project: &str) -> String {
    let created = k.json(&["authority", "create", node, "--project", project]);
    k.ok(&["project", "ticket", "--project", project]);
    k.ok(&["node", "stop", node]);
    // Stopped cleanly: everything is in the one file, nothing beside it.
    assert_eq!(store_files(&store_file(k, node)).len(), 1);
    created["project_id"].as_str().unwrap().to_owned()
}

/// `kith node start NODE`, which must fail at once; its one error line.
fn start_is_refused(k: &Kith, node: &str) -> String {
    let run = k.run(&["node", "start", node]);
    assert_eq!(run.code, Some(1), "node start should fail: {}", run.stdout);
    assert!(
        run.elapsed < REFUSAL_LIMIT,
        "the refusal took {:?}",
        run.elapsed
    );
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one error line expected: {:?}", run.stderr);
    let line = lines[0];
    assert!(
        line.starts_with(&format!("error: node \"{node}\" failed to start: ")),
        "{line}"
    );
    line.to_owned()
}

fn tickets(k: &Kith, project: &str) -> usize {
    k.json(&["project", "ticket", "list", "--project", project])
        .as_array()
        .unwrap()
        .len()
}

#[test]
fn node_start_refuses_a_truncated_store_and_leaves_the_file_unchanged() {
    let k = Kith::new();
    stopped_authority_with_a_ticket(&k, "authority", "acme");
    let path = store_file(&k, "authority");
    let kept = std::fs::read(&path).unwrap();
    std::fs::File::create(&path).unwrap(); // truncate to 0 bytes
    let before = store_files(&path);

    let line = start_is_refused(&k, "authority");
    assert!(line.contains(&path.display().to_string()), "{line}");
    assert!(
        line.contains("holds no kith project: the file is empty (0 bytes)"),
        "{line}"
    );
    assert!(
        line.contains("To start a new project, run `kith authority create"),
        "{line}"
    );
    assert_eq!(
        store_files(&path),
        before,
        "the refused start touched the store"
    );
    // Refusing again changes nothing either: the node never began a project there.
    start_is_refused(&k, "authority");
    assert_eq!(
        store_files(&path),
        before,
        "the refused start touched the store"
    );

    // Its own store back, the node starts with its ticket.
    std::fs::write(&path, kept).unwrap();
    k.json(&["node", "start", "authority"]);
    assert_eq!(tickets(&k, "acme"), 1);
}

#[test]
fn node_start_refuses_another_projects_store_and_leaves_the_file_unchanged() {
    let k = Kith::new();
    let acme = stopped_authority_with_a_ticket(&k, "auth-acme", "acme");
    let other = stopped_authority_with_a_ticket(&k, "auth-other", "other");
    let path = store_file(&k, "auth-acme");
    let kept = std::fs::read(&path).unwrap();
    std::fs::copy(store_file(&k, "auth-other"), &path).unwrap();
    let before = store_files(&path);

    let line = start_is_refused(&k, "auth-acme");
    assert!(
        line.contains(&format!(
            "belongs to project {other} (stamped at Unix time "
        )),
        "{line}"
    );
    assert!(line.contains(&format!("not to project {acme}")), "{line}");
    assert_eq!(
        store_files(&path),
        before,
        "the refused start touched the store"
    );

    std::fs::write(&path, kept).unwrap();
    k.json(&["node", "start", "auth-acme"]);
    assert_eq!(tickets(&k, "acme"), 1);
}

#[test]
fn authority_create_refuses_a_postgres_database_that_holds_a_project_and_leaves_no_node() {
    let db = TempDatabase::for_test("the store stamp tests", "kith_stamp_process_test");
    let first = Kith::new();
    let created = first.json(&[
        "authority",
        "create",
        "--project",
        "acme",
        "--database-url",
        &db.url,
    ]);
    let project_id = created["project_id"].as_str().unwrap();

    let second = Kith::new();
    let line = second.fails(&[
        "authority",
        "create",
        "--project",
        "acme2",
        "--database-url",
        &db.url,
    ]);
    assert!(
        line.contains(&format!(
            "it already holds the store of project {project_id}"
        )),
        "{line}"
    );
    assert!(
        second
            .json(&["node", "list"])
            .as_array()
            .unwrap()
            .is_empty(),
        "the refused authority's node was left behind"
    );
    // The project's own authority goes on.
    first.ok(&["project", "ticket", "--project", "acme"]);
}
