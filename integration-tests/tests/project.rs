//! Projects end to end with the `kith` binary: an authority daemon, tickets, enrollment,
//! roles, and every way a ticket can be refused.

mod common;

use std::path::Path;

use common::Kith;
use kith_authority::ticket::{Encoding, OneTimeCode, Ticket};

fn identifier(k: &Kith, name: &str) -> String {
    k.json(&["identity", "show", name])["identifier"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A home with an authority for project `acme`; the default identity is its admin.
fn project() -> (Kith, serde_json::Value) {
    let k = Kith::new();
    let created = k.json(&["authority", "create", "--project", "acme"]);
    (k, created)
}

/// Nothing about the project or a credential was written for identity `name`.
fn nothing_written(k: &Kith, name: &str, projects_before: usize) {
    let list = k.json(&["credential", "list", "--identity", name]);
    assert_eq!(list["credentials"].as_array().unwrap().len(), 0, "{list}");
    let projects = k.json(&["project", "list"]);
    assert_eq!(projects.as_array().unwrap().len(), projects_before);
}

#[test]
fn a_ticket_enrolls_a_node_whose_credential_other_members_accept() {
    let (k, created) = project();
    let authority = created["authority_identifier"].as_str().unwrap().to_owned();
    let project_id = created["project_id"].as_str().unwrap().to_owned();

    let ticket = k.ok(&[
        "project",
        "ticket",
        "--attribute",
        "component=db",
        "--attribute",
        "location=sf",
    ]);
    assert_eq!(
        ticket.lines().count(),
        1,
        "the ticket alone on stdout: {ticket:?}"
    );
    let path = k.home().join("ticket.txt");
    std::fs::write(&path, &ticket).unwrap();

    // The ticket can be inspected without being used.
    let shown = k.json(&[
        "project",
        "ticket",
        "show",
        "--ticket-file",
        path.to_str().unwrap(),
    ]);
    assert_eq!(shown["attributes"]["component"], "db");
    assert_eq!(shown["project"]["authority_identifier"], authority.as_str());
    assert_eq!(shown["usage_count"], 1);
    assert_eq!(shown["expired"], false);

    k.ok(&["identity", "create", "db"]);
    k.json(&[
        "node",
        "create",
        "db-node",
        "--identity",
        "db",
        "--require-credential",
    ]);
    let v = k.json(&[
        "project",
        "enroll",
        "--ticket-file",
        path.to_str().unwrap(),
        "--node",
        "db-node",
    ]);
    assert_eq!(v["identity"], "db");
    assert_eq!(v["attributes"]["component"], "db");

    let show = k.json(&["credential", "show", "--node", "db-node"]);
    assert_eq!(show["issuer"], authority.as_str());
    assert_eq!(show["subject"], identifier(&k, "db").as_str());
    assert_eq!(show["valid"], true);
    let attrs = show["attributes"].as_object().unwrap();
    assert_eq!(
        attrs.len(),
        3,
        "exactly the ticket's attributes plus the project id"
    );
    assert_eq!(attrs["location"], "sf");
    assert_eq!(attrs["project_id"], project_id.as_str());

    // A second member (hex ticket, from the environment) reaches db-node, which admits only
    // credential holders; a node that is no member does not.
    let hex = k.ok(&["project", "ticket", "-a", "component=web", "--hex"]);
    k.ok(&["identity", "create", "web"]);
    k.json(&["node", "create", "web-node", "--identity", "web"]);
    let r = k
        .command(&["project", "enroll", "--node", "web-node"])
        .env("KITH_ENROLLMENT_TICKET", hex.trim())
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let to = "/node/db-node/secure/api/service/echo";
    let v = k.json(&["message", "send", "hi", "--from", "web-node", "--to", to]);
    assert_eq!(v["reply"], "hi");
    k.ok(&["identity", "create", "outsider"]);
    k.json(&["node", "create", "out-node", "--identity", "outsider"]);
    let e = k.fails(&[
        "message",
        "send",
        "hi",
        "--from",
        "out-node",
        "--to",
        to,
        "--timeout",
        "3s",
    ]);
    assert!(e.contains("secure channel"), "{e}");
    let outsider = identifier(&k, "outsider");
    let db_log = std::fs::read_to_string(k.home().join("nodes/db-node/node.log")).unwrap();
    assert!(
        db_log.contains(&format!(
            "{outsider} is not admitted: no credential from a trusted authority"
        )),
        "db-node did not refuse the outsider for lacking a credential"
    );

    // Listing and the audit log show what happened; no one-time code is in the log.
    let members = k.json(&["project", "member", "list"]);
    assert_eq!(members.as_array().unwrap().len(), 2);
    let audit = k.json(&["project", "audit"]);
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"ticket.redeemed"), "{actions:?}");
    let log = std::fs::read_to_string(k.home().join("nodes/authority/node.log")).unwrap();
    let code = Ticket::decode(&ticket).unwrap();
    let code_hex = kith_identity::hex::encode(code.code.as_bytes());
    assert!(
        !log.contains(&code_hex),
        "the authority logged a one-time code"
    );
    assert!(
        !log.contains(ticket.trim()),
        "the authority logged a ticket"
    );
}

