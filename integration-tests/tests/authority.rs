//! The authority as real `kith` processes: tickets cut with the CLI, hundreds of in-process
//! clients with fresh identities redeeming them at once over real secure channels, a
//! `kill -9` in the middle of a storm, and a look inside the store and the log for the
//! one-time code (DESIGN §5).
//!
//! The PostgreSQL tests need a server: `KITH_TEST_POSTGRES_URL` names a role that may create
//! databases (each test makes its own and drops it). `eval "$(bash .ci/postgres)"` starts one
//! and sets the variable. Without it those tests fail; they never skip silently.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use common::Kith;
use kith_authority::api::{Enrolled, ErrorKind};
use kith_authority::client::{AuthorityClient, ClientError, decode_credential};
use kith_authority::ticket::{OneTimeCode, Ticket};
use kith_identity::channel::{Admission, LocalIdentity, Trust};
use kith_identity::secure_channel::{ChannelSettings, DEFAULT_LISTENER};
use kith_identity::{Identifier, Identity, SecureChannelKey};
use kith_integration_tests::postgres::TempDatabase;
use kith_node::{Address, Node, Route, TCP};
use kith_transport::TcpTransport;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// 200: how many fresh identities redeem one ticket at once.
const REDEEMERS: usize = 200;

/// 5: the usage count of the contested ticket.
const USAGE_COUNT: u32 = 5;

/// 8: in-process client nodes the redeemers are spread over (one TCP connection each to
/// every authority they talk to), each a host of its own at 127.0.2.(i+1): hundreds of
/// clients at once come from many addresses, and no more than a source's share of
/// unfinished handshakes (128, 64 a connection) comes from one.
const CLIENT_NODES: usize = 8;

/// 60 s: bounds each handshake. Hundreds at once against a debug build, with other tests
/// running beside this one on a two-core machine, take seconds; a pass never waits this long.
const CONNECT_WAIT: Duration = Duration::from_secs(60);

/// 20 s: bounds each request to the authority; answers take milliseconds.
const REQUEST_WAIT: Duration = Duration::from_secs(20);

/// 10 s: bounds each request in the `kill -9` storm. A request in flight when the authority
/// dies is never answered, and this is how long its client waits to find out.
const KILLED_REQUEST_WAIT: Duration = Duration::from_secs(10);

/// 300 s: bounds a whole storm, so that a hang fails the test instead of stalling CI.
const STORM_LIMIT: Duration = Duration::from_secs(300);

/// 300 redeemers of one ticket with usage count 100 in the `kill -9` test, killed once
/// [`KILL_AFTER`] of them have been told they enrolled.
const KILL_REDEEMERS: usize = 300;
const KILL_USAGE_COUNT: u32 = 100;
const KILL_AFTER: usize = 20;

/// 20: redeemers beyond the uses left, after the restart.
const EXTRA_REDEEMERS: usize = 20;

/// 10 s: how long a killed process may take to disappear.
const EXIT_WAIT: Duration = Duration::from_secs(10);

// ---- the tests ----------------------------------------------------------------------------

#[test]
fn usage_count_n_enrolls_at_most_n_under_200_concurrent_redemptions_on_sqlite() {
    let k = Kith::new();
    let authority = AuthorityProcess::create(&k, "auth", &[]);
    let (_, ticket) = cut_ticket(&k, USAGE_COUNT);
    assert_eq!(ticket.project.authority_identifier(), &authority.identifier);
    let target = Target::of_ticket(&ticket);

    let runtime = runtime();
    let outcomes = runtime.block_on(storm(&[target], &ticket.code, REDEEMERS, None));
    let enrolled = exactly_n_enrolled_and_the_rest_used_up(&outcomes, USAGE_COUNT);

    let members = members(&k);
    assert_eq!(
        members, enrolled,
        "the members are exactly the redeemers told yes"
    );
    let listed = tickets(&k);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["uses_left"], 0);
    let via = format!("ticket:{}", ticket.id());
    for m in member_list(&k) {
        assert_eq!(m["via"], via.as_str(), "{m}");
    }
}

