//! Join requests end to end with the `kith` binary (issue 7): a host without a ticket files
//! a request and waits; an admin lists it, compares the verification code, and approves or
//! denies it; members that are neither admins nor enrollers may not decide; the per-address
//! cap; `--no-wait` and `--resume`; auto-approval rules; an authority restart while waiting.

mod common;

use std::io::{BufRead as _, BufReader, Read as _};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Kith, identifier};

/// 20 s: no step of these tests should come near this; it only bounds a failure.
const STEP_LIMIT: Duration = Duration::from_secs(20);

/// A home with an authority for project `acme`; its default identity is the admin.
fn project() -> (Kith, serde_json::Value) {
    let k = Kith::new();
    let created = k.json(&["authority", "create", "--project", "acme"]);
    (k, created)
}

/// The project description, exported to a file in `k`'s home, for another host.
fn exported(k: &Kith) -> String {
    let path = k.home().join("acme.json");
    std::fs::write(&path, k.ok(&["project", "export", "acme"])).unwrap();
    path.to_str().unwrap().to_owned()
}

/// A `kith project request` running in the background, its stderr read line by line.
struct Requester {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Vec<String>,
    stdout: Option<std::thread::JoinHandle<String>>,
}

impl Requester {
    fn spawn(k: &Kith, args: &[&str]) -> Self {
        let mut a = vec!["project", "request"];
        a.extend(args);
        let mut child = k
            .command(&a)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let err = child.stderr.take().unwrap();
        let mut out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            out.read_to_string(&mut s).ok();
            s
        });
        Self {
            child,
            lines,
            stderr: Vec::new(),
            stdout: Some(stdout),
        }
    }

    /// The first stderr line containing `needle`, waiting at most [`STEP_LIMIT`].
    fn line_with(&mut self, needle: &str) -> String {
        if let Some(l) = self.stderr.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let deadline = Instant::now() + STEP_LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stderr.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "no stderr line with {needle:?} ({e:?}); stderr so far: {:#?}",
                    self.stderr
                ),
            }
        }
    }

    /// The request ID and verification code it printed on stderr.
    fn filed(&mut self) -> (String, String) {
        let enqueued = self.line_with("Join request enqueued.");
        let id = enqueued
            .rsplit(' ')
            .next()
            .unwrap()
            .trim_end_matches('.')
            .to_owned();
        let code = self.line_with("Verification code:");
        let code = code.split_whitespace().nth(2).unwrap().to_owned();
        (id, code)
    }

    /// Wait (at most [`STEP_LIMIT`]) for it to exit: its code, stdout and whole stderr.
    fn finish(mut self) -> (Option<i32>, String, String) {
        let deadline = Instant::now() + STEP_LIMIT;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                self.child.kill().ok();
                panic!(
                    "the requester did not return within {STEP_LIMIT:?}; stderr: {:#?}",
                    self.stderr
                );
            }
            // Draining stderr is the wait: each line, or 20 ms, then look again.
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(20)) {
                self.stderr.push(line);
            }
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.stderr.push(line);
        }
        let stdout = self.stdout.take().unwrap().join().unwrap();
        (
            status.code(),
            stdout,
            std::mem::take(&mut self.stderr).join("\n"),
        )
    }
}

impl Drop for Requester {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.child.kill().ok();
            self.child.wait().ok();
        }
    }
}

