//! The examples for running a node as a service (`contrib/`): the systemd unit passes
//! `systemd-analyze verify`, and the command it and the Dockerfile start is a real one: run
//! as written against `contrib/node.yaml`, it brings the node up, keeps running attached,
//! and stops cleanly (exit 0) on SIGTERM, as a service manager stops it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Kith, kith_bin};

fn contrib(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../contrib")
        .join(name)
}

fn read(name: &str) -> String {
    std::fs::read_to_string(contrib(name)).unwrap()
}

/// The unit's `ExecStart=` command line, split on spaces (it quotes nothing).
fn exec_start() -> Vec<String> {
    let unit = read("kith-node@.service");
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("the unit has an ExecStart= line");
    line.split_whitespace().map(str::to_owned).collect()
}

/// The Dockerfile's `ENTRYPOINT [...]`.
fn entrypoint() -> Vec<String> {
    let dockerfile = read("Dockerfile");
    let line = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("ENTRYPOINT "))
        .expect("the Dockerfile has an ENTRYPOINT");
    serde_json::from_str(line).expect("ENTRYPOINT is a JSON array")
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify_without_a_warning() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze is not installed here; .ci/run installs it");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // An instance of the template, starting the binary under test.
    let unit =
        read("kith-node@.service").replace("/usr/local/bin/kith", kith_bin().to_str().unwrap());
    let path = dir.path().join("kith-node@db-node.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Unknown keys and bad values are only warnings to systemd: none may be printed.
    assert!(stderr.trim().is_empty(), "systemd-analyze warned: {stderr}");
}

#[test]
fn the_service_command_brings_the_example_node_up_and_sigterm_stops_it_with_exit_0() {
    let k = Kith::new();
    k.json(&["authority", "create", "--project", "acme"]);
    let ticket = k.ok(&[
        "project",
        "ticket",
        "--attribute",
        "component=db",
        "--attribute",
        "ockam-relay=db",
    ]);
    // /etc/kith, as the unit and the Dockerfile read it.
    let etc = k.home().join("etc-kith");
    std::fs::create_dir(&etc).unwrap();
    std::fs::copy(contrib("node.yaml"), etc.join("db-node.yaml")).unwrap();
    let postgres = common::echo_server();

    let args: Vec<String> = exec_start()
        .into_iter()
        .skip(1)
        .map(|a| {
            a.replace("%i", "db-node")
                .replace("/etc/kith", etc.to_str().unwrap())
        })
        .collect();
    let mut node = k
        .command(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .env("KITH_TICKET", ticket.trim())
        .env("POSTGRES_ADDRESS", &postgres)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Up: the relay the file declares is up at the project node.
    let started = Instant::now();
    loop {
        let r = k.run(&["relay", "list", "--at", "db-node", "--output", "json"]);
        if r.code == Some(0) && r.stdout.contains("\"up\"") {
            break;
        }
        if let Some(status) = node.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut node.stderr.take().unwrap(), &mut stderr).unwrap();
            panic!("the service command exited ({status}) before its node was up: {stderr}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the node did not come up: {}",
            r.stdout
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let outlets = k.json(&["tcp-outlet", "list", "--at", "db-node"]);
    assert_eq!(outlets[0]["name"], "postgres", "{outlets}");
    assert_eq!(outlets[0]["to"], postgres.as_str(), "{outlets}");

    // A service manager stops it with SIGTERM: a clean stop, exit 0.
    let pid = node.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let status = loop {
        if let Some(s) = node.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "SIGTERM did not stop the node"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "{status}");

    // The Dockerfile starts the same command: applied again (the node now exists and is
    // stopped), it only starts the node.
    let mut entry: Vec<String> = entrypoint()
        .into_iter()
        .skip(1)
        .map(|a| {
            a.replace(
                "/etc/kith/node.yaml",
                etc.join("db-node.yaml").to_str().unwrap(),
            )
        })
        .collect();
    entry.push("--dry-run".to_owned());
    let out = k
        .command(&entry.iter().map(String::as_str).collect::<Vec<_>>())
        .env("KITH_TICKET", ticket.trim())
        .env("POSTGRES_ADDRESS", &postgres)
        .output()
        .unwrap();
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(plan.contains("> start node db-node"), "{plan}");
    assert!(
        !plan.contains("+ "),
        "the second start would change something: {plan}"
    );
}
