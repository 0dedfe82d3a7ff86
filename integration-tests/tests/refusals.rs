//! Every refusal reaches the user at once, with its reason (DESIGN §5, §7): through the
//! `kith` binary, each case a user or an attacker runs into fails within a second (asserted
//! under 2 s on a noisy machine), exits 1, and names the class of the reason in its one
//! `error:` line — never a timeout.

mod common;

use std::time::Duration;

use common::{Kith, Run, project_with};

/// 2 s: the bound asserted for a refusal that DESIGN wants within 1 s.
const FAST: Duration = Duration::from_secs(2);

/// Run `args` with a generous `--timeout`, so that only a refusal can make it fail fast;
/// check that it failed fast with one `error:` line, and return that line.
fn refused(k: &Kith, args: &[&str]) -> String {
    refused_with_input(k, args, None)
}

/// As [`refused`], with `input` on the command's standard input.
fn refused_with_input(k: &Kith, args: &[&str], input: Option<&str>) -> String {
    let mut all = args.to_vec();
    all.extend(["--timeout", "10s"]);
    let r: Run = k.run_with_input(&all, input);
    assert_eq!(r.code, Some(1), "{args:?} did not fail: {}", r.stdout);
    assert!(
        r.elapsed < FAST,
        "{args:?} took {:?} to fail: {}",
        r.elapsed,
        r.stderr
    );
    let errors: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{args:?}: {}", r.stderr);
    eprintln!("{:?} after {:?}: {}", args.first(), r.elapsed, errors[0]);
    errors[0].to_owned()
}

fn send(from: &str, to: &str) -> Vec<String> {
    ["message", "send", "hello", "--from", from, "--to", to]
        .map(str::to_owned)
        .to_vec()
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Relay `db` of project `acme`, then db-node's secure-channel listener.
const THROUGH_RELAY: &str = "/project/acme/service/forward_to_db/secure/api";

#[test]
fn each_refusal_fails_within_a_second_naming_its_class() {
    let k = project_with(&[
        ("db-node", &["ockam-relay=db"]),
        ("web-node", &["component=web"]),
        ("other-node", &["component=other"]),
    ]);
    let up = k.json(&["relay", "create", "db", "--to", "db-node"]);
    assert_eq!(up["state"], "up", "{up}");
    let echo = format!("{THROUGH_RELAY}/service/echo");
    // Admitted, to show the route works at all.
    let sent = k.json(&args(&send("web-node", &echo)));
    assert_eq!(sent["reply"], "hello");

    // A member lacking the attribute db-node's services allow: db-node names the policy.
    let e = refused(&k, &args(&send("other-node", &echo)));
    assert!(e.contains("db-node refused"), "{e}");
    assert!(e.contains("denied by the access policy"), "{e}");
    // Directly, not through the relay: the same.
    let direct = "/node/db-node/secure/api/service/echo";
    let e = refused(&k, &args(&send("other-node", direct)));
    assert!(e.contains("denied by the access policy"), "{e}");

    // No such service at the far end.
    let e = refused(
        &k,
        &args(&send(
            "web-node",
            &format!("{THROUGH_RELAY}/service/nosuch"),
        )),
    );
    assert!(e.contains("has no service"), "{e}");
    assert!(e.contains("nosuch"), "{e}");

    // No relay of that name at the project node.
    let e = refused(
        &k,
        &args(&send(
            "web-node",
            "/project/acme/service/forward_to_nosuch/secure/api/service/echo",
        )),
    );
    assert!(e.contains("has no relay named nosuch"), "{e}");

    // A message larger than a channel carries is refused at the sender.
    let e = refused_with_input(
        &k,
        &["message", "send", "-", "--from", "web-node", "--to", direct],
        Some(&"x".repeat(300_000)),
    );
    assert!(e.contains("too large"), "{e}");
    // One of 70,000 bytes, past what one Noise message holds, arrives whole.
    let large = "y".repeat(70_000);
    let sent = k.json(&[
        "message", "send", &large, "--from", "web-node", "--to", direct,
    ]);
    assert_eq!(sent["reply"].as_str().map(str::len), Some(70_000));

    // The relayed node stopped: the relay at the project node goes with its channel.
    k.ok(&["node", "stop", "db-node"]);
    let e = refused(&k, &args(&send("web-node", &echo)));
    assert!(e.contains("has no relay named db"), "{e}");
}

#[test]
fn a_node_that_requires_credentials_refuses_a_non_member_at_once() {
    let k = project_with(&[("db-node", &["component=db"])]);
    k.ok(&["node", "stop", "db-node"]);
    k.ok(&["node", "delete", "db-node"]);
    k.json(&[
        "node",
        "create",
        "db-node",
        "--identity",
        "db-node",
        "--require-credential",
    ]);
    k.ok(&["identity", "create", "stranger"]);
    k.json(&["node", "create", "stranger-node", "--identity", "stranger"]);
    let e = refused(
        &k,
        &args(&send(
            "stranger-node",
            "/node/db-node/secure/api/service/echo",
        )),
    );
    assert!(e.contains("refused the secure channel"), "{e}");
    assert!(
        e.contains("no credential from an authority it trusts"),
        "{e}"
    );
}

#[test]
fn relay_create_against_a_stopped_project_node_fails_at_once() {
    let k = project_with(&[("db-node", &["ockam-relay=db"])]);
    k.ok(&["node", "stop", "authority"]);
    let e = refused(&k, &["relay", "create", "db", "--to", "db-node"]);
    assert!(e.contains("cannot reach the project node"), "{e}");
    assert!(e.contains("Connection refused"), "{e}");
}