#[test]
fn every_encoding_and_source_of_a_ticket_is_accepted() {
    let (k, _) = project();
    for (i, encoding) in ["", "--hex", "--legacy"].into_iter().enumerate() {
        let name = format!("m{i}");
        k.ok(&["identity", "create", &name]);
        let mut args = vec!["project", "ticket", "-a", "n=1"];
        if !encoding.is_empty() {
            args.push(encoding);
        }
        let ticket = k.ok(&args);
        let ticket = ticket.trim();
        match i {
            // Argument.
            0 => {
                k.ok(&["project", "enroll", ticket, "--identity", &name]);
            }
            // File with trailing spaces and no newline.
            1 => {
                let f = k.home().join("t1.txt");
                std::fs::write(&f, format!("{ticket}   ")).unwrap();
                k.ok(&[
                    "project",
                    "enroll",
                    "--ticket-file",
                    f.to_str().unwrap(),
                    "--identity",
                    &name,
                ]);
            }
            // Standard input, with a newline.
            _ => {
                let mut child = k
                    .command(&["project", "enroll", "-", "--identity", &name])
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap();
                use std::io::Write;
                writeln!(child.stdin.take().unwrap(), "{ticket}").unwrap();
                let out = child.wait_with_output().unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let list = k.json(&["credential", "list", "--identity", &name]);
        assert_eq!(list["credentials"][0]["attributes"]["n"], "1", "{encoding}");
    }
}

/// Write `ticket` re-encoded after `change`.
fn altered(ticket: &str, change: impl FnOnce(&mut Ticket)) -> String {
    let mut t = Ticket::decode(ticket).unwrap();
    change(&mut t);
    t.encode(Encoding::Text)
}

#[test]
fn bad_tickets_are_refused_each_with_its_own_reason_and_nothing_is_written() {
    let (k, _) = project();
    k.ok(&["identity", "create", "joiner"]);
    let enroll = |ticket: &str| k.fails(&["project", "enroll", ticket, "--identity", "joiner"]);

    // Used up.
    let t = k.ok(&["project", "ticket"]);
    k.ok(&["identity", "create", "first"]);
    k.ok(&["project", "enroll", t.trim(), "--identity", "first"]);
    let used = enroll(t.trim());
    assert!(used.contains("used as many times"), "{used}");

    // Revoked.
    let t = k.ok(&["project", "ticket"]);
    let id = Ticket::decode(&t).unwrap().id();
    let listed = k.json(&["project", "ticket", "list"]);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == id.as_str()),
        "the holder's ticket id is the listed id: {listed}"
    );
    k.ok(&["project", "ticket", "revoke", &id]);
    let revoked = enroll(t.trim());
    assert!(revoked.contains("revoked"), "{revoked}");

    // Unknown code: a well-formed ticket whose code the authority never issued.
    let t = k.ok(&["project", "ticket"]);
    let unknown = enroll(&altered(&t, |t| t.code = OneTimeCode::random()));
    assert!(unknown.contains("knows no ticket"), "{unknown}");

    // For another authority: the ticket names an authority identity the node at the
    // route does not have.
    let other = kith_identity::Identity::create(0).0;
    let wrong = enroll(&altered(&t, |t| t.project.authority = other));
    assert!(wrong.contains("not the project's authority"), "{wrong}");

    // Expired (checked before anything is sent).
    let expired = enroll(&altered(&t, |t| t.expires_at = 1));
    assert!(expired.contains("expired"), "{expired}");

    // Tampered: one character changed.
    let mut chars: Vec<char> = t.trim().chars().collect();
    let mid = chars.len() / 2;
    chars[mid] = if chars[mid] == 'A' { 'B' } else { 'A' };
    let tampered = enroll(&chars.into_iter().collect::<String>());
    assert!(
        tampered.contains("damaged: checksum mismatch"),
        "{tampered}"
    );
    // Cut short, and with a space inside.
    let short = enroll(&t.trim()[..t.trim().len() - 5]);
    assert!(
        short.contains("cut short") || short.contains("damaged: checksum mismatch"),
        "{short}"
    );
    let spaced = format!("{} {}", &t.trim()[..10], &t.trim()[10..]);
    let inner = enroll(&spaced);
    assert!(inner.contains("has whitespace"), "{inner}");

    let reasons = [&used, &revoked, &unknown, &wrong, &expired, &tampered];
    for (i, a) in reasons.iter().enumerate() {
        for b in &reasons[i + 1..] {
            assert_ne!(a, b, "two refusals read the same");
        }
    }
    // The first enrollment wrote the project; none of the refusals wrote anything.
    nothing_written(&k, "joiner", 1);
    // And the still-valid ticket works.
    k.ok(&["project", "enroll", t.trim(), "--identity", "joiner"]);
}

