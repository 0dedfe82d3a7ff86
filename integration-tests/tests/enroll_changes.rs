//! Membership changes through the real `kith` binary (DESIGN §5, issue 16): re-enrolling an
//! existing member adds (or, with `--replace`, replaces) its attributes and says what
//! changed; `project member update` changes attributes, enrollers never the role, and the
//! audit log names who did it; an enrollment whose answer is lost in a crash of the
//! authority is retried by `kith project enroll` without spending a second use.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Kith, identifier};
use kith_node::testing::until_blocking;

/// 60 s: bounds the wait for the enroll command that outlives the authority's crash; a pass
/// takes a few seconds.
const LIMIT: Duration = Duration::from_secs(60);

/// A new ticket with these attributes (and `extra` options), as text.
fn ticket(k: &Kith, attributes: &[&str], extra: &[&str]) -> String {
    let mut args = vec!["project", "ticket"];
    for a in attributes {
        args.extend(["--attribute", a]);
    }
    args.extend(extra);
    k.ok(&args).trim().to_owned()
}

/// The audit log's entries, oldest first or newest first as the command prints them.
fn audit(k: &Kith) -> Vec<serde_json::Value> {
    let v = k.json(&["project", "audit", "--limit", "100"]);
    v.as_array()
        .cloned()
        .or_else(|| v["items"].as_array().cloned())
        .unwrap_or_else(|| panic!("an audit list: {v}"))
}

#[test]
fn re_enrolling_with_a_second_ticket_adds_its_attributes_and_replace_replaces_them() {
    let k = Kith::new();
    k.json(&["authority", "create", "--project", "acme"]);
    k.ok(&["identity", "create", "m"]);
    let first = ticket(&k, &["component=web", "zone=eu"], &[]);
    let out = k.ok(&["project", "enroll", &first, "--identity", "m"]);
    assert!(
        out.contains("(attributes: {component=web, zone=eu})"),
        "a new member shows its attributes: {out}"
    );

    // A second ticket: its attributes are added, its values win a clash.
    let second = ticket(&k, &["zone=us", "tier=2"], &[]);
    let out = k.ok(&["project", "enroll", &second, "--identity", "m"]);
    assert!(
        out.contains(
            "already a member; attributes: {component=web, zone=eu} -> {component=web, tier=2, zone=us}"
        ),
        "{out}"
    );

    // --replace: only the ticket's attributes are left.
    let third = ticket(&k, &["role=db"], &[]);
    let v = k.json(&["project", "enroll", &third, "--identity", "m", "--replace"]);
    assert_eq!(v["before"]["component"], "web", "{v}");
    assert_eq!(v["before"]["zone"], "us", "{v}");
    assert_eq!(v["attributes"]["role"], "db", "{v}");
    assert!(v["attributes"].get("component").is_none(), "{v}");
    assert_eq!(v["retried"], false, "{v}");

    let id = identifier(&k, "m");
    let shown = k.json(&["project", "member", "show", &id]);
    assert_eq!(shown["attributes"], serde_json::json!({"role": "db"}));
}

