//! `kith demo`: the main job, step by step, in a temporary `KITH_HOME` that is removed after.
//!
//! Each step is a real `kith` command, run as a child process against the temporary home
//! and printed as the user would type it: an authority and its project (whose node is also
//! the project node), tickets, two nodes enrolled with them, a credential shown, a relay for
//! db-node created under the name its ticket granted, and a message from web-node to
//! db-node's echo through the relay, over a secure channel between the two members that the
//! project node only forwards.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use crate::home::Home;
use crate::output::Output;

#[derive(Debug, Serialize)]
struct Step {
    step: usize,
    what: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<String>,
}

#[derive(Debug, Default, Serialize)]
struct Report {
    steps: Vec<Step>,
    project_id: Option<String>,
    authority: Option<String>,
    credential: Option<serde_json::Value>,
    reply: Option<String>,
    round_trip_ms: Option<f64>,
    /// db-node's identifier, as web-node's channel authenticated it.
    peer: Option<String>,
}

impl Report {
    fn say(&mut self, out: &Output, command: Option<String>, what: String) {
        let step = self.steps.len() + 1;
        if !out.is_json() {
            match &command {
                Some(c) => println!("{step}. $ {c}\n   {}", what.replace('\n', "\n   ")),
                None => println!("{step}. {what}"),
            }
        }
        self.steps.push(Step {
            step,
            what,
            command,
        });
    }
}

/// Whom db-node serves.
const WEB_ONLY: &str = r#"component = "web""#;

/// 60 s: the longest one step of the demo may take.
const STEP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// `kith demo`
pub async fn run(out: &Output) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("kith-demo-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let home = Home::open(dir.path())?;
    let mut report = Report::default();
    report.say(
        out,
        None,
        format!("Created a temporary KITH_HOME at {}", dir.path().display()),
    );
    let started = Instant::now();
    let result = tokio::select! {
        r = steps(dir.path(), out, &mut report) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    // Whatever happened, stop the daemons before the directory goes.
    let _ = kith(dir.path(), &["node", "delete", "--all"]).await;
    drop(home);
    result?;
    report.say(
        out,
        None,
        format!(
            "Stopped every node and removed the temporary KITH_HOME ({:.0} ms in all)",
            started.elapsed().as_secs_f64() * 1000.0
        ),
    );
    if out.is_json() {
        out.result(String::new, &report);
    }
    Ok(())
}

/// Run `kith ARGS --output json` against `home`; its JSON answer, or its error line.
async fn kith(home: &Path, args: &[&str]) -> Result<serde_json::Value> {
    let exe = std::env::current_exe().context("cannot find the kith executable")?;
    let run = tokio::process::Command::new(exe)
        .args(args)
        .args(["--output", "json"])
        .env("KITH_HOME", home)
        .env_remove("KITH_ENROLLMENT_TICKET")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    // Every step has its own shorter timeouts; this bounds a step that hangs regardless
    // (the child is killed when the wait is dropped).
    let output = tokio::time::timeout(STEP_TIMEOUT, run)
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "`kith {}` did not finish within {STEP_TIMEOUT:?}",
                args.join(" ")
            )
        })?
        .context("cannot run kith")?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let line = stderr
            .lines()
            .last()
            .unwrap_or("failed")
            .trim_start_matches("error: ");
        bail!("`kith {}` failed: {line}", args.join(" "));
    }
    serde_json::from_slice(&output.stdout)
        .with_context(|| format!("`kith {}` printed no JSON", args.join(" ")))
}

fn text(v: &serde_json::Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_owned()
}

