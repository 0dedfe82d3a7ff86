//! `kith node …`: create, start, stop, inspect and delete node daemons.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use tokio::io::{AsyncBufReadExt, BufReader};

use kith_identity::unix_now;

use super::args::{CreateNode, DeleteNode, NodeLogs, StartNode, StopNode};
use super::output::Output;
use crate::control::{self, NodeState, Request, probe};
use crate::home::vault::{identity_arg, open_vault, resolve_identity};
use crate::home::{Home, NodeConfig, validate_listener, validate_node_name};
use crate::logfile::{self, LogMark};
use crate::node::{self, Ready, parse_allow};

/// 20 s: how long `create`/`start` wait for a daemon to report that it serves. Starting takes
/// milliseconds; the margin covers a loaded machine.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// 15 s: the runtime's 5 s shutdown grace plus margin for flushing state.
pub(crate) const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Where a node listens unless told: loopback, on a port picked once and then kept.
pub(crate) const DEFAULT_LISTENER: &str = "127.0.0.1:0";

/// A random node name, `node-xxxxxx`.
fn random_name() -> String {
    format!("node-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// `kith node create`
pub async fn create(home: &Home, out: &Output, mut args: CreateNode) -> Result<()> {
    if let Some(file) = args.config.take() {
        return super::apply::apply(home, out, args, &file).await;
    }
    let name = args.name.unwrap_or_else(random_name);
    validate_node_name(&name)?;
    let listener = args
        .tcp_listener_address
        .unwrap_or_else(|| DEFAULT_LISTENER.to_owned());
    validate_listener(&listener)?;
    if let Some(m) = &args.metrics_address {
        validate_listener(m).context("--metrics-address")?;
    }
    home.ensure_no_node(&name)?;
    // Settle the identity first, so a missing one fails before anything is made.
    let (identity, admission) = {
        let vault = open_vault(home).await?;
        let found = async {
            let name = resolve_identity(&vault, args.identity.as_deref())
                .await?
                .name;
            let admission = admission_config(&vault, &args.admission).await?;
            anyhow::Ok((name, admission))
        }
        .await;
        vault.close().await;
        found?
    };
    let config = NodeConfig {
        name: name.clone(),
        tcp_listener_address: listener,
        metrics_address: args.metrics_address,
        created_at: unix_now(),
        identity: Some(identity),
        admission,
        authority: None,
        relays: Vec::new(),
        outlets: Vec::new(),
        inlets: Vec::new(),
    };
    home.create_node(&config)?;
    let started = if args.foreground {
        run_foreground(home, out, &name).await
    } else {
        start_daemon(home, out, &name).await
    };
    // A node that fails here never served (after it serves, a run only ends cleanly, or
    // with Ctrl-C), so nothing is left half-made: its directory goes again.
    started.inspect_err(|e| {
        if !e.is::<super::Interrupted>() {
            let _ = home.delete_node(&name);
        }
    })
}

/// `kith node start`
pub async fn start(home: &Home, out: &Output, args: StartNode) -> Result<()> {
    home.load_node(&args.name)?;
    if let NodeState::Running(s) = probe(home, &args.name).await {
        bail!("node {:?} is already running (pid {})", args.name, s.pid);
    }
    if args.foreground {
        run_foreground(home, out, &args.name).await
    } else {
        start_daemon(home, out, &args.name).await
    }
}

async fn run_foreground(home: &Home, out: &Output, name: &str) -> Result<()> {
    let stopped = node::run(home, name, |ready| foreground_ready(out, ready)).await?;
    foreground_ended(name, stopped)
}

/// What a foreground node says once it serves: a line, or one JSON object on a line.
pub(crate) fn foreground_ready(out: &Output, ready: &Ready) {
    out.event(
        || {
            format!(
                "Node {} is running in the foreground (pid {}), listening on {}. Ctrl-C stops it.",
                ready.name, ready.pid, ready.listener
            )
        },
        ready,
    );
}

/// How a foreground node's command ends once the node stopped cleanly: Ctrl-C makes it
/// exit 130, as any interrupted command does; SIGTERM (a service manager's stop) and
/// `kith node stop` are a success.
pub(crate) fn foreground_ended(name: &str, stopped: node::Stopped) -> Result<()> {
    match stopped {
        node::Stopped::Interrupted => {
            Err(super::Interrupted(format!("interrupted: node {name} stopped cleanly")).into())
        }
        node::Stopped::Terminated | node::Stopped::Requested => Ok(()),
    }
}

pub(crate) async fn start_daemon(home: &Home, out: &Output, name: &str) -> Result<()> {
    let spinner = out.spinner(format!("starting node {name}"));
    let ready = spawn_daemon(home, name).await;
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    let ready = ready?;
    out.result(
        || {
            format!(
                "Node {} is running (pid {}), listening on {}.\nRoute to its echo service: /node/{}/service/echo",
                ready.name, ready.pid, ready.listener, ready.name
            )
        },
        &ready,
    );
    Ok(())
}

/// Spawn `kith node run NAME` as a detached daemon logging to the node's log file, and wait
/// for the line it prints once it serves. Its standard error goes to the log too, for what it
/// says before its logging is up; from then on it writes (and rotates) the log itself.
pub async fn spawn_daemon(home: &Home, name: &str) -> Result<Ready> {
    let exe = std::env::current_exe().context("cannot find the kith executable")?;
    let log_path = home.log_path(name);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let mark = LogMark::end_of(&log).ok();
    let mut child = tokio::process::Command::new(exe)
        .args(["node", "run", name])
        .env("KITH_HOME", home.root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        // Its own process group: Ctrl-C in the terminal that started it does not reach it.
        .process_group(0)
        .spawn()
        .context("cannot start the node process")?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no stdout from the node process"))?;
    let mut lines = BufReader::new(stdout).lines();
    match tokio::time::timeout(START_TIMEOUT, lines.next_line()).await {
        Ok(Ok(Some(line))) => serde_json::from_str::<Ready>(&line)
            .with_context(|| format!("unexpected output from the node process: {line:?}")),
        Ok(_) => {
            let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
            let reason = mark
                .and_then(|mark| last_error(&log_path, &mark))
                .unwrap_or_else(|| format!("it exited; see {}", log_path.display()));
            bail!("node {name:?} failed to start: {reason}")
        }
        Err(_) => {
            let _ = child.start_kill();
            bail!(
                "node {name:?} did not start within {START_TIMEOUT:?}; see {}",
                log_path.display()
            )
        }
    }
}

/// The last `error: …` line the log got after `mark`, even if it rotated since.
fn last_error(log: &std::path::Path, mark: &LogMark) -> Option<String> {
    logfile::rfind_since(log, mark, |l| l.strip_prefix("error: ").map(str::to_owned))
}

/// `kith node stop`
pub async fn stop(home: &Home, out: &Output, args: StopNode) -> Result<()> {
    home.load_node(&args.name)?;
    let status = match probe(home, &args.name).await {
        NodeState::Running(s) => s,
        NodeState::Stopped { .. } => bail!("node {:?} is not running", args.name),
    };
    let spinner = out.spinner(format!("stopping node {}", args.name));
    let stopped = control::stop(&home.socket_path(&args.name), STOP_TIMEOUT).await;
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    if let Err(e) = stopped {
        if !args.force {
            return Err(e.context(format!(
                "node {:?} did not stop; `kith node stop {} --force` kills it",
                args.name, args.name
            )));
        }
        kill(status.pid)?;
        let _ = std::fs::remove_file(home.socket_path(&args.name));
        let _ = std::fs::remove_file(home.pid_path(&args.name));
    }
    out.result(
        || format!("Node {} stopped.", args.name),
        &serde_json::json!({ "name": args.name, "stopped": true }),
    );
    Ok(())
}

fn kill(pid: u32) -> Result<()> {
    let pid = i32::try_from(pid).context("invalid pid")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .with_context(|| format!("cannot kill process {pid}"))
}

/// `kith node delete`
pub async fn delete(home: &Home, out: &Output, args: DeleteNode) -> Result<()> {
    let mut kept = Vec::new();
    let names = match (args.all, args.name) {
        (true, _) => {
            let mut names = Vec::new();
            for name in home.node_names()? {
                let is_authority = home.load_node(&name)?.authority.is_some();
                if is_authority && !args.include_authorities {
                    kept.push(name);
                } else {
                    names.push(name);
                }
            }
            names
        }
        (false, Some(n)) => {
            home.load_node(&n)?;
            vec![n]
        }
        (false, None) => bail!("name a node, or pass --all"),
    };
    for name in &names {
        if let NodeState::Running(_) = probe(home, name).await {
            control::stop(&home.socket_path(name), STOP_TIMEOUT)
                .await
                .with_context(|| format!("cannot stop node {name:?} before deleting it"))?;
        }
        home.delete_node(name)?;
    }
    out.result(
        || {
            let mut s = match names.len() {
                0 => "No nodes to delete.".to_owned(),
                _ => format!("Deleted {}.", names.join(", ")),
            };
            if !kept.is_empty() {
                s.push_str(&format!(
                    "\nKept authority node{} {}: {} its project's store. Delete {} by name, or add --include-authorities.",
                    if kept.len() == 1 { "" } else { "s" },
                    kept.join(", "),
                    if kept.len() == 1 { "it holds" } else { "each holds" },
                    if kept.len() == 1 { "it" } else { "one" },
                ));
            }
            s
        },
        &serde_json::json!({ "deleted": names, "kept_authorities": kept }),
    );
    Ok(())
}

/// `kith node list`
pub async fn list(home: &Home, out: &Output) -> Result<()> {
    let mut rows = Vec::new();
    for name in home.node_names()? {
        let config = home.load_node(&name)?;
        let state = probe(home, &name).await;
        rows.push(node_json(&config, &state));
    }
    out.result(
        || {
            if rows.is_empty() {
                return "No nodes. Create one with `kith node create NAME`.".to_owned();
            }
            let mut s = format!(
                "{:<20} {:<26} {:<8} {}",
                "NAME", "STATUS", "PID", "LISTENER"
            );
            for r in &rows {
                s.push_str(&format!(
                    "\n{:<20} {:<26} {:<8} {}",
                    r["name"].as_str().unwrap_or(""),
                    r["status"].as_str().unwrap_or(""),
                    r["pid"]
                        .as_u64()
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "-".into()),
                    r["listener"].as_str().unwrap_or(""),
                ));
            }
            s
        },
        &rows,
    );
    Ok(())
}

pub(crate) fn node_json(config: &NodeConfig, state: &NodeState) -> serde_json::Value {
    match state {
        NodeState::Running(s) => serde_json::json!({
            "name": config.name,
            "status": "running",
            "identity": config.identity,
            "identifier": s.identifier,
            "pid": s.pid,
            "listener": s.listener,
            "metrics": s.metrics,
            "started_at": s.started_at,
            "services": s.services,
            "connections": s.connections,
            "stats": s.stats,
            "revocations": s.revocations,
        }),
        NodeState::Stopped { crashed } => serde_json::json!({
            "name": config.name,
            "status": if *crashed { "stopped (did not shut down cleanly)" } else { "stopped" },
            "identity": config.identity,
            "pid": null,
            "listener": config.tcp_listener_address,
            "metrics": config.metrics_address,
        }),
    }
}

/// `kith node show`
pub async fn show(home: &Home, out: &Output, name: &str) -> Result<()> {
    let config = home.load_node(name)?;
    let state = probe(home, name).await;
    let mut json = node_json(&config, &state);
    json["log"] = home.log_path(name).display().to_string().into();
    out.result(
        || {
            let mut s = format!(
                "Node {name}\n  status:      {}",
                json["status"].as_str().unwrap_or("")
            );
            if let NodeState::Running(st) = &state {
                s.push_str(&format!(
                    " (pid {}, up {}s)",
                    st.pid,
                    unix_now().saturating_sub(st.started_at)
                ));
            }
            s.push_str(&format!(
                "\n  listener:    {}",
                json["listener"].as_str().unwrap_or("")
            ));
            if let NodeState::Running(st) = &state {
                if let Some(m) = &st.metrics {
                    s.push_str(&format!("\n  metrics:     http://{m}/metrics"));
                }
                s.push_str(&format!("\n  services:    {}", st.services.join(", ")));
                s.push_str(&format!("\n  connections: {}", st.connections.len()));
                for c in &st.connections {
                    s.push_str(&format!("\n    {} {} {}", c.address, c.direction, c.peer));
                }
                for r in &st.revocations {
                    let heard = r.heard_at.map_or_else(
                        || "not followed (no known project has this authority)".to_owned(),
                        |at| format!("feed heard {}", crate::duration::ago(at, unix_now())),
                    );
                    s.push_str(&format!(
                        "\n  revocations: {} at {} ({} members named), {heard}{}",
                        r.authority,
                        r.head,
                        r.members,
                        if r.state == "stale" {
                            "; STALE: past the grace, its credentials admit no one here"
                        } else {
                            ""
                        }
                    ));
                }
                s.push_str(&format!("\n  counters:    {}", st.stats));
            }
            s.push_str(&format!(
                "\n  log:         {}",
                home.log_path(name).display()
            ));
            s
        },
        &json,
    );
    Ok(())
}

/// `kith node logs`: the rotated files oldest first, then the current one, so `--tail`
/// spans them.
pub fn logs(home: &Home, args: NodeLogs) -> Result<()> {
    home.load_node(&args.name)?;
    let path = home.log_path(&args.name);
    if args.follow {
        return follow(&path, args.tail);
    }
    // Written through one buffer; a reader that goes away (`| head`) ends it quietly.
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    let mut written: std::io::Result<()> = Ok(());
    let mut put = |l: &str| {
        if written.is_ok() {
            written = writeln!(stdout, "{l}");
        }
    };
    let read = match args.tail {
        Some(n) => logfile::tail(&path, n).map(|lines| lines.iter().for_each(|l| put(l))),
        None => logfile::for_each_line(&path, &mut put),
    };
    read.with_context(|| format!("cannot read the log {}", path.display()))?;
    match written.and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("cannot write to standard output"),
    }
}

/// 1,000: lines `node logs --follow` prints at once from what the log already holds.
const FOLLOW_BATCH: usize = 1000;

/// 100 ms: how often `node logs --follow` looks for new lines.
const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Print the log's lines (the last `tail`, or all), then each new one as it is written,
/// until interrupted or the reader goes away.
fn follow(path: &std::path::Path, tail: Option<usize>) -> Result<()> {
    // What the log holds now goes out a file at a time, not gathered first: a kept log
    // is up to KITH_LOG_FILES times KITH_LOG_MAX_BYTES.
    let mut lines = Vec::new();
    let mut printed: Result<bool> = Ok(true);
    let print = |lines: Vec<String>| -> Result<bool> {
        if lines.is_empty() {
            return Ok(true);
        }
        let mut text = lines.join("\n");
        text.push('\n');
        super::write_stdout(text.as_bytes())?;
        // A reader that went away (`| head`) ends the follow.
        Ok(!super::stdout_closed())
    };
    let mut follower = logfile::Follower::start(path, tail, |line| {
        // Once the reader has gone (or writing failed), the rest is dropped, not gathered.
        if !matches!(printed, Ok(true)) {
            return;
        }
        lines.push(line);
        if lines.len() >= FOLLOW_BATCH {
            printed = print(std::mem::take(&mut lines));
        }
    })
    .with_context(|| format!("cannot read the log {}", path.display()))?;
    if !printed? || !print(lines)? {
        return Ok(());
    }
    loop {
        std::thread::sleep(FOLLOW_POLL);
        let lines = follower
            .poll()
            .with_context(|| format!("cannot read the log {}", path.display()))?;
        if !print(lines)? {
            return Ok(());
        }
    }
}

/// Check `--allow-identity` and `--trust-authority` and turn them into what the node saves.
pub(crate) async fn admission_config(
    vault: &kith_identity::vault::Vault,
    args: &crate::commands::args::AdmissionArgs,
) -> Result<crate::home::AdmissionConfig> {
    let mut allow = Vec::new();
    for id in &args.allow_identity {
        let parsed: kith_identity::Identifier = id.parse().with_context(|| {
            format!("--allow-identity {id:?} is not an identifier (I + 40 hex digits)")
        })?;
        allow.push(parsed.to_string());
    }
    let mut authorities = Vec::new();
    for a in &args.trust_authority {
        let identity = identity_arg(vault, a)
            .await
            .with_context(|| format!("--trust-authority {a:?}"))?;
        authorities.push(kith_identity::hex::encode(&identity.export()));
    }
    if let Some(policy) = &args.allow {
        parse_allow(policy)?;
    }
    Ok(crate::home::AdmissionConfig {
        allow_identities: allow,
        require_credential: args.require_credential,
        trusted_authorities: authorities,
        allow: args.allow.clone(),
        revocation_grace: args.revocation_grace.map(|d| d.as_secs().max(1)),
        limits: crate::limits::LimitsConfig::parse_all(&args.limits)?,
    })
}

/// Stop node `name` if it runs, and delete it (cleaning up after a failed create).
pub async fn stop_and_delete(home: &Home, name: &str) -> Result<()> {
    if let NodeState::Running(_) = probe(home, name).await {
        control::stop(&home.socket_path(name), STOP_TIMEOUT).await?;
    }
    home.delete_node(name)
}

/// Have running node `name` present its identity's credentials as they are now in the
/// vault (after an enrollment or a refresh). A stopped node reads them when it starts.
pub async fn reload_credentials(home: &Home, name: &str) -> Result<()> {
    if let NodeState::Running(_) = probe(home, name).await {
        control::call(
            &home.socket_path(name),
            &Request::ReloadCredentials,
            control::STATUS_TIMEOUT,
        )
        .await
        .with_context(|| format!("node {name:?} did not take up the new credential"))?;
    }
    Ok(())
}
