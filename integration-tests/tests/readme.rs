//! The README's "Using it" runs as written. Every ```sh block of that section (up to the
//! next `## ` heading), in order, is run as one bash script with `set -euo pipefail`, in a
//! fresh `KITH_HOME` (also `HOME` and the working directory) with the `kith` under test
//! first on `PATH`; it fails if any command fails. Blocks fenced as ```text are shown to
//! readers and not run (the `cargo install` line).
//!
//! The README names its ports in variables (`PORT=4000`, `INLET=127.0.0.1:15432`) so
//! that a reader can change them; the test gives each a free port instead, and points the
//! PostgreSQL the portal example reaches (`127.0.0.1:5432`) at the test server
//! (`KITH_TEST_POSTGRES_URL`, started by `.ci/postgres`), whose user, password and database
//! go in `PGUSER`, `PGPASSWORD` and `PGDATABASE` as the README says.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Read;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Kith, kith_bin};

/// 240 s: the walkthrough starts a dozen daemons and takes seconds; this only stops a
/// hung command from hanging the suite.
const WALKTHROUGH_LIMIT: Duration = Duration::from_secs(240);

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap()
}

/// The ```sh blocks of section `heading` (up to the next `## `), in order.
fn sh_blocks(markdown: &str, heading: &str) -> Vec<String> {
    let start = markdown
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("the README has no {heading:?}"));
    let section = &markdown[start + heading.len() + 2..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in section.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(current.is_none(), "an unclosed ```sh block in {heading:?}");
    blocks
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `postgres://USER:PASSWORD@HOST:PORT/DATABASE` → its parts.
fn postgres_parts(url: &str) -> (String, String, String, String) {
    let rest = url.split_once("://").unwrap().1;
    let rest = rest.split('?').next().unwrap();
    let (credentials, rest) = rest.rsplit_once('@').unwrap();
    let (user, password) = credentials.split_once(':').unwrap_or((credentials, ""));
    let (address, database) = rest.split_once('/').unwrap_or((rest, "postgres"));
    (
        user.to_owned(),
        password.to_owned(),
        address.to_owned(),
        database.to_owned(),
    )
}

/// Replace the one line `from` of `script` with `to`, insisting that it is there.
fn set(script: &mut String, from: &str, to: &str) {
    assert_eq!(
        script.matches(from).count(),
        1,
        "the README's walkthrough should have {from:?} once"
    );
    *script = script.replace(from, to);
}

#[test]
fn the_using_it_section_runs_top_to_bottom_as_written() {
    let blocks = sh_blocks(&readme(), "## Using it");
    let mut script = String::from("set -euo pipefail\nset -x\n");
    script.push_str(&blocks.concat());
    set(&mut script, "PORT=4000 ", &format!("PORT={} ", free_port()));
    set(
        &mut script,
        "INLET=127.0.0.1:15432 ",
        &format!("INLET=127.0.0.1:{} ", free_port()),
    );
    let url = kith_integration_tests::postgres::server_url("the README's portal example")
        .unwrap_or_else(|e| panic!("{e}"));
    let (user, password, address, database) = postgres_parts(&url);
    set(
        &mut script,
        "--to 127.0.0.1:5432 ",
        &format!("--to {address} "),
    );

    let k = Kith::new();
    let work = k.home().join("work");
    std::fs::create_dir(&work).unwrap();
    let bin_dir = kith_bin().parent().unwrap().to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let started = Instant::now();
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(&work)
        .env("PATH", path)
        .env("KITH_HOME", k.home())
        .env("HOME", k.home())
        .env("PGUSER", user)
        .env("PGPASSWORD", password)
        .env("PGDATABASE", database)
        .env_remove("KITH_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let stdout = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).ok();
        s
    });
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        err.read_to_string(&mut s).ok();
        s
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > WALKTHROUGH_LIMIT {
            // The whole group: bash and whatever command hangs.
            let _ = Command::new("kill")
                .args(["-KILL", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            panic!(
                "the walkthrough did not finish within {WALKTHROUGH_LIMIT:?}:\n{}",
                stderr.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    assert!(
        status.success(),
        "a command of the README failed ({status}); the trace ends with it:\n{stderr}\n--- stdout:\n{stdout}"
    );
    // What the walkthrough says it does, it did.
    assert!(stdout.contains("through_the_portal"), "{stdout}");
    assert!(stdout.contains("Relay db is up"), "{stdout}");
}

#[test]
fn the_walkthrough_is_found_whole_and_the_install_line_is_not_run() {
    let text = readme();
    let blocks = sh_blocks(&text, "## Using it");
    assert!(blocks.len() >= 5, "{blocks:?}");
    let all = blocks.concat();
    assert!(
        !all.contains("cargo install"),
        "the install line would be run"
    );
    assert!(all.contains("kith authority create"), "{all}");
    assert!(
        all.contains("kith node delete --all --include-authorities"),
        "{all}"
    );
    // The next section's blocks are not part of it.
    let next = sh_blocks(&text, "## A node from one file");
    assert!(next.iter().all(|b| !all.contains(b.as_str())));
    // A block fenced as text is not taken, and a heading ends the section.
    let sample = "## A\n```text\nno\n```\n```sh\nyes\n```\n## B\n```sh\nnot a\n```\n";
    assert_eq!(sh_blocks(&format!("\n{sample}"), "## A"), ["yes\n"]);
}
