//! `kith demo`: the main job, step by step, in a temporary `KITH_HOME` that is removed after.

use std::time::Instant;

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::control::{self, Request, SendReply};
use crate::home::{Home, NodeConfig};
use crate::message::resolve_target;
use crate::nodes::spawn_daemon;
use crate::output::Output;

#[derive(Debug, Serialize)]
struct Step {
    step: usize,
    what: String,
}

#[derive(Debug, Default, Serialize)]
struct Report {
    steps: Vec<Step>,
    reply: Option<String>,
    round_trip_ms: Option<f64>,
    /// bob's identifier, as alice's channel authenticated it.
    peer: Option<String>,
}

impl Report {
    fn say(&mut self, out: &Output, what: String) {
        let step = self.steps.len() + 1;
        if !out.is_json() {
            println!("{step}. {what}");
        }
        self.steps.push(Step { step, what });
    }
}

const NODES: [&str; 2] = ["alice", "bob"];

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
        format!("Created a temporary KITH_HOME at {}", dir.path().display()),
    );
    let started = Instant::now();
    let result = tokio::select! {
        r = steps(&home, out, &mut report) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    // Whatever happened, stop the daemons before the directory goes.
    for name in NODES {
        if home.node_exists(name) {
            let _ =
                control::stop(&home.socket_path(name), std::time::Duration::from_secs(15)).await;
        }
    }
    result?;
    report.say(
        out,
        format!(
            "Stopped alice and bob and removed the temporary KITH_HOME ({:.0} ms in all)",
            started.elapsed().as_secs_f64() * 1000.0
        ),
    );
    if out.is_json() {
        out.result(String::new, &report);
    }
    Ok(())
}

async fn steps(home: &Home, out: &Output, report: &mut Report) -> Result<()> {
    let vault = crate::identities::vault(home).await?;
    let made = async {
        let mut ids = Vec::new();
        for name in NODES {
            ids.push(
                vault
                    .create_identity(name, crate::daemon::unix_now())
                    .await?
                    .identifier()
                    .to_string(),
            );
        }
        anyhow::Ok(ids)
    }
    .await;
    vault.close().await;
    let ids = made?;
    report.say(
        out,
        format!(
            "Created two identities: alice is {}, bob is {}",
            ids[0], ids[1]
        ),
    );
    for name in NODES {
        home.create_node(&NodeConfig {
            name: name.to_owned(),
            tcp_listener_address: "127.0.0.1:0".to_owned(),
            created_at: crate::daemon::unix_now(),
            identity: Some(name.to_owned()),
            authority: None,
            admission: Default::default(),
        })?;
        let ready = spawn_daemon(home, name).await?;
        report.say(
            out,
            format!(
                "Started node {name} as a daemon (pid {}), listening on {} with an echo service and a secure channel listener",
                ready.pid, ready.listener
            ),
        );
    }
    let text = "hello from alice";
    for to in [
        "/node/bob/service/echo",
        "/node/bob/secure/api/service/echo",
    ] {
        let target = resolve_target(home, to).await?;
        let request = Request::Send {
            route: target.route.iter().map(ToString::to_string).collect(),
            payload: text.to_owned(),
            timeout_ms: 10_000,
            channel: target
                .channel
                .as_ref()
                .map(|c| c.iter().map(ToString::to_string).collect()),
        };
        match &target.channel {
            None => report.say(out, format!("alice sends {text:?} to {to}: plain TCP, the route {}", target.route)),
            Some(c) => report.say(
                out,
                format!(
                    "alice sends {text:?} to {to}: a Noise XX secure channel to bob's listener at {c}, then {} inside it",
                    target.route
                ),
            ),
        }
        let v = control::call(
            &home.socket_path("alice"),
            &request,
            std::time::Duration::from_secs(12),
        )
        .await?;
        let reply: SendReply = serde_json::from_value(v)?;
        let through = match (&reply.peer, &reply.verification_code) {
            (Some(peer), Some(code)) => format!(
                "; end to end encrypted with {peer} (bob, verified by its key history and attested key), verification code {code}"
            ),
            _ => String::new(),
        };
        report.say(
            out,
            format!(
                "bob's echo answered {:?} in {:.2} ms; the reply came back along {}{through}",
                reply.reply, reply.round_trip_ms, reply.return_route
            ),
        );
        report.reply = Some(reply.reply);
        report.round_trip_ms = Some(reply.round_trip_ms);
        report.peer = reply.peer;
    }
    Ok(())
}
