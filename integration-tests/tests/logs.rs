//! Logs that survive a flood (issue 17): through the real `kith` binary, a daemon's log
//! rotates by size and keeps a bounded number of files, `kith node logs --tail` reads across
//! them in order, a failed start is still explained after a rotation, and a thousand
//! identical warnings from one peer make a handful of lines that carry their count.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::Kith;
use kith_node::testing::until_blocking;
use kith_node::{Address, Message, Node, Route, TCP};
use kith_transport::{PROTOCOL_VERSION, TcpTransport};

/// 4 KiB: a few dozen lines a file, so a few hundred lines rotate it many times.
const CAP: u64 = 4096;
/// Files kept, `node.log` included.
const FILES: usize = 3;

/// Create node `name` with `env` set for the daemon it spawns; returns its listener.
fn node_with_env(k: &Kith, name: &str, env: &[(&str, &str)]) -> String {
    let mut command = k.command(&["node", "create", name, "--output", "json"]);
    command.envs(env.iter().copied());
    let out = command.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["listener"].as_str().unwrap().to_owned()
}

/// The node's log files, oldest first: `node.log.N` … `node.log.1`, `node.log`.
fn log_files(k: &Kith, node: &str) -> Vec<PathBuf> {
    let dir = k.home().join("nodes").join(node);
    let mut rotated: Vec<(usize, PathBuf)> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.strip_prefix("node.log.")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    rotated.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    let mut files: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    files.push(dir.join("node.log"));
    files
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A connection that passes the preamble and closes: at debug level the daemon logs that it
/// accepted it and that it closed.
fn connect_and_close(listener: &str) {
    let mut s = TcpStream::connect(listener).unwrap();
    s.write_all(&[PROTOCOL_VERSION]).unwrap();
    let mut theirs = [0u8; 1];
    s.read_exact(&mut theirs).unwrap();
}

#[test]
fn a_flooded_daemon_rotates_its_log_keeps_the_count_and_logs_tail_reads_across_files() {
    let k = Kith::new();
    let cap = CAP.to_string();
    let files = FILES.to_string();
    let listener = node_with_env(
        &k,
        "n1",
        &[
            ("KITH_LOG", "debug"),
            ("KITH_LOG_MAX_BYTES", &cap),
            ("KITH_LOG_FILES", &files),
        ],
    );
    const CONNECTIONS: u64 = 300;
    for _ in 0..CONNECTIONS {
        connect_and_close(&listener);
    }
    until_blocking("the daemon to accept every connection", || {
        k.status("n1")["stats"]["connections_accepted"].as_u64() >= Some(CONNECTIONS)
    });
    k.ok(&["node", "stop", "n1"]);

    let files = log_files(&k, "n1");
    assert_eq!(files.len(), FILES, "{files:?}");
    let mut all = Vec::new();
    let mut first_stamps = Vec::new();
    for file in &files {
        let meta = std::fs::metadata(file).unwrap();
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o600,
            "{}",
            file.display()
        );
        let lines = lines_of(file);
        let longest = lines.iter().map(|l| l.len() as u64 + 1).max().unwrap_or(0);
        assert!(
            meta.len() <= CAP + longest,
            "{} is {} bytes, over the {CAP}-byte cap by more than a line",
            file.display(),
            meta.len()
        );
        assert!(!lines.is_empty(), "{} is empty", file.display());
        // Timestamps lead each line: the first line of each file is later than the one of
        // the file before it (files are seconds-of-log apart; lines within one are not
        // compared, since threads may interleave them by a microsecond).
        first_stamps.push(lines[0].split_whitespace().next().unwrap().to_owned());
        all.extend(lines);
    }
    assert!(
        first_stamps.windows(2).all(|w| w[0] < w[1]),
        "files are not oldest first: {first_stamps:?}"
    );
    assert!(all.last().unwrap().contains("node stopped"), "{all:?}");
    // Older files were dropped: the kept ones hold fewer accepted connections than were made.
    let accepted = all
        .iter()
        .filter(|l| l.contains("accepted a connection"))
        .count();
    assert!(
        (accepted as u64) < CONNECTIONS,
        "{accepted} of {CONNECTIONS} connections still in the log: nothing was rotated off"
    );

    // `kith node logs` prints them all in that order; `--tail N` the last N, across files.
    let printed: Vec<String> = k
        .ok(&["node", "logs", "n1"])
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(
        printed == all,
        "`kith node logs` printed {} lines, not the {} of the files oldest first",
        printed.len(),
        all.len()
    );
    let current = lines_of(files.last().unwrap()).len();
    let n = current + 5;
    let tail: Vec<String> = k
        .ok(&["node", "logs", "n1", "--tail", &n.to_string()])
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(
        tail == all[all.len() - n..],
        "--tail {n} is not the last {n} lines across the last two files: {tail:#?}"
    );
}

#[test]
fn a_start_that_fails_after_the_log_rotated_still_names_its_reason() {
    let k = Kith::new();
    let listener = k.node("n1");
    k.ok(&["node", "stop", "n1"]);
    // Someone else holds the node's port now.
    let _squatter = TcpListener::bind(&listener).unwrap();
    // Every debug line the daemon writes before it fails rotates the log.
    let mut start = k.command(&["node", "start", "n1"]);
    start.envs([
        ("KITH_LOG", "debug"),
        ("KITH_LOG_MAX_BYTES", "1"),
        ("KITH_LOG_FILES", "4"),
    ]);
    let out = start.output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("failed to start") && stderr.contains(&listener),
        "{stderr}"
    );
    let files = log_files(&k, "n1");
    assert_eq!(files.len(), 4, "the start rotated the log: {files:?}");
    // Standard error followed the rotation: the daemon's last words are in the current file.
    let current = lines_of(files.last().unwrap());
    let last = current.last().unwrap();
    assert!(last.starts_with("error: "), "{current:?}");
    assert!(last.contains(&listener), "{current:?}");
}

