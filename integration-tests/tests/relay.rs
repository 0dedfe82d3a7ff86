//! Relays end to end with the `kith` binary: an authority daemon (the project node), a node
//! that is reached only through its relay, members that may and may not use it, and a
//! `kill -9` of the relayed node.

mod common;

use std::time::{Duration, Instant};

use common::{identifier, log, project_with};

/// 5 s: how soon after the relayed node is back messages must flow again (issue 6).
const BACK_WITHIN: Duration = Duration::from_secs(5);

/// Where relay `db` of project `acme` reaches its node's echo, end to end.
const THROUGH_RELAY: &str = "/project/acme/service/forward_to_db/secure/api/service/echo";

#[test]
fn a_relay_carries_an_end_to_end_channel_and_comes_back_after_kill_9() {
    let k = project_with(&[
        ("db-node", &["ockam-relay=db"]),
        ("web-node", &["component=web"]),
        ("other-node", &["component=other"]),
    ]);
    let created = k.json(&["relay", "create", "db", "--at", "db-node"]);
    assert_eq!(created["state"], "up", "{created}");
    assert_eq!(created["route"], "/project/acme/service/forward_to_db");
    assert_eq!(created["relay"]["owner"], identifier(&k, "db-node"));

    // End to end: the channel's peer is the relayed node itself, not the project node.
    let sent = k.json(&[
        "message",
        "send",
        "hello",
        "--from",
        "web-node",
        "--to",
        THROUGH_RELAY,
    ]);
    assert_eq!(sent["reply"], "hello");
    assert_eq!(sent["peer"], identifier(&k, "db-node"));

    // The relayed node's policy decides who reaches its echo: not a member without
    // component=web, although it reaches the relay.
    let refused = k.run(&[
        "message",
        "send",
        "hello",
        "--from",
        "other-node",
        "--to",
        THROUGH_RELAY,
        "--timeout",
        "2s",
    ]);
    assert_eq!(refused.code, Some(1), "{}", refused.stdout);
    assert!(log(&k, "db-node").contains("refused by the incoming policy"));

    // kill -9 the relayed node; once it is back, the same relay name works again by itself.
    k.kill_9("db-node");
    k.ok(&["node", "start", "db-node"]);
    let back = Instant::now();
    loop {
        let r = k.run(&[
            "message",
            "send",
            "again",
            "--from",
            "web-node",
            "--to",
            THROUGH_RELAY,
            "--timeout",
            "1s",
        ]);
        if r.code == Some(0) {
            assert_eq!(r.stdout.trim(), "again");
            break;
        }
        assert!(
            back.elapsed() < BACK_WITHIN,
            "no message through the relay {BACK_WITHIN:?} after the node was back: {}\nlog: {}",
            r.stderr,
            log(&k, "db-node")
        );
    }
    let shown = k.json(&["relay", "show", "db"]);
    assert_eq!(shown["state"], "up", "{shown}");
    assert_eq!(shown["node"], "db-node");

    // Deleting it stops the keeping and frees the name at the project node.
    let deleted = k.json(&["relay", "delete", "db"]);
    assert_eq!(deleted["deleted_at_project_node"], "deleted", "{deleted}");
    assert_eq!(k.json(&["relay", "list"]), serde_json::json!([]));
    let gone = k.run(&[
        "message",
        "send",
        "hello",
        "--from",
        "web-node",
        "--to",
        THROUGH_RELAY,
        "--timeout",
        "2s",
    ]);
    assert_eq!(gone.code, Some(1));
}

