//! Guessing is throttled and seen (issue 17 item 4), end to end with the `kith` binary: ten
//! wrong enrollment codes in a row from one identity are throttled ("too many failed
//! attempts; retry after Ns"), the audit log shows the failures in a few aggregated rows,
//! and the right code from another identity at another address still enrolls at once.
//!
//! Two source addresses on one host: the authority listens on `[::]` (both IPv4 and IPv6),
//! the guesser reaches it over IPv4 loopback (127.0.0.1), the honest host over IPv6
//! loopback (::1).

mod common;

use std::time::{Duration, Instant};

use common::Kith;
use kith_authority::ticket::{Encoding, OneTimeCode, Ticket};

/// What the authority answers an attempt while the guesser must wait.
const THROTTLED: &str = "too many failed attempts; retry after ";

/// What `kith project enroll` says of a code no ticket has.
const UNKNOWN: &str = "knows no ticket";

/// `ticket` with its code replaced by `code` (random if `None`) and the authority reached
/// at `route`.
fn ticket_with(ticket: &str, code: Option<OneTimeCode>, route: &str) -> String {
    let mut t = Ticket::decode(ticket).unwrap();
    if let Some(code) = code {
        t.code = code;
    } else {
        t.code = OneTimeCode::random();
    }
    t.project.authority_route = route.parse().unwrap();
    t.project.project_route = route.parse().unwrap();
    t.encode(Encoding::Text)
}

#[test]
fn ten_wrong_codes_are_throttled_and_audited_in_aggregate_and_another_host_still_enrolls() {
    let admin = Kith::new();
    let (_, over_ipv4) = common::dual_stack_authority(&admin, &[]);
    let ticket = admin.ok(&["project", "ticket", "-a", "component=web"]);
    let ticket = ticket.trim();

    // The guesser: one identity, wrong codes over IPv4, one after another.
    let guesser = Kith::new();
    guesser.ok(&["identity", "create", "guesser"]);
    let mut said = Vec::new();
    for attempt in 1..=10 {
        let wrong = ticket_with(ticket, None, &over_ipv4);
        let started = Instant::now();
        let e = guesser.fails(&["project", "enroll", &wrong, "--identity", "guesser"]);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "attempt {attempt} was answered in {:?}: a refusal is an answer, not a delay",
            started.elapsed()
        );
        assert!(e.contains(UNKNOWN) || e.contains(THROTTLED), "{e}");
        said.push(e);
    }
    for (n, e) in said.iter().enumerate().take(5) {
        assert!(e.contains(UNKNOWN), "attempt {} is free: {e}", n + 1);
    }
    let tenth = &said[9];
    assert!(
        tenth.starts_with(&format!("error: enrollment refused: {THROTTLED}")),
        "{tenth}"
    );
    let wait: u64 = tenth
        .split(THROTTLED)
        .nth(1)
        .and_then(|rest| rest.strip_suffix('s'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no wait in {tenth:?}"));
    assert!((1..=300).contains(&wait), "{tenth}");

    // The right code from another identity at the guesser's address waits too: the address
    // is throttled. Nothing is spent of the ticket.
    guesser.ok(&["identity", "create", "neighbour"]);
    let right_over_ipv4 = ticket_with(
        ticket,
        Some(Ticket::decode(ticket).unwrap().code),
        &over_ipv4,
    );
    let e = guesser.fails(&[
        "project",
        "enroll",
        &right_over_ipv4,
        "--identity",
        "neighbour",
    ]);
    assert!(e.contains(THROTTLED), "{e}");

    // Another identity at another address (::1) enrolls at once with the right code.
    let host = Kith::new();
    host.ok(&["identity", "create", "host"]);
    let started = Instant::now();
    host.ok(&["project", "enroll", ticket, "--identity", "host"]);
    assert!(started.elapsed() < Duration::from_secs(5));
    let cred = host.json(&["credential", "show", "--identity", "host"]);
    assert_eq!(cred["attributes"]["component"], "web");

    // The audit log: the guesser's identity and its address became throttled, one row each,
    // with the kind and the count; not a row per attempt.
    let audit = admin.json(&["project", "audit", "--limit", "1000"]);
    let guesses: Vec<&serde_json::Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"].as_str().unwrap().starts_with("guess."))
        .collect();
    let throttled: Vec<&&serde_json::Value> = guesses
        .iter()
        .filter(|e| e["action"] == "guess.throttled")
        .collect();
    assert_eq!(throttled.len(), 2, "{guesses:#?}");
    let guesser_id = common::identifier(&guesser, "guesser");
    let mut subjects: Vec<&str> = throttled
        .iter()
        .map(|e| e["subject"].as_str().unwrap())
        .collect();
    subjects.sort_unstable();
    let mut expected = vec![guesser_id.as_str(), "127.0.0.1"];
    expected.sort_unstable();
    assert_eq!(subjects, expected, "{guesses:#?}");
    for row in &throttled {
        assert_eq!(row["actor"], guesser_id.as_str(), "{row}");
        let detail = row["detail"].as_str().unwrap();
        assert!(
            detail.contains("kind=redeem")
                && detail.contains("failures=6 refused=0")
                && detail.contains("source=127.0.0.1"),
            "{detail}"
        );
    }
    // Eleven attempts at the guesser's address, in far fewer rows (a minute's report each
    // at most, should the test run that long).
    assert!(guesses.len() <= 4, "{guesses:#?}");
    let plain = admin.ok(&["project", "audit"]);
    assert!(
        plain.contains("guess.throttled") && plain.contains("127.0.0.1"),
        "{plain}"
    );
}
