//! Join requests survive the authority: 20 requesters wait while the authority node is
//! killed with `kill -9` and started again; every request is still listed, and each
//! requester's own command completes once its request is approved.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{Kith, identifier};
use kith_node::testing::until_blocking;

/// 20 requesters (issue 7).
const REQUESTERS: usize = 20;

/// 90 s: bounds each wait below; a pass takes a few seconds.
const LIMIT: Duration = Duration::from_secs(90);

/// The pending requests, by requester identifier: (id, code).
fn pending(k: &Kith) -> BTreeMap<String, (String, String)> {
    let listed = k.json(&["project", "requests", "list"]);
    listed
        .as_array()
        .unwrap_or_else(|| panic!("a list: {listed}"))
        .iter()
        .map(|r| {
            let text = |f: &str| {
                r[f].as_str()
                    .unwrap_or_else(|| panic!("{f} in {r}"))
                    .to_owned()
            };
            (text("requester"), (text("id"), text("code")))
        })
        .collect()
}

struct Requester {
    name: String,
    identifier: String,
    child: Child,
}

#[test]
fn twenty_waiting_requesters_survive_a_kill_9_of_the_authority_and_complete_when_approved() {
    let k = Kith::new();
    k.json(&[
        "authority",
        "create",
        "--project",
        "acme",
        "--max-pending-per-address",
        "25",
    ]);
    let mut requesters: Vec<Requester> = (0..REQUESTERS)
        .map(|i| {
            let name = format!("r{i}");
            k.ok(&["identity", "create", &name]);
            let identifier = identifier(&k, &name);
            let child = k
                .command(&[
                    "project",
                    "request",
                    "--identity",
                    &name,
                    "-a",
                    "component=worker",
                    "--timeout",
                    "3m",
                    "--output",
                    "json",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            Requester {
                name,
                identifier,
                child,
            }
        })
        .collect();
    until_blocking("all 20 requests to be listed", || {
        pending(&k).len() == REQUESTERS
    });
    let before = pending(&k);

    // kill -9 the authority while they wait, and start it again.
    k.kill_9("authority");
    k.ok(&["node", "start", "authority"]);

    // Nothing was lost, and no requester filed anew.
    let after = pending(&k);
    assert_eq!(after, before);
    for r in &mut requesters {
        assert!(
            r.child.try_wait().unwrap().is_none(),
            "{} gave up while the authority was down",
            r.name
        );
    }

    // Approve each; each command returns 0 as a member holding its credential.
    for r in &mut requesters {
        let (id, code) = &after[&r.identifier];
        k.ok(&["project", "requests", "approve", id, "--code", code]);
    }
    let started = Instant::now();
    for mut r in requesters {
        let output = loop {
            if r.child.try_wait().unwrap().is_some() {
                break r.child.wait_with_output().unwrap();
            }
            assert!(started.elapsed() < LIMIT, "{} did not finish", r.name);
            std::thread::sleep(Duration::from_millis(20));
        };
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{} failed: {stderr}", r.name);
        let result: serde_json::Value =
            serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}: {}",
                    r.name,
                    String::from_utf8_lossy(&output.stdout)
                )
            });
        assert_eq!(result["attributes"]["component"], "worker", "{result}");
    }
    assert!(pending(&k).is_empty());
}
