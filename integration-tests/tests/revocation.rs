//! Membership changes reaching the whole project, with the `kith` binary (issue 16): a
//! deleted member's relay, portal session and channels go within 2 s and its new channels
//! are refused; a narrowed member is refused over the channel it already had; a node that
//! cannot hear its authority keeps trusting it for the grace only; with short-lived
//! credentials, renewals are pushed into open channels and nothing is torn down.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Kith, identifier, log, project_with};

/// 2 s: how soon a membership change must be in force across the project (issue 16).
const IN_FORCE_WITHIN: Duration = Duration::from_secs(2);

/// Where relay `db` of project `acme` reaches db-node's outlet, end to end.
const OUTLET_THROUGH_RELAY: &str = "/project/acme/service/forward_to_db/secure/api/service/outlet";

/// db-node serves an echo server through an outlet for component=web and holds relay `db`;
/// web-node has an inlet through the relay. Returns the inlet's address.
fn portal_through_relay(k: &Kith) -> String {
    k.json(&[
        "tcp-outlet",
        "create",
        "--at",
        "db-node",
        "--to",
        &common::echo_server(),
        "--allow",
        r#"component = "web""#,
    ]);
    let relay = k.json(&["relay", "create", "db", "--to", "db-node"]);
    assert_eq!(relay["state"], "up", "{relay}");
    let inlet = k.json(&[
        "tcp-inlet",
        "create",
        "--at",
        "web-node",
        "--from",
        "127.0.0.1:0",
        "--to",
        OUTLET_THROUGH_RELAY,
    ]);
    inlet["from"].as_str().unwrap().to_owned()
}

/// One round trip of `n` bytes through an open portal session.
fn round_trip(s: &mut TcpStream, n: usize) -> std::io::Result<()> {
    let out = vec![b'x'; n];
    s.write_all(&out)?;
    let mut back = vec![0u8; n];
    s.read_exact(&mut back)?;
    assert_eq!(back, out);
    Ok(())
}

