//! `kith credential …` and the admission options of `kith node create`, end to end.

mod common;

use common::Kith;

fn identifier(k: &Kith, name: &str) -> String {
    k.json(&["identity", "show", name])["identifier"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn credentials_are_issued_stored_listed_shown_and_verified() {
    let k = Kith::new();
    k.ok(&["identity", "create", "authority"]);
    k.ok(&["identity", "create", "alice"]);
    let alice = identifier(&k, "alice");
    let authority = identifier(&k, "authority");

    let none = k.ok(&["credential", "list", "--identity", "alice"]);
    assert!(none.contains("holds no credentials"), "{none}");

    let hex = k.ok(&[
        "credential",
        "issue",
        "--as",
        "authority",
        "--for",
        &alice,
        "-a",
        "role=db",
        "-a",
        "location=sf",
        "--ttl",
        "2h",
    ]);
    let hex = hex.trim();
    let stored = k.json(&[
        "credential",
        "store",
        "--identity",
        "alice",
        "--issuer",
        "authority",
        "--credential",
        hex,
    ]);
    assert_eq!(stored["issuer"], authority.as_str());
    assert_eq!(stored["subject"], alice.as_str());

    let list = k.json(&["credential", "list", "--identity", "alice"]);
    let creds = list["credentials"].as_array().unwrap();
    assert_eq!(creds.len(), 1);
    assert_eq!(creds[0]["attributes"]["role"], "db");
    assert_eq!(creds[0]["valid"], true);
    // What is left of a 2h lifetime reads as 2h, not as a count of seconds.
    let listed = k.ok(&["credential", "list", "--identity", "alice"]);
    assert!(listed.contains("valid, expires in 2h"), "{listed}");

    let show = k.ok(&["credential", "show", "--identity", "alice"]);
    assert!(show.contains("location = sf"), "{show}");
    assert!(show.contains(&authority), "{show}");
    assert_eq!(
        k.ok(&["credential", "show", "--identity", "alice", "--encoded"])
            .trim(),
        hex
    );
    let v = k.json(&["credential", "verify", "--identity", "alice"]);
    assert_eq!(v["credentials"][0]["valid"], true);

    // Verify a credential given by hand, against the issuer's exported key history.
    let changes = k.json(&["identity", "show", "authority", "--full"])["changes_hex"]
        .as_str()
        .unwrap()
        .to_owned();
    let v = k.json(&[
        "credential",
        "verify",
        "--credential",
        hex,
        "--issuer",
        &changes,
    ]);
    assert_eq!(v["valid"], true);
    assert_eq!(v["attributes"]["location"], "sf");

    // Negative: someone else's credential, the wrong issuer, a damaged credential.
    let e = k.fails(&[
        "credential",
        "store",
        "--identity",
        "authority",
        "--issuer",
        "authority",
        "--credential",
        hex,
    ]);
    assert!(e.contains(&format!("is for {alice}")), "{e}");
    let e = k.fails(&[
        "credential",
        "verify",
        "--credential",
        hex,
        "--issuer",
        "alice",
    ]);
    assert!(e.contains("not a trusted authority"), "{e}");
    let mut damaged = hex.to_owned();
    let flip = damaged.len() / 2;
    let c = damaged.as_bytes()[flip];
    damaged.replace_range(flip..=flip, if c == b'0' { "1" } else { "0" });
    let e = k.fails(&[
        "credential",
        "verify",
        "--credential",
        &damaged,
        "--issuer",
        "authority",
    ]);
    assert!(e.starts_with("error: the credential"), "{e}");
    let e = k.fails(&[
        "credential",
        "verify",
        "--credential",
        "zz",
        "--issuer",
        "authority",
    ]);
    assert!(e.contains("not hex"), "{e}");

    // An expired credential is listed as invalid and fails verification.
    k.ok(&["identity", "create", "bob"]);
    let bob = identifier(&k, "bob");
    let short = k.ok(&[
        "credential",
        "issue",
        "--as",
        "authority",
        "--for",
        &bob,
        "--ttl",
        "2s",
    ]);
    k.ok(&[
        "credential",
        "store",
        "--identity",
        "bob",
        "--issuer",
        "authority",
        "--credential",
        short.trim(),
    ]);
    let held = k.json(&["credential", "list", "--identity", "bob"]);
    assert_eq!(held["credentials"][0]["valid"], true, "{held}");
    let expires_at = held["credentials"][0]["expires_at"].as_u64().unwrap();
    // The expiry is a point on the clock: wait (bounded) until the clock has passed it, then
    // the stored credential must no longer verify.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while unix_now() < expires_at {
        assert!(
            std::time::Instant::now() < deadline,
            "the clock never reached {expires_at}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let e = k.fails(&["credential", "verify", "--identity", "bob"]);
    assert!(e.contains("do not verify"), "{e}");
    let held = k.json(&["credential", "list", "--identity", "bob"]);
    assert_eq!(held["credentials"][0]["valid"], false, "{held}");
}

fn node_log(k: &Kith, node: &str) -> String {
    std::fs::read_to_string(k.home().join("nodes").join(node).join("node.log")).unwrap()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn a_node_that_requires_credentials_admits_only_holders_from_its_trusted_authority() {
    let k = Kith::new();
    k.ok(&["identity", "create", "authority"]);
    k.ok(&["identity", "create", "rogue"]);
    k.ok(&["identity", "create", "alice"]);
    k.ok(&["identity", "create", "guard"]);
    let alice = identifier(&k, "alice");
    k.json(&[
        "node",
        "create",
        "guarded",
        "--identity",
        "guard",
        "--require-credential",
        "--trust-authority",
        "authority",
    ]);
    k.json(&["node", "create", "n1", "--identity", "alice"]);
    let to = "/node/guarded/secure/api/service/echo";

    // No credential: refused.
    let e = k.fails(&[
        "message",
        "send",
        "x",
        "--from",
        "n1",
        "--to",
        to,
        "--timeout",
        "3s",
    ]);
    assert!(e.contains("secure channel"), "{e}");
    let no_credential = format!("{alice} is not admitted: no credential from a trusted authority");
    assert_eq!(node_log(&k, "guarded").matches(&no_credential).count(), 1);

    // A credential from an authority the guard does not trust: still refused.
    let rogue = k.ok(&["credential", "issue", "--as", "rogue", "--for", &alice]);
    k.ok(&[
        "credential",
        "store",
        "--identity",
        "alice",
        "--issuer",
        "rogue",
        "--credential",
        rogue.trim(),
    ]);
    k.ok(&["node", "stop", "n1"]);
    k.ok(&["node", "start", "n1"]);
    let e = k.fails(&[
        "message",
        "send",
        "x",
        "--from",
        "n1",
        "--to",
        to,
        "--timeout",
        "3s",
    ]);
    assert!(e.contains("secure channel"), "{e}");
    // The same refusal from the same host within 10 s is counted, not logged again: the
    // count is logged when the node stops (below).
    assert_eq!(node_log(&k, "guarded").matches(&no_credential).count(), 1);

    // From the trusted authority: admitted.
    let good = k.ok(&[
        "credential",
        "issue",
        "--as",
        "authority",
        "--for",
        &alice,
        "-a",
        "role=db",
    ]);
    k.ok(&[
        "credential",
        "store",
        "--identity",
        "alice",
        "--issuer",
        "authority",
        "--credential",
        good.trim(),
    ]);
    k.ok(&["node", "stop", "n1"]);
    k.ok(&["node", "start", "n1"]);
    let v = k.json(&["message", "send", "hello", "--from", "n1", "--to", to]);
    assert_eq!(v["reply"], "hello");
    k.ok(&["node", "stop", "guarded"]);
    let log = node_log(&k, "guarded");
    assert!(
        log.lines()
            .any(|l| l.contains("secure channel handshake failed") && l.contains("suppressed=1")),
        "the second refusal is accounted for when the node stops:\n{log}"
    );
}

#[test]
fn a_node_with_an_allow_list_admits_only_those_identities() {
    let k = Kith::new();
    k.ok(&["identity", "create", "alice"]);
    k.ok(&["identity", "create", "guard"]);
    k.ok(&["identity", "create", "mallory"]);
    let alice = identifier(&k, "alice");
    k.json(&[
        "node",
        "create",
        "guarded",
        "--identity",
        "guard",
        "--allow-identity",
        &alice,
    ]);
    k.json(&["node", "create", "a", "--identity", "alice"]);
    k.json(&["node", "create", "m", "--identity", "mallory"]);
    let to = "/node/guarded/secure/api/service/echo";
    let v = k.json(&["message", "send", "hi", "--from", "a", "--to", to]);
    assert_eq!(v["reply"], "hi");
    let e = k.fails(&[
        "message",
        "send",
        "hi",
        "--from",
        "m",
        "--to",
        to,
        "--timeout",
        "3s",
    ]);
    assert!(e.contains("secure channel"), "{e}");
    let mallory = identifier(&k, "mallory");
    assert!(
        node_log(&k, "guarded").contains(&format!(
            "{mallory} is not admitted: not on the allowed list"
        )),
        "the guard did not refuse mallory for the reason expected"
    );

    let e = k.fails(&["node", "create", "bad", "--allow-identity", "Inothex"]);
    assert!(e.contains("is not an identifier"), "{e}");
    let e = k.fails(&["node", "create", "bad", "--trust-authority", "nobody"]);
    assert!(e.contains("nobody"), "{e}");
}