#[test]
fn two_authority_processes_on_one_postgres_enroll_at_most_n_of_200_concurrent_redeemers() {
    let db = TempDatabase::for_test("the authority process tests", "kith_process_test");
    let (ka, kb) = (Kith::new(), Kith::new());
    let a = AuthorityProcess::create(&ka, "auth-a", &["--database-url", &db.url]);
    let b = AuthorityProcess::create(
        &kb,
        "auth-b",
        &["--database-url", &db.url, "--project-id", &a.project_id],
    );
    assert_ne!(
        a.identifier, b.identifier,
        "each process has its own identity"
    );
    // Cut through A only; B knows the ticket from the shared store alone.
    let (_, ticket) = cut_ticket(&ka, USAGE_COUNT);
    let targets = [Target::of_process(&a), Target::of_process(&b)];

    let runtime = runtime();
    let outcomes = runtime.block_on(storm(&targets, &ticket.code, REDEEMERS, None));
    let enrolled = exactly_n_enrolled_and_the_rest_used_up(&outcomes, USAGE_COUNT);
    // Each credential was issued by the authority its client was pinned to.
    for o in &outcomes {
        if let Answer::Enrolled(enrolled) = &o.answer {
            let credential = decode_credential(enrolled).unwrap();
            let issuer = *credential.purpose_key.subject();
            assert_eq!(issuer, targets[o.target].identifier, "{o:?}");
        }
    }
    let per_target: Vec<usize> = (0..targets.len())
        .map(|t| outcomes.iter().filter(|o| o.target == t).count())
        .collect();
    assert_eq!(per_target, [REDEEMERS / 2, REDEEMERS / 2]);

    // Both authorities see the same members, and the same ticket, used up.
    assert_eq!(members(&ka), enrolled);
    assert_eq!(members(&kb), enrolled);
    assert_eq!(tickets(&ka)[0]["uses_left"], 0);
    assert_eq!(tickets(&kb)[0]["uses_left"], 0);
}

#[test]
fn sigkill_mid_storm_loses_no_enrolled_member_and_keeps_uses_left_consistent_on_sqlite() {
    let k = Kith::new();
    let authority = AuthorityProcess::create(&k, "auth", &[]);
    killed_mid_storm(&k, &authority);
}

#[test]
fn sigkill_mid_storm_loses_no_enrolled_member_and_keeps_uses_left_consistent_on_postgres() {
    let db = TempDatabase::for_test("the authority process tests", "kith_process_test");
    let k = Kith::new();
    let authority = AuthorityProcess::create(&k, "auth", &["--database-url", &db.url]);
    killed_mid_storm(&k, &authority);
}

#[test]
fn neither_the_store_nor_the_log_ever_holds_a_tickets_one_time_code() {
    let k = Kith::new();
    let authority = AuthorityProcess::create(&k, "auth", &[]);
    let (text, ticket) = cut_ticket(&k, 1);
    k.ok(&["identity", "create", "newcomer"]);
    let enrolled = k.json(&["project", "enroll", &text, "--identity", "newcomer"]);
    assert_eq!(
        enrolled["issuer"],
        authority.identifier.to_string().as_str()
    );
    assert_eq!(members(&k).len(), 1);

    let code = ticket.code.as_bytes();
    let hex = kith_identity::hex::encode(code);
    let forbidden: Vec<(&str, Vec<u8>)> = vec![
        ("the code's bytes", code.to_vec()),
        ("the code in hex", hex.clone().into_bytes()),
        (
            "the code in upper-case hex",
            hex.to_uppercase().into_bytes(),
        ),
        (
            "the code in base64url",
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(code)
                .into_bytes(),
        ),
        (
            "the code in base64",
            base64::engine::general_purpose::STANDARD_NO_PAD
                .encode(code)
                .into_bytes(),
        ),
        ("the ticket's text", text.clone().into_bytes()),
    ];
    // What the store does keep: the hash, as hex. Finding it proves the scan reads the data.
    let hash = kith_identity::hex::encode(&ticket.code.hash()).into_bytes();

    let dir = k.home().join("nodes").join("auth");
    let store = |dir: &Path| {
        [
            "authority.sqlite",
            "authority.sqlite-wal",
            "authority.sqlite-shm",
        ]
        .iter()
        .map(|f| dir.join(f))
        .filter(|p| p.exists())
        .collect::<Vec<PathBuf>>()
    };
    let log = dir.join("node.log");
    // While it runs (the enrollment still in the write-ahead log), then stopped (folded
    // into the main file).
    for moment in ["running", "stopped"] {
        let files = store(&dir);
        assert!(
            files.iter().any(|p| p.ends_with("authority.sqlite")),
            "{moment}: no store file in {}",
            dir.display()
        );
        let stored: Vec<u8> = files
            .iter()
            .flat_map(|p| std::fs::read(p).unwrap())
            .collect();
        assert!(
            contains(&stored, &hash),
            "{moment}: the scan did not find the code's hash in {files:?}"
        );
        let logged = std::fs::read(&log).unwrap();
        assert!(
            contains(&logged, b"ticket redeemed"),
            "{moment}: the log does not record the redemption"
        );
        for (what, needle) in &forbidden {
            assert!(
                !contains(&stored, needle),
                "{moment}: {what} is in the store"
            );
            assert!(
                !contains(&logged, needle),
                "{moment}: {what} is in node.log"
            );
        }
        if moment == "running" {
            k.ok(&["node", "stop", "auth"]);
        }
    }
}

