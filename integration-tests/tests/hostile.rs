//! A project node under attack from other hosts, through real `kith` processes. Attackers
//! speak from 127.0.0.2 and up; the legitimate clients (the `kith` commands and the member
//! daemons) from 127.0.0.1. Each attack is bounded in count and time and stopped by the
//! test.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Kith, project_with};
use kith_integration_tests::bench::{ensure_fd_limit, rss_kib, settled_rss_kib};
use kith_integration_tests::hostile::{
    Holders, Sprayer, Tricklers, attacker, connect_from, version_answer,
};
use kith_node::testing::until_blocking;

/// 1 s: what a legitimate request may take while the node is under attack.
const PROMPT: Duration = Duration::from_secs(1);

/// 90 s: no attack outlives its test.
const ATTACK_TIME: Duration = Duration::from_secs(90);

/// Where relay `db` of project `acme` reaches db-node's outlet, end to end.
const THROUGH_RELAY: &str = "/project/acme/service/forward_to_db/secure/api/service/outlet";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn listener(k: &Kith, node: &str) -> SocketAddr {
    k.status(node)["listener"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn stat(k: &Kith, node: &str, name: &str) -> u64 {
    let shown = k.status(node);
    shown["stats"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no stats.{name} in {shown}"))
}

/// Run `what`, and check it took less than [`PROMPT`]; returns what it returned.
fn promptly<T>(name: &str, what: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = what();
    let took = started.elapsed();
    eprintln!("under attack: {name} took {took:?}");
    assert!(took < PROMPT, "{name} took {took:?} under attack");
    out
}

#[test]
fn a_handshake_sprayer_and_a_connection_flood_keep_no_legitimate_client_out() {
    // Sixteen hosts holding 256 connections each fill the project node's 4,096; this
    // process holds their ends too.
    ensure_fd_limit(12_000).unwrap();
    let k = project_with(&[
        ("db-node", &["ockam-relay=db"]),
        ("web-node", &["component=web"]),
    ]);
    let target = common::echo_server();
    k.json(&[
        "tcp-outlet",
        "create",
        "--at",
        "db-node",
        "--to",
        &target,
        "--allow",
        r#"component = "web""#,
    ]);
    k.json(&["relay", "create", "db", "--to", "db-node"]);
    k.ok(&["identity", "create", "newcomer"]);
    let project_node = listener(&k, "authority");
    let rt = runtime();

    // 127.0.0.2 sprays handshake first messages over one connection; 127.0.0.3 to
    // 127.0.0.18 hold all the connections they can and send keep-alives.
    let sprayer = rt
        .block_on(Sprayer::start(
            attacker(2),
            project_node,
            5_000_000,
            ATTACK_TIME,
        ))
        .unwrap();
    let sources: Vec<_> = (3..=18).map(attacker).collect();
    let holders = rt.block_on(Holders::start(&sources, 260, project_node, ATTACK_TIME));
    eprintln!(
        "attack: {} connections held, {} refused; {} first messages sprayed so far",
        holders.held(),
        holders.refused(),
        sprayer.sent()
    );
    assert!(
        holders.held() >= 4000,
        "the flood should fill the node: {} held",
        holders.held()
    );
    assert!(
        holders.refused() >= 16 * 4,
        "each source past 256 is refused"
    );
    until_blocking("the sprayer to be refused by its share", || {
        stat(&k, "authority", "handshakes_refused_busy") > 100
    });
    // Whether the flood filled the node: then a newcomer gets in only by shedding.
    let open = k.status("authority")["connections"]
        .as_array()
        .map_or(0, Vec::len);
    let full = open >= kith_transport::MAX_CONNECTIONS;
    eprintln!("attack: the project node holds {open} connections");

    // Meanwhile, from 127.0.0.1: the admin's command, an enrollment, a secure channel, and
    // a new portal (its channel through the relay) each work, promptly.
    let ticket = promptly("kith project ticket", || {
        k.ok(&["project", "ticket", "--attribute", "component=web"])
    });
    promptly("kith project enroll", || {
        k.ok(&["project", "enroll", ticket.trim(), "--identity", "newcomer"])
    });
    promptly("kith secure-channel create", || {
        k.json(&[
            "secure-channel",
            "create",
            "--from",
            "web-node",
            "--to",
            &format!("/ip4/127.0.0.1/tcp/{}/service/api", project_node.port()),
        ])
    });
    let inlet = k.json(&[
        "tcp-inlet",
        "create",
        "--at",
        "web-node",
        "--from",
        "127.0.0.1:0",
        "--to",
        THROUGH_RELAY,
    ]);
    let inlet = inlet["from"].as_str().unwrap().to_owned();
    promptly("a portal session's first round trip", || {
        let mut s = TcpStream::connect(&inlet).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"ping").unwrap();
        let mut back = [0u8; 4];
        s.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"ping");
    });
    // If the node was full, the newcomers got in by shedding the heaviest hosts.
    if full {
        assert!(stat(&k, "authority", "connections_shed") >= 1);
    }
    assert!(sprayer.sent() > 1000, "the sprayer kept spraying");

    drop(sprayer);
    rt.block_on(holders.stop());
}

#[test]
fn trickling_connections_cost_little_memory_and_give_it_back() {
    ensure_fd_limit(6_000).unwrap();
    let k = Kith::new();
    k.json(&["authority", "create", "--project", "acme"]);
    let node = listener(&k, "authority");
    let pid = u32::try_from(k.status("authority")["pid"].as_u64().unwrap()).unwrap();
    let rt = runtime();
    let baseline = settled_rss_kib(pid).unwrap();

    // 2,000 connections from eight hosts, each announcing a 256 KiB frame and sending a
    // byte a second.
    let sources: Vec<_> = (2..10).map(attacker).collect();
    let tricklers = rt.block_on(Tricklers::start(&sources, 250, node, ATTACK_TIME));
    assert_eq!(tricklers.open(), 2000, "{:?}", tricklers.failures());
    until_blocking("the node to hold the trickling connections", || {
        stat(&k, "authority", "connections_accepted") >= 2000
    });
    // Once the node's memory stops moving, each has sent its prefix and some bytes.
    let during = settled_rss_kib(pid).unwrap();
    let per_connection = (during.saturating_sub(baseline)) * 1024 / 2000;
    eprintln!(
        "RSS: {baseline} KiB before, {during} KiB with 2,000 trickling connections ({per_connection} bytes each)"
    );
    assert!(
        during <= baseline + TRICKLE_BOUND_KIB,
        "2,000 trickling connections took the node from {baseline} KiB to {during} KiB"
    );

    rt.block_on(tricklers.stop());
    until_blocking("the node to close them", || {
        k.status("authority")["connections"]
            .as_array()
            .is_some_and(|c| c.len() < 10)
    });
    let started = Instant::now();
    loop {
        let now = rss_kib(pid).unwrap();
        if now <= baseline + RETURN_SLACK_KIB {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "RSS {now} KiB stays over {baseline} KiB + {RETURN_SLACK_KIB} KiB after the tricklers left"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// 24 MiB: what 2,000 trickling connections may add to a node: 12 KiB each for a task, a
/// socket, a router entry and a first read buffer that grows only with what arrived. At the
/// 64 KiB each a reader that reserves by the announced length would take, it is 125 MiB.
const TRICKLE_BOUND_KIB: u64 = 24 * 1024;

/// 4 MiB: how far above its baseline a node may stay once the tricklers are gone.
const RETURN_SLACK_KIB: u64 = 4 * 1024;

#[test]
fn a_limit_given_at_create_holds_across_restarts_and_refusals_say_busy() {
    let k = Kith::new();
    k.json(&[
        "node",
        "create",
        "n1",
        "--limit",
        "connections-per-source=2",
    ]);
    let rt = runtime();
    for round in 0..2 {
        let to = listener(&k, "n1");
        // Connections from 127.0.0.2, held open while the next one is answered.
        let mut held = Vec::new();
        let mut answer = || {
            rt.block_on(async {
                let mut s = connect_from(attacker(2), to).await.unwrap();
                let answer = version_answer(&mut s).await;
                held.push(s);
                answer
            })
        };
        assert_eq!(answer(), Some(kith_transport::PROTOCOL_VERSION));
        assert_eq!(answer(), Some(kith_transport::PROTOCOL_VERSION));
        assert_eq!(
            answer(),
            Some(kith_transport::BUSY),
            "round {round}: a third connection from 127.0.0.2 is refused as busy"
        );
        assert!(stat(&k, "n1", "connections_refused_busy") >= 1);
        k.ok(&["node", "stop", "n1"]);
        k.ok(&["node", "start", "n1"]);
    }
    let bad = k.fails(&[
        "node",
        "create",
        "n2",
        "--limit",
        "connections-per-source=0",
    ]);
    assert!(bad.contains("from 1 to"), "{bad}");
}
