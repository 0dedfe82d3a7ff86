//! `kith demo`: the main job, step by step, in a temporary `KITH_HOME` that is removed after.

use std::time::Instant;

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::control::{self, Request, SendReply};
use crate::home::{Home, NodeConfig};
use crate::message::resolve_route;
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
    for name in NODES {
        home.create_node(&NodeConfig {
            name: name.to_owned(),
            tcp_listener_address: "127.0.0.1:0".to_owned(),
            created_at: crate::daemon::unix_now(),
        })?;
        let ready = spawn_daemon(home, name).await?;
        report.say(
            out,
            format!(
                "Started node {name} as a daemon (pid {}), listening on {} with an echo service",
                ready.pid, ready.listener
            ),
        );
    }
    let to = "/node/bob/service/echo";
    let route = resolve_route(home, to).await?;
    let text = "hello from alice";
    report.say(
        out,
        format!("alice sends {text:?} to {to}, which is the route {route}"),
    );
    let request = Request::Send {
        route: route.iter().map(ToString::to_string).collect(),
        payload: text.to_owned(),
        timeout_ms: 10_000,
    };
    let v = control::call(
        &home.socket_path("alice"),
        &request,
        std::time::Duration::from_secs(12),
    )
    .await?;
    let reply: SendReply = serde_json::from_value(v)?;
    report.say(
        out,
        format!(
            "bob's echo answered {:?} in {:.2} ms; the reply came back along {}",
            reply.reply, reply.round_trip_ms, reply.return_route
        ),
    );
    report.reply = Some(reply.reply);
    report.round_trip_ms = Some(reply.round_trip_ms);
    Ok(())
}