/// The pending requests, as the admin lists them.
fn pending(admin: &Kith) -> Vec<serde_json::Value> {
    admin
        .json(&["project", "requests", "list"])
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn an_approved_request_makes_the_host_a_member_only_with_the_right_code() {
    let (admin, created) = project();
    let file = exported(&admin);
    let host = Kith::new();
    let mut req = Requester::spawn(
        &host,
        &[
            "--project-file",
            &file,
            "-a",
            "component=worker",
            "--lifetime",
            "7d",
            "--note",
            "rack 4",
        ],
    );
    let (id, code) = req.filed();
    let enqueued = req.line_with("Join request enqueued.");
    assert!(enqueued.contains("project acme"), "{enqueued}");

    // The admin sees the request with the code the requester printed.
    let list = pending(&admin);
    assert_eq!(list.len(), 1, "{list:?}");
    let r = &list[0];
    assert_eq!(r["id"], id.as_str());
    assert_eq!(r["code"], code.as_str());
    assert_eq!(r["requester"], identifier(&host, "default").as_str());
    assert_eq!(r["source"], "127.0.0.1");
    assert_eq!(r["attributes"]["component"], "worker");
    assert_eq!(r["lifetime"], 7 * 86_400);
    assert_eq!(r["note"], "rack 4");
    assert_eq!(r["state"], "pending");
    let table = admin.ok(&["project", "requests", "list"]);
    let header = table.lines().next().unwrap();
    for column in [
        "ID",
        "REQUESTER",
        "FROM",
        "ATTRIBUTES",
        "LIFETIME",
        "CODE",
        "AGE",
    ] {
        assert!(header.contains(column), "{table}");
    }
    assert!(!header.contains("STATE"), "{table}");
    assert!(table.contains(&code) && table.contains("component=worker") && table.contains("7d"));
    let shown = admin.ok(&["project", "requests", "show", &id]);
    assert!(shown.contains("rack 4") && shown.contains(&code), "{shown}");

    // Without --code and without a terminal, approval refuses to guess.
    let e = admin.fails(&["project", "requests", "approve", &id]);
    assert!(e.contains("give --code"), "{e}");
    // A wrong code is refused, and the request stays pending.
    let e = admin.fails(&["project", "requests", "approve", &id, "--code", "0000-0000"]);
    assert!(e.contains("does not match"), "{e}");
    let list = pending(&admin);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], id.as_str());

    let approved = admin.json(&["project", "requests", "approve", &id, "--code", &code]);
    assert_eq!(approved["state"], "approved");
    let (status, stdout, stderr) = req.finish();
    assert_eq!(status, Some(0), "{stderr}");
    assert!(stdout.contains("approved"), "{stdout}");
    assert!(pending(&admin).is_empty());

    // The host's identity holds the credential, and knows the project now.
    let cred = host.json(&["credential", "show"]);
    assert_eq!(cred["issuer"], created["authority_identifier"]);
    assert_eq!(cred["valid"], true);
    assert_eq!(cred["attributes"]["component"], "worker");
    assert_eq!(cred["attributes"]["project_id"], created["project_id"]);
    let projects = host.json(&["project", "list"]);
    assert_eq!(projects[0]["name"], "acme");
    let all = admin.ok(&["project", "requests", "list", "--all"]);
    assert!(all.lines().next().unwrap().contains("STATE"), "{all}");
    assert!(all.contains("approved"), "{all}");
}

