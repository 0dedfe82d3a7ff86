//! A node from one file: `kith node create --config FILE` brings a node, its membership,
//! relay, outlet and inlet up in one command; applying the same file again changes nothing;
//! a changed file changes only what changed; a bad file names its line and changes nothing;
//! `--dry-run` only plans; `--foreground` fails when the file cannot be applied.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Kith, echo_server};

/// A ticket from the project's authority with these attributes.
fn ticket(k: &Kith, attributes: &[&str]) -> String {
    let mut args = vec!["project", "ticket"];
    for a in attributes {
        args.extend(["--attribute", a]);
    }
    k.ok(&args).trim().to_owned()
}

fn write(k: &Kith, name: &str, text: &str) -> PathBuf {
    let path = k.home().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `kith node create --config FILE` with extra arguments and environment, as JSON.
fn apply(k: &Kith, file: &Path, env: &[(&str, &str)], extra: &[&str]) -> serde_json::Value {
    let mut c = k.command(&["node", "create", "--config", file.to_str().unwrap()]);
    c.args(extra).args(["--output", "json"]);
    for (key, value) in env {
        c.env(key, value);
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "apply {} failed: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The applied changes other than `unchanged`, as `action kind name`.
fn changed(v: &serde_json::Value) -> Vec<String> {
    v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["action"] != "unchanged")
        .map(|c| {
            format!(
                "{} {} {}",
                c["action"].as_str().unwrap(),
                c["kind"].as_str().unwrap(),
                c["name"].as_str().unwrap()
            )
        })
        .collect()
}

/// Send `payload` through `addr` and read what comes back until the far end closes.
fn echo(addr: &str, payload: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(payload).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    got
}

fn config_json(k: &Kith, node: &str) -> String {
    std::fs::read_to_string(k.home().join(format!("nodes/{node}/config.json"))).unwrap()
}

fn pid(k: &Kith, node: &str) -> u64 {
    k.status(node)["pid"].as_u64().unwrap()
}

/// db-node serves the echo server to web members as outlet `app`, reachable through
/// relay db. Line 7 is the outlet's `to:`.
const DB_FILE: &str = "\
name: db-node
identity: db
ticket: ./db.ticket
relays: [db]
tcp-outlets:
  app:
    to: ${ECHO_ADDR}
    allow: 'component = \"web\"'
require-credential: true
";

const WEB_FILE: &str = "\
name: web-node
identity: web
ticket: ${WEB_TICKET}
tcp-inlets:
  echo:
    from: 127.0.0.1:0
    via: db
    to: app
";

/// A project `acme`, db-node's ticket in `db.ticket`, and web-node's ticket to pass in
/// the environment; the echo server's address.
fn project() -> (Kith, String, String) {
    let k = Kith::new();
    k.json(&["authority", "create", "--project", "acme"]);
    std::fs::write(
        k.home().join("db.ticket"),
        ticket(&k, &["component=db", "ockam-relay=db"]),
    )
    .unwrap();
    let web_ticket = ticket(&k, &["component=web"]);
    (k, web_ticket, echo_server())
}

/// Where web-node's inlet listens.
fn inlet_address(k: &Kith) -> String {
    let v = k.json(&["tcp-inlet", "show", "echo", "--at", "web-node"]);
    v["from"].as_str().unwrap().to_owned()
}

#[test]
fn a_file_with_a_ticket_relay_outlet_and_inlet_via_the_relay_brings_up_a_working_portal_and_applying_it_again_changes_nothing()
 {
    let (k, web_ticket, echo_addr) = project();
    let db = write(&k, "db.yaml", DB_FILE);
    let web = write(&k, "web.yaml", WEB_FILE);
    let db_env = [("ECHO_ADDR", echo_addr.as_str())];
    let web_env = [("WEB_TICKET", web_ticket.as_str())];

    let first = apply(&k, &db, &db_env, &[]);
    assert_eq!(
        changed(&first),
        [
            "create identity db",
            "enroll membership db",
            "create node db-node",
            "create relay db",
            "create tcp-outlet app"
        ],
        "{first}"
    );
    let first = apply(&k, &web, &web_env, &[]);
    assert_eq!(
        changed(&first),
        [
            "create identity web",
            "enroll membership web",
            "create node web-node",
            "create tcp-inlet echo"
        ],
        "{first}"
    );

    // The portal works: web-node's inlet, relay db, db-node's outlet, the echo server.
    let addr = inlet_address(&k);
    assert_eq!(
        echo(&addr, b"through the file's portal"),
        b"through the file's portal"
    );

    // Again: nothing to do, no restart, no second enrollment (the tickets are one-time).
    let (db_before, web_before) = (config_json(&k, "db-node"), config_json(&k, "web-node"));
    let (db_pid, web_pid) = (pid(&k, "db-node"), pid(&k, "web-node"));
    for (file, env) in [(&db, &db_env), (&web, &web_env)] {
        let again = apply(&k, file, env, &[]);
        assert!(changed(&again).is_empty(), "{again}");
    }
    assert_eq!(config_json(&k, "db-node"), db_before);
    assert_eq!(config_json(&k, "web-node"), web_before);
    assert_eq!((pid(&k, "db-node"), pid(&k, "web-node")), (db_pid, web_pid));
    assert_eq!(inlet_address(&k), addr, "the inlet kept its port");
    assert_eq!(echo(&addr, b"still"), b"still");

    // Stopped, the node is started by the file, with what it keeps.
    k.ok(&["node", "stop", "web-node"]);
    let started = apply(&k, &web, &web_env, &[]);
    assert_eq!(changed(&started), ["start node web-node"], "{started}");
    assert_eq!(echo(&inlet_address(&k), b"after a start"), b"after a start");
}

#[test]
fn a_changed_file_changes_only_what_changed_and_restarts_only_for_node_settings() {
    let (k, _, echo_addr) = project();
    let db = write(&k, "db.yaml", DB_FILE);
    let env = [("ECHO_ADDR", echo_addr.as_str())];
    apply(&k, &db, &env, &[]);
    let before = pid(&k, "db-node");

    // Another outlet and a new policy on the first: the relay and the node stay as they are.
    let second = echo_server();
    let changed_file = DB_FILE
        .replace("component = \"web\"", "component = \"admin\"")
        .replace(
            "require-credential",
            &format!("  second:\n    to: {second}\nrequire-credential"),
        );
    let db2 = write(&k, "db2.yaml", &changed_file);
    let plan = apply(&k, &db2, &env, &["--dry-run"]);
    assert_eq!(
        changed(&plan),
        ["update tcp-outlet app", "create tcp-outlet second"],
        "{plan}"
    );
    let outlets = k.json(&["tcp-outlet", "list", "--at", "db-node"]);
    assert_eq!(
        outlets.as_array().unwrap().len(),
        1,
        "a dry run changed the node: {outlets}"
    );
    let applied = apply(&k, &db2, &env, &[]);
    assert_eq!(changed(&applied), changed(&plan));
    assert_eq!(
        pid(&k, "db-node"),
        before,
        "an outlet change restarted the node"
    );
    let outlets = k.json(&["tcp-outlet", "list", "--at", "db-node"]);
    let policies: Vec<&str> = outlets
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(policies, ["app", "second"], "{outlets}");
    assert!(
        outlets[0]["policy"].as_str().unwrap().contains("admin"),
        "{outlets}"
    );

    // Back to the first file: the second outlet goes. A node setting restarts the node.
    let back = apply(&k, &db, &env, &[]);
    assert_eq!(
        changed(&back),
        ["delete tcp-outlet second", "update tcp-outlet app"],
        "{back}"
    );
    let open = write(
        &k,
        "open.yaml",
        &DB_FILE.replace("require-credential: true\n", ""),
    );
    let reopened = apply(&k, &open, &env, &[]);
    assert_eq!(
        changed(&reopened),
        ["update node db-node", "restart node db-node"],
        "{reopened}"
    );
    assert_ne!(
        pid(&k, "db-node"),
        before,
        "a settings change did not restart the node"
    );
    let relays = k.json(&["relay", "list", "--at", "db-node"]);
    assert_eq!(relays[0]["name"], "db", "{relays}");
}

#[test]
fn a_file_with_an_error_on_line_7_fails_naming_line_7_and_changes_nothing() {
    let (k, _, echo_addr) = project();
    let env = [("ECHO_ADDR", echo_addr.as_str())];
    let bad = DB_FILE.replace("    to: ${ECHO_ADDR}\n", "    to: nowhere\n");
    assert!(bad.lines().nth(6).unwrap().contains("nowhere"));
    let file = write(&k, "bad.yaml", &bad);
    let identities = k.ok(&["identity", "list"]);
    let err = k.fails(&["node", "create", "--config", file.to_str().unwrap()]);
    assert!(err.contains("line 7"), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    assert!(
        !k.home().join("nodes/db-node").exists(),
        "a bad file made the node"
    );
    assert_eq!(
        k.ok(&["identity", "list"]),
        identities,
        "a bad file made an identity"
    );

    // The ticket was not spent: the good file enrolls with it afterwards.
    let good = write(&k, "db.yaml", DB_FILE);
    apply(&k, &good, &env, &[]);
    let saved = config_json(&k, "db-node");
    // A bad file for an existing node leaves it as it was.
    let err = k.fails(&["node", "create", "--config", file.to_str().unwrap()]);
    assert!(err.contains("line 7"), "{err}");
    assert_eq!(config_json(&k, "db-node"), saved);

    // A variable that is not set is an error at its line, too.
    let r = k.run(&["node", "create", "--config", good.to_str().unwrap()]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains("line 7") && r.stderr.contains("ECHO_ADDR is not set"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_dry_run_prints_the_plan_and_makes_no_identity_node_or_membership() {
    let (k, web_ticket, _) = project();
    let web = write(&k, "web.yaml", WEB_FILE);
    let identities = k.ok(&["identity", "list"]);
    let mut c = k.command(&[
        "node",
        "create",
        "--config",
        web.to_str().unwrap(),
        "--dry-run",
    ]);
    let out = c.env("WEB_TICKET", &web_ticket).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan = String::from_utf8(out.stdout).unwrap();
    assert!(plan.contains("+ create identity web"), "{plan}");
    assert!(plan.contains("+ enroll membership web"), "{plan}");
    assert!(
        plan.contains("/project/acme/service/forward_to_db/secure/api/service/app"),
        "{plan}"
    );
    assert!(!k.home().join("nodes/web-node").exists());
    assert_eq!(k.ok(&["identity", "list"]), identities);
    // The ticket is still unused: enrolling with it by hand works.
    k.ok(&["identity", "create", "someone"]);
    k.ok(&["project", "enroll", &web_ticket, "--identity", "someone"]);
}

#[test]
fn a_foreground_node_whose_file_cannot_be_applied_exits_non_zero_and_stops() {
    let (k, web_ticket, _) = project();
    // The ticket grants no relay name, so relay db is refused by the project node.
    let file = write(
        &k,
        "web.yaml",
        &WEB_FILE.replace("tcp-inlets:", "relays: [db]\ntcp-inlets:"),
    );
    let started = Instant::now();
    let mut c = k.command(&[
        "node",
        "create",
        "--config",
        file.to_str().unwrap(),
        "--foreground",
    ]);
    let mut child = c
        .env("WEB_TICKET", &web_ticket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the foreground node did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("relay db"), "{stderr}");
    let shown = k.status("web-node");
    assert_eq!(shown["status"], "stopped", "{shown}");
}

#[test]
fn options_the_file_holds_are_refused_beside_it_and_the_name_must_agree() {
    let (k, _, _) = project();
    let file = write(&k, "web.yaml", "name: web-node\n");
    let path = file.to_str().unwrap();
    let err = k.fails(&["node", "create", "--config", path, "--identity", "x"]);
    assert!(err.contains("put --identity in the file"), "{err}");
    let err = k.fails(&["node", "create", "other", "--config", path]);
    assert!(
        err.contains("\"other\"") && err.contains("\"web-node\""),
        "{err}"
    );
    let err = k.fails(&["node", "create", "--config", "/nonexistent/kith.yaml"]);
    assert!(err.contains("cannot read /nonexistent/kith.yaml"), "{err}");
}

#[test]
fn the_readme_file_example_plans_as_the_readme_says() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let section = readme
        .split("\n## A node from one file\n")
        .nth(1)
        .expect("the README has the section");
    let yaml = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the section has a yaml block");
    let (k, web_ticket, _) = project();
    let file = write(&k, "web-node.yaml", yaml);
    let plan = apply(&k, &file, &[("WEB_TICKET", &web_ticket)], &["--dry-run"]);
    assert_eq!(
        changed(&plan),
        [
            "create identity web",
            "enroll membership web",
            "create node web-node",
            "create tcp-inlet psql"
        ],
        "{plan}"
    );
    let inlet = &plan["changes"][3]["detail"];
    assert!(
        inlet
            .as_str()
            .unwrap()
            .contains("from 127.0.0.1:15432 to /project/acme/service/forward_to_db/secure/api/service/postgres"),
        "{plan}"
    );
}

#[test]
fn a_daemon_whose_inlet_port_is_taken_fails_saying_so_and_applying_again_once_it_is_free_finishes()
{
    let (k, web_ticket, echo_addr) = project();
    let db = write(&k, "db.yaml", DB_FILE);
    apply(&k, &db, &[("ECHO_ADDR", echo_addr.as_str())], &[]);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let web = write(
        &k,
        "web.yaml",
        &WEB_FILE.replace("127.0.0.1:0", &format!("127.0.0.1:{port}")),
    );

    let mut c = k.command(&["node", "create", "--config", web.to_str().unwrap()]);
    let out = c.env("WEB_TICKET", &web_ticket).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot create inlet echo")
            && stderr.contains("apply")
            && stderr.contains("again to finish"),
        "{stderr}"
    );
    // The node runs, a member, without the inlet: nothing claims what did not happen.
    assert_eq!(k.status("web-node")["status"], "running");
    let inlets = k.json(&["tcp-inlet", "list", "--at", "web-node"]);
    assert_eq!(inlets.as_array().map(Vec::len), Some(0), "{inlets}");

    // Once the port is free, the same file finishes the job and nothing else.
    drop(taken);
    let done = apply(&k, &web, &[("WEB_TICKET", web_ticket.as_str())], &[]);
    assert_eq!(changed(&done), ["create tcp-inlet echo"], "{done}");
    let addr = format!("127.0.0.1:{port}");
    assert_eq!(inlet_address(&k), addr);
    assert_eq!(echo(&addr, b"finished"), b"finished");
}

#[test]
fn a_via_without_a_project_is_refused_saying_nothing_was_changed_and_nothing_is() {
    let k = Kith::new();
    let identities = k.ok(&["identity", "list"]);
    let file = write(
        &k,
        "web.yaml",
        "name: web-node\nidentity: web\ntcp-inlets:\n  echo:\n    from: 127.0.0.1:0\n    via: db\n",
    );
    let err = k.fails(&["node", "create", "--config", file.to_str().unwrap()]);
    assert!(
        err.contains("need a project") && err.ends_with("nothing was changed"),
        "{err}"
    );
    assert!(!k.home().join("nodes/web-node").exists());
    assert_eq!(k.ok(&["identity", "list"]), identities);
}