#[test]
fn member_update_changes_attributes_refuses_an_enroller_the_role_and_is_audited() {
    let k = Kith::new();
    k.json(&["authority", "create", "--project", "acme"]);
    let admin = k.json(&["identity", "show"])["identifier"]
        .as_str()
        .unwrap()
        .to_owned();
    k.ok(&["identity", "create", "m"]);
    let t = ticket(&k, &["component=web"], &[]);
    k.ok(&["project", "enroll", &t, "--identity", "m"]);
    let m = identifier(&k, "m");

    let out = k.ok(&[
        "project",
        "member",
        "update",
        &m,
        "-a",
        "zone=eu",
        "--remove",
        "component",
    ]);
    assert_eq!(
        out.trim(),
        format!("Updated {m}: {{component=web}} -> {{zone=eu}}")
    );
    let v = k.json(&["project", "member", "update", &m, "-a", "tier=2"]);
    assert_eq!(v["before"]["attributes"], serde_json::json!({"zone": "eu"}));
    assert_eq!(
        v["after"]["attributes"],
        serde_json::json!({"tier": "2", "zone": "eu"})
    );
    // Nothing to change is refused before anything is sent.
    let e = k.fails(&["project", "member", "update", &m]);
    assert!(e.contains("nothing to change"), "{e}");

    // An enroller changes attributes, never the role.
    k.ok(&["identity", "create", "e"]);
    let t = ticket(&k, &[], &["--enroller"]);
    k.ok(&["project", "enroll", &t, "--identity", "e"]);
    let enroller = identifier(&k, "e");
    k.ok(&[
        "project",
        "member",
        "update",
        &m,
        "-a",
        "zone=us",
        "--identity",
        "e",
    ]);
    let e = k.fails(&[
        "project",
        "member",
        "update",
        &m,
        "-a",
        "ockam-role=enroller",
        "--identity",
        "e",
    ]);
    assert!(e.contains("ockam-role"), "{e}");
    let e = k.fails(&[
        "project",
        "member",
        "update",
        &m,
        "--remove",
        "ockam-role",
        "--identity",
        "e",
    ]);
    assert!(e.contains("ockam-role"), "{e}");
    let shown = k.json(&["project", "member", "show", &m]);
    assert_eq!(
        shown["attributes"],
        serde_json::json!({"tier": "2", "zone": "us"})
    );

    let updates: Vec<(String, String)> = audit(&k)
        .iter()
        .filter(|e| e["action"] == "member.updated")
        .map(|e| {
            assert_eq!(e["subject"], m.as_str(), "{e}");
            (
                e["actor"].as_str().unwrap().to_owned(),
                e["detail"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(updates.len(), 3, "{updates:?}");
    let actors: Vec<&str> = updates.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(
        actors.iter().filter(|a| **a == admin).count(),
        2,
        "{actors:?}"
    );
    assert_eq!(
        actors.iter().filter(|a| **a == enroller).count(),
        1,
        "{actors:?}"
    );
    assert!(
        updates
            .iter()
            .any(|(_, d)| d == r#"before={"component":"web"} after={"zone":"eu"}"#),
        "{updates:?}"
    );
}

#[test]
fn an_enrollment_whose_answer_is_lost_in_a_crash_is_retried_without_a_second_use() {
    let k = Kith::new();
    // The authority aborts right after it commits a redemption, before it answers.
    let created = k
        .command(&[
            "authority",
            "create",
            "--project",
            "acme",
            "--output",
            "json",
        ])
        .env("KITH_TEST_ABORT_AFTER_ENROLL_COMMIT", "1")
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let t = ticket(&k, &["component=web"], &["--usage-count", "2"]);
    let ticket_id = k.json(&["project", "ticket", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    k.ok(&["identity", "create", "m"]);
    let mut enroll = k
        .command(&[
            "project",
            "enroll",
            &t,
            "--identity",
            "m",
            "--timeout",
            "5s",
            "--retry-count",
            "100",
            "--retry-delay",
            "100ms",
            "--output",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Wait for the crash, then start the authority again: same state, same port, no hook.
    until_blocking("the authority to abort after committing", || {
        k.status("authority")["status"] != "running"
    });
    assert!(
        enroll.try_wait().unwrap().is_none(),
        "the enroll command gave up while the authority was down"
    );
    k.ok(&["node", "start", "authority"]);

    let started = Instant::now();
    let output = loop {
        if enroll.try_wait().unwrap().is_some() {
            break enroll.wait_with_output().unwrap();
        }
        assert!(
            started.elapsed() < LIMIT,
            "the enroll command did not finish"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "enroll failed: {stderr}");
    // The answer says it was a retry: the commit before the crash took the only use spent.
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(result["attributes"]["component"], "web", "{result}");
    assert_eq!(result["retried"], true, "{result}");

    let tickets = k.json(&["project", "ticket", "list"]);
    assert_eq!(tickets[0]["id"], ticket_id.as_str());
    assert_eq!(
        tickets[0]["uses_left"], 1,
        "exactly one use was spent: {tickets}"
    );
    let redemptions = audit(&k)
        .iter()
        .filter(|e| e["action"] == "ticket.redeemed")
        .count();
    assert_eq!(redemptions, 1);
    let m = identifier(&k, "m");
    assert_eq!(
        k.json(&["project", "member", "show", &m])["identifier"],
        m.as_str()
    );
}