// ---- the kill -9 storm --------------------------------------------------------------------

/// Storm `authority` with [`KILL_REDEEMERS`] redemptions of one ticket of
/// [`KILL_USAGE_COUNT`] uses, SIGKILL it once [`KILL_AFTER`] enrollments have been answered,
/// restart it, and check that the store kept every enrollment it answered and counted the
/// uses it took; then that the ticket goes on enrolling exactly as many as it has left.
fn killed_mid_storm(k: &Kith, authority: &AuthorityProcess) {
    let (_, ticket) = cut_ticket(k, KILL_USAGE_COUNT);
    let target = Target::of_process(authority);
    let runtime = runtime();
    let pid = authority.pid;
    let kill = Kill {
        after: KILL_AFTER,
        pid,
    };
    let (outcomes, killed_at) = runtime.block_on(async {
        let outcomes = storm(
            std::slice::from_ref(&target),
            &ticket.code,
            KILL_REDEEMERS,
            Some(&kill),
        )
        .await;
        let killed_at = outcomes.iter().filter(|o| !o.after_kill).count();
        (outcomes, killed_at)
    });
    assert!(
        killed_at < KILL_REDEEMERS,
        "the storm was over before the kill; nothing was in flight"
    );
    let told_yes: BTreeSet<Identifier> = outcomes
        .iter()
        .filter(|o| matches!(o.answer, Answer::Enrolled(_)))
        .map(|o| o.identifier)
        .collect();
    let redeemers: BTreeSet<Identifier> = outcomes.iter().map(|o| o.identifier).collect();
    let unanswered = outcomes
        .iter()
        .filter(|o| matches!(o.answer, Answer::Unanswered(_)))
        .count();
    for o in &outcomes {
        if let Answer::Unanswered(why) = &o.answer {
            assert!(o.after_kill, "a request failed before the kill: {why}");
        }
    }
    assert!(told_yes.len() >= KILL_AFTER);
    assert!(unanswered > 0, "no request was in flight at the kill");
    eprintln!(
        "kill -9 after {killed_at} answers: {} enrolled, {unanswered} never answered",
        told_yes.len()
    );

    wait_for_exit(pid);
    k.ok(&["node", "start", "auth"]);
    let members = members(k);
    assert!(
        members.is_superset(&told_yes),
        "an enrollment that was answered is lost: {:?}",
        told_yes.difference(&members).collect::<Vec<_>>()
    );
    assert!(
        members.is_subset(&redeemers),
        "someone who never redeemed is a member"
    );
    assert!(members.len() <= KILL_USAGE_COUNT as usize);
    let uses_left = uses_left(k);
    eprintln!(
        "after the restart: {} members ({} enrolled without an answer), {uses_left} uses left",
        members.len(),
        members.len() - told_yes.len()
    );
    assert_eq!(
        uses_left as usize,
        KILL_USAGE_COUNT as usize - members.len(),
        "uses left disagree with the members enrolled"
    );

    // After the restart the ticket enrolls exactly as many more as it has uses left.
    let more = uses_left as usize + EXTRA_REDEEMERS;
    let outcomes = runtime.block_on(storm(
        std::slice::from_ref(&target),
        &ticket.code,
        more,
        None,
    ));
    let enrolled = exactly_n_enrolled_and_the_rest_used_up(&outcomes, uses_left);
    let after = self::members(k);
    assert_eq!(after.len(), KILL_USAGE_COUNT as usize);
    assert!(after.is_superset(&members) && after.is_superset(&enrolled));
    assert_eq!(self::uses_left(k), 0);
}

/// Kill process `pid` with SIGKILL once `after` enrollments have been answered.
struct Kill {
    after: usize,
    pid: u32,
}