#[test]
fn a_thousand_identical_warnings_from_one_peer_make_a_handful_of_lines_with_their_count() {
    const MESSAGES: u64 = 1000;
    const KIND: &str = "dropped a message for an unknown address";
    let k = Kith::new();
    let listener = k.node("n1");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let node = Node::new("flood");
        let _tcp = TcpTransport::start(&node);
        let route = Route::from(vec![
            Address::try_new(TCP, listener.as_str()).unwrap(),
            Address::local("no-such-service"),
        ]);
        for _ in 0..MESSAGES {
            node.route(Message::new(route.clone(), Route::new(), "x"))
                .await
                .unwrap();
        }
        until_blocking("the daemon to drop every message", || {
            k.status("n1")["stats"]["dropped_unknown_address"].as_u64() >= Some(MESSAGES)
        });
        node.shutdown().await;
    });
    // Stopping reports what was counted and not yet logged.
    k.ok(&["node", "stop", "n1"]);
    let log = k.ok(&["node", "logs", "n1"]);
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(KIND)).collect();
    assert!(
        (1..=3).contains(&lines.len()),
        "{} lines for {MESSAGES} warnings:\n{}",
        lines.len(),
        lines.join("\n")
    );
    let suppressed: u64 = lines
        .iter()
        .map(|l| {
            let field = l
                .split_whitespace()
                .find_map(|f| f.strip_prefix("suppressed="))
                .unwrap_or_else(|| panic!("no count in {l:?}"));
            field.parse::<u64>().unwrap()
        })
        .sum();
    // A line from a warning stands for itself and the ones it counts; a line from the sweep or
    // the flush only for the ones it counts.
    let warnings = lines
        .iter()
        .filter(|l| !l.contains("repeated warnings suppressed"))
        .count() as u64;
    assert_eq!(
        warnings + suppressed,
        MESSAGES,
        "every warning is accounted for:\n{}",
        lines.join("\n")
    );
    assert!(suppressed >= MESSAGES - 3, "{}", lines.join("\n"));
}

/// The transport's "refused a connection" warning goes through `kith_node::LOG_LIMITER`:
/// a flood of bad preambles from one host makes a line per interval, with a count.
#[test]
fn a_thousand_bad_preambles_from_one_address_make_a_handful_of_refusal_lines() {
    const CONNECTIONS: u64 = 1000;
    const KIND: &str = "refused a connection";
    let k = Kith::new();
    let listener = k.node("n1");
    for _ in 0..CONNECTIONS {
        let mut s = TcpStream::connect(&listener).unwrap();
        // Not our protocol version: refused at the preamble. The daemon may close first.
        let _ = s.write_all(b"G");
        let _ = s.read(&mut [0u8; 1]);
    }
    until_blocking("the daemon to refuse every connection", || {
        k.status("n1")["stats"]["connections_refused"].as_u64() >= Some(CONNECTIONS)
    });
    k.ok(&["node", "stop", "n1"]);
    let log = k.ok(&["node", "logs", "n1"]);
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(KIND)).collect();
    assert!(
        (1..=3).contains(&lines.len()),
        "{} lines for {CONNECTIONS} refusals:\n{}",
        lines.len(),
        lines
            .iter()
            .take(10)
            .copied()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        lines.iter().any(|l| l.contains("suppressed=")),
        "no count in:\n{}",
        lines.join("\n")
    );
}

#[test]
fn logs_follow_prints_each_new_line_once_as_the_daemon_writes_it_across_rotations() {
    let k = Kith::new();
    let listener = node_with_env(
        &k,
        "n1",
        &[
            ("KITH_LOG", "debug"),
            ("KITH_LOG_MAX_BYTES", "16384"),
            ("KITH_LOG_FILES", "3"),
        ],
    );
    let mut follower = k
        .command(&["node", "logs", "n1", "--tail", "1", "--follow"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = follower.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The history it was asked for comes first.
    lines
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("the last line of the log");

    // Enough connections to rotate the 16 KiB log more than once.
    let mut ports = Vec::new();
    for _ in 0..150 {
        let mut s = TcpStream::connect(&listener).unwrap();
        ports.push(s.local_addr().unwrap().port());
        s.write_all(&[PROTOCOL_VERSION]).unwrap();
        let mut theirs = [0u8; 1];
        s.read_exact(&mut theirs).unwrap();
    }
    let mut seen = std::collections::BTreeMap::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while seen.len() < ports.len() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = lines.recv_timeout(left).unwrap_or_else(|e| {
            panic!(
                "the follower printed {} of {} connections ({e:?})",
                seen.len(),
                ports.len()
            )
        });
        if let Some(rest) = line.split("accepted a connection peer=127.0.0.1:").nth(1) {
            let port: u16 = rest.split_whitespace().next().unwrap().parse().unwrap();
            *seen.entry(port).or_insert(0) += 1;
        }
    }
    follower.kill().unwrap();
    follower.wait().unwrap();
    assert!(
        seen.values().all(|n| *n == 1),
        "a line printed twice: {seen:?}"
    );
    assert!(ports.iter().all(|p| seen.contains_key(p)));
    assert!(
        log_files(&k, "n1").len() == 3,
        "the log did not rotate: {:?}",
        log_files(&k, "n1")
    );
}