#[test]
fn only_the_name_a_credential_grants_can_be_relayed() {
    let k = project_with(&[
        ("db-node", &["ockam-relay=db"]),
        ("web-node", &["component=web"]),
    ]);
    // A member without ockam-relay.
    let e = k.fails(&["relay", "create", "db", "--to", "web-node"]);
    assert!(e.contains("ockam-relay=db"), "{e}");
    assert!(e.contains("has no ockam-relay attribute"), "{e}");
    // A member with ockam-relay=db, for another name.
    let e = k.fails(&["relay", "create", "other", "--to", "db-node"]);
    assert!(e.contains("ockam-relay=other"), "{e}");
    assert!(e.contains("yours has ockam-relay=db"), "{e}");
    // A node whose identity is not a member: no credential to present.
    k.ok(&["identity", "create", "stranger"]);
    k.json(&["node", "create", "stranger-node", "--identity", "stranger"]);
    let started = Instant::now();
    let e = k.fails(&["relay", "create", "db", "--to", "stranger-node"]);
    assert!(e.contains("ockam-relay=db"), "{e}");
    assert!(e.contains("no valid credential"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a refusal is an answer, not a timeout: {:?}",
        started.elapsed()
    );
    // Nothing was kept or saved for the refused relays.
    assert_eq!(k.json(&["relay", "list"]), serde_json::json!([]));
    let config = std::fs::read_to_string(k.home().join("nodes/web-node/config.json")).unwrap();
    assert!(!config.contains("relays"), "{config}");
    // The granted one works, and creating it again is a no-op.
    k.json(&["relay", "create", "db", "--to", "db-node"]);
    let again = k.json(&["relay", "create", "db", "--to", "db-node"]);
    assert_eq!(again["state"], "up");
    assert_eq!(k.json(&["relay", "list"]).as_array().unwrap().len(), 1);

    // The admin (the default identity) sees it at the project node, and can free the name.
    let held = k.json(&["relay", "list", "--at", "/project/acme"]);
    assert_eq!(held[0]["name"], "db", "{held}");
    assert_eq!(held[0]["owner"], identifier(&k, "db-node"));
    let freed = k.json(&["relay", "delete", "db", "--at", "/project/acme"]);
    assert_eq!(freed["owner"], identifier(&k, "db-node"));
    // (db-node's keeper registers db again at its next heartbeat: it still holds the
    // attribute.) A name nobody holds is an error that says so.
    let e = k.fails(&["relay", "delete", "nothing", "--at", "/project/acme"]);
    assert!(e.contains("there is no relay \"nothing\""), "{e}");
}

#[test]
fn bad_relay_names_are_refused_clearly_before_anything_is_asked() {
    let k = project_with(&[("db-node", &["ockam-relay=db"])]);
    let long = "x".repeat(10 * 1024);
    for (name, says) in [
        ("a/b", "'/' at position 2"),
        ("../db", "'.' at position 1"),
        ("db\u{7}", "'\\u{7}' at position 3"),
        ("db\nx", "'\\n' at position 3"),
        (long.as_str(), "10240 bytes long"),
        ("", "empty"),
    ] {
        let r = k.run(&["relay", "create", name, "--to", "db-node"]);
        assert_eq!(r.code, Some(1), "{name:?}");
        assert!(r.stderr.contains(says), "{name:?}: {}", r.stderr);
        assert!(
            r.stderr.len() < 400,
            "the error repeats the name: {}",
            r.stderr
        );
    }
    assert_eq!(k.json(&["relay", "list"]), serde_json::json!([]));
    // With neither a name nor --to: the one member node, under its own name.
    let e = k.fails(&["relay", "create"]);
    assert!(e.contains("ockam-relay=db-node"), "{e}");
    let e = k.fails(&[
        "relay",
        "create",
        "db",
        "--to",
        "db-node",
        "--at",
        "/ip4/127.0.0.1/tcp/1",
    ]);
    assert!(e.contains("/project/NAME"), "{e}");
}

#[test]
fn relay_list_answers_while_a_create_waits_on_a_silent_project_node() {
    let k = project_with(&[("db-node", &["ockam-relay=db"])]);
    // The project node's route now leads to a listener that accepts and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let path = k.home().join("projects/acme.json");
    let mut project: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    project["project_node"]["route"] = format!("/ip4/127.0.0.1/tcp/{port}").into();
    std::fs::write(&path, project.to_string()).unwrap();

    let mut create = k
        .command(&[
            "relay",
            "create",
            "db",
            "--to",
            "db-node",
            "--timeout",
            "20s",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The daemon is inside the create once it has dialed the project node.
    let (_held, _) = silent.accept().unwrap();
    let listed = k.json(&["relay", "list"]);
    assert_eq!(listed, serde_json::json!([]));
    create.kill().unwrap();
    create.wait().unwrap();
}

/// 2 s: how soon a relay command must fail, or a relay be shown down, once the cause is
/// known (a refused connection is known at once; a handshake or heartbeat timeout would
/// take 3 to 10 s).
const KNOWN_AT_ONCE: Duration = Duration::from_secs(2);

/// Run `kith relay show db` until `f` holds for its JSON, for at most `limit`; its JSON then.
fn relay_shown(
    k: &common::Kith,
    limit: Duration,
    what: &str,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let shown = k.json(&["relay", "show", "db"]);
        if f(&shown) {
            return shown;
        }
        assert!(
            started.elapsed() < limit,
            "relay db was not {what} within {limit:?}: {shown}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn relay_create_against_a_stopped_project_node_fails_at_once_and_keeps_nothing_unless_asked() {
    let k = project_with(&[("db-node", &["ockam-relay=db"])]);
    k.ok(&["node", "stop", "authority"]);
    let started = Instant::now();
    let e = k.fails(&["relay", "create", "db", "--to", "db-node"]);
    assert!(
        started.elapsed() < KNOWN_AT_ONCE,
        "a refused connection took {:?} to report",
        started.elapsed()
    );
    assert!(e.contains("cannot reach the project node"), "{e}");
    assert!(e.contains("Connection refused"), "{e}");
    assert!(!e.contains("is up"), "{e}");
    // Nothing half-written: not kept, not saved.
    assert_eq!(k.json(&["relay", "list"]), serde_json::json!([]));
    let config = std::fs::read_to_string(k.home().join("nodes/db-node/config.json")).unwrap();
    assert!(!config.contains("relays"), "{config}");

    // Asked to keep it anyway: the command still fails, and says the relay is kept.
    let e = k.fails(&[
        "relay",
        "create",
        "db",
        "--to",
        "db-node",
        "--keep-on-failure",
    ]);
    assert!(e.contains("Connection refused"), "{e}");
    assert!(e.contains("node db-node keeps it and retries it"), "{e}");
    let shown = k.json(&["relay", "show", "db"]);
    assert_eq!(shown["state"], "reconnecting", "{shown}");
    assert!(
        shown["last_error"][1]
            .as_str()
            .unwrap()
            .contains("Connection refused"),
        "{shown}"
    );
    let config = std::fs::read_to_string(k.home().join("nodes/db-node/config.json")).unwrap();
    assert!(config.contains("relays"), "{config}");
    // Once the project node is back, the kept relay comes up by itself.
    k.ok(&["node", "start", "authority"]);
    relay_shown(&k, BACK_WITHIN * 2, "up again", |s| s["state"] == "up");
}

#[test]
fn a_kept_relay_is_shown_down_when_its_project_node_stops_and_create_confirms_it_again() {
    let k = project_with(&[("db-node", &["ockam-relay=db"])]);
    let created = k.json(&["relay", "create", "db", "--to", "db-node"]);
    assert_eq!(created["state"], "up", "{created}");

    // The channel to the project node ends with it: down at once, with the reason, not
    // after a heartbeat times out.
    k.ok(&["node", "stop", "authority"]);
    let down = relay_shown(&k, KNOWN_AT_ONCE, "shown down", |s| s["state"] != "up");
    assert!(down["last_error"][1].is_string(), "{down}");

    // Creating it again is not answered from the kept state: the project node must
    // confirm it now, and it is gone.
    let started = Instant::now();
    let e = k.fails(&["relay", "create", "db", "--to", "db-node"]);
    assert!(started.elapsed() < KNOWN_AT_ONCE, "{:?}", started.elapsed());
    assert!(e.contains("cannot reach the project node"), "{e}");
    assert!(e.contains("still keeps relay db"), "{e}");

    // Back, and confirmed again by create.
    k.ok(&["node", "start", "authority"]);
    let again = k.json(&["relay", "create", "db", "--to", "db-node"]);
    assert_eq!(again["state"], "up", "{again}");
}

#[test]
fn a_kept_relay_whose_owner_is_no_longer_a_member_is_not_confirmed_up() {
    let k = project_with(&[("db-node", &["ockam-relay=db"])]);
    k.json(&["relay", "create", "db", "--to", "db-node"]);
    k.ok(&["project", "member", "delete", &identifier(&k, "db-node")]);
    let started = Instant::now();
    let e = k.fails(&["relay", "create", "db", "--to", "db-node"]);
    assert!(started.elapsed() < KNOWN_AT_ONCE, "{:?}", started.elapsed());
    // The project node knows at once: it refuses the deleted member's channel.
    assert!(e.contains("credential revoked"), "{e}");
    relay_shown(&k, KNOWN_AT_ONCE, "shown down", |s| s["state"] != "up");
}
