//! The node-file bench: how long a project's two member nodes take from nothing to a
//! working portal through a relay when each is declared in a file and made with one
//! `kith node create --config`, against the same set-up by the individual commands
//! (identity, node, enrollment, relay, outlet; identity, node, enrollment, inlet), measured
//! in the same run, alternately, each round in a fresh home with its own authority daemon.
//! Every node is a `kith` daemon, as users run them. "Working" means a byte sent into the
//! inlet came back from the echo server behind the outlet.
//!
//! Beside it: the RSS of a node daemon serving metrics (`--metrics-address`, scraped
//! [`SCRAPES`] times) against the same node without them, in the same run.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::bench::BenchRecord;
use crate::kith_home::KithHome;

/// 30 s: how long a fresh portal may take to carry its first byte before the round fails.
const FIRST_BYTE_LIMIT: Duration = Duration::from_secs(30);

const DB_FILE: &str = "\
name: db-node
identity: db
require-credential: true
ticket: ./db.ticket
relays: [db]
tcp-outlets:
  app:
    to: ${ECHO_ADDR}
    allow: 'component = \"web\"'
";

const WEB_FILE: &str = "\
name: web-node
identity: web
ticket: ./web.ticket
tcp-inlets:
  app:
    from: 127.0.0.1:0
    via: db
    to: app
";

/// A home with project `acme` and the two members' tickets in `db.ticket` and `web.ticket`.
fn project(kith: &Path) -> anyhow::Result<KithHome> {
    let home = KithHome::new(kith, "node-file")?;
    home.json(&["authority", "create", "--project", "acme"])?;
    for (file, attributes) in [
        ("db.ticket", ["component=db", "ockam-relay=db"]),
        ("web.ticket", ["component=web", "tier=1"]),
    ] {
        let ticket = home.ok(&[
            "project",
            "ticket",
            "--attribute",
            attributes[0],
            "--attribute",
            attributes[1],
        ])?;
        std::fs::write(home.path().join(file), ticket.trim())?;
    }
    Ok(home)
}

/// Wait until a byte sent into web-node's inlet `app` comes back.
fn first_byte(home: &KithHome) -> anyhow::Result<()> {
    let inlet = home.json(&["tcp-inlet", "show", "app", "--at", "web-node"])?;
    let from = crate::kith_home::field(&inlet, "from")?;
    let started = Instant::now();
    loop {
        let echoed = (|| -> std::io::Result<bool> {
            let mut s = TcpStream::connect(&from)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"!")?;
            s.shutdown(Shutdown::Write)?;
            let mut got = Vec::new();
            s.read_to_end(&mut got)?;
            Ok(got == b"!")
        })();
        if matches!(echoed, Ok(true)) {
            return Ok(());
        }
        if started.elapsed() > FIRST_BYTE_LIMIT {
            bail!("the portal carried no byte within {FIRST_BYTE_LIMIT:?}: {echoed:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// From nothing to a working portal with the two files.
fn by_file(kith: &Path, echo: &str) -> anyhow::Result<Duration> {
    let home = project(kith)?;
    let db = home.path().join("db.yaml");
    let web = home.path().join("web.yaml");
    std::fs::write(&db, DB_FILE.replace("${ECHO_ADDR}", echo))?;
    std::fs::write(&web, WEB_FILE)?;
    let started = Instant::now();
    for file in [&db, &web] {
        home.ok(&["node", "create", "--config", file.to_str().context("path")?])?;
    }
    first_byte(&home)?;
    Ok(started.elapsed())
}

/// From nothing to the same working portal with the individual commands.
fn by_commands(kith: &Path, echo: &str) -> anyhow::Result<Duration> {
    let home = project(kith)?;
    let ticket = |name: &str| home.path().join(name).to_string_lossy().into_owned();
    let (db_ticket, web_ticket) = (ticket("db.ticket"), ticket("web.ticket"));
    let started = Instant::now();
    home.ok(&["identity", "create", "db"])?;
    home.ok(&[
        "node",
        "create",
        "db-node",
        "--identity",
        "db",
        "--require-credential",
    ])?;
    home.ok(&[
        "project",
        "enroll",
        "--ticket-file",
        &db_ticket,
        "--at",
        "db-node",
    ])?;
    home.ok(&["relay", "create", "db", "--at", "db-node"])?;
    home.ok(&[
        "tcp-outlet",
        "create",
        "--at",
        "db-node",
        "--from",
        "app",
        "--to",
        echo,
        "--allow",
        "component = \"web\"",
    ])?;
    home.ok(&["identity", "create", "web"])?;
    home.ok(&["node", "create", "web-node", "--identity", "web"])?;
    home.ok(&[
        "project",
        "enroll",
        "--ticket-file",
        &web_ticket,
        "--at",
        "web-node",
    ])?;
    home.ok(&[
        "tcp-inlet",
        "create",
        "--at",
        "web-node",
        "--from",
        "127.0.0.1:0",
        "--alias",
        "app",
        "--to",
        "/project/acme/service/forward_to_db/secure/api/service/app",
    ])?;
    first_byte(&home)?;
    Ok(started.elapsed())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// 50: scrapes of the metrics node before its RSS is read.
pub const SCRAPES: usize = 50;

/// RSS of a node serving metrics, scraped [`SCRAPES`] times, against one that does not.
fn metrics_rss(kith: &Path) -> anyhow::Result<BenchRecord> {
    let home = KithHome::new(kith, "metrics-rss")?;
    let on = home.json(&["node", "create", "on", "--metrics-address", "127.0.0.1:0"])?;
    home.json(&["node", "create", "off"])?;
    let address = crate::kith_home::field(&on, "metrics")?;
    for _ in 0..SCRAPES {
        let mut s = TcpStream::connect(&address)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")?;
        let mut got = Vec::new();
        s.read_to_end(&mut got)?;
        if !got.starts_with(b"HTTP/1.1 200") {
            bail!("a scrape failed: {}", String::from_utf8_lossy(&got));
        }
    }
    let rss_on = crate::bench::settled_rss_kib(home.pid("on")?)?;
    let rss_off = crate::bench::settled_rss_kib(home.pid("off")?)?;
    Ok(BenchRecord::new(
        "node_rss_metrics_on",
        rss_on as f64,
        "KiB",
        rss_off as f64,
    ))
}

/// `rounds` rounds of each, alternating; one record of the medians, then the metrics RSS.
pub fn run(kith: &Path, rounds: usize) -> anyhow::Result<Vec<BenchRecord>> {
    let echo = crate::echo::echo_server()?;
    let (mut file, mut commands) = (Vec::new(), Vec::new());
    for _ in 0..rounds.max(1) {
        file.push(by_file(kith, &echo).context("the set-up by files")?);
        commands.push(by_commands(kith, &echo).context("the set-up by commands")?);
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok(vec![
        BenchRecord::new(
            "node_file_to_working_portal",
            ms(median(file)),
            "ms",
            ms(median(commands)),
        ),
        metrics_rss(kith).context("the metrics RSS")?,
    ])
}