fn relay_names(k: &Kith) -> Vec<String> {
    k.json(&["relay", "list", "--at", "/project/acme"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn a_deleted_member_loses_its_relay_session_and_channels_within_2_s_and_is_refused_new_ones() {
    let k = project_with(&[
        ("db-node", &["ockam-relay=db"]),
        ("web-node", &["component=web"]),
    ]);
    let inlet = portal_through_relay(&k);
    let mut session = TcpStream::connect(&inlet).unwrap();
    session
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    round_trip(&mut session, 1000).unwrap();
    assert_eq!(relay_names(&k), ["db"]);
    // db-node reaches web-node directly while it is a member.
    let to_web = "/node/web-node/secure/api/service/echo";
    k.ok(&["message", "send", "hi", "--from", "db-node", "--to", to_web]);

    k.ok(&["project", "member", "delete", &identifier(&k, "db-node")]);
    let deleted = Instant::now();

    // The portal session is reset: the next read ends, well before its timeout.
    let mut buf = [0u8; 16];
    let ended = session.read(&mut buf);
    assert!(
        matches!(ended, Ok(0) | Err(_)),
        "the session still carries data: {ended:?}"
    );
    let session_gone = deleted.elapsed();
    assert!(
        session_gone < IN_FORCE_WITHIN,
        "the session ended {session_gone:?} after the deletion"
    );
    // The relay's name is free, and no longer listed.
    while relay_names(&k).contains(&"db".to_owned()) {
        assert!(
            deleted.elapsed() < IN_FORCE_WITHIN,
            "relay db is still listed {:?} after the deletion",
            deleted.elapsed()
        );
    }
    // web-node refuses a new channel from the deleted member, and says why.
    let refused = k.run(&[
        "message",
        "send",
        "hi",
        "--from",
        "db-node",
        "--to",
        to_web,
        "--timeout",
        "5s",
    ]);
    assert_eq!(refused.code, Some(1), "{}", refused.stdout);
    assert!(
        refused.stderr.contains("credential revoked"),
        "{}",
        refused.stderr
    );
    assert!(
        log(&k, "web-node").contains("credential revoked"),
        "web-node's log does not say why"
    );
}

#[test]
fn a_member_narrowed_by_an_update_is_refused_over_the_channel_it_already_had() {
    let k = project_with(&[
        ("db-node", &["component=db"]),
        ("web-node", &["component=web"]),
    ]);
    let channel = k.json(&[
        "secure-channel",
        "create",
        "--from",
        "web-node",
        "--to",
        "/node/db-node/service/api",
    ]);
    let through = format!(
        "/service/{}/service/echo",
        channel["address"].as_str().unwrap()
    );
    let send = |timeout: &str| {
        k.run(&[
            "message",
            "send",
            "hi",
            "--from",
            "web-node",
            "--to",
            &through,
            "--timeout",
            timeout,
        ])
    };
    assert_eq!(send("5s").code, Some(0));

    let web = identifier(&k, "web-node");
    k.ok(&["project", "member", "update", &web, "--remove", "component"]);
    let updated = Instant::now();
    loop {
        let r = send("2s");
        if r.code == Some(1) {
            assert!(r.stderr.contains("denied"), "{}", r.stderr);
            break;
        }
        assert!(
            updated.elapsed() < IN_FORCE_WITHIN,
            "web-node still reaches echo {:?} after losing component=web",
            updated.elapsed()
        );
    }
    // Over the same channel: it was not torn down, only narrowed.
    let kept = k.json(&["secure-channel", "list", "--from", "web-node"]);
    assert_eq!(kept[0]["address"], channel["address"], "{kept}");
    // Given back, it is let in again over that channel.
    k.ok(&["project", "member", "update", &web, "-a", "component=web"]);
    let restored = Instant::now();
    while send("2s").code != Some(0) {
        assert!(
            restored.elapsed() < IN_FORCE_WITHIN,
            "web-node is still refused {:?} after getting component=web back",
            restored.elapsed()
        );
    }
}

#[test]
fn a_node_that_cannot_reach_its_authority_trusts_it_for_the_grace_then_refuses_with_a_reason() {
    let k = Kith::new();
    k.json(&["authority", "create", "--project", "acme"]);
    for node in ["web-node", "db-node"] {
        let ticket = k.ok(&["project", "ticket", "--attribute", "component=x"]);
        k.ok(&["identity", "create", node]);
        let mut create = vec!["node", "create", node, "--identity", node];
        if node == "db-node" {
            create.extend(["--require-credential", "--revocation-grace", "6s"]);
        }
        k.json(&create);
        k.ok(&["project", "enroll", ticket.trim(), "--node", node]);
    }
    let to_db = "/node/db-node/secure/api/service/echo";
    let send = || {
        k.run(&[
            "message",
            "send",
            "hi",
            "--from",
            "web-node",
            "--to",
            to_db,
            "--timeout",
            "5s",
        ])
    };
    let r = send();
    assert_eq!(r.code, Some(0), "{}", r.stderr);

    k.ok(&["node", "stop", "authority"]);
    let stopped = Instant::now();
    // Within the grace, db-node goes on admitting the authority's members. The grace runs
    // from when db-node last heard the feed: up to a third of it (the authority holds each
    // request that long) and a second (the clock's unit) before the stop.
    let r = send();
    if stopped.elapsed() < Duration::from_secs(2) {
        assert_eq!(r.code, Some(0), "refused within the grace: {}", r.stderr);
    }
    // Past it, it admits no one on that authority's word, and says why.
    let refused = loop {
        let r = send();
        if r.code == Some(1) {
            break r;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(20),
            "db-node still admits members {:?} after losing its authority",
            stopped.elapsed()
        );
    };
    assert!(
        stopped.elapsed() >= Duration::from_secs(3),
        "refused after {:?}, before the grace ran out",
        stopped.elapsed()
    );
    assert!(
        refused.stderr.contains("revocations are out of date"),
        "{}",
        refused.stderr
    );
    // The node says so too.
    let shown = k.json(&["node", "show", "db-node"]);
    assert_eq!(shown["revocations"][0]["state"], "stale", "{shown}");
    assert!(k.ok(&["node", "show", "db-node"]).contains("STALE"));
    // The authority back, the feed is heard again and members are admitted again.
    k.ok(&["node", "start", "authority"]);
    let back = Instant::now();
    while send().code != Some(0) {
        assert!(
            back.elapsed() < Duration::from_secs(40),
            "db-node still refuses {:?} after its authority came back",
            back.elapsed()
        );
    }
    let shown = k.json(&["node", "show", "db-node"]);
    assert_eq!(shown["revocations"][0]["state"], "current", "{shown}");
}

#[test]
fn with_10_s_credentials_a_relayed_portal_session_carries_traffic_for_2_minutes_without_a_stall() {
    let k = Kith::new();
    k.json(&[
        "authority",
        "create",
        "--project",
        "acme",
        "--credential-ttl",
        "10s",
    ]);
    for (node, attribute) in [("db-node", "ockam-relay=db"), ("web-node", "component=web")] {
        let ticket = k.ok(&["project", "ticket", "--attribute", attribute]);
        k.ok(&["identity", "create", node]);
        k.json(&["node", "create", node, "--identity", node]);
        k.ok(&["project", "enroll", ticket.trim(), "--node", node]);
    }
    let inlet = portal_through_relay(&k);
    let mut session = TcpStream::connect(&inlet).unwrap();
    session
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let started = Instant::now();
    let mut longest = Duration::ZERO;
    let mut trips = 0u64;
    while started.elapsed() < Duration::from_secs(120) {
        let t = Instant::now();
        round_trip(&mut session, 4096).unwrap();
        longest = longest.max(t.elapsed());
        trips += 1;
    }
    assert!(
        longest < Duration::from_secs(1),
        "a round trip stalled for {longest:?} ({trips} trips)"
    );
    // Twelve credential lifetimes passed; every channel lived through them.
    for node in ["db-node", "web-node", "authority"] {
        let log = log(&k, node);
        assert!(
            !log.contains("torn down") && !log.contains("was not refreshed"),
            "{node} tore a channel down:\n{log}"
        );
        assert!(
            node == "authority" || log.contains("renewed a credential"),
            "{node} never renewed its credential"
        );
    }
}

#[test]
fn a_second_authority_cannot_change_an_attribute_the_nodes_own_authority_gives() {
    let k = Kith::new();
    k.json(&["authority", "create", "--project", "acme"]);
    k.json(&["authority", "create", "beta-authority", "--project", "beta"]);
    // web-node is a member of both projects; beta's credential says component=db.
    let acme = k.ok(&[
        "project",
        "ticket",
        "--project",
        "acme",
        "--attribute",
        "component=web",
    ]);
    let beta = k.ok(&[
        "project",
        "ticket",
        "--project",
        "beta",
        "--attribute",
        "component=db",
        "--attribute",
        "zone=b",
    ]);
    k.ok(&["identity", "create", "web"]);
    k.json(&["node", "create", "web-node", "--identity", "web"]);
    k.ok(&["project", "enroll", acme.trim(), "--node", "web-node"]);
    k.ok(&["project", "enroll", beta.trim(), "--node", "web-node"]);
    // Members of acme trusting beta's authority besides: acme's word on component stands,
    // and beta's own attributes are seen.
    for (node, allow, admitted) in [
        ("db-node", r#"component = "web" and zone = "b""#, true),
        ("db2-node", r#"component = "db""#, false),
    ] {
        let ticket = k.ok(&["project", "ticket", "--project", "acme"]);
        k.ok(&["identity", "create", node]);
        k.json(&[
            "node",
            "create",
            node,
            "--identity",
            node,
            "--trust-authority",
            "beta-authority",
            "--allow",
            allow,
        ]);
        k.ok(&["project", "enroll", ticket.trim(), "--node", node]);
        let to = format!("/node/{node}/secure/api/service/echo");
        let sent = k.run(&[
            "message",
            "send",
            "hi",
            "--from",
            "web-node",
            "--to",
            &to,
            "--timeout",
            "5s",
        ]);
        assert_eq!(
            sent.code == Some(0),
            admitted,
            "{node} ({allow}): {}",
            sent.stderr
        );
        if !admitted {
            assert!(sent.stderr.contains("denied"), "{}", sent.stderr);
        }
    }
}
