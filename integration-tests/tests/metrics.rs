//! `--metrics-address`: a node serves its counters in the Prometheus text format. The
//! metrics of a node that carried a portal session show its bytes; `promtool check metrics`
//! accepts them; a real Prometheus server scrapes them; an authority adds its store's
//! counts; metrics are off unless asked for; anything but `GET /metrics` is refused, and a
//! request head that is too large or too slow is cut off.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Kith, echo_server};

/// `GET /metrics` from `addr`: the status line and the body.
fn get(addr: &str, request: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).unwrap();
    let (head, body) = got.split_once("\r\n\r\n").unwrap_or((&got, ""));
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

fn scrape(addr: &str) -> String {
    let (status, body) = get(addr, "GET /metrics HTTP/1.1\r\nHost: kith\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    body
}

/// The value of the sample `name{labels}` (labels as printed), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

fn metrics_of(k: &Kith, node: &str) -> String {
    let shown = k.status(node);
    shown["metrics"]
        .as_str()
        .unwrap_or_else(|| panic!("{node} serves no metrics: {shown}"))
        .to_owned()
}

/// `promtool check metrics` on `text`: its exit status and what it said.
fn promtool(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is not installed: .ci/run installs Debian's prometheus package");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn promtool_refuses_text_that_breaks_the_format_so_its_acceptance_means_something() {
    // The lint this file relies on can fail: a sample with a broken label set, and a
    // counter whose name lacks `_total`, are refused.
    let (ok, said) = promtool("# HELP kith_x x\n# TYPE kith_x counter\nkith_x{a=\"1\" 1\n");
    assert!(!ok, "promtool accepted a broken label set: {said}");
    let (ok, said) = promtool("# HELP kith_x x\n# TYPE kith_x counter\nkith_x 1\n");
    assert!(!ok, "promtool accepted a counter without _total: {said}");
    let (ok, said) =
        promtool("# HELP kith_x_total x\n# TYPE kith_x_total counter\nkith_x_total 1\n");
    assert!(ok, "promtool refused a well-formed counter: {said}");
}

/// Project `acme` whose authority serves metrics; db-node (metrics on) with an outlet to
/// an echo server for web members; web-node (metrics off) with an inlet straight to it.
/// Where the inlet listens.
fn portal() -> (Kith, String) {
    let k = Kith::new();
    k.json(&[
        "authority",
        "create",
        "--project",
        "acme",
        "--metrics-address",
        "127.0.0.1:0",
    ]);
    for (node, attribute, extra) in [
        (
            "db-node",
            "component=db",
            &["--metrics-address", "127.0.0.1:0"][..],
        ),
        ("web-node", "component=web", &[][..]),
    ] {
        let ticket = k.ok(&["project", "ticket", "--attribute", attribute]);
        k.ok(&["identity", "create", node]);
        let mut create = vec!["node", "create", node, "--identity", node];
        create.extend(extra);
        k.json(&create);
        k.ok(&["project", "enroll", ticket.trim(), "--at", node]);
    }
    let target = echo_server();
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
    let inlet = k.json(&[
        "tcp-inlet",
        "create",
        "--at",
        "web-node",
        "--from",
        "127.0.0.1:0",
        "--to",
        "/node/db-node/secure/api/service/outlet",
    ]);
    (k, inlet["from"].as_str().unwrap().to_owned())
}

#[test]
fn a_node_that_carried_a_portal_session_shows_its_bytes_and_promtool_accepts_its_metrics() {
    let (k, inlet) = portal();
    let db = metrics_of(&k, "db-node");
    let before = scrape(&db);
    assert_eq!(
        sample(
            &before,
            r#"kith_portal_bytes_total{direction="out",kind="outlet",portal="outlet"}"#
        ),
        Some(0.0),
        "{before}"
    );

    // One session of 100,000 bytes each way.
    let payload = vec![b'k'; 100_000];
    let mut s = TcpStream::connect(&inlet).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(&payload).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    assert_eq!(back.len(), payload.len());

    // The session's end is counted once both ends closed: wait for it, bounded.
    let started = Instant::now();
    let text = loop {
        let text = scrape(&db);
        let done = sample(
            &text,
            r#"kith_portal_sessions_total{kind="outlet",outcome="finished",portal="outlet"}"#,
        );
        if done == Some(1.0) {
            break text;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{text}");
        std::thread::sleep(Duration::from_millis(20));
    };
    for direction in ["in", "out"] {
        let bytes = sample(
            &text,
            &format!(
                r#"kith_portal_bytes_total{{direction="{direction}",kind="outlet",portal="outlet"}}"#
            ),
        );
        assert!(bytes >= Some(100_000.0), "{direction}: {bytes:?}\n{text}");
    }
    assert!(sample(&text, "kith_secure_channels").is_some(), "{text}");
    assert!(
        sample(
            &text,
            r#"kith_connections_opened_total{direction="incoming"}"#
        ) >= Some(1.0),
        "{text}"
    );
    let expiry = text
        .lines()
        .find(|l| l.starts_with("kith_credential_expiry_seconds{issuer="))
        .unwrap_or_else(|| panic!("no credential expiry: {text}"));
    let seconds: f64 = expiry.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(seconds > 0.0 && seconds <= 31.0 * 86_400.0, "{expiry}");
    let (ok, said) = promtool(&text);
    assert!(ok, "promtool check metrics refused them: {said}\n{text}");

    // The authority adds its store's counts: two members, both by ticket.
    let authority = scrape(&metrics_of(&k, "authority"));
    assert_eq!(
        sample(&authority, "kith_authority_members"),
        Some(2.0),
        "{authority}"
    );
    assert_eq!(
        sample(
            &authority,
            r#"kith_authority_enrollments_total{via="ticket"}"#
        ),
        Some(2.0),
        "{authority}"
    );
    let (ok, said) = promtool(&authority);
    assert!(ok, "{said}");

    // A node not asked to serves none.
    let web = k.status("web-node");
    assert!(web["metrics"].is_null(), "{web}");
}

#[test]
fn a_listener_counts_each_handshake_as_established_or_failed() {
    let k = Kith::new();
    k.json(&["authority", "create", "--project", "acme"]);
    k.ok(&["identity", "create", "guarded"]);
    k.json(&[
        "node",
        "create",
        "guarded",
        "--identity",
        "guarded",
        "--require-credential",
        "--metrics-address",
        "127.0.0.1:0",
    ]);
    let ticket = k.ok(&["project", "ticket", "--attribute", "component=web"]);
    for node in ["member", "stranger"] {
        k.ok(&["identity", "create", node]);
        k.json(&["node", "create", node, "--identity", node]);
    }
    k.ok(&["project", "enroll", ticket.trim(), "--at", "member"]);
    // A member itself, guarded trusts its project's authority.
    let ticket = k.ok(&["project", "ticket", "--attribute", "component=db"]);
    k.ok(&["project", "enroll", ticket.trim(), "--at", "guarded"]);
    let addr = metrics_of(&k, "guarded");
    let outcome = |o: &str| {
        sample(
            &scrape(&addr),
            &format!(r#"kith_handshakes_total{{outcome="{o}"}}"#),
        )
        .unwrap_or_else(|| panic!("no {o} handshakes series"))
    };
    let (established, failed) = (outcome("established"), outcome("failed"));
    // The responder counts a handshake when its side of it ends, which may follow what
    // the initiator saw by a moment: wait for the count, then check it went no further.
    let reaches = |o: &str, value: f64| {
        let started = Instant::now();
        while outcome(o) < value {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{o} handshakes did not reach {value}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(outcome(o), value, "{o} handshakes went past {value}");
    };

    // A member's channel is admitted; a stranger's, without a credential, is refused.
    let to = "/node/guarded/service/api";
    k.json(&["secure-channel", "create", "--at", "member", "--to", to]);
    reaches("established", established + 1.0);
    assert_eq!(outcome("failed"), failed);
    let refused = k.fails(&["secure-channel", "create", "--at", "stranger", "--to", to]);
    assert!(refused.contains("no credential"), "{refused}");
    reaches("failed", failed + 1.0);
    assert_eq!(outcome("established"), established + 1.0);
}

#[test]
fn a_real_prometheus_server_scrapes_a_node_and_finds_it_up() {
    let k = Kith::new();
    let node = k.json(&["node", "create", "n1", "--metrics-address", "127.0.0.1:0"]);
    let target = node["metrics"].as_str().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: kith\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let web = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus is not installed: .ci/run installs Debian's prometheus package");
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _stop = Killed(prometheus);

    // The target is up, and a kith series came through: asked of Prometheus' own API.
    let started = Instant::now();
    let query = "/api/v1/query?query=kith_node_start_time_seconds";
    loop {
        let answer = TcpStream::connect(&web).ok().map(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = s.write_all(format!("GET {query} HTTP/1.0\r\nHost: p\r\n\r\n").as_bytes());
            let mut got = String::new();
            let _ = s.read_to_string(&mut got);
            got
        });
        if let Some(a) = &answer
            && a.contains(r#""job":"kith""#)
            && a.contains(&target)
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "Prometheus did not scrape {target}: {answer:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, body) = get(&web, "GET /api/v1/query?query=up HTTP/1.0\r\n\r\n");
    assert!(status.contains("200"), "{status}");
    assert!(
        body.contains(r#""value":["#) && body.contains(r#","1"]"#),
        "{body}"
    );
}

#[test]
fn anything_but_get_metrics_is_refused_and_a_huge_or_slow_request_head_is_cut_off() {
    let k = Kith::new();
    let node = k.json(&["node", "create", "n1", "--metrics-address", "127.0.0.1:0"]);
    let addr = node["metrics"].as_str().unwrap().to_owned();
    let (status, _) = get(&addr, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    let (status, _) = get(&addr, "GET /secrets HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, _) = get(&addr, "\x16\x03\x01\x02\x00 not http\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 400 Bad Request");

    // A head over 8 KiB is refused without waiting for its end.
    let huge = format!("GET /metrics HTTP/1.1\r\nX-Pad: {}\r\n", "a".repeat(9000));
    let (status, _) = get(&addr, &huge);
    assert_eq!(status, "HTTP/1.1 431 Request Header Fields Too Large");

    // A head that never ends is dropped after the 5 s deadline, without an answer.
    let started = Instant::now();
    let mut slow = TcpStream::connect(&addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
    let mut got = Vec::new();
    let read = slow.read_to_end(&mut got);
    assert!(read.is_ok() && got.is_empty(), "{read:?} {got:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(12),
        "{waited:?}"
    );
    // And the node still answers.
    assert!(scrape(&addr).contains("kith_node_start_time_seconds"));
}

#[test]
fn one_source_holding_unfinished_requests_keeps_no_scraper_out() {
    use kith_cli::node::metrics::REQUEST_DEADLINE;
    let k = Kith::new();
    let node = k.json(&["node", "create", "n1", "--metrics-address", "127.0.0.1:0"]);
    let addr: std::net::SocketAddr = node["metrics"].as_str().unwrap().parse().unwrap();

    // The held connections are closed by the request deadline, so "the scraper is served
    // while they are held" can only be seen within it. A machine so loaded that one round
    // overran the deadline tells nothing either way: that round is repeated, a bounded
    // number of times. A wrong answer within the deadline fails at once.
    for _ in 0..3 {
        if let Held::Seen = hold_and_scrape(addr) {
            return;
        }
    }
    // Either the node let go of the connections beyond the source's share only at the
    // deadline (the share is not enforced), or the machine is too loaded to tell.
    panic!(
        "every round overran the {REQUEST_DEADLINE:?} request deadline: connections beyond \
         the source's share were not closed at once, or the machine is too loaded to tell"
    );
}

/// What one round of `hold_and_scrape` could see.
enum Held {
    /// The scraper was served while the source held its share.
    Seen,
    /// The round overran the request deadline, which closes the held connections.
    Overran,
}

/// One round: 127.0.0.2 fills more than every place, 127.0.0.1 scrapes.
fn hold_and_scrape(addr: std::net::SocketAddr) -> Held {
    use kith_cli::node::metrics::{MAX_SCRAPES_PER_SOURCE, REQUEST_DEADLINE};
    use kith_integration_tests::hostile::{attacker, connect_from};
    // 127.0.0.2 opens 30 connections, more than the 16 places, each with a request
    // head that never ends. It may hold 4 of them; the node closes the rest at once.
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let held: Vec<TcpStream> = rt.block_on(async {
        let mut held = Vec::new();
        for _ in 0..30 {
            let s = connect_from(attacker(2), addr).await.unwrap();
            held.push(s.into_std().unwrap());
        }
        held
    });
    for s in &held {
        let _ = (&*s).write_all(b"GET /metrics HTTP/1.1\r\n");
    }
    // One 20 s budget for all of them, so that a node that holds them all fails the test
    // in 20 s, not in 20 s each.
    let budget_end = started + Duration::from_secs(20);
    let closed = |s: &TcpStream| {
        s.set_nonblocking(false).unwrap();
        let left = budget_end.saturating_duration_since(Instant::now());
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let mut byte = [0u8; 1];
        // Closed by the node: an end of stream, or a reset when the node closed it
        // with our request head still unread (the kernel then answers RST, not FIN).
        // Only a read that times out means the connection is still held.
        match (&*s).read(&mut byte) {
            Ok(0) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            Ok(_) => false,
        }
    };
    for (i, s) in held.iter().enumerate().skip(MAX_SCRAPES_PER_SOURCE) {
        assert!(
            closed(s),
            "connection {i} beyond the source's share was not closed"
        );
    }

    // The scraper at 127.0.0.1 is served while the four are still held: they are cut
    // off only by the request deadline (which would close them, not answer them).
    assert!(scrape(&addr.to_string()).contains("kith_node_start_time_seconds"));
    let still: Vec<_> = held
        .iter()
        .take(MAX_SCRAPES_PER_SOURCE)
        .map(|s| {
            s.set_nonblocking(true).unwrap();
            (&*s).read(&mut [0u8; 1])
        })
        .collect();
    // The node accepted them after `started`, so before the deadline has passed since
    // then, none of them may have been let go.
    if started.elapsed() >= REQUEST_DEADLINE {
        return Held::Overran;
    }
    for (i, still) in still.iter().enumerate() {
        assert!(
            matches!(still, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "connection {i}, within the share, was not held: {still:?}"
        );
    }
    Held::Seen
}