async fn steps(home: &Path, out: &Output, report: &mut Report) -> Result<()> {
    let args = ["authority", "create", "--project", "demo"];
    let v = kith(home, &args).await?;
    report.project_id = Some(text(&v, "project_id"));
    report.authority = Some(text(&v, "authority_identifier"));
    report.say(
        out,
        Some(format!("kith {}", args.join(" "))),
        format!(
            "Project demo (id {}) has an authority node at {}, identity {}; you ({}) are its admin",
            text(&v, "project_id"),
            text(&v, "authority_route"),
            text(&v, "authority_identifier"),
            v["admins"][0].as_str().unwrap_or_default()
        ),
    );

    for (node, attrs) in [
        (
            "db-node",
            ["component=db", "location=sf", "--relay", "db"].as_slice(),
        ),
        ("web-node", ["component=web", "location=sf"].as_slice()),
    ] {
        let mut args = vec!["project", "ticket", "-a", attrs[0], "-a", attrs[1]];
        args.extend(&attrs[2..]);
        let v = kith(home, &args).await?;
        let ticket = text(&v, "ticket");
        let file = home.join(format!("{node}.ticket"));
        crate::home::write_private_atomic(&file, ticket.as_bytes())?;
        report.say(
            out,
            Some(format!("kith {} > {node}.ticket", args.join(" "))),
            format!(
                "A one-time ticket ({}…, {} characters), valid 10 minutes; the authority keeps only its hash",
                ticket.chars().take(16).collect::<String>(),
                ticket.len()
            ),
        );

        let identity = node.trim_end_matches("-node");
        kith(home, &["identity", "create", identity]).await?;
        // db-node admits only peers with a credential from a trusted authority, and serves
        // only members with component=web.
        let mut args = vec!["node", "create", node, "--identity", identity];
        if node == "db-node" {
            args.extend(["--require-credential", "--allow", WEB_ONLY]);
        }
        let v = kith(home, &args).await?;
        report.say(
            out,
            Some(format!(
                "kith identity create {identity} && kith {}",
                args.join(" ").replace(WEB_ONLY, &format!("'{WEB_ONLY}'"))
            )),
            format!(
                "Node {node} runs as identity {identity} ({}), listening on {}",
                text(&v, "identifier"),
                text(&v, "listener")
            ),
        );

        let file = home.join(format!("{node}.ticket"));
        let file = file.to_string_lossy();
        let args = ["project", "enroll", "--ticket-file", &file, "--node", node];
        let v = kith(home, &args).await?;
        report.say(
            out,
            Some(format!("kith project enroll --ticket-file {node}.ticket --node {node}")),
            format!(
                "{identity} redeemed the ticket over a secure channel to the authority and is a member with {}",
                v["attributes"]
            ),
        );
    }

    let args = ["credential", "show", "--node", "db-node"];
    let v = kith(home, &args).await?;
    report.say(
        out,
        Some(format!("kith {}", args.join(" "))),
        format!(
            "db-node's credential: issuer {} (the authority), attributes {}, {}",
            text(&v, "issuer"),
            v["attributes"],
            text(&v, "status")
        ),
    );
    report.credential = Some(v);

    let args = ["relay", "create", "db", "--to", "db-node"];
    let v = kith(home, &args).await?;
    report.say(
        out,
        Some(format!("kith {}", args.join(" "))),
        format!(
            "db-node keeps a secure channel open to the project node, which now forwards {} to it: its credential carries ockam-relay=db; db-node needs no inbound connection",
            text(&v, "route")
        ),
    );

    let message = "hello from web";
    let to = "/project/demo/service/forward_to_db/secure/api/service/echo";
    let args = ["message", "send", message, "--from", "web-node", "--to", to];
    let v = kith(home, &args).await?;
    let reply = text(&v, "reply");
    report.say(
        out,
        Some(format!("kith message send {message:?} --from web-node --to {to}")),
        format!(
            "db-node's echo answered {reply:?} in {:.2} ms, through the relay, end to end encrypted with {} (db, proven by its key history and attested key): the project node forwarded ciphertext only; each side checked the other's credential and db-node's policy admitted component=web; verification code {}",
            v["round_trip_ms"].as_f64().unwrap_or_default(),
            text(&v, "peer"),
            text(&v, "verification_code"),
        ),
    );
    report.reply = Some(reply);
    report.round_trip_ms = v["round_trip_ms"].as_f64();
    report.peer = v["peer"].as_str().map(str::to_owned);
    Ok(())
}