#[test]
fn only_admins_and_enrollers_cut_tickets_and_only_admins_make_enrollers() {
    let (k, _) = project();
    k.ok(&["identity", "create", "member"]);
    k.ok(&["identity", "create", "enroller"]);
    let plain = k.ok(&["project", "ticket"]);
    k.ok(&["project", "enroll", plain.trim(), "--identity", "member"]);
    let e = k.ok(&["project", "ticket", "--enroller"]);
    k.ok(&["project", "enroll", e.trim(), "--identity", "enroller"]);

    // A member is neither: no tickets, no member list.
    let refused = k.fails(&["project", "ticket", "--identity", "member"]);
    assert!(
        refused.contains("only the project's admins and enrollers"),
        "{refused}"
    );
    let refused = k.fails(&["project", "member", "list", "--identity", "member"]);
    assert!(refused.contains("refused"), "{refused}");

    // An enroller cuts plain tickets and lists members, but makes no enrollers and
    // deletes no members.
    k.ok(&[
        "project",
        "ticket",
        "--identity",
        "enroller",
        "--relay",
        "r1",
    ]);
    assert_eq!(
        k.json(&["project", "member", "list", "--identity", "enroller"])
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let refused = k.fails(&["project", "ticket", "--identity", "enroller", "--enroller"]);
    assert!(refused.contains("admin"), "{refused}");
    let member = identifier(&k, "member");
    let refused = k.fails(&[
        "project",
        "member",
        "delete",
        &member,
        "--identity",
        "enroller",
    ]);
    assert!(refused.contains("refused"), "{refused}");

    // The admin deletes the member; it gets no fresh credential and cuts nothing.
    k.ok(&["project", "member", "delete", &member]);
    let members = k.json(&["project", "member", "list"]);
    assert_eq!(members.as_array().unwrap().len(), 1);
}

#[test]
fn an_unreachable_authority_fails_fast_and_retries_as_told() {
    let (k, _) = project();
    k.ok(&["node", "stop", "authority"]);
    let r = k.run(&[
        "project",
        "ticket",
        "--retry-count",
        "2",
        "--retry-delay",
        "100ms",
        "--timeout",
        "2s",
    ]);
    assert_eq!(r.code, Some(1));
    assert_eq!(r.stderr.matches("retry").count(), 2, "{}", r.stderr);
    let r = k
        .command(&["project", "ticket", "--no-retry", "--timeout", "2s"])
        .env("KITH_RETRY_COUNT", "3")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(!stderr.contains("retry"), "--no-retry wins: {stderr}");
    assert!(stderr.contains("authority"), "{stderr}");
    assert!(Path::new(&k.home().join("projects/acme.json")).is_file());
}

#[test]
fn a_running_node_renews_its_credential_before_it_expires() {
    let k = Kith::new();
    k.json(&[
        "authority",
        "create",
        "--project",
        "short",
        "--credential-ttl",
        "6s",
    ]);
    let ticket = k.ok(&["project", "ticket"]);
    k.ok(&["identity", "create", "m"]);
    k.json(&["node", "create", "m-node", "--identity", "m"]);
    k.ok(&["project", "enroll", ticket.trim(), "--node", "m-node"]);
    let first = k.json(&["credential", "show", "--node", "m-node"]);
    let first_expiry = first["expires_at"].as_u64().unwrap();
    // Renewed after two thirds of its 6 s: wait (bounded) for a later expiry.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let now = k.json(&["credential", "show", "--node", "m-node"]);
        if now["expires_at"].as_u64().unwrap() > first_expiry {
            assert_eq!(now["valid"], true);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the credential was not renewed: {now}; log: {}",
            std::fs::read_to_string(k.home().join("nodes/m-node/node.log")).unwrap()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let log = std::fs::read_to_string(k.home().join("nodes/m-node/node.log")).unwrap();
    assert!(log.contains("renewed a credential"), "{log}");
}
