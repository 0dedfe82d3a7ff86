//! An admin can clear a flood of join requests (issue 17 item 7), end to end with the `kith`
//! binary: requests from two addresses fill the authority's global cap; `kith project
//! requests deny --from NETBLOCK` denies exactly those from the netblock, `--all-pending`
//! the rest, each audited once as a bulk decision; a requester waiting is told the reason;
//! and a request filed afterwards is accepted.
//!
//! Two source addresses on one host: the authority listens on `[::]` (both IPv4 and IPv6);
//! some requesters reach it over IPv4 loopback (127.0.0.1), others over IPv6 loopback (::1).

mod common;

use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use common::Kith;

/// 20 s: no step should come near this; it only bounds a failure.
const STEP_LIMIT: Duration = Duration::from_secs(20);

/// File a request as identity `name` (made here) through `reach`, without waiting; its id.
fn file(k: &Kith, name: &str, reach: &[&str]) -> String {
    k.ok(&["identity", "create", name]);
    let mut args = vec!["project", "request", "--identity", name, "--no-wait"];
    args.extend(reach);
    k.ok(&args).trim().to_owned()
}

fn pending_ids(k: &Kith) -> BTreeSet<String> {
    k.json(&["project", "requests", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

fn ids(value: &serde_json::Value) -> BTreeSet<String> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn deny_from_a_netblock_then_all_pending_clears_a_full_queue_with_one_audit_row_each() {
    let admin = Kith::new();
    let (created, over_ipv4) = common::dual_stack_authority(
        &admin,
        &[
            "--max-pending-per-address",
            "3",
            "--max-pending-requests",
            "5",
        ],
    );
    let authority = created["authority_identifier"].as_str().unwrap();
    let admin_id = created["admins"][0].as_str().unwrap();
    let ipv4 = [
        "--authority-route",
        over_ipv4.as_str(),
        "--authority-identity",
        authority,
    ];
    // The project as imported reaches the authority over ::1.
    let ipv6: [&str; 0] = [];

    // Three requests from 127.0.0.1 (its cap) and two from ::1 fill the queue of five.
    let v4_ids: Vec<String> = (0..3)
        .map(|n| file(&admin, &format!("v4-{n}"), &ipv4))
        .collect();
    let from_v4: BTreeSet<String> = v4_ids.iter().cloned().collect();
    let from_v6: BTreeSet<String> = (0..2)
        .map(|n| file(&admin, &format!("v6-{n}"), &ipv6))
        .collect();
    let listed = admin.json(&["project", "requests", "list"]);
    let sources: BTreeSet<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["source"].as_str().unwrap())
        .collect();
    assert_eq!(sources, BTreeSet::from(["127.0.0.1", "::1"]), "{listed:#}");
    admin.ok(&["identity", "create", "late"]);
    let e = admin.fails(&["project", "request", "--identity", "late", "--no-wait"]);
    assert!(e.contains("5 join requests waiting"), "{e}");

    // The first IPv4 requester waits for its decision.
    let waiting = v4_ids[0].clone();
    let (done_tx, done) = mpsc::channel();
    {
        let mut args = vec!["project", "request", "--identity", "v4-0", "--resume"];
        args.push(&waiting);
        args.extend(ipv4);
        let child = admin
            .command(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::spawn(move || done_tx.send(child.wait_with_output().unwrap()));
    }
    // Bad selectors are refused before anything is sent; a bulk denial needs a reason.
    let e = admin.fails(&[
        "project",
        "requests",
        "deny",
        "--from",
        "127.0.0.0/33",
        "--reason",
        "flood",
    ]);
    assert!(e.contains("--from") && e.contains("not a netblock"), "{e}");
    let r = admin.run(&["project", "requests", "deny", "--from", "127.0.0.0/8"]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("--reason"), "{}", r.stderr);
    let r = admin.run(&[
        "project",
        "requests",
        "deny",
        &waiting,
        "--all-pending",
        "--reason",
        "x",
    ]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert_eq!(pending_ids(&admin).len(), 5);

    // --from denies exactly the requests from the netblock, at once.
    let denied = admin.json(&[
        "project",
        "requests",
        "deny",
        "--from",
        "127.0.0.0/8",
        "--reason",
        "flood from the lab",
    ]);
    assert_eq!(denied["denied"], 3, "{denied:#}");
    assert_eq!(denied["selector"], "127.0.0.0/8");
    assert_eq!(ids(&denied["ids"]), from_v4, "{denied:#}");
    assert_eq!(pending_ids(&admin), from_v6);

    // The waiting requester is told, with the reason, as by a single denial.
    let output = done
        .recv_timeout(STEP_LIMIT)
        .expect("the waiting requester was answered");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.lines().last().unwrap(),
        format!("error: the request was denied by {admin_id}: flood from the lab")
    );

    // A netblock with nothing pending denies nothing, and says so.
    let none = admin.ok(&[
        "project",
        "requests",
        "deny",
        "--from",
        "10.0.0.0/8",
        "--reason",
        "flood",
    ]);
    assert_eq!(
        none.trim(),
        "No pending requests from 10.0.0.0/8; nothing was denied."
    );

    // --all-pending denies the rest.
    let rest = admin.ok(&[
        "project",
        "requests",
        "deny",
        "--all-pending",
        "--reason",
        "clearing the queue; ask again",
    ]);
    assert!(rest.starts_with("Denied 2 pending requests: "), "{rest}");
    for id in &from_v6 {
        assert!(rest.contains(id.as_str()), "{rest}");
    }
    assert!(pending_ids(&admin).is_empty());
    let all = admin.json(&["project", "requests", "list", "--all"]);
    for r in all.as_array().unwrap() {
        assert_eq!(r["state"], "denied", "{r}");
        assert_eq!(r["decided_by"], admin_id, "{r}");
    }

    // The audit log: one bulk row per denial that denied something, none per request.
    let audit = admin.json(&["project", "audit", "--limit", "1000"]);
    let entries = audit.as_array().unwrap();
    let bulk: Vec<&serde_json::Value> = entries
        .iter()
        .filter(|e| e["action"] == "request.bulk_denied")
        .collect();
    assert_eq!(bulk.len(), 2, "{audit:#}");
    assert_eq!(bulk[0]["subject"], "127.0.0.0/8");
    assert_eq!(bulk[0]["actor"], admin_id);
    let detail = bulk[0]["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("count=3 reason=\"flood from the lab\" ids="),
        "{detail}"
    );
    assert_eq!(bulk[1]["subject"], "all");
    assert!(
        !entries.iter().any(|e| e["action"] == "request.denied"),
        "{audit:#}"
    );

    // The queue has room again: a request filed now is accepted.
    let late = admin.ok(&["project", "request", "--identity", "late", "--no-wait"]);
    assert_eq!(
        pending_ids(&admin),
        BTreeSet::from([late.trim().to_owned()])
    );
}