#[test]
fn a_denied_request_returns_non_zero_with_the_reason() {
    let (admin, created) = project();
    admin.ok(&["identity", "create", "stranger"]);
    let mut req = Requester::spawn(&admin, &["--identity", "stranger", "-a", "component=db"]);
    let (id, _) = req.filed();
    admin.json(&[
        "project",
        "requests",
        "deny",
        &id,
        "--reason",
        "not one of our hosts",
    ]);
    let (status, stdout, stderr) = req.finish();
    assert_eq!(status, Some(1), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    let last = stderr.lines().last().unwrap();
    let admin_id = created["admins"][0].as_str().unwrap();
    assert_eq!(
        last,
        format!("error: the request was denied by {admin_id}: not one of our hosts")
    );
    let list = admin.json(&["credential", "list", "--identity", "stranger"]);
    assert_eq!(list["credentials"].as_array().unwrap().len(), 0, "{list}");
    // A decided request cannot be decided again.
    let e = admin.fails(&["project", "requests", "deny", &id]);
    assert!(e.contains("denied already"), "{e}");
}

#[test]
fn ctrl_c_while_waiting_exits_130_and_leaves_the_request_pending_to_resume() {
    let (admin, _) = project();
    admin.ok(&["identity", "create", "stranger"]);
    let mut req = Requester::spawn(&admin, &["--identity", "stranger", "-a", "component=db"]);
    let (id, _) = req.filed();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(req.child.id()).unwrap()),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let (status, _, stderr) = req.finish();
    assert_eq!(status, Some(130), "{stderr}");
    assert!(
        stderr.contains(&format!("kith project request --resume {id}")),
        "{stderr}"
    );
    let still: Vec<_> = pending(&admin)
        .into_iter()
        .filter(|r| r["id"] == id.as_str())
        .collect();
    assert_eq!(still.len(), 1, "the request is no longer pending");

    // The hint works exactly as printed: the request's identity comes back with it.
    let mut resumed = Requester::spawn(&admin, &["--resume", &id]);
    resumed.line_with(&format!("Waiting for a decision on request {id}"));
    let code = still[0]["code"].as_str().unwrap().to_owned();
    admin.json(&["project", "requests", "approve", &id, "--code", &code]);
    let (status, _, stderr) = resumed.finish();
    assert_eq!(status, Some(0), "{stderr}");
    let cred = admin.json(&["credential", "show", "--identity", "stranger"]);
    assert_eq!(cred["attributes"]["component"], "db", "{cred}");
}

#[test]
fn resume_by_id_alone_finds_a_route_only_authority_and_forgets_decided_requests() {
    let (admin, created) = project();
    let authority = created["authority_identifier"].as_str().unwrap();
    let route = created["authority_route"].as_str().unwrap();
    let host = Kith::new();
    host.ok(&["identity", "create", "batch"]);
    let filed = host.run(&[
        "project",
        "request",
        "--no-wait",
        "--identity",
        "batch",
        "-a",
        "component=batch",
        "--authority-route",
        route,
        "--accept-authority",
        authority,
    ]);
    assert_eq!(filed.code, Some(0), "{}", filed.stderr);
    let id = filed.stdout.trim().to_owned();
    let code = pending(&admin)[0]["code"].as_str().unwrap().to_owned();

    // Lower case, as someone might type it.
    let mut req = Requester::spawn(&host, &["--resume", &id.to_lowercase()]);
    req.line_with("Waiting for a decision on request");
    admin.json(&["project", "requests", "approve", &id, "--code", &code]);
    let (status, _, stderr) = req.finish();
    assert_eq!(status, Some(0), "{stderr}");
    let cred = host.json(&["credential", "show", "--identity", "batch"]);
    assert_eq!(cred["issuer"], authority);

    // Decided: nothing is left to resume, and the error says what to give instead.
    let e = host.fails(&["project", "request", "--resume", &id]);
    assert!(e.contains("--authority-route"), "{e}");
}