/// Wait until process `pid` is gone (or a zombie: its sockets and files are closed).
fn wait_for_exit(pid: u32) {
    let started = Instant::now();
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"));
        match state {
            Err(_) => return,
            Ok(s)
                if s.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')) =>
            {
                return;
            }
            Ok(_) => {}
        }
        assert!(
            started.elapsed() < EXIT_WAIT,
            "process {pid} still runs {EXIT_WAIT:?} after SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---- redeeming ----------------------------------------------------------------------------

/// An authority's secure-channel listener, and who must answer there.
#[derive(Debug, Clone)]
struct Target {
    route: Route,
    identifier: Identifier,
}

impl Target {
    /// The authority a ticket names.
    fn of_ticket(ticket: &Ticket) -> Self {
        let text = format!(
            "{}/service/{DEFAULT_LISTENER}",
            ticket.project.authority_route
        );
        let route = text
            .parse::<kith_transport::MultiAddr>()
            .unwrap()
            .to_route(|node| -> Result<Address, kith_transport::MultiAddrError> {
                panic!("the ticket's authority route names a node ({node})")
            })
            .unwrap();
        Self {
            route,
            identifier: *ticket.project.authority_identifier(),
        }
    }

    /// The authority process itself, from what `kith authority create` printed.
    fn of_process(authority: &AuthorityProcess) -> Self {
        Self {
            route: Route::from(vec![
                Address::try_new(TCP, authority.listener.as_str()).unwrap(),
                Address::local(DEFAULT_LISTENER),
            ]),
            identifier: authority.identifier,
        }
    }
}

/// What one redeemer was told.
#[derive(Debug)]
enum Answer {
    Enrolled(Box<Enrolled>),
    Refused(ErrorKind),
    /// No answer from the authority: a timeout, a closed channel.
    Unanswered(String),
}

#[derive(Debug)]
struct Outcome {
    identifier: Identifier,
    /// Index of the target it talked to.
    target: usize,
    answer: Answer,
    /// Whether the answer was taken after the kill.
    after_kill: bool,
}

/// `count` fresh identities, spread over [`CLIENT_NODES`] client nodes and over `targets`
/// (redeemer `i` talks to target `i % targets.len()`, pinned to its identifier), each open a
/// channel; once all are open, all redeem `code` at once. With `kill`, the authority is
/// killed once `kill.after` enrollments have been answered; the rest find out by timing out.
async fn storm(
    targets: &[Target],
    code: &OneTimeCode,
    count: usize,
    kill: Option<&Kill>,
) -> Vec<Outcome> {
    tokio::time::timeout(STORM_LIMIT, async {
        let nodes: Vec<(Node, TcpTransport)> = (0..CLIENT_NODES)
            .map(|i| {
                let node = Node::new(format!("client-{i}"));
                let host = u8::try_from(i + 1).unwrap();
                let tcp = TcpTransport::start_with(
                    &node,
                    kith_transport::TcpOptions {
                        source_address: Some(std::net::IpAddr::from([127, 0, 2, host])),
                        ..Default::default()
                    },
                );
                (node, tcp)
            })
            .collect();
        let request_wait = if kill.is_some() {
            KILLED_REQUEST_WAIT
        } else {
            REQUEST_WAIT
        };
        let mut connecting = JoinSet::new();
        for i in 0..count {
            let node = nodes[i % CLIENT_NODES].0.clone();
            let t = i % targets.len();
            let target = targets[t].clone();
            connecting.spawn(async move {
                let party = Party::new();
                let mut client = AuthorityClient::connect(
                    &node,
                    target.route.clone(),
                    &target.identifier,
                    &party.settings,
                    CONNECT_WAIT,
                )
                .await
                .unwrap_or_else(|e| panic!("redeemer {i} cannot reach {target:?}: {e}"));
                client.set_timeout(request_wait);
                (party.identifier, t, client)
            });
        }
        let mut clients = Vec::with_capacity(count);
        while let Some(done) = connecting.join_next().await {
            clients.push(done.unwrap());
        }

        let (tx, mut rx) = mpsc::channel(count);
        let mut redeeming = JoinSet::new();
        for (identifier, target, mut client) in clients {
            let (tx, code) = (tx.clone(), code.clone());
            redeeming.spawn(async move {
                let answer = match client.redeem(&code).await {
                    Ok(enrolled) => Answer::Enrolled(Box::new(enrolled)),
                    Err(ClientError::Refused(e)) => Answer::Refused(e.kind),
                    Err(other) => Answer::Unanswered(other.to_string()),
                };
                drop(client);
                // The receiver outlives every sender.
                let _ = tx.send((identifier, target, answer)).await;
            });
        }
        drop(tx);
        let mut outcomes = Vec::with_capacity(count);
        let mut killed = false;
        let mut enrolled = 0;
        while let Some((identifier, target, answer)) = rx.recv().await {
            if matches!(answer, Answer::Enrolled(_)) {
                enrolled += 1;
            }
            outcomes.push(Outcome {
                identifier,
                target,
                answer,
                after_kill: killed,
            });
            if let Some(kill) = kill
                && !killed
                && enrolled >= kill.after
            {
                sigkill(kill.pid);
                killed = true;
            }
        }
        while let Some(done) = redeeming.join_next().await {
            done.unwrap();
        }
        for (node, _) in &nodes {
            node.shutdown().await;
        }
        assert_eq!(outcomes.len(), count);
        outcomes
    })
    .await
    .expect("the storm finished in time")
}

/// Exactly `n` redeemers enrolled (returned) and every other one was told the ticket is used
/// up.
#[track_caller]
fn exactly_n_enrolled_and_the_rest_used_up(outcomes: &[Outcome], n: u32) -> BTreeSet<Identifier> {
    let mut enrolled = BTreeSet::new();
    let mut used_up = 0;
    for o in outcomes {
        match &o.answer {
            Answer::Enrolled(_) => {
                assert!(enrolled.insert(o.identifier));
            }
            Answer::Refused(ErrorKind::TicketUsedUp) => used_up += 1,
            other => panic!("unexpected answer for {}: {other:?}", o.identifier),
        }
    }
    assert_eq!(enrolled.len(), n as usize, "enrolled");
    assert_eq!(
        used_up,
        outcomes.len() - n as usize,
        "told the ticket is used up"
    );
    enrolled
}

fn sigkill(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap_or_else(|e| panic!("cannot SIGKILL the authority (pid {pid}): {e}"));
}

/// A fresh identity with a channel key, as a client node would hold it.
struct Party {
    identifier: Identifier,
    settings: ChannelSettings,
}

impl Party {
    fn new() -> Self {
        let (identity, secret) = Identity::create(now());
        let key = SecureChannelKey::generate(&identity, &secret, now() - 5, now() + 3600);
        let identifier = *identity.identifier();
        let local = LocalIdentity {
            identity,
            key,
            credentials: vec![],
        };
        let trust = Arc::new(Trust {
            authorities: vec![],
            admission: Admission::AnyIdentity,
            revocations: Default::default(),
        });
        let mut settings = ChannelSettings::new(Arc::new(local), trust);
        settings.handshake_timeout = CONNECT_WAIT;
        Self {
            identifier,
            settings,
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

// ---- the CLI ------------------------------------------------------------------------------

/// An authority daemon, as `kith authority create --output json` described it.
struct AuthorityProcess {
    identifier: Identifier,
    listener: String,
    project_id: String,
    pid: u32,
}

impl AuthorityProcess {
    /// `kith authority create NAME --project acme EXTRA…` in `k`'s home.
    fn create(k: &Kith, name: &str, extra: &[&str]) -> Self {
        let mut args = vec!["authority", "create", name, "--project", "acme"];
        args.extend_from_slice(extra);
        let v = k.json(&args);
        let pid_file = k.home().join("nodes").join(name).join("node.pid");
        let pid: u32 = v["pid"].as_u64().unwrap().try_into().unwrap();
        assert_eq!(
            std::fs::read_to_string(&pid_file).unwrap().trim(),
            pid.to_string()
        );
        Self {
            identifier: v["authority_identifier"].as_str().unwrap().parse().unwrap(),
            listener: v["listener"].as_str().unwrap().to_owned(),
            project_id: v["project_id"].as_str().unwrap().to_owned(),
            pid,
        }
    }
}

/// A ticket of `usage_count` uses, cut with `kith project ticket`: its text and what it holds.
fn cut_ticket(k: &Kith, usage_count: u32) -> (String, Ticket) {
    let text = k
        .ok(&[
            "project",
            "ticket",
            "--usage-count",
            &usage_count.to_string(),
        ])
        .trim()
        .to_owned();
    let ticket = Ticket::decode(&text).unwrap();
    assert_eq!(ticket.usage_count, usage_count);
    (text, ticket)
}

fn member_list(k: &Kith) -> Vec<serde_json::Value> {
    k.json(&["project", "member", "list"])
        .as_array()
        .unwrap()
        .clone()
}

fn members(k: &Kith) -> BTreeSet<Identifier> {
    member_list(k)
        .iter()
        .map(|m| m["identifier"].as_str().unwrap().parse().unwrap())
        .collect()
}

fn tickets(k: &Kith) -> Vec<serde_json::Value> {
    k.json(&["project", "ticket", "list"])
        .as_array()
        .unwrap()
        .clone()
}

/// The uses left of the home's only ticket.
fn uses_left(k: &Kith) -> u32 {
    let listed = tickets(k);
    assert_eq!(listed.len(), 1, "{listed:?}");
    listed[0]["uses_left"].as_u64().unwrap().try_into().unwrap()
}

// ---- helpers ------------------------------------------------------------------------------

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
