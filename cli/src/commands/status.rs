//! `kith status`: one screen of what this home runs: its nodes, the relays they keep, their
//! outlets and inlets, the projects it knows and when each node's credentials expire.

use anyhow::Result;
use kith_identity::unix_now;
use serde_json::{Value, json};

use super::output::{Output, attribute_list};
use crate::control::{InletView, NodeState, OutletView, Request, probe};
use crate::duration::RoundedDuration;
use crate::home::Home;
use crate::home::vault::{open_vault, resolve_identity};

/// Run `kith status`.
pub async fn run(home: &Home, out: &Output) -> Result<()> {
    let now = unix_now();
    let mut nodes = Vec::new();
    let mut identities: Vec<Option<String>> = Vec::new();
    for name in home.node_names()? {
        let config = home.load_node(&name)?;
        let state = probe(home, &name).await;
        let (status, pid, listener) = match &state {
            NodeState::Running(s) => ("running", Some(s.pid), s.listener.clone()),
            NodeState::Stopped { crashed: true } => (
                "stopped (crashed)",
                None,
                config.tcp_listener_address.clone(),
            ),
            NodeState::Stopped { crashed: false } => {
                ("stopped", None, config.tcp_listener_address.clone())
            }
        };
        if !identities.contains(&config.identity) {
            identities.push(config.identity.clone());
        }
        nodes.push(json!({
            "name": name,
            "status": status,
            "pid": pid,
            "listener": listener,
            "identity": config.identity,
            "authority": config.authority.is_some(),
        }));
    }
    // Each running node is asked on its own: one that does not answer is reported, and the
    // others are still shown.
    let (mut relays, mut outlets, mut inlets) = (Vec::new(), Vec::new(), Vec::new());
    let mut unanswered = Vec::new();
    for n in nodes.iter().filter(|n| n["status"] == "running") {
        let name = n["name"].as_str().unwrap_or_default();
        let asked = async {
            let r = super::relays::kept(home, Some(name)).await?;
            let o: Vec<OutletView> =
                super::portals::gather(home, Some(name), &Request::OutletList).await?;
            let i: Vec<InletView> =
                super::portals::gather(home, Some(name), &Request::InletList).await?;
            anyhow::Ok((r, o, i))
        }
        .await;
        match asked {
            Ok((r, o, i)) => {
                relays.extend(r);
                outlets.extend(o);
                inlets.extend(i);
            }
            Err(e) => unanswered.push(json!({ "node": name, "error": format!("{e:#}") })),
        }
    }
    let default_project = home.default_project_name()?;
    let projects: Vec<Value> = home
        .project_names()?
        .into_iter()
        .map(|name| json!({ "name": name, "default": default_project.as_deref() == Some(name.as_str()) }))
        .collect();
    let credentials = held_credentials(home, &identities, now).await?;

    let view = json!({
        "nodes": nodes,
        "relays": relays,
        "outlets": outlets,
        "inlets": inlets,
        "projects": projects,
        "credentials": credentials,
        "unanswered": unanswered,
    });
    out.result(
        || {
            let mut s = String::from("Nodes:");
            if nodes.is_empty() {
                s.push_str("\n  none; create one with `kith node create NAME`");
            }
            for n in &nodes {
                s.push_str(&format!(
                    "\n  {:<20} {:<18} {}{}",
                    n["name"].as_str().unwrap_or_default(),
                    n["status"].as_str().unwrap_or_default(),
                    n["listener"].as_str().unwrap_or_default(),
                    if n["authority"] == true {
                        "  (authority)"
                    } else {
                        ""
                    },
                ));
            }
            if !unanswered.is_empty() {
                section(
                    &mut s,
                    "Not answering (their relays, outlets and inlets are not shown):",
                    unanswered.iter().map(|u| {
                        format!(
                            "{}: {}",
                            u["node"].as_str().unwrap_or_default(),
                            u["error"].as_str().unwrap_or_default()
                        )
                    }),
                );
            }
            section(&mut s, "Relays:", relays.iter().map(|r| r.line(now)));
            section(&mut s, "Outlets:", outlets.iter().map(OutletView::line));
            section(&mut s, "Inlets:", inlets.iter().map(InletView::line));
            section(
                &mut s,
                "Projects:",
                projects.iter().map(|p| {
                    let name = p["name"].as_str().unwrap_or_default();
                    if p["default"] == true {
                        format!("{name} (default)")
                    } else {
                        name.to_owned()
                    }
                }),
            );
            section(
                &mut s,
                "Credentials:",
                credentials.iter().map(|c| {
                    format!(
                        "{} from {}  [{}]  {}",
                        c["identity"].as_str().unwrap_or_default(),
                        c["issuer"].as_str().unwrap_or_default(),
                        c["attributes_shown"].as_str().unwrap_or_default(),
                        c["status"].as_str().unwrap_or_default(),
                    )
                }),
            );
            s
        },
        &view,
    );
    Ok(())
}

/// `title`, then each line indented, or "none".
fn section(s: &mut String, title: &str, lines: impl Iterator<Item = String>) {
    s.push_str("\n\n");
    s.push_str(title);
    let mut any = false;
    for line in lines {
        any = true;
        for (i, part) in line.lines().enumerate() {
            s.push_str(if i == 0 { "\n  " } else { "\n    " });
            s.push_str(part.trim_start());
        }
    }
    if !any {
        s.push_str("\n  none");
    }
}

/// The credentials the nodes' identities hold (`None`: the default identity), with how long
/// each has left.
async fn held_credentials(
    home: &Home,
    identities: &[Option<String>],
    now: u64,
) -> Result<Vec<Value>> {
    if identities.is_empty() {
        return Ok(Vec::new());
    }
    let vault = open_vault(home).await?;
    let mut rows = Vec::new();
    let mut seen = Vec::new();
    for identity in identities {
        let Ok(stored) = resolve_identity(&vault, identity.as_deref()).await else {
            continue;
        };
        if seen.contains(&stored.name) {
            continue;
        }
        seen.push(stored.name.clone());
        let held = match vault.credentials(&stored.name).await {
            Ok(held) => held,
            Err(_) => continue,
        };
        for c in held {
            let cred = &c.credential.credential;
            let status = match c.verify(now) {
                Ok(v) => format!(
                    "expires in {}",
                    RoundedDuration(v.expires_at.saturating_sub(now))
                ),
                Err(e) => format!("invalid: {e}"),
            };
            rows.push(json!({
                "identity": stored.name,
                "issuer": c.issuer.identifier().to_string(),
                "attributes": cred.attributes(),
                "attributes_shown": attribute_list(cred.attributes(), ", "),
                "expires_at": cred.expires_at(),
                "status": status,
            }));
        }
    }
    vault.close().await;
    Ok(rows)
}