#[test]
fn members_that_are_neither_admins_nor_enrollers_cannot_decide() {
    let (admin, _) = project();
    let ticket = admin.ok(&["project", "ticket", "-a", "component=web"]);
    admin.ok(&["identity", "create", "member"]);
    admin.ok(&["project", "enroll", ticket.trim(), "--identity", "member"]);
    admin.ok(&["identity", "create", "host"]);
    let id = admin.ok(&["project", "request", "--identity", "host", "--no-wait"]);
    let id = id.trim();

    let as_member = ["--identity", "member"];
    let attempts: Vec<Vec<&str>> = vec![
        vec!["list"],
        vec!["show", id],
        vec!["approve", id, "--code", "0000-0000"],
        vec!["deny", id],
        vec![
            "auto-approve",
            "add",
            "--netblock",
            "127.0.0.0/8",
            "--lifetime",
            "10m",
        ],
        vec!["auto-approve", "list"],
        vec!["auto-approve", "delete", "0000-0000"],
    ];
    for attempt in attempts {
        let mut args = vec!["project", "requests"];
        args.extend(&attempt);
        args.extend(as_member);
        let started = Instant::now();
        let e = admin.fails(&args);
        assert!(
            e.contains("the authority refused") && e.contains("admins and enrollers"),
            "{attempt:?}: {e}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a refusal is an answer, not a timeout"
        );
    }
    let list = pending(&admin);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], id);
    assert!(
        admin
            .json(&["project", "requests", "auto-approve", "list"])
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn no_wait_then_resume_waits_for_the_same_request_through_an_unconfirmed_route() {
    let (admin, created) = project();
    let authority = created["authority_identifier"].as_str().unwrap();
    let route = created["authority_route"].as_str().unwrap();
    let host = Kith::new();

    // Nothing says who the authority at a bare route is: no terminal, no --accept-authority.
    let e = host.fails(&["project", "request", "--authority-route", route]);
    assert!(
        e.contains(authority) && e.contains("--accept-authority"),
        "{e}"
    );
    // Another identifier than the one that answers: refused before anything is sent.
    let other = identifier(&host, "default");
    let e = host.fails(&[
        "project",
        "request",
        "--authority-route",
        route,
        "--accept-authority",
        &other,
    ]);
    assert!(e.contains("nothing was sent"), "{e}");
    assert!(pending(&admin).is_empty());

    let reach = ["--authority-route", route, "--accept-authority", authority];
    let mut args = vec!["project", "request", "--no-wait", "-a", "component=batch"];
    args.extend(reach);
    let filed = host.run(&args);
    assert_eq!(filed.code, Some(0), "{}", filed.stderr);
    let id = filed.stdout.trim().to_owned();
    assert!(
        filed.stderr.contains(&format!("to approve request {id}.")),
        "{}",
        filed.stderr
    );
    let code = filed
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("Verification code: "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();

    let mut resume = vec!["--resume", id.as_str()];
    resume.extend(reach);
    let mut req = Requester::spawn(&host, &resume);
    req.line_with(&format!("Waiting for a decision on request {id}"));
    admin.json(&["project", "requests", "approve", &id, "--code", &code]);
    let (status, stdout, stderr) = req.finish();
    assert_eq!(status, Some(0), "{stderr}");
    assert!(stdout.contains(&id), "{stdout}");
    assert!(
        !stderr.contains("Join request enqueued"),
        "--resume filed again: {stderr}"
    );
    let all = admin.json(&["project", "requests", "list", "--all"]);
    assert_eq!(all.as_array().unwrap().len(), 1, "{all}");
    let cred = host.json(&["credential", "show"]);
    assert_eq!(cred["issuer"], authority);
    assert_eq!(cred["attributes"]["component"], "batch");
}

#[test]
fn the_sixth_pending_request_from_one_address_is_refused() {
    let (admin, _) = project();
    for i in 0..5 {
        let name = format!("r{i}");
        admin.ok(&["identity", "create", &name]);
        admin.ok(&["project", "request", "--identity", &name, "--no-wait"]);
    }
    admin.ok(&["identity", "create", "r5"]);
    let started = Instant::now();
    let e = admin.fails(&["project", "request", "--identity", "r5", "--no-wait"]);
    assert!(
        e.contains("not filed") && e.contains("127.0.0.1") && e.contains("(5)"),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(pending(&admin).len(), 5);
}

#[test]
fn an_auto_approve_rule_approves_a_waiting_request() {
    let (admin, _) = project();
    admin.ok(&["identity", "create", "worker"]);
    admin.json(&["node", "create", "worker-node", "--identity", "worker"]);
    let mut req = Requester::spawn(
        &admin,
        &[
            "--node",
            "worker-node",
            "-a",
            "component=worker",
            "--lifetime",
            "1d",
        ],
    );
    let (id, _) = req.filed();
    // A loopback rule for ten minutes, allowing what `allow` says.
    let add_rule = |allow: &[&str]| {
        let mut args = vec![
            "project",
            "requests",
            "auto-approve",
            "add",
            "--netblock",
            "127.0.0.0/8",
            "--lifetime",
            "10m",
        ];
        args.extend(allow);
        admin.json(&args)
    };
    // A rule that allows other attributes leaves it pending.
    let narrow = add_rule(&["--allow-attribute", "component=db"]);
    assert!(
        narrow["approved"].as_array().unwrap().is_empty(),
        "{narrow}"
    );
    let added = add_rule(&[
        "--allow-attribute",
        "component=worker",
        "--max-credential-lifetime",
        "1h",
    ]);
    assert_eq!(added["approved"], serde_json::json!([id]), "{added}");
    let (status, _, stderr) = req.finish();
    assert_eq!(status, Some(0), "{stderr}");
    assert!(
        !stderr.contains("warning"),
        "the node took up its credential: {stderr}"
    );
    let cred = admin.json(&["credential", "show", "--node", "worker-node"]);
    assert_eq!(cred["attributes"]["component"], "worker");
    let lifetime = cred["expires_at"].as_u64().unwrap() - cred["created_at"].as_u64().unwrap();
    assert!(lifetime <= 3600, "the rule's cap applies: {cred}");

    // While the rule lasts, a new request it covers is approved as it is filed.
    admin.ok(&["identity", "create", "worker2"]);
    let at_once = admin.run(&[
        "project",
        "request",
        "--identity",
        "worker2",
        "-a",
        "component=worker",
    ]);
    assert_eq!(at_once.code, Some(0), "{}", at_once.stderr);
    assert!(
        at_once.stderr.contains("approved at once"),
        "{}",
        at_once.stderr
    );
    assert!(!at_once.stderr.contains("waiting"), "{}", at_once.stderr);

    let rules = admin.json(&["project", "requests", "auto-approve", "list"]);
    assert_eq!(rules.as_array().unwrap().len(), 2, "{rules}");
    let rule = added["rule"]["id"].as_str().unwrap();
    admin.json(&["project", "requests", "auto-approve", "delete", rule]);
    let rules = admin.json(&["project", "requests", "auto-approve", "list"]);
    assert_eq!(rules.as_array().unwrap().len(), 1, "{rules}");
    let e = admin.fails(&[
        "project",
        "requests",
        "auto-approve",
        "add",
        "--netblock",
        "10.0.0.0/33",
        "--lifetime",
        "10m",
    ]);
    assert!(e.contains("not a netblock"), "{e}");
}

#[test]
fn a_waiting_requester_survives_an_authority_restart() {
    let (admin, _) = project();
    admin.ok(&["identity", "create", "worker"]);
    let file = admin.home().join("worker.credential");
    let file = file.to_str().unwrap();
    let mut req = Requester::spawn(
        &admin,
        &["--identity", "worker", "--timeout", "2m", "--file", file],
    );
    let (id, code) = req.filed();
    admin.ok(&["node", "stop", "authority"]);
    admin.ok(&["node", "start", "authority"]);
    let list = pending(&admin);
    assert_eq!(list.len(), 1, "the request outlives the restart: {list:?}");
    admin.json(&["project", "requests", "approve", &id, "--code", &code]);
    let (status, _, stderr) = req.finish();
    assert_eq!(status, Some(0), "{stderr}");
    assert!(stderr.contains("reconnecting"), "{stderr}");
    assert_eq!(
        stderr.matches("Join request enqueued").count(),
        1,
        "filed once: {stderr}"
    );
    let all = admin.json(&["project", "requests", "list", "--all"]);
    assert_eq!(all.as_array().unwrap().len(), 1, "{all}");
    // --file took the credential: it verifies, and nothing was stored for the identity.
    let from_file = format!("@{file}");
    admin.ok(&[
        "credential",
        "verify",
        "--credential",
        &from_file,
        "--issuer",
        "authority",
    ]);
    let list = admin.json(&["credential", "list", "--identity", "worker"]);
    assert_eq!(list["credentials"].as_array().unwrap().len(), 0, "{list}");
}
